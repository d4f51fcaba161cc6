//! Threshold rules: a metric over a window crossing a threshold for a `for` duration, with
//! a separate clear threshold (hysteresis).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Timestamp;
use super::decision::Evidence;
use super::metric::{Metric, OutOfRange, Window};

/// One `[[groups.rules]]` entry: scale up one rung when `metric` over `window` is at or
/// beyond `threshold` continuously for `for`; once fired, the rule keeps holding until the
/// value falls back past `clear`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The metric watched.
    pub metric: Metric,
    /// The span read: `last` (latest report), `1m` or `5m` mean.
    #[serde(default = "default_window")]
    pub window: Window,
    /// Value at which the rule starts holding (≥ for most metrics, ≤ for
    /// `memory_available_ratio`).
    pub threshold: f64,
    /// Value past which a fired rule clears (< for most metrics, > for
    /// `memory_available_ratio`); defaults to `threshold` (no hysteresis).
    #[serde(default)]
    pub clear: Option<f64>,
    /// How long the rule must hold before it fires ("3m").
    #[serde(rename = "for", with = "humantime_serde", default)]
    pub hold_for: Duration,
}

fn default_window() -> Window {
    Window::OneMinute
}

impl Rule {
    /// The shipped CPU rule: 1-min mean utilization ≥ 0.80 for 3 min, clears < 0.55.
    pub fn default_cpu() -> Self {
        Self {
            metric: Metric::CpuUtilization,
            window: Window::OneMinute,
            threshold: 0.80,
            clear: Some(0.55),
            hold_for: Duration::from_secs(180),
        }
    }

    /// The clear threshold in force.
    pub fn clear_threshold(&self) -> f64 {
        self.clear.unwrap_or(self.threshold)
    }

    /// Checks `threshold` and `clear` lie in the metric's range.
    pub fn check_range(&self) -> Result<(), OutOfRange> {
        self.metric.check("threshold", self.threshold)?;
        match self.clear {
            Some(clear) => self.metric.check("clear", clear),
            None => Ok(()),
        }
    }

    /// Checks the thresholds make sense for the metric's direction.
    pub fn validate(&self) -> Result<(), String> {
        let clear = self.clear_threshold();
        if !self.threshold.is_finite() || !clear.is_finite() || self.threshold < 0.0 || clear < 0.0
        {
            return Err("threshold and clear must be finite and not negative".into());
        }
        if self.metric.higher_is_busier() && clear > self.threshold {
            return Err(format!(
                "clear {clear} must not be above threshold {} for {}",
                self.threshold, self.metric
            ));
        }
        if !self.metric.higher_is_busier() && clear < self.threshold {
            return Err(format!(
                "clear {clear} must not be below threshold {} for {}",
                self.threshold, self.metric
            ));
        }
        Ok(())
    }

    /// A one-line statement of the rule, used as evidence ("cpu_utilization 1m >= 0.8 for 3m, clears < 0.55").
    pub fn describe(&self) -> String {
        let (hold, clear) = if self.metric.higher_is_busier() {
            (">=", "<")
        } else {
            ("<=", ">")
        };
        format!(
            "{} {} {hold} {} for {}, clears {clear} {}",
            self.metric,
            self.window,
            self.threshold,
            humantime::format_duration(self.hold_for),
            self.clear_threshold()
        )
    }

    fn busy(&self, value: f64) -> bool {
        if self.metric.higher_is_busier() {
            value >= self.threshold
        } else {
            value <= self.threshold
        }
    }

    fn cleared(&self, value: f64) -> bool {
        let clear = self.clear_threshold();
        if self.metric.higher_is_busier() {
            value < clear
        } else {
            value > clear
        }
    }
}

/// What the engine remembers about one rule on one VM between ticks. Not persisted: after a
/// restart a rule must hold for its whole `for` again, which can only delay a resize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleState {
    /// Since when the rule has held without interruption.
    pub pending_since: Option<Timestamp>,
    /// Whether the rule fired and has not cleared yet (hysteresis).
    pub firing: bool,
}

impl RuleState {
    /// Forgets the pending timer and the firing flag (the VM went stale).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The result of one rule on one tick.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleVerdict {
    /// The metric was absent or its window incomplete: the rule neither holds nor clears,
    /// and its pending timer restarts.
    Absent,
    /// The rule does not hold.
    Quiet,
    /// The rule holds but not yet for its `for` duration.
    Pending {
        /// Since when it holds.
        since: Timestamp,
    },
    /// The rule held for its `for` duration: scale up one rung.
    Fired(Evidence),
}

/// Advances `state` with this tick's `value` (`None` = absent) and says what the rule
/// asks for.
pub fn step(rule: &Rule, state: &mut RuleState, value: Option<f64>, now: Timestamp) -> RuleVerdict {
    let Some(value) = value else {
        // Absent data proves neither busy nor idle; the `for` timer cannot claim continuity.
        state.pending_since = None;
        return RuleVerdict::Absent;
    };
    if rule.cleared(value) {
        state.reset();
        return RuleVerdict::Quiet;
    }
    if !(rule.busy(value) || state.firing) {
        state.pending_since = None;
        return RuleVerdict::Quiet;
    }
    let since = *state.pending_since.get_or_insert(now);
    let held = (now - since).to_std().unwrap_or_default();
    if held < rule.hold_for {
        return RuleVerdict::Pending { since };
    }
    state.firing = true;
    RuleVerdict::Fired(Evidence {
        metric: rule.metric,
        window: rule.window.name().to_owned(),
        value,
        threshold: rule.threshold,
        comparison: if rule.metric.higher_is_busier() {
            ">="
        } else {
            "<="
        }
        .to_owned(),
        rule: rule.describe(),
        held_for_seconds: Some(held.as_secs()),
        forecast: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(seconds: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_700_000_000 + seconds, 0)
            .single()
            .unwrap()
    }

    /// Feeds one value per `step` seconds and reports the verdict kind after the last.
    fn run(rule: &Rule, values: &[Option<f64>], step_s: i64) -> (&'static str, RuleState) {
        let mut state = RuleState::default();
        let mut last = RuleVerdict::Quiet;
        for (i, v) in values.iter().enumerate() {
            last = step(rule, &mut state, *v, at(i as i64 * step_s));
        }
        let kind = match last {
            RuleVerdict::Absent => "absent",
            RuleVerdict::Quiet => "quiet",
            RuleVerdict::Pending { .. } => "pending",
            RuleVerdict::Fired(_) => "fired",
        };
        (kind, state)
    }

    fn rep(v: f64, n: usize) -> Vec<Option<f64>> {
        vec![Some(v); n]
    }

    #[test]
    fn rules_fire_after_their_for_duration_with_hysteresis() {
        let cpu = Rule::default_cpu();
        let mem_avail = Rule {
            metric: Metric::MemoryAvailableRatio,
            window: Window::Last,
            threshold: 0.10,
            clear: Some(0.20),
            hold_for: Duration::from_secs(60),
        };
        let cat = |parts: &[Vec<Option<f64>>]| parts.concat();
        // (case, rule, values sampled every 30 s, expected verdict)
        let cases: Vec<(&str, &Rule, Vec<Option<f64>>, &str)> = vec![
            (
                "cpu 0.92 for 3m with for=3m → fires",
                &cpu,
                rep(0.92, 7),
                "fired",
            ),
            (
                "cpu 0.92 for 2m30s → pending",
                &cpu,
                rep(0.92, 6),
                "pending",
            ),
            ("cpu 0.79 for 10m → quiet", &cpu, rep(0.79, 21), "quiet"),
            (
                "cpu exactly 0.80 for 3m → fires",
                &cpu,
                rep(0.80, 7),
                "fired",
            ),
            (
                "a dip below threshold restarts the timer",
                &cpu,
                cat(&[rep(0.92, 5), rep(0.70, 1), rep(0.92, 5)]),
                "pending",
            ),
            (
                "fired, then 0.60 (above clear) → still holds",
                &cpu,
                cat(&[rep(0.92, 7), rep(0.60, 1)]),
                "fired",
            ),
            (
                "fired, then 0.54 (below clear) → clears",
                &cpu,
                cat(&[rep(0.92, 7), rep(0.54, 1)]),
                "quiet",
            ),
            (
                "cleared, then 0.60 → quiet (needs 0.80 again)",
                &cpu,
                cat(&[rep(0.92, 7), rep(0.54, 1), rep(0.60, 8)]),
                "quiet",
            ),
            (
                "absent metric → neither fires nor counts",
                &cpu,
                vec![None; 10],
                "absent",
            ),
            (
                "a gap of absent data restarts the timer",
                &cpu,
                cat(&[rep(0.92, 5), vec![None], rep(0.92, 5)]),
                "pending",
            ),
            (
                "memory available 0.05 for 60s → fires",
                &mem_avail,
                rep(0.05, 3),
                "fired",
            ),
            (
                "memory available 0.15 → quiet",
                &mem_avail,
                rep(0.15, 10),
                "quiet",
            ),
            (
                "memory available fired, 0.15 → still holds",
                &mem_avail,
                cat(&[rep(0.05, 3), rep(0.15, 1)]),
                "fired",
            ),
            (
                "memory available fired, 0.25 → clears",
                &mem_avail,
                cat(&[rep(0.05, 3), rep(0.25, 1)]),
                "quiet",
            ),
        ];
        for (case, rule, values, want) in cases {
            assert_eq!(run(rule, &values, 30).0, want, "{case}");
        }
    }

    #[test]
    fn absent_data_keeps_the_firing_flag_but_not_the_timer() {
        let cpu = Rule::default_cpu();
        let (_, state) = run(&cpu, &[rep(0.92, 7), vec![None]].concat(), 30);
        assert_eq!(
            state,
            RuleState {
                pending_since: None,
                firing: true
            }
        );
    }

    #[test]
    fn fired_evidence_names_the_rule_and_the_value() {
        let cpu = Rule::default_cpu();
        let mut state = RuleState::default();
        step(&cpu, &mut state, Some(0.92), at(0));
        let RuleVerdict::Fired(ev) = step(&cpu, &mut state, Some(0.93), at(180)) else {
            panic!("did not fire")
        };
        assert_eq!(ev.metric, Metric::CpuUtilization);
        assert_eq!(ev.window, "1m");
        assert_eq!(ev.value, 0.93);
        assert_eq!(ev.held_for_seconds, Some(180));
        assert_eq!(ev.rule, "cpu_utilization 1m >= 0.8 for 3m, clears < 0.55");
    }

    #[test]
    fn validation_checks_direction_of_hysteresis() {
        let mut r = Rule::default_cpu();
        assert!(r.validate().is_ok());
        r.clear = Some(0.9);
        assert!(r.validate().is_err());
        let mut m = Rule {
            metric: Metric::MemoryAvailableRatio,
            window: Window::Last,
            threshold: 0.1,
            clear: Some(0.05),
            hold_for: Duration::ZERO,
        };
        assert!(m.validate().is_err());
        m.clear = Some(0.2);
        assert!(m.validate().is_ok());
    }
}
