//! A real Prometheus server on loopback, for the tests that check what a real scraper
//! makes of `/metrics` and of the shipped rules.

use std::path::Path;
use std::process::Command;

use crate::process::Process;
use crate::{free_port, tool};

/// The `global` section every test server uses: a scrape and a rule evaluation every
/// second, so that `rate()` has samples within seconds.
pub const GLOBAL: &str =
    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n";

/// A running Prometheus server; killed when dropped.
pub struct Prometheus {
    /// The server process (its log explains a failed scrape).
    pub process: Process,
    /// Its HTTP API, `http://127.0.0.1:PORT/api/v1`.
    pub api: String,
}

impl Prometheus {
    /// Starts Prometheus in `dir` with one scrape job named `rally`; `job` is the rest
    /// of the job's YAML (`static_configs`, `scheme`, ...), indented by four spaces.
    pub fn start(dir: &Path, job: &str) -> Prometheus {
        Self::start_with_config(
            dir,
            &format!("{GLOBAL}scrape_configs:\n  - job_name: rally\n{job}"),
        )
    }

    /// Starts Prometheus in `dir` with `config` as its whole `prometheus.yml`
    /// (start it with [`GLOBAL`] for a scrape every second).
    pub fn start_with_config(dir: &Path, config: &str) -> Prometheus {
        let prometheus = tool::require("prometheus", "prometheus");
        let port = free_port();
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config).expect("write prometheus.yml");
        let mut cmd = Command::new(prometheus);
        cmd.arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        Prometheus {
            process: Process::spawn("prometheus", cmd, &dir.join("prometheus.log")),
            api: format!("http://127.0.0.1:{port}/api/v1"),
        }
    }
}
