//! `vmbw`: the host agent and its debug command line.

mod cli;

use clap::{Parser, Subcommand};

use cli::{debug, plan, predict, simulate};

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
    /// How log lines (stderr) are written: `text` for people, `json` (one
    /// object a line) for a log pipeline.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VMBW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// A running agent's summary: mode, policy, link use, VMs, migrations.
    Status(debug::ApiArgs),
    /// The VMs a running agent follows: migration progress, allocations, traffic per class.
    Vms(debug::ApiArgs),
    /// The flows a running agent classifies: migration 5-tuples and ports, VM addresses.
    Flows(debug::ApiArgs),
    /// The HTB classes a running agent enforces.
    Classes(debug::ApiArgs),
    /// The last decisions about one VM, with their inputs and reasons.
    Explain {
        /// The VM's name as the agent knows it.
        vm: String,
        #[command(flatten)]
        api: debug::ApiArgs,
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
        /// One JSON object a line (seconds, bytes and packets per second
        /// each way) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show vmbw's HTB tree on an interface: classes with their roles,
    /// rates and counters. Read-only.
    Shaping {
        /// Interface whose tree to show (in the current network namespace).
        #[arg(long, short)]
        iface: String,
        /// Print the tree as one JSON object (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Plan migrations (VMM-CFG) or consolidation (SICC, ICMA, FFD) for an
    /// inventory of hosts and VMs; optionally write KubeVirt migrations.
    Plan(plan::PlanArgs),
    /// Run the planning papers' simulations from a seed (what
    /// `cargo xtask bench plan` measures), or write their inventories.
    PlanSim(plan::SimArgs),
    /// Follow one live migration of a VM through its QMP socket and write
    /// the dirty-page trace CSV: one row per pre-copy iteration with X1..X6
    /// (dirty pages, memory, CPU, VM network, previous iteration's
    /// duration, host uplink). Waits for the migration to start.
    Record(RecordArgs),
    /// Predict each iteration's dirty pages of a recorded trace one step
    /// ahead with GM(1,N) and the baselines, and score them (MAPE, WAPE, RMSE).
    Predict(predict::PredictArgs),
    /// Replay a trace's dirtying in the pre-copy simulator under several
    /// policies: convergence, total time, downtime, what the application got.
    Simulate(simulate::SimulateArgs),
    /// Print a shell completion script to stdout, e.g.
    /// `vmbw completions bash > /usr/share/bash-completion/completions/vmbw`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages (vmbw.1 and one vmbw-COMMAND.1 per command) into a
    /// directory.
    Man {
        /// Where to write them (created if missing).
        dir: std::path::PathBuf,
    },
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
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Status(a) => debug::show(debug::View::Status, &a),
        Command::Vms(a) => debug::show(debug::View::Vms, &a),
        Command::Flows(a) => debug::show(debug::View::Flows, &a),
        Command::Classes(a) => debug::show(debug::View::Classes, &a),
        Command::Explain { vm, api } => debug::show(debug::View::Explain(vm), &api),
        Command::Agent {
            config,
            print_default_config,
            check,
            keep_datapath,
        } => cli::agent::agent(config, print_default_config, check, keep_datapath),
        Command::Watch {
            iface,
            interval,
            count,
            json,
        } => cli::watch::watch(&iface, interval, count, json),
        Command::Shaping { iface, json } => cli::shaping::show(&iface, json),
        Command::Plan(args) => plan::plan(&args),
        Command::PlanSim(args) => plan::sim(&args),
        Command::Record(args) => cli::record::record(args),
        Command::Predict(args) => predict::predict(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "vmbw",
                &mut script,
            );
            print_quietly(&script)
        }
        Command::Man { dir } => write_man_pages(&dir),
    }
}

/// `vmbw man DIR`: the top page and one page per command, named the way
/// `man vmbw-agent` finds them.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut pages = vec![("vmbw".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("vmbw-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        print_quietly(format!("{}\n", path.display()).as_bytes())?;
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`| head`) ends the output
/// quietly instead of panicking.
fn print_quietly(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
