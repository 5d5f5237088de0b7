//! The libvirt statistics backend against real libvirt: two private
//! session libvirtd daemons (tests/src/libvirtd.rs), a TCG guest (Debian's
//! cloud kernel, no root fs: it panics and idles, its memory stays), a real
//! live migration between them over loopback, started slow (1 MiB/s).
//! While it runs, vmbw reads the job statistics and raises the speed; the
//! measured transfer rate must follow.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use vmbw::libvirt::{JobOperation, LibvirtDomain};
use vmbw_tests::{libvirtd, libvirtd::Libvirtd, require, skip};

const MIB: u64 = 1 << 20;
const NAME: &str = "vmbw-libvirt-test";

fn guest_kernel() -> Result<PathBuf, String> {
    let cache = std::env::var_os("VMBW_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("vmbw")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vmbw")))
        .ok_or("no cache directory (HOME unset)")?;
    let k = cache.join("guest/vmlinuz");
    if k.exists() {
        Ok(k)
    } else {
        Err(format!(
            "{} missing (cargo xtask setup fetches it)",
            k.display()
        ))
    }
}

fn domain_xml(kernel: &std::path::Path, serial: &std::path::Path) -> String {
    format!(
        "<domain type='qemu'>
  <name>{NAME}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{}</kernel>
    <cmdline>console=ttyS0 panic=0</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>",
        kernel.display(),
        serial.display()
    )
}

/// Polls until `f` gives `Some` (or 30 s pass).
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn job_statistics_and_speed_control_during_a_real_migration() {
    require!(libvirtd::available());
    let kernel = match guest_kernel() {
        Ok(k) => k,
        Err(reason) => {
            skip(&reason);
            return;
        }
    };
    let src = Libvirtd::start().expect("source libvirtd");
    let dst = Libvirtd::start().expect("target libvirtd");
    let kernel = libvirtd::give(&src, &kernel).expect("kernel");
    let xml = domain_xml(&kernel, &src.dir().join("serial.log"));

    let conn = virt::connect::Connect::open(Some(&src.uri())).expect("connect source");
    let dom = virt::domain::Domain::create_xml(&conn, &xml, 0).expect("start the guest");

    // Before a migration there is no job, and vmbw sees none.
    let backend = LibvirtDomain::connect(&src.uri(), NAME).expect("vmbw connects");
    assert_eq!(backend.job().expect("job stats"), None);
    assert!(LibvirtDomain::connect(&src.uri(), "no-such-domain").is_err());

    // Migrate in the background (virDomainMigrate blocks), at 1 MiB/s.
    let (src_uri, dst_uri) = (src.uri(), dst.uri());
    let migration = std::thread::spawn(move || -> Result<(), String> {
        let sconn = virt::connect::Connect::open(Some(&src_uri)).map_err(|e| e.to_string())?;
        let mut dconn = virt::connect::Connect::open(Some(&dst_uri)).map_err(|e| e.to_string())?;
        let d = virt::domain::Domain::lookup_by_name(&sconn, NAME).map_err(|e| e.to_string())?;
        let port = 49152 + (std::process::id() % 1000) as u16;
        let r = d
            .migrate(
                &dconn,
                virt::sys::VIR_MIGRATE_LIVE,
                None,
                Some(&format!("tcp://127.0.0.1:{port}")),
                1,
            )
            .map(drop)
            .map_err(|e| e.to_string());
        drop(d);
        let mut sconn = sconn;
        let _ = sconn.close();
        let _ = dconn.close();
        r
    });

    // The job appears; sample it twice, a few seconds apart.
    let first = wait("the migration job", || {
        backend
            .job()
            .ok()
            .flatten()
            .filter(|j| j.processed_bytes > 0 && j.iteration >= 1)
    });
    let t0 = Instant::now();
    assert_eq!(first.operation, Some(JobOperation::OutgoingMigration));
    assert_eq!(first.page_size, 4096);
    assert!(
        first.total_bytes >= 128 * MIB,
        "total {} covers the guest's RAM",
        first.total_bytes
    );
    assert_eq!(
        backend.max_bandwidth().expect("speed"),
        MIB,
        "started at 1 MiB/s"
    );
    std::thread::sleep(Duration::from_secs(3));
    let slow = backend.job().expect("stats").expect("still migrating");
    let slow_rate =
        (slow.processed_bytes - first.processed_bytes) as f64 / t0.elapsed().as_secs_f64();
    assert!(slow.remaining_bytes < first.remaining_bytes);
    assert!(slow.elapsed_ms > first.elapsed_ms);
    assert!(
        slow_rate < 1.6 * MIB as f64,
        "capped at 1 MiB/s, measured {slow_rate:.0} B/s"
    );
    eprintln!(
        "libvirt job at 1 MiB/s: iteration {}, processed {} B, remaining {} B, \
         memory_bps {} B/s, dirty {} pages/s; measured {slow_rate:.0} B/s",
        slow.iteration,
        slow.processed_bytes,
        slow.remaining_bytes,
        slow.bytes_per_sec,
        slow.dirty_pages_per_sec
    );

    // vmbw raises the cap (virDomainMigrateSetMaxSpeed): rounded up to
    // whole MiB/s, read back, and the transfer speeds up.
    let set = backend
        .set_max_bandwidth(8 * MIB - 1000)
        .expect("set speed");
    assert_eq!(set, 8 * MIB);
    assert_eq!(backend.max_bandwidth().expect("speed"), 8 * MIB);
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    match backend.job().expect("stats") {
        Some(fast) => {
            let fast_rate =
                (fast.processed_bytes - slow.processed_bytes) as f64 / t1.elapsed().as_secs_f64();
            eprintln!("after raising to 8 MiB/s: measured {fast_rate:.0} B/s");
            assert!(
                fast_rate > 3.0 * slow_rate,
                "faster after the change: {fast_rate:.0} vs {slow_rate:.0} B/s"
            );
        }
        None => {
            // Done already: the rest went much faster than 1 MiB/s would.
            eprintln!("migration finished within 1.5 s of raising the cap");
        }
    }

    migration
        .join()
        .expect("migration thread")
        .expect("the migration succeeded");
    // The guest now runs on the target; the source has no such domain.
    let on_target = LibvirtDomain::connect(&dst.uri(), NAME).expect("domain on target");
    assert_eq!(on_target.job().expect("stats"), None);
    drop(on_target);
    drop(backend);
    drop(dom);
    let mut conn = conn;
    let _ = conn.close();
    eprintln!(
        "source libvirtd pid {}, target pid {}",
        src.pid(),
        dst.pid()
    );
}
