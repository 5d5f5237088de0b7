//! QEMU telemetry and control.
//!
//! - [`qmp`]: the asynchronous QMP client (unix socket, events, timeouts).
//! - [`types`]: serde types of the replies and events vmbw reads.
//! - [`commands`]: typed queries and the controls the controller uses
//!   (`max-bandwidth`, `downtime-limit`, capabilities, post-copy, cancel).
//! - [`hoststats`]: host-side measurements of a VM (vCPU CPU time,
//!   interface counters, resident guest RAM).
//! - [`monitor`]: follows a migration and yields one sample (X1..X6) per
//!   finished pre-copy iteration.
//! - [`trace`]: the dirty-page trace CSV, writer and validating reader.
//! - [`record`]: `vmbw record`, the monitor writing a trace.

pub mod commands;
#[cfg(test)]
mod fake_qmp;
pub mod hoststats;
pub mod monitor;
#[cfg(test)]
mod monitor_tests;
pub mod qmp;
#[cfg(test)]
mod qmp_tests;
pub mod record;
pub mod trace;
pub mod types;

pub use commands::Capability;
pub use monitor::{
    Drain, IterationSample, MigrationMonitor, MigrationOutcome, MonitorConfig, Progress,
};
pub use qmp::{Qmp, QmpError, QmpOptions};
