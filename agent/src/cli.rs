//! The command line: `rally-agent [--config PATH] [run|check-config|sample|status]`.
//!
//! `--config` is global: every subcommand reads the configuration file (`status` for
//! where the running agent's `status_socket` is).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Rally's agent: samples this VM (CPU, memory, pressure, network, disks) and streams
/// the samples to the Rally collectors.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "rally-agent", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file [default: /etc/rally/agent.toml; missing = defaults].
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Sample and stream to the collectors until SIGTERM or SIGINT (the default).
    Run,
    /// Check the configuration file and exit (non-zero with file, line and key on error).
    CheckConfig,
    /// Take two readings one second apart and print one sample as JSON.
    Sample,
    /// Ask the running agent whether it reaches its collectors: connected or not, last
    /// acknowledgement, reports buffered (non-zero when no agent answers).
    Status {
        /// Print the agent's JSON answer instead of text.
        #[arg(long)]
        json: bool,
        /// The socket to ask [default: `status_socket` of the configuration].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

impl Cli {
    /// The subcommand, `run` when none is given.
    pub fn subcommand(&self) -> Command {
        self.command.clone().unwrap_or(Command::Run)
    }

    /// The configuration file to read, and whether the user named it (a named file must
    /// exist; the default one may be missing).
    pub fn config_path(&self) -> (&Path, bool) {
        match &self.config {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        <Cli as CommandFactory>::command().debug_assert();
    }

    #[test]
    fn run_is_the_default() {
        let cli = Cli::try_parse_from(["rally-agent"]).unwrap();
        assert_eq!(cli.subcommand(), Command::Run);
        assert_eq!(
            cli.config_path(),
            (Path::new("/etc/rally/agent.toml"), false)
        );
    }

    #[test]
    fn config_goes_before_or_after_the_subcommand() {
        for args in [
            vec!["rally-agent", "--config", "/tmp/a.toml", "check-config"],
            vec!["rally-agent", "check-config", "-c", "/tmp/a.toml"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.subcommand(), Command::CheckConfig);
            assert_eq!(cli.config_path(), (Path::new("/tmp/a.toml"), true));
        }
        assert_eq!(
            Cli::try_parse_from(["rally-agent", "sample"])
                .unwrap()
                .subcommand(),
            Command::Sample
        );
    }

    #[test]
    fn status_takes_json_and_a_socket() {
        let cli = Cli::try_parse_from(["rally-agent", "status"]).unwrap();
        assert_eq!(
            cli.subcommand(),
            Command::Status {
                json: false,
                socket: None
            }
        );
        let cli = Cli::try_parse_from([
            "rally-agent",
            "-c",
            "/tmp/a.toml",
            "status",
            "--json",
            "--socket",
            "/tmp/s.sock",
        ])
        .unwrap();
        assert_eq!(
            cli.subcommand(),
            Command::Status {
                json: true,
                socket: Some(PathBuf::from("/tmp/s.sock"))
            }
        );
        assert_eq!(cli.config_path(), (Path::new("/tmp/a.toml"), true));
    }

    #[test]
    fn unknown_subcommand_is_an_error() {
        assert!(Cli::try_parse_from(["rally-agent", "frobnicate"]).is_err());
    }
}
