//! VMs that come and go while the agent runs: `[discovery] libvirt`.
//!
//! Each domain libvirt reports running gets a VM slot, its taps and MACs
//! registered in the datapath, and a task that follows its migrations
//! ([`super::vm::follow`]), exactly as a `[[vm]]` entry with `libvirt`
//! would. A domain with a `[[vm]]` entry of the same name is left to that
//! entry. When a domain stops (including when its outgoing migration
//! completed and libvirt removed it), its task gets [`GRACE`] to record the
//! migration's end; then the task stops, the VM leaves the agent's state
//! (the control loop drops its classes on the next tick), its datapath
//! entries and its metric series are removed.
//!
//! Slots are handed out in increasing order and reused only once the range
//! is exhausted, and a reused slot's counters are zeroed: a new domain's
//! series start at 0.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{register_vm, spawn_follow, state::Shared, state::VmState};
use crate::{
    config::{LibvirtEntry, VmEntry},
    libvirt::{DomainChange, DomainWatch, RunningDomain},
};

/// How long a stopped domain's task may still run to record its
/// migration's end.
pub const GRACE: Duration = Duration::from_secs(5);

/// A discovered VM the agent follows.
struct Followed {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    /// Tap ifindexes registered in the datapath for it (its MACs and slot
    /// are in its state's entry).
    taps: Vec<u32>,
    /// When libvirt reported it gone.
    gone_at: Option<Instant>,
}

/// Follows libvirt's domains at `uri` until `stopped`.
pub fn spawn_libvirt(
    shared: Arc<Shared>,
    uri: String,
    uplink: String,
    slots: std::ops::RangeInclusive<u32>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut watch = DomainWatch::start(&uri);
        let mut d = Discovered {
            shared,
            uri,
            uplink,
            next_slot: *slots.start(),
            slots,
            followed: BTreeMap::new(),
        };
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                change = watch.next() => match change {
                    Some(DomainChange::Running(dom)) => d.running(dom),
                    Some(DomainChange::Gone(name)) => d.gone(&name),
                    None => break,
                },
                _ = check.tick() => d.remove_expired().await,
                _ = stopped.changed() => break,
            }
        }
        d.stop_all().await;
        // Joining the watch's thread blocks for up to a second.
        let _ = tokio::task::spawn_blocking(move || drop(watch)).await;
    })
}

struct Discovered {
    shared: Arc<Shared>,
    uri: String,
    uplink: String,
    slots: std::ops::RangeInclusive<u32>,
    next_slot: u32,
    followed: BTreeMap<String, Followed>,
}

impl Discovered {
    fn running(&mut self, dom: RunningDomain) {
        if let Some(f) = self.followed.get_mut(&dom.name) {
            // Started again (or re-listed) before its removal: keep it.
            f.gone_at = None;
            return;
        }
        if self.shared.state().vms.contains_key(&dom.name) {
            info!(domain = %dom.name, "libvirt: domain has a [[vm]] entry; followed as configured");
            return;
        }
        let Some(slot) = self.free_slot() else {
            warn!(domain = %dom.name, "libvirt: no VM slot left; domain not followed");
            self.shared.metrics.error("discovery");
            return;
        };
        let entry = VmEntry {
            libvirt: Some(LibvirtEntry {
                uri: self.uri.clone(),
                domain: dom.name.clone(),
                pid_file: None,
            }),
            qmp: None,
            macs: dom.macs.iter().filter_map(|m| m.parse().ok()).collect(),
            taps: dom.taps.clone(),
            ..VmEntry::qmp(dom.name.clone(), "")
        };
        let taps = {
            let mut dp = self.shared.datapath();
            if let Err(e) = dp.reset_vm_counters(slot) {
                warn!(domain = %dom.name, slot, error = %crate::api::errors::chain(&e), "zeroing the slot's counters");
            }
            register_vm(&mut dp, slot, &entry).unwrap_or_else(|e| {
                warn!(domain = %dom.name, error = %crate::api::errors::chain(&e), "libvirt: registering the domain's addresses");
                self.shared.metrics.error("discovery");
                Vec::new()
            })
        };
        self.shared
            .state()
            .vms
            .insert(dom.name.clone(), VmState::new(slot, entry.clone()));
        let (stop, stop_rx) = watch::channel(false);
        let Some(task) = spawn_follow(&self.shared, &entry, &self.uplink, stop_rx) else {
            // Unreachable: the entry names its libvirt domain.
            self.shared.state().vms.remove(&dom.name);
            return;
        };
        info!(domain = %dom.name, slot, taps = ?dom.taps, "libvirt: following domain");
        self.followed.insert(
            dom.name,
            Followed {
                task,
                stop,
                taps,
                gone_at: None,
            },
        );
        self.shared.wake.notify_one();
    }

    fn gone(&mut self, name: &str) {
        if let Some(f) = self.followed.get_mut(name) {
            f.gone_at.get_or_insert_with(Instant::now);
        }
    }

    /// Removes the VMs gone for longer than [`GRACE`].
    async fn remove_expired(&mut self) {
        let expired: Vec<String> = self
            .followed
            .iter()
            .filter(|(_, f)| f.gone_at.is_some_and(|t| t.elapsed() >= GRACE))
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            if let Some(f) = self.followed.remove(&name) {
                self.remove(&name, f).await;
            }
        }
    }

    async fn remove(&self, name: &str, f: Followed) {
        let _ = f.stop.send(true);
        let mut task = f.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        let left = self.shared.state().vms.remove(name);
        {
            let mut dp = self.shared.datapath();
            for idx in &f.taps {
                let _ = dp.remove_vm_tap(*idx);
            }
            for mac in left.iter().flat_map(|v| &v.entry.macs) {
                let _ = dp.remove_vm_mac(mac.octets());
            }
        }
        self.shared.metrics.forget_vm(name);
        self.shared.wake.notify_one();
        let slot = left.map(|v| v.slot);
        info!(domain = %name, slot, "libvirt: domain left; no longer followed");
    }

    async fn stop_all(&mut self) {
        for f in self.followed.values() {
            let _ = f.stop.send(true);
        }
        for (_, f) in std::mem::take(&mut self.followed) {
            let _ = tokio::time::timeout(Duration::from_secs(5), f.task).await;
        }
    }

    fn free_slot(&mut self) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> =
            self.shared.state().vms.values().map(|v| v.slot).collect();
        let slot = next_free(&self.slots, self.next_slot, &used)?;
        self.next_slot = slot + 1;
        Some(slot)
    }
}

/// The first slot of `slots` from `next` on that is not `used`, wrapping
/// around to the range's start.
fn next_free(
    slots: &std::ops::RangeInclusive<u32>,
    next: u32,
    used: &std::collections::BTreeSet<u32>,
) -> Option<u32> {
    let (first, last) = (*slots.start(), *slots.end());
    let n = last.checked_sub(first)? + 1;
    let from = next.clamp(first, last + 1) - first;
    (0..n)
        .map(|i| first + (from + i) % n)
        .find(|s| !used.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_up_and_wrap_around_to_free_ones() {
        let used = |v: &[u32]| v.iter().copied().collect();
        assert_eq!(next_free(&(5..=8), 5, &used(&[])), Some(5));
        // A freed slot is not reused while later ones are free.
        assert_eq!(next_free(&(5..=8), 7, &used(&[6])), Some(7));
        assert_eq!(next_free(&(5..=8), 9, &used(&[6, 8])), Some(5));
        assert_eq!(next_free(&(5..=8), 9, &used(&[5, 6, 7, 8])), None);
        assert_eq!(next_free(&(5..=8), 0, &used(&[5])), Some(6));
    }
}
