//! Starts `rally-collector` and `rally-agent` with configs written by the test.

use crate::process::Process;
use crate::{bin, eventually, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A `rally-collector` process on loopback ports chosen for it.
pub struct Collector {
    /// The running process (None between `kill` and `start_again`).
    pub process: Option<Process>,
    /// `127.0.0.1:<port>` for gRPC.
    pub grpc: String,
    /// `127.0.0.1:<port>` for HTTP.
    pub http: String,
    /// The config file it was started with.
    pub config: PathBuf,
    dir: PathBuf,
    starts: u32,
    rust_log: String,
}

impl Collector {
    /// Writes a config (listeners, state dir and `extra` TOML) under `dir` and starts
    /// the collector, waiting until `/readyz` answers 200.
    pub async fn start(dir: &Path, extra: &str) -> Collector {
        Self::start_with_log(dir, extra, "info,rally_collector::ingest=debug").await
    }

    /// As [`Collector::start`] with a chosen `RUST_LOG`.
    pub async fn start_with_log(dir: &Path, extra: &str, rust_log: &str) -> Collector {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let state = dir.join("state");
        std::fs::create_dir_all(&state).expect("create state dir");
        let config = dir.join("collector.toml");
        let text = format!(
            "[listen]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\n\n[state]\ndir = \"{}\"\n\n{extra}\n",
            state.display()
        );
        std::fs::write(&config, text).expect("write collector.toml");
        let mut c = Collector {
            process: None,
            grpc,
            http,
            config,
            dir: dir.to_owned(),
            starts: 0,
            rust_log: rust_log.to_owned(),
        };
        c.start_again().await;
        c
    }

    /// (Re)starts the process on the same ports and state, waiting for readiness.
    pub async fn start_again(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(bin::path("rally-collector"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", &self.rust_log);
        let log = self.dir.join(format!("collector.{}.log", self.starts));
        self.process = Some(Process::spawn("rally-collector", cmd, &log));
        let url = self.url("/readyz");
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(30), "collector /readyz", || {
            let req = client.get(&url).timeout(Duration::from_secs(2)).send();
            async move { req.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
    }

    /// Kills the collector with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// `http://<http listen><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// The gRPC endpoint an agent connects to.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// GET `path` and return the body; panics on a non-2xx answer.
    pub async fn get(&self, path: &str) -> String {
        let resp = reqwest::get(self.url(path)).await.expect("GET collector");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().await.expect("body")
    }

    /// `GET /api/v1/vms`, parsed.
    pub async fn vms(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/v1/vms").await).expect("/api/v1/vms is JSON")
    }

    /// The logs of every start so far, in order.
    pub fn logs(&self) -> Vec<String> {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("collector.{i}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// A `rally-agent` process.
pub struct Agent {
    /// The running process.
    pub process: Process,
    /// Its config file.
    pub config: PathBuf,
}

impl Agent {
    /// Writes `agent-<vm>.toml` under `dir` (VM id, collectors, interval, `extra`)
    /// and starts the agent.
    pub fn start(
        dir: &Path,
        vm: &str,
        collectors: &[String],
        interval: &str,
        extra: &str,
    ) -> Agent {
        let list = collectors
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join(format!("agent-{vm}.toml"));
        let text = format!(
            "vm_id = \"{vm}\"\ncollectors = [{list}]\ninterval = \"{interval}\"\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write agent.toml");
        let mut cmd = Command::new(bin::path("rally-agent"));
        cmd.arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "info");
        let log = dir.join(format!("agent-{vm}.log"));
        Agent {
            process: Process::spawn(&format!("rally-agent {vm}"), cmd, &log),
            config,
        }
    }
}
