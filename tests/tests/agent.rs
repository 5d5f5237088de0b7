//! The real `vmbw agent` on the source host of the migration testbed while a
//! real QEMU migration runs through a rate-limited router: it follows the
//! migration, its counters agree with QEMU's, `explain` shows its decisions;
//! killed with SIGKILL mid-migration, traffic and the migration go on, and a
//! restarted agent adopts the pinned datapath and the HTB tree and resumes;
//! SIGTERM leaves the namespace as it found it.

use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use vmbw::{
    api::{Explain, MigrationPhase},
    qemu::{Qmp, QmpOptions, types::MigrationStatus},
    shaping::TrafficClass,
};
use vmbw_tests::{
    BpffsMount,
    agent::{self, Agent},
    guest::{self, Guest, Workload},
    in_netns, measure, privileged, require,
    testbed::{DST_IP, GUEST_IP, MigrationTestbed, SINK_PORT, TAP, UPLINK, wait_for_events},
};

/// A 128 MiB guest over a 50 Mbit/s bottleneck: the bulk pass takes ~20 s,
/// long enough to kill and restart the agent in the middle.
const LINK_MBIT: f64 = 50.0;
const GUEST_MB: u32 = 128;

fn tcx_programs(tb: &MigrationTestbed) -> (usize, usize) {
    in_netns(&tb.src, || {
        let n = |t| {
            SchedClassifier::query_tcx(UPLINK, t)
                .map(|r| r.1.len())
                .unwrap_or(0)
        };
        (n(TcAttachType::Egress), n(TcAttachType::Ingress))
    })
}

fn root_qdisc(tb: &MigrationTestbed) -> String {
    tb.src
        .exec("tc", &["qdisc", "show", "dev", UPLINK, "root"])
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn agent_follows_a_migration_survives_sigkill_and_restores_on_sigterm() {
    require!(privileged());
    require!(guest::available());
    require!(agent::binary());
    let guest = Guest::build().expect("test guest");
    let tb = MigrationTestbed::new(LINK_MBIT).expect("testbed");
    let sink = tb.start_sink().expect("sink");
    // The application: a 10 Mbit/s TCP stream to the sink, while a second
    // thread dirties 24 MiB at 2 MiB/s.
    let workload = Workload::new("net")
        .with("sink", format!("{DST_IP}:{SINK_PORT}"))
        .with("proto", "tcp")
        .with("rate-mbit", 10)
        .with("dirty-mbps", 2)
        .with("wss-mb", 24)
        .with("report-secs", 1);
    let (src, _dst) = tb
        .boot(&guest, &workload, GUEST_MB, Duration::from_secs(180))
        .expect("guest ready");
    let original_root = root_qdisc(&tb);

    let bpffs = BpffsMount::new().expect("bpffs");
    let run = tb.run.path();
    let config = run.join("vmbw.toml");
    let api = run.join("api.sock");
    // HTB just under the router's rate, so the queue forms where vmbw
    // controls it.
    std::fs::write(
        &config,
        format!(
            "[agent]\npolicy = \"nrac+adamig\"\n\
             [[uplink]]\niface = \"{UPLINK}\"\nlink_mbit = {}\n\
             [datapath]\npin_dir = \"{}\"\n\
             [shaping]\nstate_dir = \"{}\"\n\
             [api]\nlisten = \"unix:{}\"\n\
             [[vm]]\nname = \"vm1\"\nqmp = \"{}\"\nips = [\"{GUEST_IP}\"]\ntaps = [\"{TAP}\"]\n",
            LINK_MBIT * 0.95,
            bpffs.path().join("vmbw").display(),
            run.join("state").display(),
            api.display(),
            src.qmp.display(),
        ),
    )
    .expect("config");
    let mut agent =
        Agent::start(&tb.src, &config, &api, &run.join("agent1.log")).expect("agent starts");
    assert_eq!(root_qdisc(&tb), "htb", "the agent installed its HTB root");
    assert_eq!(tcx_programs(&tb), (1, 1));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut ctl = rt
        .block_on(Qmp::connect(&src.qmp_ctl, QmpOptions::default()))
        .expect("control QMP");
    // Migrate once the agent has switched QEMU's events on (it is following).
    if let Err(e) = rt.block_on(wait_for_events(&mut ctl)) {
        panic!(
            "{e:#}: the agent did not follow the VM:\n{}",
            agent.log_text()
        );
    }
    let cpu_before = agent.usage().map(|u| (u, Instant::now()));
    let retrans_before = measure::retransmitted_segments(&tb.src);
    // Enqueue drops of the migration's class: the datapath counted those
    // packets at TCX (before the qdisc), and TCP sends them again as new
    // data, not as retransmissions. Sampled from the start, so drops
    // under the first agent and just before the classes go count too.
    let drop_watch = measure::DropWatch::start(&tb.src, UPLINK);
    rt.block_on(ctl.migrate(&tb.migration_uri()))
        .expect("migrate");
    let migration_started = Instant::now();

    // The agent sees the migration and decides about it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_rate = false;
    while Instant::now() < deadline && !seen_rate {
        seen_rate = agent.vms().iter().any(|v| {
            v.migration
                .as_ref()
                .is_some_and(|m| m.phase == MigrationPhase::PreCopy)
                && v.allocation.migration_rate_bytes_per_sec.is_some()
        });
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        seen_rate,
        "no decision for the migration:\n{}",
        agent.log_text()
    );
    let flows: Vec<vmbw::api::FlowStatus> =
        serde_json::from_str(&agent.get("/api/v1/flows").expect("flows").1).expect("flows json");
    assert!(
        flows
            .iter()
            .any(|f| f.class == vmbw::api::TrafficClass::Migration && f.remote.ends_with(":4444")),
        "the migration stream was learned from QEMU's sockets: {flows:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let usage_first = agent.usage().map(|u| (u, Instant::now()));

    // SIGKILL mid-migration: nothing cleans up, traffic must keep flowing.
    let info = rt.block_on(ctl.query_migrate()).expect("query-migrate");
    assert_eq!(
        info.status,
        Some(MigrationStatus::Active),
        "still migrating when the agent dies"
    );
    let transferred_at_kill = info.ram.as_ref().map_or(0, |r| r.transferred);
    let sink_at_kill = sink.bytes();
    agent
        .signal(libc::SIGKILL, Duration::from_secs(5))
        .expect("SIGKILL");
    std::thread::sleep(Duration::from_secs(3));
    let info = rt.block_on(ctl.query_migrate()).expect("query-migrate");
    let transferred_dead = info.ram.as_ref().map_or(0, |r| r.transferred) - transferred_at_kill;
    let sink_dead = sink.bytes() - sink_at_kill;
    eprintln!(
        "while the agent was dead (3 s): migration sent {transferred_dead} B, the application {sink_dead} B"
    );
    assert!(
        transferred_dead > 1_000_000,
        "the migration stalled without the agent"
    );
    assert!(
        sink_dead > 100_000,
        "application traffic stalled without the agent:\n{}\nthe guest's console:\n{}",
        agent.log_text(),
        src.console_tail(12)
    );
    assert_eq!(tcx_programs(&tb), (1, 1), "pinned programs stay attached");
    assert_eq!(root_qdisc(&tb), "htb", "the HTB tree stays");

    // A new agent adopts what is there and resumes control.
    let agent2 =
        Agent::start(&tb.src, &config, &api, &run.join("agent2.log")).expect("agent restarts");
    let mut agent = agent2;
    let cpu_adopted = agent.usage().map(|u| (u, Instant::now()));
    assert_eq!(tcx_programs(&tb), (1, 1), "adopted, not attached twice");
    let log = agent.log_text();
    assert!(log.contains("adopted vmbw's HTB tree"), "{log}");

    // Follow the migration to its end.
    let deadline = Instant::now() + Duration::from_secs(400);
    let mut max_iteration = 0;
    let mut slot = None;
    let status = loop {
        let info = rt.block_on(ctl.query_migrate()).expect("query-migrate");
        for v in agent.vms() {
            if let Some(m) = v.migration {
                max_iteration = max_iteration.max(m.iteration);
            }
            slot = Some(v.slot);
        }
        if info.status.as_ref().is_some_and(MigrationStatus::is_final) {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "migration did not finish:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let total = migration_started.elapsed();
    if let (Some(((c0, _), t0)), Some((c1, rss))) = (cpu_adopted, agent.usage()) {
        let wall = t0.elapsed().as_secs_f64();
        eprintln!(
            "agent after adoption, to the end of the migration: {:.2}% of a core ({:.3} CPU s over {wall:.1} s), RSS {:.1} MiB",
            100.0 * (c1 - c0) / wall,
            c1 - c0,
            rss as f64 / 1048576.0
        );
    }
    assert_eq!(
        status.status,
        Some(MigrationStatus::Completed),
        "the migration completed"
    );
    let transferred = status.ram.as_ref().map_or(0, |r| r.transferred) as f64;
    std::thread::sleep(Duration::from_secs(1)); // one more tick for the counters

    // The kernel's migration-class payload (pinned across the restart)
    // matches QEMU's within 2%: the stream's first moments before the agent
    // learned it from QEMU's sockets (<= 0.5 s) count as "other". Segments
    // TCP sent again are real bytes on the wire that QEMU counts once
    // (seen once: +3.4% on a loaded machine): the source namespace's own
    // TCP is only QEMU's migration stream (the guest's traffic is
    // forwarded), so its retransmitted segments x a full frame are allowed
    // on top. So are packets the migration class's queue refused: the
    // datapath counts at TCX egress, before the qdisc, and TCP offers a
    // refused packet again as new data (seen: x1.0565 and x1.0224 against
    // the 2% bound with few retransmissions; the root qdisc had counted
    // 53-148 drops in passing runs).
    let counted = agent
        .metric("vmbw_vm_bytes_total{class=\"migration\",direction=\"egress\",vm=\"vm1\"}")
        .expect("metrics")
        .expect("migration counter");
    // The datapath counts frames, headers included: 66 bytes (Ethernet,
    // IPv4, TCP with timestamps) per packet it saw, a GSO super-packet
    // being one packet. How many segments ride in one depends on TCP's
    // pacing rate (TSO autosizing): at 30 Mbit/s behind a 50 ms queue they
    // are small, and headers were 4-6% of the bytes (seen: x1.034, x1.063
    // against the payload). So the payload counted is compared.
    let packets = agent
        .metric("vmbw_vm_packets_total{class=\"migration\",direction=\"egress\",vm=\"vm1\"}")
        .expect("metrics")
        .expect("migration packet counter");
    let payload = counted - packets * 66.0;
    let retrans = measure::retransmitted_segments(&tb.src).saturating_sub(retrans_before);
    let dropped = drop_watch.stop();
    eprintln!("drops per class on {UPLINK}: {dropped:?}");
    let class = slot.map(|s| measure::tc_class(s, TrafficClass::Migration));
    let drops: u64 = dropped
        .iter()
        .filter(|(h, _)| Some(*h) == class.as_ref())
        .map(|(_, d)| d)
        .sum();
    let allowance = measure::counted_twice_share(retrans, drops, transferred);
    let ratio = payload / transferred;
    eprintln!(
        "migration: {:.1} s, up to iteration {max_iteration}; QEMU transferred {transferred:.0} B, datapath counted {counted:.0} B in {packets:.0} packets, payload x{ratio:.4}, {retrans} segments retransmitted, {drops} packets dropped by the migration class's queue",
        total.as_secs_f64()
    );
    // Where the bytes were, for a run that misses the bound: QEMU's split
    // of what it sent, the kernel classes' own byte counts (what HTB let
    // out, after any drop) and the qdiscs' drop counters.
    if let Some(ram) = status.ram.as_ref() {
        eprintln!(
            "QEMU: precopy {:?} B, downtime {:?} B, postcopy {:?} B",
            ram.precopy_bytes, ram.downtime_bytes, ram.postcopy_bytes
        );
    }
    let classes = agent
        .get("/api/v1/classes")
        .map(|r| r.1)
        .unwrap_or_default();
    eprintln!("classes: {classes}");
    eprintln!(
        "{}",
        tb.src
            .exec("tc", &["-s", "qdisc", "show", "dev", UPLINK])
            .unwrap_or_default()
    );
    assert!(
        ratio > 0.98 && ratio < 1.02 + allowance,
        "payload counted/transferred = {ratio}, retransmitted {retrans} segments (+{allowance:.4})"
    );
    let app = agent
        .metric("vmbw_vm_bytes_total{class=\"application\",direction=\"egress\",vm=\"vm1\"}")
        .expect("metrics")
        .unwrap_or(0.0);
    assert!(
        app > 1_000_000.0,
        "the guest's stream was counted as its application traffic: {app}"
    );

    let explain: Explain = serde_json::from_str(
        &agent
            .get(&vmbw::api::explain_path("vm1"))
            .expect("explain")
            .1,
    )
    .expect("explain json");
    assert!(!explain.decisions.is_empty(), "explain has decisions");
    assert!(
        explain
            .decisions
            .iter()
            .any(|d| d.reasons.iter().any(|r| r.contains("D_e"))),
        "decisions carry NRAC's reasons: {explain:?}"
    );
    if let (Some(((c0, _), t0)), Some(((c1, rss), t1))) = (cpu_before, usage_first) {
        let wall = t1.duration_since(t0).as_secs_f64();
        eprintln!(
            "agent while controlling the migration: {:.2}% of a core ({:.3} CPU s over {wall:.1} s), RSS {:.1} MiB",
            100.0 * (c1 - c0) / wall,
            c1 - c0,
            rss as f64 / 1048576.0
        );
    }
    // Sample-to-kernel latency, from the histogram's buckets.
    let (_, metrics) = agent.get("/metrics").expect("metrics");
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("vmbw_sample_to_enforce_seconds_bucket{le=\""))
        .filter_map(|r| {
            let (le, n) = r.split_once("\"} ")?;
            Some((le.parse().unwrap_or(f64::INFINITY), n.parse().ok()?))
        })
        .collect();
    let count = buckets.last().map_or(0.0, |b| b.1);
    assert!(count >= 1.0, "sample-to-enforce latency measured");
    let p99 = buckets
        .iter()
        .find(|b| b.1 >= 0.99 * count)
        .map_or(f64::INFINITY, |b| b.0);
    eprintln!(
        "sample -> class rates in the kernel: {count} samples (second agent), p99 <= {:.0} ms",
        p99 * 1000.0
    );

    // SIGTERM: everything back as it was.
    assert_eq!(
        agent
            .signal(libc::SIGTERM, Duration::from_secs(15))
            .expect("SIGTERM"),
        Some(0)
    );
    assert_eq!(
        root_qdisc(&tb),
        original_root,
        "the original root qdisc is back"
    );
    assert_eq!(tcx_programs(&tb), (0, 0), "programs detached");
    assert!(!bpffs.path().join("vmbw").exists(), "pins removed");
}
