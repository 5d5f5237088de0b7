//! Dirty-page prediction for the next pre-copy iteration.
//!
//! Input: one [`Iteration`] per finished pre-copy iteration: the six GM(1,N)
//! sequences of the NRAC paper's model (docs/trace-format.md), `[X1 dirty pages, X2 mem %, X3 cpu %, X4 vm
//! net, X5 previous iteration s, X6 host net]`, and, when the telemetry has
//! them, the iteration's duration, the bytes it sent and the bytes left to
//! send when it ended. Output: X1 of the next iteration. Every model is pure
//! and deterministic; [`eval`] runs them one step ahead over a trace and
//! scores them.
//!
//! Why the extra figures: X1 of an iteration is its dirty rate times its
//! duration, and the duration of the *next* iteration is known when the
//! current one ends: the pages left to send over the bandwidth just
//! measured. None of X2..X6 carries that (X5 is the duration of the
//! iteration before). [`gm1n`] turns it into GM(1,N) drivers whose value at
//! the predicted iteration is measured, not forecast.

pub mod eval;
pub mod gm1n;
pub mod grey;
pub mod wss;

pub use gm1n::{Driver, GreyGm1n};
use grey::{Gm11, GreyError, ago, residual_correction};

/// The number of sequences per iteration (X1..X6).
pub const SERIES: usize = 6;
/// Samples below which grey models fall back to the last value.
pub const MIN_GREY_SAMPLES: usize = 4;

/// One iteration's X1..X6.
pub type Row = [f64; SERIES];

/// One finished pre-copy iteration as the predictors see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iteration {
    /// X1..X6.
    pub x: Row,
    /// The iteration's duration, seconds (0 when unknown).
    pub duration_s: f64,
    /// Bytes the migration sent during the iteration.
    pub sent_bytes: Option<f64>,
    /// Bytes left to send right after the sync that closed the iteration:
    /// what the next iteration sends.
    pub remaining_bytes: Option<f64>,
    /// The guest's write rate during the iteration as QEMU's
    /// `calc-dirty-rate` sampled it (about a second of page hashing),
    /// pages/s, with what QEMU's rounding down took off put back
    /// ([`sampled_pages_per_s`]); `None` when no sample fell in the
    /// iteration.
    pub sampled_dirty_pps: Option<f64>,
    /// Where those samples' climb or fall had taken the write rate by the
    /// iteration's end, pages/s, rounding loss put back as above; `None`
    /// unless they moved significantly ([`sampled_trend_end`]).
    pub sampled_end_pps: Option<f64>,
    /// Pages of guest memory in use when the iteration ended: X2 of the
    /// guest's RAM ([`used_pages`]); `None` when the RAM size is unknown
    /// or X2 reads nothing.
    pub used_pages: Option<f64>,
}

/// X2 (`mem_pct`, percent) of `ram_bytes` as pages: what
/// [`Iteration::used_pages`] holds. X2 is the balloon's (total −
/// available) / total, or the resident part of the guest's RAM without a
/// balloon; its total is the guest's own, a little below its RAM, so this
/// reads a little high. None when a figure is not finite and positive.
pub fn used_pages(mem_pct: f64, ram_bytes: f64, page_size: f64) -> Option<f64> {
    let ok = |v: f64| v.is_finite() && v > 0.0;
    (ok(mem_pct) && ok(ram_bytes) && ok(page_size))
        .then(|| mem_pct.min(100.0) / 100.0 * ram_bytes / page_size)
}

/// What QEMU's page-sampling `calc-dirty-rate` loses on average by
/// rounding down, bytes/s.
///
/// QEMU answers in whole MiB/s, by integer division
/// (`update_dirtyrate`, migration/dirtyrate.c), so a guest writing
/// 1.2 MiB/s reads 1 nearly every time. On the tuning traces whose guest
/// writes at a known rate (tests/fixtures/corpus/tuning: rand and seq,
/// 1.2-4 MiB/s, 50-89 samples each) the mean reading fell short by
/// 0.11-0.35 MiB/s, 0.27 on average.
pub const SAMPLED_RATE_ROUNDING_LOSS: f64 = 0.25 * 1024.0 * 1024.0;

/// The guest's write rate in pages/s from a mean of QEMU's
/// `calc-dirty-rate` readings (bytes/s, each a whole MiB/s rounded down):
/// the mean plus [`SAMPLED_RATE_ROUNDING_LOSS`]. None for a reading that
/// is not finite and >= 0, or without a page size.
///
/// Why: the working set that a sampled rate and a pass imply
/// ([`wss::WorkingSet::from_rate`]) is read from how far the pass's
/// pages fall short of rate × time, so a rate read low hides the
/// saturation and predicts the next pass short: on the tuning traces the
/// pass after the bulk pass was predicted 1-31% short on 11 of 12 with
/// the readings as they are, and within -9..+7% on the nine that are not
/// a sequential sweep with the loss put back (the sweeps, still 17-25%
/// short, are [`wss::WorkingSet::from_rate_within`]'s to read).
pub fn sampled_pages_per_s(reading_bps: f64, page_size: f64) -> Option<f64> {
    (reading_bps.is_finite() && reading_bps >= 0.0 && page_size > 0.0)
        .then(|| (reading_bps + SAMPLED_RATE_ROUNDING_LOSS) / page_size)
}

/// A pass's `calc-dirty-rate` readings are read as climbing or falling
/// when their least-squares slope is at least this many standard errors
/// from 0 ([`sampled_trend_end`]), over at least [`SAMPLED_TREND_MIN`]
/// readings.
///
/// Whole-MiB/s readings of a steady guest flip between two values, which
/// the t statistic's normal noise does not model: among 20000 runs of
/// fair coin flips between 1 and 2, |t| >= 3 came up in 6% at 5 readings,
/// 2% at 10; |t| >= 4 in 0.6% at 10, 0.2% at 16 (simulated; the worst
/// case, a rate halfway between two readings).
pub const SAMPLED_TREND_T: f64 = 4.0;
/// Fewer readings than this show no trend.
pub const SAMPLED_TREND_MIN: usize = 10;

/// Where the guest's write rate stood at `end_s` if the `calc-dirty-rate`
/// readings taken during a pass (`(seconds, bytes/s)`, any time base
/// shared with `end_s`) climbed or fell through it: the readings'
/// least-squares line at `end_s`, not below 0, when its slope is at least
/// [`SAMPLED_TREND_T`] standard errors from 0 over [`SAMPLED_TREND_MIN`]
/// or more readings. None when they show no such trend: their mean then
/// stands.
///
/// Why: the pass after the bulk pass follows on from the rate at the bulk
/// pass's end, not from its average. On the 24 QEMU 10 traces of
/// tests/fixtures/corpus (tuning and evaluation) only the three ramping
/// rates trend (t = 8.4-10.5; every other bulk pass |t| <= 1.8). For
/// them the next pass's pages at the line's end were -7, +6 and -7% off
/// against -40, -33 and -48% at the mean. Past the end the line is not
/// followed: a ramp may stop (ramp-l30's ends 5 s into the pass after).
pub fn sampled_trend_end(samples: &[(f64, f64)], end_s: f64) -> Option<f64> {
    let usable: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, v)| t.is_finite() && v.is_finite())
        .collect();
    let n = usable.len() as f64;
    if usable.len() < SAMPLED_TREND_MIN || !end_s.is_finite() {
        return None;
    }
    let mean_t = usable.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_v = usable.iter().map(|s| s.1).sum::<f64>() / n;
    let sxx: f64 = usable.iter().map(|s| (s.0 - mean_t).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = usable
        .iter()
        .map(|s| (s.0 - mean_t) * (s.1 - mean_v))
        .sum::<f64>()
        / sxx;
    let rss: f64 = usable
        .iter()
        .map(|s| (s.1 - mean_v - slope * (s.0 - mean_t)).powi(2))
        .sum();
    let se = (rss / (n - 2.0) / sxx).sqrt();
    // A perfect line (rss = 0) trends if it slopes at all.
    let trends = if se > 0.0 {
        (slope / se).abs() >= SAMPLED_TREND_T
    } else {
        slope != 0.0
    };
    trends.then(|| (mean_v + slope * (end_s - mean_t)).max(0.0))
}

impl From<Row> for Iteration {
    /// An iteration known only by X1..X6 (an old trace, a test).
    fn from(x: Row) -> Self {
        Iteration {
            x,
            duration_s: 0.0,
            sent_bytes: None,
            remaining_bytes: None,
            sampled_dirty_pps: None,
            sampled_end_pps: None,
            used_pages: None,
        }
    }
}

/// X1..X6 rows as iterations without telemetry (old traces, tests).
pub fn iterations(rows: &[Row]) -> Vec<Iteration> {
    rows.iter().copied().map(Iteration::from).collect()
}

impl Iteration {
    /// The migration's throughput during the iteration, bytes/s.
    pub fn bandwidth(&self) -> Option<f64> {
        let sent = self.sent_bytes?;
        (sent > 0.0 && self.duration_s > 0.0).then(|| sent / self.duration_s)
    }

    /// T̂: the next iteration's expected duration, seconds: the bytes left
    /// to send over the throughput this iteration measured.
    pub fn next_duration_s(&self) -> Option<f64> {
        Some(self.remaining_bytes? / self.bandwidth()?)
    }

    /// The iteration's dirty rate, pages/s: X1 over its duration.
    pub fn dirty_rate(&self) -> Option<f64> {
        (self.duration_s > 0.0).then(|| self.x[0] / self.duration_s)
    }

    /// P̂: pages the next iteration dirties if this iteration's dirty rate
    /// (X1 / duration) holds for T̂: `X1 · remaining / sent`.
    pub fn next_pages_at_rate(&self) -> Option<f64> {
        let sent = self.sent_bytes.filter(|s| *s > 0.0)?;
        Some(self.x[0] * self.remaining_bytes? / sent)
    }
}

/// Iterations the duration calibration ([`calibrated_next_duration`])
/// learns from: at most this many, and at least [`DURATION_MIN_PAIRS`].
const DURATION_WINDOW: usize = 8;
const DURATION_MIN_PAIRS: usize = 3;
/// T̃'s offset until there are [`DURATION_MIN_PAIRS`] pairs to learn it
/// from ([`duration_prior_offset_s`]): passes end this much early, less
/// the time some 0.4 MB take at the pass's rate, before the migration
/// has shown by how much.
const EARLY_END_S: f64 = 0.26;
const EARLY_END_LESS_BYTES: f64 = 0.4e6;

/// The prior early end of a pass at `bandwidth` bytes/s, seconds (≤ 0):
/// `−(EARLY_END_S − EARLY_END_LESS_BYTES / bandwidth)`, none below
/// 1.5 MB/s.
///
/// Why: QEMU syncs once what it estimates is left drops under what it
/// could send within the downtime limit (300 ms by default) at the
/// bandwidth it measured over its last ~100 ms. Over every pass after
/// the bulk pass in the sets seen by 2026-12-05 (tuning .. holdout7,
/// 1 428 passes), the median early end was 0.10 s
/// at 2-3 MB/s, 0.15 at 3-5, 0.18 at 6, 0.20 at 7 and 0.25-0.26 s at
/// 31-60 MB/s: a constant (the −0.15 s before) is 0.1 s off at both
/// ends, which weighs most on the 1 GiB guests' short migrations, mostly
/// over before three pairs exist. What the 0.4 MB are is not known: not
/// the links' `tbf` burst, which is 10 ms of their rate
/// (tests/src/testbed.rs); they may be bytes QEMU counts beside the RAM
/// left, or the send buffers its bandwidth reading includes. On another
/// link they may differ, and three passes replace the prior there too.
pub(crate) fn duration_prior_offset_s(bandwidth: f64) -> f64 {
    -(EARLY_END_S - EARLY_END_LESS_BYTES / bandwidth).max(0.0)
}

/// T̃: the next iteration's duration as this migration's own past says T̂
/// ([`Iteration::next_duration_s`]) errs: T̂ plus the mean of
/// `T(i) − T̂(i)` over the last iterations (the bulk pass neither predicts
/// nor is predicted here) once there are three such pairs, T̂ plus
/// the prior ([`duration_prior_offset_s`]) before. Floored at 5% of T̂. Where earlier
/// passes that sent as much as the latest one were followed by passes of
/// one length, that length instead ([`after_alike`]).
///
/// Why an offset: QEMU does not end a pass when it has sent what the sync
/// before found; it syncs again as soon as its estimate of what is left
/// drops under what it could send within the downtime limit
/// (`migration_iteration_run`, QEMU's migration/migration.c), so passes
/// end early by a roughly constant time, which weighs most when passes
/// are short. Chosen on the tuning traces (tests/fixtures/corpus/tuning):
/// T̂'s error against the recorded durations falls from 19/42% to 15/18%
/// (app at 30/50 Mbit/s), 14/18% to 6/5% (random writes at 30/50) and 12%
/// to 4% (sweep at 50); a fitted slope as well did no better.
pub fn calibrated_next_duration(history: &[Iteration]) -> Option<f64> {
    let t_hat = history
        .last()?
        .next_duration_s()
        .filter(|t| t.is_finite())?;
    if let Some(t) = after_alike(history) {
        return Some(t);
    }
    let s = history.len();
    let (mut missed, mut pairs) = (0.0, 0);
    for i in s.saturating_sub(DURATION_WINDOW).max(2)..s {
        let actual = history[i].duration_s;
        if let Some(predicted) = history[i - 1].next_duration_s()
            && actual > 0.0
            && predicted.is_finite()
        {
            missed += actual - predicted;
            pairs += 1;
        }
    }
    let offset = if pairs < DURATION_MIN_PAIRS {
        duration_prior_offset_s(history.last()?.bandwidth()?)
    } else {
        missed / pairs as f64
    };
    Some((t_hat + offset).max(0.05 * t_hat))
}

/// Passes that sent within this many bytes of each other are alike
/// ([`after_alike`]): a quarter of the step between what tail passes
/// sent in rand-l20 of the tuning set (389, 517, 906 KiB: 128 KiB
/// apart, or three steps).
const ALIKE_BYTES: f64 = 32.0 * 1024.0;
/// How far back [`after_alike`] looks, in passes.
const ALIKE_WINDOW: usize = 16;
/// Alike passes needed, and how far the durations after them may spread
/// (longest over shortest): 1.5 rejects one length against twice it
/// (0.19 against 0.38 s), the mix the pattern must not hide.
const ALIKE_MIN: usize = 2;
const ALIKE_SPREAD: f64 = 1.5;

/// The next pass's duration as the passes after earlier passes that sent
/// as much as the latest one (within [`ALIKE_BYTES`], the bulk pass left
/// out) lasted: their median, when there are [`ALIKE_MIN`] of them in the
/// last [`ALIKE_WINDOW`] and they agree within [`ALIKE_SPREAD`].
///
/// Why: near the downtime limit passes last whole multiples of one
/// length (rand-l20 of the tuning set: 0.19 or 0.38 s, sending 389, 517
/// or 906 KiB), and which comes next follows from what the pass before
/// sent, not from what is left over QEMU's threshold: there, after every
/// pass that sent 389 KiB came a 0.38 s one, after 517 or 906 KiB a 0.19 s
/// one. T̂ and its mean offset land between the two. On the tuning set
/// this took rand-l20 from 15.3 to 9.4% WAPE and app-l30 from 15.6 to
/// 13.4%, and cost app-l50 (17.2 to 18.3%) and rand-l50 (6.1 to 6.9%).
fn after_alike(history: &[Iteration]) -> Option<f64> {
    let s = history.len();
    let latest = history.last()?.sent_bytes.filter(|b| *b > 0.0)?;
    let mut after: Vec<f64> = (s.saturating_sub(ALIKE_WINDOW).max(1)..s.saturating_sub(1))
        .filter(|&j| {
            history[j]
                .sent_bytes
                .is_some_and(|b| b > 0.0 && (b - latest).abs() <= ALIKE_BYTES)
        })
        .map(|j| history[j + 1].duration_s)
        .filter(|t| t.is_finite() && *t > 0.0)
        .collect();
    if after.len() < ALIKE_MIN {
        return None;
    }
    after.sort_by(f64::total_cmp);
    let n = after.len();
    if after[n - 1] > ALIKE_SPREAD * after[0] {
        return None;
    }
    Some(if n % 2 == 1 {
        after[n / 2]
    } else {
        0.5 * (after[n / 2 - 1] + after[n / 2])
    })
}

/// The physics' figures for the iteration after `history`, each known
/// when the latest iteration ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Physics {
    /// T̃ ([`calibrated_next_duration`]), seconds.
    pub duration_s: f64,
    /// P̃: the latest iteration's dirty rate (X1 / T) over T̃, pages.
    pub pages_at_rate: f64,
    /// S̃: the pages the guest dirties in T̃ if it keeps writing at the rate
    /// QEMU sampled during the latest iteration, over the working set that
    /// rate and the latest pass imply ([`wss::WorkingSet::from_rate`]; for
    /// the bulk pass [`wss::WorkingSet::from_rate_within`], which may read
    /// it as a sweep); P̃ when the iteration has no sample or shows no
    /// saturation.
    ///
    /// Why: a long pass counts each page once however often it was
    /// written, so its X1 / T understates what a shorter pass will see.
    /// After the bulk pass (tens of seconds here) P̂ read the next pass
    /// 24-45% short on 11 of the 12 tuning traces, and that one iteration
    /// was up to half of P̂'s error.
    pub sampled_set: f64,
}

impl Physics {
    /// None without bytes sent and left, or a duration, to work from.
    pub fn after(history: &[Iteration]) -> Option<Physics> {
        let latest = history.last()?;
        let duration_s = calibrated_next_duration(history)?;
        let pages_at_rate = latest.dirty_rate()? * duration_s;
        // Only the bulk pass (the first) is read against the used memory:
        // a later pass that barely saturates implies a set of any size.
        let used_pages = latest.used_pages.filter(|_| history.len() == 1);
        // The set is read from what the pass saw at its mean rate; the
        // next pass dirties it at the rate the pass ended on, where the
        // rate trended ([`sampled_trend_end`]).
        let set = latest.sampled_dirty_pps.and_then(|rate| {
            wss::WorkingSet::from_rate_within(rate, latest.duration_s, latest.x[0], used_pages)
        });
        let sampled_set = match (set, latest.sampled_end_pps) {
            (Some(ws), Some(rate)) => wss::WorkingSet { rate, ..ws }.dirtied(duration_s),
            (Some(ws), None) => ws.dirtied(duration_s),
            (None, Some(rate)) => pages_at_rate.max(rate * duration_s),
            (None, None) => pages_at_rate,
        };
        let p = Physics {
            duration_s,
            pages_at_rate,
            sampled_set,
        };
        [duration_s, pages_at_rate, sampled_set]
            .iter()
            .all(|v| v.is_finite())
            .then_some(p)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictError {
    #[error("no history to predict from")]
    Empty,
    #[error("iteration {iteration}: X{series} is {value}; values must be finite and >= 0")]
    BadValue {
        iteration: usize,
        series: usize,
        value: f64,
    },
    #[error("iteration {iteration}: {field} is {value}; it must be finite and >= 0")]
    BadTelemetry {
        iteration: usize,
        field: &'static str,
        value: f64,
    },
}

/// How GM(1,N) gets its drivers' values for the predicted iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverForecast {
    /// The latest measurement, held.
    Hold,
    /// A GM(1,1) forecast of each driver (held where it cannot be fitted).
    Gm11,
}

/// Which form turns fitted parameters into the next value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The paper's time response (eqs. 7–8), evaluated at S+1.
    TimeResponse,
    /// The grey equation solved for x⁽⁰⁾(S+1) with the measured AGO up to S.
    Equation,
}

/// A model's prediction and how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub value: f64,
    /// What actually produced the value, e.g. `gm1n[X2,X5]+corr`,
    /// `last (fallback: 3 samples)`.
    pub how: String,
}

/// A one-step-ahead predictor of X1.
pub trait Predictor {
    /// A short stable name (`gm1n`, `ewma`, ...).
    fn name(&self) -> &str;
    /// Predicts X1 of the iteration after `history` (oldest first).
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError>;
}

/// Rejects NaN, infinities and negative values, naming the first.
pub fn check_history(history: &[Iteration]) -> Result<(), PredictError> {
    if history.is_empty() {
        return Err(PredictError::Empty);
    }
    for (i, it) in history.iter().enumerate() {
        let bad = |v: f64| !v.is_finite() || v < 0.0;
        if let Some(s) = it.x.iter().position(|v| bad(*v)) {
            return Err(PredictError::BadValue {
                iteration: i + 1,
                series: s + 1,
                value: it.x[s],
            });
        }
        for (field, value) in [
            ("duration_s", Some(it.duration_s)),
            ("sent_bytes", it.sent_bytes),
            ("remaining_bytes", it.remaining_bytes),
            ("sampled_dirty_pps", it.sampled_dirty_pps),
            ("sampled_end_pps", it.sampled_end_pps),
            ("used_pages", it.used_pages),
        ] {
            if let Some(value) = value.filter(|v| bad(*v)) {
                return Err(PredictError::BadTelemetry {
                    iteration: i + 1,
                    field,
                    value,
                });
            }
        }
    }
    Ok(())
}

fn x1(history: &[Iteration]) -> Vec<f64> {
    history.iter().map(|r| r.x[0]).collect()
}

/// The rolling window a grey model fits on: the last `window` rows (at
/// least [`MIN_GREY_SAMPLES`]), or the last-value fallback when the history
/// is shorter than that. Rejects bad values first.
fn grey_window(
    history: &[Iteration],
    window: usize,
) -> Result<Result<&[Iteration], Prediction>, PredictError> {
    check_history(history)?;
    let h = &history[history.len().saturating_sub(window.max(MIN_GREY_SAMPLES))..];
    if h.len() < MIN_GREY_SAMPLES {
        return Ok(Err(fallback_last(history, &format!("{} samples", h.len()))));
    }
    Ok(Ok(h))
}

fn fallback_last(history: &[Iteration], why: &str) -> Prediction {
    let last = history.last().map_or(0.0, |r| r.x[0]);
    Prediction {
        value: last,
        how: format!("last (fallback: {why})"),
    }
}

/// Last value.
#[derive(Debug, Clone, Default)]
pub struct Last;

impl Predictor for Last {
    fn name(&self) -> &str {
        "last"
    }
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        Ok(Prediction {
            value: history[history.len() - 1].x[0],
            how: "last".into(),
        })
    }
}

/// Mean of the history (paper ref [1]).
#[derive(Debug, Clone, Default)]
pub struct Mean;

impl Predictor for Mean {
    fn name(&self) -> &str {
        "mean"
    }
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let v = history.iter().map(|r| r.x[0]).sum::<f64>() / history.len() as f64;
        Ok(Prediction {
            value: v,
            how: "mean".into(),
        })
    }
}

/// Exponentially weighted moving average (paper refs [2,3]).
#[derive(Debug, Clone)]
pub struct Ewma {
    pub alpha: f64,
}

impl Default for Ewma {
    fn default() -> Self {
        Ewma { alpha: 0.5 }
    }
}

impl Predictor for Ewma {
    fn name(&self) -> &str {
        "ewma"
    }
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let mut s = history[0].x[0];
        for r in &history[1..] {
            s = self.alpha * r.x[0] + (1.0 - self.alpha) * s;
        }
        Ok(Prediction {
            value: s,
            how: format!("ewma(alpha={})", self.alpha),
        })
    }
}

/// BDA's coefficient estimate (the BDA paper): with U the latest
/// value and D the mean of the earlier ones, `a·U + b·D` where
/// `a = U/(D+U)`, `b = D/(D+U)`.
#[derive(Debug, Clone, Default)]
pub struct Bda;

impl Predictor for Bda {
    fn name(&self) -> &str {
        "bda"
    }
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let xs = x1(history);
        let u = xs[xs.len() - 1];
        if xs.len() < 2 {
            return Ok(fallback_last(history, "1 sample"));
        }
        let d = xs[..xs.len() - 1].iter().sum::<f64>() / (xs.len() - 1) as f64;
        if d + u == 0.0 {
            return Ok(Prediction {
                value: 0.0,
                how: "bda".into(),
            });
        }
        let (a, b) = (u / (d + u), d / (d + u));
        Ok(Prediction {
            value: a * u + b * d,
            how: "bda".into(),
        })
    }
}

/// The physics alone: the latest dirty rate over the next iteration's
/// expected duration (P̂, [`Iteration::next_pages_at_rate`]); the last value
/// when the telemetry lacks bytes sent or left.
#[derive(Debug, Clone, Default)]
pub struct Phys;

impl Predictor for Phys {
    fn name(&self) -> &str {
        "phys"
    }
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let latest = &history[history.len() - 1];
        Ok(
            match latest.next_pages_at_rate().filter(|v| v.is_finite()) {
                Some(value) => Prediction {
                    value,
                    how: "P^".into(),
                },
                None => fallback_last(history, "no bytes sent/left"),
            },
        )
    }
}

/// The working set ([`wss::WorkingSet`]) fitted to the recent passes'
/// (duration, X1), evaluated at the next pass's expected duration T̂; P̂
/// when it cannot be fitted, the last value without telemetry.
#[derive(Debug, Clone)]
pub struct Wss {
    pub window: usize,
}

impl Default for Wss {
    fn default() -> Self {
        Wss { window: 8 }
    }
}

impl Wss {
    /// The working set of the last `window` passes, if two or more have a
    /// duration.
    pub fn fit(history: &[Iteration], window: usize) -> Option<wss::WorkingSet> {
        let recent = &history[history.len().saturating_sub(window.max(2))..];
        let samples: Vec<(f64, f64)> = recent.iter().map(|r| (r.duration_s, r.x[0])).collect();
        wss::WorkingSet::fit(&samples)
    }
}

impl Predictor for Wss {
    fn name(&self) -> &str {
        "wss"
    }
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let latest = &history[history.len() - 1];
        if let (Some(ws), Some(t)) = (Self::fit(history, self.window), latest.next_duration_s())
            && t.is_finite()
        {
            return Ok(Prediction {
                value: ws.dirtied(t),
                how: "working set at T^".into(),
            });
        }
        Phys.predict(history)
    }
}

/// GM(1,1) on X1 alone.
#[derive(Debug, Clone)]
pub struct GreyGm11 {
    pub window: usize,
    pub response: Response,
    pub correction: bool,
}

impl Default for GreyGm11 {
    fn default() -> Self {
        GreyGm11 {
            window: 8,
            response: Response::Equation,
            correction: true,
        }
    }
}

impl GreyGm11 {
    /// GM(1,1) one step ahead on `xs` (at least 4 samples), with the
    /// residual correction; falls back to the last value when the fit fails.
    fn predict_series(&self, xs: &[f64]) -> Result<Prediction, PredictError> {
        let last = xs.last().copied().unwrap_or(0.0);
        let m = match Gm11::fit(xs) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Prediction {
                    value: last,
                    how: format!("last (fallback: {e})"),
                });
            }
        };
        let x1_ago = ago(xs);
        let fitted: Vec<f64> = (1..xs.len())
            .map(|k| match self.response {
                Response::TimeResponse => m.x0_hat(k + 1),
                Response::Equation => m.forecast_next_equation(x1_ago[k - 1]),
            })
            .collect();
        let next = match self.response {
            Response::TimeResponse => m.forecast_next(),
            Response::Equation => m.forecast_next_equation(x1_ago[xs.len() - 1]),
        };
        let residuals: Vec<f64> = xs[1..].iter().zip(&fitted).map(|(x, f)| x - f).collect();
        finish(next, residuals, self.correction, "gm11".into())
    }
}

impl Predictor for GreyGm11 {
    fn name(&self) -> &str {
        "gm11"
    }
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        let h = match grey_window(history, self.window)? {
            Ok(h) => h,
            Err(fallback) => return Ok(fallback),
        };
        self.predict_series(&x1(h))
    }
}

/// Adds the residual correction when its condition holds, clamps to >= 0,
/// and falls back when the result is not finite.
fn finish(
    next: f64,
    residuals: Vec<f64>,
    correction: bool,
    how: String,
) -> Result<Prediction, PredictError> {
    let (value, how) = match correction
        .then(|| residual_correction(&residuals))
        .flatten()
    {
        Some(eps) => (next + eps, format!("{how}+corr")),
        None => (next, how),
    };
    if !value.is_finite() {
        return Err(PredictError::BadValue {
            iteration: 0,
            series: 1,
            value,
        });
    }
    Ok(Prediction {
        value: value.max(0.0),
        how,
    })
}

/// The models `vmbw predict --model` knows, by name.
pub fn model(name: &str, window: usize) -> Option<Box<dyn Predictor>> {
    Some(match name {
        "gm1n" => Box::new(GreyGm1n {
            window,
            ..GreyGm1n::default()
        }),
        "gm11" => Box::new(GreyGm11 {
            window,
            ..GreyGm11::default()
        }),
        "last" => Box::new(Last),
        "mean" => Box::new(Mean),
        "ewma" => Box::new(Ewma::default()),
        "bda" => Box::new(Bda),
        "phys" => Box::new(Phys),
        "wss" => Box::new(Wss { window }),
        _ => return None,
    })
}

/// Every model name, in report order.
pub const MODELS: &[&str] = &["gm1n", "gm11", "last", "mean", "ewma", "bda", "phys", "wss"];

impl From<GreyError> for PredictError {
    fn from(e: GreyError) -> Self {
        match e {
            GreyError::BadValue {
                series,
                index,
                value,
            } => PredictError::BadValue {
                iteration: index + 1,
                series: series + 1,
                value,
            },
            _ => PredictError::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(x1: &[f64]) -> Vec<Iteration> {
        x1.iter()
            .enumerate()
            .map(|(i, x)| [*x, 50.0, 80.0 + i as f64, 1e6, 1.0 + i as f64 * 0.1, 2e7].into())
            .collect()
    }

    #[test]
    fn baselines_by_hand() {
        let h = rows(&[10.0, 20.0, 30.0, 40.0]);
        assert_eq!(Last.predict(&h).map(|p| p.value), Ok(40.0));
        assert_eq!(Mean.predict(&h).map(|p| p.value), Ok(25.0));
        // EWMA 0.5: 10 -> 15 -> 22.5 -> 31.25
        assert_eq!(Ewma::default().predict(&h).map(|p| p.value), Ok(31.25));
        // BDA: U = 40, D = 20, a = 2/3, b = 1/3 -> 40·2/3 + 20/3 = 33.33…
        let b = Bda.predict(&h).expect("bda").value;
        assert!((b - 100.0 / 3.0).abs() < 1e-9, "{b}");
    }

    /// 100 pages dirtied in 2 s while sending 8 MB (4 MB/s); 4 MB left:
    /// the next iteration should take 4e6 / 4e6 = 1 s and dirty
    /// 100 / 2 · 1 = 50 pages at the same rate.
    #[test]
    fn physics_figures_by_hand() {
        let it = Iteration {
            x: [100.0, 50.0, 80.0, 0.0, 3.0, 2e7],
            duration_s: 2.0,
            sent_bytes: Some(8e6),
            remaining_bytes: Some(4e6),
            sampled_dirty_pps: None,
            sampled_end_pps: None,
            used_pages: None,
        };
        assert_eq!(it.bandwidth(), Some(4e6));
        assert_eq!(it.next_duration_s(), Some(1.0));
        assert_eq!(it.dirty_rate(), Some(50.0));
        assert_eq!(it.next_pages_at_rate(), Some(50.0));
        assert_eq!(Phys.predict(&[it]).map(|p| p.value), Ok(50.0));
        // Nothing sent, or figures missing: no estimate, the last value.
        let stalled = Iteration {
            sent_bytes: Some(0.0),
            ..it
        };
        assert_eq!(stalled.next_duration_s(), None);
        assert_eq!(stalled.next_pages_at_rate(), None);
        let old: Iteration = it.x.into();
        assert_eq!(old.next_duration_s(), None);
        assert_eq!(old.dirty_rate(), None);
        let p = Phys.predict(&[old]).expect("predicts");
        assert_eq!(p.value, 100.0);
        assert!(p.how.contains("fallback"), "{}", p.how);
    }

    /// A tail like rand-l20's: a pass that sent 389 KiB is followed by a
    /// 0.38 s pass, one that sent 517 or 906 KiB by a 0.19 s one, though
    /// about 700 KiB is left each time. T̃ follows the pattern once two
    /// alike passes were seen; not where the passes after alike ones
    /// disagree, nor from the bulk pass or passes out of the window.
    #[test]
    fn a_tail_pass_lasts_as_long_as_those_after_alike_passes() {
        let kib = 1024.0;
        let pass = |sent_kib: f64, t: f64| Iteration {
            x: [100.0, 50.0, 80.0, 0.0, 1.0, 2e7],
            duration_s: t,
            sent_bytes: Some(sent_kib * kib),
            remaining_bytes: Some(700.0 * kib),
            sampled_dirty_pps: None,
            sampled_end_pps: None,
            used_pages: None,
        };
        let tail = |passes: &[(f64, f64)]| -> Vec<Iteration> {
            passes.iter().map(|&(sent, t)| pass(sent, t)).collect()
        };
        let mut h = vec![pass(40_000.0, 16.0)];
        for sent in [
            906.0, 517.0, 389.0, 906.0, 389.0, 906.0, 517.0, 389.0, 906.0,
        ] {
            h.push(pass(sent, if sent == 906.0 { 0.38 } else { 0.19 }));
        }
        for (sent, t) in [(389.0, 0.19), (906.0, 0.38), (517.0, 0.19), (389.0, 0.19)] {
            h.push(pass(sent, t));
            let want = if sent == 389.0 { 0.38 } else { 0.19 };
            let got = calibrated_next_duration(&h).expect("telemetry");
            assert!((got - want).abs() < 1e-9, "after {sent} KiB: {got}");
        }
        // The pass before the latest one counts: its follower is known.
        let short = tail(&[
            (40_000.0, 16.0),
            (389.0, 0.19),
            (389.0, 0.38),
            (389.0, 0.38),
        ]);
        assert_eq!(after_alike(&short), Some(0.38));
        // 389 KiB once followed by 0.19 s, once by 0.38 s: no pattern.
        let mut mixed = h[..5].to_vec();
        mixed.push(pass(389.0, 0.19));
        mixed.push(pass(389.0, 0.19));
        assert_eq!(after_alike(&mixed), None);
        // The bulk pass is not a tail pass, even when it sent as much.
        let bulk = tail(&[(389.0, 16.0), (906.0, 0.38), (389.0, 0.19), (389.0, 0.38)]);
        assert_eq!(after_alike(&bulk), None);
        // Alike passes older than the window are forgotten.
        let mut old = tail(&[
            (40_000.0, 16.0),
            (389.0, 0.19),
            (389.0, 0.19),
            (389.0, 0.19),
        ]);
        for k in 0..ALIKE_WINDOW {
            old.push(pass(2000.0 + 100.0 * k as f64, 0.19));
        }
        old.push(pass(389.0, 0.5));
        assert_eq!(after_alike(&old), None);
        assert_eq!(after_alike(&old[..4]), Some(0.19));
        // A pass that sent nothing (QEMU reported no RAM section) is alike
        // to none, not even to a pass that sent little.
        let nothing = tail(&[(40_000.0, 16.0), (0.0, 0.19), (0.0, 0.19), (10.0, 0.19)]);
        assert_eq!(after_alike(&nothing), None);
        assert_eq!(after_alike(&nothing[..3]), None);
    }

    /// X2 of the guest's RAM in pages; nothing from a bad figure.
    #[test]
    fn used_pages_are_x2_of_the_ram() {
        let ram = 128.0 * 1024.0 * 1024.0;
        assert_eq!(used_pages(50.0, ram, 4096.0), Some(16384.0));
        assert_eq!(used_pages(150.0, ram, 4096.0), Some(32768.0));
        for (pct, ram, page) in [
            (0.0, ram, 4096.0),
            (f64::NAN, ram, 4096.0),
            (50.0, 0.0, 4096.0),
        ] {
            assert_eq!(used_pages(pct, ram, page), None, "{pct} {ram} {page}");
        }
        assert_eq!(used_pages(50.0, ram, 0.0), None);
    }

    /// The used memory is read only against the bulk pass: the same
    /// figures on a later pass keep the random working set.
    #[test]
    fn only_the_bulk_pass_is_read_as_a_sweep() {
        let bulk = Iteration {
            x: [4096.0, 50.0, 80.0, 0.0, 0.0, 2e7],
            duration_s: 60.0,
            sent_bytes: Some(40e6),
            remaining_bytes: Some(10e6),
            sampled_dirty_pps: Some(100.0),
            sampled_end_pps: None,
            used_pages: Some(4500.0),
        };
        // T̂ = 10e6 / (40e6 / 60) = 15 s, T̃ the prior offset less: a
        // sweep dirties 100 pages a second of it.
        let sweep = Physics::after(&[bulk]).expect("physics");
        let t = 15.0 + duration_prior_offset_s(40e6 / 60.0);
        assert!((sweep.sampled_set - 100.0 * t).abs() < 1e-6, "{sweep:?}");
        let random = wss::WorkingSet::from_rate(100.0, 60.0, 4096.0).expect("saturates");
        let later = Physics::after(&[bulk, bulk]).expect("physics");
        let t = later.duration_s;
        assert!(
            (later.sampled_set - random.dirtied(t)).abs() < 1e-6,
            "{later:?}"
        );
        assert!(later.sampled_set < 100.0 * t * 0.95, "{later:?}");
    }

    /// Readings climbing 1 MiB/s every 10 s through a 40 s pass trend: the
    /// rate stands where their line ends. Flat readings with the same
    /// spread, or too few readings, do not: their mean stands.
    #[test]
    fn a_climbing_rate_is_read_where_it_ended() {
        let mib = 1024.0 * 1024.0;
        // Whole MiB/s, as QEMU answers: the floor of a climbing rate.
        let climbing: Vec<(f64, f64)> = (0..36)
            .map(|k| {
                let t = 0.5 + 1.1 * k as f64;
                (t, (t / 10.0).floor() * mib)
            })
            .collect();
        let end = sampled_trend_end(&climbing, 40.0).expect("trends");
        assert!((end / mib - 3.5).abs() < 0.3, "{}", end / mib);
        // The same readings in an order without a trend: 0..3 MiB/s in turn.
        let flat: Vec<(f64, f64)> = climbing
            .iter()
            .enumerate()
            .map(|(k, (t, _))| (*t, (k % 4) as f64 * mib))
            .collect();
        assert_eq!(sampled_trend_end(&flat, 40.0), None);
        // A falling rate is read where it ended too, never below 0.
        let falling: Vec<(f64, f64)> = climbing.iter().map(|(t, v)| (*t, 4.0 * mib - v)).collect();
        let end = sampled_trend_end(&falling, 80.0).expect("trends");
        assert_eq!(end, 0.0);
        // Nine readings climbing 1 MiB/s each are too few; ten are not.
        let line =
            |n: usize| -> Vec<(f64, f64)> { (0..n).map(|k| (k as f64, k as f64 * mib)).collect() };
        assert_eq!(sampled_trend_end(&line(9), 9.0), None, "nine readings");
        assert_eq!(sampled_trend_end(&line(10), 10.0), Some(10.0 * mib));
        let constant: Vec<(f64, f64)> = (0..12).map(|k| (k as f64, mib)).collect();
        assert_eq!(sampled_trend_end(&constant, 12.0), None);
    }

    /// A bulk pass whose readings ramped: S̃ dirties the working set it
    /// showed at the rate it ended on, not at its mean.
    #[test]
    fn the_pass_after_a_ramp_is_read_at_the_rate_it_ended_on() {
        let ws = wss::WorkingSet {
            rate: 300.0,
            pages: 16384.0,
            shape: wss::Shape::Random,
        };
        let mut bulk = Iteration {
            x: [ws.dirtied(30.0), 50.0, 80.0, 0.0, 0.0, 2e7],
            duration_s: 30.0,
            sent_bytes: Some(30.0 * 4e6),
            remaining_bytes: Some(10.0 * 4e6),
            sampled_dirty_pps: Some(300.0),
            sampled_end_pps: None,
            used_pages: None,
        };
        let at_mean = Physics::after(&[bulk]).expect("physics");
        bulk.sampled_end_pps = Some(600.0);
        let at_end = Physics::after(&[bulk]).expect("physics");
        let t = at_end.duration_s;
        let want = wss::WorkingSet { rate: 600.0, ..ws }.dirtied(t);
        assert!((at_end.sampled_set / want - 1.0).abs() < 1e-3, "{at_end:?}");
        assert!(
            at_end.sampled_set > 1.8 * at_mean.sampled_set,
            "{at_mean:?} {at_end:?}"
        );
        // No saturation seen: the end rate over the next pass, if higher
        // than the pass's own.
        bulk.x[0] = 300.0 * 30.0;
        let linear = Physics::after(&[bulk]).expect("physics");
        assert!((linear.sampled_set - 600.0 * t).abs() < 1e-6, "{linear:?}");
    }

    /// QEMU reads 1.2 MiB/s as 1: the rate handed to the predictors is the
    /// reading plus a quarter MiB/s, in pages; nothing from a bad reading.
    #[test]
    fn a_sampled_reading_gets_back_what_rounding_down_took() {
        let mib = 1024.0 * 1024.0;
        assert_eq!(sampled_pages_per_s(mib, 4096.0), Some(320.0));
        assert_eq!(sampled_pages_per_s(0.0, 4096.0), Some(64.0));
        for bad in [f64::NAN, f64::INFINITY, -mib] {
            assert_eq!(sampled_pages_per_s(bad, 4096.0), None, "{bad}");
        }
        assert_eq!(sampled_pages_per_s(mib, 0.0), None);
    }

    /// The prior early end grows with the link's rate towards
    /// [`EARLY_END_S`], less the time [`EARLY_END_LESS_BYTES`] take:
    /// about 0.1 s at 2.5 MB/s, 0.25 s at 50 MB/s, none where those bytes
    /// alone take longer.
    #[test]
    fn the_prior_early_end_follows_the_link_rate() {
        let at = duration_prior_offset_s;
        assert!((at(2.5e6) + 0.10).abs() < 0.005, "{}", at(2.5e6));
        assert!((at(50e6) + 0.252).abs() < 0.001, "{}", at(50e6));
        assert!(at(6e6) < at(3e6) && at(3e6) < 0.0);
        assert_eq!(at(1e6), 0.0);
        assert_eq!(at(0.0), 0.0, "no bandwidth, no early end");
    }

    /// Passes that end 0.3 s before what was left would take at the
    /// measured bandwidth (QEMU syncing early): T̂ is 0.3 s long every
    /// time; T̃ takes the prior offset off until it learns the real one
    /// from three passes on.
    #[test]
    fn the_duration_learns_a_constant_early_end() {
        let bw = 4e6;
        let mut h: Vec<Iteration> = Vec::new();
        let mut left = 40e6;
        for k in 0..8 {
            let t = if k == 0 { left / bw } else { left / bw - 0.3 };
            let sent = t * bw;
            let next_left = 0.7 * left;
            h.push(Iteration {
                x: [100.0, 50.0, 80.0, 0.0, 1.0, 2e7],
                duration_s: t,
                sent_bytes: Some(sent),
                remaining_bytes: Some(next_left),
                sampled_dirty_pps: None,
                sampled_end_pps: None,
                used_pages: None,
            });
            left = next_left;
        }
        for k in 1..7 {
            let known = &h[..k];
            let want = h[k].duration_s;
            let t_hat = known[k - 1].next_duration_s().expect("telemetry");
            let t = calibrated_next_duration(known).expect("telemetry");
            assert!((t_hat - want - 0.3).abs() < 1e-9, "T^ at {k}");
            if k >= 5 {
                // Pairs (T^(i), T(i)) for i = 2..k-1: three from k = 5.
                assert!((t - want).abs() < 1e-9, "{k}: {t} vs {want}");
            } else {
                let prior = t_hat + duration_prior_offset_s(bw);
                assert!(
                    (t - prior).abs() < 1e-9,
                    "{k}: too few pairs: {t} vs {prior}"
                );
            }
        }
    }

    /// A 20 s pass of random writes at 500 pages/s over 8192 pages, and a
    /// sample of that rate: S̃ of a 2 s pass is the working set's count, P̃
    /// (the long pass's pages/s) 61% of it.
    #[test]
    fn a_sampled_rate_reads_the_next_pass_through_the_working_set() {
        let ws = wss::WorkingSet {
            rate: 500.0,
            pages: 8192.0,
            shape: wss::Shape::Random,
        };
        let long = Iteration {
            x: [ws.dirtied(20.0), 50.0, 80.0, 0.0, 0.0, 2e7],
            duration_s: 20.0,
            sent_bytes: Some(20.0 * 4e6),
            remaining_bytes: Some(2.0 * 4e6),
            sampled_dirty_pps: Some(500.0),
            sampled_end_pps: None,
            used_pages: None,
        };
        let p = Physics::after(&[long]).expect("telemetry");
        // T̂ = 2 s, less the prior early end.
        assert!((p.duration_s - (2.0 + duration_prior_offset_s(4e6))).abs() < 1e-9);
        assert!(
            (p.sampled_set / ws.dirtied(p.duration_s) - 1.0).abs() < 1e-9,
            "{p:?}"
        );
        assert!(p.pages_at_rate < 0.65 * p.sampled_set, "{p:?}");
        // Without a sample: P̃.
        let unsampled = Iteration {
            sampled_dirty_pps: None,
            sampled_end_pps: None,
            used_pages: None,
            ..long
        };
        let p = Physics::after(&[unsampled]).expect("telemetry");
        assert_eq!(p.sampled_set, p.pages_at_rate);
    }

    #[test]
    fn short_history_falls_back_visibly() {
        let h = rows(&[100.0, 120.0, 90.0]);
        for m in [&GreyGm1n::default() as &dyn Predictor, &GreyGm11::default()] {
            let p = m.predict(&h).expect("predicts");
            assert_eq!(p.value, 90.0);
            assert!(p.how.contains("fallback"), "{}", p.how);
        }
    }

    #[test]
    fn driver_count_is_limited_by_samples() {
        let g = GreyGm1n::default();
        // 5 samples -> 4 equations -> at most 1 driver.
        assert!(g.select_drivers(&rows(&[1.0, 2.0, 3.0, 4.0, 5.0])).len() <= 1);
        // 8 samples -> 7 equations -> at most 2 drivers.
        let h = rows(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert!(g.select_drivers(&h).len() <= 2);
        // Constant drivers (X2, X4, X6 here) are never chosen.
        assert!(
            g.select_drivers(&h)
                .iter()
                .all(|d| [Driver::Series(2), Driver::Series(4)].contains(d))
        );
    }

    #[test]
    fn gm1n_tracks_a_driven_series() {
        // X1 = 1000·X3 exactly, X3 growing: a driven series GM(1,N) must
        // follow within a few percent one step ahead.
        let h: Vec<Iteration> = (0..10)
            .map(|k| {
                let cpu = 10.0 + 3.0 * k as f64;
                [1000.0 * cpu, 40.0, cpu, 5e5, 2.0, 1e7].into()
            })
            .collect();
        let p = GreyGm1n::default().predict(&h[..9]).expect("predicts");
        let actual = h[9].x[0];
        assert!(
            (p.value - actual).abs() / actual < 0.1,
            "{} vs {actual} ({})",
            p.value,
            p.how
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut h = rows(&[1.0, 2.0, 3.0, 4.0]);
        h[2].x[3] = f64::NAN;
        assert!(matches!(
            GreyGm1n::default().predict(&h),
            Err(PredictError::BadValue {
                iteration: 3,
                series: 4,
                ..
            })
        ));
        h[2].x[3] = -1.0;
        assert!(matches!(
            Last.predict(&h),
            Err(PredictError::BadValue {
                iteration: 3,
                series: 4,
                ..
            })
        ));
        assert_eq!(Mean.predict(&[]), Err(PredictError::Empty));
        h[2].x[3] = 1.0;
        h[1].sent_bytes = Some(f64::INFINITY);
        assert_eq!(
            GreyGm1n::default().predict(&h),
            Err(PredictError::BadTelemetry {
                iteration: 2,
                field: "sent_bytes",
                value: f64::INFINITY,
            })
        );
        h[1].sent_bytes = None;
        h[3].duration_s = f64::NAN;
        assert!(matches!(
            Phys.predict(&h),
            Err(PredictError::BadTelemetry {
                iteration: 4,
                field: "duration_s",
                ..
            })
        ));
    }

    #[test]
    fn zero_and_constant_series_predict_sanely() {
        for m in MODELS {
            let p = model(m, 8).expect("model");
            let zero = p.predict(&rows(&[0.0; 6])).expect("zeros");
            assert_eq!(zero.value, 0.0, "{m} on zeros: {}", zero.how);
            // Everything constant: every model must return the constant
            // (GM(1,N) drops constant drivers and becomes GM(1,1)).
            let flat = p
                .predict(&[[500.0, 40.0, 80.0, 1e6, 2.0, 2e7].into(); 6])
                .expect("flat");
            assert!(
                (flat.value - 500.0).abs() < 1e-6,
                "{m} on a constant: {} ({})",
                flat.value,
                flat.how
            );
        }
    }
}
