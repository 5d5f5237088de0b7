//! `vmbw predict`: one-step-ahead dirty-page predictions over a recorded
//! trace, per model, with MAPE / RMSE / WAPE over the iterations where every
//! selected model has a prediction.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use vmbw::{
    predict::{MODELS, eval, model},
    qemu::trace,
};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// Trace CSV (docs/trace-format.md), e.g. one recorded by `vmbw record`.
    #[arg(long)]
    trace: PathBuf,
    /// The model to score, or all of them.
    #[arg(long, default_value = "all", value_parser = model_names())]
    model: String,
    /// Rolling window of the grey models (iterations).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// First iteration to predict (1-based; earlier ones are history only).
    #[arg(long, default_value_t = 2)]
    from: usize,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    json: bool,
}

/// `--model`'s values: every model, and `all`.
fn model_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(MODELS.iter().copied().chain(["all"]))
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let t = trace::read_path(&args.trace)?;
    if t.rows.len() < 2 {
        bail!(
            "{}: {} iteration(s); at least 2 are needed to predict anything",
            args.trace.display(),
            t.rows.len()
        );
    }
    if args.window < 2 {
        bail!("--window must be at least 2");
    }
    // clap admits only MODELS and `all`.
    let names: Vec<&str> = MODELS
        .iter()
        .copied()
        .filter(|m| args.model == "all" || *m == args.model)
        .collect();
    let rows = t.iterations();
    let first = args.from.max(2) - 1;
    let mut runs = Vec::new();
    for name in &names {
        let m = model(name, args.window).with_context(|| format!("model {name}"))?;
        runs.push(
            eval::run(m.as_ref(), &rows, first)
                .with_context(|| format!("running {name} on {}", args.trace.display()))?,
        );
    }
    let common = eval::common_iterations(&runs);

    print!("{:>5} {:>12}", "iter", "actual");
    for r in &runs {
        print!(" {:>12}", r.model);
    }
    println!();
    for (k, row) in t.rows.iter().enumerate() {
        print!("{:>5} {:>12.0}", row.iteration, row.dirty_pages);
        for r in &runs {
            match r.predicted[k] {
                Some(p) => print!(" {p:>12.0}"),
                None => print!(" {:>12}", "-"),
            }
        }
        println!();
    }
    println!();
    println!(
        "{} iterations scored (every model predicted them)",
        common.len()
    );
    println!(
        "{:<6} {:>10} {:>10} {:>14} {:>4}",
        "model", "MAPE %", "WAPE %", "RMSE pages", "n"
    );
    let scores: Vec<_> = runs
        .iter()
        .map(|r| (r.model.clone(), eval::score(r, &rows, &common)))
        .collect();
    for (name, s) in &scores {
        println!(
            "{name:<6} {:>10.2} {:>10.2} {:>14.1} {:>4}",
            s.mape, s.wape, s.rmse, s.n
        );
    }
    if let Some(gm) = runs.iter().find(|r| r.model == "gm1n") {
        let mut paths: std::collections::BTreeMap<String, usize> = Default::default();
        for how in gm.how.iter().flatten() {
            *paths.entry(path_of(how)).or_default() += 1;
        }
        let mut paths: Vec<(String, usize)> = paths.into_iter().collect();
        paths.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        println!("gm1n predictions were made as (count, numbers masked as #):");
        for (path, n) in paths {
            println!("{n:>6}  {path}");
        }
    }
    if args.json {
        // A score that could not be computed (no point scored) is null.
        let finite = |v: f64| v.is_finite().then_some(v);
        let summary = serde_json::json!({
            "trace": args.trace.display().to_string(),
            "iterations": t.rows.len(),
            "window": args.window,
            "models": scores
                .iter()
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        serde_json::json!({
                            "mape": finite(s.mape),
                            "wape": finite(s.wape),
                            "rmse": finite(s.rmse),
                            "n": s.n,
                        }),
                    )
                })
                .collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        println!("{summary}");
    }
    Ok(())
}

/// A prediction's `how` with its numbers (sample counts, errors) masked, so
/// that predictions made the same way count together; numbers inside names
/// (`gm1n`, `X5`) stay.
fn path_of(how: &str) -> String {
    let mut out = String::with_capacity(how.len());
    let mut in_number = false;
    let mut prev = ' ';
    for c in how.chars() {
        let starts = c.is_ascii_digit() && !prev.is_ascii_alphanumeric();
        let continues = in_number && (c.is_ascii_digit() || c == '.');
        if starts || continues {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
        prev = c;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_mask_numbers_but_not_driver_names() {
        assert_eq!(
            super::path_of("gm1n->gm11 (backtest over 3: gm1n err 12.5 > gm11 err 7)"),
            "gm1n->gm11 (backtest over #: gm1n err # > gm11 err #)"
        );
        assert_eq!(super::path_of("gm1n[X5,P^]+corr"), "gm1n[X5,P^]+corr");
        assert_eq!(
            super::path_of("P^ (fallback: 1 samples, dirty rate changed 33.3x)"),
            "P^ (fallback: # samples, dirty rate changed #x)"
        );
    }
}
