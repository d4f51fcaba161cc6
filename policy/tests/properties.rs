//! Properties of [`evaluate`] over random groups, loads and clouds: a simulated fleet
//! reports every 30 s, the engine evaluates the group, a simulated cloud applies (or
//! ignores) what it decides, and every evaluation is checked against the rules any
//! configuration must keep:
//!
//! - every decision moves a member to a rung of the ladder, from the rung it is on;
//! - a grow never passes `max_rung`; a rule or forecast grows one rung, a target at most
//!   to the step limit;
//! - a shrink goes one rung down, never below `min_rung`, only with `scale_down`
//!   enabled, inside the window, and in a group that may restart a member;
//! - one resize that restarts a VM at a time per group, one resize per VM;
//! - a paused group decides nothing;
//! - the same inputs give the same evaluation and the same state.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use chrono::{NaiveTime, Timelike};
use proptest::prelude::*;
use rally_policy::memory_view::MemoryView;
use rally_policy::window::DailyWindow;
use rally_policy::{
    Direction, Group, GroupPolicy, GroupState, Metric, Policy, ResizeStatus, Rung, Timestamp,
    Trigger, evaluate,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// What the guest kernel keeps for itself: MemTotal = rung memory − this.
const RESERVED: u64 = 150 * MIB;
const TICK_SECONDS: i64 = 30;

fn ladder() -> Vec<Rung> {
    let r = |name: &str, vcpus, gib| Rung {
        name: name.into(),
        vcpus,
        memory_bytes: gib * GIB,
        oktawave_type: None,
    };
    vec![
        r("S", 1, 2),
        r("M", 2, 4),
        r("L", 4, 8),
        r("XL", 8, 16),
        r("XXL", 16, 32),
    ]
}

/// One random group and what happens to it.
#[derive(Debug, Clone)]
struct Scenario {
    /// Start rung index of each member (1..=3 members; may be outside min..=max).
    rungs: Vec<usize>,
    min_rung: usize,
    max_rung: usize,
    allow_restart: bool,
    grow_restarts: bool,
    scale_down: bool,
    dry_run: bool,
    warsaw: bool,
    /// Minutes after the start that the scale-down window opens, and how long it lasts.
    window_at: u32,
    window_minutes: u32,
    cooldown_minutes: u64,
    nightly_cap: u32,
    /// Seconds the cloud takes to apply a resize; `None` ignores every request.
    apply_after: Option<i64>,
    /// Per member, per 10-tick phase: (CPU utilization, memory used ratio).
    load: Vec<Vec<(f64, f64)>>,
    /// Ticks at which the operator pauses or resumes the group.
    pause_at: Option<usize>,
    resume_at: Option<usize>,
    /// The start, in minutes after 2026-03-28T00:00Z (a Warsaw DST weekend).
    start_minute: u32,
}

/// A phase's (CPU utilization, memory used ratio): often idle enough to shrink.
fn load() -> impl Strategy<Value = (f64, f64)> {
    prop_oneof![(0.0..0.2f64, 0.05..0.3f64), (0.0..1.0f64, 0.05..0.95f64)]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let members = 1..=3usize;
    (
        members.prop_flat_map(|n| {
            (
                proptest::collection::vec(0..5usize, n),
                proptest::collection::vec(proptest::collection::vec(load(), 12), n),
            )
        }),
        (0..5usize, 0..5usize),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (0..60u32, 10..90u32, 0..15u64, 1..3u32),
        prop_oneof![Just(None), (0..240i64).prop_map(Some)],
        (
            proptest::option::of(0..120usize),
            proptest::option::of(0..120usize),
        ),
        0..(3 * 24 * 60u32),
    )
        .prop_map(
            |(
                (rungs, load),
                (a, b),
                (allow_restart, grow_restarts, scale_down, dry_run, warsaw),
                (window_at, window_minutes, cooldown_minutes, nightly_cap),
                apply_after,
                (pause_at, resume_at),
                start_minute,
            )| Scenario {
                rungs,
                min_rung: a.min(b),
                max_rung: a.max(b),
                allow_restart,
                grow_restarts,
                scale_down,
                dry_run,
                warsaw,
                window_at,
                window_minutes,
                cooldown_minutes,
                nightly_cap,
                apply_after,
                load,
                pause_at,
                resume_at,
                start_minute,
            },
        )
}

fn start(s: &Scenario) -> Timestamp {
    let base: Timestamp = "2026-03-28T00:00:00Z".parse().unwrap();
    base + chrono::Duration::minutes(i64::from(s.start_minute))
}

fn policy(s: &Scenario) -> Policy {
    let rungs = ladder();
    let mut cfg = GroupPolicy::with_ladder(rungs.clone());
    cfg.name = "web".into();
    cfg.min_rung = Some(rungs[s.min_rung].name.clone());
    cfg.max_rung = Some(rungs[s.max_rung].name.clone());
    cfg.allow_restart = s.allow_restart;
    cfg.scale_up.restarts = s.grow_restarts;
    cfg.scale_up.cooldown = Duration::from_secs(s.cooldown_minutes * 60);
    cfg.scale_down.enabled = s.scale_down;
    cfg.scale_down.cooldown = Duration::from_secs(s.cooldown_minutes * 60);
    cfg.scale_down.lookback = Duration::from_secs(10 * 60);
    cfg.scale_down.nightly_cap = s.nightly_cap;
    cfg.warm_up = Duration::from_secs(60);
    if s.warsaw {
        cfg.timezone = chrono_tz::Europe::Warsaw;
    } else {
        cfg.timezone = chrono_tz::UTC;
    }
    // The window, in the group's local time, opens `window_at` minutes after the start.
    let local = (start(s) + chrono::Duration::minutes(i64::from(s.window_at)))
        .with_timezone(&cfg.timezone)
        .time();
    let open = NaiveTime::from_hms_opt(local.hour(), local.minute(), 0).unwrap();
    cfg.scale_down.window = DailyWindow {
        start: open,
        end: open + chrono::Duration::minutes(i64::from(s.window_minutes)),
    };
    cfg.compile().unwrap()
}

struct Vm {
    name: String,
    rung: usize,
    pending: Option<(Timestamp, usize)>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_evaluation_keeps_the_policy_rules(s in scenario()) {
        let policy = policy(&s);
        let ladder = &policy.ladder;
        let cfg = &policy.config;
        let rungs = ladder.rungs().to_vec();
        let mut now = start(&s);
        let mut view = MemoryView::new(now, Duration::from_secs(30), Duration::from_secs(120));
        let mut state = GroupState::default();
        let mut vms: Vec<Vm> = s
            .rungs
            .iter()
            .enumerate()
            .map(|(i, &rung)| Vm { name: format!("web-{i}"), rung, pending: None })
            .collect();
        let members: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
        let group = Group { name: "web", policy: &policy, members: &members, dry_run: s.dry_run };

        for tick in 0..120usize {
            now += chrono::Duration::seconds(TICK_SECONDS);
            view.set_now(now);
            for (i, vm) in vms.iter_mut().enumerate() {
                if let Some((at, to)) = vm.pending
                    && at <= now
                {
                    vm.rung = to;
                    vm.pending = None;
                }
                let (cpu, mem) = s.load[i][tick / 10];
                let r = &rungs[vm.rung];
                view.report(
                    &vm.name,
                    now,
                    r.vcpus,
                    r.memory_bytes - RESERVED,
                    &[(Metric::CpuUtilization, cpu), (Metric::MemoryUsedRatio, mem)],
                );
            }
            if s.pause_at == Some(tick) {
                state.pause(now);
            }
            if s.resume_at == Some(tick) {
                state.resume();
            }

            // The same inputs, evaluated twice, agree.
            let mut twin = state.clone();
            let ev = evaluate(&group, &view, &mut state, now);
            let twin_ev = evaluate(&group, &view, &mut twin, now);
            prop_assert_eq!(&ev, &twin_ev, "two evaluations of the same inputs differ");
            prop_assert_eq!(&state, &twin, "two evaluations left different states");

            if state.pause.is_some() {
                prop_assert!(ev.decisions.is_empty(), "a paused group decided {:?}", ev.decisions);
            }
            let restarting = |direction: Direction| direction == Direction::Down || cfg.scale_up.restarts;
            prop_assert!(
                ev.decisions.iter().filter(|d| restarting(d.direction)).count() <= 1,
                "more than one restart started at once"
            );
            let in_flight: Vec<_> = state
                .resizes
                .iter()
                .filter(|r| r.status == ResizeStatus::InFlight)
                .collect();
            prop_assert!(
                in_flight.iter().filter(|r| restarting(r.direction)).count() <= 1,
                "two restarting resizes in flight: {:?}", in_flight
            );
            for (i, r) in in_flight.iter().enumerate() {
                prop_assert!(
                    in_flight[..i].iter().all(|o| o.vm != r.vm),
                    "two resizes of {} in flight", r.vm
                );
            }

            for d in &ev.decisions {
                let vm = vms.iter_mut().find(|v| v.name == d.vm);
                prop_assert!(vm.is_some(), "a decision for {}, not a member", d.vm);
                let vm = vm.unwrap();
                let from = vm.rung;
                prop_assert_eq!(&d.from.rung, &rungs[from].name, "from is the rung the VM is on");
                let to = ladder.index_of(&d.to.rung);
                prop_assert!(to.is_some(), "to {} is not on the ladder", d.to.rung);
                let to = to.unwrap();
                prop_assert_eq!(d.to.size(), rungs[to].size(), "to carries its rung's size");
                prop_assert_eq!(d.dry_run, s.dry_run);
                match d.direction {
                    Direction::Up => {
                        prop_assert!(to > from, "an up from {} to {}", from, to);
                        prop_assert!(to <= ladder.max(), "grew past max_rung to {}", d.to.rung);
                        match d.trigger {
                            Trigger::Rule | Trigger::Forecast => prop_assert_eq!(to, from + 1),
                            Trigger::Target => prop_assert!(to <= ladder.step_limit(from)),
                            Trigger::BelowMin => prop_assert_eq!(to, ladder.min()),
                            other => prop_assert!(false, "an up by {:?}", other),
                        }
                    }
                    Direction::Down => {
                        prop_assert_eq!(to + 1, from, "a shrink goes one rung down");
                        prop_assert!(to >= ladder.min(), "shrank below min_rung to {}", d.to.rung);
                        prop_assert!(cfg.scale_down.enabled, "shrank with scale_down disabled");
                        prop_assert!(
                            cfg.scale_down.window.occurrence_at(cfg.timezone, now).is_some(),
                            "shrank outside the window at {}", now
                        );
                        prop_assert!(members.len() > 1 || cfg.allow_restart);
                        prop_assert!(
                            matches!(d.trigger, Trigger::ScaleDown | Trigger::AboveMax),
                            "a down by {:?}", d.trigger
                        );
                    }
                }
                if !d.dry_run
                    && let Some(delay) = s.apply_after
                {
                    vm.pending = Some((now + chrono::Duration::seconds(delay), to));
                }
            }
        }
    }
}
