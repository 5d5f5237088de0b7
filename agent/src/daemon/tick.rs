//! The control loop: each tick (and whenever a VM task has news) it reads
//! the datapath's counters, predicts each migrating VM's dirty pages, lets
//! the policy decide, reconciles the HTB tree and the datapath's steering,
//! and publishes the decisions (the VM tasks mirror them to QEMU) with their
//! reasons and metrics.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tracing::{info, warn};
use vmbw_common::{Direction, class};

use super::state::{APP_HISTORY, EXPLAIN_DEPTH, Shared, allocation};
use crate::{
    api::ExplainedDecision,
    control::{Decision, Inputs, Link, VmInputs, enforce, policy::Controller},
    datapath::{DirectionCounters, VmCounters},
    metrics::Metrics,
    predict::{GreyGm1n, Predictor as _},
    shaping::{Enforcement, Shaper},
};

/// QEMU's default downtime limit, seconds (until the policy raises it).
const QEMU_DOWNTIME_S: f64 = 0.3;

pub struct ControlLoop {
    pub shared: Arc<Shared>,
    pub controller: Controller,
    pub policy_name: String,
    /// None in observe mode.
    pub shaper: Option<Shaper>,
    pub enforcement: Enforcement,
    /// N_t, bytes/s.
    pub link: f64,
    predictor: GreyGm1n,
    last_at: Instant,
    last_dir: DirectionCounters,
    last_vm: BTreeMap<String, VmCounters>,
    escalations: BTreeMap<String, BTreeSet<String>>,
    /// The plan last put in the kernel: an unchanged plan costs no netlink
    /// dump and no map writes.
    applied: Option<enforce::Plan>,
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
            predictor: GreyGm1n::default(),
            last_at: Instant::now(),
            last_dir: DirectionCounters::default(),
            last_vm: BTreeMap::new(),
            escalations: BTreeMap::new(),
            applied: None,
        }
    }

    /// One round: measure, decide, enforce, publish.
    pub async fn tick(&mut self) {
        let started = Instant::now();
        let dt = started.duration_since(self.last_at).as_secs_f64().max(0.05);
        self.last_at = started;
        let shared = self.shared.clone();

        // 1. Counters (datapath lock only).
        let slots: Vec<(String, u32)> = shared
            .state()
            .vms
            .iter()
            .map(|(n, v)| (n.clone(), v.slot))
            .collect();
        let (dir, per_vm) = {
            let dp = shared.datapath();
            let dir = dp.counters().unwrap_or_else(|e| {
                warn!(error = %e, "reading uplink counters");
                self.last_dir
            });
            let per_vm: Vec<(String, VmCounters)> = slots
                .iter()
                .filter_map(|(n, s)| dp.vm_counters(*s).ok().map(|c| (n.clone(), c)))
                .collect();
            (dir, per_vm)
        };
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
        let uplink_egress = rate(dir.egress.bytes, self.last_dir.egress.bytes);
        self.last_dir = dir;

        // 2. State: traffic, histories; inputs of the migrating VMs.
        let mut migration_egress = 0.0;
        let inputs = {
            let mut st = shared.state();
            for (name, c) in &per_vm {
                let prev = self.last_vm.get(name).copied().unwrap_or(*c);
                let Some(v) = st.vms.get_mut(name) else {
                    continue;
                };
                for cl in [class::OTHER, class::MIGRATION, class::APPLICATION] {
                    for d in Direction::ALL {
                        let r = rate(c.class(cl).get(d).bytes, prev.class(cl).get(d).bytes);
                        v.rates.insert((cl, d.index() as u8), r);
                        publish_counters(&shared.metrics, name, cl, d, c, r);
                    }
                }
                migration_egress += v.rates.get(&(class::MIGRATION, 0)).copied().unwrap_or(0.0);
                let app = v
                    .rates
                    .get(&(class::APPLICATION, 0))
                    .copied()
                    .unwrap_or(0.0);
                v.app_history.push_back(app);
                while v.app_history.len() > APP_HISTORY {
                    v.app_history.pop_front();
                }
                v.counters = *c;
                self.last_vm.insert(name.clone(), *c);
            }
            st.link_usage = (uplink_egress - migration_egress).max(0.0);
            let link = Link {
                capacity: self.link,
                usage: st.link_usage,
            };
            let mut vms = Vec::new();
            for (name, v) in st.vms.iter_mut().filter(|(_, v)| v.migrating()) {
                let predicted = if v.rows.is_empty() {
                    0.0
                } else {
                    self.predictor
                        .predict(&v.rows)
                        .map(|p| p.value)
                        .unwrap_or(0.0)
                };
                v.predicted.entry(v.iteration).or_insert(predicted);
                let iteration_s = v
                    .iter_s
                    .last()
                    .copied()
                    .unwrap_or_else(|| v.remaining as f64 / (self.link / 2.0).max(1.0));
                vms.push(VmInputs {
                    name: name.clone(),
                    predicted_dirty_pages: predicted,
                    iteration_s,
                    page_size: v.page_size,
                    app_history: v.app_history.iter().copied().collect(),
                    remaining: v.remaining as f64,
                    iteration: v.iteration,
                    downtime_limit_s: v.qemu_params().downtime_limit_s.unwrap_or(QEMU_DOWNTIME_S),
                    dirty_rate_history: v.dirty_rates.clone(),
                });
            }
            Inputs { link, vms }
        };

        // 3. Decide.
        let decision = if inputs.vms.is_empty() {
            Decision::default()
        } else {
            self.controller.decide(&inputs)
        };

        // 4. Enforce (no lock held across the netlink round trips).
        if let Some(shaper) = self.shaper.as_mut() {
            let slot_map: BTreeMap<String, u16> =
                slots.iter().map(|(n, s)| (n.clone(), *s as u16)).collect();
            match enforce::plan(&decision, self.link, &slot_map, self.enforcement) {
                Ok(plan) if self.applied.as_ref() == Some(&plan) => {}
                Ok(plan) => {
                    let all: Vec<u32> = slots.iter().map(|(_, s)| *s).collect();
                    match super::enforce::enforce(&plan, &all, shaper, &shared.datapath).await {
                        Ok(done) => {
                            for e in &done.steering_errors {
                                warn!(error = %e, "steering");
                            }
                            if plan.scaled < 1.0 {
                                warn!(
                                    factor = plan.scaled,
                                    "guarantees scaled down to fit the link"
                                );
                            }
                            self.applied = Some(plan);
                        }
                        Err(e) => {
                            warn!(error = %e, "enforcing");
                            shared
                                .metrics
                                .errors
                                .with_label_values(&[e.metric_label()])
                                .inc();
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "planning enforcement");
                    shared.metrics.errors.with_label_values(&["enforce"]).inc();
                }
            }
        }

        // 5. Publish.
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        {
            let mut st = shared.state();
            let migrating: BTreeSet<String> = inputs.vms.iter().map(|v| v.name.clone()).collect();
            for (name, v) in st.vms.iter_mut() {
                if !migrating.contains(name) {
                    v.decision = None;
                    continue;
                }
                let Some(d) = decision.vms.iter().find(|d| &d.name == name) else {
                    continue;
                };
                let input = inputs.vms.iter().find(|i| &i.name == name);
                let alloc = allocation(Some(d));
                let changed = v
                    .explain
                    .back()
                    .is_none_or(|e| e.iteration != v.iteration || e.allocation != alloc);
                if changed {
                    let mut named = BTreeMap::new();
                    named.insert(
                        "link_capacity_bytes_per_sec".to_owned(),
                        inputs.link.capacity,
                    );
                    named.insert("link_usage_bytes_per_sec".to_owned(), inputs.link.usage);
                    named.insert("free_bytes_per_sec".to_owned(), inputs.link.free());
                    if let Some(i) = input {
                        named.insert("predicted_dirty_pages".to_owned(), i.predicted_dirty_pages);
                        named.insert("dirty_rate_bytes_per_sec".to_owned(), i.dirty_rate());
                        named.insert("iteration_seconds".to_owned(), i.iteration_s);
                        named.insert("remaining_bytes".to_owned(), i.remaining);
                        named.insert("app_mean_bytes_per_sec".to_owned(), i.app_mean(5));
                    }
                    v.explain.push_back(ExplainedDecision {
                        at_unix_sec: now_unix,
                        iteration: v.iteration,
                        policy: self.policy_name.clone(),
                        inputs: named,
                        allocation: alloc,
                        reasons: d.reasons.iter().map(|r| r.0.clone()).collect(),
                    });
                    while v.explain.len() > EXPLAIN_DEPTH {
                        v.explain.pop_front();
                    }
                    info!(vm = %name, iteration = v.iteration, guarantee_mbit = d.migration_rate.map(|r| r * 8.0 / 1e6), reserve_mbit = d.app_reserve * 8.0 / 1e6, "decision");
                }
                if let Some(at) = v.sample_at.take() {
                    // Class rates were reconciled above, before this publish.
                    shared
                        .metrics
                        .sample_to_enforce_seconds
                        .observe(at.elapsed().as_secs_f64());
                }
                let m = &shared.metrics.allocation;
                m.with_label_values(&[name, "guarantee"])
                    .set(d.migration_rate.unwrap_or(0.0));
                m.with_label_values(&[name, "ceiling"])
                    .set(d.migration_ceil.unwrap_or(0.0));
                m.with_label_values(&[name, "reservation"])
                    .set(d.app_reserve);
                v.decision = Some(d.clone());
                v.decided += 1;
            }
        }
        if let Some(w) = self.controller.watchdog.as_ref() {
            for vm in &inputs.vms {
                let seen = self.escalations.entry(vm.name.clone()).or_default();
                for step in w.taken(&vm.name) {
                    if seen.insert(step.as_str().to_owned()) {
                        shared
                            .metrics
                            .policy_switches
                            .with_label_values(&[&vm.name, step.as_str()])
                            .inc();
                        info!(vm = %vm.name, step = step.as_str(), "adamig escalation");
                    }
                }
            }
        }
        shared
            .metrics
            .loop_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

fn publish_counters(m: &Metrics, vm: &str, cl: u32, d: Direction, c: &VmCounters, rate: f64) {
    let labels = [vm, class::name(cl), d.as_str()];
    let counter = c.class(cl).get(d);
    Metrics::set_total(&m.bytes.with_label_values(&labels), counter.bytes);
    Metrics::set_total(&m.packets.with_label_values(&labels), counter.packets);
    m.throughput.with_label_values(&labels).set(rate);
}
