//! The gRPC edge, `rally.v1.Ingest/Stream`: authentication, validation, limits,
//! de-duplication and acknowledgements.
//!
//! One task per stream reads the agent's messages, checks each one ([`validate`]),
//! folds it into the [`Fleet`] and then acknowledges it. The reply stream carries the
//! latest acknowledgement through a `watch` channel, so acks coalesce when the agent
//! sends faster than it reads, and memory per stream stays constant. Anything wrong
//! ends *that* stream with a clear status, a `warn` log and a count in
//! `rally_collector_reports_rejected_total{reason}`; other streams never notice.
//! Nothing on this path waits on disk, actuators or other streams.

pub mod auth;
pub mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::Stream;
use rally_proto::v1::agent_message::Kind;
use rally_proto::v1::ingest_server::{Ingest, IngestServer};
use rally_proto::v1::{self, AgentMessage, CollectorMessage, collector_message};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tonic::codec::CompressionEncoding;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use self::auth::{AuthError, Authenticator, Identity};
use crate::clock::Clock;
use crate::config::IngestConfig;
use crate::fleet::{Fleet, HelloError, Outcome, Session};
use crate::listener::{Busy, Connections, ListenerStats};
use crate::wake::Wake;

/// Largest message the collector sends (an `Ack` is a few bytes).
const MAX_ENCODING_BYTES: usize = 64 * 1024;

/// Why a message or stream was rejected: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Bytes that do not decode as an `AgentMessage`.
    Malformed,
    /// A message above `ingest.max_message_bytes`.
    Oversized,
    /// A stream that did not start with `Hello` (or not in time).
    NoHello,
    /// No or an unknown token or certificate, or a token sent in clear.
    Unauthenticated,
    /// A token or certificate used for another VM.
    Forbidden,
    /// A VM no group names, with `unknown_vms = "reject"`.
    UnknownVm,
    /// A message that decodes but breaks a rule (ratio outside 0..1, seq 0, ...).
    Invalid,
    /// Refused for lack of room: `max_streams` or `max_vms`.
    Overloaded,
    /// One VM already has `max_streams_per_vm` streams open.
    VmStreams,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 9] = [
        Reason::Malformed,
        Reason::Oversized,
        Reason::NoHello,
        Reason::Unauthenticated,
        Reason::Forbidden,
        Reason::UnknownVm,
        Reason::Invalid,
        Reason::Overloaded,
        Reason::VmStreams,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Oversized => "oversized",
            Reason::NoHello => "no_hello",
            Reason::Unauthenticated => "unauthenticated",
            Reason::Forbidden => "forbidden",
            Reason::UnknownVm => "unknown_vm",
            Reason::Invalid => "invalid",
            Reason::Overloaded => "overloaded",
            Reason::VmStreams => "vm_streams",
        }
    }
}

/// The ingest path's own counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub(crate) reports: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) rejected: [AtomicU64; Reason::ALL.len()],
    pub(crate) streams_open: AtomicU64,
    pub(crate) streams_accepted: AtomicU64,
    pub(crate) seq_jumps: AtomicU64,
    /// The listeners' connection counters (the edge below the streams).
    pub(crate) listeners: Arc<ListenerStats>,
}

impl IngestStats {
    /// Reports applied to the fleet.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }

    /// Reports that arrived twice and were not applied again.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Sequence numbers skipped within agent runs.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Rejections for `reason`.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    /// Streams past their Hello and still open.
    pub fn streams_open(&self) -> u64 {
        self.streams_open.load(Ordering::Relaxed)
    }

    /// Streams whose Hello was accepted, since start.
    pub fn streams_accepted(&self) -> u64 {
        self.streams_accepted.load(Ordering::Relaxed)
    }

    /// Reports whose sequence number jumped implausibly far: a new baseline.
    pub fn seq_jumps(&self) -> u64 {
        self.seq_jumps.load(Ordering::Relaxed)
    }

    /// The listeners' connection counters.
    pub fn listeners(&self) -> &ListenerStats {
        &self.listeners
    }

    pub(crate) fn reject(&self, reason: Reason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds `n` to a counter that saturates: a peer cannot make it wrap or fall.
fn add_saturating(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

/// Streams open per VM, so that one VM's token cannot take every stream slot.
#[derive(Debug, Default)]
struct VmStreams {
    open: Mutex<HashMap<String, usize>>,
}

impl VmStreams {
    /// A place for one more stream of `vm`, unless it has `max` open.
    fn claim(self: &Arc<Self>, vm: &str, max: usize) -> Option<VmSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(vm.to_owned()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(VmSlot {
            streams: Arc::clone(self),
            vm: vm.to_owned(),
        })
    }
}

/// One stream's place among its VM's `max_streams_per_vm`.
#[derive(Debug)]
struct VmSlot {
    streams: Arc<VmStreams>,
    vm: String,
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.vm) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.vm);
            }
        }
    }
}

/// The `Ingest` service.
#[derive(Debug, Clone)]
pub struct IngestService {
    fleet: Arc<Fleet>,
    clock: Arc<dyn Clock>,
    stats: Arc<IngestStats>,
    /// Replaced by a reload; streams already open keep the identity they proved.
    auth: watch::Receiver<Arc<Authenticator>>,
    streams: Arc<Semaphore>,
    per_vm: Arc<VmStreams>,
    max_streams_per_vm: usize,
    /// The gRPC listener's connections: a stream keeps its connection from idling out.
    connections: Connections,
    hello_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    /// Marks each applied report's VM for the resize engine (never waits).
    wake: Arc<Wake>,
}

impl IngestService {
    /// A service feeding `fleet`, authenticating with the latest value of `auth`;
    /// streams end when `shutdown` turns true.
    pub fn new(
        config: &IngestConfig,
        fleet: Arc<Fleet>,
        clock: Arc<dyn Clock>,
        stats: Arc<IngestStats>,
        auth: watch::Receiver<Arc<Authenticator>>,
        shutdown: watch::Receiver<bool>,
        wake: Arc<Wake>,
    ) -> Self {
        Self {
            fleet,
            clock,
            stats,
            auth,
            streams: Arc::new(Semaphore::new(config.max_streams)),
            per_vm: Arc::default(),
            max_streams_per_vm: config.max_streams_per_vm,
            connections: Connections::default(),
            hello_timeout: config.hello_timeout,
            shutdown,
            wake,
        }
    }

    /// Streams mark their connection in `connections` busy, so it is not closed as idle.
    #[must_use]
    pub fn with_connections(mut self, connections: Connections) -> Self {
        self.connections = connections;
        self
    }

    /// The tonic service with the message size limits applied; agents may send
    /// gzip-compressed messages (the limit applies to the decompressed size).
    pub fn into_server(self, max_message_bytes: usize) -> IngestServer<Self> {
        IngestServer::new(self)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(MAX_ENCODING_BYTES)
    }

    /// A place for one more stream of `vm`, or the `vm_streams` rejection.
    fn claim_vm_slot(&self, vm: &str, peer: Option<SocketAddr>) -> Result<VmSlot, Status> {
        self.per_vm
            .claim(vm, self.max_streams_per_vm)
            .ok_or_else(|| {
                self.rejected(
                    Reason::VmStreams,
                    peer,
                    Some(vm),
                    Status::resource_exhausted(format!(
                        "VM `{vm}` already has {} streams open (ingest.max_streams_per_vm)",
                        self.max_streams_per_vm
                    )),
                )
            })
    }

    fn rejected(
        &self,
        reason: Reason,
        peer: Option<SocketAddr>,
        vm: Option<&str>,
        status: Status,
    ) -> Status {
        self.stats.reject(reason);
        warn!(
            reason = reason.as_str(),
            peer = %display_peer(peer),
            vm = vm.unwrap_or("-"),
            code = ?status.code(),
            error = status.message(),
            "agent message rejected"
        );
        status
    }
}

fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |p| p.to_string())
}

fn ack(seq: u64) -> CollectorMessage {
    CollectorMessage {
        kind: Some(collector_message::Kind::Ack(v1::Ack { seq })),
    }
}

/// Sorts an error from the inbound stream: a rejection (with the status to send) or
/// the connection going away (`None`).
fn classify(status: &Status) -> Option<(Reason, Status)> {
    let message = status.message();
    match status.code() {
        Code::OutOfRange if message.contains("too large") => Some((
            Reason::Oversized,
            Status::resource_exhausted(format!(
                "message too large for this collector (ingest.max_message_bytes): {message}"
            )),
        )),
        Code::Internal
            if message.starts_with("failed to decode") || message.starts_with("protocol error") =>
        {
            Some((
                Reason::Malformed,
                Status::invalid_argument(format!("malformed message: {message}")),
            ))
        }
        _ => None,
    }
}

/// Waits until `shutdown` turns true (or its sender is gone).
async fn shutting_down(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The reply stream: the latest ack whenever it changes, then the final status if
/// the stream task ended with one.
type ReplyStream = Pin<Box<dyn Stream<Item = Result<CollectorMessage, Status>> + Send>>;

fn replies(acks: watch::Receiver<u64>, end: oneshot::Receiver<Status>) -> ReplyStream {
    Box::pin(futures_util::stream::unfold(
        Some((acks, end)),
        |state| async move {
            let (mut acks, mut end) = state?;
            tokio::select! {
                // Pending acks go out before the final status.
                biased;
                changed = acks.changed() => match changed {
                    Ok(()) => {
                        let seq = *acks.borrow_and_update();
                        Some((Ok(ack(seq)), Some((acks, end))))
                    }
                    // The task is done: its final status, if any, ends the stream.
                    Err(_) => end.await.ok().map(|status| (Err(status), None)),
                },
                status = &mut end => status.ok().map(|status| (Err(status), None)),
            }
        },
    ))
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let Ok(permit) = Arc::clone(&self.streams).try_acquire_owned() else {
            return Err(self.rejected(
                Reason::Overloaded,
                peer,
                None,
                Status::resource_exhausted("too many agent streams (ingest.max_streams)"),
            ));
        };
        let connection = auth::Peer {
            addr: peer,
            tls: request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .is_some(),
            certs: request.peer_certs(),
        };
        let identity = self
            .auth
            .borrow()
            .identify(request.metadata(), &connection)
            .map_err(|err: AuthError| {
                self.rejected(
                    Reason::Unauthenticated,
                    peer,
                    None,
                    Status::unauthenticated(err.to_string()),
                )
            })?;
        // A token names its VM: its place is claimed now, before a Hello can hold a
        // stream slot for `hello_timeout`.
        let vm_slot = match &identity {
            Identity::Vm(vm) => Some(self.claim_vm_slot(vm, peer)?),
            Identity::Anyone => None,
        };
        let busy = peer.and_then(|peer| self.connections.busy(peer));
        // Answer at once and read the Hello in the stream's task, so that an agent that
        // waits for the response before sending its Hello is served too.
        let (ack_tx, ack_rx) = watch::channel(0);
        let (end_tx, end_rx) = oneshot::channel();
        let stream = StreamTask {
            _permit: permit,
            vm_slot,
            _busy: busy,
            service: self.clone(),
            inbound: request.into_inner(),
            peer,
            identity,
            acks: ack_tx,
        };
        tokio::spawn(async move {
            if let Err(status) = stream.run().await {
                let _ = end_tx.send(status);
            }
        });
        Ok(Response::new(replies(ack_rx, end_rx)))
    }
}

/// One agent stream, from its Hello to its end.
struct StreamTask {
    /// Holds a place under `max_streams` until the task ends. Declared first so that
    /// it is released before `acks` closes the reply stream: an agent that sees its
    /// stream end can reconnect at once.
    _permit: OwnedSemaphorePermit,
    /// The stream's place among its VM's streams (claimed at the Hello without a token).
    vm_slot: Option<VmSlot>,
    /// Keeps the connection from being closed as idle.
    _busy: Option<Busy>,
    service: IngestService,
    inbound: Streaming<AgentMessage>,
    peer: Option<SocketAddr>,
    identity: Identity,
    acks: watch::Sender<u64>,
}

/// Decrements the open-stream gauge however the stream ends.
struct OpenStream(Arc<IngestStats>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamTask {
    async fn run(mut self) -> Result<(), Status> {
        let service = self.service.clone();
        let peer = self.peer;
        let first = tokio::select! {
            () = shutting_down(service.shutdown.clone()) => {
                return Err(Status::unavailable("collector is shutting down"));
            }
            first = tokio::time::timeout(service.hello_timeout, self.inbound.message()) => first,
        };
        let hello = match first {
            Err(_elapsed) => {
                return Err(service.rejected(
                    Reason::NoHello,
                    peer,
                    None,
                    Status::deadline_exceeded(format!(
                        "no Hello within {:?} (ingest.hello_timeout)",
                        service.hello_timeout
                    )),
                ));
            }
            Ok(Err(status)) => {
                return match classify(&status) {
                    Some((reason, reply)) => Err(service.rejected(reason, peer, None, reply)),
                    None => {
                        debug!(peer = %display_peer(peer), error = %status, "stream ended before Hello");
                        Ok(())
                    }
                };
            }
            Ok(Ok(None)) => {
                debug!(peer = %display_peer(peer), "stream closed before Hello");
                return Ok(());
            }
            Ok(Ok(Some(AgentMessage {
                kind: Some(Kind::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(service.rejected(
                    Reason::NoHello,
                    peer,
                    None,
                    Status::failed_precondition("first message must be Hello"),
                ));
            }
        };
        let hello = validate::hello(hello).map_err(|err| {
            service.rejected(
                Reason::Invalid,
                peer,
                None,
                Status::invalid_argument(format!("invalid Hello: {err}")),
            )
        })?;
        let vm = hello.vm_id.clone();
        if let Identity::Vm(allowed) = &self.identity
            && allowed != &vm
        {
            return Err(service.rejected(
                Reason::Forbidden,
                peer,
                Some(&vm),
                Status::permission_denied(format!(
                    "this agent's token or certificate may only report for VM `{allowed}`, not `{vm}`"
                )),
            ));
        }
        if self.vm_slot.is_none() {
            self.vm_slot = Some(service.claim_vm_slot(&vm, peer)?);
        }
        let session =
            service
                .fleet
                .hello(&hello, service.clock.now())
                .map_err(|err| match err {
                    HelloError::UnknownVm(_) => service.rejected(
                        Reason::UnknownVm,
                        peer,
                        Some(&vm),
                        Status::permission_denied(err.to_string()),
                    ),
                    HelloError::Full(_) => service.rejected(
                        Reason::Overloaded,
                        peer,
                        Some(&vm),
                        Status::resource_exhausted(err.to_string()),
                    ),
                })?;
        service.stats.streams_open.fetch_add(1, Ordering::Relaxed);
        service
            .stats
            .streams_accepted
            .fetch_add(1, Ordering::Relaxed);
        let _open = OpenStream(Arc::clone(&service.stats));
        info!(
            vm = %vm,
            run = hello.run.run_id,
            peer = %display_peer(peer),
            agent_version = %hello.agent_version,
            watermark = session.watermark(),
            "agent connected"
        );
        self.acks.send_replace(session.watermark());
        let result = self.reports(&vm, hello.run.run_id, &session).await;
        info!(vm = %vm, run = hello.run.run_id, "agent stream ended");
        result
    }

    /// Reads, checks, applies and acknowledges reports until the stream ends.
    async fn reports(&mut self, vm: &str, run_id: u64, session: &Session) -> Result<(), Status> {
        let service = self.service.clone();
        let peer = self.peer;
        loop {
            let message = tokio::select! {
                biased;
                () = shutting_down(service.shutdown.clone()) => {
                    return Err(Status::unavailable("collector is shutting down"));
                }
                // The agent stopped reading its replies: it is gone.
                () = self.acks.closed() => return Ok(()),
                message = self.inbound.message() => message,
            };
            let report = match message {
                Ok(Some(AgentMessage {
                    kind: Some(Kind::Report(report)),
                })) => report,
                Ok(Some(AgentMessage {
                    kind: Some(Kind::Hello(_)),
                })) => {
                    return Err(service.rejected(
                        Reason::Invalid,
                        peer,
                        Some(vm),
                        Status::invalid_argument("Hello may only be the first message"),
                    ));
                }
                Ok(Some(AgentMessage { kind: None })) => {
                    return Err(service.rejected(
                        Reason::Invalid,
                        peer,
                        Some(vm),
                        Status::invalid_argument("empty AgentMessage"),
                    ));
                }
                Ok(None) => return Ok(()),
                Err(status) => {
                    return match classify(&status) {
                        Some((reason, reply)) => {
                            Err(service.rejected(reason, peer, Some(vm), reply))
                        }
                        None => {
                            debug!(vm = %vm, error = %status, "agent stream broke");
                            Ok(())
                        }
                    };
                }
            };
            let report = validate::report(report).map_err(|err| {
                service.rejected(
                    Reason::Invalid,
                    peer,
                    Some(vm),
                    Status::invalid_argument(format!("invalid Report: {err}")),
                )
            })?;
            let seq = report.seq;
            let applied = session.apply(report, service.clock.now());
            match applied.outcome {
                Outcome::Applied { lost } => {
                    service.stats.reports.fetch_add(1, Ordering::Relaxed);
                    if lost > 0 {
                        add_saturating(&service.stats.lost, lost);
                        warn!(vm = %vm, run = run_id, seq, lost, "reports lost: sequence numbers skipped");
                    }
                    tracing::debug!(vm = %vm, run = run_id, seq, "report accepted");
                    service.wake.reported(vm);
                }
                Outcome::Duplicate => {
                    service.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    debug!(vm = %vm, run = run_id, seq, "duplicate report");
                }
                Outcome::Rebased { gap } => {
                    service.stats.reports.fetch_add(1, Ordering::Relaxed);
                    service.stats.seq_jumps.fetch_add(1, Ordering::Relaxed);
                    warn!(vm = %vm, run = run_id, seq, gap, "sequence number jumped implausibly far: taken as a new baseline, nothing counted lost");
                }
            }
            // Sent only now that the report is in the fleet.
            self.acks.send_replace(applied.ack);
        }
    }
}
