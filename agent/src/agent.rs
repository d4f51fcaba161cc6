//! One agent run: identity, the sampling loop, and a stream task per collector.
//!
//! The sampling loop is the only producer: every interval it samples, encodes the report
//! once, appends it to every collector's buffer and bumps a watch that wakes the
//! streams. Nothing in it waits on a network. All tasks are futures polled by `run`'s
//! own future (none is spawned), so the agent works on any tokio runtime and stops by
//! being dropped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Config, InvalidValue};
use crate::sample::{Sample, Sampler};
use crate::source::Sources;
use crate::tick::Ticker;
use crate::transport::{self, Link, Shared, TokenError};
use crate::wire::{self, Identity};

/// Why the agent could not start. Once running, it only stops when told to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(#[from] InvalidValue),
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
    #[error("token: {0}")]
    Token(#[from] TokenError),
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    config.validate()?;
    if let Some(path) = &config.token_file {
        // Fail at start rather than on every reconnect; it is re-read at each connect.
        transport::read_token(path)?;
    }
    let identity = identity(&config)?;
    tracing::info!(
        vm_id = %identity.vm_id,
        run_id = identity.run_id,
        collectors = ?config.collectors,
        interval = ?config.interval,
        "rally-agent starting"
    );

    let (interval, interval_rx) = watch::channel(config.interval);
    let shared = Arc::new(Shared {
        identity,
        token_file: config.token_file.clone(),
        interval,
        size: Mutex::new(None),
    });
    let links: Vec<Arc<Link>> = config
        .collectors
        .iter()
        .map(|address| Arc::new(Link::new(address.clone(), config.buffer_reports)))
        .collect();
    let (seqs, seqs_rx) = watch::channel(0u64);

    let sampler = Sampler::new(&config.root);
    let sources = sources(&config)?;
    let sampling = sample_forever(sampler, sources, &links, &shared, seqs, interval_rx);
    let streams =
        futures_util::future::join_all(links.iter().map(|link| {
            transport::maintain(Arc::clone(link), Arc::clone(&shared), seqs_rx.clone())
        }));
    tokio::select! {
        () = shutdown => tracing::info!("rally-agent stopping"),
        () = sampling => {}
        _ = streams => {}
    }
    Ok(())
}

/// Samples at once (the report without CPU shares that primes the counters), then every
/// interval, appending each report to every link's buffer.
async fn sample_forever(
    mut sampler: Sampler,
    mut sources: Sources,
    links: &[Arc<Link>],
    shared: &Shared,
    seqs: watch::Sender<u64>,
    mut interval: watch::Receiver<Duration>,
) {
    let mut period = *interval.borrow_and_update();
    let mut ticker = Ticker::new(period, period);
    let mut seq = 0u64;
    loop {
        let taken = Instant::now();
        let mut sample = sampler.sample();
        // Web-server sources are read concurrently, each within its timeout (shorter
        // than the interval); the streams keep running meanwhile.
        sample.sources = sources.sample().await;
        seq += 1;
        *shared.size.lock().unwrap_or_else(PoisonError::into_inner) = sample.size;
        let report = wire::encode_report(seq, &sample);
        for link in links {
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

        // Wait for the next sample; a new interval from a collector applies from the
        // sample just taken.
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

/// The configured web-server sources.
fn sources(config: &Config) -> Result<Sources, Error> {
    Sources::new(&config.sources).map_err(|message| {
        Error::Config(InvalidValue {
            key: "sources",
            message,
        })
    })
}

/// Two readings `pause` apart and the second as one sample, sources included (for
/// `rally-agent sample`).
pub async fn sample_once(config: &Config, pause: Duration) -> Result<Sample, Error> {
    config.validate()?;
    let mut sampler = Sampler::new(&config.root);
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
