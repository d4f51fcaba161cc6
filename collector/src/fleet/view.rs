//! The fleet as the policy engine sees it: [`FleetView`] implements
//! [`policy::MetricView`](rally_policy::MetricView) over the live windows, at one
//! instant.
//!
//! Missing or stale data is `None` (or an incomplete window), never a stand-in value:
//! a window counts as complete only when samples cover it without a gap longer than
//! three report intervals (or `ingest.stale_after`, whichever is shorter). Warm-up is
//! the engine's business: it refuses windows that reach back into one.

use std::time::{Duration, SystemTime};

use rally_policy::view::{Freshness, MetricView, Observation, ReportedSize, Series, WindowStat};
use rally_policy::{Metric as PolicyMetric, Timestamp};

use super::window::{Metric, TimeRange, Windows};
use super::{Fleet, Vm};

/// Quantile of the 1-minute means that scale-down evidence reads.
const P95: f64 = 0.95;

/// A view of `fleet` whose windows all end at `now`.
#[derive(Debug, Clone, Copy)]
pub struct FleetView<'a> {
    fleet: &'a Fleet,
    now: SystemTime,
}

/// How a policy metric is read from the windows.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The window metric as is.
    Direct(Metric),
    /// 1 − the window metric (memory available ratio from memory used ratio).
    Complement(Metric),
}

impl Source {
    fn of(metric: PolicyMetric) -> Self {
        match metric {
            PolicyMetric::CpuUtilization => Source::Direct(Metric::CpuUtilization),
            PolicyMetric::MemoryUsedRatio => Source::Direct(Metric::MemoryUsedRatio),
            PolicyMetric::MemoryAvailableRatio => Source::Complement(Metric::MemoryUsedRatio),
            PolicyMetric::PsiCpuSomeAvg10 => Source::Direct(Metric::PsiCpuSomeAvg10),
            PolicyMetric::PsiMemorySomeAvg10 => Source::Direct(Metric::PsiMemorySomeAvg10),
            // Absent for a VM without request sources (or whose sources all have no
            // rate): a rule on them then neither fires nor counts as low use.
            PolicyMetric::RequestsPerSecondPerVcpu => {
                Source::Direct(Metric::RequestsPerSecondPerVcpu)
            }
            PolicyMetric::RequestsPerSecond => Source::Direct(Metric::RequestsPerSecond),
            PolicyMetric::ServerErrorRatio => Source::Direct(Metric::ServerErrorRatio),
            PolicyMetric::LatencyP95Seconds => Source::Direct(Metric::LatencyP95Seconds),
            PolicyMetric::PhpFpmListenQueue => Source::Direct(Metric::PhpFpmListenQueue),
        }
    }

    fn metric(self) -> Metric {
        match self {
            Source::Direct(m) | Source::Complement(m) => m,
        }
    }

    fn map(self, v: f64) -> f64 {
        match self {
            Source::Direct(_) => v,
            Source::Complement(_) => 1.0 - v,
        }
    }
}

/// The window metric a policy metric is read from.
pub fn window_metric(metric: PolicyMetric) -> Metric {
    Source::of(metric).metric()
}

/// Converts the fleet's clock type to the engine's.
pub fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

impl<'a> FleetView<'a> {
    /// The fleet at `now`.
    pub fn new(fleet: &'a Fleet, now: SystemTime) -> Self {
        Self { fleet, now }
    }

    /// The instant every window ends at.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// The longest gap a complete window may have for `vm`.
    fn max_gap(&self, vm: &Vm) -> Duration {
        let stale_after = self.fleet.stale_after();
        vm.interval()
            .map_or(stale_after, |i| (i * 3).max(Duration::from_secs(1)))
            .min(stale_after)
    }

    /// Runs `f` on `vm`'s windows with the range `over` ending now, and whether the
    /// metric covers it.
    fn window<R>(
        &self,
        vm: &str,
        source: Source,
        over: Duration,
        f: impl FnOnce(&Windows, TimeRange) -> Option<R>,
    ) -> Option<(R, bool)> {
        let range = TimeRange::last(over, self.now);
        self.fleet
            .with_vm(vm, |v| {
                let value = f(v.windows(), range)?;
                let complete = v.windows().covers(source.metric(), range, self.max_gap(v));
                Some((value, complete))
            })
            .flatten()
    }

    fn minute_means(&self, vm: &str, source: Source, over: Duration) -> Option<(Vec<f64>, bool)> {
        self.window(vm, source, over, |w, range| {
            let means: Vec<f64> = w
                .minute_means(source.metric(), range)
                .into_iter()
                .map(|(_, m)| source.map(m))
                .collect();
            (!means.is_empty()).then_some(means)
        })
    }
}

impl MetricView for FleetView<'_> {
    fn freshness(&self, vm: &str) -> Freshness {
        let stale_after = self.fleet.stale_after();
        self.fleet
            .with_vm(vm, |v| match v.last_report_at() {
                None => Freshness::Unknown,
                Some(_) if v.is_fresh(self.now, stale_after) => Freshness::Fresh,
                Some(t) => Freshness::Stale {
                    last_report: timestamp(t),
                },
            })
            .unwrap_or(Freshness::Unknown)
    }

    fn reported_size(&self, vm: &str) -> Option<ReportedSize> {
        self.fleet
            .with_vm(vm, |v| {
                // A size from a Hello alone has no report time to verify against.
                let at = v.last_report_at()?;
                let size = v.size()?;
                Some(ReportedSize {
                    vcpus: size.vcpus,
                    memory_total_bytes: size.memory_bytes,
                    offline_cpus: size.offline_cpus,
                    offline_memory_bytes: size.offline_memory_bytes,
                    at: timestamp(at),
                })
            })
            .flatten()
    }

    fn latest(&self, vm: &str, metric: PolicyMetric) -> Option<Observation> {
        let source = Source::of(metric);
        self.fleet
            .with_vm(vm, |v| {
                let report = v.latest()?;
                let value = source.metric().of(report)?;
                let at = v.last_report_at()?.min(report.timestamp);
                Some(Observation {
                    value: source.map(value),
                    at: timestamp(at),
                })
            })
            .flatten()
    }

    fn mean(&self, vm: &str, metric: PolicyMetric, over: Duration) -> Option<WindowStat> {
        let source = Source::of(metric);
        self.window(vm, source, over, |w, range| w.mean(source.metric(), range))
            .map(|(v, complete)| WindowStat {
                value: source.map(v),
                complete,
            })
    }

    fn max(&self, vm: &str, metric: PolicyMetric, over: Duration) -> Option<WindowStat> {
        let source = Source::of(metric);
        let (means, complete) = self.minute_means(vm, source, over)?;
        let value = means.into_iter().reduce(f64::max)?;
        Some(WindowStat { value, complete })
    }

    fn p95_of_minute_means(
        &self,
        vm: &str,
        metric: PolicyMetric,
        over: Duration,
    ) -> Option<WindowStat> {
        let source = Source::of(metric);
        let (mut means, complete) = self.minute_means(vm, source, over)?;
        means.sort_by(f64::total_cmp);
        // Nearest rank, as the fleet's own quantile query.
        let rank = (P95 * means.len() as f64).ceil() as usize;
        let value = *means.get(rank.saturating_sub(1))?;
        Some(WindowStat { value, complete })
    }

    fn minute_series(&self, vm: &str, metric: PolicyMetric, over: Duration) -> Option<Series> {
        let source = Source::of(metric);
        let (points, complete) = self.window(vm, source, over, |w, range| {
            let points: Vec<(Timestamp, f64)> = w
                .minute_means(source.metric(), range)
                .into_iter()
                .map(|(start, mean)| {
                    // The middle of the minute, or of the part of it that has elapsed.
                    let elapsed = self.now.duration_since(start).unwrap_or_default();
                    let middle = (elapsed / 2).min(Duration::from_secs(30));
                    (timestamp(start + middle), source.map(mean))
                })
                .collect();
            (!points.is_empty()).then_some(points)
        })?;
        Some(Series { points, complete })
    }
}

/// Builds fleets fed with synthetic reports (unit tests of the view and the engine).
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use crate::config::UnknownVms;
    use crate::fleet::{
        CpuShares, Fleet, FleetSettings, Hello, Histories, Memory, Report, RunKey, Session, VmSize,
    };

    /// A minute boundary.
    pub(crate) fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_040)
    }

    /// A fleet with `groups` and a 20 s stale-after.
    pub(crate) fn fleet(groups: &[(&str, &[&str])]) -> Fleet {
        Fleet::new(FleetSettings {
            stale_after: Duration::from_secs(20),
            forget_after: Duration::from_secs(86_400),
            unknown_vms: UnknownVms::Ungrouped,
            max_vms: 100,
            groups: groups
                .iter()
                .map(|(g, vms)| (g.to_string(), vms.iter().map(|v| v.to_string()).collect()))
                .collect(),
            histories: Histories::ALL,
        })
    }

    /// One agent run of a VM reporting every `interval`.
    pub(crate) struct Agent {
        session: Session,
        seq: u64,
        /// Reporting interval.
        pub interval: Duration,
        /// vCPUs reported.
        pub vcpus: u32,
        /// MemTotal reported.
        pub memory_bytes: u64,
    }

    impl Agent {
        /// Says Hello for `vm` at `now`.
        pub(crate) fn connect(
            fleet: &Fleet,
            vm: &str,
            vcpus: u32,
            memory_bytes: u64,
            interval: Duration,
            now: SystemTime,
        ) -> Self {
            let hello = Hello {
                vm_id: vm.into(),
                hostname: vm.into(),
                agent_version: "test".into(),
                run: RunKey {
                    boot_id: "boot".into(),
                    run_id: 1,
                },
                labels: BTreeMap::new(),
                size: Some(VmSize {
                    vcpus,
                    memory_bytes,
                    ..Default::default()
                }),
                interval: Some(interval),
            };
            let session = fleet.hello(&hello, now).unwrap();
            Self {
                session,
                seq: 0,
                interval,
                vcpus,
                memory_bytes,
            }
        }

        /// Reports CPU utilization `cpu` and memory used ratio `used` sampled at `t`.
        pub(crate) fn report(&mut self, t: SystemTime, cpu: f64, used: f64) {
            self.report_sources(t, cpu, used, vec![]);
        }

        /// Like [`Agent::report`], with web-server sources.
        pub(crate) fn report_sources(
            &mut self,
            t: SystemTime,
            cpu: f64,
            used: f64,
            sources: Vec<crate::fleet::SourceReport>,
        ) {
            self.seq += 1;
            let report = Report {
                seq: self.seq,
                timestamp: t,
                interval: self.interval,
                size: Some(VmSize {
                    vcpus: self.vcpus,
                    memory_bytes: self.memory_bytes,
                    ..Default::default()
                }),
                cpu: Some(CpuShares {
                    utilization: cpu,
                    user: cpu,
                    idle: 1.0 - cpu,
                    ..CpuShares::default()
                }),
                cores: vec![],
                load: None,
                memory: Some(Memory {
                    total_bytes: self.memory_bytes,
                    available_bytes: ((1.0 - used) * self.memory_bytes as f64) as u64,
                    swap_total_bytes: 0,
                    swap_free_bytes: 0,
                }),
                pressure: None,
                net: vec![],
                disks: vec![],
                filesystems: vec![],
                dropped: 0,
                agent: Default::default(),
                sources,
            };
            self.session.apply(report, t);
        }

        /// Reports every interval from `from` (exclusive) to `to` (inclusive).
        pub(crate) fn report_span(
            &mut self,
            from: SystemTime,
            to: SystemTime,
            cpu: f64,
            used: f64,
        ) {
            let mut t = from + self.interval;
            while t <= to {
                self.report(t, cpu, used);
                t += self.interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{Agent, fleet, t0};
    use super::*;

    const GIB: u64 = 1 << 30;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_metric_read_as_is_has_the_policy_name() {
        // One vocabulary: `metric = "psi_cpu_some_avg10"` in the config, the same word
        // in the fleet's windows and its JSON.
        for metric in PolicyMetric::ALL {
            match Source::of(metric) {
                Source::Direct(m) => assert_eq!(m.name(), metric.name()),
                Source::Complement(_) => {
                    assert_eq!(metric, PolicyMetric::MemoryAvailableRatio)
                }
            }
        }
    }

    #[test]
    fn an_unknown_or_silent_vm_has_no_data() {
        let fleet = fleet(&[("web", &["web-1"])]);
        let view = FleetView::new(&fleet, t0());
        assert_eq!(view.freshness("web-1"), Freshness::Unknown);
        assert_eq!(view.freshness("nobody"), Freshness::Unknown);
        assert_eq!(view.reported_size("web-1"), None);
        assert_eq!(view.latest("web-1", PolicyMetric::CpuUtilization), None);
        assert_eq!(
            view.mean("web-1", PolicyMetric::CpuUtilization, secs(60)),
            None
        );
        assert_eq!(
            view.p95_of_minute_means("web-1", PolicyMetric::CpuUtilization, secs(60)),
            None
        );
    }

    #[test]
    fn a_vm_reporting_throughout_has_complete_windows() {
        let fleet = fleet(&[("web", &["web-1"])]);
        let mut a = Agent::connect(&fleet, "web-1", 2, 4 * GIB, secs(5), t0());
        let now = t0() + secs(600);
        a.report_span(t0(), now, 0.5, 0.25);
        let view = FleetView::new(&fleet, now);
        assert_eq!(view.freshness("web-1"), Freshness::Fresh);
        let size = view.reported_size("web-1").unwrap();
        assert_eq!((size.vcpus, size.memory_total_bytes), (2, 4 * GIB));
        assert_eq!(size.at, timestamp(now));
        let latest = view.latest("web-1", PolicyMetric::CpuUtilization).unwrap();
        assert_eq!((latest.value, latest.at), (0.5, timestamp(now)));
        let mean = view
            .mean("web-1", PolicyMetric::CpuUtilization, secs(60))
            .unwrap();
        assert!((mean.value - 0.5).abs() < 1e-9 && mean.complete, "{mean:?}");
        let avail = view
            .mean("web-1", PolicyMetric::MemoryAvailableRatio, secs(300))
            .unwrap();
        assert!(
            (avail.value - 0.75).abs() < 1e-6 && avail.complete,
            "{avail:?}"
        );
        let p95 = view
            .p95_of_minute_means("web-1", PolicyMetric::CpuUtilization, secs(300))
            .unwrap();
        assert!((p95.value - 0.5).abs() < 1e-6 && p95.complete, "{p95:?}");
        let max = view
            .max("web-1", PolicyMetric::MemoryUsedRatio, secs(300))
            .unwrap();
        assert!((max.value - 0.25).abs() < 1e-6 && max.complete, "{max:?}");
        // No agent reports request rates: absent, never zero.
        assert_eq!(
            view.latest("web-1", PolicyMetric::RequestsPerSecondPerVcpu),
            None
        );
        assert_eq!(
            view.mean("web-1", PolicyMetric::RequestsPerSecondPerVcpu, secs(60)),
            None
        );
    }

    #[test]
    fn a_window_longer_than_the_data_or_with_a_gap_is_incomplete() {
        let fleet = fleet(&[("web", &["web-1"])]);
        let mut a = Agent::connect(&fleet, "web-1", 2, 4 * GIB, secs(5), t0());
        // 2 minutes of data, then 40 s of silence (more than three intervals), then 1 min.
        a.report_span(t0(), t0() + secs(120), 0.9, 0.5);
        a.report_span(t0() + secs(160), t0() + secs(220), 0.9, 0.5);
        let view = FleetView::new(&fleet, t0() + secs(220));
        let five = view
            .mean("web-1", PolicyMetric::CpuUtilization, secs(300))
            .unwrap();
        assert!(!five.complete, "5 min over 3.7 min of data: {five:?}");
        let gap = view
            .mean("web-1", PolicyMetric::CpuUtilization, secs(90))
            .unwrap();
        assert!(!gap.complete, "a 40 s gap at 5 s reports: {gap:?}");
        let one = view
            .mean("web-1", PolicyMetric::CpuUtilization, secs(55))
            .unwrap();
        assert!(one.complete, "{one:?}");
    }

    #[test]
    fn p95_and_max_read_minute_means() {
        let fleet = fleet(&[("db", &["db-1"])]);
        let mut a = Agent::connect(&fleet, "db-1", 4, 8 * GIB, secs(5), t0());
        // 19 quiet minutes at 0.2, then one busy minute at 0.9.
        a.report_span(t0(), t0() + secs(19 * 60), 0.2, 0.3);
        a.report_span(t0() + secs(19 * 60), t0() + secs(20 * 60), 0.9, 0.6);
        let view = FleetView::new(&fleet, t0() + secs(20 * 60));
        let p95 = view
            .p95_of_minute_means("db-1", PolicyMetric::CpuUtilization, secs(20 * 60))
            .unwrap();
        // 20 or 21 minute buckets overlap: nearest-rank p95 is the busy minute's neighbour.
        assert!(p95.complete);
        assert!(p95.value <= 0.9 + 1e-6, "{p95:?}");
        let max = view
            .max("db-1", PolicyMetric::MemoryUsedRatio, secs(20 * 60))
            .unwrap();
        assert!((max.value - 0.6).abs() < 1e-3, "{max:?}");
        let min_avail = view
            .max("db-1", PolicyMetric::MemoryAvailableRatio, secs(20 * 60))
            .unwrap();
        assert!((min_avail.value - 0.7).abs() < 1e-3, "{min_avail:?}");
    }

    #[test]
    fn request_metrics_come_from_the_sources_and_are_absent_without_a_rate() {
        use crate::fleet::{Latency, PhpFpm, SourceKind, SourceReport, StatusClasses};
        let fleet = fleet(&[("web", &["web-1"])]);
        let mut a = Agent::connect(&fleet, "web-1", 4, 4 * GIB, secs(5), t0());
        let log = SourceReport {
            name: "log".into(),
            kind: SourceKind::AccessLog,
            counted_by: None,
            up: true,
            down_total: 0,
            interval: secs(5),
            requests: 1000,
            requests_per_second: Some(200.0),
            statuses: Some(StatusClasses {
                success: 950,
                server_error: 50,
                ..Default::default()
            }),
            latency: Some(Latency {
                count: 1000,
                p50_seconds: 0.01,
                p95_seconds: 0.3,
                p99_seconds: 0.9,
            }),
            busy: None,
            php_fpm: None,
        };
        let fpm = SourceReport {
            name: "fpm".into(),
            kind: SourceKind::PhpFpm,
            requests_per_second: Some(40.0),
            statuses: None,
            latency: None,
            php_fpm: Some(PhpFpm {
                listen_queue: 7,
                ..Default::default()
            }),
            ..log.clone()
        };
        let mut t = t0();
        for _ in 0..13 {
            t += secs(5);
            a.report_sources(t, 0.5, 0.5, vec![log.clone(), fpm.clone()]);
        }
        let view = FleetView::new(&fleet, t);
        let latest = |m| view.latest("web-1", m).map(|o| o.value);
        assert_eq!(latest(PolicyMetric::RequestsPerSecond), Some(240.0));
        assert_eq!(latest(PolicyMetric::RequestsPerSecondPerVcpu), Some(60.0));
        assert_eq!(latest(PolicyMetric::ServerErrorRatio), Some(0.05));
        assert_eq!(latest(PolicyMetric::LatencyP95Seconds), Some(0.3));
        assert_eq!(latest(PolicyMetric::PhpFpmListenQueue), Some(7.0));
        let mean = view
            .mean("web-1", PolicyMetric::RequestsPerSecondPerVcpu, secs(60))
            .unwrap();
        assert!(
            (mean.value - 60.0).abs() < 1e-9 && mean.complete,
            "{mean:?}"
        );

        // The first sample after an agent start has no rate: absent, never 0.
        let first = SourceReport {
            requests_per_second: None,
            ..log
        };
        a.report_sources(t + secs(5), 0.5, 0.5, vec![first]);
        let view = FleetView::new(&fleet, t + secs(5));
        assert_eq!(view.latest("web-1", PolicyMetric::RequestsPerSecond), None);
        assert_eq!(view.latest("web-1", PolicyMetric::ServerErrorRatio), None);
    }

    #[test]
    fn a_log_counted_by_nginx_adds_nothing_to_the_request_rates() {
        use crate::fleet::{SourceKind, SourceReport, StatusClasses};
        let fleet = fleet(&[("web", &["web-1"])]);
        let mut a = Agent::connect(&fleet, "web-1", 4, 4 * GIB, secs(5), t0());
        let nginx = SourceReport {
            name: "nginx".into(),
            kind: SourceKind::Nginx,
            counted_by: None,
            up: true,
            down_total: 0,
            interval: secs(5),
            requests: 1000,
            requests_per_second: Some(200.0),
            statuses: None,
            latency: None,
            busy: Some(3),
            php_fpm: None,
        };
        let log = SourceReport {
            name: "log".into(),
            kind: SourceKind::AccessLog,
            counted_by: Some("nginx".into()),
            statuses: Some(StatusClasses {
                success: 990,
                server_error: 10,
                ..Default::default()
            }),
            busy: None,
            ..nginx.clone()
        };
        let mut t = t0();
        for _ in 0..13 {
            t += secs(5);
            a.report_sources(t, 0.5, 0.5, vec![nginx.clone(), log.clone()]);
        }
        let view = FleetView::new(&fleet, t);
        let latest = |m| view.latest("web-1", m).map(|o| o.value);
        assert_eq!(latest(PolicyMetric::RequestsPerSecond), Some(200.0));
        assert_eq!(latest(PolicyMetric::RequestsPerSecondPerVcpu), Some(50.0));
        // stub_status has no status classes: the log's stand for nginx's traffic.
        assert_eq!(latest(PolicyMetric::ServerErrorRatio), Some(0.01));
        let mean = view
            .mean("web-1", PolicyMetric::RequestsPerSecond, secs(60))
            .unwrap();
        assert!((mean.value - 200.0).abs() < 1e-9, "{mean:?}");
    }

    #[test]
    fn a_minute_series_has_one_mean_per_minute_at_its_middle() {
        let fleet = fleet(&[("web", &["web-1"])]);
        let mut a = Agent::connect(&fleet, "web-1", 2, 4 * GIB, secs(5), t0());
        // CPU 0.3 for 12 minutes, then 0.6; now is 20 s into minute 12.
        a.report_span(t0(), t0() + secs(12 * 60), 0.3, 0.5);
        let now = t0() + secs(12 * 60 + 20);
        a.report_span(t0() + secs(12 * 60), now, 0.6, 0.5);
        let view = FleetView::new(&fleet, now);
        let s = view
            .minute_series("web-1", PolicyMetric::CpuUtilization, secs(600))
            .unwrap();
        assert!(s.complete);
        // The window starts 20 s into minute 2: minutes 2 to 12.
        assert_eq!(s.points.len(), 11, "{s:?}");
        let (first, last) = (s.points[0], s.points[10]);
        assert_eq!(first.0, timestamp(t0() + secs(2 * 60 + 30)));
        assert_eq!(last.0, timestamp(t0() + secs(12 * 60 + 10)));
        assert!((first.1 - 0.3).abs() < 1e-6, "{first:?}");
        // Minute 12 holds the 0.3 sampled on its first second and four at 0.6.
        assert!((last.1 - 0.54).abs() < 1e-6, "{last:?}");
        let avail = view
            .minute_series("web-1", PolicyMetric::MemoryAvailableRatio, secs(600))
            .unwrap();
        assert!((avail.points[0].1 - 0.5).abs() < 1e-3, "{avail:?}");
        assert_eq!(
            view.minute_series("web-1", PolicyMetric::RequestsPerSecond, secs(600)),
            None
        );
    }

    #[test]
    fn a_silent_vm_turns_stale() {
        let fleet = fleet(&[("web", &["web-1"])]);
        let mut a = Agent::connect(&fleet, "web-1", 2, 4 * GIB, secs(5), t0());
        a.report(t0() + secs(5), 0.5, 0.5);
        let view = FleetView::new(&fleet, t0() + secs(30));
        assert_eq!(
            view.freshness("web-1"),
            Freshness::Stale {
                last_report: timestamp(t0() + secs(5))
            }
        );
    }
}
