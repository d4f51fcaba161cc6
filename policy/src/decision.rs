//! What the engine outputs: decisions with evidence, events about resizes in flight, and
//! notes saying why a VM was left alone.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Timestamp;
use super::ladder::Size;
use super::metric::Metric;

/// Which way a resize goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// To a larger rung (hot-add).
    Up,
    /// To a smaller rung (a restart).
    Down,
}

impl Direction {
    /// `up` or `down` (the metric label and JSON value).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What caused a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A threshold rule fired.
    Rule,
    /// Target tracking asked for more capacity.
    Target,
    /// A scheduled boost's floor.
    Boost,
    /// The VM is below the group's `min_rung`.
    BelowMin,
    /// The VM is above the group's `max_rung` (shrunk inside the window, one rung a night).
    AboveMax,
    /// Sustained low use inside the scale-down window.
    ScaleDown,
    /// An operator's request through the API.
    Manual,
    /// A rule's metric is trending towards its threshold and will cross it within the
    /// resize lead time (`[groups.forecast]`).
    Forecast,
}

impl Trigger {
    /// The config/JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Rule => "rule",
            Trigger::Target => "target",
            Trigger::Boost => "boost",
            Trigger::BelowMin => "below_min",
            Trigger::AboveMax => "above_max",
            Trigger::ScaleDown => "scale_down",
            Trigger::Manual => "manual",
            Trigger::Forecast => "forecast",
        }
    }

    /// Parses [`Trigger::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Trigger::Rule,
            Trigger::Target,
            Trigger::Boost,
            Trigger::BelowMin,
            Trigger::AboveMax,
            Trigger::ScaleDown,
            Trigger::Manual,
            Trigger::Forecast,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// Whether the decision came from load (counts against daily caps; obeys cooldowns).
    pub fn is_load_driven(self) -> bool {
        matches!(
            self,
            Trigger::Rule | Trigger::Target | Trigger::ScaleDown | Trigger::Forecast
        )
    }
}

/// A rung with its size, as carried in decisions and requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizedRung {
    /// The rung's name.
    pub rung: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory bytes.
    pub memory_bytes: u64,
}

impl SizedRung {
    /// The size without the name.
    pub fn size(&self) -> Size {
        Size {
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
        }
    }
}

/// One measured fact behind a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The metric.
    pub metric: Metric,
    /// The window it was read over ("1m", "24h p95", ...).
    pub window: String,
    /// The value read (for scale-down: projected onto the smaller rung).
    pub value: f64,
    /// The threshold it was compared with.
    pub threshold: f64,
    /// The comparison that held (">=", "<", ...).
    pub comparison: String,
    /// The rule, target or check, in words.
    pub rule: String,
    /// How long the condition held, when that matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_for_seconds: Option<u64>,
    /// The trend behind a forecast decision (`value` is then the predicted value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastEvidence>,
}

/// The trend a forecast fitted, and how far ahead it looked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForecastEvidence {
    /// The least-squares slope, in the metric's unit per second.
    pub slope_per_second: f64,
    /// How well the line fits the 1-minute means (R², 0 to 1).
    pub r2: f64,
    /// The fitted value now.
    pub fitted_now: f64,
    /// How far ahead the line was read: the resize lead time, in seconds.
    pub horizon_seconds: u64,
    /// The 1-minute means the line was fitted to.
    pub points: u32,
}

/// The size a VM reported when a resize was decided; verification compares against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Online vCPUs.
    pub vcpus: u32,
    /// MemTotal bytes.
    pub memory_total_bytes: u64,
}

/// A resize the engine decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Unique id; the webhook's `id` and `Idempotency-Key`, stable across retries.
    pub id: String,
    /// The group.
    pub group: String,
    /// The VM.
    pub vm: String,
    /// Up or down.
    pub direction: Direction,
    /// The rung the VM is on.
    pub from: SizedRung,
    /// The rung requested.
    pub to: SizedRung,
    /// What caused it.
    pub trigger: Trigger,
    /// A sentence for humans.
    pub reason: String,
    /// The metric values, windows and rules behind it.
    pub evidence: Vec<Evidence>,
    /// Recorded only, not sent.
    pub dry_run: bool,
    /// When it was decided.
    pub created_at: Timestamp,
    /// When an unverified resize is marked failed.
    pub verify_deadline: Timestamp,
    /// What the VM reported at decision time.
    pub baseline: Baseline,
}

/// A deterministic, UUID-shaped id for a decision: the same decision at the same instant
/// gets the same id, so two collectors agreeing on a resize agree on its idempotency key.
pub fn decision_id(group: &str, vm: &str, created_at: Timestamp, to: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        group,
        vm,
        &created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        to,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8 (custom)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Why a VM (or a whole group) got no decision this tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// No report within the stale-after limit; pending timers were reset.
    Stale {
        /// When the last report arrived.
        last_report: Option<Timestamp>,
    },
    /// The agent has not reported a size.
    NoSize,
    /// The reported size is on no rung of the ladder.
    OffLadder {
        /// Reported vCPUs.
        vcpus: u32,
        /// Reported MemTotal.
        memory_total_bytes: u64,
    },
    /// A rule's metric is absent or its window is incomplete.
    MissingMetric {
        /// The metric.
        metric: Metric,
        /// The window.
        window: String,
        /// Set when the window is incomplete only because it reaches back into the VM's
        /// warm-up after its last resize: when it no longer does (the warm-up's end plus
        /// the window's length), so the metric is read again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warming_up_until: Option<Timestamp>,
    },
    /// The VM's cooldown has not run out.
    Cooldown {
        /// Direction held back.
        direction: Direction,
        /// When it runs out.
        until: Timestamp,
    },
    /// The daily (up) or nightly (down) cap is used up.
    Cap {
        /// Direction held back.
        direction: Direction,
        /// Resizes already counted.
        count: u32,
        /// The cap.
        cap: u32,
    },
    /// The group is paused (by an operator or the circuit breaker).
    Paused {
        /// Who paused it.
        by: PauseReason,
    },
    /// The scale-down window is closed.
    WindowClosed {
        /// When it next opens.
        opens_at: Timestamp,
    },
    /// Another member's resize is in flight or warming up.
    RollInProgress {
        /// The member being resized.
        vm: String,
    },
    /// A member of a redundant group is stale, so no member starts a resize.
    MemberStale {
        /// The stale member.
        vm: String,
    },
    /// A failed resize stopped the roll in this direction.
    RollStopped {
        /// Direction held back.
        direction: Direction,
        /// When the roll may continue.
        until: Timestamp,
    },
    /// A boost is on, which blocks scale-down.
    BoostActive {
        /// The boost.
        boost: String,
    },
    /// A group of one shrinks only with `allow_restart = true`.
    RestartNotAllowed,
    /// Load says grow but the VM is at the group's max rung.
    AtMax,
    /// Load is still high (a rule or target is pending or firing), so it will not shrink.
    Busy,
    /// The last lookback does not show the smaller rung would fit.
    InsufficientEvidence {
        /// What was missing or too high.
        detail: String,
    },
}

/// Who paused a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// An operator, through the API.
    Operator,
    /// Consecutive failures tripped the circuit breaker.
    CircuitBreaker,
}

impl PauseReason {
    /// The stored/JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Operator => "operator",
            PauseReason::CircuitBreaker => "circuit_breaker",
        }
    }
}

impl SkipReason {
    /// The reason in words, with every time written by `time`: [`Display`](fmt::Display)
    /// writes RFC 3339 UTC; the status page and the CLI add the group's local time.
    pub fn describe(&self, time: &dyn Fn(Timestamp) -> String) -> String {
        match self {
            SkipReason::Stale {
                last_report: Some(t),
            } => format!("stale: last report at {}", time(*t)),
            SkipReason::Stale { last_report: None } => "stale: never reported".to_owned(),
            SkipReason::NoSize => "no reported size".to_owned(),
            SkipReason::OffLadder {
                vcpus,
                memory_total_bytes,
            } => format!(
                "reported size ({vcpus} vCPUs, {memory_total_bytes} B) is on no rung of the ladder"
            ),
            SkipReason::MissingMetric {
                metric,
                window,
                warming_up_until: Some(until),
            } => format!(
                "warming up until {}: metric {metric} ({window}) reads only samples from after \
                 the resize's warm-up",
                time(*until)
            ),
            SkipReason::MissingMetric {
                metric,
                window,
                warming_up_until: None,
            } => format!("metric {metric} ({window}) absent or incomplete"),
            SkipReason::Cooldown { direction, until } => {
                format!("{direction} cooldown until {}", time(*until))
            }
            SkipReason::Cap {
                direction,
                count,
                cap,
            } => format!("{direction} cap reached ({count} of {cap})"),
            SkipReason::Paused { by } => format!("group paused ({})", by.as_str()),
            SkipReason::WindowClosed { opens_at } => {
                format!("scale-down window closed; opens at {}", time(*opens_at))
            }
            SkipReason::RollInProgress { vm } => format!("roll in progress: waiting for {vm}"),
            SkipReason::MemberStale { vm } => {
                format!("member {vm} is stale; no member starts a resize")
            }
            SkipReason::RollStopped { direction, until } => format!(
                "{direction} roll stopped after a failed resize until {}",
                time(*until)
            ),
            SkipReason::BoostActive { boost } => format!("boost {boost} blocks scale-down"),
            SkipReason::RestartNotAllowed => {
                "group of one: shrinking needs allow_restart = true".to_owned()
            }
            SkipReason::AtMax => "at the group's max rung".to_owned(),
            SkipReason::Busy => "a scale-up rule or target is pending: not shrinking".to_owned(),
            SkipReason::InsufficientEvidence { detail } => format!("no scale-down: {detail}"),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&|t| t.to_rfc3339()))
    }
}

/// A note that a VM (or the group, when `vm` is `None`) was left alone, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skip {
    /// The VM, or `None` for the whole group.
    pub vm: Option<String>,
    /// Why.
    pub reason: SkipReason,
}

/// Something that happened to a resize already decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The agent reported the requested size.
    Verified {
        /// Decision id.
        id: String,
        /// The VM.
        vm: String,
        /// When the engine saw it.
        at: Timestamp,
        /// Reported vCPUs.
        vcpus: u32,
        /// Reported MemTotal.
        memory_total_bytes: u64,
    },
    /// The resize failed: not verified in time, or the actuator gave up.
    Failed {
        /// Decision id.
        id: String,
        /// The VM.
        vm: String,
        /// When.
        at: Timestamp,
        /// Why.
        reason: String,
    },
    /// The roll stopped after a failure.
    RollStopped {
        /// Direction held back.
        direction: Direction,
        /// Until when.
        until: Timestamp,
    },
    /// The circuit breaker paused the group.
    CircuitOpened {
        /// Consecutive failures counted.
        failures: u32,
        /// When.
        at: Timestamp,
    },
}

/// Everything one evaluation of a group produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evaluation {
    /// New decisions (at most one per group per tick: one member at a time).
    pub decisions: Vec<Decision>,
    /// What happened to earlier decisions.
    pub events: Vec<Event>,
    /// Why VMs were left alone.
    pub skips: Vec<Skip>,
}

impl Evaluation {
    pub(crate) fn skip(&mut self, vm: Option<&str>, reason: SkipReason) {
        self.skips.push(Skip {
            vm: vm.map(str::to_owned),
            reason,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn a_warm_up_reads_as_warming_up_with_times_written_by_the_caller() {
        let until: Timestamp = "2026-12-04T18:02:00Z".parse().unwrap();
        let warming = SkipReason::MissingMetric {
            metric: Metric::CpuUtilization,
            window: "1m".into(),
            warming_up_until: Some(until),
        };
        assert!(
            warming
                .to_string()
                .starts_with("warming up until 2026-12-04T18:02:00+00:00: metric "),
            "{warming}"
        );
        assert!(
            warming
                .describe(&|t| format!("<{}>", t.timestamp()))
                .starts_with("warming up until <1796407320>"),
        );
        let absent = SkipReason::MissingMetric {
            metric: Metric::CpuUtilization,
            window: "1m".into(),
            warming_up_until: None,
        };
        assert!(absent.to_string().ends_with("absent or incomplete"));
        // The JSON names the end only when there is one, and reads back.
        let json = serde_json::to_value(&warming).unwrap();
        assert_eq!(json["warming_up_until"], "2026-12-04T18:02:00Z");
        assert!(
            serde_json::to_value(&absent)
                .unwrap()
                .get("warming_up_until")
                .is_none()
        );
        assert_eq!(serde_json::from_value::<SkipReason>(json).unwrap(), warming);
    }

    #[test]
    fn decision_ids_are_uuid_shaped_and_distinct() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let a = decision_id("web", "web-1", t, "L");
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
        assert_eq!(a, decision_id("web", "web-1", t, "L"));
        assert_ne!(a, decision_id("web", "web-2", t, "L"));
        assert_ne!(
            a,
            decision_id("web", "web-1", t + chrono::Duration::milliseconds(1), "L")
        );
        // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            decision_id("ab", "c", t, "L"),
            decision_id("a", "bc", t, "L")
        );
    }
}
