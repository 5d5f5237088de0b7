//! Types and names shared by the kernel programs (`vmbw-ebpf`) and user space
//! (`vmbw`). Everything here is `#[repr(C)]`, `Copy` and free of implicit
//! padding, so both sides agree on the bytes of every map key and value.
#![no_std]

/// Names of the programs in the eBPF object, as user space looks them up.
pub mod program {
    /// tc egress classifier on the host uplink.
    pub const EGRESS: &str = "vmbw_egress";
    /// tc ingress classifier on the host uplink.
    pub const INGRESS: &str = "vmbw_ingress";
}

/// Names of the maps in the eBPF object.
pub mod map {
    /// Per-CPU array of [`crate::Counter`], indexed by [`crate::Direction`].
    pub const DIR_COUNTERS: &str = "VMBW_DIR_COUNTERS";
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

/// A byte and packet counter. Kept per CPU in the kernel; user space sums
/// the per-CPU values.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Bytes as the kernel sees them at tc (`skb->len`, L2 header included).
    pub bytes: u64,
    pub packets: u64,
}

impl Counter {
    /// Adds another counter (used to fold per-CPU values).
    pub fn add(&mut self, other: &Counter) {
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.packets = self.packets.wrapping_add(other.packets);
    }
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data: repr(C), only u64 fields, no padding (size
    // asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::Counter {}
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
        });
        total.add(&Counter {
            bytes: 1400,
            packets: 2,
        });
        assert_eq!(
            total,
            Counter {
                bytes: 1500,
                packets: 3
            }
        );
    }

    #[test]
    fn direction_indices_are_dense() {
        for (i, d) in Direction::ALL.iter().enumerate() {
            assert_eq!(d.index() as usize, i);
        }
        assert_eq!(Direction::ALL.len() as u32, Direction::COUNT);
    }
}
