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

use std::{
    collections::{BTreeMap, VecDeque},
    ffi::{CStr, CString},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use virt::{connect::Connect, domain::Domain, error::ErrorNumber, sys};

use crate::{
    control::QemuParams,
    migration::{Applied, MigrationEnd, MigrationSource, Refused, SourceError},
    qemu::{
        IterationSample,
        hoststats::{self, ByteCounter as _, ProcNetDev},
        types::MigrationStatus,
    },
};

/// libvirt's migration speed unit (MiB/s).
pub const MIB: u64 = 1 << 20;

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

// ---- QEMU's pid ----

/// Where libvirt keeps the pid file of `domain` for a connection `uri`
/// (see the module docs); `None` for URIs whose run directory vmbw cannot
/// tell (remote hosts).
pub fn default_pid_file(uri: &str, domain: &str) -> Option<PathBuf> {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let socket = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("socket="))
        .map(PathBuf::from);
    let session = base.ends_with("/session");
    let file = format!("{domain}.pid");
    if let Some(sock) = socket {
        // The socket lives in libvirt's run directory.
        let run = sock.parent()?.to_owned();
        return Some(if session {
            run.join("qemu/run").join(file)
        } else {
            run.join("qemu").join(file)
        });
    }
    let local = base.starts_with("qemu:///") || base.starts_with("qemu+unix:///");
    if !local {
        return None;
    }
    if session {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")?;
        Some(PathBuf::from(runtime).join("libvirt/qemu/run").join(file))
    } else {
        Some(PathBuf::from("/run/libvirt/qemu").join(file))
    }
}

/// Whether `/proc/<pid>/cmdline` is the QEMU of `domain` (libvirt passes
/// `-name guest=<domain>,...`).
fn is_qemu_of(pid: u32, domain: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| cmdline_names_domain(&c, domain))
        .unwrap_or(false)
}

fn cmdline_names_domain(cmdline: &[u8], domain: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| {
        w[0] == b"-name"
            && std::str::from_utf8(w[1]).is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.strip_prefix("guest=").unwrap_or(part) == domain)
            })
    })
}

/// QEMU's pid for `domain`: the pid file (checked), else a search of
/// `/proc`. The error says what was tried.
pub fn find_qemu_pid(pid_file: Option<&Path>, domain: &str) -> Result<u32, String> {
    let mut tried = Vec::new();
    if let Some(path) = pid_file {
        match std::fs::read_to_string(path) {
            Ok(text) => match text.trim().parse::<u32>() {
                Ok(pid) if is_qemu_of(pid, domain) => return Ok(pid),
                Ok(pid) => tried.push(format!(
                    "{} names pid {pid}, which is not QEMU of {domain}",
                    path.display()
                )),
                Err(_) => tried.push(format!("{} holds no pid", path.display())),
            },
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if is_qemu_of(pid, domain) {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => {
            tried.push(format!("no process in /proc has `-name guest={domain}`"));
            Err(tried.join("; "))
        }
        many => Err(format!(
            "several processes have `-name guest={domain}`: {many:?}"
        )),
    }
}

// ---- the migration source ----

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
    pid: Option<u32>,
    ram_bytes: u64,
    uplink: Option<ProcNetDev>,
    started: bool,
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
    ready: VecDeque<IterationSample>,
    samples: u64,
    last_job: Option<JobSnapshot>,
    end: Option<MigrationEnd>,
    next_poll: Instant,
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
        };
        m.ram_bytes = m.call(|d| d.ram_bytes()).await?;
        Ok(m)
    }

    /// Runs `f` on the domain on a blocking thread.
    async fn call<T: Send + 'static>(
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
        let mem_pct = stats
            .balloon_used_pct()
            .or_else(|| {
                self.pid
                    .and_then(|pid| {
                        hoststats::guest_ram_resident(pid, self.ram_bytes)
                            .ok()
                            .flatten()
                    })
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
    async fn step(&mut self) -> Result<(), LibvirtError> {
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
            mbps: job.bytes_per_sec as f64 * 8.0 / 1e6,
            expected_downtime_ms: job.expected_downtime_ms,
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
        if todo.auto_converge.is_some() {
            refused.push(Refused {
                param: "auto-converge",
                reason: "libvirt sets auto-converge only when a migration starts \
                         (VIR_MIGRATE_AUTO_CONVERGE); it cannot be switched during one"
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
    fn pid_files_by_uri() {
        assert_eq!(
            default_pid_file("qemu:///system", "vm1"),
            Some(PathBuf::from("/run/libvirt/qemu/vm1.pid"))
        );
        assert_eq!(
            default_pid_file(
                "qemu+unix:///session?socket=/tmp/d/run/libvirt/libvirt-sock",
                "vm1"
            ),
            Some(PathBuf::from("/tmp/d/run/libvirt/qemu/run/vm1.pid"))
        );
        assert_eq!(
            default_pid_file(
                "qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock",
                "a_b"
            ),
            Some(PathBuf::from("/var/run/libvirt/qemu/a_b.pid"))
        );
        assert_eq!(default_pid_file("qemu+ssh://host/system", "vm1"), None);
    }

    #[test]
    fn qemu_command_lines_name_their_domain() {
        let cmd = b"/usr/bin/qemu-system-x86_64\0-name\0guest=vm1,debug-threads=on\0-S\0";
        assert!(cmdline_names_domain(cmd, "vm1"));
        assert!(!cmdline_names_domain(cmd, "vm"));
        assert!(!cmdline_names_domain(b"bash\0-c\0guest=vm1\0", "vm1"));
        assert!(cmdline_names_domain(b"qemu\0-name\0vm2\0", "vm2"));
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
