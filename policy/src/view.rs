//! What the engine asks of the fleet: freshness, reported size, and window statistics.
//!
//! The fleet implements [`MetricView`] over its live windows; [`super::memory_view`]
//! implements it over recorded samples for tests and benchmarks. Every window ends at the
//! view's own "now" (the snapshot the engine evaluates), and the engine passes the same
//! instant as `now` to [`super::evaluate()`].

use std::time::Duration;

use super::Timestamp;
use super::metric::Metric;

/// Whether a VM's reports are current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Reported within the stale-after limit.
    Fresh,
    /// Last report is older than the stale-after limit.
    Stale {
        /// When the last report arrived.
        last_report: Timestamp,
    },
    /// The VM never reported to this collector.
    Unknown,
}

/// The size the agent says the guest can use now, and what it left offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedSize {
    /// Online vCPUs.
    pub vcpus: u32,
    /// MemTotal in bytes.
    pub memory_total_bytes: u64,
    /// CPUs present in the guest but offline (hot-added, not onlined).
    pub offline_cpus: u32,
    /// Memory present in the guest but offline, in bytes.
    pub offline_memory_bytes: u64,
    /// When the report carrying this size was taken.
    pub at: Timestamp,
}

/// One value read from the latest report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The metric's value.
    pub value: f64,
    /// When it was sampled.
    pub at: Timestamp,
}

/// A statistic over a window, and whether the metric was present for all of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStat {
    /// The statistic (mean, max or p95, depending on the query).
    pub value: f64,
    /// True only when samples cover the whole window without a gap; the engine treats an
    /// incomplete window as an absent metric.
    pub complete: bool,
}

/// A metric's 1-minute means over a window, oldest first (what a forecast fits its line
/// to).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// One point per wall-clock minute that has samples: the minute's mean, placed at
    /// the middle of the minute, or for the current minute at the middle of its elapsed
    /// part (`minute start + min(30 s, (now − minute start) / 2)`). The first minute is
    /// the one the window starts in, with all of its samples.
    pub points: Vec<(Timestamp, f64)>,
    /// True only when samples cover the whole window without a gap (as
    /// [`WindowStat::complete`]); the engine fits no line to an incomplete series.
    pub complete: bool,
}

/// Read-only queries the policy engine makes about VMs. All windows end at the view's
/// snapshot time; implementations must be cheap (they run once per VM per tick).
pub trait MetricView {
    /// Whether `vm` reported recently enough to be trusted.
    fn freshness(&self, vm: &str) -> Freshness;
    /// The size `vm`'s agent last reported.
    fn reported_size(&self, vm: &str) -> Option<ReportedSize>;
    /// The metric's value in the latest report, if the report carried it.
    fn latest(&self, vm: &str, metric: Metric) -> Option<Observation>;
    /// Mean of the metric over the last `over`.
    fn mean(&self, vm: &str, metric: Metric, over: Duration) -> Option<WindowStat>;
    /// Largest value of the metric's 1-minute means over the last `over`.
    fn max(&self, vm: &str, metric: Metric, over: Duration) -> Option<WindowStat>;
    /// 95th percentile of the metric's 1-minute means over the last `over` (24 h for
    /// scale-down evidence).
    fn p95_of_minute_means(&self, vm: &str, metric: Metric, over: Duration) -> Option<WindowStat>;
    /// The metric's 1-minute means over the last `over` (see [`Series`]), for forecasts.
    /// The default has none, so a view without it never forecasts.
    fn minute_series(&self, vm: &str, metric: Metric, over: Duration) -> Option<Series> {
        let _ = (vm, metric, over);
        None
    }
}
