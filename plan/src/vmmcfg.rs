//! VMM-CFG: migration planning as a coalition-formation game (the VMM-CFG paper, docs/papers.md).
//!
//! 1. **Selection** (the paper's Algorithm 1). On every overloaded host
//!    (load above its safety threshold `M_i'`) each VM's intra-host traffic
//!    `c_j = Σ w_jk` over partners on the same host is computed; VMs are
//!    taken in ascending `c_j` (ties: larger memory first, then inventory
//!    order) until the host is no longer overloaded. The paper's pseudocode
//!    (line 8) only takes a VM if the host is *still* overloaded after it
//!    leaves, which would never bring a host under its threshold; its prose
//!    and our design notes say "until the host is under its threshold", which
//!    is what is done here.
//! 2. **Coalition formation** (Algorithm 2). The selected VMs start as
//!    singleton coalitions, each mapped (`MapProcess`) to an under-loaded
//!    host, largest VM first. The game value is the total communication
//!    cost `v = Σ w_jk · d(host(j), host(k))` over *all* edges. Then, in
//!    rounds: the merge process tries pairs of coalitions in seeded random
//!    order and merges two when their union fits an under-loaded host and
//!    `v` strictly drops; the split process tries the bipartitions of each
//!    coalition (all of them up to `exhaustive_split_max` members, else
//!    detaching one member at a time) and splits when both parts fit and
//!    `v` strictly drops. Rounds repeat until nothing changes or
//!    `max_rounds` is reached. No step ever raises `v`.
//!
//! `MapProcess` puts a coalition on the under-loaded host (a host that was
//! not overloaded before the plan) where it fits below the threshold and
//! its traffic to every VM outside it is cheapest; ties go to the host with
//! the most room left, which spreads load, then to the lower index. Host
//! room always accounts for every coalition already mapped there.
//!
//! Only coalitions that exchange traffic are tried as merge partners: for
//! two coalitions without an edge between them the merged cost is the sum
//! of their separate costs on the merged host, so a merge could only pay
//! off through one of them preferring that host on its own, which is a
//! move the game (as published) does not contain.

use super::{inventory::Inventory, rng::Rng, stats};

/// Tuning of the coalition-formation game.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmCfgConfig {
    /// Seed of the random merge order.
    pub seed: u64,
    /// The paper's "loop number": merge + split rounds at most.
    pub max_rounds: usize,
    /// Coalitions up to this size try all 2^(k-1)-1 bipartitions when
    /// splitting; larger ones only try detaching one member.
    pub exhaustive_split_max: usize,
}

impl Default for VmmCfgConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            max_rounds: 10,
            exhaustive_split_max: 10,
        }
    }
}

/// A VM picked for migration by the selection step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selected {
    pub vm: usize,
    pub host: usize,
    /// `c_j`: its traffic with VMs on the same host.
    pub intra_host_traffic: f64,
}

/// What a step of the game did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A singleton coalition got its first host.
    Place,
    Merge,
    Split,
}

/// One accepted step: the coalitions it produced with their hosts, and the
/// communication cost `v` after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    pub coalitions: Vec<(Vec<usize>, usize)>,
    pub cost: f64,
}

/// A VM migration of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub vm: usize,
    pub from: usize,
    pub to: usize,
}

/// Load figures of one placement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSummary {
    /// Hosts whose load is above their threshold.
    pub overloaded: usize,
    /// Population standard deviation of host loads (memory units).
    pub load_std: f64,
    /// Population standard deviation of load / capacity, in percent.
    pub utilisation_std_pct: f64,
}

/// The result of VMM-CFG on an inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct VmmCfgPlan {
    pub overloaded_before: Vec<usize>,
    pub selected: Vec<Selected>,
    /// Selected VMs that fit no under-loaded host; they stay where they are.
    pub unplaced: Vec<usize>,
    /// Final coalitions (members sorted) and their hosts.
    pub coalitions: Vec<(Vec<usize>, usize)>,
    pub moves: Vec<Move>,
    /// Host of every VM after the plan.
    pub placement: Vec<usize>,
    pub before: LoadSummary,
    pub after: LoadSummary,
    /// `v` of the current placement.
    pub cost_before: f64,
    /// `v` once every selected VM has its first host (start of the game).
    pub cost_initial_mapping: f64,
    /// `v` after the plan.
    pub cost_after: f64,
    pub merges: usize,
    pub splits: usize,
    pub rounds: usize,
    /// Whether the last round changed nothing (false: `max_rounds` hit).
    pub converged: bool,
    /// Every accepted step, in order: replaying them from the current
    /// placement reproduces the plan (the tests' validator does that).
    pub trace: Vec<Step>,
}

/// Communication cost `v = Σ w_jk · d(placement[j], placement[k])`.
pub fn communication_cost(inv: &Inventory, placement: &[usize]) -> f64 {
    inv.edges
        .iter()
        .map(|e| e.weight * inv.unit_cost(placement[e.a], placement[e.b]))
        .sum()
}

/// Overloaded hosts and load spread of a placement.
pub fn load_summary(inv: &Inventory, placement: &[usize]) -> LoadSummary {
    let mut load = vec![0.0; inv.hosts.len()];
    for (v, &h) in placement.iter().enumerate() {
        load[h] += inv.vms[v].memory;
    }
    let overloaded = inv
        .hosts
        .iter()
        .zip(&load)
        .filter(|(h, l)| **l > h.threshold)
        .count();
    let util: Vec<f64> = inv
        .hosts
        .iter()
        .zip(&load)
        .map(|(h, l)| 100.0 * l / h.capacity)
        .collect();
    LoadSummary {
        overloaded,
        load_std: stats::std_dev(&load),
        utilisation_std_pct: stats::std_dev(&util),
    }
}

/// Algorithm 1: the overloaded hosts and the VMs to move off them.
pub fn select(inv: &Inventory) -> (Vec<usize>, Vec<Selected>) {
    let loads = inv.host_loads();
    let mut overloaded = Vec::new();
    let mut selected = Vec::new();
    for (h, host) in inv.hosts.iter().enumerate() {
        if loads[h] <= host.threshold {
            continue;
        }
        overloaded.push(h);
        let mut candidates: Vec<(f64, usize)> = host
            .vms
            .iter()
            .map(|&j| {
                let c: f64 = inv.adjacency[j]
                    .iter()
                    .filter(|(k, _)| inv.vms[*k].host == h)
                    // fold from +0.0: an empty f64 sum is -0.0.
                    .fold(0.0, |acc, (_, w)| acc + w);
                (c, j)
            })
            .collect();
        candidates.sort_by(|(ca, a), (cb, b)| {
            ca.total_cmp(cb)
                .then(inv.vms[*b].memory.total_cmp(&inv.vms[*a].memory))
                .then(a.cmp(b))
        });
        let mut load = loads[h];
        for (c, j) in candidates {
            if load <= host.threshold {
                break;
            }
            load -= inv.vms[j].memory;
            selected.push(Selected {
                vm: j,
                host: h,
                intra_host_traffic: c,
            });
        }
    }
    (overloaded, selected)
}

/// Plans migrations for `inv` with VMM-CFG (see the module docs).
pub fn plan(inv: &Inventory, config: &VmmCfgConfig) -> VmmCfgPlan {
    let (overloaded_before, selected) = select(inv);
    let current: Vec<usize> = inv.vms.iter().map(|v| v.host).collect();
    let cost_before = communication_cost(inv, &current);
    let mut game = Game::new(inv, &overloaded_before, cost_before);

    let mut order: Vec<usize> = selected.iter().map(|s| s.vm).collect();
    order.sort_by(|a, b| {
        inv.vms[*b]
            .memory
            .total_cmp(&inv.vms[*a].memory)
            .then(a.cmp(b))
    });
    let mut unplaced = Vec::new();
    for v in order {
        if !game.place_singleton(v) {
            unplaced.push(v);
        }
    }
    unplaced.sort_unstable();
    let cost_initial_mapping = game.cost;

    let mut rng = Rng::new(config.seed);
    let (mut merges, mut splits, mut rounds, mut converged) = (0, 0, 0, false);
    while rounds < config.max_rounds {
        rounds += 1;
        let m = game.merge_process(&mut rng);
        let s = game.split_process(config.exhaustive_split_max);
        merges += m;
        splits += s;
        if m == 0 && s == 0 {
            converged = true;
            break;
        }
    }

    let placement = game.host_of.clone();
    let mut moves: Vec<Move> = placement
        .iter()
        .enumerate()
        .filter(|(v, h)| **h != current[*v])
        .map(|(vm, &to)| Move {
            vm,
            from: current[vm],
            to,
        })
        .collect();
    moves.sort_by_key(|m| m.vm);
    let mut coalitions: Vec<(Vec<usize>, usize)> = game
        .coalitions
        .iter()
        .filter(|c| c.alive)
        .map(|c| {
            let mut members = c.members.clone();
            members.sort_unstable();
            (members, c.host)
        })
        .collect();
    coalitions.sort();
    VmmCfgPlan {
        before: load_summary(inv, &current),
        after: load_summary(inv, &placement),
        overloaded_before,
        selected,
        unplaced,
        coalitions,
        moves,
        cost_before,
        cost_initial_mapping,
        cost_after: game.cost,
        merges,
        splits,
        rounds,
        converged,
        trace: game.trace,
        placement,
    }
}

const NONE: usize = usize::MAX;

/// Hard cap on exhaustive bipartitions (2^19 per coalition) whatever the
/// configuration says.
const MAX_EXHAUSTIVE_SPLIT: usize = 20;

struct Coalition {
    members: Vec<usize>,
    memory: f64,
    host: usize,
    alive: bool,
}

/// The state of the game: where every VM is, host loads, the coalitions.
struct Game<'a> {
    inv: &'a Inventory,
    host_of: Vec<usize>,
    coalition_of: Vec<usize>,
    coalitions: Vec<Coalition>,
    load: Vec<f64>,
    /// Hosts that may receive coalitions (under-loaded before the plan).
    targets: Vec<usize>,
    mark: Vec<u32>,
    stamp: u32,
    partner_weight: Vec<f64>,
    partner_hosts: Vec<usize>,
    cost: f64,
    trace: Vec<Step>,
}

fn improves(after: f64, before: f64) -> bool {
    after < before - 1e-9 * (1.0 + before.abs())
}

impl<'a> Game<'a> {
    fn new(inv: &'a Inventory, overloaded: &[usize], cost: f64) -> Self {
        let mut is_overloaded = vec![false; inv.hosts.len()];
        for &h in overloaded {
            is_overloaded[h] = true;
        }
        Self {
            inv,
            host_of: inv.vms.iter().map(|v| v.host).collect(),
            coalition_of: vec![NONE; inv.vms.len()],
            coalitions: Vec::new(),
            load: inv.host_loads(),
            targets: (0..inv.hosts.len())
                .filter(|&h| !is_overloaded[h])
                .collect(),
            mark: vec![0; inv.vms.len()],
            stamp: 0,
            partner_weight: vec![0.0; inv.hosts.len()],
            partner_hosts: Vec::new(),
            cost,
            trace: Vec::new(),
        }
    }

    fn next_stamp(&mut self, members: &[usize]) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        for &m in members {
            self.mark[m] = self.stamp;
        }
        self.stamp
    }

    /// Cost of every edge touching `members` (each edge once).
    fn local_cost(&mut self, members: &[usize]) -> f64 {
        let stamp = self.next_stamp(members);
        let mut total = 0.0;
        for &j in members {
            for &(k, w) in &self.inv.adjacency[j] {
                if self.mark[k] == stamp && k < j {
                    continue;
                }
                total += w * self.inv.unit_cost(self.host_of[j], self.host_of[k]);
            }
        }
        total
    }

    /// `MapProcess`: the best target host for `members` (total `memory`),
    /// counting `freed` memory as already gone from its hosts.
    fn best_host(
        &mut self,
        members: &[usize],
        memory: f64,
        freed: &[(usize, f64)],
    ) -> Option<usize> {
        let stamp = self.next_stamp(members);
        for &j in members {
            for &(k, w) in &self.inv.adjacency[j] {
                // Zero-weight edges cost nothing; skipping them also keeps
                // `partner_weight[q] == 0` meaning "q not listed yet".
                if self.mark[k] != stamp && w > 0.0 {
                    let q = self.host_of[k];
                    if self.partner_weight[q] == 0.0 {
                        self.partner_hosts.push(q);
                    }
                    self.partner_weight[q] += w;
                }
            }
        }
        let mut best: Option<(f64, f64, usize)> = None;
        for &h in &self.targets {
            let released: f64 = freed
                .iter()
                .filter(|(fh, _)| *fh == h)
                .map(|(_, m)| m)
                .sum();
            let room = self.inv.hosts[h].threshold - (self.load[h] - released);
            if room + 1e-9 < memory {
                continue;
            }
            let cost: f64 = self
                .partner_hosts
                .iter()
                .map(|&q| self.partner_weight[q] * self.inv.unit_cost(h, q))
                .sum();
            let slack = room - memory;
            let better = match best {
                None => true,
                Some((bc, bs, _)) => {
                    let eps = 1e-9 * (1.0 + bc.abs());
                    cost < bc - eps || (cost <= bc + eps && slack > bs + 1e-9)
                }
            };
            if better {
                best = Some((cost, slack, h));
            }
        }
        for &q in &self.partner_hosts {
            self.partner_weight[q] = 0.0;
        }
        self.partner_hosts.clear();
        best.map(|(_, _, h)| h)
    }

    fn memory_of(&self, members: &[usize]) -> f64 {
        members.iter().map(|&m| self.inv.vms[m].memory).sum()
    }

    /// Moves `members` (currently wherever `host_of` says) to host `to`.
    fn relocate(&mut self, members: &[usize], to: usize) {
        for &m in members {
            let mem = self.inv.vms[m].memory;
            self.load[self.host_of[m]] -= mem;
            self.load[to] += mem;
            self.host_of[m] = to;
        }
    }

    fn place_singleton(&mut self, v: usize) -> bool {
        let memory = self.inv.vms[v].memory;
        let Some(h) = self.best_host(&[v], memory, &[]) else {
            return false;
        };
        let before = self.local_cost(&[v]);
        self.relocate(&[v], h);
        let after = self.local_cost(&[v]);
        self.cost += after - before;
        self.coalition_of[v] = self.coalitions.len();
        self.coalitions.push(Coalition {
            members: vec![v],
            memory,
            host: h,
            alive: true,
        });
        self.trace.push(Step {
            kind: StepKind::Place,
            coalitions: vec![(vec![v], h)],
            cost: self.cost,
        });
        true
    }

    /// Pairs of live coalitions with at least one edge between them, in a
    /// canonical order.
    fn adjacent_pairs(&self) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for (a, c) in self.coalitions.iter().enumerate() {
            if !c.alive {
                continue;
            }
            for &j in &c.members {
                for &(k, _) in &self.inv.adjacency[j] {
                    let b = self.coalition_of[k];
                    if b != NONE && b > a {
                        pairs.push((a, b));
                    }
                }
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    }

    /// The merge process: passes over the candidate pairs in random order
    /// until a whole pass merges nothing. Returns the number of merges.
    fn merge_process(&mut self, rng: &mut Rng) -> usize {
        let mut merges = 0;
        loop {
            let mut pairs = self.adjacent_pairs();
            rng.shuffle(&mut pairs);
            let mut merged = 0;
            for (a, b) in pairs {
                if self.coalitions[a].alive && self.coalitions[b].alive && self.try_merge(a, b) {
                    merged += 1;
                }
            }
            merges += merged;
            if merged == 0 {
                return merges;
            }
        }
    }

    fn try_merge(&mut self, a: usize, b: usize) -> bool {
        let (ha, hb) = (self.coalitions[a].host, self.coalitions[b].host);
        let (ma, mb) = (self.coalitions[a].memory, self.coalitions[b].memory);
        let mut union = self.coalitions[a].members.clone();
        union.extend_from_slice(&self.coalitions[b].members);
        let Some(h) = self.best_host(&union, ma + mb, &[(ha, ma), (hb, mb)]) else {
            return false;
        };
        let before = self.local_cost(&union);
        self.relocate(&union, h);
        let after = self.local_cost(&union);
        if !improves(after, before) {
            let members_b = std::mem::take(&mut self.coalitions[b].members);
            self.relocate(&members_b, hb);
            self.coalitions[b].members = members_b;
            let members_a = std::mem::take(&mut self.coalitions[a].members);
            self.relocate(&members_a, ha);
            self.coalitions[a].members = members_a;
            return false;
        }
        self.cost += after - before;
        for &m in &self.coalitions[b].members {
            self.coalition_of[m] = a;
        }
        self.coalitions[b].alive = false;
        self.coalitions[b].members.clear();
        self.coalitions[a] = Coalition {
            members: union.clone(),
            memory: ma + mb,
            host: h,
            alive: true,
        };
        self.trace.push(Step {
            kind: StepKind::Merge,
            coalitions: vec![(union, h)],
            cost: self.cost,
        });
        true
    }

    /// The split process: for each coalition of two or more, the first
    /// bipartition that lowers `v` is applied. Returns the number of splits.
    fn split_process(&mut self, exhaustive_max: usize) -> usize {
        let mut splits = 0;
        let count = self.coalitions.len();
        for a in 0..count {
            if self.coalitions[a].alive
                && self.coalitions[a].members.len() > 1
                && self.try_split(a, exhaustive_max)
            {
                splits += 1;
            }
        }
        splits
    }

    fn try_split(&mut self, a: usize, exhaustive_max: usize) -> bool {
        let members = self.coalitions[a].members.clone();
        let home = self.coalitions[a].host;
        let k = members.len();
        let before = self.local_cost(&members);
        let partitions: Vec<Vec<bool>> = if k <= exhaustive_max.min(MAX_EXHAUSTIVE_SPLIT) {
            // Bit i puts member i in the first part; the last member is
            // always in the second, so each bipartition appears once.
            (1u64..(1u64 << (k - 1)))
                .map(|mask| (0..k).map(|i| i + 1 < k && mask >> i & 1 == 1).collect())
                .collect()
        } else {
            (0..k).map(|i| (0..k).map(|j| j == i).collect()).collect()
        };
        for in_first in partitions {
            let (first, second): (Vec<usize>, Vec<usize>) = {
                let mut f = Vec::new();
                let mut s = Vec::new();
                for (i, &m) in members.iter().enumerate() {
                    if in_first[i] { f.push(m) } else { s.push(m) }
                }
                (f, s)
            };
            let (mf, ms) = (self.memory_of(&first), self.memory_of(&second));
            // The second part stays at `home` while the first is mapped.
            let Some(hf) = self.best_host(&first, mf, &[(home, mf)]) else {
                continue;
            };
            self.relocate(&first, hf);
            let Some(hs) = self.best_host(&second, ms, &[(home, ms)]) else {
                self.relocate(&first, home);
                continue;
            };
            self.relocate(&second, hs);
            let after = self.local_cost(&members);
            if !improves(after, before) {
                self.relocate(&members, home);
                continue;
            }
            self.cost += after - before;
            let b = self.coalitions.len();
            for &m in &second {
                self.coalition_of[m] = b;
            }
            self.coalitions[a] = Coalition {
                members: first.clone(),
                memory: mf,
                host: hf,
                alive: true,
            };
            self.coalitions.push(Coalition {
                members: second.clone(),
                memory: ms,
                host: hs,
                alive: true,
            });
            self.trace.push(Step {
                kind: StepKind::Split,
                coalitions: vec![(first, hf), (second, hs)],
                cost: self.cost,
            });
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::{inventory::Inventory, sim};
    use super::*;

    fn inventory(json: serde_json::Value) -> Inventory {
        Inventory::from_json(&json.to_string()).expect("valid test inventory")
    }

    /// h0 is overloaded (100 > 70) with a chatty pair (a, b) and two quiet
    /// VMs; h1 and h2 are empty targets in another rack than h0.
    fn small() -> Inventory {
        inventory(serde_json::json!({
            "version": 1,
            "hosts": [
                {"name": "h0", "capacity": 120, "threshold": 70, "rack": "r0", "vms": ["a", "b", "q1", "q2"]},
                {"name": "h1", "capacity": 120, "threshold": 100, "rack": "r1", "vms": []},
                {"name": "h2", "capacity": 120, "threshold": 100, "rack": "r1", "vms": ["z"]}
            ],
            "vms": [
                {"name": "a", "memory": 20}, {"name": "b", "memory": 20},
                {"name": "q1", "memory": 30}, {"name": "q2", "memory": 30},
                {"name": "z", "memory": 10}
            ],
            "edges": [
                {"a": "a", "b": "b", "weight": 9},
                {"a": "q1", "b": "z", "weight": 1}
            ],
            "unit_costs": {"same_rack": 1, "cross_rack": 5}
        }))
    }

    #[test]
    fn selection_takes_the_least_connected_vms_until_under_threshold() {
        let inv = small();
        let (overloaded, selected) = select(&inv);
        assert_eq!(overloaded, vec![0]);
        // q1 and q2 have no traffic on h0; moving both (60) brings 130... the
        // host carries 100, so one quiet VM (30) is enough: 70 <= 70.
        let vms: Vec<usize> = selected.iter().map(|s| s.vm).collect();
        assert_eq!(vms, vec![2]);
        assert_eq!(selected[0].intra_host_traffic, 0.0);
    }

    #[test]
    fn the_plan_clears_the_overload_and_follows_the_traffic() {
        let inv = small();
        let plan = plan(&inv, &VmmCfgConfig::default());
        assert_eq!(plan.before.overloaded, 1);
        assert_eq!(plan.after.overloaded, 0);
        // q1 talks to z on h2: it goes there rather than to the emptier h1.
        assert_eq!(
            plan.moves,
            vec![Move {
                vm: 2,
                from: 0,
                to: 2
            }]
        );
        assert!(plan.unplaced.is_empty());
        assert!((plan.cost_after - communication_cost(&inv, &plan.placement)).abs() < 1e-9);
        assert_eq!(plan.cost_after, 0.0);
    }

    #[test]
    fn communicating_vms_that_must_leave_end_up_together() {
        // Threshold 15: all four must go (quiet q1, q2 first, then a, b);
        // a and b talk a lot.
        let mut json: serde_json::Value = serde_json::json!({
            "version": 1,
            "hosts": [
                {"name": "h0", "capacity": 120, "threshold": 15, "rack": "r0", "vms": ["a", "b", "q1", "q2"]},
                {"name": "h1", "capacity": 120, "threshold": 45, "rack": "r1", "vms": []},
                {"name": "h2", "capacity": 120, "threshold": 45, "rack": "r1", "vms": []},
                {"name": "h3", "capacity": 120, "threshold": 45, "rack": "r1", "vms": []}
            ],
            "vms": [
                {"name": "a", "memory": 20}, {"name": "b", "memory": 20},
                {"name": "q1", "memory": 21}, {"name": "q2", "memory": 21}
            ],
            "edges": [{"a": "a", "b": "b", "weight": 9}],
            "unit_costs": {"same_rack": 1, "cross_rack": 5}
        });
        let inv = inventory(json.take());
        let plan = plan(&inv, &VmmCfgConfig::default());
        assert_eq!(plan.after.overloaded, 0);
        assert_eq!(plan.moves.len(), 4);
        assert_eq!(plan.placement[0], plan.placement[1], "a and b share a host");
        assert_eq!(plan.cost_after, 0.0);
        assert!(plan.cost_after <= plan.cost_initial_mapping);
    }

    #[test]
    fn a_vm_with_no_room_anywhere_stays_and_is_reported() {
        let inv = inventory(serde_json::json!({
            "version": 1,
            "hosts": [
                {"name": "h0", "capacity": 100, "threshold": 50, "vms": ["big"]},
                {"name": "h1", "capacity": 100, "threshold": 50, "vms": []}
            ],
            "vms": [{"name": "big", "memory": 80}]
        }));
        let plan = plan(&inv, &VmmCfgConfig::default());
        assert_eq!(plan.unplaced, vec![0]);
        assert!(plan.moves.is_empty());
        assert_eq!(plan.after.overloaded, 1);
    }

    #[test]
    fn a_split_that_lowers_the_cost_is_applied() {
        // x and y sit on target t1 as one coalition; y talks much more to w
        // on host t2 than to x, so splitting y off to t2 pays.
        let inv = inventory(serde_json::json!({
            "version": 1,
            "hosts": [
                {"name": "src", "capacity": 100, "threshold": 1, "rack": "r0", "vms": ["x", "y"]},
                {"name": "t1", "capacity": 100, "threshold": 90, "rack": "r1", "vms": []},
                {"name": "t2", "capacity": 100, "threshold": 90, "rack": "r2", "vms": ["w"]}
            ],
            "vms": [{"name": "x", "memory": 10}, {"name": "y", "memory": 10}, {"name": "w", "memory": 10}],
            "edges": [{"a": "x", "b": "y", "weight": 1}, {"a": "y", "b": "w", "weight": 8}],
            "unit_costs": {"same_rack": 1, "cross_rack": 3}
        }));
        let current = vec![0, 0, 2];
        let mut game = Game::new(&inv, &[0], communication_cost(&inv, &current));
        // Force the coalition {x, y} onto t1, as an earlier merge might have.
        game.relocate(&[0, 1], 1);
        game.cost = communication_cost(&inv, &game.host_of);
        for v in [0, 1] {
            game.coalition_of[v] = 0;
        }
        game.coalitions.push(Coalition {
            members: vec![0, 1],
            memory: 20.0,
            host: 1,
            alive: true,
        });
        let before = game.cost;
        assert_eq!(game.split_process(10), 1);
        assert!(game.cost < before);
        assert!((game.cost - communication_cost(&inv, &game.host_of)).abs() < 1e-9);
        assert_eq!(game.host_of[1], 2, "y joins w");
        assert_eq!(game.trace.last().map(|s| s.kind), Some(StepKind::Split));
    }

    #[test]
    fn merges_and_splits_never_raise_the_cost_and_the_running_cost_is_exact() {
        for seed in 0..30 {
            let hosts = 10 + (seed as usize % 5) * 7;
            let inv =
                Inventory::from_file(sim::vmmcfg_inventory(hosts, 3 * hosts, seed)).expect("valid");
            let plan = plan(
                &inv,
                &VmmCfgConfig {
                    seed,
                    ..VmmCfgConfig::default()
                },
            );
            let mut last = f64::INFINITY;
            for step in &plan.trace {
                if step.kind != StepKind::Place {
                    assert!(
                        step.cost <= last + 1e-9,
                        "seed {seed}: {} after {last}",
                        step.cost
                    );
                }
                last = step.cost;
            }
            let exact = communication_cost(&inv, &plan.placement);
            assert!(
                (plan.cost_after - exact).abs() < 1e-6 * (1.0 + exact),
                "seed {seed}"
            );
            assert!(plan.cost_after <= plan.cost_initial_mapping + 1e-9);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let inv = Inventory::from_file(sim::vmmcfg_inventory(60, 180, 4)).expect("valid");
        let a = plan(
            &inv,
            &VmmCfgConfig {
                seed: 9,
                ..VmmCfgConfig::default()
            },
        );
        let b = plan(
            &inv,
            &VmmCfgConfig {
                seed: 9,
                ..VmmCfgConfig::default()
            },
        );
        assert_eq!(a, b);
    }
}
