//! vmbw: migration-aware bandwidth enforcement for VM hosts.
//!
//! The library holds every subsystem; `src/main.rs` is the `vmbw` command
//! line over it.
//!
//! - [`datapath`]: the eBPF tc programs: loading, attaching, counters.
//! - [`qemu`]: QMP client, per-iteration migration monitor, trace CSV.

pub mod datapath;
pub mod qemu;
