//! Acknowledgements read on a sampling tick, not as they arrive.
//!
//! A collector acknowledges each report a moment after it arrives. Read at once, that
//! acknowledgement is a second wake-up per sample: the process leaves idle, epoll
//! returns, the connection task and the stream task run, all for ~20 bytes. The kernel
//! can hold them instead: with the socket's receive low-water mark (`SO_RCVLOWAT`)
//! above what the held acknowledgements come to, their arrival wakes no one. On the
//! last tick within [`LONGEST_HOLD`] of raising it, the agent lowers the mark to one
//! byte, which makes Linux signal the waiting bytes at once (`tcp_set_rcvlowat`), lets
//! the runtime poll its reactor (the connection task is then bound to read them,
//! whatever the mark), and raises the mark again before it samples. It lowers it
//! sooner when a stream has [`MOST_HELD_REPORTS`] un-acknowledged, so that the
//! buffered count a report carries stays small. At 1 s that is one read of the socket
//! every five samples, at 5 s one every sample; every acknowledgement is still read,
//! at most [`LONGEST_HOLD`] later (and a late tick's few milliseconds).
//!
//! What waits with them: HTTP/2 pings and their answers, window updates, `Settings`.
//! So the mark is only raised while the stream is steady (at most
//! [`MOST_HELD_REPORTS`] un-acknowledged, a few KiB of the 64 KiB window; the
//! acknowledgements just let in are read but not yet applied when it is raised), at
//! intervals up to [`LONGEST_HOLD`], and held no longer than that: half the
//! collector's 10 s ping timeout. A closed or reset connection is signalled whatever
//! the mark, and a new connection starts unheld.
//!
//! The socket option goes through `nix`'s published macro for options it does not
//! wrap itself; the `setsockopt` call (and its `unsafe`) stays in that crate.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use nix::{getsockopt_impl, libc, setsockopt_impl, sockopt_impl};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;

sockopt_impl!(
    /// `SO_RCVLOWAT`: how many bytes must be waiting before the socket reads as ready.
    ReceiveLowWater,
    Both,
    libc::SOL_SOCKET,
    libc::SO_RCVLOWAT,
    i32
);

/// The mark while held: far above a hold's acknowledgements (tens of bytes each), so
/// only something unexpectedly large wakes the agent between reads.
const HELD: i32 = 16 * 1024;
/// The longest acknowledgements are held, and so the longest interval at which they
/// are (see the module doc).
pub const LONGEST_HOLD: Duration = Duration::from_secs(5);
/// The most reports un-acknowledged while held: a stream with more is not held (a
/// replay after a reconnect needs its window updates at once), and one with this many
/// has its acknowledgements read at the tick, so the `agent_buffered` its reports carry
/// stays at most this.
pub const MOST_HELD_REPORTS: usize = 5;

/// Whether marks raised at `held_since` stay up through the tick at `now`: the next
/// tick, a `period` later, still comes within [`LONGEST_HOLD`] of raising them, and no
/// stream has [`MOST_HELD_REPORTS`] un-acknowledged (`most_buffered`).
pub fn hold_on(
    held_since: Option<Instant>,
    now: Instant,
    period: Duration,
    most_buffered: usize,
) -> bool {
    held_since
        .is_some_and(|since| (now + period).duration_since(since) <= LONGEST_HOLD + TICK_LATENESS)
        && most_buffered < MOST_HELD_REPORTS
}

/// How late a tick may come and still count as on time: ticks are a few microseconds
/// late, and without this a 5 s hold at 1 s would end after four ticks as often as
/// after five.
const TICK_LATENESS: Duration = Duration::from_millis(50);

/// The socket of one collector's current connection, kept to move its mark.
#[derive(Debug, Default)]
pub struct Mark {
    /// A duplicate of the connection's descriptor; `None` between connections.
    socket: Mutex<Option<OwnedFd>>,
}

impl Mark {
    /// Keeps `socket` (a duplicate of the new connection's) for the next ticks.
    pub fn attach(&self, socket: OwnedFd) {
        *self.lock() = Some(socket);
    }

    /// Forgets the connection (its stream ended): the duplicate must not keep the
    /// socket open after the connection is dropped.
    pub fn detach(&self) {
        self.lock().take();
    }

    /// Lowers the mark to one byte: whatever waits is signalled now. Whether there is
    /// a connection.
    pub fn release(&self) -> io::Result<bool> {
        self.set(1)
    }

    /// Raises the mark: acknowledgements wait for the next [`Mark::release`].
    pub fn hold(&self) -> io::Result<bool> {
        self.set(HELD)
    }

    fn set(&self, bytes: i32) -> io::Result<bool> {
        let guard = self.lock();
        let Some(socket) = guard.as_ref() else {
            return Ok(false);
        };
        nix::sys::socket::setsockopt(&socket.as_fd(), ReceiveLowWater, &bytes)
            .map_err(io::Error::from)?;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OwnedFd>> {
        self.socket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// hyper's TCP connector, as tonic's own endpoint builds it, that also hands each new
/// connection's socket to a [`Mark`].
#[derive(Debug, Clone)]
pub struct MarkedConnector {
    http: HttpConnector,
    mark: Arc<Mark>,
}

impl MarkedConnector {
    /// A connector with `TCP_NODELAY` (small acknowledgements and reports must not wait
    /// for Nagle) whose connections `mark` follows.
    pub fn new(mark: Arc<Mark>) -> Self {
        let mut http = HttpConnector::new();
        // tonic puts TLS on top for https:// addresses.
        http.enforce_http(false);
        http.set_nodelay(true);
        Self { http, mark }
    }
}

impl Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let mark = Arc::clone(&self.mark);
        Box::pin(async move {
            let io = connecting.await?;
            match io.inner().as_fd().try_clone_to_owned() {
                Ok(socket) => mark.attach(socket),
                // Then acknowledgements simply wake the agent as they arrive.
                Err(error) => tracing::debug!(%error, "cannot keep the socket's descriptor"),
            }
            Ok(io)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::Interest;

    /// Whether `stream` becomes readable within `wait`.
    async fn readable_within(stream: &TcpStream, wait: Duration) -> bool {
        tokio::time::timeout(wait, stream.ready(Interest::READABLE))
            .await
            .is_ok_and(|ready| ready.is_ok_and(|r| r.is_readable()))
    }

    #[tokio::test]
    async fn held_bytes_wait_until_released_and_none_are_lost() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mark = Arc::new(Mark::default());
        let mut connector = MarkedConnector::new(Arc::clone(&mark));
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let io = connector.call(uri).await.unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let stream = io.into_inner();

        assert!(mark.hold().unwrap(), "the connection's socket was attached");
        peer.write_all(&[7u8; 40]).unwrap();
        assert!(
            !readable_within(&stream, Duration::from_millis(300)).await,
            "40 bytes under a held mark must not wake the reader"
        );

        assert!(mark.release().unwrap());
        assert!(
            readable_within(&stream, Duration::from_secs(5)).await,
            "releasing the mark signals the waiting bytes"
        );
        // Raised again before reading: the readiness already seen still reads it all.
        mark.hold().unwrap();
        let mut got = [0u8; 64];
        let n = stream.try_read(&mut got).unwrap();
        assert_eq!(&got[..n], &[7u8; 40]);

        // A closed connection is signalled whatever the mark.
        drop(peer);
        assert!(readable_within(&stream, Duration::from_secs(5)).await);
        assert_eq!(stream.try_read(&mut got).unwrap(), 0);
    }

    #[test]
    fn a_hold_ends_on_the_last_tick_within_its_span_or_at_the_most_reports() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let second = Duration::from_secs(1);
        assert!(!hold_on(None, start, second, 0), "nothing is held yet");
        // At 1 s: held through the ticks at 1..=4 s, read at 5 s (the next tick, at
        // 6 s, would be past the span).
        for tick in 1..=4 {
            assert!(hold_on(Some(start), at(tick * 1000), second, tick as usize));
        }
        assert!(!hold_on(Some(start), at(5000), second, 4));
        // A tick a few microseconds late is still the fourth.
        let late = at(4000) + Duration::from_micros(300);
        assert!(hold_on(Some(start), late, second, 4));
        // At 5 s: read at every tick.
        assert!(!hold_on(Some(start), at(5000), Duration::from_secs(5), 1));
        // At 200 ms: five reports un-acknowledged end the hold long before 5 s.
        assert!(hold_on(Some(start), at(800), Duration::from_millis(200), 4));
        assert!(!hold_on(
            Some(start),
            at(1000),
            Duration::from_millis(200),
            5
        ));
        // A tick late by a stall does not stretch the span.
        assert!(!hold_on(Some(start), at(4500), second, 1));
    }

    #[test]
    fn without_a_connection_nothing_is_set() {
        let mark = Mark::default();
        assert!(!mark.hold().unwrap());
        assert!(!mark.release().unwrap());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        mark.attach(OwnedFd::from(a));
        mark.detach();
        assert!(!mark.release().unwrap());
    }
}
