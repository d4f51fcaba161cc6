//! What the simulated agents count, shared by all of them: reports sent and
//! acknowledged, errors by kind, and ack latencies in a histogram.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::slow::SlowAcks;

/// Latencies are recorded in microseconds, up to this many (longer ones saturate).
const MAX_LATENCY_US: u64 = 600_000_000;
/// Histogram shards: agents record into `index % SHARDS`, so thousands of agents do
/// not queue on one lock.
const SHARDS: usize = 16;

/// Counters of one run.
#[derive(Debug)]
pub struct Stats {
    /// Streams whose `Hello` the collector accepted (response headers arrived).
    pub opened: AtomicU64,
    /// Agents that finished opening, successfully or not.
    pub settled: AtomicU64,
    /// Reports handed to the streams.
    pub sent: AtomicU64,
    /// `Ack` messages received (the collector coalesces them).
    pub acks: AtomicU64,
    /// Reports covered by an `Ack`.
    pub acked: AtomicU64,
    /// Reports still un-acknowledged when their agent stopped waiting.
    pub unacked: AtomicU64,
    /// Agents with an open stream that are done (every ack in, or given up), and wait
    /// for the others before closing it.
    pub drained: AtomicU64,
    /// Streams lost and to be reopened (`--reconnect`).
    pub lost_streams: AtomicU64,
    /// Attempts to reopen a lost stream, successful or not.
    pub reconnect_attempts: AtomicU64,
    /// Un-acknowledged reports sent again on a reopened stream.
    pub resent: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    reconnects: Mutex<Vec<Reconnect>>,
    /// When the warm-up ends (`--warm-up`): reports sent before it are timed apart.
    steady_from: OnceLock<Instant>,
    latencies: Vec<Mutex<Histogram<u64>>>,
    warm_up: Vec<Mutex<Histogram<u64>>>,
    /// Slow acks by the second they arrived in.
    pub slow: SlowAcks,
}

fn histograms() -> anyhow::Result<Vec<Mutex<Histogram<u64>>>> {
    Ok((0..SHARDS)
        .map(|_| Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map(Mutex::new))
        .collect::<Result<_, _>>()?)
}

fn merged(shards: &[Mutex<Histogram<u64>>]) -> Latency {
    let lock = |h: &Mutex<Histogram<u64>>| h.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut all = lock(&shards[0]);
    for shard in &shards[1..] {
        // Same bounds, so adding cannot fail.
        let _ = all.add(lock(shard));
    }
    Latency::of(&all)
}

impl Stats {
    /// Empty counters; slow acks are counted in `slow`.
    pub fn new(slow: SlowAcks) -> anyhow::Result<Self> {
        Ok(Self {
            opened: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            lost_streams: AtomicU64::new(0),
            reconnect_attempts: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            reconnects: Mutex::new(Vec::new()),
            steady_from: OnceLock::new(),
            latencies: histograms()?,
            warm_up: histograms()?,
            slow,
        })
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: impl Into<String>) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind.into())
            .or_default() += 1;
    }

    /// Errors so far, by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a reopened stream.
    pub fn reconnected(&self, reconnect: Reconnect) {
        self.reconnects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reconnect);
    }

    /// Every reopened stream so far.
    pub fn reconnects(&self) -> Vec<Reconnect> {
        self.reconnects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets when the warm-up ends; only the first call counts.
    pub fn steady_from(&self, t: Instant) {
        let _ = self.steady_from.set(t);
    }

    /// Whether a report sent at `t` was sent during the warm-up.
    pub fn warming_up(&self, t: Instant) -> bool {
        self.steady_from.get().is_some_and(|end| t < *end)
    }

    /// Records the ack latencies of agent `index`, of reports sent during the warm-up
    /// if `warm_up`.
    pub fn record(&self, index: usize, latencies: &[Duration], warm_up: bool) {
        if latencies.is_empty() {
            return;
        }
        let shards = if warm_up {
            &self.warm_up
        } else {
            &self.latencies
        };
        let mut h = shards[index % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for l in latencies {
            let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
            h.saturating_record(us.max(1));
        }
    }

    /// Every latency recorded so far, of reports sent after the warm-up.
    pub fn latency(&self) -> Latency {
        merged(&self.latencies)
    }

    /// The latencies of reports sent during the warm-up.
    pub fn warm_up_latency(&self) -> Latency {
        merged(&self.warm_up)
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One lost stream opened again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    /// When the stream was open again (the collector accepted its `Hello`).
    pub at: SystemTime,
    /// How long after the stream was lost.
    pub after: Duration,
}

/// Ack latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Latencies recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_merge_every_shard() {
        let stats = Stats::new(SlowAcks::new(Duration::from_millis(50), 1)).unwrap();
        // 1..=1000 ms, spread over agents of different shards.
        for ms in 1..=1000u64 {
            stats.record(
                usize::try_from(ms).unwrap(),
                &[Duration::from_millis(ms)],
                false,
            );
        }
        // The warm-up's are kept apart.
        stats.record(3, &[Duration::from_secs(9)], true);
        assert_eq!(stats.warm_up_latency().count, 1);
        let l = stats.latency();
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.p999_ms - 999.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn reports_sent_before_the_warm_up_ends_are_warming_up() {
        let stats = Stats::new(SlowAcks::new(Duration::from_millis(50), 1)).unwrap();
        let now = Instant::now();
        assert!(!stats.warming_up(now), "no warm-up set: none");
        stats.steady_from(now + Duration::from_secs(10));
        assert!(stats.warming_up(now));
        assert!(!stats.warming_up(now + Duration::from_secs(10)));
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let stats = Stats::new(SlowAcks::new(Duration::from_millis(50), 1)).unwrap();
        stats.error("open: Unavailable");
        stats.error("open: Unavailable");
        stats.error("stream closed by the collector");
        assert_eq!(
            stats.errors(),
            BTreeMap::from([
                ("open: Unavailable".to_owned(), 2),
                ("stream closed by the collector".to_owned(), 1),
            ])
        );
    }
}
