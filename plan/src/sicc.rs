//! Correlation-aware consolidation (the SICC paper, docs/papers.md): ICMA-0.5, SICC and the
//! first-fit-decreasing (FFD) baseline.
//!
//! Input: one forecast utilisation series per VM (percent of a standard
//! VM, same length for all; `forecast` makes them from history).
//!
//! - **PRU** (peak resource utilisation) of an original VM is the maximum
//!   of its series.
//! - **ICMA-0.5** (the paper's Algorithm 1): compute the Pearson matrix of
//!   all items; repeatedly take the globally smallest coefficient; if it is
//!   ≤ `corr_threshold` (-0.5) and the merged item's PRU is ≤ `cvm_limit`
//!   (100 %), merge the pair into a CVM (consolidated VM) whose series is
//!   the sum and recompute its row; if the PRU is too high, mark that pair
//!   as never-again (the paper sets its coefficient to 1) and go on; stop
//!   when the smallest coefficient is above the threshold. By the paper's
//!   Theorem 3 a CVM built from coefficients ≤ -0.5 has its peak close to
//!   its mean, so a CVM's PRU is its **mean** ([`PeakModel::Mean`], the
//!   paper); [`PeakModel::Max`] uses the true maximum of the summed
//!   forecast instead, the conservative reading.
//! - **SICC** (Algorithm 2): split the VMs into PRU bands (< 25 %,
//!   25–50 %, > 50 %), run ICMA-0.5 inside each band, run it again over all
//!   resulting items, then place them with FFD.
//! - **ICMA** here means ICMA-0.5 over all VMs at once followed by FFD: the
//!   same pipeline without the segmentation, which isolates what SICC adds.
//! - **FFD**: no consolidation; the original VMs, by PRU, first fit
//!   decreasing onto servers.
//!
//! Servers hold `server_capacity` percent (10 standard VMs = 1000 %).
//! Items are packed by their PRU; each server also reports the true peak
//! of the sum of its series, so a plan that relies on Theorem 3 shows how
//! often that assumption would overload a server.

use super::stats;

/// Which consolidation pipeline to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ffd,
    Icma,
    Sicc,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ffd => "ffd",
            Self::Icma => "icma",
            Self::Sicc => "sicc",
        }
    }
}

/// How the PRU of a CVM is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakModel {
    /// The mean of the summed series (the paper's Theorem 3).
    Mean,
    /// The maximum of the summed series.
    Max,
}

/// Parameters of the consolidation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsolidationConfig {
    /// Merge only pairs whose coefficient is at most this (-0.5).
    pub corr_threshold: f64,
    /// Largest PRU of a CVM, percent of a standard VM (100).
    pub cvm_limit: f64,
    /// Server size, percent of a standard VM (1000 = 10 standard VMs).
    pub server_capacity: f64,
    pub peak_model: PeakModel,
    /// SICC's band edges on the original PRU (25 and 50 percent).
    pub band_edges: (f64, f64),
}

impl Default for ConsolidationConfig {
    fn default() -> Self {
        Self {
            corr_threshold: -0.5,
            cvm_limit: 100.0,
            server_capacity: 1000.0,
            peak_model: PeakModel::Mean,
            band_edges: (25.0, 50.0),
        }
    }
}

/// Why a consolidation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SiccError {
    #[error("VM #{vm} has a series of {len} samples; the first VM's has {expected}")]
    LengthMismatch {
        vm: usize,
        len: usize,
        expected: usize,
    },
    #[error("VM #{vm}, sample #{index} is {value}; samples must be finite")]
    NonFinite { vm: usize, index: usize, value: f64 },
    #[error("VM #{vm} has an empty series")]
    Empty { vm: usize },
    #[error("consolidation setting {field} is {value}: {rule}")]
    Config {
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
}

/// A (consolidated) VM of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Cvm {
    /// Original VM indices, sorted.
    pub members: Vec<usize>,
    /// PRU used for packing: the peak for a single VM, per [`PeakModel`]
    /// for a CVM.
    pub pru: f64,
    /// Mean and maximum of the summed series.
    pub mean: f64,
    pub peak: f64,
}

/// One server of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Indices into [`Consolidation::cvms`].
    pub cvms: Vec<usize>,
    /// Sum of the CVMs' PRU (what FFD packed).
    pub packed: f64,
    /// Maximum over time of the sum of all its series.
    pub peak: f64,
}

/// The result of a consolidation.
#[derive(Debug, Clone, PartialEq)]
pub struct Consolidation {
    pub algorithm: Algorithm,
    pub cvms: Vec<Cvm>,
    pub servers: Vec<Server>,
    /// The coefficient of every merge, in order (the paper's CCS).
    pub coefficient_sequence: Vec<f64>,
    /// Pairs under the threshold that were refused because the merged PRU
    /// was too high.
    pub refused_pairs: usize,
    /// SICC only: original VMs per band (< 25 %, 25–50 %, > 50 %).
    pub bands: Option<[usize; 3]>,
}

impl Consolidation {
    /// Mean PRU over all resulting items (the paper's "average PRU").
    pub fn mean_pru(&self) -> f64 {
        stats::mean(&self.cvms.iter().map(|c| c.pru).collect::<Vec<_>>())
    }

    /// Mean of peak − mean over all resulting items.
    pub fn mean_peak_gap(&self) -> f64 {
        stats::mean(
            &self
                .cvms
                .iter()
                .map(|c| c.peak - c.mean)
                .collect::<Vec<_>>(),
        )
    }

    /// Servers whose true peak exceeds `capacity`.
    pub fn servers_over(&self, capacity: f64) -> usize {
        self.servers
            .iter()
            .filter(|s| s.peak > capacity + 1e-9)
            .count()
    }
}

/// How a placement fares on other series than it was planned on (e.g.
/// the day that really happened instead of its forecast).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Servers whose summed series exceeds their capacity at least once.
    pub servers_over: usize,
    /// Server-samples above capacity.
    pub samples_over: usize,
    /// Highest server peak, percent of capacity.
    pub worst_server_pct: f64,
    /// CVMs (two or more members) whose summed series exceeds `cvm_limit`.
    pub cvms_over: usize,
}

/// Runs `algorithm` on one series per VM.
pub fn consolidate(
    series: &[Vec<f64>],
    algorithm: Algorithm,
    config: &ConsolidationConfig,
) -> Result<Consolidation, SiccError> {
    check(series, config)?;
    let originals: Vec<Item> = series
        .iter()
        .enumerate()
        .map(|(i, s)| Item {
            members: vec![i],
            sum: s.clone(),
            pru: stats::max(s),
        })
        .collect();
    let mut log = MergeLog::default();
    let mut bands = None;
    let items = match algorithm {
        Algorithm::Ffd => originals,
        Algorithm::Icma => icma(originals, config, &mut log),
        Algorithm::Sicc => {
            let (lo, hi) = config.band_edges;
            let mut parts: [Vec<Item>; 3] = Default::default();
            for item in originals {
                let band = if item.pru < lo {
                    0
                } else if item.pru <= hi {
                    1
                } else {
                    2
                };
                parts[band].push(item);
            }
            bands = Some([parts[0].len(), parts[1].len(), parts[2].len()]);
            let mut merged = Vec::new();
            for part in parts {
                merged.extend(icma(part, config, &mut log));
            }
            icma(merged, config, &mut log)
        }
    };
    let (cvms, servers) = place(items, config.server_capacity);
    Ok(Consolidation {
        algorithm,
        cvms,
        servers,
        coefficient_sequence: log.coefficients,
        refused_pairs: log.refused,
        bands,
    })
}

/// First-fit decreasing: bins (lists of item indices) for `sizes`, largest
/// first, each into the first bin with room. An item larger than the
/// capacity gets a bin of its own.
pub fn first_fit_decreasing(sizes: &[f64], capacity: f64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|a, b| sizes[*b].total_cmp(&sizes[*a]).then(a.cmp(b)));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut room: Vec<f64> = Vec::new();
    for i in order {
        let size = sizes[i];
        match room.iter().position(|r| *r + 1e-9 >= size) {
            Some(b) => {
                bins[b].push(i);
                room[b] -= size;
            }
            None => {
                bins.push(vec![i]);
                room.push(capacity - size);
            }
        }
    }
    bins
}

/// Replays a consolidation on `series` (indexed like the planning input).
pub fn evaluate(
    result: &Consolidation,
    series: &[Vec<f64>],
    config: &ConsolidationConfig,
) -> Evaluation {
    let len = series.iter().map(Vec::len).min().unwrap_or(0);
    let sum_of = |members: &mut dyn Iterator<Item = usize>| -> Vec<f64> {
        let mut sum = vec![0.0; len];
        for m in members {
            for (acc, v) in sum.iter_mut().zip(&series[m]) {
                *acc += v;
            }
        }
        sum
    };
    let cvms_over = result
        .cvms
        .iter()
        .filter(|c| c.members.len() > 1)
        .filter(|c| stats::max(&sum_of(&mut c.members.iter().copied())) > config.cvm_limit + 1e-9)
        .count();
    let (mut servers_over, mut samples_over, mut worst) = (0, 0, 0.0f64);
    for server in &result.servers {
        let sum = sum_of(
            &mut server
                .cvms
                .iter()
                .flat_map(|&c| result.cvms[c].members.iter().copied()),
        );
        let over = sum
            .iter()
            .filter(|v| **v > config.server_capacity + 1e-9)
            .count();
        if over > 0 {
            servers_over += 1;
        }
        samples_over += over;
        worst = worst.max(100.0 * stats::max(&sum) / config.server_capacity);
    }
    Evaluation {
        servers_over,
        samples_over,
        worst_server_pct: worst,
        cvms_over,
    }
}

fn check(series: &[Vec<f64>], config: &ConsolidationConfig) -> Result<(), SiccError> {
    let bad = |field, value, rule| Err(SiccError::Config { field, value, rule });
    if !(-1.0..=1.0).contains(&config.corr_threshold) {
        return bad(
            "corr_threshold",
            config.corr_threshold,
            "must be in [-1, 1]",
        );
    }
    if !(config.cvm_limit.is_finite() && config.cvm_limit > 0.0) {
        return bad("cvm_limit", config.cvm_limit, "must be finite and > 0");
    }
    if !(config.server_capacity.is_finite() && config.server_capacity > 0.0) {
        return bad(
            "server_capacity",
            config.server_capacity,
            "must be finite and > 0",
        );
    }
    let Some(first) = series.first() else {
        return Ok(());
    };
    for (vm, s) in series.iter().enumerate() {
        if s.is_empty() {
            return Err(SiccError::Empty { vm });
        }
        if s.len() != first.len() {
            return Err(SiccError::LengthMismatch {
                vm,
                len: s.len(),
                expected: first.len(),
            });
        }
        if let Some((index, &value)) = s.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SiccError::NonFinite { vm, index, value });
        }
    }
    Ok(())
}

struct Item {
    members: Vec<usize>,
    sum: Vec<f64>,
    pru: f64,
}

#[derive(Default)]
struct MergeLog {
    coefficients: Vec<f64>,
    refused: usize,
}

/// ICMA-0.5 over `items`; returns the items left when no pair qualifies.
fn icma(mut items: Vec<Item>, config: &ConsolidationConfig, log: &mut MergeLog) -> Vec<Item> {
    let n = items.len();
    if n < 2 {
        return items;
    }
    let t = items[0].sum.len();
    let mut z = vec![0.0f32; n * t];
    let mut scratch = Vec::with_capacity(t);
    for (i, item) in items.iter().enumerate() {
        stats::unit_centered_into(&item.sum, &mut scratch);
        z[i * t..(i + 1) * t].copy_from_slice(&scratch);
    }
    // Full symmetric matrix; +inf marks "never" (diagonal, refused pairs).
    let mut r = vec![f32::INFINITY; n * n];
    for i in 0..n {
        let zi = &z[i * t..(i + 1) * t];
        for j in i + 1..n {
            let c = stats::dot(zi, &z[j * t..(j + 1) * t]);
            r[i * n + j] = c;
            r[j * n + i] = c;
        }
    }
    let mut active = vec![true; n];
    let mut row_min = vec![f32::INFINITY; n];
    let mut row_arg = vec![usize::MAX; n];
    let rescan =
        |i: usize, r: &[f32], active: &[bool], row_min: &mut [f32], row_arg: &mut [usize]| {
            let (mut best, mut arg) = (f32::INFINITY, usize::MAX);
            for j in 0..n {
                if active[j] && r[i * n + j] < best {
                    best = r[i * n + j];
                    arg = j;
                }
            }
            row_min[i] = best;
            row_arg[i] = arg;
        };
    for i in 0..n {
        rescan(i, &r, &active, &mut row_min, &mut row_arg);
    }
    let threshold = config.corr_threshold as f32;
    loop {
        let mut best: Option<usize> = None;
        for i in 0..n {
            if active[i] && row_min[i] <= threshold && best.is_none_or(|b| row_min[i] < row_min[b])
            {
                best = Some(i);
            }
        }
        let Some(i) = best else { break };
        let j = row_arg[i];
        let (a, b) = (i.min(j), i.max(j));
        let coefficient = r[a * n + b];
        let merged: Vec<f64> = items[a]
            .sum
            .iter()
            .zip(&items[b].sum)
            .map(|(x, y)| x + y)
            .collect();
        let pru = match config.peak_model {
            PeakModel::Mean => stats::mean(&merged),
            PeakModel::Max => stats::max(&merged),
        };
        if pru > config.cvm_limit + 1e-9 {
            r[a * n + b] = f32::INFINITY;
            r[b * n + a] = f32::INFINITY;
            log.refused += 1;
            rescan(a, &r, &active, &mut row_min, &mut row_arg);
            rescan(b, &r, &active, &mut row_min, &mut row_arg);
            continue;
        }
        // `a` becomes the CVM, `b` leaves.
        log.coefficients.push(f64::from(coefficient));
        let gone = std::mem::take(&mut items[b].members);
        items[a].members.extend(gone);
        items[a].sum = merged;
        items[a].pru = pru;
        items[b].sum = Vec::new();
        active[b] = false;
        stats::unit_centered_into(&items[a].sum, &mut scratch);
        z[a * t..(a + 1) * t].copy_from_slice(&scratch);
        for k in 0..n {
            if active[k] && k != a {
                let c = stats::dot(&z[a * t..(a + 1) * t], &z[k * t..(k + 1) * t]);
                // A refusal stays a refusal only for the pair it was made
                // for; the CVM is a new item and gets a fresh coefficient.
                r[a * n + k] = c;
                r[k * n + a] = c;
            }
        }
        rescan(a, &r, &active, &mut row_min, &mut row_arg);
        for k in 0..n {
            if !active[k] || k == a {
                continue;
            }
            if row_arg[k] == a || row_arg[k] == b {
                rescan(k, &r, &active, &mut row_min, &mut row_arg);
            } else if r[k * n + a] < row_min[k] {
                row_min[k] = r[k * n + a];
                row_arg[k] = a;
            }
        }
    }
    items
        .into_iter()
        .zip(active)
        .filter_map(|(item, alive)| alive.then_some(item))
        .collect()
}

/// Packs `items` with FFD and builds the result records.
fn place(items: Vec<Item>, capacity: f64) -> (Vec<Cvm>, Vec<Server>) {
    let sizes: Vec<f64> = items.iter().map(|i| i.pru).collect();
    let bins = first_fit_decreasing(&sizes, capacity);
    let len = items.first().map_or(0, |i| i.sum.len());
    let servers = bins
        .iter()
        .map(|bin| {
            let mut sum = vec![0.0; len];
            for &i in bin {
                for (acc, v) in sum.iter_mut().zip(&items[i].sum) {
                    *acc += v;
                }
            }
            Server {
                cvms: bin.clone(),
                packed: bin.iter().map(|&i| sizes[i]).sum(),
                peak: stats::max(&sum).max(0.0),
            }
        })
        .collect();
    let cvms = items
        .into_iter()
        .map(|item| {
            let mut members = item.members;
            members.sort_unstable();
            Cvm {
                members,
                pru: item.pru,
                mean: stats::mean(&item.sum),
                peak: stats::max(&item.sum),
            }
        })
        .collect();
    (cvms, servers)
}

#[cfg(test)]
mod tests {
    use super::super::rng::Rng;
    use super::*;

    fn wave(mean: f64, amp: f64, phase: f64, len: usize) -> Vec<f64> {
        (0..len)
            .map(|t| mean + amp * (std::f64::consts::TAU * t as f64 / len as f64 + phase).sin())
            .collect()
    }

    #[test]
    fn ffd_packs_largest_first_into_the_first_bin_with_room() {
        let bins = first_fit_decreasing(&[3.0, 7.0, 5.0, 5.0, 2.0, 8.0], 10.0);
        // 8 | 7 | 5+5 ; 3 joins 7, 2 joins 8.
        assert_eq!(bins, vec![vec![5, 4], vec![1, 0], vec![2, 3]]);
        assert_eq!(first_fit_decreasing(&[12.0], 10.0), vec![vec![0]]);
        assert!(first_fit_decreasing(&[], 10.0).is_empty());
    }

    #[test]
    fn anti_phase_vms_merge_and_in_phase_vms_do_not() {
        let len = 240;
        let series = vec![
            wave(30.0, 10.0, 0.0, len),
            wave(30.0, 10.0, std::f64::consts::PI, len),
            wave(30.0, 10.0, 0.05, len),
        ];
        let c =
            consolidate(&series, Algorithm::Icma, &ConsolidationConfig::default()).expect("runs");
        assert_eq!(c.cvms.len(), 2);
        assert!(
            c.cvms
                .iter()
                .any(|x| x.members == vec![0, 1] || x.members == vec![1, 2])
        );
        assert_eq!(c.coefficient_sequence.len(), 1);
        assert!(c.coefficient_sequence[0] < -0.99);
        let cvm = c
            .cvms
            .iter()
            .find(|x| x.members.len() == 2)
            .expect("one CVM");
        assert!(
            (cvm.pru - 60.0).abs() < 1e-6,
            "mean model: PRU is the mean, {}",
            cvm.pru
        );
    }

    #[test]
    fn weakly_anti_correlated_pairs_stay_apart() {
        let len = 240;
        // Phase difference 110 degrees: r = cos(110°) ≈ -0.34 > -0.5.
        let series = vec![
            wave(30.0, 10.0, 0.0, len),
            wave(30.0, 10.0, 110f64.to_radians(), len),
        ];
        let c =
            consolidate(&series, Algorithm::Icma, &ConsolidationConfig::default()).expect("runs");
        assert_eq!(c.cvms.len(), 2);
        assert!(c.coefficient_sequence.is_empty());
    }

    #[test]
    fn a_pair_whose_cvm_would_exceed_100_percent_is_refused() {
        let len = 240;
        let series = vec![
            wave(60.0, 10.0, 0.0, len),
            wave(60.0, 10.0, std::f64::consts::PI, len),
        ];
        let c =
            consolidate(&series, Algorithm::Icma, &ConsolidationConfig::default()).expect("runs");
        assert_eq!(c.cvms.len(), 2);
        assert_eq!(c.refused_pairs, 1);
    }

    #[test]
    fn the_max_model_keeps_every_cvm_peak_under_the_limit() {
        let mut rng = Rng::new(3);
        let series: Vec<Vec<f64>> = (0..60)
            .map(|_| {
                wave(
                    rng.uniform(15.0, 45.0),
                    rng.uniform(5.0, 20.0),
                    rng.uniform(0.0, std::f64::consts::TAU),
                    200,
                )
            })
            .collect();
        let config = ConsolidationConfig {
            peak_model: PeakModel::Max,
            ..ConsolidationConfig::default()
        };
        let c = consolidate(&series, Algorithm::Sicc, &config).expect("runs");
        assert!(c.cvms.iter().all(|x| x.peak <= 100.0 + 1e-9));
        assert!(c.servers_over(config.server_capacity) == 0);
        assert_eq!(c.bands.map(|b| b.iter().sum::<usize>()), Some(60));
    }

    /// Straightforward ICMA-0.5: recompute every coefficient in f64 each
    /// round. Returns the member sets.
    fn naive_icma(series: &[Vec<f64>], config: &ConsolidationConfig) -> Vec<Vec<usize>> {
        let mut items: Vec<(Vec<usize>, Vec<f64>)> = series
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![i], s.clone()))
            .collect();
        let mut refused: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        loop {
            let mut best: Option<(f64, usize, usize)> = None;
            for a in 0..items.len() {
                for b in a + 1..items.len() {
                    if refused.contains(&(items[a].0.clone(), items[b].0.clone())) {
                        continue;
                    }
                    let r = stats::pearson(&items[a].1, &items[b].1);
                    if best.is_none_or(|(br, _, _)| r < br) {
                        best = Some((r, a, b));
                    }
                }
            }
            let Some((r, a, b)) = best else { break };
            if r > config.corr_threshold {
                break;
            }
            let sum: Vec<f64> = items[a]
                .1
                .iter()
                .zip(&items[b].1)
                .map(|(x, y)| x + y)
                .collect();
            if stats::mean(&sum) > config.cvm_limit {
                refused.push((items[a].0.clone(), items[b].0.clone()));
                continue;
            }
            let (mb, _) = items.remove(b);
            items[a].0.extend(mb);
            items[a].1 = sum;
        }
        let mut sets: Vec<Vec<usize>> = items
            .into_iter()
            .map(|(mut m, _)| {
                m.sort_unstable();
                m
            })
            .collect();
        sets.sort();
        sets
    }

    #[test]
    fn the_incremental_matrix_matches_a_naive_recomputation() {
        let config = ConsolidationConfig::default();
        for seed in 0..12 {
            let mut rng = Rng::new(100 + seed);
            let n = 8 + (seed as usize % 4) * 6;
            let series: Vec<Vec<f64>> = (0..n)
                .map(|_| {
                    let base = wave(
                        rng.uniform(10.0, 40.0),
                        rng.uniform(3.0, 15.0),
                        rng.uniform(0.0, std::f64::consts::TAU),
                        120,
                    );
                    base.into_iter()
                        .map(|v| (v + 2.0 * rng.normal()).clamp(0.0, 100.0))
                        .collect()
                })
                .collect();
            let fast = consolidate(&series, Algorithm::Icma, &config).expect("runs");
            let mut sets: Vec<Vec<usize>> = fast.cvms.iter().map(|c| c.members.clone()).collect();
            sets.sort();
            assert_eq!(sets, naive_icma(&series, &config), "seed {seed}");
        }
    }

    #[test]
    fn bad_series_are_rejected_by_index() {
        let config = ConsolidationConfig::default();
        let err = consolidate(&[vec![1.0; 5], vec![1.0; 4]], Algorithm::Sicc, &config)
            .expect_err("lengths");
        assert!(err.to_string().contains("VM #1 has a series of 4"), "{err}");
        let err = consolidate(&[vec![1.0, f64::NAN]], Algorithm::Ffd, &config).expect_err("nan");
        assert!(err.to_string().contains("VM #0, sample #1"), "{err}");
        let bad = ConsolidationConfig {
            corr_threshold: -2.0,
            ..config
        };
        assert!(consolidate(&[], Algorithm::Icma, &bad).is_err());
    }

    #[test]
    fn evaluate_counts_overloads_on_other_series() {
        let len = 100;
        let series = vec![
            wave(50.0, 40.0, 0.0, len),
            wave(45.0, 40.0, std::f64::consts::PI, len),
        ];
        let config = ConsolidationConfig {
            server_capacity: 100.0,
            ..ConsolidationConfig::default()
        };
        let c = consolidate(&series, Algorithm::Icma, &config).expect("runs");
        assert_eq!(c.cvms.len(), 1);
        assert_eq!(evaluate(&c, &series, &config).servers_over, 0);
        // The day that really came: both peaked together.
        let truth = vec![wave(50.0, 40.0, 0.0, len), wave(45.0, 40.0, 0.0, len)];
        let e = evaluate(&c, &truth, &config);
        assert_eq!(e.servers_over, 1);
        assert_eq!(e.cvms_over, 1);
        assert!(e.samples_over > 0 && e.worst_server_pct > 100.0);
    }
}
