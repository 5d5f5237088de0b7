//! [`LibvirtMonitor`]: polls a domain's migration job statistics and turns
//! them into one [`IterationSample`] per pre-copy iteration (see the module
//! docs of [`super`] for what each field is read from).

use crate::api::units;
use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use virt::error::ErrorNumber;

use super::{
    LibvirtError,
    domain::{JobEnd, JobOperation, JobSnapshot, LibvirtDomain, RunState},
    pid::{default_pid_file, find_qemu_pid},
};
use crate::{
    migration::MigrationEnd,
    qemu::{
        IterationSample, Progress,
        hoststats::{self, ByteCounter as _, ProcNetDev},
        types::MigrationStatus,
    },
};

/// Where a libvirt-managed VM is (the `[[vm]] libvirt = {..}` config).
#[derive(Debug, Clone, PartialEq)]
pub struct LibvirtTarget {
    pub uri: String,
    pub domain: String,
    pub pid_file: Option<PathBuf>,
}

/// Re-polls allowed while QEMU finishes the sync that ended an iteration.
const SETTLE_POLLS: u32 = 10;
const SETTLE_INTERVAL: Duration = Duration::from_millis(25);

/// Whether a boundary's dirty rate may be the previous period's: the
/// guest runs, QEMU's once-a-second recomputation is due, and the value
/// has not moved since it was last seen.
fn rate_may_be_stale(job: &JobSnapshot, state: RunState, last_rate: u64, seen_ms: u64) -> bool {
    matches!(state, RunState::Running | RunState::PostCopy)
        && job.dirty_pages_per_sec == last_rate
        && job.elapsed_ms.saturating_sub(seen_ms) > 1000
}

/// How the libvirt source polls and what it measures.
#[derive(Debug, Clone)]
pub struct LibvirtMonitorConfig {
    /// Between two job-statistics polls.
    pub poll_interval: Duration,
    /// The host uplink in the agent's network namespace, for X6.
    pub uplink: Option<String>,
}

impl Default for LibvirtMonitorConfig {
    fn default() -> Self {
        LibvirtMonitorConfig {
            poll_interval: Duration::from_millis(100),
            uplink: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    vcpu_ns: Option<u64>,
    vm_bytes: Option<u64>,
    uplink_bytes: Option<u64>,
    mem_pct: f64,
}

#[derive(Debug, Clone)]
struct Open {
    iteration: u64,
    /// `time_elapsed` of the job when the iteration was first seen, ms.
    job_ms: u64,
    /// `memory_processed` when the iteration was first seen.
    processed: u64,
    reading: Reading,
    /// Joined in the middle of it: its start is unknown, no sample.
    partial: bool,
}

/// Follows one domain's outgoing migrations through libvirt. See the
/// module docs.
pub struct LibvirtMonitor {
    dom: Arc<Mutex<LibvirtDomain>>,
    name: String,
    cfg: LibvirtMonitorConfig,
    pub(super) pid: Option<u32>,
    ram_bytes: u64,
    /// Guest RAM's resident size, for QEMU `pid` (when libvirt reports no
    /// balloon usage).
    resident: Option<hoststats::GuestResident>,
    uplink: Option<ProcNetDev>,
    pub(super) started: bool,
    open: Option<Open>,
    first_ms: Option<u64>,
    /// First ledger value seen per iteration.
    ledger: BTreeMap<u64, u64>,
    prev_iter_s: f64,
    /// QEMU's dirty rate as last reported while the guest ran (it reads 0
    /// once the guest is stopped for the switch-over).
    last_rate: u64,
    /// Job time at which `last_rate` was first seen, ms.
    rate_seen_ms: u64,
    held: Option<IterationSample>,
    pub(super) ready: VecDeque<IterationSample>,
    samples: u64,
    last_job: Option<JobSnapshot>,
    pub(super) end: Option<MigrationEnd>,
    next_poll: Instant,
    pub(super) progress: tokio::sync::watch::Sender<Option<Progress>>,
}

impl LibvirtMonitor {
    /// Connects and looks the domain up (RAM size, QEMU's pid). A missing
    /// pid is logged, not fatal: statistics and control still work, only
    /// the migration sockets cannot be learned from `/proc`.
    pub async fn connect(
        target: &LibvirtTarget,
        cfg: LibvirtMonitorConfig,
    ) -> Result<Self, LibvirtError> {
        let (uri, name) = (target.uri.clone(), target.domain.clone());
        let dom = tokio::task::spawn_blocking(move || LibvirtDomain::connect(&uri, &name))
            .await
            .map_err(|e| LibvirtError::Task {
                domain: target.domain.clone(),
                reason: e.to_string(),
            })??;
        let dom = Arc::new(Mutex::new(dom));
        let pid_file = target
            .pid_file
            .clone()
            .or_else(|| default_pid_file(&target.uri, &target.domain));
        let pid = match find_qemu_pid(pid_file.as_deref(), &target.domain) {
            Ok(pid) => Some(pid),
            Err(why) => {
                tracing::warn!(domain = %target.domain, %why, "QEMU's pid not found: its migration sockets are not learned and X2 has no host-side fallback");
                None
            }
        };
        let mut m = LibvirtMonitor {
            dom,
            name: target.domain.clone(),
            uplink: cfg
                .uplink
                .clone()
                .map(|i| ProcNetDev::new(std::process::id(), i)),
            cfg,
            pid,
            ram_bytes: 0,
            resident: None,
            started: false,
            open: None,
            first_ms: None,
            ledger: BTreeMap::new(),
            prev_iter_s: 0.0,
            last_rate: 0,
            rate_seen_ms: 0,
            held: None,
            ready: VecDeque::new(),
            samples: 0,
            last_job: None,
            end: None,
            next_poll: Instant::now(),
            progress: tokio::sync::watch::Sender::new(None),
        };
        m.ram_bytes = m.call(|d| d.ram_bytes()).await?;
        Ok(m)
    }

    /// Runs `f` on the domain on a blocking thread.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LibvirtDomain) -> Result<T, LibvirtError> + Send + 'static,
    ) -> Result<T, LibvirtError> {
        let dom = self.dom.clone();
        tokio::task::spawn_blocking(move || {
            let d = dom.lock().unwrap_or_else(|p| p.into_inner());
            f(&d)
        })
        .await
        .map_err(|e| LibvirtError::Task {
            domain: self.name.clone(),
            reason: e.to_string(),
        })?
    }

    /// The domain handle, for callers that need libvirt directly.
    pub fn domain(&self) -> Arc<Mutex<LibvirtDomain>> {
        self.dom.clone()
    }

    async fn poll(&self) -> Result<(Option<JobSnapshot>, RunState), LibvirtError> {
        self.call(|d| Ok((d.job()?, d.state()?))).await
    }

    /// Host-side readings at a boundary. What libvirt cannot report right
    /// now (it leaves values out during the switch-over) is carried over
    /// from the previous reading, so that interval shows no change rather
    /// than a jump.
    async fn reading(&mut self) -> Result<Reading, LibvirtError> {
        let stats = self.call(|d| d.stats()).await?;
        let prev = self.open.as_ref().map(|o| o.reading.clone());
        if let Some(pid) = self.pid
            && self.resident.as_ref().is_none_or(|r| r.pid() != pid)
        {
            self.resident = Some(hoststats::GuestResident::new(pid, self.ram_bytes));
        }
        let mem_pct = stats
            .balloon_used_pct()
            .or_else(|| {
                self.resident
                    .as_mut()
                    .and_then(|r| r.read().ok().flatten())
                    .map(|r| 100.0 * r as f64 / self.ram_bytes.max(1) as f64)
            })
            .or(prev.as_ref().map(|p| p.mem_pct))
            .unwrap_or(0.0);
        let uplink_bytes = self.uplink.as_mut().and_then(|u| u.total_bytes().ok());
        let per_vcpu = stats.vcpu_ns.map(|ns| ns / u64::from(stats.vcpus.max(1)));
        Ok(Reading {
            at: Instant::now(),
            vcpu_ns: per_vcpu.or(prev.as_ref().and_then(|p| p.vcpu_ns)),
            vm_bytes: stats.net_bytes.or(prev.as_ref().and_then(|p| p.vm_bytes)),
            uplink_bytes,
            mem_pct,
        })
    }

    /// One poll: starts, boundaries, the end.
    pub(super) async fn step(&mut self) -> Result<(), LibvirtError> {
        let now = Instant::now();
        if now < self.next_poll {
            tokio::time::sleep_until(self.next_poll).await;
        }
        self.next_poll = Instant::now() + self.cfg.poll_interval;
        let (job, mut state) = match self.poll().await {
            Ok(v) => v,
            // The transient domain left with its migration.
            Err(LibvirtError::Call { source, .. })
                if self.started && source.code() == ErrorNumber::NoDomain =>
            {
                return self.finish(Some(JobEnd::Completed)).await;
            }
            Err(e) => return Err(e),
        };
        let job = job.filter(|j| j.operation != Some(JobOperation::IncomingMigration));
        let Some(mut job) = job else {
            if self.started {
                let end = self.call(|d| d.completed_job()).await.ok().flatten();
                let end = end.or(match state {
                    RunState::MigratedAway => Some(JobEnd::Completed),
                    _ => None,
                });
                return self.finish(end).await;
            }
            return Ok(());
        };
        if job.iteration == 0 {
            return Ok(()); // set-up: no sync yet
        }
        self.started = true;
        self.progress.send_replace(Some(Progress {
            remaining: job.remaining_bytes,
            transferred: job.processed_bytes,
            sync: job.iteration,
            at: Instant::now(),
            bulk_dirty_rate: None,
            used_memory: None,
            unsent_zero: None,
            sampled_working_set: None,
        }));
        self.ledger
            .entry(job.iteration)
            .or_insert_with(|| job.ledger());
        match self.open.clone() {
            None => {
                let reading = self.reading().await?;
                // From the start (bulk pass): the iteration began with the
                // job (its set-up is milliseconds).
                let from_start = job.iteration == 1;
                let job_ms = if from_start { 0 } else { job.elapsed_ms };
                self.first_ms = Some(job_ms);
                self.open = Some(Open {
                    iteration: job.iteration,
                    job_ms,
                    processed: job.processed_bytes,
                    reading,
                    partial: !from_start,
                });
            }
            Some(open) if job.iteration > open.iteration => {
                self.settle_rate(&mut job, &mut state).await;
                let reading = self.reading().await?;
                let sample = self.close(&open, &job, state, &reading);
                self.open = Some(Open {
                    iteration: job.iteration,
                    job_ms: job.elapsed_ms,
                    processed: job.processed_bytes,
                    reading,
                    partial: false,
                });
                if let Some(mut sample) = sample {
                    if let Some(held) = self.held.take() {
                        self.release(held);
                    }
                    if state == RunState::PausedForMigration {
                        if sample.syncs >= 2 {
                            // The sync that found little enough left and
                            // the one after the stop fell into one poll:
                            // the iteration(s) before are real, the last
                            // interval (milliseconds) is the stop-and-copy.
                            sample.syncs -= 1;
                            self.release(sample);
                        } else {
                            // The start of stop-and-copy, unless another
                            // sync follows.
                            self.held = Some(sample);
                        }
                    } else {
                        self.release(sample);
                    }
                }
            }
            Some(_) => {}
        }
        self.last_job = Some(job);
        Ok(())
    }

    /// QEMU counts a sync (`memory_iteration`) before it recomputes the
    /// dirty rate at the end of that same sync, so a poll can land in
    /// between and read the previous period's rate (0 after the bulk pass
    /// on a busy host). When the rate is due for an update (QEMU
    /// recomputes it at most once a second) but still reads the old value,
    /// poll again briefly until it moves: at most [`SETTLE_POLLS`] ×
    /// [`SETTLE_INTERVAL`].
    async fn settle_rate(&self, job: &mut JobSnapshot, state: &mut RunState) {
        for polls in 0..=SETTLE_POLLS {
            if !rate_may_be_stale(job, *state, self.last_rate, self.rate_seen_ms) {
                if polls > 0 {
                    tracing::debug!(
                        iteration = job.iteration,
                        polls,
                        rate = job.dirty_pages_per_sec,
                        "dirty rate settled after the sync"
                    );
                }
                break;
            }
            if polls == SETTLE_POLLS {
                break;
            }
            tokio::time::sleep(SETTLE_INTERVAL).await;
            match self.poll().await {
                Ok((Some(j), s)) if j.iteration == job.iteration => (*job, *state) = (j, s),
                // Ended, moved on or failed: keep what was seen; the next
                // poll deals with the rest.
                _ => break,
            }
        }
    }

    fn close(
        &mut self,
        open: &Open,
        job: &JobSnapshot,
        state: RunState,
        reading: &Reading,
    ) -> Option<IterationSample> {
        let iter_s = job.elapsed_ms.saturating_sub(open.job_ms) as f64 / 1000.0;
        let wall = reading
            .at
            .duration_since(open.reading.at)
            .as_secs_f64()
            .max(1e-3);
        let bps = |now: Option<u64>, then: Option<u64>| match (now, then) {
            (Some(n), Some(t)) => n.wrapping_sub(t) as f64 * 8.0 / wall,
            _ => 0.0,
        };
        let cpu_usage_pct = match (reading.vcpu_ns, open.reading.vcpu_ns) {
            (Some(n), Some(t)) => 100.0 * n.saturating_sub(t) as f64 / (wall * 1e9),
            _ => 0.0,
        };
        let counted = match (
            self.ledger.get(&job.iteration),
            self.ledger.get(&open.iteration),
        ) {
            (Some(now), Some(then)) => Some(now.saturating_sub(*then)),
            _ => None,
        };
        let prev_iter_s = self.prev_iter_s;
        self.prev_iter_s = iter_s;
        if matches!(state, RunState::Running | RunState::PostCopy) {
            if job.dirty_pages_per_sec != self.last_rate {
                self.rate_seen_ms = job.elapsed_ms;
            }
            self.last_rate = job.dirty_pages_per_sec;
        }
        if open.partial {
            return None;
        }
        let rate = self.last_rate;
        Some(IterationSample {
            iteration: open.iteration,
            syncs: job.iteration - open.iteration,
            dirty_pages: rate as f64 * iter_s,
            dirty_pages_counted: counted,
            dirty_rate_pps: rate,
            mem_usage_pct: reading.mem_pct,
            cpu_usage_pct,
            vm_net_bps: bps(reading.vm_bytes, open.reading.vm_bytes),
            prev_iter_s,
            host_net_bps: bps(reading.uplink_bytes, open.reading.uplink_bytes),
            iter_s,
            page_size: job.page_size,
            end_s: job.elapsed_ms.saturating_sub(self.first_ms.unwrap_or(0)) as f64 / 1000.0,
            dirty_sync_count: job.iteration,
            status: match state {
                RunState::PostCopy => MigrationStatus::PostcopyActive,
                _ => MigrationStatus::Active,
            },
            transferred_bytes: job.processed_bytes,
            sent_bytes: job.processed_bytes.saturating_sub(open.processed),
            remaining_bytes: job.remaining_bytes,
            ram_total_bytes: job.total_bytes,
            guest_ram_bytes: job.total_bytes,
            mbps: units::mbit(job.bytes_per_sec as f64),
            expected_downtime_ms: job.expected_downtime_ms,
            sampled_dirty_bps: None,
            sampled_dirty_end_bps: None,
        })
    }

    fn release(&mut self, sample: IterationSample) {
        self.samples += 1;
        self.ready.push_back(sample);
    }

    async fn finish(&mut self, end: Option<JobEnd>) -> Result<(), LibvirtError> {
        let status = match end {
            Some(JobEnd::Completed) => MigrationStatus::Completed,
            Some(JobEnd::Cancelled) => MigrationStatus::Cancelled,
            Some(JobEnd::Failed) | None => MigrationStatus::Failed,
        };
        if let Some(held) = self.held.take()
            && status != MigrationStatus::Completed
        {
            self.release(held);
        }
        self.end = Some(MigrationEnd {
            status,
            samples: self.samples,
        });
        Ok(())
    }

    /// The last job statistics seen.
    pub fn last_job(&self) -> Option<&JobSnapshot> {
        self.last_job.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boundary_rate_is_settled_only_when_an_update_is_due() {
        let job = |elapsed_ms, rate| JobSnapshot {
            elapsed_ms,
            dirty_pages_per_sec: rate,
            ..JobSnapshot::default()
        };
        // After the bulk pass: still the initial 0, 11 s after the start.
        assert!(rate_may_be_stale(&job(11_000, 0), RunState::Running, 0, 0));
        // Moved: settled.
        assert!(!rate_may_be_stale(
            &job(11_000, 900),
            RunState::Running,
            0,
            0
        ));
        // Unchanged but QEMU is not due yet (< 1 s since it last moved).
        assert!(!rate_may_be_stale(
            &job(11_600, 900),
            RunState::Running,
            900,
            11_000
        ));
        // Stopped for the switch-over: the rate is not recomputed.
        assert!(!rate_may_be_stale(
            &job(20_000, 900),
            RunState::PausedForMigration,
            900,
            11_000
        ));
    }
}
