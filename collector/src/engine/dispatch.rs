//! The dispatcher: hands persisted decisions to the actuator on tasks of their own
//! (bounded concurrency), stores each attempt as the actuator reports it, and sends the
//! verdict back to the engine loop once every attempt is stored.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Semaphore, mpsc};
use tracing::{error, warn};

use crate::actuator::{Actuator, LogActuator};
use crate::clock::Clock;
use crate::fleet::view::timestamp;
use crate::ha::{Fence, Leadership};
use crate::request::{Attempt, AttemptLog, ResizeRequest, Verdict, verify_window};
use crate::store::Store;
use rally_policy::Timestamp;
use rally_policy::decision::Decision;

use super::handle::with_store;

/// Attempts of one request on their way to the store, at most (the actuator waits).
const ATTEMPT_QUEUE: usize = 4;

/// A decision for the dispatcher, which builds its request when the send begins.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) decision: Decision,
    pub(super) fencing_token: u64,
    /// The number of this send's first attempt (after those of an earlier run).
    pub(super) first_attempt: u32,
}

/// What the dispatcher reports back (the attempts are already in the store).
#[derive(Debug)]
pub(super) struct Delivered {
    pub(super) request: ResizeRequest,
    pub(super) verdict: Verdict,
    /// When the actuator gave its verdict, on the engine's clock.
    pub(super) answered_at: Timestamp,
    /// The verification window of the decision.
    pub(super) window: chrono::Duration,
    /// Attempts this send made.
    pub(super) attempts: usize,
}

/// What the dispatcher's tasks share.
pub(super) struct Dispatcher {
    /// Where non-dry-run requests go; a reload replaces it.
    pub(super) actuator: Arc<std::sync::RwLock<Arc<dyn Actuator>>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) store: Arc<Mutex<Store>>,
    /// Requests of a term that ended are not sent.
    pub(super) leadership: Leadership,
}

/// The dispatcher: takes jobs from the bounded queue and runs each on its own task, at
/// most `concurrency` at once, so one slow receiver does not hold up the others.
pub(super) async fn dispatch(
    mut jobs: mpsc::Receiver<Job>,
    outcomes: mpsc::Sender<Delivered>,
    shared: Dispatcher,
    concurrency: usize,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let log: Arc<dyn Actuator> = Arc::new(LogActuator);
    while let Some(job) = jobs.recv().await {
        if !shared.leadership.still_leads(job.fencing_token) {
            // The new leader sends it again, under its own token, if it still stands.
            shared
                .leadership
                .count_fenced(Fence::Dispatch, job.fencing_token);
            warn!(id = %job.decision.id, token = job.fencing_token, "fenced: not sending a request of an ended term");
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let actuator = if job.decision.dry_run {
            Arc::clone(&log)
        } else {
            Arc::clone(
                &shared
                    .actuator
                    .read()
                    .unwrap_or_else(PoisonError::into_inner),
            )
        };
        let (clock, store) = (Arc::clone(&shared.clock), Arc::clone(&shared.store));
        let outcomes = outcomes.clone();
        let leadership = shared.leadership.clone();
        tokio::spawn(async move {
            let (id, token) = (job.decision.id.clone(), job.fencing_token);
            // The term may end while the actuator retries: its next attempt must not
            // go out. Stopping the send drops the attempt under way, if any; a request
            // already on the wire is what the receiver's own check is for.
            let delivered = tokio::select! {
                // An ended term wins over an attempt that is due at the same moment
                // (a process woken from a stop finds both ready).
                biased;
                () = leadership.term_ended(token) => None,
                delivered = deliver(job, actuator.as_ref(), clock.as_ref(), &store) => Some(delivered),
            };
            drop(permit);
            match delivered {
                Some(delivered) => {
                    let _ = outcomes.send(delivered).await;
                }
                None => {
                    leadership.count_fenced(Fence::Dispatch, token);
                    warn!(%id, token, "fenced: the term ended while the request was being sent; no further attempt");
                }
            }
        });
    }
}

/// Sends one job's request, storing each attempt as the actuator reports it; returns
/// once every attempt is stored.
async fn deliver(
    job: Job,
    actuator: &dyn Actuator,
    clock: &dyn Clock,
    store: &Arc<Mutex<Store>>,
) -> Delivered {
    let window = verify_window(&job.decision);
    let request = ResizeRequest::new(&job.decision, job.fencing_token, timestamp(clock.now()));
    let (sink, attempts) = mpsc::channel(ATTEMPT_QUEUE);
    let log = AttemptLog::new(job.first_attempt, sink);
    let send = async {
        let mut log = log;
        let verdict = actuator.send(&request, &mut log).await;
        (verdict, timestamp(clock.now()), log.made().len())
        // `log` drops here: the store task sees the end of the attempts.
    };
    let ((verdict, answered_at, made), ()) =
        tokio::join!(send, store_attempts(store, &request.id, attempts));
    Delivered {
        request,
        verdict,
        answered_at,
        window,
        attempts: made,
    }
}

/// Writes each attempt of decision `id` to the store as it arrives.
async fn store_attempts(
    store: &Arc<Mutex<Store>>,
    id: &str,
    mut attempts: mpsc::Receiver<Attempt>,
) {
    while let Some(attempt) = attempts.recv().await {
        let (number, owned) = (attempt.number, id.to_owned());
        let result = with_store(store, move |s| s.record_attempt(&owned, &attempt)).await;
        if let Err(e) = result {
            error!(%id, attempt = number, error = %e, "could not record an actuator attempt");
        }
    }
}
