//! The agent's request sources against a real nginx (Debian package `nginx`): the
//! status page and the access log count what the test sent, across a reload, a
//! copytruncate and a rename + reopen under load; a stopped server is reported down
//! and comes back.
//!
//! The sources are driven in-process (`rally_agent::source::Sources`, the code the
//! agent runs at every sample), so every reading is seen, not only the latest. Each
//! reading also goes the way a report goes (the agent's wire message, the collector's
//! ingest check) to the VM's request rate, which counts this one nginx once.

#![allow(clippy::unwrap_used)] // a panic is the test failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rally_agent::sample::Sample;
use rally_agent::source::{SourceConfig, SourceSample, Sources};
use rally_collector::fleet::Report;
use rally_tests::web::{self, Nginx};

#[derive(serde::Deserialize)]
struct Wrapper {
    sources: Vec<SourceConfig>,
}

fn sources(toml_text: &str) -> Sources {
    let w: Wrapper = toml::from_str(toml_text).unwrap();
    Sources::new(&w.sources).unwrap()
}

fn lines(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0)
}

/// One reading of the sources as the collector sees it: the agent's report message
/// with sequence number `seq`, checked at the collector's ingest edge.
fn as_collected(seq: u64, sources: &[SourceSample]) -> Report {
    let sample = Sample {
        timestamp_ms: 1_700_000_000_000 + i64::try_from(seq).unwrap() * 1000,
        interval_ms: 1000,
        size: None,
        cpu: None,
        cores: vec![],
        load: None,
        memory: None,
        pressure: None,
        net: vec![],
        disks: vec![],
        filesystems: std::sync::Arc::default(),
        sources: sources.to_vec(),
    };
    rally_collector::ingest::validate::report(rally_agent::wire::report(seq, &sample)).unwrap()
}

/// Readings of one source: requests, interval seconds, rate.
fn series(readings: &[Vec<SourceSample>], index: usize) -> Vec<(u64, f64, Option<f64>)> {
    readings
        .iter()
        .map(|r| {
            let s = &r[index];
            assert!(s.up, "{} down: {:?}", s.name, s.error);
            (
                s.requests,
                f64::from(s.interval_ms) / 1000.0,
                s.requests_per_second,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_counts_match_what_was_sent_across_reload_and_both_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&dir.path().join("nginx"), None);
    let log = nginx.access_log.clone();
    let mut sources = sources(&format!(
        "[[sources]]\nname = \"nginx\"\nkind = \"nginx\"\nurl = \"{}\"\n\n[[sources]]\nname = \"log\"\nkind = \"access_log\"\npath = \"{}\"\nformat = '{}'\ncounted_by = \"nginx\"\n",
        nginx.url("/status"),
        log.display(),
        web::NGINX_FORMAT
    ));
    let first = sources.sample().await;
    assert!(
        first
            .iter()
            .all(|s| s.up && s.requests_per_second.is_none()),
        "first reading: no rate: {first:?}"
    );

    const PACE: u32 = 200;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let answered = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(web::load(
        nginx.url("/shop"),
        PACE,
        stop_rx,
        Arc::clone(&answered),
    ));
    let mut readings = Vec::new();
    // When each reading was taken, and how many requests had been answered then.
    let mut marks = Vec::new();
    let mut copy_lines = 0;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    // A late reading (a loaded machine) must not be followed by a burst of readings a
    // few milliseconds apart, whose rates the millisecond interval rounds too coarsely.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 1..=12 {
        tick.tick().await;
        marks.push((Instant::now(), answered.load(Ordering::Relaxed)));
        readings.push(sources.sample().await);
        match i {
            3 => nginx.signal("reload"),
            5 => {
                // logrotate's copytruncate, back to back.
                let copy = dir.path().join("nginx/access.log.1");
                std::fs::copy(&log, &copy).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&log)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                copy_lines = lines(&copy);
            }
            8 => {
                std::fs::rename(&log, dir.path().join("nginx/access.log.2")).unwrap();
                nginx.signal("reopen");
            }
            _ => {}
        }
    }
    stop.send_replace(true);
    let sent = load.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last requests land, then read twice (the second drains the rotated file).
    for _ in 0..2 {
        tick.tick().await;
        readings.push(sources.sample().await);
    }

    let status = series(&readings, 0);
    let access = series(&readings, 1);
    let counted = |s: &[(u64, f64, Option<f64>)]| s.iter().map(|r| r.0).sum::<u64>();
    let in_files = copy_lines + lines(&dir.path().join("nginx/access.log.2")) + lines(&log);
    println!(
        "sent {sent} in {elapsed:.2}s; stub_status counted {}; access log counted {}; lines in the files {in_files} (logrotate's copy/truncate race lost {})",
        counted(&status),
        counted(&access),
        sent.saturating_sub(in_files)
    );
    assert_eq!(counted(&status), sent, "stub_status: {status:?}");
    // Exactly the lines the log files hold: none lost, none counted twice.
    assert_eq!(counted(&access), in_files, "access log: {access:?}");
    assert!(
        sent - in_files <= 2,
        "only the copy/truncate race may lose lines"
    );

    // Rates: never negative or spiked (the reload, the rotations), and over the
    // steady part (readings 2 to 11) within 2 % of what was answered between the
    // first and the eleventh reading. (Not of sent/elapsed: on a loaded machine the
    // load starts slowly and falls behind its pace unevenly.)
    let (start, end) = (marks[0], marks[10]);
    let expected = (end.1 - start.1) as f64 / (end.0 - start.0).as_secs_f64();
    for (name, s) in [("stub_status", &status), ("access log", &access)] {
        for (requests, secs, rate) in s {
            let rate = rate.expect("a rate at every reading after the first");
            assert!(
                (0.0..=expected * 1.5).contains(&rate),
                "{name}: spike or negative {rate}: {s:?}"
            );
            // The same figure: the reported interval is the true one truncated to whole
            // milliseconds, so the rate lies between the counts over its two bounds.
            let n = *requests as f64;
            let (low, high) = (n / (secs + 1e-3), n / secs);
            assert!(
                (low - 1e-6..=high + 1e-6).contains(&rate),
                "{name}: rate {rate} is not {requests} requests over {secs}s: {s:?}"
            );
        }
        let steady = &s[1..11];
        let rate = steady.iter().map(|r| r.0).sum::<u64>() as f64
            / steady.iter().map(|r| r.1).sum::<f64>();
        println!("{name}: {rate:.1}/s over the steady readings vs {expected:.1}/s sent");
        assert!(
            (rate - expected).abs() / expected < 0.02,
            "{name}: {rate} vs {expected}: {s:?}"
        );
    }
    // Status classes and latency from the log.
    let last_busy = &readings[5][1];
    assert!(last_busy.statuses.unwrap().success > 0);
    assert!(last_busy.latency.is_some(), "the format has $request_time");

    // The VM's rate, as the collector sums it: stub_status and the log are one nginx,
    // counted once (the log is `counted_by` nginx), so it is the rate sent, not twice it.
    let collected: Vec<Report> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| as_collected(i as u64 + 1, r))
        .collect();
    for (report, (_, _, nginx_rate)) in collected.iter().zip(&status) {
        assert_eq!(report.requests_per_second(), *nginx_rate);
    }
    let steady = &collected[1..11];
    let vm_rate = steady
        .iter()
        .map(|r| r.requests_per_second().unwrap())
        .sum::<f64>()
        / steady.len() as f64;
    println!("VM: {vm_rate:.1}/s over the steady readings vs {expected:.1}/s sent");
    assert!(
        (vm_rate - expected).abs() / expected < 0.05,
        "the VM's rate {vm_rate} vs {expected} sent"
    );
    // stub_status has no statuses: the log's stand for nginx (every answer was a 2xx).
    assert_eq!(collected[5].server_error_ratio(), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nginx_is_reported_down_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&dir.path().join("nginx"), None);
    let mut sources = sources(&format!(
        "[[sources]]\nname = \"nginx\"\nkind = \"nginx\"\nurl = \"{}\"\ntimeout = \"500ms\"\n",
        nginx.url("/status")
    ));
    // No kept-alive connections: after `nginx -s quit` the old worker may still answer
    // on one, and its request would never reach the restarted server's counter.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let hit = |n: usize| {
        let client = client.clone();
        let url = nginx.url("/");
        async move {
            for _ in 0..n {
                client
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
            }
        }
    };
    sources.sample().await;
    hit(500).await;
    let before = sources.sample().await.remove(0);
    assert_eq!(before.requests, 500);

    nginx.stop();
    let down = sources.sample().await.remove(0);
    assert!(
        !down.up && down.error.is_some() && down.down_total == 1,
        "{down:?}"
    );
    assert_eq!(down.requests_per_second, None);

    nginx.start_again();
    hit(30).await;
    let back = sources.sample().await.remove(0);
    assert!(back.up, "{back:?}");
    assert_eq!(back.down_total, 1);
    // The counter restarted from 0: the 30 requests since, not a negative or a spike.
    assert_eq!(back.requests, 30, "{back:?}");
    assert!(back.requests_per_second.unwrap() >= 0.0);
}
