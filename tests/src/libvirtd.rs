//! Private libvirt daemons for tests: `libvirtd` in session mode, run as
//! an unprivileged user with its own runtime, config and cache
//! directories, so it touches nothing of the machine's (no system socket,
//! no `/etc/libvirt`, no `/var/lib/libvirt`) and needs no systemd. Stopped
//! by pid (SIGTERM) and its directory removed when the guard drops.

use std::{
    os::unix::{fs::chown, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// `nobody`: session libvirtd refuses nothing to its own user, and root
/// (the test) may connect to any socket.
const UID: u32 = 65534;
const GID: u32 = 65534;

static N: AtomicU32 = AtomicU32::new(0);

/// Why libvirt tests cannot run here, if they cannot.
pub fn available() -> Result<(), String> {
    crate::privileged()?;
    for bin in ["libvirtd", "qemu-system-x86_64"] {
        if which(bin).is_none() {
            return Err(format!(
                "{bin} is not installed (cargo xtask setup installs libvirt-daemon, \
                 libvirt-daemon-driver-qemu and qemu-system-x86)"
            ));
        }
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// A running private libvirtd.
pub struct Libvirtd {
    child: Child,
    dir: PathBuf,
}

impl Libvirtd {
    /// Starts a daemon whose host UUID ends in `n` (two daemons need
    /// different ones: libvirt refuses to migrate to "the same host").
    pub fn start() -> anyhow::Result<Libvirtd> {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmbw-libvirtd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["home", "run", "cfg/libvirt", "cache"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(
            dir.join("cfg/libvirt/libvirtd.conf"),
            format!(
                "host_uuid = \"7c1f0d8e-{:04x}-4a55-9b1e-{:012x}\"\n",
                n,
                std::process::id()
            ),
        )?;
        // No virtlogd: QEMU's output goes to files.
        std::fs::write(
            dir.join("cfg/libvirt/qemu.conf"),
            "stdio_handler = \"file\"\n",
        )?;
        chown_tree(&dir)?;
        let log = std::fs::File::create(dir.join("libvirtd.log"))?;
        chown(dir.join("libvirtd.log"), Some(UID), Some(GID))?;
        let child = Command::new(which("libvirtd").context("libvirtd")?)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir.join("home"))
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("XDG_CONFIG_HOME", dir.join("cfg"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .uid(UID)
            .gid(GID)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting libvirtd")?;
        let mut d = Libvirtd { child, dir };
        let sock = d.socket();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            if let Some(status) = d.child.try_wait()? {
                bail!("libvirtd exited ({status}): {}", d.log());
            }
            if Instant::now() > deadline {
                bail!("libvirtd did not create {}: {}", sock.display(), d.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt/libvirt-sock")
    }

    /// The URI clients use to reach this daemon.
    pub fn uri(&self) -> String {
        format!("qemu+unix:///session?socket={}", self.socket().display())
    }

    /// A directory the daemon's user can read (for kernels, serial logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // A session libvirtd leaves its QEMUs running when it stops: stop
        // them first, by the pids it recorded (processes it started).
        let pids = self.dir.join("run/libvirt/qemu/run");
        for e in std::fs::read_dir(&pids).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                let pid = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<libc::pid_t>().ok());
                if let Some(pid) = pid.filter(|p| *p > 1) {
                    // SAFETY: kill(2) on a QEMU our daemon started.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
            }
        }
        // SIGTERM to our own child, by pid.
        // SAFETY: kill(2) on the pid of a child we spawned and still own.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown_tree(dir: &Path) -> anyhow::Result<()> {
    chown(dir, Some(UID), Some(GID))?;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            chown_tree(&p)?;
        } else {
            chown(&p, Some(UID), Some(GID))?;
        }
    }
    Ok(())
}

/// Copies `file` into the daemon's directory, readable by its user.
pub fn give(d: &Libvirtd, file: &Path) -> anyhow::Result<PathBuf> {
    let name = file.file_name().context("file name")?;
    let to = d.dir().join(name);
    std::fs::copy(file, &to).with_context(|| format!("copying {}", file.display()))?;
    chown(&to, Some(UID), Some(GID))?;
    Ok(to)
}
