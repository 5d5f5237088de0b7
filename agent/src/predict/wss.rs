//! A working set, as the dirty bitmap sees it: a guest writing `rate`
//! pages per second at random over `pages` pages has dirtied
//! `pages · (1 − e^(−rate·t / pages))` distinct pages after `t` seconds;
//! one that sweeps them in order, `min(rate·t, pages)`. Short passes see
//! about `rate · t`; long ones saturate at the working set, because a page
//! written twice in one pass is sent once. Both shapes are fitted and the
//! closer one is kept.
//!
//! That is why a linear dirty rate misreads pre-copy: the bulk pass and
//! the long passes after it count pages/s far below what the guest writes
//! (recorded on QEMU 10, 64 MiB written at random at 2 MiB/s: 432 pages/s
//! measured over a 13 s pass, ~700 over the 0.25 s passes at the end),
//! so passes shrink more slowly than a geometric series with the early
//! rate says, and completion forecasts ran 30% short. Two passes of
//! different lengths pin both parameters down: there, 11650 pages in
//! 38.4 s and 5745 in 13.3 s fit a working set of 16384 pages (64 MiB)
//! written at 520 pages/s (2.0 MiB/s) within 1%.

/// Working sets tried, as multiples of the largest count seen (a working
/// set is at least that): log-spaced from just above it to 256 times it,
/// where the curve is a straight line over any pass seen.
const GRID: usize = 48;
const MAX_FACTOR: f64 = 256.0;
/// A sweep replaces random writes only if its summed squared relative
/// error is below this share of theirs, and lower by [`SWEEP_SLACK`].
const SWEEP_MARGIN: f64 = 0.8;
const SWEEP_SLACK: f64 = 1e-4;

/// A random-write working set above this share of the guest's used memory
/// is read as a sweep ([`WorkingSet::from_rate_within`]): between the
/// tuning traces' random writers (at most 0.68) and sweeps (0.96 and up).
pub const SWEEP_SHARE_OF_USED: f64 = 0.85;

/// The least a long `calc-dirty-rate` window must read for
/// [`WorkingSet::from_windows`] to tell a working set from it: 8 MiB/s,
/// where a whole MiB/s step is an eighth of the reading.
pub const MIN_LONG_WINDOW_BPS: f64 = 8.0 * 1024.0 * 1024.0;

/// How the writes spread over the working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Uniformly at random: distinct pages saturate exponentially.
    Random,
    /// In order, wrapping around: linear until the whole set is dirty.
    Sweep,
}

/// A fitted working set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkingSet {
    /// Pages written per second (the rate of short passes).
    pub rate: f64,
    /// Pages the writes spread over.
    pub pages: f64,
    pub shape: Shape,
}

impl WorkingSet {
    /// Distinct pages dirtied in `t` seconds.
    pub fn dirtied(&self, t: f64) -> f64 {
        if t <= 0.0 || self.pages <= 0.0 {
            return 0.0;
        }
        match self.shape {
            Shape::Random => -self.pages * (-self.rate * t / self.pages).exp_m1(),
            Shape::Sweep => (self.rate * t).min(self.pages),
        }
    }

    /// The rate that makes `t` seconds dirty `d` pages, if one does.
    fn rate_for(&self, t: f64, d: f64) -> Option<f64> {
        match self.shape {
            Shape::Random => Some(-self.pages / t * (-d / self.pages).ln_1p()),
            // A saturated sample says only that the rate is high enough.
            Shape::Sweep => (d < self.pages * 0.999).then_some(d / t),
        }
    }

    /// The random-write working set that makes `rate` pages/s dirty
    /// `dirtied` distinct pages in `t` seconds: `pages` solves
    /// `pages · (1 − e^(−rate·t/pages)) = dirtied`. None when the pass
    /// shows no saturation (`dirtied` ≥ `rate·t`: the rate is then no
    /// better than the pass's own) or the figures are not positive and
    /// finite.
    ///
    /// This is what a sampled write rate (QEMU's `calc-dirty-rate`, about
    /// a second of page hashing) adds to one long pass: the pass alone
    /// cannot tell a slow writer from a fast one whose writes overlap.
    ///
    /// Solved for `u = rate·t / pages` in `h(u) = (1 − e^(−u)) / u = c`,
    /// `c = dirtied / (rate·t)`, by Newton's method: `h` is convex and
    /// falls from 1, and `h(u) ≥ 1 − u/2` puts the root above
    /// `u₀ = 2(1 − c)`, so the steps climb to it without overshooting.
    pub fn from_rate(rate: f64, t: f64, dirtied: f64) -> Option<WorkingSet> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        let written = rate * t;
        if !(ok(rate) && ok(t) && ok(dirtied)) || dirtied >= written * (1.0 - 1e-3) {
            return None;
        }
        let c = dirtied / written;
        let mut u = 2.0 * (1.0 - c);
        for _ in 0..60 {
            let e = (-u).exp();
            let h = -(-u).exp_m1() / u;
            let slope = (e * (u + 1.0) - 1.0) / (u * u);
            let step = (h - c) / slope;
            u -= step;
            if step.abs() <= 1e-12 * u {
                break;
            }
        }
        Some(WorkingSet {
            rate,
            pages: written / u,
            shape: Shape::Random,
        })
    }

    /// The working set, in bytes, that QEMU's `calc-dirty-rate` shows
    /// with a second's measurements (`short_bps`, their mean) beside
    /// `long_s`-second ones (`long_bps`): a second's writes at random over
    /// it leave `long_bps · long_s` distinct bytes dirty in `long_s`
    /// ([`WorkingSet::from_rate`]). None where the long windows show no
    /// overlap, or read below [`MIN_LONG_WINDOW_BPS`].
    ///
    /// QEMU answers in whole MiB/s, rounded down; half a MiB/s is added
    /// back to each mean (the floor's loss when the fraction falls
    /// anywhere). Below that rate a long window's answer moves in steps
    /// too coarse for its overlap with a second's: at 1-2 MiB/s a 16 MiB
    /// set written at 6 MiB/s read 5 MiB/s over 1 s and 3 over 4 s
    /// (`probe-dirty-rate`), and the small corpus guests read 1 and 1.
    /// Seen on the `window` corpus (1 GiB guest, 70% of 15 MiB/s on a
    /// 64 MiB hot set, the rest over 512 MiB): 15 MiB/s over 1 s, 13.5
    /// over 4 s, a 280 MiB set; the bulk pass left 127 MiB dirty in
    /// 17.5 s, where the set says 170 and the guest's used memory (64% of
    /// 1 GiB) as the bound 216.
    pub fn from_windows(short_bps: f64, long_bps: f64, long_s: f64) -> Option<f64> {
        const HALF_STEP: f64 = 0.5 * 1024.0 * 1024.0;
        let long = long_bps + HALF_STEP;
        if long < MIN_LONG_WINDOW_BPS {
            return None;
        }
        WorkingSet::from_rate(short_bps + HALF_STEP, long_s, long * long_s).map(|w| w.pages)
    }

    /// [`WorkingSet::from_rate`], unless the random-write working set it
    /// finds is more than [`SWEEP_SHARE_OF_USED`] of the guest's used
    /// memory: then the writes are read as a sweep that the pass saw
    /// whole (`dirtied` pages at `rate`).
    ///
    /// Why: a sweep that wraps within a pass finds each page of its set
    /// once, which the random model can explain only with a working set
    /// about as large as all the memory in use. On the tuning traces
    /// (tests/fixtures/corpus/tuning) the bulk pass put the random set at
    /// 0.41-0.68 of the used memory for the random, bursty and
    /// application workloads and at 0.96-1.05 for the three sequential
    /// sweeps, whose next pass it then read 17-25% short.
    ///
    /// The used memory leaves out the guest's page cache (the balloon
    /// counts it as available), so a guest that dirties much cache may be
    /// read as a sweep; a sweep predicts more pages than random writes
    /// would, not fewer.
    pub fn from_rate_within(
        rate: f64,
        t: f64,
        dirtied: f64,
        used_pages: Option<f64>,
    ) -> Option<WorkingSet> {
        let ws = Self::from_rate(rate, t, dirtied)?;
        Some(match used_pages {
            Some(used) if used > 0.0 && ws.pages > SWEEP_SHARE_OF_USED * used => WorkingSet {
                rate,
                pages: dirtied,
                shape: Shape::Sweep,
            },
            _ => ws,
        })
    }

    /// Fits `(seconds, distinct pages)` samples: for each working set on a
    /// grid, every sample gives the rate that explains it exactly; their
    /// median is that working set's rate, and the working set whose curve
    /// misses the samples least (relative squared error) wins. None with
    /// fewer than two usable samples (t > 0, pages > 0).
    pub fn fit(samples: &[(f64, f64)]) -> Option<WorkingSet> {
        let usable: Vec<(f64, f64)> = samples
            .iter()
            .copied()
            .filter(|(t, d)| *t > 0.0 && *d > 0.0 && t.is_finite() && d.is_finite())
            .collect();
        if usable.len() < 2 {
            return None;
        }
        let largest = usable.iter().map(|(_, d)| *d).fold(0.0, f64::max);
        let mut best: Option<(f64, WorkingSet)> = None;
        let mut rates = Vec::with_capacity(usable.len());
        for shape in [Shape::Random, Shape::Sweep] {
            for i in 0..GRID {
                // A sweep saturates exactly at the largest count; its rate
                // then comes from the other passes, which must be two or
                // more (one fits any line).
                let factor = match (shape, i) {
                    (Shape::Sweep, 0) if usable.len() >= 3 => 1.0,
                    (Shape::Sweep, 0) => continue,
                    _ => (1.0 + 1e-3) * MAX_FACTOR.powf(i as f64 / (GRID - 1) as f64),
                };
                let mut ws = WorkingSet {
                    rate: 0.0,
                    pages: largest * factor,
                    shape,
                };
                rates.clear();
                rates.extend(usable.iter().filter_map(|(t, d)| ws.rate_for(*t, *d)));
                if rates.is_empty() {
                    continue;
                }
                rates.sort_by(f64::total_cmp);
                ws.rate = rates[rates.len() / 2];
                let err: f64 = usable
                    .iter()
                    .map(|(t, d)| ((ws.dirtied(*t) - d) / d).powi(2))
                    .sum();
                // A sweep must fit clearly better than random writes: on a
                // straight line both fit, and random is the safer guess.
                let better = |e: f64, incumbent: &WorkingSet| match (ws.shape, incumbent.shape) {
                    (Shape::Sweep, Shape::Random) => err < SWEEP_MARGIN * e - SWEEP_SLACK,
                    _ => err < e,
                };
                if best.as_ref().is_none_or(|(e, b)| better(*e, b)) {
                    best = Some((err, ws));
                }
            }
        }
        best.map(|(_, ws)| ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep over 4096 pages at 100 pages/s for 60 s finds all 4096 once.
    /// The random model needs a set larger than the 4500 pages in use to
    /// explain that, so it is read as the sweep: 10 s more dirty 1000
    /// pages, not the ~935 of the random set (7325 pages). With 40000
    /// pages in use (or unknown) a random set that size is possible and is
    /// kept.
    #[test]
    fn a_set_larger_than_the_used_memory_is_read_as_a_sweep() {
        let random = WorkingSet::from_rate(100.0, 60.0, 4096.0).expect("saturates");
        assert!(random.pages > 0.85 * 4500.0, "{random:?}");
        assert!(random.dirtied(10.0) < 950.0, "{random:?}");
        let sweep = WorkingSet::from_rate_within(100.0, 60.0, 4096.0, Some(4500.0)).expect("fits");
        assert_eq!(sweep.shape, Shape::Sweep);
        assert_eq!(sweep.dirtied(10.0), 1000.0);
        assert_eq!(sweep.dirtied(60.0), 4096.0);
        // Either side of 0.85 of the used memory.
        let edge = random.pages / SWEEP_SHARE_OF_USED;
        let just_over = WorkingSet::from_rate_within(100.0, 60.0, 4096.0, Some(edge * 0.999));
        assert_eq!(just_over.map(|w| w.shape), Some(Shape::Sweep));
        for used in [Some(edge * 1.001), Some(40000.0), None] {
            let kept = WorkingSet::from_rate_within(100.0, 60.0, 4096.0, used).expect("fits");
            assert_eq!(kept, random, "{used:?}");
        }
        // No saturation, no set: the same None either way.
        assert_eq!(
            WorkingSet::from_rate_within(100.0, 10.0, 1000.0, Some(4500.0)),
            None
        );
    }

    #[test]
    fn two_passes_give_back_the_working_set_and_the_rate() {
        let truth = WorkingSet {
            rate: 520.0,
            pages: 16384.0,
            shape: Shape::Random,
        };
        let samples = [(38.4, truth.dirtied(38.4)), (13.3, truth.dirtied(13.3))];
        let fit = WorkingSet::fit(&samples).expect("fits");
        assert!((fit.pages / truth.pages - 1.0).abs() < 0.1, "{fit:?}");
        assert!((fit.rate / truth.rate - 1.0).abs() < 0.1, "{fit:?}");
        // A short pass sees the write rate, not the long passes' average.
        assert!((fit.dirtied(0.25) / (520.0 * 0.25) - 1.0).abs() < 0.05);
    }

    #[test]
    fn the_recorded_passes_fit_within_a_few_percent() {
        // rand-l30 (tests/fixtures/corpus/tuning): the first two passes.
        let fit = WorkingSet::fit(&[(38.449, 11650.0), (13.298, 5745.0)]).expect("fits");
        for (t, d) in [(38.449, 11650.0), (13.298, 5745.0)] {
            assert!((fit.dirtied(t) / d - 1.0).abs() < 0.03, "{fit:?} at {t}");
        }
    }

    #[test]
    fn a_straight_line_is_a_huge_working_set() {
        let fit = WorkingSet::fit(&[(1.0, 100.0), (2.0, 200.0), (4.0, 400.0)]).expect("fits");
        assert!((fit.dirtied(8.0) / 800.0 - 1.0).abs() < 0.05, "{fit:?}");
    }

    #[test]
    fn a_sweep_is_told_from_random_writes() {
        let sweep = WorkingSet {
            rate: 400.0,
            pages: 16384.0,
            shape: Shape::Sweep,
        };
        let samples: Vec<(f64, f64)> = [60.0, 50.0, 20.0, 8.0, 3.0]
            .iter()
            .map(|t| (*t, sweep.dirtied(*t)))
            .collect();
        let fit = WorkingSet::fit(&samples).expect("fits");
        assert_eq!(fit.shape, Shape::Sweep, "{fit:?}");
        // Recorded (seq-l50, tests/fixtures/corpus/tuning): a saturated
        // bulk pass, then two passes at ~1030 pages/s.
        let seq = WorkingSet::fit(&[(22.975, 16427.0), (11.254, 11400.0), (7.759, 8108.0)])
            .expect("fits");
        assert_eq!(seq.shape, Shape::Sweep, "{seq:?}");
        assert!((fit.dirtied(1.0) / 400.0 - 1.0).abs() < 0.02, "{fit:?}");
    }

    #[test]
    fn a_sampled_rate_and_one_pass_give_the_working_set() {
        let truth = WorkingSet {
            rate: 512.0,
            pages: 16384.0,
            shape: Shape::Random,
        };
        let ws = WorkingSet::from_rate(512.0, 38.4, truth.dirtied(38.4)).expect("saturated");
        assert!((ws.pages / truth.pages - 1.0).abs() < 1e-6, "{ws:?}");
        assert!((ws.dirtied(13.3) / truth.dirtied(13.3) - 1.0).abs() < 1e-6);
        // A pass at or above the sampled rate shows no working set.
        assert_eq!(WorkingSet::from_rate(512.0, 10.0, 5120.0), None);
        assert_eq!(WorkingSet::from_rate(0.0, 10.0, 100.0), None);
        assert_eq!(WorkingSet::from_rate(f64::NAN, 10.0, 100.0), None);
    }

    #[test]
    fn one_sample_is_not_enough() {
        assert_eq!(WorkingSet::fit(&[(1.0, 100.0)]), None);
        assert_eq!(WorkingSet::fit(&[(1.0, 100.0), (0.0, 5.0)]), None);
    }

    #[test]
    fn long_and_short_windows_give_the_working_set_at_scale_only() {
        let mib = 1024.0 * 1024.0;
        // window/wxhot-l300's bulk pass: 14.5 MiB/s over 1 s and 13 over
        // 4 s as QEMU floors them: a set of ~280 MiB.
        let set = WorkingSet::from_windows(14.5 * mib, 13.0 * mib, 4.0).expect("overlap") / mib;
        assert!((set - 280.0).abs() < 5.0, "{set}");
        // No overlap within 4 s: no set shown.
        assert_eq!(WorkingSet::from_windows(12.0 * mib, 12.0 * mib, 4.0), None);
        // Small guests' answers are too coarse to read: 1.7 and 1 MiB/s
        // would say 17 MiB for a 48 MiB set (window/wrand-l40).
        assert_eq!(WorkingSet::from_windows(1.2 * mib, 1.0 * mib, 4.0), None);
    }
}
