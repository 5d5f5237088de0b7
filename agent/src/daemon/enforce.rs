//! The one road from a decision to the kernel. [`crate::control::enforce::allot`]
//! (pure) turns a [`crate::control::Decision`] into an allotment; [`enforce`]
//! puts that allotment in the kernel: the HTB tree on the uplink, then the
//! datapath's mode and per-(vm, class) steering. The control loop and the
//! enforcement test both go through here.
//!
//! The datapath's mode follows the enforcement the shaper reports, not the
//! one configured: `mode = "edt"` without the `fq` qdisc falls back to HTB,
//! and only HTB mode writes the `skb->priority` that puts packets in their
//! classes.
//!
//! QEMU's own limits (`max-bandwidth`, downtime, auto-converge) are not
//! set here: each VM task mirrors its decision's
//! [`crate::control::QemuParams`] to its QEMU through
//! [`crate::migration::Applied::pending`] ([`super::vm`]), because only
//! that task holds the VM's monitor.

use std::{collections::BTreeSet, sync::Mutex};

use vmbw_common::{ClassConfig, class};

use crate::{
    control::enforce::Allotment,
    datapath::{Datapath, DatapathError, Mode},
    shaping::{Enforcement, ReconcileReport, Shaper, ShapingError, handles},
};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("reconciling the HTB tree")]
    Shaping(#[from] ShapingError),
    #[error("setting the datapath's mode")]
    Mode(#[source] DatapathError),
}

impl EnforceError {
    /// The `subsystem` label of `vmbw_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            EnforceError::Shaping(e) => e.metric_label(),
            EnforceError::Mode(_) => "datapath",
        }
    }
}

/// What [`enforce`] did.
#[derive(Debug)]
pub struct Enforced {
    pub report: ReconcileReport,
    /// Steering writes the datapath refused. The tree is in place anyway,
    /// and a retry would be refused again (the slot is out of range), so
    /// these are reported, not retried.
    pub steering_errors: Vec<DatapathError>,
}

/// Reconciles the HTB tree to `allotment`, sets the datapath's mode to the
/// enforcement in effect, then steers the allotted (vm, class) pairs into
/// their classes and every other slot of `slots` back to the default
/// class. A mode that cannot be set is an error (the caller retries): in
/// the wrong mode no steering takes effect. Tree first, so a steered packet never lands in a class
/// that does not exist yet. The datapath lock is taken only after the
/// netlink round trips.
pub async fn enforce(
    allotment: &Allotment,
    slots: &[u32],
    shaper: &mut Shaper,
    datapath: &Mutex<Datapath>,
) -> Result<Enforced, EnforceError> {
    let report = shaper.reconcile(&allotment.tree).await?;
    let mut dp = datapath.lock().unwrap_or_else(|p| p.into_inner());
    dp.set_mode(match report.enforcement {
        Enforcement::Htb => Mode::Htb,
        Enforcement::Edt => Mode::Edt,
    })
    .map_err(EnforceError::Mode)?;
    // Urgent flows (post-copy's requested pages) get their own class only
    // where packets are steered by class, i.e. in HTB mode.
    let urgent = match (report.enforcement, &allotment.tree.urgent) {
        (Enforcement::Htb, Some(_)) => handles::urgent_class(),
        _ => 0,
    };
    dp.set_urgent_priority(urgent).map_err(EnforceError::Mode)?;
    let mut steering_errors = Vec::new();
    let steered: BTreeSet<u32> = allotment
        .steering
        .iter()
        .map(|s| u32::from(s.slot))
        .collect();
    for s in &allotment.steering {
        if let Err(e) = dp.set_class(u32::from(s.slot), s.class, s.config) {
            steering_errors.push(e);
        }
    }
    // A VM that lost its classes: its traffic goes back to the default class.
    for slot in slots.iter().filter(|s| !steered.contains(s)) {
        for c in [class::MIGRATION, class::APPLICATION] {
            if let Err(e) = dp.set_class(*slot, c, ClassConfig::default()) {
                steering_errors.push(e);
            }
        }
    }
    Ok(Enforced {
        report,
        steering_errors,
    })
}
