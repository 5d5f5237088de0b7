//! BDA: bandwidth dynamic allocation (the BDA paper, docs/papers.md). Per
//! iteration n of a migration:
//! - first round: a configured initial bandwidth;
//! - `F_bw = T_bw − U_bw` (free bandwidth);
//! - last round (stop-and-copy): all of it, `E_bw = F_bw`;
//! - otherwise, with `D_avg` the mean dirty rate of rounds 1..n−1 and
//!   `U = U_dirty[n]` (the predicted dirty rate of this round):
//!   `a = U/(D_avg+U)`, `b = D_avg/(D_avg+U)`, service reserve
//!   `B_bw = a·U + b·D_avg`; if `B_bw > F_bw`:
//!   `B_bw = F_bw·B_bw/(B_bw + c·B_bw)` with `c = U_dirty[n]/U_dirty[n−1]`;
//!   the migration gets `E_bw = F_bw − B_bw`.
//!
//! BDA is a single-migration method; several migrations split `F_bw`
//! equally. The service reserve is the VM's application reservation.

use super::{Decision, Inputs, VmDecision, mbit};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// The first round's bandwidth (bytes/s).
    pub initial: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            initial: 32.0 * 1024.0 * 1024.0,
        }
    }
}

pub fn decide(cfg: &Config, inputs: &Inputs) -> Decision {
    let n = inputs.vms.len().max(1) as f64;
    let current_app: f64 = inputs
        .vms
        .iter()
        .map(|vm| vm.app_history.last().copied().unwrap_or(0.0))
        .sum();
    // The free bandwidth each migration's BDA works with.
    let f_bw = (inputs.link.free() + current_app) / n;
    let vms = inputs
        .vms
        .iter()
        .enumerate()
        .map(|(i, vm)| {
            let mut d = VmDecision::unenforced(&vm.name);
            d.priority = i as u32;
            let (e_bw, b_bw) = if vm.iteration <= 1 {
                d.why(format!(
                    "first round: initial bandwidth {}",
                    mbit(cfg.initial)
                ));
                (cfg.initial.min(f_bw.max(0.0)), 0.0)
            } else if vm.final_pass(f_bw) {
                d.why(format!(
                    "last round: all free bandwidth F_bw = {}",
                    mbit(f_bw)
                ));
                (f_bw, 0.0)
            } else {
                let hist = &vm.dirty_rate_history;
                let u = vm.dirty_rate();
                let d_avg = if hist.is_empty() {
                    u
                } else {
                    hist.iter().sum::<f64>() / hist.len() as f64
                };
                let (a, b) = if d_avg + u > 0.0 {
                    (u / (d_avg + u), d_avg / (d_avg + u))
                } else {
                    (0.0, 0.0)
                };
                let mut b_bw = a * u + b * d_avg;
                d.why(format!(
                    "D_avg = {}, U = {}, a = {a:.3}, b = {b:.3}: service reserve B_bw = {}",
                    mbit(d_avg),
                    mbit(u),
                    mbit(b_bw)
                ));
                if b_bw > f_bw {
                    let prev = hist.last().copied().unwrap_or(u);
                    let c = if prev > 0.0 { u / prev } else { 1.0 };
                    b_bw = f_bw * b_bw / (b_bw + c * b_bw);
                    d.why(format!(
                        "B_bw > F_bw {}: scaled with c = {c:.3} to {}",
                        mbit(f_bw),
                        mbit(b_bw)
                    ));
                }
                ((f_bw - b_bw).max(0.0), b_bw)
            };
            d.app_reserve = b_bw;
            // E_bw is the migration's guaranteed share; like NRAC it may
            // borrow what the service leaves unused.
            d.enforce(e_bw, inputs.link.capacity);
            d.why(format!("migration gets E_bw = {}", mbit(e_bw)));
            d
        })
        .collect();
    Decision { vms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Link, VmInputs};

    use crate::api::BYTES_PER_MBIT as MBIT;

    fn vm(iteration: u32, dirty_mbit: f64, history_mbit: &[f64], remaining: f64) -> VmInputs {
        VmInputs {
            name: "vm".into(),
            predicted_dirty_pages: dirty_mbit * MBIT / 4096.0,
            iteration_s: 1.0,
            page_size: 4096.0,
            app_history: vec![0.0],
            remaining,
            iteration,
            downtime_limit_s: 0.3,
            dirty_rate_history: history_mbit.iter().map(|m| m * MBIT).collect(),
            ..VmInputs::unknown("")
        }
    }

    fn one(link_used: f64, v: VmInputs) -> VmDecision {
        let inputs = Inputs {
            link: Link {
                capacity: 100.0 * MBIT,
                usage: link_used * MBIT,
                encap_bytes: 0.0,
            },
            vms: vec![v],
        };
        decide(
            &Config {
                initial: 20.0 * MBIT,
            },
            &inputs,
        )
        .vms
        .remove(0)
    }

    #[test]
    fn first_round_uses_the_initial_bandwidth() {
        let d = one(0.0, vm(1, 10.0, &[], 1e9));
        assert!((d.migration_rate.expect("rate") / MBIT - 20.0).abs() < 1e-9);
    }

    #[test]
    fn middle_round_reserves_by_the_coefficients() {
        // D_avg = 10, U = 30: a = 0.75, b = 0.25, B = 22.5 + 2.5 = 25;
        // F = 100 - 40 = 60 -> E = 35.
        let d = one(40.0, vm(3, 30.0, &[10.0, 10.0], 1e9));
        assert!(
            (d.app_reserve / MBIT - 25.0).abs() < 1e-9,
            "{}",
            d.app_reserve / MBIT
        );
        assert!((d.migration_rate.expect("rate") / MBIT - 35.0).abs() < 1e-9);
    }

    #[test]
    fn reserve_above_free_is_scaled_by_c() {
        // D_avg = 50, U = 100: a = 2/3, b = 1/3, B = 66.67 + 16.67 = 83.33 > F = 20;
        // c = 100/50 = 2 -> B = 20·83.33/(83.33 + 166.67) = 6.667; E = 13.333.
        let d = one(80.0, vm(3, 100.0, &[50.0, 50.0], 1e12));
        assert!(
            (d.app_reserve / MBIT - 20.0 / 3.0).abs() < 1e-9,
            "{}",
            d.app_reserve / MBIT
        );
        assert!((d.migration_rate.expect("rate") / MBIT - 40.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn last_round_gets_all_free_bandwidth() {
        // 1 MB left at F = 60 Mbit = 7.5 MB/s: 0.13 s <= 0.3 s downtime.
        let d = one(40.0, vm(5, 30.0, &[10.0, 10.0], 1e6));
        assert!((d.migration_rate.expect("rate") / MBIT - 60.0).abs() < 1e-9);
        assert_eq!(d.app_reserve, 0.0);
    }
}
