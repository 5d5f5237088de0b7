//! Two agents on one host: the second refuses to start and names the
//! first, which keeps running with its datapath and HTB tree untouched.

use std::path::PathBuf;

use vmbw_tests::{
    agent::{self, Agent, TestHost},
    privileged, require,
};

/// Both agents share the pins and the state directory: one host.
fn config(t: &TestHost, api: &str) -> (PathBuf, PathBuf) {
    let (path, api) = (
        t.dir.join(format!("{api}.toml")),
        t.dir.join(format!("{api}.sock")),
    );
    agent::write_minimal_config(
        &path,
        &t.bpffs.path().join("vmbw"),
        &t.dir.join("state"),
        &api,
    );
    (path, api)
}

#[test]
fn a_second_agent_refuses_and_names_the_first() {
    require!(privileged());
    require!(agent::binary());
    let t = TestHost::new("lock", 21).expect("test host");
    let (cfg1, api1) = config(&t, "first");
    let (cfg2, api2) = config(&t, "second");
    let first = Agent::start(&t.host, &cfg1, &api1, &t.dir.join("first.log"))
        .expect("the first agent starts");
    let pid = first.pid().expect("pid");

    let e = match Agent::start(&t.host, &cfg2, &api2, &t.dir.join("second.log")) {
        Ok(_) => panic!("a second agent started beside the first"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains(&format!(
            "another vmbw agent (pid {pid}) runs with this state directory"
        )),
        "{e}"
    );
    // The first one is untouched: still ready, its tree still there.
    assert_eq!(first.get("/readyz").expect("readyz").0, 200);
    let qdiscs = t.root_qdisc();
    assert!(qdiscs.contains("qdisc htb 7662: root"), "{qdiscs}");
    drop(first);
}
