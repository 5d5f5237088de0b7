//! Running the real `vmbw agent` binary inside a test-made namespace: a
//! config written for it, its log in a file, its API on a unix socket (so
//! the test reaches it from any namespace), and a guard that kills it by pid
//! if the test ends early.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use vmbw::daemon::http::{Listen, get};

use crate::{BpffsMount, NetNs, in_netns};

/// What an agent test runs on: a host namespace whose `veth0`
/// (198.18.`subnet`.1/24) reaches a peer namespace (.2), a private bpffs,
/// and a scratch directory removed on drop (even after a failed assert).
pub struct TestHost {
    pub host: NetNs,
    pub peer: NetNs,
    pub bpffs: BpffsMount,
    pub dir: PathBuf,
    subnet: u8,
}

impl TestHost {
    /// `name` makes the scratch directory unique among the tests of one
    /// binary (they run in one process).
    pub fn new(name: &str, subnet: u8) -> anyhow::Result<TestHost> {
        let host = NetNs::new()?;
        let peer = NetNs::new()?;
        host.veth_to(
            ("veth0", &format!("198.18.{subnet}.1/24")),
            &peer,
            ("veth0", &format!("198.18.{subnet}.2/24")),
        )?;
        let bpffs = BpffsMount::new()?;
        let dir = std::env::temp_dir().join(format!("vmbw-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TestHost {
            host,
            peer,
            bpffs,
            dir,
            subnet,
        })
    }

    /// The peer's address.
    pub fn peer_ip(&self) -> String {
        format!("198.18.{}.2", self.subnet)
    }

    /// A minimal agent config named `name` in the scratch directory (pins
    /// under the bpffs, its own state directory), and its API socket.
    pub fn config(&self, name: &str) -> (PathBuf, PathBuf) {
        let (path, api) = (
            self.dir.join(format!("{name}.toml")),
            self.dir.join(format!("{name}.sock")),
        );
        write_minimal_config(
            &path,
            &self.bpffs.path().join(name),
            &self.dir.join(format!("{name}-state")),
            &api,
        );
        (path, api)
    }

    /// 256 KiB cross from the host to the peer over TCP within 5 s. (There
    /// is no `ping` on every machine; TCP is what migrations use anyway.)
    pub fn reaches_peer(&self) -> bool {
        const BYTES: usize = 256 * 1024;
        let peer = format!("{}:0", self.peer_ip());
        let Ok(listener) = in_netns(&self.peer, || TcpListener::bind(peer.as_str())) else {
            return false;
        };
        let Ok(addr) = listener.local_addr() else {
            return false;
        };
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut got = Vec::new();
            s.read_to_end(&mut got).ok()?;
            Some(got.len())
        });
        let sent = in_netns(&self.host, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .and_then(|mut s| {
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&[7u8; BYTES])?;
            s.shutdown(std::net::Shutdown::Write)
        });
        if sent.is_err() {
            // Unblock the accept.
            let _ = in_netns(&self.peer, || TcpStream::connect(addr));
        }
        let received = reader.join().ok().flatten();
        sent.is_ok() && received == Some(BYTES)
    }

    /// The root qdisc line of `veth0`.
    pub fn root_qdisc(&self) -> String {
        self.host
            .exec("tc", &["qdisc", "show", "dev", "veth0", "root"])
            .unwrap_or_default()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Environment variable naming the agent binary to test instead of the
/// one built next to the tests.
pub const BINARY_ENV: &str = "VMBW_AGENT_BIN";

/// The agent binary under test: `$VMBW_AGENT_BIN`, else the `vmbw` next
/// to the test executable (`cargo build -p vmbw` puts it there; `cargo
/// xtask test` builds it before the tests).
pub fn binary() -> Result<PathBuf, String> {
    // `cargo xtask deb --check` runs tests against the packaged binary.
    if let Some(bin) = std::env::var_os(BINARY_ENV) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("{BINARY_ENV}={} is not a file", bin.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // A test runs from target/<profile>/deps/, a binary from target/<profile>/.
    let dir = exe.parent().ok_or("no target directory")?;
    [Some(dir.join("vmbw")), dir.parent().map(|d| d.join("vmbw"))]
        .into_iter()
        .flatten()
        .find(|b| b.is_file())
        .ok_or_else(|| {
            format!(
                "vmbw is not built next to {}: run `cargo build -p vmbw` (cargo xtask test does)",
                dir.display()
            )
        })
}

/// A running agent.
/// Writes the smallest agent config at `path`: uplink `veth0` at
/// 100 Mbit/s, its pins under `pin_dir`, its state in `state_dir`, the API
/// on the unix socket `api`. No VMs.
pub fn write_minimal_config(path: &Path, pin_dir: &Path, state_dir: &Path, api: &Path) {
    std::fs::write(
        path,
        format!(
            "[[uplink]]\niface = \"veth0\"\nlink_mbit = 100.0\n\
             [datapath]\npin_dir = \"{}\"\n[shaping]\nstate_dir = \"{}\"\n\
             [api]\nlisten = \"unix:{}\"\n",
            pin_dir.display(),
            state_dir.display(),
            api.display(),
        ),
    )
    .expect("agent config");
}

pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
    pub api: Listen,
    pub config: PathBuf,
    ns: String,
}

impl Agent {
    /// Starts `vmbw agent -c config` in `ns`; waits until `/readyz` answers.
    pub fn start(
        ns: &NetNs,
        config: &Path,
        api_socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Agent> {
        Agent::start_as(ns, &[], config, api_socket, log)
    }

    /// Like [`Agent::start`], with `wrapper` (e.g. `setpriv …`) between
    /// `ip netns exec` and the agent.
    pub fn start_as(
        ns: &NetNs,
        wrapper: &[&str],
        config: &Path,
        api_socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Agent> {
        let mut agent = Agent::spawn_as(ns, wrapper, config, api_socket, log)?;
        agent.wait_ready()?;
        Ok(agent)
    }

    /// Starts the agent and returns at once (it may still be setting up).
    pub fn spawn_as(
        ns: &NetNs,
        wrapper: &[&str],
        config: &Path,
        api_socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Agent> {
        let bin = binary().map_err(anyhow::Error::msg)?;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(wrapper)
            .arg(&bin)
            .args(["agent", "-c"])
            .arg(config)
            // The monitor's debug lines too: every dirty-rate reading;
            // and the published ETA's inputs (control::policy).
            .env(
                "RUST_LOG",
                "info,vmbw::qemu::monitor=debug,vmbw::control::policy=debug",
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting the agent")?;
        Ok(Agent {
            child: Some(child),
            log: log.to_owned(),
            api: Listen::Unix(api_socket.to_owned()),
            config: config.to_owned(),
            ns: ns.name().to_owned(),
        })
    }

    /// Waits (20 s at most) until `/readyz` answers 200; an agent that
    /// exits meanwhile is an error with its log.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the agent exited with {status} during start-up:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not become ready in 20 s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of `ip netns exec`, which execs into the agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GET on the agent's API.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), get(&self.api, path)).await
        })??)
    }

    /// The VMs the agent follows (`/api/v1/vms`); empty while it does not
    /// answer.
    pub fn vms(&self) -> Vec<vmbw::api::VmStatus> {
        self.get_json(vmbw::api::VMS_PATH).unwrap_or_default()
    }

    /// The agent's flow table (`/api/v1/flows`); empty while it does not
    /// answer.
    pub fn flows(&self) -> Vec<vmbw::api::FlowStatus> {
        self.get_json(vmbw::api::FLOWS_PATH).unwrap_or_default()
    }

    /// A 200 answer's JSON body, parsed.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let (status, body) = self.get(path).ok()?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// The value of one metric line (`name{labels}`), if present.
    pub fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let (_, body) = self.get("/metrics")?;
        Ok(body.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        }))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit (up to `wait`); the exit code.
    pub fn signal(&mut self, signal: i32, wait: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            bail!("agent already stopped")
        };
        // SAFETY: kill(2) on the pid of a child we started and still own.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + wait;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the agent did not exit within {wait:?} after signal {signal} (in {})",
                    self.ns
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CPU seconds (user + system) and RSS bytes of the agent process.
    pub fn usage(&self) -> Option<(f64, u64)> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu =
            (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / hz;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((cpu, rss_kb * 1024))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
