//! The metrics a rule or a target can watch, and the windows they are read over.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A per-VM metric the policy can act on. Every one may be absent (a kernel without PSI, a
/// VM without a request-rate source): an absent metric neither fires a rule nor counts as
/// low use.
///
/// A rule's `threshold` and `clear` and a target's `target` must lie in the metric's
/// range ([`Metric::range`]); `check-config` refuses a value outside it (a rule that could
/// never fire, or never clear).
///
/// | metric                         | unit                  | range   |
/// |--------------------------------|-----------------------|---------|
/// | `cpu_utilization`              | ratio                 | 0 to 1  |
/// | `memory_used_ratio`            | ratio                 | 0 to 1  |
/// | `memory_available_ratio`       | ratio                 | 0 to 1  |
/// | `psi_cpu_some_avg10`           | ratio of time stalled | 0 to 1  |
/// | `psi_memory_some_avg10`        | ratio of time stalled | 0 to 1  |
/// | `requests_per_second_per_vcpu` | requests/s per vCPU   | ≥ 0     |
/// | `requests_per_second`          | requests/s            | ≥ 0     |
/// | `server_error_ratio`           | ratio                 | 0 to 1  |
/// | `latency_p95_seconds`          | seconds               | ≥ 0     |
/// | `php_fpm_listen_queue`         | requests (a count)    | ≥ 0     |
///
/// The kernel writes PSI's avg10 as a percentage and the agent sends it so; the collector
/// divides it by 100, so a PSI threshold is written as a ratio (`0.20` for 20 %).
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
    /// PSI `/proc/pressure/cpu` "some" avg10, as a ratio 0..1 (the kernel's percentage / 100).
    PsiCpuSomeAvg10,
    /// PSI `/proc/pressure/memory` "some" avg10, as a ratio 0..1 (the kernel's percentage
    /// / 100).
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

    /// The unit its values are in (the table above).
    pub fn unit(self) -> &'static str {
        match self {
            Metric::CpuUtilization
            | Metric::MemoryUsedRatio
            | Metric::MemoryAvailableRatio
            | Metric::ServerErrorRatio => "ratio",
            Metric::PsiCpuSomeAvg10 | Metric::PsiMemorySomeAvg10 => "ratio of time stalled",
            Metric::RequestsPerSecondPerVcpu => "requests/s per vCPU",
            Metric::RequestsPerSecond => "requests/s",
            Metric::LatencyP95Seconds => "seconds",
            Metric::PhpFpmListenQueue => "requests (a count)",
        }
    }

    /// The values it can take: 0..=1 for a ratio, 0..=∞ for a rate, a time or a count.
    pub fn range(self) -> RangeInclusive<f64> {
        match self {
            Metric::CpuUtilization
            | Metric::MemoryUsedRatio
            | Metric::MemoryAvailableRatio
            | Metric::PsiCpuSomeAvg10
            | Metric::PsiMemorySomeAvg10
            | Metric::ServerErrorRatio => 0.0..=1.0,
            Metric::RequestsPerSecondPerVcpu
            | Metric::RequestsPerSecond
            | Metric::LatencyP95Seconds
            | Metric::PhpFpmListenQueue => 0.0..=f64::INFINITY,
        }
    }

    /// Checks that `value`, written in the config key `field`, lies in the range.
    pub fn check(self, field: &'static str, value: f64) -> Result<(), OutOfRange> {
        if value.is_finite() && self.range().contains(&value) {
            Ok(())
        } else {
            Err(OutOfRange {
                field,
                value,
                metric: self,
            })
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

/// A rule's or target's value outside its metric's range.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{value} is outside the range of {metric} ({}, {})", describe(metric.range()), metric.unit())]
pub struct OutOfRange {
    /// The key holding the value (`threshold`, `clear`, `target`).
    pub field: &'static str,
    /// The value.
    pub value: f64,
    /// The metric it is compared with.
    pub metric: Metric,
}

/// "0 to 1" or "≥ 0".
fn describe(range: RangeInclusive<f64>) -> String {
    if range.end().is_finite() {
        format!("{} to {}", range.start(), range.end())
    } else {
        format!("≥ {}", range.start())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::group::{GroupPolicy, PolicyError};
    use crate::ladder::Rung;
    use crate::rule::Rule;
    use crate::target::Target;

    fn policy() -> GroupPolicy {
        GroupPolicy::with_ladder(vec![Rung {
            name: "S".into(),
            vcpus: 1,
            memory_bytes: 1 << 30,
            oktawave_type: None,
        }])
    }

    fn rule(metric: Metric, threshold: f64, clear: Option<f64>) -> Rule {
        Rule {
            metric,
            window: Window::OneMinute,
            threshold,
            clear,
            hold_for: Duration::ZERO,
        }
    }

    #[test]
    fn thresholds_and_targets_must_lie_in_the_metric_range() {
        use Metric as M;
        let target = |metric, value| Target {
            metric,
            target: Some(value),
            ..Target::default_memory()
        };
        // (case, rules, targets, the offending key or None when valid)
        type Case = (&'static str, Vec<Rule>, Vec<Target>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (
                "cpu threshold 1.5: a ratio never gets there",
                vec![rule(M::CpuUtilization, 1.5, Some(0.5))],
                vec![],
                Some("rules[0].threshold"),
            ),
            (
                "cpu threshold 1.0: the top of the range is fine",
                vec![rule(M::CpuUtilization, 1.0, Some(0.5))],
                vec![],
                None,
            ),
            (
                "a negative clear",
                vec![rule(M::CpuUtilization, 0.8, Some(-0.1))],
                vec![],
                Some("rules[0].clear"),
            ),
            (
                "PSI written as a percentage",
                vec![rule(M::PsiCpuSomeAvg10, 20.0, None)],
                vec![],
                Some("rules[0].threshold"),
            ),
            (
                "memory available clear above 1, in the second rule",
                vec![
                    rule(M::CpuUtilization, 0.8, None),
                    rule(M::MemoryAvailableRatio, 0.1, Some(1.1)),
                ],
                vec![],
                Some("rules[1].clear"),
            ),
            (
                "server error ratio 1.2",
                vec![rule(M::ServerErrorRatio, 1.2, None)],
                vec![],
                Some("rules[0].threshold"),
            ),
            (
                "rates, seconds and counts have no upper bound",
                vec![
                    rule(M::RequestsPerSecond, 5000.0, None),
                    rule(M::RequestsPerSecondPerVcpu, 300.0, None),
                    rule(M::LatencyP95Seconds, 2.5, Some(1.0)),
                    rule(M::PhpFpmListenQueue, 10.0, Some(1.0)),
                ],
                vec![target(M::RequestsPerSecondPerVcpu, 50.0)],
                None,
            ),
            (
                "a negative latency",
                vec![rule(M::LatencyP95Seconds, -1.0, None)],
                vec![],
                Some("rules[0].threshold"),
            ),
            (
                "not a number",
                vec![rule(M::PhpFpmListenQueue, f64::NAN, None)],
                vec![],
                Some("rules[0].threshold"),
            ),
            (
                "a cpu target of 1.2",
                vec![],
                vec![target(M::CpuUtilization, 1.2)],
                Some("targets[0].target"),
            ),
        ];
        for (case, rules, targets, want) in cases {
            let mut p = policy();
            p.rules = rules;
            p.targets = targets;
            match (p.compile(), want) {
                (Ok(_), None) => {}
                (Err(PolicyError::OutOfRange { key, .. }), Some(want)) => {
                    assert_eq!(key, want, "{case}")
                }
                (got, _) => panic!("{case}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_range_error_names_the_key_the_value_and_the_range() {
        let mut p = policy();
        p.rules = vec![rule(Metric::CpuUtilization, 1.5, Some(0.5))];
        assert_eq!(
            p.compile().unwrap_err().to_string(),
            "rules[0].threshold: 1.5 is outside the range of cpu_utilization (0 to 1, ratio)"
        );
        p.rules = vec![rule(Metric::LatencyP95Seconds, -2.0, None)];
        assert_eq!(
            p.compile().unwrap_err().to_string(),
            "rules[0].threshold: -2 is outside the range of latency_p95_seconds (≥ 0, seconds)"
        );
    }

    #[test]
    fn every_metric_has_a_unit_and_a_range_from_zero() {
        for metric in Metric::ALL {
            assert!(!metric.unit().is_empty(), "{metric}");
            assert_eq!(*metric.range().start(), 0.0, "{metric}");
            // A ratio tops out at 1; a rate, a time or a count has no top.
            let ratio = metric.unit().starts_with("ratio");
            assert_eq!(metric.range().end().is_finite(), ratio, "{metric}");
            // The shipped defaults of a target on it are in range.
            if metric.tracked_capacity().is_some() {
                let t = Target {
                    metric,
                    ..Target::default_memory()
                };
                assert!(metric.check("target", t.target_value()).is_ok(), "{metric}");
            }
        }
        assert!(Rule::default_cpu().check_range().is_ok());
    }
}
