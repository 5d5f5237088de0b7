//! Stable tc handles for vmbw's HTB tree.
//!
//! The datapath steers a packet into an HTB class by writing the class
//! handle (`major << 16 | minor`) into `skb->priority`; HTB then enqueues it
//! straight into that leaf. So a handle must be a pure function of what the
//! datapath knows (the VM's slot and the traffic class) and must never
//! change while the agent runs or restarts. Everything here is `const` and
//! free of I/O, so the same arithmetic can be used anywhere.
//!
//! Layout under the root qdisc `7662:` ("vb" in ASCII):
//!
//! | handle          | what                                             |
//! |-----------------|--------------------------------------------------|
//! | `7662:1`        | root class, rate = ceil = link rate              |
//! | `7662:2`        | default class (unclassified traffic)             |
//! | `7662:3`        | urgent class: pages post-copy guests wait for    |
//! | `7662:S1`/`S2`  | VM slot `S-1`: migration (`…1`) / application (`…2`) |
//! | `7662:fffe`     | short-lived class used to probe for `fq`         |
//!
//! i.e. a VM class minor is `(slot + 1) << 4 | class`, slots 0..=4094.

/// Major number of vmbw's root HTB qdisc (`7662:`, "vb"). Finding an HTB
/// root with this major is how an agent recognises its own tree.
pub const VMBW_MAJOR: u16 = 0x7662;
/// Minor of the root class that carries the link rate.
pub const ROOT_CLASS_MINOR: u16 = 0x1;
/// Minor of the class that unclassified traffic falls into (HTB `default`).
pub const DEFAULT_CLASS_MINOR: u16 = 0x2;
/// Minor of the class that post-copy's requested pages go to (the flows
/// flagged `FLOW_URGENT`).
pub const URGENT_CLASS_MINOR: u16 = 0x3;
/// Minor of the temporary class under which `fq` support is probed.
pub const PROBE_CLASS_MINOR: u16 = 0xfffe;
/// Highest VM slot that has class handles.
pub const MAX_VM_SLOT: u16 = 0x0ffe;

/// `TC_H_ROOT`: the parent of a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;

/// The two classes each VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficClass {
    /// The VM's live-migration stream.
    Migration,
    /// The VM's own (application) traffic, with its reserved bandwidth.
    Application,
}

impl TrafficClass {
    pub const ALL: [TrafficClass; 2] = [TrafficClass::Migration, TrafficClass::Application];

    const fn nibble(self) -> u16 {
        match self {
            TrafficClass::Migration => 1,
            TrafficClass::Application => 2,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Migration => "migration",
            TrafficClass::Application => "application",
        }
    }
}

impl std::fmt::Display for TrafficClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a tc handle from major and minor.
pub const fn make_handle(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// The major half of a handle.
pub const fn major(handle: u32) -> u16 {
    (handle >> 16) as u16
}

/// The minor half of a handle.
pub const fn minor(handle: u32) -> u16 {
    handle as u16
}

/// The handle of vmbw's root qdisc (`7662:0`).
pub const fn root_qdisc() -> u32 {
    make_handle(VMBW_MAJOR, 0)
}

/// The handle of the root class (`7662:1`).
pub const fn root_class() -> u32 {
    make_handle(VMBW_MAJOR, ROOT_CLASS_MINOR)
}

/// The handle of the default class (`7662:2`).
pub const fn default_class() -> u32 {
    make_handle(VMBW_MAJOR, DEFAULT_CLASS_MINOR)
}

/// The handle of the urgent class (`7662:3`).
pub const fn urgent_class() -> u32 {
    make_handle(VMBW_MAJOR, URGENT_CLASS_MINOR)
}

/// The handle of the `fq` probe class (`7662:fffe`).
pub const fn probe_class() -> u32 {
    make_handle(VMBW_MAJOR, PROBE_CLASS_MINOR)
}

/// The class handle for a VM slot's traffic class: the value the datapath
/// writes into `skb->priority`. `None` if `slot > MAX_VM_SLOT`.
pub const fn class_handle(slot: u16, class: TrafficClass) -> Option<u32> {
    if slot > MAX_VM_SLOT {
        return None;
    }
    Some(make_handle(VMBW_MAJOR, (slot + 1) << 4 | class.nibble()))
}

/// What a class handle in vmbw's tree stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClassRole {
    Root,
    Default,
    Urgent,
    Probe,
    Vm { slot: u16, class: TrafficClass },
}

/// The inverse of the handle functions: which role a handle has in vmbw's
/// tree, or `None` for a handle vmbw never creates.
pub const fn class_role(handle: u32) -> Option<ClassRole> {
    if major(handle) != VMBW_MAJOR {
        return None;
    }
    let minor = minor(handle);
    match minor {
        ROOT_CLASS_MINOR => Some(ClassRole::Root),
        DEFAULT_CLASS_MINOR => Some(ClassRole::Default),
        URGENT_CLASS_MINOR => Some(ClassRole::Urgent),
        PROBE_CLASS_MINOR => Some(ClassRole::Probe),
        _ => {
            let slot_plus_one = minor >> 4;
            if slot_plus_one == 0 || slot_plus_one - 1 > MAX_VM_SLOT {
                return None;
            }
            let class = match minor & 0xf {
                1 => TrafficClass::Migration,
                2 => TrafficClass::Application,
                _ => return None,
            };
            Some(ClassRole::Vm {
                slot: slot_plus_one - 1,
                class,
            })
        }
    }
}

/// Formats a handle the way `tc` prints it (`7662:12`, `7662:`).
pub fn display_handle(handle: u32) -> String {
    if handle == TC_H_ROOT {
        return "root".to_owned();
    }
    match minor(handle) {
        0 => format!("{:x}:", major(handle)),
        m => format!("{:x}:{:x}", major(handle), m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_handles_are_stable_and_readable() {
        assert_eq!(class_handle(0, TrafficClass::Migration), Some(0x7662_0011));
        assert_eq!(
            class_handle(0, TrafficClass::Application),
            Some(0x7662_0012)
        );
        assert_eq!(
            class_handle(0x22, TrafficClass::Application),
            Some(0x7662_0232)
        );
        assert_eq!(
            class_handle(MAX_VM_SLOT, TrafficClass::Application),
            Some(0x7662_fff2)
        );
        assert_eq!(class_handle(MAX_VM_SLOT + 1, TrafficClass::Migration), None);
        assert_eq!(display_handle(0x7662_0012), "7662:12");
        assert_eq!(display_handle(root_qdisc()), "7662:");
    }

    #[test]
    fn every_vm_handle_is_unique_and_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for slot in 0..=MAX_VM_SLOT {
            for class in TrafficClass::ALL {
                let h = class_handle(slot, class).expect("slot in range");
                assert!(seen.insert(h), "duplicate handle {h:#x}");
                assert_eq!(class_role(h), Some(ClassRole::Vm { slot, class }));
                for reserved in [root_class(), default_class(), probe_class()] {
                    assert_ne!(h, reserved);
                }
            }
        }
        assert_eq!(class_role(root_class()), Some(ClassRole::Root));
        assert_eq!(class_role(default_class()), Some(ClassRole::Default));
        assert_eq!(class_role(probe_class()), Some(ClassRole::Probe));
        assert_eq!(class_role(0x7662_0013), None, "nibble 3 is unused");
        assert_eq!(class_role(0x0001_0011), None, "foreign major");
    }
}
