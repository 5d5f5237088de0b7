//! `cargo xtask bench shaping`: goodput accuracy of vmbw's HTB classes,
//! two classes under contention with a live change, and the latency of a
//! class change. Real kernel, test-made namespaces, real TCP. Human lines
//! first, one line of JSON last.
//!
//! Options: `--rates 10,30,100,500` (Mbit/s), `--seconds 5` (measurement
//! window per rate), `--changes 500` (class changes timed).

use std::time::Duration;

use anyhow::{Context as _, bail};
use vmbw::shaping::{ClassSpec, DesiredTree, Rate, Shaper, TrafficClass, VmShaping, class_handle};
use vmbw_tests::{
    measure::{self, percentile},
    shaped::{IFACE, ShapedLink},
};

struct Options {
    rates: Vec<u64>,
    seconds: f64,
    changes: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        rates: vec![10, 30, 100, 500],
        seconds: 5.0,
        changes: 500,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rates" => {
                o.rates = value()?
                    .split(',')
                    .map(|r| r.trim().parse().with_context(|| format!("rate {r:?}")))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            "--changes" => o.changes = value()?.parse().context("--changes")?,
            other => bail!("unknown option {other} (--rates, --seconds, --changes)"),
        }
    }
    if o.rates.is_empty() || o.rates.iter().any(|r| *r == 0 || *r > 900) {
        bail!("--rates must be 1..=900 Mbit/s each (the bench link is 1 Gbit/s)");
    }
    if !(o.seconds.is_finite() && o.seconds >= 1.0) {
        bail!("--seconds must be at least 1");
    }
    Ok(o)
}

fn one_class_tree(rate: Rate) -> DesiredTree {
    let line = Rate::gbit(1);
    DesiredTree::new(line, ClassSpec::borrowing(Rate::mbit(1), line)).with_vm(
        0,
        VmShaping {
            migration: ClassSpec::fixed(Rate::mbit(1)),
            application: ClassSpec::fixed(rate),
        },
    )
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    if let Err(reason) = vmbw_tests::privileged() {
        bail!("the shaping bench cannot run here: {reason}");
    }
    let link = ShapedLink::new()?;
    let tc = link.tc()?;
    let (mut shaper, _) = link
        .rt
        .block_on(Shaper::install(
            tc,
            IFACE,
            &one_class_tree(Rate::mbit(o.rates[0])),
            &link.opts(),
        ))
        .context("installing the HTB tree")?;
    let result = run(&o, &link, &mut shaper);
    link.rt.block_on(shaper.cleanup()).context("cleanup")?;
    let json = result?;
    println!("{json}");
    Ok(())
}

fn run(o: &Options, link: &ShapedLink, shaper: &mut Shaper) -> anyhow::Result<String> {
    // 1. Goodput through one class per rate.
    let class = class_handle(0, TrafficClass::Application).context("slot 0")?;
    let mut goodput_json = Vec::new();
    for (n, mbit) in o.rates.iter().enumerate() {
        link.rt
            .block_on(shaper.reconcile(&one_class_tree(Rate::mbit(*mbit))))
            .context("setting the rate")?;
        let g = measure::goodput(
            link,
            class,
            *mbit as f64 * 1e6,
            6000 + n as u16,
            Duration::from_secs(2),
            Duration::from_secs_f64(o.seconds),
        )?;
        println!(
            "goodput at {mbit:>4} Mbit/s: {:8.3} Mbit/s (expected {:8.3} = rate x {}/{} payload per frame), error {:+.2}% over {:.1} s",
            g.measured_bps / 1e6,
            g.expected_bps / 1e6,
            g.mss,
            g.mtu + vmbw_tests::tcp::ETH_HLEN,
            g.error_pct(),
            g.window_s
        );
        goodput_json.push(format!(
            r#"{{"rate_mbit":{mbit},"goodput_mbit":{:.3},"expected_mbit":{:.3},"error_pct":{:.3},"mss":{},"mtu":{},"window_s":{:.2}}}"#,
            g.measured_bps / 1e6,
            g.expected_bps / 1e6,
            g.error_pct(),
            g.mss,
            g.mtu,
            g.window_s
        ));
    }

    // 2. Two classes under contention, then a live change.
    let line = Rate::mbit(100);
    let spec = |mbit| ClassSpec::borrowing(Rate::mbit(mbit), line);
    let (before, after) = ((spec(60), spec(39)), (spec(20), spec(79)));
    let contended = DesiredTree::new(line, spec(1)).with_vm(
        0,
        VmShaping {
            migration: before.0,
            application: before.1,
        },
    );
    link.rt
        .block_on(shaper.reconcile(&contended))
        .context("contention tree")?;
    let c = measure::contention(
        link,
        shaper,
        [(0, TrafficClass::Migration), (0, TrafficClass::Application)],
        [(before.0, after.0), (before.1, after.1)],
        Duration::from_millis(1500),
        Duration::from_secs_f64(o.seconds.min(5.0)),
    )?;
    let names = ["migration", "application"];
    let rates = [(60, 20), (39, 79)];
    let mut classes_json = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let err = |got: f64, want: f64| (got - want) / want * 100.0;
        let reaction_ms = c.reaction_s[i].map(|r| r * 1e3);
        println!(
            "contention {name:>11}: {:>2} Mbit/s -> {:7.3} ({:+.2}%), live change to {:>2} Mbit/s -> {:7.3} ({:+.2}%), visible after {}",
            rates[i].0,
            c.before[i] / 1e6,
            err(c.before[i], c.expected_before[i]),
            rates[i].1,
            c.after[i] / 1e6,
            err(c.after[i], c.expected_after[i]),
            reaction_ms.map_or("never".into(), |r| format!("{r:.0} ms")),
        );
        classes_json.push(format!(
            r#"{{"class":"{name}","rate_before_mbit":{},"goodput_before_mbit":{:.3},"error_before_pct":{:.3},"rate_after_mbit":{},"goodput_after_mbit":{:.3},"error_after_pct":{:.3},"reaction_ms":{}}}"#,
            rates[i].0,
            c.before[i] / 1e6,
            err(c.before[i], c.expected_before[i]),
            rates[i].1,
            c.after[i] / 1e6,
            err(c.after[i], c.expected_after[i]),
            reaction_ms.map_or("null".into(), |r| format!("{r:.1}")),
        ));
    }

    // 3. Class change latency: one netlink round trip each, idle link.
    let lat = measure::change_latency(
        link,
        shaper,
        0,
        TrafficClass::Migration,
        [spec(20), spec(60)],
        o.changes,
    )?;
    let us = |p: f64| percentile(&lat, p) * 1e6;
    println!(
        "class change (netlink round trip), {} changes: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        lat.len(),
        us(50.0),
        us(90.0),
        us(99.0),
        us(100.0)
    );
    // A full reconcile (dump, plan, one change) for comparison.
    let mut full = Vec::new();
    for i in 0..50 {
        let mut d = contended.clone();
        if let Some(v) = d.vms.get_mut(&0) {
            v.migration = if i % 2 == 0 { spec(20) } else { spec(60) };
        }
        let t = std::time::Instant::now();
        link.rt
            .block_on(shaper.reconcile(&d))
            .context("reconcile")?;
        full.push(t.elapsed().as_secs_f64());
    }
    let full_us = |p: f64| percentile(&full, p) * 1e6;
    println!(
        "full reconcile (dump + plan + change), {} runs: p50 {:.0} us, p99 {:.0} us",
        full.len(),
        full_us(50.0),
        full_us(99.0)
    );

    Ok(format!(
        r#"{{"bench":"shaping","goodput":[{}],"contention":{{"link_mbit":100,"classes":[{}],"change_rtt_ms":[{:.3},{:.3}]}},"class_change_us":{{"n":{},"p50":{:.1},"p90":{:.1},"p99":{:.1},"max":{:.1}}},"reconcile_us":{{"n":{},"p50":{:.1},"p99":{:.1}}}}}"#,
        goodput_json.join(","),
        classes_json.join(","),
        c.change_rtt_s[0] * 1e3,
        c.change_rtt_s[1] * 1e3,
        lat.len(),
        us(50.0),
        us(90.0),
        us(99.0),
        us(100.0),
        full.len(),
        full_us(50.0),
        full_us(99.0),
    ))
}
