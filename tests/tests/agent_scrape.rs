//! The agent as an operator meets it without a migration: a real Prometheus
//! (Debian's package) scrapes it on loopback and a query through
//! Prometheus's HTTP API returns the agent's metric; a VM whose QMP socket
//! does not exist is reported clearly and retried; bad config files fail
//! with the key named; after SIGTERM nothing of vmbw is left in the
//! namespace.

use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use vmbw_tests::{BpffsMount, NetNs, agent, in_netns, privileged, require};

fn http_get_in(ns: &NetNs, port: u16, path: &str) -> Option<String> {
    in_netns(ns, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

fn prometheus() -> Result<(), String> {
    match Command::new("prometheus").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("Debian's prometheus package is missing (cargo xtask setup installs it)".into()),
    }
}

#[test]
fn prometheus_scrapes_the_agent_and_nothing_is_left_after_sigterm() {
    require!(privileged());
    require!(agent::binary());
    require!(prometheus());
    let host = NetNs::new().expect("namespace");
    let peer = NetNs::new().expect("peer");
    host.veth_to(
        ("veth0", "198.18.20.1/24"),
        &peer,
        ("veth0", "198.18.20.2/24"),
    )
    .expect("veth");
    let bpffs = BpffsMount::new().expect("bpffs");
    let dir = std::env::temp_dir().join(format!("vmbw-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("vmbw.toml");
    let api_port = 19464;
    std::fs::write(
        &config,
        format!(
            "[[uplink]]\niface = \"veth0\"\nlink_mbit = 100.0\n\
             [datapath]\npin_dir = \"{}\"\n[shaping]\nstate_dir = \"{}\"\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [[vm]]\nname = \"ghost\"\nqmp = \"{}\"\n",
            bpffs.path().join("vmbw").display(),
            dir.join("state").display(),
            dir.join("no-such.qmp").display(),
        ),
    )
    .expect("config");
    // The harness talks to the API over a unix socket; this agent listens
    // on TCP in its namespace, so readiness is checked with a plain GET.
    let bin = agent::binary().expect("binary");
    let log = dir.join("agent.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", host.name()])
        .arg(&bin)
        .args(["agent", "-c"])
        .arg(&config)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(
            std::fs::File::options()
                .append(true)
                .open(&log)
                .expect("log"),
        )
        .spawn()
        .expect("agent");
    struct Kill(Option<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get_in(&host, api_port, "/readyz").is_none_or(|r| !r.starts_with("HTTP/1.1 200")) {
        assert!(
            Instant::now() < deadline,
            "agent not ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A real Prometheus in the same namespace, scraping every second.
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(prom_dir.join("data")).expect("prom dir");
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vmbw\n    static_configs:\n      - targets: ['127.0.0.1:{api_port}']\n"
        ),
    )
    .expect("prometheus config");
    let prom_port = 19090;
    let prom = Command::new("ip")
        .args(["netns", "exec", host.name(), "prometheus"])
        .arg(format!(
            "--config.file={}",
            prom_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(prom_dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus");
    let _prom = Kill(Some(prom));
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let r = http_get_in(
            &host,
            prom_port,
            "/api/v1/query?query=vmbw_control_loop_duration_seconds_count",
        );
        if let Some(r) = r.filter(|r| r.contains("\"result\":[{")) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the agent's metric:\n{}",
            std::fs::read_to_string(prom_dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(answer.contains("\"job\":\"vmbw\""), "{answer}");
    eprintln!(
        "Prometheus answered: {}",
        answer.lines().last().unwrap_or_default()
    );

    // The scrape itself: promtool's lint passes on it, and every family in
    // it is listed in docs/metrics.md.
    let scrape = http_get_in(&host, api_port, "/metrics").expect("scrape");
    let body = scrape
        .split_once("\r\n\r\n")
        .map_or(scrape.as_str(), |(_, b)| b);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let lint = promtool.wait_with_output().expect("promtool");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
    )
    .expect("docs/metrics.md");
    let families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
        .collect();
    assert!(families.len() > 5, "{body}");
    for f in &families {
        assert!(
            docs.contains(&format!("| `{f}` |")),
            "{f} is exported but not in docs/metrics.md"
        );
    }
    eprintln!(
        "promtool check metrics passed on {} families, all documented",
        families.len()
    );

    // The missing QMP socket: a clear warning naming it, and the agent keeps running.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("no-such.qmp") && text.contains("QEMU not reachable"),
        "{text}"
    );

    // SIGTERM: vmbw's qdisc, programs and pins are gone.
    let pid = child.id() as i32;
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().expect("agent exits");
    assert!(
        status.success(),
        "agent exit {status}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let qdiscs = host
        .exec("tc", &["qdisc", "show", "dev", "veth0"])
        .expect("tc");
    assert!(!qdiscs.contains("htb"), "{qdiscs}");
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    let filters = in_netns(&host, || {
        aya::programs::SchedClassifier::query_tcx("veth0", aya::programs::TcAttachType::Egress)
            .map(|r| r.1.len())
            .unwrap_or(0)
    });
    assert_eq!(filters, 0, "no TCX program left");
    assert!(!bpffs.path().join("vmbw").exists(), "no pins left");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_files_fail_with_the_key_named() {
    require!(agent::binary());
    let bin = agent::binary().expect("binary");
    let dir = std::env::temp_dir().join(format!("vmbw-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (text, key) in [
        ("[agent]\nmode = \"turbo\"\n", "agent.mode"),
        ("[nrac]\ngamma = 0.5\n", "nrac.gamma"),
        ("[agent]\npolicyy = \"nrac\"\n", "policyy"),
        ("[[uplink]]\niface = \"eth0\"\n", "link_mbit"),
        ("[api]\nlisten = \"everywhere\"\n", "api.listen"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = Command::new(&bin)
            .args(["agent", "-c"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {err}");
        assert!(
            err.contains(key) && err.contains("bad.toml"),
            "{text:?} -> {err}"
        );
    }
    let out = Command::new(&bin)
        .args(["agent", "-c", "/nonexistent/vmbw.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vmbw.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}
