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
    "plan",
    "VMM-CFG and SICC papers' simulations, 10k-VM planning time",
)];

pub fn run(args: &Args) -> anyhow::Result<()> {
    match args.name.as_str() {
        "plan" => crate::bench_plan::run(&args.rest),
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
