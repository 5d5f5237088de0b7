//! The agent's QMP connection failing during a real migration, and the
//! migration itself being cancelled and started again. The agent reaches
//! QEMU through a unix-socket relay the test controls:
//!
//! 1. the relay stops forwarding for 10 s (QEMU "hangs"): the migration and
//!    the guest's traffic go on (the datapath and the HTB tree do not need
//!    the agent), the control loop keeps ticking (`/healthz`), and the VM
//!    task takes up the migration again once QEMU answers;
//! 2. the relay closes the connection mid-migration: the agent reconnects
//!    and follows the same migration on;
//! 3. the migration is cancelled: the agent records it as failed, lifts
//!    its allocation and gives QEMU back the migration parameters it
//!    changed; a new migration to a fresh destination is followed to
//!    completion, and its parameters are given back too.

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use vmbw::{
    api::{MigrationPhase, VmStatus},
    qemu::{Qmp, QmpOptions, types::MigrationStatus},
};
use vmbw_tests::{
    BpffsMount,
    agent::{self, Agent},
    guest::{self, Guest, Workload},
    privileged, require,
    testbed::{DST_IP, GUEST_IP, MigrationTestbed, SINK_PORT, TAP, UPLINK, wait_for_events},
};

const LINK_MBIT: f64 = 50.0;
const GUEST_MB: u32 = 128;

/// A unix-socket relay between the agent and QEMU's QMP socket that can
/// stop forwarding or cut its connections.
struct Relay {
    stalled: Arc<AtomicBool>,
    /// Connections opened before this generation are cut.
    cut: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    /// Bytes QEMU sent the agent (replies and events).
    replies: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(listen: &Path, qemu: &Path) -> Relay {
        let listener = UnixListener::bind(listen).expect("relay socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let relay = Relay {
            stalled: Arc::default(),
            cut: Arc::default(),
            accepted: Arc::default(),
            replies: Arc::default(),
            stop: Arc::default(),
        };
        let (stalled, cut, accepted, replies, stop) = (
            relay.stalled.clone(),
            relay.cut.clone(),
            relay.accepted.clone(),
            relay.replies.clone(),
            relay.stop.clone(),
        );
        let qemu = qemu.to_path_buf();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((agent_side, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let Ok(qemu_side) = UnixStream::connect(&qemu) else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let generation = cut.load(Ordering::Relaxed);
                let _ = agent_side.set_nonblocking(false);
                for (from, to, counted) in [
                    (agent_side.try_clone(), qemu_side.try_clone(), None),
                    (
                        qemu_side.try_clone(),
                        agent_side.try_clone(),
                        Some(replies.clone()),
                    ),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (stalled, cut, stop) = (stalled.clone(), cut.clone(), stop.clone());
                    std::thread::spawn(move || {
                        pump(from, to, generation, &stalled, &cut, &stop, counted)
                    });
                }
            }
        });
        relay
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::Relaxed);
    }

    fn cut(&self) {
        self.cut.fetch_add(1, Ordering::Relaxed);
    }

    fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either closes, the relay cuts this
/// generation, or it stops; holds bytes while stalled. Adds what it
/// copied to `counted`.
fn pump(
    mut from: UnixStream,
    mut to: UnixStream,
    generation: u64,
    stalled: &AtomicBool,
    cut: &AtomicU64,
    stop: &AtomicBool,
    counted: Option<Arc<AtomicU64>>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 8192];
    loop {
        if stop.load(Ordering::Relaxed) || cut.load(Ordering::Relaxed) != generation {
            break;
        }
        if stalled.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if let Some(c) = &counted {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn vm(agent: &Agent) -> Option<VmStatus> {
    agent.vms().into_iter().find(|v| v.name == "vm1")
}

/// Polls `f` every 100 ms for up to `within`.
fn until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    until_ok(within, || f().ok_or(())).ok()
}

/// Polls `f` every 100 ms for up to `within`; its last `Err` if it never
/// returned `Ok`.
fn until_ok<T, E>(within: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// QEMU's transferred bytes, by the test's own control monitor.
fn transferred(rt: &tokio::runtime::Runtime, ctl: &mut Qmp) -> (Option<MigrationStatus>, u64) {
    let info = rt.block_on(ctl.query_migrate()).expect("query-migrate");
    (info.status, info.ram.as_ref().map_or(0, |r| r.transferred))
}

#[test]
fn qmp_stalls_cuts_and_a_cancelled_migration_are_survived() {
    require!(privileged());
    require!(guest::available());
    require!(agent::binary());
    let guest = Guest::build().expect("test guest");
    let tb = MigrationTestbed::new(LINK_MBIT).expect("testbed");
    let sink = tb.start_sink().expect("sink");
    // 24 MiB rewritten at 5 MiB/s at random beside a 10 Mbit/s stream: more
    // than the ~37 Mbit/s left to the migration, so pre-copy does not
    // converge on its own and lasts through the faults.
    let workload = Workload::new("net")
        .with("sink", format!("{DST_IP}:{SINK_PORT}"))
        .with("proto", "tcp")
        .with("rate-mbit", 10)
        .with("dirty-mbps", 5)
        .with("wss-mb", 24)
        .with("report-secs", 1);
    let (src, dst) = tb
        .boot(&guest, &workload, GUEST_MB, Duration::from_secs(180))
        .expect("guest ready");

    let run = tb.run.path();
    let relay_path: PathBuf = run.join("qmp-relay.sock");
    let relay = Relay::start(&relay_path, &src.qmp);
    let bpffs = BpffsMount::new().expect("bpffs");
    let config = run.join("vmbw.toml");
    let api = run.join("api.sock");
    std::fs::write(
        &config,
        format!(
            "[agent]\npolicy = \"nrac\"\n\
             [[uplink]]\niface = \"{UPLINK}\"\nlink_mbit = {}\n\
             [datapath]\npin_dir = \"{}\"\n\
             [shaping]\nstate_dir = \"{}\"\n\
             [api]\nlisten = \"unix:{}\"\n\
             [[vm]]\nname = \"vm1\"\nqmp = \"{}\"\nips = [\"{GUEST_IP}\"]\ntaps = [\"{TAP}\"]\nreserve_mbit = 10\n",
            LINK_MBIT * 0.95,
            bpffs.path().join("vmbw").display(),
            run.join("state").display(),
            api.display(),
            relay_path.display(),
        ),
    )
    .expect("config");
    let mut agent = Agent::start(&tb.src, &config, &api, &run.join("agent.log")).expect("agent");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // QEMU's monitor does not answer while the VM is stopped for the
    // switch, and the second migration may stop it for up to 10 s (seen: a
    // query timed out after the default 5 s).
    let mut ctl = rt
        .block_on(Qmp::connect(
            &src.qmp_ctl,
            QmpOptions {
                command_timeout: Duration::from_secs(30),
                ..QmpOptions::default()
            },
        ))
        .expect("control QMP");
    if let Err(e) = rt.block_on(wait_for_events(&mut ctl)) {
        panic!(
            "{e:#}: the agent did not follow the VM:\n{}",
            agent.log_text()
        );
    }
    // What the migration's starter left; the agent gives back what it
    // changes once a migration ends (QEMU keeps them for the next).
    let starting = rt
        .block_on(ctl.query_migrate_parameters())
        .expect("query-migrate-parameters");
    rt.block_on(ctl.migrate(&tb.migration_uri()))
        .expect("migrate");
    let decided = |agent: &Agent| {
        vm(agent).filter(|v| {
            v.migration
                .as_ref()
                .is_some_and(|m| m.phase == MigrationPhase::PreCopy)
                && v.allocation.migration_rate_bytes_per_sec.is_some()
        })
    };
    until(Duration::from_secs(30), || decided(&agent))
        .unwrap_or_else(|| panic!("no decision for the migration:\n{}", agent.log_text()));

    // 1. QEMU stops answering for 10 s.
    let (_, sent_before) = transferred(&rt, &mut ctl);
    let app_before = sink.bytes();
    relay.stall(true);
    let mut unhealthy = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        if agent.get("/healthz").map(|r| r.0).unwrap_or(0) != 200 {
            unhealthy += 1;
        }
    }
    relay.stall(false);
    let (status, sent_after) = transferred(&rt, &mut ctl);
    let app_during = sink.bytes() - app_before;
    eprintln!(
        "QMP stalled 10 s: migration sent {} B, application {app_during} B, /healthz failed {unhealthy}/20",
        sent_after - sent_before
    );
    assert_eq!(status, Some(MigrationStatus::Active), "still migrating");
    assert!(
        sent_after - sent_before > 5_000_000,
        "the migration went on while QEMU's monitor hung"
    );
    assert!(
        app_during > 5_000_000,
        "the guest's 10 Mbit/s went on (>= 4 Mbit/s over the 10 s)"
    );
    assert_eq!(unhealthy, 0, "the control loop kept ticking");
    // The VM task polls QEMU again over the same connection: QEMU's
    // replies flow (a query-migrate reply every 100 ms, ~1 KiB). A new
    // iteration sample would say the same only once the pass ends, which
    // on a loaded machine the bulk pass may not within any fixed wait
    // (seen under --stress: still in the bulk pass 20 s after the stall);
    // step 2 checks a new sample arrives.
    let replies_after_stall = relay.replies();
    until(Duration::from_secs(20), || {
        (relay.replies() > replies_after_stall + 8192).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the VM task did not poll QEMU again after the stall ({} bytes of replies since):\n{}",
            relay.replies() - replies_after_stall,
            agent.log_text()
        )
    });

    // 2. The connection is cut mid-migration.
    let connections = relay.connections();
    relay.cut();
    until(Duration::from_secs(20), || {
        (relay.connections() > connections).then_some(())
    })
    .unwrap_or_else(|| panic!("the agent did not reconnect:\n{}", agent.log_text()));
    let (status, _) = transferred(&rt, &mut ctl);
    assert_eq!(status, Some(MigrationStatus::Active), "still migrating");
    // Followed on: a new iteration sample arrives over the new connection.
    let samples_at_cut = vm(&agent)
        .and_then(|v| v.migration)
        .map_or(0, |m| m.samples);
    until(Duration::from_secs(60), || {
        vm(&agent)
            .and_then(|v| v.migration)
            .filter(|m| m.phase == MigrationPhase::PreCopy && m.samples > samples_at_cut)
    })
    .unwrap_or_else(|| {
        panic!(
            "after reconnecting, the agent follows the same migration:\n{}",
            agent.log_text()
        )
    });

    // 3. Cancelled, then started again to a fresh destination.
    rt.block_on(ctl.migrate_cancel()).expect("migrate_cancel");
    let ended = until(Duration::from_secs(20), || {
        vm(&agent)
            .and_then(|v| v.migration)
            .filter(|m| m.phase == MigrationPhase::Failed)
    });
    assert!(
        ended.is_some(),
        "the cancelled migration shows as failed: {:?}\n{}",
        vm(&agent),
        agent.log_text()
    );
    until(Duration::from_secs(10), || {
        vm(&agent).filter(|v| v.allocation.migration_rate_bytes_per_sec.is_none())
    })
    .unwrap_or_else(|| {
        panic!(
            "no allocation left for a migration that ended: {:?}",
            vm(&agent)
        )
    });
    let given_back = |ctl: &mut Qmp| {
        let now = rt
            .block_on(ctl.query_migrate_parameters())
            .expect("query-migrate-parameters");
        (now.max_bandwidth == starting.max_bandwidth
            && now.avail_switchover_bandwidth == starting.avail_switchover_bandwidth)
            .then_some(())
            .ok_or(now)
    };
    if let Err(now) = until_ok(Duration::from_secs(10), || given_back(&mut ctl)) {
        panic!(
            "the cancelled migration's parameters were given back: {now:?}, started with \
             {starting:?}\n{}",
            agent.log_text()
        );
    }
    let app_before = sink.bytes();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        sink.bytes() - app_before > 1_000_000,
        "the guest's traffic flows after the cancel"
    );
    drop(dst);
    let dst = tb
        .start_destination_at(0, &guest, &workload, GUEST_MB, false)
        .expect("a fresh destination");
    // This one may stop the guest for up to 10 s, so it ends after its
    // bulk pass (nrac leaves QEMU's downtime limit alone).
    rt.block_on(ctl.set_downtime_limit(10_000))
        .expect("downtime-limit");
    // The destination listens once its monitor answers (QEMU opens the
    // incoming socket before it serves QMP).
    let dst_ctl = until(Duration::from_secs(60), || {
        rt.block_on(Qmp::connect(&dst.qmp_ctl, QmpOptions::default()))
            .ok()
    });
    assert!(dst_ctl.is_some(), "the fresh destination's monitor answers");
    rt.block_on(ctl.migrate(&tb.migration_uri()))
        .expect("the second migration starts");
    let end = until_ok(Duration::from_secs(400), || {
        let info = rt.block_on(ctl.query_migrate()).expect("query-migrate");
        if matches!(
            info.status,
            Some(MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled)
        ) {
            Ok(info)
        } else {
            Err(Box::new(info))
        }
    });
    let end = end.unwrap_or_else(|last| {
        let params = rt.block_on(ctl.query_migrate_parameters());
        panic!(
            "the second migration ends within 400 s; last: {last:?}\nparameters: {params:?}\n{}",
            agent.log_text()
        )
    });
    assert_eq!(
        end.status,
        Some(MigrationStatus::Completed),
        "the second migration completes ({:?}); destination: {}\n{}",
        end.error_desc,
        dst.console_tail(20),
        agent.log_text()
    );
    let followed = until(Duration::from_secs(10), || {
        vm(&agent)
            .and_then(|v| v.migration)
            .filter(|m| m.phase == MigrationPhase::Completed)
    });
    assert!(
        followed.is_some(),
        "the agent followed the second migration to its end: {:?}\n{}",
        vm(&agent),
        agent.log_text()
    );
    if let Err(now) = until_ok(Duration::from_secs(10), || given_back(&mut ctl)) {
        panic!(
            "the completed migration's parameters were given back: {now:?}, started with \
             {starting:?}\n{}",
            agent.log_text()
        );
    }
    assert_eq!(
        agent
            .signal(libc::SIGTERM, Duration::from_secs(15))
            .expect("SIGTERM"),
        Some(0)
    );
    drop(dst);
    drop(src);
}
