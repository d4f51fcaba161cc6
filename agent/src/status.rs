//! `rally-agent status`: whether this VM's agent reaches its collectors, what it has
//! buffered, when each collector last acknowledged a report.
//!
//! The running agent answers on a Unix socket (`status_socket`, by default
//! `/run/rally-agent/status.sock`, in the directory systemd makes for the unit's
//! `RuntimeDirectory=`): a client connects, the agent writes one JSON [`AgentStatus`] and
//! closes. Nothing is written or computed until someone connects, so the answer costs no
//! CPU the rest of the time: the streams only store a few numbers as they go
//! ([`LinkState`]), and the socket's accept is one more future on the agent's one thread.
//!
//! A socket that cannot be made never stops the agent: without its directory (an agent
//! started outside systemd) it is left out quietly, and a socket another live agent
//! answers on is left alone, with a warning.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixListener;

/// Where the packaged agent answers (`/run/rally-agent`: the unit's `RuntimeDirectory`).
pub const DEFAULT_SOCKET: &str = "/run/rally-agent/status.sock";

/// How long a client may take to read the answer before the agent drops it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long `rally-agent status` waits for the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a running agent says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The VM's id in the fleet.
    pub vm_id: String,
    /// The agent's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// When it started (Unix seconds).
    pub started_at_seconds: f64,
    /// The agent's clock when it answered (Unix seconds): ages are counted from it.
    pub now_seconds: f64,
    /// The sampling interval in force, seconds.
    pub interval_seconds: f64,
    /// When the latest sample was taken (Unix seconds); `None` before the first.
    pub last_sample_at_seconds: Option<f64>,
    /// Each collector it reports to.
    pub collectors: Vec<CollectorStatus>,
}

/// One collector as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectorStatus {
    /// The collector's address (`collectors` in `agent.toml`).
    pub address: String,
    /// A stream is open to it.
    pub connected: bool,
    /// Since when that stream is open (Unix seconds).
    pub connected_since_seconds: Option<f64>,
    /// When it last acknowledged reports (Unix seconds); `None`: not since the start.
    pub last_ack_at_seconds: Option<f64>,
    /// The highest sequence number it acknowledged.
    pub acked_seq: u64,
    /// Reports waiting for its acknowledgement.
    pub buffered: u64,
    /// Reports dropped from its full buffer since the start.
    pub dropped_total: u64,
    /// Streams tried again after a failed one since the start.
    pub reconnects: u64,
    /// Why the latest stream failed, if one did.
    pub last_error: Option<String>,
}

/// What a stream records of itself as it goes: a few stores per event, read only when
/// someone asks.
#[derive(Debug, Default)]
pub struct LinkState {
    /// When the open stream opened (Unix milliseconds); 0: none open.
    connected_since_ms: AtomicU64,
    /// When the latest acknowledgement came (Unix milliseconds); 0: none yet.
    last_ack_ms: AtomicU64,
    /// The highest sequence number acknowledged.
    acked_seq: AtomicU64,
    /// Why the latest stream failed.
    last_error: Mutex<Option<String>>,
}

impl LinkState {
    /// A stream is open.
    pub fn opened(&self) {
        self.connected_since_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// The collector acknowledged every report up to `seq`.
    pub fn acked(&self, seq: u64) {
        self.last_ack_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        self.acked_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// The stream ended (or could not open) because of `error`.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        self.connected_since_ms.store(0, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }

    /// This collector's part of the answer; the caller adds the buffer's figures.
    pub fn collector(&self, address: &str) -> CollectorStatus {
        let since = self.connected_since_ms.load(Ordering::Relaxed);
        let ack = self.last_ack_ms.load(Ordering::Relaxed);
        CollectorStatus {
            address: address.to_owned(),
            connected: since != 0,
            connected_since_seconds: seconds(since),
            last_ack_at_seconds: seconds(ack),
            acked_seq: self.acked_seq.load(Ordering::Relaxed),
            buffered: 0,
            dropped_total: 0,
            reconnects: 0,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Unix milliseconds of `t` (0 before 1970, which never happens on a running VM).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds as seconds, `None` for 0 (never).
pub fn seconds(ms: u64) -> Option<f64> {
    (ms != 0).then(|| ms as f64 / 1000.0)
}

/// The status socket, bound; removed when dropped (the agent stops).
#[derive(Debug)]
pub struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the status socket at `path`; `None` (logged) when it cannot be had. A stale
/// socket file (no agent behind it) is replaced; a live one is left to its agent.
pub fn bind(path: &Path) -> Option<StatusSocket> {
    if path.as_os_str().is_empty() {
        return None;
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if dir.is_some_and(|d| !d.is_dir()) {
        tracing::info!(
            status_socket = %path.display(),
            "no status socket: its directory does not exist (systemd makes /run/rally-agent for the service); `rally-agent status` will not reach this agent"
        );
        return None;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            tracing::warn!(
                status_socket = %path.display(),
                "no status socket: another running agent answers on it; set `status_socket` to another path"
            );
            return None;
        }
        // Left by an agent that was killed: nobody answers on it.
        let _ = std::fs::remove_file(path);
    }
    match UnixListener::bind(path) {
        Ok(listener) => {
            // The service user's group may ask too (the unit's umask would keep it out).
            use std::os::unix::fs::PermissionsExt as _;
            if let Err(error) =
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            {
                tracing::debug!(%error, "status socket: cannot open it to the group");
            }
            tracing::debug!(status_socket = %path.display(), "status socket listening");
            Some(StatusSocket {
                listener,
                path: path.to_owned(),
            })
        }
        Err(error) => {
            tracing::warn!(status_socket = %path.display(), %error, "no status socket: cannot bind it");
            None
        }
    }
}

/// Answers every connection to `socket` with `answer()` as JSON, forever; without a
/// socket, waits forever (so the caller can always poll it).
pub async fn serve(socket: Option<StatusSocket>, answer: impl Fn() -> AgentStatus) {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    loop {
        match socket.listener.accept().await {
            Ok((mut stream, _)) => {
                let body = match serde_json::to_vec(&answer()) {
                    Ok(body) => body,
                    Err(error) => {
                        tracing::error!(%error, "status: cannot encode the answer");
                        continue;
                    }
                };
                // A client that does not read is dropped rather than waited on.
                let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                    stream.write_all(&body).await?;
                    stream.shutdown().await
                })
                .await;
                if let Ok(Err(error)) = written {
                    tracing::debug!(%error, "status: the client went away");
                }
            }
            Err(error) => {
                // Out of descriptors or similar: try again later instead of spinning.
                tracing::debug!(%error, "status: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why `rally-agent status` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing answers on the socket.
    #[error(
        "cannot reach the agent at {}: {source} (is rally-agent running? its socket is `status_socket` in agent.toml)",
        path.display()
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The answer could not be read or was not an agent's.
    #[error("reading the agent's answer on {}: {detail}", path.display())]
    Answer {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Asks the agent listening on `path` for its status.
pub fn query(path: &Path) -> Result<AgentStatus, QueryError> {
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| QueryError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let answer = |detail: String| QueryError::Answer {
        path: path.to_owned(),
        detail,
    };
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| answer(e.to_string()))?;
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .map_err(|e| answer(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| answer(e.to_string()))
}

/// A duration in words: "200 ms", "45 s", "3 min 5 s", "2 h 10 min", "3 d 4 h".
fn span(seconds: f64) -> String {
    if seconds < 1.0 {
        return format!("{:.0} ms", seconds.max(0.0) * 1000.0);
    }
    let s = seconds as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The answer for people: the agent in one line, then one line per collector.
pub fn format(status: &AgentStatus) -> String {
    let now = status.now_seconds;
    let ago =
        |t: Option<f64>| t.map_or_else(|| "never".to_owned(), |t| format!("{} ago", span(now - t)));
    let mut out = format!(
        "rally-agent {} (pid {}), VM {}: up {}, sampling every {}, last sample {}\n",
        status.version,
        status.pid,
        status.vm_id,
        span(now - status.started_at_seconds),
        span(status.interval_seconds),
        ago(status.last_sample_at_seconds),
    );
    for c in &status.collectors {
        let link = match (c.connected, c.connected_since_seconds) {
            (true, Some(since)) => format!("connected for {}", span(now - since)),
            (true, None) => "connected".to_owned(),
            (false, _) => match &c.last_error {
                Some(error) => format!("NOT CONNECTED ({error})"),
                None => "NOT CONNECTED (connecting)".to_owned(),
            },
        };
        out.push_str(&format!(
            "collector {}: {link}; last ack {}{}; {} report{} buffered, {} dropped, {} reconnect{}\n",
            c.address,
            ago(c.last_ack_at_seconds),
            if c.acked_seq > 0 {
                format!(" (seq {})", c.acked_seq)
            } else {
                String::new()
            },
            c.buffered,
            if c.buffered == 1 { "" } else { "s" },
            c.dropped_total,
            c.reconnects,
            if c.reconnects == 1 { "" } else { "s" },
        ));
    }
    if status.collectors.is_empty() {
        out.push_str("no collectors\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> AgentStatus {
        AgentStatus {
            vm_id: "web-1".into(),
            version: "0.1.0".into(),
            pid: 42,
            started_at_seconds: 1_000.0,
            now_seconds: 8_400.0,
            interval_seconds: 5.0,
            last_sample_at_seconds: Some(8_397.5),
            collectors: vec![
                CollectorStatus {
                    address: "https://c1:9470".into(),
                    connected: true,
                    connected_since_seconds: Some(8_100.0),
                    last_ack_at_seconds: Some(8_398.0),
                    acked_seq: 1480,
                    buffered: 0,
                    dropped_total: 0,
                    reconnects: 1,
                    last_error: Some("cannot connect: refused".into()),
                },
                CollectorStatus {
                    address: "https://c2:9470".into(),
                    connected: false,
                    connected_since_seconds: None,
                    last_ack_at_seconds: None,
                    acked_seq: 0,
                    buffered: 1,
                    dropped_total: 3,
                    reconnects: 7,
                    last_error: Some("cannot connect: refused".into()),
                },
            ],
        }
    }

    #[test]
    fn a_status_reads_as_one_line_per_collector() {
        let out = format(&status());
        assert_eq!(
            out,
            "rally-agent 0.1.0 (pid 42), VM web-1: up 2 h 3 min, sampling every 5 s, last sample 2 s ago\n\
             collector https://c1:9470: connected for 5 min 0 s; last ack 2 s ago (seq 1480); 0 reports buffered, 0 dropped, 1 reconnect\n\
             collector https://c2:9470: NOT CONNECTED (cannot connect: refused); last ack never; 1 report buffered, 3 dropped, 7 reconnects\n"
        );
    }

    #[test]
    fn a_link_records_open_ack_and_failure() {
        let state = LinkState::default();
        let c = state.collector("c");
        assert!(!c.connected && c.last_ack_at_seconds.is_none() && c.last_error.is_none());
        state.opened();
        state.acked(7);
        state.acked(5);
        let c = state.collector("c");
        assert!(c.connected && c.connected_since_seconds.is_some());
        assert_eq!(c.acked_seq, 7);
        assert!(c.last_ack_at_seconds.is_some());
        state.failed(&"the collector closed the stream");
        let c = state.collector("c");
        assert!(!c.connected && c.connected_since_seconds.is_none());
        assert_eq!(
            c.last_error.as_deref(),
            Some("the collector closed the stream")
        );
        assert!(c.last_ack_at_seconds.is_some(), "the last ack is kept");
    }

    #[tokio::test]
    async fn the_socket_answers_json_and_is_removed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        let socket = bind(&path).unwrap();
        assert!(bind(&path).is_none(), "a live socket is left to its agent");
        let mut server = Box::pin(serve(Some(socket), status));
        let client = tokio::task::spawn_blocking({
            let path = path.clone();
            move || query(&path)
        });
        let answer = tokio::select! {
            () = &mut server => unreachable!("the server never ends"),
            answer = client => answer.unwrap().unwrap(),
        };
        assert_eq!(answer, status());
        drop(server);
        assert!(!path.exists(), "the socket file goes with the agent");
        let err = query(&path).unwrap_err().to_string();
        assert!(err.starts_with("cannot reach the agent at "), "{err}");
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_missing_directory_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(bind(&path).is_some(), "nobody answered on the old file");
        assert!(bind(&dir.path().join("missing/status.sock")).is_none());
        assert!(bind(Path::new("")).is_none());
    }
}
