//! systemd integration and live reloads of the real daemons: readiness and stopping
//! through `NOTIFY_SOCKET`, and SIGHUP re-reading the configuration without dropping
//! an agent's stream (a broken file is rejected and the running configuration stays).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rally_tests::process::Process;
use rally_tests::{bin, free_port};

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
