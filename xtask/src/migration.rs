//! `cargo xtask demo` and `cargo xtask bench migration`: real QEMU
//! migrations on the test-made testbed, run by the `vmbw-testbed` binary of
//! `vmbw-tests` with the `vmbw` agent next to it (dev profile: a release
//! build of the agent takes ~8 minutes on two cores, the dev build is shared
//! with `cargo xtask test`, and the agent's cost is measured in it).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{setup, util};

/// Builds the agent and the testbed runner, then runs the runner.
pub(crate) fn testbed(args: &[String]) -> anyhow::Result<()> {
    if !util::is_root() && args.first().is_some_and(|a| a == "run") {
        bail!("the testbed needs root (network namespaces, BPF, tc, QEMU taps)");
    }
    let root = util::workspace_root();
    util::step("building vmbw and vmbw-testbed");
    util::run(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--package",
        "vmbw",
        "--package",
        "vmbw-tests",
        "--bin",
        "vmbw",
        "--bin",
        "vmbw-testbed",
    ]))?;
    util::step("running the testbed");
    let bin = root.join("target").join("debug").join("vmbw-testbed");
    util::run(Command::new(&bin).current_dir(&root).args(args))
        .with_context(|| format!("{} failed", bin.display()))
}

/// `cargo xtask demo`: set-up, then the demo scenario once per policy:
/// stock QEMU, the peer policies operators run today, and vmbw.
pub fn demo() -> anyhow::Result<()> {
    setup::run(&setup::Args::default())?;
    println!(
        "The demo migrates a 128 MiB guest that dirties memory while its application streams \
         15 Mbit/s (all of it reserved) over a 30 Mbit/s bottleneck: with stock QEMU, with what \
         KubeVirt offers (a static cap, auto-converge, post-copy after a timeout) and with vmbw. \
         Reports go to target/bench/demo/ (the committed 3-repetition report is in docs/bench/)."
    );
    testbed(&[
        "run".into(),
        "--scenario".into(),
        "tests/scenarios/demo.toml".into(),
        "--repetitions".into(),
        "1".into(),
        "--out".into(),
        "target/bench/demo".into(),
    ])
}

/// `cargo xtask bench report`: rebuilds docs/bench/README.md, each
/// scenario's page and README's results table from the per-scenario JSON
/// reports, then docs/reproduction.md, which cites some of them.
pub fn report(rest: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["report".to_owned()];
    args.extend(rest.iter().cloned());
    testbed(&args)?;
    // Seed 000's section cites the concurrent scenarios' reports.
    println!("wrote {}", crate::reproduce::write_report()?.display());
    Ok(())
}

/// `cargo xtask bench migration [--scenario FILE ...] [--policy P ...]
/// [--repetitions N] [--out DIR]`: without --scenario, every built-in
/// scenario; reports go to docs/bench unless --out says otherwise, and the
/// index there is rebuilt afterwards.
pub fn bench(rest: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["run".to_owned()];
    let to_docs = !rest.iter().any(|a| a == "--out");
    if to_docs {
        args.extend(["--out".to_owned(), "docs/bench".to_owned()]);
    }
    if !rest.iter().any(|a| a == "--scenario") {
        let dir = util::workspace_root().join("tests").join("scenarios");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        println!(
            "no --scenario given: all {} built-in scenarios (this takes hours)",
            files.len()
        );
        for f in files {
            args.push("--scenario".into());
            args.push(f.display().to_string());
        }
    }
    args.extend(rest.iter().cloned());
    testbed(&args)?;
    if to_docs {
        report(&[])?;
    }
    Ok(())
}
