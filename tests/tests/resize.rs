//! The resize engine end to end: a real agent on this machine, a real collector with a
//! webhook actuator, a real HTTP receiver that checks signatures, and `stress-ng`
//! loading every CPU.

use std::process::Command;
use std::time::{Duration, Instant};

use rally_tests::process::Process;
use rally_tests::rally::{Agent, Collector};
use rally_tests::webhook::Webhook;
use rally_tests::{eventually, online_cpus, proc_mem_total_bytes, tool};
use serde_json::Value;

const SECRET: &str = "e2e-webhook-secret";
const VM: &str = "e2e-vm";
/// The agent's report interval.
const INTERVAL: Duration = Duration::from_millis(500);
/// The rule's `for`.
const HOLD: Duration = Duration::from_secs(3);

fn config(dir: &std::path::Path, hook: &Webhook, vcpus: u32, mem: u64) -> String {
    let secret = dir.join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write the webhook secret");
    format!(
        r#"
[engine]
tick = "250ms"

[actuator]
kind = "webhook"
url = "{url}"
secret_file = "{secret}"
timeout = "2s"
max_attempts = 5
backoff_initial = "200ms"
backoff_max = "1s"

[[groups]]
name = "web"
vms = ["{VM}"]
dry_run = false
ladder = [
  {{ name = "M", vcpus = {vcpus}, memory_bytes = {mem} }},
  {{ name = "L", vcpus = {vcpus2}, memory_bytes = {mem2} }},
]
targets = []
[[groups.rules]]
metric = "cpu_utilization"
window = "last"
threshold = 0.9
clear = 0.5
for = "3s"
[groups.scale_up]
cooldown = "10m"
verify_timeout = "5m"
"#,
        url = hook.url(),
        secret = secret.display(),
        vcpus2 = vcpus * 2,
        mem2 = mem * 2,
    )
}

async fn decisions(collector: &Collector) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&collector.get(&format!("/api/v1/decisions?vm={VM}")).await)
            .expect("decisions JSON");
    v["decisions"].as_array().cloned().unwrap_or_default()
}

/// Loads every CPU at the lowest priority (nice time counts as busy; the collector and
/// the agent still get scheduled).
fn stress(dir: &std::path::Path) -> Process {
    let stress_ng = tool::require("stress-ng", "stress-ng");
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19"])
        .arg(stress_ng)
        .args(["--cpu", "0", "--timeout", "40s", "--quiet"]);
    Process::spawn("stress-ng", cmd, &dir.join("stress-ng.log"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loaded_vm_is_scaled_up_once_through_a_signed_retried_webhook_even_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (vcpus, mem) = (online_cpus(), proc_mem_total_bytes());
    let hook = Webhook::start(SECRET, &[500, 500]).await;
    let mut collector = Collector::start(dir.path(), &config(dir.path(), &hook, vcpus, mem)).await;
    let _agent = Agent::start(
        dir.path(),
        VM,
        &[collector.grpc_url()],
        &format!("{}ms", INTERVAL.as_millis()),
        "",
    );
    // The agent is reporting before the load starts.
    eventually(
        Duration::from_secs(20),
        "the agent's first CPU figure",
        || async {
            let vms = collector.vms().await;
            vms["vms"]
                .as_array()?
                .iter()
                .any(|v| v["vm"] == VM && v["latest"]["cpu_utilization"].is_number())
                .then_some(())
        },
    )
    .await;

    let mut load = stress(dir.path());
    let started = Instant::now();
    // Watch for the first loaded report reaching the collector (the rule's `for` starts
    // at the first tick after it) and for the first webhook.
    let mut seen = None;
    let first = loop {
        if let Some(first) = hook.received().first().cloned() {
            break first;
        }
        if seen.is_none() {
            let vms = collector.vms().await;
            let loaded = vms["vms"].as_array().into_iter().flatten().any(|v| {
                v["vm"] == VM
                    && v["latest"]["cpu_utilization"]
                        .as_f64()
                        .is_some_and(|u| u >= 0.9)
            });
            if loaded {
                seen = Some(Instant::now());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no webhook after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen = seen.unwrap_or(started);
    let after_seen = first.at.duration_since(seen);
    println!(
        "FIGURE load visible to the collector {:.0} ms after stress-ng started; webhook {:.0} ms after that; \
         {:.0} ms after `for` ({} s) expired (engine tick 250 ms, agent interval {} ms)",
        seen.duration_since(started).as_secs_f64() * 1000.0,
        after_seen.as_secs_f64() * 1000.0,
        after_seen.saturating_sub(HOLD).as_secs_f64() * 1000.0,
        HOLD.as_secs(),
        INTERVAL.as_millis()
    );
    assert!(
        after_seen <= HOLD + 2 * INTERVAL,
        "the scale-up took {after_seen:?} from the loaded report, more than `for` + two intervals"
    );

    // 500, 500, then 200: three attempts of one decision, same id and key, all signed.
    let received = eventually(Duration::from_secs(10), "three attempts", || async {
        let r = hook.received();
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert_eq!(received.len(), 3, "{received:#?}");
    let id = received[0].body["id"].as_str().expect("id").to_owned();
    for (i, r) in received.iter().enumerate() {
        assert!(r.signature_ok, "attempt {i} has a bad signature");
        assert_eq!(r.body["id"], id.as_str());
        assert_eq!(r.idempotency_key.as_deref(), Some(id.as_str()));
        assert_eq!(r.attempt.as_deref(), Some((i + 1).to_string().as_str()));
    }
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    let body = &received[0].body;
    assert_eq!(body["vm"], VM);
    assert_eq!(body["group"], "web");
    assert_eq!(body["direction"], "up");
    assert_eq!(body["dry_run"], false);
    assert_eq!(body["from"]["rung"], "M");
    assert_eq!(body["from"]["vcpus"], vcpus);
    assert_eq!(body["from"]["memory_bytes"], mem);
    assert_eq!(body["to"]["rung"], "L");
    assert_eq!(body["to"]["vcpus"], vcpus * 2);
    assert_eq!(body["to"]["memory_bytes"], mem * 2);
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|t| t.contains('T') && t.ends_with('Z')),
        "{body}"
    );
    let evidence = &body["evidence"][0];
    assert_eq!(evidence["metric"], "cpu_utilization");
    assert_eq!(evidence["window"], "last");
    assert!(evidence["value"].as_f64().unwrap() >= 0.9, "{evidence}");
    assert_eq!(evidence["threshold"], 0.9);
    assert!(evidence["held_for_seconds"].as_u64().unwrap() >= HOLD.as_secs());
    assert!(body["reason"].as_str().unwrap().contains("cpu_utilization"));

    // The collector recorded one decision with three attempts and the final word.
    let listed = eventually(Duration::from_secs(10), "the recorded outcome", || async {
        let d = decisions(&collector).await;
        d.first()
            .is_some_and(|d| d["verdict"] == "accepted")
            .then_some(d)
    })
    .await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["decision"]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "in_flight");
    assert_eq!(listed[0]["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(
        listed[0]["decision"]["evidence"][0]["metric"],
        "cpu_utilization"
    );
    let metrics = collector.get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "rally_resize_requests_total{{group=\"web\",vm=\"{VM}\",direction=\"up\",outcome=\"accepted\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("rally_group_resizes_in_flight{group=\"web\"} 1"));

    // A crash right after the resize was sent, and a restart while the load goes on.
    collector.kill();
    collector.start_again().await;
    let groups: Value = serde_json::from_str(&collector.get("/api/v1/groups").await).unwrap();
    let web = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "web")
        .cloned()
        .unwrap();
    assert_eq!(web["in_flight"]["id"], id.as_str(), "{web}");
    // The agent reconnects; well past another `for` the VM is still loaded.
    eventually(
        Duration::from_secs(20),
        "the agent back and fresh",
        || async {
            let vms = collector.vms().await;
            vms["vms"]
                .as_array()?
                .iter()
                .any(|v| v["vm"] == VM && v["fresh"] == true)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(HOLD + Duration::from_secs(2)).await;
    let vms = collector.vms().await;
    let util = vms["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == VM)
        .and_then(|v| v["latest"]["cpu_utilization"].as_f64())
        .unwrap();
    assert!(
        util >= 0.9,
        "the load is off ({util}); the check proves nothing"
    );
    let received = hook.received();
    assert!(
        received.iter().all(|r| r.body["id"] == id.as_str()),
        "a second resize was sent after the restart: {received:#?}"
    );
    let listed = decisions(&collector).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["decision"]["id"], id.as_str());
    load.terminate(Duration::from_secs(5));
}
