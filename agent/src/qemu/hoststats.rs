//! Host-side measurements of a VM: its vCPU threads' CPU time, byte
//! counters of its interfaces, and the resident size of its guest RAM.
//!
//! Interface counters are read from `/proc/<qemu pid>/net/dev`, which lists
//! the interfaces of the network namespace QEMU runs in; the agent may run
//! in another namespace (and `/sys/class/net` shows only the reader's own).
//! [`ByteCounter`] is the seam where the eBPF datapath's per-VM counters
//! replace interface counters.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum HostStatsError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("interface {iface} is not in {} (QEMU's network namespace)", path.display())]
    NoInterface { iface: String, path: PathBuf },
}

fn read(path: PathBuf) -> Result<(String, PathBuf), HostStatsError> {
    match fs::read_to_string(&path) {
        Ok(s) => Ok((s, path)),
        Err(source) => Err(HostStatsError::Read { path, source }),
    }
}

/// CPU time a thread has used, nanoseconds: `/proc/<tid>/schedstat`
/// (nanosecond resolution), else utime + stime from `/proc/<tid>/stat`.
pub fn thread_cpu_ns(tid: u32) -> Result<u64, HostStatsError> {
    if let Ok((text, path)) = read(PathBuf::from(format!("/proc/{tid}/schedstat"))) {
        return text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HostStatsError::Parse {
                path,
                detail: format!("no run time in `{}`", text.trim()),
            });
    }
    let (text, path) = read(PathBuf::from(format!("/proc/{tid}/stat")))?;
    let ticks = parse_stat_cpu_ticks(&text).ok_or_else(|| HostStatsError::Parse {
        path,
        detail: "no utime/stime fields".into(),
    })?;
    Ok(ticks.saturating_mul(1_000_000_000) / clock_ticks_per_sec())
}

/// utime + stime (fields 14 and 15) of a `/proc/*/stat` line. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted
/// after its last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// The process (thread group) a thread belongs to.
pub fn process_of_thread(tid: u32) -> Result<u32, HostStatsError> {
    let (text, path) = read(PathBuf::from(format!("/proc/{tid}/status")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| HostStatsError::Parse {
            path,
            detail: "no Tgid line".into(),
        })
}

/// A monotonically growing byte counter (both directions summed).
pub trait ByteCounter: Send {
    fn total_bytes(&mut self) -> Result<u64, HostStatsError>;
    /// What is counted, for trace headers and logs.
    fn describe(&self) -> String;
}

/// Received + transmitted bytes of one interface in the network namespace
/// of process `pid`.
#[derive(Clone, Debug)]
pub struct ProcNetDev {
    pid: u32,
    iface: String,
}

impl ProcNetDev {
    pub fn new(pid: u32, iface: impl Into<String>) -> Self {
        ProcNetDev {
            pid,
            iface: iface.into(),
        }
    }
}

impl ByteCounter for ProcNetDev {
    fn total_bytes(&mut self) -> Result<u64, HostStatsError> {
        let (text, path) = read(PathBuf::from(format!("/proc/{}/net/dev", self.pid)))?;
        match parse_net_dev(&text, &self.iface) {
            Some(Ok((rx, tx))) => Ok(rx.wrapping_add(tx)),
            Some(Err(detail)) => Err(HostStatsError::Parse { path, detail }),
            None => Err(HostStatsError::NoInterface {
                iface: self.iface.clone(),
                path,
            }),
        }
    }

    fn describe(&self) -> String {
        format!("interface {} (rx+tx bytes)", self.iface)
    }
}

/// Sums several counters (a VM with several taps).
pub struct SumCounter(pub Vec<Box<dyn ByteCounter>>);

impl ByteCounter for SumCounter {
    fn total_bytes(&mut self) -> Result<u64, HostStatsError> {
        let mut sum = 0u64;
        for c in &mut self.0 {
            sum = sum.wrapping_add(c.total_bytes()?);
        }
        Ok(sum)
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|c| c.describe())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// `(rx_bytes, tx_bytes)` of `iface` in a `/proc/net/dev` text; `None` if
/// the interface is not listed.
fn parse_net_dev(text: &str, iface: &str) -> Option<Result<(u64, u64), String>> {
    text.lines().skip(2).find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        let f: Vec<&str> = counters.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(match (num(0), num(8)) {
            (Some(rx), Some(tx)) => Ok((rx, tx)),
            _ => Err(format!("bad counters for {iface}: `{}`", line.trim())),
        })
    })
}

/// Resident bytes of the mapping that holds the guest's RAM: the mapping of
/// exactly `ram_bytes` in `/proc/<pid>/smaps`. `None` if there is none.
/// This is host-side memory use (pages the guest ever touched), the
/// fallback when the guest reports nothing through a balloon driver.
pub fn guest_ram_resident(pid: u32, ram_bytes: u64) -> Result<Option<u64>, HostStatsError> {
    let (text, _) = read(PathBuf::from(format!("/proc/{pid}/smaps")))?;
    Ok(parse_smaps_rss_of_size(&text, ram_bytes / 1024).map(|kb| kb * 1024))
}

/// How often [`GuestResident`] walks `/proc/<pid>/smaps` again.
const SMAPS_EVERY: Duration = Duration::from_secs(10);

/// The resident size of a guest's RAM, read cheaply and often. The exact
/// figure ([`guest_ram_resident`]) makes the kernel walk the page tables of
/// every mapping, which grows with the guest (and was a twentieth of the
/// agent's CPU with 8 migrations in `bench agent-load`, for small ones).
/// So it is taken every [`SMAPS_EVERY`], and in between the process's RSS
/// (`/proc/<pid>/statm`, a counter the kernel keeps) minus what the rest
/// of QEMU held at the last walk; QEMU's own memory moves slowly.
#[derive(Debug)]
pub struct GuestResident {
    pid: u32,
    ram_bytes: u64,
    /// Process RSS minus guest RAM's at the last walk, and when.
    rest: Option<(u64, Instant)>,
    /// When a walk last found no mapping of the guest's size: none is
    /// looked for again before [`SMAPS_EVERY`] (the zero-page estimate
    /// asks every second while a migration's bulk pass runs).
    missing: Option<Instant>,
}

impl GuestResident {
    pub fn new(pid: u32, ram_bytes: u64) -> GuestResident {
        GuestResident {
            pid,
            ram_bytes,
            rest: None,
            missing: None,
        }
    }

    /// The QEMU process it reads.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident bytes of guest RAM; `None` if no mapping has its size.
    pub fn read(&mut self) -> Result<Option<u64>, HostStatsError> {
        if let Some((rest, at)) = self.rest
            && at.elapsed() < SMAPS_EVERY
            && let Ok(rss) = process_rss(self.pid)
        {
            return Ok(Some(rss.saturating_sub(rest).min(self.ram_bytes)));
        }
        if self.missing.is_some_and(|at| at.elapsed() < SMAPS_EVERY) {
            return Ok(None);
        }
        let guest = guest_ram_resident(self.pid, self.ram_bytes)?;
        self.missing = guest.is_none().then(Instant::now);
        self.rest = match (guest, process_rss(self.pid)) {
            (Some(g), Ok(rss)) => Some((rss.saturating_sub(g), Instant::now())),
            _ => None,
        };
        Ok(guest)
    }
}

/// A process's resident set, bytes (`/proc/<pid>/statm`, second field, in
/// pages).
fn process_rss(pid: u32) -> Result<u64, HostStatsError> {
    let (text, path) = read(PathBuf::from(format!("/proc/{pid}/statm")))?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| HostStatsError::Parse {
            path,
            detail: format!("no resident field in `{}`", text.trim()),
        })?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(pages * page)
}

fn parse_smaps_rss_of_size(text: &str, size_kb: u64) -> Option<u64> {
    let mut in_match = false;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            in_match = v.trim().trim_end_matches("kB").trim().parse() == Ok(size_kb);
        } else if in_match && let Some(v) = line.strip_prefix("Rss:") {
            return v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_mapping_is_not_looked_for_every_time() {
        // No mapping of this odd size: found missing once, then not
        // walked for again until SMAPS_EVERY has passed.
        let mut r = GuestResident::new(std::process::id(), 987_654_321 * 1024);
        assert_eq!(r.read().expect("smaps"), None);
        let at = r.missing.expect("noted");
        assert_eq!(r.read().expect("cached"), None);
        assert_eq!(r.missing, Some(at));
    }

    /// A mapping of a size nothing else in this process has, touched a
    /// quarter then three quarters: the walk and the RSS-based reading in
    /// between both follow it (other test threads' allocations are the
    /// slack).
    #[test]
    fn guest_resident_follows_a_mapping_between_walks() {
        const SIZE: usize = 64 * 1024 * 1024 + 12 * 4096;
        const SLACK: f64 = 12.0 * 1024.0 * 1024.0;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let touch = |upto: usize| {
            for off in (0..upto).step_by(4096) {
                // SAFETY: within the mapping.
                unsafe { *(base as *mut u8).add(off) = 1 };
            }
        };
        let mut r = GuestResident::new(std::process::id(), SIZE as u64);
        touch(SIZE / 4);
        let walked = r.read().expect("smaps").expect("the mapping") as f64;
        assert!((walked - (SIZE / 4) as f64).abs() < SLACK, "{walked}");
        touch(3 * SIZE / 4);
        let counted = r.read().expect("statm").expect("the mapping") as f64;
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(base, SIZE) };
        assert!(
            (counted - (3 * SIZE / 4) as f64).abs() < SLACK,
            "{counted} after touching {}",
            3 * SIZE / 4
        );
    }

    #[test]
    fn stat_fields_after_a_tricky_command_name() {
        let stat = "4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn net_dev_counters() {
        let text = "Inter-|   Receive                            |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n    \
            lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
            tap0: 1000      10    0    0    0     0          0         0     2500      20    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text, "tap0"), Some(Ok((1000, 2500))));
        assert_eq!(parse_net_dev(text, "eth9"), None);
        assert!(matches!(
            parse_net_dev("h\nh\n  up0: 1 2\n", "up0"),
            Some(Err(_))
        ));
    }

    #[test]
    fn smaps_mapping_by_size() {
        let text = "7f00-7f10 rw-p 0 0 0\nSize:   64 kB\nRss:   8 kB\n\
                    7f34-7f3c rw-p 0 0 0\nSize:   131072 kB\nKernelPageSize: 4 kB\nRss:   118784 kB\n";
        assert_eq!(parse_smaps_rss_of_size(text, 131072), Some(118784));
        assert_eq!(parse_smaps_rss_of_size(text, 4096), None);
    }

    #[test]
    fn own_thread_cpu_time_is_readable() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(thread_cpu_ns(tid).is_ok());
        assert_eq!(process_of_thread(tid).expect("status"), std::process::id());
    }
}
