//! The figures of one run, printed as text or serialized as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::cli::Cli;
use crate::report;
use crate::slow::Slow;
use crate::stats::{Latency, Reconnect, Stats};
use crate::usage::{Reading, Usage};

/// The warm-up's part of a run.
#[derive(Debug, Serialize)]
pub struct WarmUp {
    /// How long it lasted.
    pub seconds: f64,
    /// Ack latency of the reports sent during it.
    pub ack_latency: Latency,
}

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
    /// Ack latency: from sending a report to the ack that covers it (reports sent
    /// after the warm-up).
    pub ack_latency: Latency,
    /// With `--warm-up`: the seconds it lasted and the ack latency of the reports
    /// sent during it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<WarmUp>,
    /// Acks slower than `--slow`, by the second of the run they arrived in (the
    /// warm-up's included).
    pub slow: Slow,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Lost streams and how they came back (`--reconnect`).
    pub reconnects: Option<Reconnects>,
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
            warm_up: (!cli.warm_up.is_zero()).then(|| WarmUp {
                seconds: cli.warm_up.as_secs_f64(),
                ack_latency: stats.warm_up_latency(),
            }),
            slow: stats.slow.summary(),
            errors: stats.errors(),
            reconnects: cli.reconnect.then(|| Reconnects::new(stats)),
            collector: collector.map(|(before, after)| Usage::between(before, after)),
            generator: Usage::between(generator.0, generator.1),
        }
    }
}

/// Lost streams reopened with `--reconnect`, and how the reopenings spread out in
/// time: a fleet that lost its collector at once should not come back at once.
#[derive(Debug, Serialize)]
pub struct Reconnects {
    /// Streams lost while the run went on.
    pub streams_lost: u64,
    /// Attempts to reopen one, successful or not.
    pub attempts: u64,
    /// Streams reopened.
    pub reopened: u64,
    /// Un-acknowledged reports sent again on reopened streams.
    pub reports_resent: u64,
    /// When each stream was reopened, seconds after the first one: p10, p50, p90, max.
    pub spread_seconds: Percentiles,
    /// How long each stream was down, in seconds.
    pub down_seconds: Percentiles,
    /// When each stream was reopened, Unix time in seconds, in order.
    pub reopened_at_unix_seconds: Vec<f64>,
}

/// p10, p50, p90 and the maximum of some figures (0 when there are none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Of `values`, nearest-rank.
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1));
            values.get(rank - 1).copied().unwrap_or(0.0)
        };
        Self {
            p10: at(0.1),
            p50: at(0.5),
            p90: at(0.9),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

impl Reconnects {
    fn new(stats: &Stats) -> Self {
        let reconnects = stats.reconnects();
        let unix = |r: &Reconnect| {
            r.at.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let mut at: Vec<f64> = reconnects.iter().map(unix).collect();
        at.sort_by(f64::total_cmp);
        let first = at.first().copied().unwrap_or(0.0);
        Self {
            streams_lost: Stats::get(&stats.lost_streams),
            attempts: Stats::get(&stats.reconnect_attempts),
            reopened: reconnects.len() as u64,
            reports_resent: Stats::get(&stats.resent),
            spread_seconds: Percentiles::of(at.iter().map(|t| t - first).collect()),
            down_seconds: Percentiles::of(
                reconnects.iter().map(|r| r.after.as_secs_f64()).collect(),
            ),
            reopened_at_unix_seconds: at,
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

/// How many seconds with slow acks the text summary names.
const WORST_SECONDS: usize = 5;

fn slow(f: &mut fmt::Formatter<'_>, slow: &Slow) -> fmt::Result {
    if slow.acks == 0 {
        return writeln!(f, "slow       no ack over {} ms", slow.threshold_ms);
    }
    write!(
        f,
        "slow       {} acks over {} ms, in {} s of the run",
        slow.acks,
        slow.threshold_ms,
        slow.seconds.len()
    )?;
    // Some second has a slow ack, or `acks` would be 0.
    let worst: Vec<String> = slow
        .worst(WORST_SECONDS)
        .iter()
        .map(|s| format!("{} s: {} (max {:.0} ms)", s.second, s.acks, s.max_ms))
        .collect();
    writeln!(f, "; the most at {}", worst.join(", "))
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
        if let Some(w) = &self.warm_up {
            let l = &w.ack_latency;
            writeln!(
                f,
                "warm-up    first {:.1} s, timed apart: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} reports)",
                w.seconds, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
            )?;
        }
        slow(f, &self.slow)?;
        if self.errors.is_empty() {
            writeln!(f, "errors     none")?;
        }
        for (kind, n) in &self.errors {
            writeln!(f, "errors     {n} × {kind}")?;
        }
        if let Some(r) = &self.reconnects {
            writeln!(
                f,
                "reconnect  {} streams lost, {} reopened after {} attempts, {} reports sent again",
                r.streams_lost, r.reopened, r.attempts, r.reports_resent
            )?;
            let (s, d) = (&r.spread_seconds, &r.down_seconds);
            writeln!(
                f,
                "reconnect  spread after the first: p10 {:.2} s, p50 {:.2} s, p90 {:.2} s, max {:.2} s; down p50 {:.2} s, max {:.2} s",
                s.p10, s.p50, s.p90, s.max, d.p50, d.max
            )?;
        }
        if let Some(c) = &self.collector {
            usage(f, "collector", c)?;
        }
        usage(f, "generator", &self.generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_zero_when_empty() {
        let p = Percentiles::of((1..=100).map(f64::from).rev().collect());
        assert_eq!(
            p,
            Percentiles {
                p10: 10.0,
                p50: 50.0,
                p90: 90.0,
                max: 100.0
            }
        );
        let none = Percentiles::of(Vec::new());
        assert_eq!(none.max, 0.0);
        assert_eq!(none.p50, 0.0);
    }
}
