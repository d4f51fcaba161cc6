//! The collector's own TCP listeners, so that a hostile or broken peer cannot take a
//! port away from everyone else:
//!
//! - at most `listen.max_connections` connections per port: one more is accepted and
//!   closed at once (counted), so the backlog never fills with connections nobody
//!   serves;
//! - accept errors back off (10 ms doubling to 1 s) instead of retrying at once: with
//!   the descriptors exhausted (`EMFILE`) a tight retry spins a core and starves the
//!   connections that would free one;
//! - the HTTP listener keeps one spare descriptor: when the others run out it gives it
//!   up to take one waiting connection, so `/healthz` still answers;
//! - a gRPC connection must send its first bytes (the HTTP/2 preface, or a TLS
//!   `ClientHello`) within `listen.handshake_timeout`, and one that carries no agent
//!   stream for `listen.idle_timeout` is closed ([`Conn`], [`Activity`]). The HTTP
//!   listener's header deadline is hyper's `header_read_timeout` (see `http::serve`).
//!
//! [`Listener::accept`] yields a plain [`TcpStream`] inside a [`Conn`]; a TLS layer goes
//! between it and hyper or tonic, per connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// The first wait after a failed `accept`.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between failed `accept`s.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Idle time before TCP keepalive probes start.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The HTTP/2 client preface (RFC 9113 §3.4) is 24 bytes; a TLS `ClientHello` is more.
const PREFACE_BYTES: usize = 24;

/// Connection counters of one listener, read by `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accepted: AtomicU64,
    open: AtomicU64,
    over_limit: AtomicU64,
    handshake_timeouts: AtomicU64,
    idle_closed: AtomicU64,
    accept_errors: AtomicU64,
}

impl ConnectionStats {
    /// Connections accepted and served, since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `listen.max_connections` were open.
    pub fn over_limit(&self) -> u64 {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// Connections closed for not sending their first bytes or headers in time.
    pub fn handshake_timeouts(&self) -> u64 {
        self.handshake_timeouts.load(Ordering::Relaxed)
    }

    /// Connections closed for carrying no agent stream for `listen.idle_timeout`.
    pub fn idle_closed(&self) -> u64 {
        self.idle_closed.load(Ordering::Relaxed)
    }

    /// Failed `accept` calls (out of descriptors, out of memory, ...).
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// Counts one connection closed by the HTTP header deadline.
    pub(crate) fn handshake_timed_out(&self) {
        self.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// The two listeners' counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// The agents' gRPC port.
    pub grpc: ConnectionStats,
    /// The HTTP port.
    pub http: ConnectionStats,
}

/// The doubling wait between failed `accept`s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    /// The wait to take now; the one after is twice as long, up to [`BACKOFF_MAX`].
    fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(BACKOFF_MAX);
        now
    }
}

/// An `accept` error that belongs to one connection (it was reset before we took
/// it): the next `accept` can succeed at once.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// `EMFILE` or `ENFILE`: no descriptor for the new connection.
fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
    )
}

/// A bound port with its connection cap, counters and accept backoff.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    name: &'static str,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
    /// A descriptor held back to take one connection when the others run out.
    reserve: Option<std::fs::File>,
    keeps_reserve: bool,
    backoff: Backoff,
}

impl Listener {
    /// Wraps a bound `tcp` listener named `name` (`grpc` or `http`, picking its
    /// counters in `stats`), serving at most `max_connections` at once. With
    /// `keep_reserve` it holds a spare descriptor for when the others run out.
    pub fn new(
        tcp: TcpListener,
        name: &'static str,
        max_connections: usize,
        stats: Arc<ListenerStats>,
        keep_reserve: bool,
    ) -> Self {
        Self {
            tcp,
            name,
            slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            stats,
            reserve: None,
            keeps_reserve: keep_reserve,
            backoff: Backoff::new(),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    fn stats(&self) -> &ConnectionStats {
        if self.name == "grpc" {
            &self.stats.grpc
        } else {
            &self.stats.http
        }
    }

    /// The next connection within the cap. Never fails: errors are logged, counted and
    /// waited out.
    pub async fn accept(&mut self) -> Conn<TcpStream> {
        // Re-armed here, not in the loop: the loop gives it up to take a connection.
        if self.keeps_reserve && self.reserve.is_none() {
            self.reserve = std::fs::File::open("/dev/null").ok();
        }
        loop {
            match self.tcp.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                        self.stats().over_limit.fetch_add(1, Ordering::Relaxed);
                        debug!(listener = self.name, peer = %peer, "connection refused: listen.max_connections open");
                        continue;
                    };
                    // Small acks must not wait for Nagle; keepalive probes find peers
                    // that vanished without a FIN on an otherwise quiet connection.
                    let _ = stream.set_nodelay(true);
                    let _ = rustix::net::sockopt::set_socket_keepalive(&stream, true);
                    let _ = rustix::net::sockopt::set_tcp_keepidle(&stream, TCP_KEEPALIVE);
                    let local = stream.local_addr().ok();
                    self.stats().accepted.fetch_add(1, Ordering::Relaxed);
                    self.stats().open.fetch_add(1, Ordering::Relaxed);
                    return Conn {
                        io: stream,
                        info: TcpConnectInfo {
                            local_addr: local,
                            remote_addr: Some(peer),
                        },
                        slot: Slot {
                            _permit: permit,
                            stats: Arc::clone(&self.stats),
                            grpc: self.name == "grpc",
                        },
                        preface: None,
                        idle: None,
                    };
                }
                Err(error) if is_per_connection(&error) => {}
                Err(error) => {
                    self.stats().accept_errors.fetch_add(1, Ordering::Relaxed);
                    if is_out_of_descriptors(&error) && self.reserve.take().is_some() {
                        warn!(listener = self.name, %error, "out of file descriptors: using the reserve one to keep serving");
                        continue;
                    }
                    let wait = self.backoff.step();
                    warn!(listener = self.name, %error, retry_in = ?wait, "accepting a connection failed; backing off");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// A connection's place under `listen.max_connections`, released when it closes.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ListenerStats>,
    grpc: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let stats = if self.grpc {
            &self.stats.grpc
        } else {
            &self.stats.http
        };
        stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The first-bytes deadline of a connection.
#[derive(Debug)]
struct Preface {
    missing: usize,
    deadline: Pin<Box<Sleep>>,
}

/// The idle deadline of a connection, armed while it carries no stream.
#[derive(Debug)]
struct Idle {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl Idle {
    /// Whether the connection has carried no stream for its timeout; otherwise the
    /// task is woken when that may change (a stream ends or the deadline passes).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.activity.waker.register(cx.waker());
        if self.activity.streams.load(Ordering::Acquire) > 0 {
            return false;
        }
        let deadline = *lock(&self.activity.idle_since) + self.timeout;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An accepted connection: holds its slot, and enforces the first-bytes and idle
/// deadlines it was given by failing the read hyper waits on.
#[derive(Debug)]
pub struct Conn<IO> {
    io: IO,
    info: TcpConnectInfo,
    slot: Slot,
    preface: Option<Preface>,
    idle: Option<Idle>,
}

impl<IO> Conn<IO> {
    /// The peer's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.info.remote_addr
    }

    /// Closes the connection unless its first `PREFACE_BYTES` bytes arrive within
    /// `timeout`.
    pub fn with_preface_deadline(mut self, timeout: Duration) -> Self {
        self.preface = Some(Preface {
            missing: PREFACE_BYTES,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        });
        self
    }

    /// Closes the connection once it has carried no stream (see [`Connections::busy`])
    /// for `timeout`; it is registered in `connections` under its peer address.
    pub fn with_idle_timeout(mut self, connections: &Connections, timeout: Duration) -> Self {
        if let Some(peer) = self.info.remote_addr {
            let activity = connections.register(peer);
            self.idle = Some(Idle {
                activity,
                timeout,
                sleep: Box::pin(tokio::time::sleep(timeout)),
            });
        }
        self
    }

    fn stats(&self) -> &ConnectionStats {
        if self.slot.grpc {
            &self.slot.stats.grpc
        } else {
            &self.slot.stats.http
        }
    }
}

impl<IO> Drop for Conn<IO> {
    fn drop(&mut self) {
        if let (Some(idle), Some(peer)) = (&self.idle, self.info.remote_addr) {
            idle.activity.unregister(peer);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if let Some(preface) = &mut this.preface {
                    preface.missing = preface.missing.saturating_sub(read);
                    if preface.missing == 0 {
                        this.preface = None;
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {}
        }
        if let Some(preface) = &mut this.preface
            && preface.deadline.as_mut().poll(cx).is_ready()
        {
            this.preface = None;
            this.stats()
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            debug!(peer = ?this.info.remote_addr, "closing a connection that sent no preface within listen.handshake_timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within listen.handshake_timeout",
            )));
        }
        if let Some(idle) = &mut this.idle
            && idle.expired(cx)
        {
            this.stats().idle_closed.fetch_add(1, Ordering::Relaxed);
            debug!(peer = ?this.info.remote_addr, "closing a connection without an agent stream for listen.idle_timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no agent stream within listen.idle_timeout",
            )));
        }
        Poll::Pending
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

/// The gRPC listener's connections for tonic's `serve_with_incoming`: each must send
/// its preface within `handshake_timeout` and is closed after `idle_timeout` without
/// a stream (marked in `connections`). A TLS acceptor wraps these per connection.
pub fn grpc_incoming(
    listener: Listener,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    connections: Connections,
) -> impl futures_util::Stream<Item = io::Result<Conn<TcpStream>>> {
    futures_util::stream::unfold(listener, move |mut listener| {
        let connections = connections.clone();
        async move {
            let conn = listener
                .accept()
                .await
                .with_preface_deadline(handshake_timeout)
                .with_idle_timeout(&connections, idle_timeout);
            Some((Ok(conn), listener))
        }
    })
}

/// Whether one connection carries streams, and since when it carries none.
#[derive(Debug)]
pub struct Activity {
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
    waker: AtomicWaker,
    /// Where this connection is registered (to unregister itself on close).
    registry: Arc<Mutex<HashMap<SocketAddr, Arc<Activity>>>>,
}

impl Activity {
    fn unregister(self: &Arc<Self>, peer: SocketAddr) {
        let mut map = lock(&self.registry);
        if map.get(&peer).is_some_and(|a| Arc::ptr_eq(a, self)) {
            map.remove(&peer);
        }
    }
}

/// The open gRPC connections by peer address, so that a stream can mark its
/// connection busy (a peer address is unique among open connections to one port).
#[derive(Debug, Clone, Default)]
pub struct Connections {
    map: Arc<Mutex<HashMap<SocketAddr, Arc<Activity>>>>,
}

impl Connections {
    fn register(&self, peer: SocketAddr) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            waker: AtomicWaker::new(),
            registry: Arc::clone(&self.map),
        });
        lock(&self.map).insert(peer, Arc::clone(&activity));
        activity
    }

    /// Marks the connection from `peer` busy until the guard is dropped (`None` for a
    /// peer no listener registered, e.g. in tests).
    pub fn busy(&self, peer: SocketAddr) -> Option<Busy> {
        let activity = Arc::clone(lock(&self.map).get(&peer)?);
        activity.streams.fetch_add(1, Ordering::AcqRel);
        Some(Busy(activity))
    }
}

/// One stream on a connection; the connection's idle clock restarts when the last
/// one ends.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.0.idle_since) = Instant::now();
            self.0.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(max: usize) -> (Listener, SocketAddr, Arc<ListenerStats>) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::default());
        (
            Listener::new(tcp, "grpc", max, Arc::clone(&stats), false),
            addr,
            stats,
        )
    }

    #[test]
    fn backoff_doubles_from_10ms_to_1s_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<_> = (0..9).map(|_| b.step().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.step(), BACKOFF_FIRST);
    }

    #[test]
    fn emfile_is_out_of_descriptors_and_a_reset_is_per_connection() {
        let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert!(is_out_of_descriptors(&emfile));
        assert!(!is_per_connection(&emfile));
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(is_per_connection(&reset));
        assert!(!is_out_of_descriptors(&reset));
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_and_counted() {
        let (mut listener, addr, stats) = listener(1).await;
        let _first = TcpStream::connect(addr).await.unwrap();
        let held = listener.accept().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let accept = tokio::spawn(async move {
            let conn = listener.accept().await;
            (listener, conn)
        });
        // The second is closed at once, while the first holds the only slot.
        let mut buf = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(stats.grpc.over_limit(), 1);
        // Once the first closes, the next is served.
        drop(held);
        let _third = TcpStream::connect(addr).await.unwrap();
        let (_listener, conn) = tokio::time::timeout(Duration::from_secs(5), accept)
            .await
            .unwrap()
            .unwrap();
        assert!(conn.peer().is_some());
        assert_eq!(stats.grpc.open(), 1);
        assert_eq!(stats.grpc.accepted(), 2);
    }

    #[tokio::test]
    async fn a_connection_without_preface_in_time_fails_its_read() {
        let (mut listener, addr, stats) = listener(10).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut conn = listener
            .accept()
            .await
            .with_preface_deadline(Duration::from_millis(100));
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut buf = [0; 64];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(n, 14);
        let error = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(stats.grpc.handshake_timeouts(), 1);

        // One that sends the whole preface in time is not cut.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut conn = listener
            .accept()
            .await
            .with_preface_deadline(Duration::from_millis(100));
        client.write_all(&[b'x'; PREFACE_BYTES]).await.unwrap();
        let mut got = 0;
        while got < PREFACE_BYTES {
            got += conn.read(&mut buf).await.unwrap();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
        assert!(
            quiet.is_err(),
            "a connection past its preface waits: {quiet:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_without_a_stream_is_closed_once_idle() {
        let (mut listener, addr, stats) = listener(10).await;
        let connections = Connections::default();
        let client = TcpStream::connect(addr).await.unwrap();
        let peer = client.local_addr().unwrap();
        let mut conn = listener
            .accept()
            .await
            .with_idle_timeout(&connections, Duration::from_millis(200));
        let busy = connections.busy(peer).expect("registered");
        let mut buf = [0; 8];
        let waiting = tokio::time::timeout(Duration::from_millis(400), conn.read(&mut buf)).await;
        assert!(waiting.is_err(), "a busy connection is not idle");
        drop(busy);
        let started = std::time::Instant::now();
        let error = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(stats.grpc.idle_closed(), 1);
        drop(conn);
        assert!(connections.busy(peer).is_none(), "unregistered on close");
    }
}
