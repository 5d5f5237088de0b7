//! The test guest: Debian's cloud kernel (fetched by `cargo xtask setup`)
//! with an initramfs built here on demand: busybox-static, the virtio
//! modules, a statically linked `vmbw-workload` and an `/init` that loads
//! the modules, configures `eth0` and starts the workload, both from the
//! kernel command line.
//!
//! Everything built lives in the cache directory (`$VMBW_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/vmbw`, else `~/.cache/vmbw`), never in the source tree.
//! [`Guest::build`] is idempotent: cargo rebuilds the workload only when
//! its sources change and the initramfs is rewritten only when its bytes
//! would differ.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
};

use anyhow::{Context as _, bail};

/// Guest kernel modules in load order (shared with `cargo xtask setup`,
/// which fetches them).
pub use vmbw_testenv::GUEST_MODULES;

/// The busybox binary Debian's busybox-static installs.
pub const BUSYBOX: &str = "/bin/busybox";

/// The line the workload prints once it is set up (working set filled,
/// socket open): the moment a test may start migrating.
pub const READY_MARKER: &str = "VMBW-WORKLOAD-READY";
/// What the guest's init prints when the workload process ended.
pub const WORKLOAD_EXITED: &str = "vmbw-init: vmbw-workload exited";

/// The start of the progress line the workload prints every
/// `--report-secs`, in every mode: a guest that prints it runs.
pub const PROGRESS_MARKER: &str = "vmbw-workload: t=";

/// What the workload prints when its self-check finds a page that lost a
/// write (the same string as `CORRUPT_MARKER` in tests/workload's memory.rs).
pub const CORRUPT_MARKER: &str = "VMBW-WORKLOAD-CORRUPT";
/// In a report line of the workload whose self-check found every write of
/// the pages it read (an eighth of the working set per report).
pub const CLEAN_CHECK_MARKER: &str = "corrupt_pages=0";

/// A bootable guest: kernel and initramfs.
#[derive(Clone, Debug)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// `$VMBW_CACHE_DIR`, else `$XDG_CACHE_HOME/vmbw`, else `~/.cache/vmbw`
/// (`vmbw_testenv::cache_dir`, the rule `cargo xtask setup` shares).
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    vmbw_testenv::cache_dir().context("neither VMBW_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")
}

/// Where the kernel, modules and the built initramfs live.
pub fn guest_dir() -> anyhow::Result<PathBuf> {
    Ok(cache_dir()?.join("guest"))
}

/// Whether a test guest can be booted here; `Err(reason)` names what is
/// missing, for `require!`.
pub fn available() -> Result<(), String> {
    let dir = guest_dir().map_err(|e| format!("{e:#}"))?;
    if which("qemu-system-x86_64").is_none() {
        return Err("qemu-system-x86_64 is missing (run `cargo xtask setup`)".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Err(format!(
            "{BUSYBOX} is missing (busybox-static; run `cargo xtask setup`)"
        ));
    }
    if !dir.join("vmlinuz").is_file() {
        return Err(format!(
            "no guest kernel in {} (run `cargo xtask setup`)",
            dir.display()
        ));
    }
    for m in GUEST_MODULES {
        if !dir.join("modules").join(format!("{m}.ko")).is_file() {
            return Err(format!(
                "guest module {m}.ko is missing in {} (run `cargo xtask setup`)",
                dir.join("modules").display()
            ));
        }
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl Guest {
    /// Builds (or reuses) the guest. Safe to call from many tests at once.
    pub fn build() -> anyhow::Result<Guest> {
        // One build per process; the file steps are atomic across processes.
        static BUILT: OnceLock<Mutex<Option<Guest>>> = OnceLock::new();
        let lock = BUILT.get_or_init(|| Mutex::new(None));
        let mut built = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("an earlier guest build panicked"))?;
        if let Some(g) = built.as_ref() {
            return Ok(g.clone());
        }
        available().map_err(|e| anyhow::anyhow!(e))?;
        let dir = guest_dir()?;
        let workload = build_workload(&workload_target_dir(&dir))?;
        let image = initramfs(&dir, &workload)?;
        let initrd = dir.join("initramfs.cpio");
        write_if_changed(&initrd, &image)?;
        let g = Guest {
            kernel: dir.join("vmlinuz"),
            initrd,
        };
        *built = Some(g.clone());
        Ok(g)
    }
}

/// The workload's cargo target dir: one per source tree. Cargo keys its
/// freshness by the package's path but names the binary by the package, so
/// two trees sharing one target dir overwrite each other's binary, and the
/// tree that built first then finds its own unit "fresh" and boots the
/// other tree's workload. (That happened: a worktree at an older commit
/// left a workload without self-checks, which this tree's guests then ran.)
fn workload_target_dir(guest_dir: &Path) -> PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    workspace_root().hash(&mut h);
    guest_dir.join("build").join(format!("{:016x}", h.finish()))
}

/// The workspace root, where `cargo build -p vmbw-workload` runs.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Builds `vmbw-workload` statically (glibc's static libc, which Debian's
/// libc6-dev ships) into `target_dir` and returns the binary's path.
fn build_workload(target_dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--quiet",
            "--package",
            "vmbw-workload",
        ])
        .args(["--target", target, "--message-format", "json"])
        .arg("--target-dir")
        .arg(target_dir)
        // Only this build: a separate target dir, so the flag does not
        // invalidate the workspace's own build cache.
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "building the guest workload failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // cargo names the executable in its `compiler-artifact` message.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = stdout
        .lines()
        .filter(|l| l.contains("\"compiler-artifact\"") && l.contains("vmbw-workload"))
        .find_map(|l| {
            let key = "\"executable\":\"";
            let start = l.find(key)? + key.len();
            let end = l[start..].find('"')?;
            Some(PathBuf::from(&l[start..start + end]))
        })
        .context("cargo did not report the vmbw-workload executable")?;
    if elf_has_interpreter(&fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?)?
    {
        bail!(
            "{} is dynamically linked; the guest has no libc (static linking failed?)",
            exe.display()
        );
    }
    Ok(exe)
}

/// Whether an ELF64 little-endian executable asks for a dynamic loader
/// (has a PT_INTERP program header).
fn elf_has_interpreter(elf: &[u8]) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not an ELF64 little-endian file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(h) = elf.get(at..at + 4) else {
            bail!("program header {i} is outside the file");
        };
        if u32::from_le_bytes(h.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The guest's `/init`. Every kernel parameter `vmbw.KEY=VALUE` except
/// `vmbw.ip` and `vmbw.gw` becomes `--KEY VALUE` for the workload.
const INIT: &str = r#"#!/bin/busybox sh
# vmbw test guest init (written by vmbw-tests' guest builder).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/vmbw-modules); do
    insmod /lib/modules/$m.ko || echo "vmbw-init: insmod $m failed"
done
ip link set lo up
addr=""; gw=""; args=""
for p in $(cat /proc/cmdline); do
    case "$p" in
        vmbw.ip=*) addr="${p#vmbw.ip=}" ;;
        vmbw.gw=*) gw="${p#vmbw.gw=}" ;;
        vmbw.*=*) kv="${p#vmbw.}"; args="$args --${kv%%=*} ${kv#*=}" ;;
    esac
done
if [ -n "$addr" ]; then
    ip addr add "$addr" dev eth0 && ip link set eth0 up || echo "vmbw-init: eth0 setup failed"
    if [ -n "$gw" ]; then ip route add default via "$gw" || echo "vmbw-init: no default route"; fi
fi
echo "vmbw-init: vmbw-workload$args"
/bin/vmbw-workload $args
echo "vmbw-init: vmbw-workload exited with status $?"
while true; do sleep 3600; done
"#;

/// The initramfs image (uncompressed cpio "newc"; the kernel takes it as
/// is, and ~5 MB are not worth compressing).
fn initramfs(dir: &Path, workload: &Path) -> anyhow::Result<Vec<u8>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
    cpio.file("bin/vmbw-workload", 0o755, &read(workload)?);
    let mut list = String::new();
    for m in GUEST_MODULES {
        let ko = dir.join("modules").join(format!("{m}.ko"));
        cpio.file(&format!("lib/modules/{m}.ko"), 0o644, &read(&ko)?);
        let _ = writeln!(list, "{m}");
    }
    cpio.file("etc/vmbw-modules", 0o644, list.as_bytes());
    Ok(cpio.finish())
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let dir = path.parent().context("initramfs path has no parent")?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".initramfs.{}.tmp", std::process::id()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// A cpio archive in the "newc" format the kernel unpacks. Fixed inode
/// numbers, owners and times keep the image byte-for-byte reproducible.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 1, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, 1, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let mut h = String::from("070701");
        for v in [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ] {
            let _ = write!(h, "{v:08x}");
        }
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }
}

/// What the guest runs: the workload's options, passed on the kernel
/// command line as `vmbw.KEY=VALUE`.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    params: Vec<(String, String)>,
}

impl Workload {
    /// A workload in `mode` (`idle`, `cpu`, `mem-seq`, `mem-rand`, `burst`,
    /// `net`); add options with [`with`](Self::with).
    pub fn new(mode: &str) -> Self {
        Workload {
            params: vec![("mode".into(), mode.into())],
        }
    }

    /// Adds `--key value` for the workload (see `vmbw-workload --help`).
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.params.push((key.into(), value.to_string()));
        self
    }

    /// One line saying what the workload does, for trace headers.
    pub fn describe(&self) -> String {
        self.params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The kernel parameters for these options.
    pub fn kernel_params(&self) -> String {
        self.params
            .iter()
            .map(|(k, v)| format!("vmbw.{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"abc");
        let out = c.finish();
        assert_eq!(&out[..6], b"070701");
        // Header (110) + "init\0" (5) padded to 116, data 3 padded to 4.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..119], b"abc");
        assert_eq!(out.len() % 4, 0);
        let trailer = &out[120..];
        assert!(trailer.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn workload_kernel_params() {
        let w = Workload::new("mem-seq")
            .with("wss-mb", 32)
            .with("dirty-mbps", 2.5);
        assert_eq!(
            w.kernel_params(),
            "vmbw.mode=mem-seq vmbw.wss-mb=32 vmbw.dirty-mbps=2.5"
        );
        assert_eq!(w.describe(), "mode=mem-seq wss-mb=32 dirty-mbps=2.5");
    }

    #[test]
    fn elf_interpreter_detection() {
        let me = fs::read("/proc/self/exe").expect("own executable");
        // Test binaries are dynamically linked here.
        assert!(elf_has_interpreter(&me).expect("elf"));
        assert!(elf_has_interpreter(b"not an elf").is_err());
    }
}
