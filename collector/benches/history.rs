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
//! scale-down evidence reads each tick of the night).
//!
//! Run: `cargo bench -p rally-collector --bench history`; `RALLY_BENCH_VMS` (default
//! 2 000) and `RALLY_BENCH_INTERVAL_SECS` (default 5, the agent's default) change the
//! fleet; the histories kept are those of the shipped group defaults (a CPU rule, a
//! memory target: the charted metrics), or every one with `RALLY_BENCH_HISTORIES=all`
//! (PSI cpu and memory then have a ring too). `scripts/bench --only history` runs it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use rally_collector::config::UnknownVms;
use rally_collector::fleet::{
    Fleet, FleetSettings, Hello, Histories, Metric, RAW_RETENTION, RunKey, TimeRange, VmSize,
};
use rally_collector::ingest::validate;
use rally_proto::v1;

const DAY: Duration = Duration::from_secs(86_400);
const MEMORY_BYTES: u64 = 4 << 30;

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The resident set of this process, in KiB.
fn rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

fn size() -> v1::VmSize {
    v1::VmSize {
        vcpus: 2,
        memory_bytes: MEMORY_BYTES,
        memory_block_bytes: 128 << 20,
        ..Default::default()
    }
}

fn shares(busy: f64, id: u32) -> v1::CpuTimes {
    v1::CpuTimes {
        id,
        user: busy * 0.7,
        system: busy * 0.2,
        softirq: busy * 0.05,
        iowait: busy * 0.03,
        steal: busy * 0.02,
        idle: 1.0 - busy,
        utilization: busy,
        ..Default::default()
    }
}

fn line(avg10: f64) -> Option<v1::PressureLine> {
    Some(v1::PressureLine {
        avg10,
        avg60: avg10 * 0.8,
        avg300: avg10 * 0.5,
        total_us: 123_456,
    })
}

/// Report `seq` at `t`, its figures wandering with `seq`.
fn report(seq: u64, t: SystemTime, interval: Duration) -> Result<v1::Report> {
    let busy = 0.05 + 0.9 * ((seq * 7919) % 1000) as f64 / 1000.0;
    let timestamp_ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("a time before 1970")?
        .as_millis();
    Ok(v1::Report {
        seq,
        timestamp_ms: i64::try_from(timestamp_ms)?,
        interval_ms: u32::try_from(interval.as_millis())?,
        size: Some(size()),
        cpu: Some(shares(busy, 0)),
        cores: (0..2).map(|id| shares(busy, id)).collect(),
        load: Some(v1::LoadAverage {
            one: busy * 4.0,
            five: busy * 3.5,
            fifteen: busy * 3.0,
        }),
        memory: Some(v1::Memory {
            total_bytes: MEMORY_BYTES,
            available_bytes: MEMORY_BYTES / 8 + (seq % 100) * (MEMORY_BYTES / 400),
            swap_total_bytes: 0,
            swap_free_bytes: 0,
        }),
        pressure: Some(v1::Pressure {
            cpu: Some(v1::PressureResource {
                some: line(busy * 10.0),
                full: None,
            }),
            memory: Some(v1::PressureResource {
                some: line(busy * 2.0),
                full: line(busy),
            }),
            io: Some(v1::PressureResource {
                some: line(busy * 3.0),
                full: line(busy * 1.5),
            }),
        }),
        net: ["ens3", "ens4"]
            .into_iter()
            .map(|name| v1::NetInterface {
                name: name.to_owned(),
                rx_bytes_per_second: busy * 1e7,
                tx_bytes_per_second: busy * 5e6,
                rx_packets_per_second: busy * 1e4,
                tx_packets_per_second: busy * 8e3,
                ..Default::default()
            })
            .collect(),
        disks: vec![v1::DiskIo {
            name: "vda".to_owned(),
            read_bytes_per_second: busy * 1e6,
            write_bytes_per_second: busy * 2e6,
            busy_ratio: busy / 2.0,
            reads_per_second: Some(busy * 200.0),
            writes_per_second: Some(busy * 400.0),
        }],
        filesystems: [("/", 40 << 30), ("/boot", 470 << 20)]
            .into_iter()
            .map(|(mount_point, total_bytes)| v1::Filesystem {
                mount_point: mount_point.to_owned(),
                fs_type: "ext4".to_owned(),
                device: format!("/dev/vda{}", mount_point.len()),
                total_bytes,
                available_bytes: total_bytes / 2,
                free_bytes: Some(total_bytes / 2 + total_bytes / 20),
                files: Some(total_bytes >> 14),
                files_free: Some(total_bytes >> 15),
            })
            .collect(),
        ..Default::default()
    })
}

fn hello(vm: usize, interval: Duration) -> Hello {
    let vm_id = format!("history-{vm:05}");
    Hello {
        hostname: format!("{vm_id}.bench.invalid"),
        vm_id,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        run: RunKey {
            boot_id: format!("00000000-0000-4000-8000-{vm:012x}"),
            run_id: vm as u64,
        },
        labels: BTreeMap::from([("role".to_owned(), "bench".to_owned())]),
        size: Some(VmSize {
            vcpus: 2,
            memory_bytes: MEMORY_BYTES,
            ..Default::default()
        }),
        interval: Some(interval),
    }
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
    let start = end - DAY - RAW_RETENTION;
    let fleet = Fleet::new(FleetSettings {
        stale_after: Duration::from_secs(60),
        forget_after: DAY * 2,
        unknown_vms: UnknownVms::Ungrouped,
        max_vms: vms,
        groups: Vec::new(),
        histories,
    });
    let rss_before = rss_kib()?;
    let began = Instant::now();
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
    let fill = began.elapsed();
    let rss_after = rss_kib()?;

    let mut windows_bytes = 0usize;
    let mut held = (0usize, 0usize);
    fleet.for_each_vm(|vm| {
        windows_bytes += vm.windows().heap_bytes();
        held = vm.windows().len();
    });
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
        "history: each VM holds {} raw samples and {} minutes; windows {:.1} KiB on the heap per VM",
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
    Ok(())
}
