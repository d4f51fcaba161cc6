//! The state store: decisions with their evidence, every actuation attempt and its
//! outcome, verification results, each group's pause, circuit-breaker and roll-stop
//! flags, and the cloud tickets actuators follow.
//!
//! Two backends answer the same calls with the same results: [`SqliteStore`] (the
//! default: an embedded SQLite file for one collector) and [`EtcdStore`] (highly
//! available collectors: the state lives in etcd and only the leader writes it, fenced by
//! its term). [`Store`] is either.
//!
//! Cooldowns and daily/nightly caps are *counted from* the decisions (there is no
//! separate counter that could drift from them): [`Store::load_group`] rebuilds the
//! engine's [`GroupState`] — history, in-flight resizes and flags — after a restart or a
//! change of leader, and [`Store::unsent`] lists decisions that never got a final word
//! from the actuator, to be sent again with the same `id`.
//!
//! Every call is synchronous and short. The engine calls the store from
//! `tokio::task::spawn_blocking` or a dedicated thread, never directly on an async
//! worker, and persists a decision *before* handing it to an actuator.

mod etcd;
mod sqlite;

use std::path::{Path, PathBuf};

pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

use crate::request::{Attempt, Verdict, verify_window};
use rally_policy::Timestamp;
use rally_policy::decision::{Decision, Event};
use rally_policy::ladder::Size;
use rally_policy::state::{GroupState, ResizeRecord, ResizeStatus};

/// File name of the database inside the state directory.
pub const FILE_NAME: &str = "collector.sqlite3";

/// How far back [`Store::load_group`] reads history (caps need at most a local day or a
/// night; in-flight resizes are always read).
const HISTORY_MS: i64 = 49 * 3600 * 1000;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created.
    #[error("creating state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A JSON column could not be (de)serialized.
    #[error("state database JSON column: {0}")]
    Json(#[from] serde_json::Error),
    /// The database was written by a newer Rally.
    #[error(
        "state database schema version {found} is newer than this collector supports ({supported})"
    )]
    NewerSchema {
        /// Version found.
        found: i64,
        /// Highest version known.
        supported: i64,
    },
    /// A row holds a value this version cannot read.
    #[error("state database row is not understood: {0}")]
    Corrupt(String),
    /// The call is one only the SQLite store answers.
    #[error("{0} is a call of the SQLite store only")]
    SqliteOnly(&'static str),
    /// etcd failed (or could not be reached).
    #[error("state in etcd: {0}")]
    Etcd(#[from] rally_etcd::EtcdError),
    /// A write to etcd while this collector does not lead: only the leader writes.
    #[error("not the leader: only the leading collector writes decision state")]
    NotLeader,
    /// A write to etcd refused because the term of fencing token `token` has ended (or a
    /// decision of an older term): a deposed leader's late write.
    #[error("fenced: the term of fencing token {token} is over")]
    Fenced {
        /// The token of the term (or decision) that is over.
        token: u64,
    },
    /// A decision with this id is already recorded: a decision is recorded once.
    #[error("decision {0} is already recorded")]
    Duplicate(String),
    /// An attempt or event names a decision that is not recorded.
    #[error("decision {0} is not recorded")]
    UnknownDecision(String),
    /// A key changed in etcd between this leader's read and its write (another writer in
    /// the same term); nothing was written.
    #[error("state in etcd: {0} changed while being updated")]
    Changed(String),
}

impl StoreError {
    /// The write was refused because this collector does not (or no longer) lead: the
    /// engine counts these instead of treating them as failures of the store.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::NotLeader | Self::Fenced { .. })
    }
}

/// A decision as stored, with where it got to.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredDecision {
    /// The decision.
    pub decision: Decision,
    /// The fencing token it was (or will be) sent with.
    pub fencing_token: u64,
    /// `in_flight`, `verified`, `failed` or `dry_run`.
    pub status: String,
    /// When the status last changed (verified or failed).
    pub status_at: Option<Timestamp>,
    /// The actuator's final word (`accepted`, `rejected`, `gave_up`), once there is one.
    pub verdict: Option<String>,
    /// Why the actuator refused or gave up.
    pub verdict_reason: Option<String>,
    /// When the actuator accepted the request: the verification window counts from here.
    pub accepted_at: Option<Timestamp>,
}

impl StoredDecision {
    /// When the resize fails unless verified: `verify_timeout` after the actuator
    /// accepted it; until then the decision's own deadline, which the engine holds back
    /// while the request is with the actuator.
    pub fn verify_deadline(&self) -> Timestamp {
        self.accepted_at
            .map_or(self.decision.verify_deadline, |at| {
                at + verify_window(&self.decision)
            })
    }
}

/// A verification result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    /// When it was decided.
    pub at: Timestamp,
    /// Verified (true) or failed (false).
    pub verified: bool,
    /// Reported vCPUs, when verified.
    pub vcpus: Option<u32>,
    /// Reported MemTotal, when verified.
    pub memory_total_bytes: Option<u64>,
    /// Why it failed, or empty.
    pub detail: String,
}

/// Which decisions to list; every field narrows the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionFilter {
    /// Only this group.
    pub group: Option<String>,
    /// Only this VM.
    pub vm: Option<String>,
    /// Only decided at or after this.
    pub since: Option<Timestamp>,
    /// Only decided before this.
    pub until: Option<Timestamp>,
    /// At most this many, newest first (default 100, at most 10 000).
    pub limit: Option<u32>,
}

/// The engine's record of a stored decision.
fn resize_record(s: &StoredDecision) -> Result<ResizeRecord, StoreError> {
    let d = &s.decision;
    let status = match (s.status.as_str(), s.status_at) {
        ("in_flight", _) => ResizeStatus::InFlight,
        ("dry_run", _) => ResizeStatus::DryRun,
        ("verified", Some(at)) => ResizeStatus::Verified { at },
        ("failed", Some(at)) => ResizeStatus::Failed { at },
        (other, _) => {
            return Err(StoreError::Corrupt(format!("status {other:?} of {}", d.id)));
        }
    };
    Ok(ResizeRecord {
        id: d.id.clone(),
        vm: d.vm.clone(),
        direction: d.direction,
        trigger: d.trigger,
        from: Size {
            vcpus: d.from.vcpus,
            memory_bytes: d.from.memory_bytes,
        },
        to: Size {
            vcpus: d.to.vcpus,
            memory_bytes: d.to.memory_bytes,
        },
        created_at: d.created_at,
        deadline: s.verify_deadline(),
        baseline: d.baseline,
        status,
    })
}

/// The state store: SQLite for one collector, etcd for highly available ones.
#[derive(Debug)]
pub enum Store {
    /// The embedded SQLite file.
    Sqlite(SqliteStore),
    /// etcd, written by the leader only (boxed: the client is much larger than a
    /// SQLite connection).
    Etcd(Box<EtcdStore>),
}

/// Runs `$call` on whichever backend `$store` is.
macro_rules! delegate {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call,
            Store::Etcd($s) => $call,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `state_dir`, in WAL mode,
    /// migrated to the current schema.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(state_dir).map(Self::Sqlite)
    }

    /// Opens the SQLite database at `path`.
    pub fn open_file(path: &Path) -> Result<Self, StoreError> {
        SqliteStore::open_file(path).map(Self::Sqlite)
    }

    /// The store in etcd under `prefix`, written under the term `term` holds (none while
    /// this collector does not lead); its calls run on `runtime`.
    pub fn etcd(
        etcd: rally_etcd::Etcd,
        prefix: &str,
        term: tokio::sync::watch::Receiver<Option<rally_etcd::Term>>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self::Etcd(Box::new(EtcdStore::new(etcd, prefix, term, runtime)))
    }

    /// The schema version in the SQLite file ([`StoreError::SqliteOnly`] in etcd).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match self {
            Self::Sqlite(s) => s.schema_version(),
            Self::Etcd(_) => Err(StoreError::SqliteOnly("schema_version")),
        }
    }

    /// Records the cloud operation (ticket) an actuator started for decision `id` on
    /// `object_id`, so that after a restart it resumes polling the same ticket instead
    /// of starting a second operation. Recording it again keeps the first.
    pub fn record_ticket(
        &mut self,
        id: &str,
        object_id: &str,
        ticket_id: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.record_ticket(id, object_id, ticket_id, at))
    }

    /// Marks decision `id`'s ticket finished (its outcome is known).
    pub fn finish_ticket(&mut self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        delegate!(self, s => s.finish_ticket(id, at))
    }

    /// The ticket recorded for decision `id`: (object id, ticket id, finished).
    pub fn ticket(&self, id: &str) -> Result<Option<(String, String, bool)>, StoreError> {
        delegate!(self, s => s.ticket(id))
    }

    /// Records a new decision (in flight, or dry-run) before it is sent.
    pub fn record_decision(&mut self, d: &Decision, fencing_token: u64) -> Result<(), StoreError> {
        delegate!(self, s => s.record_decision(d, fencing_token))
    }

    /// Records one delivery attempt as it happens.
    pub fn record_attempt(&mut self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        delegate!(self, s => s.record_attempt(id, attempt))
    }

    /// The number of the last attempt recorded for decision `id` (0 if none): a send
    /// after a restart numbers its attempts after it.
    pub fn last_attempt(&self, id: &str) -> Result<u32, StoreError> {
        delegate!(self, s => s.last_attempt(id))
    }

    /// Records the actuator's final word on decision `id`, given at `at` (its attempts
    /// were recorded one by one as they were made). An acceptance starts the
    /// verification window.
    pub fn record_outcome(
        &mut self,
        id: &str,
        verdict: &Verdict,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.record_outcome(id, verdict, at))
    }

    /// Records verification results and failures from an evaluation.
    pub fn record_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        delegate!(self, s => s.record_events(events))
    }

    /// Saves a group's pause, circuit-breaker and roll-stop flags.
    pub fn save_group(&mut self, name: &str, state: &GroupState) -> Result<(), StoreError> {
        delegate!(self, s => s.save_group(name, state))
    }

    /// Rebuilds a group's engine state: flags, in-flight resizes and the history cooldowns
    /// and caps are counted from. Rule timers start empty.
    pub fn load_group(&self, name: &str, now: Timestamp) -> Result<GroupState, StoreError> {
        delegate!(self, s => s.load_group(name, now))
    }

    /// Decisions in flight that have no final word from the actuator: after a restart they
    /// are sent again, with the same id (the receiver de-duplicates on it).
    pub fn unsent(&self) -> Result<Vec<StoredDecision>, StoreError> {
        delegate!(self, s => s.unsent())
    }

    /// Lists decisions, newest first.
    pub fn decisions(&self, filter: &DecisionFilter) -> Result<Vec<StoredDecision>, StoreError> {
        delegate!(self, s => s.decisions(filter))
    }

    /// One decision by id.
    pub fn decision(&self, id: &str) -> Result<Option<StoredDecision>, StoreError> {
        delegate!(self, s => s.decision(id))
    }

    /// Every recorded attempt for a decision, in order.
    pub fn attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        delegate!(self, s => s.attempts(id))
    }

    /// The verification result of a decision, once there is one.
    pub fn verification(&self, id: &str) -> Result<Option<Verification>, StoreError> {
        delegate!(self, s => s.verification(id))
    }
}
