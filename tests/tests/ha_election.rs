//! Two real collectors with `[ha]` on one real etcd member, on loopback: exactly one
//! leads; the follower says who does (API, `/readyz`, `/metrics`, `status`, the page),
//! refuses changing calls with a pointer to the leader and shows the leader's decision
//! state; a leader that stops cleanly resigns, so the other takes over at once with a
//! higher fencing token. (Crashes, stops and partitions across hosts: `ha.rs`.)

use std::time::{Duration, Instant};

use rally_tests::etcd::{ClientTls, Cluster};
use rally_tests::rally::Collector;
use rally_tests::{bin, eventually};
use serde_json::Value;

fn config(name: &str, endpoints: &[String]) -> String {
    let etcd = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[ha]
etcd = [{etcd}]
name = "{name}"
lease_ttl = "3s"
etcd_timeout = "1s"
prefix = "/ha-election-test"

[engine]
tick = "200ms"

[[groups]]
name = "web"
vms = ["web-1"]
dry_run = true
ladder = [
  {{ name = "S", vcpus = 2, memory_bytes = 4294967296 }},
  {{ name = "L", vcpus = 4, memory_bytes = 8589934592 }},
]
[[groups.rules]]
metric = "cpu_utilization"
window = "1m"
threshold = 0.9
for = "1m"
"#
    )
}

async fn json(c: &Collector, path: &str) -> Value {
    serde_json::from_str(&c.get(path).await).expect("JSON")
}

/// The collector's `role`, or None while it does not answer.
async fn role(c: &Collector) -> Option<String> {
    let r = reqwest::get(c.url("/api/v1/leader")).await.ok()?;
    let v: Value = r.json().await.ok()?;
    v["role"].as_str().map(str::to_owned)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leads_the_follower_points_to_it_and_a_clean_stop_hands_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::local(&dir.path().join("etcd"), 1).await;
    let endpoints = cluster.endpoints();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let mut a = Collector::start(&dir_a, &config("a", &endpoints)).await;
    // `a` leads before `b` starts, so which one leads is known.
    eventually(Duration::from_secs(20), "a leads", || async {
        (role(&a).await.as_deref() == Some("leader")).then_some(())
    })
    .await;
    let b = Collector::start(&dir_b, &config("b", &endpoints)).await;
    let follower = eventually(Duration::from_secs(20), "b follows a", || async {
        let v = json(&b, "/api/v1/leader").await;
        (v["role"] == "follower" && v["leader"]["name"] == "a").then_some(v)
    })
    .await;
    let token_a = follower["leader"]["token"].as_u64().unwrap();
    assert!(token_a > 0, "{follower}");
    assert_eq!(follower["leader"]["url"], format!("http://{}", a.http));
    assert_eq!(follower["lease_healthy"], true);

    // Everyone sees the same leader: metrics, readiness, the operator command, the page.
    let metrics_a = a.get("/metrics").await;
    let metrics_b = b.get("/metrics").await;
    assert_eq!(metric(&metrics_a, "rally_collector_leader"), Some(1.0));
    assert_eq!(metric(&metrics_b, "rally_collector_leader"), Some(0.0));
    assert_eq!(
        metric(&metrics_b, "rally_collector_fencing_token"),
        Some(token_a as f64)
    );
    assert_eq!(
        metric(&metrics_a, "rally_collector_leader_terms_total"),
        Some(1.0)
    );
    let ready = b.get("/readyz").await;
    assert!(
        ready.starts_with("ready\nrole: follower\nleader: a "),
        "{ready}"
    );
    let status = std::process::Command::new(bin::path("rally-collector"))
        .args(["status", "--url", &b.url("")])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.starts_with(&format!(
            "collector b: follower; leader: a at http://{} (fencing token {token_a}, lease healthy)\n",
            a.http
        )),
        "{status}"
    );
    let page = b.get("/").await;
    assert!(page.contains("This collector (b) follows;"), "{page}");

    // A changing call on the follower is refused with the leader's URL; on the leader it
    // is carried out, and the follower shows the leader's state.
    let client = reqwest::Client::new();
    let refused = client
        .post(b.url("/api/v1/groups/web/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "not_leader", "{body}");
    assert_eq!(body["leader"], format!("http://{}", a.http), "{body}");
    let paused = client
        .post(a.url("/api/v1/groups/web/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200, "{}", paused.text().await.unwrap());
    eventually(Duration::from_secs(10), "b shows web paused", || async {
        let groups = json(&b, "/api/v1/groups").await;
        (groups["groups"][0]["paused"] == true).then_some(())
    })
    .await;

    // A clean stop resigns: b leads long before a's 3 s lease would have run out, with
    // a higher token, and it loads the state a left (the pause).
    let stopped = Instant::now();
    let a_process = a.process.as_mut().unwrap();
    assert!(
        a_process.terminate(Duration::from_secs(10)),
        "a exits cleanly"
    );
    let took_over = eventually(Duration::from_secs(10), "b leads", || async {
        let v = json(&b, "/api/v1/leader").await;
        (v["role"] == "leader").then_some(v)
    })
    .await;
    let hand_over = stopped.elapsed();
    println!("hand-over after a clean stop: {hand_over:?}");
    assert!(
        hand_over < Duration::from_millis(2500),
        "b took over after {hand_over:?}: a did not resign"
    );
    let token_b = took_over["fencing_token"].as_u64().unwrap();
    assert!(token_b > token_a, "{took_over}");
    assert!(
        a.logs()
            .concat()
            .contains("resigned: another collector may lead now"),
        "{:?}",
        a.logs()
    );
    // Several ticks as leader: its state is the one loaded when its term began.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let groups = json(&b, "/api/v1/groups").await;
    assert_eq!(groups["groups"][0]["paused"], true, "{groups}");
    let resumed = client
        .post(b.url("/api/v1/groups/web/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200, "{}", resumed.text().await.unwrap());
    let groups = json(&b, "/api/v1/groups").await;
    assert_eq!(groups["groups"][0]["paused"], false, "{groups}");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_with_a_client_certificate_it_leads_and_without_one_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let collector = bin::path("rally-collector");
    for args in [
        vec!["pki", "ca"],
        vec!["pki", "server", "--name", "127.0.0.1"],
        vec!["pki", "client", "collector-a"],
    ] {
        let out = std::process::Command::new(&collector)
            .args(&args)
            .arg("--dir")
            .arg(&pki)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (cert, key) = (
        pki.join("vms/collector-a.pem"),
        pki.join("vms/collector-a.key"),
    );
    let etcd = Cluster::local_tls(
        &dir.path().join("etcd"),
        1,
        ClientTls {
            ca: pki.join("ca.pem"),
            server: (pki.join("server.pem"), pki.join("server.key")),
            client: (cert.clone(), key.clone()),
        },
    )
    .await;
    let url = etcd.endpoints()[0].clone();
    let tls = |with_identity: bool| {
        let mut t = format!("etcd_ca_file = \"{}\"\n", pki.join("ca.pem").display());
        if with_identity {
            t.push_str(&format!(
                "etcd_cert_file = \"{}\"\netcd_key_file = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        t
    };
    let with_tls = |name: &str, identity: bool| {
        config(name, std::slice::from_ref(&url)).replace(
            "prefix = \"/ha-election-test\"\n",
            &format!("prefix = \"/ha-election-test\"\n{}", tls(identity)),
        )
    };
    for (name, identity) in [("a", true), ("b", false)] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        assert!(with_tls(name, identity).contains("etcd_ca_file"));
    }

    let a = Collector::start(&dir.path().join("a"), &with_tls("a", true)).await;
    eventually(Duration::from_secs(30), "a leads over TLS", || async {
        (role(&a).await.as_deref() == Some("leader")).then_some(())
    })
    .await;
    // Without a client certificate etcd refuses the handshake: b never learns who
    // leads, counts the failures and says so.
    let b = Collector::start(&dir.path().join("b"), &with_tls("b", false)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = json(&b, "/api/v1/leader").await;
    assert_eq!(v["role"], "candidate", "{v}");
    assert!(v["leader"].is_null(), "{v}");
    let errors = metric(
        &b.get("/metrics").await,
        "rally_collector_etcd_errors_total",
    );
    assert!(errors.is_some_and(|e| e >= 1.0), "{errors:?}");
    assert!(
        b.logs().concat().contains("etcd: cannot campaign"),
        "{:?}",
        b.logs()
    );
}
