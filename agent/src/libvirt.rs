//! Migration statistics and speed control through libvirt.
//!
//! Under libvirt (and so under KubeVirt, where virt-launcher runs
//! virtqemud) QEMU's QMP socket belongs to libvirt and takes one client:
//! vmbw reads the migration job's statistics (`virDomainGetJobStats`) and
//! sets the migration speed (`virDomainMigrateSetMaxSpeed`) instead.
//!
//! [`MigrationBackend`] is the small interface the controller needs from a
//! migration, whichever way it is reached; [`LibvirtDomain`] implements it.

use virt::{connect::Connect, domain::Domain, sys};

/// libvirt's migration speed unit (MiB/s).
const MIB: u64 = 1 << 20;

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
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    pub operation: Option<JobOperation>,
    /// Milliseconds since the job started.
    pub elapsed_ms: u64,
    /// Pre-copy iteration (libvirt `memory_iteration`: 1 during the bulk
    /// pass; later passes count up).
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
}

impl JobSnapshot {
    /// The dirty rate as bandwidth (NRAC's D_e, measured).
    pub fn dirty_bytes_per_sec(&self) -> u64 {
        self.dirty_pages_per_sec.saturating_mul(self.page_size)
    }
}

/// What the controller reads from and sets on one migration.
pub trait MigrationBackend {
    /// The active job, or `None` when the domain runs no job.
    fn job(&mut self) -> Result<Option<JobSnapshot>, LibvirtError>;
    /// Caps the migration at `bytes_per_sec` (rounded up to what the
    /// backend can express). Returns the cap set, bytes per second.
    fn set_max_bandwidth(&mut self, bytes_per_sec: u64) -> Result<u64, LibvirtError>;
    /// The current cap, bytes per second.
    fn max_bandwidth(&mut self) -> Result<u64, LibvirtError>;
}

/// One libvirt domain, reached over a libvirt connection.
pub struct LibvirtDomain {
    // Field order: the domain handle is released before its connection.
    domain: Domain,
    conn: Connect,
    name: String,
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
        })
    }

    pub fn name(&self) -> &str {
        &self.name
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

/// `virDomainGetJobStats`, read with libvirt's own typed-parameter
/// accessors and freed with `virTypedParamsFree`. (virt 0.4's
/// `Domain::get_job_stats` hands libvirt's allocation to Rust's allocator,
/// and builds a `Vec` from a null pointer when no job runs: it aborts.)
fn job_stats(dom: &Domain) -> Result<Option<JobSnapshot>, virt::error::Error> {
    use std::ffi::CStr;
    let mut job_type: libc::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut nparams: libc::c_int = 0;
    // SAFETY: a live domain handle; libvirt allocates `params` (freed
    // below, on every path after this call).
    let ret = unsafe {
        sys::virDomainGetJobStats(dom.as_ptr(), &mut job_type, &mut params, &mut nparams, 0)
    };
    if ret == -1 {
        return Err(virt::error::Error::last_error());
    }
    let ull = |name: &CStr| -> Option<u64> {
        let mut v: libc::c_ulonglong = 0;
        // SAFETY: `params`/`nparams` as libvirt returned them; a C string.
        let found = unsafe { sys::virTypedParamsGetULLong(params, nparams, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    };
    let int = |name: &CStr| -> Option<i32> {
        let mut v: libc::c_int = 0;
        // SAFETY: as above.
        let found = unsafe { sys::virTypedParamsGetInt(params, nparams, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    };
    let snapshot = (job_type != sys::VIR_DOMAIN_JOB_NONE as i32).then(|| JobSnapshot {
        operation: int(c"operation").map(operation),
        elapsed_ms: ull(c"time_elapsed").unwrap_or(0),
        iteration: ull(c"memory_iteration").unwrap_or(0),
        dirty_pages_per_sec: ull(c"memory_dirty_rate").unwrap_or(0),
        page_size: ull(c"memory_page_size").unwrap_or(4096),
        processed_bytes: ull(c"memory_processed").unwrap_or(0),
        remaining_bytes: ull(c"memory_remaining").unwrap_or(0),
        total_bytes: ull(c"memory_total").unwrap_or(0),
        bytes_per_sec: ull(c"memory_bps").unwrap_or(0),
    });
    // SAFETY: frees what virDomainGetJobStats allocated (null is fine).
    unsafe { sys::virTypedParamsFree(params, nparams) };
    Ok(snapshot)
}

impl MigrationBackend for LibvirtDomain {
    fn job(&mut self) -> Result<Option<JobSnapshot>, LibvirtError> {
        job_stats(&self.domain).map_err(self.call_err("virDomainGetJobStats"))
    }

    fn set_max_bandwidth(&mut self, bytes_per_sec: u64) -> Result<u64, LibvirtError> {
        // libvirt takes MiB/s; round up so the cap never undercuts the
        // decision, and never 0 (which libvirt reads as "unlimited").
        let mib = bytes_per_sec.div_ceil(MIB).max(1);
        self.domain
            .migrate_set_max_speed(mib, 0)
            .map_err(self.call_err("virDomainMigrateSetMaxSpeed"))?;
        Ok(mib * MIB)
    }

    fn max_bandwidth(&mut self) -> Result<u64, LibvirtError> {
        let mib = self
            .domain
            .migrate_get_max_speed(0)
            .map_err(self.call_err("virDomainMigrateGetMaxSpeed"))?;
        Ok(mib.saturating_mul(MIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_rate_as_bandwidth() {
        let s = JobSnapshot {
            operation: Some(JobOperation::OutgoingMigration),
            elapsed_ms: 1,
            iteration: 2,
            dirty_pages_per_sec: 1000,
            page_size: 4096,
            processed_bytes: 0,
            remaining_bytes: 0,
            total_bytes: 0,
            bytes_per_sec: 0,
        };
        assert_eq!(s.dirty_bytes_per_sec(), 4_096_000);
    }

    #[test]
    fn job_operations() {
        assert_eq!(
            operation(sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT as i32),
            JobOperation::OutgoingMigration
        );
        assert_eq!(operation(9999), JobOperation::Other(9999));
    }
}
