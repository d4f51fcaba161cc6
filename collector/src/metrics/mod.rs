//! `/metrics`: the fleet and the collector's own counters in the Prometheus text
//! exposition format 0.0.4, rendered from a fresh fleet snapshot at every scrape.
//!
//! Why not OpenMetrics (what `prometheus-client` writes): an OpenMetrics counter is
//! declared as `# TYPE foo counter` with samples named `foo_total`, and `promtool
//! check metrics` (Debian 12's 2.42, which reads the classic text format) rejects that
//! as a sample without HELP. The classic format is what promtool checks and what every
//! Prometheus server scrapes, so the collector writes it, with a small encoder here.
//!
//! - `encoder`: the text format writer.
//! - `vm`: per-VM families; `requests`: the web servers'; `collector`: the ingest
//!   edge's; `resize`: the resize engine's; `rules`: each member's rung and rule
//!   readings; `totals`: counters integrated from the
//!   reports and filesystem space; `process`: build info and the collector process.

mod collector;
mod encoder;
mod ha;
mod process;
mod requests;
mod resize;
mod rules;
mod totals;
mod vm;

use std::time::SystemTime;

use crate::engine::EngineStats;
use crate::fleet::{Fleet, VmSummary};
use crate::ha::Leadership;
use crate::ingest::IngestStats;

use encoder::Exposition;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the collector's own families read besides the VMs' summaries. Each part is
/// shared with the collector's other threads: the engine's counters and group status,
/// who leads, and (for the rule readings of group members) the fleet's VMs.
#[derive(Clone, Copy)]
pub struct Collector<'a> {
    /// The fleet (group members' windows, for the rule families).
    pub fleet: &'a Fleet,
    /// Ingest's counters.
    pub stats: &'a IngestStats,
    /// The resize engine's counters and group status.
    pub engine: &'a EngineStats,
    /// Who leads (always this collector without `[ha]`).
    pub leadership: &'a Leadership,
}

/// Renders every metric at `now`, in one piece (tests and benchmarks; a scrape renders
/// the parts apart, in this order: [`render_vms_to`], [`render_collector_to`],
/// [`render_process_to`]).
pub fn render(collector: &Collector<'_>, now: SystemTime) -> String {
    let vms = collector.fleet.snapshot(now);
    let mut e = Exposition::default();
    write_vms(&mut e, &vms);
    write_collector(&mut e, collector, vms.len(), now);
    write_process(&mut e);
    e.out
}

/// The families of `vms` (the fleet's snapshot, [`Fleet::snapshot`]), written to `sink`
/// in pieces as it goes (e.g. straight into a gzip encoder): the whole text is never
/// held. Takes none of the collector's locks: it reads only `vms`.
pub fn render_vms_to(sink: &mut dyn std::io::Write, vms: &[VmSummary]) -> std::io::Result<()> {
    let mut e = Exposition::to(sink);
    write_vms(&mut e, vms);
    e.finish()
}

/// The collector's own families at `now` (ingest, resizes, leadership, each group
/// member's rung and rules), for a fleet of `vm_count` VMs. They take the locks of
/// what they read; their text is small next to the VMs' (unless groups are large), and
/// follows it in a scrape.
pub fn render_collector_to(
    sink: &mut dyn std::io::Write,
    collector: &Collector<'_>,
    vm_count: usize,
    now: SystemTime,
) -> std::io::Result<()> {
    let mut e = Exposition::to(sink);
    write_collector(&mut e, collector, vm_count, now);
    e.finish()
}

/// The `process_*` families, read from `/proc/self`. Takes none of the collector's
/// locks; they end a scrape.
pub fn render_process_to(sink: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut e = Exposition::to(sink);
    write_process(&mut e);
    e.finish()
}

fn write_vms(e: &mut Exposition<'_>, vms: &[VmSummary]) {
    vm::vm_metrics(e, vms);
    requests::request_metrics(e, vms);
    totals::filesystem_gauges(e, vms);
    vm::report_counters(e, vms);
    totals::integrated_counters(e, vms);
}

fn write_collector(e: &mut Exposition<'_>, c: &Collector<'_>, vm_count: usize, now: SystemTime) {
    collector::collector_metrics(e, c.stats, vm_count);
    resize::resize_metrics(e, c.engine);
    ha::ha_metrics(e, c.leadership);
    rules::rule_metrics(e, c.engine, c.fleet, now);
}

fn write_process(e: &mut Exposition<'_>) {
    process::process_metrics(e, &process::ProcessStats::read());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fleet::{Latency, SourceReport};
    use crate::ingest::Reason;

    /// A fleet of several VMs in two groups plus an ungrouped one: with and without
    /// PSI, one configured VM that never reported, a hostname that needs escaping.
    pub(crate) fn busy_fleet(now: SystemTime) -> (Fleet, IngestStats) {
        use crate::config::UnknownVms;
        use crate::fleet::{
            CpuShares, FleetSettings, Hello, LoadAverage, Memory, Pressure, PressureLine, Report,
            RunKey, VmSize,
        };
        use std::time::Duration;

        let fleet = Fleet::new(FleetSettings {
            stale_after: Duration::from_secs(20),
            forget_after: Duration::from_secs(86_400),
            unknown_vms: UnknownVms::Ungrouped,
            max_vms: 100,
            histories: Default::default(),
            groups: vec![
                (
                    "web".into(),
                    vec!["web-1".into(), "web-2".into(), "web-3".into()],
                ),
                ("db".into(), vec!["db-1".into()]),
            ],
        });
        for (i, vm) in ["web-1", "web-2", "db-1", "cache-1"].iter().enumerate() {
            let hello = Hello {
                vm_id: vm.to_string(),
                hostname: format!("{vm} \"the\" \\box\\"),
                agent_version: "0.1.0".into(),
                run: RunKey {
                    boot_id: "boot".into(),
                    run_id: i as u64,
                },
                labels: Default::default(),
                size: Some(VmSize {
                    vcpus: 2,
                    memory_bytes: 4 << 30,
                    // db-1 was given 2 CPUs and 1 GiB more and left them offline.
                    offline_cpus: if *vm == "db-1" { 2 } else { 0 },
                    offline_memory_bytes: if *vm == "db-1" { 1 << 30 } else { 0 },
                }),
                interval: Some(Duration::from_secs(5)),
            };
            let session = fleet.hello(&hello, now).unwrap();
            for seq in 1..=3u64 {
                let line = PressureLine {
                    avg10: 3.5,
                    ..Default::default()
                };
                let report = Report {
                    seq: seq + u64::from(i == 1) * seq, // web-2 skips: a gap
                    timestamp: now,
                    interval: Duration::from_secs(5),
                    size: hello.size,
                    cpu: Some(CpuShares {
                        utilization: 0.25 * (i + 1) as f64,
                        user: 0.2,
                        idle: 0.79,
                        steal: 0.01,
                        ..Default::default()
                    }),
                    cores: vec![],
                    load: Some(LoadAverage {
                        one: 0.5,
                        five: 0.4,
                        fifteen: 0.3,
                    }),
                    memory: Some(Memory {
                        total_bytes: 4 << 30,
                        available_bytes: 1 << 30,
                        swap_total_bytes: 1 << 30,
                        swap_free_bytes: 1 << 29,
                    }),
                    pressure: (i % 2 == 0).then_some(Pressure {
                        cpu: Some(crate::fleet::PressureResource {
                            some: Some(line),
                            full: None,
                        }),
                        memory: Some(crate::fleet::PressureResource {
                            some: Some(line),
                            full: Some(line),
                        }),
                        io: None,
                    }),
                    net: vec![crate::fleet::NetInterface {
                        name: "eth0".into(),
                        rx_bytes_per_second: 1000.0,
                        tx_bytes_per_second: 500.0,
                        rx_packets_per_second: 10.0,
                        tx_packets_per_second: 5.0,
                        rx_errors: 1,
                        tx_errors: 0,
                    }],
                    disks: vec![crate::fleet::DiskIo {
                        name: "vda".into(),
                        read_bytes_per_second: 4096.0,
                        write_bytes_per_second: 8192.0,
                        busy_ratio: 0.1,
                        reads_per_second: Some(2.0),
                        writes_per_second: Some(4.0),
                    }],
                    filesystems: vec![
                        crate::fleet::Filesystem {
                            mount_point: "/".into(),
                            fs_type: "ext4".into(),
                            total_bytes: 10 << 30,
                            available_bytes: 4 << 30,
                            device: "/dev/vda1".into(),
                            free_bytes: Some(5 << 30),
                            files: Some(655_360),
                            files_free: Some(600_000),
                        },
                        // From an older agent: no free space, inodes or device.
                        crate::fleet::Filesystem {
                            mount_point: "/srv".into(),
                            fs_type: "xfs".into(),
                            total_bytes: 1 << 30,
                            available_bytes: 1 << 29,
                            device: String::new(),
                            free_bytes: None,
                            files: None,
                            files_free: None,
                        },
                    ],
                    dropped: 0,
                    agent: crate::fleet::AgentHealth {
                        buffered: 4 - seq,
                        reconnects: 1,
                    },
                    sources: if i == 0 { web_sources() } else { vec![] },
                };
                session.apply(report, now);
            }
        }
        let stats = IngestStats::default();
        stats.reject(Reason::Oversized);
        stats
            .reports
            .fetch_add(12, std::sync::atomic::Ordering::Relaxed);
        (fleet, stats)
    }

    fn web_sources() -> Vec<SourceReport> {
        use crate::fleet::{PhpFpm, SourceKind, StatusClasses};
        let source = |name: &str, kind| SourceReport {
            name: name.into(),
            kind,
            counted_by: None,
            up: true,
            down_total: 0,
            interval: std::time::Duration::from_secs(5),
            requests: 0,
            requests_per_second: None,
            statuses: None,
            latency: None,
            busy: None,
            php_fpm: None,
        };
        vec![
            SourceReport {
                requests: 500,
                requests_per_second: Some(100.0),
                statuses: Some(StatusClasses {
                    success: 490,
                    server_error: 10,
                    ..Default::default()
                }),
                latency: Some(Latency {
                    count: 500,
                    p50_seconds: 0.01,
                    p95_seconds: 0.2,
                    p99_seconds: 0.5,
                }),
                ..source("shop-log", SourceKind::AccessLog)
            },
            SourceReport {
                requests: 250,
                requests_per_second: Some(50.0),
                busy: Some(3),
                php_fpm: Some(PhpFpm {
                    listen_queue: 4,
                    ..Default::default()
                }),
                ..source("fpm", SourceKind::PhpFpm)
            },
            SourceReport {
                up: false,
                down_total: 2,
                ..source("nginx", SourceKind::Nginx)
            },
        ]
    }

    #[test]
    fn promtool_accepts_a_scrape_of_several_vms() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let (fleet, stats) = busy_fleet(now);
        let text = render(
            &Collector {
                fleet: &fleet,
                stats: &stats,
                engine: &EngineStats::default(),
                leadership: &Leadership::Single,
            },
            now,
        );
        // The contract's names are all there.
        for needle in [
            "rally_vm_up{vm=\"web-1\",group=\"web\"} 1",
            "rally_vm_up{vm=\"web-3\",group=\"web\"} 0",
            "rally_vm_up{vm=\"cache-1\",group=\"ungrouped\"} 1",
            "rally_vm_cpu_utilization_ratio{vm=\"db-1\",group=\"db\"} 0.75",
            "rally_vm_cpu_steal_ratio{vm=\"web-1\",group=\"web\"} 0.01",
            "rally_vm_vcpus{vm=\"web-1\",group=\"web\"} 2",
            "rally_vm_memory_total_bytes{vm=\"web-1\",group=\"web\"} 4294967296",
            "rally_vm_offline_cpus{vm=\"web-1\",group=\"web\"} 0",
            "rally_vm_offline_cpus{vm=\"db-1\",group=\"db\"} 2",
            "rally_vm_offline_memory_bytes{vm=\"db-1\",group=\"db\"} 1073741824",
            "rally_vm_memory_available_bytes{vm=\"web-1\",group=\"web\"} 1073741824",
            "rally_vm_last_report_timestamp_seconds{vm=\"web-1\",group=\"web\"} 1700000000",
            "rally_vm_reports_lost_total{vm=\"web-2\",group=\"web\"} 2",
            "rally_vm_pressure_some_ratio{vm=\"web-1\",group=\"web\",resource=\"cpu\"} 0.035",
            "hostname=\"web-1 \\\"the\\\" \\\\box\\\\\"",
            "rally_collector_reports_total 12",
            "rally_collector_reports_rejected_total{reason=\"oversized\"} 1",
            "rally_collector_reports_rejected_total{reason=\"no_hello\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        for needle in [
            "rally_vm_requests_per_second{vm=\"web-1\",group=\"web\"} 150",
            "rally_vm_requests_per_second_per_vcpu{vm=\"web-1\",group=\"web\"} 75",
            "rally_vm_server_error_ratio{vm=\"web-1\",group=\"web\"} 0.02",
            "rally_vm_php_fpm_listen_queue{vm=\"web-1\",group=\"web\"} 4",
            "rally_vm_source_up{vm=\"web-1\",group=\"web\",source=\"nginx\",kind=\"nginx\"} 0",
            "rally_vm_source_down_total{vm=\"web-1\",group=\"web\",source=\"nginx\",kind=\"nginx\"} 2",
            "rally_vm_source_requests_per_second{vm=\"web-1\",group=\"web\",source=\"shop-log\",kind=\"access_log\"} 100",
            "rally_vm_source_responses_per_second{vm=\"web-1\",group=\"web\",source=\"shop-log\",class=\"5xx\"} 2",
            "rally_vm_source_request_latency_seconds{vm=\"web-1\",group=\"web\",source=\"shop-log\",percentile=\"95\"} 0.2",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // Counters integrated over three 5 s reports.
        for needle in [
            "rally_vm_network_receive_bytes_total{vm=\"web-1\",group=\"web\",device=\"eth0\"} 15000",
            "rally_vm_network_transmit_packets_total{vm=\"web-1\",group=\"web\",device=\"eth0\"} 75",
            "rally_vm_network_receive_errors_total{vm=\"web-1\",group=\"web\",device=\"eth0\"} 3",
            "rally_vm_disk_written_bytes_total{vm=\"db-1\",group=\"db\",device=\"vda\"} 122880",
            "rally_vm_disk_io_time_seconds_total{vm=\"db-1\",group=\"db\",device=\"vda\"} 1.5",
            // 0.2 × 5 s × 2 vCPUs × 3 reports.
            "rally_vm_cpu_seconds_total{vm=\"web-1\",group=\"web\",mode=\"user\"} 6",
            "rally_vm_requests_total{vm=\"web-1\",group=\"web\",source=\"shop-log\",status_class=\"5xx\"} 30",
            "rally_vm_requests_total{vm=\"web-1\",group=\"web\",source=\"fpm\",status_class=\"unknown\"} 750",
            "rally_vm_filesystem_avail_bytes{vm=\"web-1\",group=\"web\",device=\"/dev/vda1\",mountpoint=\"/\",fstype=\"ext4\"} 4294967296",
            "rally_vm_filesystem_free_bytes{vm=\"web-1\",group=\"web\",device=\"/dev/vda1\",mountpoint=\"/\",fstype=\"ext4\"} 5368709120",
            "rally_vm_filesystem_files_free{vm=\"web-1\",group=\"web\",device=\"/dev/vda1\",mountpoint=\"/\",fstype=\"ext4\"} 600000",
            "rally_vm_filesystem_size_bytes{vm=\"web-1\",group=\"web\",device=\"\",mountpoint=\"/srv\",fstype=\"xfs\"} 1073741824",
            // 2 and 4 per second × 5 s × 3 reports.
            "rally_vm_disk_reads_completed_total{vm=\"db-1\",group=\"db\",device=\"vda\"} 30",
            "rally_vm_disk_writes_completed_total{vm=\"db-1\",group=\"db\",device=\"vda\"} 60",
            "rally_build_info{version=\"",
            "rally_vm_agent_buffered_reports{vm=\"web-1\",group=\"web\"} 1",
            "rally_vm_agent_reconnects_total{vm=\"web-1\",group=\"web\"} 1",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // A source that is down counts nothing.
        assert!(!text.contains("source=\"nginx\",status_class"));
        // A VM without sources has no request figures (absent, not 0).
        assert!(!text.contains("rally_vm_requests_per_second{vm=\"db-1\""));
        // A figure an older agent does not send is absent, not 0.
        assert!(!text.contains("rally_vm_filesystem_free_bytes{vm=\"web-1\",group=\"web\",device=\"\",mountpoint=\"/srv\""));

        // promtool must be installed: a missing promtool fails the test.
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package `prometheus`) must be installed for this test");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics failed:\n{}{}\n---\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool warned"
        );
    }
}
