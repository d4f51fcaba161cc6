//! `rally-collector`: see the library's documentation.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rally_collector::cli::{Cli, Command};
use rally_collector::config::Config;
use sd_notify::NotifyState;
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
            let config_copy = config.clone();
            runtime()?.block_on(async {
                let shutdown = shutdown_signal()?;
                let stopping = async {
                    shutdown.await;
                    notify(&[NotifyState::Stopping]);
                };
                let collector = rally_collector::Collector::bind(config)
                    .await
                    .context("starting the collector")?;
                // Both listeners are bound and the store is open (the unit is
                // Type=notify); connections queue until `serve` accepts them.
                notify(&[NotifyState::Ready]);
                let (config_tx, config_rx) = tokio::sync::watch::channel(config_copy);
                let reloads = reload_on_hangup(&cli.config, config_tx)?;
                tokio::select! {
                    result = collector.serve_live(config_rx, stopping) => {
                        result.context("running the collector")
                    }
                    () = reloads => Ok(()),
                }
            })
        }
        Command::Demo(args) => runtime()?.block_on(async {
            rally_collector::demo::run(args, shutdown_signal()?)
                .await
                .context("running the demo")
        }),
        operator @ (Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Resize { .. }
        | Command::Decisions(_)
        | Command::Groups { .. }) => runtime()?.block_on(operate(operator)),
    }
}

/// The subcommands that call a running collector's API.
async fn operate(command: Command) -> anyhow::Result<()> {
    use rally_collector::cli::time_arg;
    use rally_collector::client::{Client, format_decisions, format_groups};
    let client = |api: &rally_collector::cli::ApiArgs| {
        Client::new(&api.url, api.token_file.as_deref()).context("preparing the API client")
    };
    match command {
        Command::Pause { group, api } => {
            client(&api)?.pause(&group).await.context("pause")?;
            println!("group {group}: paused");
        }
        Command::Resume { group, api } => {
            client(&api)?.resume(&group).await.context("resume")?;
            println!("group {group}: resumed");
        }
        Command::Resize { vm, rung, api } => {
            let d = client(&api)?.resize(&vm, &rung).await.context("resize")?;
            println!(
                "decision {}: {vm} {} {}→{}{}",
                d["id"].as_str().unwrap_or("?"),
                d["direction"].as_str().unwrap_or("?"),
                d["from"]["rung"].as_str().unwrap_or("?"),
                d["to"]["rung"].as_str().unwrap_or("?"),
                if d["dry_run"] == true {
                    " (dry-run: recorded, not sent)"
                } else {
                    ""
                }
            );
        }
        Command::Decisions(args) => {
            let now = chrono::Utc::now();
            let mut query = Vec::new();
            if let Some(g) = args.group {
                query.push(("group", g));
            }
            if let Some(v) = args.vm {
                query.push(("vm", v));
            }
            if let Some(s) = &args.since {
                query.push((
                    "since",
                    time_arg(s, now)
                        .map_err(anyhow::Error::msg)
                        .context("--since")?,
                ));
            }
            if let Some(u) = &args.until {
                query.push((
                    "until",
                    time_arg(u, now)
                        .map_err(anyhow::Error::msg)
                        .context("--until")?,
                ));
            }
            if let Some(l) = args.limit {
                query.push(("limit", l.to_string()));
            }
            let v = client(&args.api)?
                .decisions(&query)
                .await
                .context("decisions")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_decisions(&v));
            }
        }
        Command::Groups { json, api } => {
            let v = client(&api)?.groups().await.context("groups")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_groups(&v));
            }
        }
        Command::Run | Command::CheckConfig | Command::Demo(_) => {
            anyhow::bail!("not an API subcommand")
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rally-collector")
        .build()
        .context("starting the tokio runtime")
}

/// Re-reads the configuration on every SIGHUP (`systemctl reload`) and sends it to the
/// running collector; an invalid file is logged with its file, line and key, and the
/// running configuration stays. Never completes.
fn reload_on_hangup(
    path: &std::path::Path,
    config: tokio::sync::watch::Sender<Config>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + '_> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            // systemd 253+ wants the monotonic time with RELOADING=1; 252 ignores it.
            match NotifyState::monotonic_usec_now() {
                Ok(now) => notify(&[NotifyState::Reloading, now]),
                Err(_) => notify(&[NotifyState::Reloading]),
            }
            match Config::load(path) {
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

/// Tells systemd about a state change; does nothing when `NOTIFY_SOCKET` is unset.
fn notify(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "cannot notify systemd");
    }
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
