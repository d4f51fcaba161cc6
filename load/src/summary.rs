//! The figures of one run, printed as text or serialized as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::cli::Cli;
use crate::report;
use crate::stats::{Latency, Stats};
use crate::usage::{Reading, Usage};

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// `flood` or `rate`.
    pub mode: &'static str,
    /// Reports per second per agent asked for (`None` in a flood).
    pub rate_per_agent: Option<f64>,
    /// Agents asked for.
    pub agents: usize,
    /// Encoded size of one report, in bytes.
    pub report_bytes: usize,
    /// Streams per HTTP/2 connection.
    pub streams_per_connection: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Streams the collector accepted.
    pub streams_opened: u64,
    /// Seconds spent opening the streams.
    pub opening_seconds: f64,
    /// Seconds reports were sent.
    pub seconds: f64,
    /// Reports sent.
    pub reports_sent: u64,
    /// Reports sent per second.
    pub reports_per_second: f64,
    /// Reports covered by an ack (including those acked during the drain).
    pub reports_acked: u64,
    /// Ack messages received (the collector coalesces acks).
    pub acks: u64,
    /// Reports never acknowledged.
    pub reports_unacked: u64,
    /// Ack latency: from sending a report to the ack that covers it.
    pub ack_latency: Latency,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// The collector's CPU and memory over the run (with `--collector-pid`).
    pub collector: Option<Usage>,
    /// This generator's own CPU and memory over the run.
    pub generator: Usage,
}

impl Summary {
    /// Gathers the figures of a finished run.
    pub fn new(
        cli: &Cli,
        stats: &Stats,
        opening: Duration,
        elapsed: Duration,
        collector: Option<(Reading, Reading)>,
        generator: (Reading, Reading),
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        let sent = Stats::get(&stats.sent);
        Self {
            mode: if cli.flood { "flood" } else { "rate" },
            rate_per_agent: (!cli.flood).then_some(cli.rate),
            agents: cli.agents,
            report_bytes: report::encoded_len(),
            streams_per_connection: cli.streams_per_connection,
            connections: cli.connections(),
            streams_opened: Stats::get(&stats.opened),
            opening_seconds: opening.as_secs_f64(),
            seconds,
            reports_sent: sent,
            reports_per_second: if seconds > 0.0 {
                sent as f64 / seconds
            } else {
                0.0
            },
            reports_acked: Stats::get(&stats.acked),
            acks: Stats::get(&stats.acks),
            reports_unacked: Stats::get(&stats.unacked),
            ack_latency: stats.latency(),
            errors: stats.errors(),
            collector: collector.map(|(before, after)| Usage::between(before, after)),
            generator: Usage::between(generator.0, generator.1),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn usage(f: &mut fmt::Formatter<'_>, who: &str, u: &Usage) -> fmt::Result {
    writeln!(
        f,
        "{who:<10} cpu {:.2} s ({:.0} % of a core), rss {:.1} → {:.1} MiB (peak {:.1} MiB)",
        u.cpu_seconds,
        u.cpu_percent,
        mib(u.rss_before_bytes),
        mib(u.rss_after_bytes),
        mib(u.peak_rss_bytes)
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate_per_agent {
            Some(rate) => format!("{rate} report/s per agent"),
            None => "flood".to_owned(),
        };
        writeln!(
            f,
            "run        {} agents, {mode}, {} streams per connection ({} connections), {}-byte reports",
            self.agents, self.streams_per_connection, self.connections, self.report_bytes
        )?;
        writeln!(
            f,
            "streams    {} open after {:.1} s",
            self.streams_opened, self.opening_seconds
        )?;
        writeln!(
            f,
            "reports    {} sent in {:.1} s: {:.0}/s; {} acked ({} acks), {} unacked",
            self.reports_sent,
            self.seconds,
            self.reports_per_second,
            self.reports_acked,
            self.acks,
            self.reports_unacked
        )?;
        let l = &self.ack_latency;
        writeln!(
            f,
            "ack        p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} reports)",
            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        )?;
        if self.errors.is_empty() {
            writeln!(f, "errors     none")?;
        }
        for (kind, n) in &self.errors {
            writeln!(f, "errors     {n} × {kind}")?;
        }
        if let Some(c) = &self.collector {
            usage(f, "collector", c)?;
        }
        usage(f, "generator", &self.generator)
    }
}
