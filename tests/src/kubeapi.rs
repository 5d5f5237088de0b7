//! A stand-in for the Kubernetes API server, on loopback, for the KubeVirt
//! watcher and `kubectl-vmbw` tests (no API server can run here). It
//! serves recorded object JSON (`tests/fixtures/kubevirt/`) the way the
//! API server does: list responses with a resourceVersion, chunked watch
//! streams of `ADDED`/`MODIFIED`/`DELETED` events, single-object GETs,
//! label/field-selector filtering of lists and of watches (as the API
//! server's watch cache does it: an object that stops matching the
//! selector is sent as `DELETED`, one that starts matching as `ADDED`),
//! and fixed responses for other
//! paths (the agents' API behind the pod proxy). Every request's path and
//! query is recorded so tests can check what a client asked for.
//!
//! It is the only mock in the test suite; everything it serves is a
//! recorded real object.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::broadcast,
    task::JoinHandle,
};

/// Reads a fixture from `tests/fixtures/kubevirt/`.
pub fn fixture(name: &str) -> anyhow::Result<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kubevirt")
        .join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    collection: String,
    kind: &'static str,
    object: Value,
    /// The object before a MODIFIED.
    previous: Option<Value>,
}

impl WatchEvent {
    /// What a watch with these selectors receives for this event, if
    /// anything.
    fn seen_through(
        &self,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Option<(&'static str, &Value)> {
        let now = matches(&self.object, labels, fields);
        match self.kind {
            "MODIFIED" => {
                let before = self
                    .previous
                    .as_ref()
                    .is_some_and(|p| matches(p, labels, fields));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", &self.object)),
                    (false, true) => Some(("ADDED", &self.object)),
                    (true, false) => Some(("DELETED", &self.object)),
                    (false, false) => None,
                }
            }
            kind => now.then_some((kind, &self.object)),
        }
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    /// collection path -> (list kind, objects by namespace/name)
    collections: BTreeMap<String, (String, BTreeMap<String, Value>)>,
    events: Vec<WatchEvent>,
    /// exact path -> (status, body)
    routes: BTreeMap<String, (u16, Value)>,
    requests: Vec<String>,
}

/// The fake API server. Dropping it stops it.
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    task: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_of(obj: &Value) -> String {
    let meta = &obj["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap_or("")
    )
}

impl FakeApi {
    /// Starts the server on 127.0.0.1 (a free port) in the current tokio
    /// runtime.
    pub async fn start() -> anyhow::Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (events, _) = broadcast::channel(256);
        let task = {
            let state = state.clone();
            let events = events.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let state = state.clone();
                    let events = events.clone();
                    tokio::spawn(async move {
                        let _ = serve(conn, state, events).await;
                    });
                }
            })
        };
        Ok(FakeApi {
            addr,
            state,
            events,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client pointed at this server (plain HTTP, no auth).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config()?)?)
    }

    /// The client configuration for this server, in namespace "default".
    pub fn config(&self) -> anyhow::Result<kube::Config> {
        let uri: http::Uri = self.url().parse()?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        Ok(config)
    }

    /// Declares a collection (e.g. `/apis/kubevirt.io/v1/virtualmachineinstances`)
    /// whose list responses have kind `list_kind`.
    pub fn collection(&self, path: &str, list_kind: &str) {
        let mut s = self.lock();
        s.collections
            .entry(path.to_owned())
            .or_insert_with(|| (list_kind.to_owned(), BTreeMap::new()));
    }

    /// Adds or replaces an object; watchers get ADDED or MODIFIED.
    pub fn apply(&self, collection: &str, mut object: Value) {
        let ev = {
            let mut s = self.lock();
            s.rv += 1;
            let rv = s.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let key = key_of(&object);
            let Some((_, objects)) = s.collections.get_mut(collection) else {
                panic!("unknown collection {collection}");
            };
            let previous = objects.insert(key, object.clone());
            let kind = if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let ev = WatchEvent {
                rv,
                collection: collection.to_owned(),
                kind,
                object,
                previous,
            };
            s.events.push(ev.clone());
            ev
        };
        let _ = self.events.send(ev);
    }

    /// Removes an object; watchers get DELETED.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let ev = {
            let mut s = self.lock();
            s.rv += 1;
            let rv = s.rv;
            let Some((_, objects)) = s.collections.get_mut(collection) else {
                panic!("unknown collection {collection}");
            };
            let Some(mut object) = objects.remove(&format!("{namespace}/{name}")) else {
                return;
            };
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let ev = WatchEvent {
                rv,
                collection: collection.to_owned(),
                kind: "DELETED",
                object,
                previous: None,
            };
            s.events.push(ev.clone());
            ev
        };
        let _ = self.events.send(ev);
    }

    /// A fixed answer for an exact path.
    pub fn route(&self, path: &str, status: u16, body: Value) {
        self.lock().routes.insert(path.to_owned(), (status, body));
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-only selectors: `a=b,c=d` against labels or `spec.nodeName`.
fn matches(obj: &Value, label_selector: Option<&str>, field_selector: Option<&str>) -> bool {
    let labels = &obj["metadata"]["labels"];
    let label_ok = label_selector.is_none_or(|sel| {
        sel.split(',').filter(|s| !s.is_empty()).all(|term| {
            term.split_once('=')
                .is_some_and(|(k, v)| labels[k].as_str() == Some(v))
        })
    });
    let field_ok = field_selector.is_none_or(|sel| {
        sel.split(',').filter(|s| !s.is_empty()).all(|term| {
            let Some((k, v)) = term.split_once('=') else {
                return false;
            };
            let mut cur = obj;
            for part in k.split('.') {
                cur = &cur[part];
            }
            cur.as_str() == Some(v)
        })
    });
    label_ok && field_ok
}

/// Splits `/apis/g/v/namespaces/ns/plural[/name]` or
/// `/api/v1/namespaces/ns/plural[/name]` into (cluster collection path,
/// namespace, name).
fn namespaced(path: &str) -> Option<(String, String, Option<String>)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match parts.first() {
        Some(&"api") => (parts.get(..2)?, parts.get(2..)?),
        Some(&"apis") => (parts.get(..3)?, parts.get(3..)?),
        _ => return None,
    };
    if rest.first() != Some(&"namespaces") || rest.len() < 3 || rest.len() > 4 {
        return None;
    }
    let collection = format!("/{}/{}", prefix.join("/"), rest[2]);
    Some((
        collection,
        rest[1].to_owned(),
        rest.get(3).map(|s| (*s).to_owned()),
    ))
}

async fn serve(
    conn: TcpStream,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
) -> anyhow::Result<()> {
    let mut conn = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if conn.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        loop {
            let mut header = String::new();
            if conn.read_line(&mut header).await? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let (path, query) = (path.to_owned(), query.to_owned());
        let watch = matches!(query_param(&query, "watch"), Some("true" | "1"));
        let label_selector = query_param(&query, "labelSelector").map(percent_decode);
        let field_selector = query_param(&query, "fieldSelector").map(percent_decode);
        let mut rx = events.subscribe();
        let (status, body, backlog, since) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.requests.push(target.clone());
            let single = namespaced(&path);
            let collection = match &single {
                Some((c, _, _)) => c.clone(),
                None => path.clone(),
            };
            if let Some((status, body)) = s.routes.get(&path) {
                (*status, body.clone(), Vec::new(), 0)
            } else if let Some((list_kind, objects)) = s.collections.get(&collection) {
                let ns_filter = single.as_ref().map(|(_, ns, _)| ns.clone());
                let in_ns = |o: &&Value| {
                    ns_filter
                        .as_deref()
                        .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
                };
                match single.as_ref().and_then(|(_, _, name)| name.clone()) {
                    Some(name) => {
                        let key = format!("{}/{name}", ns_filter.unwrap_or_default());
                        match objects.get(&key) {
                            Some(o) => (200, o.clone(), Vec::new(), 0),
                            None => (404, not_found(&key), Vec::new(), 0),
                        }
                    }
                    None if watch => {
                        let since: u64 = query_param(&query, "resourceVersion")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let backlog: Vec<WatchEvent> = s
                            .events
                            .iter()
                            .filter(|e| e.rv > since && e.collection == collection)
                            .cloned()
                            .collect();
                        (200, Value::Null, backlog, since)
                    }
                    None => {
                        let items: Vec<Value> = objects
                            .values()
                            .filter(in_ns)
                            .filter(|o| {
                                matches(o, label_selector.as_deref(), field_selector.as_deref())
                            })
                            .cloned()
                            .collect();
                        let body = json!({
                            "apiVersion": "v1",
                            "kind": list_kind,
                            "metadata": {"resourceVersion": s.rv.to_string()},
                            "items": items,
                        });
                        (200, body, Vec::new(), 0)
                    }
                }
            } else {
                (404, not_found(&path), Vec::new(), 0)
            }
        };
        let stream = conn.get_mut();
        if !(watch && status == 200 && body.is_null()) {
            let bytes = serde_json::to_vec(&body)?;
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                if status == 200 { "OK" } else { "Not Found" },
                bytes.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&bytes).await?;
            stream.flush().await?;
            continue;
        }
        // A watch: the backlog, then live events, until the client goes
        // away or a minute passes (clients re-watch, like with the real
        // server's timeouts).
        let collection = namespaced(&path).map_or(path.clone(), |(c, _, _)| c);
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await?;
        let mut last = since;
        let (labels, fields) = (label_selector.as_deref(), field_selector.as_deref());
        for ev in backlog {
            last = ev.rv;
            write_event(stream, &ev, labels, fields).await?;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                ev = rx.recv() => match ev {
                    Ok(ev) if ev.collection == collection && ev.rv > last => {
                        last = ev.rv;
                        write_event(stream, &ev, labels, fields).await?;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        stream.write_all(b"0\r\n\r\n").await?;
        return Ok(());
    }
}

async fn write_event(
    stream: &mut TcpStream,
    ev: &WatchEvent,
    labels: Option<&str>,
    fields: Option<&str>,
) -> anyhow::Result<()> {
    let Some((kind, object)) = ev.seen_through(labels, fields) else {
        return Ok(());
    };
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))?;
    line.push(b'\n');
    stream
        .write_all(format!("{:x}\r\n", line.len()).as_bytes())
        .await?;
    stream.write_all(&line).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await?;
    Ok(())
}

fn not_found(what: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{what} not found"),
        "reason": "NotFound",
        "code": 404
    })
}
