//! Talking to the kernel: an rtnetlink connection (tokio) for everything
//! the shaper does, and a small blocking socket on the side for the one
//! thing that must work from `Drop`: putting the original qdisc back.
//!
//! Both sockets are opened by [`TcClient::connect`] in the calling thread's
//! network namespace and stay bound to it wherever they are used later.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use futures_util::stream::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkAttribute, tc::TcMessage};
use netlink_sys::{AsyncSocket as _, Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{
    error::ShapingError,
    messages::{Request, TcEntry},
};

/// A device as the shaper needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
}

/// Why a request failed, before the device name is attached.
#[derive(Debug)]
pub(crate) enum Failure {
    Kernel { errno: i32, extack: Option<String> },
    Transport(String),
}

impl Failure {
    pub(crate) fn into_error(self, iface: &str, req: &Request) -> ShapingError {
        match self {
            Failure::Kernel { errno, extack } => ShapingError::Kernel {
                iface: iface.to_owned(),
                verb: req.verb,
                object: req.object.to_string(),
                extack,
                source: io::Error::from_raw_os_error(errno),
            },
            Failure::Transport(detail) => ShapingError::Transport {
                iface: iface.to_owned(),
                verb: req.verb,
                object: req.object.to_string(),
                detail,
            },
        }
    }
}

/// Reads an `NLMSG_ERROR` that carries an error: the errno and the
/// kernel's message.
pub(crate) fn kernel_failure(header: &NetlinkHeader, err: &ErrorMessage) -> Failure {
    Failure::Kernel {
        errno: err.raw_code().abs(),
        extack: extack(header, err),
    }
}

/// The kernel's extended-ack message (`NLMSGERR_ATTR_MSG`) of an
/// `NLMSG_ERROR`, found after the echoed request. On an error it says what
/// was wrong; on a successful ack it is a warning (HTB's "quantum of class
/// … is big", for one).
pub(crate) fn extack(header: &NetlinkHeader, err: &ErrorMessage) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    let payload = &err.header;
    let echoed = if header.flags & NLM_F_CAPPED != 0 {
        16
    } else {
        payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(payload.len(), |b| u32::from_ne_bytes(b) as usize)
    };
    let tlvs = payload.get((echoed + 3) & !3..).unwrap_or_default();
    super::tca::attrs(tlvs).ok().and_then(|attrs| {
        attrs
            .into_iter()
            .find(|(k, _)| *k == NLMSGERR_ATTR_MSG)
            .map(|(_, v)| {
                String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .trim()
                    .to_owned()
            })
            .filter(|m| !m.is_empty())
    })
}

/// A traffic-control client bound to one network namespace.
#[derive(Clone)]
pub struct TcClient {
    handle: rtnetlink::Handle,
    sync: Arc<SyncSocket>,
    netns: u64,
}

impl std::fmt::Debug for TcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcClient")
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

/// rtnetlink requests (changes and dumps) sent by every [`TcClient`] of
/// this process.
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many rtnetlink requests this process has sent so far.
pub fn requests_sent() -> u64 {
    REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

impl TcClient {
    /// Opens the netlink sockets in the calling thread's network namespace
    /// and spawns the connection's driver on the current tokio runtime.
    pub fn connect() -> Result<Self, ShapingError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ShapingError::NoRuntime)?;
        let (mut conn, handle, _) = rtnetlink::new_connection().map_err(ShapingError::Socket)?;
        // Hand acks to `apply`: a successful ack can carry a kernel warning.
        // (Only requests with NLM_F_ACK get one; dumps end without.)
        conn.set_forward_ack(true);
        let socket = conn.socket_mut().socket_mut();
        // Ask for the kernel's error messages ("Specified qdisc kind is
        // unknown") and not for an echo of each failed request.
        socket.set_ext_ack(true).map_err(ShapingError::Socket)?;
        socket.set_cap_ack(true).map_err(ShapingError::Socket)?;
        let sync = SyncSocket::open().map_err(ShapingError::Socket)?;
        // The namespace's inode names it in state files.
        let netns = std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| m.ino())
            .map_err(ShapingError::Socket)?;
        runtime.spawn(conn);
        Ok(TcClient {
            handle,
            sync: Arc::new(sync),
            netns,
        })
    }

    /// The inode of the network namespace the sockets belong to.
    pub fn netns_inode(&self) -> u64 {
        self.netns
    }

    pub(crate) fn sync_socket(&self) -> Arc<SyncSocket> {
        self.sync.clone()
    }

    /// Looks a device up by name.
    pub async fn link(&self, name: &str) -> Result<Link, ShapingError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return Err(ShapingError::NoSuchDevice {
                    iface: name.to_owned(),
                });
            }
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                return Err(ShapingError::NoSuchDevice {
                    iface: name.to_owned(),
                });
            }
            Err(e) => {
                return Err(ShapingError::Transport {
                    iface: name.to_owned(),
                    verb: "look up",
                    object: "device".into(),
                    detail: e.to_string(),
                });
            }
        };
        let mtu = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        Ok(Link {
            name: name.to_owned(),
            index: msg.header.index,
            mtu,
        })
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    /// Counted in [`requests_sent`].
    /// Returns the kernel's warning if the acknowledgement carried one.
    pub async fn apply(&self, link: &Link, req: &Request) -> Result<Option<String>, ShapingError> {
        let mut msg = NetlinkMessage::from(req.message.clone());
        msg.header.flags = req.flags | NLM_F_REQUEST | NLM_F_ACK;
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut replies = self
            .handle
            .clone()
            .request(msg)
            .map_err(|e| Failure::Transport(e.to_string()).into_error(&link.name, req))?;
        let mut warning = None;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(err) = &reply.payload {
                if err.code.is_some() {
                    return Err(kernel_failure(&reply.header, err).into_error(&link.name, req));
                }
                warning = extack(&reply.header, err);
            }
        }
        if let Some(w) = &warning {
            tracing::warn!(iface = %link.name, "kernel warning after {} {}: {w}", req.verb, req.object);
        }
        Ok(warning)
    }

    /// All qdiscs on the device (the kernel dumps every device; the rest
    /// are dropped here).
    pub async fn qdiscs(&self, link: &Link) -> Result<Vec<TcEntry>, ShapingError> {
        let m = TcMessage::with_index(link.index as i32);
        let entries = self
            .dump(link, RouteNetlinkMessage::GetQueueDiscipline(m), "qdiscs")
            .await?;
        Ok(entries
            .into_iter()
            .filter(|e| e.ifindex == link.index)
            .collect())
    }

    /// All classes on the device.
    pub async fn classes(&self, link: &Link) -> Result<Vec<TcEntry>, ShapingError> {
        let m = TcMessage::with_index(link.index as i32);
        let entries = self
            .dump(link, RouteNetlinkMessage::GetTrafficClass(m), "classes")
            .await?;
        Ok(entries
            .into_iter()
            .filter(|e| e.ifindex == link.index)
            .collect())
    }

    async fn dump(
        &self,
        link: &Link,
        request: RouteNetlinkMessage,
        what: &'static str,
    ) -> Result<Vec<TcEntry>, ShapingError> {
        let req = Request {
            verb: "dump",
            object: super::messages::TcObject::Device,
            message: request.clone(),
            flags: NLM_F_REQUEST | NLM_F_DUMP,
        };
        let mut msg = NetlinkMessage::from(request);
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut replies =
            self.handle.clone().request(msg).map_err(|e| {
                Failure::Transport(format!("{what}: {e}")).into_error(&link.name, &req)
            })?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match &reply.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewQueueDiscipline(m)
                    | RouteNetlinkMessage::NewTrafficClass(m),
                ) => out.push(TcEntry::from_message(m)),
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    return Err(kernel_failure(&reply.header, err).into_error(&link.name, &req));
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A blocking rtnetlink socket for requests made from `Drop`.
pub(crate) struct SyncSocket {
    socket: Mutex<Socket>,
    seq: AtomicU32,
}

/// Splits one datagram from an rtnetlink socket into its messages
/// (each 4-byte aligned, its length in its first 4 bytes).
pub(crate) fn decode_replies(
    data: &[u8],
) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, String> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 16 <= data.len() {
        let len = u32::from_ne_bytes([
            data[offset],
            data[offset + 1],
            data[offset + 2],
            data[offset + 3],
        ]) as usize;
        if len < 16 || offset + len > data.len() {
            return Err(format!("malformed netlink reply ({len} bytes at {offset})"));
        }
        out.push(
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..offset + len])
                .map_err(|e| format!("decoding a netlink reply: {e}"))?,
        );
        offset += (len + 3) & !3;
    }
    Ok(out)
}

impl SyncSocket {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.set_ext_ack(true)?;
        socket.set_cap_ack(true)?;
        Ok(SyncSocket {
            socket: Mutex::new(socket),
            seq: AtomicU32::new(1),
        })
    }

    /// Sends one request and blocks until the kernel acknowledges it.
    pub(crate) fn apply(&self, req: &Request) -> Result<(), Failure> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut msg = NetlinkMessage::from(req.message.clone());
        msg.header.flags = req.flags | NLM_F_REQUEST | NLM_F_ACK;
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        // A poisoned lock only means another Drop panicked mid-request; the
        // socket itself is still usable.
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        socket
            .send(&buf, 0)
            .map_err(|e| Failure::Transport(format!("send: {e}")))?;
        loop {
            let (data, _) = socket
                .recv_from_full()
                .map_err(|e| Failure::Transport(format!("receive: {e}")))?;
            for reply in decode_replies(&data).map_err(Failure::Transport)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(err) = &reply.payload {
                    return match err.code {
                        None => Ok(()),
                        Some(_) => Err(kernel_failure(&reply.header, err)),
                    };
                }
            }
        }
    }
}
