//! Bandwidth as every part of vmbw counts it: bytes per second inside
//! (what QEMU, HTB and the controller use), Mbit/s (decimal, 10^6 bit/s)
//! for people and configs. One conversion, here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bytes per second in one Mbit/s.
pub const BYTES_PER_MBIT: f64 = 125_000.0;

/// A rate in bytes per second. Serialised as the bare number, so wire
/// fields named `*_bytes_per_sec` keep their shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bandwidth(f64);

impl Bandwidth {
    pub const ZERO: Bandwidth = Bandwidth(0.0);

    pub const fn from_bytes_per_sec(b: f64) -> Self {
        Bandwidth(b)
    }

    pub const fn from_mbit(m: f64) -> Self {
        Bandwidth(m * BYTES_PER_MBIT)
    }

    pub const fn bytes_per_sec(self) -> f64 {
        self.0
    }

    pub const fn mbit(self) -> f64 {
        self.0 / BYTES_PER_MBIT
    }
}

/// `12.3 Mbit/s` (the precision, if given, is the number of decimals).
impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.*} Mbit/s", f.precision().unwrap_or(1), self.mbit())
    }
}

/// Mbit/s from bytes per second, for a number in a log line or a table.
pub const fn mbit(bytes_per_sec: f64) -> f64 {
    Bandwidth::from_bytes_per_sec(bytes_per_sec).mbit()
}

/// Bytes per second from Mbit/s.
pub const fn from_mbit(mbit: f64) -> f64 {
    Bandwidth::from_mbit(mbit).bytes_per_sec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways_and_prints_mbit() {
        let b = Bandwidth::from_mbit(30.0);
        assert_eq!(b.bytes_per_sec(), 3_750_000.0);
        assert_eq!(b.mbit(), 30.0);
        assert_eq!(mbit(from_mbit(12.5)), 12.5);
        assert_eq!(b.to_string(), "30.0 Mbit/s");
        assert_eq!(
            format!("{:.3}", Bandwidth::from_bytes_per_sec(1_543_210.0)),
            "12.346 Mbit/s"
        );
        assert_eq!(serde_json::to_string(&b).expect("json"), "3750000.0");
    }
}
