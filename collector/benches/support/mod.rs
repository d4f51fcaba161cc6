//! What the collector's benchmarks share: a real agent's reports and hellos, built
//! without a network, and the process's resident set.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rally_collector::fleet::{Hello, RunKey, VmSize};
use rally_proto::v1;

const MEMORY_BYTES: u64 = 4 << 30;

pub fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The resident set of this process, in KiB.
pub fn rss_kib() -> Result<u64> {
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
pub fn report(seq: u64, t: SystemTime, interval: Duration) -> Result<v1::Report> {
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

pub fn hello(vm: usize, interval: Duration) -> Hello {
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
