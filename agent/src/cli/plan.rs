//! `vmbw plan` and `vmbw plan-sim`: the planners on an inventory file, and
//! the papers' simulations from a seed (used by `cargo xtask bench plan`).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use vmbw_plan::{
    self, forecast,
    inventory::Inventory,
    report,
    sicc::{self, ConsolidationConfig, PeakModel},
    sim, stats,
    vmmcfg::{self, VmmCfgConfig},
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algo {
    /// Coalition-formation migration planning (moves VMs off overloaded hosts).
    VmmCfg,
    /// Segmented iterative correlation consolidation, then FFD.
    Sicc,
    /// ICMA-0.5 over all VMs, then FFD.
    Icma,
    /// First-fit decreasing by peak utilisation, no consolidation.
    Ffd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// KubeVirt VirtualMachineInstanceMigration manifests (YAML).
    Vmim,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeakModelArg {
    /// A CVM's peak is its mean (the SICC paper's Theorem 3).
    Mean,
    /// A CVM's peak is the maximum of its summed forecast (conservative).
    Max,
}

/// `plan-sim sicc --population`: how the VMs' daily cycles relate
/// (`vmbw_plan::sim::PopulationKind`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PopulationArg {
    /// The paper's moments, every daily cycle at a random phase.
    Paper,
    /// Half the VMs peak by day, half by night.
    DayNight,
    /// The paper's VMs, `--flat-share` of them without a daily cycle.
    Flat,
    /// Three utilisation bands matching SICC's PRU edges.
    Bands,
}

impl From<PeakModelArg> for PeakModel {
    fn from(m: PeakModelArg) -> Self {
        match m {
            PeakModelArg::Mean => Self::Mean,
            PeakModelArg::Max => Self::Max,
        }
    }
}

#[derive(Args)]
pub struct PlanArgs {
    /// Inventory file (JSON; format in plan/INVENTORY.md).
    #[arg(long)]
    inventory: PathBuf,
    /// Planning algorithm.
    #[arg(long, value_enum, default_value = "vmm-cfg")]
    algo: Algo,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Seed of VMM-CFG's random merge order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// VMM-CFG: merge/split rounds at most.
    #[arg(long, default_value_t = 10)]
    max_rounds: usize,
    /// SICC/ICMA: how a consolidated VM's peak is taken.
    #[arg(long, value_enum, default_value = "mean")]
    peak_model: PeakModelArg,
    /// SICC/ICMA/FFD: server size in standard VMs (100 % each).
    #[arg(long, default_value_t = 10.0)]
    server_vms: f64,
    /// Also write manifests for the moves (VMM-CFG only).
    #[arg(long, value_enum)]
    emit: Option<Emit>,
    /// Where --emit writes; without it the manifests go to stdout and the
    /// plan to stderr.
    #[arg(long, requires = "emit")]
    out: Option<PathBuf>,
    /// Leave spec.addedNodeSelector out of the manifests (KubeVirt < 1.6).
    #[arg(long, requires = "emit")]
    no_target_node: bool,
}

pub fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.inventory)
        .with_context(|| format!("reading {}", args.inventory.display()))?;
    let inv = Inventory::from_json(&text)
        .with_context(|| format!("checking inventory {}", args.inventory.display()))?;
    let parse_seconds = started.elapsed().as_secs_f64();
    if args.emit.is_some() && args.algo != Algo::VmmCfg {
        bail!(
            "--emit vmim needs a move plan: use --algo vmm-cfg (consolidation plans place VMs \
             on abstract servers, not on the inventory's hosts)"
        );
    }
    // With manifests on stdout, the plan itself goes to stderr.
    let report_to_stderr = args.emit.is_some() && args.out.is_none();
    let mut sink: Box<dyn std::io::Write> = if report_to_stderr {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };

    match args.algo {
        Algo::VmmCfg => {
            let config = VmmCfgConfig {
                seed: args.seed,
                max_rounds: args.max_rounds,
                ..VmmCfgConfig::default()
            };
            let t = Instant::now();
            let result = vmmcfg::plan(&inv, &config);
            let plan_seconds = t.elapsed().as_secs_f64();
            if args.json {
                let mut v = report::vmmcfg_json(&inv, &result);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("seed".into(), json!(args.seed));
                    obj.insert("parse_seconds".into(), json!(parse_seconds));
                    obj.insert("plan_seconds".into(), json!(plan_seconds));
                }
                writeln!(sink, "{v}")?;
            } else {
                write!(sink, "{}", report::vmmcfg_text(&inv, &result))?;
                writeln!(
                    sink,
                    "inventory read in {parse_seconds:.3} s, planned in {plan_seconds:.3} s (seed {})",
                    args.seed
                )?;
            }
            if args.emit == Some(Emit::Vmim) {
                let options = report::VmimOptions {
                    target_node_selector: !args.no_target_node,
                    ..report::VmimOptions::default()
                };
                let manifests = report::vmim_manifests(&inv, &result.moves, &options)?;
                match &args.out {
                    Some(path) => write_file(path, &manifests)?,
                    None => print!("{manifests}"),
                }
            }
        }
        Algo::Sicc | Algo::Icma | Algo::Ffd => {
            let algorithm = match args.algo {
                Algo::Sicc => sicc::Algorithm::Sicc,
                Algo::Icma => sicc::Algorithm::Icma,
                _ => sicc::Algorithm::Ffd,
            };
            let config = ConsolidationConfig {
                peak_model: args.peak_model.into(),
                server_capacity: 100.0 * args.server_vms,
                ..ConsolidationConfig::default()
            };
            let t = Instant::now();
            let (_, result) = vmbw_plan::consolidate_inventory(&inv, algorithm, &config)?;
            let plan_seconds = t.elapsed().as_secs_f64();
            let names: Vec<String> = inv.vms.iter().map(|v| v.name.clone()).collect();
            if args.json {
                let mut v = report::consolidation_json(&names, &result, &config, None);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("parse_seconds".into(), json!(parse_seconds));
                    obj.insert("plan_seconds".into(), json!(plan_seconds));
                }
                writeln!(sink, "{v}")?;
            } else {
                write!(
                    sink,
                    "{}",
                    report::consolidation_text(&names, &result, &config)
                )?;
                writeln!(
                    sink,
                    "inventory read in {parse_seconds:.3} s, forecast + planned in {plan_seconds:.3} s"
                )?;
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[derive(Args)]
pub struct SimArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// VMM-CFG paper's data centre: `hosts` hosts, 3×hosts VMs by default.
    VmmCfg {
        #[arg(long)]
        hosts: usize,
        /// Number of VMs (default: 3 × hosts, as in the paper).
        #[arg(long)]
        vms: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 10)]
        max_rounds: usize,
        /// Write the generated inventory here instead of planning.
        #[arg(long)]
        write_inventory: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// SICC paper's VM population: forecast, then FFD, ICMA and SICC, each
    /// checked against the day that follows.
    Sicc {
        #[arg(long, default_value_t = 3000)]
        vms: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Samples per day.
        #[arg(long, default_value_t = 1440)]
        period: usize,
        /// Days of history the forecasts are made from.
        #[arg(long, default_value_t = 2)]
        history_days: usize,
        #[arg(long, value_enum, default_value = "mean")]
        peak_model: PeakModelArg,
        /// How the VMs' daily cycles relate to each other.
        #[arg(long, value_enum, default_value = "paper")]
        population: PopulationArg,
        /// With `--population flat`: the share of VMs without a cycle.
        #[arg(long, default_value_t = 0.3)]
        flat_share: f64,
        #[arg(long)]
        json: bool,
    },
}

pub fn sim(args: &SimArgs) -> anyhow::Result<()> {
    match &args.scenario {
        Scenario::VmmCfg {
            hosts,
            vms,
            seed,
            max_rounds,
            write_inventory,
            json,
        } => {
            let vms = vms.unwrap_or(3 * hosts);
            let file = sim::vmmcfg_inventory(*hosts, vms, *seed);
            if let Some(path) = write_inventory {
                write_file(path, &serde_json::to_string(&file)?)?;
                println!(
                    "wrote {} ({hosts} hosts, {vms} VMs, {} edges)",
                    path.display(),
                    file.edges.len()
                );
                return Ok(());
            }
            let inv = Inventory::from_file(file).context("the generated inventory is invalid")?;
            let config = VmmCfgConfig {
                seed: *seed,
                max_rounds: *max_rounds,
                ..VmmCfgConfig::default()
            };
            let t = Instant::now();
            let result = vmmcfg::plan(&inv, &config);
            let plan_seconds = t.elapsed().as_secs_f64();
            if *json {
                let mut v = report::vmmcfg_json(&inv, &result);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("seed".into(), json!(seed));
                    obj.insert("plan_seconds".into(), json!(plan_seconds));
                }
                println!("{v}");
            } else {
                print!("{}", report::vmmcfg_text(&inv, &result));
                println!("planned in {plan_seconds:.3} s (seed {seed})");
            }
        }
        Scenario::Sicc {
            vms,
            seed,
            period,
            history_days,
            peak_model,
            population,
            flat_share,
            json,
        } => {
            anyhow::ensure!(*history_days >= 1, "--history-days must be at least 1");
            anyhow::ensure!(
                (0.0..=1.0).contains(flat_share),
                "--flat-share must be between 0 and 1, not {flat_share}"
            );
            let kind = match population {
                PopulationArg::Paper => sim::PopulationKind::Paper,
                PopulationArg::DayNight => sim::PopulationKind::DayNight,
                PopulationArg::Flat => sim::PopulationKind::Flat { share: *flat_share },
                PopulationArg::Bands => sim::PopulationKind::Bands,
            };
            let population =
                sim::utilisation_population_of(kind, *vms, *period, *history_days, *seed);
            if !*json {
                println!("population: {} ({vms} VMs, seed {seed})", kind.name());
            }
            let t = Instant::now();
            let forecasts: Vec<Vec<f64>> = population
                .history
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    forecast::seasonal_forecast(h, *period, *period, forecast::ArmaOrder::default())
                        .map(|f| f.values)
                        .with_context(|| format!("forecasting VM #{i}"))
                })
                .collect::<anyhow::Result<_>>()?;
            let forecast_seconds = t.elapsed().as_secs_f64();
            let errors: Vec<f64> = forecasts
                .iter()
                .zip(&population.truth)
                .flat_map(|(f, t)| f.iter().zip(t).map(|(a, b)| (a - b).abs()))
                .collect();
            let forecast_mae = stats::mean(&errors);
            let config = ConsolidationConfig {
                peak_model: (*peak_model).into(),
                ..ConsolidationConfig::default()
            };
            let names: Vec<String> = (0..*vms).map(|i| format!("vm-{i:05}")).collect();
            let mut results = serde_json::Map::new();
            for algorithm in [
                sicc::Algorithm::Ffd,
                sicc::Algorithm::Icma,
                sicc::Algorithm::Sicc,
            ] {
                let t = Instant::now();
                let result = sicc::consolidate(&forecasts, algorithm, &config)?;
                let seconds = t.elapsed().as_secs_f64();
                let truth = sicc::evaluate(&result, &population.truth, &config);
                let mut v = report::consolidation_json(&names, &result, &config, Some(&truth));
                if let Some(obj) = v.as_object_mut() {
                    obj.remove("placement");
                    obj.insert("seconds".into(), json!(seconds));
                }
                if !*json {
                    println!(
                        "{:<5} items {:>5} (CVMs of 2+: {:>4})  servers {:>4}  mean PRU {:>6.2}%  \
                         forecast-overloaded servers {:>3}  next-day overloaded servers {:>3}  {:.2} s",
                        algorithm.name(),
                        result.cvms.len(),
                        result.cvms.iter().filter(|c| c.members.len() > 1).count(),
                        result.servers.len(),
                        result.mean_pru(),
                        result.servers_over(config.server_capacity),
                        truth.servers_over,
                        seconds
                    );
                }
                results.insert(algorithm.name().to_owned(), v);
            }
            if *json {
                println!(
                    "{}",
                    json!({
                        "scenario": "sicc",
                        "population": kind.name(),
                        "vms": vms,
                        "seed": seed,
                        "period": period,
                        "history_days": history_days,
                        "forecast_seconds": forecast_seconds,
                        "forecast_mae": forecast_mae,
                        "results": results,
                    })
                );
            } else {
                println!(
                    "forecasts: {forecast_seconds:.2} s, mean absolute error {forecast_mae:.2} points"
                );
            }
        }
    }
    Ok(())
}
