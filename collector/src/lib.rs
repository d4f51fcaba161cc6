//! `rally-collector`: receives Rally agents' report streams, keeps a windowed,
//! in-memory picture of every VM and group, and serves it to Prometheus (`/metrics`),
//! scripts (`/api/v1`) and people (the status page).
//!
//! # Layout
//!
//! - [`config`]: `collector.toml` (listeners, ingest limits, state, auth, groups with
//!   their resize policy, global `dry_run`, actuator, API token, engine tick), with
//!   errors that name file, line and key.
//! - [`vm_id`]: what a VM id or group name may contain; the reserved `ungrouped`.
//! - [`request`]: a resize request, its delivery attempts and verdict: what the engine,
//!   the actuators and the store exchange.
//! - [`clock`]: the injectable wall clock (simulated time in tests).
//! - [`tls`]: TLS on both listeners (`[tls]`): the certificate, reloadable handshakes
//!   of accepted streams, the VM named by an agent's client certificate.
//! - [`pki`]: `rally-collector pki`: a CA, the server certificate, one client
//!   certificate per VM.
//! - [`ingest`]: the gRPC edge, `rally.v1.Ingest/Stream`: authentication, validation,
//!   limits, de-duplication, acknowledgements; converts protobuf into fleet types.
//! - [`fleet`]: the in-memory picture: per VM identity, size, latest report,
//!   freshness, counters and metric windows (raw 5 min, 1-minute buckets for 24 h);
//!   `fleet::view` is the policy engine's `MetricView` over it.
//! - [`listener`]: the two TCP listeners: connection caps, accept backoff, the
//!   handshake and idle deadlines that keep a silent peer from holding a port.
//! - [`metrics`]: the Prometheus text exposition, rendered from the fleet per scrape.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/api/v1/vms`, the resize API
//!   (`/api/v1/groups`, `/api/v1/decisions`, pause, resume, resize; mutating calls need
//!   the API token or a loopback peer), the status page.
//! - the pure decision engine is its own crate, [`rally_policy`]: group policy + metric
//!   view + clock → resize decisions with their evidence. No I/O.
//! - [`actuator`]: sends a resize request: Oktawave's API, signed webhook, command, or
//!   log only.
//! - [`store`]: the decision state (decisions, attempts, cooldowns, flags): embedded
//!   SQLite, or etcd under the leader's term with `[ha]`.
//! - [`ha`]: with `[ha]`, the election through etcd: who leads, the term's fencing
//!   token, refused work of ended terms.
//! - `assembly`: start-up wiring (the actuator with its ticket store and resolved
//!   ladders, the API token), used at start and on reload; [`start_actuator`].
//! - [`engine`]: the resize loop: tick (or a report, through [`wake`]) → evaluate →
//!   persist → dispatch to the actuator (bounded queue, own tasks) → record each attempt
//!   and the outcome → verify; restores after a restart.
//! - [`wake`]: the nudge from ingest to the engine: which VMs reported, so their groups
//!   are evaluated at once rather than at the next tick.
//! - [`cli`]: the command line.
//! - [`client`]: the API client behind `pause`, `resume`, `resize`, `decisions`, `groups`.
//! - [`demo`]: `rally-collector demo`: a collector and an in-process agent for this
//!   machine, on loopback.
//!
//! [`Collector`] binds both listeners and serves until told to stop; [`run`] does both.
//! [`Collector::serve_live`] also applies reloaded configurations (SIGHUP): groups and
//! their policies, `dry_run`, the actuator, `[api]`, `[auth]` tokens and the fleet's
//! `ingest.stale_after`, `forget_after`, `unknown_vms` and `max_vms` change live,
//! without dropping a stream; `[listen]`, `[state]`, `[engine]` and the other
//! `[ingest]` limits need a restart (a reload logs each one it kept). The files of `[tls]`
//! are read again on every reload (renewed certificates apply to new connections);
//! adding or removing `[tls]` or `tls.http` needs a restart.
//!
//! **Invariant:** the data flows one way: ingest → fleet → policy → engine → store and
//! actuator, with `http`, `metrics` and `cli` reading from the top; no module imports
//! one that imports it back (`tests/integration/layering.rs` fails on any cycle).
//!
//! **Invariant:** the ingest path never waits on anything slow: no disk, no actuator,
//! no other stream. It only takes one VM's lock for the moment a report is folded in.
//! The resize engine only reads the fleet (one VM lock at a time), runs the SQLite
//! store on the blocking pool, and hands requests to actuator tasks through a bounded
//! queue, so a slow webhook never slows an acknowledgement.

// unwrap() is fine in tests (a panic is the failure report).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod actuator;
mod assembly;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod engine;
pub mod fleet;
pub mod ha;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod pki;
pub mod request;
pub mod store;
pub mod tls;
pub mod vm_id;
pub mod wake;

pub use crate::assembly::{StateSource, start_actuator, start_actuator_on};

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rally_etcd::Etcd;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, IngestConfig};
use crate::engine::{Engine, EngineHandle};
use crate::fleet::{Fleet, FleetSettings};
use crate::ha::{Ha, Leadership};
use crate::ingest::auth::Authenticator;
use crate::ingest::{IngestService, IngestStats};
use crate::listener::{Connections, Listener};
use crate::tls::{Acceptor, Handshakes, ServerTls};

/// How long open streams and HTTP requests get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often VMs silent for `forget_after` are looked for.
const FORGET_EVERY: Duration = Duration::from_secs(60);
/// HTTP/2 pings find dead agents' connections (a VM that vanished without a FIN).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A ping not answered this fast closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams per HTTP/2 connection: an agent needs one.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Why the collector could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The threads that build fleet-wide responses could not be started.
    #[error("starting the read threads")]
    ReadThreads(#[source] std::io::Error),
    /// A listener could not be bound.
    #[error("binding {what} listener {addr}")]
    Bind {
        /// `gRPC` or `HTTP`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory cannot be created or written.
    #[error("state directory {}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token file could not be read.
    #[error("auth: {0}")]
    Auth(String),
    /// The gRPC server failed.
    #[error("gRPC server")]
    Grpc(#[from] tonic::transport::Error),
    /// The state store could not be opened.
    #[error("state store")]
    Store(#[from] store::StoreError),
    /// The actuator could not be built.
    #[error("actuator")]
    Actuator(#[from] actuator::ActuatorError),
    /// The API token file could not be read.
    #[error("API token")]
    ApiToken(#[from] rally_daemon::secret::SecretError),
    /// The resize engine could not restore its state.
    #[error("resize engine")]
    Engine(#[from] engine::EngineError),
    /// A file of `[tls]` cannot be used.
    #[error("TLS")]
    Tls(#[from] tls::TlsError),
    /// The `[ha]` etcd client could not be built.
    #[error("ha.etcd")]
    Etcd(#[from] rally_etcd::EtcdError),
    /// A TLS file of `[ha]` cannot be read.
    #[error("ha TLS")]
    EtcdTls(#[source] config::HaTlsError),
}

/// Threads for fleet-wide reads: two, so a slow scrape does not hold up the status
/// page, and no more, so reads never take every core from ingest.
const READ_THREADS: usize = 2;

/// A collector with both listeners bound, ready to [`serve`](Collector::serve).
#[derive(Debug)]
pub struct Collector {
    config: Config,
    clock: Arc<dyn Clock>,
    fleet: Arc<Fleet>,
    stats: Arc<IngestStats>,
    auth: Authenticator,
    tls: Option<ServerTls>,
    grpc: TcpListener,
    http: TcpListener,
    ready: Arc<AtomicBool>,
    engine: Engine,
    engine_handle: EngineHandle,
    api_token: Option<Arc<str>>,
    /// With `[ha]`: the election's state and the etcd client it campaigns with.
    elected: Option<(Arc<Ha>, Etcd)>,
    /// Who decides: this collector alone, or the elected one of several.
    leadership: Leadership,
    /// Where the decision state lives (a reload opens the ticket store there again).
    state: assembly::StateSource,
    /// The threads `/metrics`, the API and the status page build their answers on.
    reads: http::reads::Reads,
}

/// Makes sure the state directory exists and is writable.
fn check_state_dir(dir: &Path) -> Result<(), Error> {
    let err = |source| Error::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".rally-collector-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

impl Collector {
    /// Checks the state directory, reads the tokens and binds both listeners.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        Self::bind_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`bind`](Collector::bind), with freshness and windows on `clock`.
    pub async fn bind_with_clock(mut config: Config, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let elected = match &config.ha {
            None => {
                check_state_dir(&config.state.dir)?;
                None
            }
            Some(ha) => {
                let tls = ha.tls().map_err(Error::EtcdTls)?;
                let etcd = Etcd::with_tls(&ha.etcd, ha.etcd_timeout, tls.as_ref())?;
                let https = config.tls.as_ref().is_some_and(|t| t.http);
                let url = ha.advertise(&config.listen, https);
                Some((Arc::new(Ha::new(ha, url)), etcd))
            }
        };
        let leadership = elected.as_ref().map_or(Leadership::Single, |(ha, _)| {
            Leadership::Elected(Arc::clone(ha))
        });
        let auth = Authenticator::from_config(&config.auth).map_err(Error::Auth)?;
        let tls = config
            .tls
            .as_ref()
            .map(|t| ServerTls::load(t.files()))
            .transpose()?;
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { what, addr, source })
        };
        let grpc = bind("gRPC", config.listen.grpc).await?;
        let http = bind("HTTP", config.listen.http).await?;
        let fleet = Arc::new(Fleet::new(FleetSettings::from_config(&config)));
        let state = assembly::StateSource::of(&config, elected.as_ref());
        let store = state.open()?;
        let actuator = assembly::start_actuator_on(&mut config, &state).await?;
        let api_token = assembly::api_token(&config)?;
        let reads = http::reads::Reads::start(READ_THREADS).map_err(Error::ReadThreads)?;
        warn_if_exposed(&config);
        for g in &config.groups {
            if !g.resizes() {
                info!(group = %g.name, "group has no ladder: monitored only, never resized");
            } else if g.effective_dry_run(config.dry_run) {
                info!(group = %g.name, "group is in dry-run: decisions are recorded and logged, nothing is sent");
            }
        }
        let (engine, engine_handle) = Engine::new(
            &config,
            Arc::clone(&fleet),
            Arc::clone(&clock),
            store,
            actuator,
            leadership.clone(),
        );
        Ok(Self {
            config,
            clock,
            fleet,
            stats: Arc::new(IngestStats::default()),
            auth,
            tls,
            grpc,
            http,
            ready: Arc::new(AtomicBool::new(false)),
            engine,
            engine_handle,
            api_token,
            elected,
            leadership,
            state,
            reads,
        })
    }

    /// The bound gRPC address (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.listen.grpc)
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.listen.http)
    }

    /// The fleet this collector feeds.
    pub fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet)
    }

    /// The ingest counters.
    pub fn stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.stats)
    }

    /// The resize engine's handle (status, commands, decisions).
    pub fn engine(&self) -> EngineHandle {
        self.engine_handle.clone()
    }

    /// Serves both listeners until `shutdown` completes, then closes agent streams
    /// (`Unavailable`, so agents reconnect elsewhere) and finishes within a grace time.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (_unchanging, config) = watch::channel(self.config.clone());
        self.serve_live(config, shutdown).await
    }

    /// [`serve`](Collector::serve), applying each configuration sent on `config` (a
    /// reload; see the crate documentation for what changes live). Send only checked
    /// configurations ([`Config::load`]); one whose token, secret or API token file
    /// cannot be read now is rejected as a whole.
    pub async fn serve_live(
        self,
        mut config: watch::Receiver<Config>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        config.borrow_and_update();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (auth_tx, auth_rx) = watch::channel(Arc::new(self.auth.clone()));
        let (api_token_tx, api_token_rx) = watch::channel(self.api_token.clone());
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();

        let ingest = IngestService::new(
            &self.config.ingest,
            Arc::clone(&self.fleet),
            Arc::clone(&self.clock),
            Arc::clone(&self.stats),
            auth_rx,
            stop_rx.clone(),
            self.engine.wake(),
        );
        let listen = &self.config.listen;
        let connections = Connections::default();
        let ingest = ingest.with_connections(connections.clone());
        let grpc_listener = Listener::new(
            self.grpc,
            "grpc",
            listen.max_connections,
            Arc::clone(&self.stats.listeners),
            false,
        );
        let incoming = listener::grpc_incoming(
            grpc_listener,
            listen.handshake_timeout,
            listen.idle_timeout,
            connections,
        );
        let grpc_router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service(ingest.into_server(self.config.ingest.max_message_bytes));
        // TLS is a layer over the accepted streams: the same server either way.
        let grpc_acceptor = self
            .tls
            .as_ref()
            .map(|tls| Acceptor::new("gRPC", Arc::clone(&tls.grpc)));
        let grpc: BoxedServer<tonic::transport::Error> = match &grpc_acceptor {
            None => Box::pin(
                grpc_router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
            ),
            Some(acceptor) => {
                let handshakes = Handshakes::spawn(incoming, acceptor.clone());
                Box::pin(
                    grpc_router.serve_with_incoming_shutdown(handshakes, stopped(stop_rx.clone())),
                )
            }
        };

        let app = http::router(http::HttpState {
            fleet: Arc::clone(&self.fleet),
            stats: Arc::clone(&self.stats),
            clock: Arc::clone(&self.clock),
            ready: Arc::clone(&self.ready),
            engine: self.engine_handle.clone(),
            api_token: api_token_rx,
            leadership: self.leadership.clone(),
            reads: self.reads.clone(),
            snapshots: Arc::default(),
        });
        // The HTTP listener keeps a spare descriptor so /healthz answers when agents'
        // connections have taken all the others.
        let http_listener = Listener::new(
            self.http,
            "http",
            listen.max_connections,
            Arc::clone(&self.stats.listeners),
            true,
        );
        let http_acceptor = self
            .tls
            .as_ref()
            .and_then(|tls| tls.http.as_ref())
            .map(|config| Acceptor::new("HTTP", Arc::clone(config)));
        let http = http::serve(
            http_listener,
            app,
            http_acceptor.clone(),
            listen.handshake_timeout,
            Arc::clone(&self.stats.listeners),
            stopped(stop_rx.clone()),
        );

        // The engine restores its state (and re-sends what was never answered) before
        // the listeners report ready; it runs on its own task, off the ingest path.
        let mut engine = self.engine;
        engine.restore().await?;
        let engine = tokio::spawn(engine.run(stopped(stop_rx.clone())));
        // With `[ha]`: campaign; on shutdown the task resigns, so another collector
        // leads at once instead of after the lease's TTL.
        let election = self
            .elected
            .map(|(ha, etcd)| tokio::spawn(ha.run(etcd, stopped(stop_rx.clone()))));

        let forget = {
            let fleet = Arc::clone(&self.fleet);
            let clock = Arc::clone(&self.clock);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(FORGET_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    for vm in fleet.forget_silent(clock.now()) {
                        info!(vm = %vm, "forgot a VM silent for ingest.forget_after");
                    }
                }
            })
        };

        let reloads = {
            let live = Live {
                fleet: Arc::clone(&self.fleet),
                engine: self.engine_handle.clone(),
                auth: auth_tx,
                api_token: api_token_tx,
                grpc_tls: grpc_acceptor,
                http_tls: http_acceptor,
                state: self.state.clone(),
            };
            let mut running = self.config.clone();
            tokio::spawn(async move {
                while config.changed().await.is_ok() {
                    let new = config.borrow_and_update().clone();
                    running = live.reload(running, new).await;
                }
            })
        };

        let servers = async {
            tokio::try_join!(async { grpc.await.map_err(Error::Grpc) }, async {
                http.await;
                Ok(())
            },)
            .map(|_| ())
        };
        tokio::pin!(servers);
        self.ready.store(true, Ordering::Release);
        info!(grpc = %grpc_addr, http = %http_addr, "collector listening");

        let early = tokio::select! {
            result = &mut servers => Some(result),
            () = shutdown => None,
        };
        self.ready.store(false, Ordering::Release);
        let result = match early {
            // A server stopped on its own: that is an error (or both ended, oddly).
            Some(result) => result,
            None => {
                info!("shutting down: closing agent streams");
                let _ = stop_tx.send(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                    Ok(result) => result,
                    Err(_) => {
                        warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace time; closing them");
                        Ok(())
                    }
                }
            }
        };
        engine.abort();
        if let Some(election) = election {
            // Resigning is one call to etcd, bounded by `ha.etcd_timeout`.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, election).await;
        }
        forget.abort();
        reloads.abort();
        result
    }
}

/// What a reload replaces in a running collector.
struct Live {
    fleet: Arc<Fleet>,
    engine: EngineHandle,
    auth: watch::Sender<Arc<Authenticator>>,
    api_token: watch::Sender<Option<Arc<str>>>,
    grpc_tls: Option<Acceptor>,
    http_tls: Option<Acceptor>,
    state: assembly::StateSource,
}

/// A listener's server, whichever transport it was built on.
type BoxedServer<E> = std::pin::Pin<Box<dyn Future<Output = Result<(), E>> + Send>>;

impl Live {
    /// Applies `new` over `running` and returns the configuration now in force (the
    /// running one, whole, when `new` cannot be applied).
    async fn reload(&self, running: Config, mut new: Config) -> Config {
        keep_restart_only(&running, &mut new);
        let auth = match Authenticator::from_config(&new.auth) {
            Ok(auth) => auth,
            Err(error) => return rejected(running, &format!("auth: {error}")),
        };
        // The same path as at start: Oktawave resolves the ladders against its API again,
        // and a reload it cannot complete keeps the running configuration.
        let actuator = match assembly::start_actuator_on(&mut new, &self.state).await {
            Ok(actuator) => actuator,
            Err(error) => return rejected(running, &format!("actuator: {error}")),
        };
        let api_token = match assembly::api_token(&new) {
            Ok(token) => token,
            Err(error) => return rejected(running, &error.to_string()),
        };
        // Read again even when the paths did not change: that is how a renewed
        // certificate is taken up.
        let tls = match new
            .tls
            .as_ref()
            .map(|t| ServerTls::load(t.files()))
            .transpose()
        {
            Ok(tls) => tls,
            Err(error) => return rejected(running, &error.to_string()),
        };
        if new.auth.mode == config::AuthMode::Certificate
            && new.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none())
        {
            return rejected(
                running,
                "auth.mode = \"certificate\" needs the running [tls] to have client_ca_file (adding [tls] needs a restart)",
            );
        }
        if let Some(tls) = &tls {
            if let Some(acceptor) = &self.grpc_tls {
                acceptor.replace(Arc::clone(&tls.grpc));
            }
            if let (Some(acceptor), Some(config)) = (&self.http_tls, &tls.http) {
                acceptor.replace(Arc::clone(config));
            }
        }
        self.fleet.reconfigure(FleetSettings::from_config(&new));
        self.auth.send_replace(Arc::new(auth));
        self.api_token.send_replace(api_token);
        if let Err(error) = self.engine.reconfigure(&new, actuator).await {
            warn!(%error, "the resize engine did not take the new groups");
        }
        info!(
            groups = new.groups.len(),
            dry_run = new.dry_run,
            "configuration reloaded"
        );
        new
    }
}

fn rejected(running: Config, why: &str) -> Config {
    tracing::error!(
        error = why,
        "new configuration rejected; keeping the running one"
    );
    running
}

/// Puts back, with a warning, every key of `new` that only a restart can change.
fn keep_restart_only(running: &Config, new: &mut Config) {
    let restart = |key: &str| {
        warn!(
            key,
            "changing `{key}` needs a restart (systemctl restart rally-collector); keeping the running value"
        );
    };
    if new.listen != running.listen {
        restart("listen");
        new.listen = running.listen.clone();
    }
    if new.state != running.state {
        restart("state");
        new.state = running.state.clone();
    }
    if new.engine != running.engine {
        restart("engine");
        new.engine = running.engine.clone();
    }
    if new.ha != running.ha {
        restart("ha");
        new.ha = running.ha.clone();
    }
    let shape = |tls: &Option<config::TlsConfig>| tls.as_ref().map(|t| t.http);
    if shape(&new.tls) != shape(&running.tls) {
        restart("tls (adding or removing it, or tls.http)");
        new.tls = running.tls.clone();
    }
    let (old, ingest) = (&running.ingest, &mut new.ingest);
    let fixed = |i: &IngestConfig| {
        (
            i.max_message_bytes,
            i.max_streams,
            i.max_streams_per_vm,
            i.hello_timeout,
        )
    };
    if fixed(ingest) != fixed(old) {
        restart(
            "ingest.max_message_bytes, ingest.max_streams, ingest.max_streams_per_vm, ingest.hello_timeout",
        );
        ingest.max_message_bytes = old.max_message_bytes;
        ingest.max_streams = old.max_streams;
        ingest.max_streams_per_vm = old.max_streams_per_vm;
        ingest.hello_timeout = old.hello_timeout;
    }
}

/// Says at start when the gRPC listener takes reports from the network in a way that
/// lets anyone report, or that will refuse every token.
fn warn_if_exposed(config: &Config) {
    let addr = config.listen.grpc;
    if addr.ip().is_loopback() {
        return;
    }
    match config.auth.mode {
        config::AuthMode::None => warn!(
            listen = %addr,
            "the gRPC listener is open to the network with auth.mode = \"none\": any host that reaches it can report for any VM; set up certificates or tokens (docs/security.md)"
        ),
        config::AuthMode::Token if config.tls.is_none() && !config.auth.allow_plaintext_tokens => {
            warn!(
                listen = %addr,
                "auth.mode = \"token\" without [tls]: tokens sent in clear from other machines will be refused; add [tls] (docs/security.md)"
            )
        }
        _ => {}
    }
}

/// Binds and serves `config` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Collector::bind(config).await?.serve(shutdown).await
}
