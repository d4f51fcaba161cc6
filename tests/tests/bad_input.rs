//! Bad input at the gRPC edge: each bad client gets a clear status, is counted by
//! reason, and a healthy agent on the same collector does not notice.

use prost::Message;
use rally_proto::v1::{AgentMessage, Hello, Report, agent_message::Kind};
use rally_tests::rally::{Agent, Collector};
use rally_tests::{eventually, raw};
use std::time::Duration;
use tonic::Code;

fn rejected(metrics: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("rally_collector_reports_rejected_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn last_seq(c: &Collector, id: &str) -> u64 {
    let vms = c.vms().await;
    vms["vms"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["vm"] == id))
        .and_then(|v| v["reports"]["last_seq"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_clients_are_rejected_counted_and_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), "[ingest]\nmax_message_bytes = 65536\n").await;
    let healthy = Agent::start(dir.path(), "healthy", &[collector.grpc_url()], "200ms", "");
    eventually(
        Duration::from_secs(30),
        "the healthy agent reporting",
        || async { (last_seq(&collector, "healthy").await >= 3).then_some(()) },
    )
    .await;

    // A Report before any Hello.
    let report = AgentMessage {
        kind: Some(Kind::Report(Report {
            seq: 1,
            timestamp_ms: 1,
            ..Default::default()
        })),
    };
    let status = raw::ingest_stream(&collector.grpc_url(), vec![report.encode_to_vec()])
        .await
        .expect_err("a Report before Hello must be refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("Hello"),
        "the status says why: {status:?}"
    );

    // Bytes that are not a protobuf message at all.
    let garbage = vec![0xff; 64];
    let status = raw::ingest_stream(&collector.grpc_url(), vec![garbage])
        .await
        .expect_err("garbage must be refused");
    assert_ne!(status.code(), Code::Ok);
    assert!(!status.message().is_empty(), "{status:?}");

    // A Hello far over the message size limit.
    let mut hello = Hello {
        vm_id: "huge".into(),
        hostname: "huge".into(),
        boot_id: "b".into(),
        run_id: 1,
        ..Default::default()
    };
    hello
        .labels
        .insert("padding".into(), "x".repeat(256 * 1024));
    let big = AgentMessage {
        kind: Some(Kind::Hello(hello)),
    };
    let status = raw::ingest_stream(&collector.grpc_url(), vec![big.encode_to_vec()])
        .await
        .expect_err("an oversized message must be refused");
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );

    let metrics = collector.get("/metrics").await;
    assert_eq!(rejected(&metrics, "no_hello"), 1.0, "{metrics}");
    assert_eq!(rejected(&metrics, "malformed"), 1.0, "{metrics}");
    assert_eq!(rejected(&metrics, "oversized"), 1.0, "{metrics}");

    // The healthy agent went on, on its same stream.
    let before = last_seq(&collector, "healthy").await;
    eventually(
        Duration::from_secs(10),
        "the healthy agent still reporting",
        || async { (last_seq(&collector, "healthy").await >= before + 3).then_some(()) },
    )
    .await;
    let vms = collector.vms().await;
    assert!(
        vms["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["vm"] != "huge"),
        "a rejected client must not appear in the fleet: {vms}"
    );
    drop(healthy);
}
