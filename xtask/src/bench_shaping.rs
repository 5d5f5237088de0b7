//! `cargo xtask bench shaping`: HTB goodput accuracy, contention with a
//! live change, class-change latency. The measuring program lives in the
//! `vmbw-tests` crate (it needs the vmbw library, which xtask must not
//! depend on: building it needs what `cargo xtask setup` installs); this
//! runs it and passes extra arguments through. Its last line is the JSON
//! summary.

use std::process::Command;

use anyhow::Context as _;

use crate::util;

pub fn run(rest: &[String]) -> anyhow::Result<()> {
    if !util::is_root() {
        anyhow::bail!("the shaping bench needs root (network namespaces, tc)");
    }
    util::run(
        Command::new(env!("CARGO"))
            .current_dir(util::workspace_root())
            .args([
                "run",
                "--quiet",
                "--package",
                "vmbw-tests",
                "--bin",
                "vmbw-bench-shaping",
                "--",
            ])
            .args(rest),
    )
    .context("the shaping bench failed")
}
