//! Which (vm, class) a packet belongs to. The order is fixed and documented
//! because it decides ties:
//!
//! 1. exact migration flow (5-tuple, normalised to local/remote) -> migration
//!    (urgent if the flow is flagged [`FLOW_URGENT`](crate::FLOW_URGENT));
//! 2. migration port ranges: the local port, then the remote port -> migration;
//! 3. the VM's IP address (source on egress, destination on ingress) -> application;
//! 4. the VM's MAC address (same rule) -> application;
//! 5. the tap device the packet came from (`ingress_ifindex` on egress) -> application;
//! 6. nothing: (no VM, other).
//!
//! Non-IP frames matched by MAC or tap belong to that VM with class
//! "other". Every step is one hash or array lookup: O(1) per packet however
//! many flows and VMs are registered.

use crate::{AddrKey, Direction, FLOW_URGENT, FlowKey, NO_VM, addr_kind, class, parse::Headers};

/// The lookups classification needs; the kernel implements them with BPF
/// maps, host tests with plain collections.
pub trait Tables {
    /// An exact migration flow's value: its VM slot, possibly with
    /// [`FLOW_URGENT`] set.
    fn flow(&self, key: &FlowKey) -> Option<u32>;
    /// VM slot owning a port (`index` < 65536: local port; 65536 + port:
    /// remote port), or [`NO_VM`].
    fn port_owner(&self, index: u32) -> u32;
    /// VM slot of an IP or MAC address.
    fn addr(&self, key: &AddrKey) -> Option<u32>;
    /// VM slot of a tap device.
    fn ifindex(&self, ifindex: u32) -> Option<u32>;
}

/// A classification result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub vm: u32,
    pub class: u32,
    /// A post-copy flow whose pages the guest waits for ([`FLOW_URGENT`]).
    pub urgent: bool,
}

impl Verdict {
    pub const NONE: Verdict = Verdict::of(NO_VM, class::OTHER);

    /// A verdict that is not urgent.
    pub const fn of(vm: u32, class: u32) -> Verdict {
        Verdict {
            vm,
            class,
            urgent: false,
        }
    }
}

/// Classifies a parsed packet. `from_ifindex` is the device the packet came
/// from (egress: `skb->ingress_ifindex`, 0 if locally generated; ingress:
/// the device the program runs on when it runs on a tap, else 0).
#[inline(always)]
pub fn classify<T: Tables + ?Sized>(
    t: &T,
    h: &Headers,
    dir: Direction,
    from_ifindex: u32,
) -> Verdict {
    let egress = matches!(dir, Direction::Egress);
    let is_ip = h.l3 != 0;
    if h.has_ports != 0 {
        let (local_addr, remote_addr, local_port, remote_port) = if egress {
            (h.src_addr, h.dst_addr, h.src_port, h.dst_port)
        } else {
            (h.dst_addr, h.src_addr, h.dst_port, h.src_port)
        };
        let key = FlowKey {
            local_addr,
            remote_addr,
            local_port,
            remote_port,
            proto: h.proto,
            _pad: [0; 3],
        };
        if let Some(value) = t.flow(&key) {
            return Verdict {
                vm: value & !FLOW_URGENT,
                class: class::MIGRATION,
                urgent: value & FLOW_URGENT != 0,
            };
        }
        let vm = t.port_owner(u32::from(local_port));
        if vm != NO_VM {
            return Verdict::of(vm, class::MIGRATION);
        }
        let vm = t.port_owner(65536 + u32::from(remote_port));
        if vm != NO_VM {
            return Verdict::of(vm, class::MIGRATION);
        }
    }
    if is_ip {
        let key = AddrKey {
            addr: if egress { h.src_addr } else { h.dst_addr },
            kind: addr_kind::IP,
        };
        if let Some(vm) = t.addr(&key) {
            return Verdict::of(vm, class::APPLICATION);
        }
    }
    let attributed_class = if is_ip {
        class::APPLICATION
    } else {
        class::OTHER
    };
    let mac = if egress { h.src_mac } else { h.dst_mac };
    let mut key = AddrKey {
        addr: [0; 16],
        kind: addr_kind::MAC,
    };
    key.addr[..6].copy_from_slice(&mac);
    if let Some(vm) = t.addr(&key) {
        return Verdict::of(vm, attributed_class);
    }
    if from_ifindex != 0
        && let Some(vm) = t.ifindex(from_ifindex)
    {
        return Verdict::of(vm, attributed_class);
    }
    Verdict::NONE
}

/// `AddrKey` for an IP address given as 4 (IPv4) or 16 (IPv6) bytes.
pub fn ip_key(addr: [u8; 16]) -> AddrKey {
    AddrKey {
        addr,
        kind: addr_kind::IP,
    }
}

/// `AddrKey` for a MAC address.
pub fn mac_key(mac: [u8; 6]) -> AddrKey {
    let mut addr = [0u8; 16];
    addr[..6].copy_from_slice(&mac);
    AddrKey {
        addr,
        kind: addr_kind::MAC,
    }
}
