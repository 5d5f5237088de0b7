//! A deterministic pre-copy simulator: guest memory, a dirty-page process
//! taken from a recorded trace, a link shared with the VM's application, and
//! a policy deciding every iteration. For fast tests and what-if runs
//! (`vmbw simulate`); the real thing is the testbed.
//!
//! The model, per pass:
//! - the pass sends `remaining` bytes at rate `b`, so it lasts `T = remaining / b`;
//! - the guest dirties pages at the trace's rate `r(t)` (piecewise constant,
//!   one piece per recorded iteration, looped), throttled by auto-converge
//!   like QEMU (20% first, +10% per pass, at most 99%); the distinct pages
//!   dirtied in `T` saturate over the working set `W`:
//!   `W·(1 − e^{−∫r dt / W})`;
//! - the next pass sends those pages; when the remainder fits the downtime
//!   limit at `b`, the pass is the stop-and-copy and the migration ends;
//! - post-copy, when a policy starts it, ends the pre-copy: the remainder is
//!   sent at `b` while the guest runs at the destination (downtime ≈ 0);
//! - `static:RATE` is QEMU's `max-bandwidth` alone (KubeVirt's
//!   `bandwidthPerMigration`): TCP-fair sharing with that cap;
//! - link sharing under an enforcing policy is HTB's: each class first gets
//!   up to its guaranteed rate (the migration its `rate`, the application
//!   its reservation), then the excess is split in proportion to the rates
//!   among the classes that want more, each up to its ceiling (the
//!   migration's `ceil` and QEMU's `max-bandwidth`; an unreserved
//!   application class weighs 5% of the link); `default` splits the link as
//!   TCP does (fair shares, the application taking no more than it wants)
//!   with QEMU's own 128 MiB/s `max-bandwidth` default as the migration's
//!   ceiling.

use super::{
    Armed, Inputs, Link, VmInputs,
    policy::{Controller, Policy, Spec},
};
use crate::predict::{GreyGm1n, Iteration, Predictor};

/// QEMU's default `max-bandwidth` (MAX_THROTTLE, 128 MiB/s).
pub const QEMU_DEFAULT_MAX_BANDWIDTH: f64 = 128.0 * 1024.0 * 1024.0;

/// The guest's dirtying, from a trace: `(pages per second, seconds)` per
/// recorded iteration, replayed in order and looped.
#[derive(Debug, Clone, PartialEq)]
pub struct DirtyProcess {
    pub pieces: Vec<(f64, f64)>,
}

impl DirtyProcess {
    /// The dirtying a recorded trace shows: each iteration's dirty pages
    /// over its duration. `None` if no iteration has a duration.
    pub fn from_trace(t: &crate::qemu::trace::Trace) -> Option<DirtyProcess> {
        let pieces: Vec<(f64, f64)> = t
            .rows
            .iter()
            .filter(|r| r.iter_s > 0.0)
            .map(|r| (r.dirty_pages / r.iter_s, r.iter_s))
            .collect();
        (!pieces.is_empty()).then_some(DirtyProcess { pieces })
    }

    /// Pages dirtied (with repetition) between `t0` and `t1`, before the
    /// working-set saturation and throttling.
    pub fn integral(&self, t0: f64, t1: f64) -> f64 {
        let period: f64 = self.pieces.iter().map(|p| p.1).sum();
        if period <= 0.0 || t1 <= t0 {
            return 0.0;
        }
        let per_period: f64 = self.pieces.iter().map(|(r, d)| r * d).sum();
        let within = |t: f64| -> f64 {
            // Pages from 0 to t within one period.
            let mut acc = 0.0;
            let mut left = t;
            for (r, d) in &self.pieces {
                let take = left.min(*d);
                acc += r * take;
                left -= take;
                if left <= 0.0 {
                    break;
                }
            }
            acc
        };
        let cum = |t: f64| -> f64 {
            let periods = (t / period).floor();
            periods * per_period + within(t - periods * period)
        };
        cum(t1) - cum(t0)
    }

    /// The rate at time t (pages/s).
    pub fn rate_at(&self, t: f64) -> f64 {
        let period: f64 = self.pieces.iter().map(|p| p.1).sum();
        if period <= 0.0 {
            return 0.0;
        }
        let mut x = t % period;
        for (r, d) in &self.pieces {
            if x < *d {
                return *r;
            }
            x -= d;
        }
        self.pieces.last().map_or(0.0, |p| p.0)
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub memory_bytes: f64,
    pub page_size: f64,
    /// W: the working set the dirtying is spread over.
    pub wss_bytes: f64,
    pub dirty: DirtyProcess,
    /// Link capacity, bytes/s.
    pub link: f64,
    /// The application's demand, bytes/s (0 = none).
    pub app_demand: f64,
    /// Other traffic on the link, bytes/s.
    pub background: f64,
    pub downtime_limit_s: f64,
    pub timeout_s: f64,
    /// The bandwidth promised to the application, bytes/s.
    pub reserve: Option<f64>,
    /// What was armed at the start (post-copy, auto-converge).
    pub armed: Armed,
}

/// One pass of the simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    pub iteration: u32,
    pub start_s: f64,
    pub duration_s: f64,
    /// Bytes sent in the pass.
    pub sent: f64,
    /// Migration rate, bytes/s.
    pub rate: f64,
    /// Application throughput during the pass, bytes/s.
    pub app: f64,
    /// The application's reservation, bytes/s.
    pub app_reserve: f64,
    /// Pages dirtied during the pass (sent by the next one).
    pub dirty_pages: f64,
    pub predicted_dirty_pages: f64,
    pub throttle: f64,
    /// The stop-and-copy pass: the guest is paused, its application sends
    /// nothing and no reservation applies.
    pub paused: bool,
    pub reasons: Vec<String>,
}

/// How the simulated migration went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub policy: String,
    pub converged: bool,
    pub total_s: f64,
    pub downtime_s: f64,
    pub postcopy: bool,
    pub passes: Vec<Pass>,
    /// Application bytes/s averaged over the migration.
    pub app_mean: f64,
    /// Smallest ratio, over passes, of what the application got to what it
    /// was promised (min(demand, reservation)); 1.0 when nothing was promised.
    pub app_min_reserve_ratio: f64,
    /// AdaMig steps taken, in order.
    pub steps: Vec<String>,
}

/// Runs `scenario` under `spec`.
pub fn simulate(scenario: &Scenario, spec: &Spec, name: &str) -> Outcome {
    let sc = scenario;
    let mut controller = Controller::new(spec.clone());
    let predictor = GreyGm1n::default();
    let w_pages = (sc.wss_bytes / sc.page_size).max(1.0);
    let app_before = sc.app_demand.min((sc.link - sc.background).max(0.0));
    let mut app_history = vec![app_before; 5];
    let mut rows: Vec<Iteration> = Vec::new();
    let mut dirty_rate_history = Vec::new();
    let mut remaining = sc.memory_bytes;
    let mut t = 0.0;
    let mut passes = Vec::new();
    let mut throttle: f64 = 0.0;
    let mut downtime_limit = sc.downtime_limit_s;
    let mut last_duration = 0.0;
    let outcome = |converged: bool,
                   downtime: f64,
                   postcopy: bool,
                   passes: Vec<Pass>,
                   t: f64,
                   steps: Vec<String>| {
        let (app_bytes, dur) = passes.iter().fold((0.0, 0.0), |(b, d), p: &Pass| {
            (b + p.app * p.duration_s, d + p.duration_s)
        });
        let ratio = passes
            .iter()
            .filter(|p| !p.paused && p.app_reserve.min(sc.app_demand) > 0.0)
            .map(|p| p.app / p.app_reserve.min(sc.app_demand))
            .fold(1.0f64, f64::min);
        Outcome {
            policy: name.to_owned(),
            converged,
            total_s: t,
            downtime_s: downtime,
            postcopy,
            passes,
            app_mean: if dur > 0.0 { app_bytes / dur } else { 0.0 },
            app_min_reserve_ratio: ratio,
            steps,
        }
    };
    for iteration in 1..=10_000u32 {
        // What the controller knows: the prediction for this pass.
        let predicted = if !rows.is_empty() {
            predictor.predict(&rows).map(|p| p.value).unwrap_or(0.0)
        } else {
            sc.dirty.rate_at(0.0) * remaining / (sc.link / 2.0).max(1.0)
        };
        let iteration_s = if last_duration > 0.0 {
            last_duration
        } else {
            remaining / (sc.link / 2.0).max(1.0)
        };
        let inputs = Inputs {
            link: Link {
                capacity: sc.link,
                usage: sc.background + app_history.last().copied().unwrap_or(0.0),
                encap_bytes: 0.0,
            },
            vms: vec![VmInputs {
                name: "vm".into(),
                predicted_dirty_pages: predicted,
                iteration_s,
                page_size: sc.page_size,
                app_history: app_history.clone(),
                remaining,
                iteration,
                downtime_limit_s: downtime_limit,
                dirty_rate_history: dirty_rate_history.clone(),
                reserve: sc.reserve,
                armed: sc.armed,
                postcopy: false,
                // What calc-dirty-rate would measure: the dirty process now.
                sampled_dirty_rate: Some(sc.dirty.rate_at(t) * sc.page_size * (1.0 - throttle)),
                ..VmInputs::unknown("vm")
            }],
        };
        let decision = controller.decide(&inputs);
        let d = &decision.vms[0];
        // The throttle AdaMig or escalation set: QEMU applies the raised
        // ceiling at its next trigger, i.e. from this pass on.
        if let Some(pct) = d.qemu.cpu_throttle_pct
            && sc.armed.auto_converge
        {
            throttle = f64::from(pct) / 100.0;
        }
        if let Some(dt) = d.qemu.downtime_limit_s {
            downtime_limit = dt;
        }
        // Link sharing.
        let avail = (sc.link - sc.background).max(0.0);
        let (rate, app) = match (&spec.policy, d.migration_rate) {
            (Policy::Default | Policy::Static(_), _) | (_, None) => {
                // TCP shares the link fairly; the migration is capped only by
                // QEMU's max-bandwidth (its default, or the static cap), and
                // the application takes the rest up to its demand.
                let cap = d.qemu.max_bandwidth.unwrap_or(QEMU_DEFAULT_MAX_BANDWIDTH);
                let mig = cap.min(avail - sc.app_demand.min(avail / 2.0));
                (mig, sc.app_demand.min(avail - mig))
            }
            (_, Some(r)) => {
                let ceil = d
                    .migration_ceil
                    .unwrap_or(avail)
                    .min(d.qemu.max_bandwidth.unwrap_or(f64::MAX));
                htb_share(avail, r, ceil, d.app_reserve, sc.app_demand)
            }
        };
        let steps = || -> Vec<String> { controller_steps(&controller) };
        if rate <= 0.0 {
            return outcome(false, 0.0, false, passes, sc.timeout_s, steps());
        }
        if d.qemu.start_postcopy {
            let dur = remaining / rate;
            passes.push(pass(
                iteration, t, dur, remaining, rate, app, d, 0.0, predicted, throttle,
            ));
            return outcome(true, 0.0, true, passes, t + dur, steps());
        }
        let dur = remaining / rate;
        if iteration > 1 && dur <= downtime_limit {
            let mut last = pass(
                iteration, t, dur, remaining, rate, 0.0, d, 0.0, predicted, throttle,
            );
            last.paused = true;
            passes.push(last);
            return outcome(true, dur, false, passes, t + dur, steps());
        }
        if t + dur > sc.timeout_s {
            let left = sc.timeout_s - t;
            passes.push(pass(
                iteration,
                t,
                left,
                rate * left,
                rate,
                app,
                d,
                0.0,
                predicted,
                throttle,
            ));
            return outcome(false, 0.0, false, passes, sc.timeout_s, steps());
        }
        let raw = sc.dirty.integral(t, t + dur) * (1.0 - throttle);
        let dirtied = w_pages * (1.0 - (-raw / w_pages).exp());
        passes.push(pass(
            iteration, t, dur, remaining, rate, app, d, dirtied, predicted, throttle,
        ));
        rows.push(Iteration {
            x: [
                dirtied,
                50.0,
                100.0 * (1.0 - throttle),
                app,
                last_duration,
                sc.background + app + rate,
            ],
            duration_s: dur,
            sent_bytes: Some(remaining),
            remaining_bytes: Some(dirtied * sc.page_size),
            // As the agent has it: one sample, taken in the bulk pass.
            sampled_dirty_pps: rows
                .is_empty()
                .then(|| sc.dirty.rate_at(t) * (1.0 - throttle)),
            sampled_end_pps: None,
            used_pages: None,
        });
        dirty_rate_history.push(dirtied * sc.page_size / dur);
        app_history.push(app);
        last_duration = dur;
        t += dur;
        remaining = dirtied * sc.page_size;
    }
    let steps = controller_steps(&controller);
    outcome(false, 0.0, false, passes, t, steps)
}

/// HTB's split of `avail` between a migration class (guarantee `rate`,
/// ceiling `ceil`, always wanting more) and an application class
/// (guarantee `reserve`, demand `demand`): each gets its guarantee, then
/// the migration borrows first (its HTB priority is the higher, see
/// `enforce::APP_PRIO`) up to its ceiling, and the application the rest.
/// Returns (migration, application).
pub fn htb_share(avail: f64, rate: f64, ceil: f64, reserve: f64, demand: f64) -> (f64, f64) {
    let m1 = rate.min(ceil).min(avail);
    let a1 = demand.min(reserve).min(avail - m1);
    let left = (avail - m1 - a1).max(0.0);
    let m2 = (ceil - m1).max(0.0).min(left);
    let a2 = (demand - a1).max(0.0).min(left - m2);
    (m1 + m2, a1 + a2)
}

fn controller_steps(c: &Controller) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    if let Some(w) = c.watchdog.as_ref() {
        steps.extend(w.taken("vm").iter().map(|s| s.as_str().to_owned()));
    }
    if let Some(e) = c.escalator.as_ref() {
        steps.extend(e.fired("vm").iter().map(|t| t.as_str().to_owned()));
    }
    steps
}

#[allow(clippy::too_many_arguments)]
fn pass(
    iteration: u32,
    start_s: f64,
    duration_s: f64,
    sent: f64,
    rate: f64,
    app: f64,
    d: &super::VmDecision,
    dirty_pages: f64,
    predicted: f64,
    throttle: f64,
) -> Pass {
    Pass {
        iteration,
        start_s,
        duration_s,
        sent,
        rate,
        app,
        app_reserve: d.app_reserve,
        dirty_pages,
        predicted_dirty_pages: predicted,
        throttle,
        paused: false,
        reasons: d.reasons.iter().map(|r| r.0.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::BYTES_PER_MBIT as MBIT;
    const MIB: f64 = 1024.0 * 1024.0;

    fn scenario(dirty_mib_s: f64, link_mbit: f64, app_mbit: f64) -> Scenario {
        Scenario {
            memory_bytes: 160.0 * MIB,
            page_size: 4096.0,
            wss_bytes: 64.0 * MIB,
            dirty: DirtyProcess {
                pieces: vec![(dirty_mib_s * MIB / 4096.0, 1.0)],
            },
            link: link_mbit * MBIT,
            app_demand: app_mbit * MBIT,
            background: 0.0,
            downtime_limit_s: 0.3,
            timeout_s: 300.0,
            reserve: None,
            armed: Armed::default(),
        }
    }

    #[test]
    fn escalation_converges_the_demo_without_touching_the_promise() {
        // The demo's shape, dirtier: 24 MiB dirtied at 2.5 MiB/s (21
        // Mbit/s) while a 15 Mbit/s application, all of it promised,
        // shares 30 Mbit/s.
        let mut sc = scenario(2.5, 30.0, 15.0);
        sc.memory_bytes = 128.0 * MIB;
        sc.wss_bytes = 24.0 * MIB;
        sc.timeout_s = 120.0;
        sc.reserve = Some(15.0 * MBIT);
        sc.armed = Armed {
            postcopy: true,
            postcopy_preempt: true,
            auto_converge: true,
        };
        let plain = run(&sc, "nrac");
        let esc = run(&sc, "nrac+escalate");
        assert!(
            esc.converged && esc.postcopy,
            "{:#?}",
            esc.passes
                .iter()
                .map(|p| (
                    p.iteration,
                    p.start_s,
                    p.duration_s,
                    p.rate / MBIT,
                    p.app / MBIT,
                    p.reasons.clone()
                ))
                .collect::<Vec<_>>()
        );
        assert_eq!(esc.steps, ["post-copy"]);
        assert!(
            esc.app_min_reserve_ratio >= 0.95,
            "{}",
            esc.app_min_reserve_ratio
        );
        assert!(
            !plain.converged || plain.total_s > esc.total_s,
            "nrac {} s vs escalate {} s",
            plain.total_s,
            esc.total_s
        );
        // Nothing armed: nothing fires, as on a libvirt-started migration.
        sc.armed = Armed::default();
        let unarmed = run(&sc, "nrac+escalate");
        assert!(unarmed.steps.is_empty(), "{:?}", unarmed.steps);
    }

    fn run(sc: &Scenario, policy: &str) -> Outcome {
        simulate(sc, &Spec::parse(policy).expect("policy"), policy)
    }

    #[test]
    fn htb_share_by_hand() {
        // Guarantees fit: migration 10 + app 20 of 100; app wants 30, but
        // the migration borrows the other 70 first.
        let (m, a) = htb_share(100.0, 10.0, 100.0, 20.0, 30.0);
        assert!(
            (a - 20.0).abs() < 1e-9 && (m - 80.0).abs() < 1e-9,
            "{m} {a}"
        );
        // Migration capped at 15: the app gets everything else it wants.
        let (m, a) = htb_share(100.0, 10.0, 15.0, 20.0, 90.0);
        assert!(
            (m - 15.0).abs() < 1e-9 && (a - 85.0).abs() < 1e-9,
            "{m} {a}"
        );
        // Under full contention each keeps at least its guarantee.
        let (m, a) = htb_share(30.0, 9.0, 30.0, 21.0, 25.0);
        assert!(
            m >= 9.0 - 1e-9 && a >= 21.0 - 1e-9 && (m + a - 30.0).abs() < 1e-9,
            "{m} {a}"
        );
    }

    #[test]
    fn dirty_process_integrates_and_loops() {
        let p = DirtyProcess {
            pieces: vec![(10.0, 1.0), (30.0, 1.0)],
        };
        assert_eq!(p.integral(0.0, 2.0), 40.0);
        assert_eq!(p.integral(0.5, 1.5), 5.0 + 15.0);
        assert_eq!(p.integral(0.0, 5.0), 40.0 + 40.0 + 10.0);
        assert_eq!(p.rate_at(3.5), 30.0);
    }

    #[test]
    fn an_idle_guest_converges_under_every_policy() {
        let sc = scenario(0.01, 100.0, 0.0);
        for p in ["default", "static:8MiB", "nrac", "bda", "nrac+adamig"] {
            let o = run(&sc, p);
            assert!(o.converged, "{p}: {o:?}");
            assert!(o.downtime_s <= 0.3 + 1e-9, "{p}: downtime {}", o.downtime_s);
        }
    }

    #[test]
    fn a_cap_below_the_dirty_rate_never_converges() {
        // 3 MiB/s dirtied over 64 MiB, capped at 2 MiB/s: the dirty set never fits.
        let sc = scenario(3.0, 100.0, 0.0);
        let o = run(&sc, "static:2MiB");
        assert!(!o.converged);
        assert!((o.total_s - 300.0).abs() < 1e-6);
    }

    #[test]
    fn nrac_holds_the_application_reservation() {
        // 30 Mbit link, 10 Mbit application, 0.5 MiB/s dirtying.
        let sc = scenario(0.5, 30.0, 10.0);
        let o = run(&sc, "nrac");
        assert!(o.converged, "{o:?}");
        assert!(
            o.app_min_reserve_ratio >= 0.95,
            "app got {:.3} of its reservation",
            o.app_min_reserve_ratio
        );
        // Without enforcement TCP fairness gives the application its 10 Mbit
        // too here (it wants less than half) -- the cases where it does not
        // are the ones with a larger demand:
        let greedy = scenario(0.5, 30.0, 20.0);
        let d = run(&greedy, "default");
        assert!(
            d.app_mean < 0.8 * 20.0 * MBIT,
            "default squeezes a 20 Mbit app to {}",
            d.app_mean / MBIT
        );
        let n = run(&greedy, "nrac");
        assert!(
            n.app_mean > d.app_mean,
            "nrac keeps more for the app: {} vs {}",
            n.app_mean / MBIT,
            d.app_mean / MBIT
        );
    }

    #[test]
    fn adamig_rescues_a_migration_nrac_alone_cannot_finish() {
        // A hot guest (2.5 MiB/s) on a 30 Mbit link with a 15 Mbit app: the
        // migration's share stays below the dirty rate, the dirty set
        // plateaus at the working set; the watchdog takes share from the
        // reservation and throttles the guest (auto-converge armed).
        let mut sc = scenario(2.5, 30.0, 15.0);
        sc.armed = Armed {
            auto_converge: true,
            ..Armed::default()
        };
        let plain = run(&sc, "nrac");
        let ada = run(&sc, "nrac+adamig");
        assert!(
            !plain.converged,
            "plain nrac converged: {:?}",
            plain.passes.len()
        );
        assert!(ada.converged, "nrac+adamig did not: steps {:?}", ada.steps);
        assert!(!ada.steps.is_empty());
    }
}
