//! `cargo xtask bench agent-load`: one agent (the release build) follows 64
//! VMs, 8 of them migrating at any time, with 10,000 migration flows in its
//! classifier. 64 TCG guests do not fit on two cores, so each VM is a small
//! process of this binary (`--fake-vm`) that serves a QMP socket and
//! replays a recorded QEMU 10 trace (tests/fixtures/corpus/evaluation)
//! with its real iteration times, holding a TCP stream open while it
//! "migrates" as QEMU holds its migration stream. The datapath (TCX on a
//! veth uplink in a test-made namespace) and the HTB tree are real. Human
//! lines first, one line of JSON last.
//!
//! Measured over the window (after 10 s of start-up):
//! - sample → class rates in the kernel, p50/p99: the agent's own
//!   `vmbw_sample_to_enforce_seconds` histogram (bucket bounds);
//! - the agent's CPU, % of one core, and its peak RSS (VmHWM);
//! - rtnetlink requests per second (`vmbw_netlink_requests_total`);
//! - the time one `/metrics` scrape takes with 64 VMs.
//!
//! Replay: each migration starts at a random iteration after the bulk pass
//! of a random trace (iterations longer than 10 s are cut to 10 s, so the
//! window sees boundaries) and, when its trace ends, the VM rests 2 s and
//! starts another.
//!
//! Options: `--vms 64`, `--migrating 8`, `--flows 10000`, `--seconds 60`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
};
use vmbw::{
    datapath::{Datapath, PinDir, Urgency},
    qemu::trace::{self, Trace},
};
use vmbw_tests::{
    BpffsMount, NetNs,
    agent::{self, Agent},
    measure::percentile,
    vm::RunDir,
};

struct Options {
    vms: usize,
    migrating: usize,
    flows: usize,
    seconds: f64,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        vms: 64,
        migrating: 8,
        flows: 10_000,
        seconds: 60.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--vms" => o.vms = value()?.parse().context("--vms")?,
            "--migrating" => o.migrating = value()?.parse().context("--migrating")?,
            "--flows" => o.flows = value()?.parse().context("--flows")?,
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            other => bail!("unknown option {other} (--vms, --migrating, --flows, --seconds)"),
        }
    }
    if o.vms == 0 || o.vms > 900 || o.migrating > o.vms {
        bail!("--vms must be 1..=900 and --migrating at most --vms");
    }
    if !(o.seconds.is_finite() && o.seconds >= 10.0) {
        bail!("--seconds must be at least 10");
    }
    Ok(o)
}

/// Guest RAM every fake VM reports; one mapping of this size in this
/// process stands for it (the agent reads X2 from its resident part).
const RAM: u64 = 128 << 20;
/// Longest replayed iteration.
const MAX_ITER: Duration = Duration::from_secs(10);
/// Rest between two migrations of one VM.
const REST: Duration = Duration::from_secs(2);

/// One fake VM's migration, as query-migrate shows it.
#[derive(Default)]
struct Play {
    /// The replayed trace's rows and where in it the VM is.
    rows: Vec<trace::TraceRow>,
    transferred: Vec<f64>,
    row: usize,
    row_started: Option<Instant>,
    status: &'static str,
    total_time_ms: u64,
}

impl Play {
    fn info(&self) -> Value {
        let Some(r) = self.rows.get(self.row) else {
            return json!({ "status": self.status });
        };
        let elapsed = self.row_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let iter_s = r.iter_s.min(MAX_ITER.as_secs_f64()).max(0.1);
        let share = (elapsed / iter_s).min(1.0);
        let before = if self.row == 0 {
            0.0
        } else {
            self.transferred[self.row - 1]
        };
        let transferred = before + share * (self.transferred[self.row] - before);
        let remaining = r.dirty_pages * r.page_size as f64 * (1.0 - share);
        let sent_pages = (transferred / r.page_size as f64) as u64;
        json!({
            "status": self.status,
            "total-time": self.total_time_ms,
            "expected-downtime": 300,
            "ram": {
                "transferred": transferred as u64,
                "remaining": remaining as u64,
                "total": RAM,
                "duplicate": 0,
                "normal": sent_pages,
                "normal-bytes": sent_pages * r.page_size,
                "dirty-pages-rate": (r.dirty_pages / r.iter_s.max(0.1)) as u64,
                "mbps": 8.0 * r.host_net_bps.max(1.0) / 1e6,
                "dirty-sync-count": self.row as u64 + 2,
                "page-size": r.page_size,
            }
        })
    }
}

fn event(name: &str, data: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    json!({
        "event": name,
        "data": data,
        "timestamp": { "seconds": now.as_secs(), "microseconds": now.subsec_micros() },
    })
    .to_string()
}

/// Serves one fake VM's QMP socket: answers what the agent asks and sends
/// the replay's events.
async fn serve_vm(
    path: PathBuf,
    vcpu_tid: u32,
    play: Arc<Mutex<Play>>,
    mut events: tokio::sync::broadcast::Receiver<String>,
) {
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake QMP {}: {e}", path.display());
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (read, mut write) = stream.into_split();
        let greeting = json!({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "vmbw-bench-agent-load"}, "capabilities": ["oob"]}});
        if write
            .write_all(format!("{greeting}\r\n").as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        let mut lines = BufReader::new(read).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    let Ok(cmd) = serde_json::from_str::<Value>(&line) else { continue };
                    let reply = answer(&cmd, vcpu_tid, &play);
                    let mut reply = json!({ "return": reply });
                    if let Some(id) = cmd.get("id") {
                        reply["id"] = id.clone();
                    }
                    if write.write_all(format!("{reply}\r\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
                ev = events.recv() => match ev {
                    Ok(text) => {
                        if write.write_all(format!("{text}\r\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
            }
        }
    }
}

fn answer(cmd: &Value, vcpu_tid: u32, play: &Mutex<Play>) -> Value {
    match cmd.get("execute").and_then(Value::as_str).unwrap_or("") {
        "query-migrate" => play.lock().unwrap_or_else(|p| p.into_inner()).info(),
        "query-cpus-fast" => {
            json!([{ "cpu-index": 0, "thread-id": vcpu_tid, "qom-path": "/machine/unattached/device[0]", "target": "x86_64" }])
        }
        "query-memory-size-summary" => json!({ "base-memory": RAM }),
        "query-status" => json!({ "status": "running", "running": true }),
        "query-version" => {
            json!({ "qemu": { "major": 10, "minor": 0, "micro": 2 }, "package": "bench" })
        }
        "query-migrate-capabilities" => json!([]),
        "query-migrate-parameters" => json!({
            "max-bandwidth": 134217728u64,
            "downtime-limit": 300,
            "avail-switchover-bandwidth": 0,
            "max-postcopy-bandwidth": 0,
            "cpu-throttle-initial": 20,
            "cpu-throttle-increment": 10,
            "max-cpu-throttle": 99,
        }),
        "qom-list" => json!([]),
        _ => json!({}),
    }
}

/// Drives one VM's migrations: sets its play and sends its events.
/// Each migration holds a TCP connection to `sink` open, as QEMU holds its
/// migration stream: the agent finds it among the process's sockets.
async fn replay(
    traces: Vec<Trace>,
    play: Arc<Mutex<Play>>,
    events: tokio::sync::broadcast::Sender<String>,
    sink: std::net::SocketAddr,
    until: Instant,
    seed: u64,
) {
    let mut rng = seed;
    let mut next = || {
        // xorshift: reproducible choices without a dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Staggered starts.
    tokio::time::sleep(Duration::from_millis(next() % 3000)).await;
    while Instant::now() < until {
        let t = &traces[(next() % traces.len() as u64) as usize];
        if t.rows.len() < 3 {
            continue;
        }
        let first = 1 + (next() % (t.rows.len() as u64 - 2)) as usize;
        let rows: Vec<trace::TraceRow> = t.rows[first..].to_vec();
        let mut acc = 0.0;
        let transferred: Vec<f64> = rows
            .iter()
            .map(|r| {
                acc += r.host_net_bps.max(1e6) / 8.0 * r.iter_s.min(MAX_ITER.as_secs_f64());
                acc
            })
            .collect();
        let started = Instant::now();
        let stream = tokio::net::TcpStream::connect(sink).await.ok();
        {
            let mut p = play.lock().unwrap_or_else(|p| p.into_inner());
            *p = Play {
                rows: rows.clone(),
                transferred,
                row: 0,
                row_started: Some(Instant::now()),
                status: "active",
                total_time_ms: 0,
            };
        }
        let _ = events.send(event("MIGRATION", json!({ "status": "active" })));
        for (i, r) in rows.iter().enumerate() {
            tokio::time::sleep(Duration::from_secs_f64(
                r.iter_s.min(MAX_ITER.as_secs_f64()).max(0.1),
            ))
            .await;
            if i + 1 == rows.len() {
                break;
            }
            {
                let mut p = play.lock().unwrap_or_else(|p| p.into_inner());
                p.row = i + 1;
                p.row_started = Some(Instant::now());
            }
            let _ = events.send(event("MIGRATION_PASS", json!({ "pass": i + 3 })));
        }
        {
            let mut p = play.lock().unwrap_or_else(|p| p.into_inner());
            p.status = "completed";
            p.total_time_ms = started.elapsed().as_millis() as u64;
        }
        let _ = events.send(event("MIGRATION", json!({ "status": "completed" })));
        drop(stream);
        tokio::time::sleep(REST).await;
    }
}

/// A sleeping thread standing for a VM's vCPU (the agent reads its CPU
/// time in /proc); returns its tid.
fn vcpu_thread() -> u32 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(unsafe { libc::gettid() } as u32);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    });
    rx.recv().unwrap_or(0)
}

/// Maps (without touching) a region of the guest RAM's size.
fn guest_ram_mapping() -> anyhow::Result<()> {
    // SAFETY: an anonymous private mapping, never accessed, never unmapped
    // (it lives as long as the bench).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RAM as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap of {RAM} bytes: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A metric's value in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Quantile `q` of a Prometheus histogram as the upper bound of the bucket
/// it falls in (None: no observations; +Inf: above the last bound).
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<(f64, u64)> {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last()?.1;
    if count <= 0.0 {
        return None;
    }
    let bound = buckets.iter().find(|(_, c)| *c >= q * count)?.0;
    Some((bound, count as u64))
}

/// `--fake-vm SOCKET [--migrate SEED SINK SECONDS]`: one VM's QEMU, a
/// process of its own as a real QEMU is (the agent looks at its sockets
/// and /proc entries).
fn fake_vm(args: &[String]) -> anyhow::Result<()> {
    let socket = PathBuf::from(args.first().context("--fake-vm needs a socket path")?);
    guest_ram_mapping()?;
    let tid = vcpu_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let play: Arc<Mutex<Play>> = Arc::default();
    let (events, _) = tokio::sync::broadcast::channel(256);
    rt.spawn(serve_vm(socket, tid, play.clone(), events.subscribe()));
    match args.get(1).map(String::as_str) {
        Some("--migrate") => {
            let seed: u64 = args.get(2).context("seed")?.parse()?;
            let sink: std::net::SocketAddr = args.get(3).context("sink")?.parse()?;
            let seconds: f64 = args.get(4).context("seconds")?.parse()?;
            let traces = evaluation_traces()?;
            let until = Instant::now() + Duration::from_secs_f64(seconds);
            rt.block_on(replay(traces, play, events, sink, until, seed));
            // Idle until the bench ends this process.
            rt.block_on(std::future::pending::<()>());
        }
        _ => rt.block_on(std::future::pending::<()>()),
    }
    Ok(())
}

fn evaluation_traces() -> anyhow::Result<Vec<Trace>> {
    let traces: Vec<Trace> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus/evaluation"))
            .context("the evaluation corpus")?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "csv"))
            .map(|e| trace::read_path(&e.path()))
            .collect::<Result<_, _>>()?;
    if traces.is_empty() {
        bail!("no traces in tests/fixtures/corpus/evaluation");
    }
    Ok(traces)
}

/// The fake VMs' processes, killed when dropped.
struct Fakes(Vec<std::process::Child>);

impl Drop for Fakes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--fake-vm") {
        return fake_vm(&args[1..]);
    }
    let o = options()?;
    vmbw_tests::skip::privileged().map_err(anyhow::Error::msg)?;
    let bin = agent::binary().map_err(anyhow::Error::msg)?;
    println!("agent binary: {}", bin.display());
    evaluation_traces()?;

    let ns = NetNs::new()?;
    ns.veth_uplink("up0")?;
    // The agent reads a VM's uplink counters in its QEMU's namespace
    // (/proc/PID/net/dev): the fake QEMUs start from here, inside it.
    ns.enter_for_good()?;
    let bpffs = BpffsMount::new()?;
    let run = RunDir::new()?;
    // Where the migrations' streams connect (nothing is sent on them).
    let sink = std::net::TcpListener::bind("127.0.0.1:0").context("the streams' sink")?;
    let sink_addr = sink.local_addr()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in sink.incoming().flatten() {
            held.push(s);
        }
    });

    let exe = std::env::current_exe()?;
    let mut fakes = Fakes(Vec::new());
    let mut vm_config = String::new();
    let mut sockets = Vec::new();
    for i in 0..o.vms {
        let path = run.path().join(format!("vm{i}.qmp"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("--fake-vm").arg(&path);
        if i < o.migrating {
            cmd.arg("--migrate")
                .arg((0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1)).to_string())
                .arg(sink_addr.to_string())
                .arg((o.seconds + 30.0).to_string());
        }
        fakes.0.push(cmd.spawn().context("starting a fake VM")?);
        let reserve = if i % 2 == 0 {
            "reserve_mbit = 100\n"
        } else {
            ""
        };
        vm_config.push_str(&format!(
            "[[vm]]\nname = \"vm{i}\"\nqmp = \"{}\"\nips = [\"10.{}.{}.{}\"]\n{reserve}",
            path.display(),
            100 + i / 65536,
            (i / 256) % 256,
            i % 256,
        ));
        sockets.push(path);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sockets.iter().all(|p| p.exists()) {
        if Instant::now() > deadline {
            bail!("the fake VMs did not open their QMP sockets within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let config = run.path().join("vmbw.toml");
    let api = run.path().join("api.sock");
    std::fs::write(
        &config,
        format!(
            "[agent]\npolicy = \"nrac\"\n\
             [[uplink]]\niface = \"up0\"\nlink_mbit = 10000.0\n\
             [datapath]\npin_dir = \"{}\"\n\
             [shaping]\nstate_dir = \"{}\"\n\
             [api]\nlisten = \"unix:{}\"\n{vm_config}",
            bpffs.path().join("vmbw").display(),
            run.path().join("state").display(),
            api.display(),
        ),
    )?;
    let mut agent = Agent::start(&ns, &config, &api, &run.path().join("agent.log"))?;
    let pid = agent.pid().context("the agent's pid")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let following = agent
            .get("/api/v1/vms")
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Vec<vmbw::api::VmStatus>>(&b).ok())
            .map_or(0, |v| {
                v.iter()
                    .filter(|s| s.telemetry.as_deref() == Some("qmp"))
                    .count()
            });
        if following == o.vms {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent follows {following} of {} fake VMs after 60 s:\n{}",
                o.vms,
                agent.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("agent follows {} VMs", o.vms);

    // 10,000 migration flows, spread over the VMs.
    {
        let mut dp = Datapath::load(&PinDir::Persistent(bpffs.path().join("vmbw")))?;
        for f in 0..o.flows {
            let vm = (f % o.vms) as u32 + 1;
            let local = IpAddr::V4(Ipv4Addr::new(10, 250, (f / 250) as u8, (f % 250) as u8 + 1));
            let remote = IpAddr::V4(Ipv4Addr::new(10, 251, 0, 1));
            dp.add_migration_flow(
                vm,
                (local, 40000 + (f % 20000) as u16),
                (remote, 4444),
                6,
                Urgency::Background,
            )?;
        }
    }
    println!("{} migration flows registered", o.flows);

    // The window: the migrations started with the fakes; skip the first
    // 10 s of start-up.
    std::thread::sleep(Duration::from_secs(10));
    let metrics_at = |agent: &Agent| agent.get("/metrics").map(|r| r.1).unwrap_or_default();
    let before = metrics_at(&agent);
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    let (cpu1, wall) = (cpu_ticks(pid), t0.elapsed().as_secs_f64());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_pct = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(100.0 * (b - a) as f64 / hz / wall),
        _ => None,
    };
    let rss_mb = status_kb(pid, "VmHWM:").map(|kb| kb as f64 / 1024.0);
    let mut scrapes = Vec::new();
    let mut text = String::new();
    for _ in 0..20 {
        let t = Instant::now();
        text = metrics_at(&agent);
        scrapes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let delta = |name: &str| match (metric(&before, name), metric(&text, name)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let netlink = delta("vmbw_netlink_requests_total").map(|d| d / wall);
    let samples = delta("vmbw_sample_to_enforce_seconds_count");
    let hist = "vmbw_sample_to_enforce_seconds";
    let p50 = histogram_quantile(&text, hist, 0.5);
    let p99 = histogram_quantile(&text, hist, 0.99);
    let ms = |v: Option<(f64, u64)>| v.map(|(b, _)| b * 1e3);
    let errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("vmbw_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b);
    let _ = agent.signal(libc::SIGTERM, Duration::from_secs(15));
    drop(fakes);

    println!(
        "window {wall:.1} s: {} iteration samples from {} migrating VMs",
        samples.unwrap_or(0.0),
        o.migrating
    );
    println!(
        "sample -> class rates in the kernel (agent histogram since start, bucket bounds): p50 <= {:?} ms, p99 <= {:?} ms over {} samples",
        ms(p50),
        ms(p99),
        p99.map_or(0, |v| v.1)
    );
    println!(
        "agent CPU {:.2}% of one core, peak RSS {:.1} MiB, {:.1} rtnetlink requests/s, {errors} errors",
        cpu_pct.unwrap_or(f64::NAN),
        rss_mb.unwrap_or(f64::NAN),
        netlink.unwrap_or(f64::NAN)
    );
    println!(
        "/metrics with {} VMs ({series} series): p50 {:.1} ms, max {:.1} ms",
        o.vms,
        percentile(&scrapes, 50.0),
        scrapes.iter().copied().fold(0.0, f64::max)
    );
    let p99_ms = ms(p99);
    println!(
        "{}",
        json!({
            "bench": "agent-load",
            "vms": o.vms,
            "migrating": o.migrating,
            "flows": o.flows,
            "window_s": wall,
            "samples_in_window": samples,
            "sample_to_kernel_ms": { "p50_le": ms(p50), "p99_le": p99_ms, "samples": p99.map_or(0, |v| v.1) },
            "cpu_pct_of_core": cpu_pct,
            "rss_peak_mib": rss_mb,
            "netlink_requests_per_s": netlink,
            "scrape_ms": { "p50": percentile(&scrapes, 50.0), "max": scrapes.iter().copied().fold(0.0, f64::max), "series": series },
            "errors": errors,
            "targets": {
                "decision_p99_lt_20ms": p99_ms.map(|v| v < 20.0),
                "cpu_lt_2pct": cpu_pct.map(|v| v < 2.0),
                "rss_lt_50mb": rss_mb.map(|v| v < 50.0),
            },
        })
    );
    Ok(())
}
