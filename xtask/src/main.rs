//! Developer tasks for vmbw: `cargo xtask <task>`.
//!
//! - `setup`: installs everything the build, tests and demo need (idempotent).
//! - `test`: formatting, clippy, unit tests, eBPF build, privileged tests.
//! - `demo`: a real migration on the built-in testbed with the agent on.
//! - `bench`: benchmarks; each prints a JSON summary as its last line.
//! - `fuzz`: the cargo-fuzz targets in `fuzz/`, from their committed seeds.
//! - `deb`: the agent as a Debian package (cargo-deb).

mod bench;
mod bench_plan;
mod deb;
mod fuzz;
mod migration;
mod reproduce;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "vmbw developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build, tests and demo need: Debian packages, nightly
    /// rust-src, bpf-linker 0.13 (LLVM 22), the test-guest kernel. Safe to
    /// re-run: present pieces are skipped.
    Setup(setup::Args),
    /// Run setup, then formatting and clippy checks, unit tests, the eBPF
    /// build and the privileged integration tests (root, real kernel). Ends
    /// with `N passed, N failed, N skipped`.
    Test(test::Args),
    /// Run the main job: a real QEMU migration on the built-in testbed with
    /// the agent on.
    Demo,
    /// Run a benchmark; its last output line is a JSON summary.
    Bench(bench::Args),
    /// Fuzz the decoders (packets, QMP, netlink, config, traces,
    /// inventories, KubeVirt objects) with cargo-fuzz, from the seeds in
    /// fuzz/seeds; a JSON summary is the last line.
    Fuzz(fuzz::Args),
    /// Build the agent's Debian package (binary, systemd unit, config, man
    /// pages, completions) with cargo-deb; prints the .deb's path last.
    Deb(deb::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup(args) => setup::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Demo => migration::demo(),
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Deb(args) => deb::run(&args),
    }
}
