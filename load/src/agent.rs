//! One simulated agent: opens a `rally.v1.Ingest/Stream` as a real agent does
//! (`Hello` first), waits for the run to start, sends reports at its rate or as fast
//! as its window of un-acknowledged reports allows, reads the acks and records how
//! long each report waited for one.
//!
//! Unlike the real agent it never reconnects: a stream that fails is counted as an
//! error and the agent stops, so a run's figures are about one set of streams.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rally_proto::v1 as pb;
use rally_proto::v1::ingest_client::IngestClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::report;
use crate::stats::Stats;

/// Messages queued between an agent and its HTTP/2 stream. Small: in a flood,
/// back-pressure must reach the agent rather than pile up here.
const QUEUE: usize = 8;
/// Latencies are handed to the shared histogram in batches of this many.
const LATENCY_BATCH: usize = 64;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Streams are being opened; no reports yet.
    Opening,
    /// Reports flow.
    Running,
    /// No more reports: wait for the outstanding acks, then close.
    Stopping,
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
}

/// Runs simulated agent `index` on `channel` until the run stops.
pub async fn run(index: usize, channel: Channel, shared: Shared) {
    let stats = Arc::clone(&shared.stats);
    let opened = open(index, channel, &shared).await;
    Stats::add(&stats.settled, 1);
    let Some((tx, inbound, rng)) = opened else {
        return;
    };
    Stats::add(&stats.opened, 1);
    let mut agent = Agent {
        index,
        plan: &shared.plan,
        stats: &stats,
        tx,
        inbound,
        rng,
        seq: 0,
        outstanding: VecDeque::with_capacity(shared.plan.window),
        latencies: Vec::with_capacity(LATENCY_BATCH),
    };
    if let Err(kind) = agent.follow(shared.phase).await {
        stats.error(kind);
    }
    agent.flush();
    Stats::add(&stats.unacked, agent.outstanding.len() as u64);
}

type Opened = (
    mpsc::Sender<pb::AgentMessage>,
    Streaming<pb::CollectorMessage>,
    SmallRng,
);

/// Opens the stream: `Hello` is queued first, then the call waits for the
/// collector's response headers, which it sends once it accepted the `Hello`.
async fn open(index: usize, channel: Channel, shared: &Shared) -> Option<Opened> {
    let stats = &shared.stats;
    let mut phase = shared.phase.clone();
    let _permit = tokio::select! {
        permit = Arc::clone(&shared.opening).acquire_owned() => permit.ok()?,
        _ = phase.wait_for(|p| *p != Phase::Opening) => {
            stats.error("not open when the run started");
            return None;
        }
    };
    let mut rng = SmallRng::from_os_rng();
    let identity = report::identity(&shared.plan.vm_prefix, index, &mut rng);
    // A flooding agent announces the shortest interval the collector accepts.
    let interval = shared.plan.period.unwrap_or(Duration::from_secs(1));
    let (tx, rx) = mpsc::channel(QUEUE);
    tx.try_send(report::hello(&identity, interval)).ok()?;
    let mut client = IngestClient::new(channel);
    let call = client.stream(ReceiverStream::new(rx));
    let inbound = match tokio::time::timeout(shared.plan.open_timeout, call).await {
        Err(_) => {
            stats.error("open: timeout");
            return None;
        }
        Ok(Err(status)) => {
            stats.error(format!("open: {:?}", status.code()));
            return None;
        }
        Ok(Ok(response)) => response.into_inner(),
    };
    if *phase.borrow() != Phase::Opening {
        stats.error("not open when the run started");
        return None;
    }
    Some((tx, inbound, rng))
}

struct Agent<'a> {
    index: usize,
    plan: &'a Plan,
    stats: &'a Stats,
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::CollectorMessage>,
    rng: SmallRng,
    seq: u64,
    /// Sent and not yet acknowledged: sequence number and when it was sent.
    outstanding: VecDeque<(u64, Instant)>,
    latencies: Vec<Duration>,
}

impl Agent<'_> {
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
        let period = self.plan.period.unwrap_or(Duration::from_secs(1));
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
                _ = phase.wait_for(|p| *p == Phase::Stopping) => return Ok(()),
                message = self.inbound.message() => self.received(message)?,
                _ = ticker.tick(), if !flood && !due => due = true,
                permit = tx.reserve(), if (flood || due) && room => {
                    let permit = permit.map_err(|_| "request stream closed".to_owned())?;
                    self.seq += 1;
                    permit.send(report::report(self.seq, period, &mut self.rng));
                    self.outstanding.push_back((self.seq, Instant::now()));
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
            while let Some(&(seq, sent)) = self.outstanding.front() {
                if seq > ack.seq {
                    break;
                }
                self.outstanding.pop_front();
                self.latencies.push(now.duration_since(sent));
                covered += 1;
                if self.latencies.len() >= LATENCY_BATCH {
                    self.flush();
                }
            }
            Stats::add(&self.stats.acked, covered);
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.stats.record(self.index, &self.latencies);
        self.latencies.clear();
    }
}
