//! `vmbw record`: follows one migration of a VM and writes its dirty-page
//! trace (docs/trace-format.md), one row per finished pre-copy iteration, flushed as
//! it goes. The header comments say where every column came from.

use std::{
    fs::File,
    io::BufWriter,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{
    monitor::{EXTRA_COLUMNS, IterationSample, MigrationMonitor, MigrationOutcome, MonitorConfig},
    qmp::{Qmp, QmpOptions},
    trace::{TraceError, TraceWriter},
    types::MigrationStatus,
};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Monitor(#[from] super::monitor::MonitorError),
    #[error(transparent)]
    Qmp(#[from] super::qmp::QmpError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The source QEMU's QMP socket.
    pub qmp: PathBuf,
    /// Where the trace goes.
    pub out: PathBuf,
    pub monitor: MonitorConfig,
    /// How long to wait for the migration to start.
    pub start_timeout: Duration,
    /// Extra header comments (how the trace was made).
    pub comments: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct RecordSummary {
    pub outcome: MigrationOutcome,
    pub rows: u64,
    /// Whether boundaries came from MIGRATION_PASS events (else polling).
    pub events: bool,
}

/// Records one migration. `on_sample` sees each sample as it is written.
pub async fn record(
    opts: &RecordOptions,
    mut on_sample: impl FnMut(&IterationSample),
) -> Result<RecordSummary, RecordError> {
    let mut qmp = Qmp::connect(&opts.qmp, QmpOptions::default()).await?;
    let version = qmp.query_version().await?;
    let mut mon = MigrationMonitor::new(qmp, opts.monitor.clone()).await?;
    let events = mon.enable_events().await?;
    if !events {
        tracing::warn!(
            "a migration is already running without the `events` capability: \
             iteration boundaries come from polling (±{:?}) and the running iteration is skipped",
            opts.monitor.poll_interval
        );
    }
    let file = File::create(&opts.out).map_err(|source| RecordError::Create {
        path: opts.out.clone(),
        source,
    })?;
    let (vm_net, uplink) = mon.net_sources();
    let mut comments = vec![
        "vmbw dirty-page trace: one row per pre-copy iteration (docs/trace-format.md).".to_owned(),
        format!(
            "recorded by vmbw {} `record` on {} from QMP socket {}",
            env!("CARGO_PKG_VERSION"),
            utc_now(),
            opts.qmp.display()
        ),
        format!(
            "QEMU {version}; guest RAM {} MiB; {} vCPU(s)",
            mon.ram_bytes() >> 20,
            mon.vcpus()
        ),
        format!(
            "iteration boundaries: {}; query-migrate polled every {} ms",
            if events {
                "MIGRATION_PASS event timestamps"
            } else {
                "polling dirty-sync-count"
            },
            opts.monitor.poll_interval.as_millis()
        ),
        "dirty_pages (X1) = QEMU dirty-pages-rate x iter_s; dirty_pages_counted = pages the \
         closing sync found newly dirty (QEMU counters: normal+duplicate+remaining/page)"
            .to_owned(),
        format!("mem_usage_pct (X2): {}", mon.memory_source()),
        "cpu_usage_pct (X3): vCPU threads' CPU time / (wall time x vCPUs)".to_owned(),
        format!("vm_net_bps (X4): {vm_net}"),
        format!("host_net_bps (X6): {uplink}"),
    ];
    comments.extend(opts.comments.iter().cloned());
    let mut writer = TraceWriter::new(BufWriter::new(file), &comments, &EXTRA_COLUMNS)?;

    mon.wait_for_start(opts.start_timeout).await?;
    let mut rows = 0u64;
    while let Some(sample) = mon.next_sample().await? {
        writer.write_row(&sample.to_trace_row())?;
        rows += 1;
        on_sample(&sample);
    }
    let outcome = mon
        .outcome()
        .cloned()
        .ok_or(RecordError::Trace(TraceError::Write {
            source: std::io::Error::other("the monitor ended without an outcome"),
        }))?;
    writer.comment(&outcome_line(&outcome))?;
    Ok(RecordSummary {
        outcome,
        rows,
        events,
    })
}

/// One line summarising how a migration ended.
pub fn outcome_line(o: &MigrationOutcome) -> String {
    // A cancelled migration's final reply has no counters: use the last
    // reply that had them.
    let progress = match (&o.info.ram, &o.last_progress) {
        (None, Some(last)) => last,
        _ => &o.info,
    };
    let ram = progress.ram.clone().unwrap_or_default();
    let mut s = format!(
        "outcome: {}{} after {:.1} s; {} iterations recorded; dirty-sync-count {}; \
         {} MiB transferred",
        o.status.as_str(),
        if std::ptr::eq(progress, &o.info) {
            ""
        } else {
            " (counters as last seen before the end)"
        },
        progress.total_time.unwrap_or(0) as f64 / 1000.0,
        o.samples,
        ram.dirty_sync_count,
        ram.transferred >> 20
    );
    if o.status == MigrationStatus::Completed {
        s.push_str(&format!(
            "; downtime {} ms; setup {} ms",
            o.info.downtime.unwrap_or(0),
            o.info.setup_time.unwrap_or(0)
        ));
    }
    if let Some(err) = &o.info.error_desc {
        s.push_str(&format!("; error: {err}"));
    }
    s
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_string(secs)
}

fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_string(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_string(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_string(1_795_292_134), "2026-11-21 20:15:34 UTC");
    }
}
