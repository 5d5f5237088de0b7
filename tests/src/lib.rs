//! Support for vmbw's privileged integration tests: network namespaces that
//! clean up after themselves, running code inside a namespace, and visible
//! skips when the machine lacks what a test needs.
//!
//! Every namespace a test makes is named `vmbw-t<pid>-<n>`: unique per test
//! process, so tests run in parallel, and recognisable, so `cargo xtask test`
//! can remove the leftovers of a test process that was killed (its pid is
//! gone) without touching anything else.
//!
//! [`guest`] builds the test guest (kernel + initramfs with
//! `vmbw-workload`), [`vm`] runs QEMU processes, [`testbed`] joins source
//! and destination hosts through a rate-limited router for migrations,
//! [`overlay`] joins two KubeVirt-shaped nodes through VXLAN.

pub mod agent;
pub mod bpffs;
pub mod frames;
pub mod guest;
pub mod kubeapi;
pub mod libvirtd;
pub mod logs;
pub mod measure;
pub mod netns;
pub mod overlay;
pub mod policy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sender;
pub mod shaped;
pub mod skip;
pub mod tcp;
pub mod testbed;
pub mod vm;

pub use bpffs::BpffsMount;
pub use netns::{NetNs, in_netns};
pub use skip::{privileged, skip};

/// Skips the calling test (returning from it) when `$check` is an `Err(reason)`.
#[macro_export]
macro_rules! require {
    ($check:expr) => {
        if let Err(reason) = $check {
            $crate::skip(&reason);
            return;
        }
    };
}
