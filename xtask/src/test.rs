//! `cargo xtask test`: the whole test suite, in the order a failure is
//! cheapest to see: set-up, formatting, clippy, the eBPF build, unit tests,
//! then the privileged integration tests on the real kernel.
//!
//! libtest's summaries are parsed and added up; tests that skipped
//! themselves (missing root, BPF or a kernel feature) leave a marker in
//! `$VMBW_SKIP_DIR` and are reported as skipped with their reason. The last
//! line is `N passed, N failed, N skipped`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    no_setup: bool,
    /// Only the unprivileged part: checks and unit tests.
    #[arg(long)]
    unprivileged: bool,
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    failed_steps: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = util::workspace_root();
    if !args.no_setup {
        setup::run(&setup::Args::default())?;
    }
    sweep_stale_namespaces();

    let mut tally = Tally::default();
    let cargo = || {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(&root);
        c
    };

    check(
        &mut tally,
        "formatting (cargo fmt --check)",
        cargo().args(["fmt", "--all", "--check"]),
    );
    check(
        &mut tally,
        "clippy (-D warnings)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    check(
        &mut tally,
        "eBPF build (agent/build.rs, bpfel-unknown-none)",
        cargo().args(["build", "--package", "vmbw"]),
    );

    util::step("unit tests");
    libtest(
        &mut tally,
        "unit tests",
        cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "vmbw-tests",
            "--exclude",
            "vmbw-ebpf",
        ]),
    )?;

    let skip_dir = tempdir("vmbw-skips")?;
    if args.unprivileged {
        util::step("privileged integration tests: skipped (--unprivileged)");
    } else {
        util::step("privileged integration tests (real kernel, test-made namespaces)");
        if !util::is_root() {
            println!("    not root: every privileged test will report itself skipped");
        }
        libtest(
            &mut tally,
            "privileged integration tests",
            cargo()
                .args(["test", "--package", "vmbw-tests"])
                .env("VMBW_SKIP_DIR", &skip_dir),
        )?;
    }
    let skipped = report_skips(&skip_dir)?;
    let _ = fs::remove_dir_all(&skip_dir);

    // A skipped test returned early, so libtest counted it as passed.
    let passed = tally.passed.saturating_sub(skipped);
    let skipped = skipped + tally.ignored;
    for step in &tally.failed_steps {
        println!("FAILED: {step}");
    }
    println!(
        "{passed} passed, {} failed, {skipped} skipped",
        tally.failed
    );
    if tally.failed > 0 || !tally.failed_steps.is_empty() {
        bail!("the test suite failed");
    }
    Ok(())
}

/// A check that is not a libtest run: passes or fails as one test.
fn check(tally: &mut Tally, name: &str, cmd: &mut Command) {
    util::step(name);
    match util::status(cmd) {
        Ok(s) if s.success() => tally.passed += 1,
        Ok(_) | Err(_) => {
            tally.failed += 1;
            tally.failed_steps.push(name.to_owned());
        }
    }
}

/// Runs `cargo test ...`, echoing its output, and adds libtest's summaries
/// to the tally. A run that fails without a failing test (e.g. it did not
/// compile) is a failed step.
fn libtest(tally: &mut Tally, name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    println!("    $ {}", util::display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", util::display(cmd)))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let failed_before = tally.failed;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            add_summary(tally, summary);
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == failed_before {
        tally
            .failed_steps
            .push(format!("{name}: cargo test exited with {status}"));
    }
    Ok(())
}

/// Parses `ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
fn add_summary(tally: &mut Tally, summary: &str) {
    for part in summary.split(['.', ';']) {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => tally.passed += n,
            "failed" => tally.failed += n,
            "ignored" => tally.ignored += n,
            _ => {}
        }
    }
}

/// Prints each skip marker (test name and reason) and returns their count.
fn report_skips(dir: &Path) -> anyhow::Result<u64> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in &entries {
        let reason = fs::read_to_string(e.path()).unwrap_or_default();
        println!(
            "SKIPPED {}: {}",
            e.file_name().to_string_lossy().replace("__", "::"),
            reason.trim()
        );
    }
    Ok(entries.len() as u64)
}

fn tempdir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes network namespaces left by test processes that were killed
/// before their guards ran: names `vmbw-t<pid>-<n>` whose pid is gone.
/// Namespaces of live processes and any other name are left alone.
fn sweep_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("vmbw-t")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!("    removing stale test namespace {name} (its test process {pid} is gone)");
        if let Err(e) = util::run(Command::new("ip").args(["netns", "del", &name])) {
            println!("    warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summary() {
        let mut t = Tally::default();
        add_summary(
            &mut t,
            "ok. 12 passed; 1 failed; 3 ignored; 0 measured; 2 filtered out; finished in 0.27s",
        );
        assert_eq!((t.passed, t.failed, t.ignored), (12, 1, 3));
    }
}
