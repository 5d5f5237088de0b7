//! vmbw: migration-aware bandwidth enforcement for VM hosts.
//!
//! The library holds every subsystem; `src/main.rs` is the `vmbw` command
//! line over it. The top-level modules, one line each:
//!
//! - [`api`]: the status API (crate `vmbw-api`): wire types, URL paths,
//!   listen address, tables.
//! - [`config`]: the agent's TOML config, typed and checked at load.
//! - [`control`]: NRAC, BDA, the AdaMig watchdog, the convergence forecast
//!   and escalation; a pre-copy simulator.
//! - [`daemon`]: `vmbw agent`: start-up, per-VM tasks, control loop, shutdown.
//! - [`datapath`]: the eBPF tc programs: classification, counters, HTB/EDT.
//! - [`kubevirt`]: KubeVirt discovery: this node's VMIs and migrations.
//! - [`libvirt`]: migration statistics and control through libvirt (feature).
//! - [`metrics`]: the agent's Prometheus metrics.
//! - [`migration`]: [`migration::MigrationSource`], over QMP or libvirt.
//! - [`predict`]: GM(1,N)/GM(1,1) dirty-page prediction and baselines.
//! - [`qemu`]: QMP client, per-iteration migration monitor, trace CSV.
//! - [`shaping`]: the HTB tree on the uplink over rtnetlink.
//!
//! Migration planning and consolidation (VMM-CFG, SICC) are the
//! `vmbw-plan` crate; the command line drives it.

/// The status API's types live in their own crate so that `kubectl-vmbw`
/// builds without the agent.
pub use vmbw_api as api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
#[doc(hidden)]
pub mod fuzzing;
pub mod kubevirt;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod metrics;
pub mod migration;
pub mod predict;
pub mod qemu;
pub mod shaping;
