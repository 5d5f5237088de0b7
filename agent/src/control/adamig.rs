//! AdaMig-style watchdog (the AdaMig paper, docs/papers.md): watches each migration's run-time
//! statistics and, when it shows the tendency not to converge, escalates one
//! step per iteration:
//!
//! 1. more share: the application's reservation is halved and the
//!    migration gets the difference (within the policy's floor/cap);
//! 2. auto-converge (QEMU throttles the vCPUs);
//! 3. post-copy, when allowed;
//! 4. a higher downtime limit, doubled each time up to a maximum.
//!
//! "Not converging" means: after the bulk pass, the remaining bytes did not
//! shrink by at least `min_progress` over the last `window` iterations, or
//! the predicted dirty rate is at or above the migration's allotment.
//! Every switch is logged in the decision's reasons and counted.

use std::collections::HashMap;

use super::{Decision, Inputs, mbit};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Iterations looked back over.
    pub window: usize,
    /// Required relative shrink of `remaining` over the window.
    pub min_progress: f64,
    /// Whether post-copy may be used.
    pub allow_postcopy: bool,
    /// Upper bound for the raised downtime limit (seconds).
    pub max_downtime_s: f64,
}

impl Default for Config {
    fn default() -> Self {
        // Every pass must shrink the remaining set by 10%: a dirty set
        // stuck at the working set's size shrinks by less.
        Config {
            window: 1,
            min_progress: 0.1,
            allow_postcopy: false,
            max_downtime_s: 2.0,
        }
    }
}

/// The escalation steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    MoreShare,
    AutoConverge,
    PostCopy,
    DowntimeLimit,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::MoreShare => "more-share",
            Step::AutoConverge => "auto-converge",
            Step::PostCopy => "post-copy",
            Step::DowntimeLimit => "downtime-limit",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Watch {
    remaining: Vec<f64>,
    last_iteration: u32,
    taken: Vec<Step>,
    share_halvings: u32,
    downtime_s: Option<f64>,
}

/// The watchdog's state across iterations, per VM.
#[derive(Debug, Clone, Default)]
pub struct Watchdog {
    pub cfg: Config,
    vms: HashMap<String, Watch>,
    /// Every switch made, per step (for metrics).
    pub switches: HashMap<Step, u64>,
}

impl Watchdog {
    pub fn new(cfg: Config) -> Self {
        Watchdog {
            cfg,
            ..Watchdog::default()
        }
    }

    /// Steps taken so far for `vm`.
    pub fn taken(&self, vm: &str) -> &[Step] {
        self.vms.get(vm).map_or(&[], |w| w.taken.as_slice())
    }

    /// Reviews a policy's decision and escalates where needed. Call once per
    /// tick; a VM escalates at most one step per iteration.
    pub fn review(&mut self, inputs: &Inputs, decision: &mut Decision) {
        for vm in &inputs.vms {
            let Some(d) = decision.vms.iter_mut().find(|d| d.name == vm.name) else {
                continue;
            };
            let w = self.vms.entry(vm.name.clone()).or_default();
            let new_iteration = vm.iteration != w.last_iteration;
            if new_iteration {
                w.remaining.push(vm.remaining);
                w.last_iteration = vm.iteration;
            }
            // Steps already taken stay in force. More share halves only
            // what the application has above its promise (on the wire:
            // the promise is goodput, the class counts frames).
            let promised = vm.reserve.unwrap_or(0.0) * inputs.link.frame_per_goodput();
            for _ in 0..w.share_halvings {
                let moved = (d.app_reserve - promised).max(0.0) / 2.0;
                d.app_reserve -= moved;
                if let Some(r) = d.migration_rate.as_mut() {
                    *r += moved;
                }
            }
            if w.taken.contains(&Step::AutoConverge) {
                d.qemu.auto_converge = Some(true);
            }
            if let Some(dt) = w.downtime_s {
                d.qemu.downtime_limit_s = Some(dt);
            }
            if let (Some(r), ceil) = (d.migration_rate, d.migration_ceil) {
                d.enforce(r, ceil.unwrap_or(r));
            }
            if !new_iteration || vm.iteration <= 1 {
                continue;
            }
            let stalled = w.remaining.len() > self.cfg.window && {
                let now = w.remaining[w.remaining.len() - 1];
                let then = w.remaining[w.remaining.len() - 1 - self.cfg.window];
                now > then * (1.0 - self.cfg.min_progress)
            };
            let outrun = d.migration_rate.is_some_and(|r| vm.dirty_rate() >= r);
            if !(stalled || outrun) {
                continue;
            }
            let why = if stalled {
                format!(
                    "remaining did not shrink {:.0}% over {} iterations",
                    self.cfg.min_progress * 100.0,
                    self.cfg.window
                )
            } else {
                format!(
                    "predicted dirty rate {} >= allotment {}",
                    mbit(vm.dirty_rate()),
                    mbit(d.migration_rate.unwrap_or(0.0))
                )
            };
            let next = [
                Step::MoreShare,
                Step::AutoConverge,
                Step::PostCopy,
                Step::DowntimeLimit,
            ]
            .into_iter()
            .find(|s| match s {
                Step::MoreShare => d.app_reserve > promised && w.share_halvings < 2,
                Step::AutoConverge => !w.taken.contains(s),
                Step::PostCopy => self.cfg.allow_postcopy && !w.taken.contains(s),
                Step::DowntimeLimit => w.downtime_s.is_none_or(|t| t < self.cfg.max_downtime_s),
            });
            let Some(step) = next else {
                d.why(format!("adamig: {why}; every step already taken"));
                continue;
            };
            match step {
                Step::MoreShare => {
                    w.share_halvings += 1;
                    let moved = (d.app_reserve - promised) / 2.0;
                    d.app_reserve -= moved;
                    if let Some(r) = d.migration_rate {
                        d.enforce(r + moved, d.migration_ceil.unwrap_or(r + moved));
                    }
                }
                Step::AutoConverge => d.qemu.auto_converge = Some(true),
                Step::PostCopy => d.qemu.start_postcopy = true,
                Step::DowntimeLimit => {
                    let t = (w.downtime_s.unwrap_or(vm.downtime_limit_s) * 2.0)
                        .min(self.cfg.max_downtime_s);
                    w.downtime_s = Some(t);
                    d.qemu.downtime_limit_s = Some(t);
                }
            }
            if !w.taken.contains(&step) {
                w.taken.push(step);
            }
            *self.switches.entry(step).or_default() += 1;
            d.why(format!("adamig: {why}: escalate to {}", step.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Link, VmDecision, VmInputs};

    use crate::api::BYTES_PER_MBIT as MBIT;

    fn inputs(iteration: u32, remaining: f64, dirty_mbit: f64) -> Inputs {
        Inputs {
            link: Link {
                capacity: 100.0 * MBIT,
                usage: 0.0,
                encap_bytes: 0.0,
            },
            vms: vec![VmInputs {
                name: "vm".into(),
                predicted_dirty_pages: dirty_mbit * MBIT / 4096.0,
                iteration_s: 1.0,
                page_size: 4096.0,
                app_history: vec![],
                remaining,
                iteration,
                downtime_limit_s: 0.3,
                dirty_rate_history: vec![],
                ..VmInputs::unknown("")
            }],
        }
    }

    fn decision(rate_mbit: f64, reserve_mbit: f64) -> Decision {
        let mut d = VmDecision::unenforced("vm");
        d.migration_rate = Some(rate_mbit * MBIT);
        d.app_reserve = reserve_mbit * MBIT;
        Decision { vms: vec![d] }
    }

    #[test]
    fn a_converging_migration_is_left_alone() {
        let mut w = Watchdog::new(Config::default());
        for (i, rem) in [1e9, 5e8, 2e8, 1e8].into_iter().enumerate() {
            let mut d = decision(50.0, 20.0);
            w.review(&inputs(i as u32 + 1, rem, 10.0), &mut d);
            assert!(w.taken("vm").is_empty());
            assert_eq!(d.vms[0].app_reserve, 20.0 * MBIT);
        }
    }

    #[test]
    fn escalates_one_step_per_iteration_in_order() {
        let cfg = Config {
            allow_postcopy: true,
            ..Config::default()
        };
        let mut w = Watchdog::new(cfg);
        let mut last = decision(0.0, 0.0);
        // Remaining stuck at 5e8: from iteration 2 on it stalls.
        for it in 1..=8u32 {
            let mut d = decision(50.0, 20.0);
            w.review(&inputs(it, 5e8, 10.0), &mut d);
            // A second review in the same iteration changes nothing more.
            let before = w.taken("vm").len();
            w.review(&inputs(it, 5e8, 10.0), &mut decision(50.0, 20.0));
            assert_eq!(w.taken("vm").len(), before);
            last = d;
        }
        assert_eq!(
            w.taken("vm"),
            &[
                Step::MoreShare,
                Step::AutoConverge,
                Step::PostCopy,
                Step::DowntimeLimit
            ]
        );
        let d = &last.vms[0];
        // Two halvings: reserve 20 -> 5, migration 50 -> 65.
        assert!((d.app_reserve / MBIT - 5.0).abs() < 1e-9);
        assert!((d.migration_rate.expect("rate") / MBIT - 65.0).abs() < 1e-9);
        assert_eq!(d.qemu.auto_converge, Some(true));
        // Downtime doubled from 0.3 s, then capped at 2 s.
        assert!(d.qemu.downtime_limit_s.expect("raised") <= 2.0);
        assert_eq!(w.switches.get(&Step::MoreShare), Some(&2));
    }

    #[test]
    fn dirty_rate_above_allotment_triggers_without_post_copy_when_not_allowed() {
        let mut w = Watchdog::new(Config::default());
        let mut d = decision(10.0, 0.0);
        w.review(&inputs(1, 1e9, 50.0), &mut d); // bulk pass: never
        let mut d2 = decision(10.0, 0.0);
        w.review(&inputs(2, 9e8, 50.0), &mut d2);
        // No reservation to take: first step is auto-converge.
        assert_eq!(w.taken("vm"), &[Step::AutoConverge]);
        for it in 3..6 {
            w.review(&inputs(it, 9e8, 50.0), &mut decision(10.0, 0.0));
        }
        assert!(!w.taken("vm").contains(&Step::PostCopy));
        assert!(w.taken("vm").contains(&Step::DowntimeLimit));
    }

    #[test]
    fn more_share_never_takes_the_promised_bandwidth() {
        let mut w = Watchdog::new(Config::default());
        for it in 1..=4u32 {
            let mut inp = inputs(it, 5e8, 10.0);
            inp.vms[0].reserve = Some(15.0 * MBIT);
            // The policy reserved 20, 15 of them promised: only 5 may go.
            let mut d = decision(50.0, 20.0);
            w.review(&inp, &mut d);
            let wire = 15.0 * MBIT * inp.link.frame_per_goodput();
            assert!(d.vms[0].app_reserve >= wire, "{:?}", d.vms[0]);
        }
        assert_eq!(w.taken("vm").first(), Some(&Step::MoreShare));
    }
}
