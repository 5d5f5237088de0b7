//! Grey models: GM(1,1) and GM(1,N) with GM(1,1) residual correction
//! (the NRAC paper §4, docs/papers.md).
//!
//! Numerics, because the textbook normal equations `(BᵀB)⁻¹BᵀY` are
//! ill-conditioned on the short, strongly trending series a pre-copy
//! migration yields:
//! - columns are scaled to unit RMS before solving, and the system is solved
//!   with a ridge term relative to the largest singular value, from the
//!   regularised normal equations (Cholesky) when the ridge bounds their
//!   condition number, by SVD otherwise;
//! - the response `(x₀(1) − D/a)e^{−a(k−1)} + D/a` is evaluated as
//!   `x₀(1)e^{−a t} + D·(1 − e^{−a t})/a` with `expm1`, so `a → 0` takes its
//!   limit `x₀(1) + D·t` without cancellation;
//! - every input must be finite and non-negative; anything else is an
//!   error, never a NaN passed on.

use nalgebra::{DMatrix, DVector};

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GreyError {
    #[error("need at least {need} samples, got {got}")]
    TooShort { need: usize, got: usize },
    #[error("sample {index} of series {series} is {value}: inputs must be finite and >= 0")]
    BadValue {
        series: usize,
        index: usize,
        value: f64,
    },
    #[error("series have different lengths ({0} vs {1})")]
    Ragged(usize, usize),
    #[error("the least-squares system is degenerate (all-zero or constant inputs)")]
    Degenerate,
}

/// Checks a series for NaN/inf/negative values.
pub fn check_series(series: usize, xs: &[f64]) -> Result<(), GreyError> {
    match xs.iter().position(|v| !v.is_finite() || *v < 0.0) {
        Some(index) => Err(GreyError::BadValue {
            series,
            index,
            value: xs[index],
        }),
        None => Ok(()),
    }
}

/// Accumulated generating operation: running sums.
pub fn ago(xs: &[f64]) -> Vec<f64> {
    xs.iter()
        .scan(0.0, |acc, x| {
            *acc += x;
            Some(*acc)
        })
        .collect()
}

/// `(1 − e^{−a t}) / a`, exact in the limit a → 0 (where it is `t`).
fn one_minus_exp_over_a(a: f64, t: f64) -> f64 {
    if a == 0.0 { t } else { -(-a * t).exp_m1() / a }
}

/// Ridge-regularised least squares `min |Bx − y|² + (λ·σ_max)²|x|²`,
/// columns scaled to unit RMS first. Returns the unscaled solution.
pub fn solve_scaled(
    b: &DMatrix<f64>,
    y: &DVector<f64>,
    ridge: f64,
) -> Result<DVector<f64>, GreyError> {
    let n = b.ncols();
    let rows = b.nrows() as f64;
    let scales: Vec<f64> = (0..n)
        .map(|j| (b.column(j).norm_squared() / rows).sqrt())
        .collect();
    if scales.iter().all(|s| *s == 0.0) {
        return Err(GreyError::Degenerate);
    }
    let mut bs = b.clone();
    for (j, s) in scales.iter().enumerate() {
        if *s > 0.0 {
            bs.column_mut(j).scale_mut(1.0 / s);
        }
    }
    let x = match solve_normal(&bs, y, ridge) {
        Some(x) => x,
        None => solve_svd(bs, y, ridge)?,
    };
    unscale(x, &scales)
}

/// The Tikhonov solution by SVD, for any conditioning: `Σ sᵢ/(sᵢ²+λ²)·
/// (uᵢᵀy)·vᵢ` with `λ = ridge·σ_max`.
fn solve_svd(bs: DMatrix<f64>, y: &DVector<f64>, ridge: f64) -> Result<DVector<f64>, GreyError> {
    let n = bs.ncols();
    // A tall system is first reduced to its n×n triangle (B = QR; R has
    // B's singular values and right singular vectors), so the SVD works on
    // n×n instead of m×n.
    let (small, rhs) = if bs.nrows() > n {
        let qr = bs.qr();
        let mut qty = y.clone();
        qr.q_tr_mul(&mut qty);
        (qr.r(), qty.rows(0, n).into_owned())
    } else {
        (bs, y.clone())
    };
    let svd = small.svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u.as_ref(), svd.v_t.as_ref()) else {
        return Err(GreyError::Degenerate);
    };
    let sigma_max = svd.singular_values.max();
    if !sigma_max.is_finite() || sigma_max <= 0.0 {
        return Err(GreyError::Degenerate);
    }
    let lambda = ridge * sigma_max;
    let uty = u.transpose() * rhs;
    let mut coef = DVector::zeros(svd.singular_values.len());
    for (i, s) in svd.singular_values.iter().enumerate() {
        // Tikhonov filter factor s / (s² + λ²); tiny singular values are
        // damped instead of blowing up.
        coef[i] = s / (s * s + lambda * lambda) * uty[i];
    }
    Ok(v_t.transpose() * coef)
}

/// Below this relative ridge the regularised normal equations may be too
/// ill-conditioned (their condition number is at most `1 + 1/ridge²`);
/// the SVD decides instead.
const NORMAL_EQUATIONS_MIN_RIDGE: f64 = 1e-4;

/// The same Tikhonov solution from the normal equations,
/// `(BᵀB + λ²I)⁻¹Bᵀy` by Cholesky, `σ_max²` being `BᵀB`'s largest
/// eigenvalue (closed form for two columns, power iteration above). With
/// the ridge the matrix is positive definite with a condition number of at
/// most `1 + 1/ridge²`: for the default ridge (1e-3) ≤ 1e6, harmless in
/// f64, and several times cheaper than QR + SVD (most of a prediction's
/// cost otherwise). Two columns (GM(1,1)) need no ridge: their condition
/// number is computed. `None` when it is not bounded or too large, or the
/// factorisation fails; the SVD then decides.
fn solve_normal(b: &DMatrix<f64>, y: &DVector<f64>, ridge: f64) -> Option<DVector<f64>> {
    let n = b.ncols();
    let bounded = ridge >= NORMAL_EQUATIONS_MIN_RIDGE;
    if !bounded && n != 2 {
        return None;
    }
    let g = b.tr_mul(b);
    let rhs = b.tr_mul(y);
    let sigma_max_sq = if n == 2 {
        let half_tr = 0.5 * (g[(0, 0)] + g[(1, 1)]);
        let det = g[(0, 0)] * g[(1, 1)] - g[(0, 1)] * g[(1, 0)];
        half_tr + (half_tr * half_tr - det).max(0.0).sqrt()
    } else {
        largest_eigenvalue(&g)
    };
    if !sigma_max_sq.is_finite() || sigma_max_sq <= 0.0 {
        return None;
    }
    let mut a = g;
    let l2 = ridge * ridge * sigma_max_sq;
    for i in 0..n {
        a[(i, i)] += l2;
    }
    if !bounded {
        // Two columns without (enough) ridge, GM(1,1)'s plain least
        // squares: the eigenvalues are known, so is the condition number.
        // Beyond 1e8 (cond(B) beyond 1e4) leave it to the SVD.
        let det = a[(0, 0)] * a[(1, 1)] - a[(0, 1)] * a[(1, 0)];
        let tr = a[(0, 0)] + a[(1, 1)];
        if det.is_nan() || det <= 1e-8 * tr * tr {
            return None;
        }
    }
    let x = a.cholesky()?.solve(&rhs);
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The largest eigenvalue of a symmetric positive semi-definite matrix by
/// power iteration (its Rayleigh quotient converges from below; a ridge
/// parameter needs it to a fraction of a percent, not more).
fn largest_eigenvalue(g: &DMatrix<f64>) -> f64 {
    let n = g.ncols();
    // Start from the column of the largest diagonal entry (G·e_j): never
    // orthogonal to the top eigenvector unless that has no j-th component.
    let j = (0..n)
        .max_by(|&p, &q| g[(p, p)].total_cmp(&g[(q, q)]))
        .unwrap_or(0);
    let mut v = g.column(j).into_owned();
    let mut lambda = 0.0;
    for _ in 0..64 {
        let norm = v.norm();
        if !norm.is_finite() || norm <= 0.0 {
            return g[(j, j)];
        }
        v /= norm;
        let w = g * &v;
        let next = v.dot(&w);
        let done = (next - lambda).abs() <= 1e-9 * next.abs();
        lambda = next;
        v = w;
        if done {
            break;
        }
    }
    lambda
}

/// The solution of the scaled system back in the original units.
fn unscale(mut x: DVector<f64>, scales: &[f64]) -> Result<DVector<f64>, GreyError> {
    for (j, s) in scales.iter().enumerate() {
        x[j] = if *s > 0.0 { x[j] / s } else { 0.0 };
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(GreyError::Degenerate);
    }
    Ok(x)
}

/// A fitted GM(1,1): `x⁽⁰⁾(k) + a·z⁽¹⁾(k) = b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gm11 {
    pub a: f64,
    pub b: f64,
    /// The series' first value, the response's initial condition.
    pub x0_1: f64,
    /// Samples fitted on.
    pub n: usize,
}

impl Gm11 {
    /// Fits on `xs` (at least 4 samples, finite, non-negative).
    pub fn fit(xs: &[f64]) -> Result<Gm11, GreyError> {
        Self::fit_ridge(xs, 0.0)
    }

    /// As [`Self::fit`] with a relative ridge term (0 = plain least squares).
    pub fn fit_ridge(xs: &[f64], ridge: f64) -> Result<Gm11, GreyError> {
        if xs.len() < 4 {
            return Err(GreyError::TooShort {
                need: 4,
                got: xs.len(),
            });
        }
        check_series(0, xs)?;
        let x1 = ago(xs);
        let rows = xs.len() - 1;
        let b = DMatrix::from_fn(rows, 2, |r, c| {
            let k = r + 1;
            if c == 0 {
                -0.5 * (x1[k] + x1[k - 1])
            } else {
                1.0
            }
        });
        let y = DVector::from_fn(rows, |r, _| xs[r + 1]);
        let p = solve_scaled(&b, &y, ridge)?;
        Ok(Gm11 {
            a: p[0],
            b: p[1],
            x0_1: xs[0],
            n: xs.len(),
        })
    }

    /// The time response `x̂⁽¹⁾(k)`, k = 1-based sample index.
    pub fn x1_hat(&self, k: usize) -> f64 {
        let t = (k - 1) as f64;
        self.x0_1 * (-self.a * t).exp() + self.b * one_minus_exp_over_a(self.a, t)
    }

    /// The restored value `x̂⁽⁰⁾(k) = x̂⁽¹⁾(k) − x̂⁽¹⁾(k−1)` (k ≥ 2; k = 1
    /// gives the first sample).
    pub fn x0_hat(&self, k: usize) -> f64 {
        if k <= 1 {
            self.x0_1
        } else {
            self.x1_hat(k) - self.x1_hat(k - 1)
        }
    }

    /// The next value after the fitted samples, from the time response
    /// (the paper's eq. 7/8 form).
    pub fn forecast_next(&self) -> f64 {
        self.x0_hat(self.n + 1)
    }

    /// The next value from the grey equation itself, with the measured AGO:
    /// `x⁽⁰⁾(k) + a·(x⁽¹⁾(k−1) + x⁽⁰⁾(k)/2) = b` solved for `x⁽⁰⁾(k)`.
    /// Exact on geometric series, where the time response is biased.
    pub fn forecast_next_equation(&self, x1_last: f64) -> f64 {
        (self.b - self.a * x1_last) / (1.0 + 0.5 * self.a)
    }
}

/// A fitted GM(1,N): `x₁⁽⁰⁾(k) + a·z₁⁽¹⁾(k) = Σ bᵢ·xᵢ⁽¹⁾(k)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gm1n {
    pub a: f64,
    /// One coefficient per driver, in the order given.
    pub b: Vec<f64>,
    pub x0_1: f64,
    pub n: usize,
}

impl Gm1n {
    /// Fits X1 (`target`) on the drivers (each as long as `target`). Needs
    /// at least `drivers + 2` samples so the system is over-determined.
    pub fn fit(target: &[f64], drivers: &[&[f64]], ridge: f64) -> Result<Gm1n, GreyError> {
        let s = target.len();
        let need = (drivers.len() + 3).max(4);
        if s < need {
            return Err(GreyError::TooShort { need, got: s });
        }
        check_series(0, target)?;
        for (i, d) in drivers.iter().enumerate() {
            if d.len() != s {
                return Err(GreyError::Ragged(s, d.len()));
            }
            check_series(i + 1, d)?;
        }
        let x1 = ago(target);
        let d1: Vec<Vec<f64>> = drivers.iter().map(|d| ago(d)).collect();
        let rows = s - 1;
        let b = DMatrix::from_fn(rows, drivers.len() + 1, |r, c| {
            let k = r + 1;
            if c == 0 {
                -0.5 * (x1[k] + x1[k - 1])
            } else {
                d1[c - 1][k]
            }
        });
        let y = DVector::from_fn(rows, |r, _| target[r + 1]);
        let p = solve_scaled(&b, &y, ridge)?;
        Ok(Gm1n {
            a: p[0],
            b: p.iter().skip(1).copied().collect(),
            x0_1: target[0],
            n: s,
        })
    }

    /// `x̂₁⁽¹⁾` at 1-based step k given the drivers' AGO values at k.
    pub fn x1_hat(&self, k: usize, drivers_ago_at_k: &[f64]) -> f64 {
        let t = (k - 1) as f64;
        let d: f64 = self
            .b
            .iter()
            .zip(drivers_ago_at_k)
            .map(|(b, x)| b * x)
            .sum();
        self.x0_1 * (-self.a * t).exp() + d * one_minus_exp_over_a(self.a, t)
    }

    /// The next X1 from the grey equation with measured AGO values:
    /// `x₁⁽⁰⁾(k) = (Σ bᵢ·xᵢ⁽¹⁾(k) − a·x₁⁽¹⁾(k−1)) / (1 + a/2)`.
    pub fn next_equation(&self, x1_ago_last: f64, drivers_ago_next: &[f64]) -> f64 {
        let d: f64 = self
            .b
            .iter()
            .zip(drivers_ago_next)
            .map(|(b, x)| b * x)
            .sum();
        (d - self.a * x1_ago_last) / (1.0 + 0.5 * self.a)
    }

    /// Restored values `x̂₁⁽⁰⁾(k)` for k = 1..=len of the drivers' AGO
    /// columns (`drivers_ago[i][k-1]`).
    pub fn simulate(&self, drivers_ago: &[Vec<f64>]) -> Vec<f64> {
        let len = drivers_ago.first().map_or(self.n, Vec::len);
        let mut at = vec![0.0; drivers_ago.len()];
        let mut out = Vec::with_capacity(len);
        let mut prev = 0.0;
        for k in 1..=len {
            for (a, d) in at.iter_mut().zip(drivers_ago) {
                *a = d[k - 1];
            }
            let cur = self.x1_hat(k, &at);
            out.push(if k == 1 { self.x0_1 } else { cur - prev });
            prev = cur;
        }
        out
    }
}

/// The residual tail the correction models, if the condition holds: from
/// the earliest `k0` on, all residuals have one sign and there are at
/// least 4 of them. Returns `(k0 index into residuals, sign)`.
pub fn residual_tail(residuals: &[f64]) -> Option<(usize, f64)> {
    let last = *residuals.last()?;
    if last == 0.0 {
        return None;
    }
    let sign = last.signum();
    let mut k0 = residuals.len() - 1;
    while k0 > 0 && residuals[k0 - 1] != 0.0 && residuals[k0 - 1].signum() == sign {
        k0 -= 1;
    }
    (residuals.len() - k0 >= 4).then_some((k0, sign))
}

/// The correction for the step after the residuals end: GM(1,1) on the
/// tail's magnitudes, evaluated with the paper's formula (10)
/// `ε̂(k) = (−a_ε)(ε(k0) − b_ε/a_ε)e^{−a_ε(k−k0)}`, signed like the tail.
/// `None` when the condition does not hold or the fit fails.
pub fn residual_correction(residuals: &[f64]) -> Option<f64> {
    let (k0, sign) = residual_tail(residuals)?;
    let tail: Vec<f64> = residuals[k0..].iter().map(|e| e.abs()).collect();
    let m = Gm11::fit(&tail).ok()?;
    if m.a == 0.0 {
        return None;
    }
    let steps = tail.len() as f64; // the next step, relative to k0
    let eps = -m.a * (tail[0] - m.b / m.a) * (-m.a * steps).exp();
    (eps.is_finite()).then_some(sign * eps.abs())
}

/// Grey relational grade of `other` to `target` (Deng's, ρ = 0.5), on
/// series normalised by their mean (Deng's uses the first value; the mean
/// tolerates zeros at the start). In [0, 1]; higher = closer trend.
pub fn relational_grade(target: &[f64], other: &[f64]) -> f64 {
    // Each series over its mean (zero where the mean is not positive);
    // computed on the fly: this runs for every candidate driver of every
    // prediction.
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let norm = |x: f64, mean: f64| if mean > 0.0 { x / mean } else { 0.0 };
    let (mt, mo) = (mean(target), mean(other));
    let deltas = || {
        target
            .iter()
            .zip(other)
            .map(move |(a, b)| (norm(*a, mt) - norm(*b, mo)).abs())
    };
    let (min, max) = deltas().fold((f64::MAX, 0.0f64), |(lo, hi), d| (lo.min(d), hi.max(d)));
    let n = deltas().count();
    if n == 0 || max == 0.0 {
        return 1.0;
    }
    let rho = 0.5;
    deltas()
        .map(|d| (min + rho * max) / (d + rho * max))
        .sum::<f64>()
        / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-12)
    }

    /// Textbook GM(1,1) example (Liu & Lin, Grey Systems, the "2.874"
    /// series). Worked by hand:
    ///   x⁽¹⁾ = 2.874, 6.152, 9.489, 12.879, 16.558
    ///   z⁽¹⁾(2..5) = 4.513, 7.8205, 11.184, 14.7185
    ///   B = [[-4.513,1],[-7.8205,1],[-11.184,1],[-14.7185,1]], Y = [3.278,3.337,3.390,3.679]
    ///   BᵀB = [[423.2435, -38.236],[-38.236, 4]], BᵀY = [-132.9537, 13.684]
    ///   â = (BᵀB)⁻¹BᵀY = [a, b] = [-0.037204, 3.065363] (the book: -0.0372, 3.0653)
    ///   forecast x̂⁽⁰⁾(6) = x̂⁽¹⁾(6) − x̂⁽¹⁾(5) with x̂⁽¹⁾(k) = (x₀(1) − b/a)e^{−a(k−1)} + b/a
    ///                    = 85.267·(e^{0.18602} − e^{0.14882}) ≈ 3.7507
    #[test]
    fn gm11_textbook_example() {
        let xs = [2.874, 3.278, 3.337, 3.390, 3.679];
        let m = Gm11::fit(&xs).expect("fits");
        assert!(close(m.a, -0.037204, 1e-4), "a = {}", m.a);
        assert!(close(m.b, 3.065363, 1e-5), "b = {}", m.b);
        let f = m.forecast_next();
        assert!(close(f, 3.7507, 1e-4), "forecast {f}");
    }

    #[test]
    fn gm11_recovers_an_exact_exponential() {
        // x⁽⁰⁾(k) = c·r^(k−1) satisfies the grey equation exactly with
        // a = 2(1−r)/(1+r), b = 2c/(1+r) (substitute z⁽¹⁾ = c((r^k+r^(k−1))/2 − 1)/(r−1)):
        // for c = 100, r = 1.2: a = −0.4/2.2 = −0.181818…, b = 200/2.2 = 90.9090…
        let xs: Vec<f64> = (0..8).map(|k| 100.0 * 1.2f64.powi(k)).collect();
        let m = Gm11::fit(&xs).expect("fits");
        assert!(close(m.a, -0.4 / 2.2, 1e-9), "a = {}", m.a);
        assert!(close(m.b, 200.0 / 2.2, 1e-9), "b = {}", m.b);
        let next = 100.0 * 1.2f64.powi(8);
        // The grey-equation forecast is exact ...
        let x1_last: f64 = xs.iter().sum();
        assert!(close(m.forecast_next_equation(x1_last), next, 1e-9));
        // ... the continuous time response extrapolates with e^{−a} ≠ r:
        // 427.18 vs 429.98 (−0.65%).
        let f = m.forecast_next();
        assert!(close(f, 427.1755, 1e-5), "time response {f}");
    }

    #[test]
    fn gm11_constant_series_has_a_zero_and_is_exact() {
        let xs = [50.0; 6];
        let m = Gm11::fit(&xs).expect("fits");
        assert!(m.a.abs() < 1e-12, "a = {}", m.a);
        assert!(close(m.forecast_next(), 50.0, 1e-9));
    }

    #[test]
    fn gm11_rejects_bad_input() {
        assert_eq!(
            Gm11::fit(&[1.0, 2.0, 3.0]),
            Err(GreyError::TooShort { need: 4, got: 3 })
        );
        assert!(matches!(
            Gm11::fit(&[1.0, f64::NAN, 3.0, 4.0]),
            Err(GreyError::BadValue { index: 1, .. })
        ));
        assert!(matches!(
            Gm11::fit(&[1.0, 2.0, -3.0, 4.0]),
            Err(GreyError::BadValue { index: 2, .. })
        ));
        assert!(matches!(
            Gm11::fit(&[1.0, f64::INFINITY, 3.0, 4.0]),
            Err(GreyError::BadValue { .. })
        ));
        assert_eq!(Gm11::fit(&[0.0; 5]), Err(GreyError::Degenerate));
    }

    #[test]
    fn gm11_huge_values_stay_finite() {
        let xs = [1e300, 1.1e300, 1.2e300, 1.3e300, 1.4e300];
        match Gm11::fit(&xs) {
            Ok(m) => assert!(m.forecast_next().is_finite() || m.forecast_next().is_infinite()),
            Err(e) => assert_eq!(e, GreyError::Degenerate),
        }
    }

    /// A small GM(1,N) example, worked by hand. One driver, built so the
    /// grey equation holds exactly: x₁⁽⁰⁾(k) + a·z₁⁽¹⁾(k) = b·x₂⁽¹⁾(k) with
    /// a = 0.5, b = 2 and x₂ = (1, 1, 1, 1, 1) (x₂⁽¹⁾(k) = k):
    ///   x₁(1) = 4
    ///   k=2: x + 0.5·(4 + (4+x))/2 = 4 → x·1.25 = 2 → x₁(2) = 1.6
    ///   k=3: x + 0.25·(5.6 + 5.6 + x) = 6 → x = (6 − 2.8)/1.25 = 2.56
    ///   k=4: x + 0.25·(8.16·2 + x) = 8 → x = (8 − 4.08)/1.25 = 3.136
    ///   k=5: x + 0.25·(11.296·2 + x) = 10 → x = (10 − 5.648)/1.25 = 3.4816
    /// Least squares must return a = 0.5, b = 2 exactly (zero residual).
    #[test]
    fn gm1n_hand_example_recovers_parameters() {
        let x1 = [4.0, 1.6, 2.56, 3.136, 3.4816];
        let x2 = [1.0; 5];
        let m = Gm1n::fit(&x1, &[&x2], 0.0).expect("fits");
        assert!(close(m.a, 0.5, 1e-9), "a = {}", m.a);
        assert!(close(m.b[0], 2.0, 1e-9), "b = {:?}", m.b);
    }

    #[test]
    fn gm1n_checks_inputs() {
        let x1 = [4.0, 1.6, 2.56, 3.136, 3.4816];
        assert!(matches!(
            Gm1n::fit(&x1, &[&[1.0; 4]], 0.0),
            Err(GreyError::Ragged(5, 4))
        ));
        assert!(matches!(
            Gm1n::fit(&x1[..3], &[&[1.0; 3]], 0.0),
            Err(GreyError::TooShort { .. })
        ));
        let bad = [1.0, 1.0, f64::NAN, 1.0, 1.0];
        assert!(matches!(
            Gm1n::fit(&x1, &[&bad], 0.0),
            Err(GreyError::BadValue {
                series: 1,
                index: 2,
                ..
            })
        ));
    }

    #[test]
    fn residual_correction_triggers_only_on_a_one_signed_tail_of_four() {
        // Mixed signs at the end: no tail.
        assert_eq!(residual_tail(&[1.0, -1.0, 2.0, -2.0, 1.0]), None);
        // Only three of one sign at the end: not enough.
        assert_eq!(residual_tail(&[1.0, -1.0, 2.0, 3.0, 4.0]), None);
        // Four positive at the end: k0 = 1.
        assert_eq!(residual_tail(&[-1.0, 2.0, 3.0, 4.0, 5.0]), Some((1, 1.0)));
        // All negative: k0 = 0, sign −.
        assert_eq!(
            residual_tail(&[-5.0, -4.0, -3.0, -2.0, -1.0]),
            Some((0, -1.0))
        );
        // A correction exists exactly when the tail does, with its sign.
        assert!(residual_correction(&[1.0, -1.0, 2.0, 3.0, 4.0]).is_none());
        let c = residual_correction(&[-1.0, 2.0, 2.4, 2.9, 3.5]).expect("tail of 4");
        assert!(c > 0.0, "positive tail, positive correction: {c}");
        let c = residual_correction(&[-2.0, -2.4, -2.9, -3.5]).expect("tail of 4");
        assert!(c < 0.0);
    }

    #[test]
    fn ridge_keeps_collinear_drivers_finite() {
        // Two identical drivers: BᵀB is singular; the ridge solve must
        // still give a finite fit close to the data.
        let x1 = [10.0, 12.0, 13.0, 15.0, 16.0, 18.0];
        let d = [1.0, 1.2, 1.3, 1.5, 1.6, 1.8];
        let m = Gm1n::fit(&x1, &[&d, &d], 1e-3).expect("fits");
        assert!(m.a.is_finite() && m.b.iter().all(|b| b.is_finite()));
        assert!(
            (m.b[0] - m.b[1]).abs() < 1e-6 * m.b[0].abs().max(1.0),
            "split evenly: {:?}",
            m.b
        );
    }

    /// A deterministic pseudo-random m×n system; `collinear` makes the last
    /// column nearly a copy of the first.
    fn system(m: usize, n: usize, seed: u64, collinear: bool) -> (DMatrix<f64>, DVector<f64>) {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut b = DMatrix::from_fn(m, n, |_, _| next());
        if collinear {
            for r in 0..m {
                b[(r, n - 1)] = b[(r, 0)] * (1.0 + 1e-7 * next());
            }
        }
        let y = DVector::from_fn(m, |_, _| next());
        (b, y)
    }

    #[test]
    fn normal_equations_agree_with_the_svd() {
        for (m, n) in [(5, 2), (7, 3), (15, 6), (31, 6)] {
            for seed in 0..20 {
                for collinear in [false, true] {
                    let (b, y) = system(m, n, seed, collinear);
                    let svd = solve_svd(b.clone(), &y, 1e-3).expect("svd");
                    let normal = solve_normal(&b, &y, 1e-3).expect("ridge bounds it");
                    let err = (&svd - &normal).norm() / svd.norm().max(1e-300);
                    assert!(
                        err < 1e-6,
                        "{m}x{n} seed {seed} collinear {collinear}: {err:e}\n{svd}\n{normal}"
                    );
                }
            }
        }
    }

    #[test]
    fn without_a_ridge_only_well_conditioned_pairs_use_normal_equations() {
        let (b, y) = system(6, 2, 1, false);
        let normal = solve_normal(&b, &y, 0.0).expect("a well-conditioned pair");
        let svd = solve_svd(b.clone(), &y, 0.0).expect("svd");
        assert!((&svd - &normal).norm() <= 1e-9 * svd.norm());
        let (b, y) = system(6, 2, 1, true);
        assert!(solve_normal(&b, &y, 0.0).is_none(), "cond ~1e7 squared");
        let (b, y) = system(6, 3, 1, false);
        assert!(
            solve_normal(&b, &y, 0.0).is_none(),
            "three columns need the ridge"
        );
    }

    #[test]
    fn power_iteration_finds_the_largest_eigenvalue() {
        for seed in 0..20 {
            let (b, _) = system(12, 5, seed, seed % 2 == 0);
            let g = b.tr_mul(&b);
            let exact = g.clone().symmetric_eigenvalues().max();
            let got = largest_eigenvalue(&g);
            assert!(
                (got - exact).abs() <= 1e-3 * exact,
                "seed {seed}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn relational_grade_orders_similar_trends_first() {
        let t = [10.0, 20.0, 30.0, 40.0];
        let same = [1.0, 2.0, 3.0, 4.0];
        let flat = [5.0, 5.0, 5.0, 5.0];
        assert!(relational_grade(&t, &same) > relational_grade(&t, &flat));
        assert!((relational_grade(&t, &same) - 1.0).abs() < 1e-12);
    }
}
