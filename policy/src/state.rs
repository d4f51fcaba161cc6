//! What the engine remembers about a group between ticks: resizes in flight and recent
//! history (cooldowns and caps are counted from it), pause and circuit state, and the rule
//! timers of each VM.
//!
//! Everything except the rule timers is persisted by the store; after a restart the
//! collector rebuilds a [`GroupState`] from it, so cooldowns, caps and in-flight resizes
//! survive. Rule timers restart from zero, which can only delay a resize.

use std::collections::HashMap;

use serde::Serialize;

use super::Timestamp;
use super::decision::{Baseline, Decision, Direction, Event, PauseReason, Trigger};
use super::group::{GroupPolicy, Policy};
use super::ladder::{MEMORY_BLOCK_BYTES, Size};
use super::rule::RuleState;
use super::view::ReportedSize;

/// How long resize history is kept in memory: a daily cap needs at most one local day, a
/// nightly cap one night; two days covers both in any zone.
const HISTORY: chrono::Duration = chrono::Duration::hours(49);
/// Bound on remembered resizes per group, whatever the clock does.
const MAX_HISTORY: usize = 10_000;
/// How many of the latest verified scale-ups the resize lead time is measured over.
const LEAD_TIME_SAMPLES: usize = 5;

/// Where a resize is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ResizeStatus {
    /// Decided (and being or been sent); waiting for the agent to report the new size.
    InFlight,
    /// The agent reported the new size.
    Verified {
        /// When the engine saw it.
        at: Timestamp,
    },
    /// Not verified in time, or the actuator gave up.
    Failed {
        /// When.
        at: Timestamp,
    },
    /// Recorded in dry-run; counts as if verified when decided (cooldowns, caps, warm-up).
    DryRun,
}

/// One resize the group decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResizeRecord {
    /// Decision id.
    pub id: String,
    /// The VM.
    pub vm: String,
    /// Up or down.
    pub direction: Direction,
    /// What caused it.
    pub trigger: Trigger,
    /// Size before.
    pub from: Size,
    /// Size requested.
    pub to: Size,
    /// When decided.
    pub created_at: Timestamp,
    /// When it fails if still unverified.
    pub deadline: Timestamp,
    /// What the VM reported when decided.
    pub baseline: Baseline,
    /// Where it is.
    pub status: ResizeStatus,
}

impl ResizeRecord {
    /// The record a decision starts.
    pub fn from_decision(d: &Decision) -> Self {
        Self {
            id: d.id.clone(),
            vm: d.vm.clone(),
            direction: d.direction,
            trigger: d.trigger,
            from: d.from.size(),
            to: d.to.size(),
            created_at: d.created_at,
            deadline: d.verify_deadline,
            baseline: d.baseline,
            status: if d.dry_run {
                ResizeStatus::DryRun
            } else {
                ResizeStatus::InFlight
            },
        }
    }

    /// When this resize counts as done, for cooldown and warm-up (verified or dry-run).
    pub fn completed_at(&self) -> Option<Timestamp> {
        match self.status {
            ResizeStatus::Verified { at } => Some(at),
            ResizeStatus::DryRun => Some(self.created_at),
            ResizeStatus::InFlight | ResizeStatus::Failed { .. } => None,
        }
    }

    /// Whether this is a forecast's note: a forecast decision recorded in dry-run while
    /// the group's `forecast.dry_run` is on. A note is no resize: it holds nothing back
    /// (no cooldown, cap or warm-up), so a dry-run forecast never delays a live rule.
    pub fn is_forecast_note(&self, cfg: &GroupPolicy) -> bool {
        cfg.forecast.dry_run
            && self.trigger == Trigger::Forecast
            && self.status == ResizeStatus::DryRun
    }

    /// When this resize counts as done under `cfg`: [`ResizeRecord::completed_at`],
    /// except that a forecast's note never does.
    pub fn done_at(&self, cfg: &GroupPolicy) -> Option<Timestamp> {
        if self.is_forecast_note(cfg) {
            None
        } else {
            self.completed_at()
        }
    }

    /// Whether `reported` shows this resize landed: the requested vCPU count, and MemTotal
    /// moved by the requested amount give or take one 128 MiB memory block. A scale-up is
    /// never verified while the guest leaves hot-added CPUs or memory offline: the VM
    /// would not be any faster.
    pub fn verified_by(&self, reported: &ReportedSize) -> bool {
        if reported.at <= self.created_at || reported.vcpus != self.to.vcpus {
            return false;
        }
        if self.direction == Direction::Up
            && (reported.offline_cpus > 0 || reported.offline_memory_bytes > 0)
        {
            return false;
        }
        let requested = i128::from(self.to.memory_bytes) - i128::from(self.from.memory_bytes);
        let moved =
            i128::from(reported.memory_total_bytes) - i128::from(self.baseline.memory_total_bytes);
        let block = i128::from(MEMORY_BLOCK_BYTES);
        match self.direction {
            Direction::Up => moved >= requested - block,
            Direction::Down => moved <= requested + block,
        }
    }
}

/// A pause flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// Since when.
    pub at: Timestamp,
    /// Who paused.
    pub by: PauseReason,
}

/// Per-VM rule and target timers (in memory only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmTimers {
    /// One per configured rule, in order.
    pub rules: Vec<RuleState>,
    /// Since when each target has been above its band.
    pub targets: Vec<Option<Timestamp>>,
}

impl VmTimers {
    /// Forgets every pending timer and firing flag.
    pub fn reset(&mut self) {
        self.rules.iter_mut().for_each(RuleState::reset);
        self.targets.iter_mut().for_each(|t| *t = None);
    }

    /// Whether any rule or target is pending or firing (load says "grow").
    pub fn busy(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.firing || r.pending_since.is_some())
            || self.targets.iter().any(Option::is_some)
    }
}

/// The group's warm-up as a chrono duration (saturating).
fn warm_up(cfg: &GroupPolicy) -> chrono::Duration {
    chrono::Duration::from_std(cfg.warm_up).unwrap_or(chrono::Duration::MAX)
}

/// Everything the engine keeps about one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Set while paused.
    pub pause: Option<Pause>,
    /// Failed or unverified resizes since the last verified one (the circuit breaker's count).
    pub consecutive_failures: u32,
    /// After a failed scale-up, no scale-up starts in the group before this.
    pub up_roll_stopped_until: Option<Timestamp>,
    /// After a failed scale-down, no scale-down starts in the group before this.
    pub down_roll_stopped_until: Option<Timestamp>,
    /// Resizes in flight and the recent history, oldest first.
    pub resizes: Vec<ResizeRecord>,
    /// Rule timers per VM.
    pub timers: HashMap<String, VmTimers>,
}

impl GroupState {
    /// The oldest resize in flight, if any. A resize that restarts its VM is alone in
    /// flight (one member at a time); hot-add grows of several members may overlap.
    pub fn in_flight(&self) -> Option<&ResizeRecord> {
        self.resizes
            .iter()
            .find(|r| r.status == ResizeStatus::InFlight)
    }

    /// `vm`'s resize in flight, if any.
    pub fn in_flight_for(&self, vm: &str) -> Option<&ResizeRecord> {
        self.resizes
            .iter()
            .find(|r| r.vm == vm && r.status == ResizeStatus::InFlight)
    }

    /// Pauses the group (operator).
    pub fn pause(&mut self, now: Timestamp) {
        if self.pause.is_none() {
            self.pause = Some(Pause {
                at: now,
                by: PauseReason::Operator,
            });
        }
    }

    /// Resumes the group, closing the circuit breaker and lifting roll stops.
    pub fn resume(&mut self) {
        self.pause = None;
        self.consecutive_failures = 0;
        self.up_roll_stopped_until = None;
        self.down_roll_stopped_until = None;
    }

    /// Adds a decision's record.
    pub fn record(&mut self, decision: &Decision) {
        self.resizes.push(ResizeRecord::from_decision(decision));
    }

    /// The actuator gave up on `id` (4xx, retries exhausted, command failed): the resize
    /// fails, the roll stops, and the circuit breaker counts it.
    pub fn actuation_failed(
        &mut self,
        policy: &Policy,
        id: &str,
        now: Timestamp,
        reason: &str,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(i) = self
            .resizes
            .iter()
            .position(|r| r.id == id && r.status == ResizeStatus::InFlight)
        {
            self.fail(policy, i, now, reason, &mut events);
        }
        events
    }

    pub(crate) fn fail(
        &mut self,
        policy: &Policy,
        index: usize,
        now: Timestamp,
        reason: &str,
        events: &mut Vec<Event>,
    ) {
        let cfg = &policy.config;
        let rec = &mut self.resizes[index];
        rec.status = ResizeStatus::Failed { at: now };
        events.push(Event::Failed {
            id: rec.id.clone(),
            vm: rec.vm.clone(),
            at: now,
            reason: reason.to_owned(),
        });
        let (direction, created_at) = (rec.direction, rec.created_at);
        self.consecutive_failures += 1;
        let until = match direction {
            Direction::Up => {
                now + chrono::Duration::from_std(cfg.scale_up.cooldown).unwrap_or_default()
            }
            Direction::Down => cfg
                .scale_down
                .window
                .occurrence_at(cfg.timezone, created_at)
                .map_or(now, |o| o.end.max(now)),
        };
        match direction {
            Direction::Up => self.up_roll_stopped_until = Some(until),
            Direction::Down => self.down_roll_stopped_until = Some(until),
        }
        events.push(Event::RollStopped { direction, until });
        if self.consecutive_failures >= cfg.circuit_breaker && self.pause.is_none() {
            self.pause = Some(Pause {
                at: now,
                by: PauseReason::CircuitBreaker,
            });
            events.push(Event::CircuitOpened {
                failures: self.consecutive_failures,
                at: now,
            });
        }
    }

    /// Drops history no cap or cooldown can need any more (never a resize in flight).
    pub fn prune(&mut self, now: Timestamp) {
        self.resizes
            .retain(|r| r.status == ResizeStatus::InFlight || now - r.created_at < HISTORY);
        if self.resizes.len() > MAX_HISTORY {
            let excess = self.resizes.len() - MAX_HISTORY;
            self.resizes.drain(..excess);
        }
    }

    /// Samples before this instant are left out of `vm`'s windows (`cfg.warm_up` after
    /// its last completed resize).
    pub fn warm_up_since(&self, vm: &str, cfg: &GroupPolicy) -> Option<Timestamp> {
        let warm_up = warm_up(cfg);
        self.resizes
            .iter()
            .filter(|r| r.vm == vm)
            .filter_map(|r| r.done_at(cfg))
            .max()
            .map(|t| t + warm_up)
    }

    /// The end of the group's last warm-up, while it lasts (the next member waits for it).
    pub fn group_warming_until(
        &self,
        cfg: &GroupPolicy,
        now: Timestamp,
    ) -> Option<(Timestamp, &str)> {
        let warm_up = warm_up(cfg);
        self.resizes
            .iter()
            .filter_map(|r| r.done_at(cfg).map(|t| (t + warm_up, r.vm.as_str())))
            .filter(|(t, _)| *t > now)
            .max_by_key(|(t, _)| *t)
    }

    /// The resize lead time measured from history: the median time from decision to
    /// verification of the group's latest (up to five) verified scale-ups. `None`
    /// without one.
    pub fn scale_up_lead_time(&self) -> Option<std::time::Duration> {
        let mut took: Vec<std::time::Duration> = self
            .resizes
            .iter()
            .rev()
            .filter(|r| r.direction == Direction::Up)
            .filter_map(|r| match r.status {
                ResizeStatus::Verified { at } => (at - r.created_at).to_std().ok(),
                _ => None,
            })
            .take(LEAD_TIME_SAMPLES)
            .collect();
        if took.is_empty() {
            return None;
        }
        took.sort();
        let mid = took.len() / 2;
        Some(if took.len() % 2 == 1 {
            took[mid]
        } else {
            (took[mid - 1] + took[mid]) / 2
        })
    }

    /// Whether `vm` has a forecast's note younger than `scale_up.cooldown` (a forecast
    /// in dry-run notes a VM once per cooldown, not every tick).
    pub fn forecast_noted(&self, vm: &str, cfg: &GroupPolicy, now: Timestamp) -> bool {
        let cooldown =
            chrono::Duration::from_std(cfg.scale_up.cooldown).unwrap_or(chrono::Duration::MAX);
        self.resizes.iter().any(|r| {
            r.vm == vm
                && r.is_forecast_note(cfg)
                && r.created_at
                    .checked_add_signed(cooldown)
                    .is_none_or(|t| t > now)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A scale-up of `vm` decided at `at`, in `status`.
    fn up(vm: &str, at: &str, status: ResizeStatus) -> ResizeRecord {
        let size = Size {
            vcpus: 2,
            memory_bytes: 4 << 30,
        };
        ResizeRecord {
            id: format!("{vm}-{at}"),
            vm: vm.into(),
            direction: Direction::Up,
            trigger: Trigger::Rule,
            from: size,
            to: size,
            created_at: t(at),
            deadline: t(at) + chrono::Duration::minutes(5),
            baseline: Baseline {
                vcpus: 2,
                memory_total_bytes: 4 << 30,
            },
            status,
        }
    }

    fn verified(vm: &str, at: &str, after: i64) -> ResizeRecord {
        let done = t(at) + chrono::Duration::seconds(after);
        up(vm, at, ResizeStatus::Verified { at: done })
    }

    #[test]
    fn the_lead_time_is_the_median_of_the_latest_verified_scale_ups() {
        let mut state = GroupState::default();
        assert_eq!(state.scale_up_lead_time(), None);
        state.resizes = vec![
            // Older than the latest five: left out.
            verified("web-1", "2026-01-15T08:00:00Z", 3000),
            verified("web-1", "2026-01-15T09:00:00Z", 60),
            verified("web-2", "2026-01-15T09:10:00Z", 240),
            up(
                "web-1",
                "2026-01-15T09:20:00Z",
                ResizeStatus::Failed {
                    at: t("2026-01-15T09:25:00Z"),
                },
            ),
            up("web-2", "2026-01-15T09:30:00Z", ResizeStatus::DryRun),
            verified("web-1", "2026-01-15T09:40:00Z", 120),
            verified("web-2", "2026-01-15T09:50:00Z", 600),
            verified("web-1", "2026-01-15T10:00:00Z", 180),
        ];
        // 60, 240, 120, 600, 180 s: the median is 180 s.
        assert_eq!(state.scale_up_lead_time(), Some(Duration::from_secs(180)));
        state.resizes.pop();
        // 3000, 60, 240, 120, 600 → 240 s.
        assert_eq!(state.scale_up_lead_time(), Some(Duration::from_secs(240)));
        state.resizes.truncate(3);
        // 3000, 60, 240 → 240 s; an even count takes the middle two's mean.
        assert_eq!(state.scale_up_lead_time(), Some(Duration::from_secs(240)));
        state.resizes.truncate(2);
        assert_eq!(state.scale_up_lead_time(), Some(Duration::from_secs(1530)));
    }

    #[test]
    fn a_forecast_note_holds_nothing_back_while_forecast_dry_run_is_on() {
        let mut cfg = GroupPolicy::with_ladder(Vec::new());
        let mut note = up("web-1", "2026-01-15T10:00:00Z", ResizeStatus::DryRun);
        note.trigger = Trigger::Forecast;
        let state = GroupState {
            resizes: vec![note.clone()],
            ..GroupState::default()
        };
        let now = t("2026-01-15T10:00:30Z");
        assert!(note.is_forecast_note(&cfg));
        assert_eq!(note.done_at(&cfg), None);
        assert_eq!(state.warm_up_since("web-1", &cfg), None);
        assert!(state.forecast_noted("web-1", &cfg, now));
        assert!(!state.forecast_noted("web-2", &cfg, now));
        assert!(!state.forecast_noted("web-1", &cfg, now + chrono::Duration::minutes(5)));
        // A forecast that acts, in a dry-run group, counts like any dry-run decision.
        cfg.forecast.dry_run = false;
        assert!(!note.is_forecast_note(&cfg));
        assert_eq!(note.done_at(&cfg), Some(note.created_at));
        assert!(state.warm_up_since("web-1", &cfg).is_some());
    }
}
