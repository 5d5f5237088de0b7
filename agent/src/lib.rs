//! vmbw: migration-aware bandwidth enforcement for VM hosts.
//!
//! The library holds every subsystem; `src/main.rs` is the `vmbw` command
//! line over it.
//!
//! - [`datapath`]: the eBPF tc programs: loading, attaching, counters.
//! - [`shaping`]: the HTB tree on the uplink over rtnetlink: classes, live
//!   rate changes, fq/EDT detection, restoring the original qdisc.

pub mod datapath;
pub mod shaping;
