//! Shaping measurements shared by the integration tests and
//! `cargo xtask bench shaping`: goodput through one class, two classes
//! under contention with a live rate change, class-change latency.

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
