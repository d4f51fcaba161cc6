//! What the engine shows of itself: each group's status, the resizes in flight, the
//! newest decisions and skips, as the API, the status page and `/metrics` read them.

use chrono_tz::Tz;
use serde::Serialize;

use crate::request::Attempt;
use crate::store::{StoredDecision, Verification};
use rally_policy::decision::{Decision, Direction, PauseReason, Skip, SkipReason};
use rally_policy::ladder::Size;
use rally_policy::{GroupState, Ladder, Metric, MetricView, Policy, Rung, Timestamp, Window};

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
    /// The reason as data (`kind` and its fields, times in RFC 3339 UTC), for scripts
    /// and for the CLI to write times in the group's zone.
    pub detail: SkipReason,
}

impl From<&Skip> for SkipNote {
    fn from(s: &Skip) -> Self {
        Self {
            vm: s.vm.clone(),
            kind: skip_kind(&s.reason),
            reason: s.reason.to_string(),
            detail: s.reason.clone(),
        }
    }
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
    /// Its `timezone` (IANA name): the status page and the CLI show times in it too.
    pub timezone: Tz,
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
    /// The ladder's rungs, smallest first (empty: monitored only).
    pub ladder: Vec<Rung>,
    /// The threshold rules and their timers per member.
    pub rules: Vec<RuleStatus>,
}

/// One threshold rule of a group and how long it has held on each member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleStatus {
    /// The metric watched.
    pub metric: Metric,
    /// The span read (`last`, `1m`, `5m`).
    pub window: Window,
    /// `>=` or `<=`: how the value compares to the threshold when the rule holds.
    pub comparison: &'static str,
    /// Value at which the rule starts holding.
    pub threshold: f64,
    /// How long it must hold before it fires, seconds.
    pub for_seconds: u64,
    /// Members whose rule timer runs or that fired (a quiet member is not listed).
    pub held: Vec<RuleHeld>,
}

/// A rule holding on one member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleHeld {
    /// The VM.
    pub vm: String,
    /// Since when the rule has held without interruption.
    pub since: Option<Timestamp>,
    /// The rule fired and has not cleared yet.
    pub firing: bool,
}

/// A group's ladder and rules with their timers, as [`GroupStatus`] shows them.
pub fn policy_status(policy: Option<&Policy>, state: &GroupState) -> (Vec<Rung>, Vec<RuleStatus>) {
    let Some(policy) = policy else {
        return (Vec::new(), Vec::new());
    };
    let rules = policy
        .config
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let mut held: Vec<RuleHeld> = state
                .timers
                .iter()
                .filter_map(|(vm, timers)| {
                    let t = timers.rules.get(i)?;
                    (t.firing || t.pending_since.is_some()).then(|| RuleHeld {
                        vm: vm.clone(),
                        since: t.pending_since,
                        firing: t.firing,
                    })
                })
                .collect();
            held.sort_by(|a, b| a.vm.cmp(&b.vm));
            RuleStatus {
                metric: rule.metric,
                window: rule.window,
                comparison: if rule.metric.higher_is_busier() {
                    ">="
                } else {
                    "<="
                },
                threshold: rule.threshold,
                for_seconds: rule.hold_for.as_secs(),
                held,
            }
        })
        .collect();
    (policy.ladder.rungs().to_vec(), rules)
}

/// One member of a group as it reads now: its rung and what each of the group's rules
/// reads on it. The status page, `/api/v1/vms`, `/api/v1/groups` and `/metrics` all show
/// these figures, computed by [`members_now`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberNow {
    /// The VM.
    pub vm: String,
    /// The rung its reported size matches (`None`: no size reported yet, or no rung fits).
    pub rung: Option<String>,
    /// That rung's position on the ladder, 0 being the smallest.
    pub rung_index: Option<usize>,
    /// Each of the group's rules, in the order of its `[[groups.rules]]`.
    pub rules: Vec<RuleReading>,
}

/// One rule on one member, now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleReading {
    /// The rule's position in the group's `[[groups.rules]]`, 0 being the first.
    pub rule: usize,
    /// The metric watched.
    pub metric: Metric,
    /// The span read (`last`, `1m`, `5m`).
    pub window: Window,
    /// `>=` or `<=`: how the value compares to the threshold when the rule holds.
    pub comparison: &'static str,
    /// Value at which the rule starts holding.
    pub threshold: f64,
    /// How long it must hold before it fires, seconds.
    pub for_seconds: u64,
    /// What the rule reads now, as the engine reads it (a window counts only when
    /// complete); `None`: the metric is absent.
    pub value: Option<f64>,
    /// Seconds the rule has held without interruption (`None`: not holding).
    pub held_seconds: Option<f64>,
    /// The rule fired and has not cleared yet.
    pub firing: bool,
}

/// Each member of `group` at `now`: the rung its size reported through `view` matches,
/// and every rule's value, threshold and time held.
pub fn members_now(group: &GroupStatus, view: &impl MetricView, now: Timestamp) -> Vec<MemberNow> {
    let ladder = Ladder::new(group.ladder.clone(), None, None).ok();
    group
        .members
        .iter()
        .map(|vm| {
            let rung_index = ladder.as_ref().and_then(|ladder| {
                let size = view.reported_size(vm)?;
                ladder.locate(size.vcpus, size.memory_total_bytes)
            });
            let rules = group
                .rules
                .iter()
                .enumerate()
                .map(|(i, rule)| {
                    let value = match rule.window.duration() {
                        None => view.latest(vm, rule.metric).map(|o| o.value),
                        Some(d) => view
                            .mean(vm, rule.metric, d)
                            .filter(|s| s.complete)
                            .map(|s| s.value),
                    };
                    let held = rule.held.iter().find(|h| &h.vm == vm);
                    RuleReading {
                        rule: i,
                        metric: rule.metric,
                        window: rule.window,
                        comparison: rule.comparison,
                        threshold: rule.threshold,
                        for_seconds: rule.for_seconds,
                        value,
                        held_seconds: held
                            .and_then(|h| h.since)
                            .map(|since| (now - since).num_milliseconds().max(0) as f64 / 1000.0),
                        firing: held.is_some_and(|h| h.firing),
                    }
                })
                .collect();
            MemberNow {
                vm: vm.clone(),
                rung: rung_index
                    .and_then(|i| group.ladder.get(i))
                    .map(|r| r.name.clone()),
                rung_index,
                rules,
            }
        })
        .collect()
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

/// What became of a decision's request, for scripts: `dry_run` (recorded, never sent to
/// the actuator), `pending` (no final word yet), or the actuator's verdict (`accepted`,
/// `rejected`, `gave_up`).
pub fn outcome(dry_run: bool, verdict: Option<&str>) -> &str {
    if dry_run {
        DRY_RUN
    } else {
        verdict.unwrap_or("pending")
    }
}

/// [`outcome`] for people: a dry run reads "dry run: not sent", never "accepted".
pub fn outcome_text(outcome: &str) -> &str {
    if outcome == DRY_RUN {
        "dry run: not sent"
    } else {
        outcome
    }
}

const DRY_RUN: &str = "dry_run";

impl DecisionRecord {
    /// Whether the request went to the actuator (a dry-run's goes to the log only).
    pub fn sent(&self) -> bool {
        !self.stored.decision.dry_run
    }

    /// What became of the request ([`outcome`]).
    pub fn outcome(&self) -> &str {
        outcome(self.stored.decision.dry_run, self.stored.verdict.as_deref())
    }
}
