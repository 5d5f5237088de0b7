//! The shaping subsystem's error type.

use std::{io, path::PathBuf};

use super::{desired::DesiredError, handles::TrafficClass, tca::TcaError};

#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    #[error("opening a netlink route socket failed")]
    Socket(#[source] io::Error),
    #[error("the shaping client needs a running tokio runtime to drive its netlink connection")]
    NoRuntime,
    #[error("no network device named {iface:?} in this network namespace")]
    NoSuchDevice { iface: String },
    /// The kernel answered a request with an error.
    #[error("kernel refused to {verb} {object} on {iface}{}", extack_suffix(.extack))]
    Kernel {
        iface: String,
        verb: &'static str,
        object: String,
        /// The kernel's extended-ack message, e.g. "Specified qdisc kind is unknown".
        extack: Option<String>,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The request never got an answer (socket closed, bad reply).
    #[error("netlink request to {verb} {object} on {iface} failed: {detail}")]
    Transport {
        iface: String,
        verb: &'static str,
        object: String,
        detail: String,
    },
    #[error("cannot read {object} on {iface} from the kernel's dump")]
    Decode {
        iface: String,
        object: String,
        #[source]
        source: TcaError,
    },
    #[error("invalid desired shaping state")]
    Invalid(#[from] DesiredError),
    #[error("{iface} already carries vmbw's HTB tree; adopt it instead of installing again")]
    AlreadyShaped { iface: String },
    #[error("{iface} has no vmbw HTB tree to adopt (its root qdisc is {found})")]
    NotShaped { iface: String, found: String },
    #[error(
        "{iface}'s root qdisc {found} has classes or child qdiscs that replacing it would \
         destroy; vmbw only takes over devices whose root qdisc stands alone"
    )]
    ForeignTree { iface: String, found: String },
    #[error("VM slot {slot} ({class}) has no class handle: slots go up to {max}", max = super::handles::MAX_VM_SLOT)]
    SlotOutOfRange { slot: u16, class: TrafficClass },
    #[error("state file {}: {action} failed", path.display())]
    StateFile {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("state file {}, line {line}: {problem}", path.display())]
    StateFileFormat {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

fn extack_suffix(extack: &Option<String>) -> String {
    extack
        .as_deref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

impl ShapingError {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ShapingError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// A short, stable label for metrics (`vmbw_shaping_errors_total{kind=…}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            ShapingError::Socket(_) | ShapingError::NoRuntime => "socket",
            ShapingError::NoSuchDevice { .. } => "no_such_device",
            ShapingError::Kernel { .. } => "kernel",
            ShapingError::Transport { .. } => "transport",
            ShapingError::Decode { .. } => "decode",
            ShapingError::Invalid(_) | ShapingError::SlotOutOfRange { .. } => "invalid",
            ShapingError::AlreadyShaped { .. }
            | ShapingError::NotShaped { .. }
            | ShapingError::ForeignTree { .. } => "device_state",
            ShapingError::StateFile { .. } | ShapingError::StateFileFormat { .. } => "state_file",
        }
    }
}
