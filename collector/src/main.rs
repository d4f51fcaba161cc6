//! `rally-collector`: see the library's documentation.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rally_collector::cli::{Cli, Command};
use rally_collector::config::Config;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, journald-friendly.
            eprintln!("rally-collector: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; colour only on a terminal (journald gets plain text); `RUST_LOG`
/// filters, `info` by default.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.subcommand() {
        Command::CheckConfig => {
            Config::load(&cli.config)?;
            println!("{}: OK", cli.config.display());
            Ok(())
        }
        Command::Run => {
            let config = Config::load(&cli.config)?;
            runtime()?.block_on(async {
                rally_collector::run(config, shutdown_signal()?)
                    .await
                    .context("running the collector")
            })
        }
        Command::Demo(args) => runtime()?.block_on(async {
            rally_collector::demo::run(args, shutdown_signal()?)
                .await
                .context("running the demo")
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rally-collector")
        .build()
        .context("starting the tokio runtime")
}

/// Completes on SIGTERM (systemd) or SIGINT (Ctrl-C). The handlers are installed
/// before it returns, so a signal that arrives during startup is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
