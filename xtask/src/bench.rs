//! `cargo xtask bench <name>`: benchmarks. Each prints human-readable
//! progress and ends with one line of JSON that summarises the run.

use std::process::Command;

use anyhow::bail;

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark to run.
    name: String,
    /// Extra arguments passed to the benchmark.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// The benchmarks, by name, with a one-line description. Each is a release
/// binary `bench-<name>` of the `vmbw-tests` crate: xtask itself must build
/// without the eBPF toolchain (it installs it), so it only runs them.
const BENCHES: &[(&str, &str)] = &[
    (
        "agent-load",
        "the release agent with 64 replayed QMP VMs, 8 migrating, 10,000 flows: sample->kernel p50/p99, CPU, RSS, netlink/s, scrape time; root",
    ),
    (
        "datapath",
        "ns/packet of the tc classifier (BPF_PROG_TEST_RUN) per mode and table size; root",
    ),
    (
        "predict",
        "µs per one-step GM(1,N) prediction for windows 8, 16, 32",
    ),
    (
        "predict-accuracy",
        "one-step dirty-page WAPE/MAPE/RMSE per model per real trace: tuning, evaluation, holdout, holdout2, scale, holdout3, scale2, window, holdout4, holdout5, holdout6, holdout7 and QEMU 7.2 corpora",
    ),
    (
        "shaping",
        "HTB goodput per rate, two-class contention with a live change, class-change latency; root",
    ),
    (
        "migration",
        "real QEMU migrations per scenario x policy x repetition (tests/scenarios); one report per scenario in docs/bench; root, long",
    ),
    (
        "report",
        "rebuilds docs/bench/README.md, the index of the per-scenario migration reports, README's results table and docs/reproduction.md",
    ),
    (
        "plan",
        "VMM-CFG and SICC papers' simulations, 10k-VM planning time (drives the release vmbw binary)",
    ),
    (
        "reproduce",
        "the seed papers' claims beside ours: docs/reproduction/seed-NNN.json, docs/reproduction.md (seeds 000-003; 000 and 001 migrate real guests: root, long)",
    ),
];

pub fn run(args: &Args) -> anyhow::Result<()> {
    match args.name.as_str() {
        "plan" => crate::bench_plan::run(&args.rest),
        "reproduce" => crate::reproduce::run(&args.rest),
        "migration" => crate::migration::bench(&args.rest),
        "report" => crate::migration::report(&args.rest),
        "agent-load" => {
            // The agent under load is the release build.
            util::build_agent("release")?;
            util::run(
                Command::new(env!("CARGO"))
                    .current_dir(util::workspace_root())
                    .args(["run", "--release", "--quiet", "--package", "vmbw-tests"])
                    .args(["--bin", "bench-agent-load", "--"])
                    .args(&args.rest)
                    .env(
                        "VMBW_AGENT_BIN",
                        util::workspace_root().join("target/release/vmbw"),
                    ),
            )
        }
        name if BENCHES.iter().any(|(n, _)| *n == name) => util::run(
            Command::new(env!("CARGO"))
                .current_dir(util::workspace_root())
                .args([
                    "run",
                    "--release",
                    "--quiet",
                    "--package",
                    "vmbw-tests",
                    "--bin",
                ])
                .arg(format!("bench-{name}"))
                .arg("--")
                .args(&args.rest),
        ),
        other => {
            let known: Vec<String> = BENCHES
                .iter()
                .map(|(name, what)| format!("  {name}: {what}"))
                .collect();
            bail!(
                "unknown benchmark `{other}`; available:\n{}",
                known.join("\n")
            )
        }
    }
}
