//! Acks slower than a threshold, counted by the second of the run they arrived in:
//! a tail in the percentiles, placed in time, can be matched with what the collector
//! was doing then (a scrape, a stall, a burst of reconnections).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

/// Slow acks per second of a run, in a fixed number of seconds: the last one also
/// takes every later second (the drain, a late straggler).
#[derive(Debug)]
pub struct SlowAcks {
    threshold: Duration,
    /// When the run's reports started (monotonic, and as Unix time for the summary).
    started: OnceLock<(Instant, SystemTime)>,
    /// Per second since `started`: acks over the threshold, and the slowest (µs).
    seconds: Box<[Second]>,
}

#[derive(Debug, Default)]
struct Second {
    acks: AtomicU64,
    slowest_us: AtomicU64,
}

/// One second of a run in which some acks were slow.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlowSecond {
    /// Seconds since the run's reports started (the last may also count later ones).
    pub second: u64,
    /// Acks slower than the threshold that arrived in it.
    pub acks: u64,
    /// The slowest of them, in milliseconds.
    pub max_ms: f64,
}

/// The slow acks of a run, for the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slow {
    /// Acks slower than this many milliseconds are counted.
    pub threshold_ms: f64,
    /// How many there were.
    pub acks: u64,
    /// When the run's reports started, Unix time in seconds, to match the seconds
    /// below with another log.
    pub started_at_unix_seconds: f64,
    /// The seconds with a slow ack, in order.
    pub seconds: Vec<SlowSecond>,
}

impl SlowAcks {
    /// Counts acks slower than `threshold` in `seconds` one-second buckets (at least one).
    pub fn new(threshold: Duration, seconds: usize) -> Self {
        Self {
            threshold,
            started: OnceLock::new(),
            seconds: (0..seconds.max(1)).map(|_| Second::default()).collect(),
        }
    }

    /// Sets when the run's reports started; only the first call counts.
    pub fn start(&self, at: Instant) {
        let _ = self.started.set((at, SystemTime::now()));
    }

    /// Counts an ack that arrived at `at`, `latency` after its report was sent, if
    /// it is slow and the run has started.
    pub fn record(&self, at: Instant, latency: Duration) {
        if latency <= self.threshold {
            return;
        }
        let Some((started, _)) = self.started.get() else {
            return;
        };
        let second = usize::try_from(at.saturating_duration_since(*started).as_secs())
            .unwrap_or(usize::MAX)
            .min(self.seconds.len() - 1);
        let bucket = &self.seconds[second];
        bucket.acks.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        bucket.slowest_us.fetch_max(us, Ordering::Relaxed);
    }

    /// What was counted so far.
    pub fn summary(&self) -> Slow {
        let seconds: Vec<SlowSecond> = self
            .seconds
            .iter()
            .enumerate()
            .filter_map(|(second, bucket)| {
                let acks = bucket.acks.load(Ordering::Relaxed);
                (acks > 0).then(|| SlowSecond {
                    second: second as u64,
                    acks,
                    max_ms: bucket.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0,
                })
            })
            .collect();
        Slow {
            threshold_ms: self.threshold.as_secs_f64() * 1000.0,
            acks: seconds.iter().map(|s| s.acks).sum(),
            started_at_unix_seconds: self
                .started
                .get()
                .and_then(|(_, at)| at.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
            seconds,
        }
    }
}

impl Slow {
    /// The `n` seconds with the most slow acks, most first (ties: the earlier first).
    pub fn worst(&self, n: usize) -> Vec<SlowSecond> {
        let mut worst = self.seconds.clone();
        worst.sort_by(|a, b| b.acks.cmp(&a.acks).then(a.second.cmp(&b.second)));
        worst.truncate(n);
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_acks_are_counted_in_the_second_they_arrive() {
        let slow = SlowAcks::new(Duration::from_millis(50), 10);
        let t0 = Instant::now();
        slow.record(t0, Duration::from_secs(1));
        assert_eq!(slow.summary().acks, 0, "nothing counts before the start");
        slow.start(t0);
        slow.record(t0 + Duration::from_millis(300), Duration::from_millis(50));
        slow.record(t0 + Duration::from_millis(1200), Duration::from_millis(80));
        slow.record(t0 + Duration::from_millis(1900), Duration::from_millis(120));
        slow.record(t0 + Duration::from_millis(3100), Duration::from_millis(51));
        // Past the last bucket: counted in it.
        slow.record(t0 + Duration::from_secs(60), Duration::from_millis(700));
        let summary = slow.summary();
        assert_eq!(summary.threshold_ms, 50.0);
        assert_eq!(summary.acks, 4);
        assert_eq!(
            summary.seconds,
            vec![
                SlowSecond {
                    second: 1,
                    acks: 2,
                    max_ms: 120.0
                },
                SlowSecond {
                    second: 3,
                    acks: 1,
                    max_ms: 51.0
                },
                SlowSecond {
                    second: 9,
                    acks: 1,
                    max_ms: 700.0
                },
            ]
        );
        let worst = summary.worst(2);
        assert_eq!(worst.iter().map(|s| s.second).collect::<Vec<_>>(), [1, 3]);
        assert!(summary.started_at_unix_seconds > 1.7e9);
    }
}
