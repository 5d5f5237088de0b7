//! `cargo xtask bench datapath`: ns per packet of vmbw's egress classifier,
//! measured by the kernel (BPF_PROG_TEST_RUN with `repeat`), for observe,
//! HTB and EDT modes with 1, 100 and 10,000 registered flows and VMs. Needs
//! root. Prints a table, then one JSON line.
//!
//! Targets (issue "eBPF datapath"): median <= 100 ns/packet, and <= 20%
//! growth from 1 to 10,000 entries.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use vmbw::datapath::{Datapath, Mode, PinDir, SkbIn, Urgency};
use vmbw_common::{ClassConfig, Direction, class};
use vmbw_tests::frames::*;

const ENTRIES: [u32; 3] = [1, 100, 10_000];
const ROUNDS: usize = 15;
const REPEAT: u32 = 200_000;

fn main() -> anyhow::Result<()> {
    vmbw_tests::privileged().map_err(|why| anyhow::anyhow!("bench datapath {why}"))?;
    println!("vmbw egress classifier, BPF_PROG_TEST_RUN, {ROUNDS} rounds x {REPEAT} runs per cell");
    println!(
        "{:<8} {:>7} {:<12} {:>10} {:>8} {:>8}",
        "mode", "entries", "frame", "median ns", "p10", "p90"
    );
    let mut rows = Vec::new();
    for mode in [Mode::Observe, Mode::Htb, Mode::Edt] {
        for entries in ENTRIES {
            let mut dp = setup(mode, entries)?;
            for (frame_name, frame) in frames(entries) {
                let mut samples = Vec::with_capacity(ROUNDS);
                for _ in 0..ROUNDS {
                    let out = dp
                        .test_run(Direction::Egress, frame.bytes(), SkbIn::default(), REPEAT)
                        .context("test run")?;
                    samples.push(out.per_run.as_nanos() as f64);
                }
                samples.sort_by(f64::total_cmp);
                let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
                let (median, p10, p90) = (q(0.5), q(0.1), q(0.9));
                println!(
                    "{:<8} {entries:>7} {frame_name:<12} {median:>10.1} {p10:>8.1} {p90:>8.1}",
                    format!("{mode:?}").to_lowercase()
                );
                rows.push((mode, entries, frame_name, median, p10, p90));
            }
        }
    }
    let worst_median = rows.iter().map(|r| r.3).fold(0.0, f64::max);
    let mut worst_growth: f64 = 0.0;
    for r in rows.iter().filter(|r| r.1 == 1) {
        if let Some(big) = rows
            .iter()
            .find(|b| b.0 == r.0 && b.2 == r.2 && b.1 == 10_000)
        {
            worst_growth = worst_growth.max(big.3 / r.3 - 1.0);
        }
    }
    println!(
        "worst median {worst_median:.1} ns (target <= 100), worst growth 1 -> 10000 entries {:.1}% (target <= 20%)",
        worst_growth * 100.0
    );
    let cells: Vec<String> = rows
        .iter()
        .map(|(m, e, f, med, p10, p90)| {
            format!(
                r#"{{"mode":"{}","entries":{e},"frame":"{f}","median_ns":{med:.1},"p10_ns":{p10:.1},"p90_ns":{p90:.1}}}"#,
                format!("{m:?}").to_lowercase()
            )
        })
        .collect();
    println!(
        r#"{{"bench":"datapath","unit":"ns/packet","cells":[{}],"worst_median_ns":{worst_median:.1},"worst_growth_pct":{:.1},"median_target_met":{},"growth_target_met":{}}}"#,
        cells.join(","),
        worst_growth * 100.0,
        worst_median <= 100.0,
        worst_growth <= 0.20
    );
    Ok(())
}

/// A datapath with `n` migration flows and `n` VM addresses registered,
/// every class configured for the mode.
fn setup(mode: Mode, n: u32) -> anyhow::Result<Datapath> {
    let mut dp = Datapath::load(&PinDir::Ephemeral)?;
    dp.set_mode(mode)?;
    for i in 0..n {
        let vm = 1 + i % 1000;
        dp.add_migration_flow(
            vm,
            (host_ip(), 40000),
            (peer_ip(i), 4444),
            TCP,
            Urgency::Background,
        )?;
        dp.add_vm_ip(vm, vm_ip(i))?;
    }
    for vm in 0..=n.min(1000) {
        for c in [class::OTHER, class::MIGRATION, class::APPLICATION] {
            let cfg = ClassConfig::paced(0x10000 | (vm * 3 + c + 1), 10_000_000_000 / 8, 0);
            dp.set_class(vm, c, cfg)?;
        }
    }
    Ok(dp)
}

fn host_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))
}

fn peer_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc613_0000 | i)) // 198.19.x.y
}

fn vm_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc612_8000 | i)) // 198.18.128.0/17
}

/// The frames measured: a hit on the last registered migration flow (first
/// lookup), and an application packet of the last VM (after the flow and
/// port misses), both 1000 bytes.
fn frames(n: u32) -> [(&'static str, Frame); 2] {
    let oct = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [0; 4],
    };
    let last = n - 1;
    [
        (
            "migration",
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(oct(host_ip()), oct(peer_ip(last)), TCP, 0, 0)
                .tcp(40000, 4444)
                .payload(946),
        ),
        (
            "application",
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(oct(vm_ip(last)), [198, 18, 0, 2], TCP, 0, 0)
                .tcp(5000, 80)
                .payload(946),
        ),
    ]
}
