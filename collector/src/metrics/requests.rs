//! The web-server families: request rates, status classes and latency from the agents'
//! sources.

use crate::fleet::{Latency, Metric, SourceReport, VmSummary};

use super::encoder::{Exposition, Kind};
use super::vm::{WINDOWS, window_mean};

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
pub(super) fn request_metrics(e: &mut Exposition, vms: &[VmSummary]) {
    use Kind::{Counter, Gauge};
    let latest = |vm: &VmSummary, metric: Metric| vm.latest_values.get(metric);
    e.per_vm(
        vms,
        "rally_vm_requests_per_second",
        Gauge,
        "Web requests per second over the last report's interval, summed over the VM's request sources that count (not counted_by another; absent without one with a rate).",
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
        "rally_vm_requests_per_second divided by the VM's vCPUs.",
        |vm| latest(vm, Metric::RequestsPerSecondPerVcpu),
    );
    e.per_vm(
        vms,
        "rally_vm_server_error_ratio",
        Gauge,
        "5xx responses over all responses in the last interval (access-log sources; one counted_by another only when that other has no status classes).",
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
