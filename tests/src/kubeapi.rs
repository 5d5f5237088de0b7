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
//! It is as strict as a real one where a client could get away with less:
//! - a watch from a resourceVersion older than the last compaction gets a
//!   `410 Expired` ERROR event ([`FakeApi::expire_watches`]), so clients
//!   must relist;
//! - watches that allow bookmarks get BOOKMARK events;
//! - field selectors on `kubevirt.io` resources other than `metadata.name`
//!   and `metadata.namespace` are refused (400), as for any custom
//!   resource without `selectableFields` (KubeVirt declares none);
//! - with [`FakeApi::enforce_cluster_role`], any verb or resource outside a
//!   ClusterRole (read from its YAML) is answered 403;
//! - an object that stops matching a watch's selector is sent as DELETED
//!   with its previous content (the watch cache's rule).
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
    /// `previous` at this event's resourceVersion: what a watch whose
    /// selector the object stopped matching receives as DELETED.
    deleted_as: Option<Value>,
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
                    // The watch cache sends the object as it was, at
                    // this event's resourceVersion.
                    (true, false) => Some(("DELETED", self.deleted_as.as_ref()?)),
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
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted: u64,
    /// The ClusterRole's rules, when enforced.
    rbac: Option<Vec<Rule>>,
}

/// One rule of a ClusterRole.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

impl Rule {
    fn allows(&self, group: &str, resource: &str, verb: &str) -> bool {
        let any = |list: &[String], x: &str| list.iter().any(|v| v == x || v == "*");
        any(&self.api_groups, group) && any(&self.resources, resource) && any(&self.verbs, verb)
    }
}

/// The rules of a ClusterRole manifest as deploy/ writes them: each rule a
/// `- apiGroups: [...]` item followed by `resources: [...]` and
/// `verbs: [...]`, lists in flow style. Anything else is an error, so the
/// file cannot drift into a shape this reads wrongly.
pub fn cluster_role_rules(yaml: &str) -> anyhow::Result<Vec<Rule>> {
    fn list(line: &str, key: &str) -> Option<Vec<String>> {
        let rest = line.trim().trim_start_matches("- ").strip_prefix(key)?;
        let inner = rest.trim().strip_prefix('[')?.strip_suffix(']')?;
        Some(
            inner
                .split(',')
                .map(|x| x.trim().trim_matches('"').to_owned())
                .filter(|x| !x.is_empty() || inner.contains("\"\""))
                .collect(),
        )
    }
    let mut rules = Vec::new();
    let mut in_rules = false;
    let mut lines = yaml.lines().filter(|l| !l.trim_start().starts_with('#'));
    while let Some(line) = lines.next() {
        if line.trim_end() == "rules:" {
            in_rules = true;
            continue;
        }
        if !in_rules || line.trim().is_empty() {
            continue;
        }
        let api_groups = list(line, "apiGroups:")
            .with_context(|| format!("expected `- apiGroups: [...]`, found `{line}`"))?;
        let mut next = |key: &str| -> anyhow::Result<Vec<String>> {
            let l = lines.next().unwrap_or_default();
            list(l, key).with_context(|| format!("expected `{key} [...]`, found `{l}`"))
        };
        let resources = next("resources:")?;
        let verbs = next("verbs:")?;
        rules.push(Rule {
            api_groups,
            resources,
            verbs,
        });
    }
    anyhow::ensure!(!rules.is_empty(), "no rules found");
    Ok(rules)
}

/// The fake API server. Dropping it stops it.
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    /// Ends every open watch stream.
    reset: broadcast::Sender<()>,
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
        FakeApi::serve_on(TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Like [`FakeApi::start`], on 127.0.0.1 inside `ns`: for an agent
    /// that runs there (a namespace has its own loopback).
    pub async fn start_in(ns: &crate::NetNs) -> anyhow::Result<FakeApi> {
        let listener = crate::in_netns(ns, || std::net::TcpListener::bind("127.0.0.1:0"))?;
        listener.set_nonblocking(true)?;
        FakeApi::serve_on(TcpListener::from_std(listener)?)
    }

    fn serve_on(listener: TcpListener) -> anyhow::Result<FakeApi> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (events, _) = broadcast::channel(256);
        let (reset, _) = broadcast::channel(4);
        let task = {
            let state = state.clone();
            let events = events.clone();
            let reset = reset.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let state = state.clone();
                    let events = events.clone();
                    let reset = reset.clone();
                    tokio::spawn(async move {
                        let _ = serve(conn, state, events, reset).await;
                    });
                }
            })
        };
        Ok(FakeApi {
            addr,
            state,
            events,
            reset,
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

    /// A kubeconfig for this server (plain HTTP, no credentials), for a
    /// process such as the agent (`KUBECONFIG=<file>`).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\n\
             users:\n- name: agent\n  user: {{}}\ncontexts:\n- name: stand-in\n  context:\n    \
             cluster: stand-in\n    user: agent\n    namespace: default\ncurrent-context: stand-in\n",
            self.url()
        )
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
            let deleted_as = previous.clone().map(|mut p| {
                p["metadata"]["resourceVersion"] = json!(rv.to_string());
                p
            });
            let ev = WatchEvent {
                rv,
                collection: collection.to_owned(),
                kind,
                object,
                previous,
                deleted_as,
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
                deleted_as: None,
            };
            s.events.push(ev.clone());
            ev
        };
        let _ = self.events.send(ev);
    }

    /// Answers 403 to any request outside the rules of the ClusterRole in
    /// `yaml` (e.g. deploy/base/clusterrole.yaml).
    pub fn enforce_cluster_role(&self, yaml: &str) -> anyhow::Result<()> {
        self.lock().rbac = Some(cluster_role_rules(yaml)?);
        Ok(())
    }

    /// As etcd compacting its history past every client: the
    /// resourceVersion moves on (a write elsewhere), everything up to it is
    /// compacted, and every open watch ends. Clients that re-watch from
    /// where they were get 410 Expired and must relist.
    pub fn expire_watches(&self) {
        {
            let mut s = self.lock();
            s.rv += 1;
            s.compacted = s.rv;
            let rv = s.rv;
            s.events.retain(|e| e.rv >= rv);
        }
        let _ = self.reset.send(());
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

/// The API group, version and resource a path names, and whether it names
/// one object: `/api/v1/[namespaces/NS/]RES[/NAME]` or
/// `/apis/G/V/[namespaces/NS/]RES[/NAME]`.
fn group_resource(path: &str) -> Option<(String, String, String, bool)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    match rest {
        [res] => Some((group.into(), version.into(), (*res).into(), false)),
        [res, _name] => Some((group.into(), version.into(), (*res).into(), true)),
        _ => None,
    }
}

/// Field labels a custom resource supports without `selectableFields`.
const CR_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

async fn serve(
    conn: TcpStream,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    reset: broadcast::Sender<()>,
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
        let bookmarks = matches!(query_param(&query, "allowWatchBookmarks"), Some("true"));
        let mut rx = events.subscribe();
        let mut reset_rx = reset.subscribe();
        let api = group_resource(&path);
        let (status, body, backlog, since, snapshot) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.requests.push(target.clone());
            let snapshot = s.rv;
            let single = namespaced(&path);
            let collection = match &single {
                Some((c, _, _)) => c.clone(),
                None => path.clone(),
            };
            let verb = match &api {
                Some((_, _, _, true)) => "get",
                Some(_) if watch => "watch",
                _ => "list",
            };
            let forbidden = match (&s.rbac, &api) {
                (Some(rules), Some((group, _, resource, _))) => {
                    !rules.iter().any(|r| r.allows(group, resource, verb))
                }
                _ => false,
            };
            let bad_field = match (&api, field_selector.as_deref()) {
                (Some((group, ..)), Some(sel)) if group == "kubevirt.io" => sel
                    .split(',')
                    .filter_map(|t| t.split_once('=').map(|(k, _)| k.trim_end_matches('!')))
                    .find(|k| !CR_FIELDS.contains(k))
                    .map(str::to_owned),
                _ => None,
            };
            let since: u64 = query_param(&query, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if forbidden {
                let (group, _, resource, _) = api.clone().unwrap_or_default();
                let message = format!(
                    "{resource}{} is forbidden: User \"system:serviceaccount:vmbw-system:vmbw-agent\" \
                     cannot {verb} resource \"{resource}\" in API group \"{group}\" at the cluster scope",
                    if group.is_empty() {
                        String::new()
                    } else {
                        format!(".{group}")
                    }
                );
                (
                    403,
                    status(403, "Forbidden", message),
                    Vec::new(),
                    0,
                    snapshot,
                )
            } else if let Some(field) = bad_field {
                let message = format!("field label not supported: {field}");
                (
                    400,
                    status(400, "BadRequest", message),
                    Vec::new(),
                    0,
                    snapshot,
                )
            } else if watch && since != 0 && since < s.compacted {
                // A watch answers 200 and then an ERROR event.
                let message = format!("too old resource version: {since} ({})", s.compacted);
                let expired = WatchEvent {
                    rv: since,
                    collection: collection.clone(),
                    kind: "ERROR",
                    object: status(410, "Expired", message),
                    previous: None,
                    deleted_as: None,
                };
                (200, Value::Null, vec![expired], since, snapshot)
            } else if let Some((status, body)) = s.routes.get(&path) {
                (*status, body.clone(), Vec::new(), 0, snapshot)
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
                            Some(o) => (200, o.clone(), Vec::new(), 0, snapshot),
                            None => (404, not_found(&key), Vec::new(), 0, snapshot),
                        }
                    }
                    None if watch => {
                        let backlog: Vec<WatchEvent> = s
                            .events
                            .iter()
                            .filter(|e| e.rv > since && e.collection == collection)
                            .cloned()
                            .collect();
                        (200, Value::Null, backlog, since, snapshot)
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
                        (200, body, Vec::new(), 0, snapshot)
                    }
                }
            } else {
                (404, not_found(&path), Vec::new(), 0, snapshot)
            }
        };
        let stream = conn.get_mut();
        if !(watch && status == 200 && body.is_null()) {
            let bytes = serde_json::to_vec(&body)?;
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                match status {
                    200 => "OK",
                    400 => "Bad Request",
                    403 => "Forbidden",
                    _ => "Not Found",
                },
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
        let expired = backlog.first().is_some_and(|e| e.kind == "ERROR");
        for ev in backlog {
            last = ev.rv;
            write_event(stream, &ev, labels, fields).await?;
        }
        // A bookmark may carry any resourceVersion this stream has been
        // brought up to: events arrive in order, so every one up to the
        // last received has been sent or filtered out.
        let mut seen = last.max(snapshot);
        let (item_kind, api_version) = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            let kind = s
                .collections
                .get(&collection)
                .map(|(k, _)| k.trim_end_matches("List").to_owned())
                .unwrap_or_default();
            let version = match &api {
                Some((g, v, ..)) if g.is_empty() => v.clone(),
                Some((g, v, ..)) => format!("{g}/{v}"),
                None => String::new(),
            };
            (kind, version)
        };
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
        // After 410 Expired, nothing more on this stream.
        if expired {
            stream.write_all(b"0\r\n\r\n").await?;
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = reset_rx.recv() => break,
                _ = bookmark.tick(), if bookmarks => {
                    let ev = WatchEvent {
                        rv: seen,
                        collection: collection.clone(),
                        kind: "BOOKMARK",
                        object: json!({
                            "kind": item_kind,
                            "apiVersion": api_version,
                            "metadata": {"resourceVersion": seen.to_string()},
                        }),
                        previous: None,
                        deleted_as: None,
                    };
                    write_event(stream, &ev, None, None).await?;
                }
                ev = rx.recv() => match ev {
                    Ok(ev) if ev.collection == collection && ev.rv > last => {
                        last = ev.rv;
                        seen = seen.max(ev.rv);
                        write_event(stream, &ev, labels, fields).await?;
                    }
                    Ok(ev) => seen = seen.max(ev.rv),
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
    let seen = match ev.kind {
        "ERROR" | "BOOKMARK" => Some((ev.kind, &ev.object)),
        _ => ev.seen_through(labels, fields),
    };
    let Some((kind, object)) = seen else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_cluster_role_reads_as_its_two_rules() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/base/clusterrole.yaml"
        );
        let rules =
            cluster_role_rules(&std::fs::read_to_string(path).expect("role")).expect("rules");
        assert_eq!(rules.len(), 2, "{rules:?}");
        let allows = |g, r, v| rules.iter().any(|rule| rule.allows(g, r, v));
        assert!(allows("kubevirt.io", "virtualmachineinstances", "watch"));
        assert!(allows("", "pods", "list"));
        assert!(!allows("", "nodes", "get"), "no code reads nodes");
        assert!(!allows("kubevirt.io", "virtualmachineinstances", "patch"));
        assert!(
            cluster_role_rules("rules:\n  - apiGroups: [\"\"]\n    verbs: [\"get\"]\n").is_err()
        );
        assert_eq!(
            group_resource("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/x"),
            Some((
                "kubevirt.io".into(),
                "v1".into(),
                "virtualmachineinstances".into(),
                true
            ))
        );
        assert_eq!(
            group_resource("/api/v1/pods"),
            Some(("".into(), "v1".into(), "pods".into(), false))
        );
    }
}
