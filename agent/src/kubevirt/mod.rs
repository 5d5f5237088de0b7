//! KubeVirt discovery: which VMs run on this node, which migrations touch
//! it, and the datapath registrations that follow.
//!
//! - [`objects`]: VMI and migration objects parsed from raw JSON, one at a
//!   time, so a malformed object is skipped with a reason.
//! - [`reconcile`]: the pure part: objects in, [`reconcile::Desired`] out
//!   (migration ports per VM and side, VM addresses).
//! - [`apply`]: diffs desired against applied and calls the datapath.
//! - [`podnet`]: a launcher pod's host-side interface, from the host's
//!   routes.
//! - [`watch`]: the kube-rs watchers that feed the two, scoped to this
//!   node (see there for the selectors and their sources).
//!
//! Migration wire ports under KubeVirt are virt-handler's proxy ports,
//! random per migration and published in the VMI's
//! `status.migrationState.targetDirectMigrationNodePorts`: they are learned
//! here, never assumed (see [`reconcile`] for which side is which).

pub mod apply;
pub mod objects;
pub mod podnet;
pub mod reconcile;
pub mod watch;

use std::ops::RangeInclusive;

pub use apply::{Applier, ApplyReport, Change};
pub use objects::{
    LauncherPod, MigrationTerms, ObjectError, RawObject, Vmi, Vmim, parse_launcher_pod, parse_vmi,
    parse_vmim,
};
pub use podnet::{HostIface, HostRoutes, PodInterfaces};
pub use reconcile::{Desired, DesiredMigration, DesiredVm, PortClaim, Side, reconcile};
pub use watch::{DiscoveredVm, Discovery, run};

use crate::datapath::DatapathError;

/// Errors of the KubeVirt discovery.
#[derive(Debug, thiserror::Error)]
pub enum KubevirtError {
    #[error("{vm}: {action} in the datapath failed")]
    Datapath {
        vm: String,
        action: &'static str,
        #[source]
        source: Box<DatapathError>,
    },
    #[error("{vm}: no free VM slot in {}..={}", range.start(), range.end())]
    NoFreeSlot {
        vm: String,
        range: RangeInclusive<u32>,
    },
    #[error("the {kind} watch ended")]
    WatchEnded { kind: &'static str },
    #[error("the datapath lock is poisoned (a thread panicked while holding it)")]
    Poisoned,
    #[error(
        "this node's name is unknown: set [discovery] node_name or NODE_NAME (the DaemonSet \
         passes spec.nodeName through the downward API)"
    )]
    NoNodeName,
}

impl KubevirtError {
    fn datapath(vm: &str, action: &'static str, source: DatapathError) -> Self {
        KubevirtError::Datapath {
            vm: vm.to_owned(),
            action,
            source: Box::new(source),
        }
    }

    /// A short label for metrics (`vmbw_discovery_errors_total{kind=..}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            KubevirtError::Datapath { .. } => "datapath",
            KubevirtError::NoFreeSlot { .. } => "no_free_slot",
            KubevirtError::WatchEnded { .. } => "watch_ended",
            KubevirtError::Poisoned => "poisoned",
            KubevirtError::NoNodeName => "no_node_name",
        }
    }
}
