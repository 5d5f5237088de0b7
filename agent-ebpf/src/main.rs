//! vmbw's tc programs. Each entry point is a thin wrapper over a `try_*`
//! function; the datapath always fails open (TC_ACT_OK) when something it
//! does not understand comes by.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use vmbw_common::{Counter, Direction};

/// Bytes and packets per direction, per CPU. Indexed by `Direction`.
#[map(name = "VMBW_DIR_COUNTERS")]
static VMBW_DIR_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Direction::COUNT, 0);

#[classifier]
pub fn vmbw_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Egress);
    TC_ACT_OK
}

#[classifier]
pub fn vmbw_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    TC_ACT_OK
}

#[inline(always)]
fn count(ctx: &TcContext, dir: Direction) {
    if let Some(c) = VMBW_DIR_COUNTERS.get_ptr_mut(dir.index()) {
        // SAFETY: the pointer comes from the per-CPU array of this CPU; no
        // other program instance touches it concurrently.
        unsafe {
            (*c).bytes += u64::from(ctx.len());
            (*c).packets += 1;
        }
    }
}

// Only the BPF build needs a panic handler; host builds (clippy --workspace)
// get std's through the dependencies.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
