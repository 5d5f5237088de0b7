//! The QMP client against a scripted fake server on a unix socket: replies
//! matched by id, events, and every way a peer can misbehave (bad JSON, a
//! message cut off, a closed socket, silence, replies to nothing). These
//! test our protocol handling; the real-QEMU tests are in `vmbw-tests`.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    task::JoinHandle,
};

use super::qmp::{Qmp, QmpError, QmpOptions};

use super::fake_qmp::{GREETING, SocketFile, socket_path};

/// The fake QEMU's side of one connection.
struct Peer {
    lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    out: tokio::net::unix::OwnedWriteHalf,
}

impl Peer {
    async fn send(&mut self, text: &str) {
        self.out
            .write_all(text.as_bytes())
            .await
            .expect("peer write");
    }

    async fn sendln(&mut self, text: &str) {
        self.send(&format!("{text}\n")).await;
    }

    /// Reads the next command; returns (name, id).
    async fn recv(&mut self) -> (String, Value) {
        let mut line = String::new();
        self.lines.read_line(&mut line).await.expect("peer read");
        let v: Value = serde_json::from_str(&line).expect("client sent JSON");
        (
            v["execute"].as_str().unwrap_or_default().to_owned(),
            v["id"].clone(),
        )
    }

    /// Greets and answers qmp_capabilities.
    async fn handshake(&mut self) {
        self.sendln(GREETING).await;
        let (cmd, id) = self.recv().await;
        assert_eq!(cmd, "qmp_capabilities");
        self.sendln(&json!({"return": {}, "id": id}).to_string())
            .await;
    }
}

/// Serves `connections` connections on a fresh socket, each with `script`.
fn serve<F, Fut>(connections: usize, script: F) -> (SocketFile, JoinHandle<()>)
where
    F: Fn(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let path = socket_path();
    let listener = UnixListener::bind(&*path).expect("bind fake QMP socket");
    let task = tokio::spawn(async move {
        for _ in 0..connections {
            let (stream, _) = listener.accept().await.expect("accept");
            let (r, w) = stream.into_split();
            script(Peer {
                lines: BufReader::new(r),
                out: w,
            })
            .await;
        }
    });
    (path, task)
}

fn opts() -> QmpOptions {
    QmpOptions {
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(300),
        max_message: 4096,
    }
}

async fn connect(path: &SocketFile) -> Result<Qmp, QmpError> {
    Qmp::connect(&**path, opts()).await
}

#[tokio::test]
async fn replies_match_ids_and_events_are_queued() {
    let (path, server) = serve(1, |mut p| async move {
        p.handshake().await;
        let (cmd, id) = p.recv().await;
        assert_eq!(cmd, "query-status");
        // An event before the reply, a reply with fields we do not know.
        p.sendln(r#"{"timestamp": {"seconds": 100, "microseconds": 500000}, "event": "MIGRATION_PASS", "data": {"pass": 2}}"#).await;
        p.sendln(&json!({"return": {"status": "running", "running": true, "singlestep": false, "new": [1]}, "id": id}).to_string()).await;
        let (cmd, id) = p.recv().await;
        assert_eq!(cmd, "migrate-set-parameters");
        p.sendln(
            &json!({"id": id, "error": {"class": "GenericError", "desc": "no way"}}).to_string(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let mut q = connect(&path).await.expect("connects");
    assert_eq!(q.version().map(|v| v.qemu.minor), Some(2));
    let st = q.query_status().await.expect("status");
    assert!(st.running);
    let ev = q
        .next_event(Duration::from_millis(100))
        .await
        .expect("connection alive")
        .expect("an event");
    assert_eq!(ev.migration_pass(), Some(2));
    assert_eq!(ev.timestamp, 100.5);
    match q.set_max_bandwidth(1000).await {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(command, "migrate-set-parameters");
            assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "no way"));
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    assert_eq!(
        q.next_event(Duration::from_millis(10))
            .await
            .expect("alive"),
        None
    );
    server.await.expect("server");
}

#[tokio::test]
async fn malformed_json_ends_the_connection_with_a_clear_error() {
    let (path, _server) = serve(1, |mut p| async move {
        p.handshake().await;
        let _ = p.recv().await;
        p.sendln(r#"{"return": {"status": "running",, }"#).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut q = connect(&path).await.expect("connects");
    let e = q.query_status().await.expect_err("malformed");
    assert!(matches!(e, QmpError::Malformed { .. }), "{e:?}");
    assert!(e.to_string().contains("malformed JSON"), "{e}");
    assert!(std::error::Error::source(&e).is_some());
    // Sticky: later calls fail the same way without waiting.
    let again = q.query_status().await.expect_err("still broken");
    assert!(matches!(again, QmpError::Malformed { .. }), "{again:?}");
}

#[tokio::test]
async fn a_message_cut_off_by_a_close_is_truncated() {
    let (path, _server) = serve(1, |mut p| async move {
        p.handshake().await;
        let _ = p.recv().await;
        p.send(r#"{"return": {"status": "runn"#).await;
        // Dropping the peer closes the socket mid-message.
    });
    let mut q = connect(&path).await.expect("connects");
    let e = q.query_status().await.expect_err("truncated");
    assert!(matches!(e, QmpError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("runn"), "{e}");
}

#[tokio::test]
async fn a_closed_socket_is_closed_not_a_hang() {
    let (path, _server) = serve(1, |mut p| async move {
        p.handshake().await;
    });
    let mut q = connect(&path).await.expect("connects");
    let e = q.query_migrate().await.expect_err("closed");
    assert!(matches!(e, QmpError::Closed { .. }), "{e:?}");
    assert!(e.is_connection_lost());
    let e = q
        .next_event(Duration::from_secs(5))
        .await
        .expect_err("closed");
    assert!(matches!(e, QmpError::Closed { .. }), "{e:?}");
}

#[tokio::test]
async fn silence_is_a_timeout_and_a_late_reply_is_dropped() {
    let (path, _server) = serve(1, |mut p| async move {
        p.handshake().await;
        let (_, first) = p.recv().await;
        // Answer the first command only after the client gave up on it.
        let (_, second) = p.recv().await;
        p.sendln(
            &json!({"return": {"status": "paused", "running": false}, "id": first}).to_string(),
        )
        .await;
        p.sendln(
            &json!({"return": {"status": "running", "running": true}, "id": second}).to_string(),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut q = connect(&path).await.expect("connects");
    let started = std::time::Instant::now();
    let e = q.query_status().await.expect_err("times out");
    assert!(matches!(e, QmpError::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let st = q.query_status().await.expect("second command");
    assert_eq!(st.status, "running");
}

#[tokio::test]
async fn a_reply_to_a_command_never_sent_is_unexpected() {
    let (path, _server) = serve(1, |mut p| async move {
        p.handshake().await;
        let _ = p.recv().await;
        p.sendln(r#"{"return": {}, "id": 999}"#).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut q = connect(&path).await.expect("connects");
    let e = q.query_status().await.expect_err("unexpected");
    assert!(matches!(e, QmpError::Unexpected { .. }), "{e:?}");
    assert!(e.to_string().contains("id 999"), "{e}");
}

#[tokio::test]
async fn messages_that_are_not_replies_or_events_are_rejected() {
    for bad in [r#"[1, 2]"#, r#"{"hello": 1}"#, r#"{"event": 5}"#, GREETING] {
        let (path, _server) = serve(1, move |mut p| async move {
            p.handshake().await;
            let _ = p.recv().await;
            p.sendln(bad).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let mut q = connect(&path).await.expect("connects");
        let e = q.query_status().await.expect_err("rejected");
        assert!(matches!(e, QmpError::Unexpected { .. }), "{bad}: {e:?}");
    }
}

#[tokio::test]
async fn a_reply_of_the_wrong_shape_is_a_decode_error() {
    let (path, _server) = serve(1, |mut p| async move {
        p.handshake().await;
        let (_, id) = p.recv().await;
        p.sendln(&json!({"return": {"status": 7}, "id": id}).to_string())
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut q = connect(&path).await.expect("connects");
    let e = q.query_status().await.expect_err("decode");
    assert!(matches!(e, QmpError::Decode { .. }), "{e:?}");
    assert!(!e.is_connection_lost());
}

#[tokio::test]
async fn greeting_problems() {
    let missing = socket_path();
    let e = connect(&missing).await.expect_err("no socket");
    assert!(matches!(e, QmpError::Connect { .. }), "{e:?}");

    let (path, _s) = serve(1, |mut p| async move {
        p.sendln(r#"{"return": {}}"#).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = connect(&path).await.expect_err("no greeting");
    assert!(matches!(e, QmpError::NoGreeting { .. }), "{e:?}");

    let (path, _s) = serve(1, |p| async move {
        let _open = p; // keep the socket open, say nothing
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let e = connect(&path).await.expect_err("silent");
    assert!(matches!(e, QmpError::Timeout { .. }), "{e:?}");

    let (path, _s) = serve(1, |mut p| async move {
        p.sendln(&format!(
            r#"{{"QMP": {{"pad": "{}"}}}}"#,
            "x".repeat(10_000)
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = connect(&path).await.expect_err("too long");
    assert!(matches!(e, QmpError::TooLong { limit: 4096, .. }), "{e:?}");
}

#[tokio::test]
async fn reconnect_after_the_peer_closed() {
    let (path, server) = serve(2, |mut p| async move {
        p.handshake().await;
        let (_, id) = p.recv().await;
        p.sendln(&json!({"return": {"status": "running", "running": true}, "id": id}).to_string())
            .await;
    });
    let mut q = connect(&path).await.expect("connects");
    q.query_status().await.expect("first connection");
    let e = q.query_status().await.expect_err("peer closed");
    assert!(e.is_connection_lost(), "{e:?}");
    q.reconnect().await.expect("reconnects");
    q.query_status().await.expect("second connection");
    server.await.expect("server");
}

#[tokio::test]
async fn blank_lines_are_skipped() {
    let (path, _server) = serve(1, |mut p| async move {
        p.send("\n\r\n").await;
        p.handshake().await;
        let (_, id) = p.recv().await;
        p.send(&format!(
            "\n{}\r\n",
            json!({"return": {"status": "running", "running": true}, "id": id})
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut q = connect(&path).await.expect("connects");
    q.query_status().await.expect("status");
}

#[tokio::test]
async fn reconnect_closes_the_old_connection_first() {
    // Like QEMU, the fake serves one client at a time: the first one gets
    // no reply (QEMU holding its lock) and is served until it hangs up;
    // only then is the second one greeted.
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = served.clone();
    let (path, task) = serve(2, move |mut p| {
        let first = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            p.handshake().await;
            let (cmd, id) = p.recv().await;
            assert_eq!(cmd, "query-status");
            if first {
                let mut rest = String::new();
                while p.lines.read_line(&mut rest).await.is_ok_and(|n| n > 0) {}
            } else {
                p.sendln(&json!({"return": {"status": "running"}, "id": id}).to_string())
                    .await;
            }
        }
    });
    let mut q = Qmp::connect(&*path, opts()).await.expect("connect");
    let e = q.execute("query-status", None).await.expect_err("no reply");
    assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
    q.reconnect()
        .await
        .expect("the second connection is greeted");
    let v = q.execute("query-status", None).await.expect("reply");
    assert_eq!(v["status"], "running");
    task.await.expect("fake server");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
}
