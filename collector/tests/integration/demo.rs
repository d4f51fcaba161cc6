//! `demo`: the real agent, in-process, reports this machine to the demo collector.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use crate::support;

use std::time::Duration;

use rally_collector::cli::DemoArgs;
use rally_collector::demo::{DEMO_INTERVAL, Demo};
use support::get;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_agent_reports_this_machine() {
    let args = DemoArgs {
        grpc: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
    };
    let demo = Demo::bind(&args).await.unwrap();
    let http = demo.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(demo.serve(async {
        let _ = stopped.await;
    }));

    // The agent's second report is the first with CPU shares (one interval later).
    // Poll the API until it shows up; a generous bound, since the machine is shared.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let deadline = tokio::time::Instant::now() + DEMO_INTERVAL * 15;
    let vm = loop {
        let (_, _, body) = get(&format!("http://{http}/api/v1/vms")).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let vm = json["vms"]
            .as_array()
            .and_then(|vms| {
                vms.iter()
                    .find(|v| v["latest"]["cpu_utilization"].is_number())
            })
            .cloned();
        if let Some(vm) = vm {
            break vm;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report with CPU shares yet: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(vm["vm"], hostname.trim());
    assert_eq!(vm["group"], "demo");
    assert_eq!(vm["fresh"], true);
    assert!(vm["size"]["vcpus"].as_u64().unwrap() >= 1);
    assert!(vm["latest"]["memory_total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(vm["reports"]["lost"], 0);

    let (_, _, metrics) = get(&format!("http://{http}/metrics")).await;
    assert!(
        metrics.contains("rally_collector_reports_rejected_total{reason=\"invalid\"} 0"),
        "{metrics}"
    );

    // The demo group resizes in dry-run, and this machine sits on its middle rung.
    let deadline = tokio::time::Instant::now() + DEMO_INTERVAL * 10;
    loop {
        let (_, _, body) = get(&format!("http://{http}/api/v1/groups")).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let demo = &json["groups"][0];
        assert_eq!(demo["group"], "demo", "{body}");
        assert_eq!(demo["resizes"], true);
        assert_eq!(demo["dry_run"], true);
        let skips = demo["skips"].as_array().unwrap();
        assert!(
            !skips.iter().any(|s| s["kind"] == "off_ladder"),
            "this machine is not on the demo ladder: {body}"
        );
        if !skips.iter().any(|s| s["kind"] == "stale") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the demo stops")
        .unwrap()
        .unwrap();
}
