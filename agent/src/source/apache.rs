//! Apache `mod_status` in machine-readable form (`/server-status?auto`): the total
//! access counter, busy and idle workers and the scoreboard, parsed, and the [`Reader`]
//! that turns two readings into a request rate (a server restart recognised by its
//! uptime).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::http::StatusPage;
use super::rate::{Counter, own_scrape, restart_reset};
use super::{SourceError, SourceSample};

/// One reading of `server-status?auto`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerStatus {
    /// Requests served (counter; needs `ExtendedStatus On`, the default since 2.3.6).
    pub total_accesses: u64,
    /// Seconds since the server (re)started, when reported.
    pub uptime_seconds: Option<u64>,
    /// Workers serving a request.
    pub busy_workers: u64,
    /// Idle workers.
    pub idle_workers: u64,
    /// Scoreboard slots by state name.
    pub scoreboard: BTreeMap<&'static str, u32>,
}

/// The scoreboard's state letters and their names (mod_status's legend).
const STATES: [(char, &str); 11] = [
    ('_', "waiting"),
    ('S', "starting"),
    ('R', "reading"),
    ('W', "sending"),
    ('K', "keepalive"),
    ('D', "dns"),
    ('C', "closing"),
    ('L', "logging"),
    ('G', "finishing"),
    ('I', "idle_cleanup"),
    ('.', "open"),
];

/// Parses a `server-status?auto` page.
pub fn parse(text: &str) -> Result<ServerStatus, String> {
    let mut status = ServerStatus::default();
    let mut accesses = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("`{key}: {value}`: {e}"))
        };
        match key.trim() {
            "Total Accesses" => accesses = Some(number()?),
            "ServerUptimeSeconds" | "Uptime" => status.uptime_seconds = Some(number()?),
            "BusyWorkers" => status.busy_workers = number()?,
            "IdleWorkers" => status.idle_workers = number()?,
            "Scoreboard" => {
                for c in value.chars() {
                    if let Some((_, name)) = STATES.iter().find(|(letter, _)| *letter == c) {
                        *status.scoreboard.entry(name).or_default() += 1;
                    }
                }
            }
            _ => {}
        }
    }
    status.total_accesses =
        accesses.ok_or("no `Total Accesses:` (not a ?auto page, or ExtendedStatus is off)")?;
    Ok(status)
}

/// Apache gauges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApacheGauges {
    /// Workers serving a request.
    pub busy_workers: u64,
    /// Idle workers.
    pub idle_workers: u64,
    /// Scoreboard slots by state.
    pub scoreboard: BTreeMap<&'static str, u32>,
}

/// Reads an Apache `server-status?auto` page, with the access counter's previous
/// reading.
#[derive(Debug)]
pub struct Reader {
    page: StatusPage,
    accesses: Counter,
}

impl Reader {
    /// A reader of `page`; its first reading gives gauges but no rate.
    pub fn new(page: StatusPage) -> Self {
        Self {
            page,
            accesses: Counter::default(),
        }
    }

    /// Reads the page into `sample`: the request rate and the Apache gauges.
    pub async fn read(&mut self, sample: &mut SourceSample) -> Result<(), SourceError> {
        let now = Instant::now();
        let body = self.page.get().await?;
        let status = parse(&String::from_utf8_lossy(&body)).map_err(SourceError::Parse)?;
        let reset = restart_reset(status.uptime_seconds, self.accesses.since(now));
        sample.set_delta(own_scrape(self.accesses.update(
            status.total_accesses,
            now,
            reset,
        )));
        sample.apache = Some(ApacheGauges {
            busy_workers: status.busy_workers,
            idle_workers: status.idle_workers,
            scoreboard: status.scoreboard,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apache_2_4_output() {
        let text = "127.0.0.1\nServerVersion: Apache/2.4.62 (Debian)\nServerMPM: event\nServer Built: 2024-10-04T15:21:08\nCurrentTime: Monday, 01-Jan-2024 00:00:00 UTC\nRestartTime: Monday, 01-Jan-2024 00:00:00 UTC\nParentServerConfigGeneration: 1\nParentServerMPMGeneration: 0\nServerUptimeSeconds: 3600\nServerUptime: 1 hour\nLoad1: 0.00\nTotal Accesses: 12345\nTotal kBytes: 678\nTotal Duration: 90\nCPUUser: .01\nReqPerSec: 3.42917\nBusyWorkers: 2\nGracefulWorkers: 0\nIdleWorkers: 73\nProcesses: 3\nStopping: 0\nConnsTotal: 1\nConnsAsyncWriting: 0\nConnsAsyncKeepAlive: 0\nConnsAsyncClosing: 0\nScoreboard: __W_K___.....\n";
        let s = parse(text).unwrap();
        assert_eq!(s.total_accesses, 12345);
        assert_eq!(s.uptime_seconds, Some(3600));
        assert_eq!((s.busy_workers, s.idle_workers), (2, 73));
        assert_eq!(s.scoreboard.get("waiting"), Some(&6));
        assert_eq!(s.scoreboard.get("sending"), Some(&1));
        assert_eq!(s.scoreboard.get("keepalive"), Some(&1));
        assert_eq!(s.scoreboard.get("open"), Some(&5));
    }

    #[test]
    fn needs_total_accesses() {
        let err = parse("BusyWorkers: 1\nIdleWorkers: 2\n").unwrap_err();
        assert!(err.contains("ExtendedStatus"), "{err}");
        assert!(parse("Total Accesses: many\n").is_err());
    }
}
