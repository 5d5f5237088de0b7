//! `cargo xtask bench plan`: the planning papers' simulations, reproduced
//! from seeds with the release `vmbw` binary (`vmbw plan-sim`, `vmbw plan`).
//!
//! 1. VMM-CFG (the VMM-CFG paper, Fig. 3; docs/papers.md): overloaded hosts and load standard
//!    deviation before/after for 10..100 hosts, 3 VMs per host.
//! 2. SICC (the SICC paper, Fig. 5): 3000 VMs, mean 30 %, sd 15 %, 10 standard
//!    VMs per server: items (CVMs) and servers for FFD, ICMA and SICC,
//!    with the paper's CVM peak = mean (Theorem 3) and with the true peak.
//! 3. SICC's 195-VM case (Fig. 4): mean PRU of SICC vs ICMA.
//! 4. Scale: a 10,000-VM / 1,000-host inventory planned by `vmbw plan`.
//!
//! Options (after `--`): `--vmm-runs N` (10), `--sicc-runs N` (3),
//! `--small-runs N` (20). The last line is the JSON summary.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::util;

struct Options {
    vmm_runs: u64,
    sicc_runs: u64,
    small_runs: u64,
}

fn parse(rest: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        vmm_runs: 10,
        sicc_runs: 3,
        small_runs: 20,
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse::<u64>()
            .with_context(|| format!("{flag} needs a whole number"))?;
        anyhow::ensure!(value > 0, "{flag} must be at least 1");
        match flag.as_str() {
            "--vmm-runs" => o.vmm_runs = value,
            "--sicc-runs" => o.sicc_runs = value,
            "--small-runs" => o.small_runs = value,
            other => bail!("unknown option {other} (known: --vmm-runs, --sicc-runs, --small-runs)"),
        }
    }
    Ok(o)
}

pub fn run(rest: &[String]) -> anyhow::Result<()> {
    let options = parse(rest)?;
    util::step("building vmbw (release)");
    let vmbw = build_vmbw()?;

    util::step(&format!(
        "VMM-CFG, paper parameters, mean of {} seeds per row",
        options.vmm_runs
    ));
    let vmm = vmmcfg_table(&vmbw, options.vmm_runs)?;

    util::step(&format!(
        "SICC vs ICMA vs FFD, 3000 VMs, {} seeds",
        options.sicc_runs
    ));
    let mut sicc = serde_json::Map::new();
    for model in ["mean", "max"] {
        sicc.insert(
            model.to_owned(),
            sicc_table(&vmbw, 3000, options.sicc_runs, model)?,
        );
    }

    util::step(&format!("SICC 195-VM case, {} seeds", options.small_runs));
    let small = sicc_small(&vmbw, options.small_runs)?;

    util::step("scale: 10,000 VMs on 1,000 hosts, `vmbw plan --algo vmm-cfg`");
    let scale = scale(&vmbw)?;

    println!(
        "{}",
        json!({
            "bench": "plan",
            "vmmcfg": vmm,
            "sicc_3000": sicc,
            "sicc_195": small,
            "scale_10k": scale,
        })
    );
    Ok(())
}

pub fn build_vmbw() -> anyhow::Result<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .current_dir(util::workspace_root())
        .args([
            "build",
            "--release",
            "--package",
            "vmbw",
            "--bin",
            "vmbw",
            "--message-format=json-render-diagnostics",
        ])
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build --release -p vmbw failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "vmbw")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the vmbw executable")
}

pub fn vmbw_json(vmbw: &Path, args: &[String]) -> anyhow::Result<Value> {
    let out = Command::new(vmbw)
        .args(args)
        .output()
        .with_context(|| format!("running {}", vmbw.display()))?;
    if !out.status.success() {
        bail!(
            "vmbw {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("vmbw {} printed no JSON", args.join(" ")))
}

/// One `vmbw plan-sim vmm-cfg` run's JSON: `hosts` hosts, 3 VMs each.
pub fn vmmcfg_run(vmbw: &Path, hosts: usize, seed: u64) -> anyhow::Result<Value> {
    vmbw_json(
        vmbw,
        &[
            "plan-sim",
            "vmm-cfg",
            "--hosts",
            &hosts.to_string(),
            "--seed",
            &seed.to_string(),
            "--json",
        ]
        .map(String::from),
    )
}

/// One `vmbw plan-sim sicc` run's JSON.
pub fn sicc_run(
    vmbw: &Path,
    population: &str,
    extra: &[&str],
    vms: usize,
    seed: u64,
    peak_model: &str,
) -> anyhow::Result<Value> {
    let mut args: Vec<String> = [
        "plan-sim",
        "sicc",
        "--vms",
        &vms.to_string(),
        "--seed",
        &seed.to_string(),
        "--peak-model",
        peak_model,
        "--population",
        population,
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    vmbw_json(vmbw, &args)
}

/// A number field of a JSON summary; NaN when absent.
pub fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn vmmcfg_table(vmbw: &Path, runs: u64) -> anyhow::Result<Value> {
    println!(
        "{:>5} {:>5} | {:>8} {:>8} | {:>8} {:>8} | {:>7} {:>7} | {:>6} {:>9} {:>9} {:>6} {:>6} {:>8}",
        "hosts",
        "VMs",
        "over.bef",
        "over.aft",
        "std.bef",
        "std.aft",
        "util%bf",
        "util%af",
        "moves",
        "v before",
        "v after",
        "merges",
        "splits",
        "plan ms"
    );
    let mut rows = Vec::new();
    for hosts in (10..=100).step_by(10) {
        let mut acc: Vec<Vec<f64>> = vec![Vec::new(); 12];
        for seed in 1..=runs {
            let v = vmmcfg_run(vmbw, hosts, seed)?;
            let moves = v["moves"].as_array().map_or(0, Vec::len) as f64;
            for (i, x) in [
                num(&v, "overloaded_before"),
                num(&v, "overloaded_after"),
                num(&v, "load_std_before"),
                num(&v, "load_std_after"),
                num(&v, "utilisation_std_pct_before"),
                num(&v, "utilisation_std_pct_after"),
                moves,
                num(&v, "cost_before"),
                num(&v, "cost_after"),
                num(&v, "merges"),
                num(&v, "splits"),
                1e3 * num(&v, "plan_seconds"),
            ]
            .into_iter()
            .enumerate()
            {
                acc[i].push(x);
            }
        }
        let m: Vec<f64> = acc.iter().map(|a| mean(a)).collect();
        println!(
            "{:>5} {:>5} | {:>8.2} {:>8.2} | {:>8.2} {:>8.2} | {:>7.2} {:>7.2} | {:>6.1} {:>9.1} {:>9.1} {:>6.2} {:>6.2} {:>8.3}",
            hosts,
            3 * hosts,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            m[6],
            m[7],
            m[8],
            m[9],
            m[10],
            m[11]
        );
        rows.push(json!({
            "hosts": hosts, "vms": 3 * hosts, "runs": runs,
            "overloaded_before": m[0], "overloaded_after": m[1],
            "load_std_before": m[2], "load_std_after": m[3],
            "utilisation_std_pct_before": m[4], "utilisation_std_pct_after": m[5],
            "moves": m[6], "cost_before": m[7], "cost_after": m[8],
            "merges": m[9], "splits": m[10], "plan_ms": m[11],
        }));
    }
    println!(
        "paper (Fig. 3, values not in the text): overloaded hosts grow with the host count and drop after VMM-CFG; load std-dev drops"
    );
    Ok(Value::Array(rows))
}

fn sicc_table(vmbw: &Path, vms: usize, runs: u64, model: &str) -> anyhow::Result<Value> {
    let algos = ["ffd", "icma", "sicc"];
    let keys = [
        "cvms",
        "consolidated_cvms",
        "servers",
        "mean_pru",
        "forecast_servers_over",
        "seconds",
    ];
    let mut acc: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); keys.len() + 1]; algos.len()];
    let mut mae = Vec::new();
    for seed in 1..=runs {
        let started = Instant::now();
        let v = sicc_run(vmbw, "paper", &[], vms, seed, model)?;
        mae.push(num(&v, "forecast_mae"));
        for (a, algo) in algos.iter().enumerate() {
            let r = &v["results"][algo];
            for (k, key) in keys.iter().enumerate() {
                acc[a][k].push(num(r, key));
            }
            acc[a][keys.len()].push(num(&r["truth"], "servers_over"));
        }
        println!("    seed {seed}: {:.1} s", started.elapsed().as_secs_f64());
    }
    let m: Vec<Vec<f64>> = acc
        .iter()
        .map(|a| a.iter().map(|x| mean(x)).collect())
        .collect();
    let icma = &m[1];
    println!(
        "  CVM peak model: {model}{}",
        if model == "mean" {
            " (the paper's Theorem 3)"
        } else {
            " (true maximum of the summed forecast)"
        }
    );
    println!(
        "  {:<5} {:>8} {:>9} {:>8} {:>9} {:>10} {:>10} {:>14} {:>14} {:>7}",
        "algo",
        "items",
        "CVMs 2+",
        "servers",
        "mean PRU",
        "items/ICMA",
        "srv/ICMA",
        "srv over fcst",
        "srv over next",
        "sec"
    );
    let mut out = serde_json::Map::new();
    for (a, algo) in algos.iter().enumerate() {
        let r = &m[a];
        println!(
            "  {:<5} {:>8.1} {:>9.1} {:>8.1} {:>8.2}% {:>9.1}% {:>9.1}% {:>14.1} {:>14.1} {:>7.2}",
            algo,
            r[0],
            r[1],
            r[2],
            r[3],
            100.0 * r[0] / icma[0],
            100.0 * r[2] / icma[2],
            r[4],
            r[6],
            r[5]
        );
        out.insert(
            (*algo).to_owned(),
            json!({
                "items": r[0], "consolidated_cvms": r[1], "servers": r[2], "mean_pru": r[3],
                "servers_over_forecast": r[4], "servers_over_next_day": r[6], "seconds": r[5],
            }),
        );
    }
    println!(
        "  paper (Fig. 5, 100 runs): SICC 1274 CVMs = 85% of ICMA's, 125 servers = 95% of ICMA's"
    );
    out.insert("cvm_ratio_sicc_icma".into(), json!(m[2][0] / icma[0]));
    out.insert("server_ratio_sicc_icma".into(), json!(m[2][2] / icma[2]));
    out.insert("forecast_mae".into(), json!(mean(&mae)));
    out.insert("runs".into(), json!(runs));
    Ok(Value::Object(out))
}

fn sicc_small(vmbw: &Path, runs: u64) -> anyhow::Result<Value> {
    let (mut icma, mut sicc, mut icma_n, mut sicc_n, mut bands) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), [0.0; 3]);
    for seed in 1..=runs {
        let v = sicc_run(vmbw, "paper", &[], 195, seed, "mean")?;
        icma.push(num(&v["results"]["icma"], "mean_pru"));
        sicc.push(num(&v["results"]["sicc"], "mean_pru"));
        icma_n.push(num(&v["results"]["icma"], "cvms"));
        sicc_n.push(num(&v["results"]["sicc"], "cvms"));
        for (b, acc) in bands.iter_mut().enumerate() {
            *acc += v["results"]["sicc"]["bands"][b].as_f64().unwrap_or(0.0) / runs as f64;
        }
    }
    let (pi, ps) = (mean(&icma), mean(&sicc));
    println!(
        "  mean PRU: ICMA {pi:.2}%, SICC {ps:.2}% ({:+.1}%); items ICMA {:.1}, SICC {:.1}; PRU bands <25/25-50/>50: {:.1}/{:.1}/{:.1}",
        100.0 * (ps / pi - 1.0),
        mean(&icma_n),
        mean(&sicc_n),
        bands[0],
        bands[1],
        bands[2]
    );
    println!(
        "  paper (Fig. 4, 195 real VMs, bands 17/136/42): SICC's average PRU 13% above ICMA's"
    );
    Ok(json!({
        "runs": runs, "mean_pru_icma": pi, "mean_pru_sicc": ps, "pru_gain": ps / pi - 1.0,
        "items_icma": mean(&icma_n), "items_sicc": mean(&sicc_n), "bands": bands,
    }))
}

fn scale(vmbw: &Path) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("vmbw-bench-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("inventory-10k.json");
    let path = file.to_string_lossy().into_owned();
    let status = Command::new(vmbw)
        .args([
            "plan-sim",
            "vmm-cfg",
            "--hosts",
            "1000",
            "--vms",
            "10000",
            "--seed",
            "1",
            "--write-inventory",
            &path,
        ])
        .status()
        .context("writing the 10k inventory")?;
    anyhow::ensure!(status.success(), "vmbw plan-sim --write-inventory failed");
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let (mut wall, mut plan, mut parse) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let mut last = Value::Null;
    for _ in 0..3 {
        let started = Instant::now();
        let v = vmbw_json(
            vmbw,
            &["plan", "--inventory", &path, "--algo", "vmm-cfg", "--json"].map(String::from),
        )?;
        wall = wall.min(started.elapsed().as_secs_f64());
        plan = plan.min(num(&v, "plan_seconds"));
        parse = parse.min(num(&v, "parse_seconds"));
        last = v;
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  inventory {:.1} MB; best of 3: plan {:.3} s, read + check {:.3} s, whole command {:.3} s (target < 10 s); \
         overloaded {} -> {}, {} moves, {} merges",
        bytes as f64 / 1e6,
        plan,
        parse,
        wall,
        last["overloaded_before"],
        last["overloaded_after"],
        last["moves"].as_array().map_or(0, Vec::len),
        last["merges"]
    );
    Ok(json!({
        "hosts": 1000, "vms": 10000, "edges": last["edges"], "inventory_bytes": bytes,
        "plan_seconds": plan, "parse_seconds": parse, "command_seconds": wall,
        "overloaded_before": last["overloaded_before"], "overloaded_after": last["overloaded_after"],
        "moves": last["moves"].as_array().map_or(0, Vec::len), "under_10s": wall < 10.0,
    }))
}
