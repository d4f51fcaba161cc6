//! One evaluation of one group, step by step: verify the resizes in flight, ask every
//! member what it wants (`candidate`), note a closed scale-down window, apply
//! the group's gates, then start the resizes: every hot-add grow, or else at most one
//! resize that restarts its VM (one member at a time).

use chrono::Duration as ChronoDuration;

use super::Timestamp;
use super::candidate::{Candidate, VmOutcome, evaluate_vm};
use super::decision::{
    Baseline, Decision, Direction, Evaluation, Event, SizedRung, SkipReason, Trigger, decision_id,
};
use super::group::Policy;
use super::ladder::RungIndex;
use super::state::{GroupState, ResizeStatus};
use super::view::{Freshness, MetricView};

/// The group being evaluated.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its validated policy.
    pub policy: &'a Policy,
    /// Its member VMs (a group of one never shrinks unless `allow_restart`).
    pub members: &'a [String],
    /// The effective dry-run flag (the group's, else the global one).
    pub dry_run: bool,
}

/// A config duration as a chrono one (saturating: a huge duration never ends).
pub(crate) fn chrono(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

/// Evaluates `group` at `now` against `view`, updating `state`. Pure: no I/O, no clock but
/// `now`. The caller persists the returned decisions (before sending them) and events.
pub fn evaluate<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &mut GroupState,
    now: Timestamp,
) -> Evaluation {
    let mut out = Evaluation::default();
    verify(group, view, state, now, &mut out);
    state.prune(now);

    let mut candidates = Vec::new();
    let mut stale_member = None;
    for vm in group.members {
        match evaluate_vm(group, view, state, vm, now, &mut out) {
            VmOutcome::Stale => {
                stale_member.get_or_insert(vm.as_str());
            }
            VmOutcome::Wants(c) => candidates.push(c),
            VmOutcome::Nothing => {}
        }
    }
    note_window_closed(group, now, &mut out);

    if let Some(p) = state.pause {
        let reason = SkipReason::Paused { by: p.by };
        for c in &candidates {
            out.skip(Some(&c.vm), reason.clone());
        }
        if candidates.is_empty() {
            out.skip(None, reason);
        }
        return out;
    }
    let mut ready = Vec::new();
    for c in candidates {
        match roll_gate(group, state, &c, stale_member, now) {
            Some(reason) => out.skip(Some(&c.vm), reason),
            None => ready.push(c),
        }
    }
    for chosen in choose(group, ready, &mut out) {
        let decision = make_decision(group, chosen, now);
        start(state, &decision);
        out.decisions.push(decision);
    }
    out
}

/// Whether a resize in `direction` restarts the VM: a shrink always does; a grow only
/// when the group says so (`scale_up.restarts`), else it is a hot-add.
pub(crate) fn restarts(policy: &Policy, direction: Direction) -> bool {
    match direction {
        Direction::Up => policy.config.scale_up.restarts,
        Direction::Down => true,
    }
}

/// Says when a closed scale-down window opens (a group-wide note, not a VM's skip).
fn note_window_closed(group: &Group<'_>, now: Timestamp, out: &mut Evaluation) {
    let cfg = &group.policy.config;
    if cfg.scale_down.enabled
        && cfg
            .scale_down
            .window
            .occurrence_at(cfg.timezone, now)
            .is_none()
    {
        let opens_at = cfg.scale_down.window.next_start(cfg.timezone, now);
        out.skip(None, SkipReason::WindowClosed { opens_at });
    }
}

/// What holds back a candidate that restarts its VM: one member at a time (a resize in
/// flight or warming up) and, in a redundant group, a stale member (restarting the
/// survivor while its twin is down is an outage). A hot-add grow waits for none of these.
fn roll_gate(
    group: &Group<'_>,
    state: &GroupState,
    candidate: &Candidate,
    stale_member: Option<&str>,
    now: Timestamp,
) -> Option<SkipReason> {
    if !restarts(group.policy, candidate.direction) {
        return None;
    }
    let cfg = &group.policy.config;
    if let Some(r) = state.in_flight() {
        Some(SkipReason::RollInProgress { vm: r.vm.clone() })
    } else if let Some((_, vm)) = state.group_warming_until(cfg, now) {
        Some(SkipReason::RollInProgress { vm: vm.to_owned() })
    } else if group.members.len() > 1 {
        stale_member.map(|vm| SkipReason::MemberStale { vm: vm.to_owned() })
    } else {
        None
    }
}

/// The candidates that start this tick. Every hot-add grow starts; otherwise the one
/// resize that restarts its VM: growing beats shrinking, then the largest step, then
/// member order. The others wait for what started.
fn choose(group: &Group<'_>, candidates: Vec<Candidate>, out: &mut Evaluation) -> Vec<Candidate> {
    let (hot_adds, mut restarting): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|c| !restarts(group.policy, c.direction));
    let chosen = if !hot_adds.is_empty() {
        hot_adds
    } else {
        let best = restarting
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| {
                (
                    c.direction == Direction::Up,
                    c.to.abs_diff(c.from),
                    std::cmp::Reverse(*i),
                )
            })
            .map(|(i, _)| i);
        match best {
            Some(best) => vec![restarting.swap_remove(best)],
            None => return Vec::new(),
        }
    };
    for c in &restarting {
        out.skip(
            Some(&c.vm),
            SkipReason::RollInProgress {
                vm: chosen[0].vm.clone(),
            },
        );
    }
    chosen
}

/// Records `decision` and restarts its VM's `for` timers (firing flags stay: hysteresis).
fn start(state: &mut GroupState, decision: &Decision) {
    state.record(decision);
    if let Some(t) = state.timers.get_mut(&decision.vm) {
        t.rules.iter_mut().for_each(|r| r.pending_since = None);
        t.targets.iter_mut().for_each(|t| *t = None);
    }
}

fn verify<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &mut GroupState,
    now: Timestamp,
    out: &mut Evaluation,
) {
    for i in 0..state.resizes.len() {
        let rec = &state.resizes[i];
        if rec.status != ResizeStatus::InFlight {
            continue;
        }
        match view.reported_size(&rec.vm) {
            Some(rep) if rec.verified_by(&rep) => {
                out.events.push(Event::Verified {
                    id: rec.id.clone(),
                    vm: rec.vm.clone(),
                    at: now,
                    vcpus: rep.vcpus,
                    memory_total_bytes: rep.memory_total_bytes,
                });
                state.resizes[i].status = ResizeStatus::Verified { at: now };
                state.consecutive_failures = 0;
            }
            reported if now >= rec.deadline => {
                let within = humantime::format_duration(
                    (rec.deadline - rec.created_at).to_std().unwrap_or_default(),
                );
                let reason = match reported {
                    Some(rep)
                        if rec.direction == Direction::Up
                            && (rep.offline_cpus > 0 || rep.offline_memory_bytes > 0) =>
                    {
                        format!(
                            "not verified within {within}: hot-added capacity stayed offline in the guest \
                             ({} CPUs, {} MiB of memory offline; is rally-agent's udev rule installed?)",
                            rep.offline_cpus,
                            rep.offline_memory_bytes >> 20
                        )
                    }
                    _ => format!(
                        "not verified within {within}: the agent did not report {} vCPUs and the requested memory",
                        rec.to.vcpus
                    ),
                };
                state.fail(group.policy, i, now, &reason, &mut out.events);
            }
            _ => {}
        }
    }
}

fn sized(group: &Group<'_>, index: RungIndex) -> SizedRung {
    let r = group.policy.ladder.rung(index);
    SizedRung {
        rung: r.name.clone(),
        vcpus: r.vcpus,
        memory_bytes: r.memory_bytes,
    }
}

fn make_decision(group: &Group<'_>, c: Candidate, now: Timestamp) -> Decision {
    let cfg = &group.policy.config;
    // A restart takes as long whichever way the VM is resized.
    let timeout = if restarts(group.policy, c.direction) {
        cfg.scale_down.verify_timeout
    } else {
        cfg.scale_up.verify_timeout
    };
    let to = sized(group, c.to);
    // A forecast in dry-run is recorded, never sent, even in a live group.
    let dry_run = group.dry_run || (c.trigger == Trigger::Forecast && cfg.forecast.dry_run);
    Decision {
        id: decision_id(group.name, &c.vm, now, &to.rung),
        group: group.name.to_owned(),
        vm: c.vm,
        direction: c.direction,
        from: sized(group, c.from),
        to,
        trigger: c.trigger,
        reason: c.reason,
        evidence: c.evidence,
        dry_run,
        created_at: now,
        verify_deadline: now + chrono(timeout),
        baseline: Baseline {
            vcpus: c.reported.vcpus,
            memory_total_bytes: c.reported.memory_total_bytes,
        },
    }
}

/// Why a manual resize was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManualError {
    /// The VM is not a member of the group.
    #[error("{0} is not a member of this group")]
    UnknownVm(String),
    /// No rung has that name.
    #[error("no rung named {0:?}")]
    UnknownRung(String),
    /// The rung is outside min_rung..max_rung.
    #[error("rung {0:?} is outside the group's min_rung..max_rung")]
    OutOfBounds(String),
    /// The VM is not reporting, so the resize could not be verified.
    #[error("{0} is not reporting (stale or never seen)")]
    NotFresh(String),
    /// The VM's size is not on the ladder, or unknown.
    #[error("{0}'s reported size is on no rung of the ladder")]
    OffLadder(String),
    /// The VM is already on that rung.
    #[error("{vm} is already on {rung}")]
    AlreadyThere {
        /// The VM.
        vm: String,
        /// The rung.
        rung: String,
    },
    /// Another resize in the group is in flight (one at a time).
    #[error("a resize of {0} is in flight in this group")]
    RollInProgress(String),
}

/// An operator's resize of `vm` to `rung`: obeys min/max and one-at-a-time, ignores
/// cooldowns, caps and pause (an operator acting on a paused group means it). The
/// decision is recorded in `state`; the caller persists and sends it like any other.
pub fn manual_resize<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &mut GroupState,
    vm: &str,
    rung: &str,
    now: Timestamp,
) -> Result<Decision, ManualError> {
    let ladder = &group.policy.ladder;
    if !group.members.iter().any(|m| m == vm) {
        return Err(ManualError::UnknownVm(vm.to_owned()));
    }
    let to = ladder
        .index_of(rung)
        .ok_or_else(|| ManualError::UnknownRung(rung.to_owned()))?;
    if to < ladder.min() || to > ladder.max() {
        return Err(ManualError::OutOfBounds(rung.to_owned()));
    }
    if view.freshness(vm) != Freshness::Fresh {
        return Err(ManualError::NotFresh(vm.to_owned()));
    }
    if let Some(r) = state.in_flight() {
        return Err(ManualError::RollInProgress(r.vm.clone()));
    }
    let reported = view
        .reported_size(vm)
        .ok_or_else(|| ManualError::OffLadder(vm.to_owned()))?;
    let from = ladder
        .locate(reported.vcpus, reported.memory_total_bytes)
        .ok_or_else(|| ManualError::OffLadder(vm.to_owned()))?;
    if from == to {
        return Err(ManualError::AlreadyThere {
            vm: vm.to_owned(),
            rung: rung.to_owned(),
        });
    }
    let direction = if to > from {
        Direction::Up
    } else {
        Direction::Down
    };
    let candidate = Candidate {
        vm: vm.to_owned(),
        direction,
        from,
        to,
        trigger: Trigger::Manual,
        reason: format!("manual resize to {rung}"),
        evidence: Vec::new(),
        reported,
    };
    let decision = make_decision(group, candidate, now);
    state.record(&decision);
    Ok(decision)
}
