//! The status page in a real browser: a collector (with an API token) and two real
//! agents in a dry-run group with a ladder; headless Chromium, driven over the DevTools
//! Protocol, loads the page, whose VMs, charts and ladder are read from the DOM it
//! built; then a mouse click on the token field, the token typed in and a click on
//! the Pause button submit the page's own form, and the API shows the group paused.
//! Screenshots (before and after the pause) go to `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rally_tests::browser::Browser;
use rally_tests::rally::{Agent, Collector};
use rally_tests::{eventually, online_cpus, proc_mem_total_bytes};
use serde_json::Value;

const VMS: [&str; 2] = ["page-a", "page-b"];

/// The API token the pause needs, typed into the page by the test.
const TOKEN: &str = "page-test-token-7f3a";

fn config(vcpus: u32, mem: u64, token_file: &Path) -> String {
    format!(
        r#"
[api]
token_file = "{token_file}"

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
        token_file = token_file.display(),
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

/// Saves a screenshot of the browser's page as `name` under `target/test-artifacts/`.
async fn screenshot(browser: &mut Browser, name: &str) -> PathBuf {
    let file = artifacts().join(name);
    let _ = std::fs::remove_file(&file);
    let size = browser.screenshot(&file).await;
    assert!(size > 10_000, "{} is {size} bytes", file.display());
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_charts_and_the_ladder_in_chromium_and_a_click_pauses_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let collector = Collector::start(
        dir.path(),
        &config(online_cpus(), proc_mem_total_bytes(), &token_file),
    )
    .await;
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

    let mut browser = Browser::launch(dir.path()).await;
    browser.navigate(&collector.url("/")).await;
    let dom = browser.dom().await;
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
    screenshot(&mut browser, "status-page.png").await;

    // The pause form posts to the page's route with one field: the API token, which
    // the page never holds (`[api] token_file` is set), so the user types it.
    let (method, action, inputs) = form(&dom, "/pause");
    assert_eq!(method, "post");
    assert_eq!(action, "/groups/web/pause");
    assert_eq!(inputs, ["token"]);
    assert_eq!(group(&collector).await["paused"], false);

    // Click the field, type the token, click the button: real mouse and keyboard
    // input in Chromium, which submits the form and follows the 303 back to the page.
    let field = format!("form[action=\"{action}\"] input[name=\"token\"]");
    browser.click(&field).await;
    assert_eq!(
        browser.evaluate("document.activeElement.name").await,
        "token",
        "the click did not focus the token field"
    );
    browser.insert_text(TOKEN).await;
    assert_eq!(
        browser
            .evaluate(&format!("document.querySelector('{field}').value"))
            .await,
        TOKEN
    );
    browser
        .click(&format!("form[action=\"{action}\"] button"))
        .await;
    browser.wait_for_load().await;
    assert_eq!(browser.evaluate("location.pathname").await, "/");

    let web = group(&collector).await;
    assert_eq!(web["paused"], true, "{web}");
    assert_eq!(web["paused_by"], "operator", "{web}");
    let dom = browser.dom().await;
    assert!(dom.contains("paused"), "{dom}");
    screenshot(&mut browser, "status-page-paused.png").await;
}
