//! The command line: `rally-collector [--config PATH] [run|check-config]`, `demo`, and
//! the operator subcommands that call a running collector's API: `status`, `vms`,
//! `pause`, `resume`, `resize`, `decisions`, `groups`; and `pki`, which makes the TLS
//! certificates.
//!
//! `--config` is offered only where a configuration file is read: `run` (the default
//! subcommand) and `check-config`, before or after the subcommand's name.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::DEFAULT_PATH;

/// Rally collector: receives agents' reports, keeps a windowed picture of every VM,
/// and serves it to Prometheus, scripts and people.
#[derive(Debug, Parser)]
#[command(name = "rally-collector", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file of `run` (the default) and `check-config`
    /// [default: /etc/rally/collector.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The configuration file of a subcommand that reads one.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// The configuration file [default: /etc/rally/collector.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// A subcommand.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the collector until SIGTERM or SIGINT (the default).
    Run(ConfigArgs),
    /// Check the configuration file (token files included) and exit; non-zero on error.
    CheckConfig(ConfigArgs),
    /// Try Rally on this machine without a config file: a collector on loopback and an
    /// agent for this machine, until Ctrl-C.
    Demo(DemoArgs),
    /// Pause a group's resizing (its decisions stop; resizes in flight are still verified).
    Pause {
        /// The group.
        group: String,
        /// Where the collector's API is.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resume a paused group (also closes its circuit breaker and lifts roll stops).
    Resume {
        /// The group.
        group: String,
        /// Where the collector's API is.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resize a VM to a rung now (obeys min/max and one-at-a-time; ignores cooldowns).
    Resize {
        /// The VM.
        vm: String,
        /// The rung (a name from the group's ladder).
        rung: String,
        /// Where the collector's API is.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List resize decisions, newest first, with their outcome.
    Decisions(DecisionsArgs),
    /// Make TLS certificates without an outside PKI: a CA, the collector's server
    /// certificate, one client certificate per VM (keys 0600, certificates 0644).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Show the fleet and every group: members with their rung, CPU and memory, rule
    /// values and timers, paused or circuit open, the resize in flight, the last
    /// decision, why members wait.
    Status {
        /// Print the API's JSON (`groups` and `vms`) instead of text.
        #[arg(long)]
        json: bool,
        /// Where the collector's API is.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List every VM: group, rung, freshness, size, CPU, memory, requests, agent.
    Vms {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Where the collector's API is.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show every group's resize state (paused, circuit, in flight, last decision).
    Groups {
        /// Print the API's JSON instead of one line per group.
        #[arg(long)]
        json: bool,
        /// Where the collector's API is.
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A `pki` subcommand. Files go to `--dir`: `ca.pem`/`ca.key`, `server.pem`/`server.key`,
/// `vms/<id>.pem`/`vms/<id>.key`; none is overwritten without `--force`.
#[derive(Debug, Clone, Subcommand)]
pub enum PkiCommand {
    /// Make the CA (ca.pem, ca.key), valid 10 years by default.
    Ca {
        /// The CA's name (its certificate's common name).
        #[arg(long, default_value = "Rally CA")]
        name: String,
        /// Days of validity.
        #[arg(long, default_value_t = crate::pki::CA_DAYS)]
        days: u32,
        /// Where the files go.
        #[command(flatten)]
        out: PkiOut,
    },
    /// Make the collector's certificate (server.pem, server.key) for the names agents
    /// dial, signed by the CA; valid 2 years by default (never beyond the CA).
    Server {
        /// A DNS name or IP address agents use in `https://<name>:9470` (repeat it).
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Days of validity.
        #[arg(long, default_value_t = crate::pki::LEAF_DAYS)]
        days: u32,
        /// Where the files go.
        #[command(flatten)]
        out: PkiOut,
    },
    /// Make one client certificate per VM (vms/<id>.pem, vms/<id>.key) with the URI SAN
    /// rally://vm/<id>, signed by the CA; valid 2 years by default (never beyond the CA).
    // The text is `--help`'s, where `<id>` is a placeholder, not HTML.
    #[allow(rustdoc::invalid_html_tags)]
    Client {
        /// The VM ids (as in the agents' `vm_id`).
        #[arg(value_name = "VM", required = true)]
        vms: Vec<String>,
        /// Days of validity.
        #[arg(long, default_value_t = crate::pki::LEAF_DAYS)]
        days: u32,
        /// Where the files go.
        #[command(flatten)]
        out: PkiOut,
    },
}

/// Where `pki` writes, and whether it may replace files.
#[derive(Debug, Clone, Args)]
pub struct PkiOut {
    /// The directory of the CA and the certificates.
    #[arg(long, value_name = "DIR", default_value = crate::pki::DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// Where a running collector's HTTP API is, and the token it wants.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The collector's HTTP address.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:9471",
        env = "RALLY_URL"
    )]
    pub url: String,
    /// A file holding the API bearer token (the collector's `[api] token_file`).
    #[arg(long, value_name = "PATH", env = "RALLY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// For an `https://` URL: trust only the CA certificates in this PEM file (the
    /// `ca.pem` of `rally-collector pki`) instead of the system's roots.
    #[arg(long, value_name = "PATH", env = "RALLY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Whether text for people gets colours: only when stdout is a terminal, and never
/// when `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
pub fn colour_wanted(stdout_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Options of `decisions`.
#[derive(Debug, Clone, Args)]
pub struct DecisionsArgs {
    /// Only this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only this VM.
    #[arg(long)]
    pub vm: Option<String>,
    /// Only decided since: an RFC 3339 time or a duration ago ("2h", "1day").
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only decided before: an RFC 3339 time or a duration ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many (default 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Print the API's JSON (with evidence and attempts) instead of one line each.
    #[arg(long)]
    pub json: bool,
    /// Where the collector's API is.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Turns `--since`/`--until` (RFC 3339 or a duration ago) into RFC 3339.
pub fn time_arg(value: &str, now: chrono::DateTime<chrono::Utc>) -> Result<String, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.to_utc().to_rfc3339());
    }
    let ago = humantime::parse_duration(value)
        .map_err(|e| format!("{value:?} is neither an RFC 3339 time nor a duration: {e}"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok((now - ago).to_rfc3339())
}

/// Options of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The gRPC address of the demo collector.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9470")]
    pub grpc: SocketAddr,
    /// The HTTP address of the demo collector.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9471")]
    pub http: SocketAddr,
}

/// `run` or `check-config` without `--config`, and no file at the default path: most
/// likely a first try on a machine without the package's conffile, so say what to do
/// instead of "No such file".
#[derive(Debug, thiserror::Error)]
#[error(
    "no configuration file: {} does not exist. To try Rally on this machine with no \
     setup, run `rally-collector demo`; to use another file, pass `--config PATH`",
    path.display()
)]
pub struct NoConfigFile {
    /// The default path that does not exist.
    pub path: PathBuf,
}

impl Cli {
    /// The subcommand, `run` when none was given.
    pub fn subcommand(&self) -> Command {
        self.command
            .clone()
            .unwrap_or(Command::Run(ConfigArgs::default()))
    }

    /// Refuses what clap alone cannot: `--config` before a subcommand that reads no
    /// configuration file (`rally-collector --config x.toml demo`), or given twice.
    pub fn check(&self) -> Result<(), clap::Error> {
        let Some(before) = &self.config else {
            return Ok(());
        };
        let refuse =
            |message: String| Err(Cli::command().error(ErrorKind::ArgumentConflict, message));
        match &self.command {
            None => Ok(()),
            Some(Command::Run(args) | Command::CheckConfig(args)) => match &args.config {
                Some(after) if after != before => refuse(format!(
                    "--config is given twice ({} and {}); give it once",
                    before.display(),
                    after.display()
                )),
                _ => Ok(()),
            },
            Some(other) => refuse(format!(
                "`{}` reads no configuration file: --config applies to `run` and `check-config` only",
                other.name()
            )),
        }
    }

    /// The configuration file to read, and whether the user named it (`--config`,
    /// before or after the subcommand) or it is the default one.
    pub fn config_path(&self) -> (&Path, bool) {
        let after = match &self.command {
            Some(Command::Run(args) | Command::CheckConfig(args)) => args.config.as_deref(),
            _ => None,
        };
        match after.or(self.config.as_deref()) {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_PATH), false),
        }
    }
}

impl Cli {
    /// The configuration file `run` and `check-config` read: the named one (whose
    /// errors the loader reports), else the default one if it exists.
    pub fn config_file(&self) -> Result<&Path, NoConfigFile> {
        let (path, named) = self.config_path();
        if !named && !path.exists() {
            return Err(NoConfigFile {
                path: path.to_path_buf(),
            });
        }
        Ok(path)
    }
}

impl Command {
    /// The subcommand's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run(_) => "run",
            Command::CheckConfig(_) => "check-config",
            Command::Demo(_) => "demo",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Resize { .. } => "resize",
            Command::Decisions(_) => "decisions",
            Command::Groups { .. } => "groups",
            Command::Status { .. } => "status",
            Command::Vms { .. } => "vms",
            Command::Pki(_) => "pki",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_is_the_default() {
        let cli = Cli::try_parse_from(["rally-collector"]).unwrap();
        assert!(matches!(cli.subcommand(), Command::Run(_)));
        assert_eq!(cli.config_path(), (Path::new(DEFAULT_PATH), false));
        cli.check().unwrap();
        let cli = Cli::try_parse_from(["rally-collector", "--config", "/x.toml"]).unwrap();
        assert!(matches!(cli.subcommand(), Command::Run(_)));
        assert_eq!(cli.config_path(), (Path::new("/x.toml"), true));
    }

    #[test]
    fn config_goes_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["rally-collector", "--config", "/x.toml", "check-config"])
            .unwrap();
        assert!(matches!(cli.subcommand(), Command::CheckConfig(_)));
        assert_eq!(cli.config_path(), (Path::new("/x.toml"), true));
        cli.check().unwrap();
        let cli = Cli::try_parse_from(["rally-collector", "check-config", "--config", "/y.toml"])
            .unwrap();
        assert_eq!(cli.config_path(), (Path::new("/y.toml"), true));
        cli.check().unwrap();
        let cli = Cli::try_parse_from(["rally-collector", "--config", "/x.toml", "run"]).unwrap();
        assert_eq!(cli.config_path(), (Path::new("/x.toml"), true));
        let cli = Cli::try_parse_from([
            "rally-collector",
            "--config",
            "/x.toml",
            "run",
            "--config",
            "/y.toml",
        ])
        .unwrap();
        assert!(cli.check().unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn a_missing_default_file_points_to_demo_and_config() {
        let named =
            Cli::try_parse_from(["rally-collector", "--config", "/nonexistent.toml"]).unwrap();
        assert_eq!(named.config_file().unwrap(), Path::new("/nonexistent.toml"));
        let err = NoConfigFile {
            path: PathBuf::from(DEFAULT_PATH),
        }
        .to_string();
        assert!(
            err.contains("/etc/rally/collector.toml does not exist"),
            "{err}"
        );
        assert!(err.contains("`rally-collector demo`"), "{err}");
        assert!(err.contains("`--config PATH`"), "{err}");
        let bare = Cli::try_parse_from(["rally-collector"]).unwrap();
        assert_eq!(
            bare.config_file().is_err(),
            !Path::new(DEFAULT_PATH).exists()
        );
    }

    #[test]
    fn config_is_not_offered_where_no_file_is_read() {
        for sub in [
            &["demo"][..],
            &["pause", "web"],
            &["resume", "web"],
            &["resize", "web-1", "L"],
            &["decisions"],
            &["groups"],
            &["status"],
            &["vms"],
        ] {
            let after = [&["rally-collector"][..], sub, &["--config", "/x.toml"]].concat();
            assert!(Cli::try_parse_from(&after).is_err(), "{after:?} accepted");
            let before = [&["rally-collector", "--config", "/x.toml"][..], sub].concat();
            let cli = Cli::try_parse_from(&before).unwrap();
            let err = cli.check().unwrap_err().to_string();
            assert!(err.contains("reads no configuration file"), "{err}");
        }
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let has_config = sub.get_arguments().any(|a| a.get_long() == Some("config"));
            let reads_config = matches!(sub.get_name(), "run" | "check-config");
            assert_eq!(has_config, reads_config, "{}", sub.get_name());
        }
    }

    #[test]
    fn demo_addresses_can_be_overridden() {
        let cli =
            Cli::try_parse_from(["rally-collector", "demo", "--http", "127.0.0.1:19471"]).unwrap();
        let Command::Demo(args) = cli.subcommand() else {
            panic!("not demo")
        };
        assert_eq!(args.http, "127.0.0.1:19471".parse().unwrap());
        assert_eq!(args.grpc, "127.0.0.1:9470".parse().unwrap());
    }

    #[test]
    fn operator_subcommands_parse() {
        let cli = Cli::try_parse_from(["rally-collector", "resize", "web-1", "L"]).unwrap();
        let Command::Resize { vm, rung, api } = cli.subcommand() else {
            panic!("not resize")
        };
        assert_eq!((vm.as_str(), rung.as_str()), ("web-1", "L"));
        assert_eq!(api.url, "http://127.0.0.1:9471");
        let cli = Cli::try_parse_from([
            "rally-collector",
            "decisions",
            "--group",
            "web",
            "--since",
            "2h",
            "--url",
            "http://10.0.0.1:9471",
        ])
        .unwrap();
        let Command::Decisions(args) = cli.subcommand() else {
            panic!("not decisions")
        };
        assert_eq!(args.group.as_deref(), Some("web"));
        assert_eq!(args.api.url, "http://10.0.0.1:9471");
    }

    #[test]
    fn pki_subcommands_parse() {
        let cli = Cli::try_parse_from([
            "rally-collector",
            "pki",
            "server",
            "--name",
            "collector.example.org",
            "--name",
            "10.0.0.5",
            "--dir",
            "/tmp/pki",
        ])
        .unwrap();
        let Command::Pki(PkiCommand::Server { names, days, out }) = cli.subcommand() else {
            panic!("not pki server")
        };
        assert_eq!(names, ["collector.example.org", "10.0.0.5"]);
        assert_eq!(
            (days, out.dir, out.force),
            (730, PathBuf::from("/tmp/pki"), false)
        );
        let cli =
            Cli::try_parse_from(["rally-collector", "pki", "client", "web-1", "web-2"]).unwrap();
        let Command::Pki(PkiCommand::Client { vms, out, .. }) = cli.subcommand() else {
            panic!("not pki client")
        };
        assert_eq!(vms, ["web-1", "web-2"]);
        assert_eq!(out.dir, PathBuf::from("/etc/rally/pki"));
        assert!(Cli::try_parse_from(["rally-collector", "pki", "server"]).is_err());
        assert!(Cli::try_parse_from(["rally-collector", "pki", "client"]).is_err());
    }

    #[test]
    fn time_args_are_rfc3339_or_durations_ago() {
        let now: chrono::DateTime<chrono::Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(time_arg("2h", now).unwrap(), "2026-01-01T10:00:00+00:00");
        assert_eq!(
            time_arg("2026-01-01T13:00:00+01:00", now).unwrap(),
            "2026-01-01T12:00:00+00:00"
        );
        assert!(time_arg("yesterday-ish", now).is_err());
    }

    #[test]
    fn status_and_vms_take_the_api_options_and_a_ca_file() {
        let cli = Cli::try_parse_from([
            "rally-collector",
            "status",
            "--url",
            "https://collector.example.org:9471",
            "--ca-file",
            "/etc/rally/pki/ca.pem",
        ])
        .unwrap();
        let Command::Status { json, api } = cli.subcommand() else {
            panic!("not status")
        };
        assert!(!json);
        assert_eq!(api.url, "https://collector.example.org:9471");
        assert_eq!(api.ca_file, Some(PathBuf::from("/etc/rally/pki/ca.pem")));
        let cli = Cli::try_parse_from(["rally-collector", "vms", "--json"]).unwrap();
        let Command::Vms { json, api } = cli.subcommand() else {
            panic!("not vms")
        };
        assert!(json);
        assert_eq!(api.ca_file, None);
        let cli = Cli::try_parse_from(["rally-collector", "pause", "web", "--ca-file", "/ca.pem"])
            .unwrap();
        let Command::Pause { api, .. } = cli.subcommand() else {
            panic!("not pause")
        };
        assert_eq!(api.ca_file, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(false, Some(OsStr::new(""))));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
