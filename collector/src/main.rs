//! `rally-collector`: see the library's documentation.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rally_collector::cli::{Cli, Command};
use rally_collector::config::Config;
use rally_daemon::{logging, notify, signals};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = cli.check() {
        err.exit();
    }
    logging::init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, journald-friendly.
            eprintln!("rally-collector: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.subcommand() {
        Command::CheckConfig(_) => {
            let path = cli.config_file()?;
            Config::load(path)?;
            println!("{}: OK", path.display());
            Ok(())
        }
        Command::Run(_) => {
            let path = cli.config_file()?;
            let config = Config::load(path)?;
            let config_copy = config.clone();
            runtime()?.block_on(async {
                let stopping = signals::shutdown()?;
                let collector = rally_collector::Collector::bind(config)
                    .await
                    .context("starting the collector")?;
                // Both listeners are bound and the store is open (the unit is
                // Type=notify); connections queue until `serve` accepts them.
                notify::ready();
                let (config_tx, config_rx) = tokio::sync::watch::channel(config_copy);
                let reloads = signals::reload_on_hangup(|| Config::load(path), config_tx)?;
                tokio::select! {
                    result = collector.serve_live(config_rx, stopping) => {
                        result.context("running the collector")
                    }
                    () = reloads => Ok(()),
                }
            })
        }
        Command::Demo(args) => runtime()?.block_on(async {
            rally_collector::demo::run(args, signals::shutdown()?)
                .await
                .context("running the demo")
        }),
        Command::Pki(pki) => make_certificates(pki),
        operator @ (Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Resize { .. }
        | Command::Decisions(_)
        | Command::Groups { .. }
        | Command::Status { .. }
        | Command::Vms { .. }) => runtime()?.block_on(operate(operator)),
    }
}

/// The subcommands that call a running collector's API.
async fn operate(command: Command) -> anyhow::Result<()> {
    use rally_collector::cli::colour_wanted;
    use rally_collector::cli::time_arg;
    use rally_collector::client::fleet::{Paint, format_leader, format_status, format_vms};
    use rally_collector::client::{Client, format_decisions, format_groups};
    use std::io::IsTerminal;
    let client = |api: &rally_collector::cli::ApiArgs| {
        Client::new(&api.url, api.token_file.as_deref(), api.ca_file.as_deref())
            .context("preparing the API client")
    };
    let paint = || {
        Paint::new(colour_wanted(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
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
        Command::Status { json, api } => {
            let client = client(&api)?;
            let groups = client
                .groups()
                .await
                .context("status: reading the groups")?;
            let vms = client.vms().await.context("status: reading the VMs")?;
            let leader = client.leader().await.context("status: reading who leads")?;
            if json {
                let all = serde_json::json!({ "groups": groups["groups"], "vms": vms["vms"], "leader": leader });
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", format_leader(&leader));
                print!("{}", format_status(&groups, &vms, &paint()));
            }
        }
        Command::Vms { json, api } => {
            let v = client(&api)?.vms().await.context("vms")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_vms(&v, &paint()));
            }
        }
        Command::Run(_) | Command::CheckConfig(_) | Command::Demo(_) | Command::Pki(_) => {
            anyhow::bail!("not an API subcommand")
        }
    }
    Ok(())
}

/// `pki`: makes the files and says where they go.
fn make_certificates(command: rally_collector::cli::PkiCommand) -> anyhow::Result<()> {
    use rally_collector::cli::PkiCommand;
    use rally_collector::pki;
    let show = |what: &str, w: &pki::Written| {
        println!("{what}: {} (key: {})", w.cert.display(), w.key.display());
    };
    match command {
        PkiCommand::Ca { name, days, out } => {
            let w = pki::create_ca(&out.dir, &name, days, out.force).context("pki ca")?;
            show("CA", &w);
            println!(
                "Keep {} secret (offline if you can): it signs every certificate. Agents \
                 and the collector need only {}.",
                w.key.display(),
                w.cert.display()
            );
        }
        PkiCommand::Server { names, days, out } => {
            let w = pki::create_server(&out.dir, &names, days, out.force).context("pki server")?;
            show("server", &w);
            println!(
                "In collector.toml: [tls] cert_file = \"{}\", key_file = \"{}\". The service \
                 runs as _rally: chown _rally {} (keep mode 0600).",
                w.cert.display(),
                w.key.display(),
                w.key.display()
            );
        }
        PkiCommand::Client { vms, days, out } => {
            for vm in &vms {
                let w = pki::create_client(&out.dir, vm, days, out.force)
                    .with_context(|| format!("pki client {vm}"))?;
                show(vm, &w);
            }
            println!(
                "Copy each VM's pair and ca.pem to it; in agent.toml: [tls] ca_file, cert_file, \
                 key_file (the key owned by _rally, mode 0600)."
            );
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
