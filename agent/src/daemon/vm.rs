//! One task per VM: holds the VM's QMP connection, waits for a migration,
//! follows its iterations (one sample each), learns its TCP streams from
//! QEMU's sockets and registers them as migration flows, and applies the
//! controller's QEMU parameters at each iteration boundary. Reconnects when
//! QEMU is not there (yet, or any more).

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::{procnet, state::Shared};
use crate::{
    api::MigrationPhase,
    control::QemuParams,
    qemu::{Capability, MigrationMonitor, MonitorConfig, Qmp, QmpOptions, types::MigrationStatus},
};

/// How long a VM task waits for the controller's decision after news.
const DECISION_WAIT: Duration = Duration::from_millis(1500);
/// Between reconnect attempts.
const RETRY: Duration = Duration::from_secs(2);

/// Follows `name` through its QMP socket until `shutdown`.
pub async fn follow(
    shared: Arc<Shared>,
    name: String,
    qmp_path: PathBuf,
    cfg: MonitorConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let span = info_span!("vm", vm = %name);
    async move {
        let mut last_error = String::new();
        while !*shutdown.borrow() {
            match follow_once(&shared, &name, &qmp_path, &cfg, &mut shutdown).await {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    // Say each distinct problem once, not every retry.
                    if e != last_error {
                        warn!(qmp = %qmp_path.display(), error = %e, "QEMU not reachable or migration follow failed; retrying");
                        shared.metrics.errors.with_label_values(&["qemu"]).inc();
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
    .instrument(span)
    .await
}

/// One connection: wait for a migration, follow it to its end.
async fn follow_once(
    shared: &Arc<Shared>,
    name: &str,
    qmp_path: &PathBuf,
    cfg: &MonitorConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let qmp = Qmp::connect(qmp_path, QmpOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut monitor = MigrationMonitor::new(qmp, cfg.clone())
        .await
        .map_err(|e| e.to_string())?;
    monitor.enable_events().await.map_err(|e| e.to_string())?;
    debug!("connected; waiting for a migration");
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            r = monitor.wait_for_start(Duration::from_secs(5)) => match r {
                Ok(()) => break,
                Err(crate::qemu::monitor::MonitorError::NotStarted(_)) => continue,
                Err(e) => return Err(e.to_string()),
            },
        }
    }
    let pid = monitor.qemu_pid();
    info!(pid, "migration started");
    {
        let mut st = shared.state();
        if let Some(v) = st.vms.get_mut(name) {
            v.begin_migration();
        }
    }
    let mut applied = QemuParams::default();
    // QEMU opens its migration stream(s) just after the start and may open
    // more (multifd): watch its sockets while the migration runs.
    let flow_watch = FlowWatch(tokio::spawn(watch_flows(
        shared.clone(),
        name.to_owned(),
        pid,
    )));
    await_decision_and_apply(shared, name, &mut monitor, &mut applied).await;
    loop {
        let sample = tokio::select! {
            _ = shutdown.changed() => {
                drop(flow_watch);
                unregister_flows(shared, name);
                return Ok(());
            }
            s = monitor.next_sample() => s.map_err(|e| e.to_string())?,
        };
        match sample {
            Some(s) => {
                info!(
                    iteration = s.iteration,
                    dirty_pages = s.dirty_pages,
                    iter_s = s.iter_s,
                    remaining = s.remaining_bytes,
                    "iteration finished"
                );
                {
                    let mut st = shared.state();
                    if let Some(v) = st.vms.get_mut(name) {
                        let finished = s.iteration as u32;
                        let predicted = v.predicted.get(&finished).copied();
                        shared
                            .metrics
                            .dirty_pages
                            .with_label_values(&[name, "actual"])
                            .set(s.dirty_pages);
                        if let Some(p) = predicted {
                            shared
                                .metrics
                                .dirty_pages
                                .with_label_values(&[name, "predicted"])
                                .set(p);
                        }
                        v.sample_at = Some(std::time::Instant::now());
                        v.rows.push(s.to_iteration());
                        v.iter_s.push(s.iter_s);
                        v.dirty_rates.push(if s.iter_s > 0.0 {
                            s.dirty_pages * s.page_size as f64 / s.iter_s
                        } else {
                            0.0
                        });
                        v.iteration = finished + 1;
                        v.remaining = s.remaining_bytes;
                        v.page_size = s.page_size as f64;
                        shared
                            .metrics
                            .remaining
                            .with_label_values(&[name])
                            .set(s.remaining_bytes as f64);
                        shared
                            .metrics
                            .iteration
                            .with_label_values(&[name])
                            .set(f64::from(finished + 1));
                        if let Some(ms) = s.expected_downtime_ms {
                            shared
                                .metrics
                                .expected_downtime
                                .with_label_values(&[name])
                                .set(ms as f64 / 1000.0);
                        }
                        if s.status == MigrationStatus::PostcopyActive {
                            v.phase = MigrationPhase::PostCopy;
                        }
                    }
                }
                await_decision_and_apply(shared, name, &mut monitor, &mut applied).await;
            }
            None => {
                let status = monitor.outcome().map(|o| o.status.clone());
                info!(status = ?status, "migration ended");
                drop(flow_watch);
                unregister_flows(shared, name);
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
async fn await_decision_and_apply(
    shared: &Arc<Shared>,
    name: &str,
    monitor: &mut MigrationMonitor,
    applied: &mut QemuParams,
) {
    let before = shared.state().vms.get(name).map_or(0, |v| v.decided);
    shared.wake.notify_one();
    let deadline = tokio::time::Instant::now() + DECISION_WAIT;
    let params = loop {
        let (decided, params) = shared
            .state()
            .vms
            .get(name)
            .map_or((before, QemuParams::default()), |v| {
                (v.decided, v.qemu_params())
            });
        if decided > before || tokio::time::Instant::now() >= deadline {
            break params;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Err(e) = apply(monitor, &params, applied).await {
        warn!(error = %e, "applying QEMU parameters");
        shared
            .metrics
            .errors
            .with_label_values(&["qemu-control"])
            .inc();
    }
}

async fn apply(
    monitor: &mut MigrationMonitor,
    want: &QemuParams,
    applied: &mut QemuParams,
) -> Result<(), crate::qemu::QmpError> {
    let qmp = monitor.qmp();
    if let Some(bw) = want.max_bandwidth
        && applied
            .max_bandwidth
            .is_none_or(|old| (old - bw).abs() > 0.01 * old.max(1.0))
    {
        qmp.set_max_bandwidth(bw.round().max(1.0) as u64).await?;
        applied.max_bandwidth = Some(bw);
        info!(
            max_bandwidth_mbit = bw * 8.0 / 1e6,
            "QEMU max-bandwidth set"
        );
    }
    if let Some(dt) = want.downtime_limit_s
        && applied.downtime_limit_s != Some(dt)
    {
        qmp.set_downtime_limit((dt * 1000.0).round() as u64).await?;
        applied.downtime_limit_s = Some(dt);
        info!(downtime_limit_ms = dt * 1000.0, "QEMU downtime-limit set");
    }
    if let Some(ac) = want.auto_converge
        && applied.auto_converge != Some(ac)
    {
        qmp.set_capabilities(&[(Capability::AutoConverge, ac)])
            .await?;
        applied.auto_converge = Some(ac);
        info!(auto_converge = ac, "QEMU auto-converge set");
    }
    if want.start_postcopy && !applied.start_postcopy {
        qmp.migrate_start_postcopy().await?;
        applied.start_postcopy = true;
        info!("switched to post-copy");
    }
    Ok(())
}

/// The flow-watching task of one migration, stopped when dropped.
struct FlowWatch(tokio::task::JoinHandle<()>);

impl Drop for FlowWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Registers QEMU's TCP streams while the migration runs: every 100 ms for
/// the first 5 s until the stream is found (it opens just after the start; what it sends
/// before it is registered counts as "other": 100 ms is 0.6 MB at 50 Mbit/s,
/// a scan of QEMU's sockets ~0.1 ms), then every 500 ms for streams opened
/// later.
async fn watch_flows(shared: Arc<Shared>, name: String, pid: u32) {
    for round in 0u32.. {
        register_flows(&shared, &name, pid);
        let found = shared
            .state()
            .vms
            .get(&name)
            .is_some_and(|v| !v.flows.is_empty());
        let pause = if round < 50 && !found { 100 } else { 500 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Registers QEMU's current TCP streams as the VM's exact migration flows.
fn register_flows(shared: &Arc<Shared>, name: &str, pid: u32) {
    let conns = procnet::established(pid);
    let (slot, known) = {
        let st = shared.state();
        match st.vms.get(name) {
            Some(v) => (v.slot, v.flows.clone()),
            None => return,
        }
    };
    let new: Vec<_> = conns
        .iter()
        .filter(|c| !known.contains(c))
        .copied()
        .collect();
    if new.is_empty() {
        return;
    }
    {
        let mut dp = shared.datapath();
        for c in &new {
            match dp.add_migration_flow(
                slot,
                (c.local.ip(), c.local.port()),
                (c.remote.ip(), c.remote.port()),
                6,
            ) {
                Ok(()) => info!(local = %c.local, remote = %c.remote, "migration flow registered"),
                Err(e) => warn!(error = %e, "registering a migration flow"),
            }
        }
    }
    if let Some(v) = shared.state().vms.get_mut(name) {
        v.flows.extend(new);
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
            warn!(error = %e, "removing a migration flow");
        }
    }
}
