//! Reading the per-CPU counters and folding them per VM and class.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::maps::PerCpuArray;
use vmbw_common::{Counter, Direction, class, counter_index, map};

use super::{Datapath, DatapathError, map_err};

/// Bytes and packets per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    pub egress: Counter,
    pub ingress: Counter,
}

impl DirectionCounters {
    pub fn get(&self, dir: Direction) -> &Counter {
        match dir {
            Direction::Egress => &self.egress,
            Direction::Ingress => &self.ingress,
        }
    }

    fn get_mut(&mut self, dir: Direction) -> &mut Counter {
        match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }
}

/// One class's counters of one VM.
pub type ClassCounters = DirectionCounters;

/// A VM's counters, per class and direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmCounters {
    pub other: ClassCounters,
    pub migration: ClassCounters,
    pub application: ClassCounters,
}

impl VmCounters {
    pub fn class(&self, c: u32) -> &ClassCounters {
        match c {
            class::MIGRATION => &self.migration,
            class::APPLICATION => &self.application,
            _ => &self.other,
        }
    }

    fn class_mut(&mut self, c: u32) -> &mut ClassCounters {
        match c {
            class::MIGRATION => &mut self.migration,
            class::APPLICATION => &mut self.application,
            _ => &mut self.other,
        }
    }

    /// A VM's counters from one counter per (class, direction), in the
    /// order of its slot's entries in [`map::COUNTERS`].
    fn try_from_fn<E>(
        mut counter: impl FnMut(u32, Direction) -> Result<Counter, E>,
    ) -> Result<VmCounters, E> {
        let mut out = VmCounters::default();
        for c in [class::OTHER, class::MIGRATION, class::APPLICATION] {
            for dir in Direction::ALL {
                *out.class_mut(c).get_mut(dir) = counter(c, dir)?;
            }
        }
        Ok(out)
    }
}

/// The sum of one entry's per-CPU values.
fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Counter>) -> Counter {
    let mut total = Counter::default();
    per_cpu.into_iter().for_each(|c| total.add(c));
    total
}

impl Datapath {
    /// Everything that crossed the attached interfaces, per direction.
    pub fn counters(&self) -> Result<DirectionCounters, DatapathError> {
        let array = self.per_cpu(map::DIR_COUNTERS)?;
        let mut out = DirectionCounters::default();
        for dir in Direction::ALL {
            let per_cpu = array
                .get(&dir.index(), 0)
                .map_err(map_err(map::DIR_COUNTERS, "read"))?;
            *out.get_mut(dir) = sum(per_cpu.iter());
        }
        Ok(out)
    }

    /// One VM slot's counters (slot 0: traffic of no registered VM).
    pub fn vm_counters(&self, vm: u32) -> Result<VmCounters, DatapathError> {
        if vm >= vmbw_common::MAX_VMS {
            return Err(DatapathError::InvalidSlot(vm));
        }
        let array = self.per_cpu(map::COUNTERS)?;
        VmCounters::try_from_fn(|c, dir| {
            let per_cpu = array
                .get(&counter_index(vm, c, dir.index()), 0)
                .map_err(map_err(map::COUNTERS, "read"))?;
            Ok(sum(per_cpu.iter()))
        })
    }

    /// The counters of every slot below `slots`, in one `bpf()` call
    /// (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6) instead of six per VM: with 64
    /// VMs the per-key lookups were an eighth of the agent's CPU in `bench
    /// agent-load`. Falls back to per-key lookups where the kernel refuses
    /// batches.
    pub fn vm_counters_below(&self, slots: u32) -> Result<Vec<VmCounters>, DatapathError> {
        let slots = slots.min(vmbw_common::MAX_VMS);
        let per_vm = (class::COUNT * Direction::COUNT) as usize;
        if slots > 0 && !BATCH_REFUSED.load(Ordering::Relaxed) {
            match self.counters_batch(slots as usize * per_vm) {
                Ok(entries) => {
                    return Ok(entries
                        .chunks_exact(per_vm)
                        .map(|vm| {
                            let Ok(counters) = VmCounters::try_from_fn(|c, dir| {
                                Ok::<_, std::convert::Infallible>(
                                    vm[counter_index(0, c, dir.index()) as usize],
                                )
                            });
                            counters
                        })
                        .collect());
                }
                Err(e) => {
                    BATCH_REFUSED.store(true, Ordering::Relaxed);
                    tracing::info!(error = %crate::api::errors::chain(&e), "BPF_MAP_LOOKUP_BATCH refused; reading counters per key");
                }
            }
        }
        (0..slots).map(|vm| self.vm_counters(vm)).collect()
    }

    /// Entries `0..n` of the counters map, each summed over the CPUs.
    fn counters_batch(&self, n: usize) -> Result<Vec<Counter>, std::io::Error> {
        let Some(aya::maps::Map::PerCpuArray(data)) = self.ebpf().map(map::COUNTERS) else {
            return Err(std::io::Error::other("no per-CPU counters map"));
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        // Per-CPU values come one per possible CPU, each rounded up to 8
        // bytes: a Counter is a whole number of u64, so they are Counters.
        const _: () = assert!(std::mem::size_of::<Counter>().is_multiple_of(8));
        let mut keys = vec![0u32; n];
        let mut values = vec![Counter::default(); n * cpus];
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: n as u32,
            map_fd: data.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's batch layout of `union bpf_attr`;
        // `keys` holds `count` keys and `values` `count` per-CPU values of
        // this map, and both outlive the call. The kernel writes back
        // `count` (how many it copied) into `attr`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        // ENOENT: the batch reached the map's end, with `count` copied.
        let err = std::io::Error::last_os_error();
        if rc < 0 && err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err);
        }
        let copied = attr.count as usize;
        if copied != n {
            return Err(std::io::Error::other(format!(
                "the batch copied {copied} of {n} entries"
            )));
        }
        Ok(values.chunks_exact(cpus).map(sum).collect())
    }

    /// Zeroes a VM slot's counters, for a slot given to another VM (its
    /// exported totals then start at 0, as a new series should).
    pub fn reset_vm_counters(&mut self, vm: u32) -> Result<(), DatapathError> {
        if vm >= vmbw_common::MAX_VMS {
            return Err(DatapathError::InvalidSlot(vm));
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
        let m = self
            .ebpf_mut()
            .map_mut(map::COUNTERS)
            .ok_or(DatapathError::MissingMap(map::COUNTERS))?;
        let mut array: PerCpuArray<&mut aya::maps::MapData, Counter> =
            PerCpuArray::try_from(m).map_err(map_err(map::COUNTERS, "open"))?;
        for c in [class::OTHER, class::MIGRATION, class::APPLICATION] {
            for dir in Direction::ALL {
                let zeros = aya::maps::PerCpuValues::try_from(vec![Counter::default(); cpus])
                    .map_err(DatapathError::Cpus)?;
                array
                    .set(counter_index(vm, c, dir.index()), zeros, 0)
                    .map_err(map_err(map::COUNTERS, "write"))?;
            }
        }
        Ok(())
    }

    fn per_cpu(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&aya::maps::MapData, Counter>, DatapathError> {
        let m = self
            .ebpf()
            .map(name)
            .ok_or(DatapathError::MissingMap(name))?;
        PerCpuArray::try_from(m).map_err(map_err(name, "open"))
    }
}

/// `BPF_MAP_LOOKUP_BATCH` of `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Whether this kernel refused a batched counter read (the agent then
/// reads per key).
pub fn batch_refused() -> bool {
    BATCH_REFUSED.load(Ordering::Relaxed)
}

/// Set once a kernel refused a batch: later reads go per key at once.
static BATCH_REFUSED: AtomicBool = AtomicBool::new(false);

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
