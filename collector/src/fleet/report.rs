//! The collector's own types for what agents send, converted from `rally.v1` (and
//! checked) at the ingest edge, so that nothing past `ingest` sees protobuf.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// The size of a VM as the guest can use it, and what it was given but left offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct VmSize {
    /// Online CPUs.
    pub vcpus: u32,
    /// MemTotal, in bytes.
    pub memory_bytes: u64,
    /// CPUs present but offline (hot-added, not onlined).
    pub offline_cpus: u32,
    /// Memory present but offline (offline blocks × block size), in bytes.
    pub offline_memory_bytes: u64,
}

impl VmSize {
    /// Whether hot-added capacity stayed offline in the guest.
    pub fn has_offline_capacity(&self) -> bool {
        self.offline_cpus > 0 || self.offline_memory_bytes > 0
    }
}

/// Shares of an interval's CPU time, each in 0..1.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct CpuShares {
    /// In per-core shares, the core's id (N of `cpuN`); 0 for all cores together.
    pub id: u32,
    /// User time (without nice).
    pub user: f64,
    /// Niced user time.
    pub nice: f64,
    /// System time.
    pub system: f64,
    /// Hard interrupts.
    pub irq: f64,
    /// Soft interrupts.
    pub softirq: f64,
    /// Waiting for I/O (never busy).
    pub iowait: f64,
    /// Taken by the hypervisor (never busy).
    pub steal: f64,
    /// Idle.
    pub idle: f64,
    /// (user + nice + system + irq + softirq) / all time of the interval.
    pub utilization: f64,
}

/// Load averages.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LoadAverage {
    /// Over 1 minute.
    pub one: f64,
    /// Over 5 minutes.
    pub five: f64,
    /// Over 15 minutes.
    pub fifteen: f64,
}

/// Memory and swap, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Memory {
    /// MemTotal.
    pub total_bytes: u64,
    /// MemAvailable.
    pub available_bytes: u64,
    /// SwapTotal.
    pub swap_total_bytes: u64,
    /// SwapFree.
    pub swap_free_bytes: u64,
}

impl Memory {
    /// MemTotal − MemAvailable.
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.available_bytes)
    }

    /// Used / total, or `None` when the total is 0.
    pub fn used_ratio(&self) -> Option<f64> {
        (self.total_bytes > 0).then(|| self.used_bytes() as f64 / self.total_bytes as f64)
    }
}

/// One line of a PSI file.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PressureLine {
    /// Percent of wall time stalled over the last 10 s (0..100).
    pub avg10: f64,
    /// Over 60 s.
    pub avg60: f64,
    /// Over 300 s.
    pub avg300: f64,
    /// Total stall time since boot, in microseconds.
    pub total_us: u64,
}

/// One PSI file.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PressureResource {
    /// Some task stalled.
    pub some: Option<PressureLine>,
    /// All tasks stalled (absent for cpu before Linux 5.13).
    pub full: Option<PressureLine>,
}

/// Linux pressure stall information; a resource the kernel does not report is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Pressure {
    /// `/proc/pressure/cpu`.
    pub cpu: Option<PressureResource>,
    /// `/proc/pressure/memory`.
    pub memory: Option<PressureResource>,
    /// `/proc/pressure/io`.
    pub io: Option<PressureResource>,
}

/// Throughput of one network interface.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetInterface {
    /// Interface name.
    pub name: String,
    /// Received bytes per second.
    pub rx_bytes_per_second: f64,
    /// Sent bytes per second.
    pub tx_bytes_per_second: f64,
    /// Received packets per second.
    pub rx_packets_per_second: f64,
    /// Sent packets per second.
    pub tx_packets_per_second: f64,
    /// Receive errors plus drops during the interval.
    pub rx_errors: u64,
    /// Send errors plus drops during the interval.
    pub tx_errors: u64,
}

/// Throughput of one block device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskIo {
    /// Device name.
    pub name: String,
    /// Bytes read per second.
    pub read_bytes_per_second: f64,
    /// Bytes written per second.
    pub write_bytes_per_second: f64,
    /// Share of the interval the device was busy (0..1).
    pub busy_ratio: f64,
    /// Reads completed per second (`None` from agents that do not count them).
    pub reads_per_second: Option<f64>,
    /// Writes completed per second (`None` from agents that do not count them).
    pub writes_per_second: Option<f64>,
}

/// Space on one filesystem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filesystem {
    /// Where it is mounted.
    pub mount_point: String,
    /// Its type (`ext4`).
    pub fs_type: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// What is mounted (empty from older agents).
    pub device: String,
    /// Free bytes, root's reserve included (`None` from older agents).
    pub free_bytes: Option<u64>,
    /// Inodes in all (`None` from older agents).
    pub files: Option<u64>,
    /// Free inodes (`None` from older agents).
    pub files_free: Option<u64>,
}

/// One checked sample of a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Sequence number within the agent run (> 0).
    pub seq: u64,
    /// When the agent took the sample (the agent's clock).
    pub timestamp: SystemTime,
    /// The interval the shares and rates cover.
    pub interval: Duration,
    /// The VM's usable size at sampling time.
    pub size: Option<VmSize>,
    /// CPU shares, all cores together (absent in a run's first sample).
    pub cpu: Option<CpuShares>,
    /// CPU shares per core.
    pub cores: Vec<CpuShares>,
    /// Load averages.
    pub load: Option<LoadAverage>,
    /// Memory and swap.
    pub memory: Option<Memory>,
    /// PSI, absent on kernels without it.
    pub pressure: Option<Pressure>,
    /// Network interfaces.
    pub net: Vec<NetInterface>,
    /// Block devices.
    pub disks: Vec<DiskIo>,
    /// Filesystems.
    pub filesystems: Vec<Filesystem>,
    /// Reports the agent dropped from its full buffer just before this one.
    pub dropped: u64,
    /// Web-server request sources, at most [`MAX_SOURCES`], names unique.
    pub sources: Vec<SourceReport>,
    /// The agent's own health when it sent the report.
    pub agent: AgentHealth,
}

/// The agent's link to this collector, as a report carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AgentHealth {
    /// Reports in its buffer (not acknowledged, this one included) at sending.
    pub buffered: u64,
    /// Streams tried after a failed one since the agent run started.
    pub reconnects: u64,
}

/// The most sources one report may carry (each is a label value on `/metrics`).
pub const MAX_SOURCES: usize = 32;

impl Report {
    /// Requests per second summed over the sources that count for themselves (no
    /// `counted_by`) and have a rate this time; `None` when none has (no source, all
    /// down, or the first reading after agent start). A source counted by another is
    /// left out even when that other has no rate: its traffic is not added twice, and
    /// the sum never switches between two views of one server.
    pub fn requests_per_second(&self) -> Option<f64> {
        self.sources
            .iter()
            .filter(|s| s.counted_by.is_none())
            .filter_map(|s| s.requests_per_second)
            .reduce(|a, b| a + b)
    }

    /// 5xx responses over all responses of the interval, from the status classes of the
    /// sources with a rate this time. Each server's traffic is weighed once: a source
    /// counted by another adds its classes only when that other has none (nginx's
    /// `stub_status` has none, so its access log's classes stand for it). `None`
    /// without such a source or without responses.
    pub fn server_error_ratio(&self) -> Option<f64> {
        let classes = |s: &SourceReport| s.statuses.filter(|_| s.requests_per_second.is_some());
        let (errors, all) = self
            .sources
            .iter()
            .filter(|s| match &s.counted_by {
                None => true,
                Some(counter) => self
                    .sources
                    .iter()
                    .find(|c| &c.name == counter)
                    .and_then(classes)
                    .is_none(),
            })
            .filter_map(classes)
            .fold((0u64, 0u64), |(e, a), c| {
                (
                    e.saturating_add(c.server_error),
                    a.saturating_add(c.total()),
                )
            });
        (all > 0).then(|| errors as f64 / all as f64)
    }

    /// The highest p95 latency among the sources that measure it, in seconds (a
    /// maximum, so a server seen by two sources is not weighed twice).
    pub fn latency_p95_seconds(&self) -> Option<f64> {
        self.sources
            .iter()
            .filter_map(|s| s.latency.map(|l| l.p95_seconds))
            .reduce(f64::max)
    }

    /// Requests waiting in php-fpm listen queues, summed over php-fpm sources.
    pub fn php_fpm_listen_queue(&self) -> Option<f64> {
        self.sources
            .iter()
            .filter_map(|s| s.php_fpm.map(|p| p.listen_queue as f64))
            .reduce(|a, b| a + b)
    }
}

/// What a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// nginx `stub_status`.
    Nginx,
    /// Apache `mod_status`.
    Apache,
    /// php-fpm status.
    PhpFpm,
    /// A tailed access log.
    AccessLog,
    /// A Prometheus endpoint's counter.
    Prometheus,
}

impl SourceKind {
    /// Every kind.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::Nginx,
        SourceKind::Apache,
        SourceKind::PhpFpm,
        SourceKind::AccessLog,
        SourceKind::Prometheus,
    ];

    /// The wire and label name.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Nginx => "nginx",
            SourceKind::Apache => "apache",
            SourceKind::PhpFpm => "php_fpm",
            SourceKind::AccessLog => "access_log",
            SourceKind::Prometheus => "prometheus",
        }
    }
}

/// Requests by status class during an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StatusClasses {
    /// 1xx.
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirection: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx.
    pub server_error: u64,
}

impl StatusClasses {
    /// All classes together.
    pub fn total(&self) -> u64 {
        [
            self.informational,
            self.success,
            self.redirection,
            self.client_error,
            self.server_error,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// `(label, count)` per class, `1xx`..`5xx`.
    pub fn by_class(&self) -> [(&'static str, u64); 5] {
        [
            ("1xx", self.informational),
            ("2xx", self.success),
            ("3xx", self.redirection),
            ("4xx", self.client_error),
            ("5xx", self.server_error),
        ]
    }
}

/// Latency quantiles of an interval, in seconds (p50 ≤ p95 ≤ p99).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Requests the quantiles cover.
    pub count: u64,
    /// Median.
    pub p50_seconds: f64,
    /// 95th percentile.
    pub p95_seconds: f64,
    /// 99th percentile.
    pub p99_seconds: f64,
}

/// php-fpm pool figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PhpFpm {
    /// Requests waiting for a free worker.
    pub listen_queue: u64,
    /// Idle workers.
    pub idle_processes: u64,
    /// Busy workers.
    pub active_processes: u64,
    /// All workers.
    pub total_processes: u64,
    /// Times `pm.max_children` was hit during the interval.
    pub max_children_reached: u64,
    /// Slow requests during the interval.
    pub slow_requests: u64,
}

/// A duration as seconds, as the JSON API writes every duration.
fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One web-server source's figures over its interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    /// Its configured name (`[a-z0-9_-]`, unique in the report).
    pub name: String,
    /// What it reads.
    pub kind: SourceKind,
    /// Another source of the report, counting for itself, that already counts this
    /// one's requests; `None`: this source counts in the VM's request rate.
    pub counted_by: Option<String>,
    /// Whether the agent could read it this time.
    pub up: bool,
    /// Failed readings since the agent started.
    pub down_total: u64,
    /// The interval the figures cover (`interval_seconds` in JSON).
    #[serde(rename = "interval_seconds", serialize_with = "as_seconds")]
    pub interval: Duration,
    /// Requests during the interval.
    pub requests: u64,
    /// Requests per second (absent: no rate this time).
    pub requests_per_second: Option<f64>,
    /// Requests by status class (access logs).
    pub statuses: Option<StatusClasses>,
    /// Latency quantiles (access logs with a request time).
    pub latency: Option<Latency>,
    /// What is being served now: nginx connections reading or writing, Apache busy
    /// workers, php-fpm active processes.
    pub busy: Option<u64>,
    /// php-fpm pool figures.
    pub php_fpm: Option<PhpFpm>,
}

/// (boot id, run id): the agent run whose sequence numbers are de-duplicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunKey {
    /// The kernel boot id.
    pub boot_id: String,
    /// The agent process's random run id.
    pub run_id: u64,
}

/// A checked `Hello`: who is speaking.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The VM the agent reports for.
    pub vm_id: String,
    /// The kernel's hostname.
    pub hostname: String,
    /// The agent's version.
    pub agent_version: String,
    /// Which agent run this stream belongs to.
    pub run: RunKey,
    /// Labels from the agent's config.
    pub labels: BTreeMap<String, String>,
    /// The VM's size when the stream opened.
    pub size: Option<VmSize>,
    /// The agent's sampling interval, if it said.
    pub interval: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source with a rate and, when `statuses` is given, `(5xx, all)` responses.
    fn source(
        name: &str,
        kind: SourceKind,
        counted_by: Option<&str>,
        rate: Option<f64>,
        statuses: Option<(u64, u64)>,
    ) -> SourceReport {
        SourceReport {
            name: name.into(),
            kind,
            counted_by: counted_by.map(str::to_owned),
            up: true,
            down_total: 0,
            interval: Duration::from_secs(5),
            requests: 0,
            requests_per_second: rate,
            statuses: statuses.map(|(errors, all)| StatusClasses {
                success: all - errors,
                server_error: errors,
                ..Default::default()
            }),
            latency: None,
            busy: None,
            php_fpm: None,
        }
    }

    fn report(sources: Vec<SourceReport>) -> Report {
        Report {
            seq: 1,
            timestamp: SystemTime::UNIX_EPOCH,
            interval: Duration::from_secs(5),
            size: None,
            cpu: None,
            cores: vec![],
            load: None,
            memory: None,
            pressure: None,
            net: vec![],
            disks: vec![],
            filesystems: vec![],
            dropped: 0,
            agent: Default::default(),
            sources,
        }
    }

    use SourceKind::{AccessLog, Apache, Nginx, PhpFpm};

    #[test]
    fn the_vm_rate_counts_each_server_once() {
        let nginx = |rate| source("nginx", Nginx, None, rate, None);
        let log = |counted_by, rate| source("log", AccessLog, counted_by, rate, Some((2, 200)));
        // (sources, VM requests/s)
        let rows: Vec<(Vec<SourceReport>, Option<f64>)> = vec![
            // stub_status and the same nginx's log, the log counted by nginx: nginx's rate.
            (
                vec![nginx(Some(40.0)), log(Some("nginx"), Some(40.0))],
                Some(40.0),
            ),
            // Without `counted_by` (an agent older than the field): both, as before.
            (vec![nginx(Some(40.0)), log(None, Some(40.0))], Some(80.0)),
            // nginx without a rate (down, or its first reading): absent, not the log's.
            (vec![nginx(None), log(Some("nginx"), Some(40.0))], None),
            // Two servers that count for themselves add up; php-fpm behind nginx does not.
            (
                vec![
                    nginx(Some(40.0)),
                    source("apache", Apache, None, Some(10.0), None),
                    source("fpm", PhpFpm, Some("nginx"), Some(25.0), None),
                ],
                Some(50.0),
            ),
        ];
        for (i, (sources, expected)) in rows.into_iter().enumerate() {
            assert_eq!(report(sources).requests_per_second(), expected, "row {i}");
        }
    }

    #[test]
    fn the_error_ratio_weighs_each_servers_responses_once() {
        let r = |sources| report(sources).server_error_ratio();
        // stub_status has no classes: the log counted by it stands for it.
        assert_eq!(
            r(vec![
                source("nginx", Nginx, None, Some(40.0), None),
                source("log", AccessLog, Some("nginx"), Some(40.0), Some((2, 200))),
            ]),
            Some(0.01)
        );
        // The counting source has classes: a second log of the same traffic (all
        // errors here) is not added.
        assert_eq!(
            r(vec![
                source("main", AccessLog, None, Some(40.0), Some((2, 200))),
                source(
                    "copy",
                    AccessLog,
                    Some("main"),
                    Some(40.0),
                    Some((200, 200))
                ),
            ]),
            Some(0.01)
        );
        // ... unless it has no rate this time (its first reading): then the view's.
        assert_eq!(
            r(vec![
                source("main", AccessLog, None, None, Some((2, 200))),
                source("copy", AccessLog, Some("main"), Some(40.0), Some((20, 200))),
            ]),
            Some(0.1)
        );
        // Two servers that count for themselves: their responses add up.
        assert_eq!(
            r(vec![
                source("a", AccessLog, None, Some(40.0), Some((2, 100))),
                source("b", AccessLog, None, Some(40.0), Some((8, 100))),
            ]),
            Some(0.05)
        );
        assert_eq!(r(vec![source("nginx", Nginx, None, Some(1.0), None)]), None);
    }
}
