//! The TCP connections a process owns, from `/proc`: its socket inodes
//! (`/proc/PID/fd/*` -> `socket:[INODE]`) matched against the TCP tables of
//! its network namespace (`/proc/PID/net/tcp`, `tcp6`). This is how the agent
//! learns a plain QEMU migration's 5-tuple once the migration starts: QEMU's
//! only TCP streams are its migration streams (QMP is a unix socket). Under
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
    let mut out: Vec<TcpConn> = established_rows(pid).into_iter().map(|r| r.conn).collect();
    out.sort();
    out.dedup();
    out
}

/// Bytes `pid`'s established TCP connections have written but the peer
/// has not acknowledged yet (the `tx_queue` column): what a new message
/// on those streams waits behind. None if `pid` has no such connection.
pub fn send_queue(pid: u32) -> Option<u64> {
    let rows = established_rows(pid);
    (!rows.is_empty()).then(|| rows.iter().map(|r| r.tx_queue).sum())
}

fn established_rows(pid: u32) -> Vec<Row> {
    let proc = Path::new("/proc").join(pid.to_string());
    let inodes = socket_inodes(&proc.join("fd"));
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

fn socket_inodes(fd_dir: &Path) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(fd_dir) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
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
