//! A real agent in a network namespace of its own, reaching its collector through a
//! second namespace over a veth pair and a lossy proxy (delay, random resets and
//! stalls), is partitioned from it for 60 s by nftables. Nothing is lost within its
//! buffer, order is kept, its memory stays within its buffer's bound, and it retries
//! with growing, jittered delays while the partition lasts.

use rally_tests::ledger::{accepted, assert_contiguous, sample};
use rally_tests::nspawn::Netns;
use rally_tests::process::Process;
use rally_tests::proxy::{Faults, Proxy, listener_in_netns};
use rally_tests::rally::Collector;
use rally_tests::{bin, eventually, tool};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const VM: &str = "part-1";
/// The agent's side of the veth pair, and the proxy's (a network of this test's own
/// namespaces only).
const AGENT_ADDRESS: &str = "10.231.0.2/24";
const PROXY_ADDRESS: &str = "10.231.0.1/24";
const PROXY: &str = "10.231.0.1:9470";
const PARTITION: Duration = Duration::from_secs(60);
/// Reports a second (interval 200 ms), and how many the agent keeps: 2 minutes.
const PER_SECOND: u64 = 5;
const BUFFER: u64 = 600;
/// What a buffered report may cost the agent at most, encoded and queued.
const BYTES_PER_REPORT: u64 = 4096;

/// A bad network: every chunk 20 ms late, one in 100 resets its connection, one in
/// 30 stalls for 300 ms.
const LOSSY: Faults = Faults {
    delay: Duration::from_millis(20),
    reset: 0.01,
    stall: 1.0 / 30.0,
    stall_for: Duration::from_millis(300),
};
/// Reports through the lossy path before the partition, and after the replay.
const LOSSY_REPORTS: u64 = 60;

/// Runs `nft -f -` with `script` inside `netns`; panics unless it succeeds.
fn nft(netns: &Netns, script: &str) {
    let out = rally_tests::nspawn::nft(netns.name(), script);
    assert!(
        out.status.success(),
        "nft failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// A `Duration`'s `Debug` text (`1s`, `1.6032s`, `800ms`) in seconds.
fn seconds(text: &str) -> f64 {
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| text.split_at(i))
        .expect("a unit");
    let n: f64 = number.parse().expect("a number");
    match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        other => panic!("unit {other} in {text}"),
    }
}

/// One failed stream in the agent's log: when (seconds of the day, UTC) and the
/// delay the agent chose before its next attempt.
#[derive(Debug)]
struct Failure {
    at: f64,
    retry_in: f64,
}

/// The agent's `stream to collector failed` lines (the first of an outage at warn,
/// the others at debug).
fn failures(log: &str) -> Vec<Failure> {
    log.lines()
        .filter(|l| l.contains("stream to collector failed"))
        .map(|line| {
            // 2026-11-30T13:36:04.123456Z DEBUG rally_agent::transport: ...
            let time = line
                .split_whitespace()
                .next()
                .and_then(|t| t.split_once('T'))
                .map(|(_, t)| t.trim_end_matches('Z'))
                .expect("a timestamp");
            let mut parts = time.split(':').map(|p| p.parse::<f64>().expect("time"));
            let mut part = || parts.next().expect("hh:mm:ss");
            let at = part() * 3600.0 + part() * 60.0 + part();
            let retry_in = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("retry_in="))
                .map(seconds)
                .unwrap_or_else(|| panic!("no retry_in: {line}"));
            Failure { at, retry_in }
        })
        .collect()
}

fn applied(collector: &Collector) -> Vec<u64> {
    let log = collector.logs().pop().unwrap_or_default();
    let runs = accepted(&log);
    assert!(runs.len() <= 1, "one agent run: {:?}", runs.keys());
    runs.into_values().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_60s_partition_with_loss_loses_nothing_and_backs_off_with_jitter() {
    tool::require("nft", "nftables");
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let agent_net = Netns::create(&format!("rally-part-{pid}-a"));
    let proxy_net = Netns::create(&format!("rally-part-{pid}-p"));
    Netns::link(&agent_net, AGENT_ADDRESS, &proxy_net, PROXY_ADDRESS);

    let collector = Collector::start(dir.path(), "").await;
    let listener = listener_in_netns(&proxy_net.path(), PROXY.parse().unwrap());
    let proxy = Proxy::start(listener, collector.grpc.parse().unwrap(), LOSSY);

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "vm_id = \"{VM}\"\ncollectors = [\"http://{PROXY}\"]\ninterval = \"200ms\"\nbuffer_reports = {BUFFER}\n"
        ),
    )
    .unwrap();
    let mut cmd = agent_net.command(&bin::path("rally-agent"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "info,rally_agent::transport=debug");
    let mut agent = Process::spawn("rally-agent", cmd, &dir.path().join("agent.log"));
    // `ip netns exec` execs the program: the pid is the agent's own.
    eventually(Duration::from_secs(10), "the agent to be exec'd", || {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", agent.pid()));
        async move { comm.ok().filter(|c| c.trim() == "rally-agent") }
    })
    .await;

    eventually(
        Duration::from_secs(90),
        "reports through the lossy path",
        || {
            let n = applied(&collector).len() as u64;
            async move { (n >= LOSSY_REPORTS).then_some(()) }
        },
    )
    .await;
    let baseline_rss = rss(agent.pid());
    let mut peak_rss = baseline_rss;

    // The partition: the open stream is reset (the path's state is gone), and every
    // packet between the two namespaces is dropped for 60 s.
    let failures_before = failures(&agent.log()).len();
    let seq_at_start = applied(&collector).last().copied().unwrap_or(0);
    proxy.cut();
    // The reset must reach the agent before the drop rule is in place (else the open
    // stream just hangs): wait until the agent has seen its stream fail.
    eventually(
        Duration::from_secs(10),
        "the agent to see the proxy's reset",
        || {
            let seen = failures(&agent.log()).len() > failures_before;
            async move { seen.then_some(()) }
        },
    )
    .await;
    nft(
        &agent_net,
        &format!(
            "table inet partition {{\n  chain out {{ type filter hook output priority 0; ip daddr {} drop; }}\n  chain in {{ type filter hook input priority 0; ip saddr {} drop; }}\n}}\n",
            PROXY_ADDRESS.trim_end_matches("/24"),
            PROXY_ADDRESS.trim_end_matches("/24")
        ),
    );
    proxy.restore();
    let started = Instant::now();
    let mut applied_early = None;
    while started.elapsed() < PARTITION {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(agent.is_running(), "agent died:\n{}", agent.log());
        peak_rss = peak_rss.max(rss(agent.pid()));
        // What was on its way when the partition began has landed by now.
        if applied_early.is_none() && started.elapsed() >= Duration::from_secs(10) {
            applied_early = Some(applied(&collector).last().copied().unwrap_or(0));
        }
    }
    let during: Vec<Failure> = failures(&agent.log())
        .into_iter()
        .skip(failures_before)
        .collect();
    let applied_during = applied(&collector).last().copied().unwrap_or(0);
    nft(&agent_net, "delete table inet partition\n");

    // Everything sampled during the partition arrives once the agent is back.
    let wanted = seq_at_start + PARTITION.as_secs() * PER_SECOND * 9 / 10;
    eventually(
        Duration::from_secs(120),
        "the partition's reports replayed",
        || async {
            let last = applied(&collector).last().copied().unwrap_or(0);
            let m = collector.get("/metrics").await;
            let buffered = sample(&m, "rally_vm_agent_buffered_reports", &[("vm", VM)])?;
            (last >= wanted && buffered <= 5.0).then_some(())
        },
    )
    .await;
    // And on over the lossy path again, replays after resets included.
    let resumed = applied(&collector).last().copied().unwrap_or(0);
    eventually(
        Duration::from_secs(90),
        "reports through the lossy path after the partition",
        || {
            let last = applied(&collector).last().copied().unwrap_or(0);
            async move { (last >= resumed + LOSSY_REPORTS).then_some(()) }
        },
    )
    .await;
    let metrics = collector.get("/metrics").await;
    peak_rss = peak_rss.max(rss(agent.pid()));
    assert!(agent.is_running(), "agent died:\n{}", agent.log());
    agent.terminate(Duration::from_secs(10));
    let counts = proxy.counts();
    let (resets, stalls) = (
        counts.reset.load(Ordering::Relaxed),
        counts.stalled.load(Ordering::Relaxed),
    );
    // Hundreds of chunks at 1 % and 3 %: no fault at all would mean no loss was tried.
    assert!(resets + stalls > 0, "the proxy never reset nor stalled");

    assert_eq!(
        applied_early,
        Some(applied_during),
        "reports applied through the partition (from {seq_at_start})"
    );
    let seqs = applied(&collector);
    assert_contiguous(VM, &seqs, 1);
    let labels = [("vm", VM)];
    assert_eq!(
        sample(&metrics, "rally_vm_reports_lost_total", &labels),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "rally_vm_agent_dropped_reports_total", &labels),
        Some(0.0)
    );

    // Backoff: at least five attempts in 60 s (each refused one waits out the 5 s
    // connect timeout), each delay 1.6 × the last within the ±20 % jitter, so the
    // attempts are spaced ever wider, and the jitter shows.
    let log = agent.log();
    assert!(
        during.len() >= 5,
        "{} failed attempts during the partition:\n{log}",
        during.len()
    );
    let delays: Vec<f64> = during.iter().map(|f| f.retry_in).collect();
    for pair in delays.windows(2) {
        let ratio = pair[1] / pair[0];
        assert!(
            (1.6 * 0.8 / 1.2..=1.6 * 1.2 / 0.8).contains(&ratio),
            "delays {delays:?}: {} after {} is not a 1.6× step with ±20 % jitter",
            pair[1],
            pair[0]
        );
    }
    assert!(
        delays.windows(2).any(|p| (p[1] / p[0] - 1.6).abs() > 0.01),
        "no jitter in the delays {delays:?}"
    );
    // The gaps between failures: each delay really waited, then an attempt that
    // waits out its connect timeout. They widen with the delays (give or take the
    // scheduling of a loaded machine).
    let gaps: Vec<f64> = during
        .windows(2)
        .map(|p| (p[1].at - p[0].at).rem_euclid(86_400.0))
        .collect();
    for (gap, delay) in gaps.iter().zip(&delays) {
        assert!(
            *gap >= delay - 0.01,
            "an attempt {gap} s after a failure that announced {delay} s: gaps {gaps:?}"
        );
    }
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0] - 0.5),
        "attempts not spaced increasingly: gaps {gaps:?}, delays {delays:?}"
    );
    assert!(
        gaps[gaps.len() - 1] > gaps[0] + 2.0,
        "attempts not spaced increasingly: gaps {gaps:?}, delays {delays:?}"
    );
    let reconnects =
        sample(&metrics, "rally_vm_agent_reconnects_total", &labels).expect("reconnects counter");
    assert!(
        reconnects >= during.len() as f64,
        "{reconnects} reconnects counted, {} failures during the partition",
        during.len()
    );

    // Memory: what it had with its stream up, plus a full buffer at most.
    let bound = baseline_rss + BUFFER * BYTES_PER_REPORT;
    assert!(
        peak_rss <= bound,
        "agent VmRSS peaked at {peak_rss} bytes, over {bound} ({baseline_rss} + {BUFFER} reports)"
    );
    println!(
        "{} reports ({} duplicates), {} failed attempts in the partition (delays {delays:?}), VmRSS {baseline_rss} → peak {peak_rss}; proxy: {resets} resets, {stalls} stalls",
        seqs.len(),
        sample(&metrics, "rally_vm_reports_duplicate_total", &labels).unwrap_or(0.0),
        during.len(),
    );
}
