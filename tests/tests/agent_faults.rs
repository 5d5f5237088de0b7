//! Faults around a running agent, each checked for fail-open (traffic
//! keeps flowing meanwhile) and recovery: vmbw's HTB root deleted,
//! replaced by someone else's qdisc, and the uplink going down and up.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, tc::TcAttachType};
use vmbw_tests::{BpffsMount, NetNs, agent, agent::Agent, in_netns, privileged, require};

struct Host {
    host: NetNs,
    peer: NetNs,
    _bpffs: BpffsMount,
    dir: PathBuf,
    agent: Option<Agent>,
}

impl Drop for Host {
    fn drop(&mut self) {
        drop(self.agent.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Host {
    fn start(name: &str) -> Host {
        let host = NetNs::new().expect("namespace");
        let peer = NetNs::new().expect("peer");
        host.veth_to(
            ("veth0", "198.18.23.1/24"),
            &peer,
            ("veth0", "198.18.23.2/24"),
        )
        .expect("veth");
        let bpffs = BpffsMount::new().expect("bpffs");
        let dir = std::env::temp_dir().join(format!("vmbw-faults-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (config, api) = (dir.join("vmbw.toml"), dir.join("api.sock"));
        agent::write_minimal_config(
            &config,
            &bpffs.path().join("vmbw"),
            &dir.join("state"),
            &api,
        );
        let agent = Agent::start(&host, &config, &api, &dir.join("agent.log")).expect("agent");
        Host {
            host,
            peer,
            _bpffs: bpffs,
            dir,
            agent: Some(agent),
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent")
    }

    fn root(&self) -> String {
        self.host
            .exec("tc", &["qdisc", "show", "dev", "veth0", "root"])
            .unwrap_or_default()
    }

    fn vmbw_root(&self) -> bool {
        self.root().contains("qdisc htb 7662: root")
    }

    /// 256 KiB cross to the peer over TCP within 5 s (fail-open: whatever
    /// the root is). There is no ping on every machine; TCP is what
    /// migrations use anyway.
    fn reaches_peer(&self) -> bool {
        const BYTES: usize = 256 * 1024;
        let Ok(listener) = in_netns(&self.peer, || TcpListener::bind("198.18.23.2:0")) else {
            return false;
        };
        let Ok(addr) = listener.local_addr() else {
            return false;
        };
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut got = Vec::new();
            s.read_to_end(&mut got).ok()?;
            Some(got.len())
        });
        let sent = in_netns(&self.host, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .and_then(|mut s| {
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&[7u8; BYTES])?;
            s.shutdown(std::net::Shutdown::Write)
        });
        if sent.is_err() {
            // Unblock the accept.
            let _ = in_netns(&self.peer, || TcpStream::connect(addr));
        }
        let received = reader.join().ok().flatten();
        sent.is_ok() && received == Some(BYTES)
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
    let h = Host::start("root");
    assert!(h.vmbw_root(), "{}", h.root());

    h.host
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

    h.host
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
    let h = Host::start("link");
    let programs = tcx_programs(&h.host);
    assert_eq!(programs, (1, 1), "one program each way");
    h.host
        .ip(&["link", "set", "veth0", "down"])
        .expect("link down");
    std::thread::sleep(Duration::from_secs(2));
    h.host.ip(&["link", "set", "veth0", "up"]).expect("link up");
    // The peer's end needs its carrier back too: up is not instant.
    let started = Instant::now();
    while !h.reaches_peer() {
        assert!(
            started.elapsed() < RECOVERY,
            "the peer is unreachable after the link came back: {}\n{}\n{}",
            h.host.ip(&["addr"]).unwrap_or_default(),
            h.host.ip(&["route"]).unwrap_or_default(),
            h.agent().log_text()
        );
    }
    assert_eq!(tcx_programs(&h.host), programs, "programs still attached");
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
    let host = NetNs::new().expect("namespace");
    let peer = NetNs::new().expect("peer");
    host.veth_to(
        ("veth0", "198.18.24.1/24"),
        &peer,
        ("veth0", "198.18.24.2/24"),
    )
    .expect("veth");
    let dir = std::env::temp_dir().join(format!("vmbw-faults-nobpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (config, api) = (dir.join("vmbw.toml"), dir.join("api.sock"));
    // A pin directory on the temp file system, not on a bpffs.
    let pins = dir.join("pins");
    agent::write_minimal_config(&config, &pins, &dir.join("state"), &api);
    let result = Agent::start(&host, &config, &api, &dir.join("agent.log"));
    let root = host
        .exec("tc", &["qdisc", "show", "dev", "veth0", "root"])
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let e = match result {
        Ok(_) => panic!("the agent started without a bpffs"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("is not on a bpffs (mount one with `mount -t bpf bpf"),
        "{e}"
    );
    assert!(!root.contains("htb"), "the uplink was changed: {root}");
}
