//! Policy evaluation cost per tick for 1, 100 and 10 000 VMs against the in-memory view.
//!
//! VMs are in groups of 10 (a group of one for N = 1), on a five-rung ladder with the
//! shipped defaults (CPU rule, memory target), reporting every 5 s with moderate load, so
//! every rule and target is read each tick and nothing is decided (the steady state).
//! "daytime" is outside the scale-down window; "night" is inside it, where each VM's 24 h
//! p95 evidence is computed as well (the in-memory view computes it from raw samples,
//! which the fleet keeps as 1-minute buckets, so that figure is an upper bound).
//!
//! "fleet" runs the daytime tick against the collector's real fleet ([`FleetView`] over
//! live windows, one VM lock per query), as the engine does.
//!
//! Run: `cargo bench -p rally-collector --bench policy`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rally_collector::config::UnknownVms;
use rally_collector::fleet::{
    CpuShares, Fleet as LiveFleet, FleetSettings, FleetView, Hello, Memory, Report, RunKey, VmSize,
};
use rally_policy::memory_view::MemoryView;
use rally_policy::{Group, GroupPolicy, GroupState, Metric, Policy, Rung, Timestamp, evaluate};

const GIB: u64 = 1 << 30;

fn policy() -> Policy {
    let r = |name: &str, vcpus, gib| Rung {
        name: name.into(),
        vcpus,
        memory_bytes: gib * GIB,
        oktawave_type: None,
    };
    let mut p = GroupPolicy::with_ladder(vec![
        r("S", 1, 2),
        r("M", 2, 4),
        r("L", 4, 8),
        r("XL", 8, 16),
        r("XXL", 16, 32),
    ]);
    p.allow_restart = true;
    p.compile().expect("the benchmark policy is valid")
}

struct Fleet {
    view: MemoryView,
    groups: Vec<(String, Vec<String>, GroupState)>,
    policy: Policy,
}

/// `n` VMs with `history` of reports ending at `now`.
fn fleet(n: usize, now: Timestamp, history: Duration) -> Fleet {
    let start = now - chrono::Duration::from_std(history).expect("short history");
    let mut view = MemoryView::new(now, Duration::from_secs(5), Duration::from_secs(20));
    let names: Vec<String> = (0..n).map(|i| format!("vm-{i:05}")).collect();
    for (i, name) in names.iter().enumerate() {
        let cpu = 0.30 + (i % 7) as f64 * 0.02;
        view.report_span(
            name,
            start + chrono::Duration::seconds(5),
            now + chrono::Duration::seconds(1),
            4,
            8 * GIB - 150 * (1 << 20),
            &[
                (Metric::CpuUtilization, cpu),
                (Metric::MemoryUsedRatio, 0.40),
            ],
        );
    }
    let groups = names
        .chunks(10)
        .enumerate()
        .map(|(g, members)| {
            (
                format!("group-{g}"),
                members.to_vec(),
                GroupState::default(),
            )
        })
        .collect();
    Fleet {
        view,
        groups,
        policy: policy(),
    }
}

fn tick(f: &mut Fleet, now: Timestamp) -> usize {
    let mut decisions = 0;
    for (name, members, state) in &mut f.groups {
        let group = Group {
            name,
            policy: &f.policy,
            members,
            dry_run: false,
        };
        decisions += evaluate(&group, &f.view, state, now).decisions.len();
    }
    decisions
}

fn bench(c: &mut Criterion) {
    let day: Timestamp = "2026-01-15T10:00:00Z".parse().expect("a valid time");
    let night: Timestamp = "2026-01-15T02:00:00Z".parse().expect("a valid time");
    let mut g = c.benchmark_group("policy_tick_daytime");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for n in [1usize, 100, 10_000] {
        let mut f = fleet(n, day, Duration::from_secs(6 * 60));
        assert_eq!(tick(&mut f, day), 0, "steady state: no decision");
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(tick(&mut f, day)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("policy_tick_night_24h_evidence");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for n in [1usize, 100] {
        let mut f = fleet(n, night, Duration::from_secs(25 * 3600));
        // Evidence is computed each tick while the load keeps the smaller rung out of reach.
        f.view.set_now(night);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(tick(&mut f, night)))
        });
    }
    g.finish();
}

/// `n` VMs in a live fleet with `history` of 5 s reports ending at `now`.
fn live_fleet(n: usize, now: std::time::SystemTime, history: Duration) -> LiveFleet {
    let names: Vec<String> = (0..n).map(|i| format!("vm-{i:05}")).collect();
    let fleet = LiveFleet::new(FleetSettings {
        stale_after: Duration::from_secs(20),
        forget_after: Duration::from_secs(86_400),
        unknown_vms: UnknownVms::Ungrouped,
        max_vms: n + 1,
        histories: Default::default(),
        groups: names
            .chunks(10)
            .enumerate()
            .map(|(g, m)| (format!("group-{g}"), m.to_vec()))
            .collect(),
    });
    let size = VmSize {
        vcpus: 4,
        memory_bytes: 8 * GIB - 150 * (1 << 20),
        ..Default::default()
    };
    let start = now - history;
    for (i, name) in names.iter().enumerate() {
        let hello = Hello {
            vm_id: name.clone(),
            hostname: name.clone(),
            agent_version: "bench".into(),
            run: RunKey {
                boot_id: "b".into(),
                run_id: 1,
            },
            labels: Default::default(),
            size: Some(size),
            interval: Some(Duration::from_secs(5)),
        };
        let session = fleet.hello(&hello, start).expect("room for every VM");
        let cpu = 0.30 + (i % 7) as f64 * 0.02;
        let mut t = start;
        let mut seq = 0;
        while t < now {
            t += Duration::from_secs(5);
            seq += 1;
            let report = Report {
                seq,
                timestamp: t,
                interval: Duration::from_secs(5),
                size: Some(size),
                cpu: Some(CpuShares {
                    utilization: cpu,
                    user: cpu,
                    idle: 1.0 - cpu,
                    ..CpuShares::default()
                }),
                cores: vec![],
                load: None,
                memory: Some(Memory {
                    total_bytes: size.memory_bytes,
                    available_bytes: (size.memory_bytes as f64 * 0.6) as u64,
                    swap_total_bytes: 0,
                    swap_free_bytes: 0,
                }),
                pressure: None,
                net: vec![],
                disks: vec![],
                filesystems: vec![],
                dropped: 0,
                agent: Default::default(),
                sources: vec![],
            };
            session.apply(report, t);
        }
    }
    fleet
}

fn bench_fleet(c: &mut Criterion) {
    let day: Timestamp = "2026-01-15T10:00:00Z".parse().expect("a valid time");
    let now = std::time::SystemTime::from(day);
    let policy = policy();
    let mut g = c.benchmark_group("policy_tick_daytime_fleet");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for n in [1usize, 100, 10_000] {
        let fleet = live_fleet(n, now, Duration::from_secs(6 * 60));
        let mut groups: Vec<(String, Vec<String>, GroupState)> = (0..n.div_ceil(10))
            .map(|g| {
                let name = format!("group-{g}");
                let members = fleet.members(&name);
                (name, members, GroupState::default())
            })
            .collect();
        let mut run = || {
            let view = FleetView::new(&fleet, now);
            let mut decisions = 0;
            for (name, members, state) in &mut groups {
                let group = Group {
                    name,
                    policy: &policy,
                    members,
                    dry_run: false,
                };
                decisions += evaluate(&group, &view, state, day).decisions.len();
            }
            decisions
        };
        assert_eq!(run(), 0, "steady state: no decision");
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(run()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_fleet);
criterion_main!(benches);
