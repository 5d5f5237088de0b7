//! `vmbw-testbed`: real QEMU migrations on the test-made testbed, per
//! scenario x policy x repetition, with the agent on the source host.
//! `cargo xtask demo` and `cargo xtask bench migration` run it. Needs root.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use vmbw_tests::{guest::Guest, runner, scenario::Scenario};

#[derive(Parser)]
#[command(
    name = "vmbw-testbed",
    about = "Real QEMU migrations on a test-made testbed, agent on and off"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios; reports (markdown, JSON, SVG) go to --out.
    Run {
        /// Scenario files (TOML); repeatable.
        #[arg(long = "scenario", required = true)]
        scenarios: Vec<PathBuf>,
        /// Override the scenarios' policies; repeatable.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Override the scenarios' repetitions.
        #[arg(long)]
        repetitions: Option<u32>,
        /// Report directory.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Report file stem.
        #[arg(long, default_value = "migration")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let Cmd::Run {
        scenarios,
        policies,
        repetitions,
        out,
        name,
    } = Cli::parse().cmd;
    vmbw_tests::privileged().map_err(|why| anyhow::anyhow!("vmbw-testbed {why}"))?;
    vmbw_tests::guest::available().map_err(|why| anyhow::anyhow!("no test guest: {why}"))?;
    runner::catch_interrupt();
    let mut loaded = Vec::new();
    for path in &scenarios {
        let mut s = Scenario::load(path)?;
        if !policies.is_empty() {
            s.policies = policies.clone();
        }
        if let Some(r) = repetitions {
            s.repetitions = r;
        }
        s.check().with_context(|| format!("{}", path.display()))?;
        loaded.push(s);
    }
    eprintln!("building the test guest (cached) ...");
    let guest = Guest::build()?;
    let total: u32 = loaded
        .iter()
        .map(|s| s.policies.len() as u32 * s.repetitions)
        .sum();
    let mut results = Vec::new();
    let mut n = 0;
    for sc in &loaded {
        for rep in 1..=sc.repetitions {
            for policy in &sc.policies {
                n += 1;
                eprintln!("[{n}/{total}] {} | {policy} | repetition {rep}", sc.name);
                let started = std::time::Instant::now();
                match runner::run_one(&guest, sc, policy, rep, &out.join("logs")) {
                    Ok(rs) => {
                        for r in rs {
                            eprintln!(
                                "    -> {}{} in {:.1} s (downtime {} ms, {} iterations), application {:.2} of {:.1} Mbit/s{} [{:.0} s wall]",
                                if r.vms > 1 {
                                    format!("{}: ", r.vm)
                                } else {
                                    String::new()
                                },
                                if r.converged {
                                    "converged"
                                } else {
                                    "NOT converged"
                                },
                                r.total_s,
                                r.downtime_ms.map_or("-".into(), |d| format!("{d:.0}")),
                                r.iterations.map_or("-".into(), |i| i.to_string()),
                                r.app_mbit,
                                r.app_asked_mbit,
                                r.prediction_mape.map_or(String::new(), |m| format!(
                                    ", prediction MAPE {m:.1}%"
                                )),
                                started.elapsed().as_secs_f64()
                            );
                            results.push(r);
                        }
                    }
                    Err(e) if runner::interrupted() => bail!("interrupted: {e:#}"),
                    Err(e) => eprintln!("    -> run failed: {e:#}"),
                }
            }
        }
    }
    if results.is_empty() {
        bail!("no run succeeded");
    }
    let files = runner::write_reports(&out, &name, &results)?;
    println!("{}", runner::markdown(&results));
    for f in &files {
        println!("wrote {}", f.display());
    }
    println!(
        "{}",
        serde_json::json!({"bench": "migration", "runs": results.len(), "planned": total, "results": results})
    );
    Ok(())
}
