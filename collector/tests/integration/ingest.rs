//! The ingest edge over real sockets: acks, de-duplication, and every kind of bad
//! input rejected with a clear status and counted, while other streams carry on.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use crate::support;

use rally_collector::fleet::Metric;
use rally_collector::ingest::Reason;
use rally_proto::v1;
use support::{Agent, hello, msg_hello, msg_report, report, start};
use tonic::Code;

#[tokio::test]
async fn reports_are_acked_and_visible_in_the_fleet() {
    let collector = start("").await;
    let (mut agent, first) = Agent::connect(collector.grpc, None, hello("web-1", 7)).await;
    assert_eq!(first, 0, "a run the collector has never seen starts at 0");
    for seq in 1..=3 {
        agent.report(report(seq, 0.25 * seq as f64)).await;
    }
    assert_eq!(agent.ack_at_least(3).await, 3);

    let (latest, counters, streams) = collector
        .fleet
        .with_vm("web-1", |vm| {
            (vm.latest().map(|r| r.seq), vm.counters(), vm.streams())
        })
        .expect("web-1 is in the fleet");
    assert_eq!(latest, Some(3));
    assert_eq!(counters.received, 3);
    assert_eq!(counters.last_seq, 3);
    assert_eq!(streams, 1);
    let util = collector
        .fleet
        .snapshot(std::time::SystemTime::now())
        .into_iter()
        .find(|v| &*v.id == "web-1")
        .and_then(|v| v.latest_values.get(Metric::CpuUtilization));
    assert_eq!(util, Some(0.75));
    assert_eq!(collector.stats.reports(), 3);
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn a_reconnecting_run_is_deduplicated_and_gaps_are_counted_as_lost() {
    let collector = start("").await;
    let (mut agent, _) = Agent::connect(collector.grpc, None, hello("web-1", 7)).await;
    agent.report(report(1, 0.1)).await;
    agent.report(report(2, 0.2)).await;
    assert_eq!(agent.ack_at_least(2).await, 2);
    drop(agent);

    // The same run reconnects: the collector says where it is, the agent replays
    // from before that anyway (it may not have seen the ack), then skips 4 and 5.
    let (mut agent, first) = Agent::connect(collector.grpc, None, hello("web-1", 7)).await;
    assert_eq!(first, 2);
    for seq in [2, 3, 6] {
        agent.report(report(seq, 0.3)).await;
    }
    assert_eq!(agent.ack_at_least(6).await, 6);
    let counters = collector
        .fleet
        .with_vm("web-1", |vm| vm.counters())
        .unwrap();
    assert_eq!(counters.received, 4, "reports 1, 2, 3 and 6");
    assert_eq!(counters.duplicates, 1, "report 2 came twice");
    assert_eq!(counters.lost, 2, "reports 4 and 5 never came");
    assert_eq!(collector.stats.duplicates(), 1);
    assert_eq!(collector.stats.lost(), 2);
    assert_eq!(collector.stats.reports(), 4);

    // A duplicate is acknowledged too (with the watermark).
    agent.report(report(6, 0.3)).await;
    assert_eq!(agent.next_ack().await.unwrap(), 6);
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn bad_streams_are_rejected_and_counted_while_a_healthy_one_keeps_working() {
    let collector = start("[ingest]\nmax_message_bytes = 4096\nhello_timeout = \"300ms\"\n").await;
    let addr = collector.grpc;
    let (mut healthy, _) = Agent::connect(addr, None, hello("web-1", 1)).await;
    let mut seq = 0;
    let mut still_healthy = async |healthy: &mut Agent| {
        seq += 1;
        healthy.report(report(seq, 0.5)).await;
        assert_eq!(healthy.ack_at_least(seq).await, seq);
    };
    still_healthy(&mut healthy).await;

    // A Report before the Hello.
    let mut bad = Agent::open(addr, None, vec![msg_report(report(1, 0.5))])
        .await
        .unwrap();
    let status = bad.end_status().await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "first message must be Hello");
    assert_eq!(collector.stats.rejected(Reason::NoHello), 1);
    still_healthy(&mut healthy).await;

    // Nothing at all: dropped after hello_timeout.
    let mut silent = Agent::open(addr, None, vec![]).await.unwrap();
    let status = silent.end_status().await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("no Hello"), "{status:?}");
    assert_eq!(collector.stats.rejected(Reason::NoHello), 2);
    still_healthy(&mut healthy).await;

    // An oversized report.
    let (mut big, _) = Agent::connect(addr, None, hello("web-2", 1)).await;
    let mut oversized = report(1, 0.5);
    oversized.filesystems = (0..100)
        .map(|i| v1::Filesystem {
            mount_point: format!("/srv/a-rather-long-mount-point-name/{i}"),
            fs_type: "ext4".into(),
            total_bytes: 1 << 30,
            available_bytes: 1 << 29,
            ..Default::default()
        })
        .collect();
    big.report(oversized).await;
    let status = big.end_status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    assert!(
        status.message().contains("ingest.max_message_bytes"),
        "{status:?}"
    );
    assert_eq!(collector.stats.rejected(Reason::Oversized), 1);
    still_healthy(&mut healthy).await;

    // A report with values no agent can measure.
    let (mut liar, _) = Agent::connect(addr, None, hello("web-3", 1)).await;
    let mut invalid = report(1, 0.5);
    invalid.cpu.as_mut().unwrap().steal = 3.0;
    liar.report(invalid).await;
    let status = liar.end_status().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("report.cpu.steal"), "{status:?}");
    assert_eq!(collector.stats.rejected(Reason::Invalid), 1);
    // The invalid report was not applied.
    assert_eq!(
        collector
            .fleet
            .with_vm("web-3", |vm| vm.counters().received),
        Some(0)
    );
    still_healthy(&mut healthy).await;

    // seq 0 and a second Hello are invalid too.
    let (mut zero, _) = Agent::connect(addr, None, hello("web-4", 1)).await;
    zero.report(report(0, 0.5)).await;
    assert_eq!(zero.end_status().await.code(), Code::InvalidArgument);
    let (mut twice, _) = Agent::connect(addr, None, hello("web-5", 1)).await;
    twice.send(msg_hello(hello("web-5", 1))).await;
    let status = twice.end_status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("only be the first"), "{status:?}");
    assert_eq!(collector.stats.rejected(Reason::Invalid), 3);

    // An invalid Hello.
    let mut nameless = Agent::open(addr, None, vec![msg_hello(hello("", 1))])
        .await
        .unwrap();
    let status = nameless.end_status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("hello.vm_id"), "{status:?}");
    assert_eq!(collector.stats.rejected(Reason::Invalid), 4);
    still_healthy(&mut healthy).await;

    // Bytes that do not decode as an AgentMessage.
    let status = malformed::send_garbage(addr).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("malformed message"),
        "{status:?}"
    );
    assert_eq!(collector.stats.rejected(Reason::Malformed), 1);
    still_healthy(&mut healthy).await;

    // Through all of this the healthy stream lost nothing.
    let counters = collector
        .fleet
        .with_vm("web-1", |vm| vm.counters())
        .unwrap();
    assert_eq!(counters.received, 7);
    assert_eq!(counters.lost + counters.duplicates, 0);
    assert_eq!(collector.stats.rejected(Reason::Unauthenticated), 0);
    collector.stop().await.unwrap();
}

/// A client that speaks gRPC correctly but sends a body that is not an AgentMessage.
mod malformed {
    use std::net::SocketAddr;

    use rally_proto::v1::CollectorMessage;
    use tonic::Status;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic_prost::ProstCodec;

    /// Field 1 of `AgentMessage` is the `Hello` sub-message; here it is a varint, which
    /// no protobuf decoder accepts for a message field.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Garbage {
        #[prost(uint64, tag = "1")]
        pub hello: u64,
    }

    pub async fn send_garbage(addr: SocketAddr) -> Status {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let request = tonic::Request::new(tokio_stream::iter(vec![Garbage { hello: 42 }]));
        let codec = ProstCodec::<Garbage, CollectorMessage>::default();
        let result = grpc
            .streaming(
                request,
                PathAndQuery::from_static("/rally.v1.Ingest/Stream"),
                codec,
            )
            .await;
        match result {
            Err(status) => status,
            Ok(response) => {
                let mut replies = response.into_inner();
                loop {
                    match replies.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("stream ended without a status"),
                        Err(status) => return status,
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn tokens_let_an_agent_report_only_for_its_own_vm() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = String::from("[auth]\nmode = \"token\"\n");
    for vm in ["web-1", "web-2"] {
        let file = dir.path().join(vm);
        std::fs::write(&file, format!("secret-of-{vm}\n")).unwrap();
        extra.push_str(&format!(
            "[[auth.tokens]]\nvm = \"{vm}\"\nfile = \"{}\"\n",
            file.display()
        ));
    }
    let collector = start(&extra).await;
    let addr = collector.grpc;
    let (mut healthy, _) = Agent::connect(addr, Some("secret-of-web-1"), hello("web-1", 1)).await;
    healthy.report(report(1, 0.5)).await;
    assert_eq!(healthy.ack_at_least(1).await, 1);

    for token in [None, Some("secret-of-web-3"), Some("")] {
        let status = Agent::open(addr, token, vec![msg_hello(hello("web-1", 2))])
            .await
            .err()
            .expect("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
    }
    assert_eq!(collector.stats.rejected(Reason::Unauthenticated), 3);

    // web-2's token used to report for web-1.
    let mut impostor = Agent::open(
        addr,
        Some("secret-of-web-2"),
        vec![msg_hello(hello("web-1", 2))],
    )
    .await
    .unwrap();
    let status = impostor.end_status().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("web-2"), "{status:?}");
    assert_eq!(collector.stats.rejected(Reason::Forbidden), 1);

    healthy.report(report(2, 0.5)).await;
    assert_eq!(healthy.ack_at_least(2).await, 2);
    let (_web2, _) = Agent::connect(addr, Some("secret-of-web-2"), hello("web-2", 1)).await;
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_vms_can_be_rejected() {
    let collector = start(
        "[ingest]\nunknown_vms = \"reject\"\n[[groups]]\nname = \"web\"\nvms = [\"web-1\"]\n",
    )
    .await;
    let mut stranger = Agent::open(collector.grpc, None, vec![msg_hello(hello("cache-1", 1))])
        .await
        .unwrap();
    let status = stranger.end_status().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("cache-1"), "{status:?}");
    assert_eq!(collector.stats.rejected(Reason::UnknownVm), 1);
    assert!(collector.fleet.with_vm("cache-1", |_| ()).is_none());
    let (_member, _) = Agent::connect(collector.grpc, None, hello("web-1", 1)).await;
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn streams_beyond_max_streams_are_refused() {
    let collector = start("[ingest]\nmax_streams = 2\n").await;
    let (_a, _) = Agent::connect(collector.grpc, None, hello("a", 1)).await;
    let (_b, _) = Agent::connect(collector.grpc, None, hello("b", 1)).await;
    let status = Agent::open(collector.grpc, None, vec![msg_hello(hello("c", 1))])
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(collector.stats.rejected(Reason::Overloaded), 1);
    assert_eq!(collector.stats.streams_open(), 2);
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_agent_streams_with_unavailable() {
    let collector = start("").await;
    let (mut agent, _) = Agent::connect(collector.grpc, None, hello("web-1", 1)).await;
    agent.report(report(1, 0.5)).await;
    assert_eq!(agent.ack_at_least(1).await, 1);
    let stopping = tokio::spawn(collector.stop());
    let status = agent.end_status().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stopping
        .await
        .unwrap()
        .expect("serve returns Ok after shutdown");
}

#[tokio::test]
async fn a_closed_stream_releases_its_place() {
    let collector = start("[ingest]\nmax_streams = 1\n").await;
    let (agent, _) = Agent::connect(collector.grpc, None, hello("web-1", 1)).await;
    let mut replies = agent.close();
    // Half-closing ends the stream cleanly.
    assert!(replies.message().await.unwrap().is_none());
    // Its place under max_streams is free again.
    let (_again, first) = Agent::connect(collector.grpc, None, hello("web-1", 1)).await;
    assert_eq!(first, 0);
    collector.stop().await.unwrap();
}
