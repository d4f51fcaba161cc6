//! Time windows of one VM's metrics: the raw recent samples (≥ 5 min, at a resolution
//! of [`RAW_RESOLUTION`]) and 24 h of 1-minute means, and the queries the policy engine
//! asks of them.
//!
//! Every query takes a [`TimeRange`] `(start, end]`. A range the raw ring still holds
//! in full is answered from the raw slots (exact at intervals of [`RAW_RESOLUTION`] or
//! more); an older or longer one from the 1-minute means that overlap it (whole
//! minutes).
//!
//! # Raw slots
//!
//! The raw ring holds one slot per sample, except that a sample less than
//! [`RAW_RESOLUTION`] after the first sample of the ring's newest slot is averaged into
//! that slot (from full-precision sums) instead of taking one of its own. A slot's time
//! is its newest sample's, so a range that ends now includes the slot being filled; a
//! range holds the slots whose time lies in it, each with all its samples (a slot that
//! straddles the range's start counts whole). Means weigh each slot by its number of
//! samples (the mean of the samples, when every sample has the metric); a `max` is the
//! largest slot mean (a spike shorter than a slot is averaged); coverage sees the gaps
//! between slots, not those within one (each shorter than [`RAW_RESOLUTION`]). The
//! 1-minute means still take every sample in full precision.
//!
//! # Memory
//!
//! What a VM costs is mostly its history, so it is kept compact: only the metrics the
//! status page charts or a group's policy reads have one ([`Histories`]), each in a
//! ring of [`BUCKET_MINUTES`] slots allocated once, at its first value. Ratios take two
//! bytes (steps of 1/60 000), other figures four (`f32`), in the rings and in the raw
//! slots alike. The raw ring holds at most [`RAW_CAP`] slots at any interval (about 72
//! at 5 s and at 1 s alike) and grows by an eighth at a time, so it settles just above
//! what the agent's interval fills in [`RAW_RETENTION`].

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use rally_policy::{GroupPolicy, Metric as PolicyMetric};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::report::Report;

/// Raw samples are kept this long: the 5-minute window plus a minute of slack.
pub const RAW_RETENTION: Duration = Duration::from_secs(6 * 60);
/// The raw ring's resolution: a sample less than this after the first sample of the
/// ring's newest slot is averaged into that slot. At the agent's default 5 s interval
/// every sample keeps a slot of its own, at 1 s a slot holds five. Half a second short
/// of 5 s, so that the jitter of a 5 s agent's clock never merges two of its samples.
pub const RAW_RESOLUTION: Duration = Duration::from_millis(4_500);
/// At most this many raw slots per VM, whatever the agent's interval: slots start at
/// least [`RAW_RESOLUTION`] apart, so [`RAW_RETENTION`] never holds more (82).
pub const RAW_CAP: usize = (RAW_RETENTION.as_millis() / RAW_RESOLUTION.as_millis()) as usize + 2;
/// 1-minute buckets are kept for 24 h plus the current and the previous, partial minute.
pub const BUCKET_MINUTES: i64 = 24 * 60 + 2;

/// A metric kept in the windows. Ratios are 0..1 (PSI's percentages are divided by 100).
/// A metric the policy also reads has the policy's name ([`rally_policy::Metric`], the
/// word users write in `metric = ...`), in code and in JSON alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// CPU utilization (steal and iowait excluded).
    CpuUtilization,
    /// CPU steal share.
    CpuSteal,
    /// CPU iowait share.
    CpuIowait,
    /// MemAvailable, bytes.
    MemoryAvailableBytes,
    /// MemTotal − MemAvailable, bytes.
    MemoryUsedBytes,
    /// (MemTotal − MemAvailable) / MemTotal.
    MemoryUsedRatio,
    /// PSI cpu "some" avg10 / 100 (`psi_cpu_some_avg10`).
    PsiCpuSomeAvg10,
    /// PSI memory "some" avg10 / 100 (`psi_memory_some_avg10`).
    PsiMemorySomeAvg10,
    /// PSI io "some" avg10 / 100 (`psi_io_some_avg10`; no policy rule reads it).
    PsiIoSomeAvg10,
    /// Web requests per second, summed over the VM's sources.
    RequestsPerSecond,
    /// Web requests per second divided by the vCPUs.
    RequestsPerSecondPerVcpu,
    /// 5xx responses / all responses (sources that count status classes).
    ServerErrorRatio,
    /// The highest p95 request latency among the sources, seconds.
    LatencyP95Seconds,
    /// Requests waiting in php-fpm listen queues.
    PhpFpmListenQueue,
}

/// How many metrics there are.
pub const METRIC_COUNT: usize = Metric::ALL.len();

impl Metric {
    /// Every metric, in a fixed order.
    pub const ALL: [Metric; 14] = [
        Metric::CpuUtilization,
        Metric::CpuSteal,
        Metric::CpuIowait,
        Metric::MemoryAvailableBytes,
        Metric::MemoryUsedBytes,
        Metric::MemoryUsedRatio,
        Metric::PsiCpuSomeAvg10,
        Metric::PsiMemorySomeAvg10,
        Metric::PsiIoSomeAvg10,
        Metric::RequestsPerSecond,
        Metric::RequestsPerSecondPerVcpu,
        Metric::ServerErrorRatio,
        Metric::LatencyP95Seconds,
        Metric::PhpFpmListenQueue,
    ];

    /// The snake_case name used in JSON: the policy's name for the metrics it reads as
    /// they are (declared once, in `rally_policy::Metric::name`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuUtilization => PolicyMetric::CpuUtilization.name(),
            Metric::CpuSteal => "cpu_steal",
            Metric::CpuIowait => "cpu_iowait",
            Metric::MemoryAvailableBytes => "memory_available_bytes",
            Metric::MemoryUsedBytes => "memory_used_bytes",
            Metric::MemoryUsedRatio => PolicyMetric::MemoryUsedRatio.name(),
            Metric::PsiCpuSomeAvg10 => PolicyMetric::PsiCpuSomeAvg10.name(),
            Metric::PsiMemorySomeAvg10 => PolicyMetric::PsiMemorySomeAvg10.name(),
            Metric::PsiIoSomeAvg10 => "psi_io_some_avg10",
            Metric::RequestsPerSecond => PolicyMetric::RequestsPerSecond.name(),
            Metric::RequestsPerSecondPerVcpu => PolicyMetric::RequestsPerSecondPerVcpu.name(),
            Metric::ServerErrorRatio => PolicyMetric::ServerErrorRatio.name(),
            Metric::LatencyP95Seconds => PolicyMetric::LatencyP95Seconds.name(),
            Metric::PhpFpmListenQueue => PolicyMetric::PhpFpmListenQueue.name(),
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// This metric's value in `report`, if the report carries it.
    pub fn of(self, report: &Report) -> Option<f64> {
        let psi =
            |pick: fn(&super::report::Pressure) -> Option<super::report::PressureResource>| {
                report
                    .pressure
                    .as_ref()
                    .and_then(pick)
                    .and_then(|r| r.some)
                    .map(|line| line.avg10 / 100.0)
            };
        match self {
            Metric::CpuUtilization => report.cpu.map(|c| c.utilization),
            Metric::CpuSteal => report.cpu.map(|c| c.steal),
            Metric::CpuIowait => report.cpu.map(|c| c.iowait),
            Metric::MemoryAvailableBytes => report.memory.map(|m| m.available_bytes as f64),
            Metric::MemoryUsedBytes => report.memory.map(|m| m.used_bytes() as f64),
            Metric::MemoryUsedRatio => report.memory.and_then(|m| m.used_ratio()),
            Metric::PsiCpuSomeAvg10 => psi(|p| p.cpu),
            Metric::PsiMemorySomeAvg10 => psi(|p| p.memory),
            Metric::PsiIoSomeAvg10 => psi(|p| p.io),
            Metric::RequestsPerSecond => report.requests_per_second(),
            Metric::RequestsPerSecondPerVcpu => {
                let vcpus = report.size?.vcpus;
                report
                    .requests_per_second()
                    .map(|rps| rps / f64::from(vcpus.max(1)))
            }
            Metric::ServerErrorRatio => report.server_error_ratio(),
            Metric::LatencyP95Seconds => report.latency_p95_seconds(),
            Metric::PhpFpmListenQueue => report.php_fpm_listen_queue(),
        }
    }
}

/// One value (or its absence) per [`Metric`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MetricValues([Option<f64>; METRIC_COUNT]);

impl MetricValues {
    /// Every metric's value in `report`.
    pub fn of(report: &Report) -> Self {
        Self(Metric::ALL.map(|m| m.of(report)))
    }

    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.0[metric.index()]
    }

    /// Sets one metric's value.
    pub fn set(&mut self, metric: Metric, value: Option<f64>) {
        self.0[metric.index()] = value;
    }
}

/// JSON: `{"cpu_utilization": 0.5, "cpu_steal": null, ...}`.
impl Serialize for MetricValues {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(METRIC_COUNT))?;
        for metric in Metric::ALL {
            map.serialize_entry(metric.name(), &self.get(metric))?;
        }
        map.end()
    }
}

/// A time range `(start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Exclusive start.
    pub start: SystemTime,
    /// Inclusive end.
    pub end: SystemTime,
}

impl TimeRange {
    /// The `window` that ends at `now`.
    pub fn last(window: Duration, now: SystemTime) -> Self {
        Self {
            start: now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH),
            end: now,
        }
    }

    /// Whether `t` lies in the range.
    pub fn contains(&self, t: SystemTime) -> bool {
        self.start < t && t <= self.end
    }

    /// The range without its part before `t` (e.g. to leave out a warm-up).
    pub fn not_before(self, t: SystemTime) -> Self {
        Self {
            start: self.start.max(t),
            end: self.end,
        }
    }
}

/// How a metric's values are stored, raw and as 1-minute means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// A ratio in 0..1, as a `u16` in steps of 1/60 000 (2 bytes). Values with up to
    /// four decimals come back exactly.
    Ratio,
    /// A figure of any size (bytes, requests per second, seconds, a queue length), as
    /// an `f32` (4 bytes, 7 significant digits).
    Magnitude,
}

impl Metric {
    /// How this metric's values are stored.
    pub fn kind(self) -> History {
        match self {
            Metric::CpuUtilization
            | Metric::CpuSteal
            | Metric::CpuIowait
            | Metric::MemoryUsedRatio
            | Metric::PsiCpuSomeAvg10
            | Metric::PsiMemorySomeAvg10
            | Metric::PsiIoSomeAvg10
            | Metric::ServerErrorRatio => History::Ratio,
            Metric::MemoryAvailableBytes
            | Metric::MemoryUsedBytes
            | Metric::RequestsPerSecond
            | Metric::RequestsPerSecondPerVcpu
            | Metric::LatencyP95Seconds
            | Metric::PhpFpmListenQueue => History::Magnitude,
        }
    }

    /// How this metric's 1-minute means are kept for 24 h, or `None` when only its
    /// raw samples are (ranges beyond [`RAW_RETENTION`] then have no value). Only the
    /// metrics a policy can read may have a history, and of those only the ones the
    /// fleet is told to keep ([`Histories`]) do.
    pub fn history(self) -> Option<History> {
        match self {
            Metric::CpuSteal
            | Metric::CpuIowait
            | Metric::MemoryAvailableBytes
            | Metric::MemoryUsedBytes
            | Metric::PsiIoSomeAvg10 => None,
            _ => Some(self.kind()),
        }
    }

    /// Where this metric's value is in a [`RawSample`].
    fn raw_slot(self) -> RawSlot {
        match self {
            Metric::CpuUtilization => RawSlot::Ratio(0),
            Metric::CpuSteal => RawSlot::Ratio(1),
            Metric::CpuIowait => RawSlot::Ratio(2),
            Metric::MemoryUsedRatio => RawSlot::Ratio(3),
            Metric::PsiCpuSomeAvg10 => RawSlot::Ratio(4),
            Metric::PsiMemorySomeAvg10 => RawSlot::Ratio(5),
            Metric::PsiIoSomeAvg10 => RawSlot::Ratio(6),
            Metric::ServerErrorRatio => RawSlot::Ratio(7),
            Metric::MemoryAvailableBytes => RawSlot::Magnitude(0),
            Metric::MemoryUsedBytes => RawSlot::Magnitude(1),
            Metric::RequestsPerSecond => RawSlot::Magnitude(2),
            Metric::RequestsPerSecondPerVcpu => RawSlot::Magnitude(3),
            Metric::LatencyP95Seconds => RawSlot::Magnitude(4),
            Metric::PhpFpmListenQueue => RawSlot::Magnitude(5),
        }
    }
}

/// The metrics whose 1-minute means a fleet keeps for 24 h: the status page's charts
/// and what the groups' policies read ([`Histories::of_groups`]). A metric outside the
/// set keeps its raw samples only (2.8 KiB less per VM for a ratio, 5.6 KiB for other
/// figures); one added by a reload starts its history then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Histories(u16);

impl Histories {
    /// Every metric that can have a history.
    pub const ALL: Histories = Histories(
        (1 << Metric::CpuUtilization as u16)
            | (1 << Metric::MemoryUsedRatio as u16)
            | (1 << Metric::PsiCpuSomeAvg10 as u16)
            | (1 << Metric::PsiMemorySomeAvg10 as u16)
            | (1 << Metric::RequestsPerSecond as u16)
            | (1 << Metric::RequestsPerSecondPerVcpu as u16)
            | (1 << Metric::ServerErrorRatio as u16)
            | (1 << Metric::LatencyP95Seconds as u16)
            | (1 << Metric::PhpFpmListenQueue as u16),
    );

    /// What the status page charts over 24 h (CPU, memory, requests per second); also
    /// what scale-down evidence reads (CPU and memory).
    pub const CHARTED: Histories = Histories(
        (1 << Metric::CpuUtilization as u16)
            | (1 << Metric::MemoryUsedRatio as u16)
            | (1 << Metric::RequestsPerSecond as u16),
    );

    /// The set with `metric` added (a metric without a [`Metric::history`] is not).
    pub fn with(self, metric: Metric) -> Self {
        Histories((self.0 | 1 << metric.index()) & Self::ALL.0)
    }

    /// Whether `metric`'s 1-minute means are kept.
    pub fn contains(self, metric: Metric) -> bool {
        self.0 & (1 << metric.index()) != 0
    }

    /// The set as bits (to share it in an atomic).
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The set of `bits` (from [`Histories::bits`]).
    pub fn from_bits(bits: u16) -> Self {
        Histories(bits & Self::ALL.0)
    }

    /// What the status page charts and what `groups`' rules and targets read (every
    /// metric a rule or target names, whatever its window: a forecast, a `max` or a
    /// 1-minute series reads 1-minute means even over a few minutes).
    pub fn of_groups(groups: &[GroupPolicy]) -> Self {
        groups
            .iter()
            .flat_map(|g| {
                let rules = g.rules.iter().map(|r| r.metric);
                rules.chain(g.targets.iter().map(|t| t.metric))
            })
            .fold(Self::CHARTED, |set, metric| {
                set.with(super::view::window_metric(metric))
            })
    }

    /// The metrics in the set, in [`Metric::ALL`] order.
    pub fn metrics(self) -> impl Iterator<Item = Metric> {
        Metric::ALL.into_iter().filter(move |m| self.contains(*m))
    }
}

impl Default for Histories {
    fn default() -> Self {
        Self::ALL
    }
}

/// Where a metric's value is in a [`RawSample`].
#[derive(Debug, Clone, Copy)]
enum RawSlot {
    Ratio(usize),
    Magnitude(usize),
}

/// Steps of one in a [`History::Ratio`] minute.
const RATIO_STEPS: f64 = 60_000.0;
/// No value, in a [`History::Ratio`] slot.
const RATIO_ABSENT: u16 = u16::MAX;

fn ratio_to_steps(value: Option<f64>) -> u16 {
    // In range by validation; the clamp keeps the sentinel out of reach.
    value.map_or(RATIO_ABSENT, |v| {
        (v.clamp(0.0, 1.0) * RATIO_STEPS).round() as u16
    })
}

fn ratio_of_steps(steps: u16) -> Option<f64> {
    (steps != RATIO_ABSENT).then(|| f64::from(steps) / RATIO_STEPS)
}

fn magnitude_to_f32(value: Option<f64>) -> f32 {
    value.map_or(f32::NAN, |v| v as f32)
}

fn magnitude_of_f32(v: f32) -> Option<f64> {
    (!v.is_nan()).then_some(f64::from(v))
}

/// One metric's 1-minute means over [`BUCKET_MINUTES`], in a ring allocated once, at
/// the metric's first value (a VM without web sources never pays for their rings).
/// Minute `m` lives in slot `m mod BUCKET_MINUTES`.
#[derive(Debug, Clone)]
enum Ring {
    Ratio(Box<[u16]>),
    /// NaN marks a minute without a value.
    Magnitude(Box<[f32]>),
}

const RING_LEN: usize = BUCKET_MINUTES as usize;

fn slot(minute: i64) -> usize {
    minute.rem_euclid(BUCKET_MINUTES) as usize
}

impl Ring {
    fn new(kind: History) -> Self {
        match kind {
            History::Ratio => Ring::Ratio(vec![RATIO_ABSENT; RING_LEN].into_boxed_slice()),
            History::Magnitude => Ring::Magnitude(vec![f32::NAN; RING_LEN].into_boxed_slice()),
        }
    }

    fn get(&self, minute: i64) -> Option<f64> {
        match self {
            Ring::Ratio(slots) => ratio_of_steps(slots[slot(minute)]),
            Ring::Magnitude(slots) => magnitude_of_f32(slots[slot(minute)]),
        }
    }

    fn set(&mut self, minute: i64, value: Option<f64>) {
        match self {
            Ring::Ratio(slots) => slots[slot(minute)] = ratio_to_steps(value),
            Ring::Magnitude(slots) => slots[slot(minute)] = magnitude_to_f32(value),
        }
    }

    /// The ring's heap bytes.
    fn bytes(&self) -> usize {
        match self {
            Ring::Ratio(slots) => std::mem::size_of_val::<[u16]>(slots),
            Ring::Magnitude(slots) => std::mem::size_of_val::<[f32]>(slots),
        }
    }
}

/// The metrics with a history, in [`Metric::ALL`] order, and their count.
const HISTORY_METRICS: [Metric; 9] = [
    Metric::CpuUtilization,
    Metric::MemoryUsedRatio,
    Metric::PsiCpuSomeAvg10,
    Metric::PsiMemorySomeAvg10,
    Metric::RequestsPerSecond,
    Metric::RequestsPerSecondPerVcpu,
    Metric::ServerErrorRatio,
    Metric::LatencyP95Seconds,
    Metric::PhpFpmListenQueue,
];

/// Where `metric`'s history is in [`HISTORY_METRICS`].
fn history_index(metric: Metric) -> Option<usize> {
    HISTORY_METRICS.iter().position(|m| *m == metric)
}

/// Milliseconds in [`RAW_RESOLUTION`] and [`RAW_RETENTION`].
const RESOLUTION_MS: u64 = RAW_RESOLUTION.as_millis() as u64;
const RETENTION_MS: u64 = RAW_RETENTION.as_millis() as u64;

/// A [`RawSample`]'s stamp: its time in milliseconds since the Unix epoch (42 bits, to
/// the year 2109), its span (13 bits of milliseconds) and its sample count (9 bits).
const SPAN_BITS: u32 = 13;
const COUNT_BITS: u32 = 9;
const TIME_SHIFT: u32 = SPAN_BITS + COUNT_BITS;
const MAX_MS: u64 = u64::MAX >> TIME_SHIFT;
const MAX_SPAN_MS: u64 = (1 << SPAN_BITS) - 1;
const MAX_COUNT: u64 = (1 << COUNT_BITS) - 1;
// A slot's span is shorter than the resolution, and never saturates.
const _: () = assert!(RESOLUTION_MS <= MAX_SPAN_MS);

/// One raw slot: the mean of the samples merged into it, as compact as the rings: 48
/// bytes (a stamp, 8 ratios, 6 other figures) instead of 120 with every value an `f64`.
#[derive(Debug, Clone, Copy)]
struct RawSample {
    /// The newest sample's time, the time since the first and how many were merged.
    /// To the millisecond, as agents stamp their samples.
    stamp: u64,
    /// The ratios (see [`History::Ratio`]).
    ratios: [u16; 8],
    /// The other figures (see [`History::Magnitude`]); NaN marks an absent value.
    magnitudes: [f32; 6],
}

impl RawSample {
    /// A slot of the one sample `values` taken at `ms`.
    fn new(ms: u64, values: &MetricValues) -> Self {
        let mut sample = Self {
            stamp: 0,
            ratios: [RATIO_ABSENT; 8],
            magnitudes: [f32::NAN; 6],
        };
        sample.set(ms, 0, 1, |metric| values.get(metric));
        sample
    }

    /// Stamps the slot and stores every metric's `value`.
    fn set(&mut self, ms: u64, span: u64, count: u64, value: impl Fn(Metric) -> Option<f64>) {
        self.stamp = ms.min(MAX_MS) << TIME_SHIFT
            | span.min(MAX_SPAN_MS) << COUNT_BITS
            | count.min(MAX_COUNT);
        for metric in Metric::ALL {
            let value = value(metric);
            match metric.raw_slot() {
                RawSlot::Ratio(i) => self.ratios[i] = ratio_to_steps(value),
                RawSlot::Magnitude(i) => self.magnitudes[i] = magnitude_to_f32(value),
            }
        }
    }

    /// Averages one more sample, taken at `ms`, into the slot: `open` holds the sums
    /// of all its samples, this one's included.
    fn merge(&mut self, ms: u64, open: &Open) {
        let span = ms - self.first_ms();
        self.set(ms, span, self.count() + 1, |metric| open.mean(metric));
    }

    /// The newest sample's time, in milliseconds since the Unix epoch.
    fn ms(&self) -> u64 {
        self.stamp >> TIME_SHIFT
    }

    /// The first sample's time, in milliseconds since the Unix epoch.
    fn first_ms(&self) -> u64 {
        self.ms() - (self.stamp >> COUNT_BITS & MAX_SPAN_MS)
    }

    /// How many samples were merged (saturated at 511).
    fn count(&self) -> u64 {
        self.stamp & MAX_COUNT
    }

    /// The newest sample's time.
    fn time(&self) -> SystemTime {
        time_of(self.ms())
    }

    fn get(&self, metric: Metric) -> Option<f64> {
        match metric.raw_slot() {
            RawSlot::Ratio(i) => ratio_of_steps(self.ratios[i]),
            RawSlot::Magnitude(i) => magnitude_of_f32(self.magnitudes[i]),
        }
    }
}

/// The samples of the ring's newest slot in full precision, which its means are
/// rewritten from as samples merge into it. Allocated at the first merge: a VM whose
/// samples are each a slot of their own (an interval of [`RAW_RESOLUTION`] or more)
/// never pays for it.
#[derive(Debug, Clone)]
struct Open {
    sums: [f64; METRIC_COUNT],
    counts: [u32; METRIC_COUNT],
}

impl Open {
    /// The sums of `slot`, a slot of one sample (no slot held more before the first
    /// merge): its values as stored, within the slot's own precision.
    fn of(slot: &RawSample) -> Self {
        let mut open = Self {
            sums: [0.0; METRIC_COUNT],
            counts: [0; METRIC_COUNT],
        };
        for metric in Metric::ALL {
            open.add_one(metric, slot.get(metric));
        }
        open
    }

    /// Starts over with the one sample `values`.
    fn start(&mut self, values: &MetricValues) {
        self.sums = [0.0; METRIC_COUNT];
        self.counts = [0; METRIC_COUNT];
        self.add(values);
    }

    /// Adds the sample `values`.
    fn add(&mut self, values: &MetricValues) {
        for metric in Metric::ALL {
            self.add_one(metric, values.get(metric));
        }
    }

    fn add_one(&mut self, metric: Metric, value: Option<f64>) {
        if let Some(v) = value {
            self.sums[metric.index()] += v;
            self.counts[metric.index()] = self.counts[metric.index()].saturating_add(1);
        }
    }

    /// The mean of `metric` over the samples that have it.
    fn mean(&self, metric: Metric) -> Option<f64> {
        let count = self.counts[metric.index()];
        (count > 0).then(|| self.sums[metric.index()] / f64::from(count))
    }
}

/// `t` in milliseconds since the Unix epoch (rounded down, saturated in 2109).
fn millis_of(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .min(MAX_MS)
}

fn time_of(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Weighed sums over raw slots, each slot's value counted once per sample merged into
/// it: the one sum behind [`Windows::mean`] and [`Windows::means`] alike, so both give
/// the same answers. Ratios are summed in whole steps, exactly.
#[derive(Debug, Clone, Copy, Default)]
struct RawSums {
    ratio_steps: [u64; 8],
    ratio_samples: [u64; 8],
    magnitudes: [f64; 6],
    magnitude_samples: [u64; 6],
}

impl RawSums {
    /// Adds every metric of `slot`. Without branches: a scrape adds about 70 slots of
    /// every VM.
    fn add(&mut self, slot: &RawSample) {
        let count = slot.count();
        for (i, &steps) in slot.ratios.iter().enumerate() {
            self.add_ratio(i, steps, count);
        }
        for (i, &value) in slot.magnitudes.iter().enumerate() {
            self.add_magnitude(i, value, count);
        }
    }

    /// Adds one metric of `slot`.
    fn add_one(&mut self, slot: &RawSample, at: RawSlot) {
        match at {
            RawSlot::Ratio(i) => self.add_ratio(i, slot.ratios[i], slot.count()),
            RawSlot::Magnitude(i) => self.add_magnitude(i, slot.magnitudes[i], slot.count()),
        }
    }

    fn add_ratio(&mut self, i: usize, steps: u16, count: u64) {
        let weight = if steps == RATIO_ABSENT { 0 } else { count };
        self.ratio_steps[i] += u64::from(steps) * weight;
        self.ratio_samples[i] += weight;
    }

    fn add_magnitude(&mut self, i: usize, value: f32, count: u64) {
        let (value, weight) = if value.is_nan() {
            (0.0, 0)
        } else {
            (f64::from(value), count)
        };
        self.magnitudes[i] += value * weight as f64;
        self.magnitude_samples[i] += weight;
    }

    /// One metric's mean, or `None` without a sample.
    fn mean(&self, at: RawSlot) -> Option<f64> {
        match at {
            RawSlot::Ratio(i) => (self.ratio_samples[i] > 0)
                .then(|| self.ratio_steps[i] as f64 / self.ratio_samples[i] as f64 / RATIO_STEPS),
            RawSlot::Magnitude(i) => (self.magnitude_samples[i] > 0)
                .then(|| self.magnitudes[i] / self.magnitude_samples[i] as f64),
        }
    }

    /// Every metric's mean.
    fn values(&self) -> MetricValues {
        let mut values = MetricValues::default();
        for metric in Metric::ALL {
            values.set(metric, self.mean(metric.raw_slot()));
        }
        values
    }
}

/// Sum and count of one metric in the current minute, in full precision.
#[derive(Debug, Clone, Copy, Default)]
struct Running {
    sum: f64,
    count: u32,
}

impl Running {
    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / f64::from(self.count))
    }
}

/// The 1-minute means of the metrics with a history: finished minutes in one ring per
/// metric, the current minute as running sums.
#[derive(Debug, Clone, Default)]
struct Minutes {
    /// The current minute (minutes since the Unix epoch); `None` before any sample.
    current: Option<i64>,
    /// The first minute with a sample: nothing before it was ever held.
    first: i64,
    running: [Running; HISTORY_METRICS.len()],
    rings: [Option<Ring>; HISTORY_METRICS.len()],
    /// The metrics whose minutes are kept, as of the latest sample.
    kept: Histories,
}

impl Minutes {
    /// Adds `values` sampled in `minute` (never before the current one); a finished
    /// minute starts the ring of a metric in `kept` that has none yet.
    fn push(&mut self, minute: i64, values: &MetricValues, kept: Histories) {
        match self.current {
            None => {
                self.current = Some(minute);
                self.first = minute;
            }
            Some(current) if minute > current => {
                self.finish(current, kept);
                // Minutes skipped without a sample must not show what their slots held
                // a day ago.
                let skipped = (minute - current - 1).min(BUCKET_MINUTES);
                for ring in self.rings.iter_mut().flatten() {
                    for m in current + 1..=current + skipped {
                        ring.set(m, None);
                    }
                }
                self.current = Some(minute);
            }
            Some(_) => {}
        }
        self.kept = kept;
        for (running, metric) in self.running.iter_mut().zip(HISTORY_METRICS) {
            if let Some(v) = values.get(metric)
                && kept.contains(metric)
            {
                running.sum += v;
                running.count += 1;
            }
        }
    }

    /// Moves the current minute's means into the rings.
    fn finish(&mut self, minute: i64, kept: Histories) {
        for ((running, ring), metric) in self
            .running
            .iter_mut()
            .zip(self.rings.iter_mut())
            .zip(HISTORY_METRICS)
        {
            let mean = running.mean();
            if !kept.contains(metric) {
                // No longer read over minutes (a reload): its memory goes back.
                *ring = None;
            } else if mean.is_some()
                && ring.is_none()
                && let Some(kind) = metric.history()
            {
                *ring = Some(Ring::new(kind));
            }
            if let Some(ring) = ring {
                ring.set(minute, mean);
            }
            *running = Running::default();
        }
    }

    /// The oldest minute still held.
    fn oldest(&self) -> Option<i64> {
        self.current
            .map(|current| (current - BUCKET_MINUTES + 1).max(self.first))
    }

    /// The mean of history metric `index` in `minute`, if held and sampled.
    fn mean(&self, index: usize, minute: i64) -> Option<f64> {
        let current = self.current?;
        if minute == current {
            // A metric no longer kept has no current minute either (a kept one's
            // is there before its ring, which its first finished minute starts).
            return self
                .kept
                .contains(HISTORY_METRICS[index])
                .then(|| self.running[index].mean())
                .flatten();
        }
        if minute > current || minute < self.oldest()? {
            return None;
        }
        self.rings[index].as_ref()?.get(minute)
    }

    /// Minutes held, the current one included.
    fn len(&self) -> usize {
        match (self.current, self.oldest()) {
            (Some(current), Some(oldest)) => (current - oldest + 1) as usize,
            _ => 0,
        }
    }
}

/// One VM's windows. Samples must arrive in time order; [`Windows::push`] clamps them
/// so that they do.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    raw: VecDeque<RawSample>,
    /// The newest evicted raw slot's time: the ring holds every sample after it.
    /// `None` while nothing has been evicted (the ring holds the whole history).
    raw_horizon: Option<SystemTime>,
    /// The newest slot's sums, once a sample has merged into a slot.
    open: Option<Box<Open>>,
    minutes: Minutes,
}

fn minute_of(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 60) as i64,
        Err(_) => 0,
    }
}

fn minute_start(minute: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(minute.max(0) as u64 * 60)
}

impl Windows {
    /// Records the values sampled at `t`, keeping a history for every metric that can
    /// have one (see [`Windows::record`]).
    pub fn push(&mut self, t: SystemTime, values: &MetricValues) {
        self.record(t, values, Histories::ALL);
    }

    /// Records the values sampled at `t` (to the millisecond); of the metrics with a
    /// history, only those in `kept` start one. A `t` before the newest sample is moved
    /// up to it (the rings stay ordered); the caller clamps `t` to its clock. A sample
    /// less than [`RAW_RESOLUTION`] after the newest slot's first is averaged into it.
    pub fn record(&mut self, t: SystemTime, values: &MetricValues, kept: Histories) {
        let ms = millis_of(t).max(self.raw.back().map_or(0, RawSample::ms));
        // A slot being merged into is never evicted: it began less than the resolution
        // ago, well within the retention.
        let oldest_kept = ms.saturating_sub(RETENTION_MS);
        while let Some(first) = self.raw.front() {
            if first.ms() > oldest_kept {
                break;
            }
            self.raw_horizon = Some(first.time());
            self.raw.pop_front();
        }
        match self.raw.back_mut() {
            Some(last) if ms - last.first_ms() < RESOLUTION_MS => {
                let open = self.open.get_or_insert_with(|| Box::new(Open::of(last)));
                open.add(values);
                last.merge(ms, open);
            }
            _ => {
                // The resolution keeps the ring within the cap; this keeps it a bound.
                if self.raw.len() >= RAW_CAP
                    && let Some(first) = self.raw.pop_front()
                {
                    self.raw_horizon = Some(first.time());
                }
                if self.raw.len() == self.raw.capacity() {
                    // Grow by an eighth rather than double: the ring settles a little
                    // above what the agent's interval fills in RAW_RETENTION, not up
                    // to twice that (and never above the cap).
                    let len = self.raw.len();
                    self.raw.reserve_exact((len / 8 + 4).min(RAW_CAP - len));
                }
                self.raw.push_back(RawSample::new(ms, values));
                if let Some(open) = &mut self.open {
                    open.start(values);
                }
            }
        }
        self.minutes.push(minute_of(time_of(ms)), values, kept);
    }

    /// Whether the raw ring holds every sample of `range`.
    fn raw_holds(&self, range: &TimeRange) -> bool {
        self.raw_horizon.is_none_or(|h| range.start >= h)
    }

    /// The raw slots of `metric` in `range`, oldest first: each slot's time and mean
    /// (empty when the ring no longer holds the whole range).
    pub fn samples(
        &self,
        metric: Metric,
        range: TimeRange,
    ) -> impl Iterator<Item = (SystemTime, f64)> + '_ {
        self.raw_in(range)
            .filter_map(move |s| s.get(metric).map(|v| (s.time(), v)))
    }

    /// The raw slots whose time lies in `range`, oldest first (none when the ring no
    /// longer holds the whole range). The ring is in time order: both ends are found
    /// by bisection.
    fn raw_in(&self, range: TimeRange) -> std::collections::vec_deque::Iter<'_, RawSample> {
        // Whole milliseconds against the range's bounds rounded down: the same answers
        // as comparing the times themselves.
        let last = self.raw_until(range.end);
        let first = if self.raw_holds(&range) {
            let start = millis_of(range.start);
            self.raw.partition_point(|s| s.ms() <= start).min(last)
        } else {
            last
        };
        self.raw.range(first..last)
    }

    /// How many raw slots are at or before `end`.
    fn raw_until(&self, end: SystemTime) -> usize {
        let end = millis_of(end);
        self.raw.partition_point(|s| s.ms() <= end)
    }

    /// The mean of every metric over `range`, each as [`Windows::mean`] gives it, in
    /// one pass over the raw ring.
    pub fn means(&self, range: TimeRange) -> MetricValues {
        let [values] = self.means_since([range.start], range.end);
        values
    }

    /// The mean of every metric over each range from one of `starts` to `end`, each as
    /// [`Windows::mean`] gives it. The raw slots are summed once, newest first: a
    /// scrape reads every VM's 1- and 5-minute means, and the first range is the
    /// newest part of the second.
    pub fn means_since<const N: usize>(
        &self,
        starts: [SystemTime; N],
        end: SystemTime,
    ) -> [MetricValues; N] {
        let mut order: [usize; N] = std::array::from_fn(|k| k);
        order.sort_unstable_by_key(|&k| std::cmp::Reverse(starts[k]));
        let mut slots = self.raw.range(..self.raw_until(end)).rev().peekable();
        let mut sums = RawSums::default();
        let mut out = [MetricValues::default(); N];
        for k in order {
            let range = TimeRange {
                start: starts[k],
                end,
            };
            if self.raw_holds(&range) {
                let start = millis_of(range.start);
                while let Some(slot) = slots.next_if(|s| s.ms() > start) {
                    sums.add(slot);
                }
                out[k] = sums.values();
            } else {
                for metric in Metric::ALL {
                    out[k].set(metric, self.mean(metric, range));
                }
            }
        }
        out
    }

    /// The minutes that overlap `range` (whole minutes, the current one included).
    fn minutes_in(range: TimeRange) -> std::ops::RangeInclusive<i64> {
        minute_of(range.start)..=minute_of(range.end)
    }

    /// The mean of `metric` over `range`, or `None` without a sample: of the raw slots
    /// in the range, each weighed by its samples. A range the raw ring no longer holds
    /// gets the mean of the 1-minute means that overlap it (metrics with a
    /// [`Metric::history`] only).
    pub fn mean(&self, metric: Metric, range: TimeRange) -> Option<f64> {
        if self.raw_holds(&range) {
            // Newest first, as `means_since` sums.
            let at = metric.raw_slot();
            let mut sums = RawSums::default();
            for slot in self.raw_in(range).rev() {
                sums.add_one(slot, at);
            }
            return sums.mean(at);
        }
        let (sum, count) = self
            .minute_means(metric, range)
            .into_iter()
            .fold((0.0, 0u64), |(s, c), (_, v)| (s + v, c + 1));
        (count > 0).then(|| sum / count as f64)
    }

    /// The largest raw slot of `metric` in `range` (a sample's value, or the mean of
    /// the samples less than [`RAW_RESOLUTION`] apart merged into it), or `None`
    /// without a sample. A range the raw ring no longer holds gets the largest 1-minute
    /// mean that overlaps it.
    pub fn max(&self, metric: Metric, range: TimeRange) -> Option<f64> {
        if self.raw_holds(&range) {
            return self.samples(metric, range).map(|(_, v)| v).reduce(f64::max);
        }
        self.minute_means(metric, range)
            .into_iter()
            .map(|(_, v)| v)
            .reduce(f64::max)
    }

    /// The per-minute means of `metric` for the minutes that overlap `range` and have a
    /// sample: `(start of the minute, mean)`, oldest first. Empty for a metric without
    /// a [`Metric::history`].
    pub fn minute_means(&self, metric: Metric, range: TimeRange) -> Vec<(SystemTime, f64)> {
        let Some(index) = history_index(metric) else {
            return Vec::new();
        };
        let (Some(oldest), Some(current)) = (self.minutes.oldest(), self.minutes.current) else {
            return Vec::new();
        };
        let wanted = Self::minutes_in(range);
        let from = (*wanted.start()).max(oldest);
        let to = (*wanted.end()).min(current);
        (from..=to)
            .filter_map(|m| {
                self.minutes
                    .mean(index, m)
                    .map(|mean| (minute_start(m), mean))
            })
            .collect()
    }

    /// A chart of `metric` over `range`: the 1-minute means of the minutes before the
    /// raw ring's oldest slot, then the raw slots. A VM that just appeared has a
    /// line after two reports instead of one dot per minute; oldest first.
    pub fn chart(&self, metric: Metric, range: TimeRange) -> Vec<(SystemTime, f64)> {
        let Some(raw_start) = self.raw.front().map(RawSample::time) else {
            return self.minute_means(metric, range);
        };
        let mut points: Vec<_> = self
            .minute_means(metric, range)
            .into_iter()
            .filter(|(start, _)| *start + Duration::from_secs(60) <= raw_start)
            .collect();
        let recent = TimeRange {
            start: range.start.max(raw_start - Duration::from_nanos(1)),
            end: range.end,
        };
        points.extend(self.samples(metric, recent));
        points
    }

    /// The `q`-quantile (0..=1, nearest rank) of the per-minute means of `metric` in
    /// `range`, e.g. the p95 of 1-minute CPU over 24 h.
    pub fn quantile_of_minute_means(
        &self,
        metric: Metric,
        range: TimeRange,
        q: f64,
    ) -> Option<f64> {
        let mut means: Vec<f64> = self
            .minute_means(metric, range)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        if means.is_empty() || !(0.0..=1.0).contains(&q) {
            return None;
        }
        means.sort_by(f64::total_cmp);
        let rank = (q * means.len() as f64).ceil() as usize;
        means.get(rank.saturating_sub(1)).copied()
    }

    /// Whether `metric` was reported throughout `range`: no stretch without it longer
    /// than `max_gap` (from the range's start to its end). Ranges the raw ring holds
    /// are checked slot by slot (from a slot's newest sample to the next one's first;
    /// the gaps within a slot, shorter than [`RAW_RESOLUTION`], are not seen); longer
    /// ones minute by minute (every minute from the range's start to `end − max_gap`
    /// has a sample), for metrics with a [`Metric::history`] only.
    pub fn covers(&self, metric: Metric, range: TimeRange, max_gap: Duration) -> bool {
        if range.end <= range.start {
            return false;
        }
        let gap_ok = |from: SystemTime, to: SystemTime| {
            to.duration_since(from).map_or(true, |gap| gap <= max_gap)
        };
        if self.raw_holds(&range) {
            let mut previous = range.start;
            for slot in self.raw_in(range).filter(|s| s.get(metric).is_some()) {
                if !gap_ok(previous, time_of(slot.first_ms())) {
                    return false;
                }
                previous = slot.time();
            }
            return previous > range.start && gap_ok(previous, range.end);
        }
        let Some(index) = history_index(metric) else {
            return false;
        };
        let first = minute_of(range.start);
        let last = minute_of(range.end.checked_sub(max_gap).unwrap_or(range.start)).max(first);
        (first..=last).all(|m| self.minutes.mean(index, m).is_some())
    }

    /// The newest sample's time.
    pub fn last_sample_at(&self) -> Option<SystemTime> {
        self.raw.back().map(RawSample::time)
    }

    /// How many raw slots and minutes are held (for tests and bounds).
    pub fn len(&self) -> (usize, usize) {
        (self.raw.len(), self.minutes.len())
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The bytes the windows hold on the heap (the raw ring's capacity, the newest
    /// slot's sums and the history rings), for the memory figures of the benches.
    pub fn heap_bytes(&self) -> usize {
        self.raw.capacity() * std::mem::size_of::<RawSample>()
            + self
                .open
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<Open>())
            + self
                .minutes
                .rings
                .iter()
                .flatten()
                .map(Ring::bytes)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute boundary, so that bucket arithmetic in tests is easy to follow.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_040)
    }

    fn at(secs: u64) -> SystemTime {
        t0() + Duration::from_secs(secs)
    }

    fn cpu(v: f64) -> MetricValues {
        let mut values = MetricValues::default();
        values.set(Metric::CpuUtilization, Some(v));
        values
    }

    /// Samples every `step` seconds from `from` to `to` (inclusive) with `value(t)`.
    fn fill(w: &mut Windows, from: u64, to: u64, step: u64, value: impl Fn(u64) -> f64) {
        let mut s = from;
        while s <= to {
            w.push(at(s), &cpu(value(s)));
            s += step;
        }
    }

    #[test]
    fn one_and_five_minute_means_come_from_raw_samples() {
        let mut w = Windows::default();
        // 4 minutes at 0.2, then 1 minute at 0.8, every 5 s.
        fill(&mut w, 5, 240, 5, |_| 0.2);
        fill(&mut w, 245, 300, 5, |_| 0.8);
        let now = at(300);
        let m1 = w.mean(
            Metric::CpuUtilization,
            TimeRange::last(Duration::from_secs(60), now),
        );
        let m5 = w.mean(
            Metric::CpuUtilization,
            TimeRange::last(Duration::from_secs(300), now),
        );
        assert!((m1.unwrap() - 0.8).abs() < 1e-9, "{m1:?}");
        assert!(
            (m5.unwrap() - (48.0 * 0.2 + 12.0 * 0.8) / 60.0).abs() < 1e-9,
            "{m5:?}"
        );
        assert_eq!(
            w.max(
                Metric::CpuUtilization,
                TimeRange::last(Duration::from_secs(300), now)
            ),
            Some(0.8)
        );
        // A metric never reported has no mean.
        assert_eq!(
            w.mean(
                Metric::CpuSteal,
                TimeRange::last(Duration::from_secs(60), now)
            ),
            None
        );
    }

    #[test]
    fn every_mean_at_once_is_each_mean_alone() {
        let mut w = Windows::default();
        // Ten minutes every 3 s; steal only every other sample, memory in the first
        // half only, so counts differ per metric and some ranges hold none.
        for i in 0..200u64 {
            let mut values = cpu(((i * 37) % 100) as f64 / 100.0);
            if i % 2 == 0 {
                values.set(Metric::CpuSteal, Some(((i * 11) % 7) as f64 / 50.0));
            }
            if i < 100 {
                values.set(Metric::MemoryUsedRatio, Some(0.5 + i as f64 / 1000.0));
            }
            if i % 3 != 0 {
                values.set(
                    Metric::RequestsPerSecond,
                    Some(((i * 13) % 29) as f64 * 7.3),
                );
            }
            w.push(at(3 + 3 * i), &values);
        }
        let now = at(600);
        // In the ring, on a sample's exact time, past the newest, empty, and older
        // than the raw ring (minute means).
        for (start, end) in [
            (540, 600),
            (300, 600),
            (303, 450),
            (600, 700),
            (0, 9),
            (0, 600),
        ] {
            let range = TimeRange {
                start: at(start),
                end: at(end),
            };
            let all = w.means(range);
            for metric in Metric::ALL {
                assert_eq!(
                    all.get(metric),
                    w.mean(metric, range),
                    "{metric:?} {range:?}"
                );
            }
        }
        assert!(
            w.means(TimeRange::last(Duration::from_secs(60), now))
                .get(Metric::CpuSteal)
                .is_some()
        );
        // Several ranges ending together, in any order, one of them older than the
        // raw ring: each as if alone.
        let starts = [at(300), at(540), at(0), at(599), at(540)];
        let together = w.means_since(starts, now);
        for (start, values) in starts.into_iter().zip(together) {
            let range = TimeRange { start, end: now };
            assert_eq!(values, w.means(range), "{range:?}");
            assert!(values.get(Metric::RequestsPerSecond).is_some(), "{range:?}");
        }
    }

    #[test]
    fn raw_ring_is_bounded_in_time_and_count() {
        // An hour at 1 s: slots of five samples, the newest 6 minutes of them.
        let mut w = Windows::default();
        fill(&mut w, 1, 3600, 1, |_| 0.5);
        let (raw, buckets) = w.len();
        assert_eq!(raw, 72);
        assert_eq!(buckets, 61);
        assert_eq!(w.raw_horizon, Some(at(3240)));
        assert!(w.raw_holds(&TimeRange::last(Duration::from_secs(300), at(3600))));

        // Ten minutes every 10 ms: slots of 4.5 s, still six minutes of them.
        let mut fast = Windows::default();
        for i in 0..60_000u64 {
            fast.push(t0() + Duration::from_millis(i * 10), &cpu(0.5));
        }
        let (raw, _) = fast.len();
        assert!((80..=RAW_CAP).contains(&raw), "{raw}");
        let full = fast.raw.range(..raw - 1);
        assert!(
            full.into_iter().all(|s| s.count() == 450),
            "4.5 s of samples each"
        );
        let now = t0() + Duration::from_millis(599_990);
        assert!(fast.raw_holds(&TimeRange::last(Duration::from_secs(300), now)));
        assert!(fast.heap_bytes() <= RAW_CAP * 48 + std::mem::size_of::<Open>() + RING_LEN * 2);
    }

    #[test]
    fn a_five_second_agent_keeps_every_sample_despite_jitter() {
        // Samples 5 s apart give or take 300 ms: never merged.
        let mut w = Windows::default();
        for i in 1..=100u64 {
            let jitter = if i % 2 == 0 { 300 } else { 0 };
            w.push(t0() + Duration::from_millis(i * 5000 - jitter), &cpu(0.5));
        }
        assert!(w.raw.iter().all(|s| s.count() == 1));
        assert_eq!(w.len().0, 72);
        assert!(
            w.open.is_none(),
            "no sums kept for a slot never merged into"
        );
    }

    /// A second's sample of CPU (on the ratio's steps, so that it is stored exactly),
    /// memory and requests per second: what the shipped policies keep histories of.
    fn second(s: u64) -> MetricValues {
        let mut values = cpu((s * 37 % 100) as f64 / 100.0);
        values.set(Metric::MemoryUsedRatio, Some(0.5 + (s % 7) as f64 / 100.0));
        values.set(
            Metric::RequestsPerSecond,
            Some(100.0 + (s * 13 % 50) as f64 / 3.0),
        );
        values
    }

    #[test]
    fn at_one_second_a_slot_is_the_mean_of_its_five_samples() {
        let mut w = Windows::default();
        for s in 1..=30 {
            w.push(at(s), &second(s));
        }
        let slots: Vec<_> = w.raw.iter().collect();
        assert_eq!(slots.len(), 6);
        for (k, slot) in slots.iter().enumerate() {
            let seconds = 5 * k as u64 + 1..=5 * k as u64 + 5;
            assert_eq!(
                slot.time(),
                at(*seconds.end()),
                "a slot's time is its newest"
            );
            assert_eq!(time_of(slot.first_ms()), at(*seconds.start()));
            assert_eq!(slot.count(), 5);
            for metric in [
                Metric::CpuUtilization,
                Metric::MemoryUsedRatio,
                Metric::RequestsPerSecond,
            ] {
                let mean = seconds
                    .clone()
                    .map(|s| second(s).get(metric).unwrap())
                    .sum::<f64>()
                    / 5.0;
                let stored = slot.get(metric).unwrap();
                let precision = match metric.kind() {
                    History::Ratio => 0.5 / RATIO_STEPS,
                    History::Magnitude => mean * 1e-7,
                };
                assert!(
                    (stored - mean).abs() <= precision,
                    "slot {k} {metric:?}: {stored} for {mean}"
                );
            }
            assert_eq!(slot.get(Metric::CpuSteal), None, "absent stays absent");
        }
    }

    #[test]
    fn queries_at_one_second_read_whole_slots_by_their_newest_sample() {
        let mut w = Windows::default();
        // CPU s/1000 at second s; slots are seconds 1-5, 6-10, ..., 96-100.
        fill(&mut w, 1, 100, 1, |s| s as f64 / 1000.0);
        let mean_of_seconds = |from: u64, to: u64| {
            (from..=to).map(|s| s as f64 / 1000.0).sum::<f64>() / (to - from + 1) as f64
        };
        let range = |start, end| TimeRange {
            start: at(start),
            end: at(end),
        };
        let cases = [
            // The last minute: slots 41-45 to 96-100.
            ((40, 100), (41, 100)),
            // Starting within slot 41-45 (at 42): its time, 45, is in the range, so
            // the whole slot counts.
            ((42, 100), (41, 100)),
            // Starting on its time: it is out, whole.
            ((45, 100), (46, 100)),
            // Ending within slot 96-100 (at 98): its time is not in the range.
            ((38, 98), (36, 95)),
        ];
        for ((start, end), (from, to)) in cases {
            let mean = w.mean(Metric::CpuUtilization, range(start, end)).unwrap();
            let expected = mean_of_seconds(from, to);
            assert!((mean - expected).abs() < 1e-9, "({start}, {end}]: {mean}");
            assert_eq!(
                w.means(range(start, end)).get(Metric::CpuUtilization),
                Some(mean)
            );
        }
        // The newest slot being filled counts by its samples: two seconds out of 62.
        fill(&mut w, 101, 102, 1, |_| 0.9);
        let mean = w.mean(Metric::CpuUtilization, range(40, 102)).unwrap();
        let expected = (mean_of_seconds(41, 100) * 60.0 + 2.0 * 0.9) / 62.0;
        assert!((mean - expected).abs() < 1e-9, "{mean} for {expected}");
        // The max is the largest slot mean: a slot's spike is averaged.
        let last_minute = range(40, 100);
        let max = w.max(Metric::CpuUtilization, last_minute).unwrap();
        assert!((max - mean_of_seconds(96, 100)).abs() < 1e-9, "{max}");
        // Coverage at a 1 s agent's 3 s gap: the slots follow each other 1 s apart.
        let max_gap = Duration::from_secs(3);
        assert!(w.covers(Metric::CpuUtilization, last_minute, max_gap));
        assert!(!w.covers(Metric::CpuUtilization, range(40, 106), max_gap));
        // A 4 s hole between two slots (seconds 51-53 missing) is seen.
        let mut holed = Windows::default();
        fill(&mut holed, 1, 50, 1, |_| 0.5);
        fill(&mut holed, 54, 100, 1, |_| 0.5);
        assert!(!holed.covers(Metric::CpuUtilization, last_minute, max_gap));
        assert!(holed.covers(Metric::CpuUtilization, range(54, 100), max_gap));
    }

    #[test]
    fn at_one_second_a_day_costs_at_most_16_kib() {
        let mut w = Windows::default();
        for s in 1..=86_400 {
            w.record(at(s), &second(s), Histories::CHARTED);
        }
        let (raw, minutes) = w.len();
        assert_eq!(raw, 72, "six minutes of 5 s slots");
        assert_eq!(minutes, 1441, "the day's minutes and the current one");
        // Three history rings (two ratios, one f32), the raw ring and its sums.
        let bytes = w.heap_bytes();
        assert_eq!(
            bytes,
            RING_LEN * (2 + 2 + 4) + w.raw.capacity() * 48 + std::mem::size_of::<Open>()
        );
        assert!(bytes <= 16 * 1024, "{bytes} bytes");
    }

    #[test]
    fn buckets_cover_24_hours_and_no_more() {
        let mut w = Windows::default();
        // Two days at one sample per 30 s.
        fill(&mut w, 30, 2 * 86_400, 30, |s| {
            if s >= 86_400 { 0.9 } else { 0.1 }
        });
        let (_, buckets) = w.len();
        assert_eq!(buckets as i64, BUCKET_MINUTES);
        let now = at(2 * 86_400);
        let day = TimeRange::last(Duration::from_secs(86_400), now);
        let mean = w.mean(Metric::CpuUtilization, day).unwrap();
        assert!((mean - 0.9).abs() < 1e-6, "{mean}");
        // The first day has been forgotten.
        let first_day = TimeRange {
            start: at(0),
            end: at(86_400),
        };
        // Of the first day only its last minute is left.
        assert_eq!(w.minute_means(Metric::CpuUtilization, first_day).len(), 2);
        assert!(!w.covers(Metric::CpuUtilization, first_day, Duration::from_secs(20)));
    }

    #[test]
    fn a_chart_is_minute_means_then_the_raw_samples() {
        // Two samples only: already a line, not a dot.
        let mut young = Windows::default();
        fill(&mut young, 5, 10, 5, |_| 0.3);
        let hour = TimeRange::last(Duration::from_secs(3600), at(10));
        assert_eq!(
            young.chart(Metric::CpuUtilization, hour),
            vec![(at(5), 0.3), (at(10), 0.3)]
        );

        // An hour every 10 s: minute means while the raw ring no longer holds the
        // samples, then every raw sample, in time order, none twice.
        let mut w = Windows::default();
        fill(&mut w, 10, 3600, 10, |s| (s / 60) as f64 / 100.0);
        let hour = TimeRange::last(Duration::from_secs(3600), at(3600));
        let chart = w.chart(Metric::CpuUtilization, hour);
        let raw: Vec<_> = w
            .samples(
                Metric::CpuUtilization,
                TimeRange::last(Duration::from_secs(600), at(3600)),
            )
            .collect();
        assert!(chart.ends_with(&raw), "the raw samples close the chart");
        assert!(chart.windows(2).all(|p| p[0].0 < p[1].0), "{chart:?}");
        let minutes = chart.len() - raw.len();
        assert!(
            minutes >= 40,
            "most of the hour from minute means: {minutes}"
        );
        assert!((chart[7].1 - 0.07).abs() < 1e-6);
    }

    #[test]
    fn long_ranges_use_minute_buckets() {
        let mut w = Windows::default();
        // One hour: minute m has utilization m/100, a sample every 10 s.
        fill(&mut w, 10, 3600, 10, |s| (s / 60) as f64 / 100.0);
        let now = at(3600);
        let hour = TimeRange::last(Duration::from_secs(3600), now);
        let means = w.minute_means(Metric::CpuUtilization, hour);
        // Minutes 0..=60: the range's end opens minute 60.
        assert_eq!(means.len(), 61);
        assert!((means[7].1 - 0.07).abs() < 1e-6);
        assert_eq!(means[7].0, at(7 * 60));
        let max = w.max(Metric::CpuUtilization, hour).unwrap();
        assert!((max - 0.60).abs() < 1e-6, "{max}");
        // p95 by nearest rank over 61 minute means 0.00..0.60: rank 58 → 0.57.
        let p95 = w
            .quantile_of_minute_means(Metric::CpuUtilization, hour, 0.95)
            .unwrap();
        assert!((p95 - 0.57).abs() < 1e-6, "{p95}");
        let p100 = w
            .quantile_of_minute_means(Metric::CpuUtilization, hour, 1.0)
            .unwrap();
        assert!((p100 - 0.60).abs() < 1e-6, "{p100}");
        assert_eq!(
            w.quantile_of_minute_means(Metric::CpuSteal, hour, 0.95),
            None
        );
    }

    #[test]
    fn p95_over_a_day_ignores_a_short_spike() {
        let mut w = Windows::default();
        // A day at 0.30 with a 30-minute spike to 1.0.
        fill(&mut w, 5, 86_400, 5, |s| {
            if (40_000..41_800).contains(&s) {
                1.0
            } else {
                0.3
            }
        });
        let day = TimeRange::last(Duration::from_secs(86_400), at(86_400));
        let p95 = w
            .quantile_of_minute_means(Metric::CpuUtilization, day, 0.95)
            .unwrap();
        assert!((p95 - 0.3).abs() < 1e-6, "{p95}");
        assert!((w.max(Metric::CpuUtilization, day).unwrap() - 1.0).abs() < 1e-6);
        assert!(w.covers(Metric::CpuUtilization, day, Duration::from_secs(20)));
    }

    #[test]
    fn coverage_needs_samples_throughout_the_window() {
        let max_gap = Duration::from_secs(20);
        let mut w = Windows::default();
        fill(&mut w, 5, 300, 5, |_| 0.5);
        let five = |now| TimeRange::last(Duration::from_secs(300), now);
        assert!(w.covers(Metric::CpuUtilization, five(at(300)), max_gap));
        // A metric that was never reported is not covered.
        assert!(!w.covers(Metric::CpuSteal, five(at(300)), max_gap));
        // Silence at the end: 25 s later the window is no longer covered.
        assert!(w.covers(Metric::CpuUtilization, five(at(315)), max_gap));
        assert!(!w.covers(Metric::CpuUtilization, five(at(325)), max_gap));
        // A window that starts before the first sample is not covered.
        assert!(!w.covers(
            Metric::CpuUtilization,
            TimeRange::last(Duration::from_secs(330), at(300)),
            max_gap
        ));

        // A 30 s hole in the middle.
        let mut holed = Windows::default();
        fill(&mut holed, 5, 120, 5, |_| 0.5);
        fill(&mut holed, 150, 300, 5, |_| 0.5);
        assert!(!holed.covers(Metric::CpuUtilization, five(at(300)), max_gap));
        assert!(holed.covers(
            Metric::CpuUtilization,
            TimeRange::last(Duration::from_secs(150), at(300)),
            max_gap
        ));
    }

    #[test]
    fn coverage_of_long_windows_is_checked_per_minute() {
        let max_gap = Duration::from_secs(20);
        let mut w = Windows::default();
        fill(&mut w, 5, 7200, 5, |_| 0.5);
        let two_hours = TimeRange::last(Duration::from_secs(7200), at(7200));
        assert!(w.covers(Metric::CpuUtilization, two_hours, max_gap));

        // The same with minute 30 missing.
        let mut holed = Windows::default();
        fill(&mut holed, 5, 1795, 5, |_| 0.5);
        fill(&mut holed, 1860, 7200, 5, |_| 0.5);
        assert!(!holed.covers(Metric::CpuUtilization, two_hours, max_gap));
        // ... but the last hour is complete.
        assert!(holed.covers(
            Metric::CpuUtilization,
            TimeRange::last(Duration::from_secs(3600), at(7200)),
            max_gap
        ));
    }

    #[test]
    fn out_of_order_samples_keep_the_rings_ordered() {
        let mut w = Windows::default();
        w.push(at(100), &cpu(0.1));
        w.push(at(50), &cpu(0.3));
        assert_eq!(w.last_sample_at(), Some(at(100)));
        let m = w.mean(
            Metric::CpuUtilization,
            TimeRange::last(Duration::from_secs(60), at(100)),
        );
        assert!((m.unwrap() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn only_the_metrics_a_policy_reads_keep_a_history_and_only_once_reported() {
        for metric in Metric::ALL {
            assert_eq!(
                metric.history().is_some(),
                history_index(metric).is_some(),
                "{metric:?}"
            );
        }
        let day = TimeRange::last(Duration::from_secs(86_400), at(86_400));
        let mut w = Windows::default();
        let mut values = cpu(0.25);
        values.set(Metric::CpuSteal, Some(0.01));
        let mut s = 5;
        while s <= 86_400 {
            w.push(at(s), &values);
            s += 5;
        }
        assert_eq!(w.minute_means(Metric::CpuUtilization, day).len(), 1441);
        assert_eq!(w.mean(Metric::CpuUtilization, day), Some(0.25));
        // Steal is read over minutes only: it has no history.
        assert!(w.minute_means(Metric::CpuSteal, day).is_empty());
        assert_eq!(w.mean(Metric::CpuSteal, day), None);
        assert!(!w.covers(Metric::CpuSteal, day, Duration::from_secs(20)));
        // One ratio ring (2 bytes a minute) and a raw ring just above 6 min of 5 s.
        let (raw, _) = w.len();
        let raw_bytes = w.heap_bytes() - RING_LEN * 2;
        assert!(
            raw_bytes <= (raw + raw / 8 + 4) * std::mem::size_of::<RawSample>(),
            "{raw_bytes} bytes for {raw} samples"
        );
    }

    #[test]
    fn ratios_keep_four_decimals_and_magnitudes_six_digits() {
        let mut w = Windows::default();
        let mut values = MetricValues::default();
        for (minute, (ratio, rate)) in [(0.1234, 1234.5678), (0.98765, 0.0123456)]
            .into_iter()
            .enumerate()
        {
            values.set(Metric::MemoryUsedRatio, Some(ratio));
            values.set(Metric::RequestsPerSecond, Some(rate));
            w.push(at(60 * minute as u64 + 1), &values);
        }
        // Both minutes finished, read back from the rings.
        w.push(at(150), &MetricValues::default());
        let range = TimeRange::last(Duration::from_secs(3600), at(150));
        let ratios = w.minute_means(Metric::MemoryUsedRatio, range);
        assert_eq!(ratios[0].1, 0.1234);
        assert!(
            (ratios[1].1 - 0.98765).abs() <= 0.5 / 60_000.0,
            "{ratios:?}"
        );
        let rates = w.minute_means(Metric::RequestsPerSecond, range);
        assert!((rates[0].1 / 1234.5678 - 1.0).abs() < 1e-6, "{rates:?}");
        assert!((rates[1].1 / 0.0123456 - 1.0).abs() < 1e-6, "{rates:?}");
    }

    #[test]
    fn a_day_old_minute_never_shows_through_a_gap() {
        let mut w = Windows::default();
        fill(&mut w, 5, 600, 5, |_| 0.9);
        // Silent for a day: the slots of minutes 0..=10 come round again, empty.
        let back = 86_400 + 1200;
        fill(&mut w, back, back + 120, 5, |_| 0.1);
        let day = TimeRange::last(Duration::from_secs(86_400), at(back + 120));
        let means = w.minute_means(Metric::CpuUtilization, day);
        assert_eq!(means.len(), 3, "{means:?}");
        assert!(means.iter().all(|(_, m)| *m == 0.1), "{means:?}");
        assert_eq!(
            w.max(Metric::CpuUtilization, day),
            Some(0.1),
            "no 0.9 from a day ago"
        );
        // A gap of an hour within the day leaves its minutes empty.
        let mut gap = Windows::default();
        fill(&mut gap, 5, 600, 5, |_| 0.9);
        fill(&mut gap, 4200, 4300, 5, |_| 0.1);
        let hours = TimeRange::last(Duration::from_secs(4300), at(4300));
        assert_eq!(
            gap.minute_means(Metric::CpuUtilization, hours).len(),
            11 + 2
        );
        assert!(!gap.covers(Metric::CpuUtilization, hours, Duration::from_secs(20)));
    }

    #[test]
    fn raw_samples_keep_four_decimals_of_a_ratio_and_seven_digits_of_a_figure() {
        let mut w = Windows::default();
        let mut values = MetricValues::default();
        values.set(Metric::CpuSteal, Some(0.0625));
        values.set(Metric::PsiIoSomeAvg10, Some(0.1234));
        values.set(Metric::MemoryUsedBytes, Some(3_221_225_472.0));
        values.set(Metric::LatencyP95Seconds, Some(0.123_456_7));
        w.push(at(5), &values);
        let range = TimeRange::last(Duration::from_secs(60), at(5));
        assert_eq!(w.mean(Metric::CpuSteal, range), Some(0.0625));
        assert_eq!(w.mean(Metric::PsiIoSomeAvg10, range), Some(0.1234));
        assert_eq!(
            w.mean(Metric::MemoryUsedBytes, range),
            Some(3_221_225_472.0)
        );
        let latency = w.mean(Metric::LatencyP95Seconds, range).unwrap();
        assert!((latency / 0.123_456_7 - 1.0).abs() < 1e-7, "{latency}");
        // Absent stays absent, in both kinds of slot.
        assert_eq!(w.mean(Metric::CpuIowait, range), None);
        assert_eq!(w.mean(Metric::RequestsPerSecond, range), None);
        assert_eq!(std::mem::size_of::<RawSample>(), 48);
    }

    #[test]
    fn a_metric_outside_the_kept_histories_has_raw_samples_only() {
        let mut w = Windows::default();
        let mut values = cpu(0.5);
        values.set(Metric::PsiCpuSomeAvg10, Some(0.2));
        let mut s = 5;
        while s <= 7200 {
            w.record(at(s), &values, Histories::CHARTED);
            s += 5;
        }
        let hours = TimeRange::last(Duration::from_secs(7200), at(7200));
        let five = TimeRange::last(Duration::from_secs(300), at(7200));
        assert_eq!(w.mean(Metric::CpuUtilization, hours), Some(0.5));
        let psi = w.mean(Metric::PsiCpuSomeAvg10, five).unwrap();
        assert!((psi - 0.2).abs() < 1e-9, "{psi}");
        assert_eq!(w.mean(Metric::PsiCpuSomeAvg10, hours), None);
        // One ring: CPU's.
        let (raw, _) = w.len();
        assert!(w.heap_bytes() - RING_LEN * 2 <= (raw + raw / 8 + 4) * 48);

        // Kept from now on (a reload added a rule on it): its history starts.
        let mut s = 7205;
        while s <= 7200 + 600 {
            w.record(
                at(s),
                &values,
                Histories::CHARTED.with(Metric::PsiCpuSomeAvg10),
            );
            s += 5;
        }
        let ten = TimeRange::last(Duration::from_secs(600), at(7800));
        assert_eq!(w.minute_means(Metric::PsiCpuSomeAvg10, ten).len(), 11);
        let day = TimeRange::last(Duration::from_secs(86_400), at(7800));
        assert_eq!(w.minute_means(Metric::PsiCpuSomeAvg10, day).len(), 11);
        // Left out again (another reload): its ring goes at the next minute.
        let two_rings = w.heap_bytes();
        w.record(at(7860), &values, Histories::CHARTED);
        assert_eq!(w.heap_bytes(), two_rings - RING_LEN * 2);
        assert!(w.minute_means(Metric::PsiCpuSomeAvg10, ten).is_empty());
    }

    #[test]
    fn the_kept_histories_are_the_charts_and_what_rules_and_targets_read() {
        let defaults: GroupPolicy = toml::from_str("name = \"web\"").unwrap();
        assert_eq!(Histories::of_groups(&[defaults]), Histories::CHARTED);
        let psi: GroupPolicy = toml::from_str(
            "name = \"db\"\n[[rules]]\nmetric = \"psi_memory_some_avg10\"\nthreshold = 0.2\n\
             [[targets]]\nmetric = \"memory_available_ratio\"\ntarget = 0.3",
        )
        .unwrap();
        let kept = Histories::of_groups(&[psi]);
        let metrics: Vec<_> = kept.metrics().collect();
        assert_eq!(
            metrics,
            [
                Metric::CpuUtilization,
                Metric::MemoryUsedRatio,
                Metric::PsiMemorySomeAvg10,
                Metric::RequestsPerSecond
            ]
        );
        // Only metrics that can have a history get in.
        assert!(
            !Histories::ALL
                .with(Metric::CpuSteal)
                .contains(Metric::CpuSteal)
        );
        assert_eq!(Histories::from_bits(u16::MAX), Histories::ALL);
    }

    #[test]
    fn warm_up_can_be_left_out_of_a_range() {
        let mut w = Windows::default();
        fill(&mut w, 5, 60, 5, |_| 1.0);
        fill(&mut w, 65, 180, 5, |_| 0.2);
        let range = TimeRange::last(Duration::from_secs(180), at(180)).not_before(at(60));
        let m = w.mean(Metric::CpuUtilization, range).unwrap();
        assert!((m - 0.2).abs() < 1e-9, "{m}");
    }
}
