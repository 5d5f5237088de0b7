//! `kubectl-vmbw`: the kubectl plugin (`kubectl vmbw status [VMI]`,
//! `kubectl vmbw explain VMI`). See the library's documentation.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use kubectl_vmbw::{self as kubectl, AgentLocator, Output, Request};

#[derive(Parser)]
#[command(
    name = "kubectl-vmbw",
    version,
    about = "Migration bandwidth status of KubeVirt VMs, from the vmbw agents",
    long_about = "Shows what the vmbw agent on a VMI's node sees and decides: migration \
                  progress, dirty-page predictions and the bandwidth each migration and \
                  application gets. Reaches the agents through the API server's pod proxy \
                  with your kubeconfig; needs get on virtualmachineinstances, list on pods \
                  and get on pods/proxy in the agents' namespace. Agents are asked at once; \
                  one that does not answer is shown as such, and the exit status is 1."
)]
struct Cli {
    /// The kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace of the VMI (default: the context's).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Same as -o json (kept for scripts written against 0.1).
    #[arg(long, global = true, hide = true)]
    json: bool,
    /// Namespace the vmbw agents run in.
    #[arg(long, global = true, default_value = kubectl::AGENT_NAMESPACE)]
    agent_namespace: String,
    /// Label selector of the agent pods.
    #[arg(long, global = true, default_value = kubectl::AGENT_SELECTOR)]
    agent_selector: String,
    /// The agents' API port.
    #[arg(long, global = true, default_value_t = vmbw_api::DEFAULT_PORT)]
    agent_port: u16,
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
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (client, default_ns) =
        kubectl::client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let namespace = cli.namespace.unwrap_or(default_ns);
    let locator = AgentLocator {
        namespace: cli.agent_namespace,
        selector: cli.agent_selector,
        port: cli.agent_port,
    };
    let request = match cli.command {
        Command::Status { vmi } => Request::Status { vmi },
        Command::Explain { vmi } => Request::Explain { vmi },
    };
    let output = if cli.json { Output::Json } else { cli.output };
    let out = kubectl::run(&client, &namespace, &locator, &request, output).await?;
    print!("{}", out.text);
    if out.failed > 0 {
        eprintln!(
            "error: {} of {} agent(s) did not answer (see above)",
            out.failed, out.asked
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
