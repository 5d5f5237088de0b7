//! The KubeVirt watcher end to end: recorded KubeVirt objects served by the
//! stand-in API server, the real kube-rs watcher, and a real (ephemeral)
//! datapath whose classifier is run on frames (BPF_PROG_TEST_RUN) to see
//! what the learned registrations do.
//!
//! Scenario (fixtures in tests/fixtures/kubevirt/, see SOURCES.md): VMI
//! `default/testvmi` runs on node02 and migrates to node01 through
//! virt-handler's proxy ports 39445 (libvirt), 43345 (memory) and 44222
//! (block) on 10.128.0.46.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::Value;
use vmbw::{
    api::{FlowMatch, MigrationPhase, MigrationRole},
    datapath::{Datapath, PinDir, SkbIn, VmCounters},
    kubevirt::{self, Discovery},
};
use vmbw_common::{Direction, NO_VM};
use vmbw_tests::{
    frames::*,
    kubeapi::{FakeApi, fixture},
    logs::Captured,
    privileged, require,
};

const VMIS: &str = "/apis/kubevirt.io/v1/virtualmachineinstances";
const VMIMS: &str = "/apis/kubevirt.io/v1/virtualmachineinstancemigrations";

const SOURCE_HOST: [u8; 4] = [10, 128, 0, 45];
const TARGET_HOST: [u8; 4] = [10, 128, 0, 46];
const VM_IP: [u8; 4] = [192, 168, 2, 107];
const PEER: [u8; 4] = [192, 168, 2, 1];
const PORTS: [u16; 3] = [39445, 43345, 44222];

struct Setup {
    api: FakeApi,
    dp: Arc<Mutex<Datapath>>,
    discovery: Arc<Mutex<Discovery>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn setup(node: &str, initial: &[&str]) -> anyhow::Result<Setup> {
    let api = FakeApi::start().await?;
    api.collection(VMIS, "VirtualMachineInstanceList");
    api.collection(VMIMS, "VirtualMachineInstanceMigrationList");
    for f in initial {
        api.apply(VMIS, fixture(f)?);
    }
    let dp = Arc::new(Mutex::new(
        Datapath::load(&PinDir::Ephemeral).context("load datapath")?,
    ));
    let discovery = Arc::new(Mutex::new(Discovery::new(node, 1..=64)));
    let task = {
        let client = api.client()?;
        let (d, dp) = (discovery.clone(), dp.clone());
        tokio::spawn(async move {
            if let Err(e) = kubevirt::run(client, d, dp).await {
                tracing::error!(error = %e, "discovery ended");
            }
        })
    };
    Ok(Setup {
        api,
        dp,
        discovery,
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
    let s = setup(
        "node02",
        &["vmi-running-node02.json", "vmi-apitesting-roundtrip.json"],
    )
    .await
    .expect("setup");
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

    // The watcher listed and then watched both kinds, cluster-wide.
    let requests = s.api.requests();
    for path in [VMIS, VMIMS] {
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with(&format!("{path}?")) && r.contains("watch=true")),
            "{path} watched: {requests:?}"
        );
    }
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
