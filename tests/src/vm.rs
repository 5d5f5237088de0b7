//! QEMU processes started by a test: TCG, serial console to a file, two QMP
//! sockets (one for a monitor, one for control, since a QMP socket serves
//! one client at a time), optionally inside a test-made network namespace.
//! The process is killed (by its pid, which `ip netns exec` keeps) when the
//! value drops.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    NetNs,
    guest::{Guest, Workload},
};

/// A scratch directory for sockets and logs, removed on drop (kept when
/// `VMBW_KEEP_RUN_DIR` is set, for debugging).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmbw-run-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(RunDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var_os("VMBW_KEEP_RUN_DIR").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The guest's network: a tap that must exist in the namespace QEMU runs
/// in, and the address the guest gives itself.
#[derive(Clone, Debug)]
pub struct GuestNet {
    pub tap: String,
    pub mac: String,
    /// `ADDR/PREFIX` for the guest's eth0.
    pub ip_cidr: String,
    pub gateway: String,
}

/// How to start one QEMU.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Names the sockets and logs (`<name>.qmp`, `<name>.serial`, ...).
    pub name: String,
    pub mem_mb: u32,
    pub vcpus: u32,
    pub workload: Workload,
    pub net: Option<GuestNet>,
    /// `-incoming` URI for a migration destination.
    pub incoming: Option<String>,
    /// Boot the guest kernel with `pti=on` (see [`Vm::spawn`]).
    pub pti: bool,
}

impl VmSpec {
    pub fn new(name: &str, mem_mb: u32, workload: Workload) -> Self {
        VmSpec {
            name: name.into(),
            mem_mb,
            vcpus: 1,
            workload,
            net: None,
            incoming: None,
            pti: true,
        }
    }
}

/// A running QEMU; killed on drop.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    name: String,
    /// QMP socket for a monitor (`vmbw record`, the migration monitor).
    pub qmp: PathBuf,
    /// A second QMP socket for control commands.
    pub qmp_ctl: PathBuf,
    pub serial: PathBuf,
    log: PathBuf,
}

impl Vm {
    /// Starts QEMU (`-accel tcg`) for `guest`, inside `ns` if given.
    pub fn spawn(
        guest: &Guest,
        spec: &VmSpec,
        ns: Option<&NetNs>,
        dir: &RunDir,
    ) -> anyhow::Result<Vm> {
        let at = |suffix: &str| dir.path().join(format!("{}.{suffix}", spec.name));
        let (qmp, qmp_ctl, serial, log) = (at("qmp"), at("ctl"), at("serial"), at("log"));
        // pti=on: QEMU 7.2's TCG loses guest writes during migration (a
        // sync clears dirty bits without resetting the TLB entries that
        // skip dirty tracking; fixed upstream in QEMU 9.0 by commit
        // 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with
        // TCG memory access"). About half of our migrations crashed the
        // guest on the destination. With page-table isolation the guest
        // reloads CR3 on every kernel entry and exit, and each reload
        // flushes TCG's TLB, so stale entries live microseconds instead of
        // seconds: 0 crashes in 16 runs. On QEMU 10 the test
        // `qemu_10_keeps_the_guest_s_writes_without_pti` checks whether it
        // is still needed.
        let mut append = format!(
            "console=ttyS0 quiet panic=-1{} {}",
            if spec.pti { " pti=on" } else { " nopti" },
            spec.workload.kernel_params()
        );
        let mut args: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-machine".into(),
            "pc".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-m".into(),
            spec.mem_mb.to_string(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-kernel".into(),
            path_arg(&guest.kernel)?,
            "-initrd".into(),
            path_arg(&guest.initrd)?,
            "-serial".into(),
            format!("file:{}", path_arg(&serial)?),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path_arg(&qmp)?),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path_arg(&qmp_ctl)?),
            // Guest memory statistics for the monitor's X2.
            "-device".into(),
            "virtio-balloon-pci,id=balloon0".into(),
        ];
        if let Some(net) = &spec.net {
            append.push_str(&format!(" vmbw.ip={} vmbw.gw={}", net.ip_cidr, net.gateway));
            args.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
                "-device".into(),
                format!("virtio-net-pci,netdev=net0,mac={}", net.mac),
            ]);
        }
        if let Some(uri) = &spec.incoming {
            args.extend(["-incoming".into(), uri.clone()]);
        }
        args.extend(["-append".into(), append]);

        let mut cmd = match ns {
            // `ip netns exec` execs QEMU in place: the pid stays QEMU's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name(), "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(&args);
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting QEMU: {cmd:?}"))?;
        let mut vm = Vm {
            child,
            name: spec.name.clone(),
            qmp,
            qmp_ctl,
            serial,
            log,
        };
        vm.wait_for_file(&vm.qmp.clone(), Duration::from_secs(10))?;
        vm.wait_for_file(&vm.qmp_ctl.clone(), Duration::from_secs(10))?;
        Ok(vm)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails if QEMU has exited, with its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "QEMU {} exited ({status}); its log:\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }

    fn wait_for_file(&mut self, path: &Path, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("QEMU {} did not create {}", self.name, path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// The last `n` lines of the console, for failure messages.
    pub fn console_tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until the console shows `marker` (e.g. the workload's
    /// readiness line); fails early if QEMU exits.
    pub fn wait_for_console(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if console.contains(marker) {
                return Ok(());
            }
            // The guest's init says when the workload died (e.g. the
            // guest's OOM killer, a working set too large for its RAM):
            // no marker will come, so do not wait for the timeout.
            if let Some(line) = console
                .lines()
                .find(|l| l.contains(crate::guest::WORKLOAD_EXITED))
            {
                bail!(
                    "{}'s workload ended before `{marker}` ({}); last lines:\n{}",
                    self.name,
                    line.trim(),
                    self.console_tail(20)
                );
            }
            self.check_running()?;
            if crate::runner::interrupted() {
                bail!("interrupted while waiting for `{marker}` on {}", self.name);
            }
            if Instant::now() > deadline {
                bail!(
                    "no `{marker}` on {}'s console within {timeout:?}; last lines:\n{}",
                    self.name,
                    self.console_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Only the process this value started, by its pid.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn path_arg(p: &Path) -> anyhow::Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))?;
    // QEMU splits option values at commas.
    if s.contains(',') {
        bail!("{s} contains a comma, which QEMU options cannot take");
    }
    Ok(s.to_owned())
}
