//! A migration, whichever way it is reached: the one interface the agent's
//! per-VM task ([`crate::daemon::vm`]) follows migrations through and
//! mirrors the controller's [`QemuParams`] to.
//!
//! Two implementations:
//!
//! - [`MigrationMonitor`] (QMP): QEMU's own socket, events and
//!   `query-migrate`; `migrate-set-parameters` / capabilities /
//!   `migrate-start-postcopy` to control.
//! - `LibvirtMonitor` (`crate::libvirt`, feature `libvirt`): where libvirt
//!   owns the QMP socket (one client only): job statistics polled, one
//!   sample per change of `memory_iteration`, and `virDomainMigrateSet*`
//!   to control.
//!
//! Both yield the same [`IterationSample`] (one per finished pre-copy
//! iteration, iteration k = the dirty-sync count that started it), so the
//! controller cannot tell them apart. What a source cannot do is returned
//! as a [`Refused`] (with the reason), never silently dropped.

use std::{future::Future, time::Duration};

use crate::{
    control::{Armed, QemuParams},
    qemu::{
        Capability, IterationSample, MigrationMonitor, Progress, QmpError,
        monitor::MonitorError,
        types::{MigrationParameters, MigrationStatus},
    },
};

/// Why a migration source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Qmp(#[from] MonitorError),
    /// Another backend's failure (libvirt's), shown as that backend's own
    /// error. Boxed so that this module, which the backends implement,
    /// names none of their types: the dependency runs one way.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// A control the source could not apply, and why. Reported once per
/// migration and not retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `max-bandwidth`, `downtime-limit`, `auto-converge`, `post-copy`.
    pub param: &'static str,
    pub reason: String,
}

/// What has been applied to the running migration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The decisions as last applied (compared with the next decision).
    pub params: QemuParams,
    /// The cap QEMU now has, bytes/s, as the source set it (libvirt
    /// rounds up to whole MiB/s).
    pub max_bandwidth_set: Option<f64>,
    /// Parameters refused in this migration (not tried again).
    pub refused: Vec<Refused>,
}

impl Applied {
    pub fn is_refused(&self, param: &str) -> bool {
        self.refused.iter().any(|r| r.param == param)
    }

    /// What of `want` is still to be sent: what differs from what was
    /// applied (bandwidth by more than 1%) and was not refused in this
    /// migration. Both sources apply exactly this.
    pub fn pending(&self, want: &QemuParams) -> QemuParams {
        QemuParams {
            max_bandwidth: want.max_bandwidth.filter(|bw| {
                !self.is_refused("max-bandwidth")
                    && bandwidth_changed(self.params.max_bandwidth, *bw)
            }),
            downtime_limit_s: want.downtime_limit_s.filter(|dt| {
                !self.is_refused("downtime-limit") && self.params.downtime_limit_s != Some(*dt)
            }),
            start_postcopy: want.start_postcopy
                && !self.params.start_postcopy
                && !self.is_refused("post-copy"),
            cpu_throttle_pct: want.cpu_throttle_pct.filter(|p| {
                !self.is_refused("cpu-throttle") && self.params.cpu_throttle_pct != Some(*p)
            }),
            max_postcopy_bandwidth: want.max_postcopy_bandwidth.filter(|bw| {
                !self.is_refused("max-postcopy-bandwidth")
                    && bandwidth_changed(self.params.max_postcopy_bandwidth, *bw)
            }),
            avail_switchover_bandwidth: want.avail_switchover_bandwidth.filter(|bw| {
                !self.is_refused("avail-switchover-bandwidth")
                    && bandwidth_changed(self.params.avail_switchover_bandwidth, *bw)
            }),
        }
    }
}

/// How the followed migration ended.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationEnd {
    pub status: MigrationStatus,
    /// Samples yielded.
    pub samples: u64,
}

/// What to give back of `starting` (QEMU's parameters before vmbw changed
/// any): the parameters `applied` set, at their starting values, added to
/// `given` (what earlier connections to the same migration set).
pub fn to_give_back(
    applied: &QemuParams,
    starting: &MigrationParameters,
    given: &MigrationParameters,
) -> MigrationParameters {
    fn pick<T: Copy>(set: bool, start: Option<T>, given: Option<T>) -> Option<T> {
        given.or(start.filter(|_| set))
    }
    let (a, s, g) = (applied, starting, given);
    let throttled = a.cpu_throttle_pct.is_some();
    MigrationParameters {
        max_bandwidth: pick(a.max_bandwidth.is_some(), s.max_bandwidth, g.max_bandwidth),
        downtime_limit: pick(
            a.downtime_limit_s.is_some(),
            s.downtime_limit,
            g.downtime_limit,
        ),
        cpu_throttle_initial: pick(throttled, s.cpu_throttle_initial, g.cpu_throttle_initial),
        cpu_throttle_increment: pick(
            throttled,
            s.cpu_throttle_increment,
            g.cpu_throttle_increment,
        ),
        max_cpu_throttle: pick(throttled, s.max_cpu_throttle, g.max_cpu_throttle),
        max_postcopy_bandwidth: pick(
            a.max_postcopy_bandwidth.is_some(),
            s.max_postcopy_bandwidth,
            g.max_postcopy_bandwidth,
        ),
        avail_switchover_bandwidth: pick(
            a.avail_switchover_bandwidth.is_some(),
            s.avail_switchover_bandwidth,
            g.avail_switchover_bandwidth,
        ),
    }
}

/// Whether a bandwidth decision differs enough from the applied one to be
/// worth a control command (1 %).
pub fn bandwidth_changed(applied: Option<f64>, want: f64) -> bool {
    applied.is_none_or(|old| (old - want).abs() > 0.01 * old.max(1.0))
}

/// One VM's migrations, as the agent follows and steers them.
pub trait MigrationSource: Send {
    /// `qmp` or `libvirt`, for the status API and logs.
    fn kind(&self) -> &'static str;

    /// Waits up to `timeout` for a migration; `Ok(true)` once one runs,
    /// `Ok(false)` if none started in time.
    fn wait_for_start(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, SourceError>> + Send;

    /// The next finished iteration; `Ok(None)` once the migration ended
    /// (then [`end`](Self::end) says how).
    fn next_sample(
        &mut self,
    ) -> impl Future<Output = Result<Option<IterationSample>, SourceError>> + Send;

    /// What the migration's starter armed (read once it runs).
    fn armed(&mut self) -> impl Future<Output = Result<Armed, SourceError>> + Send;

    /// Bytes the migration still has to send now (samples give it only
    /// when an iteration ends); None where the source cannot tell.
    fn remaining(&mut self) -> impl Future<Output = Result<Option<u64>, SourceError>> + Send;

    /// The guest's dirty rate, bytes/s, measured over about a second
    /// while the bulk pass runs (before the first dirty sync QEMU gives
    /// none), averaged with the pass's measurements before it; None where
    /// the source cannot measure it.
    fn sample_dirty_rate(
        &mut self,
    ) -> impl Future<Output = Result<Option<f64>, SourceError>> + Send;

    /// Applies what changed between `want` and `applied` to the running
    /// migration and records it in `applied`. Returns what the source
    /// refused in this call (also recorded in `applied.refused`).
    fn apply(
        &mut self,
        want: &QemuParams,
        applied: &mut Applied,
    ) -> impl Future<Output = Result<Vec<Refused>, SourceError>> + Send;

    /// QEMU's migration parameters as the migration's starter left them,
    /// read before vmbw changes any, for [`give_back`](Self::give_back);
    /// None where the source gives them back itself. libvirt does: it
    /// reads them when a migration job starts and sets them again when the
    /// job ends (`qemuMigrationParamsReset`).
    fn starting_parameters(
        &mut self,
    ) -> impl Future<Output = Result<Option<MigrationParameters>, SourceError>> + Send {
        async { Ok(None) }
    }

    /// Sets `params` again once the migration ended. QEMU keeps its
    /// migration parameters from one migration to the next, so a retry
    /// would otherwise start under this one's caps and holds (e.g. an
    /// `avail-switchover-bandwidth` of 1000 bytes/s keeps it from ever
    /// switching over).
    fn give_back(
        &mut self,
        params: &MigrationParameters,
    ) -> impl Future<Output = Result<(), SourceError>> + Send {
        let _ = params;
        async { Ok(()) }
    }

    /// Every poll's [`Progress`] while [`next_sample`](Self::next_sample)
    /// waits; None where the source has none.
    fn progress(&self) -> Option<tokio::sync::watch::Receiver<Option<Progress>>> {
        None
    }

    /// QEMU's process id (for learning its migration sockets from /proc).
    fn qemu_pid(&self) -> u32;

    /// Whether this source can set QEMU's `avail-switchover-bandwidth`
    /// during a migration (QMP can; libvirt has no call for it). The
    /// switchover guard ([`crate::control::switchover`]) needs it: pacing
    /// alone does not drain a backlog that is in flight.
    fn sets_switchover_bandwidth(&self) -> bool {
        false
    }

    /// How the migration ended, once [`next_sample`](Self::next_sample)
    /// returned `None`.
    fn end(&self) -> Option<MigrationEnd>;
}

impl MigrationSource for MigrationMonitor {
    fn kind(&self) -> &'static str {
        "qmp"
    }

    async fn wait_for_start(&mut self, timeout: Duration) -> Result<bool, SourceError> {
        match MigrationMonitor::wait_for_start(self, timeout).await {
            Ok(()) => Ok(true),
            Err(MonitorError::NotStarted(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn next_sample(&mut self) -> Result<Option<IterationSample>, SourceError> {
        Ok(MigrationMonitor::next_sample(self).await?)
    }

    async fn armed(&mut self) -> Result<Armed, SourceError> {
        let caps = self
            .qmp()
            .query_migrate_capabilities()
            .await
            .map_err(MonitorError::Qmp)?;
        let on = |c: Capability| {
            caps.iter()
                .any(|s| s.capability == c.qapi_name() && s.state)
        };
        Ok(Armed {
            postcopy: on(Capability::PostcopyRam),
            postcopy_preempt: on(Capability::PostcopyPreempt),
            auto_converge: on(Capability::AutoConverge),
        })
    }

    async fn remaining(&mut self) -> Result<Option<u64>, SourceError> {
        let info = self
            .qmp()
            .query_migrate()
            .await
            .map_err(MonitorError::Qmp)?;
        Ok(info.ram.map(|r| r.remaining))
    }

    async fn sample_dirty_rate(&mut self) -> Result<Option<f64>, SourceError> {
        Ok(self.sample_bulk_pass(true).await?)
    }

    async fn apply(
        &mut self,
        want: &QemuParams,
        applied: &mut Applied,
    ) -> Result<Vec<Refused>, SourceError> {
        let qmp = self.qmp();
        let mut refused = Vec::new();
        // QEMU answering with an error is a refusal; a lost connection is
        // an error of the source.
        let refusal = |param: &'static str, e: QmpError| -> Result<Refused, SourceError> {
            if e.is_connection_lost() {
                Err(MonitorError::Qmp(e).into())
            } else {
                Ok(Refused {
                    param,
                    reason: format!("QEMU refused it: {e}"),
                })
            }
        };
        let todo = applied.pending(want);
        if let Some(bw) = todo.max_bandwidth {
            let bytes = bw.round().max(1.0) as u64;
            match qmp.set_max_bandwidth(bytes).await {
                Ok(()) => {
                    applied.params.max_bandwidth = Some(bw);
                    applied.max_bandwidth_set = Some(bytes as f64);
                }
                Err(e) => refused.push(refusal("max-bandwidth", e)?),
            }
        }
        if let Some(dt) = todo.downtime_limit_s {
            match qmp.set_downtime_limit((dt * 1000.0).round() as u64).await {
                Ok(()) => applied.params.downtime_limit_s = Some(dt),
                Err(e) => refused.push(refusal("downtime-limit", e)?),
            }
        }
        if let Some(pct) = todo.cpu_throttle_pct {
            match qmp.set_cpu_throttle(pct).await {
                Ok(()) => applied.params.cpu_throttle_pct = Some(pct),
                Err(e) => refused.push(refusal("cpu-throttle", e)?),
            }
        }
        // The background push's cap before the switch, so that post-copy
        // starts within it.
        if let Some(bw) = todo.max_postcopy_bandwidth {
            match qmp
                .set_max_postcopy_bandwidth(bw.round().max(1.0) as u64)
                .await
            {
                Ok(()) => applied.params.max_postcopy_bandwidth = Some(bw),
                Err(e) => refused.push(refusal("max-postcopy-bandwidth", e)?),
            }
        }
        if let Some(bw) = todo.avail_switchover_bandwidth {
            // 0 is QEMU's "use the measured bandwidth"; the guard never
            // asks for 1..999 (see control::switchover).
            match qmp
                .set_avail_switchover_bandwidth(bw.round().max(0.0) as u64)
                .await
            {
                Ok(()) => applied.params.avail_switchover_bandwidth = Some(bw),
                Err(e) => refused.push(refusal("avail-switchover-bandwidth", e)?),
            }
        }
        if todo.start_postcopy {
            match qmp.migrate_start_postcopy().await {
                Ok(()) => applied.params.start_postcopy = true,
                Err(e) => refused.push(refusal("post-copy", e)?),
            }
        }
        applied.refused.extend(refused.iter().cloned());
        Ok(refused)
    }

    async fn starting_parameters(&mut self) -> Result<Option<MigrationParameters>, SourceError> {
        let params = self
            .qmp()
            .query_migrate_parameters()
            .await
            .map_err(MonitorError::Qmp)?;
        Ok(Some(params))
    }

    async fn give_back(&mut self, params: &MigrationParameters) -> Result<(), SourceError> {
        self.qmp()
            .set_migrate_parameters(params)
            .await
            .map_err(MonitorError::Qmp)?;
        Ok(())
    }

    fn progress(&self) -> Option<tokio::sync::watch::Receiver<Option<Progress>>> {
        Some(MigrationMonitor::progress(self))
    }

    fn qemu_pid(&self) -> u32 {
        MigrationMonitor::qemu_pid(self)
    }

    fn sets_switchover_bandwidth(&self) -> bool {
        true
    }

    fn end(&self) -> Option<MigrationEnd> {
        self.outcome().map(|o| MigrationEnd {
            status: o.status.clone(),
            samples: o.samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_unrefused_parameters_are_pending() {
        let want = QemuParams {
            max_bandwidth: Some(1005.0),
            downtime_limit_s: Some(0.6),
            cpu_throttle_pct: Some(20),
            start_postcopy: true,
            ..QemuParams::default()
        };
        // Nothing applied yet: all of it.
        assert_eq!(Applied::default().pending(&want), want);
        let mut applied = Applied {
            params: QemuParams {
                max_bandwidth: Some(1000.0),
                downtime_limit_s: Some(0.3),
                cpu_throttle_pct: Some(20),
                start_postcopy: false,
                ..QemuParams::default()
            },
            ..Applied::default()
        };
        applied.refused.push(Refused {
            param: "post-copy",
            reason: "no".into(),
        });
        // Bandwidth within 1%, the throttle already set, post-copy refused:
        // only the new downtime limit.
        assert_eq!(
            applied.pending(&want),
            QemuParams {
                downtime_limit_s: Some(0.6),
                ..QemuParams::default()
            }
        );
    }

    #[test]
    fn what_vmbw_set_is_given_back_at_its_starting_value() {
        let starting = MigrationParameters {
            max_bandwidth: Some(134_217_728),
            downtime_limit: Some(10_000),
            cpu_throttle_initial: Some(20),
            cpu_throttle_increment: Some(10),
            max_cpu_throttle: Some(99),
            max_postcopy_bandwidth: Some(0),
            avail_switchover_bandwidth: Some(0),
        };
        // One connection paced QEMU and held its switchover...
        let first = QemuParams {
            max_bandwidth: Some(4e6),
            avail_switchover_bandwidth: Some(1000.0),
            ..QemuParams::default()
        };
        let given = to_give_back(&first, &starting, &MigrationParameters::default());
        assert_eq!(
            given,
            MigrationParameters {
                max_bandwidth: Some(134_217_728),
                avail_switchover_bandwidth: Some(0),
                ..MigrationParameters::default()
            }
        );
        // ...the next (after a reconnect) throttled the vCPUs: both parts
        // go back; the downtime limit, never touched, stays the starter's.
        let second = QemuParams {
            cpu_throttle_pct: Some(1),
            ..QemuParams::default()
        };
        let given = to_give_back(&second, &starting, &given);
        assert_eq!(given.max_bandwidth, Some(134_217_728));
        assert_eq!(given.avail_switchover_bandwidth, Some(0));
        assert_eq!(
            (
                given.cpu_throttle_initial,
                given.cpu_throttle_increment,
                given.max_cpu_throttle
            ),
            (Some(20), Some(10), Some(99))
        );
        assert_eq!(given.downtime_limit, None);
        assert_eq!(given.max_postcopy_bandwidth, None);
    }

    #[test]
    fn bandwidth_changes_of_one_percent_count() {
        assert!(bandwidth_changed(None, 5.0));
        assert!(!bandwidth_changed(Some(1000.0), 1005.0));
        assert!(bandwidth_changed(Some(1000.0), 1011.0));
    }
}
