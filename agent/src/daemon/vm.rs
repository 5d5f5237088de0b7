//! One task per VM: follows the VM's migrations through its
//! [`MigrationSource`] (QEMU's QMP socket, or libvirt where libvirt owns
//! it), one sample per finished iteration, learns its TCP streams from
//! QEMU's sockets and registers them as migration flows, and applies the
//! controller's QEMU parameters at each iteration boundary. Reconnects when
//! QEMU (or libvirt, or the domain) is not there (yet, or any more).

use crate::api::units;
use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{Instrument as _, debug, info, info_span, warn};
use vmbw_common::{Direction, class};

use super::{procnet, state::Shared};
use crate::{
    api::MigrationPhase,
    config::Telemetry,
    control::{QemuParams, switchover},
    datapath::Urgency,
    migration::{Applied, MigrationSource, to_give_back},
    qemu::{MigrationMonitor, MonitorConfig, Qmp, QmpOptions, types::MigrationStatus},
};

/// How long a VM task waits for the controller's decision after news.
const DECISION_WAIT: Duration = Duration::from_millis(1500);
/// Between reconnect attempts.
const RETRY: Duration = Duration::from_secs(2);
/// Before switching to post-copy, QEMU's migration stream is held (its
/// `max-bandwidth` at this many bytes/s) until what it already wrote has
/// left the host: the switch's device state, and then every page the
/// guest waits for, travel behind whatever is still queued (measured on the
/// testbed: 1-2 s without goodput after the switch). Not lower: QEMU
/// divides the rate by 10 (its 100 ms windows), and a result of 0 means
/// "no limit". QEMU 10 holds no stream below ~10 Mbit/s though: it counts
/// bytes only when its buffer is flushed (every 32 pages), so each window
/// still sends ~130 KB (measured: `ram.transferred` grew 1.3 MB/s through
/// a hold at this rate). The hold drains only a migration whose share is
/// well above that: so the hold also bounds what QEMU's streams may queue
/// ([`HOLD_SEND_BUFFER`]).
const DRAIN_RATE: f64 = 1000.0;
/// What QEMU's migration streams may queue, in flight and unsent, through
/// the hold and the switch (SO_SNDBUF, which the kernel doubles): QEMU's
/// writes then wait for the link instead of piling up in the socket, and
/// the backlog drains. Measured before it existed (greedy application with
/// 20 Mbit/s promised at 30, `nrac+escalate`, QEMU 10.0.2): 0.4-1.1 MB
/// were still queued when the 3 s hold ended, and the guest stood 486-520
/// ms between the source's stop and the destination's resume. With it (the
/// same scenario): 1.25 MB queued at the hold's start, 36 KB 1.4 s later,
/// and the guest paused 186 ms. 16 KiB: the queue then stays under
/// [`DRAINED`], about 60 ms at 8.5 Mbit/s.
const HOLD_SEND_BUFFER: u32 = 16 * 1024;
/// Queued bytes that count as drained (a few dozen full-size segments).
const DRAINED: u64 = 64 * 1024;
/// Longest hold before switching anyway.
const DRAIN_MAX: Duration = Duration::from_secs(3);
/// How often, and how long, the preempt channel is looked for after the
/// switch to post-copy.
const URGENT_SCAN: Duration = Duration::from_millis(10);
const URGENT_SCAN_FOR: Duration = Duration::from_secs(2);

/// Follows VM `name`, reached as `telemetry` says, until `shutdown`.
/// `cfg` is the QMP monitor's configuration; the libvirt source takes the
/// uplink from it (X6) and measures the rest through libvirt.
pub async fn follow(
    shared: Arc<Shared>,
    name: String,
    telemetry: Telemetry,
    cfg: MonitorConfig,
    shutdown: watch::Receiver<bool>,
) {
    let span = info_span!("vm", vm = %name);
    async move {
        match telemetry {
            Telemetry::Qmp(path) => {
                let what = format!("qmp {}", path.display());
                let connect = || {
                    let (path, cfg) = (path.clone(), cfg.clone());
                    async move {
                        let qmp = Qmp::connect(&path, QmpOptions::default())
                            .await
                            .map_err(|e| e.to_string())?;
                        let mut monitor = MigrationMonitor::new(qmp, cfg)
                            .await
                            .map_err(|e| e.to_string())?;
                        monitor.enable_events().await.map_err(|e| e.to_string())?;
                        Ok(monitor)
                    }
                };
                follow_with(&shared, &name, &what, connect, shutdown).await;
            }
            #[cfg(feature = "libvirt")]
            Telemetry::Libvirt {
                uri,
                domain,
                pid_file,
            } => {
                use crate::libvirt::{LibvirtMonitor, LibvirtMonitorConfig, LibvirtTarget};
                let what = format!("libvirt {uri} domain {domain}");
                let target = LibvirtTarget {
                    uri,
                    domain,
                    pid_file,
                };
                let lcfg = LibvirtMonitorConfig {
                    uplink: cfg.uplink.clone(),
                    ..LibvirtMonitorConfig::default()
                };
                let connect = || {
                    let (target, lcfg) = (target.clone(), lcfg.clone());
                    async move {
                        LibvirtMonitor::connect(&target, lcfg)
                            .await
                            .map_err(|e| format!("{e}: {}", e.libvirt_message()))
                    }
                };
                follow_with(&shared, &name, &what, connect, shutdown).await;
            }
            #[cfg(not(feature = "libvirt"))]
            Telemetry::Libvirt { .. } => {
                warn!("built without the libvirt feature: this VM is not followed");
            }
        }
    }
    .instrument(span)
    .await
}

/// Connects with `connect` and follows migrations, retrying after errors.
async fn follow_with<S, F, Fut>(
    shared: &Arc<Shared>,
    name: &str,
    what: &str,
    mut connect: F,
    mut shutdown: watch::Receiver<bool>,
) where
    S: MigrationSource,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, String>>,
{
    let mut last_error = String::new();
    while !*shutdown.borrow() {
        let result = match connect().await {
            Ok(mut source) => follow_once(shared, name, &mut source, &mut shutdown).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => last_error.clear(),
            Err(e) => {
                // Say each distinct problem once, not every retry.
                if e != last_error {
                    warn!(source = what, error = %e, "QEMU not reachable or migration follow failed; retrying");
                    shared.metrics.error("qemu");
                    last_error = e;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// One connection: wait for a migration, follow it to its end.
async fn follow_once<S: MigrationSource>(
    shared: &Arc<Shared>,
    name: &str,
    source: &mut S,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    debug!(source = source.kind(), "connected; waiting for a migration");
    if let Some(v) = shared.state().vms.get_mut(name) {
        v.telemetry = Some(source.kind());
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            r = source.wait_for_start(Duration::from_secs(5)) => match r {
                Ok(true) => break,
                // One ended while the connection was down.
                Ok(false) => give_back(shared, name, source).await,
                Err(e) => return Err(e.to_string()),
            },
        }
    }
    let pid = source.qemu_pid();
    info!(pid, source = source.kind(), "migration started");
    {
        let mut st = shared.state();
        if let Some(v) = st.vms.get_mut(name) {
            v.begin_migration();
        }
    }
    let mut applied = Applied::default();
    // What the starter set, unless an earlier connection to this same
    // migration read it (QEMU has vmbw's values now).
    let known = shared
        .state()
        .vms
        .get(name)
        .is_some_and(|v| v.starting_params.is_some());
    if !known {
        match source.starting_parameters().await {
            Ok(params) => {
                if let Some(v) = shared.state().vms.get_mut(name) {
                    v.starting_params = params;
                }
            }
            Err(e) => {
                warn!(error = %crate::api::errors::chain(&e), "reading QEMU's migration parameters; vmbw's will stay after the migration")
            }
        }
    }
    match source.armed().await {
        Ok(armed) => {
            info!(?armed, "armed at the start");
            let escalating = {
                let mut st = shared.state();
                if let Some(v) = st.vms.get_mut(name) {
                    v.armed = armed;
                }
                st.escalating
            };
            // KubeVirt's allowAutoConverge (libvirt's flag) arms it with
            // QEMU's own steps (20%, then +10%); escalation holds it at 1%
            // and raises the ceiling only as far as its forecast needs.
            if armed.auto_converge && escalating {
                let inert = QemuParams {
                    cpu_throttle_pct: Some(1),
                    ..QemuParams::default()
                };
                match source.apply(&inert, &mut applied).await {
                    Ok(refused) if refused.is_empty() => {
                        info!("auto-converge held inert (vCPU throttle at most 1%)")
                    }
                    Ok(refused) => {
                        for r in refused {
                            warn!(param = r.param, reason = %r.reason, "auto-converge could not be held inert");
                        }
                    }
                    Err(e) => {
                        warn!(error = %crate::api::errors::chain(&e), "holding auto-converge inert")
                    }
                }
            }
        }
        Err(e) => {
            warn!(error = %crate::api::errors::chain(&e), "reading what the migration armed; assuming nothing")
        }
    }
    // QEMU opens its migration stream(s) just after the start and may open
    // more (multifd): watch its sockets while the migration runs.
    let flow_watch = (pid != 0).then(|| {
        Watch(tokio::spawn(watch_flows(
            shared.clone(),
            name.to_owned(),
            pid,
        )))
    });
    // What is left, from every poll: the forecast moves while a pass runs.
    let progress_watch = source.progress().map(|rx| {
        Watch(tokio::spawn(follow_progress(
            shared.clone(),
            name.to_owned(),
            rx,
        )))
    });
    await_decision_and_apply(shared, name, source, &mut applied).await;
    // The bulk pass gives no dirty rate until it ends: measure one now
    // (about a second), so that the forecast knows early. A QMP source
    // goes on measuring from its polls while the pass lasts; their mean
    // comes with its progress (`follow_progress`).
    match source.sample_dirty_rate().await {
        Ok(Some(rate)) => {
            // What is left of the bulk pass: the forecast needs it, and
            // samples bring it only when the pass ends.
            let remaining = source.remaining().await.ok().flatten();
            info!(
                dirty_rate_mbit = units::mbit(rate),
                remaining, "dirty rate sampled"
            );
            if let Some(v) = shared.state().vms.get_mut(name) {
                v.sampled_dirty_rate = Some(rate);
                if let Some(r) = remaining {
                    v.remaining = r;
                }
            }
            await_decision_and_apply(shared, name, source, &mut applied).await;
        }
        Ok(None) => {}
        Err(e) => warn!(error = %crate::api::errors::chain(&e), "sampling the dirty rate"),
    }
    loop {
        let sample = tokio::select! {
            _ = shutdown.changed() => {
                drop(flow_watch);
                drop(progress_watch);
                unregister_flows(shared, name);
                // Fail open: QEMU paces itself as its starter set it.
                give_back(shared, name, source).await;
                return Ok(());
            }
            s = source.next_sample() => s.map_err(|e| e.to_string())?,
        };
        match sample {
            Some(s) => {
                info!(
                    iteration = s.iteration,
                    dirty_pages = s.dirty_pages,
                    iter_s = s.iter_s,
                    remaining = s.remaining_bytes,
                    mem_pct = s.mem_usage_pct,
                    cpu_pct = s.cpu_usage_pct,
                    vm_net_bps = s.vm_net_bps,
                    sampled_dirty_mbit = s.sampled_dirty_bps.map(units::mbit),
                    "iteration finished"
                );
                {
                    let mut st = shared.state();
                    if let Some(v) = st.vms.get_mut(name) {
                        let finished = s.iteration as u32;
                        let predicted = v.predicted.get(&finished).copied();
                        shared.metrics.dirty_pages(name, s.dirty_pages, predicted);
                        v.sample_at = Some(std::time::Instant::now());
                        v.pass_started = v.sample_at;
                        let mut it = s.to_iteration();
                        if v.rows.is_empty() && it.sampled_dirty_pps.is_none() {
                            // The rate sampled during the bulk pass.
                            it.sampled_dirty_pps = v.sampled_dirty_rate.and_then(|bps| {
                                crate::predict::sampled_pages_per_s(bps, s.page_size as f64)
                            });
                        }
                        if let Some(bps) = s.sampled_dirty_end_bps.or(s.sampled_dirty_bps) {
                            // This pass's own measurement (where it ended,
                            // if it trended): the forecast's from now on
                            // (`control::forecast::dirty_rate`).
                            v.sampled_dirty_rate = Some(bps);
                        }
                        v.rows.push(it);
                        v.iter_s.push(s.iter_s);
                        v.dirty_rates.push(if s.iter_s > 0.0 {
                            s.dirty_pages * s.page_size as f64 / s.iter_s
                        } else {
                            0.0
                        });
                        v.samples += 1;
                        v.iteration = (s.iteration + s.syncs) as u32;
                        v.remaining = s.remaining_bytes;
                        // The guest's RAM, which KubeVirt's deadline is per
                        // GiB of; sent + remaining where the source has no
                        // total (it undercounts: zero pages go as headers).
                        let ram = match s.ram_total_bytes {
                            0 => s.transferred_bytes + s.remaining_bytes,
                            total => total,
                        };
                        v.ram_bytes.get_or_insert(ram as f64);
                        v.used_memory = Some(s.mem_usage_pct / 100.0 * ram as f64);
                        v.page_size = s.page_size as f64;
                        shared.metrics.migration_progress(
                            name,
                            s.remaining_bytes,
                            v.iteration,
                            s.expected_downtime_ms.map(Duration::from_millis),
                        );
                        if s.status == MigrationStatus::PostcopyActive {
                            v.enter_postcopy();
                        }
                    }
                }
                await_decision_and_apply(shared, name, source, &mut applied).await;
            }
            None => {
                let status = source.end().map(|o| o.status);
                info!(status = ?status, "migration ended");
                drop(flow_watch);
                drop(progress_watch);
                unregister_flows(shared, name);
                give_back(shared, name, source).await;
                let mut st = shared.state();
                if let Some(v) = st.vms.get_mut(name) {
                    v.phase = if status == Some(MigrationStatus::Completed) {
                        MigrationPhase::Completed
                    } else {
                        MigrationPhase::Failed
                    };
                }
                shared.wake.notify_one();
                return Ok(());
            }
        }
    }
}

/// Wakes the control loop, waits (bounded) for its next decision about this
/// VM, and applies the QEMU parameters that changed.
async fn await_decision_and_apply<S: MigrationSource>(
    shared: &Arc<Shared>,
    name: &str,
    source: &mut S,
    applied: &mut Applied,
) {
    let before = shared.state().vms.get(name).map_or(0, |v| v.decided);
    shared.wake.notify_one();
    let deadline = tokio::time::Instant::now() + DECISION_WAIT;
    let params = loop {
        let (decided, params) = shared
            .state()
            .vms
            .get(name)
            .map_or((before, Default::default()), |v| {
                (v.decided, v.qemu_params())
            });
        if decided > before || tokio::time::Instant::now() >= deadline {
            break params;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let was = applied.clone();
    // Switching now: by the rule the sources apply (Applied::pending).
    let switching = applied.pending(&params).start_postcopy;
    let pid = source.qemu_pid();
    let mut params = params;
    if !switching && pid != 0 && source.sets_switchover_bandwidth() {
        guard_switchover(shared, name, pid, &mut params);
    }
    let (params, held_buffers) = if switching && pid != 0 {
        drain_before_switch(source, applied, &params, pid).await
    } else {
        (params, Vec::new())
    };
    let result = source.apply(&params, applied).await;
    if let Some(v) = shared.state().vms.get_mut(name)
        && let Some(starting) = &v.starting_params
    {
        v.give_back = to_give_back(&applied.params, starting, &v.give_back);
    }
    match result {
        Ok(refused) => {
            for r in &refused {
                warn!(param = r.param, reason = %r.reason, source = source.kind(), "QEMU parameter not applied (not retried in this migration)");
                shared.metrics.error("qemu-control-refused");
            }
            if let Some(v) = shared.state().vms.get_mut(name) {
                v.qemu_max_bandwidth = applied.max_bandwidth_set;
                v.refused
                    .extend(refused.iter().map(|r| format!("{}: {}", r.param, r.reason)));
            }
        }
        Err(e) => {
            warn!(error = %crate::api::errors::chain(&e), "applying QEMU parameters");
            shared.metrics.error("qemu-control");
        }
    }
    if !held_buffers.is_empty() {
        // Switched (or refused): post-copy's pages queue as before the hold.
        procnet::restore_send_buffers(pid, &held_buffers);
    }
    let (now, then) = (&applied.params, &was.params);
    if now.max_bandwidth != then.max_bandwidth
        && let Some(bw) = now.max_bandwidth
    {
        info!(
            max_bandwidth_mbit = units::mbit(bw),
            set_mbit = applied.max_bandwidth_set.map(units::mbit),
            source = source.kind(),
            "QEMU max-bandwidth set"
        );
    }
    if now.downtime_limit_s != then.downtime_limit_s
        && let Some(dt) = now.downtime_limit_s
    {
        info!(downtime_limit_ms = dt * 1000.0, "QEMU downtime-limit set");
    }
    if now.cpu_throttle_pct != then.cpu_throttle_pct
        && let Some(p) = now.cpu_throttle_pct
    {
        info!(cpu_throttle_pct = p, "QEMU vCPU throttle ceiling set");
    }
    if now.max_postcopy_bandwidth != then.max_postcopy_bandwidth
        && let Some(bw) = now.max_postcopy_bandwidth
    {
        info!(
            max_postcopy_bandwidth_mbit = units::mbit(bw),
            "QEMU max-postcopy-bandwidth set"
        );
    }
    if now.start_postcopy && !then.start_postcopy {
        info!("switched to post-copy");
        if let Some(v) = shared.state().vms.get_mut(name) {
            v.enter_postcopy();
        }
        if pid != 0 {
            tokio::spawn(register_urgent_flow(shared.clone(), name.to_owned(), pid));
        }
    }
}

/// Sets back the QEMU parameters vmbw changed in the migration that just
/// ended (`VmState::give_back`, recorded after every apply, on every
/// connection to it) to what its starter had left, and forgets them.
async fn give_back<S: MigrationSource>(shared: &Arc<Shared>, name: &str, source: &mut S) {
    let params = {
        let mut st = shared.state();
        let Some(v) = st.vms.get_mut(name) else {
            return;
        };
        if v.starting_params.take().is_none() {
            return;
        }
        std::mem::take(&mut v.give_back)
    };
    if params == Default::default() {
        return;
    }
    match source.give_back(&params).await {
        Ok(()) => info!(?params, "QEMU's migration parameters given back"),
        Err(e) => {
            warn!(error = %crate::api::errors::chain(&e), ?params, "giving QEMU's migration parameters back");
            shared.metrics.error("qemu-control");
        }
    }
}

/// Paces a pre-copy migration near its switchover so that its final pass
/// does not wait behind QEMU's socket backlog ([`switchover`]). Only for
/// migrations the policy enforces (it knows their class).
fn guard_switchover(shared: &Arc<Shared>, name: &str, pid: u32, params: &mut QemuParams) {
    let stream = {
        let mut st = shared.state();
        let Some(v) = st.vms.get_mut(name) else {
            return;
        };
        let Some(guarantee) = v.decision.as_ref().and_then(|d| d.migration_rate) else {
            return;
        };
        if v.phase == MigrationPhase::PostCopy {
            v.switchover_held_since = None;
            return;
        }
        // A class cannot drain faster than its ceiling, whatever a rate
        // measured over a bursty interval says. Rates are measured over at
        // least 250 ms since 8b3d2ae; before, a tick right after another
        // read 218 Mbit/s on a 28.5 Mbit/s link (concurrent-30mbit at
        // db65f22: QEMU's final pass let through behind 1.6 MB, paused
        // 2.7 s).
        let ceil = v
            .decision
            .as_ref()
            .and_then(|d| d.migration_ceil)
            .unwrap_or(f64::INFINITY)
            .max(guarantee);
        let stream = switchover::Stream {
            remaining: v.remaining as f64,
            drain: guarantee
                .max(v.rates.get(class::MIGRATION, Direction::Egress))
                .min(ceil),
            backlog: 0.0,
            downtime_limit_s: params
                .downtime_limit_s
                .unwrap_or_else(|| v.starting_downtime_limit_s()),
            dirty_rate: v.dirty_rates.last().copied().unwrap_or(0.0),
            held_s: v.switchover_held_s().unwrap_or(0.0),
        };
        if !stream.approaching(v.iteration) {
            v.switchover_held_since = None;
            return;
        }
        stream
    };
    let Some(backlog) = procnet::send_queue(pid) else {
        return;
    };
    let stream = switchover::Stream {
        backlog: backlog as f64,
        ..stream
    };
    if let Some(why) = switchover::guard(&stream, params) {
        info!("{why}");
    }
    // Escalation reads both: a switchover held for long is late.
    if let Some(v) = shared.state().vms.get_mut(name) {
        v.stream_backlog = backlog;
        v.switchover_held_since = if switchover::holds(&stream, params) {
            v.switchover_held_since
                .or_else(|| Some(std::time::Instant::now()))
        } else if params.avail_switchover_bandwidth == Some(0.0) {
            // Released after the longest hold: stays released.
            v.switchover_held_since
        } else {
            None
        };
    }
}

/// Holds the migration stream until QEMU's sockets have sent what they
/// hold (or [`DRAIN_MAX`] passed) and returns `params` to switch with, and
/// the send buffers to give back once switched: the hold (QEMU's rate and
/// its sockets' bounded buffers) stays in force through the switch, after
/// which QEMU paces itself by `max-postcopy-bandwidth` instead.
async fn drain_before_switch<S: MigrationSource>(
    source: &mut S,
    applied: &mut Applied,
    params: &QemuParams,
    pid: u32,
) -> (QemuParams, Vec<(procnet::TcpConn, libc::c_int)>) {
    let hold = QemuParams {
        max_bandwidth: Some(DRAIN_RATE),
        start_postcopy: false,
        ..*params
    };
    if let Err(e) = source.apply(&hold, applied).await {
        warn!(error = %crate::api::errors::chain(&e), "holding the migration stream before post-copy; switching now");
        return (*params, Vec::new());
    }
    let buffers = procnet::cap_send_buffers(pid, HOLD_SEND_BUFFER).unwrap_or_default();
    let started = tokio::time::Instant::now();
    let queued_at_start = procnet::send_queue(pid);
    let mut queued = queued_at_start;
    while queued.is_some_and(|q| q > DRAINED) && started.elapsed() < DRAIN_MAX {
        tokio::time::sleep(Duration::from_millis(20)).await;
        queued = procnet::send_queue(pid);
    }
    info!(
        queued_before = queued_at_start,
        queued_after = queued,
        drain_ms = started.elapsed().as_millis() as u64,
        streams_capped = buffers.len(),
        "migration stream drained before post-copy"
    );
    let params = QemuParams {
        max_bandwidth: Some(DRAIN_RATE),
        ..*params
    };
    (params, buffers)
}

/// A task watching one migration (its flows, its progress), stopped when
/// dropped.
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies every poll's bytes-left into the VM's state and measures how
/// fast they drain, until the migration ends. A pass's end also brings
/// them, with its sample; this keeps them fresh in between (the demo's
/// bulk pass runs 70 s).
async fn follow_progress(
    shared: Arc<Shared>,
    name: String,
    mut rx: tokio::sync::watch::Receiver<Option<crate::qemu::Progress>>,
) {
    while rx.changed().await.is_ok() {
        let Some(p) = *rx.borrow_and_update() else {
            continue;
        };
        if let Some(v) = shared.state().vms.get_mut(&name)
            && v.migrating()
        {
            v.remaining = p.remaining;
            v.drain.observe(p);
            if p.bulk_dirty_rate.is_some() && v.rows.is_empty() {
                v.sampled_dirty_rate = p.bulk_dirty_rate;
            }
            if let Some(used) = p.used_memory {
                v.used_memory = Some(used as f64);
            }
            v.unsent_zero = p.unsent_zero.map(|z| z as f64);
            v.sampled_working_set = p.sampled_working_set.map(|w| w as f64);
        }
    }
}

/// Registers QEMU's TCP streams while the migration runs: looks every 100
/// ms for the first 5 s until the stream is found (it opens just after the
/// start; what it sends before it is registered counts as "other": 100 ms
/// is 0.6 MB at 50 Mbit/s), then every 2 s for streams opened later
/// (multifd opens its channels with the first; post-copy's preempt channel
/// has its own quick scan, [`URGENT_SCAN`]). A look reads every fd link of
/// QEMU's process ([`procnet::established`]): at 500 ms for 8 migrations it
/// was a tenth of the agent's CPU in `bench agent-load`.
async fn watch_flows(shared: Arc<Shared>, name: String, pid: u32) {
    for round in 0u32.. {
        register_flows(&shared, &name, pid);
        let found = shared
            .state()
            .vms
            .get(&name)
            .is_some_and(|v| !v.flows.is_empty());
        let pause = if round < 50 && !found { 100 } else { 2000 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Registers QEMU's current TCP streams as the VM's exact migration flows;
/// returns how many were new. A stream that appears once the VM is in
/// post-copy is QEMU's preempt channel (QEMU opens it at the switch, since
/// 8.0): the pages the guest waits for, registered as urgent.
fn register_flows(shared: &Arc<Shared>, name: &str, pid: u32) -> usize {
    let conns = procnet::established(pid);
    let (slot, known, urgent) = {
        let st = shared.state();
        match st.vms.get(name) {
            Some(v) => (v.slot, v.flows.clone(), v.phase == MigrationPhase::PostCopy),
            None => return 0,
        }
    };
    let new: Vec<_> = conns
        .iter()
        .filter(|c| !known.contains(c))
        .copied()
        .collect();
    if new.is_empty() {
        return 0;
    }
    {
        let mut dp = shared.datapath();
        for c in &new {
            let (local, remote) = (
                (c.local.ip(), c.local.port()),
                (c.remote.ip(), c.remote.port()),
            );
            let urgency = if urgent {
                Urgency::Urgent
            } else {
                Urgency::Background
            };
            match dp.add_migration_flow(slot, local, remote, 6, urgency) {
                Ok(()) => {
                    info!(local = %c.local, remote = %c.remote, urgent, "migration flow registered")
                }
                Err(e) => {
                    warn!(error = %crate::api::errors::chain(&e), "registering a migration flow")
                }
            }
        }
    }
    let n = new.len();
    if let Some(v) = shared.state().vms.get_mut(name) {
        v.flows.extend(new);
    }
    n
}

/// After the switch to post-copy: looks for QEMU's preempt channel every
/// [`URGENT_SCAN`] for up to [`URGENT_SCAN_FOR`], so that the guest's
/// first page requests already skip the background stream's queue (the
/// flow watcher looks only every 500 ms).
async fn register_urgent_flow(shared: Arc<Shared>, name: String, pid: u32) {
    let started = tokio::time::Instant::now();
    while started.elapsed() < URGENT_SCAN_FOR {
        if register_flows(&shared, &name, pid) > 0 {
            return;
        }
        tokio::time::sleep(URGENT_SCAN).await;
    }
}

fn unregister_flows(shared: &Arc<Shared>, name: &str) {
    let flows = match shared.state().vms.get_mut(name) {
        Some(v) => std::mem::take(&mut v.flows),
        None => return,
    };
    let mut dp = shared.datapath();
    for c in flows {
        if let Err(e) = dp.remove_migration_flow(
            (c.local.ip(), c.local.port()),
            (c.remote.ip(), c.remote.port()),
            6,
        ) {
            warn!(error = %crate::api::errors::chain(&e), "removing a migration flow");
        }
    }
}
