//! The KubeVirt watcher end to end: recorded KubeVirt objects served by the
//! stand-in API server, the real kube-rs watcher, and a real (ephemeral)
//! datapath whose classifier is run on frames (BPF_PROG_TEST_RUN) to see
//! what the learned registrations do.
//!
//! Scenario (fixtures in tests/fixtures/kubevirt/, see SOURCES.md): VMI
//! `default/testvmi` runs on node02 and migrates to node01 through
//! virt-handler's proxy ports 39445 (libvirt), 43345 (memory) and 44222
//! (block) on 10.128.0.46. The stand-in API server filters lists and
//! watches by the node-scoped selectors the watcher sends, so a VMI only
//! reaches a node's agent through the labels KubeVirt puts on it.
//!
//! Launcher pods: the recorded virt-launcher pod of VMI `default/fedora02`
//! on node `kubevirt-nn4bm-worker-srxr9` (10.131.0.169), with a host-side
//! veth and a host route to the pod made in a test namespace.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::Value;
use vmbw::{
    api::{FlowMatch, MigrationPhase, MigrationRole},
    datapath::{Datapath, PinDir, SkbIn, VmCounters},
    kubevirt::{self, Discovery, HostRoutes},
};
use vmbw_common::{Direction, NO_VM};
use vmbw_tests::{
    NetNs,
    frames::*,
    in_netns,
    kubeapi::{FakeApi, fixture},
    logs::Captured,
    privileged, require,
};

const VMIS: &str = "/apis/kubevirt.io/v1/virtualmachineinstances";
const VMIMS: &str = "/apis/kubevirt.io/v1/virtualmachineinstancemigrations";
const PODS: &str = "/api/v1/pods";

const SOURCE_HOST: [u8; 4] = [10, 128, 0, 45];
const TARGET_HOST: [u8; 4] = [10, 128, 0, 46];
const VM_IP: [u8; 4] = [192, 168, 2, 107];
const PEER: [u8; 4] = [192, 168, 2, 1];
const PORTS: [u16; 3] = [39445, 43345, 44222];

struct Setup {
    api: FakeApi,
    dp: Arc<Mutex<Datapath>>,
    discovery: Arc<Mutex<Discovery>>,
    /// Set by discovery once its first lists are applied (`/readyz`).
    synced: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent's ClusterRole as deployed.
fn cluster_role() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/clusterrole.yaml"
    );
    std::fs::read_to_string(path).expect("deploy/base/clusterrole.yaml")
}

async fn setup(node: &str, initial: &[&str]) -> anyhow::Result<Setup> {
    setup_with(node, initial, Discovery::new(node, 1..=64)).await
}

async fn setup_with(node: &str, initial: &[&str], discovery: Discovery) -> anyhow::Result<Setup> {
    setup_as(node, initial, discovery, &cluster_role()).await
}

/// The stand-in answers as a real API server would to the agent's service
/// account bound to `role` (a ClusterRole manifest).
async fn setup_as(
    node: &str,
    initial: &[&str],
    discovery: Discovery,
    role: &str,
) -> anyhow::Result<Setup> {
    assert_eq!(discovery.node(), node);
    let api = FakeApi::start().await?;
    api.enforce_cluster_role(role)?;
    api.collection(VMIS, "VirtualMachineInstanceList");
    api.collection(VMIMS, "VirtualMachineInstanceMigrationList");
    api.collection(PODS, "PodList");
    for f in initial {
        api.apply(VMIS, fixture(f)?);
    }
    let dp = Arc::new(Mutex::new(
        Datapath::load(&PinDir::Ephemeral).context("load datapath")?,
    ));
    let discovery = Arc::new(Mutex::new(discovery));
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = {
        let client = api.client()?;
        let (d, dp, s) = (discovery.clone(), dp.clone(), synced.clone());
        tokio::spawn(async move {
            if let Err(e) = kubevirt::run(client, d, dp, s).await {
                tracing::error!(error = %e, "discovery ended");
            }
        })
    };
    Ok(Setup {
        api,
        dp,
        discovery,
        synced,
        task,
    })
}

impl Setup {
    /// Waits (up to 20 s) until `pred` holds on the discovery state.
    async fn until(&self, what: &str, pred: impl Fn(&Discovery) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            {
                let d = self
                    .discovery
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                if pred(&d) {
                    return Ok(());
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "timed out waiting for {what}; flows: {:?}, vms: {:?}",
                        d.flows(),
                        d.vms()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn slot(&self) -> anyhow::Result<u32> {
        let d = self
            .discovery
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        d.vms()
            .into_iter()
            .find(|v| v.name == "default/testvmi")
            .and_then(|v| v.slot)
            .context("testvmi has no slot")
    }

    /// Runs one frame through the classifier and returns how the counters
    /// of `vm` changed.
    fn run(&self, vm: u32, dir: Direction, frame: &Frame) -> anyhow::Result<VmCounters> {
        let mut dp = self.dp.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let before = dp.vm_counters(vm)?;
        dp.test_run(dir, frame.bytes(), SkbIn::default(), 1)?;
        let after = dp.vm_counters(vm)?;
        let d = |a: u64, b: u64| a - b;
        let mut out = VmCounters::default();
        for (o, (a, b)) in [
            (&mut out.migration, (&after.migration, &before.migration)),
            (
                &mut out.application,
                (&after.application, &before.application),
            ),
            (&mut out.other, (&after.other, &before.other)),
        ] {
            o.egress.packets = d(a.egress.packets, b.egress.packets);
            o.ingress.packets = d(a.ingress.packets, b.ingress.packets);
        }
        Ok(out)
    }

    fn flow_count(&self, matches: FlowMatch) -> usize {
        self.discovery
            .lock()
            .map(|d| d.flows().iter().filter(|f| f.matches == matches).count())
            .unwrap_or(0)
    }
}

/// A TCP segment between `local:lport` and `remote:rport` in direction
/// `dir` (egress: local is the source).
fn tcp(dir: Direction, local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> Frame {
    match dir {
        Direction::Egress => Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
            .ipv4(local, remote, TCP, 0, 0)
            .tcp(lport, rport)
            .payload(64),
        Direction::Ingress => Frame::eth(MAC_PEER, MAC_HOST, ETH_IPV4)
            .ipv4(remote, local, TCP, 0, 0)
            .tcp(rport, lport)
            .payload(64),
    }
}

fn app_frame() -> Frame {
    Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
        .ipv4(VM_IP, PEER, UDP, 0, 0)
        .udp(5000, 9000)
        .payload(64)
}

fn obj(name: &str) -> anyhow::Result<Value> {
    fixture(name)
}

#[tokio::test]
async fn source_node_learns_the_migration_ports_and_drops_them_at_the_end() {
    require!(privileged());
    let (logs, _guard) = Captured::start();
    let s = setup("node02", &["vmi-running-node02.json"])
        .await
        .expect("setup");
    // KubeVirt's API round-trip VMI, labelled for this node so that the
    // node-scoped watch delivers it (its own labels are placeholders).
    let mut roundtrip = obj("vmi-apitesting-roundtrip.json").expect("fixture");
    roundtrip["metadata"]["labels"]["kubevirt.io/nodeName"] = "node02".into();
    s.api.apply(VMIS, roundtrip);
    let (e, i) = (Direction::Egress, Direction::Ingress);

    // The running VM: its addresses are registered, no migration ports.
    s.until("the VM's addresses", |d| {
        d.flows().iter().any(|f| f.local == "192.168.2.107")
    })
    .await
    .expect("addresses");
    let slot = s.slot().expect("slot");
    assert_eq!(
        s.run(slot, e, &app_frame())
            .expect("run")
            .application
            .egress
            .packets,
        1
    );
    let to_target = tcp(e, SOURCE_HOST, 51000, TARGET_HOST, 43345);
    assert_eq!(
        s.run(slot, e, &to_target)
            .expect("run")
            .migration
            .egress
            .packets,
        0,
        "no migration yet: port 43345 means nothing"
    );

    // The migration is requested, then virt-handler publishes its ports.
    s.api
        .apply(VMIMS, obj("vmim-scheduling.json").expect("fixture"));
    s.until("the pending migration", |d| {
        d.vms().iter().any(|v| v.phase == MigrationPhase::Pending)
    })
    .await
    .expect("pending");
    assert_eq!(s.flow_count(FlowMatch::RemotePorts), 0);
    s.api.apply(
        VMIS,
        obj("vmi-migrating-node02-to-node01.json").expect("fixture"),
    );
    s.api
        .apply(VMIMS, obj("vmim-running.json").expect("fixture"));
    s.until("three remote migration ports", |d| {
        d.flows()
            .iter()
            .filter(|f| f.matches == FlowMatch::RemotePorts)
            .count()
            == 3
    })
    .await
    .expect("ports");
    {
        let d = s.discovery.lock().expect("lock");
        let vm = d
            .vms()
            .into_iter()
            .find(|v| v.name == "default/testvmi")
            .expect("vm");
        assert_eq!(vm.role, Some(MigrationRole::Source));
        assert_eq!(vm.phase, MigrationPhase::PreCopy);
        assert_eq!(vm.peer_node.as_deref(), Some("node01"));
        assert_eq!(vm.slot, Some(slot), "the slot stays with the VM");
    }
    for port in PORTS {
        let out = s
            .run(slot, e, &tcp(e, SOURCE_HOST, 51000, TARGET_HOST, port))
            .expect("run");
        assert_eq!(out.migration.egress.packets, 1, "egress to {port}");
        let back = s
            .run(slot, i, &tcp(i, SOURCE_HOST, 51000, TARGET_HOST, port))
            .expect("run");
        assert_eq!(back.migration.ingress.packets, 1, "ingress from {port}");
    }
    let other = tcp(e, SOURCE_HOST, 51000, TARGET_HOST, 43346);
    assert_eq!(
        s.run(slot, e, &other)
            .expect("run")
            .migration
            .egress
            .packets,
        0
    );
    // The application is still the application.
    assert_eq!(
        s.run(slot, e, &app_frame())
            .expect("run")
            .application
            .egress
            .packets,
        1
    );

    // The migration completes: the VM now runs on node01, so node02 drops
    // its ports and addresses.
    s.api
        .apply(VMIS, obj("vmi-migrated-to-node01.json").expect("fixture"));
    s.api
        .apply(VMIMS, obj("vmim-succeeded.json").expect("fixture"));
    s.until("nothing left for the VM", |d| {
        d.flows().is_empty() && d.vms().is_empty()
    })
    .await
    .expect("removed");
    assert_eq!(
        s.run(slot, e, &to_target)
            .expect("run")
            .migration
            .egress
            .packets,
        0
    );
    assert_eq!(
        s.run(NO_VM, e, &to_target)
            .expect("run")
            .other
            .egress
            .packets,
        1,
        "port 43345 is unknown traffic again"
    );
    assert_eq!(
        s.run(slot, e, &app_frame())
            .expect("run")
            .application
            .egress
            .packets,
        0
    );

    // The malformed object was skipped with a warning naming it, once.
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("skipping a malformed KubeVirt object"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("namespaceValue/nameValue")),
        "{text}"
    );
    assert_eq!(warnings.len(), 1, "logged once per object version: {text}");

    // The watcher listed and watched this node's VMIs (two label
    // selectors), its launcher pods (label and field selector), and the
    // migrations cluster-wide.
    let requests = s.api.requests();
    let watched = |path: &str, selector: &str| {
        requests.iter().any(|r| {
            r.starts_with(&format!("{path}?"))
                && r.contains("watch=true")
                && decode(r).contains(selector)
        })
    };
    for (path, selector) in [
        (VMIS, "labelSelector=kubevirt.io/nodeName=node02"),
        (
            VMIS,
            "labelSelector=kubevirt.io/migrationTargetNodeName=node02",
        ),
        (PODS, "labelSelector=kubevirt.io=virt-launcher"),
        (PODS, "fieldSelector=spec.nodeName=node02"),
        (VMIMS, ""),
    ] {
        assert!(watched(path, selector), "{path} {selector}: {requests:?}");
    }
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with(VMIS))
            .all(|r| decode(r).contains("labelSelector=")),
        "no cluster-wide VMI request: {requests:?}"
    );
}

/// Percent-decodes a request line for comparisons.
fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn target_node_learns_its_listening_ports_then_adopts_the_vm() {
    require!(privileged());
    let s = setup("node01", &["vmi-running-node02.json"])
        .await
        .expect("setup");
    let i = Direction::Ingress;
    // Not this node's VM: nothing registered. Give the watcher time to
    // list before the migration shows up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.discovery.lock().expect("lock").flows().is_empty());

    s.api.apply(
        VMIS,
        obj("vmi-migrating-node02-to-node01.json").expect("fixture"),
    );
    s.until("three local migration ports", |d| {
        d.flows()
            .iter()
            .filter(|f| f.matches == FlowMatch::LocalPorts)
            .count()
            == 3
    })
    .await
    .expect("ports");
    let slot = s.slot().expect("slot");
    assert_eq!(
        s.discovery.lock().expect("lock").vms()[0].role,
        Some(MigrationRole::Target)
    );
    // The source connects from an ephemeral port to our listening port.
    let incoming = tcp(i, TARGET_HOST, 43345, SOURCE_HOST, 51000);
    assert_eq!(
        s.run(slot, i, &incoming)
            .expect("run")
            .migration
            .ingress
            .packets,
        1
    );
    // The VM does not run here yet: its address is not ours.
    assert_eq!(s.flow_count(FlowMatch::VmAddress), 0);

    s.api
        .apply(VMIS, obj("vmi-migrated-to-node01.json").expect("fixture"));
    s.until("ports released, addresses registered", |d| {
        let f = d.flows();
        f.iter().all(|f| f.matches == FlowMatch::VmAddress) && !f.is_empty()
    })
    .await
    .expect("adopted");
    assert_eq!(
        s.run(slot, i, &incoming)
            .expect("run")
            .migration
            .ingress
            .packets,
        0
    );
    assert_eq!(
        s.run(slot, Direction::Egress, &app_frame())
            .expect("run")
            .application
            .egress
            .packets,
        1
    );
    // A deleted VMI releases everything.
    s.api.delete(VMIS, "default", "testvmi");
    s.until("VM gone", |d| d.flows().is_empty())
        .await
        .expect("deleted");
}

const LAUNCHER_NODE: &str = "kubevirt-nn4bm-worker-srxr9";
const POD_IP: [u8; 4] = [10, 131, 0, 169];

/// A test namespace standing in for the node's root namespace: the pod's
/// host-side veth `vmbwpod0` and the host route a per-pod-veth CNI
/// installs (`10.131.0.169 dev vmbwpod0 scope link`), plus a bridge with a
/// subnet route, which must not be taken for the pod's interface.
fn pod_network() -> (NetNs, u32) {
    let ns = NetNs::new().expect("netns");
    ns.ip(&[
        "link",
        "add",
        "vmbwpod0",
        "type",
        "veth",
        "peer",
        "name",
        "vmbwpod0p",
    ])
    .expect("veth");
    ns.ip(&["link", "set", "vmbwpod0", "up"]).expect("up");
    ns.ip(&[
        "route",
        "add",
        "10.131.0.169/32",
        "dev",
        "vmbwpod0",
        "scope",
        "link",
    ])
    .expect("host route");
    ns.ip(&["link", "add", "vmbwbr0", "type", "bridge"])
        .expect("bridge");
    ns.ip(&["link", "set", "vmbwbr0", "up"]).expect("up");
    ns.ip(&["route", "add", "10.131.1.0/24", "dev", "vmbwbr0"])
        .expect("bridge route");
    let index = in_netns(&ns, || {
        // SAFETY: a valid C string.
        unsafe { libc::if_nametoindex(c"vmbwpod0".as_ptr()) }
    });
    assert_ne!(index, 0);
    (ns, index)
}

#[test]
fn host_routes_find_a_pods_own_interface_only() {
    require!(privileged());
    let (ns, index) = pod_network();
    let found = in_netns(&ns, || {
        use vmbw::kubevirt::PodInterfaces as _;
        let routes = HostRoutes::open().expect("rtnetlink");
        (
            routes.interface_of("10.131.0.169".parse().expect("ip")),
            routes.interface_of("10.131.1.7".parse().expect("ip")),
            routes.interface_of("192.0.2.1".parse().expect("ip")),
        )
    });
    let iface = found.0.expect("lookup").expect("the pod's veth");
    assert_eq!((iface.index, iface.name.as_str()), (index, "vmbwpod0"));
    assert_eq!(found.1.expect("lookup"), None, "a bridge serves many pods");
    assert_eq!(found.2.expect("lookup"), None, "no route at all");
}

#[tokio::test]
async fn launcher_pods_register_their_addresses_and_interface_until_they_go() {
    require!(privileged());
    let (logs, _guard) = Captured::start();
    let (ns, veth) = pod_network();
    let routes = in_netns(&ns, HostRoutes::open).expect("rtnetlink in the test namespace");
    let discovery = Discovery::new(LAUNCHER_NODE, 1..=64).with_interfaces(Box::new(routes));
    let s = setup_with(LAUNCHER_NODE, &[], discovery)
        .await
        .expect("setup");
    let e = Direction::Egress;
    let from_pod = Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
        .ipv4(POD_IP, PEER, TCP, 0, 0)
        .tcp(40000, 443)
        .payload(64);
    // Masqueraded by the node: the source address is the node's, only the
    // device it came from tells it is the pod's.
    let natted = Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
        .ipv4(SOURCE_HOST, PEER, TCP, 0, 0)
        .tcp(40001, 443)
        .payload(64);
    let run = |slot: u32, frame: &Frame, ifindex: u32| -> u64 {
        let mut dp = s.dp.lock().expect("lock");
        let before = dp.vm_counters(slot).expect("counters");
        let input = SkbIn {
            ingress_ifindex: ifindex,
            ..SkbIn::default()
        };
        dp.test_run(e, frame.bytes(), input, 1).expect("test run");
        let after = dp.vm_counters(slot).expect("counters");
        after.application.egress.packets - before.application.egress.packets
    };

    // A launcher pod elsewhere is not this node's (the field selector keeps
    // it away); a malformed one here is skipped with a warning.
    let pod = obj("pod-virt-launcher-fedora02.json").expect("fixture");
    let mut elsewhere = pod.clone();
    elsewhere["metadata"]["name"] = "virt-launcher-fedora02-other".into();
    elsewhere["spec"]["nodeName"] = "another-node".into();
    s.api.apply(PODS, elsewhere);
    let mut malformed = pod.clone();
    malformed["metadata"]["name"] = "virt-launcher-fedora02-broken".into();
    malformed["metadata"]["uid"] = "8d1f3b3d-0000-4963-8f0d-fc7115fe5123".into();
    malformed["status"]["podIP"] = "10.131.0.999".into();
    malformed["status"]["podIPs"] = serde_json::json!([{"ip": "10.131.0.999"}]);
    s.api.apply(PODS, malformed);

    // The pod appears: its IP and its host-side veth are the VM's.
    s.api.apply(PODS, pod);
    s.until("the pod's address and interface", |d| {
        let f = d.flows();
        f.iter().any(|f| f.local == "10.131.0.169") && f.iter().any(|f| f.local == "tap vmbwpod0")
    })
    .await
    .expect("registered");
    let slot = {
        let d = s.discovery.lock().expect("lock");
        let vms = d.vms();
        assert_eq!(vms.len(), 1, "only the pod of this node: {vms:?}");
        assert_eq!(vms[0].name, "default/fedora02", "named after its VMI");
        vms[0].slot.expect("slot")
    };
    assert_eq!(run(slot, &from_pod, 0), 1, "by its address");
    assert_eq!(run(slot, &natted, veth), 1, "by the device it came from");
    assert_eq!(
        run(slot, &natted, 0),
        0,
        "the node's own traffic is not the VM's"
    );
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("skipping a malformed KubeVirt object")
                && l.contains("default/virt-launcher-fedora02-broken")
                && l.contains("status.podIPs[].ip")),
        "{text}"
    );

    // It goes away: nothing of it is left in the datapath.
    s.api
        .delete(PODS, "default", "virt-launcher-fedora02-jk74x");
    s.until("the pod's registrations removed", |d| {
        d.flows().is_empty() && d.vms().is_empty()
    })
    .await
    .expect("removed");
    assert_eq!(run(slot, &from_pod, 0), 0);
    assert_eq!(run(slot, &natted, veth), 0);
    let requests = s.api.requests();
    assert!(
        requests.iter().any(|r| r.starts_with(PODS)
            && decode(r).contains(&format!("fieldSelector=spec.nodeName={LAUNCHER_NODE}"))),
        "{requests:?}"
    );
    drop(ns);
}

/// `/readyz` waits on this: discovery says it is synced only once all four
/// watches have read their first lists and that picture is applied, so a
/// VM already running on the node is registered by then.
#[tokio::test]
async fn synced_means_the_first_lists_are_applied() {
    require!(privileged());
    let s = setup("node02", &["vmi-running-node02.json"])
        .await
        .expect("setup");
    assert!(
        wait_synced(&s, Duration::from_secs(20)).await,
        "never synced: {:?}",
        s.api.requests()
    );
    let d = s.discovery.lock().expect("discovery");
    assert!(d.synced());
    assert!(
        d.vms()
            .iter()
            .any(|v| v.name == "default/testvmi" && v.slot.is_some()),
        "synced before the running VMI was registered: {:?}",
        d.vms()
    );
}

/// A VMI with a `[[vm]]` entry of its `namespace/name` is registered into
/// that entry's slot (outside discovery's range), so the control loop that
/// follows the entry's QEMU shapes the flows discovery learns; others get
/// slots from the range.
#[tokio::test]
async fn a_vmi_named_by_a_vm_entry_uses_that_entry_s_slot() {
    require!(privileged());
    let pinned = [("default/testvmi".to_owned(), 900)].into_iter().collect();
    let s = setup_with(
        "node02",
        &["vmi-running-node02.json"],
        Discovery::new("node02", 1..=64).with_pinned(pinned),
    )
    .await
    .expect("setup");
    s.until("the VM's addresses", |d| {
        d.flows().iter().any(|f| f.local == "192.168.2.107")
    })
    .await
    .expect("addresses");
    assert_eq!(s.slot().expect("slot"), 900);
    assert_eq!(
        s.run(900, Direction::Egress, &app_frame())
            .expect("run")
            .application
            .egress
            .packets,
        1,
        "the VM's traffic is counted in the pinned slot"
    );
}

async fn wait_synced(s: &Setup, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if s.synced.load(std::sync::atomic::Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The deployed ClusterRole is what discovery needs, and all of it: with
/// `watch` on pods removed, the API server answers 403 and discovery never
/// syncs (so `/readyz` would keep the agent out of service).
#[tokio::test]
async fn the_deployed_cluster_role_is_needed_verb_for_verb() {
    require!(privileged());
    let s = setup("node02", &["vmi-running-node02.json"])
        .await
        .expect("setup");
    assert!(
        wait_synced(&s, Duration::from_secs(20)).await,
        "{:?}",
        s.api.requests()
    );
    let role = cluster_role();
    let pods_rule = "resources: [\"pods\"]\n    verbs: [\"get\", \"list\", \"watch\"]";
    assert!(role.contains(pods_rule), "the rule this test trims: {role}");
    let trimmed = role.replace(
        pods_rule,
        "resources: [\"pods\"]\n    verbs: [\"get\", \"list\"]",
    );
    let s = setup_as(
        "node02",
        &["vmi-running-node02.json"],
        Discovery::new("node02", 1..=64),
        &trimmed,
    )
    .await
    .expect("setup");
    // The pods' list is allowed, their watch is not: discovery may call
    // itself synced for a moment, then the watch's 403 takes it out, and
    // it stays out while the watch keeps failing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..20 {
        assert!(
            !s.synced.load(std::sync::atomic::Ordering::SeqCst),
            "ready although the pods cannot be watched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.api
            .requests()
            .iter()
            .any(|r| r.starts_with(PODS) && r.contains("watch=true")),
        "{:?}",
        s.api.requests()
    );
}

/// After etcd compacts past the watcher's resourceVersion, its re-watch
/// gets 410 Expired; the watcher lists again and sees what changed
/// meanwhile. Its watches ask for bookmarks, and get them.
#[tokio::test]
async fn expired_watches_make_discovery_relist() {
    require!(privileged());
    let (logs, _guard) = Captured::start();
    let s = setup("node02", &["vmi-running-node02.json"])
        .await
        .expect("setup");
    assert!(wait_synced(&s, Duration::from_secs(20)).await);
    let lists = |s: &Setup| {
        s.api
            .requests()
            .iter()
            .filter(|r| r.starts_with(VMIS) && !r.contains("watch=true"))
            .count()
    };
    let before = lists(&s);
    s.api.expire_watches();
    s.api.apply(
        VMIS,
        obj("vmi-migrating-node02-to-node01.json").expect("fixture"),
    );
    s.api
        .apply(VMIMS, obj("vmim-running.json").expect("fixture"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while lists(&s) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new list after 410: {:?}\n{}",
            s.api.requests(),
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.until("the migration seen after the relist", |d| {
        d.vms()
            .iter()
            .any(|v| v.name == "default/testvmi" && v.role == Some(MigrationRole::Source))
    })
    .await
    .expect("seen");
    // A 410 is routine: discovery stays ready through it.
    assert!(
        wait_synced(&s, Duration::from_secs(5)).await,
        "{}",
        logs.text()
    );
    assert!(!logs.text().contains("not ready"), "{}", logs.text());
    assert!(
        s.api
            .requests()
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{:?}",
        s.api.requests()
    );
}

/// What a real API server refuses or rewrites, the stand-in does too.
#[tokio::test]
async fn the_stand_in_is_as_strict_as_a_real_api_server() {
    let api = FakeApi::start().await.expect("server");
    api.collection(VMIS, "VirtualMachineInstanceList");
    api.enforce_cluster_role(&cluster_role()).expect("role");
    let get = |path: &str| {
        let url = format!("{}{path}", api.url());
        async move {
            let (host, rest) = url
                .trim_start_matches("http://")
                .split_once('/')
                .expect("url");
            let mut conn = tokio::net::TcpStream::connect(host).await.expect("connect");
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            conn.write_all(
                format!("GET /{rest} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("send");
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.expect("read");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    // Field selectors on a KubeVirt resource: only metadata.name/namespace.
    let r = get(&format!("{VMIS}?fieldSelector=status.nodeName%3Dnode02")).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(
        r.contains("field label not supported: status.nodeName"),
        "{r}"
    );
    let r = get(&format!("{VMIS}?fieldSelector=metadata.name%3Dtestvmi")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Outside the ClusterRole: nodes (no code reads them), secrets.
    for path in ["/api/v1/nodes", "/api/v1/namespaces/default/secrets"] {
        let r = get(path).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{path}: {r}");
    }
}
