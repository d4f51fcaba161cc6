//! What the engine shows of itself: each group's status, the resizes in flight, the
//! newest decisions and skips, as the API, the status page and `/metrics` read them.

use serde::Serialize;

use crate::request::Attempt;
use crate::store::{StoredDecision, Verification};
use rally_policy::Timestamp;
use rally_policy::decision::{Decision, Direction, PauseReason, SkipReason};
use rally_policy::ladder::Size;

/// A resize waiting for verification, as shown by the API and the status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InFlight {
    /// Decision id.
    pub id: String,
    /// The VM.
    pub vm: String,
    /// Up or down.
    pub direction: Direction,
    /// The size requested.
    pub to: Size,
    /// When decided.
    pub created_at: Timestamp,
    /// When it fails if still unverified.
    pub deadline: Timestamp,
}

/// The newest decision of a group, in brief.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionBrief {
    /// Decision id.
    pub id: String,
    /// The VM.
    pub vm: String,
    /// Up or down.
    pub direction: Direction,
    /// Rung before.
    pub from: String,
    /// Rung requested.
    pub to: String,
    /// What caused it (`rule`, `manual`, ...).
    pub trigger: String,
    /// A sentence for humans.
    pub reason: String,
    /// Recorded only.
    pub dry_run: bool,
    /// When decided.
    pub created_at: Timestamp,
}

impl From<&Decision> for DecisionBrief {
    fn from(d: &Decision) -> Self {
        Self {
            id: d.id.clone(),
            vm: d.vm.clone(),
            direction: d.direction,
            from: d.from.rung.clone(),
            to: d.to.rung.clone(),
            trigger: d.trigger.as_str().to_owned(),
            reason: d.reason.clone(),
            dry_run: d.dry_run,
            created_at: d.created_at,
        }
    }
}

/// Why a VM (or the group) got no decision at the last tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkipNote {
    /// The VM, or `None` for the whole group.
    pub vm: Option<String>,
    /// The reason's kind (`stale`, `cooldown`, ... the `reason` label of
    /// `rally_resize_skips`).
    pub kind: &'static str,
    /// The reason in words.
    pub reason: String,
}

/// The name of a skip reason's kind.
pub fn skip_kind(reason: &SkipReason) -> &'static str {
    match reason {
        SkipReason::Stale { .. } => "stale",
        SkipReason::NoSize => "no_size",
        SkipReason::OffLadder { .. } => "off_ladder",
        SkipReason::MissingMetric { .. } => "missing_metric",
        SkipReason::Cooldown { .. } => "cooldown",
        SkipReason::Cap { .. } => "cap",
        SkipReason::Paused { .. } => "paused",
        SkipReason::WindowClosed { .. } => "window_closed",
        SkipReason::RollInProgress { .. } => "roll_in_progress",
        SkipReason::MemberStale { .. } => "member_stale",
        SkipReason::RollStopped { .. } => "roll_stopped",
        SkipReason::BoostActive { .. } => "boost_active",
        SkipReason::RestartNotAllowed => "restart_not_allowed",
        SkipReason::AtMax => "at_max",
        SkipReason::Busy => "busy",
        SkipReason::InsufficientEvidence { .. } => "insufficient_evidence",
    }
}

/// One group as the API, the status page and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// Its members, as configured.
    pub members: Vec<String>,
    /// Whether it has a ladder (false: monitored only).
    pub resizes: bool,
    /// The dry-run flag in force.
    pub dry_run: bool,
    /// Paused by an operator or the circuit breaker.
    pub paused: bool,
    /// Who paused it.
    pub paused_by: Option<PauseReason>,
    /// Since when.
    pub paused_at: Option<Timestamp>,
    /// The circuit breaker tripped (a pause that only `resume` lifts).
    pub circuit_open: bool,
    /// Failed or unverified resizes in a row.
    pub consecutive_failures: u32,
    /// The resize waiting for verification, if any.
    pub in_flight: Option<InFlight>,
    /// The newest decision.
    pub last_decision: Option<DecisionBrief>,
    /// Why members got no decision at the last tick.
    pub skips: Vec<SkipNote>,
}

/// A decision with everything recorded about it (the `/api/v1/decisions` rows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// The decision and its status.
    #[serde(flatten)]
    pub stored: StoredDecision,
    /// Every delivery attempt.
    pub attempts: Vec<Attempt>,
    /// The verification result, once there is one.
    pub verification: Option<Verification>,
}
