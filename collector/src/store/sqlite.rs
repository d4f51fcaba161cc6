//! The embedded state store of a single collector: SQLite (WAL) under the state
//! directory.
//!
//! Tables: `decisions` (one row per decision with its evidence and where it got to),
//! `attempts` (every delivery attempt), `verifications`, `groups` (pause,
//! circuit-breaker and roll-stop flags) and `actuator_tickets`; `schema_version` with
//! [`MIGRATIONS`] keeps old files readable. Every call is a few small statements.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    DecisionFilter, FILE_NAME, HISTORY_MS, StoreError, StoredDecision, Verification, resize_record,
};
use crate::request::{Attempt, AttemptResult, Verdict};
use rally_policy::Timestamp;
use rally_policy::decision::{
    Baseline, Decision, Direction, Event, PauseReason, SizedRung, Trigger,
};
use rally_policy::state::{GroupState, Pause};

/// Schema migrations; entry `n` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE decisions (
    id TEXT PRIMARY KEY,
    group_name TEXT NOT NULL,
    vm TEXT NOT NULL,
    direction TEXT NOT NULL,
    trigger TEXT NOT NULL,
    from_rung TEXT NOT NULL, from_vcpus INTEGER NOT NULL, from_memory_bytes INTEGER NOT NULL,
    to_rung TEXT NOT NULL, to_vcpus INTEGER NOT NULL, to_memory_bytes INTEGER NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    verify_deadline INTEGER NOT NULL,
    baseline_vcpus INTEGER NOT NULL,
    baseline_memory_bytes INTEGER NOT NULL,
    fencing_token INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_at INTEGER,
    verdict TEXT,
    verdict_reason TEXT
);
CREATE INDEX decisions_group_time ON decisions (group_name, created_at);
CREATE INDEX decisions_vm_time ON decisions (vm, created_at);
CREATE INDEX decisions_status ON decisions (status);
CREATE TABLE attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id TEXT NOT NULL REFERENCES decisions (id),
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX attempts_decision ON attempts (decision_id);
CREATE TABLE verifications (
    decision_id TEXT PRIMARY KEY REFERENCES decisions (id),
    at INTEGER NOT NULL,
    verified INTEGER NOT NULL,
    vcpus INTEGER,
    memory_total_bytes INTEGER,
    detail TEXT NOT NULL
);
CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    paused_at INTEGER,
    paused_by TEXT,
    consecutive_failures INTEGER NOT NULL,
    up_roll_stopped_until INTEGER,
    down_roll_stopped_until INTEGER
);
"#,
    r#"
CREATE TABLE actuator_tickets (
    decision_id TEXT PRIMARY KEY,
    object_id TEXT NOT NULL,
    ticket_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
"#,
    // When the actuator accepted: verification is counted from there.
    r#"
ALTER TABLE decisions ADD COLUMN accepted_at INTEGER;
"#,
];

/// The SQLite state store: the default, for one collector.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

fn time(v: i64) -> Result<Timestamp, StoreError> {
    chrono::DateTime::from_timestamp_millis(v)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {v}")))
}

fn opt_time(v: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    v.map(time).transpose()
}

fn direction(s: &str) -> Result<Direction, StoreError> {
    match s {
        "up" => Ok(Direction::Up),
        "down" => Ok(Direction::Down),
        other => Err(StoreError::Corrupt(format!("direction {other:?}"))),
    }
}

const DECISION_COLUMNS: &str = "id, group_name, vm, direction, trigger, from_rung, from_vcpus, from_memory_bytes, \
    to_rung, to_vcpus, to_memory_bytes, reason, evidence, dry_run, created_at, verify_deadline, baseline_vcpus, \
    baseline_memory_bytes, fencing_token, status, status_at, verdict, verdict_reason, accepted_at";

/// Raw columns of a decisions row, converted after the row is read.
struct DecisionRow {
    id: String,
    group: String,
    vm: String,
    direction: String,
    trigger: String,
    from: (String, i64, i64),
    to: (String, i64, i64),
    reason: String,
    evidence: String,
    dry_run: bool,
    created_at: i64,
    verify_deadline: i64,
    baseline: (i64, i64),
    fencing_token: i64,
    status: String,
    status_at: Option<i64>,
    verdict: Option<String>,
    verdict_reason: Option<String>,
    accepted_at: Option<i64>,
}

impl DecisionRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            group: r.get(1)?,
            vm: r.get(2)?,
            direction: r.get(3)?,
            trigger: r.get(4)?,
            from: (r.get(5)?, r.get(6)?, r.get(7)?),
            to: (r.get(8)?, r.get(9)?, r.get(10)?),
            reason: r.get(11)?,
            evidence: r.get(12)?,
            dry_run: r.get(13)?,
            created_at: r.get(14)?,
            verify_deadline: r.get(15)?,
            baseline: (r.get(16)?, r.get(17)?),
            fencing_token: r.get(18)?,
            status: r.get(19)?,
            status_at: r.get(20)?,
            verdict: r.get(21)?,
            verdict_reason: r.get(22)?,
            accepted_at: r.get(23)?,
        })
    }

    fn convert(self) -> Result<StoredDecision, StoreError> {
        let int = |v: i64, what: &str| -> Result<u64, StoreError> {
            u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
        };
        let vcpus =
            |v: i64| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("vcpus {v}")));
        let sized = |(rung, v, m): (String, i64, i64)| -> Result<SizedRung, StoreError> {
            Ok(SizedRung {
                rung,
                vcpus: vcpus(v)?,
                memory_bytes: int(m, "memory_bytes")?,
            })
        };
        let trigger = Trigger::parse(&self.trigger)
            .ok_or_else(|| StoreError::Corrupt(format!("trigger {:?}", self.trigger)))?;
        Ok(StoredDecision {
            decision: Decision {
                id: self.id,
                group: self.group,
                vm: self.vm,
                direction: direction(&self.direction)?,
                from: sized(self.from)?,
                to: sized(self.to)?,
                trigger,
                reason: self.reason,
                evidence: serde_json::from_str(&self.evidence)?,
                dry_run: self.dry_run,
                created_at: time(self.created_at)?,
                verify_deadline: time(self.verify_deadline)?,
                baseline: Baseline {
                    vcpus: vcpus(self.baseline.0)?,
                    memory_total_bytes: int(self.baseline.1, "memory_total_bytes")?,
                },
            },
            fencing_token: int(self.fencing_token, "fencing_token")?,
            status: self.status,
            status_at: opt_time(self.status_at)?,
            verdict: self.verdict,
            verdict_reason: self.verdict_reason,
            accepted_at: opt_time(self.accepted_at)?,
        })
    }
}

fn i(v: u64) -> i64 {
    // SQLite integers are signed; sizes and tokens never reach 2^63.
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `state_dir`, in WAL mode, migrated to
    /// the current schema.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        Self::open_file(&state_dir.join(FILE_NAME))
    }

    /// Opens the database at `path`.
    pub fn open_file(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "journal_mode is {mode}, not wal"
            )));
        }
        // FULL: a decision that was recorded must survive a power cut, or it could be re-decided.
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        let found: Option<i64> = tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()?;
        let mut version = match found {
            Some(v) => v,
            None => {
                tx.execute("INSERT INTO schema_version (version) VALUES (0)", [])?;
                0
            }
        };
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::NewerSchema {
                found: version,
                supported,
            });
        }
        while version < supported {
            let step = usize::try_from(version)
                .map_err(|_| StoreError::Corrupt(format!("schema version {version}")))?;
            tx.execute_batch(MIGRATIONS[step])?;
            version += 1;
            tx.execute("UPDATE schema_version SET version = ?1", [version])?;
        }
        tx.commit()?;
        Ok(())
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
        self.conn.execute(
            "INSERT OR IGNORE INTO actuator_tickets (decision_id, object_id, ticket_id, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![id, object_id, ticket_id, at.timestamp_millis()],
        )?;
        Ok(())
    }

    /// Marks decision `id`'s ticket finished (its outcome is known).
    pub fn finish_ticket(&mut self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE actuator_tickets SET finished_at = ?2 WHERE decision_id = ?1",
            params![id, at.timestamp_millis()],
        )?;
        Ok(())
    }

    /// The ticket recorded for decision `id`: (object id, ticket id, finished).
    pub fn ticket(&self, id: &str) -> Result<Option<(String, String, bool)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT object_id, ticket_id, finished_at IS NOT NULL FROM actuator_tickets
                 WHERE decision_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Records a new decision (in flight, or dry-run) before it is sent.
    pub fn record_decision(&mut self, d: &Decision, fencing_token: u64) -> Result<(), StoreError> {
        let evidence = serde_json::to_string(&d.evidence)?;
        let status = if d.dry_run { "dry_run" } else { "in_flight" };
        self.conn.execute(
            &format!("INSERT INTO decisions ({DECISION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, NULL, NULL, NULL, NULL)"),
            params![
                d.id,
                d.group,
                d.vm,
                d.direction.as_str(),
                d.trigger.as_str(),
                d.from.rung,
                d.from.vcpus,
                i(d.from.memory_bytes),
                d.to.rung,
                d.to.vcpus,
                i(d.to.memory_bytes),
                d.reason,
                evidence,
                d.dry_run,
                ms(d.created_at),
                ms(d.verify_deadline),
                d.baseline.vcpus,
                i(d.baseline.memory_total_bytes),
                i(fencing_token),
                status,
            ],
        )?;
        Ok(())
    }

    /// Records one delivery attempt as it happens.
    pub fn record_attempt(&mut self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO attempts (decision_id, number, started_at, duration_ms, result) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, attempt.number, ms(attempt.started_at), i(attempt.duration_ms), serde_json::to_string(&attempt.result)?],
        )?;
        Ok(())
    }

    /// The number of the last attempt recorded for decision `id` (0 if none): a send
    /// after a restart numbers its attempts after it.
    pub fn last_attempt(&self, id: &str) -> Result<u32, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(number), 0) FROM attempts WHERE decision_id = ?1",
            [id],
            |r| r.get(0),
        )?)
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
        let (reason, accepted_at) = match verdict {
            Verdict::Accepted => (None, Some(ms(at))),
            Verdict::Rejected { reason } | Verdict::GaveUp { reason } => (Some(reason), None),
        };
        self.conn.execute(
            "UPDATE decisions SET verdict = ?2, verdict_reason = ?3, accepted_at = ?4 WHERE id = ?1",
            params![id, verdict.as_str(), reason, accepted_at],
        )?;
        Ok(())
    }

    /// Records verification results and failures from an evaluation.
    pub fn record_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for e in events {
            match e {
                Event::Verified {
                    id,
                    at,
                    vcpus,
                    memory_total_bytes,
                    ..
                } => {
                    tx.execute(
                        "UPDATE decisions SET status = 'verified', status_at = ?2 WHERE id = ?1",
                        params![id, ms(*at)],
                    )?;
                    tx.execute(
                        "INSERT OR REPLACE INTO verifications (decision_id, at, verified, vcpus, memory_total_bytes, detail) VALUES (?1, ?2, 1, ?3, ?4, '')",
                        params![id, ms(*at), vcpus, i(*memory_total_bytes)],
                    )?;
                }
                Event::Failed { id, at, reason, .. } => {
                    tx.execute(
                        "UPDATE decisions SET status = 'failed', status_at = ?2 WHERE id = ?1",
                        params![id, ms(*at)],
                    )?;
                    tx.execute(
                        "INSERT OR REPLACE INTO verifications (decision_id, at, verified, vcpus, memory_total_bytes, detail) VALUES (?1, ?2, 0, NULL, NULL, ?3)",
                        params![id, ms(*at), reason],
                    )?;
                }
                // Carried by the group's flags (`save_group`).
                Event::RollStopped { .. } | Event::CircuitOpened { .. } => {}
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Saves a group's pause, circuit-breaker and roll-stop flags.
    pub fn save_group(&mut self, name: &str, state: &GroupState) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO groups (name, paused_at, paused_by, consecutive_failures, up_roll_stopped_until, down_roll_stopped_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET paused_at = ?2, paused_by = ?3, consecutive_failures = ?4,
                 up_roll_stopped_until = ?5, down_roll_stopped_until = ?6",
            params![
                name,
                state.pause.map(|p| ms(p.at)),
                state.pause.map(|p| p.by.as_str()),
                state.consecutive_failures,
                state.up_roll_stopped_until.map(ms),
                state.down_roll_stopped_until.map(ms),
            ],
        )?;
        Ok(())
    }

    /// Rebuilds a group's engine state: flags, in-flight resizes and the history cooldowns
    /// and caps are counted from. Rule timers start empty.
    pub fn load_group(&self, name: &str, now: Timestamp) -> Result<GroupState, StoreError> {
        let mut state = GroupState::default();
        let flags = self
            .conn
            .query_row(
                "SELECT paused_at, paused_by, consecutive_failures, up_roll_stopped_until, down_roll_stopped_until FROM groups WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                },
            )
            .optional()?;
        if let Some((paused_at, paused_by, failures, up, down)) = flags {
            state.pause = match (paused_at, paused_by.as_deref()) {
                (Some(at), Some("operator")) => Some(Pause {
                    at: time(at)?,
                    by: PauseReason::Operator,
                }),
                (Some(at), Some("circuit_breaker")) => Some(Pause {
                    at: time(at)?,
                    by: PauseReason::CircuitBreaker,
                }),
                (None, _) => None,
                (Some(_), other) => {
                    return Err(StoreError::Corrupt(format!("paused_by {other:?}")));
                }
            };
            state.consecutive_failures = failures;
            state.up_roll_stopped_until = opt_time(up)?;
            state.down_roll_stopped_until = opt_time(down)?;
        }
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DECISION_COLUMNS} FROM decisions WHERE group_name = ?1 AND (created_at >= ?2 OR status = 'in_flight') ORDER BY created_at, rowid"
        ))?;
        let rows = stmt.query_map(params![name, ms(now) - HISTORY_MS], DecisionRow::read)?;
        for row in rows {
            state.resizes.push(resize_record(&row?.convert()?)?);
        }
        Ok(state)
    }

    /// Decisions in flight that have no final word from the actuator: after a restart they
    /// are sent again, with the same id (the receiver de-duplicates on it).
    pub fn unsent(&self) -> Result<Vec<StoredDecision>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DECISION_COLUMNS} FROM decisions WHERE status = 'in_flight' AND verdict IS NULL ORDER BY created_at, rowid"
        ))?;
        let rows = stmt.query_map([], DecisionRow::read)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(DecisionRow::convert))
            .collect()
    }

    /// Lists decisions, newest first.
    pub fn decisions(&self, filter: &DecisionFilter) -> Result<Vec<StoredDecision>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DECISION_COLUMNS} FROM decisions
             WHERE (?1 IS NULL OR group_name = ?1) AND (?2 IS NULL OR vm = ?2)
               AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4)
             ORDER BY created_at DESC, rowid DESC LIMIT ?5"
        ))?;
        let limit = filter.limit.unwrap_or(100).min(10_000);
        let rows = stmt.query_map(
            params![
                filter.group,
                filter.vm,
                filter.since.map(ms),
                filter.until.map(ms),
                limit
            ],
            DecisionRow::read,
        )?;
        rows.map(|r| r.map_err(StoreError::from).and_then(DecisionRow::convert))
            .collect()
    }

    /// One decision by id.
    pub fn decision(&self, id: &str) -> Result<Option<StoredDecision>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?1"),
                [id],
                DecisionRow::read,
            )
            .optional()?;
        row.map(DecisionRow::convert).transpose()
    }

    /// Every recorded attempt for a decision, in order.
    pub fn attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT number, started_at, duration_ms, result FROM attempts WHERE decision_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (number, started_at, duration_ms, result) = r?;
            Ok(Attempt {
                number,
                started_at: time(started_at)?,
                duration_ms: u64::try_from(duration_ms).unwrap_or_default(),
                result: serde_json::from_str::<AttemptResult>(&result)?,
            })
        })
        .collect()
    }

    /// The verification result of a decision, once there is one.
    pub fn verification(&self, id: &str) -> Result<Option<Verification>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT at, verified, vcpus, memory_total_bytes, detail FROM verifications WHERE decision_id = ?1",
                [id],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?, r.get::<_, Option<u32>>(2)?, r.get::<_, Option<i64>>(3)?, r.get::<_, String>(4)?)),
            )
            .optional()?;
        row.map(|(at, verified, vcpus, mem, detail)| {
            Ok(Verification {
                at: time(at)?,
                verified,
                vcpus,
                memory_total_bytes: mem.map(|m| u64::try_from(m).unwrap_or_default()),
                detail,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::request::Verdict;
    use rally_policy::Metric;
    use rally_policy::decision::Evidence;
    use rally_policy::state::ResizeStatus;

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
            evidence: vec![Evidence {
                metric: Metric::CpuUtilization,
                window: "1m".into(),
                value: 0.92,
                threshold: 0.8,
                comparison: ">=".into(),
                rule: "cpu".into(),
                held_for_seconds: Some(180),
                forecast: None,
            }],
            dry_run,
            created_at,
            verify_deadline: created_at + chrono::Duration::minutes(5),
            baseline: Baseline {
                vcpus: 2,
                memory_total_bytes: (4 << 30) - (150 << 20),
            },
        }
    }

    #[test]
    fn decisions_attempts_and_verifications_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let d = decision("d1", "web", "web-1", "2026-01-15T10:00:00Z", false);
        store.record_decision(&d, 42).unwrap();
        let attempts = vec![
            Attempt {
                number: 1,
                started_at: t("2026-01-15T10:00:00Z"),
                duration_ms: 12,
                result: AttemptResult::Status {
                    code: 500,
                    body: "busy".into(),
                },
            },
            Attempt {
                number: 2,
                started_at: t("2026-01-15T10:00:01Z"),
                duration_ms: 3000,
                result: AttemptResult::Timeout,
            },
            Attempt {
                number: 3,
                started_at: t("2026-01-15T10:00:05Z"),
                duration_ms: 9,
                result: AttemptResult::Status {
                    code: 200,
                    body: String::new(),
                },
            },
        ];
        assert_eq!(store.last_attempt("d1").unwrap(), 0);
        for a in &attempts {
            store.record_attempt("d1", a).unwrap();
        }
        assert_eq!(store.last_attempt("d1").unwrap(), 3);
        assert_eq!(
            store.unsent().unwrap().len(),
            1,
            "attempts without a final word: to be sent again"
        );
        let accepted = t("2026-01-15T10:00:05Z");
        store
            .record_outcome("d1", &Verdict::Accepted, accepted)
            .unwrap();
        let stored = store.decision("d1").unwrap().unwrap();
        assert_eq!(stored.decision, d);
        assert_eq!(stored.accepted_at, Some(accepted));
        // Verification counts from the acceptance, not from the decision.
        let window = d.verify_deadline - d.created_at;
        assert_eq!(stored.verify_deadline(), accepted + window);
        let state = store.load_group("web", accepted).unwrap();
        assert_eq!(state.resizes[0].deadline, accepted + window);
        assert_eq!(
            (
                stored.fencing_token,
                stored.status.as_str(),
                stored.verdict.as_deref()
            ),
            (42, "in_flight", Some("accepted"))
        );
        assert_eq!(store.attempts("d1").unwrap(), attempts);
        assert!(
            store.unsent().unwrap().is_empty(),
            "accepted: not to be sent again"
        );

        let at = t("2026-01-15T10:01:00Z");
        store
            .record_events(&[Event::Verified {
                id: "d1".into(),
                vm: "web-1".into(),
                at,
                vcpus: 4,
                memory_total_bytes: 8 << 30,
            }])
            .unwrap();
        let v = store.verification("d1").unwrap().unwrap();
        assert_eq!(
            v,
            Verification {
                at,
                verified: true,
                vcpus: Some(4),
                memory_total_bytes: Some(8 << 30),
                detail: String::new()
            }
        );
        assert_eq!(store.decision("d1").unwrap().unwrap().status, "verified");
    }

    #[test]
    fn a_reopened_store_keeps_cooldowns_flags_and_in_flight_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let now = t("2026-01-15T10:10:00Z");
        {
            let mut store = SqliteStore::open(dir.path()).unwrap();
            // Verified 5 minutes ago (cooldown), one in flight, one sent without a final word.
            store
                .record_decision(
                    &decision("old", "web", "web-1", "2026-01-15T10:00:00Z", false),
                    0,
                )
                .unwrap();
            store
                .record_events(&[Event::Verified {
                    id: "old".into(),
                    vm: "web-1".into(),
                    at: t("2026-01-15T10:05:00Z"),
                    vcpus: 4,
                    memory_total_bytes: 8 << 30,
                }])
                .unwrap();
            store
                .record_decision(
                    &decision("new", "web", "web-2", "2026-01-15T10:09:00Z", false),
                    3,
                )
                .unwrap();
            store
                .record_decision(
                    &decision("ancient", "web", "web-3", "2026-01-10T10:00:00Z", false),
                    0,
                )
                .unwrap();
            store
                .record_events(&[Event::Failed {
                    id: "ancient".into(),
                    vm: "web-3".into(),
                    at: t("2026-01-10T10:05:00Z"),
                    reason: "timeout".into(),
                }])
                .unwrap();
            let flags = GroupState {
                pause: Some(Pause {
                    at: now,
                    by: PauseReason::CircuitBreaker,
                }),
                consecutive_failures: 3,
                up_roll_stopped_until: Some(t("2026-01-15T10:15:00Z")),
                ..GroupState::default()
            };
            store.save_group("web", &flags).unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let state = store.load_group("web", now).unwrap();
        assert_eq!(
            state.pause,
            Some(Pause {
                at: now,
                by: PauseReason::CircuitBreaker
            })
        );
        assert_eq!(state.consecutive_failures, 3);
        assert_eq!(state.up_roll_stopped_until, Some(t("2026-01-15T10:15:00Z")));
        let ids: Vec<&str> = state.resizes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["old", "new"],
            "history older than two days is not needed"
        );
        assert_eq!(
            state.resizes[0].status,
            ResizeStatus::Verified {
                at: t("2026-01-15T10:05:00Z")
            }
        );
        assert_eq!(state.in_flight().map(|r| r.id.as_str()), Some("new"));
        // `new` never got a verdict: it is to be sent again, with the same id and token.
        let unsent = store.unsent().unwrap();
        assert_eq!(unsent.len(), 1);
        assert_eq!(
            (unsent[0].decision.id.as_str(), unsent[0].fencing_token),
            ("new", 3)
        );
        assert!(store.load_group("db", now).unwrap() == GroupState::default());
    }

    #[test]
    fn decisions_are_listed_by_group_vm_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path()).unwrap();
        for (id, group, vm, at) in [
            ("a", "web", "web-1", "2026-01-15T08:00:00Z"),
            ("b", "web", "web-2", "2026-01-15T09:00:00Z"),
            ("c", "db", "db-1", "2026-01-15T10:00:00Z"),
            ("d", "web", "web-1", "2026-01-15T11:00:00Z"),
        ] {
            store
                .record_decision(&decision(id, group, vm, at, id == "d"), 0)
                .unwrap();
        }
        let list = |f: DecisionFilter| {
            store
                .decisions(&f)
                .unwrap()
                .into_iter()
                .map(|s| s.decision.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(list(DecisionFilter::default()), ["d", "c", "b", "a"]);
        assert_eq!(
            list(DecisionFilter {
                group: Some("web".into()),
                ..Default::default()
            }),
            ["d", "b", "a"]
        );
        assert_eq!(
            list(DecisionFilter {
                vm: Some("web-1".into()),
                ..Default::default()
            }),
            ["d", "a"]
        );
        let window = DecisionFilter {
            since: Some(t("2026-01-15T09:00:00Z")),
            until: Some(t("2026-01-15T11:00:00Z")),
            ..Default::default()
        };
        assert_eq!(list(window), ["c", "b"]);
        assert_eq!(
            list(DecisionFilter {
                limit: Some(1),
                ..Default::default()
            }),
            ["d"]
        );
        assert_eq!(store.decision("d").unwrap().unwrap().status, "dry_run");
        // A duplicate id is refused: a decision is recorded once.
        assert!(
            store
                .record_decision(
                    &decision("a", "web", "web-1", "2026-01-15T08:00:00Z", false),
                    0
                )
                .is_err()
        );
    }

    #[test]
    fn the_store_uses_wal_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        store
            .conn
            .execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        drop(store);
        assert!(matches!(
            SqliteStore::open(dir.path()),
            Err(StoreError::NewerSchema {
                found: 99,
                supported: 3
            })
        ));
    }

    #[test]
    fn a_version_2_database_gains_accepted_at_and_keeps_its_deadlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (2);",
            )
            .unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            let d = decision("old", "web", "web-1", "2026-01-15T10:00:00Z", false);
            conn.execute(
                "INSERT INTO decisions (id, group_name, vm, direction, trigger, from_rung, from_vcpus,
                 from_memory_bytes, to_rung, to_vcpus, to_memory_bytes, reason, evidence, dry_run,
                 created_at, verify_deadline, baseline_vcpus, baseline_memory_bytes, fencing_token,
                 status, verdict)
                 VALUES ('old', 'web', 'web-1', 'up', 'rule', 'M', 2, 1, 'L', 4, 2, 'r', '[]', 0,
                 ?1, ?2, 2, 1, 0, 'in_flight', 'accepted')",
                params![ms(d.created_at), ms(d.verify_deadline)],
            )
            .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), 3);
        let old = store.decision("old").unwrap().unwrap();
        assert_eq!(old.accepted_at, None);
        // Accepted before acceptance times were kept: the decision's own deadline.
        assert_eq!(old.verify_deadline(), old.decision.verify_deadline);
    }

    #[test]
    fn a_ticket_is_kept_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let t: Timestamp = "2026-01-15T10:04:00Z".parse().unwrap();
        let mut store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.ticket("d-1").unwrap(), None);
        store.record_ticket("d-1", "501", "9001", t).unwrap();
        // Recording again (a retried send) keeps the first ticket.
        store.record_ticket("d-1", "501", "9002", t).unwrap();
        drop(store);
        let mut store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            store.ticket("d-1").unwrap(),
            Some(("501".into(), "9001".into(), false))
        );
        store.finish_ticket("d-1", t).unwrap();
        assert_eq!(
            store.ticket("d-1").unwrap(),
            Some(("501".into(), "9001".into(), true))
        );
    }
}
