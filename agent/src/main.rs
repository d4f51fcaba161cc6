//! `rally-agent`: see the library's documentation.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rally_agent::cli::{Cli, Command};
use rally_agent::config::{self, Config};
use rally_daemon::{logging, notify, signals};
use tokio::sync::watch;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
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
        Command::Status { json, socket } => {
            let path = match socket {
                Some(path) => path,
                None => load(cli)?.status_socket,
            };
            if path.as_os_str().is_empty() {
                anyhow::bail!(
                    "status_socket is \"\" in the configuration: this agent answers no status"
                );
            }
            let status = rally_agent::status::query(&path)?;
            if json {
                let json =
                    serde_json::to_string_pretty(&status).context("encoding the status as JSON")?;
                print(&format!("{json}\n"))
            } else {
                print(&rally_agent::status::format(&status))
            }
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
                let stopping = signals::shutdown()?;
                let (config_tx, config_rx) = watch::channel(config);
                let reloads = signals::reload_on_hangup(|| load(cli), config_tx)?;
                // READY=1 once the configuration is loaded and the first sample is in
                // the buffers (the unit is Type=notify).
                let agent = rally_agent::agent::run_live(config_rx, stopping, || {
                    notify::ready();
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

/// Writes `text` to stdout; a reader that went away (`rally-agent sample | head`) ends
/// the output quietly instead of failing.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}
