#![doc = include_str!("../INVENTORY.md")]
//!
//! [`InventoryFile`] is the document as written (serde types, also used to
//! write synthetic inventories); [`Inventory::from_file`] checks it and
//! turns names into indices. Every check failure is an [`InventoryError`]
//! that names the offending entry.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// The only format version this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// Samples per day when `series_period` is absent: one per minute, as in
/// the SICC paper.
pub const DEFAULT_SERIES_PERIOD: usize = 1440;

/// `Th_r` when `network_intensive_bps` is absent: 100 Mbit/s.
pub const DEFAULT_NETWORK_INTENSIVE_BPS: f64 = 1e8;

/// The inventory document as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryFile {
    pub version: u32,
    #[serde(default, rename = "_comment", skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    #[serde(default)]
    pub vms: Vec<VmEntry>,
    #[serde(default)]
    pub edges: Vec<EdgeEntry>,
    #[serde(default)]
    pub unit_costs: UnitCostsEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_intensive_bps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_period: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub capacity: f64,
    pub threshold: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    #[serde(default)]
    pub vms: Vec<String>,
    #[serde(default, rename = "_comment", skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmEntry {
    pub name: String,
    pub memory: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_bps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilisation: Option<Vec<f64>>,
    #[serde(default, rename = "_comment", skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeEntry {
    pub a: String,
    pub b: String,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitCostsEntry {
    #[serde(default = "default_same_rack")]
    pub same_rack: f64,
    #[serde(default = "default_cross_rack")]
    pub cross_rack: f64,
    #[serde(default)]
    pub pairs: Vec<CostPairEntry>,
}

fn default_same_rack() -> f64 {
    1.0
}

fn default_cross_rack() -> f64 {
    2.0
}

impl Default for UnitCostsEntry {
    fn default() -> Self {
        Self {
            same_rack: default_same_rack(),
            cross_rack: default_cross_rack(),
            pairs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostPairEntry {
    pub a: String,
    pub b: String,
    pub cost: f64,
}

/// Why an inventory was rejected. Each variant names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("the inventory is not valid JSON for this format (line {line}, column {column})")]
    Parse {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "inventory version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    Version { found: u32 },
    #[error("{what} #{index} has an empty name")]
    EmptyName { what: &'static str, index: usize },
    #[error("{what} `{name}` is defined twice (entries #{first} and #{second})")]
    DuplicateName {
        what: &'static str,
        name: String,
        first: usize,
        second: usize,
    },
    #[error("host `{host}`: {field} is {value}, it must be {rule}")]
    HostField {
        host: String,
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
    #[error("VM `{vm}`: {field} is {value}, it must be {rule}")]
    VmField {
        vm: String,
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
    #[error("host `{host}` lists VM `{vm}`, which is not in `vms`")]
    HostUnknownVm { host: String, vm: String },
    #[error("VM `{vm}` is listed on both host `{first}` and host `{second}`")]
    VmOnTwoHosts {
        vm: String,
        first: String,
        second: String,
    },
    #[error("VM `{vm}` is not listed on any host")]
    VmWithoutHost { vm: String },
    #[error("VM `{vm}`: utilisation sample #{index} is {value}, it must be a number in [0, 100]")]
    UtilisationSample {
        vm: String,
        index: usize,
        value: f64,
    },
    #[error(
        "VM `{vm}` has {len} utilisation samples; at least series_period = {period} are needed"
    )]
    UtilisationTooShort {
        vm: String,
        len: usize,
        period: usize,
    },
    #[error("edge #{index} ({a} -- {b}) names VM `{missing}`, which is not in `vms`")]
    EdgeUnknownVm {
        index: usize,
        a: String,
        b: String,
        missing: String,
    },
    #[error("edge #{index} connects VM `{vm}` to itself")]
    EdgeSelfLoop { index: usize, vm: String },
    #[error("edge #{index} ({a} -- {b}): weight is {value}, it must be finite and >= 0")]
    EdgeWeight {
        index: usize,
        a: String,
        b: String,
        value: f64,
    },
    #[error("edges #{first} and #{second} both connect `{a}` and `{b}`")]
    DuplicateEdge {
        a: String,
        b: String,
        first: usize,
        second: usize,
    },
    #[error("unit_costs.{field} is {value}, it must be finite and >= 0")]
    UnitCost { field: &'static str, value: f64 },
    #[error("unit_costs.pairs #{index} names host `{missing}`, which is not in `hosts`")]
    CostPairUnknownHost { index: usize, missing: String },
    #[error(
        "unit_costs.pairs #{index} pairs host `{host}` with itself (same-host traffic is free)"
    )]
    CostPairSelf { index: usize, host: String },
    #[error("unit_costs.pairs #{index} ({a} -- {b}): cost is {value}, it must be finite and >= 0")]
    CostPairValue {
        index: usize,
        a: String,
        b: String,
        value: f64,
    },
    #[error("unit_costs.pairs #{first} and #{second} both set the cost of `{a}` -- `{b}`")]
    DuplicateCostPair {
        a: String,
        b: String,
        first: usize,
        second: usize,
    },
    #[error("network_intensive_bps is {value}, it must be finite and >= 0")]
    NetworkThreshold { value: f64 },
    #[error("series_period is {value}, it must be at least 2")]
    SeriesPeriod { value: usize },
}

/// A checked host.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    pub capacity: f64,
    pub threshold: f64,
    /// Index into the inventory's rack names, if the host has a rack.
    pub rack: Option<usize>,
    /// Indices of the VMs on it now.
    pub vms: Vec<usize>,
}

/// A checked VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    pub name: String,
    pub memory: f64,
    pub namespace: String,
    pub net_bps: f64,
    pub utilisation: Option<Vec<f64>>,
    /// Index of the host it runs on now.
    pub host: usize,
}

/// A checked communication edge between two distinct VMs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    pub a: usize,
    pub b: usize,
    pub weight: f64,
}

/// Host-to-host unit costs `d(p, q)`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitCosts {
    pub same_rack: f64,
    pub cross_rack: f64,
    /// Explicit costs keyed by (smaller host index, larger host index).
    pub pairs: HashMap<(usize, usize), f64>,
}

/// A checked inventory with names resolved to indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    pub edges: Vec<Edge>,
    pub racks: Vec<String>,
    pub unit_costs: UnitCosts,
    pub network_intensive_bps: f64,
    pub series_period: usize,
    /// Per VM: (neighbour, weight) for every edge touching it.
    pub adjacency: Vec<Vec<(usize, f64)>>,
}

impl Inventory {
    /// Parses and checks a JSON inventory.
    pub fn from_json(text: &str) -> Result<Self, InventoryError> {
        let file: InventoryFile =
            serde_json::from_str(text).map_err(|source| InventoryError::Parse {
                line: source.line(),
                column: source.column(),
                source,
            })?;
        Self::from_file(file)
    }

    /// Checks an inventory document and resolves its names.
    pub fn from_file(file: InventoryFile) -> Result<Self, InventoryError> {
        if file.version != FORMAT_VERSION {
            return Err(InventoryError::Version {
                found: file.version,
            });
        }
        let series_period = file.series_period.unwrap_or(DEFAULT_SERIES_PERIOD);
        if series_period < 2 {
            return Err(InventoryError::SeriesPeriod {
                value: series_period,
            });
        }
        let network_intensive_bps = file
            .network_intensive_bps
            .unwrap_or(DEFAULT_NETWORK_INTENSIVE_BPS);
        if !(network_intensive_bps.is_finite() && network_intensive_bps >= 0.0) {
            return Err(InventoryError::NetworkThreshold {
                value: network_intensive_bps,
            });
        }

        let vm_index = index_names("VM", file.vms.iter().map(|v| v.name.as_str()))?;
        let host_index = index_names("host", file.hosts.iter().map(|h| h.name.as_str()))?;

        let mut vm_host: Vec<Option<usize>> = vec![None; file.vms.len()];
        let mut racks: Vec<String> = Vec::new();
        let mut rack_index: HashMap<String, usize> = HashMap::new();
        let mut hosts = Vec::with_capacity(file.hosts.len());
        for (hi, h) in file.hosts.into_iter().enumerate() {
            check_host(&h)?;
            let mut vms = Vec::with_capacity(h.vms.len());
            for vm_name in &h.vms {
                let vi = *vm_index.get(vm_name.as_str()).ok_or_else(|| {
                    InventoryError::HostUnknownVm {
                        host: h.name.clone(),
                        vm: vm_name.clone(),
                    }
                })?;
                if let Some(prev) = vm_host[vi] {
                    let first = hosts
                        .get(prev)
                        .map_or_else(|| h.name.clone(), |p: &Host| p.name.clone());
                    return Err(InventoryError::VmOnTwoHosts {
                        vm: vm_name.clone(),
                        first,
                        second: h.name.clone(),
                    });
                }
                vm_host[vi] = Some(hi);
                vms.push(vi);
            }
            let rack = h.rack.map(|r| {
                let next = racks.len();
                *rack_index.entry(r.clone()).or_insert_with(|| {
                    racks.push(r);
                    next
                })
            });
            hosts.push(Host {
                name: h.name,
                capacity: h.capacity,
                threshold: h.threshold,
                rack,
                vms,
            });
        }

        let mut vms = Vec::with_capacity(file.vms.len());
        for (vi, v) in file.vms.into_iter().enumerate() {
            let host =
                vm_host[vi].ok_or_else(|| InventoryError::VmWithoutHost { vm: v.name.clone() })?;
            check_vm(&v, series_period)?;
            vms.push(Vm {
                memory: v.memory,
                namespace: v.namespace.unwrap_or_else(|| "default".to_owned()),
                net_bps: v.net_bps.unwrap_or(0.0),
                utilisation: v.utilisation,
                host,
                name: v.name,
            });
        }

        let mut edges = Vec::with_capacity(file.edges.len());
        let mut seen_edges: HashMap<(usize, usize), usize> = HashMap::new();
        let mut adjacency = vec![Vec::new(); vms.len()];
        for (ei, e) in file.edges.iter().enumerate() {
            let lookup = |name: &str| {
                vm_index
                    .get(name)
                    .copied()
                    .ok_or_else(|| InventoryError::EdgeUnknownVm {
                        index: ei,
                        a: e.a.clone(),
                        b: e.b.clone(),
                        missing: name.to_owned(),
                    })
            };
            let (a, b) = (lookup(&e.a)?, lookup(&e.b)?);
            if a == b {
                return Err(InventoryError::EdgeSelfLoop {
                    index: ei,
                    vm: e.a.clone(),
                });
            }
            if !(e.weight.is_finite() && e.weight >= 0.0) {
                return Err(InventoryError::EdgeWeight {
                    index: ei,
                    a: e.a.clone(),
                    b: e.b.clone(),
                    value: e.weight,
                });
            }
            if let Some(&first) = seen_edges.get(&(a.min(b), a.max(b))) {
                return Err(InventoryError::DuplicateEdge {
                    a: e.a.clone(),
                    b: e.b.clone(),
                    first,
                    second: ei,
                });
            }
            seen_edges.insert((a.min(b), a.max(b)), ei);
            adjacency[a].push((b, e.weight));
            adjacency[b].push((a, e.weight));
            edges.push(Edge {
                a,
                b,
                weight: e.weight,
            });
        }

        let uc = file.unit_costs;
        for (field, value) in [("same_rack", uc.same_rack), ("cross_rack", uc.cross_rack)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(InventoryError::UnitCost { field, value });
            }
        }
        let mut pairs = HashMap::new();
        let mut seen_pairs: HashMap<(usize, usize), usize> = HashMap::new();
        for (pi, p) in uc.pairs.iter().enumerate() {
            let lookup = |name: &str| {
                host_index
                    .get(name)
                    .copied()
                    .ok_or_else(|| InventoryError::CostPairUnknownHost {
                        index: pi,
                        missing: name.to_owned(),
                    })
            };
            let (a, b) = (lookup(&p.a)?, lookup(&p.b)?);
            if a == b {
                return Err(InventoryError::CostPairSelf {
                    index: pi,
                    host: p.a.clone(),
                });
            }
            if !(p.cost.is_finite() && p.cost >= 0.0) {
                return Err(InventoryError::CostPairValue {
                    index: pi,
                    a: p.a.clone(),
                    b: p.b.clone(),
                    value: p.cost,
                });
            }
            let key = (a.min(b), a.max(b));
            if let Some(&first) = seen_pairs.get(&key) {
                return Err(InventoryError::DuplicateCostPair {
                    a: p.a.clone(),
                    b: p.b.clone(),
                    first,
                    second: pi,
                });
            }
            seen_pairs.insert(key, pi);
            pairs.insert(key, p.cost);
        }

        Ok(Self {
            hosts,
            vms,
            edges,
            racks,
            unit_costs: UnitCosts {
                same_rack: uc.same_rack,
                cross_rack: uc.cross_rack,
                pairs,
            },
            network_intensive_bps,
            series_period,
            adjacency,
        })
    }

    /// Unit cost `d(p, q)` of traffic between hosts `p` and `q`.
    pub fn unit_cost(&self, p: usize, q: usize) -> f64 {
        if p == q {
            return 0.0;
        }
        if let Some(&c) = self.unit_costs.pairs.get(&(p.min(q), p.max(q))) {
            return c;
        }
        match (self.hosts[p].rack, self.hosts[q].rack) {
            (Some(a), Some(b)) if a == b => self.unit_costs.same_rack,
            _ => self.unit_costs.cross_rack,
        }
    }

    /// Memory load per host in the current placement.
    pub fn host_loads(&self) -> Vec<f64> {
        self.hosts
            .iter()
            .map(|h| h.vms.iter().map(|&v| self.vms[v].memory).sum())
            .collect()
    }

    /// Whether VM `v` is network-intensive (`net_bps > Th_r`).
    pub fn is_network_intensive(&self, v: usize) -> bool {
        self.vms[v].net_bps > self.network_intensive_bps
    }
}

fn index_names<'a>(
    what: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, usize>, InventoryError> {
    let mut index = HashMap::new();
    for (i, name) in names.enumerate() {
        if name.trim().is_empty() {
            return Err(InventoryError::EmptyName { what, index: i });
        }
        if let Some(&first) = index.get(name) {
            return Err(InventoryError::DuplicateName {
                what,
                name: name.to_owned(),
                first,
                second: i,
            });
        }
        index.insert(name.to_owned(), i);
    }
    Ok(index)
}

fn check_host(h: &HostEntry) -> Result<(), InventoryError> {
    let bad = |field, value, rule| InventoryError::HostField {
        host: h.name.clone(),
        field,
        value,
        rule,
    };
    if !(h.capacity.is_finite() && h.capacity > 0.0) {
        return Err(bad("capacity", h.capacity, "finite and > 0"));
    }
    if !(h.threshold.is_finite() && h.threshold > 0.0 && h.threshold <= h.capacity) {
        return Err(bad("threshold", h.threshold, "> 0 and <= capacity"));
    }
    let mut seen = HashSet::new();
    for vm in &h.vms {
        if !seen.insert(vm.as_str()) {
            return Err(InventoryError::VmOnTwoHosts {
                vm: vm.clone(),
                first: h.name.clone(),
                second: h.name.clone(),
            });
        }
    }
    Ok(())
}

fn check_vm(v: &VmEntry, period: usize) -> Result<(), InventoryError> {
    let bad = |field, value, rule| InventoryError::VmField {
        vm: v.name.clone(),
        field,
        value,
        rule,
    };
    if !(v.memory.is_finite() && v.memory > 0.0) {
        return Err(bad("memory", v.memory, "finite and > 0"));
    }
    if let Some(bps) = v.net_bps
        && !(bps.is_finite() && bps >= 0.0)
    {
        return Err(bad("net_bps", bps, "finite and >= 0"));
    }
    if let Some(series) = &v.utilisation {
        if let Some((index, &value)) = series
            .iter()
            .enumerate()
            .find(|(_, x)| !(x.is_finite() && (0.0..=100.0).contains(*x)))
        {
            return Err(InventoryError::UtilisationSample {
                vm: v.name.clone(),
                index,
                value,
            });
        }
        if series.len() < period {
            return Err(InventoryError::UtilisationTooShort {
                vm: v.name.clone(),
                len: series.len(),
                period,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "version": 1,
        "hosts": [
            {"name": "h1", "capacity": 100, "threshold": 80, "rack": "r1", "vms": ["a", "b"]},
            {"name": "h2", "capacity": 100, "threshold": 90, "rack": "r1", "vms": ["c"]},
            {"name": "h3", "capacity": 100, "threshold": 90, "vms": []}
        ],
        "vms": [
            {"name": "a", "memory": 50, "net_bps": 2e8},
            {"name": "b", "memory": 40, "namespace": "ns"},
            {"name": "c", "memory": 10}
        ],
        "edges": [{"a": "a", "b": "b", "weight": 3}, {"a": "b", "b": "c", "weight": 1}],
        "unit_costs": {"same_rack": 1, "cross_rack": 4, "pairs": [{"a": "h3", "b": "h1", "cost": 9}]}
    }"#;

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Inventory, InventoryError> {
        let mut v: serde_json::Value =
            serde_json::from_str(GOOD).map_err(|source| InventoryError::Parse {
                line: 0,
                column: 0,
                source,
            })?;
        edit(&mut v);
        Inventory::from_json(&v.to_string())
    }

    #[test]
    fn a_good_inventory_resolves_names_costs_and_loads() {
        let inv = Inventory::from_json(GOOD).expect("good inventory");
        assert_eq!(inv.host_loads(), vec![90.0, 10.0, 0.0]);
        assert_eq!(inv.vms[1].namespace, "ns");
        assert_eq!(inv.vms[0].namespace, "default");
        assert_eq!(inv.unit_cost(0, 0), 0.0);
        assert_eq!(inv.unit_cost(0, 1), 1.0);
        assert_eq!(inv.unit_cost(1, 2), 4.0);
        assert_eq!(inv.unit_cost(2, 0), 9.0);
        assert!(inv.is_network_intensive(0));
        assert!(!inv.is_network_intensive(1));
        assert_eq!(inv.adjacency[1].len(), 2);
        assert_eq!(inv.series_period, DEFAULT_SERIES_PERIOD);
    }

    #[test]
    fn each_broken_entry_is_named_in_the_error() {
        use serde_json::json;
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|v| v["version"] = json!(2)), "version 2"),
            (
                Box::new(|v| v["hosts"][1]["name"] = json!("h1")),
                "host `h1` is defined twice",
            ),
            (
                Box::new(|v| v["vms"][2]["name"] = json!("")),
                "VM #2 has an empty name",
            ),
            (
                Box::new(|v| v["hosts"][0]["threshold"] = json!(120)),
                "host `h1`: threshold",
            ),
            (
                Box::new(|v| v["hosts"][2]["capacity"] = json!(-1)),
                "host `h3`: capacity",
            ),
            (
                Box::new(|v| v["vms"][1]["memory"] = json!(0)),
                "VM `b`: memory",
            ),
            (
                Box::new(|v| v["vms"][0]["net_bps"] = json!(-5)),
                "VM `a`: net_bps",
            ),
            (
                Box::new(|v| v["hosts"][2]["vms"] = json!(["zz"])),
                "host `h3` lists VM `zz`",
            ),
            (
                Box::new(|v| v["hosts"][2]["vms"] = json!(["c"])),
                "VM `c` is listed on both host `h2` and host `h3`",
            ),
            (
                Box::new(|v| v["hosts"][1]["vms"] = json!([])),
                "VM `c` is not listed on any host",
            ),
            (
                Box::new(|v| v["edges"][1]["b"] = json!("q")),
                "edge #1 (b -- q) names VM `q`",
            ),
            (
                Box::new(|v| v["edges"][0]["b"] = json!("a")),
                "edge #0 connects VM `a` to itself",
            ),
            (
                Box::new(|v| v["edges"][1]["weight"] = json!(-2)),
                "edge #1 (b -- c): weight",
            ),
            (
                Box::new(|v| v["edges"][1] = json!({"a": "b", "b": "a", "weight": 1})),
                "edges #0 and #1 both connect `b` and `a`",
            ),
            (
                Box::new(|v| v["unit_costs"]["cross_rack"] = json!(-1)),
                "unit_costs.cross_rack",
            ),
            (
                Box::new(|v| v["unit_costs"]["pairs"][0]["a"] = json!("h9")),
                "pairs #0 names host `h9`",
            ),
            (
                Box::new(|v| v["unit_costs"]["pairs"][0]["a"] = json!("h1")),
                "pairs #0 pairs host `h1` with itself",
            ),
            (
                Box::new(|v| v["vms"][0]["utilisation"] = json!([1, 2, 300])),
                "VM `a`: utilisation sample #2 is 300",
            ),
            (
                Box::new(|v| v["vms"][0]["utilisation"] = json!([1, 2, 3])),
                "VM `a` has 3 utilisation samples",
            ),
            (
                Box::new(|v| v["series_period"] = json!(1)),
                "series_period is 1",
            ),
            (Box::new(|v| v["hosts"][0]["cpu"] = json!(1)), "line"),
        ];
        for (edit, expected) in cases {
            let err = with(edit).expect_err(expected);
            let text = err.to_string();
            assert!(
                text.contains(expected),
                "`{text}` does not contain `{expected}`"
            );
        }
    }

    #[test]
    fn a_parse_error_points_at_the_line() {
        let err = Inventory::from_json("{\n \"version\": 1,\n \"hosts\": [ {\"name\": 3} ]\n}")
            .expect_err("a number is not a name");
        match err {
            InventoryError::Parse { line, .. } => assert_eq!(line, 3),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn the_document_round_trips_through_serde() {
        let file: InventoryFile = serde_json::from_str(GOOD).expect("parses");
        let text = serde_json::to_string(&file).expect("serialises");
        let again: InventoryFile = serde_json::from_str(&text).expect("parses again");
        assert_eq!(file, again);
    }
}
