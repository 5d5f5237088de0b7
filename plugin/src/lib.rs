//! `kubectl vmbw`: the agents' status through the Kubernetes API server.
//!
//! The agent's API is not exposed outside the node; the plugin finds the
//! VMI's node, the vmbw agent pod on that node (by the DaemonSet's label),
//! and calls the agent through the API server's pod proxy
//! (`/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/...`), so it needs
//! only the user's kubeconfig and `get` on VMIs, `list` on pods and
//! `get pods/proxy` in the agent's namespace. Agents are asked at the same
//! time; one that does not answer is reported as such and the others are
//! still shown. It prints the tables of [`vmbw_api::render`], or the
//! agents' objects as JSON or YAML.

use std::{fmt::Write as _, path::Path};

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use vmbw_api::{self as api, ClassStatus, Explain, Status, VmStatus};

/// The label every agent pod carries (deploy/base/daemonset.yaml).
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=vmbw,app.kubernetes.io/component=agent";
/// Where the manifests install the agent.
pub const AGENT_NAMESPACE: &str = "vmbw-system";

/// Where the agents are.
#[derive(Debug, Clone)]
pub struct AgentLocator {
    pub namespace: String,
    pub selector: String,
    pub port: u16,
}

impl Default for AgentLocator {
    fn default() -> Self {
        AgentLocator {
            namespace: AGENT_NAMESPACE.into(),
            selector: AGENT_SELECTOR.into(),
            port: api::DEFAULT_PORT,
        }
    }
}

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Every agent, or the agents on the nodes of one VMI.
    Status { vmi: Option<String> },
    /// The last decisions about one VMI, from the agent of its node.
    Explain { vmi: String },
}

/// How to print (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// The agent summary and VM table of each agent.
    #[default]
    Table,
    /// The tables plus each agent's HTB classes.
    Wide,
    /// The agents' objects, one report per agent.
    Json,
    /// The same as YAML.
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("VirtualMachineInstance {namespace}/{name} not found")]
    VmiNotFound { namespace: String, name: String },
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("VirtualMachineInstance {0} is not scheduled on a node")]
    NoNode(String),
    #[error("VirtualMachineInstance {name}: its status is not KubeVirt's: {reason}")]
    Malformed { name: String, reason: String },
    #[error("no running vmbw agent on node {node} (pods in {namespace} with labels {selector})")]
    NoAgent {
        node: String,
        namespace: String,
        selector: String,
    },
    #[error("building the request for {0}")]
    Request(String, #[source] http::Error),
    #[error("encoding the output")]
    Encode(String),
    #[error("reading the kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
}

/// One agent's answer to `status`, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub node: String,
    /// The agent pod; empty when the node has none.
    pub pod: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<VmStatus>,
    /// The HTB classes (`-o wide` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<ClassStatus>>,
    /// Why this agent could not be asked or did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a request printed, and how many agents failed to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub text: String,
    pub failed: usize,
    pub asked: usize,
}

/// A client from `--kubeconfig` / `--context`, else the usual inference
/// ($KUBECONFIG, ~/.kube/config, in-cluster); with the context's default
/// namespace.
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(Client, String), KubectlError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let named = |path: &str, e: &dyn std::fmt::Display| KubectlError::Kubeconfig {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let config = match kubeconfig {
        Some(path) => {
            let shown = path.display().to_string();
            let kc = Kubeconfig::read_from(path).map_err(|e| named(&shown, &e))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| named(&shown, &e))?
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| named("$KUBECONFIG or ~/.kube/config", &e))?,
        None => Config::infer()
            .await
            .map_err(|e| named("$KUBECONFIG, ~/.kube/config or in-cluster", &e))?,
    };
    let namespace = config.default_namespace.clone();
    Ok((client_from(config)?, namespace))
}

/// A client for the plugin from a configuration. kube retries 429, 503
/// and 504 up to 15 times with back-off by default; the API server answers
/// a proxied request to a dead agent with 503, so the plugin would sit for
/// minutes on one node. It asks once and reports the node instead.
pub fn client_from(mut config: Config) -> Result<Client, KubectlError> {
    config.default_retry = false;
    Client::try_from(config).map_err(|source| KubectlError::Kube {
        what: "creating the Kubernetes client".into(),
        source,
    })
}

/// Runs one plugin request. `namespace` is the VMI's namespace.
pub async fn run(
    client: &Client,
    namespace: &str,
    locator: &AgentLocator,
    request: &Request,
    output: Output,
) -> Result<Outcome, KubectlError> {
    match request {
        Request::Status { vmi } => status(client, namespace, locator, vmi.as_deref(), output).await,
        Request::Explain { vmi } => {
            // The source node decides about an outgoing migration.
            let nodes = vmi_nodes(client, namespace, vmi).await?;
            let node = nodes
                .into_iter()
                .next()
                .ok_or_else(|| KubectlError::NoNode(format!("{namespace}/{vmi}")))?;
            let agent = agent_on(client, locator, &node).await?;
            let path = api::explain_path(&format!("{namespace}/{vmi}"));
            let explain: Explain = proxy_get(client, locator, &agent, &path).await?;
            let text = match output {
                Output::Table | Output::Wide => api::render_explain(&explain),
                Output::Json | Output::Yaml => encode(&explain, output)?,
            };
            Ok(Outcome {
                text,
                failed: 0,
                asked: 1,
            })
        }
    }
}

async fn status(
    client: &Client,
    namespace: &str,
    locator: &AgentLocator,
    vmi: Option<&str>,
    output: Output,
) -> Result<Outcome, KubectlError> {
    // Each agent to ask, or the reason a node has none.
    let (targets, filter): (Vec<Result<Agent, (String, String)>>, _) = match vmi {
        Some(name) => {
            let nodes = vmi_nodes(client, namespace, name).await?;
            let found = join_all(nodes.iter().map(|n| agent_on(client, locator, n))).await;
            let targets = nodes
                .into_iter()
                .zip(found)
                .map(|(node, a)| a.map_err(|e| (node, e.to_string())))
                .collect();
            (targets, Some(format!("{namespace}/{name}")))
        }
        None => (
            list_agents(client, locator, None)
                .await?
                .into_iter()
                .map(Ok)
                .collect(),
            None,
        ),
    };
    let wide = output == Output::Wide;
    let reports: Vec<AgentReport> = join_all(targets.into_iter().map(|t| async {
        match t {
            Ok(agent) => ask(client, locator, agent, filter.as_deref(), wide).await,
            Err((node, error)) => AgentReport {
                node,
                pod: String::new(),
                status: None,
                vms: vec![],
                classes: None,
                error: Some(error),
            },
        }
    }))
    .await;
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let text = match output {
        Output::Json | Output::Yaml => encode(&reports, output)?,
        Output::Table | Output::Wide => tables(&reports, locator),
    };
    Ok(Outcome {
        text,
        failed,
        asked: reports.len(),
    })
}

/// Asks one agent for its status and VMs (and classes), keeping only the
/// VM `filter` if given.
async fn ask(
    client: &Client,
    locator: &AgentLocator,
    agent: Agent,
    filter: Option<&str>,
    wide: bool,
) -> AgentReport {
    let answer = async {
        let status: Status = proxy_get(client, locator, &agent, api::STATUS_PATH).await?;
        let mut vms: Vec<VmStatus> = proxy_get(client, locator, &agent, api::VMS_PATH).await?;
        if let Some(f) = filter {
            vms.retain(|v| v.name == f);
        }
        let classes = match wide {
            true => Some(proxy_get(client, locator, &agent, api::CLASSES_PATH).await?),
            false => None,
        };
        Ok::<_, KubectlError>((status, vms, classes))
    }
    .await;
    let (status, vms, classes, error) = match answer {
        Ok((s, v, c)) => (Some(s), v, c, None),
        Err(e) => (None, vec![], None, Some(vmbw_api::errors::chain(&e))),
    };
    AgentReport {
        node: agent.node,
        pod: agent.pod,
        status,
        vms,
        classes,
        error,
    }
}

fn tables(reports: &[AgentReport], locator: &AgentLocator) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        let _ = writeln!(
            out,
            "no vmbw agents found (pods in {} with labels {})",
            locator.namespace, locator.selector
        );
    }
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match (&r.status, &r.error) {
            (_, Some(e)) if r.pod.is_empty() => {
                let _ = writeln!(out, "== {}: {e}", r.node);
            }
            (_, Some(e)) => {
                let _ = writeln!(out, "== {} (agent {}): no answer: {e}", r.node, r.pod);
            }
            (Some(status), None) => {
                let _ = writeln!(out, "== {} (agent {})", r.node, r.pod);
                out.push_str(&api::render_status(status));
                out.push('\n');
                out.push_str(&api::render_vms(&r.vms));
                if let Some(classes) = &r.classes {
                    out.push('\n');
                    out.push_str(&api::render_classes(classes));
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn encode<T: Serialize>(v: &T, output: Output) -> Result<String, KubectlError> {
    let mut s = match output {
        Output::Yaml => {
            serde_saphyr::to_string(v).map_err(|e| KubectlError::Encode(e.to_string()))?
        }
        _ => serde_json::to_string_pretty(v).map_err(|e| KubectlError::Encode(e.to_string()))?,
    };
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// An agent pod and its node.
#[derive(Debug, Clone)]
struct Agent {
    pod: String,
    node: String,
}

/// `kubevirt.io/v1` VirtualMachineInstance.
fn vmi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}

/// The part of a VMI's status the plugin reads (KubeVirt's
/// `VirtualMachineInstanceStatus` and `...MigrationState`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct VmiStatus {
    node_name: Option<String>,
    migration_state: Option<MigrationState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct MigrationState {
    target_node: Option<String>,
    completed: bool,
    failed: bool,
    end_timestamp: Option<String>,
}

/// The VMI's node, then the target node of a migration in progress.
async fn vmi_nodes(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>, KubectlError> {
    let vmis: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &vmi_resource());
    let vmi = match vmis.get_opt(name).await {
        Ok(Some(vmi)) => vmi,
        Ok(None) => {
            return Err(KubectlError::VmiNotFound {
                namespace: namespace.into(),
                name: name.into(),
            });
        }
        Err(source) => {
            return Err(KubectlError::Kube {
                what: format!("reading VirtualMachineInstance {namespace}/{name}"),
                source,
            });
        }
    };
    let status = match vmi.data.get("status") {
        None => VmiStatus::default(),
        Some(s) => VmiStatus::deserialize(s).map_err(|e| KubectlError::Malformed {
            name: format!("{namespace}/{name}"),
            reason: e.to_string(),
        })?,
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let mut nodes: Vec<String> = nonempty(status.node_name).into_iter().collect();
    if let Some(m) = status.migration_state {
        let over = m.completed || m.failed || m.end_timestamp.is_some();
        if let Some(t) = nonempty(m.target_node).filter(|t| !over && !nodes.contains(t)) {
            nodes.push(t);
        }
    }
    if nodes.is_empty() {
        return Err(KubectlError::NoNode(format!("{namespace}/{name}")));
    }
    Ok(nodes)
}

fn running_agents(pods: Vec<Pod>) -> Vec<Agent> {
    let mut out: Vec<Agent> = pods
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            Some(Agent {
                pod: p.metadata.name?,
                node: p.spec?.node_name?,
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

async fn list_agents(
    client: &Client,
    locator: &AgentLocator,
    node: Option<&str>,
) -> Result<Vec<Agent>, KubectlError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &locator.namespace);
    let mut lp = ListParams::default().labels(&locator.selector);
    let field;
    if let Some(node) = node {
        field = format!("spec.nodeName={node}");
        lp = lp.fields(&field);
    }
    let list = pods.list(&lp).await.map_err(|source| KubectlError::Kube {
        what: format!("listing vmbw agent pods in {}", locator.namespace),
        source,
    })?;
    Ok(running_agents(list.items))
}

async fn agent_on(
    client: &Client,
    locator: &AgentLocator,
    node: &str,
) -> Result<Agent, KubectlError> {
    list_agents(client, locator, Some(node))
        .await?
        .into_iter()
        .find(|a| a.node == node)
        .ok_or_else(|| KubectlError::NoAgent {
            node: node.into(),
            namespace: locator.namespace.clone(),
            selector: locator.selector.clone(),
        })
}

/// The API server path that proxies to `path` on the agent pod.
pub fn proxy_path(namespace: &str, pod: &str, port: u16, path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}")
}

async fn proxy_get<T: DeserializeOwned>(
    client: &Client,
    locator: &AgentLocator,
    agent: &Agent,
    path: &str,
) -> Result<T, KubectlError> {
    let url = proxy_path(&locator.namespace, &agent.pod, locator.port, path);
    let req = http::Request::get(&url)
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| KubectlError::Request(url.clone(), e))?;
    client
        .request::<T>(req)
        .await
        .map_err(|source| KubectlError::Kube {
            what: format!("GET {path} from agent {} on {}", agent.pod, agent.node),
            source,
        })
}
