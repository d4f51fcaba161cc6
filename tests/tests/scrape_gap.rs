//! No scrape gap: an agent cut off from its collector for a minute buffers its
//! reports and replays them, and a real Prometheus scraping the collector sees the
//! requests of that minute in `increase(rally_vm_requests_total[...])`: exactly the
//! access-log lines the test wrote while the agent was cut off.

use rally_tests::eventually;
use rally_tests::ledger::sample;
use rally_tests::prometheus::Prometheus;
use rally_tests::proxy::{Faults, Proxy};
use rally_tests::rally::{Agent, Collector};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const VM: &str = "gap-1";
/// The VM's requests from its access log, summed over status classes.
const SERIES: &str = "sum(rally_vm_requests_total{vm=\"gap-1\",source=\"log\"})";
const SELECTOR: &str = "rally_vm_requests_total{vm=\"gap-1\",source=\"log\"}";
/// How long the agent is cut off.
const OUTAGE: Duration = Duration::from_secs(60);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Appends `n` access-log lines in nginx's `combined` format, all `200`.
fn write_lines(path: &Path, n: u64) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open the access log");
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "127.0.0.1 - - [30/Nov/2026:12:00:00 +0000] \"GET /item/{i} HTTP/1.1\" 200 512 \"-\" \"scrape-gap\"\n"
        ));
    }
    f.write_all(text.as_bytes())
        .expect("append to the access log");
}

/// A PromQL query's single value at `time`, if it has one.
async fn query(api: &str, promql: &str, time: f64) -> Option<f64> {
    let resp = reqwest::Client::new()
        .get(format!("{api}/query"))
        .query(&[("query", promql), ("time", &format!("{time:.3}"))])
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let body: Value = resp.json().await.ok()?;
    let result = body["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{promql}: several series: {body}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cut_off_for_a_minute_leaves_no_gap_in_increase() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let collector = Collector::start(dir.path(), "").await;
    let proxy = Proxy::on_loopback(&collector.grpc, Faults::NONE);
    let _agent = Agent::start(
        dir.path(),
        VM,
        &[format!("http://{}", proxy.address)],
        "1s",
        &format!(
            "[[sources]]\nname = \"log\"\nkind = \"access_log\"\npath = \"{}\"\n",
            log.display()
        ),
    );
    let prometheus = Prometheus::start(
        dir.path(),
        &format!(
            "    static_configs:\n      - targets: ['{}']\n",
            collector.http
        ),
    );
    let api = prometheus.api.clone();

    // The series exists (the source has a first rate) and Prometheus stores it.
    const BEFORE: u64 = 7;
    eventually(
        Duration::from_secs(60),
        "the source counted in /metrics",
        || async {
            let m = collector.get("/metrics").await;
            sample(&m, "rally_vm_source_up", &[("vm", VM), ("source", "log")])
                .filter(|up| *up == 1.0)
        },
    )
    .await;
    write_lines(&log, BEFORE);
    eventually(
        Duration::from_secs(60),
        "Prometheus to store the lines written before the outage",
        || {
            let api = api.clone();
            async move {
                query(&api, SERIES, now())
                    .await
                    .filter(|v| *v == BEFORE as f64)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The outage: the agent's connection is reset and every new one too; the VM
    // serves requests all the while, in uneven bursts.
    let start = now();
    proxy.cut();
    let mut during = 0u64;
    let outage_start = std::time::Instant::now();
    let mut second = 0u64;
    while outage_start.elapsed() < OUTAGE {
        let burst = 3 + (second * 37) % 41;
        write_lines(&log, burst);
        during += burst;
        second += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Nothing arrives meanwhile: the scraped counter stays where it was.
        if second == 30 {
            assert_eq!(
                query(&api, SERIES, now()).await,
                Some(BEFORE as f64),
                "requests counted while the agent was cut off"
            );
        }
    }
    proxy.restore();
    let cut = proxy
        .counts()
        .cut
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(cut >= 2, "the agent tried during the outage ({cut} resets)");

    // The agent reconnects after its backoff (about 70 s into it) and replays.
    let total = (BEFORE + during) as f64;
    eventually(
        Duration::from_secs(120),
        "Prometheus to see the replayed minute",
        || {
            let api = api.clone();
            async move { query(&api, SERIES, now()).await.filter(|v| *v >= total) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = now();

    let at_start = query(&api, SERIES, start)
        .await
        .expect("value at the start");
    let at_end = query(&api, SERIES, end).await.expect("value at the end");
    assert_eq!(at_start, BEFORE as f64);
    assert_eq!(
        at_end - at_start,
        during as f64,
        "the counter rose by what the VM served during the outage"
    );
    // increase() over the outage: Prometheus extrapolates to the window's edges by
    // at most a scrape interval on each side, so it may exceed the truth by that much.
    let window = (end - start).ceil() as u64;
    let increase = query(&api, &format!("sum(increase({SELECTOR}[{window}s]))"), end)
        .await
        .expect("increase over the outage");
    let tolerance = during as f64 * 2.0 / (window as f64 - 2.0);
    assert!(
        increase >= during as f64 && increase <= during as f64 + tolerance,
        "increase over the outage is {increase}, the VM served {during}"
    );

    let metrics = collector.get("/metrics").await;
    let labels = [("vm", VM)];
    assert_eq!(
        sample(&metrics, "rally_vm_reports_lost_total", &labels),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "rally_vm_agent_dropped_reports_total", &labels),
        Some(0.0)
    );
    println!("outage {window} s: {during} requests, increase() {increase}");
}
