//! Types and names shared by the kernel programs (`vmbw-ebpf`) and user space
//! (`vmbw`). Everything here is `#[repr(C)]`, `Copy` and free of implicit
//! padding (explicit `_pad` fields, sizes asserted), so both sides agree on
//! the bytes of every map key and value.
//!
//! The pure logic the kernel runs per packet (header parsing, classification
//! order, EDT arithmetic) lives here too, so host unit tests reach exactly
//! the code the kernel executes.
#![no_std]

pub mod classify;
pub mod edt;
pub mod parse;

/// Names of the programs in the eBPF object, as user space looks them up.
pub mod program {
    /// tc egress classifier on the host uplink (counts, steers, paces).
    pub const EGRESS: &str = "vmbw_egress";
    /// tc ingress classifier on the host uplink (counts).
    pub const INGRESS: &str = "vmbw_ingress";
}

/// Names of the maps in the eBPF object; also their pin names under the
/// agent's bpffs directory.
pub mod map {
    /// Per-CPU array of [`crate::Counter`], indexed by [`crate::Direction`]:
    /// everything that crossed the interface.
    pub const DIR_COUNTERS: &str = "VMBW_DIR_COUNTERS";
    /// Per-CPU array of [`crate::Counter`], indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "VMBW_COUNTERS";
    /// Hash [`crate::FlowKey`] -> vm slot (u32): exact migration flows.
    pub const FLOWS: &str = "VMBW_FLOWS";
    /// Array of `2 * 65536` u32: vm slot + 1 owning a local (first half) or
    /// remote (second half) port as migration traffic; 0 = nobody.
    pub const PORTS: &str = "VMBW_PORTS";
    /// Hash [`crate::AddrKey`] -> vm slot (u32): VM IPv4/IPv6/MAC addresses.
    pub const ADDRS: &str = "VMBW_ADDRS";
    /// Hash ifindex (u32) -> vm slot (u32): VM tap devices.
    pub const IFINDEX: &str = "VMBW_IFINDEX";
    /// Array of [`crate::ClassConfig`], indexed by [`crate::class_index`].
    pub const CLASS_CONFIG: &str = "VMBW_CLASS_CONFIG";
    /// Array of [`crate::EdtState`], indexed by [`crate::class_index`].
    pub const EDT_STATE: &str = "VMBW_EDT_STATE";
    /// Array with one [`crate::Settings`].
    pub const SETTINGS: &str = "VMBW_SETTINGS";
}

/// VM slots. Slot 0 is "no VM" (host or unknown traffic); user space hands
/// out 1.. to the VMs it registers.
pub const MAX_VMS: u32 = 16384;
/// The slot of traffic that belongs to no registered VM.
pub const NO_VM: u32 = 0;
/// Entries of the port-owner array: local ports, then remote ports.
pub const PORT_ENTRIES: u32 = 2 * 65536;

/// Traffic classes (plain integers: they index maps).
pub mod class {
    /// Unparsed, or parsed but attributed to no flow or VM address.
    pub const OTHER: u32 = 0;
    /// A registered migration flow (5-tuple or port range).
    pub const MIGRATION: u32 = 1;
    /// Traffic to or from a registered VM address, MAC or tap.
    pub const APPLICATION: u32 = 2;
    pub const COUNT: u32 = 3;

    pub const fn name(class: u32) -> &'static str {
        match class {
            MIGRATION => "migration",
            APPLICATION => "application",
            _ => "other",
        }
    }
}

/// What the egress program does beyond counting.
pub mod mode {
    /// Count only; every packet leaves untouched.
    pub const OBSERVE: u32 = 0;
    /// Set `skb->priority` to the (vm, class)'s HTB class handle.
    pub const HTB: u32 = 1;
    /// Set `skb->tstamp` (earliest departure time) per (vm, class) rate.
    pub const EDT: u32 = 2;
}

/// Traffic direction as seen from the host: a small integer used as a map
/// index (plain integers instead of a Rust enum in map layouts).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Egress = 0,
    Ingress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Egress, Direction::Ingress];
    /// Number of entries a per-direction array map needs.
    pub const COUNT: u32 = 2;

    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

/// Index of (vm slot, class) in per-class arrays.
#[inline(always)]
pub const fn class_index(vm: u32, class: u32) -> u32 {
    vm * class::COUNT + class
}

/// Entries of a per-class array.
pub const CLASS_ENTRIES: u32 = MAX_VMS * class::COUNT;

/// Index of (vm slot, class, direction) in [`map::COUNTERS`].
#[inline(always)]
pub const fn counter_index(vm: u32, class: u32, dir: u32) -> u32 {
    class_index(vm, class) * Direction::COUNT + dir
}

/// Entries of [`map::COUNTERS`].
pub const COUNTER_ENTRIES: u32 = CLASS_ENTRIES * Direction::COUNT;

/// A byte and packet counter, with what the EDT pacer dropped. Kept per CPU
/// in the kernel; user space sums the per-CPU values.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Bytes as the kernel sees them at tc (`skb->len`, L2 header included).
    pub bytes: u64,
    pub packets: u64,
    /// Packets the EDT pacer dropped beyond its horizon (not in `packets`).
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

impl Counter {
    /// Adds another counter (used to fold per-CPU values).
    pub fn add(&mut self, other: &Counter) {
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.packets = self.packets.wrapping_add(other.packets);
        self.dropped_packets = self.dropped_packets.wrapping_add(other.dropped_packets);
        self.dropped_bytes = self.dropped_bytes.wrapping_add(other.dropped_bytes);
    }
}

/// Address family tags used in keys.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// An exact migration flow, normalised to the host's point of view: `local`
/// is this host's end (source on egress, destination on ingress). IPv4
/// addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Flag in a [`map::FLOWS`] value (beside the VM slot in the low bits):
/// the flow carries what a guest already running on the destination waits
/// for, i.e. QEMU's post-copy preempt channel, which QEMU opens at the
/// switch so that requested pages do not queue behind the background
/// stream. In HTB mode its packets go to the urgent class
/// ([`Settings::urgent_priority`]) instead of the VM's migration class,
/// where they would wait behind that same stream again; in EDT mode they
/// are not paced. Counted as migration traffic either way.
pub const FLOW_URGENT: u32 = 1 << 31;

/// Kinds of VM address in [`AddrKey`].
pub mod addr_kind {
    /// `addr` holds an IPv4-mapped IPv4 or an IPv6 address.
    pub const IP: u32 = 1;
    /// `addr[..6]` holds a MAC address, the rest is zero.
    pub const MAC: u32 = 2;
}

/// A VM address: IP (IPv4-mapped or IPv6) or MAC.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u8; 16],
    pub kind: u32,
}

/// What the egress program applies to one (vm, class).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassConfig {
    /// HTB mode: the class handle (major << 16 | minor) put in
    /// `skb->priority`; 0 = leave the packet's priority alone.
    pub priority: u32,
    pub _pad: u32,
    /// EDT mode: pacing rate in bytes per second; 0 = unpaced. For
    /// reporting; the kernel uses `ns_per_byte_q16`.
    pub rate_bytes_per_s: u64,
    /// EDT mode: nanoseconds per byte in Q16 fixed point (see
    /// [`edt::ns_per_byte_q16`]), so the kernel multiplies instead of
    /// dividing per packet; 0 = unpaced.
    pub ns_per_byte_q16: u64,
    /// EDT mode: drop a packet whose departure would be more than this far
    /// in the future; 0 = never drop.
    pub horizon_ns: u64,
}

impl ClassConfig {
    /// A class paced at `rate_bytes_per_s` with a drop horizon (EDT mode).
    pub const fn paced(priority: u32, rate_bytes_per_s: u64, horizon_ns: u64) -> Self {
        ClassConfig {
            priority,
            _pad: 0,
            rate_bytes_per_s,
            ns_per_byte_q16: edt::ns_per_byte_q16(rate_bytes_per_s),
            horizon_ns,
        }
    }
}

/// EDT pacer state per (vm, class), written only by the kernel.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdtState {
    /// Departure time given to the last paced packet (CLOCK_MONOTONIC ns).
    pub t_last_ns: u64,
}

/// Datapath-wide settings.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// One of [`mode`].
    pub mode: u32,
    /// HTB mode: the class handle put in `skb->priority` of packets of an
    /// urgent flow ([`FLOW_URGENT`]); 0 = they go to their VM's migration
    /// class like the rest of the migration.
    pub urgent_priority: u32,
}

const _: () = {
    assert!(core::mem::size_of::<Counter>() == 32);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<AddrKey>() == 20);
    assert!(core::mem::size_of::<ClassConfig>() == 32);
    assert!(core::mem::size_of::<EdtState>() == 8);
    assert!(core::mem::size_of::<Settings>() == 8);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): repr(C), integer fields and arrays only, no implicit
    // padding (sizes asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::ClassConfig {}
    unsafe impl aya::Pod for super::EdtState {}
    unsafe impl aya::Pod for super::Settings {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_fold() {
        let mut total = Counter::default();
        total.add(&Counter {
            bytes: 100,
            packets: 1,
            dropped_packets: 1,
            dropped_bytes: 60,
        });
        total.add(&Counter {
            bytes: 1400,
            packets: 2,
            ..Counter::default()
        });
        assert_eq!(
            total,
            Counter {
                bytes: 1500,
                packets: 3,
                dropped_packets: 1,
                dropped_bytes: 60
            }
        );
    }

    #[test]
    fn indices_are_dense_and_in_range() {
        for (i, d) in Direction::ALL.iter().enumerate() {
            assert_eq!(d.index() as usize, i);
        }
        assert_eq!(counter_index(0, 0, 0), 0);
        assert_eq!(counter_index(0, 0, 1), 1);
        assert_eq!(counter_index(0, 1, 0), 2);
        assert_eq!(counter_index(1, 0, 0), 6);
        let last = counter_index(MAX_VMS - 1, class::COUNT - 1, Direction::COUNT - 1);
        assert_eq!(last, COUNTER_ENTRIES - 1);
        assert_eq!(
            class_index(MAX_VMS - 1, class::COUNT - 1),
            CLASS_ENTRIES - 1
        );
    }
}
