//! `vmbw`: the host agent and its debug command line.

mod debug_cli;
mod plan_cli;
mod predict_cli;
mod simulate_cli;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vmbw::datapath::{Datapath, DirectionCounters, PinDir};

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
    /// A running agent's summary: mode, policy, link use, VMs, migrations.
    Status(debug_cli::ApiArgs),
    /// The VMs a running agent follows: migration progress, allocations, traffic per class.
    Vms(debug_cli::ApiArgs),
    /// The flows a running agent classifies: migration 5-tuples and ports, VM addresses.
    Flows(debug_cli::ApiArgs),
    /// The HTB classes a running agent enforces.
    Classes(debug_cli::ApiArgs),
    /// The last decisions about one VM, with their inputs and reasons.
    Explain {
        /// The VM's name as the agent knows it.
        vm: String,
        #[command(flatten)]
        api: debug_cli::ApiArgs,
    },
    /// Run the host agent: classify and count traffic in eBPF, follow the
    /// VMs' migrations over QMP, predict dirty pages, divide the link every
    /// iteration (HTB classes, QEMU max-bandwidth), serve /metrics and the
    /// status API. SIGHUP reloads the policy; SIGTERM restores the host.
    Agent {
        /// Configuration file (TOML); without it every key has its default.
        #[arg(long, short, env = "VMBW_CONFIG")]
        config: Option<std::path::PathBuf>,
        /// Print the default configuration, every key documented, and exit.
        #[arg(long)]
        print_default_config: bool,
        /// Validate the configuration, print what it resolves to, and exit
        /// (0 = valid, 1 = not, naming the file, line and key); touches
        /// nothing. Run it before a SIGHUP reload.
        #[arg(long)]
        check: bool,
        /// On exit, leave the datapath and the HTB tree running for the next
        /// agent to adopt (traffic stays classified and shaped).
        #[arg(long)]
        keep_datapath: bool,
    },
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
    /// Show vmbw's HTB tree on an interface: classes with their roles,
    /// rates and counters. Read-only.
    Shaping {
        /// Interface whose tree to show (in the current network namespace).
        #[arg(long, short)]
        iface: String,
    },
    /// Plan migrations (VMM-CFG) or consolidation (SICC, ICMA, FFD) for an
    /// inventory of hosts and VMs; optionally write KubeVirt migrations.
    Plan(plan_cli::PlanArgs),
    /// Run the planning papers' simulations from a seed (what
    /// `cargo xtask bench plan` measures), or write their inventories.
    PlanSim(plan_cli::SimArgs),
    /// Follow one live migration of a VM through its QMP socket and write
    /// the dirty-page trace CSV: one row per pre-copy iteration with X1..X6
    /// (dirty pages, memory, CPU, VM network, previous iteration's
    /// duration, host uplink). Waits for the migration to start.
    Record(RecordArgs),
    /// Predict each iteration's dirty pages of a recorded trace one step
    /// ahead with GM(1,N) and the baselines, and score them (MAPE, WAPE, RMSE).
    Predict(predict_cli::PredictArgs),
    /// Replay a trace's dirtying in the pre-copy simulator under several
    /// policies: convergence, total time, downtime, what the application got.
    Simulate(simulate_cli::SimulateArgs),
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

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, one cause per line; no backtrace for users.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Status(a) => debug_cli::show(debug_cli::View::Status, &a),
        Command::Vms(a) => debug_cli::show(debug_cli::View::Vms, &a),
        Command::Flows(a) => debug_cli::show(debug_cli::View::Flows, &a),
        Command::Classes(a) => debug_cli::show(debug_cli::View::Classes, &a),
        Command::Explain { vm, api } => debug_cli::show(debug_cli::View::Explain(vm), &api),
        Command::Agent {
            config,
            print_default_config,
            check,
            keep_datapath,
        } => agent(config, print_default_config, check, keep_datapath),
        Command::Watch {
            iface,
            interval,
            count,
        } => watch(&iface, interval, count),
        Command::Shaping { iface } => show_shaping(&iface),
        Command::Plan(args) => plan_cli::plan(&args),
        Command::PlanSim(args) => plan_cli::sim(&args),
        Command::Record(args) => record(args),
        Command::Predict(args) => predict_cli::predict(&args),
        Command::Simulate(args) => simulate_cli::run(&args),
    }
}

fn show_shaping(iface: &str) -> anyhow::Result<()> {
    use vmbw::shaping::{
        ObservedTree, Rate, TcClient,
        handles::{ClassRole, class_role, display_handle},
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let tc = TcClient::connect()?;
        let link = tc.link(iface).await?;
        let qdiscs = tc.qdiscs(&link).await?;
        let classes = tc.classes(&link).await?;
        let Some(tree) = ObservedTree::from_dump(&qdiscs, &classes)
            .with_context(|| format!("reading the tree on {iface}"))?
        else {
            let root = qdiscs
                .iter()
                .find(|q| q.parent == vmbw::shaping::handles::TC_H_ROOT)
                .map_or("none".to_owned(), |q| {
                    format!("{} {}", q.kind, display_handle(q.handle))
                });
            println!("{iface}: not shaped by vmbw (root qdisc: {root})");
            return anyhow::Ok(());
        };
        println!(
            "{iface}: vmbw HTB tree, mtu {}, default class 7662:{:x}",
            link.mtu, tree.default_minor
        );
        for c in tree.classes.values() {
            let role = match class_role(c.handle) {
                Some(ClassRole::Root) => "link".to_owned(),
                Some(ClassRole::Default) => "default".to_owned(),
                Some(ClassRole::Probe) => "fq probe".to_owned(),
                Some(ClassRole::Vm { slot, class }) => format!("VM {slot} {class}"),
                None => "not vmbw's".to_owned(),
            };
            println!(
                "  class {:<10} {:<18} rate {:>14} ceil {:>14} prio {} leaf {:<6} sent {} bytes",
                display_handle(c.handle),
                role,
                Rate::bits_per_sec(c.params.rate * 8).to_string(),
                Rate::bits_per_sec(c.params.ceil * 8).to_string(),
                c.params.prio,
                c.leaf.as_ref().map_or("-", |l| l.kind.as_str()),
                c.bytes
            );
        }
        anyhow::Ok(())
    })
}

fn watch(iface: &str, interval: f64, count: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        interval.is_finite() && interval > 0.0,
        "--interval must be a positive number of seconds, got {interval}"
    );
    let mut dp =
        Datapath::load(&PinDir::Ephemeral).context("loading the datapath (are you root?)")?;
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
                "iteration {:>3}: {:>9.0} dirty pages ({} counted) in {:>7.3} s; cpu {:>5.1}% mem {:>5.1}%",
                s.iteration,
                s.dirty_pages,
                s.dirty_pages_counted.map_or("-".to_owned(), |n| n.to_string()),
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

fn agent(
    config: Option<std::path::PathBuf>,
    print_default_config: bool,
    check: bool,
    keep_datapath: bool,
) -> anyhow::Result<()> {
    if print_default_config {
        print!("{}", vmbw::config::DEFAULT_TOML);
        return Ok(());
    }
    let cfg = match &config {
        Some(path) => vmbw::config::Config::load(path)?,
        None => vmbw::config::Config::default(),
    };
    if check {
        print!("{}", cfg.describe());
        println!(
            "{}: valid",
            config
                .as_ref()
                .map_or("built-in defaults".into(), |p| p.display().to_string())
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(vmbw::daemon::run(vmbw::daemon::Options {
        config: cfg,
        config_path: config,
        keep_datapath,
    }))?;
    Ok(())
}
