//! The host agent daemon (`vmbw agent`): the parts run together.
//!
//! Start-up: load (or adopt) the pinned datapath and attach it to the
//! uplinks, install (or adopt) the HTB tree, register the configured VMs'
//! addresses and taps, serve the status API and `/metrics`, start one task
//! per VM ([`vm`]) and run the control loop ([`tick`]), which puts its
//! decisions in the kernel through [`enforce`]. SIGHUP reloads the policy
//! and its knobs; SIGTERM/SIGINT stop the tasks and put the host back as it
//! was (original root qdisc, datapath removed) unless `keep_on_exit` /
//! `--keep-datapath`, which leaves both running for the next agent to
//! adopt. If the agent is killed, pinned programs and the HTB
//! tree stay: traffic keeps flowing, classified and shaped at the last
//! rates.

pub mod caps;
#[cfg(feature = "libvirt")]
pub mod discover;
pub mod enforce;
pub mod http;
pub mod lock;
pub mod procnet;
pub mod state;
pub mod tick;
pub mod vm;

use crate::api::units;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use self::{
    http::Server,
    state::{Shared, State, VmState},
    tick::ControlLoop,
};
use crate::{
    config::{self, Config, ConfigError, VmEntry},
    control::policy::Controller,
    datapath::{Datapath, DatapathError, Mode, PinDir},
    metrics::{Metrics, MetricsError},
    qemu::MonitorConfig,
    shaping::{
        ClassSpec, DesiredTree, Enforcement, Rate, Shaper, ShaperOptions, ShapingError, TcClient,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration")]
    Config(#[from] ConfigError),
    #[error("datapath")]
    Datapath(#[from] DatapathError),
    #[error("traffic control on {iface}")]
    Shaping {
        iface: String,
        #[source]
        source: ShapingError,
    },
    #[error("metrics")]
    Metrics(#[from] MetricsError),
    #[error("status API")]
    Http(#[from] http::HttpError),
    #[error("VM {vm}: {problem}")]
    Vm { vm: String, problem: String },
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Capabilities(#[from] caps::MissingCaps),
}

/// How `vmbw agent` was started.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Config,
    /// The file to re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Leave the datapath and the HTB tree in place on exit.
    pub keep_datapath: bool,
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let cfg = opts.config.clone();
    let mode = cfg.agent.mode;
    let uplinks: Vec<String> = cfg.uplink.iter().map(|u| u.iface.clone()).collect();
    let link = units::from_mbit(cfg.uplink[0].link_mbit);
    let keep = opts.keep_datapath || cfg.datapath.keep_on_exit;

    if let Some(checked) = caps::check_self() {
        checked?;
    }
    let _lock = lock::acquire(&cfg.shaping.state_dir)?;
    let mut dp = start_datapath(&cfg, &uplinks)?;
    let vms = known_vms(&cfg, &mut dp)?;
    let shaper = start_shaper(&cfg, &uplinks[0], link).await?;
    let shared = Arc::new(Shared {
        state: Mutex::new(initial_state(&cfg, &uplinks, link, vms)),
        datapath: Arc::new(Mutex::new(dp)),
        metrics: Metrics::new()?,
        wake: tokio::sync::Notify::new(),
        discovery_synced: Arc::new(std::sync::atomic::AtomicBool::new(!cfg.discovery.kubevirt)),
        kubevirt: std::sync::OnceLock::new(),
    });

    let (stop, stopped) = watch::channel(false);
    let server = Server::bind(&cfg.api.listen).await?;
    info!(listen = %cfg.api.listen, "status API and /metrics");
    let handler_shared = shared.clone();
    let api = tokio::spawn(server.run(
        Arc::new(move |p: &str| state::handle(&handler_shared, p)),
        stopped.clone(),
    ));
    let mut tasks = spawn_vm_tasks(&shared, &uplinks[0], &stopped);
    // Slots: [[vm]] entries and QMP-glob sockets first, KubeVirt's from
    // `kubevirt_first` on; libvirt's domains take those in between.
    let kubevirt_first = cfg.vm.len() as u32 + 1000;
    let first = shared.state().vms.len() as u32 + 1;
    tasks.extend(spawn_libvirt_discovery(
        &cfg,
        &shared,
        &uplinks[0],
        first..=kubevirt_first - 1,
        &stopped,
    ));
    let kubevirt = cfg.discovery.kubevirt.then(|| {
        spawn_kubevirt(
            &shared,
            cfg.discovery.node(),
            kubevirt_first,
            pinned_slots(&shared),
        )
    });

    let enforcement = match mode {
        config::Mode::Edt => Enforcement::Edt,
        _ => Enforcement::Htb,
    };
    let mut control = ControlLoop::new(
        shared.clone(),
        Controller::new(cfg.policy()),
        cfg.agent.policy.to_string(),
        shaper,
        enforcement,
        link,
    );
    control.encap_bytes = cfg.uplink[0].encapsulation.overhead_bytes();
    serve(&opts, &cfg, &mut control, &shared).await?;

    // Shutdown: stop the tasks, then put the host back (or leave it running).
    let _ = stop.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    if let Some(k) = kubevirt {
        k.abort();
        let _ = k.await;
    }
    let shaper = control.shaper.take();
    drop(control);
    restore(shaper, shared, keep).await
}

/// The state before the first tick: the configured VMs, no usage yet.
fn initial_state(
    cfg: &Config,
    uplinks: &[String],
    link: f64,
    vms: BTreeMap<String, VmState>,
) -> State {
    State {
        started: Instant::now(),
        ready: true,
        node: cfg.discovery.node(),
        mode: cfg.agent.mode.to_string(),
        policy: cfg.agent.policy.to_string(),
        uplinks: uplinks.to_vec(),
        link,
        link_usage: 0.0,
        discovery: discovery_names(cfg),
        vms,
        escalating: cfg.policy().escalate.is_some(),
        tick_period: Duration::from_millis(cfg.agent.tick_ms),
        last_tick: None,
    }
}

/// Loads (or adopts) the pinned datapath, attaches it to every uplink and
/// sets its mode.
fn start_datapath(cfg: &Config, uplinks: &[String]) -> Result<Datapath, DaemonError> {
    let mut dp = Datapath::load(&PinDir::Persistent(cfg.datapath.pin_dir.clone()))?;
    for iface in uplinks {
        dp.attach(iface)?;
        info!(iface, pin_dir = %cfg.datapath.pin_dir.display(), "datapath attached");
    }
    dp.set_mode(match cfg.agent.mode {
        config::Mode::Htb => Mode::Htb,
        config::Mode::Edt => Mode::Edt,
        config::Mode::Observe => Mode::Observe,
    })?;
    Ok(dp)
}

/// The VMs to follow: configured ones get slots 1.. in order (and their
/// addresses registered), then those whose QMP socket matches the glob.
fn known_vms(cfg: &Config, dp: &mut Datapath) -> Result<BTreeMap<String, VmState>, DaemonError> {
    let mut vms = BTreeMap::new();
    for (i, entry) in cfg.vm.iter().enumerate() {
        let slot = i as u32 + 1;
        register_vm(dp, slot, entry)?;
        vms.insert(entry.name.clone(), VmState::new(slot, entry.clone()));
    }
    for (i, (name, qmp)) in glob_sockets(&cfg.discovery.qmp_glob)
        .into_iter()
        .enumerate()
    {
        if vms.contains_key(&name) {
            continue;
        }
        let slot = (cfg.vm.len() + i) as u32 + 1;
        let entry = VmEntry::qmp(name.clone(), qmp);
        vms.insert(name, VmState::new(slot, entry));
    }
    Ok(vms)
}

/// vmbw's HTB tree on the first uplink (none in observe mode).
async fn start_shaper(
    cfg: &Config,
    uplink: &str,
    link: f64,
) -> Result<Option<Shaper>, DaemonError> {
    let mode = cfg.agent.mode;
    if mode == config::Mode::Observe {
        return Ok(None);
    }
    let shaping = |source| DaemonError::Shaping {
        iface: uplink.to_owned(),
        source,
    };
    let tc = TcClient::connect().map_err(shaping)?;
    let mut tree = DesiredTree::new(
        Rate::bits_per_sec((link * 8.0) as u64),
        ClassSpec::borrowing(
            Rate::bits_per_sec((link * 8.0 / 100.0) as u64),
            Rate::bits_per_sec((link * 8.0) as u64),
        ),
    );
    if mode == config::Mode::Edt {
        tree.enforcement = Enforcement::Edt;
    }
    let sopts = ShaperOptions {
        state_dir: Some(cfg.shaping.state_dir.clone()),
    };
    let (shaper, report) = Shaper::start(tc, uplink, &tree, &sopts)
        .await
        .map_err(shaping)?;
    info!(iface = %uplink, original = %shaper.original_root().describe(), enforcement = ?report.enforcement, "HTB tree in place");
    Ok(Some(shaper))
}

/// One task per VM that follows its migrations (QMP or libvirt).
fn spawn_vm_tasks(
    shared: &Arc<Shared>,
    uplink: &str,
    stopped: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let entries: Vec<VmEntry> = shared
        .state()
        .vms
        .values()
        .map(|v| v.entry.clone())
        .collect();
    entries
        .iter()
        .filter_map(|entry| spawn_follow(shared, entry, uplink, stopped.clone()))
        .collect()
}

/// The task that follows `entry`'s migrations until `stopped`; None (and a
/// warning) for an entry with neither `qmp` nor `libvirt`.
fn spawn_follow(
    shared: &Arc<Shared>,
    entry: &VmEntry,
    uplink: &str,
    stopped: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(telemetry) = entry.telemetry() else {
        // Config validation makes this unreachable for [[vm]] entries.
        warn!(vm = %entry.name, "neither `qmp` nor `libvirt`: not followed");
        return None;
    };
    let cfg = MonitorConfig {
        uplink: Some(uplink.to_owned()),
        vm_ifaces: entry.taps.clone(),
        sample_bulk_pass: true,
        sample_later_passes: true,
        ..MonitorConfig::default()
    };
    Some(tokio::spawn(vm::follow(
        shared.clone(),
        entry.name.clone(),
        telemetry,
        cfg,
        stopped,
    )))
}

/// The control loop on its ticks and on the VM tasks' news, until SIGTERM
/// or SIGINT; SIGHUP reloads.
async fn serve(
    opts: &Options,
    cfg: &Config,
    control: &mut ControlLoop,
    shared: &Arc<Shared>,
) -> Result<(), DaemonError> {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.agent.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    info!(policy = %cfg.agent.policy, mode = %cfg.agent.mode, "agent running");
    loop {
        tokio::select! {
            _ = tick.tick() => control.tick().await,
            _ = shared.wake.notified() => control.tick().await,
            _ = term.recv() => { info!("SIGTERM: stopping"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT: stopping"); return Ok(()); }
            _ = hup.recv() => reload(&opts.config_path, control, &mut tick, shared),
        }
    }
}

/// Puts the host back: the original root qdisc and a detached, unpinned
/// datapath, unless `keep` leaves both for the next agent.
async fn restore(
    shaper: Option<Shaper>,
    shared: Arc<Shared>,
    keep: bool,
) -> Result<(), DaemonError> {
    if let Some(shaper) = shaper {
        if keep {
            shaper.detach();
            info!("HTB tree left in place (keep_on_exit)");
        } else if let Err(e) = shaper.cleanup().await {
            error!(error = %crate::api::errors::chain(&e), "restoring the original root qdisc");
        } else {
            info!("original root qdisc restored");
        }
    }
    let datapath = Arc::try_unwrap(shared)
        .ok()
        .and_then(|shared| Arc::try_unwrap(shared.datapath).ok())
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()));
    match datapath {
        Some(_) if keep => info!("datapath left attached (pinned) for the next agent"),
        Some(dp) => {
            dp.remove()?;
            info!("datapath detached and unpinned");
        }
        // A task that did not stop in time still holds it: fail safe by
        // leaving it running (it is pinned; the next agent adopts it).
        None => warn!("datapath still in use at exit; left pinned"),
    }
    Ok(())
}

/// SIGHUP: re-read the config; a valid one replaces the policy, its knobs
/// and the tick. Other changes (uplinks, VMs, API address) need a restart.
fn reload(
    path: &Option<PathBuf>,
    control: &mut ControlLoop,
    tick: &mut tokio::time::Interval,
    shared: &Arc<Shared>,
) {
    let Some(path) = path else {
        warn!("SIGHUP: started without --config, nothing to reload");
        return;
    };
    match Config::load(path) {
        Ok(cfg) => {
            control.controller = Controller::new(cfg.policy());
            control.policy_name = cfg.agent.policy.to_string();
            *tick = tokio::time::interval(Duration::from_millis(cfg.agent.tick_ms));
            shared.state().tick_period = Duration::from_millis(cfg.agent.tick_ms);
            shared.state().escalating = cfg.policy().escalate.is_some();
            shared.state().policy = cfg.agent.policy.to_string();
            info!(policy = %cfg.agent.policy, tick_ms = cfg.agent.tick_ms, "SIGHUP: configuration reloaded");
        }
        Err(e) => {
            error!(error = %crate::api::errors::chain(&e), "SIGHUP: configuration rejected, keeping the running one");
            shared.metrics.error("config");
        }
    }
}

/// Registers a VM's addresses and taps in slot `slot`; returns the
/// ifindexes of the taps it found (a discovered VM's are unregistered by
/// them when it leaves).
fn register_vm(dp: &mut Datapath, slot: u32, entry: &VmEntry) -> Result<Vec<u32>, DaemonError> {
    let bad = |problem: String| DaemonError::Vm {
        vm: entry.name.clone(),
        problem,
    };
    for ip in &entry.ips {
        dp.add_vm_ip(slot, *ip)?;
    }
    for mac in &entry.macs {
        dp.add_vm_mac(slot, mac.octets())?;
    }
    let mut taps = Vec::new();
    for tap in &entry.taps {
        let c = std::ffi::CString::new(tap.as_str()).map_err(|_| bad(format!("tap `{tap}`")))?;
        // SAFETY: a valid C string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if idx == 0 {
            warn!(vm = %entry.name, tap, "tap not found (yet); its traffic is attributed by address only");
        } else {
            dp.add_vm_tap(slot, idx)?;
            taps.push(idx);
        }
    }
    Ok(taps)
}

/// QMP sockets matching `dir/prefix*suffix` (one `*` in the file name), as
/// (file stem, path), sorted.
pub fn glob_sockets(pattern: &str) -> Vec<(String, PathBuf)> {
    if pattern.is_empty() {
        return Vec::new();
    }
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let stem = Path::new(&file).file_stem()?.to_string_lossy().into_owned();
            Some((stem, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn discovery_names(cfg: &Config) -> Vec<String> {
    let mut d = vec!["config".to_owned()];
    if !cfg.discovery.qmp_glob.is_empty() {
        d.push(format!("qmp-glob:{}", cfg.discovery.qmp_glob));
    }
    if !cfg.discovery.libvirt.is_empty() {
        d.push(format!("libvirt:{}", cfg.discovery.libvirt));
    }
    if cfg.discovery.kubevirt {
        d.push("kubevirt".into());
    }
    d
}

/// `[discovery] libvirt`: a task that follows the daemon's domains.
fn spawn_libvirt_discovery(
    cfg: &Config,
    shared: &Arc<Shared>,
    uplink: &str,
    slots: std::ops::RangeInclusive<u32>,
    stopped: &watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.discovery.libvirt.is_empty() {
        return None;
    }
    #[cfg(feature = "libvirt")]
    return Some(discover::spawn_libvirt(
        shared.clone(),
        cfg.discovery.libvirt.clone(),
        uplink.to_owned(),
        slots,
        stopped.clone(),
    ));
    #[cfg(not(feature = "libvirt"))]
    {
        // Config validation refuses it; never reached.
        let _ = (shared, uplink, slots, stopped);
        None
    }
}

/// The slots of the VMs the agent follows from its start (`[[vm]]`
/// entries), by name: a VMI of that `namespace/name` is registered there.
fn pinned_slots(shared: &Shared) -> BTreeMap<String, u32> {
    shared
        .state()
        .vms
        .iter()
        .map(|(name, vm)| (name.clone(), vm.slot))
        .collect()
}

fn spawn_kubevirt(
    shared: &Arc<Shared>,
    node: String,
    first_slot: u32,
    pinned: BTreeMap<String, u32>,
) -> tokio::task::JoinHandle<()> {
    let dp = shared.datapath.clone();
    let synced = shared.discovery_synced.clone();
    let mut discovery = crate::kubevirt::watch::Discovery::new(
        node,
        first_slot..=crate::shaping::handles::MAX_VM_SLOT as u32,
    )
    .with_pinned(pinned);
    // The routes of the agent's (the host's) network namespace.
    match crate::kubevirt::HostRoutes::open() {
        Ok(routes) => discovery = discovery.with_interfaces(Box::new(routes)),
        Err(e) => {
            warn!(error = %crate::api::errors::chain(&e), "no rtnetlink socket: launcher pods' host interfaces are not registered (their IPs are)")
        }
    }
    let discovery = Arc::new(Mutex::new(discovery));
    let _ = shared.kubevirt.set(discovery.clone());
    tokio::spawn(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                error!(error = %crate::api::errors::chain(&e), "KubeVirt discovery: no Kubernetes client (in-cluster config or kubeconfig)");
                return;
            }
        };
        if let Err(e) = crate::kubevirt::watch::run(client, discovery, dp, synced).await {
            error!(error = %crate::api::errors::chain(&e), "KubeVirt discovery stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_sockets_by_stem() {
        let dir = std::env::temp_dir().join(format!("vmbw-glob-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for f in ["a.qmp", "b.qmp", "c.txt"] {
            std::fs::write(dir.join(f), "").expect("file");
        }
        let found = glob_sockets(&format!("{}/*.qmp", dir.display()));
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(glob_sockets("").is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
