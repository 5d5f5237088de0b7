//! The counting datapath on a real kernel: two test-made namespaces joined by
//! a veth pair, vmbw's tc programs on one end, real UDP traffic both ways.

use std::{net::UdpSocket, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use vmbw::datapath::{Datapath, PinDir};
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
        dp.attach("veth0").expect("attach to veth0");
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
