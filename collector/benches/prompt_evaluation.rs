//! From the report that completes a rule's `for` to the actuator's request, in real time.
//!
//! An in-process collector (loopback ports, state in a temporary directory) with a
//! webhook actuator whose receiver, in the same process, records when each request
//! arrives. The engine tick is an hour, so only the prompt evaluation a report triggers
//! can act. Each trial uses a group of its own (one VM, rule `cpu_utilization last >=
//! 0.9 for 2s`): a loaded report starts the rule's timer, nothing is sent for
//! `for` + 300 ms, then one more loaded report completes `for`. The figure is the time
//! from sending that report (gRPC, over loopback) to the webhook reaching the receiver:
//! ingest, the wake-up, the evaluation, the decision written to SQLite (synchronous),
//! the dispatcher and the signed HTTP request.
//!
//! Run: `cargo bench -p rally-collector --bench prompt_evaluation`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure is a panic

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rally_collector::Collector;
use rally_collector::config::Config;
use rally_proto::v1::ingest_client::IngestClient;
use rally_proto::v1::{self, AgentMessage, agent_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TRIALS: usize = 20;
/// The rule's `for`.
const HOLD: Duration = Duration::from_secs(2);
/// Silence after the first loaded report, beyond `for`.
const PAST_HOLD: Duration = Duration::from_millis(300);
const GIB: u64 = 1 << 30;

/// When each webhook request arrived, with its VM.
type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

async fn receiver() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(arrivals): axum::extract::State<Arrivals>,
                 body: axum::body::Bytes| async move {
                    let at = Instant::now();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let vm = v["vm"].as_str().unwrap_or_default().to_owned();
                    arrivals.lock().unwrap().push((vm, at));
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(Arc::clone(&arrivals));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), arrivals)
}

fn config(state: &Path, url: &str) -> Config {
    let secret = state.join("webhook.secret");
    std::fs::write(&secret, "bench-secret\n").unwrap();
    let mut toml = format!(
        r#"
[listen]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
[state]
dir = "{state}"
[engine]
tick = "1h"
[actuator]
kind = "webhook"
url = "{url}"
secret_file = "{secret}"
"#,
        state = state.display(),
        secret = secret.display(),
    );
    for trial in 0..TRIALS {
        toml.push_str(&format!(
            r#"
[[groups]]
name = "g{trial}"
vms = ["vm-{trial}"]
dry_run = false
targets = []
ladder = [
  {{ name = "M", vcpus = 2, memory_bytes = {m} }},
  {{ name = "L", vcpus = 4, memory_bytes = {l} }},
]
[[groups.rules]]
metric = "cpu_utilization"
window = "last"
threshold = 0.9
clear = 0.5
for = "{hold}s"
"#,
            m = 4 * GIB,
            l = 8 * GIB,
            hold = HOLD.as_secs(),
        ));
    }
    Config::from_toml(&toml, Path::new("bench.toml")).expect("the bench config is valid")
}

fn size() -> Option<v1::VmSize> {
    Some(v1::VmSize {
        vcpus: 2,
        memory_bytes: 4 * GIB,
        ..Default::default()
    })
}

fn report(seq: u64, utilization: f64) -> AgentMessage {
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    AgentMessage {
        kind: Some(agent_message::Kind::Report(v1::Report {
            seq,
            timestamp_ms: now_ms,
            interval_ms: 1000,
            size: size(),
            cpu: Some(v1::CpuTimes {
                user: utilization,
                idle: 1.0 - utilization,
                utilization,
                ..Default::default()
            }),
            memory: Some(v1::Memory {
                total_bytes: 4 * GIB,
                available_bytes: 3 * GIB,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            }),
            ..Default::default()
        })),
    }
}

/// An agent stream for `vm`; the returned task drains the acks.
async fn agent(grpc: SocketAddr, vm: &str) -> mpsc::Sender<AgentMessage> {
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(v1::Hello {
            vm_id: vm.into(),
            hostname: vm.into(),
            agent_version: "bench".into(),
            boot_id: "5c2d0a4e-1111-2222-3333-444455556666".into(),
            run_id: 1,
            size: size(),
            interval_ms: 1000,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut acks = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = acks.message().await {} });
    tx
}

async fn trial(grpc: SocketAddr, arrivals: &Arrivals, n: usize) -> Duration {
    let vm = format!("vm-{n}");
    let tx = agent(grpc, &vm).await;
    for seq in 1..=3 {
        tx.send(report(seq, 0.2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the gap between two prompted evaluations: this one starts the rule's timer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(report(4, 0.97)).await.unwrap();
    tokio::time::sleep(HOLD + PAST_HOLD).await;
    assert!(
        !arrivals.lock().unwrap().iter().any(|(v, _)| *v == vm),
        "a request before the report that completes `for`"
    );
    let sent = Instant::now();
    tx.send(report(5, 0.97)).await.unwrap();
    let deadline = sent + Duration::from_secs(30);
    loop {
        if let Some((_, at)) = arrivals.lock().unwrap().iter().find(|(v, _)| *v == vm) {
            return at.duration_since(sent);
        }
        assert!(Instant::now() < deadline, "no request for {vm} within 30 s");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, in debug.
    let state = tempfile::tempdir().unwrap();
    let (url, arrivals) = receiver().await;
    let collector = Collector::bind(config(state.path(), &url)).await.unwrap();
    let grpc = collector.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(collector.serve(async {
        let _ = stopped.await;
    }));
    let mut figures = Vec::with_capacity(TRIALS);
    for n in 0..TRIALS {
        figures.push(trial(grpc, &arrivals, n).await);
    }
    figures.sort();
    println!(
        "report completing `for` -> webhook request: p50 {:.1} ms, max {:.1} ms, min {:.1} ms \
         ({TRIALS} trials; engine tick 1 h, so every one was prompted by the report)",
        ms(figures[TRIALS / 2]),
        ms(figures[TRIALS - 1]),
        ms(figures[0]),
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
