//! Bandwidth decisions per pre-copy iteration and host tick.
//!
//! Pure modules: [`Inputs`] in, [`Decision`] out, with the reasons. The
//! policies are NRAC ([`nrac`]), BDA ([`bda`]), the
//! AdaMig watchdog layered on either ([`adamig`]; the papers: docs/papers.md), and two
//! references: `default` (no enforcement) and `static:RATE` (a fixed cap,
//! like KubeVirt's bandwidthPerMigration). [`sim`] is a deterministic
//! pre-copy simulator that drives them.
//!
//! Units: bandwidth in bytes per second, sizes in bytes, times in seconds.

pub mod adamig;
pub mod bda;
pub mod enforce;
pub mod escalate;
pub mod forecast;
pub mod nrac;
pub mod policy;
pub mod sim;
pub mod switchover;

use std::fmt;

/// The host link as the controller sees it at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// N_t: link capacity.
    pub capacity: f64,
    /// N_u(i): current usage by everything except migration streams
    /// (applications included).
    pub usage: f64,
    /// Bytes a tunnel adds to each frame on this link (VXLAN: 50; 0 for
    /// plain frames).
    pub encap_bytes: f64,
}

impl Link {
    /// Wire bytes per byte of goodput of a full-size TCP segment on this
    /// link: 1514 B of frame (plus the tunnel's headers) carry 1448 B of
    /// payload (20 B IP, 32 B TCP with timestamps, 14 B Ethernet). HTB
    /// counts frames; seen on the testbed: a 15 Mbit/s class gave a
    /// 15 Mbit/s stream 14.3, and inside VXLAN a class at 10 Mbit/s of
    /// goodput x 1514/1448 gave 9.68 (= x 1448/1564).
    pub fn frame_per_goodput(&self) -> f64 {
        (1514.0 + self.encap_bytes) / 1448.0
    }

    /// N_f(i) = N_t − N_u(i), never negative.
    pub fn free(&self) -> f64 {
        (self.capacity - self.usage).max(0.0)
    }
}

/// One migrating VM as the controller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmInputs {
    pub name: String,
    /// D_p(n, i): predicted dirty pages of the coming iteration.
    pub predicted_dirty_pages: f64,
    /// T(i): the iteration's expected duration (the last one's, measured).
    pub iteration_s: f64,
    pub page_size: f64,
    /// Net_vm(n, j): the VM's application throughput samples, oldest
    /// first (bytes/s).
    pub app_history: Vec<f64>,
    /// Bytes QEMU still has to send (ram.remaining).
    pub remaining: f64,
    /// Pre-copy iteration number, 1 = the first (bulk) pass.
    pub iteration: u32,
    /// QEMU's downtime limit, seconds.
    pub downtime_limit_s: f64,
    /// Measured dirty rates of the finished iterations (bytes/s), oldest
    /// first (BDA's U_dirty).
    pub dirty_rate_history: Vec<f64>,
    /// The bandwidth promised to the VM's application (its SLA), bytes/s;
    /// None = no promise (NRAC's predicted-demand rule applies).
    pub reserve: Option<f64>,
    /// The tools armed when the migration started.
    pub armed: Armed,
    /// The migration already runs in post-copy.
    pub postcopy: bool,
    /// The guest's dirty rate as QEMU's `calc-dirty-rate` last measured
    /// it, bytes/s: the mean of the bulk pass's samples so far while it
    /// runs, then that of the last finished pass that had samples; where
    /// the samples trend, where their line ends instead
    /// ([`crate::predict::sampled_trend_end`]).
    pub sampled_dirty_rate: Option<f64>,
    /// Seconds left before the migration's starter gives up on it
    /// (KubeVirt's `completionTimeoutPerGiB` × the guest's GiB, counted
    /// from the start); None = no deadline known.
    pub deadline_s: Option<f64>,
    /// Bytes QEMU has written to its migration socket that the destination
    /// has not acknowledged: what a stop-and-copy waits behind (0 when
    /// unknown).
    pub stream_backlog: f64,
    /// Seconds pre-copy's switchover has been held because that backlog
    /// alone fills the downtime limit ([`switchover`]); 0 when not held.
    pub switchover_held_s: f64,
    /// How fast QEMU works through `remaining`, bytes/s, measured over its
    /// last polls within one pass (zero pages drain faster than the wire
    /// carries them); None until measured.
    pub drain_rate: Option<f64>,
    /// How fast QEMU sends, bytes/s, measured over the same polls: the
    /// rate of passes that carry dirtied pages only; None until measured.
    pub send_rate: Option<f64>,
    /// Seconds the current pass has run: what the guest dirtied meanwhile
    /// is sent in the next pass ([`forecast::forecast_in_pass`]); 0 when
    /// not known.
    pub pass_elapsed_s: f64,
    /// The guest's used memory, bytes (its balloon's total − available,
    /// or the resident part of its RAM): no pass can leave more of it
    /// dirty ([`forecast::dirtied`]). None = not known.
    pub used_memory: Option<f64>,
    /// Of `remaining`, the bytes the bulk pass will find all zeros and
    /// send as flags, at no cost on the wire
    /// ([`crate::qemu::Progress::unsent_zero`]); None = not known or
    /// after the bulk pass.
    pub unsent_zero: Option<f64>,
    /// The working set the bulk pass's dirty-rate samples show, bytes
    /// ([`crate::qemu::Progress::sampled_working_set`]); None = not shown.
    pub sampled_working_set: Option<f64>,
}

/// What the migration's starter armed (capabilities can only be set
/// before a migration starts: QEMU answers "There's a migration process in
/// progress" afterwards), read from QEMU with `query-migrate-capabilities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Armed {
    /// `postcopy-ram` (on both sides): `migrate-start-postcopy` may fire.
    pub postcopy: bool,
    /// `postcopy-preempt`: urgent pages travel on their own channel.
    pub postcopy_preempt: bool,
    /// `auto-converge`: the vCPU throttle can be raised mid-migration.
    pub auto_converge: bool,
}

impl VmInputs {
    /// A migration with nothing known yet, to set what is known on with
    /// `..VmInputs::unknown(name)`: 4 KiB pages, QEMU's 300 ms limit, no
    /// promise, nothing armed, nothing measured.
    pub fn unknown(name: &str) -> VmInputs {
        VmInputs {
            name: name.into(),
            predicted_dirty_pages: 0.0,
            iteration_s: 0.0,
            page_size: 4096.0,
            app_history: Vec::new(),
            remaining: 0.0,
            iteration: 1,
            downtime_limit_s: 0.3,
            dirty_rate_history: Vec::new(),
            reserve: None,
            armed: Armed::default(),
            postcopy: false,
            sampled_dirty_rate: None,
            deadline_s: None,
            stream_backlog: 0.0,
            switchover_held_s: 0.0,
            drain_rate: None,
            pass_elapsed_s: 0.0,
            used_memory: None,
            send_rate: None,
            unsent_zero: None,
            sampled_working_set: None,
        }
    }
}

impl VmInputs {
    /// What bounds the bytes a pass leaves dirty in the published ETA
    /// ([`forecast::dirtied`]): the guest's used memory, or the working
    /// set its samples show when that is smaller
    /// ([`VmInputs::sampled_working_set`]), while the bulk pass runs,
    /// whose dirty rate comes from second-long samples that
    /// cannot show pages written twice; None after it, when the passes'
    /// own measured rates show that already (bounded again, the tuning
    /// corpus's later-pass forecasts fell further short: seq-l50 at half
    /// its time -7% -> -41%). The plan the decisions rest on is never
    /// bounded.
    pub fn working_set_bound(&self) -> Option<f64> {
        if self.iteration > 1 {
            return None;
        }
        match (self.used_memory, self.sampled_working_set) {
            (Some(used), Some(set)) => Some(used.min(set)),
            (used, set) => used.or(set),
        }
    }

    /// What QEMU still has to put on the wire: `remaining` less the zero
    /// pages the bulk pass will send as flags ([`VmInputs::unsent_zero`]).
    pub fn unsent_data(&self) -> f64 {
        let zero = self.zeros_to_come().unwrap_or(0.0);
        (self.remaining - zero.max(0.0)).max(0.0)
    }

    /// [`VmInputs::unsent_zero`] while it holds: in pre-copy's bulk pass.
    fn zeros_to_come(&self) -> Option<f64> {
        self.unsent_zero
            .filter(|_| !self.postcopy && self.iteration <= 1)
    }

    /// What is left of the current pass and the rate it goes at, for a
    /// migration measured to drain `remaining` at `drain` and to send at
    /// `send` bytes/s: all of `remaining` at the rate it drained so far
    /// (as many zero pages ahead, for their share, as behind), or, with
    /// the bulk pass's zero pages known, its data at the rate QEMU sends
    /// (zero pages cost the wire nothing), whichever is over sooner: each
    /// reads the zeros ahead from what it can see, and there are at least
    /// as many as either says. On a 1 GiB guest with half its memory never
    /// written (the `window` corpus's wxrand-l300) the ETA at half time
    /// was +191% at the drain rate, 0% the other way; on the demo, whose
    /// guest has touched nearly all its RAM, the data alone at the send
    /// rate put it at +87% (1d4c9c1) where the drain rate had said +22%.
    pub fn pass_left(&self, drain: f64, send: f64) -> (f64, f64) {
        let drained = (self.remaining, drain);
        match self.zeros_to_come().filter(|_| send > 0.0) {
            Some(_) if drain <= 0.0 || self.unsent_data() / send < self.remaining / drain => {
                (self.unsent_data(), send)
            }
            _ => drained,
        }
    }

    /// D_e(n, i) = D_p(n, i)·page_size / T(i): the dirty rate as bandwidth.
    pub fn dirty_rate(&self) -> f64 {
        if self.iteration_s > 0.0 {
            (self.predicted_dirty_pages * self.page_size / self.iteration_s).max(0.0)
        } else {
            0.0
        }
    }

    /// Whether the next pass is the stop-and-copy: what remains fits in the
    /// downtime limit at `rate`.
    pub fn final_pass(&self, rate: f64) -> bool {
        self.iteration > 1 && rate > 0.0 && self.remaining / rate <= self.downtime_limit_s
    }

    /// Mean of the last `k` application samples (0 without samples).
    pub fn app_mean(&self, k: usize) -> f64 {
        let tail = &self.app_history[self.app_history.len().saturating_sub(k)..];
        if tail.is_empty() {
            0.0
        } else {
            tail.iter().sum::<f64>() / tail.len() as f64
        }
    }
}

/// Everything a policy decides from.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub link: Link,
    pub vms: Vec<VmInputs>,
}

/// QEMU parameters to apply (None = leave as is).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QemuParams {
    /// `max-bandwidth`, bytes/s.
    pub max_bandwidth: Option<f64>,
    /// `downtime-limit`, seconds.
    pub downtime_limit_s: Option<f64>,
    /// Switch to post-copy now (`migrate-start-postcopy`).
    pub start_postcopy: bool,
    /// Auto-converge's vCPU throttle ceiling, percent (sets
    /// `cpu-throttle-initial`, `cpu-throttle-increment` and
    /// `max-cpu-throttle`); needs `auto-converge` armed.
    pub cpu_throttle_pct: Option<u8>,
    /// `max-postcopy-bandwidth`, bytes/s: post-copy's background push.
    pub max_postcopy_bandwidth: Option<f64>,
    /// `avail-switchover-bandwidth`, bytes/s: the bandwidth QEMU assumes
    /// for the stop-and-copy when it decides to switch over (QEMU >= 8.2;
    /// see [`switchover`]).
    pub avail_switchover_bandwidth: Option<f64>,
}

/// Why a number is what it is: one line per step the policy took.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason(pub String);

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The decision for one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmDecision {
    pub name: String,
    /// Guaranteed rate of the VM's migration class (HTB `rate`); None = no
    /// enforcement.
    pub migration_rate: Option<f64>,
    /// Most the migration class may use, borrowing what others leave unused
    /// (HTB `ceil`); None = the link.
    pub migration_ceil: Option<f64>,
    /// Bandwidth reserved for the VM's application; 0 = none.
    pub app_reserve: f64,
    /// Order among this host's migrations, 0 first.
    pub priority: u32,
    /// Held at the floor because the link is short (NRAC step 8).
    pub delayed: bool,
    /// Left only the floor because the migrations before it take all that
    /// is free (a quiet VM behind another quiet one's bulk pass); unlike a
    /// delayed one it may borrow what they leave. Either way it waits its
    /// turn: its forecast at the floor is a queue's, not a failure's.
    pub queued: bool,
    pub qemu: QemuParams,
    /// When the migration finishes under this decision, counting on its
    /// guarantee: what escalation plans with.
    pub forecast: Option<forecast::Forecast>,
    /// The same forecast at the rate QEMU is measured to work through what
    /// it has left (a guarantee is a floor: the class borrows what others
    /// leave): what the agent publishes as the ETA. None before there is a
    /// measurement.
    pub expected: Option<forecast::Forecast>,
    pub reasons: Vec<Reason>,
}

impl VmDecision {
    pub fn unenforced(name: &str) -> Self {
        VmDecision {
            name: name.to_owned(),
            migration_rate: None,
            migration_ceil: None,
            app_reserve: 0.0,
            priority: 0,
            delayed: false,
            queued: false,
            qemu: QemuParams::default(),
            forecast: None,
            expected: None,
            reasons: Vec::new(),
        }
    }

    /// The forecast to publish (ETA, converging): the measured one where
    /// there is one, else the planning one.
    pub fn published_forecast(&self) -> Option<forecast::Forecast> {
        self.expected.or(self.forecast)
    }

    /// Whether it waits behind other migrations ([`Self::delayed`] or
    /// [`Self::queued`]).
    pub fn waits_its_turn(&self) -> bool {
        self.delayed || self.queued
    }

    pub fn why(&mut self, reason: impl Into<String>) {
        self.reasons.push(Reason(reason.into()));
    }
}

/// A decision for every migrating VM of the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub vms: Vec<VmDecision>,
}

/// QEMU's `max-bandwidth` is set this much above the class ceiling, so
/// QEMU's own limiter never becomes the bottleneck (the kernel class is) and
/// its downtime estimate, based on the measured rate, stays sane.
pub const QEMU_HEADROOM: f64 = 1.1;

impl VmDecision {
    /// Sets the class guarantee and ceiling and mirrors the ceiling to QEMU.
    pub fn enforce(&mut self, rate: f64, ceil: f64) {
        let ceil = ceil.max(rate);
        self.migration_rate = Some(rate);
        self.migration_ceil = Some(ceil);
        self.qemu.max_bandwidth = Some(ceil * QEMU_HEADROOM);
    }
}

/// Formats bytes/s as Mbit/s for reasons and tables.
pub fn mbit(bytes_per_s: f64) -> String {
    crate::api::Bandwidth::from_bytes_per_sec(bytes_per_s).to_string()
}
