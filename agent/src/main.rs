//! `rally-agent`: see the library's documentation.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rally_agent::cli::{Cli, Command};
use rally_agent::config::{self, Config};
use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match execute(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line (journald-friendly).
            eprintln!("rally-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: &Cli) -> anyhow::Result<()> {
    match cli.subcommand() {
        Command::CheckConfig => {
            let (path, _) = cli.config_path();
            let config = config::load_config(path)?;
            print(&format!(
                "{}: ok ({} collector(s), interval {})\n",
                path.display(),
                config.collectors.len(),
                humantime_serde::re::humantime::format_duration(config.interval)
            ))
        }
        Command::Sample => {
            let config = load(cli)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            let sample = runtime
                .block_on(rally_agent::agent::sample_once(
                    &config,
                    Duration::from_secs(1),
                ))
                .context("sampling")?;
            let json =
                serde_json::to_string_pretty(&sample).context("encoding the sample as JSON")?;
            print(&format!("{json}\n"))
        }
        Command::Run => {
            let config = load(cli)?;
            // One thread: the agent does microseconds of work every few seconds, and
            // every extra thread costs resident memory (stack, malloc arena).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            runtime.block_on(async {
                let shutdown = shutdown_signal().context("installing signal handlers")?;
                let stopping = async {
                    shutdown.await;
                    notify(&[NotifyState::Stopping]);
                };
                let (config_tx, config_rx) = watch::channel(config);
                let reloads =
                    reload_on_hangup(cli, config_tx).context("installing signal handlers")?;
                // READY=1 once the configuration is loaded and the first sample is in
                // the buffers (the unit is Type=notify).
                let agent = rally_agent::agent::run_live(config_rx, stopping, || {
                    notify(&[NotifyState::Ready]);
                });
                tokio::select! {
                    result = agent => result.context("running the agent"),
                    () = reloads => Ok(()),
                }
            })
        }
    }
}

/// The configuration: the named file, else the default file, else (when the default
/// file does not exist) the built-in defaults.
fn load(cli: &Cli) -> anyhow::Result<Config> {
    let (path, named) = cli.config_path();
    if !named && !path.exists() {
        tracing::info!(path = %path.display(), "no configuration file; using the defaults");
        return Ok(Config::default());
    }
    Ok(config::load_config(path)?)
}

/// Re-reads the configuration on every SIGHUP (`systemctl reload`) and sends it to the
/// running agent; an invalid file is logged with its file, line and key, and the
/// running configuration stays. Never completes.
fn reload_on_hangup(
    cli: &Cli,
    config: watch::Sender<Config>,
) -> std::io::Result<impl std::future::Future<Output = ()> + '_> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            // systemd 253+ wants the monotonic time with RELOADING=1; 252 ignores it.
            match NotifyState::monotonic_usec_now() {
                Ok(now) => notify(&[NotifyState::Reloading, now]),
                Err(_) => notify(&[NotifyState::Reloading]),
            }
            match load(cli) {
                Ok(new) => {
                    config.send_replace(new);
                }
                Err(error) => tracing::error!(
                    error = %format!("{error:#}"),
                    "configuration rejected; keeping the running one"
                ),
            }
            notify(&[NotifyState::Ready]);
        }
        std::future::pending::<()>().await;
    })
}

/// Tells systemd about a state change; does nothing when `NOTIFY_SOCKET` is unset (not
/// started by systemd as Type=notify).
fn notify(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Writes `text` to stdout; a reader that went away (`rally-agent sample | head`) ends
/// the output quietly instead of failing.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Logs to stderr; colours only for a terminal (journald stores raw bytes); `RUST_LOG`
/// filters (default `info`).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
