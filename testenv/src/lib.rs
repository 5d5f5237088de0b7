//! What `cargo xtask setup` prepares and the tests use, stated once: the
//! test guest's kernel modules and where built artefacts are cached. No
//! dependencies, so xtask builds it without the eBPF toolchain.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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

/// Whether `name` is `vmbw-t<pid>-...` and process `pid` no longer runs.
fn owner_is_gone(name: &str) -> bool {
    name.strip_prefix(NETNS_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Unmounts and removes the private bpffs directories
/// (`<tmp>/vmbw-t<pid>-<n>-bpffs`) of processes that no longer run: a
/// testbed stopped by a signal can leave one mounted. Returns the paths it
/// removed; live owners' and other names are left alone.
pub fn sweep_stale_bpffs() -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return vec![];
    };
    let mut removed = vec![];
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.strip_suffix("-bpffs").is_some_and(owner_is_gone) {
            continue;
        }
        let path = e.path();
        // Not mounted (any more) is fine: umount then fails, rmdir works.
        let _ = Command::new("umount").arg(&path).status();
        if std::fs::remove_dir(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

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
        if !owner_is_gone(&name) {
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

/// What benchmark and reproduction runs write into the checkout: reports
/// under `docs/` and README's results table.
pub const RESULT_PATHS: &[&str] = &["docs", "README.md"];

/// Whether the git checkout at `dir` has uncommitted changes outside
/// [`RESULT_PATHS`], i.e. whether code that differs from `HEAD` could have
/// produced a result. Results stamp `<commit>+dirty` when it does; a run's
/// own reports, written by the run before it, do not count. True when git
/// cannot tell (no git, not a checkout): a stamp must not claim a clean
/// commit it cannot vouch for.
pub fn checkout_is_dirty(dir: &Path) -> bool {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":(top)",
    ]);
    for path in RESULT_PATHS {
        cmd.arg(format!(":(top,exclude){path}"));
    }
    match cmd.output() {
        Ok(out) if out.status.success() => !out.stdout.is_empty(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bpffs left mounted by a process that is gone is unmounted and
    /// removed; one of a live process (this one) is left alone. Needs root
    /// (mount); without it there is nothing to check.
    #[test]
    fn stale_bpffs_mounts_of_dead_owners_are_removed() {
        let dead = (4_000_000u32..).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
        let dead = dead.expect("a free pid");
        let stale = std::env::temp_dir().join(format!("{NETNS_PREFIX}{dead}-0-bpffs"));
        let live =
            std::env::temp_dir().join(format!("{NETNS_PREFIX}{}-90-bpffs", std::process::id()));
        for dir in [&stale, &live] {
            std::fs::create_dir_all(dir).expect("dir");
        }
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&stale)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir(&stale);
            let _ = std::fs::remove_dir(&live);
            eprintln!("not root: mounting a bpffs was refused; nothing to check");
            return;
        }
        let removed = sweep_stale_bpffs();
        let stale_gone = !stale.exists();
        let live_kept = live.exists();
        let _ = std::fs::remove_dir(&live);
        assert!(removed.contains(&stale) && stale_gone, "{removed:?}");
        assert!(live_kept && !removed.contains(&live), "{removed:?}");
    }

    /// A change to a report leaves the checkout clean; a change to code, or
    /// a directory that is no checkout, makes it dirty.
    #[test]
    fn a_checkout_is_dirty_for_code_not_for_reports() {
        let dir = std::env::temp_dir().join(format!("vmbw-testenv-git-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("docs")).expect("dir");
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "git {args:?}");
        };
        assert!(checkout_is_dirty(&dir), "not a checkout yet");
        git(&["init", "-q"]);
        for (file, text) in [("docs/r.md", "a"), ("README.md", "a"), ("code.rs", "a")] {
            std::fs::write(dir.join(file), text).expect("write");
        }
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "x"]);
        assert!(!checkout_is_dirty(&dir));
        std::fs::write(dir.join("docs/r.md"), "b").expect("write");
        std::fs::write(dir.join("README.md"), "b").expect("write");
        let reports_only = checkout_is_dirty(&dir);
        std::fs::write(dir.join("code.rs"), "b").expect("write");
        let with_code = checkout_is_dirty(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!reports_only, "report changes counted as dirty");
        assert!(with_code, "a code change went unnoticed");
    }
}
