//! A real Prometheus server scrapes the collector without errors and stores the
//! contract's series.

use rally_tests::eventually;
use rally_tests::prometheus::Prometheus;
use rally_tests::rally::{Agent, Collector};
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_collector_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(
        dir.path(),
        "[[groups]]\nname = \"web\"\nvms = [\"web-1\"]\n",
    )
    .await;
    let _agent = Agent::start(dir.path(), "web-1", &[collector.grpc_url()], "500ms", "");

    let prometheus = Prometheus::start(
        dir.path(),
        &format!(
            "    static_configs:\n      - targets: ['{}']\n",
            collector.http
        ),
    );
    let (server, api) = (&prometheus.process, prometheus.api.clone());

    let get = |url: String| async move {
        let resp = reqwest::get(url).await.ok()?;
        resp.json::<Value>().await.ok()
    };
    // Two successful scrapes in a row with no error, and the series are queryable.
    let target = eventually(
        Duration::from_secs(60),
        "a healthy scrape with rally_vm_up",
        || {
            let api = api.clone();
            async move {
                let targets = get(format!("{api}/targets")).await?;
                let t = targets["data"]["activeTargets"].get(0)?.clone();
                if t["health"] != "up" {
                    return None;
                }
                let q = get(format!(
                    "{api}/query?query=rally_vm_up%7Bvm%3D%22web-1%22%7D"
                ))
                .await?;
                let result = q["data"]["result"].get(0)?;
                (result["metric"]["group"] == "web" && result["value"][1] == "1").then_some(t)
            }
        },
    )
    .await;
    assert_eq!(
        target["lastError"],
        "",
        "scrape error: {target}\n{}",
        server.log()
    );

    for metric in [
        "rally_vm_cpu_utilization_ratio",
        "rally_vm_memory_available_bytes",
        "rally_collector_reports_total",
    ] {
        let q = get(format!("{api}/query?query={metric}"))
            .await
            .expect("query");
        assert!(
            q["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
            "{metric} not stored by Prometheus: {q}"
        );
    }
}
