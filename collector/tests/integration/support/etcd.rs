//! One real etcd member (Debian's `etcd-server`) on loopback ports of its own, for the
//! tests of what the collector keeps in etcd; killed when dropped. A missing `etcd`
//! fails the test with the package to install.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rally_etcd::Etcd;

/// A running single-member etcd.
pub struct EtcdServer {
    child: Child,
    /// Its client URL.
    pub url: String,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl EtcdServer {
    /// Starts a member with its data and log under `dir`; returns once it answers.
    pub async fn start(dir: &Path) -> (EtcdServer, Etcd) {
        let url = format!("http://127.0.0.1:{}", port());
        let peer = format!("http://127.0.0.1:{}", port());
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "solo", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("solo={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("`etcd` is required: apt-get install etcd-server (scripts/test does)");
        let server = EtcdServer { child, url };
        let client = Etcd::new(std::slice::from_ref(&server.url), Duration::from_secs(2)).unwrap();
        let started = Instant::now();
        while client.get("/ready").await.is_err() {
            assert!(started.elapsed() < super::WAIT, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (server, client)
    }
}
