//! The memory modes: a working set whose pages are dirtied at a set rate.
//! Each write stores a changing non-zero word, so QEMU sends the page as a
//! normal page (a zero page would cost the migration almost nothing).

use std::time::{Duration, Instant};

use crate::{
    TICK,
    args::{Args, Mode, Pattern},
    pace::Pacer,
};

const PAGE: usize = 4096;
const WORD: usize = 8;

struct WorkingSet {
    mem: Vec<u8>,
    pages: usize,
    pattern: Pattern,
    cursor: usize,
    rng: u64,
    stamp: u64,
}

impl WorkingSet {
    fn new(args: &Args) -> Self {
        let pages = args.wss_mb * (1 << 20) / PAGE;
        WorkingSet {
            mem: vec![0u8; pages * PAGE],
            pages,
            pattern: args.pattern,
            cursor: 0,
            rng: args.seed.max(1),
            stamp: 0,
        }
    }

    fn next_page(&mut self) -> usize {
        match self.pattern {
            Pattern::Seq => {
                let p = self.cursor;
                self.cursor = (self.cursor + 1) % self.pages;
                p
            }
            Pattern::Rand => {
                // xorshift64: cheap, and good enough to spread pages.
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                (self.rng % self.pages as u64) as usize
            }
        }
    }

    fn dirty(&mut self, page: usize) {
        self.stamp += 1;
        // A different word of the page each time, so repeated writes differ.
        let word = (self.stamp as usize) % (PAGE / WORD);
        let at = page * PAGE + word * WORD;
        self.mem[at..at + WORD].copy_from_slice(&(self.stamp | 1).to_le_bytes());
    }

    /// Touches every page once, so the whole working set is resident and
    /// non-zero before the migration starts.
    fn fill(&mut self) {
        for page in 0..self.pages {
            self.dirty(page);
        }
        std::hint::black_box(&self.mem[..]);
    }
}

pub fn run(args: &Args) -> Result<(), String> {
    let mut ws = WorkingSet::new(args);
    ws.fill();
    crate::ready(args);
    dirty_loop(args, ws)
}

/// Sets up a working set and dirties it on a thread of its own (the net
/// mode's optional background dirtying).
pub fn spawn(args: &Args) {
    let mut ws = WorkingSet::new(args);
    ws.fill();
    let args = args.clone();
    std::thread::spawn(move || dirty_loop(&args, ws));
}

fn dirty_loop(args: &Args, mut ws: WorkingSet) -> Result<(), String> {
    let pages_per_sec = args.dirty_mbps * (1 << 20) as f64 / PAGE as f64;
    let off = if args.mode == Mode::Burst {
        args.off
    } else {
        Duration::ZERO
    };
    let mut pacer = Pacer::new(pages_per_sec, args.on, off);
    let start = Instant::now();
    let mut report_at = start + args.report;
    let mut since_report: u64 = 0;
    let mut total: u64 = 0;
    loop {
        let n = pacer.take();
        for _ in 0..n {
            let p = ws.next_page();
            ws.dirty(p);
        }
        if n > 0 {
            std::hint::black_box(&ws.mem[..]);
        }
        since_report += n;
        total += n;
        let now = Instant::now();
        if now >= report_at {
            let dt = args.report.as_secs_f64();
            println!(
                "vmbw-workload: t={:.1}s pages_written={} dirty_mbps={:.2} total_pages={}",
                now.duration_since(start).as_secs_f64(),
                since_report,
                since_report as f64 * PAGE as f64 / (1 << 20) as f64 / dt,
                total
            );
            since_report = 0;
            report_at += args.report;
        }
        std::thread::sleep(TICK);
    }
}
