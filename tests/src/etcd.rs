//! Real etcd members (Debian's `etcd-server`): a cluster of `n` members on loopback
//! ports of their own, each with its data in the test's directory and its log on disk,
//! serving clients in plaintext or over TLS with client certificates required. A
//! member can be stopped and started again on the same data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Process;
use crate::tool;

/// One etcd member's identity: its name and URLs.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// `--name`.
    pub name: String,
    /// Where clients connect (`http://host:port`).
    pub client_url: String,
    /// Where the other members connect.
    pub peer_url: String,
}

/// TLS on the members' client port with client certificates required
/// (`--client-cert-auth`), from PEM files such as `rally-collector pki` makes.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA of every certificate here.
    pub ca: PathBuf,
    /// The members' server certificate and key (valid for 127.0.0.1).
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key, for the cluster's own health checks.
    pub client: (PathBuf, PathBuf),
}

/// A cluster of real etcd members, killed when dropped.
pub struct Cluster {
    dir: PathBuf,
    specs: Vec<MemberSpec>,
    members: Vec<Option<Process>>,
    tls: Option<ClientTls>,
}

impl Cluster {
    /// Starts `n` members on loopback under `dir` and waits until every one answers.
    pub async fn local(dir: &Path, n: usize) -> Cluster {
        Cluster::start(dir, Cluster::loopback(n, "http"), |_| None).await
    }

    /// [`local`](Self::local), serving clients over `tls` (`https://` endpoints).
    pub async fn local_tls(dir: &Path, n: usize, tls: ClientTls) -> Cluster {
        Cluster::start_with(dir, Cluster::loopback(n, "https"), |_| None, Some(tls)).await
    }

    fn loopback(n: usize, client_scheme: &str) -> Vec<MemberSpec> {
        (0..n)
            .map(|i| MemberSpec {
                name: format!("etcd-{i}"),
                client_url: format!("{client_scheme}://127.0.0.1:{}", crate::free_port()),
                peer_url: format!("http://127.0.0.1:{}", crate::free_port()),
            })
            .collect()
    }

    /// Starts the members `specs` under `dir` (created if missing); `wrap(i)` may give the command that runs
    /// member `i` (inside a network namespace, say) instead of `etcd` itself.
    pub async fn start(
        dir: &Path,
        specs: Vec<MemberSpec>,
        wrap: impl Fn(usize) -> Option<Command>,
    ) -> Cluster {
        Cluster::start_with(dir, specs, wrap, None).await
    }

    async fn start_with(
        dir: &Path,
        specs: Vec<MemberSpec>,
        wrap: impl Fn(usize) -> Option<Command>,
        tls: Option<ClientTls>,
    ) -> Cluster {
        std::fs::create_dir_all(dir).expect("create the cluster's directory");
        let mut cluster = Cluster {
            dir: dir.to_owned(),
            members: specs.iter().map(|_| None).collect(),
            specs,
            tls,
        };
        let commands: Vec<Option<Command>> = (0..cluster.specs.len()).map(wrap).collect();
        for (i, command) in commands.into_iter().enumerate() {
            cluster.spawn(i, command);
        }
        cluster.wait_healthy().await;
        cluster
    }

    fn spawn(&mut self, i: usize, command: Option<Command>) {
        let etcd = tool::require("etcd", "etcd-server");
        let spec = &self.specs[i];
        let initial = self
            .specs
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = command.unwrap_or_else(|| Command::new(&etcd));
        cmd.args(["--name", &spec.name, "--data-dir"])
            .arg(self.dir.join(&spec.name))
            .args(["--listen-client-urls", &spec.client_url])
            .args(["--advertise-client-urls", &spec.client_url])
            .args(["--listen-peer-urls", &spec.peer_url])
            .args(["--initial-advertise-peer-urls", &spec.peer_url])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "rally-tests"])
            // Quick elections on a test network (etcd's defaults: 100 ms, 1 s).
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let log = self.dir.join(format!("{}.log", spec.name));
        self.members[i] = Some(Process::spawn(&spec.name, cmd, &log));
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.client_url.clone()).collect()
    }

    /// The members' identities.
    pub fn specs(&self) -> &[MemberSpec] {
        &self.specs
    }

    /// The running member `i`, if it runs.
    pub fn member(&mut self, i: usize) -> Option<&mut Process> {
        self.members[i].as_mut()
    }

    /// Kills member `i` (SIGKILL), keeping its data.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].take() {
            p.kill();
        }
    }

    /// Starts member `i` again on its data (after [`kill`](Self::kill)).
    pub fn restart(&mut self, i: usize, command: Option<Command>) {
        self.spawn(i, command);
    }

    /// Waits (at most 60 s) until every running member reports itself healthy.
    pub async fn wait_healthy(&mut self) {
        let etcdctl = tool::require("etcdctl", "etcd-client");
        let endpoints = self.endpoints().join(",");
        let started = Instant::now();
        loop {
            let mut cmd = Command::new(&etcdctl);
            if let Some(tls) = &self.tls {
                cmd.arg("--cacert")
                    .arg(&tls.ca)
                    .arg("--cert")
                    .arg(&tls.client.0)
                    .arg("--key")
                    .arg(&tls.client.1);
            }
            let out = cmd
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &endpoints,
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ])
                .output()
                .expect("run etcdctl");
            if out.status.success() {
                return;
            }
            let logs: Vec<String> = self
                .specs
                .iter()
                .map(|s| {
                    let log = std::fs::read_to_string(self.dir.join(format!("{}.log", s.name)))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    format!("{}: {}", s.name, tail.join(" | "))
                })
                .collect();
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "etcd did not become healthy: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                logs.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
