//! vmbw's read-only status API: wire types and URL paths, shared by the
//! agent (`vmbw`), its debug CLI and the kubectl plugin (`kubectl-vmbw`).
//!
//! The agent daemon serves these as JSON over plain HTTP on `[api] listen`
//! (default port [`DEFAULT_PORT`]); the debug CLI and `kubectl-vmbw` read
//! them and print the tables of [`render`]. Only the agent writes these
//! types, so they can grow: readers ignore unknown fields, and every field
//! added later must have a `#[serde(default)]`.
//!
//! Units: bandwidth in bytes per second (`*_bytes_per_sec`, as the
//! controller computes it), sizes in bytes, times in seconds. The tables show
//! Mbit/s.

pub mod errors;
pub mod listen;
pub mod render;
pub mod units;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use listen::{Listen, ListenError};
pub use render::{render_classes, render_explain, render_flows, render_status, render_vms};
pub use units::{BYTES_PER_MBIT, Bandwidth};

/// The agent's API (and metrics) port.
pub const DEFAULT_PORT: u16 = 9464;
/// [`Status`]: the agent and host summary.
pub const STATUS_PATH: &str = "/api/v1/status";
/// A JSON array of [`VmStatus`].
pub const VMS_PATH: &str = "/api/v1/vms";
/// A JSON array of [`FlowStatus`].
pub const FLOWS_PATH: &str = "/api/v1/flows";
/// A JSON array of [`ClassStatus`].
pub const CLASSES_PATH: &str = "/api/v1/classes";
/// [`Explain`] of one VM: `/api/v1/explain/{vm}` (see [`explain_path`]).
pub const EXPLAIN_PATH_PREFIX: &str = "/api/v1/explain/";
/// Liveness: 200 while the process serves requests.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness: 200 once the datapath is loaded and attached.
pub const READYZ_PATH: &str = "/readyz";
/// Prometheus text exposition.
pub const METRICS_PATH: &str = "/metrics";

/// The explain path of a VM. `vm` is the name the agent knows the VM by
/// ([`VmStatus::name`]; `namespace/name` under KubeVirt). Its slash stays a
/// slash (API-server proxies may decode `%2F`): the server takes everything
/// after [`EXPLAIN_PATH_PREFIX`] as the name. Other bytes outside the
/// unreserved set are percent-encoded.
pub fn explain_path(vm: &str) -> String {
    let mut out = String::from(EXPLAIN_PATH_PREFIX);
    for b in vm.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The VM name of an explain request path (the server's side of
/// [`explain_path`]); `None` when `path` is not an explain path or not
/// valid percent-encoding / UTF-8.
pub fn explain_vm_from_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix(EXPLAIN_PATH_PREFIX)?;
    if rest.is_empty() || rest.starts_with('/') || rest.ends_with('/') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /api/v1/status`: the agent and its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The node (Kubernetes) or host name.
    pub node: String,
    /// Enforcement: `observe`, `htb` or `edt`.
    pub mode: String,
    /// The bandwidth policy: `nrac`, `bda`, `default`, `static:RATE`, ...
    pub policy: String,
    /// The uplinks the datapath is attached to.
    pub uplinks: Vec<String>,
    /// N_t: the configured link capacity.
    pub link_capacity_bytes_per_sec: f64,
    /// What crosses the uplinks now, both directions' max.
    pub link_usage_bytes_per_sec: f64,
    /// VMs known (with a datapath slot).
    pub vms: u32,
    /// VMs with a migration in progress (as source or target).
    pub migrating: u32,
    /// Seconds since the agent started.
    pub uptime_sec: f64,
    /// Where VMs are learned from, e.g. `kubevirt`, `libvirt`, `qmp`.
    #[serde(default)]
    pub discovery: Vec<String>,
}

/// A VM's migration phase as the agent last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPhase {
    /// No migration.
    None,
    /// Announced (e.g. a KubeVirt migration object) but not copying yet.
    Pending,
    /// Pre-copy iterations.
    PreCopy,
    /// Post-copy.
    PostCopy,
    Completed,
    Failed,
}

impl MigrationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::None => "none",
            MigrationPhase::Pending => "pending",
            MigrationPhase::PreCopy => "pre-copy",
            MigrationPhase::PostCopy => "post-copy",
            MigrationPhase::Completed => "completed",
            MigrationPhase::Failed => "failed",
        }
    }
}

/// Which end of a migration this host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationRole {
    Source,
    Target,
}

impl MigrationRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationRole::Source => "source",
            MigrationRole::Target => "target",
        }
    }
}

/// A VM's migration, when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    pub phase: MigrationPhase,
    pub role: MigrationRole,
    /// Pre-copy iteration, 1 = the bulk pass; 0 before the first.
    pub iteration: u32,
    /// Bytes still to send (QEMU `ram.remaining`).
    pub remaining_bytes: u64,
    /// GM(1,N)'s prediction of this iteration's dirty pages.
    pub predicted_dirty_pages: Option<f64>,
    /// What the iteration actually dirtied (known once it ended).
    pub actual_dirty_pages: Option<f64>,
    /// The peer: the other node (name or address).
    #[serde(default)]
    pub peer: Option<String>,
    /// Finished iterations of this migration the agent has a sample of.
    #[serde(default)]
    pub samples: u32,
    /// The migration cap QEMU has now, as vmbw set it (QMP
    /// `max-bandwidth`, or libvirt's max speed, which is whole MiB/s).
    #[serde(default)]
    pub qemu_max_bandwidth_bytes_per_sec: Option<f64>,
    /// QEMU parameters the migration source refused, `param: reason`.
    #[serde(default)]
    pub refused: Vec<String>,
    /// What the migration's starter armed: `postcopy-ram`,
    /// `postcopy-preempt`, `auto-converge`.
    #[serde(default)]
    pub armed: Vec<String>,
    /// The forecast under the current allotment: seconds to completion,
    /// absent while it does not converge.
    #[serde(default)]
    pub eta_seconds: Option<f64>,
    /// Whether the forecast says the migration converges (absent before
    /// the first decision).
    #[serde(default)]
    pub converging: Option<bool>,
    /// Seconds left before the migration's starter gives up on it
    /// (KubeVirt's `completionTimeoutPerGiB` × the guest's GiB, from the
    /// `[[vm]]` entry or the VMI's `migrationConfiguration`); absent
    /// without a deadline.
    #[serde(default)]
    pub deadline_left_seconds: Option<f64>,
    /// Bytes in QEMU's migration socket not yet acknowledged, as last read
    /// near the switchover (absent before).
    #[serde(default)]
    pub stream_backlog_bytes: Option<u64>,
    /// Seconds pre-copy's switchover has been held because that backlog
    /// alone fills the downtime limit (absent when not held).
    #[serde(default)]
    pub switchover_held_seconds: Option<f64>,
}

/// What the controller gave a VM.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Allocation {
    /// The migration class's guaranteed rate (HTB `rate`); None = not
    /// enforced.
    pub migration_rate_bytes_per_sec: Option<f64>,
    /// The migration class's ceiling (HTB `ceil`); None = the link.
    pub migration_ceil_bytes_per_sec: Option<f64>,
    /// Bandwidth reserved for the VM's application.
    pub app_reservation_bytes_per_sec: f64,
}

/// Traffic classes of the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficClass {
    Migration,
    Application,
    Other,
}

impl TrafficClass {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Migration => "migration",
            TrafficClass::Application => "application",
            TrafficClass::Other => "other",
        }
    }
}

/// One class's counters and current rates, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassTraffic {
    pub class: TrafficClass,
    pub egress_bytes: u64,
    pub ingress_bytes: u64,
    pub egress_bytes_per_sec: f64,
    pub ingress_bytes_per_sec: f64,
}

/// `GET /api/v1/vms`: one entry per VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    /// `namespace/name` for a KubeVirt VMI, the domain name otherwise.
    pub name: String,
    /// The datapath slot (1..16384).
    pub slot: u32,
    pub migration: Option<MigrationStatus>,
    pub allocation: Allocation,
    /// The bandwidth promised to the VM's application (`reserve_mbit`),
    /// bytes/s.
    #[serde(default)]
    pub app_promised_bytes_per_sec: Option<f64>,
    pub traffic: Vec<ClassTraffic>,
    /// How the agent follows the VM's migrations: `qmp` or `libvirt`
    /// (absent before the first connection, and for KubeVirt VMIs).
    #[serde(default)]
    pub telemetry: Option<String>,
}

/// How a flow is recognised by the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowMatch {
    /// An exact 5-tuple.
    Exact,
    /// This host's port in a range.
    LocalPorts,
    /// The peer's port in a range.
    RemotePorts,
    /// The VM's own address (IP or MAC) or tap device: application traffic.
    VmAddress,
}

impl FlowMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowMatch::Exact => "exact",
            FlowMatch::LocalPorts => "local-ports",
            FlowMatch::RemotePorts => "remote-ports",
            FlowMatch::VmAddress => "vm-address",
        }
    }
}

/// `GET /api/v1/flows`: one classification entry the agent registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStatus {
    pub vm: String,
    pub slot: u32,
    pub class: TrafficClass,
    #[serde(rename = "match")]
    pub matches: FlowMatch,
    /// This host's end: `ip:port`, a port range `first-last`, an address,
    /// or `tap ifindex N`.
    pub local: String,
    /// The peer's end (`*` for any).
    pub remote: String,
    /// `tcp`, `udp` or `any`.
    pub proto: String,
    /// Who told the agent: `kubevirt`, `libvirt`, `qmp`, `config`.
    pub source: String,
}

/// `GET /api/v1/classes`: one HTB class (or EDT aggregate) vmbw manages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStatus {
    pub iface: String,
    /// `major:minor` in hex, as tc shows it.
    pub handle: String,
    /// The VM the class belongs to; None for the link/default classes.
    pub vm: Option<String>,
    pub slot: u32,
    /// `migration`, `application`, `other`, or the role of a shared class
    /// (`link`, `default`).
    pub role: String,
    pub rate_bytes_per_sec: f64,
    pub ceil_bytes_per_sec: f64,
    pub sent_bytes: u64,
}

/// One controller decision about a VM, with its inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedDecision {
    /// Unix time of the decision, seconds.
    pub at_unix_sec: f64,
    /// The pre-copy iteration it was for.
    pub iteration: u32,
    pub policy: String,
    /// Named inputs (e.g. `free_bytes_per_sec`, `dirty_rate_bytes_per_sec`,
    /// `predicted_dirty_pages`), in a stable order.
    pub inputs: BTreeMap<String, f64>,
    pub allocation: Allocation,
    /// Why: one line per step the policy took.
    pub reasons: Vec<String>,
}

/// `GET /api/v1/explain/{vm}`: the last decisions about one VM, newest
/// last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explain {
    pub vm: String,
    pub decisions: Vec<ExplainedDecision>,
}

/// The body of a non-2xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_path_round_trips_names() {
        for name in ["default/vm-a", "ns/with space", "plain", "ü/x%y"] {
            let path = explain_path(name);
            assert_eq!(explain_vm_from_path(&path).as_deref(), Some(name), "{path}");
        }
        assert_eq!(explain_path("default/vm-a"), "/api/v1/explain/default/vm-a");
        assert_eq!(explain_path("a b"), "/api/v1/explain/a%20b");
        // What a proxy that decodes %2F delivers still names the VM.
        assert_eq!(
            explain_vm_from_path("/api/v1/explain/default%2Fvm-a").as_deref(),
            Some("default/vm-a")
        );
        assert_eq!(explain_vm_from_path("/api/v1/explain/"), None);
        assert_eq!(explain_vm_from_path("/api/v1/explain/a/"), None);
        assert_eq!(explain_vm_from_path("/api/v1/explain/%zz"), None);
        assert_eq!(explain_vm_from_path("/api/v1/vms"), None);
    }

    #[test]
    fn enums_use_their_wire_names() {
        let json = serde_json::to_string(&(
            MigrationPhase::PreCopy,
            MigrationRole::Target,
            TrafficClass::Application,
            FlowMatch::RemotePorts,
        ))
        .expect("serialize");
        assert_eq!(
            json,
            r#"["pre-copy","target","application","remote-ports"]"#
        );
        assert_eq!(MigrationPhase::PreCopy.as_str(), "pre-copy");
        assert_eq!(FlowMatch::RemotePorts.as_str(), "remote-ports");
    }

    #[test]
    fn readers_accept_missing_optional_fields() {
        // An older agent's status without `discovery`.
        let json = r#"{"version":"0.1.0","node":"n1","mode":"htb","policy":"nrac",
            "uplinks":["eth0"],"link_capacity_bytes_per_sec":1.25e8,
            "link_usage_bytes_per_sec":0,"vms":0,"migrating":0,"uptime_sec":1.5,
            "future_field":true}"#;
        let s: Status = serde_json::from_str(json).expect("parse");
        assert!(s.discovery.is_empty());
        assert_eq!(s.uplinks, ["eth0"]);
    }
}
