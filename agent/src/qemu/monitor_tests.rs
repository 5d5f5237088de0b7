//! The migration monitor's bookkeeping against a scripted fake QEMU whose
//! migration moves through phases on the test's command: iteration
//! boundaries from events or from polling, counted pages from the ledger,
//! the stop-and-copy interval held back, merged samples when syncs are
//! missed. The real-QEMU test is `vmbw-tests/tests/qemu_migration.rs`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    sync::mpsc,
};

use super::{
    fake_qmp::{GREETING, SocketFile, socket_path},
    monitor::{IterationSample, MigrationMonitor, MonitorConfig},
    qmp::{Qmp, QmpOptions},
    types::MigrationStatus,
};

/// The fake migration's state in one phase.
#[derive(Clone, Debug)]
struct Phase {
    status: &'static str,
    sync: u64,
    sent: u64,
    remaining: u64,
    rate: u64,
    vm: &'static str,
    /// Event timestamp of the sync that starts the phase.
    ts: f64,
}

const PAGE: u64 = 4096;

fn phase(
    status: &'static str,
    sync: u64,
    sent: u64,
    remaining: u64,
    rate: u64,
    vm: &'static str,
    ts: f64,
) -> Phase {
    Phase {
        status,
        sync,
        sent,
        remaining,
        rate,
        vm,
        ts,
    }
}

/// A migration of 1000 pages: syncs 1..=3 are iterations, sync 4 finds
/// little enough left (the VM is stopped by the time anyone asks), sync 5
/// is QEMU's final sync in stop-and-copy.
fn script() -> Vec<Phase> {
    vec![
        phase("none", 0, 0, 0, 0, "running", 0.0),
        phase("active", 1, 0, 1000, 0, "running", 100.0),
        // Same sync, pages moving from remaining to sent.
        phase("active", 1, 600, 400, 0, "running", 100.0),
        // Sync 2 finds 300 new dirty pages: sent + remaining = 1300.
        phase("active", 2, 1000, 300, 150, "running", 102.0),
        phase("active", 3, 1250, 150, 50, "running", 103.0),
        phase("active", 4, 1390, 30, 40, "finish-migrate", 103.5),
        // QEMU reports no rate once completed.
        phase("completed", 5, 1425, 0, 0, "postmigrate", 103.6),
    ]
}

fn migrate_info(p: &Phase) -> Value {
    if p.status == "none" {
        return json!({});
    }
    json!({
        "status": p.status,
        "total-time": 3600,
        "expected-downtime": 300,
        "downtime": 50,
        "setup-time": 1,
        "ram": {
            "transferred": p.sent * PAGE, "remaining": p.remaining * PAGE,
            "total": 1000 * PAGE, "duplicate": 0, "normal": p.sent,
            "dirty-pages-rate": p.rate, "mbps": 30.0,
            "dirty-sync-count": p.sync, "page-size": PAGE
        }
    })
}

enum Drive {
    /// Move `n` phases on at once (emitting events for each sync).
    Advance(usize),
}

/// Serves one connection: answers the monitor's queries from the current
/// phase and moves on when told.
/// `late` counts calc-dirty-rate asked for after the bulk pass had
/// clearly ended (one counter per fake: tests run side by side).
async fn fake_qemu(
    listener: UnixListener,
    phases: Vec<Phase>,
    mut drive: mpsc::Receiver<Drive>,
    late: Arc<AtomicU64>,
) {
    let (stream, _) = listener.accept().await.expect("accept");
    let (r, mut w) = stream.into_split();
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut r = BufReader::new(r);
        loop {
            let mut l = String::new();
            match r.read_line(&mut l).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line_tx.send(l).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let out = |v: Value| format!("{v}\n").into_bytes();
    w.write_all(GREETING.as_bytes()).await.expect("greet");
    w.write_all(b"\n").await.expect("greet");
    let mut at = 0usize;
    let mut events = false;
    // The main thread of this process is alive for the whole test: its tid
    // stands in for a vCPU thread.
    let tid = std::process::id();
    let mut driven = true;
    // calc-dirty-rate measurements asked for; each finds 2 or 4 MiB/s in
    // turn.
    let mut measured = 0u64;
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { return };
                let cmd: Value = serde_json::from_str(&line).expect("json");
                let id = cmd["id"].clone();
                let p = &phases[at];
                let ret = match cmd["execute"].as_str().unwrap_or_default() {
                    "qmp_capabilities" => json!({}),
                    "query-cpus-fast" => json!([{"cpu-index": 0, "thread-id": tid, "target": "x86_64"}]),
                    "query-memory-size-summary" => json!({"base-memory": 1000 * PAGE}),
                    "qom-list" if cmd["arguments"]["path"] == "/machine/peripheral" =>
                        json!([{"name": "balloon0", "type": "child<virtio-balloon-pci>"}]),
                    "qom-get" if cmd["arguments"]["property"] == "guest-stats" => json!({
                        "stats": {"stat-total-memory": 1000, "stat-available-memory": 600,
                                  "stat-free-memory": 500}, "last-update": 1}),
                    "qom-get" => json!(1),
                    "query-migrate-capabilities" => json!([{"capability": "events", "state": events}]),
                    "migrate-set-capabilities" => { events = true; json!({}) }
                    "query-migrate" => migrate_info(p),
                    "query-status" => json!({"status": p.vm, "running": p.vm == "running"}),
                    "calc-dirty-rate" => {
                        // A poll may still have seen sync 1 as it moved on:
                        // only from sync 3 on is it late for sure.
                        if p.sync >= 3 {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        measured += 1;
                        json!({})
                    }
                    "query-dirty-rate" => json!({"status": "measured",
                                                 "dirty-rate": if measured % 2 == 1 { 2 } else { 4 }}),
                    other => panic!("unexpected command {other}"),
                };
                w.write_all(&out(json!({"return": ret, "id": id}))).await.expect("reply");
            }
            d = drive.recv(), if driven => {
                // The script is over: keep answering queries.
                let Some(Drive::Advance(n)) = d else {
                    driven = false;
                    continue;
                };
                for _ in 0..n {
                    let before = phases[at].clone();
                    at += 1;
                    let p = &phases[at];
                    if !events {
                        continue;
                    }
                    if p.sync > before.sync {
                        let ts = json!({"seconds": p.ts.trunc() as u64,
                                        "microseconds": (p.ts.fract() * 1e6).round() as u64});
                        w.write_all(&out(json!({"timestamp": ts, "event": "MIGRATION_PASS",
                                                "data": {"pass": p.sync}}))).await.expect("event");
                        if p.status == "completed" {
                            w.write_all(&out(json!({"timestamp": ts, "event": "MIGRATION",
                                                    "data": {"status": "completed"}}))).await.expect("event");
                        }
                    }
                }
            }
        }
    }
}

struct Run {
    samples: Vec<IterationSample>,
    outcome: super::monitor::MigrationOutcome,
    /// Every distinct (sync, pages left) the progress channel carried.
    progress: Vec<(u64, u64)>,
    /// The bulk pass's dirty rate and the used memory, as the last
    /// progress carried them.
    bulk: (Option<f64>, Option<u64>),
    /// calc-dirty-rate asked for from the third sync on.
    late_asks: u64,
}

/// Runs the script; `steps` says how many phases each advance moves.
async fn run(events: bool, steps: &[usize]) -> Run {
    let steps: Vec<(u64, usize)> = steps.iter().map(|&n| (150, n)).collect();
    run_timed(events, &steps, false).await
}

/// As [`run`], each advance `(ms, n)` after `ms` milliseconds; with
/// `sample_bulk`, the monitor measures the bulk pass's dirty rate.
async fn run_timed(events: bool, steps: &[(u64, usize)], sample_bulk: bool) -> Run {
    run_sampled(events, steps, sample_bulk, false).await
}

/// As [`run_timed`]; with `later` too, the monitor goes on measuring after
/// the bulk pass.
async fn run_sampled(events: bool, steps: &[(u64, usize)], sample_bulk: bool, later: bool) -> Run {
    let path: SocketFile = socket_path();
    let listener = UnixListener::bind(&*path).expect("bind");
    let (drive, rx) = mpsc::channel(8);
    let late = Arc::new(AtomicU64::new(0));
    tokio::spawn(fake_qemu(listener, script(), rx, late.clone()));
    let qmp = Qmp::connect(&*path, QmpOptions::default())
        .await
        .expect("connect");
    let cfg = MonitorConfig {
        poll_interval: Duration::from_millis(20),
        sample_bulk_pass: sample_bulk,
        sample_later_passes: later,
        ..MonitorConfig::default()
    };
    let mut mon = MigrationMonitor::new(qmp, cfg).await.expect("monitor");
    let mut rx = mon.progress();
    let progress = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut bulk = (None, None);
        while rx.changed().await.is_ok() {
            if let Some(p) = *rx.borrow_and_update() {
                let v = (p.sync, p.remaining / PAGE);
                if seen.last() != Some(&v) {
                    seen.push(v);
                }
                bulk = (p.bulk_dirty_rate, p.used_memory);
            }
        }
        (seen, bulk)
    });
    if events {
        assert!(mon.enable_events().await.expect("events"));
    }
    let steps = steps.to_vec();
    tokio::spawn(async move {
        for (ms, n) in steps {
            // Long enough for several polls per phase.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if drive.send(Drive::Advance(n)).await.is_err() {
                return;
            }
        }
    });
    mon.wait_for_start(Duration::from_secs(5))
        .await
        .expect("starts");
    let mut samples = Vec::new();
    let follow = async {
        while let Some(s) = mon.next_sample().await.expect("sample") {
            samples.push(s);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("the monitor finishes");
    let outcome = mon.outcome().cloned().expect("outcome");
    drop(mon);
    let (progress, bulk) = progress.await.expect("progress task");
    Run {
        samples,
        outcome,
        progress,
        bulk,
        late_asks: late.load(Ordering::Relaxed),
    }
}

#[tokio::test]
async fn the_bulk_pass_is_sampled_back_to_back_and_averaged() {
    // A 7 s bulk pass: the monitor measures from its polls (about 1.1 s
    // each; at 2-4 MiB/s none lasts 4 s, which could not be read), the
    // fake finding 2 and 4 MiB/s in turn, and stops when the pass ends.
    let steps = [(150, 1), (150, 1), (7000, 1), (150, 1), (150, 1), (150, 1)];
    let r = run_timed(true, &steps, true).await;
    assert_eq!(r.late_asks, 0, "measured after the bulk pass");
    assert_eq!(r.samples.len(), 3);
    let (rate, used) = r.bulk;
    let mib = 1024.0 * 1024.0;
    let rate = rate.expect("sampled") / mib;
    // Five to seven measurements, 2 and 4 in turn: 3 for an even number,
    // 3 - 1/n for an odd n.
    let odd = |n: f64| (rate - (3.0 - 1.0 / n)).abs() < 1e-9;
    assert!(rate == 3.0 || odd(5.0) || odd(7.0), "{rate}");
    // 40% of the guest's 1000 pages in use (the fake balloon).
    assert_eq!(used, Some(400 * PAGE));
    // Off (the default), nothing is asked for.
    let r = run(true, &[1, 1, 1, 1, 1, 1]).await;
    assert_eq!(r.bulk.0, None);
}

#[tokio::test]
async fn later_passes_get_their_own_measurements() {
    // A 6 s bulk pass, then a 3 s second pass: each holds at least
    // one measurement (about 1.1 s each), and each pass's sample carries
    // the mean of those collected during it. The bulk pass's running
    // mean, which the forecast uses while that pass runs, keeps the bulk
    // pass's alone.
    let steps = [(150, 1), (150, 1), (6000, 1), (3000, 1), (150, 1), (150, 1)];
    let r = run_sampled(true, &steps, true, true).await;
    assert_eq!(r.samples.len(), 3);
    let mib = 1024.0 * 1024.0;
    let per_pass: Vec<Option<f64>> = r
        .samples
        .iter()
        .map(|s| s.sampled_dirty_bps.map(|b| b / mib))
        .collect();
    for (i, rate) in per_pass.iter().take(2).enumerate() {
        let rate = rate.unwrap_or_else(|| panic!("pass {}: no measurement: {per_pass:?}", i + 1));
        // Each measurement finds 2 or 4 MiB/s.
        assert!((2.0..=4.0).contains(&rate), "pass {}: {rate}", i + 1);
    }
    assert_eq!(r.bulk.0.map(|b| b / mib), per_pass[0]);
    // 2 and 4 MiB/s in turn climb nowhere: no pass has a trend's end.
    assert!(r.samples.iter().all(|s| s.sampled_dirty_end_bps.is_none()));
    // The predictors get it as pages/s, with the rounding put back.
    let it = r.samples[1].to_iteration();
    let want = (per_pass[1].expect("measured") + 0.25) * mib / PAGE as f64;
    assert_eq!(it.sampled_dirty_pps, Some(want));
    // Without `later`, passes after the bulk pass carry none.
    let r = run_sampled(true, &steps, true, false).await;
    assert!(r.samples[0].sampled_dirty_bps.is_some());
    assert_eq!(r.samples[1].sampled_dirty_bps, None);
}

#[tokio::test]
async fn events_give_exact_iterations_and_hold_back_stop_and_copy() {
    let r = run(true, &[1, 1, 1, 1, 1, 1]).await;
    let got: Vec<(u64, u64, Option<u64>, f64)> = r
        .samples
        .iter()
        .map(|s| (s.iteration, s.syncs, s.dirty_pages_counted, s.iter_s))
        .collect();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, (it, syncs, counted, iter_s)) in got.iter().enumerate() {
        assert_eq!(*it, i as u64 + 1);
        assert_eq!(*syncs, 1);
        assert_eq!(*counted, [Some(300), Some(100), Some(20)][i]);
        assert!(close(*iter_s, [2.0, 1.0, 0.5][i]), "{iter_s}");
    }
    // X1 = rate after the closing sync x iteration time.
    assert!(close(r.samples[0].dirty_pages, 150.0 * 2.0));
    assert!(close(r.samples[1].dirty_pages, 50.0 * 1.0));
    assert!(close(r.samples[2].dirty_pages, 40.0 * 0.5));
    assert!(close(r.samples[1].prev_iter_s, 2.0));
    // Bytes sent between the boundaries and left at the closing one: what
    // the predictors' expected duration of the next iteration is made of.
    let bytes: Vec<(u64, u64)> = r
        .samples
        .iter()
        .map(|s| (s.sent_bytes / PAGE, s.remaining_bytes / PAGE))
        .collect();
    assert_eq!(bytes, vec![(1000, 300), (250, 150), (140, 30)]);
    let it = r.samples[1].to_iteration();
    assert_eq!(it.sent_bytes, Some((250 * PAGE) as f64));
    assert!(close(
        it.next_duration_s().expect("telemetry"),
        1.0 * 150.0 / 250.0
    ));
    assert!(close(r.samples[0].mem_usage_pct, 40.0));
    let stop = r.outcome.stop_and_copy.as_ref().expect("held back");
    assert_eq!(stop.iteration, 4);
    assert!(close(stop.iter_s, 0.1));
    // The completed reply has no rate: the last one seen is used.
    assert_eq!(stop.dirty_rate_pps, 40);
    assert_eq!(r.outcome.status, MigrationStatus::Completed);
    assert_eq!(r.outcome.samples, 3);
    assert_eq!(r.outcome.first_sync, Some(1));
    assert_eq!(r.outcome.ledger_spread, 0);
    assert_eq!(r.outcome.ledger.get(&1), Some(&1000));
    assert_eq!(r.outcome.ledger.get(&5), Some(&1425));
    // Every poll's bytes-left, the middle of the bulk pass included (the
    // samples bring it only when a pass ends).
    assert_eq!(
        r.progress,
        vec![(1, 1000), (1, 400), (2, 300), (3, 150), (4, 30), (5, 0)],
        "{:?}",
        r.progress
    );
}

#[test]
fn drain_counts_bytes_left_going_down_within_a_pass() {
    use super::monitor::{Drain, Progress};
    let t0 = tokio::time::Instant::now();
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let p = |sync, remaining: u64, s| Progress {
        remaining,
        // Sends 1 MB/s.
        transferred: (s * 1e6) as u64,
        sync,
        at: at(s),
        bulk_dirty_rate: None,
        used_memory: None,
        unsent_zero: None,
        sampled_working_set: None,
    };
    let mut d = Drain::default();
    d.observe(p(1, 10_000_000, 0.0));
    d.observe(p(1, 9_000_000, 1.0));
    assert_eq!(d.rate(), None, "one second is not enough to tell");
    d.observe(p(1, 8_000_000, 2.0));
    assert_eq!(d.rate(), Some(1_000_000.0));
    assert_eq!(d.send_rate(), Some(1_000_000.0));
    // A sync adds what was dirtied: not a negative drain, and not counted.
    d.observe(p(2, 9_500_000, 3.0));
    d.observe(p(2, 6_500_000, 4.0));
    // One second into the new pass: the rate QEMU sends at stands in, not
    // the last pass's drain.
    assert_eq!(d.rate(), Some(1_000_000.0));
    d.observe(p(2, 3_500_000, 5.0));
    assert_eq!(d.rate(), Some(3_000_000.0), "this pass's two seconds");
    // Only the last ten seconds count.
    for s in 6..=17 {
        d.observe(p(2, 3_500_000 - 250_000 * (s - 5), s as f64));
    }
    assert_eq!(d.rate(), Some(250_000.0));
    // Sending at 1 MB/s while the bytes left go down by 0.25 MB/s: pages
    // written again as fast as they go.
    assert_eq!(d.send_rate(), Some(1_000_000.0));
}

#[test]
fn a_new_pass_does_not_inherit_the_bulk_pass_drain() {
    use super::monitor::{Drain, Progress};
    let t0 = tokio::time::Instant::now();
    let p = |sync, remaining: u64, transferred: u64, s: f64| Progress {
        remaining,
        transferred,
        sync,
        at: t0 + Duration::from_secs_f64(s),
        bulk_dirty_rate: None,
        used_memory: None,
        unsent_zero: None,
        sampled_working_set: None,
    };
    // The bulk pass's last ten seconds: zero pages, 8 MB of what is left
    // per second for the 6 MB/s sent.
    let mut d = Drain::default();
    for s in 0..=10 {
        let s = s as f64;
        d.observe(p(1, 100_000_000 - (8e6 * s) as u64, (6e6 * s) as u64, s));
    }
    assert_eq!(d.rate(), Some(8e6));
    // The next pass holds dirtied pages only: what is left goes at the
    // rate sent, from its first reading on.
    d.observe(p(2, 40_000_000, 66_000_000, 11.0));
    d.observe(p(2, 34_000_000, 72_000_000, 12.0));
    assert_eq!(d.rate(), Some(6e6));
    d.observe(p(2, 28_000_000, 78_000_000, 13.0));
    assert_eq!(d.rate(), Some(6e6));
}

#[tokio::test]
async fn polling_alone_finds_boundaries_and_merges_missed_syncs() {
    // Phases 3 and 4 pass between two polls: sync 2 is never seen.
    let r = run(false, &[1, 1, 2, 1, 1]).await;
    let got: Vec<(u64, u64, Option<u64>)> = r
        .samples
        .iter()
        .map(|s| (s.iteration, s.syncs, s.dirty_pages_counted))
        .collect();
    assert_eq!(got, vec![(1, 2, Some(400)), (3, 1, Some(20))], "{got:?}");
    // Without event timestamps, durations are the polls' (phases ~150 ms).
    for s in &r.samples {
        assert!(s.iter_s > 0.05 && s.iter_s < 1.0, "{s:?}");
    }
    assert_eq!(
        r.outcome.stop_and_copy.as_ref().map(|s| s.iteration),
        Some(4)
    );
    assert_eq!(r.outcome.status, MigrationStatus::Completed);
}

#[test]
fn the_zero_pages_left_are_the_free_memory_not_yet_met() {
    use super::monitor::unsent_zero;
    // 545 MiB free, 15 MiB of zero pages met, 656 MiB left to send: 530
    // MiB of it zeros (the window corpus's wxrand-l300 10 s in).
    let mib = 1u64 << 20;
    let z = |free, untouched, met: u64, left| unsent_zero(free, untouched, met / 4096, 4096, left);
    assert_eq!(
        z(Some(545 * mib), None, 15 * mib, 656 * mib),
        Some(530 * mib)
    );
    // Never more than is left, never below zero once all are met.
    assert_eq!(z(Some(545 * mib), None, 0, 100 * mib), Some(100 * mib));
    assert_eq!(z(Some(545 * mib), None, 547 * mib, 139 * mib), Some(0));
    // Free memory the guest once wrote is not zeros: the memory it never
    // touched bounds it, and stands in without a balloon.
    assert_eq!(
        z(Some(40 * mib), Some(12 * mib), 2 * mib, 50 * mib),
        Some(10 * mib)
    );
    assert_eq!(z(None, Some(12 * mib), 2 * mib, 50 * mib), Some(10 * mib));
    assert_eq!(z(None, None, 0, 50 * mib), None);
}
