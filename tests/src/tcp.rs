//! Real TCP traffic for shaping measurements: a greedy sender in one
//! namespace, a counting receiver in another, and a recorder that samples
//! the receiver's byte count over time (goodput = application bytes).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{NetNs, in_netns};

/// Ethernet header bytes, which HTB counts with every packet.
pub const ETH_HLEN: u32 = 14;

/// The goodput (TCP payload bits per second) a shaper set to `rate_bps`
/// should deliver for full-sized segments: HTB charges whole frames, and
/// each frame of `mtu + 14` bytes (Ethernet 14, IPv4 20, TCP 20, TCP
/// options `mtu - 40 - mss`) carries `mss` bytes of payload.
pub fn expected_goodput(rate_bps: f64, mss: u32, mtu: u32) -> f64 {
    rate_bps * f64::from(mss) / f64::from(mtu + ETH_HLEN)
}

/// Accepts one TCP connection and counts the bytes it reads.
pub struct TcpSink {
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl TcpSink {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = in_netns(ns, || TcpListener::bind(addr))
            .with_context(|| format!("binding {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => return,
                }
            };
            if stream.set_nonblocking(false).is_err() {
                return;
            }
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Ok(TcpSink {
            bytes,
            thread: Some(thread),
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The running count of bytes received.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        // The reader ends when its sender closes; a sink whose sender never
        // came is left to its 10 s accept deadline.
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// Sends as fast as TCP lets it, until stopped.
pub struct TcpSource {
    stop: Arc<AtomicBool>,
    control: TcpStream,
    thread: Option<JoinHandle<()>>,
    error: Arc<Mutex<Option<std::io::Error>>>,
    sent: Arc<AtomicU64>,
    mss: u32,
}

impl TcpSource {
    /// Connects from inside `ns` to `to`. With `priority`, the socket's
    /// `SO_PRIORITY` (hence every packet's `skb->priority`) is set to it:
    /// an HTB class handle steers the flow into that class, exactly as the
    /// datapath's egress program will.
    pub fn start(ns: &NetNs, to: SocketAddr, priority: Option<u32>) -> anyhow::Result<Self> {
        let stream = in_netns(ns, || -> anyhow::Result<TcpStream> {
            let socket = socket_with_priority(priority)?;
            let stream = connect(socket, to)?;
            Ok(stream)
        })
        .with_context(|| format!("connecting to {to} from {}", ns.name()))?;
        let mss = tcp_maxseg(&stream)?;
        let control = stream.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, error2, sent2) = (stop.clone(), error.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut stream = stream;
            let buf = vec![0x5au8; 64 * 1024];
            while !stop2.load(Ordering::Relaxed) {
                match stream.write(&buf) {
                    Ok(n) => {
                        sent2.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if !stop2.load(Ordering::Relaxed)
                            && let Ok(mut slot) = error2.lock()
                        {
                            *slot = Some(e);
                        }
                        break;
                    }
                }
            }
        });
        Ok(TcpSource {
            stop,
            control,
            thread: Some(thread),
            error,
            sent,
            mss,
        })
    }

    /// The connection's MSS (TCP payload bytes per full segment).
    pub fn mss(&self) -> u32 {
        self.mss
    }

    /// The connection failed while sending (reset, timeout…).
    pub fn failed(&self) -> Option<String> {
        self.error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.to_string()))
    }

    /// Stops sending and closes the connection. Fails if the connection
    /// broke while it was sending.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.halt();
        if let Some(e) = self.failed() {
            bail!("the TCP connection broke while sending: {e}");
        }
        Ok(self.sent.load(Ordering::Relaxed))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.control.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        self.halt();
    }
}

fn socket_with_priority(priority: Option<u32>) -> anyhow::Result<i32> {
    // SAFETY: plain socket(2); the fd is owned by the TcpStream built below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    if let Some(p) = priority {
        let value = p as libc::c_int;
        // SAFETY: valid fd, pointer to a c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PRIORITY,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: fd is ours and not yet wrapped.
            unsafe { libc::close(fd) };
            bail!("SO_PRIORITY {p:#x}: {e}");
        }
    }
    Ok(fd)
}

fn connect(fd: i32, to: SocketAddr) -> anyhow::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: fd is a fresh TCP socket we own; the stream takes it over.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let SocketAddr::V4(v4) = to else {
        bail!("IPv4 only: {to}");
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid fd and a sockaddr_in of the given size.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("connect {to}: {}", std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn tcp_maxseg(stream: &TcpStream) -> anyhow::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, pointer to a c_int and its size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        bail!("TCP_MAXSEG: {}", std::io::Error::last_os_error());
    }
    Ok(value as u32)
}

/// Byte counts sampled over time.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// (time since the recording started, one count per counter)
    pub samples: Vec<(Duration, Vec<u64>)>,
}

impl Series {
    /// Average rate of counter `i` between `from` and `to` (seconds since
    /// the start), in bits per second, from the samples nearest to them.
    pub fn rate_bps(&self, i: usize, from: f64, to: f64) -> f64 {
        let at = |t: f64| {
            self.samples
                .iter()
                .min_by(|a, b| {
                    (a.0.as_secs_f64() - t)
                        .abs()
                        .total_cmp(&(b.0.as_secs_f64() - t).abs())
                })
                .map(|(d, v)| (d.as_secs_f64(), v[i]))
        };
        match (at(from), at(to)) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => (b1 - b0) as f64 * 8.0 / (t1 - t0),
            _ => 0.0,
        }
    }

    /// Seconds since the start of the last sample.
    pub fn end(&self) -> f64 {
        self.samples.last().map_or(0.0, |s| s.0.as_secs_f64())
    }
}

/// Samples `counters` every `interval` until `stop` returns true (called
/// after each sample with the elapsed time), starting from `start`.
pub fn record(
    counters: &[Arc<AtomicU64>],
    start: Instant,
    interval: Duration,
    mut stop: impl FnMut(Duration) -> bool,
) -> Series {
    let mut series = Series::default();
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        let values = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let elapsed = now.duration_since(start);
        series.samples.push((elapsed, values));
        if stop(elapsed) {
            return series;
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}
