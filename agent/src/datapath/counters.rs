//! Reading the per-CPU counters and folding them per VM and class.

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
            let total = out.get_mut(dir);
            per_cpu.iter().for_each(|c| total.add(c));
        }
        Ok(out)
    }

    /// One VM slot's counters (slot 0: traffic of no registered VM).
    pub fn vm_counters(&self, vm: u32) -> Result<VmCounters, DatapathError> {
        if vm >= vmbw_common::MAX_VMS {
            return Err(DatapathError::InvalidSlot(vm));
        }
        let array = self.per_cpu(map::COUNTERS)?;
        let mut out = VmCounters::default();
        for c in [class::OTHER, class::MIGRATION, class::APPLICATION] {
            for dir in Direction::ALL {
                let per_cpu = array
                    .get(&counter_index(vm, c, dir.index()), 0)
                    .map_err(map_err(map::COUNTERS, "read"))?;
                let total = out.class_mut(c).get_mut(dir);
                per_cpu.iter().for_each(|v| total.add(v));
            }
        }
        Ok(out)
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
