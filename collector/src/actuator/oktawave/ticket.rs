//! Carrying out one resize as Oktawave tickets: read the instance, ask for the type
//! change, follow the ticket until `EndDate` is set; resume a ticket recorded before a
//! restart; and, when an earlier request's answer was lost (the instance is locked and no
//! ticket was recorded), find the running ticket on the instance and follow that instead
//! of reporting a failure.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Oktawave;
use super::client::CallError;
use super::model::{TICKET_ERROR, TICKET_SUCCEEDED, Ticket};
use crate::actuator::{Attempt, AttemptResult, ResizeRequest, Verdict};
use rally_policy::Timestamp;

/// How far before the decision a ticket's `CreationDate` may lie and still be taken for
/// the decision's own: Oktawave's clock and the collector's are not the same clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How a resize starts: with a ticket to follow, or with nothing to do.
enum Start {
    /// Follow this ticket.
    Follow(u64),
    /// The instance already has the requested size.
    AlreadyThere,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Appends an attempt that started at `started` (`t0` on the monotonic clock).
fn record(attempts: &mut Vec<Attempt>, started: Timestamp, t0: Instant, result: AttemptResult) {
    attempts.push(Attempt {
        number: attempts.len() as u32 + 1,
        started_at: started,
        duration_ms: millis(t0.elapsed()),
        result,
    });
}

fn answered(body: String) -> AttemptResult {
    AttemptResult::Status { code: 200, body }
}

impl Oktawave {
    /// Carries out `request`; every API call that matters is an attempt.
    pub(super) async fn drive(
        &self,
        request: &ResizeRequest,
        attempts: &mut Vec<Attempt>,
    ) -> Verdict {
        let rejected = |reason: String| Verdict::Rejected { reason };
        let Some(&instance) = self.config.instances.get(&request.vm) else {
            return rejected(format!(
                "VM {} has no Oktawave instance id in [actuator.instances]",
                request.vm
            ));
        };
        let Some(&type_id) = self
            .rung_types
            .get(&(request.group.clone(), request.to.rung.clone()))
        else {
            return rejected(format!(
                "rung {} of group {} is not resolved to an Oktawave instance type",
                request.to.rung, request.group
            ));
        };
        let id = request.id.clone();
        let stored = self.with_tickets(move |s| s.ticket(&id)).await.flatten();
        let ticket = match stored.and_then(|(_, t, _)| t.parse::<u64>().ok()) {
            Some(ticket) => {
                info!(id = %request.id, vm = %request.vm, instance, ticket, "resuming the poll of an Oktawave ticket started before a restart (no second change is sent)");
                ticket
            }
            None => match self.start(request, instance, type_id, attempts).await {
                Ok(Start::Follow(ticket)) => ticket,
                Ok(Start::AlreadyThere) => return Verdict::Accepted,
                Err(verdict) => return verdict,
            },
        };
        self.follow(request, ticket, attempts).await
    }

    /// Reads the instance back and, unless it is locked or already that size, asks for
    /// the type change. A locked instance with a running ticket of ours is followed.
    async fn start(
        &self,
        request: &ResizeRequest,
        instance: u64,
        type_id: u32,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Start, Verdict> {
        let (started, t0) = (chrono::Utc::now(), Instant::now());
        match self.client.instance(instance).await {
            Err(e) => {
                record(attempts, started, t0, e.attempt_result());
                return Err(Verdict::GaveUp {
                    reason: format!("reading Oktawave instance {instance}: {e}"),
                });
            }
            Ok(i) if i.is_locked => {
                record(
                    attempts,
                    started,
                    t0,
                    answered(format!("instance {instance} IsLocked")),
                );
                return self.lost_answer(request, instance, attempts).await;
            }
            Ok(i)
                if i.cpu_number == request.to.vcpus
                    && i.ram_mb.saturating_mul(1 << 20) == request.to.memory_bytes =>
            {
                let body = format!(
                    "instance {instance} already has {} vCPUs and {} MB",
                    i.cpu_number, i.ram_mb
                );
                record(attempts, started, t0, answered(body));
                info!(id = %request.id, vm = %request.vm, instance, "Oktawave instance already has the requested size; no change sent");
                return Ok(Start::AlreadyThere);
            }
            Ok(_) => {}
        }
        let (started, t0) = (chrono::Utc::now(), Instant::now());
        match self.client.change_type(instance, type_id).await {
            Ok(ticket) => {
                let body = format!("ticket {} status {}", ticket.id, ticket.status_id());
                record(attempts, started, t0, answered(body));
                info!(id = %request.id, vm = %request.vm, instance, type_id, ticket = ticket.id, "Oktawave type change requested");
                self.keep(request, instance, ticket.id).await;
                Ok(Start::Follow(ticket.id))
            }
            Err(e) => {
                record(attempts, started, t0, e.attempt_result());
                let reason = format!("change_type_ticket for instance {instance}: {e}");
                Err(match e {
                    CallError::Status { code, .. } if (400..500).contains(&code) && code != 429 => {
                        Verdict::Rejected { reason }
                    }
                    _ => Verdict::GaveUp { reason },
                })
            }
        }
    }

    /// The instance is locked and no ticket is recorded for this decision. If a collector
    /// died after Oktawave created the ticket but before its answer arrived, that ticket is
    /// still running on the instance: find it (`GET /tickets` created since the decision,
    /// picked by `ObjectId` since the API cannot filter by object) and follow it. Otherwise
    /// another operation holds the instance and no change is sent.
    async fn lost_answer(
        &self,
        request: &ResizeRequest,
        instance: u64,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Start, Verdict> {
        let since = request.created_at - chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
        let (started, t0) = (chrono::Utc::now(), Instant::now());
        let tickets = match self.client.tickets_since(since).await {
            Ok(t) => t,
            Err(e) => {
                record(attempts, started, t0, e.attempt_result());
                return Err(Verdict::GaveUp {
                    reason: format!(
                        "Oktawave instance {instance} is locked and its tickets could not be \
                         listed: {e}"
                    ),
                });
            }
        };
        match running_ticket(&tickets, instance, since) {
            Some(ticket) => {
                let body = format!(
                    "instance {instance} is locked by running ticket {} created {}",
                    ticket.id,
                    ticket.creation_date.as_deref().unwrap_or("?")
                );
                record(attempts, started, t0, answered(body));
                warn!(id = %request.id, vm = %request.vm, instance, ticket = ticket.id, "Oktawave instance is locked by a ticket created since the decision (an earlier request's answer was lost): following it, no change sent");
                self.keep(request, instance, ticket.id).await;
                Ok(Start::Follow(ticket.id))
            }
            None => {
                let body = format!(
                    "no running ticket on instance {instance} since {}",
                    since.to_rfc3339()
                );
                record(attempts, started, t0, answered(body));
                warn!(id = %request.id, vm = %request.vm, instance, "Oktawave instance is locked: another operation is running on it; not sending another");
                Err(Verdict::Rejected {
                    reason: format!(
                        "Oktawave instance {instance} is locked (an operation is already running \
                         on it); no change was sent"
                    ),
                })
            }
        }
    }

    /// Records `ticket` for the decision, so a restart resumes it.
    async fn keep(&self, request: &ResizeRequest, instance: u64, ticket: u64) {
        let id = request.id.clone();
        let now = chrono::Utc::now();
        let kept = self
            .with_tickets(move |s| {
                s.record_ticket(&id, &instance.to_string(), &ticket.to_string(), now)
            })
            .await;
        if kept.is_none() && self.tickets.is_some() {
            warn!(id = %request.id, ticket, "the ticket id was not persisted: a restart now would not find it");
        }
    }

    /// Polls `ticket` until it ends, the verification deadline passes, or too many polls
    /// in a row fail.
    async fn follow(
        &self,
        request: &ResizeRequest,
        ticket: u64,
        attempts: &mut Vec<Attempt>,
    ) -> Verdict {
        let mut failures = 0u32;
        loop {
            let (started, t0) = (chrono::Utc::now(), Instant::now());
            if started >= request.verify_deadline {
                return Verdict::GaveUp {
                    reason: format!(
                        "Oktawave ticket {ticket} had not ended at the verification deadline"
                    ),
                };
            }
            match self.client.ticket(ticket).await {
                Ok(t) if t.ended() => {
                    let status = t.status_id();
                    let body = format!(
                        "ticket {ticket} ended with status {status} at {}",
                        t.end_date.as_deref().unwrap_or("")
                    );
                    record(attempts, started, t0, answered(body));
                    let id = request.id.clone();
                    let now = chrono::Utc::now();
                    self.with_tickets(move |s| s.finish_ticket(&id, now)).await;
                    info!(id = %request.id, vm = %request.vm, ticket, status, "Oktawave ticket ended");
                    return match status {
                        TICKET_SUCCEEDED => Verdict::Accepted,
                        TICKET_ERROR => Verdict::Rejected {
                            reason: format!("Oktawave ticket {ticket} ended in error (status 137)"),
                        },
                        other => Verdict::Rejected {
                            reason: format!("Oktawave ticket {ticket} ended with status {other}"),
                        },
                    };
                }
                Ok(t) => {
                    failures = 0;
                    debug!(ticket, status = t.status_id(), progress = ?t.progress, "Oktawave ticket running");
                }
                Err(e) => {
                    failures += 1;
                    record(attempts, started, t0, e.attempt_result());
                    warn!(ticket, failures, error = %e, "polling an Oktawave ticket failed");
                    if !e.transient() || failures > self.config.max_transient_errors {
                        return Verdict::GaveUp {
                            reason: format!(
                                "polling Oktawave ticket {ticket}: {e} ({failures} failures in a row)"
                            ),
                        };
                    }
                }
            }
            let left = (request.verify_deadline - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            tokio::time::sleep(self.config.poll_interval.min(left)).await;
        }
    }
}

/// The newest ticket among `tickets` still running on `instance` and created no earlier
/// than `since` (a `CreationDate` that does not parse is left to the server's filter).
fn running_ticket(tickets: &[Ticket], instance: u64, since: Timestamp) -> Option<&Ticket> {
    tickets
        .iter()
        .filter(|t| t.object_id == Some(instance) && !t.ended())
        .filter(|t| t.created_at().is_none_or(|at| at >= since))
        .max_by_key(|t| (t.created_at(), t.id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn ticket(id: u64, object: u64, created: &str, ended: bool) -> Ticket {
        Ticket {
            id,
            creation_date: Some(created.into()),
            end_date: ended.then(|| "2026-01-15T10:09:00Z".to_owned()),
            status: None,
            operation_type: None,
            object_id: Some(object),
            progress: None,
        }
    }

    #[test]
    fn the_running_ticket_is_the_instances_newest_unended_one_since_the_decision() {
        let since: Timestamp = "2026-01-15T10:04:00Z".parse().unwrap();
        let tickets = [
            ticket(1, 501, "2026-01-15T10:00:00Z", false), // before the decision
            ticket(2, 502, "2026-01-15T10:05:00Z", false), // another instance
            ticket(3, 501, "2026-01-15T10:05:00Z", true),  // ended
            ticket(4, 501, "2026-01-15T11:05:00+01:00", false),
        ];
        assert_eq!(running_ticket(&tickets, 501, since).map(|t| t.id), Some(4));
        assert_eq!(
            running_ticket(&tickets[..3], 501, since).map(|t| t.id),
            None
        );
    }
}
