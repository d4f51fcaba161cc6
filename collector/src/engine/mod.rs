//! The resize engine loop: on every tick, and promptly for a group one of whose VMs just
//! reported, evaluate the group against a snapshot of the fleet, persist what was
//! decided, hand it to the actuator, and record what came back.
//!
//! ```text
//!  tick (every group) ─┐
//!  report (its group) ─┴► policy::evaluate (FleetView at `now`) ─► store (decisions,
//!                                                     │ persisted first  events, flags)
//!                                                     ▼
//!      outcomes ◄── dispatcher task (bounded queue, bounded concurrency) ◄── job
//!         │              └─► store (each attempt, as it is made)
//!         └─► store (verdict); an acceptance starts the verification window, a
//!             refusal fails the resize (roll stops)
//! ```
//!
//! A report wakes the engine through [`Wake`]: the group of the VM that reported is
//! evaluated at once, or [`PROMPT_GAP`] after its previous evaluation if that was more
//! recent, so a fleet's reports coalesce into at most one evaluation per group per gap.
//! The tick stays as the fallback (deadlines, windows, VMs that went silent).
//!
//! The verification window (`verify_timeout`) counts from the actuator's acceptance:
//! while a request is with the actuator (retrying, or waiting in the queue) the
//! resize's deadline is held at least a whole window ahead.
//!
//! The engine task owns every [`GroupState`]; the HTTP API talks to it through a bounded
//! order channel ([`EngineHandle`]), so pause, resume and manual resizes are ordered
//! with ticks and outcomes. The store is synchronous SQLite: every call runs on
//! `spawn_blocking`, never on an async worker.
//!
//! **Invariants:** the ingest path never waits on the engine or an actuator (the engine
//! only *reads* the fleet, one VM lock at a time, and actuators run on the dispatcher's
//! tasks); a decision is in the store before any actuator sees it; after a restart,
//! cooldowns, caps, flags and in-flight resizes are loaded from the store, in-flight
//! resizes are verified again, and a decision the actuator never answered is sent again
//! with the same `id` (and never a second decision in its place).

mod dispatch;
mod handle;
mod stats;
mod status;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::actuator::Actuator;
use crate::clock::Clock;
use crate::config::Config;
use crate::fleet::view::timestamp;
use crate::fleet::{Fleet, FleetView};
use crate::ha::{Fence, Leadership, SINGLE_TOKEN, Standing};
use dispatch::{Delivered, Dispatcher, Job, dispatch};
pub use handle::EngineHandle;
use handle::{Order, with_store};
pub use stats::{EngineStats, RequestLabels};
pub use status::{
    DecisionBrief, DecisionRecord, GroupStatus, InFlight, MemberNow, RuleHeld, RuleReading,
    RuleStatus, SkipNote, members_now, outcome, outcome_text, skip_kind,
};

use crate::request::{Verdict, verify_window};
use crate::store::{DecisionFilter, Store, StoreError};
use crate::wake::Wake;
use rally_policy::decision::{Decision, Event, PauseReason, Skip};
use rally_policy::state::{GroupState, ResizeStatus};
use rally_policy::{Group, GroupPolicy, ManualError, Policy, Timestamp, evaluate, manual_resize};

/// How often a follower reads the leader's decision state for its page and API.
const FOLLOW_EVERY: Duration = Duration::from_secs(5);
/// Orders from the HTTP API waiting for the engine, at most.
const ORDER_QUEUE: usize = 64;
/// The shortest time between two evaluations of one group prompted by reports: the
/// reports of a group's VMs within it share one evaluation.
pub const PROMPT_GAP: Duration = Duration::from_millis(100);

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

/// Why an operator's order was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
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
    /// Another collector leads: only the leader decides.
    #[error("this collector does not lead; send it to the leader{}", .leader.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    NotLeader {
        /// The leader's URL, when one is known.
        leader: Option<String>,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One configured group with its engine state.
#[derive(Debug)]
struct GroupRuntime {
    name: String,
    /// The group's `timezone`, for the status page and the CLI.
    timezone: chrono_tz::Tz,
    members: Vec<String>,
    dry_run: bool,
    /// `None` for a monitored-only group.
    policy: Option<Policy>,
    state: GroupState,
    last_decision: Option<DecisionBrief>,
    skips: Vec<Skip>,
    /// A member reported since the group was last evaluated.
    reported: bool,
    /// When the group was last evaluated (a tick or a report).
    evaluated_at: Option<Instant>,
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
        let (ladder, rules) = status::policy_status(self.policy.as_ref(), &self.state);
        GroupStatus {
            group: self.name.clone(),
            timezone: self.timezone,
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
            skips: self.skips.iter().map(SkipNote::from).collect(),
            ladder,
            rules,
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
    /// Requests handed to the actuator and not answered yet: decision id → its
    /// verification window, which has not started.
    unanswered: HashMap<String, chrono::Duration>,
    outcomes: mpsc::Receiver<Delivered>,
    orders: mpsc::Receiver<Order>,
    /// Reports → prompt evaluations.
    wake: Arc<Wake>,
    /// VM id → index in `groups`.
    group_of: HashMap<String, usize>,
    /// Whether this collector decides now, and under which term.
    leadership: Leadership,
    /// The term whose decision state the groups hold (loaded when it began).
    restored_for: Option<u64>,
    /// When a follower last read the leader's decision state.
    followed_at: Option<Instant>,
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
    /// sends non-dry-run requests through `actuator` and dry-run ones to the log. It
    /// decides only while `leadership` says this collector leads.
    /// Must be called inside a tokio runtime.
    pub fn new(
        config: &Config,
        fleet: Arc<Fleet>,
        clock: Arc<dyn Clock>,
        store: Store,
        actuator: Arc<dyn Actuator>,
        leadership: Leadership,
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
        let (orders_tx, orders_rx) = mpsc::channel(ORDER_QUEUE);
        tokio::spawn(dispatch(
            jobs_rx,
            outcomes_tx,
            Dispatcher {
                actuator: Arc::clone(&actuator),
                clock: Arc::clone(&clock),
                store: Arc::clone(&store),
                leadership: leadership.clone(),
            },
            config.engine.concurrency,
        ));
        let mut engine = Self {
            groups,
            actuator,
            fleet,
            clock,
            store: Arc::clone(&store),
            stats: Arc::clone(&stats),
            tick: config.engine.tick,
            jobs: jobs_tx,
            backlog: VecDeque::new(),
            unanswered: HashMap::new(),
            outcomes: outcomes_rx,
            orders: orders_rx,
            wake: Arc::new(Wake::default()),
            group_of: HashMap::new(),
            leadership,
            restored_for: None,
            followed_at: None,
        };
        engine.index_members();
        for g in &engine.groups {
            stats.set_group(g.status());
        }
        let handle = EngineHandle {
            stats,
            orders: orders_tx,
            store,
        };
        (engine, handle)
    }

    fn now(&self) -> Timestamp {
        timestamp(self.clock.now())
    }

    /// What ingest marks reports on, to have their groups evaluated promptly.
    pub fn wake(&self) -> Arc<Wake> {
        Arc::clone(&self.wake)
    }

    fn index_members(&mut self) {
        self.group_of = self
            .groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.members.iter().map(move |vm| (vm.clone(), i)))
            .collect();
    }

    /// Loads every group's state from the store (flags, history, resizes in flight)
    /// and queues the decisions the actuator never answered, with their ids. An elected
    /// collector does this when its term begins instead (the previous leader's state).
    pub async fn restore(&mut self) -> Result<(), EngineError> {
        match self.leadership {
            Leadership::Single => self.restore_as(SINGLE_TOKEN).await,
            Leadership::Elected(_) => Ok(()),
        }
    }

    /// [`restore`](Self::restore) for the term `token`: the decisions still unanswered
    /// go out again under it (same id), since this leader now answers for them.
    async fn restore_as(&mut self, token: u64) -> Result<(), EngineError> {
        let now = self.now();
        let unsent = self.load_states(now, true).await?;
        for g in &self.groups {
            if let Some(r) = g.state.in_flight() {
                info!(group = %g.name, vm = %r.vm, id = %r.id, "resuming verification of a resize in flight");
            }
        }
        for (s, last_attempt) in unsent {
            let d = &s.decision;
            let Some(i) = self.groups.iter().position(|g| g.name == d.group) else {
                warn!(id = %d.id, group = %d.group, "an unsent decision's group is no longer configured; not sending it");
                continue;
            };
            if d.verify_deadline <= now {
                // Its evidence is older than a whole verification window: stale.
                warn!(id = %d.id, vm = %d.vm, "an unsent decision is older than its verification window; not sending it");
                self.stale(i, &d.id, now).await;
                continue;
            }
            info!(id = %d.id, vm = %d.vm, attempts = last_attempt, "sending again a decision the actuator never answered (same id)");
            self.queue(d.clone(), token, last_attempt + 1);
        }
        self.restored_for = Some(token);
        self.flush();
        Ok(())
    }

    /// The term this engine may decide under now, with its state loaded; `None` when
    /// another collector leads, the term is past its trusted end, or the state could
    /// not be loaded (then no decision is made: deciding without the in-flight resizes
    /// and cooldowns could resize twice).
    async fn decide_as(&mut self) -> Option<u64> {
        let token = match self.leadership.standing() {
            Standing::Leading(term) => term.token,
            Standing::Expired(term) => {
                if self.restored_for.is_some() {
                    warn!(
                        token = term.token,
                        "fenced: this collector's term is past its trusted end (lease not renewed); not deciding"
                    );
                }
                self.leadership.count_fenced(Fence::Lease, term.token);
                self.restored_for = None;
                return None;
            }
            Standing::NotLeading => {
                self.restored_for = None;
                return None;
            }
        };
        if self.restored_for != Some(token) {
            info!(
                token,
                "term began: loading the decision state, then resuming unanswered requests and verifications"
            );
            self.backlog.clear();
            self.unanswered.clear();
            for g in &mut self.groups {
                g.state = GroupState::default();
                g.last_decision = None;
            }
            if let Err(e) = self.restore_as(token).await {
                error!(token, error = %e, "cannot load the decision state; not deciding until it loads");
                return None;
            }
        }
        Some(token)
    }

    /// Loads every group's state and last decision from the store into the groups (and
    /// the status the API shows); with `unsent`, also the decisions the actuator never
    /// answered, with their last attempt's number.
    async fn load_states(
        &mut self,
        now: Timestamp,
        unsent: bool,
    ) -> Result<Vec<(crate::store::StoredDecision, u32)>, EngineError> {
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
            let mut found = Vec::new();
            if unsent {
                for s in store.unsent()? {
                    let last = store.last_attempt(&s.decision.id)?;
                    found.push((s, last));
                }
            }
            Ok((states, found))
        })
        .await?;
        for (g, (state, last)) in self.groups.iter_mut().zip(states) {
            g.state = state;
            g.last_decision = last.map(|s| DecisionBrief::from(&s.decision));
            self.stats.set_group(g.status());
        }
        Ok(unsent)
    }

    /// A follower shows the leader's decision state (flags, resize in flight, last
    /// decision) on its page and API: read again from etcd every [`FOLLOW_EVERY`] (each
    /// read lists the decision log).
    async fn follow(&mut self) {
        if self
            .followed_at
            .is_some_and(|at| at.elapsed() < FOLLOW_EVERY)
        {
            return;
        }
        self.followed_at = Some(Instant::now());
        let now = self.now();
        if let Err(e) = self.load_states(now, false).await {
            debug!(error = %e, "follower: cannot read the leader's decision state");
        }
    }

    /// Fails the resize of a decision found unsent after a restart and too old to send.
    async fn stale(&mut self, i: usize, id: &str, now: Timestamp) {
        let g = &mut self.groups[i];
        let Some(policy) = &g.policy else { return };
        let events = g.state.actuation_failed(
            policy,
            id,
            now,
            "not sent: the collector stopped before the actuator answered, and the decision is now too old",
        );
        for e in &events {
            log_event(&g.name, e);
        }
        let (name, state) = (g.name.clone(), g.state.clone());
        self.stats.set_group(g.status());
        let result = with_store(&self.store, move |store| {
            store.record_events(&events)?;
            store.save_group(&name, &state)
        })
        .await;
        if let Err(e) = result {
            error!(%id, error = %e, "could not record a stale decision's failure");
        }
    }

    /// Adds `decision` to the backlog for the dispatcher; its verification window waits
    /// for the actuator's answer.
    fn queue(&mut self, decision: Decision, fencing_token: u64, first_attempt: u32) {
        if !decision.dry_run {
            self.unanswered
                .insert(decision.id.clone(), verify_window(&decision));
        }
        self.backlog.push_back(Job {
            decision,
            fencing_token,
            first_attempt,
        });
    }

    /// Holds the deadline of every resize whose request the actuator has not answered
    /// at least a whole verification window ahead of `now`.
    fn hold_deadlines(&mut self, now: Timestamp) {
        if self.unanswered.is_empty() {
            return;
        }
        for g in &mut self.groups {
            for r in &mut g.state.resizes {
                if r.status != ResizeStatus::InFlight {
                    continue;
                }
                if let Some(window) = self.unanswered.get(&r.id) {
                    r.deadline = r.deadline.max(now + *window);
                }
            }
        }
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
                    error!(id = %job.decision.id, "the actuator dispatcher stopped; request not sent");
                    return;
                }
            }
        }
    }

    /// Evaluates every group once at the clock's `now`: persists decisions and events,
    /// then queues the decisions for the actuator.
    pub async fn tick(&mut self) {
        if matches!(self.leadership, Leadership::Elected(_))
            && !matches!(self.leadership.standing(), Standing::Leading(_))
        {
            self.follow().await;
        }
        self.evaluate(|_| true).await;
    }

    /// Marks the groups of the VMs that reported since the engine last looked.
    fn mark_reported(&mut self, vms: &HashSet<String>) {
        for vm in vms {
            if let Some(&i) = self.group_of.get(vm) {
                self.groups[i].reported = true;
            }
        }
    }

    /// When the next report-prompted evaluation is due, if any group waits for one.
    fn prompt_due(&self) -> Option<Instant> {
        self.groups
            .iter()
            .filter(|g| g.reported)
            .map(|g| g.evaluated_at.map_or_else(Instant::now, |t| t + PROMPT_GAP))
            .min()
    }

    /// Evaluates the groups that had a report and whose gap since their last
    /// evaluation is over.
    async fn evaluate_reported(&mut self) {
        let now = Instant::now();
        self.evaluate(|g| g.reported && g.evaluated_at.is_none_or(|t| t + PROMPT_GAP <= now))
            .await;
    }

    /// Evaluates the groups `pick` selects, at the clock's `now`.
    async fn evaluate(&mut self, pick: impl Fn(&GroupRuntime) -> bool) {
        let Some(token) = self.decide_as().await else {
            // A follower: the leader decides; forget the prompts.
            let started = Instant::now();
            for g in self.groups.iter_mut().filter(|g| pick(g)) {
                g.reported = false;
                g.evaluated_at = Some(started);
            }
            return;
        };
        let now_sys = self.clock.now();
        let now = timestamp(now_sys);
        let started = Instant::now();
        self.hold_deadlines(now);
        let mut work = Vec::new();
        let mut picked = Vec::new();
        {
            let view = FleetView::new(&self.fleet, now_sys);
            for (i, g) in self.groups.iter_mut().enumerate() {
                if !pick(g) {
                    continue;
                }
                picked.push(i);
                g.reported = false;
                g.evaluated_at = Some(started);
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
            self.commit(i, decisions, events, token).await;
        }
        for i in picked {
            self.stats.set_group(self.groups[i].status());
        }
        self.flush();
    }

    /// Persists a group's new decisions and events with its flags under term `token`,
    /// then queues the decisions. If the store fails, or refuses the term (fenced), the
    /// decisions are forgotten (not sent) so that a later tick, or the new leader,
    /// decides again.
    async fn commit(&mut self, i: usize, decisions: Vec<Decision>, events: Vec<Event>, token: u64) {
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
                store.record_decision(d, token)?;
            }
            store.record_events(&events)?;
            store.save_group(&name, &state)
        })
        .await;
        let g = &mut self.groups[i];
        if let Err(e) = result {
            if matches!(&e, EngineError::Store(s) if s.is_fenced()) {
                self.leadership.count_fenced(Fence::Commit, token);
                warn!(group = %g.name, token, decisions = decisions.len(), error = %e, "fenced: etcd refused a decision of an ended term; none is sent");
                self.restored_for = None;
            } else {
                error!(group = %g.name, error = %e, "could not persist decisions; none is sent");
            }
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
            self.groups[i].last_decision = Some(DecisionBrief::from(&d));
            self.queue(d, token, 1);
        }
    }

    /// Records an actuator's outcome; a refusal fails the resize (the roll stops and the
    /// circuit breaker counts it).
    async fn delivered(&mut self, delivered: Delivered) {
        let Delivered {
            request,
            verdict,
            answered_at,
            window,
            attempts,
        } = delivered;
        self.unanswered.remove(&request.id);
        let label = if request.dry_run {
            "dry_run"
        } else {
            verdict.as_str()
        };
        self.stats
            .count_request(&request.group, &request.vm, request.direction, label);
        let now = self.now();
        let mut events = Vec::new();
        let mut state = None;
        if let Some(g) = self.groups.iter_mut().find(|g| g.name == request.group) {
            match (&verdict, &g.policy) {
                (Verdict::Accepted, _) => {
                    // The verification window starts now, whatever the retries took.
                    let deadline = answered_at + window;
                    if let Some(r) = g
                        .state
                        .resizes
                        .iter_mut()
                        .find(|r| r.id == request.id && r.status == ResizeStatus::InFlight)
                    {
                        r.deadline = deadline;
                    }
                    info!(id = %request.id, vm = %request.vm, attempts, dry_run = request.dry_run, verify_deadline = %deadline.to_rfc3339(), "resize request accepted");
                }
                (Verdict::Rejected { reason } | Verdict::GaveUp { reason }, Some(policy)) => {
                    warn!(id = %request.id, vm = %request.vm, verdict = verdict.as_str(), attempts, %reason, "resize request not accepted; the resize failed");
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
            store.record_outcome(&id, &verdict, answered_at)?;
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

    async fn order(&mut self, order: Order) {
        let now = self.now();
        match order {
            Order::Pause { group, reply } => {
                let r = self.flag(&group, |s| s.pause(now)).await;
                let _ = reply.send(r);
            }
            Order::Resume { group, reply } => {
                let r = self.flag(&group, GroupState::resume).await;
                let _ = reply.send(r);
            }
            Order::Resize { vm, rung, reply } => {
                let r = self.manual(&vm, &rung).await;
                let _ = reply.send(r);
            }
            Order::Reconfigure {
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
        self.index_members();
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
    ) -> Result<GroupStatus, OrderError> {
        self.leading_order().await?;
        let g = self
            .groups
            .iter_mut()
            .find(|g| g.name == group)
            .ok_or_else(|| OrderError::UnknownGroup(group.to_owned()))?;
        if g.policy.is_none() {
            return Err(OrderError::NotResized(group.to_owned()));
        }
        let before = g.state.clone();
        change(&mut g.state);
        let (name, state) = (g.name.clone(), g.state.clone());
        if let Err(e) = with_store(&self.store, move |s| s.save_group(&name, &state)).await {
            // Not persisted: undo, so memory and store agree.
            if let Some(g) = self.groups.iter_mut().find(|g| g.name == group) {
                g.state = before;
            }
            return Err(OrderError::Store(e.to_string()));
        }
        let g = self
            .groups
            .iter()
            .find(|g| g.name == group)
            .ok_or_else(|| OrderError::UnknownGroup(group.to_owned()))?;
        info!(group = %group, paused = g.state.pause.is_some(), "group flags changed by an operator");
        let status = g.status();
        self.stats.set_group(status.clone());
        Ok(status)
    }

    /// The term an operator's order is carried out under: only the leader changes the
    /// decision state; a follower points to it.
    async fn leading_order(&mut self) -> Result<u64, OrderError> {
        self.decide_as().await.ok_or_else(|| OrderError::NotLeader {
            leader: self.leadership.leader_url(),
        })
    }

    async fn manual(&mut self, vm: &str, rung: &str) -> Result<Decision, OrderError> {
        let token = self.leading_order().await?;
        let now_sys = self.clock.now();
        let now = timestamp(now_sys);
        let i = self
            .groups
            .iter()
            .position(|g| g.members.iter().any(|m| m == vm))
            .ok_or_else(|| OrderError::UnknownVm(vm.to_owned()))?;
        let decision = {
            let g = &mut self.groups[i];
            let policy = g
                .policy
                .as_ref()
                .ok_or_else(|| OrderError::NotResized(g.name.clone()))?;
            let group = Group {
                name: &g.name,
                policy,
                members: &g.members,
                dry_run: g.dry_run,
            };
            let view = FleetView::new(&self.fleet, now_sys);
            manual_resize(&group, &view, &mut g.state, vm, rung, now)?
        };
        self.commit(i, vec![decision.clone()], Vec::new(), token)
            .await;
        let g = &self.groups[i];
        if !g.state.resizes.iter().any(|r| r.id == decision.id) {
            return Err(OrderError::Store(
                "the decision could not be persisted".into(),
            ));
        }
        self.stats.set_group(g.status());
        self.flush();
        Ok(decision)
    }

    /// Runs ticks, orders and outcomes until `shutdown` completes. Requests already
    /// with the actuator finish on their own task; their outcome is lost if the process
    /// exits first, and the decision is sent again (same id) after the restart.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = Arc::clone(&self.wake);
        let mut reported = HashSet::new();
        tokio::pin!(shutdown);
        loop {
            let due = self.prompt_due();
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.tick().await,
                () = wake.wait() => {
                    wake.take_into(&mut reported);
                    self.mark_reported(&reported);
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.evaluate_reported().await;
                }
                Some(order) = self.orders.recv() => self.order(order).await,
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
        timezone: g.timezone,
        members: g.vms.clone(),
        dry_run: g.effective_dry_run(global_dry_run),
        policy,
        state: GroupState::default(),
        last_decision: None,
        skips: Vec::new(),
        reported: false,
        evaluated_at: None,
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

#[cfg(test)]
mod tests;
