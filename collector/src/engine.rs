//! The resize engine loop: on every tick, evaluate every group against a snapshot of the
//! fleet, persist what was decided, hand it to the actuator, and record what came back.
//!
//! ```text
//!  tick ─► policy::evaluate (FleetView at `now`) ─► store (decisions, events, flags)
//!                                                      │ persisted first
//!                                                      ▼
//!          outcomes ◄── dispatcher task (bounded queue, bounded concurrency) ◄── job
//!             │
//!             └─► store (attempts, verdict); a refusal fails the resize (roll stops)
//! ```
//!
//! The engine task owns every [`GroupState`]; the HTTP API talks to it through a bounded
//! command channel ([`EngineHandle`]), so pause, resume and manual resizes are ordered
//! with ticks and outcomes. The store is synchronous SQLite: every call runs on
//! `spawn_blocking`, never on an async worker.
//!
//! **Invariants:** the ingest path never waits on the engine or an actuator (the engine
//! only *reads* the fleet, one VM lock at a time, and actuators run on the dispatcher's
//! tasks); a decision is in the store before any actuator sees it; after a restart,
//! cooldowns, caps, flags and in-flight resizes are loaded from the store, in-flight
//! resizes are verified again, and a decision the actuator never answered is sent again
//! with the same `id` (and never a second decision in its place).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::actuator::{Actuator, LogActuator};
use crate::clock::Clock;
use crate::config::Config;
use crate::fleet::view::timestamp;
use crate::fleet::{Fleet, FleetView};
use crate::request::{Attempt, Outcome, ResizeRequest, Verdict};
use crate::store::{DecisionFilter, Store, StoreError, StoredDecision, Verification};
use rally_policy::decision::{Decision, Direction, Event, PauseReason, Skip, SkipReason};
use rally_policy::ladder::Size;
use rally_policy::state::GroupState;
use rally_policy::{Group, GroupPolicy, ManualError, Policy, Timestamp, evaluate, manual_resize};

/// Without high availability there is one collector and no leader election: token 0.
pub const FENCING_TOKEN: u64 = 0;
/// Commands from the HTTP API waiting for the engine, at most.
const COMMAND_QUEUE: usize = 64;

/// Why the engine could not start or a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A store call could not run (the blocking pool is shutting down).
    #[error("store task: {0}")]
    Join(String),
}

/// Why an operator's command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No group has that name.
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    /// No group has that VM.
    #[error("VM {0:?} is in no configured group")]
    UnknownVm(String),
    /// The group has no ladder.
    #[error("group {0:?} has no ladder: it is monitored only, never resized")]
    NotResized(String),
    /// The policy refused the manual resize.
    #[error(transparent)]
    Manual(#[from] ManualError),
    /// The decision could not be persisted, so it was not sent.
    #[error("the state store failed: {0}")]
    Store(String),
    /// The engine is not running (shutting down).
    #[error("the resize engine is not running")]
    Stopped,
}

/// A resize waiting for verification, as shown by the API and the status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InFlight {
    /// Decision id.
    pub id: String,
    /// The VM.
    pub vm: String,
    /// Up or down.
    pub direction: Direction,
    /// The size requested.
    pub to: Size,
    /// When decided.
    pub created_at: Timestamp,
    /// When it fails if still unverified.
    pub deadline: Timestamp,
}

/// The newest decision of a group, in brief.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionBrief {
    /// Decision id.
    pub id: String,
    /// The VM.
    pub vm: String,
    /// Up or down.
    pub direction: Direction,
    /// Rung before.
    pub from: String,
    /// Rung requested.
    pub to: String,
    /// What caused it (`rule`, `manual`, ...).
    pub trigger: String,
    /// A sentence for humans.
    pub reason: String,
    /// Recorded only.
    pub dry_run: bool,
    /// When decided.
    pub created_at: Timestamp,
}

impl From<&Decision> for DecisionBrief {
    fn from(d: &Decision) -> Self {
        Self {
            id: d.id.clone(),
            vm: d.vm.clone(),
            direction: d.direction,
            from: d.from.rung.clone(),
            to: d.to.rung.clone(),
            trigger: d.trigger.as_str().to_owned(),
            reason: d.reason.clone(),
            dry_run: d.dry_run,
            created_at: d.created_at,
        }
    }
}

/// Why a VM (or the group) got no decision at the last tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkipNote {
    /// The VM, or `None` for the whole group.
    pub vm: Option<String>,
    /// The reason's kind (`stale`, `cooldown`, ... the `reason` label of
    /// `rally_resize_skips`).
    pub kind: &'static str,
    /// The reason in words.
    pub reason: String,
}

/// The name of a skip reason's kind.
pub fn skip_kind(reason: &SkipReason) -> &'static str {
    match reason {
        SkipReason::Stale { .. } => "stale",
        SkipReason::NoSize => "no_size",
        SkipReason::OffLadder { .. } => "off_ladder",
        SkipReason::MissingMetric { .. } => "missing_metric",
        SkipReason::Cooldown { .. } => "cooldown",
        SkipReason::Cap { .. } => "cap",
        SkipReason::Paused { .. } => "paused",
        SkipReason::WindowClosed { .. } => "window_closed",
        SkipReason::RollInProgress { .. } => "roll_in_progress",
        SkipReason::MemberStale { .. } => "member_stale",
        SkipReason::RollStopped { .. } => "roll_stopped",
        SkipReason::BoostActive { .. } => "boost_active",
        SkipReason::RestartNotAllowed => "restart_not_allowed",
        SkipReason::AtMax => "at_max",
        SkipReason::Busy => "busy",
        SkipReason::InsufficientEvidence { .. } => "insufficient_evidence",
    }
}

/// One group as the API, the status page and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// Its members, as configured.
    pub members: Vec<String>,
    /// Whether it has a ladder (false: monitored only).
    pub resizes: bool,
    /// The dry-run flag in force.
    pub dry_run: bool,
    /// Paused by an operator or the circuit breaker.
    pub paused: bool,
    /// Who paused it.
    pub paused_by: Option<PauseReason>,
    /// Since when.
    pub paused_at: Option<Timestamp>,
    /// The circuit breaker tripped (a pause that only `resume` lifts).
    pub circuit_open: bool,
    /// Failed or unverified resizes in a row.
    pub consecutive_failures: u32,
    /// The resize waiting for verification, if any.
    pub in_flight: Option<InFlight>,
    /// The newest decision.
    pub last_decision: Option<DecisionBrief>,
    /// Why members got no decision at the last tick.
    pub skips: Vec<SkipNote>,
}

/// The labels of `rally_resize_requests_total`: group, vm, direction, outcome.
pub type RequestLabels = (String, String, &'static str, &'static str);

/// Counters and gauges the engine keeps for `/metrics`, and the groups' status.
#[derive(Debug, Default)]
pub struct EngineStats {
    groups: Mutex<BTreeMap<String, GroupStatus>>,
    /// (group, vm, direction, outcome) → requests.
    requests: Mutex<BTreeMap<RequestLabels, u64>>,
    /// (group, result) → verification results.
    verifications: Mutex<BTreeMap<(String, &'static str), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EngineStats {
    /// Every group's status, by name.
    pub fn groups(&self) -> Vec<GroupStatus> {
        lock(&self.groups).values().cloned().collect()
    }

    /// One group's status.
    pub fn group(&self, name: &str) -> Option<GroupStatus> {
        lock(&self.groups).get(name).cloned()
    }

    /// `rally_resize_requests_total`: ((group, vm, direction, outcome), count).
    pub fn requests(&self) -> Vec<(RequestLabels, u64)> {
        lock(&self.requests)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// `rally_resize_verifications_total`: ((group, result), count).
    pub fn verifications(&self) -> Vec<((String, &'static str), u64)> {
        lock(&self.verifications)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn count_request(&self, group: &str, vm: &str, direction: Direction, outcome: &'static str) {
        *lock(&self.requests)
            .entry((group.to_owned(), vm.to_owned(), direction.as_str(), outcome))
            .or_default() += 1;
    }

    fn count_verification(&self, group: &str, result: &'static str) {
        *lock(&self.verifications)
            .entry((group.to_owned(), result))
            .or_default() += 1;
    }

    fn remove_group(&self, name: &str) {
        lock(&self.groups).remove(name);
    }

    fn set_group(&self, status: GroupStatus) {
        lock(&self.groups).insert(status.group.clone(), status);
    }
}

/// A decision with everything recorded about it (the `/api/v1/decisions` rows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// The decision and its status.
    #[serde(flatten)]
    pub stored: StoredDecision,
    /// Every delivery attempt.
    pub attempts: Vec<Attempt>,
    /// The verification result, once there is one.
    pub verification: Option<Verification>,
}

enum Command {
    Pause {
        group: String,
        reply: oneshot::Sender<Result<GroupStatus, CommandError>>,
    },
    Resume {
        group: String,
        reply: oneshot::Sender<Result<GroupStatus, CommandError>>,
    },
    Resize {
        vm: String,
        rung: String,
        reply: oneshot::Sender<Result<Decision, CommandError>>,
    },
    Reconfigure {
        config: Box<Config>,
        actuator: Arc<dyn Actuator>,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
}

/// What the HTTP API holds: the engine's status, its command channel and the store.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    stats: Arc<EngineStats>,
    commands: mpsc::Sender<Command>,
    store: Arc<Mutex<Store>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Pause { group, .. } => write!(f, "Pause({group})"),
            Command::Resume { group, .. } => write!(f, "Resume({group})"),
            Command::Resize { vm, rung, .. } => write!(f, "Resize({vm}, {rung})"),
            Command::Reconfigure { .. } => write!(f, "Reconfigure"),
        }
    }
}

/// Runs a store call on the blocking pool.
async fn with_store<T: Send + 'static>(
    store: &Arc<Mutex<Store>>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&mut lock(&store)))
        .await
        .map_err(|e| EngineError::Join(e.to_string()))?
        .map_err(EngineError::from)
}

impl EngineHandle {
    /// The engine's counters and the groups' status.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| CommandError::Stopped)?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    /// Pauses `group` (an operator's pause; the circuit breaker's stays as it is).
    pub async fn pause(&self, group: &str) -> Result<GroupStatus, CommandError> {
        let group = group.to_owned();
        self.ask(|reply| Command::Pause { group, reply }).await
    }

    /// Resumes `group`, closing its circuit breaker and lifting roll stops.
    pub async fn resume(&self, group: &str) -> Result<GroupStatus, CommandError> {
        let group = group.to_owned();
        self.ask(|reply| Command::Resume { group, reply }).await
    }

    /// Resizes `vm` to `rung` now (min/max and one-at-a-time apply; cooldowns do not).
    pub async fn resize(&self, vm: &str, rung: &str) -> Result<Decision, CommandError> {
        let (vm, rung) = (vm.to_owned(), rung.to_owned());
        self.ask(|reply| Command::Resize { vm, rung, reply }).await
    }

    /// Applies a reloaded configuration's groups, policies, `dry_run` and actuator.
    /// A group that stays keeps its state (flags, cooldowns, a resize in flight); a new
    /// one starts from what the store remembers of it. Requests already with the old
    /// actuator finish there. `[engine]` itself needs a restart.
    pub async fn reconfigure(
        &self,
        config: &Config,
        actuator: Arc<dyn Actuator>,
    ) -> Result<(), CommandError> {
        let config = Box::new(config.clone());
        self.ask(|reply| Command::Reconfigure {
            config,
            actuator,
            reply,
        })
        .await
    }

    /// Decisions matching `filter`, newest first, with attempts and verification.
    pub async fn decisions(
        &self,
        filter: DecisionFilter,
    ) -> Result<Vec<DecisionRecord>, EngineError> {
        with_store(&self.store, move |store| {
            let mut out = Vec::new();
            for stored in store.decisions(&filter)? {
                let id = stored.decision.id.clone();
                out.push(DecisionRecord {
                    attempts: store.attempts(&id)?,
                    verification: store.verification(&id)?,
                    stored,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// A request for the dispatcher.
#[derive(Debug, Clone)]
struct Job {
    request: ResizeRequest,
}

/// What the dispatcher reports back.
#[derive(Debug)]
struct Delivered {
    request: ResizeRequest,
    outcome: Outcome,
}

/// One configured group with its engine state.
#[derive(Debug)]
struct GroupRuntime {
    name: String,
    members: Vec<String>,
    dry_run: bool,
    /// `None` for a monitored-only group.
    policy: Option<Policy>,
    state: GroupState,
    last_decision: Option<DecisionBrief>,
    skips: Vec<Skip>,
}

impl GroupRuntime {
    fn status(&self) -> GroupStatus {
        let in_flight = self.state.in_flight().map(|r| InFlight {
            id: r.id.clone(),
            vm: r.vm.clone(),
            direction: r.direction,
            to: r.to,
            created_at: r.created_at,
            deadline: r.deadline,
        });
        GroupStatus {
            group: self.name.clone(),
            members: self.members.clone(),
            resizes: self.policy.is_some(),
            dry_run: self.dry_run,
            paused: self.state.pause.is_some(),
            paused_by: self.state.pause.map(|p| p.by),
            paused_at: self.state.pause.map(|p| p.at),
            circuit_open: self
                .state
                .pause
                .is_some_and(|p| p.by == PauseReason::CircuitBreaker),
            consecutive_failures: self.state.consecutive_failures,
            in_flight,
            last_decision: self.last_decision.clone(),
            skips: self
                .skips
                .iter()
                .map(|s| SkipNote {
                    vm: s.vm.clone(),
                    kind: skip_kind(&s.reason),
                    reason: s.reason.to_string(),
                })
                .collect(),
        }
    }
}

/// The resize engine. Build with [`Engine::new`], then [`Engine::restore`] and
/// [`Engine::run`] (the collector does both in `serve`).
pub struct Engine {
    groups: Vec<GroupRuntime>,
    /// Where non-dry-run requests go; a reload replaces it.
    actuator: Arc<std::sync::RwLock<Arc<dyn Actuator>>>,
    fleet: Arc<Fleet>,
    clock: Arc<dyn Clock>,
    store: Arc<Mutex<Store>>,
    stats: Arc<EngineStats>,
    tick: Duration,
    jobs: mpsc::Sender<Job>,
    /// Persisted requests the full queue could not take yet (bounded by decisions in
    /// flight: one per group, plus dry-run records).
    backlog: VecDeque<Job>,
    outcomes: mpsc::Receiver<Delivered>,
    commands: mpsc::Receiver<Command>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("groups", &self.groups.len())
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine for `config`'s groups and starts its dispatcher task, which
    /// sends non-dry-run requests through `actuator` and dry-run ones to the log.
    /// Must be called inside a tokio runtime.
    pub fn new(
        config: &Config,
        fleet: Arc<Fleet>,
        clock: Arc<dyn Clock>,
        store: Store,
        actuator: Arc<dyn Actuator>,
    ) -> (Self, EngineHandle) {
        let groups = config
            .groups
            .iter()
            .map(|g| group_runtime(g, config.dry_run))
            .collect();
        let actuator = Arc::new(std::sync::RwLock::new(actuator));
        let store = Arc::new(Mutex::new(store));
        let stats = Arc::new(EngineStats::default());
        let (jobs_tx, jobs_rx) = mpsc::channel(config.engine.queue);
        let (outcomes_tx, outcomes_rx) =
            mpsc::channel(config.engine.queue + config.engine.concurrency);
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(dispatch(
            jobs_rx,
            outcomes_tx,
            Arc::clone(&actuator),
            config.engine.concurrency,
        ));
        let engine = Self {
            groups,
            actuator,
            fleet,
            clock,
            store: Arc::clone(&store),
            stats: Arc::clone(&stats),
            tick: config.engine.tick,
            jobs: jobs_tx,
            backlog: VecDeque::new(),
            outcomes: outcomes_rx,
            commands: commands_rx,
        };
        for g in &engine.groups {
            stats.set_group(g.status());
        }
        let handle = EngineHandle {
            stats,
            commands: commands_tx,
            store,
        };
        (engine, handle)
    }

    fn now(&self) -> Timestamp {
        timestamp(self.clock.now())
    }

    /// Loads every group's state from the store (flags, history, resizes in flight)
    /// and queues the decisions the actuator never answered, with their ids.
    pub async fn restore(&mut self) -> Result<(), EngineError> {
        let now = self.now();
        let names: Vec<String> = self.groups.iter().map(|g| g.name.clone()).collect();
        let (states, unsent) = with_store(&self.store, move |store| {
            let mut states = Vec::new();
            for name in &names {
                let state = store.load_group(name, now)?;
                let last = store
                    .decisions(&DecisionFilter {
                        group: Some(name.clone()),
                        limit: Some(1),
                        ..DecisionFilter::default()
                    })?
                    .into_iter()
                    .next();
                states.push((state, last));
            }
            Ok((states, store.unsent()?))
        })
        .await?;
        for (g, (state, last)) in self.groups.iter_mut().zip(states) {
            if let Some(r) = state.in_flight() {
                info!(group = %g.name, vm = %r.vm, id = %r.id, "resuming verification of a resize in flight");
            }
            g.state = state;
            g.last_decision = last.map(|s| DecisionBrief::from(&s.decision));
            self.stats.set_group(g.status());
        }
        for s in unsent {
            let d = &s.decision;
            if !self.groups.iter().any(|g| g.name == d.group) {
                warn!(id = %d.id, group = %d.group, "an unsent decision's group is no longer configured; not sending it");
                continue;
            }
            if d.verify_deadline <= now {
                // Sending now would start a resize the engine already counts as failed.
                warn!(id = %d.id, vm = %d.vm, "an unsent decision is past its verification deadline; not sending it");
                continue;
            }
            info!(id = %d.id, vm = %d.vm, "sending again a decision the actuator never answered (same id)");
            self.queue(Job {
                request: ResizeRequest::new(d, s.fencing_token),
            });
        }
        Ok(())
    }

    fn queue(&mut self, job: Job) {
        self.backlog.push_back(job);
        self.flush();
    }

    /// Hands the backlog to the dispatcher until its queue is full.
    fn flush(&mut self) {
        while let Some(job) = self.backlog.pop_front() {
            match self.jobs.try_send(job) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(job)) => {
                    debug!(waiting = self.backlog.len() + 1, "actuator queue full");
                    self.backlog.push_front(job);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(job)) => {
                    error!(id = %job.request.id, "the actuator dispatcher stopped; request not sent");
                    return;
                }
            }
        }
    }

    /// Evaluates every group once at the clock's `now`: persists decisions and events,
    /// then queues the decisions for the actuator.
    pub async fn tick(&mut self) {
        let now_sys = self.clock.now();
        let now = timestamp(now_sys);
        let mut work = Vec::new();
        {
            let view = FleetView::new(&self.fleet, now_sys);
            for (i, g) in self.groups.iter_mut().enumerate() {
                let Some(policy) = &g.policy else { continue };
                let group = Group {
                    name: &g.name,
                    policy,
                    members: &g.members,
                    dry_run: g.dry_run,
                };
                let eval = evaluate(&group, &view, &mut g.state, now);
                g.skips = eval.skips;
                if !eval.decisions.is_empty() || !eval.events.is_empty() {
                    work.push((i, eval.decisions, eval.events));
                }
            }
        }
        for (i, decisions, events) in work {
            self.commit(i, decisions, events).await;
        }
        for g in &self.groups {
            self.stats.set_group(g.status());
        }
        self.flush();
    }

    /// Persists a group's new decisions and events with its flags, then queues the
    /// decisions. If the store fails, the decisions are forgotten (not sent) so that a
    /// later tick decides again.
    async fn commit(&mut self, i: usize, decisions: Vec<Decision>, events: Vec<Event>) {
        let g = &mut self.groups[i];
        let name = g.name.clone();
        for e in &events {
            self.stats.count_verification(
                &name,
                match e {
                    Event::Verified { .. } => "verified",
                    Event::Failed { .. } => "failed",
                    _ => continue,
                },
            );
            log_event(&name, e);
        }
        let state = g.state.clone();
        let to_store = decisions.clone();
        let result = with_store(&self.store, move |store| {
            for d in &to_store {
                store.record_decision(d, FENCING_TOKEN)?;
            }
            store.record_events(&events)?;
            store.save_group(&name, &state)
        })
        .await;
        let g = &mut self.groups[i];
        if let Err(e) = result {
            error!(group = %g.name, error = %e, "could not persist decisions; none is sent");
            let ids: Vec<&str> = decisions.iter().map(|d| d.id.as_str()).collect();
            g.state.resizes.retain(|r| !ids.contains(&r.id.as_str()));
            return;
        }
        for d in decisions {
            info!(
                id = %d.id, group = %d.group, vm = %d.vm, direction = %d.direction,
                from = %d.from.rung, to = %d.to.rung, dry_run = d.dry_run,
                reason = %d.reason, "resize decided"
            );
            g.last_decision = Some(DecisionBrief::from(&d));
            self.backlog.push_back(Job {
                request: ResizeRequest::new(&d, FENCING_TOKEN),
            });
        }
    }

    /// Records an actuator's outcome; a refusal fails the resize (the roll stops and the
    /// circuit breaker counts it).
    async fn delivered(&mut self, delivered: Delivered) {
        let Delivered { request, outcome } = delivered;
        let label = if request.dry_run {
            "dry_run"
        } else {
            outcome.verdict.as_str()
        };
        self.stats
            .count_request(&request.group, &request.vm, request.direction, label);
        let now = self.now();
        let mut events = Vec::new();
        let mut state = None;
        if let Some(g) = self.groups.iter_mut().find(|g| g.name == request.group) {
            match (&outcome.verdict, &g.policy) {
                (Verdict::Accepted, _) => {
                    info!(id = %request.id, vm = %request.vm, attempts = outcome.attempts.len(), dry_run = request.dry_run, "resize request accepted");
                }
                (Verdict::Rejected { reason } | Verdict::GaveUp { reason }, Some(policy)) => {
                    warn!(id = %request.id, vm = %request.vm, verdict = outcome.verdict.as_str(), %reason, "resize request not accepted; the resize failed");
                    events = g.state.actuation_failed(policy, &request.id, now, reason);
                    for e in &events {
                        log_event(&g.name, e);
                    }
                    state = Some(g.state.clone());
                }
                (_, None) => {}
            }
            self.stats.set_group(g.status());
        }
        let (id, group) = (request.id.clone(), request.group.clone());
        let result = with_store(&self.store, move |store| {
            store.record_outcome(&id, &outcome, false)?;
            store.record_events(&events)?;
            if let Some(state) = &state {
                store.save_group(&group, state)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            error!(id = %request.id, error = %e, "could not record an actuator outcome");
        }
    }

    async fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Pause { group, reply } => {
                let r = self.flag(&group, |s| s.pause(now)).await;
                let _ = reply.send(r);
            }
            Command::Resume { group, reply } => {
                let r = self.flag(&group, GroupState::resume).await;
                let _ = reply.send(r);
            }
            Command::Resize { vm, rung, reply } => {
                let r = self.manual(&vm, &rung).await;
                let _ = reply.send(r);
            }
            Command::Reconfigure {
                config,
                actuator,
                reply,
            } => {
                self.reconfigure(&config, actuator).await;
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// See [`EngineHandle::reconfigure`].
    async fn reconfigure(&mut self, config: &Config, actuator: Arc<dyn Actuator>) {
        *self
            .actuator
            .write()
            .unwrap_or_else(PoisonError::into_inner) = actuator;
        let mut old = std::mem::take(&mut self.groups);
        let mut added = Vec::new();
        for g in &config.groups {
            let mut runtime = group_runtime(g, config.dry_run);
            match old.iter().position(|o| o.name == g.name) {
                Some(i) => {
                    let kept = old.swap_remove(i);
                    runtime.state = kept.state;
                    runtime.last_decision = kept.last_decision;
                    runtime.skips = kept.skips;
                }
                None => added.push(self.groups.len()),
            }
            self.groups.push(runtime);
        }
        for gone in old {
            if let Some(r) = gone.state.in_flight() {
                warn!(group = %gone.name, vm = %r.vm, id = %r.id, "group removed with a resize in flight; it is no longer verified");
            }
            info!(group = %gone.name, "group removed from the configuration");
            self.stats.remove_group(&gone.name);
        }
        let now = self.now();
        for i in added {
            let name = self.groups[i].name.clone();
            let loaded = with_store(&self.store, {
                let name = name.clone();
                move |store| store.load_group(&name, now)
            })
            .await;
            match loaded {
                Ok(state) => self.groups[i].state = state,
                Err(e) => {
                    error!(group = %name, error = %e, "cannot load the new group's state; starting it afresh")
                }
            }
            info!(group = %name, "group added");
        }
        for g in &self.groups {
            self.stats.set_group(g.status());
        }
    }

    async fn flag(
        &mut self,
        group: &str,
        change: impl FnOnce(&mut GroupState),
    ) -> Result<GroupStatus, CommandError> {
        let g = self
            .groups
            .iter_mut()
            .find(|g| g.name == group)
            .ok_or_else(|| CommandError::UnknownGroup(group.to_owned()))?;
        if g.policy.is_none() {
            return Err(CommandError::NotResized(group.to_owned()));
        }
        let before = g.state.clone();
        change(&mut g.state);
        let (name, state) = (g.name.clone(), g.state.clone());
        if let Err(e) = with_store(&self.store, move |s| s.save_group(&name, &state)).await {
            // Not persisted: undo, so memory and store agree.
            if let Some(g) = self.groups.iter_mut().find(|g| g.name == group) {
                g.state = before;
            }
            return Err(CommandError::Store(e.to_string()));
        }
        let g = self
            .groups
            .iter()
            .find(|g| g.name == group)
            .ok_or_else(|| CommandError::UnknownGroup(group.to_owned()))?;
        info!(group = %group, paused = g.state.pause.is_some(), "group flags changed by an operator");
        let status = g.status();
        self.stats.set_group(status.clone());
        Ok(status)
    }

    async fn manual(&mut self, vm: &str, rung: &str) -> Result<Decision, CommandError> {
        let now_sys = self.clock.now();
        let now = timestamp(now_sys);
        let i = self
            .groups
            .iter()
            .position(|g| g.members.iter().any(|m| m == vm))
            .ok_or_else(|| CommandError::UnknownVm(vm.to_owned()))?;
        let decision = {
            let g = &mut self.groups[i];
            let policy = g
                .policy
                .as_ref()
                .ok_or_else(|| CommandError::NotResized(g.name.clone()))?;
            let group = Group {
                name: &g.name,
                policy,
                members: &g.members,
                dry_run: g.dry_run,
            };
            let view = FleetView::new(&self.fleet, now_sys);
            manual_resize(&group, &view, &mut g.state, vm, rung, now)?
        };
        self.commit(i, vec![decision.clone()], Vec::new()).await;
        let g = &self.groups[i];
        if !g.state.resizes.iter().any(|r| r.id == decision.id) {
            return Err(CommandError::Store(
                "the decision could not be persisted".into(),
            ));
        }
        self.stats.set_group(g.status());
        self.flush();
        Ok(decision)
    }

    /// Runs ticks, commands and outcomes until `shutdown` completes. Requests already
    /// with the actuator finish on their own task; their outcome is lost if the process
    /// exits first, and the decision is sent again (same id) after the restart.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.tick().await,
                Some(command) = self.commands.recv() => self.command(command).await,
                Some(delivered) = self.outcomes.recv() => {
                    self.delivered(delivered).await;
                    self.flush();
                }
            }
        }
    }

    /// Waits for the next actuator outcome and records it (tests drive the loop by hand).
    #[cfg(test)]
    async fn next_outcome(&mut self) {
        if let Some(d) = self.outcomes.recv().await {
            self.delivered(d).await;
            self.flush();
        }
    }
}

/// The engine's view of one configured group, with a fresh state.
fn group_runtime(g: &GroupPolicy, global_dry_run: bool) -> GroupRuntime {
    let policy = if g.resizes() {
        match g.compile() {
            Ok(p) => Some(p),
            Err(e) => {
                // Config::check compiled it already; this cannot happen for a loaded
                // config, and a hand-built one just does not resize.
                error!(group = %g.name, error = %e, "group policy is invalid; not resizing it");
                None
            }
        }
    } else {
        None
    };
    GroupRuntime {
        name: g.name.clone(),
        members: g.vms.clone(),
        dry_run: g.effective_dry_run(global_dry_run),
        policy,
        state: GroupState::default(),
        last_decision: None,
        skips: Vec::new(),
    }
}

fn log_event(group: &str, e: &Event) {
    match e {
        Event::Verified {
            id,
            vm,
            vcpus,
            memory_total_bytes,
            ..
        } => {
            info!(group, %id, %vm, vcpus, memory_total_bytes, "resize verified: the agent reports the new size");
        }
        Event::Failed { id, vm, reason, .. } => {
            warn!(group, %id, %vm, %reason, "resize failed");
        }
        Event::RollStopped { direction, until } => {
            warn!(group, %direction, until = %until.to_rfc3339(), "roll stopped after a failed resize");
        }
        Event::CircuitOpened { failures, .. } => {
            error!(
                group,
                failures, "circuit breaker open: group paused until `rally-collector resume`"
            );
        }
    }
}

/// The dispatcher: takes jobs from the bounded queue and runs each on its own task, at
/// most `concurrency` at once, so one slow receiver does not hold up the others.
async fn dispatch(
    mut jobs: mpsc::Receiver<Job>,
    outcomes: mpsc::Sender<Delivered>,
    actuator: Arc<std::sync::RwLock<Arc<dyn Actuator>>>,
    concurrency: usize,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let log: Arc<dyn Actuator> = Arc::new(LogActuator);
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let actuator = if job.request.dry_run {
            Arc::clone(&log)
        } else {
            Arc::clone(&actuator.read().unwrap_or_else(PoisonError::into_inner))
        };
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            let outcome = actuator.send(&job.request).await;
            drop(permit);
            let _ = outcomes
                .send(Delivered {
                    request: job.request,
                    outcome,
                })
                .await;
        });
    }
}

#[cfg(test)]
mod tests;
