//! The real `rally-collector` binary: `check-config`, `--version`, and `run` with the
//! debug log the end-to-end tests parse, stopped by SIGTERM with exit status 0.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Agent, hello, report};

const BIN: &str = env!("CARGO_BIN_EXE_rally-collector");

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(
        &path,
        "[listen]\ngrpc = \"0.0.0.0:9470\"\n[ingest]\nstale_afterr = \"5s\"\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:4:", path.display())),
        "file and line: {stderr}"
    );
    assert!(stderr.contains("ingest.stale_afterr"), "key: {stderr}");

    std::fs::write(&path, "[ingest]\nstale_after = \"30s\"\n").unwrap();
    let output = Command::new(BIN)
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let output = Command::new(BIN)
        .args(["--config", "/nonexistent/collector.toml", "check-config"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/collector.toml"));
}

#[test]
fn version_and_help() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("rally-collector {}", env!("CARGO_PKG_VERSION"))
    );
    let output = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for word in ["run", "check-config", "demo", "--config"] {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }
}

/// Pulls the value of `key=` out of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(&format!("{key}=")))
}

#[tokio::test]
async fn run_logs_accepted_reports_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info,rally_collector::ingest=debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no log line while waiting for {what}"))
    };

    let grpc = loop {
        let line = next_line("collector listening");
        assert!(
            !line.contains("\u{1b}["),
            "no colour when not a terminal: {line}"
        );
        if line.contains("collector listening") {
            break field(&line, "grpc").unwrap().parse().unwrap();
        }
    };
    let (mut agent, _) = Agent::connect(grpc, None, hello("web-1", 77)).await;
    for seq in 1..=3 {
        agent.report(report(seq, 0.5)).await;
    }
    agent.ack_at_least(3).await;

    let mut accepted = Vec::new();
    while accepted.len() < 3 {
        let line = next_line("report accepted");
        if line.contains("report accepted") {
            assert!(line.contains("rally_collector::ingest"), "{line}");
            assert_eq!(field(&line, "vm"), Some("web-1"), "{line}");
            assert_eq!(field(&line, "run"), Some("77"), "{line}");
            accepted.push(field(&line, "seq").unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(accepted, [1, 2, 3]);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The stream is closed by the collector as it stops.
    let status = agent.end_status().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}
