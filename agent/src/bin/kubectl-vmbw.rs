//! `kubectl-vmbw`: the kubectl plugin (`kubectl vmbw status [VMI]`,
//! `kubectl vmbw explain VMI`). See `vmbw::kubectl`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vmbw::kubectl::{self, AgentLocator, Request};

#[derive(Parser)]
#[command(
    name = "kubectl-vmbw",
    version,
    about = "Migration bandwidth status of KubeVirt VMs, from the vmbw agents",
    long_about = "Shows what the vmbw agent on a VMI's node sees and decides: migration \
                  progress, dirty-page predictions and the bandwidth each migration and \
                  application gets. Reaches the agents through the API server's pod proxy \
                  with your kubeconfig."
)]
struct Cli {
    /// Namespace of the VMI (default: the kubeconfig context's).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    /// Namespace the vmbw agents run in.
    #[arg(long, global = true, default_value = kubectl::AGENT_NAMESPACE)]
    agent_namespace: String,
    /// Label selector of the agent pods.
    #[arg(long, global = true, default_value = kubectl::AGENT_SELECTOR)]
    agent_selector: String,
    /// The agents' API port.
    #[arg(long, global = true, default_value_t = vmbw::api::DEFAULT_PORT)]
    agent_port: u16,
    /// Print the agents' JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Agent summary and VM table: of every node, or of the node(s) of VMI
    /// (source and target while it migrates).
    Status {
        /// A VirtualMachineInstance name.
        vmi: Option<String>,
    },
    /// The bandwidth decisions about a VMI, with their inputs and reasons.
    Explain {
        /// A VirtualMachineInstance name.
        vmi: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = kube::Config::infer()
        .await
        .context("reading the kubeconfig (or the in-cluster configuration)")?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).context("creating the Kubernetes client")?;
    let locator = AgentLocator {
        namespace: cli.agent_namespace,
        selector: cli.agent_selector,
        port: cli.agent_port,
    };
    let request = match cli.command {
        Command::Status { vmi } => Request::Status { vmi },
        Command::Explain { vmi } => Request::Explain { vmi },
    };
    let out = kubectl::run(&client, &namespace, &locator, &request, cli.json).await?;
    print!("{out}");
    Ok(())
}
