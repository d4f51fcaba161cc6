//! One agent run: identity, the sampling loop, a stream task per collector, and live
//! reloads of the configuration.
//!
//! The sampling loop is the only producer: every interval it samples, encodes the report
//! once, appends it to every collector's buffer and bumps a watch that wakes the
//! streams. Nothing in it waits on a network. The sampling loop and each stream are
//! tasks of their own, held in [`JoinSet`]s that abort them when `run`'s future is
//! dropped: the agent still stops by being dropped, and a tick wakes only the tasks it
//! concerns. (Polled inside `run`'s `select!`, every wake-up of the sampler also polled
//! the signal handlers, the configuration watch and the status socket: about 10 000
//! instructions per sample.)
//!
//! A reload is a new [`Config`] sent on the watch [`run_live`] reads. What can change
//! live does, without dropping a stream: `interval` (from the next sample),
//! `buffer_reports` (a smaller buffer drops its oldest reports, counted), `collectors`
//! (only the added and removed ones connect or disconnect). `labels`, `token_file` and
//! `[tls]` travel at the start of a stream, so a change re-opens every stream, with the same
//! run id and buffers: nothing is lost or counted twice. `vm_id` and `root` make the
//! agent's identity; changing them (or `status_socket`) needs a restart, so the running
//! values stay and a warning says so.
//!
//! The status socket ([`crate::status`]) is one more future of the run: it costs
//! nothing until someone connects, and then reads what the streams recorded.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::config::{Config, Invalid};
use crate::lowat;
use crate::sample::filesystem::TypeFilter;
use crate::sample::{Sample, Sampler};
use crate::source::Sources;
use crate::status::{self, AgentStatus};
use crate::tick::Ticker;
use crate::transport::{self, Link, Shared, TokenError};
use crate::wire::{self, Identity};

/// Why the agent could not start. Once running, it only stops when told to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(#[from] Invalid),
    /// A file naming this VM or boot could not be read.
    #[error("cannot read {path}: {source}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The token file cannot be used.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// A `[tls]` file cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Runs the agent on `config` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let (_unchanging, config) = watch::channel(config);
    run_live(config, shutdown, || {}).await
}

/// Runs the agent until `shutdown` completes, applying each configuration sent on
/// `config` (a reload: see the module documentation for what changes live). `ready` is
/// called once, when the first sample is in the buffers (systemd's `READY=1`).
pub async fn run_live(
    mut config: watch::Receiver<Config>,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce() + Send + 'static,
) -> Result<(), Error> {
    let started = SystemTime::now();
    let mut current = config.borrow_and_update().clone();
    check(&current)?;
    let identity = identity(&current)?;
    tracing::info!(
        vm_id = %identity.vm_id,
        run_id = identity.run_id,
        collectors = ?current.collectors,
        interval = ?current.interval,
        "rally-agent starting"
    );

    let (interval, interval_rx) = watch::channel(current.interval);
    let shared = Arc::new(Shared {
        identity: Mutex::new(identity),
        token_file: Mutex::new(current.token_file.clone()),
        tls: Mutex::new(current.tls.clone()),
        interval,
        size: Mutex::new(None),
        last_sample_ms: AtomicU64::new(0),
    });
    let (seqs, seqs_rx) = watch::channel(0u64);
    let mut streams = Streams::new(Arc::clone(&shared), seqs_rx);
    for address in &current.collectors {
        streams.start(Arc::new(Link::new(address.clone(), current.buffer_reports)));
    }
    let links = Arc::new(Mutex::new(streams.links()));

    let sampler = sampler(&current);
    let sources = sources(&current)?;
    let mut sampling = JoinSet::new();
    sampling.spawn(sample_forever(
        sampler,
        sources,
        Arc::clone(&links),
        Arc::clone(&shared),
        seqs,
        interval_rx,
        ready,
    ));
    let answering = status::serve(status::bind(&current.status_socket), || {
        agent_status(&shared, &links, started)
    });
    tokio::pin!(shutdown, answering);
    let mut reloads_open = true;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // The loop never ends; a panic in it is this run's.
            Some(ended) = sampling.join_next() => {
                resume_panic(ended);
                break;
            }
            // Never ends: it answers `rally-agent status` for the whole run.
            () = &mut answering => {}
            // A stream task ends only when a reload stopped it; nothing to do.
            Some(ended) = streams.tasks.join_next() => resume_panic(ended),
            changed = config.changed(), if reloads_open => {
                if changed.is_err() {
                    // Nobody can send a new configuration any more.
                    reloads_open = false;
                    continue;
                }
                let new = config.borrow_and_update().clone();
                if let Err(error) = check(&new) {
                    tracing::error!(%error, "new configuration rejected; keeping the running one");
                    continue;
                }
                current = reload(current, new, &shared, &mut streams);
                *links.lock().unwrap_or_else(PoisonError::into_inner) = streams.links();
            }
        }
    }
    tracing::info!("rally-agent stopping");
    Ok(())
}

/// Carries a task's panic on into the run, as when the task was polled in place.
fn resume_panic(ended: Result<(), JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// What `rally-agent status` is told: read from what the sampler and the streams
/// recorded, only when asked.
fn agent_status(
    shared: &Shared,
    links: &Mutex<Vec<Arc<Link>>>,
    started: SystemTime,
) -> AgentStatus {
    let links = links.lock().unwrap_or_else(PoisonError::into_inner).clone();
    AgentStatus {
        vm_id: shared
            .identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .vm_id
            .clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at_seconds: status::unix_ms(started) as f64 / 1000.0,
        now_seconds: status::unix_ms(SystemTime::now()) as f64 / 1000.0,
        interval_seconds: shared.interval.borrow().as_secs_f64(),
        last_sample_at_seconds: status::seconds(shared.last_sample_ms.load(Ordering::Relaxed)),
        collectors: links.iter().map(|link| link.status()).collect(),
    }
}

/// What must hold before a configuration is used: valid values, a readable token.
fn check(config: &Config) -> Result<(), Error> {
    config.validate()?;
    if let Some(path) = &config.token_file {
        // Fail at start (or reload) rather than on every reconnect; it is re-read at
        // each connect, so a token rotated in place is picked up by the next stream.
        transport::read_token(path)?;
    }
    // Readable and parsable now; dates are checked at each connection.
    crate::tls::ClientTls::load(&config.tls)?;
    Ok(())
}

/// Applies `new` over `current` (both checked) and returns what is now in force.
fn reload(current: Config, mut new: Config, shared: &Shared, streams: &mut Streams) -> Config {
    let restart_needed = |key: &str| {
        tracing::warn!(
            key,
            "changing `{key}` needs a restart (systemctl restart rally-agent); keeping the running value"
        );
    };
    if new.vm_id != current.vm_id {
        restart_needed("vm_id");
        new.vm_id.clone_from(&current.vm_id);
    }
    if new.root != current.root {
        restart_needed("root");
        new.root.clone_from(&current.root);
    }
    if new.status_socket != current.status_socket {
        restart_needed("status_socket");
        new.status_socket.clone_from(&current.status_socket);
    }
    // Sources hold open log files and counters; swapping them live would lose the
    // interval in progress, so a change waits for a restart like the identity.
    if new.sources != current.sources {
        restart_needed("sources");
        new.sources.clone_from(&current.sources);
    }
    if new.filesystem_exclude_types != current.filesystem_exclude_types {
        restart_needed("filesystem_exclude_types");
        new.filesystem_exclude_types
            .clone_from(&current.filesystem_exclude_types);
    }
    if new.interval != current.interval {
        shared.interval.send_replace(new.interval);
        tracing::info!(interval = ?new.interval, "sampling interval changed");
    }
    if new.buffer_reports != current.buffer_reports {
        for link in streams.links() {
            let dropped = link.buffer().set_capacity(new.buffer_reports);
            if dropped > 0 {
                tracing::warn!(collector = %link.address, dropped, "buffer shrunk: dropped the oldest un-acknowledged reports");
            }
        }
        tracing::info!(buffer_reports = new.buffer_reports, "buffer size changed");
    }
    let mut reopen = false;
    if new.labels != current.labels {
        shared
            .identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .labels
            .clone_from(&new.labels);
        tracing::info!(labels = ?new.labels, "labels changed; re-opening the streams to send them");
        reopen = true;
    }
    if new.token_file != current.token_file {
        *shared
            .token_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = new.token_file.clone();
        tracing::info!("token_file changed; re-opening the streams to present it");
        reopen = true;
    }
    if new.tls != current.tls {
        *shared.tls.lock().unwrap_or_else(PoisonError::into_inner) = new.tls.clone();
        tracing::info!("[tls] changed; re-opening the streams to use it");
        reopen = true;
    }
    let old: BTreeSet<&String> = current.collectors.iter().collect();
    let wanted: BTreeSet<&String> = new.collectors.iter().collect();
    for gone in old.difference(&wanted) {
        streams.stop(gone);
        tracing::info!(collector = %gone, "collector removed; its stream and buffer are dropped");
    }
    if reopen {
        streams.restart_all();
    }
    for added in wanted.difference(&old) {
        streams.start(Arc::new(Link::new((*added).clone(), new.buffer_reports)));
        tracing::info!(collector = %added, "collector added");
    }
    tracing::info!("configuration reloaded");
    new
}

/// The stream tasks, one per collector, each stoppable on its own.
struct Streams {
    shared: Arc<Shared>,
    seqs: watch::Receiver<u64>,
    /// Each running link with the sender whose drop stops its task.
    running: Vec<(Arc<Link>, oneshot::Sender<()>)>,
    /// The tasks: each ends only when its sender is dropped; dropping the set aborts them.
    tasks: JoinSet<()>,
}

impl Streams {
    fn new(shared: Arc<Shared>, seqs: watch::Receiver<u64>) -> Self {
        Self {
            shared,
            seqs,
            running: Vec::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Starts keeping a stream open to `link`'s collector.
    fn start(&mut self, link: Arc<Link>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = transport::maintain(
            Arc::clone(&link),
            Arc::clone(&self.shared),
            self.seqs.clone(),
        );
        self.tasks.spawn(async move {
            // Dropping the task drops its stream (the collector sees it end).
            tokio::select! {
                () = task => {}
                _ = stopped => {}
            }
        });
        self.running.push((link, stop));
    }

    /// Stops the stream to `address` (its task ends when next polled).
    fn stop(&mut self, address: &str) {
        self.running.retain(|(link, _)| link.address != address);
    }

    /// Re-opens every stream, keeping each link's buffer.
    fn restart_all(&mut self) {
        for (link, stop) in std::mem::take(&mut self.running) {
            drop(stop);
            self.start(link);
        }
    }

    /// The running links, for the sampler.
    fn links(&self) -> Vec<Arc<Link>> {
        self.running
            .iter()
            .map(|(link, _)| Arc::clone(link))
            .collect()
    }
}

/// Samples at once (the report without CPU shares that primes the counters), then every
/// interval, appending each report to every link's buffer. `ready` is called after the
/// first one.
async fn sample_forever(
    mut sampler: Sampler,
    mut sources: Sources,
    links: Arc<Mutex<Vec<Arc<Link>>>>,
    shared: Arc<Shared>,
    seqs: watch::Sender<u64>,
    mut interval: watch::Receiver<Duration>,
    ready: impl FnOnce() + Send + 'static,
) {
    let mut ready = Some(ready);
    let mut period = *interval.borrow_and_update();
    let mut ticker = Ticker::new(period, period);
    let mut seq = 0u64;
    let mut encoder = wire::ReportEncoder::default();
    let mut held_since = None;
    loop {
        let taken = Instant::now();
        let links = links.lock().unwrap_or_else(PoisonError::into_inner).clone();
        read_acknowledgements(&links, period, taken, &mut held_since).await;
        let mut sample = sampler.sample();
        // Web-server sources are read concurrently, each within its timeout (shorter
        // than the interval); the streams keep running meanwhile.
        sample.sources = sources.sample().await;
        seq += 1;
        *shared.size.lock().unwrap_or_else(PoisonError::into_inner) = sample.size;
        shared
            .last_sample_ms
            .store(status::unix_ms(SystemTime::now()), Ordering::Relaxed);
        let report = encoder.encode(seq, &sample);
        for link in &links {
            let mut buffer = link.buffer();
            if buffer.push(seq, report.clone()) {
                let dropped = buffer.dropped_total();
                // The first drop, then one line per buffer's worth, not one per sample.
                if dropped == 1 || dropped % buffer.len() as u64 == 0 {
                    tracing::warn!(
                        collector = %link.address,
                        dropped_total = dropped,
                        "buffer full: dropping the oldest un-acknowledged reports"
                    );
                }
            }
        }
        seqs.send_replace(seq);
        if let Some(ready) = ready.take() {
            ready();
        }

        // Wait for the next sample; a new interval (from a collector or a reload)
        // applies from the sample just taken.
        loop {
            tokio::select! {
                () = ticker.tick() => break,
                changed = interval.changed() => match changed {
                    Ok(()) => {
                        period = *interval.borrow_and_update();
                        ticker.reset((taken + period).saturating_duration_since(Instant::now()), period);
                    }
                    // The sender lives in `Shared` for the whole run.
                    Err(_) => std::future::pending::<()>().await,
                },
            }
        }
    }
}

/// Lets in the acknowledgements that waited in the links' sockets once they have been
/// held for as long as they may be, then holds the next ones back while each stream is
/// steady (see [`crate::lowat`]). `held_since` is when the marks were last raised. A
/// socket option that fails only costs the wake-ups it would save.
async fn read_acknowledgements(
    links: &[Arc<Link>],
    period: Duration,
    now: Instant,
    held_since: &mut Option<Instant>,
) {
    let most_buffered = links.iter().map(|link| link.buffer().len()).max();
    if lowat::hold_on(*held_since, now, period, most_buffered.unwrap_or(0)) {
        return;
    }
    *held_since = None;
    let mut released = false;
    for link in links {
        match link.mark().release() {
            Ok(had_socket) => released |= had_socket,
            Err(error) => tracing::debug!(collector = %link.address, %error, "SO_RCVLOWAT"),
        }
    }
    if !released {
        return;
    }
    // The runtime polls its reactor before it resumes a yielded task: the waiting bytes
    // are then seen, and the connection task reads them whatever the mark becomes.
    tokio::task::yield_now().await;
    if period > lowat::LONGEST_HOLD {
        return;
    }
    for link in links {
        if link.buffer().len() <= lowat::MOST_HELD_REPORTS {
            match link.mark().hold() {
                Ok(true) => *held_since = Some(now),
                Ok(false) => {}
                Err(error) => tracing::debug!(collector = %link.address, %error, "SO_RCVLOWAT"),
            }
        }
    }
}

/// The configured web-server sources.
fn sources(config: &Config) -> Result<Sources, Error> {
    Ok(Sources::new(&config.sources)?)
}

/// The sampler of a configuration: its root and filesystem filter.
fn sampler(config: &Config) -> Sampler {
    Sampler::new(&config.root).with_filesystem_filter(TypeFilter::excluding(
        config.filesystem_exclude_types.iter().cloned(),
    ))
}

/// Two readings `pause` apart and the second as one sample, sources included (for
/// `rally-agent sample`).
pub async fn sample_once(config: &Config, pause: Duration) -> Result<Sample, Error> {
    config.validate()?;
    let mut sampler = sampler(config);
    let mut sources = sources(config)?;
    sampler.sample();
    sources.sample().await;
    tokio::time::sleep(pause).await;
    let mut sample = sampler.sample();
    sample.sources = sources.sample().await;
    Ok(sample)
}

/// Who this agent is: VM id, hostname, boot id and a fresh run id.
fn identity(config: &Config) -> Result<Identity, Error> {
    let proc = config.root.join("proc/sys/kernel");
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| Error::Identity {
                path: path.to_owned(),
                source,
            })
    };
    let hostname_path = proc.join("hostname");
    let hostname = match (read(&hostname_path), &config.vm_id) {
        (Ok(h), _) => h,
        // The hostname is only shown when the VM id is configured.
        (Err(e), Some(_)) => {
            tracing::warn!(error = %e, "no hostname; using the configured vm_id alone");
            String::new()
        }
        (Err(e), None) => return Err(e),
    };
    Ok(Identity {
        vm_id: config.vm_id.clone().unwrap_or_else(|| hostname.clone()),
        hostname,
        boot_id: read(&proc.join("random/boot_id"))?,
        run_id: rand::random(),
        labels: config.labels.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_is_send_so_it_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let future = run(Config::default(), async {});
        assert_send(&future);
    }

    #[test]
    fn identity_defaults_vm_id_to_the_hostname() {
        let id = identity(&Config::default()).unwrap();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(id.vm_id, hostname.trim());
        assert_eq!(id.boot_id.len(), 36, "a UUID: {}", id.boot_id);
        let other = identity(&Config::default()).unwrap();
        assert_ne!(id.run_id, other.run_id, "each run gets its own id");
    }

    #[test]
    fn configured_vm_id_wins_even_without_a_hostname() {
        let root = tempfile::tempdir().unwrap();
        let kernel = root.path().join("proc/sys/kernel/random");
        std::fs::create_dir_all(&kernel).unwrap();
        std::fs::write(kernel.join("boot_id"), "0f0f\n").unwrap();
        let config = Config {
            vm_id: Some("db-1".into()),
            root: root.path().to_owned(),
            ..Config::default()
        };
        let id = identity(&config).unwrap();
        assert_eq!(
            (id.vm_id.as_str(), id.hostname.as_str(), id.boot_id.as_str()),
            ("db-1", "", "0f0f")
        );
        let config = Config {
            vm_id: None,
            ..config
        };
        assert!(matches!(identity(&config), Err(Error::Identity { .. })));
    }

    #[tokio::test]
    async fn an_unusable_config_or_token_is_an_error_at_start() {
        let config = Config {
            buffer_reports: 0,
            ..Config::default()
        };
        assert!(matches!(run(config, async {}).await, Err(Error::Config(_))));
        let config = Config {
            token_file: Some("/nonexistent/rally/token".into()),
            ..Config::default()
        };
        assert!(matches!(run(config, async {}).await, Err(Error::Token(_))));
    }
}
