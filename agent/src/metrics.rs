//! The agent's Prometheus metrics. One [`Metrics`] owns the registry; names
//! follow Prometheus conventions (base units, `_total` for counters,
//! `_bytes_per_second` for rates, `_seconds` for times).

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use vmbw_common::{Counter, Direction, class};

use crate::control::VmDecision;

/// Errors registering or encoding metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("encoding metrics")]
    Encode(#[source] prometheus::Error),
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Bytes per VM, traffic class and direction, as the datapath counts them.
    pub bytes: IntCounterVec,
    /// Packets per VM, class and direction.
    pub packets: IntCounterVec,
    /// Throughput per VM, class and direction over the last tick.
    pub throughput: GaugeVec,
    /// Dirty pages of the last finished iteration and the prediction for it.
    pub dirty_pages: GaugeVec,
    /// Allocations per VM: guarantee, ceiling, application reservation.
    pub allocation: GaugeVec,
    /// Bytes QEMU still has to send.
    pub remaining: GaugeVec,
    /// Current pre-copy iteration.
    pub iteration: GaugeVec,
    /// QEMU's expected downtime.
    pub expected_downtime: GaugeVec,
    /// Forecast completion time of each migration (NaN-free: absent when
    /// it does not converge).
    pub eta: GaugeVec,
    /// 1 while the forecast says the migration converges.
    pub converging: GaugeVec,
    /// AdaMig escalations and escalation tools fired.
    pub policy_switches: IntCounterVec,
    /// Errors by subsystem.
    pub errors: IntCounterVec,
    /// rtnetlink requests sent (HTB changes and dumps).
    pub netlink_requests: IntCounter,
    /// Time one control-loop tick takes.
    pub loop_seconds: Histogram,
    /// From a QEMU iteration sample arriving to the resulting class rates
    /// being in the kernel.
    pub sample_to_enforce_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        macro_rules! reg {
            ($metric:expr, $name:expr) => {{
                let m = $metric.map_err(|source| MetricsError::Register {
                    name: $name,
                    source,
                })?;
                registry.register(Box::new(m.clone())).map_err(|source| {
                    MetricsError::Register {
                        name: $name,
                        source,
                    }
                })?;
                m
            }};
        }
        let vcd = &["vm", "class", "direction"];
        // Which build answers: constant 1, the version in a label.
        let build = reg!(
            GaugeVec::new(
                Opts::new(
                    "vmbw_build_info",
                    "The running agent's version (constant 1)."
                ),
                &["version"]
            ),
            "vmbw_build_info"
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        // The process's CPU, memory, fds and start time (process_*), as
        // every Prometheus client exports them.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .map_err(|source| MetricsError::Register {
                name: "process_*",
                source,
            })?;
        Ok(Metrics {
            bytes: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "vmbw_vm_bytes_total",
                        "Bytes per VM, traffic class and direction on the uplink, frames as the datapath sees them (egress: before vmbw's qdisc, so a packet its queue refuses counts, and so does TCP's resend)."
                    ),
                    vcd
                ),
                "vmbw_vm_bytes_total"
            ),
            packets: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "vmbw_vm_packets_total",
                        "Packets per VM, traffic class and direction on the uplink."
                    ),
                    vcd
                ),
                "vmbw_vm_packets_total"
            ),
            throughput: reg!(
                GaugeVec::new(
                    Opts::new(
                        "vmbw_vm_throughput_bytes_per_second",
                        "Throughput per VM, class and direction over the last tick."
                    ),
                    vcd
                ),
                "vmbw_vm_throughput_bytes_per_second"
            ),
            dirty_pages: reg!(
                GaugeVec::new(
                    Opts::new(
                        "vmbw_dirty_pages",
                        "Dirty pages of the last finished iteration (kind=actual) and the prediction for it (kind=predicted)."
                    ),
                    &["vm", "kind"]
                ),
                "vmbw_dirty_pages"
            ),
            allocation: reg!(
                GaugeVec::new(
                    Opts::new(
                        "vmbw_allocation_bytes_per_second",
                        "Bandwidth per VM: migration guarantee and ceiling, application reservation (on the wire), and what the application was promised (kind=promised, goodput)."
                    ),
                    &["vm", "kind"]
                ),
                "vmbw_allocation_bytes_per_second"
            ),
            remaining: reg!(
                GaugeVec::new(
                    Opts::new(
                        "vmbw_migration_remaining_bytes",
                        "Bytes the migration still has to send."
                    ),
                    &["vm"]
                ),
                "vmbw_migration_remaining_bytes"
            ),
            iteration: reg!(
                GaugeVec::new(
                    Opts::new("vmbw_migration_iteration", "Current pre-copy iteration."),
                    &["vm"]
                ),
                "vmbw_migration_iteration"
            ),
            expected_downtime: reg!(
                GaugeVec::new(
                    Opts::new(
                        "vmbw_migration_expected_downtime_seconds",
                        "QEMU's expected downtime."
                    ),
                    &["vm"]
                ),
                "vmbw_migration_expected_downtime_seconds"
            ),
            eta: reg!(
                GaugeVec::new(
                    Opts::new(
                        "vmbw_migration_eta_seconds",
                        "Forecast seconds until the migration completes under its current allotment (absent while it does not converge)."
                    ),
                    &["vm"]
                ),
                "vmbw_migration_eta_seconds"
            ),
            converging: reg!(
                GaugeVec::new(
                    Opts::new(
                        "vmbw_migration_converging",
                        "1 if the forecast says the migration converges under its current allotment, else 0."
                    ),
                    &["vm"]
                ),
                "vmbw_migration_converging"
            ),
            policy_switches: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "vmbw_policy_switches_total",
                        "Escalations per VM and step (AdaMig's steps; escalation's tools)."
                    ),
                    &["vm", "step"]
                ),
                "vmbw_policy_switches_total"
            ),
            errors: reg!(
                IntCounterVec::new(
                    Opts::new("vmbw_errors_total", "Errors per subsystem."),
                    &["subsystem"]
                ),
                "vmbw_errors_total"
            ),
            netlink_requests: reg!(
                IntCounter::new(
                    "vmbw_netlink_requests_total",
                    "rtnetlink requests the agent sent (qdisc and class changes, dumps)."
                ),
                "vmbw_netlink_requests_total"
            ),
            loop_seconds: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "vmbw_control_loop_duration_seconds",
                        "Time one control-loop tick takes."
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0
                    ]),
                ),
                "vmbw_control_loop_duration_seconds"
            ),
            sample_to_enforce_seconds: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "vmbw_sample_to_enforce_seconds",
                        "From a QEMU iteration sample to its class rates in the kernel."
                    )
                    .buckets(vec![
                        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0
                    ]),
                ),
                "vmbw_sample_to_enforce_seconds"
            ),
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(MetricsError::Encode)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// One (vm, class, direction)'s datapath counters and its rate over
    /// the last tick.
    pub fn class_traffic(&self, vm: &str, cl: u32, d: Direction, total: &Counter, rate: f64) {
        let labels = [vm, class::name(cl), d.as_str()];
        Metrics::set_total(&self.bytes.with_label_values(&labels), total.bytes);
        Metrics::set_total(&self.packets.with_label_values(&labels), total.packets);
        self.throughput.with_label_values(&labels).set(rate);
    }

    /// A VM's allocation as decided (0 for what the decision leaves open).
    pub fn allocation(&self, d: &VmDecision) {
        let vm = d.name.as_str();
        let set = |kind: &str, v: f64| self.allocation.with_label_values(&[vm, kind]).set(v);
        set("guarantee", d.migration_rate.unwrap_or(0.0));
        set("ceiling", d.migration_ceil.unwrap_or(0.0));
        set("reservation", d.app_reserve);
        if let Some(f) = &d.published_forecast() {
            self.converging
                .with_label_values(&[vm])
                .set(if f.converging() { 1.0 } else { 0.0 });
            match f.eta_s {
                Some(eta) => self.eta.with_label_values(&[vm]).set(eta),
                None => {
                    let _ = self.eta.remove_label_values(&[vm]);
                }
            }
        }
    }

    /// Drops a VM's forecast series once its migration ended.
    pub fn forecast_ended(&self, vm: &str) {
        let _ = self.eta.remove_label_values(&[vm]);
        let _ = self.converging.remove_label_values(&[vm]);
    }

    /// Drops every series of a VM that left the host, so that scrapes
    /// show only the VMs the agent follows.
    pub fn forget_vm(&self, vm: &str) {
        forget(&self.bytes, vm);
        forget(&self.packets, vm);
        forget(&self.throughput, vm);
        forget(&self.dirty_pages, vm);
        forget(&self.allocation, vm);
        forget(&self.remaining, vm);
        forget(&self.iteration, vm);
        forget(&self.expected_downtime, vm);
        forget(&self.eta, vm);
        forget(&self.converging, vm);
        forget(&self.policy_switches, vm);
    }

    /// What a VM's application was promised (`reserve_mbit`), bytes/s.
    pub fn promised(&self, vm: &str, bytes_per_sec: f64) {
        self.allocation
            .with_label_values(&[vm, "promised"])
            .set(bytes_per_sec);
    }

    /// The dirty pages of a finished iteration, and what was predicted for
    /// it (if anything).
    pub fn dirty_pages(&self, vm: &str, actual: f64, predicted: Option<f64>) {
        self.dirty_pages
            .with_label_values(&[vm, "actual"])
            .set(actual);
        if let Some(p) = predicted {
            self.dirty_pages
                .with_label_values(&[vm, "predicted"])
                .set(p);
        }
    }

    /// A migration's progress after an iteration.
    pub fn migration_progress(
        &self,
        vm: &str,
        remaining_bytes: u64,
        iteration: u32,
        expected_downtime: Option<Duration>,
    ) {
        self.remaining
            .with_label_values(&[vm])
            .set(remaining_bytes as f64);
        self.iteration
            .with_label_values(&[vm])
            .set(f64::from(iteration));
        if let Some(t) = expected_downtime {
            self.expected_downtime
                .with_label_values(&[vm])
                .set(t.as_secs_f64());
        }
    }

    /// An AdaMig escalation step taken for a VM.
    pub fn policy_switch(&self, vm: &str, step: &str) {
        self.policy_switches.with_label_values(&[vm, step]).inc();
    }

    /// An error in `subsystem`.
    pub fn error(&self, subsystem: &str) {
        self.errors.with_label_values(&[subsystem]).inc();
    }

    /// How long one control-loop tick took.
    pub fn tick_took(&self, t: Duration) {
        self.loop_seconds.observe(t.as_secs_f64());
    }

    /// The rtnetlink requests sent so far (a process-wide total).
    pub fn netlink_requests(&self, total: u64) {
        Metrics::set_total(&self.netlink_requests, total);
    }

    /// From a QEMU sample arriving to its class rates being in the kernel.
    pub fn sample_enforced_after(&self, t: Duration) {
        self.sample_to_enforce_seconds.observe(t.as_secs_f64());
    }

    /// Advances a monotonic counter to `total` (kernel counters are totals;
    /// Prometheus counters only go up). A total that went backwards (the
    /// datapath was replaced) resets nothing and adds nothing.
    pub fn set_total(counter: &prometheus::IntCounter, total: u64) {
        let current = counter.get();
        if total > current {
            counter.inc_by(total - current);
        }
    }
}

/// Removes the series of `vec` whose `vm` label is `vm`.
fn forget<T: prometheus::core::MetricVecBuilder>(vec: &prometheus::core::MetricVec<T>, vm: &str) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("vm") == Some(&vm) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names in docs/metrics.md's table, and whether each is
    /// always there (rows saying "only where" are not).
    fn documented() -> std::collections::BTreeMap<String, bool> {
        include_str!("../../docs/metrics.md")
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("| `")?.split_once('`')?;
                Some((name.to_owned(), !rest.contains("only where")))
            })
            .collect()
    }

    #[test]
    fn docs_list_exactly_the_registered_metrics() {
        let m = Metrics::new().expect("metrics");
        // Every family gathers once each of its series has a value.
        let mut d = VmDecision::unenforced("vm1");
        d.enforce(2.5e6, 5e6);
        d.forecast = Some(crate::control::forecast::forecast(50e6, 1e6, 2.5e6, 0.3));
        m.allocation(&d);
        m.class_traffic(
            "vm1",
            class::MIGRATION,
            Direction::Egress,
            &Counter::default(),
            1.0,
        );
        m.dirty_pages("vm1", 1.0, Some(1.0));
        m.migration_progress("vm1", 1, 2, Some(Duration::from_millis(3)));
        m.policy_switch("vm1", "post-copy");
        m.error("config");
        m.tick_took(Duration::from_millis(1));
        m.sample_enforced_after(Duration::from_millis(1));
        m.netlink_requests(1);
        let registered: std::collections::BTreeSet<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        let docs = documented();
        let undocumented: Vec<_> = registered
            .iter()
            .filter(|n| !docs.contains_key(*n))
            .collect();
        let missing: Vec<_> = docs
            .iter()
            .filter(|(n, always)| **always && !registered.contains(*n))
            .collect();
        assert!(
            undocumented.is_empty() && missing.is_empty(),
            "docs/metrics.md: undocumented {undocumented:?}, not exported {missing:?}"
        );
    }

    #[test]
    fn a_vm_that_left_leaves_no_series() {
        let m = Metrics::new().expect("metrics");
        for vm in ["gone", "stays"] {
            Metrics::set_total(&m.bytes.with_label_values(&[vm, "migration", "egress"]), 10);
            m.promised(vm, 1e6);
            m.policy_switch(vm, "post-copy");
            m.migration_progress(vm, 1 << 20, 3, Some(Duration::from_millis(40)));
        }
        m.error("discovery");
        m.forget_vm("gone");
        let text = m.encode().expect("encode");
        assert!(!text.contains("vm=\"gone\""), "{text}");
        for series in [
            "vmbw_vm_bytes_total{class=\"migration\",direction=\"egress\",vm=\"stays\"} 10",
            "vmbw_policy_switches_total{step=\"post-copy\",vm=\"stays\"} 1",
            "vmbw_migration_iteration{vm=\"stays\"} 3",
            "subsystem=\"discovery\"",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn exposes_conventional_names_and_values() {
        let m = Metrics::new().expect("metrics");
        let c = m.bytes.with_label_values(&["vm1", "migration", "egress"]);
        Metrics::set_total(&c, 1000);
        Metrics::set_total(&c, 1500);
        Metrics::set_total(&c, 1200); // backwards: ignored
        let mut d = VmDecision::unenforced("vm1");
        d.enforce(2.5e6, 5e6);
        d.forecast = Some(crate::control::forecast::forecast(50e6, 1e6, 2.5e6, 0.3));
        m.allocation(&d);
        m.promised("vm1", 1.875e6);
        m.policy_switch("vm1", "auto-converge");
        m.tick_took(Duration::from_millis(3));
        let text = m.encode().expect("encode");
        assert!(
            text.contains(
                "vmbw_vm_bytes_total{class=\"migration\",direction=\"egress\",vm=\"vm1\"} 1500"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "vmbw_allocation_bytes_per_second{kind=\"guarantee\",vm=\"vm1\"} 2500000"
            )
        );
        assert!(text.contains("vmbw_policy_switches_total{step=\"auto-converge\",vm=\"vm1\"} 1"));
        assert!(
            text.contains("vmbw_migration_converging{vm=\"vm1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vmbw_migration_eta_seconds{vm=\"vm1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("vmbw_allocation_bytes_per_second{kind=\"promised\",vm=\"vm1\"} 1875000")
        );
        assert!(text.contains(&format!(
            "vmbw_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        // A forecast of "does not converge" drops the ETA series.
        d.forecast = Some(crate::control::forecast::forecast(50e6, 3e6, 2.5e6, 0.3));
        m.allocation(&d);
        let text = m.encode().expect("encode");
        assert!(
            text.contains("vmbw_migration_converging{vm=\"vm1\"} 0"),
            "{text}"
        );
        assert!(!text.contains("vmbw_migration_eta_seconds{"), "{text}");
        m.forecast_ended("vm1");
        let text = m.encode().expect("encode");
        assert!(!text.contains("vmbw_migration_converging{"), "{text}");
        assert!(text.contains("vmbw_control_loop_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("# TYPE vmbw_vm_bytes_total counter"));
    }
}
