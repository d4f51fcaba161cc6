//! The state store of highly available collectors: decision state in etcd, written only
//! by the leader, each write fenced by its term.
//!
//! # Layout
//!
//! Every key is under `<prefix>/state/`; every value is a JSON document.
//!
//! - `groups/<group>`: the group's flags as `save_group` writes them (`paused_at`,
//!   `paused_by`, `consecutive_failures`, `up_roll_stopped_until`,
//!   `down_roll_stopped_until`).
//! - `decisions/<decision id>`: one document per decision: the decision itself, its
//!   `fencing_token`, `status` (`in_flight`, `verified`, `failed`, `dry_run`),
//!   `status_at`, the actuator's `verdict`, `verdict_reason` and `accepted_at`, every
//!   delivery `attempts`, and the `verification` once there is one. Decisions are
//!   ordered by `created_at`, then by the key's create revision (the order they were
//!   recorded in), as SQLite orders by time then row id.
//! - `tickets/<decision id>`: the cloud operation an actuator follows for the decision
//!   (`object_id`, `ticket_id`, `created_at`, `finished_at`).
//!
//! # Writes
//!
//! Every write is one etcd transaction whose first comparison is the writer's term
//! ([`Term::holds`]: the leader key created at the fencing token still stands), so a
//! deposed leader's late write changes nothing. A write without a term is refused as
//! [`StoreError::NotLeader`], one whose term has ended as [`StoreError::Fenced`], and so is
//! a decision made in an older term than the current one. A read-modify-write (an
//! attempt appended to its decision, events that update several decisions) also compares
//! the mod revision of every document it read and writes them all in that one
//! transaction.
//!
//! # Reads
//!
//! Reads need no term: followers serve the API from them, and a new leader rebuilds its
//! groups from them ([`EtcdStore::load_group`] shows the old leader's resizes in flight,
//! [`EtcdStore::unsent`] what it never finished sending), so it resumes verifications and
//! tickets instead of deciding again.
//!
//! # Bounds
//!
//! The decision log keeps 30 days: when a decision is recorded, at most once an hour,
//! decisions created more than 30 days before it that are no longer in flight are
//! deleted with their tickets (in transactions of their own under the same term).
//!
//! The calls are synchronous like SQLite's and run the async client with
//! [`Handle::block_on`]: they must be called off the async workers (the engine calls the
//! store on `spawn_blocking` threads); on a worker thread `block_on` panics.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::warn;

use rally_etcd::pb::etcdserverpb::Compare;
use rally_etcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use rally_etcd::pb::mvccpb::KeyValue;
use rally_etcd::{Etcd, Term, Write};
use rally_policy::Timestamp;
use rally_policy::decision::{Decision, Event, PauseReason};
use rally_policy::state::{GroupState, Pause};

use super::{DecisionFilter, HISTORY_MS, StoreError, StoredDecision, Verification, resize_record};
use crate::request::{Attempt, Verdict};

/// How long decisions no longer in flight are kept.
const KEEP: chrono::Duration = chrono::Duration::days(30);
/// How often, at most, old decisions are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Decisions deleted per transaction (two operations each, under etcd's default limit
/// of 128 operations per transaction).
const PRUNE_BATCH: usize = 50;

/// One decision's document: the decision, where it got to, its attempts and its
/// verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DecisionDoc {
    decision: Decision,
    fencing_token: u64,
    status: String,
    status_at: Option<Timestamp>,
    verdict: Option<String>,
    verdict_reason: Option<String>,
    accepted_at: Option<Timestamp>,
    attempts: Vec<Attempt>,
    verification: Option<Verification>,
}

impl DecisionDoc {
    fn stored(&self) -> StoredDecision {
        StoredDecision {
            decision: self.decision.clone(),
            fencing_token: self.fencing_token,
            status: self.status.clone(),
            status_at: self.status_at,
            verdict: self.verdict.clone(),
            verdict_reason: self.verdict_reason.clone(),
            accepted_at: self.accepted_at,
        }
    }
}

/// A group's flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupDoc {
    paused_at: Option<Timestamp>,
    paused_by: Option<PauseReason>,
    consecutive_failures: u32,
    up_roll_stopped_until: Option<Timestamp>,
    down_roll_stopped_until: Option<Timestamp>,
}

/// The cloud operation an actuator follows for a decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TicketDoc {
    object_id: String,
    ticket_id: String,
    created_at: Timestamp,
    finished_at: Option<Timestamp>,
}

/// A document as read, with the revisions a write compares and orders by.
#[derive(Debug, Clone)]
struct Read<T> {
    value: T,
    create_revision: i64,
    mod_revision: i64,
}

impl<T: DeserializeOwned> Read<T> {
    fn of(kv: &KeyValue) -> Result<Self, StoreError> {
        Ok(Self {
            value: serde_json::from_slice(&kv.value)?,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        })
    }
}

/// The state store in etcd (see the module's documentation).
#[derive(Debug)]
pub struct EtcdStore {
    etcd: Etcd,
    /// `<prefix>/state/`.
    root: String,
    term: watch::Receiver<Option<Term>>,
    runtime: Handle,
    last_prune: Option<Instant>,
    /// The decision log as last read: every call asks etcd only for what changed since.
    log: std::sync::Mutex<LogCache>,
}

/// A copy of `decisions/`: documents by key, as of `revision`, read whole at
/// `full_at` and kept current with the changes since.
#[derive(Debug, Default)]
struct LogCache {
    revision: i64,
    full_at: Option<Instant>,
    docs: BTreeMap<Vec<u8>, Read<DecisionDoc>>,
}

/// Holds while `key` is unchanged since it was read at `mod_revision` (0: while it does
/// not exist).
fn unchanged(key: &str, mod_revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::ModRevision(mod_revision)),
    }
}

fn put<T: Serialize>(key: String, value: &T) -> Result<Write, StoreError> {
    Ok(Write::Put {
        key,
        value: serde_json::to_vec(value)?,
    })
}

fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// Orders decisions as SQLite does: by creation time in milliseconds, then in the
/// order they were recorded.
fn order(docs: &mut [Read<DecisionDoc>]) {
    docs.sort_by_key(|d| (ms(d.value.decision.created_at), d.create_revision));
}

impl EtcdStore {
    /// The store under `<prefix>/state/` in `etcd`, written under the term `term` holds
    /// (`None` while this collector does not lead); its calls run on `runtime`.
    pub fn new(
        etcd: Etcd,
        prefix: &str,
        term: watch::Receiver<Option<Term>>,
        runtime: Handle,
    ) -> Self {
        Self {
            etcd,
            root: format!("{}/state/", prefix.trim_end_matches('/')),
            term,
            runtime,
            last_prune: None,
            log: std::sync::Mutex::default(),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.root)
    }

    fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Read<T>>, StoreError> {
        let kv = self.runtime.block_on(self.etcd.get(key))?;
        kv.as_ref().map(Read::of).transpose()
    }

    /// Every decision, ordered. Reads from etcd only the documents changed since the
    /// last call (the log can hold a month of decisions, and the engine, the page and
    /// the API list it often); deletions (another leader's pruning) show at the next
    /// whole read, every [`PRUNE_EVERY`].
    fn all_decisions(&self) -> Result<Vec<Read<DecisionDoc>>, StoreError> {
        let prefix = format!("{}decisions/", self.root);
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.full_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            *log = LogCache::default();
        }
        let since = if log.full_at.is_some() {
            log.revision + 1
        } else {
            0
        };
        let (kvs, revision) = self
            .runtime
            .block_on(self.etcd.get_prefix_since(&prefix, since))?;
        if revision < log.revision {
            // etcd was restored from an older snapshot: read everything again.
            *log = LogCache::default();
            drop(log);
            return self.all_decisions();
        }
        if log.full_at.is_none() {
            log.full_at = Some(Instant::now());
        }
        for kv in &kvs {
            log.docs.insert(kv.key.clone(), Read::of(kv)?);
        }
        log.revision = revision;
        let mut docs: Vec<Read<DecisionDoc>> = log.docs.values().cloned().collect();
        order(&mut docs);
        Ok(docs)
    }

    /// Forgets cached decisions this store deleted.
    fn forget(&self, keys: &[String]) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            log.docs.remove(key.as_bytes());
        }
    }

    /// The term this collector leads in, or [`StoreError::NotLeader`].
    fn term(&self) -> Result<Term, StoreError> {
        self.term.borrow().clone().ok_or(StoreError::NotLeader)
    }

    /// Applies `writes` in one transaction if `term` still holds and every key in `read`
    /// still has the mod revision it was read at. `Ok(false)`: the term holds but a key
    /// changed (nothing was written); [`StoreError::Fenced`]: the term is over.
    fn write(
        &self,
        term: &Term,
        read: &[(String, i64)],
        writes: Vec<Write>,
    ) -> Result<bool, StoreError> {
        let mut when = vec![term.holds()];
        when.extend(read.iter().map(|(key, rev)| unchanged(key, *rev)));
        let outcome = self.runtime.block_on(self.etcd.txn(when, writes))?;
        if outcome.succeeded {
            return Ok(true);
        }
        // Which comparison failed: the term alone, checked by a transaction that writes
        // nothing.
        let term_holds = self
            .runtime
            .block_on(self.etcd.txn(vec![term.holds()], Vec::new()))?;
        if term_holds.succeeded {
            Ok(false)
        } else {
            Err(StoreError::Fenced { token: term.token })
        }
    }

    /// [`write`](Self::write) where a changed key is an error.
    fn write_all(
        &self,
        term: &Term,
        read: &[(String, i64)],
        writes: Vec<Write>,
    ) -> Result<(), StoreError> {
        if self.write(term, read, writes)? {
            Ok(())
        } else {
            let keys: Vec<&str> = read.iter().map(|(k, _)| k.as_str()).collect();
            Err(StoreError::Changed(keys.join(", ")))
        }
    }

    /// Records the cloud operation (ticket) an actuator started for decision `id` on
    /// `object_id`. Recording it again keeps the first.
    pub fn record_ticket(
        &mut self,
        id: &str,
        object_id: &str,
        ticket_id: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let term = self.term()?;
        let key = self.key("tickets", id);
        let writes = if self.read::<TicketDoc>(&key)?.is_some() {
            Vec::new()
        } else {
            let doc = TicketDoc {
                object_id: object_id.to_owned(),
                ticket_id: ticket_id.to_owned(),
                created_at: at,
                finished_at: None,
            };
            vec![put(key.clone(), &doc)?]
        };
        // A ticket recorded meanwhile is the first one: kept.
        self.write(&term, &[(key, 0)], writes).map(|_| ())
    }

    /// Marks decision `id`'s ticket finished (its outcome is known).
    pub fn finish_ticket(&mut self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        let term = self.term()?;
        let key = self.key("tickets", id);
        match self.read::<TicketDoc>(&key)? {
            Some(mut t) => {
                t.value.finished_at = Some(at);
                let write = put(key.clone(), &t.value)?;
                self.write_all(&term, &[(key, t.mod_revision)], vec![write])
            }
            None => self.write_all(&term, &[], Vec::new()),
        }
    }

    /// The ticket recorded for decision `id`: (object id, ticket id, finished).
    pub fn ticket(&self, id: &str) -> Result<Option<(String, String, bool)>, StoreError> {
        Ok(self.read::<TicketDoc>(&self.key("tickets", id))?.map(|t| {
            let t = t.value;
            (t.object_id, t.ticket_id, t.finished_at.is_some())
        }))
    }

    /// Records a new decision (in flight, or dry-run) before it is sent; refused as
    /// [`StoreError::Fenced`] when `fencing_token` is not the current term's.
    pub fn record_decision(&mut self, d: &Decision, fencing_token: u64) -> Result<(), StoreError> {
        let term = self.term()?;
        if fencing_token != term.token {
            return Err(StoreError::Fenced {
                token: fencing_token,
            });
        }
        let doc = DecisionDoc {
            decision: d.clone(),
            fencing_token,
            status: if d.dry_run { "dry_run" } else { "in_flight" }.to_owned(),
            status_at: None,
            verdict: None,
            verdict_reason: None,
            accepted_at: None,
            attempts: Vec::new(),
            verification: None,
        };
        let key = self.key("decisions", &d.id);
        let write = put(key.clone(), &doc)?;
        if !self.write(&term, &[(key, 0)], vec![write])? {
            return Err(StoreError::Duplicate(d.id.clone()));
        }
        self.prune(&term, d.created_at);
        Ok(())
    }

    /// Deletes decisions created more than [`KEEP`] before `now` that are no longer in
    /// flight, with their tickets; at most once per [`PRUNE_EVERY`]. A failure is logged
    /// and tried again an hour later: the log is only a little longer meanwhile.
    fn prune(&mut self, term: &Term, now: Timestamp) {
        if self.last_prune.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        if let Err(e) = self.prune_now(term, now) {
            warn!(error = %e, "pruning old decisions in etcd failed");
        }
    }

    fn prune_now(&self, term: &Term, now: Timestamp) -> Result<(), StoreError> {
        let before = ms(now - KEEP);
        let old: Vec<String> = self
            .all_decisions()?
            .into_iter()
            .filter(|d| d.value.status != "in_flight" && ms(d.value.decision.created_at) < before)
            .map(|d| d.value.decision.id)
            .collect();
        for batch in old.chunks(PRUNE_BATCH) {
            let writes = batch
                .iter()
                .flat_map(|id| {
                    [
                        Write::Delete {
                            key: self.key("decisions", id),
                        },
                        Write::Delete {
                            key: self.key("tickets", id),
                        },
                    ]
                })
                .collect();
            self.write_all(term, &[], writes)?;
            let keys: Vec<String> = batch.iter().map(|id| self.key("decisions", id)).collect();
            self.forget(&keys);
        }
        Ok(())
    }

    /// Records one delivery attempt as it happens.
    pub fn record_attempt(&mut self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let term = self.term()?;
        let key = self.key("decisions", id);
        let mut doc = self
            .read::<DecisionDoc>(&key)?
            .ok_or_else(|| StoreError::UnknownDecision(id.to_owned()))?;
        doc.value.attempts.push(attempt.clone());
        let write = put(key.clone(), &doc.value)?;
        self.write_all(&term, &[(key, doc.mod_revision)], vec![write])
    }

    /// The number of the last attempt recorded for decision `id` (0 if none).
    pub fn last_attempt(&self, id: &str) -> Result<u32, StoreError> {
        Ok(self
            .attempts(id)?
            .iter()
            .map(|a| a.number)
            .max()
            .unwrap_or(0))
    }

    /// Records the actuator's final word on decision `id`, given at `at`. An acceptance
    /// starts the verification window.
    pub fn record_outcome(
        &mut self,
        id: &str,
        verdict: &Verdict,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let term = self.term()?;
        let key = self.key("decisions", id);
        let Some(mut doc) = self.read::<DecisionDoc>(&key)? else {
            // Nothing to update (as SQLite's UPDATE of no row), but only a leader writes.
            return self.write_all(&term, &[], Vec::new());
        };
        let (reason, accepted_at) = match verdict {
            Verdict::Accepted => (None, Some(at)),
            Verdict::Rejected { reason } | Verdict::GaveUp { reason } => {
                (Some(reason.clone()), None)
            }
        };
        doc.value.verdict = Some(verdict.as_str().to_owned());
        doc.value.verdict_reason = reason;
        doc.value.accepted_at = accepted_at;
        let write = put(key.clone(), &doc.value)?;
        self.write_all(&term, &[(key, doc.mod_revision)], vec![write])
    }

    /// Records verification results and failures from an evaluation, every changed
    /// decision in one transaction.
    pub fn record_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let term = self.term()?;
        let mut docs: BTreeMap<String, Read<DecisionDoc>> = BTreeMap::new();
        for e in events {
            let (id, at, verification) = match e {
                Event::Verified {
                    id,
                    at,
                    vcpus,
                    memory_total_bytes,
                    ..
                } => (
                    id,
                    *at,
                    Verification {
                        at: *at,
                        verified: true,
                        vcpus: Some(*vcpus),
                        memory_total_bytes: Some(*memory_total_bytes),
                        detail: String::new(),
                    },
                ),
                Event::Failed { id, at, reason, .. } => (
                    id,
                    *at,
                    Verification {
                        at: *at,
                        verified: false,
                        vcpus: None,
                        memory_total_bytes: None,
                        detail: reason.clone(),
                    },
                ),
                // Carried by the group's flags (`save_group`).
                Event::RollStopped { .. } | Event::CircuitOpened { .. } => continue,
            };
            let key = self.key("decisions", id);
            if !docs.contains_key(&key) {
                let doc = self
                    .read::<DecisionDoc>(&key)?
                    .ok_or_else(|| StoreError::UnknownDecision(id.clone()))?;
                docs.insert(key.clone(), doc);
            }
            if let Some(doc) = docs.get_mut(&key) {
                doc.value.status = if verification.verified {
                    "verified"
                } else {
                    "failed"
                }
                .to_owned();
                doc.value.status_at = Some(at);
                doc.value.verification = Some(verification);
            }
        }
        let read: Vec<(String, i64)> = docs
            .iter()
            .map(|(k, d)| (k.clone(), d.mod_revision))
            .collect();
        let writes = docs
            .into_iter()
            .map(|(k, d)| put(k, &d.value))
            .collect::<Result<Vec<_>, _>>()?;
        self.write_all(&term, &read, writes)
    }

    /// Saves a group's pause, circuit-breaker and roll-stop flags.
    pub fn save_group(&mut self, name: &str, state: &GroupState) -> Result<(), StoreError> {
        let term = self.term()?;
        let doc = GroupDoc {
            paused_at: state.pause.map(|p| p.at),
            paused_by: state.pause.map(|p| p.by),
            consecutive_failures: state.consecutive_failures,
            up_roll_stopped_until: state.up_roll_stopped_until,
            down_roll_stopped_until: state.down_roll_stopped_until,
        };
        let write = put(self.key("groups", name), &doc)?;
        self.write_all(&term, &[], vec![write])
    }

    /// Rebuilds a group's engine state: flags, in-flight resizes and the history cooldowns
    /// and caps are counted from. Rule timers start empty.
    pub fn load_group(&self, name: &str, now: Timestamp) -> Result<GroupState, StoreError> {
        let mut state = GroupState::default();
        if let Some(flags) = self.read::<GroupDoc>(&self.key("groups", name))? {
            let flags = flags.value;
            state.pause = match (flags.paused_at, flags.paused_by) {
                (Some(at), Some(by)) => Some(Pause { at, by }),
                (None, _) => None,
                (Some(_), None) => {
                    return Err(StoreError::Corrupt(format!(
                        "group {name} paused by no one"
                    )));
                }
            };
            state.consecutive_failures = flags.consecutive_failures;
            state.up_roll_stopped_until = flags.up_roll_stopped_until;
            state.down_roll_stopped_until = flags.down_roll_stopped_until;
        }
        let since = ms(now) - HISTORY_MS;
        for doc in self.all_decisions()? {
            let d = &doc.value;
            if d.decision.group == name
                && (ms(d.decision.created_at) >= since || d.status == "in_flight")
            {
                state.resizes.push(resize_record(&d.stored())?);
            }
        }
        Ok(state)
    }

    /// Decisions in flight that have no final word from the actuator, oldest first.
    pub fn unsent(&self) -> Result<Vec<StoredDecision>, StoreError> {
        Ok(self
            .all_decisions()?
            .iter()
            .filter(|d| d.value.status == "in_flight" && d.value.verdict.is_none())
            .map(|d| d.value.stored())
            .collect())
    }

    /// Lists decisions, newest first.
    pub fn decisions(&self, filter: &DecisionFilter) -> Result<Vec<StoredDecision>, StoreError> {
        let limit = usize::try_from(filter.limit.unwrap_or(100).min(10_000)).unwrap_or(10_000);
        Ok(self
            .all_decisions()?
            .iter()
            .rev()
            .map(|d| &d.value)
            .filter(|d| {
                let created = ms(d.decision.created_at);
                filter.group.as_ref().is_none_or(|g| *g == d.decision.group)
                    && filter.vm.as_ref().is_none_or(|v| *v == d.decision.vm)
                    && filter.since.is_none_or(|s| created >= ms(s))
                    && filter.until.is_none_or(|u| created < ms(u))
            })
            .take(limit)
            .map(DecisionDoc::stored)
            .collect())
    }

    /// One decision by id.
    pub fn decision(&self, id: &str) -> Result<Option<StoredDecision>, StoreError> {
        Ok(self
            .read::<DecisionDoc>(&self.key("decisions", id))?
            .map(|d| d.value.stored()))
    }

    /// Every recorded attempt for a decision, in order.
    pub fn attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        Ok(self
            .read::<DecisionDoc>(&self.key("decisions", id))?
            .map(|d| d.value.attempts)
            .unwrap_or_default())
    }

    /// The verification result of a decision, once there is one.
    pub fn verification(&self, id: &str) -> Result<Option<Verification>, StoreError> {
        Ok(self
            .read::<DecisionDoc>(&self.key("decisions", id))?
            .and_then(|d| d.value.verification))
    }
}
