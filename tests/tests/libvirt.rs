//! The libvirt backend against real libvirt: two private session libvirtd
//! daemons (tests/src/libvirtd.rs) and real live migrations between them
//! over loopback, started slow (1 MiB/s).
//!
//! 1. `LibvirtDomain` directly (a TCG guest of Debian's cloud kernel, no
//!    root fs: it panics and idles, its memory stays): vmbw reads the job
//!    statistics and raises the speed; the measured transfer rate follows.
//! 2. The real `vmbw agent` binary with a `[[vm]] libvirt = {..}` entry,
//!    following a migration of the test guest dirtying memory: its status
//!    API shows one sample per finished iteration, and the cap it set is
//!    what libvirt reports (virDomainMigrateGetMaxSpeed), not the 1 MiB/s
//!    the migration started with.
//! 3. The agent with `[discovery] libvirt` and no `[[vm]]`: it follows a
//!    domain started after it (libvirt's lifecycle event), through its
//!    migration, and lets it go (state and metric series) once libvirt
//!    removed it.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use vmbw::{
    api::{MigrationPhase, VmStatus},
    libvirt::{JobOperation, LibvirtDomain, RunState},
};
use vmbw_tests::{
    BpffsMount, NetNs,
    agent::{self, Agent},
    guest::{self, Guest, READY_MARKER, Workload},
    libvirtd,
    libvirtd::Libvirtd,
    require, skip,
    vm::RunDir,
};

const MIB: u64 = 1 << 20;
const NAME: &str = "vmbw-libvirt-test";
const AGENT_NAME: &str = "vmbw-libvirt-agent";
const DISCOVERED_NAME: &str = "vmbw-libvirt-discovered";

/// The tests each run two daemons and a TCG guest: one at a time on these
/// 2-core machines.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn guest_kernel() -> Result<PathBuf, String> {
    let cache = std::env::var_os("VMBW_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("vmbw")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vmbw")))
        .ok_or("no cache directory (HOME unset)")?;
    let k = cache.join("guest/vmlinuz");
    if k.exists() {
        Ok(k)
    } else {
        Err(format!(
            "{} missing (cargo xtask setup fetches it)",
            k.display()
        ))
    }
}

fn domain_xml(kernel: &std::path::Path, serial: &std::path::Path) -> String {
    named_domain_xml(NAME, kernel, serial)
}

/// [`domain_xml`] under another name.
fn named_domain_xml(name: &str, kernel: &std::path::Path, serial: &std::path::Path) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{}</kernel>
    <cmdline>console=ttyS0 panic=0</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>",
        kernel.display(),
        serial.display()
    )
}

/// Polls until `f` gives `Some` (or 30 s pass).
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live-migrates `name` from `src` to `dst` at 1 MiB/s (virDomainMigrate's
/// bandwidth, MiB/s) on a thread of its own, as virDomainMigrate blocks.
/// The migration stream's port is `port_base` plus a per-process offset.
fn migrate_in_background(
    src: &Libvirtd,
    dst: &Libvirtd,
    name: &'static str,
    port_base: u16,
) -> std::thread::JoinHandle<Result<(), String>> {
    let (src_uri, dst_uri) = (src.uri(), dst.uri());
    std::thread::spawn(move || -> Result<(), String> {
        let sconn = virt::connect::Connect::open(Some(&src_uri)).map_err(|e| e.to_string())?;
        let mut dconn = virt::connect::Connect::open(Some(&dst_uri)).map_err(|e| e.to_string())?;
        let d = virt::domain::Domain::lookup_by_name(&sconn, name).map_err(|e| e.to_string())?;
        let port = port_base + (std::process::id() % 1000) as u16;
        let r = d
            .migrate(
                &dconn,
                virt::sys::VIR_MIGRATE_LIVE,
                None,
                Some(&format!("tcp://127.0.0.1:{port}")),
                1,
            )
            .map(drop)
            .map_err(|e| e.to_string());
        drop(d);
        let mut sconn = sconn;
        let _ = sconn.close();
        let _ = dconn.close();
        r
    })
}

#[test]
fn job_statistics_and_speed_control_during_a_real_migration() {
    require!(libvirtd::available());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let kernel = match guest_kernel() {
        Ok(k) => k,
        Err(reason) => {
            skip(&reason);
            return;
        }
    };
    let src = Libvirtd::start().expect("source libvirtd");
    let dst = Libvirtd::start().expect("target libvirtd");
    let kernel = libvirtd::give(&src, &kernel).expect("kernel");
    let xml = domain_xml(&kernel, &src.dir().join("serial.log"));

    let conn = virt::connect::Connect::open(Some(&src.uri())).expect("connect source");
    let dom = virt::domain::Domain::create_xml(&conn, &xml, 0).expect("start the guest");

    // Before a migration there is no job, and vmbw sees none.
    let backend = LibvirtDomain::connect(&src.uri(), NAME).expect("vmbw connects");
    assert_eq!(backend.job().expect("job stats"), None);
    assert!(LibvirtDomain::connect(&src.uri(), "no-such-domain").is_err());

    // Migrate in the background, at 1 MiB/s.
    let migration = migrate_in_background(&src, &dst, NAME, 49152);

    // The job appears; sample it twice, a few seconds apart.
    let first = wait("the migration job", || {
        backend
            .job()
            .ok()
            .flatten()
            .filter(|j| j.processed_bytes > 0 && j.iteration >= 1)
    });
    let t0 = Instant::now();
    assert_eq!(first.operation, Some(JobOperation::OutgoingMigration));
    assert_eq!(first.page_size, 4096);
    assert!(
        first.total_bytes >= 128 * MIB,
        "total {} covers the guest's RAM",
        first.total_bytes
    );
    assert_eq!(
        backend.max_bandwidth().expect("speed"),
        MIB,
        "started at 1 MiB/s"
    );
    std::thread::sleep(Duration::from_secs(3));
    let slow = backend.job().expect("stats").expect("still migrating");
    let slow_rate =
        (slow.processed_bytes - first.processed_bytes) as f64 / t0.elapsed().as_secs_f64();
    assert!(slow.remaining_bytes < first.remaining_bytes);
    assert!(slow.elapsed_ms > first.elapsed_ms);
    assert!(
        slow_rate < 1.6 * MIB as f64,
        "capped at 1 MiB/s, measured {slow_rate:.0} B/s"
    );
    eprintln!(
        "libvirt job at 1 MiB/s: iteration {}, processed {} B, remaining {} B, \
         memory_bps {} B/s, dirty {} pages/s; measured {slow_rate:.0} B/s",
        slow.iteration,
        slow.processed_bytes,
        slow.remaining_bytes,
        slow.bytes_per_sec,
        slow.dirty_pages_per_sec
    );

    // vmbw raises the cap (virDomainMigrateSetMaxSpeed): rounded up to
    // whole MiB/s, read back, and the transfer speeds up.
    let set = backend
        .set_max_bandwidth(8 * MIB - 1000)
        .expect("set speed");
    assert_eq!(set, 8 * MIB);
    assert_eq!(backend.max_bandwidth().expect("speed"), 8 * MIB);
    // Post-copy's cap (VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY) is its own,
    // and settable while pre-copy runs.
    let set = backend
        .set_max_postcopy_bandwidth(3 * MIB - 1)
        .expect("set post-copy speed");
    assert_eq!(set, 3 * MIB);
    assert_eq!(
        backend.max_postcopy_bandwidth().expect("post-copy speed"),
        3 * MIB
    );
    assert_eq!(backend.max_bandwidth().expect("speed"), 8 * MIB);
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    match backend.job().expect("stats") {
        Some(fast) => {
            let fast_rate =
                (fast.processed_bytes - slow.processed_bytes) as f64 / t1.elapsed().as_secs_f64();
            eprintln!("after raising to 8 MiB/s: measured {fast_rate:.0} B/s");
            assert!(
                fast_rate > 3.0 * slow_rate,
                "faster after the change: {fast_rate:.0} vs {slow_rate:.0} B/s"
            );
        }
        None => {
            // Done already: the rest went much faster than 1 MiB/s would.
            eprintln!("migration finished within 1.5 s of raising the cap");
        }
    }

    migration
        .join()
        .expect("migration thread")
        .expect("the migration succeeded");
    // The guest now runs on the target; the source has no such domain.
    let on_target = LibvirtDomain::connect(&dst.uri(), NAME).expect("domain on target");
    assert_eq!(on_target.job().expect("stats"), None);
    drop(on_target);
    drop(backend);
    drop(dom);
    let mut conn = conn;
    let _ = conn.close();
    eprintln!(
        "source libvirtd pid {}, target pid {}",
        src.pid(),
        dst.pid()
    );
}

/// A libvirt domain of the test guest (kernel + initramfs with
/// `vmbw-workload`), a virtio balloon reporting guest memory statistics
/// every second, the serial console in a file.
fn workload_domain_xml(guest: &Guest, workload: &Workload, serial: &std::path::Path) -> String {
    format!(
        "<domain type='qemu'>
  <name>{AGENT_NAME}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{}</kernel>
    <initrd>{}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 pti=on {}</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{}'/></serial>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>",
        guest.kernel.display(),
        guest.initrd.display(),
        workload.kernel_params(),
        serial.display()
    )
}

/// The agent's side of a test: a namespace with a veth pair as its uplink
/// `up0` (this kernel has no dummy devices), a private bpffs, and a run
/// directory with a config: nrac+adamig on an 80 Mbit/s uplink, then
/// `rest` (VMs, discovery). libvirt is reached through its unix socket
/// (the filesystem, not the network).
struct AgentHost {
    ns: NetNs,
    _bpffs: BpffsMount,
    run: RunDir,
    config: PathBuf,
    api: PathBuf,
}

impl AgentHost {
    fn new(rest: &str) -> AgentHost {
        let ns = NetNs::new().expect("netns");
        ns.veth_uplink("up0").expect("veth uplink");
        let bpffs = BpffsMount::new().expect("bpffs");
        let run = RunDir::new().expect("run dir");
        let config = run.path().join("vmbw.toml");
        let api = run.path().join("api.sock");
        std::fs::write(
            &config,
            format!(
                "[agent]\npolicy = \"nrac+adamig\"\n\
                 [[uplink]]\niface = \"up0\"\nlink_mbit = 80.0\n\
                 [datapath]\npin_dir = \"{}\"\n\
                 [shaping]\nstate_dir = \"{}\"\n\
                 [api]\nlisten = \"unix:{}\"\n{rest}",
                bpffs.path().join("vmbw").display(),
                run.path().join("state").display(),
                api.display(),
            ),
        )
        .expect("config");
        AgentHost {
            ns,
            _bpffs: bpffs,
            run,
            config,
            api,
        }
    }

    fn start(&self) -> Agent {
        Agent::start(
            &self.ns,
            &self.config,
            &self.api,
            &self.run.path().join("agent.log"),
        )
        .expect("agent starts")
    }
}

fn agent_vm(a: &Agent) -> Option<VmStatus> {
    agent_vm_named(a, AGENT_NAME)
}

fn agent_vm_named(a: &Agent, name: &str) -> Option<VmStatus> {
    agent_vms(a)?.into_iter().find(|v| v.name == name)
}

fn agent_vms(a: &Agent) -> Option<Vec<VmStatus>> {
    let (status, body) = a.get("/api/v1/vms").ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

#[test]
fn the_agent_follows_and_caps_a_libvirt_migration() {
    require!(libvirtd::available());
    require!(guest::available());
    require!(agent::binary());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let guest = Guest::build().expect("test guest");
    let src = Libvirtd::start().expect("source libvirtd");
    let dst = Libvirtd::start().expect("target libvirtd");
    let guest = Guest {
        kernel: libvirtd::give(&src, &guest.kernel).expect("kernel"),
        initrd: libvirtd::give(&src, &guest.initrd).expect("initrd"),
    };
    // 24 MiB written over and over at 4 MB/s: every pass after the bulk
    // pass has pages to resend, so the migration takes several iterations.
    let workload = Workload::new("mem-seq")
        .with("wss-mb", 24)
        .with("dirty-mbps", 4)
        .with("report-secs", 1);
    let serial = src.dir().join("agent-serial.log");
    let xml = workload_domain_xml(&guest, &workload, &serial);
    let conn = virt::connect::Connect::open(Some(&src.uri())).expect("connect source");
    let dom = virt::domain::Domain::create_xml(&conn, &xml, 0).expect("start the guest");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains(READY_MARKER)
    {
        assert!(
            Instant::now() < deadline,
            "the workload did not start: {}",
            std::fs::read_to_string(&serial).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let host = AgentHost::new(&format!(
        "[[vm]]\nname = \"{AGENT_NAME}\"\nlibvirt = {{ uri = \"{}\", domain = \"{AGENT_NAME}\" }}\n",
        src.uri()
    ));
    let mut agent = host.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent_vm(&agent).and_then(|v| v.telemetry).as_deref() != Some("libvirt") {
        assert!(
            Instant::now() < deadline,
            "the agent did not reach the domain through libvirt:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Migrate at 1 MiB/s.
    let migration = migrate_in_background(&src, &dst, AGENT_NAME, 50200);

    // Watch both sides while it runs: libvirt's own job statistics and
    // max speed, and the agent's status API.
    let observer = LibvirtDomain::connect(&src.uri(), AGENT_NAME).expect("observer");
    let deadline = Instant::now() + Duration::from_secs(400);
    let mut libvirt_iterations = std::collections::BTreeSet::new();
    let mut agent_views: Vec<(u32, u32)> = Vec::new(); // (samples, iteration)
    let mut verified: Vec<(f64, u64, f64)> = Vec::new(); // (agent cap, libvirt cap, decided)
    let mut last = None;
    while !migration.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the migration did not finish:\n{}",
            agent.log_text()
        );
        if let Ok(Some(job)) = observer.job()
            && observer.state().ok() == Some(RunState::Running)
        {
            libvirt_iterations.insert(job.iteration);
        }
        let before = agent_vm(&agent);
        let running = || observer.state().ok() == Some(RunState::Running);
        // libvirt lifts the cap itself once it pauses the domain for the
        // switch-over (seen here: 2^63 - 1 MiB, "unlimited"): compare only
        // while the guest runs.
        let speed = if running() {
            observer.max_bandwidth().ok().filter(|_| running())
        } else {
            None
        };
        let after = agent_vm(&agent);
        if let (Some(b), Some(speed), Some(a)) = (&before, speed, &after) {
            let (mb, ma) = (b.migration.as_ref(), a.migration.as_ref());
            if let (Some(mb), Some(ma)) = (mb, ma)
                && mb.phase == MigrationPhase::PreCopy
                && ma.phase == MigrationPhase::PreCopy
            {
                if agent_views.last() != Some(&(ma.samples, ma.iteration)) {
                    agent_views.push((ma.samples, ma.iteration));
                }
                // The agent's cap did not change around libvirt's answer.
                if let (Some(x), Some(y)) = (
                    mb.qemu_max_bandwidth_bytes_per_sec,
                    ma.qemu_max_bandwidth_bytes_per_sec,
                ) && x == y
                {
                    let decided = a
                        .allocation
                        .migration_ceil_bytes_per_sec
                        .map_or(0.0, |c| c * vmbw::control::QEMU_HEADROOM);
                    verified.push((x, speed, decided));
                }
            }
        }
        last = after.or(last);
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcome = migration.join().expect("migration thread");
    std::thread::sleep(Duration::from_millis(500));
    let end = agent_vm(&agent).or(last).expect("the agent lists the VM");
    eprintln!(
        "libvirt memory_iteration values seen: {libvirt_iterations:?}; agent (samples, iteration): {agent_views:?}"
    );
    eprintln!(
        "agent cap vs libvirt max speed (first, last of {}): {:?} {:?}",
        verified.len(),
        verified.first(),
        verified.last()
    );
    outcome.unwrap_or_else(|e| panic!("the migration failed: {e}\n{}", agent.log_text()));

    // One sample per finished iteration: after k samples the agent is in
    // iteration k+1 (the bulk pass is 1; more if boundaries fell within
    // one poll), and it got as far as libvirt was seen to get while the
    // guest ran.
    let m = end.migration.as_ref().expect("a migration");
    eprintln!(
        "agent at the end: phase {:?}, {} samples, iteration {}, refused {:?}",
        m.phase, m.samples, m.iteration, m.refused
    );
    assert_eq!(
        m.phase,
        MigrationPhase::Completed,
        "{:?}\n{}",
        end,
        agent.log_text()
    );
    assert!(
        m.samples >= 2,
        "at least two iterations followed: {m:?}\n{}",
        agent.log_text()
    );
    for (samples, iteration) in &agent_views {
        assert!(
            *iteration > *samples,
            "no more samples than iterations: {agent_views:?}"
        );
    }
    let max_running = libvirt_iterations.last().copied().unwrap_or(0);
    assert!(
        u64::from(m.iteration) >= max_running,
        "the agent ({m:?}) got as far as libvirt's iteration {max_running}"
    );

    // The cap: what the agent set is what libvirt reports, it follows the
    // decision (rounded up to whole MiB/s), and it is not the 1 MiB/s the
    // migration started with.
    assert!(
        !verified.is_empty(),
        "the agent never reported a cap during the migration:\n{}",
        agent.log_text()
    );
    for (agent_cap, libvirt_cap, decided) in &verified {
        assert_eq!(
            *agent_cap as u64, *libvirt_cap,
            "agent's cap vs virDomainMigrateGetMaxSpeed"
        );
        assert_ne!(*libvirt_cap, MIB, "the agent changed the 1 MiB/s start");
        assert!(
            *decided > 0.0 && (*agent_cap - decided).abs() <= 0.01 * decided + MIB as f64,
            "the cap follows the decision: set {agent_cap}, decided {decided}"
        );
    }
    let log = agent.log_text();
    assert!(log.contains("QEMU max-bandwidth set"), "{log}");
    // The samples carry what libvirt measures: the dirty rate (X1), the
    // guest's memory use from its balloon (X2), vCPU time (X3).
    let field = |line: &str, key: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
    };
    let iterations: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("iteration finished"))
        .collect();
    for l in &iterations {
        eprintln!(
            "agent: {}",
            l.split_once("iteration=").map_or(*l, |(_, r)| r)
        );
    }
    assert_eq!(iterations.len(), m.samples as usize, "{log}");
    let numbers: Vec<f64> = iterations
        .iter()
        .filter_map(|l| field(l, "iteration"))
        .collect();
    assert_eq!(
        numbers.first(),
        Some(&1.0),
        "from the bulk pass: {numbers:?}"
    );
    assert!(
        numbers.windows(2).all(|w| w[1] > w[0]),
        "one sample per iteration, in order: {numbers:?}"
    );
    // The vCPUs' CPU share comes from their threads' CPU time in clock
    // ticks (10 ms): a mostly idle guest (4-6% here) over a last iteration
    // of 0.3 s can show 0 (seen once), so it must be measured in every
    // sample and above 0 in at least one.
    assert!(
        iterations
            .iter()
            .all(|l| field(l, "cpu_pct").is_some_and(|v| v >= 0.0))
            && iterations
                .iter()
                .any(|l| field(l, "cpu_pct").is_some_and(|v| v > 0.0)),
        "cpu_pct measured in every sample, > 0 in one: {iterations:#?}"
    );
    for key in ["dirty_pages", "iter_s", "mem_pct"] {
        assert!(
            iterations
                .iter()
                .all(|l| field(l, key).is_some_and(|v| v > 0.0)),
            "{key} > 0 in every sample: {iterations:#?}"
        );
    }

    assert_eq!(
        agent
            .signal(libc::SIGTERM, Duration::from_secs(15))
            .expect("SIGTERM"),
        Some(0)
    );
    drop(observer);
    drop(dom);
    let mut conn = conn;
    let _ = conn.close();
}

#[test]
fn discovery_follows_a_domain_it_was_not_told_about() {
    require!(libvirtd::available());
    require!(agent::binary());
    let kernel = match guest_kernel() {
        Ok(k) => k,
        Err(reason) => {
            skip(&reason);
            return;
        }
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let src = Libvirtd::start().expect("source libvirtd");
    let dst = Libvirtd::start().expect("target libvirtd");
    let kernel = libvirtd::give(&src, &kernel).expect("kernel");

    // The agent knows the libvirt URI and nothing else.
    let host = AgentHost::new(&format!("[discovery]\nlibvirt = \"{}\"\n", src.uri()));
    let mut agent = host.start();
    wait("the agent's connection to libvirt", || {
        agent
            .log_text()
            .contains("libvirt discovery: connected")
            .then_some(())
    });
    assert_eq!(
        agent_vms(&agent).map(|v| v.len()),
        Some(0),
        "no VM before a domain runs"
    );

    // A domain started after the agent: the lifecycle event brings it.
    let serial = src.dir().join("discovered-serial.log");
    let conn = virt::connect::Connect::open(Some(&src.uri())).expect("connect source");
    let started = Instant::now();
    let dom = virt::domain::Domain::create_xml(
        &conn,
        &named_domain_xml(DISCOVERED_NAME, &kernel, &serial),
        0,
    )
    .expect("start the domain");
    let vm = wait("the agent to follow the new domain", || {
        agent_vm_named(&agent, DISCOVERED_NAME)
            .filter(|v| v.telemetry.as_deref() == Some("libvirt"))
    });
    eprintln!(
        "domain followed {:.1} s after it started (slot {})",
        started.elapsed().as_secs_f64(),
        vm.slot
    );

    // Its migration is followed like a configured VM's.
    let migration = migrate_in_background(&src, &dst, DISCOVERED_NAME, 50400);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut phases = Vec::new();
    while !migration.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the migration did not finish:\n{}",
            agent.log_text()
        );
        if let Some(m) = agent_vm_named(&agent, DISCOVERED_NAME).and_then(|v| v.migration)
            && phases.last() != Some(&m.phase)
        {
            phases.push(m.phase);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    migration
        .join()
        .expect("migration thread")
        .unwrap_or_else(|e| panic!("the migration failed: {e}\n{}", agent.log_text()));
    // The task records the end within the grace the agent gives it.
    let end = wait("the migration's end in the agent", || {
        agent_vm_named(&agent, DISCOVERED_NAME)
            .and_then(|v| v.migration)
            .filter(|m| m.phase == MigrationPhase::Completed)
    });
    phases.push(end.phase);
    eprintln!("phases seen: {phases:?}, {} samples", end.samples);
    assert!(
        phases.contains(&MigrationPhase::PreCopy),
        "pre-copy followed: {phases:?}\n{}",
        agent.log_text()
    );

    // libvirt removed the (transient) domain: the agent lets it go.
    wait("the agent to let the domain go", || {
        agent_vm_named(&agent, DISCOVERED_NAME)
            .is_none()
            .then_some(())
    });
    let (_, metrics) = agent.get("/metrics").expect("metrics");
    assert!(
        !metrics.contains(&format!("vm=\"{DISCOVERED_NAME}\"")),
        "the domain's series are gone:\n{metrics}"
    );
    let log = agent.log_text();
    assert!(log.contains("libvirt: following domain"), "{log}");
    assert!(log.contains("no longer followed"), "{log}");
    assert_eq!(
        agent
            .signal(libc::SIGTERM, Duration::from_secs(15))
            .expect("SIGTERM"),
        Some(0),
        "{}",
        agent.log_text()
    );
    drop(dom);
    let mut conn = conn;
    let _ = conn.close();
}
