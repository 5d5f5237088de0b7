//! A controller decision enforced end to end on a real kernel: the HTB tree
//! from `control::enforce`, the datapath on the same device steering by
//! `skb->priority`, and two real TCP flows whose sockets set no priority at
//! all. Only the eBPF classifier can put them into their classes.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use vmbw::{
    control::{Decision, VmDecision, enforce},
    datapath::{Datapath, PinDir, PortSide},
    shaping::{Enforcement, Shaper, TrafficClass, class_handle},
};
use vmbw_tests::{
    in_netns, privileged, require,
    shaped::{HOST_IP, IFACE, ShapedLink},
    tcp::{TcpSink, TcpSource, expected_goodput, record},
};

const MBIT: f64 = 125_000.0;

#[test]
fn datapath_steers_flows_into_the_classes_a_decision_sets() {
    require!(privileged());
    let link = ShapedLink::new().expect("shaped link");
    const SLOT: u16 = 1;
    let (mig_port, app_port) = (5401u16, 5402u16);

    // The decision: VM "a" migrates capped at 20 Mbit (guarantee = ceil),
    // its application has a 50 Mbit reservation, on a 100 Mbit link.
    let mut d = VmDecision::unenforced("a");
    d.enforce(20.0 * MBIT, 20.0 * MBIT);
    d.app_reserve = 50.0 * MBIT;
    let decision = Decision { vms: vec![d] };
    let slots: BTreeMap<String, u16> = [("a".to_owned(), SLOT)].into_iter().collect();
    let plan = enforce::plan(&decision, 100.0 * MBIT, &slots, Enforcement::Htb).expect("plan");

    let (mut shaper, mut dp) = in_netns(&link.host, || {
        let tc = link.tc().expect("tc");
        let (shaper, _) = link
            .rt
            .block_on(Shaper::install(tc, IFACE, &plan.tree, &link.opts()))
            .expect("install HTB");
        let mut dp = Datapath::load(&PinDir::Ephemeral).expect("datapath");
        dp.attach(IFACE).expect("attach");
        // Migration: the destination's port; application: the VM's address.
        dp.set_migration_ports(u32::from(SLOT), PortSide::Remote, mig_port, mig_port)
            .expect("ports");
        dp.add_vm_ip(u32::from(SLOT), HOST_IP.into())
            .expect("vm ip");
        (shaper, dp)
    });
    let report = link
        .rt
        .block_on(enforce::apply(&plan, &mut shaper, &mut dp))
        .expect("apply");
    assert_eq!(report.enforcement, Enforcement::Htb);

    let mig_sink = TcpSink::start(&link.peer, link.peer_addr(mig_port)).expect("sink");
    let app_sink = TcpSink::start(&link.peer, link.peer_addr(app_port)).expect("sink");
    // No SO_PRIORITY: the flows are steered by the datapath alone.
    let mig = TcpSource::start(&link.host, mig_sink.addr(), None).expect("mig source");
    let app = TcpSource::start(&link.host, app_sink.addr(), None).expect("app source");
    let start = Instant::now();
    let series = record(
        &[mig_sink.counter(), app_sink.counter()],
        start,
        Duration::from_millis(20),
        |t| t >= Duration::from_millis(5500),
    );
    let mss = mig.mss();
    mig.stop().expect("migration flow survived");
    app.stop().expect("application flow survived");
    let mtu = link.mtu().expect("mtu");
    let (from, to) = (1.5, series.end());
    let mig_bps = series.rate_bps(0, from, to);
    let app_bps = series.rate_bps(1, from, to);
    let mig_expected = expected_goodput(20e6, mss, mtu);
    let err = (mig_bps - mig_expected) / mig_expected * 100.0;
    println!(
        "migration {:.2} Mbit/s (cap 20, expected goodput {:.2}, {err:+.2}%), application {:.2} Mbit/s (reserve 50)",
        mig_bps / 1e6,
        mig_expected / 1e6,
        app_bps / 1e6
    );
    assert!(
        err.abs() <= 5.0,
        "migration goodput off its class cap by {err:+.2}%"
    );
    assert!(
        app_bps >= expected_goodput(50e6, mss, mtu) * 0.95,
        "application below its reservation"
    );

    // The kernel's own accounting agrees: both VM classes carried traffic,
    // and the datapath counted the migration in the migration class.
    let tree = link.rt.block_on(shaper.observe()).expect("observe");
    for class in TrafficClass::ALL {
        let handle = class_handle(SLOT, class).expect("handle");
        let bytes = tree.classes.get(&handle).map_or(0, |c| c.bytes);
        assert!(
            bytes > 1_000_000,
            "{class:?} class carried only {bytes} bytes"
        );
    }
    let c = dp.vm_counters(u32::from(SLOT)).expect("counters");
    assert!(c.migration.egress.bytes > 1_000_000 && c.application.egress.bytes > 1_000_000);
    link.rt
        .block_on(shaper.cleanup())
        .expect("restore the root qdisc");
}
