//! A process's CPU time and resident memory, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status`, so a run can say what the collector (and the generator
//! itself) spent.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// When it was read.
    at: Instant,
    /// User plus system CPU time, in seconds.
    cpu_seconds: f64,
    /// Resident set, in bytes.
    rss_bytes: u64,
    /// Peak resident set so far, in bytes.
    peak_rss_bytes: u64,
}

/// Reads process `pid` (`None`: this process).
pub fn read(pid: Option<u32>) -> anyhow::Result<Reading> {
    let process = match pid {
        Some(pid) => {
            let id = i32::try_from(pid).context("process id out of range")?;
            procfs::process::Process::new(id)
        }
        None => procfs::process::Process::myself(),
    }
    .with_context(|| format!("open /proc/{}", display(pid)))?;
    let stat = process
        .stat()
        .with_context(|| format!("read /proc/{}/stat", display(pid)))?;
    let status = process
        .status()
        .with_context(|| format!("read /proc/{}/status", display(pid)))?;
    // Clock ticks to seconds; a tick count fits an f64 exactly for centuries.
    let cpu_seconds = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    Ok(Reading {
        at: Instant::now(),
        cpu_seconds,
        rss_bytes: status.vmrss.unwrap_or(0) * 1024,
        peak_rss_bytes: status.vmhwm.unwrap_or(0) * 1024,
    })
}

fn display(pid: Option<u32>) -> String {
    pid.map_or_else(|| "self".to_owned(), |p| p.to_string())
}

/// What a process spent between two readings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// CPU seconds (user + system) between the readings.
    pub cpu_seconds: f64,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    /// Resident set at the first reading, in bytes.
    pub rss_before_bytes: u64,
    /// Resident set at the second reading, in bytes.
    pub rss_after_bytes: u64,
    /// Peak resident set at the second reading, in bytes.
    pub peak_rss_bytes: u64,
}

impl Usage {
    /// The usage from `before` to `after`.
    pub fn between(before: Reading, after: Reading) -> Self {
        let cpu_seconds = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        let wall = after.at.duration_since(before.at).as_secs_f64();
        Self {
            cpu_seconds,
            cpu_percent: if wall > 0.0 {
                100.0 * cpu_seconds / wall
            } else {
                0.0
            },
            rss_before_bytes: before.rss_bytes,
            rss_after_bytes: after.rss_bytes,
            peak_rss_bytes: after.peak_rss_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set_and_spends_cpu() {
        let before = read(None).unwrap();
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 100 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = read(None).unwrap();
        let usage = Usage::between(before, after);
        assert!(usage.rss_after_bytes > 0);
        assert!(usage.peak_rss_bytes >= usage.rss_after_bytes);
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(read(Some(u32::MAX / 2)).is_err());
    }
}
