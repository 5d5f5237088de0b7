//! The capabilities the agent needs, checked at start so that a missing
//! one is named with what it is for (without the check, a missing CAP_BPF
//! shows as "failed to create map `VMBW_ADDRS`: Operation not permitted").
//! The agent runs as root or, least privilege, as any user with exactly
//! these (systemd `AmbientCapabilities=`, `setpriv --ambient-caps`).

/// (capability number, name, what vmbw needs it for).
pub const REQUIRED: &[(u32, &str, &str)] = &[
    (
        CAP_BPF,
        "CAP_BPF",
        "creating the eBPF maps and loading the tc programs",
    ),
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "attaching the programs to the uplink (TCX) and changing its HTB qdisc and classes",
    ),
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "the verifier's pointer arithmetic on packet data in the programs",
    ),
];

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "missing {}: run as root, or grant them (systemd AmbientCapabilities=, \
     setpriv --ambient-caps, the DaemonSet's securityContext)",
    missing.iter().map(|(n, why)| format!("{n} ({why})")).collect::<Vec<_>>().join(", ")
)]
pub struct MissingCaps {
    pub missing: Vec<(&'static str, &'static str)>,
}

/// The capabilities in `CapEff` of `/proc/self/status` text.
pub fn effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Checks an effective set. CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON, as the kernel allows.
pub fn check(eff: u64) -> Result<(), MissingCaps> {
    let has = |cap: u32| eff & (1 << cap) != 0;
    let missing: Vec<_> = REQUIRED
        .iter()
        .filter(|(cap, _, _)| {
            !has(*cap) && !((*cap == CAP_BPF || *cap == CAP_PERFMON) && has(CAP_SYS_ADMIN))
        })
        .map(|(_, name, why)| (*name, *why))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCaps { missing })
    }
}

/// Checks this process; None when `/proc/self/status` cannot be read (then
/// the kernel's own errors are all there is).
pub fn check_self() -> Option<Result<(), MissingCaps>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    effective(&status).map(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_capability_with_its_use() {
        let bpf_net_perf = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
        assert_eq!(check(bpf_net_perf), Ok(()));
        assert_eq!(check(u64::MAX), Ok(()), "root");
        assert_eq!(
            check((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)),
            Ok(()),
            "CAP_SYS_ADMIN covers BPF and PERFMON"
        );
        let e = check(1 << CAP_BPF).expect_err("two missing");
        let text = e.to_string();
        assert!(
            text.starts_with("missing CAP_NET_ADMIN (attaching"),
            "{text}"
        );
        assert!(text.contains("CAP_PERFMON (the verifier"), "{text}");
        assert!(!text.contains("CAP_BPF ("), "{text}");
    }

    #[test]
    fn reads_cap_eff_from_proc_status() {
        let status = "Name:\tvmbw\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n";
        let eff = effective(status).expect("CapEff");
        assert_eq!(check(eff), Ok(()));
        assert_eq!(effective("Name:\tx\n"), None);
    }
}
