//! What a tracked VM costs the collector once its windows hold 24 h of history.
//!
//! Fills a real [`Fleet`] directly on simulated time, without a network: for each of
//! N VMs a `Hello`, then one report a minute for 24 h (every 1-minute mean of the
//! history filled) and then one every interval for the last [`RAW_RETENTION`] (the
//! raw ring full). Every report has the shape of a real agent's (2 vCPUs, two NICs,
//! one disk, two filesystems, PSI, no web sources) and goes through the ingest
//! edge's validation before the fleet applies it, as on the wire.
//!
//! It prints the resident memory per VM (the process's RSS growth over the fill,
//! divided by N), what the windows hold on the heap per VM, the time per applied
//! report, and the time to read every VM's 24 h p95 of 1-minute CPU (what the
//! scale-down evidence reads each tick of the night). At an interval other than 1 s it
//! then fills [`SIDE_VMS`] more VMs the same way at 1 s and prints what their windows
//! hold (the raw ring's worst case among the agent's usual intervals).
//!
//! Run: `cargo bench -p rally-collector --bench history`; `RALLY_BENCH_VMS` (default
//! 2 000) and `RALLY_BENCH_INTERVAL_SECS` (default 5, the agent's default) change the
//! fleet; the histories kept are those of the shipped group defaults (a CPU rule, a
//! memory target: the charted metrics), or every one with `RALLY_BENCH_HISTORIES=all`
//! (PSI cpu and memory then have a ring too). `scripts/bench --only history` runs it.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use rally_collector::config::UnknownVms;
use rally_collector::fleet::{Fleet, FleetSettings, Histories, Metric, RAW_RETENTION, TimeRange};
use rally_collector::ingest::validate;

mod support;
use support::{env_or, hello, report, rss_kib};

const DAY: Duration = Duration::from_secs(86_400);
/// VMs filled at 1 s after the main fleet, for their windows' size alone.
const SIDE_VMS: usize = 20;

/// An empty fleet for `vms` VMs that keeps `histories`.
fn empty_fleet(vms: usize, histories: Histories) -> Fleet {
    Fleet::new(FleetSettings {
        stale_after: Duration::from_secs(60),
        forget_after: DAY * 2,
        unknown_vms: UnknownVms::Ungrouped,
        max_vms: vms,
        groups: Vec::new(),
        histories,
    })
}

/// Gives each of `vms` VMs 24 h at one report a minute and then one every `interval`
/// for [`RAW_RETENTION`] up to `end`; returns the number of reports applied.
fn fill_day(fleet: &Fleet, vms: usize, interval: Duration, end: SystemTime) -> Result<u64> {
    let start = end - DAY - RAW_RETENTION;
    let mut applied = 0u64;
    for vm in 0..vms {
        let session = fleet
            .hello(&hello(vm, interval), start)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut seq = 0;
        let mut t = start;
        let raw_from = end - RAW_RETENTION;
        while t <= end {
            seq += 1;
            let checked = validate::report(report(seq, t, interval)?)
                .map_err(|e| anyhow::anyhow!("report {seq} is invalid: {e}"))?;
            session.apply(checked, t);
            applied += 1;
            // A minute apart for the day, the agent's interval for the raw ring.
            t += if t < raw_from {
                Duration::from_secs(60)
            } else {
                interval
            };
        }
    }
    Ok(applied)
}

/// What every VM's windows hold on the heap, in all, and one VM's raw slots and minutes.
fn windows_held(fleet: &Fleet) -> (usize, (usize, usize)) {
    let mut bytes = 0usize;
    let mut held = (0usize, 0usize);
    fleet.for_each_vm(|vm| {
        bytes += vm.windows().heap_bytes();
        held = vm.windows().len();
    });
    (bytes, held)
}

fn main() -> Result<()> {
    let vms = usize::try_from(env_or("RALLY_BENCH_VMS", 2_000)?)?;
    let interval = Duration::from_secs(env_or("RALLY_BENCH_INTERVAL_SECS", 5)?.max(1));
    let histories = match std::env::var("RALLY_BENCH_HISTORIES").as_deref() {
        Ok("all") => Histories::ALL,
        Ok("charted") | Err(_) => Histories::CHARTED,
        Ok(other) => anyhow::bail!("RALLY_BENCH_HISTORIES={other:?}: use all or charted"),
    };
    let end = SystemTime::now();
    let fleet = empty_fleet(vms, histories);
    let rss_before = rss_kib()?;
    let began = Instant::now();
    let applied = fill_day(&fleet, vms, interval, end)?;
    let fill = began.elapsed();
    let rss_after = rss_kib()?;

    let (windows_bytes, held) = windows_held(&fleet);
    let day = TimeRange::last(DAY, end);
    let query = Instant::now();
    let mut evidence = 0;
    for id in fleet.vm_ids() {
        if fleet
            .quantile_of_minute_means(&id, Metric::CpuUtilization, day, 0.95)
            .is_some()
        {
            evidence += 1;
        }
    }
    let query = query.elapsed();

    let per_vm_kib = (rss_after.saturating_sub(rss_before)) as f64 / vms as f64;
    println!(
        "history: {vms} VMs, 24 h at one report a minute then {} at {}s: {applied} reports in {:.1} s ({:.2} µs each, validation included)",
        humantime::format_duration(RAW_RETENTION),
        interval.as_secs(),
        fill.as_secs_f64(),
        fill.as_secs_f64() * 1e6 / applied as f64,
    );
    println!(
        "history: each VM holds {} raw slots and {} minutes; windows {:.1} KiB on the heap per VM",
        held.0,
        held.1,
        windows_bytes as f64 / vms as f64 / 1024.0,
    );
    println!(
        "history: RSS {} MiB before, {} MiB after: {per_vm_kib:.1} KiB per VM",
        rss_before / 1024,
        rss_after / 1024,
    );
    println!(
        "history: 24 h p95 of 1-minute CPU for {evidence} VMs in {:.1} ms ({:.1} µs per VM)",
        query.as_secs_f64() * 1e3,
        query.as_secs_f64() * 1e6 / vms.max(1) as f64,
    );
    if interval != Duration::from_secs(1) {
        drop(fleet);
        let side = empty_fleet(SIDE_VMS, histories);
        fill_day(&side, SIDE_VMS, Duration::from_secs(1), end)?;
        let (bytes, held) = windows_held(&side);
        println!(
            "history: at 1s each VM holds {} raw slots and {} minutes; windows {:.1} KiB on the heap per VM ({SIDE_VMS} VMs)",
            held.0,
            held.1,
            bytes as f64 / SIDE_VMS as f64 / 1024.0,
        );
    }
    Ok(())
}
