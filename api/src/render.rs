//! Plain-text tables of the API types, shared by the debug CLI and
//! `kubectl-vmbw` so both print the same thing. Rates in Mbit/s (decimal),
//! sizes in binary units; `-` for "not set".

use std::fmt::Write as _;

use super::{ClassStatus, Explain, FlowStatus, Status, TrafficClass, VmStatus};

/// `12.345 Mbit/s` from bytes per second.
pub fn fmt_rate(bytes_per_sec: f64) -> String {
    format!("{:.3}", crate::Bandwidth::from_bytes_per_sec(bytes_per_sec))
}

fn fmt_opt_rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), fmt_rate)
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn fmt_pages(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |p| format!("{p:.0}"))
}

/// Left-aligned columns separated by two spaces, widths from the content.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.zip(&widths).enumerate() {
                if i > 0 {
                    l.push_str("  ");
                }
                let _ = write!(l, "{cell:<w$}");
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut self.header.iter().copied());
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

/// The agent summary, one `key: value` line each.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let discovery = if s.discovery.is_empty() {
        "-".to_owned()
    } else {
        s.discovery.join(",")
    };
    let lines = [
        ("node", s.node.clone()),
        ("agent", format!("vmbw {}", s.version)),
        ("uptime", format!("{:.0} s", s.uptime_sec)),
        ("mode", s.mode.clone()),
        ("policy", s.policy.clone()),
        ("uplinks", s.uplinks.join(",")),
        ("link capacity", fmt_rate(s.link_capacity_bytes_per_sec)),
        ("link usage", fmt_rate(s.link_usage_bytes_per_sec)),
        ("vms", format!("{} ({} migrating)", s.vms, s.migrating)),
        ("discovery", discovery),
    ];
    for (k, v) in lines {
        let _ = writeln!(out, "{:<14} {v}", format!("{k}:"));
    }
    out
}

fn class_rate(vm: &VmStatus, class: TrafficClass) -> (f64, f64) {
    vm.traffic
        .iter()
        .find(|t| t.class == class)
        .map_or((0.0, 0.0), |t| {
            (t.egress_bytes_per_sec, t.ingress_bytes_per_sec)
        })
}

/// One line per VM: migration progress, allotment and current rates.
pub fn render_vms(vms: &[VmStatus]) -> String {
    let mut t = Table::new(&[
        "VM",
        "SLOT",
        "MIGRATION",
        "ITER",
        "REMAINING",
        "DIRTY PRED",
        "DIRTY ACTUAL",
        "ETA",
        "MIG RATE",
        "MIG CEIL",
        "APP PROMISED",
        "APP RESERVE",
        "MIG TX",
        "APP TX",
        "APP RX",
    ]);
    for vm in vms {
        let (phase, iter, remaining, pred, actual) = match &vm.migration {
            Some(m) => (
                format!("{} {}", m.role.as_str(), m.phase.as_str()),
                m.iteration.to_string(),
                fmt_bytes(m.remaining_bytes),
                fmt_pages(m.predicted_dirty_pages),
                fmt_pages(m.actual_dirty_pages),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let mut eta = match vm.migration.as_ref().map(|m| (m.converging, m.eta_seconds)) {
            Some((Some(true), Some(eta))) => format!("{eta:.0} s"),
            Some((Some(false), _)) => "never".into(),
            _ => "-".into(),
        };
        // A switchover held for QEMU's socket backlog says so.
        if let Some(held) = vm
            .migration
            .as_ref()
            .and_then(|m| m.switchover_held_seconds)
        {
            eta.push_str(&format!(", held {held:.0} s"));
        }
        // Beside the ETA, the starter's deadline (KubeVirt's timeout).
        if let Some(left) = vm.migration.as_ref().and_then(|m| m.deadline_left_seconds) {
            eta.push_str(&format!(" (deadline {left:.0} s)"));
        }
        let (mig_tx, _) = class_rate(vm, TrafficClass::Migration);
        let (app_tx, app_rx) = class_rate(vm, TrafficClass::Application);
        t.row(vec![
            vm.name.clone(),
            vm.slot.to_string(),
            phase,
            iter,
            remaining,
            pred,
            actual,
            eta,
            fmt_opt_rate(vm.allocation.migration_rate_bytes_per_sec),
            fmt_opt_rate(vm.allocation.migration_ceil_bytes_per_sec),
            fmt_opt_rate(vm.app_promised_bytes_per_sec),
            fmt_rate(vm.allocation.app_reservation_bytes_per_sec),
            fmt_rate(mig_tx),
            fmt_rate(app_tx),
            fmt_rate(app_rx),
        ]);
    }
    t.render()
}

/// One line per classification entry.
pub fn render_flows(flows: &[FlowStatus]) -> String {
    let mut t = Table::new(&[
        "VM", "SLOT", "CLASS", "MATCH", "LOCAL", "REMOTE", "PROTO", "SOURCE",
    ]);
    for f in flows {
        t.row(vec![
            f.vm.clone(),
            f.slot.to_string(),
            f.class.as_str().to_owned(),
            f.matches.as_str().to_owned(),
            f.local.clone(),
            f.remote.clone(),
            f.proto.clone(),
            f.source.clone(),
        ]);
    }
    t.render()
}

/// One line per shaping class.
pub fn render_classes(classes: &[ClassStatus]) -> String {
    let mut t = Table::new(&[
        "IFACE", "HANDLE", "VM", "SLOT", "ROLE", "RATE", "CEIL", "SENT",
    ]);
    for c in classes {
        t.row(vec![
            c.iface.clone(),
            c.handle.clone(),
            c.vm.clone().unwrap_or_else(|| "-".to_owned()),
            c.slot.to_string(),
            c.role.clone(),
            fmt_rate(c.rate_bytes_per_sec),
            fmt_rate(c.ceil_bytes_per_sec),
            fmt_bytes(c.sent_bytes),
        ]);
    }
    t.render()
}

/// The decisions about one VM, oldest first: allotment, inputs, reasons.
pub fn render_explain(e: &Explain) -> String {
    let mut out = String::new();
    if e.decisions.is_empty() {
        let _ = writeln!(out, "{}: no decisions yet", e.vm);
        return out;
    }
    let _ = writeln!(out, "{}: {} decision(s)", e.vm, e.decisions.len());
    for d in &e.decisions {
        let a = &d.allocation;
        let _ = writeln!(
            out,
            "\niteration {} at {:.3} ({}): migration rate {}, ceil {}, app reserve {}",
            d.iteration,
            d.at_unix_sec,
            d.policy,
            fmt_opt_rate(a.migration_rate_bytes_per_sec),
            fmt_opt_rate(a.migration_ceil_bytes_per_sec),
            fmt_rate(a.app_reservation_bytes_per_sec),
        );
        if !d.inputs.is_empty() {
            let inputs: Vec<String> = d.inputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "  inputs: {}", inputs.join(" "));
        }
        for r in &d.reasons {
            let _ = writeln!(out, "  - {r}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        Allocation, ClassTraffic, ExplainedDecision, FlowMatch, MigrationPhase, MigrationRole,
        MigrationStatus,
    };

    fn vm_fixture() -> Vec<VmStatus> {
        vec![
            VmStatus {
                name: "default/vm-a".into(),
                slot: 1,
                migration: Some(MigrationStatus {
                    phase: MigrationPhase::PreCopy,
                    role: MigrationRole::Source,
                    iteration: 3,
                    remaining_bytes: 50 * 1024 * 1024,
                    predicted_dirty_pages: Some(1200.4),
                    actual_dirty_pages: None,
                    peer: Some("node02".into()),
                    samples: 0,
                    qemu_max_bandwidth_bytes_per_sec: None,
                    refused: vec![],
                    armed: vec!["postcopy-ram".into()],
                    eta_seconds: Some(42.4),
                    converging: Some(true),
                    deadline_left_seconds: Some(300.0),
                    stream_backlog_bytes: None,
                    switchover_held_seconds: None,
                }),
                allocation: Allocation {
                    migration_rate_bytes_per_sec: Some(2_500_000.0),
                    migration_ceil_bytes_per_sec: None,
                    app_reservation_bytes_per_sec: 1_250_000.0,
                },
                app_promised_bytes_per_sec: Some(1_250_000.0),
                traffic: vec![
                    ClassTraffic {
                        class: TrafficClass::Migration,
                        egress_bytes: 1 << 30,
                        ingress_bytes: 0,
                        egress_bytes_per_sec: 3_000_000.0,
                        ingress_bytes_per_sec: 0.0,
                    },
                    ClassTraffic {
                        class: TrafficClass::Application,
                        egress_bytes: 10,
                        ingress_bytes: 20,
                        egress_bytes_per_sec: 125_000.0,
                        ingress_bytes_per_sec: 250_000.0,
                    },
                ],
                telemetry: Some("qmp".into()),
            },
            VmStatus {
                name: "default/idle".into(),
                slot: 12,
                migration: None,
                allocation: Allocation::default(),
                app_promised_bytes_per_sec: None,
                traffic: vec![],
                telemetry: None,
            },
        ]
    }

    #[test]
    fn vms_table() {
        let text = render_vms(&vm_fixture());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("VM            SLOT  MIGRATION"),
            "{text}"
        );
        let a: Vec<&str> = lines[1].split("  ").filter(|s| !s.is_empty()).collect();
        assert_eq!(
            a.iter().map(|s| s.trim()).collect::<Vec<_>>(),
            [
                "default/vm-a",
                "1",
                "source pre-copy",
                "3",
                "50.0 MiB",
                "1200",
                "-",
                "42 s (deadline 300 s)",
                "20.000 Mbit/s",
                "-",
                "10.000 Mbit/s",
                "10.000 Mbit/s",
                "24.000 Mbit/s",
                "1.000 Mbit/s",
                "2.000 Mbit/s",
            ],
            "{text}"
        );
        assert!(lines[2].starts_with("default/idle  12    -"), "{text}");
        // Columns line up: every row's SLOT starts where the header's does.
        let col = lines[0].find("SLOT").expect("header");
        assert_eq!(&lines[2][col..col + 2], "12");
    }

    #[test]
    fn status_block() {
        let s = Status {
            version: "0.1.0".into(),
            node: "node01".into(),
            mode: "htb".into(),
            policy: "nrac".into(),
            uplinks: vec!["eth0".into(), "eth1".into()],
            link_capacity_bytes_per_sec: 125_000_000.0,
            link_usage_bytes_per_sec: 12_500_000.0,
            vms: 3,
            migrating: 1,
            uptime_sec: 61.4,
            discovery: vec!["kubevirt".into()],
        };
        let want = "\
node:          node01
agent:         vmbw 0.1.0
uptime:        61 s
mode:          htb
policy:        nrac
uplinks:       eth0,eth1
link capacity: 1000.000 Mbit/s
link usage:    100.000 Mbit/s
vms:           3 (1 migrating)
discovery:     kubevirt
";
        assert_eq!(render_status(&s), want);
    }

    #[test]
    fn flows_and_classes_tables() {
        let flows = [FlowStatus {
            vm: "default/vm-a".into(),
            slot: 1,
            class: TrafficClass::Migration,
            matches: FlowMatch::RemotePorts,
            local: "*".into(),
            remote: "10.0.0.2:43210".into(),
            proto: "tcp".into(),
            source: "kubevirt".into(),
        }];
        assert_eq!(
            render_flows(&flows),
            "VM            SLOT  CLASS      MATCH         LOCAL  REMOTE          PROTO  SOURCE\n\
             default/vm-a  1     migration  remote-ports  *      10.0.0.2:43210  tcp    kubevirt\n"
        );
        let classes = [ClassStatus {
            iface: "eth0".into(),
            handle: "7662:11".into(),
            vm: None,
            slot: 0,
            role: "default".into(),
            rate_bytes_per_sec: 1e6,
            ceil_bytes_per_sec: 1.25e8,
            sent_bytes: 1536,
        }];
        let text = render_classes(&classes);
        assert!(
            text.ends_with(
                "eth0   7662:11  -   0     default  8.000 Mbit/s  1000.000 Mbit/s  1.5 KiB\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn explain_lists_inputs_and_reasons() {
        let mut inputs = BTreeMap::new();
        inputs.insert("free_bytes_per_sec".to_owned(), 1e6);
        inputs.insert("dirty_rate_bytes_per_sec".to_owned(), 2e5);
        let e = Explain {
            vm: "default/vm-a".into(),
            decisions: vec![ExplainedDecision {
                at_unix_sec: 1700000000.5,
                iteration: 2,
                policy: "nrac".into(),
                inputs,
                allocation: Allocation {
                    migration_rate_bytes_per_sec: Some(250_000.0),
                    migration_ceil_bytes_per_sec: Some(1e6),
                    app_reservation_bytes_per_sec: 0.0,
                },
                reasons: vec!["not network-intensive".into(), "N_C = D_e * 1.25".into()],
            }],
        };
        let text = render_explain(&e);
        assert_eq!(
            text,
            "default/vm-a: 1 decision(s)\n\
             \n\
             iteration 2 at 1700000000.500 (nrac): migration rate 2.000 Mbit/s, ceil 8.000 Mbit/s, app reserve 0.000 Mbit/s\n  \
             inputs: dirty_rate_bytes_per_sec=200000 free_bytes_per_sec=1000000\n  \
             - not network-intensive\n  \
             - N_C = D_e * 1.25\n"
        );
        let none = Explain {
            vm: "x".into(),
            decisions: vec![],
        };
        assert_eq!(render_explain(&none), "x: no decisions yet\n");
    }

    #[test]
    fn units() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1024), "1.0 KiB");
        assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
        assert_eq!(fmt_rate(125_000.0), "1.000 Mbit/s");
    }
}
