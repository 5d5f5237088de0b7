//! Migration scenarios (TOML) for the testbed runner, `cargo xtask demo`
//! and `cargo xtask bench migration`. New scenarios need no code:
//!
//! ```toml
//! name = "mem+net at 30 Mbit"
//! link_mbit = 30          # bottleneck rate; 0 = unlimited
//! timeout_s = 300         # a migration still running then is cancelled
//! repetitions = 3
//! policies = ["default", "static:64MiB", "nrac", "bda", "nrac+adamig"]
//! [[vm]]
//! memory_mb = 160
//! workload = "mem-rand"   # idle | cpu | mem-seq | mem-rand | burst | hot
//! wss_mb = 64
//! dirty_mb_s = 3
//! app_mbit = 10           # the guest's application stream; 0 = none
//! ```
//!
//! `hot` dirties a small hot set at random (wss_mb is the hot set);
//! `burst` alternates dirtying (on_ms) and idling (off_ms).
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
    #[serde(default)]
    pub app_mbit: f64,
    #[serde(default = "default_on")]
    pub on_ms: u64,
    #[serde(default = "default_off")]
    pub off_ms: u64,
}

fn default_timeout() -> f64 {
    300.0
}
fn one() -> u32 {
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
            vmbw::control::policy::Spec::parse(p).with_context(|| format!("policy `{p}`"))?;
        }
        if self.vm.is_empty() || self.vm.len() > MAX_VMS {
            bail!(
                "1 to {MAX_VMS} [[vm]] entries per scenario ({} given): every guest is a TCG QEMU on this host",
                self.vm.len()
            );
        }
        for (i, v) in self.vm.iter().enumerate() {
            v.workload().with_context(|| format!("vm[{i}]"))?;
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

impl VmSpec {
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
        let mut w = if self.app_mbit > 0.0 {
            if mode == "burst" {
                bail!("burst with an application stream is not supported by the guest workload");
            }
            let mut w = Workload::new("net")
                .with("sink", slot.sink())
                .with("proto", "tcp")
                .with("rate-mbit", self.app_mbit);
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
    }
}
