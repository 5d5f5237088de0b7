//! The memory modes: a working set whose pages are dirtied at a set rate.
//! Each write stores a changing non-zero word, so QEMU sends the page as a
//! normal page (a zero page would cost the migration almost nothing).
//!
//! The working set also checks itself: each write puts the write's stamp in
//! the page's first word and in a separate table, and every report compares
//! the two for an eighth of the pages, in turn (all of them every eight
//! reports, at a read cost a TCG guest does not notice). A migration that loses a guest write (QEMU 7.2's
//! TCG dirty-tracking bug did) or a post-copy page that arrives stale leaves
//! a page whose first word is older than the table says; the report line
//! then says `corrupt_pages=N` and the console gets `VMBW-WORKLOAD-CORRUPT`.

use std::time::{Duration, Instant};

use crate::{
    TICK,
    args::{Args, Mode, Pattern},
    pace::Pacer,
};

const PAGE: usize = 4096;
const WORD: usize = 8;

/// Each report checks one of this many slices of the working set.
const CHECK_SLICES: usize = 8;

/// Printed on the console when a check finds a page that lost a write.
pub const CORRUPT_MARKER: &str = "VMBW-WORKLOAD-CORRUPT";

struct WorkingSet {
    mem: Vec<u8>,
    /// The stamp of the latest write to each page.
    expected: Vec<u64>,
    pages: usize,
    pattern: Pattern,
    cursor: usize,
    rng: u64,
    stamp: u64,
    /// Pages written to now: the first `active` (all, unless it grows).
    active: usize,
    /// Share of writes that go to the first eighth of the working set.
    hot: f64,
}

impl WorkingSet {
    fn new(args: &Args) -> Self {
        let pages = args.wss_mb * (1 << 20) / PAGE;
        WorkingSet {
            mem: vec![0u8; pages * PAGE],
            expected: vec![0; pages],
            pages,
            pattern: args.pattern,
            cursor: 0,
            rng: args.seed.max(1),
            stamp: 0,
            active: pages,
            hot: args.hot,
        }
    }

    /// xorshift64: cheap, and good enough to spread pages.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn next_page(&mut self) -> usize {
        let active = self.active.clamp(1, self.pages);
        if self.hot > 0.0 && ((self.random() % 10_000) as f64) < self.hot * 10_000.0 {
            let hot = (self.pages / 8).max(1);
            return (self.random() % hot as u64) as usize;
        }
        match self.pattern {
            Pattern::Seq => {
                let p = self.cursor % active;
                self.cursor = (p + 1) % active;
                p
            }
            Pattern::Rand => (self.random() % active as u64) as usize,
        }
    }

    fn dirty(&mut self, page: usize) {
        self.stamp += 1;
        let stamp = self.stamp;
        // The first word says which write was the page's latest; another
        // word changes too, so repeated writes differ beyond it.
        let word = 1 + (stamp as usize) % (PAGE / WORD - 1);
        let base = page * PAGE;
        self.mem[base..base + WORD].copy_from_slice(&stamp.to_le_bytes());
        let at = base + word * WORD;
        self.mem[at..at + WORD].copy_from_slice(&(stamp | 1).to_le_bytes());
        self.expected[page] = stamp;
    }

    /// Pages whose first word is not the stamp of their latest write, in
    /// the `slice`th of `of` equal slices of the working set.
    fn corrupt_pages(&self, slice: usize, of: usize) -> usize {
        let per = self.pages.div_ceil(of);
        let from = (slice % of) * per;
        (from..(from + per).min(self.pages))
            .filter(|&p| {
                let base = p * PAGE;
                let mut word = [0u8; WORD];
                word.copy_from_slice(&self.mem[base..base + WORD]);
                u64::from_le_bytes(word) != self.expected[p]
            })
            .count()
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
    // The share of a climb (ramp, growth) done `elapsed` into it.
    let share = |over: Duration, elapsed: Duration| {
        if over.is_zero() {
            1.0
        } else {
            (elapsed.as_secs_f64() / over.as_secs_f64()).min(1.0)
        }
    };
    let mut report_at = start + args.report;
    let mut since_report: u64 = 0;
    let mut total: u64 = 0;
    let mut reports: usize = 0;
    loop {
        let elapsed = start.elapsed();
        pacer.set_rate(pages_per_sec * share(args.ramp, elapsed));
        ws.active = (ws.pages as f64 * (0.25 + 0.75 * share(args.grow, elapsed))) as usize;
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
            let corrupt = ws.corrupt_pages(reports, CHECK_SLICES);
            reports += 1;
            println!(
                "vmbw-workload: t={:.1}s pages_written={} dirty_mbps={:.2} total_pages={} active_mb={} corrupt_pages={corrupt}",
                now.duration_since(start).as_secs_f64(),
                since_report,
                since_report as f64 * PAGE as f64 / (1 << 20) as f64 / dt,
                total,
                (ws.active * PAGE) >> 20
            );
            if corrupt > 0 {
                println!("{CORRUPT_MARKER} pages={corrupt}");
            }
            since_report = 0;
            report_at += args.report;
        }
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_and_a_hot_set_shape_where_writes_land() {
        let args = crate::args::Args::parse(
            "--mode mem-rand --wss-mb 8 --hot-pct 80"
                .split_whitespace()
                .map(str::to_owned),
        )
        .expect("args");
        let mut ws = WorkingSet::new(&args);
        let eighth = ws.pages / 8;
        let hot = (0..10_000).filter(|_| ws.next_page() < eighth).count();
        // 80% hot plus an eighth of the other 20%.
        assert!(
            (8_000..8_800).contains(&hot),
            "{hot} of 10000 in the hot eighth"
        );
        let mut ws = WorkingSet::new(&args);
        ws.hot = 0.0;
        ws.active = ws.pages / 4;
        assert!((0..10_000).all(|_| ws.next_page() < ws.pages / 4));
    }

    #[test]
    fn a_lost_write_is_found() {
        let args = crate::args::Args::parse(
            "--mode mem-rand --wss-mb 1"
                .split_whitespace()
                .map(str::to_owned),
        )
        .expect("args");
        let mut ws = WorkingSet::new(&args);
        ws.fill();
        for _ in 0..1000 {
            let p = ws.next_page();
            ws.dirty(p);
        }
        let all = |ws: &WorkingSet| (0..3).map(|s| ws.corrupt_pages(s, 3)).sum::<usize>();
        assert_eq!(all(&ws), 0);
        // Page 7's memory goes back to what an older write left, as a
        // destination that missed the latest write would hold it.
        let before = ws.mem[7 * PAGE..8 * PAGE].to_vec();
        ws.dirty(7);
        ws.mem[7 * PAGE..8 * PAGE].copy_from_slice(&before);
        assert_eq!(all(&ws), 1);
        assert_eq!(ws.corrupt_pages(0, 3), 1, "page 7 is in the first third");
    }
}
