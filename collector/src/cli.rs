//! The command line: `rally-collector [--config PATH] [run|check-config|demo]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_PATH;

/// Rally collector: receives agents' reports, keeps a windowed picture of every VM,
/// and serves it to Prometheus, scripts and people.
#[derive(Debug, Parser)]
#[command(name = "rally-collector", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A subcommand.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the collector until SIGTERM or SIGINT (the default).
    Run,
    /// Check the configuration file (token files included) and exit; non-zero on error.
    CheckConfig,
    /// Try Rally on this machine without a config file: a collector on loopback and an
    /// agent for this machine, until Ctrl-C.
    Demo(DemoArgs),
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

impl Cli {
    /// The subcommand, `run` when none was given.
    pub fn subcommand(&self) -> Command {
        self.command.clone().unwrap_or(Command::Run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_is_the_default() {
        let cli = Cli::try_parse_from(["rally-collector"]).unwrap();
        assert!(matches!(cli.subcommand(), Command::Run));
        assert_eq!(cli.config, PathBuf::from(DEFAULT_PATH));
    }

    #[test]
    fn config_goes_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["rally-collector", "--config", "/x.toml", "check-config"])
            .unwrap();
        assert!(matches!(cli.subcommand(), Command::CheckConfig));
        assert_eq!(cli.config, PathBuf::from("/x.toml"));
        let cli = Cli::try_parse_from(["rally-collector", "check-config", "--config", "/y.toml"])
            .unwrap();
        assert_eq!(cli.config, PathBuf::from("/y.toml"));
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
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
