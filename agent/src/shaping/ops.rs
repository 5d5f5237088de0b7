//! Reconciling, the pure half: what the kernel holds (read back from a
//! dump) against what is desired, as an ordered list of operations.

use std::collections::BTreeMap;

use super::{
    desired::{DesiredClass, DesiredTree},
    handles::{self, ClassRole},
    messages::TcEntry,
    tca::{self, HtbClassParams, TcaError},
};

/// One class of vmbw's tree as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedClass {
    pub handle: u32,
    pub parent: u32,
    pub params: HtbClassParams,
    /// The class's leaf qdisc (a `bfifo`, or `fq` in EDT mode).
    pub leaf: Option<Leaf>,
    /// Bytes and packets the class has sent (kernel counters).
    pub bytes: u64,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub kind: String,
    pub handle: u32,
    /// A `bfifo`'s limit in bytes.
    pub limit_bytes: Option<u32>,
}

impl Leaf {
    fn is(&self, want: LeafKind) -> bool {
        match want {
            LeafKind::Fq => self.kind == "fq",
            LeafKind::Fifo { limit_bytes } => {
                self.kind == "bfifo" && self.limit_bytes == Some(limit_bytes)
            }
        }
    }
}

/// The leaf qdisc a VM class gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// `fq`, which paces by `skb->tstamp` (EDT mode).
    Fq,
    /// A FIFO bounded in bytes. HTB's own leaf is a `pfifo` as long as the
    /// device's txqueuelen: 1000 frames, 1.5 MB, 1.2 s of queue at
    /// 10 Mbit/s. A migration's TCP stream fills all of it, and QEMU's
    /// final stop then waits for that queue to drain.
    Fifo { limit_bytes: u32 },
}

/// vmbw's tree on one device, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTree {
    /// The root qdisc's default class minor.
    pub default_minor: u32,
    pub classes: BTreeMap<u32, ObservedClass>,
}

impl ObservedTree {
    /// Picks vmbw's tree out of a device's qdisc and class dumps. `None`
    /// if the device's root is not vmbw's HTB qdisc.
    pub fn from_dump(qdiscs: &[TcEntry], classes: &[TcEntry]) -> Result<Option<Self>, TcaError> {
        let Some(root) = qdiscs
            .iter()
            .find(|q| q.parent == handles::TC_H_ROOT && q.handle == handles::root_qdisc())
        else {
            return Ok(None);
        };
        if root.kind != "htb" {
            return Ok(None);
        }
        let default_minor = tca::htb_qdisc_default(root.options.as_deref().unwrap_or_default())?;
        let mut tree = ObservedTree {
            default_minor,
            classes: BTreeMap::new(),
        };
        for c in classes
            .iter()
            .filter(|c| c.kind == "htb" && handles::major(c.handle) == handles::VMBW_MAJOR)
        {
            let params = HtbClassParams::decode(c.options.as_deref().unwrap_or_default())?;
            let leaf = qdiscs.iter().find(|q| q.parent == c.handle).map(|q| Leaf {
                kind: q.kind.clone(),
                handle: q.handle,
                // A limit that cannot be read is treated as wrong: the leaf
                // gets replaced.
                limit_bytes: match q.kind.as_str() {
                    "bfifo" => tca::fifo_limit(q.options.as_deref().unwrap_or_default()).ok(),
                    _ => None,
                },
            });
            // HTB reports the parent of a top-level class as TC_H_ROOT,
            // not as its qdisc.
            let parent = if c.parent == handles::TC_H_ROOT {
                root.handle
            } else {
                c.parent
            };
            tree.classes.insert(
                c.handle,
                ObservedClass {
                    handle: c.handle,
                    parent,
                    params,
                    leaf,
                    bytes: c.bytes,
                    packets: c.packets,
                },
            );
        }
        Ok(Some(tree))
    }
}

/// One step of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a class.
    Add(DesiredClass),
    /// Change a class in place: queue, counters and handle stay.
    Change(DesiredClass),
    /// Delete a class vmbw no longer wants.
    Delete { handle: u32 },
    /// Give a class its leaf qdisc: a new one when the kind differs (the
    /// old queue is dropped), in place when only a FIFO's limit changes
    /// (an application class's limit follows its rate).
    Leaf { class: u32, kind: LeafKind },
}

/// What to do, plus classes in vmbw's qdisc that vmbw did not make and
/// leaves alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ops {
    pub ops: Vec<Op>,
    pub foreign: Vec<u32>,
}

/// The operations that turn `observed` into `desired`. With `fq`
/// (EDT mode on a kernel that has fq) VM classes get fq leaves; without,
/// byte-bounded FIFOs ([`DesiredTree::queue_bytes`], shorter for
/// applications: [`DesiredTree::app_queue_bytes`]). Order: deletions,
/// in-place changes (root first), additions, then leaves.
pub fn diff(observed: &ObservedTree, desired: &DesiredTree, mtu: u32, fq: bool) -> Ops {
    let wanted = desired.classes(mtu);
    let wanted_handles: Vec<u32> = wanted.iter().map(|c| c.handle).collect();
    let mut out = Ops::default();
    let (mut deletes, mut changes, mut adds, mut leaves) = (vec![], vec![], vec![], vec![]);

    for (handle, _) in observed.classes.iter().rev() {
        if wanted_handles.contains(handle) {
            continue;
        }
        match handles::class_role(*handle) {
            Some(ClassRole::Vm { .. } | ClassRole::Urgent | ClassRole::Probe) => {
                deletes.push(Op::Delete { handle: *handle });
            }
            // Root and default are always wanted; anything else in our
            // qdisc was made by someone else.
            _ => out.foreign.push(*handle),
        }
    }
    for want in &wanted {
        match observed.classes.get(&want.handle) {
            None => adds.push(Op::Add(*want)),
            // HTB cannot move a class: recreate it under the right parent.
            Some(have) if have.parent != want.parent => {
                deletes.push(Op::Delete {
                    handle: want.handle,
                });
                adds.push(Op::Add(*want));
            }
            Some(have) if have.params != want.params => changes.push(Op::Change(*want)),
            Some(_) => {}
        }
        let Some(limit_bytes) = want.leaf else {
            continue;
        };
        let leaf_kind = if fq {
            LeafKind::Fq
        } else {
            LeafKind::Fifo { limit_bytes }
        };
        let leaf = observed
            .classes
            .get(&want.handle)
            .and_then(|c| c.leaf.as_ref());
        if !leaf.is_some_and(|l| l.is(leaf_kind)) {
            leaves.push(Op::Leaf {
                class: want.handle,
                kind: leaf_kind,
            });
        }
    }
    out.ops = deletes
        .into_iter()
        .chain(changes)
        .chain(adds)
        .chain(leaves)
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::{
        desired::{ClassSpec, Rate, VmShaping, gso_packet_bytes},
        handles::{TrafficClass, class_handle, default_class, root_class, root_qdisc},
    };

    fn desired() -> DesiredTree {
        let link = Rate::mbit(100);
        DesiredTree::new(link, ClassSpec::borrowing(Rate::mbit(10), link)).with_vm(
            0,
            VmShaping {
                migration: ClassSpec::borrowing(Rate::mbit(60), link),
                application: ClassSpec::borrowing(Rate::mbit(30), link),
            },
        )
    }

    /// What the kernel would report after applying `t` fully.
    fn observed_from(t: &DesiredTree, leaf_kind: &str) -> ObservedTree {
        let mut tree = ObservedTree {
            default_minor: 2,
            ..Default::default()
        };
        for (i, c) in t.classes(1500).into_iter().enumerate() {
            tree.classes.insert(
                c.handle,
                ObservedClass {
                    handle: c.handle,
                    parent: c.parent,
                    params: c.params,
                    leaf: Some(Leaf {
                        kind: leaf_kind.into(),
                        handle: 0x8001_0000 + ((i as u32) << 16),
                        limit_bytes: (leaf_kind == "bfifo").then_some(c.leaf).flatten(),
                    }),
                    bytes: 0,
                    packets: 0,
                },
            );
        }
        tree
    }

    #[test]
    fn empty_tree_gets_everything_added_root_first_then_bounded_leaves() {
        let p = diff(&ObservedTree::default(), &desired(), 1500, false);
        let (adds, leaves) = p.ops.split_at(4);
        let handles: Vec<u32> = adds
            .iter()
            .map(|op| match op {
                Op::Add(c) => c.handle,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            handles,
            [0x7662_0001, 0x7662_0002, 0x7662_0011, 0x7662_0012]
        );
        // The migration's: 50 ms at the 100 Mbit/s link; the
        // application's: 30 ms at its own 30 Mbit/s.
        assert_eq!(
            leaves,
            [
                Op::Leaf {
                    class: 0x7662_0011,
                    kind: LeafKind::Fifo {
                        limit_bytes: 625_000
                    },
                },
                Op::Leaf {
                    class: 0x7662_0012,
                    kind: LeafKind::Fifo {
                        limit_bytes: 112_500
                    },
                }
            ]
        );
    }

    #[test]
    fn the_queue_is_50_ms_of_the_link_within_16_and_1000_frames() {
        let tree = |link| DesiredTree::new(link, ClassSpec::borrowing(Rate::mbit(1), link));
        assert_eq!(tree(Rate::mbit(30)).queue_bytes(1500), 187_500);
        assert_eq!(tree(Rate::mbit(1)).queue_bytes(1500), 16 * 1514);
        assert_eq!(tree(Rate::gbit(10)).queue_bytes(1500), 1000 * 1514);
    }

    #[test]
    fn an_application_queue_is_30_ms_of_its_own_rate_within_a_gso_packet_and_the_link_s() {
        let link = Rate::mbit(30);
        let tree = DesiredTree::new(link, ClassSpec::borrowing(Rate::mbit(1), link));
        let app = |mbit| ClassSpec::borrowing(Rate::mbit(mbit), link);
        // A 64 KiB GSO packet: 46 segments of 1448 bytes, 46 frames.
        assert_eq!(gso_packet_bytes(1500), 46 * 1514);
        assert_eq!(gso_packet_bytes(9000), 8 * 9014);
        // 10 Mbit/s: 30 ms is 37.5 KB, less than one GSO packet.
        assert_eq!(tree.app_queue_bytes(&app(10), 1500), 46 * 1514);
        assert_eq!(tree.app_queue_bytes(&app(1), 1500), 46 * 1514);
        // 20 Mbit/s: 75 KB.
        assert_eq!(tree.app_queue_bytes(&app(20), 1500), 75_000);
        assert_eq!(
            tree.app_queue_bytes(&app(30), 1500),
            112_500,
            "30 ms of the whole link is below the link's 50 ms"
        );
        let tiny = DesiredTree::new(Rate::mbit(1), ClassSpec::borrowing(Rate::mbit(1), link));
        assert_eq!(tiny.app_queue_bytes(&app(1), 1500), tiny.queue_bytes(1500));
    }

    #[test]
    fn htb_s_own_leaf_or_a_stale_limit_is_replaced() {
        let d = desired();
        let p = diff(&observed_from(&d, "pfifo"), &d, 1500, false);
        assert_eq!(p.ops.len(), 2, "{p:?}");
        let slower = DesiredTree {
            link: Rate::mbit(50),
            ..d.clone()
        };
        let p = diff(&observed_from(&d, "bfifo"), &slower, 1500, false);
        assert!(
            p.ops.contains(&Op::Leaf {
                class: 0x7662_0011,
                kind: LeafKind::Fifo {
                    limit_bytes: 312_500
                }
            }),
            "{p:?}"
        );
    }

    #[test]
    fn applied_tree_needs_nothing() {
        let d = desired();
        assert_eq!(
            diff(&observed_from(&d, "bfifo"), &d, 1500, false),
            Ops::default()
        );
    }

    #[test]
    fn a_rate_change_is_one_in_place_change() {
        let d = desired();
        let have = observed_from(&d, "bfifo");
        let mut want = d.clone();
        if let Some(vm) = want.vms.get_mut(&0) {
            vm.migration.rate = Rate::mbit(20);
        }
        let p = diff(&have, &want, 1500, false);
        assert_eq!(p.ops.len(), 1);
        match &p.ops[0] {
            Op::Change(c) => {
                assert_eq!(Some(c.handle), class_handle(0, TrafficClass::Migration));
                assert_eq!(c.params.rate, Rate::mbit(20).bytes_per_sec());
            }
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn an_application_s_new_rate_changes_its_class_and_its_leaf_s_limit() {
        let d = desired();
        let have = observed_from(&d, "bfifo");
        let mut want = d.clone();
        if let Some(vm) = want.vms.get_mut(&0) {
            vm.application = ClassSpec::borrowing(Rate::mbit(20), Rate::mbit(100));
        }
        let app = class_handle(0, TrafficClass::Application);
        let p = diff(&have, &want, 1500, false);
        assert_eq!(p.ops.len(), 2, "{p:?}");
        assert!(matches!(&p.ops[0], Op::Change(c) if Some(c.handle) == app));
        // 30 ms at 20 Mbit/s.
        assert!(matches!(
            &p.ops[1],
            Op::Leaf { class, kind: LeafKind::Fifo { limit_bytes: 75_000 } } if Some(*class) == app
        ));
    }

    #[test]
    fn the_urgent_class_comes_and_goes_with_the_tree() {
        let mut with = desired();
        with.urgent = Some(ClassSpec::borrowing(Rate::mbit(1), Rate::mbit(100)).with_prio(0));
        let p = diff(&ObservedTree::default(), &with, 1500, false);
        let urgent = handles::urgent_class();
        assert_eq!(urgent, 0x7662_0003);
        assert!(
            p.ops
                .iter()
                .any(|o| matches!(o, Op::Add(c) if c.handle == urgent && c.parent == root_class()))
        );
        assert!(
            p.ops
                .iter()
                .any(|o| matches!(o, Op::Leaf { class, .. } if *class == urgent)),
            "the urgent class has a bounded leaf too"
        );
        let have = observed_from(&with, "bfifo");
        assert!(diff(&have, &with, 1500, false).ops.is_empty());
        let p = diff(&have, &desired(), 1500, false);
        assert_eq!(p.ops, [Op::Delete { handle: urgent }]);
        assert!(p.foreign.is_empty());
    }

    #[test]
    fn removed_vms_and_a_stale_probe_are_deleted_first_foreign_left_alone() {
        let d = desired();
        let mut have = observed_from(&d, "bfifo");
        let mut extra = have.classes[&root_class()].clone();
        extra.handle = handles::probe_class();
        have.classes.insert(extra.handle, extra.clone());
        extra.handle = 0x7662_0abc; // not a handle vmbw makes
        have.classes.insert(extra.handle, extra);
        let mut want = d.clone();
        want.vms.clear();
        want.vms.insert(
            5,
            VmShaping {
                migration: ClassSpec::fixed(Rate::mbit(1)),
                application: ClassSpec::fixed(Rate::mbit(1)),
            },
        );
        let p = diff(&have, &want, 1500, false);
        assert_eq!(p.foreign, [0x7662_0abc]);
        let kinds: Vec<String> = p
            .ops
            .iter()
            .map(|o| format!("{o:?}")[..3].to_owned())
            .collect();
        assert_eq!(kinds, ["Del", "Del", "Del", "Add", "Add", "Lea", "Lea"]);
        assert!(p.ops.contains(&Op::Delete {
            handle: handles::probe_class()
        }));
    }

    #[test]
    fn edt_mode_puts_fq_on_vm_classes_only_and_back() {
        let d = desired();
        let p = diff(&observed_from(&d, "pfifo"), &d, 1500, true);
        let leaves = |kind| {
            vec![
                Op::Leaf {
                    class: 0x7662_0011,
                    kind,
                },
                Op::Leaf {
                    class: 0x7662_0012,
                    kind,
                },
            ]
        };
        assert_eq!(p.ops, leaves(LeafKind::Fq));
        let with_fq = observed_from(&d, "fq");
        assert_eq!(diff(&with_fq, &d, 1500, true), Ops::default());
        let back = diff(&with_fq, &d, 1500, false);
        assert_eq!(
            back.ops,
            [
                Op::Leaf {
                    class: 0x7662_0011,
                    kind: LeafKind::Fifo {
                        limit_bytes: d.queue_bytes(1500)
                    },
                },
                Op::Leaf {
                    class: 0x7662_0012,
                    kind: LeafKind::Fifo {
                        limit_bytes: 112_500
                    },
                },
            ]
        );
    }

    #[test]
    fn reads_its_tree_from_a_dump() {
        let d = desired();
        let mut qdiscs = vec![TcEntry {
            ifindex: 3,
            handle: root_qdisc(),
            parent: handles::TC_H_ROOT,
            kind: "htb".into(),
            options: Some(tca::htb_qdisc_options(2)),
            bytes: 0,
            packets: 0,
        }];
        let mut classes = vec![];
        for (i, c) in d.classes(1500).into_iter().enumerate() {
            classes.push(TcEntry {
                ifindex: 3,
                handle: c.handle,
                // As the kernel dumps a top-level HTB class.
                parent: if c.parent == root_qdisc() {
                    handles::TC_H_ROOT
                } else {
                    c.parent
                },
                kind: "htb".into(),
                options: Some(c.params.encode()),
                bytes: 100 * i as u64,
                packets: i as u64,
            });
            qdiscs.push(TcEntry {
                ifindex: 3,
                handle: 0x8001_0000 + ((i as u32) << 16),
                parent: c.handle,
                kind: "bfifo".into(),
                options: Some(tca::fifo_options(c.leaf.unwrap_or(d.queue_bytes(1500)))),
                bytes: 0,
                packets: 0,
            });
        }
        let tree = ObservedTree::from_dump(&qdiscs, &classes)
            .expect("decodes")
            .expect("is vmbw's");
        assert_eq!(tree.default_minor, 2);
        assert_eq!(tree.classes[&default_class()].bytes, 100);
        assert_eq!(diff(&tree, &d, 1500, false), Ops::default());

        qdiscs[0].handle = 0x0001_0000; // someone else's htb
        assert_eq!(ObservedTree::from_dump(&qdiscs, &classes), Ok(None));
    }
}
