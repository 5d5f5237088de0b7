//! One libvirt domain over its connection: every FFI call (job and domain
//! statistics through `virt::sys`, the migration controls) and the plain
//! types they are read into. Blocking: the monitor calls it from
//! `spawn_blocking`.

use std::ffi::{CStr, CString};

use virt::{connect::Connect, domain::Domain, sys};

use super::LibvirtError;

/// libvirt's migration speed unit (MiB/s).
pub const MIB: u64 = 1 << 20;

/// What kind of job a domain runs (libvirt `virDomainJobOperation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOperation {
    OutgoingMigration,
    IncomingMigration,
    Save,
    Other(i32),
}

/// A snapshot of a domain's active job, in vmbw's units.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobSnapshot {
    pub operation: Option<JobOperation>,
    /// Milliseconds since the job started.
    pub elapsed_ms: u64,
    /// Pre-copy iteration (libvirt `memory_iteration` = QEMU's
    /// `dirty-sync-count`: 1 during the bulk pass; later passes count up).
    pub iteration: u64,
    /// Guest pages dirtied per second (`memory_dirty_rate`).
    pub dirty_pages_per_sec: u64,
    /// Bytes per page (`memory_page_size`; 4096 when libvirt omits it).
    pub page_size: u64,
    pub processed_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// The measured transfer rate (`memory_bps`).
    pub bytes_per_sec: u64,
    /// Pages sent in full (`memory_normal`).
    pub normal_pages: u64,
    /// Pages sent as "all one byte" (`memory_constant`, QEMU's duplicate).
    pub constant_pages: u64,
    /// The downtime expected at switch-over, ms (`downtime`).
    pub expected_downtime_ms: Option<u64>,
}

impl JobSnapshot {
    /// The dirty rate as bandwidth (NRAC's D_e, measured).
    pub fn dirty_bytes_per_sec(&self) -> u64 {
        self.dirty_pages_per_sec.saturating_mul(self.page_size)
    }

    /// Pages sent + pages still dirty: constant between two syncs, raised
    /// by each sync by the pages it found newly dirty (see
    /// `qemu::monitor`).
    pub fn ledger(&self) -> u64 {
        self.normal_pages + self.constant_pages + self.remaining_bytes / self.page_size.max(1)
    }
}

/// How a finished job ended (`virDomainGetJobStats` with
/// `VIR_DOMAIN_JOB_STATS_COMPLETED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Completed,
    Failed,
    Cancelled,
}

/// A domain's run state, as far as a migration cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Paused by the migration (stop-and-copy / switch-over).
    PausedForMigration,
    /// Paused because the migration switched to post-copy.
    PostCopy,
    /// Shut off because it migrated away.
    MigratedAway,
    Other {
        state: u32,
        reason: i32,
    },
}

fn run_state(state: sys::virDomainState, reason: i32) -> RunState {
    match state {
        sys::VIR_DOMAIN_RUNNING => RunState::Running,
        sys::VIR_DOMAIN_PAUSED if reason == sys::VIR_DOMAIN_PAUSED_MIGRATION as i32 => {
            RunState::PausedForMigration
        }
        sys::VIR_DOMAIN_PAUSED if reason == sys::VIR_DOMAIN_PAUSED_POSTCOPY as i32 => {
            RunState::PostCopy
        }
        sys::VIR_DOMAIN_SHUTOFF if reason == sys::VIR_DOMAIN_SHUTOFF_MIGRATED as i32 => {
            RunState::MigratedAway
        }
        other => RunState::Other {
            state: other,
            reason,
        },
    }
}

/// Domain statistics vmbw uses (`virDomainListGetStats`); `None` where
/// libvirt did not report a value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainStats {
    pub vcpus: u32,
    /// Sum of `vcpu.<n>.time`, ns.
    pub vcpu_ns: Option<u64>,
    /// Sum of rx + tx bytes of the domain's interfaces.
    pub net_bytes: Option<u64>,
    /// Guest-reported memory (balloon driver), KiB.
    pub balloon_available_kib: Option<u64>,
    pub balloon_unused_kib: Option<u64>,
}

impl DomainStats {
    /// Guest memory in use, percent, from the balloon statistics.
    pub fn balloon_used_pct(&self) -> Option<f64> {
        let (avail, unused) = (self.balloon_available_kib?, self.balloon_unused_kib?);
        (avail > 0).then(|| 100.0 * avail.saturating_sub(unused) as f64 / avail as f64)
    }
}

/// One libvirt domain, reached over a libvirt connection.
pub struct LibvirtDomain {
    // Field order: the domain handle is released before its connection.
    domain: Domain,
    conn: Connect,
    name: String,
    uri: String,
}

impl LibvirtDomain {
    /// Connects to `uri` (e.g. `qemu:///system`, or
    /// `qemu+unix:///session?socket=PATH`) and looks up `name` (KubeVirt
    /// names domains `namespace_name`).
    pub fn connect(uri: &str, name: &str) -> Result<Self, LibvirtError> {
        // libvirt prints every error to stderr by default; vmbw returns
        // them typed and logs them itself.
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        let conn = Connect::open(Some(uri)).map_err(|source| LibvirtError::Connect {
            uri: uri.to_owned(),
            source,
        })?;
        let domain = match Domain::lookup_by_name(&conn, name) {
            Ok(d) => d,
            Err(source) => {
                let mut conn = conn;
                let _ = conn.close();
                return Err(LibvirtError::Domain {
                    uri: uri.to_owned(),
                    domain: name.to_owned(),
                    source,
                });
            }
        };
        Ok(LibvirtDomain {
            domain,
            conn,
            name: name.to_owned(),
            uri: uri.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn call_err(
        &self,
        action: &'static str,
    ) -> impl FnOnce(virt::error::Error) -> LibvirtError + '_ {
        move |source| LibvirtError::Call {
            domain: self.name.clone(),
            action,
            source,
        }
    }

    /// The active job, or `None` when the domain runs no job.
    pub fn job(&self) -> Result<Option<JobSnapshot>, LibvirtError> {
        job_stats(&self.domain, 0)
            .map(|(_, s)| s)
            .map_err(self.call_err("virDomainGetJobStats"))
    }

    /// How the domain's last job ended (`None`: libvirt kept no record).
    pub fn completed_job(&self) -> Result<Option<JobEnd>, LibvirtError> {
        let (kind, _) = job_stats(&self.domain, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
            .map_err(self.call_err("virDomainGetJobStats(COMPLETED)"))?;
        Ok(match kind as u32 {
            sys::VIR_DOMAIN_JOB_COMPLETED => Some(JobEnd::Completed),
            sys::VIR_DOMAIN_JOB_FAILED => Some(JobEnd::Failed),
            sys::VIR_DOMAIN_JOB_CANCELLED => Some(JobEnd::Cancelled),
            _ => None,
        })
    }

    pub fn state(&self) -> Result<RunState, LibvirtError> {
        let (state, reason) = self
            .domain
            .get_state()
            .map_err(self.call_err("virDomainGetState"))?;
        Ok(run_state(state, reason))
    }

    /// RAM size, bytes.
    pub fn ram_bytes(&self) -> Result<u64, LibvirtError> {
        let info = self
            .domain
            .get_info()
            .map_err(self.call_err("virDomainGetInfo"))?;
        Ok(info.max_mem.saturating_mul(1024))
    }

    pub fn stats(&self) -> Result<DomainStats, LibvirtError> {
        domain_stats(&self.domain).map_err(self.call_err("virDomainListGetStats"))
    }

    /// Caps the migration at `bytes_per_sec`, rounded up to whole MiB/s
    /// (libvirt's unit; never 0, which libvirt reads as "unlimited").
    /// Returns the cap set, bytes per second.
    pub fn set_max_bandwidth(&self, bytes_per_sec: u64) -> Result<u64, LibvirtError> {
        let mib = bytes_per_sec.div_ceil(MIB).max(1);
        self.domain
            .migrate_set_max_speed(mib, 0)
            .map_err(self.call_err("virDomainMigrateSetMaxSpeed"))?;
        Ok(mib * MIB)
    }

    /// Caps post-copy's background push (`virDomainMigrateSetMaxSpeed` with
    /// `VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY`, QEMU's
    /// `max-postcopy-bandwidth`), rounded up to whole MiB/s like
    /// [`Self::set_max_bandwidth`]. Returns the cap set, bytes per second.
    pub fn set_max_postcopy_bandwidth(&self, bytes_per_sec: u64) -> Result<u64, LibvirtError> {
        let mib = bytes_per_sec.div_ceil(MIB).max(1);
        self.domain
            .migrate_set_max_speed(mib, sys::VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY)
            .map_err(self.call_err("virDomainMigrateSetMaxSpeed(POSTCOPY)"))?;
        Ok(mib * MIB)
    }

    /// The post-copy cap, bytes per second.
    pub fn max_postcopy_bandwidth(&self) -> Result<u64, LibvirtError> {
        let mib = self
            .domain
            .migrate_get_max_speed(sys::VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY)
            .map_err(self.call_err("virDomainMigrateGetMaxSpeed(POSTCOPY)"))?;
        Ok(mib.saturating_mul(MIB))
    }

    /// The current cap (`virDomainMigrateGetMaxSpeed`), bytes per second.
    pub fn max_bandwidth(&self) -> Result<u64, LibvirtError> {
        let mib = self
            .domain
            .migrate_get_max_speed(0)
            .map_err(self.call_err("virDomainMigrateGetMaxSpeed"))?;
        Ok(mib.saturating_mul(MIB))
    }

    /// `virDomainMigrateSetMaxDowntime`, milliseconds.
    pub fn set_max_downtime(&self, ms: u64) -> Result<(), LibvirtError> {
        self.domain
            .migrate_set_max_downtime(ms, 0)
            .map(drop)
            .map_err(self.call_err("virDomainMigrateSetMaxDowntime"))
    }

    /// `virDomainMigrateStartPostCopy`.
    pub fn start_post_copy(&self) -> Result<(), LibvirtError> {
        // SAFETY: a live domain handle.
        let ret = unsafe { sys::virDomainMigrateStartPostCopy(self.domain.as_ptr(), 0) };
        if ret == -1 {
            return Err(LibvirtError::Call {
                domain: self.name.clone(),
                action: "virDomainMigrateStartPostCopy",
                source: virt::error::Error::last_error(),
            });
        }
        Ok(())
    }
}

impl Drop for LibvirtDomain {
    fn drop(&mut self) {
        let _ = self.domain.free();
        let _ = self.conn.close();
    }
}

fn operation(raw: i32) -> JobOperation {
    match raw {
        x if x == sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT as i32 => {
            JobOperation::OutgoingMigration
        }
        x if x == sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN as i32 => {
            JobOperation::IncomingMigration
        }
        x if x == sys::VIR_DOMAIN_JOB_OPERATION_SAVE as i32 => JobOperation::Save,
        other => JobOperation::Other(other),
    }
}

/// Typed parameters as libvirt returned them, read with libvirt's own
/// accessors.
struct Params {
    ptr: sys::virTypedParameterPtr,
    n: libc::c_int,
}

impl Params {
    fn ull(&self, name: &CStr) -> Option<u64> {
        let mut v: libc::c_ulonglong = 0;
        // SAFETY: `ptr`/`n` as libvirt returned them; a C string.
        let found =
            unsafe { sys::virTypedParamsGetULLong(self.ptr, self.n, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    }

    fn uint(&self, name: &CStr) -> Option<u32> {
        let mut v: libc::c_uint = 0;
        // SAFETY: as above.
        let found = unsafe { sys::virTypedParamsGetUInt(self.ptr, self.n, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    }

    fn int(&self, name: &CStr) -> Option<i32> {
        let mut v: libc::c_int = 0;
        // SAFETY: as above.
        let found = unsafe { sys::virTypedParamsGetInt(self.ptr, self.n, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    }

    fn ull_named(&self, name: &str) -> Option<u64> {
        CString::new(name).ok().and_then(|c| self.ull(&c))
    }
}

/// `virDomainGetJobStats`, freed with `virTypedParamsFree`. (virt 0.4's
/// `Domain::get_job_stats` hands libvirt's allocation to Rust's allocator,
/// and builds a `Vec` from a null pointer when no job runs: it aborts.)
fn job_stats(dom: &Domain, flags: u32) -> Result<(i32, Option<JobSnapshot>), virt::error::Error> {
    let mut job_type: libc::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut nparams: libc::c_int = 0;
    // SAFETY: a live domain handle; libvirt allocates `params` (freed
    // below, on every path after this call).
    let ret = unsafe {
        sys::virDomainGetJobStats(
            dom.as_ptr(),
            &mut job_type,
            &mut params,
            &mut nparams,
            flags,
        )
    };
    if ret == -1 {
        return Err(virt::error::Error::last_error());
    }
    let p = Params {
        ptr: params,
        n: nparams,
    };
    let snapshot = (job_type != sys::VIR_DOMAIN_JOB_NONE as i32).then(|| JobSnapshot {
        operation: p.int(c"operation").map(operation),
        elapsed_ms: p.ull(c"time_elapsed").unwrap_or(0),
        iteration: p.ull(c"memory_iteration").unwrap_or(0),
        dirty_pages_per_sec: p.ull(c"memory_dirty_rate").unwrap_or(0),
        page_size: p
            .ull(c"memory_page_size")
            .filter(|p| *p > 0)
            .unwrap_or(4096),
        processed_bytes: p.ull(c"memory_processed").unwrap_or(0),
        remaining_bytes: p.ull(c"memory_remaining").unwrap_or(0),
        total_bytes: p.ull(c"memory_total").unwrap_or(0),
        bytes_per_sec: p.ull(c"memory_bps").unwrap_or(0),
        normal_pages: p.ull(c"memory_normal").unwrap_or(0),
        constant_pages: p.ull(c"memory_constant").unwrap_or(0),
        expected_downtime_ms: p.ull(c"downtime"),
    });
    // SAFETY: frees what virDomainGetJobStats allocated (null is fine).
    unsafe { sys::virTypedParamsFree(params, nparams) };
    Ok((job_type, snapshot))
}

/// `virDomainListGetStats` for one domain: vCPU, interface and balloon
/// statistics.
fn domain_stats(dom: &Domain) -> Result<DomainStats, virt::error::Error> {
    let mut doms = [dom.as_ptr(), std::ptr::null_mut()];
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    let kinds = sys::VIR_DOMAIN_STATS_VCPU
        | sys::VIR_DOMAIN_STATS_INTERFACE
        | sys::VIR_DOMAIN_STATS_BALLOON;
    // NOWAIT: what needs QEMU's monitor while the migration job holds it
    // (the switch-over) is left out instead of waited for.
    let flags = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;
    // SAFETY: a null-terminated array holding one live domain handle;
    // libvirt allocates `records` (freed below).
    let ret = unsafe { sys::virDomainListGetStats(doms.as_mut_ptr(), kinds, &mut records, flags) };
    if ret == -1 {
        return Err(virt::error::Error::last_error());
    }
    let mut out = DomainStats::default();
    // SAFETY: `records` is a null-terminated array of `ret` records.
    if ret > 0 && !records.is_null() {
        let rec = unsafe { &**records };
        let p = Params {
            ptr: rec.params,
            n: rec.nparams,
        };
        out.vcpus = p.uint(c"vcpu.current").unwrap_or(0);
        let mut vcpu_ns = None;
        for i in 0..out.vcpus {
            if let Some(t) = p.ull_named(&format!("vcpu.{i}.time")) {
                vcpu_ns = Some(vcpu_ns.unwrap_or(0u64).saturating_add(t));
            }
        }
        out.vcpu_ns = vcpu_ns;
        let mut net = None;
        for i in 0..p.uint(c"net.count").unwrap_or(0) {
            for dir in ["rx", "tx"] {
                if let Some(b) = p.ull_named(&format!("net.{i}.{dir}.bytes")) {
                    net = Some(net.unwrap_or(0u64).wrapping_add(b));
                }
            }
        }
        out.net_bytes = net;
        out.balloon_available_kib = p.ull(c"balloon.available");
        out.balloon_unused_kib = p.ull(c"balloon.unused");
    }
    // SAFETY: frees what virDomainListGetStats allocated.
    unsafe { sys::virDomainStatsRecordListFree(records) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_rate_as_bandwidth_and_ledger() {
        let s = JobSnapshot {
            operation: Some(JobOperation::OutgoingMigration),
            iteration: 2,
            dirty_pages_per_sec: 1000,
            page_size: 4096,
            remaining_bytes: 8192,
            normal_pages: 10,
            constant_pages: 5,
            ..JobSnapshot::default()
        };
        assert_eq!(s.dirty_bytes_per_sec(), 4_096_000);
        assert_eq!(s.ledger(), 17);
    }

    #[test]
    fn job_operations_and_states() {
        assert_eq!(
            operation(sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT as i32),
            JobOperation::OutgoingMigration
        );
        assert_eq!(operation(9999), JobOperation::Other(9999));
        assert_eq!(
            run_state(
                sys::VIR_DOMAIN_PAUSED,
                sys::VIR_DOMAIN_PAUSED_MIGRATION as i32
            ),
            RunState::PausedForMigration
        );
        assert_eq!(
            run_state(
                sys::VIR_DOMAIN_PAUSED,
                sys::VIR_DOMAIN_PAUSED_POSTCOPY as i32
            ),
            RunState::PostCopy
        );
        assert_eq!(run_state(sys::VIR_DOMAIN_RUNNING, 1), RunState::Running);
    }

    #[test]
    fn balloon_memory_use() {
        let s = DomainStats {
            balloon_available_kib: Some(1000),
            balloon_unused_kib: Some(250),
            ..DomainStats::default()
        };
        assert_eq!(s.balloon_used_pct(), Some(75.0));
        assert_eq!(DomainStats::default().balloon_used_pct(), None);
    }
}
