//! `vmbw-testbed`: real QEMU migrations on the test-made testbed, per
//! scenario x policy x repetition, with the agent on the source host, and
//! the per-scenario reports built from them. `cargo xtask demo` and
//! `cargo xtask bench migration|report` run it. `run` needs root.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use vmbw_tests::{
    guest::Guest,
    report::{self, ScenarioReport, fmt_spread},
    runner,
    scenario::Scenario,
};

#[derive(Parser)]
#[command(
    name = "vmbw-testbed",
    about = "Real QEMU migrations on a test-made testbed: vmbw against stock QEMU and the policies operators run today"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (every policy x repetition of each); one report per
    /// scenario (markdown, JSON, SVG scatter, SVG timeline) goes to --out.
    Run {
        /// Scenario files (TOML); repeatable.
        #[arg(long = "scenario", required = true)]
        scenarios: Vec<PathBuf>,
        /// Run only these policies instead of the scenarios' own; repeatable.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Override the scenarios' repetitions.
        #[arg(long)]
        repetitions: Option<u32>,
        /// With --policy: put the new runs into the scenario's existing
        /// report in --out, replacing only those policies' results (each
        /// keeps its own commit stamp), instead of writing a new report.
        #[arg(long, requires = "policies")]
        merge: bool,
        /// Report directory.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Rebuild every scenario's pages (markdown, SVGs) and the index page
    /// (README.md) of a report directory from its JSON files, listing the
    /// scenarios not run yet.
    Report {
        #[arg(long, default_value = "docs/bench")]
        dir: PathBuf,
        /// Where the scenario files are.
        #[arg(long, default_value = "tests/scenarios")]
        scenarios: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            scenarios,
            policies,
            repetitions,
            merge,
            out,
        } => run(&scenarios, &policies, repetitions, merge, &out),
        Cmd::Report { dir, scenarios } => index(&dir, &scenarios),
    }
}

/// Seconds a run takes at most: booting its guests (TCG, about 30 s each
/// here), the migration up to the timeout, the agent's start and the
/// teardown.
fn worst_case_s(sc: &Scenario) -> f64 {
    sc.timeout_s + 30.0 * sc.vm.len() as f64 + 20.0
}

fn run(
    paths: &[PathBuf],
    policies: &[String],
    repetitions: Option<u32>,
    merge: bool,
    out: &Path,
) -> anyhow::Result<()> {
    vmbw_tests::privileged().map_err(|why| anyhow::anyhow!("vmbw-testbed {why}"))?;
    vmbw_tests::guest::available().map_err(|why| anyhow::anyhow!("no test guest: {why}"))?;
    runner::catch_interrupt();
    for name in vmbw_testenv::sweep_stale_namespaces() {
        eprintln!("removed stale namespace {name} (its process is gone)");
    }
    for path in vmbw_testenv::sweep_stale_bpffs() {
        eprintln!(
            "removed stale bpffs {} (its process is gone)",
            path.display()
        );
    }
    let mut loaded = Vec::new();
    for path in paths {
        let mut s = Scenario::load(path)?;
        let all = s.policies.clone();
        if !policies.is_empty() {
            s.policies = policies.to_vec();
        }
        if let Some(r) = repetitions {
            s.repetitions = r;
        }
        s.check().with_context(|| format!("{}", path.display()))?;
        loaded.push((path.clone(), s, all));
    }
    let total: u32 = loaded
        .iter()
        .map(|(_, s, _)| s.policies.len() as u32 * s.repetitions)
        .sum();
    let worst: f64 = loaded
        .iter()
        .map(|(_, s, _)| (s.policies.len() as u32 * s.repetitions) as f64 * worst_case_s(s))
        .sum();
    eprintln!(
        "{total} runs in {} scenario(s); at most {:.0} min (each run: guest boot, the migration up to its timeout, teardown)",
        loaded.len(),
        worst / 60.0
    );
    eprintln!("building the test guest (cached) ...");
    let guest = Guest::build()?;
    let stamp = report::Stamp::now();
    if stamp.commit.ends_with("+dirty") {
        eprintln!(
            "note: the checkout has uncommitted changes; the reports will say {}",
            stamp.commit
        );
    }
    let began = Instant::now();
    let mut n = 0;
    let mut summary = Vec::new();
    for (path, sc, all) in &loaded {
        let mut results = Vec::new();
        // Repetitions outermost: each policy's runs are spread over the
        // whole scenario's time, so a slow spell of the machine does not
        // fall on one policy only.
        for rep in 1..=sc.repetitions {
            for policy in &sc.policies {
                n += 1;
                eprintln!(
                    "[{n}/{total}, {:.0} min elapsed] {} | {policy} | repetition {rep}",
                    began.elapsed().as_secs_f64() / 60.0,
                    sc.name
                );
                let mut started = Instant::now();
                let mut tried = runner::run_one(&guest, sc, policy, rep, &out.join("logs"));
                if let Err(e) = &tried
                    && e.downcast_ref::<runner::GuestBootFailed>().is_some()
                    && !runner::interrupted()
                {
                    eprintln!("    -> {e:#}\n    -> trying once more (no migration had begun)");
                    started = Instant::now();
                    tried = runner::run_one(&guest, sc, policy, rep, &out.join("logs"));
                }
                match tried {
                    Ok(rs) => {
                        for r in rs {
                            eprintln!(
                                "    -> {}{} in {:.1} s (downtime {} ms, {} iterations), application {:.2} Mbit/s ({}), SLA p5 {}{}{} [{:.0} s wall]",
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
                                r.app,
                                r.sla_p5.map_or("-".into(), |p| format!("{p:.2}")),
                                if r.steps.is_empty() {
                                    String::new()
                                } else {
                                    format!(", steps {}", r.steps.join(","))
                                },
                                if r.refused.is_empty() {
                                    String::new()
                                } else {
                                    format!(", refused {}", r.refused.join("; "))
                                },
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
        if results.is_empty() {
            eprintln!("no run of {} succeeded: no report", sc.name);
            continue;
        }
        let fresh = ScenarioReport::new(sc, path, stamp.clone(), results);
        let rep = match merge {
            true => match ScenarioReport::load(out, &fresh.stem())? {
                Some(old) if old.vcpus != fresh.vcpus => bail!(
                    "{}: its report's guests had {} vCPU(s), this scenario's have {}; \
                     rows from two guests would not compare: run every policy without --merge",
                    sc.name,
                    old.vcpus,
                    fresh.vcpus
                ),
                Some(old) => old.merged(all, &sc.policies, stamp.clone(), fresh.results),
                None => fresh,
            },
            false => fresh,
        };
        for f in report::write(out, &rep)? {
            println!("wrote {}", f.display());
        }
        println!("{}", report::markdown(&rep));
        for s in rep.summary() {
            summary.push(serde_json::json!({
                "scenario": rep.scenario,
                "policy": s.policy,
                "family": s.family,
                "runs": s.runs,
                "converged": s.converged,
                "time_s": s.time_s.map(|t| t.0),
                "sla_p5": s.sla_p5.map(|t| t.0),
                "downtime_ms": s.downtime_ms.map(|t| t.0),
            }));
            eprintln!(
                "  {} | {}: {}/{} converged, {} s, SLA p5 {}",
                rep.scenario,
                s.policy,
                s.converged,
                s.runs,
                fmt_spread(s.time_s, 1),
                fmt_spread(s.sla_p5, 2)
            );
        }
    }
    if summary.is_empty() {
        bail!("no run succeeded");
    }
    println!(
        "{}",
        serde_json::json!({"bench": "migration", "planned": total, "summary": summary})
    );
    Ok(())
}

fn index(dir: &Path, scenario_dir: &Path) -> anyhow::Result<()> {
    let reports = report::load_all(dir)?;
    for rep in &reports {
        report::render(dir, rep)?;
    }
    let mut scenarios = Vec::new();
    for f in report::files_with_extension(scenario_dir, "toml")? {
        let sc = Scenario::load(&f)?;
        scenarios.push((f, sc));
    }
    let page = dir.join("README.md");
    std::fs::write(&page, report::index(&reports, &scenarios))
        .with_context(|| format!("writing {}", page.display()))?;
    // The project README's results table, when run from the checkout.
    let readme = Path::new("README.md");
    if let Ok(text) = std::fs::read_to_string(readme) {
        let mut new = text.clone();
        for (what, begin, end, block) in [
            (
                "results table",
                report::README_BEGIN,
                report::README_END,
                report::readme_table(&reports),
            ),
            (
                "scorecard",
                report::SCORECARD_BEGIN,
                report::SCORECARD_END,
                report::scorecard(&reports),
            ),
        ] {
            match report::with_block(&new, begin, end, &block) {
                Some(t) => new = t,
                None => eprintln!("README.md has no {what} markers ({begin}); it was not updated"),
            }
        }
        if new != text {
            std::fs::write(readme, new).context("writing README.md")?;
            println!("updated README.md's results table and scorecard");
        }
    }
    println!(
        "wrote {} ({} scenario reports, {} scenarios not run yet)",
        page.display(),
        reports.len(),
        scenarios
            .iter()
            .filter(|(_, s)| !reports.iter().any(|r| r.scenario == s.name))
            .count()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "report", "reports": reports.len(), "scenarios": scenarios.len()})
    );
    Ok(())
}
