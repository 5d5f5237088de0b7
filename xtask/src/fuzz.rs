//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (nightly,
//! libFuzzer, AddressSanitizer), each for a while from the committed seeds
//! in `fuzz/seeds/TARGET` plus what earlier runs found (`fuzz/corpus/`,
//! not committed). A target that panics, leaks or hangs leaves its input in
//! `fuzz/artifacts/TARGET/`: commit that input as a seed once it is fixed.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::util;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "packet",
    "qmp",
    "netlink",
    "config",
    "trace",
    "inventory",
    "kubevirt",
];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// One target (default: all of them): packet, qmp, netlink, config,
    /// trace, inventory, kubevirt.
    target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// What one target's run found.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    pub runs: Option<u64>,
    pub coverage: Option<u64>,
    pub seconds: f64,
    /// The input that made it fail, if it failed.
    pub failure: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    let outcomes = run_targets(&targets, args.seconds)?;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    let summary = json!({
        "bench": "fuzz",
        "seconds_per_target": args.seconds,
        "targets": outcomes.iter().map(|o| json!({
            "target": o.target,
            "runs": o.runs,
            "coverage": o.coverage,
            "seconds": o.seconds,
            "failure": o.failure,
        })).collect::<Vec<_>>(),
    });
    println!("{summary}");
    if !failed.is_empty() {
        bail!("{} fuzz target(s) failed", failed.len());
    }
    Ok(())
}

/// Builds the targets once, then runs each for `seconds`.
pub fn run_targets(targets: &[&str], seconds: u64) -> anyhow::Result<Vec<Outcome>> {
    let dir = util::workspace_root().join("fuzz");
    util::step("building the fuzz targets (nightly, AddressSanitizer)");
    util::run(fuzz_cmd(&dir).args(["build", "-O"]))
        .context("cargo-fuzz is missing or the build failed (cargo xtask setup installs it)")?;
    let mut out = Vec::new();
    for target in targets {
        util::step(&format!("fuzzing {target} for {seconds} s"));
        out.push(run_one(&dir, target, seconds)?);
    }
    Ok(out)
}

fn fuzz_cmd(dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(dir).args(["+nightly", "fuzz"]);
    c
}

fn run_one(dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = dir.join("seeds").join(target);
    let started = Instant::now();
    let output = fuzz_cmd(dir)
        .args(["run", "-O", target])
        .arg(&corpus)
        .arg(&seeds)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            // A single input that takes 10 s is a hang.
            "-timeout=10",
            "-rss_limit_mb=2048",
        ])
        .output()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let outcome = Outcome {
        target: target.to_owned(),
        runs: last_number_after(&log, "Done ").or_else(|| last_number_after(&log, "#")),
        coverage: last_number_after(&log, "cov: "),
        seconds: started.elapsed().as_secs_f64(),
        failure: (!output.status.success()).then(|| {
            log.lines()
                .find_map(|l| {
                    l.split_once("Test unit written to ")
                        .map(|(_, p)| p.trim().to_owned())
                })
                .unwrap_or_else(|| {
                    format!(
                        "exit {}; see `cargo +nightly fuzz run {target}`",
                        output.status
                    )
                })
        }),
    };
    match &outcome.failure {
        None => println!(
            "    {target}: {} runs, coverage {}, nothing found",
            outcome.runs.map_or("?".into(), |r| r.to_string()),
            outcome.coverage.map_or("?".into(), |c| c.to_string()),
        ),
        Some(input) => {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for l in tail.into_iter().rev() {
                println!("    | {l}");
            }
            println!("    {target}: FAILED on {input}");
        }
    }
    Ok(outcome)
}

/// The number right after the last occurrence of `key` in `log`.
fn last_number_after(log: &str, key: &str) -> Option<u64> {
    log.rmatch_indices(key).find_map(|(i, _)| {
        let digits: String = log[i + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runs_and_coverage_from_libfuzzer() {
        let log = "#2\tINITED cov: 12 ft: 13\n#4194304\tpulse  cov: 262 ft: 275\n\
                   #5322165\tDONE   cov: 264 ft: 277 corp: 57/2293b\nDone 5322165 runs in 31 second(s)\n";
        assert_eq!(last_number_after(log, "Done "), Some(5_322_165));
        assert_eq!(last_number_after(log, "cov: "), Some(264));
        assert_eq!(last_number_after("nothing", "cov: "), None);
    }
}
