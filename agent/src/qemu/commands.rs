//! Typed QMP commands: the queries the monitor reads and the controls the
//! bandwidth controller uses (`max-bandwidth`, `downtime-limit`,
//! capabilities, post-copy, cancel).

use serde_json::{Value, json};

use super::{
    qmp::{Qmp, QmpError},
    types::{
        BalloonGuestStats, CapabilityState, CpuInfoFast, DirtyRateInfo, MemorySizeSummary,
        MigrationInfo, MigrationParameters, QomProperty, StatusInfo, VersionInfo,
    },
};

/// Migration capabilities the controller switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// MIGRATION and MIGRATION_PASS events.
    Events,
    /// Throttle the guest's vCPUs when the migration does not converge.
    AutoConverge,
    /// Allow switching to post-copy (`migrate-start-postcopy`).
    PostcopyRam,
    /// Post-copy's urgent pages on a channel of their own (QEMU >= 8.0).
    PostcopyPreempt,
    /// The destination counts how long its vCPUs wait for post-copy's
    /// pages (`postcopy-blocktime` in its `query-migrate`).
    PostcopyBlocktime,
}

impl Capability {
    pub fn qapi_name(self) -> &'static str {
        match self {
            Capability::Events => "events",
            Capability::AutoConverge => "auto-converge",
            Capability::PostcopyRam => "postcopy-ram",
            Capability::PostcopyPreempt => "postcopy-preempt",
            Capability::PostcopyBlocktime => "postcopy-blocktime",
        }
    }
}

impl Qmp {
    pub async fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        self.execute_as("query-migrate", None).await
    }

    pub async fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfoFast>, QmpError> {
        self.execute_as("query-cpus-fast", None).await
    }

    pub async fn query_memory_size_summary(&mut self) -> Result<MemorySizeSummary, QmpError> {
        self.execute_as("query-memory-size-summary", None).await
    }

    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        self.execute_as("query-status", None).await
    }

    pub async fn query_version(&mut self) -> Result<VersionInfo, QmpError> {
        self.execute_as("query-version", None).await
    }

    pub async fn query_migrate_capabilities(&mut self) -> Result<Vec<CapabilityState>, QmpError> {
        self.execute_as("query-migrate-capabilities", None).await
    }

    pub async fn query_migrate_parameters(&mut self) -> Result<MigrationParameters, QmpError> {
        self.execute_as("query-migrate-parameters", None).await
    }

    /// Sets migration capabilities. QEMU refuses while a migration runs.
    pub async fn set_capabilities(&mut self, caps: &[(Capability, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({"capability": c.qapi_name(), "state": on}))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await
        .map(drop)
    }

    /// `migrate-set-parameters` with `params` (an object of QAPI names).
    async fn set_parameters(&mut self, params: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(params))
            .await
            .map(drop)
    }

    /// Sets every parameter `params` has (the others stay as they are).
    pub async fn set_migrate_parameters(
        &mut self,
        params: &MigrationParameters,
    ) -> Result<(), QmpError> {
        let value = serde_json::to_value(params).unwrap_or_else(|_| json!({}));
        if value.as_object().is_none_or(|o| o.is_empty()) {
            return Ok(());
        }
        self.set_parameters(value).await
    }

    /// Caps the migration stream, bytes per second. Takes effect on the
    /// running migration.
    pub async fn set_max_bandwidth(&mut self, bytes_per_sec: u64) -> Result<(), QmpError> {
        self.set_parameters(json!({ "max-bandwidth": bytes_per_sec }))
            .await
    }

    /// Auto-converge's vCPU throttle, percent (1..=99): the first step, the
    /// step size and the ceiling all at `pct`, so that the next throttle
    /// QEMU applies is `pct`. Takes effect on the running migration (only
    /// the capability itself cannot change during one).
    pub async fn set_cpu_throttle(&mut self, pct: u8) -> Result<(), QmpError> {
        let pct = pct.clamp(1, 99);
        self.set_parameters(json!({
            "cpu-throttle-initial": pct,
            "cpu-throttle-increment": pct,
            "max-cpu-throttle": pct,
        }))
        .await
    }

    /// Caps post-copy's background push, bytes per second (0 = no cap).
    pub async fn set_max_postcopy_bandwidth(&mut self, bytes_per_sec: u64) -> Result<(), QmpError> {
        self.set_parameters(json!({ "max-postcopy-bandwidth": bytes_per_sec }))
            .await
    }

    /// The bandwidth QEMU assumes for the stop-and-copy when it decides
    /// whether to switch over, bytes per second (QEMU >= 8.2; 0 = the
    /// bandwidth it measured).
    pub async fn set_avail_switchover_bandwidth(
        &mut self,
        bytes_per_sec: u64,
    ) -> Result<(), QmpError> {
        self.set_parameters(json!({ "avail-switchover-bandwidth": bytes_per_sec }))
            .await
    }

    /// Starts measuring the guest's dirty rate over `ms` milliseconds by
    /// hashing sampled pages (`page-sampling`: independent of the
    /// migration's own dirty logging, so it works while one runs; QEMU >=
    /// 8.2 for the millisecond unit). `sample_pages` per GiB, 128..=16384.
    pub async fn calc_dirty_rate(&mut self, ms: u64, sample_pages: u32) -> Result<(), QmpError> {
        self.execute(
            "calc-dirty-rate",
            Some(json!({
                "calc-time": ms,
                "calc-time-unit": "millisecond",
                "sample-pages": sample_pages.clamp(128, 16384),
                "mode": "page-sampling",
            })),
        )
        .await
        .map(drop)
    }

    pub async fn query_dirty_rate(&mut self) -> Result<DirtyRateInfo, QmpError> {
        self.execute_as(
            "query-dirty-rate",
            Some(json!({ "calc-time-unit": "millisecond" })),
        )
        .await
    }

    /// The stop-and-copy time QEMU aims for, milliseconds.
    pub async fn set_downtime_limit(&mut self, ms: u64) -> Result<(), QmpError> {
        self.set_parameters(json!({ "downtime-limit": ms })).await
    }

    /// Starts an outgoing migration to `uri` (e.g. `tcp:198.18.2.2:4444`).
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// Lets a destination started with `-incoming defer` listen on `uri`.
    pub async fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// Switches a running migration to post-copy (needs `postcopy-ram` on
    /// both sides before the migration started).
    pub async fn migrate_start_postcopy(&mut self) -> Result<(), QmpError> {
        self.execute("migrate-start-postcopy", None).await.map(drop)
    }

    pub async fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        self.execute("migrate_cancel", None).await.map(drop)
    }

    pub async fn qom_list(&mut self, path: &str) -> Result<Vec<QomProperty>, QmpError> {
        self.execute_as("qom-list", Some(json!({ "path": path })))
            .await
    }

    pub async fn qom_get(&mut self, path: &str, property: &str) -> Result<Value, QmpError> {
        self.execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
        .await
    }

    pub async fn qom_set(
        &mut self,
        path: &str,
        property: &str,
        value: Value,
    ) -> Result<(), QmpError> {
        self.execute(
            "qom-set",
            Some(json!({ "path": path, "property": property, "value": value })),
        )
        .await
        .map(drop)
    }

    /// The QOM path of the first virtio-balloon device, if the VM has one.
    pub async fn find_balloon(&mut self) -> Result<Option<String>, QmpError> {
        for parent in ["/machine/peripheral", "/machine/peripheral-anon"] {
            let children = match self.qom_list(parent).await {
                Ok(c) => c,
                Err(QmpError::Command { .. }) => continue, // no such container
                Err(e) => return Err(e),
            };
            if let Some(dev) = children
                .iter()
                .find(|p| p.kind.starts_with("child<virtio-balloon"))
            {
                return Ok(Some(format!("{parent}/{}", dev.name)));
            }
        }
        Ok(None)
    }

    /// The balloon driver's memory statistics at `balloon` (a QOM path).
    pub async fn balloon_stats(&mut self, balloon: &str) -> Result<BalloonGuestStats, QmpError> {
        let v = self.qom_get(balloon, "guest-stats").await?;
        let text = v.to_string();
        serde_json::from_value(v).map_err(|e| QmpError::Decode {
            command: format!("qom-get {balloon} guest-stats"),
            excerpt: text.chars().take(160).collect(),
            source: std::sync::Arc::new(e),
        })
    }
}
