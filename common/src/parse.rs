//! Header parsing: Ethernet, one 802.1Q/802.1ad tag, IPv4 (options,
//! fragments), IPv6 (hop-by-hop, routing, fragment, destination options, AH),
//! TCP/UDP ports. Generic over [`Packet`] so the kernel (bpf_skb_load_bytes)
//! and host tests (a byte slice) run the same code.
//!
//! Non-first fragments carry no L4 header: they parse with `has_ports = 0`
//! and are attributed by address only.
//!
//! VXLAN (UDP to port 4789, or 8472 as Linux, Flannel and Cilium use it)
//! is looked into: when its header has the I flag (RFC 7348 §5), the
//! headers returned are the inner frame's, with `encap = 1`. That is where
//! a pod-to-pod migration stream and a pod's own traffic are told apart on
//! an overlay; the outer packet is what is counted and steered. Geneve
//! (6081) is not decapsulated: this kernel has no Geneve, and neither do
//! the CNIs' defaults measured here.

/// Random access to a packet's bytes.
pub trait Packet {
    /// The `N` bytes at `offset`, or `None` if the packet is shorter.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Packet for [u8] {
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let src = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(src);
        Some(out)
    }
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN's port in Linux's default, Flannel and Cilium.
pub const VXLAN_LINUX_PORT: u16 = 8472;
/// VXLAN header: 8 bytes, the I flag (a valid VNI) in the first.
const VXLAN_HEADER: usize = 8;
const VXLAN_FLAG_I: u8 = 0x08;
const UDP_HEADER: usize = 8;

/// IPv6 extension headers walked before giving up on finding L4.
const MAX_IPV6_EXT: usize = 6;

/// What the parser found. `l3 == 0` means "not IP" (ARP, LLDP, truncated...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headers {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// 0 = no (parsable) IP header, 4 or 6.
    pub l3: u8,
    /// IP protocol of the L4 header (after IPv6 extension headers).
    pub proto: u8,
    /// 1 when `src_port`/`dst_port` are valid (TCP or UDP, first fragment).
    pub has_ports: u8,
    /// IPv4 addresses are IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// 1 when these are the headers of the frame inside a VXLAN packet.
    pub encap: u8,
}

/// Parses what it can; returns `None` only if not even an Ethernet header
/// is there. A VXLAN packet gives its inner frame's headers (when the
/// inner frame has at least an Ethernet header).
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(pkt: &P) -> Option<Headers> {
    let (outer, l4) = frame(pkt, 0)?;
    if outer.has_ports == 0
        || outer.proto != IPPROTO_UDP
        || !(outer.dst_port == VXLAN_PORT || outer.dst_port == VXLAN_LINUX_PORT)
    {
        return Some(outer);
    }
    let vxlan_at = l4 + UDP_HEADER;
    let Some(vxlan) = pkt.bytes::<1>(vxlan_at) else {
        return Some(outer);
    };
    if vxlan[0] & VXLAN_FLAG_I == 0 {
        return Some(outer);
    }
    match frame(pkt, vxlan_at + VXLAN_HEADER) {
        Some((mut inner, _)) => {
            inner.encap = 1;
            Some(inner)
        }
        None => Some(outer),
    }
}

/// The headers of the Ethernet frame at `start`, and the offset of its L4
/// header (0 when there is none).
#[inline(always)]
fn frame<P: Packet + ?Sized>(pkt: &P, start: usize) -> Option<(Headers, usize)> {
    let eth: [u8; 14] = pkt.bytes(start)?;
    let mut h = Headers::default();
    h.dst_mac.copy_from_slice(&eth[0..6]);
    h.src_mac.copy_from_slice(&eth[6..12]);
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = start + 14;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = pkt.bytes::<4>(off) else {
            return Some((h, 0));
        };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
    }
    let l4 = match ethertype {
        ETH_P_IPV4 => ipv4(pkt, off, &mut h),
        ETH_P_IPV6 => ipv6(pkt, off, &mut h),
        _ => None,
    };
    if let Some(l4) = l4
        && (h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP)
        && let Some(ports) = pkt.bytes::<4>(l4)
    {
        h.src_port = u16::from_be_bytes([ports[0], ports[1]]);
        h.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        h.has_ports = 1;
        return Some((h, l4));
    }
    Some((h, 0))
}

/// Fills the IPv4 part; returns the L4 offset when an L4 header follows
/// (not for non-first fragments).
#[inline(always)]
fn ipv4<P: Packet + ?Sized>(pkt: &P, off: usize, h: &mut Headers) -> Option<usize> {
    let ip: [u8; 20] = pkt.bytes(off)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    h.l3 = 4;
    h.proto = ip[9];
    h.src_addr = mapped_v4([ip[12], ip[13], ip[14], ip[15]]);
    h.dst_addr = mapped_v4([ip[16], ip[17], ip[18], ip[19]]);
    let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if frag_offset != 0 {
        return None;
    }
    Some(off + ihl)
}

/// Fills the IPv6 part, walking extension headers; returns the L4 offset.
#[inline(always)]
fn ipv6<P: Packet + ?Sized>(pkt: &P, off: usize, h: &mut Headers) -> Option<usize> {
    let ip: [u8; 40] = pkt.bytes(off)?;
    if ip[0] >> 4 != 6 {
        return None;
    }
    h.l3 = 6;
    h.src_addr.copy_from_slice(&ip[8..24]);
    h.dst_addr.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut off = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let ext: [u8; 2] = pkt.bytes(off)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            // Fragment: 8 bytes; only the first fragment has L4.
            44 => {
                let frag: [u8; 4] = pkt.bytes(off)?;
                next = frag[0];
                off += 8;
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    h.proto = next;
                    return None;
                }
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let ext: [u8; 2] = pkt.bytes(off)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 2) * 4;
            }
            _ => {
                h.proto = next;
                return Some(off);
            }
        }
    }
    // Too many extension headers: addresses known, L4 not.
    h.proto = next;
    None
}

/// `a.b.c.d` as `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn mapped_v4(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

    fn eth(ethertype: u16) -> [u8; 14] {
        let mut e = [0u8; 14];
        e[0..6].copy_from_slice(&MAC_B);
        e[6..12].copy_from_slice(&MAC_A);
        e[12..14].copy_from_slice(&ethertype.to_be_bytes());
        e
    }

    /// IPv4 header with `opts` option bytes (multiple of 4).
    fn ipv4_hdr(proto: u8, frag: u16, opts: usize) -> [u8; 60] {
        let mut ip = [0u8; 60];
        ip[0] = 0x40 | ((20 + opts) / 4) as u8;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
        ip
    }

    fn build(parts: &[&[u8]]) -> [u8; 256] {
        let mut buf = [0u8; 256];
        let mut off = 0;
        for p in parts {
            buf[off..off + p.len()].copy_from_slice(p);
            off += p.len();
        }
        buf
    }

    #[test]
    fn ipv4_tcp_with_options() {
        let ip = ipv4_hdr(IPPROTO_TCP, 0, 8);
        let ports = [0x11, 0x5c, 0x00, 0x50]; // 4444 -> 80
        let pkt = build(&[&eth(ETH_P_IPV4), &ip[..28], &ports]);
        let h = parse(&pkt[..14 + 28 + 20]).expect("parses");
        assert_eq!(h.l3, 4);
        assert_eq!(h.proto, IPPROTO_TCP);
        assert_eq!((h.has_ports, h.src_port, h.dst_port), (1, 4444, 80));
        assert_eq!(h.src_addr, mapped_v4([198, 18, 0, 1]));
        assert_eq!(h.src_mac, MAC_A);
        assert_eq!(h.dst_mac, MAC_B);
    }

    /// An outer IPv4/UDP packet to `port` carrying `vxlan_flags` and an
    /// inner IPv4/TCP frame 10.0.0.1:43345 -> 10.0.0.2:49152.
    fn vxlan(port: u16, vxlan_flags: u8) -> [u8; 256] {
        let outer_ip = ipv4_hdr(IPPROTO_UDP, 0, 0);
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&51000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&port.to_be_bytes());
        let mut vx = [0u8; 8];
        vx[0] = vxlan_flags;
        vx[4..7].copy_from_slice(&[0, 0, 1]); // VNI 1
        let mut inner_eth = eth(ETH_P_IPV4);
        inner_eth[0] = 0x0a; // another MAC than the outer one
        let mut inner_ip = ipv4_hdr(IPPROTO_TCP, 0, 0);
        inner_ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        inner_ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&43345u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&49152u16.to_be_bytes());
        build(&[
            &eth(ETH_P_IPV4),
            &outer_ip[..20],
            &udp,
            &vx,
            &inner_eth,
            &inner_ip[..20],
            &tcp,
        ])
    }

    #[test]
    fn vxlan_is_classified_by_its_inner_frame() {
        for port in [VXLAN_PORT, VXLAN_LINUX_PORT] {
            let pkt = vxlan(port, 0x08);
            let h = parse(&pkt[..14 + 20 + 8 + 8 + 14 + 20 + 20]).expect("parses");
            assert_eq!(h.encap, 1, "port {port}");
            assert_eq!((h.l3, h.proto, h.has_ports), (4, IPPROTO_TCP, 1));
            assert_eq!((h.src_port, h.dst_port), (43345, 49152));
            assert_eq!(h.src_addr, mapped_v4([10, 0, 0, 1]));
            assert_eq!(h.dst_addr, mapped_v4([10, 0, 0, 2]));
            assert_eq!(h.dst_mac[0], 0x0a, "the inner MACs");
        }
        // Without the I flag, on another port, or with the inner frame cut
        // short: the outer UDP packet.
        for (port, flags, len) in [
            (VXLAN_PORT, 0x00, 104),
            (4790, 0x08, 104),
            (VXLAN_PORT, 0x08, 14 + 20 + 8 + 8 + 10),
        ] {
            let pkt = vxlan(port, flags);
            let h = parse(&pkt[..len]).expect("parses");
            assert_eq!(h.encap, 0, "{port} {flags:#x} {len}");
            assert_eq!((h.proto, h.dst_port), (IPPROTO_UDP, port));
        }
    }

    #[test]
    fn vlan_tagged_udp() {
        let mut tag = [0u8; 4];
        tag[0..2].copy_from_slice(&42u16.to_be_bytes());
        tag[2..4].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ip = ipv4_hdr(IPPROTO_UDP, 0, 0);
        let ports = [0x23, 0x28, 0x23, 0x29];
        let pkt = build(&[&eth(ETH_P_8021Q), &tag, &ip[..20], &ports]);
        let h = parse(&pkt[..18 + 20 + 8]).expect("parses");
        assert_eq!(
            (h.l3, h.proto, h.src_port, h.dst_port),
            (4, IPPROTO_UDP, 9000, 9001)
        );
    }

    #[test]
    fn ipv4_fragments() {
        let ports = [0x11, 0x5c, 0x00, 0x50];
        // First fragment (MF set, offset 0): ports are there.
        let first = build(&[
            &eth(ETH_P_IPV4),
            &ipv4_hdr(IPPROTO_TCP, 0x2000, 0)[..20],
            &ports,
        ]);
        assert_eq!(parse(&first[..60]).map(|h| h.has_ports), Some(1));
        // Later fragment: addresses only.
        let later = build(&[
            &eth(ETH_P_IPV4),
            &ipv4_hdr(IPPROTO_TCP, 0x00b9, 0)[..20],
            &ports,
        ]);
        let h = parse(&later[..60]).expect("parses");
        assert_eq!((h.l3, h.has_ports), (4, 0));
        assert_eq!(h.dst_addr, mapped_v4([198, 18, 0, 2]));
    }

    fn ipv6_hdr(next: u8) -> [u8; 40] {
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[6] = next;
        ip[7] = 64;
        ip[8] = 0x20;
        ip[9] = 0x01;
        ip[23] = 1;
        ip[24] = 0x20;
        ip[25] = 0x01;
        ip[39] = 2;
        ip
    }

    #[test]
    fn ipv6_extension_headers() {
        // hop-by-hop (8 bytes) -> destination options (16 bytes) -> TCP
        let hbh = [60u8, 0, 0, 0, 0, 0, 0, 0];
        let mut dst = [0u8; 16];
        dst[0] = IPPROTO_TCP;
        dst[1] = 1;
        let ports = [0x11, 0x5c, 0x00, 0x50];
        let pkt = build(&[&eth(ETH_P_IPV6), &ipv6_hdr(0), &hbh, &dst, &ports, &[0; 16]]);
        let h = parse(&pkt[..14 + 40 + 8 + 16 + 20]).expect("parses");
        assert_eq!(
            (h.l3, h.proto, h.has_ports, h.src_port, h.dst_port),
            (6, 6, 1, 4444, 80)
        );
        assert_eq!(h.src_addr[15], 1);
        assert_eq!(h.dst_addr[15], 2);
    }

    #[test]
    fn ipv6_fragments() {
        let ports = [0x11, 0x5c, 0x00, 0x50];
        let first = [IPPROTO_UDP, 0, 0x00, 0x01, 0, 0, 0, 7]; // offset 0, M=1
        let pkt = build(&[&eth(ETH_P_IPV6), &ipv6_hdr(44), &first, &ports]);
        assert_eq!(
            parse(&pkt[..14 + 48 + 8]).map(|h| (h.proto, h.has_ports)),
            Some((17, 1))
        );
        let later = [IPPROTO_UDP, 0, 0x05, 0x00, 0, 0, 0, 7]; // offset 160
        let pkt = build(&[&eth(ETH_P_IPV6), &ipv6_hdr(44), &later, &ports]);
        let h = parse(&pkt[..14 + 48 + 8]).expect("parses");
        assert_eq!((h.l3, h.proto, h.has_ports), (6, 17, 0));
    }

    #[test]
    fn non_ip_and_truncated() {
        let arp = build(&[&eth(0x0806), &[0u8; 28]]);
        assert_eq!(parse(&arp[..42]).map(|h| h.l3), Some(0));
        assert_eq!(parse(&arp[..10]), None, "shorter than Ethernet");
        // IPv4 header cut short: not IP.
        let cut = build(&[&eth(ETH_P_IPV4), &ipv4_hdr(IPPROTO_TCP, 0, 0)[..20]]);
        assert_eq!(parse(&cut[..14 + 12]).map(|h| h.l3), Some(0));
        // TCP header cut short: IP, no ports.
        let h = parse(&cut[..14 + 20 + 2]).expect("parses");
        assert_eq!((h.l3, h.has_ports), (4, 0));
        // Bad IHL.
        let mut bad = ipv4_hdr(IPPROTO_TCP, 0, 0);
        bad[0] = 0x42;
        let pkt = build(&[&eth(ETH_P_IPV4), &bad[..20], &[0; 8]]);
        assert_eq!(parse(&pkt[..42]).map(|h| h.l3), Some(0));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift generator: deterministic and dependency-free.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = [0u8; 128];
        for round in 0..20_000 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            // Steer some rounds into the IP parsers.
            match round % 3 {
                0 => buf[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes()),
                1 => buf[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes()),
                _ => {}
            }
            let len = (x as usize) % buf.len();
            if let Some(h) = parse(&buf[..len]) {
                assert!(len >= 14);
                // Ports only ever come with an IP header and TCP/UDP.
                if h.has_ports == 1 {
                    assert!(h.l3 == 4 || h.l3 == 6);
                    assert!(h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP);
                }
            } else {
                assert!(len < 14, "only a missing Ethernet header fails");
            }
        }
    }
}
