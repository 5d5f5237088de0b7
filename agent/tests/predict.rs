//! The predictors on the recorded real traces (tests/fixtures/traces), one
//! step ahead as `vmbw predict` runs them: regressions of the GM(1,N)
//! model's accuracy are computed here, not typed in.

use std::path::{Path, PathBuf};

use vmbw::{
    predict::{Iteration, eval, model},
    qemu::trace::{self, Trace, TraceWriter},
};

fn traces() -> Vec<(String, Trace)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/traces");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 8, "the recorded traces: {paths:?}");
    paths
        .into_iter()
        .map(|p| {
            let t = trace::read_path(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p.file_stem().expect("name").to_string_lossy().into_owned();
            (name, t)
        })
        .collect()
}

/// (MAPE, WAPE) per model over the iterations every one of them predicted,
/// from the second iteration on (`vmbw predict`'s default).
fn scores(rows: &[Iteration], models: &[&str]) -> Vec<(f64, f64)> {
    let runs: Vec<eval::Run> = models
        .iter()
        .map(|m| {
            let p = model(m, 8).expect("model");
            eval::run(p.as_ref(), rows, 1).expect("runs")
        })
        .collect();
    let at = eval::common_iterations(&runs);
    runs.iter()
        .map(|r| {
            let s = eval::score(r, rows, &at);
            (s.mape, s.wape)
        })
        .collect()
}

/// The trace as an old recorder wrote it: the nine standard columns only.
fn without_extras(t: &Trace) -> Trace {
    let mut w = TraceWriter::new(Vec::new(), &[], &[]).expect("writer");
    for r in &t.rows {
        let mut r = r.clone();
        r.extra.clear();
        w.write_row(&r).expect("row");
    }
    let text = String::from_utf8(w.into_inner()).expect("utf8");
    trace::parse(&text, "stripped").expect("parses")
}

#[test]
fn gm1n_is_not_worse_than_gm11_on_any_recorded_trace() {
    let mut scored = 0;
    for (name, t) in traces() {
        let rows = t.iterations();
        if rows.len() < 2 {
            continue;
        }
        let s = scores(&rows, &["gm1n", "gm11"]);
        let ((gm1n, _), (gm11, _)) = (s[0], s[1]);
        println!("{name}: MAPE gm1n {gm1n:.1}% gm11 {gm11:.1}%");
        assert!(gm1n <= gm11, "{name}: gm1n MAPE {gm1n} > gm11 {gm11}");
        scored += 1;
    }
    assert!(scored >= 7, "{scored} traces scored");
}

/// The physics drivers come from the extra columns; without them the
/// model is still there, and with them it is better on every trace whose
/// iterations it can learn from.
#[test]
fn traces_without_the_extra_columns_still_predict() {
    let gm1n = model("gm1n", 8).expect("model");
    for (name, t) in traces() {
        let old = without_extras(&t);
        let rows = old.iterations();
        assert!(rows.iter().all(|r| r.sent_bytes.is_none()), "{name}");
        if rows.len() < 2 {
            continue;
        }
        let run = eval::run(gm1n.as_ref(), &rows, 1).expect("runs");
        for (p, how) in run.predicted.iter().zip(&run.how).skip(1) {
            let (p, how) = (p.expect("predicted"), how.as_deref().expect("how"));
            assert!(p.is_finite() && p >= 0.0, "{name}: {p}");
            assert!(
                !how.contains('^'),
                "{name}: physics without telemetry: {how}"
            );
        }
        if rows.len() >= 5 {
            let (with, _) = scores(&t.iterations(), &["gm1n"])[0];
            let (without, _) = scores(&rows, &["gm1n"])[0];
            println!("{name}: gm1n MAPE {with:.1}% with the telemetry, {without:.1}% without");
            assert!(with < without, "{name}: {with} vs {without}");
        }
    }
}
