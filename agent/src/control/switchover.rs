//! Pre-copy's stop-and-copy without the socket's backlog.
//!
//! QEMU switches to stop-and-copy once what it still has to send fits its
//! downtime limit at the bandwidth it measured (or at
//! `avail-switchover-bandwidth`, QEMU >= 8.2, when that is set). Bytes it
//! already wrote into its TCP socket count as sent. But when QEMU's
//! `max-bandwidth` is above what the kernel class lets through (it is set
//! 10% above the class ceiling, and a class under contention gets less
//! than its ceiling), the socket fills to its send buffer (megabytes) and
//! the final pass waits behind all of it. Seen on the testbed: four VMs at
//! 30 Mbit/s, two without a reservation converged in pre-copy with
//! 1.0-1.4 s of downtime against QEMU's 300 ms limit, their classes
//! draining ~15 Mbit/s while QEMU was allowed 31.
//!
//! So once a migration approaches its switchover, vmbw
//! - paces QEMU at the class's drain rate minus what brings the backlog
//!   down to a small target within a second (QEMU then neither refills
//!   the socket nor leaves the class idle), and
//! - tells QEMU the bandwidth the final pass will really have:
//!   `avail-switchover-bandwidth` = drain − backlog / downtime limit, so
//!   that the backlog and the last dirty pages together fit the limit.
//!
//! Only where vmbw reaches QEMU over QMP: libvirt has no call for
//! `avail-switchover-bandwidth`, and the pacing alone does not help (the
//! backlog measured on the testbed was in flight, in the path's queues,
//! and did not drain while QEMU was paced at half the class's rate).

use super::{QemuParams, mbit};

/// A migration is approaching its switchover when what remains takes at
/// most this long at the drain rate...
pub const APPROACH_S: f64 = 10.0;
/// ...and the pages the current pass will leave behind (the dirty rate
/// over its duration) come within this many times what the downtime
/// limit carries: the next boundary may be the switch. Without this the
/// guard held passes far from the end (seen on seed001-heavy: engaged
/// right after the bulk pass with 41 MB left, it paced QEMU to 35-42
/// Mbit/s against 32 Mbit/s of dirtying, and nrac converged 1 run in 3).
const NEXT_SWITCH_MARGIN: f64 = 3.0;
/// QEMU is never paced below this multiple of the dirty rate: the guard
/// must not stop the convergence it waits for.
const DIRTY_PACE: f64 = 1.2;
/// A hold is the guard counting the final pass below this share of the
/// drain rate ([`holds`]).
const HELD_SHARE: f64 = 0.9;
/// The backlog aimed for, as a share of what the downtime limit carries
/// at the drain rate: enough to keep the class busy between two updates.
const TARGET_SHARE: f64 = 0.25;
/// The longest the switchover is held. By then escalation has had
/// [`super::escalate::HELD_LATE_S`] to fire a tool; if it had none, QEMU
/// decides with its own estimate again rather than iterate forever (seen:
/// a held VM went 510 passes while NRAC made three others wait for it).
pub const HOLD_MAX_S: f64 = 15.0;
/// How soon a larger backlog should be down to the target, seconds.
const HORIZON_S: f64 = 1.0;
/// QEMU is never paced below this share of the drain rate.
const MIN_PACE: f64 = 0.5;
/// `avail-switchover-bandwidth` that holds the switchover: never 0 (QEMU
/// reads 0 as "use the measured bandwidth"), nor below 1000 bytes/s (QEMU
/// 10 divides it by 1000 as an integer, and a zero bandwidth turns its
/// expected downtime into INT64_MIN, seen on the testbed). At 1000 bytes/s
/// the 300 ms limit admits 300 bytes: held.
const HOLD: f64 = 1000.0;

/// The migration stream as the agent measures it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stream {
    /// Bytes QEMU still has to send (`ram.remaining`).
    pub remaining: f64,
    /// What the migration's class lets through, bytes/s: the larger of
    /// its guarantee and its measured rate.
    pub drain: f64,
    /// Bytes QEMU has written to its sockets that the destination has not
    /// acknowledged.
    pub backlog: f64,
    /// QEMU's downtime limit, seconds.
    pub downtime_limit_s: f64,
    /// The last finished pass's dirty rate, bytes/s (0: not known yet).
    pub dirty_rate: f64,
    /// How long the switchover has been held so far, seconds.
    pub held_s: f64,
}

impl Stream {
    /// Whether the switchover is near: pre-copy after the bulk pass, with
    /// at most [`APPROACH_S`] of data left, and the current pass likely to
    /// leave little enough for QEMU to switch at its end
    /// ([`NEXT_SWITCH_MARGIN`]).
    pub fn approaching(&self, iteration: u32) -> bool {
        if iteration <= 1 || self.drain <= 0.0 || self.remaining > self.drain * APPROACH_S {
            return false;
        }
        let left_behind = self.dirty_rate * self.remaining / self.drain;
        left_behind <= NEXT_SWITCH_MARGIN * self.drain * self.downtime_limit_s
    }
}

/// Whether `params` hold QEMU's switchover back: the guard counts the
/// final pass at clearly less than the drain rate (the socket's backlog
/// takes the rest). A hold this long is what [`HOLD_MAX_S`] and
/// escalation's lateness measure. (Asking whether QEMU would have
/// switched at the drain rate instead reset the clock whenever the
/// remainder wobbled across the limit: seed001-heavy's nrac, held for
/// 150 s, never released.)
pub fn holds(stream: &Stream, params: &QemuParams) -> bool {
    params
        .avail_switchover_bandwidth
        .is_some_and(|b| b > 0.0 && b < HELD_SHARE * stream.drain)
}

/// Adjusts `params` (the policy's) for a migration approaching its
/// switchover; returns why, or None if nothing changed.
pub fn guard(stream: &Stream, params: &mut QemuParams) -> Option<String> {
    let Stream {
        drain,
        backlog,
        downtime_limit_s: limit,
        ..
    } = *stream;
    if drain <= 0.0 || limit <= 0.0 || params.start_postcopy {
        return None;
    }
    if stream.held_s >= HOLD_MAX_S {
        // 0: QEMU's measured bandwidth again.
        params.avail_switchover_bandwidth = Some(0.0);
        return Some(format!(
            "switchover held {:.0} s and nothing fired: QEMU decides with its own estimate \
             ({:.0} KiB still queued in its socket)",
            stream.held_s,
            backlog / 1024.0
        ));
    }
    let target = TARGET_SHARE * drain * limit;
    // Never above the drain: above it the socket refills (seed001-heavy,
    // where a pass's pages per second exceed the link as passes shorten:
    // paced at the class ceiling, QEMU kept 1.5 MB queued and never switched).
    let floor = (MIN_PACE * drain).max((DIRTY_PACE * stream.dirty_rate).min(drain));
    let pace = (drain - (backlog - target) / HORIZON_S).max(floor);
    let pace = params.max_bandwidth.map_or(pace, |policy| pace.min(policy));
    let avail = (drain - backlog / limit).max(HOLD);
    params.max_bandwidth = Some(pace);
    params.avail_switchover_bandwidth = Some(avail);
    Some(format!(
        "switchover near ({:.0} KiB left, {:.0} KiB queued in QEMU's socket, class drains {}): \
         QEMU paced at {}, its final pass counted at {}",
        stream.remaining / 1024.0,
        backlog / 1024.0,
        mbit(drain),
        mbit(pace),
        if avail > HOLD {
            mbit(avail)
        } else {
            "nothing (held until the socket drains)".to_owned()
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: f64 = 125_000.0;

    fn stream(backlog: f64) -> Stream {
        Stream {
            remaining: 400_000.0,
            drain: 15.0 * MBIT,
            backlog,
            downtime_limit_s: 0.3,
            dirty_rate: 0.0,
            held_s: 0.0,
        }
    }

    #[test]
    fn a_full_socket_holds_the_switchover_and_slows_qemu_below_the_drain() {
        let mut p = QemuParams {
            max_bandwidth: Some(31.35 * MBIT),
            ..QemuParams::default()
        };
        // 2.4 MB queued: 1.3 s at 15 Mbit/s, over four times the limit.
        let s = stream(2_400_000.0);
        assert!(guard(&s, &mut p).is_some());
        assert_eq!(p.avail_switchover_bandwidth, Some(HOLD));
        assert!(holds(&s, &p));
        assert_eq!(p.max_bandwidth, Some(MIN_PACE * 15.0 * MBIT));
    }

    #[test]
    fn a_drained_socket_lets_the_final_pass_count_the_whole_drain() {
        let mut p = QemuParams {
            max_bandwidth: Some(31.35 * MBIT),
            ..QemuParams::default()
        };
        guard(&stream(0.0), &mut p);
        let avail = p.avail_switchover_bandwidth.expect("counted");
        assert!((avail - 15.0 * MBIT).abs() < 1.0, "{avail}");
        // Below the target backlog QEMU may refill it, a little above the drain.
        let pace = p.max_bandwidth.expect("paced");
        assert!(pace > 15.0 * MBIT && pace < 16.5 * MBIT, "{pace}");
    }

    #[test]
    fn the_backlog_and_the_last_pass_together_fit_the_limit() {
        let s = stream(100_000.0);
        let mut p = QemuParams::default();
        guard(&s, &mut p);
        let avail = p.avail_switchover_bandwidth.expect("counted");
        // QEMU switches once remaining <= avail * limit: then the backlog
        // and the remainder drain within the limit.
        let fits = avail * s.downtime_limit_s;
        assert!((s.backlog + fits) / s.drain <= s.downtime_limit_s + 1e-9);
    }

    #[test]
    fn never_paces_above_the_policy_nor_touches_a_switch_to_post_copy() {
        let mut p = QemuParams {
            max_bandwidth: Some(5.0 * MBIT),
            ..QemuParams::default()
        };
        guard(&stream(0.0), &mut p);
        assert_eq!(p.max_bandwidth, Some(5.0 * MBIT));
        let mut switching = QemuParams {
            start_postcopy: true,
            ..QemuParams::default()
        };
        assert!(guard(&stream(2_400_000.0), &mut switching).is_none());
        assert_eq!(switching.avail_switchover_bandwidth, None);
    }

    #[test]
    fn a_hold_nothing_ended_is_released_to_qemu_s_own_estimate() {
        let mut p = QemuParams::default();
        let s = Stream {
            held_s: HOLD_MAX_S,
            ..stream(2_400_000.0)
        };
        assert!(guard(&s, &mut p).is_some_and(|why| why.contains("own estimate")));
        assert_eq!(p.avail_switchover_bandwidth, Some(0.0));
        assert!(!holds(&s, &p));
    }

    #[test]
    fn never_paces_below_the_dirty_rate() {
        let mut p = QemuParams::default();
        let s = Stream {
            dirty_rate: 12.0 * MBIT,
            ..stream(2_400_000.0)
        };
        guard(&s, &mut p);
        let pace = p.max_bandwidth.expect("paced");
        assert!((pace - DIRTY_PACE * 12.0 * MBIT).abs() < 1.0, "{pace}");
    }

    #[test]
    fn a_partial_hold_counts_as_held_and_a_high_dirty_rate_never_lifts_the_pace_above_the_drain() {
        // seed001-heavy's end game: 1.6 MB left, 1.5 MB queued, 47.5 Mbit/s.
        let s = Stream {
            remaining: 1.6e6,
            drain: 47.5 * MBIT,
            backlog: 1.5e6,
            dirty_rate: 60.0 * MBIT,
            ..stream(0.0)
        };
        let mut p = QemuParams {
            max_bandwidth: Some(52.25 * MBIT),
            ..QemuParams::default()
        };
        guard(&s, &mut p);
        let pace = p.max_bandwidth.expect("paced");
        assert!(pace <= 47.5 * MBIT + 1.0, "{pace}");
        // The guard counts the final pass at far less than the drain: held,
        // so the hold's clock runs.
        assert!(holds(&s, &p));
        let mut drained = QemuParams::default();
        guard(&Stream { backlog: 0.0, ..s }, &mut drained);
        assert!(!holds(&s, &drained), "an empty socket holds nothing back");
    }

    #[test]
    fn a_pass_that_will_leave_much_behind_is_not_near_the_switch() {
        // seed001-heavy after its bulk pass: 41 MB left at 48 Mbit/s,
        // 32 Mbit/s dirtied: the pass leaves ~27 MB, far above 0.3 s.
        let heavy = Stream {
            remaining: 41e6,
            drain: 48.0 * MBIT,
            dirty_rate: 32.0 * MBIT,
            ..stream(0.0)
        };
        assert!(!heavy.approaching(2));
        // Its end game: 2 MB left, the pass leaves ~1.4 MB <= 3 x 1.8 MB.
        let end = Stream {
            remaining: 2e6,
            ..heavy
        };
        assert!(end.approaching(9));
    }

    #[test]
    fn approaching_means_after_the_bulk_pass_and_little_left() {
        let s = stream(0.0);
        assert!(s.approaching(2));
        assert!(!s.approaching(1));
        let far = Stream {
            remaining: 100e6,
            ..s
        };
        assert!(!far.approaching(5));
    }
}
