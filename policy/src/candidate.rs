//! What one VM asks for on one tick. [`evaluate_vm`] runs the steps in order:
//!
//! 1. `admit`: the VM's own gates (fresh, no resize of its own in flight, a size on the
//!    ladder);
//! 2. `advance_rules` and `advance_targets`: every rule and target timer moves on;
//! 3. `forecast`: when no rule fired, whether a rule's metric is trending over its
//!    threshold within the resize lead time;
//! 4. `grow`: load (rules, targets, a forecast) or a floor (boost, `min_rung`) asks for
//!    a larger rung, within the VM's limits;
//! 5. `shrink`: otherwise, inside the scale-down window and on evidence, one rung down.
//!
//! The group-level gates (pause; for a resize that restarts the VM, one member at a time
//! and no member stale) are the caller's.

use super::Timestamp;
use super::boost::{Boost, floor_at};
use super::decision::{Direction, Evaluation, Evidence, SkipReason, Trigger};
use super::evaluate::{Group, chrono};
use super::forecast;
use super::group::GroupPolicy;
use super::ladder::RungIndex;
use super::limits::Limits;
use super::metric::{Metric, Window};
use super::rule::{RuleVerdict, step};
use super::scale_down;
use super::state::{GroupState, VmTimers};
use super::view::{Freshness, MetricView, ReportedSize};

/// A resize one VM asks for this tick.
pub(crate) struct Candidate {
    pub(crate) vm: String,
    pub(crate) direction: Direction,
    pub(crate) from: RungIndex,
    pub(crate) to: RungIndex,
    pub(crate) trigger: Trigger,
    pub(crate) reason: String,
    pub(crate) evidence: Vec<Evidence>,
    pub(crate) reported: ReportedSize,
}

/// What one VM's evaluation ended with.
pub(crate) enum VmOutcome {
    /// The VM is stale or unknown (a redundant group's other members may wait for it).
    Stale,
    /// Nothing to do (the reason, if any, is among the skips).
    Nothing,
    /// The VM asks for this resize.
    Wants(Candidate),
}

/// Where a resize goes and why, before it is tied to a VM.
struct Proposal {
    to: RungIndex,
    trigger: Trigger,
    reason: String,
    evidence: Vec<Evidence>,
}

/// What the VM's load asks for this tick.
struct Load {
    /// Evidence of the rules that fired (each asks for one rung more).
    fired: Vec<Evidence>,
    /// The largest rung a target asks for (the current rung when none does).
    target_to: RungIndex,
    /// Evidence of the targets that asked for more.
    target_evidence: Vec<Evidence>,
    /// Evidence of a rule forecast to fire within the lead time (one rung more).
    forecast: Option<Evidence>,
}

impl Load {
    /// Whether any rule, target or forecast asks for more capacity.
    fn asks_for_more(&self) -> bool {
        !self.fired.is_empty() || !self.target_evidence.is_empty() || self.forecast.is_some()
    }
}

/// The VM the steps work on, and what they all read.
struct Vm<'a> {
    name: &'a str,
    current: RungIndex,
    reported: ReportedSize,
    /// Samples before this are left out of every window (the VM's warm-up).
    since: Option<Timestamp>,
}

impl Vm<'_> {
    fn wants(&self, direction: Direction, p: Proposal) -> VmOutcome {
        VmOutcome::Wants(Candidate {
            vm: self.name.to_owned(),
            direction,
            from: self.current,
            to: p.to,
            trigger: p.trigger,
            reason: p.reason,
            evidence: p.evidence,
            reported: self.reported,
        })
    }
}

/// Evaluates one VM of `group` at `now`: advances its timers and says what it asks for.
pub(crate) fn evaluate_vm<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &mut GroupState,
    vm: &str,
    now: Timestamp,
    out: &mut Evaluation,
) -> VmOutcome {
    let cfg = &group.policy.config;
    let (current, reported) = match admit(group, view, state, vm, out) {
        Ok(admitted) => admitted,
        Err(NotAdmitted::Stale) => return VmOutcome::Stale,
        Err(NotAdmitted::Held) => return VmOutcome::Nothing,
    };
    let me = Vm {
        name: vm,
        current,
        reported,
        since: state.warm_up_since(vm, cfg),
    };
    let Some(timers) = state.timers.get_mut(vm) else {
        return VmOutcome::Nothing;
    };
    let fired = advance_rules(cfg, timers, view, &me, now, out);
    let (target_to, target_evidence) = advance_targets(group, timers, view, &me, now, out);
    let busy = timers.busy();
    let forecast = if fired.is_empty() {
        forecast(group, view, state, &me, now)
    } else {
        None
    };
    let load = Load {
        fired,
        target_to,
        target_evidence,
        forecast,
    };

    let boost = floor_at(&group.policy.boosts, now);
    let asks_for_more = load.asks_for_more();
    if let Some(p) = grow(group, &me, load, boost) {
        if p.trigger.is_load_driven()
            && let Some(reason) = Limits::up(group, state, now).blocking(state, vm, now)
        {
            out.skip(Some(vm), reason);
            return VmOutcome::Nothing;
        }
        return me.wants(Direction::Up, p);
    }
    if asks_for_more {
        out.skip(Some(vm), SkipReason::AtMax);
        return VmOutcome::Nothing;
    }
    match shrink(group, view, state, &me, boost, busy, now) {
        Ok(Some(p)) => me.wants(Direction::Down, p),
        Ok(None) => VmOutcome::Nothing,
        Err(reason) => {
            out.skip(Some(vm), reason);
            VmOutcome::Nothing
        }
    }
}

/// Why a VM is not evaluated further this tick.
enum NotAdmitted {
    /// Stale or unknown.
    Stale,
    /// In flight, or no usable size (the skip says which).
    Held,
}

/// The VM's own gates: it reports (else its timers reset), has no resize in flight, and
/// its reported size is on the ladder. Returns its rung and size.
fn admit<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &mut GroupState,
    vm: &str,
    out: &mut Evaluation,
) -> Result<(RungIndex, ReportedSize), NotAdmitted> {
    let cfg = &group.policy.config;
    let timers = state
        .timers
        .entry(vm.to_owned())
        .or_insert_with(|| timers_for(cfg));
    let last_report = match view.freshness(vm) {
        Freshness::Fresh => None,
        Freshness::Stale { last_report } => Some(Some(last_report)),
        Freshness::Unknown => Some(None),
    };
    if let Some(last_report) = last_report {
        timers.reset();
        out.skip(Some(vm), SkipReason::Stale { last_report });
        return Err(NotAdmitted::Stale);
    }
    if state.in_flight_for(vm).is_some() {
        return Err(NotAdmitted::Held);
    }
    let Some(reported) = view.reported_size(vm) else {
        out.skip(Some(vm), SkipReason::NoSize);
        return Err(NotAdmitted::Held);
    };
    let Some(current) = group
        .policy
        .ladder
        .locate(reported.vcpus, reported.memory_total_bytes)
    else {
        out.skip(
            Some(vm),
            SkipReason::OffLadder {
                vcpus: reported.vcpus,
                memory_total_bytes: reported.memory_total_bytes,
            },
        );
        return Err(NotAdmitted::Held);
    };
    Ok((current, reported))
}

/// Fresh timers: one per configured rule and target.
fn timers_for(cfg: &GroupPolicy) -> VmTimers {
    VmTimers {
        rules: vec![Default::default(); cfg.rules.len()],
        targets: vec![None; cfg.targets.len()],
    }
}

/// Reads `metric` over `window` for `vm`, leaving out samples before `since`.
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

/// When `window` stops reaching back into the warm-up that ends at `since`, if it still
/// does at `now` (then [`read`] finds nothing because of the warm-up alone).
fn warming_up_until(window: Window, since: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    let since = since?;
    let until = window.duration().map_or(since, |d| since + chrono(d));
    (until > now).then_some(until)
}

/// Advances every threshold rule's timer; returns the evidence of those that fired.
fn advance_rules<V: MetricView + ?Sized>(
    cfg: &GroupPolicy,
    timers: &mut VmTimers,
    view: &V,
    vm: &Vm<'_>,
    now: Timestamp,
    out: &mut Evaluation,
) -> Vec<Evidence> {
    let mut fired = Vec::new();
    for (rule, rs) in cfg.rules.iter().zip(timers.rules.iter_mut()) {
        let value = read(view, vm.name, rule.metric, rule.window, vm.since, now);
        match step(rule, rs, value, now) {
            RuleVerdict::Fired(ev) => fired.push(ev),
            RuleVerdict::Absent => out.skip(
                Some(vm.name),
                SkipReason::MissingMetric {
                    metric: rule.metric,
                    window: rule.window.name().to_owned(),
                    warming_up_until: warming_up_until(rule.window, vm.since, now),
                },
            ),
            RuleVerdict::Quiet | RuleVerdict::Pending { .. } => {}
        }
    }
    fired
}

/// Advances every target's timer; returns the largest rung the targets that held ask
/// for (the current rung when none does) and their evidence.
fn advance_targets<V: MetricView + ?Sized>(
    group: &Group<'_>,
    timers: &mut VmTimers,
    view: &V,
    vm: &Vm<'_>,
    now: Timestamp,
    out: &mut Evaluation,
) -> (RungIndex, Vec<Evidence>) {
    let cfg = &group.policy.config;
    let mut target_to = vm.current;
    let mut evidence = Vec::new();
    for (target, pending) in cfg.targets.iter().zip(timers.targets.iter_mut()) {
        let value = read(view, vm.name, target.metric, target.window, vm.since, now);
        match value {
            Some(v) if target.above_band(v) => {
                let since = *pending.get_or_insert(now);
                let held = (now - since).to_std().unwrap_or_default();
                if held >= target.hold() {
                    let to = target.desired_rung(&group.policy.ladder, vm.current, v);
                    if to > vm.current {
                        target_to = target_to.max(to);
                        evidence.push(target.evidence(v, held));
                    }
                }
            }
            Some(_) => *pending = None,
            None => {
                *pending = None;
                out.skip(
                    Some(vm.name),
                    SkipReason::MissingMetric {
                        metric: target.metric,
                        window: target.window.name().to_owned(),
                        warming_up_until: warming_up_until(target.window, vm.since, now),
                    },
                );
            }
        }
    }
    (target_to, evidence)
}

/// The first forecast rule whose trend crosses its threshold within the resize lead
/// time, as evidence (see [`forecast`]). Nothing while forecasting is off, while the fit
/// window (and the minute it starts in) reaches back into the warm-up, or, in dry-run,
/// while the VM's last note is younger than the cooldown.
fn forecast<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &GroupState,
    vm: &Vm<'_>,
    now: Timestamp,
) -> Option<Evidence> {
    let cfg = &group.policy.config;
    let fc = &cfg.forecast;
    if !fc.enabled {
        return None;
    }
    let reach = chrono(fc.window) + chrono::Duration::minutes(1);
    if vm
        .since
        .is_some_and(|s| now.checked_sub_signed(reach).is_none_or(|start| s > start))
    {
        return None;
    }
    if fc.dry_run && state.forecast_noted(vm.name, cfg, now) {
        return None;
    }
    let horizon = fc.horizon(state.scale_up_lead_time());
    cfg.rules.iter().filter(|r| fc.watches(r)).find_map(|rule| {
        let current = read(view, vm.name, rule.metric, rule.window, vm.since, now)?;
        let series = view.minute_series(vm.name, rule.metric, fc.window)?;
        forecast::project(fc, rule, &series, current, horizon, now)
    })
}

/// The larger rung load (rules, targets, a forecast) or a floor (a boost, `min_rung`) asks for, if
/// any. A floor above what load asks for is the trigger; otherwise rules win over targets
/// when they ask for at least as much.
fn grow(group: &Group<'_>, vm: &Vm<'_>, load: Load, boost: Option<&Boost>) -> Option<Proposal> {
    let ladder = &group.policy.ladder;
    let current = vm.current;
    let rule_to = if load.fired.is_empty() && load.forecast.is_none() {
        current
    } else {
        (current + 1).min(ladder.max())
    };
    let load_to = rule_to.max(load.target_to).min(ladder.max()).max(current);
    let floor = boost.map_or(ladder.min(), |b| b.rung.max(ladder.min()));
    let to = load_to.max(floor);
    if to <= current {
        return None;
    }
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
    } else if rule_to >= load.target_to && load.fired.is_empty() {
        let evidence: Vec<Evidence> = load.forecast.into_iter().collect();
        let what = evidence
            .iter()
            .map(|e| e.rule.clone())
            .collect::<Vec<_>>()
            .join("; ");
        (Trigger::Forecast, format!("forecast: {what}"), evidence)
    } else if rule_to >= load.target_to {
        let what = load
            .fired
            .iter()
            .map(|e| e.rule.clone())
            .collect::<Vec<_>>()
            .join("; ");
        (Trigger::Rule, format!("rule held: {what}"), load.fired)
    } else {
        let what = load
            .target_evidence
            .iter()
            .map(|e| format!("{} = {:.3}", e.rule, e.value))
            .collect::<Vec<_>>()
            .join("; ");
        (
            Trigger::Target,
            format!("target tracking: {what}"),
            load.target_evidence,
        )
    };
    Some(Proposal {
        to,
        trigger,
        reason,
        evidence,
    })
}

/// One rung down, only inside the scale-down window and on evidence. `Ok(None)` when
/// shrinking is not in question at all (disabled, at the bottom, window closed); `Err`
/// names what holds back a shrink that is.
fn shrink<V: MetricView + ?Sized>(
    group: &Group<'_>,
    view: &V,
    state: &GroupState,
    vm: &Vm<'_>,
    boost: Option<&Boost>,
    busy: bool,
    now: Timestamp,
) -> Result<Option<Proposal>, SkipReason> {
    let cfg = &group.policy.config;
    let ladder = &group.policy.ladder;
    let current = vm.current;
    if !cfg.scale_down.enabled || current <= ladder.min() {
        return Ok(None);
    }
    let Some(occurrence) = cfg.scale_down.window.occurrence_at(cfg.timezone, now) else {
        return Ok(None);
    };
    if let Some(b) = boost {
        return Err(SkipReason::BoostActive {
            boost: b.name.clone(),
        });
    }
    if group.members.len() < 2 && !cfg.allow_restart {
        return Err(SkipReason::RestartNotAllowed);
    }
    if busy {
        return Err(SkipReason::Busy);
    }
    if let Some(reason) =
        Limits::down(group, state, occurrence.start, occurrence.end).blocking(state, vm.name, now)
    {
        return Err(reason);
    }
    let to = current - 1;
    if current > ladder.max() {
        return Ok(Some(Proposal {
            to,
            trigger: Trigger::AboveMax,
            reason: format!(
                "above the group's max_rung {}",
                ladder.rung(ladder.max()).name
            ),
            evidence: Vec::new(),
        }));
    }
    // Samples from before the last warm-up were taken at another size.
    if vm
        .since
        .is_some_and(|s| s > now - chrono(cfg.scale_down.lookback))
    {
        return Err(SkipReason::InsufficientEvidence {
            detail: "resized within the lookback".into(),
        });
    }
    let evidence = scale_down::evidence(
        view,
        vm.name,
        &cfg.scale_down,
        ladder.rung(current),
        ladder.rung(to),
        vm.reported.memory_total_bytes,
    )
    .map_err(|detail| SkipReason::InsufficientEvidence { detail })?;
    Ok(Some(Proposal {
        to,
        trigger: Trigger::ScaleDown,
        reason: format!(
            "the last {} fit {} with a {} % margin",
            humantime::format_duration(cfg.scale_down.lookback),
            ladder.rung(to).name,
            cfg.scale_down.margin * 100.0
        ),
        evidence,
    }))
}
