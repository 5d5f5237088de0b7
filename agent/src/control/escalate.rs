//! Escalation that keeps the promise: when the forecast says a migration
//! will not converge, or will take much longer than sending what is left
//! once, pick the cheapest tool that was armed at the start and does not
//! touch the application's reservation.
//!
//! The tools, and what each costs the guest (seconds of its time lost):
//!
//! | tool | armed by | cost model |
//! |---|---|---|
//! | downtime limit raised within the budget | always possible | the whole stop: remaining / B |
//! | post-copy (`migrate-start-postcopy`) | `postcopy-ram` on both sides | `postcopy_weight` × remaining / B: the guest runs on while the rest arrives, stalling only on pages it touches first |
//! | vCPU throttle (auto-converge's ceiling) | `auto-converge`, held at 1% | t × the throttled forecast + its stop-and-copy: a fraction t of every vCPU second, then the whole stop; throttled as far as needed to end within `slack` floors |
//!
//! Capabilities cannot change once QEMU migrates ("There's a migration
//! process in progress", checked on QEMU 10.0.2), so the tools must be
//! armed by whoever starts the migration: KubeVirt's MigrationPolicy
//! `allowPostCopy` / `allowAutoConverge`, libvirt's `VIR_MIGRATE_POSTCOPY`
//! / `VIR_MIGRATE_AUTO_CONVERGE`, or the testbed. vmbw reads what is armed
//! and fires only that.
//!
//! More bandwidth is not a tool here: the policy already gives the
//! migration everything above the reservations (the elastic part), and
//! nothing below them.
//!
//! Throttling slows every vCPU, the application's too: it is ruled out
//! for a VM whose application has a reservation (sending or not: a throttle
//! set in an off phase would still be there when it sends again). A raised
//! downtime limit stops the whole guest: only within the configured budget.
//! Post-copy hands the guest to the destination before all its memory is
//! there: if either host or the link between them dies during post-copy,
//! the VM is lost (neither side has all of its memory). Deny it where that
//! risk is not acceptable (`allow_postcopy = false`).

use std::collections::HashMap;

use super::{Decision, Inputs, VmDecision, VmInputs, forecast, mbit};

/// Escalation's switches and budgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub allow_postcopy: bool,
    pub allow_throttle: bool,
    pub allow_downtime: bool,
    /// Largest downtime limit escalation may set, seconds.
    pub downtime_budget_s: f64,
    /// Escalate when the forecast ETA exceeds this many times one pass
    /// over what is left (the floor).
    pub slack: f64,
    /// ... and by at least this many seconds (a short tail is not worth a
    /// tool).
    pub min_excess_s: f64,
    /// Share of the post-copy phase the guest is expected to stall on
    /// missing pages (post-copy's cost per second of background push).
    pub postcopy_weight: f64,
    /// Highest vCPU throttle escalation may set, percent.
    pub max_throttle_pct: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allow_postcopy: true,
            allow_throttle: true,
            allow_downtime: true,
            downtime_budget_s: 0.5,
            slack: 1.3,
            min_excess_s: 5.0,
            postcopy_weight: 0.1,
            max_throttle_pct: 90,
        }
    }
}

/// A tool escalation can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tool {
    DowntimeLimit,
    PostCopy,
    Throttle,
}

impl Tool {
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::DowntimeLimit => "downtime-limit",
            Tool::PostCopy => "post-copy",
            Tool::Throttle => "cpu-throttle",
        }
    }
}

/// Throttle target at most: the throttled dirty rate is at most this share
/// of the allotment (tighter when `slack` asks for it).
const THROTTLE_RATIO: f64 = 0.8;

#[derive(Debug, Clone, Default)]
struct Escalation {
    last_iteration: u32,
    /// The bulk pass was reviewed (once, when its dirty rate was sampled).
    bulk_reviewed: bool,
    postcopy: bool,
    postcopy_bandwidth: Option<f64>,
    throttle_pct: u8,
    downtime_s: Option<f64>,
    fired: Vec<Tool>,
}

/// Per-VM escalation state across ticks.
#[derive(Debug, Clone, Default)]
pub struct Escalator {
    pub cfg: Config,
    vms: HashMap<String, Escalation>,
    /// Tools fired, per tool (for metrics).
    pub switches: HashMap<Tool, u64>,
}

/// A tool that could fire now, with its cost and what it sets.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    tool: Tool,
    cost_s: f64,
    /// Throttle percent or downtime limit (ms).
    setting: f64,
}

impl Escalator {
    pub fn new(cfg: Config) -> Self {
        Escalator {
            cfg,
            ..Escalator::default()
        }
    }

    /// Tools fired so far for `vm`.
    pub fn fired(&self, vm: &str) -> &[Tool] {
        self.vms.get(vm).map_or(&[], |e| e.fired.as_slice())
    }

    /// Forecasts every migration under the policy's decision, keeps the
    /// tools already fired in force, and fires at most one more per VM per
    /// pre-copy pass when the forecast says so.
    pub fn review(&mut self, inputs: &Inputs, decision: &mut Decision) {
        for vm in &inputs.vms {
            let Some(d) = decision.vms.iter_mut().find(|d| d.name == vm.name) else {
                continue;
            };
            let e = self.vms.entry(vm.name.clone()).or_default();
            keep_in_force(e, d);
            let mut bandwidth = forecast::bandwidth(d, &inputs.link);
            d.forecast = forecast::of(vm, d, &inputs.link, e.postcopy);
            let mut deadline_late = false;
            if let (Some(left), Some(f)) = (vm.deadline_s, d.forecast)
                && !(vm.postcopy || e.postcopy)
            {
                let room = (inputs.link.capacity - promised_total(inputs)).max(bandwidth);
                match meet_deadline(vm, d, f, left, bandwidth, room) {
                    Deadline::Met => {}
                    Deadline::Raised(b) => {
                        d.why(format!(
                            "deadline: guarantee raised from {} to {} so that the forecast ends \
                             within {:.0}% of the {left:.0} s left",
                            mbit(bandwidth),
                            mbit(b),
                            DEADLINE_SHARE * 100.0
                        ));
                        raise(d, b);
                        bandwidth = b;
                        d.forecast = forecast::of(vm, d, &inputs.link, false);
                    }
                    Deadline::Missed => {
                        d.why(format!(
                            "deadline: even {} (all that is not promised) does not end within \
                             {:.0}% of the {left:.0} s left: escalating now",
                            mbit(room),
                            DEADLINE_SHARE * 100.0
                        ));
                        raise(d, room);
                        bandwidth = room;
                        d.forecast = forecast::of(vm, d, &inputs.link, false);
                        deadline_late = true;
                    }
                }
            }
            if let Some(f) = d.forecast
                && plans_postcopy_after_pass(&self.cfg, vm, d, e, f, bandwidth)
            {
                // What will happen, not what pre-copy alone would do.
                d.forecast = Some(forecast::postcopy_after_pass(
                    vm.remaining,
                    forecast::dirty_rate(vm),
                    bandwidth,
                ));
            }
            if let Some(f) = d.forecast {
                d.why(f.describe());
            }
            let new_pass = vm.iteration != e.last_iteration;
            e.last_iteration = vm.iteration;
            if vm.postcopy || e.postcopy {
                continue;
            }
            if d.waits_its_turn() && !deadline_late {
                // Held at the floor while another migration goes first:
                // its forecast is that of a queue, not of a failure.
                d.why("escalation: waits its turn behind other migrations, not escalated");
                continue;
            }
            if deadline_late {
                // The starter's deadline does not wait for the pass to end.
            } else if vm.iteration <= 1 {
                // The bulk pass: reviewed once its dirty rate is sampled,
                // and only for a VM whose application neither has a
                // promise nor was measured sending. Switching early
                // resends the least, but hands the guest over with the most
                // pages still to fetch: a promised application waits for
                // the pass to end, when only the pages dirtied since are
                // missing. Whether it sends at this moment does not
                // matter: an on/off application found in its off phase was
                // switched at 0.8 s and then got nothing for 34 s
                // (onoff-30mbit-r10, SLA p5 0.00). An application without a
                // promise that was measured sending waits too
                // ([`sends`]).
                if e.bulk_reviewed
                    || vm.sampled_dirty_rate.is_none()
                    || d.forecast.is_none()
                    || waits_for_bulk_pass_end(vm)
                {
                    continue;
                }
                e.bulk_reviewed = true;
            } else if !new_pass {
                continue;
            }
            let Some(f) = d.forecast else { continue };
            let held = vm.switchover_held_s >= HELD_LATE_S;
            if held {
                d.why(format!(
                    "switchover held {:.0} s: QEMU's socket holds {:.0} KiB, more than the \
                     downtime limit drains at {}",
                    vm.switchover_held_s,
                    vm.stream_backlog / 1024.0,
                    mbit(bandwidth)
                ));
            }
            if !deadline_late
                && !held
                && !self
                    .cfg
                    .late(&f, forecast::floor_s(vm.remaining, bandwidth))
            {
                continue;
            }
            let candidates = candidates(&self.cfg, vm, e, bandwidth);
            let mut why: Vec<String> = candidates
                .iter()
                .map(|(tool, c)| match c {
                    Ok(c) => format!("{} costs {:.2} s", tool.as_str(), c.cost_s),
                    Err(no) => format!("{}: {no}", tool.as_str()),
                })
                .collect();
            let best = candidates
                .iter()
                .filter_map(|(_, c)| c.as_ref().ok())
                .min_by(|a, b| a.cost_s.total_cmp(&b.cost_s))
                .copied();
            let Some(best) = best else {
                why.insert(
                    0,
                    "escalation: late, but no armed tool keeps the promise".into(),
                );
                d.why(why.join("; "));
                continue;
            };
            match best.tool {
                Tool::PostCopy => {
                    e.postcopy = true;
                    e.postcopy_bandwidth = Some(bandwidth);
                }
                Tool::Throttle => e.throttle_pct = best.setting as u8,
                Tool::DowntimeLimit => e.downtime_s = Some(best.setting / 1000.0),
            }
            if !e.fired.contains(&best.tool) {
                e.fired.push(best.tool);
            }
            keep_in_force(e, d);
            *self.switches.entry(best.tool).or_default() += 1;
            why.insert(
                0,
                format!(
                    "escalation: fires {} (the cheapest of the armed tools)",
                    best.tool.as_str()
                ),
            );
            d.why(why.join("; "));
        }
    }
}

/// A pre-copy switchover held this long for QEMU's socket backlog
/// ([`super::switchover`]) counts as late: the passes go on, but the last
/// one cannot fit the downtime limit behind what the socket holds.
pub const HELD_LATE_S: f64 = 5.0;

/// Share of the time left before the starter's deadline that the forecast
/// may use: the rest is margin for the forecast's error.
pub const DEADLINE_SHARE: f64 = 0.8;

/// What a deadline asks of a migration's guarantee.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Deadline {
    /// The forecast already ends in time.
    Met,
    /// This guarantee (bytes/s) is the least that ends in time.
    Raised(f64),
    /// Not even all that is not promised ends in time.
    Missed,
}

/// The least guarantee between `bandwidth` and `room` whose forecast ends
/// within [`DEADLINE_SHARE`] of `left` seconds (bisection on the forecast,
/// which only gets earlier with more bandwidth).
fn meet_deadline(
    vm: &VmInputs,
    d: &VmDecision,
    f: forecast::Forecast,
    left: f64,
    bandwidth: f64,
    room: f64,
) -> Deadline {
    let target = DEADLINE_SHARE * left.max(0.0);
    let limit = d.qemu.downtime_limit_s.unwrap_or(vm.downtime_limit_s);
    let dirty = forecast::dirty_rate(vm);
    let ends_in_time = |b: f64| {
        forecast::forecast(vm.remaining, dirty, b, limit)
            .eta_s
            .is_some_and(|eta| eta <= target)
    };
    if f.eta_s.is_some_and(|eta| eta <= target) {
        return Deadline::Met;
    }
    if !ends_in_time(room) {
        return Deadline::Missed;
    }
    let (mut lo, mut hi) = (bandwidth, room);
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if ends_in_time(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Deadline::Raised(hi)
}

/// Sets the migration's guarantee to `rate` (its ceiling at least as high).
fn raise(d: &mut VmDecision, rate: f64) {
    let ceil = d.migration_ceil.unwrap_or(rate).max(rate);
    d.enforce(rate, ceil);
}

/// What the applications of all VMs are promised, bytes/s.
fn promised_total(inputs: &Inputs) -> f64 {
    inputs.vms.iter().filter_map(|v| v.reserve).sum()
}

impl Config {
    /// Whether forecast `f` is late against the `floor` for what is left.
    fn late(&self, f: &forecast::Forecast, floor: f64) -> bool {
        match f.eta_s {
            None => true,
            Some(eta) => eta > self.slack * floor && eta - floor > self.min_excess_s,
        }
    }
}

/// Whether escalation's plan for `vm` is post-copy at the end of its bulk
/// pass: its application is promised or was measured sending (so it is
/// not switched during the pass), post-copy is armed and allowed, and
/// pre-copy's forecast `f` is late.
fn plans_postcopy_after_pass(
    cfg: &Config,
    vm: &VmInputs,
    d: &VmDecision,
    e: &Escalation,
    f: forecast::Forecast,
    bandwidth: f64,
) -> bool {
    vm.iteration <= 1
        && !vm.postcopy
        && !e.postcopy
        && !d.waits_its_turn()
        && waits_for_bulk_pass_end(vm)
        && cfg.allow_postcopy
        && vm.armed.postcopy
        && cfg.late(&f, forecast::floor_s(vm.remaining, bandwidth))
}

/// Puts what escalation already fired into the decision.
fn keep_in_force(e: &Escalation, d: &mut VmDecision) {
    if e.postcopy {
        d.qemu.start_postcopy = true;
        // Post-copy's background push stays within the migration's
        // guarantee, so that the pages the guest waits for do not queue
        // behind it. Raising it to 90% of the link once the application
        // had left with the guest (its reservation no longer needed here)
        // shortened the demo's post-copy from 8.4 to 7.3 s, but its SLA
        // p5 fell from 0.68-0.74 to 0.26: the guest waited longer for
        // each page (2026-12-01, reverted).
        d.qemu.max_postcopy_bandwidth = e.postcopy_bandwidth;
    }
    if e.throttle_pct > 0 {
        d.qemu.cpu_throttle_pct = Some(e.throttle_pct);
    }
    if let Some(dt) = e.downtime_s {
        d.qemu.downtime_limit_s = Some(dt);
    }
}

/// Whether the VM's application has a promise: it may send at any time,
/// whatever it sends now (an on/off application's off phase is not a
/// release of its promise).
fn promised(vm: &VmInputs) -> bool {
    vm.reserve.is_some_and(|r| r > 0.0)
}

/// An application measured at this rate or more (bytes/s) at any point of
/// the agent's window counts as sending: 1 Mbit/s, well above the
/// keep-alives and DNS of a guest that serves nothing.
const SENDS_BPS: f64 = 125_000.0;

/// Whether the VM's application was measured sending, promise or not.
/// NRAC keeps the bandwidth it measures for such an application, so the
/// bulk pass does not hand its guest over with most of its memory still
/// to fetch: seed000-50mbit-net (one vCPU, a 15 Mbit/s stream, no promise)
/// was switched 1.1 s into its bulk pass in one run of three and its
/// application then got nothing for 19 s (SLA p5 0.00); the runs that
/// waited for the pass's end scored 0.996.
fn sends(vm: &VmInputs) -> bool {
    vm.app_history.iter().any(|b| *b >= SENDS_BPS)
}

/// Whether a late bulk pass of `vm` goes to post-copy only at its end,
/// never during it: its application is promised or was measured sending.
/// The bulk-pass review and the forecast of that plan
/// ([`plans_postcopy_after_pass`]) both ask this.
fn waits_for_bulk_pass_end(vm: &VmInputs) -> bool {
    promised(vm) || sends(vm)
}

/// Every tool with its cost, or why it cannot be used now.
fn candidates(
    cfg: &Config,
    vm: &VmInputs,
    e: &Escalation,
    bandwidth: f64,
) -> Vec<(Tool, Result<Candidate, String>)> {
    let floor = forecast::floor_s(vm.remaining, bandwidth);
    // The stop-and-copy also waits for what QEMU's socket still holds.
    let stop = forecast::floor_s(vm.remaining + vm.stream_backlog, bandwidth);
    let downtime = if !cfg.allow_downtime {
        Err("denied by configuration".to_owned())
    } else if stop * 1.1 > cfg.downtime_budget_s {
        Err(format!(
            "{:.0} ms to send what is left exceeds the budget {:.0} ms",
            stop * 1000.0,
            cfg.downtime_budget_s * 1000.0
        ))
    } else {
        Ok(Candidate {
            tool: Tool::DowntimeLimit,
            cost_s: stop,
            setting: (stop * 1.1 * 1000.0)
                .ceil()
                .max(vm.downtime_limit_s * 1000.0),
        })
    };
    let postcopy = if !cfg.allow_postcopy {
        Err("denied by configuration".to_owned())
    } else if !vm.armed.postcopy {
        Err("not armed (postcopy-ram was off when the migration started)".to_owned())
    } else {
        Ok(Candidate {
            tool: Tool::PostCopy,
            cost_s: cfg.postcopy_weight * floor,
            setting: 0.0,
        })
    };
    let throttle = throttle(cfg, vm, e, bandwidth);
    vec![
        (Tool::DowntimeLimit, downtime),
        (Tool::PostCopy, postcopy),
        (Tool::Throttle, throttle),
    ]
}

fn throttle(
    cfg: &Config,
    vm: &VmInputs,
    e: &Escalation,
    bandwidth: f64,
) -> Result<Candidate, String> {
    if !cfg.allow_throttle {
        return Err("denied by configuration".to_owned());
    }
    if !vm.armed.auto_converge {
        return Err("not armed (auto-converge was off when the migration started)".to_owned());
    }
    if promised(vm)
        && let Some(r) = vm.reserve
    {
        return Err(format!(
            "would slow the application's vCPUs, promised {} (sending {} now)",
            mbit(r),
            mbit(vm.app_mean(5)),
        ));
    }
    // The measured rate is already throttled by what escalation set.
    let applied = f64::from(e.throttle_pct).min(99.0) / 100.0;
    let raw = forecast::dirty_rate(vm) / (1.0 - applied);
    // Passes shrink by ρ = D/B, so the whole pre-copy takes about
    // floor / (1 − ρ): within `slack` × floor takes ρ ≤ 1 − 1/slack.
    let ratio = THROTTLE_RATIO.min(1.0 - 1.0 / cfg.slack.max(1.0 + 1e-9));
    let needed = 1.0 - ratio * bandwidth / raw.max(1.0);
    if needed <= applied {
        return Err(format!(
            "the dirty rate {} is already low enough against {}: throttling would not shorten the passes",
            mbit(raw * (1.0 - applied)),
            mbit(bandwidth)
        ));
    }
    let pct = (needed * 100.0).ceil().clamp(1.0, 99.0);
    if pct > f64::from(cfg.max_throttle_pct) {
        return Err(format!(
            "needs {pct:.0}% of the vCPUs, above the {}% allowed",
            cfg.max_throttle_pct
        ));
    }
    let t = pct / 100.0;
    let f = forecast::forecast(
        vm.remaining,
        raw * (1.0 - t),
        bandwidth,
        vm.downtime_limit_s,
    );
    let eta = f.eta_s.unwrap_or(f64::INFINITY);
    // The guest loses a share t of every second until the end, and then
    // all of the stop-and-copy.
    Ok(Candidate {
        tool: Tool::Throttle,
        cost_s: t * eta + f.downtime_s.unwrap_or(vm.downtime_limit_s),
        setting: pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Armed, Link};

    use crate::api::BYTES_PER_MBIT as MBIT;

    fn vm(iteration: u32, remaining_mb: f64, dirty_mbit: f64, armed: Armed) -> VmInputs {
        VmInputs {
            name: "vm".into(),
            predicted_dirty_pages: dirty_mbit * MBIT / 4096.0,
            iteration_s: 1.0,
            page_size: 4096.0,
            app_history: vec![15.0 * MBIT; 5],
            remaining: remaining_mb * 1e6,
            iteration,
            downtime_limit_s: 0.3,
            dirty_rate_history: vec![],
            reserve: Some(15.0 * MBIT),
            armed,
            ..VmInputs::unknown("vm")
        }
    }

    fn reasons(d: &VmDecision) -> String {
        d.reasons
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn review(esc: &mut Escalator, vm: VmInputs, rate_mbit: f64) -> VmDecision {
        let mut d = VmDecision::unenforced("vm");
        d.enforce(rate_mbit * MBIT, 30.0 * MBIT);
        let mut decision = Decision { vms: vec![d] };
        let inputs = Inputs {
            link: Link {
                capacity: 30.0 * MBIT,
                usage: 15.0 * MBIT,
                encap_bytes: 0.0,
            },
            vms: vec![vm],
        };
        esc.review(&inputs, &mut decision);
        decision.vms.remove(0)
    }

    const ALL: Armed = Armed {
        postcopy: true,
        postcopy_preempt: true,
        auto_converge: true,
    };

    #[test]
    fn a_converging_migration_gets_a_forecast_and_no_tool() {
        let mut esc = Escalator::new(Config::default());
        // 24 MB left, 3 Mbit/s dirty, 15 Mbit/s: converges soon.
        let d = review(&mut esc, vm(2, 24.0, 3.0, ALL), 15.0);
        let f = d.forecast.expect("forecast");
        assert!(f.converging());
        assert!(!d.qemu.start_postcopy && d.qemu.cpu_throttle_pct.is_none());
        assert!(esc.fired("vm").is_empty());
    }

    #[test]
    fn a_late_migration_with_a_sending_app_goes_post_copy_not_throttled() {
        let mut esc = Escalator::new(Config::default());
        // Bulk pass: never escalates, whatever the forecast.
        let d = review(&mut esc, vm(1, 100.0, 14.0, ALL), 15.0);
        assert!(!d.qemu.start_postcopy);
        // 12 of 15 Mbit/s dirty: converges, but far beyond the floor.
        let d = review(&mut esc, vm(2, 24.0, 12.0, ALL), 15.0);
        assert!(d.qemu.start_postcopy, "{:?}", d.reasons);
        assert_eq!(d.qemu.max_postcopy_bandwidth, Some(15.0 * MBIT));
        assert_eq!(d.qemu.cpu_throttle_pct, None);
        let all = reasons(&d);
        assert!(all.contains("would slow the application"), "{all}");
        assert_eq!(esc.fired("vm"), &[Tool::PostCopy]);
        // It stays in force on later ticks, and nothing more fires.
        let d = review(&mut esc, vm(3, 20.0, 12.0, ALL), 15.0);
        assert!(d.qemu.start_postcopy);
        assert_eq!(esc.switches.get(&Tool::PostCopy), Some(&1));
    }

    #[test]
    fn a_vm_without_a_promise_goes_post_copy_in_its_bulk_pass_once_sampled() {
        let mut esc = Escalator::new(Config::default());
        let mut quiet = vm(1, 100.0, 0.0, ALL);
        quiet.reserve = None;
        quiet.app_history = vec![0.0; 5];
        // No sample yet: nothing is known, nothing fires.
        let d = review(&mut esc, quiet.clone(), 30.0);
        assert!(!d.qemu.start_postcopy);
        // A sample but not yet what is left of the pass (the agent learns
        // it with the sample; seen on the testbed: 0, "converges now").
        let mut unknown = quiet.clone();
        unknown.sampled_dirty_rate = Some(40.0 * MBIT);
        unknown.remaining = 0.0;
        let d = review(&mut esc, unknown, 30.0);
        assert!(!d.qemu.start_postcopy);
        // Sampled at 40 Mbit/s against 30: pre-copy cannot converge.
        quiet.sampled_dirty_rate = Some(40.0 * MBIT);
        let d = review(&mut esc, quiet.clone(), 30.0);
        assert!(d.qemu.start_postcopy, "{:?}", d.reasons);
        // A promised application that sends waits for the bulk pass's end.
        let mut esc = Escalator::new(Config::default());
        let mut sending = vm(1, 100.0, 0.0, ALL);
        sending.sampled_dirty_rate = Some(40.0 * MBIT);
        let d = review(&mut esc, sending.clone(), 15.0);
        assert!(!d.qemu.start_postcopy, "{:?}", d.reasons);
        // So does one without a promise that was measured sending, and
        // its forecast is that plan.
        let mut esc = Escalator::new(Config::default());
        let unpromised = VmInputs {
            reserve: None,
            ..sending
        };
        let d = review(&mut esc, unpromised.clone(), 15.0);
        assert!(!d.qemu.start_postcopy, "{:?}", d.reasons);
        assert!(d.forecast.is_some_and(|f| f.postcopy_after_pass));
        // Keep-alives (0.1 Mbit/s) are not an application that sends.
        let mut esc = Escalator::new(Config::default());
        let idle = VmInputs {
            app_history: vec![0.1 * MBIT; 5],
            ..unpromised
        };
        let d = review(&mut esc, idle, 15.0);
        assert!(d.qemu.start_postcopy, "{:?}", d.reasons);
    }

    #[test]
    fn a_deadline_raises_the_guarantee_within_what_is_not_promised_or_escalates() {
        let with_deadline = |left: f64| VmInputs {
            deadline_s: Some(left),
            ..vm(2, 100.0, 2.0, ALL)
        };
        // 100 MB at 10 Mbit/s: ~84 s; 200 s left (160 usable): nothing to do.
        let mut esc = Escalator::new(Config::default());
        let d = review(&mut esc, with_deadline(200.0), 10.0);
        assert_eq!(d.migration_rate, Some(10.0 * MBIT));
        assert!(!reasons(&d).contains("deadline"), "{}", reasons(&d));
        // 90 s left (72 usable): raised to the least rate that makes it,
        // within the 15 Mbit/s the promise leaves.
        let mut esc = Escalator::new(Config::default());
        let d = review(&mut esc, with_deadline(90.0), 10.0);
        let rate = d.migration_rate.expect("rate");
        assert!(rate > 10.0 * MBIT && rate <= 15.0 * MBIT, "{}", mbit(rate));
        let eta = d.forecast.and_then(|f| f.eta_s).expect("eta");
        assert!(eta <= 0.8 * 90.0 + 1e-6 && eta > 0.8 * 90.0 - 0.5, "{eta}");
        assert!(
            reasons(&d).contains("deadline: guarantee raised"),
            "{}",
            reasons(&d)
        );
        assert!(!d.qemu.start_postcopy);
        // 30 s left: not even 15 Mbit/s makes it; post-copy now, in the
        // bulk pass of a sending promise too, and the promise kept.
        let mut esc = Escalator::new(Config::default());
        let bulk = VmInputs {
            iteration: 1,
            sampled_dirty_rate: Some(2.0 * MBIT),
            ..with_deadline(30.0)
        };
        let d = review(&mut esc, bulk, 10.0);
        assert_eq!(d.migration_rate, Some(15.0 * MBIT));
        assert!(d.qemu.start_postcopy, "{}", reasons(&d));
        assert!(reasons(&d).contains("escalating now"), "{}", reasons(&d));
    }

    #[test]
    fn the_bulk_pass_forecast_of_a_sending_promise_is_the_post_copy_plan() {
        let mut esc = Escalator::new(Config::default());
        // 90 MB left of the bulk pass at 15 Mbit/s (48 s), sampled dirtying
        // at 8 Mbit/s: pre-copy never ends in time; the plan is this pass,
        // then post-copy for the 48 MB dirtied meanwhile (25.6 s).
        let mut sending = vm(1, 90.0, 0.0, ALL);
        sending.sampled_dirty_rate = Some(8.0 * MBIT);
        let d = review(&mut esc, sending.clone(), 15.0);
        assert!(!d.qemu.start_postcopy, "waits for the pass to end");
        let f = d.forecast.expect("forecast");
        assert!(f.postcopy_after_pass);
        let pass = 90e6 / (15.0 * MBIT);
        let want = pass + 8.0 * MBIT * pass / (15.0 * MBIT);
        assert!((f.eta_s.expect("eta") - want).abs() < 1e-6, "{f:?}");
        assert!(reasons(&d).contains("post-copy at the end of this pass"));
        // Without post-copy armed it is pre-copy's forecast: nine more passes.
        let mut esc = Escalator::new(Config::default());
        let unarmed = VmInputs {
            armed: Armed::default(),
            ..sending
        };
        let f = review(&mut esc, unarmed, 15.0).forecast.expect("forecast");
        assert!(!f.postcopy_after_pass, "{f:?}");
        assert!(f.eta_s.expect("converges slowly") > want, "{f:?}");
    }

    #[test]
    fn without_post_copy_armed_a_quiet_vm_is_throttled_as_far_as_needed() {
        let armed = Armed {
            auto_converge: true,
            ..Armed::default()
        };
        let mut esc = Escalator::new(Config::default());
        let mut quiet = vm(2, 24.0, 20.0, armed);
        quiet.app_history = vec![0.0; 5];
        quiet.reserve = None;
        let d = review(&mut esc, quiet.clone(), 15.0);
        // 20 Mbit/s dirty against 15: passes must shrink by ρ ≤ 1 − 1/1.3
        // to end within 1.3 floors, so at most 3.46 Mbit/s dirty: 83%.
        assert_eq!(d.qemu.cpu_throttle_pct, Some(83), "{:?}", d.reasons);
        assert!(!d.qemu.start_postcopy);
        // A promised application that is quiet right now (an on/off one
        // between bursts) is not throttled: it would be when it sends.
        let mut esc = Escalator::new(Config::default());
        quiet.reserve = Some(15.0 * MBIT);
        let d = review(&mut esc, quiet, 15.0);
        assert_eq!(d.qemu.cpu_throttle_pct, None, "{:?}", d.reasons);
        assert!(reasons(&d).contains("would slow the application's vCPUs, promised"));
    }

    #[test]
    fn a_promised_application_quiet_at_the_start_waits_for_the_bulk_pass_to_end() {
        // Seen on onoff-30mbit-r10: the on/off application was in an off
        // phase when the bulk pass was sampled; post-copy fired at 0.8 s.
        let mut esc = Escalator::new(Config::default());
        let mut off_phase = vm(1, 100.0, 0.0, ALL);
        off_phase.app_history = vec![0.0; 5];
        off_phase.sampled_dirty_rate = Some(40.0 * MBIT);
        let d = review(&mut esc, off_phase, 15.0);
        assert!(!d.qemu.start_postcopy, "{:?}", d.reasons);
        // ... and its forecast is the plan: post-copy at the pass's end.
        assert!(d.forecast.is_some_and(|f| f.postcopy_after_pass));
    }

    #[test]
    fn a_quiet_vm_that_converges_slowly_goes_post_copy_not_a_token_throttle() {
        // Two VMs, the other one's application promised: this one's bulk
        // pass of 128 MB at 20 Mbit/s with 8.4 Mbit/s dirty converges
        // (ρ 0.42) in about 1.7 floors. A 1% throttle changes nothing (it
        // was once picked as the cheapest); post-copy ends at the floor.
        let mut esc = Escalator::new(Config::default());
        let mut quiet = vm(1, 128.0, 8.4, ALL);
        quiet.reserve = None;
        quiet.app_history = vec![0.0; 5];
        quiet.sampled_dirty_rate = Some(8.4 * MBIT);
        let d = review(&mut esc, quiet, 20.0);
        assert!(d.qemu.start_postcopy, "{:?}", d.reasons);
        assert_eq!(d.qemu.cpu_throttle_pct, None);
        let all = reasons(&d);
        assert!(all.contains("cpu-throttle costs"), "{all}");
    }

    #[test]
    fn the_pass_after_the_bulk_pass_is_judged_by_the_sampled_rate() {
        // The demo at the start of pass 2: 26.4 MB left at 12.8 Mbit/s, the
        // bulk pass measured 3 Mbit/s of dirtying (a page written many
        // times counts once over 71 s), calc-dirty-rate sampled 8.4. With
        // 3 the forecast sat just under 1.3 floors and post-copy waited a
        // pass; with 8.4 it is late now.
        let mut esc = Escalator::new(Config::default());
        let mut demo = vm(2, 26.4, 0.0, ALL);
        demo.dirty_rate_history = vec![3.0 * MBIT];
        demo.sampled_dirty_rate = Some(8.4 * MBIT);
        let d = review(&mut esc, demo.clone(), 12.8);
        assert!(d.qemu.start_postcopy, "{:?}", d.reasons);
        // Two passes on, the last pass's own sample rules: at 3 Mbit/s
        // the forecast is not late.
        let mut esc = Escalator::new(Config::default());
        demo.iteration = 4;
        demo.sampled_dirty_rate = Some(3.0 * MBIT);
        let d = review(&mut esc, demo, 12.8);
        assert!(!d.qemu.start_postcopy, "{:?}", d.reasons);
    }

    #[test]
    fn nothing_armed_means_nothing_fires_and_the_reason_says_why() {
        let mut esc = Escalator::new(Config::default());
        let d = review(&mut esc, vm(2, 24.0, 20.0, Armed::default()), 15.0);
        assert!(!d.qemu.start_postcopy && d.qemu.cpu_throttle_pct.is_none());
        assert!(d.qemu.downtime_limit_s.is_none());
        let all = reasons(&d);
        assert!(all.contains("no armed tool"), "{all}");
        assert!(all.contains("does not converge"), "{all}");
        assert!(all.contains("not armed (postcopy-ram"), "{all}");
    }

    #[test]
    fn a_switchover_held_for_the_socket_backlog_is_late_and_goes_post_copy() {
        let armed = Armed {
            postcopy: true,
            ..Armed::default()
        };
        // 0.5 MB left converges at once by the forecast, but 0.8 MB sit in
        // QEMU's socket: 0.69 s at 15 Mbit/s, over the 0.5 s budget.
        let mut held = vm(5, 0.5, 2.0, armed);
        held.reserve = None;
        held.app_history = vec![0.0; 5];
        held.stream_backlog = 0.8e6;
        held.switchover_held_s = 2.0;
        let mut esc = Escalator::new(Config::default());
        let d = review(&mut esc, held.clone(), 15.0);
        assert!(
            !d.qemu.start_postcopy,
            "held 2 s is not late yet: {:?}",
            d.reasons
        );
        held.iteration = 6;
        held.switchover_held_s = HELD_LATE_S;
        let d = review(&mut esc, held, 15.0);
        assert!(d.qemu.start_postcopy, "{:?}", d.reasons);
        let all = reasons(&d);
        assert!(all.contains("switchover held 5 s"), "{all}");
        assert!(all.contains("exceeds the budget"), "{all}");
    }

    #[test]
    fn a_small_tail_is_finished_by_a_downtime_within_budget() {
        let mut esc = Escalator::new(Config::default());
        // 0.6 MB at 15 Mbit/s is 0.32 s: just above the 0.3 s limit, far
        // beyond it at this dirty rate, inside the 0.5 s budget; cheaper
        // than post-copy only when post-copy's weight is high.
        let cfg = Config {
            postcopy_weight: 2.0,
            min_excess_s: 0.0,
            ..Config::default()
        };
        esc.cfg = cfg;
        let d = review(&mut esc, vm(5, 0.6, 15.5, ALL), 15.0);
        let dt = d.qemu.downtime_limit_s.expect("raised");
        assert!(dt > 0.3 && dt <= 0.5, "{dt}");
        assert_eq!(esc.fired("vm"), &[Tool::DowntimeLimit]);
    }

    #[test]
    fn a_migration_waiting_its_turn_is_not_escalated() {
        for queued in [false, true] {
            let mut esc = Escalator::new(Config::default());
            let mut d = VmDecision::unenforced("vm");
            d.enforce(1.5 * MBIT, 1.5 * MBIT);
            (d.delayed, d.queued) = (!queued, queued);
            let mut decision = Decision { vms: vec![d] };
            let inputs = Inputs {
                link: Link {
                    capacity: 30.0 * MBIT,
                    usage: 0.0,
                    encap_bytes: 0.0,
                },
                vms: vec![vm(3, 24.0, 10.0, ALL)],
            };
            esc.review(&inputs, &mut decision);
            assert!(!decision.vms[0].qemu.start_postcopy, "queued {queued}");
            assert!(esc.fired("vm").is_empty());
        }
    }

    #[test]
    fn a_quiet_bulk_pass_queued_behind_another_is_reviewed_on_its_turn() {
        // Seen on four VMs (2026-12-01): the second quiet VM, left the
        // floor (1.4 Mbit/s) by the first one's bulk pass, was reviewed
        // as late once its dirty rate was sampled and switched to
        // post-copy with 100 MB left; its post-copy took 100 s and its
        // switch paused it 8.5 s. Queued, it is not reviewed ...
        let mut esc = Escalator::new(Config::default());
        let mut bulk = vm(1, 100.0, 8.0, ALL);
        bulk.reserve = None;
        bulk.app_history = vec![0.0; 5];
        bulk.sampled_dirty_rate = Some(8.0 * MBIT);
        let queued = |q: bool, guarantee_mbit: f64| {
            let mut d = VmDecision::unenforced("vm");
            d.enforce(guarantee_mbit * MBIT, 30.0 * MBIT);
            d.queued = q;
            Decision { vms: vec![d] }
        };
        let inputs = Inputs {
            link: Link {
                capacity: 30.0 * MBIT,
                usage: 0.0,
                encap_bytes: 0.0,
            },
            vms: vec![bulk],
        };
        let mut d = queued(true, 1.4);
        esc.review(&inputs, &mut d);
        assert!(esc.fired("vm").is_empty());
        // ... until its turn comes with the link: then its bulk pass is
        // reviewed (100 MB at 28 Mbit/s while dirtying 8: late).
        let mut d = queued(false, 28.0);
        esc.review(&inputs, &mut d);
        assert_eq!(esc.fired("vm"), &[Tool::PostCopy]);
    }

    #[test]
    fn a_denied_tool_is_never_fired() {
        let mut esc = Escalator::new(Config {
            allow_postcopy: false,
            ..Config::default()
        });
        let d = review(&mut esc, vm(2, 24.0, 20.0, ALL), 15.0);
        assert!(!d.qemu.start_postcopy);
        let all = reasons(&d);
        assert!(all.contains("post-copy: denied by configuration"), "{all}");
    }
}
