//! Least privilege, proven: the agent runs as nobody (uid 65534) with only
//! CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (what deploy/systemd/vmbw.service
//! grants), and its datapath and HTB tree come up; without CAP_NET_ADMIN it
//! refuses at start and says which capability is missing and what for.

use std::os::unix::fs::chown;

use vmbw_tests::{
    agent::{self, Agent, TestHost},
    privileged, require,
};

const NOBODY: u32 = 65534;

fn setpriv(caps: &str) -> Vec<String> {
    [
        "setpriv".to_owned(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
        format!("--inh-caps=-all,{caps}"),
        format!("--ambient-caps=-all,{caps}"),
        format!("--bounding-set=-all,{caps}"),
    ]
    .into()
}

#[test]
fn runs_as_nobody_with_three_capabilities_and_names_a_missing_one() {
    require!(privileged());
    require!(agent::binary());
    let t = TestHost::new("caps", 22).expect("test host");
    let host = &t.host;
    // nobody may write its state, socket and pins, and nothing else.
    for p in [&t.dir, &t.bpffs.path().to_path_buf()] {
        chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
    }

    let (cfg, api) = t.config("least");
    let wrapper = setpriv("+bpf,+net_admin,+perfmon");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut agent = Agent::start_as(host, &wrapper, &cfg, &api, &t.dir.join("least.log"))
        .expect("the agent comes up as nobody with three capabilities");
    let qdiscs = host
        .exec("tc", &["qdisc", "show", "dev", "veth0"])
        .expect("tc");
    assert!(qdiscs.contains("qdisc htb 7662: root"), "{qdiscs}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().expect("pid")))
        .expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("65534")),
        "{status}"
    );
    assert_eq!(
        agent
            .signal(libc::SIGTERM, std::time::Duration::from_secs(10))
            .expect("stops"),
        Some(0),
        "{}",
        agent.log_text()
    );
    let qdiscs = host
        .exec("tc", &["qdisc", "show", "dev", "veth0"])
        .expect("tc");
    assert!(!qdiscs.contains("htb"), "restored on exit: {qdiscs}");

    let (cfg, api) = t.config("short");
    let wrapper = setpriv("+bpf,+perfmon");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let e = match Agent::start_as(host, &wrapper, &cfg, &api, &t.dir.join("short.log")) {
        Ok(_) => panic!("the agent started without CAP_NET_ADMIN"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("missing CAP_NET_ADMIN (attaching the programs to the uplink"),
        "{e}"
    );
}
