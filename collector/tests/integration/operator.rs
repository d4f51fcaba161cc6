//! The operator's side of resizing over real sockets: the resize API with its token
//! guard and JSON errors, and the `rally-collector pause|resume|resize|decisions|groups`
//! subcommands (the real binary) calling it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use crate::support;

use std::process::Command;

use serde_json::Value;
use support::{Agent, hello, report, start};

const TOKEN: &str = "operator-token-1";

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rally-collector"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn post(url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_pause_resume_resize_and_list_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_arg = token_file.display().to_string();
    let collector = start(&format!(
        r#"
[api]
token_file = "{token_arg}"

[[groups]]
name = "web"
vms = ["web-1"]
ladder = [
  {{ name = "M", vcpus = 2, memory_bytes = 4294967296 }},
  {{ name = "L", vcpus = 4, memory_bytes = 8589934592 }},
]
"#
    ))
    .await;
    let (mut agent, _) = Agent::connect(collector.grpc, None, hello("web-1", 1)).await;
    agent.report(report(1, 0.2)).await;
    agent.ack_at_least(1).await;
    let url = format!("http://{}", collector.http);

    // Without a token, or with a wrong one: 401 with a JSON reason.
    let resize_url = collector.url("/api/v1/vms/web-1/resize");
    let (status, body) = post(&resize_url, None, Some(serde_json::json!({"rung": "L"}))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("no_token")),
        "{body}"
    );
    let (status, body) = post(
        &resize_url,
        Some("guess"),
        Some(serde_json::json!({"rung": "L"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("bad_token")),
        "{body}"
    );
    // Clear 4xx errors for what the operator got wrong.
    let (status, body) = post(
        &resize_url,
        Some(TOKEN),
        Some(serde_json::json!({"rung": "XL"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("unknown_rung")),
        "{body}"
    );
    let (status, body) = post(&resize_url, Some(TOKEN), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_body")),
        "{body}"
    );
    let (status, body) = post(
        &collector.url("/api/v1/vms/nope/resize"),
        Some(TOKEN),
        Some(serde_json::json!({"rung": "L"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_vm")),
        "{body}"
    );
    let (status, body) = post(
        &collector.url("/api/v1/groups/nope/pause"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_group")),
        "{body}"
    );

    // The CLI without the token is refused, with the collector's words.
    let (ok, _, err) = cli(&["pause", "web", "--url", &url]);
    assert!(!ok && err.contains("401"), "{err}");

    let (ok, out, err) = cli(&["pause", "web", "--url", &url, "--token-file", &token_arg]);
    assert!(ok, "{err}");
    assert!(out.contains("paused"), "{out}");
    let (ok, out, _) = cli(&["groups", "--json", "--url", &url]);
    assert!(ok);
    let groups: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(groups["groups"][0]["group"], "web");
    assert_eq!(groups["groups"][0]["paused"], true);
    assert_eq!(groups["groups"][0]["paused_by"], "operator");
    assert_eq!(
        groups["groups"][0]["dry_run"], true,
        "the built-in default is dry-run"
    );

    // A manual resize works on a paused group (an operator acting means it).
    let (ok, out, err) = cli(&[
        "resize",
        "web-1",
        "L",
        "--url",
        &url,
        "--token-file",
        &token_arg,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("M→L") && out.contains("dry-run"), "{out}");
    let (ok, out, err) = cli(&["resume", "web", "--url", &url, "--token-file", &token_arg]);
    assert!(ok, "{err}");
    assert!(out.contains("resumed"), "{out}");
    let (ok, out, _) = cli(&["groups", "--url", &url]);
    assert!(ok);
    assert!(
        out.contains("web: active, dry-run") && out.contains("M→L"),
        "{out}"
    );

    let (ok, out, err) = cli(&[
        "decisions",
        "--vm",
        "web-1",
        "--since",
        "1h",
        "--json",
        "--url",
        &url,
    ]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let d = &listed["decisions"][0];
    assert_eq!(listed["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(d["decision"]["trigger"], "manual");
    assert_eq!(d["decision"]["dry_run"], true);
    assert_eq!(d["status"], "dry_run");
    assert_eq!(
        (&d["outcome"], &d["sent"]),
        (&"dry_run".into(), &false.into())
    );
    assert_eq!(d["timezone"], "Europe/Warsaw");
    let (ok, out, _) = cli(&["decisions", "--group", "web", "--url", &url]);
    assert!(ok);
    assert!(out.contains("web/web-1") && out.contains("up M→L"), "{out}");
    // Not "accepted": nothing was sent. The time reads in Warsaw's zone and in UTC.
    assert!(
        out.contains("dry run: not sent") && !out.contains("accepted"),
        "{out}"
    );
    assert!(out.contains(" UTC)  "), "{out}");
    let (ok, _, err) = cli(&["decisions", "--since", "whenever", "--url", &url]);
    assert!(!ok && err.contains("--since"), "{err}");
    let (status, body) = {
        let resp = reqwest::get(collector.url("/api/v1/decisions?since=yesterday"))
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_time")),
        "{body}"
    );

    // The dry-run request is counted once it got its word, and promtool likes it all.
    let metrics = support::eventually_text(&collector.url("/metrics"), |m| {
        m.contains("rally_resize_requests_total{group=\"web\",vm=\"web-1\",direction=\"up\",outcome=\"dry_run\"} 1")
    })
    .await;
    assert!(
        metrics.contains("rally_group_paused{group=\"web\"} 0"),
        "{metrics}"
    );
    support::promtool_check(&metrics);

    let page = reqwest::get(collector.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Resizing") && page.contains("Recent decisions"),
        "{page}"
    );
    assert!(page.contains("dry run: not sent"), "{page}");
    collector.stop().await.unwrap();
}
