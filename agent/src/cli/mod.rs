//! Every `vmbw` subcommand; `main.rs` parses the command line and
//! dispatches here.

pub mod agent;
pub mod debug;
pub mod plan;
pub mod predict;
pub mod record;
pub mod shaping;
pub mod simulate;
pub mod watch;
