//! The policies a benchmark run compares: vmbw's own, run by the agent,
//! and the choices an operator already has on KubeVirt or libvirt, each
//! done the way that platform does it.
//!
//! | name | what runs | as on the platform |
//! |---|---|---|
//! | `default` | stock QEMU, nothing set | no MigrationPolicy |
//! | `static:RATE` | QEMU `max-bandwidth` = RATE for the whole migration | KubeVirt `bandwidthPerMigration` |
//! | `autoconverge` | `auto-converge` on from the start, QEMU's own throttle steps | KubeVirt `allowAutoConverge` (libvirt `VIR_MIGRATE_AUTO_CONVERGE`) |
//! | `postcopy-after:S` | `postcopy-ram` on both sides from the start; `migrate-start-postcopy` once S seconds have passed | KubeVirt `allowPostCopy`, which switches when its completion timeout passes |
//! | `nrac`, `bda` | vmbw's agent enforcing (HTB) | — |
//! | `…+adamig`, `…+escalate` | the agent enforcing, with post-copy (and its preempt channel) and auto-converge armed at the start, auto-converge held inert (throttle 1%) until the agent raises it | what vmbw tells operators to arm: `allowPostCopy` + `allowAutoConverge` |
//!
//! Every peer policy runs with the agent in observe mode, so that vmbw's
//! counters measure it like the others; `static:RATE` is set by the agent
//! (its observe-mode policy of the same name sets only QEMU's cap).

use anyhow::{Context as _, bail};
use vmbw::control::policy::{Policy, Spec};

#[derive(Debug, Clone, PartialEq)]
pub enum BenchPolicy {
    /// A policy the agent runs itself.
    Agent { name: String, spec: Spec },
    /// QEMU auto-converge armed and on from the start.
    AutoConverge,
    /// Post-copy armed at the start and started after this many seconds.
    PostcopyAfter(f64),
}

/// Who a policy is, for the reports: stock QEMU, what operators run
/// today, or vmbw.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Stock,
    Peer,
    Vmbw,
}

impl BenchPolicy {
    pub fn parse(s: &str) -> anyhow::Result<BenchPolicy> {
        if s == "autoconverge" {
            return Ok(BenchPolicy::AutoConverge);
        }
        if let Some(secs) = s.strip_prefix("postcopy-after:") {
            let secs: f64 = secs
                .trim_end_matches('s')
                .parse()
                .with_context(|| format!("`{s}`: expected postcopy-after:SECONDS"))?;
            if !(secs >= 0.0 && secs.is_finite()) {
                bail!("`{s}`: the seconds must be >= 0");
            }
            return Ok(BenchPolicy::PostcopyAfter(secs));
        }
        let spec = Spec::parse(s).with_context(
            || "expected also autoconverge or postcopy-after:SECONDS (the peer policies)",
        )?;
        Ok(BenchPolicy::Agent {
            name: s.to_owned(),
            spec,
        })
    }

    /// The policy the agent is configured with.
    pub fn agent_policy(&self) -> &str {
        match self {
            BenchPolicy::Agent { name, .. } => name,
            _ => "default",
        }
    }

    /// Whether the agent enforces in the kernel (HTB) for this policy.
    pub fn enforcing(&self) -> bool {
        matches!(
            self,
            BenchPolicy::Agent { spec, .. } if matches!(spec.policy, Policy::Nrac(_) | Policy::Bda(_))
        )
    }

    pub fn family(&self) -> Family {
        match self {
            BenchPolicy::Agent { spec, .. } => match spec.policy {
                Policy::Default => Family::Stock,
                Policy::Static(_) => Family::Peer,
                Policy::Nrac(_) | Policy::Bda(_) => Family::Vmbw,
            },
            BenchPolicy::AutoConverge | BenchPolicy::PostcopyAfter(_) => Family::Peer,
        }
    }

    pub fn arms_autoconverge(&self) -> bool {
        matches!(self, BenchPolicy::AutoConverge) || self.fires_armed_tools()
    }

    /// Whether the agent escalates (AdaMig's watchdog or vmbw's
    /// escalation): it then fires the tools armed for it, which the
    /// testbed arms as vmbw tells operators to (auto-converge inert).
    pub fn fires_armed_tools(&self) -> bool {
        matches!(self, BenchPolicy::Agent { spec, .. }
            if spec.escalate.is_some() || spec.adamig.is_some())
    }

    /// Whether `postcopy-ram` is set on both sides before the start.
    pub fn arms_postcopy(&self) -> bool {
        self.postcopy_after().is_some() || self.fires_armed_tools()
    }

    /// When to start post-copy, if this policy arms it.
    pub fn postcopy_after(&self) -> Option<f64> {
        match self {
            BenchPolicy::PostcopyAfter(s) => Some(*s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_and_agent_policies_parse() {
        let p = BenchPolicy::parse("postcopy-after:45").expect("postcopy");
        assert_eq!(p.postcopy_after(), Some(45.0));
        assert_eq!((p.agent_policy(), p.enforcing()), ("default", false));
        assert_eq!(p.family(), Family::Peer);
        let p = BenchPolicy::parse("autoconverge").expect("autoconverge");
        assert!(p.arms_autoconverge() && !p.enforcing());
        let p = BenchPolicy::parse("static:2MiB").expect("static");
        assert_eq!(
            (p.agent_policy(), p.family()),
            ("static:2MiB", Family::Peer)
        );
        let p = BenchPolicy::parse("nrac").expect("nrac");
        assert!(p.enforcing() && p.family() == Family::Vmbw);
        assert!(!p.arms_postcopy() && !p.arms_autoconverge());
        let p = BenchPolicy::parse("nrac+adamig").expect("adamig");
        assert!(p.fires_armed_tools() && p.arms_postcopy() && p.arms_autoconverge());
        let p = BenchPolicy::parse("nrac+escalate").expect("escalate");
        assert!(
            p.enforcing() && p.fires_armed_tools() && p.arms_postcopy() && p.arms_autoconverge()
        );
        assert_eq!(p.postcopy_after(), None);
        assert_eq!(
            BenchPolicy::parse("default").expect("d").family(),
            Family::Stock
        );
        for bad in ["postcopy-after:", "postcopy-after:-1", "warp"] {
            let e = BenchPolicy::parse(bad).expect_err(bad);
            assert!(
                format!("{e:#}").contains(bad.split(':').next().unwrap_or(bad)),
                "{e:#}"
            );
        }
    }
}
