//! Scale-down end to end: two quiet VMs (two agents on this machine) in two groups, one
//! whose scale-down window is open now and one whose window is hours away. The open one
//! shrinks once; the closed one never.
//!
//! A file of its own: the scale-up test loads every CPU with stress-ng, which would make
//! the scale-down evidence (low CPU) false if both ran at once.

use std::time::{Duration, SystemTime};

use rally_tests::rally::{Agent, Collector};
use rally_tests::webhook::Webhook;
use rally_tests::{eventually, online_cpus, proc_mem_total_bytes};
use serde_json::Value;

const SECRET: &str = "e2e-window-secret";
/// Asia/Tokyo has no DST: local time is UTC + 9 h all year, so the test can compute it.
const ZONE: &str = "Asia/Tokyo";
const ZONE_OFFSET_MINUTES: u64 = 9 * 60;

/// "HH:MM" of the local time `offset_minutes` from now in [`ZONE`].
fn local_hhmm(offset_minutes: i64) -> String {
    let utc_minutes = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        / 60;
    let local = (utc_minutes + ZONE_OFFSET_MINUTES) as i64 + offset_minutes;
    let minute_of_day = local.rem_euclid(24 * 60);
    format!("{:02}:{:02}", minute_of_day / 60, minute_of_day % 60)
}

fn group(name: &str, vm: &str, window: &str, vcpus: u32, mem: u64) -> String {
    format!(
        r#"
[[groups]]
name = "{name}"
vms = ["{vm}"]
dry_run = false
allow_restart = true
timezone = "{ZONE}"
ladder = [
  {{ name = "S", vcpus = {vcpus}, memory_bytes = {small} }},
  {{ name = "M", vcpus = {vcpus}, memory_bytes = {mem} }},
]
rules = []
targets = []
[groups.scale_down]
window = "{window}"
lookback = "15s"
margin = 0.0
cpu_ceiling = 1.0
memory_ceiling = 1.0
nightly_cap = 1
verify_timeout = "3s"
"#,
        small = mem / 2,
    )
}

async fn decisions(collector: &Collector, vm: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&collector.get(&format!("/api/v1/decisions?vm={vm}")).await)
            .expect("decisions JSON");
    v["decisions"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scale_down_fires_once_inside_its_window_and_never_outside() {
    let dir = tempfile::tempdir().unwrap();
    let (vcpus, mem) = (online_cpus(), proc_mem_total_bytes());
    let hook = Webhook::start(SECRET, &[]).await;
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let open = format!("{}-{}", local_hhmm(-60), local_hhmm(60));
    let closed = format!("{}-{}", local_hhmm(6 * 60), local_hhmm(8 * 60));
    let config = format!(
        "[engine]\ntick = \"250ms\"\n\n[actuator]\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"{}\"\n{}{}",
        hook.url(),
        secret.display(),
        group("night-in", "quiet-in", &open, vcpus, mem),
        group("night-out", "quiet-out", &closed, vcpus, mem),
    );
    let collector = Collector::start(dir.path(), &config).await;
    let _a = Agent::start(dir.path(), "quiet-in", &[collector.grpc_url()], "500ms", "");
    let _b = Agent::start(
        dir.path(),
        "quiet-out",
        &[collector.grpc_url()],
        "500ms",
        "",
    );

    // The 15 s lookback must fill before the open window's VM may shrink.
    let shrink = eventually(Duration::from_secs(45), "a scale-down webhook", || async {
        hook.received().first().cloned()
    })
    .await;
    assert!(shrink.signature_ok);
    assert_eq!(shrink.body["vm"], "quiet-in", "{:#?}", shrink.body);
    assert_eq!(shrink.body["direction"], "down");
    assert_eq!(shrink.body["from"]["rung"], "M");
    assert_eq!(shrink.body["to"]["rung"], "S");
    assert_eq!(shrink.body["trigger"], "scale_down");
    let evidence = shrink.body["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 2, "{evidence:?}");
    assert_eq!(evidence[0]["metric"], "cpu_utilization");
    assert_eq!(evidence[1]["metric"], "memory_used_ratio");

    // The VM never shrinks (nothing here resizes it): the resize fails at its 3 s
    // deadline, and the nightly cap (1) holds the VM for the rest of the window.
    let id = shrink.body["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(20),
        "the unverified scale-down failing",
        || async {
            let d = decisions(&collector, "quiet-in").await;
            d.first()
                .is_some_and(|d| d["status"] == "failed")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let received = hook.received();
    assert_eq!(received.len(), 1, "more than one scale-down: {received:#?}");
    let listed = decisions(&collector, "quiet-in").await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["decision"]["id"], id.as_str());
    assert_eq!(listed[0]["verification"]["verified"], false);
    assert!(decisions(&collector, "quiet-out").await.is_empty());

    // The closed window is the reason the other VM is left alone, and it says so.
    let groups: Value = serde_json::from_str(&collector.get("/api/v1/groups").await).unwrap();
    let out = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "night-out")
        .cloned()
        .unwrap();
    assert!(
        out["skips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "window_closed"),
        "{out}"
    );
    let metrics = collector.get("/metrics").await;
    assert!(
        metrics.contains("rally_resize_skips{group=\"night-out\",reason=\"window_closed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("rally_resize_verifications_total{group=\"night-in\",result=\"failed\"} 1")
    );
}
