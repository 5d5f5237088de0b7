//! Planner tests from the outside: an independent validator checks plans
//! on many seeded random inventories, and the `vmbw plan` command line is
//! run on the example inventory and on broken ones.
//!
//! The validator reads the inventory JSON itself and recomputes loads,
//! unit costs and communication costs with its own code; it shares nothing
//! with the planner but the index order (inventory order).

use std::{collections::HashMap, path::PathBuf, process::Command};

use serde_json::{Value, json};
use vmbw_plan::{
    inventory::Inventory,
    sicc::{self, Algorithm, ConsolidationConfig, PeakModel},
    vmmcfg::{self, StepKind, VmmCfgConfig, VmmCfgPlan},
};

// ---------------------------------------------------------------- inputs

/// A tiny LCG so the test's inputs do not come from the planner's RNG.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// A random inventory: some hosts overloaded, racks or none, edges inside
/// and across hosts, a few explicit host-pair costs.
fn random_inventory(seed: u64) -> Value {
    let mut r = Lcg(seed.wrapping_mul(0x9E37_79B9).wrapping_add(17));
    let hosts = 3 + r.below(20);
    let vms = hosts * (1 + r.below(6));
    let mut host_vms: Vec<Vec<String>> = vec![Vec::new(); hosts];
    let mut vm_list = Vec::new();
    // Skewed placement so that a few hosts are crowded.
    for j in 0..vms {
        let h = if r.next() < 0.5 {
            r.below(hosts.div_ceil(4))
        } else {
            r.below(hosts)
        };
        host_vms[h].push(format!("v{j}"));
        vm_list.push(json!({"name": format!("v{j}"), "memory": r.range(1.0, 30.0), "net_bps": r.range(0.0, 2e8)}));
    }
    let host_list: Vec<Value> = (0..hosts)
        .map(|h| {
            let capacity = r.range(80.0, 200.0);
            let mut host = json!({
                "name": format!("h{h}"),
                "capacity": capacity,
                "threshold": capacity * r.range(0.5, 1.0),
                "vms": host_vms[h],
            });
            if r.next() < 0.8 {
                host["rack"] = json!(format!("r{}", r.below(3)));
            }
            host
        })
        .collect();
    let mut edges = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..vms * 2 {
        let (a, b) = (r.below(vms), r.below(vms));
        if a != b && seen.insert((a.min(b), a.max(b))) {
            edges.push(
                json!({"a": format!("v{a}"), "b": format!("v{b}"), "weight": r.range(0.0, 50.0)}),
            );
        }
    }
    let mut pairs = Vec::new();
    let mut seen_pairs = std::collections::HashSet::new();
    for _ in 0..hosts / 3 {
        let (a, b) = (r.below(hosts), r.below(hosts));
        if a != b && seen_pairs.insert((a.min(b), a.max(b))) {
            pairs.push(
                json!({"a": format!("h{a}"), "b": format!("h{b}"), "cost": r.range(0.0, 6.0)}),
            );
        }
    }
    json!({
        "version": 1,
        "hosts": host_list,
        "vms": vm_list,
        "edges": edges,
        "unit_costs": {"same_rack": r.range(0.5, 1.5), "cross_rack": r.range(1.5, 4.0), "pairs": pairs},
    })
}

// ------------------------------------------------------------- validator

struct Model {
    capacity: Vec<f64>,
    threshold: Vec<f64>,
    rack: Vec<Option<String>>,
    memory: Vec<f64>,
    home: Vec<usize>,
    edges: Vec<(usize, usize, f64)>,
    same_rack: f64,
    cross_rack: f64,
    pairs: HashMap<(usize, usize), f64>,
}

impl Model {
    fn from_json(v: &Value) -> Self {
        let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
        let vms = v["vms"].as_array().cloned().unwrap_or_default();
        let vm_ix: HashMap<String, usize> = vms
            .iter()
            .enumerate()
            .map(|(i, vm)| (vm["name"].as_str().unwrap_or_default().to_owned(), i))
            .collect();
        let host_ix: HashMap<String, usize> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h["name"].as_str().unwrap_or_default().to_owned(), i))
            .collect();
        let mut home = vec![usize::MAX; vms.len()];
        for (h, host) in hosts.iter().enumerate() {
            for name in host["vms"].as_array().into_iter().flatten() {
                home[vm_ix[name.as_str().unwrap_or_default()]] = h;
            }
        }
        let uc = &v["unit_costs"];
        let pairs = uc["pairs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let (a, b) = (
                    host_ix[p["a"].as_str().unwrap_or_default()],
                    host_ix[p["b"].as_str().unwrap_or_default()],
                );
                ((a.min(b), a.max(b)), p["cost"].as_f64().unwrap_or(f64::NAN))
            })
            .collect();
        Self {
            capacity: hosts
                .iter()
                .map(|h| h["capacity"].as_f64().unwrap_or(f64::NAN))
                .collect(),
            threshold: hosts
                .iter()
                .map(|h| h["threshold"].as_f64().unwrap_or(f64::NAN))
                .collect(),
            rack: hosts
                .iter()
                .map(|h| h["rack"].as_str().map(str::to_owned))
                .collect(),
            memory: vms
                .iter()
                .map(|vm| vm["memory"].as_f64().unwrap_or(f64::NAN))
                .collect(),
            home,
            edges: v["edges"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    (
                        vm_ix[e["a"].as_str().unwrap_or_default()],
                        vm_ix[e["b"].as_str().unwrap_or_default()],
                        e["weight"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect(),
            same_rack: uc["same_rack"].as_f64().unwrap_or(1.0),
            cross_rack: uc["cross_rack"].as_f64().unwrap_or(2.0),
            pairs,
        }
    }

    fn d(&self, p: usize, q: usize) -> f64 {
        if p == q {
            0.0
        } else if let Some(c) = self.pairs.get(&(p.min(q), p.max(q))) {
            *c
        } else if self.rack[p].is_some() && self.rack[p] == self.rack[q] {
            self.same_rack
        } else {
            self.cross_rack
        }
    }

    fn cost(&self, placement: &[usize]) -> f64 {
        self.edges
            .iter()
            .map(|&(a, b, w)| w * self.d(placement[a], placement[b]))
            .sum()
    }

    fn loads(&self, placement: &[usize]) -> Vec<f64> {
        let mut l = vec![0.0; self.capacity.len()];
        for (v, &h) in placement.iter().enumerate() {
            l[h] += self.memory[v];
        }
        l
    }

    fn overloaded(&self, placement: &[usize]) -> Vec<bool> {
        self.loads(placement)
            .iter()
            .zip(&self.threshold)
            .map(|(l, t)| l > t)
            .collect()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

fn population_std(xs: &[f64]) -> f64 {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64).sqrt()
}

/// Checks a VMM-CFG plan against the model; returns a description of the
/// first violation.
fn validate_vmmcfg(m: &Model, plan: &VmmCfgPlan) -> Result<(), String> {
    let over_before = m.overloaded(&m.home);
    let placement = &plan.placement;
    if placement.len() != m.home.len() {
        return Err("placement does not cover every VM".into());
    }
    for (v, &h) in placement.iter().enumerate() {
        if h != m.home[v] {
            if !over_before[m.home[v]] {
                return Err(format!(
                    "VM {v} moved off host {} which was not overloaded",
                    m.home[v]
                ));
            }
            if over_before[h] {
                return Err(format!("VM {v} moved onto host {h}, which was overloaded"));
            }
        }
    }
    let moved: Vec<(usize, usize, usize)> = plan
        .moves
        .iter()
        .map(|mv| (mv.vm, mv.from, mv.to))
        .collect();
    let expected: Vec<(usize, usize, usize)> = (0..placement.len())
        .filter(|&v| placement[v] != m.home[v])
        .map(|v| (v, m.home[v], placement[v]))
        .collect();
    if moved != expected {
        return Err("moves do not match the placement".into());
    }
    let loads = m.loads(placement);
    for h in 0..loads.len() {
        let received = placement
            .iter()
            .enumerate()
            .any(|(v, &p)| p == h && m.home[v] != h);
        if (received || !over_before[h]) && loads[h] > m.threshold[h] + 1e-9 {
            return Err(format!(
                "host {h} ends at {} above its threshold {}",
                loads[h], m.threshold[h]
            ));
        }
        let stuck = plan.unplaced.iter().any(|&v| m.home[v] == h);
        if over_before[h] && !stuck && loads[h] > m.threshold[h] + 1e-9 {
            return Err(format!(
                "overloaded host {h} still overloaded with nothing unplaced"
            ));
        }
    }
    let over_after = m.overloaded(placement).iter().filter(|o| **o).count();
    if over_after != plan.after.overloaded
        || over_before.iter().filter(|o| **o).count() != plan.before.overloaded
    {
        return Err("reported overloaded-host counts are wrong".into());
    }
    if !close(population_std(&loads), plan.after.load_std)
        || !close(population_std(&m.loads(&m.home)), plan.before.load_std)
    {
        return Err("reported load standard deviations are wrong".into());
    }
    if !close(m.cost(&m.home), plan.cost_before) || !close(m.cost(placement), plan.cost_after) {
        return Err(format!(
            "reported costs {} / {} are wrong",
            plan.cost_before, plan.cost_after
        ));
    }
    // Replay the game: each step's cost is exact, merges and splits never
    // raise it, and no under-loaded host ever goes over its threshold.
    let mut state = m.home.clone();
    let mut last = f64::INFINITY;
    for (i, step) in plan.trace.iter().enumerate() {
        for (members, host) in &step.coalitions {
            for &v in members {
                state[v] = *host;
            }
        }
        let c = m.cost(&state);
        if !close(c, step.cost) {
            return Err(format!(
                "step {i}: reported cost {} but the placement costs {c}",
                step.cost
            ));
        }
        if step.kind != StepKind::Place && c > last + 1e-9 * (1.0 + last.abs()) {
            return Err(format!(
                "step {i} ({:?}) raised the cost from {last} to {c}",
                step.kind
            ));
        }
        let l = m.loads(&state);
        if let Some(h) = (0..l.len()).find(|&h| !over_before[h] && l[h] > m.threshold[h] + 1e-9) {
            return Err(format!("step {i} overloads host {h}"));
        }
        last = c;
    }
    if &state != placement {
        return Err("replaying the trace does not give the plan's placement".into());
    }
    Ok(())
}

#[test]
fn vmmcfg_plans_of_random_inventories_pass_the_validator() {
    let mut moved = 0;
    let mut merges = 0;
    for seed in 0..300 {
        let raw = random_inventory(seed);
        let inv =
            Inventory::from_json(&raw.to_string()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let plan = vmmcfg::plan(
            &inv,
            &VmmCfgConfig {
                seed,
                ..VmmCfgConfig::default()
            },
        );
        if let Err(why) = validate_vmmcfg(&Model::from_json(&raw), &plan) {
            panic!("seed {seed}: {why}");
        }
        moved += plan.moves.len();
        merges += plan.merges;
    }
    // The inputs must exercise the planner, or the test proves nothing.
    assert!(moved > 300, "only {moved} moves over 300 inventories");
    assert!(merges > 0, "no merge happened in 300 inventories");
}

#[test]
fn vmmcfg_plans_of_the_paper_scenario_pass_the_validator() {
    for (hosts, seed) in [(10, 1), (40, 2), (100, 3), (250, 4)] {
        let file = vmbw_plan::sim::vmmcfg_inventory(hosts, 3 * hosts, seed);
        let raw = serde_json::to_value(&file).unwrap_or_default();
        let inv = Inventory::from_file(file).unwrap_or_else(|e| panic!("{hosts} hosts: {e}"));
        let plan = vmmcfg::plan(
            &inv,
            &VmmCfgConfig {
                seed,
                ..VmmCfgConfig::default()
            },
        );
        validate_vmmcfg(&Model::from_json(&raw), &plan)
            .unwrap_or_else(|why| panic!("{hosts} hosts: {why}"));
        assert!(plan.before.overloaded > 0 && plan.after.overloaded < plan.before.overloaded);
    }
}

#[test]
fn the_validator_catches_a_broken_plan() {
    // Guard against a validator that accepts anything.
    let raw = random_inventory(5);
    let inv = Inventory::from_json(&raw.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::from_json(&raw);
    let mut plan = vmmcfg::plan(&inv, &VmmCfgConfig::default());
    assert!(validate_vmmcfg(&model, &plan).is_ok());
    let mut bad = plan.clone();
    bad.cost_after += 1.0;
    assert!(validate_vmmcfg(&model, &bad).is_err());
    // Pile every VM on host 0.
    plan.placement.iter_mut().for_each(|h| *h = 0);
    assert!(validate_vmmcfg(&model, &plan).is_err());
}

/// Checks a consolidation: a partition of the VMs, PRU as the model says,
/// servers packed within capacity, and (ICMA/SICC) nothing left to merge.
fn validate_consolidation(
    series: &[Vec<f64>],
    c: &sicc::Consolidation,
    cfg: &ConsolidationConfig,
) -> Result<(), String> {
    let mut count = vec![0; series.len()];
    let sum_of = |members: &[usize]| -> Vec<f64> {
        (0..series[0].len())
            .map(|t| members.iter().map(|&m| series[m][t]).sum())
            .collect()
    };
    let peak = |s: &[f64]| s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let mut prus = Vec::new();
    for cvm in &c.cvms {
        for &m in &cvm.members {
            count[m] += 1;
        }
        let s = sum_of(&cvm.members);
        let pru = match (cvm.members.len(), cfg.peak_model) {
            (1, _) | (_, PeakModel::Max) => peak(&s),
            (_, PeakModel::Mean) => mean(&s),
        };
        if !close(pru, cvm.pru) {
            return Err(format!(
                "CVM {:?}: PRU {} but recomputed {pru}",
                cvm.members, cvm.pru
            ));
        }
        if cvm.members.len() > 1 && pru > cfg.cvm_limit + 1e-9 {
            return Err(format!(
                "CVM {:?} has PRU {pru} over the limit",
                cvm.members
            ));
        }
        prus.push(pru);
    }
    if count.iter().any(|&k| k != 1) {
        return Err("the CVMs are not a partition of the VMs".into());
    }
    let mut on_server = vec![0; c.cvms.len()];
    for server in &c.servers {
        let packed: f64 = server.cvms.iter().map(|&k| prus[k]).sum();
        if packed > cfg.server_capacity + 1e-9 {
            return Err(format!("a server is packed to {packed}"));
        }
        server.cvms.iter().for_each(|&k| on_server[k] += 1);
    }
    if on_server.iter().any(|&k| k != 1) {
        return Err("the servers are not a partition of the CVMs".into());
    }
    let lower_bound = (prus.iter().sum::<f64>() / cfg.server_capacity - 1e-9).ceil() as usize;
    if c.servers.len() < lower_bound {
        return Err("fewer servers than the volume allows".into());
    }
    if c.algorithm == Algorithm::Ffd && c.cvms.len() != series.len() {
        return Err("FFD must not consolidate".into());
    }
    if c.algorithm != Algorithm::Ffd {
        for a in 0..c.cvms.len() {
            for b in a + 1..c.cvms.len() {
                let (sa, sb) = (sum_of(&c.cvms[a].members), sum_of(&c.cvms[b].members));
                let r = pearson(&sa, &sb);
                let merged: Vec<f64> = sa.iter().zip(&sb).map(|(x, y)| x + y).collect();
                let pru = match cfg.peak_model {
                    PeakModel::Mean => mean(&merged),
                    PeakModel::Max => peak(&merged),
                };
                // Skip the f32 rounding band around the threshold.
                if r < cfg.corr_threshold - 1e-3 && pru <= cfg.cvm_limit - 1e-6 {
                    return Err(format!("CVMs {a} and {b} (r = {r}) could still merge"));
                }
            }
        }
    }
    Ok(())
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
    if sxx <= 1e-12 || syy <= 1e-12 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

#[test]
fn consolidations_of_random_populations_pass_the_validator() {
    let mut merged = 0;
    for seed in 0..40 {
        let mut r = Lcg(seed + 1000);
        let n = 5 + r.below(60);
        let len = 48 + r.below(100);
        let series: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let (mu, amp, ph) = (
                    r.range(5.0, 60.0),
                    r.range(0.0, 30.0),
                    r.range(0.0, std::f64::consts::TAU),
                );
                (0..len)
                    .map(|t| {
                        (mu + amp * (std::f64::consts::TAU * t as f64 / len as f64 + ph).sin()
                            + r.range(-5.0, 5.0))
                        .clamp(0.0, 100.0)
                    })
                    .collect()
            })
            .collect();
        for model in [PeakModel::Mean, PeakModel::Max] {
            let cfg = ConsolidationConfig {
                peak_model: model,
                server_capacity: 100.0 * (2 + r.below(10)) as f64,
                ..ConsolidationConfig::default()
            };
            for algo in [Algorithm::Ffd, Algorithm::Icma, Algorithm::Sicc] {
                let c = sicc::consolidate(&series, algo, &cfg).unwrap_or_else(|e| panic!("{e}"));
                validate_consolidation(&series, &c, &cfg)
                    .unwrap_or_else(|why| panic!("seed {seed} {algo:?}: {why}"));
                merged += c.coefficient_sequence.len();
            }
        }
    }
    assert!(
        merged > 100,
        "only {merged} merges: the populations do not exercise ICMA"
    );
}

// ----------------------------------------------------------- command line

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/plan-inventory.json")
}

fn vmbw(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmbw"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run vmbw: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch file unique to this process and name, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, contents: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("vmbw-plan-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        Self(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fixture_json() -> Value {
    let text = std::fs::read_to_string(fixture()).unwrap_or_else(|e| panic!("fixture: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture: {e}"))
}

#[test]
fn cli_plans_the_example_inventory_and_its_json_checks_out() {
    let path = fixture();
    let (ok, stdout, stderr) = vmbw(&[
        "plan",
        "--inventory",
        path.to_str().unwrap_or_default(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let plan: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let raw = fixture_json();
    let model = Model::from_json(&raw);
    let names: Vec<&str> = raw["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let hosts: Vec<&str> = raw["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["name"].as_str())
        .collect();
    let mut placement = model.home.clone();
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    assert!(!moves.is_empty());
    for mv in &moves {
        let v = names
            .iter()
            .position(|n| Some(*n) == mv["vm"].as_str())
            .unwrap_or(usize::MAX);
        let to = hosts
            .iter()
            .position(|n| Some(*n) == mv["to"].as_str())
            .unwrap_or(usize::MAX);
        assert_eq!(Some(hosts[model.home[v]]), mv["from"].as_str());
        placement[v] = to;
    }
    let over: usize = model.overloaded(&placement).iter().filter(|o| **o).count();
    assert_eq!(
        plan["overloaded_before"],
        json!(model.overloaded(&model.home).iter().filter(|o| **o).count())
    );
    assert_eq!(plan["overloaded_after"], json!(over));
    assert_eq!(over, 0);
    assert!(close(
        plan["cost_after"].as_f64().unwrap_or(f64::NAN),
        model.cost(&placement)
    ));
    // Non-network-intensive VMs migrate first.
    let intensive: Vec<bool> = moves
        .iter()
        .map(|m| m["network_intensive"] == json!(true))
        .collect();
    assert!(intensive.windows(2).all(|w| !w[0] || w[1]), "{intensive:?}");
    assert!(
        intensive.contains(&true) && intensive.contains(&false),
        "fixture should show both kinds"
    );
}

#[test]
fn cli_emits_kubevirt_migrations_in_order() {
    let path = fixture();
    let (ok, stdout, stderr) = vmbw(&[
        "plan",
        "--inventory",
        path.to_str().unwrap_or_default(),
        "--emit",
        "vmim",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("VMM-CFG plan"),
        "the plan goes to stderr: {stderr}"
    );
    let docs: Vec<&str> = stdout
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .collect();
    let raw = fixture_json();
    let vms = raw["vms"].as_array().cloned().unwrap_or_default();
    let (_, json_out, _) = vmbw(&[
        "plan",
        "--inventory",
        path.to_str().unwrap_or_default(),
        "--json",
    ]);
    let plan: Value = serde_json::from_str(json_out.trim()).unwrap_or_default();
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    assert_eq!(docs.len(), moves.len());
    let field = |doc: &str, key: &str| -> Option<String> {
        doc.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    let mut seen_intensive = false;
    for (i, (doc, mv)) in docs.iter().zip(&moves).enumerate() {
        assert_eq!(field(doc, "apiVersion:").as_deref(), Some("kubevirt.io/v1"));
        assert_eq!(
            field(doc, "kind:").as_deref(),
            Some("VirtualMachineInstanceMigration")
        );
        let vmi = field(doc, "vmiName:").unwrap_or_default();
        assert_eq!(Some(vmi.as_str()), mv["vm"].as_str());
        assert_eq!(
            field(doc, "kubernetes.io/hostname:").as_deref(),
            mv["to"].as_str()
        );
        assert_eq!(field(doc, "vmbw.io/plan-step:"), Some((i + 1).to_string()));
        let vm = vms
            .iter()
            .find(|v| v["name"].as_str() == Some(vmi.as_str()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            field(doc, "namespace:").as_deref(),
            vm["namespace"].as_str()
        );
        let intensive = vm["net_bps"].as_f64().unwrap_or(0.0)
            > raw["network_intensive_bps"].as_f64().unwrap_or(1e8);
        assert_eq!(
            field(doc, "vmbw.io/network-intensive:"),
            Some(intensive.to_string())
        );
        assert!(
            !seen_intensive || intensive,
            "a quiet VM after a network-intensive one"
        );
        seen_intensive |= intensive;
    }
    let (ok, stdout, _) = vmbw(&[
        "plan",
        "--inventory",
        path.to_str().unwrap_or_default(),
        "--emit",
        "vmim",
        "--no-target-node",
    ]);
    assert!(ok && !stdout.contains("addedNodeSelector") && stdout.contains("vmiName"));
}

#[test]
fn cli_consolidates_the_example_inventory() {
    let path = fixture();
    let n = fixture_json()["vms"].as_array().map_or(0, Vec::len);
    for algo in ["sicc", "icma", "ffd"] {
        let (ok, stdout, stderr) = vmbw(&[
            "plan",
            "--inventory",
            path.to_str().unwrap_or_default(),
            "--algo",
            algo,
            "--json",
        ]);
        assert!(ok, "{algo}: {stderr}");
        let v: Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{algo}: {e}"));
        let members: usize = v["placement"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["cvms"].as_array().cloned().unwrap_or_default())
            .map(|c| c.as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(members, n, "{algo}: every VM placed once");
        assert_eq!(v["algorithm"], json!(algo));
    }
    let (ok, _, stderr) = vmbw(&[
        "plan",
        "--inventory",
        path.to_str().unwrap_or_default(),
        "--algo",
        "sicc",
        "--emit",
        "vmim",
    ]);
    assert!(
        !ok && stderr.contains("--emit vmim needs a move plan"),
        "{stderr}"
    );
}

#[test]
fn cli_names_the_offending_entry_of_a_bad_inventory() {
    let base = fixture_json();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "edge",
            Box::new(|v| v["edges"][2]["b"] = json!("db-9")),
            "edge #2 (api-1 -- db-9) names VM `db-9`",
        ),
        (
            "threshold",
            Box::new(|v| v["hosts"][1]["threshold"] = json!(500)),
            "host `node-b`: threshold is 500",
        ),
        (
            "twice",
            Box::new(|v| v["hosts"][4]["vms"] = json!(["ml-1"])),
            "VM `ml-1` is listed on both host `node-e` and host `node-f`",
        ),
        (
            "series",
            Box::new(|v| v["vms"][3]["utilisation"][5] = json!(-1)),
            "VM `db-1`: utilisation sample #5 is -1",
        ),
        (
            "field",
            Box::new(|v| v["vms"][0]["memroy"] = json!(3)),
            "unknown field `memroy`",
        ),
    ];
    for (name, edit, expected) in cases {
        let mut doc = base.clone();
        edit(&mut doc);
        let file = Scratch::new(name, &doc.to_string());
        let (ok, _, stderr) = vmbw(&["plan", "--inventory", file.path()]);
        assert!(!ok, "{name}: a bad inventory must fail");
        assert!(
            stderr.contains(expected),
            "{name}: `{expected}` not in {stderr}"
        );
    }
    let (ok, _, stderr) = vmbw(&["plan", "--inventory", "/nonexistent/inventory.json"]);
    assert!(
        !ok && stderr.contains("/nonexistent/inventory.json"),
        "{stderr}"
    );
}
