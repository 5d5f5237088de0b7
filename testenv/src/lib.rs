//! What `cargo xtask setup` prepares and the tests use, stated once: the
//! test guest's kernel modules and where built artefacts are cached. No
//! dependencies, so xtask builds it without the eBPF toolchain.

use std::{path::PathBuf, process::Command};

/// Guest kernel modules in load order: virtio networking (the order the
/// Debian cloud kernel needs), then the balloon driver that reports guest
/// memory statistics. Setup fetches them; the guest builder loads them.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_balloon",
];

/// Where downloaded and built artefacts live outside git:
/// `$VMBW_CACHE_DIR`, else `$XDG_CACHE_HOME/vmbw`, else `~/.cache/vmbw`;
/// None when neither of those nor `$HOME` is set.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VMBW_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("vmbw"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("vmbw"))
}

/// Every network namespace a test or the testbed makes is named
/// `vmbw-t<pid>-<n>`, after the process that owns it.
pub const NETNS_PREFIX: &str = "vmbw-t";

/// Deletes the namespaces named after a process that no longer runs (a
/// test or benchmark that was SIGKILLed never ran its guards), and kills
/// what still runs inside them. Returns the names it removed. Only names
/// with [`NETNS_PREFIX`] and a dead owner are touched.
pub fn sweep_stale_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return vec![];
    };
    let mut removed = vec![];
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // QEMU, sinks and agents left inside keep the namespace's devices.
        let _ = Command::new("ip")
            .args(["netns", "pids", &name])
            .output()
            .map(|o| {
                for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").arg(p).status();
                }
            });
        if Command::new("ip")
            .args(["netns", "del", &name])
            .status()
            .is_ok_and(|s| s.success())
        {
            removed.push(name);
        }
    }
    removed
}
