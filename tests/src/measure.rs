//! Shaping measurements shared by the integration tests and
//! `cargo xtask bench shaping`: goodput through one class, two classes
//! under contention with a live rate change, class-change latency; and
//! the kernel's own counts the agent tests compare with QEMU's (TCP
//! retransmissions, HTB class drops).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use vmbw::shaping::{ClassSpec, Shaper, TrafficClass, class_handle};

use crate::{
    shaped::ShapedLink,
    tcp::{Series, TcpSink, TcpSource, expected_goodput, record},
};

/// Goodput of one greedy TCP flow through one class.
#[derive(Debug, Clone, Copy)]
pub struct Goodput {
    /// The class's configured rate, bits/s.
    pub rate_bps: f64,
    /// What that rate leaves for TCP payload (see [`expected_goodput`]).
    pub expected_bps: f64,
    pub measured_bps: f64,
    pub mss: u32,
    pub mtu: u32,
    /// Measurement window, seconds.
    pub window_s: f64,
}

impl Goodput {
    /// Signed error of the measured goodput against the expected, percent.
    pub fn error_pct(&self) -> f64 {
        (self.measured_bps - self.expected_bps) / self.expected_bps * 100.0
    }
}

/// Sends one greedy TCP flow steered into `class` (via `SO_PRIORITY`) for
/// `warmup + window` and returns the receiver's goodput over the window.
pub fn goodput(
    link: &ShapedLink,
    class: u32,
    rate_bps: f64,
    port: u16,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Goodput> {
    let mtu = link.mtu()?;
    let sink = TcpSink::start(&link.peer, link.peer_addr(port))?;
    let source = TcpSource::start(&link.host, sink.addr(), Some(class))?;
    let start = Instant::now();
    let series = record(&[sink.counter()], start, Duration::from_millis(20), |t| {
        t >= warmup + window
    });
    let mss = source.mss();
    source.stop().context("goodput flow")?;
    let from = warmup.as_secs_f64();
    let to = series.end();
    Ok(Goodput {
        rate_bps,
        expected_bps: expected_goodput(rate_bps, mss, mtu),
        measured_bps: series.rate_bps(0, from, to),
        mss,
        mtu,
        window_s: to - from,
    })
}

/// Two flows in two classes, a live change of both rates in the middle.
#[derive(Debug, Clone)]
pub struct Contention {
    /// Expected goodput per flow before and after the change, bits/s.
    pub expected_before: [f64; 2],
    pub expected_after: [f64; 2],
    /// Measured goodput per flow over the settled windows, bits/s.
    pub before: [f64; 2],
    pub after: [f64; 2],
    /// Time from sending the change until each flow's goodput since the
    /// change (window 10..50 ms) had moved at least half way from its old
    /// to its new rate, seconds.
    pub reaction_s: [Option<f64>; 2],
    /// Netlink round trip of each class change, seconds.
    pub change_rtt_s: [f64; 2],
    pub series: Series,
    pub change_at_s: f64,
}

/// One flow per entry of `classes` (slot, class), both greedy. The rates in
/// the tree must be `before`; after `settle + window` seconds the classes
/// are switched to `after` with [`Shaper::set_class`], and after another
/// `settle + window` the flows stop. Both connections must survive.
pub fn contention(
    link: &ShapedLink,
    shaper: &Shaper,
    classes: [(u16, TrafficClass); 2],
    rates: [(ClassSpec, ClassSpec); 2],
    settle: Duration,
    window: Duration,
) -> anyhow::Result<Contention> {
    let mtu = link.mtu()?;
    let mut sinks = Vec::new();
    let mut sources = Vec::new();
    for (i, (slot, class)) in classes.iter().enumerate() {
        let handle = class_handle(*slot, *class).context("slot in range")?;
        let sink = TcpSink::start(&link.peer, link.peer_addr(5300 + i as u16))?;
        sources.push(TcpSource::start(&link.host, sink.addr(), Some(handle))?);
        sinks.push(sink);
    }
    let counters: Vec<_> = sinks.iter().map(|s| s.counter()).collect();
    let phase = settle + window;
    let start = Instant::now();
    // Phase one: the old rates.
    let mut series = record(&counters, start, Duration::from_millis(5), |t| t >= phase);
    // The live change.
    let change_at = start.elapsed();
    let mut change_rtt_s = [0.0; 2];
    for (i, (slot, class)) in classes.iter().enumerate() {
        let t = Instant::now();
        link.rt
            .block_on(shaper.set_class(*slot, *class, &rates[i].1))
            .with_context(|| format!("changing {class} of slot {slot}"))?;
        change_rtt_s[i] = t.elapsed().as_secs_f64();
    }
    // Phase two: the new rates.
    let rest = record(&counters, start, Duration::from_millis(5), |t| {
        t >= change_at + phase
    });
    series.samples.extend(rest.samples);
    let mss = [sources[0].mss(), sources[1].mss()];
    for (i, s) in sources.into_iter().enumerate() {
        s.stop()
            .with_context(|| format!("flow {i} (connections must survive the change)"))?;
    }

    let expected =
        |spec: &ClassSpec, mss: u32| expected_goodput(spec.rate.as_bits_per_sec() as f64, mss, mtu);
    let expected_before = [0, 1].map(|i| expected(&rates[i].0, mss[i]));
    let expected_after = [0, 1].map(|i| expected(&rates[i].1, mss[i]));
    let c = change_at.as_secs_f64();
    let s = settle.as_secs_f64();
    let w = window.as_secs_f64();
    let before = [0, 1].map(|i| series.rate_bps(i, s, s + w));
    let after = [0, 1].map(|i| series.rate_bps(i, c + s, c + s + w));
    let reaction_s = [0, 1].map(|i| {
        reaction(
            &series,
            i,
            c,
            (expected_before[i] + expected_after[i]) / 2.0,
            expected_after[i] > expected_before[i],
        )
    });
    Ok(Contention {
        expected_before,
        expected_after,
        before,
        after,
        reaction_s,
        change_rtt_s,
        series,
        change_at_s: c,
    })
}

/// Longest window over which goodput is averaged to see a rate change,
/// and the shortest that counts (seconds); windows never reach back
/// before the change, so old-rate bytes do not delay the answer.
pub const REACTION_WINDOW_S: (f64, f64) = (0.05, 0.01);

/// First time after `change_at` at which counter `i`'s goodput since the
/// change (over at most the last `REACTION_WINDOW_S.0`) crossed `threshold`
/// (upwards if `rising`), relative to `change_at`.
fn reaction(
    series: &Series,
    i: usize,
    change_at: f64,
    threshold: f64,
    rising: bool,
) -> Option<f64> {
    let (longest, shortest) = REACTION_WINDOW_S;
    series
        .samples
        .iter()
        .map(|(t, _)| t.as_secs_f64())
        .filter(|t| *t >= change_at + shortest)
        .find(|t| {
            let r = series.rate_bps(i, (t - longest).max(change_at), *t);
            if rising {
                r >= threshold
            } else {
                r <= threshold
            }
        })
        .map(|t| t - change_at)
}

/// Latency of `n` class changes (netlink round trip each), alternating a
/// class between two specs; seconds, in order.
pub fn change_latency(
    link: &ShapedLink,
    shaper: &Shaper,
    slot: u16,
    class: TrafficClass,
    specs: [ClassSpec; 2],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        link.rt
            .block_on(shaper.set_class(slot, class, &specs[i % 2]))
            .context("class change")?;
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// The `p`-th percentile (0..=100) of `values` (nearest rank).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// The share of a migration's bytes (`transferred`) that the datapath may
/// count on top of QEMU: it counts at TCX, before the qdisc, so segments
/// TCP sent again (a full frame's payload each, 1448 bytes) and packets
/// the class's queue refused (each at most one GSO super-packet, 64 KiB
/// on veth; TCP offers it again as new data) are counted twice.
pub fn counted_twice_share(retransmitted: u64, dropped: u64, transferred: f64) -> f64 {
    (retransmitted * 1448 + dropped * 65_536) as f64 / transferred
}

/// `Tcp: RetransSegs` of namespace `ns` (/proc/net/snmp).
pub fn retransmitted_segments(ns: &crate::NetNs) -> u64 {
    let snmp = ns.exec("cat", &["/proc/net/snmp"]).unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Packets each HTB class on `dev` in namespace `ns` dropped at enqueue
/// (its leaf was full), by class handle as tc prints it (`7662:22`).
/// Read from tc's text output: this iproute2 prints no JSON for classes.
fn class_drops_in(ns: &str, dev: &str) -> Vec<(String, u64)> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "tc", "-s", "class", "show", "dev", dev])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    crate::shaped::parse_tc_classes(&out)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.handle, c.dropped))
        .collect()
}

/// The handle of VM `slot`'s class `class`, as tc prints it.
pub fn tc_class(slot: u32, class: TrafficClass) -> String {
    let h = class_handle(slot as u16, class).unwrap_or(0);
    format!("{:x}:{:x}", h >> 16, h & 0xffff)
}

/// Drops per HTB class on an interface, sampled every 100 ms on a thread
/// from [`DropWatch::start`] to [`DropWatch::stop`]. A class's counter
/// starts again at 0 when the class is replaced or removed (the agent
/// removes a VM's classes when its migration ends), so drops are summed
/// over the counter's runs, not read once at the end: a packet a class's
/// queue refused just before the class went away is still counted.
pub struct DropWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::collections::BTreeMap<String, u64>>,
}

impl DropWatch {
    pub fn start(ns: &crate::NetNs, dev: &str) -> DropWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, ns, dev) = (stop.clone(), ns.name().to_owned(), dev.to_owned());
        let thread = std::thread::spawn(move || {
            let mut total: std::collections::BTreeMap<String, u64> = Default::default();
            let mut last: std::collections::BTreeMap<String, u64> = Default::default();
            loop {
                let done = flag.load(std::sync::atomic::Ordering::Relaxed);
                let now = class_drops_in(&ns, &dev);
                // A class that is gone starts from 0 if it comes back.
                last.retain(|h, _| now.iter().any(|(n, _)| n == h));
                for (handle, drops) in now {
                    let before = last.insert(handle.clone(), drops).unwrap_or(0);
                    // A smaller count is a new class under the same handle.
                    let new = if drops >= before {
                        drops - before
                    } else {
                        drops
                    };
                    *total.entry(handle).or_default() += new;
                }
                if done {
                    return total;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        DropWatch { stop, thread }
    }

    /// Stops sampling (after one last sample) and returns the drops per
    /// class handle, as tc prints it.
    pub fn stop(self) -> std::collections::BTreeMap<String, u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
