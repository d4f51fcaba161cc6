//! rally-load: simulates a fleet of agents against one collector and measures it.
//!
//! Every simulated agent opens its own `rally.v1.Ingest/Stream`, sends `Hello`
//! and then reports filled as the real agent fills them, at a fixed rate or as fast
//! as acknowledgements allow, and measures the time from each report to the ack that
//! covers it. Agents share HTTP/2 connections `--streams-per-connection` at a time.
//! With `--reconnect` a lost stream is reopened after the real agent's backoff, and
//! the summary tells how the reconnections spread out.
//! At the end it prints reports/s, ack latency percentiles, the seconds in which acks
//! were slow, errors, and the collector's CPU and memory over the run.
//!
//! # Layout
//!
//! - [`cli`]: the command line ([`cli::Cli`]) and its bounds.
//! - [`agent`]: one simulated agent and the run's phases.
//! - [`report`]: identities, `Hello` and reports, built with `rally_agent::wire`.
//! - [`codec`]: the stream's gRPC codec, which sends reports from their cached encoding.
//! - [`stats`]: shared counters and the latency histogram.
//! - [`slow`]: acks slower than `--slow`, by the second of the run they arrived in.
//! - [`usage`]: CPU time and resident memory of a process from `/proc`.
//! - [`summary`]: the figures of a run, as text or JSON.

// unwrap() is fine in tests (a panic is the failure report).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod agent;
mod cli;
mod codec;
mod report;
mod slow;
mod stats;
mod summary;
mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::agent::{Phase, Plan, Shared};
use crate::cli::Cli;
use crate::slow::SlowAcks;
use crate::stats::Stats;
use crate::summary::Summary;

/// Streams being opened at once: enough to open a large fleet in seconds, few enough
/// not to overflow the collector's listen backlog.
const OPENING_AT_ONCE: usize = 256;
/// How long a TCP connection to the collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept free for everything but the connections.
const SPARE_FDS: u64 = 64;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.check()?;
    raise_fd_limit(cli.sockets() as u64 + SPARE_FDS)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let summary = runtime.block_on(run(&cli))?;
    if let Some(path) = &cli.json_file {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// Raises the soft limit on open files as far as needed (and allowed): each
/// connection is a socket.
fn raise_fd_limit(needed: u64) -> anyhow::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= needed {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    anyhow::ensure!(
        hard >= needed,
        "{needed} open files needed but the hard limit is {hard}: use more --streams-per-connection, fewer --agents, or raise `ulimit -Hn`"
    );
    limit.current = Some(needed);
    setrlimit(Resource::Nofile, limit).context("raise the open files limit")?;
    Ok(())
}

async fn run(cli: &Cli) -> anyhow::Result<Summary> {
    // Every second of the run and of the drain, with room for the agents' own
    // stopping time; anything later counts in the last second.
    let run_seconds = (cli.duration + cli.drain).as_secs() + 12;
    let slow = SlowAcks::new(cli.slow, usize::try_from(run_seconds)?);
    let stats = Arc::new(Stats::new(slow)?);
    let plan = Arc::new(Plan {
        vm_prefix: cli.vm_prefix.clone(),
        period: cli.period(),
        window: cli.window,
        open_timeout: cli.open_timeout,
        drain: cli.drain,
        reconnect: cli.reconnect,
    });
    let endpoint = Endpoint::from_shared(cli.collector.clone())
        .context("--collector is not a URL")?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let (phase_tx, phase_rx) = watch::channel(Phase::Opening);
    let shared = Shared {
        plan,
        stats: Arc::clone(&stats),
        phase: phase_rx,
        opening: Arc::new(Semaphore::new(OPENING_AT_ONCE)),
        endpoint: endpoint.clone(),
    };

    let opening_started = Instant::now();
    let mut agents = JoinSet::new();
    let mut channel: Option<Channel> = None;
    for index in 0..cli.agents {
        if index % cli.streams_per_connection == 0 {
            // Connected by the first stream that uses it.
            channel = Some(endpoint.connect_lazy());
        }
        if let Some(channel) = &channel {
            agents.spawn(agent::run(index, channel.clone(), shared.clone()));
        }
    }
    // Every open is bounded by --open-timeout, but they queue for the semaphore, so
    // the whole ramp is bounded separately.
    let ramp_deadline = opening_started + cli.ramp_timeout;
    let agent_count = cli.agents as u64;
    while Stats::get(&stats.settled) < agent_count && Instant::now() < ramp_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opening = opening_started.elapsed();
    anyhow::ensure!(
        Stats::get(&stats.opened) > 0,
        "no stream could be opened to {}: {:?}",
        cli.collector,
        stats.errors()
    );

    let collector_before = cli
        .collector_pid
        .map(|p| usage::read(Some(p)))
        .transpose()?;
    let generator_before = usage::read(None)?;
    let started = Instant::now();
    stats.steady_from((started + cli.warm_up).into());
    stats.slow.start(started.into());
    phase_tx.send_replace(Phase::Running);
    let mut last_progress = (started, 0u64);
    let deadline = started + cli.duration;
    while Instant::now() < deadline {
        let step = cli.progress.unwrap_or(Duration::from_millis(200));
        let wake = (Instant::now() + step).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        if cli.progress.is_some() && Instant::now() < deadline {
            last_progress = progress(&stats, started, last_progress);
        }
    }
    let elapsed = started.elapsed();
    let collector_after = cli
        .collector_pid
        .map(|p| usage::read(Some(p)))
        .transpose()?;
    let generator_after = usage::read(None)?;
    phase_tx.send_replace(Phase::Stopping);
    // Every agent waits for its acks with its stream open; the streams close together
    // once all are done, or once the drain time is over.
    let drain_deadline = Instant::now() + cli.drain + Duration::from_secs(1);
    let opened = Stats::get(&stats.opened);
    while Stats::get(&stats.drained) < opened && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    phase_tx.send_replace(Phase::Closing);

    // Each agent's drain is bounded by --drain; allow for scheduling on top.
    let stop_deadline = tokio::time::Instant::now() + cli.drain + Duration::from_secs(10);
    while !agents.is_empty() {
        match tokio::time::timeout_at(stop_deadline, agents.join_next()).await {
            Ok(Some(Err(e))) if e.is_panic() => stats.error("agent task panicked"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                stats.error("agent still running after the drain time");
                agents.abort_all();
                break;
            }
        }
    }

    Ok(Summary::new(
        cli,
        &stats,
        opening,
        elapsed,
        collector_before.zip(collector_after),
        (generator_before, generator_after),
    ))
}

/// Prints one progress line to stderr; returns the new reference point.
fn progress(stats: &Stats, started: Instant, (at, sent_then): (Instant, u64)) -> (Instant, u64) {
    let now = Instant::now();
    let sent = Stats::get(&stats.sent);
    let rate = (sent - sent_then) as f64 / now.duration_since(at).as_secs_f64().max(1e-9);
    let errors: u64 = stats.errors().values().sum();
    eprintln!(
        "{:>6.1}s  sent {sent}  {rate:.0}/s  acked {}  errors {errors}",
        now.duration_since(started).as_secs_f64(),
        Stats::get(&stats.acked),
    );
    (now, sent)
}
