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
