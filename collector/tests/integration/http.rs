//! The HTTP listener over real sockets: health, readiness, metrics (checked by the real
//! promtool), the JSON API and the status page.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use crate::support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rally_collector::clock::ManualClock;
use support::{Agent, get, hello, promtool_check, report, start, start_with};

#[tokio::test]
async fn health_and_readiness() {
    let collector = start("").await;
    let (status, _, body) = get(&collector.url("/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, _) = get(&collector.url("/readyz")).await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&collector.url("/nope")).await;
    assert_eq!(status, 404);
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn a_real_scrape_of_several_vms_passes_promtool() {
    let collector =
        start("[[groups]]\nname = \"web\"\nvms = [\"web-1\", \"web-2\", \"web-3\"]\n").await;
    let mut agents = Vec::new();
    for (i, vm) in ["web-1", "web-2", "db-1"].into_iter().enumerate() {
        let mut h = hello(vm, i as u64 + 1);
        h.hostname = format!("{vm} \"quoted\" \\ back\\slash");
        let (mut agent, _) = Agent::connect(collector.grpc, None, h).await;
        for seq in 1..=3 {
            let mut r = report(seq, 0.1 * (i + 1) as f64);
            r.pressure = Some(rally_proto::v1::Pressure {
                cpu: Some(rally_proto::v1::PressureResource {
                    some: Some(rally_proto::v1::PressureLine {
                        avg10: 2.5,
                        ..Default::default()
                    }),
                    full: None,
                }),
                memory: None,
                io: None,
            });
            agent.report(r).await;
        }
        agent.ack_at_least(3).await;
        agents.push(agent);
    }
    let (status, content_type, text) = get(&collector.url("/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    for needle in [
        "rally_vm_up{vm=\"web-1\",group=\"web\"} 1",
        "rally_vm_up{vm=\"web-3\",group=\"web\"} 0",
        "rally_vm_up{vm=\"db-1\",group=\"ungrouped\"} 1",
        "rally_vm_cpu_utilization_ratio{vm=\"web-2\",group=\"web\"} 0.2",
        "rally_vm_pressure_some_ratio{vm=\"web-1\",group=\"web\",resource=\"cpu\"} 0.025",
        "rally_collector_reports_total 9",
        "rally_collector_streams 3",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    promtool_check(&text);
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn the_api_lists_vms_with_latest_values_windows_and_counters() {
    let collector = start("[[groups]]\nname = \"web\"\nvms = [\"web-1\"]\n").await;
    let (mut agent, _) = Agent::connect(collector.grpc, None, hello("web-1", 3)).await;
    agent.report(report(1, 0.5)).await;
    agent.report(report(3, 0.7)).await;
    agent.ack_at_least(3).await;

    let (status, content_type, body) = get(&collector.url("/api/v1/vms")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let vm = &json["vms"][0];
    assert_eq!(vm["vm"], "web-1");
    assert_eq!(vm["group"], "web");
    assert_eq!(vm["hostname"], "web-1.shop.example");
    assert_eq!(vm["agent_version"], "0.1.0-test");
    assert_eq!(vm["fresh"], true);
    assert!(vm["last_report_age_seconds"].as_f64().unwrap() < 60.0);
    assert_eq!(vm["size"]["vcpus"], 2);
    assert_eq!(vm["size"]["memory_bytes"], 4u64 << 30);
    assert_eq!(vm["latest"]["cpu_utilization"], 0.7);
    assert_eq!(vm["latest"]["memory_available_bytes"], 3u64 << 30);
    assert_eq!(vm["latest"]["load1"], 0.5);
    assert!(vm["latest"]["pressure"].is_null());
    let mean = vm["avg_1m"]["cpu_utilization"].as_f64().unwrap();
    assert!((mean - 0.6).abs() < 1e-9, "{mean}");
    assert!(vm["avg_5m"]["psi_cpu_some_avg10"].is_null());
    assert_eq!(vm["reports"]["received"], 2);
    assert_eq!(vm["reports"]["lost"], 1);
    assert_eq!(vm["reports"]["duplicates"], 0);
    assert_eq!(vm["reports"]["last_seq"], 3);

    let (status, _, body) = get(&collector.url("/api/v1/vms/web-1")).await;
    assert_eq!(status, 200);
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["vm"], "web-1");
    let (status, _, _) = get(&collector.url("/api/v1/vms/nope")).await;
    assert_eq!(status, 404);
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn a_vm_goes_stale_on_the_collector_clock() {
    let clock = ManualClock::new(SystemTime::now());
    let collector = start_with("", Some(Arc::new(clock.clone()))).await;
    let (mut agent, _) = Agent::connect(collector.grpc, None, hello("web-1", 1)).await;
    agent.report(report(1, 0.5)).await;
    agent.ack_at_least(1).await;
    let (_, _, text) = get(&collector.url("/metrics")).await;
    assert!(
        text.contains("rally_vm_up{vm=\"web-1\",group=\"ungrouped\"} 1"),
        "{text}"
    );

    clock.advance(Duration::from_secs(21));
    let (_, _, text) = get(&collector.url("/metrics")).await;
    assert!(
        text.contains("rally_vm_up{vm=\"web-1\",group=\"ungrouped\"} 0"),
        "{text}"
    );
    let (_, _, body) = get(&collector.url("/api/v1/vms")).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["vms"][0]["fresh"], false);
    assert_eq!(json["vms"][0]["last_report_age_seconds"], 21.0);

    // A new report makes it fresh again.
    agent.report(report(2, 0.5)).await;
    agent.ack_at_least(2).await;
    let (_, _, text) = get(&collector.url("/metrics")).await;
    assert!(
        text.contains("rally_vm_up{vm=\"web-1\",group=\"ungrouped\"} 1"),
        "{text}"
    );
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn the_status_page_shows_groups_and_escapes_text() {
    let collector = start("[[groups]]\nname = \"web\"\nvms = [\"web-1\", \"web-2\"]\n").await;
    let mut h = hello("web-1", 1);
    h.hostname = "<script>alert(1)</script>".into();
    let (mut agent, _) = Agent::connect(collector.grpc, None, h).await;
    agent.report(report(1, 0.5)).await;
    agent.ack_at_least(1).await;
    let (status, content_type, html) = get(&collector.url("/")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(html.contains("<h2>Group web</h2>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("web-2"),
        "a configured VM that never reported is listed"
    );
    assert!(html.contains("1 of 2 VMs fresh"), "{html}");
    collector.stop().await.unwrap();
}
