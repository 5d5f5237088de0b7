//! The plugin must build on an operator's laptop: no eBPF toolchain, no
//! libvirt, no agent. Checked on the resolved dependency graph.

use std::process::Command;

#[test]
fn depends_on_neither_the_agent_nor_aya_nor_libvirt() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--package",
            "kubectl-vmbw",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"vmbw-api"), "{tree}");
    for heavy in [
        "vmbw",
        "vmbw-common",
        "aya",
        "aya-build",
        "virt",
        "virt-sys",
        "netlink-sys",
    ] {
        assert!(
            !crates.contains(&heavy),
            "kubectl-vmbw pulls in {heavy}:\n{tree}"
        );
    }
}

#[test]
fn the_krew_manifest_names_this_version_and_binary() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/krew/vmbw.yaml"))
        .expect("krew/vmbw.yaml");
    let m: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(m["kind"], "Plugin");
    assert_eq!(m["metadata"]["name"], "vmbw", "kubectl vmbw");
    assert_eq!(
        m["spec"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platforms = m["spec"]["platforms"].as_array().expect("platforms");
    assert!(!platforms.is_empty());
    for p in platforms {
        assert_eq!(p["bin"], "kubectl-vmbw", "{p}");
        assert!(p["selector"]["matchLabels"]["os"].is_string(), "{p}");
    }
}
