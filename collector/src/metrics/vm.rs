//! The per-VM families: liveness and identity, CPU, memory, pressure, load, disks,
//! network, and the VM's report counters.

use crate::clock::unix_seconds;
use crate::fleet::{Metric, PressureResource, VmSummary};

use super::encoder::{Exposition, Kind};

pub(super) fn pressure_of<'a>(vm: &'a VmSummary, resource: &str) -> Option<&'a PressureResource> {
    let pressure = vm.latest.as_ref()?.pressure.as_ref()?;
    match resource {
        "cpu" => pressure.cpu.as_ref(),
        "memory" => pressure.memory.as_ref(),
        "io" => pressure.io.as_ref(),
        _ => None,
    }
}

pub(super) fn window_mean(vm: &VmSummary, window: &str, metric: Metric) -> Option<f64> {
    match window {
        "1m" => vm.mean_1m.get(metric),
        "5m" => vm.mean_5m.get(metric),
        _ => None,
    }
}

pub(super) fn psi_metric(resource: &str) -> Option<Metric> {
    match resource {
        "cpu" => Some(Metric::PsiCpuSomeAvg10),
        "memory" => Some(Metric::PsiMemorySomeAvg10),
        "io" => Some(Metric::PsiIoSomeAvg10),
        _ => None,
    }
}

pub(super) const RESOURCES: &[&str] = &["cpu", "memory", "io"];
pub(super) const WINDOWS: &[&str] = &["1m", "5m"];

/// Every per-VM family but the web servers' and the report counters.
pub(super) fn vm_metrics(e: &mut Exposition, vms: &[VmSummary]) {
    use Kind::Gauge;

    e.per_vm(
        vms,
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
    for vm in vms {
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
        vms,
        "rally_vm_last_report_timestamp_seconds",
        Gauge,
        "When the collector applied the VM's latest report (Unix time).",
        |vm| vm.last_report_at.map(unix_seconds),
    );
    e.per_vm(
        vms,
        "rally_vm_streams",
        Gauge,
        "Open agent streams for the VM.",
        |vm| Some(vm.streams),
    );

    let latest = |vm: &VmSummary, metric: Metric| vm.latest_values.get(metric);
    e.per_vm(
        vms,
        "rally_vm_cpu_utilization_ratio",
        Gauge,
        "CPU utilization over the last report's interval, (user+nice+system+irq+softirq)/all; steal and iowait excluded.",
        |vm| latest(vm, Metric::CpuUtilization),
    );
    e.per_vm(
        vms,
        "rally_vm_cpu_steal_ratio",
        Gauge,
        "Share of CPU time the hypervisor took away over the last report's interval.",
        |vm| latest(vm, Metric::CpuSteal),
    );
    e.per_vm(
        vms,
        "rally_vm_cpu_iowait_ratio",
        Gauge,
        "Share of CPU time spent waiting for I/O over the last report's interval.",
        |vm| latest(vm, Metric::CpuIowait),
    );
    e.per_vm_and(
        vms,
        "rally_vm_cpu_utilization_mean_ratio",
        "Mean CPU utilization over a window of raw samples.",
        "window",
        WINDOWS,
        |vm, w| window_mean(vm, w, Metric::CpuUtilization),
    );
    e.per_vm_and(
        vms,
        "rally_vm_cpu_steal_mean_ratio",
        "Mean CPU steal over a window of raw samples.",
        "window",
        WINDOWS,
        |vm, w| window_mean(vm, w, Metric::CpuSteal),
    );
    e.per_vm(
        vms,
        "rally_vm_vcpus",
        Gauge,
        "Online vCPUs the guest can use.",
        |vm| vm.size.map(|s| s.vcpus),
    );
    e.per_vm(
        vms,
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
        vms,
        "rally_vm_offline_cpus",
        Gauge,
        "CPUs present in the guest but offline: hot-added capacity the guest did not online.",
        |vm| vm.size.map(|s| s.offline_cpus),
    );
    e.per_vm(
        vms,
        "rally_vm_offline_memory_bytes",
        Gauge,
        "Memory present in the guest but offline (offline memory blocks): hot-added, not onlined.",
        |vm| vm.size.map(|s| s.offline_memory_bytes),
    );
    e.per_vm(
        vms,
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
        vms,
        "rally_vm_memory_used_mean_ratio",
        "Mean of (MemTotal - MemAvailable) / MemTotal over a window.",
        "window",
        WINDOWS,
        |vm, w| window_mean(vm, w, Metric::MemoryUsedRatio),
    );
    e.per_vm(
        vms,
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
    e.per_vm(vms, "rally_vm_swap_free_bytes", Gauge, "SwapFree.", |vm| {
        vm.latest
            .as_ref()
            .and_then(|r| r.memory)
            .map(|m| m.swap_free_bytes)
    });
    e.per_vm(
        vms,
        "rally_vm_load1",
        Gauge,
        "1-minute load average.",
        |vm| vm.latest.as_ref().and_then(|r| r.load).map(|l| l.one),
    );
    e.per_vm(
        vms,
        "rally_vm_load5",
        Gauge,
        "5-minute load average.",
        |vm| vm.latest.as_ref().and_then(|r| r.load).map(|l| l.five),
    );
    e.per_vm(
        vms,
        "rally_vm_load15",
        Gauge,
        "15-minute load average.",
        |vm| vm.latest.as_ref().and_then(|r| r.load).map(|l| l.fifteen),
    );
    e.per_vm_and(
        vms,
        "rally_vm_pressure_some_ratio",
        "PSI: share of wall time some task stalled on the resource over the last 10 s (avg10 / 100).",
        "resource",
        RESOURCES,
        |vm, r| pressure_of(vm, r).and_then(|p| p.some).map(|l| l.avg10 / 100.0),
    );
    e.per_vm_and(
        vms,
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
    for vm in vms {
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
}

/// The VM's report counters since the collector started.
pub(super) fn report_counters(e: &mut Exposition, vms: &[VmSummary]) {
    use Kind::Counter;

    e.per_vm(
        vms,
        "rally_vm_reports_total",
        Counter,
        "Reports applied for the VM since the collector started.",
        |vm| Some(vm.counters.received),
    );
    e.per_vm(
        vms,
        "rally_vm_reports_duplicate_total",
        Counter,
        "Reports that arrived again (replays) and were not applied twice.",
        |vm| Some(vm.counters.duplicates),
    );
    e.per_vm(
        vms,
        "rally_vm_reports_lost_total",
        Counter,
        "Sequence numbers skipped within an agent run: reports that will never arrive.",
        |vm| Some(vm.counters.lost),
    );
    e.per_vm(
        vms,
        "rally_vm_agent_dropped_reports_total",
        Counter,
        "Reports the agent says it dropped from its full buffer.",
        |vm| Some(vm.counters.dropped_by_agent),
    );
    e.per_vm(
        vms,
        "rally_vm_agent_reconnects_total",
        Counter,
        "Times the VM's agent tried a new stream to this collector after a failed one.",
        |vm| Some(vm.counters.agent_reconnects),
    );
    e.per_vm(
        vms,
        "rally_vm_agent_buffered_reports",
        Kind::Gauge,
        "Reports in the agent's buffer for this collector when it sent its last report.",
        |vm| vm.latest.as_ref().map(|r| r.agent.buffered),
    );
}
