//! The agent against an in-process collector on a real loopback socket: `Hello`,
//! consecutive sequence numbers, and replay of un-acknowledged reports after the
//! collector dies and comes back on the same port.
//!
//! Timeouts below only keep a broken agent from hanging the test; nothing asserts how
//! fast anything happens.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rally_agent::Config;
use rally_proto::v1 as pb;
use rally_proto::v1::ingest_server::{Ingest, IngestServer};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Long enough for any sane machine; only hit when the agent is broken.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Event {
    Hello(Box<pb::Hello>, Option<String>),
    Report(Box<pb::Report>),
}

/// A collector that records what it receives and acknowledges each report while
/// `ack` is set.
struct Recorder {
    events: mpsc::Sender<Event>,
    ack: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Ingest for Recorder {
    type StreamStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let events = self.events.clone();
        let ack = Arc::clone(&self.ack);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                match message.kind {
                    Some(pb::agent_message::Kind::Hello(hello)) => {
                        let _ = events.send(Event::Hello(Box::new(hello), authorization.clone()));
                    }
                    Some(pb::agent_message::Kind::Report(report)) => {
                        let seq = report.seq;
                        let _ = events.send(Event::Report(Box::new(report)));
                        if ack.load(Ordering::SeqCst) {
                            let ack = pb::Ack { seq };
                            let message = pb::CollectorMessage {
                                kind: Some(pb::collector_message::Kind::Ack(ack)),
                            };
                            if tx.send(Ok(message)).await.is_err() {
                                break;
                            }
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A collector in its own runtime on its own thread, so that killing it closes every
/// socket it has, as a crashed process would.
struct Collector {
    addr: SocketAddr,
    events: mpsc::Receiver<Event>,
    ack: Arc<AtomicBool>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Collector {
    fn start(port: u16) -> Self {
        let (events_tx, events) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let ack = Arc::new(AtomicBool::new(true));
        let recorder = Recorder {
            events: events_tx,
            ack: Arc::clone(&ack),
        };
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let serve = tonic::transport::Server::builder().serve_with_incoming(
                    IngestServer::new(recorder),
                    TcpListenerStream::new(listener),
                );
                tokio::select! {
                    result = serve => result.unwrap(),
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops the connection tasks: their sockets close.
            drop(runtime);
        });
        let addr = addr_rx.recv_timeout(PATIENCE).unwrap();
        Self {
            addr,
            events,
            ack,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn next(&self) -> Event {
        self.events
            .recv_timeout(PATIENCE)
            .expect("the agent went quiet")
    }

    fn next_report(&self) -> pb::Report {
        match self.next() {
            Event::Report(r) => *r,
            Event::Hello(h, _) => panic!("unexpected Hello mid-stream: {h:?}"),
        }
    }

    fn hello(&self) -> (pb::Hello, Option<String>) {
        match self.next() {
            Event::Hello(h, auth) => (*h, auth),
            Event::Report(r) => panic!("expected Hello first, got report {}", r.seq),
        }
    }

    fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// `rally_agent::run` on its own current-thread runtime, as `main` runs it.
struct Agent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<(), rally_agent::Error>>>,
}

impl Agent {
    fn start(config: Config) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(rally_agent::run(config, async {
                let _ = stopped.await;
            }))
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap();
        }
    }
}

fn config(addr: SocketAddr, buffer_reports: usize) -> Config {
    Config {
        vm_id: Some("it-vm".into()),
        collectors: vec![format!("http://{addr}")],
        interval: Duration::from_millis(100),
        buffer_reports,
        labels: BTreeMap::from([("role".to_owned(), "test".to_owned())]),
        ..Config::default()
    }
}

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[test]
fn collector_restart_loses_no_report() {
    let collector = Collector::start(0);
    let addr = collector.addr;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "it-token\n").unwrap();
    let agent = Agent::start(Config {
        token_file: Some(token_file),
        ..config(addr, 720)
    });

    let (hello, authorization) = collector.hello();
    assert_eq!(hello.vm_id, "it-vm");
    assert_eq!(hello.hostname, read_proc("/proc/sys/kernel/hostname"));
    assert_eq!(hello.boot_id, read_proc("/proc/sys/kernel/random/boot_id"));
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.interval_ms, 100);
    assert!(hello.size.is_some_and(|s| s.vcpus >= 1), "{:?}", hello.size);
    assert_eq!(hello.labels.get("role").map(String::as_str), Some("test"));
    assert_eq!(authorization.as_deref(), Some("Bearer it-token"));

    // Consecutive reports from 1; the first has no interval and so no CPU shares.
    let first = collector.next_report();
    assert_eq!(first.seq, 1);
    assert_eq!(first.interval_ms, 0);
    assert!(first.cpu.is_none() && first.cores.is_empty());
    let size = first.size.unwrap();
    assert!(size.vcpus >= 1 && size.memory_bytes > 0);
    assert!(first.memory.is_some());
    let second = collector.next_report();
    assert_eq!(second.seq, 2);
    assert!(second.interval_ms > 0);
    let cpu = second.cpu.unwrap();
    assert!((0.0..=1.0).contains(&cpu.utilization));
    assert!(!second.cores.is_empty());
    let mut last = second.seq;
    for _ in 0..3 {
        let r = collector.next_report();
        assert_eq!(r.seq, last + 1, "no gap while connected");
        assert_eq!(r.dropped, 0);
        last = r.seq;
    }

    // The collector stops acknowledging: the agent must keep what it sends from now.
    collector.ack.store(false, Ordering::SeqCst);
    let last_acked = last;
    let mut unacked = Vec::new();
    for _ in 0..5 {
        let r = collector.next_report();
        assert_eq!(r.seq, last + 1);
        last = r.seq;
        unacked.push(r.seq);
    }
    // ... and then dies, taking its sockets with it.
    collector.kill();

    let collector = Collector::start(addr.port());
    let (again, _) = collector.hello();
    assert_eq!(again.run_id, hello.run_id, "same run after a reconnect");
    assert_eq!(again.boot_id, hello.boot_id);
    let replayed = collector.next_report();
    assert!(
        replayed.seq <= last_acked + 1,
        "replay starts at {} but {} was never acknowledged",
        replayed.seq,
        last_acked + 1
    );
    assert_eq!(replayed.dropped, 0);
    let mut seq = replayed.seq;
    // Everything sent to the dead collector comes again, in order, then new reports.
    while seq < last + 5 {
        let r = collector.next_report();
        assert_eq!(r.seq, seq + 1, "replay must have no gap");
        assert_eq!(r.dropped, 0);
        seq = r.seq;
    }
    assert!(unacked.iter().all(|s| *s <= seq));

    agent.stop();
    collector.kill();
}

#[test]
fn full_buffer_drops_the_oldest_and_says_how_many() {
    let collector = Collector::start(0);
    collector.ack.store(false, Ordering::SeqCst);
    let addr = collector.addr;
    let agent = Agent::start(config(addr, 3));

    let _ = collector.hello();
    // Nothing is acknowledged, so with room for 3 the buffer has dropped seq 1..=n-3
    // once report n is out.
    let mut seq = 0;
    while seq < 10 {
        let r = collector.next_report();
        assert_eq!(r.seq, seq + 1);
        seq = r.seq;
    }
    collector.kill();

    let collector = Collector::start(addr.port());
    let _ = collector.hello();
    let first = collector.next_report();
    assert!(first.seq > 1);
    assert_eq!(
        first.dropped,
        first.seq - 1,
        "every report before the oldest buffered one was dropped, and the count says so"
    );
    // The count is reported once: from here on, a gap in seq is exactly what a report
    // says was dropped (normally nothing, as this collector acknowledges).
    let next = collector.next_report();
    assert_eq!(next.seq, first.seq + 1 + next.dropped);

    agent.stop();
    collector.kill();
}
