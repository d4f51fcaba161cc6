//! Shared harness of the collector's integration tests: an in-process collector on
//! loopback ports chosen by the kernel, and a minimal agent speaking `rally.v1`.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rally_collector::Collector;
use rally_collector::clock::Clock;
use rally_collector::config::Config;
use rally_collector::fleet::Fleet;
use rally_collector::ingest::IngestStats;
use rally_proto::v1::ingest_client::IngestClient;
use rally_proto::v1::{self, AgentMessage, CollectorMessage, agent_message, collector_message};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

pub mod etcd;

/// Every wait in these tests is bounded: a hang is a failure, not a stuck CI job.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Running {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub stats: Arc<IngestStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), rally_collector::Error>>>,
    _state: tempfile::TempDir,
}

impl Running {
    /// Stops the collector and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), rally_collector::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("collector stops in time")
            .expect("collector task did not panic")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A config for loopback with kernel-chosen ports; `extra` is appended TOML.
pub fn config(extra: &str, state: &Path) -> Config {
    let source = format!(
        "[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n{extra}",
        state.display()
    );
    Config::from_toml(&source, Path::new("test.toml")).expect("test config is valid")
}

pub async fn start(extra: &str) -> Running {
    start_with(extra, None).await
}

pub async fn start_with(extra: &str, clock: Option<Arc<dyn Clock>>) -> Running {
    let state = tempfile::tempdir().unwrap();
    let config = config(extra, state.path());
    let collector = match clock {
        Some(clock) => Collector::bind_with_clock(config, clock).await,
        None => Collector::bind(config).await,
    }
    .expect("collector binds");
    let (stop, stopped) = oneshot::channel::<()>();
    let grpc = collector.grpc_addr();
    let http = collector.http_addr();
    let fleet = collector.fleet();
    let stats = collector.stats();
    let task = tokio::spawn(collector.serve(async {
        let _ = stopped.await;
    }));
    Running {
        grpc,
        http,
        fleet,
        stats,
        stop: Some(stop),
        task: Some(task),
        _state: state,
    }
}

pub fn hello(vm: &str, run_id: u64) -> v1::Hello {
    v1::Hello {
        vm_id: vm.into(),
        hostname: format!("{vm}.shop.example"),
        agent_version: "0.1.0-test".into(),
        boot_id: "5c2d0a4e-1111-2222-3333-444455556666".into(),
        run_id,
        labels: [("role".to_string(), "web".to_string())].into(),
        size: Some(v1::VmSize {
            vcpus: 2,
            memory_bytes: 4 << 30,
            ..Default::default()
        }),
        interval_ms: 5000,
    }
}

pub fn report(seq: u64, utilization: f64) -> v1::Report {
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    v1::Report {
        seq,
        timestamp_ms: now_ms,
        interval_ms: 5000,
        size: Some(v1::VmSize {
            vcpus: 2,
            memory_bytes: 4 << 30,
            ..Default::default()
        }),
        cpu: Some(v1::CpuTimes {
            user: utilization,
            idle: 1.0 - utilization,
            utilization,
            ..Default::default()
        }),
        load: Some(v1::LoadAverage {
            one: 0.5,
            five: 0.25,
            fifteen: 0.125,
        }),
        memory: Some(v1::Memory {
            total_bytes: 4 << 30,
            available_bytes: 3 << 30,
            swap_total_bytes: 0,
            swap_free_bytes: 0,
        }),
        ..Default::default()
    }
}

pub fn msg_hello(h: v1::Hello) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(h)),
    }
}

pub fn msg_report(r: v1::Report) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Report(r)),
    }
}

/// One agent stream.
pub struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<CollectorMessage>,
}

impl Agent {
    /// Opens a stream whose first messages are `first` (normally one Hello).
    pub async fn open(
        addr: SocketAddr,
        token: Option<&str>,
        first: Vec<AgentMessage>,
    ) -> Result<Self, Status> {
        let mut client = IngestClient::connect(format!("http://{addr}"))
            .await
            .expect("connects");
        let (tx, rx) = mpsc::channel(64);
        for message in first {
            tx.send(message).await.unwrap();
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let response = tokio::time::timeout(WAIT, client.stream(request))
            .await
            .expect("response in time")?;
        Ok(Self {
            tx,
            rx: response.into_inner(),
        })
    }

    /// Opens a stream with a Hello and returns it with the first ack.
    pub async fn connect(addr: SocketAddr, token: Option<&str>, hello: v1::Hello) -> (Self, u64) {
        let mut agent = Self::open(addr, token, vec![msg_hello(hello)])
            .await
            .expect("stream opens");
        let first = agent.next_ack().await.expect("first ack");
        (agent, first)
    }

    pub async fn send(&self, message: AgentMessage) {
        self.tx.send(message).await.expect("stream open");
    }

    pub async fn report(&self, report: v1::Report) {
        self.send(msg_report(report)).await;
    }

    /// The next ack, or the status that ended the stream.
    pub async fn next_ack(&mut self) -> Result<u64, Status> {
        let message = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a reply in time")?;
        match message {
            Some(CollectorMessage {
                kind: Some(collector_message::Kind::Ack(ack)),
            }) => Ok(ack.seq),
            Some(other) => panic!("unexpected reply {other:?}"),
            None => Err(Status::ok("stream ended")),
        }
    }

    /// Reads acks until one reaches `seq` (acks may be coalesced).
    pub async fn ack_at_least(&mut self, seq: u64) -> u64 {
        loop {
            let ack = self.next_ack().await.expect("ack");
            if ack >= seq {
                return ack;
            }
        }
    }

    /// The status that ends the stream (skipping acks).
    pub async fn end_status(&mut self) -> Status {
        loop {
            match self.next_ack().await {
                Ok(_) => continue,
                Err(status) => return status,
            }
        }
    }

    /// Stops sending (half-close).
    pub fn close(self) -> Streaming<CollectorMessage> {
        self.rx
    }
}

/// GETs a URL and returns (status, content type, body).
pub async fn get(url: &str) -> (u16, String, String) {
    let response = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .expect("HTTP in time")
        .expect("HTTP request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// GETs `url` until `ready` accepts the body (bounded by [`WAIT`]).
pub async fn eventually_text(url: &str, ready: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let body = reqwest::get(url).await.unwrap().text().await.unwrap();
        if ready(&body) {
            return body;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting on {url}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pipes `text` into `promtool check metrics`; promtool must be installed.
pub fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed for this test");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
