//! `vmbw watch`: per-direction throughput of an interface, counted by the
//! datapath in eBPF; traffic is never changed.

use std::time::{Duration, Instant};
use vmbw::api::units;

use anyhow::Context as _;
use vmbw::datapath::{Datapath, DirectionCounters, PinDir};

pub fn watch(iface: &str, interval: f64, count: u64, json: bool) -> anyhow::Result<()> {
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
        if !json {
            println!(
                "{:>10} {:>14} {:>12} {:>14} {:>12}",
                "seconds", "egress Mbit/s", "egress pkt/s", "ingress Mbit/s", "ingress pkt/s"
            );
        }
        let started = prev_at;
        let mut lines = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
            }
            let now = Instant::now();
            let cur = dp.counters()?;
            let rates = Rates::between(&prev, &cur, now.duration_since(prev_at).as_secs_f64());
            let t = now.duration_since(started).as_secs_f64();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "seconds": t,
                        "egress_bytes_per_sec": rates.egress_bytes,
                        "egress_packets_per_sec": rates.egress_packets,
                        "ingress_bytes_per_sec": rates.ingress_bytes,
                        "ingress_packets_per_sec": rates.ingress_packets,
                    })
                );
            } else {
                println!(
                    "{t:>10.1} {:>14.3} {:>12.0} {:>14.3} {:>12.0}",
                    units::mbit(rates.egress_bytes),
                    rates.egress_packets,
                    units::mbit(rates.ingress_bytes),
                    rates.ingress_packets,
                );
            }
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

/// Per-second rates between two counter readings `dt` seconds apart.
struct Rates {
    egress_bytes: f64,
    egress_packets: f64,
    ingress_bytes: f64,
    ingress_packets: f64,
}

impl Rates {
    fn between(prev: &DirectionCounters, cur: &DirectionCounters, dt: f64) -> Rates {
        let rate = |a: u64, b: u64| (b.wrapping_sub(a)) as f64 / dt;
        Rates {
            egress_bytes: rate(prev.egress.bytes, cur.egress.bytes),
            egress_packets: rate(prev.egress.packets, cur.egress.packets),
            ingress_bytes: rate(prev.ingress.bytes, cur.ingress.bytes),
            ingress_packets: rate(prev.ingress.packets, cur.ingress.packets),
        }
    }
}
