//! Where a pod's traffic enters the host: the host-side interface of a
//! virt-launcher pod, found from the host's routing table.
//!
//! The agent runs with `hostNetwork`, so it sees the root namespace's
//! routes. A CNI that gives each pod its own host-side veth also installs
//! a host route to the pod's address through it (Calico: `10.244.1.7 dev
//! cali1234 scope link`; kindnet and the `ptp` plugin alike). That device
//! carries exactly that pod's traffic, so it is registered as the VM's
//! "tap" in the classifier. The rule, deliberately narrow:
//!
//! - a route in the main table whose destination is the pod's address with
//!   the full prefix (/32, /128), no gateway, and an output device;
//! - the device is not a bridge (with the `bridge` plugin, flannel and
//!   others the pods share `cni0`) and not loopback.
//!
//! Anything else (a subnet route via a bridge, Cilium's single
//! `cilium_host` route, overlays) has no per-pod device in the routing
//! table: the pod's IP addresses still classify its traffic, no interface
//! is registered, and the status API shows none.

use std::{
    io,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::shaping::decode_replies;

/// A pod's host-side interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostIface {
    pub index: u32,
    pub name: String,
}

/// Finds pods' host-side interfaces; see the module docs.
pub trait PodInterfaces: Send {
    /// The interface that carries exactly `ip`, if the host has one.
    fn interface_of(&self, ip: IpAddr) -> io::Result<Option<HostIface>>;
}

/// The host's routing table over a blocking rtnetlink socket, opened in
/// the calling thread's network namespace (and bound to it from then on).
pub struct HostRoutes {
    socket: Mutex<Socket>,
    seq: AtomicU32,
}

impl HostRoutes {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(HostRoutes {
            socket: Mutex::new(socket),
            seq: AtomicU32::new(1),
        })
    }

    /// Sends `message` and collects the replies until the end of a dump
    /// (or the one reply of a plain request).
    fn request(
        &self,
        message: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut msg = NetlinkMessage::from(message);
        msg.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = socket.recv_from_full()?;
            for reply in decode_replies(&data).map_err(io::Error::other)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(code.get().abs())),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// Output devices of full-prefix, gateway-less routes to `ip` in the
    /// main table.
    fn host_routes(&self, ip: IpAddr) -> io::Result<Vec<u32>> {
        let mut m = RouteMessage::default();
        m.header.address_family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let want = RouteAddress::from(ip);
        let mut out = Vec::new();
        for reply in self.request(RouteNetlinkMessage::GetRoute(m), true)? {
            let RouteNetlinkMessage::NewRoute(r) = reply else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.destination_prefix_length != full
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut dst = false;
            let mut gateway = false;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = *d == want,
                    RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => gateway = true,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let (true, false, Some(i)) = (dst, gateway, oif) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// (name, is a bridge or loopback) of device `index`.
    fn link(&self, index: u32) -> io::Result<Option<(String, bool)>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let replies = match self.request(RouteNetlinkMessage::GetLink(m), false) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        for reply in replies {
            if let RouteNetlinkMessage::NewLink(l) = reply {
                let mut name = String::new();
                let mut shared = index == 1;
                for a in &l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = n.clone(),
                        LinkAttribute::LinkInfo(infos) => {
                            shared |= infos
                                .iter()
                                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
                        }
                        _ => {}
                    }
                }
                shared |= name == "lo";
                return Ok(Some((name, shared)));
            }
        }
        Ok(None)
    }
}

impl PodInterfaces for HostRoutes {
    fn interface_of(&self, ip: IpAddr) -> io::Result<Option<HostIface>> {
        for index in self.host_routes(ip)? {
            if let Some((name, false)) = self.link(index)? {
                return Ok(Some(HostIface { index, name }));
            }
        }
        Ok(None)
    }
}

/// No lookups (tests of the pure parts, hosts without rtnetlink).
pub struct NoInterfaces;

impl PodInterfaces for NoInterfaces {
    fn interface_of(&self, _ip: IpAddr) -> io::Result<Option<HostIface>> {
        Ok(None)
    }
}
