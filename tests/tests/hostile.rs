//! Hostile peers against the real `rally-collector`: silent connections are closed,
//! running out of descriptors neither spins a core nor silences `/healthz`, one VM
//! cannot take every stream slot, sequence numbers cannot drive the counters, and a
//! gzip-compressed stream is served.

#![allow(clippy::unwrap_used)] // a panic is the test failure report

use std::time::{Duration, Instant};

use rally_proto::v1::ingest_client::IngestClient;
use rally_proto::v1::{
    AgentMessage, CollectorMessage, Hello, Report, agent_message::Kind, collector_message,
};
use rally_tests::eventually;
use rally_tests::rally::Collector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// The HTTP/2 client preface and an empty SETTINGS frame: a well-formed, idle
/// HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The value of the sample of `family` whose labels contain every one of `labels`.
fn sample(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split([' ', '{']).next() == Some(family) && labels.iter().all(|x| l.contains(x))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {family}{labels:?} in /metrics"))
}

/// Waits until the peer closes `stream` (EOF or reset), returning how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the collector kept a silent connection open past {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_never_finish_their_handshake_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "").await;
    // `[listen]` is the harness's; the key goes into its table, and a restart applies it.
    let text = std::fs::read_to_string(&collector.config).unwrap();
    let text = text.replacen("[listen]\n", "[listen]\nhandshake_timeout = \"1s\"\n", 1);
    std::fs::write(&collector.config, text).unwrap();
    collector.kill();
    collector.start_again().await;
    // gRPC: connects and sends nothing, or half the HTTP/2 preface.
    let mut silent = TcpStream::connect(&collector.grpc).await.unwrap();
    let mut half = TcpStream::connect(&collector.grpc).await.unwrap();
    half.write_all(&H2_PREFACE[..10]).await.unwrap();
    // HTTP: request headers that never end.
    let mut slow = TcpStream::connect(&collector.http).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut half, &mut slow] {
        let took = closed_within(stream, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
    }
    let metrics = collector.get("/metrics").await;
    let timeouts = |listener: &str| {
        sample(
            &metrics,
            "rally_collector_connections_closed_total",
            &[
                &format!("listener=\"{listener}\""),
                "reason=\"handshake_timeout\"",
            ],
        )
    };
    assert_eq!(timeouts("grpc"), 2.0, "{metrics}");
    assert_eq!(timeouts("http"), 1.0, "{metrics}");

    // A connection that sends its preface in time stays open.
    let mut polite = TcpStream::connect(&collector.grpc).await.unwrap();
    polite.write_all(H2_PREFACE).await.unwrap();
    let mut buf = [0; 1024];
    let quiet = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match polite.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a connection past its preface was closed");
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_descriptors_neither_spins_nor_silences_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), "").await;
    let pid = collector.process.as_ref().unwrap().pid();
    let limit = open_fds(pid) + 16;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");

    // Many more well-formed, idle HTTP/2 connections than descriptors.
    let mut hogs = Vec::new();
    for _ in 0..limit + 40 {
        let mut s = TcpStream::connect(&collector.grpc).await.unwrap();
        let _ = s.write_all(H2_PREFACE).await;
        hogs.push(s);
    }
    eventually(Duration::from_secs(10), "descriptors exhausted", || async {
        (open_fds(pid) >= limit).then_some(())
    })
    .await;

    // Out of descriptors, the accept loop backs off instead of spinning a core.
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(pid) - before;
    // A spin burns ~300 ticks in 3 s; backing off, a few.
    assert!(
        used < 100,
        "{used} ticks of CPU in 3 s while out of descriptors"
    );

    // The HTTP listener's spare descriptor still lets /healthz answer.
    let client = reqwest::Client::new();
    let healthz = client
        .get(collector.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/healthz answers while descriptors are exhausted");
    assert!(healthz.status().is_success());

    // Once connections close, everything is served again and the errors were counted.
    hogs.truncate(hogs.len().saturating_sub(60));
    let metrics = eventually(Duration::from_secs(10), "/metrics again", || async {
        let r = client
            .get(collector.url("/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    })
    .await;
    assert!(
        sample(
            &metrics,
            "rally_collector_accept_errors_total",
            &["listener=\"grpc\""]
        ) >= 1.0,
        "{metrics}"
    );
    drop(hogs);
}

fn hello(vm: &str, run_id: u64) -> AgentMessage {
    AgentMessage {
        kind: Some(Kind::Hello(Hello {
            vm_id: vm.into(),
            hostname: vm.into(),
            boot_id: "boot".into(),
            run_id,
            ..Default::default()
        })),
    }
}

fn report(seq: u64, dropped: u64) -> AgentMessage {
    AgentMessage {
        kind: Some(Kind::Report(Report {
            seq,
            timestamp_ms: 1,
            dropped,
            ..Default::default()
        })),
    }
}

/// An open agent stream: its sender (kept open) and the collector's replies.
struct Open {
    tx: mpsc::Sender<AgentMessage>,
    replies: Streaming<CollectorMessage>,
}

impl Open {
    async fn start(endpoint: &str, gzip: bool, first: AgentMessage) -> Result<Open, Status> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .unwrap()
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = IngestClient::new(channel);
        if gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let replies = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let mut open = Open { tx, replies };
        // The first ack (the run's watermark) says the Hello was taken.
        open.ack().await?;
        Ok(open)
    }

    /// The next acknowledged sequence number, or the status that ended the stream.
    async fn ack(&mut self) -> Result<u64, Status> {
        let reply = tokio::time::timeout(Duration::from_secs(10), self.replies.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no reply in 10 s"))??;
        match reply.and_then(|m| m.kind) {
            Some(collector_message::Kind::Ack(ack)) => Ok(ack.seq),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn send(&mut self, m: AgentMessage) -> Result<u64, Status> {
        self.tx.send(m).await.unwrap();
        self.ack().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_vm_cannot_take_every_stream_slot() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(
        dir.path(),
        "[ingest]\nmax_streams = 4\nmax_streams_per_vm = 2\n",
    )
    .await;
    let url = collector.grpc_url();
    let _a = Open::start(&url, false, hello("greedy", 1)).await.unwrap();
    let _b = Open::start(&url, false, hello("greedy", 2)).await.unwrap();
    let refused = Open::start(&url, false, hello("greedy", 3))
        .await
        .err()
        .expect("a third stream for one VM is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_streams_per_vm"),
        "{refused:?}"
    );
    // Another VM still gets in.
    let mut other = Open::start(&url, false, hello("other", 1)).await.unwrap();
    assert_eq!(other.send(report(1, 0)).await.unwrap(), 1);
    let metrics = collector.get("/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "rally_collector_reports_rejected_total",
            &["reason=\"vm_streams\""]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sequence_jumps_and_huge_drop_counts_cannot_drive_the_counters() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), "").await;
    let mut s = Open::start(&collector.grpc_url(), false, hello("jumpy", 1))
        .await
        .unwrap();
    assert_eq!(s.send(report(1, u64::MAX)).await.unwrap(), 1);
    let jump = 1 + (1 << 63);
    assert_eq!(s.send(report(jump, u64::MAX)).await.unwrap(), jump);
    assert_eq!(s.send(report(u64::MAX, 0)).await.unwrap(), u64::MAX);
    let metrics = collector.get("/metrics").await;
    assert_eq!(
        sample(&metrics, "rally_collector_reports_lost_total", &[]),
        0.0,
        "a jump is no loss"
    );
    assert_eq!(
        sample(&metrics, "rally_collector_seq_jumps_total", &[]),
        2.0
    );
    let dropped = sample(
        &metrics,
        "rally_vm_agent_dropped_reports_total",
        &["vm=\"jumpy\""],
    );
    assert!(
        dropped >= 1.8e19,
        "dropped = 2^64-1 twice saturates: {dropped}"
    );
    // The collector is still there (a debug build panicked on the add before).
    assert_eq!(sample(&metrics, "rally_collector_reports_total", &[]), 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_compressed_stream_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), "").await;
    let mut s = Open::start(&collector.grpc_url(), true, hello("zipped", 1))
        .await
        .expect("a gzip stream is accepted");
    for seq in 1..=3 {
        assert_eq!(s.send(report(seq, 0)).await.unwrap(), seq);
    }
}
