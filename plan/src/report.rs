//! Renderings of plans: human-readable text, JSON for tools, and KubeVirt
//! `VirtualMachineInstanceMigration` manifests for the moves.
//!
//! Manifests (`kubevirt.io/v1`): one per move, `spec.vmiName` the VM, in
//! the VM's namespace. `spec.addedNodeSelector` with
//! `kubernetes.io/hostname: <target>` pins the planned target host; that
//! field exists from KubeVirt v1.6 on, so it can be left out for older
//! clusters (the scheduler then picks the target). The documents come in
//! the order they should run: VMs that are not network-intensive first
//! (NRAC, the NRAC paper §5: their migrations converge quickly and free room;
//! a network-intensive VM keeps its application bandwidth reserved while
//! it migrates, so it goes last), then by VM name. Each carries its step in
//! the `vmbw.io/plan-step` annotation, since KubeVirt itself runs
//! migrations in parallel: whoever applies them (the host agent's
//! scheduler, or a script waiting for each to succeed) uses the step.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    inventory::Inventory,
    sicc::{Consolidation, ConsolidationConfig, Evaluation, PeakModel},
    vmmcfg::{Move, VmmCfgPlan},
};

/// Why manifests could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("{what} `{name}` cannot be used in a Kubernetes manifest: {rule}")]
    InvalidName {
        what: &'static str,
        name: String,
        rule: &'static str,
    },
}

/// Options of the manifest writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmimOptions {
    /// `metadata.name` prefix of every migration.
    pub name_prefix: String,
    /// Write `spec.addedNodeSelector` (KubeVirt >= 1.6).
    pub target_node_selector: bool,
}

impl Default for VmimOptions {
    fn default() -> Self {
        Self {
            name_prefix: "vmbw-plan".to_owned(),
            target_node_selector: true,
        }
    }
}

/// The moves in execution order: not network-intensive first, then by VM
/// name.
pub fn migration_order(inv: &Inventory, moves: &[Move]) -> Vec<Move> {
    let mut ordered = moves.to_vec();
    ordered.sort_by(|a, b| {
        inv.is_network_intensive(a.vm)
            .cmp(&inv.is_network_intensive(b.vm))
            .then_with(|| inv.vms[a.vm].name.cmp(&inv.vms[b.vm].name))
    });
    ordered
}

/// Multi-document YAML with one `VirtualMachineInstanceMigration` per
/// move, in [`migration_order`].
pub fn vmim_manifests(
    inv: &Inventory,
    moves: &[Move],
    options: &VmimOptions,
) -> Result<String, EmitError> {
    check_subdomain("migration name prefix", &options.name_prefix)?;
    let mut out = String::new();
    for (step, m) in migration_order(inv, moves).iter().enumerate() {
        let vm = &inv.vms[m.vm];
        check_subdomain("VM", &vm.name)?;
        check_label("namespace", &vm.namespace)?;
        let (source, target) = (&inv.hosts[m.from].name, &inv.hosts[m.to].name);
        check_label_value("target host", target)?;
        check_label_value("source host", source)?;
        let mut name = format!("{}-{:04}-{}", options.name_prefix, step + 1, vm.name);
        name.truncate(253);
        let name = name.trim_end_matches(['-', '.']).to_owned();
        let _ = writeln!(out, "---");
        let _ = writeln!(out, "apiVersion: kubevirt.io/v1");
        let _ = writeln!(out, "kind: VirtualMachineInstanceMigration");
        let _ = writeln!(out, "metadata:");
        let _ = writeln!(out, "  name: {}", quote(&name));
        let _ = writeln!(out, "  namespace: {}", quote(&vm.namespace));
        let _ = writeln!(out, "  labels:");
        let _ = writeln!(out, "    app.kubernetes.io/managed-by: \"vmbw\"");
        let _ = writeln!(out, "  annotations:");
        let _ = writeln!(
            out,
            "    vmbw.io/plan-step: {}",
            quote(&(step + 1).to_string())
        );
        let _ = writeln!(
            out,
            "    vmbw.io/network-intensive: {}",
            quote(if inv.is_network_intensive(m.vm) {
                "true"
            } else {
                "false"
            })
        );
        let _ = writeln!(out, "    vmbw.io/source-node: {}", quote(source));
        let _ = writeln!(out, "    vmbw.io/target-node: {}", quote(target));
        let _ = writeln!(out, "spec:");
        let _ = writeln!(out, "  vmiName: {}", quote(&vm.name));
        if options.target_node_selector {
            let _ = writeln!(out, "  addedNodeSelector:");
            let _ = writeln!(out, "    kubernetes.io/hostname: {}", quote(target));
        }
    }
    Ok(out)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn alnum_ends(s: &str) -> bool {
    let ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    ok(s.chars().next()) && ok(s.chars().last())
}

fn check_subdomain(what: &'static str, name: &str) -> Result<(), EmitError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(EmitError::InvalidName {
            what,
            name: name.to_owned(),
            rule: "a DNS-1123 subdomain: at most 253 of a-z 0-9 - ., starting and ending alphanumeric",
        })
    }
}

fn check_label(what: &'static str, name: &str) -> Result<(), EmitError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(EmitError::InvalidName {
            what,
            name: name.to_owned(),
            rule: "a DNS-1123 label: at most 63 of a-z 0-9 -, starting and ending alphanumeric",
        })
    }
}

fn check_label_value(what: &'static str, name: &str) -> Result<(), EmitError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(EmitError::InvalidName {
            what,
            name: name.to_owned(),
            rule: "a label value: at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric",
        })
    }
}

/// Text report of a VMM-CFG plan.
pub fn vmmcfg_text(inv: &Inventory, plan: &VmmCfgPlan) -> String {
    let mut s = String::new();
    let moved: f64 = plan.moves.iter().map(|m| inv.vms[m.vm].memory).sum();
    let _ = writeln!(
        s,
        "VMM-CFG plan: {} hosts, {} VMs, {} edges",
        inv.hosts.len(),
        inv.vms.len(),
        inv.edges.len()
    );
    let _ = writeln!(
        s,
        "overloaded hosts      {:>10} -> {:<10}",
        plan.before.overloaded, plan.after.overloaded
    );
    let _ = writeln!(
        s,
        "load std-dev          {:>10.2} -> {:<10.2} (utilisation {:.2}% -> {:.2}%)",
        plan.before.load_std,
        plan.after.load_std,
        plan.before.utilisation_std_pct,
        plan.after.utilisation_std_pct
    );
    let _ = writeln!(
        s,
        "communication cost v  {:>10.2} -> {:<10.2} (after first mapping {:.2}; {} merges, {} splits, {} rounds{})",
        plan.cost_before,
        plan.cost_after,
        plan.cost_initial_mapping,
        plan.merges,
        plan.splits,
        plan.rounds,
        if plan.converged {
            ", stable"
        } else {
            ", round limit hit"
        }
    );
    let _ = writeln!(
        s,
        "moves: {} VMs, {:.2} memory units",
        plan.moves.len(),
        moved
    );
    if !plan.moves.is_empty() {
        let _ = writeln!(
            s,
            "  {:>4}  {:<24} {:<16} {:<16} {:>8} {:>8}",
            "step", "vm", "from", "to", "memory", "c_j"
        );
        let c_of = |vm: usize| {
            plan.selected
                .iter()
                .find(|x| x.vm == vm)
                .map_or(0.0, |x| x.intra_host_traffic)
        };
        for (i, m) in migration_order(inv, &plan.moves).iter().enumerate() {
            let _ = writeln!(
                s,
                "  {:>4}  {:<24} {:<16} {:<16} {:>8.2} {:>8.2}{}",
                i + 1,
                inv.vms[m.vm].name,
                inv.hosts[m.from].name,
                inv.hosts[m.to].name,
                inv.vms[m.vm].memory,
                c_of(m.vm),
                if inv.is_network_intensive(m.vm) {
                    "  network-intensive"
                } else {
                    ""
                }
            );
        }
    }
    let multi: Vec<&(Vec<usize>, usize)> = plan
        .coalitions
        .iter()
        .filter(|(m, _)| m.len() > 1)
        .collect();
    if !multi.is_empty() {
        let _ = writeln!(s, "coalitions of two or more (moved together):");
        for (members, host) in multi {
            let names: Vec<&str> = members.iter().map(|&v| inv.vms[v].name.as_str()).collect();
            let _ = writeln!(s, "  {} -> {}", names.join(", "), inv.hosts[*host].name);
        }
    }
    if plan.unplaced.is_empty() {
        let _ = writeln!(s, "unplaced: none");
    } else {
        let names: Vec<&str> = plan
            .unplaced
            .iter()
            .map(|&v| inv.vms[v].name.as_str())
            .collect();
        let _ = writeln!(
            s,
            "unplaced (no under-loaded host has room; they stay): {}",
            names.join(", ")
        );
    }
    s
}

/// JSON report of a VMM-CFG plan.
pub fn vmmcfg_json(inv: &Inventory, plan: &VmmCfgPlan) -> Value {
    let host = |h: usize| inv.hosts[h].name.clone();
    let vm = |v: usize| inv.vms[v].name.clone();
    json!({
        "algorithm": "vmm-cfg",
        "hosts": inv.hosts.len(),
        "vms": inv.vms.len(),
        "edges": inv.edges.len(),
        "overloaded_before": plan.before.overloaded,
        "overloaded_after": plan.after.overloaded,
        "load_std_before": plan.before.load_std,
        "load_std_after": plan.after.load_std,
        "utilisation_std_pct_before": plan.before.utilisation_std_pct,
        "utilisation_std_pct_after": plan.after.utilisation_std_pct,
        "cost_before": plan.cost_before,
        "cost_initial_mapping": plan.cost_initial_mapping,
        "cost_after": plan.cost_after,
        "merges": plan.merges,
        "splits": plan.splits,
        "rounds": plan.rounds,
        "converged": plan.converged,
        "moved_memory": plan.moves.iter().map(|m| inv.vms[m.vm].memory).sum::<f64>(),
        "moves": migration_order(inv, &plan.moves).iter().enumerate().map(|(i, m)| json!({
            "step": i + 1,
            "vm": vm(m.vm),
            "from": host(m.from),
            "to": host(m.to),
            "network_intensive": inv.is_network_intensive(m.vm),
        })).collect::<Vec<_>>(),
        "coalitions": plan.coalitions.iter().map(|(members, h)| json!({
            "vms": members.iter().map(|&v| vm(v)).collect::<Vec<_>>(),
            "host": host(*h),
        })).collect::<Vec<_>>(),
        "unplaced": plan.unplaced.iter().map(|&v| vm(v)).collect::<Vec<_>>(),
        "cost_trace": plan.trace.iter().map(|t| t.cost).collect::<Vec<_>>(),
    })
}

fn peak_model_name(m: PeakModel) -> &'static str {
    match m {
        PeakModel::Mean => "mean",
        PeakModel::Max => "max",
    }
}

/// Text report of a consolidation; `names` are the VM names by index.
pub fn consolidation_text(
    names: &[String],
    c: &Consolidation,
    config: &ConsolidationConfig,
) -> String {
    let mut s = String::new();
    let consolidated = c.cvms.iter().filter(|x| x.members.len() > 1).count();
    let _ = writeln!(
        s,
        "{} consolidation of {} VMs (CVM PRU model: {}, coefficient threshold {}, servers of {}%)",
        c.algorithm.name().to_uppercase(),
        names.len(),
        peak_model_name(config.peak_model),
        config.corr_threshold,
        config.server_capacity
    );
    if let Some([lo, mid, hi]) = c.bands {
        let _ = writeln!(
            s,
            "PRU bands: <{}%: {lo}, {}-{}%: {mid}, >{}%: {hi}",
            config.band_edges.0, config.band_edges.0, config.band_edges.1, config.band_edges.1
        );
    }
    let _ = writeln!(
        s,
        "items: {} ({} CVMs of two or more VMs), servers: {}, mean PRU {:.2}%, mean peak-mean gap {:.2}%, refused pairs {}",
        c.cvms.len(),
        consolidated,
        c.servers.len(),
        c.mean_pru(),
        c.mean_peak_gap(),
        c.refused_pairs
    );
    let _ = writeln!(
        s,
        "servers whose forecast peak exceeds capacity: {}",
        c.servers_over(config.server_capacity)
    );
    let _ = writeln!(
        s,
        "  {:>6}  {:>8}  {:>8}  vms (PRU%)",
        "server", "packed%", "peak%"
    );
    for (i, server) in c.servers.iter().enumerate() {
        let items: Vec<String> = server
            .cvms
            .iter()
            .map(|&k| {
                let cvm = &c.cvms[k];
                let members: Vec<&str> = cvm.members.iter().map(|&v| names[v].as_str()).collect();
                format!("[{}] {:.1}", members.join("+"), cvm.pru)
            })
            .collect();
        let _ = writeln!(
            s,
            "  {:>6}  {:>8.1}  {:>8.1}  {}",
            i + 1,
            server.packed,
            server.peak,
            items.join(", ")
        );
    }
    s
}

/// JSON report of a consolidation; `names` are the VM names by index.
pub fn consolidation_json(
    names: &[String],
    c: &Consolidation,
    config: &ConsolidationConfig,
    truth: Option<&Evaluation>,
) -> Value {
    let mut v = json!({
        "algorithm": c.algorithm.name(),
        "vms": names.len(),
        "peak_model": peak_model_name(config.peak_model),
        "cvms": c.cvms.len(),
        "consolidated_cvms": c.cvms.iter().filter(|x| x.members.len() > 1).count(),
        "servers": c.servers.len(),
        "mean_pru": c.mean_pru(),
        "mean_peak_gap": c.mean_peak_gap(),
        "refused_pairs": c.refused_pairs,
        "merges": c.coefficient_sequence.len(),
        "forecast_servers_over": c.servers_over(config.server_capacity),
        "bands": c.bands,
        "placement": c.servers.iter().map(|s| json!({
            "packed": s.packed,
            "peak": s.peak,
            "cvms": s.cvms.iter().map(|&k| c.cvms[k].members.iter().map(|&m| names[m].clone()).collect::<Vec<_>>()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    if let (Some(t), Some(obj)) = (truth, v.as_object_mut()) {
        obj.insert(
            "truth".to_owned(),
            json!({
                "servers_over": t.servers_over,
                "samples_over": t.samples_over,
                "worst_server_pct": t.worst_server_pct,
                "cvms_over": t.cvms_over,
            }),
        );
    }
    v
}
