//! The host agent daemon (`vmbw agent`): the parts run together.

pub mod http;
