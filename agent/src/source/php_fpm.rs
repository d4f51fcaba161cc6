//! php-fpm's pool status page in JSON (`/status?json`): accepted connections, the
//! listen queue (requests waiting for a free PHP worker), processes, and the
//! "max children reached" and slow-request counters, parsed, and the [`Reader`] that
//! turns two readings into rates and gauges.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::http::StatusPage;
use super::rate::{Counter, Delta, own_scrape, restart_reset};
use super::{SourceError, SourceSample};

/// One reading of a pool's status page.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PoolStatus {
    /// Seconds since the pool's master (re)started.
    #[serde(rename = "start since")]
    pub start_since: u64,
    /// Connections accepted by the pool (counter).
    #[serde(rename = "accepted conn")]
    pub accepted_conn: u64,
    /// Requests waiting for a free worker now.
    #[serde(rename = "listen queue")]
    pub listen_queue: u64,
    /// The longest the listen queue has been since start.
    #[serde(rename = "max listen queue")]
    pub max_listen_queue: u64,
    /// The size of the socket's listen queue.
    #[serde(rename = "listen queue len")]
    pub listen_queue_len: u64,
    /// Idle workers.
    #[serde(rename = "idle processes")]
    pub idle_processes: u64,
    /// Busy workers.
    #[serde(rename = "active processes")]
    pub active_processes: u64,
    /// All workers.
    #[serde(rename = "total processes")]
    pub total_processes: u64,
    /// The most busy workers at once since start.
    #[serde(rename = "max active processes")]
    pub max_active_processes: u64,
    /// Times `pm.max_children` was hit (counter).
    #[serde(rename = "max children reached")]
    pub max_children_reached: u64,
    /// Requests slower than `request_slowlog_timeout` (counter).
    #[serde(rename = "slow requests", default)]
    pub slow_requests: u64,
}

/// Parses the JSON status page.
pub fn parse(text: &[u8]) -> Result<PoolStatus, String> {
    serde_json::from_slice(text).map_err(|e| format!("not a php-fpm ?json status page: {e}"))
}

/// php-fpm pool gauges, and its counters over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhpFpmGauges {
    /// Requests waiting for a free worker.
    pub listen_queue: u64,
    /// The longest listen queue since start.
    pub max_listen_queue: u64,
    /// The socket's listen queue size.
    pub listen_queue_len: u64,
    /// Idle workers.
    pub idle_processes: u64,
    /// Busy workers.
    pub active_processes: u64,
    /// All workers.
    pub total_processes: u64,
    /// The most busy workers at once since start.
    pub max_active_processes: u64,
    /// Times `pm.max_children` was hit during the interval.
    pub max_children_reached: u64,
    /// Slow requests during the interval.
    pub slow_requests: u64,
}

/// Reads a php-fpm pool's `?json` status page, with its counters' previous readings.
#[derive(Debug)]
pub struct Reader {
    page: StatusPage,
    accepted: Counter,
    max_children: Counter,
    slow: Counter,
}

impl Reader {
    /// A reader of `page`; its first reading gives gauges but no rate.
    pub fn new(page: StatusPage) -> Self {
        Self {
            page,
            accepted: Counter::default(),
            max_children: Counter::default(),
            slow: Counter::default(),
        }
    }

    /// Reads the page into `sample`: the request rate and the pool's gauges.
    pub async fn read(&mut self, sample: &mut SourceSample) -> Result<(), SourceError> {
        let now = Instant::now();
        let body = self.page.get().await?;
        let status = parse(&body).map_err(SourceError::Parse)?;
        let reset = restart_reset(Some(status.start_since), self.accepted.since(now));
        sample.set_delta(own_scrape(self.accepted.update(
            status.accepted_conn,
            now,
            reset,
        )));
        let count = |d: Option<Delta>| d.map_or(0, |d| d.count);
        sample.php_fpm = Some(PhpFpmGauges {
            listen_queue: status.listen_queue,
            max_listen_queue: status.max_listen_queue,
            listen_queue_len: status.listen_queue_len,
            idle_processes: status.idle_processes,
            active_processes: status.active_processes,
            total_processes: status.total_processes,
            max_active_processes: status.max_active_processes,
            max_children_reached: count(self.max_children.update(
                status.max_children_reached,
                now,
                reset,
            )),
            slow_requests: count(self.slow.update(status.slow_requests, now, reset)),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_php_fpm_8_output() {
        let text = br#"{"pool":"www","process manager":"dynamic","start time":1700000000,"start since":120,"accepted conn":4711,"listen queue":3,"max listen queue":9,"listen queue len":511,"idle processes":0,"active processes":5,"total processes":5,"max active processes":5,"max children reached":2,"slow requests":1}"#;
        let s = parse(text).unwrap();
        assert_eq!(s.accepted_conn, 4711);
        assert_eq!(
            (s.listen_queue, s.max_listen_queue, s.listen_queue_len),
            (3, 9, 511)
        );
        assert_eq!(
            (s.idle_processes, s.active_processes, s.total_processes),
            (0, 5, 5)
        );
        assert_eq!(
            (s.max_children_reached, s.slow_requests, s.start_since),
            (2, 1, 120)
        );
    }

    #[test]
    fn refuses_the_text_page() {
        assert!(parse(b"pool: www\naccepted conn: 12\n").is_err());
    }
}
