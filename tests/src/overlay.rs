//! A KubeVirt-shaped migration path without Kubernetes: two "nodes" joined
//! by a VXLAN overlay, a "virt-handler pod" on each with a pod IP, and a
//! small proxy in each handler that carries the migration from QEMU's unix
//! socket to TCP between the pod IPs and back, as virt-handler's migration
//! proxy does (kubevirt/kubevirt `pkg/virt-handler/migration-proxy`).
//!
//! ```text
//!  node A                                              node B
//!  QEMU ─unix─ proxy [handler A 10.244.1.10]           [handler B 10.244.2.10] proxy ─unix─ QEMU
//!                      │ eth0 ── hv0                          hv0 ── eth0 │
//!  guest 10.244.1.20 ─ tap0 ─┐                                 ┌─ sink 10.244.2.1:9000
//!                        vx0 10.99.0.1 ══ VXLAN 42, UDP 4789 ══ vx0 10.99.0.2
//!                        ul0 192.168.77.1 ─────────────────── ul0 192.168.77.2
//! ```
//!
//! Everything between the pods crosses the underlay `ul0` as VXLAN: the
//! uplink sees only the outer UDP headers, which is where the agent
//! attaches on a node of a tunnelling CNI (Flannel's VXLAN, Calico VXLAN,
//! Cilium's tunnel mode). The namespaces go away when the testbed drops;
//! the proxies stop with it.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::{NetNs, in_netns, vm::GuestNet};

/// The underlay: node A's and node B's `ul0`.
pub const UNDERLAY_A: &str = "192.168.77.1";
pub const UNDERLAY_B: &str = "192.168.77.2";
/// The agent's uplink on node A: the underlay interface.
pub const UPLINK: &str = "ul0";
/// The overlay device and its addresses.
pub const VXLAN_DEV: &str = "vx0";
pub const VXLAN_ID: &str = "42";
pub const VXLAN_PORT: u16 = 4789;
pub const OVERLAY_A: &str = "10.99.0.1";
pub const OVERLAY_B: &str = "10.99.0.2";
/// Pod subnets per node; the handler pods' IPs; the node's gateway address
/// in its pod subnet (on the host side of every pod's veth).
pub const PODS_A: &str = "10.244.1.0/24";
pub const PODS_B: &str = "10.244.2.0/24";
pub const HANDLER_A_IP: &str = "10.244.1.10";
pub const HANDLER_B_IP: &str = "10.244.2.10";
pub const GATEWAY_A: &str = "10.244.1.1";
pub const GATEWAY_B: &str = "10.244.2.1";
/// The guest, on node A's pod network (the VMI's `status.interfaces`).
pub const GUEST_IP: &str = "10.244.1.20";
pub const GUEST_MAC: &str = "52:54:00:f4:01:14";
pub const TAP: &str = "tap0";
/// Target virt-handler's proxy port (a key of
/// `targetDirectMigrationNodePorts`).
pub const PROXY_PORT: u16 = 45123;
/// Where the guest's application stream goes (node B, `GATEWAY_B`).
pub const SINK_PORT: u16 = 9000;
/// Underlay MTU: room for the 50 bytes of VXLAN around a 1500-byte frame.
const UNDERLAY_MTU: &str = "1600";

/// The two nodes and their handler pods.
pub struct OverlayTestbed {
    pub node_a: NetNs,
    pub node_b: NetNs,
    pub handler_a: NetNs,
    pub handler_b: NetNs,
}

impl OverlayTestbed {
    pub fn new() -> anyhow::Result<OverlayTestbed> {
        let tb = OverlayTestbed {
            node_a: NetNs::new()?,
            node_b: NetNs::new()?,
            handler_a: NetNs::new()?,
            handler_b: NetNs::new()?,
        };
        tb.node_a.veth_to(
            (UPLINK, &format!("{UNDERLAY_A}/30")),
            &tb.node_b,
            (UPLINK, &format!("{UNDERLAY_B}/30")),
        )?;
        let nodes = [
            (&tb.node_a, UNDERLAY_A, UNDERLAY_B, OVERLAY_A, &tb.handler_a),
            (&tb.node_b, UNDERLAY_B, UNDERLAY_A, OVERLAY_B, &tb.handler_b),
        ];
        for (node, local, remote, overlay, _) in nodes {
            node.ip(&["link", "set", UPLINK, "mtu", UNDERLAY_MTU])?;
            #[rustfmt::skip]
            node.ip(&[
                "link", "add", VXLAN_DEV, "type", "vxlan", "id", VXLAN_ID,
                "local", local, "remote", remote, "dstport", &VXLAN_PORT.to_string(),
                "dev", UPLINK,
            ])?;
            node.ip(&["link", "set", VXLAN_DEV, "mtu", "1500"])?;
            node.ip(&["addr", "add", &format!("{overlay}/24"), "dev", VXLAN_DEV])?;
            node.ip(&["link", "set", VXLAN_DEV, "up"])?;
            node.sysctl("net.ipv4.ip_forward", "1")?;
        }
        // Overlay neighbours pinned both ways: no ARP crosses the tunnel.
        let (mac_a, mac_b) = (tb.node_a.mac(VXLAN_DEV)?, tb.node_b.mac(VXLAN_DEV)?);
        #[rustfmt::skip]
        tb.node_a.ip(&["neigh", "replace", OVERLAY_B, "lladdr", &mac_b, "dev", VXLAN_DEV, "nud", "permanent"])?;
        #[rustfmt::skip]
        tb.node_b.ip(&["neigh", "replace", OVERLAY_A, "lladdr", &mac_a, "dev", VXLAN_DEV, "nud", "permanent"])?;
        tb.node_a
            .ip(&["route", "add", PODS_B, "via", OVERLAY_B, "dev", VXLAN_DEV])?;
        tb.node_b
            .ip(&["route", "add", PODS_A, "via", OVERLAY_A, "dev", VXLAN_DEV])?;
        // Handler pods: a veth with a /32 on each side, a host route to the
        // pod and the pod's default route through its node (the shape of
        // Calico's and Cilium's pod plumbing).
        for (node, handler, pod_ip, gateway) in [
            (&tb.node_a, &tb.handler_a, HANDLER_A_IP, GATEWAY_A),
            (&tb.node_b, &tb.handler_b, HANDLER_B_IP, GATEWAY_B),
        ] {
            node.veth_to(
                ("hv0", &format!("{gateway}/32")),
                handler,
                ("eth0", &format!("{pod_ip}/32")),
            )?;
            node.ip(&["route", "add", &format!("{pod_ip}/32"), "dev", "hv0"])?;
            handler.ip(&["route", "add", &format!("{gateway}/32"), "dev", "eth0"])?;
            handler.ip(&["route", "add", "default", "via", gateway, "dev", "eth0"])?;
        }
        // The guest's tap on both nodes (the destination QEMU needs one
        // too); on A it is the gateway of the guest's pod subnet.
        for node in [&tb.node_a, &tb.node_b] {
            node.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
            node.ip(&["link", "set", TAP, "up"])?;
        }
        tb.node_a
            .ip(&["addr", "add", &format!("{GATEWAY_A}/24"), "dev", TAP])?;
        Ok(tb)
    }

    /// The guest's network on node A (and, unused until it moves, on B).
    pub fn guest_net(&self) -> GuestNet {
        GuestNet {
            tap: TAP.into(),
            mac: GUEST_MAC.into(),
            ip_cidr: format!("{GUEST_IP}/24"),
            gateway: GATEWAY_A.into(),
        }
    }

    /// `ADDR:PORT` of the application sink on node B.
    pub fn sink(&self) -> String {
        format!("{GATEWAY_B}:{SINK_PORT}")
    }

    /// Starts both proxies: the target's listens on `HANDLER_B_IP:PROXY_PORT`
    /// and forwards to the destination QEMU's `incoming` unix socket; the
    /// source's listens on the unix socket `source_socket` (QEMU migrates
    /// to `unix:<source_socket>`) and connects from handler A's pod IP.
    pub fn start_proxies(
        &self,
        source_socket: &Path,
        incoming: &Path,
    ) -> anyhow::Result<MigrationProxies> {
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let target_listener = in_netns(&self.handler_b, || {
            TcpListener::bind((HANDLER_B_IP, PROXY_PORT)).context("binding the target proxy")
        })?;
        target_listener.set_nonblocking(true)?;
        let _ = std::fs::remove_file(source_socket);
        let source_listener = UnixListener::bind(source_socket)
            .with_context(|| format!("binding {}", source_socket.display()))?;
        source_listener.set_nonblocking(true)?;
        let mut threads = Vec::new();
        {
            let (stop, incoming) = (stop.clone(), incoming.to_owned());
            threads.push(std::thread::spawn(move || {
                accept_loop(
                    &stop,
                    || target_listener.accept().map(|(c, _)| c),
                    |tcp| {
                        let unix = UnixStream::connect(&incoming)?;
                        splice(Conn::Tcp(tcp), Conn::Unix(unix), None);
                        Ok(())
                    },
                )
            }));
        }
        {
            let (stop, forwarded) = (stop.clone(), forwarded.clone());
            let handler = self.handler_a.path();
            threads.push(std::thread::spawn(move || {
                accept_loop(
                    &stop,
                    || source_listener.accept().map(|(c, _)| c),
                    |unix| {
                        let tcp = connect_from(&handler, (HANDLER_B_IP, PROXY_PORT))?;
                        splice(Conn::Unix(unix), Conn::Tcp(tcp), Some(forwarded.clone()));
                        Ok(())
                    },
                )
            }));
        }
        Ok(MigrationProxies {
            stop,
            forwarded,
            threads,
        })
    }
}

/// The two proxies; stopped on drop (open connections end with their
/// peers).
pub struct MigrationProxies {
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl MigrationProxies {
    /// Bytes the source proxy forwarded from QEMU to the target.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for MigrationProxies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Err(e)) => eprintln!("warning: migration proxy: {e:#}"),
                Err(_) => eprintln!("warning: a migration proxy thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

fn accept_loop<C>(
    stop: &AtomicBool,
    mut accept: impl FnMut() -> std::io::Result<C>,
    mut serve: impl FnMut(C) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match accept() {
            Ok(conn) => serve(conn)?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e).context("accepting a migration connection"),
        }
    }
    Ok(())
}

/// A TCP connection made from a thread inside `netns` (the socket stays
/// there).
fn connect_from(netns: &Path, to: (&str, u16)) -> anyhow::Result<TcpStream> {
    let netns: PathBuf = netns.to_owned();
    let to = (to.0.to_owned(), to.1);
    std::thread::spawn(move || -> anyhow::Result<TcpStream> {
        crate::netns::enter(&netns)?;
        TcpStream::connect((to.0.as_str(), to.1)).context("connecting to the target proxy")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn split(self) -> std::io::Result<(Box<dyn std::io::Read + Send>, Box<dyn HalfClose>)> {
        Ok(match self {
            Conn::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s)),
            Conn::Unix(s) => (Box::new(s.try_clone()?), Box::new(s)),
        })
    }
}

trait HalfClose: std::io::Write + Send {
    fn close_write(&self);
}

impl HalfClose for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl HalfClose for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Copies both ways between `a` and `b` on two threads, each half-closing
/// its writer at its reader's end; `a` -> `b` bytes are added to `counted`.
fn splice(a: Conn, b: Conn, counted: Option<Arc<AtomicU64>>) {
    let (Ok((ra, wa)), Ok((rb, wb))) = (a.split(), b.split()) else {
        return;
    };
    std::thread::spawn(move || copy(ra, wb, counted));
    std::thread::spawn(move || copy(rb, wa, None));
}

fn copy(
    mut from: Box<dyn std::io::Read + Send>,
    mut to: Box<dyn HalfClose>,
    counted: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if let Some(c) = &counted {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }
    to.close_write();
}
