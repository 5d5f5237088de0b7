//! The network mode: a UDP or TCP stream to a sink, paced at `--rate-mbit`
//! or greedy (rate 0: as fast as the socket takes it, the way a bulk
//! transfer behaves), optionally in an on/off duty cycle. Errors (no route
//! yet, a TCP connection broken by the migration) are counted and retried,
//! never fatal: the guest must keep its behaviour through a migration.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use crate::{
    TICK,
    args::{Args, Proto},
    pace::Pacer,
};

enum Conn {
    Udp(UdpSocket),
    Tcp(Option<TcpStream>),
}

pub fn run(args: &Args) -> Result<(), String> {
    let sink = args.sink.ok_or("net mode needs --sink")?;
    let mut conn = match args.proto {
        Proto::Udp => Conn::Udp(
            UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("binding a UDP socket: {e}"))?,
        ),
        Proto::Tcp => Conn::Tcp(None),
    };
    if args.dirty_mbps > 0.0 {
        crate::memory::spawn(args);
    }
    crate::ready(args);
    let payload = vec![0x5au8; args.packet];
    let greedy = args.rate_mbit == 0.0;
    // Greedy: the pacer only keeps the duty cycle; a blocking TCP write (or
    // a full UDP socket buffer) sets the pace.
    let bytes_per_sec = if greedy {
        1e12
    } else {
        args.rate_mbit * 1e6 / 8.0
    };
    let mut pacer = Pacer::new(bytes_per_sec, args.app_on, args.app_off);
    let start = Instant::now();
    let (mut reported, mut report_at) = (start, start + args.report);
    let (mut sent, mut errors, mut credit) = (0u64, 0u64, 0u64);
    let mut last_error = String::new();
    // Why an interval fell short, from the sender's side, at no per-write
    // cost (a clock read per write is dear in a TCG guest): this thread's
    // CPU and run-queue time from the kernel, its sleeps timed here. The
    // rest of the interval it spent blocked in socket writes: the network
    // was not draining.
    let mut cpu_at_report = thread_schedstat();
    // The guest's TCP losses over the interval (system-wide counters;
    // the workload's stream is the guest's only TCP traffic): segments
    // sent again, and retransmission timeouts (the sender silent for at
    // least 200 ms).
    let mut tcp_at_report = tcp_losses();
    let (mut slept, mut late) = (Duration::ZERO, Duration::ZERO);
    loop {
        credit += pacer.take();
        if greedy {
            // At most 64 writes between reports and duty-cycle checks.
            credit = credit.min(64 * args.packet as u64);
        }
        let mut writes = 0u32;
        while credit >= args.packet as u64 {
            match send(&mut conn, sink, &payload) {
                Ok(()) => {
                    sent += payload.len() as u64;
                    credit -= payload.len() as u64;
                }
                Err(e) => {
                    errors += 1;
                    last_error = e;
                    credit = 0;
                    if matches!(conn, Conn::Tcp(_)) {
                        std::thread::sleep(Duration::from_millis(500)); // reconnect back-off
                    }
                }
            }
            // Blocked writes must not hold the report back: what is left
            // of the credit is sent right after it.
            writes += 1;
            if writes.is_multiple_of(16) && Instant::now() >= report_at {
                break;
            }
        }
        let now = Instant::now();
        if now >= report_at {
            // Over the interval since the last report: a write that blocked
            // can make it longer than --report-secs.
            let secs = now.duration_since(reported).as_secs_f64();
            let cpu = thread_schedstat();
            let tcp = tcp_losses();
            let (retrans, timeouts) = deltas(tcp, tcp_at_report, 1);
            let (run_ms, queued_ms) = deltas(cpu, cpu_at_report, 1_000_000);
            println!(
                "vmbw-workload: t={:.2}s secs={secs:.2} sent_bytes={} rate_mbit={:.2} cpu_ms={run_ms} runq_ms={queued_ms} sleep_ms={} late_ms={} retrans={retrans} rto={timeouts} errors={}{}",
                now.duration_since(start).as_secs_f64(),
                sent,
                sent as f64 * 8.0 / 1e6 / secs,
                slept.as_millis(),
                late.as_millis(),
                errors,
                if errors > 0 {
                    format!(" last_error=\"{last_error}\"")
                } else {
                    String::new()
                }
            );
            sent = 0;
            errors = 0;
            (slept, late) = (Duration::ZERO, Duration::ZERO);
            (reported, cpu_at_report, tcp_at_report) = (now, cpu, tcp);
            while report_at <= now {
                report_at += args.report;
            }
        }
        if !greedy || !pacer.is_on() {
            let sleeping = Instant::now();
            std::thread::sleep(TICK);
            let took = sleeping.elapsed();
            slept += took;
            late = late.max(took.saturating_sub(TICK));
        }
    }
}

/// How far a pair of counters moved since `then`, each divided by `unit`,
/// as printed: "-" where either reading is missing.
fn deltas(now: Option<(u64, u64)>, then: Option<(u64, u64)>, unit: u64) -> (String, String) {
    match (now, then) {
        (Some(now), Some(then)) => (
            (now.0.saturating_sub(then.0) / unit).to_string(),
            (now.1.saturating_sub(then.1) / unit).to_string(),
        ),
        _ => ("-".into(), "-".into()),
    }
}

/// This thread's time on a CPU and waiting in the run queue, ns
/// (`/proc/thread-self/schedstat`); None where the kernel does not keep it.
fn thread_schedstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

/// The guest's TCP `RetransSegs` (`/proc/net/snmp`) and `TCPTimeouts`
/// (`/proc/net/netstat`); None where either cannot be read.
fn tcp_losses() -> Option<(u64, u64)> {
    Some((
        proc_counter("/proc/net/snmp", "Tcp:", "RetransSegs")?,
        proc_counter("/proc/net/netstat", "TcpExt:", "TCPTimeouts")?,
    ))
}

/// One counter of a `/proc/net` table: a line of names after `prefix`,
/// then a line of values after it.
fn proc_counter(path: &str, prefix: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut rows = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (rows.next()?, rows.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

fn send(conn: &mut Conn, sink: SocketAddr, payload: &[u8]) -> Result<(), String> {
    match conn {
        Conn::Udp(sock) => sock
            .send_to(payload, sink)
            .map(drop)
            .map_err(|e| format!("udp send to {sink}: {e}")),
        Conn::Tcp(stream) => {
            if stream.is_none() {
                let s = TcpStream::connect_timeout(&sink, Duration::from_secs(2))
                    .map_err(|e| format!("tcp connect to {sink}: {e}"))?;
                *stream = Some(s);
            }
            let Some(s) = stream.as_mut() else {
                return Err("no TCP stream".into());
            };
            s.write_all(payload).map_err(|e| {
                *stream = None; // reconnect next time
                format!("tcp write to {sink}: {e}")
            })
        }
    }
}
