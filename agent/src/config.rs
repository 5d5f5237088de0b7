//! The agent's configuration (TOML). Every key has a default; the commented
//! default file is [`DEFAULT_TOML`] (`vmbw agent --print-default-config`),
//! and a test checks that it parses to exactly [`Config::default`], so the
//! documentation cannot drift from the code. Unknown keys are errors (a typo
//! must not silently fall back to a default), and every error names the key.
//!
//! Values with a syntax of their own (mode, policy, listen address, IPs,
//! MACs) are parsed into their types while the file is read, so the rest of
//! the agent never parses them again and cannot meet a malformed one.

use crate::api::units;
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::{
    api::Listen,
    control::{
        adamig, bda, escalate, nrac,
        policy::{Policy, PolicyError, Spec},
    },
    datapath::Mac,
};

/// The documented default configuration.
pub const DEFAULT_TOML: &str = r#"# vmbw agent configuration. Every key is optional; the values below are the
# defaults. Rates are in Mbit/s (10^6 bit/s) unless a key says otherwise.

[agent]
# What the datapath does beyond counting: "htb" (steer into HTB classes),
# "edt" (pace with skb->tstamp; needs the fq qdisc, falls back to htb),
# "observe" (count only, change nothing).
mode = "htb"
# Bandwidth policy: "nrac", "bda", "nrac+adamig", "bda+adamig",
# "nrac+escalate", "bda+escalate", "default" (no enforcement) or
# "static:RATE" (e.g. "static:64MiB", "static:100mbit").
policy = "nrac+escalate"
# Control loop period between migration iterations, milliseconds.
tick_ms = 500

# The host uplink(s) the migrations and the applications share.
[[uplink]]
iface = "eth0"
# Link capacity N_t.
link_mbit = 1000.0
# "vxlan" when the VMs' traffic crosses this link inside VXLAN (a tunnelling
# CNI): a promise (reserve_mbit) is then guaranteed with the tunnel's 50
# bytes a frame on top. "none": plain frames.
encapsulation = "none"

[nrac]
# Th_r: mean application throughput above which a VM is network-intensive.
network_intensive_mbit = 10.0
# k: application samples averaged for that test.
samples = 5
# gamma: a migration is guaranteed gamma x its predicted dirty rate (> 1).
gamma = 2.0
# Headroom on the predicted application bandwidth when reserving it.
reserve_headroom = 0.05
# Largest share of the link one application reservation may take.
reserve_cap = 0.7
# Smallest share of the link every migration keeps.
floor = 0.05

[bda]
# The first round's bandwidth.
initial_mbit = 268.435456

[adamig]
# Passes over which the remaining set must shrink by min_progress.
window = 1
min_progress = 0.1
# Whether the watchdog may switch a migration to post-copy. It fires only
# what the migration's starter armed (postcopy-ram on both sides; for its
# throttle steps, auto-converge held inert at cpu-throttle 1%): see
# [escalate] below for how to arm them, and post-copy's risk.
allow_postcopy = true
# Upper bound for a raised downtime limit, milliseconds.
max_downtime_ms = 2000

[escalate]
# For "...+escalate": when a migration's forecast says it will not converge,
# or will take more than `slack` x one pass over what is left (and at least
# min_excess_s longer), fire the cheapest tool that was armed when the
# migration started and keeps every reservation. Arm them at the start:
# KubeVirt MigrationPolicy allowPostCopy / allowAutoConverge, libvirt
# VIR_MIGRATE_POSTCOPY / VIR_MIGRATE_AUTO_CONVERGE, QMP migrate-set-
# capabilities postcopy-ram (both sides; postcopy-preempt too on QEMU >= 8)
# and auto-converge with cpu-throttle-initial = max-cpu-throttle = 1, which
# keeps it inert until vmbw raises it. Post-copy's risk: if either host or
# the link fails during post-copy, the VM is lost.
allow_postcopy = true
allow_throttle = true
allow_downtime = true
# Largest downtime limit escalation may set, milliseconds.
downtime_budget_ms = 500
slack = 1.3
min_excess_s = 5.0
# Highest vCPU throttle escalation may set, percent.
max_throttle_pct = 90

[datapath]
# bpffs directory for vmbw's pinned maps and links (must be on a bpffs).
pin_dir = "/sys/fs/bpf/vmbw"
# Keep the datapath attached when the agent stops (traffic stays classified;
# the next agent adopts it). Otherwise stopping removes it.
keep_on_exit = false

[shaping]
# Where the original root qdiscs are remembered for restoring them.
state_dir = "/run/vmbw/shaping"

[api]
# Status API (JSON) and /metrics (Prometheus): "ADDR:PORT" or
# "unix:/path/to.sock". Localhost by default.
listen = "127.0.0.1:9464"

[discovery]
# QMP sockets to follow besides the [[vm]] entries, as a glob pattern
# (e.g. "/run/vmbw/qmp/*.sock"); the VM is named after the file stem.
qmp_glob = ""
# Follow every running domain of this libvirt daemon (e.g. "qemu:///system"),
# as it starts and stops, without [[vm]] entries. A domain that also has a
# [[vm]] entry (same name) is followed as that entry says (its reserve_mbit).
libvirt = ""
# Learn VMIs, migrations and virt-launcher pods from KubeVirt (in-cluster):
# their addresses and virt-handler's migration proxy ports. A VMI whose
# "namespace/name" is a [[vm]] entry's name is registered into that entry's
# slot, so the control loop follows and shapes it as the entry says.
kubevirt = false
# This node's name, as Kubernetes knows it (KubeVirt discovery watches only
# this node's VMIs and launcher pods). Empty: $NODE_NAME (the DaemonSet sets
# it from the downward API), else the hostname.
node_name = ""

# VMs to follow, one table each, reached either through QEMU's QMP socket:
# [[vm]]
# name = "vm1"
# qmp = "/run/vm1.qmp"           # QEMU's QMP socket
# ips = ["198.18.0.10"]          # the VM's addresses (application traffic)
# macs = ["52:54:00:12:34:56"]
# taps = ["tap-vm1"]             # its tap devices
# reserve_mbit = 10              # bandwidth promised to its application (SLA), Mbit/s
# completion_timeout_per_gib = 150  # the starter aborts after this many s per GiB of RAM
#                                # (KubeVirt's completionTimeoutPerGiB): vmbw's allotment
#                                # keeps the forecast within 80% of it
#
# or through libvirt, where libvirt owns the QMP socket (job statistics,
# virDomainMigrateSetMaxSpeed/SetMaxDowntime/StartPostCopy):
# [[vm]]
# name = "vm2"
# libvirt = { uri = "qemu:///system", domain = "vm2" }
#   uri:      the libvirt connection (default "qemu:///system")
#   domain:   the libvirt domain (default: the VM's name)
#   pid_file: QEMU's pid file (default: libvirt's, <run dir>/qemu/<domain>.pid)
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}`: {problem}")]
    Invalid {
        path: String,
        key: String,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentSection,
    pub uplink: Vec<Uplink>,
    pub nrac: NracSection,
    pub bda: BdaSection,
    pub adamig: AdamigSection,
    pub escalate: EscalateSection,
    pub datapath: DatapathSection,
    pub shaping: ShapingSection,
    pub api: ApiSection,
    pub discovery: DiscoverySection,
    pub vm: Vec<VmEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    pub mode: Mode,
    pub policy: NamedPolicy,
    pub tick_ms: u64,
}

/// `agent.mode`: what the datapath does beyond counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Steer into HTB classes.
    #[default]
    Htb,
    /// Pace with `skb->tstamp` (needs fq; the shaper falls back to HTB).
    Edt,
    /// Count only.
    Observe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Htb => "htb",
            Mode::Edt => "edt",
            Mode::Observe => "observe",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `agent.policy`: the policy as written, which the status API and the logs
/// show (`static:64MiB` stays `static:64MiB`), and the [`Spec`] it parses
/// to, without this config's knobs (see [`Config::policy`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct NamedPolicy {
    name: String,
    spec: Spec,
}

impl NamedPolicy {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }
}

impl FromStr for NamedPolicy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<NamedPolicy, PolicyError> {
        Ok(NamedPolicy {
            name: s.to_owned(),
            spec: s.parse()?,
        })
    }
}

impl TryFrom<String> for NamedPolicy {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<NamedPolicy, PolicyError> {
        s.parse()
    }
}

impl fmt::Display for NamedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `nrac+escalate`, built rather than parsed: a Default cannot fail. NRAC
/// with the promised reservations, a forecast per migration and the
/// cheapest armed tool when it is late (measured on the demo: 3/3
/// converged in 81.5 s, SLA p5 0.99, where no other policy did both).
impl Default for NamedPolicy {
    fn default() -> Self {
        NamedPolicy {
            name: "nrac+escalate".into(),
            spec: Spec {
                policy: Policy::Nrac(nrac::Config::default()),
                adamig: None,
                escalate: Some(escalate::Config::default()),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub iface: String,
    pub link_mbit: f64,
    /// How the VMs' traffic is wrapped on this link (a tunnelling CNI).
    #[serde(default)]
    pub encapsulation: Encapsulation,
}

/// `uplink.encapsulation`: the tunnel the VMs' packets cross this uplink
/// in, whose headers HTB counts on top of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encapsulation {
    /// Plain frames (direct routing, a bridge, a migration network).
    #[default]
    None,
    /// VXLAN (Flannel, Calico VXLAN, Cilium's tunnel mode): outer
    /// Ethernet, IPv4, UDP and VXLAN headers, 50 bytes a frame.
    Vxlan,
}

impl Encapsulation {
    /// Bytes the tunnel adds to each frame on the wire.
    pub fn overhead_bytes(self) -> f64 {
        match self {
            Encapsulation::None => 0.0,
            Encapsulation::Vxlan => 50.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NracSection {
    pub network_intensive_mbit: f64,
    pub samples: usize,
    pub gamma: f64,
    pub reserve_headroom: f64,
    pub reserve_cap: f64,
    pub floor: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BdaSection {
    pub initial_mbit: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamigSection {
    pub window: usize,
    pub min_progress: f64,
    pub allow_postcopy: bool,
    pub max_downtime_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalateSection {
    pub allow_postcopy: bool,
    pub allow_throttle: bool,
    pub allow_downtime: bool,
    pub downtime_budget_ms: u64,
    pub slack: f64,
    pub min_excess_s: f64,
    pub max_throttle_pct: u8,
}

impl Default for EscalateSection {
    fn default() -> Self {
        let e = escalate::Config::default();
        EscalateSection {
            allow_postcopy: e.allow_postcopy,
            allow_throttle: e.allow_throttle,
            allow_downtime: e.allow_downtime,
            downtime_budget_ms: (e.downtime_budget_s * 1000.0) as u64,
            slack: e.slack,
            min_excess_s: e.min_excess_s,
            max_throttle_pct: e.max_throttle_pct,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathSection {
    pub pin_dir: PathBuf,
    pub keep_on_exit: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingSection {
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub listen: Listen,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySection {
    pub qmp_glob: String,
    /// A libvirt URI whose running domains are all followed; empty: off.
    pub libvirt: String,
    pub kubevirt: bool,
    pub node_name: String,
}

impl DiscoverySection {
    /// This node's name: `node_name`, else `$NODE_NAME`, else the hostname.
    pub fn node(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        std::env::var("NODE_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default()
    }
}

/// `[[vm]] libvirt = { .. }`: a VM reached through libvirt.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtEntry {
    #[serde(default = "default_libvirt_uri")]
    pub uri: String,
    /// Empty: the VM's name.
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
}

fn default_libvirt_uri() -> String {
    "qemu:///system".into()
}

/// How the agent reaches a VM's QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Telemetry {
    Qmp(PathBuf),
    /// (uri, domain, pid file)
    Libvirt {
        uri: String,
        domain: String,
        pid_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmEntry {
    pub name: String,
    /// QEMU's QMP socket (or `libvirt`).
    #[serde(default)]
    pub qmp: Option<PathBuf>,
    /// The VM's libvirt domain (or `qmp`).
    #[serde(default)]
    pub libvirt: Option<LibvirtEntry>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub macs: Vec<Mac>,
    #[serde(default)]
    pub taps: Vec<String>,
    /// The bandwidth promised to the VM's application (its SLA), Mbit/s.
    #[serde(default)]
    pub reserve_mbit: Option<f64>,
    /// Seconds per GiB of guest RAM after which the migration's starter
    /// gives up on it (KubeVirt's `completionTimeoutPerGiB`, 150 there by
    /// default): vmbw keeps the migration's allotment so that it is
    /// forecast to end within 80% of that.
    #[serde(default)]
    pub completion_timeout_per_gib: Option<f64>,
}

impl VmEntry {
    /// A VM followed over QMP.
    pub fn qmp(name: impl Into<String>, qmp: impl Into<PathBuf>) -> VmEntry {
        VmEntry {
            name: name.into(),
            qmp: Some(qmp.into()),
            libvirt: None,
            ips: Vec::new(),
            macs: Vec::new(),
            taps: Vec::new(),
            reserve_mbit: None,
            completion_timeout_per_gib: None,
        }
    }

    /// How this VM is reached (a validated entry has exactly one way).
    pub fn telemetry(&self) -> Option<Telemetry> {
        match (&self.qmp, &self.libvirt) {
            (Some(path), None) => Some(Telemetry::Qmp(path.clone())),
            (None, Some(l)) => Some(Telemetry::Libvirt {
                uri: l.uri.clone(),
                domain: if l.domain.is_empty() {
                    self.name.clone()
                } else {
                    l.domain.clone()
                },
                pid_file: l.pid_file.clone(),
            }),
            _ => None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            agent: AgentSection::default(),
            uplink: vec![Uplink {
                iface: "eth0".into(),
                link_mbit: 1000.0,
                encapsulation: Encapsulation::None,
            }],
            nrac: NracSection::default(),
            bda: BdaSection::default(),
            adamig: AdamigSection::default(),
            escalate: EscalateSection::default(),
            datapath: DatapathSection::default(),
            shaping: ShapingSection::default(),
            api: ApiSection::default(),
            discovery: DiscoverySection::default(),
            vm: Vec::new(),
        }
    }
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            mode: Mode::default(),
            policy: NamedPolicy::default(),
            tick_ms: 500,
        }
    }
}

impl Default for NracSection {
    fn default() -> Self {
        let n = nrac::Config::default();
        NracSection {
            network_intensive_mbit: units::mbit(n.network_intensive),
            samples: n.samples,
            gamma: n.gamma,
            reserve_headroom: n.reserve_headroom,
            reserve_cap: n.reserve_cap,
            floor: n.floor,
        }
    }
}

impl Default for BdaSection {
    fn default() -> Self {
        BdaSection {
            initial_mbit: units::mbit(bda::Config::default().initial),
        }
    }
}

impl Default for AdamigSection {
    fn default() -> Self {
        let a = adamig::Config::default();
        AdamigSection {
            window: a.window,
            min_progress: a.min_progress,
            allow_postcopy: a.allow_postcopy,
            max_downtime_ms: (a.max_downtime_s * 1000.0) as u64,
        }
    }
}

impl Default for DatapathSection {
    fn default() -> Self {
        DatapathSection {
            pin_dir: crate::datapath::DEFAULT_PIN_DIR.into(),
            keep_on_exit: false,
        }
    }
}

impl Default for ShapingSection {
    fn default() -> Self {
        ShapingSection {
            state_dir: crate::shaping::DEFAULT_STATE_DIR.into(),
        }
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: Listen::Tcp(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                crate::api::DEFAULT_PORT,
            ))),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            problem,
        };
        if self.agent.tick_ms == 0 {
            return Err(bad("agent.tick_ms", "must be at least 1".into()));
        }
        if self.uplink.is_empty() {
            return Err(bad("uplink", "at least one [[uplink]] is needed".into()));
        }
        for (i, u) in self.uplink.iter().enumerate() {
            if u.iface.is_empty() || u.iface.len() > 15 {
                return Err(bad(
                    &format!("uplink[{i}].iface"),
                    format!("`{}` is not an interface name", u.iface),
                ));
            }
            if !(u.link_mbit.is_finite() && u.link_mbit > 0.0) {
                return Err(bad(
                    &format!("uplink[{i}].link_mbit"),
                    format!("{} must be a positive number", u.link_mbit),
                ));
            }
        }
        let n = &self.nrac;
        if !(n.gamma.is_finite() && n.gamma > 1.0) {
            return Err(bad(
                "nrac.gamma",
                format!(
                    "{} must be > 1: a migration given exactly its dirty rate never converges",
                    n.gamma
                ),
            ));
        }
        for (key, v) in [("nrac.reserve_cap", n.reserve_cap), ("nrac.floor", n.floor)] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(bad(
                    key,
                    format!("{v} must be a share of the link in (0, 1]"),
                ));
            }
        }
        if n.reserve_cap + n.floor > 1.0 {
            return Err(bad(
                "nrac.reserve_cap",
                format!(
                    "reserve_cap {} + floor {} exceed the link",
                    n.reserve_cap, n.floor
                ),
            ));
        }
        let sane = n.network_intensive_mbit.is_finite()
            && n.network_intensive_mbit >= 0.0
            && n.reserve_headroom.is_finite()
            && n.reserve_headroom >= 0.0
            && n.samples > 0;
        if !sane {
            return Err(bad(
                "nrac",
                "network_intensive_mbit >= 0, reserve_headroom >= 0 and samples >= 1 are required"
                    .into(),
            ));
        }
        if !(self.bda.initial_mbit.is_finite() && self.bda.initial_mbit > 0.0) {
            return Err(bad("bda.initial_mbit", "must be a positive number".into()));
        }
        if self.adamig.window == 0
            || !(self.adamig.min_progress > 0.0 && self.adamig.min_progress < 1.0)
        {
            return Err(bad(
                "adamig",
                "window >= 1 and 0 < min_progress < 1 are required".into(),
            ));
        }
        let e = &self.escalate;
        if !(e.slack.is_finite() && e.slack >= 1.0) {
            return Err(bad("escalate.slack", "must be a number >= 1".into()));
        }
        if !(e.min_excess_s.is_finite() && e.min_excess_s >= 0.0) {
            return Err(bad("escalate.min_excess_s", "must be >= 0".into()));
        }
        if !(1..=99).contains(&e.max_throttle_pct) {
            return Err(bad(
                "escalate.max_throttle_pct",
                "must be 1..=99 (QEMU's range)".into(),
            ));
        }
        if !self.discovery.libvirt.is_empty() {
            if !cfg!(feature = "libvirt") {
                return Err(bad(
                    "discovery.libvirt",
                    "this vmbw was built without libvirt support".into(),
                ));
            }
            if !self.discovery.libvirt.contains(":/") {
                return Err(bad(
                    "discovery.libvirt",
                    format!(
                        "`{}` is not a libvirt URI (e.g. \"qemu:///system\")",
                        self.discovery.libvirt
                    ),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, vm) in self.vm.iter().enumerate() {
            if vm.name.is_empty() || !names.insert(vm.name.as_str()) {
                return Err(bad(
                    &format!("vm[{i}].name"),
                    format!("`{}` is empty or used twice", vm.name),
                ));
            }
            match (&vm.qmp, &vm.libvirt) {
                (None, None) => {
                    return Err(bad(
                        &format!("vm[{i}]"),
                        "needs `qmp` (QEMU's QMP socket) or `libvirt` (a libvirt domain)".into(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &format!("vm[{i}].libvirt"),
                        "`qmp` and `libvirt` exclude each other: libvirt owns its QEMU's \
                         QMP socket"
                            .into(),
                    ));
                }
                (Some(path), None) if path.as_os_str().is_empty() => {
                    return Err(bad(&format!("vm[{i}].qmp"), "is empty".into()));
                }
                (None, Some(l)) => {
                    if !cfg!(feature = "libvirt") {
                        return Err(bad(
                            &format!("vm[{i}].libvirt"),
                            "this vmbw was built without the `libvirt` feature".into(),
                        ));
                    }
                    if l.uri.trim().is_empty() {
                        return Err(bad(
                            &format!("vm[{i}].libvirt.uri"),
                            "is empty (e.g. \"qemu:///system\")".into(),
                        ));
                    }
                }
                _ => {}
            }
            if let Some(r) = vm.reserve_mbit
                && !(r >= 0.0 && r.is_finite())
            {
                return Err(bad(
                    &format!("vm[{i}].reserve_mbit"),
                    format!("{r} is not a rate >= 0 (Mbit/s)"),
                ));
            }
            if let Some(t) = vm.completion_timeout_per_gib
                && !(t > 0.0 && t.is_finite())
            {
                return Err(bad(
                    &format!("vm[{i}].completion_timeout_per_gib"),
                    format!("{t} is not a time > 0 (seconds per GiB)"),
                ));
            }
        }
        Ok(())
    }

    /// The policy with this config's NRAC/BDA/AdaMig knobs applied.
    pub fn policy(&self) -> Spec {
        let mut spec = self.agent.policy.spec().clone();
        let mbit = units::from_mbit;
        match &mut spec.policy {
            Policy::Nrac(c) => {
                *c = nrac::Config {
                    network_intensive: mbit(self.nrac.network_intensive_mbit),
                    samples: self.nrac.samples,
                    gamma: self.nrac.gamma,
                    reserve_headroom: self.nrac.reserve_headroom,
                    reserve_cap: self.nrac.reserve_cap,
                    floor: self.nrac.floor,
                    app_alpha: c.app_alpha,
                }
            }
            Policy::Bda(c) => c.initial = mbit(self.bda.initial_mbit),
            _ => {}
        }
        if let Some(a) = spec.adamig.as_mut() {
            *a = adamig::Config {
                window: self.adamig.window,
                min_progress: self.adamig.min_progress,
                allow_postcopy: self.adamig.allow_postcopy,
                max_downtime_s: self.adamig.max_downtime_ms as f64 / 1000.0,
            };
        }
        if let Some(c) = spec.escalate.as_mut() {
            let e = &self.escalate;
            *c = escalate::Config {
                allow_postcopy: e.allow_postcopy,
                allow_throttle: e.allow_throttle,
                allow_downtime: e.allow_downtime,
                downtime_budget_s: e.downtime_budget_ms as f64 / 1000.0,
                slack: e.slack,
                min_excess_s: e.min_excess_s,
                postcopy_weight: c.postcopy_weight,
                max_throttle_pct: e.max_throttle_pct,
            };
        }
        spec
    }
}

impl Config {
    /// What this configuration resolves to, one line per decision it
    /// makes (`vmbw agent --check`).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "mode {}, policy {} (resolved: {:?}), tick {} ms\n",
            self.agent.mode,
            self.agent.policy,
            self.policy(),
            self.agent.tick_ms
        );
        for u in &self.uplink {
            out.push_str(&format!("uplink {}: {} Mbit/s\n", u.iface, u.link_mbit));
        }
        out.push_str(&format!("status API and /metrics on {}\n", self.api.listen));
        for vm in &self.vm {
            let how = match vm.telemetry() {
                Some(Telemetry::Qmp(p)) => format!("QMP {}", p.display()),
                Some(Telemetry::Libvirt { uri, domain, .. }) => {
                    format!("libvirt {uri} domain {domain}")
                }
                None => "not followed".into(),
            };
            out.push_str(&format!(
                "vm {}: {how}; {} address(es), {} MAC(s), {} tap(s); {}\n",
                vm.name,
                vm.ips.len(),
                vm.macs.len(),
                vm.taps.len(),
                vm.reserve_mbit
                    .map_or("nothing promised".into(), |r| format!(
                        "{r} Mbit/s promised"
                    ))
            ));
            if let Some(t) = vm.completion_timeout_per_gib {
                out.push_str(&format!(
                    "  deadline: its starter gives up after {t} s per GiB of RAM\n"
                ));
            }
        }
        out
    }
}

impl ConfigError {
    /// A TOML error, named by its key where it has one. serde reports a
    /// value that does not parse (a bad mode, policy, address, or a wrong
    /// type) with the value's place in the text but not its key, so the key
    /// is found from that place; errors of the TOML syntax itself have no
    /// key and keep toml's own message.
    fn from_toml(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
        let Some((key, at)) = e
            .span()
            .and_then(|span| Some((key_at(text, span.start)?, span.start)))
        else {
            return ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            };
        };
        let line = text[..at].matches('\n').count() + 1;
        let written: String = text
            .lines()
            .nth(line - 1)
            .unwrap_or_default()
            .trim()
            .chars()
            .take(80)
            .collect();
        ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            problem: format!("{} (line {line}: `{written}`)", e.message()),
        }
    }
}

/// The dotted key (`vm[0].macs[1]`) of the innermost key or value at byte
/// `at` of a TOML document, if it parses.
fn key_at(text: &str, at: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut key = String::new();
    key_in_table(doc.get_ref(), at, &mut key).then_some(key)
}

fn key_in_table(table: &DeTable<'_>, at: usize, key: &mut String) -> bool {
    for (k, v) in table {
        let mark = key.len();
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(k.get_ref());
        // Deepest first: a table's own span may cover its children's.
        if key_in_value(v.get_ref(), at, key) || k.span().contains(&at) || v.span().contains(&at) {
            return true;
        }
        key.truncate(mark);
    }
    false
}

fn key_in_value(value: &DeValue<'_>, at: usize, key: &mut String) -> bool {
    match value {
        DeValue::Table(t) => key_in_table(t, at, key),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let mark = key.len();
                key.push_str(&format!("[{i}]"));
                if key_in_value(item.get_ref(), at, key) || item.span().contains(&at) {
                    return true;
                }
                key.truncate(mark);
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_describes_the_resolved_policy_and_each_vm_s_promise() {
        let cfg = Config::parse(
            "[agent]\npolicy = \"nrac+escalate\"\n[escalate]\nallow_postcopy = false\n\
             [[vm]]\nname = \"a\"\nqmp = \"/run/a.qmp\"\nreserve_mbit = 15\n",
            "t.toml",
        )
        .expect("valid");
        let text = cfg.describe();
        assert!(text.contains("policy nrac+escalate"), "{text}");
        assert!(text.contains("allow_postcopy: false"), "{text}");
        assert!(
            text.contains(
                "vm a: QMP /run/a.qmp; 0 address(es), 0 MAC(s), 0 tap(s); 15 Mbit/s promised"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_completion_timeout_must_be_a_positive_time_and_is_named_when_not() {
        let cfg = |v: &str| {
            Config::parse(
                &format!(
                    "[[vm]]\nname = \"a\"\nqmp = \"/run/a.qmp\"\ncompletion_timeout_per_gib = {v}\n"
                ),
                "t.toml",
            )
        };
        let ok = cfg("150").expect("valid");
        assert_eq!(ok.vm[0].completion_timeout_per_gib, Some(150.0));
        let e = cfg("0").expect_err("zero").to_string();
        assert!(e.contains("vm[0].completion_timeout_per_gib"), "{e}");
        assert!(e.contains("is not a time > 0"), "{e}");
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let parsed = Config::parse(DEFAULT_TOML, "default").expect("default config parses");
        assert_eq!(parsed, Config::default());
        // And the policy built from them equals the modules' own defaults.
        let spec = parsed.policy();
        assert_eq!(spec.adamig, None);
        assert_eq!(spec.escalate, Some(escalate::Config::default()));
        match spec.policy {
            crate::control::policy::Policy::Nrac(c) => assert_eq!(c, nrac::Config::default()),
            other => panic!("default policy is {other:?}"),
        }
    }

    #[test]
    fn an_empty_file_is_the_default() {
        assert_eq!(
            Config::parse("", "empty").expect("parses"),
            Config::default()
        );
    }

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml")
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        assert!(err("[agent]\nmode = \"fast\"").contains("agent.mode"));
        assert!(err("[agent]\npolicy = \"magic\"").contains("agent.policy"));
        assert!(err("[nrac]\ngamma = 1.0").contains("nrac.gamma"));
        assert!(err("[nrac]\nreserve_cap = 0.99\nfloor = 0.05").contains("nrac.reserve_cap"));
        assert!(err("[api]\nlisten = \"localhost\"").contains("api.listen"));
        assert!(
            err("[[uplink]]\niface = \"eth0\"\nlink_mbit = -1.0").contains("uplink[0].link_mbit")
        );
        assert!(err("[[vm]]\nname = \"a\"\nqmp = \"/x\"\nips = [\"1.2.3\"]").contains("vm[0].ips"));
        assert!(err("[[vm]]\nname = \"a\"\nqmp = \"/x\"\nmacs = [\"zz\"]").contains("vm[0].macs"));
        assert!(err("[[vm]]\nname = \"a\"").contains("vm[0]`: needs `qmp`"));
        assert!(
            err("[[vm]]\nname = \"a\"\nqmp = \"/x\"\nlibvirt = { domain = \"a\" }")
                .contains("vm[0].libvirt")
        );
        assert!(
            err("[[vm]]\nname = \"a\"\nlibvirt = { uri = \"\" }").contains("vm[0].libvirt.uri")
        );
        assert!(err("[[vm]]\nname = \"a\"\nlibvirt = { url = \"x\" }").contains("url"));
        // A typo is an error naming the unknown key, not a silent default.
        assert!(err("[agent]\npolicyy = \"nrac\"").contains("policyy"));
        // Wrong type: the parser names the key.
        assert!(err("[agent]\ntick_ms = \"fast\"").contains("tick_ms"));
    }

    #[test]
    fn values_are_parsed_at_load() {
        let cfg = Config::parse(
            "[agent]\nmode = \"edt\"\npolicy = \"static:64MiB\"\n\
             [api]\nlisten = \"unix:/run/a.sock\"\n\
             [[vm]]\nname = \"a\"\nqmp = \"/x\"\nips = [\"198.18.0.10\", \"fd00::1\"]\n\
             macs = [\"52:54:00:12:34:56\"]\n",
            "t",
        )
        .expect("ok");
        assert_eq!(cfg.agent.mode, Mode::Edt);
        // The status API shows the policy as written, not as bytes/s.
        assert_eq!(cfg.agent.policy.to_string(), "static:64MiB");
        assert_eq!(
            cfg.agent.policy.spec().policy,
            Policy::Static(64.0 * 1024.0 * 1024.0)
        );
        assert_eq!(cfg.api.listen, Listen::Unix("/run/a.sock".into()));
        assert_eq!(
            cfg.vm[0].ips,
            vec![
                IpAddr::from([198, 18, 0, 10]),
                "fd00::1".parse::<IpAddr>().expect("ip")
            ]
        );
        assert_eq!(
            cfg.vm[0].macs,
            vec![Mac::new([0x52, 0x54, 0, 0x12, 0x34, 0x56])]
        );
    }

    #[test]
    fn a_bad_value_is_named_by_file_key_and_line() {
        assert_eq!(
            err("[[vm]]\nname = \"a\"\nqmp = \"/x\"\n\
                 [[vm]]\nname = \"b\"\nqmp = \"/y\"\nips = [\"10.0.0.1\", \"1.2.3\"]"),
            "t.toml: `vm[1].ips[1]`: invalid IP address syntax \
             (line 7: `ips = [\"10.0.0.1\", \"1.2.3\"]`)"
        );
        let e = err("[agent]\npolicy = \"magic\"");
        assert!(
            e.starts_with("t.toml: `agent.policy`: unknown policy `magic`"),
            "{e}"
        );
        let e = err("[agent]\nmode = \"fast\"");
        assert!(
            e.starts_with("t.toml: `agent.mode`: unknown variant `fast`, expected one of `htb`, `edt`, `observe`"),
            "{e}"
        );
        let e = err("[api]\nlisten = \"localhost\"");
        assert!(e.starts_with("t.toml: `api.listen`: `localhost`: "), "{e}");
        let e = err("[[uplink]]\niface = \"eth0\"");
        assert!(
            e.starts_with("t.toml: `uplink[0]`: missing field `link_mbit`"),
            "{e}"
        );
        // A syntax error has no key: toml's own message, with the place.
        let e = err("[agent\n");
        assert!(e.starts_with("t.toml: TOML parse error at line 1"), "{e}");
    }

    #[test]
    fn knobs_reach_the_policy() {
        let cfg = Config::parse(
            "[agent]\npolicy = \"nrac\"\n[nrac]\ngamma = 3.0\nnetwork_intensive_mbit = 20.0",
            "t",
        )
        .expect("ok");
        match cfg.policy().policy {
            crate::control::policy::Policy::Nrac(c) => {
                assert_eq!(c.gamma, 3.0);
                assert_eq!(c.network_intensive, 2_500_000.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_vm_is_reached_over_qmp_or_libvirt() {
        let cfg = Config::parse(
            "[[vm]]\nname = \"a\"\nqmp = \"/run/a.qmp\"\n\
             [[vm]]\nname = \"b\"\nlibvirt = { uri = \"qemu:///session\" }\n\
             [[vm]]\nname = \"c\"\nlibvirt = { domain = \"ns_c\", pid_file = \"/p\" }\n",
            "t",
        )
        .expect("ok");
        assert_eq!(
            cfg.vm[0].telemetry(),
            Some(Telemetry::Qmp("/run/a.qmp".into()))
        );
        assert_eq!(
            cfg.vm[1].telemetry(),
            Some(Telemetry::Libvirt {
                uri: "qemu:///session".into(),
                domain: "b".into(),
                pid_file: None
            })
        );
        assert_eq!(
            cfg.vm[2].telemetry(),
            Some(Telemetry::Libvirt {
                uri: "qemu:///system".into(),
                domain: "ns_c".into(),
                pid_file: Some("/p".into())
            })
        );
    }

    #[test]
    fn the_node_name_comes_from_the_config_first() {
        let d = DiscoverySection {
            node_name: "node01".into(),
            ..DiscoverySection::default()
        };
        assert_eq!(d.node(), "node01");
        assert!(!DiscoverySection::default().node().is_empty());
    }
}
