//! A TCP proxy between an agent and its collector that misbehaves as a bad network
//! does: it delays every chunk, resets connections or stalls them at random, and can
//! cut the path altogether (every connection reset, new ones refused with a reset).
//! This kernel has no netem, so the faults are made here, in the test process.
//!
//! The listening socket may belong to a network namespace of the test's own
//! ([`listener_in_netns`]); connections to the upstream are made from the test
//! process's namespace, so a proxy can join a namespace to this machine's loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the bytes it forwards; every chunk read is one draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Added before each chunk is written on (one way).
    pub delay: Duration,
    /// Chance per chunk that the connection is reset instead (both sides).
    pub reset: f64,
    /// Chance per chunk that it is held back for `stall` first.
    pub stall: f64,
    /// How long a stalled chunk is held back.
    pub stall_for: Duration,
}

impl Faults {
    /// A clean path: nothing delayed, lost or stalled.
    pub const NONE: Faults = Faults {
        delay: Duration::ZERO,
        reset: 0.0,
        stall: 0.0,
        stall_for: Duration::ZERO,
    };
}

/// What the proxy did so far.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections accepted and forwarded.
    pub forwarded: AtomicU64,
    /// Connections reset at random.
    pub reset: AtomicU64,
    /// Chunks stalled at random.
    pub stalled: AtomicU64,
    /// Connections reset by a cut (open ones, and new ones during it).
    pub cut: AtomicU64,
}

struct Control {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    cut: AtomicBool,
    /// Bumped at each cut: every open connection resets itself.
    cuts: watch::Sender<u64>,
    counts: Counts,
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// The address clients connect to.
    pub address: SocketAddr,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards every connection accepted on `listener` to `upstream`, with `faults`.
    /// Must be called within a tokio runtime.
    pub fn start(listener: std::net::TcpListener, upstream: SocketAddr, faults: Faults) -> Proxy {
        listener
            .set_nonblocking(true)
            .expect("make the proxy listener non-blocking");
        let address = listener.local_addr().expect("proxy listener address");
        let listener = TcpListener::from_std(listener).expect("register the proxy listener");
        let control = Arc::new(Control {
            upstream,
            faults: Mutex::new(faults),
            cut: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            counts: Counts::default(),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&control)));
        Proxy {
            address,
            control,
            task,
        }
    }

    /// On loopback: a proxy at `127.0.0.1:<free port>` in front of `upstream`.
    pub fn on_loopback(upstream: &str, faults: Faults) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let upstream = upstream.parse().expect("upstream is ip:port");
        Proxy::start(listener, upstream, faults)
    }

    /// Cuts the path: every open connection is reset, and new ones are reset as soon
    /// as they are accepted, until [`Proxy::restore`].
    pub fn cut(&self) {
        self.control.cut.store(true, Ordering::SeqCst);
        self.control.cuts.send_modify(|n| *n += 1);
    }

    /// Ends a cut.
    pub fn restore(&self) {
        self.control.cut.store(false, Ordering::SeqCst);
    }

    /// Changes the faults of the chunks forwarded from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self
            .control
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = faults;
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> &Counts {
        &self.control.counts
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end with the cut, so nothing outlives the proxy.
        self.cut();
    }
}

/// A listening TCP socket at `address` inside the network namespace at `netns`
/// (`/run/netns/<name>`). The socket stays in that namespace whichever thread uses
/// it later; the binding is done on a thread of its own that enters the namespace.
pub fn listener_in_netns(netns: &Path, address: SocketAddr) -> std::net::TcpListener {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("enter {}: {e}", netns.display()));
        std::net::TcpListener::bind(address)
            .unwrap_or_else(|e| panic!("bind {address} in {}: {e}", netns.display()))
    })
    .join()
    .expect("the binding thread")
}

async fn accept(listener: TcpListener, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if control.cut.load(Ordering::SeqCst) {
            control.counts.cut.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        let control = Arc::clone(&control);
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(control.upstream).await else {
                reset(client);
                return;
            };
            control.counts.forwarded.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            forward(client, upstream, &control).await;
        });
    }
}

/// Closes with a reset (SO_LINGER 0) rather than a FIN, as a lost connection looks.
fn reset(stream: TcpStream) {
    // SO_LINGER 0 makes close() send a reset at once: it never blocks, which is what
    // tokio's deprecation of set_linger warns about.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Which way a chunk goes.
enum Chunk {
    Up(usize),
    Down(usize),
}

/// Forwards both ways until either side closes, a random reset, or a cut. One task
/// does both directions, so a stalled or delayed chunk holds the connection up as a
/// congested path does.
async fn forward(mut client: TcpStream, mut upstream: TcpStream, control: &Control) {
    let mut cuts = control.cuts.subscribe();
    cuts.borrow_and_update();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let chunk = tokio::select! {
            _ = cuts.changed() => {
                control.counts.cut.fetch_add(1, Ordering::Relaxed);
                reset(client);
                reset(upstream);
                return;
            }
            n = client.read(&mut up) => Chunk::Up(n.unwrap_or(0)),
            n = upstream.read(&mut down) => Chunk::Down(n.unwrap_or(0)),
        };
        let n = match chunk {
            Chunk::Up(n) | Chunk::Down(n) => n,
        };
        if n == 0 {
            return;
        }
        let faults = *control
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (lose, stall) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(faults.reset.clamp(0.0, 1.0)),
                rng.random_bool(faults.stall.clamp(0.0, 1.0)),
            )
        };
        if lose {
            control.counts.reset.fetch_add(1, Ordering::Relaxed);
            reset(client);
            reset(upstream);
            return;
        }
        let mut wait = faults.delay;
        if stall {
            control.counts.stalled.fetch_add(1, Ordering::Relaxed);
            wait += faults.stall_for;
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let written = match chunk {
            Chunk::Up(n) => upstream.write_all(&up[..n]).await,
            Chunk::Down(n) => client.write_all(&down[..n]).await,
        };
        if written.is_err() {
            return;
        }
    }
}
