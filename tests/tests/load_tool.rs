//! The load tool keeps working against the real collector: every report it sends is
//! acknowledged and counted by the collector. Its figures are printed, never asserted.

use rally_tests::bin;
use rally_tests::rally::Collector;
use serde_json::Value;
use std::time::Duration;

/// `rally_collector_reports_total` from a `/metrics` text.
fn reports_total(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("rally_collector_reports_total "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn load_tool_reports_are_all_acknowledged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start_with_log(dir.path(), "", "info").await;
    let pid = collector.process.as_ref().unwrap().pid();

    let run = tokio::process::Command::new(bin::path("rally-load"))
        .args(["--collector", &collector.grpc_url()])
        .args(["--agents", "20", "--rate", "5", "--duration", "3s"])
        .args(["--warm-up", "1s"])
        .args(["--streams-per-connection", "4"])
        .args(["--collector-pid", &pid.to_string(), "--json"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("rally-load finishes")
        .expect("run rally-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rally-load failed: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).expect("the summary is JSON");
    println!("{summary:#}");

    assert_eq!(summary["streams_opened"], 20, "{summary}");
    assert_eq!(summary["connections"], 5, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    let sent = summary["reports_sent"].as_u64().unwrap();
    // 20 agents × 5/s × 3 s = 300, less what a slow machine skips.
    assert!(sent >= 100, "only {sent} reports sent: {summary}");
    assert_eq!(summary["reports_acked"].as_u64(), Some(sent), "{summary}");
    assert_eq!(summary["reports_unacked"], 0, "{summary}");
    // Every report is timed once: in the warm-up's first second or after it.
    let steady = summary["ack_latency"]["count"].as_u64().unwrap();
    let warm_up = summary["warm_up"]["ack_latency"]["count"].as_u64().unwrap();
    assert_eq!(steady + warm_up, sent, "{summary}");
    assert!(warm_up > 0 && steady > warm_up, "{summary}");
    assert_eq!(summary["warm_up"]["seconds"], 1.0, "{summary}");
    assert!(summary["collector"]["rss_after_bytes"].as_u64().unwrap() > 0);

    let metrics = collector.get("/metrics").await;
    assert_eq!(
        reports_total(&metrics),
        Some(sent),
        "the collector counted every report"
    );
    let vms = collector.vms().await;
    let listed = vms["vms"].as_array().map(|list| {
        list.iter()
            .filter(|vm| vm["vm"].as_str().is_some_and(|id| id.starts_with("load-")))
            .count()
    });
    assert_eq!(listed, Some(20), "one VM per simulated agent: {vms}");
}
