//! Counters integrated from the de-duplicated report stream: the agent sends rates and
//! shares per interval, the collector adds rate × interval to per-VM accumulators.
//!
//! Replayed reports (after an outage) are folded in when they arrive, so the increase
//! of a counter over an outage is what the VM did during it. Duplicates never reach
//! here, values only grow, and a new agent run continues the same counters.

use std::collections::BTreeMap;

use serde::Serialize;

use super::report::{CpuShares, Report};

/// Distinct devices (or sources) remembered per VM and kind; later new names are not
/// counted, so that interface churn (veths) cannot grow the VM's memory without end.
pub const MAX_TRACKED: usize = 256;

/// Network counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NetTotals {
    /// Bytes received.
    pub rx_bytes: f64,
    /// Bytes sent.
    pub tx_bytes: f64,
    /// Packets received.
    pub rx_packets: f64,
    /// Packets sent.
    pub tx_packets: f64,
    /// Receive errors plus drops.
    pub rx_errors: f64,
    /// Send errors plus drops.
    pub tx_errors: f64,
}

/// I/O counters of one block device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DiskTotals {
    /// Bytes read.
    pub read_bytes: f64,
    /// Bytes written.
    pub written_bytes: f64,
    /// Seconds the device was busy.
    pub io_seconds: f64,
    /// Reads completed.
    pub reads: f64,
    /// Writes completed.
    pub writes: f64,
}

/// CPU seconds by mode, all vCPUs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuSeconds {
    /// User.
    pub user: f64,
    /// Nice.
    pub nice: f64,
    /// System.
    pub system: f64,
    /// Hardware interrupts.
    pub irq: f64,
    /// Software interrupts.
    pub softirq: f64,
    /// Waiting for I/O.
    pub iowait: f64,
    /// Taken by the hypervisor.
    pub steal: f64,
    /// Idle.
    pub idle: f64,
}

impl CpuSeconds {
    /// `(mode, seconds)` per mode, in the order the metric lists them.
    pub fn by_mode(&self) -> [(&'static str, f64); 8] {
        [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("iowait", self.iowait),
            ("steal", self.steal),
            ("idle", self.idle),
        ]
    }
}

/// Requests of one source by status class (`1xx`..`5xx`, or `unknown` for sources
/// without classes, such as `stub_status`).
pub type RequestTotals = BTreeMap<&'static str, f64>;

/// Every integrated counter of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Per network interface.
    pub net: BTreeMap<String, NetTotals>,
    /// Per block device.
    pub disks: BTreeMap<String, DiskTotals>,
    /// CPU seconds (absent until a report carries CPU shares and the VM's vCPUs).
    pub cpu: Option<CpuSeconds>,
    /// Per request source.
    pub requests: BTreeMap<String, RequestTotals>,
}

/// Adds `v` when it is a finite non-negative amount (the ingest checks already refuse
/// others; this keeps a counter from ever falling whatever reaches it).
fn add(total: &mut f64, v: f64) {
    if v.is_finite() && v > 0.0 {
        *total += v;
    }
}

/// The entry for `name`, unless the map is full and does not have it yet.
fn entry<'a, V: Default>(map: &'a mut BTreeMap<String, V>, name: &str) -> Option<&'a mut V> {
    if !map.contains_key(name) && map.len() >= MAX_TRACKED {
        return None;
    }
    Some(map.entry(name.to_string()).or_default())
}

impl Totals {
    /// Folds one applied report in; `vcpus` is the VM's size at that report.
    pub fn add(&mut self, report: &Report, vcpus: Option<u32>) {
        let secs = report.interval.as_secs_f64();
        for n in &report.net {
            if let Some(t) = entry(&mut self.net, &n.name) {
                add(&mut t.rx_bytes, n.rx_bytes_per_second * secs);
                add(&mut t.tx_bytes, n.tx_bytes_per_second * secs);
                add(&mut t.rx_packets, n.rx_packets_per_second * secs);
                add(&mut t.tx_packets, n.tx_packets_per_second * secs);
                // Errors are counts of the interval already.
                add(&mut t.rx_errors, n.rx_errors as f64);
                add(&mut t.tx_errors, n.tx_errors as f64);
            }
        }
        for d in &report.disks {
            if let Some(t) = entry(&mut self.disks, &d.name) {
                add(&mut t.read_bytes, d.read_bytes_per_second * secs);
                add(&mut t.written_bytes, d.write_bytes_per_second * secs);
                add(&mut t.io_seconds, d.busy_ratio * secs);
                add(&mut t.reads, d.reads_per_second.unwrap_or(0.0) * secs);
                add(&mut t.writes, d.writes_per_second.unwrap_or(0.0) * secs);
            }
        }
        if let (Some(cpu), Some(vcpus)) = (&report.cpu, vcpus) {
            let cpu_secs = secs * f64::from(vcpus);
            let t = self.cpu.get_or_insert_with(CpuSeconds::default);
            let CpuShares {
                user,
                nice,
                system,
                irq,
                softirq,
                iowait,
                steal,
                idle,
                ..
            } = *cpu;
            add(&mut t.user, user * cpu_secs);
            add(&mut t.nice, nice * cpu_secs);
            add(&mut t.system, system * cpu_secs);
            add(&mut t.irq, irq * cpu_secs);
            add(&mut t.softirq, softirq * cpu_secs);
            add(&mut t.iowait, iowait * cpu_secs);
            add(&mut t.steal, steal * cpu_secs);
            add(&mut t.idle, idle * cpu_secs);
        }
        for s in &report.sources {
            if !s.up {
                continue;
            }
            if let Some(t) = entry(&mut self.requests, &s.name) {
                match &s.statuses {
                    Some(classes) => {
                        for (class, n) in classes.by_class() {
                            add(t.entry(class).or_default(), n as f64);
                        }
                    }
                    None => add(t.entry("unknown").or_default(), s.requests as f64),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::fleet::{DiskIo, NetInterface, SourceKind, SourceReport, StatusClasses};

    fn report(seq: u64) -> Report {
        Report {
            seq,
            timestamp: SystemTime::UNIX_EPOCH,
            interval: Duration::from_secs(5),
            size: None,
            cpu: Some(CpuShares {
                user: 0.5,
                system: 0.1,
                idle: 0.4,
                ..Default::default()
            }),
            cores: vec![],
            load: None,
            memory: None,
            pressure: None,
            net: vec![NetInterface {
                name: "eth0".into(),
                rx_bytes_per_second: 1000.0,
                tx_bytes_per_second: 200.0,
                rx_packets_per_second: 10.0,
                tx_packets_per_second: 2.0,
                rx_errors: 3,
                tx_errors: 0,
            }],
            disks: vec![DiskIo {
                name: "vda".into(),
                read_bytes_per_second: 4096.0,
                write_bytes_per_second: f64::NAN,
                busy_ratio: 0.2,
                reads_per_second: Some(3.0),
                writes_per_second: None,
            }],
            filesystems: vec![],
            dropped: 0,
            agent: Default::default(),
            sources: vec![
                SourceReport {
                    name: "log".into(),
                    kind: SourceKind::AccessLog,
                    counted_by: None,
                    up: true,
                    down_total: 0,
                    interval: Duration::from_secs(5),
                    requests: 12,
                    requests_per_second: Some(2.4),
                    statuses: Some(StatusClasses {
                        success: 10,
                        server_error: 2,
                        ..Default::default()
                    }),
                    latency: None,
                    busy: None,
                    php_fpm: None,
                },
                SourceReport {
                    name: "nginx".into(),
                    kind: SourceKind::Nginx,
                    counted_by: None,
                    up: true,
                    down_total: 0,
                    interval: Duration::from_secs(5),
                    requests: 7,
                    requests_per_second: Some(1.4),
                    statuses: None,
                    latency: None,
                    busy: None,
                    php_fpm: None,
                },
            ],
        }
    }

    #[test]
    fn rates_are_integrated_over_the_interval() {
        let mut t = Totals::default();
        t.add(&report(1), Some(2));
        t.add(&report(2), Some(2));
        let eth0 = t.net["eth0"];
        assert_eq!(eth0.rx_bytes, 10_000.0);
        assert_eq!(eth0.tx_packets, 20.0);
        assert_eq!(eth0.rx_errors, 6.0);
        let vda = t.disks["vda"];
        assert_eq!(vda.read_bytes, 40_960.0);
        // A NaN rate adds nothing: the counter never falls or poisons.
        assert_eq!(vda.written_bytes, 0.0);
        assert!((vda.io_seconds - 2.0).abs() < 1e-9);
        assert_eq!(vda.reads, 30.0);
        // An older agent sends no write count: nothing is added, nothing is invented.
        assert_eq!(vda.writes, 0.0);
        let cpu = t.cpu.unwrap();
        // 0.5 share × 5 s × 2 vCPUs × 2 reports.
        assert_eq!(cpu.user, 10.0);
        assert!((cpu.idle - 8.0).abs() < 1e-9);
        assert_eq!(t.requests["log"]["5xx"], 4.0);
        assert_eq!(t.requests["log"]["2xx"], 20.0);
        assert_eq!(t.requests["nginx"]["unknown"], 14.0);
    }

    #[test]
    fn cpu_seconds_wait_for_the_vcpus_and_new_devices_stop_at_the_cap() {
        let mut t = Totals::default();
        t.add(&report(1), None);
        assert_eq!(t.cpu, None);
        for i in 0..MAX_TRACKED + 10 {
            let mut r = report(1);
            r.net[0].name = format!("veth{i}");
            t.add(&r, None);
        }
        assert_eq!(t.net.len(), MAX_TRACKED);
        // A device already tracked keeps counting.
        t.add(&report(2), None);
        assert_eq!(t.net["eth0"].rx_bytes, 10_000.0);
    }
}
