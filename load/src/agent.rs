//! One simulated agent: opens a `rally.v1.Ingest/Stream` as a real agent does
//! (`Hello` first), waits for the run to start, sends reports at its rate or as fast
//! as its window of un-acknowledged reports allows, reads the acks and records how
//! long each report waited for one.
//!
//! By default it never reconnects: a stream that fails is counted as an error and the
//! agent stops, so a run's figures are about one set of streams. With `--reconnect`
//! it reopens the stream as the real agent does (`rally_agent::backoff`, the same VM
//! and run, on a new connection), sends its un-acknowledged reports again and goes on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rally_agent::backoff::{Backoff, BackoffPolicy};
use rally_agent::wire::Identity;
use rally_proto::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::codec::{self, Outgoing};
use crate::report::{self, Reports};
use crate::stats::{Reconnect, Stats};

/// Messages queued between an agent and its HTTP/2 stream. Every ready message goes
/// out in one write (tonic encodes them into one buffer), so in a flood 32 (~22 KB)
/// cost a third less CPU per report than 8; the window bounds what is in flight
/// either way, and 128 gained nothing more.
const QUEUE: usize = 32;
/// Latencies are handed to the shared histogram in batches of this many.
const LATENCY_BATCH: usize = 64;

/// Where a run is; phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Streams are being opened; no reports yet.
    Opening,
    /// Reports flow.
    Running,
    /// No more reports: wait for the outstanding acks, with the streams still open.
    Stopping,
    /// Every agent has its acks (or the drain time is over): close the streams.
    Closing,
}

/// What every agent of a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prefix of the VM ids (`<prefix>-00042`).
    pub vm_prefix: String,
    /// Time between reports; `None` floods.
    pub period: Option<Duration>,
    /// At most this many reports un-acknowledged per agent.
    pub window: usize,
    /// How long opening a stream may take.
    pub open_timeout: Duration,
    /// How long to wait for the outstanding acks after the run.
    pub drain: Duration,
    /// Reopen a lost stream after the agent's backoff instead of stopping.
    pub reconnect: bool,
}

impl Plan {
    /// The interval an agent announces: its period, or when flooding the shortest
    /// the collector accepts.
    pub fn interval(&self) -> Duration {
        self.period.unwrap_or(Duration::from_secs(1))
    }
}

/// What one agent shares with the run.
#[derive(Clone)]
pub struct Shared {
    /// The run's plan.
    pub plan: Arc<Plan>,
    /// The run's counters.
    pub stats: Arc<Stats>,
    /// The run's phase.
    pub phase: watch::Receiver<Phase>,
    /// Bounds how many streams are being opened at once.
    pub opening: Arc<Semaphore>,
    /// The collector, for the connections of reopened streams.
    pub endpoint: Endpoint,
}

/// Runs simulated agent `index` on `channel` until the run stops.
pub async fn run(index: usize, channel: Channel, shared: Shared) {
    let stats = Arc::clone(&shared.stats);
    let mut rng = SmallRng::from_os_rng();
    // Kept across reconnections: a reopened stream is the same agent run.
    let identity = report::identity(&shared.plan.vm_prefix, index, &mut rng);
    let opened = open(&identity, channel, &shared).await;
    Stats::add(&stats.settled, 1);
    let Some((tx, inbound)) = opened else {
        return;
    };
    Stats::add(&stats.opened, 1);
    // At a rate every report is a new sample, as a real agent's are; a flood sends
    // one sample a few times rather than spend more on building it than the
    // collector spends on taking it.
    let renew_after = match shared.plan.period {
        Some(_) => 1,
        None => report::RENEW_AFTER,
    };
    let reports = Reports::new(shared.plan.interval(), renew_after, &mut rng);
    let mut agent = Agent {
        index,
        plan: &shared.plan,
        stats: &stats,
        tx,
        inbound,
        rng,
        reports,
        seq: 0,
        outstanding: VecDeque::with_capacity(shared.plan.window),
        latencies: Vec::with_capacity(LATENCY_BATCH),
        warm_up_latencies: Vec::new(),
    };
    loop {
        let Err(kind) = agent.follow(shared.phase.clone()).await else {
            break;
        };
        let stopping = *shared.phase.borrow() >= Phase::Stopping;
        if !shared.plan.reconnect || stopping {
            stats.error(kind);
            break;
        }
        Stats::add(&stats.lost_streams, 1);
        if !agent.reconnect(&identity, &shared).await {
            break;
        }
    }
    agent.flush();
    Stats::add(&stats.unacked, agent.outstanding.len() as u64);
    // The stream closes when `agent` is dropped: not before every agent is done, or
    // thousands of streams closing at once would delay the acks others still wait
    // for, and time the generator's own stop instead of the collector.
    Stats::add(&stats.drained, 1);
    let _ = shared
        .phase
        .clone()
        .wait_for(|p| *p == Phase::Closing)
        .await;
}

type Opened = (mpsc::Sender<Outgoing>, Streaming<pb::CollectorMessage>);

/// Opens the first stream before the run starts, a bounded number of agents at a
/// time (`Shared::opening`).
async fn open(identity: &Identity, channel: Channel, shared: &Shared) -> Option<Opened> {
    let stats = &shared.stats;
    let mut phase = shared.phase.clone();
    let _permit = tokio::select! {
        permit = Arc::clone(&shared.opening).acquire_owned() => permit.ok()?,
        _ = phase.wait_for(|p| *p != Phase::Opening) => {
            stats.error("not open when the run started");
            return None;
        }
    };
    let opened = match open_stream(identity, channel, &shared.plan).await {
        Ok(opened) => opened,
        Err(kind) => {
            stats.error(kind);
            return None;
        }
    };
    if *phase.borrow() != Phase::Opening {
        stats.error("not open when the run started");
        return None;
    }
    Some(opened)
}

/// Opens a stream: `Hello` is queued first, then the call waits for the collector's
/// response headers, which it sends once it accepted the `Hello`.
async fn open_stream(identity: &Identity, channel: Channel, plan: &Plan) -> Result<Opened, String> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tx.try_send(Outgoing::Message(Box::new(report::hello(
        identity,
        plan.interval(),
    ))))
    .map_err(|_| "open: queue".to_owned())?;
    let call = codec::stream(channel, ReceiverStream::new(rx));
    match tokio::time::timeout(plan.open_timeout, call).await {
        Err(_) => Err("open: timeout".to_owned()),
        Ok(Err(status)) => Err(format!("open: {:?}", status.code())),
        Ok(Ok(response)) => Ok((tx, response.into_inner())),
    }
}

struct Agent<'a> {
    index: usize,
    plan: &'a Plan,
    stats: &'a Stats,
    tx: mpsc::Sender<Outgoing>,
    inbound: Streaming<pb::CollectorMessage>,
    rng: SmallRng,
    reports: Reports,
    /// The last sequence number sent.
    seq: u64,
    /// When each report sent and not yet acknowledged was sent, oldest first: the
    /// last is `seq`, and they are consecutive.
    outstanding: VecDeque<Instant>,
    latencies: Vec<Duration>,
    /// Those of reports sent during the warm-up (`--warm-up`).
    warm_up_latencies: Vec<Duration>,
}

impl Agent<'_> {
    /// Reopens the lost stream after the agent's backoff, on a connection of its own,
    /// and sends the un-acknowledged reports again; false when the run stopped first.
    async fn reconnect(&mut self, identity: &Identity, shared: &Shared) -> bool {
        let lost = Instant::now();
        let mut backoff = Backoff::new(BackoffPolicy::GRPC, SmallRng::from_rng(&mut self.rng));
        let mut phase = shared.phase.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = phase.wait_for(|p| *p >= Phase::Stopping) => return false,
            }
            Stats::add(&self.stats.reconnect_attempts, 1);
            let channel = shared.endpoint.connect_lazy();
            let Ok((tx, inbound)) = open_stream(identity, channel, self.plan).await else {
                continue;
            };
            self.stats.reconnected(Reconnect {
                at: std::time::SystemTime::now(),
                after: lost.elapsed(),
            });
            self.tx = tx;
            self.inbound = inbound;
            if self.resend().await.is_ok() {
                return true;
            }
            Stats::add(&self.stats.lost_streams, 1);
        }
    }

    /// Sends every un-acknowledged report again, in order (their latency counts from
    /// now: the wait before is the outage's, not the collector's).
    async fn resend(&mut self) -> Result<(), ()> {
        let now = Instant::now();
        let first = self.first_outstanding();
        for (seq, sent) in (first..).zip(&mut self.outstanding) {
            let report = self.reports.next(seq, now.into_std(), &mut self.rng);
            self.tx
                .send(Outgoing::Report(report))
                .await
                .map_err(|_| ())?;
            *sent = now;
            Stats::add(&self.stats.resent, 1);
        }
        Ok(())
    }

    /// Waits for the run, sends reports until it stops, then waits for the acks.
    async fn follow(&mut self, mut phase: watch::Receiver<Phase>) -> Result<(), String> {
        loop {
            tokio::select! {
                changed = phase.wait_for(|p| *p != Phase::Opening) => {
                    changed.map_err(|_| "the run ended".to_owned())?;
                    break;
                }
                message = self.inbound.message() => self.received(message)?,
            }
        }
        if *phase.borrow() == Phase::Running {
            self.send_until_stopped(&mut phase).await?;
        }
        self.drain().await
    }

    async fn send_until_stopped(
        &mut self,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<(), String> {
        let flood = self.plan.period.is_none();
        let period = self.plan.interval();
        // A random phase in the period, so a fleet's reports do not arrive in bursts.
        let offset = period.mul_f64(self.rng.random_range(0.0..1.0));
        let mut ticker = tokio::time::interval_at(Instant::now() + offset, period);
        // An overloaded generator sends fewer reports rather than bursts of late ones.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut due = false;
        let tx = self.tx.clone();
        loop {
            let room = self.outstanding.len() < self.plan.window;
            tokio::select! {
                biased;
                _ = phase.wait_for(|p| *p >= Phase::Stopping) => return Ok(()),
                message = self.inbound.message() => self.received(message)?,
                _ = ticker.tick(), if !flood && !due => due = true,
                permit = tx.reserve(), if (flood || due) && room => {
                    let permit = permit.map_err(|_| "request stream closed".to_owned())?;
                    self.seq += 1;
                    let now = Instant::now();
                    let report = self.reports.next(self.seq, now.into_std(), &mut self.rng);
                    permit.send(Outgoing::Report(report));
                    self.outstanding.push_back(now);
                    Stats::add(&self.stats.sent, 1);
                    due = false;
                }
            }
        }
    }

    /// Waits (bounded) until every sent report is acknowledged.
    async fn drain(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.plan.drain;
        while !self.outstanding.is_empty() {
            match tokio::time::timeout_at(deadline, self.inbound.message()).await {
                Ok(message) => self.received(message)?,
                Err(_) => return Err("reports unacknowledged after the drain time".to_owned()),
            }
        }
        Ok(())
    }

    /// Handles one message from the collector.
    fn received(
        &mut self,
        message: Result<Option<pb::CollectorMessage>, tonic::Status>,
    ) -> Result<(), String> {
        let message = message
            .map_err(|status| format!("stream: {:?}", status.code()))?
            .ok_or_else(|| "stream closed by the collector".to_owned())?;
        if let Some(pb::collector_message::Kind::Ack(ack)) = message.kind {
            Stats::add(&self.stats.acks, 1);
            let now = Instant::now();
            let mut covered = 0;
            while let Some(&sent) = self.outstanding.front() {
                if self.first_outstanding() > ack.seq {
                    break;
                }
                self.outstanding.pop_front();
                let batch = if self.stats.warming_up(sent) {
                    &mut self.warm_up_latencies
                } else {
                    &mut self.latencies
                };
                let latency = now.duration_since(sent);
                self.stats.slow.record(now, latency);
                batch.push(latency);
                covered += 1;
                if batch.len() >= LATENCY_BATCH {
                    self.flush();
                }
            }
            Stats::add(&self.stats.acked, covered);
        }
        Ok(())
    }

    /// The sequence number of the oldest un-acknowledged report.
    fn first_outstanding(&self) -> u64 {
        self.seq + 1 - self.outstanding.len() as u64
    }

    fn flush(&mut self) {
        self.stats.record(self.index, &self.latencies, false);
        self.stats.record(self.index, &self.warm_up_latencies, true);
        self.latencies.clear();
        self.warm_up_latencies.clear();
    }
}
