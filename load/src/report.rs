//! What a simulated agent sends: its identity, its `Hello` and its reports.
//!
//! Reports are the agent's own domain [`Sample`] turned into `rally.v1` messages by
//! [`rally_agent::wire`], so they have exactly the shape and size a real agent's
//! have (a 2-vCPU Debian VM with a public and a private NIC, one disk and two
//! filesystems: about 700 bytes encoded). Figures wander from report to report so the collector's windows
//! see changing values, but always stay within what its validation accepts.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use rally_agent::sample::{
    CoreShares, CpuShares, DiskRate, FilesystemSpace, Load, Memory, NetRate, Pressure,
    PressureLine, PressureResource, Sample, VmSize,
};
use rally_agent::wire::{self, Identity};
use rally_proto::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// vCPUs of the simulated VM: one `CpuTimes` per core goes into every report.
const VCPUS: u32 = 2;
/// Memory of the simulated VM.
const MEMORY_BYTES: u64 = 4 << 30;

/// The identity of simulated agent `index`: its own VM id, boot id and run id.
pub fn identity(prefix: &str, index: usize, rng: &mut SmallRng) -> Identity {
    let vm_id = format!("{prefix}-{index:05}");
    // Formatted like the kernel's boot id (a random UUID).
    let b: [u8; 16] = rng.random();
    let boot_id = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]),
        u16::from_be_bytes([b[8], b[9]]),
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    );
    Identity {
        hostname: format!("{vm_id}.load.invalid"),
        vm_id,
        boot_id,
        run_id: rng.random(),
        labels: BTreeMap::from([("role".to_owned(), "load".to_owned())]),
    }
}

/// The `Hello` that opens a simulated agent's stream.
pub fn hello(identity: &Identity, interval: Duration) -> pb::AgentMessage {
    wire::hello(identity, Some(size()), interval)
}

/// Report `seq` of a simulated agent, as the message to send.
pub fn report(seq: u64, interval: Duration, rng: &mut SmallRng) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Report(wire::report(
            seq,
            &sample(interval, rng),
        ))),
    }
}

/// The encoded size of a typical report, in bytes.
pub fn encoded_len() -> usize {
    let mut rng = SmallRng::seed_from_u64(0);
    report(1, Duration::from_secs(1), &mut rng).encoded_len()
}

fn size() -> VmSize {
    VmSize {
        vcpus: VCPUS,
        memory_bytes: MEMORY_BYTES,
        offline_cpus: 0,
        offline_memory_blocks: 0,
        memory_block_bytes: 128 << 20,
    }
}

/// CPU shares with a busy fraction of `busy`, split as a web server's usually is.
fn shares(busy: f64) -> CpuShares {
    CpuShares {
        user: busy * 0.7,
        nice: 0.0,
        system: busy * 0.2,
        irq: 0.0,
        softirq: busy * 0.05,
        iowait: busy * 0.03,
        steal: busy * 0.02,
        idle: 1.0 - busy,
        utilization: busy,
    }
}

fn pressure_line(rng: &mut SmallRng, total_us: u64) -> PressureLine {
    let avg10 = (rng.random_range(0.0..20.0_f64) * 100.0).round() / 100.0;
    PressureLine {
        avg10,
        avg60: avg10 * 0.8,
        avg300: avg10 * 0.5,
        total_us,
    }
}

fn sample(interval: Duration, rng: &mut SmallRng) -> Sample {
    let busy: f64 = rng.random_range(0.05..0.95);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let available = rng.random_range(MEMORY_BYTES / 8..MEMORY_BYTES / 2);
    let total_us = rng.random_range(1_000_000..1_000_000_000);
    Sample {
        timestamp_ms: now_ms,
        interval_ms: wire::millis(interval),
        size: Some(size()),
        cpu: Some(shares(busy)),
        cores: (0..VCPUS)
            .map(|id| CoreShares {
                id,
                shares: shares((busy + 0.05 * f64::from(id)).min(1.0)),
            })
            .collect(),
        load: Some(Load {
            one: busy * 4.0,
            five: busy * 3.5,
            fifteen: busy * 3.0,
        }),
        memory: Some(Memory {
            total_bytes: MEMORY_BYTES,
            available_bytes: available,
            swap_total_bytes: 0,
            swap_free_bytes: 0,
        }),
        pressure: Some(Pressure {
            cpu: Some(PressureResource {
                some: pressure_line(rng, total_us),
                full: None,
            }),
            memory: Some(PressureResource {
                some: pressure_line(rng, total_us / 4),
                full: Some(pressure_line(rng, total_us / 8)),
            }),
            io: Some(PressureResource {
                some: pressure_line(rng, total_us / 2),
                full: Some(pressure_line(rng, total_us / 3)),
            }),
        }),
        net: ["ens3", "ens4"]
            .into_iter()
            .map(|name| NetRate {
                name: name.to_owned(),
                rx_bytes_per_second: rng.random_range(1e4..1e7),
                tx_bytes_per_second: rng.random_range(1e4..1e7),
                rx_packets_per_second: rng.random_range(10.0..1e4),
                tx_packets_per_second: rng.random_range(10.0..1e4),
                rx_errors: 0,
                tx_errors: 0,
            })
            .collect(),
        disks: vec![DiskRate {
            name: "vda".to_owned(),
            read_bytes_per_second: rng.random_range(0.0..1e7),
            write_bytes_per_second: rng.random_range(0.0..1e7),
            busy_ratio: rng.random_range(0.0..0.5),
            reads_per_second: rng.random_range(0.0..500.0),
            writes_per_second: rng.random_range(0.0..500.0),
        }],
        filesystems: vec![
            FilesystemSpace {
                mount_point: "/".to_owned(),
                fs_type: "ext4".to_owned(),
                device: "/dev/vda1".to_owned(),
                total_bytes: 40 << 30,
                available_bytes: 22 << 30,
                free_bytes: 24 << 30,
                files: 2_621_440,
                files_free: 2_400_000,
            },
            FilesystemSpace {
                mount_point: "/boot".to_owned(),
                fs_type: "ext4".to_owned(),
                device: "/dev/vda15".to_owned(),
                total_bytes: 470 << 20,
                available_bytes: 350 << 20,
                free_bytes: 375 << 20,
                files: 31_360,
                files_free: 31_000,
            },
        ],
        sources: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_about_700_bytes_like_a_real_agents() {
        let mut rng = SmallRng::seed_from_u64(1);
        for seq in [1, 1_000, u64::from(u32::MAX)] {
            let len = report(seq, Duration::from_secs(1), &mut rng).encoded_len();
            assert!((660..=740).contains(&len), "report {seq} is {len} bytes");
        }
        assert!((660..=740).contains(&encoded_len()));
    }

    #[test]
    fn agents_have_distinct_identities() {
        let mut rng = SmallRng::seed_from_u64(2);
        let a = identity("load", 1, &mut rng);
        let b = identity("load", 2, &mut rng);
        assert_eq!(a.vm_id, "load-00001");
        assert_ne!(a.vm_id, b.vm_id);
        assert_ne!(a.boot_id, b.boot_id);
        assert_ne!(a.run_id, b.run_id);
        assert_eq!(a.boot_id.len(), 36);
    }

    #[test]
    fn hello_names_the_agent_and_its_interval() {
        let mut rng = SmallRng::seed_from_u64(3);
        let id = identity("load", 7, &mut rng);
        let Some(pb::agent_message::Kind::Hello(h)) = hello(&id, Duration::from_millis(200)).kind
        else {
            panic!("not a hello");
        };
        assert_eq!(h.vm_id, "load-00007");
        assert_eq!(h.interval_ms, 200);
        assert_eq!(h.size.map(|s| s.vcpus), Some(VCPUS));
    }
}
