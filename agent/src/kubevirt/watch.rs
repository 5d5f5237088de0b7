//! The kube-rs watchers: VMIs, migration objects and virt-launcher pods,
//! kept as raw JSON, re-reconciled and applied after every change.
//!
//! The watches are as narrow as KubeVirt's API allows, the way
//! virt-handler watches (kubevirt/kubevirt `pkg/controller/virtinformers.go`,
//! `VMISourceHost` and `VMITargetHost`):
//!
//! - VMIs labelled `kubevirt.io/nodeName=<node>`: the VMIs running here
//!   (the label equals `status.nodeName`; the target's virt-handler moves
//!   both to itself when a migration completes, so the source's watch then
//!   drops the VMI);
//! - VMIs labelled `kubevirt.io/migrationTargetNodeName=<node>`: incoming
//!   migrations (virt-controller sets the label when it has scheduled the
//!   target pod, `pkg/virt-controller/watch/migration.go`, before the
//!   target's virt-handler publishes its proxy ports);
//! - virt-launcher pods on this node: field selector `spec.nodeName=<node>`
//!   and label `kubevirt.io=virt-launcher`;
//! - VirtualMachineInstanceMigrations cluster-wide: they carry no node
//!   label or field a selector could use (custom resources support field
//!   selectors only on `metadata.name`/`namespace`), and are few. Only
//!   those of VMIs seen here matter to [`reconcile`](super::reconcile).

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    ops::RangeInclusive,
    sync::{Arc, Mutex},
};

use futures_util::{FutureExt as _, StreamExt as _};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{debug, info, warn};

use super::{
    Applier, ApplyReport, KubevirtError,
    objects::{self, MigrationTerms, ObjectError, RawObject},
    podnet::{HostIface, NoInterfaces, PodInterfaces},
    reconcile::{Desired, reconcile},
};
use crate::{
    api::{FlowStatus, MigrationPhase, MigrationRole},
    datapath::Datapath,
};

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// VMIs running on this node.
    Vmi,
    /// VMIs migrating to this node.
    VmiIncoming,
    Vmim,
    /// virt-launcher pods on this node.
    Pod,
}

impl Watched {
    fn as_str(self) -> &'static str {
        match self {
            Watched::Vmi | Watched::VmiIncoming => "VirtualMachineInstance",
            Watched::Vmim => "VirtualMachineInstanceMigration",
            Watched::Pod => "Pod",
        }
    }
}

/// The label selector of the VMIs running on `node`.
pub fn vmi_here_selector(node: &str) -> String {
    format!("{}={node}", objects::labels::NODE_NAME)
}

/// The label selector of the VMIs migrating to `node`.
pub fn vmi_incoming_selector(node: &str) -> String {
    format!("{}={node}", objects::labels::MIGRATION_TARGET_NODE_NAME)
}

/// The label selector of launcher pods.
pub fn launcher_pod_labels() -> String {
    format!(
        "{}={}",
        objects::labels::APP,
        objects::labels::VIRT_LAUNCHER
    )
}

/// How long after its last failure a watch counts as healthy again.
pub const WATCH_HEALTHY: std::time::Duration = std::time::Duration::from_secs(30);

/// The field selector of pods on `node`.
pub fn pods_on_node_fields(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Raw objects of one kind, with a buffer for a re-list in progress.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, RawObject>,
    relist: Option<BTreeMap<String, RawObject>>,
    /// The first list has been read completely.
    synced: bool,
    /// When this watch last failed (403, a dropped connection, ...), and
    /// why.
    failed: Option<(std::time::Instant, String)>,
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
                self.synced = true;
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
    /// The VMI's promise to its application (annotation), Mbit/s.
    pub reserve_mbit: Option<f64>,
    /// The terms of its current (or last) migration.
    pub terms: MigrationTerms,
}

/// This node's view of KubeVirt and the registrations made from it.
pub struct Discovery {
    node: String,
    vmis: Store,
    incoming: Store,
    vmims: Store,
    pods: Store,
    applier: Applier,
    desired: Desired,
    /// `kind key@resourceVersion` of bad objects already logged.
    reported: HashSet<String>,
    interfaces: Box<dyn PodInterfaces>,
    /// Host-side interface per (pod uid or key, address): `None` = looked
    /// up, not there (yet).
    iface_cache: BTreeMap<(String, IpAddr), Option<HostIface>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("node", &self.node)
            .field("desired", &self.desired)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery for node `node`, with VM slots from `slots`. Pods'
    /// host-side interfaces are not looked up until
    /// [`with_interfaces`](Self::with_interfaces).
    pub fn new(node: impl Into<String>, slots: RangeInclusive<u32>) -> Self {
        Discovery {
            node: node.into(),
            vmis: Store::default(),
            incoming: Store::default(),
            vmims: Store::default(),
            pods: Store::default(),
            applier: Applier::new(slots),
            desired: Desired::default(),
            reported: HashSet::new(),
            interfaces: Box::new(NoInterfaces),
            iface_cache: BTreeMap::new(),
        }
    }

    /// VMIs (`namespace/name`) registered into a `[[vm]]` entry's slot
    /// (see [`Applier::with_pinned`]).
    pub fn with_pinned(mut self, pinned: BTreeMap<String, u32>) -> Self {
        self.applier.pin(pinned);
        self
    }

    /// Looks launcher pods' host-side interfaces up with `interfaces`.
    pub fn with_interfaces(mut self, interfaces: Box<dyn PodInterfaces>) -> Self {
        self.interfaces = interfaces;
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Feeds one watch event; true when a reconcile is due.
    pub fn on_event(&mut self, kind: Watched, ev: watcher::Event<RawObject>) -> bool {
        match kind {
            Watched::Vmi => self.vmis.on_event(ev),
            Watched::VmiIncoming => self.incoming.on_event(ev),
            Watched::Vmim => self.vmims.on_event(ev),
            Watched::Pod => self.pods.on_event(ev),
        }
    }

    /// Whether each of the four watches has read its first list: until then
    /// what discovery registered is a partial picture.
    pub fn synced(&self) -> bool {
        self.stores().iter().all(|s| s.synced)
    }

    fn stores(&self) -> [&Store; 4] {
        [&self.vmis, &self.incoming, &self.vmims, &self.pods]
    }

    fn store_mut(&mut self, kind: Watched) -> &mut Store {
        match kind {
            Watched::Vmi => &mut self.vmis,
            Watched::VmiIncoming => &mut self.incoming,
            Watched::Vmim => &mut self.vmims,
            Watched::Pod => &mut self.pods,
        }
    }

    /// Records that the `kind` watch failed (it retries with back-off).
    pub fn watch_failed(&mut self, kind: Watched, error: String) {
        self.store_mut(kind).failed = Some((std::time::Instant::now(), error));
    }

    /// Synced, and no watch has failed for [`WATCH_HEALTHY`]: what
    /// `/readyz` waits for. A watch that keeps failing (e.g. 403 because
    /// the ClusterRole lacks `watch`) would otherwise leave a ready agent
    /// that never hears of a change after its first list.
    pub fn ready(&self) -> Result<(), String> {
        if !self.synced() {
            return Err("waiting for the first lists of the KubeVirt watches".into());
        }
        match self
            .stores()
            .iter()
            .filter_map(|s| s.failed.as_ref())
            .filter(|(at, _)| at.elapsed() < WATCH_HEALTHY)
            .max_by_key(|(at, _)| *at)
        {
            Some((_, error)) => Err(format!("a KubeVirt watch is failing: {error}")),
            None => Ok(()),
        }
    }

    /// Whether a running launcher pod's address still has no host-side
    /// interface (routes may come after the pod's status): worth another
    /// reconcile later.
    pub fn interfaces_pending(&self) -> bool {
        self.iface_cache.values().any(Option::is_none)
    }

    /// The interfaces of `pod`'s addresses, from the cache or the host.
    fn host_ifaces(&mut self, pod: &objects::LauncherPod) -> Vec<HostIface> {
        let id = pod.uid.clone().unwrap_or_else(|| pod.key());
        let mut out = Vec::new();
        for ip in &pod.ips {
            let cached = self.iface_cache.get(&(id.clone(), *ip)).cloned().flatten();
            let found = match cached {
                Some(i) => Some(i),
                None => match self.interfaces.interface_of(*ip) {
                    Ok(i) => i,
                    Err(e) => {
                        warn!(pod = %pod.key(), %ip, error = %crate::api::errors::chain(&e), "looking up the pod's host interface");
                        None
                    }
                },
            };
            self.iface_cache.insert((id.clone(), *ip), found.clone());
            out.extend(found);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Parses every object (skipping, and logging once, the malformed
    /// ones), reconciles, and returns the objects skipped.
    pub fn reconcile(&mut self) -> Vec<ObjectError> {
        let mut skipped = Vec::new();
        // A VMI may be in both VMI watches (labelled for this node and, an
        // instant later, not): the newer version counts.
        let mut merged: BTreeMap<String, &RawObject> = BTreeMap::new();
        for o in self
            .incoming
            .objects
            .values()
            .chain(self.vmis.objects.values())
        {
            let newer = merged
                .get(&o.key())
                .is_none_or(|m| resource_version(o) >= resource_version(m));
            if newer {
                merged.insert(o.key(), o);
            }
        }
        let vmis: Vec<_> = merged
            .values()
            .filter_map(|o| parsed(objects::parse_vmi(o), o, Watched::Vmi, &mut skipped))
            .collect();
        let vmims: Vec<_> = self
            .vmims
            .objects
            .values()
            .filter_map(|o| parsed(objects::parse_vmim(o), o, Watched::Vmim, &mut skipped))
            .collect();
        let mut pods: Vec<_> = self
            .pods
            .objects
            .values()
            .filter_map(|o| {
                parsed(
                    objects::parse_launcher_pod(o),
                    o,
                    Watched::Pod,
                    &mut skipped,
                )
            })
            .collect();
        let mut live = HashSet::new();
        for pod in &mut pods {
            let id = pod.uid.clone().unwrap_or_else(|| pod.key());
            if pod.phase.as_deref() == Some("Running")
                && pod.node.as_deref() == Some(self.node.as_str())
                && !pod.host_network
            {
                pod.host_ifaces = self.host_ifaces(pod);
                live.insert(id);
            }
        }
        self.iface_cache.retain(|(id, _), _| live.contains(id));
        for (e, tag) in &skipped {
            if self.reported.insert(tag.clone()) {
                warn!(error = %crate::api::errors::chain(&e), "skipping a malformed KubeVirt object");
            }
        }
        self.desired = reconcile(&self.node, &vmis, &vmims, &pods);
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
            warn!(error = %crate::api::errors::chain(&e), "datapath registration failed; retried on the next change");
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
                reserve_mbit: vm.reserve_mbit,
                terms: vm.migration.as_ref().map(|m| m.terms).unwrap_or_default(),
            })
            .collect()
    }
}

/// An object's resourceVersion as a number (the API server's are; others
/// count as 0, so the first seen wins).
fn resource_version(o: &RawObject) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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

/// Watches this node's VMIs, launcher pods and the migrations with
/// `client` (see the module docs for the selectors) and keeps `dp` in step
/// until the watches end (they retry with back-off on errors, so in
/// practice until the task is dropped).
/// Watches until the watch streams end. `synced` is set once every watch
/// has read its first list and that picture has been applied.
pub async fn run(
    client: Client,
    discovery: Arc<Mutex<Discovery>>,
    dp: Arc<Mutex<Datapath>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), KubevirtError> {
    let node = {
        let d = discovery.lock().map_err(|_| KubevirtError::Poisoned)?;
        d.node().to_owned()
    };
    if node.is_empty() {
        return Err(KubevirtError::NoNodeName);
    }
    let stream = |kind: Watched, ar, config: watcher::Config| {
        let api: Api<RawObject> = Api::all_with(client.clone(), &ar);
        watcher(api, config)
            .default_backoff()
            .map(move |ev| (kind, ev))
            .boxed()
    };
    let here = stream(
        Watched::Vmi,
        objects::vmi_resource(),
        watcher::Config::default().labels(&vmi_here_selector(&node)),
    );
    let incoming = stream(
        Watched::VmiIncoming,
        objects::vmi_resource(),
        watcher::Config::default().labels(&vmi_incoming_selector(&node)),
    );
    let vmims = stream(
        Watched::Vmim,
        objects::vmim_resource(),
        watcher::Config::default(),
    );
    let pods = stream(
        Watched::Pod,
        objects::pod_resource(),
        watcher::Config::default()
            .labels(&launcher_pod_labels())
            .fields(&pods_on_node_fields(&node)),
    );
    let mut events = futures_util::stream::select_all([here, incoming, vmims, pods]);
    info!(node = %node, "watching this node's KubeVirt VMIs and launcher pods, and migrations");
    // Routes to a new pod may come after its last status change: look
    // again now and then while some pod has no interface yet.
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(10));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = tokio::select! {
            ev = events.next() => {
                let Some((kind, ev)) = ev else { break };
                let mut d = discovery.lock().map_err(|_| KubevirtError::Poisoned)?;
                let mut due = false;
                let mut next = Some((kind, ev));
                // Take what else has arrived before reconciling: a VMI
                // moving from one of this node's watches to the other
                // (DELETED there, ADDED here) must not unregister and
                // re-register it in between.
                while let Some((kind, ev)) = next {
                    match ev {
                        Ok(ev) => due |= d.on_event(kind, ev),
                        // 410: the server compacted past the watch's
                        // resourceVersion; the watcher lists again. Routine.
                        Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                            info!(kind = kind.as_str(), "watch expired (410); listing again");
                        }
                        Err(e) => {
                            warn!(kind = kind.as_str(), error = %crate::api::errors::chain(&e), "watch error; retrying");
                            d.watch_failed(kind, format!("{}: {e}", kind.as_str()));
                        }
                    }
                    next = events.next().now_or_never().flatten();
                }
                publish_ready(&d, &synced);
                due
            }
            _ = retry.tick() => {
                let d = discovery.lock().map_err(|_| KubevirtError::Poisoned)?;
                publish_ready(&d, &synced);
                d.interfaces_pending()
            }
        };
        if !due {
            continue;
        }
        let mut d = discovery.lock().map_err(|_| KubevirtError::Poisoned)?;
        d.reconcile();
        let mut dp = dp.lock().map_err(|_| KubevirtError::Poisoned)?;
        let report = d.apply(&mut dp);
        debug!(
            changes = report.changes.len(),
            errors = report.errors.len(),
            "reconciled"
        );
        publish_ready(&d, &synced);
    }
    Err(KubevirtError::WatchEnded { kind: "KubeVirt" })
}

/// Sets `ready` to [`Discovery::ready`], logging each change.
fn publish_ready(d: &Discovery, ready: &std::sync::atomic::AtomicBool) {
    let now = d.ready();
    let was = ready.swap(now.is_ok(), std::sync::atomic::Ordering::SeqCst);
    match (&now, was) {
        (Ok(()), false) => info!(
            vms = d.desired().vms.len(),
            "KubeVirt discovery synced: ready"
        ),
        (Err(why), true) => warn!(reason = %why, "KubeVirt discovery not ready"),
        _ => {}
    }
}
