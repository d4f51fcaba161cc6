//! The collector's build and its own process, under the standard Prometheus names
//! (`process_*`, as the client libraries write them), read from `/proc/self`.

use std::fs;

use super::encoder::{Exposition, Kind};

/// The kernel's user-visible clock tick (`USER_HZ`), in which `/proc/<pid>/stat`
/// counts: fixed at 100 on every architecture Debian ships, whatever `HZ` is.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` tells of this process; a field is `None` when it could not be read.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ProcessStats {
    pub(super) cpu_seconds: Option<f64>,
    pub(super) resident_bytes: Option<u64>,
    pub(super) open_fds: Option<u64>,
    pub(super) max_fds: Option<u64>,
    pub(super) start_time_seconds: Option<f64>,
}

/// (utime + stime in seconds, start time in seconds after boot) from `/proc/self/stat`.
fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    // The command name (field 2) may hold spaces and parentheses: fields after the last
    // `)` are fixed. There, field 3 (state) is index 0, so utime (14) is index 11.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let cpu = (ticks(11)? + ticks(12)?) as f64 / USER_HZ;
    let start = ticks(19)? as f64 / USER_HZ;
    Some((cpu, start))
}

/// VmRSS from `/proc/self/status`, in bytes.
fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of "Max open files" from `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl ProcessStats {
    /// Reads this process's figures now.
    pub(super) fn read() -> Self {
        let stat = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s));
        let btime = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s));
        Self {
            cpu_seconds: stat.map(|(cpu, _)| cpu),
            resident_bytes: fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| parse_rss(&s)),
            open_fds: fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
            max_fds: fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|s| parse_max_fds(&s)),
            start_time_seconds: stat
                .zip(btime)
                .map(|((_, start), boot)| boot as f64 + start),
        }
    }
}

/// `rally_build_info` and the `process_*` families.
pub(super) fn process_metrics(e: &mut Exposition, p: &ProcessStats) {
    use Kind::{Counter, Gauge};

    e.family(
        "rally_build_info",
        Gauge,
        "Always 1: the collector's version as a label.",
    );
    e.sample(
        "rally_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    let mut one = |name: &str, kind, help: &str, value: Option<f64>| {
        e.family(name, kind, help);
        if let Some(v) = value {
            e.sample(name, &[], v);
        }
    };
    one(
        "process_cpu_seconds_total",
        Counter,
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    );
    one(
        "process_resident_memory_bytes",
        Gauge,
        "Resident memory size in bytes.",
        p.resident_bytes.map(|v| v as f64),
    );
    one(
        "process_open_fds",
        Gauge,
        "Number of open file descriptors.",
        p.open_fds.map(|v| v as f64),
    );
    one(
        "process_max_fds",
        Gauge,
        "Maximum number of open file descriptors.",
        p.max_fds.map(|v| v as f64),
    );
    one(
        "process_start_time_seconds",
        Gauge,
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let stat = "1234 (rally (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 8 0 12345 100000 300 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((3.0, 123.45)));
        assert_eq!(
            parse_rss("Name:\trally\nVmRSS:\t   2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_is_read() {
        let p = ProcessStats::read();
        assert!(p.cpu_seconds.is_some());
        assert!(p.resident_bytes.is_some_and(|v| v > 0));
        assert!(p.open_fds.is_some_and(|v| v >= 3));
        assert!(p.max_fds.is_some());
        assert!(p.start_time_seconds.is_some_and(|v| v > 1.0e9));
    }
}
