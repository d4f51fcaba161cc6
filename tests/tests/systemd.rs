//! The packaged units under a real systemd as PID 1: two Debian 12 containers
//! booted by `systemd-nspawn`, a collector host and an agent host, each on a
//! network namespace of its own joined by a veth pair (10.77.0.0/24, a network this
//! test creates and deletes), with the `.deb`s from `target/debian/` installed.
//!
//! Checked there: both units become `active (running)` through `Type=notify`; the
//! agent reaches the collector on the other host; `systemctl reload
//! rally-collector` applies a new configuration without dropping the agent's
//! stream; `rally-agent status` reaches the agent on its socket in the unit's runtime
//! directory; a SIGKILLed collector is restarted by systemd (`Restart=on-failure`) and
//! the agent reconnects; the hardening leaves both daemons working (no permission
//! error in their journals).
//!
//! Like the packaging tests this installs the packages `scripts/package` built and
//! boots roots that `debootstrap` builds once and caches under
//! `/var/cache/rally-tests/`, so it needs root; a missing tool fails the test (never
//! a skip) with the package to install. Every wait is bounded, and the containers
//! and namespaces are removed however the test ends.

use rally_tests::debian_root::{self, DebianRoot};
use rally_tests::nspawn::{Container, Netns, wait_for};
use rally_tests::packages::deb;
use rally_tests::tool;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

/// The collector host's address on the test's network.
const COLLECTOR_HOST: &str = "10.77.0.1";
/// The agent host's address on the test's network.
const AGENT_HOST: &str = "10.77.0.2";
/// The agent's VM name in the fleet.
const VM: &str = "agent-host";
/// A boot of a container, units started.
const BOOT: Duration = Duration::from_secs(120);
/// Long enough for any sane machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

/// The collector host's configuration: listening on its own address, accepting any
/// agent (`ungrouped`), with `groups` appended.
fn collector_config(groups: &str) -> String {
    format!(
        "dry_run = true\n\
         [listen]\n\
         grpc = \"{COLLECTOR_HOST}:9470\"\n\
         http = \"{COLLECTOR_HOST}:9471\"\n\
         [ingest]\n\
         unknown_vms = \"ungrouped\"\n\
         [state]\n\
         dir = \"/var/lib/rally\"\n\
         [auth]\n\
         mode = \"none\"\n\
         {groups}"
    )
}

/// The agent host's configuration: reporting every second to the collector host.
fn agent_config() -> String {
    format!(
        "vm_id = \"{VM}\"\n\
         collectors = [\"http://{COLLECTOR_HOST}:9470\"]\n\
         interval = \"1s\"\n"
    )
}

/// A fresh systemd root with `package` installed by `dpkg -i` and its
/// configuration file replaced by `config` (an admin's edit, before the first boot).
fn root_with(package: &str, config: &str) -> DebianRoot {
    let root = DebianRoot::new(debian_root::SYSTEMD, "the systemd test");
    let deb = deb(package);
    let name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 name");
    fs::copy(&deb, root.path().join("tmp").join(name)).expect("copy the package");
    // The systemd root has every dependency (systemd, procps): dpkg alone suffices.
    root.run(&["dpkg", "-i", &format!("/tmp/{name}")]);
    let wants = format!("/etc/systemd/system/multi-user.target.wants/{package}.service");
    assert!(root.exists(&wants), "{package} is not enabled: no {wants}");
    let short = package.trim_start_matches("rally-");
    root.write(&format!("/etc/rally/{short}.toml"), config);
    root
}

/// Waits until `unit` is active (running) after `restarts` restarts, with a main
/// process other than `not_pid`; returns its main PID.
fn wait_running(host: &Container, unit: &str, restarts: u32, not_pid: &str) -> String {
    let expected = [
        ("Type", "notify".to_owned()),
        ("ActiveState", "active".to_owned()),
        ("SubState", "running".to_owned()),
        ("NRestarts", restarts.to_string()),
    ];
    wait_for(
        PATIENCE,
        &format!("{unit} on {} to be {expected:?}", host.name()),
        |last| {
            let now: BTreeMap<String, String> = host
                .unit_properties(
                    unit,
                    &["Type", "ActiveState", "SubState", "NRestarts", "MainPID"],
                )
                .into_iter()
                .collect();
            *last = format!("{now:?}\n{}", host.journal(unit));
            let pid = now.get("MainPID")?.clone();
            let reached = expected
                .iter()
                .all(|(k, v)| now.get(*k).is_some_and(|now| now == v));
            (reached && pid != "0" && pid != not_pid).then_some(pid)
        },
    )
}

/// `GET http://<collector host>:9471<path>` with curl on the agent host, as JSON.
fn api(agent_host: &Container, path: &str) -> Option<Value> {
    let url = format!("http://{COLLECTOR_HOST}:9471{path}");
    let out = agent_host.output(&["curl", "--silent", "--fail", "--max-time", "5", &url]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The agent's VM as the collector lists it on `/api/v1/vms`.
fn vm(agent_host: &Container) -> Option<Value> {
    api(agent_host, "/api/v1/vms")?["vms"]
        .as_array()?
        .iter()
        .find(|v| v["vm"] == VM)
        .cloned()
}

/// The streams the collector accepted from the agent's VM, from its journal.
fn connections(collector_host: &Container) -> Vec<String> {
    collector_host
        .journal("rally-collector")
        .lines()
        .filter(|l| l.contains("agent connected") && l.contains(&format!("vm={VM} ")))
        .map(str::to_owned)
        .collect()
}

/// Waits until the agent's VM is listed with a report newer than `after` in
/// `group`, over one stream; returns that report's sequence number.
fn wait_reporting(agent_host: &Container, group: &str, after: u64) -> u64 {
    wait_for(
        PATIENCE,
        &format!("{VM} reporting (seq > {after}) in group {group}"),
        |last| {
            let v = vm(agent_host)?;
            *last = v.to_string();
            let seq = v["latest"]["seq"].as_u64()?;
            (seq > after && v["group"] == group && v["streams"] == 1).then_some(seq)
        },
    )
}

/// Panics when a unit's journal shows the sandbox getting in the daemon's way.
fn assert_no_permission_errors(host: &Container, unit: &str) {
    let journal = host.journal(unit);
    for line in journal.lines() {
        let lower = line.to_lowercase();
        for symptom in [
            "permission denied",
            "operation not permitted",
            "read-only file system",
            "eacces",
            "eperm",
            "seccomp",
            "sigsys",
        ] {
            assert!(
                !lower.contains(symptom),
                "{unit} on {}: {symptom:?} in its journal:\n{journal}",
                host.name()
            );
        }
    }
}

#[test]
fn packaged_units_run_reload_and_restart_under_systemd_across_two_hosts() {
    tool::require("systemd-nspawn", "systemd-container");
    tool::require("ip", "iproute2");
    tool::require("nsenter", "util-linux");
    tool::require("chroot", "coreutils");
    tool::require("mount", "mount");
    debian_root::assert_root("the systemd test");
    deb("rally-agent");
    deb("rally-collector");

    // The network first, so that it is deleted after the containers (locals drop
    // in reverse order). Names unique to this run: several may run at once.
    let run = std::process::id();
    let collector_net = Netns::create(&format!("rally-{run}-c"));
    let agent_net = Netns::create(&format!("rally-{run}-a"));
    Netns::link(
        &collector_net,
        &format!("{COLLECTOR_HOST}/24"),
        &agent_net,
        &format!("{AGENT_HOST}/24"),
    );

    let consoles = tempfile::tempdir().expect("create a temporary directory");
    let collector_root = root_with("rally-collector", &collector_config(""));
    let agent_root = root_with("rally-agent", &agent_config());
    let collector_host = Container::boot(
        &format!("rally-{run}-collector"),
        collector_root,
        &collector_net,
        &consoles.path().join("collector-host.log"),
        BOOT,
    );
    let agent_host = Container::boot(
        &format!("rally-{run}-agent"),
        agent_root,
        &agent_net,
        &consoles.path().join("agent-host.log"),
        BOOT,
    );

    // Type=notify: "active (running)" only after READY=1, which the collector sends
    // once both listeners are bound and the agent once its first sample is taken.
    let collector_pid = wait_running(&collector_host, "rally-collector", 0, "");
    let agent_pid = wait_running(&agent_host, "rally-agent", 0, "");
    assert_eq!(
        collector_host
            .run(&["systemctl", "is-active", "rally-collector"])
            .trim(),
        "active"
    );
    assert_eq!(
        agent_host
            .run(&["systemctl", "is-active", "rally-agent"])
            .trim(),
        "active"
    );
    // The sandbox's user, not root.
    for (host, pid) in [(&collector_host, &collector_pid), (&agent_host, &agent_pid)] {
        let user = host.run(&["ps", "-o", "user=", "-p", pid]);
        assert_eq!(
            user.trim(),
            "_rally",
            "the daemon on {} runs as",
            host.name()
        );
    }

    // The agent on its host reaches the collector on the other one.
    let seq = wait_reporting(&agent_host, "ungrouped", 0);
    let v = vm(&agent_host).expect("the agent's VM is listed");
    assert!(
        v["latest"]["memory_total_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "the sandboxed agent reads /proc/meminfo: {v}"
    );
    let connected = connections(&collector_host);
    assert_eq!(connected.len(), 1, "{connected:?}");
    assert!(
        connected[0].contains(&format!("peer={AGENT_HOST}:")),
        "the stream comes from the agent host's address: {}",
        connected[0]
    );
    // `rally-agent status` reaches the sandboxed agent on its socket in the unit's
    // RuntimeDirectory, and hears it is connected.
    let status = agent_host.run(&["rally-agent", "status"]);
    assert!(
        status.contains(&format!(
            "collector http://{COLLECTOR_HOST}:9470: connected for "
        )),
        "{status}"
    );
    // The collector writes its state where the sandbox lets it.
    collector_host.run(&["test", "-s", "/var/lib/rally/collector.sqlite3"]);

    // systemctl reload: a new group with the agent's VM, applied live.
    collector_host.root().write(
        "/etc/rally/collector.toml",
        &collector_config(&format!("[[groups]]\nname = \"edge\"\nvms = [\"{VM}\"]\n")),
    );
    collector_host.run(&["systemctl", "reload", "rally-collector"]);
    let seq = wait_reporting(&agent_host, "edge", seq);
    let groups = wait_for(PATIENCE, "group edge on /api/v1/groups", |last| {
        let groups = api(&agent_host, "/api/v1/groups")?;
        *last = groups.to_string();
        groups.to_string().contains("\"edge\"").then_some(groups)
    });
    assert!(groups.to_string().contains(VM), "{groups}");
    assert!(
        collector_host
            .journal("rally-collector")
            .contains("configuration reloaded"),
        "{}",
        collector_host.journal("rally-collector")
    );
    // Same process, same stream: nothing restarted or reconnected.
    assert_eq!(
        wait_running(&collector_host, "rally-collector", 0, ""),
        collector_pid
    );
    wait_reporting(&agent_host, "edge", seq + 1);
    assert_eq!(
        connections(&collector_host).len(),
        1,
        "the reload dropped the agent's stream"
    );
    assert_eq!(
        agent_host
            .journal("rally-agent")
            .matches("stream to collector open")
            .count(),
        1,
        "{}",
        agent_host.journal("rally-agent")
    );

    // A crash: systemd restarts the collector (Restart=on-failure) with the reloaded
    // file, and the agent, still running, reconnects.
    collector_host.run(&["kill", "-s", "KILL", &collector_pid]);
    let restarted = wait_running(&collector_host, "rally-collector", 1, &collector_pid);
    assert_ne!(restarted, collector_pid);
    wait_for(PATIENCE, "the agent's second stream", |last| {
        let connected = connections(&collector_host);
        *last = format!("{connected:?}\n{}", agent_host.journal("rally-agent"));
        (connected.len() == 2).then_some(())
    });
    wait_reporting(&agent_host, "edge", 0);
    assert_eq!(wait_running(&agent_host, "rally-agent", 0, ""), agent_pid);

    // The hardening got in neither daemon's way.
    assert_no_permission_errors(&collector_host, "rally-collector");
    assert_no_permission_errors(&agent_host, "rally-agent");
}
