//! `vmbw`: the host agent and its debug command line.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vmbw::datapath::{Datapath, DirectionCounters};

#[derive(Parser)]
#[command(
    name = "vmbw",
    version,
    about = "Migration-aware bandwidth enforcement for VM hosts",
    long_about = "vmbw keeps virtual machines' applications fast while their memory is \
                  live-migrated: it tells migration traffic from application traffic in eBPF, \
                  predicts dirty pages per pre-copy iteration and divides the link (NRAC).\n\n\
                  Commands that touch the kernel need root (CAP_BPF, CAP_NET_ADMIN)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the counting datapath to an interface and print its throughput
    /// per direction each interval. Detaches on exit; traffic is never changed.
    Watch {
        /// Interface to watch (in the current network namespace).
        #[arg(long, short)]
        iface: String,
        /// Seconds between two lines.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many lines (0 = until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Follow one live migration of a VM through its QMP socket and write
    /// the dirty-page trace CSV: one row per pre-copy iteration with X1..X6
    /// (dirty pages, memory, CPU, VM network, previous iteration's
    /// duration, host uplink). Waits for the migration to start.
    Record(RecordArgs),
}

#[derive(clap::Args)]
struct RecordArgs {
    /// The source QEMU's QMP unix socket.
    #[arg(long)]
    qmp: std::path::PathBuf,
    /// Output CSV file.
    #[arg(long)]
    out: std::path::PathBuf,
    /// The VM's interface (tap) for X4, in QEMU's network namespace;
    /// repeat for several.
    #[arg(long = "vm-iface")]
    vm_ifaces: Vec<String>,
    /// The host uplink for X6, in QEMU's network namespace.
    #[arg(long)]
    uplink: Option<String>,
    /// Milliseconds between query-migrate polls.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Seconds to wait for the migration to start.
    #[arg(long, default_value_t = 600)]
    wait_secs: u64,
    /// A comment line for the trace header (how it was made); repeatable.
    #[arg(long)]
    comment: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Watch {
            iface,
            interval,
            count,
        } => watch(&iface, interval, count),
        Command::Record(args) => record(args),
    }
}

fn record(args: RecordArgs) -> anyhow::Result<()> {
    use vmbw::qemu::{MonitorConfig, record};
    anyhow::ensure!(args.poll_ms > 0, "--poll-ms must be positive");
    let opts = record::RecordOptions {
        qmp: args.qmp,
        out: args.out,
        monitor: MonitorConfig {
            poll_interval: Duration::from_millis(args.poll_ms),
            vm_ifaces: args.vm_ifaces,
            uplink: args.uplink,
            ..MonitorConfig::default()
        },
        start_timeout: Duration::from_secs(args.wait_secs),
        comments: args.comment,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = runtime
        .block_on(record::record(&opts, |s| {
            eprintln!(
                "iteration {:>3}: {:>9.0} dirty pages ({:?} counted) in {:>7.3} s; cpu {:>5.1}% mem {:>5.1}%",
                s.iteration,
                s.dirty_pages,
                s.dirty_pages_counted,
                s.iter_s,
                s.cpu_usage_pct,
                s.mem_usage_pct
            );
        }))
        .with_context(|| format!("recording the migration behind {}", opts.qmp.display()))?;
    eprintln!("{}", record::outcome_line(&summary.outcome));
    eprintln!("wrote {} rows to {}", summary.rows, opts.out.display());
    anyhow::ensure!(
        summary.outcome.status == vmbw::qemu::types::MigrationStatus::Completed,
        "the migration ended {}",
        summary.outcome.status.as_str()
    );
    Ok(())
}

fn watch(iface: &str, interval: f64, count: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        interval.is_finite() && interval > 0.0,
        "--interval must be a positive number of seconds, got {interval}"
    );
    let mut dp = Datapath::load().context("loading the datapath (are you root?)")?;
    dp.attach(iface)
        .with_context(|| format!("attaching to {iface}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(interval));
        ticker.tick().await;
        let mut prev = dp.counters()?;
        let mut prev_at = Instant::now();
        println!(
            "{:>10} {:>14} {:>12} {:>14} {:>12}",
            "seconds", "egress Mbit/s", "egress pkt/s", "ingress Mbit/s", "ingress pkt/s"
        );
        let started = prev_at;
        let mut lines = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
            }
            let now = Instant::now();
            let cur = dp.counters()?;
            print_rates(
                started,
                &prev,
                &cur,
                now.duration_since(prev_at).as_secs_f64(),
                now,
            );
            prev = cur;
            prev_at = now;
            lines += 1;
            if count != 0 && lines >= count {
                break;
            }
        }
        anyhow::Ok(())
    })?;
    drop(dp); // detaches
    Ok(())
}

fn print_rates(
    started: Instant,
    prev: &DirectionCounters,
    cur: &DirectionCounters,
    dt: f64,
    now: Instant,
) {
    let rate = |a: u64, b: u64| (b.wrapping_sub(a)) as f64 / dt;
    println!(
        "{:>10.1} {:>14.3} {:>12.0} {:>14.3} {:>12.0}",
        now.duration_since(started).as_secs_f64(),
        rate(prev.egress.bytes, cur.egress.bytes) * 8.0 / 1e6,
        rate(prev.egress.packets, cur.egress.packets),
        rate(prev.ingress.bytes, cur.ingress.bytes) * 8.0 / 1e6,
        rate(prev.ingress.packets, cur.ingress.packets),
    );
}
