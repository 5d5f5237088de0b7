//! The TCP connections a process owns. First asked of its sockets
//! themselves (each socket fd borrowed with pidfd_getfd(2), then
//! getsockname/getpeername, TCP_INFO and SIOCOUTQ: microseconds); where
//! that is not allowed, from `/proc`: its socket inodes (`/proc/PID/fd/*` ->
//! `socket:[INODE]`) matched against the TCP tables of its network
//! namespace (`/proc/PID/net/tcp`, `tcp6`; milliseconds, as each read walks
//! the kernel's whole established hash). This is how the agent learns a
//! plain QEMU migration's 5-tuple once the migration starts: QEMU's only
//! TCP streams are its migration streams (QMP is a unix socket). Under
//! KubeVirt the ports come from the VMI status instead.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// An established TCP connection, from the process's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpConn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The established TCP connections of `pid` (empty if it has none or is
/// gone). Errors reading one file skip that file.
pub fn established(pid: u32) -> Vec<TcpConn> {
    let mut out: Vec<TcpConn> = match tcp_by_fd(pid) {
        Some(socks) => socks.into_iter().map(|(c, _)| c).collect(),
        None => established_rows(pid).into_iter().map(|r| r.conn).collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// Bytes `pid`'s established TCP connections have written but the peer
/// has not acknowledged yet (the `tx_queue` column): what a new message
/// on those streams waits behind. None if `pid` has no such connection.
pub fn send_queue(pid: u32) -> Option<u64> {
    let queues: Vec<u64> = match tcp_by_fd(pid) {
        Some(socks) => socks.into_iter().map(|(_, q)| q).collect(),
        None => established_rows(pid).iter().map(|r| r.tx_queue).collect(),
    };
    (!queues.is_empty()).then(|| queues.iter().sum())
}

/// `pid`'s established TCP connections with their send queues, asked of
/// the sockets themselves: each socket fd is borrowed with pidfd_getfd(2)
/// (Linux 5.6; it needs the same ptrace access as reading another user's
/// `/proc/PID/fd`); an established TCP one gives its ends
/// (getsockname/getpeername) and ioctl(SIOCOUTQ), the bytes written and
/// not yet acknowledged (`tx_queue` in `/proc/PID/net/tcp`). Microseconds
/// per socket, where one read of the TCP tables walks the kernel's whole
/// established hash (3.3 ms on these machines: in the first version of
/// `cargo xtask bench agent-load`, 8 migrations watched every 100 ms took
/// 43% of a core that way). None
/// where the borrowing is refused: the caller reads the tables instead.
fn tcp_by_fd(pid: u32) -> Option<Vec<(TcpConn, u64)>> {
    let mut out = Vec::new();
    for_each_socket(pid, |sock| {
        if let Some(found) = established_tcp(sock) {
            out.push(found);
        }
    })?;
    Some(out)
}

/// Bounds what each of `pid`'s established TCP streams may hold, in flight
/// and unsent together, to about `bytes` (SO_SNDBUF; the kernel doubles it
/// for its bookkeeping and stops tuning the buffer itself): the writer then
/// blocks, or poll(2) calls the socket not writable, until the link has
/// taken what is queued. Nothing queued is dropped; the queue only drains
/// down to the bound. Returns each stream's buffer before, for
/// [`restore_send_buffers`]; None where the sockets cannot be borrowed (see
/// [`tcp_by_fd`]).
pub fn cap_send_buffers(pid: u32, bytes: u32) -> Option<Vec<(TcpConn, libc::c_int)>> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let mut before = Vec::new();
    for_each_socket(pid, |sock| {
        let Some((conn, _)) = established_tcp(sock) else {
            return;
        };
        let Some(was) = sockopt::<libc::c_int>(sock, libc::SOL_SOCKET, libc::SO_SNDBUF) else {
            return;
        };
        if set_send_buffer(sock, value) {
            before.push((conn, was));
        }
    })?;
    Some(before)
}

/// Gives `pid`'s streams back the send buffers [`cap_send_buffers`] found
/// (streams closed since are skipped). Returns how many were restored.
pub fn restore_send_buffers(pid: u32, before: &[(TcpConn, libc::c_int)]) -> usize {
    let mut restored = 0;
    let _ = for_each_socket(pid, |sock| {
        let Some((conn, _)) = established_tcp(sock) else {
            return;
        };
        if let Some((_, was)) = before.iter().find(|(c, _)| *c == conn)
            // getsockopt reports the doubled size the kernel keeps.
            && set_send_buffer(sock, was / 2)
        {
            restored += 1;
        }
    });
    restored
}

/// Sets SO_SNDBUF, as SO_SNDBUFFORCE first: that may exceed
/// `net.core.wmem_max` (208 KiB by default), which an autotuned buffer
/// being given back may well do; it needs CAP_NET_ADMIN, which the agent
/// has.
fn set_send_buffer(sock: i32, bytes: libc::c_int) -> bool {
    [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF]
        .into_iter()
        .any(|name| {
            // SAFETY: the kernel reads one int from `bytes`.
            let rc = unsafe {
                libc::setsockopt(
                    sock,
                    libc::SOL_SOCKET,
                    name,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            rc == 0
        })
}

/// Calls `each` with a borrowed copy of every socket fd of `pid`
/// (pidfd_getfd(2)): the copy shares the socket, so what is set on it holds
/// for `pid` too. None where the borrowing is refused; an fd closed
/// meanwhile is skipped.
fn for_each_socket(pid: u32, mut each: impl FnMut(i32)) -> Option<()> {
    let fds = socket_fds(pid)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return None;
    }
    let pidfd = pidfd as i32;
    let mut refused = false;
    for (fd, _) in fds {
        // SAFETY: pidfd_getfd duplicates `fd` of the process into ours, or
        // returns -1; the copy is closed below.
        let sock = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
        if sock < 0 {
            // Closed meanwhile: skip it. Not allowed: give up.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADF) {
                refused = true;
                break;
            }
            continue;
        }
        let sock = sock as i32;
        each(sock);
        // SAFETY: our own copy.
        unsafe { libc::close(sock) };
    }
    // SAFETY: our own pidfd.
    unsafe { libc::close(pidfd) };
    (!refused).then_some(())
}

fn sockaddr(sock: i32, peer: bool) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data, large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: the kernel writes at most `len` bytes into `storage`.
    let rc = unsafe {
        if peer {
            libc::getpeername(sock, p, &mut len)
        } else {
            libc::getsockname(sock, p, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { *(p as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(p as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            // /proc's tables show v4-mapped peers of a v6 socket as v6 too.
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// The ends and SIOCOUTQ of `sock` if it is an established TCP socket.
fn established_tcp(sock: i32) -> Option<(TcpConn, u64)> {
    let protocol: libc::c_int = sockopt(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    if protocol != libc::IPPROTO_TCP {
        return None;
    }
    let info: libc::tcp_info = sockopt(sock, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    if info.tcpi_state != ESTABLISHED {
        return None;
    }
    let outq = queued(sock)?;
    let conn = TcpConn {
        local: sockaddr(sock, false)?,
        remote: sockaddr(sock, true)?,
    };
    Some((conn, outq))
}

/// Bytes written to TCP socket `sock` and not yet acknowledged, sent or
/// not (ioctl SIOCOUTQ, `tx_queue` in `/proc/net/tcp`).
fn queued(sock: i32) -> Option<u64> {
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
    (unsafe { libc::ioctl(sock, libc::TIOCOUTQ, &mut outq) } == 0).then(|| outq.max(0) as u64)
}

/// getsockopt(2) into a `T`: an int, or a plain-data struct such as
/// `tcp_info` (the kernel fills at most its size).
fn sockopt<T: Copy>(sock: i32, level: i32, name: i32) -> Option<T> {
    // SAFETY: T is plain data (an int or a C struct); all-zero is valid.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    let rc =
        unsafe { libc::getsockopt(sock, level, name, (&mut value as *mut T).cast(), &mut len) };
    (rc == 0).then_some(value)
}

fn established_rows(pid: u32) -> Vec<Row> {
    let proc = Path::new("/proc").join(pid.to_string());
    let inodes: HashSet<u64> = socket_fds(pid)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, inode)| inode)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc.join("net").join(table)) {
            out.extend(
                parse_table(&text)
                    .into_iter()
                    .filter(|r| r.state == ESTABLISHED && inodes.contains(&r.inode)),
            );
        }
    }
    out
}

const ESTABLISHED: u8 = 0x01;

/// `pid`'s socket fds with their inodes (`/proc/PID/fd/N` ->
/// `socket:[INODE]`); None if its fd directory cannot be read.
fn socket_fds(pid: u32) -> Option<Vec<(i32, u64)>> {
    let dir = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")).ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                let t = target.to_string_lossy();
                let inode = t
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()?;
                Some((fd, inode))
            })
            .collect(),
    )
}

/// One line of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub inode: u64,
    pub state: u8,
    pub conn: TcpConn,
    /// Bytes written and not yet acknowledged.
    pub tx_queue: u64,
}

/// Parses a `/proc/net/tcp{,6}` table. Lines that do not parse are
/// skipped.
pub fn parse_table(text: &str) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let local = parse_endpoint(f[1])?;
            let remote = parse_endpoint(f[2])?;
            let state = u8::from_str_radix(f[3], 16).ok()?;
            let tx_queue = u64::from_str_radix(f[4].split(':').next()?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some(Row {
                inode,
                state,
                conn: TcpConn { local, remote },
                tx_queue,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4, address in host byte order words) or the 32-hex
/// IPv6 form, then the port in hex.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.swap_bytes(),
        )),
        32 => {
            // Four 32-bit words, each in host (little-endian) order.
            let mut bytes = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(&addr[w * 8..w * 8 + 8], 16).ok()?;
                bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests read this process's own sockets: one at a time.
    static OWN_SOCKETS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn the_sockets_own_send_queue_matches_the_tcp_table() {
        use std::io::Write as _;
        let _one = OWN_SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
        // A loopback stream whose reader never reads: once the receive
        // buffer is full, the rest waits in the send queue.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let mut tx =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_rx, _) = listener.accept().expect("accept");
        tx.set_nonblocking(true).expect("nonblocking");
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            if tx.write(&chunk).is_err() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let pid = std::process::id();
        let mut by_fd = tcp_by_fd(pid).expect("pidfd_getfd on our own process");
        let mut table: Vec<(TcpConn, u64)> = established_rows(pid)
            .into_iter()
            .map(|r| (r.conn, r.tx_queue))
            .collect();
        by_fd.sort();
        table.sort();
        assert!(
            by_fd
                .iter()
                .any(|(c, q)| c.local == tx.local_addr().expect("local") && *q > 0),
            "bytes wait in the send queue: {by_fd:?}"
        );
        assert_eq!(by_fd, table, "the sockets' own view = /proc/PID/net/tcp");
    }

    #[test]
    fn a_capped_stream_queues_little_and_gets_its_buffer_back() {
        use std::{io::Write as _, os::fd::AsRawFd as _};
        let _one = OWN_SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
        const CAP: u32 = 32 * 1024;
        let sndbuf = |sock: i32| sockopt::<libc::c_int>(sock, libc::SOL_SOCKET, libc::SO_SNDBUF);
        // A reader that never reads: once its buffer is full, everything
        // written waits in the writer's queue, as far as its buffer lets.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let mut tx =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_rx, _) = listener.accept().expect("accept");
        tx.set_nonblocking(true).expect("nonblocking");
        let fd = tx.as_raw_fd();
        // Room for 1 MiB queued (2 MiB kept), above any cap worth testing.
        assert!(set_send_buffer(fd, 1 << 20), "SO_SNDBUF");
        let roomy = sndbuf(fd).expect("SO_SNDBUF");
        let fill = |tx: &mut std::net::TcpStream| {
            let chunk = vec![0u8; 16 * 1024];
            // Until the socket says "full", twice: the reader's buffer
            // takes what is in flight in between.
            for _ in 0..2 {
                while tx.write(&chunk).is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };

        let pid = std::process::id();
        let before = cap_send_buffers(pid, CAP).expect("pidfd_getfd on our own process");
        let ours = before
            .iter()
            .find(|(c, _)| c.local == tx.local_addr().expect("local"))
            .expect("our stream was capped");
        assert_eq!(ours.1, roomy, "what it had before");
        // Set through the borrowed copy, it holds on our own socket.
        assert_eq!(sndbuf(fd), Some(2 * CAP as libc::c_int));
        fill(&mut tx);
        let capped = queued(fd).expect("SIOCOUTQ");
        // The kernel checks the buffer before it fills each new segment,
        // so one more (64 KiB at most on loopback) may go in.
        let bound = 2 * u64::from(CAP) + 64 * 1024;
        assert!(capped <= bound, "capped: {capped} B queued");

        assert!(
            restore_send_buffers(pid, &before) >= 2,
            "both ends are ours"
        );
        assert_eq!(sndbuf(fd), Some(roomy));
        fill(&mut tx);
        let uncapped = queued(fd).expect("SIOCOUTQ");
        assert!(
            uncapped > bound,
            "given back its buffer, only {uncapped} B queued (capped: {capped})"
        );
        assert_eq!(cap_send_buffers(u32::MAX, CAP), None, "a missing pid");
    }

    #[test]
    fn parses_kernel_table_lines() {
        // Lines as the kernel prints them (127.0.0.1:8080 <-> 127.0.0.1:54321,
        // ESTABLISHED, inode 4242) and an IPv4-mapped IPv6 listener.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:D431 01 0001A000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n";
        let rows = parse_table(v4);
        assert_eq!(rows.len(), 1);
        let r = rows[0];
        assert_eq!((r.inode, r.state, r.tx_queue), (4242, ESTABLISHED, 0x1a000));
        assert_eq!(r.conn.local, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(r.conn.remote, "127.0.0.1:54321".parse().expect("addr"));
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let rows = parse_table(v6);
        assert_eq!(
            rows[0].conn.local,
            "127.0.0.1:8080".parse().expect("mapped v4")
        );
        assert_eq!(rows[0].state, 0x0a);
        assert!(parse_table("header\ngarbage line\n").is_empty());
    }

    #[test]
    fn finds_this_process_s_own_connection() {
        let _one = OWN_SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let conns = established(std::process::id());
        let want = TcpConn {
            local: client.local_addr().expect("local"),
            remote: client.peer_addr().expect("peer"),
        };
        assert!(conns.contains(&want), "{want:?} not in {conns:?}");
        assert!(
            established(u32::MAX).is_empty(),
            "a missing pid has no connections"
        );
        // Nothing written and unacknowledged: the queue is empty.
        assert_eq!(
            send_queue(std::process::id()).map(|q| q < 1 << 20),
            Some(true)
        );
        assert_eq!(send_queue(u32::MAX), None);
    }
}
