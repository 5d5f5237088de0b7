//! The datapath's parser and classifier against an independent reference:
//! etherparse for the headers (0.21: 0.16 read the IPv6 fragment header's
//! offset and M flag from the wrong bits, which this target found), and the classification order as
//! `common/src/classify.rs` documents it, written again from that list.
//!
//! Whatever the bytes, the parser must not panic. Where etherparse reads a
//! frame completely (its parser is stricter: lengths, header order), both
//! must see the same addresses, protocol and ports, and both must attribute
//! the frame to the same (VM, class) in both directions. Frames outside
//! what vmbw's parser is documented to read (two VLAN tags, a 0x9100 tag,
//! IPv4 AH, six or more IPv6 extension headers, fragments' ports) are only run.

#![no_main]

use etherparse::{LinkExtSlice, NetSlice, SlicedPacket, TransportSlice};
use libfuzzer_sys::fuzz_target;
use vmbw_common::{
    AddrKey, Direction, FLOW_URGENT, FlowKey, NO_VM, addr_kind, class,
    classify::{Tables, Verdict, classify},
    parse::{Headers, mapped_v4, parse},
};

/// A few registrations so that every rule of the order can match.
struct Fixed;

const FLOW_VM: u32 = 1;
const PORT_VM: u32 = 2;
const IP_VM: u32 = 3;
const MAC_VM: u32 = 4;
const TAP_VM: u32 = 5;
const TAP: u32 = 7;
const MIGRATION_PORT: u16 = 4444;
const REMOTE_MIGRATION_PORT: u16 = 49152;
const VM_IP: [u8; 4] = [10, 0, 0, 2];
const VM_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

fn flow() -> FlowKey {
    FlowKey {
        local_addr: mapped_v4([10, 0, 0, 1]),
        remote_addr: mapped_v4([10, 0, 1, 1]),
        local_port: 40000,
        remote_port: 8080,
        proto: 6,
        _pad: [0; 3],
    }
}

fn mac_key(mac: [u8; 6]) -> AddrKey {
    let mut addr = [0; 16];
    addr[..6].copy_from_slice(&mac);
    AddrKey {
        addr,
        kind: addr_kind::MAC,
    }
}

impl Tables for Fixed {
    fn flow(&self, key: &FlowKey) -> Option<u32> {
        // The exact flow is post-copy's urgent channel: the flag must come
        // off the slot and into the verdict.
        (*key == flow()).then_some(FLOW_VM | FLOW_URGENT)
    }
    fn port_owner(&self, index: u32) -> u32 {
        if index == u32::from(MIGRATION_PORT) || index == 65536 + u32::from(REMOTE_MIGRATION_PORT) {
            PORT_VM
        } else {
            NO_VM
        }
    }
    fn addr(&self, key: &AddrKey) -> Option<u32> {
        if *key
            == (AddrKey {
                addr: mapped_v4(VM_IP),
                kind: addr_kind::IP,
            })
        {
            Some(IP_VM)
        } else if *key == mac_key(VM_MAC) {
            Some(MAC_VM)
        } else {
            None
        }
    }
    fn ifindex(&self, ifindex: u32) -> Option<u32> {
        (ifindex == TAP).then_some(TAP_VM)
    }
}

/// What etherparse read, in the reference's terms.
struct Reference {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// (src, dst) as 16 bytes, IPv4 mapped.
    ip: Option<([u8; 16], [u8; 16])>,
    proto: Option<u8>,
    ports: Option<(u16, u16)>,
    /// The frame was found inside VXLAN.
    encap: bool,
}

/// Reads a frame with etherparse; `None` when it cannot, or when the frame
/// is outside what vmbw's parser is documented to read.
fn reference(data: &[u8]) -> Option<Reference> {
    reference_at(data, true)
}

/// [`reference`], looking into VXLAN only when `decap` (vmbw looks one
/// level deep: VXLAN inside VXLAN is classified by the first inner frame,
/// a case the fuzzer found).
fn reference_at(data: &[u8], decap: bool) -> Option<Reference> {
    let p = SlicedPacket::from_ethernet(data).ok()?;
    let etherparse::LinkSlice::Ethernet2(eth) = p.link.as_ref()? else {
        return None;
    };
    if u16::from(eth.ether_type()) == 0x9100
        || p.link_exts.len() > 1
        || p.link_exts
            .iter()
            .any(|e| matches!(e, LinkExtSlice::Macsec(_)))
    {
        return None;
    }
    let mut r = Reference {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        ip: None,
        proto: None,
        ports: None,
        encap: false,
    };
    let fragmented = match &p.net {
        None | Some(NetSlice::Arp(_)) => return Some(r),
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            if h.protocol().0 == 51 {
                // etherparse walks an IPv4 authentication header; vmbw
                // attributes such packets by address only.
                return None;
            }
            r.ip = Some((mapped_v4(h.source()), mapped_v4(h.destination())));
            r.proto = Some(h.protocol().0);
            v4.is_payload_fragmented()
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            r.ip = Some((h.source(), h.destination()));
            // vmbw walks at most 6 extension headers; etherparse stops at a
            // repeated one and reports it as the payload's protocol.
            let exts = v6.extensions().clone().into_iter().count();
            let next = v6.payload().ip_number.0;
            if exts >= 6 || matches!(next, 0 | 43 | 44 | 51 | 60) {
                return None;
            }
            r.proto = Some(next);
            v6.is_payload_fragmented()
        }
    };
    if fragmented {
        // vmbw reads the first fragment's ports, etherparse none: not compared.
        return None;
    }
    r.ports = match &p.transport {
        Some(TransportSlice::Tcp(t)) => Some((t.source_port(), t.destination_port())),
        Some(TransportSlice::Udp(u)) => Some((u.source_port(), u.destination_port())),
        _ => None,
    };
    // VXLAN (RFC 7348): with the I flag, vmbw reads the inner frame, from
    // the bytes after the UDP header (whatever the UDP length says).
    if let Some(TransportSlice::Udp(u)) = &p.transport
        && decap
        && matches!(u.destination_port(), 4789 | 8472)
    {
        let udp_at = u.slice().as_ptr() as usize - data.as_ptr() as usize;
        let vxlan = data.get(udp_at + 8..)?;
        if vxlan.first().is_some_and(|f| f & 0x08 != 0) && vxlan.len() >= 8 + 14 {
            return reference_at(&vxlan[8..], false).map(|inner| Reference {
                encap: true,
                ..inner
            });
        }
    }
    Some(r)
}

/// The documented order, over the reference's reading.
fn reference_verdict(r: &Reference, dir: Direction, from_ifindex: u32) -> Verdict {
    let t = Fixed;
    let egress = matches!(dir, Direction::Egress);
    if let (Some((src, dst)), Some((sport, dport)), Some(proto)) = (r.ip, r.ports, r.proto) {
        let (la, ra, lp, rp) = if egress {
            (src, dst, sport, dport)
        } else {
            (dst, src, dport, sport)
        };
        let key = FlowKey {
            local_addr: la,
            remote_addr: ra,
            local_port: lp,
            remote_port: rp,
            proto,
            _pad: [0; 3],
        };
        if let Some(value) = t.flow(&key) {
            return Verdict {
                vm: value & 0x7fff_ffff,
                class: class::MIGRATION,
                urgent: value >> 31 == 1,
            };
        }
        for index in [u32::from(lp), 65536 + u32::from(rp)] {
            let vm = t.port_owner(index);
            if vm != NO_VM {
                return Verdict {
                    vm,
                    class: class::MIGRATION,
                    urgent: false,
                };
            }
        }
    }
    if let Some((src, dst)) = r.ip
        && let Some(vm) = t.addr(&AddrKey {
            addr: if egress { src } else { dst },
            kind: addr_kind::IP,
        })
    {
        return Verdict {
            vm,
            class: class::APPLICATION,
            urgent: false,
        };
    }
    let attributed = if r.ip.is_some() {
        class::APPLICATION
    } else {
        class::OTHER
    };
    if let Some(vm) = t.addr(&mac_key(if egress { r.src_mac } else { r.dst_mac })) {
        return Verdict {
            vm,
            class: attributed,
            urgent: false,
        };
    }
    if from_ifindex != 0
        && let Some(vm) = t.ifindex(from_ifindex)
    {
        return Verdict {
            vm,
            class: attributed,
            urgent: false,
        };
    }
    Verdict::NONE
}

fn check(h: &Headers, data: &[u8], from_ifindex: u32) {
    for dir in [Direction::Egress, Direction::Ingress] {
        let v = classify(&Fixed, h, dir, from_ifindex);
        assert!(
            v.class != class::MIGRATION || h.has_ports == 1,
            "migration without ports: {h:?}"
        );
        assert!(
            v.vm != NO_VM || v.class == class::OTHER,
            "a class without a VM: {v:?}"
        );
        if let Some(r) = reference(data) {
            assert_eq!((h.src_mac, h.dst_mac), (r.src_mac, r.dst_mac));
            assert_eq!(h.encap == 1, r.encap, "{h:?}");
            match r.ip {
                None => assert_eq!(h.l3, 0, "{h:?}"),
                Some((src, dst)) => {
                    assert_ne!(h.l3, 0, "{h:?}");
                    assert_eq!((h.src_addr, h.dst_addr), (src, dst));
                    assert_eq!(Some(h.proto), r.proto);
                    let ours = (h.has_ports == 1).then_some((h.src_port, h.dst_port));
                    assert_eq!(ours, r.ports, "{h:?}");
                }
            }
            assert_eq!(v, reference_verdict(&r, dir, from_ifindex), "{h:?}");
        }
    }
}

fuzz_target!(|input: &[u8]| {
    // The first byte picks the device the frame came from.
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let from_ifindex = u32::from(first % 9);
    if let Some(h) = parse(data) {
        check(&h, data, from_ifindex);
    } else {
        assert!(data.len() < 14);
    }
});
