//! `vmbw record`: one migration's per-iteration trace (docs/trace-format.md).

use std::time::Duration;

use anyhow::Context as _;

pub fn record(args: crate::RecordArgs) -> anyhow::Result<()> {
    use vmbw::qemu::{MonitorConfig, record};
    anyhow::ensure!(args.poll_ms > 0, "--poll-ms must be positive");
    let opts = record::RecordOptions {
        qmp: args.qmp,
        out: args.out,
        monitor: MonitorConfig {
            poll_interval: Duration::from_millis(args.poll_ms),
            vm_ifaces: args.vm_ifaces,
            uplink: args.uplink,
            ..MonitorConfig::default()
        },
        start_timeout: Duration::from_secs(args.wait_secs),
        comments: args.comment,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = runtime
        .block_on(record::record(&opts, |s| {
            eprintln!(
                "iteration {:>3}: {:>9.0} dirty pages ({} counted) in {:>7.3} s; cpu {:>5.1}% mem {:>5.1}%",
                s.iteration,
                s.dirty_pages,
                s.dirty_pages_counted.map_or("-".to_owned(), |n| n.to_string()),
                s.iter_s,
                s.cpu_usage_pct,
                s.mem_usage_pct
            );
        }))
        .with_context(|| format!("recording the migration behind {}", opts.qmp.display()))?;
    eprintln!("{}", record::outcome_line(&summary.outcome));
    eprintln!("wrote {} rows to {}", summary.rows, opts.out.display());
    anyhow::ensure!(
        summary.outcome.status == vmbw::qemu::types::MigrationStatus::Completed,
        "the migration ended {}",
        summary.outcome.status.as_str()
    );
    Ok(())
}
