//! A group of VMs as written in `collector.toml` (`[[groups]]`: its name, its VMs and
//! its resize policy), and the policy's validated form.
//!
//! [`GroupPolicy`] is the one declaration of a group's keys: the collector's
//! configuration holds a list of them, and the engine compiles each into a [`Policy`].
//!
//! ```toml
//! [[groups]]
//! name = "web"
//! vms = ["web-1", "web-2"]
//! ladder = [
//!   { name = "S", vcpus = 2, memory_bytes = 4294967296 },
//!   { name = "M", vcpus = 4, memory_bytes = 8589934592 },
//! ]
//! min_rung = "S"
//! max_rung = "M"
//! timezone = "Europe/Warsaw"
//! [[groups.rules]]
//! metric = "cpu_utilization"
//! window = "1m"
//! threshold = 0.80
//! clear = 0.55
//! for = "3m"
//! [groups.scale_down]
//! window = "02:00-05:00"
//! [[groups.boosts]]
//! rung = "M"
//! start = "2026-12-04T18:00"
//! end = "2026-12-06T23:00"
//! ```
//!
//! Only `name` is required. A group without a `ladder` is monitored only: it is never
//! resized. Every other key has the shipped default that the functions below name.

use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::boost::{Boost, BoostConfig};
use super::forecast::Forecast;
use super::ladder::{Ladder, LadderError, Rung};
use super::metric::OutOfRange;
use super::rule::Rule;
use super::target::Target;
use super::window::DailyWindow;

/// One `[[groups]]` table: a redundancy group of VMs and its resize policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPolicy {
    /// The group's name, used in metrics and decisions (`web`).
    pub name: String,
    /// The VM ids in this group (each in at most one group).
    #[serde(default)]
    pub vms: Vec<String>,
    /// The sizes the group's VMs may take, smallest first; empty (the default) means
    /// monitored only, never resized.
    #[serde(default)]
    pub ladder: Vec<Rung>,
    /// Lowest rung the group may be resized to (default: the smallest).
    #[serde(default)]
    pub min_rung: Option<String>,
    /// Highest rung the group may be resized to (default: the largest).
    #[serde(default)]
    pub max_rung: Option<String>,
    /// IANA time zone of the scale-down window, boosts and daily caps (`Europe/Warsaw`).
    #[serde(default = "default_timezone")]
    pub timezone: Tz,
    /// This group's dry-run: decisions are recorded, not sent; unset follows the global
    /// `dry_run`.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Whether a group of one may shrink (shrinking restarts the VM).
    #[serde(default)]
    pub allow_restart: bool,
    /// `[[groups.rules]]`: threshold rules; any that holds for its `for` grows a VM one
    /// rung.
    #[serde(default = "default_rules")]
    pub rules: Vec<Rule>,
    /// `[[groups.targets]]`: target tracking; the largest rung asked for wins.
    #[serde(default = "default_targets")]
    pub targets: Vec<Target>,
    /// `[groups.scale_up]`: cooldown, daily cap and verification time-out of growing.
    #[serde(default)]
    pub scale_up: ScaleUp,
    /// `[groups.scale_down]`: window, lookback, margin, ceilings, cap, cooldown and
    /// verification time-out of shrinking.
    #[serde(default)]
    pub scale_down: ScaleDown,
    /// `[[groups.boosts]]`: scheduled floors.
    #[serde(default)]
    pub boosts: Vec<BoostConfig>,
    /// `[groups.forecast]`: growing ahead of a rule from its metric's trend (off by
    /// default, and dry-run until `dry_run = false`).
    #[serde(default)]
    pub forecast: Forecast,
    /// After a verified resize, samples younger than this are left out of every window.
    #[serde(default = "default_warm_up", with = "humantime_serde")]
    pub warm_up: Duration,
    /// Consecutive failed or unverified resizes that pause the group (circuit breaker).
    #[serde(default = "default_circuit_breaker")]
    pub circuit_breaker: u32,
}

/// `[groups.scale_up]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUp {
    /// After a verified automatic scale-up, no other automatic scale-up of that VM for this long.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// Automatic scale-ups per VM per local day (in the group's time zone).
    #[serde(default = "default_up_cap")]
    pub daily_cap: u32,
    /// A scale-up (hot-add) not verified within this is marked failed. A scale-up that
    /// restarts the VM (`restarts = true`) gets `scale_down.verify_timeout` instead: a
    /// restart takes as long whichever way the VM is resized, so one key says how long.
    #[serde(default = "default_verify_hot_add", with = "humantime_serde")]
    pub verify_timeout: Duration,
    /// Whether growing restarts the VM (a cloud or VM type that cannot hot-add CPUs and
    /// memory). A shrink always restarts. A resize that restarts waits until no other
    /// member is stale, resizing or warming up (one member at a time); a hot-add grow
    /// (the default) waits for none of these, so a survivor grows at once while its twin
    /// is down. Its own resize in flight, cooldown, daily cap and a stopped roll still
    /// hold it back.
    #[serde(default)]
    pub restarts: bool,
}

impl Default for ScaleUp {
    fn default() -> Self {
        Self {
            cooldown: default_cooldown(),
            daily_cap: default_up_cap(),
            verify_timeout: default_verify_hot_add(),
            restarts: false,
        }
    }
}

/// `[groups.scale_down]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDown {
    /// Whether the group shrinks at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Local time range, in the group's `timezone`, when shrinking may start ("02:00-05:00").
    #[serde(default = "default_window")]
    pub window: DailyWindow,
    /// How far back the evidence looks; every metric must be present for all of it.
    #[serde(default = "default_lookback", with = "humantime_serde")]
    pub lookback: Duration,
    /// Safety margin on the evidence (0.15 = 15 %).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// p95 CPU, scaled to the smaller rung and the margin, must stay below this.
    #[serde(default = "default_cpu_ceiling")]
    pub cpu_ceiling: f64,
    /// Peak memory used, with the margin, must stay below this share of the smaller rung.
    #[serde(default = "default_memory_ceiling")]
    pub memory_ceiling: f64,
    /// Scale-downs per VM per window occurrence (night).
    #[serde(default = "default_down_cap")]
    pub nightly_cap: u32,
    /// After a verified scale-down, no other scale-down of that VM for this long.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// A scale-down (a restart) not verified within this is marked failed.
    #[serde(default = "default_verify_restart", with = "humantime_serde")]
    pub verify_timeout: Duration,
}

impl Default for ScaleDown {
    fn default() -> Self {
        Self {
            enabled: true,
            window: default_window(),
            lookback: default_lookback(),
            margin: default_margin(),
            cpu_ceiling: default_cpu_ceiling(),
            memory_ceiling: default_memory_ceiling(),
            nightly_cap: default_down_cap(),
            cooldown: default_cooldown(),
            verify_timeout: default_verify_restart(),
        }
    }
}

/// The default `timezone`: Europe/Warsaw.
pub fn default_timezone() -> Tz {
    chrono_tz::Europe::Warsaw
}
/// The default `rules`: CPU at 0.80 for 3 min.
pub fn default_rules() -> Vec<Rule> {
    vec![Rule::default_cpu()]
}
/// The default `targets`.
pub fn default_targets() -> Vec<Target> {
    vec![Target::default_memory()]
}
/// The default `warm_up`.
pub fn default_warm_up() -> Duration {
    Duration::from_secs(60)
}
/// The default `circuit_breaker`.
pub fn default_circuit_breaker() -> u32 {
    3
}
fn default_cooldown() -> Duration {
    Duration::from_secs(300)
}
fn default_up_cap() -> u32 {
    4
}
fn default_down_cap() -> u32 {
    1
}
fn default_verify_hot_add() -> Duration {
    Duration::from_secs(300)
}
fn default_verify_restart() -> Duration {
    Duration::from_secs(900)
}
fn default_true() -> bool {
    true
}
fn default_window() -> DailyWindow {
    DailyWindow {
        start: chrono::NaiveTime::MIN + chrono::Duration::hours(2),
        end: chrono::NaiveTime::MIN + chrono::Duration::hours(5),
    }
}
fn default_lookback() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_margin() -> f64 {
    0.15
}
fn default_cpu_ceiling() -> f64 {
    0.80
}
fn default_memory_ceiling() -> f64 {
    0.75
}

/// Why a group's policy is unusable. The message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// `ladder`, `min_rung` or `max_rung` is wrong.
    #[error("ladder: {0}")]
    Ladder(#[from] LadderError),
    /// A `[[groups.rules]]` entry is wrong.
    #[error("rules[{index}]: {reason}")]
    Rule {
        /// Position in the list (0-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `[[groups.targets]]` entry is wrong.
    #[error("targets[{index}]: {reason}")]
    Target {
        /// Position in the list (0-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `[[groups.boosts]]` entry is wrong.
    #[error("boosts[{index}]: {reason}")]
    Boost {
        /// Position in the list (0-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A rule's `threshold` or `clear`, or a target's `target`, is outside its metric's
    /// range (a rule that could never fire or clear).
    #[error("{key}: {detail}")]
    OutOfRange {
        /// The key within the group (`rules[0].threshold`, `targets[1].target`).
        key: String,
        /// The value and the range.
        detail: OutOfRange,
    },
    /// Another key is out of range.
    #[error("{key}: {reason}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A validated group policy, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The ladder with min/max resolved.
    pub ladder: Ladder,
    /// Boosts with times resolved to UTC.
    pub boosts: Vec<Boost>,
    /// The configuration it was built from.
    pub config: GroupPolicy,
}

impl GroupPolicy {
    /// Group `name` of `vms` with the shipped defaults on `ladder` (empty: monitored only).
    pub fn new(name: &str, vms: Vec<String>, ladder: Vec<Rung>) -> Self {
        Self {
            name: name.to_owned(),
            vms,
            ladder,
            min_rung: None,
            max_rung: None,
            timezone: default_timezone(),
            dry_run: None,
            allow_restart: false,
            rules: default_rules(),
            targets: default_targets(),
            scale_up: ScaleUp::default(),
            scale_down: ScaleDown::default(),
            boosts: Vec::new(),
            forecast: Forecast::default(),
            warm_up: default_warm_up(),
            circuit_breaker: default_circuit_breaker(),
        }
    }

    /// The shipped defaults on `ladder`, for a group whose name and VMs are given
    /// elsewhere (an evaluation takes them from [`Group`](crate::Group)).
    pub fn with_ladder(ladder: Vec<Rung>) -> Self {
        Self::new("", Vec::new(), ladder)
    }

    /// Whether the group is resized at all (it has a ladder).
    pub fn resizes(&self) -> bool {
        !self.ladder.is_empty()
    }

    /// The dry-run flag in force: the group's, else the global one.
    pub fn effective_dry_run(&self, global: bool) -> bool {
        self.dry_run.unwrap_or(global)
    }

    /// Validates every policy key and resolves names and times.
    pub fn compile(&self) -> Result<Policy, PolicyError> {
        let ladder = Ladder::new(
            self.ladder.clone(),
            self.min_rung.as_deref(),
            self.max_rung.as_deref(),
        )?;
        let out_of_range = |list: &str, index: usize, detail: OutOfRange| {
            let key = format!("{list}[{index}].{}", detail.field);
            PolicyError::OutOfRange { key, detail }
        };
        for (index, rule) in self.rules.iter().enumerate() {
            rule.check_range()
                .map_err(|e| out_of_range("rules", index, e))?;
            rule.validate()
                .map_err(|reason| PolicyError::Rule { index, reason })?;
        }
        for (index, target) in self.targets.iter().enumerate() {
            target
                .check_range()
                .map_err(|e| out_of_range("targets", index, e))?;
            target
                .validate()
                .map_err(|reason| PolicyError::Target { index, reason })?;
        }
        let boosts = self
            .boosts
            .iter()
            .enumerate()
            .map(|(index, b)| {
                b.resolve(&ladder, self.timezone, index)
                    .map_err(|reason| PolicyError::Boost { index, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ratio = |key: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(PolicyError::Value {
                    key,
                    reason: format!("{v} must be in (0, 1]"),
                })
            }
        };
        ratio("scale_down.cpu_ceiling", self.scale_down.cpu_ceiling)?;
        ratio("scale_down.memory_ceiling", self.scale_down.memory_ceiling)?;
        if !(self.scale_down.margin.is_finite() && self.scale_down.margin >= 0.0) {
            return Err(PolicyError::Value {
                key: "scale_down.margin",
                reason: "must be a number ≥ 0".into(),
            });
        }
        self.forecast
            .validate(&self.rules)
            .map_err(|(key, reason)| PolicyError::Value { key, reason })?;
        if self.circuit_breaker == 0 {
            return Err(PolicyError::Value {
                key: "circuit_breaker",
                reason: "must be at least 1".into(),
            });
        }
        for (key, d) in [
            ("scale_up.verify_timeout", self.scale_up.verify_timeout),
            ("scale_down.verify_timeout", self.scale_down.verify_timeout),
            ("scale_down.lookback", self.scale_down.lookback),
        ] {
            if d.is_zero() || chrono::Duration::from_std(d).is_err() {
                return Err(PolicyError::Value {
                    key,
                    reason: "must be a positive duration".into(),
                });
            }
        }
        Ok(Policy {
            ladder,
            boosts,
            config: self.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::metric::{Metric, Window};

    #[test]
    fn a_group_with_only_a_ladder_gets_the_shipped_defaults() {
        let p: GroupPolicy = toml::from_str(
            r#"
            name = "web"
            ladder = [ { name = "S", vcpus = 2, memory_bytes = 4294967296 },
                       { name = "M", vcpus = 4, memory_bytes = 8589934592 } ]
            "#,
        )
        .unwrap();
        assert_eq!(p, GroupPolicy::new("web", Vec::new(), p.ladder.clone()));
        assert!(p.resizes());
        assert_eq!(p.rules, vec![Rule::default_cpu()]);
        assert_eq!(p.rules[0].threshold, 0.80);
        assert_eq!(p.rules[0].clear, Some(0.55));
        assert_eq!(p.rules[0].hold_for, Duration::from_secs(180));
        assert_eq!(p.targets, vec![Target::default_memory()]);
        assert_eq!(p.scale_up.cooldown, Duration::from_secs(300));
        assert_eq!(p.scale_up.daily_cap, 4);
        assert_eq!(p.scale_up.verify_timeout, Duration::from_secs(300));
        assert_eq!(p.scale_down.window.to_string(), "02:00-05:00");
        assert_eq!(p.timezone, chrono_tz::Europe::Warsaw);
        assert_eq!(p.scale_down.lookback, Duration::from_secs(86_400));
        assert_eq!(
            (
                p.scale_down.margin,
                p.scale_down.cpu_ceiling,
                p.scale_down.memory_ceiling
            ),
            (0.15, 0.80, 0.75)
        );
        assert_eq!(p.scale_down.nightly_cap, 1);
        assert_eq!(p.scale_down.verify_timeout, Duration::from_secs(900));
        assert_eq!(p.warm_up, Duration::from_secs(60));
        assert_eq!(p.circuit_breaker, 3);
        assert!(!p.allow_restart);
        assert!(
            !p.forecast.enabled && p.forecast.dry_run,
            "off, and dry-run until enabled"
        );
        assert_eq!(p.forecast.window, Duration::from_secs(600));
        assert_eq!(p.forecast.min_r2, 0.8);
        assert!(p.compile().is_ok());
    }

    #[test]
    fn every_key_parses_from_toml() {
        let p: GroupPolicy = toml::from_str(
            r#"
            name = "web"
            vms = ["web-1", "web-2"]
            ladder = [ { name = "S", vcpus = 2, memory_bytes = 4294967296 },
                       { name = "M", vcpus = 4, memory_bytes = 8589934592 },
                       { name = "L", vcpus = 8, memory_bytes = 17179869184 } ]
            min_rung = "S"
            max_rung = "L"
            timezone = "America/New_York"
            dry_run = false
            allow_restart = true
            warm_up = "90s"
            circuit_breaker = 5
            [[rules]]
            metric = "psi_cpu_some_avg10"
            window = "last"
            threshold = 0.2
            clear = 0.1
            for = "30s"
            [[rules]]
            metric = "memory_available_ratio"
            threshold = 0.1
            clear = 0.2
            [[targets]]
            metric = "cpu_utilization"
            target = 0.5
            tolerance = 0.05
            window = "5m"
            for = "1m"
            [scale_up]
            cooldown = "10m"
            daily_cap = 2
            verify_timeout = "2m"
            [scale_down]
            enabled = true
            window = "01:00-04:30"
            lookback = "12h"
            margin = 0.2
            cpu_ceiling = 0.7
            memory_ceiling = 0.7
            nightly_cap = 1
            cooldown = "1h"
            verify_timeout = "20m"
            [forecast]
            enabled = true
            dry_run = false
            metrics = ["psi_cpu_some_avg10"]
            window = "15m"
            min_r2 = 0.9
            lead_time = "4m"
            max_horizon = "10m"
            [[boosts]]
            name = "promo"
            rung = "L"
            start = "2026-11-27T08:00"
            end = "2026-11-28T00:00"
            lead = "30m"
            "#,
        )
        .unwrap();
        let compiled = p.compile().unwrap();
        assert_eq!(p.vms, ["web-1", "web-2"]);
        assert!(!p.effective_dry_run(true), "the group's dry_run wins");
        assert_eq!(p.rules[0].metric, Metric::PsiCpuSomeAvg10);
        assert_eq!(p.rules[0].window, Window::Last);
        assert_eq!(p.rules[1].window, Window::OneMinute);
        assert_eq!(p.targets[0].hold_for, Some(Duration::from_secs(60)));
        assert!(p.forecast.enabled && !p.forecast.dry_run);
        assert_eq!(p.forecast.metrics, [Metric::PsiCpuSomeAvg10]);
        assert_eq!(p.forecast.window, Duration::from_secs(900));
        assert_eq!(
            compiled.boosts[0].start,
            "2026-11-27T13:00:00Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let base = || {
            GroupPolicy::with_ladder(vec![Rung {
                name: "S".into(),
                vcpus: 1,
                memory_bytes: 1 << 30,
                oktawave_type: None,
            }])
        };
        let unknown = toml::from_str::<GroupPolicy>("name = \"web\"\nsurprise = 1").unwrap_err();
        assert!(unknown.to_string().contains("surprise"), "{unknown}");
        let bad_window =
            toml::from_str::<GroupPolicy>("name = \"web\"\n[scale_down]\nwindow = \"2-5\"")
                .unwrap_err();
        assert!(
            bad_window.to_string().contains("HH:MM-HH:MM"),
            "{bad_window}"
        );
        let bad_zone = toml::from_str::<GroupPolicy>("name = \"web\"\ntimezone = \"Mars/Olympus\"")
            .unwrap_err();
        assert!(bad_zone.to_string().contains("timezone"), "{bad_zone}");

        let nameless = toml::from_str::<GroupPolicy>("vms = [\"web-1\"]").unwrap_err();
        assert!(nameless.to_string().contains("name"), "{nameless}");
        let monitored: GroupPolicy = toml::from_str("name = \"db\"").unwrap();
        assert!(!monitored.resizes());

        let mut p = base();
        p.rules[0].clear = Some(0.9);
        assert!(p.compile().unwrap_err().to_string().starts_with("rules[0]"));
        let mut p = base();
        p.targets[0].metric = Metric::PsiMemorySomeAvg10;
        assert!(
            p.compile()
                .unwrap_err()
                .to_string()
                .starts_with("targets[0]")
        );
        let mut p = base();
        p.scale_down.cpu_ceiling = 1.5;
        assert!(
            p.compile()
                .unwrap_err()
                .to_string()
                .starts_with("scale_down.cpu_ceiling")
        );
        let mut p = base();
        p.forecast.window = Duration::from_secs(60);
        assert!(
            p.compile()
                .unwrap_err()
                .to_string()
                .starts_with("forecast.window")
        );
        let mut p = base();
        p.forecast.metrics = vec![Metric::LatencyP95Seconds];
        assert!(
            p.compile()
                .unwrap_err()
                .to_string()
                .starts_with("forecast.metrics")
        );
        let mut p = base();
        p.ladder.clear();
        assert_eq!(
            p.compile().unwrap_err(),
            PolicyError::Ladder(LadderError::Empty)
        );
    }
}
