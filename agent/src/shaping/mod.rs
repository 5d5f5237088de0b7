//! Traffic control on the uplink: one HTB tree per device, reconciled over
//! rtnetlink to a desired state, with live rate changes and a safe way back.
//!
//! - [`handles`]: stable class handles; the datapath writes
//!   [`class_handle`]`(slot, class)` into `skb->priority` to steer packets.
//! - [`desired`]: the desired state ([`DesiredTree`]) and its validation.
//! - [`tca`]: HTB and fq option bytes (netlink-packet-route has neither).
//! - [`messages`]: the netlink requests, checked against iproute2's bytes.
//! - [`ops`]: observed tree vs desired tree, as ordered operations.
//! - `netlink`: the rtnetlink client ([`TcClient`]).
//! - [`restore`]: the original root qdisc, its state file, the drop guard.
//!
//! [`Shaper`] ties them together: [`Shaper::install`] replaces the device's
//! root qdisc by vmbw's HTB tree (remembering the original), [`Shaper::adopt`]
//! takes over a tree left by an earlier agent, [`Shaper::reconcile`] and
//! [`Shaper::set_class`] change it without resetting queues, and
//! [`Shaper::cleanup`] (or dropping the shaper) puts the original root back.

pub mod desired;
mod error;
pub mod handles;
pub mod messages;
mod netlink;
pub(crate) use netlink::decode_replies;
pub mod ops;
pub mod restore;
pub mod tca;

use std::path::PathBuf;

use tracing::{info, instrument, warn};

pub use self::{
    desired::{ClassSpec, DesiredTree, Enforcement, Rate, VmShaping},
    error::ShapingError,
    handles::{TrafficClass, class_handle},
    messages::TcEntry,
    netlink::{Link, TcClient, requests_sent},
    ops::{ObservedClass, ObservedTree},
    restore::OriginalRoot,
};
use self::{
    messages::{Mode, Request},
    ops::{LeafKind, Op},
    restore::RestoreGuard,
    tca::FqOptions,
};

/// Where the original root qdiscs are remembered by default.
pub const DEFAULT_STATE_DIR: &str = "/run/vmbw/shaping";

/// How a shaper keeps state outside the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShaperOptions {
    /// Directory for the original-root state files; `None` keeps nothing
    /// (an adopting agent then assumes the kernel default was there).
    pub state_dir: Option<PathBuf>,
}

impl Default for ShaperOptions {
    fn default() -> Self {
        ShaperOptions {
            state_dir: Some(PathBuf::from(DEFAULT_STATE_DIR)),
        }
    }
}

/// Whether EDT pacing can be installed: it needs the `fq` qdisc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdtSupport {
    Available,
    Unavailable {
        errno: i32,
        /// The kernel's words, e.g. "Specified qdisc kind is unknown".
        reason: String,
    },
}

/// What a reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub changed: usize,
    pub deleted: usize,
    /// Leaf qdiscs set: switched (to fq or back), or a FIFO's limit changed.
    pub leaves: usize,
    /// Classes in vmbw's qdisc that vmbw did not make (left alone).
    pub foreign: Vec<u32>,
    /// Warnings the kernel attached to its acknowledgements ("quantum of
    /// class … is big"); vmbw's parameters are chosen to cause none.
    pub warnings: Vec<String>,
    /// The enforcement in effect (EDT falls back to HTB without fq).
    pub enforcement: Enforcement,
    /// vmbw's root had been removed or replaced (by what was found
    /// instead) and was put back.
    pub root_restored: Option<String>,
}

/// A device's root qdisc among `qdiscs` (its dump), as `kind handle`, or
/// `none`: what errors and `vmbw shaping` say was found instead of vmbw's.
pub fn describe_root(qdiscs: &[TcEntry]) -> String {
    qdiscs
        .iter()
        .find(|q| q.parent == handles::TC_H_ROOT)
        .map_or("none".to_owned(), |q| {
            format!("{} {}", q.kind, handles::display_handle(q.handle))
        })
}

/// vmbw's HTB tree on one device.
pub struct Shaper {
    tc: TcClient,
    link: Link,
    edt: EdtSupport,
    edt_fallback_logged: bool,
    guard: RestoreGuard,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper")
            .field("link", &self.link)
            .field("edt", &self.edt)
            .field("original", self.guard.original())
            .finish_non_exhaustive()
    }
}

impl Shaper {
    /// Replaces `iface`'s root qdisc with vmbw's HTB tree and reconciles
    /// it to `desired`. The original root is remembered (state file) and
    /// put back by [`Shaper::cleanup`] or when the shaper is dropped,
    /// including when this call fails half-way.
    #[instrument(skip_all, fields(iface = %iface))]
    pub async fn install(
        tc: TcClient,
        iface: &str,
        desired: &DesiredTree,
        opts: &ShaperOptions,
    ) -> Result<(Self, ReconcileReport), ShapingError> {
        desired.validate()?;
        let link = tc.link(iface).await?;
        let qdiscs = tc.qdiscs(&link).await?;
        let classes = tc.classes(&link).await?;
        if decode(&link, ObservedTree::from_dump(&qdiscs, &classes))?.is_some() {
            return Err(ShapingError::AlreadyShaped {
                iface: iface.to_owned(),
            });
        }
        let original = OriginalRoot::capture(iface, &qdiscs, &classes)?;
        let state = opts
            .state_dir
            .as_ref()
            .map(|dir| restore::state_path(dir, tc.netns_inode(), link.index, iface));
        if let Some(path) = &state {
            restore::save(path, &original)?;
        }
        let root = messages::htb_root(
            Mode::Replace,
            link.index,
            handles::root_qdisc(),
            handles::DEFAULT_CLASS_MINOR,
        );
        if let Err(e) = tc.apply(&link, &root).await.map(drop) {
            if let Some(path) = &state {
                let _ = restore::remove(path); // nothing was changed
            }
            return Err(e);
        }
        info!(original = %original.describe(), mtu = link.mtu, "vmbw HTB root installed");
        let guard = RestoreGuard::new(tc.sync_socket(), iface, link.index, original, state);
        let mut shaper = Shaper {
            tc,
            link,
            edt: EdtSupport::Available,
            edt_fallback_logged: false,
            guard,
        };
        // Root and default class first: the fq probe hangs below the root.
        let report = shaper.reconcile_with(desired, false).await?;
        shaper.edt = shaper.probe_fq().await?;
        let report = if desired.enforcement == Enforcement::Edt {
            let mut again = shaper.reconcile(desired).await?;
            let mut warnings = report.warnings;
            warnings.append(&mut again.warnings);
            ReconcileReport {
                leaves: again.leaves,
                enforcement: again.enforcement,
                warnings,
                ..report
            }
        } else {
            report
        };
        Ok((shaper, report))
    }

    /// Takes over the tree an earlier agent left on `iface` (see
    /// [`Shaper::detach`]). The original root comes from the state file;
    /// without one, the kernel default is assumed (and logged).
    #[instrument(skip_all, fields(iface = %iface))]
    pub async fn adopt(
        tc: TcClient,
        iface: &str,
        opts: &ShaperOptions,
    ) -> Result<Self, ShapingError> {
        let link = tc.link(iface).await?;
        let qdiscs = tc.qdiscs(&link).await?;
        let classes = tc.classes(&link).await?;
        let Some(tree) = decode(&link, ObservedTree::from_dump(&qdiscs, &classes))? else {
            return Err(ShapingError::NotShaped {
                iface: iface.to_owned(),
                found: describe_root(&qdiscs),
            });
        };
        let state = opts
            .state_dir
            .as_ref()
            .map(|dir| restore::state_path(dir, tc.netns_inode(), link.index, iface));
        let original = match state.as_deref().map(restore::load).transpose()?.flatten() {
            Some(o) => o,
            None => {
                warn!(
                    "no record of the original root qdisc: cleanup will restore the kernel default"
                );
                OriginalRoot::KernelDefault {
                    kind: String::new(),
                }
            }
        };
        info!(
            classes = tree.classes.len(),
            original = %original.describe(),
            "adopted vmbw's HTB tree"
        );
        let guard = RestoreGuard::new(tc.sync_socket(), iface, link.index, original, state);
        let mut shaper = Shaper {
            tc,
            link,
            edt: EdtSupport::Available,
            edt_fallback_logged: false,
            guard,
        };
        shaper.edt = shaper.probe_fq().await?;
        Ok(shaper)
    }

    /// Adopts vmbw's tree on `iface` if there is one, else installs it;
    /// then reconciles to `desired`. What an agent does at start.
    pub async fn start(
        tc: TcClient,
        iface: &str,
        desired: &DesiredTree,
        opts: &ShaperOptions,
    ) -> Result<(Self, ReconcileReport), ShapingError> {
        match Shaper::adopt(tc.clone(), iface, opts).await {
            Ok(mut shaper) => {
                let report = shaper.reconcile(desired).await?;
                Ok((shaper, report))
            }
            Err(ShapingError::NotShaped { .. }) => Shaper::install(tc, iface, desired, opts).await,
            Err(e) => Err(e),
        }
    }

    /// Brings the kernel's tree to `desired`: reads the tree back, diffs,
    /// and applies only the differences. Existing classes are changed in
    /// place, so their queues, counters and handles survive.
    #[instrument(skip_all, fields(iface = %self.link.name))]
    pub async fn reconcile(
        &mut self,
        desired: &DesiredTree,
    ) -> Result<ReconcileReport, ShapingError> {
        desired.validate()?;
        let edt = desired.enforcement == Enforcement::Edt;
        if edt
            && let EdtSupport::Unavailable { errno, reason } = &self.edt
            && !self.edt_fallback_logged
        {
            warn!(
                errno,
                "fq qdisc is not available on this kernel ({reason}): EDT pacing is off, \
                 falling back to HTB rate enforcement"
            );
            self.edt_fallback_logged = true;
        }
        self.reconcile_with(desired, edt && self.edt == EdtSupport::Available)
            .await
    }

    async fn reconcile_with(
        &mut self,
        desired: &DesiredTree,
        fq: bool,
    ) -> Result<ReconcileReport, ShapingError> {
        let (observed, root_restored) = match self.observe().await {
            Ok(tree) => (tree, None),
            Err(ShapingError::NotShaped { found, .. }) => {
                // Someone deleted or replaced vmbw's root while it ran. The
                // uplink is vmbw's to shape while it runs: put the root back
                // (what cleanup restores stays the root found at start).
                let found = self.root_found().await.unwrap_or(found);
                warn!(
                    found = %found,
                    "vmbw's HTB root was removed or replaced while the agent ran: putting it back"
                );
                let root = messages::htb_root(
                    Mode::Replace,
                    self.link.index,
                    handles::root_qdisc(),
                    handles::DEFAULT_CLASS_MINOR,
                );
                self.tc.apply(&self.link, &root).await?;
                (self.observe().await?, Some(found))
            }
            Err(e) => return Err(e),
        };
        let todo = ops::diff(&observed, desired, self.link.mtu, fq);
        let mut report = ReconcileReport {
            root_restored,
            foreign: todo.foreign.clone(),
            enforcement: if fq {
                Enforcement::Edt
            } else {
                Enforcement::Htb
            },
            ..ReconcileReport::default()
        };
        for op in &todo.ops {
            let req = self.request(op);
            if let Some(w) = self.tc.apply(&self.link, &req).await? {
                report
                    .warnings
                    .push(format!("{} {}: {w}", req.verb, req.object));
            }
            match op {
                Op::Add(_) => report.added += 1,
                Op::Change(_) => report.changed += 1,
                Op::Delete { .. } => report.deleted += 1,
                Op::Leaf { .. } => report.leaves += 1,
            }
        }
        if !todo.foreign.is_empty() {
            let list: Vec<String> = todo
                .foreign
                .iter()
                .map(|h| handles::display_handle(*h))
                .collect();
            warn!(classes = %list.join(" "), "classes in vmbw's qdisc that vmbw did not make: left alone");
        }
        tracing::debug!(?report, "reconciled");
        Ok(report)
    }

    fn request(&self, op: &Op) -> Request {
        let ifindex = self.link.index;
        match op {
            Op::Add(c) => messages::htb_class(Mode::Add, ifindex, c.handle, c.parent, &c.params),
            Op::Change(c) => {
                messages::htb_class(Mode::Change, ifindex, c.handle, c.parent, &c.params)
            }
            Op::Delete { handle } => messages::delete_class(ifindex, *handle),
            Op::Leaf {
                class,
                kind: LeafKind::Fq,
            } => messages::fq_leaf(ifindex, *class, &FqOptions::for_edt()),
            Op::Leaf {
                class,
                kind: LeafKind::Fifo { limit_bytes },
            } => messages::bfifo_leaf(ifindex, *class, *limit_bytes),
        }
    }

    /// Changes one VM class in place with a single netlink round trip
    /// (no dump, no diff): the fast path for per-iteration rate updates.
    /// The caller keeps its [`DesiredTree`] in step for later reconciles,
    /// which also bring an application class's leaf limit in step with
    /// its new rate.
    #[instrument(skip(self, spec), fields(iface = %self.link.name, vm = slot, class = %class, rate = %spec.rate))]
    pub async fn set_class(
        &self,
        slot: u16,
        class: TrafficClass,
        spec: &ClassSpec,
    ) -> Result<(), ShapingError> {
        let handle =
            class_handle(slot, class).ok_or(ShapingError::SlotOutOfRange { slot, class })?;
        let params = desired::class_params(spec, self.link.mtu);
        let req = messages::htb_class(
            Mode::Change,
            self.link.index,
            handle,
            handles::root_class(),
            &params,
        );
        self.tc.apply(&self.link, &req).await.map(drop)
    }

    /// Reads vmbw's tree back from the kernel.
    pub async fn observe(&self) -> Result<ObservedTree, ShapingError> {
        let qdiscs = self.tc.qdiscs(&self.link).await?;
        let classes = self.tc.classes(&self.link).await?;
        decode(&self.link, ObservedTree::from_dump(&qdiscs, &classes))?.ok_or_else(|| {
            ShapingError::NotShaped {
                iface: self.link.name.clone(),
                found: "something else (vmbw's root qdisc was replaced)".into(),
            }
        })
    }

    /// The root qdisc the uplink has now, as `kind handle` (`none`).
    async fn root_found(&self) -> Result<String, ShapingError> {
        Ok(describe_root(&self.tc.qdiscs(&self.link).await?))
    }

    /// Tries to create `fq` under a throw-away class of vmbw's own tree:
    /// no traffic is touched, and the kernel's answer is definitive.
    async fn probe_fq(&self) -> Result<EdtSupport, ShapingError> {
        let ifindex = self.link.index;
        let probe = handles::probe_class();
        let params = desired::class_params(&ClassSpec::fixed(Rate::kbit(8)), self.link.mtu);
        let class = messages::htb_class(
            Mode::Replace,
            ifindex,
            probe,
            handles::root_class(),
            &params,
        );
        self.tc.apply(&self.link, &class).await?;
        let attempt = self
            .tc
            .apply(
                &self.link,
                &messages::fq_leaf(ifindex, probe, &FqOptions::for_edt()),
            )
            .await
            .map(drop);
        // Deleting the class deletes its leaf too.
        self.tc
            .apply(&self.link, &messages::delete_class(ifindex, probe))
            .await?;
        let support = match attempt {
            Ok(()) => EdtSupport::Available,
            Err(ShapingError::Kernel { extack, source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EOPNOTSUPP)) =>
            {
                EdtSupport::Unavailable {
                    errno: source.raw_os_error().unwrap_or_default(),
                    reason: extack.unwrap_or_else(|| source.to_string()),
                }
            }
            Err(e) => return Err(e),
        };
        info!(?support, "probed for the fq qdisc (EDT pacing)");
        Ok(support)
    }

    pub fn edt_support(&self) -> &EdtSupport {
        &self.edt
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn original_root(&self) -> &OriginalRoot {
        self.guard.original()
    }

    /// Puts the original root qdisc back and forgets the state file. If
    /// vmbw's root is no longer there, nothing is touched.
    #[instrument(skip_all, fields(iface = %self.link.name))]
    pub async fn cleanup(mut self) -> Result<(), ShapingError> {
        // Whatever happens now, the caller hears about it: no second try
        // from Drop.
        self.guard.disarm();
        self.observe().await?;
        for req in self.guard.original().restore_requests(self.link.index) {
            self.tc.apply(&self.link, &req).await?;
        }
        if let Some(path) = self.guard.state_path() {
            restore::remove(path)?;
        }
        info!(original = %self.guard.original().describe(), "original root qdisc restored");
        Ok(())
    }

    /// Leaves the tree (and the state file) in place for a later
    /// [`Shaper::adopt`], e.g. across an agent upgrade: traffic stays
    /// shaped while no agent runs.
    pub fn detach(mut self) {
        self.guard.disarm();
        info!(iface = %self.link.name, "shaper detached: tree left for the next agent");
    }
}

fn decode<T>(link: &Link, r: Result<T, tca::TcaError>) -> Result<T, ShapingError> {
    r.map_err(|source| ShapingError::Decode {
        iface: link.name.clone(),
        object: "vmbw's HTB tree".into(),
        source,
    })
}
