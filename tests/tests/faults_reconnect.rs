//! 1 000 agents simulated by `rally-load --reconnect` lose their collector (SIGKILL)
//! and find it again: they come back spread over the backoff's jitter rather than in
//! one burst, every one of them, and the restarted collector's `/healthz` answers
//! all through the reconnection storm.

use rally_tests::bin;
use rally_tests::eventually;
use rally_tests::ledger::sample;
use rally_tests::rally::Collector;
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AGENTS: u64 = 1000;
/// How long the collector stays dead: the agents' first attempts (1 s, then
/// 1.6 s ± 20 %, ...) all fail, so by the time it is back they are out of step.
const DEAD: Duration = Duration::from_secs(8);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_agents_come_back_spread_out_and_healthz_answers_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start_with_log(dir.path(), "", "info").await;

    let load = tokio::process::Command::new(bin::path("rally-load"))
        .args(["--collector", &collector.grpc_url()])
        .args(["--agents", &AGENTS.to_string(), "--rate", "1"])
        .args([
            "--duration",
            "35s",
            "--drain",
            "20s",
            "--reconnect",
            "--json",
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rally-load");

    eventually(
        Duration::from_secs(120),
        "every simulated agent's stream open",
        || async {
            let m = collector.get("/metrics").await;
            sample(&m, "rally_collector_streams", &[]).filter(|n| *n == AGENTS as f64)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed = now();
    collector.kill();
    tokio::time::sleep(DEAD).await;
    collector.start_again().await;
    let back = now();

    // /healthz, ten times a second, until the storm is over: every agent back.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let healthz = collector.url("/healthz");
    let poller = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let (mut polls, mut slowest) = (0u32, Duration::ZERO);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !*stopped.borrow_and_update() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => break,
            }
            let asked = Instant::now();
            let resp = client
                .get(&healthz)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let status = resp.as_ref().map(|r| r.status());
            assert!(
                status.is_ok_and(|s| s.is_success()),
                "/healthz failed during the reconnection storm: {resp:?}"
            );
            slowest = slowest.max(asked.elapsed());
            polls += 1;
        }
        (polls, slowest)
    });
    let storm = Instant::now();
    loop {
        let m = collector.get("/metrics").await;
        let streams = sample(&m, "rally_collector_streams", &[]).unwrap_or(0.0);
        if streams == AGENTS as f64 {
            break;
        }
        assert!(
            storm.elapsed() < Duration::from_secs(60),
            "only {streams} streams back a minute after the restart"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let storm = storm.elapsed();
    stop.send_replace(true);
    let (polls, slowest) = poller.await.expect("the /healthz poller");
    // Polled during the storm, not only after it.
    assert!(polls >= 3, "{polls} /healthz polls in {storm:?}");

    let output = tokio::time::timeout(Duration::from_secs(120), load.wait_with_output())
        .await
        .expect("rally-load finishes")
        .expect("run rally-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rally-load failed: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).expect("the summary is JSON");
    let r = &summary["reconnects"];
    // Every agent lost its stream and got it back (one may lose a fresh one again).
    let lost = r["streams_lost"].as_u64().unwrap();
    assert!(lost >= AGENTS, "{r}");
    assert_eq!(r["reopened"].as_u64(), Some(lost), "{r}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["reports_unacked"], 0, "{summary}");

    let at: Vec<f64> = r["reopened_at_unix_seconds"]
        .as_array()
        .expect("reopening times")
        .iter()
        .map(|t| t.as_f64().expect("a time"))
        .collect();
    assert_eq!(at.len() as u64, lost);
    let restarted = killed + DEAD.as_secs_f64();
    assert!(
        at.iter().all(|t| *t >= restarted),
        "a stream reopened before the collector was started again"
    );
    // Each agent's first retry comes 1 s after the loss, the later ones 1.6× apart
    // with ±20 % jitter each: the retry after an 8 s outage is the fourth, at
    // 1 + 1.6 + 2.56 + 4.1 ≈ 9.3 s, and the four jitters add up to a standard
    // deviation of about 0.6 s, so the middle 80 % of the fleet returns over about
    // 1.5 s on an idle machine (more on a busy one, whose accepts queue). In step (no
    // jitter) they would all return within the time to accept 1 000 connections, a
    // tenth of that.
    let spread =
        r["spread_seconds"]["p90"].as_f64().unwrap() - r["spread_seconds"]["p10"].as_f64().unwrap();
    assert!(
        spread >= 1.0,
        "the middle 80 % of the agents came back within {spread:.2} s: {r}"
    );
    // No quarter second holds even half the fleet (in step, all of it would be
    // there; with the jitter it is about a sixth, and a busy collector bunches them).
    let busiest = at
        .iter()
        .map(|t| at.iter().filter(|u| **u >= *t && **u < t + 0.25).count())
        .max()
        .unwrap_or(0);
    assert!(
        busiest as u64 <= AGENTS * 2 / 5,
        "{busiest} agents came back within a quarter second"
    );

    let m = collector.get("/metrics").await;
    assert_eq!(
        sample(&m, "rally_collector_reports_lost_total", &[]),
        Some(0.0),
        "reports lost across the restart"
    );
    println!(
        "killed at {killed:.1}, back at {back:.1} (+{:.1} s); reopened from +{:.1} s to +{:.1} s; spread p10–p90 {spread:.2} s; busiest quarter second {busiest}; /healthz {polls} polls, slowest {slowest:?}\n{}",
        back - killed,
        at[0] - killed,
        at[at.len() - 1] - killed,
        serde_json::to_string(&summary["reconnects"]["spread_seconds"]).unwrap_or_default()
    );
}
