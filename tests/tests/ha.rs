//! Highly available collectors, tested the way they fail: three etcd members and three
//! collectors, each on a host of its own (a network namespace with its own address on
//! one bridge), an agent on another, a real webhook receiver that refuses a fencing
//! token lower than one it has seen, and `stress-ng` loading every CPU so that a real
//! scale-up is due. The leader is killed, stopped past its lease, cut off from etcd,
//! and etcd itself is restarted; every time exactly one resize reaches the receiver.
//!
//! The scenarios run one at a time (they all load every CPU and time a take-over), each
//! on its own network (10.99.<n>.0/24) and namespaces (`rally-ha-<pid>-<n>-*`), all of
//! which go away however the scenario ends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rally_tests::etcd::{Cluster, MemberSpec};
use rally_tests::ledger::{sample, sum};
use rally_tests::nspawn::{Bridge, Netns, nft};
use rally_tests::process::Process;
use rally_tests::webhook::{Received, Webhook};
use rally_tests::{bin, eventually_explained, online_cpus, proc_mem_total_bytes, tool};
use serde_json::Value;

const SECRET: &str = "ha-webhook-secret";
const VM: &str = "ha-vm";
/// The collectors' lease TTL, engine tick and the rule's `for`.
const TTL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(250);
const HOLD: Duration = Duration::from_secs(6);
/// The agent's report interval.
const INTERVAL: &str = "500ms";
/// What etcd adds to a lease's TTL before it revokes it: its lessor checks expiries
/// every 500 ms, and the test polls every 50 ms.
const ETCD_EXPIRY_SLACK: Duration = Duration::from_millis(1000);

/// One scenario at a time: each loads every CPU and times a take-over.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        // A follower's own answer, not its leader's.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(1))
        .build()
        .expect("an HTTP client")
}

/// A collector on a host of its own.
struct Node {
    name: String,
    /// `http://10.99.<n>.2x:9471`.
    url: String,
    grpc: String,
    config: PathBuf,
    dir: PathBuf,
    starts: u32,
    process: Option<Process>,
}

impl Node {
    fn start(&mut self, host: &Netns) {
        self.starts += 1;
        let mut cmd = host.command(&bin::path("rally-collector"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", "info");
        let log = self.dir.join(format!("collector.{}.log", self.starts));
        // `ip netns exec` execs the collector: the pid is the collector's own.
        self.process = Some(Process::spawn(&self.name, cmd, &log));
    }

    fn process(&self) -> &Process {
        self.process.as_ref().expect("the collector runs")
    }

    fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("collector.{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn get(&self, path: &str) -> Option<String> {
        let resp = http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    async fn json(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.get(path).await?).ok()
    }

    /// `GET /api/v1/leader`.
    async fn leader(&self) -> Option<Value> {
        self.json("/api/v1/leader").await
    }

    async fn metrics(&self) -> Option<String> {
        self.get("/metrics").await
    }

    /// The VM's latest CPU utilization as this collector has it (from `/metrics`,
    /// which every collector serves itself, leader or not).
    async fn cpu(&self) -> Option<f64> {
        let text = self.metrics().await?;
        sample(&text, "rally_vm_cpu_utilization_ratio", &[("vm", VM)])
    }

    /// Reports this collector has applied for the VM.
    async fn reports(&self) -> Option<f64> {
        let text = self.metrics().await?;
        sample(&text, "rally_vm_reports_total", &[("vm", VM)])
    }
}

/// `nft` rules in a host's namespace that drop everything to and from the etcd
/// members; deleted when dropped (healed).
struct Cut {
    netns: String,
}

const CUT_TABLE: &str = "rally_ha_cut";

impl Cut {
    fn from_etcd(host: &Netns, etcd: &[String]) -> Cut {
        let set = etcd.join(", ");
        let script = format!(
            "table inet {CUT_TABLE} {{\n\
             chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n\
             chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        let out = nft(host.name(), &script);
        assert!(
            out.status.success(),
            "nft failed:\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cut {
            netns: host.name().to_owned(),
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let out = nft(&self.netns, &format!("delete table inet {CUT_TABLE}\n"));
        if !out.status.success() {
            eprintln!(
                "could not delete the nft table {CUT_TABLE} in {}: {}",
                self.netns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `stress-ng` on every CPU at the lowest priority (nice time counts as busy; the
/// collectors, the agent and etcd still get scheduled); asked to stop when dropped so
/// that its workers end with it.
struct Stress(Process);

impl Stress {
    fn start(dir: &Path) -> Stress {
        let stress_ng = tool::require("stress-ng", "stress-ng");
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "19"])
            .arg(stress_ng)
            .args(["--cpu", "0", "--timeout", "90s", "--quiet"]);
        Stress(Process::spawn("stress-ng", cmd, &dir.join("stress-ng.log")))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        self.0.terminate(Duration::from_secs(5));
    }
}

/// Three etcd members, three collectors and an agent, each on its own host, and the
/// receiver on this machine's side of the bridge. Fields drop in order: processes and
/// nft tables first, then the namespaces they ran in.
struct Lab {
    stress: Option<Stress>,
    cut: Option<Cut>,
    agent: Process,
    nodes: Vec<Node>,
    etcd: Cluster,
    hook: Webhook,
    etcd_addresses: Vec<String>,
    etcd_hosts: Vec<Netns>,
    collector_hosts: Vec<Netns>,
    _agent_host: Netns,
    _bridge: Bridge,
    dir: tempfile::TempDir,
    /// `10.99.<n>.0/24`.
    net: u8,
}

impl Lab {
    /// Builds network `n` and starts everything; the webhook answers `script` first.
    async fn start(n: u8, script: &[u16], backoff_initial: &str) -> Lab {
        tool::require("etcd", "etcd-server");
        tool::require("etcdctl", "etcd-client");
        tool::require("nft", "nftables");
        tool::require("stress-ng", "stress-ng");
        let ip = |host: u8| format!("10.99.{n}.{host}");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let prefix = format!("rally-ha-{}-{n}", std::process::id());
        let bridge = Bridge::create(&format!("{prefix}-sw"));
        // Host side: short (interface names have at most 15 bytes) and unique.
        bridge.attach_this_machine(
            &format!("rha{}x{n}", std::process::id() % 1_000_000),
            &format!("{}/24", ip(1)),
        );
        let host = |name: &str, address: String| {
            let netns = Netns::create(&format!("{prefix}-{name}"));
            bridge.attach(&netns, &format!("{address}/24"));
            netns
        };
        let etcd_hosts: Vec<Netns> = (1..=3)
            .map(|i| host(&format!("e{i}"), ip(10 + i)))
            .collect();
        let collector_hosts: Vec<Netns> = (1..=3)
            .map(|i| host(&format!("c{i}"), ip(20 + i)))
            .collect();
        let agent_host = host("a", ip(31));

        let etcd_addresses: Vec<String> = (1..=3).map(|i| ip(10 + i)).collect();
        let specs = etcd_addresses
            .iter()
            .enumerate()
            .map(|(i, a)| MemberSpec {
                name: format!("etcd-{}", i + 1),
                client_url: format!("http://{a}:2379"),
                peer_url: format!("http://{a}:2380"),
            })
            .collect();
        let etcd_dir = dir.path().join("etcd");
        std::fs::create_dir_all(&etcd_dir).expect("create the etcd dir");
        let etcd_bin = tool::require("etcd", "etcd-server");
        let etcd =
            Cluster::start(&etcd_dir, specs, |i| Some(etcd_hosts[i].command(&etcd_bin))).await;

        let hook = Webhook::start_on(
            format!("{}:0", ip(1)).parse().expect("an address"),
            SECRET,
            script,
        )
        .await;
        let secret = dir.path().join("webhook.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("write the webhook secret");
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod the webhook secret");

        let endpoints = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let (vcpus, mem) = (online_cpus(), proc_mem_total_bytes());
        let mut nodes = Vec::new();
        for i in 1..=3u8 {
            let name = format!("c{i}");
            let node_dir = dir.path().join(&name);
            std::fs::create_dir_all(node_dir.join("state")).expect("create the state dir");
            let address = ip(20 + i);
            let config = node_dir.join("collector.toml");
            let text = format!(
                r#"[listen]
grpc = "{address}:9470"
http = "{address}:9471"

[state]
dir = "{state}"

[ha]
etcd = [{endpoints}]
name = "{name}"
advertise = "http://{address}:9471"
lease_ttl = "{ttl}s"
etcd_timeout = "1s"
prefix = "/rally"

[engine]
tick = "{tick}ms"

[actuator]
kind = "webhook"
url = "{url}"
secret_file = "{secret}"
timeout = "2s"
max_attempts = 5
backoff_initial = "{backoff_initial}"
backoff_max = "10s"

[[groups]]
name = "web"
vms = ["{VM}"]
dry_run = false
ladder = [
  {{ name = "M", vcpus = {vcpus}, memory_bytes = {mem} }},
  {{ name = "L", vcpus = {vcpus2}, memory_bytes = {mem2} }},
]
targets = []
[[groups.rules]]
metric = "cpu_utilization"
window = "last"
threshold = 0.9
clear = 0.5
for = "{hold}s"
[groups.scale_up]
cooldown = "10m"
verify_timeout = "5m"
"#,
                state = node_dir.join("state").display(),
                ttl = TTL.as_secs(),
                tick = TICK.as_millis(),
                url = hook.url(),
                secret = secret.display(),
                vcpus2 = vcpus * 2,
                mem2 = mem * 2,
                hold = HOLD.as_secs(),
            );
            std::fs::write(&config, text).expect("write collector.toml");
            let mut node = Node {
                name,
                url: format!("http://{address}:9471"),
                grpc: format!("http://{address}:9470"),
                config,
                dir: node_dir,
                starts: 0,
                process: None,
            };
            node.start(&collector_hosts[usize::from(i - 1)]);
            nodes.push(node);
        }

        let list = nodes
            .iter()
            .map(|c| format!("\"{}\"", c.grpc))
            .collect::<Vec<_>>()
            .join(", ");
        let agent_config = dir.path().join("agent.toml");
        std::fs::write(
            &agent_config,
            format!("vm_id = \"{VM}\"\ncollectors = [{list}]\ninterval = \"{INTERVAL}\"\n"),
        )
        .expect("write agent.toml");
        let mut cmd = agent_host.command(&bin::path("rally-agent"));
        cmd.arg("--config")
            .arg(&agent_config)
            .arg("run")
            .env("RUST_LOG", "info");
        let agent = Process::spawn("rally-agent", cmd, &dir.path().join("agent.log"));

        let lab = Lab {
            stress: None,
            cut: None,
            agent,
            nodes,
            etcd,
            hook,
            etcd_addresses,
            etcd_hosts,
            collector_hosts,
            _agent_host: agent_host,
            _bridge: bridge,
            dir,
            net: n,
        };
        // Every collector serves and has the agent's figures.
        for node in &lab.nodes {
            lab.until(
                Duration::from_secs(30),
                &format!("{}'s first CPU figure", node.name),
                || async { node.cpu().await.map(|_| ()) },
            )
            .await;
        }
        lab
    }

    /// Polls `f` every 100 ms until it returns `Some`; after `timeout` fails with what
    /// every collector logged and the receiver got.
    async fn until<T, F, Fut>(&self, timeout: Duration, what: &str, f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        eventually_explained(timeout, what, f, || self.evidence()).await
    }

    /// Waits until collector `i` has counted work of its ended term fenced (its own
    /// refusal: a receiver's 409 is the last line, not the fence); its samples.
    async fn fenced(&self, i: usize, timeout: Duration) -> String {
        self.until(
            timeout,
            "the old leader to count its late work fenced",
            || async {
                let text = self.nodes[i].metrics().await?;
                (family_value(&text, "rally_collector_fenced_total")? >= 1.0)
                    .then(|| samples(&text, "rally_collector_fenced_total"))
            },
        )
        .await
    }

    /// Waits until collector `i` follows `leader` with a healthy lease; its view.
    async fn follows(&self, i: usize, leader: usize, timeout: Duration) -> Value {
        let what = format!(
            "{} a healthy follower of {}",
            self.nodes[i].name, self.nodes[leader].name
        );
        self.until(timeout, &what, || async {
            let v = self.nodes[i].leader().await?;
            (v["role"] == "follower"
                && v["lease_healthy"] == true
                && v["leader"]["name"] == self.nodes[leader].name.as_str())
            .then_some(v)
        })
        .await
    }

    /// Waits until exactly one of `among` leads and the others name it; its index.
    async fn leader(&self, among: &[usize], timeout: Duration) -> usize {
        let what = format!("one leader among {among:?} on 10.99.{}.0/24", self.net);
        self.until(timeout, &what, || async {
            let mut views = Vec::new();
            for &i in among {
                views.push((i, self.nodes[i].leader().await?));
            }
            let leaders: Vec<usize> = views
                .iter()
                .filter(|(_, v)| v["role"] == "leader")
                .map(|(i, _)| *i)
                .collect();
            let [leader] = leaders[..] else { return None };
            let name = &self.nodes[leader].name;
            views
                .iter()
                .all(|(_, v)| v["leader"]["name"] == name.as_str())
                .then_some(leader)
        })
        .await
    }

    /// The fencing token `i` reports.
    async fn token(&self, i: usize) -> u64 {
        let view = self.nodes[i].leader().await.expect("/api/v1/leader");
        view["fencing_token"]
            .as_u64()
            .unwrap_or_else(|| panic!("no fencing_token: {view}"))
    }

    /// A metric of collector `i` (summed over its labels, if it has any).
    async fn metric(&self, i: usize, family: &str) -> f64 {
        let text = self.nodes[i].metrics().await.expect("/metrics answers");
        family_value(&text, family)
            .unwrap_or_else(|| panic!("{family} missing from {}'s /metrics", self.nodes[i].name))
    }

    /// Loads every CPU and waits until collector `i` sees it.
    async fn load(&mut self, i: usize) -> Instant {
        self.stress = Some(Stress::start(self.dir.path()));
        let node = &self.nodes[i];
        self.until(
            Duration::from_secs(20),
            &format!("the load seen by {}", node.name),
            || async { node.cpu().await.filter(|u| *u >= 0.9).map(|_| ()) },
        )
        .await;
        Instant::now()
    }

    /// The first request answered `status` class 2xx, waiting at most `timeout`.
    async fn accepted(&self, timeout: Duration) -> Received {
        self.until(timeout, "an accepted resize request", || async {
            self.hook
                .received()
                .into_iter()
                .find(|r| (200..300).contains(&r.status))
        })
        .await
    }

    /// Every log and what the receiver got, for a failure's message.
    fn evidence(&self) -> String {
        let mut out = format!("--- agent ---\n{}\n", tail(&self.agent.log(), 10));
        for node in &self.nodes {
            out += &format!("--- {} ---\n{}\n", node.name, tail(&node.log(), 40));
        }
        for r in self.hook.received() {
            out += &format!(
                "POST key={:?} token={:?} attempt={:?} status={}\n",
                r.idempotency_key, r.fencing_token, r.attempt, r.status
            );
        }
        out
    }

    /// Checks that exactly one resize reached the receiver, signed, fenced: one decision
    /// id accepted, every request of it with the same header and body token, none
    /// accepted with a token lower than an earlier one. Returns (POSTs, accepted POSTs).
    fn assert_one_resize(&self) -> (usize, usize) {
        let received = self.hook.received();
        let accepted: Vec<&Received> = received
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect();
        let ids: BTreeSet<&str> = accepted
            .iter()
            .filter_map(|r| r.idempotency_key.as_deref())
            .collect();
        assert_eq!(ids.len(), 1, "one resize accepted\n{}", self.evidence());
        let all_ids: BTreeSet<&str> = received
            .iter()
            .filter_map(|r| r.idempotency_key.as_deref())
            .collect();
        assert_eq!(
            all_ids,
            ids,
            "no other resize was even tried\n{}",
            self.evidence()
        );
        let mut highest = 0;
        for r in &received {
            assert!(r.signature_ok, "{r:?}");
            let token = r
                .fencing_token
                .unwrap_or_else(|| panic!("no X-Rally-Fencing-Token: {r:?}"));
            assert_eq!(
                r.body["fencing_token"], token,
                "header and body agree: {r:?}"
            );
            assert_eq!(
                r.body["id"],
                r.idempotency_key.as_deref().unwrap_or_default()
            );
            assert_eq!(r.body["vm"], VM);
            assert_eq!(r.body["direction"], "up");
            if (200..300).contains(&r.status) {
                assert!(token >= highest, "accepted behind a higher token: {r:?}");
            }
            highest = highest.max(token);
        }
        (received.len(), accepted.len())
    }
}

/// The value of an unlabelled family, or the sum of a labelled one's samples.
fn family_value(text: &str, family: &str) -> Option<f64> {
    if text.contains(&format!("{family}{{")) {
        Some(sum(text, family, &[]))
    } else {
        sample(text, family, &[])
    }
}

/// The samples of a family, on one line (for the figures printed).
fn samples(text: &str, family: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .map(|l| l.trim_start_matches(family))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Polls the collectors `among` every 50 ms until one of them leads; (index, when).
async fn first_leader(lab: &Lab, among: &[usize], timeout: Duration) -> (usize, Instant) {
    let started = Instant::now();
    loop {
        for &i in among {
            if lab.nodes[i]
                .leader()
                .await
                .is_some_and(|v| v["role"] == "leader")
            {
                return (i, Instant::now());
            }
        }
        assert!(
            started.elapsed() < timeout,
            "no leader among {among:?} after {timeout:?}\n{}",
            lab.evidence()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn others(all: usize, but: usize) -> Vec<usize> {
    (0..all).filter(|&i| i != but).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_while_for_runs_is_replaced_within_its_ttl_and_one_resize_is_sent() {
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(1, &[], "500ms").await;
    let old = lab.leader(&[0, 1, 2], Duration::from_secs(20)).await;
    let old_token = lab.token(old).await;

    let seen = lab.load(old).await;
    // `for` runs (6 s): a third of it later the leader dies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(lab.hook.received().is_empty(), "{}", lab.evidence());
    let killed = Instant::now();
    lab.nodes[old]
        .process
        .take()
        .expect("the leader runs")
        .kill();

    let survivors = others(3, old);
    let (new, took_over) = first_leader(&lab, &survivors, Duration::from_secs(15)).await;
    let take_over = took_over - killed;
    let new_token = lab.token(new).await;
    let first = lab.accepted(HOLD + Duration::from_secs(10)).await;
    // Well past another `for`, nothing more.
    tokio::time::sleep(HOLD + Duration::from_secs(2)).await;
    let (posts, accepted) = lab.assert_one_resize();
    println!(
        "FIGURE sigkill: take-over {} ms after SIGKILL (lease TTL {} ms, tick {} ms); \
         resize accepted {} ms after the kill, {} ms after the load was seen; \
         {posts} POST(s), {accepted} accepted, one decision id; tokens {old_token} -> {new_token}",
        ms(take_over),
        ms(TTL),
        ms(TICK),
        ms(first.at - killed),
        ms(first.at - seen),
    );
    assert!(
        take_over <= TTL + TICK + ETCD_EXPIRY_SLACK,
        "take-over took {take_over:?}\n{}",
        lab.evidence()
    );
    assert!(new_token > old_token, "fencing tokens grow");
    assert_eq!(first.fencing_token, Some(new_token), "{}", lab.evidence());
    // The survivors agree; the new leader counts its term.
    lab.leader(&survivors, Duration::from_secs(5)).await;
    assert!(lab.metric(new, "rally_collector_leader").await == 1.0);
    assert!(lab.metric(new, "rally_collector_leader_terms_total").await >= 1.0);
    assert!(lab.metric(new, "rally_collector_fencing_token").await == new_token as f64);
    assert!(lab.nodes[new].log().contains("leading: term began"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stopped_past_its_lease_is_fenced_when_it_wakes_and_no_second_resize_happens() {
    let _serial = SERIAL.lock().await;
    // The first attempt fails; the leader is stopped while it waits to retry.
    let mut lab = Lab::start(2, &[500], "5s").await;
    let old = lab.leader(&[0, 1, 2], Duration::from_secs(20)).await;
    let old_token = lab.token(old).await;
    lab.load(old).await;
    let first = lab
        .until(
            HOLD + Duration::from_secs(10),
            "the first attempt",
            || async { lab.hook.received().first().cloned() },
        )
        .await;
    lab.nodes[old].process().signal("STOP");
    let stopped = Instant::now();
    assert_eq!(first.status, 500);
    assert_eq!(first.fencing_token, Some(old_token), "{}", lab.evidence());

    let survivors = others(3, old);
    let (new, took_over) = first_leader(&lab, &survivors, Duration::from_secs(15)).await;
    let new_token = lab.token(new).await;
    let resized = lab.accepted(Duration::from_secs(20)).await;
    assert_eq!(resized.fencing_token, Some(new_token), "{}", lab.evidence());
    let posts_before = lab.hook.received().len();

    lab.nodes[old].process().signal("CONT");
    let woke = Instant::now();
    let fenced = lab.fenced(old, Duration::from_secs(10)).await;
    let view = lab.follows(old, new, Duration::from_secs(10)).await;
    let followed = woke.elapsed();
    tokio::time::sleep(HOLD + Duration::from_secs(2)).await;
    let (posts, accepted) = lab.assert_one_resize();
    let late: Vec<Received> = lab.hook.received()[posts_before..].to_vec();
    println!(
        "FIGURE sigstop: new leader {} ms after SIGSTOP; its resize {} ms after SIGSTOP; \
         the old leader (token {old_token}, new {new_token}) fenced ({fenced}) after SIGCONT \
         and follows ({} ms); {} late POST(s) after SIGCONT (statuses {:?}); {posts} POST(s) in all, \
         {accepted} accepted, one decision id",
        ms(took_over - stopped),
        ms(resized.at - stopped),
        ms(followed),
        late.len(),
        late.iter().map(|r| r.status).collect::<Vec<_>>(),
    );
    assert!(
        late.iter()
            .all(|r| r.fencing_token != Some(old_token) || r.status == 409),
        "the old leader's late request was accepted\n{}",
        lab.evidence()
    );
    assert!(view["fencing_token"].as_u64() >= Some(old_token), "{view}");
    assert!(
        lab.nodes[old].log().contains("fenced"),
        "{}",
        lab.evidence()
    );
    assert!(new_token > old_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_etcd_stops_acting_and_rejoins_as_a_follower_when_healed() {
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(3, &[500], "5s").await;
    let old = lab.leader(&[0, 1, 2], Duration::from_secs(20)).await;
    let old_token = lab.token(old).await;
    lab.load(old).await;
    lab.until(
        HOLD + Duration::from_secs(10),
        "the first attempt",
        || async { lab.hook.received().first().cloned() },
    )
    .await;
    lab.cut = Some(Cut::from_etcd(
        &lab.collector_hosts[old],
        &lab.etcd_addresses,
    ));
    let cut = Instant::now();

    let survivors = others(3, old);
    let (new, took_over) = first_leader(&lab, &survivors, Duration::from_secs(15)).await;
    let new_token = lab.token(new).await;
    let resized = lab.accepted(Duration::from_secs(20)).await;
    assert_eq!(resized.fencing_token, Some(new_token), "{}", lab.evidence());
    // Cut off, the old leader knows its lease is gone: it has stepped down and paused.
    let paused = lab
        .until(Duration::from_secs(10), "the old leader paused", || async {
            let v = lab.nodes[old].leader().await?;
            if v["role"] == "leader" || v["lease_healthy"] != false {
                return None;
            }
            let text = lab.nodes[old].metrics().await?;
            let pauses = sum(&text, "rally_collector_actuation_pauses_total", &[]);
            (pauses >= 1.0 && sample(&text, "rally_collector_lease_healthy", &[]) == Some(0.0))
                .then_some(text)
        })
        .await;
    let reasons = samples(&paused, "rally_collector_actuation_pauses_total");
    let healed = Instant::now();
    lab.cut = None;
    let fenced = lab.fenced(old, Duration::from_secs(15)).await;
    lab.follows(old, new, Duration::from_secs(15)).await;
    let rejoined = healed.elapsed();
    tokio::time::sleep(HOLD + Duration::from_secs(2)).await;
    // Nothing of the old leader's went out after its lease could have ended (its
    // retry included), cut off or healed.
    let unsafe_posts: Vec<Received> = lab
        .hook
        .received()
        .into_iter()
        .filter(|r| r.fencing_token == Some(old_token) && r.at > cut + TTL)
        .collect();
    assert!(
        unsafe_posts.is_empty(),
        "the cut-off leader acted past its lease: {unsafe_posts:#?}\n{}",
        lab.evidence()
    );

    let (posts, accepted) = lab.assert_one_resize();
    lab.leader(&[0, 1, 2], Duration::from_secs(5)).await;
    println!(
        "FIGURE partition: new leader {} ms after the cut; its resize {} ms after the cut; \
         the old leader paused ({}), fenced ({fenced}), and followed again {} ms after \
         the heal; {posts} POST(s), {accepted} accepted, one decision id; tokens {old_token} -> {new_token}",
        ms(took_over - cut),
        ms(resized.at - cut),
        reasons,
        ms(rejoined),
    );
    assert!(new_token > old_token);
    assert!(
        lab.nodes[old].log().contains("leadership lost"),
        "{}",
        lab.evidence()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_all_of_etcd_down_collectors_ingest_and_serve_but_pause_actuation_until_it_returns() {
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(4, &[], "500ms").await;
    let old = lab.leader(&[0, 1, 2], Duration::from_secs(20)).await;
    let text = lab.nodes[old].metrics().await.expect("/metrics");
    let pauses_before = sum(&text, "rally_collector_actuation_pauses_total", &[]);
    let mut reports_before = Vec::new();
    for node in &lab.nodes {
        reports_before.push(node.reports().await.expect("the VM's reports"));
    }
    for i in 0..3 {
        lab.etcd.kill(i);
    }
    let down = Instant::now();
    // The load arrives while etcd is down: every collector ingests it.
    lab.stress = Some(Stress::start(lab.dir.path()));
    for node in &lab.nodes {
        lab.until(
            Duration::from_secs(20),
            &format!("the load seen by {} without etcd", node.name),
            || async { node.cpu().await.filter(|u| *u >= 0.9).map(|_| ()) },
        )
        .await;
    }
    // The old leader pauses, counted and logged, and nobody leads.
    let text = lab
        .until(Duration::from_secs(15), "actuation paused", || async {
            let text = lab.nodes[old].metrics().await?;
            (sum(&text, "rally_collector_actuation_pauses_total", &[]) > pauses_before
                && sample(&text, "rally_collector_leader", &[]) == Some(0.0))
            .then_some(text)
        })
        .await;
    let paused_after = down.elapsed();
    // Held well past `for`: still no resize, and every collector serves /metrics with
    // fresh figures.
    tokio::time::sleep(HOLD + Duration::from_secs(2)).await;
    assert!(lab.hook.received().is_empty(), "{}", lab.evidence());
    for (i, node) in lab.nodes.iter().enumerate() {
        let v = node.leader().await.expect("/api/v1/leader answers");
        assert_ne!(v["role"], "leader", "{}: {v}", node.name);
        assert!(lab.metric(i, "rally_collector_etcd_errors_total").await >= 1.0);
        assert!(node.cpu().await.is_some_and(|u| u >= 0.9));
        let reports = node.reports().await.expect("the VM's reports");
        assert!(
            reports >= reports_before[i] + 10.0,
            "{} applied {} reports while etcd was down",
            node.name,
            reports - reports_before[i]
        );
    }
    let reasons = samples(&text, "rally_collector_actuation_pauses_total");
    assert!(
        lab.nodes[old].log().contains("leadership lost"),
        "{}",
        lab.evidence()
    );

    let etcd_bin = tool::require("etcd", "etcd-server");
    for i in 0..3 {
        let cmd = lab.etcd_hosts[i].command(&etcd_bin);
        lab.etcd.restart(i, Some(cmd));
    }
    lab.etcd.wait_healthy().await;
    let back = Instant::now();
    let (leader, led) = first_leader(&lab, &[0, 1, 2], Duration::from_secs(20)).await;
    let resized = lab.accepted(HOLD + Duration::from_secs(15)).await;
    let token = lab.token(leader).await;
    assert_eq!(resized.fencing_token, Some(token), "{}", lab.evidence());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (posts, accepted) = lab.assert_one_resize();
    println!(
        "FIGURE etcd restart: paused {} ms after etcd went down ({}); etcd down {} ms; \
         a leader {} ms after etcd was healthy again, the resize {} ms after; \
         {posts} POST(s), {accepted} accepted",
        ms(paused_after),
        reasons,
        ms(back - down),
        ms(led - back),
        ms(resized.at - back),
    );
}
