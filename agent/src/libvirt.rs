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

    fn call_err(&self, action: &'static str) -> impl FnOnce(virt::error::Error) -> LibvirtError + '_ {
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

impl MigrationBackend for LibvirtDomain {
    fn job(&mut self) -> Result<Option<JobSnapshot>, LibvirtError> {
        let s = self
            .domain
            .get_job_stats(0)
            .map_err(self.call_err("virDomainGetJobStats"))?;
        if s.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
            return Ok(None);
        }
        Ok(Some(JobSnapshot {
            operation: s.operation.map(operation),
            elapsed_ms: s.time_elapsed.unwrap_or(0),
            iteration: s.mem_iteration.unwrap_or(0),
            dirty_pages_per_sec: s.mem_dirty_rate.unwrap_or(0),
            page_size: s.mem_page_size.unwrap_or(4096),
            processed_bytes: s.mem_processed.unwrap_or(0),
            remaining_bytes: s.mem_remaining.unwrap_or(0),
            total_bytes: s.mem_total.unwrap_or(0),
            bytes_per_sec: s.mem_bps.unwrap_or(0),
        }))
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
