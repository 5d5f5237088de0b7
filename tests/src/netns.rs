//! Network namespaces owned by a test: created with `ip netns add`, removed
//! (with every interface inside) when the guard drops, also on panic.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Prefix of every namespace the tests create; see the crate docs.
pub const PREFIX: &str = "vmbw-t";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists as long as this value does.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh, uniquely named namespace with loopback up and IPv6
    /// off (so router solicitations and DAD do not add to counted traffic).
    pub fn new() -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, which `setns` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Moves the calling thread into the namespace for good (threads it
    /// starts afterwards are born there). For a process that stands in for
    /// one living in the namespace, e.g. fake QEMUs whose `/proc/PID/net`
    /// the agent reads.
    pub fn enter_for_good(&self) -> anyhow::Result<()> {
        enter(&self.path())
    }

    /// A veth pair `name` / `<name>p`, both up: an uplink for an agent in
    /// a namespace of its own (this kernel has no dummy devices).
    pub fn veth_uplink(&self, name: &str) -> anyhow::Result<()> {
        let peer = format!("{name}p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
        for dev in [name, peer.as_str()] {
            self.ip(&["link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Connects `self` and `peer` with a veth pair created directly inside
    /// the two namespaces (the root namespace never sees it), assigns the
    /// given IPv4 addresses (CIDR), brings both ends up and pins permanent
    /// neighbour entries both ways, so no ARP crosses the link: tests can
    /// count exactly the packets they send.
    pub fn veth_to(
        &self,
        local: (&str, &str),
        peer_ns: &NetNs,
        peer: (&str, &str),
    ) -> anyhow::Result<()> {
        self.ip(&[
            "link",
            "add",
            local.0,
            "type",
            "veth",
            "peer",
            "name",
            peer.0,
            "netns",
            &peer_ns.name,
        ])?;
        self.ip(&["addr", "add", local.1, "dev", local.0])?;
        peer_ns.ip(&["addr", "add", peer.1, "dev", peer.0])?;
        self.ip(&["link", "set", local.0, "up"])?;
        peer_ns.ip(&["link", "set", peer.0, "up"])?;
        let local_mac = self.mac(local.0)?;
        let peer_mac = peer_ns.mac(peer.0)?;
        let addr = |cidr: &str| cidr.split('/').next().unwrap_or(cidr).to_owned();
        #[rustfmt::skip]
        self.ip(&["neigh", "replace", &addr(peer.1), "lladdr", &peer_mac, "dev", local.0, "nud", "permanent"])?;
        #[rustfmt::skip]
        peer_ns.ip(&["neigh", "replace", &addr(local.1), "lladdr", &local_mac, "dev", peer.0, "nud", "permanent"])?;
        Ok(())
    }

    /// The MAC address of an interface in this namespace.
    pub fn mac(&self, iface: &str) -> anyhow::Result<String> {
        let out = self.ip(&["-o", "link", "show", "dev", iface])?;
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "link/ether")
            .and_then(|_| words.next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no link/ether address for {iface} in `{}`", out.trim()))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: removing network namespace {}: {e:#}", self.name);
        }
    }
}

/// Runs `f` on a new thread that has entered `ns`, and returns its result.
/// Only that thread changes namespace; sockets, BPF links and interface
/// look-ups made in `f` belong to `ns`. A panic in `f` is passed on.
pub fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    let path = ns.path();
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            // Keep the test's name on the helper thread for skip markers.
            .name(
                std::thread::current()
                    .name()
                    .unwrap_or("in_netns")
                    .to_owned(),
            )
            .spawn_scoped(s, move || {
                enter(&path).unwrap_or_else(|e| panic!("{e:#}"));
                f()
            })
            .unwrap_or_else(|e| panic!("spawning a thread: {e}"));
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into the namespace at `path`.
pub(crate) fn enter(path: &PathBuf) -> anyhow::Result<()> {
    let file = File::open(path)
        .map_err(|e| anyhow::anyhow!("opening namespace {}: {e}", path.display()))?;
    // SAFETY: setns on a valid fd; it changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
