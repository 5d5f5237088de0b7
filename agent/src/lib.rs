//! vmbw: migration-aware bandwidth enforcement for VM hosts.
//!
//! The library holds every subsystem; `src/main.rs` is the `vmbw` command
//! line over it.
//!
//! - [`datapath`]: the eBPF tc programs: classification into (vm, class),
//!   per-CPU counters, HTB steering and EDT pacing, pinning and adoption.
//! - [`predict`]: GM(1,N)/GM(1,1) dirty-page prediction and baselines.
//! - [`control`]: NRAC, BDA and the AdaMig watchdog; a pre-copy simulator.
//! - [`shaping`]: the HTB tree on the uplink over rtnetlink: classes, live
//!   rate changes, fq/EDT detection, restoring the original qdisc.
//! - [`plan`]: migration planning (VMM-CFG) and consolidation (SICC).
//! - [`qemu`]: QMP client, per-iteration migration monitor, trace CSV.
//! - [`api`]: the agent's read-only status API: wire types, URL paths and
//!   the tables the debug CLI and `kubectl-vmbw` print.
//! - [`kubevirt`]: KubeVirt discovery: VMIs and migrations on this node to
//!   datapath registrations.
//! - [`kubectl`]: the `kubectl vmbw` plugin (reaches agents via the API
//!   server's pod proxy).
//! - [`migration`]: the one interface a VM's migrations are followed and
//!   steered through ([`migration::MigrationSource`]), implemented over QMP
//!   and over libvirt.
//! - [`libvirt`]: migration statistics and control through libvirt
//!   (feature `libvirt`).

pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod kubectl;
pub mod kubevirt;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod metrics;
pub mod migration;
pub mod plan;
pub mod predict;
pub mod qemu;
pub mod shaping;
