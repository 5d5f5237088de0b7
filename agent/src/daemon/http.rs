//! A small read-only HTTP/1.1 server for the status API and `/metrics`:
//! GET and HEAD only, one request per connection, bounded request size and
//! read time, on TCP or a unix socket. Enough for curl, Prometheus and the
//! debug CLI, without pulling a web framework into a host agent.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, UnixListener},
    sync::watch,
};

// Re-exported: the test harness (tests/src) reaches it here.
pub use crate::api::Listen;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn json(body: String) -> Response {
        Response {
            status: 200,
            content_type: "application/json",
            body,
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answers a GET for a path (query string included).
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding {0:?}")]
    Bind(Listen, #[source] std::io::Error),
}

/// A bound server; `run` serves until `shutdown` turns true.
pub enum Server {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Server {
    pub async fn bind(listen: &Listen) -> Result<Server, HttpError> {
        match listen {
            Listen::Tcp(addr) => TcpListener::bind(addr)
                .await
                .map(Server::Tcp)
                .map_err(|e| HttpError::Bind(listen.clone(), e)),
            Listen::Unix(path) => {
                // A stale socket of a previous run would make bind fail.
                if path.exists() {
                    let _ = std::fs::remove_file(path);
                }
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                UnixListener::bind(path)
                    .map(|l| Server::Unix(l, path.clone()))
                    .map_err(|e| HttpError::Bind(listen.clone(), e))
            }
        }
    }

    /// The bound TCP address (for port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Server::Tcp(l) => l.local_addr().ok(),
            Server::Unix(..) => None,
        }
    }

    pub async fn run(self, handler: Handler, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                accepted = accept(&self) => match accepted {
                    Ok(conn) => {
                        let h = handler.clone();
                        tokio::spawn(async move { serve_one(conn, h).await });
                    }
                    Err(e) => tracing::warn!(error = %crate::api::errors::chain(&e), "accepting an API connection"),
                },
            }
        }
        if let Server::Unix(_, path) = &self {
            let _ = std::fs::remove_file(path);
        }
    }
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

async fn accept(server: &Server) -> std::io::Result<Box<dyn Conn>> {
    Ok(match server {
        Server::Tcp(l) => Box::new(l.accept().await?.0),
        Server::Unix(l, _) => Box::new(l.accept().await?.0),
    })
}

async fn serve_one(mut conn: Box<dyn Conn>, handler: Handler) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut conn)).await {
        Err(_) => Some((Response::text(408, "request timeout\n"), false)),
        Ok(Err(r)) => Some((r, false)),
        Ok(Ok((method, path))) => match method.as_str() {
            "GET" => Some((handler(&path), false)),
            "HEAD" => Some((handler(&path), true)),
            _ => Some((Response::text(405, "only GET and HEAD\n"), false)),
        },
    };
    if let Some((r, head_only)) = response {
        let _ = write_response(&mut conn, &r, head_only).await;
    }
}

/// Reads the request head; returns (method, path) or the error response.
async fn read_head(conn: &mut Box<dyn Conn>) -> Result<(String, String), Response> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_HEAD {
            return Err(Response::text(431, "request head too large\n"));
        }
        match conn.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(Response::text(400, "read error\n")),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") && p.starts_with('/') => {
            Ok((m.to_owned(), p.to_owned()))
        }
        _ => Err(Response::text(400, "malformed request line\n")),
    }
}

async fn write_response(
    conn: &mut Box<dyn Conn>,
    r: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if !head_only {
        conn.write_all(r.body.as_bytes()).await?;
    }
    conn.shutdown().await
}

/// A minimal client for the debug CLI and tests: GET `path` and return
/// (status, body).
pub async fn get(listen: &Listen, path: &str) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: vmbw\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    match listen {
        Listen::Tcp(addr) => {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(request.as_bytes()).await?;
            s.read_to_end(&mut raw).await?;
        }
        Listen::Unix(p) => {
            let mut s = tokio::net::UnixStream::connect(p).await?;
            s.write_all(request.as_bytes()).await?;
            s.read_to_end(&mut raw).await?;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line")
        })?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> Handler {
        Arc::new(|path: &str| match path {
            "/hello" => Response::text(200, "hi\n"),
            "/json" => Response::json("{\"a\":1}".into()),
            _ => Response::text(404, "not found\n"),
        })
    }

    async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_routes_and_rejects_bad_requests() {
        let server = Server::bind(&"127.0.0.1:0".parse().expect("listen"))
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(server.run(handler(), rx));
        let l = Listen::Tcp(addr);
        assert_eq!(get(&l, "/hello").await.expect("get"), (200, "hi\n".into()));
        assert_eq!(get(&l, "/json").await.expect("get").1, "{\"a\":1}");
        assert_eq!(get(&l, "/nope").await.expect("get").0, 404);
        assert!(
            raw(addr, b"POST /hello HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        assert!(
            raw(addr, b"garbage\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 400")
        );
        let huge = format!("GET /hello HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(raw(addr, huge.as_bytes()).await.starts_with("HTTP/1.1 431"));
        let head = raw(addr, b"HEAD /hello HTTP/1.1\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head:?}"
        );
        stop.send(true).expect("stop");
        task.await.expect("server stops");
    }

    #[tokio::test]
    async fn serves_on_a_unix_socket_and_removes_it() {
        let path = std::env::temp_dir().join(format!("vmbw-http-test-{}.sock", std::process::id()));
        let listen = Listen::Unix(path.clone());
        let server = Server::bind(&listen).await.expect("bind");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(server.run(handler(), rx));
        assert_eq!(get(&listen, "/hello").await.expect("get").0, 200);
        stop.send(true).expect("stop");
        task.await.expect("stops");
        assert!(!path.exists(), "socket removed on shutdown");
    }
}
