//! The kernel datapath: vmbw's tc programs on a host interface.
//!
//! [`Datapath::load`] loads the embedded eBPF object into the kernel,
//! [`Datapath::attach`] hooks both programs onto an interface (TCX on kernels
//! that have it, a clsact qdisc + cls_bpf otherwise) and
//! [`Datapath::counters`] reads what they counted. Dropping the `Datapath`
//! detaches everything it attached.

use aya::{
    Ebpf, EbpfError,
    maps::{MapError, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TcAttachType, TcError, tc},
    util::KernelVersion,
};
use vmbw_common::{Counter, Direction, map, program};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vmbw-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<EbpfError>),
    #[error("the eBPF object has no program `{0}` (object and agent out of step?)")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}` (object and agent out of step?)")]
    MissingMap(&'static str),
    #[error("program `{name}`: {action} failed")]
    Program {
        name: &'static str,
        action: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("adding the clsact qdisc to {iface} failed")]
    Clsact {
        iface: String,
        #[source]
        source: Box<TcError>,
    },
    #[error("attaching `{name}` to {iface} ({direction}) failed")]
    Attach {
        name: &'static str,
        iface: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map `{name}`: {action} failed")]
    Map {
        name: &'static str,
        action: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

/// Bytes and packets per direction on the interfaces this datapath watches.
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
}

/// vmbw's programs, loaded into the kernel.
pub struct Datapath {
    ebpf: Ebpf,
    attached: Vec<String>,
}

impl Datapath {
    /// Loads the embedded object and both classifiers into the kernel
    /// (verifier included), without attaching them anywhere yet.
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| DatapathError::Load(Box::new(e)))?;
        for name in [program::EGRESS, program::INGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    name,
                    action: "load",
                    source: Box::new(source),
                })?;
        }
        Ok(Self {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Attaches the egress and ingress programs to `iface` in the calling
    /// thread's network namespace. On kernels with TCX the programs are
    /// appended to the interface's TCX chain; older kernels get a clsact
    /// qdisc (created if missing) and cls_bpf filters.
    pub fn attach(&mut self, iface: &str) -> Result<(), DatapathError> {
        if !has_tcx() {
            match tc::qdisc_add_clsact(iface) {
                Ok(()) => {}
                // Only "it is already there" is fine; anything else is real.
                Err(TcError::AlreadyAttached) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(DatapathError::Clsact {
                        iface: iface.to_owned(),
                        source: Box::new(source),
                    });
                }
            }
        }
        for (name, dir, attach_type) in [
            (program::EGRESS, Direction::Egress, TcAttachType::Egress),
            (program::INGRESS, Direction::Ingress, TcAttachType::Ingress),
        ] {
            classifier(&mut self.ebpf, name)?
                .attach(iface, attach_type)
                .map_err(|source| DatapathError::Attach {
                    name,
                    iface: iface.to_owned(),
                    direction: dir.as_str(),
                    source: Box::new(source),
                })?;
        }
        self.attached.push(iface.to_owned());
        Ok(())
    }

    /// Interfaces this datapath has attached to.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Sums the per-CPU counters of each direction.
    pub fn counters(&self) -> Result<DirectionCounters, DatapathError> {
        let name = map::DIR_COUNTERS;
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        let array: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(map).map_err(|source| DatapathError::Map {
                name,
                action: "open",
                source: Box::new(source),
            })?;
        let mut out = DirectionCounters::default();
        for dir in Direction::ALL {
            let per_cpu = array
                .get(&dir.index(), 0)
                .map_err(|source| DatapathError::Map {
                    name,
                    action: "read",
                    source: Box::new(source),
                })?;
            let total = match dir {
                Direction::Egress => &mut out.egress,
                Direction::Ingress => &mut out.ingress,
            };
            for c in per_cpu.iter() {
                total.add(c);
            }
        }
        Ok(out)
    }
}

/// TCX (kernel 6.6+) lets programs attach without a qdisc; aya picks it on
/// its own in that case.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            name,
            action: "open",
            source: Box::new(source),
        })
}
