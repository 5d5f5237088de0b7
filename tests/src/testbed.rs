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
//!
//! [`MigrationTestbed::with_guests`] makes room for several guests that
//! migrate concurrently over the same bottleneck: guest `i` has its own
//! [`GuestSlot`] (tap `tap<i>` on both hosts, subnet `198.18.<10+i>.0/24`,
//! migration port `4444+i`, sink port `9000+i`); slot 0 is the single
//! guest's addresses above.

use std::{
    net::{TcpListener, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
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
/// Guest 0's address, gateway and subnet (see [`GuestSlot`] for the others).
pub const GUEST_IP: &str = "198.18.10.2";
pub const GUEST_GW: &str = "198.18.10.1";
pub const GUEST_SUBNET: &str = "198.18.10.0/24";
/// The hosts' uplink (in `src` and `dst`).
pub const UPLINK: &str = "up0";
/// Guest 0's tap (in `src` and `dst`).
pub const TAP: &str = "tap0";
pub const GUEST_MAC: &str = "52:54:00:c6:0a:02";
/// Guest 0's migration port on the destination host.
pub const MIGRATION_PORT: u16 = 4444;
/// Where guest 0's `net` workload sends, on the destination host.
pub const SINK_PORT: u16 = 9000;
/// Guests one testbed can hold (subnets 198.18.10-73.0/24).
pub const MAX_GUESTS: usize = 64;

/// The addresses of guest `index` on the testbed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSlot {
    pub index: usize,
    /// The tap on both hosts.
    pub tap: String,
    tap_mac: String,
    pub mac: String,
    pub ip: String,
    pub gateway: String,
    pub subnet: String,
    /// The destination QEMU's incoming port.
    pub migration_port: u16,
    /// The port of this guest's sink on the destination host.
    pub sink_port: u16,
}

impl GuestSlot {
    pub fn new(index: usize) -> GuestSlot {
        assert!(index < MAX_GUESTS, "guest slot {index} >= {MAX_GUESTS}");
        let net = 10 + index;
        GuestSlot {
            index,
            tap: format!("tap{index}"),
            tap_mac: format!("02:00:c6:12:{net:02x}:01"),
            mac: format!("52:54:00:c6:{net:02x}:02"),
            ip: format!("198.18.{net}.2"),
            gateway: format!("198.18.{net}.1"),
            subnet: format!("198.18.{net}.0/24"),
            migration_port: MIGRATION_PORT + index as u16,
            sink_port: SINK_PORT + index as u16,
        }
    }

    /// `ADDR:PORT` of this guest's sink.
    pub fn sink(&self) -> String {
        format!("{DST_IP}:{}", self.sink_port)
    }

    /// The URI the source migrates this guest to.
    pub fn migration_uri(&self) -> String {
        format!("tcp:{DST_IP}:{}", self.migration_port)
    }

    fn net(&self) -> GuestNet {
        GuestNet {
            tap: self.tap.clone(),
            mac: self.mac.clone(),
            ip_cidr: format!("{}/24", self.ip),
            gateway: self.gateway.clone(),
        }
    }
}

/// Router, source host and destination host, joined as drawn above.
pub struct MigrationTestbed {
    pub router: NetNs,
    pub src: NetNs,
    pub dst: NetNs,
    pub link_mbit: f64,
    pub run: RunDir,
    pub guests: Vec<GuestSlot>,
    /// Boot guests with `pti=on` (the QEMU 7.2 workaround in [`Vm::spawn`]).
    pub pti: bool,
    /// Each guest's vCPUs.
    pub vcpus: u32,
}

impl MigrationTestbed {
    /// Builds the namespaces and the rate-limited link, for one guest.
    pub fn new(link_mbit: f64) -> anyhow::Result<Self> {
        Self::with_guests(link_mbit, 1)
    }

    /// Builds the namespaces and the rate-limited link, with a tap and a
    /// routed subnet for each of `guests` guests.
    pub fn with_guests(link_mbit: f64, guests: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=MAX_GUESTS).contains(&guests),
            "a testbed holds 1 to {MAX_GUESTS} guests ({guests} asked)"
        );
        let tb = MigrationTestbed {
            router: NetNs::new()?,
            src: NetNs::new()?,
            dst: NetNs::new()?,
            link_mbit,
            run: RunDir::new()?,
            guests: (0..guests).map(GuestSlot::new).collect(),
            pti: true,
            vcpus: 1,
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
        for g in &tb.guests {
            tb.router.ip(&["route", "add", &g.subnet, "via", SRC_IP])?;
            for ns in [&tb.src, &tb.dst] {
                ns.ip(&["tuntap", "add", "dev", &g.tap, "mode", "tap"])?;
                ns.ip(&["link", "set", &g.tap, "address", &g.tap_mac])?;
                ns.ip(&["link", "set", &g.tap, "up"])?;
            }
            tb.src
                .ip(&["addr", "add", &format!("{}/24", g.gateway), "dev", &g.tap])?;
        }
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

    fn guest(&self, index: usize) -> anyhow::Result<&GuestSlot> {
        self.guests.get(index).with_context(|| {
            format!(
                "guest {index}: this testbed has {} guest slot(s)",
                self.guests.len()
            )
        })
    }

    /// The URI the source migrates guest 0 to.
    pub fn migration_uri(&self) -> String {
        self.guests[0].migration_uri()
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

    fn spec(&self, name: &str, slot: &GuestSlot, mem_mb: u32, workload: &Workload) -> VmSpec {
        let mut spec = VmSpec::new(name, mem_mb, workload.clone());
        spec.net = Some(slot.net());
        spec.pti = self.pti;
        spec.vcpus = self.vcpus;
        spec
    }

    /// Boots guest `index` on the source host (not waiting for it). Guest
    /// 0's files are named `src.*`, the others' `src<index>.*`.
    pub fn start_source_at(
        &self,
        index: usize,
        guest: &Guest,
        workload: &Workload,
        mem_mb: u32,
    ) -> anyhow::Result<Vm> {
        let slot = self.guest(index)?;
        Vm::spawn(
            guest,
            &self.spec(&side_name("src", index), slot, mem_mb, workload),
            Some(&self.src),
            &self.run,
        )
        .with_context(|| format!("starting the source QEMU of guest {index}"))
    }

    /// Starts guest `index`'s destination QEMU, waiting for the incoming
    /// migration on the guest's port, or (`defer`) for `migrate-incoming`
    /// on its control socket, so that capabilities such as `postcopy-ram`
    /// can be set first.
    pub fn start_destination_at(
        &self,
        index: usize,
        guest: &Guest,
        workload: &Workload,
        mem_mb: u32,
        defer: bool,
    ) -> anyhow::Result<Vm> {
        let slot = self.guest(index)?;
        let mut spec = self.spec(&side_name("dst", index), slot, mem_mb, workload);
        spec.incoming = Some(if defer {
            "defer".into()
        } else {
            slot.migration_uri()
        });
        Vm::spawn(guest, &spec, Some(&self.dst), &self.run)
            .with_context(|| format!("starting the destination QEMU of guest {index}"))
    }

    /// Starts guest 0's source and destination QEMU and waits until the
    /// guest on the source runs its workload (its console prints the ready
    /// marker).
    pub fn boot(
        &self,
        guest: &Guest,
        workload: &Workload,
        mem_mb: u32,
        ready_within: Duration,
    ) -> anyhow::Result<(Vm, Vm)> {
        let mut pairs = self.boot_all(guest, &[(workload.clone(), mem_mb)], ready_within)?;
        Ok(pairs.remove(0))
    }

    /// Starts a source and a destination QEMU for each guest (`(workload,
    /// memory)` per slot, in slot order), then waits until every source
    /// guest runs its workload.
    pub fn boot_all(
        &self,
        guest: &Guest,
        guests: &[(Workload, u32)],
        ready_within: Duration,
    ) -> anyhow::Result<Vec<(Vm, Vm)>> {
        self.boot_pairs(guest, guests, ready_within, false)
    }

    /// Like [`boot_all`](Self::boot_all), but each destination waits for
    /// `migrate-incoming` (`-incoming defer`).
    pub fn boot_all_deferred(
        &self,
        guest: &Guest,
        guests: &[(Workload, u32)],
        ready_within: Duration,
    ) -> anyhow::Result<Vec<(Vm, Vm)>> {
        self.boot_pairs(guest, guests, ready_within, true)
    }

    fn boot_pairs(
        &self,
        guest: &Guest,
        guests: &[(Workload, u32)],
        ready_within: Duration,
        defer: bool,
    ) -> anyhow::Result<Vec<(Vm, Vm)>> {
        let mut pairs = Vec::new();
        for (i, (workload, mem_mb)) in guests.iter().enumerate() {
            let src = self.start_source_at(i, guest, workload, *mem_mb)?;
            let dst = self.start_destination_at(i, guest, workload, *mem_mb, defer)?;
            pairs.push((src, dst));
        }
        let deadline = std::time::Instant::now() + ready_within;
        for (i, (src, _)) in pairs.iter_mut().enumerate() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            src.wait_for_console(crate::guest::READY_MARKER, left.max(Duration::from_secs(1)))
                .with_context(|| format!("guest {i} did not start its workload"))?;
        }
        Ok(pairs)
    }

    /// After a migration: guest 0's subnet now lives behind the
    /// destination's tap.
    pub fn move_guest(&self) -> anyhow::Result<()> {
        self.move_guest_at(0)
    }

    /// Guest `index`'s subnet now lives behind the destination's tap, as a
    /// network learns once the destination QEMU announces the guest (at
    /// switch-over, or when post-copy starts and the guest runs there).
    pub fn move_guest_at(&self, index: usize) -> anyhow::Result<()> {
        let g = self.guest(index)?;
        self.src.ip(&["addr", "flush", "dev", &g.tap])?;
        self.dst
            .ip(&["addr", "add", &format!("{}/24", g.gateway), "dev", &g.tap])?;
        self.router
            .ip(&["route", "replace", &g.subnet, "via", DST_IP])?;
        Ok(())
    }

    /// Starts a UDP and TCP sink on the destination host at `SINK_PORT`
    /// (guest 0's).
    pub fn start_sink(&self) -> anyhow::Result<Sink> {
        Sink::start(&self.dst, DST_IP, SINK_PORT)
    }

    /// One sink per guest, at each guest's sink port, in slot order.
    pub fn start_sinks(&self) -> anyhow::Result<Vec<Sink>> {
        self.guests
            .iter()
            .map(|g| Sink::start(&self.dst, DST_IP, g.sink_port))
            .collect()
    }
}

/// `src`/`dst` for guest 0 (the names single-guest tests have always
/// used), `src<i>`/`dst<i>` for the others.
fn side_name(side: &str, index: usize) -> String {
    if index == 0 {
        side.to_owned()
    } else {
        format!("{side}{index}")
    }
}

/// tbf's burst: 10 ms of traffic, at least 16 KiB; tbf queues at most
/// 100 ms before dropping.
fn tbf_burst(link_mbit: f64) -> u64 {
    ((vmbw::api::units::from_mbit(link_mbit) * 0.010) as u64).max(16 * 1024)
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

/// Receives and discards UDP datagrams and TCP streams, counting bytes in
/// all and per second since it started.
///
/// A second's bytes are those the kernel received in it (the receive
/// timestamp of the last packet each read returns, `SO_TIMESTAMPNS`), not
/// those the sink's thread happened to read in it: on a loaded host that
/// thread can wait for a CPU for a tenth of a second, and reading late would
/// move bytes the network delivered in time into the next second. The
/// read-time counts are kept too, to show how far the two differ.
pub struct Sink {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

/// The most seconds a sink keeps per-second counts for; later bytes are
/// counted in the total only.
const SINK_SECONDS: usize = 3 * 3600;

struct Counts {
    started: Instant,
    /// The wall clock at `started`: receive timestamps are wall-clock time.
    started_wall: SystemTime,
    total: AtomicU64,
    /// Bytes per second of arrival (kernel receive time).
    per_second: Vec<AtomicU64>,
    /// Bytes per second of reading (when the sink's thread got them).
    per_second_read: Vec<AtomicU64>,
    /// Nanoseconds after `started` of the first byte + 1 (0 = none yet).
    first_byte_ns: AtomicU64,
}

impl Counts {
    fn add(&self, n: usize, received: Option<SystemTime>) {
        let at = self.started.elapsed();
        let arrived = received
            .and_then(|r| r.duration_since(self.started_wall).ok())
            .map_or(at, |a| a.min(at));
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        for (bins, t) in [(&self.per_second, arrived), (&self.per_second_read, at)] {
            if let Some(bin) = bins.get(t.as_secs() as usize) {
                bin.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let _ = self.first_byte_ns.compare_exchange(
            0,
            arrived.as_nanos() as u64 + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Asks the kernel to timestamp what `fd` receives.
fn enable_rx_timestamps(fd: &impl AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvmsg` into `buf`: the bytes read and, if the kernel gave one, the
/// receive time of the last packet they came from.
fn recv_stamped(fd: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<SystemTime>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // Room for one SCM_TIMESTAMPNS (a timespec), u64-aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the header points at `buf` and `control`, both live and
    // sized as declared for the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: walking the control messages the kernel wrote into `control`
    // with the libc CMSG helpers, reading a timespec only from a
    // SCM_TIMESTAMPNS message, which carries one.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                if ts.tv_sec > 0 {
                    stamp = Some(
                        SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                    );
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
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
        let bins = || (0..SINK_SECONDS).map(|_| AtomicU64::new(0)).collect();
        let counts = Arc::new(Counts {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            total: AtomicU64::new(0),
            per_second: bins(),
            per_second_read: bins(),
            first_byte_ns: AtomicU64::new(0),
        });
        udp.set_read_timeout(Some(Duration::from_millis(200)))?;
        // Asked for now, on the listener too (accepted sockets inherit it):
        // the kernel turns stamping on a moment after the first socket asks.
        enable_rx_timestamps(&udp).context("timestamping the UDP sink")?;
        enable_rx_timestamps(&tcp).context("timestamping the TCP sink")?;
        tcp.set_nonblocking(true)?;
        let mut threads = Vec::new();
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, at)) = recv_stamped(&udp, &mut buf) {
                        counts.add(n, at);
                    }
                }
            }));
        }
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((c, _)) = tcp.accept()
                        && c.set_read_timeout(Some(Duration::from_millis(20))).is_ok()
                        && enable_rx_timestamps(&c).is_ok()
                    {
                        conns.push(c);
                    }
                    // Small reads: each is binned by its last packet's
                    // arrival, 13 ms of data at 10 Mbit/s.
                    conns.retain_mut(|c| match recv_stamped(c, &mut buf[..16384]) {
                        Ok((0, _)) => false,
                        Ok((n, at)) => {
                            counts.add(n, at);
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
            counts,
            threads,
        })
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.counts.total.load(Ordering::Relaxed)
    }

    /// When the sink started counting: second `i` of
    /// [`per_second`](Self::per_second) begins `i` seconds after it.
    pub fn started(&self) -> Instant {
        self.counts.started
    }

    /// When the first byte arrived, if one has.
    pub fn first_byte(&self) -> Option<Instant> {
        match self.counts.first_byte_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.counts.started + Duration::from_nanos(ns - 1)),
        }
    }

    /// Bytes received in each whole second from `from` (rounded up to the
    /// next second boundary of the sink's clock) until `to` (rounded down),
    /// with the instant each second began.
    pub fn per_second(&self, from: Instant, to: Instant) -> Vec<(Instant, u64)> {
        self.seconds(&self.counts.per_second, from, to)
    }

    /// As [`per_second`](Self::per_second), by when the sink's thread read
    /// the bytes rather than when they arrived.
    pub fn per_second_read(&self, from: Instant, to: Instant) -> Vec<(Instant, u64)> {
        self.seconds(&self.counts.per_second_read, from, to)
    }

    fn seconds(&self, bins: &[AtomicU64], from: Instant, to: Instant) -> Vec<(Instant, u64)> {
        let since = |t: Instant| t.saturating_duration_since(self.counts.started);
        let first = since(from).as_secs_f64().ceil() as usize;
        let last = (since(to).as_secs() as usize).min(SINK_SECONDS);
        (first..last)
            .map(|i| {
                (
                    self.counts.started + Duration::from_secs(i as u64),
                    bins[i].load(Ordering::Relaxed),
                )
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_read_is_timed_by_when_the_bytes_arrived() {
        use std::io::Write as _;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(&listener).expect("SO_TIMESTAMPNS");
        let mut tx =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (rx, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        // The kernel starts stamping a moment after the first socket asks
        // (a static key flipped from a workqueue): wait for a stamped byte.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tx.write_all(&[1]).expect("send");
            let (n, at) = recv_stamped(&rx, &mut buf).expect("recv");
            assert_eq!(n, 1);
            if at.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "no receive timestamp in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = SystemTime::now();
        tx.write_all(&[7u8; 1000]).expect("send");
        // The reader is late: the bytes wait in the socket.
        std::thread::sleep(Duration::from_millis(300));
        let (n, at) = recv_stamped(&rx, &mut buf).expect("recv");
        let read = SystemTime::now();
        assert_eq!(n, 1000);
        let at = at.expect("a receive timestamp");
        let lag = read.duration_since(at).expect("received before read");
        assert!(
            lag >= Duration::from_millis(250),
            "timed {lag:?} before the read"
        );
        assert!(at >= before, "stamped before it was sent");
    }

    #[test]
    fn slot_zero_is_the_single_guest_and_slots_do_not_collide() {
        let g = GuestSlot::new(0);
        assert_eq!(
            (g.tap.as_str(), g.mac.as_str(), g.ip.as_str()),
            (TAP, GUEST_MAC, GUEST_IP)
        );
        assert_eq!(
            (g.gateway.as_str(), g.subnet.as_str()),
            (GUEST_GW, GUEST_SUBNET)
        );
        assert_eq!((g.migration_port, g.sink_port), (MIGRATION_PORT, SINK_PORT));
        let all: Vec<GuestSlot> = (0..MAX_GUESTS).map(GuestSlot::new).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(a.tap != b.tap && a.mac != b.mac && a.tap_mac != b.tap_mac);
                assert!(a.subnet != b.subnet && a.migration_port != b.migration_port);
                assert!(a.sink_port != b.sink_port);
            }
        }
        // IFNAMSIZ: tap names stay short.
        assert!(all.iter().all(|g| g.tap.len() < 16));
    }
}
