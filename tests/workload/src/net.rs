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
    // Why a second fell short, from the sender's side: time spent in socket
    // writes (a full send buffer: the network is not draining) and the
    // longest oversleep past TICK (the vCPU was not running this thread).
    let (mut write_time, mut late) = (Duration::ZERO, Duration::ZERO);
    loop {
        credit += pacer.take();
        if greedy {
            // At most 64 writes between reports and duty-cycle checks.
            credit = credit.min(64 * args.packet as u64);
        }
        while credit >= args.packet as u64 {
            let writing = Instant::now();
            let result = send(&mut conn, sink, &payload);
            write_time += writing.elapsed();
            match result {
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
            if Instant::now() >= report_at {
                break;
            }
        }
        let now = Instant::now();
        if now >= report_at {
            // Over the interval since the last report: a write that blocked
            // can make it longer than --report-secs.
            let secs = now.duration_since(reported).as_secs_f64();
            println!(
                "vmbw-workload: t={:.2}s secs={secs:.2} sent_bytes={} rate_mbit={:.2} write_ms={} late_ms={} errors={}{}",
                now.duration_since(start).as_secs_f64(),
                sent,
                sent as f64 * 8.0 / 1e6 / secs,
                write_time.as_millis(),
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
            (write_time, late) = (Duration::ZERO, Duration::ZERO);
            reported = now;
            while report_at <= now {
                report_at += args.report;
            }
        }
        if !greedy || !pacer.is_on() {
            let sleeping = Instant::now();
            std::thread::sleep(TICK);
            late = late.max(sleeping.elapsed().saturating_sub(TICK));
        }
    }
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
