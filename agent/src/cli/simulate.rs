//! `vmbw simulate`: what-if runs of the pre-copy simulator with a recorded
//! trace's dirty-page process, one line per policy.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use vmbw::{
    control::{
        Armed,
        policy::Spec,
        sim::{DirtyProcess, Outcome, Scenario, simulate},
    },
    qemu::trace,
};

const MIB: f64 = 1024.0 * 1024.0;
use vmbw::api::BYTES_PER_MBIT as MBIT;

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Trace CSV whose per-iteration dirty rates drive the guest.
    #[arg(long)]
    trace: PathBuf,
    /// Guest memory, MiB.
    #[arg(long)]
    memory_mb: f64,
    /// Link capacity, Mbit/s.
    #[arg(long)]
    link_mbit: f64,
    /// The VM's application demand, Mbit/s.
    #[arg(long, default_value_t = 0.0)]
    app_mbit: f64,
    /// Working set the dirtying is spread over, MiB (default: 1.25 x the
    /// largest iteration's dirty pages in the trace, at most the memory).
    #[arg(long)]
    wss_mb: Option<f64>,
    /// Other traffic on the link, Mbit/s.
    #[arg(long, default_value_t = 0.0)]
    background_mbit: f64,
    /// QEMU's downtime limit, ms.
    #[arg(long, default_value_t = 300.0)]
    downtime_ms: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout_s: f64,
    /// Bandwidth promised to the application, Mbit/s (its SLA).
    #[arg(long)]
    reserve_mbit: Option<f64>,
    /// Tools armed at the start, for `…+adamig` and `…+escalate` (repeatable):
    /// postcopy, auto-converge.
    #[arg(long = "armed", value_parser = ["postcopy", "auto-converge"])]
    armed: Vec<String>,
    /// Policies to compare (repeatable).
    #[arg(long = "policy", default_values_t = ["default".to_owned(), "static:64MiB".to_owned(), "nrac".to_owned(), "bda".to_owned(), "nrac+adamig".to_owned()])]
    policies: Vec<String>,
    /// Print every pass with the policy's reasons.
    #[arg(long)]
    verbose: bool,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    json: bool,
}

/// The scenario a trace and the arguments describe.
pub fn scenario(args: &SimulateArgs) -> anyhow::Result<Scenario> {
    let t = trace::read_path(&args.trace)?;
    let Some(dirty) = DirtyProcess::from_trace(&t) else {
        bail!(
            "{}: no iteration with a positive duration",
            args.trace.display()
        );
    };
    let page_size = t.rows[0].page_size as f64;
    for (name, v) in [
        ("--memory-mb", args.memory_mb),
        ("--link-mbit", args.link_mbit),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number, got {v}");
        }
    }
    let memory = args.memory_mb * MIB;
    let max_dirty = t.rows.iter().map(|r| r.dirty_pages).fold(0.0, f64::max) * page_size;
    let wss = args
        .wss_mb
        .map_or((1.25 * max_dirty).min(memory).max(page_size), |w| w * MIB);
    Ok(Scenario {
        memory_bytes: memory,
        page_size,
        wss_bytes: wss,
        dirty,
        link: args.link_mbit * MBIT,
        app_demand: args.app_mbit * MBIT,
        background: args.background_mbit * MBIT,
        downtime_limit_s: args.downtime_ms / 1000.0,
        timeout_s: args.timeout_s,
        reserve: args.reserve_mbit.map(|r| r * MBIT),
        armed: Armed {
            postcopy: args.armed.iter().any(|a| a == "postcopy"),
            postcopy_preempt: args.armed.iter().any(|a| a == "postcopy"),
            auto_converge: args.armed.iter().any(|a| a == "auto-converge"),
        },
    })
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let sc = scenario(args)?;
    println!(
        "trace {}: {} pieces; memory {:.0} MiB, working set {:.1} MiB, link {:.1} Mbit/s, app {:.1} Mbit/s, timeout {:.0} s",
        args.trace.display(),
        sc.dirty.pieces.len(),
        sc.memory_bytes / MIB,
        sc.wss_bytes / MIB,
        sc.link / MBIT,
        sc.app_demand / MBIT,
        sc.timeout_s
    );
    let mut outcomes: Vec<Outcome> = Vec::new();
    for p in &args.policies {
        let spec = Spec::parse(p).with_context(|| format!("--policy {p}"))?;
        outcomes.push(simulate(&sc, &spec, p));
    }
    println!(
        "{:<16} {:>9} {:>9} {:>11} {:>7} {:>10} {:>11}  steps",
        "policy", "converged", "total s", "downtime ms", "passes", "app Mbit/s", "app/reserve"
    );
    for o in &outcomes {
        println!(
            "{:<16} {:>9} {:>9.1} {:>11.1} {:>7} {:>10.2} {:>11.3}  {}",
            o.policy,
            if o.converged {
                if o.postcopy { "postcopy" } else { "yes" }
            } else {
                "NO"
            },
            o.total_s,
            o.downtime_s * 1000.0,
            o.passes.len(),
            o.app_mean / MBIT,
            o.app_min_reserve_ratio,
            o.steps.join(",")
        );
        if args.verbose {
            for p in &o.passes {
                println!(
                    "    pass {:>3} t={:>7.1}s {:>7.1}s rate {:>7.2} Mbit/s app {:>6.2} dirty {:>8.0} (predicted {:>8.0}) throttle {:.0}%",
                    p.iteration,
                    p.start_s,
                    p.duration_s,
                    p.rate / MBIT,
                    p.app / MBIT,
                    p.dirty_pages,
                    p.predicted_dirty_pages,
                    p.throttle * 100.0
                );
                for r in &p.reasons {
                    println!("        {r}");
                }
            }
        }
    }
    if args.json {
        let summary = JsonSummary {
            trace: args.trace.display().to_string(),
            outcomes: outcomes
                .iter()
                .map(|o| JsonOutcome {
                    policy: &o.policy,
                    converged: o.converged,
                    postcopy: o.postcopy,
                    total_s: o.total_s,
                    downtime_ms: o.downtime_s * 1000.0,
                    passes: o.passes.len(),
                    app_mbit: o.app_mean / MBIT,
                    app_reserve_ratio: o.app_min_reserve_ratio,
                    steps: &o.steps,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// `--json`'s last line.
#[derive(serde::Serialize)]
struct JsonSummary<'a> {
    trace: String,
    outcomes: Vec<JsonOutcome<'a>>,
}

#[derive(serde::Serialize)]
struct JsonOutcome<'a> {
    policy: &'a str,
    converged: bool,
    postcopy: bool,
    total_s: f64,
    downtime_ms: f64,
    passes: usize,
    app_mbit: f64,
    app_reserve_ratio: f64,
    steps: &'a [String],
}
