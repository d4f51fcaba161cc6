//! The shipped Grafana dashboard (`packaging/grafana/rally.json`) and the documented
//! Prometheus set-up (`docs/prometheus.md`), against the real thing.
//!
//! Grafana is not in Debian 12, so the dashboard's structure is checked here as Grafana
//! reads it, and every query it would send (each panel's targets, each annotation,
//! each variable's `label_values`) is sent, with the variables filled in, to a real
//! Prometheus that loads the shipped rules and scrapes a real collector fed by real
//! agents with the documented scrape job: each must return data. The same server
//! proves the rules evaluate without error and that a failed resize fires its alerts.
//! The collector runs with `[ha]` on a real etcd member (it leads alone), so that it
//! serves every family the rules read, the leadership ones included.

use rally_tests::etcd::Cluster;
use rally_tests::packages::workspace_root;
use rally_tests::prometheus::{GLOBAL, Prometheus};
use rally_tests::rally::{Agent, Collector};
use rally_tests::webhook::Webhook;
use rally_tests::{online_cpus, proc_mem_total_bytes, tool};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const DASHBOARD: &str = include_str!("../../packaging/grafana/rally.json");
const RULES: &str = include_str!("../../packaging/prometheus/rally.rules.yml");
const METRICS_DOC: &str = include_str!("../../docs/metrics.md");
const PROMETHEUS_DOC: &str = include_str!("../../docs/prometheus.md");

/// The target and the rules file the documented scrape job names.
const DOC_TARGET: &str = "collector.example.org:9471";
const DOC_RULES: &str = "/usr/share/rally/rally.rules.yml";

/// The values the test gives the dashboard's variables.
const GROUP: &str = "web";
const VM: &str = "web-1";
/// What Grafana makes of `$__rate_interval` with a 1 s scrape interval (four scrapes),
/// and a little more.
const RATE_INTERVAL: &str = "5s";

const SECRET: &str = "dashboard-webhook-secret";
/// How long the fleet, Prometheus and the rules have to show everything.
const PATIENCE: Duration = Duration::from_secs(90);

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("rally.json is JSON")
}

/// Every panel, rows and the panels inside collapsed rows included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// (what, PromQL) of every panel target and annotation.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                format!("panel {:?} target {}", p["title"], t["refId"]),
                expr.to_owned(),
            ));
        }
    }
    for a in d["annotations"]["list"].as_array().expect("annotations") {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), expr.to_owned()));
        }
    }
    out
}

/// `expr` with the dashboard's variables filled in as Grafana would for one group and VM.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$group", GROUP)
        .replace("$vm", VM);
    assert!(!out.contains('$'), "a variable left unfilled in {out}");
    out
}

/// Series names an expression reads, recorded ones (`group:rally_vm_up:sum`) included.
fn series_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("rally_") || t.contains(":rally_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn dashboard_is_a_well_formed_grafana_dashboard() {
    let d = dashboard();
    // Grafana 9 and later read schema 36 and up; an older one would be migrated.
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= 36, "schemaVersion {schema}");
    for key in ["uid", "title"] {
        assert!(
            d[key].as_str().is_some_and(|s| !s.is_empty()),
            "dashboard {key}"
        );
    }

    // Variables: a Prometheus data source, then group and vm from label_values.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["datasource", "group", "vm"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for p in &all {
        let title = &p["title"];
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: id {id} is not unique");
        assert!(
            title.as_str().is_some_and(|t| !t.is_empty()),
            "panel {id}: title"
        );
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: gridPos {g}");
        boxes.push((title.to_string(), x, y, w, h));
        if p["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&p["type"].as_str().unwrap_or_default()),
            "{title}: type {}",
            p["type"]
        );
        let ds = &p["datasource"];
        assert_eq!(ds["type"], "prometheus", "{title}: datasource");
        assert_eq!(ds["uid"], "${datasource}", "{title}: datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no target");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(&t["datasource"], ds, "{title}: a target's datasource");
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refIds repeat"
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty expr"
            );
        }
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart =
                a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 || b.2 + b.4 <= a.2;
            assert!(apart, "panels {} and {} overlap", a.0, b.0);
        }
    }

    let annotations = d["annotations"]["list"].as_array().expect("annotations");
    let resizes: Vec<_> = annotations
        .iter()
        .filter(|a| a["expr"].is_string())
        .collect();
    assert!(resizes.len() >= 2, "resize annotations: {annotations:?}");
    for a in resizes {
        assert_eq!(
            a["datasource"]["uid"], "${datasource}",
            "annotation {}",
            a["name"]
        );
        assert!(a["titleFormat"].is_string() && a["tagKeys"].is_string());
    }

    // Every series read exists: a family of the collector, or a recorded series of the
    // shipped rules.
    let mut known: BTreeSet<String> = METRICS_DOC
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    known.extend(
        RULES
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record:"))
            .map(|r| r.trim().to_owned()),
    );
    for (what, expr) in queries(&d) {
        substitute(&expr);
        for name in series_names(&expr) {
            assert!(
                known.contains(&name),
                "{what} reads {name}, which neither the collector nor the rules provide"
            );
        }
    }
}

/// The scrape example of `docs/prometheus.md`: its ```yaml block with `rule_files`.
fn documented_config() -> String {
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in PROMETHEUS_DOC.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```yaml") => block = Some(String::new()),
            (Some(_), "```") => blocks.extend(block.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    let example = blocks
        .into_iter()
        .find(|b| b.contains("rule_files:") && b.contains("scrape_configs:"))
        .expect("docs/prometheus.md has a yaml block with rule_files and scrape_configs");
    assert!(example.contains(DOC_TARGET) && example.contains(DOC_RULES));
    example
}

/// A collector with two resized groups: `web` sends a resize the agent can never
/// confirm (so it fails verification and, with `circuit_breaker = 1`, opens the
/// circuit), `db` has a single rung and a rule that always holds (so it is at its max
/// rung). Every rule holds at once: memory use is above 1 % on any machine.
fn collector_config(dir: &Path, hook: &Webhook, etcd: &[String]) -> String {
    let secret = dir.join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write the webhook secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the webhook secret");
    let (vcpus, mem) = (online_cpus(), proc_mem_total_bytes());
    let rule = "[[groups.rules]]\nmetric = \"memory_used_ratio\"\nwindow = \"last\"\nthreshold = 0.01\nfor = \"1s\"\n";
    format!(
        r#"
[ha]
etcd = ["{etcd}"]
name = "dashboard"
lease_ttl = "3s"
etcd_timeout = "1s"

[engine]
tick = "250ms"

[actuator]
kind = "webhook"
url = "{url}"
secret_file = "{secret}"
timeout = "2s"

[[groups]]
name = "web"
vms = ["web-1"]
dry_run = false
circuit_breaker = 1
ladder = [
  {{ name = "M", vcpus = {vcpus}, memory_bytes = {mem} }},
  {{ name = "L", vcpus = {vcpus2}, memory_bytes = {mem2} }},
]
targets = []
{rule}
[groups.scale_up]
verify_timeout = "2s"

[[groups]]
name = "db"
vms = ["db-1"]
ladder = [ {{ name = "M", vcpus = {vcpus}, memory_bytes = {mem} }} ]
targets = []
{rule}
"#,
        url = hook.url(),
        etcd = etcd.join("\", \""),
        secret = secret.display(),
        vcpus2 = vcpus * 2,
        mem2 = mem * 2,
    )
}

/// Starts an agent for `vm` with an access-log source, and returns the log's path.
fn agent(dir: &Path, vm: &str, collector: &Collector) -> (Agent, PathBuf) {
    let log = dir.join(format!("{vm}-access.log"));
    std::fs::write(&log, "").expect("create the access log");
    let source = format!(
        "[[sources]]\nname = \"shop-log\"\nkind = \"access_log\"\npath = \"{}\"\nformat = \"$status $request_time\"\n",
        log.display()
    );
    let agent = Agent::start(dir, vm, &[collector.grpc_url()], "500ms", &source);
    (agent, log)
}

/// Appends requests to the access logs until aborted: successes, every tenth a 503,
/// with request times.
fn serve_requests(logs: Vec<PathBuf>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0u64.. {
            for log in &logs {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(log)
                    .expect("open the access log");
                let status = if i % 10 == 0 { 503 } else { 200 };
                writeln!(f, "{status} 0.0{}", i % 10).expect("append to the access log");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Every collector series the rules and the dashboard read is declared by the real
/// collector (a family is declared even before it has a sample).
async fn assert_collector_serves_every_series_read(collector: &Collector) {
    let exposition = collector.get("/metrics").await;
    let declared: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let rules_text: String = RULES
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let read = queries(&dashboard())
        .into_iter()
        .flat_map(|(_, expr)| series_names(&expr))
        .chain(series_names(&rules_text));
    for name in read.filter(|n| !n.contains(':')) {
        assert!(
            declared.contains(name.as_str()),
            "{name} is read by the rules or the dashboard but the collector does not serve it"
        );
    }
}

/// The HTTP API of the test's Prometheus.
struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    /// GETs `path` with `query` and returns the JSON answer's `data`, or None (no
    /// answer yet). A query Prometheus refuses (`bad_data`: it does not parse) fails
    /// the test.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Option<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        assert_ne!(
            body["errorType"], "bad_data",
            "Prometheus refuses {query:?}: {}",
            body["error"]
        );
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// Whether `expr`, as Grafana sends it (a range query), has data since `start`.
    async fn has_data(&self, expr: &str, start: f64) -> bool {
        let query = [
            ("query", expr.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{:.3}", unix_now())),
            ("step", "1".to_owned()),
        ];
        self.get("/query_range", &query)
            .await
            .and_then(|d| d["result"].as_array().map(|r| !r.is_empty()))
            .unwrap_or(false)
    }

    /// The rules and the active alerts, once both answer.
    async fn rules_and_alerts(&self) -> Option<(Vec<Value>, Vec<Value>)> {
        let rules = self.get("/rules", &[]).await?;
        let alerts = self.get("/alerts", &[]).await?;
        let rules = rules["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        Some((rules, alerts["alerts"].as_array()?.clone()))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Polls every dashboard query until each has had data once; returns those that had
/// none by `deadline`.
async fn queries_without_data(api: &Api, start: f64, deadline: Instant) -> Vec<String> {
    let mut waiting: Vec<(String, String)> = queries(&dashboard())
        .into_iter()
        .map(|(what, expr)| (what, substitute(&expr)))
        .collect();
    assert!(waiting.len() > 20, "queries: {waiting:?}");
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (what, expr) in waiting {
            if !api.has_data(&expr, start).await {
                still.push((what, expr));
            }
        }
        waiting = still;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    waiting
        .into_iter()
        .map(|(what, expr)| format!("{what}: {expr}"))
        .collect()
}

/// The variables' `label_values(selector, label)` offer the values the queries used.
async fn assert_variables_offer_the_values_used(api: &Api) {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("templating");
    for (var, expected) in [("group", GROUP), ("vm", VM)] {
        let v = vars.iter().find(|v| v["name"] == var).expect("variable");
        let def = v["definition"].as_str().expect("definition");
        assert_eq!(v["query"]["query"], def, "{var}: query and definition");
        let (selector, label) = def
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.rsplit_once(','))
            .expect("label_values(selector, label)");
        let values = api
            .get(
                &format!("/label/{}/values", label.trim()),
                &[("match[]", substitute(selector.trim()))],
            )
            .await
            .expect("label values");
        assert!(
            values
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == expected)),
            "variable {var} ({def}) offers {values}, not {expected}"
        );
    }
}

/// Waits until every shipped rule is loaded and evaluates without error, and the
/// failed resize and the saturated group have fired (or started) their alerts; then
/// checks that no alert blames the healthy collector, agents or webhook.
async fn assert_rules_healthy_and_resize_alerts_fired(api: &Api, deadline: Instant) {
    let rule_count = RULES.matches("- alert:").count() + RULES.matches("- record:").count();
    let mut last = Value::Null;
    loop {
        if let Some((rules, alerts)) = api.rules_and_alerts().await {
            for r in &rules {
                assert_ne!(
                    r["health"], "err",
                    "rule {} fails: {}",
                    r["name"], r["lastError"]
                );
            }
            let healthy = rules.len() == rule_count && rules.iter().all(|r| r["health"] == "ok");
            let state = |name: &str, group: &str| {
                alerts
                    .iter()
                    .find(|a| a["labels"]["alertname"] == name && a["labels"]["group"] == group)
                    .and_then(|a| a["state"].as_str())
            };
            let fired = state("RallyCircuitOpen", "web") == Some("firing")
                && state("RallyResizeUnverified", "web") == Some("firing")
                && state("RallyGroupAtMaxRung", "db").is_some();
            if healthy && fired {
                // Alerts on this machine's own state (a full disk, ...) are not checked.
                for name in [
                    "RallyCollectorDown",
                    "RallyCollectorRejectingReports",
                    "RallyVmDown",
                    "RallyAgentDroppingReports",
                    "RallyResizeRequestFailed",
                ] {
                    assert!(
                        !alerts.iter().any(|a| a["labels"]["alertname"] == name),
                        "{name} is active for a healthy collector: {alerts:#?}"
                    );
                }
                return;
            }
            last = serde_json::json!({ "rules": rules, "alerts": alerts });
        }
        assert!(
            Instant::now() < deadline,
            "rules not all healthy or the resize's alerts not fired within {PATIENCE:?}: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_returns_data_from_prometheus_set_up_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start(SECRET, &[]).await;
    let etcd = Cluster::local(&dir.path().join("etcd"), 1).await;
    let collector = Collector::start(
        dir.path(),
        &collector_config(dir.path(), &hook, &etcd.endpoints()),
    )
    .await;
    assert_collector_serves_every_series_read(&collector).await;
    let (_web, web_log) = agent(dir.path(), "web-1", &collector);
    let (_db, db_log) = agent(dir.path(), "db-1", &collector);
    let requests = serve_requests(vec![web_log, db_log]);

    // The documented job and rule file, only the target and the file's path replaced.
    let rules = workspace_root().join("packaging/prometheus/rally.rules.yml");
    let config = documented_config()
        .replace(DOC_TARGET, &collector.http)
        .replace(DOC_RULES, &rules.display().to_string());
    let start = unix_now();
    let prometheus = Prometheus::start_with_config(dir.path(), &format!("{GLOBAL}{config}"));
    // What the documentation tells the reader to run on the result.
    let check = std::process::Command::new(tool::require("promtool", "prometheus"))
        .args(["check", "config"])
        .arg(dir.path().join("prometheus.yml"))
        .output()
        .expect("run promtool");
    assert!(
        check.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let api = Api {
        client: reqwest::Client::new(),
        url: prometheus.api.clone(),
    };
    let deadline = Instant::now() + PATIENCE;

    let missing = queries_without_data(&api, start, deadline).await;
    assert!(
        missing.is_empty(),
        "queries without data after {PATIENCE:?}:\n{}\n--- prometheus log:\n{}\n--- collector log:\n{}",
        missing.join("\n"),
        prometheus.process.log(),
        collector.logs().join("\n"),
    );
    assert_variables_offer_the_values_used(&api).await;
    assert_rules_healthy_and_resize_alerts_fired(&api, deadline).await;
    requests.abort();
    assert!(
        hook.received().iter().any(|r| r.signature_ok),
        "the web group's resize reached the webhook"
    );
}
