//! The status page in a real browser: a collector with two real agents in a dry-run
//! group with a ladder, the page rendered by headless Chromium (JavaScript never
//! needed), its charts and ladder read from the DOM Chromium built, and a pause sent
//! the way the page's own form sends it. Screenshots go to `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rally_tests::rally::{Agent, Collector};
use rally_tests::{eventually, online_cpus, proc_mem_total_bytes, tool};
use serde_json::Value;

const VMS: [&str; 2] = ["page-a", "page-b"];

fn config(vcpus: u32, mem: u64) -> String {
    format!(
        r#"
[engine]
tick = "250ms"

[[groups]]
name = "web"
vms = ["page-a", "page-b"]
timezone = "Europe/Warsaw"
dry_run = true
ladder = [
  {{ name = "S", vcpus = {vcpus}, memory_bytes = {mem} }},
  {{ name = "L", vcpus = {vcpus2}, memory_bytes = {mem2} }},
]
targets = []
[[groups.rules]]
metric = "cpu_utilization"
window = "last"
threshold = 0.99
for = "10m"
"#,
        vcpus2 = vcpus * 2,
        mem2 = mem * 2,
    )
}

/// Where the screenshots are kept after the test.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`) and
/// returns its standard output.
fn chromium(profile: &Path, url: &str, args: &[String]) -> String {
    let chromium = tool::require("chromium", "chromium");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(profile: &Path, url: &str, name: &str) -> PathBuf {
    let file = artifacts().join(name);
    let _ = std::fs::remove_file(&file);
    chromium(profile, url, &[format!("--screenshot={}", file.display())]);
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "{} is {size} bytes", file.display());
    file
}

/// The `points` of every `<polyline>` in `dom`.
fn polylines(dom: &str) -> Vec<&str> {
    dom.split("<polyline")
        .skip(1)
        .filter_map(|p| {
            let start = p.find("points=\"")? + "points=\"".len();
            p[start..].split('"').next()
        })
        .collect()
}

/// The `<form>` whose action ends with `suffix`: (method, action, names of its inputs).
fn form<'a>(dom: &'a str, suffix: &str) -> (String, &'a str, Vec<&'a str>) {
    let form = dom
        .split("<form")
        .skip(1)
        .map(|f| f.split("</form>").next().unwrap_or(f))
        .find(|f| {
            f.split("action=\"")
                .nth(1)
                .and_then(|a| a.split('"').next())
                .is_some_and(|a| a.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("no form posting to …{suffix} in the page:\n{dom}"));
    let attr = |name: &str| {
        form.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|a| a.split('"').next())
            .unwrap_or("")
    };
    let inputs = form
        .split("<input")
        .skip(1)
        .filter_map(|i| i.split("name=\"").nth(1)?.split('"').next())
        .collect();
    (attr("method").to_ascii_lowercase(), attr("action"), inputs)
}

async fn group(collector: &Collector) -> Value {
    let groups: Value =
        serde_json::from_str(&collector.get("/api/v1/groups").await).expect("groups JSON");
    groups["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == "web").cloned())
        .expect("group web in /api/v1/groups")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_charts_and_the_ladder_in_chromium_and_its_form_pauses_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("chromium-profile");
    let collector =
        Collector::start(dir.path(), &config(online_cpus(), proc_mem_total_bytes())).await;
    let _agents: Vec<Agent> = VMS
        .iter()
        .map(|vm| Agent::start(dir.path(), vm, &[collector.grpc_url()], "500ms", ""))
        .collect();
    eventually(
        Duration::from_secs(30),
        "both agents' CPU figures",
        || async {
            let vms = collector.vms().await;
            let reporting = vms["vms"]
                .as_array()?
                .iter()
                .filter(|v| v["latest"]["cpu_utilization"].is_number())
                .count();
            (reporting == VMS.len()).then_some(())
        },
    )
    .await;

    let url = collector.url("/");
    let dom = tokio::task::block_in_place(|| chromium(&profile, &url, &["--dump-dom".into()]));
    for vm in VMS {
        assert!(
            dom.contains(&format!("<td>{vm}</td>")),
            "{vm} not in:\n{dom}"
        );
    }
    let lines = polylines(&dom);
    // Two VMs' CPU and memory at least (no web source: requests read "no data").
    assert!(lines.len() >= 4, "{} polylines in:\n{dom}", lines.len());
    for points in &lines {
        assert!(points.split(' ').count() >= 2, "a sparkline of {points:?}");
    }
    assert!(dom.contains("no data"), "{dom}");
    // Both members sit on rung S (this machine's size), none on L.
    assert!(dom.contains("<ol class=\"ladder\">"), "{dom}");
    assert!(
        dom.contains("<b>S</b>") && dom.contains("page-a, page-b</span>"),
        "{dom}"
    );
    assert!(dom.contains("cpu_utilization last"), "the rule in:\n{dom}");
    tokio::task::block_in_place(|| screenshot(&profile, &url, "status-page.png"));

    // Pause the way a browser submits the page's form: its method, action and fields
    // (no token is configured and the test is a loopback peer: no field to fill).
    let (method, action, inputs) = form(&dom, "/pause");
    assert_eq!(method, "post");
    assert_eq!(action, "/groups/web/pause");
    assert!(inputs.is_empty(), "{inputs:?}");
    assert_eq!(group(&collector).await["paused"], false);
    let answer = reqwest::Client::new()
        .post(collector.url(action))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .expect("POST the pause form");
    // The 303 leads back to the page.
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(answer.url().path(), "/");
    let web = group(&collector).await;
    assert_eq!(web["paused"], true, "{web}");
    assert_eq!(web["paused_by"], "operator", "{web}");

    let dom = tokio::task::block_in_place(|| chromium(&profile, &url, &["--dump-dom".into()]));
    assert!(dom.contains("paused"), "{dom}");
    tokio::task::block_in_place(|| screenshot(&profile, &url, "status-page-paused.png"));
}
