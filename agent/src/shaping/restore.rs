//! Giving the device back: what its root qdisc was before vmbw, how to put
//! it back, a state file so an agent restarted later still knows, and a
//! guard that restores it when the shaper is dropped without a cleanup
//! (an error path, a panic, a failing test).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    error::ShapingError,
    handles::{self, TC_H_ROOT, display_handle},
    messages::{self, Mode, Request, TcEntry},
    netlink::SyncSocket,
};

/// Classful qdiscs whose classes are created one by one by their users, so
/// replaying the qdisc's own options cannot bring them back.
const USER_CLASS_KINDS: [&str; 6] = ["htb", "hfsc", "drr", "qfq", "cbq", "ets"];

/// A device's root qdisc from before vmbw shaped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginalRoot {
    /// The qdisc the kernel attaches by itself (handle 0: `noqueue` on
    /// veth, `mq`/`pfifo_fast`/`fq_codel` on NICs). Deleting vmbw's root
    /// makes the kernel attach it again.
    KernelDefault { kind: String },
    /// A qdisc somebody configured: recreated from its kind, handle and the
    /// options the kernel reported for it.
    Configured {
        kind: String,
        handle: u32,
        options: Option<Vec<u8>>,
    },
}

impl OriginalRoot {
    /// Reads the original root from the device's dumps, refusing devices
    /// whose root has classes or child qdiscs (replacing the root would
    /// destroy them and vmbw could not put them back).
    pub fn capture(
        iface: &str,
        qdiscs: &[TcEntry],
        classes: &[TcEntry],
    ) -> Result<Self, ShapingError> {
        let Some(root) = qdiscs.iter().find(|q| q.parent == TC_H_ROOT) else {
            // A device without a root qdisc (not up yet): the kernel will
            // attach its default.
            return Ok(OriginalRoot::KernelDefault {
                kind: String::new(),
            });
        };
        if root.handle == 0 {
            return Ok(OriginalRoot::KernelDefault {
                kind: root.kind.clone(),
            });
        }
        let major = handles::major(root.handle);
        // Child qdiscs somebody attached are visible in the dump (the
        // default ones qdiscs make for themselves are not). Classes count
        // only for kinds whose classes are made by users: tbf, prio, mq and
        // the like have fixed classes that come back with their options.
        let user_classes = USER_CLASS_KINDS.contains(&root.kind.as_str())
            && classes.iter().any(|c| handles::major(c.handle) == major);
        let has_children = user_classes
            || qdiscs
                .iter()
                .any(|q| q.parent != TC_H_ROOT && handles::major(q.parent) == major);
        if has_children {
            return Err(ShapingError::ForeignTree {
                iface: iface.to_owned(),
                found: describe(root),
            });
        }
        Ok(OriginalRoot::Configured {
            kind: root.kind.clone(),
            handle: root.handle,
            options: root.options.clone(),
        })
    }

    /// The requests that replace vmbw's root with the original one.
    pub fn restore_requests(&self, ifindex: u32) -> Vec<Request> {
        match self {
            // Naming vmbw's handle: the kernel refuses if the root has
            // meanwhile become someone else's.
            OriginalRoot::KernelDefault { .. } => vec![messages::delete_qdisc(
                ifindex,
                handles::root_qdisc(),
                TC_H_ROOT,
                "htb",
            )],
            OriginalRoot::Configured {
                kind,
                handle,
                options,
            } => vec![messages::qdisc(
                Mode::Replace,
                ifindex,
                *handle,
                TC_H_ROOT,
                kind,
                options.clone(),
            )],
        }
    }

    pub fn describe(&self) -> String {
        match self {
            OriginalRoot::KernelDefault { kind } if kind.is_empty() => "the kernel default".into(),
            OriginalRoot::KernelDefault { kind } => format!("the kernel default ({kind})"),
            OriginalRoot::Configured { kind, handle, .. } => {
                format!("{kind} {}", display_handle(*handle))
            }
        }
    }

    /// The state-file form: `key=value` lines.
    fn to_text(&self) -> String {
        let mut s = String::from(
            "# vmbw: the root qdisc this device had before vmbw shaped it.\n\
             # Read when an agent adopts the tree; removed after restoring.\n",
        );
        match self {
            OriginalRoot::KernelDefault { kind } => {
                let _ = writeln!(s, "default={kind}");
            }
            OriginalRoot::Configured {
                kind,
                handle,
                options,
            } => {
                let _ = writeln!(s, "kind={kind}");
                let _ = writeln!(s, "handle={handle:#010x}");
                if let Some(o) = options {
                    let hex: String = o.iter().map(|b| format!("{b:02x}")).collect();
                    let _ = writeln!(s, "options={hex}");
                }
            }
        }
        s
    }

    fn from_text(path: &Path, text: &str) -> Result<Self, ShapingError> {
        let bad = |line: usize, problem: String| ShapingError::StateFileFormat {
            path: path.to_owned(),
            line,
            problem,
        };
        let (mut kind, mut handle, mut options) = (None, None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(i + 1, format!("expected key=value, got {line:?}")))?;
            match key {
                "default" => {
                    return Ok(OriginalRoot::KernelDefault {
                        kind: value.to_owned(),
                    });
                }
                "kind" => kind = Some(value.to_owned()),
                "handle" => {
                    let h = u32::from_str_radix(value.trim_start_matches("0x"), 16)
                        .map_err(|e| bad(i + 1, format!("handle {value:?}: {e}")))?;
                    handle = Some(h);
                }
                "options" => {
                    let bytes = (0..value.len())
                        .step_by(2)
                        .map(|j| {
                            value
                                .get(j..j + 2)
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                        })
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| bad(i + 1, "options are not hex bytes".into()))?;
                    options = Some(bytes);
                }
                other => return Err(bad(i + 1, format!("unknown key {other:?}"))),
            }
        }
        match (kind, handle) {
            (Some(kind), Some(handle)) => Ok(OriginalRoot::Configured {
                kind,
                handle,
                options,
            }),
            _ => Err(bad(
                0,
                "needs `default=` or both `kind=` and `handle=`".into(),
            )),
        }
    }
}

fn describe(q: &TcEntry) -> String {
    format!("{} {}", q.kind, display_handle(q.handle))
}

/// The state file for a device: one per network namespace and ifindex.
pub fn state_path(dir: &Path, netns: u64, ifindex: u32, iface: &str) -> PathBuf {
    dir.join(format!("{netns}-{ifindex}-{iface}.root"))
}

pub fn save(path: &Path, original: &OriginalRoot) -> Result<(), ShapingError> {
    let err = |action| {
        move |source| ShapingError::StateFile {
            path: path.to_owned(),
            action,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("creating its directory"))?;
    }
    // Write then rename, so a crash never leaves half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, original.to_text()).map_err(err("writing"))?;
    std::fs::rename(&tmp, path).map_err(err("renaming into place"))
}

/// Reads a state file; `None` if there is none.
pub fn load(path: &Path) -> Result<Option<OriginalRoot>, ShapingError> {
    match std::fs::read_to_string(path) {
        Ok(text) => OriginalRoot::from_text(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ShapingError::StateFile {
            path: path.to_owned(),
            action: "reading",
            source,
        }),
    }
}

pub fn remove(path: &Path) -> Result<(), ShapingError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ShapingError::StateFile {
            path: path.to_owned(),
            action: "removing",
            source,
        }),
    }
}

/// Restores the original root qdisc when dropped while armed.
pub(crate) struct RestoreGuard {
    socket: Arc<SyncSocket>,
    iface: String,
    ifindex: u32,
    original: OriginalRoot,
    state: Option<PathBuf>,
    armed: bool,
}

impl RestoreGuard {
    pub(crate) fn new(
        socket: Arc<SyncSocket>,
        iface: &str,
        ifindex: u32,
        original: OriginalRoot,
        state: Option<PathBuf>,
    ) -> Self {
        RestoreGuard {
            socket,
            iface: iface.to_owned(),
            ifindex,
            original,
            state,
            armed: true,
        }
    }

    pub(crate) fn original(&self) -> &OriginalRoot {
        &self.original
    }

    pub(crate) fn state_path(&self) -> Option<&Path> {
        self.state.as_deref()
    }

    /// Stops the guard from restoring (after an explicit cleanup, or to
    /// leave the tree for the next agent to adopt).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for RestoreGuard {
    /// Unlike [`super::Shaper::cleanup`], this does not first check that the
    /// root is still vmbw's: a drop must not wait on a dump. Deleting names
    /// vmbw's handle, so only recreating a configured original could
    /// replace a root someone installed over vmbw's meanwhile.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut ok = true;
        for req in self.original.restore_requests(self.ifindex) {
            if let Err(f) = self.socket.apply(&req) {
                ok = false;
                let e = f.into_error(&self.iface, &req);
                tracing::error!(iface = %self.iface, "restoring the original root qdisc failed: {e}: {:?}", std::error::Error::source(&e));
            }
        }
        if ok {
            tracing::info!(iface = %self.iface, original = %self.original.describe(), "shaper dropped without cleanup: original root qdisc restored");
            if let Some(path) = &self.state
                && let Err(e) = remove(path)
            {
                tracing::warn!(iface = %self.iface, "{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(handle: u32, parent: u32, kind: &str) -> TcEntry {
        TcEntry {
            ifindex: 3,
            handle,
            parent,
            kind: kind.into(),
            options: None,
            bytes: 0,
            packets: 0,
        }
    }

    #[test]
    fn kernel_default_and_configured_roots() {
        let q = [entry(0, TC_H_ROOT, "noqueue")];
        assert_eq!(
            OriginalRoot::capture("veth0", &q, &[]).expect("capture"),
            OriginalRoot::KernelDefault {
                kind: "noqueue".into()
            }
        );
        let mut tbf = entry(0x8001_0000, TC_H_ROOT, "tbf");
        tbf.options = Some(vec![1, 2, 3, 4]);
        // tbf's own class 5:1 (holding its default inner fifo) is fine.
        let got = OriginalRoot::capture("veth0", &[tbf], &[entry(0x8001_0001, 0x8001_0000, "tbf")])
            .expect("capture");
        assert_eq!(
            got,
            OriginalRoot::Configured {
                kind: "tbf".into(),
                handle: 0x8001_0000,
                options: Some(vec![1, 2, 3, 4])
            }
        );
        assert_eq!(got.describe(), "tbf 8001:");
    }

    #[test]
    fn refuses_a_root_with_children() {
        let q = [
            entry(0x0001_0000, TC_H_ROOT, "htb"),
            entry(0x8001_0000, 0x0001_0010, "pfifo"),
        ];
        let c = [entry(0x0001_0010, 0x0001_0000, "htb")];
        let err = OriginalRoot::capture("eth9", &q, &c).expect_err("foreign tree");
        assert!(
            err.to_string().contains("eth9's root qdisc htb 1:"),
            "{err}"
        );
        assert!(OriginalRoot::capture("eth9", &q[..1], &c).is_err());
        assert!(OriginalRoot::capture("eth9", &q, &[]).is_err());
        // A child qdisc someone attached under tbf's class.
        let tbf = [
            entry(0x0005_0000, TC_H_ROOT, "tbf"),
            entry(0x0006_0000, 0x0005_0001, "fq_codel"),
        ];
        assert!(OriginalRoot::capture("eth9", &tbf, &[]).is_err());
    }

    #[test]
    fn state_text_round_trips() {
        let path = Path::new("/nonexistent/x.root");
        for original in [
            OriginalRoot::KernelDefault {
                kind: "noqueue".into(),
            },
            OriginalRoot::Configured {
                kind: "tbf".into(),
                handle: 0x8001_0000,
                options: Some(vec![0x0c, 0, 1, 0, 0xff]),
            },
            OriginalRoot::Configured {
                kind: "pfifo".into(),
                handle: 0x0005_0000,
                options: None,
            },
        ] {
            assert_eq!(
                OriginalRoot::from_text(path, &original.to_text()).expect("parse"),
                original
            );
        }
        let err = OriginalRoot::from_text(path, "kind=tbf\nhandle=zz\n").expect_err("bad");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn restore_requests_name_vmbws_root_or_recreate_the_original() {
        let del = &OriginalRoot::KernelDefault {
            kind: "noqueue".into(),
        }
        .restore_requests(3)[0];
        assert_eq!(del.verb, "delete");
        assert_eq!(del.object.to_string(), "htb qdisc 7662: (parent root)");
        let put = &OriginalRoot::Configured {
            kind: "tbf".into(),
            handle: 0x8001_0000,
            options: None,
        }
        .restore_requests(3)[0];
        assert_eq!(put.verb, "replace");
        assert_eq!(put.object.to_string(), "tbf qdisc 8001: (parent root)");
    }
}
