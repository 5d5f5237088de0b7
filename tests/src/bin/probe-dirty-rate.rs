//! How does QEMU's page-sampling `calc-dirty-rate` read a guest writing at
//! a known rate? Boots one guest on the migration testbed (no migration)
//! and asks QEMU again and again, per measurement plan entry (window,
//! sampled pages per GiB), then prints what it read.
//!
//! QEMU answers in whole MiB/s: it counts the sampled pages whose hash
//! changed over the window, scales them to the guest's RAM and divides by
//! the window, rounding down (`update_dirtyrate`, migration/dirtyrate.c).
//! Each changed sample adds `1024 / pages_per_gib` MiB over the window;
//! where that is at least 1 MiB/s (window ≤ 1024 / pages_per_gib s: 990
//! ms at 1024 pages per GiB, 60 ms at 16384) the answer still tells how
//! many samples changed, and the probe decodes it exactly ("decoded").
//! Where it is less (the agent's 1 s at 16384) the rounding takes off up
//! to 1 MiB/s, and the probe can only add half of that back.
//!
//! ```text
//! probe-dirty-rate [--plan MS:PAGES:N,...] [--mem-mb N] [--json] WORKLOAD_ARG VALUE ...
//! probe-dirty-rate --mode mem-seq --wss-mb 64 --dirty-mbps 1.5
//! ```
//!
//! Every `--KEY VALUE` other than the probe's own goes to the guest's
//! `vmbw-workload`. Root, after `cargo xtask setup`; the testbed's guards
//! remove its namespaces and QEMUs on exit. The last line is JSON with
//! `--json`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use vmbw::qemu::{Qmp, QmpOptions};
use vmbw_tests::{
    guest::{self, Guest, Workload},
    runner,
    testbed::MigrationTestbed,
};

const USAGE: &str = "\
usage: probe-dirty-rate [--plan MS:PAGES:N,...] [--mem-mb N] [--json] --mode MODE [--KEY VALUE ...]
  --plan    measurement plan: window ms, sampled pages per GiB, how many
            (default 1000:16384:25,990:1024:40,248:4096:80,60:16384:100)
  --mem-mb  guest RAM, MiB (default 160)
  --json    print a JSON summary as the last line
  other --KEY VALUE pairs go to the guest's vmbw-workload (--mode, --wss-mb,
  --dirty-mbps, --hot-pct, ...)";

struct Step {
    window_ms: u64,
    pages_per_gib: u32,
    count: usize,
}

struct Options {
    plan: Vec<Step>,
    mem_mb: u32,
    json: bool,
    workload: Workload,
}

fn parse_plan(text: &str) -> anyhow::Result<Vec<Step>> {
    text.split(',')
        .map(|entry| {
            let f: Vec<&str> = entry.split(':').collect();
            let [ms, pages, n] = f[..] else {
                bail!("--plan entry {entry:?}: want MS:PAGES:N");
            };
            let step = Step {
                window_ms: ms
                    .parse()
                    .with_context(|| format!("--plan {entry:?}: MS"))?,
                pages_per_gib: pages
                    .parse()
                    .with_context(|| format!("--plan {entry:?}: PAGES"))?,
                count: n.parse().with_context(|| format!("--plan {entry:?}: N"))?,
            };
            // QEMU's own bounds (qmp_calc_dirty_rate).
            if !(50..=60_000).contains(&step.window_ms)
                || !(128..=16384).contains(&step.pages_per_gib)
                || step.count == 0
            {
                bail!("--plan {entry:?}: MS 50..=60000, PAGES 128..=16384, N >= 1");
            }
            Ok(step)
        })
        .collect()
}

fn parse_args() -> anyhow::Result<Options> {
    let mut plan = "1000:16384:25,990:1024:40,248:4096:80,60:16384:100".to_owned();
    let mut mem_mb = 160;
    let mut json = false;
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--json" => json = true,
            key if key.starts_with("--") => {
                let value = args
                    .next()
                    .with_context(|| format!("{key} needs a value"))?;
                match key {
                    "--plan" => plan = value,
                    "--mem-mb" => mem_mb = value.parse().context("--mem-mb")?,
                    _ => pairs.push((key.trim_start_matches("--").to_owned(), value)),
                }
            }
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let Some(mode) = pairs.iter().position(|(k, _)| k == "mode") else {
        bail!("--mode is required\n{USAGE}");
    };
    let mut workload = Workload::new(&pairs.remove(mode).1);
    for (k, v) in &pairs {
        workload = workload.with(k, v);
    }
    Ok(Options {
        plan: parse_plan(&plan)?,
        mem_mb,
        json,
        workload,
    })
}

/// One answer: QEMU's MiB/s and the window it really measured, ms.
struct Reading {
    mibps: f64,
    window_ms: f64,
}

/// The guest's distinct MiB written per second over the window, from
/// QEMU's answer: exact where each changed sample adds at least 1 MiB/s,
/// else the answer plus half of what its rounding takes off.
fn decode(r: &Reading, pages_per_gib: u32) -> f64 {
    let per_sample = 1024.0 / f64::from(pages_per_gib) * 1000.0 / r.window_ms;
    if per_sample >= 1.0 {
        (r.mibps / per_sample).ceil() * per_sample
    } else {
        r.mibps + 0.5
    }
}

async fn measure(qmp: &mut Qmp, step: &Step) -> anyhow::Result<Reading> {
    qmp.calc_dirty_rate(step.window_ms, step.pages_per_gib)
        .await?;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let info = qmp.query_dirty_rate().await?;
        if info.status == "measured" {
            return Ok(Reading {
                mibps: info.dirty_rate.context("no dirty-rate")? as f64,
                window_ms: info.calc_time.context("no calc-time")?,
            });
        }
    }
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    runner::catch_interrupt();
    vmbw_tests::privileged().map_err(|e| anyhow::anyhow!(e))?;
    guest::available().map_err(|e| anyhow::anyhow!(e))?;
    let guest = Guest::build()?;
    let tb = MigrationTestbed::new(100.0)?;
    let (src, _dst) = tb.boot(&guest, &o.workload, o.mem_mb, Duration::from_secs(300))?;
    // As the recorder does: let the workload settle first.
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "guest {} MiB, vmbw-workload {}",
        o.mem_mb,
        o.workload.describe()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let mut qmp = Qmp::connect(&src.qmp_ctl, QmpOptions::default()).await?;
        let mut rows = Vec::new();
        for step in &o.plan {
            let mut readings = Vec::with_capacity(step.count);
            for _ in 0..step.count {
                if runner::interrupted() {
                    bail!("interrupted");
                }
                readings.push(measure(&mut qmp, step).await?);
            }
            let n = readings.len() as f64;
            let raw = readings.iter().map(|r| r.mibps).sum::<f64>() / n;
            let decoded = readings
                .iter()
                .map(|r| decode(r, step.pages_per_gib))
                .sum::<f64>()
                / n;
            let window = readings.iter().map(|r| r.window_ms).sum::<f64>() / n;
            let sd = (readings
                .iter()
                .map(|r| (decode(r, step.pages_per_gib) - decoded).powi(2))
                .sum::<f64>()
                / (n - 1.0).max(1.0))
            .sqrt();
            let exact = 1024.0 / f64::from(step.pages_per_gib) * 1000.0 / window >= 1.0;
            println!(
                "{:>5} ms x {:>5} pages/GiB, {:>3} readings: QEMU's mean {raw:.2} MiB/s; \
                 {} {decoded:.2} ± {:.2} MiB/s ({:.3} MiB per window)",
                step.window_ms,
                step.pages_per_gib,
                readings.len(),
                if exact {
                    "decoded exactly"
                } else {
                    "+0.5 rounding"
                },
                sd / n.sqrt(),
                decoded * window / 1000.0,
            );
            rows.push(json!({
                "window_ms": step.window_ms,
                "pages_per_gib": step.pages_per_gib,
                "readings": readings.len(),
                "qemu_mean_mibps": raw,
                "decoded_mibps": decoded,
                "decoded_stderr_mibps": sd / n.sqrt(),
                "exact": exact,
                "mib_per_window": decoded * window / 1000.0,
            }));
        }
        anyhow::Ok(rows)
    })?;
    if o.json {
        println!(
            "{}",
            json!({
                "probe": "dirty-rate",
                "mem_mb": o.mem_mb,
                "workload": o.workload.describe(),
                "steps": rows,
            })
        );
    }
    Ok(())
}
