//! A live-migration testbed built from test-made namespaces:
//!
//! ```text
//!  guest ── tap0 [src] up0 ──── to-src [router] to-dst ──── up0 [dst] tap0 ── (guest after migration)
//!  198.18.10.2   198.18.1.2      198.18.1.1     198.18.2.1     198.18.2.2
//!                                   tbf LINK_MBIT both ways
//! ```
//!
//! The source host's uplink and the destination host meet at a router
//! whose two egress sides are rate-limited (tbf): the migration stream and
//! the guest's own traffic to the sink (on the destination host) share the
//! bottleneck. Both hosts have a tap `tap0` with the same MAC address; the
//! guest subnet is routed to the source until [`MigrationTestbed::move_guest`]
//! points it at the destination. The namespaces, and everything in them,
//! go away when the testbed drops.

use std::{
    io::Read as _,
    net::{TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    NetNs,
    guest::{Guest, Workload},
    in_netns,
    vm::{GuestNet, RunDir, Vm, VmSpec},
};

pub const SRC_IP: &str = "198.18.1.2";
pub const ROUTER_SRC_IP: &str = "198.18.1.1";
pub const DST_IP: &str = "198.18.2.2";
pub const ROUTER_DST_IP: &str = "198.18.2.1";
pub const GUEST_IP: &str = "198.18.10.2";
pub const GUEST_GW: &str = "198.18.10.1";
pub const GUEST_SUBNET: &str = "198.18.10.0/24";
/// The hosts' uplink (in `src` and `dst`).
pub const UPLINK: &str = "up0";
/// The VM's tap (in `src` and `dst`).
pub const TAP: &str = "tap0";
const TAP_MAC: &str = "02:00:c6:12:0a:01";
pub const GUEST_MAC: &str = "52:54:00:c6:0a:02";
pub const MIGRATION_PORT: u16 = 4444;
/// Where the `net` workload sends, on the destination host.
pub const SINK_PORT: u16 = 9000;

/// Router, source host and destination host, joined as drawn above.
pub struct MigrationTestbed {
    pub router: NetNs,
    pub src: NetNs,
    pub dst: NetNs,
    pub link_mbit: f64,
    pub run: RunDir,
}

impl MigrationTestbed {
    /// Builds the namespaces and the rate-limited link.
    pub fn new(link_mbit: f64) -> anyhow::Result<Self> {
        let tb = MigrationTestbed {
            router: NetNs::new()?,
            src: NetNs::new()?,
            dst: NetNs::new()?,
            link_mbit,
            run: RunDir::new()?,
        };
        tb.router.veth_to(
            ("to-src", &format!("{ROUTER_SRC_IP}/24")),
            &tb.src,
            (UPLINK, &format!("{SRC_IP}/24")),
        )?;
        tb.router.veth_to(
            ("to-dst", &format!("{ROUTER_DST_IP}/24")),
            &tb.dst,
            (UPLINK, &format!("{DST_IP}/24")),
        )?;
        tb.router.sysctl("net.ipv4.ip_forward", "1")?;
        tb.src.sysctl("net.ipv4.ip_forward", "1")?;
        tb.src
            .ip(&["route", "add", "default", "via", ROUTER_SRC_IP])?;
        tb.dst
            .ip(&["route", "add", "default", "via", ROUTER_DST_IP])?;
        tb.router
            .ip(&["route", "add", GUEST_SUBNET, "via", SRC_IP])?;
        for ns in [&tb.src, &tb.dst] {
            ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
            ns.ip(&["link", "set", TAP, "address", TAP_MAC])?;
            ns.ip(&["link", "set", TAP, "up"])?;
        }
        tb.src
            .ip(&["addr", "add", &format!("{GUEST_GW}/24"), "dev", TAP])?;
        // A rate of 0 means no bottleneck.
        let burst = tbf_burst(link_mbit);
        let shaped: &[&str] = if link_mbit > 0.0 {
            &["to-src", "to-dst"]
        } else {
            &[]
        };
        for &dev in shaped {
            tb.router.exec(
                "tc",
                &[
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{}kbit", (link_mbit * 1000.0) as u64),
                    "burst",
                    &burst.to_string(),
                    "latency",
                    "100ms",
                ],
            )?;
        }
        Ok(tb)
    }

    /// The URI the source migrates to.
    pub fn migration_uri(&self) -> String {
        format!("tcp:{DST_IP}:{MIGRATION_PORT}")
    }

    /// The link's shaping, for trace headers.
    pub fn link_description(&self) -> String {
        format!(
            "router tbf rate {} Mbit/s burst {} bytes latency 100 ms, both directions; \
             migration over TCP {SRC_IP} -> {DST_IP}:{MIGRATION_PORT}",
            self.link_mbit,
            tbf_burst(self.link_mbit)
        )
    }

    fn spec(name: &str, mem_mb: u32, workload: &Workload) -> VmSpec {
        let mut spec = VmSpec::new(name, mem_mb, workload.clone());
        spec.net = Some(GuestNet {
            tap: TAP.into(),
            mac: GUEST_MAC.into(),
            ip_cidr: format!("{GUEST_IP}/24"),
            gateway: GUEST_GW.into(),
        });
        spec
    }

    /// Boots the guest on the source host (not waiting for it).
    pub fn start_source(
        &self,
        guest: &Guest,
        workload: &Workload,
        mem_mb: u32,
    ) -> anyhow::Result<Vm> {
        Vm::spawn(
            guest,
            &Self::spec("src", mem_mb, workload),
            Some(&self.src),
            &self.run,
        )
        .context("starting the source QEMU")
    }

    /// Starts the destination QEMU, waiting for the incoming migration.
    pub fn start_destination(
        &self,
        guest: &Guest,
        workload: &Workload,
        mem_mb: u32,
    ) -> anyhow::Result<Vm> {
        let mut spec = Self::spec("dst", mem_mb, workload);
        spec.incoming = Some(format!("tcp:{DST_IP}:{MIGRATION_PORT}"));
        Vm::spawn(guest, &spec, Some(&self.dst), &self.run).context("starting the destination QEMU")
    }

    /// Starts the source and destination QEMU and waits until the guest on
    /// the source runs its workload (its console prints the ready marker).
    pub fn boot(
        &self,
        guest: &Guest,
        workload: &Workload,
        mem_mb: u32,
        ready_within: Duration,
    ) -> anyhow::Result<(Vm, Vm)> {
        let mut src = self.start_source(guest, workload, mem_mb)?;
        let dst = self.start_destination(guest, workload, mem_mb)?;
        src.wait_for_console(crate::guest::READY_MARKER, ready_within)
            .context("the guest did not start its workload")?;
        Ok((src, dst))
    }

    /// After a migration: the guest's subnet now lives behind the
    /// destination's tap.
    pub fn move_guest(&self) -> anyhow::Result<()> {
        self.src.ip(&["addr", "flush", "dev", TAP])?;
        self.dst
            .ip(&["addr", "add", &format!("{GUEST_GW}/24"), "dev", TAP])?;
        self.router
            .ip(&["route", "replace", GUEST_SUBNET, "via", DST_IP])?;
        Ok(())
    }

    /// Starts a UDP and TCP sink on the destination host at `SINK_PORT`.
    pub fn start_sink(&self) -> anyhow::Result<Sink> {
        Sink::start(&self.dst, DST_IP, SINK_PORT)
    }
}

/// tbf's burst: 10 ms of traffic, at least 16 KiB; tbf queues at most
/// 100 ms before dropping.
fn tbf_burst(link_mbit: f64) -> u64 {
    ((link_mbit * 1e6 / 8.0 * 0.010) as u64).max(16 * 1024)
}

/// Starts the migration of `src` to `uri` over its control socket, once
/// the `events` capability is on (a recorder following the migration
/// switches it on first, so that it sees every iteration).
pub async fn migrate_when_events_on(src: &Vm, uri: &str) -> anyhow::Result<()> {
    use vmbw::qemu::{Qmp, QmpOptions};
    let mut ctl = Qmp::connect(&src.qmp_ctl, QmpOptions::default()).await?;
    wait_for_events(&mut ctl).await?;
    ctl.migrate(uri).await?;
    Ok(())
}

/// Waits (up to 30 s) until someone following the VM, a recorder or the
/// agent, has switched QEMU's `events` capability on.
pub async fn wait_for_events(ctl: &mut vmbw::qemu::Qmp) -> anyhow::Result<()> {
    use vmbw::qemu::Capability;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let caps = ctl.query_migrate_capabilities().await?;
        if caps
            .iter()
            .any(|c| c.capability == Capability::Events.qapi_name() && c.state)
        {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "nobody switched the `events` capability on within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Receives and discards UDP datagrams and TCP streams, counting bytes.
pub struct Sink {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Sink {
    /// Binds in `ns` (the sockets stay in that namespace) and serves them
    /// on plain threads.
    pub fn start(ns: &NetNs, ip: &str, port: u16) -> anyhow::Result<Sink> {
        let (udp, tcp) = in_netns(ns, || -> anyhow::Result<_> {
            Ok((
                UdpSocket::bind((ip, port)).context("binding the UDP sink")?,
                TcpListener::bind((ip, port)).context("binding the TCP sink")?,
            ))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        udp.set_read_timeout(Some(Duration::from_millis(200)))?;
        tcp.set_nonblocking(true)?;
        let mut threads = Vec::new();
        {
            let (stop, bytes) = (stop.clone(), bytes.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = udp.recv(&mut buf) {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        {
            let (stop, bytes) = (stop.clone(), bytes.clone());
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((c, _)) = tcp.accept()
                        && c.set_read_timeout(Some(Duration::from_millis(20))).is_ok()
                    {
                        conns.push(c);
                    }
                    conns.retain_mut(|c| match c.read(&mut buf) {
                        Ok(0) => false,
                        Ok(n) => {
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                            true
                        }
                        Err(e) => matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                    });
                    if conns.is_empty() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }));
        }
        Ok(Sink {
            stop,
            bytes,
            threads,
        })
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
