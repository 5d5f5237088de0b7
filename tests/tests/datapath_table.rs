//! The classifier run by the kernel on frames built here
//! (BPF_PROG_TEST_RUN): verdict, steering (`priority`, `tstamp` read back
//! from the context), EDT pacing and drops, and exact counter changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vmbw::datapath::{Datapath, Mode, PinDir, PortSide, SkbIn, Urgency, VmCounters};
use vmbw_common::{ClassConfig, Direction, NO_VM, class};
use vmbw_tests::{frames::*, privileged, require};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

const HOST4: [u8; 4] = [198, 18, 0, 1];
const PEER4: [u8; 4] = [198, 18, 0, 2];
const VM4: [u8; 4] = [198, 18, 0, 10];
const HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const PEER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VM6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// VM 1: address VM4/VM6/MAC_VM, exact migration flow HOST4:40000 -> PEER4:4444.
const VM_A: u32 = 1;
/// VM 2: migration by remote port range 49152..=49215.
const VM_B: u32 = 2;
/// VM 3: its tap device has ifindex 77.
const VM_C: u32 = 3;
const TAP_C: u32 = 77;

fn handle(vm: u32, class: u32) -> u32 {
    (1 << 16) | (vm * 16 + class + 1)
}

fn setup() -> Datapath {
    let mut dp = Datapath::load(&PinDir::Ephemeral).expect("load datapath");
    dp.add_vm_ip(VM_A, IpAddr::V4(Ipv4Addr::from(VM4)))
        .expect("vm ip");
    dp.add_vm_ip(VM_A, IpAddr::V6(Ipv6Addr::from(VM6)))
        .expect("vm ip6");
    dp.add_vm_mac(VM_A, MAC_VM).expect("vm mac");
    dp.add_migration_flow(
        VM_A,
        (IpAddr::V4(Ipv4Addr::from(HOST4)), 40000),
        (IpAddr::V4(Ipv4Addr::from(PEER4)), 4444),
        TCP,
        Urgency::Background,
    )
    .expect("flow");
    dp.set_migration_ports(VM_B, PortSide::Remote, 49152, 49215)
        .expect("ports");
    dp.add_vm_tap(VM_C, TAP_C).expect("tap");
    for vm in [NO_VM, VM_A, VM_B, VM_C] {
        for c in [class::OTHER, class::MIGRATION, class::APPLICATION] {
            let cfg = ClassConfig {
                priority: handle(vm, c),
                ..ClassConfig::default()
            };
            dp.set_class(vm, c, cfg).expect("class config");
        }
    }
    dp
}

struct Case {
    name: &'static str,
    dir: Direction,
    frame: Frame,
    ingress_ifindex: u32,
    vm: u32,
    class: u32,
}

fn cases() -> Vec<Case> {
    let e = Direction::Egress;
    let i = Direction::Ingress;
    let c = |name, dir, frame, vm, class| Case {
        name,
        dir,
        frame,
        ingress_ifindex: 0,
        vm,
        class,
    };
    // Node-to-node VXLAN (Flannel/Cilium port 8472) carrying the exact
    // migration flow and the VM's own traffic.
    let overlay = |inner: Frame| {
        Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
            .ipv4([192, 0, 2, 1], [192, 0, 2, 2], UDP, 0, 0)
            .udp(51234, 8472)
            .vxlan(1, &inner)
    };
    vec![
        c(
            "vxlan: the exact migration flow inside, egress",
            e,
            overlay(
                Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                    .ipv4(HOST4, PEER4, TCP, 0, 0)
                    .tcp(40000, 4444)
                    .payload(100),
            ),
            VM_A,
            class::MIGRATION,
        ),
        c(
            "vxlan: the VM's own traffic inside, egress",
            e,
            overlay(
                Frame::eth(MAC_VM, MAC_PEER, ETH_IPV4)
                    .ipv4(VM4, PEER4, TCP, 0, 0)
                    .tcp(80, 51000),
            ),
            VM_A,
            class::APPLICATION,
        ),
        c(
            "ipv4 tcp exact migration flow, egress",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(HOST4, PEER4, TCP, 0, 0)
                .tcp(40000, 4444)
                .payload(100),
            VM_A,
            class::MIGRATION,
        ),
        c(
            "ipv4 tcp exact migration flow, ingress (reversed tuple)",
            i,
            Frame::eth(MAC_PEER, MAC_HOST, ETH_IPV4)
                .ipv4(PEER4, HOST4, TCP, 0, 0)
                .tcp(4444, 40000),
            VM_A,
            class::MIGRATION,
        ),
        c(
            "ipv4 with options, tcp migration flow",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(HOST4, PEER4, TCP, 0, 12)
                .tcp(40000, 4444),
            VM_A,
            class::MIGRATION,
        ),
        c(
            "same ports, other peer: not the flow",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(HOST4, [198, 18, 0, 3], TCP, 0, 0)
                .tcp(40000, 4444),
            NO_VM,
            class::OTHER,
        ),
        c(
            "udp from the VM's IPv4",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(VM4, PEER4, UDP, 0, 0)
                .udp(5000, 9000)
                .payload(64),
            VM_A,
            class::APPLICATION,
        ),
        c(
            "udp to the VM's IPv4, ingress",
            i,
            Frame::eth(MAC_PEER, MAC_HOST, ETH_IPV4)
                .ipv4(PEER4, VM4, UDP, 0, 0)
                .udp(9000, 5000),
            VM_A,
            class::APPLICATION,
        ),
        c(
            "vlan-tagged tcp from the VM",
            e,
            Frame::eth_vlan(MAC_HOST, MAC_PEER, 42, ETH_IPV4)
                .ipv4(VM4, PEER4, TCP, 0, 0)
                .tcp(5000, 80),
            VM_A,
            class::APPLICATION,
        ),
        c(
            "icmp from the VM (no ports)",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(VM4, PEER4, ICMP, 0, 0)
                .icmp_echo(),
            VM_A,
            class::APPLICATION,
        ),
        c(
            "ipv4 later fragment of the migration flow: no ports, host address",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(HOST4, PEER4, TCP, 0x00b9, 0)
                .payload(64),
            NO_VM,
            class::OTHER,
        ),
        c(
            "ipv4 later fragment from the VM: by address",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(VM4, PEER4, UDP, 0x00b9, 0)
                .payload(64),
            VM_A,
            class::APPLICATION,
        ),
        c(
            "ipv6 tcp to a migration port range, via extension header",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV6)
                .ipv6(HOST6, PEER6, 0)
                .ipv6_ext(TCP)
                .tcp(33000, 49200),
            VM_B,
            class::MIGRATION,
        ),
        c(
            "ipv6 tcp just outside the range",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV6)
                .ipv6(HOST6, PEER6, TCP)
                .tcp(33000, 49216),
            NO_VM,
            class::OTHER,
        ),
        c(
            "ipv6 udp from the VM's address",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV6)
                .ipv6(VM6, PEER6, UDP)
                .udp(5000, 53),
            VM_A,
            class::APPLICATION,
        ),
        c(
            "arp from the VM's MAC: the VM, class other",
            e,
            Frame::eth(MAC_VM, [0xff; 6], ETH_ARP).arp(),
            VM_A,
            class::OTHER,
        ),
        c(
            "arp from an unknown MAC",
            e,
            Frame::eth(MAC_PEER, [0xff; 6], ETH_ARP).arp(),
            NO_VM,
            class::OTHER,
        ),
        // (The kernel's test run refuses IPv4 frames shorter than an IP
        // header; the host parser tests cover those.)
        c(
            "ipv4 header with a bogus IHL",
            e,
            bogus_ihl(
                Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                    .ipv4(VM4, PEER4, TCP, 0, 0)
                    .tcp(1, 2),
            ),
            NO_VM,
            class::OTHER,
        ),
        c(
            "tcp header cut short",
            e,
            Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                .ipv4(HOST4, PEER4, TCP, 0, 0)
                .payload(2),
            NO_VM,
            class::OTHER,
        ),
        Case {
            ingress_ifindex: TAP_C,
            ..c(
                "forwarded from VM C's tap",
                e,
                Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
                    .ipv4([198, 18, 0, 30], PEER4, UDP, 0, 0)
                    .udp(1, 2),
                VM_C,
                class::APPLICATION,
            )
        },
    ]
}

/// Sets the IHL of the IPv4 header after a plain Ethernet header to 2
/// (8 bytes), which no parser may accept.
fn bogus_ihl(mut f: Frame) -> Frame {
    f.0[14] = 0x42;
    f
}

fn diff(before: &VmCounters, after: &VmCounters) -> Vec<(u32, Direction, u64, u64)> {
    let mut out = Vec::new();
    for c in [class::OTHER, class::MIGRATION, class::APPLICATION] {
        for d in Direction::ALL {
            let (b, a) = (before.class(c).get(d), after.class(c).get(d));
            if a != b {
                out.push((c, d, a.packets - b.packets, a.bytes - b.bytes));
            }
        }
    }
    out
}

#[test]
fn classifies_counts_and_steers_every_case() {
    require!(privileged());
    let mut dp = setup();
    dp.set_mode(Mode::Htb).expect("htb mode");
    for case in cases() {
        let before = dp.vm_counters(case.vm).expect("counters");
        let input = SkbIn {
            ingress_ifindex: case.ingress_ifindex,
            priority: 7,
            ..SkbIn::default()
        };
        let out = dp
            .test_run(case.dir, case.frame.bytes(), input, 1)
            .expect(case.name);
        let after = dp.vm_counters(case.vm).expect("counters");
        assert_eq!(out.verdict, TC_ACT_OK, "{}: verdict", case.name);
        assert_eq!(
            diff(&before, &after),
            vec![(case.class, case.dir, 1, case.frame.bytes().len() as u64)],
            "{}: exactly one packet of its length in ({}, {})",
            case.name,
            class::name(case.class),
            case.dir.as_str()
        );
        let want_priority = match case.dir {
            Direction::Egress => handle(case.vm, case.class),
            Direction::Ingress => 7, // ingress never steers
        };
        assert_eq!(out.priority, want_priority, "{}: priority", case.name);
    }
}

/// Post-copy's preempt channel: counted as the VM's migration, steered into
/// the urgent class in HTB mode (its VM's migration class while no urgent
/// class is set), never paced in EDT mode.
#[test]
fn an_urgent_flow_counts_as_migration_and_skips_the_migration_class() {
    require!(privileged());
    let mut dp = setup();
    let (local, remote) = (
        (IpAddr::V4(Ipv4Addr::from(HOST4)), 40001),
        (IpAddr::V4(Ipv4Addr::from(PEER4)), 4444),
    );
    dp.add_migration_flow(VM_A, local, remote, TCP, Urgency::Urgent)
        .expect("urgent flow");
    let frame = Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
        .ipv4(HOST4, PEER4, TCP, 0, 0)
        .tcp(40001, 4444)
        .payload(1000);
    let urgent = 0x7662_0003;
    let run = |dp: &mut Datapath| {
        let input = SkbIn {
            priority: 7,
            ..SkbIn::default()
        };
        let before = dp.vm_counters(VM_A).expect("counters");
        let out = dp
            .test_run(Direction::Egress, frame.bytes(), input, 1)
            .expect("run");
        let after = dp.vm_counters(VM_A).expect("counters");
        assert_eq!(
            diff(&before, &after),
            vec![(
                class::MIGRATION,
                Direction::Egress,
                1,
                frame.bytes().len() as u64
            )],
            "counted as VM A's migration"
        );
        out
    };
    dp.set_mode(Mode::Htb).expect("htb");
    let out = run(&mut dp);
    assert_eq!(
        out.priority,
        handle(VM_A, class::MIGRATION),
        "no urgent class: the VM's migration class"
    );
    dp.set_urgent_priority(urgent).expect("urgent class");
    assert_eq!(run(&mut dp).priority, urgent);
    // The exact flow beside it is still the migration class.
    let input = SkbIn {
        priority: 7,
        ..SkbIn::default()
    };
    let main = Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
        .ipv4(HOST4, PEER4, TCP, 0, 0)
        .tcp(40000, 4444)
        .payload(1000);
    let out = dp
        .test_run(Direction::Egress, main.bytes(), input, 1)
        .expect("run");
    assert_eq!(out.priority, handle(VM_A, class::MIGRATION));
    // Switching the mode keeps the urgent class.
    dp.set_mode(Mode::Htb).expect("htb again");
    assert_eq!(run(&mut dp).priority, urgent);
    // EDT: the migration class is paced hard, the urgent flow not at all.
    dp.set_class(
        VM_A,
        class::MIGRATION,
        ClassConfig::paced(0, 100_000, 1_000_000_000),
    )
    .expect("paced");
    dp.set_mode(Mode::Edt).expect("edt");
    for _ in 0..3 {
        let out = run(&mut dp);
        assert_eq!((out.verdict, out.tstamp), (TC_ACT_OK, 0), "not paced");
    }
    let paced: Vec<u64> = (0..2)
        .map(|_| {
            dp.test_run(Direction::Egress, main.bytes(), SkbIn::default(), 1)
                .expect("run")
                .tstamp
        })
        .collect();
    assert_ne!(paced[1], 0, "the main stream is paced: {paced:?}");
}

#[test]
fn observe_mode_changes_nothing() {
    require!(privileged());
    let mut dp = setup();
    dp.set_mode(Mode::Observe).expect("observe");
    for case in cases() {
        let input = SkbIn {
            priority: 7,
            tstamp: 0,
            ..SkbIn::default()
        };
        let out = dp
            .test_run(case.dir, case.frame.bytes(), input, 1)
            .expect(case.name);
        assert_eq!(
            (out.verdict, out.priority, out.tstamp),
            (TC_ACT_OK, 7, 0),
            "{}",
            case.name
        );
    }
}

#[test]
fn random_frames_pass_and_are_counted() {
    require!(privileged());
    let mut dp = setup();
    dp.set_mode(Mode::Htb).expect("htb");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut total = 0u64;
    let rounds = 2000u64;
    let before = dp.counters().expect("counters");
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 14 + (x % 200) as usize;
        let frame: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8 ^ i as u8).collect();
        let out = dp
            .test_run(Direction::Egress, &frame, SkbIn::default(), 1)
            .expect("run");
        assert_eq!(out.verdict, TC_ACT_OK);
        total += len as u64;
    }
    let after = dp.counters().expect("counters");
    assert_eq!(after.egress.packets - before.egress.packets, rounds);
    assert_eq!(after.egress.bytes - before.egress.bytes, total);
}

#[test]
fn edt_spaces_packets_and_drops_beyond_the_horizon() {
    require!(privileged());
    let mut dp = setup();
    dp.set_mode(Mode::Edt).expect("edt");
    let frame = Frame::eth(MAC_HOST, MAC_PEER, ETH_IPV4)
        .ipv4(HOST4, PEER4, TCP, 0, 0)
        .tcp(40000, 4444)
        .payload(946); // 1000 bytes on the wire
    let len = frame.bytes().len() as u64;
    assert_eq!(len, 1000);
    // 1 s per packet: the 20 runs below take milliseconds, so a
    // preemption on a loaded machine does not let the queue drain (with a
    // 1 ms gap one did: 9 packets queued, seen under `--stress`).
    let rate = 1_000; // bytes/s
    let gap = len * 1_000_000_000 / rate;
    let horizon = 5 * gap;
    let cfg = ClassConfig::paced(0, rate, horizon);
    dp.set_class(VM_A, class::MIGRATION, cfg).expect("class");

    let run = |dp: &mut Datapath| {
        dp.test_run(Direction::Egress, frame.bytes(), SkbIn::default(), 1)
            .expect("run")
    };
    // First packet of an idle class leaves now (tstamp untouched).
    let started = std::time::Instant::now();
    let first = run(&mut dp);
    assert_eq!((first.verdict, first.tstamp), (TC_ACT_OK, 0));
    // The next ones are spaced exactly one gap apart after the first.
    let mut stamps = Vec::new();
    let mut drops = 0;
    for _ in 0..20 {
        let out = run(&mut dp);
        match out.verdict {
            TC_ACT_OK => {
                assert_ne!(out.tstamp, 0, "a paced packet gets a departure time");
                stamps.push(out.tstamp);
            }
            TC_ACT_SHOT => drops += 1,
            v => panic!("unexpected verdict {v}"),
        }
    }
    assert!(stamps.len() >= 3, "some packets paced: {stamps:?}");
    for w in stamps.windows(2) {
        assert_eq!(w[1] - w[0], gap, "departures one gap apart: {stamps:?}");
    }
    // 20 packets back to back need ~20 gaps; the horizon allows ~5.
    assert!(drops > 0, "packets beyond the horizon are dropped");
    // At most the horizon's worth ahead of the clock, plus what the clock
    // itself moved on while the loop ran (nothing, unless it stalled for
    // seconds).
    let drained = started.elapsed().as_nanos() as u64 / gap;
    assert!(
        stamps.len() as u64 <= 5 + drained,
        "never more than the horizon's worth queued: {} (the clock moved {drained} gaps)",
        stamps.len()
    );
    let c = dp.vm_counters(VM_A).expect("counters").migration.egress;
    assert_eq!(c.dropped_packets, drops);
    assert_eq!(c.dropped_bytes, drops * len);
    assert_eq!(
        c.packets,
        1 + stamps.len() as u64,
        "dropped packets are not counted as sent"
    );
}
