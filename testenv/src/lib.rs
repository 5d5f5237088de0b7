//! What `cargo xtask setup` prepares and the tests use, stated once: the
//! test guest's kernel modules and where built artefacts are cached. No
//! dependencies, so xtask builds it without the eBPF toolchain.

use std::path::PathBuf;

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
