//! AdaMig-style watchdog (the AdaMig paper, docs/papers.md): watches each migration's run-time
//! statistics and, when it shows the tendency not to converge, escalates one
//! step per iteration:
//!
//! 1. more share: the application's reservation is halved and the
//!    migration gets the difference (within the policy's floor/cap);
//! 2. auto-converge: QEMU throttles the vCPUs, from QEMU's own first step
//!    (20%); raised by QEMU's increment (10 points) on each further stalled
//!    pass while post-copy is not available;
//! 3. post-copy, when allowed;
//! 4. a higher downtime limit, doubled each time up to a maximum.
//!
//! Auto-converge and post-copy are capabilities, which QEMU lets no one
//! change once a migration runs ("There's a migration process in
//! progress", QEMU 10.0.2). The paper's solution is built into QEMU;
//! vmbw, outside it, fires only what the migration's starter armed
//! ([`super::Armed`]: auto-converge held inert at a 1% throttle,
//! `postcopy-ram` on both sides). A step whose tool is not armed is
//! skipped, never requested.
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
    /// Whether post-copy may be used (when armed).
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
            allow_postcopy: true,
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
    /// vCPU throttle set, percent (0 = none).
    throttle_pct: u8,
    downtime_s: Option<f64>,
}

/// QEMU's own auto-converge steps (`cpu-throttle-initial`,
/// `cpu-throttle-increment` and `max-cpu-throttle` defaults).
const THROTTLE_FIRST: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;

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
            if w.throttle_pct > 0 {
                d.qemu.cpu_throttle_pct = Some(w.throttle_pct);
            }
            // Every decision asks for the switch until it happened: the
            // VM's task applies the decision current when its migration
            // next reports, not each tick's.
            if w.taken.contains(&Step::PostCopy) && !vm.postcopy {
                d.qemu.start_postcopy = true;
            }
            if let Some(dt) = w.downtime_s {
                d.qemu.downtime_limit_s = Some(dt);
            }
            if let (Some(r), ceil) = (d.migration_rate, d.migration_ceil) {
                d.enforce(r, ceil.unwrap_or(r));
            }
            // In post-copy the migration ends by itself.
            if !new_iteration || vm.iteration <= 1 || vm.postcopy {
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
            let postcopy_left =
                self.cfg.allow_postcopy && vm.armed.postcopy && !w.taken.contains(&Step::PostCopy);
            let next = [
                Step::MoreShare,
                Step::AutoConverge,
                Step::PostCopy,
                Step::DowntimeLimit,
            ]
            .into_iter()
            .find(|s| match s {
                Step::MoreShare => d.app_reserve > promised && w.share_halvings < 2,
                Step::AutoConverge => {
                    vm.armed.auto_converge
                        && w.throttle_pct < THROTTLE_MAX
                        && (w.throttle_pct == 0 || !postcopy_left)
                }
                Step::PostCopy => postcopy_left,
                Step::DowntimeLimit => w.downtime_s.is_none_or(|t| t < self.cfg.max_downtime_s),
            });
            let Some(step) = next else {
                d.why(format!("adamig: {why}; every armed step already taken"));
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
                Step::AutoConverge => {
                    w.throttle_pct = if w.throttle_pct == 0 {
                        THROTTLE_FIRST
                    } else {
                        (w.throttle_pct + THROTTLE_STEP).min(THROTTLE_MAX)
                    };
                    d.qemu.cpu_throttle_pct = Some(w.throttle_pct);
                }
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
            let detail = match step {
                Step::AutoConverge => format!(" ({}% vCPU throttle)", w.throttle_pct),
                _ => String::new(),
            };
            d.why(format!(
                "adamig: {why}: escalate to {}{detail}",
                step.as_str()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Armed, Link, VmDecision, VmInputs};

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

    const ARMED: Armed = Armed {
        postcopy: true,
        postcopy_preempt: true,
        auto_converge: true,
    };

    #[test]
    fn escalates_one_step_per_iteration_in_order() {
        let mut w = Watchdog::new(Config::default());
        let mut last = decision(0.0, 0.0);
        let mut postcopy = false;
        // Remaining stuck at 5e8: from iteration 2 on it stalls.
        for it in 1..=8u32 {
            let mut inp = inputs(it, 5e8, 10.0);
            inp.vms[0].armed = ARMED;
            inp.vms[0].postcopy = postcopy;
            let mut d = decision(50.0, 20.0);
            w.review(&inp, &mut d);
            // A second review in the same iteration takes no new step, and
            // still asks for what was fired: the VM's task may apply
            // either decision.
            let before = w.taken("vm").len();
            let mut again = decision(50.0, 20.0);
            w.review(&inp, &mut again);
            assert_eq!(w.taken("vm").len(), before);
            assert_eq!(again.vms[0].qemu, d.vms[0].qemu, "iteration {it}");
            postcopy |= d.vms[0].qemu.start_postcopy;
            last = d;
        }
        // Once in post-copy the migration ends by itself: nothing more.
        assert_eq!(
            w.taken("vm"),
            &[Step::MoreShare, Step::AutoConverge, Step::PostCopy]
        );
        let d = &last.vms[0];
        // Two halvings: reserve 20 -> 5, migration 50 -> 65.
        assert!((d.app_reserve / MBIT - 5.0).abs() < 1e-9);
        assert!((d.migration_rate.expect("rate") / MBIT - 65.0).abs() < 1e-9);
        // QEMU's first throttle step, kept in force.
        assert_eq!(d.qemu.cpu_throttle_pct, Some(THROTTLE_FIRST));
        assert_eq!(w.switches.get(&Step::MoreShare), Some(&2));
    }

    #[test]
    fn tools_not_armed_are_never_requested() {
        let mut w = Watchdog::new(Config::default());
        let mut d = decision(10.0, 0.0);
        w.review(&inputs(1, 1e9, 50.0), &mut d); // bulk pass: never
        for it in 2..6 {
            let mut d = decision(10.0, 0.0);
            w.review(&inputs(it, 9e8, 50.0), &mut d);
            let q = d.vms[0].qemu;
            assert_eq!(q.cpu_throttle_pct, None);
            assert!(!q.start_postcopy);
        }
        // No reservation to take, nothing armed: only the downtime limit.
        assert_eq!(w.taken("vm"), &[Step::DowntimeLimit]);
    }

    #[test]
    fn without_post_copy_the_throttle_climbs_qemu_s_steps_then_downtime() {
        let cfg = Config {
            allow_postcopy: false,
            ..Config::default()
        };
        let mut w = Watchdog::new(cfg);
        let mut throttles = Vec::new();
        for it in 1..=12u32 {
            let mut inp = inputs(it, 9e8, 50.0);
            inp.vms[0].armed = ARMED;
            let mut d = decision(10.0, 0.0);
            w.review(&inp, &mut d);
            assert!(!d.vms[0].qemu.start_postcopy, "denied by configuration");
            throttles.push(d.vms[0].qemu.cpu_throttle_pct.unwrap_or(0));
        }
        assert_eq!(
            throttles,
            [0, 20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99],
            "{throttles:?}"
        );
        assert_eq!(w.taken("vm"), &[Step::AutoConverge, Step::DowntimeLimit]);
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
