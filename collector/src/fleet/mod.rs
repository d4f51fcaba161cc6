//! The in-memory picture of the fleet: per VM its group, identity, size, latest report,
//! freshness, report counters and [`Windows`] of recent metrics.
//!
//! # Locking
//!
//! A `RwLock` over the map `vm id → Arc<Mutex<Vm>>`, plus one `Mutex` per VM. The map
//! is written only when a VM appears or is forgotten; a stream keeps its VM's `Arc`
//! (in its [`Session`]) so that each report locks only its own VM, for the few
//! microseconds it takes to fold it in. Readers (a scrape, the API, the policy engine)
//! copy the `Arc`s out of the map and then lock one VM at a time. No lock is ever held
//! across an `.await` (they are `std` locks: the compiler would refuse a held guard in
//! a `Send` future), and nothing slow (I/O, actuators) runs under one.
//!
//! A panic while a lock is held cannot leave a VM half-updated in a way that matters
//! (each update is a few field assignments), so poisoned locks are simply entered.

mod report;
mod totals;
pub mod view;
mod window;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

pub use report::{
    AgentHealth, CpuShares, DiskIo, Filesystem, Hello, Latency, LoadAverage, MAX_SOURCES, Memory,
    NetInterface, PhpFpm, Pressure, PressureLine, PressureResource, Report, RunKey, SourceKind,
    SourceReport, StatusClasses, VmSize,
};
pub use totals::{CpuSeconds, DiskTotals, MAX_TRACKED, NetTotals, RequestTotals, Totals};
pub use view::FleetView;
pub use window::{
    BUCKET_MINUTES, Histories, History, METRIC_COUNT, Metric, MetricValues, RAW_CAP,
    RAW_RESOLUTION, RAW_RETENTION, TimeRange, Windows,
};

use crate::config::{Config, UnknownVms};
use crate::vm_id::UNGROUPED;

/// Agent runs remembered per VM for de-duplication (a restarted agent starts a new one).
const RUNS_PER_VM: usize = 4;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fleet's limits and rules, from `[ingest]` and `[[groups]]`.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// A VM without a report for this long is stale.
    pub stale_after: Duration,
    /// A VM silent for this long (and without a stream) is forgotten.
    pub forget_after: Duration,
    /// What to do with VMs no group names.
    pub unknown_vms: UnknownVms,
    /// At most this many VMs.
    pub max_vms: usize,
    /// Configured groups, in config order: (name, member VM ids).
    pub groups: Vec<(String, Vec<String>)>,
    /// The metrics whose 1-minute means are kept for 24 h.
    pub histories: Histories,
}

impl FleetSettings {
    /// The fleet part of a collector configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            stale_after: config.ingest.stale_after,
            forget_after: config.ingest.forget_after,
            unknown_vms: config.ingest.unknown_vms,
            max_vms: config.ingest.max_vms,
            groups: config
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.vms.clone()))
                .collect(),
            histories: Histories::of_groups(&config.groups),
        }
    }
}

/// Report counters of one VM since the collector started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReportCounters {
    /// Reports applied (duplicates not included).
    pub received: u64,
    /// Reports that arrived again (a replay after a reconnect) and were not applied.
    pub duplicates: u64,
    /// Sequence numbers skipped within a run: reports that will never arrive.
    pub lost: u64,
    /// Reports the agent says it dropped from its full buffer (the `dropped` field).
    pub dropped_by_agent: u64,
    /// The sequence number of the last applied report (0 = none).
    pub last_seq: u64,
    /// Agent reconnects (the reports' `agent_reconnects`), summed over agent runs.
    pub agent_reconnects: u64,
}

#[derive(Debug, Clone)]
struct RunState {
    key: RunKey,
    /// The highest sequence number applied, all lower ones applied or lost. `None`
    /// until the first report of a run the collector has not seen before sets the base.
    watermark: Option<u64>,
}

/// One VM as the collector knows it.
#[derive(Debug)]
pub struct Vm {
    // Shared with the summaries, like `labels` below: a snapshot clones no string.
    id: Arc<str>,
    group: Arc<str>,
    hostname: Option<Arc<str>>,
    agent_version: Option<Arc<str>>,
    /// Shared with the summaries that read it (set at a Hello, cloned per scrape).
    labels: Arc<BTreeMap<String, String>>,
    boot_id: Option<String>,
    interval: Option<Duration>,
    size: Option<VmSize>,
    /// Shared with the summaries: a scrape clones a pointer, not the report's vectors.
    latest: Option<Arc<Report>>,
    /// When the latest report was applied, by the collector's clock.
    last_report_at: Option<SystemTime>,
    /// The last Hello or report (forgetting is measured from here).
    last_seen_at: Option<SystemTime>,
    streams: u32,
    runs: VecDeque<RunState>,
    counters: ReportCounters,
    /// Counters integrated from the applied reports (copied on write only while a
    /// summary still holds the previous ones).
    totals: Arc<Totals>,
    /// The agent run and reconnect count of the last applied report, so that a
    /// run's cumulative count adds only its growth.
    reconnects_seen: Option<(RunKey, u64)>,
    windows: Windows,
}

impl Vm {
    fn new(id: String, group: String) -> Self {
        Self {
            id: id.into(),
            group: group.into(),
            hostname: None,
            agent_version: None,
            labels: Arc::default(),
            boot_id: None,
            interval: None,
            size: None,
            latest: None,
            last_report_at: None,
            last_seen_at: None,
            streams: 0,
            runs: VecDeque::new(),
            counters: ReportCounters::default(),
            totals: Arc::default(),
            reconnects_seen: None,
            windows: Windows::default(),
        }
    }

    /// The VM id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its group (`ungrouped` when no group names it).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The hostname its agent reported.
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// Its agent's version.
    pub fn agent_version(&self) -> Option<&str> {
        self.agent_version.as_deref()
    }

    /// Labels from its agent's config.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Its kernel boot id.
    pub fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }

    /// Its agent's sampling interval.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Its latest known usable size (from the latest report, else from the Hello).
    pub fn size(&self) -> Option<VmSize> {
        self.size
    }

    /// The latest applied report.
    pub fn latest(&self) -> Option<&Report> {
        self.latest.as_deref()
    }

    /// When the latest report was applied (collector clock).
    pub fn last_report_at(&self) -> Option<SystemTime> {
        self.last_report_at
    }

    /// How long ago the latest report was applied.
    pub fn last_report_age(&self, now: SystemTime) -> Option<Duration> {
        self.last_report_at
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
    }

    /// Whether a report was applied less than `stale_after` before `now`.
    pub fn is_fresh(&self, now: SystemTime, stale_after: Duration) -> bool {
        self.last_report_age(now)
            .is_some_and(|age| age < stale_after)
    }

    /// Open agent streams for this VM.
    pub fn streams(&self) -> u32 {
        self.streams
    }

    /// Report counters since the collector started.
    pub fn counters(&self) -> ReportCounters {
        self.counters
    }

    /// The metric windows.
    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Means of every metric over each of `windows` ending at `now`, in one pass.
    pub fn means<const N: usize>(
        &self,
        windows: [Duration; N],
        now: SystemTime,
    ) -> [MetricValues; N] {
        let starts = windows.map(|window| TimeRange::last(window, now).start);
        self.windows.means_since(starts, now)
    }

    fn run_mut(&mut self, key: &RunKey) -> &mut RunState {
        let index = match self.runs.iter().position(|r| &r.key == key) {
            Some(i) => i,
            None => {
                if self.runs.len() >= RUNS_PER_VM {
                    self.runs.pop_front();
                }
                self.runs.push_back(RunState {
                    key: key.clone(),
                    watermark: None,
                });
                self.runs.len() - 1
            }
        };
        &mut self.runs[index]
    }

    fn summary(&self, now: SystemTime, stale_after: Duration) -> VmSummary {
        let [mean_1m, mean_5m] =
            self.means([Duration::from_secs(60), Duration::from_secs(300)], now);
        VmSummary {
            id: self.id.clone(),
            group: self.group.clone(),
            hostname: self.hostname.clone(),
            agent_version: self.agent_version.clone(),
            labels: self.labels.clone(),
            fresh: self.is_fresh(now, stale_after),
            last_report_at: self.last_report_at,
            last_report_age: self.last_report_age(now),
            size: self.size,
            latest: self.latest.clone(),
            latest_values: self
                .latest
                .as_deref()
                .map(MetricValues::of)
                .unwrap_or_default(),
            mean_1m,
            mean_5m,
            streams: self.streams,
            counters: self.counters,
            totals: self.totals.clone(),
        }
    }
}

/// An owned copy of what a scrape, the API or the status page shows of one VM.
#[derive(Debug, Clone)]
pub struct VmSummary {
    /// VM id.
    pub id: Arc<str>,
    /// Group.
    pub group: Arc<str>,
    /// Hostname its agent reported.
    pub hostname: Option<Arc<str>>,
    /// Its agent's version.
    pub agent_version: Option<Arc<str>>,
    /// Its agent's labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Reported within `stale_after`.
    pub fresh: bool,
    /// When the latest report was applied.
    pub last_report_at: Option<SystemTime>,
    /// How long ago that was.
    pub last_report_age: Option<Duration>,
    /// Latest known size.
    pub size: Option<VmSize>,
    /// The latest report.
    pub latest: Option<Arc<Report>>,
    /// The latest report's windowed metrics.
    pub latest_values: MetricValues,
    /// 1-minute means.
    pub mean_1m: MetricValues,
    /// 5-minute means.
    pub mean_5m: MetricValues,
    /// Open streams.
    pub streams: u32,
    /// Report counters.
    pub counters: ReportCounters,
    /// Counters integrated from the applied reports.
    pub totals: Arc<Totals>,
}

/// A fleet snapshot being taken: each VM is locked only while its summary is copied.
///
/// A scrape's snapshot locks every VM once. Taken on a thread whose priority is below
/// ingest's, a VM lock held when that thread is preempted (for up to ~100 ms under
/// load) stalls the async worker whose report needs it, and every stream behind that
/// worker. Taken a slice at a time on the async side instead, it competes on equal
/// terms and lets the worker's other tasks run between slices; the rendering, which
/// takes none of the collector's locks, runs on the lowest-priority threads
/// (`http::reads`).
#[derive(Debug)]
pub struct Snapshot {
    handles: std::vec::IntoIter<Arc<Mutex<Vm>>>,
    summaries: Vec<VmSummary>,
    now: SystemTime,
    stale_after: Duration,
}

impl Snapshot {
    /// Copies up to `count` more VMs' summaries; whether any VM is left.
    pub fn take(&mut self, count: usize) -> bool {
        for vm in self.handles.by_ref().take(count) {
            let summary = lock(&vm).summary(self.now, self.stale_after);
            self.summaries.push(summary);
        }
        self.handles.len() > 0
    }

    /// The summaries, in (group, id) order (VMs not taken yet are left out).
    pub fn finish(mut self) -> Vec<VmSummary> {
        self.summaries
            .sort_unstable_by(|a, b| (&a.group, &a.id).cmp(&(&b.group, &b.id)));
        self.summaries
    }
}

/// Why a Hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// No group names the VM and `unknown_vms = "reject"`.
    #[error("VM `{0}` is in no group and this collector rejects unknown VMs")]
    UnknownVm(String),
    /// The fleet already holds `max_vms` VMs.
    #[error("the collector already tracks {0} VMs (ingest.max_vms)")]
    Full(usize),
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; `lost` sequence numbers before it will never arrive.
    Applied {
        /// Skipped sequence numbers.
        lost: u64,
    },
    /// Already applied earlier: counted, not applied again.
    Duplicate,
    /// Applied, but it would skip more than [`MAX_SEQ_GAP`] sequence numbers: no
    /// agent sends that many reports, so it is a new baseline and nothing is counted
    /// lost.
    Rebased {
        /// How far past the last sequence number it was.
        gap: u64,
    },
}

/// The most sequence numbers one report may skip and have them counted lost: 2^32
/// reports is over a century at one report a second.
pub const MAX_SEQ_GAP: u64 = 1 << 32;

/// The result of [`Session::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// What became of the report.
    pub outcome: Outcome,
    /// The sequence number to acknowledge (the run's watermark).
    pub ack: u64,
}

/// One agent stream's handle on its VM, from its Hello until it ends.
#[derive(Debug)]
pub struct Session {
    vm: Arc<Mutex<Vm>>,
    /// The fleet's [`Histories`], shared so that a reload reaches open streams.
    histories: Arc<AtomicU16>,
    run: RunKey,
    watermark: u64,
    stale_after: Duration,
}

impl Session {
    /// The watermark of this run when the stream opened (0 if the run is new).
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Folds a checked report into the VM, de-duplicating by (run, seq). Reports of a
    /// stream arrive in sequence order, so one watermark per run suffices.
    pub fn apply(&self, report: Report, now: SystemTime) -> Applied {
        let mut vm = lock(&self.vm);
        vm.last_seen_at = Some(now);
        let seq = report.seq;
        let run = vm.run_mut(&self.run);
        let outcome = match run.watermark {
            Some(w) if seq <= w => Outcome::Duplicate,
            Some(w) if seq - w - 1 > MAX_SEQ_GAP => Outcome::Rebased { gap: seq - w },
            Some(w) => Outcome::Applied { lost: seq - w - 1 },
            None => Outcome::Applied { lost: 0 },
        };
        if outcome != Outcome::Duplicate {
            run.watermark = Some(seq);
        }
        let ack = run.watermark.unwrap_or(0);
        // Counters saturate: an agent cannot make one wrap (or fall) by what it sends.
        let lost = match outcome {
            Outcome::Duplicate => {
                vm.counters.duplicates = vm.counters.duplicates.saturating_add(1);
                return Applied { outcome, ack };
            }
            Outcome::Applied { lost } => lost,
            Outcome::Rebased { .. } => 0,
        };
        let counters = &mut vm.counters;
        counters.received = counters.received.saturating_add(1);
        counters.lost = counters.lost.saturating_add(lost);
        counters.dropped_by_agent = counters.dropped_by_agent.saturating_add(report.dropped);
        counters.last_seq = seq;
        // Windows run on the agent's sample time (a replay lands where it belongs), but
        // never ahead of the collector's clock.
        let t = report.timestamp.min(now);
        let kept = Histories::from_bits(self.histories.load(Ordering::Relaxed));
        vm.windows.record(t, &MetricValues::of(&report), kept);
        if report.size.is_some() {
            vm.size = report.size;
        }
        let vcpus = vm.size.map(|s| s.vcpus);
        Arc::make_mut(&mut vm.totals).add(&report, vcpus);
        let reconnects = report.agent.reconnects;
        let grown = match &vm.reconnects_seen {
            Some((run, seen)) if *run == self.run => reconnects.saturating_sub(*seen),
            _ => reconnects,
        };
        vm.counters.agent_reconnects = vm.counters.agent_reconnects.saturating_add(grown);
        if grown > 0
            || vm
                .reconnects_seen
                .as_ref()
                .is_none_or(|(run, _)| *run != self.run)
        {
            vm.reconnects_seen = Some((self.run.clone(), reconnects));
        }
        vm.last_report_at = Some(now);
        vm.latest = Some(Arc::new(report));
        Applied { outcome, ack }
    }

    /// Whether the VM is fresh now (e.g. for logging).
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        lock(&self.vm).is_fresh(now, self.stale_after)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut vm = lock(&self.vm);
        vm.streams = vm.streams.saturating_sub(1);
    }
}

/// Every VM the collector knows, by id.
#[derive(Debug)]
pub struct Fleet {
    /// The settings and group membership; replaced whole by a reload.
    rules: RwLock<Arc<Rules>>,
    /// The settings' [`Histories`], which every [`Session`] reads at each report.
    histories: Arc<AtomicU16>,
    vms: RwLock<HashMap<String, Arc<Mutex<Vm>>>>,
}

/// The fleet's settings with the membership they imply.
#[derive(Debug)]
struct Rules {
    settings: FleetSettings,
    /// vm id → configured group.
    configured: HashMap<String, String>,
}

impl Rules {
    fn new(settings: FleetSettings) -> Self {
        let configured = settings
            .groups
            .iter()
            .flat_map(|(group, members)| members.iter().map(|vm| (vm.clone(), group.clone())))
            .collect();
        Self {
            settings,
            configured,
        }
    }
}

impl Fleet {
    /// A fleet holding the configured VMs (without data yet).
    pub fn new(settings: FleetSettings) -> Self {
        let histories = Arc::new(AtomicU16::new(settings.histories.bits()));
        let rules = Rules::new(settings);
        let vms = rules
            .configured
            .iter()
            .map(|(vm, group)| {
                let state = Vm::new(vm.clone(), group.clone());
                (vm.clone(), Arc::new(Mutex::new(state)))
            })
            .collect();
        Self {
            rules: RwLock::new(Arc::new(rules)),
            histories,
            vms: RwLock::new(vms),
        }
    }

    fn rules(&self) -> Arc<Rules> {
        Arc::clone(&self.rules.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The settings in force.
    pub fn settings(&self) -> FleetSettings {
        self.rules().settings.clone()
    }

    /// Applies new settings (a reload): every VM moves to the group that now names it
    /// (or `ungrouped`), newly named VMs are listed, and VMs that are no longer named
    /// and never reported are dropped. Streams, reports and windows are kept. A VM
    /// `unknown_vms = "reject"` would now refuse keeps its open stream; its next one is
    /// refused. A metric the new settings add to [`FleetSettings::histories`] starts
    /// its history then; one they leave out drops its history at its next minute.
    pub fn reconfigure(&self, settings: FleetSettings) {
        self.histories
            .store(settings.histories.bits(), Ordering::Relaxed);
        let rules = Arc::new(Rules::new(settings));
        let mut map = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|id, vm| {
            let mut state = lock(vm);
            match rules.configured.get(id) {
                Some(group) => {
                    state.group = Arc::from(group.as_str());
                    true
                }
                // Listed only because a group named it: nothing to keep.
                None if state.last_seen_at.is_none() && state.streams == 0 => false,
                None => {
                    state.group = Arc::from(UNGROUPED);
                    true
                }
            }
        });
        for (vm, group) in &rules.configured {
            map.entry(vm.clone())
                .or_insert_with(|| Arc::new(Mutex::new(Vm::new(vm.clone(), group.clone()))));
        }
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = rules;
    }

    /// After `stale_after` without a report a VM is stale.
    pub fn stale_after(&self) -> Duration {
        self.rules().settings.stale_after
    }

    /// The group a VM id belongs to, or `None` if it would be refused.
    pub fn group_for(&self, vm: &str) -> Option<String> {
        let rules = self.rules();
        match rules.configured.get(vm) {
            Some(group) => Some(group.clone()),
            None => match rules.settings.unknown_vms {
                UnknownVms::Ungrouped => Some(UNGROUPED.to_owned()),
                UnknownVms::Reject => None,
            },
        }
    }

    /// Registers an agent stream for `hello.vm_id`: creates the VM if needed and
    /// returns the stream's session (with the run's watermark to acknowledge at once).
    pub fn hello(&self, hello: &Hello, now: SystemTime) -> Result<Session, HelloError> {
        let group = self
            .group_for(&hello.vm_id)
            .ok_or_else(|| HelloError::UnknownVm(hello.vm_id.clone()))?;
        let vm = self.get_or_insert(&hello.vm_id, group)?;
        let watermark = {
            let mut state = lock(&vm);
            state.hostname = Some(Arc::from(hello.hostname.as_str()));
            state.agent_version = Some(Arc::from(hello.agent_version.as_str()));
            state.labels = Arc::new(hello.labels.clone());
            state.boot_id = Some(hello.run.boot_id.clone());
            if hello.interval.is_some() {
                state.interval = hello.interval;
            }
            if hello.size.is_some() {
                state.size = hello.size;
            }
            state.last_seen_at = Some(now);
            state.streams += 1;
            state.run_mut(&hello.run).watermark.unwrap_or(0)
        };
        Ok(Session {
            vm,
            histories: Arc::clone(&self.histories),
            run: hello.run.clone(),
            watermark,
            stale_after: self.stale_after(),
        })
    }

    fn get_or_insert(&self, id: &str, group: String) -> Result<Arc<Mutex<Vm>>, HelloError> {
        if let Some(vm) = self.read_map().get(id) {
            return Ok(Arc::clone(vm));
        }
        let mut map = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(vm) = map.get(id) {
            return Ok(Arc::clone(vm));
        }
        let max_vms = self.rules().settings.max_vms;
        if map.len() >= max_vms {
            return Err(HelloError::Full(max_vms));
        }
        let vm = Arc::new(Mutex::new(Vm::new(id.to_string(), group)));
        map.insert(id.to_string(), Arc::clone(&vm));
        Ok(vm)
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Mutex<Vm>>>> {
        self.vms.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every VM's handle, sorted by (group, id); the map lock is released on return.
    fn handles(&self) -> Vec<Arc<Mutex<Vm>>> {
        let mut handles: Vec<_> = self
            .read_map()
            .values()
            .map(|vm| {
                let state = lock(vm);
                (state.group.clone(), state.id.clone(), Arc::clone(vm))
            })
            .collect();
        handles.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        handles.into_iter().map(|(_, _, vm)| vm).collect()
    }

    /// Runs `f` on one VM under its lock (keep `f` quick: no I/O).
    pub fn with_vm<R>(&self, id: &str, f: impl FnOnce(&Vm) -> R) -> Option<R> {
        let vm = self.read_map().get(id).map(Arc::clone)?;
        let state = lock(&vm);
        Some(f(&state))
    }

    /// Runs `f` on every VM, one lock at a time, in (group, id) order.
    pub fn for_each_vm(&self, mut f: impl FnMut(&Vm)) {
        for vm in self.handles() {
            f(&lock(&vm));
        }
    }

    /// Every VM's summary at `now`, in (group, id) order.
    pub fn snapshot(&self, now: SystemTime) -> Vec<VmSummary> {
        let mut snapshot = self.snapshot_in_slices(now);
        while snapshot.take(usize::MAX) {}
        snapshot.finish()
    }

    /// [`Fleet::snapshot`] taken a slice of VMs at a time, so that the caller can
    /// yield between slices (see [`Snapshot`]).
    pub fn snapshot_in_slices(&self, now: SystemTime) -> Snapshot {
        // Only the map's lock, and only to clone the handles: no VM is locked here.
        let handles: Vec<_> = self.read_map().values().cloned().collect();
        Snapshot {
            summaries: Vec::with_capacity(handles.len()),
            handles: handles.into_iter(),
            now,
            stale_after: self.stale_after(),
        }
    }

    /// One VM's summary at `now`.
    pub fn summary(&self, id: &str, now: SystemTime) -> Option<VmSummary> {
        let stale_after = self.stale_after();
        self.with_vm(id, |vm| vm.summary(now, stale_after))
    }

    /// VM ids, in (group, id) order.
    pub fn vm_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_vm(|vm| out.push(vm.id.to_string()));
        out
    }

    /// The ids of a group's members known now (configured ones and, for `ungrouped`,
    /// those that reported).
    pub fn members(&self, group: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_vm(|vm| {
            if &*vm.group == group {
                out.push(vm.id.to_string());
            }
        });
        out
    }

    /// How many VMs are held.
    pub fn len(&self) -> usize {
        self.read_map().len()
    }

    /// Whether no VM is held.
    pub fn is_empty(&self) -> bool {
        self.read_map().is_empty()
    }

    /// Whether `vm` reported within `stale_after` of `now` (false if unknown).
    pub fn is_fresh(&self, vm: &str, now: SystemTime) -> bool {
        let stale_after = self.stale_after();
        self.with_vm(vm, |v| v.is_fresh(now, stale_after))
            .unwrap_or(false)
    }

    /// Mean of `metric` for `vm` over `range` (see [`Windows::mean`]).
    pub fn mean(&self, vm: &str, metric: Metric, range: TimeRange) -> Option<f64> {
        self.with_vm(vm, |v| v.windows.mean(metric, range))
            .flatten()
    }

    /// Largest sample of `metric` for `vm` in `range` (see [`Windows::max`]).
    pub fn max(&self, vm: &str, metric: Metric, range: TimeRange) -> Option<f64> {
        self.with_vm(vm, |v| v.windows.max(metric, range)).flatten()
    }

    /// The `q`-quantile of 1-minute means (see [`Windows::quantile_of_minute_means`]).
    pub fn quantile_of_minute_means(
        &self,
        vm: &str,
        metric: Metric,
        range: TimeRange,
        q: f64,
    ) -> Option<f64> {
        self.with_vm(vm, |v| v.windows.quantile_of_minute_means(metric, range, q))
            .flatten()
    }

    /// Whether `metric` was reported for `vm` throughout `range`, with no gap longer
    /// than `stale_after` (see [`Windows::covers`]).
    pub fn covers(&self, vm: &str, metric: Metric, range: TimeRange) -> bool {
        let max_gap = self.stale_after();
        self.with_vm(vm, |v| v.windows.covers(metric, range, max_gap))
            .unwrap_or(false)
    }

    /// Drops VMs silent for `forget_after` that have no open stream; configured VMs
    /// are reset to "no data" instead. Returns the ids forgotten.
    pub fn forget_silent(&self, now: SystemTime) -> Vec<String> {
        let rules = self.rules();
        let forget_after = rules.settings.forget_after;
        let silent = |vm: &Vm| {
            vm.streams == 0
                && vm
                    .last_seen_at
                    .is_some_and(|t| now.duration_since(t).is_ok_and(|d| d >= forget_after))
        };
        // Find candidates under the read lock; only take the write lock if needed.
        let candidates: Vec<String> = self
            .read_map()
            .values()
            .filter_map(|vm| {
                let state = lock(vm);
                silent(&state).then(|| state.id.to_string())
            })
            .collect();
        if candidates.is_empty() {
            return candidates;
        }
        let mut map = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        let mut forgotten = Vec::new();
        for id in candidates {
            let Some(vm) = map.get(&id) else { continue };
            // Re-check: a stream may have said Hello meanwhile.
            if !silent(&lock(vm)) {
                continue;
            }
            match rules.configured.get(&id) {
                Some(group) => {
                    *lock(vm) = Vm::new(id.clone(), group.clone());
                }
                None => {
                    map.remove(&id);
                }
            }
            forgotten.push(id);
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_040)
    }

    fn settings(unknown_vms: UnknownVms) -> FleetSettings {
        FleetSettings {
            stale_after: Duration::from_secs(20),
            forget_after: Duration::from_secs(3600),
            unknown_vms,
            max_vms: 5,
            groups: vec![("web".into(), vec!["web-1".into(), "web-2".into()])],
            histories: Histories::ALL,
        }
    }

    fn hello(vm: &str, run_id: u64) -> Hello {
        Hello {
            vm_id: vm.into(),
            hostname: format!("{vm}.example"),
            agent_version: "0.1.0".into(),
            run: RunKey {
                boot_id: "b0".into(),
                run_id,
            },
            labels: BTreeMap::new(),
            size: Some(VmSize {
                vcpus: 2,
                memory_bytes: 4 << 30,
                ..Default::default()
            }),
            interval: Some(Duration::from_secs(5)),
        }
    }

    fn report(seq: u64, t: SystemTime, util: f64) -> Report {
        Report {
            seq,
            timestamp: t,
            interval: Duration::from_secs(5),
            size: Some(VmSize {
                vcpus: 2,
                memory_bytes: 4 << 30,
                ..Default::default()
            }),
            cpu: Some(CpuShares {
                utilization: util,
                user: util,
                idle: 1.0 - util,
                ..CpuShares::default()
            }),
            cores: vec![],
            load: None,
            memory: Some(Memory {
                total_bytes: 4 << 30,
                available_bytes: 3 << 30,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            }),
            pressure: None,
            net: vec![],
            disks: vec![],
            filesystems: vec![],
            dropped: 0,
            agent: Default::default(),
            sources: vec![],
        }
    }

    /// A report whose eth0 received `seq` × 100 bytes/s over its 5 s.
    fn net_report(seq: u64, t: SystemTime) -> Report {
        Report {
            net: vec![NetInterface {
                name: "eth0".into(),
                rx_bytes_per_second: seq as f64 * 100.0,
                tx_bytes_per_second: 0.0,
                rx_packets_per_second: 0.0,
                tx_packets_per_second: 0.0,
                rx_errors: 0,
                tx_errors: 0,
            }],
            ..report(seq, t, 0.5)
        }
    }

    #[test]
    fn agent_reconnects_add_their_growth_per_run() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let with = |seq: u64, reconnects: u64| Report {
            agent: AgentHealth {
                buffered: 1,
                reconnects,
            },
            ..report(seq, t0(), 0.5)
        };
        let total = |fleet: &Fleet| {
            fleet
                .with_vm("web-1", |v| v.counters().agent_reconnects)
                .unwrap()
        };
        let s = fleet.hello(&hello("web-1", 1), t0()).unwrap();
        s.apply(with(1, 0), t0());
        s.apply(with(2, 3), t0());
        // An older count (a report buffered before the last reconnect) adds nothing.
        s.apply(with(3, 2), t0());
        s.apply(with(4, 3), t0());
        assert_eq!(total(&fleet), 3);
        drop(s);
        // A restarted agent counts from 0 again: its whole count is new.
        let s = fleet.hello(&hello("web-1", 2), t0()).unwrap();
        s.apply(with(1, 2), t0());
        assert_eq!(total(&fleet), 5);
    }

    #[test]
    fn a_replayed_minute_adds_what_the_vm_did_and_the_next_run_continues() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let received = |fleet: &Fleet| {
            let vms = fleet.snapshot(t0());
            let vm = vms.iter().find(|v| &*v.id == "web-1").unwrap();
            (vm.totals.net["eth0"].rx_bytes, vm.totals.cpu.unwrap().user)
        };
        let at = |seq: u64| t0() + Duration::from_secs(5 * seq);
        let live = fleet.hello(&hello("web-1", 1), t0()).unwrap();
        for seq in 1..=6 {
            live.apply(net_report(seq, at(seq)), at(seq));
        }
        drop(live);
        let before_outage = received(&fleet).0;
        assert_eq!(
            before_outage,
            (1..=6).map(|s| s as f64 * 500.0).sum::<f64>()
        );

        // A minute (seq 7..=18) buffered by the agent while the collector was away,
        // replayed on reconnect from an older point: 5 and 6 arrive again.
        let replay = fleet.hello(&hello("web-1", 1), at(30)).unwrap();
        assert_eq!(replay.watermark(), 6);
        for seq in 5..=18 {
            replay.apply(net_report(seq, at(seq)), at(30));
        }
        let (after, cpu_user) = received(&fleet);
        let minute: f64 = (7..=18).map(|s| s as f64 * 500.0).sum();
        assert_eq!(after - before_outage, minute);
        // 18 reports × 0.5 user × 5 s × 2 vCPUs.
        assert_eq!(cpu_user, 18.0 * 5.0);
        drop(replay);

        // A restarted agent (a new run, seq from 1) continues the same counter.
        let next = fleet.hello(&hello("web-1", 2), at(31)).unwrap();
        next.apply(net_report(1, at(31)), at(31));
        assert_eq!(received(&fleet).0, after + 500.0);
    }

    #[test]
    fn configured_vms_are_listed_before_they_report() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let snapshot = fleet.snapshot(t0());
        let ids: Vec<_> = snapshot
            .iter()
            .map(|v| (&*v.group, &*v.id, v.fresh))
            .collect();
        assert_eq!(ids, [("web", "web-1", false), ("web", "web-2", false)]);
        assert_eq!(fleet.members("web"), ["web-1", "web-2"]);
    }

    #[test]
    fn a_snapshot_taken_in_slices_is_the_whole_snapshot_in_order() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        // Unknown VMs join "ungrouped", which sorts before the configured group "web".
        // Three, with the two configured: the tests' max_vms.
        for (i, vm) in ["zeta", "alpha", "mid"].iter().enumerate() {
            let session = fleet.hello(&hello(vm, 1), t0()).unwrap();
            session.apply(report(1, t0(), i as f64 / 10.0), t0());
        }
        let ids = |vms: &[VmSummary]| -> Vec<(String, String)> {
            vms.iter()
                .map(|v| (v.group.to_string(), v.id.to_string()))
                .collect()
        };
        let whole = fleet.snapshot(t0());
        assert_eq!(whole.len(), 5);
        let mut sliced = fleet.snapshot_in_slices(t0());
        let mut slices = 1;
        while sliced.take(2) {
            slices += 1;
        }
        assert_eq!(slices, 3, "5 VMs, 2 at a time");
        let sliced = sliced.finish();
        assert_eq!(ids(&sliced), ids(&whole));
        let mut sorted = ids(&whole);
        sorted.sort();
        assert_eq!(ids(&whole), sorted);
        assert_eq!((&*whole[0].id, &*whole[4].id), ("alpha", "web-2"));
        assert_eq!(
            sliced
                .iter()
                .find(|v| &*v.id == "mid")
                .map(|v| v.latest_values),
            whole
                .iter()
                .find(|v| &*v.id == "mid")
                .map(|v| v.latest_values)
        );
    }

    #[test]
    fn an_implausible_seq_jump_is_a_new_baseline_and_counters_saturate() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let session = fleet.hello(&hello("web-1", 7), t0()).unwrap();
        let apply = |seq, dropped| {
            let mut r = report(seq, t0(), 0.5);
            r.dropped = dropped;
            session.apply(r, t0())
        };
        assert_eq!(apply(1, 0).outcome, Outcome::Applied { lost: 0 });
        // 2^63 ahead: no agent sent that many; acknowledged as the new base, not lost.
        let jump = apply(1 + (1 << 63), u64::MAX);
        assert_eq!(jump.outcome, Outcome::Rebased { gap: 1 << 63 });
        assert_eq!(jump.ack, 1 + (1 << 63));
        let far = apply(u64::MAX, u64::MAX);
        assert!(matches!(far.outcome, Outcome::Rebased { .. }), "{far:?}");
        // A gap within MAX_SEQ_GAP is still lost reports.
        let fresh = fleet.hello(&hello("web-1", 8), t0()).unwrap();
        fresh.apply(report(1, t0(), 0.5), t0());
        assert_eq!(
            fresh
                .apply(report(2 + MAX_SEQ_GAP, t0(), 0.5), t0())
                .outcome,
            Outcome::Applied { lost: MAX_SEQ_GAP }
        );
        let counters = fleet.with_vm("web-1", |v| v.counters()).unwrap();
        assert_eq!(counters.lost, MAX_SEQ_GAP, "jumps add nothing to lost");
        assert_eq!(
            counters.dropped_by_agent,
            u64::MAX,
            "dropped = 2^64-1 twice saturates instead of wrapping"
        );
        assert_eq!(counters.received, 5);
    }

    #[test]
    fn reports_are_applied_deduplicated_and_gaps_counted() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let session = fleet.hello(&hello("web-1", 7), t0()).unwrap();
        assert_eq!(session.watermark(), 0);
        let a = |seq| session.apply(report(seq, t0(), 0.5), t0());
        // A run the collector has never seen: the first seq sets the base.
        assert_eq!(
            a(3),
            Applied {
                outcome: Outcome::Applied { lost: 0 },
                ack: 3
            }
        );
        assert_eq!(
            a(4),
            Applied {
                outcome: Outcome::Applied { lost: 0 },
                ack: 4
            }
        );
        assert_eq!(
            a(4),
            Applied {
                outcome: Outcome::Duplicate,
                ack: 4
            }
        );
        assert_eq!(
            a(2),
            Applied {
                outcome: Outcome::Duplicate,
                ack: 4
            }
        );
        assert_eq!(
            a(8),
            Applied {
                outcome: Outcome::Applied { lost: 3 },
                ack: 8
            }
        );
        let counters = fleet.with_vm("web-1", |v| v.counters()).unwrap();
        assert_eq!(
            counters,
            ReportCounters {
                received: 3,
                duplicates: 2,
                lost: 3,
                dropped_by_agent: 0,
                last_seq: 8,
                agent_reconnects: 0,
            }
        );
        drop(session);

        // The same run reconnects: its watermark is acknowledged at once.
        let again = fleet.hello(&hello("web-1", 7), t0()).unwrap();
        assert_eq!(again.watermark(), 8);
        assert_eq!(
            again.apply(report(8, t0(), 0.5), t0()).outcome,
            Outcome::Duplicate
        );
        // A new run (agent restart) starts from nothing.
        let restarted = fleet.hello(&hello("web-1", 9), t0()).unwrap();
        assert_eq!(restarted.watermark(), 0);
        assert_eq!(restarted.apply(report(1, t0(), 0.5), t0()).ack, 1);
        assert_eq!(fleet.with_vm("web-1", |v| v.streams()), Some(2));
    }

    #[test]
    fn unknown_vms_are_ungrouped_or_rejected() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        fleet.hello(&hello("cache-1", 1), t0()).unwrap();
        assert_eq!(
            fleet.with_vm("cache-1", |v| v.group().to_string()).unwrap(),
            UNGROUPED
        );

        let strict = Fleet::new(settings(UnknownVms::Reject));
        assert_eq!(
            strict.hello(&hello("cache-1", 1), t0()).unwrap_err(),
            HelloError::UnknownVm("cache-1".into())
        );
        assert!(strict.hello(&hello("web-2", 1), t0()).is_ok());
    }

    #[test]
    fn the_number_of_vms_is_bounded() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        for i in 0..3 {
            fleet.hello(&hello(&format!("x-{i}"), 1), t0()).unwrap();
        }
        assert_eq!(fleet.len(), 5);
        assert_eq!(
            fleet.hello(&hello("x-3", 1), t0()).unwrap_err(),
            HelloError::Full(5)
        );
        // Known VMs still get in.
        assert!(fleet.hello(&hello("x-0", 2), t0()).is_ok());
    }

    #[test]
    fn freshness_follows_the_collector_clock() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let session = fleet.hello(&hello("web-1", 1), t0()).unwrap();
        assert!(!fleet.is_fresh("web-1", t0()), "no report yet");
        // The agent's clock is an hour behind: freshness does not care.
        session.apply(report(1, t0() - Duration::from_secs(3600), 0.5), t0());
        assert!(fleet.is_fresh("web-1", t0() + Duration::from_secs(19)));
        assert!(!fleet.is_fresh("web-1", t0() + Duration::from_secs(20)));
        assert!(!fleet.is_fresh("nope", t0()));
        let age = fleet
            .with_vm("web-1", |v| {
                v.last_report_age(t0() + Duration::from_secs(7))
            })
            .flatten();
        assert_eq!(age, Some(Duration::from_secs(7)));
    }

    #[test]
    fn summaries_carry_latest_and_window_means() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let session = fleet.hello(&hello("web-1", 1), t0()).unwrap();
        // 5 minutes at 0.2, then 1 minute at 0.6.
        for i in 1..=72u64 {
            let t = t0() + Duration::from_secs(i * 5);
            let util = if i > 60 { 0.6 } else { 0.2 };
            session.apply(report(i, t, util), t);
        }
        let now = t0() + Duration::from_secs(360);
        let vm = fleet
            .snapshot(now)
            .into_iter()
            .find(|v| &*v.id == "web-1")
            .unwrap();
        assert!(vm.fresh);
        assert_eq!(vm.latest.as_ref().map(|r| r.seq), Some(72));
        assert_eq!(vm.latest_values.get(Metric::CpuUtilization), Some(0.6));
        let m1 = vm.mean_1m.get(Metric::CpuUtilization).unwrap();
        let m5 = vm.mean_5m.get(Metric::CpuUtilization).unwrap();
        assert!((m1 - 0.6).abs() < 1e-9, "{m1}");
        assert!((m5 - (48.0 * 0.2 + 12.0 * 0.6) / 60.0).abs() < 1e-9, "{m5}");
        assert_eq!(vm.mean_1m.get(Metric::MemoryUsedRatio), Some(0.25));
        assert_eq!(vm.mean_1m.get(Metric::PsiCpuSomeAvg10), None);
        let range = TimeRange::last(Duration::from_secs(180), now);
        assert!(fleet.covers("web-1", Metric::CpuUtilization, range));
        assert!(!fleet.covers("web-1", Metric::PsiCpuSomeAvg10, range));
        assert_eq!(fleet.max("web-1", Metric::CpuUtilization, range), Some(0.6));
    }

    #[test]
    fn a_reload_changes_the_histories_of_open_streams() {
        let none = FleetSettings {
            histories: Histories::from_bits(0),
            ..settings(UnknownVms::Ungrouped)
        };
        let fleet = Fleet::new(none.clone());
        let session = fleet.hello(&hello("web-1", 1), t0()).unwrap();
        let at = |i: u64| t0() + Duration::from_secs(i * 5);
        let heap = |fleet: &Fleet| {
            fleet
                .with_vm("web-1", |v| v.windows().heap_bytes())
                .unwrap()
        };
        // 7.5 minutes: the raw ring is full (and stays so at 72 samples).
        for i in 1..=90 {
            session.apply(report(i, at(i), 0.5), at(i));
        }
        let without = heap(&fleet);
        let range = TimeRange::last(Duration::from_secs(3600), at(90));
        let p100 = |fleet: &Fleet| {
            fleet.quantile_of_minute_means("web-1", Metric::CpuUtilization, range, 1.0)
        };
        assert_eq!(p100(&fleet), None);
        fleet.reconfigure(settings(UnknownVms::Ungrouped));
        for i in 91..=126 {
            session.apply(report(i, at(i), 0.5), at(i));
        }
        // CPU and memory used ratio: two rings of two bytes a minute.
        assert_eq!(heap(&fleet), without + 2 * 2 * BUCKET_MINUTES as usize);
        let range = TimeRange::last(Duration::from_secs(3600), at(126));
        assert_eq!(
            fleet.quantile_of_minute_means("web-1", Metric::CpuUtilization, range, 1.0),
            Some(0.5)
        );
        fleet.reconfigure(none);
        session.apply(report(127, at(139), 0.5), at(139));
        assert_eq!(heap(&fleet), without);
    }

    #[test]
    fn silent_vms_are_forgotten_but_not_while_connected() {
        let fleet = Fleet::new(settings(UnknownVms::Ungrouped));
        let cache = fleet.hello(&hello("cache-1", 1), t0()).unwrap();
        cache.apply(report(1, t0(), 0.5), t0());
        let web = fleet.hello(&hello("web-1", 1), t0()).unwrap();
        web.apply(report(1, t0(), 0.5), t0());
        drop(web);
        let later = t0() + Duration::from_secs(3600);
        assert!(
            fleet
                .forget_silent(later - Duration::from_secs(1))
                .is_empty()
        );
        // cache-1 still has its stream open; web-1 is configured, so it stays listed,
        // without data.
        assert_eq!(fleet.forget_silent(later), ["web-1"]);
        assert_eq!(fleet.vm_ids(), ["cache-1", "web-1", "web-2"]);
        assert_eq!(fleet.with_vm("web-1", |v| v.latest().is_none()), Some(true));
        drop(cache);
        assert_eq!(fleet.forget_silent(later), ["cache-1"]);
        assert_eq!(fleet.vm_ids(), ["web-1", "web-2"]);
        // Nothing left to forget.
        assert!(
            fleet
                .forget_silent(later + Duration::from_secs(7200))
                .is_empty()
        );
    }
}
