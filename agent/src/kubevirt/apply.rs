//! Brings the datapath's tables to a [`Desired`] state: diffs it against
//! what this applier registered before and makes only the changes.
//!
//! Each VMI gets a datapath slot, stable while the VMI is desired: the
//! slot of its `[[vm]]` entry when it has one ([`Applier::with_pinned`]),
//! else a free one from the discovery's range. A failed table write is reported and not recorded as applied, so the next
//! reconcile retries it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::RangeInclusive,
};

use super::{
    KubevirtError,
    reconcile::{Desired, PortClaim, Side},
};
use crate::{
    api::{FlowMatch, FlowStatus, TrafficClass},
    datapath::{Datapath, PortSide},
};

/// What is registered for one VMI.
#[derive(Debug, Clone, Default, PartialEq)]
struct Applied {
    slot: u32,
    addresses: BTreeSet<IpAddr>,
    macs: BTreeSet<[u8; 6]>,
    /// ifindex -> interface name.
    taps: BTreeMap<u32, String>,
    claims: BTreeSet<PortClaim>,
}

/// One table change, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddPort {
        vm: String,
        slot: u32,
        side: Side,
        port: u16,
    },
    RemovePort {
        vm: String,
        side: Side,
        port: u16,
    },
    AddAddress {
        vm: String,
        slot: u32,
        ip: IpAddr,
    },
    RemoveAddress {
        vm: String,
        ip: IpAddr,
    },
    AddMac {
        vm: String,
        slot: u32,
        mac: [u8; 6],
    },
    RemoveMac {
        vm: String,
        mac: [u8; 6],
    },
    AddTap {
        vm: String,
        slot: u32,
        ifindex: u32,
        name: String,
    },
    RemoveTap {
        vm: String,
        ifindex: u32,
        name: String,
    },
}

/// The outcome of one [`Applier::apply`].
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub changes: Vec<Change>,
    pub errors: Vec<KubevirtError>,
}

/// Keeps this node's KubeVirt registrations in the datapath.
#[derive(Debug)]
pub struct Applier {
    slots: RangeInclusive<u32>,
    /// `namespace/name` -> the slot of the `[[vm]]` entry of that name.
    pinned: BTreeMap<String, u32>,
    applied: BTreeMap<String, Applied>,
}

fn port_side(side: Side) -> PortSide {
    match side {
        Side::Local => PortSide::Local,
        Side::Remote => PortSide::Remote,
    }
}

impl Applier {
    /// An applier that allocates VM slots from `slots` (the daemon gives
    /// each discovery source its own range).
    pub fn new(slots: RangeInclusive<u32>) -> Self {
        Applier {
            slots,
            pinned: BTreeMap::new(),
            applied: BTreeMap::new(),
        }
    }

    /// VMIs (`namespace/name`) that use a slot of their own outside the
    /// range: a `[[vm]]` entry of that name, which says how to reach the
    /// VM's QEMU (so the control loop follows it), while discovery
    /// registers its flows into the same slot.
    pub fn with_pinned(mut self, pinned: BTreeMap<String, u32>) -> Self {
        self.pin(pinned);
        self
    }

    /// As [`Applier::with_pinned`], in place.
    pub fn pin(&mut self, pinned: BTreeMap<String, u32>) {
        self.pinned = pinned;
    }

    /// The slot of a VMI (`namespace/name`), if it has one.
    pub fn slot(&self, vm: &str) -> Option<u32> {
        self.applied.get(vm).map(|a| a.slot)
    }

    /// VMIs with a slot, and their slots.
    pub fn slots(&self) -> impl Iterator<Item = (&str, u32)> {
        self.applied.iter().map(|(k, a)| (k.as_str(), a.slot))
    }

    fn free_slot(&self) -> Option<u32> {
        let used: BTreeSet<u32> = self.applied.values().map(|a| a.slot).collect();
        self.slots.clone().find(|s| !used.contains(s))
    }

    /// Makes the datapath hold `desired`: removals first (so a port or
    /// address moving between VMs is free when it is added), then additions.
    pub fn apply(&mut self, dp: &mut Datapath, desired: &Desired) -> ApplyReport {
        let mut report = ApplyReport::default();
        // Removals: whole VMs that are gone, then entries no longer wanted.
        let gone: Vec<String> = self
            .applied
            .keys()
            .filter(|k| !desired.vms.contains_key(*k))
            .cloned()
            .collect();
        let empty = Applied::default();
        for key in self.applied.keys().cloned().collect::<Vec<_>>() {
            let want = desired.vms.get(&key);
            let Some(have) = self.applied.get_mut(&key) else {
                continue;
            };
            let want_claims = want
                .and_then(|w| w.migration.as_ref())
                .map(|m| m.claims.clone())
                .unwrap_or_default();
            let want_addresses = want.map_or(&empty.addresses, |w| &w.addresses);
            let want_macs = want.map_or(&empty.macs, |w| &w.macs);
            let want_taps = want.map_or(&empty.taps, |w| &w.taps);
            for (ifindex, name) in have.taps.clone() {
                if want_taps.get(&ifindex) == Some(&name) {
                    continue;
                }
                match dp.remove_vm_tap(ifindex) {
                    Ok(()) => {
                        have.taps.remove(&ifindex);
                        report.changes.push(Change::RemoveTap {
                            vm: key.clone(),
                            ifindex,
                            name,
                        });
                    }
                    Err(e) => {
                        report
                            .errors
                            .push(KubevirtError::datapath(&key, "remove interface", e))
                    }
                }
            }
            for claim in have.claims.clone().difference(&want_claims) {
                match dp.clear_migration_ports(port_side(claim.side), claim.port, claim.port) {
                    Ok(()) => {
                        have.claims.remove(claim);
                        report.changes.push(Change::RemovePort {
                            vm: key.clone(),
                            side: claim.side,
                            port: claim.port,
                        });
                    }
                    Err(e) => report
                        .errors
                        .push(KubevirtError::datapath(&key, "remove port", e)),
                }
            }
            for ip in have.addresses.clone().difference(want_addresses) {
                match dp.remove_vm_ip(*ip) {
                    Ok(()) => {
                        have.addresses.remove(ip);
                        report.changes.push(Change::RemoveAddress {
                            vm: key.clone(),
                            ip: *ip,
                        });
                    }
                    Err(e) => {
                        report
                            .errors
                            .push(KubevirtError::datapath(&key, "remove address", e))
                    }
                }
            }
            for mac in have.macs.clone().difference(want_macs) {
                match dp.remove_vm_mac(*mac) {
                    Ok(()) => {
                        have.macs.remove(mac);
                        report.changes.push(Change::RemoveMac {
                            vm: key.clone(),
                            mac: *mac,
                        });
                    }
                    Err(e) => report
                        .errors
                        .push(KubevirtError::datapath(&key, "remove MAC", e)),
                }
            }
        }
        for key in gone {
            // Release the slot only once everything of the VM is gone.
            if self.applied.get(&key).is_some_and(|a| {
                a.claims.is_empty()
                    && a.addresses.is_empty()
                    && a.macs.is_empty()
                    && a.taps.is_empty()
            }) {
                self.applied.remove(&key);
            }
        }
        // Additions.
        for (key, want) in &desired.vms {
            let slot = match self
                .slot(key)
                .or_else(|| self.pinned.get(key).copied())
                .or_else(|| self.free_slot())
            {
                Some(s) => s,
                None => {
                    report.errors.push(KubevirtError::NoFreeSlot {
                        vm: key.clone(),
                        range: self.slots.clone(),
                    });
                    continue;
                }
            };
            let have = self.applied.entry(key.clone()).or_insert_with(|| Applied {
                slot,
                ..Applied::default()
            });
            let claims = want
                .migration
                .as_ref()
                .map(|m| m.claims.clone())
                .unwrap_or_default();
            for claim in claims.difference(&have.claims.clone()) {
                match dp.set_migration_ports(slot, port_side(claim.side), claim.port, claim.port) {
                    Ok(()) => {
                        have.claims.insert(*claim);
                        report.changes.push(Change::AddPort {
                            vm: key.clone(),
                            slot,
                            side: claim.side,
                            port: claim.port,
                        });
                    }
                    Err(e) => report
                        .errors
                        .push(KubevirtError::datapath(key, "add port", e)),
                }
            }
            for ip in want.addresses.difference(&have.addresses.clone()) {
                match dp.add_vm_ip(slot, *ip) {
                    Ok(()) => {
                        have.addresses.insert(*ip);
                        report.changes.push(Change::AddAddress {
                            vm: key.clone(),
                            slot,
                            ip: *ip,
                        });
                    }
                    Err(e) => report
                        .errors
                        .push(KubevirtError::datapath(key, "add address", e)),
                }
            }
            for (ifindex, name) in &want.taps {
                if have.taps.contains_key(ifindex) {
                    continue;
                }
                match dp.add_vm_tap(slot, *ifindex) {
                    Ok(()) => {
                        have.taps.insert(*ifindex, name.clone());
                        report.changes.push(Change::AddTap {
                            vm: key.clone(),
                            slot,
                            ifindex: *ifindex,
                            name: name.clone(),
                        });
                    }
                    Err(e) => report
                        .errors
                        .push(KubevirtError::datapath(key, "add interface", e)),
                }
            }
            for mac in want.macs.difference(&have.macs.clone()) {
                match dp.add_vm_mac(slot, *mac) {
                    Ok(()) => {
                        have.macs.insert(*mac);
                        report.changes.push(Change::AddMac {
                            vm: key.clone(),
                            slot,
                            mac: *mac,
                        });
                    }
                    Err(e) => report
                        .errors
                        .push(KubevirtError::datapath(key, "add MAC", e)),
                }
            }
        }
        report
    }

    /// What is registered, as the status API lists it.
    pub fn flows(&self) -> Vec<FlowStatus> {
        let mut out = Vec::new();
        for (vm, a) in &self.applied {
            for c in &a.claims {
                let port = c.port.to_string();
                let (local, remote, matches) = match c.side {
                    Side::Local => (port, "*".to_owned(), FlowMatch::LocalPorts),
                    Side::Remote => ("*".to_owned(), port, FlowMatch::RemotePorts),
                };
                out.push(FlowStatus {
                    vm: vm.clone(),
                    slot: a.slot,
                    class: TrafficClass::Migration,
                    matches,
                    local,
                    remote,
                    proto: "any".into(),
                    source: "kubevirt".into(),
                });
            }
            let addresses = a.addresses.iter().map(IpAddr::to_string);
            let macs = a.macs.iter().map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            });
            let taps = a.taps.values().map(|n| format!("tap {n}"));
            for addr in addresses.chain(macs).chain(taps) {
                out.push(FlowStatus {
                    vm: vm.clone(),
                    slot: a.slot,
                    class: TrafficClass::Application,
                    matches: FlowMatch::VmAddress,
                    local: addr,
                    remote: "*".into(),
                    proto: "any".into(),
                    source: "kubevirt".into(),
                });
            }
        }
        out
    }
}
