//! The application's side of a shortfall. The sink sees what arrived; the
//! guest's workload reports, about every second, what it managed to write,
//! and where its sending thread's time went: on a CPU, waiting for one,
//! asleep between paced writes, and the rest, blocked in socket writes
//! (the network was not draining). A second in which the sink saw too
//! little is the policy's doing only if the guest offered enough.

use serde::{Deserialize, Serialize};

use crate::{guest::PROGRESS_MARKER, scenario::App};

/// One of the workload's per-second network reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SenderSecond {
    /// The guest's clock at the report, seconds since the workload started.
    pub guest_t_s: f64,
    /// Seconds since the report before (about one; more when a socket
    /// write blocked past the report's time).
    pub secs: f64,
    /// What the guest wrote in that interval, Mbit/s.
    pub mbit: f64,
    /// The sending thread's time on a CPU and in the run queue, ms (the
    /// guest kernel's schedstat).
    pub cpu_ms: u64,
    pub runq_ms: u64,
    /// Its time asleep between paced writes, ms.
    pub sleep_ms: u64,
    /// The longest oversleep past the sender's tick, ms.
    pub late_ms: u64,
    /// The guest's TCP segments sent again, and its retransmission
    /// timeouts, in the interval (None in reports from before these were
    /// printed).
    #[serde(default)]
    pub retrans: Option<u64>,
    #[serde(default)]
    pub rto: Option<u64>,
}

impl SenderSecond {
    /// What is left of the interval: blocked in socket writes, ms.
    pub fn blocked_ms(&self) -> f64 {
        (self.secs * 1000.0 - (self.cpu_ms + self.runq_ms + self.sleep_ms) as f64).max(0.0)
    }
}

/// The network reports in a console, in order (other modes' lines and
/// reports from before this field existed are skipped).
pub fn reports(console: &str) -> Vec<SenderSecond> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix(PROGRESS_MARKER))
        .filter_map(|rest| {
            let guest_t_s = guest_t(rest)?;
            let field = |key: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            };
            Some(SenderSecond {
                guest_t_s,
                secs: field("secs")?.parse().ok()?,
                mbit: field("rate_mbit")?.parse().ok()?,
                cpu_ms: field("cpu_ms")?.parse().ok()?,
                runq_ms: field("runq_ms")?.parse().ok()?,
                sleep_ms: field("sleep_ms")?.parse().ok()?,
                late_ms: field("late_ms")?.parse().ok()?,
                retrans: field("retrans").and_then(|v| v.parse().ok()),
                rto: field("rto").and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// The guest's clock at its last report in `console`: where a migration
/// that starts now begins on that clock (within the report interval).
pub fn last_guest_t(console: &str) -> Option<f64> {
    console
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix(PROGRESS_MARKER))
        .find_map(guest_t)
}

/// The guest clock a progress line starts with (`5.00s ...`), seconds.
fn guest_t(rest: &str) -> Option<f64> {
    rest.split_whitespace()
        .next()?
        .strip_suffix('s')?
        .parse()
        .ok()
}

/// Share of the guest-clock interval `[from, to]` in which `app` wants to
/// send (its on phases, counted from the workload's start); None for a
/// greedy application, whose demand has no level to fall short of.
pub fn on_share(app: &App, from: f64, to: f64) -> Option<f64> {
    let span = to - from;
    if span <= 0.0 {
        return None;
    }
    match *app {
        App::None => Some(0.0),
        App::Rate(_) => Some(1.0),
        App::Greedy => None,
        App::OnOff { on_ms, off_ms, .. } => {
            let (on, period) = (on_ms as f64 / 1000.0, (on_ms + off_ms) as f64 / 1000.0);
            let mut k = (from / period).floor();
            let mut overlap = 0.0;
            while k * period < to {
                let (a, b) = (k * period, k * period + on);
                overlap += (b.min(to) - a.max(from)).max(0.0);
                k += 1.0;
            }
            Some(overlap / span)
        }
    }
}

/// How the guest's own sending measured up over a migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SenderTally {
    /// Report intervals (about a second each) wholly in an on phase (every
    /// one for a rate application).
    pub seconds: usize,
    /// Of those, intervals in which the guest wrote less than 95% of
    /// min(demand, reservation).
    pub short: usize,
    /// Of the short intervals, those in which writes blocked for at least a
    /// tenth of the time: the network pushed back.
    pub blocked: usize,
    /// Intervals with at least one TCP retransmission timeout (the
    /// guest's sender silent for 200 ms or more), and the segments it
    /// sent again; None when the reports do not say.
    #[serde(default)]
    pub rto_seconds: Option<usize>,
    #[serde(default)]
    pub retrans: Option<u64>,
}

/// Tallies `reports` between guest times `from` and `to` against what
/// `app` asks for, capped by the reservation (as the SLA is).
pub fn tally(
    reports: &[SenderSecond],
    app: &App,
    reserve_mbit: f64,
    from: f64,
    to: f64,
) -> SenderTally {
    let asked = match *app {
        App::Rate(m) | App::OnOff { mbit: m, .. } => m,
        App::None | App::Greedy => return SenderTally::default(),
    };
    let target = crate::runner::sla_target(asked, reserve_mbit);
    let mut t = SenderTally::default();
    for r in reports
        .iter()
        .filter(|r| r.guest_t_s - r.secs >= from && r.guest_t_s <= to)
    {
        // The interval as printed (0.01 s): allow for that rounding.
        let (begin, end) = (r.guest_t_s - r.secs + 0.02, r.guest_t_s - 0.02);
        if end <= begin || on_share(app, begin, end) != Some(1.0) {
            continue;
        }
        t.seconds += 1;
        if let Some(n) = r.rto {
            *t.rto_seconds.get_or_insert(0) += usize::from(n > 0);
        }
        if let Some(n) = r.retrans {
            *t.retrans.get_or_insert(0) += n;
        }
        if r.mbit < 0.95 * target {
            t.short += 1;
            if r.blocked_ms() >= 100.0 * r.secs {
                t.blocked += 1;
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
vmbw-workload: mode=net proto=tcp rate_mbit=20
vmbw-workload: t=1.00s secs=1.00 sent_bytes=2500000 rate_mbit=20.00 cpu_ms=400 runq_ms=10 sleep_ms=580 late_ms=1 errors=0
vmbw-workload: t=1.0s pages_written=1024 dirty_mbps=4.00 total_pages=1 active_mb=4 corrupt_pages=0
vmbw-workload: t=2.00s secs=1.00 sent_bytes=2000000 rate_mbit=16.00 cpu_ms=900 runq_ms=60 sleep_ms=30 late_ms=240 errors=0
vmbw-workload: t=3.50s secs=1.50 sent_bytes=3000000 rate_mbit=16.00 cpu_ms=500 runq_ms=0 sleep_ms=300 late_ms=2 retrans=7 rto=1 errors=0
vmbw-workload: t=4.0s sent_bytes=2500000 rate_mbit=20.00 errors=0
";

    #[test]
    fn reads_the_network_reports_only() {
        let r = reports(CONSOLE);
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[1].late_ms, 240);
        assert_eq!(r[1].blocked_ms(), 10.0);
        assert_eq!((r[2].secs, r[2].blocked_ms()), (1.5, 700.0));
        // TCP's counters, where the line has them.
        assert_eq!((r[1].retrans, r[1].rto), (None, None));
        assert_eq!((r[2].retrans, r[2].rto), (Some(7), Some(1)));
        assert_eq!(last_guest_t(CONSOLE), Some(4.0));
    }

    #[test]
    fn on_share_counts_the_duty_cycle() {
        let app = App::OnOff {
            mbit: 20.0,
            on_ms: 5000,
            off_ms: 5000,
        };
        assert_eq!(on_share(&app, 1.0, 2.0), Some(1.0));
        assert_eq!(on_share(&app, 5.0, 6.0), Some(0.0));
        assert_eq!(on_share(&app, 4.5, 5.5), Some(0.5));
        assert_eq!(on_share(&app, 9.5, 10.5), Some(0.5));
        assert_eq!(on_share(&App::Greedy, 0.0, 1.0), None);
    }

    #[test]
    fn tally_tells_a_starved_guest_from_a_blocked_one() {
        let t = tally(&reports(CONSOLE), &App::Rate(20.0), 20.0, 0.0, 10.0);
        assert_eq!(
            t,
            SenderTally {
                seconds: 3,
                short: 2,
                blocked: 1,
                rto_seconds: Some(1),
                retrans: Some(7),
            }
        );
        // A reservation below the demand lowers the bar.
        let t = tally(&reports(CONSOLE), &App::Rate(20.0), 15.0, 0.0, 10.0);
        assert_eq!(t.short, 0);
        // Off-phase seconds are not scored.
        let onoff = App::OnOff {
            mbit: 20.0,
            on_ms: 2000,
            off_ms: 2000,
        };
        assert_eq!(tally(&reports(CONSOLE), &onoff, 20.0, 0.0, 10.0).seconds, 2);
    }
}
