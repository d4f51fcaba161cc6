//! Engine scenarios on simulated time: each test reads like the rule it proves.
//!
//! A [`Sim`] plays the fleet: every 5 s each VM reports its size and load into a
//! [`MemoryView`], the engine evaluates the group, and a simulated cloud applies (or
//! ignores) the decisions after a delay, so verification sees the new size arrive.

use std::time::Duration;

use super::decision::{Decision, Direction, Event, PauseReason, SkipReason, Trigger};
use super::evaluate::{Group, ManualError, evaluate, manual_resize};
use super::group::GroupPolicy;
use super::ladder::Rung;
use super::memory_view::MemoryView;
use super::metric::{Metric, Window};
use super::rule::Rule;
use super::state::{GroupState, ResizeStatus};
use super::target::Target;
use super::{Policy, Timestamp};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TICK: i64 = 5;
/// What the guest kernel keeps for itself: MemTotal = rung memory − this.
const RESERVED: u64 = 150 * MIB;

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

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cloud {
    /// Applies every resize this long after it is decided.
    Applies(i64),
    /// Never applies anything (verification times out).
    Ignores,
}

struct SimVm {
    name: String,
    vcpus: u32,
    memory_bytes: u64,
    cpu: f64,
    mem_used: f64,
    reporting: bool,
    pending: Option<(Timestamp, u32, u64)>,
    /// Hot-added capacity the guest left offline: (CPUs, memory bytes).
    offline: (u32, u64),
}

struct Sim {
    now: Timestamp,
    view: MemoryView,
    policy: Policy,
    state: GroupState,
    vms: Vec<SimVm>,
    members: Vec<String>,
    dry_run: bool,
    cloud: Cloud,
    decisions: Vec<Decision>,
    events: Vec<Event>,
    skips: Vec<(Option<String>, SkipReason)>,
}

impl Sim {
    /// A group of `vms` (name, rung) at `start`, with the shipped defaults changed by `tune`.
    fn new(vms: &[(&str, &str)], start: &str, tune: impl FnOnce(&mut GroupPolicy)) -> Self {
        let mut cfg = GroupPolicy::with_ladder(ladder());
        tune(&mut cfg);
        let policy = cfg.compile().unwrap();
        let now = ts(start);
        let vms: Vec<SimVm> = vms
            .iter()
            .map(|(name, rung)| {
                let r = policy
                    .ladder
                    .rung(policy.ladder.index_of(rung).unwrap())
                    .clone();
                SimVm {
                    name: (*name).into(),
                    vcpus: r.vcpus,
                    memory_bytes: r.memory_bytes,
                    cpu: 0.2,
                    mem_used: 0.3,
                    reporting: true,
                    pending: None,
                    offline: (0, 0),
                }
            })
            .collect();
        Self {
            now,
            view: MemoryView::new(now, Duration::from_secs(5), Duration::from_secs(20)),
            policy,
            state: GroupState::default(),
            members: vms.iter().map(|v| v.name.clone()).collect(),
            vms,
            dry_run: false,
            cloud: Cloud::Applies(30),
            decisions: Vec::new(),
            events: Vec::new(),
            skips: Vec::new(),
        }
    }

    fn vm(&mut self, name: &str) -> &mut SimVm {
        self.vms.iter_mut().find(|v| v.name == name).unwrap()
    }

    fn load(&mut self, name: &str, cpu: f64) -> &mut Self {
        self.vm(name).cpu = cpu;
        self
    }

    fn load_all(&mut self, cpu: f64) -> &mut Self {
        self.vms.iter_mut().for_each(|v| v.cpu = cpu);
        self
    }

    fn tick(&mut self, evaluate_now: bool) {
        self.now += chrono::Duration::seconds(TICK);
        self.view.set_now(self.now);
        for v in &mut self.vms {
            if let Some((at, vcpus, mem)) = v.pending
                && at <= self.now
            {
                (v.vcpus, v.memory_bytes, v.pending) = (vcpus, mem, None);
            }
            if v.reporting {
                let metrics = [
                    (Metric::CpuUtilization, v.cpu),
                    (Metric::MemoryUsedRatio, v.mem_used),
                ];
                self.view.report(
                    &v.name,
                    self.now,
                    v.vcpus,
                    v.memory_bytes - RESERVED,
                    &metrics,
                );
                self.view.offline(&v.name, v.offline.0, v.offline.1);
            }
        }
        if evaluate_now {
            let group = Group {
                name: "web",
                policy: &self.policy,
                members: &self.members,
                dry_run: self.dry_run,
            };
            let ev = evaluate(&group, &self.view, &mut self.state, self.now);
            for d in &ev.decisions {
                self.apply(d);
            }
            self.decisions.extend(ev.decisions);
            self.events.extend(ev.events);
            self.skips = ev.skips.into_iter().map(|s| (s.vm, s.reason)).collect();
        }
    }

    fn apply(&mut self, d: &Decision) {
        if let (Cloud::Applies(delay), false) = (self.cloud, d.dry_run) {
            let at = d.created_at + chrono::Duration::seconds(delay);
            self.vm(&d.vm).pending = Some((at, d.to.vcpus, d.to.memory_bytes));
        }
    }

    /// Reports and evaluates every 5 s for `d`.
    fn run(&mut self, d: Duration) -> &mut Self {
        for _ in 0..(d.as_secs() as i64 / TICK) {
            self.tick(true);
        }
        self
    }

    /// Runs until `t` (UTC).
    fn run_until(&mut self, t: &str) -> &mut Self {
        let d = (ts(t) - self.now).to_std().unwrap();
        self.run(d)
    }

    /// Reports and evaluates every 5 s for `d`, every VM's CPU following `cpu` (of the
    /// seconds since this call).
    fn run_shaped(&mut self, d: Duration, cpu: impl Fn(i64) -> f64) -> &mut Self {
        for i in 1..=(d.as_secs() as i64 / TICK) {
            self.load_all(cpu(i * TICK));
            self.tick(true);
        }
        self
    }

    /// Reports without evaluating (history before the interesting part).
    fn feed(&mut self, d: Duration) -> &mut Self {
        for _ in 0..(d.as_secs() as i64 / TICK) {
            self.tick(false);
        }
        self
    }

    /// Decisions so far as "vm from→to trigger".
    fn log(&self) -> Vec<String> {
        self.decisions
            .iter()
            .map(|d| {
                format!(
                    "{} {}→{} {}",
                    d.vm,
                    d.from.rung,
                    d.to.rung,
                    d.trigger.as_str()
                )
            })
            .collect()
    }

    fn skipped(&self, vm: &str, pred: impl Fn(&SkipReason) -> bool) -> bool {
        self.skips
            .iter()
            .any(|(v, r)| v.as_deref() == Some(vm) && pred(r))
    }

    fn manual(&mut self, vm: &str, rung: &str) -> Result<Decision, ManualError> {
        let group = Group {
            name: "web",
            policy: &self.policy,
            members: &self.members,
            dry_run: self.dry_run,
        };
        let d = manual_resize(&group, &self.view, &mut self.state, vm, rung, self.now)?;
        self.apply(&d);
        self.decisions.push(d.clone());
        Ok(d)
    }
}

#[test]
fn threshold_rules_fire_after_their_for_duration() {
    // (case, policy tweak, cpu load, how long, expected decisions)
    type Tweak = fn(&mut GroupPolicy);
    let none: Tweak = |_| {};
    let for_2m: Tweak = |p| p.rules[0].hold_for = mins(2);
    let last_window: Tweak = |p| p.rules[0].window = Window::Last;
    let psi_rule: Tweak = |p| {
        p.rules = vec![Rule {
            metric: Metric::PsiCpuSomeAvg10,
            window: Window::Last,
            threshold: 0.1,
            clear: None,
            hold_for: Duration::ZERO,
        }]
    };
    let rps_rule: Tweak = |p| {
        p.rules = vec![Rule {
            metric: Metric::RequestsPerSecondPerVcpu,
            window: Window::OneMinute,
            threshold: 1.0,
            clear: None,
            hold_for: Duration::ZERO,
        }]
    };
    let cases: Vec<(&str, Tweak, f64, Duration, Vec<&str>)> = vec![
        // The 1-min mean is complete after 1 min; the rule then holds for its 3 min.
        (
            "cpu 0.92 for 4m with for=3m → up one rung",
            none,
            0.92,
            mins(4),
            vec!["web-1 M→L rule"],
        ),
        (
            "cpu 0.92 for 3m with for=3m → nothing yet (1m mean + 3m)",
            none,
            0.92,
            mins(3),
            vec![],
        ),
        (
            "cpu 0.92 for 3m with for=2m → up one rung",
            for_2m,
            0.92,
            mins(3),
            vec!["web-1 M→L rule"],
        ),
        (
            "cpu 0.92 on the last window for 3m5s → up one rung",
            last_window,
            0.92,
            Duration::from_secs(185),
            vec!["web-1 M→L rule"],
        ),
        ("cpu 0.79 for 10m → nothing", none, 0.79, mins(10), vec![]),
        (
            "a rule on PSI, which this VM does not report → never fires",
            psi_rule,
            0.99,
            mins(10),
            vec![],
        ),
        (
            "a rule on requests per vCPU, absent today → never fires",
            rps_rule,
            0.99,
            mins(10),
            vec![],
        ),
    ];
    for (case, tweak, cpu, d, want) in cases {
        let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", tweak);
        sim.load("web-1", cpu).run(d);
        assert_eq!(sim.log(), want, "{case}");
    }
}

#[test]
fn a_decision_carries_sizes_evidence_and_a_deadline() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |_| {});
    sim.load("web-1", 0.92).run(mins(4));
    let d = &sim.decisions[0];
    assert_eq!((d.direction, d.trigger), (Direction::Up, Trigger::Rule));
    assert_eq!(
        (
            d.from.vcpus,
            d.from.memory_bytes,
            d.to.vcpus,
            d.to.memory_bytes
        ),
        (2, 4 * GIB, 4, 8 * GIB)
    );
    assert_eq!(d.evidence.len(), 1);
    assert_eq!(d.evidence[0].metric, Metric::CpuUtilization);
    assert!((d.evidence[0].value - 0.92).abs() < 1e-9);
    assert_eq!(d.evidence[0].held_for_seconds, Some(180));
    assert_eq!(
        d.verify_deadline - d.created_at,
        chrono::Duration::minutes(5)
    );
    assert_eq!(d.baseline.memory_total_bytes, 4 * GIB - RESERVED);
    assert!(
        d.reason.contains("cpu_utilization 1m >= 0.8"),
        "{}",
        d.reason
    );
    assert!(!d.dry_run);
}

#[test]
fn hysteresis_keeps_a_fired_rule_until_it_clears() {
    // Fired at 0.92; after growing, load settles at 0.70 (between clear 0.55 and 0.80):
    // the rule still holds, so after the cooldown it grows again.
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |_| {});
    sim.load("web-1", 0.92).run(mins(4));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
    sim.load("web-1", 0.70).run(mins(8));
    assert_eq!(sim.log(), ["web-1 M→L rule", "web-1 L→XL rule"]);
    // Below the clear threshold, the rule clears; 0.70 afterwards never fires it again.
    sim.load("web-1", 0.50).run(mins(2));
    sim.load("web-1", 0.70).run(mins(20));
    assert_eq!(sim.log().len(), 2);

    // Without a fired rule, 0.70 never starts one.
    let mut quiet = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |_| {});
    quiet.load("web-1", 0.70).run(mins(20));
    assert!(quiet.log().is_empty());
}

#[test]
fn target_tracking_grows_to_the_rung_that_fits_and_ignores_the_tolerance_band() {
    let cpu_target = |p: &mut GroupPolicy| {
        p.rules.clear();
        p.targets = vec![Target {
            metric: Metric::CpuUtilization,
            target: None,
            tolerance: 0.10,
            window: Window::OneMinute,
            hold_for: None,
        }];
    };
    // (case, rung, cpu, expected)
    let cases: Vec<(&str, &str, f64, Vec<&str>)> = vec![
        (
            "cpu 0.64 vs target 0.60: inside 10 % → nothing",
            "M",
            0.64,
            vec![],
        ),
        (
            "cpu 0.90 on M (2 vCPUs → 3 wanted) → L",
            "M",
            0.90,
            vec!["web-1 M→L target"],
        ),
        (
            "cpu 1.00 on S (1 vCPU → 1.67 wanted) → M (at most a doubling)",
            "S",
            1.0,
            vec!["web-1 S→M target"],
        ),
        (
            "cpu 0.95 on L (4 → 6.3 wanted) → XL",
            "L",
            0.95,
            vec!["web-1 L→XL target"],
        ),
        (
            "cpu 0.30 on L: below target → nothing (no shrinking outside the window)",
            "L",
            0.30,
            vec![],
        ),
    ];
    for (case, rung, cpu, want) in cases {
        let mut sim = Sim::new(&[("web-1", rung)], "2026-01-15T10:00:00Z", cpu_target);
        sim.load("web-1", cpu).run(mins(2));
        assert_eq!(sim.log(), want, "{case}");
    }
    // The shipped memory target: used 0.90 > 0.825 for 60 s → grows memory.
    let mut mem = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |_| {});
    mem.vm("web-1").mem_used = 0.90;
    mem.run(Duration::from_secs(115));
    assert!(
        mem.log().is_empty(),
        "the 1m mean and the 60 s `for` take two minutes"
    );
    mem.run(Duration::from_secs(10));
    assert_eq!(mem.log(), ["web-1 M→L target"]);
}

#[test]
fn min_and_max_rungs_bound_every_resize() {
    let bounded = |p: &mut GroupPolicy| {
        p.min_rung = Some("M".into());
        p.max_rung = Some("L".into());
    };
    // At the max, load cannot grow it; the note says so.
    let mut at_max = Sim::new(&[("web-1", "L")], "2026-01-15T10:00:00Z", bounded);
    at_max.load("web-1", 0.99).run(mins(10));
    assert!(at_max.log().is_empty());
    assert!(at_max.skipped("web-1", |r| *r == SkipReason::AtMax));
    // Below the min, it is raised to the min at once, whatever the load.
    let mut below = Sim::new(&[("web-1", "S")], "2026-01-15T10:00:00Z", bounded);
    below.run(Duration::from_secs(5));
    assert_eq!(below.log(), ["web-1 S→M below_min"]);
    // Manual resizes obey the same bounds.
    let mut manual = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", bounded);
    manual.run(Duration::from_secs(5));
    assert_eq!(
        manual.manual("web-1", "XL"),
        Err(ManualError::OutOfBounds("XL".into()))
    );
    assert_eq!(
        manual.manual("web-1", "S"),
        Err(ManualError::OutOfBounds("S".into()))
    );
}

#[test]
fn a_cooldown_follows_a_verified_scale_up() {
    // No `for` and a 30 s apply delay: the first resize is decided once the 1m mean is
    // complete, verified when the new size is reported; the next waits for the cooldown.
    let mut sim = Sim::new(&[("web-1", "S")], "2026-01-15T10:00:00Z", |p| {
        p.rules[0].hold_for = Duration::ZERO
    });
    sim.load("web-1", 0.95).run(mins(10));
    let verified_at = sim.events.iter().find_map(|e| match e {
        Event::Verified { at, .. } => Some(*at),
        _ => None,
    });
    let verified_at = verified_at.expect("the first resize was verified");
    assert_eq!(sim.log()[..2], ["web-1 S→M rule", "web-1 M→L rule"]);
    let second = sim.decisions[1].created_at;
    assert!(
        second >= verified_at + chrono::Duration::seconds(300),
        "second at {second}, verified at {verified_at}"
    );
    assert!(second <= verified_at + chrono::Duration::seconds(310));
}

#[test]
fn the_daily_cap_limits_load_driven_scale_ups() {
    let mut sim = Sim::new(&[("web-1", "S")], "2026-01-15T08:00:00Z", |p| {
        p.rules[0].hold_for = Duration::ZERO;
        p.scale_up.cooldown = Duration::ZERO;
        p.scale_up.daily_cap = 2;
    });
    sim.load("web-1", 0.99).run(mins(60));
    assert_eq!(sim.log(), ["web-1 S→M rule", "web-1 M→L rule"]);
    assert!(sim.skipped("web-1", |r| matches!(
        r,
        SkipReason::Cap {
            direction: Direction::Up,
            count: 2,
            cap: 2
        }
    )));
    // The cap resets at local midnight (23:00 UTC in winter Warsaw).
    sim.run_until("2026-01-15T22:59:00Z");
    assert_eq!(sim.log().len(), 2);
    sim.run_until("2026-01-15T23:05:00Z");
    assert_eq!(
        sim.log(),
        [
            "web-1 S→M rule",
            "web-1 M→L rule",
            "web-1 L→XL rule",
            "web-1 XL→XXL rule"
        ]
    );
}

#[test]
fn stale_data_never_triggers_a_resize_and_resets_pending_timers() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |_| {});
    sim.load("web-1", 0.95).run(mins(3));
    // Silent for 30 s: stale after 20 s.
    sim.vm("web-1").reporting = false;
    sim.run(Duration::from_secs(30));
    assert!(sim.skipped("web-1", |r| matches!(r, SkipReason::Stale { .. })));
    sim.vm("web-1").reporting = true;
    // 3m of high load before the gap no longer counts: 1m to refill the window + 3m.
    sim.run(mins(3));
    assert!(sim.log().is_empty(), "{:?}", sim.log());
    sim.run(mins(2));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
}

#[test]
fn a_redundant_group_rolls_restarting_resizes_one_member_at_a_time() {
    let mut sim = Sim::new(
        &[("web-1", "M"), ("web-2", "M"), ("web-3", "M")],
        "2026-01-15T10:00:00Z",
        |p| {
            p.rules[0].hold_for = mins(1);
            p.scale_up.restarts = true;
        },
    );
    sim.load_all(0.95).run(mins(2) + Duration::from_secs(5));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
    assert!(sim.skipped("web-2", |r| *r
        == SkipReason::RollInProgress { vm: "web-1".into() }));
    // The cloud applies after 30 s; the next member waits for verification + 60 s warm-up.
    let first = sim.decisions[0].created_at;
    sim.run(mins(2));
    assert_eq!(sim.log(), ["web-1 M→L rule", "web-2 M→L rule"]);
    let verified = sim.events.iter().find_map(|e| match e {
        Event::Verified { vm, at, .. } if vm == "web-1" => Some(*at),
        _ => None,
    });
    let verified = verified.unwrap();
    assert!(verified >= first + chrono::Duration::seconds(30));
    assert!(sim.decisions[1].created_at >= verified + chrono::Duration::seconds(60));
    sim.run(mins(3));
    assert_eq!(
        sim.log(),
        ["web-1 M→L rule", "web-2 M→L rule", "web-3 M→L rule"]
    );
}

#[test]
fn a_vm_warming_up_after_a_resize_says_until_when() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |p| {
        p.rules[0].hold_for = mins(1);
    });
    sim.load("web-1", 0.99)
        .run(mins(2) + Duration::from_secs(5));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
    sim.run(mins(1));
    let verified = sim
        .events
        .iter()
        .find_map(|e| match e {
            Event::Verified { at, .. } => Some(*at),
            _ => None,
        })
        .unwrap();
    // The 1m windows hold samples from after the 60 s warm-up only one minute later.
    let until = verified + chrono::Duration::seconds(120);
    let warming = |sim: &Sim| {
        sim.skipped("web-1", |r| {
            *r == SkipReason::MissingMetric {
                metric: Metric::CpuUtilization,
                window: "1m".into(),
                warming_up_until: Some(until),
            }
        })
    };
    assert!(warming(&sim), "{:?}", sim.skips);
    sim.run_until(&until.to_rfc3339());
    assert!(!warming(&sim), "{:?}", sim.skips);
    assert!(
        !sim.skipped("web-1", |r| matches!(r, SkipReason::MissingMetric { .. })),
        "{:?}",
        sim.skips
    );
}

#[test]
fn hot_add_grows_every_saturated_member_at_once() {
    let mut sim = Sim::new(
        &[("web-1", "M"), ("web-2", "M"), ("web-3", "M")],
        "2026-01-15T10:00:00Z",
        |p| p.rules[0].hold_for = mins(1),
    );
    sim.load_all(0.95).run(mins(2) + Duration::from_secs(5));
    assert_eq!(
        sim.log(),
        ["web-1 M→L rule", "web-2 M→L rule", "web-3 M→L rule"]
    );
    let first = sim.decisions[0].created_at;
    assert!(sim.decisions.iter().all(|d| d.created_at == first));
    // A hot-add is verified within scale_up.verify_timeout.
    let d = &sim.decisions[0];
    assert_eq!(
        d.verify_deadline - d.created_at,
        chrono::Duration::minutes(5)
    );
}

/// What the failover table's other member is doing.
#[derive(Debug, Clone, Copy)]
enum Twin {
    /// web-2 stopped reporting (it died).
    Stale,
    /// web-2 has a resize in flight that the cloud never applies.
    InFlight,
}

#[test]
fn only_resizes_that_restart_wait_for_a_stale_or_resizing_twin() {
    // (case, web-2, scale_up.restarts, expected decisions, web-1's skip); web-1 is saturated.
    type Wait = Option<fn(&SkipReason) -> bool>;
    type Case = (&'static str, Twin, bool, Vec<&'static str>, Wait);
    let stale: Wait = Some(|r| *r == SkipReason::MemberStale { vm: "web-2".into() });
    let rolling: Wait = Some(|r| *r == SkipReason::RollInProgress { vm: "web-2".into() });
    let cases: Vec<Case> = vec![
        (
            "web-2 stale, web-1 saturated → web-1 hot-adds at once",
            Twin::Stale,
            false,
            vec!["web-1 M→L rule"],
            None,
        ),
        (
            "web-2 stale, web-1 saturated, growing restarts → web-1 waits",
            Twin::Stale,
            true,
            vec![],
            stale,
        ),
        (
            "web-2 resizing, web-1 saturated → web-1 hot-adds at once",
            Twin::InFlight,
            false,
            vec!["web-2 M→L manual", "web-1 M→L rule"],
            None,
        ),
        (
            "web-2 resizing, web-1 saturated, growing restarts → web-1 waits",
            Twin::InFlight,
            true,
            vec!["web-2 M→L manual"],
            rolling,
        ),
    ];
    for (case, twin, restarts, want, wait) in cases {
        let mut sim = Sim::new(
            &[("web-1", "M"), ("web-2", "M")],
            "2026-01-15T10:00:00Z",
            |p| {
                p.rules[0].hold_for = mins(1);
                p.scale_up.restarts = restarts;
            },
        );
        sim.cloud = Cloud::Ignores;
        sim.run(Duration::from_secs(5));
        match twin {
            Twin::Stale => {
                // The dead twin was the busier one: it never grows while it is stale.
                sim.load("web-2", 0.99);
                sim.vm("web-2").reporting = false;
            }
            Twin::InFlight => {
                sim.manual("web-2", "L").unwrap();
            }
        }
        sim.load("web-1", 0.95)
            .run(mins(2) + Duration::from_secs(5));
        assert_eq!(sim.log(), want, "{case}");
        if let Some(wait) = wait {
            assert!(sim.skipped("web-1", wait), "{case}: {:?}", sim.skips);
        }
    }
}

#[test]
fn a_shrink_waits_for_a_stale_member() {
    let mut sim = quiet_day("2026-01-15T00:30:00Z", |_| {});
    sim.vm("web-2").reporting = false;
    sim.run_until("2026-01-15T01:30:00Z");
    assert!(sim.log().is_empty(), "{:?}", sim.log());
    assert!(sim.skipped("web-1", |r| *r
        == SkipReason::MemberStale { vm: "web-2".into() }));
    // web-2 reports again: web-1 shrinks (web-2's day now has a gap, so it stays).
    sim.vm("web-2").reporting = true;
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.log(), ["web-1 L→M scale_down"]);
}

#[test]
fn a_grow_that_restarts_is_verified_within_the_restart_timeout() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |p| {
        p.rules[0].hold_for = mins(1);
        p.scale_up.restarts = true;
    });
    sim.load("web-1", 0.95)
        .run(mins(2) + Duration::from_secs(5));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
    let d = &sim.decisions[0];
    assert_eq!(
        d.verify_deadline - d.created_at,
        chrono::Duration::minutes(15)
    );
}

#[test]
fn growing_restarts_is_a_scale_up_key() {
    let p: GroupPolicy = toml::from_str(
        r#"
        name = "web"
        ladder = [ { name = "S", vcpus = 2, memory_bytes = 4294967296 } ]
        [scale_up]
        restarts = true
        "#,
    )
    .unwrap();
    assert!(p.scale_up.restarts);
    assert!(!GroupPolicy::with_ladder(p.ladder.clone()).scale_up.restarts);
}

#[test]
fn an_unverified_resize_fails_and_stops_the_roll() {
    let mut sim = Sim::new(
        &[("web-1", "M"), ("web-2", "M")],
        "2026-01-15T10:00:00Z",
        |p| {
            p.rules[0].hold_for = mins(1);
            p.scale_up.restarts = true;
            p.scale_down.verify_timeout = mins(5);
        },
    );
    sim.cloud = Cloud::Ignores;
    sim.load_all(0.95).run(mins(2) + Duration::from_secs(5));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
    let first = sim.decisions[0].clone();
    // Nothing else starts while it is in flight, and it fails at its 5 min deadline.
    sim.run(mins(5));
    assert_eq!(sim.log().len(), 1);
    let failed_at = sim.events.iter().find_map(|e| match e {
        Event::Failed { id, at, .. } if *id == first.id => Some(*at),
        _ => None,
    });
    assert_eq!(failed_at, Some(first.verify_deadline));
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::RollStopped {
            direction: Direction::Up,
            ..
        }
    )));
    assert!(matches!(
        sim.state.resizes[0].status,
        ResizeStatus::Failed { .. }
    ));
    assert!(sim.skipped("web-2", |r| matches!(
        r,
        SkipReason::RollStopped {
            direction: Direction::Up,
            ..
        }
    )));
    // The roll stays stopped for the cooldown, then tries the next member.
    sim.run(mins(1));
    assert_eq!(sim.log().len(), 1);
    sim.run(mins(5));
    assert_eq!(sim.log().len(), 2);
}

#[test]
fn a_scale_up_is_not_verified_while_hot_added_capacity_stays_offline() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |p| {
        p.rules[0].hold_for = mins(1)
    });
    sim.load_all(0.95).run(mins(2) + Duration::from_secs(5));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
    // The cloud applies L, and the guest reports L's vCPUs and MemTotal, but one more
    // CPU is present and offline: the guest did not online everything it was given.
    sim.vm("web-1").offline = (1, 0);
    sim.run(mins(2));
    assert_eq!(sim.state.resizes[0].status, ResizeStatus::InFlight);
    // The udev rule (or an operator) onlines it: verified at the next report.
    sim.vm("web-1").offline = (0, 0);
    sim.run(Duration::from_secs(5));
    assert!(matches!(
        sim.state.resizes[0].status,
        ResizeStatus::Verified { .. }
    ));
}

#[test]
fn memory_left_offline_fails_the_resize_and_says_why() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |p| {
        p.rules[0].hold_for = mins(1)
    });
    sim.cloud = Cloud::Ignores;
    sim.load_all(0.95).run(mins(2) + Duration::from_secs(5));
    assert_eq!(sim.log(), ["web-1 M→L rule"]);
    // Stock Debian 12 without the rule: the CPUs came online (the kernel onlines CPUs),
    // the 4 GiB of new memory blocks stayed offline, MemTotal did not move.
    sim.vm("web-1").vcpus = 4;
    sim.vm("web-1").offline = (0, 4 * GIB);
    sim.run(mins(6));
    let reason = sim.events.iter().find_map(|e| match e {
        Event::Failed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = reason.expect("the resize failed");
    assert!(
        reason.contains("hot-added capacity stayed offline") && reason.contains("4096 MiB"),
        "{reason}"
    );
}

#[test]
fn three_consecutive_failures_open_the_circuit_breaker() {
    let mut sim = Sim::new(
        &[("web-1", "M"), ("web-2", "M")],
        "2026-01-15T10:00:00Z",
        |p| {
            p.rules[0].hold_for = Duration::ZERO;
            p.scale_up.cooldown = Duration::ZERO;
            p.scale_up.restarts = true;
            p.scale_down.verify_timeout = mins(1);
        },
    );
    sim.cloud = Cloud::Ignores;
    sim.load_all(0.95).run(mins(10));
    assert_eq!(sim.decisions.len(), 3, "{:?}", sim.log());
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, Event::CircuitOpened { failures: 3, .. }))
    );
    assert_eq!(
        sim.state.pause.map(|p| p.by),
        Some(PauseReason::CircuitBreaker)
    );
    assert!(sim.skipped("web-1", |r| *r
        == SkipReason::Paused {
            by: PauseReason::CircuitBreaker
        }));
    sim.run(mins(30));
    assert_eq!(sim.decisions.len(), 3);
    // Resume closes it; with a working cloud the roll goes on.
    sim.cloud = Cloud::Applies(30);
    sim.state.resume();
    sim.run(mins(1));
    assert_eq!(sim.decisions.len(), 4);
    // A verified resize resets the count.
    assert_eq!(sim.state.consecutive_failures, 0);
}

#[test]
fn actuation_failures_count_towards_the_circuit_breaker() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |p| {
        p.rules[0].hold_for = Duration::ZERO;
        p.circuit_breaker = 1;
    });
    sim.cloud = Cloud::Ignores;
    sim.load("web-1", 0.95).run(mins(2));
    let id = sim.decisions[0].id.clone();
    let events = sim
        .state
        .actuation_failed(&sim.policy, &id, sim.now, "webhook answered 400");
    assert!(matches!(&events[0], Event::Failed { reason, .. } if reason == "webhook answered 400"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::CircuitOpened { failures: 1, .. }))
    );
    assert!(sim.state.in_flight().is_none());
}

#[test]
fn pause_holds_every_decision_and_resume_releases_them() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |_| {});
    sim.state.pause(sim.now);
    sim.load("web-1", 0.95).run(mins(10));
    assert!(sim.log().is_empty());
    assert!(sim.skipped("web-1", |r| *r
        == SkipReason::Paused {
            by: PauseReason::Operator
        }));
    sim.state.resume();
    sim.run(Duration::from_secs(5));
    assert_eq!(
        sim.log(),
        ["web-1 M→L rule"],
        "timers kept running while paused"
    );
}

#[test]
fn dry_run_records_decisions_without_anything_in_flight() {
    let mut sim = Sim::new(
        &[("web-1", "M"), ("web-2", "M")],
        "2026-01-15T10:00:00Z",
        |p| p.rules[0].hold_for = mins(1),
    );
    sim.dry_run = true;
    sim.load_all(0.95).run(mins(4));
    assert_eq!(sim.log(), ["web-1 M→L rule", "web-2 M→L rule"]);
    assert!(sim.decisions.iter().all(|d| d.dry_run));
    assert!(sim.state.in_flight().is_none());
    // The size never changes, so the cooldown keeps a dry run from repeating every tick.
    sim.run(mins(1));
    assert_eq!(sim.log().len(), 2);
    sim.run(mins(5));
    assert_eq!(sim.log().len(), 4);
}

#[test]
fn manual_resize_obeys_one_at_a_time_and_ignores_cooldown() {
    let mut sim = Sim::new(
        &[("web-1", "M"), ("web-2", "M")],
        "2026-01-15T10:00:00Z",
        |_| {},
    );
    sim.run(Duration::from_secs(10));
    let d = sim.manual("web-1", "L").unwrap();
    assert_eq!(
        (d.trigger, d.direction, d.to.rung.as_str()),
        (Trigger::Manual, Direction::Up, "L")
    );
    assert_eq!(
        sim.manual("web-2", "L"),
        Err(ManualError::RollInProgress("web-1".into()))
    );
    sim.run(mins(1));
    assert!(sim.state.in_flight().is_none(), "verified");
    // Inside the cooldown of the verified scale-up, a manual resize still goes.
    let down = sim.manual("web-1", "M").unwrap();
    assert_eq!(down.direction, Direction::Down);
    assert_eq!(
        down.verify_deadline - down.created_at,
        chrono::Duration::minutes(15)
    );
    assert_eq!(
        sim.manual("web-9", "L"),
        Err(ManualError::UnknownVm("web-9".into()))
    );
    assert_eq!(
        sim.manual("web-2", "Q"),
        Err(ManualError::UnknownRung("Q".into()))
    );
    sim.run(mins(1));
    assert_eq!(
        sim.manual("web-2", "M"),
        Err(ManualError::AlreadyThere {
            vm: "web-2".into(),
            rung: "M".into()
        })
    );
    sim.vm("web-2").reporting = false;
    sim.run(mins(1));
    assert_eq!(
        sim.manual("web-2", "L"),
        Err(ManualError::NotFresh("web-2".into()))
    );
}

/// Two VMs on L with a day of light use, fed up to `until`.
fn quiet_day(until: &str, tune: impl FnOnce(&mut GroupPolicy)) -> Sim {
    let start = (ts(until) - chrono::Duration::hours(25)).to_rfc3339();
    let mut sim = Sim::new(&[("web-1", "L"), ("web-2", "L")], &start, tune);
    sim.load_all(0.10);
    sim.feed(Duration::from_secs(25 * 3600));
    sim
}

#[test]
fn scale_down_happens_only_inside_the_window_and_once_a_night() {
    // Winter: 02:00-05:00 Warsaw = 01:00-04:00 UTC.
    let mut sim = quiet_day("2026-01-15T00:30:00Z", |_| {});
    sim.run_until("2026-01-15T00:59:55Z");
    assert!(sim.log().is_empty(), "outside the window nothing shrinks");
    assert!(
        sim.skips
            .iter()
            .any(|(vm, r)| vm.is_none() && matches!(r, SkipReason::WindowClosed { .. }))
    );
    sim.run(Duration::from_secs(5));
    assert_eq!(sim.log(), ["web-1 L→M scale_down"]);
    let d = &sim.decisions[0];
    assert_eq!(d.created_at, ts("2026-01-15T01:00:00Z"));
    assert_eq!(d.evidence.len(), 2);
    assert!(d.evidence.iter().all(|e| e.value < e.threshold));
    // web-2 follows after web-1 is verified and warmed up; each only once this night.
    sim.run_until("2026-01-15T03:59:55Z");
    assert_eq!(sim.log(), ["web-1 L→M scale_down", "web-2 L→M scale_down"]);
    assert!(sim.skipped("web-1", |r| matches!(
        r,
        SkipReason::Cap {
            direction: Direction::Down,
            ..
        }
    ) || matches!(
        r,
        SkipReason::InsufficientEvidence { .. }
    )));
}

#[test]
fn scale_down_windows_follow_dst_in_warsaw() {
    // Spring forward, 2026-03-29: local 02:00 does not exist; the window opens at 03:00 CEST = 01:00 UTC.
    let mut spring = quiet_day("2026-03-29T00:30:00Z", |_| {});
    spring.run_until("2026-03-29T00:59:55Z");
    assert!(spring.log().is_empty());
    spring.run(Duration::from_secs(5));
    assert_eq!(spring.decisions[0].created_at, ts("2026-03-29T01:00:00Z"));
    // Fall back, 2026-10-25: the window opens at the first 02:00 (CEST) = 00:00 UTC.
    let mut autumn = quiet_day("2026-10-24T23:30:00Z", |_| {});
    autumn.run_until("2026-10-24T23:59:55Z");
    assert!(autumn.log().is_empty());
    autumn.run(Duration::from_secs(5));
    assert_eq!(autumn.decisions[0].created_at, ts("2026-10-25T00:00:00Z"));
    // A summer night for contrast: also 00:00 UTC.
    let mut summer = quiet_day("2026-07-14T23:59:00Z", |_| {});
    summer.run(Duration::from_secs(60));
    assert_eq!(summer.decisions[0].created_at, ts("2026-07-15T00:00:00Z"));
}

#[test]
fn scale_down_needs_evidence_for_the_whole_lookback() {
    // (case, cpu, memory used, a 2-minute reporting gap 1 h before the window, shrinks?)
    let cases = [
        ("a quiet day → shrinks", 0.10, 0.30, false, true),
        (
            "p95 cpu 0.40 on 4 vCPUs → 0.80 × 1.15 on 2 → stays",
            0.40,
            0.30,
            false,
            false,
        ),
        (
            "memory used 0.40 of 8 GiB ×1.15 > 0.75 × 4 GiB → stays",
            0.10,
            0.40,
            false,
            false,
        ),
        (
            "a 2-minute reporting gap in the last day → stays",
            0.10,
            0.30,
            true,
            false,
        ),
    ];
    for (case, cpu, mem_used, gap, shrinks) in cases {
        let mut sim = Sim::new(
            &[("web-1", "L"), ("web-2", "L")],
            "2026-01-13T23:30:00Z",
            |_| {},
        );
        sim.load_all(cpu);
        sim.vms.iter_mut().for_each(|v| v.mem_used = mem_used);
        sim.feed(Duration::from_secs(24 * 3600));
        if gap {
            sim.vms.iter_mut().for_each(|v| v.reporting = false);
            sim.feed(mins(2));
            sim.vms.iter_mut().for_each(|v| v.reporting = true);
        }
        sim.run_until("2026-01-15T01:20:00Z");
        assert_eq!(
            !sim.log().is_empty(),
            shrinks,
            "{case}: {:?} {:?}",
            sim.log(),
            sim.skips
        );
        if !shrinks {
            assert!(
                sim.skipped("web-1", |r| matches!(
                    r,
                    SkipReason::InsufficientEvidence { .. }
                )),
                "{case}"
            );
        }
    }
}

#[test]
fn a_group_of_one_shrinks_only_with_allow_restart() {
    let run = |allow_restart: bool| {
        let mut sim = Sim::new(&[("db-1", "L")], "2026-01-14T00:00:00Z", |p| {
            p.allow_restart = allow_restart
        });
        sim.load_all(0.05).feed(Duration::from_secs(25 * 3600));
        sim.run(mins(10));
        sim
    };
    let locked = run(false);
    assert!(locked.log().is_empty());
    assert!(locked.skipped("db-1", |r| *r == SkipReason::RestartNotAllowed));
    assert_eq!(run(true).log(), ["db-1 L→M scale_down"]);
}

#[test]
fn boosts_raise_the_floor_early_and_block_scale_down() {
    let promo = |p: &mut GroupPolicy| {
        p.boosts = vec![super::boost::BoostConfig {
            name: Some("promo".into()),
            rung: "XL".into(),
            start: "2026-01-15T03:00".into(),
            end: "2026-01-15T04:30".into(),
            timezone: None,
            lead: mins(10),
        }];
    };
    // Warsaw 03:00 = 02:00 UTC; applied from 01:50 UTC; a hot-add grows every member
    // at once.
    let mut sim = quiet_day("2026-01-15T00:30:00Z", promo);
    sim.load_all(0.01);
    sim.run_until("2026-01-15T01:49:55Z");
    let before: Vec<String> = sim.log();
    assert!(
        before.iter().all(|l| l.ends_with("scale_down")),
        "{before:?}"
    );
    sim.run(Duration::from_secs(5));
    let boosted: Vec<&Decision> = sim
        .decisions
        .iter()
        .filter(|d| d.trigger == Trigger::Boost)
        .collect();
    assert_eq!(boosted.len(), 2, "{:?}", sim.log());
    assert!(
        boosted
            .iter()
            .all(|d| d.created_at == ts("2026-01-15T01:50:00Z") && d.to.rung == "XL")
    );
    sim.run(mins(5));
    let boosted = sim
        .decisions
        .iter()
        .filter(|d| d.trigger == Trigger::Boost)
        .count();
    assert_eq!(boosted, 2, "{:?}", sim.log());
    // While the boost is on, nothing shrinks even inside the window.
    sim.run_until("2026-01-15T03:25:00Z");
    assert!(
        sim.decisions
            .iter()
            .filter(|d| d.created_at > ts("2026-01-15T01:50:00Z"))
            .all(|d| d.trigger == Trigger::Boost)
    );
    assert!(sim.skipped("web-1", |r| matches!(r, SkipReason::BoostActive { .. })));
}

// Forecasts on simulated time. Every shape starts with 15 quiet minutes; the default CPU
// rule (1m ≥ 0.80 for 3m) is the one forecast, 3 min ahead (no scale-up in the history).

/// CPU 0.30 for 15 min, then +0.02 a minute: 0.80 at minute 40.
fn ramp(t: i64) -> f64 {
    0.30 + 0.02 * ((t - 15 * 60).max(0) as f64 / 60.0)
}

/// CPU 0.40, with one minute at 0.95 (minute 30) and one at 0.78 (minute 36).
fn spike(t: i64) -> f64 {
    match t / 60 {
        30 => 0.95,
        36 => 0.78,
        _ => 0.40,
    }
}

/// CPU rising from 0.40 to just below 0.80 over 4 minutes, again and again, after the
/// quiet start: each tooth is a steep ramp heading over the threshold.
fn sawtooth(t: i64) -> f64 {
    if t < 15 * 60 {
        return 0.40;
    }
    0.40 + 0.39 * ((t % 240) as f64 / 240.0)
}

/// CPU about 0.55: each minute's level ±0.10, each sample ±0.20 around it (a fixed
/// pseudo-random sequence).
fn noise(t: i64) -> f64 {
    let unit = |seed: i64| {
        // A 64-bit LCG step, scaled to [-1, 1).
        let x = (seed as u64)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    0.55 + 0.10 * unit(t / 60 + 7) + 0.20 * unit(t * 31 + 3)
}

fn forecast_on(p: &mut GroupPolicy) {
    p.forecast.enabled = true;
    p.forecast.dry_run = false;
}

/// Minutes from `start` to `d`'s decision.
fn minute_of(d: &Decision, start: &str) -> f64 {
    (d.created_at - ts(start)).num_seconds() as f64 / 60.0
}

#[test]
fn a_forecast_grows_early_on_a_ramp_and_never_on_spikes_sawtooth_or_noise() {
    type Tweak = fn(&mut GroupPolicy);
    type Shape = fn(i64) -> f64;
    /// The first decision's trigger, and the minute it comes by (within 1.5 min).
    type First = Option<(Trigger, f64)>;
    let off: Tweak = |_| {};
    let on: Tweak = forecast_on;
    let start = "2026-01-15T10:00:00Z";
    // (case, policy, load shape, how long, first decision: trigger and by which minute)
    let cases: Vec<(&str, Tweak, Shape, u64, First)> = vec![
        (
            "ramp, forecast on → grows 3 min before 0.80",
            on,
            ramp,
            45,
            Some((Trigger::Forecast, 37.5)),
        ),
        (
            "ramp, forecast off → the rule, after 0.80 held for 3 min",
            off,
            ramp,
            45,
            Some((Trigger::Rule, 44.0)),
        ),
        ("spikes, forecast on → nothing", on, spike, 45, None),
        (
            "sawtooth below 0.80, forecast on → nothing",
            on,
            sawtooth,
            60,
            None,
        ),
        (
            "noise around 0.55, forecast on → nothing",
            on,
            noise,
            120,
            None,
        ),
    ];
    for (case, tweak, shape, minutes, want) in cases {
        let mut sim = Sim::new(&[("web-1", "M")], start, tweak);
        sim.run_shaped(mins(minutes), shape);
        let first = sim.decisions.first();
        match (want, first) {
            (None, None) => {}
            (Some((trigger, by)), Some(d)) => {
                assert_eq!(d.trigger, trigger, "{case}: {:?}", sim.log());
                let at = minute_of(d, start);
                assert!(at <= by && at >= by - 1.5, "{case}: at minute {at:.2}");
            }
            _ => panic!("{case}: {:?}", sim.log()),
        }
    }
}

#[test]
fn a_forecast_decision_names_its_trend_horizon_and_prediction() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", forecast_on);
    sim.run_shaped(mins(40), ramp);
    let d = &sim.decisions[0];
    assert_eq!((d.trigger, d.direction), (Trigger::Forecast, Direction::Up));
    assert_eq!((d.from.rung.as_str(), d.to.rung.as_str()), ("M", "L"));
    assert!(!d.dry_run);
    assert!(
        d.reason
            .starts_with("forecast: cpu_utilization 1m >= 0.8 within 3m"),
        "{}",
        d.reason
    );
    let e = &d.evidence[0];
    let f = e.forecast.unwrap();
    assert_eq!((e.metric, e.threshold), (Metric::CpuUtilization, 0.8));
    assert_eq!(f.horizon_seconds, 180);
    assert!((f.slope_per_second - 0.02 / 60.0).abs() < 1e-5, "{f:?}");
    assert!(f.r2 > 0.99, "{f:?}");
    assert!(e.value >= 0.8 && e.value < 0.82, "predicted {}", e.value);
    assert!(f.fitted_now < 0.8);
}

#[test]
fn a_forecast_in_dry_run_is_recorded_not_sent_and_holds_the_rule_back_in_nothing() {
    // forecast.dry_run defaults to true; the group itself is live.
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |p| {
        p.forecast.enabled = true
    });
    sim.run_shaped(mins(45), ramp);
    let forecasts: Vec<&Decision> = sim
        .decisions
        .iter()
        .filter(|d| d.trigger == Trigger::Forecast)
        .collect();
    assert!(!forecasts.is_empty(), "{:?}", sim.log());
    assert!(forecasts.iter().all(|d| d.dry_run));
    // One note per cooldown, not one per tick.
    assert!(forecasts.len() <= 2, "{:?}", sim.log());
    // The rule fires exactly when it would without a forecast, and acts.
    let rule = sim
        .decisions
        .iter()
        .find(|d| d.trigger == Trigger::Rule)
        .unwrap();
    assert!(!rule.dry_run);
    let mut without = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", |_| {});
    without.run_shaped(mins(45), ramp);
    assert_eq!(rule.created_at, without.decisions[0].created_at);
}

#[test]
fn a_forecast_in_a_dry_run_group_is_dry_run() {
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", forecast_on);
    sim.dry_run = true;
    sim.run_shaped(mins(40), ramp);
    assert_eq!(sim.log(), ["web-1 M→L forecast"]);
    assert!(sim.decisions[0].dry_run);
}

#[test]
fn a_forecast_respects_the_gates_of_a_rule() {
    type Tweak = fn(&mut GroupPolicy);
    let capped: Tweak = |p| {
        forecast_on(p);
        p.scale_up.daily_cap = 0;
    };
    type Skipped = fn(&SkipReason) -> bool;
    let at_max: Tweak = |p| {
        forecast_on(p);
        p.max_rung = Some("M".into());
    };
    // (case, policy, expected skip)
    let cases: Vec<(&str, Tweak, Skipped)> = vec![
        ("daily cap used up → cap", capped, |r| {
            matches!(r, SkipReason::Cap { .. })
        }),
        ("at max_rung → at_max", at_max, |r| {
            *r == SkipReason::AtMax
        }),
    ];
    for (case, tweak, skip) in cases {
        let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", tweak);
        sim.run_shaped(mins(38), ramp);
        assert!(sim.log().is_empty(), "{case}: {:?}", sim.log());
        assert!(sim.skipped("web-1", skip), "{case}: {:?}", sim.skips);
    }
    // Stale: no report, no forecast.
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", forecast_on);
    sim.run_shaped(mins(36), ramp);
    sim.vm("web-1").reporting = false;
    sim.run_shaped(mins(3), |t| ramp(t + 36 * 60));
    assert!(sim.log().is_empty(), "{:?}", sim.log());
    // Paused: recorded nowhere.
    let mut sim = Sim::new(&[("web-1", "M")], "2026-01-15T10:00:00Z", forecast_on);
    sim.state.pause(sim.now);
    sim.run_shaped(mins(40), ramp);
    assert!(sim.log().is_empty(), "{:?}", sim.log());
}
