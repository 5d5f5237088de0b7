//! The kernel datapath: vmbw's tc programs on the host uplink.
//!
//! [`Datapath::load`] loads the embedded eBPF object with its maps pinned
//! under a bpffs directory ([`PinDir`]); [`Datapath::attach`] hooks both
//! programs onto an interface (TCX on kernels that have it, clsact + cls_bpf
//! otherwise). User space then fills the classification tables
//! ([`tables`]), sets the mode and per-class steering, and reads counters
//! ([`counters`]).
//!
//! With a persistent pin directory the TCX links are pinned too: if the
//! agent dies, the programs stay attached with their tables, so traffic keeps
//! being counted and steered (and always keeps flowing), and a restarted
//! agent loads with the same directory, finds the maps and links, and
//! atomically swaps in its programs. An ephemeral directory (tests, `vmbw
//! watch`) is private to this process and removed with it.

mod counters;
mod mac;
mod tables;
mod test_run;

pub use mac::{Mac, MacError};

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::MapError,
    pin::PinError,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TcError,
        links::{FdLink, LinkError, PinnedLink},
        tc,
        tc::SchedClassifierLink,
        tc::{NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};
use vmbw_common::{Direction, program};

pub use counters::{ClassCounters, DirectionCounters, VmCounters, batch_refused};
pub use tables::{Mode, PortSide, Urgency};
pub use test_run::{SkbIn, TestRunOutcome};

/// The agent's persistent pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/vmbw";

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vmbw-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{0} is not on a bpffs (mount one with `mount -t bpf bpf {0}`)")]
    NoBpffs(PathBuf),
    #[error("mounting a private bpffs on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object (maps pinned in {pin_dir}) failed")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("the eBPF object has no program `{0}` (object and agent out of step?)")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}` (object and agent out of step?)")]
    MissingMap(&'static str),
    #[error("program `{name}`: {action} failed")]
    Program {
        name: &'static str,
        action: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("adding the clsact qdisc to {iface} failed")]
    Clsact {
        iface: String,
        #[source]
        source: Box<TcError>,
    },
    #[error("attaching `{name}` to {iface} ({direction}) failed")]
    Attach {
        name: &'static str,
        iface: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinned link {path}: {action} failed")]
    Link {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Box<LinkError>,
    },
    #[error("pinning the link at {path} failed")]
    PinLink {
        path: PathBuf,
        #[source]
        source: Box<PinError>,
    },
    #[error("removing pin {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {iface}: {source}")]
    Interface {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("map `{name}`: {action} failed")]
    Map {
        name: &'static str,
        action: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("reading the number of possible CPUs (per-CPU map values)")]
    Cpus(#[source] std::io::Error),
    #[error("VM slot {0} is out of range (1..{max})", max = vmbw_common::MAX_VMS)]
    InvalidSlot(u32),
    #[error("port range {first}..={last} is empty or inverted")]
    InvalidPortRange { first: u16, last: u16 },
    #[error("test run of `{name}` failed")]
    TestRun {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
}

/// The bpffs directory the maps (and, when persistent, links) are pinned in.
#[derive(Debug, Clone)]
pub enum PinDir {
    /// Survives the process: maps and links are kept and adopted by the
    /// next `load` with the same path.
    Persistent(PathBuf),
    /// Private to this `Datapath`: a bpffs instance of its own, mounted on a
    /// temporary directory and unmounted when the `Datapath` drops (maps go
    /// away with their last user, links with this process). Touches nothing
    /// global, so tests can load many datapaths in parallel.
    Ephemeral,
}

impl Default for PinDir {
    fn default() -> Self {
        PinDir::Persistent(PathBuf::from(DEFAULT_PIN_DIR))
    }
}

/// vmbw's programs, loaded into the kernel.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    persistent: bool,
    /// The private bpffs mount of an ephemeral datapath.
    private_mount: Option<PathBuf>,
    /// Interfaces attached by this process (name, ifindex).
    attached: Vec<(String, u32)>,
    /// Pinned links held while attached (persistent mode), with their pins.
    pinned: Vec<(PathBuf, PinnedLink)>,
}

static EPHEMERAL: AtomicU32 = AtomicU32::new(0);

impl Datapath {
    /// Loads the embedded object and both classifiers (verifier included).
    /// Maps already pinned in the directory are re-used, so tables and
    /// counters survive an agent restart.
    pub fn load(pin: &PinDir) -> Result<Self, DatapathError> {
        let (pin_dir, persistent, private_mount) = match pin {
            PinDir::Persistent(p) => {
                check_bpffs(p)?;
                std::fs::create_dir_all(p).map_err(|source| DatapathError::PinDir {
                    path: p.clone(),
                    source,
                })?;
                (p.clone(), true, None)
            }
            PinDir::Ephemeral => {
                let mount = mount_private_bpffs()?;
                (mount.clone(), false, Some(mount))
            }
        };
        let loaded = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(OBJECT)
            .map_err(|e| DatapathError::Load {
                pin_dir: pin_dir.clone(),
                source: Box::new(e),
            });
        let mut ebpf = match loaded {
            Ok(ebpf) => ebpf,
            Err(e) => {
                if let Some(mount) = &private_mount {
                    unmount_private_bpffs(mount);
                }
                return Err(e);
            }
        };
        for name in [program::EGRESS, program::INGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    name,
                    action: "load",
                    source: Box::new(source),
                })?;
        }
        Ok(Self {
            ebpf,
            pin_dir,
            persistent,
            private_mount,
            attached: Vec::new(),
            pinned: Vec::new(),
        })
    }

    /// The directory the maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the egress and ingress programs to `iface` in the calling
    /// thread's network namespace. With TCX the programs are appended to the
    /// interface's chain; in persistent mode the links are pinned, and a
    /// link already pinned for this interface (a previous agent's) gets the
    /// new program swapped in atomically instead of a second attachment.
    pub fn attach(&mut self, iface: &str) -> Result<(), DatapathError> {
        self.attach_with(iface, Hook::Auto)
    }

    /// [`attach`](Self::attach) through the given hook.
    pub fn attach_with(&mut self, iface: &str, hook: Hook) -> Result<(), DatapathError> {
        let ifindex = ifindex(iface)?;
        let tcx = hook == Hook::Auto && has_tcx();
        if !tcx {
            match tc::qdisc_add_clsact(iface) {
                Ok(()) => {}
                // Only "it is already there" is fine; anything else is real.
                Err(TcError::AlreadyAttached) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(DatapathError::Clsact {
                        iface: iface.to_owned(),
                        source: Box::new(source),
                    });
                }
            }
        }
        for (name, dir, attach_type) in [
            (program::EGRESS, Direction::Egress, TcAttachType::Egress),
            (program::INGRESS, Direction::Ingress, TcAttachType::Ingress),
        ] {
            let link_pin = self.link_pin(ifindex, dir);
            let prog = classifier(&mut self.ebpf, name)?;
            let attach_err = |source| DatapathError::Attach {
                name,
                iface: iface.to_owned(),
                direction: dir.as_str(),
                source: Box::new(source),
            };
            if self.persistent && tcx {
                if let Some(old) = open_pinned_link(&link_pin)? {
                    // Adopt: swap our program into the existing link.
                    let link =
                        SchedClassifierLink::try_from(FdLink::from(old)).map_err(|source| {
                            DatapathError::Link {
                                path: link_pin.clone(),
                                action: "adopt",
                                source: Box::new(source),
                            }
                        })?;
                    let id = prog.attach_to_link(link).map_err(attach_err)?;
                    // The pin keeps the link; our fd may close.
                    let _ = prog.take_link(id).map_err(attach_err)?;
                    let reopened =
                        PinnedLink::from_pin(&link_pin).map_err(|source| DatapathError::Link {
                            path: link_pin.clone(),
                            action: "reopen",
                            source: Box::new(source),
                        })?;
                    self.pinned.push((link_pin, reopened));
                    continue;
                }
                let id = prog.attach(iface, attach_type).map_err(attach_err)?;
                let link = prog.take_link(id).map_err(attach_err)?;
                let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
                    path: link_pin.clone(),
                    action: "convert",
                    source: Box::new(source),
                })?;
                let pinned = fd_link
                    .pin(&link_pin)
                    .map_err(|source| DatapathError::PinLink {
                        path: link_pin.clone(),
                        source: Box::new(source),
                    })?;
                self.pinned.push((link_pin, pinned));
            } else if tcx {
                prog.attach(iface, attach_type).map_err(attach_err)?;
            } else {
                prog.attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(attach_err)?;
            }
        }
        self.attached.push((iface.to_owned(), ifindex));
        Ok(())
    }

    /// Interfaces this datapath attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.iter().map(|(name, _)| name.as_str())
    }

    /// Removes everything this datapath put in the kernel: detaches the
    /// programs (pinned links included) and deletes the pin directory's
    /// maps. For the agent's clean shutdown; dropping without calling this
    /// keeps a persistent datapath running for the next agent.
    pub fn remove(mut self) -> Result<(), DatapathError> {
        for (path, link) in self.pinned.drain(..) {
            // Detach first, explicitly: dropping the last reference would
            // detach too, but a bpffs pin's reference goes only when its
            // inode is freed after an RCU grace period, so the program
            // could still be on the interface when this returns.
            detach_link(&path).map_err(|source| DatapathError::Unpin {
                path: path.clone(),
                source,
            })?;
            let fd_link = link
                .unpin()
                .map_err(|source| DatapathError::Unpin { path, source })?;
            drop(fd_link);
        }
        let dir = self.pin_dir.clone();
        let persistent = self.persistent;
        drop(self);
        if !persistent {
            return Ok(()); // the private mount went with the drop
        }
        remove_pin_dir_contents(&dir)?;
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DatapathError::Unpin {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn link_pin(&self, ifindex: u32, dir: Direction) -> PathBuf {
        self.pin_dir
            .join(format!("link_{ifindex}_{}", dir.as_str()))
    }

    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Some(mount) = &self.private_mount {
            unmount_private_bpffs(mount);
        }
    }
}

/// Mounts a fresh bpffs instance on a new directory under the temp dir.
fn mount_private_bpffs() -> Result<PathBuf, DatapathError> {
    let n = EPHEMERAL.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vmbw-bpffs-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
        path: dir.clone(),
        source,
    })?;
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| DatapathError::NoBpffs(dir.clone()))?;
    // SAFETY: valid C strings; mounts a new bpffs instance on our own dir.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_dir.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let source = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(&dir);
        return Err(DatapathError::Mount { path: dir, source });
    }
    Ok(dir)
}

/// Lazily unmounts a private bpffs and removes its directory (best effort:
/// runs on drop paths).
fn unmount_private_bpffs(dir: &Path) {
    if let Ok(c_dir) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string naming a mount we made.
        if unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) } != 0 {
            tracing::warn!(dir = %dir.display(), error = %std::io::Error::last_os_error(), "unmounting private bpffs");
            return;
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Detaches the link pinned at `path` from its hook now (`BPF_LINK_DETACH`,
/// Linux 5.9), whoever else still holds a reference to it.
fn detach_link(path: &Path) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET layout of `union bpf_attr`, its
    // path a valid C string that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let link_fd: u32 = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32;
    // SAFETY: BPF_LINK_DETACH reads one u32, the link's fd, which `fd`
    // keeps open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &link_fd as *const u32,
            std::mem::size_of::<u32>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pinned link, or `None` if nothing is pinned there.
fn open_pinned_link(path: &Path) -> Result<Option<PinnedLink>, DatapathError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(link)),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(source) => Err(DatapathError::Link {
            path: path.to_owned(),
            action: "open",
            source: Box::new(source),
        }),
    }
}

fn check_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
    // The pin directory must live on a bpffs; check its closest existing
    // ancestor.
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let mut probe = pin_dir;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let c_path = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .map_err(|_| DatapathError::NoBpffs(probe.to_owned()))?;
    // SAFETY: statfs into a zeroed struct with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DatapathError::NoBpffs(probe.to_owned()));
    }
    Ok(())
}

fn remove_pin_dir_contents(dir: &Path) -> Result<(), DatapathError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DatapathError::Unpin {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        std::fs::remove_file(&path).map_err(|source| DatapathError::Unpin { path, source })?;
    }
    Ok(())
}

/// How the programs hook into an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hook {
    /// TCX where the kernel has it (6.6+), else clsact + cls_bpf.
    #[default]
    Auto,
    /// clsact + cls_bpf in direct-action mode even where TCX exists: the
    /// path of kernels before 6.6, so that it is tested on newer ones.
    ClsBpf,
}

/// TCX (kernel 6.6+) lets programs attach without a qdisc; aya picks it on
/// its own in that case.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn ifindex(iface: &str) -> Result<u32, DatapathError> {
    let c = std::ffi::CString::new(iface).map_err(|_| DatapathError::Interface {
        iface: iface.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in name"),
    })?;
    // SAFETY: a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DatapathError::Interface {
            iface: iface.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            name,
            action: "open",
            source: Box::new(source),
        })
}

fn map_err(name: &'static str, action: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name,
        action,
        source: Box::new(source),
    }
}
