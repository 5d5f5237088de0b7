//! From a [`Decision`] to what the kernel should enforce: the HTB tree on
//! the uplink ([`crate::shaping`]) and the datapath's per-(vm, class)
//! steering ([`crate::datapath`]). Pure: `crate::daemon::enforce` puts the
//! allotment in the kernel.
//!
//! - A VM with an enforced decision gets two classes: its migration class
//!   (rate = the guarantee, ceil = the policy's ceiling) and its application
//!   class (rate = the reservation, ceil = the link). A VM the policy leaves
//!   alone (`default`) gets no classes: its traffic stays in the default
//!   class.
//! - The default class keeps a small guarantee (1% of the link, at least
//!   8 kbit/s) so unclassified traffic is never starved.
//! - HTB honours guarantees only if they fit the link: when they do not,
//!   the migrations' guarantees are scaled down by one factor, and the
//!   applications' reservations (promises among them) only if they alone
//!   do not fit; the allotment says which.
//! - Above the guarantees bandwidth is elastic, and migrations borrow it
//!   first: their classes have HTB priorities 1..=6 (in the policy's
//!   order), the applications' 7 ([`APP_PRIO`]). An application that wants
//!   more than its reservation gets what no migration takes.
//! - While any VM is enforced, one urgent class (1% of the link, ceil the
//!   link, priority 0: it borrows before anyone) carries the pages
//!   post-copy guests wait for (QEMU's preempt channel, registered as an
//!   urgent flow at the switch). In a VM's migration class they waited
//!   behind the background stream's queue, which is what QEMU's separate
//!   channel exists to avoid.
//! - In HTB mode the datapath writes the class handle into `skb->priority`;
//!   in EDT mode it paces the migration at its ceiling (EDT can cap but not
//!   borrow) and leaves the application unpaced.

use std::collections::BTreeMap;

use vmbw_common::{ClassConfig, class};

use super::Decision;
use crate::shaping::{
    ClassSpec, DesiredTree, Enforcement, Rate, TrafficClass, VmShaping, class_handle,
};

/// HTB priority of the applications' classes: they borrow after every
/// migration (seen on the testbed: at equal priority a greedy application
/// with 22 of 30 Mbit/s guaranteed took three quarters of what was left).
pub const APP_PRIO: u8 = 7;

/// HTB priority of the urgent class: post-copy's requested pages borrow
/// before the migrations' background streams.
pub const URGENT_PRIO: u8 = 0;

/// `burst` of the applications' classes, as time at their rate: a
/// sender that stalled (a descheduled vCPU, a paced stream behind a busy
/// guest) catches up on what it saved, instead of its promise needing
/// more rate. Seen on the testbed: a 10 Mbit/s stream from one of two
/// contending TCG guests, guaranteed 5% above its goodput with a 2 ms
/// burst, sat at 9.4 Mbit/s in the seconds after stalls.
pub const APP_BURST_US: u64 = 200_000;

/// Smallest guarantee a class is given (HTB needs a positive rate).
const MIN_RATE_BPS: u64 = 8_000;
/// EDT drop horizon: packets that would wait longer are dropped.
pub const EDT_HORIZON_NS: u64 = 50_000_000;

#[derive(Debug, thiserror::Error)]
pub enum AllotError {
    #[error("VM `{0}` has no slot (register it before enforcing)")]
    NoSlot(String),
    #[error("VM slot {0} cannot have HTB classes (1..=4094)")]
    Slot(u16),
}

/// One (vm, class)'s steering in the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steering {
    pub slot: u16,
    pub class: u32,
    pub config: ClassConfig,
}

/// What a decision becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Allotment {
    pub tree: DesiredTree,
    pub steering: Vec<Steering>,
    /// Factor the migrations' guarantees were scaled by to fit the link
    /// (1.0 = none).
    pub scaled: f64,
    /// Factor the applications' reservations were scaled by: below 1.0
    /// only when they alone do not fit (promises broken by configuration).
    pub reservations_scaled: f64,
}

fn bits(bytes_per_s: f64) -> u64 {
    (bytes_per_s * 8.0).round().max(0.0) as u64
}

/// Builds the allotment for `decision` on a link of `link_bytes_per_s`, with
/// each VM's slot from `slots` (VM name -> slot).
pub fn allot(
    decision: &Decision,
    link_bytes_per_s: f64,
    slots: &BTreeMap<String, u16>,
    enforcement: Enforcement,
) -> Result<Allotment, AllotError> {
    let link = bits(link_bytes_per_s).max(MIN_RATE_BPS * 4);
    let default_rate = (link / 100).max(MIN_RATE_BPS);
    let enforced: Vec<_> = decision
        .vms
        .iter()
        .filter(|d| d.migration_rate.is_some())
        .collect();
    // Every class keeps MIN_RATE_BPS; only what lies above it is scaled, so
    // the scaled guarantees add up to at most the room beside the default
    // class, whatever the rounding. Reservations are kept whole while they
    // fit; the migrations make room.
    let above = |b: f64| bits(b).saturating_sub(MIN_RATE_BPS);
    let above_mig: u64 = enforced
        .iter()
        .map(|d| above(d.migration_rate.unwrap_or(0.0)))
        .sum();
    let above_app: u64 = enforced.iter().map(|d| above(d.app_reserve)).sum();
    // The urgent class only while some VM is enforced (only then can a
    // post-copy be under way that vmbw steers).
    let urgent_rate = if enforced.is_empty() { 0 } else { default_rate };
    let room = link.saturating_sub(default_rate + urgent_rate);
    let room_above = room.saturating_sub(2 * MIN_RATE_BPS * enforced.len() as u64);
    let ratio = |num: u64, den: u64| {
        if den == 0 {
            1.0
        } else {
            num as f64 / den as f64
        }
    };
    let (scaled, reservations_scaled) = if above_mig + above_app <= room_above {
        (1.0, 1.0)
    } else if above_app <= room_above {
        (ratio(room_above - above_app, above_mig), 1.0)
    } else {
        (0.0, ratio(room_above, above_app))
    };
    let scale = |b: u64, factor: f64| {
        MIN_RATE_BPS + (b.saturating_sub(MIN_RATE_BPS) as f64 * factor).floor() as u64
    };

    let mut tree = DesiredTree::new(
        Rate::bits_per_sec(link),
        ClassSpec::borrowing(Rate::bits_per_sec(default_rate), Rate::bits_per_sec(link)),
    );
    tree.enforcement = enforcement;
    if urgent_rate > 0 {
        tree.urgent = Some(
            ClassSpec::borrowing(Rate::bits_per_sec(urgent_rate), Rate::bits_per_sec(link))
                .with_prio(URGENT_PRIO),
        );
    }
    let mut steering = Vec::new();
    for d in enforced {
        let slot = *slots
            .get(&d.name)
            .ok_or_else(|| AllotError::NoSlot(d.name.clone()))?;
        let (Some(mig_handle), Some(app_handle)) = (
            class_handle(slot, TrafficClass::Migration),
            class_handle(slot, TrafficClass::Application),
        ) else {
            return Err(AllotError::Slot(slot));
        };
        let mig_rate = scale(bits(d.migration_rate.unwrap_or(0.0)), scaled);
        let mig_ceil = bits(d.migration_ceil.unwrap_or(link_bytes_per_s)).clamp(mig_rate, link);
        let app_rate = scale(bits(d.app_reserve), reservations_scaled);
        // Migrations first when the link is short: HTB serves lower prio
        // numbers first when borrowing (0 is the urgent class's).
        let prio = d.priority.saturating_add(1).min(u32::from(APP_PRIO) - 1) as u8;
        tree = tree.with_vm(
            slot,
            VmShaping {
                migration: ClassSpec::borrowing(
                    Rate::bits_per_sec(mig_rate),
                    Rate::bits_per_sec(mig_ceil),
                )
                .with_prio(prio),
                application: ClassSpec::borrowing(
                    Rate::bits_per_sec(app_rate),
                    Rate::bits_per_sec(link),
                )
                .with_prio(APP_PRIO)
                .with_burst_us(APP_BURST_US),
            },
        );
        let (mig_cfg, app_cfg) = match enforcement {
            Enforcement::Htb => (
                ClassConfig {
                    priority: mig_handle,
                    ..ClassConfig::default()
                },
                ClassConfig {
                    priority: app_handle,
                    ..ClassConfig::default()
                },
            ),
            Enforcement::Edt => (
                ClassConfig::paced(mig_handle, mig_ceil / 8, EDT_HORIZON_NS),
                ClassConfig {
                    priority: app_handle,
                    ..ClassConfig::default()
                },
            ),
        };
        steering.push(Steering {
            slot,
            class: class::MIGRATION,
            config: mig_cfg,
        });
        steering.push(Steering {
            slot,
            class: class::APPLICATION,
            config: app_cfg,
        });
    }
    Ok(Allotment {
        tree,
        steering,
        scaled,
        reservations_scaled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::VmDecision;

    use crate::api::BYTES_PER_MBIT as MBIT;

    fn decided(name: &str, rate: f64, ceil: f64, reserve: f64) -> VmDecision {
        let mut d = VmDecision::unenforced(name);
        d.enforce(rate * MBIT, ceil * MBIT);
        d.app_reserve = reserve * MBIT;
        d
    }

    fn slots() -> BTreeMap<String, u16> {
        [("a".to_owned(), 1u16), ("b".to_owned(), 2u16)]
            .into_iter()
            .collect()
    }

    #[test]
    fn a_decision_becomes_classes_and_steering() {
        let d = Decision {
            vms: vec![decided("a", 20.0, 100.0, 30.0), VmDecision::unenforced("b")],
        };
        let p = allot(&d, 100.0 * MBIT, &slots(), Enforcement::Htb).expect("allotment");
        assert_eq!(p.scaled, 1.0);
        let vm = p.tree.vms.get(&1).expect("vm a has classes");
        assert_eq!(vm.migration.rate, Rate::mbit(20));
        assert_eq!(vm.migration.ceil, Rate::mbit(100));
        assert_eq!(vm.application.rate, Rate::mbit(30));
        assert!(
            !p.tree.vms.contains_key(&2),
            "unenforced VM b gets no classes"
        );
        assert_eq!(p.tree.default.rate, Rate::mbit(1));
        p.tree.validate().expect("valid tree");
        let mig = p
            .steering
            .iter()
            .find(|s| s.class == class::MIGRATION)
            .expect("steering");
        assert_eq!(
            Some(mig.config.priority),
            class_handle(1, TrafficClass::Migration)
        );
    }

    #[test]
    fn post_copy_pages_get_a_class_that_borrows_first_while_a_vm_is_enforced() {
        let d = Decision {
            vms: vec![decided("a", 20.0, 100.0, 30.0)],
        };
        let p = allot(&d, 100.0 * MBIT, &slots(), Enforcement::Htb).expect("allotment");
        let urgent = p.tree.urgent.expect("an urgent class");
        assert_eq!(urgent.rate, Rate::mbit(1));
        assert_eq!(urgent.ceil, Rate::mbit(100));
        assert_eq!(urgent.prio, URGENT_PRIO);
        let vm = p.tree.vms.get(&1).expect("vm a");
        assert!(vm.migration.prio > URGENT_PRIO && vm.migration.prio < APP_PRIO);
        p.tree.validate().expect("valid tree");

        let idle = Decision {
            vms: vec![VmDecision::unenforced("b")],
        };
        let p = allot(&idle, 100.0 * MBIT, &slots(), Enforcement::Htb).expect("allotment");
        assert!(p.tree.urgent.is_none(), "no VM enforced, no urgent class");
    }

    #[test]
    fn oversubscribed_guarantees_are_scaled_to_fit() {
        let d = Decision {
            vms: vec![
                decided("a", 60.0, 100.0, 30.0),
                decided("b", 30.0, 100.0, 20.0),
            ],
        };
        let p = allot(&d, 100.0 * MBIT, &slots(), Enforcement::Htb).expect("allotment");
        // 140 Mbit wanted, 98 Mbit of room beside the 1 Mbit default and
        // urgent classes (less the four classes' 8 kbit minimums on both
        // sides): the reservations (50) stay whole, the migrations (90)
        // share the rest.
        let min = 8_000.0;
        let room = 98e6 - 4.0 * min;
        let want = (room - (50e6 - 2.0 * min)) / (90e6 - 2.0 * min);
        assert!((p.scaled - want).abs() < 1e-9, "{}", p.scaled);
        assert_eq!(p.reservations_scaled, 1.0);
        let a = p.tree.vms.get(&1).expect("a");
        assert_eq!(a.application.rate, Rate::mbit(30));
        assert_eq!(a.application.prio, APP_PRIO, "applications borrow last");
        assert_eq!(a.application.burst_us, APP_BURST_US);
        assert!(a.migration.prio < APP_PRIO);
        p.tree.validate().expect("fits after scaling");

        // Reservations that alone exceed the link are scaled, and say so.
        let d = Decision {
            vms: vec![
                decided("a", 10.0, 100.0, 70.0),
                decided("b", 10.0, 100.0, 40.0),
            ],
        };
        let p = allot(&d, 100.0 * MBIT, &slots(), Enforcement::Htb).expect("allotment");
        assert_eq!(p.scaled, 0.0);
        assert!(p.reservations_scaled < 1.0);
        p.tree.validate().expect("fits after scaling");
    }

    #[test]
    fn a_guarantee_of_the_whole_link_still_fits() {
        // Seen on the testbed: the final pass guarantees the migration the
        // whole 28.5 Mbit/s link, beside a small reservation.
        for reserve in [0.0, 0.001, 1.0, 5.0] {
            let d = Decision {
                vms: vec![decided("a", 28.5, 28.5, reserve)],
            };
            let p = allot(&d, 28.5 * MBIT, &slots(), Enforcement::Htb).expect("allotment");
            p.tree
                .validate()
                .unwrap_or_else(|e| panic!("reserve {reserve}: {e}"));
        }
    }

    #[test]
    fn edt_paces_the_migration_at_its_ceiling() {
        let d = Decision {
            vms: vec![decided("a", 20.0, 40.0, 0.0)],
        };
        let p = allot(&d, 100.0 * MBIT, &slots(), Enforcement::Edt).expect("allotment");
        let mig = p
            .steering
            .iter()
            .find(|s| s.class == class::MIGRATION)
            .expect("steering");
        assert_eq!(mig.config.rate_bytes_per_s, 5_000_000);
        assert_eq!(mig.config.horizon_ns, EDT_HORIZON_NS);
    }

    #[test]
    fn unknown_vm_is_an_error() {
        let d = Decision {
            vms: vec![decided("zz", 20.0, 40.0, 0.0)],
        };
        assert!(
            matches!(allot(&d, 100.0 * MBIT, &slots(), Enforcement::Htb), Err(AllotError::NoSlot(n)) if n == "zz")
        );
    }
}
