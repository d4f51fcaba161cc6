//! The agent's request sources against real Apache (`mod_status ?auto`, with a
//! graceful restart under load), php-fpm (the pool's `?json` status behind a real
//! nginx) and a real Prometheus text endpoint (prometheus-node-exporter's own
//! `promhttp_metric_handler_requests_total`), all from Debian packages.
#![allow(clippy::unwrap_used)] // a panic is the test failure report

use std::process::Command;
use std::time::Duration;

use rally_agent::source::{SourceConfig, SourceSample, Sources};
use rally_tests::process::Process;
use rally_tests::web::{self, Apache, Nginx, PhpFpm};
use rally_tests::{free_port, tool};

#[derive(serde::Deserialize)]
struct Wrapper {
    sources: Vec<SourceConfig>,
}

fn sources(toml_text: &str) -> Sources {
    let w: Wrapper = toml::from_str(toml_text).unwrap();
    Sources::new(&w.sources).unwrap()
}

/// Loads `url` at `pace` for `readings` seconds, reading the sources every second and
/// calling `during(i)` after reading `i`; returns what was sent and every reading.
async fn run_load(
    sources: &mut Sources,
    url: String,
    pace: u32,
    readings: u32,
    during: impl Fn(u32),
) -> (u64, Vec<SourceSample>) {
    let first = sources.sample().await.remove(0);
    assert!(first.up && first.requests_per_second.is_none(), "{first:?}");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(web::load(url, pace, stop_rx, Default::default()));
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut out = Vec::new();
    for i in 1..=readings {
        tick.tick().await;
        out.push(sources.sample().await.remove(0));
        during(i);
    }
    stop.send_replace(true);
    let sent = load.await.unwrap();
    for _ in 0..2 {
        tick.tick().await;
        out.push(sources.sample().await.remove(0));
    }
    for s in &out {
        assert!(s.up, "{s:?}");
    }
    (sent, out)
}

fn assert_no_spike(readings: &[SourceSample], pace: u32) {
    for s in readings {
        if let Some(rate) = s.requests_per_second {
            assert!(
                (0.0..=f64::from(pace) * 1.5).contains(&rate),
                "negative or spiked rate {rate}: {readings:#?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_total_accesses_match_what_was_sent_across_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let apache = Apache::start(&dir.path().join("apache"));
    let mut sources = sources(&format!(
        "[[sources]]\nname = \"apache\"\nkind = \"apache\"\nurl = \"{}\"\n",
        apache.url("/server-status?auto")
    ));
    const PACE: u32 = 100;
    let (sent, readings) = run_load(&mut sources, apache.url("/"), PACE, 8, |i| {
        if i == 4 {
            apache.control("graceful");
        }
    })
    .await;
    assert_no_spike(&readings, PACE);
    let counted: u64 = readings.iter().map(|s| s.requests).sum();
    let skipped: Vec<_> = readings
        .iter()
        .filter(|s| s.requests_per_second.is_none())
        .collect();
    println!(
        "apache: sent {sent}, counted {counted}, readings without a rate {}",
        skipped.len()
    );
    if skipped.is_empty() {
        assert_eq!(counted, sent, "{readings:#?}");
    } else {
        // A graceful restart that lowered the counter without a restart of the count:
        // that interval has no rate (never a wrong one); the others add up.
        assert!(skipped.len() <= 1 && counted <= sent, "{readings:#?}");
    }
    let gauges = readings[0].apache.as_ref().unwrap();
    assert!(
        gauges.busy_workers >= 1 && !gauges.scoreboard.is_empty(),
        "{gauges:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_fpm_accepted_connections_match_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let fpm = PhpFpm::start(&dir.path().join("fpm"));
    let nginx = Nginx::start(&dir.path().join("nginx"), Some(fpm.port));
    let mut sources = sources(&format!(
        "[[sources]]\nname = \"fpm\"\nkind = \"php_fpm\"\nurl = \"{}\"\n",
        nginx.url("/fpm-status?json")
    ));
    const PACE: u32 = 100;
    let (sent, readings) = run_load(&mut sources, nginx.url("/fpm-status"), PACE, 5, |_| {}).await;
    assert_no_spike(&readings, PACE);
    let counted: u64 = readings.iter().map(|s| s.requests).sum();
    println!("php-fpm: sent {sent}, counted {counted}");
    assert_eq!(counted, sent, "{readings:#?}");
    let pool = readings[0].php_fpm.unwrap();
    assert_eq!(
        pool.total_processes, 2,
        "pm = static, max_children = 2: {pool:?}"
    );
    assert!(pool.listen_queue_len > 0, "{pool:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_counter_is_summed_over_the_matching_series() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = tool::require("prometheus-node-exporter", "prometheus-node-exporter");
    let port = free_port();
    let mut cmd = Command::new(exporter);
    cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults");
    let _exporter = Process::spawn("node_exporter", cmd, &dir.path().join("exporter.log"));
    let url = format!("http://127.0.0.1:{port}/metrics");
    rally_tests::eventually(Duration::from_secs(20), "node_exporter up", || {
        let url = url.clone();
        async move { reqwest::get(&url).await.ok() }
    })
    .await;
    let mut sources = sources(&format!(
        "[[sources]]\nname = \"exporter\"\nkind = \"prometheus\"\nurl = \"{url}\"\nmetric = \"promhttp_metric_handler_requests_total\"\nmatchers = {{ code = \"200\" }}\n"
    ));
    const PACE: u32 = 20;
    let (sent, readings) = run_load(&mut sources, url.clone(), PACE, 4, |_| {}).await;
    assert_no_spike(&readings, PACE * 2);
    let counted: u64 = readings.iter().map(|s| s.requests).sum();
    println!(
        "prometheus: sent {sent}, counted {counted} over {} readings",
        readings.len()
    );
    // The exporter counts every scrape once answered: the load, plus the agent's own
    // previous reading in each interval.
    assert_eq!(counted, sent + readings.len() as u64, "{readings:#?}");
}
