//! The kube-rs watchers: VMIs and migration objects, kept as raw JSON,
//! re-reconciled and applied after every change.
//!
//! Both are watched cluster-wide (this node is the source of some
//! migrations and the target of others, and a VMI's node label names the
//! source until the end); [`reconcile`](super::reconcile) keeps what
//! concerns this node.

use std::{
    collections::{BTreeMap, HashSet},
    ops::RangeInclusive,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt as _;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{debug, info, warn};

use super::{
    Applier, ApplyReport, KubevirtError,
    objects::{self, ObjectError, RawObject},
    reconcile::{Desired, reconcile},
};
use crate::{
    api::{FlowStatus, MigrationPhase, MigrationRole},
    datapath::Datapath,
};

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    Vmi,
    Vmim,
}

impl Watched {
    fn as_str(self) -> &'static str {
        match self {
            Watched::Vmi => "VirtualMachineInstance",
            Watched::Vmim => "VirtualMachineInstanceMigration",
        }
    }
}

/// Raw objects of one kind, with a buffer for a re-list in progress.
#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<String, RawObject>,
    relist: Option<BTreeMap<String, RawObject>>,
}

impl Store {
    /// Applies a watcher event; true when the visible set changed.
    fn on_event(&mut self, ev: watcher::Event<RawObject>) -> bool {
        match ev {
            watcher::Event::Apply(o) => {
                self.objects.insert(o.key(), o);
                true
            }
            watcher::Event::Delete(o) => self.objects.remove(&o.key()).is_some(),
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(o.key(), o);
                false
            }
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                true
            }
        }
    }
}

/// A VM discovery knows about, for the status API.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredVm {
    /// `namespace/name`.
    pub name: String,
    pub slot: Option<u32>,
    pub role: Option<MigrationRole>,
    pub phase: MigrationPhase,
    pub peer_node: Option<String>,
}

/// This node's view of KubeVirt and the registrations made from it.
#[derive(Debug)]
pub struct Discovery {
    node: String,
    vmis: Store,
    vmims: Store,
    applier: Applier,
    desired: Desired,
    /// `kind key@resourceVersion` of bad objects already logged.
    reported: HashSet<String>,
}

impl Discovery {
    /// Discovery for node `node`, with VM slots from `slots`.
    pub fn new(node: impl Into<String>, slots: RangeInclusive<u32>) -> Self {
        Discovery {
            node: node.into(),
            vmis: Store::default(),
            vmims: Store::default(),
            applier: Applier::new(slots),
            desired: Desired::default(),
            reported: HashSet::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Feeds one watch event; true when a reconcile is due.
    pub fn on_event(&mut self, kind: Watched, ev: watcher::Event<RawObject>) -> bool {
        match kind {
            Watched::Vmi => self.vmis.on_event(ev),
            Watched::Vmim => self.vmims.on_event(ev),
        }
    }

    /// Parses every object (skipping, and logging once, the malformed
    /// ones), reconciles, and returns the objects skipped.
    pub fn reconcile(&mut self) -> Vec<ObjectError> {
        let mut skipped = Vec::new();
        let vmis: Vec<_> = self
            .vmis
            .objects
            .values()
            .filter_map(|o| parsed(objects::parse_vmi(o), o, Watched::Vmi, &mut skipped))
            .collect();
        let vmims: Vec<_> = self
            .vmims
            .objects
            .values()
            .filter_map(|o| parsed(objects::parse_vmim(o), o, Watched::Vmim, &mut skipped))
            .collect();
        for (e, tag) in &skipped {
            if self.reported.insert(tag.clone()) {
                warn!(error = %e, "skipping a malformed KubeVirt object");
            }
        }
        self.desired = reconcile(&self.node, &vmis, &vmims);
        for w in &self.desired.warnings {
            warn!("{w}");
        }
        skipped.into_iter().map(|(e, _)| e).collect()
    }

    /// Applies the last reconcile to the datapath.
    pub fn apply(&mut self, dp: &mut Datapath) -> ApplyReport {
        let report = self.applier.apply(dp, &self.desired);
        for c in &report.changes {
            info!(change = ?c, "datapath registration");
        }
        for e in &report.errors {
            warn!(error = %e, "datapath registration failed; retried on the next change");
        }
        report
    }

    /// The desired state of the last reconcile.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The registrations, as `/api/v1/flows` lists them.
    pub fn flows(&self) -> Vec<FlowStatus> {
        self.applier.flows()
    }

    /// The VMs of this node (and incoming ones), with their migration.
    pub fn vms(&self) -> Vec<DiscoveredVm> {
        self.desired
            .vms
            .iter()
            .map(|(name, vm)| DiscoveredVm {
                name: name.clone(),
                slot: self.applier.slot(name),
                role: vm.migration.as_ref().map(|m| m.role),
                phase: vm
                    .migration
                    .as_ref()
                    .map_or(MigrationPhase::None, |m| m.phase),
                peer_node: vm.migration.as_ref().and_then(|m| m.peer_node.clone()),
            })
            .collect()
    }
}

fn parsed<T>(
    r: Result<T, ObjectError>,
    raw: &RawObject,
    kind: Watched,
    skipped: &mut Vec<(ObjectError, String)>,
) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let rv = raw.metadata.resource_version.as_deref().unwrap_or("?");
            skipped.push((e, format!("{} {}@{rv}", kind.as_str(), raw.key())));
            None
        }
    }
}

/// Watches VMIs and migrations with `client` and keeps `dp` in step until
/// the watches end (they retry with back-off on errors, so in practice
/// until the task is dropped).
pub async fn run(
    client: Client,
    discovery: Arc<Mutex<Discovery>>,
    dp: Arc<Mutex<Datapath>>,
) -> Result<(), KubevirtError> {
    let stream = |kind: Watched, ar| {
        let api: Api<RawObject> = Api::all_with(client.clone(), &ar);
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |ev| (kind, ev))
            .boxed()
    };
    let vmis = stream(Watched::Vmi, objects::vmi_resource());
    let vmims = stream(Watched::Vmim, objects::vmim_resource());
    let mut events = futures_util::stream::select(vmis, vmims);
    {
        let d = discovery.lock().map_err(|_| KubevirtError::Poisoned)?;
        info!(node = d.node(), "watching KubeVirt VMIs and migrations");
    }
    while let Some((kind, ev)) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                warn!(kind = kind.as_str(), error = %e, "watch error; retrying");
                continue;
            }
        };
        let mut d = discovery.lock().map_err(|_| KubevirtError::Poisoned)?;
        if !d.on_event(kind, ev) {
            continue;
        }
        d.reconcile();
        let mut dp = dp.lock().map_err(|_| KubevirtError::Poisoned)?;
        let report = d.apply(&mut dp);
        debug!(
            changes = report.changes.len(),
            errors = report.errors.len(),
            "reconciled"
        );
    }
    Err(KubevirtError::WatchEnded { kind: "KubeVirt" })
}
