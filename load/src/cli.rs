//! The command line, with a bound on everything a run holds.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Most simulated agents in one run.
pub const MAX_AGENTS: usize = 200_000;
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most reports per second one agent sends at a fixed rate.
pub const MAX_RATE: f64 = 10_000.0;
/// Largest window of un-acknowledged reports per agent.
pub const MAX_WINDOW: usize = 65_536;
/// Longest wait at the end of a run for outstanding acks.
pub const MAX_DRAIN: Duration = Duration::from_secs(300);

/// Simulates N Rally agents streaming reports to one collector, and measures it.
#[derive(Debug, Parser)]
#[command(name = "rally-load", version)]
pub struct Cli {
    /// The collector's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9470")]
    pub collector: String,
    /// Simulated agents, each with its own stream, VM id, boot id and run id.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Reports per second per agent (a real agent sends one every 5 s: 0.2).
    #[arg(long, conflicts_with = "flood", default_value_t = 1.0)]
    pub rate: f64,
    /// Send as fast as acknowledgements (--window) and HTTP/2 flow control allow.
    #[arg(long)]
    pub flood: bool,
    /// How long reports are sent, after every stream is open.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The first part of the run whose reports' ack latencies are reported apart
    /// (`warm-up` in the summary), e.g. while the collector first sees each VM.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warm_up: Duration,
    /// Streams multiplexed on one HTTP/2 connection (1: a connection per agent, as
    /// real agents do). The collector accepts 16 streams per connection.
    #[arg(long, default_value_t = 1)]
    pub streams_per_connection: usize,
    /// At most this many reports un-acknowledged per agent; an agent at the limit
    /// waits for an ack.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// The collector's process id: its CPU time and resident memory over the run
    /// are read from /proc.
    #[arg(long)]
    pub collector_pid: Option<u32>,
    /// Acks slower than this are also counted by the second of the run they arrived
    /// in (`slow` in the summary), to match a tail with what the collector was doing.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub slow: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json_file: Option<PathBuf>,
    /// Print a progress line to stderr this often.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub progress: Option<Duration>,
    /// VM ids are `<prefix>-00000`, `<prefix>-00001`, ...
    #[arg(long, default_value = "load")]
    pub vm_prefix: String,
    /// How long one stream may take to open (connect, Hello accepted).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub open_timeout: Duration,
    /// How long opening every stream may take; the run starts then with those open.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub ramp_timeout: Duration,
    /// How long to wait after the run for outstanding acks.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Reopen a lost stream as the real agent does: the same VM and run, after gRPC's
    /// connection backoff (1 s, then × 1.6 with ±20 % jitter, at most 120 s), on a new
    /// connection, sending its un-acknowledged reports again first. A simulated agent
    /// sends no new report while its stream is down. The summary then tells when the
    /// streams came back and how far apart. Without it a lost stream is an error and
    /// its agent stops.
    #[arg(long)]
    pub reconnect: bool,
}

impl Cli {
    /// Refuses a run outside the bounds.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=MAX_AGENTS).contains(&self.agents),
            "--agents must be 1..={MAX_AGENTS}"
        );
        anyhow::ensure!(
            !self.duration.is_zero() && self.duration <= MAX_DURATION,
            "--duration must be more than 0 and at most {}",
            humantime::format_duration(MAX_DURATION)
        );
        anyhow::ensure!(
            self.flood || (self.rate > 0.0 && self.rate <= MAX_RATE),
            "--rate must be more than 0 and at most {MAX_RATE}"
        );
        anyhow::ensure!(
            self.streams_per_connection >= 1,
            "--streams-per-connection must be at least 1"
        );
        anyhow::ensure!(
            (1..=MAX_WINDOW).contains(&self.window),
            "--window must be 1..={MAX_WINDOW}"
        );
        anyhow::ensure!(
            self.drain <= MAX_DRAIN
                && self.open_timeout <= MAX_DURATION
                && self.ramp_timeout <= MAX_DURATION,
            "--drain must be at most {}, --open-timeout and --ramp-timeout at most {}",
            humantime::format_duration(MAX_DRAIN),
            humantime::format_duration(MAX_DURATION)
        );
        Ok(())
    }

    /// Time between one agent's reports; `None` floods.
    pub fn period(&self) -> Option<Duration> {
        (!self.flood).then(|| Duration::from_secs_f64(1.0 / self.rate))
    }

    /// HTTP/2 connections the agents need.
    pub fn connections(&self) -> usize {
        self.agents.div_ceil(self.streams_per_connection)
    }

    /// Sockets open at once at most: with `--reconnect` every reopened stream has a
    /// connection of its own while the shared ones may still be open.
    pub fn sockets(&self) -> usize {
        if self.reconnect {
            self.connections() + self.agents
        } else {
            self.connections()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Cli> {
        let cli = Cli::try_parse_from(std::iter::once("rally-load").chain(args.iter().copied()))?;
        cli.check()?;
        Ok(cli)
    }

    #[test]
    fn agents_share_connections_as_asked() {
        let cli = parse(&["--agents", "33", "--streams-per-connection", "16"]).unwrap();
        assert_eq!(cli.connections(), 3);
        assert_eq!(parse(&["--agents", "5"]).unwrap().connections(), 5);
    }

    #[test]
    fn reconnecting_agents_need_a_socket_each_on_top() {
        let cli = parse(&["--agents", "32", "--streams-per-connection", "16"]).unwrap();
        assert_eq!(cli.sockets(), 2);
        let cli = parse(&[
            "--agents",
            "32",
            "--streams-per-connection",
            "16",
            "--reconnect",
        ])
        .unwrap();
        assert_eq!(cli.sockets(), 34);
    }

    #[test]
    fn rate_and_flood_set_the_period() {
        let cli = parse(&["--rate", "4"]).unwrap();
        assert_eq!(cli.period(), Some(Duration::from_millis(250)));
        assert_eq!(parse(&["--flood"]).unwrap().period(), None);
        assert!(parse(&["--flood", "--rate", "2"]).is_err());
    }

    #[test]
    fn runs_outside_the_bounds_are_refused() {
        for args in [
            &["--agents", "0"][..],
            &["--agents", "1000000"],
            &["--duration", "2h"],
            &["--duration", "0s"],
            &["--rate", "0"],
            &["--streams-per-connection", "0"],
            &["--window", "0"],
            &["--drain", "1h"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }
}
