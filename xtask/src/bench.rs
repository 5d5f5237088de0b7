//! `cargo xtask bench <name>`: benchmarks. Each prints human-readable
//! progress and ends with one line of JSON that summarises the run.

use anyhow::bail;

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark to run.
    name: String,
    /// Extra arguments passed to the benchmark.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// The benchmarks, by name, with a one-line description.
const BENCHES: &[(&str, &str)] = &[(
    "shaping",
    "HTB goodput per rate, two-class contention with a live change, class-change latency",
)];

pub fn run(args: &Args) -> anyhow::Result<()> {
    let _ = &args.rest;
    #[allow(clippy::match_single_binding)]
    match args.name.as_str() {
        "shaping" => crate::bench_shaping::run(&args.rest),
        other => {
            let known: Vec<String> = BENCHES
                .iter()
                .map(|(name, what)| format!("  {name}: {what}"))
                .collect();
            if known.is_empty() {
                bail!("unknown benchmark `{other}`: none exist yet");
            }
            bail!(
                "unknown benchmark `{other}`; available:\n{}",
                known.join("\n")
            )
        }
    }
}
