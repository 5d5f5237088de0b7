//! deploy/systemd/vmbw.service, judged by systemd itself: `systemd-analyze
//! verify` accepts it (with ExecStart pointing at the built binary), its
//! exposure (`systemd-analyze security --offline`) stays at 4.0 or below,
//! and the capabilities it grants are the agent's and the documented
//! extras only.

use std::process::Command;

const UNIT: &str = include_str!("../../deploy/systemd/vmbw.service");

/// The unit with the binary path of this build, in a scratch directory.
fn unit_here() -> (tempdir::Dir, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("vmbw.service");
    std::fs::write(
        &path,
        UNIT.replace("/usr/bin/vmbw", env!("CARGO_BIN_EXE_vmbw")),
    )
    .expect("writing the unit");
    (dir, path)
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian's systemd package) runs")
}

#[test]
fn systemd_verifies_the_unit() {
    let (_dir, path) = unit_here();
    let out = analyze(&["verify", path.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_unit_s_exposure_stays_low() {
    let (_dir, path) = unit_here();
    let out = analyze(&[
        "security",
        "--offline=true",
        path.to_str().expect("utf-8 path"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for vmbw.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level <= 4.0, "exposure {level} (> 4.0):\n{text}");
}

#[test]
fn the_unit_grants_the_agent_s_capabilities_and_no_others() {
    let caps = |key: &str| -> Vec<&str> {
        UNIT.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} is set"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        caps("AmbientCapabilities="),
        ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
    );
    assert_eq!(
        caps("CapabilityBoundingSet="),
        [
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_NET_ADMIN",
            "CAP_DAC_OVERRIDE",
            "CAP_SYS_PTRACE"
        ]
    );
    assert!(UNIT.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(UNIT.contains("After=network-online.target libvirtd.service"));
}

/// A scratch directory removed on drop (no crate for one directory).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "vmbw-unit-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&path).expect("scratch directory");
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
