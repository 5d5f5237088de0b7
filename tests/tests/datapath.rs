//! The counting datapath on a real kernel: two test-made namespaces joined by
//! a veth pair, vmbw's tc programs on one end, real UDP traffic both ways.

use std::{net::UdpSocket, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use vmbw::datapath::{Datapath, Hook, PinDir, Urgency};
use vmbw_tests::{NetNs, in_netns, privileged, require};

const HOST_IP: &str = "198.18.0.1"; // RFC 2544 benchmarking range
const PEER_IP: &str = "198.18.0.2";
const PORT: u16 = 9000;

/// Bytes tc sees for one UDP/IPv4 datagram on Ethernet: payload + UDP (8) +
/// IPv4 without options (20) + Ethernet (14).
fn wire_len(payload: usize) -> u64 {
    (payload + 8 + 20 + 14) as u64
}

/// Sends `n` datagrams of `size` bytes from `tx` to `to` and returns how many
/// `rx` received. Sends in small batches that are drained as they go, so the
/// receiver's socket buffer never overflows.
fn exchange(tx: &UdpSocket, rx: &UdpSocket, to: &str, n: usize, size: usize) -> usize {
    const BATCH: usize = 10;
    rx.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let out = vec![0xa5u8; size];
    let mut buf = [0u8; 2048];
    let mut got = 0;
    for sent in (0..n).step_by(BATCH) {
        let batch = BATCH.min(n - sent);
        for _ in 0..batch {
            tx.send_to(&out, to).expect("send_to");
        }
        for _ in 0..batch {
            match rx.recv_from(&mut buf) {
                Ok(_) => got += 1,
                Err(_) => return got, // timed out: report what arrived
            }
        }
    }
    got
}

#[test]
fn counts_real_traffic_per_direction() {
    counts_real_traffic(Hook::Auto);
}

/// The same on clsact + cls_bpf, the hook of kernels without TCX (< 6.6).
#[test]
fn counts_real_traffic_per_direction_on_cls_bpf() {
    counts_real_traffic(Hook::ClsBpf);
}

fn counts_real_traffic(hook: Hook) {
    require!(privileged());
    let host = NetNs::new().expect("host namespace");
    let peer = NetNs::new().expect("peer namespace");
    host.veth_to(
        ("veth0", &format!("{HOST_IP}/24")),
        &peer,
        ("veth0", &format!("{PEER_IP}/24")),
    )
    .expect("veth pair");

    // Peer: a UDP socket in the peer namespace that counts what arrives.
    let peer_sock = in_netns(&peer, || {
        UdpSocket::bind((PEER_IP, PORT)).expect("bind peer")
    });

    let (out_n, out_size) = (100, 1000);
    let (back_n, back_size) = (50, 500);

    let dp = in_netns(&host, || {
        let mut dp = Datapath::load(&PinDir::Ephemeral).expect("load datapath");
        dp.attach_with("veth0", hook).expect("attach to veth0");
        if hook == Hook::ClsBpf {
            // The programs sit in clsact, not in TCX.
            for dir in ["egress", "ingress"] {
                let filters = host
                    .exec("tc", &["filter", "show", "dev", "veth0", dir])
                    .expect("tc filter show");
                eprintln!("tc filter show dev veth0 {dir}:\n{filters}");
                assert!(
                    filters.contains("bpf") && filters.contains("direct-action"),
                    "{dir}: {filters}"
                );
            }
            assert!(
                SchedClassifier::query_tcx("veth0", TcAttachType::Egress)
                    .expect("query tcx")
                    .1
                    .is_empty(),
                "nothing in TCX"
            );
        }
        let sock = UdpSocket::bind((HOST_IP, PORT)).expect("bind host");
        let to_peer = format!("{PEER_IP}:{PORT}");
        let to_host = format!("{HOST_IP}:{PORT}");
        assert_eq!(
            exchange(&sock, &peer_sock, &to_peer, out_n, out_size),
            out_n,
            "traffic must flow through the datapath untouched"
        );
        assert_eq!(
            exchange(&peer_sock, &sock, &to_host, back_n, back_size),
            back_n,
            "replies must arrive"
        );
        dp
    });

    let c = dp.counters().expect("read counters");
    // Neighbours are pinned and IPv6 is off: nothing but our datagrams
    // crosses the link, so the counts are exact.
    assert_eq!(c.egress.packets, out_n as u64, "egress packets");
    assert_eq!(
        c.egress.bytes,
        out_n as u64 * wire_len(out_size),
        "egress bytes"
    );
    assert_eq!(c.ingress.packets, back_n as u64, "ingress packets");
    assert_eq!(
        c.ingress.bytes,
        back_n as u64 * wire_len(back_size),
        "ingress bytes"
    );
}

#[test]
fn dropping_the_datapath_detaches_it() {
    require!(privileged());
    let host = NetNs::new().expect("host namespace");
    let peer = NetNs::new().expect("peer namespace");
    host.veth_to(
        ("veth0", "198.18.1.1/24"),
        &peer,
        ("veth0", "198.18.1.2/24"),
    )
    .expect("veth pair");
    in_netns(&host, || {
        let attached = |t| {
            SchedClassifier::query_tcx("veth0", t)
                .expect("query tcx")
                .1
                .len()
        };
        let mut dp = Datapath::load(&PinDir::Ephemeral).expect("load datapath");
        dp.attach("veth0").expect("attach");
        assert_eq!(attached(TcAttachType::Egress), 1);
        assert_eq!(attached(TcAttachType::Ingress), 1);
        drop(dp);
        assert_eq!(
            attached(TcAttachType::Egress),
            0,
            "egress program left behind"
        );
        assert_eq!(
            attached(TcAttachType::Ingress),
            0,
            "ingress program left behind"
        );
    });
}

/// Per-packet header bytes tc sees on an established TCP/IPv4 connection
/// with timestamps (Linux's default): Ethernet 14 + IPv4 20 + TCP 20 + 12.
const TCP_TS_HEADERS: u64 = 14 + 20 + 32;

/// Streams `total` bytes over `stream`, then closes it and returns.
/// Writes `total` bytes and half-closes; the stream is returned so that
/// its TCP counters can be read once the peer has everything.
fn stream_bytes(mut stream: std::net::TcpStream, total: usize) -> std::net::TcpStream {
    use std::io::Write as _;
    let chunk = vec![0x42u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    stream
}

/// Bytes the kernel may have sent again on `stream`: its retransmitted
/// segments (TCP_INFO) times its MSS. Retransmissions are real bytes on the
/// wire, and the datapath counts them; on a loaded machine veth's backlog
/// drops a few segments (seen: 3% above the payload with other tests busy).
fn retransmitted_bytes(stream: &std::net::TcpStream) -> u64 {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    u64::from(info.tcpi_total_retrans) * u64::from(info.tcpi_snd_mss)
}

/// Accepts one connection and reads it to the end; returns the byte count.
fn sink(listener: std::net::TcpListener) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
    })
}

#[test]
fn classifies_concurrent_real_tcp_flows_within_one_percent() {
    classifies_concurrent_real_tcp_flows(Hook::Auto);
}

/// The same on clsact + cls_bpf, the hook of kernels without TCX (< 6.6).
#[test]
fn classifies_concurrent_real_tcp_flows_on_cls_bpf() {
    classifies_concurrent_real_tcp_flows(Hook::ClsBpf);
}

fn classifies_concurrent_real_tcp_flows(hook: Hook) {
    require!(privileged());
    let host = NetNs::new().expect("host namespace");
    let peer = NetNs::new().expect("peer namespace");
    host.veth_to(
        ("veth0", "198.18.2.1/24"),
        &peer,
        ("veth0", "198.18.2.2/24"),
    )
    .expect("veth pair");
    // The VM's address lives on the host side; the application sink is a
    // second peer address reached with the VM address as source.
    host.ip(&["addr", "add", "198.18.2.10/32", "dev", "veth0"])
        .expect("vm addr");
    peer.ip(&["addr", "add", "198.18.2.3/32", "dev", "veth0"])
        .expect("sink addr");
    host.ip(&[
        "route",
        "add",
        "198.18.2.3/32",
        "dev",
        "veth0",
        "src",
        "198.18.2.10",
    ])
    .expect("route");
    let (host_mac, peer_mac) = (
        host.mac("veth0").expect("mac"),
        peer.mac("veth0").expect("mac"),
    );
    #[rustfmt::skip]
    host.ip(&["neigh", "replace", "198.18.2.3", "lladdr", &peer_mac, "dev", "veth0", "nud", "permanent"]).expect("neigh");
    #[rustfmt::skip]
    peer.ip(&["neigh", "replace", "198.18.2.10", "lladdr", &host_mac, "dev", "veth0", "nud", "permanent"]).expect("neigh");
    peer.ip(&["route", "add", "198.18.2.10/32", "dev", "veth0"])
        .expect("return route");

    let (mig_listener, app_listener) = in_netns(&peer, || {
        (
            std::net::TcpListener::bind("198.18.2.2:4444").expect("bind mig"),
            std::net::TcpListener::bind("198.18.2.3:5555").expect("bind app"),
        )
    });
    let (mig_sink, app_sink) = (sink(mig_listener), sink(app_listener));
    let (mig_bytes, app_bytes) = (24 << 20, 16 << 20);

    const VM: u32 = 1;
    let dp = in_netns(&host, || {
        let mut dp = Datapath::load(&PinDir::Ephemeral).expect("load");
        dp.attach_with("veth0", hook).expect("attach");
        dp.add_vm_ip(VM, "198.18.2.10".parse().expect("ip"))
            .expect("vm ip");
        let mig = std::net::TcpStream::connect("198.18.2.2:4444").expect("connect mig");
        // Register the exact 5-tuple now that the local port is known.
        let (local, remote) = (
            mig.local_addr().expect("local"),
            mig.peer_addr().expect("peer"),
        );
        dp.add_migration_flow(
            VM,
            (local.ip(), local.port()),
            (remote.ip(), remote.port()),
            6,
            Urgency::Background,
        )
        .expect("register flow");
        let app = std::net::TcpStream::connect("198.18.2.3:5555").expect("connect app");
        assert_eq!(
            app.local_addr().expect("local").ip().to_string(),
            "198.18.2.10"
        );
        let streams = std::thread::scope(|s| {
            let mig = s.spawn(|| stream_bytes(mig, mig_bytes));
            let app = s.spawn(|| stream_bytes(app, app_bytes));
            (mig.join().expect("mig"), app.join().expect("app"))
        });
        (dp, streams)
    });
    let (dp, (mig_stream, app_stream)) = dp;
    assert_eq!(mig_sink.join().expect("mig sink"), mig_bytes as u64);
    assert_eq!(app_sink.join().expect("app sink"), app_bytes as u64);

    // The agent reads every slot in one batch. Per-key reads between two
    // batches must lie between them (late ACKs may still be counted).
    let first = dp.vm_counters_below(VM + 1).expect("batched counters");
    let c = dp.vm_counters(VM).expect("counters");
    let per_key: Vec<_> = (0..VM)
        .map(|slot| dp.vm_counters(slot).expect("counters"))
        .collect();
    let second = dp.vm_counters_below(VM + 1).expect("batched counters");
    assert_eq!(first.len(), VM as usize + 1);
    for (slot, one) in per_key.iter().chain([&c]).enumerate() {
        let fields = |v: &vmbw::datapath::VmCounters| {
            [v.other, v.migration, v.application]
                .iter()
                .flat_map(|k| [k.egress, k.ingress])
                .flat_map(|x| [x.bytes, x.packets])
                .collect::<Vec<u64>>()
        };
        let (lo, mid, hi) = (fields(&first[slot]), fields(one), fields(&second[slot]));
        assert!(
            lo.iter()
                .zip(&mid)
                .zip(&hi)
                .all(|((l, m), h)| l <= m && m <= h),
            "slot {slot}: batch {lo:?}, per key {mid:?}, batch {hi:?}"
        );
    }
    assert!(
        first[VM as usize].migration.egress.bytes > 0,
        "the batch saw the traffic"
    );
    for (what, counter, sent, stream) in [
        (
            "migration",
            c.migration.egress,
            mig_bytes as u64,
            &mig_stream,
        ),
        (
            "application",
            c.application.egress,
            app_bytes as u64,
            &app_stream,
        ),
    ] {
        let payload = counter.bytes - counter.packets * TCP_TS_HEADERS;
        let resent = retransmitted_bytes(stream);
        // Within 1% of what was sent, plus what the kernel sent again.
        let (low, high) = (sent as f64 * 0.99, sent as f64 * 1.01 + resent as f64);
        eprintln!(
            "{what}: {} bytes in {} skbs -> payload {payload} vs sent {sent} (+{resent} retransmitted)",
            counter.bytes, counter.packets,
        );
        assert!(
            (low..=high).contains(&(payload as f64)),
            "{what}: counted payload {payload} vs sent {sent} (+{resent} retransmitted)"
        );
    }
    // The return ACKs of each flow are counted in its class on ingress.
    assert!(c.migration.ingress.packets > 0 && c.application.ingress.packets > 0);
}

#[test]
fn a_restarted_agent_adopts_the_pinned_datapath_and_traffic_flows_meanwhile() {
    require!(privileged());
    let bpffs = vmbw_tests::BpffsMount::new().expect("private bpffs");
    let pin = PinDir::Persistent(bpffs.path().join("vmbw"));
    let host = NetNs::new().expect("host namespace");
    let peer = NetNs::new().expect("peer namespace");
    host.veth_to(
        ("veth0", "198.18.3.1/24"),
        &peer,
        ("veth0", "198.18.3.2/24"),
    )
    .expect("veth pair");
    const VM: u32 = 5;
    let attached = |t| {
        SchedClassifier::query_tcx("veth0", t)
            .expect("query tcx")
            .1
            .len()
    };
    let peer_sock = in_netns(&peer, || {
        UdpSocket::bind(("198.18.3.2", PORT)).expect("bind")
    });

    in_netns(&host, || {
        let mut dp = Datapath::load(&pin).expect("first agent: load");
        dp.attach("veth0").expect("first agent: attach");
        dp.add_vm_ip(VM, "198.18.3.1".parse().expect("ip"))
            .expect("vm ip");
        drop(dp); // the agent dies without cleaning up
        assert_eq!(
            (
                attached(TcAttachType::Egress),
                attached(TcAttachType::Ingress)
            ),
            (1, 1)
        );
    });

    // While no agent runs: traffic flows and is still classified.
    let sent_while_down = 40;
    in_netns(&host, || {
        let sock = UdpSocket::bind(("198.18.3.1", PORT)).expect("bind");
        let got = exchange(
            &sock,
            &peer_sock,
            &format!("198.18.3.2:{PORT}"),
            sent_while_down,
            200,
        );
        assert_eq!(got, sent_while_down, "traffic must flow with no agent");
    });

    in_netns(&host, || {
        let mut dp = Datapath::load(&pin).expect("second agent: load");
        let c = dp.vm_counters(VM).expect("counters");
        assert_eq!(
            c.application.egress.packets, sent_while_down as u64,
            "counted while down"
        );
        let addrs = dp.registered_addrs().expect("addrs");
        assert!(
            addrs.iter().any(|(_, vm)| *vm == VM),
            "tables survived: {addrs:?}"
        );
        dp.attach("veth0").expect("second agent: adopt");
        assert_eq!(
            (
                attached(TcAttachType::Egress),
                attached(TcAttachType::Ingress)
            ),
            (1, 1),
            "adopting must replace, not add"
        );
        let sock = UdpSocket::bind(("198.18.3.1", PORT)).expect("bind");
        assert_eq!(
            exchange(&sock, &peer_sock, &format!("198.18.3.2:{PORT}"), 10, 200),
            10
        );
        let c = dp.vm_counters(VM).expect("counters");
        assert_eq!(c.application.egress.packets, sent_while_down as u64 + 10);
        dp.remove().expect("clean removal");
        assert_eq!(
            (
                attached(TcAttachType::Egress),
                attached(TcAttachType::Ingress)
            ),
            (0, 0)
        );
    });
    assert!(!bpffs.path().join("vmbw").exists(), "pins removed");
}
