//! A link to shape: two test-made namespaces joined by a veth pair, a
//! tokio runtime, and a private state directory. vmbw shapes `veth0` in the
//! host namespace (its egress towards the peer); measurements send TCP from
//! host to peer.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};
use vmbw::shaping::{ShaperOptions, TcClient};

use crate::{NetNs, in_netns};

/// The shaped interface (in the host namespace).
pub const IFACE: &str = "veth0";
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 1); // RFC 2544 range
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 2);

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct ShapedLink {
    pub host: NetNs,
    pub peer: NetNs,
    pub rt: tokio::runtime::Runtime,
    state_dir: PathBuf,
}

impl ShapedLink {
    pub fn new() -> anyhow::Result<Self> {
        let host = NetNs::new()?;
        let peer = NetNs::new()?;
        host.veth_to(
            (IFACE, &format!("{HOST_IP}/24")),
            &peer,
            (IFACE, &format!("{PEER_IP}/24")),
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let state_dir =
            std::env::temp_dir().join(format!("vmbw-shaping-{}-{n}", std::process::id()));
        Ok(ShapedLink {
            host,
            peer,
            rt,
            state_dir,
        })
    }

    /// A netlink client bound to the host namespace.
    pub fn tc(&self) -> anyhow::Result<TcClient> {
        let handle = self.rt.handle().clone();
        in_netns(&self.host, move || {
            let _runtime = handle.enter();
            TcClient::connect()
        })
        .context("connecting to rtnetlink in the host namespace")
    }

    /// Shaper options with this link's own state directory.
    pub fn opts(&self) -> ShaperOptions {
        ShaperOptions {
            state_dir: Some(self.state_dir.clone()),
        }
    }

    pub fn state_dir(&self) -> &PathBuf {
        &self.state_dir
    }

    /// Runs iproute2's `tc -n <host> <args>` and returns its stdout.
    pub fn tc_cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        tc_in(&self.host, args)
    }

    /// `tc -d qdisc show dev veth0`: the device's qdiscs, in detail.
    pub fn qdiscs(&self) -> anyhow::Result<String> {
        self.tc_cmd(&["-d", "qdisc", "show", "dev", IFACE])
    }

    /// A TCP address on the peer.
    pub fn peer_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(PEER_IP, port))
    }

    /// The MTU of the shaped interface.
    pub fn mtu(&self) -> anyhow::Result<u32> {
        let out = self.host.ip(&["-o", "link", "show", "dev", IFACE])?;
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "mtu")
            .and_then(|_| words.next())
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("no mtu in `{}`", out.trim()))
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Runs `tc -n <ns> <args>`.
pub fn tc_in(ns: &NetNs, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("tc")
        .arg("-n")
        .arg(ns.name())
        .args(args)
        .output()
        .context("running tc")?;
    if !out.status.success() {
        bail!(
            "tc {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses a rate as `tc` prints it (`10Mbit`, `37500Kbit`, `40Gbit`, `8bit`)
/// into bits per second.
pub fn parse_tc_rate(s: &str) -> Option<u64> {
    let num = s.strip_suffix("bit")?;
    let (digits, mult) = match num.chars().last()? {
        'K' => (&num[..num.len() - 1], 1_000),
        'M' => (&num[..num.len() - 1], 1_000_000),
        'G' => (&num[..num.len() - 1], 1_000_000_000),
        'T' => (&num[..num.len() - 1], 1_000_000_000_000),
        _ => (num, 1),
    };
    digits.parse::<u64>().ok().map(|d| d * mult)
}

/// One HTB class as `tc -s class show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcClassLine {
    pub handle: String,
    pub parent: String,
    pub prio: Option<u32>,
    pub rate_bps: u64,
    pub ceil_bps: u64,
    /// `Sent N bytes` from the statistics line.
    pub sent_bytes: u64,
    /// `(dropped N, ...` from the statistics line: packets the class's
    /// queue refused.
    pub dropped: u64,
}

/// Parses `tc -s class show dev X` output (HTB classes only).
pub fn parse_tc_classes(out: &str) -> anyhow::Result<Vec<TcClassLine>> {
    let mut classes: Vec<TcClassLine> = Vec::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1).copied())
        };
        if words.first() == Some(&"class") && words.get(1) == Some(&"htb") {
            let handle = words.get(2).context("class without handle")?.to_string();
            let parent = if words.get(3) == Some(&"root") {
                "root".to_owned()
            } else {
                after("parent")
                    .with_context(|| format!("no parent in `{line}`"))?
                    .to_owned()
            };
            let rate = after("rate").and_then(parse_tc_rate);
            let ceil = after("ceil").and_then(parse_tc_rate);
            let (Some(rate_bps), Some(ceil_bps)) = (rate, ceil) else {
                bail!("cannot read rate/ceil in `{line}`");
            };
            classes.push(TcClassLine {
                handle,
                parent,
                prio: after("prio").and_then(|p| p.parse().ok()),
                rate_bps,
                ceil_bps,
                sent_bytes: 0,
                dropped: 0,
            });
        } else if words.first() == Some(&"Sent")
            && let Some(last) = classes.last_mut()
        {
            last.sent_bytes = words.get(1).and_then(|b| b.parse().ok()).unwrap_or(0);
            last.dropped = after("(dropped")
                .and_then(|d| d.trim_end_matches(',').parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_class_and_its_statistics() {
        let out = "class htb 1:2 root prio 0 rate 1Mbit ceil 2Mbit burst 1600b cburst 1600b \n \
                   Sent 4200 bytes 7 pkt (dropped 3, overlimits 0 requeues 0) \n \
                   backlog 0b 0p requeues 0\n";
        let c = parse_tc_classes(out).expect("parsed");
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].rate_bps, c[0].ceil_bps, c[0].sent_bytes, c[0].dropped),
            (1_000_000, 2_000_000, 4200, 3)
        );
    }

    #[test]
    fn parses_tc_rates() {
        assert_eq!(parse_tc_rate("10Mbit"), Some(10_000_000));
        assert_eq!(parse_tc_rate("37500Kbit"), Some(37_500_000));
        assert_eq!(parse_tc_rate("100Gbit"), Some(100_000_000_000));
        assert_eq!(parse_tc_rate("8bit"), Some(8));
        assert_eq!(parse_tc_rate("10Mbps"), None);
    }
}
