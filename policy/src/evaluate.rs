//! One evaluation of one group: verify resizes in flight, advance every VM's timers,
//! then start at most one resize (one member at a time).

use chrono::Duration as ChronoDuration;

use super::Timestamp;
use super::boost::floor_at;
use super::decision::{
    Baseline, Decision, Direction, Evaluation, Event, Evidence, SizedRung, SkipReason, Trigger,
    decision_id,
};
use super::group::Policy;
use super::ladder::RungIndex;
use super::metric::{Metric, Window};
use super::rule::{RuleVerdict, step};
use super::scale_down;
use super::state::{GroupState, ResizeStatus, VmTimers};
use super::view::{Freshness, MetricView, ReportedSize};
use super::window::local_day_start;

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

/// A resize one VM asks for this tick.
struct Candidate {
    vm: String,
    direction: Direction,
    from: RungIndex,
    to: RungIndex,
    trigger: Trigger,
    reason: String,
    evidence: Vec<Evidence>,
    reported: ReportedSize,
}

fn chrono(d: std::time::Duration) -> ChronoDuration {
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

    let cfg = &group.policy.config;
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

    // Group gates: a paused group, a resize in flight or warming up, or a stale member
    // (in a redundant group) holds every candidate back.
    let gate = if let Some(p) = state.pause {
        Some(SkipReason::Paused { by: p.by })
    } else if let Some(r) = state.in_flight() {
        Some(SkipReason::RollInProgress { vm: r.vm.clone() })
    } else if let Some((_, vm)) = state.group_warming_until(chrono(cfg.warm_up), now) {
        Some(SkipReason::RollInProgress { vm: vm.to_owned() })
    } else if group.members.len() > 1 {
        stale_member.map(|vm| SkipReason::MemberStale { vm: vm.to_owned() })
    } else {
        None
    };
    if let Some(reason) = gate {
        for c in &candidates {
            out.skip(Some(&c.vm), reason.clone());
        }
        if candidates.is_empty() && matches!(reason, SkipReason::Paused { .. }) {
            out.skip(None, reason);
        }
        return out;
    }

    // Growing beats shrinking; then the largest step; then member order.
    let best = candidates
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
    if let Some(best) = best {
        let chosen = candidates.swap_remove(best);
        for c in &candidates {
            out.skip(
                Some(&c.vm),
                SkipReason::RollInProgress {
                    vm: chosen.vm.clone(),
                },
            );
        }
        let decision = make_decision(group, chosen, now);
        state.record(&decision);
        if let Some(t) = state.timers.get_mut(&decision.vm) {
            // The next decision for this VM needs its `for` again (firing flags stay: hysteresis).
            t.rules.iter_mut().for_each(|r| r.pending_since = None);
            t.targets.iter_mut().for_each(|t| *t = None);
        }
        out.decisions.push(decision);
    }
    out
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

enum VmOutcome {
    Stale,
    Nothing,
    Wants(Candidate),
}

fn read<V: MetricView + ?Sized>(
    view: &V,
    vm: &str,
    metric: Metric,
    window: Window,
    since: Option<Timestamp>,
    now: Timestamp,
) -> Option<f64> {
    match window.duration() {
        None => view
            .latest(vm, metric)
            .filter(|o| since.is_none_or(|s| o.at >= s))
            .map(|o| o.value),
        Some(d) => {
            // A window reaching back before the warm-up's end is incomplete by definition.
            if since.is_some_and(|s| s > now - chrono(d)) {
                return None;
            }
            view.mean(vm, metric, d)
                .filter(|s| s.complete)
                .map(|s| s.value)
        }
    }
}

fn evaluate_vm<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &mut GroupState,
    vm: &str,
    now: Timestamp,
    out: &mut Evaluation,
) -> VmOutcome {
    let policy = group.policy;
    let cfg = &policy.config;
    let ladder = &policy.ladder;
    if !state.timers.contains_key(vm) {
        state.timers.insert(
            vm.to_owned(),
            VmTimers {
                rules: vec![Default::default(); cfg.rules.len()],
                targets: vec![None; cfg.targets.len()],
            },
        );
    }

    let last_report = match view.freshness(vm) {
        Freshness::Fresh => None,
        Freshness::Stale { last_report } => Some(Some(last_report)),
        Freshness::Unknown => Some(None),
    };
    if let Some(last_report) = last_report {
        if let Some(t) = state.timers.get_mut(vm) {
            t.reset();
        }
        out.skip(Some(vm), SkipReason::Stale { last_report });
        return VmOutcome::Stale;
    }
    if state.in_flight().is_some_and(|r| r.vm == vm) {
        return VmOutcome::Nothing;
    }
    let Some(reported) = view.reported_size(vm) else {
        out.skip(Some(vm), SkipReason::NoSize);
        return VmOutcome::Nothing;
    };
    let Some(current) = ladder.locate(reported.vcpus, reported.memory_total_bytes) else {
        out.skip(
            Some(vm),
            SkipReason::OffLadder {
                vcpus: reported.vcpus,
                memory_total_bytes: reported.memory_total_bytes,
            },
        );
        return VmOutcome::Nothing;
    };
    let since = state.warm_up_since(vm, chrono(cfg.warm_up));

    // Threshold rules and targets advance their timers every tick.
    let mut fired = Vec::new();
    let mut target_to = current;
    let mut target_evidence = Vec::new();
    let Some(timers) = state.timers.get_mut(vm) else {
        return VmOutcome::Nothing;
    };
    for (rule, rs) in cfg.rules.iter().zip(timers.rules.iter_mut()) {
        let value = read(view, vm, rule.metric, rule.window, since, now);
        match step(rule, rs, value, now) {
            RuleVerdict::Fired(ev) => fired.push(ev),
            RuleVerdict::Absent => out.skip(
                Some(vm),
                SkipReason::MissingMetric {
                    metric: rule.metric,
                    window: rule.window.name().to_owned(),
                },
            ),
            RuleVerdict::Quiet | RuleVerdict::Pending { .. } => {}
        }
    }
    for (target, pending) in cfg.targets.iter().zip(timers.targets.iter_mut()) {
        let value = read(view, vm, target.metric, target.window, since, now);
        match value {
            Some(v) if target.above_band(v) => {
                let since = *pending.get_or_insert(now);
                let held = (now - since).to_std().unwrap_or_default();
                if held >= target.hold() {
                    let to = target.desired_rung(ladder, current, v);
                    if to > current {
                        target_to = target_to.max(to);
                        target_evidence.push(target.evidence(v, held));
                    }
                }
            }
            Some(_) => *pending = None,
            None => {
                *pending = None;
                out.skip(
                    Some(vm),
                    SkipReason::MissingMetric {
                        metric: target.metric,
                        window: target.window.name().to_owned(),
                    },
                );
            }
        }
    }
    let busy = timers.busy();

    // Growing: load (rules, targets) and floors (boosts, min_rung).
    let rule_to = if fired.is_empty() {
        current
    } else {
        (current + 1).min(ladder.max())
    };
    let load_to = rule_to.max(target_to).min(ladder.max()).max(current);
    let boost = floor_at(&policy.boosts, now);
    let floor = boost.map_or(ladder.min(), |b| b.rung.max(ladder.min()));
    let to = load_to.max(floor);
    if to > current {
        let (trigger, reason, evidence) = if floor >= to && floor > load_to {
            match boost.filter(|b| b.rung == floor) {
                Some(b) => (
                    Trigger::Boost,
                    format!(
                        "boost {} holds the group at least at {}",
                        b.name,
                        ladder.rung(floor).name
                    ),
                    Vec::new(),
                ),
                None => (
                    Trigger::BelowMin,
                    format!("below the group's min_rung {}", ladder.rung(floor).name),
                    Vec::new(),
                ),
            }
        } else if rule_to >= target_to {
            let what = fired
                .iter()
                .map(|e| e.rule.clone())
                .collect::<Vec<_>>()
                .join("; ");
            (Trigger::Rule, format!("rule held: {what}"), fired)
        } else {
            let what = target_evidence
                .iter()
                .map(|e| format!("{} = {:.3}", e.rule, e.value))
                .collect::<Vec<_>>()
                .join("; ");
            (
                Trigger::Target,
                format!("target tracking: {what}"),
                target_evidence,
            )
        };
        if trigger.is_load_driven()
            && let Some(reason) = up_blocked(group, state, vm, now)
        {
            out.skip(Some(vm), reason);
            return VmOutcome::Nothing;
        }
        return VmOutcome::Wants(Candidate {
            vm: vm.to_owned(),
            direction: Direction::Up,
            from: current,
            to,
            trigger,
            reason,
            evidence,
            reported,
        });
    }
    if !fired.is_empty() || !target_evidence.is_empty() {
        out.skip(Some(vm), SkipReason::AtMax);
        return VmOutcome::Nothing;
    }

    // Shrinking: only inside the window, one rung, on evidence.
    if !cfg.scale_down.enabled || current <= ladder.min() {
        return VmOutcome::Nothing;
    }
    let Some(occurrence) = cfg.scale_down.window.occurrence_at(cfg.timezone, now) else {
        return VmOutcome::Nothing;
    };
    let reason = if let Some(b) = boost {
        Some(SkipReason::BoostActive {
            boost: b.name.clone(),
        })
    } else if group.members.len() < 2 && !cfg.allow_restart {
        Some(SkipReason::RestartNotAllowed)
    } else if busy {
        Some(SkipReason::Busy)
    } else {
        down_blocked(group, state, vm, now, occurrence.start, occurrence.end)
    };
    if let Some(reason) = reason {
        out.skip(Some(vm), reason);
        return VmOutcome::Nothing;
    }
    let to = current - 1;
    let (trigger, reason, evidence) = if current > ladder.max() {
        (
            Trigger::AboveMax,
            format!(
                "above the group's max_rung {}",
                ladder.rung(ladder.max()).name
            ),
            Vec::new(),
        )
    } else {
        // Samples from before the last warm-up were taken at another size.
        if since.is_some_and(|s| s > now - chrono(cfg.scale_down.lookback)) {
            out.skip(
                Some(vm),
                SkipReason::InsufficientEvidence {
                    detail: "resized within the lookback".into(),
                },
            );
            return VmOutcome::Nothing;
        }
        match scale_down::evidence(
            view,
            vm,
            &cfg.scale_down,
            ladder.rung(current),
            ladder.rung(to),
            reported.memory_total_bytes,
        ) {
            Ok(ev) => (
                Trigger::ScaleDown,
                format!(
                    "the last {} fit {} with a {} % margin",
                    humantime::format_duration(cfg.scale_down.lookback),
                    ladder.rung(to).name,
                    cfg.scale_down.margin * 100.0
                ),
                ev,
            ),
            Err(detail) => {
                out.skip(Some(vm), SkipReason::InsufficientEvidence { detail });
                return VmOutcome::Nothing;
            }
        }
    };
    VmOutcome::Wants(Candidate {
        vm: vm.to_owned(),
        direction: Direction::Down,
        from: current,
        to,
        trigger,
        reason,
        evidence,
        reported,
    })
}

/// Cooldown, daily cap and roll stop for a load-driven scale-up.
fn up_blocked(
    group: &Group<'_>,
    state: &GroupState,
    vm: &str,
    now: Timestamp,
) -> Option<SkipReason> {
    let cfg = &group.policy.config;
    let limits = Limits {
        direction: Direction::Up,
        roll_stopped_until: state.up_roll_stopped_until,
        cooldown: cfg.scale_up.cooldown,
        cap: cfg.scale_up.daily_cap,
        period: (local_day_start(cfg.timezone, now), None),
    };
    limits.blocking(state, vm, now)
}

/// Cooldown, nightly cap and roll stop for a scale-down in the occurrence [start, end).
fn down_blocked(
    group: &Group<'_>,
    state: &GroupState,
    vm: &str,
    now: Timestamp,
    start: Timestamp,
    end: Timestamp,
) -> Option<SkipReason> {
    let cfg = &group.policy.config;
    let limits = Limits {
        direction: Direction::Down,
        roll_stopped_until: state.down_roll_stopped_until,
        cooldown: cfg.scale_down.cooldown,
        cap: cfg.scale_down.nightly_cap,
        period: (start, Some(end)),
    };
    limits.blocking(state, vm, now)
}

/// What holds back one direction of load-driven resizes of a VM.
struct Limits {
    direction: Direction,
    /// A failed resize stopped this direction's roll until then.
    roll_stopped_until: Option<Timestamp>,
    /// Time after a completed resize in this direction before the next.
    cooldown: std::time::Duration,
    /// Load-driven resizes allowed per period.
    cap: u32,
    /// The cap's period: [start, end), open-ended when `end` is None.
    period: (Timestamp, Option<Timestamp>),
}

impl Limits {
    /// The first limit that blocks a resize of `vm` at `now`, in the order roll stop,
    /// cooldown, cap.
    fn blocking(&self, state: &GroupState, vm: &str, now: Timestamp) -> Option<SkipReason> {
        let direction = self.direction;
        if let Some(until) = self.roll_stopped_until.filter(|u| *u > now) {
            return Some(SkipReason::RollStopped { direction, until });
        }
        let mine = || {
            state
                .resizes
                .iter()
                .filter(|r| r.vm == vm && r.direction == direction)
        };
        if let Some(until) = mine()
            .filter_map(|r| r.completed_at())
            .max()
            .map(|t| t + chrono(self.cooldown))
            .filter(|u| *u > now)
        {
            return Some(SkipReason::Cooldown { direction, until });
        }
        let (start, end) = self.period;
        let count = mine()
            .filter(|r| {
                r.trigger.is_load_driven()
                    && r.created_at >= start
                    && end.is_none_or(|end| r.created_at < end)
            })
            .count() as u32;
        (count >= self.cap).then_some(SkipReason::Cap {
            direction,
            count,
            cap: self.cap,
        })
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
    let timeout = match c.direction {
        Direction::Up => cfg.scale_up.verify_timeout,
        Direction::Down => cfg.scale_down.verify_timeout,
    };
    let to = sized(group, c.to);
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
        dry_run: group.dry_run,
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
