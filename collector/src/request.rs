//! What the engine asks an actuator to do and what came of it: the request (the webhook's
//! JSON body, the command's stdin), each delivery attempt (reported through an
//! [`AttemptLog`] as it is made) and the verdict.
//!
//! The engine builds these, the actuators fill them in and the store persists them;
//! this module imports nothing else of the crate so that all three can share it.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use rally_policy::Timestamp;
use rally_policy::decision::{Decision, Direction, Evidence, SizedRung, Trigger};

/// The request every actuator sends: the webhook's JSON body, the command's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResizeRequest {
    /// Unique id, also the `Idempotency-Key` header; the same on every retry and after a
    /// collector restart.
    pub id: String,
    /// The VM to resize.
    pub vm: String,
    /// Its group.
    pub group: String,
    /// `up` or `down`.
    pub direction: Direction,
    /// The size it is on.
    pub from: SizedRung,
    /// The size requested.
    pub to: SizedRung,
    /// What caused it (`rule`, `target`, `boost`, `scale_down`, `manual`, ...).
    pub trigger: Trigger,
    /// A sentence for humans.
    pub reason: String,
    /// The metric values, windows and rules behind it.
    pub evidence: Vec<Evidence>,
    /// When true the receiver must not act (only the log actuator sees these normally).
    pub dry_run: bool,
    /// When the decision was made (RFC 3339).
    pub created_at: Timestamp,
    /// The earliest the resize can fail for want of verification (RFC 3339): when this
    /// send began plus the group's `verify_timeout`. The collector counts `verify_timeout`
    /// from the actuator's acceptance, so its real deadline is never earlier. Every attempt
    /// of one send carries the same value; a send after a collector restart, a later one.
    /// Actuators that follow a cloud operation stop waiting for it then.
    pub verify_deadline: Timestamp,
    /// The leader's fencing token (0 without high availability); receivers may reject
    /// a token lower than one they have seen.
    pub fencing_token: u64,
}

impl ResizeRequest {
    /// The request for `decision`, carrying `fencing_token`, for a send that begins at
    /// `sent_at` (the verification window, `verify_deadline − created_at` of the decision,
    /// is counted from there).
    pub fn new(decision: &Decision, fencing_token: u64, sent_at: Timestamp) -> Self {
        Self {
            id: decision.id.clone(),
            vm: decision.vm.clone(),
            group: decision.group.clone(),
            direction: decision.direction,
            from: decision.from.clone(),
            to: decision.to.clone(),
            trigger: decision.trigger,
            reason: decision.reason.clone(),
            evidence: decision.evidence.clone(),
            dry_run: decision.dry_run,
            created_at: decision.created_at,
            verify_deadline: sent_at + verify_window(decision),
            fencing_token,
        }
    }
}

/// How long the agent has to report a decision's new size once the actuator accepted it
/// (the group's `verify_timeout` for that direction).
pub fn verify_window(decision: &Decision) -> chrono::Duration {
    decision.verify_deadline - decision.created_at
}

/// What one attempt to deliver a request came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptResult {
    /// The receiver answered with this HTTP status.
    Status {
        /// HTTP status code.
        code: u16,
        /// The start of the response body (bounded).
        body: String,
    },
    /// No answer within the per-attempt time-out.
    Timeout,
    /// Connecting or talking to the receiver failed.
    Transport {
        /// The error.
        error: String,
    },
    /// The command exited.
    Exited {
        /// Exit code (`None` if killed by a signal).
        code: Option<i32>,
        /// The start of its stdout (bounded).
        stdout: String,
        /// The start of its stderr (bounded).
        stderr: String,
    },
    /// The command could not be started.
    SpawnFailed {
        /// The error.
        error: String,
    },
    /// Recorded only (log actuator).
    Logged,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it started.
    pub started_at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// What it came to.
    pub result: AttemptResult,
}

/// The final word on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Accepted (2xx, exit 0, or logged); verification follows.
    Accepted,
    /// Refused for good (4xx, non-zero exit): retrying would not help.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Every attempt failed (5xx, time-outs, connection errors) up to the limit.
    GaveUp {
        /// The last failure.
        reason: String,
    },
}

impl Verdict {
    /// `accepted`, `rejected` or `gave_up` (the `outcome` label of
    /// `rally_resize_requests_total`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected { .. } => "rejected",
            Verdict::GaveUp { .. } => "gave_up",
        }
    }
}

/// Where an actuator reports each delivery attempt the moment it is over.
///
/// The log numbers the attempts, continuing after those an earlier run of the collector
/// made for the same request, and hands each to its sink: the engine stores it at once,
/// so a crash in the middle of retries keeps the count. The final verdict does not carry
/// the attempts again.
#[derive(Debug)]
pub struct AttemptLog {
    next: u32,
    made: Vec<Attempt>,
    sink: Option<mpsc::Sender<Attempt>>,
}

impl Default for AttemptLog {
    /// A log that numbers from 1 and only keeps the attempts (nobody stores them).
    fn default() -> Self {
        Self {
            next: 1,
            made: Vec::new(),
            sink: None,
        }
    }
}

impl AttemptLog {
    /// A log whose first attempt is number `first`, handing every attempt to `sink`.
    pub fn new(first: u32, sink: mpsc::Sender<Attempt>) -> Self {
        Self {
            next: first.max(1),
            made: Vec::new(),
            sink: Some(sink),
        }
    }

    /// The number the next attempt gets (the webhook's `X-Rally-Attempt`).
    pub fn next_number(&self) -> u32 {
        self.next
    }

    /// Records an attempt that started at `started_at`, took `duration` and came to
    /// `result`, and hands it to the sink (waiting while the sink is full).
    pub async fn record(
        &mut self,
        started_at: Timestamp,
        duration: std::time::Duration,
        result: AttemptResult,
    ) {
        let attempt = Attempt {
            number: self.next,
            started_at,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            result,
        };
        self.next = self.next.saturating_add(1);
        if let Some(sink) = &self.sink {
            // A closed sink means the engine is gone; the attempt still counts here.
            let _ = sink.send(attempt.clone()).await;
        }
        self.made.push(attempt);
    }

    /// The attempts recorded through this log, in order.
    pub fn made(&self) -> &[Attempt] {
        &self.made
    }
}
