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
use super::group::Policy;
use super::ladder::{MEMORY_BLOCK_BYTES, Size};
use super::rule::RuleState;
use super::view::ReportedSize;

/// How long resize history is kept in memory: a daily cap needs at most one local day, a
/// nightly cap one night; two days covers both in any zone.
const HISTORY: chrono::Duration = chrono::Duration::hours(49);
/// Bound on remembered resizes per group, whatever the clock does.
const MAX_HISTORY: usize = 10_000;

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

    /// Samples before this instant are left out of `vm`'s windows (warm-up after its last
    /// completed resize).
    pub fn warm_up_since(&self, vm: &str, warm_up: chrono::Duration) -> Option<Timestamp> {
        self.resizes
            .iter()
            .filter(|r| r.vm == vm)
            .filter_map(ResizeRecord::completed_at)
            .max()
            .map(|t| t + warm_up)
    }

    /// The end of the group's last warm-up, while it lasts (the next member waits for it).
    pub fn group_warming_until(
        &self,
        warm_up: chrono::Duration,
        now: Timestamp,
    ) -> Option<(Timestamp, &str)> {
        self.resizes
            .iter()
            .filter_map(|r| r.completed_at().map(|t| (t + warm_up, r.vm.as_str())))
            .filter(|(t, _)| *t > now)
            .max_by_key(|(t, _)| *t)
    }
}
