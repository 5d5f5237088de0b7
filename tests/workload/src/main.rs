//! `vmbw-workload`: the program the test guest runs, so that migrations are
//! measured against known, repeatable guest behaviour.
//!
//! Modes:
//! - `idle`: sleeps.
//! - `cpu`: spins on arithmetic, touching no memory beyond its stack
//!   (with `--dirty-mbps`, a second thread dirties a working set).
//! - `mem-seq` / `mem-rand`: dirties pages of a working set at a set rate,
//!   walking it in order or picking pages at random.
//! - `burst`: like `mem-rand` (or `--pattern seq`) for `--on-ms`, then idle
//!   for `--off-ms`, repeated.
//! - `net`: streams UDP datagrams or a TCP byte stream to `--sink` at a set
//!   rate (with `--dirty-mbps`, a second thread dirties a working set).
//!
//! Every line it prints starts with `vmbw-workload:`; after its set-up it
//! prints `VMBW-WORKLOAD-READY`, which tests wait for before migrating. Each
//! `--report-secs` it prints what it actually achieved (a TCG guest may fall
//! short of the asked rate), so recorded traces can say what the guest did.

mod args;
mod memory;
mod net;
mod pace;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use args::{Args, Mode};

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmbw-workload: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    println!("vmbw-workload: starting {}", args.describe());
    let result = match args.mode {
        Mode::Idle => idle(&args),
        Mode::Cpu => cpu(&args),
        Mode::MemSeq | Mode::MemRand | Mode::Burst => memory::run(&args),
        Mode::Net => net::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("vmbw-workload: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the readiness marker tests wait for.
pub fn ready(args: &Args) {
    println!("VMBW-WORKLOAD-READY {}", args.describe());
}

fn idle(args: &Args) -> Result<(), String> {
    ready(args);
    let start = Instant::now();
    loop {
        std::thread::sleep(args.report);
        println!(
            "vmbw-workload: t={:.1}s idle",
            start.elapsed().as_secs_f64()
        );
    }
}

fn cpu(args: &Args) -> Result<(), String> {
    if args.dirty_mbps > 0.0 {
        memory::spawn(args);
    }
    ready(args);
    let start = Instant::now();
    let mut last = start;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rounds: u64 = 0;
    loop {
        // A dependent chain the compiler cannot fold away.
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x = std::hint::black_box(x);
        rounds += 1;
        if last.elapsed() >= args.report {
            let dt = last.elapsed().as_secs_f64();
            println!(
                "vmbw-workload: t={:.1}s cpu rounds/s={:.0}",
                start.elapsed().as_secs_f64(),
                rounds as f64 / dt
            );
            rounds = 0;
            last = Instant::now();
        }
    }
}

/// Sleeps for the pacing tick; shared by the paced modes.
pub const TICK: Duration = Duration::from_millis(5);
