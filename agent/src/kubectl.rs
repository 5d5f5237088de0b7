//! `kubectl vmbw`: the agents' status through the Kubernetes API server.
//!
//! The agent's API is not exposed outside the node; the plugin finds the
//! VMI's node, the vmbw agent pod on that node (by the DaemonSet's label),
//! and calls the agent through the API server's pod proxy
//! (`/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/...`), so it needs
//! only the user's kubeconfig and `get` on VMIs, `list` on pods and
//! `get pods/proxy` in the agent's namespace. It prints the tables of
//! [`crate::api::render`], or the agents' JSON with `--json`.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    api::{self, Explain, Status, VmStatus},
    kubevirt::{ObjectError, RawObject, objects},
};

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
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("VirtualMachineInstance {0} is not scheduled on a node")]
    NoNode(String),
    #[error("no running vmbw agent on node {node} (pods in {namespace} with labels {selector})")]
    NoAgent {
        node: String,
        namespace: String,
        selector: String,
    },
    #[error("building the request for {0}")]
    Request(String, #[source] http::Error),
    #[error("encoding JSON")]
    Json(#[source] serde_json::Error),
}

/// One agent's answer to `status`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub node: String,
    pub pod: String,
    pub status: Status,
    pub vms: Vec<VmStatus>,
}

/// An agent pod and its node.
#[derive(Debug, Clone)]
struct Agent {
    pod: String,
    node: String,
}

/// Runs one plugin request. `namespace` is the VMI's namespace; the output
/// (tables or JSON) is returned as text.
pub async fn run(
    client: &Client,
    namespace: &str,
    locator: &AgentLocator,
    request: &Request,
    json: bool,
) -> Result<String, KubectlError> {
    match request {
        Request::Status { vmi } => {
            let (agents, filter) = match vmi {
                Some(name) => {
                    let nodes = vmi_nodes(client, namespace, name).await?;
                    let mut agents = Vec::new();
                    for node in nodes {
                        agents.push(agent_on(client, locator, &node).await?);
                    }
                    (agents, Some(format!("{namespace}/{name}")))
                }
                None => (all_agents(client, locator).await?, None),
            };
            let mut reports = Vec::new();
            for a in agents {
                let status: Status = proxy_get(client, locator, &a, api::STATUS_PATH).await?;
                let mut vms: Vec<VmStatus> = proxy_get(client, locator, &a, api::VMS_PATH).await?;
                if let Some(f) = &filter {
                    vms.retain(|v| &v.name == f);
                }
                reports.push(AgentReport {
                    node: a.node,
                    pod: a.pod,
                    status,
                    vms,
                });
            }
            if json {
                return to_json(&reports);
            }
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
                let _ = writeln!(out, "== {} (agent {})", r.node, r.pod);
                out.push_str(&api::render_status(&r.status));
                out.push('\n');
                out.push_str(&api::render_vms(&r.vms));
            }
            Ok(out)
        }
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
            if json {
                return to_json(&explain);
            }
            Ok(api::render_explain(&explain))
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, KubectlError> {
    let mut s = serde_json::to_string_pretty(v).map_err(KubectlError::Json)?;
    s.push('\n');
    Ok(s)
}

/// The VMI's node, then the target node of a migration in progress.
async fn vmi_nodes(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>, KubectlError> {
    let api: Api<RawObject> =
        Api::namespaced_with(client.clone(), namespace, &objects::vmi_resource());
    let raw = match api.get_opt(name).await {
        Ok(Some(raw)) => raw,
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
    let vmi = objects::parse_vmi(&raw)?;
    let mut nodes: Vec<String> = vmi.node.iter().cloned().collect();
    if let Some(m) = &vmi.migration {
        let over = m.completed || m.failed || m.end_timestamp.is_some();
        if let Some(t) = m
            .target_node
            .as_ref()
            .filter(|t| !over && !nodes.contains(t))
        {
            nodes.push(t.clone());
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

async fn all_agents(client: &Client, locator: &AgentLocator) -> Result<Vec<Agent>, KubectlError> {
    list_agents(client, locator, None).await
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
