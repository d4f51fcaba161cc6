//! Forecasts (`[groups.forecast]`): grow a VM before a rule's threshold is crossed.
//!
//! A least-squares line is fitted to the rule's metric, one point per 1-minute mean over
//! the last `window`. When the line is a good fit (R² at least `min_r2`), points towards
//! busy, and reaches the rule's threshold within the resize lead time (the median time
//! the group's recent scale-ups took to be verified, else `lead_time`, at most
//! `max_horizon`) while the rule's own value is still short of it, the VM grows one rung
//! now, so the new size is there when the load arrives.
//!
//! Why it does not fire on what is not a trend: a lone spike or a level shift fits a
//! line badly (a step over 10 one-minute points never reaches R² 0.8), as do noise and a
//! sawtooth shorter than the window; a window with a gap, or with fewer than
//! [`MIN_POINTS`] points, is not fitted at all.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Timestamp;
use super::decision::{Evidence, ForecastEvidence};
use super::metric::Metric;
use super::rule::Rule;
use super::view::Series;

/// Fewest 1-minute means a line is fitted to.
pub const MIN_POINTS: usize = 5;
/// The shortest fit `window` (five 1-minute means).
const MIN_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The longest fit `window` and `max_horizon`: the fleet keeps a day of minute means.
const MAX_SPAN: Duration = Duration::from_secs(24 * 3600);

/// `[groups.forecast]`: growing ahead of a rule, from its metric's trend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forecast {
    /// Whether the group forecasts at all.
    #[serde(default)]
    pub enabled: bool,
    /// Forecast decisions are recorded but not sent (whatever the group's `dry_run`),
    /// and hold nothing back; `false` lets them act.
    #[serde(default = "default_dry_run")]
    pub dry_run: bool,
    /// The metrics forecast: the rules on these metrics; empty (the default) means every
    /// rule's metric.
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// How far back the line is fitted ("10m").
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// The least R² (goodness of fit, 0 to 1) a line needs to be believed.
    #[serde(default = "default_min_r2")]
    pub min_r2: f64,
    /// The resize lead time assumed while the group has no verified scale-up in its
    /// history.
    #[serde(default = "default_lead_time", with = "humantime_serde")]
    pub lead_time: Duration,
    /// The furthest ahead the line is read, whatever the history says.
    #[serde(default = "default_max_horizon", with = "humantime_serde")]
    pub max_horizon: Duration,
}

impl Default for Forecast {
    fn default() -> Self {
        Self {
            enabled: false,
            dry_run: default_dry_run(),
            metrics: Vec::new(),
            window: default_window(),
            min_r2: default_min_r2(),
            lead_time: default_lead_time(),
            max_horizon: default_max_horizon(),
        }
    }
}

fn default_dry_run() -> bool {
    true
}
fn default_window() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_min_r2() -> f64 {
    0.8
}
fn default_lead_time() -> Duration {
    Duration::from_secs(3 * 60)
}
fn default_max_horizon() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Forecast {
    /// Checks the keys' ranges and that every listed metric has a rule. The error names
    /// the key within the group (`forecast.window`) and what is wrong.
    pub fn validate(&self, rules: &[Rule]) -> Result<(), (&'static str, String)> {
        if self.window < MIN_WINDOW || self.window > MAX_SPAN {
            return Err((
                "forecast.window",
                format!(
                    "{} must be between 5m and 24h",
                    humantime::format_duration(self.window)
                ),
            ));
        }
        if !(self.min_r2.is_finite() && self.min_r2 > 0.0 && self.min_r2 <= 1.0) {
            return Err((
                "forecast.min_r2",
                format!("{} must be in (0, 1]", self.min_r2),
            ));
        }
        if self.max_horizon.is_zero() || self.max_horizon > MAX_SPAN {
            return Err((
                "forecast.max_horizon",
                "must be more than 0 and at most 24h".into(),
            ));
        }
        if self.lead_time.is_zero() || self.lead_time > self.max_horizon {
            return Err((
                "forecast.lead_time",
                format!(
                    "must be more than 0 and at most max_horizon ({})",
                    humantime::format_duration(self.max_horizon)
                ),
            ));
        }
        if let Some(m) = self
            .metrics
            .iter()
            .find(|m| !rules.iter().any(|r| r.metric == **m))
        {
            return Err((
                "forecast.metrics",
                format!("no rule watches {m}: a forecast reads a rule's threshold"),
            ));
        }
        Ok(())
    }

    /// Whether `rule` is forecast.
    pub fn watches(&self, rule: &Rule) -> bool {
        self.metrics.is_empty() || self.metrics.contains(&rule.metric)
    }

    /// How far ahead the line is read: the `measured` lead time (from the group's
    /// history), else `lead_time`; at most `max_horizon`.
    pub fn horizon(&self, measured: Option<Duration>) -> Duration {
        measured.unwrap_or(self.lead_time).min(self.max_horizon)
    }
}

/// A least-squares line through a metric's points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Change per second.
    pub slope_per_second: f64,
    /// The line's value at `now`.
    pub now: f64,
    /// The share of the points' variance the line explains (0 for a flat series).
    pub r2: f64,
    /// How many points it went through.
    pub points: usize,
}

impl Fit {
    /// The line's value `ahead` after now.
    pub fn at(&self, ahead: Duration) -> f64 {
        self.now + self.slope_per_second * ahead.as_secs_f64()
    }
}

/// The least-squares line through `points` (time, value), with `now` as the origin.
/// `None` with fewer than [`MIN_POINTS`] points or all of them at one instant.
pub fn fit(points: &[(Timestamp, f64)], now: Timestamp) -> Option<Fit> {
    if points.len() < MIN_POINTS {
        return None;
    }
    let n = points.len() as f64;
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|(t, v)| ((*t - now).num_milliseconds() as f64 / 1000.0, *v))
        .collect();
    let mean_x = xy.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = xy.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in &xy {
        let (dx, dy) = (x - mean_x, y - mean_y);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 || !(sxy.is_finite() && syy.is_finite()) {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy > 0.0 {
        (sxy * sxy / (sxx * syy)).min(1.0)
    } else {
        0.0
    };
    Some(Fit {
        slope_per_second: slope,
        now: mean_y - slope * mean_x,
        r2,
        points: points.len(),
    })
}

/// Whether `rule` will fire within `horizon`, read from `series`: evidence naming the
/// trend, the horizon and the predicted value, or `None`. `current` is the rule's own
/// value now; a rule already at its threshold is left to its `for`.
pub fn project(
    forecast: &Forecast,
    rule: &Rule,
    series: &Series,
    current: f64,
    horizon: Duration,
    now: Timestamp,
) -> Option<Evidence> {
    if !series.complete {
        return None;
    }
    let fit = fit(&series.points, now)?;
    // +1 when higher is busier: every comparison below is then "towards busy".
    let busy = if rule.metric.higher_is_busier() {
        1.0
    } else {
        -1.0
    };
    let predicted = fit.at(horizon);
    let holds = fit.r2 >= forecast.min_r2
        && busy * fit.slope_per_second > 0.0
        && busy * (current - rule.threshold) < 0.0
        && busy * (predicted - rule.threshold) >= 0.0;
    if !holds {
        return None;
    }
    let comparison = if busy > 0.0 { ">=" } else { "<=" };
    let window = humantime::format_duration(forecast.window);
    Some(Evidence {
        metric: rule.metric,
        window: format!("{window} trend"),
        value: predicted,
        threshold: rule.threshold,
        comparison: comparison.to_owned(),
        rule: format!(
            "{} {} {comparison} {} within {}: trend {:+.3e}/s over {window} (R² {:.2}) predicts {:.3}",
            rule.metric,
            rule.window,
            rule.threshold,
            humantime::format_duration(horizon),
            fit.slope_per_second,
            fit.r2,
            predicted
        ),
        held_for_seconds: None,
        forecast: Some(ForecastEvidence {
            slope_per_second: fit.slope_per_second,
            r2: fit.r2,
            fitted_now: fit.now,
            horizon_seconds: horizon.as_secs(),
            points: fit.points as u32,
        }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::metric::Window;

    fn now() -> Timestamp {
        "2026-01-15T10:30:00Z".parse().unwrap()
    }

    /// One point per minute for the last `values.len()` minutes, at each minute's middle.
    fn series(values: &[f64]) -> Series {
        let n = values.len() as i64;
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = now() - chrono::Duration::seconds((n - i as i64) * 60 - 30);
                (t, *v)
            })
            .collect();
        Series {
            points,
            complete: true,
        }
    }

    fn cpu_rule() -> Rule {
        Rule::default_cpu()
    }

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn a_straight_line_is_fitted_exactly() {
        // 0.01 per minute, ending at 0.5 half a minute ago.
        let s = series(&[0.41, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47, 0.48, 0.49, 0.50]);
        let f = fit(&s.points, now()).unwrap();
        assert!((f.slope_per_second - 0.01 / 60.0).abs() < 1e-12, "{f:?}");
        assert!((f.now - 0.505).abs() < 1e-9, "{f:?}");
        assert!((f.r2 - 1.0).abs() < 1e-9, "{f:?}");
        assert!((f.at(mins(3)) - 0.535).abs() < 1e-9);
        assert_eq!(f.points, 10);
    }

    #[test]
    fn too_few_points_or_a_flat_series_say_nothing() {
        assert_eq!(fit(&series(&[0.1, 0.2, 0.3, 0.4]).points, now()), None);
        let flat = fit(&series(&[0.5; 10]).points, now()).unwrap();
        assert_eq!((flat.slope_per_second, flat.r2), (0.0, 0.0));
    }

    #[test]
    fn a_forecast_fires_only_on_a_good_fit_heading_over_the_threshold() {
        let cfg = Forecast {
            enabled: true,
            ..Forecast::default()
        };
        let ramp: Vec<f64> = (0..10).map(|i| 0.50 + 0.025 * f64::from(i)).collect();
        // (case, series, current value, horizon, fires)
        let cases: Vec<(&str, Series, f64, Duration, bool)> = vec![
            (
                "ramp reaching 0.8 within 3m",
                series(&ramp),
                0.73,
                mins(3),
                true,
            ),
            (
                "the same ramp read 1m ahead",
                series(&ramp),
                0.73,
                mins(1),
                false,
            ),
            (
                "already at the threshold: the rule's business",
                series(&ramp),
                0.81,
                mins(3),
                false,
            ),
            (
                "a gap in the window",
                Series {
                    complete: false,
                    ..series(&ramp)
                },
                0.73,
                mins(3),
                false,
            ),
            (
                "a lone spike",
                series(&[0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.79]),
                0.79,
                mins(15),
                false,
            ),
            (
                "a step up half-way",
                series(&[0.4, 0.4, 0.4, 0.4, 0.4, 0.7, 0.7, 0.7, 0.7, 0.7]),
                0.7,
                mins(15),
                false,
            ),
            (
                "falling",
                series(&ramp.iter().rev().copied().collect::<Vec<_>>()),
                0.5,
                mins(15),
                false,
            ),
        ];
        for (case, s, current, horizon, fires) in cases {
            let ev = project(&cfg, &cpu_rule(), &s, current, horizon, now());
            assert_eq!(ev.is_some(), fires, "{case}: {ev:?}");
        }
        let ev = project(&cfg, &cpu_rule(), &series(&ramp), 0.73, mins(3), now()).unwrap();
        let f = ev.forecast.unwrap();
        assert_eq!(f.horizon_seconds, 180);
        assert!((f.slope_per_second - 0.025 / 60.0).abs() < 1e-12);
        assert!(
            ev.value >= 0.8
                && (ev.value - (f.fitted_now + f.slope_per_second * 180.0)).abs() < 1e-12
        );
        assert_eq!((ev.threshold, ev.comparison.as_str()), (0.8, ">="));
        assert!(ev.rule.contains("within 3m"), "{}", ev.rule);
    }

    #[test]
    fn low_is_busy_metrics_are_forecast_downwards() {
        let cfg = Forecast::default();
        let rule = Rule {
            metric: Metric::MemoryAvailableRatio,
            window: Window::OneMinute,
            threshold: 0.1,
            clear: Some(0.2),
            hold_for: Duration::ZERO,
        };
        let falling: Vec<f64> = (0..10).map(|i| 0.40 - 0.03 * f64::from(i)).collect();
        let ev = project(&cfg, &rule, &series(&falling), 0.13, mins(3), now()).unwrap();
        assert_eq!(ev.comparison, "<=");
        assert!(ev.value <= 0.1);
        let rising: Vec<f64> = falling.iter().rev().copied().collect();
        assert!(project(&cfg, &rule, &series(&rising), 0.4, mins(15), now()).is_none());
    }

    #[test]
    fn keys_are_checked_by_name() {
        let rules = [cpu_rule()];
        let with = |f: fn(&mut Forecast)| {
            let mut c = Forecast::default();
            f(&mut c);
            c.validate(&rules).err().map(|(key, _)| key)
        };
        assert_eq!(with(|_| {}), None);
        assert_eq!(with(|c| c.window = mins(2)), Some("forecast.window"));
        assert_eq!(with(|c| c.min_r2 = 0.0), Some("forecast.min_r2"));
        assert_eq!(with(|c| c.min_r2 = 1.5), Some("forecast.min_r2"));
        assert_eq!(with(|c| c.lead_time = mins(20)), Some("forecast.lead_time"));
        assert_eq!(
            with(|c| c.lead_time = Duration::ZERO),
            Some("forecast.lead_time")
        );
        assert_eq!(
            with(|c| c.max_horizon = Duration::ZERO),
            Some("forecast.max_horizon")
        );
        assert_eq!(
            with(|c| c.metrics = vec![Metric::RequestsPerSecond]),
            Some("forecast.metrics")
        );
        assert_eq!(with(|c| c.metrics = vec![Metric::CpuUtilization]), None);
    }

    #[test]
    fn the_horizon_is_the_measured_lead_time_within_max_horizon() {
        let cfg = Forecast::default();
        assert_eq!(cfg.horizon(None), mins(3));
        assert_eq!(cfg.horizon(Some(mins(7))), mins(7));
        assert_eq!(cfg.horizon(Some(mins(40))), mins(15));
    }
}
