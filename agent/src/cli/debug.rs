//! The debug CLI: `vmbw status|vms|flows|classes|explain`, reading a running
//! agent's status API and printing the same tables as `kubectl vmbw`.

use anyhow::{Context as _, bail};
use vmbw::{
    api::{self, ClassStatus, Explain, FlowStatus, Listen, Status, VmStatus},
    daemon::http::get,
};

#[derive(clap::Args)]
pub struct ApiArgs {
    /// The agent's API: ADDR:PORT or unix:PATH (the agent's `[api] listen`).
    #[arg(long, default_value = "127.0.0.1:9464", env = "VMBW_API")]
    api: String,
    /// Print the JSON the agent returned instead of a table.
    #[arg(long)]
    json: bool,
}

/// Which view.
pub enum View {
    Status,
    Vms,
    Flows,
    Classes,
    Explain(String),
}

pub fn show(view: View, args: &ApiArgs) -> anyhow::Result<()> {
    let listen: Listen = args
        .api
        .parse()
        .map_err(|e: api::ListenError| anyhow::anyhow!("--api: {e}"))?;
    let path = match &view {
        View::Status => api::STATUS_PATH.to_owned(),
        View::Vms => api::VMS_PATH.to_owned(),
        View::Flows => api::FLOWS_PATH.to_owned(),
        View::Classes => api::CLASSES_PATH.to_owned(),
        View::Explain(vm) => api::explain_path(vm),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(get(&listen, &path)).with_context(|| {
        format!(
            "no agent answering at {} (is `vmbw agent` running? --api)",
            args.api
        )
    })?;
    if status != 200 {
        let msg = serde_json::from_str::<api::ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        bail!("the agent answered {status}: {}", msg.trim());
    }
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let bad = |what: &str| format!("the agent's {what} reply is not what this vmbw understands");
    let table = match view {
        View::Status => api::render_status(
            &serde_json::from_str::<Status>(&body).with_context(|| bad("status"))?,
        ),
        View::Vms => api::render_vms(
            &serde_json::from_str::<Vec<VmStatus>>(&body).with_context(|| bad("vms"))?,
        ),
        View::Flows => api::render_flows(
            &serde_json::from_str::<Vec<FlowStatus>>(&body).with_context(|| bad("flows"))?,
        ),
        View::Classes => api::render_classes(
            &serde_json::from_str::<Vec<ClassStatus>>(&body).with_context(|| bad("classes"))?,
        ),
        View::Explain(_) => api::render_explain(
            &serde_json::from_str::<Explain>(&body).with_context(|| bad("explain"))?,
        ),
    };
    print!("{table}");
    Ok(())
}
