//! The transport edge: domain samples to `rally.v1` messages and back to bytes.
//!
//! Nothing else in the agent knows the generated types' shape, so a proto change
//! touches this file only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use prost::bytes::Bytes;
use rally_proto::v1 as pb;

use crate::buffer::Entry;
use crate::sample::{CpuShares, FilesystemSpace, PressureLine, PressureResource, Sample, VmSize};
use crate::source::SourceSample;

/// Who the agent is, for the stream's `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The VM's id in the fleet.
    pub vm_id: String,
    /// The kernel's hostname.
    pub hostname: String,
    /// The kernel boot id.
    pub boot_id: String,
    /// Chosen at random when the process starts.
    pub run_id: u64,
    /// Labels from the configuration.
    pub labels: BTreeMap<String, String>,
}

/// The `Hello` that opens every stream.
pub fn hello(identity: &Identity, size: Option<VmSize>, interval: Duration) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            vm_id: identity.vm_id.clone(),
            hostname: identity.hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: identity.boot_id.clone(),
            run_id: identity.run_id,
            labels: identity
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            size: size.map(vm_size),
            interval_ms: millis(interval),
        })),
    }
}

/// Encodes samples as `Report`s for the buffers, keeping the filesystems' encoding:
/// they are measured once a minute and the same in every report in between.
///
/// A protobuf parser appends a repeated field's elements in the order they come,
/// wherever they are in the message, so the report's other fields followed by the
/// kept bytes (a `Report` holding only `filesystems`) is the same message.
#[derive(Debug, Default)]
pub struct ReportEncoder {
    filesystems: Option<(Arc<[FilesystemSpace]>, Vec<u8>)>,
}

impl ReportEncoder {
    /// `sample` as the `Report` with sequence number `seq`, encoded.
    pub fn encode(&mut self, seq: u64, sample: &Sample) -> Bytes {
        let filesystems = match &self.filesystems {
            Some((list, bytes)) if Arc::ptr_eq(list, &sample.filesystems) => bytes,
            _ => {
                let only = pb::Report {
                    filesystems: filesystems(&sample.filesystems),
                    ..pb::Report::default()
                };
                let kept = (Arc::clone(&sample.filesystems), only.encode_to_vec());
                &self.filesystems.insert(kept).1
            }
        };
        let rest = report_without_filesystems(seq, sample);
        let mut out = Vec::with_capacity(rest.encoded_len() + filesystems.len());
        rest.encode_raw(&mut out);
        out.extend_from_slice(filesystems);
        Bytes::from(out)
    }
}

/// The agent's link to one collector at sending time (the report's health fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkHealth {
    /// Reports in the buffer, the one being sent included.
    pub buffered: u64,
    /// Streams tried after a failed one since the agent started.
    pub reconnects: u64,
}

/// `Report.dropped`, `Report.agent_buffered` and `Report.agent_reconnects`: the fields
/// [`report_message`] appends (see `proto/rally/v1/ingest.proto`).
const DROPPED: u32 = 13;
const AGENT_BUFFERED: u32 = 15;
const AGENT_RECONNECTS: u32 = 16;
/// `AgentMessage.report`.
const AGENT_MESSAGE_REPORT: u32 = 2;

/// A buffered report as the encoded `AgentMessage` to send, with its drop count and
/// the link's health filled in.
///
/// The stored `Report` is not decoded and encoded again (that was most of the
/// agent's own CPU per report after the `/proc` reads): protobuf parsers merge a
/// message's fields in order and the last value of a scalar field wins, so appending
/// the three fields to the stored bytes, which never carry them, gives the same
/// message. Zeros are left out, as a protobuf encoder does.
pub fn report_message(entry: &Entry, health: LinkHealth) -> Bytes {
    let fields = [
        (DROPPED, entry.dropped_before),
        (AGENT_BUFFERED, health.buffered),
        (AGENT_RECONNECTS, health.reconnects),
    ];
    let appended: usize = fields
        .iter()
        .filter(|(_, value)| *value != 0)
        .map(|&(field, value)| {
            prost::encoding::key_len(field) + prost::encoding::encoded_len_varint(value)
        })
        .sum();
    let len = entry.report.len() + appended;
    let mut out = Vec::with_capacity(
        prost::encoding::key_len(AGENT_MESSAGE_REPORT)
            + prost::encoding::encoded_len_varint(len as u64)
            + len,
    );
    prost::encoding::encode_key(
        AGENT_MESSAGE_REPORT,
        prost::encoding::WireType::LengthDelimited,
        &mut out,
    );
    prost::encoding::encode_varint(len as u64, &mut out);
    out.extend_from_slice(&entry.report);
    for (field, value) in fields {
        if value != 0 {
            prost::encoding::encode_key(field, prost::encoding::WireType::Varint, &mut out);
            prost::encoding::encode_varint(value, &mut out);
        }
    }
    Bytes::from(out)
}

/// A message encoded for the stream (`Hello`, which is sent once per stream).
pub fn encode_message(message: &pb::AgentMessage) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

/// A duration in whole milliseconds, saturated to the field's range.
pub fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A sample as the `Report` with sequence number `seq` (and no drops).
pub fn report(seq: u64, s: &Sample) -> pb::Report {
    pb::Report {
        filesystems: filesystems(&s.filesystems),
        ..report_without_filesystems(seq, s)
    }
}

/// [`report`] but for its filesystems.
fn report_without_filesystems(seq: u64, s: &Sample) -> pb::Report {
    pb::Report {
        seq,
        timestamp_ms: s.timestamp_ms,
        interval_ms: s.interval_ms,
        size: s.size.map(vm_size),
        cpu: s.cpu.as_ref().map(|c| cpu_times(0, c)),
        cores: s.cores.iter().map(|c| cpu_times(c.id, &c.shares)).collect(),
        load: s.load.map(|l| pb::LoadAverage {
            one: l.one,
            five: l.five,
            fifteen: l.fifteen,
        }),
        memory: s.memory.map(|m| pb::Memory {
            total_bytes: m.total_bytes,
            available_bytes: m.available_bytes,
            swap_total_bytes: m.swap_total_bytes,
            swap_free_bytes: m.swap_free_bytes,
        }),
        pressure: s.pressure.map(|p| pb::Pressure {
            cpu: p.cpu.map(pressure_resource),
            memory: p.memory.map(pressure_resource),
            io: p.io.map(pressure_resource),
        }),
        net: s
            .net
            .iter()
            .map(|n| pb::NetInterface {
                name: n.name.clone(),
                rx_bytes_per_second: n.rx_bytes_per_second,
                tx_bytes_per_second: n.tx_bytes_per_second,
                rx_packets_per_second: n.rx_packets_per_second,
                tx_packets_per_second: n.tx_packets_per_second,
                rx_errors: n.rx_errors,
                tx_errors: n.tx_errors,
            })
            .collect(),
        disks: s
            .disks
            .iter()
            .map(|d| pb::DiskIo {
                name: d.name.clone(),
                read_bytes_per_second: d.read_bytes_per_second,
                write_bytes_per_second: d.write_bytes_per_second,
                busy_ratio: d.busy_ratio,
                reads_per_second: Some(d.reads_per_second),
                writes_per_second: Some(d.writes_per_second),
            })
            .collect(),
        filesystems: Vec::new(),
        dropped: 0,
        sources: s.sources.iter().map(source_report).collect(),
        // Filled at sending, as `dropped` is: they describe the link, not the sample.
        agent_buffered: 0,
        agent_reconnects: 0,
    }
}

fn filesystems(list: &[FilesystemSpace]) -> Vec<pb::Filesystem> {
    list.iter()
        .map(|f| pb::Filesystem {
            mount_point: f.mount_point.clone(),
            fs_type: f.fs_type.clone(),
            total_bytes: f.total_bytes,
            available_bytes: f.available_bytes,
            free_bytes: Some(f.free_bytes),
            files: Some(f.files),
            files_free: Some(f.files_free),
            device: f.device.clone(),
        })
        .collect()
}

fn source_report(s: &SourceSample) -> pb::SourceReport {
    pb::SourceReport {
        name: s.name.clone(),
        kind: s.kind.name().to_owned(),
        counted_by: s.counted_by.clone().unwrap_or_default(),
        up: s.up,
        error: s.error.clone().unwrap_or_default(),
        down_total: s.down_total,
        interval_ms: s.interval_ms,
        requests: s.requests,
        requests_per_second: s.requests_per_second,
        statuses: s.statuses.map(|c| pb::StatusClasses {
            informational: c.informational,
            success: c.success,
            redirection: c.redirection,
            client_error: c.client_error,
            server_error: c.server_error,
        }),
        latency: s.latency.map(|l| pb::Latency {
            count: l.count,
            p50_seconds: l.p50_seconds,
            p95_seconds: l.p95_seconds,
            p99_seconds: l.p99_seconds,
        }),
        nginx: s.nginx.map(|n| pb::NginxStatus {
            active: n.active,
            reading: n.reading,
            writing: n.writing,
            waiting: n.waiting,
            accepted_per_second: n.accepted_per_second,
            handled_per_second: n.handled_per_second,
        }),
        apache: s.apache.as_ref().map(|a| pb::ApacheStatus {
            busy_workers: a.busy_workers,
            idle_workers: a.idle_workers,
            scoreboard: a
                .scoreboard
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }),
        php_fpm: s.php_fpm.map(|p| pb::PhpFpmStatus {
            listen_queue: p.listen_queue,
            max_listen_queue: p.max_listen_queue,
            listen_queue_len: p.listen_queue_len,
            idle_processes: p.idle_processes,
            active_processes: p.active_processes,
            total_processes: p.total_processes,
            max_active_processes: p.max_active_processes,
            max_children_reached: p.max_children_reached,
            slow_requests: p.slow_requests,
        }),
    }
}

fn vm_size(s: VmSize) -> pb::VmSize {
    pb::VmSize {
        vcpus: s.vcpus,
        memory_bytes: s.memory_bytes,
        offline_cpus: s.offline_cpus,
        offline_memory_blocks: s.offline_memory_blocks,
        memory_block_bytes: s.memory_block_bytes,
    }
}

fn cpu_times(id: u32, c: &CpuShares) -> pb::CpuTimes {
    pb::CpuTimes {
        user: c.user,
        nice: c.nice,
        system: c.system,
        irq: c.irq,
        softirq: c.softirq,
        iowait: c.iowait,
        steal: c.steal,
        idle: c.idle,
        utilization: c.utilization,
        id,
    }
}

fn pressure_resource(r: PressureResource) -> pb::PressureResource {
    let line = |l: PressureLine| pb::PressureLine {
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
        total_us: l.total_us,
    };
    pb::PressureResource {
        some: Some(line(r.some)),
        full: r.full.map(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{CoreShares, Memory, Pressure};

    fn shares(utilization: f64) -> CpuShares {
        CpuShares {
            user: utilization,
            nice: 0.0,
            system: 0.0,
            irq: 0.0,
            softirq: 0.0,
            iowait: 0.0,
            steal: 0.0,
            idle: 1.0 - utilization,
            utilization,
        }
    }

    fn sample() -> Sample {
        Sample {
            timestamp_ms: 1_700_000_000_000,
            interval_ms: 5000,
            size: Some(VmSize {
                vcpus: 4,
                memory_bytes: 8 << 30,
                offline_cpus: 2,
                offline_memory_blocks: 8,
                memory_block_bytes: 128 << 20,
            }),
            cpu: Some(shares(0.5)),
            cores: vec![
                CoreShares {
                    id: 0,
                    shares: shares(0.25),
                },
                CoreShares {
                    id: 3,
                    shares: shares(0.75),
                },
            ],
            load: None,
            memory: Some(Memory {
                total_bytes: 8 << 30,
                available_bytes: 4 << 30,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            }),
            pressure: Some(Pressure {
                cpu: Some(PressureResource {
                    some: PressureLine {
                        avg10: 1.5,
                        avg60: 1.0,
                        avg300: 0.5,
                        total_us: 42,
                    },
                    full: None,
                }),
                memory: None,
                io: None,
            }),
            net: Vec::new(),
            disks: Vec::new(),
            filesystems: Arc::default(),
            sources: Vec::new(),
        }
    }

    /// The message as the collector decodes it.
    fn decoded(bytes: Bytes) -> pb::Report {
        match pb::AgentMessage::decode(bytes).unwrap().kind {
            Some(pb::agent_message::Kind::Report(r)) => r,
            other => panic!("not a report: {other:?}"),
        }
    }

    fn filesystem(mount_point: &str, available_bytes: u64) -> FilesystemSpace {
        FilesystemSpace {
            mount_point: mount_point.into(),
            fs_type: "ext4".into(),
            device: "/dev/vda1".into(),
            total_bytes: 40 << 30,
            available_bytes,
            free_bytes: available_bytes + (1 << 30),
            files: 2_621_440,
            files_free: 2_000_000,
        }
    }

    #[test]
    fn encoded_reports_are_the_report_whether_the_filesystems_are_kept_or_new() {
        let mut encoder = ReportEncoder::default();
        let mut s = sample();
        let decode = |bytes: Bytes| pb::Report::decode(bytes).unwrap();
        // None yet, then a list, the same list again (kept), and a new one whose
        // figures changed (encoded anew).
        let lists: [Arc<[FilesystemSpace]>; 2] = [
            Arc::from([filesystem("/", 10 << 30), filesystem("/boot", 300 << 20)]),
            Arc::from([filesystem("/", 9 << 30), filesystem("/boot", 300 << 20)]),
        ];
        let steps = [
            Arc::default(),
            Arc::clone(&lists[0]),
            Arc::clone(&lists[0]),
            Arc::clone(&lists[1]),
        ];
        for (seq, filesystems) in (1..).zip(steps) {
            s.filesystems = filesystems;
            s.timestamp_ms += 1000;
            let expected = report(seq, &s);
            assert_eq!(expected.filesystems.len(), s.filesystems.len());
            assert_eq!(decode(encoder.encode(seq, &s)), expected, "report {seq}");
        }
    }

    #[test]
    fn report_round_trips_through_the_buffer_with_its_drop_count() {
        let entry = Entry {
            seq: 7,
            dropped_before: 3,
            report: ReportEncoder::default().encode(7, &sample()),
        };
        let r = decoded(report_message(
            &entry,
            LinkHealth {
                buffered: 7,
                reconnects: 2,
            },
        ));
        assert_eq!(r.seq, 7);
        assert_eq!(r.dropped, 3);
        assert_eq!((r.agent_buffered, r.agent_reconnects), (7, 2));
        assert_eq!(r.interval_ms, 5000);
        assert_eq!(
            r.size,
            Some(pb::VmSize {
                vcpus: 4,
                memory_bytes: 8 << 30,
                offline_cpus: 2,
                offline_memory_blocks: 8,
                memory_block_bytes: 128 << 20,
            })
        );
        assert_eq!(r.cpu.unwrap().utilization, 0.5);
        assert_eq!(
            r.cores
                .iter()
                .map(|c| (c.id, c.utilization))
                .collect::<Vec<_>>(),
            vec![(0, 0.25), (3, 0.75)]
        );
        assert_eq!(r.load, None, "absent stays absent");
        let cpu_pressure = r.pressure.unwrap().cpu.unwrap();
        assert_eq!(cpu_pressure.full, None);
        assert_eq!(cpu_pressure.some.unwrap().total_us, 42);
    }

    #[test]
    fn first_report_has_no_cpu() {
        let mut s = sample();
        s.cpu = None;
        s.cores.clear();
        s.interval_ms = 0;
        let r = report(1, &s);
        assert_eq!(r.cpu, None);
        assert!(r.cores.is_empty());
    }

    #[test]
    fn hello_carries_identity_size_and_interval() {
        let identity = Identity {
            vm_id: "web-1".into(),
            hostname: "web-1.example".into(),
            boot_id: "b".into(),
            run_id: 99,
            labels: BTreeMap::from([("role".into(), "web".into())]),
        };
        let Some(pb::agent_message::Kind::Hello(h)) =
            hello(&identity, sample().size, Duration::from_secs(5)).kind
        else {
            panic!("not a hello");
        };
        assert_eq!(h.vm_id, "web-1");
        assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(h.run_id, 99);
        assert_eq!(h.interval_ms, 5000);
        assert_eq!(h.labels.get("role").map(String::as_str), Some("web"));
        assert_eq!(h.size.unwrap().vcpus, 4);
    }

    #[test]
    fn a_source_counted_by_another_says_so_and_one_that_counts_sends_empty() {
        let source = |name: &str, counted_by: Option<&str>| SourceSample {
            name: name.into(),
            kind: crate::source::Kind::AccessLog,
            counted_by: counted_by.map(str::to_owned),
            up: true,
            error: None,
            down_total: 0,
            interval_ms: 5000,
            requests: 500,
            requests_per_second: Some(100.0),
            statuses: None,
            latency: None,
            nginx: None,
            apache: None,
            php_fpm: None,
        };
        let mut s = sample();
        s.sources = vec![source("nginx", None), source("log", Some("nginx"))];
        let r = report(1, &s);
        let counted_by: Vec<_> = r.sources.iter().map(|s| s.counted_by.as_str()).collect();
        assert_eq!(counted_by, ["", "nginx"]);
    }

    #[test]
    fn appended_fields_give_the_bytes_an_encoder_would() {
        for (dropped, buffered, reconnects) in [
            (0, 0, 0),
            (0, 1, 0),
            (5, 0, 0),
            (1, 300, 0),
            (u64::MAX, 1 << 40, 7),
        ] {
            let entry = Entry {
                seq: 9,
                dropped_before: dropped,
                report: ReportEncoder::default().encode(9, &sample()),
            };
            let health = LinkHealth {
                buffered,
                reconnects,
            };
            let mut expected = report(9, &sample());
            expected.dropped = dropped;
            expected.agent_buffered = buffered;
            expected.agent_reconnects = reconnects;
            let bytes = report_message(&entry, health);
            assert_eq!(decoded(bytes.clone()), expected);
            // Same length as prost's own encoding (only the field order differs).
            let message = pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::Report(expected)),
            };
            assert_eq!(bytes.len(), message.encoded_len());
        }
    }
}
