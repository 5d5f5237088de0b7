//! Small helpers shared by the tasks: paths, running commands with their
//! command line printed, progress lines.

use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, bail};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where downloaded and built artefacts live outside git:
/// (`vmbw_testenv::cache_dir`, the rule the tests share).
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    vmbw_testenv::cache_dir().context("neither VMBW_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")
}

/// Prints a step header.
pub fn step(name: &str) {
    println!("==> {name}");
}

/// Runs a command with inherited stdio, printing it first; fails on a
/// non-zero exit with the command in the message.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("{} failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
    println!("    $ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("cannot start {}", display(cmd)))
}

/// Runs a command quietly and returns its stdout, or None if it could not
/// start or failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command quietly and returns its stdout; fails with the command
/// line and its stderr when it cannot start or exits non-zero.
pub fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the agent binary `vmbw` in cargo profile `profile` (`dev`,
/// `release`), printing the command.
pub fn build_agent(profile: &str) -> anyhow::Result<()> {
    run(Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "build",
            "--package",
            "vmbw",
            "--bin",
            "vmbw",
            "--profile",
            profile,
        ]))
}

pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    // Avoid a libc dependency for one call: /proc/self/status has the euid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
