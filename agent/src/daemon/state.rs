//! What the agent knows, shared by its tasks, and the read-only status API
//! that shows it. Locks are short: nothing is awaited while one is held.

use crate::api::units;
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use vmbw_common::{Direction, class};

use crate::{
    api::{
        self, Allocation, ClassTraffic, Explain, ExplainedDecision, MigrationPhase, MigrationRole,
    },
    config::VmEntry,
    control::{Armed, QemuParams, VmDecision},
    datapath::{Datapath, VmCounters},
    metrics::Metrics,
    predict::Iteration,
    qemu::{Drain, types::MigrationParameters},
};

use super::{http::Response, procnet::TcpConn};

/// QEMU's default downtime limit, seconds: what a migration has when its
/// starter's is not known and the policy leaves it alone.
pub const QEMU_DOWNTIME_S: f64 = 0.3;
/// Decisions kept per VM for `explain`.
pub const EXPLAIN_DEPTH: usize = 32;
/// Application throughput samples kept per VM (NRAC's Net_vm history).
pub const APP_HISTORY: usize = 32;

/// Everything the tasks share.
pub struct Shared {
    pub state: Mutex<State>,
    /// Shared with KubeVirt discovery, which registers flows itself.
    pub datapath: Arc<Mutex<Datapath>>,
    pub metrics: Metrics,
    /// A VM task has news (a migration started, an iteration finished):
    /// the control loop runs now instead of at its next tick.
    pub wake: tokio::sync::Notify,
    /// KubeVirt discovery has applied its first full picture (true from
    /// the start when discovery is off).
    pub discovery_synced: Arc<std::sync::atomic::AtomicBool>,
    /// KubeVirt discovery, when on: the control loop reads the terms of
    /// the VMIs it follows from it.
    pub kubevirt: std::sync::OnceLock<Arc<Mutex<crate::kubevirt::Discovery>>>,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn datapath(&self) -> MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The agent's view of the host.
pub struct State {
    pub started: Instant,
    /// Datapath loaded and attached, shaping installed.
    pub ready: bool,
    pub node: String,
    pub mode: String,
    pub policy: String,
    pub uplinks: Vec<String>,
    /// N_t, bytes/s.
    pub link: f64,
    /// N_u, bytes/s (everything but migration streams).
    pub link_usage: f64,
    pub discovery: Vec<String>,
    pub vms: BTreeMap<String, VmState>,
    /// The policy escalates (`…+escalate`): an armed auto-converge is
    /// held inert at the start of each migration until escalation raises
    /// its ceiling.
    pub escalating: bool,
    /// The control loop's period, and when it last ran (None: not yet).
    pub tick_period: Duration,
    pub last_tick: Option<Instant>,
}

/// Ticks the control loop may miss before `/healthz` fails.
pub const MISSED_TICKS: u32 = 5;

impl State {
    /// Healthy while the control loop runs: it has ticked within
    /// [`MISSED_TICKS`] periods (counted from the start before its first).
    pub fn health(&self, now: Instant) -> Result<(), String> {
        let since = now.saturating_duration_since(self.last_tick.unwrap_or(self.started));
        let limit = self.tick_period * MISSED_TICKS;
        if since > limit {
            Err(format!(
                "control loop stalled: no tick for {:.1} s (limit {MISSED_TICKS} x {} ms)",
                since.as_secs_f64(),
                self.tick_period.as_millis()
            ))
        } else {
            Ok(())
        }
    }
}

/// One VM.
#[derive(Debug, Clone)]
pub struct VmState {
    pub slot: u32,
    pub entry: VmEntry,
    pub phase: MigrationPhase,
    pub iteration: u32,
    pub remaining: u64,
    pub page_size: f64,
    /// The finished iterations of the current migration (X1..X6 and the
    /// figures the physics drivers need).
    pub rows: Vec<Iteration>,
    /// Duration of each finished iteration, seconds.
    pub iter_s: Vec<f64>,
    /// Dirty rate of each finished iteration, bytes/s.
    pub dirty_rates: Vec<f64>,
    /// The prediction made for an iteration, by iteration number.
    pub predicted: BTreeMap<u32, f64>,
    /// Migration connections learned from QEMU's sockets.
    pub flows: Vec<TcpConn>,
    pub app_history: VecDeque<f64>,
    pub counters: VmCounters,
    pub rates: ClassRates,
    pub decision: Option<VmDecision>,
    /// Bumped every time the control loop decides for this VM.
    pub decided: u64,
    /// When the last QEMU sample arrived, until it has been enforced.
    pub sample_at: Option<Instant>,
    pub explain: VecDeque<ExplainedDecision>,
    /// How the VM is followed (`qmp`, `libvirt`), once connected.
    pub telemetry: Option<&'static str>,
    /// Samples (finished iterations) of the current migration.
    pub samples: u32,
    /// The cap QEMU has, as vmbw set it (bytes/s).
    pub qemu_max_bandwidth: Option<f64>,
    /// QEMU parameters the source refused in this migration, with reasons.
    pub refused: Vec<String>,
    /// What the current migration's starter armed.
    pub armed: Armed,
    /// The guest's dirty rate as QEMU's `calc-dirty-rate` last measured
    /// it, bytes/s: during the bulk pass the mean of its samples so far
    /// (QEMU reports no rate before the pass ends), then the mean of the
    /// last finished pass that had samples.
    pub sampled_dirty_rate: Option<f64>,
    /// The guest's used memory, bytes: what no pass can leave more dirty
    /// than (`control::forecast::dirtied`).
    pub used_memory: Option<f64>,
    /// Of `remaining`, the bytes the bulk pass will find all zeros
    /// ([`crate::qemu::Progress::unsent_zero`]); None after it.
    pub unsent_zero: Option<f64>,
    /// The working set the bulk pass's dirty-rate samples show, bytes
    /// ([`crate::qemu::Progress::sampled_working_set`]); None after it.
    pub sampled_working_set: Option<f64>,
    /// When the current migration started, and the guest's RAM as its
    /// first sample showed (QEMU's `ram.total`): its deadline's clock and
    /// size.
    pub migration_started: Option<std::time::Instant>,
    /// When the current pre-copy pass began (the migration's start for the
    /// bulk pass, then each pass's closing sample).
    pub pass_started: Option<std::time::Instant>,
    pub ram_bytes: Option<f64>,
    /// Bytes queued in QEMU's migration socket, as last read near the
    /// switchover (0 before).
    pub stream_backlog: u64,
    /// Since when pre-copy's switchover is held for that backlog.
    pub switchover_held_since: Option<std::time::Instant>,
    /// How fast QEMU works through `remaining`, from every poll.
    pub drain: Drain,
    /// QEMU's migration parameters as the current migration's starter left
    /// them (QMP sources), and the part of them vmbw changed: given back
    /// when the migration ends. Kept across reconnects to the same
    /// migration (QEMU then has vmbw's values, not the starter's).
    pub starting_params: Option<MigrationParameters>,
    pub give_back: MigrationParameters,
    /// What KubeVirt says of this VM (the VMI of the same
    /// `namespace/name`), used where the `[[vm]]` entry says nothing.
    pub cluster: ClusterTerms,
}

/// A VM's promise and migration terms as KubeVirt publishes them: the
/// VMI's `vmbw.io/reserve-mbit` annotation and its migration's
/// `migrationConfiguration`. Post-copy and auto-converge need nothing
/// here: the agent reads what the migration armed from QEMU or libvirt,
/// which arm only what the configuration allows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClusterTerms {
    pub reserve_mbit: Option<f64>,
    pub migration: crate::kubevirt::MigrationTerms,
}

/// A VM's throughput per traffic class and direction over the last tick,
/// bytes/s; 0 until measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassRates([[f64; Direction::COUNT as usize]; class::COUNT as usize]);

impl ClassRates {
    pub fn get(&self, class: u32, d: Direction) -> f64 {
        self.0
            .get(class as usize)
            .and_then(|dirs| dirs.get(d.index() as usize))
            .copied()
            .unwrap_or(0.0)
    }

    pub fn set(&mut self, class: u32, d: Direction, rate: f64) {
        if let Some(r) = self
            .0
            .get_mut(class as usize)
            .and_then(|dirs| dirs.get_mut(d.index() as usize))
        {
            *r = rate;
        }
    }
}

impl VmState {
    pub fn new(slot: u32, entry: VmEntry) -> Self {
        VmState {
            slot,
            entry,
            phase: MigrationPhase::None,
            iteration: 0,
            remaining: 0,
            page_size: 4096.0,
            rows: Vec::new(),
            iter_s: Vec::new(),
            dirty_rates: Vec::new(),
            predicted: BTreeMap::new(),
            flows: Vec::new(),
            app_history: VecDeque::new(),
            counters: VmCounters::default(),
            rates: ClassRates::default(),
            decision: None,
            decided: 0,
            sample_at: None,
            explain: VecDeque::new(),
            telemetry: None,
            samples: 0,
            qemu_max_bandwidth: None,
            refused: Vec::new(),
            armed: Armed::default(),
            sampled_dirty_rate: None,
            used_memory: None,
            unsent_zero: None,
            sampled_working_set: None,
            migration_started: None,
            pass_started: None,
            ram_bytes: None,
            stream_backlog: 0,
            switchover_held_since: None,
            drain: Drain::default(),
            starting_params: None,
            give_back: MigrationParameters::default(),
            cluster: ClusterTerms::default(),
        }
    }

    pub fn migrating(&self) -> bool {
        matches!(
            self.phase,
            MigrationPhase::PreCopy | MigrationPhase::PostCopy
        )
    }

    /// Resets per-migration state at the start of a migration.
    pub fn begin_migration(&mut self) {
        self.phase = MigrationPhase::PreCopy;
        self.iteration = 1;
        self.rows.clear();
        self.iter_s.clear();
        self.dirty_rates.clear();
        self.predicted.clear();
        self.samples = 0;
        self.qemu_max_bandwidth = None;
        self.refused.clear();
        self.armed = Armed::default();
        self.sampled_dirty_rate = None;
        self.used_memory = None;
        self.unsent_zero = None;
        self.sampled_working_set = None;
        self.migration_started = Some(std::time::Instant::now());
        self.pass_started = self.migration_started;
        self.ram_bytes = None;
        self.stream_backlog = 0;
        self.switchover_held_since = None;
        self.drain = Drain::default();
    }

    /// The migration runs in post-copy from now. What is left then drains
    /// at post-copy's pace (its push is capped, pages the guest asks for
    /// come besides), so pre-copy's drain readings are dropped.
    pub fn enter_postcopy(&mut self) {
        if self.phase != MigrationPhase::PostCopy {
            self.phase = MigrationPhase::PostCopy;
            self.drain = Drain::default();
        }
    }

    /// Seconds the current pre-copy pass has run (0 when not known).
    pub fn pass_elapsed_s(&self) -> f64 {
        self.pass_started.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Seconds the switchover has been held for QEMU's socket backlog;
    /// None when it is not held.
    pub fn switchover_held_s(&self) -> Option<f64> {
        self.switchover_held_since
            .map(|t| t.elapsed().as_secs_f64())
    }

    /// Seconds left before the migration's starter gives up, from the
    /// VM's `completion_timeout_per_gib` (None without one, or before the
    /// guest's size is known).
    pub fn deadline_s(&self) -> Option<f64> {
        let per_gib = self
            .entry
            .completion_timeout_per_gib
            .or(self.cluster.migration.completion_timeout_per_gib)?;
        let elapsed = self.migration_started?.elapsed().as_secs_f64();
        Some(per_gib * self.ram_bytes? / GIB - elapsed)
    }

    /// The promise to the VM's application, bytes/s: the entry's, else
    /// the VMI's annotation.
    pub fn reserve(&self) -> Option<f64> {
        self.entry
            .reserve_mbit
            .or(self.cluster.reserve_mbit)
            .map(units::from_mbit)
    }

    pub fn qemu_params(&self) -> QemuParams {
        self.decision.as_ref().map(|d| d.qemu).unwrap_or_default()
    }

    /// The downtime limit QEMU works to without vmbw's: the one the
    /// migration's starter set, else QEMU's default.
    pub fn starting_downtime_limit_s(&self) -> f64 {
        self.starting_params
            .as_ref()
            .and_then(|p| p.downtime_limit)
            .map_or(QEMU_DOWNTIME_S, |ms| ms as f64 / 1000.0)
    }

    /// The downtime limit QEMU works to now: the policy's, else the
    /// starter's.
    pub fn downtime_limit_s(&self) -> f64 {
        self.qemu_params()
            .downtime_limit_s
            .unwrap_or_else(|| self.starting_downtime_limit_s())
    }

    fn allocation(&self) -> Allocation {
        allocation(self.decision.as_ref())
    }
}

pub fn allocation(d: Option<&VmDecision>) -> Allocation {
    Allocation {
        migration_rate_bytes_per_sec: d.and_then(|d| d.migration_rate),
        migration_ceil_bytes_per_sec: d.and_then(|d| d.migration_ceil),
        app_reservation_bytes_per_sec: d.map_or(0.0, |d| d.app_reserve),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// `/readyz`: the datapath and the HTB tree are in place, and (with
/// KubeVirt discovery) its watches have read and applied their first lists,
/// so every VM of the node is registered, and none of them has failed in
/// the last 30 s (the log says which and why).
pub fn readiness(installed: bool, discovery_synced: bool) -> Result<(), &'static str> {
    match (installed, discovery_synced) {
        (false, _) => Err("starting: datapath and traffic control not installed yet"),
        (true, false) => Err(
            "waiting for KubeVirt discovery: the first lists of VMIs, migrations and launcher \
                 pods, or a failing watch to recover (see the log)",
        ),
        (true, true) => Ok(()),
    }
}

/// The API: `path` to a response.
pub fn handle(shared: &Arc<Shared>, path: &str) -> Response {
    let path = path.split('?').next().unwrap_or(path);
    let json = |v: Result<String, serde_json::Error>| match v {
        Ok(body) => Response::json(body),
        Err(e) => Response::text(500, format!("encoding: {e}\n")),
    };
    match path {
        api::HEALTHZ_PATH => match shared.state().health(Instant::now()) {
            Ok(()) => Response::text(200, "ok\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        },
        api::READYZ_PATH => {
            let synced = shared
                .discovery_synced
                .load(std::sync::atomic::Ordering::SeqCst);
            match readiness(shared.state().ready, synced) {
                Ok(()) => Response::text(200, "ready\n"),
                Err(why) => Response::text(503, format!("{why}\n")),
            }
        }
        api::METRICS_PATH => match shared.metrics.encode() {
            Ok(text) => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: text,
            },
            Err(e) => Response::text(500, format!("{e}\n")),
        },
        api::STATUS_PATH => json(serde_json::to_string(&status(&shared.state()))),
        api::VMS_PATH => json(serde_json::to_string(&vms(&shared.state()))),
        api::FLOWS_PATH => {
            let mut all = flows(&shared.state());
            // What KubeVirt discovery registered (its own lock, taken
            // after the state's is released).
            if let Some(d) = shared.kubevirt.get()
                && let Ok(d) = d.lock()
            {
                all.extend(d.flows());
            }
            json(serde_json::to_string(&all))
        }
        api::CLASSES_PATH => json(serde_json::to_string(&classes(&shared.state()))),
        p if p.starts_with(api::EXPLAIN_PATH_PREFIX) => {
            let Some(vm) = api::explain_vm_from_path(p) else {
                return Response::text(400, "bad VM name in path\n");
            };
            let state = shared.state();
            match state.vms.get(&vm) {
                Some(v) => json(serde_json::to_string(&Explain {
                    vm: vm.clone(),
                    decisions: v.explain.iter().cloned().collect(),
                })),
                None => Response {
                    status: 404,
                    content_type: "application/json",
                    body: serde_json::to_string(&api::ApiError {
                        error: format!("no VM named {vm}"),
                    })
                    .unwrap_or_default(),
                },
            }
        }
        _ => Response::text(404, "not found\n"),
    }
}

pub fn status(s: &State) -> api::Status {
    api::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        node: s.node.clone(),
        mode: s.mode.clone(),
        policy: s.policy.clone(),
        uplinks: s.uplinks.clone(),
        link_capacity_bytes_per_sec: s.link,
        link_usage_bytes_per_sec: s.link_usage,
        vms: s.vms.len() as u32,
        migrating: s.vms.values().filter(|v| v.migrating()).count() as u32,
        uptime_sec: s.started.elapsed().as_secs_f64(),
        discovery: s.discovery.clone(),
    }
}

pub fn vms(s: &State) -> Vec<api::VmStatus> {
    s.vms
        .iter()
        .map(|(name, v)| api::VmStatus {
            name: name.clone(),
            slot: v.slot,
            migration: (v.phase != MigrationPhase::None).then(|| api::MigrationStatus {
                phase: v.phase,
                role: MigrationRole::Source,
                iteration: v.iteration,
                remaining_bytes: v.remaining,
                predicted_dirty_pages: v.predicted.get(&v.iteration).copied(),
                actual_dirty_pages: v.rows.last().map(|r| r.x[0]),
                peer: v.flows.first().map(|f| f.remote.to_string()),
                samples: v.samples,
                qemu_max_bandwidth_bytes_per_sec: v.qemu_max_bandwidth,
                refused: v.refused.clone(),
                armed: [
                    (v.armed.postcopy, "postcopy-ram"),
                    (v.armed.postcopy_preempt, "postcopy-preempt"),
                    (v.armed.auto_converge, "auto-converge"),
                ]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| n.to_owned())
                .collect(),
                eta_seconds: v
                    .decision
                    .as_ref()
                    .and_then(|d| d.published_forecast())
                    .and_then(|f| f.eta_s),
                converging: v
                    .decision
                    .as_ref()
                    .and_then(|d| d.published_forecast())
                    .map(|f| f.converging()),
                deadline_left_seconds: v.deadline_s(),
                stream_backlog_bytes: (v.stream_backlog > 0).then_some(v.stream_backlog),
                switchover_held_seconds: v.switchover_held_s(),
            }),
            telemetry: v.telemetry.map(str::to_owned),
            allocation: v.allocation(),
            app_promised_bytes_per_sec: v.reserve(),
            traffic: [
                (class::MIGRATION, api::TrafficClass::Migration),
                (class::APPLICATION, api::TrafficClass::Application),
                (class::OTHER, api::TrafficClass::Other),
            ]
            .into_iter()
            .map(|(c, name)| {
                let cc = v.counters.class(c);
                ClassTraffic {
                    class: name,
                    egress_bytes: cc.egress.bytes,
                    ingress_bytes: cc.ingress.bytes,
                    egress_bytes_per_sec: v.rates.get(c, Direction::Egress),
                    ingress_bytes_per_sec: v.rates.get(c, Direction::Ingress),
                }
            })
            .collect(),
        })
        .collect()
}

pub fn flows(s: &State) -> Vec<api::FlowStatus> {
    let mut out = Vec::new();
    for (name, v) in &s.vms {
        for f in &v.flows {
            out.push(api::FlowStatus {
                vm: name.clone(),
                slot: v.slot,
                class: api::TrafficClass::Migration,
                matches: api::FlowMatch::Exact,
                local: f.local.to_string(),
                remote: f.remote.to_string(),
                proto: "tcp".into(),
                source: "qemu sockets".into(),
            });
        }
        let ips = v.entry.ips.iter().map(ToString::to_string);
        for addr in ips.chain(v.entry.macs.iter().map(ToString::to_string)) {
            out.push(api::FlowStatus {
                vm: name.clone(),
                slot: v.slot,
                class: api::TrafficClass::Application,
                matches: api::FlowMatch::VmAddress,
                local: addr,
                remote: "*".into(),
                proto: "any".into(),
                source: "config".into(),
            });
        }
        for tap in &v.entry.taps {
            out.push(api::FlowStatus {
                vm: name.clone(),
                slot: v.slot,
                class: api::TrafficClass::Application,
                matches: api::FlowMatch::VmAddress,
                local: format!("tap {tap}"),
                remote: "*".into(),
                proto: "any".into(),
                source: "config".into(),
            });
        }
    }
    out
}

pub fn classes(s: &State) -> Vec<api::ClassStatus> {
    use crate::shaping::{TrafficClass, class_handle, handles::display_handle};
    let mut out = Vec::new();
    let iface = s.uplinks.first().cloned().unwrap_or_default();
    for (name, v) in &s.vms {
        let Some(d) = v.decision.as_ref().filter(|d| d.migration_rate.is_some()) else {
            continue;
        };
        let slot = v.slot as u16;
        for (class, role, rate, ceil) in [
            (
                TrafficClass::Migration,
                "migration",
                d.migration_rate.unwrap_or(0.0),
                d.migration_ceil.unwrap_or(s.link),
            ),
            (
                TrafficClass::Application,
                "application",
                d.app_reserve,
                s.link,
            ),
        ] {
            let Some(handle) = class_handle(slot, class) else {
                continue;
            };
            out.push(api::ClassStatus {
                iface: iface.clone(),
                handle: display_handle(handle),
                vm: Some(name.clone()),
                slot: v.slot,
                role: role.into(),
                rate_bytes_per_sec: rate,
                ceil_bytes_per_sec: ceil,
                sent_bytes: v
                    .counters
                    .class(if role == "migration" {
                        vmbw_common::class::MIGRATION
                    } else {
                        vmbw_common::class::APPLICATION
                    })
                    .egress
                    .bytes,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_needs_the_datapath_and_a_synced_discovery() {
        assert!(super::readiness(false, true).is_err());
        let waiting = super::readiness(true, false).expect_err("not synced");
        assert!(waiting.contains("KubeVirt"), "{waiting}");
        assert_eq!(super::readiness(true, true), Ok(()));
    }

    use super::*;

    #[test]
    fn the_deadline_counts_down_from_the_start_over_the_guest_s_gib() {
        let mut entry = VmEntry::qmp("a", "/run/a.qmp");
        let mut v = VmState::new(1, entry.clone());
        v.begin_migration();
        v.ram_bytes = Some(2.0 * GIB);
        assert_eq!(v.deadline_s(), None, "no completion timeout configured");
        entry.completion_timeout_per_gib = Some(150.0);
        let mut v = VmState::new(1, entry);
        v.begin_migration();
        assert_eq!(
            v.deadline_s(),
            None,
            "size not known before the first sample"
        );
        v.ram_bytes = Some(2.0 * GIB);
        v.migration_started = v
            .migration_started
            .and_then(|t| t.checked_sub(std::time::Duration::from_secs(10)));
        let left = v.deadline_s().expect("deadline");
        assert!((289.0..=290.0).contains(&left), "{left}");
        // KubeVirt's terms apply where the entry says nothing.
        let mut v = VmState::new(1, VmEntry::qmp("default/a", "/run/a.qmp"));
        v.begin_migration();
        v.ram_bytes = Some(GIB / 2.0);
        v.cluster.migration.completion_timeout_per_gib = Some(800.0);
        v.cluster.reserve_mbit = Some(10.0);
        let left = v
            .deadline_s()
            .expect("deadline from migrationConfiguration");
        assert!((399.0..=400.0).contains(&left), "{left}");
        assert_eq!(v.reserve(), Some(units::from_mbit(10.0)));
        v.entry.reserve_mbit = Some(5.0);
        assert_eq!(v.reserve(), Some(units::from_mbit(5.0)), "the entry wins");
    }

    #[test]
    fn post_copy_measures_its_own_drain() {
        use crate::qemu::Progress;
        let mut v = VmState::new(1, VmEntry::qmp("a", "/run/a.qmp"));
        v.begin_migration();
        let t0 = tokio::time::Instant::now();
        for (s, left) in [(0u64, 30_000_000u64), (2, 20_000_000), (3, 15_000_000)] {
            v.drain.observe(Progress {
                remaining: left,
                transferred: 0,
                sync: 1,
                at: t0 + std::time::Duration::from_secs(s),
                bulk_dirty_rate: None,
                used_memory: None,
                unsent_zero: None,
                sampled_working_set: None,
            });
        }
        assert_eq!(v.drain.rate(), Some(5_000_000.0));
        v.enter_postcopy();
        assert_eq!(v.phase, MigrationPhase::PostCopy);
        assert_eq!(v.drain.rate(), None, "pre-copy's pace is not post-copy's");
        // Entering again (the sample that reports it) keeps what was measured.
        v.drain.observe(Progress {
            remaining: 10_000_000,
            transferred: 0,
            sync: 1,
            at: t0 + std::time::Duration::from_secs(4),
            bulk_dirty_rate: None,
            used_memory: None,
            unsent_zero: None,
            sampled_working_set: None,
        });
        v.drain.observe(Progress {
            remaining: 4_000_000,
            transferred: 0,
            sync: 1,
            at: t0 + std::time::Duration::from_secs(6),
            bulk_dirty_rate: None,
            used_memory: None,
            unsent_zero: None,
            sampled_working_set: None,
        });
        v.enter_postcopy();
        assert_eq!(v.drain.rate(), Some(3_000_000.0));
    }

    #[test]
    fn class_rates_are_zero_until_set_and_ignore_unknown_classes() {
        let mut r = ClassRates::default();
        assert_eq!(r.get(class::MIGRATION, Direction::Egress), 0.0);
        r.set(class::MIGRATION, Direction::Egress, 5.0);
        r.set(class::APPLICATION, Direction::Ingress, 7.0);
        r.set(class::COUNT, Direction::Egress, 9.0);
        assert_eq!(r.get(class::MIGRATION, Direction::Egress), 5.0);
        assert_eq!(r.get(class::MIGRATION, Direction::Ingress), 0.0);
        assert_eq!(r.get(class::APPLICATION, Direction::Ingress), 7.0);
        assert_eq!(r.get(class::COUNT, Direction::Egress), 0.0);
    }
}
