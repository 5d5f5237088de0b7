//! Runs scenarios on the migration testbed: one fresh testbed per run
//! (scenario x policy x repetition), the real agent on the source host, a
//! real QEMU migration, and the figures: total time and downtime (QEMU's),
//! iterations, bytes, convergence within the timeout, the application's
//! goodput during the migration (bytes the sink received) against what it
//! asked for, and the agent's online prediction error.
//!
//! Reference policies run the agent in observe mode (it measures and, for
//! `static:RATE`, sets QEMU's `max-bandwidth` like KubeVirt would, but the
//! kernel enforces nothing); the others run it in HTB mode.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::Serialize;
use vmbw::{
    api::VmStatus,
    control::policy::{Policy, Spec},
    qemu::{Qmp, QmpOptions, types::MigrationStatus},
};

use crate::{
    BpffsMount,
    agent::Agent,
    guest::Guest,
    scenario::Scenario,
    testbed::{MigrationTestbed, UPLINK},
};

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes Ctrl-C end the current run cleanly (the testbed, QEMU and the agent
/// are torn down by their guards) instead of killing the process.
pub fn catch_interrupt() {
    // SAFETY: installs an async-signal-safe handler (one atomic store).
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// One VM's figures in one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub policy: String,
    pub repetition: u32,
    /// The VM (`vm0`, `vm1`, ... in the scenario's order).
    pub vm: String,
    /// How many VMs migrated concurrently in this run.
    pub vms: usize,
    pub converged: bool,
    pub total_s: f64,
    /// From the first migration's start until the last one ended (every
    /// VM of the run has the same value).
    pub makespan_s: f64,
    pub downtime_ms: Option<f64>,
    pub iterations: Option<u64>,
    pub transferred_bytes: u64,
    /// Application goodput during the migration, Mbit/s.
    pub app_mbit: f64,
    /// What the application asked for, Mbit/s.
    pub app_asked_mbit: f64,
    /// The agent's one-step dirty-page prediction error over the run.
    pub prediction_mape: Option<f64>,
    pub prediction_n: usize,
    pub steps: Vec<String>,
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

/// One migrating VM as the runner follows it.
struct Followed {
    name: String,
    /// How progress lines name it: ` vmN`, or nothing when it migrates alone.
    label: String,
    ctl: Qmp,
    uri: String,
    app_before: u64,
    /// The sink's count when this VM's migration ended.
    app_at_end: u64,
    predicted: BTreeMap<u32, f64>,
    actual: BTreeMap<u32, f64>,
    /// QEMU's final answer and whether it converged, once it ended.
    end: Option<(vmbw::qemu::types::MigrationInfo, bool, f64)>,
}

/// Runs one scenario under one policy: boots every VM, starts the agent on
/// the source host, starts all migrations at once and follows them to
/// their end or the timeout. Progress lines go to stderr; one result per
/// VM is returned.
pub fn run_one(
    guest: &Guest,
    sc: &Scenario,
    policy: &str,
    repetition: u32,
    log_dir: &Path,
) -> anyhow::Result<Vec<RunResult>> {
    let spec = Spec::parse(policy)?;
    // 0 = unlimited: the router shapes nothing; the agent is told 10 Gbit/s.
    let tb = MigrationTestbed::with_guests(sc.link_mbit.max(0.0), sc.vm.len())?;
    let mut boots = Vec::new();
    for (vm, slot) in sc.vm.iter().zip(&tb.guests) {
        boots.push((vm.workload_for(slot)?, vm.memory_mb));
    }
    let sinks = tb.start_sinks()?;
    let pairs = tb.boot_all(guest, &boots, Duration::from_secs(240 * sc.vm.len() as u64))?;

    let enforcing = matches!(spec.policy, Policy::Nrac(_) | Policy::Bda(_));
    let bpffs = BpffsMount::new()?;
    let run = tb.run.path();
    let config = run.join("vmbw.toml");
    let api = run.join("api.sock");
    let link = if sc.link_mbit > 0.0 {
        sc.link_mbit * 0.95
    } else {
        10_000.0
    };
    let mut toml = format!(
        "[agent]\nmode = \"{}\"\npolicy = \"{policy}\"\n\
         [[uplink]]\niface = \"{UPLINK}\"\nlink_mbit = {link}\n\
         [datapath]\npin_dir = \"{}\"\n[shaping]\nstate_dir = \"{}\"\n\
         [api]\nlisten = \"unix:{}\"\n",
        if enforcing { "htb" } else { "observe" },
        bpffs.path().join("vmbw").display(),
        run.join("state").display(),
        api.display(),
    );
    for (slot, (src, _)) in tb.guests.iter().zip(&pairs) {
        toml.push_str(&format!(
            "[[vm]]\nname = \"vm{}\"\nqmp = \"{}\"\nips = [\"{}\"]\ntaps = [\"{}\"]\n",
            slot.index,
            src.qmp.display(),
            slot.ip,
            slot.tap
        ));
    }
    std::fs::write(&config, toml)?;
    let mut agent = Agent::start(&tb.src, &config, &api, &run.join("agent.log"))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut vms = Vec::new();
    for (slot, (src, _)) in tb.guests.iter().zip(&pairs) {
        let mut ctl = rt.block_on(Qmp::connect(&src.qmp_ctl, ctl_options()))?;
        if let Err(e) = rt.block_on(crate::testbed::wait_for_events(&mut ctl)) {
            bail!(
                "{e:#}: the agent did not follow vm{}:\n{}",
                slot.index,
                agent.log_text()
            );
        }
        let name = format!("vm{}", slot.index);
        vms.push(Followed {
            label: if sc.vm.len() > 1 {
                format!(" {name}")
            } else {
                String::new()
            },
            name,
            ctl,
            uri: slot.migration_uri(),
            app_before: 0,
            app_at_end: 0,
            predicted: BTreeMap::new(),
            actual: BTreeMap::new(),
            end: None,
        });
    }
    // An agent on a host has been watching long before a migration starts:
    // give it a few control ticks of the applications' traffic.
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    for (v, sink) in vms.iter_mut().zip(&sinks) {
        v.app_before = sink.bytes();
        rt.block_on(v.ctl.migrate(&v.uri))?;
    }

    let mut last_report = Instant::now();
    while vms.iter().any(|v| v.end.is_none()) {
        std::thread::sleep(Duration::from_millis(250));
        if interrupted() {
            for v in vms.iter_mut().filter(|v| v.end.is_none()) {
                let _ = rt.block_on(v.ctl.migrate_cancel());
            }
            bail!("interrupted");
        }
        if let Ok((200, body)) = agent.get("/api/v1/vms")
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
                if let Some(a) = m.actual_dirty_pages
                    && m.iteration > 1
                {
                    v.actual.insert(m.iteration - 1, a);
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let report = last_report.elapsed() > Duration::from_secs(10);
        if report {
            last_report = Instant::now();
        }
        for (v, sink) in vms.iter_mut().zip(&sinks) {
            if v.end.is_some() {
                continue;
            }
            let info = rt.block_on(query_migrate(v))?;
            if report {
                eprintln!(
                    "    {policy}{}: {elapsed:>5.0} s, {:?}, {} MB sent, iteration {}",
                    v.label,
                    info.status.clone().unwrap_or(MigrationStatus::None),
                    info.ram.as_ref().map_or(0, |r| r.transferred) / 1_000_000,
                    info.ram.as_ref().map(|r| r.dirty_sync_count).unwrap_or(0)
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
                    v.end = Some((info, true, started.elapsed().as_secs_f64()));
                    v.app_at_end = sink.bytes();
                }
                Some(MigrationStatus::Failed) | Some(MigrationStatus::Cancelled) => {
                    v.end = Some((info, false, elapsed));
                    v.app_at_end = sink.bytes();
                }
                _ if elapsed > sc.timeout_s => {
                    rt.block_on(v.ctl.migrate_cancel())?;
                    v.end = Some((info, false, elapsed));
                    v.app_at_end = sink.bytes();
                }
                _ => {}
            }
        }
    }
    let makespan = started.elapsed().as_secs_f64();
    let app_bytes: Vec<u64> = vms
        .iter()
        .map(|v| v.app_at_end.saturating_sub(v.app_before))
        .collect();
    let log = agent.log_text();
    let _ = agent.signal(libc::SIGTERM, Duration::from_secs(15));
    // Keep the agent's log of every run beside the reports.
    let _ = std::fs::create_dir_all(log_dir);
    let slug: String = format!("{}-{policy}-{repetition}", sc.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let _ = std::fs::copy(&agent.log, log_dir.join(format!("{slug}.log")));

    let mut results = Vec::new();
    for ((v, spec), app_bytes) in vms.iter().zip(&sc.vm).zip(app_bytes) {
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
        results.push(RunResult {
            scenario: sc.name.clone(),
            policy: policy.to_owned(),
            repetition,
            vm: v.name.clone(),
            vms: sc.vm.len(),
            converged: *converged,
            total_s: if *converged {
                info.total_time.map_or(*ended_s, |t| t as f64 / 1000.0)
            } else {
                *ended_s
            },
            makespan_s: makespan,
            downtime_ms: converged
                .then_some(info.downtime)
                .flatten()
                .map(|d| d as f64),
            iterations: ram.map(|r| r.dirty_sync_count),
            transferred_bytes: ram.map_or(0, |r| r.transferred),
            // Goodput over this VM's own migration.
            app_mbit: app_bytes as f64 * 8.0 / 1e6 / ended_s.max(0.001),
            app_asked_mbit: spec.app_mbit,
            prediction_mape: (n > 0).then(|| 100.0 * ape / n as f64),
            prediction_n: n,
            steps: adamig_steps(&log, &v.name),
        });
    }
    Ok(results)
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

/// The AdaMig escalations the agent logged for `vm`, in order.
fn adamig_steps(log: &str, vm: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("adamig escalation"))
        .filter(|l| l.contains(&format!("vm={vm} ")))
        .filter_map(|l| {
            l.split("step=").nth(1).map(|s| {
                s.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_owned()
            })
        })
        .collect()
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

/// The markdown table: one row per scenario and policy, medians with
/// (min–max) over the repetitions.
pub fn markdown(results: &[RunResult]) -> String {
    let mut out = String::from(
        "| scenario | policy | runs | converged | total s | all VMs s | downtime ms | iterations | app Mbit/s (asked) | prediction MAPE % |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let keys = row_keys(results);
    let fmt = |s: Option<(f64, f64, f64)>, digits: usize| match s {
        Some((m, lo, hi)) if (hi - lo).abs() > 1e-9 => {
            format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
        }
        Some((m, _, _)) => format!("{m:.digits$}"),
        None => "–".into(),
    };
    for (sc, p) in keys {
        let rs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.label() == sc && r.policy == p)
            .collect();
        let conv = rs.iter().filter(|r| r.converged).count();
        let col = |f: &dyn Fn(&RunResult) -> Option<f64>| {
            spread(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        out.push_str(&format!(
            "| {sc} | {p} | {} | {conv}/{} | {} | {} | {} | {} | {} ({}) | {} |\n",
            rs.len(),
            rs.len(),
            fmt(col(&|r| Some(r.total_s)), 1),
            fmt(col(&|r| Some(r.makespan_s)), 1),
            fmt(col(&|r| r.downtime_ms), 0),
            fmt(col(&|r| r.iterations.map(|i| i as f64)), 0),
            fmt(col(&|r| Some(r.app_mbit)), 2),
            rs.first().map_or(0.0, |r| r.app_asked_mbit),
            fmt(col(&|r| r.prediction_mape), 1),
        ));
    }
    out
}

/// The (row label, policy) pairs of a result list, each once, in order of
/// first appearance.
fn row_keys(results: &[RunResult]) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in results {
        let k = (r.label(), r.policy.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// A bar chart (SVG) of median migration time and application goodput per
/// scenario and policy.
pub fn svg(results: &[RunResult]) -> String {
    let mut groups: Vec<(String, f64, f64, bool)> = Vec::new();
    for (sc, p) in &row_keys(results) {
        let rs: Vec<&RunResult> = results
            .iter()
            .filter(|r| &r.label() == sc && &r.policy == p)
            .collect();
        let t = spread(&rs.iter().map(|r| r.total_s).collect::<Vec<_>>()).map_or(0.0, |s| s.0);
        let a = spread(&rs.iter().map(|r| r.app_mbit).collect::<Vec<_>>()).map_or(0.0, |s| s.0);
        groups.push((format!("{sc} / {p}"), t, a, rs.iter().all(|r| r.converged)));
    }
    let (w, row, left) = (900.0, 34.0, 320.0);
    let h = 60.0 + row * groups.len() as f64;
    let tmax = groups.iter().map(|g| g.1).fold(1.0, f64::max);
    let amax = groups.iter().map(|g| g.2).fold(1.0, f64::max);
    let half = (w - left - 40.0) / 2.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-weight=\"bold\">migration time (s, hatched = did not converge)</text>\n\
         <text x=\"{}\" y=\"20\" font-weight=\"bold\">application goodput (Mbit/s)</text>\n",
        left + half + 20.0
    );
    for (i, (label, t, a, conv)) in groups.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        let tw = half * t / tmax;
        let aw = half * a / amax;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{left}\" y=\"{y}\" width=\"{tw:.1}\" height=\"20\" fill=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{}\">{t:.0}</text>\n\
             <rect x=\"{}\" y=\"{y}\" width=\"{aw:.1}\" height=\"20\" fill=\"#2a9d8f\"/>\n\
             <text x=\"{:.1}\" y=\"{}\">{a:.1}</text>\n",
            left - 8.0,
            y + 15.0,
            label.replace('&', "&amp;").replace('<', "&lt;"),
            if *conv { "#264653" } else { "#e76f51" },
            left + tw + 4.0,
            y + 15.0,
            left + half + 20.0,
            left + half + 24.0 + aw,
            y + 15.0,
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// Writes the markdown, JSON and SVG reports into `dir`; returns their paths.
pub fn write_reports(
    dir: &Path,
    stem: &str,
    results: &[RunResult],
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let md = dir.join(format!("{stem}.md"));
    let json = dir.join(format!("{stem}.json"));
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&md, markdown(results))?;
    std::fs::write(&json, serde_json::to_string_pretty(results)?)?;
    std::fs::write(&svg_path, svg(results))?;
    Ok(vec![md, json, svg_path])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(policy: &str, t: f64, conv: bool) -> RunResult {
        RunResult {
            scenario: "s".into(),
            policy: policy.into(),
            repetition: 0,
            vm: "vm0".into(),
            vms: 1,
            converged: conv,
            total_s: t,
            makespan_s: t,
            downtime_ms: Some(100.0),
            iterations: Some(5),
            transferred_bytes: 1,
            app_mbit: 9.5,
            app_asked_mbit: 10.0,
            prediction_mape: None,
            prediction_n: 0,
            steps: vec![],
        }
    }

    #[test]
    fn spread_and_table() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[]), None);
        let t = markdown(&[
            r("default", 100.0, true),
            r("default", 120.0, false),
            r("nrac", 60.0, true),
        ]);
        assert!(
            t.contains("| s | default | 2 | 1/2 | 110.0 (100.0–120.0) | 110.0 (100.0–120.0) |"),
            "{t}"
        );
        assert!(t.contains("| s | nrac | 1 | 1/1 | 60.0 |"), "{t}");
        // Repetitions interleave policies; each policy is still one row.
        let t = markdown(&[
            r("default", 100.0, true),
            r("nrac", 60.0, true),
            r("default", 120.0, true),
            r("nrac", 70.0, true),
        ]);
        assert_eq!(t.matches("| s | default |").count(), 1, "{t}");
        assert_eq!(t.matches("| s | nrac | 2 | 2/2 | 65.0").count(), 1, "{t}");
        // Concurrent VMs get a row each.
        let mut a = r("nrac", 60.0, true);
        let mut b = r("nrac", 80.0, true);
        (a.vms, b.vms, b.vm) = (2, 2, "vm1".into());
        (a.makespan_s, b.makespan_s) = (80.0, 80.0);
        let t = markdown(&[a, b]);
        assert!(
            t.contains("| s · vm0 | nrac | 1 | 1/1 | 60.0 | 80.0 |"),
            "{t}"
        );
        assert!(
            t.contains("| s · vm1 | nrac | 1 | 1/1 | 80.0 | 80.0 |"),
            "{t}"
        );
        let s = svg(&[r("default", 100.0, true), r("nrac", 60.0, true)]);
        assert!(s.starts_with("<svg") && s.contains("s / nrac"));
    }
}
