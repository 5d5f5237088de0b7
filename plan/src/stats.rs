//! Descriptive statistics the planners share: mean, population standard
//! deviation, the Pearson coefficient (SICC's equation 1) and z-scoring for
//! computing many coefficients as dot products.

/// Arithmetic mean; 0 for an empty slice.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Population standard deviation (divides by n); 0 for fewer than 2 values.
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64).sqrt()
}

/// Largest value; `f64::NEG_INFINITY` for an empty slice.
pub fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Pearson's r over the common prefix of `x` and `y`. A constant series
/// has no defined coefficient; it is reported as 0 (uncorrelated), which
/// is what a consolidation planner needs: nothing to complement.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return 0.0;
    }
    let (x, y) = (&x[..n], &y[..n]);
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    if sxx <= f64::EPSILON * n as f64 || syy <= f64::EPSILON * n as f64 {
        return 0.0;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Writes `(x - mean) / sqrt(Σ(x - mean)²)` into `out`, so that Pearson's r
/// of two series is the dot product of their z-vectors. A constant series
/// gives the zero vector (r = 0 with everything).
pub fn unit_centered_into(xs: &[f64], out: &mut Vec<f32>) {
    out.clear();
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    if ss <= f64::EPSILON * xs.len().max(1) as f64 {
        out.resize(xs.len(), 0.0);
        return;
    }
    let inv = 1.0 / ss.sqrt();
    out.extend(xs.iter().map(|x| ((x - m) * inv) as f32));
}

/// Dot product written with independent accumulators so the compiler can
/// vectorise it; the order of additions is fixed, so results are
/// deterministic.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let chunks = n / LANES;
    for c in 0..chunks {
        let (pa, pb) = (
            &a[c * LANES..c * LANES + LANES],
            &b[c * LANES..c * LANES + LANES],
        );
        for l in 0..LANES {
            acc[l] += pa[l] * pb[l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * LANES..n {
        tail += a[i] * b[i];
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_a_line_and_its_mirror() {
        let x: Vec<f64> = (0..50).map(f64::from).collect();
        let up: Vec<f64> = x.iter().map(|v| 3.0 * v + 1.0).collect();
        let down: Vec<f64> = x.iter().map(|v| -0.5 * v + 7.0).collect();
        assert!((pearson(&x, &up) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &down) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn pearson_of_sine_and_cosine_is_near_zero_and_of_shifted_sines_is_the_cosine() {
        let n = 1440;
        let wave = |phase: f64| -> Vec<f64> {
            (0..n)
                .map(|t| (std::f64::consts::TAU * t as f64 / n as f64 + phase).sin())
                .collect()
        };
        let s = wave(0.0);
        assert!(pearson(&s, &wave(std::f64::consts::FRAC_PI_2)).abs() < 1e-9);
        let shift = 2.0;
        assert!((pearson(&s, &wave(shift)) - shift.cos()).abs() < 1e-9);
    }

    #[test]
    fn constant_series_count_as_uncorrelated() {
        assert_eq!(
            pearson(
                &[5.0; 10],
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0]
            ),
            0.0
        );
        let mut z = Vec::new();
        unit_centered_into(&[2.0; 7], &mut z);
        assert_eq!(z, vec![0.0; 7]);
    }

    #[test]
    fn dot_of_unit_centered_vectors_is_pearson() {
        let mut rng = super::super::rng::Rng::new(11);
        for len in [2usize, 7, 8, 9, 100, 1440] {
            let x: Vec<f64> = (0..len).map(|_| rng.normal()).collect();
            let y: Vec<f64> = x.iter().map(|v| -v + rng.normal()).collect();
            let (mut zx, mut zy) = (Vec::new(), Vec::new());
            unit_centered_into(&x, &mut zx);
            unit_centered_into(&y, &mut zy);
            let r = f64::from(dot(&zx, &zy));
            assert!(
                (r - pearson(&x, &y)).abs() < 1e-4,
                "len {len}: {r} vs {}",
                pearson(&x, &y)
            );
        }
    }

    #[test]
    fn mean_std_max_basics() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&xs), 5.0);
        assert_eq!(std_dev(&xs), 2.0);
        assert_eq!(max(&xs), 9.0);
        assert_eq!(mean(&[]), 0.0);
        assert_eq!(std_dev(&[3.0]), 0.0);
    }
}
