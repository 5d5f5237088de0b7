//! One-step-ahead evaluation of predictors over a trace, and the error
//! measures: MAPE, RMSE, and WAPE (Σ|error| / Σ actual), which does not
//! explode near convergence when an iteration dirties only a few pages.

use super::{Iteration, PredictError, Predictor};

/// Predictions of one model over a trace: `predicted[k]` is the prediction
/// for row k made from rows 0..k (None where the model made none).
#[derive(Debug, Clone)]
pub struct Run {
    pub model: String,
    pub predicted: Vec<Option<f64>>,
    pub how: Vec<Option<String>>,
}

/// Error measures over a set of iterations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// Mean absolute percentage error, in percent (iterations with an
    /// actual of 0 are left out of it).
    pub mape: f64,
    pub rmse: f64,
    /// Weighted absolute percentage error, in percent.
    pub wape: f64,
    /// Iterations scored.
    pub n: usize,
}

/// Runs `model` one step ahead: for each k ≥ `first`, predicts row k from
/// rows 0..k.
pub fn run(model: &dyn Predictor, rows: &[Iteration], first: usize) -> Result<Run, PredictError> {
    let mut predicted = vec![None; rows.len()];
    let mut how = vec![None; rows.len()];
    for k in first.max(1)..rows.len() {
        let p = model.predict(&rows[..k])?;
        predicted[k] = Some(p.value);
        how[k] = Some(p.how);
    }
    Ok(Run {
        model: model.name().to_owned(),
        predicted,
        how,
    })
}

/// Scores `run` on the iterations in `at`.
pub fn score(run: &Run, rows: &[Iteration], at: &[usize]) -> Scores {
    let (mut ape, mut n_ape, mut sq, mut abs, mut actual_sum, mut n) = (0.0, 0, 0.0, 0.0, 0.0, 0);
    for &k in at {
        let (Some(p), Some(row)) = (run.predicted.get(k).copied().flatten(), rows.get(k)) else {
            continue;
        };
        let actual = row.x[0];
        let err = p - actual;
        if actual > 0.0 {
            ape += err.abs() / actual;
            n_ape += 1;
        }
        sq += err * err;
        abs += err.abs();
        actual_sum += actual;
        n += 1;
    }
    let nan_if_empty = |v: f64, d: f64| if d > 0.0 { v / d } else { f64::NAN };
    Scores {
        mape: 100.0 * nan_if_empty(ape, n_ape as f64),
        rmse: nan_if_empty(sq, n as f64).sqrt(),
        wape: 100.0 * nan_if_empty(abs, actual_sum),
        n,
    }
}

/// Iterations where every run has a prediction.
pub fn common_iterations(runs: &[Run]) -> Vec<usize> {
    let len = runs.iter().map(|r| r.predicted.len()).min().unwrap_or(0);
    (0..len)
        .filter(|&k| runs.iter().all(|r| r.predicted[k].is_some()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::{Last, Mean};

    fn rows(x1: &[f64]) -> Vec<Iteration> {
        x1.iter()
            .map(|x| [*x, 1.0, 1.0, 1.0, 1.0, 1.0].into())
            .collect()
    }

    #[test]
    fn scores_by_hand() {
        // Last value on 100, 110, 99: predictions 100 (for 110), 110 (for 99).
        let r = rows(&[100.0, 110.0, 99.0]);
        let run = run(&Last, &r, 1).expect("runs");
        assert_eq!(run.predicted, vec![None, Some(100.0), Some(110.0)]);
        let s = score(&run, &r, &[1, 2]);
        // APE 10/110 and 11/99 -> MAPE = (0.090909 + 0.111111)/2 = 10.1010%
        assert!((s.mape - 10.10101).abs() < 1e-4, "{}", s.mape);
        // RMSE sqrt((100 + 121)/2) = 10.5119
        assert!((s.rmse - 10.51190).abs() < 1e-4, "{}", s.rmse);
        // WAPE 21 / 209 = 10.0478%
        assert!((s.wape - 10.04785).abs() < 1e-4, "{}", s.wape);
        assert_eq!(s.n, 2);
    }

    #[test]
    fn common_iterations_need_every_model() {
        let r = rows(&[1.0, 2.0, 3.0, 4.0]);
        let a = run(&Last, &r, 1).expect("runs");
        let b = run(&Mean, &r, 2).expect("runs");
        assert_eq!(common_iterations(&[a, b]), vec![2, 3]);
    }
}
