//! The whole path: real agents sample this machine and stream to a real collector,
//! which serves the fleet on `/api/v1/vms` and `/metrics`.

use rally_tests::ledger::{accepted, sample};
use rally_tests::rally::{Agent, Collector};
use rally_tests::{eventually, proc_mem_total_bytes, tool};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn vm<'a>(vms: &'a Value, id: &str) -> Option<&'a Value> {
    vms["vms"].as_array()?.iter().find(|v| v["vm"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_appear_in_api_and_metrics() {
    // Fails before anything starts when promtool is missing.
    tool::require("promtool", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(
        dir.path(),
        "[[groups]]\nname = \"web\"\nvms = [\"web-a\"]\n",
    )
    .await;
    let _a = Agent::start(dir.path(), "web-a", &[collector.grpc_url()], "500ms", "");
    let _b = Agent::start(dir.path(), "db-b", &[collector.grpc_url()], "500ms", "");

    // Both VMs, each with a CPU figure (which needs two samples).
    let vms = eventually(
        Duration::from_secs(30),
        "both VMs with CPU figures",
        || async {
            let vms = collector.vms().await;
            let ready = ["web-a", "db-b"]
                .iter()
                .all(|id| vm(&vms, id).is_some_and(|v| v["latest"]["cpu_utilization"].is_number()));
            ready.then_some(vms)
        },
    )
    .await;

    let mem_total = proc_mem_total_bytes() as f64;
    for (id, group) in [("web-a", "web"), ("db-b", "ungrouped")] {
        let v = vm(&vms, id).unwrap();
        assert_eq!(v["group"], group, "{id}: {v}");
        assert_eq!(v["fresh"], true, "{id}: {v}");
        let cpu = v["latest"]["cpu_utilization"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&cpu), "{id}: cpu {cpu}");
        let total = v["latest"]["memory_total_bytes"].as_f64().unwrap();
        assert!(
            (total - mem_total).abs() / mem_total < 0.01,
            "{id}: memory total {total} vs /proc/meminfo {mem_total}"
        );
        let vcpus = v["size"]["vcpus"].as_u64().unwrap();
        assert!((1..=4096).contains(&vcpus), "{id}: vcpus {vcpus}");
    }

    let metrics = collector.get("/metrics").await;
    for (id, group) in [("web-a", "web"), ("db-b", "ungrouped")] {
        let labels = [("vm", id), ("group", group)];
        assert_eq!(
            sample(&metrics, "rally_vm_up", &labels),
            Some(1.0),
            "{metrics}"
        );
        let cpu = sample(&metrics, "rally_vm_cpu_utilization_ratio", &labels).expect("cpu ratio");
        assert!((0.0..=1.0).contains(&cpu));
        let steal = sample(&metrics, "rally_vm_cpu_steal_ratio", &labels).expect("steal ratio");
        assert!((0.0..=1.0).contains(&steal));
        let total = sample(&metrics, "rally_vm_memory_total_bytes", &labels).expect("mem total");
        assert!((total - mem_total).abs() / mem_total < 0.01);
        let avail =
            sample(&metrics, "rally_vm_memory_available_bytes", &labels).expect("mem avail");
        assert!(avail > 0.0 && avail <= total);
        assert!(sample(&metrics, "rally_vm_vcpus", &labels).expect("vcpus") >= 1.0);
        let ts = sample(&metrics, "rally_vm_last_report_timestamp_seconds", &labels).expect("ts");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - ts).abs() < 60.0, "last report {ts} vs now {now}");

        // The root filesystem as `stat -f /` sees it (statvfs, like df): size and inodes
        // do not move while the test runs; free space may, so only its range is checked.
        let root = [("vm", id), ("mountpoint", "/")];
        let size = sample(&metrics, "rally_vm_filesystem_size_bytes", &root).expect("fs size");
        let files = sample(&metrics, "rally_vm_filesystem_files", &root).expect("fs inodes");
        let free = sample(&metrics, "rally_vm_filesystem_free_bytes", &root).expect("fs free");
        let avail = sample(&metrics, "rally_vm_filesystem_avail_bytes", &root).expect("fs avail");
        let stat = Command::new("stat")
            .args(["-f", "-c", "%b %S %c", "/"])
            .output()
            .unwrap();
        let stat: Vec<f64> = String::from_utf8_lossy(&stat.stdout)
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(size, stat[0] * stat[1], "{id}: / size vs stat -f");
        assert_eq!(files, stat[2], "{id}: / inodes vs stat -f");
        assert!(
            avail <= free && free <= size,
            "{id}: avail {avail} free {free} size {size}"
        );
    }
    assert!(sample(&metrics, "rally_collector_reports_total", &[]).expect("reports") >= 4.0);

    // The scrape is valid Prometheus exposition for Prometheus' own checker.
    let out = tool::promtool_check_metrics(&metrics);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_restart_loses_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "").await;
    let agents = ["vm-1", "vm-2"]
        .map(|id| Agent::start(dir.path(), id, &[collector.grpc_url()], "200ms", ""));

    let seen = |c: &Collector, n: u64| {
        let logs = c.logs();
        let log = logs.last().cloned().unwrap_or_default();
        let runs = accepted(&log);
        let vms: std::collections::BTreeSet<_> = runs
            .iter()
            .filter(|(_, seqs)| seqs.len() as u64 >= n)
            .map(|((vm, _), _)| vm.clone())
            .collect();
        (vms.len() == 2).then_some(())
    };
    eventually(
        Duration::from_secs(30),
        "10 reports from each agent",
        || {
            let r = seen(&collector, 10);
            async move { r }
        },
    )
    .await;

    collector.kill();
    // Several intervals pass with nobody listening: the agents buffer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    collector.start_again().await;
    eventually(
        Duration::from_secs(60),
        "10 more reports from each agent after restart",
        || {
            let r = seen(&collector, 10);
            async move { r }
        },
    )
    .await;
    for mut a in agents {
        assert!(a.process.is_running(), "agent died:\n{}", a.process.log());
        a.process.terminate(Duration::from_secs(10));
    }
    collector.kill();

    let logs = collector.logs();
    assert_eq!(logs.len(), 2);
    let before = accepted(&logs[0]);
    let after = accepted(&logs[1]);
    assert_eq!(before.len(), 2, "one run per agent before: {before:?}");
    for (key, first) in &before {
        let second = after
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} missing after restart"));
        // Each process applies each report once, in order.
        for seqs in [first, second] {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{key:?}: out of order or twice in one process: {seqs:?}"
            );
        }
        // Nothing lost: together they are the run from seq 1 without a gap.
        let mut all: Vec<u64> = first.iter().chain(second).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all[0], 1, "{key:?}: the run starts at seq 1");
        let expected: Vec<u64> = (1..=*all.last().unwrap()).collect();
        assert_eq!(all, expected, "{key:?}: a gap: {first:?} + {second:?}");
        // Across the SIGKILL the restarted collector may apply again the killed one's
        // last reports, applied but not yet acknowledged (docs/protocol.md, "Delivery");
        // tests/tests/faults_restart.rs accounts for them under 50 agents.
    }
}
