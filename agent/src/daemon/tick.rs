//! The control loop: each tick (and whenever a VM task has news) it reads
//! the datapath's counters, predicts each migrating VM's dirty pages, lets
//! the policy decide, has [`super::enforce`] put the decision in the kernel,
//! and publishes the decisions (the VM tasks mirror them to QEMU) with their
//! reasons and metrics.

use crate::api::units;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracing::{info, warn};
use vmbw_common::{Direction, class};

use super::{
    enforce::enforce,
    state::{APP_HISTORY, ClusterTerms, EXPLAIN_DEPTH, Shared, State, VmState, allocation},
};
use crate::{
    api::{ExplainedDecision, MigrationPhase},
    control::{
        Decision, Inputs, Link, VmDecision, VmInputs,
        enforce::{Allotment, allot},
        policy::Controller,
    },
    datapath::{DirectionCounters, VmCounters},
    predict::{GreyGm1n, Predictor as _},
    shaping::{Enforcement, Shaper},
};

/// An unchanged allotment is checked against the kernel this often (one
/// netlink dump): a tree someone deleted or changed is put back.
const TREE_RECHECK: Duration = Duration::from_secs(5);
/// Rates are measured over at least this long. A tick woken right after
/// another (a VM task's news) keeps the rates it had: the bytes a shaped,
/// bursty stream moved in a few milliseconds, divided by those
/// milliseconds, read as several times the link (a 218 Mbit/s "drain" on a
/// 30 Mbit/s link once held a switch-over for 2.7 s).
const MIN_RATE_INTERVAL: Duration = Duration::from_millis(250);

pub struct ControlLoop {
    pub shared: Arc<Shared>,
    pub controller: Controller,
    pub policy_name: String,
    /// None in observe mode.
    pub shaper: Option<Shaper>,
    pub enforcement: Enforcement,
    /// N_t, bytes/s.
    pub link: f64,
    /// Tunnel bytes per frame on the uplink (`uplink.encapsulation`).
    pub encap_bytes: f64,
    predictor: GreyGm1n,
    /// When the rates were last measured (the counters below were read).
    last_at: Instant,
    last_dir: DirectionCounters,
    last_vm: BTreeMap<String, VmCounters>,
    escalations: BTreeMap<String, BTreeSet<String>>,
    /// The allotment last put in the kernel: an unchanged one costs no netlink
    /// dump and no map writes.
    applied: Option<Allotment>,
    /// When `applied` was last put in (or checked against) the kernel.
    applied_at: Option<Instant>,
}

impl ControlLoop {
    pub fn new(
        shared: Arc<Shared>,
        controller: Controller,
        policy_name: String,
        shaper: Option<Shaper>,
        enforcement: Enforcement,
        link: f64,
    ) -> Self {
        ControlLoop {
            shared,
            controller,
            policy_name,
            shaper,
            enforcement,
            link,
            encap_bytes: 0.0,
            predictor: GreyGm1n::default(),
            last_at: Instant::now(),
            last_dir: DirectionCounters::default(),
            last_vm: BTreeMap::new(),
            escalations: BTreeMap::new(),
            applied: None,
            applied_at: None,
        }
    }

    /// One round: measure, decide, enforce, publish.
    pub async fn tick(&mut self) {
        let started = Instant::now();
        self.cluster_terms();
        let measured = self.measure(started);
        let inputs = self.inputs(&measured);
        let decision = self.decide(&inputs);
        self.enforce(&decision, &measured.slots).await;
        self.publish(&inputs, &decision);
        self.record_escalations(&inputs);
        self.shared.state().last_tick = Some(started);
        self.shared.metrics.tick_took(started.elapsed());
        self.shared
            .metrics
            .netlink_requests(crate::shaping::requests_sent());
    }

    /// What KubeVirt says of the VMs the agent follows (their VMIs'
    /// promises and migration terms), copied out of discovery first, then
    /// into the state: never both locks at once.
    fn cluster_terms(&self) {
        let Some(discovery) = self.shared.kubevirt.get() else {
            return;
        };
        let found: Vec<(String, ClusterTerms)> = match discovery.lock() {
            Ok(d) => d
                .vms()
                .into_iter()
                .map(|v| {
                    let terms = ClusterTerms {
                        reserve_mbit: v.reserve_mbit,
                        migration: v.terms,
                    };
                    (v.name, terms)
                })
                .collect(),
            Err(_) => return,
        };
        let mut state = self.shared.state();
        for (name, terms) in found {
            if let Some(v) = state.vms.get_mut(&name) {
                v.cluster = terms;
            }
        }
    }

    /// Reads the datapath's counters (datapath lock only).
    fn measure(&mut self, now: Instant) -> Measured {
        let since = now.saturating_duration_since(self.last_at);
        let fresh = since >= MIN_RATE_INTERVAL;
        if fresh {
            self.last_at = now;
        }
        let slots: Vec<(String, u32)> = self
            .shared
            .state()
            .vms
            .iter()
            .map(|(n, v)| (n.clone(), v.slot))
            .collect();
        let dp = self.shared.datapath();
        let uplink = dp.counters().unwrap_or_else(|e| {
            warn!(error = %crate::api::errors::chain(&e), "reading uplink counters");
            self.last_dir
        });
        let below = slots.iter().map(|(_, s)| s + 1).max().unwrap_or(0);
        let vms = match dp.vm_counters_below(below) {
            Ok(all) => slots
                .iter()
                .filter_map(|(n, s)| all.get(*s as usize).map(|c| (n.clone(), *c)))
                .collect(),
            Err(e) => {
                warn!(error = %crate::api::errors::chain(&e), "reading the VMs' counters");
                Vec::new()
            }
        };
        Measured {
            dt: fresh.then_some(since.as_secs_f64()),
            slots,
            uplink,
            vms,
        }
    }

    /// Turns the counters into rates and histories, and gathers what the
    /// policy needs about each migrating VM.
    fn inputs(&mut self, m: &Measured) -> Inputs {
        let shared = self.shared.clone();
        let mut st = shared.state();
        if let Some(dt) = m.dt {
            let uplink_egress = per_second(m.uplink.egress.bytes, self.last_dir.egress.bytes, dt);
            self.last_dir = m.uplink;
            let migration_egress = self.record_traffic(&mut st, m, dt);
            // N_u: everything but the migrations.
            st.link_usage = (uplink_egress - migration_egress).max(0.0);
        }
        let link = Link {
            capacity: self.link,
            usage: st.link_usage,
            encap_bytes: self.encap_bytes,
        };
        let vms = st
            .vms
            .iter_mut()
            .filter(|(_, v)| v.migrating())
            .map(|(name, v)| self.vm_inputs(name, v))
            .collect();
        Inputs { link, vms }
    }

    /// Each VM's class rates and application history from its counters;
    /// returns the migrations' egress, bytes/s.
    fn record_traffic(&mut self, st: &mut State, m: &Measured, dt: f64) -> f64 {
        let mut migration_egress = 0.0;
        for (name, c) in &m.vms {
            let Some(v) = st.vms.get_mut(name) else {
                continue;
            };
            v.counters = *c;
            let prev = match self.last_vm.get_mut(name) {
                Some(last) => std::mem::replace(last, *c),
                None => {
                    // First sight: no rate yet. A zero in the application's
                    // history would read as an idle application, and a
                    // migration starting now would be given its bandwidth.
                    self.last_vm.insert(name.clone(), *c);
                    continue;
                }
            };
            for cl in [class::OTHER, class::MIGRATION, class::APPLICATION] {
                for d in Direction::ALL {
                    let (now, before) = (c.class(cl).get(d), prev.class(cl).get(d));
                    let r = per_second(now.bytes, before.bytes, dt);
                    // A quiet class whose series already say so is left
                    // alone: most VMs are quiet most of the time, and the
                    // label lookups were 4% of the agent's CPU with 64.
                    let unchanged = now == before && v.rates.get(cl, d) == 0.0;
                    v.rates.set(cl, d, r);
                    if !unchanged {
                        self.shared.metrics.class_traffic(name, cl, d, now, r);
                    }
                }
            }
            migration_egress += v.rates.get(class::MIGRATION, Direction::Egress);
            v.app_history
                .push_back(v.rates.get(class::APPLICATION, Direction::Egress));
            while v.app_history.len() > APP_HISTORY {
                v.app_history.pop_front();
            }
        }
        // VMs that left (discovery removes them) start afresh if they return.
        self.last_vm.retain(|n, _| st.vms.contains_key(n));
        migration_egress
    }

    /// One migrating VM as the policy sees it; remembers the prediction
    /// made for its current iteration.
    fn vm_inputs(&self, name: &str, v: &mut VmState) -> VmInputs {
        let predicted = if v.rows.is_empty() {
            0.0
        } else {
            self.predictor
                .predict(&v.rows)
                .map(|p| p.value)
                .unwrap_or(0.0)
        };
        v.predicted.entry(v.iteration).or_insert(predicted);
        // Before the first iteration ends: the bulk pass at half the link.
        let iteration_s = v
            .iter_s
            .last()
            .copied()
            .unwrap_or_else(|| v.remaining as f64 / (self.link / 2.0).max(1.0));
        VmInputs {
            name: name.to_owned(),
            predicted_dirty_pages: predicted,
            iteration_s,
            page_size: v.page_size,
            app_history: v.app_history.iter().copied().collect(),
            remaining: v.remaining as f64,
            iteration: v.iteration,
            downtime_limit_s: v.downtime_limit_s(),
            dirty_rate_history: v.dirty_rates.clone(),
            reserve: v.reserve(),
            armed: v.armed,
            postcopy: v.phase == MigrationPhase::PostCopy,
            sampled_dirty_rate: v.sampled_dirty_rate,
            deadline_s: v.deadline_s(),
            stream_backlog: v.stream_backlog as f64,
            switchover_held_s: v.switchover_held_s().unwrap_or(0.0),
            drain_rate: v.drain.rate(),
            send_rate: v.drain.send_rate(),
            pass_elapsed_s: v.pass_elapsed_s(),
            used_memory: v.used_memory,
            unsent_zero: v.unsent_zero,
            sampled_working_set: v.sampled_working_set,
        }
    }

    fn decide(&mut self, inputs: &Inputs) -> Decision {
        if inputs.vms.is_empty() {
            Decision::default()
        } else {
            self.controller.decide(inputs)
        }
    }

    /// Puts the decision in the kernel unless it is already there (an
    /// unchanged allotment costs no netlink dump and no map writes, except
    /// every [`TREE_RECHECK`], which finds a tree someone else changed).
    /// No lock is held across the netlink round trips.
    async fn enforce(&mut self, decision: &Decision, slots: &[(String, u32)]) {
        let Some(shaper) = self.shaper.as_mut() else {
            return;
        };
        let metrics = &self.shared.metrics;
        let slot_map: BTreeMap<String, u16> =
            slots.iter().map(|(n, s)| (n.clone(), *s as u16)).collect();
        let allotment = match allot(decision, self.link, &slot_map, self.enforcement) {
            Ok(a)
                if self.applied.as_ref() == Some(&a)
                    && self.applied_at.is_some_and(|t| t.elapsed() < TREE_RECHECK) =>
            {
                return;
            }
            Ok(a) => a,
            Err(e) => {
                warn!(error = %crate::api::errors::chain(&e), "planning enforcement");
                metrics.error("enforce");
                return;
            }
        };
        let all: Vec<u32> = slots.iter().map(|(_, s)| *s).collect();
        match enforce(&allotment, &all, shaper, &self.shared.datapath).await {
            Ok(done) => {
                for e in &done.steering_errors {
                    warn!(error = %crate::api::errors::chain(&e), "steering");
                }
                if allotment.reservations_scaled < 1.0 {
                    warn!(
                        factor = allotment.reservations_scaled,
                        "the applications' reservations alone exceed the link: scaled down, promises are not kept"
                    );
                } else if allotment.scaled < 1.0 {
                    warn!(
                        factor = allotment.scaled,
                        "migration guarantees scaled down to fit beside the reservations"
                    );
                }
                if let Some(found) = &done.report.root_restored {
                    warn!(found = %found, "vmbw's HTB root had been removed or replaced; restored");
                    metrics.error("shaping-root-restored");
                }
                self.applied = Some(allotment);
                self.applied_at = Some(Instant::now());
            }
            Err(e) => {
                warn!(error = %crate::api::errors::chain(&e), "enforcing");
                metrics.error(e.metric_label());
            }
        }
    }

    /// Hands the decisions to the VM tasks (which mirror them to QEMU),
    /// with their explanations and metrics.
    fn publish(&self, inputs: &Inputs, decision: &Decision) {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut st = self.shared.state();
        for (name, v) in st.vms.iter_mut() {
            let input = inputs.vms.iter().find(|i| &i.name == name);
            if input.is_none() {
                if v.decision.take().is_some() {
                    // The migration ended: its forecast is history.
                    self.shared.metrics.forecast_ended(name);
                }
                continue;
            }
            let Some(d) = decision.vms.iter().find(|d| &d.name == name) else {
                continue;
            };
            self.explain(v, &inputs.link, input, d, now_unix);
            if let Some(at) = v.sample_at.take() {
                // Its class rates were put in the kernel before this publish.
                self.shared.metrics.sample_enforced_after(at.elapsed());
            }
            self.shared.metrics.allocation(d);
            if let Some(r) = v.reserve() {
                self.shared.metrics.promised(name, r);
            }
            v.decision = Some(d.clone());
            v.decided += 1;
        }
    }

    /// Adds `d` to the VM's `explain` history when the allocation or the
    /// iteration changed.
    fn explain(
        &self,
        v: &mut VmState,
        link: &Link,
        input: Option<&VmInputs>,
        d: &VmDecision,
        at_unix_sec: f64,
    ) {
        let allocation = allocation(Some(d));
        let changed = v
            .explain
            .back()
            .is_none_or(|e| e.iteration != v.iteration || e.allocation != allocation);
        if !changed {
            return;
        }
        let mut named = BTreeMap::new();
        named.insert("link_capacity_bytes_per_sec".to_owned(), link.capacity);
        named.insert("link_usage_bytes_per_sec".to_owned(), link.usage);
        named.insert("free_bytes_per_sec".to_owned(), link.free());
        if let Some(i) = input {
            named.insert("predicted_dirty_pages".to_owned(), i.predicted_dirty_pages);
            named.insert("dirty_rate_bytes_per_sec".to_owned(), i.dirty_rate());
            named.insert("iteration_seconds".to_owned(), i.iteration_s);
            named.insert("remaining_bytes".to_owned(), i.remaining);
            named.insert("app_mean_bytes_per_sec".to_owned(), i.app_mean(5));
            if let Some(r) = i.reserve {
                named.insert("app_reserve_promised_bytes_per_sec".to_owned(), r);
            }
            // Beside the forecast's ETA below: the starter's deadline.
            if let Some(left) = i.deadline_s {
                named.insert("deadline_left_seconds".to_owned(), left);
            }
        }
        if let Some(f) = &d.published_forecast() {
            named.insert(
                "forecast_converging".to_owned(),
                if f.converging() { 1.0 } else { 0.0 },
            );
            if let Some(eta) = f.eta_s {
                named.insert("forecast_eta_seconds".to_owned(), eta);
            }
            if let Some(dt) = f.downtime_s {
                named.insert("forecast_downtime_seconds".to_owned(), dt);
            }
        }
        v.explain.push_back(ExplainedDecision {
            at_unix_sec,
            iteration: v.iteration,
            policy: self.policy_name.clone(),
            inputs: named,
            allocation,
            reasons: d.reasons.iter().map(|r| r.0.clone()).collect(),
        });
        while v.explain.len() > EXPLAIN_DEPTH {
            v.explain.pop_front();
        }
        info!(vm = %d.name, iteration = v.iteration, guarantee_mbit = d.migration_rate.map(units::mbit), reserve_mbit = units::mbit(d.app_reserve), "decision");
    }

    /// Counts each escalation step (AdaMig's or escalation's) once per VM.
    fn record_escalations(&mut self, inputs: &Inputs) {
        let c = &self.controller;
        for vm in &inputs.vms {
            let mut steps: Vec<&'static str> = Vec::new();
            if let Some(w) = c.watchdog.as_ref() {
                steps.extend(w.taken(&vm.name).iter().map(|s| s.as_str()));
            }
            if let Some(e) = c.escalator.as_ref() {
                steps.extend(e.fired(&vm.name).iter().map(|t| t.as_str()));
            }
            let seen = self.escalations.entry(vm.name.clone()).or_default();
            for step in steps {
                if seen.insert(step.to_owned()) {
                    self.shared.metrics.policy_switch(&vm.name, step);
                    info!(vm = %vm.name, step, "escalation");
                }
            }
        }
    }
}

/// One tick's counter readings.
struct Measured {
    /// Seconds the counters moved over since the rates were last measured;
    /// None when that is under [`MIN_RATE_INTERVAL`] (the rates stand).
    dt: Option<f64>,
    /// Every VM's slot.
    slots: Vec<(String, u32)>,
    uplink: DirectionCounters,
    vms: Vec<(String, VmCounters)>,
}

/// A counter's rate over `dt` seconds (a counter that went back: 0).
fn per_second(now: u64, before: u64, dt: f64) -> f64 {
    now.saturating_sub(before) as f64 / dt
}
