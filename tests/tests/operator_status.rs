//! The fleet as operators read it, from the real binaries: `rally-collector status` and
//! `vms` show a group's members on their rung with each rule's value and timer,
//! `/metrics` has the same figures as series (and passes promtool), `/api/v1/vms` lists
//! a VM's sources with their last values; `rally-agent status` says whether the agent
//! reaches its collector and what it has buffered when it does not; and the operator
//! commands reach an HTTPS API through `--ca-file` with the CA `rally-collector pki`
//! made, and refuse it without.

#![allow(clippy::unwrap_used)] // a panic is the test failure report

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rally_tests::rally::{Agent, Collector};
use rally_tests::{bin, eventually, free_port, tool};
use serde_json::Value;

/// Runs a binary with `args`, without a terminal and with `NO_COLOR` unset; returns
/// (success, stdout, stderr).
fn run(binary: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin::path(binary))
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("RALLY_URL")
        .env_remove("RALLY_TOKEN_FILE")
        .env_remove("RALLY_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a binary with `args` and expects success; its stdout.
fn ok(binary: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = run(binary, args);
    assert!(success, "{binary} {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}

/// This machine's size as its agent reports it: online CPUs and MemTotal.
fn machine_size() -> (u32, u64) {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let cpus = rally_agent::sample::size::count_cpu_list(cpus.trim()).unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let memory = rally_agent::sample::memory::parse(&meminfo).unwrap();
    (cpus, memory.total_bytes)
}

/// The value of the first sample of `/metrics` text that starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_vms_metrics_and_the_agent_tell_the_same_story() {
    let dir = tempfile::tempdir().unwrap();
    let (vcpus, memory) = machine_size();
    // This machine is on rung S. Its CPU rule holds from the first report (>= 0) and
    // fires only after an hour; its memory rule (>= 1.0) never holds.
    let collector = Collector::start(
        dir.path(),
        &format!(
            r#"[[groups]]
name = "web"
vms = ["web-1"]
dry_run = true
ladder = [
  {{ name = "S", vcpus = {vcpus}, memory_bytes = {memory} }},
  {{ name = "XL", vcpus = {}, memory_bytes = {} }},
]
[[groups.rules]]
metric = "cpu_utilization"
window = "last"
threshold = 0.0
for = "1h"
[[groups.rules]]
metric = "memory_used_ratio"
window = "last"
threshold = 1.0
for = "1m"
"#,
            vcpus * 2,
            memory * 2
        ),
    )
    .await;
    let socket = dir.path().join("agent.sock");
    // The agent reads the collector's own /metrics as its request source.
    let mut agent = Agent::start(
        dir.path(),
        "web-1",
        &[collector.grpc_url()],
        "200ms",
        &format!(
            "status_socket = \"{}\"\n\n[[sources]]\nname = \"collector\"\nkind = \"prometheus\"\nurl = \"{}\"\nmetric = \"rally_collector_reports_total\"\ntimeout = \"150ms\"\n",
            socket.display(),
            collector.url("/metrics")
        ),
    );
    let url = format!("http://{}", collector.http);

    // The VM is fresh, on rung S, its source read, and the CPU rule holding.
    let vm = eventually(
        Duration::from_secs(30),
        "web-1 on rung S with its source",
        || {
            let collector = &collector;
            async move {
                let vms = collector.vms().await;
                let vm = vms["vms"]
                    .as_array()?
                    .iter()
                    .find(|v| v["vm"] == "web-1")?
                    .clone();
                let holding = vm["rules"][0]["held_seconds"].as_f64().is_some();
                let source_read = vm["sources"][0]["requests_per_second"].is_number();
                (vm["fresh"] == true && vm["rung"] == "S" && holding && source_read).then_some(vm)
            }
        },
    )
    .await;
    assert_eq!(vm["rung_index"], 0, "{vm}");
    let source = &vm["sources"][0];
    assert_eq!(source["name"], "collector", "{vm}");
    assert_eq!(source["kind"], "prometheus", "{vm}");
    assert_eq!(source["up"], true, "{vm}");
    // Durations in the API are seconds (docs/api.md), sources' included.
    assert!(
        source["interval_seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{vm}"
    );
    let cpu_rule = &vm["rules"][0];
    assert_eq!(cpu_rule["metric"], "cpu_utilization", "{vm}");
    assert_eq!(cpu_rule["comparison"], ">=", "{vm}");
    assert_eq!(cpu_rule["for_seconds"], 3600, "{vm}");
    assert_eq!(cpu_rule["firing"], false, "{vm}");
    assert!(cpu_rule["value"].is_number(), "{vm}");
    let memory_rule = &vm["rules"][1];
    assert!(memory_rule["held_seconds"].is_null(), "{vm}");
    assert!(memory_rule["value"].as_f64().unwrap() < 1.0, "{vm}");

    // /api/v1/groups carries the same readings per member.
    let groups: Value = serde_json::from_str(&collector.get("/api/v1/groups").await).unwrap();
    let member = &groups["groups"][0]["vms"][0];
    assert_eq!(member["vm"], "web-1", "{groups}");
    assert_eq!(member["rung"], "S", "{groups}");
    assert_eq!(member["rules"][1]["threshold"], 1.0, "{groups}");

    // `vms`: one aligned row, no colour without a terminal.
    let vms = ok("rally-collector", &["vms", "--url", &url]);
    let lines: Vec<&str> = vms.lines().collect();
    assert_eq!(lines.len(), 2, "{vms}");
    assert!(
        lines[0].starts_with("VM     group  rung  state  last report"),
        "{vms}"
    );
    assert!(lines[1].starts_with("web-1  web    S     up     "), "{vms}");
    assert!(lines[1].contains("/s"), "the source's request rate: {vms}");
    assert!(!vms.contains('\x1b'), "{vms}");

    // `status`: the group, its member on its rung, both rules with their state.
    let status = ok("rally-collector", &["status", "--url", &url]);
    assert!(
        status.starts_with(
            "fleet: 1 VMs, 1 fresh, 0 stale; 1 groups\n\ngroup web: active, dry-run\n"
        ),
        "{status}"
    );
    assert!(
        status.contains("  in flight: none; failed in a row: 0\n"),
        "{status}"
    );
    assert!(status.contains("  last decision: none\n"), "{status}");
    assert!(status.contains("\n  web-1  S     up     "), "{status}");
    assert!(status.contains("  rules:\n"), "{status}");
    let cpu_line = status
        .lines()
        .find(|l| l.contains("cpu_utilization last >= 0"))
        .unwrap_or_else(|| panic!("no CPU rule line:\n{status}"));
    assert!(
        cpu_line.contains("holding ") && cpu_line.ends_with(" of 1 h 0 min"),
        "{status}"
    );
    let memory_line = status
        .lines()
        .find(|l| l.contains("memory_used_ratio last >= 1"))
        .unwrap_or_else(|| panic!("no memory rule line:\n{status}"));
    assert!(memory_line.ends_with("not holding"), "{status}");
    assert!(!status.contains('\x1b'), "{status}");
    let json: Value =
        serde_json::from_str(&ok("rally-collector", &["status", "--json", "--url", &url])).unwrap();
    assert_eq!(json["groups"][0]["vms"][0]["rung"], "S", "{json}");
    assert_eq!(json["vms"][0]["vm"], "web-1", "{json}");

    // /metrics: the same figures as series, and promtool accepts the scrape.
    let metrics = collector.get("/metrics").await;
    for needle in [
        "rally_vm_rung{vm=\"web-1\",group=\"web\",rung=\"S\"} 1\n",
        "rally_vm_rung{vm=\"web-1\",group=\"web\",rung=\"XL\"} 0\n",
        "rally_vm_rung_index{vm=\"web-1\",group=\"web\"} 0\n",
        "rally_rule_threshold{group=\"web\",rule=\"1\",metric=\"memory_used_ratio\",window=\"last\"} 1\n",
        "rally_rule_for_seconds{group=\"web\",rule=\"0\",metric=\"cpu_utilization\",window=\"last\"} 3600\n",
        "rally_rule_held_seconds{vm=\"web-1\",group=\"web\",rule=\"1\",metric=\"memory_used_ratio\",window=\"last\"} 0\n",
        "rally_rule_firing{vm=\"web-1\",group=\"web\",rule=\"0\",metric=\"cpu_utilization\",window=\"last\"} 0\n",
    ] {
        assert!(
            metrics.contains(needle),
            "missing {needle:?} in:\n{metrics}"
        );
    }
    let held = sample(
        &metrics,
        "rally_rule_held_seconds{vm=\"web-1\",group=\"web\",rule=\"0\",metric=\"cpu_utilization\",window=\"last\"}",
    )
    .unwrap();
    assert!(held > 0.0, "{metrics}");
    let value = sample(
        &metrics,
        "rally_rule_value{vm=\"web-1\",group=\"web\",rule=\"1\",metric=\"memory_used_ratio\",window=\"last\"}",
    )
    .unwrap();
    assert!((0.0..1.0).contains(&value), "{metrics}");
    promtool_accepts(&metrics);

    // The agent: connected, acknowledged, nothing waiting.
    let socket_arg = socket.display().to_string();
    let config = agent.config.display().to_string();
    let text = ok("rally-agent", &["--config", &config, "status"]);
    let collector_line = format!("collector {}: connected for ", collector.grpc_url());
    assert!(text.starts_with("rally-agent "), "{text}");
    assert!(text.contains(", VM web-1: up "), "{text}");
    assert!(text.contains("sampling every 200 ms"), "{text}");
    assert!(text.contains(&collector_line), "{text}");
    assert!(text.contains("; last ack "), "{text}");
    let answer: Value = serde_json::from_str(&ok(
        "rally-agent",
        &["status", "--json", "--socket", &socket_arg],
    ))
    .unwrap();
    let link = &answer["collectors"][0];
    assert_eq!(link["connected"], true, "{answer}");
    assert!(link["last_ack_at_seconds"].is_number(), "{answer}");
    assert!(link["acked_seq"].as_u64().unwrap() > 0, "{answer}");
    assert_eq!(answer["pid"], agent.process.pid(), "{answer}");

    // The collector goes away: the agent says so and counts what waits for it.
    let mut collector = collector;
    collector.kill();
    let answer = eventually(Duration::from_secs(30), "the agent to notice", || {
        let socket_arg = socket_arg.clone();
        async move {
            let (success, stdout, _) = run(
                "rally-agent",
                &["status", "--json", "--socket", &socket_arg],
            );
            let answer: Value = serde_json::from_str(&stdout).ok()?;
            let link = &answer["collectors"][0];
            (success && link["connected"] == false && link["buffered"].as_u64()? > 2)
                .then_some(answer)
        }
    })
    .await;
    assert!(
        answer["collectors"][0]["last_error"].is_string(),
        "{answer}"
    );
    let text = ok("rally-agent", &["status", "--socket", &socket_arg]);
    assert!(text.contains(": NOT CONNECTED ("), "{text}");
    assert!(text.contains(" reports buffered"), "{text}");

    // Stopped, the agent leaves no socket behind, and `status` fails saying why.
    assert!(agent.process.terminate(Duration::from_secs(10)));
    assert!(!socket.exists(), "the socket outlived the agent");
    let (success, _, stderr) = run("rally-agent", &["--config", &config, "status"]);
    assert!(!success);
    assert!(stderr.contains("cannot reach the agent at "), "{stderr}");
}

/// Passes `text` through `promtool check metrics` and expects no complaint.
fn promtool_accepts(text: &str) {
    let out = tool::promtool_check_metrics(text);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `rally-collector pki <args> --dir <dir>` and expects success.
fn pki(dir: &Path, args: &[&str]) {
    let dir = dir.display().to_string();
    ok(
        "rally-collector",
        &[&["pki"][..], args, &["--dir", &dir]].concat(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_reach_an_https_api_through_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir, &["ca"]);
    pki(&pki_dir, &["server", "--name", "localhost"]);
    let other = dir.path().join("other");
    pki(&other, &["ca", "--name", "Another CA"]);
    let (grpc, http) = (free_port(), free_port());
    let state = dir.path().join("state");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\n\n[state]\ndir = \"{}\"\n\n\
             [tls]\ncert_file = \"{1}/server.pem\"\nkey_file = \"{1}/server.key\"\nhttp = true\n\n\
             [[groups]]\nname = \"web\"\nvms = [\"web-1\"]\n",
            state.display(),
            pki_dir.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin::path("rally-collector"));
    cmd.arg("--config").arg(&config).arg("run");
    let _collector = rally_tests::process::Process::spawn(
        "rally-collector",
        cmd,
        &dir.path().join("collector.log"),
    );
    let url = format!("https://localhost:{http}");
    let ca = pki_dir.join("ca.pem").display().to_string();

    let status = eventually(Duration::from_secs(30), "the HTTPS API", || {
        let (url, ca) = (url.clone(), ca.clone());
        async move {
            let (success, stdout, _) = run(
                "rally-collector",
                &["status", "--url", &url, "--ca-file", &ca],
            );
            success.then_some(stdout)
        }
    })
    .await;
    // web-1 is configured but never reported.
    assert!(
        status
            .starts_with("fleet: 1 VMs, 0 fresh, 1 stale; 1 groups\n\ngroup web: monitored only\n"),
        "{status}"
    );
    assert!(
        status.contains("\n  web-1  –     never reported  –"),
        "{status}"
    );
    let vms = ok("rally-collector", &["vms", "--url", &url, "--ca-file", &ca]);
    assert!(
        vms.contains("\nweb-1  web    –     never reported  –"),
        "{vms}"
    );
    // The environment variable does the same.
    let out = Command::new(bin::path("rally-collector"))
        .args(["groups", "--url", &url])
        .env("RALLY_CA_FILE", &ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let groups = String::from_utf8_lossy(&out.stdout);
    assert!(groups.starts_with("web: monitored only"), "{groups}");

    // Without the CA, or with another one, the certificate is not trusted.
    let other_ca = other.join("ca.pem").display().to_string();
    for args in [
        vec!["vms", "--url", url.as_str()],
        vec!["vms", "--url", url.as_str(), "--ca-file", other_ca.as_str()],
    ] {
        let (success, _, stderr) = run("rally-collector", &args);
        assert!(!success, "{args:?} trusted the collector");
        assert!(
            stderr.contains(&format!("calling {url}/api/v1/vms")),
            "{stderr}"
        );
    }
    // A CA file that is not one says which file and why.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let (success, _, stderr) = run(
        "rally-collector",
        &[
            "vms",
            "--url",
            &url,
            "--ca-file",
            &bogus.display().to_string(),
        ],
    );
    assert!(!success);
    assert!(
        stderr.contains("--ca-file ") && stderr.contains("bogus.pem"),
        "{stderr}"
    );
}
