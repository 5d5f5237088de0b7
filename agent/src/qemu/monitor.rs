//! Per-VM migration monitor: follows one outgoing pre-copy migration over
//! QMP and yields one [`IterationSample`] per finished iteration, with the
//! six GM(1,N) variables X1..X6.
//!
//! Iteration k is the time between dirty-bitmap sync k and sync k+1 (QEMU's
//! `dirty-sync-count`; each sync emits `MIGRATION_PASS` with the new count
//! when the `events` capability is on). With events, iteration boundaries
//! carry QEMU's own microsecond timestamps; without, they are the poll at
//! which the counter was seen to move (±one poll interval). A completed
//! migration with S syncs has S-2 iterations: QEMU 7.2 syncs once when
//! little enough is left to stop, and once more after stopping the VM; the
//! millisecond between those two is reported as
//! [`MigrationOutcome::stop_and_copy`], not as an iteration.
//!
//! X1 is defined as QEMU's `dirty-pages-rate` × the iteration's duration
//! (docs/trace-format.md). Beside it the monitor counts the pages each sync found
//! dirty straight from QEMU's counters: between two syncs, pages sent
//! (`normal` + `duplicate`) plus pages still dirty (`remaining` / page size)
//! stay constant, and a sync raises that sum by exactly the pages it found
//! newly dirty. So `ledger(k+1) - ledger(k)` is the number of pages dirtied
//! during iteration k, observable from any poll inside each iteration.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use tokio::time::Instant;

use crate::predict::Iteration;

use super::{
    commands::Capability,
    hoststats::{self, ByteCounter, HostStatsError, ProcNetDev, SumCounter},
    qmp::{Qmp, QmpError},
    trace::TraceRow,
    types::{MigrationInfo, MigrationStatus, QmpEvent},
};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("talking to QEMU")]
    Qmp(#[from] QmpError),
    #[error("reading the VM's host statistics")]
    Host(#[from] HostStatsError),
    #[error("QEMU reports no vCPU thread ids (query-cpus-fast); vCPU CPU use cannot be measured")]
    NoVcpuThreads,
    #[error(
        "no memory usage source: the VM has no virtio-balloon device and no mapping of its \
         {ram_bytes} bytes of RAM in /proc/{pid}/smaps"
    )]
    NoMemorySource { pid: u32, ram_bytes: u64 },
    #[error("no migration started within {0:?}")]
    NotStarted(Duration),
    #[error("lost the QMP connection and {attempts} reconnects failed")]
    Reconnect {
        attempts: u32,
        #[source]
        source: QmpError,
    },
}

/// What the monitor measures and how often.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// How often `query-migrate` is polled between events.
    pub poll_interval: Duration,
    /// The VM's own interfaces (taps) in QEMU's network namespace, for X4.
    pub vm_ifaces: Vec<String>,
    /// The host uplink in QEMU's network namespace, for X6.
    pub uplink: Option<String>,
    /// If the VM's balloon device does not poll guest memory statistics,
    /// switch polling on at this interval (seconds); 0 leaves it alone.
    pub balloon_poll_secs: u64,
    /// Reconnects tried when the QMP connection drops mid-migration.
    pub reconnect_attempts: u32,
    /// Measure the guest's dirty rate with QEMU's `calc-dirty-rate` back
    /// to back while the bulk pass runs ([`Progress::bulk_dirty_rate`]).
    /// Off by default: a recorder sampling on its own would find QEMU's
    /// one measurement slot taken.
    pub sample_bulk_pass: bool,
    /// With [`Self::sample_bulk_pass`], go on measuring while the later
    /// pre-copy passes run, and give each pass the mean of what was
    /// measured during it ([`IterationSample::sampled_dirty_bps`]), as the
    /// recorder of the prediction corpus does.
    pub sample_later_passes: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            poll_interval: Duration::from_millis(200),
            vm_ifaces: Vec::new(),
            uplink: None,
            balloon_poll_secs: 1,
            reconnect_attempts: 3,
            sample_bulk_pass: false,
            sample_later_passes: false,
        }
    }
}

/// Where X2 (memory usage) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// The guest's balloon driver: (total - available) / total.
    Balloon { qom_path: String },
    /// Host view: resident part of the guest RAM mapping / RAM size.
    GuestRamResident,
}

impl std::fmt::Display for MemorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemorySource::Balloon { qom_path } => write!(
                f,
                "guest balloon statistics at {qom_path}: (total - available) / total"
            ),
            MemorySource::GuestRamResident => {
                write!(f, "host: resident part of the guest RAM mapping / RAM size")
            }
        }
    }
}

/// What a migration still has to send, as one poll of its source saw it.
/// Samples come once a pass; these come with every poll, so that what
/// the agent forecasts moves while a long pass runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Bytes QEMU still has to send (`ram.remaining`).
    pub remaining: u64,
    /// Bytes QEMU has sent so far (`ram.transferred`; libvirt's
    /// `data_processed`): written into its socket, so a window of them is
    /// the wire's rate.
    pub transferred: u64,
    /// The pass it belongs to (QEMU's dirty-sync count; libvirt's
    /// `memory_iteration`): `remaining` grows again only when it changes.
    pub sync: u64,
    pub at: Instant,
    /// The guest's dirty rate in the bulk pass, bytes/s: the mean of what
    /// `calc-dirty-rate` measured so far ([`MonitorConfig::sample_bulk_pass`]),
    /// or where their climb or fall has taken it by now when they trend
    /// ([`crate::predict::sampled_trend_end`]); None before the first
    /// measurement or where none is made.
    pub bulk_dirty_rate: Option<f64>,
    /// The guest's used memory, bytes, as last read (X2's source × RAM);
    /// None before the first reading.
    pub used_memory: Option<u64>,
    /// Of `remaining`, the bytes the bulk pass will find all zeros: the
    /// guest's free memory (its balloon's `stat-free-memory`) or the part
    /// of its RAM it never touched (not resident in QEMU's process),
    /// whichever is smaller, less the zero pages QEMU has already met
    /// (`ram.duplicate`). QEMU sends a zero page as a flag, so these cost
    /// the wire nothing: a 1 GiB guest with half its memory never written
    /// drained its last 650 MB in 1.1 s (tests/fixtures/corpus/scale/
    /// xrand-l300). On the `window` corpus the zero pages a bulk pass met
    /// were its free memory to within 2 MiB on 8 of 9 guests; but a
    /// guest that has freed pages it wrote (the demo's, streaming TCP)
    /// has free memory that is not zeros, where the ETA then read 0 s
    /// with 20 to go: memory it never touched cannot hold data. None
    /// after the bulk pass, whose dirtied pages are rarely zeros, and
    /// with neither figure.
    pub unsent_zero: Option<u64>,
    /// The working set the bulk pass's dirty-rate samples show, bytes: a
    /// second's writes against those of a [`BulkSampler::LONG`] window
    /// ([`crate::predict::wss::WorkingSet::from_windows`]); None after
    /// the bulk pass, before both kinds were measured, where the writes
    /// do not overlap, or where QEMU's whole-MiB/s answers are too coarse
    /// to tell.
    pub sampled_working_set: Option<u64>,
}

/// [`Progress::unsent_zero`] from the guest's `free` bytes and its
/// `untouched` ones (RAM not resident in QEMU), the zero pages QEMU has
/// met so far and the bytes it still has to send; None with neither.
pub fn unsent_zero(
    free: Option<u64>,
    untouched: Option<u64>,
    zero_pages: u64,
    page_size: u64,
    remaining: u64,
) -> Option<u64> {
    let zeros = match (free, untouched) {
        (Some(f), Some(u)) => f.min(u),
        (f, u) => f.or(u)?,
    };
    Some(
        zeros
            .saturating_sub(zero_pages.saturating_mul(page_size))
            .min(remaining),
    )
}

/// The guest's dirty rate through the bulk pass, which QEMU reports only
/// once that pass ends: `calc-dirty-rate` (page hashing over about a
/// second, whole MiB/s) asked for again as soon as it answered, and the
/// mean of its answers. One answer alone is coarse: the tuning corpus's
/// app-l30, a guest writing 1 MiB/s, was measured at 0 MiB/s in 7 of its
/// 70 samples, the first among them, and at 1 in the others.
#[derive(Debug, Default)]
struct BulkSampler {
    /// When the running measurement was asked for.
    asked: Option<Instant>,
    /// What each measurement found, bytes/s.
    rates: Vec<f64>,
    /// Refusals in a row (a QEMU older than 5.2 refuses every time).
    refused: u32,
    /// What the measurements collected since the last pass boundary
    /// found, bytes/s, each with the middle of its measurement: the
    /// current pass's ([`IterationSample::sampled_dirty_bps`]).
    pass: Vec<(Instant, f64)>,
    /// The bulk pass has ended: later measurements count for their pass
    /// only, not for [`Self::mean`].
    bulk_over: bool,
    /// How long the running measurement hashes pages.
    window: Duration,
    /// Measurements asked for so far.
    taken: u32,
    /// What the bulk pass's [`Self::LONG`] measurements found, bytes/s:
    /// kept apart from `rates`, which are a second's.
    long: Vec<f64>,
}

impl BulkSampler {
    /// How long one measurement hashes pages.
    const MEASURE: Duration = Duration::from_millis(1000);
    /// Sampled pages per GiB of guest RAM (QEMU's most, 16384).
    const PAGES_PER_GIB: u32 = 16384;
    /// A measurement not answered this long after its window is given up.
    const ABANDON: Duration = Duration::from_secs(4);
    /// Refusals in a row after which the pass is not sampled any more.
    const GIVE_UP: u32 = 3;
    /// In the bulk pass the second measurement and every
    /// [`Self::LONG_EVERY`]-th after it last this long (where they can be
    /// read, [`Self::next_window`]): how many of a
    /// second's writes land on pages written again within a few seconds,
    /// the guest's working set
    /// ([`crate::predict::wss::WorkingSet::from_windows`]). The second,
    /// not the sixth: a 1 GiB guest's bulk pass can be over in 10 s
    /// (holdout4/xhot-l400, whose sixth ended after half its migration).
    const LONG: Duration = Duration::from_millis(4000);
    const LONG_EVERY: u32 = 6;

    fn mean(&self) -> Option<f64> {
        mean(&self.rates)
    }

    /// How long the next measurement should last: [`Self::LONG`] at its
    /// turn, but only while a second's measurements average what a long
    /// one must read to be used ([`crate::predict::wss::MIN_LONG_WINDOW_BPS`]; a
    /// long window reads no more than they do): below that it would
    /// only cost the rate four seconds of measurements. The small guests
    /// of the corpus and the demo never take one.
    fn next_window(&self) -> Duration {
        let readable = self
            .mean()
            .is_some_and(|r| r >= crate::predict::wss::MIN_LONG_WINDOW_BPS);
        if !self.bulk_over && readable && self.taken % Self::LONG_EVERY == 1 {
            Self::LONG
        } else {
            Self::MEASURE
        }
    }

    /// The working set the bulk pass's short and long measurements show
    /// ([`Progress::sampled_working_set`]), bytes.
    fn working_set(&self) -> Option<f64> {
        if self.bulk_over {
            return None;
        }
        crate::predict::wss::WorkingSet::from_windows(
            self.mean()?,
            mean(&self.long)?,
            Self::LONG.as_secs_f64(),
        )
    }

    /// Where the current pass's measurements' climb or fall had taken the
    /// rate by `now` ([`crate::predict::sampled_trend_end`]).
    fn trend_at(&self, now: Instant) -> Option<f64> {
        let timed: Vec<(f64, f64)> = self
            .pass
            .iter()
            .map(|(at, rate)| (-now.saturating_duration_since(*at).as_secs_f64(), *rate))
            .collect();
        crate::predict::sampled_trend_end(&timed, 0.0)
    }

    /// The bulk pass's rate as the forecast reads it
    /// ([`Progress::bulk_dirty_rate`]): where its measurements' trend has
    /// taken it by `now`, else their mean.
    fn bulk_rate(&self, now: Instant) -> Option<f64> {
        let trend = if self.bulk_over {
            None
        } else {
            self.trend_at(now)
        };
        trend.or_else(|| self.mean())
    }

    /// The mean of the current pass's measurements, where their trend
    /// had taken the rate by `end`, and a new pass.
    fn close_pass(&mut self, end: Instant) -> (Option<f64>, Option<f64>) {
        let rates: Vec<f64> = self.pass.iter().map(|p| p.1).collect();
        let trend = self.trend_at(end);
        self.pass.clear();
        (mean(&rates), trend)
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// How fast a migration works through what it has left, from successive
/// [`Progress`] readings within one pass: bytes of `remaining` per second.
/// Zero pages go as headers, so this runs ahead of the wire rate while a
/// pass meets untouched memory; it is what an ETA in `remaining` units
/// needs. Beside it, the rate QEMU sends at ([`Self::send_rate`]): what
/// later passes, of dirtied pages only, drain at.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    last: Option<Progress>,
    /// (seconds, bytes drained, bytes sent, pass) per interval between two
    /// readings of the same pass.
    window: VecDeque<(f64, f64, f64, u64)>,
}

impl Drain {
    /// Seconds of readings the rate is averaged over.
    pub const WINDOW_S: f64 = 10.0;
    /// Seconds of readings needed before there is a rate.
    pub const MIN_S: f64 = 2.0;

    pub fn observe(&mut self, p: Progress) {
        if let Some(last) = self.last
            && last.sync == p.sync
            && p.remaining <= last.remaining
            && p.at > last.at
        {
            let dt = (p.at - last.at).as_secs_f64();
            self.window.push_back((
                dt,
                (last.remaining - p.remaining) as f64,
                p.transferred.saturating_sub(last.transferred) as f64,
                p.sync,
            ));
            let mut span: f64 = self.window.iter().map(|w| w.0).sum();
            while span - self.window[0].0 >= Self::WINDOW_S {
                span -= self.window[0].0;
                self.window.pop_front();
            }
        }
        self.last = Some(p);
    }

    /// Bytes/s over the current pass's readings in the window; until it
    /// has [`Self::MIN_S`] of them, the rate QEMU sends at
    /// ([`Self::send_rate`]); None before that has any.
    ///
    /// Only the current pass: the bulk pass drains zero pages as headers,
    /// far faster than a later pass's dirtied pages go. Counted across the
    /// boundary, the bulk pass's last seconds said 7.5 MB/s for a second
    /// pass that drained at 6.1 (tests/fixtures/corpus/evaluation, grow-l50
    /// at half its migration).
    pub fn rate(&self) -> Option<f64> {
        let pass = self.last.map(|p| p.sync);
        self.over_window(|w| (Some(w.3) == pass).then_some(w.1))
            .or_else(|| self.send_rate())
    }

    /// Bytes/s QEMU sent over the window, across passes (the wire's rate
    /// does not change with them); None before [`Self::MIN_S`] of
    /// readings.
    pub fn send_rate(&self) -> Option<f64> {
        self.over_window(|w| Some(w.2))
    }

    /// Bytes/s over the intervals `bytes` counts (None: not counted).
    fn over_window(&self, bytes: impl Fn(&(f64, f64, f64, u64)) -> Option<f64>) -> Option<f64> {
        let (t, b) = self
            .window
            .iter()
            .filter_map(|w| bytes(w).map(|b| (w.0, b)))
            .fold((0.0, 0.0), |(t, b), (dt, db)| (t + dt, b + db));
        (t >= Self::MIN_S).then(|| b / t)
    }
}

/// One finished pre-copy iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct IterationSample {
    /// Iteration number k (= the dirty-sync-count that started it).
    pub iteration: u64,
    /// Iterations this sample spans: 1, unless boundaries were missed
    /// (no events and several syncs between two polls, or a reconnect).
    pub syncs: u64,
    /// X1: `dirty_rate_pps` × `iter_s`.
    pub dirty_pages: f64,
    /// Pages QEMU's sync at the end of the iteration found newly dirty,
    /// from its counters (see the module docs); `None` if no poll landed
    /// in the iteration or the next one.
    pub dirty_pages_counted: Option<u64>,
    /// QEMU's `dirty-pages-rate` after the closing sync (the last one
    /// reported while the migration ran), pages/s.
    pub dirty_rate_pps: u64,
    /// X2, percent.
    pub mem_usage_pct: f64,
    /// X3: vCPU threads' CPU time / (wall time × vCPUs), percent.
    pub cpu_usage_pct: f64,
    /// X4, bits/s (0 when no VM interface is measured).
    pub vm_net_bps: f64,
    /// X5: the previous sample's `iter_s` (0 for the first).
    pub prev_iter_s: f64,
    /// X6, bits/s (0 when no uplink is measured).
    pub host_net_bps: f64,
    /// Duration of the iteration, seconds.
    pub iter_s: f64,
    pub page_size: u64,
    /// End of the iteration, seconds after the first boundary seen.
    pub end_s: f64,
    /// `dirty-sync-count` when the sample was closed.
    pub dirty_sync_count: u64,
    pub status: MigrationStatus,
    pub transferred_bytes: u64,
    /// Bytes sent during the iteration (`ram.transferred` between its
    /// boundaries).
    pub sent_bytes: u64,
    pub remaining_bytes: u64,
    /// Guest RAM being migrated (`ram.total`; libvirt's `memory_total`).
    pub ram_total_bytes: u64,
    /// The guest's RAM as configured (QMP: `query-memory-size-summary`'s
    /// base memory, what a trace's header states; libvirt: the job's
    /// total, which also counts video RAM and ROMs): what X2 is a share
    /// of when the predictors turn it into used pages.
    pub guest_ram_bytes: u64,
    pub mbps: f64,
    pub expected_downtime_ms: Option<u64>,
    /// The guest's write rate as QEMU's `calc-dirty-rate` measured it
    /// during the iteration (measurements collected before its closing
    /// boundary, whole MiB/s each), bytes/s; None where none was made
    /// ([`MonitorConfig::sample_later_passes`]).
    pub sampled_dirty_bps: Option<f64>,
    /// Where those measurements' climb or fall had taken the rate by the
    /// iteration's end, bytes/s; None unless they moved significantly
    /// ([`crate::predict::sampled_trend_end`]).
    pub sampled_dirty_end_bps: Option<f64>,
}

/// Names of the trace columns after the standard nine, as
/// [`IterationSample::to_trace_row`] fills them.
pub const EXTRA_COLUMNS: [&str; 9] = [
    "dirty_pages_counted",
    "dirty_rate_pps",
    "dirty_sync_count",
    "syncs",
    "transferred_bytes",
    "remaining_bytes",
    "mbps",
    "expected_downtime_ms",
    "end_s",
];

impl IterationSample {
    /// The iteration as the predictors see it (X1..X6, duration, bytes
    /// sent, bytes left for the next iteration).
    pub fn to_iteration(&self) -> Iteration {
        Iteration {
            x: self.to_trace_row().x(),
            duration_s: self.iter_s,
            sent_bytes: Some(self.sent_bytes as f64),
            remaining_bytes: Some(self.remaining_bytes as f64),
            sampled_dirty_pps: self
                .sampled_dirty_bps
                .and_then(|bps| crate::predict::sampled_pages_per_s(bps, self.page_size as f64)),
            sampled_end_pps: self
                .sampled_dirty_end_bps
                .and_then(|bps| crate::predict::sampled_pages_per_s(bps, self.page_size as f64)),
            used_pages: crate::predict::used_pages(
                self.mem_usage_pct,
                self.guest_ram_bytes as f64,
                self.page_size as f64,
            ),
        }
    }

    pub fn to_trace_row(&self) -> TraceRow {
        TraceRow {
            iteration: self.iteration,
            dirty_pages: self.dirty_pages.round(),
            mem_usage_pct: self.mem_usage_pct.clamp(0.0, 100.0),
            cpu_usage_pct: self.cpu_usage_pct.max(0.0),
            vm_net_bps: self.vm_net_bps.max(0.0),
            prev_iter_s: self.prev_iter_s,
            host_net_bps: self.host_net_bps.max(0.0),
            iter_s: self.iter_s,
            page_size: self.page_size,
            extra: vec![
                self.dirty_pages_counted
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                self.dirty_rate_pps.to_string(),
                self.dirty_sync_count.to_string(),
                self.syncs.to_string(),
                self.transferred_bytes.to_string(),
                self.remaining_bytes.to_string(),
                format!("{:.3}", self.mbps),
                self.expected_downtime_ms
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                format!("{:.3}", self.end_s),
            ],
        }
    }
}

/// How the followed migration ended.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationOutcome {
    pub status: MigrationStatus,
    /// `query-migrate` after the end.
    pub info: MigrationInfo,
    /// The last `query-migrate` reply with RAM counters (QEMU leaves them
    /// out once a migration is cancelled).
    pub last_progress: Option<MigrationInfo>,
    /// Samples yielded.
    pub samples: u64,
    /// The interval from the last pre-copy sync to QEMU's final sync in
    /// stop-and-copy, not yielded as an iteration (see `boundary_at`).
    pub stop_and_copy: Option<IterationSample>,
    /// The sync count at the first boundary the monitor saw (1 when it
    /// followed the migration from its start).
    pub first_sync: Option<u64>,
    /// Pages sent + pages dirty, per sync count, as observed.
    pub ledger: BTreeMap<u64, u64>,
    /// Largest difference between two observations of the ledger within
    /// one sync count; 0 when QEMU's counters behave as documented.
    pub ledger_spread: u64,
    /// Memory readings that fell back from the balloon to the host view.
    pub mem_fallbacks: u64,
}

#[derive(Clone, Debug)]
struct HostSnapshot {
    at: Instant,
    vcpu_ns: u64,
    vm_bytes: Option<u64>,
    uplink_bytes: Option<u64>,
    mem_pct: f64,
}

#[derive(Clone, Debug)]
struct Boundary {
    sync: u64,
    /// QEMU's event timestamp, seconds (None when seen by polling).
    qemu_ts: Option<f64>,
    host: HostSnapshot,
    /// QEMU's `ram.transferred` when the boundary was seen.
    transferred: u64,
}

#[derive(Clone, Copy, Debug)]
struct Epoch {
    first: u64,
    min: u64,
    max: u64,
}

/// Follows one migration of one VM. See the module docs.
pub struct MigrationMonitor {
    qmp: Qmp,
    cfg: MonitorConfig,
    vcpu_tids: Vec<u32>,
    pid: u32,
    ram_bytes: u64,
    mem: MemorySource,
    last_balloon_pct: Option<f64>,
    mem_fallbacks: u64,
    /// Guest RAM's resident size, when no balloon reports usage.
    resident: hoststats::GuestResident,
    vm_counter: Option<Box<dyn ByteCounter>>,
    uplink_counter: Option<Box<dyn ByteCounter>>,
    events: bool,
    backlog: VecDeque<QmpEvent>,
    started: bool,
    baseline_sync: u64,
    boundary: Option<Boundary>,
    first: Option<(u64, Option<f64>, Instant)>,
    ledger: BTreeMap<u64, Epoch>,
    prev_iter_s: f64,
    page_size: u64,
    last_rate: u64,
    last_progress: Option<MigrationInfo>,
    progress: tokio::sync::watch::Sender<Option<Progress>>,
    bulk: BulkSampler,
    used_memory: Option<u64>,
    /// The guest's free memory, bytes, as its balloon last said.
    free_memory: Option<u64>,
    /// Bytes of the guest's RAM not resident in QEMU: never touched.
    untouched: Option<u64>,
    ready: VecDeque<IterationSample>,
    held: Option<IterationSample>,
    samples: u64,
    outcome: Option<MigrationOutcome>,
    next_poll: Instant,
}

impl MigrationMonitor {
    /// Looks the VM up (vCPU threads, QEMU's pid, RAM size, balloon device,
    /// interfaces) so that missing pieces fail here, before a migration.
    pub async fn new(mut qmp: Qmp, cfg: MonitorConfig) -> Result<Self, MonitorError> {
        let vcpu_tids: Vec<u32> = qmp
            .query_cpus_fast()
            .await?
            .iter()
            .filter_map(|c| c.thread_id)
            .collect();
        let first_tid = *vcpu_tids.first().ok_or(MonitorError::NoVcpuThreads)?;
        let pid = hoststats::process_of_thread(first_tid)?;
        let ram_bytes = qmp.query_memory_size_summary().await?.base_memory;

        let mem = match qmp.find_balloon().await? {
            Some(qom_path) => {
                let interval = qmp
                    .qom_get(&qom_path, "guest-stats-polling-interval")
                    .await?;
                if interval.as_u64() == Some(0) && cfg.balloon_poll_secs > 0 {
                    qmp.qom_set(
                        &qom_path,
                        "guest-stats-polling-interval",
                        serde_json::json!(cfg.balloon_poll_secs),
                    )
                    .await?;
                }
                MemorySource::Balloon { qom_path }
            }
            None => {
                if hoststats::guest_ram_resident(pid, ram_bytes)?.is_none() {
                    return Err(MonitorError::NoMemorySource { pid, ram_bytes });
                }
                MemorySource::GuestRamResident
            }
        };

        let counter = |ifaces: &[String]| -> Option<Box<dyn ByteCounter>> {
            match ifaces {
                [] => None,
                [one] => Some(Box::new(ProcNetDev::new(pid, one.clone()))),
                many => Some(Box::new(SumCounter(
                    many.iter()
                        .map(|i| Box::new(ProcNetDev::new(pid, i.clone())) as Box<dyn ByteCounter>)
                        .collect(),
                ))),
            }
        };
        let mut vm_counter = counter(&cfg.vm_ifaces);
        let mut uplink_counter = counter(cfg.uplink.as_slice());
        for c in vm_counter.iter_mut().chain(uplink_counter.iter_mut()) {
            c.total_bytes()?; // fail now if an interface is missing
        }

        let info = qmp.query_migrate().await?;
        let running = info
            .status
            .as_ref()
            .is_some_and(MigrationStatus::is_running);
        let baseline_sync = match (&info.ram, running) {
            (Some(ram), true) => ram.dirty_sync_count,
            _ => 0,
        };
        let events = qmp
            .query_migrate_capabilities()
            .await?
            .iter()
            .any(|c| c.capability == Capability::Events.qapi_name() && c.state);
        let poll = cfg.poll_interval;
        Ok(MigrationMonitor {
            qmp,
            cfg,
            vcpu_tids,
            pid,
            ram_bytes,
            mem,
            last_balloon_pct: None,
            mem_fallbacks: 0,
            resident: hoststats::GuestResident::new(pid, ram_bytes),
            vm_counter,
            uplink_counter,
            events,
            backlog: VecDeque::new(),
            started: running,
            baseline_sync,
            boundary: None,
            first: None,
            ledger: BTreeMap::new(),
            prev_iter_s: 0.0,
            page_size: 4096,
            last_rate: 0,
            last_progress: None,
            progress: tokio::sync::watch::Sender::new(None),
            bulk: BulkSampler::default(),
            used_memory: None,
            free_memory: None,
            untouched: None,
            ready: VecDeque::new(),
            held: None,
            samples: 0,
            outcome: None,
            next_poll: Instant::now() + poll,
        })
    }

    /// Replaces the interface counter for X4 (e.g. with the eBPF datapath's
    /// per-VM counters).
    pub fn set_vm_counter(&mut self, counter: Box<dyn ByteCounter>) {
        self.vm_counter = Some(counter);
    }

    /// Replaces the interface counter for X6.
    pub fn set_uplink_counter(&mut self, counter: Box<dyn ByteCounter>) {
        self.uplink_counter = Some(counter);
    }

    /// Turns the `events` capability on so iteration boundaries carry
    /// QEMU's timestamps. Returns whether events are on; QEMU cannot change
    /// capabilities during a migration, so one already running is followed
    /// by polling.
    pub async fn enable_events(&mut self) -> Result<bool, MonitorError> {
        if self.events {
            return Ok(true);
        }
        if self.started {
            return Ok(false);
        }
        self.qmp
            .set_capabilities(&[(Capability::Events, true)])
            .await?;
        self.events = true;
        Ok(true)
    }

    pub fn events_enabled(&self) -> bool {
        self.events
    }

    /// Waits until a migration is under way (or `timeout` passes).
    pub async fn wait_for_start(&mut self, timeout: Duration) -> Result<(), MonitorError> {
        let deadline = Instant::now() + timeout;
        let mut polled = false;
        while !self.started {
            let now = Instant::now();
            if now >= deadline {
                return Err(MonitorError::NotStarted(timeout));
            }
            // With events on, QEMU announces the start (MIGRATION): one
            // query per call is the safety net. Polling every 200 ms for
            // 56 idle VMs was a third of the agent's CPU in `bench
            // agent-load`.
            let left = deadline.saturating_duration_since(now);
            let wait = if self.events && polled {
                left
            } else {
                self.cfg.poll_interval.min(left)
            };
            if let Some(ev) = self.qmp.next_event(wait).await? {
                if ev.migration_pass().is_some()
                    || ev.migration_status().is_some_and(|s| s.is_running())
                {
                    self.started = true;
                }
                self.backlog.push_back(ev);
                continue;
            }
            let info = self.qmp.query_migrate().await?;
            polled = true;
            if info
                .status
                .as_ref()
                .is_some_and(MigrationStatus::is_running)
            {
                self.started = true;
            }
        }
        Ok(())
    }

    /// The next finished iteration; `Ok(None)` once the migration has ended
    /// (then [`outcome`](Self::outcome) says how). Waits as long as the
    /// migration runs: wrap it in a timeout if that must be bounded.
    /// Every poll's [`Progress`], as it comes (polls run while
    /// [`Self::next_sample`] waits for a pass to end).
    pub fn progress(&self) -> tokio::sync::watch::Receiver<Option<Progress>> {
        self.progress.subscribe()
    }

    pub async fn next_sample(&mut self) -> Result<Option<IterationSample>, MonitorError> {
        let mut reconnects = 0;
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Ok(Some(s));
            }
            if self.outcome.is_some() {
                return Ok(None);
            }
            match self.step().await {
                Ok(()) => reconnects = 0,
                Err(MonitorError::Qmp(e)) if e.is_connection_lost() => {
                    if reconnects >= self.cfg.reconnect_attempts {
                        return Err(MonitorError::Reconnect {
                            attempts: reconnects,
                            source: e,
                        });
                    }
                    reconnects += 1;
                    tracing::warn!(error = %crate::api::errors::chain(&e), attempt = reconnects, "QMP connection lost; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Err(e) = self.qmp.reconnect().await {
                        tracing::warn!(error = %crate::api::errors::chain(&e), "reconnect failed");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One event or one poll.
    async fn step(&mut self) -> Result<(), MonitorError> {
        if let Some(ev) = self.backlog.pop_front() {
            return self.on_event(ev).await;
        }
        let now = Instant::now();
        if now < self.next_poll
            && let Some(ev) = self.qmp.next_event(self.next_poll - now).await?
        {
            return self.on_event(ev).await;
        }
        self.next_poll = Instant::now() + self.cfg.poll_interval;
        self.poll().await
    }

    async fn on_event(&mut self, ev: QmpEvent) -> Result<(), MonitorError> {
        if let Some(pass) = ev.migration_pass() {
            self.started = true;
            let info = self.boundary_at(pass, Some(ev.timestamp)).await?;
            if info.status.as_ref().is_some_and(MigrationStatus::is_final) {
                self.finish().await?;
            }
        } else if let Some(status) = ev.migration_status() {
            tracing::debug!(status = status.as_str(), "MIGRATION event");
            if status.is_running() {
                self.started = true;
            } else if status.is_final() && self.started {
                self.finish().await?;
            }
        }
        Ok(())
    }

    async fn poll(&mut self) -> Result<(), MonitorError> {
        let info = self.qmp.query_migrate().await?;
        self.observe(&info);
        let status = info.status.clone().unwrap_or(MigrationStatus::None);
        if status.is_running() {
            self.started = true;
        }
        if !self.started {
            return Ok(());
        }
        let sync = info.ram.as_ref().map_or(0, |r| r.dirty_sync_count);
        let known = self
            .boundary
            .as_ref()
            .map_or(self.baseline_sync, |b| b.sync);
        if !self.events && sync > known {
            self.boundary_at(sync, None).await?;
        }
        if status.is_final() {
            self.finish().await?;
        } else if self.cfg.sample_bulk_pass && sync <= 1 {
            self.sample_bulk_pass(false).await?;
        } else if self.cfg.sample_bulk_pass
            && self.cfg.sample_later_passes
            && status == MigrationStatus::Active
        {
            self.bulk.bulk_over = true;
            self.sample_bulk_pass(false).await?;
        }
        Ok(())
    }

    /// One step of [`BulkSampler`]: asks for a measurement when none
    /// runs, collects one that has had its time. With `wait`, until one
    /// is collected, refused or given up. Returns the rate so far
    /// ([`Progress::bulk_dirty_rate`]). QEMU
    /// refusing is no error (another measurement may hold its one slot);
    /// a lost connection is.
    pub async fn sample_bulk_pass(&mut self, wait: bool) -> Result<Option<f64>, MonitorError> {
        const SETTLE: Duration = Duration::from_millis(100);
        loop {
            if self.bulk.refused >= BulkSampler::GIVE_UP {
                break;
            }
            let Some(at) = self.bulk.asked else {
                if self.used_memory.is_none() {
                    self.read_used_memory().await?;
                }
                let window = self.bulk.next_window();
                let ms = window.as_millis() as u64;
                match self
                    .qmp
                    .calc_dirty_rate(ms, BulkSampler::PAGES_PER_GIB)
                    .await
                {
                    Ok(()) => {
                        self.bulk.asked = Some(Instant::now());
                        self.bulk.window = window;
                        self.bulk.taken += 1;
                    }
                    Err(e) if e.is_connection_lost() => return Err(e.into()),
                    Err(e) => {
                        self.bulk.refused += 1;
                        tracing::debug!(error = %crate::api::errors::chain(&e), "calc-dirty-rate refused");
                        break;
                    }
                }
                if wait {
                    continue;
                }
                break;
            };
            let window = self.bulk.window;
            let due = at + window + SETTLE;
            if Instant::now() < due {
                if !wait {
                    break;
                }
                tokio::time::sleep_until(due).await;
            }
            let info = self.qmp.query_dirty_rate().await?;
            if info.status == "measured" {
                let mib = info.dirty_rate.unwrap_or(0).max(0);
                let rate = mib as f64 * 1024.0 * 1024.0;
                // Each reading, so that a forecast can be followed back to
                // what it was made from (the trend rule reads their order).
                tracing::debug!(
                    dirty_rate_mib = mib,
                    window_ms = window.as_millis() as u64,
                    bulk_pass = !self.bulk.bulk_over,
                    "calc-dirty-rate measured"
                );
                if window != BulkSampler::MEASURE {
                    // A long measurement says how writes overlap, not the
                    // rate: it is kept apart (the bulk pass's only).
                    if !self.bulk.bulk_over {
                        self.bulk.long.push(rate);
                    }
                } else {
                    if !self.bulk.bulk_over {
                        self.bulk.rates.push(rate);
                    }
                    self.bulk.pass.push((at + window / 2, rate));
                }
                self.bulk.asked = None;
                self.bulk.refused = 0;
                self.read_used_memory().await?;
                break;
            }
            if at.elapsed() >= window + BulkSampler::ABANDON {
                self.bulk.asked = None;
                break;
            }
            if !wait {
                break;
            }
            tokio::time::sleep(SETTLE).await;
        }
        Ok(self.bulk.bulk_rate(Instant::now()))
    }

    /// Reads the guest's used memory ([`Progress::used_memory`]); a source
    /// that fails to answer leaves the last reading (a lost connection is
    /// an error).
    async fn read_used_memory(&mut self) -> Result<(), MonitorError> {
        // What the guest never touched (its zero pages), for
        // [`Progress::unsent_zero`], which only the bulk pass has;
        // unknown when the mapping is not found.
        if !self.bulk.bulk_over
            && let Ok(Some(resident)) = self.resident.read()
        {
            self.untouched = Some(self.ram_bytes.saturating_sub(resident));
        }
        match self.memory_pct().await {
            Ok(pct) => {
                self.set_used_memory(pct);
                Ok(())
            }
            Err(MonitorError::Qmp(e)) if e.is_connection_lost() => Err(MonitorError::Qmp(e)),
            Err(e) => {
                tracing::debug!(error = %crate::api::errors::chain(&e), "reading the guest's used memory");
                Ok(())
            }
        }
    }

    /// Keeps X2's reading (`pct` of the guest's RAM) as bytes used.
    fn set_used_memory(&mut self, pct: f64) {
        self.used_memory = Some((pct / 100.0 * self.ram_bytes as f64).round() as u64);
    }

    /// Records the ledger value (pages sent + pages dirty) for the sync
    /// count this reply shows.
    fn observe(&mut self, info: &MigrationInfo) {
        let Some(ram) = &info.ram else { return };
        self.last_progress = Some(info.clone());
        if let Some(p) = ram.page_size.filter(|p| *p > 0) {
            self.page_size = p;
        }
        self.progress.send_replace(Some(Progress {
            remaining: ram.remaining,
            transferred: ram.transferred,
            sync: ram.dirty_sync_count,
            at: Instant::now(),
            bulk_dirty_rate: self.bulk.bulk_rate(Instant::now()),
            used_memory: self.used_memory,
            // Pre-copy's bulk pass only: after a switch to post-copy the
            // sync count can still say 1, and the source's balloon no
            // longer hears from the guest.
            unsent_zero: (ram.dirty_sync_count <= 1
                && info.status == Some(MigrationStatus::Active))
            .then(|| {
                unsent_zero(
                    self.free_memory,
                    self.untouched,
                    ram.duplicate,
                    self.page_size,
                    ram.remaining,
                )
            })
            .flatten(),
            sampled_working_set: self.bulk.working_set().map(|w| w.round() as u64),
        }));
        // QEMU stops reporting the rate (0) once the migration completed.
        if info.status != Some(MigrationStatus::Completed) {
            self.last_rate = ram.dirty_pages_rate;
        }
        if ram.dirty_sync_count == 0 {
            return;
        }
        let value = ram.pages_sent() + ram.remaining / self.page_size;
        self.ledger
            .entry(ram.dirty_sync_count)
            .and_modify(|e| {
                e.min = e.min.min(value);
                e.max = e.max.max(value);
            })
            .or_insert(Epoch {
                first: value,
                min: value,
                max: value,
            });
    }

    /// A boundary at sync `sync` (seen now): measures, closes the open
    /// iteration and releases its sample, except when QEMU made the sync
    /// after stopping the VM. A completed pre-copy migration always ends
    /// with such a sync (QEMU 7.2 syncs once more in `ram_save_complete`,
    /// right after the sync that found little enough left to stop): the
    /// interval it closes is the start of stop-and-copy, not an iteration.
    /// Because our status query may land just after the stop even for the
    /// sync before, a sample closed while the VM is stopped is held until
    /// another sync (it was an iteration) or the end (it was not).
    async fn boundary_at(
        &mut self,
        sync: u64,
        qemu_ts: Option<f64>,
    ) -> Result<MigrationInfo, MonitorError> {
        let host = self.snapshot().await?;
        let info = self.qmp.query_migrate().await?;
        self.observe(&info);
        if let Some(sample) = self.close(sync, qemu_ts, host, &info) {
            let vm = self.qmp.query_status().await?;
            if let Some(held) = self.held.take() {
                self.release(held);
            }
            if matches!(vm.status.as_str(), "finish-migrate" | "postmigrate") {
                self.held = Some(sample);
            } else {
                self.release(sample);
            }
        }
        Ok(info)
    }

    fn release(&mut self, sample: IterationSample) {
        self.samples += 1;
        self.ready.push_back(sample);
    }

    /// Closes the open iteration at sync `sync` into a sample.
    fn close(
        &mut self,
        sync: u64,
        qemu_ts: Option<f64>,
        host: HostSnapshot,
        info: &MigrationInfo,
    ) -> Option<IterationSample> {
        if self.first.is_none() {
            self.first = Some((sync, qemu_ts, host.at));
        }
        let transferred = info.ram.as_ref().map_or(0, |r| r.transferred);
        let Some(b) = self.boundary.take() else {
            self.boundary = Some(Boundary {
                sync,
                qemu_ts,
                host,
                transferred,
            });
            return None;
        };
        if sync <= b.sync {
            self.boundary = Some(b); // a repeated or stale boundary
            return None;
        }
        let wall = host.at.duration_since(b.host.at).as_secs_f64();
        let iter_s = match (qemu_ts, b.qemu_ts) {
            (Some(t1), Some(t0)) if t1 > t0 => t1 - t0,
            _ => wall,
        };
        let rate_wall = wall.max(1e-3);
        let bps = |now: Option<u64>, then: Option<u64>| match (now, then) {
            (Some(n), Some(t)) => n.wrapping_sub(t) as f64 * 8.0 / rate_wall,
            _ => 0.0,
        };
        let cpu_ns = host.vcpu_ns.saturating_sub(b.host.vcpu_ns) as f64;
        let cpu_usage_pct = 100.0 * cpu_ns / (rate_wall * 1e9 * self.vcpu_tids.len() as f64);
        let counted = match (self.ledger.get(&sync), self.ledger.get(&b.sync)) {
            (Some(now), Some(then)) => Some(now.first.saturating_sub(then.first)),
            _ => None,
        };
        let ram = info.ram.clone().unwrap_or_default();
        let rate = self.last_rate;
        let end_s = match (qemu_ts, self.first) {
            (Some(t), Some((_, Some(t0), _))) => t - t0,
            (_, Some((_, _, at0))) => host.at.duration_since(at0).as_secs_f64(),
            _ => 0.0,
        };
        let (sampled_dirty_bps, sampled_dirty_end_bps) = self.bulk.close_pass(host.at);
        let sample = IterationSample {
            iteration: b.sync,
            syncs: sync - b.sync,
            dirty_pages: rate as f64 * iter_s,
            dirty_pages_counted: counted,
            dirty_rate_pps: rate,
            mem_usage_pct: host.mem_pct,
            cpu_usage_pct,
            vm_net_bps: bps(host.vm_bytes, b.host.vm_bytes),
            prev_iter_s: self.prev_iter_s,
            host_net_bps: bps(host.uplink_bytes, b.host.uplink_bytes),
            iter_s,
            page_size: self.page_size,
            end_s,
            dirty_sync_count: ram.dirty_sync_count,
            status: info.status.clone().unwrap_or(MigrationStatus::Other),
            transferred_bytes: ram.transferred,
            sent_bytes: ram.transferred.saturating_sub(b.transferred),
            remaining_bytes: ram.remaining,
            ram_total_bytes: ram.total,
            guest_ram_bytes: self.ram_bytes,
            mbps: ram.mbps,
            expected_downtime_ms: info.expected_downtime,
            sampled_dirty_bps,
            sampled_dirty_end_bps,
        };
        if sample.syncs > 1 {
            tracing::warn!(
                iteration = sample.iteration,
                syncs = sample.syncs,
                "iteration boundaries were missed; one sample spans several iterations"
            );
        }
        tracing::debug!(
            iteration = sample.iteration,
            dirty_pages = sample.dirty_pages,
            counted = ?sample.dirty_pages_counted,
            iter_s = sample.iter_s,
            "iteration finished"
        );
        self.prev_iter_s = iter_s;
        self.boundary = Some(Boundary {
            sync,
            qemu_ts,
            host,
            transferred,
        });
        Some(sample)
    }

    /// Handles events still queued, then records the outcome.
    async fn finish(&mut self) -> Result<(), MonitorError> {
        while let Some(ev) = self.qmp.try_event() {
            if let Some(pass) = ev.migration_pass() {
                self.boundary_at(pass, Some(ev.timestamp)).await?;
            }
        }
        let info = self.qmp.query_migrate().await?;
        self.observe(&info);
        let status = info.status.clone().unwrap_or(MigrationStatus::Other);
        let mut stop_and_copy = None;
        if let Some(held) = self.held.take() {
            if status == MigrationStatus::Completed {
                stop_and_copy = Some(held);
            } else {
                self.release(held);
            }
        }
        let ledger_spread = self
            .ledger
            .values()
            .map(|e| e.max - e.min)
            .max()
            .unwrap_or(0);
        self.outcome = Some(MigrationOutcome {
            status,
            info,
            last_progress: self.last_progress.clone(),
            stop_and_copy,
            samples: self.samples,
            first_sync: self.first.map(|(s, _, _)| s),
            ledger: self.ledger.iter().map(|(k, e)| (*k, e.first)).collect(),
            ledger_spread,
            mem_fallbacks: self.mem_fallbacks,
        });
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<HostSnapshot, MonitorError> {
        let mut vcpu_ns = 0u64;
        for tid in &self.vcpu_tids {
            vcpu_ns = vcpu_ns.saturating_add(hoststats::thread_cpu_ns(*tid)?);
        }
        let vm_bytes = match &mut self.vm_counter {
            Some(c) => Some(c.total_bytes()?),
            None => None,
        };
        let uplink_bytes = match &mut self.uplink_counter {
            Some(c) => Some(c.total_bytes()?),
            None => None,
        };
        let mem_pct = self.memory_pct().await?;
        self.set_used_memory(mem_pct);
        Ok(HostSnapshot {
            at: Instant::now(),
            vcpu_ns,
            vm_bytes,
            uplink_bytes,
            mem_pct,
        })
    }

    async fn memory_pct(&mut self) -> Result<f64, MonitorError> {
        if let MemorySource::Balloon { qom_path } = &self.mem {
            let path = qom_path.clone();
            let stats = self.qmp.balloon_stats(&path).await?;
            if let Some(free) = stats.stats.stat_free_memory {
                self.free_memory = Some(free);
            }
            if let Some(p) = stats.used_pct() {
                self.last_balloon_pct = Some(p);
                return Ok(p);
            }
            if let Some(p) = self.last_balloon_pct {
                return Ok(p);
            }
            self.mem_fallbacks += 1;
        }
        let resident = self.resident.read()?.ok_or(MonitorError::NoMemorySource {
            pid: self.pid,
            ram_bytes: self.ram_bytes,
        })?;
        Ok(100.0 * resident as f64 / self.ram_bytes.max(1) as f64)
    }

    /// How the followed migration ended, once `next_sample` returned None.
    pub fn outcome(&self) -> Option<&MigrationOutcome> {
        self.outcome.as_ref()
    }

    pub fn memory_source(&self) -> &MemorySource {
        &self.mem
    }

    /// What X4 and X6 count, for trace headers.
    pub fn net_sources(&self) -> (String, String) {
        let d = |c: &Option<Box<dyn ByteCounter>>| {
            c.as_ref()
                .map_or_else(|| "not measured (0)".to_owned(), |c| c.describe())
        };
        (d(&self.vm_counter), d(&self.uplink_counter))
    }

    /// QEMU's process id (found from its vCPU threads).
    pub fn qemu_pid(&self) -> u32 {
        self.pid
    }

    pub fn vcpus(&self) -> usize {
        self.vcpu_tids.len()
    }

    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// The QMP connection, for control commands between samples.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    pub fn into_qmp(self) -> Qmp {
        self.qmp
    }
}
