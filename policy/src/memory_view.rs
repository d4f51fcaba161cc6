//! An in-memory [`MetricView`] over recorded reports, for tests and benchmarks. The fleet
//! has its own implementation over live windows; this one answers the same questions from
//! the raw samples with the same completeness rule.

use std::collections::HashMap;
use std::time::Duration;

use super::Timestamp;
use super::metric::Metric;
use super::view::{Freshness, MetricView, Observation, ReportedSize, Series, WindowStat};

#[derive(Debug, Default, Clone)]
struct Samples {
    /// (time, value), oldest first.
    samples: Vec<(Timestamp, f64)>,
}

#[derive(Debug, Default, Clone)]
struct VmRecord {
    last_report: Option<Timestamp>,
    size: Option<ReportedSize>,
    series: HashMap<Metric, Samples>,
}

/// Recorded reports of many VMs, queried at a settable "now".
#[derive(Debug, Clone)]
pub struct MemoryView {
    now: Timestamp,
    interval: Duration,
    stale_after: Duration,
    vms: HashMap<String, VmRecord>,
}

impl MemoryView {
    /// An empty view; reports are expected every `interval`, and a VM silent for longer
    /// than `stale_after` is stale.
    pub fn new(now: Timestamp, interval: Duration, stale_after: Duration) -> Self {
        Self {
            now,
            interval,
            stale_after,
            vms: HashMap::new(),
        }
    }

    /// The instant every window ends at.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Moves the view's clock.
    pub fn set_now(&mut self, now: Timestamp) {
        self.now = now;
    }

    /// Marks `vm`'s latest reported size as leaving capacity offline (hot-added CPUs and
    /// memory the guest did not online).
    pub fn offline(&mut self, vm: &str, offline_cpus: u32, offline_memory_bytes: u64) {
        if let Some(size) = self.vms.get_mut(vm).and_then(|r| r.size.as_mut()) {
            size.offline_cpus = offline_cpus;
            size.offline_memory_bytes = offline_memory_bytes;
        }
    }

    /// Records a report of `vm` at `at` with its size and the metrics it carried (a metric
    /// left out is absent in that report).
    pub fn report(
        &mut self,
        vm: &str,
        at: Timestamp,
        vcpus: u32,
        memory_total_bytes: u64,
        metrics: &[(Metric, f64)],
    ) {
        let rec = self.vms.entry(vm.to_owned()).or_default();
        rec.last_report = Some(rec.last_report.map_or(at, |t| t.max(at)));
        rec.size = Some(ReportedSize {
            vcpus,
            memory_total_bytes,
            offline_cpus: 0,
            offline_memory_bytes: 0,
            at,
        });
        for &(metric, value) in metrics {
            rec.series
                .entry(metric)
                .or_default()
                .samples
                .push((at, value));
        }
    }

    /// Records a report every `interval` from `from` (inclusive) to `to` (exclusive).
    pub fn report_span(
        &mut self,
        vm: &str,
        from: Timestamp,
        to: Timestamp,
        vcpus: u32,
        memory_total_bytes: u64,
        metrics: &[(Metric, f64)],
    ) {
        let step =
            chrono::Duration::from_std(self.interval).unwrap_or(chrono::Duration::seconds(5));
        let mut t = from;
        while t < to {
            self.report(vm, t, vcpus, memory_total_bytes, metrics);
            t += step;
        }
    }

    /// Drops samples older than `keep` before now (bounds memory in long simulations).
    pub fn forget_before(&mut self, keep: Duration) {
        let cut = self.now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        for rec in self.vms.values_mut() {
            for s in rec.series.values_mut() {
                let n = s.samples.partition_point(|(t, _)| *t < cut);
                s.samples.drain(..n);
            }
        }
    }

    /// Samples of the window (now − over, now], and whether they cover it without a gap
    /// longer than two intervals.
    fn window(
        &self,
        vm: &str,
        metric: Metric,
        over: Duration,
    ) -> Option<(&[(Timestamp, f64)], bool)> {
        let s = self.vms.get(vm)?.series.get(&metric)?;
        let start = self.now - chrono::Duration::from_std(over).ok()?;
        let lo = s.samples.partition_point(|(t, _)| *t <= start);
        let hi = s.samples.partition_point(|(t, _)| *t <= self.now);
        let w = &s.samples[lo..hi];
        let (first, last) = (w.first()?, w.last()?);
        let step = chrono::Duration::from_std(self.interval).ok()?;
        let complete = first.0 - start <= step
            && self.now - last.0 <= step * 2
            && w.windows(2).all(|p| p[1].0 - p[0].0 <= step * 2);
        Some((w, complete))
    }

    fn minute_means(&self, w: &[(Timestamp, f64)], over: Duration) -> Vec<f64> {
        let start = self.now - chrono::Duration::from_std(over).unwrap_or(chrono::Duration::MAX);
        let mut out: Vec<(i64, f64, u32)> = Vec::new();
        for (t, v) in w {
            let minute = (*t - start).num_seconds() / 60;
            match out.last_mut() {
                Some((m, sum, n)) if *m == minute => {
                    *sum += v;
                    *n += 1;
                }
                _ => out.push((minute, *v, 1)),
            }
        }
        out.into_iter()
            .map(|(_, sum, n)| sum / f64::from(n))
            .collect()
    }
}

impl MetricView for MemoryView {
    fn freshness(&self, vm: &str) -> Freshness {
        match self.vms.get(vm).and_then(|r| r.last_report) {
            None => Freshness::Unknown,
            Some(t) if (self.now - t).to_std().unwrap_or_default() <= self.stale_after => {
                Freshness::Fresh
            }
            Some(t) => Freshness::Stale { last_report: t },
        }
    }

    fn reported_size(&self, vm: &str) -> Option<ReportedSize> {
        self.vms.get(vm)?.size
    }

    fn latest(&self, vm: &str, metric: Metric) -> Option<Observation> {
        let rec = self.vms.get(vm)?;
        let (at, value) = *rec.series.get(&metric)?.samples.last()?;
        // Only the latest report counts: a metric it did not carry is absent now.
        (Some(at) == rec.last_report).then_some(Observation { value, at })
    }

    fn mean(&self, vm: &str, metric: Metric, over: Duration) -> Option<WindowStat> {
        let (w, complete) = self.window(vm, metric, over)?;
        Some(WindowStat {
            value: w.iter().map(|(_, v)| v).sum::<f64>() / w.len() as f64,
            complete,
        })
    }

    fn max(&self, vm: &str, metric: Metric, over: Duration) -> Option<WindowStat> {
        let (w, complete) = self.window(vm, metric, over)?;
        let value = self
            .minute_means(w, over)
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max);
        Some(WindowStat { value, complete })
    }

    fn p95_of_minute_means(&self, vm: &str, metric: Metric, over: Duration) -> Option<WindowStat> {
        let (w, complete) = self.window(vm, metric, over)?;
        let mut means = self.minute_means(w, over);
        means.sort_by(f64::total_cmp);
        let rank = ((means.len() as f64) * 0.95).ceil() as usize;
        let value = means[rank.saturating_sub(1).min(means.len() - 1)];
        Some(WindowStat { value, complete })
    }

    fn minute_series(&self, vm: &str, metric: Metric, over: Duration) -> Option<Series> {
        let (_, complete) = self.window(vm, metric, over)?;
        let samples = &self.vms.get(vm)?.series.get(&metric)?.samples;
        let start = self.now - chrono::Duration::from_std(over).ok()?;
        // Whole wall-clock minutes, from the one the window starts in (as the fleet's
        // minute buckets).
        let first = start.timestamp().div_euclid(60);
        let lo = samples.partition_point(|(t, _)| t.timestamp().div_euclid(60) < first);
        let hi = samples.partition_point(|(t, _)| *t <= self.now);
        let mut minutes: Vec<(i64, f64, u32)> = Vec::new();
        for (t, v) in &samples[lo..hi] {
            let minute = t.timestamp().div_euclid(60);
            match minutes.last_mut() {
                Some((m, sum, n)) if *m == minute => {
                    *sum += v;
                    *n += 1;
                }
                _ => minutes.push((minute, *v, 1)),
            }
        }
        let points = minutes
            .into_iter()
            .filter_map(|(minute, sum, n)| {
                let begins = chrono::DateTime::from_timestamp(minute * 60, 0)?;
                let middle = ((self.now - begins) / 2).min(chrono::Duration::seconds(30));
                Some((begins + middle, sum / f64::from(n)))
            })
            .collect();
        Some(Series { points, complete })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn windows_report_completeness_and_statistics() {
        let mut v = MemoryView::new(t(600), Duration::from_secs(5), Duration::from_secs(20));
        v.report_span(
            "a",
            t(0),
            t(605),
            2,
            1 << 32,
            &[(Metric::CpuUtilization, 0.5)],
        );
        // 30 s of data only for "b".
        v.report_span(
            "b",
            t(575),
            t(605),
            2,
            1 << 32,
            &[(Metric::CpuUtilization, 0.9)],
        );
        let m = v
            .mean("a", Metric::CpuUtilization, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            m,
            WindowStat {
                value: 0.5,
                complete: true
            }
        );
        assert!(
            !v.mean("b", Metric::CpuUtilization, Duration::from_secs(60))
                .unwrap()
                .complete
        );
        assert!(
            v.mean("a", Metric::PsiCpuSomeAvg10, Duration::from_secs(60))
                .is_none()
        );
        assert_eq!(v.freshness("a"), Freshness::Fresh);
        v.set_now(t(630));
        assert_eq!(
            v.freshness("a"),
            Freshness::Stale {
                last_report: t(600)
            }
        );
        assert_eq!(v.freshness("zzz"), Freshness::Unknown);
        // A gap makes a window incomplete.
        let mut g = MemoryView::new(t(300), Duration::from_secs(5), Duration::from_secs(20));
        g.report_span(
            "g",
            t(0),
            t(100),
            1,
            1 << 30,
            &[(Metric::CpuUtilization, 0.1)],
        );
        g.report_span(
            "g",
            t(150),
            t(305),
            1,
            1 << 30,
            &[(Metric::CpuUtilization, 0.1)],
        );
        assert!(
            !g.mean("g", Metric::CpuUtilization, Duration::from_secs(300))
                .unwrap()
                .complete
        );
        assert!(
            g.mean("g", Metric::CpuUtilization, Duration::from_secs(60))
                .unwrap()
                .complete
        );
    }

    #[test]
    fn p95_and_max_use_minute_means() {
        let mut v = MemoryView::new(t(6000), Duration::from_secs(5), Duration::from_secs(20));
        // 100 minutes: minute i has mean i/100.
        for i in 0..100 {
            v.report_span(
                "a",
                t(i * 60 + 1),
                t(i * 60 + 61),
                2,
                1 << 32,
                &[(Metric::CpuUtilization, i as f64 / 100.0)],
            );
        }
        let over = Duration::from_secs(6000);
        let p95 = v
            .p95_of_minute_means("a", Metric::CpuUtilization, over)
            .unwrap();
        assert!((p95.value - 0.94).abs() < 1e-9, "{p95:?}");
        assert!(p95.complete);
        assert!((v.max("a", Metric::CpuUtilization, over).unwrap().value - 0.99).abs() < 1e-9);
    }
}
