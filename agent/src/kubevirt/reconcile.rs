//! From what the cluster says to what this node's datapath should hold.
//!
//! Pure: parsed VMIs and migrations in, [`Desired`] out. Under KubeVirt the
//! migration does not flow between the QEMU processes directly: on the
//! target node virt-handler listens on random ports (published as the keys
//! of `status.migrationState.targetDirectMigrationNodePorts`) and forwards
//! to virt-launcher; on the source node virt-handler connects from an
//! ephemeral port to `targetNodeAddress:<port>`. So:
//!
//! - on the **target** node the proxy ports are this host's ports
//!   ([`Side::Local`]);
//! - on the **source** node they are the peer's ports ([`Side::Remote`]).
//!
//! The source's ephemeral port is not published, so exact 5-tuples cannot
//! be learned from the API; the port tables catch the connections instead.
//! Application traffic is recognised by the VM's addresses from
//! `status.interfaces` (on the node the VMI runs on), by the addresses of
//! its running virt-launcher pod on this node (`status.podIPs`: with pod
//! networking the VM's traffic leaves the pod with them), and by the pod's
//! host-side interface where the host has one (see [`super::podnet`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::objects::{LauncherPod, MigrationPort, MigrationTerms, Vmi, Vmim};
use crate::api::{MigrationPhase, MigrationRole};

/// Which end of a connection a migration port is (datapath `PortSide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Local,
    Remote,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

/// A port this node should classify as the VM's migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortClaim {
    pub side: Side,
    pub port: u16,
}

/// A migration of one VM as seen from this node.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredMigration {
    pub role: MigrationRole,
    pub phase: MigrationPhase,
    /// The other node's name.
    pub peer_node: Option<String>,
    /// The target node's migration address (the source connects there).
    pub target_address: Option<IpAddr>,
    /// virt-handler's proxy ports with what each carries.
    pub ports: Vec<MigrationPort>,
    /// Ports to register (empty unless the migration is in progress and
    /// the ports are known).
    pub claims: BTreeSet<PortClaim>,
    pub migration_uid: Option<String>,
    /// The terms KubeVirt set for it (deadline, what it arms).
    pub terms: MigrationTerms,
}

/// What this node's datapath should hold for one VMI.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredVm {
    pub uid: Option<String>,
    /// Application addresses (only where the VM runs).
    pub addresses: BTreeSet<IpAddr>,
    pub macs: BTreeSet<[u8; 6]>,
    /// Host-side interfaces of its launcher pod(s): ifindex -> name.
    pub taps: BTreeMap<u32, String>,
    /// Its running launcher pods on this node, `namespace/name`.
    pub pods: BTreeSet<String>,
    pub migration: Option<DesiredMigration>,
    /// The bandwidth promised to its application (annotation), Mbit/s.
    pub reserve_mbit: Option<f64>,
}

/// The whole node's desired registrations, keyed by `namespace/name`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Desired {
    pub vms: BTreeMap<String, DesiredVm>,
    /// Things an operator should know (port clashes, ...), one line each.
    pub warnings: Vec<String>,
}

/// VMI phases in which the VM has a running domain on its node.
fn runs(vmi: &Vmi) -> bool {
    matches!(vmi.phase.as_deref(), Some("Running" | "Scheduled"))
}

/// Computes this node's desired registrations.
pub fn reconcile(node: &str, vmis: &[Vmi], vmims: &[Vmim], pods: &[LauncherPod]) -> Desired {
    let mut desired = Desired::default();
    for vmi in vmis {
        let here = vmi.node.as_deref() == Some(node) && runs(vmi);
        let migration = migration_view(node, vmi, vmims);
        if !here && migration.is_none() {
            continue;
        }
        let mut vm = DesiredVm {
            uid: vmi.uid.clone(),
            ..DesiredVm::default()
        };
        if here {
            for iface in &vmi.interfaces {
                vm.addresses.extend(iface.addresses.iter().copied());
                vm.macs.extend(iface.mac);
            }
        }
        vm.migration = migration;
        match &vmi.reserve_mbit {
            Ok(r) => vm.reserve_mbit = *r,
            Err(why) => desired.warnings.push(format!("VMI {}: {why}", vmi.key())),
        }
        desired.vms.insert(vmi.key(), vm);
    }
    for pod in pods {
        if pod.node.as_deref() != Some(node)
            || pod.phase.as_deref() != Some("Running")
            || pod.host_network
        {
            continue;
        }
        let key = match &pod.vmi_name {
            Some(vmi) => format!("{}/{vmi}", pod.namespace),
            None => match vmis
                .iter()
                .find(|v| v.uid.is_some() && v.uid == pod.vmi_uid)
            {
                Some(v) => v.key(),
                None => {
                    desired.warnings.push(format!(
                        "launcher pod {}: its VMI (uid {}) is not known on this node; \
                         its addresses are not registered",
                        pod.key(),
                        pod.vmi_uid.as_deref().unwrap_or("?")
                    ));
                    continue;
                }
            },
        };
        let vm = desired.vms.entry(key).or_insert_with(|| DesiredVm {
            uid: pod.vmi_uid.clone(),
            ..DesiredVm::default()
        });
        vm.addresses.extend(pod.ips.iter().copied());
        for i in &pod.host_ifaces {
            vm.taps.insert(i.index, i.name.clone());
        }
        vm.pods.insert(pod.key());
    }
    resolve_port_clashes(&mut desired, vmis);
    desired
}

/// The migration of `vmi` from this node's point of view, if this node is
/// one of its ends and it is not long over.
fn migration_view(node: &str, vmi: &Vmi, vmims: &[Vmim]) -> Option<DesiredMigration> {
    let vmim = |pred: &dyn Fn(&Vmim) -> bool| {
        vmims
            .iter()
            .find(|m| m.namespace == vmi.namespace && m.vmi_name == vmi.name && pred(m))
    };
    let Some(state) = &vmi.migration else {
        // Announced by a migration object, not started: show it on the
        // VM's node as pending.
        let pending = vmim(&|m| !m.finished())?;
        if vmi.node.as_deref() != Some(node) {
            return None;
        }
        return Some(DesiredMigration {
            role: MigrationRole::Source,
            phase: MigrationPhase::Pending,
            peer_node: None,
            target_address: None,
            ports: Vec::new(),
            claims: BTreeSet::new(),
            migration_uid: pending.uid.clone(),
            terms: MigrationTerms::default(),
        });
    };
    // The source is `sourceNode` (or, before virt-handler wrote it, the
    // node the VMI runs on).
    let source = state.source_node.as_deref().or(vmi.node.as_deref());
    let role = if state.target_node.as_deref() == Some(node) {
        MigrationRole::Target
    } else if source == Some(node) {
        MigrationRole::Source
    } else {
        return None;
    };
    // The migration object, when there is one, is the authority on whether
    // it is over: the VMI keeps its last migrationState after the end.
    let object = match &state.migration_uid {
        Some(uid) => vmims
            .iter()
            .find(|m| m.uid.as_deref() == Some(uid.as_str())),
        None => vmim(&|_| true),
    };
    let object_over = object.is_some_and(Vmim::finished);
    let phase = if state.failed || state.abort_requested && state.completed {
        MigrationPhase::Failed
    } else if state.completed || state.end_timestamp.is_some() {
        MigrationPhase::Completed
    } else if object_over {
        match object.and_then(|m| m.phase.as_deref()) {
            Some("Failed") => MigrationPhase::Failed,
            _ => MigrationPhase::Completed,
        }
    } else if state.ports.is_empty() {
        MigrationPhase::Pending
    } else if state.mode.as_deref() == Some("PostCopy") {
        MigrationPhase::PostCopy
    } else {
        MigrationPhase::PreCopy
    };
    let in_progress = matches!(phase, MigrationPhase::PreCopy | MigrationPhase::PostCopy);
    // A finished migration is not shown on a node that is no longer
    // involved: the target once the VM left it again, the source once the
    // VM is gone from it.
    if !in_progress && phase != MigrationPhase::Pending && vmi.node.as_deref() != Some(node) {
        return None;
    }
    let side = match role {
        MigrationRole::Target => Side::Local,
        MigrationRole::Source => Side::Remote,
    };
    let claims = if in_progress {
        state
            .ports
            .iter()
            .map(|p| PortClaim {
                side,
                port: p.node_port,
            })
            .collect()
    } else {
        BTreeSet::new()
    };
    let peer_node = match role {
        MigrationRole::Target => state.source_node.clone(),
        MigrationRole::Source => state.target_node.clone(),
    };
    Some(DesiredMigration {
        role,
        phase,
        peer_node,
        target_address: state.target_address,
        ports: state.ports.clone(),
        claims,
        migration_uid: state.migration_uid.clone(),
        terms: state.terms,
    })
}

/// The datapath's port tables hold one VM per (side, port): if two
/// migrations on this node use the same port (their targets are different
/// nodes that picked the same random port), the one that started first
/// keeps it and the clash is reported.
fn resolve_port_clashes(desired: &mut Desired, vmis: &[Vmi]) {
    let started = |key: &str| {
        vmis.iter()
            .find(|v| v.key() == key)
            .and_then(|v| v.migration.as_ref())
            .and_then(|m| m.start_timestamp.clone())
            .unwrap_or_default()
    };
    let mut owners: BTreeMap<PortClaim, Vec<(String, String)>> = BTreeMap::new();
    for (key, vm) in &desired.vms {
        for claim in vm.migration.iter().flat_map(|m| &m.claims) {
            owners
                .entry(*claim)
                .or_default()
                .push((started(key), key.clone()));
        }
    }
    for (claim, mut claimants) in owners {
        if claimants.len() < 2 {
            continue;
        }
        claimants.sort();
        let winner = claimants[0].1.clone();
        for (_, loser) in &claimants[1..] {
            if let Some(m) = desired
                .vms
                .get_mut(loser)
                .and_then(|vm| vm.migration.as_mut())
            {
                m.claims.remove(&claim);
            }
            desired.warnings.push(format!(
                "{} port {} is used by the migrations of {winner} and {loser}; \
                 it stays with {winner} (started first)",
                claim.side.as_str(),
                claim.port
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubevirt::objects::{MigrationState, VmiInterface};

    fn vmi(name: &str, node: &str, migration: Option<MigrationState>) -> Vmi {
        Vmi {
            namespace: "default".into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
            node: Some(node.into()),
            phase: Some("Running".into()),
            interfaces: vec![VmiInterface {
                name: "default".into(),
                addresses: vec!["10.244.1.7".parse().expect("ip")],
                mac: Some([2, 0, 0, 0, 0, 7]),
            }],
            migration,
            reserve_mbit: Ok(None),
        }
    }

    fn state(source: &str, target: &str, ports: &[(u16, u16)]) -> MigrationState {
        MigrationState {
            migration_uid: Some("mig-1".into()),
            source_node: Some(source.into()),
            target_node: Some(target.into()),
            target_address: Some("10.128.0.46".parse().expect("ip")),
            ports: ports
                .iter()
                .map(|&(node_port, launcher_port)| MigrationPort {
                    node_port,
                    launcher_port,
                })
                .collect(),
            start_timestamp: Some("2019-03-29T04:02:47Z".into()),
            mode: Some("PreCopy".into()),
            ..MigrationState::default()
        }
    }

    fn vmim(phase: &str) -> Vmim {
        Vmim {
            namespace: "default".into(),
            name: "migration-job".into(),
            uid: Some("mig-1".into()),
            vmi_name: "vm-a".into(),
            phase: Some(phase.into()),
        }
    }

    const PORTS: &[(u16, u16)] = &[(39445, 0), (43345, 49152), (44222, 49153)];

    fn claims(d: &Desired, key: &str) -> Vec<(Side, u16)> {
        d.vms[key]
            .migration
            .as_ref()
            .map(|m| m.claims.iter().map(|c| (c.side, c.port)).collect())
            .unwrap_or_default()
    }

    #[test]
    fn source_claims_remote_ports_and_keeps_addresses() {
        let vmis = [vmi(
            "vm-a",
            "node02",
            Some(state("node02", "node01", PORTS)),
        )];
        let d = reconcile("node02", &vmis, &[vmim("Running")], &[]);
        let vm = &d.vms["default/vm-a"];
        let m = vm.migration.as_ref().expect("migration");
        assert_eq!(
            (m.role, m.phase),
            (MigrationRole::Source, MigrationPhase::PreCopy)
        );
        assert_eq!(m.peer_node.as_deref(), Some("node01"));
        assert_eq!(
            claims(&d, "default/vm-a"),
            [
                (Side::Remote, 39445),
                (Side::Remote, 43345),
                (Side::Remote, 44222)
            ]
        );
        assert_eq!(vm.addresses.len(), 1);
        assert_eq!(vm.macs.len(), 1);
    }

    #[test]
    fn target_claims_local_ports_without_addresses() {
        let vmis = [vmi(
            "vm-a",
            "node02",
            Some(state("node02", "node01", PORTS)),
        )];
        let d = reconcile("node01", &vmis, &[vmim("Running")], &[]);
        let vm = &d.vms["default/vm-a"];
        assert_eq!(
            vm.migration.as_ref().map(|m| m.role),
            Some(MigrationRole::Target)
        );
        assert_eq!(claims(&d, "default/vm-a")[0], (Side::Local, 39445));
        assert!(vm.addresses.is_empty(), "the VM still runs on the source");
    }

    #[test]
    fn a_promise_travels_with_the_vmi_and_a_bad_one_is_a_warning() {
        let mut good = vmi("a", "node01", None);
        good.reserve_mbit = Ok(Some(10.0));
        let mut bad = vmi("b", "node01", None);
        bad.reserve_mbit = Err("annotation vmbw.io/reserve-mbit = \"x\" is not ...".into());
        let d = reconcile("node01", &[good, bad], &[], &[]);
        assert_eq!(d.vms["default/a"].reserve_mbit, Some(10.0));
        // The VMI with the bad annotation is still registered, unpromised.
        assert_eq!(d.vms["default/b"].reserve_mbit, None);
        assert!(!d.vms["default/b"].addresses.is_empty());
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(
            d.warnings[0].starts_with("VMI default/b: annotation"),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn other_nodes_see_nothing() {
        let vmis = [vmi(
            "vm-a",
            "node02",
            Some(state("node02", "node01", PORTS)),
        )];
        assert!(reconcile("node03", &vmis, &[], &[]).vms.is_empty());
    }

    #[test]
    fn completion_releases_the_ports() {
        let mut s = state("node02", "node01", PORTS);
        s.completed = true;
        s.end_timestamp = Some("2019-03-29T04:02:49Z".into());
        // After completion the VMI runs on the target.
        let vmis = [vmi("vm-a", "node01", Some(s))];
        let on_target = reconcile("node01", &vmis, &[vmim("Succeeded")], &[]);
        let m = on_target.vms["default/vm-a"]
            .migration
            .as_ref()
            .expect("shown");
        assert_eq!(m.phase, MigrationPhase::Completed);
        assert!(m.claims.is_empty());
        assert_eq!(on_target.vms["default/vm-a"].addresses.len(), 1);
        // The source no longer holds the VM at all.
        assert!(reconcile("node02", &vmis, &[], &[]).vms.is_empty());
    }

    #[test]
    fn a_finished_migration_object_wins_over_a_stale_state() {
        // virt-handler has not written `completed` yet, the object says
        // the migration failed.
        let vmis = [vmi(
            "vm-a",
            "node02",
            Some(state("node02", "node01", PORTS)),
        )];
        let d = reconcile("node02", &vmis, &[vmim("Failed")], &[]);
        let m = d.vms["default/vm-a"].migration.as_ref().expect("shown");
        assert_eq!(m.phase, MigrationPhase::Failed);
        assert!(m.claims.is_empty());
    }

    #[test]
    fn pending_before_ports_are_published() {
        let vmis = [vmi("vm-a", "node02", None)];
        let d = reconcile("node02", &vmis, &[vmim("Scheduling")], &[]);
        let m = d.vms["default/vm-a"].migration.as_ref().expect("pending");
        assert_eq!(m.phase, MigrationPhase::Pending);
        assert!(m.claims.is_empty());
        let mut s = state("node02", "node01", &[]);
        s.target_address = None;
        let vmis = [vmi("vm-a", "node02", Some(s))];
        let d = reconcile("node02", &vmis, &[vmim("TargetReady")], &[]);
        assert_eq!(
            d.vms["default/vm-a"].migration.as_ref().map(|m| m.phase),
            Some(MigrationPhase::Pending)
        );
    }

    #[test]
    fn post_copy_mode() {
        let mut s = state("node02", "node01", PORTS);
        s.mode = Some("PostCopy".into());
        let vmis = [vmi("vm-a", "node02", Some(s))];
        let d = reconcile("node02", &vmis, &[], &[]);
        assert_eq!(
            d.vms["default/vm-a"].migration.as_ref().map(|m| m.phase),
            Some(MigrationPhase::PostCopy)
        );
    }

    #[test]
    fn a_port_clash_keeps_the_earlier_migration() {
        let a = state("node02", "node01", &[(40000, 49152)]);
        let mut b = state("node02", "node03", &[(40000, 49152), (40001, 0)]);
        b.migration_uid = Some("mig-2".into());
        b.start_timestamp = Some("2019-03-29T05:00:00Z".into());
        let vmis = [
            vmi("vm-b", "node02", Some(b)),
            vmi("vm-a", "node02", Some(a)),
        ];
        let d = reconcile("node02", &vmis, &[], &[]);
        assert_eq!(claims(&d, "default/vm-a"), [(Side::Remote, 40000)]);
        assert_eq!(claims(&d, "default/vm-b"), [(Side::Remote, 40001)]);
        assert_eq!(d.warnings.len(), 1);
        assert!(
            d.warnings[0].contains("stays with default/vm-a"),
            "{:?}",
            d.warnings
        );
    }

    fn launcher(name: &str, vmi: Option<&str>, uid: &str, node: &str, phase: &str) -> LauncherPod {
        LauncherPod {
            namespace: "default".into(),
            name: name.into(),
            uid: Some(format!("pod-{name}")),
            vmi_name: vmi.map(str::to_owned),
            vmi_uid: Some(uid.into()),
            node: Some(node.into()),
            phase: Some(phase.into()),
            host_network: false,
            ips: vec!["10.244.1.9".parse().expect("ip")],
            host_ifaces: vec![crate::kubevirt::podnet::HostIface {
                index: 42,
                name: "cali0123".into(),
            }],
        }
    }

    #[test]
    fn running_launcher_pods_on_this_node_add_addresses_and_taps() {
        let vmis = [vmi("vm-a", "node02", None)];
        let pods = [
            launcher(
                "virt-launcher-vm-a-x",
                Some("vm-a"),
                "uid-vm-a",
                "node02",
                "Running",
            ),
            // Found by the VMI's uid alone.
            launcher(
                "virt-launcher-vm-a-y",
                None,
                "uid-vm-a",
                "node02",
                "Running",
            ),
        ];
        let d = reconcile("node02", &vmis, &[], &pods);
        let vm = &d.vms["default/vm-a"];
        assert!(vm.addresses.contains(&"10.244.1.9".parse().expect("ip")));
        assert!(vm.addresses.contains(&"10.244.1.7".parse().expect("ip")));
        assert_eq!(vm.taps.get(&42).map(String::as_str), Some("cali0123"));
        assert_eq!(vm.pods.len(), 2);
        // A pod of a VMI this node does not watch still makes a VM here.
        let d = reconcile(
            "node02",
            &[],
            &[],
            &[launcher(
                "virt-launcher-b",
                Some("vm-b"),
                "u-b",
                "node02",
                "Running",
            )],
        );
        assert!(d.vms.contains_key("default/vm-b"));
    }

    #[test]
    fn finished_foreign_and_unmappable_pods_register_nothing() {
        let pods = [
            launcher("done", Some("vm-a"), "u", "node02", "Succeeded"),
            launcher("elsewhere", Some("vm-a"), "u", "node01", "Running"),
        ];
        assert!(reconcile("node02", &[], &[], &pods).vms.is_empty());
        let d = reconcile(
            "node02",
            &[],
            &[],
            &[launcher("orphan", None, "nobody", "node02", "Running")],
        );
        assert!(d.vms.is_empty());
        assert!(d.warnings[0].contains("default/orphan"), "{:?}", d.warnings);
    }

    #[test]
    fn stopped_vmis_are_dropped() {
        let mut v = vmi("vm-a", "node02", None);
        v.phase = Some("Succeeded".into());
        assert!(reconcile("node02", &[v], &[], &[]).vms.is_empty());
    }
}
