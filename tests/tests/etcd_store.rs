//! The collector's state store in etcd against real etcd: the same scenario gives the
//! same answers as the SQLite store; writes are fenced by the leader's term; a new
//! leader reads what the old one wrote. Store calls run on `spawn_blocking` threads of a
//! multi-thread runtime, as the engine makes them.

#![allow(clippy::unwrap_used)] // a panic is the test failure report

use std::time::Duration;

use rally_collector::request::{Attempt, AttemptResult, Verdict};
use rally_collector::store::{DecisionFilter, Store, StoreError};
use rally_etcd::pb::mvccpb::KeyValue;
use rally_etcd::pb::v3electionpb::LeaderKey;
use rally_etcd::{Etcd, Term};
use rally_policy::Timestamp;
use rally_policy::decision::{
    Baseline, Decision, Direction, Event, PauseReason, SizedRung, Trigger,
};
use rally_policy::state::{GroupState, Pause, ResizeStatus};
use rally_tests::etcd::Cluster;
use tokio::sync::watch;

const ELECTION: &str = "/t/leader";
const PREFIX: &str = "/t";

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn decision(id: &str, group: &str, vm: &str, at: &str, dry_run: bool) -> Decision {
    let created_at = t(at);
    Decision {
        id: id.into(),
        group: group.into(),
        vm: vm.into(),
        direction: Direction::Up,
        from: SizedRung {
            rung: "M".into(),
            vcpus: 2,
            memory_bytes: 4 << 30,
        },
        to: SizedRung {
            rung: "L".into(),
            vcpus: 4,
            memory_bytes: 8 << 30,
        },
        trigger: Trigger::Rule,
        reason: "rule held".into(),
        evidence: Vec::new(),
        dry_run,
        created_at,
        verify_deadline: created_at + minutes(5),
        baseline: Baseline {
            vcpus: 2,
            memory_total_bytes: (4 << 30) - (150 << 20),
        },
    }
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

fn attempt(number: u32, at: &str, result: AttemptResult) -> Attempt {
    Attempt {
        number,
        started_at: t(at),
        duration_ms: 10 * u64::from(number),
        result,
    }
}

fn ids(list: Vec<rally_collector::store::StoredDecision>) -> Vec<String> {
    list.into_iter().map(|s| s.decision.id).collect()
}

/// Runs `f` on the blocking pool, as the engine calls the store.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Everything the store answered, in order, for comparing the two backends.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn note<T: std::fmt::Debug>(&mut self, what: &str, v: T) -> T {
        self.0.push(format!("{what}: {v:?}"));
        v
    }
}

/// The scenario both backends go through, with the term's fencing token; asserts what it
/// expects and returns every answer.
fn scenario(store: &mut Store, token: u64) -> Vec<String> {
    let mut seen = Transcript::default();
    let web = |id, vm, at| decision(id, "web", vm, at, false);

    // d1: sent (two attempts), accepted, then verified.
    let d1 = web("d1", "web-1", "2026-01-15T10:00:00Z");
    store.record_decision(&d1, token).unwrap();
    assert_eq!(
        seen.note("last_attempt d1", store.last_attempt("d1").unwrap()),
        0
    );
    let attempts = [
        attempt(
            1,
            "2026-01-15T10:00:00Z",
            AttemptResult::Status {
                code: 500,
                body: "busy".into(),
            },
        ),
        attempt(2, "2026-01-15T10:00:03Z", AttemptResult::Timeout),
    ];
    for a in &attempts {
        store.record_attempt("d1", a).unwrap();
    }
    assert_eq!(
        seen.note("last_attempt d1", store.last_attempt("d1").unwrap()),
        2
    );
    assert_eq!(seen.note("unsent", ids(store.unsent().unwrap())), ["d1"]);
    let accepted = t("2026-01-15T10:00:05Z");
    store
        .record_outcome("d1", &Verdict::Accepted, accepted)
        .unwrap();
    let stored = seen.note("decision d1", store.decision("d1").unwrap().unwrap());
    assert_eq!(stored.decision, d1);
    assert_eq!(
        (
            stored.fencing_token,
            stored.status.as_str(),
            stored.accepted_at
        ),
        (token, "in_flight", Some(accepted))
    );
    assert_eq!(
        seen.note("attempts d1", store.attempts("d1").unwrap()),
        attempts
    );
    assert!(seen.note("unsent", store.unsent().unwrap()).is_empty());

    // d2: the actuator gave up; d3: in flight, never answered; a dry run in another
    // group; two decisions at the same instant (ordered as recorded); one too old for
    // the history, verified, and one as old still in flight.
    let d2 = web("d2", "web-2", "2026-01-15T10:02:00Z");
    store.record_decision(&d2, token).unwrap();
    store
        .record_attempt(
            "d2",
            &attempt(
                1,
                "2026-01-15T10:02:00Z",
                AttemptResult::Transport {
                    error: "refused".into(),
                },
            ),
        )
        .unwrap();
    store
        .record_outcome(
            "d2",
            &Verdict::GaveUp {
                reason: "refused".into(),
            },
            t("2026-01-15T10:02:30Z"),
        )
        .unwrap();
    store
        .record_decision(&web("d3", "web-3", "2026-01-15T10:09:00Z"), token)
        .unwrap();
    store
        .record_decision(
            &decision("dry", "db", "db-1", "2026-01-15T10:03:00Z", true),
            token,
        )
        .unwrap();
    for id in ["tie-a", "tie-b"] {
        store
            .record_decision(&web(id, "web-4", "2026-01-15T09:30:00Z"), token)
            .unwrap();
    }
    store
        .record_decision(&web("old", "web-1", "2026-01-12T10:00:00Z"), token)
        .unwrap();
    store
        .record_decision(&web("old-stuck", "web-5", "2026-01-12T11:00:00Z"), token)
        .unwrap();
    store
        .record_outcome("old-stuck", &Verdict::Accepted, t("2026-01-12T11:00:01Z"))
        .unwrap();
    // A duplicate id is refused; an outcome for no decision changes nothing.
    assert!(store.record_decision(&d1, token).is_err());
    store
        .record_outcome("nope", &Verdict::Accepted, accepted)
        .unwrap();
    assert_eq!(
        seen.note("decision nope", store.decision("nope").unwrap()),
        None
    );

    // Verification results, several decisions at once.
    let verified_at = t("2026-01-15T10:01:00Z");
    store
        .record_events(&[
            Event::Verified {
                id: "d1".into(),
                vm: "web-1".into(),
                at: verified_at,
                vcpus: 4,
                memory_total_bytes: 8 << 30,
            },
            Event::Failed {
                id: "d2".into(),
                vm: "web-2".into(),
                at: t("2026-01-15T10:02:30Z"),
                reason: "actuator gave up".into(),
            },
            Event::Verified {
                id: "old".into(),
                vm: "web-1".into(),
                at: t("2026-01-12T10:01:00Z"),
                vcpus: 4,
                memory_total_bytes: 8 << 30,
            },
            Event::RollStopped {
                direction: Direction::Up,
                until: t("2026-01-15T10:20:00Z"),
            },
        ])
        .unwrap();
    let v1 = seen.note("verification d1", store.verification("d1").unwrap());
    assert_eq!(v1.map(|v| (v.verified, v.vcpus)), Some((true, Some(4))));
    let v2 = seen.note("verification d2", store.verification("d2").unwrap());
    assert_eq!(
        v2.map(|v| (v.verified, v.detail)),
        Some((false, "actuator gave up".to_owned()))
    );
    assert_eq!(
        seen.note("verification d3", store.verification("d3").unwrap()),
        None
    );
    assert!(store.record_attempt("nope", &attempts[0]).is_err());

    // Flags saved and loaded; the history and what is in flight.
    let now = t("2026-01-15T10:10:00Z");
    let flags = GroupState {
        pause: Some(Pause {
            at: now,
            by: PauseReason::CircuitBreaker,
        }),
        consecutive_failures: 2,
        up_roll_stopped_until: Some(t("2026-01-15T10:20:00Z")),
        ..GroupState::default()
    };
    store.save_group("web", &flags).unwrap();
    let state = seen.note("load_group web", store.load_group("web", now).unwrap());
    assert_eq!(
        (
            state.pause,
            state.consecutive_failures,
            state.up_roll_stopped_until,
            state.down_roll_stopped_until
        ),
        (flags.pause, 2, flags.up_roll_stopped_until, None)
    );
    let history: Vec<(&str, &ResizeStatus)> = state
        .resizes
        .iter()
        .map(|r| (r.id.as_str(), &r.status))
        .collect();
    assert_eq!(
        history,
        [
            ("old-stuck", &ResizeStatus::InFlight),
            ("tie-a", &ResizeStatus::InFlight),
            ("tie-b", &ResizeStatus::InFlight),
            ("d1", &ResizeStatus::Verified { at: verified_at }),
            (
                "d2",
                &ResizeStatus::Failed {
                    at: t("2026-01-15T10:02:30Z")
                }
            ),
            ("d3", &ResizeStatus::InFlight),
        ],
        "older than two days: only what is still in flight"
    );
    // The verification window counts from the acceptance.
    assert_eq!(state.resizes[3].deadline, accepted + minutes(5));
    let db = seen.note("load_group db", store.load_group("db", now).unwrap());
    assert_eq!(db.resizes.len(), 1);
    assert_eq!(db.resizes[0].status, ResizeStatus::DryRun);
    assert!(store.load_group("none", now).unwrap() == GroupState::default());
    // Resumed: the flags are overwritten.
    store.save_group("web", &GroupState::default()).unwrap();
    let state = store.load_group("web", now).unwrap();
    assert_eq!(
        seen.note("flags web", (state.pause, state.consecutive_failures)),
        (None, 0)
    );

    // Sent again after a restart: in flight without a final word, oldest first.
    assert_eq!(
        seen.note("unsent", ids(store.unsent().unwrap())),
        ["tie-a", "tie-b", "d3"]
    );

    // The decision log: newest first, filtered, limited.
    let mut list = |what: &str, f: DecisionFilter| {
        let list = store.decisions(&f).unwrap();
        seen.note(what, &list);
        ids(list)
    };
    assert_eq!(
        list("all", DecisionFilter::default()),
        [
            "d3",
            "dry",
            "d2",
            "d1",
            "tie-b",
            "tie-a",
            "old-stuck",
            "old"
        ]
    );
    assert_eq!(
        list(
            "group db",
            DecisionFilter {
                group: Some("db".into()),
                ..DecisionFilter::default()
            }
        ),
        ["dry"]
    );
    assert_eq!(
        list(
            "vm web-1",
            DecisionFilter {
                vm: Some("web-1".into()),
                ..DecisionFilter::default()
            }
        ),
        ["d1", "old"]
    );
    assert_eq!(
        list(
            "window",
            DecisionFilter {
                since: Some(t("2026-01-15T09:30:00Z")),
                until: Some(t("2026-01-15T10:03:00Z")),
                ..DecisionFilter::default()
            }
        ),
        ["d2", "d1", "tie-b", "tie-a"]
    );
    assert_eq!(
        list(
            "limit",
            DecisionFilter {
                group: Some("web".into()),
                limit: Some(2),
                ..DecisionFilter::default()
            }
        ),
        ["d3", "d2"]
    );

    // Tickets: the first is kept; finishing one that does not exist changes nothing.
    let at = t("2026-01-15T10:04:00Z");
    assert_eq!(seen.note("ticket d3", store.ticket("d3").unwrap()), None);
    store.record_ticket("d3", "501", "9001", at).unwrap();
    store.record_ticket("d3", "501", "9002", at).unwrap();
    assert_eq!(
        seen.note("ticket d3", store.ticket("d3").unwrap()),
        Some(("501".into(), "9001".into(), false))
    );
    store.finish_ticket("d3", at).unwrap();
    store.finish_ticket("nope", at).unwrap();
    assert_eq!(
        seen.note("ticket d3", store.ticket("d3").unwrap()),
        Some(("501".into(), "9001".into(), true))
    );
    assert_eq!(
        seen.note("ticket nope", store.ticket("nope").unwrap()),
        None
    );
    assert!(
        seen.note("attempts nope", store.attempts("nope").unwrap())
            .is_empty()
    );
    seen.0
}

/// One etcd member and a client.
async fn etcd() -> (tempfile::TempDir, Cluster, Etcd) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::local(dir.path(), 1).await;
    let client = Etcd::new(&cluster.endpoints(), Duration::from_secs(2)).unwrap();
    (dir, cluster, client)
}

/// Wins the election with a lease of its own: (lease, leader key, term).
async fn campaign(etcd: &Etcd) -> (i64, LeaderKey, Term) {
    let lease = etcd.grant(10).await.unwrap();
    let key = etcd.campaign(ELECTION, lease, Vec::new()).await.unwrap();
    let term = Term::of(&key);
    (lease, key, term)
}

/// The store in etcd under `term` (none: not the leader); the sender sets the term.
fn etcd_store(etcd: &Etcd, term: Option<Term>) -> (Store, watch::Sender<Option<Term>>) {
    let (tx, rx) = watch::channel(term);
    let store = Store::etcd(etcd.clone(), PREFIX, rx, tokio::runtime::Handle::current());
    (store, tx)
}

/// Every key of the store, with its revisions.
async fn state(etcd: &Etcd) -> Vec<KeyValue> {
    etcd.get_prefix(&format!("{PREFIX}/state/")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_answer_the_same_scenario_alike() {
    let (_dir, _cluster, etcd) = etcd().await;
    let (_lease, _key, term) = campaign(&etcd).await;
    let token = term.token;
    let (mut in_etcd, _tx) = etcd_store(&etcd, Some(term));
    let from_etcd = blocking(move || scenario(&mut in_etcd, token)).await;

    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = Store::open(dir.path()).unwrap();
    let from_sqlite = blocking(move || scenario(&mut sqlite, token)).await;
    assert_eq!(from_etcd, from_sqlite);

    // The layout: one document per group, decision and ticket.
    let keys: Vec<String> = state(&etcd)
        .await
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert!(keys.contains(&"/t/state/groups/web".to_owned()));
    assert!(keys.contains(&"/t/state/decisions/d1".to_owned()));
    assert!(keys.contains(&"/t/state/tickets/d3".to_owned()));
    assert_eq!(keys.len(), 1 + 8 + 1);
}

/// Every write the store makes, each expected to be refused.
fn every_write(store: &mut Store, token: u64) -> Vec<StoreError> {
    let at = t("2026-01-15T11:00:00Z");
    [
        store.record_decision(
            &decision("new", "web", "web-9", "2026-01-15T11:00:00Z", false),
            token,
        ),
        store.record_attempt(
            "d1",
            &attempt(3, "2026-01-15T11:00:00Z", AttemptResult::Timeout),
        ),
        store.record_outcome("d1", &Verdict::Accepted, at),
        store.record_events(&[Event::Failed {
            id: "d1".into(),
            vm: "web-1".into(),
            at,
            reason: "late".into(),
        }]),
        store.save_group("web", &GroupState::default()),
        store.record_ticket("d2", "1", "2", at),
        store.finish_ticket("d1", at),
    ]
    .into_iter()
    .map(|r| r.unwrap_err())
    .collect()
}

/// A decision in flight, an attempt, flags and a ticket: what a leader leaves behind.
fn leave_work(store: &mut Store, token: u64) {
    store
        .record_decision(
            &decision("d1", "web", "web-1", "2026-01-15T10:00:00Z", false),
            token,
        )
        .unwrap();
    store
        .record_attempt(
            "d1",
            &attempt(1, "2026-01-15T10:00:00Z", AttemptResult::Timeout),
        )
        .unwrap();
    store
        .record_ticket("d1", "501", "9001", t("2026-01-15T10:00:01Z"))
        .unwrap();
    let paused = GroupState {
        pause: Some(Pause {
            at: t("2026-01-15T10:00:00Z"),
            by: PauseReason::Operator,
        }),
        ..GroupState::default()
    };
    store.save_group("db", &paused).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_term_every_write_is_refused_and_reads_still_answer() {
    let (_dir, _cluster, etcd) = etcd().await;
    let (mut store, _tx) = etcd_store(&etcd, None);
    let (errors, store) = blocking(move || (every_write(&mut store, 1), store)).await;
    assert_eq!(errors.len(), 7);
    for e in errors {
        assert!(matches!(e, StoreError::NotLeader), "{e}");
        assert!(e.is_fenced());
    }
    assert!(state(&etcd).await.is_empty());
    let (unsent, flags) = blocking(move || {
        (
            store.unsent().unwrap(),
            store.load_group("web", t("2026-01-15T10:00:00Z")).unwrap(),
        )
    })
    .await;
    assert!(unsent.is_empty());
    assert!(flags == GroupState::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_term_ends_every_write_is_fenced_and_changes_nothing() {
    let (_dir, _cluster, etcd) = etcd().await;
    let (lease, _key, term) = campaign(&etcd).await;
    let token = term.token;
    let (mut store, _tx) = etcd_store(&etcd, Some(term));
    let mut store = blocking(move || {
        leave_work(&mut store, token);
        store
    })
    .await;
    let before = state(&etcd).await;
    assert_eq!(before.len(), 3);

    // A decision of another term is refused while the term lasts.
    let (refused, mut store) = blocking(move || {
        let d = decision("other", "web", "web-2", "2026-01-15T10:01:00Z", false);
        (store.record_decision(&d, token - 1).unwrap_err(), store)
    })
    .await;
    assert!(
        matches!(refused, StoreError::Fenced { token: t } if t == token - 1),
        "{refused}"
    );
    assert!(refused.is_fenced());
    assert_eq!(state(&etcd).await, before);

    // The lease ends (the leader stalled past its TTL): the store still holds the term,
    // as a deposed leader that has not noticed does.
    etcd.revoke(lease).await.unwrap();
    let errors = blocking(move || every_write(&mut store, token)).await;
    assert_eq!(errors.len(), 7);
    for e in errors {
        assert!(
            matches!(e, StoreError::Fenced { token: t } if t == token),
            "{e}"
        );
    }
    assert_eq!(state(&etcd).await, before, "nothing changed in etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_resumes_what_the_old_one_left_in_flight() {
    let (_dir, _cluster, etcd) = etcd().await;
    let (_lease_a, key_a, term_a) = campaign(&etcd).await;
    let token_a = term_a.token;
    let (mut a, _tx_a) = etcd_store(&etcd, Some(term_a));
    let mut a = blocking(move || {
        leave_work(&mut a, token_a);
        // It lists the log, as its page and API do: its copy is now filled.
        assert_eq!(a.decisions(&DecisionFilter::default()).unwrap().len(), 1);
        a
    })
    .await;

    // A follower reads but does not write.
    let (b, tx_b) = etcd_store(&etcd, None);
    etcd.resign(key_a).await.unwrap();
    let (_lease_b, _key_b, term_b) = campaign(&etcd).await;
    let token_b = term_b.token;
    assert!(token_b > token_a);
    tx_b.send(Some(term_b)).unwrap();

    let now = t("2026-01-15T10:02:00Z");
    let (state, unsent, last, ticket, mut b) = blocking(move || {
        (
            b.load_group("web", now).unwrap(),
            b.unsent().unwrap(),
            b.last_attempt("d1").unwrap(),
            b.ticket("d1").unwrap(),
            b,
        )
    })
    .await;
    assert_eq!(state.in_flight().map(|r| r.id.as_str()), Some("d1"));
    assert_eq!(unsent.len(), 1);
    assert_eq!(
        (unsent[0].decision.id.as_str(), unsent[0].fencing_token),
        ("d1", token_a)
    );
    assert_eq!(last, 1, "the next attempt is numbered 2");
    assert_eq!(ticket, Some(("501".into(), "9001".into(), false)));

    // The new leader carries on; the old one's late writes are refused.
    let (resumed, paused, late, a) = blocking(move || {
        b.record_attempt(
            "d1",
            &attempt(2, "2026-01-15T10:02:00Z", AttemptResult::Logged),
        )
        .unwrap();
        b.record_outcome("d1", &Verdict::Accepted, now).unwrap();
        let paused = b.load_group("db", now).unwrap().pause.map(|p| p.by);
        let late = a.record_outcome(
            "d1",
            &Verdict::Rejected {
                reason: "late".into(),
            },
            now,
        );
        (b.decision("d1").unwrap().unwrap(), paused, late, a)
    })
    .await;
    assert_eq!(resumed.verdict.as_deref(), Some("accepted"));
    assert_eq!(paused, Some(PauseReason::Operator), "the flags carry over");
    assert!(matches!(late, Err(StoreError::Fenced { token }) if token == token_a));

    // The old leader, now a follower, had read the log before: it sees the new
    // leader's changes (its copy of the log follows etcd's revisions).
    let seen = blocking(move || {
        let listed = a.decisions(&DecisionFilter::default()).unwrap();
        let d1 = listed.into_iter().find(|d| d.decision.id == "d1").unwrap();
        (
            d1.verdict,
            a.unsent().unwrap().len(),
            a.attempts("d1").unwrap().len(),
        )
    })
    .await;
    assert_eq!(seen, (Some("accepted".to_owned()), 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_older_than_30_days_are_pruned_unless_in_flight() {
    let (_dir, _cluster, etcd) = etcd().await;
    let (_lease, _key, term) = campaign(&etcd).await;
    let token = term.token;
    let (mut first, _tx) = etcd_store(&etcd, Some(term.clone()));
    blocking(move || {
        for id in ["done", "stuck"] {
            first
                .record_decision(
                    &decision(id, "web", id, "2026-01-01T10:00:00Z", false),
                    token,
                )
                .unwrap();
        }
        first
            .record_ticket("done", "501", "9001", t("2026-01-01T10:00:01Z"))
            .unwrap();
        first
            .record_events(&[Event::Verified {
                id: "done".into(),
                vm: "done".into(),
                at: t("2026-01-01T10:01:00Z"),
                vcpus: 4,
                memory_total_bytes: 8 << 30,
            }])
            .unwrap();
    })
    .await;

    // Another store (its first write prunes): 30 days and a minute later.
    let (mut second, _tx2) = etcd_store(&etcd, Some(term));
    let (done, ticket, stuck) = blocking(move || {
        let d = decision("late", "web", "web-1", "2026-01-31T10:01:00Z", false);
        second.record_decision(&d, token).unwrap();
        (
            second.decision("done").unwrap(),
            second.ticket("done").unwrap(),
            second.decision("stuck").unwrap(),
        )
    })
    .await;
    assert_eq!(done, None);
    assert_eq!(ticket, None);
    assert_eq!(stuck.map(|s| s.status), Some("in_flight".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_longer_than_a_page_is_read_whole() {
    let (_dir, _cluster, etcd) = etcd().await;
    let (_lease, _key, term) = campaign(&etcd).await;
    let token = term.token;
    let (mut store, _tx) = etcd_store(&etcd, Some(term));
    let n = usize::try_from(rally_etcd::PAGE).unwrap() + 44;
    let (listed, default) = blocking(move || {
        let start = t("2026-01-15T00:00:00Z");
        for i in 0..n {
            let at = start + Duration::from_secs(u64::try_from(i).unwrap());
            let mut d = decision(
                &format!("d{i:04}"),
                "web",
                "web-1",
                "2026-01-15T00:00:00Z",
                true,
            );
            d.created_at = at;
            store.record_decision(&d, token).unwrap();
        }
        let all = DecisionFilter {
            limit: Some(10_000),
            ..DecisionFilter::default()
        };
        (
            ids(store.decisions(&all).unwrap()),
            store.decisions(&DecisionFilter::default()).unwrap().len(),
        )
    })
    .await;
    assert_eq!(listed.len(), n);
    assert_eq!(listed[0], format!("d{:04}", n - 1), "newest first");
    assert_eq!(default, 100);
}
