//! Apache `mod_status` in machine-readable form (`/server-status?auto`): the total
//! access counter, busy and idle workers and the scoreboard.

use std::collections::BTreeMap;

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
