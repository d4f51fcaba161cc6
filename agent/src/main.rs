//! `rally-agent`: see the library's documentation.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rally_agent::cli::{Cli, Command};
use rally_agent::config::{self, Config};
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
            println!(
                "{}: ok ({} collector(s), interval {})",
                path.display(),
                config.collectors.len(),
                humantime_serde::re::humantime::format_duration(config.interval)
            );
            Ok(())
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
            println!("{json}");
            Ok(())
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
                rally_agent::run(config, shutdown)
                    .await
                    .context("running the agent")
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
