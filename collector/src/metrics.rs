//! `/metrics`: the fleet and the collector's own counters in the Prometheus text
//! exposition format 0.0.4, rendered from a fresh fleet snapshot at every scrape.
//!
//! Why not OpenMetrics (what `prometheus-client` writes): an OpenMetrics counter is
//! declared as `# TYPE foo counter` with samples named `foo_total`, and `promtool
//! check metrics` (Debian 12's 2.42, which reads the classic text format) rejects that
//! as a sample without HELP. The classic format is what promtool checks and what every
//! Prometheus server scrapes, so the collector writes it, with a small encoder here.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::clock::unix_seconds;
use crate::engine::EngineStats;
use crate::fleet::{Fleet, Latency, Metric, PressureResource, SourceReport, VmSummary};
use crate::ingest::{IngestStats, Reason};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A sample value.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(u64::from(v))
    }
}

/// Writes families in the text format; every sample of a family follows its header.
#[derive(Debug, Default)]
struct Exposition {
    out: String,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.out.push_str(r"\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str(r"\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        let _ = match value.into() {
            Value::Int(v) => writeln!(self.out, "{v}"),
            Value::Float(v) if v.is_nan() => writeln!(self.out, "NaN"),
            Value::Float(v) if v == f64::INFINITY => writeln!(self.out, "+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => writeln!(self.out, "-Inf"),
            Value::Float(v) => writeln!(self.out, "{v}"),
        };
    }

    /// A family with one sample per VM for which `value` has something.
    fn per_vm<V: Into<Value>>(
        &mut self,
        vms: &[VmSummary],
        name: &str,
        kind: Kind,
        help: &str,
        value: impl Fn(&VmSummary) -> Option<V>,
    ) {
        self.family(name, kind, help);
        for vm in vms {
            if let Some(v) = value(vm) {
                self.sample(name, &[("vm", &vm.id), ("group", &vm.group)], v);
            }
        }
    }

    /// A family with an extra label per VM (e.g. `resource`, `window`).
    fn per_vm_and<V: Into<Value>>(
        &mut self,
        vms: &[VmSummary],
        name: &str,
        help: &str,
        label: &str,
        variants: &[&str],
        value: impl Fn(&VmSummary, &str) -> Option<V>,
    ) {
        self.family(name, Kind::Gauge, help);
        for vm in vms {
            for variant in variants {
                if let Some(v) = value(vm, variant) {
                    self.sample(
                        name,
                        &[("vm", &vm.id), ("group", &vm.group), (label, variant)],
                        v,
                    );
                }
            }
        }
    }
}

fn pressure_of<'a>(vm: &'a VmSummary, resource: &str) -> Option<&'a PressureResource> {
    let pressure = vm.latest.as_ref()?.pressure.as_ref()?;
    match resource {
        "cpu" => pressure.cpu.as_ref(),
        "memory" => pressure.memory.as_ref(),
        "io" => pressure.io.as_ref(),
        _ => None,
    }
}

fn window_mean(vm: &VmSummary, window: &str, metric: Metric) -> Option<f64> {
    match window {
        "1m" => vm.mean_1m.get(metric),
        "5m" => vm.mean_5m.get(metric),
        _ => None,
    }
}

fn psi_metric(resource: &str) -> Option<Metric> {
    match resource {
        "cpu" => Some(Metric::PsiCpuSomeAvg10),
        "memory" => Some(Metric::PsiMemorySomeAvg10),
        "io" => Some(Metric::PsiIoSomeAvg10),
        _ => None,
    }
}

const RESOURCES: &[&str] = &["cpu", "memory", "io"];
const WINDOWS: &[&str] = &["1m", "5m"];

/// Renders every metric at `now`, with the resize engine's counters from `engine`.
pub fn render(fleet: &Fleet, stats: &IngestStats, engine: &EngineStats, now: SystemTime) -> String {
    let vms = fleet.snapshot(now);
    let mut e = Exposition::default();
    use Kind::{Counter, Gauge};

    e.per_vm(
        &vms,
        "rally_vm_up",
        Gauge,
        "1 if the VM reported within ingest.stale_after, else 0.",
        |vm| Some(vm.fresh),
    );
    e.family(
        "rally_vm_info",
        Gauge,
        "Always 1: the VM's hostname and agent version as labels.",
    );
    for vm in &vms {
        if let (Some(hostname), Some(version)) = (&vm.hostname, &vm.agent_version) {
            e.sample(
                "rally_vm_info",
                &[
                    ("vm", &vm.id),
                    ("group", &vm.group),
                    ("hostname", hostname),
                    ("agent_version", version),
                ],
                1u64,
            );
        }
    }
    e.per_vm(
        &vms,
        "rally_vm_last_report_timestamp_seconds",
        Gauge,
        "When the collector applied the VM's latest report (Unix time).",
        |vm| vm.last_report_at.map(unix_seconds),
    );
    e.per_vm(
        &vms,
        "rally_vm_streams",
        Gauge,
        "Open agent streams for the VM.",
        |vm| Some(vm.streams),
    );

    let latest = |vm: &VmSummary, metric: Metric| vm.latest_values.get(metric);
    e.per_vm(
        &vms,
        "rally_vm_cpu_utilization_ratio",
        Gauge,
        "CPU utilization over the last report's interval, (user+nice+system+irq+softirq)/all; steal and iowait excluded.",
        |vm| latest(vm, Metric::CpuUtilization),
    );
    e.per_vm(
        &vms,
        "rally_vm_cpu_steal_ratio",
        Gauge,
        "Share of CPU time the hypervisor took away over the last report's interval.",
        |vm| latest(vm, Metric::CpuSteal),
    );
    e.per_vm(
        &vms,
        "rally_vm_cpu_iowait_ratio",
        Gauge,
        "Share of CPU time spent waiting for I/O over the last report's interval.",
        |vm| latest(vm, Metric::CpuIowait),
    );
    e.per_vm_and(
        &vms,
        "rally_vm_cpu_utilization_mean_ratio",
        "Mean CPU utilization over a window of raw samples.",
        "window",
        WINDOWS,
        |vm, w| window_mean(vm, w, Metric::CpuUtilization),
    );
    e.per_vm_and(
        &vms,
        "rally_vm_cpu_steal_mean_ratio",
        "Mean CPU steal over a window of raw samples.",
        "window",
        WINDOWS,
        |vm, w| window_mean(vm, w, Metric::CpuSteal),
    );
    e.per_vm(
        &vms,
        "rally_vm_vcpus",
        Gauge,
        "Online vCPUs the guest can use.",
        |vm| vm.size.map(|s| s.vcpus),
    );
    e.per_vm(
        &vms,
        "rally_vm_memory_total_bytes",
        Gauge,
        "MemTotal: memory the guest can use.",
        |vm| {
            vm.latest
                .as_ref()
                .and_then(|r| r.memory)
                .map(|m| m.total_bytes)
                .or(vm.size.map(|s| s.memory_bytes))
        },
    );
    e.per_vm(
        &vms,
        "rally_vm_offline_cpus",
        Gauge,
        "CPUs present in the guest but offline: hot-added capacity the guest did not online.",
        |vm| vm.size.map(|s| s.offline_cpus),
    );
    e.per_vm(
        &vms,
        "rally_vm_offline_memory_bytes",
        Gauge,
        "Memory present in the guest but offline (offline memory blocks): hot-added, not onlined.",
        |vm| vm.size.map(|s| s.offline_memory_bytes),
    );
    e.per_vm(
        &vms,
        "rally_vm_memory_available_bytes",
        Gauge,
        "MemAvailable: memory that can be allocated without swapping.",
        |vm| {
            vm.latest
                .as_ref()
                .and_then(|r| r.memory)
                .map(|m| m.available_bytes)
        },
    );
    e.per_vm_and(
        &vms,
        "rally_vm_memory_used_mean_ratio",
        "Mean of (MemTotal - MemAvailable) / MemTotal over a window.",
        "window",
        WINDOWS,
        |vm, w| window_mean(vm, w, Metric::MemoryUsedRatio),
    );
    e.per_vm(
        &vms,
        "rally_vm_swap_total_bytes",
        Gauge,
        "SwapTotal.",
        |vm| {
            vm.latest
                .as_ref()
                .and_then(|r| r.memory)
                .map(|m| m.swap_total_bytes)
        },
    );
    e.per_vm(&vms, "rally_vm_swap_free_bytes", Gauge, "SwapFree.", |vm| {
        vm.latest
            .as_ref()
            .and_then(|r| r.memory)
            .map(|m| m.swap_free_bytes)
    });
    e.per_vm(
        &vms,
        "rally_vm_load1",
        Gauge,
        "1-minute load average.",
        |vm| vm.latest.as_ref().and_then(|r| r.load).map(|l| l.one),
    );
    e.per_vm(
        &vms,
        "rally_vm_load5",
        Gauge,
        "5-minute load average.",
        |vm| vm.latest.as_ref().and_then(|r| r.load).map(|l| l.five),
    );
    e.per_vm(
        &vms,
        "rally_vm_load15",
        Gauge,
        "15-minute load average.",
        |vm| vm.latest.as_ref().and_then(|r| r.load).map(|l| l.fifteen),
    );
    e.per_vm_and(
        &vms,
        "rally_vm_pressure_some_ratio",
        "PSI: share of wall time some task stalled on the resource over the last 10 s (avg10 / 100).",
        "resource",
        RESOURCES,
        |vm, r| pressure_of(vm, r).and_then(|p| p.some).map(|l| l.avg10 / 100.0),
    );
    e.per_vm_and(
        &vms,
        "rally_vm_pressure_full_ratio",
        "PSI: share of wall time all tasks stalled on the resource over the last 10 s (avg10 / 100).",
        "resource",
        RESOURCES,
        |vm, r| pressure_of(vm, r).and_then(|p| p.full).map(|l| l.avg10 / 100.0),
    );
    e.family(
        "rally_vm_pressure_some_mean_ratio",
        Gauge,
        "PSI some avg10 / 100, averaged over a window.",
    );
    for vm in &vms {
        for resource in RESOURCES {
            for window in WINDOWS {
                let value = psi_metric(resource).and_then(|m| window_mean(vm, window, m));
                if let Some(v) = value {
                    e.sample(
                        "rally_vm_pressure_some_mean_ratio",
                        &[
                            ("vm", &vm.id),
                            ("group", &vm.group),
                            ("resource", resource),
                            ("window", window),
                        ],
                        v,
                    );
                }
            }
        }
    }
    request_metrics(&mut e, &vms);
    e.per_vm(
        &vms,
        "rally_vm_reports_total",
        Counter,
        "Reports applied for the VM since the collector started.",
        |vm| Some(vm.counters.received),
    );
    e.per_vm(
        &vms,
        "rally_vm_reports_duplicate_total",
        Counter,
        "Reports that arrived again (replays) and were not applied twice.",
        |vm| Some(vm.counters.duplicates),
    );
    e.per_vm(
        &vms,
        "rally_vm_reports_lost_total",
        Counter,
        "Sequence numbers skipped within an agent run: reports that will never arrive.",
        |vm| Some(vm.counters.lost),
    );
    e.per_vm(
        &vms,
        "rally_vm_agent_dropped_reports_total",
        Counter,
        "Reports the agent says it dropped from its full buffer.",
        |vm| Some(vm.counters.dropped_by_agent),
    );

    e.family(
        "rally_collector_reports_total",
        Counter,
        "Agent reports accepted and applied.",
    );
    e.sample("rally_collector_reports_total", &[], stats.reports());
    e.family(
        "rally_collector_reports_rejected_total",
        Counter,
        "Agent messages and streams rejected, by reason.",
    );
    for reason in Reason::ALL {
        e.sample(
            "rally_collector_reports_rejected_total",
            &[("reason", reason.as_str())],
            stats.rejected(reason),
        );
    }
    e.family(
        "rally_collector_reports_duplicate_total",
        Counter,
        "Reports received again and not applied twice.",
    );
    e.sample(
        "rally_collector_reports_duplicate_total",
        &[],
        stats.duplicates(),
    );
    e.family(
        "rally_collector_reports_lost_total",
        Counter,
        "Sequence numbers skipped within agent runs.",
    );
    e.sample("rally_collector_reports_lost_total", &[], stats.lost());
    e.family(
        "rally_collector_streams",
        Gauge,
        "Agent streams open (past their Hello).",
    );
    e.sample("rally_collector_streams", &[], stats.streams_open());
    e.family(
        "rally_collector_streams_accepted_total",
        Counter,
        "Agent streams whose Hello was accepted.",
    );
    e.sample(
        "rally_collector_streams_accepted_total",
        &[],
        stats.streams_accepted(),
    );
    e.family(
        "rally_collector_vms",
        Gauge,
        "VMs the collector holds in memory.",
    );
    e.sample("rally_collector_vms", &[], vms.len() as u64);
    resize_metrics(&mut e, engine);
    e.out
}

/// Reads one figure of a `T`.
type Pick<T> = fn(&T) -> f64;

/// `percentile` label values of source latency (a `quantile` label is reserved for
/// summaries, which promtool checks for `_sum` and `_count`).
const QUANTILES: &[(&str, Pick<Latency>)] = &[
    ("50", |l| l.p50_seconds),
    ("95", |l| l.p95_seconds),
    ("99", |l| l.p99_seconds),
];

/// Request rates from the agents' web-server sources. Label sets are bounded: at most
/// `MAX_SOURCES` sources per VM (checked at ingest), five status classes, three
/// quantiles.
fn request_metrics(e: &mut Exposition, vms: &[VmSummary]) {
    use Kind::{Counter, Gauge};
    let latest = |vm: &VmSummary, metric: Metric| vm.latest_values.get(metric);
    e.per_vm(
        vms,
        "rally_vm_requests_per_second",
        Gauge,
        "Web requests per second over the last report's interval, summed over the VM's request sources (absent without a source with a rate).",
        |vm| latest(vm, Metric::RequestsPerSecond),
    );
    e.per_vm_and(
        vms,
        "rally_vm_requests_per_second_mean",
        "Mean web requests per second over a window.",
        "window",
        WINDOWS,
        |vm, w| window_mean(vm, w, Metric::RequestsPerSecond),
    );
    e.per_vm(
        vms,
        "rally_vm_requests_per_second_per_vcpu",
        Gauge,
        "Web requests per second divided by the VM's vCPUs.",
        |vm| latest(vm, Metric::RequestsPerSecondPerVcpu),
    );
    e.per_vm(
        vms,
        "rally_vm_server_error_ratio",
        Gauge,
        "5xx responses over all responses in the last interval (access-log sources).",
        |vm| latest(vm, Metric::ServerErrorRatio),
    );
    e.per_vm(
        vms,
        "rally_vm_request_latency_p95_seconds",
        Gauge,
        "The highest p95 request latency among the VM's access-log sources over the last interval.",
        |vm| latest(vm, Metric::LatencyP95Seconds),
    );
    e.per_vm(
        vms,
        "rally_vm_php_fpm_listen_queue",
        Gauge,
        "Requests waiting in php-fpm listen queues (summed over pools).",
        |vm| latest(vm, Metric::PhpFpmListenQueue),
    );

    let sources = |vm: &VmSummary| -> Vec<SourceReport> {
        vm.latest
            .as_ref()
            .map(|r| r.sources.clone())
            .unwrap_or_default()
    };
    let per_source = |e: &mut Exposition,
                      name: &str,
                      kind: Kind,
                      help: &str,
                      value: &dyn Fn(&SourceReport) -> Option<f64>| {
        e.family(name, kind, help);
        for vm in vms {
            for s in sources(vm) {
                if let Some(v) = value(&s) {
                    e.sample(
                        name,
                        &[
                            ("vm", &vm.id),
                            ("group", &vm.group),
                            ("source", &s.name),
                            ("kind", s.kind.name()),
                        ],
                        v,
                    );
                }
            }
        }
    };
    per_source(
        e,
        "rally_vm_source_up",
        Gauge,
        "1 if the agent could read the request source at its last sample, else 0.",
        &|s| Some(f64::from(u8::from(s.up))),
    );
    per_source(
        e,
        "rally_vm_source_down_total",
        Counter,
        "Failed readings of the request source since its agent started.",
        &|s| Some(s.down_total as f64),
    );
    per_source(
        e,
        "rally_vm_source_requests_per_second",
        Gauge,
        "Requests per second of one source over its last interval.",
        &|s| s.requests_per_second,
    );
    per_source(
        e,
        "rally_vm_source_busy",
        Gauge,
        "What the source is serving now: nginx connections reading or writing, Apache busy workers, php-fpm active processes.",
        &|s| s.busy.map(|b| b as f64),
    );
    per_source(
        e,
        "rally_vm_source_php_fpm_listen_queue",
        Gauge,
        "Requests waiting in the php-fpm pool's listen queue.",
        &|s| s.php_fpm.map(|p| p.listen_queue as f64),
    );
    per_source(
        e,
        "rally_vm_source_php_fpm_idle_processes",
        Gauge,
        "Idle php-fpm workers of the pool.",
        &|s| s.php_fpm.map(|p| p.idle_processes as f64),
    );

    let name = "rally_vm_source_responses_per_second";
    e.family(
        name,
        Gauge,
        "Responses per second by status class over the source's last interval (access logs).",
    );
    for vm in vms {
        for s in sources(vm) {
            let (Some(statuses), Some(secs)) = (
                s.statuses.filter(|_| s.requests_per_second.is_some()),
                Some(s.interval.as_secs_f64()).filter(|d| *d > 0.0),
            ) else {
                continue;
            };
            for (class, n) in statuses.by_class() {
                e.sample(
                    name,
                    &[
                        ("vm", &vm.id),
                        ("group", &vm.group),
                        ("source", &s.name),
                        ("class", class),
                    ],
                    n as f64 / secs,
                );
            }
        }
    }
    let name = "rally_vm_source_request_latency_seconds";
    e.family(
        name,
        Gauge,
        "Request latency quantiles over the source's last interval, from a histogram with 10 % buckets (access logs with a request time).",
    );
    for vm in vms {
        for s in sources(vm) {
            let Some(latency) = s.latency else { continue };
            for (quantile, value) in QUANTILES {
                e.sample(
                    name,
                    &[
                        ("vm", &vm.id),
                        ("group", &vm.group),
                        ("source", &s.name),
                        ("percentile", quantile),
                    ],
                    value(&latency),
                );
            }
        }
    }
}

/// The resize engine's families. Counters have a sample only once something happened
/// (no invented zeros for label sets that never occurred); gauges one per resized group.
fn resize_metrics(e: &mut Exposition, engine: &EngineStats) {
    use Kind::{Counter, Gauge};
    e.family(
        "rally_resize_requests_total",
        Counter,
        "Resize requests that got a final word, by outcome (accepted, rejected, gave_up, dry_run).",
    );
    for ((group, vm, direction, outcome), n) in engine.requests() {
        e.sample(
            "rally_resize_requests_total",
            &[
                ("group", &group),
                ("vm", &vm),
                ("direction", direction),
                ("outcome", outcome),
            ],
            n,
        );
    }
    e.family(
        "rally_resize_verifications_total",
        Counter,
        "Resizes verified from the agent's reported size, or failed (not verified in time).",
    );
    for ((group, result), n) in engine.verifications() {
        e.sample(
            "rally_resize_verifications_total",
            &[("group", &group), ("result", result)],
            n,
        );
    }
    let groups: Vec<_> = engine.groups().into_iter().filter(|g| g.resizes).collect();
    e.family(
        "rally_group_paused",
        Gauge,
        "1 while the group is paused (by an operator or the circuit breaker).",
    );
    for g in &groups {
        e.sample("rally_group_paused", &[("group", &g.group)], g.paused);
    }
    e.family(
        "rally_group_circuit_open",
        Gauge,
        "1 while the circuit breaker holds the group paused after failed resizes.",
    );
    for g in &groups {
        e.sample(
            "rally_group_circuit_open",
            &[("group", &g.group)],
            g.circuit_open,
        );
    }
    e.family(
        "rally_group_consecutive_failed_resizes",
        Gauge,
        "Failed or unverified resizes in a row (the circuit breaker's count).",
    );
    for g in &groups {
        e.sample(
            "rally_group_consecutive_failed_resizes",
            &[("group", &g.group)],
            g.consecutive_failures,
        );
    }
    e.family(
        "rally_group_resizes_in_flight",
        Gauge,
        "Resizes sent and waiting for the agent to report the new size.",
    );
    for g in &groups {
        e.sample(
            "rally_group_resizes_in_flight",
            &[("group", &g.group)],
            u64::from(g.in_flight.is_some()),
        );
    }
    e.family(
        "rally_resize_skips",
        Gauge,
        "Why VMs got no resize at the last evaluation: notes per reason.",
    );
    for g in &groups {
        let mut counts = std::collections::BTreeMap::<&str, u64>::new();
        for s in &g.skips {
            *counts.entry(s.kind).or_default() += 1;
        }
        for (reason, n) in counts {
            e.sample(
                "rally_resize_skips",
                &[("group", &g.group), ("reason", reason)],
                n,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_values_formatted() {
        let mut e = Exposition::default();
        e.family("x", Kind::Gauge, "Help with \\ and\nnewline.");
        e.sample("x", &[("a", "q\"uo\\te\nd")], 0.25);
        e.sample("x", &[], f64::NAN);
        e.sample("x", &[], f64::INFINITY);
        e.sample("x", &[], 1u64 << 40);
        assert_eq!(
            e.out,
            "# HELP x Help with \\\\ and\\nnewline.\n# TYPE x gauge\nx{a=\"q\\\"uo\\\\te\\nd\"} 0.25\nx NaN\nx +Inf\nx 1099511627776\n"
        );
    }

    /// A fleet of several VMs in two groups plus an ungrouped one: with and without
    /// PSI, one configured VM that never reported, a hostname that needs escaping.
    fn busy_fleet(now: SystemTime) -> (Fleet, IngestStats) {
        use crate::config::UnknownVms;
        use crate::fleet::{
            CpuShares, FleetSettings, Hello, LoadAverage, Memory, Pressure, PressureLine, Report,
            RunKey, VmSize,
        };
        use std::time::Duration;

        let fleet = Fleet::new(FleetSettings {
            stale_after: Duration::from_secs(20),
            forget_after: Duration::from_secs(86_400),
            unknown_vms: UnknownVms::Ungrouped,
            max_vms: 100,
            groups: vec![
                (
                    "web".into(),
                    vec!["web-1".into(), "web-2".into(), "web-3".into()],
                ),
                ("db".into(), vec!["db-1".into()]),
            ],
        });
        for (i, vm) in ["web-1", "web-2", "db-1", "cache-1"].iter().enumerate() {
            let hello = Hello {
                vm_id: vm.to_string(),
                hostname: format!("{vm} \"the\" \\box\\"),
                agent_version: "0.1.0".into(),
                run: RunKey {
                    boot_id: "boot".into(),
                    run_id: i as u64,
                },
                labels: Default::default(),
                size: Some(VmSize {
                    vcpus: 2,
                    memory_bytes: 4 << 30,
                    // db-1 was given 2 CPUs and 1 GiB more and left them offline.
                    offline_cpus: if *vm == "db-1" { 2 } else { 0 },
                    offline_memory_bytes: if *vm == "db-1" { 1 << 30 } else { 0 },
                }),
                interval: Some(Duration::from_secs(5)),
            };
            let session = fleet.hello(&hello, now).unwrap();
            for seq in 1..=3u64 {
                let line = PressureLine {
                    avg10: 3.5,
                    ..Default::default()
                };
                let report = Report {
                    seq: seq + u64::from(i == 1) * seq, // web-2 skips: a gap
                    timestamp: now,
                    interval: Duration::from_secs(5),
                    size: hello.size,
                    cpu: Some(CpuShares {
                        utilization: 0.25 * (i + 1) as f64,
                        steal: 0.01,
                        ..Default::default()
                    }),
                    cores: vec![],
                    load: Some(LoadAverage {
                        one: 0.5,
                        five: 0.4,
                        fifteen: 0.3,
                    }),
                    memory: Some(Memory {
                        total_bytes: 4 << 30,
                        available_bytes: 1 << 30,
                        swap_total_bytes: 1 << 30,
                        swap_free_bytes: 1 << 29,
                    }),
                    pressure: (i % 2 == 0).then_some(Pressure {
                        cpu: Some(crate::fleet::PressureResource {
                            some: Some(line),
                            full: None,
                        }),
                        memory: Some(crate::fleet::PressureResource {
                            some: Some(line),
                            full: Some(line),
                        }),
                        io: None,
                    }),
                    net: vec![],
                    disks: vec![],
                    filesystems: vec![],
                    dropped: 0,
                    sources: if i == 0 { web_sources() } else { vec![] },
                };
                session.apply(report, now);
            }
        }
        let stats = IngestStats::default();
        stats.reject(Reason::Oversized);
        stats
            .reports
            .fetch_add(12, std::sync::atomic::Ordering::Relaxed);
        (fleet, stats)
    }

    fn web_sources() -> Vec<SourceReport> {
        use crate::fleet::{PhpFpm, SourceKind, StatusClasses};
        let source = |name: &str, kind| SourceReport {
            name: name.into(),
            kind,
            up: true,
            down_total: 0,
            interval: std::time::Duration::from_secs(5),
            requests: 0,
            requests_per_second: None,
            statuses: None,
            latency: None,
            busy: None,
            php_fpm: None,
        };
        vec![
            SourceReport {
                requests: 500,
                requests_per_second: Some(100.0),
                statuses: Some(StatusClasses {
                    success: 490,
                    server_error: 10,
                    ..Default::default()
                }),
                latency: Some(Latency {
                    count: 500,
                    p50_seconds: 0.01,
                    p95_seconds: 0.2,
                    p99_seconds: 0.5,
                }),
                ..source("shop-log", SourceKind::AccessLog)
            },
            SourceReport {
                requests: 250,
                requests_per_second: Some(50.0),
                busy: Some(3),
                php_fpm: Some(PhpFpm {
                    listen_queue: 4,
                    ..Default::default()
                }),
                ..source("fpm", SourceKind::PhpFpm)
            },
            SourceReport {
                up: false,
                down_total: 2,
                ..source("nginx", SourceKind::Nginx)
            },
        ]
    }

    #[test]
    fn promtool_accepts_a_scrape_of_several_vms() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let (fleet, stats) = busy_fleet(now);
        let text = render(&fleet, &stats, &EngineStats::default(), now);
        // The contract's names are all there.
        for needle in [
            "rally_vm_up{vm=\"web-1\",group=\"web\"} 1",
            "rally_vm_up{vm=\"web-3\",group=\"web\"} 0",
            "rally_vm_up{vm=\"cache-1\",group=\"ungrouped\"} 1",
            "rally_vm_cpu_utilization_ratio{vm=\"db-1\",group=\"db\"} 0.75",
            "rally_vm_cpu_steal_ratio{vm=\"web-1\",group=\"web\"} 0.01",
            "rally_vm_vcpus{vm=\"web-1\",group=\"web\"} 2",
            "rally_vm_memory_total_bytes{vm=\"web-1\",group=\"web\"} 4294967296",
            "rally_vm_offline_cpus{vm=\"web-1\",group=\"web\"} 0",
            "rally_vm_offline_cpus{vm=\"db-1\",group=\"db\"} 2",
            "rally_vm_offline_memory_bytes{vm=\"db-1\",group=\"db\"} 1073741824",
            "rally_vm_memory_available_bytes{vm=\"web-1\",group=\"web\"} 1073741824",
            "rally_vm_last_report_timestamp_seconds{vm=\"web-1\",group=\"web\"} 1700000000",
            "rally_vm_reports_lost_total{vm=\"web-2\",group=\"web\"} 2",
            "rally_vm_pressure_some_ratio{vm=\"web-1\",group=\"web\",resource=\"cpu\"} 0.035",
            "hostname=\"web-1 \\\"the\\\" \\\\box\\\\\"",
            "rally_collector_reports_total 12",
            "rally_collector_reports_rejected_total{reason=\"oversized\"} 1",
            "rally_collector_reports_rejected_total{reason=\"no_hello\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        for needle in [
            "rally_vm_requests_per_second{vm=\"web-1\",group=\"web\"} 150",
            "rally_vm_requests_per_second_per_vcpu{vm=\"web-1\",group=\"web\"} 75",
            "rally_vm_server_error_ratio{vm=\"web-1\",group=\"web\"} 0.02",
            "rally_vm_php_fpm_listen_queue{vm=\"web-1\",group=\"web\"} 4",
            "rally_vm_source_up{vm=\"web-1\",group=\"web\",source=\"nginx\",kind=\"nginx\"} 0",
            "rally_vm_source_down_total{vm=\"web-1\",group=\"web\",source=\"nginx\",kind=\"nginx\"} 2",
            "rally_vm_source_requests_per_second{vm=\"web-1\",group=\"web\",source=\"shop-log\",kind=\"access_log\"} 100",
            "rally_vm_source_responses_per_second{vm=\"web-1\",group=\"web\",source=\"shop-log\",class=\"5xx\"} 2",
            "rally_vm_source_request_latency_seconds{vm=\"web-1\",group=\"web\",source=\"shop-log\",percentile=\"95\"} 0.2",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // A VM without sources has no request figures (absent, not 0).
        assert!(!text.contains("rally_vm_requests_per_second{vm=\"db-1\""));

        // promtool must be installed: a missing promtool fails the test.
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package `prometheus`) must be installed for this test");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics failed:\n{}{}\n---\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool warned"
        );
    }
}
