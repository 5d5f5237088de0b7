//! Migration statistics and control through libvirt.
//!
//! Under libvirt (and so under KubeVirt, where virt-launcher runs
//! virtqemud) QEMU's QMP socket belongs to libvirt and takes one client:
//! vmbw reads the migration job's statistics (`virDomainGetJobStats`) and
//! controls the migration through libvirt's calls instead.
//!
//! - [`LibvirtDomain`]: one domain over a libvirt connection: job
//!   statistics, domain statistics, and the migration controls
//!   (`virDomainMigrateSetMaxSpeed`, `virDomainMigrateSetMaxDowntime`,
//!   `virDomainMigrateStartPostCopy`). Blocking calls.
//! - [`LibvirtMonitor`]: the agent's [`MigrationSource`] over libvirt. It
//!   polls the job statistics every `poll_interval` (100 ms by default) on
//!   a blocking thread and closes an iteration whenever libvirt's
//!   `memory_iteration` (QEMU's `dirty-sync-count`) moves, so iteration k
//!   means the same as under QMP.
//!
//! What a libvirt sample has, field by field (compared with QMP's
//! [`IterationSample`]):
//!
//! | field | from |
//! |---|---|
//! | `iteration`, `dirty_sync_count`, `syncs` | `memory_iteration` |
//! | `iter_s`, `end_s` | the job's `time_elapsed` at the first poll that saw each iteration (±`poll_interval`; QMP with events has QEMU's own timestamps) |
//! | `dirty_rate_pps`, X1 `dirty_pages` | `memory_dirty_rate` (at the closing sync; the last value seen while the guest ran if the sync came after the stop) × `iter_s` |
//! | `dirty_pages_counted` | `memory_normal` + `memory_constant` + `memory_remaining` / `memory_page_size`, as under QMP |
//! | `transferred_bytes`, `remaining_bytes`, `mbps` | `memory_processed`, `memory_remaining`, `memory_bps` |
//! | `expected_downtime_ms` | `downtime` (libvirt: the downtime expected at switch-over) |
//! | `status` | the domain's state: running = active, paused for post-copy = postcopy-active |
//! | X2 `mem_usage_pct` | `balloon.available`/`balloon.unused` (guest balloon statistics) when the guest reports them, else the resident part of the guest RAM mapping in `/proc/<qemu pid>/smaps`, else 0 |
//! | X3 `cpu_usage_pct` | `vcpu.<n>.time` (libvirt's per-vCPU CPU time) |
//! | X4 `vm_net_bps` | `net.<n>.rx.bytes` + `net.<n>.tx.bytes` of all the domain's interfaces |
//! | X6 `host_net_bps` | the uplink in the agent's own network namespace (`/proc/self/net/dev`); libvirt does not know the uplink |
//!
//! Missing compared with QMP: QEMU's event timestamps (boundaries are
//! polled), QEMU's migration status strings (`pre-switchover`, `device`,
//! ... are not visible; the domain state stands in), and X2 from the
//! balloon when the guest's balloon driver does not report statistics.
//! Boundaries closer than one poll make one sample spanning several
//! iterations (`syncs` > 1, as under QMP without events); the last
//! pre-copy iteration is lost when it, the switch-over and the end of the
//! job all fall between two polls (the job and, for a transient domain,
//! the domain are gone by the next poll). libvirt's own
//! `VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION` event would give exact
//! boundaries but needs a libvirt event loop in the agent; not done.
//!
//! libvirt lifts the migration speed to "unlimited" itself once it pauses
//! the domain for the switch-over (observed with libvirt 9.0:
//! `virDomainMigrateGetMaxSpeed` then reports 2^63 - 1 MiB/s); vmbw does
//! not fight that.
//!
//! Controls: `max-bandwidth` → `virDomainMigrateSetMaxSpeed` (MiB/s, so
//! rounded up to a whole MiB/s; never 0, which libvirt reads as
//! "unlimited"), `downtime-limit` → `virDomainMigrateSetMaxDowntime`,
//! post-copy → `virDomainMigrateStartPostCopy` (libvirt refuses it unless
//! the migration was started with `VIR_MIGRATE_POSTCOPY`).
//! `auto-converge` cannot be switched during a libvirt migration
//! (`VIR_MIGRATE_AUTO_CONVERGE` is a flag of the migration call): it is
//! reported as refused.
//!
//! QEMU's pid (for its migration sockets in `/proc/<pid>/net/tcp` and the
//! smaps fallback of X2): libvirt's pid file, `<run dir>/qemu/<domain>.pid`
//! (`qemu:///system`: `/run/libvirt/qemu/`; session daemons:
//! `$XDG_RUNTIME_DIR/libvirt/qemu/run/`; with `?socket=PATH`, next to the
//! socket), or `pid_file` from the config; checked against the process's
//! command line (`-name guest=<domain>`), and if that fails, the process
//! whose command line names the domain is searched in `/proc`.
//!
//! Files: `domain.rs` holds the FFI calls about one domain, `watch.rs`
//! those of discovery (libvirt's event loop and lifecycle callback): all
//! the `unsafe` is in these two. `pid.rs` finds QEMU's pid, `monitor.rs`
//! turns polled job statistics into samples; this file has the errors and
//! the [`MigrationSource`] implementation.

mod domain;
mod monitor;
mod pid;
mod watch;

use std::time::Duration;

use tokio::time::Instant;
use virt::error::ErrorNumber;

pub use self::{
    domain::{DomainStats, JobEnd, JobOperation, JobSnapshot, LibvirtDomain, MIB, RunState},
    monitor::{LibvirtMonitor, LibvirtMonitorConfig, LibvirtTarget},
    pid::{default_pid_file, find_qemu_pid},
    watch::{DomainChange, DomainWatch, RunningDomain},
};
use crate::{
    control::{Armed, QemuParams},
    migration::{Applied, MigrationEnd, MigrationSource, Refused, SourceError},
    qemu::{IterationSample, Progress},
};

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("connecting to libvirt at {uri}")]
    Connect {
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("domain {domain} not found at {uri}")]
    Domain {
        uri: String,
        domain: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("domain {domain}: {action} failed")]
    Call {
        domain: String,
        action: &'static str,
        #[source]
        source: virt::error::Error,
    },
    #[error("domain {domain}: the blocking libvirt call did not finish: {reason}")]
    Task { domain: String, reason: String },
}

impl LibvirtError {
    /// Whether the connection or the domain is gone (the agent reconnects),
    /// as opposed to libvirt refusing one request.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            LibvirtError::Call { source, .. } => matches!(
                source.code(),
                ErrorNumber::NoConnect
                    | ErrorNumber::InvalidConn
                    | ErrorNumber::SystemError
                    | ErrorNumber::Rpc
                    | ErrorNumber::NoDomain
                    | ErrorNumber::InvalidDomain
            ),
            _ => true,
        }
    }

    /// libvirt's own message, for reasons shown to operators.
    pub fn libvirt_message(&self) -> String {
        match self {
            LibvirtError::Connect { source, .. }
            | LibvirtError::Domain { source, .. }
            | LibvirtError::Call { source, .. } => source.message().to_owned(),
            LibvirtError::Task { reason, .. } => reason.clone(),
        }
    }
}

/// libvirt's failures reach the agent's per-VM task as the generic backend
/// variant: `migration` names no backend's types, so the dependency runs
/// one way (libvirt implements migration's trait).
impl From<LibvirtError> for SourceError {
    fn from(e: LibvirtError) -> SourceError {
        SourceError::Backend(Box::new(e))
    }
}

impl MigrationSource for LibvirtMonitor {
    fn kind(&self) -> &'static str {
        "libvirt"
    }

    async fn wait_for_start(&mut self, timeout: Duration) -> Result<bool, SourceError> {
        let deadline = Instant::now() + timeout;
        while !self.started {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.step().await?;
        }
        Ok(true)
    }

    async fn next_sample(&mut self) -> Result<Option<IterationSample>, SourceError> {
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Ok(Some(s));
            }
            if self.end.is_some() {
                return Ok(None);
            }
            self.step().await?;
        }
    }

    /// libvirt keeps the migration's flags to itself (its job statistics
    /// do not say which were given), so nothing is assumed armed: vmbw
    /// then fires no capability-bound tool on libvirt-started migrations.
    async fn armed(&mut self) -> Result<Armed, SourceError> {
        Ok(Armed::default())
    }

    /// Not read between samples through libvirt yet (its job statistics
    /// have `data_remaining`).
    async fn remaining(&mut self) -> Result<Option<u64>, SourceError> {
        Ok(None)
    }

    /// Not measured through libvirt yet (it has virDomainStartDirtyRateCalc
    /// and the `dirtyrate.*` domain stats).
    async fn sample_dirty_rate(&mut self) -> Result<Option<f64>, SourceError> {
        Ok(None)
    }

    async fn apply(
        &mut self,
        want: &QemuParams,
        applied: &mut Applied,
    ) -> Result<Vec<Refused>, SourceError> {
        let mut refused = Vec::new();
        // libvirt refusing a request is a refusal; a lost connection or
        // domain is an error of the source.
        let refusal = |param: &'static str, e: LibvirtError| -> Result<Refused, SourceError> {
            if e.is_connection_lost() {
                Err(e.into())
            } else {
                Ok(Refused {
                    param,
                    reason: format!("libvirt refused it: {}", e.libvirt_message()),
                })
            }
        };
        let todo = applied.pending(want);
        if let Some(bw) = todo.max_bandwidth {
            let bytes = bw.round().max(1.0) as u64;
            match self.call(move |d| d.set_max_bandwidth(bytes)).await {
                Ok(set) => {
                    applied.params.max_bandwidth = Some(bw);
                    applied.max_bandwidth_set = Some(set as f64);
                }
                Err(e) => refused.push(refusal("max-bandwidth", e)?),
            }
        }
        if let Some(dt) = todo.downtime_limit_s {
            let ms = (dt * 1000.0).round().max(1.0) as u64;
            match self.call(move |d| d.set_max_downtime(ms)).await {
                Ok(()) => applied.params.downtime_limit_s = Some(dt),
                Err(e) => refused.push(refusal("downtime-limit", e)?),
            }
        }
        if todo.cpu_throttle_pct.is_some() {
            refused.push(Refused {
                param: "cpu-throttle",
                reason: "libvirt sets auto-converge's throttle only when a migration starts \
                         (VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL / _INCREMENT)"
                    .into(),
            });
        }
        if let Some(bw) = todo.max_postcopy_bandwidth {
            let bytes = bw.round().max(1.0) as u64;
            match self
                .call(move |d| d.set_max_postcopy_bandwidth(bytes))
                .await
            {
                Ok(_) => applied.params.max_postcopy_bandwidth = Some(bw),
                Err(e) => refused.push(refusal("max-postcopy-bandwidth", e)?),
            }
        }
        if todo.avail_switchover_bandwidth.is_some() {
            refused.push(Refused {
                param: "avail-switchover-bandwidth",
                reason: "libvirt has no call to set QEMU's avail-switchover-bandwidth \
                         on a running migration"
                    .into(),
            });
        }
        if todo.start_postcopy {
            match self.call(|d| d.start_post_copy()).await {
                Ok(()) => applied.params.start_postcopy = true,
                Err(e) => refused.push(refusal("post-copy", e)?),
            }
        }
        applied.refused.extend(refused.iter().cloned());
        Ok(refused)
    }

    fn progress(&self) -> Option<tokio::sync::watch::Receiver<Option<Progress>>> {
        Some(self.progress.subscribe())
    }

    fn qemu_pid(&self) -> u32 {
        self.pid.unwrap_or(0)
    }

    fn end(&self) -> Option<MigrationEnd> {
        self.end.clone()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_told_from_refusals() {
        let e = LibvirtError::Task {
            domain: "d".into(),
            reason: "panicked".into(),
        };
        assert!(e.is_connection_lost());
    }

    #[test]
    fn a_libvirt_error_reaches_the_agent_as_itself() {
        let e = LibvirtError::Task {
            domain: "d".into(),
            reason: "panicked".into(),
        };
        let shown = e.to_string();
        let e = SourceError::from(e);
        assert!(matches!(e, SourceError::Backend(_)));
        assert_eq!(e.to_string(), shown);
    }
}
