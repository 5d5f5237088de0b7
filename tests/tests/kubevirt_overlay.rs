//! A KubeVirt migration as it really flows, end to end, without Kubernetes
//! (see `vmbw_tests::overlay`): QEMU migrates into a unix socket, a proxy
//! in the source "virt-handler pod" carries it over TCP from pod IP to pod
//! IP, through a VXLAN overlay, to the target's proxy and QEMU. The real
//! agent runs on the source node, attached to the underlay, and learns the
//! VM's address and virt-handler's proxy port from a VMI served by the
//! stand-in API server (the agent's deployed ClusterRole enforced), with
//! the field layout KubeVirt writes. It follows the VM's QEMU through a
//! `[[vm]]` entry named `namespace/name`, so the flows discovery learns
//! are shaped by the control loop.
//!
//! Checked: the kernel's migration bytes, inside VXLAN, agree with QEMU's
//! `transferred` within 1%; the migration class's HTB ceil and the root's
//! cap (the link) hold within 3%, and the class gets its guarantee
//! while the application keeps its reservation; KubeVirt's deadline, from the VMI's
//! `migrationConfiguration`, is known to the agent and not overrun.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmbw::{
    api::{FlowMatch, FlowStatus, TrafficClass as ApiClass},
    qemu::{Qmp, QmpOptions, types::MigrationStatus},
    shaping::TrafficClass,
};
use vmbw_tests::{
    BpffsMount,
    agent::{self, Agent},
    guest::{self, Guest, READY_MARKER, Workload},
    kubeapi::{FakeApi, fixture},
    measure::{self, percentile},
    overlay::*,
    privileged, require,
    shaped::parse_tc_classes,
    testbed::{Sink, wait_for_events},
    vm::{RunDir, Vm, VmSpec},
};

const VMIS: &str = "/apis/kubevirt.io/v1/virtualmachineinstances";
const VMIMS: &str = "/apis/kubevirt.io/v1/virtualmachineinstancemigrations";
const PODS: &str = "/api/v1/pods";
const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";
const VM: &str = "default/vm1";
/// The agent's link on the underlay, and the application's promise.
const LINK_MBIT: f64 = 50.0;
const APP_MBIT: f64 = 10.0;
const GUEST_MB: u32 = 128;
/// `completionTimeoutPerGiB` in the recorded VMI's `migrationConfiguration`.
const TIMEOUT_PER_GIB: f64 = 800.0;
/// Bytes around a migration segment's payload on the underlay: outer
/// Ethernet, IPv4, UDP and VXLAN (50), inner Ethernet, IPv4 and TCP with
/// timestamps (66). A GSO super-packet counts once.
const WIRE_OVERHEAD: f64 = 116.0;

/// VMI `default/vm1` on node A, as KubeVirt 1.x writes it (the recorded
/// fixture's layout), with the guest's address; with `migrating`, the
/// `migrationState` virt-handler publishes once the target's proxy
/// listens (and the label virt-controller sets for the target).
fn vmi(migrating: bool) -> Value {
    let mut v = fixture("vmi-migrating-node02-to-node01.json").expect("fixture");
    v["metadata"]["name"] = json!("vm1");
    v["metadata"]["labels"] = json!({"kubevirt.io/nodeName": NODE_A});
    v["status"]["nodeName"] = json!(NODE_A);
    v["status"]["interfaces"] = json!([{
        "interfaceName": "eth0",
        "ipAddress": GUEST_IP,
        "ipAddresses": [GUEST_IP],
        "mac": GUEST_MAC,
        "name": "default"
    }]);
    if migrating {
        v["metadata"]["labels"]["kubevirt.io/migrationTargetNodeName"] = json!(NODE_B);
        let state = &mut v["status"]["migrationState"];
        state["sourceNode"] = json!(NODE_A);
        state["targetNode"] = json!(NODE_B);
        state["targetNodeAddress"] = json!(HANDLER_B_IP);
        state["targetDirectMigrationNodePorts"] = json!({ PROXY_PORT.to_string(): 49152 });
        state["startTimestamp"] = json!("2026-12-01T00:00:00Z");
    } else {
        let status = v["status"].as_object_mut().expect("status");
        status.remove("migrationState");
    }
    v
}

/// KubeVirt's deadline for this guest: `completionTimeoutPerGiB` × GiB.
fn kubevirt_deadline() -> f64 {
    TIMEOUT_PER_GIB * GUEST_MB as f64 / 1024.0
}

/// Waits up to 20 s for `pred` on the agent's flow table.
fn wait_for_flows(a: &Agent, what: &str, pred: impl Fn(&[FlowStatus]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let f = a.flows();
        if pred(&f) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never appeared in the agent's flows: {f:?}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One sample of the migration's class on the uplink.
#[derive(Debug, Clone, Copy)]
struct ClassSample {
    /// Just before and just after `tc` read the counters: on a loaded
    /// machine the read itself can take a tenth of a second.
    before: Instant,
    after: Instant,
    sent: u64,
    /// The migration class's guarantee (HTB rate) and ceiling.
    rate_bps: u64,
    ceil_bps: u64,
    /// What the application's class sent.
    app_sent: u64,
}

#[test]
fn a_kubevirt_migration_through_proxy_and_vxlan_is_counted_and_capped() {
    require!(privileged());
    require!(guest::available());
    require!(agent::binary());
    let guest = Guest::build().expect("test guest");
    let tb = OverlayTestbed::new().expect("overlay testbed");
    let run = RunDir::new().expect("run dir");
    let sink = Sink::start(&tb.node_b, GATEWAY_B, SINK_PORT).expect("sink");
    let workload = Workload::new("net")
        .with("sink", tb.sink())
        .with("proto", "tcp")
        .with("rate-mbit", APP_MBIT)
        .with("dirty-mbps", 1)
        .with("wss-mb", 24)
        .with("report-secs", 1);
    let mut spec = VmSpec::new("src", GUEST_MB, workload.clone());
    spec.net = Some(tb.guest_net());
    let mut src = Vm::spawn(&guest, &spec, Some(&tb.node_a), &run).expect("source QEMU");
    let incoming = run.path().join("dst-incoming.sock");
    let mut spec = VmSpec::new("dst", GUEST_MB, workload);
    spec.net = Some(tb.guest_net());
    spec.incoming = Some(format!("unix:{}", incoming.display()));
    let _dst = Vm::spawn(&guest, &spec, Some(&tb.node_b), &run).expect("destination QEMU");
    src.wait_for_console(READY_MARKER, Duration::from_secs(180))
        .expect("guest ready");

    // The stand-in API server, on node A's loopback, strict as a real one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt
        .block_on(FakeApi::start_in(&tb.node_a))
        .expect("stand-in API server");
    let role = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/clusterrole.yaml"
    ))
    .expect("deploy/base/clusterrole.yaml");
    api.enforce_cluster_role(&role).expect("ClusterRole");
    api.collection(VMIS, "VirtualMachineInstanceList");
    api.collection(VMIMS, "VirtualMachineInstanceMigrationList");
    api.collection(PODS, "PodList");
    api.apply(VMIS, vmi(false));
    let kubeconfig = run.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");

    let bpffs = BpffsMount::new().expect("bpffs");
    let config = run.path().join("vmbw.toml");
    let api_sock = run.path().join("api.sock");
    std::fs::write(
        &config,
        format!(
            "[agent]\npolicy = \"nrac+escalate\"\n\
             [[uplink]]\niface = \"{UPLINK}\"\nlink_mbit = {LINK_MBIT}\nencapsulation = \"vxlan\"\n\
             [datapath]\npin_dir = \"{}\"\n\
             [shaping]\nstate_dir = \"{}\"\n\
             [api]\nlisten = \"unix:{}\"\n\
             [discovery]\nkubevirt = true\nnode_name = \"{NODE_A}\"\n\
             [[vm]]\nname = \"{VM}\"\nqmp = \"{}\"\nreserve_mbit = {APP_MBIT}\n",
            bpffs.path().join("vmbw").display(),
            run.path().join("state").display(),
            api_sock.display(),
            src.qmp.display(),
        ),
    )
    .expect("config");
    let env = format!("KUBECONFIG={}", kubeconfig.display());
    let agent = Agent::start_as(
        &tb.node_a,
        &["env", &env],
        &config,
        &api_sock,
        &run.path().join("agent.log"),
    )
    .expect("agent starts");
    wait_for_flows(&agent, "the guest's address from the VMI", |f| {
        f.iter().any(|f| {
            f.vm == VM && f.matches == FlowMatch::VmAddress && f.local.starts_with(GUEST_IP)
        })
    });
    let mut ctl = rt
        .block_on(Qmp::connect(&src.qmp_ctl, QmpOptions::default()))
        .expect("control QMP");
    rt.block_on(wait_for_events(&mut ctl)).unwrap_or_else(|e| {
        panic!(
            "{e:#}: the agent did not follow the VM:\n{}",
            agent.log_text()
        )
    });

    // The application alone, to know what it asks for.
    let before = sink.bytes();
    std::thread::sleep(Duration::from_secs(5));
    let alone_mbit = (sink.bytes() - before) as f64 * 8.0 / 5.0 / 1e6;

    // virt-handler publishes the target's proxy port; then QEMU migrates
    // into the source proxy.
    let source_socket = run.path().join("src-proxy.sock");
    let proxies = tb
        .start_proxies(&source_socket, &incoming)
        .expect("proxies");
    api.apply(VMIS, vmi(true));
    wait_for_flows(&agent, "the proxy port from migrationState", |f| {
        f.iter().any(|f| {
            f.vm == VM
                && f.class == ApiClass::Migration
                && f.matches == FlowMatch::RemotePorts
                && f.remote.contains(&PROXY_PORT.to_string())
        })
    });
    let retrans_before = measure::retransmitted_segments(&tb.handler_a);
    let counter = |name: &str, class: &str| {
        agent
            .metric(&format!(
                "vmbw_vm_{name}_total{{class=\"{class}\",direction=\"egress\",vm=\"{VM}\"}}"
            ))
            .expect("metrics")
            .unwrap_or(0.0)
    };
    let (bytes0, packets0) = (
        counter("bytes", "migration"),
        counter("packets", "migration"),
    );
    let drop_watch = measure::DropWatch::start(&tb.node_a, UPLINK);
    let started = Instant::now();
    rt.block_on(ctl.migrate(&format!("unix:{}", source_socket.display())))
        .expect("migrate");

    let mig_class = measure::tc_class(1, TrafficClass::Migration);
    let app_class = measure::tc_class(1, TrafficClass::Application);
    let mut samples: Vec<ClassSample> = Vec::new();
    // (seconds left, seconds since the migration started) when the agent
    // first published the deadline.
    let mut deadline_seen: Option<(f64, f64)> = None;
    // Twice KubeVirt's deadline: a run past it fails below with numbers.
    let give_up = Instant::now() + Duration::from_secs_f64(2.0 * kubevirt_deadline());
    let status = loop {
        let info = rt.block_on(ctl.query_migrate()).expect("query-migrate");
        let before = Instant::now();
        let out = tb
            .node_a
            .exec("tc", &["-s", "class", "show", "dev", UPLINK])
            .unwrap_or_default();
        let after = Instant::now();
        let classes = parse_tc_classes(&out).unwrap_or_default();
        let class = |h: &str| classes.iter().find(|c| c.handle == h);
        if let (Some(m), Some(a)) = (class(&mig_class), class(&app_class)) {
            samples.push(ClassSample {
                before,
                after,
                sent: m.sent_bytes,
                rate_bps: m.rate_bps,
                ceil_bps: m.ceil_bps,
                app_sent: a.sent_bytes,
            });
        }
        if let Some(left) = agent
            .vms()
            .iter()
            .find(|v| v.name == VM)
            .and_then(|v| v.migration.as_ref()?.deadline_left_seconds)
        {
            deadline_seen.get_or_insert((left, started.elapsed().as_secs_f64()));
        }
        if info.status.as_ref().is_some_and(MigrationStatus::is_final) {
            break info;
        }
        assert!(
            Instant::now() < give_up,
            "the migration did not finish:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let took = started.elapsed();
    let app_per_second: Vec<f64> = sink
        .per_second(started, started + took)
        .iter()
        .map(|(_, b)| *b as f64 * 8.0 / 1e6)
        .collect();
    assert_eq!(
        status.status,
        Some(MigrationStatus::Completed),
        "the migration completed:\n{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_secs(1)); // one more tick for the counters
    let transferred = status.ram.as_ref().map_or(0, |r| r.transferred) as f64;

    // 1. The kernel's count of the migration, inside VXLAN, against QEMU's.
    let counted = counter("bytes", "migration") - bytes0;
    let packets = counter("packets", "migration") - packets0;
    let payload = counted - packets * WIRE_OVERHEAD;
    let retrans = measure::retransmitted_segments(&tb.handler_a).saturating_sub(retrans_before);
    let dropped = drop_watch.stop();
    let drops = dropped.get(&mig_class).copied().unwrap_or(0);
    // Segments TCP sent again and packets the class's queue refused are
    // real bytes at TCX that QEMU counts once (see tests/tests/agent.rs).
    let allowance = measure::counted_twice_share(retrans, drops, transferred);
    let ratio = payload / transferred;
    eprintln!(
        "migration through proxy and VXLAN: {:.1} s; QEMU transferred {transferred:.0} B, \
         the proxy forwarded {} B, the datapath counted {counted:.0} B in {packets:.0} packets \
         on the underlay, payload x{ratio:.4}; {retrans} segments retransmitted; drops per \
         class {dropped:?}",
        took.as_secs_f64(),
        proxies.forwarded(),
    );
    assert!(
        (0.99..1.01 + allowance).contains(&ratio),
        "kernel payload / QEMU transferred = {ratio:.4} (allowed 0.99..{:.4})",
        1.01 + allowance
    );

    // 2. The caps hold, over 4 s windows with one allotment: the migration
    // class never sends above its ceil, and with the application's class
    // beside it the VM never exceeds the HTB root's cap (the link). A cap
    // never reached would hold trivially, so the link must also be full
    // in the windows' median: QEMU's stream is backlogged and takes all
    // the application leaves (NRAC lends the migration the whole link as
    // its ceil; the application's reservation is what limits it).
    let mut of_ceil = Vec::new();
    let mut of_rate = Vec::new();
    let mut of_link = Vec::new();
    // Each counter was read at some moment between a sample's `before`
    // and `after`, so a window lasted between `b.before - a.after` and
    // `b.after - a.before`: a cap is judged exceeded only if even the
    // longest reading of the window exceeds it; the other figures use the
    // midpoints.
    let mut link_max = 0.0f64;
    let mut ceil_max = 0.0f64;
    for w in samples.windows(5).step_by(4) {
        let (a, b) = (w[0], w[4]);
        let same = |s: &ClassSample| (s.rate_bps, s.ceil_bps) == (a.rate_bps, a.ceil_bps);
        if !w.iter().all(same) || a.ceil_bps == 0 || a.rate_bps == 0 {
            continue;
        }
        let mid = |s: &ClassSample| s.before + (s.after - s.before) / 2;
        let longest = (b.after - a.before).as_secs_f64();
        let midpoints = (mid(&b) - mid(&a)).as_secs_f64();
        let bits = |from: u64, to: u64| to.saturating_sub(from) as f64 * 8.0;
        let (migration, app) = (bits(a.sent, b.sent), bits(a.app_sent, b.app_sent));
        let link = LINK_MBIT * 1e6;
        ceil_max = ceil_max.max(migration / longest / a.ceil_bps as f64);
        link_max = link_max.max((migration + app) / longest / link);
        of_ceil.push(migration / midpoints / a.ceil_bps as f64);
        of_rate.push(migration / midpoints / a.rate_bps as f64);
        of_link.push((migration + app) / midpoints / link);
    }
    let link_median = percentile(&of_link, 50.0);
    eprintln!(
        "migration class {mig_class}: {} windows; sent/ceil max {ceil_max:.3}, median {:.3}; \
         (migration + application)/link max {link_max:.3}, median {link_median:.3}; ceils {:?} kbit/s",
        of_ceil.len(),
        percentile(&of_ceil, 50.0),
        samples
            .iter()
            .map(|s| s.ceil_bps / 1000)
            .collect::<Vec<_>>()
    );
    assert!(
        of_ceil.len() >= 4,
        "too few windows with one allotment: {samples:?}"
    );
    assert!(
        ceil_max <= 1.03,
        "the migration class exceeded its ceil: x{ceil_max:.3}"
    );
    assert!(
        link_max <= 1.03,
        "the VM's classes exceeded the link: x{link_max:.3}"
    );
    assert!(
        link_median >= 0.97,
        "the migration did not take what the application left: link used x{link_median:.3}"
    );

    // The migration class gets at least its guarantee (the link less the
    // promise on the wire, less the urgent and default classes' shares,
    // which it borrows while they are idle: seen x1.025).
    let rate_median = percentile(&of_rate, 50.0);
    eprintln!(
        "migration class: sent/guarantee median {rate_median:.3}; guarantees {:?} kbit/s",
        samples
            .iter()
            .map(|s| s.rate_bps / 1000)
            .collect::<Vec<_>>()
    );
    assert!(
        rate_median >= 0.97,
        "the migration class did not get its guarantee: median x{rate_median:.3}"
    );

    // 3. The application keeps its promise (or what it asked for, if less).
    let promised = APP_MBIT.min(alone_mbit);
    let p5 = percentile(&app_per_second, 5.0);
    let median_app = percentile(&app_per_second, 50.0);
    eprintln!(
        "application: alone {alone_mbit:.2} Mbit/s; during the migration median {median_app:.2}, p5 {p5:.2}"
    );
    assert!(
        median_app >= 0.97 * promised,
        "the application fell below its reservation: median {median_app:.2} of {promised:.2} Mbit/s"
    );

    // 4. KubeVirt's deadline, from the VMI's migrationConfiguration
    // (completionTimeoutPerGiB 800 in the recorded object): the agent
    // knew it, and its allotment finished the migration before it.
    let deadline = kubevirt_deadline();
    let (first_left, seen_at) = deadline_seen.unwrap_or_else(|| {
        panic!(
            "the agent never published the migration's deadline:\n{}",
            agent.log_text()
        )
    });
    eprintln!(
        "deadline: {deadline:.0} s from the VMI's terms; first published {seen_at:.1} s into the \
         migration with {first_left:.1} s left; the migration took {:.1} s",
        took.as_secs_f64()
    );
    // The agent's clock starts when it sees the migration start (within a
    // tick of ours) and the status is read up to a second late.
    assert!(
        (first_left + seen_at - deadline).abs() < 3.0,
        "the agent's deadline ({first_left:.1} s left at {seen_at:.1} s) is not {deadline:.0} s"
    );
    assert!(
        took.as_secs_f64() < deadline,
        "the migration overran KubeVirt's deadline"
    );
    drop(proxies);
}
