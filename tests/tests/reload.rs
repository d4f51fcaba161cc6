//! systemd integration and live reloads of the real daemons: readiness and stopping
//! through `NOTIFY_SOCKET`, and SIGHUP re-reading the configuration without dropping
//! an agent's stream (a broken file is rejected and the running configuration stays).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rally_tests::process::Process;
use rally_tests::rally::{Agent, Collector};
use rally_tests::{bin, eventually, free_port};
use serde_json::Value;

/// Long enough for any sane machine; only reached when a daemon is broken.
const PATIENCE: Duration = Duration::from_secs(30);

/// A notification socket owned by the test, as systemd's is for a Type=notify unit.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(PATIENCE))
            .expect("set a read timeout");
        Self { socket, path }
    }

    /// The next datagram, as text; panics after `PATIENCE` (with the daemon's log).
    fn next(&self, process: &Process) -> String {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no notification ({e}); log:\n{}", process.log()),
        }
    }
}

fn spawn_with_notify(name: &str, args: &[&str], config: &Path, notify: &NotifySocket) -> Process {
    let mut cmd = Command::new(bin::path(name));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "info");
    let log = config.with_extension("log");
    Process::spawn(name, cmd, &log)
}

#[test]
fn agent_notifies_systemd_ready_after_its_first_sample_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let config = dir.path().join("agent.toml");
    // No collector listens there: readiness must not wait for the network.
    std::fs::write(
        &config,
        "vm_id = \"notify-1\"\ncollectors = [\"http://127.0.0.1:1\"]\ninterval = \"1s\"\n",
    )
    .unwrap();
    let mut agent = spawn_with_notify("rally-agent", &["run"], &config, &notify);
    assert_eq!(notify.next(&agent), "READY=1\n");
    agent.signal("HUP");
    let reloading = notify.next(&agent);
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
    assert_eq!(notify.next(&agent), "READY=1\n");
    agent.signal("TERM");
    assert_eq!(notify.next(&agent), "STOPPING=1\n");
    assert!(agent.terminate(PATIENCE), "agent did not exit cleanly");
}

#[test]
fn collector_notifies_systemd_ready_once_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let config = dir.path().join("collector.toml");
    let (grpc, http) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "[listen]\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\n[state]\ndir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut collector = spawn_with_notify("rally-collector", &["run"], &config, &notify);
    assert_eq!(notify.next(&collector), "READY=1\n");
    // Ready means listening: both ports accept a connection now, without retrying.
    for port in [grpc, http] {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} not listening after READY=1: {e}"));
    }
    collector.signal("TERM");
    assert_eq!(notify.next(&collector), "STOPPING=1\n");
    assert!(
        collector.terminate(PATIENCE),
        "collector did not exit cleanly"
    );
}

fn vm<'a>(vms: &'a Value, id: &str) -> Option<&'a Value> {
    vms["vms"].as_array()?.iter().find(|v| v["vm"] == id)
}

/// How many streams the collector accepted from `vm` (its "agent connected" lines).
fn connections(collector: &Collector, vm: &str) -> usize {
    let needle = format!("vm={vm} ");
    collector
        .logs()
        .iter()
        .flat_map(|log| log.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.contains("agent connected") && l.contains(&needle))
        .count()
}

/// Waits until `vm`'s latest report covers an interval within 25 % of `seconds`, and
/// returns its sequence number.
async fn wait_for_interval(collector: &Collector, id: &str, seconds: f64, log: &str) -> u64 {
    eventually(
        Duration::from_secs(30),
        &format!("{id} reporting every {seconds}s"),
        || async {
            let vms = collector.vms().await;
            let latest = &vm(&vms, id)?["latest"];
            let interval = latest["interval_seconds"].as_f64()?;
            ((interval - seconds).abs() <= seconds * 0.25).then(|| latest["seq"].as_u64())?
        },
    )
    .await;
    let vms = collector.vms().await;
    vm(&vms, id)
        .and_then(|v| v["latest"]["seq"].as_u64())
        .unwrap_or_else(|| panic!("{id} has no report; agent log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_sighup_changes_the_interval_without_reconnecting_and_keeps_a_broken_file_out() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), "").await;
    let mut agent = Agent::start(dir.path(), "reload-a", &[collector.grpc_url()], "500ms", "");
    wait_for_interval(&collector, "reload-a", 0.5, &agent.process.log()).await;

    // A new interval, applied by SIGHUP.
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, text.replace("\"500ms\"", "\"2s\"")).unwrap();
    agent.process.signal("HUP");
    let seq = wait_for_interval(&collector, "reload-a", 2.0, &agent.process.log()).await;

    // A broken file: rejected with its file, line and key; the agent keeps running on
    // the configuration it had.
    let broken = format!(
        "{}\nbuffer_reports = \"many\"\n",
        std::fs::read_to_string(&agent.config).unwrap()
    );
    let broken_line = broken.lines().count();
    std::fs::write(&agent.config, &broken).unwrap();
    agent.process.signal("HUP");
    let expected = format!("{}:{broken_line}:", agent.config.display());
    eventually(
        Duration::from_secs(10),
        "the rejection in the agent's log",
        || {
            let log = agent.process.log();
            let hit = log.lines().any(|l| {
                l.contains("configuration rejected")
                    && l.contains(&expected)
                    && l.contains("key `buffer_reports`")
            });
            async move { hit.then_some(()) }
        },
    )
    .await;
    let later = eventually(Duration::from_secs(30), "two more reports", || async {
        let vms = collector.vms().await;
        let latest = &vm(&vms, "reload-a")?["latest"];
        let s = latest["seq"].as_u64()?;
        (s >= seq + 2).then(|| latest.clone())
    })
    .await;
    let interval = later["interval_seconds"].as_f64().unwrap();
    assert!(
        (interval - 2.0).abs() <= 0.5,
        "the old configuration (2s) stays: {later}"
    );
    assert!(
        agent.process.is_running(),
        "the agent must survive a broken file"
    );

    // One stream all along: the collector accepted a single connection from this run
    // and lost no report.
    let vms = collector.vms().await;
    let v = vm(&vms, "reload-a").unwrap();
    assert_eq!(
        connections(&collector, "reload-a"),
        1,
        "{:#?}",
        collector.logs()
    );
    assert_eq!(v["streams"], 1, "{v}");
    assert_eq!(v["reports"]["lost"], 0, "{v}");
    assert_eq!(
        agent
            .process
            .log()
            .matches("stream to collector open")
            .count(),
        1,
        "{}",
        agent.process.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_sighup_moves_a_vm_into_a_group_without_dropping_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(
        dir.path(),
        "[[groups]]\nname = \"web\"\nvms = [\"web-9\"]\n",
    )
    .await;
    let agent = Agent::start(dir.path(), "reload-c", &[collector.grpc_url()], "500ms", "");
    let group_of = |vms: &Value| vm(vms, "reload-c").map(|v| v["group"].clone());
    eventually(
        Duration::from_secs(30),
        "reload-c reporting, ungrouped",
        || async {
            let vms = collector.vms().await;
            (group_of(&vms)? == "ungrouped" && vm(&vms, "reload-c")?["latest"].is_object())
                .then_some(())
        },
    )
    .await;

    // The group gains the VM, applied by SIGHUP.
    let text = std::fs::read_to_string(&collector.config).unwrap();
    let grouped = text.replace("vms = [\"web-9\"]", "vms = [\"web-9\", \"reload-c\"]");
    assert_ne!(text, grouped);
    std::fs::write(&collector.config, &grouped).unwrap();
    let process = collector.process.as_ref().unwrap();
    process.signal("HUP");
    eventually(Duration::from_secs(30), "reload-c in group web", || async {
        let vms = collector.vms().await;
        (group_of(&vms)? == "web").then_some(())
    })
    .await;
    let groups: Value =
        serde_json::from_str(&collector.get("/api/v1/groups").await).expect("groups JSON");
    assert!(
        groups.to_string().contains("reload-c"),
        "the engine sees the new member: {groups}"
    );
    let seq = collector.vms().await;
    let seq = vm(&seq, "reload-c").unwrap()["latest"]["seq"]
        .as_u64()
        .unwrap();

    // A broken file: rejected with file, line and key; the running configuration stays.
    let broken = format!("{grouped}\n[ingest]\nstale_afterr = \"5s\"\n");
    let broken_line = broken.lines().count();
    std::fs::write(&collector.config, &broken).unwrap();
    process.signal("HUP");
    let expected = format!("{}:{broken_line}:", collector.config.display());
    eventually(
        Duration::from_secs(10),
        "the rejection in the collector's log",
        || {
            let hit = collector.logs().concat().lines().any(|l| {
                l.contains("configuration rejected")
                    && l.contains(&expected)
                    && l.contains("key `ingest.stale_afterr`")
            });
            async move { hit.then_some(()) }
        },
    )
    .await;
    eventually(Duration::from_secs(30), "reports still flowing", || async {
        let vms = collector.vms().await;
        (vm(&vms, "reload-c")?["latest"]["seq"].as_u64()? >= seq + 2).then_some(())
    })
    .await;
    assert!(collector.process.as_mut().unwrap().is_running());

    let vms = collector.vms().await;
    let v = vm(&vms, "reload-c").unwrap();
    assert_eq!(
        v["group"], "web",
        "the old (reloaded) configuration stays: {v}"
    );
    assert_eq!(v["streams"], 1, "{v}");
    assert_eq!(v["reports"]["lost"], 0, "{v}");
    assert_eq!(
        connections(&collector, "reload-c"),
        1,
        "{:#?}",
        collector.logs()
    );
    assert_eq!(
        agent
            .process
            .log()
            .matches("stream to collector open")
            .count(),
        1,
        "{}",
        agent.process.log()
    );
}
