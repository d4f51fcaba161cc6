//! The election task: get a lease, keep it alive, campaign with it, lead until the lease
//! is lost or the collector stops; and, meanwhile, watch who leads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rally_etcd::{Etcd, EtcdError, Term};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Ha, LeaderInfo, Lost};

/// The first pause after a failed call to etcd; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest pause between attempts to reach etcd.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a collector asks who leads.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);

impl Ha {
    /// Campaigns until `shutdown` completes, then resigns (so another collector takes
    /// over at once instead of after the TTL).
    pub async fn run(self: Arc<Self>, etcd: Etcd, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let observer = tokio::spawn(Arc::clone(&self).observe(etcd.clone()));
        let mut retry = RETRY_MIN;
        // A lease of a term that ended while etcd was unreachable: revoked once etcd
        // answers, so that its key does not hold the election for a whole TTL.
        let mut stale: Option<i64> = None;
        loop {
            if let Some(lease) = stale {
                match etcd.revoke(lease).await {
                    Ok(()) => stale = None,
                    Err(EtcdError::Status { .. }) => stale = None, // already gone
                    Err(_) => {}
                }
            }
            let failed = tokio::select! {
                () = &mut shutdown => break,
                failed = self.term(&etcd) => failed,
            };
            super::lock(&self.inner).lease = None;
            match failed {
                None => retry = RETRY_MIN,
                Some(Failed { lease, error }) => {
                    self.lease_unhealthy();
                    warn!(%error, retry_in = ?retry, "etcd: cannot campaign");
                    stale = stale.or(lease);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        observer.abort();
        let (lease, token) = {
            let mut inner = super::lock(&self.inner);
            (inner.lease.take(), inner.term.as_ref().map(|t| t.token))
        };
        self.end_term(None);
        // The lease held now goes with its key: the next candidate's campaign wins at
        // once instead of after the TTL.
        if let Some(lease) = lease {
            match (etcd.revoke(lease).await, token) {
                (Ok(()), Some(token)) => info!(token, "resigned: another collector may lead now"),
                (Ok(()), None) => debug!("lease revoked: no longer a candidate"),
                (Err(e), Some(_)) => {
                    warn!(error = %e, "could not resign; another collector leads after the lease's TTL")
                }
                (Err(e), None) => debug!(error = %e, "could not revoke the lease"),
            }
        }
    }

    /// One lease: campaign with it and lead until it is lost. `None` when a term began
    /// and ended with etcd's answer; what failed otherwise.
    async fn term(&self, etcd: &Etcd) -> Option<Failed> {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let lease = match etcd.grant(ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                self.etcd_error();
                return Some(Failed::new(None, e.to_string()));
            }
        };
        self.renewed(sent);
        super::lock(&self.inner).lease = Some(lease);
        debug!(
            lease = format!("{lease:x}"),
            "etcd: lease granted; campaigning"
        );
        let (election, value) = (self.election(), self.leader_value());
        let key = tokio::select! {
            lost = self.keep_alive(etcd, lease) => {
                self.end_term(None);
                return Some(Failed::new(Some(lease), format!("lease lost while campaigning ({})", lost.as_str())));
            }
            key = etcd.campaign(&election, lease, value) => match key {
                Ok(key) => key,
                Err(e) => {
                    self.etcd_error();
                    return Some(Failed::new(Some(lease), e.to_string()));
                }
            }
        };
        let term = Term::of(&key);
        let token = term.token;
        self.begin_term(term);
        info!(token, name = %self.name, "leading: term began; this collector decides and actuates");
        let lost = self.keep_alive(etcd, lease).await;
        self.end_term(Some(lost));
        warn!(
            token,
            reason = lost.as_str(),
            "leadership lost: actuation paused until this collector leads again"
        );
        match lost {
            Lost::LeaseExpired => None,
            Lost::EtcdUnreachable => Some(Failed::new(Some(lease), "etcd unreachable".into())),
        }
    }

    /// Renews `lease` every third of its TTL (sooner after a failure) until it is lost.
    async fn keep_alive(&self, etcd: &Etcd, lease: i64) -> Lost {
        let every = self.ttl / 3;
        let mut next = Instant::now() + every;
        loop {
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            // Never wait for etcd past the lease's trusted end: the term ends then. Past
            // it already (this process was stopped), etcd still says which it was: the
            // lease expired, or it lives on (the key stands, the term goes on).
            let deadline = self
                .trusted_until()
                .filter(|until| sent < *until)
                .unwrap_or(sent + etcd.timeout());
            let Ok(answer) = tokio::time::timeout_at(deadline, etcd.keep_alive(lease)).await else {
                self.etcd_error();
                self.lease_unhealthy();
                warn!("etcd: no renewal of the lease before its trusted end");
                return Lost::EtcdUnreachable;
            };
            match answer {
                Ok(_) => {
                    self.renewed(sent);
                    next = sent + every;
                }
                Err(EtcdError::LeaseExpired(_)) => return Lost::LeaseExpired,
                Err(e) => {
                    self.etcd_error();
                    self.lease_unhealthy();
                    warn!(error = %e, "etcd: cannot renew the lease");
                    let now = Instant::now();
                    if self.trusted_until().is_none_or(|until| now >= until) {
                        return Lost::EtcdUnreachable;
                    }
                    next = now + RETRY_MIN.min(every);
                }
            }
        }
    }

    /// Asks etcd who leads, every [`OBSERVE_EVERY`], for the API and `/metrics`.
    async fn observe(self: Arc<Self>, etcd: Etcd) {
        let election = self.election();
        loop {
            match etcd.leader(&election).await {
                Ok(kv) => {
                    let leader = kv.and_then(|kv| {
                        let mut info: LeaderInfo = serde_json::from_slice(&kv.value).ok()?;
                        info.token = u64::try_from(kv.create_revision).unwrap_or_default();
                        Some(info)
                    });
                    self.observed(leader);
                }
                Err(e) => {
                    // Unknown is not "the last one seen": the API and page say no
                    // leader is known rather than point at one that may be gone.
                    self.etcd_error();
                    self.observed(None);
                    debug!(error = %e, "etcd: cannot tell who leads");
                }
            }
            tokio::time::sleep(OBSERVE_EVERY).await;
        }
    }
}

/// A campaign that etcd cut short.
struct Failed {
    /// The lease granted for it, to revoke once etcd answers.
    lease: Option<i64>,
    error: String,
}

impl Failed {
    fn new(lease: Option<i64>, error: String) -> Self {
        Self { lease, error }
    }
}
