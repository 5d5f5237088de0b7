//! Serde types for the QMP replies and events vmbw reads. Every struct
//! ignores fields it does not name (QEMU adds fields between versions) and
//! every field QEMU may leave out is optional, so a reply from another QEMU
//! version decodes as far as it can. Names follow QEMU's qapi schema
//! (`qapi/migration.json`, `qapi/machine.json`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An integer QEMU may report as negative where it means "unknown".
fn non_negative<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<i128> = Option::deserialize(d)?;
    Ok(v.and_then(|v| u64::try_from(v).ok()))
}

/// `query-migrate`'s `MigrationInfo`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// Absent before the first migration of this QEMU.
    #[serde(default)]
    pub status: Option<MigrationStatus>,
    #[serde(default)]
    pub ram: Option<RamStats>,
    /// Milliseconds since the migration started (final value once done).
    #[serde(default)]
    pub total_time: Option<u64>,
    /// QEMU's estimate of the stop-and-copy time, ms (while active).
    /// QEMU computes it in floating point and casts: a bandwidth of zero
    /// makes it INT64_MIN (seen with `avail-switchover-bandwidth` below
    /// 1000 bytes/s, which QEMU divides by 1000 as an integer); an
    /// estimate that is not a time is None.
    #[serde(default, deserialize_with = "non_negative")]
    pub expected_downtime: Option<u64>,
    /// Measured stop-and-copy time, ms (once completed).
    #[serde(default)]
    pub downtime: Option<u64>,
    #[serde(default)]
    pub setup_time: Option<u64>,
    #[serde(default)]
    pub cpu_throttle_percentage: Option<u64>,
    #[serde(default)]
    pub error_desc: Option<String>,
    /// Destination, with `postcopy-blocktime` armed: milliseconds its
    /// vCPUs spent waiting for post-copy's pages (overlapping waits of
    /// several vCPUs counted once).
    #[serde(default)]
    pub postcopy_blocktime: Option<u64>,
}

/// `MigrationStats`: the RAM counters of a migration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    /// Bytes put on the wire so far.
    pub transferred: u64,
    /// Bytes of dirty pages still to send (dirty pages × page size).
    pub remaining: u64,
    /// Bytes of guest RAM being migrated.
    pub total: u64,
    /// Pages sent as zero pages.
    #[serde(default)]
    pub duplicate: u64,
    /// Pages sent in full.
    #[serde(default)]
    pub normal: u64,
    /// Pages dirtied per second, measured by QEMU at bitmap syncs over
    /// periods of at least one second.
    #[serde(default)]
    pub dirty_pages_rate: u64,
    /// Megabits per second of the migration stream.
    #[serde(default)]
    pub mbps: f64,
    /// Dirty bitmap syncs so far: one at the start of each pre-copy pass.
    #[serde(default)]
    pub dirty_sync_count: u64,
    /// Target page size in bytes (QEMU 2.10+).
    #[serde(default)]
    pub page_size: Option<u64>,
    #[serde(default)]
    pub pages_per_second: Option<u64>,
    /// Pages the destination asked for while in post-copy: each one a
    /// guest access that waited for the network.
    #[serde(default)]
    pub postcopy_requests: Option<u64>,
    /// Bytes sent before the stop, during it, and in post-copy (QEMU 7.0+;
    /// absent from older replies).
    #[serde(default)]
    pub precopy_bytes: Option<u64>,
    #[serde(default)]
    pub downtime_bytes: Option<u64>,
    #[serde(default)]
    pub postcopy_bytes: Option<u64>,
}

impl RamStats {
    /// Pages sent so far (full and zero pages).
    pub fn pages_sent(&self) -> u64 {
        self.normal.saturating_add(self.duplicate)
    }
}

/// `MigrationStatus`. Statuses this build does not know decode as `Other`
/// instead of failing the whole reply.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecover,
    Completed,
    Failed,
    Colo,
    PreSwitchover,
    Device,
    WaitUnplug,
    #[serde(other)]
    Other,
}

impl MigrationStatus {
    /// A migration is under way (including its set-up and stop-and-copy).
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecover
                | MigrationStatus::PreSwitchover
                | MigrationStatus::Device
                | MigrationStatus::WaitUnplug
                | MigrationStatus::Cancelling
        )
    }

    /// The migration has ended, one way or the other.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }

    /// QEMU's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationStatus::None => "none",
            MigrationStatus::Setup => "setup",
            MigrationStatus::Cancelling => "cancelling",
            MigrationStatus::Cancelled => "cancelled",
            MigrationStatus::Active => "active",
            MigrationStatus::PostcopyActive => "postcopy-active",
            MigrationStatus::PostcopyPaused => "postcopy-paused",
            MigrationStatus::PostcopyRecover => "postcopy-recover",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
            MigrationStatus::Colo => "colo",
            MigrationStatus::PreSwitchover => "pre-switchover",
            MigrationStatus::Device => "device",
            MigrationStatus::WaitUnplug => "wait-unplug",
            MigrationStatus::Other => "other",
        }
    }
}

/// One entry of `query-cpus-fast`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    pub cpu_index: u64,
    /// Host thread id of the vCPU (absent for some accelerators).
    #[serde(default)]
    pub thread_id: Option<u32>,
    #[serde(default)]
    pub qom_path: Option<String>,
}

/// `query-memory-size-summary`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct MemorySizeSummary {
    pub base_memory: u64,
    #[serde(default)]
    pub plugged_memory: Option<u64>,
}

/// `query-status`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct StatusInfo {
    pub running: bool,
    pub status: String,
}

/// `query-version`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct VersionInfo {
    pub qemu: VersionTriple,
    #[serde(default)]
    pub package: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct VersionTriple {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.qemu;
        write!(f, "{}.{}.{}", v.major, v.minor, v.micro)?;
        if !self.package.trim().is_empty() {
            write!(f, " ({})", self.package.trim())?;
        }
        Ok(())
    }
}

/// `query-migrate-parameters`: the parameters vmbw sets. Serialised, the
/// fields that are set make a `migrate-set-parameters` call.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationParameters {
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    /// Auto-converge's first throttle, its step and its ceiling, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_initial: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_increment: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_throttle: Option<u8>,
    /// Bytes per second (0: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_postcopy_bandwidth: Option<u64>,
    /// Bytes per second (0: the bandwidth QEMU measures; QEMU >= 8.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avail_switchover_bandwidth: Option<u64>,
}

/// `query-dirty-rate`'s answer, the fields vmbw reads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct DirtyRateInfo {
    /// `unstarted`, `measuring` or `measured`.
    pub status: String,
    /// The estimate, MiB/s (once measured).
    #[serde(default)]
    pub dirty_rate: Option<i64>,
    /// How long QEMU really measured, in the unit asked for
    /// ([`crate::qemu::Qmp::query_dirty_rate`] asks for milliseconds).
    #[serde(default)]
    pub calc_time: Option<f64>,
}

/// One entry of `query-migrate-capabilities`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CapabilityState {
    pub capability: String,
    pub state: bool,
}

/// One entry of `qom-list`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct QomProperty {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The virtio-balloon device's `guest-stats` property. The guest driver
/// fills it every polling interval; a counter the guest does not report is
/// `u64::MAX` (-1 in QEMU), read here as `None`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct BalloonGuestStats {
    pub stats: BalloonStatsValues,
    /// Host time of the guest's last report, seconds (0: never).
    #[serde(default)]
    pub last_update: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct BalloonStatsValues {
    #[serde(default, deserialize_with = "balloon_stat")]
    pub stat_total_memory: Option<u64>,
    #[serde(default, deserialize_with = "balloon_stat")]
    pub stat_free_memory: Option<u64>,
    #[serde(default, deserialize_with = "balloon_stat")]
    pub stat_available_memory: Option<u64>,
}

fn balloon_stat<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<u64>::deserialize(d)?;
    Ok(v.filter(|x| *x != u64::MAX))
}

impl BalloonGuestStats {
    /// Percentage of guest memory in use (total - available, or total -
    /// free when the guest does not report available memory).
    pub fn used_pct(&self) -> Option<f64> {
        let total = self.stats.stat_total_memory.filter(|t| *t > 0)?;
        let free = self
            .stats
            .stat_available_memory
            .or(self.stats.stat_free_memory)?;
        Some(100.0 * total.saturating_sub(free) as f64 / total as f64)
    }
}

/// An asynchronous QMP event.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `MIGRATION_PASS`.
    pub name: String,
    /// The event's `data` (`Value::Null` when absent).
    pub data: Value,
    /// Host wall-clock time QEMU stamped on the event, seconds since the
    /// Unix epoch (microsecond resolution).
    pub timestamp: f64,
}

impl QmpEvent {
    /// For `MIGRATION_PASS`: the pass number (= the dirty-sync-count the
    /// sync that starts this pass brought the counter to).
    pub fn migration_pass(&self) -> Option<u64> {
        (self.name == "MIGRATION_PASS")
            .then(|| self.data.get("pass").and_then(Value::as_u64))
            .flatten()
    }

    /// For `MIGRATION`: the new status.
    pub fn migration_status(&self) -> Option<MigrationStatus> {
        if self.name != "MIGRATION" {
            return None;
        }
        self.data
            .get("status")
            .and_then(|s| MigrationStatus::deserialize(s).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_parameters_decode_qemu_10_and_set_only_what_they_have() {
        // QEMU 10.0.2's reply on a fresh VM (-machine none), abridged.
        let p: MigrationParameters = serde_json::from_str(
            r#"{"cpu-throttle-tailslow": false, "cpu-throttle-initial": 20,
                "avail-switchover-bandwidth": 0, "downtime-limit": 300,
                "vcpu-dirty-limit": 1, "max-cpu-throttle": 99,
                "max-postcopy-bandwidth": 0, "max-bandwidth": 134217728,
                "cpu-throttle-increment": 10, "multifd-channels": 2}"#,
        )
        .expect("decodes");
        assert_eq!(p.max_bandwidth, Some(134_217_728));
        assert_eq!(p.downtime_limit, Some(300));
        assert_eq!(
            (
                p.cpu_throttle_initial,
                p.cpu_throttle_increment,
                p.max_cpu_throttle
            ),
            (Some(20), Some(10), Some(99))
        );
        assert_eq!(p.avail_switchover_bandwidth, Some(0));
        // QEMU 7.2 has no avail-switchover-bandwidth.
        let old: MigrationParameters =
            serde_json::from_str(r#"{"max-bandwidth": 33554432}"#).expect("decodes");
        assert_eq!(old.avail_switchover_bandwidth, None);
        let set = MigrationParameters {
            max_bandwidth: Some(1),
            avail_switchover_bandwidth: Some(0),
            ..MigrationParameters::default()
        };
        assert_eq!(
            serde_json::to_value(&set).expect("encodes"),
            serde_json::json!({"max-bandwidth": 1, "avail-switchover-bandwidth": 0})
        );
    }

    #[test]
    fn decodes_qemu_7_2_query_migrate_and_ignores_unknown_fields() {
        // Shape of a real QEMU 7.2 reply, plus a field no QEMU has.
        let v: Value = serde_json::from_str(
            r#"{"expected-downtime": 6258, "status": "active", "setup-time": 1,
                "total-time": 303253, "future-field": {"x": 1},
                "ram": {"total": 151855104, "postcopy-requests": 0,
                "dirty-sync-count": 47, "multifd-bytes": 0, "pages-per-second": 1030,
                "downtime-bytes": 0, "page-size": 4096, "remaining": 17596416,
                "postcopy-bytes": 0, "mbps": 33.8184, "transferred": 1273639110,
                "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 1273639110,
                "duplicate": 10945, "dirty-pages-rate": 969, "skipped": 0,
                "normal-bytes": 1271033856, "normal": 310311}}"#,
        )
        .expect("json");
        let info: MigrationInfo = serde_json::from_value(v).expect("decodes");
        assert_eq!(info.status, Some(MigrationStatus::Active));
        let ram = info.ram.expect("ram");
        assert_eq!(ram.dirty_sync_count, 47);
        assert_eq!(ram.page_size, Some(4096));
        assert_eq!(ram.pages_sent(), 310311 + 10945);
        assert_eq!(info.expected_downtime, Some(6258));
        // QEMU 10 with avail-switchover-bandwidth below 1000 bytes/s.
        let info: MigrationInfo = serde_json::from_str(
            r#"{"status": "active", "expected-downtime": -9223372036854775808}"#,
        )
        .expect("decodes");
        assert_eq!(info.expected_downtime, None);
    }

    #[test]
    fn unknown_status_is_other_and_empty_reply_is_default() {
        let info: MigrationInfo =
            serde_json::from_str(r#"{"status": "teleporting"}"#).expect("decodes");
        assert_eq!(info.status, Some(MigrationStatus::Other));
        let none: MigrationInfo = serde_json::from_str("{}").expect("decodes");
        assert_eq!(none, MigrationInfo::default());
    }

    #[test]
    fn balloon_minus_one_means_unreported() {
        let s: BalloonGuestStats = serde_json::from_str(
            r#"{"stats": {"stat-total-memory": 18446744073709551615,
                "stat-free-memory": 18446744073709551615}, "last-update": 0}"#,
        )
        .expect("decodes");
        assert_eq!(s.used_pct(), None);
        let s: BalloonGuestStats = serde_json::from_str(
            r#"{"stats": {"stat-total-memory": 1000, "stat-free-memory": 700,
                "stat-available-memory": 750}, "last-update": 5}"#,
        )
        .expect("decodes");
        assert_eq!(s.used_pct(), Some(25.0));
    }

    #[test]
    fn event_accessors() {
        let e = QmpEvent {
            name: "MIGRATION_PASS".into(),
            data: serde_json::json!({"pass": 3}),
            timestamp: 1.5,
        };
        assert_eq!(e.migration_pass(), Some(3));
        assert_eq!(e.migration_status(), None);
        let e = QmpEvent {
            name: "MIGRATION".into(),
            data: serde_json::json!({"status": "completed"}),
            timestamp: 2.0,
        };
        assert_eq!(e.migration_status(), Some(MigrationStatus::Completed));
    }
}
