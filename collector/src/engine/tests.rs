//! The engine loop on simulated time: a manual clock, a fleet fed by hand, a real
//! SQLite store in a temporary directory and scripted actuators.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::*;
use crate::actuator::{BoxFuture, Webhook, WebhookConfig};
use crate::clock::ManualClock;
use crate::fleet::view::fixtures::{Agent, fleet, t0};
use crate::request::{AttemptLog, AttemptResult, ResizeRequest};
use rally_policy::GroupPolicy;
use rally_policy::ladder::Rung;
use rally_policy::metric::{Metric, Window};
use rally_policy::rule::Rule;

const GIB: u64 = 1 << 30;
const INTERVAL: Duration = Duration::from_secs(5);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Records every request; checks that the decision is in the store before it is sent;
/// answers with the scripted verdicts (then `Accepted`).
struct Recording {
    db: std::path::PathBuf,
    sent: Mutex<Vec<ResizeRequest>>,
    verdicts: Mutex<VecDeque<Verdict>>,
}

impl Recording {
    fn new(state: &Path) -> Arc<Self> {
        Arc::new(Self {
            db: state.join(crate::store::FILE_NAME),
            sent: Mutex::new(Vec::new()),
            verdicts: Mutex::new(VecDeque::new()),
        })
    }

    fn sent(&self) -> Vec<ResizeRequest> {
        self.sent.lock().unwrap().clone()
    }
}

impl Actuator for Recording {
    fn kind(&self) -> &'static str {
        "recording"
    }

    fn send<'a>(
        &'a self,
        request: &'a ResizeRequest,
        attempts: &'a mut AttemptLog,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let persisted = Store::open_file(&self.db)
                .unwrap()
                .decision(&request.id)
                .unwrap();
            assert!(persisted.is_some(), "sent before it was persisted");
            self.sent.lock().unwrap().push(request.clone());
            let verdict = self
                .verdicts
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Verdict::Accepted);
            let code = if verdict == Verdict::Accepted {
                200
            } else {
                400
            };
            let result = AttemptResult::Status {
                code,
                body: String::new(),
            };
            attempts
                .record(request.created_at, Duration::from_millis(1), result)
                .await;
            verdict
        })
    }
}

/// Never answers (a receiver that hangs while the collector dies).
struct Hanging;

impl Actuator for Hanging {
    fn kind(&self) -> &'static str {
        "hanging"
    }

    fn send<'a>(&'a self, _: &'a ResizeRequest, _: &'a mut AttemptLog) -> BoxFuture<'a, Verdict> {
        Box::pin(std::future::pending())
    }
}

/// Answers 503 twice (each attempt reported as it is made), then hangs: a receiver in
/// trouble while the collector dies mid-retry.
struct FailsThenHangs;

impl Actuator for FailsThenHangs {
    fn kind(&self) -> &'static str {
        "fails-then-hangs"
    }

    fn send<'a>(
        &'a self,
        request: &'a ResizeRequest,
        attempts: &'a mut AttemptLog,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            for _ in 0..2 {
                let result = AttemptResult::Status {
                    code: 503,
                    body: "busy".into(),
                };
                attempts
                    .record(request.created_at, Duration::from_millis(1), result)
                    .await;
            }
            std::future::pending().await
        })
    }
}

/// Waits (in real time) until `check` holds; the bound only keeps a broken test from
/// hanging.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < secs(20), "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A webhook receiver on a loopback port: 503 until `open` is set, then 200.
async fn receiver(open: Arc<std::sync::atomic::AtomicBool>) -> String {
    use std::sync::atomic::Ordering;
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(open): axum::extract::State<
                    Arc<std::sync::atomic::AtomicBool>,
                >| async move {
                    if open.load(Ordering::SeqCst) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                },
            ),
        )
        .with_state(open);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn policy() -> GroupPolicy {
    let mut p = GroupPolicy::with_ladder(vec![
        Rung {
            name: "M".into(),
            vcpus: 2,
            memory_bytes: 4 * GIB,
            oktawave_type: None,
        },
        Rung {
            name: "L".into(),
            vcpus: 4,
            memory_bytes: 8 * GIB,
            oktawave_type: None,
        },
    ]);
    p.rules = vec![Rule {
        metric: Metric::CpuUtilization,
        window: Window::Last,
        threshold: 0.8,
        clear: Some(0.5),
        hold_for: secs(30),
    }];
    p.targets = Vec::new();
    p.scale_up.verify_timeout = secs(120);
    p.scale_up.cooldown = secs(600);
    p.dry_run = Some(false);
    p
}

fn config(policy: GroupPolicy) -> Config {
    Config {
        groups: vec![GroupPolicy {
            name: "web".into(),
            vms: vec!["web-1".into()],
            ..policy
        }],
        ..Config::default()
    }
}

struct Sim {
    clock: ManualClock,
    fleet: Arc<Fleet>,
    agent: Agent,
    state: tempfile::TempDir,
}

impl Sim {
    fn new() -> Self {
        let fleet = Arc::new(fleet(&[("web", &["web-1"])]));
        let agent = Agent::connect(
            &fleet,
            "web-1",
            2,
            4 * GIB - 100 * (1 << 20),
            INTERVAL,
            t0(),
        );
        Self {
            clock: ManualClock::new(t0()),
            fleet,
            agent,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn engine(&self, config: &Config, actuator: Arc<dyn Actuator>) -> (Engine, EngineHandle) {
        Engine::new(
            config,
            Arc::clone(&self.fleet),
            Arc::new(self.clock.clone()),
            Store::open(self.state.path()).unwrap(),
            actuator,
            crate::ha::Leadership::Single,
        )
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Reports `cpu` every interval for `span`, ticking the engine after every report.
    async fn run(&mut self, engine: &mut Engine, span: Duration, cpu: f64) {
        let end = self.now() + span;
        while self.now() < end {
            self.clock.advance(INTERVAL);
            self.agent.report(self.now(), cpu, 0.3);
            engine.tick().await;
        }
    }

    fn store(&self) -> Store {
        Store::open(self.state.path()).unwrap()
    }
}

#[tokio::test]
async fn a_held_rule_is_persisted_sent_and_verified() {
    let mut sim = Sim::new();
    let actuator = Recording::new(sim.state.path());
    let (mut engine, handle) = sim.engine(&config(policy()), actuator.clone());
    engine.restore().await.unwrap();

    // 25 s at 0.95: `for` (30 s) has not run out.
    sim.run(&mut engine, secs(25), 0.95).await;
    assert!(
        sim.store()
            .decisions(&DecisionFilter::default())
            .unwrap()
            .is_empty()
    );
    // 10 s more: it fires once.
    sim.run(&mut engine, secs(10), 0.95).await;
    let decisions = sim.store().decisions(&DecisionFilter::default()).unwrap();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let d = &decisions[0].decision;
    assert_eq!((d.from.rung.as_str(), d.to.rung.as_str()), ("M", "L"));
    assert_eq!(d.evidence[0].metric, Metric::CpuUtilization);
    assert_eq!(decisions[0].status, "in_flight");

    engine.next_outcome().await;
    let sent = actuator.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, d.id);
    assert!(!sent[0].dry_run);
    let stored = sim.store().decision(&d.id).unwrap().unwrap();
    assert_eq!(stored.verdict.as_deref(), Some("accepted"));
    assert_eq!(sim.store().attempts(&d.id).unwrap().len(), 1);
    assert_eq!(
        handle.stats().requests(),
        vec![(("web".into(), "web-1".into(), "up", "accepted"), 1)]
    );
    let status = handle.stats().group("web").unwrap();
    assert_eq!(status.in_flight.as_ref().unwrap().id, d.id);
    assert_eq!(status.last_decision.as_ref().unwrap().id, d.id);

    // Still loaded, but in flight: no second decision.
    sim.run(&mut engine, secs(60), 0.95).await;
    assert_eq!(
        sim.store()
            .decisions(&DecisionFilter::default())
            .unwrap()
            .len(),
        1
    );
    assert!(handle.stats().group("web").unwrap().in_flight.is_some());
    assert_eq!(actuator.sent().len(), 1);

    // The agent reports the new size: verified.
    sim.agent.vcpus = 4;
    sim.agent.memory_bytes = 8 * GIB - 100 * (1 << 20);
    sim.run(&mut engine, INTERVAL, 0.4).await;
    let v = sim.store().verification(&d.id).unwrap().unwrap();
    assert!(v.verified, "{v:?}");
    assert_eq!(v.vcpus, Some(4));
    assert_eq!(
        sim.store().decision(&d.id).unwrap().unwrap().status,
        "verified"
    );
    assert!(handle.stats().group("web").unwrap().in_flight.is_none());
    assert_eq!(
        handle.stats().verifications(),
        vec![(("web".into(), "verified"), 1)]
    );
}

#[tokio::test]
async fn an_unverified_resize_fails_at_its_deadline_and_stops_the_roll() {
    let mut sim = Sim::new();
    let actuator = Recording::new(sim.state.path());
    let (mut engine, handle) = sim.engine(&config(policy()), actuator.clone());
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(35), 0.95).await;
    engine.next_outcome().await;
    let id = actuator.sent()[0].id.clone();

    // 120 s verify_timeout; the agent keeps reporting the old size.
    sim.run(&mut engine, secs(115), 0.95).await;
    assert_eq!(
        sim.store().decision(&id).unwrap().unwrap().status,
        "in_flight"
    );
    sim.run(&mut engine, secs(10), 0.95).await;
    let stored = sim.store().decision(&id).unwrap().unwrap();
    assert_eq!(stored.status, "failed");
    let v = sim.store().verification(&id).unwrap().unwrap();
    assert!(!v.verified && v.detail.contains("not verified"), "{v:?}");
    assert_eq!(
        handle.stats().verifications(),
        vec![(("web".into(), "failed"), 1)]
    );
    let status = handle.stats().group("web").unwrap();
    assert_eq!(status.consecutive_failures, 1);
    assert!(status.in_flight.is_none());
    // The roll is stopped for the cooldown: no new decision while the CPU stays high.
    sim.run(&mut engine, secs(60), 0.95).await;
    assert_eq!(
        sim.store()
            .decisions(&DecisionFilter::default())
            .unwrap()
            .len(),
        1
    );
    assert_eq!(actuator.sent().len(), 1);
}

#[tokio::test]
async fn after_a_restart_the_resize_in_flight_is_verified_and_not_decided_again() {
    let mut sim = Sim::new();
    let first = Recording::new(sim.state.path());
    let (mut engine, _) = sim.engine(&config(policy()), first.clone());
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(35), 0.95).await;
    engine.next_outcome().await;
    let id = first.sent()[0].id.clone();
    drop(engine);

    // A new collector process on the same state directory.
    let second = Recording::new(sim.state.path());
    let (mut engine, handle) = sim.engine(&config(policy()), second.clone());
    engine.restore().await.unwrap();
    assert_eq!(
        handle.stats().group("web").unwrap().in_flight.unwrap().id,
        id,
        "the resize in flight was not restored"
    );
    // Well past `for` with the CPU high: nothing new, nothing re-sent (it was accepted).
    sim.run(&mut engine, secs(60), 0.95).await;
    assert!(second.sent().is_empty(), "{:?}", second.sent());
    assert_eq!(
        sim.store()
            .decisions(&DecisionFilter::default())
            .unwrap()
            .len(),
        1
    );

    sim.agent.vcpus = 4;
    sim.agent.memory_bytes = 8 * GIB;
    sim.run(&mut engine, INTERVAL, 0.95).await;
    assert_eq!(
        sim.store().decision(&id).unwrap().unwrap().status,
        "verified"
    );
    // The cooldown after a verified scale-up survives a further restart too.
    drop(engine);
    let third = Recording::new(sim.state.path());
    let (mut engine, _) = sim.engine(&config(policy()), third.clone());
    engine.restore().await.unwrap();
    sim.agent.vcpus = 4;
    sim.run(&mut engine, secs(120), 0.95).await;
    assert!(third.sent().is_empty(), "a scale-up inside the cooldown");
}

#[tokio::test]
async fn a_decision_never_answered_is_sent_again_with_the_same_id_once() {
    let mut sim = Sim::new();
    let (mut engine, _) = sim.engine(&config(policy()), Arc::new(Hanging));
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(35), 0.95).await;
    let decisions = sim.store().decisions(&DecisionFilter::default()).unwrap();
    assert_eq!(decisions.len(), 1);
    let id = decisions[0].decision.id.clone();
    assert_eq!(sim.store().unsent().unwrap().len(), 1);
    drop(engine); // the process dies while the receiver hangs

    let second = Recording::new(sim.state.path());
    let (mut engine, _) = sim.engine(&config(policy()), second.clone());
    engine.restore().await.unwrap();
    engine.next_outcome().await;
    let sent = second.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, id, "re-sent under a new id");
    assert_eq!(sent[0].created_at, decisions[0].decision.created_at);
    assert!(sim.store().unsent().unwrap().is_empty());
    sim.run(&mut engine, secs(60), 0.95).await;
    drop(engine);

    // Answered now: a further restart sends nothing.
    let third = Recording::new(sim.state.path());
    let (mut engine, _) = sim.engine(&config(policy()), third.clone());
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(30), 0.95).await;
    assert!(third.sent().is_empty());
    assert_eq!(
        sim.store()
            .decisions(&DecisionFilter::default())
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_refused_request_fails_the_resize_and_three_open_the_circuit() {
    let mut sim = Sim::new();
    let actuator = Recording::new(sim.state.path());
    actuator
        .verdicts
        .lock()
        .unwrap()
        .extend([Verdict::Rejected {
            reason: "HTTP 400".into(),
        }]);
    let mut p = policy();
    p.circuit_breaker = 1;
    let (mut engine, handle) = sim.engine(&config(p), actuator.clone());
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(35), 0.95).await;
    engine.next_outcome().await;
    let id = actuator.sent()[0].id.clone();
    let stored = sim.store().decision(&id).unwrap().unwrap();
    assert_eq!(stored.status, "failed");
    assert_eq!(stored.verdict.as_deref(), Some("rejected"));
    let status = handle.stats().group("web").unwrap();
    assert!(status.paused && status.circuit_open, "{status:?}");
    assert_eq!(
        handle.stats().requests(),
        vec![(("web".into(), "web-1".into(), "up", "rejected"), 1)]
    );
    // The open circuit survives a restart.
    drop(engine);
    let (mut engine, handle) = sim.engine(&config(policy()), actuator.clone());
    engine.restore().await.unwrap();
    assert!(handle.stats().group("web").unwrap().circuit_open);
    sim.run(&mut engine, secs(60), 0.95).await;
    assert_eq!(actuator.sent().len(), 1);
}

#[tokio::test]
async fn dry_run_decisions_are_recorded_and_logged_not_sent() {
    let mut sim = Sim::new();
    let actuator = Recording::new(sim.state.path());
    let mut p = policy();
    p.dry_run = None; // follows the global default: true
    let (mut engine, handle) = sim.engine(&config(p), actuator.clone());
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(35), 0.95).await;
    engine.next_outcome().await;
    assert!(actuator.sent().is_empty());
    let decisions = sim.store().decisions(&DecisionFilter::default()).unwrap();
    assert_eq!(decisions.len(), 1);
    assert!(decisions[0].decision.dry_run);
    assert_eq!(decisions[0].status, "dry_run");
    assert_eq!(
        handle.stats().requests(),
        vec![(("web".into(), "web-1".into(), "up", "dry_run"), 1)]
    );
}

#[tokio::test]
async fn operators_pause_resume_and_resize_through_the_handle() {
    let mut sim = Sim::new();
    let actuator = Recording::new(sim.state.path());
    let (mut engine, handle) = sim.engine(&config(policy()), actuator.clone());
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(10), 0.3).await;

    async fn serve_one(engine: &mut Engine) {
        let o = engine.orders.recv().await.unwrap();
        engine.order(o).await;
    }
    let (paused, ()) = tokio::join!(handle.pause("web"), serve_one(&mut engine));
    assert!(paused.unwrap().paused);
    // Paused: a held rule decides nothing.
    sim.run(&mut engine, secs(60), 0.95).await;
    assert!(
        sim.store()
            .decisions(&DecisionFilter::default())
            .unwrap()
            .is_empty()
    );
    let (resumed, ()) = tokio::join!(handle.resume("web"), serve_one(&mut engine));
    assert!(!resumed.unwrap().paused);

    let (unknown, ()) = tokio::join!(handle.pause("nope"), serve_one(&mut engine));
    assert!(matches!(unknown, Err(OrderError::UnknownGroup(_))));
    let (bad, ()) = tokio::join!(handle.resize("web-1", "XL"), serve_one(&mut engine));
    assert!(matches!(
        bad,
        Err(OrderError::Manual(ManualError::UnknownRung(_)))
    ));
    let (resized, ()) = tokio::join!(handle.resize("web-1", "L"), serve_one(&mut engine));
    let d = resized.unwrap();
    assert_eq!(d.trigger.as_str(), "manual");
    engine.next_outcome().await;
    assert_eq!(actuator.sent()[0].id, d.id);
    let (again, ()) = tokio::join!(handle.resize("web-1", "L"), serve_one(&mut engine));
    assert!(matches!(
        again,
        Err(OrderError::Manual(ManualError::RollInProgress(_)))
    ));
    let listed = handle.decisions(DecisionFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attempts.len(), 1);
}

#[tokio::test]
async fn a_webhook_retrying_for_longer_than_the_window_still_gets_the_whole_window() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut sim = Sim::new();
    let open = Arc::new(AtomicBool::new(false));
    let url = receiver(Arc::clone(&open)).await;
    let secret_file = sim.state.path().join("webhook.secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let hook = Webhook::new(WebhookConfig {
        url,
        secret_file,
        timeout: secs(5),
        max_attempts: 100_000,
        backoff_initial: Duration::from_millis(2),
        backoff_max: Duration::from_millis(5),
    })
    .unwrap();
    let (mut engine, handle) = sim.engine(&config(policy()), Arc::new(hook));
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(35), 0.95).await;
    let decisions = sim.store().decisions(&DecisionFilter::default()).unwrap();
    let id = decisions[0].decision.id.clone();

    // The receiver answers 503: each attempt is in the store before any final word.
    until("two 503s stored", || {
        sim.store().attempts(&id).unwrap().len() >= 2
    })
    .await;
    assert_eq!(sim.store().decision(&id).unwrap().unwrap().verdict, None);

    // 200 s of retries: longer than the 120 s verify_timeout, and the resize is still
    // waiting, not failed.
    sim.run(&mut engine, secs(200), 0.95).await;
    assert_eq!(
        sim.store().decision(&id).unwrap().unwrap().status,
        "in_flight"
    );
    open.store(true, Ordering::SeqCst);
    engine.next_outcome().await;
    let accepted_at = timestamp(sim.now());
    let stored = sim.store().decision(&id).unwrap().unwrap();
    assert_eq!(stored.verdict.as_deref(), Some("accepted"));
    assert_eq!(stored.accepted_at, Some(accepted_at));
    let attempts = sim.store().attempts(&id).unwrap();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, (1..=attempts.len() as u32).collect::<Vec<_>>());
    assert!(matches!(
        attempts.last().unwrap().result,
        AttemptResult::Status { code: 200, .. }
    ));
    let in_flight = handle.stats().group("web").unwrap().in_flight.unwrap();
    assert_eq!(
        in_flight.deadline,
        accepted_at + chrono::Duration::seconds(120)
    );

    // The whole 120 s from the acceptance: still waiting at 115 s, failed after 120 s.
    sim.run(&mut engine, secs(115), 0.95).await;
    assert_eq!(
        sim.store().decision(&id).unwrap().unwrap().status,
        "in_flight"
    );
    sim.run(&mut engine, secs(10), 0.95).await;
    let v = sim.store().verification(&id).unwrap().unwrap();
    assert!(!v.verified && v.detail.contains("not verified"), "{v:?}");
}

#[tokio::test]
async fn attempts_are_stored_as_made_and_a_restart_numbers_after_them() {
    let mut sim = Sim::new();
    let (mut engine, _) = sim.engine(&config(policy()), Arc::new(FailsThenHangs));
    engine.restore().await.unwrap();
    sim.run(&mut engine, secs(35), 0.95).await;
    let id = sim.store().decisions(&DecisionFilter::default()).unwrap()[0]
        .decision
        .id
        .clone();
    until("two attempts stored", || {
        sim.store().attempts(&id).unwrap().len() == 2
    })
    .await;
    assert_eq!(sim.store().decision(&id).unwrap().unwrap().verdict, None);
    drop(engine); // the process dies mid-retry

    // A new collector on the same state: the two attempts are there, and the resumed
    // send goes on from number 3.
    let stored: Vec<u32> = sim
        .store()
        .attempts(&id)
        .unwrap()
        .iter()
        .map(|a| a.number)
        .collect();
    assert_eq!(stored, [1, 2]);
    let second = Recording::new(sim.state.path());
    let (mut engine, _) = sim.engine(&config(policy()), second.clone());
    engine.restore().await.unwrap();
    engine.next_outcome().await;
    assert_eq!(second.sent()[0].id, id);
    let attempts = sim.store().attempts(&id).unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(matches!(
        attempts[2].result,
        AttemptResult::Status { code: 200, .. }
    ));
    assert_eq!(
        sim.store()
            .decision(&id)
            .unwrap()
            .unwrap()
            .verdict
            .as_deref(),
        Some("accepted")
    );
}

#[tokio::test]
async fn a_report_gets_its_group_evaluated_without_waiting_for_the_tick() {
    let mut sim = Sim::new();
    let actuator = Recording::new(sim.state.path());
    let mut config = config(policy());
    // A tick that never comes again after the first: only reports can prompt.
    config.engine.tick = secs(3600);
    let (mut engine, _) = sim.engine(&config, actuator.clone());
    engine.restore().await.unwrap();
    let wake = engine.wake();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(engine.run(async {
        let _ = stopped.await;
    }));
    // Every 5 s of simulated time a loaded report, each evaluated on its own (the real
    // pause exceeds the gap between two prompted evaluations).
    for _ in 0..8 {
        sim.clock.advance(INTERVAL);
        sim.agent.report(sim.now(), 0.95, 0.3);
        wake.reported("web-1");
        tokio::time::sleep(PROMPT_GAP * 2).await;
    }
    until("the decision sent", || !actuator.sent().is_empty()).await;
    assert_eq!(actuator.sent()[0].vm, "web-1");
    let _ = stop.send(());
    running.await.unwrap();
}
