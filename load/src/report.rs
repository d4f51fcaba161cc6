//! What a simulated agent sends: its identity, its `Hello` and its reports.
//!
//! Reports are the agent's own domain [`Sample`] turned into `rally.v1` messages by
//! [`rally_agent::wire`], so they have exactly the shape and size a real agent's
//! have (a 2-vCPU Debian VM with a public and a private NIC, one disk and two
//! filesystems: about 700 bytes encoded). Figures wander from report to report so the collector's windows
//! see changing values, but always stay within what its validation accepts.
//!
//! A flood sends hundreds of reports a second per agent, so building and encoding
//! each one would make the generator cost more than the collector it measures. An
//! agent therefore encodes a sample once ([`Body`]: every field but the sequence
//! number and the timestamp) and sends it as [`Encoded`] reports, which write those
//! two fields in front of the cached bytes: exactly the bytes `prost` gives for
//! [`wire::report`] of the same sample, sequence number and time. In a flood,
//! [`Reports`] renews the sample every [`RENEW_AFTER`] reports or once per interval,
//! whichever is first; at a rate, every report gets a fresh one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, int64, uint64};
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

/// Reports sent with one encoded sample at most, in a flood.
pub const RENEW_AFTER: u32 = 16;

/// `AgentMessage.report`'s field number.
const AGENT_MESSAGE_REPORT: u32 = 2;
/// `Report.seq`'s field number.
const REPORT_SEQ: u32 = 1;
/// `Report.timestamp_ms`'s field number.
const REPORT_TIMESTAMP: u32 = 2;

/// A sample encoded as a `Report` without its sequence number and timestamp.
#[derive(Debug, Clone)]
pub struct Body(Bytes);

impl Body {
    /// Encodes `sample`'s report, but for the two fields written per report.
    pub fn of(sample: &Sample) -> Self {
        let mut report = wire::report(0, sample);
        // proto3 leaves zero scalars out: these two are then the only fields missing.
        report.seq = 0;
        report.timestamp_ms = 0;
        Self(Bytes::from(report.encode_to_vec()))
    }
}

/// One report ready to send: an `AgentMessage` holding `body` with `seq` and
/// `timestamp_ms` written in front of it (field order is free in protobuf, and these
/// two come first in `prost`'s encoding too).
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The report's sequence number.
    pub seq: u64,
    /// The sample's time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Every other field.
    pub body: Body,
}

impl Encoded {
    fn report_len(&self) -> usize {
        uint64::encoded_len(REPORT_SEQ, &self.seq)
            + int64::encoded_len(REPORT_TIMESTAMP, &self.timestamp_ms)
            + self.body.0.len()
    }

    /// The encoded `AgentMessage`'s length.
    pub fn encoded_len(&self) -> usize {
        let report = self.report_len();
        1 + encoded_len_varint(report as u64) + report
    }

    /// Writes the `AgentMessage` to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        encode_key(AGENT_MESSAGE_REPORT, WireType::LengthDelimited, buf);
        encode_varint(self.report_len() as u64, buf);
        uint64::encode(REPORT_SEQ, &self.seq, buf);
        int64::encode(REPORT_TIMESTAMP, &self.timestamp_ms, buf);
        buf.put_slice(&self.body.0);
    }
}

/// The reports of one simulated agent: a fresh sample every `renew_after` reports or
/// every `interval`, whichever comes first, stamped with the time of sending.
pub struct Reports {
    interval: Duration,
    renew_after: u32,
    body: Body,
    sampled: std::time::Instant,
    uses: u32,
}

impl Reports {
    /// Reports of an agent announcing `interval`, `renew_after` (at least 1) to a
    /// sample.
    pub fn new(interval: Duration, renew_after: u32, rng: &mut SmallRng) -> Self {
        Self {
            interval,
            renew_after,
            body: Body::of(&sample(interval, rng)),
            sampled: std::time::Instant::now(),
            uses: 0,
        }
    }

    /// Report `seq`, sent at `now`.
    pub fn next(&mut self, seq: u64, now: std::time::Instant, rng: &mut SmallRng) -> Encoded {
        if self.uses >= self.renew_after || now.duration_since(self.sampled) >= self.interval {
            self.body = Body::of(&sample(self.interval, rng));
            self.sampled = now;
            self.uses = 0;
        }
        self.uses += 1;
        Encoded {
            seq,
            timestamp_ms: now_ms(),
            body: self.body.clone(),
        }
    }
}

/// The encoded size of a typical report, in bytes.
pub fn encoded_len() -> usize {
    let mut rng = SmallRng::seed_from_u64(0);
    Reports::new(Duration::from_secs(1), 1, &mut rng)
        .next(1, std::time::Instant::now(), &mut rng)
        .encoded_len()
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

/// The wall clock in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn sample(interval: Duration, rng: &mut SmallRng) -> Sample {
    let busy: f64 = rng.random_range(0.05..0.95);
    let available = rng.random_range(MEMORY_BYTES / 8..MEMORY_BYTES / 2);
    let total_us = rng.random_range(1_000_000..1_000_000_000);
    Sample {
        timestamp_ms: now_ms(),
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
        filesystems: Arc::from([
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
        ]),
        sources: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `prost` makes of `wire::report(seq, sample)`.
    fn reference(seq: u64, sample: &Sample) -> pb::AgentMessage {
        pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Report(wire::report(seq, sample))),
        }
    }

    #[test]
    fn reports_are_about_700_bytes_like_a_real_agents() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut reports = Reports::new(Duration::from_secs(1), 1, &mut rng);
        for seq in [1, 1_000, u64::from(u32::MAX)] {
            let len = reports
                .next(seq, std::time::Instant::now(), &mut rng)
                .encoded_len();
            assert!((660..=740).contains(&len), "report {seq} is {len} bytes");
        }
        assert!((660..=740).contains(&encoded_len()));
    }

    #[test]
    fn an_encoded_report_is_what_wire_report_gives() {
        let mut rng = SmallRng::seed_from_u64(4);
        for seq in [1, 127, 128, 300_000, u64::MAX] {
            let sample = sample(Duration::from_millis(700), &mut rng);
            let encoded = Encoded {
                seq,
                timestamp_ms: sample.timestamp_ms,
                body: Body::of(&sample),
            };
            let mut bytes = Vec::new();
            encoded.encode(&mut bytes);
            assert_eq!(bytes.len(), encoded.encoded_len(), "seq {seq}");
            let expected = reference(seq, &sample);
            assert_eq!(
                pb::AgentMessage::decode(bytes.as_slice()).unwrap(),
                expected,
                "seq {seq}"
            );
            // prost writes fields in number order, so even the bytes are the same.
            assert_eq!(bytes, expected.encode_to_vec(), "seq {seq}");
        }
    }

    #[test]
    fn reports_number_and_stamp_each_and_renew_their_sample() {
        let mut rng = SmallRng::seed_from_u64(5);
        let start = std::time::Instant::now();
        let mut reports = Reports::new(Duration::from_secs(3600), RENEW_AFTER, &mut rng);
        let decode = |e: &Encoded| {
            let mut bytes = Vec::new();
            e.encode(&mut bytes);
            match pb::AgentMessage::decode(bytes.as_slice()).unwrap().kind {
                Some(pb::agent_message::Kind::Report(r)) => r,
                other => panic!("not a report: {other:?}"),
            }
        };
        let before = now_ms();
        let all: Vec<pb::Report> = (1..=u64::from(RENEW_AFTER) + 1)
            .map(|seq| decode(&reports.next(seq, start, &mut rng)))
            .collect();
        for (seq, r) in (1..).zip(&all) {
            assert_eq!(r.seq, seq);
            assert!(r.timestamp_ms >= before && r.timestamp_ms <= now_ms());
        }
        let figures = |r: &pb::Report| (r.cpu, r.memory, r.net.clone());
        // One sample for RENEW_AFTER reports, then a new one.
        let first = figures(&all[0]);
        assert!(
            all[..RENEW_AFTER as usize]
                .iter()
                .all(|r| figures(r) == first)
        );
        assert_ne!(figures(&all[RENEW_AFTER as usize]), first);
        // A new one too once an interval has passed.
        let mut reports = Reports::new(Duration::from_millis(10), RENEW_AFTER, &mut rng);
        let now = std::time::Instant::now();
        let a = decode(&reports.next(1, now, &mut rng));
        let b = decode(&reports.next(2, now + Duration::from_millis(10), &mut rng));
        assert_ne!(figures(&a), figures(&b));
        // At a rate, one for each report.
        let mut reports = Reports::new(Duration::from_secs(3600), 1, &mut rng);
        let a = decode(&reports.next(1, now, &mut rng));
        let b = decode(&reports.next(2, now, &mut rng));
        assert_ne!(figures(&a), figures(&b));
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
