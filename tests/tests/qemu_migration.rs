//! A real live migration (QEMU TCG, Debian kernel, `vmbw-workload`
//! dirtying memory) between two test-made hosts through a rate-limited
//! router, recorded with `vmbw record`'s library function. The samples
//! must agree with QEMU's own counters, the trace must read back
//! identically, and the guest must keep running on the destination.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use vmbw::qemu::{
    Capability, MigrationMonitor, Qmp, QmpOptions,
    monitor::{IterationSample, MonitorConfig},
    record::{self, RecordOptions},
    trace,
    types::MigrationStatus,
};
use vmbw_tests::{
    guest::{self, Guest, Workload},
    privileged, require,
    testbed::{MigrationTestbed, TAP, UPLINK, migrate_when_events_on},
};

/// Kept small so the test stays short on two shared cores: a 128 MiB
/// guest over a 100 Mbit/s link, dirtying a 24 MiB working set at 3 MiB/s.
const LINK_MBIT: f64 = 100.0;
const GUEST_MB: u32 = 128;

/// The tests here each run real TCG migrations with timing bounds; run in
/// parallel on two cores they slow each other down. One at a time.
static REAL_MIGRATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding the lock leaves nothing to clean.
    REAL_MIGRATION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn monitor_samples_agree_with_qemu_on_a_real_migration() {
    require!(privileged());
    require!(guest::available());
    let _serial = one_at_a_time();
    let started = Instant::now();
    let guest = Guest::build().expect("building the test guest");
    let tb = MigrationTestbed::new(LINK_MBIT).expect("testbed");
    let workload = Workload::new("mem-seq")
        .with("wss-mb", 24)
        .with("dirty-mbps", 3)
        .with("report-secs", 1);
    let (src, mut dst) = tb
        .boot(&guest, &workload, GUEST_MB, Duration::from_secs(180))
        .expect("guest boots and starts its workload");
    let booted = started.elapsed();

    let out = tb.run.path().join("trace.csv");
    let opts = RecordOptions {
        qmp: src.qmp.clone(),
        out: out.clone(),
        monitor: MonitorConfig {
            vm_ifaces: vec![TAP.into()],
            uplink: Some(UPLINK.into()),
            ..MonitorConfig::default()
        },
        start_timeout: Duration::from_secs(30),
        comments: vec![format!("test: {}", workload.describe())],
    };
    let samples: Arc<Mutex<Vec<IterationSample>>> = Arc::default();
    let uri = tb.migration_uri();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (summary, dst_status) = rt.block_on(async {
        let seen = samples.clone();
        let recording = record::record(&opts, move |s| seen.lock().expect("lock").push(s.clone()));
        let start_migration = async {
            migrate_when_events_on(&src, &uri)
                .await
                .expect("starting the migration");
        };
        let (summary, ()) = tokio::time::timeout(Duration::from_secs(600), async {
            tokio::join!(recording, start_migration)
        })
        .await
        .expect("the migration finishes within 10 minutes");
        let summary = summary.expect("recording succeeds");
        // The destination resumes the guest once it has loaded the last
        // device state, shortly after the source reports completion.
        let mut dq = Qmp::connect(&dst.qmp_ctl, QmpOptions::default())
            .await
            .expect("destination QMP");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = dq.query_status().await.expect("destination status");
            if st.running || Instant::now() > deadline {
                break (summary, st);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let samples = samples.lock().expect("lock").clone();
    let o = &summary.outcome;
    let ram = o.info.ram.clone().expect("final RAM stats");
    let page = ram.page_size.expect("page size");
    let total_s = o.info.total_time.expect("total-time") as f64 / 1000.0;
    eprintln!(
        "booted in {:.1} s; {}",
        booted.as_secs_f64(),
        record::outcome_line(o)
    );
    for s in &samples {
        eprintln!(
            "  iter {:>2}: {:>7.3} s  X1 {:>7.0}  counted {:>7?}  rate {:>5}/s  cpu {:>5.1}%  mem {:>5.1}%  vm {:>9.0} b/s  uplink {:>10.0} b/s",
            s.iteration,
            s.iter_s,
            s.dirty_pages,
            s.dirty_pages_counted,
            s.dirty_rate_pps,
            s.cpu_usage_pct,
            s.mem_usage_pct,
            s.vm_net_bps,
            s.host_net_bps
        );
    }

    eprintln!(
        "  stop-and-copy interval: {:?}; ledger {:?} (spread {})",
        o.stop_and_copy.as_ref().map(|s| (s.iteration, s.iter_s)),
        o.ledger,
        o.ledger_spread
    );

    // The migration completed and the guest runs on the destination: its
    // workload keeps printing progress there (its console starts empty).
    assert_eq!(o.status, MigrationStatus::Completed, "{o:?}");
    assert!(dst_status.running, "destination is {dst_status:?}");
    dst.wait_for_console("vmbw-workload: t=", Duration::from_secs(30))
        .expect("the migrated guest runs its workload on the destination");
    assert!(
        !dst.console().contains("Kernel panic"),
        "the guest crashed after migration:\n{}",
        dst.console_tail(30)
    );
    assert!(summary.events, "MIGRATION_PASS events were on");

    // One sample per pre-copy iteration. Sync k starts iteration k; the
    // last two syncs are QEMU's "little enough left" sync and the final one
    // after stopping the VM, so a migration with S syncs has S-2
    // iterations, and the interval between the last two is reported apart.
    assert_eq!(o.first_sync, Some(1), "followed from the first sync");
    let syncs = ram.dirty_sync_count;
    assert!(
        syncs >= 4,
        "a migration with at least two pre-copy iterations (sync count {syncs})"
    );
    assert_eq!(samples.len() as u64, syncs - 2);
    let stop = o
        .stop_and_copy
        .as_ref()
        .expect("the stop-and-copy interval");
    assert_eq!(stop.iteration, syncs - 1);
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.iteration, i as u64 + 1);
        assert_eq!(s.syncs, 1, "iteration {} spans one sync", s.iteration);
        assert_eq!(s.page_size, page);
    }

    // QEMU's counters: pages sent + pages dirty is (almost: QEMU 7.2 starts
    // one page short here) all of guest RAM at the first sync, never falls,
    // is constant between syncs, and ends as the pages sent.
    let all_pages = ram.total / page;
    let first = o.ledger.get(&1).copied().unwrap_or(0);
    assert!(
        first <= all_pages && all_pages - first <= 16,
        "ledger at sync 1: {first}, RAM pages: {all_pages}"
    );
    assert_eq!(
        o.ledger.get(&syncs),
        Some(&ram.pages_sent()),
        "{:?}",
        o.ledger
    );
    let ledger: Vec<u64> = o.ledger.values().copied().collect();
    assert!(ledger.windows(2).all(|w| w[0] <= w[1]), "{:?}", o.ledger);
    // Within a sync the ledger may move by the pages the migration thread
    // sends while QEMU's main thread reads the counters one by one (no
    // lock): a page or two on an idle host, more when the reading thread
    // is preempted (3 under `--stress`'s busy loops). Allowed: 2 pages
    // plus what the stream sends in 20 ms at this migration's mean rate;
    // a ledger off by an iteration's dirtying is thousands of pages.
    let secs = total_s.max(0.1);
    let allowed = 2 + (ram.pages_sent() as f64 / secs * 0.020).ceil() as u64;
    assert!(
        o.ledger_spread <= allowed,
        "ledger spread {} pages (allowed {allowed})",
        o.ledger_spread
    );
    for s in samples.iter().filter(|s| s.iter_s >= 0.5) {
        assert!(
            s.dirty_pages_counted.is_some(),
            "iteration {} lasted {:.3} s, long enough to be polled",
            s.iteration,
            s.iter_s
        );
    }

    // X1 (rate x time) agrees with the counted pages where QEMU's rate
    // period is the iteration itself: iterations over 1 s whose previous
    // iteration (if any) also took over 1 s.
    let mut compared = 0;
    for (i, s) in samples.iter().enumerate() {
        let prev_long = i == 0 || samples[i - 1].iter_s >= 1.0;
        if prev_long && s.iter_s >= 1.0 {
            compared += 1;
            let c = s.dirty_pages_counted.unwrap_or(0) as f64;
            let err = (s.dirty_pages - c).abs() / c.max(1.0);
            assert!(
                err < 0.05,
                "iteration {}: X1 {} vs counted {c}",
                s.iteration,
                s.dirty_pages
            );
        }
    }
    assert!(compared >= 1, "no iteration long enough to compare X1");

    // Iteration times add up to the migration's time less set-up and
    // stop-and-copy.
    let iter_total: f64 = samples.iter().map(|s| s.iter_s).sum();
    let setup_s = o.info.setup_time.unwrap_or(0) as f64 / 1000.0;
    assert!(
        iter_total <= total_s && iter_total >= total_s - setup_s - 2.0,
        "iterations {iter_total:.3} s vs total {total_s:.3} s"
    );
    for w in samples.windows(2) {
        assert_eq!(w[1].prev_iter_s, w[0].iter_s);
    }

    // Host-side variables. The first pass is link-bound: the uplink carries
    // about the link rate. The guest's vCPU is busy (TCG, a dirtying loop
    // and the kernel), its memory use is what the balloon reports.
    let first = &samples[0];
    let link_bps = LINK_MBIT * 1e6;
    assert!(
        first.host_net_bps > 0.6 * link_bps && first.host_net_bps < 1.2 * link_bps,
        "uplink {} b/s during the first pass",
        first.host_net_bps
    );
    for s in &samples {
        let floor = if s.iter_s >= 0.5 { 1.0 } else { 0.0 };
        assert!(s.cpu_usage_pct > floor && s.cpu_usage_pct <= 110.0, "{s:?}");
        assert!(s.mem_usage_pct > 5.0 && s.mem_usage_pct < 100.0, "{s:?}");
    }
    assert_eq!(o.mem_fallbacks, 0, "the balloon reported guest memory");

    // The trace reads back as written.
    let t = trace::read_path(&out).expect("trace reads back");
    assert_eq!(t.rows.len(), samples.len());
    for (row, s) in t.rows.iter().zip(&samples) {
        assert_eq!(row.iteration, s.iteration);
        assert_eq!(row.dirty_pages, s.dirty_pages.round());
        assert_eq!(
            t.extra_f64(row, "dirty_pages_counted"),
            s.dirty_pages_counted.map(|c| c as f64)
        );
    }
    assert!(
        t.comments
            .iter()
            .any(|c| c.starts_with("outcome: completed"))
    );
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

/// The controls the bandwidth controller uses, on a real migration:
/// parameters and capabilities read back as set, a lower `max-bandwidth`
/// slows the running migration down, and `migrate_cancel` ends it with the
/// guest still running on the source and the monitor reporting the cancel.
#[test]
fn controls_take_effect_and_a_cancel_ends_the_monitor() {
    require!(privileged());
    require!(guest::available());
    let _serial = one_at_a_time();
    let guest = Guest::build().expect("building the test guest");
    let tb = MigrationTestbed::new(LINK_MBIT).expect("testbed");
    let workload = Workload::new("mem-seq")
        .with("wss-mb", 24)
        .with("dirty-mbps", 3);
    let (mut src, _dst) = tb
        .boot(&guest, &workload, GUEST_MB, Duration::from_secs(180))
        .expect("guest boots and starts its workload");
    let uri = tb.migration_uri();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut ctl = Qmp::connect(&src.qmp_ctl, QmpOptions::default())
            .await
            .expect("control QMP");
        ctl.set_capabilities(&[
            (Capability::AutoConverge, true),
            (Capability::PostcopyRam, false),
        ])
        .await
        .expect("capabilities");
        let caps = ctl.query_migrate_capabilities().await.expect("caps");
        let state = |name: &str| caps.iter().find(|c| c.capability == name).map(|c| c.state);
        assert_eq!(state("auto-converge"), Some(true));
        assert_eq!(state("postcopy-ram"), Some(false));
        ctl.set_capabilities(&[(Capability::AutoConverge, false)])
            .await
            .expect("capabilities");
        ctl.set_downtime_limit(500).await.expect("downtime-limit");
        ctl.set_max_bandwidth(64 << 20)
            .await
            .expect("max-bandwidth");
        let p = ctl.query_migrate_parameters().await.expect("parameters");
        assert_eq!(
            (p.max_bandwidth, p.downtime_limit),
            (Some(64 << 20), Some(500))
        );

        let qmp = Qmp::connect(&src.qmp, QmpOptions::default())
            .await
            .expect("monitor QMP");
        let mut mon = MigrationMonitor::new(qmp, MonitorConfig::default())
            .await
            .expect("monitor");
        assert!(mon.enable_events().await.expect("events"));
        ctl.migrate(&uri).await.expect("migrate");
        mon.wait_for_start(Duration::from_secs(10))
            .await
            .expect("migration starts");

        // Transfer rate (bytes/s) over `secs`, from QEMU's counter.
        async fn rate(ctl: &mut Qmp, secs: u64) -> f64 {
            let at =
                |i: &vmbw::qemu::types::MigrationInfo| i.ram.as_ref().map_or(0, |r| r.transferred);
            let t0 = at(&ctl.query_migrate().await.expect("query"));
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let t1 = at(&ctl.query_migrate().await.expect("query"));
            t1.saturating_sub(t0) as f64 / secs as f64
        }
        // The control side measures, caps and cancels while the monitor
        // follows, as the agent's does: it polls all along, so it has seen
        // the counters before the cancel. (Followed only after the cancel,
        // its first poll raced QEMU to the end of the cancel, and a
        // cancelled migration reports no counters.)
        let control = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let fast = rate(&mut ctl, 2).await;
            ctl.set_max_bandwidth(1 << 20).await.expect("max-bandwidth");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let slow = rate(&mut ctl, 3).await;
            ctl.migrate_cancel().await.expect("cancel");
            (fast, slow)
        };
        let mut samples = 0;
        let follow = async {
            while mon.next_sample().await.expect("monitor").is_some() {
                samples += 1;
            }
        };
        let ((fast, slow), followed) = tokio::join!(
            control,
            tokio::time::timeout(Duration::from_secs(60), follow)
        );
        followed.expect("the monitor sees the cancel");
        eprintln!("transfer rate {fast:.0} B/s at link speed, {slow:.0} B/s capped at 1 MiB/s");
        let link = LINK_MBIT * 1e6 / 8.0;
        assert!(fast > 0.5 * link, "uncapped: {fast} B/s");
        assert!(
            slow > 0.5 * (1 << 20) as f64 && slow < 1.5 * (1 << 20) as f64,
            "capped at 1 MiB/s: {slow} B/s"
        );
        let o = mon.outcome().expect("outcome");
        assert_eq!(o.status, MigrationStatus::Cancelled, "{o:?}");
        let last = o.last_progress.as_ref().and_then(|i| i.ram.as_ref());
        assert!(
            last.is_some_and(|r| r.transferred > 0),
            "counters from before the cancel: {o:?}"
        );
        assert_eq!(o.stop_and_copy, None);
        assert_eq!(o.samples, samples);
        let st = ctl.query_status().await.expect("status");
        assert!(st.running, "the guest runs on at the source: {st:?}");
    });
    src.check_running().expect("source QEMU still runs");
}

/// QEMU 7.2's TCG lost guest writes during migration unless the guest ran
/// with `pti=on` (see `Vm::spawn`); QEMU 9.0 fixed it. Three migrations of
/// a guest without page-table isolation, each over the 100 Mbit/s link
/// while it dirties 24 MiB at random (several pre-copy passes, the guest
/// writing throughout): every one must complete with the guest running its
/// workload on the destination and its self-check (every page against the
/// stamp of its latest write) finding no lost write. On QEMU 7.2 about half
/// of such migrations crashed the guest.
#[test]
fn qemu_10_keeps_the_guest_s_writes_without_pti() {
    require!(privileged());
    require!(guest::available());
    let _serial = one_at_a_time();
    let guest = Guest::build().expect("building the test guest");
    let workload = self_checking_writer();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for round in 1..=3 {
        let mut tb = MigrationTestbed::new(LINK_MBIT).expect("testbed");
        tb.pti = false;
        let (src, mut dst) = tb
            .boot(&guest, &workload, GUEST_MB, Duration::from_secs(180))
            .expect("guest boots and starts its workload");
        let uri = tb.migration_uri();
        let status = rt.block_on(async {
            let mut ctl = Qmp::connect(&src.qmp_ctl, QmpOptions::default())
                .await
                .expect("source QMP");
            ctl.migrate(&uri).await.expect("starting the migration");
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let info = ctl.query_migrate().await.expect("query-migrate");
                let passes = info.ram.as_ref().map_or(0, |r| r.dirty_sync_count);
                match info.status {
                    Some(MigrationStatus::Completed)
                    | Some(MigrationStatus::Failed)
                    | Some(MigrationStatus::Cancelled) => break (info.status, passes),
                    _ if Instant::now() > deadline => break (info.status, passes),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let (status, passes) = status;
        assert_eq!(status, Some(MigrationStatus::Completed), "round {round}");
        assert!(
            passes >= 2,
            "round {round}: {passes} pass(es): the guest must write while pages are re-sent"
        );
        let checks = intact_on_destination(&mut dst, &format!("round {round}"));
        eprintln!(
            "round {round}: completed in {passes} passes, {checks} clean self-checks on the destination"
        );
    }
}

/// A guest that writes at random over 24 MiB at 2 MiB/s and checks an
/// eighth of its pages against their latest write every second.
fn self_checking_writer() -> Workload {
    Workload::new("mem-rand")
        .with("wss-mb", 24)
        .with("dirty-mbps", 2)
        .with("report-secs", 1)
}

/// Asserts that the migrated guest runs its workload on the destination
/// and that its self-check, which reads an eighth of its pages each
/// second, found every write over nine more seconds (all pages covered);
/// returns the clean self-checks seen.
fn intact_on_destination(dst: &mut vmbw_tests::vm::Vm, what: &str) -> usize {
    dst.wait_for_console(guest::PROGRESS_MARKER, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what}: the guest does not run on the destination: {e:#}"));
    std::thread::sleep(Duration::from_secs(9));
    let console = dst.console();
    assert!(
        !console.contains(guest::CORRUPT_MARKER) && !console.contains("Kernel panic"),
        "{what}: the guest lost writes or crashed:\n{}",
        dst.console_tail(20)
    );
    let checks = console.matches(guest::CLEAN_CHECK_MARKER).count();
    assert!(
        checks >= 8,
        "{what}: only {checks} clean self-checks on the destination"
    );
    checks
}

/// Post-copy for real (userfaultfd on the destination, urgent pages on the
/// preempt channel), switched early in the bulk pass so that most of the
/// working set is fetched on demand: the migration completes, pages were
/// fetched on demand, and the guest's self-check finds every write.
#[test]
fn post_copy_with_preempt_completes_and_the_guest_keeps_its_writes() {
    require!(privileged());
    require!(guest::available());
    let _serial = one_at_a_time();
    let guest = Guest::build().expect("building the test guest");
    let workload = self_checking_writer();
    let tb = MigrationTestbed::new(LINK_MBIT).expect("testbed");
    let (src, mut dst) = tb
        .boot_all_deferred(&guest, &[(workload, GUEST_MB)], Duration::from_secs(180))
        .expect("guest boots and starts its workload")
        .remove(0);
    let uri = tb.migration_uri();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let info = rt.block_on(async {
        let caps = [
            (Capability::PostcopyRam, true),
            (Capability::PostcopyPreempt, true),
        ];
        let mut dst_ctl = Qmp::connect(&dst.qmp_ctl, QmpOptions::default())
            .await
            .expect("destination QMP");
        dst_ctl
            .set_capabilities(&caps)
            .await
            .expect("arming the destination");
        dst_ctl
            .migrate_incoming(&uri)
            .await
            .expect("migrate-incoming");
        let mut ctl = Qmp::connect(&src.qmp_ctl, QmpOptions::default())
            .await
            .expect("source QMP");
        ctl.set_capabilities(&caps)
            .await
            .expect("arming the source");
        ctl.migrate(&uri).await.expect("starting the migration");
        tokio::time::sleep(Duration::from_secs(2)).await;
        ctl.migrate_start_postcopy()
            .await
            .expect("switching to post-copy");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let info = ctl.query_migrate().await.expect("query-migrate");
            match info.status {
                Some(MigrationStatus::Completed) | Some(MigrationStatus::Failed) => break info,
                _ if Instant::now() > deadline => break info,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    assert_eq!(
        info.status,
        Some(MigrationStatus::Completed),
        "{:?}",
        info.error_desc
    );
    let fetched = info
        .ram
        .as_ref()
        .and_then(|r| r.postcopy_requests)
        .unwrap_or(0);
    assert!(fetched > 0, "no page was fetched on demand: not post-copy");
    let checks = intact_on_destination(&mut dst, "after post-copy");
    eprintln!("post-copy: {fetched} pages fetched on demand, {checks} clean self-checks");
}
