//! `/api/v1/vms`: the fleet as JSON. Field names are a contract for scripts: add,
//! never rename.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::unix_seconds;
use crate::fleet::{
    CpuShares, DiskIo, Filesystem, MetricValues, NetInterface, Pressure, ReportCounters, VmSize,
    VmSummary,
};

/// `GET /api/v1/vms`.
#[derive(Debug, Serialize)]
pub struct VmList {
    /// Every VM, in (group, id) order.
    pub vms: Vec<VmJson>,
}

/// One VM.
#[derive(Debug, Serialize)]
pub struct VmJson {
    /// VM id.
    pub vm: String,
    /// Group (`ungrouped` if none names it).
    pub group: String,
    /// Hostname its agent reported.
    pub hostname: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Labels from the agent's config.
    pub labels: BTreeMap<String, String>,
    /// Reported within `ingest.stale_after`.
    pub fresh: bool,
    /// Seconds since the latest report was applied.
    pub last_report_age_seconds: Option<f64>,
    /// When it was applied (Unix seconds).
    pub last_report_timestamp_seconds: Option<f64>,
    /// Open agent streams.
    pub streams: u32,
    /// Latest known usable size.
    pub size: Option<VmSize>,
    /// The latest report.
    pub latest: Option<LatestJson>,
    /// 1-minute means.
    pub avg_1m: MetricValues,
    /// 5-minute means.
    pub avg_5m: MetricValues,
    /// Report counters since the collector started.
    pub reports: ReportCounters,
}

/// The latest report, flattened for scripts.
#[derive(Debug, Serialize)]
pub struct LatestJson {
    /// Sequence number.
    pub seq: u64,
    /// Sample time by the agent's clock (Unix seconds).
    pub timestamp_seconds: f64,
    /// Interval covered, seconds.
    pub interval_seconds: f64,
    /// CPU utilization (0..1).
    pub cpu_utilization: Option<f64>,
    /// CPU steal (0..1).
    pub cpu_steal: Option<f64>,
    /// CPU iowait (0..1).
    pub cpu_iowait: Option<f64>,
    /// All CPU shares.
    pub cpu: Option<CpuShares>,
    /// Per-core shares.
    pub cores: Vec<CpuShares>,
    /// MemTotal.
    pub memory_total_bytes: Option<u64>,
    /// MemAvailable.
    pub memory_available_bytes: Option<u64>,
    /// SwapTotal.
    pub swap_total_bytes: Option<u64>,
    /// SwapFree.
    pub swap_free_bytes: Option<u64>,
    /// 1-minute load.
    pub load1: Option<f64>,
    /// 5-minute load.
    pub load5: Option<f64>,
    /// 15-minute load.
    pub load15: Option<f64>,
    /// PSI, `null` without it.
    pub pressure: Option<Pressure>,
    /// Network interfaces.
    pub net: Vec<NetInterface>,
    /// Block devices.
    pub disks: Vec<DiskIo>,
    /// Filesystems.
    pub filesystems: Vec<Filesystem>,
}

impl From<&VmSummary> for VmJson {
    fn from(vm: &VmSummary) -> Self {
        let latest = vm.latest.as_ref().map(|r| LatestJson {
            seq: r.seq,
            timestamp_seconds: unix_seconds(r.timestamp),
            interval_seconds: r.interval.as_secs_f64(),
            cpu_utilization: r.cpu.map(|c| c.utilization),
            cpu_steal: r.cpu.map(|c| c.steal),
            cpu_iowait: r.cpu.map(|c| c.iowait),
            cpu: r.cpu,
            cores: r.cores.clone(),
            memory_total_bytes: r.memory.map(|m| m.total_bytes),
            memory_available_bytes: r.memory.map(|m| m.available_bytes),
            swap_total_bytes: r.memory.map(|m| m.swap_total_bytes),
            swap_free_bytes: r.memory.map(|m| m.swap_free_bytes),
            load1: r.load.map(|l| l.one),
            load5: r.load.map(|l| l.five),
            load15: r.load.map(|l| l.fifteen),
            pressure: r.pressure,
            net: r.net.clone(),
            disks: r.disks.clone(),
            filesystems: r.filesystems.clone(),
        });
        VmJson {
            vm: vm.id.clone(),
            group: vm.group.clone(),
            hostname: vm.hostname.clone(),
            agent_version: vm.agent_version.clone(),
            labels: vm.labels.clone(),
            fresh: vm.fresh,
            last_report_age_seconds: vm.last_report_age.map(|d| d.as_secs_f64()),
            last_report_timestamp_seconds: vm.last_report_at.map(unix_seconds),
            streams: vm.streams,
            size: vm.size,
            latest,
            avg_1m: vm.mean_1m,
            avg_5m: vm.mean_5m,
            reports: vm.counters,
        }
    }
}
