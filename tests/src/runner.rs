//! Runs scenarios on the migration testbed: one fresh testbed per run
//! (scenario x policy x repetition), the real agent on the source host, a
//! real QEMU migration, and the figures: total time and downtime (QEMU's),
//! iterations, bytes, convergence within the timeout, the application's
//! goodput during the migration (bytes the sink received) against what it
//! asked for, and the agent's online prediction error.
//!
//! Peer policies (what operators run today, [`crate::policy`]) run the
//! agent in observe mode: it measures, and for `static:RATE` sets QEMU's
//! `max-bandwidth` like KubeVirt would, but the kernel enforces nothing.
//! vmbw's policies run it in HTB mode. Every destination starts with
//! `-incoming defer`, so that post-copy can be armed on both sides before
//! the migration.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};
use vmbw::api::units;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use vmbw::{
    api::VmStatus,
    qemu::{Capability, Qmp, QmpOptions, types::MigrationStatus},
};

use crate::{
    BpffsMount,
    agent::Agent,
    guest::Guest,
    policy::{BenchPolicy, Family},
    scenario::{App, Scenario},
    testbed::{MigrationTestbed, UPLINK},
};

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes Ctrl-C, SIGTERM and SIGHUP end the current run cleanly (the
/// testbed, QEMU and the agent are torn down by their guards) instead of
/// killing the process and leaving its namespaces and guests behind (seen:
/// a SIGTERMed benchmark left three namespaces and two QEMUs running).
pub fn catch_interrupt() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler (one atomic store).
        unsafe { libc::signal(sig, on_sigint as *const () as libc::sighandler_t) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// A run's guest did not boot or start its workload, before any migration
/// began: a fault of this machine (a TCG guest starved of its timer, seen
/// as an RCU stall on its console), not of the policy, so the run may be
/// tried again.
#[derive(Debug)]
pub struct GuestBootFailed;

impl std::fmt::Display for GuestBootFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the guest did not boot before its migration")
    }
}

/// One VM's figures in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub policy: String,
    pub family: Family,
    pub repetition: u32,
    /// The VM (`vm0`, `vm1`, ... in the scenario's order).
    pub vm: String,
    /// How many VMs migrated concurrently in this run.
    pub vms: usize,
    pub converged: bool,
    /// After a completed migration: whether the guest still ran its
    /// workload on the destination and its working set had lost no write
    /// (None when the migration did not complete).
    #[serde(default)]
    pub guest_intact: Option<bool>,
    pub total_s: f64,
    /// From the first migration's start until the last one ended (every
    /// VM of the run has the same value).
    pub makespan_s: f64,
    pub downtime_ms: Option<f64>,
    pub iterations: Option<u64>,
    pub transferred_bytes: u64,
    /// The guest's RAM, bytes (QEMU's `ram.total`).
    pub ram_bytes: u64,
    /// What the application is (`rate 15 Mbit/s`, `greedy`, ...).
    pub app: String,
    /// Application goodput during the migration, mean, Mbit/s.
    pub app_mbit: f64,
    /// What a rate or on/off application asks for while on, Mbit/s (None
    /// for a greedy one, 0 without an application).
    pub app_asked_mbit: Option<f64>,
    /// The application's reservation (SLA), Mbit/s; 0 = none.
    pub reserve_mbit: f64,
    /// 5th percentile over the migration's seconds of goodput / min(demand,
    /// reservation) (demand alone without a reservation); None when no
    /// second had a target (no application, or greedy without a reservation).
    pub sla_p5: Option<f64>,
    /// Seconds scored for the SLA.
    pub sla_seconds: usize,
    /// Scored seconds in which goodput was below 95% of the target.
    pub below_95_s: usize,
    /// Seconds QEMU throttled the guest's vCPUs (`cpu-throttle-percentage` > 0).
    pub throttled_s: f64,
    /// Seconds in post-copy.
    pub postcopy_s: f64,
    /// Seconds the guest was stopped (QEMU's downtime).
    pub stopped_s: f64,
    /// Milliseconds from the source's last `STOP` event to the
    /// destination's first `RESUME` after it (both QEMUs stamp events with
    /// this host's clock). The same yardstick for every policy: QEMU's own
    /// `downtime` ends at the source's completion, which with a return path
    /// (post-copy armed) includes the destination's load and without one
    /// does not. None when not converged or an event was missing.
    #[serde(default)]
    pub paused_ms: Option<f64>,
    /// Pages the destination fetched on demand in post-copy, and the bytes
    /// sent in post-copy (QEMU's `postcopy-requests`, `postcopy-bytes`).
    #[serde(default)]
    pub postcopy_requests: Option<u64>,
    #[serde(default)]
    pub postcopy_bytes: Option<u64>,
    /// Milliseconds the guest's vCPUs waited for post-copy's pages on the
    /// destination, over the whole post-copy phase.
    #[serde(default)]
    pub postcopy_blocked_ms: Option<u64>,
    /// CPU time the hypervisor took from this machine while the run's
    /// migrations ran, % of all CPU time (/proc/stat's `steal`): a loaded
    /// host delays every thread's wake-up, post-copy's page faults
    /// included. None where the kernel does not count it.
    #[serde(default)]
    pub host_steal_pct: Option<f64>,
    /// The agent's completion forecast scored against what happened, at
    /// 25%, 50% and 75% of the migration's time (converged runs only).
    #[serde(default)]
    pub eta_error: Vec<EtaScore>,
    /// The agent's one-step dirty-page prediction error over the run.
    pub prediction_mape: Option<f64>,
    pub prediction_n: usize,
    /// Escalation steps that took effect (QEMU accepted what they needed).
    pub steps: Vec<String>,
    /// Steps or settings QEMU refused, with its reason.
    pub refused: Vec<String>,
    /// Per-second timeline from the migration's start.
    pub timeline: Vec<Second>,
    /// The guest's own account of its sending (rate and on/off
    /// applications): how many of its seconds fell short and why. None for
    /// runs recorded before the workload reported it.
    #[serde(default)]
    pub sender: Option<crate::sender::SenderTally>,
    /// The workload's per-second reports over the migration, timed from
    /// its start on the guest's clock (to within a second).
    #[serde(default)]
    pub sender_timeline: Vec<crate::sender::SenderSecond>,
    /// What happened when: `(seconds from the start, what)`.
    pub events: Vec<(f64, String)>,
}

/// The agent's forecast at one point of a migration against the truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EtaScore {
    /// Where in the migration, as a share of its total time (0.25, ...).
    pub at: f64,
    /// Seconds that were actually left.
    pub actual_s: f64,
    /// Seconds the agent forecast (None: "does not converge", or no
    /// forecast yet).
    pub forecast_s: Option<f64>,
}

impl EtaScore {
    /// (forecast − actual) / actual; None when there was no forecast.
    pub fn relative_error(&self) -> Option<f64> {
        let f = self.forecast_s?;
        (self.actual_s > 0.0).then(|| (f - self.actual_s) / self.actual_s)
    }
}

/// Scores `forecasts` (seconds from the start, the ETA then: None =
/// does not converge) against a migration that took `total_s`.
pub fn score_eta(forecasts: &[(f64, Option<f64>)], total_s: f64) -> Vec<EtaScore> {
    [0.25, 0.5, 0.75]
        .into_iter()
        .filter_map(|at| {
            let t = at * total_s;
            // The last forecast made by then.
            let &(made, eta) = forecasts.iter().rev().find(|(made, _)| *made <= t)?;
            Some(EtaScore {
                at,
                actual_s: total_s - made,
                forecast_s: eta,
            })
        })
        .collect()
}

/// One second of a run, from the migration's start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    pub t_s: f64,
    /// What reached the application's receiver in this second (kernel
    /// receive time).
    pub app_mbit: f64,
    /// What the receiver's thread read in this second: differs from
    /// `app_mbit` when the host kept that thread waiting for a CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_read_mbit: Option<f64>,
    pub migration_mbit: f64,
    /// What the application was owed in this second (None: not scored).
    pub target_mbit: Option<f64>,
    pub throttle_pct: u64,
    pub postcopy: bool,
}

impl RunResult {
    /// The row label: the scenario, and the VM when several migrated.
    pub fn label(&self) -> String {
        if self.vms > 1 {
            format!("{} · {}", self.scenario, self.vm)
        } else {
            self.scenario.clone()
        }
    }
}

/// One QEMU poll: seconds from the start, bytes sent, throttle, post-copy.
#[derive(Debug, Clone, Copy)]
struct Poll {
    t_s: f64,
    transferred: u64,
    throttle_pct: u64,
    postcopy: bool,
}

/// One migrating VM as the runner follows it.
struct Followed {
    /// The testbed slot.
    index: usize,
    name: String,
    /// How progress lines name it: ` vmN`, or nothing when it migrates alone.
    label: String,
    ctl: Qmp,
    /// The destination's control monitor (post-copy's blocktime).
    dst_ctl: Qmp,
    /// The guest's wait for post-copy's pages, ms (the destination's
    /// `postcopy-blocktime`, read once the migration completed).
    blocked_ms: Option<u64>,
    uri: String,
    predicted: BTreeMap<u32, f64>,
    actual: BTreeMap<u32, f64>,
    /// The agent's forecasts: (seconds from the start, ETA or None).
    forecasts: Vec<(f64, Option<f64>)>,
    polls: Vec<Poll>,
    events: Vec<(f64, String)>,
    throttled_s: f64,
    postcopy_s: f64,
    postcopy_asked: bool,
    /// Whether the guest's subnet was moved to the destination.
    moved: bool,
    /// Stop on the source to resume on the destination, ms.
    paused_ms: Option<f64>,
    /// QEMU's final answer, whether it converged, and when it ended (s).
    end: Option<(vmbw::qemu::types::MigrationInfo, bool, f64)>,
}

/// How long the guest was paused at the switch-over: the source's last
/// `STOP` event to the destination's first `RESUME` at or after it. Events
/// queue on both control monitors from the start; the destination's
/// `RESUME` may follow the source's completion by its load time.
async fn paused_ms(v: &mut Followed) -> Option<f64> {
    let mut stop = None;
    while let Some(e) = v.ctl.try_event() {
        if e.name == "STOP" {
            stop = Some(e.timestamp);
        }
    }
    let stop = stop?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match v.dst_ctl.next_event(left).await {
            Ok(Some(e)) if e.name == "RESUME" && e.timestamp >= stop => {
                return Some((e.timestamp - stop) * 1000.0);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
    None
}

/// Runs one scenario under one policy: boots every VM, starts the agent on
/// the source host, arms what the policy arms, starts all migrations at
/// once and follows them to their end or the timeout. Progress lines go to
/// stderr; one result per VM is returned.
pub fn run_one(
    guest: &Guest,
    sc: &Scenario,
    policy: &str,
    repetition: u32,
    log_dir: &Path,
) -> anyhow::Result<Vec<RunResult>> {
    let bench = BenchPolicy::parse(policy)?;
    // 0 = unlimited: the router shapes nothing; the agent is told 10 Gbit/s.
    let mut tb = MigrationTestbed::with_guests(sc.link_mbit.max(0.0), sc.vm.len())?;
    tb.vcpus = sc.vcpus;
    let mut boots = Vec::new();
    for (vm, slot) in sc.vm.iter().zip(&tb.guests) {
        boots.push((vm.workload_for(slot)?, vm.memory_mb));
    }
    let sinks = tb.start_sinks()?;
    // Destinations wait (`-incoming defer`) until the runner has armed them.
    let mut pairs = tb
        .boot_all_deferred(guest, &boots, Duration::from_secs(240 * sc.vm.len() as u64))
        .context(GuestBootFailed)?;

    let bpffs = BpffsMount::new()?;
    let run = tb.run.path();
    let config = run.join("vmbw.toml");
    let api = run.join("api.sock");
    let qmps: Vec<&Path> = pairs.iter().map(|(src, _)| src.qmp.as_path()).collect();
    std::fs::write(
        &config,
        agent_config(sc, &bench, &tb, &qmps, &bpffs.path().join("vmbw"), &api),
    )?;
    let mut agent = Agent::start(&tb.src, &config, &api, &run.join("agent.log"))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut vms = Vec::new();
    for (slot, (src, dst)) in tb.guests.iter().zip(&pairs) {
        let mut ctl = rt.block_on(Qmp::connect(&src.qmp_ctl, ctl_options()))?;
        if let Err(e) = rt.block_on(crate::testbed::wait_for_events(&mut ctl)) {
            bail!(
                "{e:#}: the agent did not follow vm{}:\n{}",
                slot.index,
                agent.log_text()
            );
        }
        let dst_ctl = rt
            .block_on(arm(&bench, &mut ctl, dst, &slot.migration_uri()))
            .with_context(|| format!("arming vm{} for {policy}", slot.index))?;
        let name = format!("vm{}", slot.index);
        vms.push(Followed {
            index: slot.index,
            label: if sc.vm.len() > 1 {
                format!(" {name}")
            } else {
                String::new()
            },
            name,
            ctl,
            dst_ctl,
            blocked_ms: None,
            uri: slot.migration_uri(),
            predicted: BTreeMap::new(),
            actual: BTreeMap::new(),
            forecasts: Vec::new(),
            polls: Vec::new(),
            events: Vec::new(),
            throttled_s: 0.0,
            postcopy_s: 0.0,
            postcopy_asked: false,
            moved: false,
            paused_ms: None,
            end: None,
        });
    }
    // An agent on a host has been watching long before a migration starts:
    // give it a few control ticks of the applications' traffic.
    std::thread::sleep(Duration::from_secs(5));
    // Where the migration starts on each guest's own clock, to read its
    // per-second sending reports against.
    let guest_t0: Vec<Option<f64>> = pairs
        .iter()
        .map(|(src, _)| crate::sender::last_guest_t(&src.console()))
        .collect();
    let started = Instant::now();
    let cpu_at_start = cpu_ticks();
    for v in vms.iter_mut() {
        rt.block_on(v.ctl.migrate(&v.uri))?;
    }

    let mut last_report = Instant::now();
    // When post-copy is armed, QEMU is polled every 50 ms until the guest
    // has moved: the network learns where a guest went from its
    // destination's announcement within milliseconds, and every
    // millisecond the testbed is late the guest's traffic is lost (then
    // TCP backs off). The agent's API is read every 250 ms.
    let fast = bench.arms_postcopy();
    let mut last_api = Instant::now() - Duration::from_secs(1);
    while vms.iter().any(|v| v.end.is_none()) {
        let moving = fast && vms.iter().any(|v| !v.moved && v.end.is_none());
        std::thread::sleep(Duration::from_millis(if moving { 50 } else { 250 }));
        if interrupted() {
            for v in vms.iter_mut().filter(|v| v.end.is_none()) {
                let _ = rt.block_on(v.ctl.migrate_cancel());
            }
            bail!("interrupted");
        }
        let read_api = last_api.elapsed() >= Duration::from_millis(240);
        if read_api {
            last_api = Instant::now();
        }
        if read_api
            && let Ok((200, body)) = agent.get("/api/v1/vms")
            && let Ok(status) = serde_json::from_str::<Vec<VmStatus>>(&body)
        {
            for v in &mut vms {
                let Some(m) = status
                    .iter()
                    .find(|s| s.name == v.name)
                    .and_then(|s| s.migration.clone())
                else {
                    continue;
                };
                if let Some(p) = m.predicted_dirty_pages {
                    v.predicted.entry(m.iteration).or_insert(p);
                }
                if let Some(converging) = m.converging {
                    let eta = if converging { m.eta_seconds } else { None };
                    v.forecasts.push((started.elapsed().as_secs_f64(), eta));
                }
                if let Some(a) = m.actual_dirty_pages
                    && m.iteration > 1
                {
                    v.actual.insert(m.iteration - 1, a);
                }
            }
        }
        let report = last_report.elapsed() > Duration::from_secs(10);
        if report {
            last_report = Instant::now();
        }
        for v in vms.iter_mut() {
            if v.end.is_some() {
                continue;
            }
            let info = rt.block_on(query_migrate(v))?;
            let elapsed = started.elapsed().as_secs_f64();
            v.record(elapsed, &info);
            // The guest runs on the destination from post-copy's start:
            // its traffic leaves there from then on.
            if info.status == Some(MigrationStatus::PostcopyActive) && !v.moved {
                tb.move_guest_at(v.index)?;
                v.moved = true;
            }
            if report {
                eprintln!(
                    "    {policy}{}: {elapsed:>5.0} s, {:?}, {} MB sent, iteration {}{}",
                    v.label,
                    info.status.clone().unwrap_or(MigrationStatus::None),
                    info.ram.as_ref().map_or(0, |r| r.transferred) / 1_000_000,
                    info.ram.as_ref().map(|r| r.dirty_sync_count).unwrap_or(0),
                    match info.cpu_throttle_percentage {
                        Some(p) if p > 0 => format!(", vCPUs throttled {p}%"),
                        _ => String::new(),
                    }
                );
            }
            match info.status {
                Some(MigrationStatus::Completed) => {
                    // QEMU flips the status a moment before it fills in
                    // total-time and downtime: read them again until set.
                    let mut info = info;
                    for _ in 0..20 {
                        if info.total_time.is_some_and(|t| t > 0) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        info = rt.block_on(query_migrate(v))?;
                    }
                    // The destination reports the guest's wait for
                    // post-copy's pages only once it has completed.
                    if v.postcopy_s > 0.0 {
                        v.blocked_ms = rt
                            .block_on(v.dst_ctl.query_migrate())
                            .ok()
                            .and_then(|i| i.postcopy_blocktime);
                    }
                    v.paused_ms = rt.block_on(paused_ms(v));
                    v.end = Some((info, true, started.elapsed().as_secs_f64()));
                }
                Some(MigrationStatus::Failed) | Some(MigrationStatus::Cancelled) => {
                    v.events.push((
                        elapsed,
                        format!("failed: {}", info.error_desc.clone().unwrap_or_default()),
                    ));
                    v.end = Some((info, false, elapsed));
                }
                // Post-copy cannot be cancelled: the guest already runs on
                // the destination. It is followed to its end, within bounds.
                Some(MigrationStatus::PostcopyActive) if elapsed > 3.0 * sc.timeout_s => {
                    bail!(
                        "{}: still in post-copy after {elapsed:.0} s (3 x the timeout); giving up on this run",
                        v.name
                    );
                }
                Some(MigrationStatus::PostcopyActive) => {}
                _ if elapsed > sc.timeout_s => {
                    rt.block_on(v.ctl.migrate_cancel())?;
                    v.events.push((elapsed, "timeout: cancelled".into()));
                    v.end = Some((info, false, elapsed));
                }
                Some(MigrationStatus::Active) => {
                    if let Some(after) = bench.postcopy_after()
                        && elapsed >= after
                        && !v.postcopy_asked
                    {
                        v.postcopy_asked = true;
                        match rt.block_on(v.ctl.migrate_start_postcopy()) {
                            Ok(()) => v.events.push((elapsed, "post-copy".into())),
                            Err(e) => v.events.push((elapsed, format!("post-copy refused: {e}"))),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let makespan = started.elapsed().as_secs_f64();
    let host_steal_pct = cpu_at_start
        .zip(cpu_ticks())
        .and_then(|(before, after)| steal_pct(before, after));
    // A migration that completed must leave a guest that still runs its
    // workload on the destination (it prints a line every second) and whose
    // working set lost no write (each second the workload checks an eighth
    // of its pages); a crashed or corrupted guest does neither.
    let mut runs = Vec::new();
    for v in &vms {
        runs.push(matches!(v.end, Some((_, true, _))).then(|| {
            pairs[v.index]
                .1
                .wait_for_console(crate::guest::PROGRESS_MARKER, Duration::from_secs(10))
                .is_ok()
        }));
    }
    if runs.contains(&Some(true)) {
        // Nine more reports: every page checked on the destination.
        std::thread::sleep(Duration::from_secs(9));
    }
    let intact: Vec<Option<bool>> = vms
        .iter()
        .zip(runs)
        .map(|(v, runs)| {
            runs.map(|r| {
                // Intact: it runs and, if it writes a working set, its
                // self-check ran (a guest without one proves nothing) and
                // found no lost write.
                let console = pairs[v.index].1.console();
                let checked = !sc.vm[v.index].checks_itself()
                    || console.contains(crate::guest::CLEAN_CHECK_MARKER);
                r && checked && !console.contains(crate::guest::CORRUPT_MARKER)
            })
        })
        .collect();
    let log = agent.log_text();
    let _ = agent.signal(libc::SIGTERM, Duration::from_secs(15));
    // Keep the agent's log of every run beside the reports.
    let _ = std::fs::create_dir_all(log_dir);
    let slug = slug(&format!("{}-{policy}-{repetition}", sc.name));
    let _ = std::fs::copy(&agent.log, log_dir.join(format!("{slug}.log")));

    let mut results = Vec::new();
    for (((v, spec), sink), intact) in vms.iter().zip(&sc.vm).zip(&sinks).zip(intact) {
        let Some((info, converged, ended_s)) = &v.end else {
            unreachable!("the loop above ends every migration");
        };
        eprintln!(
            "    QEMU{}: status {:?}, total-time {:?} ms, downtime {:?} ms, expected-downtime {:?}",
            v.label, info.status, info.total_time, info.downtime, info.expected_downtime
        );
        let (mut ape, mut n) = (0.0, 0);
        for (it, a) in &v.actual {
            if let Some(p) = v.predicted.get(it).filter(|_| *a > 0.0 && *it > 1) {
                ape += (p - a).abs() / a;
                n += 1;
            }
        }
        let ram = info.ram.as_ref();
        let app = spec.app()?;
        let end = started + Duration::from_secs_f64(*ended_s);
        let seconds = sink.per_second(started, end);
        let read_seconds = sink.per_second_read(started, end);
        let timeline = timeline(
            &v.polls,
            &seconds,
            &read_seconds,
            sink.first_byte(),
            &app,
            spec.reserve_mbit,
            started,
        );
        let sla = sla(&timeline);
        let app_bytes: u64 = seconds.iter().map(|(_, b)| b).sum();
        let scored_s = seconds.len().max(1) as f64;
        let (steps, refused) = steps_taken(&log, &v.name, &v.events);
        let (src, dst) = &pairs[v.index];
        let mut reports = crate::sender::reports(&src.console());
        reports.extend(crate::sender::reports(&dst.console()));
        let sender = guest_t0[v.index].map(|t0| {
            let to = t0 + ended_s;
            let tally = crate::sender::tally(&reports, &app, spec.reserve_mbit, t0, to);
            reports.retain(|r| r.guest_t_s > t0 && r.guest_t_s <= to + 1.0);
            for r in &mut reports {
                r.guest_t_s -= t0;
            }
            tally
        });
        let downtime_ms = converged
            .then_some(info.downtime)
            .flatten()
            .map(|d| d as f64);
        results.push(RunResult {
            scenario: sc.name.clone(),
            policy: policy.to_owned(),
            family: bench.family(),
            repetition,
            vm: v.name.clone(),
            vms: sc.vm.len(),
            converged: *converged,
            guest_intact: intact,
            total_s: if *converged {
                info.total_time.map_or(*ended_s, |t| t as f64 / 1000.0)
            } else {
                *ended_s
            },
            makespan_s: makespan,
            downtime_ms,
            iterations: ram.map(|r| r.dirty_sync_count),
            transferred_bytes: ram.map_or(0, |r| r.transferred),
            ram_bytes: ram.map_or(0, |r| r.total),
            app: app.describe(),
            // Goodput over this VM's own migration, whole seconds.
            app_mbit: units::mbit(app_bytes as f64 / scored_s),
            app_asked_mbit: match app {
                App::None => Some(0.0),
                App::Rate(m) | App::OnOff { mbit: m, .. } => Some(m),
                App::Greedy => None,
            },
            reserve_mbit: spec.reserve_mbit,
            sla_p5: sla.p5,
            sla_seconds: sla.seconds,
            below_95_s: sla.below_95,
            throttled_s: v.throttled_s,
            postcopy_s: v.postcopy_s,
            stopped_s: downtime_ms.unwrap_or(0.0) / 1000.0,
            paused_ms: converged.then_some(v.paused_ms).flatten(),
            postcopy_requests: ram.and_then(|r| r.postcopy_requests),
            postcopy_bytes: ram.and_then(|r| r.postcopy_bytes),
            postcopy_blocked_ms: v.blocked_ms,
            host_steal_pct,
            eta_error: if *converged {
                score_eta(&v.forecasts, *ended_s)
            } else {
                Vec::new()
            },
            prediction_mape: (n > 0).then(|| 100.0 * ape / n as f64),
            prediction_n: n,
            steps,
            refused,
            timeline,
            sender,
            sender_timeline: if sender.is_some() {
                reports
            } else {
                Vec::new()
            },
            events: v.events.clone(),
        });
    }
    Ok(results)
}

/// The agent's configuration for a run: the policy (observe mode for the
/// peers), the uplink at 95% of the bottleneck, and one `[[vm]]` per guest
/// with its addresses, tap and reservation.
///
/// Why 95%: the bottleneck is the router's tbf, downstream of the host.
/// Shaped at the full rate, the host's HTB would pass everything on and
/// the queue would form in tbf, which knows neither promises nor
/// priorities; a little below it, the queue stays in the host, where the
/// agent orders it (as one shapes a home uplink below the modem's rate).
/// Both count frames, so the price is 5% of an uncontended link for the
/// enforcing policies: on seed001-idle their migrations moved 45-46
/// Mbit/s of payload where stock QEMU, unshaped, moved 48.
fn agent_config(
    sc: &Scenario,
    bench: &BenchPolicy,
    tb: &MigrationTestbed,
    qmps: &[&Path],
    pin_dir: &Path,
    api: &Path,
) -> String {
    let run = tb.run.path();
    let link = if sc.link_mbit > 0.0 {
        sc.link_mbit * 0.95
    } else {
        10_000.0
    };
    let mut toml = format!(
        "[agent]\nmode = \"{}\"\npolicy = \"{}\"\n\
         [[uplink]]\niface = \"{UPLINK}\"\nlink_mbit = {link}\n\
         [datapath]\npin_dir = \"{}\"\n[shaping]\nstate_dir = \"{}\"\n\
         [api]\nlisten = \"unix:{}\"\n",
        if bench.enforcing() { "htb" } else { "observe" },
        bench.agent_policy(),
        pin_dir.display(),
        run.join("state").display(),
        api.display(),
    );
    for ((slot, qmp), spec) in tb.guests.iter().zip(qmps).zip(&sc.vm) {
        toml.push_str(&format!(
            "[[vm]]\nname = \"vm{}\"\nqmp = \"{}\"\nips = [\"{}\"]\ntaps = [\"{}\"]\n",
            slot.index,
            qmp.display(),
            slot.ip,
            slot.tap
        ));
        if spec.reserve_mbit > 0.0 {
            toml.push_str(&format!("reserve_mbit = {}\n", spec.reserve_mbit));
        }
    }
    toml
}

impl Followed {
    /// Keeps one poll of QEMU and adds its interval to the throttled and
    /// post-copy times.
    fn record(&mut self, t_s: f64, info: &vmbw::qemu::types::MigrationInfo) {
        let postcopy = info.status == Some(MigrationStatus::PostcopyActive);
        let poll = Poll {
            t_s,
            transferred: info.ram.as_ref().map_or(0, |r| r.transferred),
            throttle_pct: info.cpu_throttle_percentage.unwrap_or(0),
            postcopy,
        };
        if let Some(prev) = self.polls.last() {
            let dt = t_s - prev.t_s;
            if prev.throttle_pct > 0 {
                self.throttled_s += dt;
            }
            if prev.postcopy {
                self.postcopy_s += dt;
            }
            if poll.throttle_pct != prev.throttle_pct {
                self.events
                    .push((t_s, format!("vCPU throttle {}%", poll.throttle_pct)));
            }
        }
        self.polls.push(poll);
    }
}

/// Arms what `policy` arms before the migration starts, then lets the
/// destination listen: capabilities can only be set while no migration
/// runs (QEMU answers "There's a migration process in progress").
async fn arm(
    policy: &BenchPolicy,
    src: &mut Qmp,
    dst: &crate::vm::Vm,
    uri: &str,
) -> anyhow::Result<Qmp> {
    let mut dst_ctl = Qmp::connect(&dst.qmp_ctl, ctl_options()).await?;
    if policy.arms_postcopy() {
        // vmbw arms the preempt channel too (QEMU >= 8.0): the pages a
        // post-copy guest waits for then do not queue behind the
        // background push. The peer arms what KubeVirt's allowPostCopy
        // arms: postcopy-ram alone.
        let mut caps = vec![(Capability::PostcopyRam, true)];
        if policy.fires_armed_tools() {
            caps.push((Capability::PostcopyPreempt, true));
        }
        src.set_capabilities(&caps).await?;
        // Measurement only: how long the guest waits for its pages.
        caps.push((Capability::PostcopyBlocktime, true));
        dst_ctl.set_capabilities(&caps).await?;
    }
    if policy.arms_autoconverge() {
        src.set_capabilities(&[(Capability::AutoConverge, true)])
            .await?;
        if policy.fires_armed_tools() {
            // Armed but inert: QEMU throttles at most 1% until the agent
            // raises the ceiling.
            src.set_cpu_throttle(1).await?;
        }
    }
    dst_ctl.migrate_incoming(uri).await?;
    Ok(dst_ctl)
}

/// The per-second timeline of one VM's migration: the sink's bytes, the
/// migration's bytes (QEMU's `transferred`, interpolated at each second's
/// edges), and what the application was owed in that second.
fn timeline(
    polls: &[Poll],
    seconds: &[(Instant, u64)],
    read_seconds: &[(Instant, u64)],
    first_byte: Option<Instant>,
    app: &App,
    reserve_mbit: f64,
    started: Instant,
) -> Vec<Second> {
    let sent_at = |t: f64| -> f64 {
        let (Some(first), Some(last)) = (polls.first(), polls.last()) else {
            return 0.0;
        };
        match polls.iter().position(|p| p.t_s >= t) {
            Some(0) => first.transferred as f64 * (t / first.t_s.max(1e-9)).clamp(0.0, 1.0),
            Some(i) => {
                let (a, b) = (polls[i - 1], polls[i]);
                let f = (t - a.t_s) / (b.t_s - a.t_s).max(1e-9);
                a.transferred as f64 + f * (b.transferred as f64 - a.transferred as f64)
            }
            None => last.transferred as f64,
        }
    };
    seconds
        .iter()
        .enumerate()
        .map(|(i, &(at, bytes))| {
            let t_s = at.duration_since(started).as_secs_f64();
            let poll = polls.iter().rev().find(|p| p.t_s <= t_s + 1.0);
            // The application's phase is counted from its first byte.
            let demand = first_byte.and_then(|first| {
                let mid = at.saturating_duration_since(first).as_secs_f64() + 0.5;
                app.demand_at(mid, 0.6)
            });
            let target = demand
                .map(|d| sla_target(d, reserve_mbit))
                .filter(|t| t.is_finite() && *t > 0.0);
            Second {
                t_s,
                app_mbit: units::mbit(bytes as f64),
                app_read_mbit: read_seconds.get(i).map(|(_, b)| units::mbit(*b as f64)),
                migration_mbit: units::mbit((sent_at(t_s + 1.0) - sent_at(t_s)).max(0.0)),
                target_mbit: target,
                throttle_pct: poll.map_or(0, |p| p.throttle_pct),
                postcopy: poll.is_some_and(|p| p.postcopy),
            }
        })
        .collect()
}

/// This machine's CPU time so far, as /proc/stat's first line counts it:
/// (stolen by the hypervisor, all), in clock ticks.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user and nice).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (ticks.len() == 8).then(|| (ticks[7], ticks.iter().sum()))
}

/// Stolen share of the CPU time between two [`cpu_ticks`] readings, %.
pub fn steal_pct(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let all = after.1.checked_sub(before.1).filter(|t| *t > 0)?;
    let stolen = after.0.checked_sub(before.0)?;
    Some(100.0 * stolen as f64 / all as f64)
}

/// What an application is owed: its demand, capped by its reservation
/// when it has one (0 = none).
pub fn sla_target(demand_mbit: f64, reserve_mbit: f64) -> f64 {
    if reserve_mbit > 0.0 {
        demand_mbit.min(reserve_mbit)
    } else {
        demand_mbit
    }
}

/// The SLA figures of a timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sla {
    pub p5: Option<f64>,
    pub seconds: usize,
    pub below_95: usize,
}

/// The 5th percentile (nearest rank) of goodput / target over the seconds
/// that have a target, and how many of them fell below 95%.
pub fn sla(timeline: &[Second]) -> Sla {
    let mut ratios: Vec<f64> = timeline
        .iter()
        .filter_map(|s| s.target_mbit.map(|t| s.app_mbit / t))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let p5 = (!ratios.is_empty()).then(|| {
        let rank = ((0.05 * ratios.len() as f64).ceil() as usize).max(1);
        ratios[rank - 1]
    });
    Sla {
        p5,
        seconds: ratios.len(),
        below_95: ratios.iter().filter(|r| **r < 0.95).count(),
    }
}

/// A file-name-safe form of a label.
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The control connection's options: QEMU answers no QMP command while it
/// holds its big lock, i.e. through a migration's stop-and-copy, which on a
/// loaded TCG host with a raised downtime limit can take seconds.
fn ctl_options() -> QmpOptions {
    QmpOptions {
        command_timeout: Duration::from_secs(30),
        ..QmpOptions::default()
    }
}

/// `query-migrate` on `v`'s control socket; after an error (a timeout
/// leaves the connection in an unknown state) reconnects and asks again,
/// three times in all.
async fn query_migrate(v: &mut Followed) -> anyhow::Result<vmbw::qemu::types::MigrationInfo> {
    let mut last = None;
    for _ in 0..3 {
        if let Some(e) = &last {
            eprintln!("    {}: query-migrate failed ({e:#}); reconnecting", v.name);
            if let Err(e) = v.ctl.reconnect().await {
                last = Some(anyhow::Error::from(e));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        match v.ctl.query_migrate().await {
            Ok(info) => return Ok(info),
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last
        .expect("three attempts")
        .context(format!("{}: query-migrate", v.name)))
}

/// The escalation steps the agent logged for `vm`, split into those that
/// took effect and those QEMU refused (the agent logs each refusal with the
/// parameter it concerned, named like the step) or that were never carried
/// out, plus the runner's own refused actions.
fn steps_taken(log: &str, vm: &str, events: &[(f64, String)]) -> (Vec<String>, Vec<String>) {
    let of_vm = |l: &str| {
        l.match_indices(&format!("vm={vm}")).any(|(i, m)| {
            !l[i + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
        })
    };
    let field = |l: &str, key: &str| -> Option<String> {
        let rest = l.split(&format!("{key}=")).nth(1)?;
        // tracing quotes strings but writes Display values (an error's
        // message) bare, spaces and all, up to the next ` key=`.
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.split('"').next().unwrap_or("").to_owned()
        } else {
            rest.split(' ')
                .take_while(|w| {
                    !w.split_once('=').is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        Some(value)
    };
    let refusals: Vec<(String, String)> = log
        .lines()
        .filter(|l| l.contains("QEMU parameter not applied") && of_vm(l))
        .filter_map(|l| Some((field(l, "param")?, field(l, "reason").unwrap_or_default())))
        .collect();
    // Post-copy is one command, sent when the VM's task next applies a
    // decision: a step decided is taken only once the agent switched.
    let switched = log
        .lines()
        .any(|l| l.contains("switched to post-copy") && of_vm(l));
    let (mut taken, mut refused) = (Vec::new(), Vec::new());
    for step in log
        .lines()
        // "adamig escalation" (AdaMig's steps) or "escalation" (tools).
        .filter(|l| l.contains(" escalation vm=") && of_vm(l))
        .filter_map(|l| field(l, "step"))
    {
        match refusals.iter().find(|(p, _)| *p == step) {
            Some((_, why)) => refused.push(format!("{step}: {why}")),
            None if step == "post-copy" && !switched => refused.push(
                "post-copy: decided, but the agent never switched (no `switched to post-copy` \
                 in its log)"
                    .into(),
            ),
            None => taken.push(step),
        }
    }
    for (param, why) in &refusals {
        if !refused.iter().any(|r| r.starts_with(&format!("{param}:"))) {
            refused.push(format!("{param}: {why}"));
        }
    }
    for (_, e) in events {
        if let Some(why) = e.strip_prefix("post-copy refused: ") {
            refused.push(format!("post-copy: {why}"));
        } else if e == "post-copy" {
            taken.push("post-copy".into());
        }
    }
    (taken, refused)
}

/// Median and (min, max) of some values.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(app: f64, target: Option<f64>) -> Second {
        Second {
            t_s: 0.0,
            app_mbit: app,
            app_read_mbit: None,
            migration_mbit: 0.0,
            target_mbit: target,
            throttle_pct: 0,
            postcopy: false,
        }
    }

    #[test]
    fn spread_of_values() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn steal_is_the_stolen_share_of_all_cpu_time_between_two_readings() {
        let at = |user: u64, idle: u64, steal: u64| {
            format!("cpu  {user} 0 10 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
        };
        let before = parse_cpu_ticks(&at(100, 800, 100)).expect("parses");
        assert_eq!(before, (100, 1010));
        let after = parse_cpu_ticks(&at(150, 950, 150)).expect("parses");
        assert_eq!(steal_pct(before, after), Some(20.0));
        assert_eq!(steal_pct(after, after), None, "no time passed");
        assert_eq!(parse_cpu_ticks("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(parse_cpu_ticks("intr 1 2\n"), None);
    }

    #[test]
    fn sla_is_the_fifth_percentile_of_scored_seconds() {
        // 20 scored seconds at 10 of 10, one at 5 of 10, and unscored ones.
        let mut t: Vec<Second> = (0..19).map(|_| second(10.0, Some(10.0))).collect();
        t.push(second(5.0, Some(10.0)));
        t.push(second(0.0, None));
        let s = sla(&t);
        assert_eq!((s.p5, s.seconds, s.below_95), (Some(0.5), 20, 1));
        // 40 seconds: the 5th percentile is the 2nd lowest.
        let mut t: Vec<Second> = (0..38).map(|_| second(10.0, Some(10.0))).collect();
        t.push(second(2.0, Some(10.0)));
        t.push(second(9.0, Some(10.0)));
        assert_eq!(sla(&t).p5, Some(0.9));
        assert_eq!(sla(&[second(3.0, None)]).p5, None);
    }

    #[test]
    fn timeline_interpolates_the_migration_and_scores_on_phases() {
        let t0 = Instant::now();
        // QEMU polled every 0.5 s, sending 1 MB/s (8 Mbit/s) throughout.
        let polls: Vec<Poll> = (1..=20)
            .map(|i| Poll {
                t_s: i as f64 * 0.5,
                transferred: i * 500_000,
                throttle_pct: if i > 10 { 20 } else { 0 },
                postcopy: false,
            })
            .collect();
        // The application sends 2.5 MB/s (20 Mbit/s) 2 s on, 2 s off, its
        // first byte at the start.
        let seconds: Vec<(Instant, u64)> = (0..8)
            .map(|i| {
                (
                    t0 + Duration::from_secs(i),
                    if i % 4 < 2 { 2_500_000 } else { 0 },
                )
            })
            .collect();
        let app = App::OnOff {
            mbit: 20.0,
            on_ms: 2000,
            off_ms: 2000,
        };
        let t = timeline(&polls, &seconds, &[], Some(t0), &app, 10.0, t0);
        assert_eq!(t.len(), 8);
        for s in &t {
            assert!((s.migration_mbit - 8.0).abs() < 1e-6, "{s:?}");
        }
        // With 2 s phases the middle of every second lies within the 0.6 s
        // margin of an edge: nothing is scored.
        assert!(t.iter().all(|s| s.target_mbit.is_none()), "{t:?}");
        // With 4 s phases, the middle seconds of each phase are scored:
        // on seconds owe min(20, 10) = 10, off seconds owe nothing.
        let app = App::OnOff {
            mbit: 20.0,
            on_ms: 4000,
            off_ms: 4000,
        };
        let seconds: Vec<(Instant, u64)> = (0..8)
            .map(|i| {
                (
                    t0 + Duration::from_secs(i),
                    if i < 4 { 2_500_000 } else { 0 },
                )
            })
            .collect();
        let t = timeline(&polls, &seconds, &[], Some(t0), &app, 10.0, t0);
        let targets: Vec<Option<f64>> = t.iter().map(|s| s.target_mbit).collect();
        assert_eq!(
            targets,
            [None, Some(10.0), Some(10.0), None, None, None, None, None]
        );
        assert_eq!(sla(&t).p5, Some(2.0));
        assert_eq!(t[6].throttle_pct, 20);
    }

    #[test]
    fn forecasts_are_scored_by_the_last_one_made_before_each_point() {
        // A 100 s migration; forecasts at 10 s (never), 30 s (80 s left,
        // truth 70) and 60 s (45 s left, truth 40).
        let f = [(10.0, None), (30.0, Some(80.0)), (60.0, Some(45.0))];
        let s = score_eta(&f, 100.0);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].at, s[0].forecast_s, s[0].relative_error()),
            (0.25, None, None)
        );
        assert_eq!(s[1].actual_s, 70.0);
        assert!((s[1].relative_error().expect("e") - 10.0 / 70.0).abs() < 1e-12);
        assert!((s[2].relative_error().expect("e") - 5.0 / 40.0).abs() < 1e-12);
        // Nothing forecast before a point: that point is not scored.
        assert_eq!(score_eta(&[(60.0, Some(1.0))], 100.0).len(), 1);
    }

    #[test]
    fn refused_steps_are_not_counted_as_taken() {
        let log = "\
2026-11-30T07:00:01Z  INFO vmbw::daemon::tick: adamig escalation vm=vm0 step=\"more-share\"
2026-11-30T07:00:02Z  INFO vmbw::daemon::tick: adamig escalation vm=vm0 step=\"auto-converge\"
2026-11-30T07:00:02Z  WARN vm{vm=vm0}: vmbw::daemon::vm: QEMU parameter not applied (not retried in this migration) param=\"auto-converge\" reason=QEMU refused it: QEMU refused `migrate-set-capabilities`: GenericError: There's a migration process in progress source=\"qmp\"
2026-11-30T07:00:03Z  INFO vmbw::daemon::tick: adamig escalation vm=vm10 step=\"downtime-limit\"
2026-11-30T07:00:04Z  INFO vmbw::daemon::tick: escalation vm=vm2 step=\"post-copy\"
2026-11-30T07:00:05Z  INFO vm{vm=vm2}: vmbw::daemon::vm: switched to post-copy
2026-11-30T07:00:06Z  INFO vmbw::daemon::tick: adamig escalation vm=vm3 step=\"post-copy\"
";
        let (taken, refused) = steps_taken(log, "vm0", &[(30.0, "post-copy".into())]);
        assert_eq!(taken, ["more-share", "post-copy"]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(
            refused[0],
            "auto-converge: QEMU refused it: QEMU refused `migrate-set-capabilities`: \
             GenericError: There's a migration process in progress"
        );
        let (taken, _) = steps_taken(log, "vm1", &[]);
        assert!(taken.is_empty(), "vm10's step is not vm1's: {taken:?}");
        let (taken, _) = steps_taken(log, "vm2", &[]);
        assert_eq!(taken, ["post-copy"]);
        // Decided, never switched: not taken.
        let (taken, refused) = steps_taken(log, "vm3", &[]);
        assert!(taken.is_empty(), "{taken:?}");
        assert!(refused[0].starts_with("post-copy: decided"), "{refused:?}");
    }
}
