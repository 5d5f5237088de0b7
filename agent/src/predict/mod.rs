//! Dirty-page prediction for the next pre-copy iteration.
//!
//! Input: one row per finished iteration with the six GM(1,N) sequences of
//! MISSION §3.1, `[X1 dirty pages, X2 mem %, X3 cpu %, X4 vm net, X5
//! previous iteration s, X6 host net]`. Output: X1 of the next iteration.
//! Every model is pure and deterministic; [`eval`] runs them one step ahead
//! over a trace and scores them.
//!
//! The GM(1,N) here is the paper's model made usable on the 4–10 iterations
//! a real migration has: a rolling window; drivers chosen by grey relational
//! grade and limited so there are at least two equations per parameter;
//! scaled, ridge-regularised least squares; residual correction when the
//! paper's tail condition holds; and the drivers' next values held at their
//! latest measurement or forecast by GM(1,1).

pub mod eval;
pub mod grey;

use grey::{Gm1n, Gm11, GreyError, ago, relational_grade, residual_correction};

/// The number of sequences per iteration (X1..X6).
pub const SERIES: usize = 6;
/// Samples below which grey models fall back to the last value.
pub const MIN_GREY_SAMPLES: usize = 4;

/// One iteration's X1..X6.
pub type Row = [f64; SERIES];

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
    fn predict(&self, history: &[Row]) -> Result<Prediction, PredictError>;
}

/// Rejects NaN, infinities and negative values, naming the first.
pub fn check_history(history: &[Row]) -> Result<(), PredictError> {
    if history.is_empty() {
        return Err(PredictError::Empty);
    }
    for (i, row) in history.iter().enumerate() {
        if let Some(s) = row.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(PredictError::BadValue {
                iteration: i + 1,
                series: s + 1,
                value: row[s],
            });
        }
    }
    Ok(())
}

fn x1(history: &[Row]) -> Vec<f64> {
    history.iter().map(|r| r[0]).collect()
}

/// The rolling window a grey model fits on: the last `window` rows (at
/// least [`MIN_GREY_SAMPLES`]), or the last-value fallback when the history
/// is shorter than that. Rejects bad values first.
fn grey_window(history: &[Row], window: usize) -> Result<Result<&[Row], Prediction>, PredictError> {
    check_history(history)?;
    let h = &history[history.len().saturating_sub(window.max(MIN_GREY_SAMPLES))..];
    if h.len() < MIN_GREY_SAMPLES {
        return Ok(Err(fallback_last(history, &format!("{} samples", h.len()))));
    }
    Ok(Ok(h))
}

fn fallback_last(history: &[Row], why: &str) -> Prediction {
    let last = history.last().map_or(0.0, |r| r[0]);
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
    fn predict(&self, history: &[Row]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        Ok(Prediction {
            value: history[history.len() - 1][0],
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
    fn predict(&self, history: &[Row]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let v = history.iter().map(|r| r[0]).sum::<f64>() / history.len() as f64;
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
    fn predict(&self, history: &[Row]) -> Result<Prediction, PredictError> {
        check_history(history)?;
        let mut s = history[0][0];
        for r in &history[1..] {
            s = self.alpha * r[0] + (1.0 - self.alpha) * s;
        }
        Ok(Prediction {
            value: s,
            how: format!("ewma(alpha={})", self.alpha),
        })
    }
}

/// BDA's coefficient estimate (seed 001, MISSION §3.3): with U the latest
/// value and D the mean of the earlier ones, `a·U + b·D` where
/// `a = U/(D+U)`, `b = D/(D+U)`.
#[derive(Debug, Clone, Default)]
pub struct Bda;

impl Predictor for Bda {
    fn name(&self) -> &str {
        "bda"
    }
    fn predict(&self, history: &[Row]) -> Result<Prediction, PredictError> {
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

impl Predictor for GreyGm11 {
    fn name(&self) -> &str {
        "gm11"
    }
    fn predict(&self, history: &[Row]) -> Result<Prediction, PredictError> {
        let h = match grey_window(history, self.window)? {
            Ok(h) => h,
            Err(fallback) => return Ok(fallback),
        };
        let xs = x1(h);
        let m = match Gm11::fit(&xs) {
            Ok(m) => m,
            Err(e) => return Ok(fallback_last(history, &e.to_string())),
        };
        let x1_ago = ago(&xs);
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

/// GM(1,N): X1 driven by a selection of X2..X6.
#[derive(Debug, Clone)]
pub struct GreyGm1n {
    pub window: usize,
    /// Relative ridge term of the least-squares solve.
    pub ridge: f64,
    pub drivers: DriverForecast,
    pub response: Response,
    pub correction: bool,
    /// Drivers to consider (indices 1..=5 = X2..X6); the fit keeps the ones
    /// with the highest grey relational grade, as many as the samples
    /// support (two equations per parameter).
    pub candidates: Vec<usize>,
    /// At most this many drivers even with plenty of samples.
    pub max_drivers: usize,
}

impl Default for GreyGm1n {
    fn default() -> Self {
        GreyGm1n {
            window: 8,
            ridge: 1e-3,
            drivers: DriverForecast::Hold,
            response: Response::Equation,
            correction: true,
            candidates: vec![1, 2, 3, 4, 5],
            max_drivers: 5,
        }
    }
}

impl GreyGm1n {
    /// The drivers used for `h`: non-constant candidates ranked by grey
    /// relational grade to X1, as many as `(rows/2) − 1` allows.
    pub fn select_drivers(&self, h: &[Row]) -> Vec<usize> {
        let rows = h.len().saturating_sub(1);
        let allowed = (rows / 2).saturating_sub(1).min(self.max_drivers);
        let target = x1(h);
        let mut ranked: Vec<(usize, f64)> = self
            .candidates
            .iter()
            .copied()
            .filter(|&i| (1..SERIES).contains(&i))
            .filter_map(|i| {
                let col: Vec<f64> = h.iter().map(|r| r[i]).collect();
                informative(&col).then(|| (i, relational_grade(&target, &col)))
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.into_iter().take(allowed).map(|(i, _)| i).collect()
    }
}

impl GreyGm1n {
    /// GM(1,N) on exactly these rows and drivers: the prediction for the
    /// step after `h` (residual correction included), or `None` when the
    /// system cannot be fitted or the result is not finite.
    fn fit_predict(&self, h: &[Row], drivers: &[usize]) -> Option<(f64, String)> {
        let xs = x1(h);
        let cols: Vec<Vec<f64>> = drivers
            .iter()
            .map(|&i| h.iter().map(|r| r[i]).collect())
            .collect();
        let col_refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
        let m = Gm1n::fit(&xs, &col_refs, self.ridge).ok()?;
        // Drivers' next raw values, then their AGO at S+1.
        let next_raw: Vec<f64> = cols
            .iter()
            .map(|c| match self.drivers {
                DriverForecast::Hold => c[c.len() - 1],
                DriverForecast::Gm11 => Gm11::fit(c)
                    .map(|g| g.forecast_next_equation(c.iter().sum()))
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .unwrap_or(c[c.len() - 1]),
            })
            .collect();
        let d_ago: Vec<Vec<f64>> = cols.iter().map(|c| ago(c)).collect();
        let x1_ago = ago(&xs);
        let s = xs.len();
        let ago_at = |k: usize| -> Vec<f64> { d_ago.iter().map(|d| d[k - 1]).collect() };
        let next_ago: Vec<f64> = d_ago
            .iter()
            .zip(&next_raw)
            .map(|(d, n)| d[s - 1] + n)
            .collect();
        let (fitted, next): (Vec<f64>, f64) = match self.response {
            Response::Equation => (
                (2..=s)
                    .map(|k| m.next_equation(x1_ago[k - 2], &ago_at(k)))
                    .collect(),
                m.next_equation(x1_ago[s - 1], &next_ago),
            ),
            Response::TimeResponse => {
                let sim = m.simulate(&d_ago);
                (
                    sim[1..].to_vec(),
                    m.x1_hat(s + 1, &next_ago) - m.x1_hat(s, &ago_at(s)),
                )
            }
        };
        let residuals: Vec<f64> = xs[1..].iter().zip(&fitted).map(|(x, f)| x - f).collect();
        let names: Vec<String> = drivers.iter().map(|i| format!("X{}", i + 1)).collect();
        let p = finish(
            next,
            residuals,
            self.correction,
            format!("gm1n[{}]", names.join(",")),
        )
        .ok()?;
        // A grey extrapolation that leaves the scale of the data (the
        // equation form divides by 1 + a/2) is a failed fit, not a forecast.
        let max = xs.iter().copied().fold(0.0, f64::max);
        (p.value <= PLAUSIBLE_FACTOR * max + 1.0).then_some((p.value, p.how))
    }

    fn gm11(&self) -> GreyGm11 {
        GreyGm11 {
            window: self.window,
            response: self.response,
            correction: self.correction,
        }
    }
}

/// GM(1,N) predictions above this multiple of the window's largest X1 are
/// rejected as blown-up fits.
const PLAUSIBLE_FACTOR: f64 = 3.0;
/// Rolling origins of the in-window backtest that chooses GM(1,N) over
/// GM(1,1).
const BACKTEST_ORIGINS: usize = 3;

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
    /// iterations compares GM(1,N) with GM(1,1); GM(1,N) is used only if
    /// its backtest error is not larger, and its prediction is plausible.
    fn predict(&self, history: &[Row]) -> Result<Prediction, PredictError> {
        let h = match grey_window(history, self.window)? {
            Ok(h) => h,
            Err(fallback) => return Ok(fallback),
        };
        let gm11 = self.gm11();
        let drivers = self.select_drivers(h);
        let via_gm11 = |why: &str| -> Result<Prediction, PredictError> {
            let mut p = gm11.predict(h)?;
            p.how = format!("gm1n->{} ({why})", p.how);
            Ok(p)
        };
        if drivers.is_empty() {
            return via_gm11("no usable driver");
        }
        let need = (drivers.len() + 3).max(MIN_GREY_SAMPLES);
        let (mut err_n, mut err_1, mut tested) = (0.0, 0.0, 0);
        for origin in h.len().saturating_sub(BACKTEST_ORIGINS).max(need)..h.len() {
            let actual = h[origin][0];
            let Some((pn, _)) = self.fit_predict(&h[..origin], &drivers) else {
                err_n = f64::INFINITY;
                break;
            };
            let p1 = gm11.predict(&h[..origin])?.value;
            err_n += (pn - actual).abs();
            err_1 += (p1 - actual).abs();
            tested += 1;
        }
        if err_n > err_1 {
            return via_gm11(&format!(
                "backtest over {tested}: gm1n err {err_n:.0} > gm11 err {err_1:.0}"
            ));
        }
        match self.fit_predict(h, &drivers) {
            Some((value, how)) => Ok(Prediction { value, how }),
            None => via_gm11("gm1n fit failed or implausible"),
        }
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
        _ => return None,
    })
}

/// Every model name, in report order.
pub const MODELS: &[&str] = &["gm1n", "gm11", "last", "mean", "ewma", "bda"];

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

    fn rows(x1: &[f64]) -> Vec<Row> {
        x1.iter()
            .enumerate()
            .map(|(i, x)| [*x, 50.0, 80.0 + i as f64, 1e6, 1.0 + i as f64 * 0.1, 2e7])
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
        assert!(g.select_drivers(&h).iter().all(|i| [2usize, 4].contains(i)));
    }

    #[test]
    fn gm1n_tracks_a_driven_series() {
        // X1 = 1000·X3 exactly, X3 growing: a driven series GM(1,N) must
        // follow within a few percent one step ahead.
        let h: Vec<Row> = (0..10)
            .map(|k| {
                let cpu = 10.0 + 3.0 * k as f64;
                [1000.0 * cpu, 40.0, cpu, 5e5, 2.0, 1e7]
            })
            .collect();
        let p = GreyGm1n::default().predict(&h[..9]).expect("predicts");
        let actual = h[9][0];
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
        h[2][3] = f64::NAN;
        assert!(matches!(
            GreyGm1n::default().predict(&h),
            Err(PredictError::BadValue {
                iteration: 3,
                series: 4,
                ..
            })
        ));
        h[2][3] = -1.0;
        assert!(matches!(
            Last.predict(&h),
            Err(PredictError::BadValue {
                iteration: 3,
                series: 4,
                ..
            })
        ));
        assert_eq!(Mean.predict(&[]), Err(PredictError::Empty));
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
                .predict(&[[500.0, 40.0, 80.0, 1e6, 2.0, 2e7]; 6])
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
