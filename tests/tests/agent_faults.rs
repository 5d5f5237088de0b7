//! Faults around a running agent, each checked for fail-open (traffic
//! keeps flowing meanwhile) and recovery: vmbw's HTB root deleted,
//! replaced by someone else's qdisc, and the uplink going down and up.

use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, tc::TcAttachType};
use vmbw_tests::{
    NetNs,
    agent::{self, Agent, TestHost},
    in_netns, privileged, require,
};

/// An agent on a test host; the agent (declared first) stops before the
/// host's namespaces and scratch directory go.
struct Host {
    agent: Agent,
    t: TestHost,
}

impl Host {
    fn start(name: &str, subnet: u8) -> Host {
        let t = TestHost::new(name, subnet).expect("test host");
        let (config, api) = t.config("agent");
        let agent = Agent::start(&t.host, &config, &api, &t.dir.join("agent.log")).expect("agent");
        Host { agent, t }
    }

    fn agent(&self) -> &Agent {
        &self.agent
    }

    fn root(&self) -> String {
        self.t.root_qdisc()
    }

    fn vmbw_root(&self) -> bool {
        self.root().contains("qdisc htb 7662: root")
    }

    fn reaches_peer(&self) -> bool {
        self.t.reaches_peer()
    }

    /// Waits up to `limit` for vmbw's root to be back.
    fn wait_for_vmbw_root(&self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.vmbw_root() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn restored_count(&self) -> f64 {
        self.agent()
            .metric("vmbw_errors_total{subsystem=\"shaping-root-restored\"}")
            .ok()
            .flatten()
            .unwrap_or(0.0)
    }
}

fn tcx_programs(ns: &NetNs) -> (usize, usize) {
    in_netns(ns, || {
        let n = |t| {
            SchedClassifier::query_tcx("veth0", t)
                .map(|r| r.1.len())
                .unwrap_or(0)
        };
        (n(TcAttachType::Egress), n(TcAttachType::Ingress))
    })
}

/// The agent re-checks an unchanged tree every 5 s; 15 s leaves room for a
/// loaded machine without hiding a missing recovery.
const RECOVERY: Duration = Duration::from_secs(15);

#[test]
fn a_deleted_or_replaced_root_is_put_back_and_traffic_flows_meanwhile() {
    require!(privileged());
    require!(agent::binary());
    let h = Host::start("faults-root", 23);
    assert!(h.vmbw_root(), "{}", h.root());

    h.t.host
        .exec("tc", &["qdisc", "del", "dev", "veth0", "root"])
        .expect("delete the root");
    assert!(h.reaches_peer(), "traffic stops without vmbw's root");
    let took = h.wait_for_vmbw_root(RECOVERY);
    assert!(
        took.is_some(),
        "vmbw's root not back after {RECOVERY:?}: {}\n{}",
        h.root(),
        h.agent().log_text()
    );
    assert_eq!(h.restored_count(), 1.0);

    h.t.host
        .exec(
            "tc",
            &[
                "qdisc", "replace", "dev", "veth0", "root", "handle", "5:", "tbf", "rate",
                "10mbit", "burst", "16kb", "latency", "50ms",
            ],
        )
        .expect("replace the root");
    assert!(h.reaches_peer(), "traffic stops under someone else's root");
    assert!(
        h.wait_for_vmbw_root(RECOVERY).is_some(),
        "vmbw's root not back after a replacement: {}\n{}",
        h.root(),
        h.agent().log_text()
    );
    assert_eq!(h.restored_count(), 2.0);
    assert!(
        h.agent().log_text().contains("found=tbf 5:"),
        "the log names what was found:\n{}",
        h.agent().log_text()
    );
    assert_eq!(h.agent().get("/readyz").expect("readyz").0, 200);
}

#[test]
fn the_uplink_going_down_and_up_keeps_the_datapath_and_the_tree() {
    require!(privileged());
    require!(agent::binary());
    let h = Host::start("faults-link", 25);
    let programs = tcx_programs(&h.t.host);
    assert_eq!(programs, (1, 1), "one program each way");
    h.t.host
        .ip(&["link", "set", "veth0", "down"])
        .expect("link down");
    std::thread::sleep(Duration::from_secs(2));
    h.t.host
        .ip(&["link", "set", "veth0", "up"])
        .expect("link up");
    // The peer's end needs its carrier back too: up is not instant.
    let started = Instant::now();
    while !h.reaches_peer() {
        assert!(
            started.elapsed() < RECOVERY,
            "the peer is unreachable after the link came back: {}\n{}\n{}",
            h.t.host.ip(&["addr"]).unwrap_or_default(),
            h.t.host.ip(&["route"]).unwrap_or_default(),
            h.agent().log_text()
        );
    }
    assert_eq!(tcx_programs(&h.t.host), programs, "programs still attached");
    assert!(h.vmbw_root(), "{}", h.root());
    assert_eq!(h.restored_count(), 0.0, "nothing had to be restored");
    let (status, _) = h.agent().get("/readyz").expect("readyz");
    assert_eq!(status, 200);
    let log = h.agent().log_text();
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn without_a_bpffs_the_agent_refuses_and_touches_nothing() {
    require!(privileged());
    require!(agent::binary());
    let t = TestHost::new("faults-nobpffs", 24).expect("test host");
    let (config, api) = (t.dir.join("vmbw.toml"), t.dir.join("api.sock"));
    // A pin directory on the temp file system, not on a bpffs.
    agent::write_minimal_config(&config, &t.dir.join("pins"), &t.dir.join("state"), &api);
    let e = match Agent::start(&t.host, &config, &api, &t.dir.join("agent.log")) {
        Ok(_) => panic!("the agent started without a bpffs"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("is not on a bpffs (mount one with `mount -t bpf bpf"),
        "{e}"
    );
    let root = t.root_qdisc();
    assert!(!root.contains("htb"), "the uplink was changed: {root}");
}

/// SIGKILL at each stage of the agent's start-up: at once, once the
/// datapath is attached, once its HTB root replaced the original, once the
/// fq probe ran, once the tree is in place. Traffic keeps flowing after
/// each kill, the next agent comes up over whatever was left (adopting or
/// installing), and on SIGTERM restores the uplink's original root.
#[test]
fn an_agent_killed_mid_setup_leaves_what_the_next_one_takes_over() {
    require!(privileged());
    require!(agent::binary());
    let t = TestHost::new("faults-kill", 26).expect("test host");
    let original = t.root_qdisc();
    assert!(original.contains("noqueue"), "{original}");
    let (config, api) = t.config("agent");
    // Each stage is the first log line that shows it. A kill lands a few
    // milliseconds after the line it waited for, so an agent may get one
    // stage further than asked and leave its root behind: the next one
    // then adopts that root instead of installing one, the same stage.
    let stages: [&[&str]; 5] = [
        &[],
        &["datapath attached"],
        &["vmbw HTB root installed", "adopted vmbw's HTB tree"],
        &["probed for the fq qdisc"],
        &["HTB tree in place"],
    ];
    for (i, stage) in stages.into_iter().enumerate() {
        let log = t.dir.join(format!("killed-{i}.log"));
        let mut killed =
            Agent::spawn_as(&t.host, &[], &config, &api, &log).expect("spawn the agent");
        if !stage.is_empty() {
            let started = Instant::now();
            while !stage.iter().any(|line| killed.log_text().contains(line)) {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "none of {stage:?} in 20 s:\n{}",
                    killed.log_text()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        killed
            .signal(libc::SIGKILL, Duration::from_secs(5))
            .expect("killed");
        assert!(
            t.reaches_peer(),
            "traffic stops after a kill at {stage:?} (root: {})",
            t.root_qdisc()
        );
    }
    let mut next = Agent::start(&t.host, &config, &api, &t.dir.join("next.log"))
        .expect("an agent starts over what the killed ones left");
    assert!(t.root_qdisc().contains("qdisc htb 7662: root"));
    assert!(t.reaches_peer(), "traffic through vmbw's tree");
    assert_eq!(
        next.signal(libc::SIGTERM, Duration::from_secs(10))
            .expect("stops"),
        Some(0),
        "{}",
        next.log_text()
    );
    assert_eq!(t.root_qdisc(), original, "the original root is back");
}
