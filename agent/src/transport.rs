//! The stream to one collector: connect, `Hello`, replay, follow, reconnect.
//!
//! Each collector has its own [`Link`]: a buffer of the reports it has not acknowledged
//! and a task that keeps one `rally.v1.Ingest/Stream` open. The task sends `Hello`,
//! then every buffered report in sequence order, then each new one as the sampler adds
//! it; acknowledgements trim the buffer. When the stream fails, the task waits as gRPC's
//! connection backoff says and starts over, replaying from the oldest un-acknowledged
//! report. The sampler only ever appends to the buffer and bumps a watch: it never waits
//! on this task or on the network.
//!
//! `https://` means TLS, always (the `[tls]` files, read at each connection);
//! `http://` to another machine works but warns at every connection, since the reports
//! and the token would cross the network in clear.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream;
use prost::bytes::Bytes;
use rally_daemon::secret::{self, SecretError};
use rally_proto::v1 as pb;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::watch;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::buffer::Buffer;
use crate::config::{MAX_INTERVAL, MIN_INTERVAL, TlsConfig};
use crate::lowat::{Mark, MarkedConnector};
use crate::sample::VmSize;
use crate::status::{CollectorStatus, LinkState};
use crate::tls::{self, ClientTls, TlsError};
use crate::wire::{self, Identity};

/// How long establishing a TCP connection to a collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the collector may take to answer the stream's request with its headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/2 ping goes out when nothing was received for this long, so a dead
/// collector (or a dead NAT entry) is noticed even if reports stop. While acks flow
/// no ping is sent, but hyper's timer still wakes the agent at this period, hence a
/// minute rather than seconds.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a ping may go unanswered before the connection is considered dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A collector that keeps the connection alive but stops acknowledging is treated as
/// failed once a sent report stays un-acknowledged for between one and two of these
/// (checked on a timer of its own: waking the stream at every sample to look would
/// cost more than one wake-up a minute).
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// A failing collector is logged at `warn` on its first failure and then at most this
/// often (backoff already spaces the attempts out).
const WARN_EVERY: Duration = Duration::from_secs(600);

/// What the sampling loop and every link share.
#[derive(Debug)]
pub struct Shared {
    /// The agent's identity for `Hello` (its labels change on a reload).
    pub identity: Mutex<Identity>,
    /// Where the bearer token is read from at each connection (so it can be rotated).
    pub token_file: Mutex<Option<PathBuf>>,
    /// The `[tls]` files, read at each `https://` connection (so they can be renewed).
    pub tls: Mutex<TlsConfig>,
    /// The sampling interval; a collector's `Settings` change it.
    pub interval: watch::Sender<Duration>,
    /// The size from the latest sample, for `Hello`.
    pub size: Mutex<Option<VmSize>>,
    /// When the latest sample was taken (Unix milliseconds, 0: none yet), for
    /// `rally-agent status`.
    pub last_sample_ms: AtomicU64,
}

/// One collector: its address and its buffer of un-acknowledged reports.
#[derive(Debug)]
pub struct Link {
    /// The collector's gRPC address.
    pub address: String,
    buffer: Mutex<Buffer>,
    /// The highest sequence number sent on the current stream.
    sent: AtomicU64,
    /// Streams tried after a failed one since the agent started (sent in reports).
    reconnects: AtomicU64,
    /// Open or not, the latest acknowledgement and failure, for `rally-agent status`.
    state: LinkState,
    /// The current connection's socket, whose acknowledgements wait for the sampling
    /// tick (see [`crate::lowat`]).
    mark: Arc<Mark>,
}

impl Link {
    /// A link with an empty buffer of `capacity` reports.
    pub fn new(address: String, capacity: usize) -> Self {
        Self {
            address,
            buffer: Mutex::new(Buffer::new(capacity)),
            sent: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            state: LinkState::default(),
            mark: Arc::default(),
        }
    }

    /// The current connection's receive low-water mark.
    pub fn mark(&self) -> &Mark {
        &self.mark
    }

    /// This collector as `rally-agent status` shows it.
    pub fn status(&self) -> CollectorStatus {
        let buffer = self.buffer();
        CollectorStatus {
            buffered: buffer.len() as u64,
            dropped_total: buffer.dropped_total(),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            ..self.state.collector(&self.address)
        }
    }

    /// The buffer. Its lock is only ever held for a push, an ack or a lookup, never
    /// across an await.
    pub fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It breaks the secret-file rule (missing, empty, several lines...).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// It holds characters an HTTP header cannot carry.
    #[error("token_file = \"{}\": the token must be ASCII to be sent in a header", path.display())]
    NotAscii {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the `token_file` (the secret-file rule of both daemons) into an
/// `authorization` header value.
pub fn read_token(path: &Path) -> Result<AsciiMetadataValue, TokenError> {
    let token = secret::read("token_file", path)?;
    let not_ascii = || TokenError::NotAscii {
        path: path.to_owned(),
    };
    // The secret rule already refuses control characters; a header also needs ASCII.
    if !token.expose().is_ascii() {
        return Err(not_ascii());
    }
    MetadataValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| not_ascii())
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("invalid address: {0}")]
    Address(#[source] tonic::transport::Error),
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// A TLS failure, explained.
    #[error("TLS: {0}")]
    Handshake(String),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("the collector closed the stream")]
    Closed,
    #[error("no acknowledgement for over {}s", ACK_TIMEOUT.as_secs())]
    AckTimeout,
}

/// Keeps a stream to `link`'s collector open for as long as the future is polled.
pub async fn maintain(link: Arc<Link>, shared: Arc<Shared>, seqs: watch::Receiver<u64>) {
    let mut backoff = Backoff::new(BackoffPolicy::GRPC, SmallRng::from_os_rng());
    let mut failures = 0u64;
    let mut last_warn: Option<Instant> = None;
    loop {
        let mut healthy = false;
        let Err(error) =
            stream_once(&link, &shared, seqs.clone(), &mut backoff, &mut healthy).await;
        link.state.failed(&error);
        if healthy {
            // The stream worked (it got acknowledgements): this is a new outage.
            failures = 0;
            last_warn = None;
        }
        failures += 1;
        let delay = backoff.next_delay();
        if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                collector = %link.address,
                %error,
                retry_in = ?delay,
                consecutive_failures = failures,
                buffered = link.buffer().len(),
                "stream to collector failed"
            );
            last_warn = Some(Instant::now());
        } else {
            tracing::debug!(collector = %link.address, %error, retry_in = ?delay, "stream to collector failed");
        }
        tokio::time::sleep(delay).await;
        link.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// One stream, from connecting to its end (which is always an error: the agent never
/// closes a stream on its own except by dropping this future).
async fn stream_once(
    link: &Arc<Link>,
    shared: &Shared,
    seqs: watch::Receiver<u64>,
    backoff: &mut Backoff<SmallRng>,
    healthy: &mut bool,
) -> Result<std::convert::Infallible, StreamError> {
    // Re-read at each connection, so a rotated token is picked up without a restart.
    let token_file = shared
        .token_file
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let token = token_file.as_deref().map(read_token).transpose()?;
    let tls = if link.address.starts_with("https://") {
        let config = shared
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let tls = ClientTls::load(&config)?;
        tls.check_dates(std::time::SystemTime::now())?;
        Some(tls)
    } else {
        if !tls::is_loopback(&link.address) {
            tracing::warn!(
                collector = %link.address,
                "connecting WITHOUT TLS: reports{} cross the network in clear; use https:// (see docs/security.md)",
                if token.is_some() { " and this agent's token" } else { "" }
            );
        }
        None
    };
    // Whatever ends this stream, the socket's duplicate must not outlive it.
    let _detach = Detach(&link.mark);
    let channel = connect(&link.address, tls.as_ref(), &link.mark).await?;

    let size = *shared.size.lock().unwrap_or_else(PoisonError::into_inner);
    let hello = wire::hello(
        &shared
            .identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        size,
        *shared.interval.borrow(),
    );
    link.sent.store(0, Ordering::Relaxed);
    let mut request = tonic::Request::new(outbound(hello, Arc::clone(link), seqs));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token);
    }

    let presents_certificate = tls.as_ref().is_some_and(ClientTls::has_identity);
    // Reports go out as encoded when sampled ([`wire::report_message`]): never
    // decoded and encoded again.
    let mut inbound = rally_proto::encoded::stream(channel, request)
        .await
        .map_err(|status| match rpc_error(status) {
            // With TLS 1.3 the collector checks the agent's certificate after the
            // client's side of the handshake is done: a refusal reaches the agent as a
            // connection closed under its first call, not as a TLS error.
            StreamError::Rpc(status) if presents_certificate && status.source().is_some() => {
                StreamError::Handshake(format!(
                    "the collector closed the connection right after the TLS handshake: it most likely refused this agent's certificate (expired, or not signed by its tls.client_ca_file); the collector's log says why ({})",
                    status.message()
                ))
            }
            other => other,
        })?
        .into_inner();
    tracing::info!(collector = %link.address, buffered = link.buffer().len(), "stream to collector open");
    link.state.opened();

    let mut acked = 0u64;
    let mut watch = AckWatch::default();
    let mut checks =
        tokio::time::interval_at(tokio::time::Instant::now() + ACK_TIMEOUT, ACK_TIMEOUT);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message.map_err(rpc_error)? else {
                    return Err(StreamError::Closed);
                };
                match message.kind {
                    Some(pb::collector_message::Kind::Ack(ack)) => {
                        // Never forget what this stream has not sent yet, whatever the
                        // collector claims.
                        let seq = ack.seq.min(link.sent.load(Ordering::Relaxed));
                        link.buffer().ack(seq);
                        link.state.acked(seq);
                        acked = acked.max(seq);
                        backoff.reset();
                        *healthy = true;
                    }
                    Some(pb::collector_message::Kind::Settings(settings)) => {
                        apply_settings(&link.address, &shared.interval, &settings);
                    }
                    None => {}
                }
            }
            _ = checks.tick() => {
                if watch.stalled(link.sent.load(Ordering::Relaxed), acked) {
                    return Err(StreamError::AckTimeout);
                }
            }
        }
    }
}

/// A failed call, as a TLS failure when that is what it was (tonic says `Unknown`).
fn rpc_error(status: tonic::Status) -> StreamError {
    match tls::explain(&status) {
        Some(why) => StreamError::Handshake(why),
        None => StreamError::Rpc(status),
    }
}

/// Forgets the link's socket when a stream ends.
struct Detach<'a>(&'a Mark);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.0.detach();
    }
}

async fn connect(
    address: &str,
    tls: Option<&ClientTls>,
    mark: &Arc<Mark>,
) -> Result<Channel, StreamError> {
    let mut endpoint = Endpoint::from_shared(address.to_owned()).map_err(StreamError::Address)?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.client_config())
            .map_err(StreamError::Address)?;
    }
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    endpoint
        .connect_with_connector(MarkedConnector::new(Arc::clone(mark)))
        .await
        .map_err(|error| match tls::explain(&error) {
            Some(why) => StreamError::Handshake(why),
            None => StreamError::Connect(error),
        })
}

/// The messages of one stream: `Hello`, then the buffered reports in order, then new
/// ones as the sampler adds them. It ends when the sampler is gone.
fn outbound(
    hello: pb::AgentMessage,
    link: Arc<Link>,
    seqs: watch::Receiver<u64>,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    let reports = stream::unfold(
        (link, seqs, 0u64),
        |(link, mut seqs, mut cursor)| async move {
            loop {
                // Mark the latest sequence seen *before* looking, so a report added after
                // the look wakes `changed` below.
                seqs.borrow_and_update();
                let next = {
                    let buffer = link.buffer();
                    let health = wire::LinkHealth {
                        buffered: buffer.len() as u64,
                        reconnects: link.reconnects.load(Ordering::Relaxed),
                    };
                    buffer
                        .next_after(cursor)
                        .map(|e| (e.seq, wire::report_message(e, health)))
                };
                match next {
                    Some((seq, message)) => {
                        cursor = seq;
                        link.sent.fetch_max(seq, Ordering::Relaxed);
                        return Some((message, (link, seqs, cursor)));
                    }
                    None => seqs.changed().await.ok()?,
                }
            }
        },
    );
    stream::once(std::future::ready(wire::encode_message(&hello))).chain(reports)
}

/// Applies a collector's `Settings` (0 = keep); out-of-range intervals are clamped.
fn apply_settings(address: &str, interval: &watch::Sender<Duration>, settings: &pb::Settings) {
    if settings.interval_ms == 0 {
        return;
    }
    let wanted =
        Duration::from_millis(u64::from(settings.interval_ms)).clamp(MIN_INTERVAL, MAX_INTERVAL);
    let changed = interval.send_if_modified(|current| {
        let changed = *current != wanted;
        *current = wanted;
        changed
    });
    if changed {
        tracing::info!(collector = %address, interval = ?wanted, "sampling interval set by the collector");
    }
}

/// Detects a collector that stopped acknowledging: checked about every `ACK_TIMEOUT`,
/// it reports a stall when a report that was outstanding at the previous check is still
/// not acknowledged.
#[derive(Debug, Default)]
struct AckWatch {
    outstanding_at_last_check: Option<u64>,
}

impl AckWatch {
    fn stalled(&mut self, sent: u64, acked: u64) -> bool {
        if self.outstanding_at_last_check.is_some_and(|s| acked < s) {
            return true;
        }
        self.outstanding_at_last_check = (sent > acked).then_some(sent);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_watch_needs_a_report_outstanding_across_a_whole_period() {
        let mut w = AckWatch::default();
        assert!(!w.stalled(0, 0), "nothing sent");
        assert!(!w.stalled(5, 5), "everything acked");
        assert!(!w.stalled(6, 5), "6 just went out");
        assert!(w.stalled(7, 5), "6 was out a whole period");
    }

    #[test]
    fn ack_watch_is_satisfied_by_progress_up_to_the_outstanding_report() {
        let mut w = AckWatch::default();
        assert!(!w.stalled(6, 5));
        assert!(!w.stalled(8, 6), "6 acked; 7 and 8 just went out");
        assert!(!w.stalled(8, 8));
        assert!(!w.stalled(8, 8));
    }

    #[test]
    fn settings_change_the_interval_within_bounds() {
        let (tx, rx) = watch::channel(Duration::from_secs(5));
        apply_settings("c", &tx, &pb::Settings { interval_ms: 0 });
        assert_eq!(*rx.borrow(), Duration::from_secs(5));
        apply_settings(
            "c",
            &tx,
            &pb::Settings {
                interval_ms: 10_000,
            },
        );
        assert_eq!(*rx.borrow(), Duration::from_secs(10));
        apply_settings("c", &tx, &pb::Settings { interval_ms: 1 });
        assert_eq!(*rx.borrow(), MIN_INTERVAL);
        apply_settings(
            "c",
            &tx,
            &pb::Settings {
                interval_ms: u32::MAX,
            },
        );
        assert_eq!(*rx.borrow(), MAX_INTERVAL);
    }

    #[test]
    fn token_file_becomes_a_bearer_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-token\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "Bearer s3cr3t-token");
        std::fs::write(&path, "\n").unwrap();
        let err = read_token(&path).unwrap_err().to_string();
        assert!(err.starts_with("token_file = \""), "{err}");
        assert!(err.contains("empty"), "{err}");
        std::fs::write(&path, "two\nlines").unwrap();
        assert!(matches!(read_token(&path), Err(TokenError::Secret(_))));
        std::fs::write(&path, "jeton-\u{e9}t\u{e9}").unwrap();
        assert!(matches!(
            read_token(&path),
            Err(TokenError::NotAscii { .. })
        ));
        assert!(matches!(
            read_token(&dir.path().join("missing")),
            Err(TokenError::Secret(_))
        ));
    }

    #[tokio::test]
    async fn outbound_sends_hello_then_buffered_reports_then_new_ones() {
        let link = Arc::new(Link::new("http://127.0.0.1:1".into(), 10));
        let sample = crate::sample::Sample {
            timestamp_ms: 1,
            interval_ms: 0,
            size: None,
            cpu: None,
            cores: Vec::new(),
            load: None,
            memory: None,
            pressure: None,
            net: Vec::new(),
            disks: Vec::new(),
            filesystems: Arc::default(),
            sources: Vec::new(),
        };
        let mut encoder = wire::ReportEncoder::default();
        for seq in 1..=2 {
            link.buffer().push(seq, encoder.encode(seq, &sample));
        }
        let (tx, rx) = watch::channel(2u64);
        let hello = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(pb::Hello::default())),
        };
        let mut out = Box::pin(
            outbound(hello, Arc::clone(&link), rx)
                .map(|bytes| prost::Message::decode(bytes).expect("a valid AgentMessage")),
        );
        let seq_of = |m: Option<pb::AgentMessage>| match m.and_then(|m| m.kind) {
            Some(pb::agent_message::Kind::Report(r)) => r.seq,
            other => panic!("expected a report, got {other:?}"),
        };
        assert!(matches!(
            out.next().await.and_then(|m: pb::AgentMessage| m.kind),
            Some(pb::agent_message::Kind::Hello(_))
        ));
        assert_eq!(seq_of(out.next().await), 1);
        assert_eq!(seq_of(out.next().await), 2);
        assert_eq!(link.sent.load(Ordering::Relaxed), 2);
        link.buffer().push(3, encoder.encode(3, &sample));
        tx.send_replace(3);
        assert_eq!(seq_of(out.next().await), 3);
        drop(tx);
        assert!(
            out.next().await.is_none(),
            "the stream ends with the sampler"
        );
    }
}
