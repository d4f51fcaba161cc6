//! HPA-style target tracking: desired capacity = current × observed / target, ignoring
//! changes inside a tolerance, at most a doubling per decision.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::decision::Evidence;
use super::ladder::{Ladder, RungIndex};
use super::metric::{Capacity, Metric, OutOfRange, Window};

/// One `[[groups.targets]]` entry: keep `metric` at or below `target` by growing the VM
/// to the smallest rung whose capacity brings it there. Target tracking only grows a VM;
/// shrinking is the scale-down window's job, with its own evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The metric tracked: `cpu_utilization`, `memory_used_ratio` or
    /// `requests_per_second_per_vcpu`.
    pub metric: Metric,
    /// The value to hold the metric at; defaults to 0.60 for CPU, 0.75 for memory used.
    #[serde(default)]
    pub target: Option<f64>,
    /// Relative deviation from the target that is ignored (HPA's 0.10).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// The span read (`last`, `1m`, `5m`).
    #[serde(default = "default_window")]
    pub window: Window,
    /// How long the metric must stay above target × (1 + tolerance) before growing;
    /// defaults to 60 s for memory, 0 s for the others.
    #[serde(rename = "for", with = "humantime_serde", default)]
    pub hold_for: Option<Duration>,
}

fn default_tolerance() -> f64 {
    0.10
}

fn default_window() -> Window {
    Window::OneMinute
}

impl Target {
    /// The shipped memory target: 0.75 used, grow when used > 0.825 for 60 s.
    pub fn default_memory() -> Self {
        Self {
            metric: Metric::MemoryUsedRatio,
            target: None,
            tolerance: 0.10,
            window: Window::OneMinute,
            hold_for: None,
        }
    }

    /// The target value in force.
    pub fn target_value(&self) -> f64 {
        self.target.unwrap_or(match self.metric {
            Metric::MemoryUsedRatio => 0.75,
            _ => 0.60,
        })
    }

    /// The `for` duration in force.
    pub fn hold(&self) -> Duration {
        self.hold_for.unwrap_or(match self.metric {
            Metric::MemoryUsedRatio => Duration::from_secs(60),
            _ => Duration::ZERO,
        })
    }

    /// The value above which the target asks for more capacity.
    pub fn trigger_value(&self) -> f64 {
        self.target_value() * (1.0 + self.tolerance)
    }

    /// Checks a configured `target` lies in the metric's range.
    pub fn check_range(&self) -> Result<(), OutOfRange> {
        match self.target {
            Some(target) => self.metric.check("target", target),
            None => Ok(()),
        }
    }

    /// Checks the metric can be tracked and the numbers make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.metric.tracked_capacity().is_none() {
            return Err(format!(
                "{} cannot be target-tracked (use cpu_utilization, memory_used_ratio or requests_per_second_per_vcpu)",
                self.metric
            ));
        }
        let t = self.target_value();
        if !(t.is_finite() && t > 0.0) {
            return Err(format!("target {t} must be a positive number"));
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(format!("tolerance {} must be in [0, 1)", self.tolerance));
        }
        Ok(())
    }

    /// A one-line statement of the target, used as evidence.
    pub fn describe(&self) -> String {
        format!(
            "target {} {} = {} (tolerance {}, for {})",
            self.metric,
            self.window,
            self.target_value(),
            self.tolerance,
            humantime::format_duration(self.hold())
        )
    }

    /// Whether `observed` is above the tolerance band.
    pub fn above_band(&self, observed: f64) -> bool {
        observed > self.trigger_value()
    }

    /// The rung the target asks for when the VM on `current` observes `observed`: the
    /// smallest rung (above `current`, at most a doubling, at most the group's max) whose
    /// capacity brings the metric to the target. `current` when within tolerance.
    pub fn desired_rung(&self, ladder: &Ladder, current: RungIndex, observed: f64) -> RungIndex {
        if !self.above_band(observed) || current >= ladder.max() {
            return current;
        }
        let capacity = |i: RungIndex| match self.metric.tracked_capacity() {
            Some(Capacity::Memory) => ladder.rung(i).memory_bytes as f64,
            _ => f64::from(ladder.rung(i).vcpus),
        };
        let desired = capacity(current) * observed / self.target_value();
        let limit = ladder.step_limit(current).min(ladder.max());
        (current + 1..=limit)
            .find(|&i| capacity(i) >= desired)
            .unwrap_or(limit)
    }

    /// Evidence for a target that asked for `to`.
    pub fn evidence(&self, observed: f64, held_for: Duration) -> Evidence {
        Evidence {
            metric: self.metric,
            window: self.window.name().to_owned(),
            value: observed,
            threshold: self.trigger_value(),
            comparison: ">".to_owned(),
            rule: self.describe(),
            held_for_seconds: Some(held_for.as_secs()),
            forecast: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::ladder::Rung;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn ladder(max: &str) -> Ladder {
        let r = |name: &str, vcpus, gib| Rung {
            name: name.into(),
            vcpus,
            memory_bytes: gib * GIB,
            oktawave_type: None,
        };
        Ladder::new(
            vec![
                r("S", 1, 2),
                r("M", 2, 4),
                r("L", 4, 8),
                r("XL", 6, 12),
                r("XXL", 8, 16),
            ],
            None,
            Some(max),
        )
        .unwrap()
    }

    #[test]
    fn target_tracking_picks_the_smallest_rung_that_fits() {
        let cpu = Target {
            metric: Metric::CpuUtilization,
            target: None,
            tolerance: 0.10,
            window: Window::OneMinute,
            hold_for: None,
        };
        let mem = Target::default_memory();
        let l = ladder("XXL");
        let name = |i: RungIndex| l.rung(i).name.clone();
        // (case, target, current rung, observed, expected rung)
        let cases: Vec<(&str, &Target, RungIndex, f64, &str)> = vec![
            (
                "cpu 0.65 on M: within 10 % of 0.60 → stays",
                &cpu,
                1,
                0.65,
                "M",
            ),
            (
                "cpu 0.66 on M: exactly the band edge → stays",
                &cpu,
                1,
                0.66,
                "M",
            ),
            (
                "cpu 0.70 on M: 2×0.70/0.60=2.33 vCPUs → L",
                &cpu,
                1,
                0.70,
                "L",
            ),
            (
                "cpu 1.00 on L: 4×1/0.6=6.7 vCPUs → XXL is a doubling → XXL",
                &cpu,
                2,
                1.00,
                "XXL",
            ),
            (
                "cpu 0.95 on L: 4×0.95/0.6=6.33 → XXL (XL has 6)",
                &cpu,
                2,
                0.95,
                "XXL",
            ),
            ("cpu 0.88 on L: 5.87 vCPUs → XL", &cpu, 2, 0.88, "XL"),
            ("cpu 1.00 on S: wants 1.67 vCPUs → M", &cpu, 0, 1.00, "M"),
            (
                "cpu 0.30 on L: below target → stays (no shrink here)",
                &cpu,
                2,
                0.30,
                "L",
            ),
            ("memory 0.80 on M: within 0.825 → stays", &mem, 1, 0.80, "M"),
            (
                "memory 0.90 on M: 4×0.9/0.75=4.8 GiB → L",
                &mem,
                1,
                0.90,
                "L",
            ),
            (
                "memory 1.00 on M: 5.3 GiB → L (a doubling at most)",
                &mem,
                1,
                1.00,
                "L",
            ),
            ("cpu 0.99 on XXL (max) → stays", &cpu, 4, 0.99, "XXL"),
        ];
        for (case, target, current, observed, want) in cases {
            assert_eq!(
                name(target.desired_rung(&l, current, observed)),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn the_group_max_caps_the_target() {
        let cpu = Target {
            metric: Metric::CpuUtilization,
            target: None,
            tolerance: 0.10,
            window: Window::OneMinute,
            hold_for: None,
        };
        let l = ladder("L");
        assert_eq!(l.rung(cpu.desired_rung(&l, 1, 1.0)).name, "L");
        assert_eq!(cpu.desired_rung(&l, 2, 1.0), 2);
    }

    #[test]
    fn defaults_follow_the_spec() {
        let mem = Target::default_memory();
        assert_eq!(mem.target_value(), 0.75);
        assert!((mem.trigger_value() - 0.825).abs() < 1e-9);
        assert_eq!(mem.hold(), Duration::from_secs(60));
        let cpu = Target {
            metric: Metric::CpuUtilization,
            ..Target::default_memory()
        };
        assert_eq!(cpu.target_value(), 0.60);
        assert!(
            Target {
                metric: Metric::PsiCpuSomeAvg10,
                ..Target::default_memory()
            }
            .validate()
            .is_err()
        );
    }
}
