//! vmbw: migration-aware bandwidth enforcement for VM hosts.
//!
//! The library holds every subsystem; `src/main.rs` is the `vmbw` command
//! line over it.
//!
//! - [`datapath`]: the eBPF tc programs: loading, attaching, counters.
//! - [`plan`]: migration planning (VMM-CFG) and consolidation (SICC).

pub mod datapath;
pub mod plan;
