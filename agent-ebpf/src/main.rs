//! vmbw's tc programs for the host uplink.
//!
//! Both directions parse the headers, classify the packet into (vm, class)
//! with the user-space-maintained tables and count it per CPU. The egress
//! program then, depending on the datapath mode, steers it into its HTB class
//! (`skb->priority`) or paces it (`skb->tstamp`, EDT). The parsing and
//! classification order and the EDT arithmetic are in `vmbw-common` so host
//! tests reach the same code.
//!
//! Every entry point is a thin wrapper over a `try_*` function whose result
//! is the verdict; anything unexpected fails open (TC_ACT_OK).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use vmbw_common::{
    AddrKey, CLASS_ENTRIES, COUNTER_ENTRIES, ClassConfig, Counter, Direction, EdtState, FlowKey,
    MAX_VMS, NO_VM, PORT_ENTRIES, Settings, class_index,
    classify::{Tables, Verdict, classify},
    counter_index,
    edt::{Edt, pace},
    mode,
    parse::{Packet, parse},
};

/// Exact migration flows and VM addresses the tables can hold.
const MAX_FLOWS: u32 = 65536;
const MAX_ADDRS: u32 = 65536;

// All maps are pinned by name under the directory user space loads with, so
// a restarted agent finds the same tables and counters.
#[map(name = "VMBW_DIR_COUNTERS")]
static DIR_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(Direction::COUNT, 0);
#[map(name = "VMBW_COUNTERS")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);
#[map(name = "VMBW_FLOWS")]
static FLOWS: HashMap<FlowKey, u32> = HashMap::pinned(MAX_FLOWS, 0);
#[map(name = "VMBW_PORTS")]
static PORTS: Array<u32> = Array::pinned(PORT_ENTRIES, 0);
#[map(name = "VMBW_ADDRS")]
static ADDRS: HashMap<AddrKey, u32> = HashMap::pinned(MAX_ADDRS, 0);
#[map(name = "VMBW_IFINDEX")]
static IFINDEX: HashMap<u32, u32> = HashMap::pinned(MAX_VMS, 0);
#[map(name = "VMBW_CLASS_CONFIG")]
static CLASS_CONFIG: Array<ClassConfig> = Array::pinned(CLASS_ENTRIES, 0);
#[map(name = "VMBW_EDT_STATE")]
static EDT_STATE: Array<EdtState> = Array::pinned(CLASS_ENTRIES, 0);
#[map(name = "VMBW_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[classifier]
pub fn vmbw_egress(ctx: TcContext) -> i32 {
    try_egress(&ctx).unwrap_or(TC_ACT_OK)
}

#[classifier]
pub fn vmbw_ingress(ctx: TcContext) -> i32 {
    try_ingress(&ctx).unwrap_or(TC_ACT_OK)
}

fn try_ingress(ctx: &TcContext) -> Option<i32> {
    let len = u64::from(ctx.len());
    bump(DIR_COUNTERS.get_ptr_mut(Direction::Ingress.index()), len);
    let v = verdict(ctx, Direction::Ingress, 0);
    bump(
        COUNTERS.get_ptr_mut(counter_index(v.vm, v.class, Direction::Ingress.index())),
        len,
    );
    Some(TC_ACT_OK)
}

fn try_egress(ctx: &TcContext) -> Option<i32> {
    let len = u64::from(ctx.len());
    bump(DIR_COUNTERS.get_ptr_mut(Direction::Egress.index()), len);
    // SAFETY: ctx.skb.skb is the kernel's __sk_buff for this run.
    let from_ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let v = verdict(ctx, Direction::Egress, from_ifindex);
    let counter = COUNTERS.get_ptr_mut(counter_index(v.vm, v.class, Direction::Egress.index()));
    let settings = SETTINGS.get(0).copied().unwrap_or_default();
    let idx = class_index(v.vm, v.class);
    match settings.mode {
        mode::HTB => {
            let priority = if v.urgent && settings.urgent_priority != 0 {
                settings.urgent_priority
            } else {
                CLASS_CONFIG.get(idx).map_or(0, |cfg| cfg.priority)
            };
            if priority != 0 {
                // SAFETY: tc programs may write __sk_buff->priority.
                unsafe { (*ctx.skb.skb).priority = priority };
            }
        }
        // Pages a post-copy guest waits for are not paced.
        mode::EDT if v.urgent => {}
        mode::EDT => {
            if let (Some(cfg), Some(state)) = (CLASS_CONFIG.get(idx), EDT_STATE.get_ptr_mut(idx)) {
                // SAFETY: reads/writes of this skb's tstamp and of a map
                // value this program owns; concurrent CPUs may race on
                // t_last, which only blurs pacing by one packet.
                unsafe {
                    let skb = ctx.skb.skb;
                    let now = bpf_ktime_get_ns();
                    match pace(
                        now,
                        (*skb).tstamp,
                        (*state).t_last_ns,
                        len,
                        cfg.ns_per_byte_q16,
                        cfg.horizon_ns,
                    ) {
                        Edt::Send { t_last } => (*state).t_last_ns = t_last,
                        Edt::Delay { tstamp } => {
                            (*state).t_last_ns = tstamp;
                            (*skb).tstamp = tstamp;
                        }
                        Edt::Drop => {
                            bump_dropped(counter, len);
                            return Some(TC_ACT_SHOT);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    bump(counter, len);
    Some(TC_ACT_OK)
}

/// Parses and classifies; unparsable packets are (no VM, other).
#[inline(always)]
fn verdict(ctx: &TcContext, dir: Direction, from_ifindex: u32) -> Verdict {
    match parse(&Skb(ctx)) {
        Some(h) => classify(&Maps, &h, dir, from_ifindex),
        None => Verdict::NONE,
    }
}

#[inline(always)]
fn bump(c: Option<*mut Counter>, len: u64) {
    if let Some(c) = c {
        // SAFETY: a per-CPU array slot of this CPU.
        unsafe {
            (*c).bytes += len;
            (*c).packets += 1;
        }
    }
}

#[inline(always)]
fn bump_dropped(c: Option<*mut Counter>, len: u64) {
    if let Some(c) = c {
        // SAFETY: a per-CPU array slot of this CPU.
        unsafe {
            (*c).dropped_bytes += len;
            (*c).dropped_packets += 1;
        }
    }
}

/// Packet bytes: direct packet access when they lie in the linear area
/// (headers nearly always do), bpf_skb_load_bytes otherwise.
struct Skb<'a>(&'a TcContext);

impl Packet for Skb<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + offset + N <= end {
            // SAFETY: [start + offset, start + offset + N) was just checked
            // to lie inside the packet's linear data.
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) });
        }
        self.0.load::<[u8; N]>(offset).ok()
    }
}

/// The classification tables as BPF maps.
struct Maps;

impl Tables for Maps {
    #[inline(always)]
    fn flow(&self, key: &FlowKey) -> Option<u32> {
        // SAFETY: the value is copied out immediately.
        unsafe { FLOWS.get(key).copied() }
    }

    #[inline(always)]
    fn port_owner(&self, index: u32) -> u32 {
        PORTS.get(index).copied().unwrap_or(NO_VM)
    }

    #[inline(always)]
    fn addr(&self, key: &AddrKey) -> Option<u32> {
        // SAFETY: the value is copied out immediately.
        unsafe { ADDRS.get(key).copied() }
    }

    #[inline(always)]
    fn ifindex(&self, ifindex: u32) -> Option<u32> {
        // SAFETY: the value is copied out immediately.
        unsafe { IFINDEX.get(ifindex).copied() }
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
