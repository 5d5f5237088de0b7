//! Ethernet frames built byte by byte for BPF_PROG_TEST_RUN: one named
//! builder per case, so a test reads as the list of packets it checks.

pub const MAC_HOST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const MAC_PEER: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const MAC_VM: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x10];

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_VLAN: u16 = 0x8100;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// A frame under construction.
#[derive(Debug, Clone, Default)]
pub struct Frame(pub Vec<u8>);

impl Frame {
    pub fn eth(src: [u8; 6], dst: [u8; 6], ethertype: u16) -> Frame {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(&dst);
        v.extend_from_slice(&src);
        v.extend_from_slice(&ethertype.to_be_bytes());
        Frame(v)
    }

    /// Ethernet with one 802.1Q tag (VLAN `vid`) in front of `ethertype`.
    pub fn eth_vlan(src: [u8; 6], dst: [u8; 6], vid: u16, ethertype: u16) -> Frame {
        let mut f = Frame::eth(src, dst, ETH_VLAN);
        f.0.extend_from_slice(&vid.to_be_bytes());
        f.0.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// IPv4 header; `frag` is the flags+offset field, `options` a multiple of 4.
    pub fn ipv4(
        mut self,
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        frag: u16,
        options: usize,
    ) -> Frame {
        let ihl = (20 + options) / 4;
        let mut h = vec![0u8; 20 + options];
        h[0] = 0x40 | ihl as u8;
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        self.0.extend_from_slice(&h);
        self
    }

    /// IPv6 header with `next` as next header.
    pub fn ipv6(mut self, src: [u8; 16], dst: [u8; 16], next: u8) -> Frame {
        let mut h = [0u8; 40];
        h[0] = 0x60;
        h[6] = next;
        h[7] = 64;
        h[8..24].copy_from_slice(&src);
        h[24..40].copy_from_slice(&dst);
        self.0.extend_from_slice(&h);
        self
    }

    /// An IPv6 hop-by-hop / destination-options style header of 8 bytes.
    pub fn ipv6_ext(mut self, next: u8) -> Frame {
        self.0.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
        self
    }

    /// TCP header (20 bytes, ACK set).
    pub fn tcp(mut self, sport: u16, dport: u16) -> Frame {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = 0x10;
        self.0.extend_from_slice(&h);
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Frame {
        let mut h = [0u8; 8];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        self.0.extend_from_slice(&h);
        self
    }

    /// ICMP echo request header.
    pub fn icmp_echo(mut self) -> Frame {
        self.0.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        self
    }

    /// An ARP request body (28 bytes).
    pub fn arp(mut self) -> Frame {
        self.0.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        self.0.extend_from_slice(&[0u8; 20]);
        self
    }

    /// A VXLAN header (I flag, VNI `vni`) followed by the frame `inner`:
    /// call after `.udp(_, 8472 or 4789)`.
    pub fn vxlan(mut self, vni: u32, inner: &Frame) -> Frame {
        let vni = vni.to_be_bytes();
        self.0
            .extend_from_slice(&[0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
        self.0.extend_from_slice(inner.bytes());
        self
    }

    pub fn payload(mut self, len: usize) -> Frame {
        self.0.extend(std::iter::repeat_n(0x5a, len));
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}
