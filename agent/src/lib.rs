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

pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod metrics;
pub mod plan;
pub mod predict;
pub mod qemu;
pub mod shaping;
