//! The read-only CLI commands' `--json` output, for scripts: `vmbw
//! shaping` on a live agent's tree and `vmbw watch` on an interface.

use vmbw_tests::{
    agent::{self, Agent, TestHost},
    privileged, require,
};

fn vmbw_in(t: &TestHost, args: &[&str]) -> String {
    let bin = agent::binary().expect("binary");
    let bin = bin.to_str().expect("path");
    let mut all = vec![bin];
    all.extend_from_slice(args);
    t.host.exec(all[0], &all[1..]).expect("vmbw runs")
}

#[test]
fn shaping_and_watch_print_json() {
    require!(privileged());
    require!(agent::binary());
    let t = TestHost::new("cli-json", 27).expect("test host");

    let out = vmbw_in(&t, &["shaping", "-i", "veth0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["shaped"], false, "{v}");

    let (config, api) = t.config("agent");
    let agent = Agent::start(&t.host, &config, &api, &t.dir.join("agent.log")).expect("agent");
    let out = vmbw_in(&t, &["shaping", "-i", "veth0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["shaped"], true, "{v}");
    let roles: Vec<&str> = v["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .filter_map(|c| c["role"].as_str())
        .collect();
    assert!(
        roles.contains(&"link") && roles.contains(&"default"),
        "{roles:?}"
    );
    let link = v["classes"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["role"] == "link"))
        .expect("link class");
    // The minimal config's uplink: 100 Mbit/s.
    assert_eq!(link["rate_bits_per_sec"], 100_000_000, "{link}");
    drop(agent);

    let out = vmbw_in(
        &t,
        &[
            "watch",
            "-i",
            "veth0",
            "--json",
            "--count",
            "2",
            "--interval",
            "0.2",
        ],
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for l in &lines {
        assert!(l["egress_bytes_per_sec"].is_number(), "{l}");
        assert!(l["ingress_packets_per_sec"].is_number(), "{l}");
    }
}
