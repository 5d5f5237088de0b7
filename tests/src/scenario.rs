//! Migration scenarios (TOML) for the testbed runner, `cargo xtask demo`
//! and `cargo xtask bench migration`. New scenarios need no code:
//!
//! ```toml
//! name = "mem+net at 30 Mbit"
//! link_mbit = 30          # bottleneck rate; 0 = unlimited
//! timeout_s = 300         # a migration still running then is cancelled
//! repetitions = 3
//! policies = ["default", "static:64MiB", "nrac", "bda", "nrac+adamig"]
//! vcpus = 2               # each guest's vCPUs (default 1)
//! [[vm]]
//! memory_mb = 160
//! workload = "mem-rand"   # idle | cpu | mem-seq | mem-rand | burst | hot
//! wss_mb = 64
//! dirty_mb_s = 3
//! app = "rate"            # rate | greedy | onoff (default: rate if app_mbit > 0)
//! app_mbit = 10           # rate: its rate; onoff: its rate while on
//! reserve_mbit = 10       # the application's SLA, given to the agent's [[vm]]
//! ```
//!
//! `hot` dirties a small hot set at random (wss_mb is the hot set);
//! `burst` alternates dirtying (on_ms) and idling (off_ms).
//!
//! Applications: `rate` streams `app_mbit` over TCP; `greedy` is a bulk TCP
//! sender that takes all it can (its demand is unbounded: only the
//! reservation says what it is owed); `onoff` streams `app_mbit` for
//! `on_ms`, then pauses `off_ms`. Each writes 16 KiB at a time, and reports
//! every second what it wrote and where its sending thread's time went
//! ([`crate::sender`]): a second the guest did not offer is not the
//! network's fault. `reserve_mbit` is the bandwidth promised
//! to the application: the benchmark scores every policy against
//! min(demand, reservation), and vmbw's agent reads it from its own per-VM
//! configuration, as an operator would set it.
//!
//! Several `[[vm]]` entries boot side by side on the source host and
//! migrate concurrently over the same bottleneck, each with its own tap,
//! subnet, migration port and sink ([`crate::testbed::GuestSlot`]).

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{guest::Workload, testbed::GuestSlot};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub link_mbit: f64,
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    #[serde(default = "one")]
    pub repetitions: u32,
    pub policies: Vec<String>,
    /// Each guest's vCPUs. With two, the workload's dirtier and its
    /// application run on their own vCPUs, as they would in a VM sized
    /// for its job: a post-copy fault of one then stalls only that one.
    #[serde(default = "one")]
    pub vcpus: u32,
    pub vm: Vec<VmSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub memory_mb: u32,
    pub workload: String,
    #[serde(default)]
    pub wss_mb: u32,
    #[serde(default)]
    pub dirty_mb_s: f64,
    /// `rate`, `greedy` or `onoff`; absent: `rate` when `app_mbit` > 0.
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub app_mbit: f64,
    /// The application's reservation (SLA), Mbit/s; 0 = none.
    #[serde(default)]
    pub reserve_mbit: f64,
    #[serde(default = "default_on")]
    pub on_ms: u64,
    #[serde(default = "default_off")]
    pub off_ms: u64,
}

fn default_timeout() -> f64 {
    300.0
}
/// Serde's default for counts that start at one (also a report's vCPUs
/// from before it recorded them).
pub(crate) fn one() -> u32 {
    1
}
fn default_on() -> u64 {
    2000
}
fn default_off() -> u64 {
    2000
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        s.check().with_context(|| format!("{}", path.display()))?;
        Ok(s)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if !(self.link_mbit >= 0.0 && self.link_mbit.is_finite()) {
            bail!("link_mbit must be >= 0 (0 = unlimited)");
        }
        if self.timeout_s.is_nan()
            || self.timeout_s <= 0.0
            || self.repetitions == 0
            || self.policies.is_empty()
        {
            bail!("timeout_s > 0, repetitions >= 1 and at least one policy are required");
        }
        for p in &self.policies {
            crate::policy::BenchPolicy::parse(p).with_context(|| format!("policy `{p}`"))?;
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            bail!(
                "vcpus: 1 to {MAX_VCPUS} ({} given): every vCPU is a TCG thread on this host",
                self.vcpus
            );
        }
        if self.vm.is_empty() || self.vm.len() > MAX_VMS {
            bail!(
                "1 to {MAX_VMS} [[vm]] entries per scenario ({} given): every guest is a TCG QEMU on this host",
                self.vm.len()
            );
        }
        for (i, v) in self.vm.iter().enumerate() {
            v.workload().with_context(|| format!("vm[{i}]"))?;
            if !(v.reserve_mbit >= 0.0 && v.reserve_mbit.is_finite()) {
                bail!("vm[{i}].reserve_mbit must be >= 0");
            }
            if self.link_mbit > 0.0 && v.reserve_mbit >= self.link_mbit {
                bail!(
                    "vm[{i}].reserve_mbit {} leaves nothing of the {} Mbit/s link for the migration",
                    v.reserve_mbit,
                    self.link_mbit
                );
            }
            if v.memory_mb < 64 {
                bail!("vm[{i}].memory_mb: at least 64 (the guest kernel needs it)");
            }
        }
        Ok(())
    }
}

/// The most VMs one scenario may migrate at once: each is a TCG QEMU on
/// the source and one on the destination, and this is a small machine.
pub const MAX_VMS: usize = 8;

/// The most vCPUs per guest.
pub const MAX_VCPUS: u32 = 4;

/// What the guest's application does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum App {
    None,
    /// A steady stream at this rate, Mbit/s.
    Rate(f64),
    /// A bulk sender: as much as it can get.
    Greedy,
    /// `mbit` while on, nothing while off.
    OnOff {
        mbit: f64,
        on_ms: u64,
        off_ms: u64,
    },
}

impl App {
    /// What the application asks for at `t_s` seconds after its first
    /// byte, Mbit/s (`f64::INFINITY` for a greedy one), or None around an
    /// on/off edge (within `margin_s`), where a one-second sample mixes the
    /// two phases.
    pub fn demand_at(&self, t_s: f64, margin_s: f64) -> Option<f64> {
        match *self {
            App::None => Some(0.0),
            App::Rate(m) => Some(m),
            App::Greedy => Some(f64::INFINITY),
            App::OnOff {
                mbit,
                on_ms,
                off_ms,
            } => {
                let (on, period) = (on_ms as f64 / 1000.0, (on_ms + off_ms) as f64 / 1000.0);
                let phase = t_s.rem_euclid(period);
                let near = |edge: f64| (phase - edge).abs() < margin_s;
                if near(0.0) || near(on) || near(period) {
                    None
                } else if phase < on {
                    Some(mbit)
                } else {
                    Some(0.0)
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            App::None => "none".into(),
            App::Rate(m) => format!("rate {m} Mbit/s"),
            App::Greedy => "greedy".into(),
            App::OnOff {
                mbit,
                on_ms,
                off_ms,
            } => {
                format!("on/off {mbit} Mbit/s, {on_ms}/{off_ms} ms")
            }
        }
    }
}

/// The application's socket write size.
const APP_WRITE_BYTES: u32 = 16384;

impl VmSpec {
    /// Whether the guest writes a working set, and so checks it for lost
    /// writes (its report lines carry `corrupt_pages=`).
    pub fn checks_itself(&self) -> bool {
        self.wss_mb > 0 && self.dirty_mb_s > 0.0
    }

    /// The application this VM runs.
    pub fn app(&self) -> anyhow::Result<App> {
        let kind = match &self.app {
            Some(k) => k.as_str(),
            None if self.app_mbit > 0.0 => "rate",
            None => "none",
        };
        let needs_rate = |what: &str| -> anyhow::Result<f64> {
            if self.app_mbit > 0.0 && self.app_mbit.is_finite() {
                Ok(self.app_mbit)
            } else {
                bail!("app = \"{what}\" needs app_mbit > 0")
            }
        };
        Ok(match kind {
            "none" => App::None,
            "rate" => App::Rate(needs_rate("rate")?),
            "greedy" => App::Greedy,
            "onoff" => {
                if self.on_ms == 0 || self.off_ms == 0 {
                    bail!("app = \"onoff\" needs on_ms and off_ms > 0");
                }
                App::OnOff {
                    mbit: needs_rate("onoff")?,
                    on_ms: self.on_ms,
                    off_ms: self.off_ms,
                }
            }
            other => bail!("app `{other}`: expected rate, greedy or onoff"),
        })
    }

    /// The guest workload for the first VM (slot 0).
    pub fn workload(&self) -> anyhow::Result<Workload> {
        self.workload_for(&GuestSlot::new(0))
    }

    /// The guest workload for the VM in `slot`: its dirtying, plus an
    /// application stream to the slot's sink when `app_mbit` > 0.
    pub fn workload_for(&self, slot: &GuestSlot) -> anyhow::Result<Workload> {
        let (mode, pattern) = match self.workload.as_str() {
            "idle" => ("idle", None),
            "cpu" => ("cpu", None),
            "mem-seq" => ("mem-seq", Some("seq")),
            "mem-rand" | "hot" => ("mem-rand", Some("rand")),
            "burst" => ("burst", None),
            other => {
                bail!("workload `{other}`: expected idle, cpu, mem-seq, mem-rand, burst or hot")
            }
        };
        let dirties = !matches!(mode, "idle" | "cpu") || self.dirty_mb_s > 0.0;
        if dirties && (self.wss_mb == 0 || self.dirty_mb_s <= 0.0) {
            bail!("workload `{}` needs wss_mb and dirty_mb_s", self.workload);
        }
        let app = self.app()?;
        let mut w = if app != App::None {
            if mode == "burst" {
                bail!("burst with an application stream is not supported by the guest workload");
            }
            let mut w = Workload::new("net")
                .with("sink", slot.sink())
                .with("proto", "tcp");
            // 16 KiB writes, as a streaming server or a file transfer makes
            // them. With 1200-byte writes the TCG guest's sender was
            // CPU-bound at 20 Mbit/s (its thread 85-98% on a CPU in the on
            // phases, schedstat) and the SLA measured the guest, not the
            // network.
            w = w.with("packet", APP_WRITE_BYTES);
            w = match app {
                App::Rate(m) => w.with("rate-mbit", m),
                App::Greedy => w.with("rate-mbit", 0),
                App::OnOff {
                    mbit,
                    on_ms,
                    off_ms,
                } => w
                    .with("rate-mbit", mbit)
                    .with("app-on-ms", on_ms)
                    .with("app-off-ms", off_ms),
                App::None => unreachable!("checked above"),
            };
            if let Some(p) = pattern {
                w = w.with("pattern", p);
            }
            w
        } else {
            Workload::new(mode)
        };
        if dirties {
            w = w
                .with("wss-mb", self.wss_mb)
                .with("dirty-mbps", self.dirty_mb_s);
        }
        if mode == "burst" {
            w = w.with("on-ms", self.on_ms).with("off-ms", self.off_ms);
        }
        Ok(w.with("report-secs", 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(t)?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn the_issue_s_example_parses() {
        let s = parse(
            r#"name = "mem+net at 30 Mbit"
link_mbit = 30
timeout_s = 300
repetitions = 3
policies = ["default", "static:64MiB", "nrac", "bda", "nrac+adamig"]
[[vm]]
memory_mb = 160
workload = "mem-rand"
wss_mb = 64
dirty_mb_s = 3
app_mbit = 10
"#,
        )
        .expect("parses");
        let w = s.vm[0].workload().expect("workload").describe();
        assert!(
            w.contains("net") && w.contains("rand") && w.contains("rate-mbit=10"),
            "{w}"
        );
    }

    #[test]
    fn every_committed_scenario_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("tests/scenarios").flatten() {
            if e.path().extension().is_some_and(|x| x == "toml") {
                Scenario::load(&e.path()).unwrap_or_else(|err| panic!("{err:#}"));
                n += 1;
            }
        }
        assert!(n >= 10, "only {n} scenarios");
    }

    #[test]
    fn several_vms_get_their_own_sinks() {
        let vm = "[[vm]]\nmemory_mb = 128\nworkload = \"idle\"\napp_mbit = 5\n";
        let s = parse(&format!(
            "name = \"x\"\nlink_mbit = 30\npolicies = [\"nrac\"]\n{vm}{vm}"
        ))
        .expect("two VMs");
        let w: Vec<String> = (0..2)
            .map(|i| {
                s.vm[i]
                    .workload_for(&GuestSlot::new(i))
                    .expect("workload")
                    .describe()
            })
            .collect();
        assert!(w[0].contains(":9000") && w[1].contains(":9001"), "{w:?}");
        let e = parse(&format!(
            "name = \"x\"\nlink_mbit = 30\npolicies = [\"nrac\"]\n{}",
            vm.repeat(MAX_VMS + 1)
        ))
        .expect_err("too many VMs");
        assert!(format!("{e:#}").contains("[[vm]]"), "{e:#}");
    }

    #[test]
    fn applications_and_their_demand() {
        let base = "name = \"x\"\nlink_mbit = 30\npolicies = [\"default\"]\n[[vm]]\nmemory_mb = 128\nworkload = \"idle\"\n";
        let s = parse(&format!("{base}app = \"greedy\"\nreserve_mbit = 10\n")).expect("greedy");
        assert_eq!(s.vm[0].app().expect("app"), App::Greedy);
        assert!(
            s.vm[0]
                .workload()
                .expect("w")
                .describe()
                .contains("rate-mbit=0")
        );
        let s = parse(&format!(
            "{base}app = \"onoff\"\napp_mbit = 20\non_ms = 4000\noff_ms = 6000\n"
        ))
        .expect("onoff");
        let app = s.vm[0].app().expect("app");
        assert_eq!(app.demand_at(1.0, 0.5), Some(20.0));
        assert_eq!(app.demand_at(5.0, 0.5), Some(0.0));
        assert_eq!(app.demand_at(11.0, 0.5), Some(20.0));
        assert_eq!(app.demand_at(4.2, 0.5), None, "an edge");
        assert_eq!(app.demand_at(9.8, 0.5), None, "an edge");
        let e = parse(&format!("{base}app = \"onoff\"\n")).expect_err("no rate");
        assert!(format!("{e:#}").contains("app_mbit"), "{e:#}");
        let e = parse(&format!("{base}reserve_mbit = 30\n")).expect_err("whole link");
        assert!(format!("{e:#}").contains("reserve_mbit"), "{e:#}");
    }

    #[test]
    fn bad_scenarios_are_named() {
        let base = "name = \"x\"\nlink_mbit = 30\npolicies = [\"nrac\"]\n";
        let e = parse(&format!(
            "{base}[[vm]]\nmemory_mb = 128\nworkload = \"warp\"\n"
        ))
        .expect_err("bad workload");
        assert!(format!("{e:#}").contains("warp"));
        let e = parse("name = \"x\"\nlink_mbit = 30\npolicies = [\"magic\"]\n[[vm]]\nmemory_mb = 128\nworkload = \"idle\"\n")
            .expect_err("bad policy");
        assert!(format!("{e:#}").contains("magic"));
        let e = parse(&format!(
            "{base}[[vm]]\nmemory_mb = 128\nworkload = \"mem-seq\"\n"
        ))
        .expect_err("no wss");
        assert!(format!("{e:#}").contains("wss_mb"));
        let vm = "[[vm]]\nmemory_mb = 128\nworkload = \"idle\"\n";
        assert_eq!(parse(&format!("{base}{vm}")).expect("default").vcpus, 1);
        assert_eq!(
            parse(&format!("{base}vcpus = 2\n{vm}")).expect("two").vcpus,
            2
        );
        let e = parse(&format!("{base}vcpus = 0\n{vm}")).expect_err("no vCPU");
        assert!(format!("{e:#}").contains("vcpus"), "{e:#}");
    }
}
