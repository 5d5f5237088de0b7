//! Migration and consolidation planning: which VMs should move where.
//!
//! Pure, deterministic modules (no I/O; the same inputs and seed give the
//! same plan):
//! - [`inventory`]: the JSON inventory format, its schema check and the
//!   indexed model the planners read;
//! - [`vmmcfg`]: VMM-CFG (the VMM-CFG paper, docs/papers.md): VM selection on overloaded hosts by
//!   intra-host traffic and coalition formation (merge / split / mapping);
//! - [`sicc`]: ICMA-0.5, SICC and first-fit decreasing (the SICC paper);
//! - [`forecast`]: day-ahead utilisation forecasts (daily profile + ARMA);
//! - [`stats`]: mean, standard deviation, Pearson;
//! - [`rng`]: the seeded generator;
//! - [`sim`]: the papers' synthetic data centres;
//! - [`report`]: text and JSON renderings, KubeVirt migration manifests.
//!
//! `vmbw plan` runs them on an inventory file; `cargo xtask bench plan`
//! reproduces the papers' simulations.

pub mod forecast;
pub mod inventory;
pub mod report;
pub mod rng;
pub mod sicc;
pub mod sim;
pub mod stats;
pub mod vmmcfg;

use forecast::{ArmaOrder, ForecastError, seasonal_forecast};
use inventory::Inventory;

/// Why a plan could not be made from a (valid) inventory.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("VM `{vm}` has no utilisation history; consolidation needs one for every VM")]
    MissingUtilisation { vm: String },
    #[error("forecasting the utilisation of VM `{vm}` failed")]
    Forecast {
        vm: String,
        #[source]
        source: ForecastError,
    },
    #[error("consolidation failed")]
    Consolidation(#[source] sicc::SiccError),
}

/// Day-ahead forecasts (one `series_period` each) of every VM's
/// utilisation history, in inventory order.
pub fn forecast_inventory(inv: &Inventory, order: ArmaOrder) -> Result<Vec<Vec<f64>>, PlanError> {
    inv.vms
        .iter()
        .map(|vm| {
            let history =
                vm.utilisation
                    .as_deref()
                    .ok_or_else(|| PlanError::MissingUtilisation {
                        vm: vm.name.clone(),
                    })?;
            seasonal_forecast(history, inv.series_period, inv.series_period, order)
                .map(|f| f.values)
                .map_err(|source| PlanError::Forecast {
                    vm: vm.name.clone(),
                    source,
                })
        })
        .collect()
}

/// Forecasts every VM and consolidates them with `algorithm`.
pub fn consolidate_inventory(
    inv: &Inventory,
    algorithm: sicc::Algorithm,
    config: &sicc::ConsolidationConfig,
) -> Result<(Vec<Vec<f64>>, sicc::Consolidation), PlanError> {
    let forecasts = forecast_inventory(inv, ArmaOrder::default())?;
    let result =
        sicc::consolidate(&forecasts, algorithm, config).map_err(PlanError::Consolidation)?;
    Ok((forecasts, result))
}
