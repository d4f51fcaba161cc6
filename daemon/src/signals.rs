//! The signals a daemon obeys: SIGTERM (systemd's stop) and SIGINT (Ctrl-C) end it,
//! SIGHUP (`systemctl reload`) re-reads its configuration.
//!
//! Handlers are installed when these functions return, before the futures are first
//! polled, so a signal that arrives during start-up is not lost.

use std::fmt::Display;
use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::notify;

/// A signal handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing the {signal} handler: {source}")]
pub struct SignalError {
    /// The signal (`SIGTERM`).
    pub signal: &'static str,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn install(
    kind: SignalKind,
    name: &'static str,
) -> Result<tokio::signal::unix::Signal, SignalError> {
    signal(kind).map_err(|source| SignalError {
        signal: name,
        source,
    })
}

/// Completes on the first SIGTERM or SIGINT, after logging it and telling systemd the
/// daemon is stopping.
pub fn shutdown() -> Result<impl Future<Output = ()>, SignalError> {
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        notify::stopping();
    })
}

/// On every SIGHUP, calls `load` and sends the configuration it returns to the running
/// daemon; an error (which should name file, line and key) is logged and the running
/// configuration stays. systemd hears RELOADING then READY around each reload. Never
/// completes.
pub fn reload_on_hangup<T, E, L>(
    mut load: L,
    config: watch::Sender<T>,
) -> Result<impl Future<Output = ()>, SignalError>
where
    E: Display,
    L: FnMut() -> Result<T, E>,
{
    let mut hangup = install(SignalKind::hangup(), "SIGHUP")?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            notify::reloading();
            match load() {
                Ok(new) => {
                    config.send_replace(new);
                }
                Err(error) => tracing::error!(
                    // `{:#}`: an anyhow error's whole chain on one line.
                    error = %format!("{error:#}"),
                    "configuration rejected; keeping the running one"
                ),
            }
            notify::ready();
        }
        std::future::pending::<()>().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Sends SIGHUP to this process and waits until the reload loop has called its
    /// loader `calls` times (signals sent in a burst would merge into one).
    async fn hangup(loads: &AtomicUsize, calls: usize) {
        let me = rustix::process::getpid();
        rustix::process::kill_process(me, rustix::process::Signal::HUP).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while loads.load(Ordering::SeqCst) < calls {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_hangup_reloads_and_a_rejected_file_keeps_the_running_configuration() {
        let (tx, rx) = watch::channel(0u32);
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&loads);
        let mut next = [Ok(1u32), Err("agent.toml:1:1: key `x`: bad"), Ok(3)].into_iter();
        let load = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            next.next().unwrap_or(Ok(0))
        };
        let reloads = tokio::spawn(reload_on_hangup(load, tx).unwrap());
        hangup(&loads, 1).await;
        assert_eq!(*rx.borrow(), 1);
        hangup(&loads, 2).await;
        assert_eq!(
            *rx.borrow(),
            1,
            "a rejected file keeps the running configuration"
        );
        hangup(&loads, 3).await;
        assert_eq!(*rx.borrow(), 3);
        reloads.abort();
    }
}
