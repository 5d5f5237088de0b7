//! An asynchronous QMP client over a unix socket.
//!
//! One background task reads QEMU's messages line by line and sorts them:
//! command replies go to the command waiting for them (matched by `id`),
//! events to an event queue. Commands are sent one at a time (`&mut self`),
//! so a reply is either the awaited one or a late reply to a command that
//! timed out before (dropped). Everything else QEMU could send (bad JSON, a
//! message cut off by a closed socket, a reply to a command never sent) ends
//! the connection with a typed error that every later call also returns;
//! [`Qmp::reconnect`] opens a new one. Every wait on QEMU has a timeout.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
    task::JoinHandle,
};

use super::types::{QmpEvent, VersionInfo};

/// Errors of the QMP client. Clone, so that the error that ended a
/// connection can be returned to every later call.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("QMP socket {}: I/O error while {during}", path.display())]
    Io {
        path: PathBuf,
        during: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("QMP socket {}: no {what} within {after:?}", path.display())]
    Timeout {
        path: PathBuf,
        what: String,
        after: Duration,
    },
    #[error("QMP socket {}: malformed JSON from QEMU: {excerpt}", path.display())]
    Malformed {
        path: PathBuf,
        excerpt: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("QMP socket {}: closed in the middle of a message: {excerpt}", path.display())]
    Truncated { path: PathBuf, excerpt: String },
    #[error("QMP socket {}: a message longer than {limit} bytes", path.display())]
    TooLong { path: PathBuf, limit: usize },
    #[error("QMP socket {}: closed by QEMU", path.display())]
    Closed { path: PathBuf },
    #[error("QMP socket {}: expected the QMP greeting, got {excerpt}", path.display())]
    NoGreeting { path: PathBuf, excerpt: String },
    #[error("QMP socket {}: unexpected message: {detail}", path.display())]
    Unexpected { path: PathBuf, detail: String },
    #[error("QEMU refused `{command}`: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QEMU's reply to `{command}` does not have the expected shape: {excerpt}")]
    Decode {
        command: String,
        excerpt: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
}

impl QmpError {
    /// Whether the connection is gone (a new one may work), as opposed to
    /// QEMU answering a command with an error.
    pub fn is_connection_lost(&self) -> bool {
        !matches!(self, QmpError::Command { .. } | QmpError::Decode { .. })
    }
}

/// Limits of a connection.
#[derive(Clone, Debug)]
pub struct QmpOptions {
    /// Connecting, the greeting and capability negotiation.
    pub connect_timeout: Duration,
    /// Each command, from sending it to its reply.
    pub command_timeout: Duration,
    /// The longest message accepted (`query-qmp-schema` is ~200 KiB).
    pub max_message: usize,
}

impl Default for QmpOptions {
    fn default() -> Self {
        QmpOptions {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            max_message: 8 << 20,
        }
    }
}

/// A QMP connection in command mode (capabilities negotiated).
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    opts: QmpOptions,
    version: Option<VersionInfo>,
    conn: Conn,
    next_id: u64,
}

#[derive(Debug)]
struct Conn {
    writer: OwnedWriteHalf,
    replies: mpsc::UnboundedReceiver<Reply>,
    events: mpsc::UnboundedReceiver<QmpEvent>,
    /// Why the reader stopped, once it has.
    ended: Arc<Mutex<Option<QmpError>>>,
    reader: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug)]
struct Reply {
    id: Option<Value>,
    result: Result<Value, (String, String)>,
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode.
    pub async fn connect(path: impl AsRef<Path>, opts: QmpOptions) -> Result<Qmp, QmpError> {
        let path = path.as_ref().to_path_buf();
        let (conn, version) = open(&path, &opts).await?;
        let mut qmp = Qmp {
            path,
            opts,
            version,
            conn,
            next_id: 1,
        };
        qmp.negotiate().await?;
        Ok(qmp)
    }

    /// Drops the current connection and opens a new one to the same
    /// socket. Events QEMU sent in between are lost.
    pub async fn reconnect(&mut self) -> Result<(), QmpError> {
        // A QMP socket serves one client at a time: QEMU greets the new
        // connection only once it has seen the old one close.
        self.conn.reader.abort();
        let _ = self.conn.writer.shutdown().await;
        let (conn, version) = open(&self.path, &self.opts).await?;
        self.conn = conn;
        self.version = version;
        self.negotiate().await
    }

    async fn negotiate(&mut self) -> Result<(), QmpError> {
        let timeout = self.opts.command_timeout;
        self.opts.command_timeout = self.opts.connect_timeout;
        let r = self.execute("qmp_capabilities", None).await;
        self.opts.command_timeout = timeout;
        r.map(drop)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> Option<&VersionInfo> {
        self.version.as_ref()
    }

    /// Sends a command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.fail_if_ended()?;
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = Map::new();
        msg.insert("execute".into(), json!(command));
        if let Some(args) = arguments {
            msg.insert("arguments".into(), args);
        }
        msg.insert("id".into(), json!(id));
        let mut line = Value::Object(msg).to_string();
        line.push('\n');
        tracing::trace!(qmp = %self.path.display(), %line, "send");

        let after = self.opts.command_timeout;
        let path = self.path.clone();
        let timeout = |what: &str| QmpError::Timeout {
            path: path.clone(),
            what: what.to_owned(),
            after,
        };
        match tokio::time::timeout(after, self.conn.writer.write_all(line.as_bytes())).await {
            Err(_) => return Err(timeout(&format!("room to send `{command}`"))),
            Ok(Err(e)) => {
                return Err(QmpError::Io {
                    path: self.path.clone(),
                    during: "sending a command",
                    source: Arc::new(e),
                });
            }
            Ok(Ok(())) => {}
        }
        let deadline = tokio::time::Instant::now() + after;
        loop {
            let reply = match tokio::time::timeout_at(deadline, self.conn.replies.recv()).await {
                Err(_) => return Err(timeout(&format!("reply to `{command}`"))),
                Ok(None) => return Err(self.ended_error()),
                Ok(Some(r)) => r,
            };
            match reply.id.as_ref().and_then(Value::as_u64) {
                Some(got) if got == id => {
                    return reply.result.map_err(|(class, desc)| QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    });
                }
                // A late reply to an earlier command that timed out.
                Some(got) if got < id => {
                    tracing::debug!(qmp = %self.path.display(), id = got, "dropping a late reply");
                }
                _ => {
                    return Err(QmpError::Unexpected {
                        path: self.path.clone(),
                        detail: format!(
                            "a reply with id {} while waiting for id {id} (`{command}`)",
                            reply
                                .id
                                .map_or_else(|| "(none)".to_owned(), |v| v.to_string())
                        ),
                    });
                }
            }
        }
    }

    /// Sends a command and decodes its `return` value as `T`.
    pub async fn execute_as<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let value = self.execute(command, arguments).await?;
        // Decoded from a reference, so that the excerpt is written only
        // for a reply that does not fit (every reply's was 1% of the agent).
        T::deserialize(&value).map_err(|e| QmpError::Decode {
            command: command.to_owned(),
            excerpt: excerpt(value.to_string().as_bytes()),
            source: Arc::new(e),
        })
    }

    /// Waits up to `timeout` for the next event; `Ok(None)` if none came.
    /// An error means the connection has ended.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<QmpEvent>, QmpError> {
        match tokio::time::timeout(timeout, self.conn.events.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(ev)) => Ok(Some(ev)),
            Ok(None) => Err(self.ended_error()),
        }
    }

    /// The next event already received, without waiting.
    pub fn try_event(&mut self) -> Option<QmpEvent> {
        self.conn.events.try_recv().ok()
    }

    fn fail_if_ended(&self) -> Result<(), QmpError> {
        match self.conn.ended.lock() {
            Ok(g) => g.clone().map_or(Ok(()), Err),
            Err(_) => Err(self.ended_error()),
        }
    }

    fn ended_error(&self) -> QmpError {
        self.conn
            .ended
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| QmpError::Closed {
                path: self.path.clone(),
            })
    }
}

/// Connects and reads the greeting; returns the connection with its reader
/// task running.
async fn open(path: &Path, opts: &QmpOptions) -> Result<(Conn, Option<VersionInfo>), QmpError> {
    let timeout = |what: &str| QmpError::Timeout {
        path: path.to_path_buf(),
        what: what.to_owned(),
        after: opts.connect_timeout,
    };
    let stream = match tokio::time::timeout(opts.connect_timeout, UnixStream::connect(path)).await {
        Err(_) => return Err(timeout("connection")),
        Ok(Err(e)) => {
            return Err(QmpError::Connect {
                path: path.to_path_buf(),
                source: Arc::new(e),
            });
        }
        Ok(Ok(s)) => s,
    };
    let (read, writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    let line = match tokio::time::timeout(
        opts.connect_timeout,
        read_message(&mut reader, opts.max_message, &mut buf, path),
    )
    .await
    {
        Err(_) => return Err(timeout("greeting")),
        Ok(r) => r?.ok_or_else(|| QmpError::Closed {
            path: path.to_path_buf(),
        })?,
    };
    let msg = parse(path, &line)?;
    let Some(greeting) = msg.get("QMP") else {
        return Err(QmpError::NoGreeting {
            path: path.to_path_buf(),
            excerpt: excerpt(&line),
        });
    };
    let version = greeting
        .get("version")
        .and_then(|v| serde_json::from_value(v.clone()).ok());

    let (reply_tx, replies) = mpsc::unbounded_channel();
    let (event_tx, events) = mpsc::unbounded_channel();
    let ended = Arc::new(Mutex::new(None));
    let reader = tokio::spawn(read_loop(
        reader,
        path.to_path_buf(),
        opts.max_message,
        reply_tx,
        event_tx,
        ended.clone(),
    ));
    Ok((
        Conn {
            writer,
            replies,
            events,
            ended,
            reader,
        },
        version,
    ))
}

/// Reads messages until the connection ends or misbehaves, and records why
/// it ended. Dropping the senders on return wakes whoever waits.
async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    path: PathBuf,
    max: usize,
    replies: mpsc::UnboundedSender<Reply>,
    events: mpsc::UnboundedSender<QmpEvent>,
    ended: Arc<Mutex<Option<QmpError>>>,
) {
    let mut buf = Vec::new();
    let why = loop {
        let line = match read_message(&mut reader, max, &mut buf, &path).await {
            Ok(Some(line)) => line,
            Ok(None) => break QmpError::Closed { path },
            Err(e) => break e,
        };
        tracing::trace!(qmp = %path.display(), line = %String::from_utf8_lossy(&line), "recv");
        match classify(&path, &line) {
            Ok(Message::Reply(r)) => {
                // The command may have given up waiting; that is fine.
                let _ = replies.send(r);
            }
            Ok(Message::Event(e)) => {
                let _ = events.send(e);
            }
            Err(e) => break e,
        }
    };
    tracing::debug!(qmp = %why, "QMP connection ended");
    if let Ok(mut g) = ended.lock() {
        *g = Some(why);
    }
}

enum Message {
    Reply(Reply),
    Event(QmpEvent),
}

/// A line classified as the client does; a successful reply's value, if it
/// is one (for the fuzz targets).
pub(crate) fn classify_line(path: &Path, line: &[u8]) -> Result<Option<Value>, QmpError> {
    Ok(match classify(path, line)? {
        Message::Reply(Reply { result: Ok(v), .. }) => Some(v),
        _ => None,
    })
}

fn classify(path: &Path, line: &[u8]) -> Result<Message, QmpError> {
    let mut msg = parse(path, line)?;
    let unexpected = |detail: String| QmpError::Unexpected {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(ret) = msg.remove("return") {
        return Ok(Message::Reply(Reply {
            id: msg.remove("id"),
            result: Ok(ret),
        }));
    }
    if let Some(err) = msg.remove("error") {
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or("(missing)")
                .to_owned()
        };
        return Ok(Message::Reply(Reply {
            id: msg.remove("id"),
            result: Err((field("class"), field("desc"))),
        }));
    }
    if let Some(name) = msg.get("event") {
        let name = name
            .as_str()
            .ok_or_else(|| unexpected(format!("an event whose name is not a string: {name}")))?
            .to_owned();
        let timestamp = msg
            .get("timestamp")
            .and_then(|t| {
                let s = t.get("seconds")?.as_f64()?;
                let us = t.get("microseconds")?.as_f64()?;
                Some(s + us / 1e6)
            })
            .ok_or_else(|| unexpected(format!("event {name} without a valid timestamp")))?;
        let data = msg.remove("data").unwrap_or(Value::Null);
        return Ok(Message::Event(QmpEvent {
            name,
            data,
            timestamp,
        }));
    }
    if msg.contains_key("QMP") {
        return Err(unexpected("a second greeting".into()));
    }
    Err(unexpected(format!(
        "neither a reply nor an event: {}",
        excerpt(line)
    )))
}

fn parse(path: &Path, line: &[u8]) -> Result<Map<String, Value>, QmpError> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(QmpError::Unexpected {
            path: path.to_path_buf(),
            detail: format!("a message that is not a JSON object: {}", excerpt(line)),
        }),
        Err(e) => Err(QmpError::Malformed {
            path: path.to_path_buf(),
            excerpt: excerpt(line),
            source: Arc::new(e),
        }),
    }
}

/// Reads one newline-terminated message (blank lines skipped). `Ok(None)`
/// at a clean end of stream; an end in the middle of a message is
/// `Truncated`.
async fn read_message<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
    path: &Path,
) -> Result<Option<Vec<u8>>, QmpError> {
    loop {
        buf.clear();
        loop {
            let available = reader.fill_buf().await.map_err(|e| QmpError::Io {
                path: path.to_path_buf(),
                during: "reading",
                source: Arc::new(e),
            })?;
            if available.is_empty() {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Err(QmpError::Truncated {
                    path: path.to_path_buf(),
                    excerpt: excerpt(buf),
                });
            }
            let (take, done) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            buf.extend_from_slice(&available[..take]);
            reader.consume(take);
            if buf.len() > max {
                return Err(QmpError::TooLong {
                    path: path.to_path_buf(),
                    limit: max,
                });
            }
            if done {
                break;
            }
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(std::mem::take(buf)));
        }
    }
}

/// The start of a message, for error texts.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 160;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.chars().count() <= MAX {
        format!("`{text}`")
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("`{cut}...` ({} bytes)", bytes.len())
    }
}
