//! The metrics a rule or a target can watch, and the windows they are read over.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A per-VM metric the policy can act on. Every one may be absent (a kernel without PSI, a
/// VM without a request-rate source): an absent metric neither fires a rule nor counts as
/// low use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// CPU utilization 0..1: (user + nice + system + irq + softirq) / all jiffies; steal and
    /// iowait excluded.
    CpuUtilization,
    /// Memory used ratio 0..1: 1 − MemAvailable / MemTotal.
    MemoryUsedRatio,
    /// Memory available ratio 0..1: MemAvailable / MemTotal (low is busy).
    MemoryAvailableRatio,
    /// PSI `/proc/pressure/cpu` "some" avg10, as a ratio 0..1.
    PsiCpuSomeAvg10,
    /// PSI `/proc/pressure/memory` "some" avg10, as a ratio 0..1.
    PsiMemorySomeAvg10,
    /// Web requests per second divided by the VM's vCPUs (absent until a request-rate
    /// source reports).
    RequestsPerSecondPerVcpu,
    /// Web requests per second, summed over the VM's request sources.
    RequestsPerSecond,
    /// 5xx responses over all responses, 0..1 (access-log sources).
    ServerErrorRatio,
    /// p95 request latency in seconds (the highest among access-log sources with a
    /// request time).
    LatencyP95Seconds,
    /// Requests waiting in php-fpm's listen queue (summed over pools): PHP workers, not
    /// CPU, are the bottleneck when it is above 0.
    PhpFpmListenQueue,
}

impl Metric {
    /// Every metric, in a fixed order.
    pub const ALL: [Metric; 10] = [
        Metric::CpuUtilization,
        Metric::MemoryUsedRatio,
        Metric::MemoryAvailableRatio,
        Metric::PsiCpuSomeAvg10,
        Metric::PsiMemorySomeAvg10,
        Metric::RequestsPerSecondPerVcpu,
        Metric::RequestsPerSecond,
        Metric::ServerErrorRatio,
        Metric::LatencyP95Seconds,
        Metric::PhpFpmListenQueue,
    ];

    /// The config/evidence name (`cpu_utilization`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuUtilization => "cpu_utilization",
            Metric::MemoryUsedRatio => "memory_used_ratio",
            Metric::MemoryAvailableRatio => "memory_available_ratio",
            Metric::PsiCpuSomeAvg10 => "psi_cpu_some_avg10",
            Metric::PsiMemorySomeAvg10 => "psi_memory_some_avg10",
            Metric::RequestsPerSecondPerVcpu => "requests_per_second_per_vcpu",
            Metric::RequestsPerSecond => "requests_per_second",
            Metric::ServerErrorRatio => "server_error_ratio",
            Metric::LatencyP95Seconds => "latency_p95_seconds",
            Metric::PhpFpmListenQueue => "php_fpm_listen_queue",
        }
    }

    /// Whether a higher value means a busier VM. Only `memory_available_ratio` is the
    /// other way round: its rules fire when the value drops *below* the threshold.
    pub fn higher_is_busier(self) -> bool {
        !matches!(self, Metric::MemoryAvailableRatio)
    }

    /// Which capacity a target on this metric scales, if target tracking makes sense for
    /// it (a metric that falls in proportion to added capacity).
    pub fn tracked_capacity(self) -> Option<Capacity> {
        match self {
            Metric::CpuUtilization | Metric::RequestsPerSecondPerVcpu => Some(Capacity::Vcpus),
            Metric::MemoryUsedRatio => Some(Capacity::Memory),
            // Requests per second do not fall when a VM grows (the same customers come),
            // nor do errors, latency or php-fpm's queue in proportion: rules only.
            Metric::MemoryAvailableRatio
            | Metric::PsiCpuSomeAvg10
            | Metric::PsiMemorySomeAvg10
            | Metric::RequestsPerSecond
            | Metric::ServerErrorRatio
            | Metric::LatencyP95Seconds
            | Metric::PhpFpmListenQueue => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The capacity dimension a target-tracking metric falls with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// vCPUs.
    Vcpus,
    /// Memory bytes.
    Memory,
}

/// The span a rule reads its metric over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Window {
    /// The latest report's value (one report interval).
    #[serde(rename = "last")]
    Last,
    /// The mean over the last minute.
    #[serde(rename = "1m")]
    OneMinute,
    /// The mean over the last five minutes.
    #[serde(rename = "5m")]
    FiveMinutes,
}

impl Window {
    /// Length of a mean window (`None` for [`Window::Last`]).
    pub fn duration(self) -> Option<Duration> {
        match self {
            Window::Last => None,
            Window::OneMinute => Some(Duration::from_secs(60)),
            Window::FiveMinutes => Some(Duration::from_secs(300)),
        }
    }

    /// The config/evidence name (`last`, `1m`, `5m`).
    pub fn name(self) -> &'static str {
        match self {
            Window::Last => "last",
            Window::OneMinute => "1m",
            Window::FiveMinutes => "5m",
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
