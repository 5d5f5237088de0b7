//! Rate pacing shared by the memory and network modes: a credit that grows
//! at the asked rate while the duty cycle is "on", spent in whole units.

use std::time::{Duration, Instant};

/// Turns elapsed time into units of work (pages, bytes) at `per_sec`.
pub struct Pacer {
    per_sec: f64,
    on: Duration,
    off: Duration,
    start: Instant,
    last: Instant,
    credit: f64,
}

impl Pacer {
    /// `off == 0` means always on.
    pub fn new(per_sec: f64, on: Duration, off: Duration) -> Self {
        let now = Instant::now();
        Pacer {
            per_sec,
            on,
            off,
            start: now,
            last: now,
            credit: 0.0,
        }
    }

    /// Changes the rate from now on (a ramp).
    pub fn set_rate(&mut self, per_sec: f64) {
        self.per_sec = per_sec;
    }

    /// Whether the duty cycle is in its "on" part now.
    pub fn is_on(&self) -> bool {
        if self.off.is_zero() {
            return true;
        }
        let period = (self.on + self.off).as_nanos();
        let phase = self.start.elapsed().as_nanos() % period;
        phase < self.on.as_nanos()
    }

    /// Units that may be done now. Credit earned while the program could
    /// not keep up is capped at half a second's worth, so a slow (TCG) guest
    /// falls short of the rate instead of catching up in bursts.
    pub fn take(&mut self) -> u64 {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        if self.is_on() {
            self.credit = (self.credit + dt * self.per_sec).min(self.per_sec * 0.5 + 1.0);
        } else {
            self.credit = 0.0;
        }
        let whole = self.credit.floor();
        self.credit -= whole;
        whole as u64
    }
}
