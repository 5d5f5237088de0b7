//! Two agents on one host: the second refuses to start and names the
//! first, which keeps running with its datapath and HTB tree untouched.

use std::path::Path;

use vmbw_tests::{BpffsMount, NetNs, agent, agent::Agent, privileged, require};

fn config(dir: &Path, bpffs: &BpffsMount, api: &Path) -> std::path::PathBuf {
    let path = dir.join(format!(
        "{}.toml",
        api.file_stem().and_then(|s| s.to_str()).unwrap_or("vmbw")
    ));
    // Both agents share the pins and the state directory: one host.
    agent::write_minimal_config(&path, &bpffs.path().join("vmbw"), &dir.join("state"), api);
    path
}

#[test]
fn a_second_agent_refuses_and_names_the_first() {
    require!(privileged());
    require!(agent::binary());
    let host = NetNs::new().expect("namespace");
    let peer = NetNs::new().expect("peer");
    host.veth_to(
        ("veth0", "198.18.21.1/24"),
        &peer,
        ("veth0", "198.18.21.2/24"),
    )
    .expect("veth");
    let bpffs = BpffsMount::new().expect("bpffs");
    let dir = std::env::temp_dir().join(format!("vmbw-lock-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (api1, api2) = (dir.join("first.sock"), dir.join("second.sock"));
    let first = Agent::start(
        &host,
        &config(&dir, &bpffs, &api1),
        &api1,
        &dir.join("first.log"),
    )
    .expect("the first agent starts");
    let pid = first.pid().expect("pid");

    let e = match Agent::start(
        &host,
        &config(&dir, &bpffs, &api2),
        &api2,
        &dir.join("second.log"),
    ) {
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
    let qdiscs = host
        .exec("tc", &["qdisc", "show", "dev", "veth0"])
        .expect("tc");
    assert!(qdiscs.contains("qdisc htb 7662: root"), "{qdiscs}");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}
