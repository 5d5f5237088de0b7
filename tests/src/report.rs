//! The migration benchmark's reports: one per scenario
//! (`docs/bench/<scenario>.{md,json,svg}` and a per-second timeline
//! `<scenario>-timeline.svg`), each stamped with the commit, date and QEMU
//! it ran on, and an index (`docs/bench/README.md`) rebuilt from the JSON
//! files alone, so the set can be filled scenario by scenario.
//!
//! Every figure is a median with min–max over the repetitions. A run of
//! several VMs counts as converged when all converged; its time is the
//! makespan and its SLA figure the worst VM's.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{
    policy::Family,
    runner::{RunResult, slug, spread},
    scenario::Scenario,
};

/// Where and on what a report was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    pub commit: String,
    pub date: String,
    pub qemu: String,
    pub kernel: String,
}

impl Stamp {
    /// The checkout's commit (`+dirty` when code, not only reports, has
    /// uncommitted changes), the UTC date, and the QEMU and kernel versions.
    pub fn now() -> Stamp {
        let out = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        let dirty = vmbw_testenv::checkout_is_dirty(std::path::Path::new("."));
        Stamp {
            commit: format!(
                "{}{}",
                out("git", &["rev-parse", "--short=12", "HEAD"]),
                if dirty { "+dirty" } else { "" }
            ),
            date: out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            qemu: out("qemu-system-x86_64", &["--version"])
                .lines()
                .next()
                .unwrap_or("unknown")
                .to_owned(),
            kernel: out("uname", &["-r"]),
        }
    }
}

/// One scenario's report, as committed in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub file: String,
    pub description: String,
    pub link_mbit: f64,
    /// Each guest's vCPUs (reports from before this field: 1).
    #[serde(default = "crate::scenario::one")]
    pub vcpus: u32,
    pub repetitions: u32,
    pub policies: Vec<String>,
    /// RAM / (link − reservations): one pass over guest memory at what the
    /// reservations leave; None on an unlimited link.
    pub physical_floor_s: Option<f64>,
    pub stamp: Stamp,
    /// Policies run later than `stamp` into this report (`--merge`), with
    /// their own stamps.
    #[serde(default)]
    pub policy_stamps: BTreeMap<String, Stamp>,
    pub results: Vec<RunResult>,
}

impl ScenarioReport {
    /// `stamp` is taken when the runs began: the checkout may move on
    /// while they run.
    pub fn new(
        sc: &Scenario,
        file: &Path,
        stamp: Stamp,
        results: Vec<RunResult>,
    ) -> ScenarioReport {
        ScenarioReport {
            scenario: sc.name.clone(),
            file: file.display().to_string(),
            description: sc.description.clone(),
            link_mbit: sc.link_mbit,
            vcpus: sc.vcpus,
            repetitions: sc.repetitions,
            policies: sc.policies.clone(),
            physical_floor_s: physical_floor_s(sc),
            stamp,
            policy_stamps: BTreeMap::new(),
            results,
        }
    }

    /// This report with `policies` re-run at `stamp`: their old results
    /// are replaced by `results`, every other policy's kept with its own
    /// stamp; the policy list becomes the scenario file's (`all`).
    pub fn merged(
        mut self,
        all: &[String],
        policies: &[String],
        stamp: Stamp,
        results: Vec<RunResult>,
    ) -> ScenarioReport {
        self.results.retain(|r| !policies.contains(&r.policy));
        self.results.extend(results);
        for p in policies {
            self.policy_stamps.insert(p.clone(), stamp.clone());
        }
        let mut list: Vec<String> = all.to_vec();
        for p in self.results.iter().map(|r| &r.policy) {
            if !list.contains(p) {
                list.push(p.clone());
            }
        }
        self.policies = list;
        self.retire_stamp();
        self
    }

    /// Once every policy with results has been re-run (`policy_stamps`),
    /// the report's own stamp dates nothing in it any more: the earliest
    /// re-run's takes its place, and the policies run then lose their
    /// separate line.
    fn retire_stamp(&mut self) {
        let covered = !self.results.is_empty()
            && self
                .results
                .iter()
                .all(|r| self.policy_stamps.contains_key(&r.policy));
        if !covered {
            return;
        }
        // Some: every result's policy has a stamp, and there are results.
        if let Some(first) = self
            .policy_stamps
            .values()
            .min_by(|a, b| a.date.cmp(&b.date))
            .cloned()
        {
            self.policy_stamps.retain(|_, st| *st != first);
            self.stamp = first;
        }
    }

    /// Reads the report of `stem` in `dir`, if there is one.
    pub fn load(dir: &Path, stem: &str) -> anyhow::Result<Option<ScenarioReport>> {
        let path = dir.join(format!("{stem}.json"));
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path).map(Some)
    }

    /// A report from its JSON `text` (read from `path`), its stamps tidied
    /// ([`Self::retire_stamp`]).
    fn parse(text: &str, path: &Path) -> anyhow::Result<ScenarioReport> {
        let mut rep: ScenarioReport = serde_json::from_str(text)
            .with_context(|| format!("{}: not a scenario report", path.display()))?;
        rep.retire_stamp();
        Ok(rep)
    }

    /// The report's file name without extension: the scenario file's stem
    /// (`tests/scenarios/demo.toml` -> `demo`).
    pub fn stem(&self) -> String {
        let file = Path::new(&self.file);
        slug(&file.file_stem().map_or_else(
            || self.scenario.clone(),
            |s| s.to_string_lossy().into_owned(),
        ))
    }

    /// The per-run rows of a policy: (converged, time, worst SLA p5, worst
    /// downtime ms) for each repetition.
    fn runs(&self, policy: &str) -> Vec<Run> {
        let mut by_rep: BTreeMap<u32, Vec<&RunResult>> = BTreeMap::new();
        for r in self.results.iter().filter(|r| r.policy == policy) {
            by_rep.entry(r.repetition).or_default().push(r);
        }
        by_rep
            .into_values()
            .map(|vms| Run {
                converged: vms.iter().all(|r| r.converged),
                time_s: if vms.len() > 1 {
                    vms[0].makespan_s
                } else {
                    vms[0].total_s
                },
                sla_p5: vms.iter().filter_map(|r| r.sla_p5).min_by(f64::total_cmp),
                downtime_ms: vms
                    .iter()
                    .filter_map(|r| r.downtime_ms)
                    .max_by(f64::total_cmp),
                paused_ms: vms
                    .iter()
                    .filter_map(|r| r.paused_ms)
                    .max_by(f64::total_cmp),
                steal_pct: vms[0].host_steal_pct,
            })
            .collect()
    }

    /// Policies in the order they ran.
    /// The policies with results, in the scenario's order (a merged
    /// re-run appends its results but keeps its place in the tables).
    fn policies_run(&self) -> Vec<(String, Family)> {
        let mut seen: Vec<(String, Family)> = Vec::new();
        for r in &self.results {
            if !seen.iter().any(|(p, _)| *p == r.policy) {
                seen.push((r.policy.clone(), r.family));
            }
        }
        let place = |p: &str| {
            self.policies
                .iter()
                .position(|q| q == p)
                .unwrap_or(usize::MAX)
        };
        seen.sort_by_key(|(p, _)| place(p));
        seen
    }

    /// One line per policy for the index: converged runs, time, SLA p5.
    pub fn summary(&self) -> Vec<PolicySummary> {
        self.policies_run()
            .into_iter()
            .map(|(policy, family)| {
                let runs = self.runs(&policy);
                PolicySummary {
                    converged: runs.iter().filter(|r| r.converged).count(),
                    runs: runs.len(),
                    time_s: spread(&runs.iter().map(|r| r.time_s).collect::<Vec<_>>()),
                    sla_p5: spread(&runs.iter().filter_map(|r| r.sla_p5).collect::<Vec<_>>()),
                    downtime_ms: spread(
                        &runs
                            .iter()
                            .filter_map(|r| r.downtime_ms)
                            .collect::<Vec<_>>(),
                    ),
                    paused_ms: spread(&runs.iter().filter_map(|r| r.paused_ms).collect::<Vec<_>>()),
                    steal_pct: spread(&runs.iter().filter_map(|r| r.steal_pct).collect::<Vec<_>>()),
                    policy,
                    family,
                }
            })
            .collect()
    }
}

struct Run {
    converged: bool,
    time_s: f64,
    sla_p5: Option<f64>,
    downtime_ms: Option<f64>,
    paused_ms: Option<f64>,
    steal_pct: Option<f64>,
}

/// One policy's figures over its repetitions.
#[derive(Debug, Clone)]
pub struct PolicySummary {
    pub policy: String,
    pub family: Family,
    pub runs: usize,
    pub converged: usize,
    pub time_s: Option<(f64, f64, f64)>,
    pub sla_p5: Option<(f64, f64, f64)>,
    pub downtime_ms: Option<(f64, f64, f64)>,
    /// STOP on the source to RESUME on the destination (the worst VM of a
    /// run), ms.
    pub paused_ms: Option<(f64, f64, f64)>,
    /// CPU time the hypervisor took from the testbed machine during the
    /// runs, %.
    pub steal_pct: Option<(f64, f64, f64)>,
}

/// RAM / (link − reservations), seconds.
pub fn physical_floor_s(sc: &Scenario) -> Option<f64> {
    let reserved: f64 = sc.vm.iter().map(|v| v.reserve_mbit).sum();
    let free = sc.link_mbit - reserved;
    let ram_bits: f64 = sc
        .vm
        .iter()
        .map(|v| v.memory_mb as f64 * 1024.0 * 1024.0 * 8.0)
        .sum();
    (sc.link_mbit > 0.0 && free > 0.0).then(|| ram_bits / (free * 1e6))
}

/// `median (min–max)`, or the median alone when they agree.
pub fn fmt_spread(s: Option<(f64, f64, f64)>, digits: usize) -> String {
    match s {
        Some((m, lo, hi)) if (hi - lo).abs() > 1e-9 => {
            format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
        }
        Some((m, _, _)) => format!("{m:.digits$}"),
        None => "–".into(),
    }
}

/// How the runs timed the application's per-second goodput: by kernel
/// receive time (runs that also kept the read times) or, in runs made
/// before that, by when the sink's thread read the bytes.
fn goodput_timing(rep: &ScenarioReport) -> String {
    let runs = rep.results.len();
    let stamped: Vec<&RunResult> = rep
        .results
        .iter()
        .filter(|r| r.timeline.iter().any(|s| s.app_read_mbit.is_some()))
        .collect();
    if runs == 0 {
        return String::new();
    }
    if stamped.is_empty() {
        return "- application goodput timed by when the sink read it (these runs predate \
                receive timestamps; a sink thread kept waiting for a CPU moves bytes into \
                the next second)\n"
            .into();
    }
    let (mut shifted, mut worst) = (0, 0.0f64);
    for s in stamped.iter().flat_map(|r| r.timeline.iter()) {
        if let Some(read) = s.app_read_mbit {
            let d = (read - s.app_mbit).abs();
            if d > 0.05 * s.app_mbit.max(1.0) {
                shifted += 1;
            }
            worst = worst.max(d);
        }
    }
    let which = if stamped.len() == runs {
        "every run".to_owned()
    } else {
        format!("{} of {runs} runs", stamped.len())
    };
    format!(
        "- application goodput timed by the kernel's receive timestamps ({which}); \
         timed by when the sink's thread read it instead, {shifted} seconds would differ \
         by more than 5% (at most {worst:.2} Mbit/s)\n"
    )
}

/// The scenario's markdown page.
pub fn markdown(rep: &ScenarioReport) -> String {
    let stem = rep.stem();
    let mut out = format!(
        "# {}\n\n{}\n\n- scenario file: `{}`; link {} Mbit/s; {} per guest; \
         {} repetitions per policy\n\
         - ran at commit `{}` on {}; {}; kernel {}\n",
        rep.scenario,
        rep.description,
        rep.file,
        rep.link_mbit,
        vcpus(rep.vcpus),
        rep.repetitions,
        rep.stamp.commit,
        rep.stamp.date,
        rep.stamp.qemu,
        rep.stamp.kernel,
    );
    for (policy, st) in &rep.policy_stamps {
        out.push_str(&format!(
            "- `{policy}` re-run at commit `{}` on {}; {}; kernel {}\n",
            st.commit, st.date, st.qemu, st.kernel
        ));
    }
    if let Some(f) = rep.physical_floor_s {
        out.push_str(&format!(
            "- physical floor RAM / (link − reservation): {f:.1} s\n"
        ));
    }
    out.push_str(&goodput_timing(rep));
    out.push_str(&format!(
        "\n![migration time against SLA p5]({stem}.svg)\n\n\
         Medians, (min–max) over the repetitions. SLA p5: the 5th percentile, over the \
         migration's seconds, of the application's goodput divided by min(demand, reservation). \
         A run of several VMs counts as converged when all did; its time is the makespan. \
         CPU stolen: the share of this machine's CPU time its hypervisor took while the \
         migrations ran (a loaded host wakes every thread late, post-copy's page faults \
         included; – where it was not recorded).\n\n\
         | policy | family | converged | time s | SLA p5 | downtime ms | paused ms | CPU stolen % |\n|---|---|---|---|---|---|---|---|\n"
    ));
    for s in rep.summary() {
        out.push_str(&format!(
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} |\n",
            s.policy,
            family_name(s.family),
            s.converged,
            s.runs,
            fmt_spread(s.time_s, 1),
            fmt_spread(s.sla_p5, 2),
            fmt_spread(s.downtime_ms, 0),
            fmt_spread(s.paused_ms, 0),
            fmt_spread(s.steal_pct, 0),
        ));
    }
    out.push_str(
        "\n## Per VM\n\n\
         Downtime is QEMU's own figure; paused is the source's `STOP` event to the \
         destination's `RESUME` (both on this host's clock), the same yardstick for every \
         policy (QEMU's downtime is the source's view alone).\n\n\
         | VM | policy | converged | total s | downtime ms | paused ms | iterations | MB sent | app Mbit/s (asked, reserved) | SLA p5 | s below 95% | throttled s | post-copy s (pages fetched; guest waiting s) | prediction MAPE % |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut keys = vm_policy_pairs(rep.results.iter());
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    for (vm, policy) in keys {
        let rs: Vec<&RunResult> = rep
            .results
            .iter()
            .filter(|r| r.vm == vm && r.policy == policy)
            .collect();
        let col = |f: &dyn Fn(&RunResult) -> Option<f64>| {
            spread(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let first = rs[0];
        out.push_str(&format!(
            "| {vm} | {policy} | {}/{} | {} | {} | {} | {} | {} | {} ({}, {}) | {} | {} | {} | {}{} | {} |\n",
            rs.iter().filter(|r| r.converged).count(),
            rs.len(),
            fmt_spread(col(&|r| Some(r.total_s)), 1),
            fmt_spread(col(&|r| r.downtime_ms), 0),
            fmt_spread(col(&|r| r.paused_ms), 0),
            fmt_spread(col(&|r| r.iterations.map(|i| i as f64)), 0),
            fmt_spread(col(&|r| Some(r.transferred_bytes as f64 / 1e6)), 0),
            fmt_spread(col(&|r| Some(r.app_mbit)), 2),
            first.app,
            if first.reserve_mbit > 0.0 {
                format!("{}", first.reserve_mbit)
            } else {
                "none".into()
            },
            fmt_spread(col(&|r| r.sla_p5), 2),
            fmt_spread(col(&|r| Some(r.below_95_s as f64)), 0),
            fmt_spread(col(&|r| Some(r.throttled_s)), 1),
            fmt_spread(col(&|r| Some(r.postcopy_s)), 1),
            match (
                col(&|r| r.postcopy_requests.filter(|n| *n > 0).map(|n| n as f64)),
                col(&|r| r.postcopy_blocked_ms.map(|ms| ms as f64 / 1000.0)),
            ) {
                (Some(s), Some(b)) => format!(
                    " ({}; {})",
                    fmt_spread(Some(s), 0),
                    fmt_spread(Some(b), 1)
                ),
                (Some(s), None) => format!(" ({})", fmt_spread(Some(s), 0)),
                _ => String::new(),
            },
            fmt_spread(col(&|r| r.prediction_mape), 1),
        ));
    }
    out.push_str(&forecast_table(rep));
    out.push_str(&sender_table(rep));
    out.push_str(&format!(
        "\n## Escalations\n\nWhat each run's escalations did: steps QEMU accepted, and refusals as refusals.\n\n\
         ![per-second timeline]({stem}-timeline.svg)\n\n"
    ));
    let name = |r: &RunResult| format!("{} {} #{}", r.vm, r.policy, r.repetition);
    let dead: Vec<String> = rep
        .results
        .iter()
        .filter(|r| r.guest_intact == Some(false))
        .map(name)
        .collect();
    let unchecked = rep
        .results
        .iter()
        .filter(|r| r.converged && r.guest_intact.is_none())
        .count();
    let completed = rep.results.iter().filter(|r| r.converged).count();
    out.push_str(&if !dead.is_empty() {
        format!(
            "**Completed migrations whose guest did not run its workload on the destination, or lost a write: {}.**\n\n",
            dead.join(", ")
        )
    } else if unchecked == completed {
        "The guests were not checked on the destination after these runs (the runner did not check yet).\n\n".to_owned()
    } else if unchecked > 0 {
        format!(
            "{} of {completed} completed migrations were checked on the destination: each guest kept running its workload, its working set intact.\n\n",
            completed - unchecked
        )
    } else {
        "Every completed migration left a guest that kept running its workload on the destination, its working set intact.\n\n".to_owned()
    });
    for r in &rep.results {
        if r.steps.is_empty() && r.refused.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "- {} {} #{}: taken [{}]{}\n",
            r.vm,
            r.policy,
            r.repetition,
            r.steps.join(", "),
            if r.refused.is_empty() {
                String::new()
            } else {
                format!("; refused [{}]", r.refused.join("; "))
            }
        ));
    }
    out
}

/// Each (VM, policy) of `results` once, in first-seen order.
fn vm_policy_pairs<'a>(results: impl Iterator<Item = &'a RunResult>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in results {
        let k = (r.vm.clone(), r.policy.clone());
        if !pairs.contains(&k) {
            pairs.push(k);
        }
    }
    pairs
}

/// The application's side of the SLA: seconds the guest itself sent too
/// little, split by why (its writes blocked: the network pushed back; or
/// not: it could not send faster), beside the seconds the sink scored
/// below 95%. Sums over the repetitions.
fn sender_table(rep: &ScenarioReport) -> String {
    let told: Vec<&RunResult> = rep
        .results
        .iter()
        .filter(|r| r.sender.is_some_and(|s| s.seconds > 0))
        .collect();
    if told.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n## The sender's side\n\nFrom the guest's own per-second reports, summed over the \
         repetitions: on-phase seconds in which the guest wrote less than 95% of \
         min(demand, reservation), split by where the sending thread's time went (the guest \
         kernel's schedstat): blocked in socket writes for a tenth of the interval or more \
         (the network pushed back), or not (it was on a CPU or waiting for one: the guest \
         could not send faster). A sink second below 95% that the guest did not offer is \
         not the network's doing. The guest's TCP counters tell what the network did: \
         seconds with a retransmission timeout (its sender silent for 200 ms or more) and \
         segments sent again (– where the reports predate them).\n\n\
         | VM | policy | guest seconds | short | of which blocked | not blocked | sink seconds below 95% | seconds with a TCP timeout | segments sent again |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (vm, policy) in vm_policy_pairs(told.iter().copied()) {
        let rs: Vec<&RunResult> = told
            .iter()
            .copied()
            .filter(|r| r.vm == vm && r.policy == policy)
            .collect();
        let sum = |f: &dyn Fn(&crate::sender::SenderTally) -> usize| -> usize {
            rs.iter().filter_map(|r| r.sender.as_ref()).map(f).sum()
        };
        let (short, blocked) = (sum(&|t| t.short), sum(&|t| t.blocked));
        // Summed where the reports carry them.
        let some = |f: &dyn Fn(&crate::sender::SenderTally) -> Option<u64>| -> String {
            let known: Vec<u64> = rs
                .iter()
                .filter_map(|r| r.sender.as_ref())
                .filter_map(f)
                .collect();
            if known.is_empty() {
                "–".into()
            } else {
                known.iter().sum::<u64>().to_string()
            }
        };
        out.push_str(&format!(
            "| {vm} | {policy} | {} | {short} | {blocked} | {} | {} | {} | {} |\n",
            sum(&|t| t.seconds),
            short - blocked,
            rs.iter().map(|r| r.below_95_s).sum::<usize>(),
            some(&|t| t.rto_seconds.map(|n| n as u64)),
            some(&|t| t.retrans),
        ));
    }
    out
}

/// How well the agent forecast completion: (forecast − actual) / actual
/// seconds left, at 25%, 50% and 75% of each converged migration's time;
/// "never" counts forecasts of "does not converge" for a migration that
/// did.
fn forecast_table(rep: &ScenarioReport) -> String {
    let scored: Vec<&RunResult> = rep
        .results
        .iter()
        .filter(|r| !r.eta_error.is_empty())
        .collect();
    if scored.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n## Forecast\n\nThe agent's completion forecast against what happened, \
         in converged runs: (forecast − actual) / actual seconds left, median (min–max) \
         over the repetitions; \"never\" counts forecasts of \"does not converge\".\n\n\
         | VM | policy | at 25% | at 50% | at 75% |\n|---|---|---|---|---|\n",
    );
    for (vm, policy) in vm_policy_pairs(scored.iter().copied()) {
        let cells: Vec<String> = [0.25, 0.5, 0.75]
            .iter()
            .map(|at| {
                let at_this: Vec<&crate::runner::EtaScore> = scored
                    .iter()
                    .filter(|r| r.vm == vm && r.policy == policy)
                    .flat_map(|r| r.eta_error.iter())
                    .filter(|e| (e.at - at).abs() < 1e-9)
                    .collect();
                let errs: Vec<f64> = at_this
                    .iter()
                    .filter_map(|e| e.relative_error())
                    .map(|e| e * 100.0)
                    .collect();
                let never = at_this.len() - errs.len();
                let mut cell = match spread(&errs) {
                    Some((m, lo, hi)) if errs.len() > 1 => {
                        format!("{m:+.0}% ({lo:+.0}…{hi:+.0})")
                    }
                    Some((m, _, _)) => format!("{m:+.0}%"),
                    None => String::new(),
                };
                if never > 0 {
                    if !cell.is_empty() {
                        cell.push_str(", ");
                    }
                    cell.push_str(&format!("never ×{never}"));
                }
                if cell.is_empty() { "–".into() } else { cell }
            })
            .collect();
        out.push_str(&format!("| {vm} | {policy} | {} |\n", cells.join(" | ")));
    }
    out
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Stock => "stock QEMU",
        Family::Peer => "peer",
        Family::Vmbw => "vmbw",
    }
}

fn family_colour(f: Family, i: usize) -> RGBColor {
    const PEERS: [RGBColor; 4] = [
        RGBColor(31, 119, 180),
        RGBColor(23, 190, 207),
        RGBColor(148, 103, 189),
        RGBColor(44, 160, 44),
    ];
    const VMBW: [RGBColor; 3] = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
    ];
    match f {
        Family::Stock => RGBColor(90, 90, 90),
        Family::Peer => PEERS[i % PEERS.len()],
        Family::Vmbw => VMBW[i % VMBW.len()],
    }
}

/// Scatter of migration time (x) against SLA p5 (y), one point per policy
/// (median, with min–max whiskers); hollow when not every run converged.
/// Better is up and to the left.
pub fn scatter_svg(rep: &ScenarioReport) -> anyhow::Result<String> {
    let sums = rep.summary();
    let x_max = sums
        .iter()
        .filter_map(|s| s.time_s.map(|t| t.2))
        .chain(rep.physical_floor_s)
        .fold(10.0_f64, f64::max)
        * 1.15;
    // Room above 1 for an application that got more than it was owed.
    let y_max = sums
        .iter()
        .filter_map(|s| s.sla_p5.map(|p| p.2))
        .fold(1.15_f64, |m, hi| m.max(hi + 0.1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: migration time against the application's SLA",
                    rep.scenario
                ),
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(62)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("migration time, s (runs of several VMs: makespan)")
            .y_desc("SLA p5: goodput / min(demand, reservation)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.95), (x_max, 0.95)],
            RGBColor(160, 160, 160).stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            "SLA p5 0.95",
            (x_max * 0.01, 0.965),
            ("sans-serif", 13)
                .into_font()
                .color(&RGBColor(110, 110, 110)),
        )))?;
        if let Some(f) = rep.physical_floor_s {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(f, 0.0), (f, y_max)],
                RGBColor(160, 160, 160).stroke_width(1),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("floor {f:.0} s"),
                (f + x_max * 0.005, y_max * 0.5),
                ("sans-serif", 13)
                    .into_font()
                    .color(&RGBColor(110, 110, 110)),
            )))?;
        }
        let (mut peer_i, mut vmbw_i) = (0, 0);
        let mut placed: Vec<(f64, f64)> = Vec::new();
        for s in &sums {
            let colour = match s.family {
                Family::Peer => {
                    peer_i += 1;
                    family_colour(s.family, peer_i - 1)
                }
                Family::Vmbw => {
                    vmbw_i += 1;
                    family_colour(s.family, vmbw_i - 1)
                }
                Family::Stock => family_colour(s.family, 0),
            };
            let Some((t, t_lo, t_hi)) = s.time_s else {
                continue;
            };
            // No SLA (no application): plot on the top edge, say so.
            let (y, y_lo, y_hi) = s.sla_p5.unwrap_or((1.1, 1.1, 1.1));
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t_lo, y), (t_hi, y)],
                colour.stroke_width(2),
            )))?;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t, y_lo), (t, y_hi)],
                colour.stroke_width(2),
            )))?;
            let all = s.converged == s.runs;
            let style = if all {
                colour.filled()
            } else {
                colour.stroke_width(2)
            };
            chart.draw_series(std::iter::once(Circle::new((t, y), 7, style)))?;
            let label = format!(
                "{} ({}/{}{})",
                s.policy,
                s.converged,
                s.runs,
                if s.sla_p5.is_none() { ", no app" } else { "" }
            );
            // Move a label down, one line at a time, until it overlaps no
            // label already placed (policies often share a point, e.g. all
            // the ones that ran into the timeout).
            // Right of the point, or left of it near the right edge.
            let x = if t > x_max * 0.7 {
                t - x_max * (0.012 + 0.0078 * label.chars().count() as f64)
            } else {
                t + x_max * 0.012
            };
            // One text line, in the chart's units.
            let line = 0.05 * y_max / 1.15;
            let mut ly = y + 0.6 * line;
            while placed.iter().any(|&(px, py): &(f64, f64)| {
                (px - x).abs() < x_max * 0.25 && (py - ly).abs() < 0.9 * line
            }) {
                ly -= line;
            }
            placed.push((x, ly));
            chart.draw_series(std::iter::once(Text::new(
                label,
                (x, ly),
                ("sans-serif", 14).into_font().color(&colour),
            )))?;
        }
        root.draw(&Text::new(
            "filled: converged in every run; hollow: not; better is up and to the left",
            (90, 546),
            ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
        ))?;
        root.present()?;
    }
    Ok(svg)
}

/// Per-second timeline of the first repetition of each policy (the first
/// VM with an application, else vm0): application goodput, migration
/// throughput, the reservation, shaded post-copy (violet) and throttled
/// (yellow) seconds, and the runner's events.
pub fn timeline_svg(rep: &ScenarioReport) -> anyhow::Result<String> {
    let policies = rep.policies_run();
    let runs: Vec<&RunResult> = policies
        .iter()
        .filter_map(|(p, _)| {
            let first_rep = rep
                .results
                .iter()
                .filter(|r| &r.policy == p)
                .map(|r| r.repetition)
                .min()?;
            let of_rep = || {
                rep.results
                    .iter()
                    .filter(move |r| &r.policy == p && r.repetition == first_rep)
            };
            of_rep()
                .find(|r| r.app_asked_mbit != Some(0.0))
                .or_else(|| of_rep().next())
        })
        .collect();
    let panel_h = 190;
    let height = (panel_h * runs.len().max(1) + 50) as u32;
    let t_max = runs
        .iter()
        .filter_map(|r| r.timeline.last().map(|s| s.t_s + 1.0))
        .fold(10.0, f64::max);
    let y_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter())
        .map(|s| s.app_mbit.max(s.migration_mbit))
        .chain(std::iter::once(rep.link_mbit))
        .fold(1.0, f64::max)
        * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(40);
        title.draw(&Text::new(
            format!(
                "{}: per second, first repetition — application (blue), migration (orange), reservation (dashed)",
                rep.scenario
            ),
            (10, 12),
            ("sans-serif", 15).into_font(),
        ))?;
        let panels = body.split_evenly((runs.len().max(1), 1));
        for (panel, r) in panels.iter().zip(&runs) {
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!(
                        "{} ({}{})",
                        r.policy,
                        r.vm,
                        if r.converged {
                            ""
                        } else {
                            ", did not converge"
                        }
                    ),
                    ("sans-serif", 14),
                )
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(55)
                .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .y_desc("Mbit/s")
                .x_label_formatter(&|x| format!("{x:.0} s"))
                .draw()?;
            let shade = |pred: &dyn Fn(&crate::runner::Second) -> bool, c: RGBColor| {
                r.timeline
                    .iter()
                    .filter(|s| pred(s))
                    .map(move |s| Rectangle::new([(s.t_s, 0.0), (s.t_s + 1.0, y_max)], c.filled()))
                    .collect::<Vec<_>>()
            };
            chart.draw_series(shade(&|s| s.postcopy, RGBColor(225, 210, 245)))?;
            chart.draw_series(shade(&|s| s.throttle_pct > 0, RGBColor(255, 243, 190)))?;
            chart.draw_series(LineSeries::new(
                r.timeline.iter().map(|s| (s.t_s + 0.5, s.migration_mbit)),
                RGBColor(255, 127, 14).stroke_width(2),
            ))?;
            chart.draw_series(LineSeries::new(
                r.timeline.iter().map(|s| (s.t_s + 0.5, s.app_mbit)),
                RGBColor(31, 119, 180).stroke_width(2),
            ))?;
            if r.reserve_mbit > 0.0 {
                chart.draw_series(DashedLineSeries::new(
                    vec![(0.0, r.reserve_mbit), (t_max, r.reserve_mbit)],
                    6,
                    4,
                    RGBColor(40, 40, 40).stroke_width(1),
                ))?;
            }
            for (k, (t, what)) in r.events.iter().enumerate().take(8) {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(*t, 0.0), (*t, y_max)],
                    RGBColor(120, 120, 120).stroke_width(1),
                )))?;
                let text: String = what.chars().take(40).collect();
                // Labels near the right edge go left of their line.
                let x = if *t > t_max * 0.8 {
                    *t - t_max * (0.006 * text.len() as f64 + 0.005)
                } else {
                    *t + t_max * 0.005
                };
                chart.draw_series(std::iter::once(Text::new(
                    text,
                    (x, y_max * (0.95 - 0.1 * (k % 4) as f64)),
                    ("sans-serif", 11).into_font().color(&RGBColor(80, 80, 80)),
                )))?;
            }
        }
        root.present()?;
    }
    Ok(svg)
}

/// Writes `<dir>/<scenario>.{md,json,svg}` and `<scenario>-timeline.svg`.
pub fn write(dir: &Path, rep: &ScenarioReport) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("{}.json", rep.stem()));
    std::fs::write(&json, serde_json::to_string_pretty(rep)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let mut written = vec![json];
    written.extend(render(dir, rep)?);
    Ok(written)
}

/// Writes the pages made from a report (markdown, scatter, timeline), so
/// that they can be made again from the committed JSON alone.
pub fn render(dir: &Path, rep: &ScenarioReport) -> anyhow::Result<Vec<PathBuf>> {
    let stem = rep.stem();
    let files = [
        (dir.join(format!("{stem}.md")), markdown(rep)),
        (dir.join(format!("{stem}.svg")), scatter_svg(rep)?),
        (dir.join(format!("{stem}-timeline.svg")), timeline_svg(rep)?),
    ];
    let mut written = Vec::new();
    for (path, text) in files {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The files in `dir` whose extension is `ext`, sorted by name.
pub fn files_with_extension(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every scenario report (`*.json`) in `dir`.
pub fn load_all(dir: &Path) -> anyhow::Result<Vec<ScenarioReport>> {
    let files = files_with_extension(dir, "json")?;
    files
        .iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            ScenarioReport::parse(&text, f)
        })
        .collect()
}

/// The index page: one row per scenario and policy, from the reports alone,
/// plus the scenarios not yet run.
/// A summary row's cells: policy | converged/runs | time | SLA p5 |
/// downtime | paused.
fn summary_cells(s: &PolicySummary) -> String {
    format!(
        "{} | {}/{} | {} | {} | {} | {}",
        s.policy,
        s.converged,
        s.runs,
        fmt_spread(s.time_s, 1),
        fmt_spread(s.sla_p5, 2),
        fmt_spread(s.downtime_ms, 0),
        fmt_spread(s.paused_ms, 0),
    )
}

/// Where README.md's results table begins and ends; `cargo xtask bench
/// report` rewrites what is between from the committed reports.
pub const README_BEGIN: &str = "<!-- results: generated by `cargo xtask bench report` -->";
pub const README_END: &str = "<!-- end of results -->";

/// README's results table: one row per scenario and policy, the scenario
/// linked to its page in `docs/bench`.
pub fn readme_table(reports: &[ScenarioReport]) -> String {
    let mut out = String::from(
        "| scenario (floor; guest) | policy | converged | time s | SLA p5 | downtime ms | paused ms |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for rep in reports {
        for (i, s) in rep.summary().iter().enumerate() {
            let name = if i == 0 {
                format!(
                    "[{}](docs/bench/{}.md) ({}; {})",
                    rep.scenario,
                    rep.stem(),
                    rep.physical_floor_s
                        .map_or("no floor".into(), |f| format!("{f:.0} s")),
                    vcpus(rep.vcpus)
                )
            } else {
                String::new()
            };
            out.push_str(&format!("| {name} | {} |\n", summary_cells(s)));
        }
    }
    out
}

/// "1 vCPU", "2 vCPUs".
fn vcpus(n: u32) -> String {
    format!("{n} vCPU{}", if n == 1 { "" } else { "s" })
}

/// `text` with what lies between the markers `begin` and `end` replaced by
/// `block`; None when a marker is missing.
pub fn with_block(text: &str, begin: &str, end: &str, block: &str) -> Option<String> {
    let from = text.find(begin)? + begin.len();
    let to = from + text[from..].find(end)?;
    Some(format!("{}\n{block}{}", &text[..from], &text[to..]))
}

/// Where README.md's scorecard begins and ends (rewritten like the
/// results table).
pub const SCORECARD_BEGIN: &str = "<!-- scorecard: generated by `cargo xtask bench report` -->";
pub const SCORECARD_END: &str = "<!-- end of scorecard -->";

/// The policy the agent runs unless told otherwise, judged by the
/// scorecard.
pub const VMBW_POLICY: &str = "nrac+escalate";

/// The median SLA p5 at or above which a policy keeps the promise.
pub const SLA_KEPT: f64 = 0.95;

/// How a policy's runs timed the application's goodput: `arrival` (kernel
/// receive timestamps), `reads` (runs that predate them), `mixed`, or `–`
/// without an application.
fn timed_by(rep: &ScenarioReport, policy: &str) -> &'static str {
    let runs: Vec<&RunResult> = rep
        .results
        .iter()
        .filter(|r| r.policy == policy && r.sla_p5.is_some())
        .collect();
    let stamped = runs
        .iter()
        .filter(|r| r.timeline.iter().any(|s| s.app_read_mbit.is_some()))
        .count();
    match (runs.len(), stamped) {
        (0, _) => "–",
        (n, k) if k == n => "arrival",
        (_, 0) => "reads",
        _ => "mixed",
    }
}

/// vmbw's default policy against what an operator already has, one row per
/// report that ran it: its runs converged, time and × the floor, SLA p5,
/// QEMU's downtime and the guest's pause, and the fastest peer policy
/// (stock QEMU or a platform's option) that converged in every run and,
/// where there is an application, kept the promise (median SLA p5 >=
/// [`SLA_KEPT`]), with vmbw's time over it.
pub fn scorecard(reports: &[ScenarioReport]) -> String {
    let mut out = format!(
        "| scenario | `{VMBW_POLICY}` converged | time s | × floor | SLA p5 | downtime ms | paused ms | \
         fastest peer that converges every run (and keeps SLA p5 ≥ {SLA_KEPT}) | vmbw / that peer | \
         goodput timed by | ran at |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for rep in reports {
        let sums = rep.summary();
        let Some(v) = sums.iter().find(|s| s.policy == VMBW_POLICY) else {
            continue;
        };
        let median = |s: Option<(f64, f64, f64)>| s.map(|(m, _, _)| m);
        let app = v.sla_p5.is_some();
        let peer = sums
            .iter()
            .filter(|s| !matches!(s.family, Family::Vmbw))
            .filter(|s| s.runs > 0 && s.converged == s.runs)
            .filter(|s| !app || median(s.sla_p5).is_some_and(|m| m >= SLA_KEPT))
            .filter_map(|s| Some((s, median(s.time_s)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let time = median(v.time_s);
        let commit = &rep
            .policy_stamps
            .get(VMBW_POLICY)
            .unwrap_or(&rep.stamp)
            .commit;
        out.push_str(&format!(
            "| [{}](docs/bench/{}.md) | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | `{}` |\n",
            rep.scenario,
            rep.stem(),
            v.converged,
            v.runs,
            fmt_spread(v.time_s, 1),
            match (time, rep.physical_floor_s) {
                (Some(t), Some(f)) if f > 0.0 => format!("{:.2}", t / f),
                _ => "–".into(),
            },
            fmt_spread(v.sla_p5, 2),
            fmt_spread(v.downtime_ms, 0),
            fmt_spread(v.paused_ms, 0),
            match peer {
                Some((p, t)) => format!("`{}`, {t:.1} s", p.policy),
                None if app => "none".into(),
                None => "none converges".into(),
            },
            match (peer, time) {
                (Some((_, p)), Some(t)) if p > 0.0 => format!("{:.2}", t / p),
                _ => "–".into(),
            },
            timed_by(rep, VMBW_POLICY),
            commit.get(..12).unwrap_or(commit),
        ));
    }
    out
}

pub fn index(reports: &[ScenarioReport], scenarios: &[(PathBuf, Scenario)]) -> String {
    let mut out = String::from(
        "# Migration benchmark: per-scenario reports\n\n\
         Generated by `cargo xtask bench report` from the JSON files beside it; each scenario \
         is run by `cargo xtask bench migration --scenario tests/scenarios/FILE` and stamped with \
         the commit and date it ran at. Medians, (min–max) over the repetitions. SLA p5: 5th \
         percentile over the migration's seconds of application goodput / min(demand, \
         reservation). Floor: RAM / (link − reservation). Downtime: QEMU's own figure (the \
         source's view); paused: the source's `STOP` event to the destination's `RESUME`, the \
         same yardstick for every policy (– in reports run before it was measured).\n\n\
         | scenario | ran at | vCPUs | floor s | policy | converged | time s | SLA p5 | downtime ms | paused ms |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for rep in reports {
        let stem = rep.stem();
        for (i, s) in rep.summary().iter().enumerate() {
            let (name, at, vcpus, floor) = if i == 0 {
                (
                    format!("[{}]({stem}.md)", rep.scenario),
                    format!(
                        "`{}` {}",
                        rep.stamp.commit,
                        rep.stamp.date.get(..10).unwrap_or("")
                    ),
                    rep.vcpus.to_string(),
                    rep.physical_floor_s
                        .map_or("–".into(), |f| format!("{f:.0}")),
                )
            } else {
                Default::default()
            };
            out.push_str(&format!(
                "| {name} | {at} | {vcpus} | {floor} | {} |\n",
                summary_cells(s)
            ));
        }
    }
    let missing: Vec<String> = scenarios
        .iter()
        .filter(|(_, sc)| !reports.iter().any(|r| r.scenario == sc.name))
        .map(|(p, sc)| {
            format!(
                "- `{}` ({}): {} policies × {} repetitions",
                p.display(),
                sc.name,
                sc.policies.len(),
                sc.repetitions
            )
        })
        .collect();
    if !missing.is_empty() {
        out.push_str("\n## Not run yet\n\n");
        out.push_str(&missing.join("\n"));
        out.push('\n');
        let reproduced = |n: &str| n.starts_with("seed000-") || n.starts_with("seed004-");
        if scenarios.iter().any(|(_, sc)| reproduced(&sc.name)) {
            out.push_str(
                "\nThe `seed000-*` and `seed004-*` scenarios are two seed papers' setups: \
                 `sudo cargo xtask bench reproduce --seed 000|004 [--workloads N]` runs the \
                 missing ones a few at a time and publishes each report here as it finishes.\n",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(stem: &str) -> ScenarioReport {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench");
        ScenarioReport::load(&dir, stem)
            .expect("readable")
            .expect("a committed report")
    }

    #[test]
    fn the_page_says_how_goodput_was_timed_and_how_far_reads_lagged() {
        let mut rep = committed("onoff-30mbit-r10");
        rep.results.truncate(1);
        for s in &mut rep.results[0].timeline {
            s.app_read_mbit = None;
        }
        assert!(
            goodput_timing(&rep).contains("predate"),
            "{}",
            goodput_timing(&rep)
        );
        let n = rep.results[0].timeline.len();
        assert!(n > 2);
        for (i, s) in rep.results[0].timeline.iter_mut().enumerate() {
            s.app_mbit = 10.0;
            // One second read 1.3 Mbit/s late, repaid in the next.
            s.app_read_mbit = Some(match i {
                1 => 8.7,
                2 => 11.3,
                _ => 10.0,
            });
        }
        let line = goodput_timing(&rep);
        assert!(line.contains("every run"), "{line}");
        assert!(line.contains("2 seconds would differ"), "{line}");
        assert!(line.contains("at most 1.30 Mbit/s"), "{line}");
    }

    #[test]
    fn readme_s_results_table_is_the_committed_reports() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let reports = load_all(&root.join("docs/bench")).expect("the committed reports");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        let want = with_block(&readme, README_BEGIN, README_END, &readme_table(&reports))
            .and_then(|r| with_block(&r, SCORECARD_BEGIN, SCORECARD_END, &scorecard(&reports)))
            .expect("README has the results and scorecard markers");
        assert!(
            want == readme,
            "README's results table or scorecard is out of step with docs/bench/*.json: run \
             `cargo xtask bench report`"
        );
    }

    /// The scorecard's peer is the fastest that converges every run and,
    /// with an application, keeps the promise; vmbw's time is set against
    /// it and against the floor.
    #[test]
    fn the_scorecard_sets_vmbw_against_the_fastest_peer_that_keeps_the_promise() {
        let mut rep = committed("onoff-30mbit-r10");
        rep.policy_stamps.clear();
        rep.stamp.commit = "0123456789abcdef".into();
        rep.physical_floor_s = Some(50.0);
        // (converged, time, SLA p5) of every run of a policy.
        let set = |rep: &mut ScenarioReport, policy: &str, ok: bool, t: f64, sla: f64| {
            for r in rep.results.iter_mut().filter(|r| r.policy == policy) {
                r.converged = ok;
                r.total_s = t;
                r.makespan_s = t;
                r.sla_p5 = Some(sla);
            }
        };
        set(&mut rep, "default", true, 80.0, 0.97);
        set(&mut rep, "static:20mbit", false, 120.0, 0.99);
        set(&mut rep, "autoconverge", true, 70.0, 0.90);
        set(&mut rep, "postcopy-after:19", true, 40.0, 0.0);
        set(&mut rep, "nrac", true, 30.0, 0.99);
        set(&mut rep, VMBW_POLICY, true, 60.0, 0.99);
        let card = scorecard(std::slice::from_ref(&rep));
        // Post-copy and auto-converge are faster but break the promise;
        // nrac is vmbw's own, not a peer.
        assert!(
            card.contains("| 3/3 | 60.0 | 1.20 | 0.99 |")
                && card.contains("| `default`, 80.0 s | 0.75 | arrival | `0123456789ab` |"),
            "{card}"
        );
        // Nobody keeps it: said so, no ratio.
        set(&mut rep, "default", true, 80.0, 0.90);
        let card = scorecard(std::slice::from_ref(&rep));
        assert!(card.contains("| none | – |"), "{card}");
        // Without an application the fastest converging peer counts.
        for r in &mut rep.results {
            r.sla_p5 = None;
        }
        let card = scorecard(std::slice::from_ref(&rep));
        assert!(
            card.contains("| `postcopy-after:19`, 40.0 s | 1.50 | – |"),
            "{card}"
        );
    }

    #[test]
    fn merging_replaces_only_the_rerun_policy_and_keeps_both_stamps() {
        let mut old = committed("onoff-30mbit-r10");
        // As if every policy ran at once (the committed one may be merged).
        old.policy_stamps.clear();
        let others: Vec<String> = old
            .results
            .iter()
            .filter(|r| r.policy != "nrac")
            .map(|r| format!("{} {} {}", r.policy, r.repetition, r.total_s))
            .collect();
        // Two fresh nrac runs with a marker time.
        let mut fresh: Vec<RunResult> = old
            .results
            .iter()
            .filter(|r| r.policy == "nrac")
            .take(2)
            .cloned()
            .collect();
        for r in &mut fresh {
            r.total_s = 12.345;
        }
        let stamp = Stamp {
            commit: "abcdef012345".into(),
            date: "2026-11-30T10:00:00Z".into(),
            qemu: "QEMU emulator version 10.0.2".into(),
            kernel: "6.18".into(),
        };
        let all: Vec<String> = old.policies.clone();
        let first_stamp = old.stamp.commit.clone();
        let merged = old.merged(&all, &["nrac".to_owned()], stamp, fresh);
        let nrac: Vec<&RunResult> = merged
            .results
            .iter()
            .filter(|r| r.policy == "nrac")
            .collect();
        assert_eq!(nrac.len(), 2);
        assert!(nrac.iter().all(|r| r.total_s == 12.345));
        let kept: Vec<String> = merged
            .results
            .iter()
            .filter(|r| r.policy != "nrac")
            .map(|r| format!("{} {} {}", r.policy, r.repetition, r.total_s))
            .collect();
        assert_eq!(kept, others);
        assert_eq!(merged.stamp.commit, first_stamp);
        assert_eq!(merged.policies, all);
        let page = markdown(&merged);
        assert!(
            page.contains("`nrac` re-run at commit `abcdef012345`"),
            "{page}"
        );
        // Every other policy re-run later: the first stamp dates nothing.
        let later = |commit: &str, date: &str| Stamp {
            commit: commit.into(),
            date: date.into(),
            ..merged.stamp.clone()
        };
        let rest: Vec<String> = all.iter().filter(|p| *p != "nrac").cloned().collect();
        let rerun = |ps: &[String]| -> Vec<RunResult> {
            merged
                .results
                .iter()
                .filter(|r| ps.contains(&r.policy))
                .cloned()
                .collect()
        };
        let stamp2 = later("fedcba987654", "2026-11-30T11:00:00Z");
        let again = merged
            .clone()
            .merged(&all, &rest[..1], stamp2.clone(), rerun(&rest[..1]));
        assert_eq!(
            again.stamp.commit, first_stamp,
            "not every policy re-run yet"
        );
        let done = merged
            .clone()
            .merged(&all, &rest, stamp2.clone(), rerun(&rest));
        assert_eq!(done.results.len(), merged.results.len());
        assert_eq!(done.stamp.commit, "abcdef012345");
        assert_eq!(done.policy_stamps.len(), rest.len());
        assert!(done.policy_stamps.values().all(|st| *st == stamp2));
        assert!(!markdown(&done).contains(&first_stamp));
    }
}
