//! High availability: one leader among several collectors, elected through etcd.
//!
//! Every collector ingests and serves `/metrics` and the API; only the leader evaluates
//! policy and actuates. The election is etcd's own (`v3election`): each collector holds a
//! lease of `lease_ttl`, renewed every third of it, and campaigns with it; the leader's
//! key is created at a revision that is the term's **fencing token**. The token travels
//! with every resize request (`X-Rally-Fencing-Token`), and every write of the decision
//! state is an etcd transaction that holds only while the leader's key stands, so a
//! deposed leader cannot commit a late decision.
//!
//! A leader stops acting on its own clock as well: a term is trusted until the last
//! renewal's send time plus the TTL (minus a margin), which is never later than etcd's
//! own expiry of the lease. A leader that cannot reach etcd therefore stops before
//! another collector can take over; when etcd is back it campaigns again.
//!
//! - [`Ha`]: the shared state (role, term, known leader, counters) that the engine, the
//!   store, `/metrics`, `/readyz` and the API read.
//! - [`Ha::run`]: the election task.

mod election;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rally_etcd::Term;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::HaConfig;

/// Kept off a term's trusted end: scheduling delays inside this process.
const MARGIN: Duration = Duration::from_millis(250);

/// What this collector is in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Getting a lease or campaigning while no one else is known to lead.
    Candidate,
    /// Another collector leads.
    Follower,
    /// This collector leads.
    Leader,
}

impl Role {
    /// The name the API and `/readyz` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Candidate => "candidate",
            Self::Follower => "follower",
            Self::Leader => "leader",
        }
    }
}

/// Why a term ended other than by resigning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// etcd answered that the lease is gone (it expired while this collector was
    /// stopped, cut off or too slow).
    LeaseExpired,
    /// etcd could not be reached to renew the lease before its trusted end.
    EtcdUnreachable,
}

impl Lost {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeaseExpired => "lease_expired",
            Self::EtcdUnreachable => "etcd_unreachable",
        }
    }
}

/// Where work of an ended term was refused (the `stage` label of
/// `rally_collector_fenced_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The engine found its term past its trusted end and did not decide.
    Lease,
    /// etcd refused the decision's transaction: the leader's key was gone.
    Commit,
    /// The dispatcher did not send a request of an ended term.
    Dispatch,
}

impl Fence {
    /// Every stage, for the metric.
    pub const ALL: [Fence; 3] = [Fence::Lease, Fence::Commit, Fence::Dispatch];

    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::Commit => "commit",
            Self::Dispatch => "dispatch",
        }
    }
}

/// The leader as the election service shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LeaderInfo {
    /// Its `ha.name`.
    pub name: String,
    /// Its `ha.advertise` URL: where API callers are pointed.
    pub url: String,
    /// Its term's fencing token.
    #[serde(default)]
    pub token: u64,
}

/// Where this collector's term stands, for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It leads under this term, within the term's trusted end.
    Leading(Term),
    /// It believed it led under this term, but the term is past its trusted end.
    Expired(Term),
    /// It does not lead.
    NotLeading,
}

#[derive(Debug)]
struct Inner {
    role: Role,
    term: Option<Term>,
    /// The term is trusted until then.
    trusted_until: Option<Instant>,
    leader: Option<LeaderInfo>,
    lease_healthy: bool,
    /// The fencing token of the newest term this collector knows of.
    last_token: u64,
    /// The term whose expiry the engine already counted as fenced.
    expiry_counted: Option<u64>,
    /// The lease this collector campaigns or leads with, until its campaign ends.
    lease: Option<i64>,
}

/// The shared high-availability state of one collector.
#[derive(Debug)]
pub struct Ha {
    name: String,
    url: String,
    prefix: String,
    ttl: Duration,
    inner: Mutex<Inner>,
    term: watch::Sender<Option<Term>>,
    terms: AtomicU64,
    pauses: [AtomicU64; 2],
    fenced: [AtomicU64; 3],
    etcd_errors: AtomicU64,
}

/// A snapshot for `/api/v1/leader`, `/readyz` and `rally-collector status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaStatus {
    /// Always true (a single collector has no such status).
    pub ha: bool,
    /// This collector's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The leader it knows of.
    pub leader: Option<LeaderInfo>,
    /// Whether its lease was renewed within its TTL.
    pub lease_healthy: bool,
    /// The fencing token of the newest term it knows of.
    pub fencing_token: u64,
    /// Work of an ended term that it refused.
    pub fenced: u64,
    /// Terms it began.
    pub terms: u64,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ha {
    /// The state of a collector configured with `config`, advertising `url`; not yet
    /// campaigning (see [`Ha::run`]).
    pub fn new(config: &HaConfig, url: String) -> Self {
        Self {
            name: config.name(),
            url,
            prefix: config.prefix.clone(),
            ttl: config.lease_ttl,
            inner: Mutex::new(Inner {
                role: Role::Candidate,
                term: None,
                trusted_until: None,
                leader: None,
                lease_healthy: false,
                last_token: 0,
                expiry_counted: None,
                lease: None,
            }),
            term: watch::channel(None).0,
            terms: AtomicU64::new(0),
            pauses: Default::default(),
            fenced: Default::default(),
            etcd_errors: AtomicU64::new(0),
        }
    }

    /// The election's key prefix (`<prefix>/leader`).
    pub fn election(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// Rally's key prefix (`ha.prefix`): the store keeps its state under
    /// `<prefix>/state/`.
    pub fn prefix(&self) -> String {
        self.prefix.clone()
    }

    /// The term this collector leads under, as it changes (`None`: it does not lead).
    /// The etcd store guards every write with it.
    pub fn subscribe(&self) -> watch::Receiver<Option<Term>> {
        self.term.subscribe()
    }

    /// Where the term stands now (the engine asks before every evaluation).
    pub fn standing(&self) -> Standing {
        let inner = lock(&self.inner);
        match (&inner.term, inner.trusted_until) {
            (Some(term), Some(until)) if Instant::now() < until => Standing::Leading(term.clone()),
            (Some(term), _) => Standing::Expired(term.clone()),
            (None, _) => Standing::NotLeading,
        }
    }

    /// Whether work made under `token` may still go out: this collector leads under
    /// that very term, within its trusted end.
    pub fn still_leads(&self, token: u64) -> bool {
        matches!(self.standing(), Standing::Leading(t) if t.token == token)
    }

    /// Completes once work made under `token` may no longer go out: the term ended, or
    /// it is past its trusted end (whichever this collector learns first; the election
    /// task may still be waiting for etcd's answer).
    pub async fn term_ended(&self, token: u64) {
        let mut terms = self.term.subscribe();
        loop {
            let until = {
                let inner = lock(&self.inner);
                match (&inner.term, inner.trusted_until) {
                    (Some(t), Some(until)) if t.token == token && Instant::now() < until => until,
                    _ => return,
                }
            };
            tokio::select! {
                changed = terms.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // A renewal may have moved the end since: look again.
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Counts work of an ended term refused at `stage`. An expired term found by the
    /// engine counts once, however many evaluations find it.
    pub fn count_fenced(&self, stage: Fence, token: u64) {
        if stage == Fence::Lease {
            let mut inner = lock(&self.inner);
            if inner.expiry_counted == Some(token) {
                return;
            }
            inner.expiry_counted = Some(token);
        }
        self.fenced[stage as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Work refused at `stage`, since start.
    pub fn fenced(&self, stage: Fence) -> u64 {
        self.fenced[stage as usize].load(Ordering::Relaxed)
    }

    /// Terms that ended for `reason`, since start.
    pub fn pauses(&self, reason: Lost) -> u64 {
        self.pauses[reason as usize].load(Ordering::Relaxed)
    }

    /// Failed calls to etcd, since start.
    pub fn etcd_errors(&self) -> u64 {
        self.etcd_errors.load(Ordering::Relaxed)
    }

    /// The leader's URL for an API caller sent away from a follower.
    pub fn leader_url(&self) -> Option<String> {
        lock(&self.inner).leader.as_ref().map(|l| l.url.clone())
    }

    /// A snapshot of the state.
    pub fn status(&self) -> HaStatus {
        let inner = lock(&self.inner);
        HaStatus {
            ha: true,
            name: self.name.clone(),
            role: inner.role,
            leader: inner.leader.clone(),
            lease_healthy: inner.lease_healthy,
            fencing_token: inner.last_token,
            fenced: Fence::ALL.iter().map(|s| self.fenced(*s)).sum(),
            terms: self.terms.load(Ordering::Relaxed),
        }
    }

    fn leader_value(&self) -> Vec<u8> {
        let info = LeaderInfo {
            name: self.name.clone(),
            url: self.url.clone(),
            token: 0,
        };
        serde_json::to_vec(&info).unwrap_or_default()
    }

    fn etcd_error(&self) {
        self.etcd_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The lease was renewed by a call sent at `sent`; etcd grants `ttl` from its receipt.
    fn renewed(&self, sent: Instant) {
        let mut inner = lock(&self.inner);
        inner.lease_healthy = true;
        inner.trusted_until = Some(sent + self.ttl.saturating_sub(MARGIN));
    }

    fn lease_unhealthy(&self) {
        lock(&self.inner).lease_healthy = false;
    }

    /// The trusted end of the current lease, if there is one.
    fn trusted_until(&self) -> Option<Instant> {
        lock(&self.inner).trusted_until
    }

    fn begin_term(&self, term: Term) {
        {
            let mut inner = lock(&self.inner);
            inner.role = Role::Leader;
            inner.last_token = inner.last_token.max(term.token);
            inner.leader = Some(LeaderInfo {
                name: self.name.clone(),
                url: self.url.clone(),
                token: term.token,
            });
            inner.term = Some(term.clone());
        }
        self.terms.fetch_add(1, Ordering::Relaxed);
        self.term.send_replace(Some(term));
    }

    /// Ends the term (if any) and forgets the lease.
    fn end_term(&self, lost: Option<Lost>) {
        let had_term = {
            let mut inner = lock(&self.inner);
            inner.role = Role::Candidate;
            inner.trusted_until = None;
            inner.lease_healthy = false;
            if inner.leader.as_ref().is_some_and(|l| l.name == self.name) {
                inner.leader = None;
            }
            inner.term.take().is_some()
        };
        if had_term {
            if let Some(reason) = lost {
                self.pauses[reason as usize].fetch_add(1, Ordering::Relaxed);
            }
            self.term.send_replace(None);
        }
    }

    /// What the election service shows as leader (another collector, or none).
    fn observed(&self, leader: Option<LeaderInfo>) {
        let mut inner = lock(&self.inner);
        if inner.role == Role::Leader {
            return;
        }
        if let Some(l) = &leader {
            inner.last_token = inner.last_token.max(l.token);
        }
        // Its own key leading while it does not lead yet: its campaign is about to
        // return (or an old lease of its own is ending): not a follower.
        let follows = leader.as_ref().is_some_and(|l| l.name != self.name);
        inner.role = if follows {
            Role::Follower
        } else {
            Role::Candidate
        };
        inner.leader = leader;
    }
}

/// Who may decide: the only collector, or whichever of several etcd elects.
#[derive(Debug, Clone)]
pub enum Leadership {
    /// One collector, no election: it always decides, under token 0.
    Single,
    /// Several collectors: this one decides while it leads.
    Elected(std::sync::Arc<Ha>),
}

impl Leadership {
    /// Where this collector's term stands (a single collector always leads).
    pub fn standing(&self) -> Standing {
        match self {
            Self::Single => Standing::Leading(Term {
                key: Vec::new(),
                token: SINGLE_TOKEN,
            }),
            Self::Elected(ha) => ha.standing(),
        }
    }

    /// Whether work made under `token` may still go out.
    pub fn still_leads(&self, token: u64) -> bool {
        match self {
            Self::Single => true,
            Self::Elected(ha) => ha.still_leads(token),
        }
    }

    /// Counts work of an ended term refused at `stage`.
    pub fn count_fenced(&self, stage: Fence, token: u64) {
        if let Self::Elected(ha) = self {
            ha.count_fenced(stage, token);
        }
    }

    /// Completes once work made under `token` may no longer go out (never for a
    /// single collector).
    pub async fn term_ended(&self, token: u64) {
        match self {
            Self::Single => std::future::pending().await,
            Self::Elected(ha) => ha.term_ended(token).await,
        }
    }

    /// The leader's URL for a caller this collector cannot serve, when it follows.
    pub fn leader_url(&self) -> Option<String> {
        match self {
            Self::Single => None,
            Self::Elected(ha) => ha.leader_url(),
        }
    }

    /// The shared state of an elected collector.
    pub fn ha(&self) -> Option<&std::sync::Arc<Ha>> {
        match self {
            Self::Single => None,
            Self::Elected(ha) => Some(ha),
        }
    }
}

/// The fencing token of a single collector's requests: there is no election.
pub const SINGLE_TOKEN: u64 = 0;
