//! What vmbw reads from KubeVirt objects, parsed from their JSON.
//!
//! The watcher hands over objects as raw JSON ([`RawObject`]), so one bad
//! object can never fail a whole list: each is parsed here on its own, and
//! an error names the object and the field. Only the fields vmbw uses are
//! read (KubeVirt `kubevirt.io/v1`, `staging/src/kubevirt.io/api/core/v1/
//! types.go`); everything else is ignored.

use std::{borrow::Cow, collections::BTreeMap, fmt, net::IpAddr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Resource,
    core::{ApiResource, DynamicResourceScope},
};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::datapath::Mac;

/// `kubevirt.io/v1` VirtualMachineInstance.
pub fn vmi_resource() -> ApiResource {
    kubevirt_resource("VirtualMachineInstance", "virtualmachineinstances")
}

/// `kubevirt.io/v1` VirtualMachineInstanceMigration.
pub fn vmim_resource() -> ApiResource {
    kubevirt_resource(
        "VirtualMachineInstanceMigration",
        "virtualmachineinstancemigrations",
    )
}

/// `v1` Pod (KubeVirt's virt-launcher pods).
pub fn pod_resource() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Pod".into(),
        plural: "pods".into(),
    }
}

/// KubeVirt's labels (kubevirt/kubevirt `staging/src/kubevirt.io/api/core/v1/types.go`).
pub mod labels {
    /// On VMIs: the node the VMI runs on, equal to `status.nodeName`.
    /// When a migration completes, the target node's virt-handler moves
    /// both to itself (not virt-controller).
    pub const NODE_NAME: &str = "kubevirt.io/nodeName";
    /// On VMIs: the target node of the running migration (set by
    /// virt-controller when the target pod is scheduled, for the target's
    /// virt-handler).
    pub const MIGRATION_TARGET_NODE_NAME: &str = "kubevirt.io/migrationTargetNodeName";
    /// On KubeVirt's pods: `kubevirt.io=virt-launcher` marks launcher pods.
    pub const APP: &str = "kubevirt.io";
    pub const VIRT_LAUNCHER: &str = "virt-launcher";
    /// On launcher pods: the UID of the VMI the pod runs.
    pub const CREATED_BY: &str = "kubevirt.io/created-by";
    /// On launcher pods of a VirtualMachine's VMI: the VM's (= the VMI's)
    /// name.
    pub const VM_NAME: &str = "vm.kubevirt.io/name";
}

fn kubevirt_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "kubevirt.io".into(),
        version: "v1".into(),
        api_version: "kubevirt.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// An object as the API server sent it: metadata parsed when it can be,
/// everything kept as JSON. Deserialising never fails on a JSON object, so
/// a malformed object reaches [`parse_vmi`]/[`parse_vmim`] and is skipped
/// there with a reason instead of breaking the watch.
#[derive(Debug, Clone, Default)]
pub struct RawObject {
    pub metadata: ObjectMeta,
    /// Why `metadata` could not be read, if it could not.
    pub metadata_error: Option<String>,
    pub value: Value,
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let (metadata, metadata_error) = match value.get("metadata") {
            None => (ObjectMeta::default(), Some("no metadata".to_owned())),
            Some(m) => match ObjectMeta::deserialize(m) {
                Ok(meta) => (meta, None),
                Err(e) => {
                    // Keep what identifies the object, for the log line.
                    let field = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
                    let meta = ObjectMeta {
                        name: field("name"),
                        namespace: field("namespace"),
                        resource_version: field("resourceVersion"),
                        ..ObjectMeta::default()
                    };
                    (meta, Some(e.to_string()))
                }
            },
        };
        Ok(RawObject {
            metadata,
            metadata_error,
            value,
        })
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        Cow::from(&dt.kind)
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        Cow::from(&dt.group)
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::from(&dt.version)
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::from(&dt.api_version)
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        Cow::from(&dt.plural)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl RawObject {
    /// `namespace/name`, or what is known of it.
    pub fn key(&self) -> String {
        object_key(
            self.metadata.namespace.as_deref(),
            self.metadata.name.as_deref(),
        )
    }
}

pub(crate) fn object_key(namespace: Option<&str>, name: Option<&str>) -> String {
    format!(
        "{}/{}",
        namespace.unwrap_or("<no namespace>"),
        name.unwrap_or("<no name>")
    )
}

/// Why an object was skipped.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{kind} {object}: metadata is malformed: {reason}")]
    Metadata {
        kind: &'static str,
        object: String,
        reason: String,
    },
    #[error("{kind} {object}: has no name")]
    NoName { kind: &'static str, object: String },
    #[error("{kind} {object}: malformed")]
    Json {
        kind: &'static str,
        object: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {object}: {field} = {value:?} is not {expected}")]
    Field {
        kind: &'static str,
        object: String,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// One network interface of a VMI as KubeVirt reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmiInterface {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
}

/// One entry of `targetDirectMigrationNodePorts`: virt-handler's proxy
/// port on the target node and the virt-launcher port it leads to (49152
/// memory, 49153 block migration, 0 libvirt's own connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MigrationPort {
    pub node_port: u16,
    pub launcher_port: u16,
}

impl MigrationPort {
    /// What the connection carries, from the launcher port.
    pub fn role(&self) -> &'static str {
        match self.launcher_port {
            49152 => "memory",
            49153 => "block",
            0 => "libvirt",
            _ => "other",
        }
    }
}

/// `status.migrationState`, the fields vmbw uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationState {
    pub migration_uid: Option<String>,
    pub source_node: Option<String>,
    pub source_pod: Option<String>,
    pub target_node: Option<String>,
    pub target_pod: Option<String>,
    pub target_address: Option<IpAddr>,
    /// Sorted by node port.
    pub ports: Vec<MigrationPort>,
    pub completed: bool,
    pub failed: bool,
    pub abort_requested: bool,
    /// `PreCopy`, `PostCopy`, `Paused` (KubeVirt's `MigrationMode`).
    pub mode: Option<String>,
    /// RFC 3339, as KubeVirt wrote it (ordering only).
    pub start_timestamp: Option<String>,
    pub end_timestamp: Option<String>,
    /// `migrationConfiguration`: the terms KubeVirt set for this migration.
    pub terms: MigrationTerms,
}

/// The terms of one migration as KubeVirt resolved them (the cluster's
/// migration configuration with the matching MigrationPolicy applied),
/// from `status.migrationState.migrationConfiguration`. KubeVirt's own
/// defaults apply where a field is absent; vmbw assumes none of them.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct MigrationTerms {
    /// `completionTimeoutPerGiB`: virt-launcher aborts the migration after
    /// this many seconds per GiB of guest memory.
    pub completion_timeout_per_gib: Option<f64>,
    /// `progressTimeout`: ... or after this many seconds without progress.
    pub progress_timeout_s: Option<f64>,
    /// `allowPostCopy`: libvirt arms post-copy for the migration.
    pub allow_post_copy: Option<bool>,
    /// `allowAutoConverge`: libvirt arms auto-converge.
    pub allow_auto_converge: Option<bool>,
}

/// A VirtualMachineInstance, the fields vmbw uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Vmi {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// `status.nodeName`: where the VM runs.
    pub node: Option<String>,
    /// `status.phase` (`Running`, `Scheduled`, `Succeeded`, ...).
    pub phase: Option<String>,
    pub interfaces: Vec<VmiInterface>,
    pub migration: Option<MigrationState>,
    /// The bandwidth promised to its application, from the annotation
    /// [`RESERVE_ANNOTATION`]: Ok(None) without one, Err(why) when its
    /// value is not a usable rate (the VMI is kept, without a promise).
    pub reserve_mbit: Result<Option<f64>, String>,
}

/// The VMI annotation that promises its application bandwidth, Mbit/s
/// (e.g. `vmbw.io/reserve-mbit: "10"`), like `[[vm]] reserve_mbit`.
pub const RESERVE_ANNOTATION: &str = "vmbw.io/reserve-mbit";

/// Reads [`RESERVE_ANNOTATION`] from an object's annotations.
pub fn reserve_from_annotations(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Option<f64>, String> {
    let Some(v) = annotations.and_then(|a| a.get(RESERVE_ANNOTATION)) else {
        return Ok(None);
    };
    match v.trim().parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(Some(m)),
        _ => Err(format!(
            "annotation {RESERVE_ANNOTATION} = {v:?} is not a positive number of Mbit/s; no bandwidth is promised"
        )),
    }
}

impl Vmi {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A VirtualMachineInstanceMigration, the fields vmbw uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Vmim {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub vmi_name: String,
    /// `status.phase` (`Pending`, `Scheduling`, `TargetReady`, `Running`,
    /// `Succeeded`, `Failed`, ...).
    pub phase: Option<String>,
}

impl Vmim {
    /// Whether the migration is over (either way).
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
}

/// A virt-launcher pod: the pod a VMI's QEMU runs in, the fields vmbw
/// uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LauncherPod {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// The VMI it runs: the controller owner reference of kind
    /// `VirtualMachineInstance`, else the `vm.kubevirt.io/name` label.
    pub vmi_name: Option<String>,
    /// The owner reference's UID, else the `kubevirt.io/created-by` label.
    pub vmi_uid: Option<String>,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`).
    pub phase: Option<String>,
    pub host_network: bool,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// The pod's host-side interface(s), filled in by discovery from the
    /// host's routes ([`super::podnet`]), not from the object.
    pub host_ifaces: Vec<super::podnet::HostIface>,
}

impl LauncherPod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

// ---- serde shapes of the JSON (camelCase, everything optional) ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct VmiJson {
    status: VmiStatusJson,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct VmiStatusJson {
    node_name: Option<String>,
    phase: Option<String>,
    interfaces: Vec<InterfaceJson>,
    migration_state: Option<MigrationStateJson>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct InterfaceJson {
    name: Option<String>,
    interface_name: Option<String>,
    ip_address: Option<String>,
    ip_addresses: Vec<String>,
    mac: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MigrationStateJson {
    start_timestamp: Option<String>,
    end_timestamp: Option<String>,
    target_node_address: Option<String>,
    target_direct_migration_node_ports: Option<BTreeMap<String, i64>>,
    target_node: Option<String>,
    target_pod: Option<String>,
    source_node: Option<String>,
    source_pod: Option<String>,
    completed: bool,
    failed: bool,
    abort_requested: bool,
    migration_uid: Option<String>,
    mode: Option<String>,
    migration_configuration: MigrationConfigurationJson,
    // Newer KubeVirt (decentralised migration) also keeps per-side state;
    // the legacy fields above are still written, these are a fallback.
    source_state: Option<SideStateJson>,
    target_state: Option<SideStateJson>,
}

/// KubeVirt's `MigrationConfiguration` (types.go), the fields vmbw uses.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MigrationConfigurationJson {
    #[serde(rename = "completionTimeoutPerGiB")]
    completion_timeout_per_gib: Option<i64>,
    progress_timeout: Option<i64>,
    allow_post_copy: Option<bool>,
    allow_auto_converge: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SideStateJson {
    node: Option<String>,
    pod: Option<String>,
    node_address: Option<String>,
    direct_migration_node_ports: Option<BTreeMap<String, i64>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct VmimJson {
    spec: VmimSpecJson,
    status: VmimStatusJson,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct VmimSpecJson {
    vmi_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct VmimStatusJson {
    phase: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodJson {
    spec: PodSpecJson,
    status: PodStatusJson,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodSpecJson {
    node_name: Option<String>,
    host_network: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodStatusJson {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<PodIpJson>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodIpJson {
    ip: Option<String>,
}

struct Ctx {
    kind: &'static str,
    object: String,
}

impl Ctx {
    fn field(
        &self,
        field: &'static str,
        value: impl fmt::Display,
        expected: &'static str,
    ) -> ObjectError {
        ObjectError::Field {
            kind: self.kind,
            object: self.object.clone(),
            field,
            value: value.to_string(),
            expected,
        }
    }
}

fn identity(raw: &RawObject, kind: &'static str) -> Result<(Ctx, String, String), ObjectError> {
    let ctx = Ctx {
        kind,
        object: raw.key(),
    };
    if let Some(reason) = &raw.metadata_error {
        return Err(ObjectError::Metadata {
            kind,
            object: ctx.object,
            reason: reason.clone(),
        });
    }
    let name = raw.metadata.name.clone().filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(ObjectError::NoName {
            kind,
            object: ctx.object,
        });
    };
    let namespace = raw.metadata.namespace.clone().unwrap_or_default();
    Ok((ctx, namespace, name))
}

/// Parses a VirtualMachineInstance.
pub fn parse_vmi(raw: &RawObject) -> Result<Vmi, ObjectError> {
    let (ctx, namespace, name) = identity(raw, "VirtualMachineInstance")?;
    let json: VmiJson =
        serde_json::from_value(raw.value.clone()).map_err(|source| ObjectError::Json {
            kind: ctx.kind,
            object: ctx.object.clone(),
            source,
        })?;
    let status = json.status;
    let interfaces = status
        .interfaces
        .iter()
        .map(|i| parse_interface(&ctx, i))
        .collect::<Result<Vec<_>, _>>()?;
    let migration = status
        .migration_state
        .map(|m| parse_migration(&ctx, m))
        .transpose()?;
    Ok(Vmi {
        namespace,
        name,
        uid: raw.metadata.uid.clone(),
        node: status.node_name.filter(|n| !n.is_empty()),
        phase: status.phase,
        interfaces,
        migration,
        reserve_mbit: reserve_from_annotations(raw.metadata.annotations.as_ref()),
    })
}

/// Parses a VirtualMachineInstanceMigration.
pub fn parse_vmim(raw: &RawObject) -> Result<Vmim, ObjectError> {
    let (ctx, namespace, name) = identity(raw, "VirtualMachineInstanceMigration")?;
    let json: VmimJson =
        serde_json::from_value(raw.value.clone()).map_err(|source| ObjectError::Json {
            kind: ctx.kind,
            object: ctx.object.clone(),
            source,
        })?;
    let vmi_name = json
        .spec
        .vmi_name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ctx.field("spec.vmiName", "", "a VMI name"))?;
    Ok(Vmim {
        namespace,
        name,
        uid: raw.metadata.uid.clone(),
        vmi_name,
        phase: json.status.phase,
    })
}

/// Parses a virt-launcher pod. A pod that cannot be tied to a VMI, or
/// whose addresses are not addresses, is an error naming the field.
pub fn parse_launcher_pod(raw: &RawObject) -> Result<LauncherPod, ObjectError> {
    let (ctx, namespace, name) = identity(raw, "Pod")?;
    let json: PodJson =
        serde_json::from_value(raw.value.clone()).map_err(|source| ObjectError::Json {
            kind: ctx.kind,
            object: ctx.object.clone(),
            source,
        })?;
    let meta = &raw.metadata;
    let owner =
        meta.owner_references.iter().flatten().find(|o| {
            o.kind == "VirtualMachineInstance" && o.api_version.starts_with("kubevirt.io/")
        });
    let label = |k: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let vmi_name = owner
        .map(|o| o.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| label(labels::VM_NAME));
    let vmi_uid = owner
        .map(|o| o.uid.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| label(labels::CREATED_BY));
    if vmi_name.is_none() && vmi_uid.is_none() {
        return Err(ctx.field(
            "metadata.ownerReferences",
            "none of kind VirtualMachineInstance",
            "a VirtualMachineInstance owner (or a kubevirt.io/created-by label)",
        ));
    }
    let status = json.status;
    let mut ips = Vec::new();
    let listed = status.pod_ips.iter().filter_map(|p| p.ip.as_ref());
    for a in listed.chain(status.pod_ip.iter()) {
        if a.is_empty() {
            continue;
        }
        let ip: IpAddr = a
            .parse()
            .map_err(|_| ctx.field("status.podIPs[].ip", a, "an IP address"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(LauncherPod {
        namespace,
        name,
        uid: meta.uid.clone(),
        vmi_name,
        vmi_uid,
        node: json.spec.node_name.filter(|n| !n.is_empty()),
        phase: status.phase,
        host_network: json.spec.host_network,
        ips,
        host_ifaces: Vec::new(),
    })
}

fn parse_interface(ctx: &Ctx, i: &InterfaceJson) -> Result<VmiInterface, ObjectError> {
    let mut addresses = Vec::new();
    for a in i.ip_address.iter().chain(&i.ip_addresses) {
        if a.is_empty() {
            continue;
        }
        let ip = parse_ip(a)
            .ok_or_else(|| ctx.field("status.interfaces[].ipAddress(es)", a, "an IP address"))?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    let mac = match i.mac.as_deref().filter(|m| !m.is_empty()) {
        None => None,
        Some(m) => Some(
            m.parse::<Mac>()
                .map_err(|_| ctx.field("status.interfaces[].mac", m, "a MAC address"))?
                .octets(),
        ),
    };
    Ok(VmiInterface {
        name: i
            .name
            .clone()
            .or_else(|| i.interface_name.clone())
            .unwrap_or_default(),
        addresses,
        mac,
    })
}

fn parse_migration(ctx: &Ctx, m: MigrationStateJson) -> Result<MigrationState, ObjectError> {
    let target = m.target_state.unwrap_or_default();
    let source = m.source_state.unwrap_or_default();
    let address = m
        .target_node_address
        .filter(|a| !a.is_empty())
        .or(target.node_address.filter(|a| !a.is_empty()));
    let target_address = match address {
        None => None,
        Some(a) => Some(parse_ip(&a).ok_or_else(|| {
            ctx.field(
                "status.migrationState.targetNodeAddress",
                &a,
                "an IP address",
            )
        })?),
    };
    let port_map = m
        .target_direct_migration_node_ports
        .or(target.direct_migration_node_ports)
        .unwrap_or_default();
    let mut ports = Vec::with_capacity(port_map.len());
    for (node_port, launcher_port) in &port_map {
        let field = "status.migrationState.targetDirectMigrationNodePorts";
        let node_port = node_port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| ctx.field(field, node_port, "a port number (1-65535) key"))?;
        let launcher_port = u16::try_from(*launcher_port)
            .map_err(|_| ctx.field(field, launcher_port, "a port number (0-65535) value"))?;
        ports.push(MigrationPort {
            node_port,
            launcher_port,
        });
    }
    ports.sort();
    let c = m.migration_configuration;
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(MigrationState {
        migration_uid: nonempty(m.migration_uid),
        source_node: nonempty(m.source_node).or(nonempty(source.node)),
        source_pod: nonempty(m.source_pod).or(nonempty(source.pod)),
        target_node: nonempty(m.target_node).or(nonempty(target.node)),
        target_pod: nonempty(m.target_pod).or(nonempty(target.pod)),
        target_address,
        ports,
        completed: m.completed,
        failed: m.failed,
        abort_requested: m.abort_requested,
        mode: nonempty(m.mode),
        start_timestamp: nonempty(m.start_timestamp),
        end_timestamp: nonempty(m.end_timestamp),
        terms: MigrationTerms {
            completion_timeout_per_gib: positive(c.completion_timeout_per_gib),
            progress_timeout_s: positive(c.progress_timeout),
            allow_post_copy: c.allow_post_copy,
            allow_auto_converge: c.allow_auto_converge,
        },
    })
}

/// A timeout in seconds; KubeVirt's int64, which is never 0 or negative
/// in a valid configuration (such a value is ignored, as absent).
fn positive(v: Option<i64>) -> Option<f64> {
    v.filter(|s| *s > 0).map(|s| s as f64)
}

/// An IP address, with or without a `/prefix` (KubeVirt reports both
/// forms in `status.interfaces`).
fn parse_ip(s: &str) -> Option<IpAddr> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn raw(v: Value) -> RawObject {
        serde_json::from_value(v).expect("a JSON object always deserialises")
    }

    // KubeVirt's MAC strings are parsed by `datapath::Mac`, whose tests
    // (`kubevirts_former_inputs`) hold the inputs this file used to check.
    #[test]
    fn the_reserve_annotation_promises_bandwidth_or_says_why_not() {
        let with = |v: &str| {
            parse_vmi(&raw(json!({
                "metadata": {"name": "a", "namespace": "ns",
                             "annotations": {RESERVE_ANNOTATION: v}},
                "status": {}
            })))
            .expect("a VMI")
            .reserve_mbit
        };
        assert_eq!(with("12.5"), Ok(Some(12.5)));
        for bad in ["fast", "-3", "0", "NaN"] {
            let e = with(bad).expect_err(bad);
            assert!(e.contains(RESERVE_ANNOTATION) && e.contains(bad), "{e}");
        }
        let none = parse_vmi(&raw(json!({"metadata": {"name": "a"}, "status": {}})));
        assert_eq!(none.expect("a VMI").reserve_mbit, Ok(None));
    }

    #[test]
    fn a_migration_s_terms_are_read_as_kubevirt_wrote_them() {
        let recorded: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/kubevirt/vmi-migrating-node02-to-node01.json"
        ))
        .expect("fixture");
        let terms = parse_vmi(&raw(recorded))
            .expect("a VMI")
            .migration
            .expect("a migration")
            .terms;
        assert_eq!(
            terms,
            MigrationTerms {
                completion_timeout_per_gib: Some(800.0),
                progress_timeout_s: Some(150.0),
                allow_post_copy: None,
                allow_auto_converge: None,
            }
        );
        let with = |c: Value| {
            parse_vmi(&raw(json!({
                "metadata": {"name": "a", "namespace": "ns"},
                "status": {"migrationState": {"migrationConfiguration": c}}
            })))
            .expect("a VMI")
            .migration
            .expect("a migration")
            .terms
        };
        let policy = with(json!({"allowPostCopy": true, "allowAutoConverge": false,
                                 "completionTimeoutPerGiB": 150, "bandwidthPerMigration": "0"}));
        assert_eq!(policy.allow_post_copy, Some(true));
        assert_eq!(policy.allow_auto_converge, Some(false));
        assert_eq!(policy.completion_timeout_per_gib, Some(150.0));
        assert_eq!(
            with(json!({"completionTimeoutPerGiB": 0})).completion_timeout_per_gib,
            None
        );
        assert_eq!(with(json!({})), MigrationTerms::default());
    }

    /// KubeVirt's round-trip fixture as release 1.6 serialises a VMI
    /// (every field set to a placeholder): skipped for its placeholder
    /// addresses, naming the object and the field; with real values in the
    /// fields vmbw needs, its migration's terms are read from 1.6's layout.
    #[test]
    fn kubevirt_1_6_s_round_trip_vmi_is_read_field_by_field() {
        let mut v: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/kubevirt/vmi-apitesting-release-1.6.json"
        ))
        .expect("fixture");
        let e = parse_vmi(&raw(v.clone())).expect_err("placeholders are not addresses");
        let e = e.to_string();
        assert!(
            e.contains("namespaceValue/nameValue") && e.contains("is not an IP address"),
            "{e}"
        );
        let state = &mut v["status"]["migrationState"];
        state["targetNodeAddress"] = json!("10.244.2.10");
        state["targetDirectMigrationNodePorts"] = json!({"45123": 49152});
        v["status"]["interfaces"][0]["ipAddress"] = json!("10.244.1.20");
        v["status"]["interfaces"][0]["ipAddresses"] = json!(["10.244.1.20"]);
        v["status"]["interfaces"][0]["mac"] = json!("52:54:00:f4:01:14");
        let vmi = parse_vmi(&raw(v)).expect("a VMI once the placeholders are values");
        let m = vmi.migration.expect("a migration");
        assert_eq!(m.ports.len(), 1);
        assert_eq!(
            m.terms,
            MigrationTerms {
                // -23 and -15 in the fixture: not timeouts.
                completion_timeout_per_gib: None,
                progress_timeout_s: None,
                allow_post_copy: Some(true),
                allow_auto_converge: Some(true),
            }
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_ip("10.0.0.1/24"),
            Some("10.0.0.1".parse().expect("ip"))
        );
        assert_eq!(parse_ip("fe80::1/64"), Some("fe80::1".parse().expect("ip")));
        assert_eq!(parse_ip("ipAddressValue"), None);
    }

    #[test]
    fn broken_metadata_is_kept_with_its_reason() {
        let r = raw(json!({"metadata": {"name": "a", "namespace": "ns", "labels": 5}}));
        assert!(r.metadata_error.is_some());
        assert_eq!(r.key(), "ns/a");
        let e = parse_vmi(&r).expect_err("must be skipped");
        assert!(
            e.to_string()
                .starts_with("VirtualMachineInstance ns/a: metadata"),
            "{e}"
        );
    }

    #[test]
    fn status_of_the_wrong_type_names_the_object() {
        let r = raw(json!({"metadata": {"name": "a", "namespace": "ns"}, "status": "oops"}));
        let e = parse_vmi(&r).expect_err("must be skipped");
        assert!(e.to_string().contains("ns/a: malformed"), "{e}");
    }

    #[test]
    fn new_style_target_state_is_a_fallback() {
        let r = raw(json!({
            "metadata": {"name": "a", "namespace": "ns"},
            "status": {"migrationState": {
                "sourceState": {"node": "n1"},
                "targetState": {"node": "n2", "nodeAddress": "10.1.0.2",
                                "directMigrationNodePorts": {"40001": 49152, "40000": 0}}
            }}
        }));
        let m = parse_vmi(&r).expect("parse").migration.expect("state");
        assert_eq!(m.source_node.as_deref(), Some("n1"));
        assert_eq!(m.target_node.as_deref(), Some("n2"));
        assert_eq!(m.target_address, Some("10.1.0.2".parse().expect("ip")));
        assert_eq!(
            m.ports,
            [
                MigrationPort {
                    node_port: 40000,
                    launcher_port: 0
                },
                MigrationPort {
                    node_port: 40001,
                    launcher_port: 49152
                },
            ]
        );
    }

    fn pod(v: Value) -> RawObject {
        raw(v)
    }

    #[test]
    fn launcher_pods_name_their_vmi_and_addresses() {
        let p = parse_launcher_pod(&pod(json!({
            "metadata": {"name": "virt-launcher-a-x1", "namespace": "ns", "uid": "p1",
                "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "u1"},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                                     "name": "a", "uid": "u1", "controller": true}]},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                       "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}
        })))
        .expect("parse");
        assert_eq!(p.vmi_name.as_deref(), Some("a"));
        assert_eq!(p.vmi_uid.as_deref(), Some("u1"));
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert_eq!(p.ips.len(), 2);
        // Without an owner, the labels tie it to its VMI.
        let p = parse_launcher_pod(&pod(json!({
            "metadata": {"name": "l", "namespace": "ns",
                "labels": {"kubevirt.io/created-by": "u2", "vm.kubevirt.io/name": "b"}},
            "status": {}
        })))
        .expect("parse");
        assert_eq!(
            (p.vmi_name.as_deref(), p.vmi_uid.as_deref()),
            (Some("b"), Some("u2"))
        );
        assert!(p.ips.is_empty());
    }

    #[test]
    fn malformed_launcher_pods_name_the_field() {
        let e = parse_launcher_pod(&pod(json!({
            "metadata": {"name": "l", "namespace": "ns", "labels": {"kubevirt.io/created-by": "u"}},
            "status": {"podIPs": [{"ip": "10.0.0.300"}]}
        })))
        .expect_err("bad IP");
        assert!(e.to_string().contains("status.podIPs[].ip"), "{e}");
        let e = parse_launcher_pod(&pod(json!({
            "metadata": {"name": "l", "namespace": "ns", "labels": {"kubevirt.io": "virt-launcher"}}
        })))
        .expect_err("no VMI");
        assert!(e.to_string().contains("metadata.ownerReferences"), "{e}");
    }

    #[test]
    fn vmim_needs_a_vmi_name() {
        let r = raw(json!({"metadata": {"name": "m", "namespace": "ns"}, "spec": {}}));
        let e = parse_vmim(&r).expect_err("no vmiName");
        assert!(e.to_string().contains("spec.vmiName"), "{e}");
    }
}
