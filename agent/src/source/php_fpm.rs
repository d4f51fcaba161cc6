//! php-fpm's pool status page in JSON (`/status?json`): accepted connections, the
//! listen queue (requests waiting for a free PHP worker), processes, and the
//! "max children reached" and slow-request counters.

use serde::Deserialize;

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
