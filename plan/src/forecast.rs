//! Utilisation forecasting for SICC: a seasonal profile plus an ARMA(p, q)
//! model of what the profile leaves over.
//!
//! The SICC paper forecasts each VM's next 1440 one-minute samples with an
//! ARMA model ("a short-correlation model"). A plain ARMA forecast decays to
//! the series mean within a few dozen steps, so a day ahead it would be a
//! flat line and every Pearson coefficient between two forecasts would be
//! undefined. The daily pattern is what makes two VMs complementary, so the
//! forecast here is `profile(phase) + ARMA(residual)`: the profile is the
//! mean of the history at the same time of day (smoothed over a few
//! samples), the ARMA part carries the short-range correlation of the
//! latest samples into the first steps of the horizon.
//!
//! The ARMA model is fitted with the Hannan–Rissanen method: a long
//! autoregression (Levinson–Durbin on the sample autocovariances) gives
//! estimates of the innovations, then least squares of `x_t` on the lagged
//! values and lagged innovations gives the AR and MA coefficients. A fit
//! that comes out non-stationary or non-invertible, or whose least-squares
//! system is singular, falls back to the Yule–Walker AR(p) fit, which is
//! stationary by construction.

/// Why a forecast could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{len} samples are too few for this model; it needs at least {needed}")]
    TooShort { len: usize, needed: usize },
    #[error("sample #{index} is {value}; samples must be finite")]
    NonFinite { index: usize, value: f64 },
}

/// ARMA model order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmaOrder {
    pub p: usize,
    pub q: usize,
}

impl Default for ArmaOrder {
    /// ARMA(1, 1): one lag of each is enough to carry minute-scale
    /// persistence, and two parameters fit robustly on a day of samples.
    fn default() -> Self {
        Self { p: 1, q: 1 }
    }
}

/// A fitted ARMA model: `x_t - μ = Σ φ_i (x_{t-i} - μ) + e_t + Σ θ_j e_{t-j}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmaModel {
    pub mean: f64,
    pub phi: Vec<f64>,
    pub theta: Vec<f64>,
    /// Variance of the innovations in the fit.
    pub sigma2: f64,
}

/// Longest autoregression used for the innovation estimates.
const LONG_AR_MAX: usize = 20;

impl ArmaModel {
    /// Fits ARMA(p, q) to `x` (Hannan–Rissanen, see the module docs).
    pub fn fit(x: &[f64], order: ArmaOrder) -> Result<Self, ForecastError> {
        check_finite(x)?;
        let lags = order.p.max(order.q);
        let long = if order.q == 0 {
            0
        } else {
            LONG_AR_MAX.min(x.len() / 8).max(lags + 1)
        };
        let needed = 4 * (order.p + order.q) + long + lags + 8;
        if x.len() < needed {
            return Err(ForecastError::TooShort {
                len: x.len(),
                needed,
            });
        }
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        let d: Vec<f64> = x.iter().map(|v| v - mean).collect();
        let variance = d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64;
        if variance <= 1e-18 * mean.abs().max(1.0) {
            // Nothing left to model: white noise of zero variance.
            return Ok(Self {
                mean,
                phi: vec![0.0; order.p],
                theta: vec![0.0; order.q],
                sigma2: 0.0,
            });
        }
        if order.q == 0 {
            return Ok(yule_walker(&d, order.p, mean));
        }

        // Stage 1: innovations from a long autoregression.
        let long_ar = levinson_durbin(&autocovariances(&d, long), long);
        let mut e = vec![0.0; d.len()];
        for t in long..d.len() {
            let pred: f64 = (1..=long).map(|i| long_ar[i - 1] * d[t - i]).sum();
            e[t] = d[t] - pred;
        }

        // Stage 2: least squares of d_t on its lags and the innovations' lags.
        let k = order.p + order.q;
        let start = long + lags;
        let mut xtx = vec![0.0; k * k];
        let mut xty = vec![0.0; k];
        let mut row = vec![0.0; k];
        for t in start..d.len() {
            for i in 0..order.p {
                row[i] = d[t - 1 - i];
            }
            for j in 0..order.q {
                row[order.p + j] = e[t - 1 - j];
            }
            for r in 0..k {
                xty[r] += row[r] * d[t];
                for c in 0..k {
                    xtx[r * k + c] += row[r] * row[c];
                }
            }
        }
        let Some(coef) = solve(&mut xtx, &mut xty, k) else {
            // Collinear lags (e.g. a deterministic residual): the AR fit
            // needs no inversion beyond Levinson–Durbin.
            return Ok(yule_walker(&d, order.p.max(1), mean));
        };
        let phi = coef[..order.p].to_vec();
        let theta = coef[order.p..].to_vec();
        let stable = |c: &[f64]| c.iter().map(|v| v.abs()).sum::<f64>() < 0.999;
        // A sum of |coefficients| below 1 is sufficient (not necessary) for
        // stationarity / invertibility; outside it, prefer the plain AR fit.
        if !(stable(&phi) && stable(&theta)) {
            return Ok(yule_walker(&d, order.p.max(1), mean));
        }
        let mut model = Self {
            mean,
            phi,
            theta,
            sigma2: 0.0,
        };
        let innovations = model.innovations(x);
        let tail = &innovations[lags.min(innovations.len())..];
        model.sigma2 = tail.iter().map(|v| v * v).sum::<f64>() / tail.len().max(1) as f64;
        Ok(model)
    }

    /// One-step innovations of the model over `x` (zero before the lags
    /// are available).
    pub fn innovations(&self, x: &[f64]) -> Vec<f64> {
        let (p, q) = (self.phi.len(), self.theta.len());
        let mut e = vec![0.0; x.len()];
        for t in 0..x.len() {
            let mut pred = 0.0;
            for i in 0..p.min(t) {
                pred += self.phi[i] * (x[t - 1 - i] - self.mean);
            }
            for j in 0..q.min(t) {
                pred += self.theta[j] * e[t - 1 - j];
            }
            e[t] = if t >= p { x[t] - self.mean - pred } else { 0.0 };
        }
        e
    }

    /// Forecasts `horizon` steps after the end of `x` (future innovations
    /// are zero, their expectation).
    pub fn forecast(&self, x: &[f64], horizon: usize) -> Vec<f64> {
        let (p, q) = (self.phi.len(), self.theta.len());
        let e = self.innovations(x);
        let mut dev: Vec<f64> = x.iter().map(|v| v - self.mean).collect();
        let mut err = e;
        let mut out = Vec::with_capacity(horizon);
        for _ in 0..horizon {
            let t = dev.len();
            let mut next = 0.0;
            for i in 0..p.min(t) {
                next += self.phi[i] * dev[t - 1 - i];
            }
            for j in 0..q.min(t) {
                next += self.theta[j] * err[t - 1 - j];
            }
            dev.push(next);
            err.push(0.0);
            out.push(next + self.mean);
        }
        out
    }
}

/// A day-ahead forecast and the model behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeasonalForecast {
    /// Forecast samples, clamped to [0, 100] percent.
    pub values: Vec<f64>,
    /// The ARMA model of the residual after the daily profile.
    pub residual_model: ArmaModel,
}

/// Forecasts the `horizon` samples after `history` (utilisation in percent)
/// as daily profile + ARMA residual (see the module docs). `period` is the
/// number of samples per day; at least one full day of history is needed.
pub fn seasonal_forecast(
    history: &[f64],
    period: usize,
    horizon: usize,
    order: ArmaOrder,
) -> Result<SeasonalForecast, ForecastError> {
    check_finite(history)?;
    if period < 2 || history.len() < period {
        return Err(ForecastError::TooShort {
            len: history.len(),
            needed: period.max(2),
        });
    }
    let len = history.len();
    // Phase 0 is the first forecast sample, so the history is aligned to
    // end just before a phase-0 sample.
    let phase = |t: usize| (t + period - len % period) % period;
    let mut sum = vec![0.0; period];
    let mut count = vec![0u32; period];
    for (t, v) in history.iter().enumerate() {
        sum[phase(t)] += v;
        count[phase(t)] += 1;
    }
    let raw: Vec<f64> = sum
        .iter()
        .zip(&count)
        .map(|(s, &c)| if c == 0 { 0.0 } else { s / f64::from(c) })
        .collect();
    // Smooth over ~1/96 of a day (15 minutes at 1440 samples) so that the
    // profile of a short history is not just its noise.
    let half = period / 192;
    let profile: Vec<f64> = (0..period)
        .map(|i| {
            let total: f64 = (0..=2 * half)
                .map(|k| raw[(i + period + k - half) % period])
                .sum();
            total / (2 * half + 1) as f64
        })
        .collect();
    let residual: Vec<f64> = history
        .iter()
        .enumerate()
        .map(|(t, v)| v - profile[phase(t)])
        .collect();
    let residual_model = ArmaModel::fit(&residual, order)?;
    let ahead = residual_model.forecast(&residual, horizon);
    let values = ahead
        .iter()
        .enumerate()
        .map(|(h, r)| (profile[h % period] + r).clamp(0.0, 100.0))
        .collect();
    Ok(SeasonalForecast {
        values,
        residual_model,
    })
}

fn check_finite(x: &[f64]) -> Result<(), ForecastError> {
    match x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, &value)) => Err(ForecastError::NonFinite { index, value }),
        None => Ok(()),
    }
}

/// Biased sample autocovariances γ_0..γ_m of a zero-mean series.
fn autocovariances(d: &[f64], m: usize) -> Vec<f64> {
    let n = d.len() as f64;
    (0..=m)
        .map(|k| {
            d.iter()
                .zip(&d[k.min(d.len())..])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                / n
        })
        .collect()
}

/// AR(m) coefficients a_1..a_m from autocovariances by Levinson–Durbin;
/// stops early (remaining coefficients 0) if the prediction error vanishes.
fn levinson_durbin(gamma: &[f64], m: usize) -> Vec<f64> {
    let mut a = vec![0.0; m];
    let mut err = gamma.first().copied().unwrap_or(0.0);
    for k in 1..=m {
        if err <= f64::EPSILON * gamma[0].abs().max(f64::MIN_POSITIVE) {
            break;
        }
        let acc = gamma[k] - (1..k).map(|j| a[j - 1] * gamma[k - j]).sum::<f64>();
        let kappa = acc / err;
        let prev = a.clone();
        a[k - 1] = kappa;
        for j in 1..k {
            a[j - 1] = prev[j - 1] - kappa * prev[k - j - 1];
        }
        err *= 1.0 - kappa * kappa;
    }
    a
}

fn yule_walker(d: &[f64], p: usize, mean: f64) -> ArmaModel {
    let gamma = autocovariances(d, p);
    let phi = levinson_durbin(&gamma, p);
    let sigma2 = gamma[0]
        - phi
            .iter()
            .enumerate()
            .map(|(i, a)| a * gamma[i + 1])
            .sum::<f64>();
    ArmaModel {
        mean,
        phi,
        theta: Vec::new(),
        sigma2: sigma2.max(0.0),
    }
}

/// Solves the k×k system `a x = b` (row-major `a`) by Gaussian elimination
/// with partial pivoting and a tiny ridge; None if it is singular.
fn solve(a: &mut [f64], b: &mut [f64], k: usize) -> Option<Vec<f64>> {
    let trace: f64 = (0..k).map(|i| a[i * k + i].abs()).sum();
    let ridge = 1e-12 * trace.max(f64::MIN_POSITIVE);
    for i in 0..k {
        a[i * k + i] += ridge;
    }
    for col in 0..k {
        let pivot =
            (col..k).max_by(|&x, &y| a[x * k + col].abs().total_cmp(&a[y * k + col].abs()))?;
        if a[pivot * k + col].abs() <= 1e-12 * trace.max(f64::MIN_POSITIVE) {
            return None;
        }
        if pivot != col {
            for c in 0..k {
                a.swap(pivot * k + c, col * k + c);
            }
            b.swap(pivot, col);
        }
        for r in col + 1..k {
            let f = a[r * k + col] / a[col * k + col];
            for c in col..k {
                a[r * k + c] -= f * a[col * k + c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; k];
    for r in (0..k).rev() {
        let s: f64 = (r + 1..k).map(|c| a[r * k + c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r * k + r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::super::rng::Rng;
    use super::*;

    fn simulate_arma(phi: f64, theta: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let (mut x, mut e_prev) = (0.0, 0.0);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n + 200 {
            let e = rng.normal();
            x = phi * x + e + theta * e_prev;
            e_prev = e;
            out.push(x + 10.0);
        }
        out.split_off(200)
    }

    #[test]
    fn recovers_the_coefficients_of_a_simulated_arma11() {
        let x = simulate_arma(0.7, 0.3, 20_000, 5);
        let m = ArmaModel::fit(&x, ArmaOrder { p: 1, q: 1 }).expect("fits");
        assert!((m.phi[0] - 0.7).abs() < 0.05, "phi {:?}", m.phi);
        assert!((m.theta[0] - 0.3).abs() < 0.06, "theta {:?}", m.theta);
        assert!((m.mean - 10.0).abs() < 0.3, "mean {}", m.mean);
        assert!((m.sigma2 - 1.0).abs() < 0.05, "sigma2 {}", m.sigma2);
    }

    #[test]
    fn recovers_an_ar1_by_yule_walker() {
        let x = simulate_arma(0.9, 0.0, 20_000, 6);
        let m = ArmaModel::fit(&x, ArmaOrder { p: 1, q: 0 }).expect("fits");
        assert!((m.phi[0] - 0.9).abs() < 0.02, "phi {:?}", m.phi);
        assert!(m.theta.is_empty());
    }

    #[test]
    fn one_step_forecasts_beat_the_mean_on_a_persistent_series() {
        let x = simulate_arma(0.8, 0.2, 6_000, 7);
        let (train, test) = x.split_at(5_000);
        let m = ArmaModel::fit(train, ArmaOrder::default()).expect("fits");
        let (mut arma_se, mut mean_se) = (0.0, 0.0);
        for t in 0..test.len() {
            let hist = &x[..5_000 + t];
            let f = m.forecast(hist, 1)[0];
            arma_se += (f - test[t]).powi(2);
            mean_se += (m.mean - test[t]).powi(2);
        }
        assert!(arma_se < 0.6 * mean_se, "arma {arma_se} mean {mean_se}");
    }

    #[test]
    fn long_horizon_forecasts_decay_to_the_mean() {
        let x = simulate_arma(0.6, 0.2, 3_000, 8);
        let m = ArmaModel::fit(&x, ArmaOrder::default()).expect("fits");
        let f = m.forecast(&x, 200);
        assert!((f[199] - m.mean).abs() < 1e-6);
    }

    #[test]
    fn seasonal_forecast_follows_the_daily_pattern_not_the_mean() {
        let period = 288;
        let mut rng = Rng::new(9);
        let day = |t: usize| 40.0 + 20.0 * (std::f64::consts::TAU * t as f64 / period as f64).sin();
        let series: Vec<f64> = (0..3 * period)
            .map(|t| day(t) + 3.0 * rng.normal())
            .collect();
        let (history, truth) = series.split_at(2 * period);
        let f = seasonal_forecast(history, period, period, ArmaOrder::default()).expect("forecast");
        assert_eq!(f.values.len(), period);
        let mae = |pred: &[f64]| -> f64 {
            pred.iter()
                .zip(truth)
                .map(|(p, t)| (p - t).abs())
                .sum::<f64>()
                / period as f64
        };
        let flat = vec![40.0; period];
        assert!(mae(&f.values) < 4.0, "seasonal MAE {}", mae(&f.values));
        assert!(
            mae(&f.values) < 0.4 * mae(&flat),
            "{} vs {}",
            mae(&f.values),
            mae(&flat)
        );
        assert!(f.values.iter().all(|v| (0.0..=100.0).contains(v)));
    }

    #[test]
    fn bad_input_is_reported() {
        assert!(matches!(
            seasonal_forecast(&[1.0; 10], 20, 20, ArmaOrder::default()),
            Err(ForecastError::TooShort {
                len: 10,
                needed: 20
            })
        ));
        let mut x = vec![1.0; 100];
        x[42] = f64::NAN;
        assert!(matches!(
            ArmaModel::fit(&x, ArmaOrder::default()),
            Err(ForecastError::NonFinite { index: 42, .. })
        ));
        assert!(matches!(
            ArmaModel::fit(&[1.0, 2.0, 3.0], ArmaOrder::default()),
            Err(ForecastError::TooShort { .. })
        ));
    }

    #[test]
    fn a_constant_residual_still_forecasts() {
        let f = seasonal_forecast(&[25.0; 100], 50, 50, ArmaOrder::default()).expect("forecast");
        assert!(f.values.iter().all(|v| (v - 25.0).abs() < 1e-9));
    }
}
