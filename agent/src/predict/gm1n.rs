//! GM(1,N) as a one-step predictor of X1, made usable on the 4–10
//! iterations a real migration has.
//!
//! - Drivers: X2..X6 of the NRAC paper's GM(1,N) (docs/trace-format.md) and two physics drivers whose value at
//!   the predicted iteration is measured, not forecast:
//!   T̂(k), the duration iteration k is expected to take, known when
//!   iteration k−1 ends (bytes left to send over the bandwidth just
//!   measured), and P̂(k) = (X1(k−1) / T(k−1)) · T̂(k), the pages iteration
//!   k dirties if iteration k−1's dirty rate holds. X1(k) is that rate times
//!   the iteration's duration; X5 is the duration of the iteration *before*.
//! - A rolling window. When the physics drivers exist, it leaves out the
//!   bulk pass (iteration 1): that pass sends the whole RAM, so its length
//!   is not set by dirty pages, and its X1 is capped by the working set.
//!   It also starts after the last iteration whose dirty rate (X1 / T) is
//!   more than [`REGIME_FACTOR`] away from the latest one: older iterations
//!   describe another behaviour of the guest (a burst that has stopped).
//! - Drivers: non-constant and not mostly zero; those known at the
//!   predicted iteration (T̂, P̂, and X5, which is then the duration of the
//!   iteration that just ended) before those that must be held, each group
//!   ranked by grey relational grade to X1; limited so there are at least
//!   two equations per parameter. Scaled, ridge-regularised least squares
//!   ([`super::grey`]).
//! - An in-window rolling backtest: GM(1,N) is used only where it beats
//!   GM(1,1) on the window's last iterations; a prediction more than
//!   [`PLAUSIBLE_FACTOR`] times the window's largest X1 is a blown-up fit.
//! - The paper's residual correction when its tail condition holds.
//! - A window too short for one driver (fewer than 5 samples): P̂ of the
//!   next iteration when the telemetry has it; else GM(1,1) from 4 samples
//!   and the last value below.

use super::{
    DriverForecast, GreyGm11, Iteration, MIN_GREY_SAMPLES, Physics, PredictError, Prediction,
    Predictor, Response, SERIES, check_history, fallback_last,
    grey::{Gm1n, Gm11, ago, relational_grade, residual_correction},
};

/// A candidate driver of GM(1,N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// One of X2..X6 by its index in a [`super::Row`] (1..=5). Its value at
    /// the predicted iteration is held or forecast ([`DriverForecast`]),
    /// except X5's: the duration of the iteration that just ended.
    Series(usize),
    /// T̃: the iteration's expected duration as known when the iteration
    /// before ended, calibrated on the migration's earlier iterations
    /// ([`super::calibrated_next_duration`]).
    Duration,
    /// P̃: pages at the previous iteration's dirty rate over T̃
    /// ([`super::Physics::pages_at_rate`]).
    PagesAtRate,
    /// S̃: pages at the sampled write rate over the working set it implies
    /// ([`super::Physics::sampled_set`]); P̃ where no rate was sampled.
    SampledSet,
}

impl Driver {
    /// Every driver: X2..X6, T̃, P̃, S̃.
    pub const ALL: [Driver; 8] = [
        Driver::Series(1),
        Driver::Series(2),
        Driver::Series(3),
        Driver::Series(4),
        Driver::Series(5),
        Driver::Duration,
        Driver::PagesAtRate,
        Driver::SampledSet,
    ];

    /// As written in a prediction's `how`: `X3`, `T~`, `P~`, `S~`.
    pub fn name(self) -> String {
        match self {
            Driver::Series(i) => format!("X{}", i + 1),
            Driver::Duration => "T~".into(),
            Driver::PagesAtRate => "P~".into(),
            Driver::SampledSet => "S~".into(),
        }
    }

    /// Whether the driver's value for an iteration is measured when the
    /// iteration before ends.
    pub fn is_physics(self) -> bool {
        !matches!(self, Driver::Series(_))
    }

    /// A physics driver's value in `p`.
    fn of(self, p: &Physics) -> Option<f64> {
        match self {
            Driver::Series(_) => None,
            Driver::Duration => Some(p.duration_s),
            Driver::PagesAtRate => Some(p.pages_at_rate),
            Driver::SampledSet => Some(p.sampled_set),
        }
    }
}

/// GM(1,N): X1 driven by a selection of the [`Driver`]s.
#[derive(Debug, Clone)]
pub struct GreyGm1n {
    pub window: usize,
    /// Relative ridge term of the least-squares solve.
    pub ridge: f64,
    /// How X2..X6 get their value at the predicted iteration.
    pub drivers: DriverForecast,
    pub response: Response,
    pub correction: bool,
    /// Drivers to consider; the fit keeps the ones with the highest grey
    /// relational grade, as many as the samples support (two equations per
    /// parameter).
    pub candidates: Vec<Driver>,
    /// At most this many drivers even with plenty of samples.
    pub max_drivers: usize,
    /// The window starts after the last iteration whose dirty rate is
    /// more than this factor away from the latest one (0 = never cut).
    pub regime_factor: f64,
}

impl Default for GreyGm1n {
    fn default() -> Self {
        GreyGm1n {
            window: 8,
            ridge: 1e-3,
            drivers: DriverForecast::Hold,
            response: Response::Equation,
            correction: true,
            candidates: Driver::ALL.to_vec(),
            max_drivers: 5,
            regime_factor: REGIME_FACTOR,
        }
    }
}

/// GM(1,N) predictions above this multiple of the window's largest X1 are
/// rejected as blown-up fits.
pub const PLAUSIBLE_FACTOR: f64 = 3.0;
/// A change of the dirty rate by more than this factor is a change of the
/// guest's behaviour (a burst starting or stopping, a phase change), and
/// iterations before it describe another regime. Within one regime the
/// recorded traces drift by at most 2.2× (the working set saturating as
/// iterations shorten, bulk pass included); the burst workload switches by
/// 2.1× (on) and 31× (off).
pub const REGIME_FACTOR: f64 = 4.0;
/// Rolling origins of the in-window backtest that chooses GM(1,N) over
/// GM(1,1).
const BACKTEST_ORIGINS: usize = 3;

/// X5's index in a row: the previous iteration's duration.
const PREV_DURATION: usize = 4;

/// One driver over the window.
#[derive(Debug, Clone)]
struct Column {
    driver: Driver,
    values: Vec<f64>,
    /// The value at the predicted iteration when it is known then (the
    /// physics drivers, X5 when durations are known; each value of the
    /// column was then known one iteration ahead too); `None` when it must
    /// be held or forecast.
    next: Option<f64>,
}

/// What GM(1,N) fits on: X1 over the window and the candidate drivers
/// available over all of it.
#[derive(Debug, Clone)]
struct Window {
    x1: Vec<f64>,
    columns: Vec<Column>,
    /// The physics' own prediction (S̃, or P̃ without a sampled rate) for
    /// each iteration of the window, if the telemetry has them all.
    physics: Option<Column>,
    /// Its prediction for the next iteration, if the telemetry has it.
    physics_next: Option<f64>,
    /// The dirty-rate change (a factor) the window starts after, if any.
    cut: Option<f64>,
}

impl GreyGm1n {
    /// The window for `history` (checked, non-empty).
    fn window(&self, history: &[Iteration]) -> Window {
        let s = history.len();
        let latest = &history[s - 1];
        // The physics drivers exist from the second iteration on; with
        // them the window leaves the bulk pass out.
        let next = Physics::after(history);
        let physics = next.is_some() && self.candidates.iter().any(|d| d.is_physics());
        let mut start = s
            .saturating_sub(self.window.max(MIN_GREY_SAMPLES))
            .max(usize::from(physics))
            .min(s - 1);
        let mut cut = None;
        if let Some(latest_rate) = latest.dirty_rate().filter(|_| self.regime_factor > 0.0) {
            let same_regime = |it: &Iteration| {
                it.dirty_rate().is_some_and(|r| {
                    r * self.regime_factor >= latest_rate && r <= latest_rate * self.regime_factor
                })
            };
            if let Some(g) = (start..s - 1).rev().find(|&g| !same_regime(&history[g])) {
                cut = history[g]
                    .dirty_rate()
                    .map(|r| (latest_rate / r.max(f64::MIN_POSITIVE)).max(r / latest_rate));
                start = g + 1;
            }
        }
        let h = &history[start..];
        // Each iteration's physics as known when the one before ended,
        // computed once for every physics column.
        let known: Option<Vec<Physics>> =
            next.and_then(|_| (start..s).map(|g| Physics::after(&history[..g])).collect());
        let column = |driver: Driver| {
            Some(Column {
                driver,
                values: known
                    .as_ref()?
                    .iter()
                    .map(|p| driver.of(p))
                    .collect::<Option<_>>()?,
                next: driver.of(next.as_ref()?),
            })
        };
        let columns = self
            .candidates
            .iter()
            .filter_map(|&driver| match driver {
                Driver::Series(i) => (1..SERIES).contains(&i).then(|| Column {
                    driver,
                    values: h.iter().map(|r| r.x[i]).collect(),
                    // X5 of the predicted iteration is the duration of the
                    // one that just ended.
                    next: (i == PREV_DURATION && latest.duration_s > 0.0)
                        .then_some(latest.duration_s),
                }),
                _ => column(driver),
            })
            .collect();
        Window {
            x1: h.iter().map(|r| r.x[0]).collect(),
            columns,
            physics: column(Driver::SampledSet),
            physics_next: next.map(|p| p.sampled_set),
            cut,
        }
    }

    /// The columns used for `w`: informative candidates, those whose value
    /// at the predicted iteration is known first (a held value is a guess
    /// the fit cannot account for), then by grey relational grade to X1; as
    /// many as `(rows/2) − 1` allows.
    fn select(&self, w: &Window) -> Vec<usize> {
        let rows = w.x1.len().saturating_sub(1);
        let allowed = (rows / 2).saturating_sub(1).min(self.max_drivers);
        let mut ranked: Vec<(usize, bool, f64)> = w
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| informative(&c.values))
            .map(|(i, c)| (i, c.next.is_some(), relational_grade(&w.x1, &c.values)))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.total_cmp(&a.2)).then(a.0.cmp(&b.0)));
        ranked.into_iter().take(allowed).map(|(i, ..)| i).collect()
    }

    /// The drivers GM(1,N) would use on `history`.
    pub fn select_drivers(&self, history: &[Iteration]) -> Vec<Driver> {
        if history.is_empty() {
            return Vec::new();
        }
        let w = self.window(history);
        self.select(&w)
            .into_iter()
            .map(|i| w.columns[i].driver)
            .collect()
    }

    /// A driver's value at the step after its first `len` values.
    fn next_value(&self, c: &Column, len: usize) -> f64 {
        let known = if len < c.values.len() {
            c.next.map(|_| c.values[len])
        } else {
            c.next
        };
        if let Some(v) = known {
            return v;
        }
        let col = &c.values[..len];
        let last = col[len - 1];
        match self.drivers {
            DriverForecast::Hold => last,
            DriverForecast::Gm11 => Gm11::fit(col)
                .map(|g| g.forecast_next_equation(col.iter().sum()))
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(last),
        }
    }

    /// GM(1,N) on the first `len` samples of `w` with the chosen columns:
    /// the prediction for the step after (residual correction included)
    /// and whether the correction applied, or `None` when the system cannot
    /// be fitted or the result is not finite or not plausible.
    fn fit_predict(&self, w: &Window, chosen: &[usize], len: usize) -> Option<(f64, bool)> {
        let xs = &w.x1[..len];
        let cols: Vec<&[f64]> = chosen
            .iter()
            .map(|&i| &w.columns[i].values[..len])
            .collect();
        let m = Gm1n::fit(xs, &cols, self.ridge).ok()?;
        let d_ago: Vec<Vec<f64>> = cols.iter().map(|c| ago(c)).collect();
        let x1_ago = ago(xs);
        // The drivers' AGO at step k, into one buffer reused for every k.
        let fill = |buf: &mut Vec<f64>, k: usize| {
            buf.clear();
            buf.extend(d_ago.iter().map(|d| d[k - 1]));
        };
        let mut buf = Vec::with_capacity(d_ago.len());
        let next_ago: Vec<f64> = chosen
            .iter()
            .zip(&d_ago)
            .map(|(&i, d)| d[len - 1] + self.next_value(&w.columns[i], len))
            .collect();
        let (fitted, next): (Vec<f64>, f64) = match self.response {
            Response::Equation => (
                (2..=len)
                    .map(|k| {
                        fill(&mut buf, k);
                        m.next_equation(x1_ago[k - 2], &buf)
                    })
                    .collect(),
                m.next_equation(x1_ago[len - 1], &next_ago),
            ),
            Response::TimeResponse => {
                let sim = m.simulate(&d_ago);
                fill(&mut buf, len);
                (
                    sim[1..].to_vec(),
                    m.x1_hat(len + 1, &next_ago) - m.x1_hat(len, &buf),
                )
            }
        };
        let residuals: Vec<f64> = xs[1..].iter().zip(&fitted).map(|(x, f)| x - f).collect();
        let correction = self
            .correction
            .then(|| residual_correction(&residuals))
            .flatten();
        let value = next + correction.unwrap_or(0.0);
        // A grey extrapolation that leaves the scale of the data (the
        // equation form divides by 1 + a/2) is a failed fit, not a forecast.
        let max = xs.iter().copied().fold(0.0, f64::max);
        (value.is_finite() && value <= PLAUSIBLE_FACTOR * max + 1.0)
            .then_some((value.max(0.0), correction.is_some()))
    }

    /// How a prediction with these columns was made, e.g. `gm1n[T~,X5]+corr`.
    fn describe(w: &Window, chosen: &[usize], corrected: bool) -> String {
        let names: Vec<String> = chosen.iter().map(|&i| w.columns[i].driver.name()).collect();
        let corr = if corrected { "+corr" } else { "" };
        format!("gm1n[{}]{corr}", names.join(","))
    }

    fn gm11(&self) -> GreyGm11 {
        GreyGm11 {
            window: self.window,
            response: self.response,
            correction: self.correction,
        }
    }
}

/// Whether a driver column carries signal: a coefficient of variation of at
/// least 2% and no more than half of it zeros (a sparse, mostly-zero column
/// like an idle NIC's byte rate only adds noise to the fit).
fn informative(col: &[f64]) -> bool {
    let n = col.len() as f64;
    let mean = col.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return false;
    }
    let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let zeros = col.iter().filter(|v| **v == 0.0).count() as f64;
    var.sqrt() / mean >= 0.02 && zeros <= n / 2.0
}

impl Predictor for GreyGm1n {
    fn name(&self) -> &str {
        "gm1n"
    }

    /// GM(1,N) when it earns its parameters: the drivers are chosen on the
    /// window, then a rolling-origin backtest over the window's last
    /// iterations compares GM(1,N) with GM(1,1) and with the physics alone
    /// (S̃, or P̃ without a sampled rate), and the one with the smallest
    /// error predicts (GM(1,N) on a tie; its prediction must be plausible).
    /// Too short a window for a backtest: the physics when the telemetry
    /// has it, GM(1,N) or GM(1,1) otherwise.
    fn predict(&self, history: &[Iteration]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let w = self.window(history);
        let n = w.x1.len();
        let cut = w
            .cut
            .map_or(String::new(), |f| format!(", dirty rate changed {f:.1}x"));
        let physics = |why: &str| {
            w.physics_next.map(|value| Prediction {
                value: value.max(0.0),
                how: format!("{} ({why}{cut})", Driver::SampledSet.name()),
            })
        };
        if n < MIN_GREY_SAMPLES {
            let why = format!("fallback: {n} samples");
            return Ok(physics(&why)
                .unwrap_or_else(|| fallback_last(history, &format!("{n} samples{cut}"))));
        }
        let gm11 = self.gm11();
        let via_gm11 = |why: &str| -> Result<Prediction, PredictError> {
            let mut p = gm11.predict_series(&w.x1)?;
            p.how = format!("gm1n->{} ({why}{cut})", p.how);
            Ok(p)
        };
        let chosen = self.select(&w);
        if chosen.is_empty() {
            // Too few samples for one driver (two equations per parameter)
            // or none informative: the physics needs no fit.
            let why = format!("fallback: no driver over {n} samples");
            return match physics(&why) {
                Some(p) => Ok(p),
                None => via_gm11("no usable driver"),
            };
        }
        let need = (chosen.len() + 3).max(MIN_GREY_SAMPLES);
        let (mut err_n, mut err_1, mut err_p, mut tested) = (0.0, 0.0, 0.0, 0);
        for origin in n.saturating_sub(BACKTEST_ORIGINS).max(need)..n {
            let actual = w.x1[origin];
            let pn = self
                .fit_predict(&w, &chosen, origin)
                .map_or(f64::INFINITY, |(v, _)| v);
            let p1 = gm11.predict_series(&w.x1[..origin])?.value;
            err_n += (pn - actual).abs();
            err_1 += (p1 - actual).abs();
            err_p += w
                .physics
                .as_ref()
                .map_or(f64::INFINITY, |c| (c.values[origin] - actual).abs());
            tested += 1;
        }
        if tested == 0 {
            if let Some(p) = physics(&format!("fallback: no backtest over {n} samples")) {
                return Ok(p);
            }
        } else if err_p < err_n.min(err_1) {
            return Ok(physics(&format!(
                "backtest over {tested}: err {err_p:.0} < gm1n {err_n:.0}, gm11 {err_1:.0}"
            ))
            .expect("a finite physics error means a physics column"));
        } else if err_n > err_1 {
            return via_gm11(&format!(
                "backtest over {tested}: gm1n err {err_n:.0} > gm11 err {err_1:.0}"
            ));
        }
        match self.fit_predict(&w, &chosen, n) {
            Some((value, corrected)) => Ok(Prediction {
                value,
                how: Self::describe(&w, &chosen, corrected),
            }),
            None => via_gm11("gm1n fit failed or implausible"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::{GreyGm11, Iteration, duration_prior_offset_s};

    const PAGE: f64 = 4096.0;
    const RAM: f64 = 160.0 * 1024.0 * 1024.0;
    const BW: f64 = 3.6e6;

    /// A pre-copy migration in its simplest physics: iteration k sends what
    /// iteration k−1 left (all of RAM for the first) at `BW` bytes/s, the
    /// passes after the bulk pass ending the prior's early-end offset
    /// before they sent it all (as QEMU syncs early), so it lasts
    /// `T = left / BW` (less that offset); meanwhile the guest dirties
    /// `dirty(k, T)` distinct pages; what is left after it is those pages,
    /// what it did not send, and `extra(k)` bytes that are not dirty pages.
    fn migrate(
        n: usize,
        dirty: impl Fn(usize, f64) -> f64,
        extra: impl Fn(usize) -> f64,
    ) -> Vec<Iteration> {
        let mut left = RAM;
        let mut prev_t = 0.0;
        (0..n)
            .map(|k| {
                let early = if k == 0 {
                    0.0
                } else {
                    -duration_prior_offset_s(BW)
                };
                let t = left / BW - early;
                let sent = t * BW;
                let pages = dirty(k, t);
                let remaining = pages * PAGE + extra(k) + (left - sent);
                let it = Iteration {
                    x: [pages, 60.0, 90.0, 0.0, prev_t, 3e7],
                    duration_s: t,
                    sent_bytes: Some(sent),
                    remaining_bytes: Some(remaining),
                    sampled_dirty_pps: None,
                    sampled_end_pps: None,
                    used_pages: None,
                };
                left = remaining;
                prev_t = t;
                it
            })
            .collect()
    }

    /// |prediction − actual| / actual for iteration k predicted from 0..k.
    fn ape(p: &dyn Predictor, h: &[Iteration], k: usize) -> f64 {
        let v = p.predict(&h[..k]).expect("predicts").value;
        (v - h[k].x[0]).abs() / h[k].x[0]
    }

    fn mean_ape(p: &dyn Predictor, h: &[Iteration], ks: std::ops::Range<usize>) -> f64 {
        let n = ks.len() as f64;
        ks.map(|k| ape(p, h, k)).sum::<f64>() / n
    }

    /// A constant dirty rate of 500 pages/s, and besides the dirty pages
    /// each iteration streams 0–16 MB of other data (say dirty disk blocks):
    /// durations, and X1 = rate · duration with them, follow those bytes,
    /// not a geometric decay GM(1,1) could fit. X1(k) is exactly P̃(k), so
    /// the physics alone is exact and GM(1,N) on P̃ recovers it up to the
    /// ridge term's bias; the backtest picks one of the two.
    #[test]
    fn pages_at_rate_driver_recovers_what_gm11_cannot() {
        let h = migrate(
            16,
            |_, t| 500.0 * t,
            |k| 8e6 * (1.0 + (k as f64 * 1.3).sin()),
        );
        let on_p = GreyGm1n {
            candidates: vec![Driver::PagesAtRate],
            ..GreyGm1n::default()
        };
        for k in 1..16 {
            let p = on_p.predict(&h[..k]).expect("predicts");
            let err = (p.value - h[k].x[0]).abs() / h[k].x[0];
            // Up to 4 samples after the bulk pass: P̃ itself; from 5 on
            // P̃ or GM(1,N) fitted on it, never GM(1,1).
            let tol = if k < 6 { 1e-9 } else { 5e-3 };
            assert!(err < tol, "iteration {}: {} ({err})", k + 1, p.how);
            assert!(
                p.how.starts_with("gm1n[P~]") || p.how.starts_with("S~"),
                "{}",
                p.how
            );
        }
        let gm11 = mean_ape(&GreyGm11::default(), &h, 6..16);
        assert!(gm11 > 0.2, "GM(1,1) cannot follow it: {gm11}");
        // The default model (drivers chosen by grade) stays close too.
        let gm1n = mean_ape(&GreyGm1n::default(), &h, 6..16);
        assert!(
            gm1n < 0.1 && gm1n < gm11 / 4.0,
            "gm1n {gm1n} vs gm11 {gm11}"
        );
    }

    /// Random writes at 800 pages/s over a 64 MiB working set: the pages
    /// dirtied in T saturate, `W·(1 − e^{−rT/W})`, so the dirty rate rises
    /// as iterations shorten (as in the recorded mem-rand trace). GM(1,N)
    /// with the physics drivers stays within 5% on average once the window
    /// is full; GM(1,1) is off by twice as much.
    #[test]
    fn physics_drivers_follow_a_saturating_working_set() {
        let wss = 16384.0;
        let h = migrate(16, |_, t| wss * -(-800.0 * t / wss).exp_m1(), |_| 0.0);
        let gm1n = mean_ape(&GreyGm1n::default(), &h, 8..16);
        let gm11 = mean_ape(&GreyGm11::default(), &h, 8..16);
        assert!(
            gm1n < 0.05 && gm1n * 2.0 < gm11,
            "gm1n {gm1n} vs gm11 {gm11}"
        );
    }

    /// Constant rate, constant bandwidth: X1 is geometric. GM(1,1) needs 4
    /// samples to see that; P̂ is exact from the first iteration on, and
    /// GM(1,N) never does worse than GM(1,1) afterwards.
    #[test]
    fn constant_rate_is_exact_from_the_first_iteration() {
        let h = migrate(12, |_, t| 800.0 * t, |_| 0.0);
        for k in 1..12 {
            let err = ape(&GreyGm1n::default(), &h, k);
            assert!(err < 1e-9, "iteration {}: {err}", k + 1);
        }
        // GM(1,1) falls back to the last value: off by the decay ratio.
        assert!(ape(&GreyGm11::default(), &h, 2) > 0.05);
    }

    /// A burst stops: 1000 pages/s for six iterations, then 30. The window
    /// restarts after the change, and with one sample left the prediction
    /// is the latest rate over the expected duration (T̂ less the early
    /// end the passes showed).
    #[test]
    fn a_dirty_rate_change_restarts_the_window() {
        let h = migrate(8, |k, t| if k < 6 { 1000.0 * t } else { 30.0 * t }, |_| 0.0);
        let p = GreyGm1n::default().predict(&h[..7]).expect("predicts");
        let latest = &h[6];
        let t = latest.next_duration_s().expect("telemetry") + duration_prior_offset_s(BW);
        let want = latest.dirty_rate().expect("a duration") * t;
        assert!(
            (p.value - want).abs() < 1e-9,
            "{} vs {want} ({})",
            p.value,
            p.how
        );
        assert!(p.how.contains("dirty rate changed 33.3x"), "{}", p.how);
        assert!((p.value - h[7].x[0]).abs() / h[7].x[0] < 1e-9);
        // Rates within the factor keep the window whole.
        let steady = migrate(8, |k, t| (700.0 + 100.0 * (k % 2) as f64) * t, |_| 0.0);
        let p = GreyGm1n::default().predict(&steady[..7]).expect("predicts");
        assert!(!p.how.contains("changed"), "{}", p.how);
    }

    /// Without bytes sent and left (an old trace) there are no physics
    /// drivers: the window keeps the bulk pass and the drivers are X2..X6.
    #[test]
    fn without_telemetry_only_x2_to_x6_drive() {
        let h: Vec<Iteration> = migrate(10, |_, t| 800.0 * t, |_| 0.0)
            .into_iter()
            .map(|it| Iteration {
                sent_bytes: None,
                remaining_bytes: None,
                sampled_dirty_pps: None,
                sampled_end_pps: None,
                used_pages: None,
                ..it
            })
            .collect();
        let g = GreyGm1n::default();
        assert!(g.window(&h).columns.iter().all(|c| !c.driver.is_physics()));
        assert_eq!(g.window(&h).x1.len(), 8);
        for k in 1..10 {
            let p = g.predict(&h[..k]).expect("predicts");
            assert!(p.value.is_finite() && !p.how.contains('^'), "{}", p.how);
        }
        // X5 is still known at the predicted iteration: the latest duration.
        let w = g.window(&h);
        let x5 = w
            .columns
            .iter()
            .find(|c| c.driver == Driver::Series(PREV_DURATION))
            .expect("X5");
        assert_eq!(x5.next, Some(h[9].duration_s));
    }
}
