//! Web-server request sources: one module per kind, each a parser of what the server
//! publishes, and the [`Sources`] that read them all at every sample.
//!
//! - [`nginx`]: `stub_status`; [`apache`]: `mod_status ?auto`; [`php_fpm`]: the pool's
//!   `?json` status; [`prometheus`]: one counter of a text endpoint, summed over the
//!   series its matchers select — all read over [`http`] (bounded in time and size).
//! - [`access_log`]: the log format and the per-interval tally; [`tail`]: following the
//!   file across rotation.
//! - [`rate`]: rates from counters, with resets.
//!
//! Every source is read concurrently, each within its own timeout, and a source that
//! fails is reported down (and counted) while the others go on. Rates cover the time
//! between a source's two last good readings, so a slow or failed reading never
//! stretches or squeezes another source's rate.

pub mod access_log;
pub mod apache;
pub mod http;
pub mod nginx;
pub mod php_fpm;
pub mod prometheus;
pub mod rate;
pub mod tail;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use access_log::{LogFormat, Quantiles, Tally};
use http::Endpoint;
use rate::{Counter, Delta, Reset};
use tail::Tailer;

/// The default time a status endpoint has to answer, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The default largest status page read (a Prometheus endpoint can be large).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// At most this many sources per agent (each is a label value on the collector).
pub const MAX_SOURCES: usize = 32;

/// What a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// nginx `stub_status`.
    Nginx,
    /// Apache `mod_status` (`?auto`).
    Apache,
    /// php-fpm pool status (`?json`).
    PhpFpm,
    /// An access log, tailed.
    AccessLog,
    /// A counter of a Prometheus text endpoint.
    Prometheus,
}

impl Kind {
    /// The name in the config and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Apache => "apache",
            Kind::PhpFpm => "php_fpm",
            Kind::AccessLog => "access_log",
            Kind::Prometheus => "prometheus",
        }
    }

    fn is_http(self) -> bool {
        !matches!(self, Kind::AccessLog)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `[[sources]]` table of `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A unique name (the `source` label on the collector): `[a-z0-9_-]`, 1..=64.
    pub name: String,
    /// `nginx`, `apache`, `php_fpm`, `access_log` or `prometheus`.
    pub kind: Kind,
    /// The status endpoint (`http://127.0.0.1/nginx_status`); every kind but `access_log`.
    pub url: Option<String>,
    /// The log file (`access_log` only).
    pub path: Option<PathBuf>,
    /// The log format (`access_log` only): `combined` (default) or a format string
    /// with nginx variables (`$status`, `$request_time`) or Apache directives (`%>s`,
    /// `%D`, `%T`); latency needs a request-time field.
    pub format: Option<String>,
    /// Read the log from its start instead of its end at agent start (`access_log`).
    #[serde(default)]
    pub from_start: bool,
    /// The counter's name (`prometheus` only), e.g. `http_requests_total`.
    pub metric: Option<String>,
    /// Labels a series must have to be summed (`prometheus` only), e.g. `{ job = "shop" }`.
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// How long a status endpoint has to answer (`"1s"`); less than the interval.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The largest status page read, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

impl SourceConfig {
    /// Checks what the types cannot: the fields each kind needs, and only those.
    pub fn validate(&self) -> Result<(), String> {
        let named = |m: String| format!("source `{}`: {m}", self.name);
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid_name {
            return Err(format!(
                "source name `{}` must be 1..=64 characters of a-z 0-9 _ -",
                self.name
            ));
        }
        let kind = self.kind;
        let only = |set: bool, key: &str, kinds: &str| {
            if set {
                Err(named(format!("`{key}` applies to {kinds} sources only")))
            } else {
                Ok(())
            }
        };
        if kind.is_http() {
            let url = self
                .url
                .as_deref()
                .ok_or_else(|| named(format!("a {kind} source needs `url`")))?;
            Endpoint::parse(url).map_err(named)?;
            if self.timeout.is_zero() {
                return Err(named("`timeout` must be more than 0".into()));
            }
            if self.max_body_bytes == 0 {
                return Err(named("`max_body_bytes` must be at least 1".into()));
            }
        } else {
            only(
                self.url.is_some(),
                "url",
                "HTTP (nginx, apache, php_fpm, prometheus)",
            )?;
        }
        if kind == Kind::AccessLog {
            if self.path.is_none() {
                return Err(named("an access_log source needs `path`".into()));
            }
            LogFormat::compile(self.format.as_deref().unwrap_or("combined")).map_err(named)?;
        } else {
            only(self.path.is_some(), "path", "access_log")?;
            only(self.format.is_some(), "format", "access_log")?;
            only(self.from_start, "from_start", "access_log")?;
        }
        if kind == Kind::Prometheus {
            let metric = self
                .metric
                .as_deref()
                .ok_or_else(|| named("a prometheus source needs `metric`".into()))?;
            let valid = metric
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && metric
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            if !valid {
                return Err(named(format!("`{metric}` is not a Prometheus metric name")));
            }
        } else {
            only(self.metric.is_some(), "metric", "prometheus")?;
            only(!self.matchers.is_empty(), "matchers", "prometheus")?;
        }
        Ok(())
    }
}

/// Checks a list of sources: each valid, names unique, timeouts shorter than `interval`.
pub fn validate_all(sources: &[SourceConfig], interval: Duration) -> Result<(), String> {
    if sources.len() > MAX_SOURCES {
        return Err(format!("{} sources, at most {MAX_SOURCES}", sources.len()));
    }
    let mut names = BTreeSet::new();
    for source in sources {
        source.validate()?;
        if !names.insert(source.name.as_str()) {
            return Err(format!("two sources are named `{}`", source.name));
        }
        if source.kind.is_http() && source.timeout >= interval {
            return Err(format!(
                "source `{}`: `timeout` must be shorter than the interval",
                source.name
            ));
        }
    }
    Ok(())
}

/// Requests by HTTP status class during an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StatusClasses {
    /// 1xx.
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirection: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx.
    pub server_error: u64,
}

/// nginx gauges.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NginxGauges {
    /// Open client connections.
    pub active: u64,
    /// Reading request headers.
    pub reading: u64,
    /// Writing responses.
    pub writing: u64,
    /// Idle keep-alive connections.
    pub waiting: u64,
    /// Accepted connections per second over the interval.
    pub accepted_per_second: Option<f64>,
    /// Handled connections per second over the interval.
    pub handled_per_second: Option<f64>,
}

/// Apache gauges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApacheGauges {
    /// Workers serving a request.
    pub busy_workers: u64,
    /// Idle workers.
    pub idle_workers: u64,
    /// Scoreboard slots by state.
    pub scoreboard: BTreeMap<&'static str, u32>,
}

/// php-fpm pool gauges, and its counters over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhpFpmGauges {
    /// Requests waiting for a free worker.
    pub listen_queue: u64,
    /// The longest listen queue since start.
    pub max_listen_queue: u64,
    /// The socket's listen queue size.
    pub listen_queue_len: u64,
    /// Idle workers.
    pub idle_processes: u64,
    /// Busy workers.
    pub active_processes: u64,
    /// All workers.
    pub total_processes: u64,
    /// The most busy workers at once since start.
    pub max_active_processes: u64,
    /// Times `pm.max_children` was hit during the interval.
    pub max_children_reached: u64,
    /// Slow requests during the interval.
    pub slow_requests: u64,
}

/// One source's reading: the agent's domain type, converted at the transport edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceSample {
    /// The configured name.
    pub name: String,
    /// What it reads.
    pub kind: Kind,
    /// Whether the reading succeeded.
    pub up: bool,
    /// Why not, when down.
    pub error: Option<String>,
    /// Failed readings since the agent started.
    pub down_total: u64,
    /// The interval the counts cover, in milliseconds (0: no rate this time).
    pub interval_ms: u32,
    /// Requests during the interval.
    pub requests: u64,
    /// Requests per second over the interval.
    pub requests_per_second: Option<f64>,
    /// Requests by status class (access logs).
    pub statuses: Option<StatusClasses>,
    /// Latency quantiles (access logs with a request time).
    pub latency: Option<Quantiles>,
    /// nginx gauges.
    pub nginx: Option<NginxGauges>,
    /// Apache gauges.
    pub apache: Option<ApacheGauges>,
    /// php-fpm gauges.
    pub php_fpm: Option<PhpFpmGauges>,
}

impl SourceSample {
    fn new(name: &str, kind: Kind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            up: true,
            error: None,
            down_total: 0,
            interval_ms: 0,
            requests: 0,
            requests_per_second: None,
            statuses: None,
            latency: None,
            nginx: None,
            apache: None,
            php_fpm: None,
        }
    }

    fn set_delta(&mut self, delta: Option<Delta>) {
        if let Some(delta) = delta {
            self.interval_ms = u32::try_from(delta.interval.as_millis()).unwrap_or(u32::MAX);
            self.requests = delta.count;
            self.requests_per_second = delta.per_second();
        }
    }
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The status endpoint did not answer well.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The page is not what this kind of source publishes.
    #[error("{0}")]
    Parse(String),
    /// The log file could not be read.
    #[error("{path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The log file does not exist (yet, or any more).
    #[error("{0}: no such file")]
    NoLog(PathBuf),
}

/// How a source is read, with its counters' previous readings.
enum Reader {
    Nginx {
        endpoint: Endpoint,
        requests: Counter,
        accepts: Counter,
        handled: Counter,
    },
    Apache {
        endpoint: Endpoint,
        accesses: Counter,
    },
    PhpFpm {
        endpoint: Endpoint,
        accepted: Counter,
        max_children: Counter,
        slow: Counter,
    },
    Prometheus {
        endpoint: Endpoint,
        metric: String,
        matchers: BTreeMap<String, String>,
        counter: Counter,
    },
    AccessLog {
        path: PathBuf,
        tailer: Box<Tailer>,
        format: LogFormat,
        previous: Option<Instant>,
    },
}

struct Source {
    name: String,
    kind: Kind,
    timeout: Duration,
    max_body: usize,
    reader: Reader,
    down_total: u64,
    failing: bool,
}

/// Every configured source, read together.
pub struct Sources {
    sources: Vec<Source>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.sources.iter().map(|s| (&s.name, s.kind)))
            .finish()
    }
}

impl Sources {
    /// The sources of a validated configuration.
    pub fn new(configs: &[SourceConfig]) -> Result<Self, String> {
        let sources = configs
            .iter()
            .map(|c| {
                c.validate()?;
                let endpoint = || Endpoint::parse(c.url.as_deref().unwrap_or_default());
                let reader = match c.kind {
                    Kind::Nginx => Reader::Nginx {
                        endpoint: endpoint()?,
                        requests: Counter::default(),
                        accepts: Counter::default(),
                        handled: Counter::default(),
                    },
                    Kind::Apache => Reader::Apache {
                        endpoint: endpoint()?,
                        accesses: Counter::default(),
                    },
                    Kind::PhpFpm => Reader::PhpFpm {
                        endpoint: endpoint()?,
                        accepted: Counter::default(),
                        max_children: Counter::default(),
                        slow: Counter::default(),
                    },
                    Kind::Prometheus => Reader::Prometheus {
                        endpoint: endpoint()?,
                        metric: c.metric.clone().unwrap_or_default(),
                        matchers: c.matchers.clone(),
                        counter: Counter::default(),
                    },
                    Kind::AccessLog => {
                        let path = c.path.clone().unwrap_or_default();
                        Reader::AccessLog {
                            tailer: Box::new(Tailer::new(&path, c.from_start)),
                            path,
                            format: LogFormat::compile(c.format.as_deref().unwrap_or("combined"))?,
                            previous: None,
                        }
                    }
                };
                Ok(Source {
                    name: c.name.clone(),
                    kind: c.kind,
                    timeout: c.timeout,
                    max_body: c.max_body_bytes,
                    reader,
                    down_total: 0,
                    failing: false,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { sources })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Reads every source, concurrently; one entry per source, in configuration order.
    pub async fn sample(&mut self) -> Vec<SourceSample> {
        if self.sources.is_empty() {
            return Vec::new();
        }
        futures_util::future::join_all(self.sources.iter_mut().map(Source::sample)).await
    }
}

impl Source {
    async fn sample(&mut self) -> SourceSample {
        let mut sample = SourceSample::new(&self.name, self.kind);
        let result = self.read(&mut sample).await;
        match result {
            Ok(()) => {
                if self.failing {
                    tracing::info!(source = %self.name, kind = %self.kind, down_total = self.down_total, "source is up again");
                    self.failing = false;
                }
            }
            Err(e) => {
                self.down_total += 1;
                if !self.failing {
                    tracing::warn!(source = %self.name, kind = %self.kind, error = %e, "source is down; the other sources go on");
                    self.failing = true;
                }
                sample = SourceSample::new(&self.name, self.kind);
                sample.up = false;
                sample.error = Some(e.to_string());
            }
        }
        sample.down_total = self.down_total;
        sample
    }

    async fn read(&mut self, sample: &mut SourceSample) -> Result<(), SourceError> {
        let (timeout, max_body) = (self.timeout, self.max_body);
        match &mut self.reader {
            Reader::Nginx {
                endpoint,
                requests,
                accepts,
                handled,
            } => {
                let now = Instant::now();
                let body = endpoint.get(timeout, max_body).await?;
                let status =
                    nginx::parse(&String::from_utf8_lossy(&body)).map_err(SourceError::Parse)?;
                // nginx keeps its counters across a reload; they restart from zero only
                // with the server.
                sample.set_delta(own_scrape(requests.update(
                    status.requests,
                    now,
                    Reset::FromZero,
                )));
                sample.nginx = Some(NginxGauges {
                    active: status.active,
                    reading: status.reading,
                    writing: status.writing,
                    waiting: status.waiting,
                    accepted_per_second: accepts
                        .update(status.accepts, now, Reset::FromZero)
                        .and_then(|d| d.per_second()),
                    handled_per_second: handled
                        .update(status.handled, now, Reset::FromZero)
                        .and_then(|d| d.per_second()),
                });
            }
            Reader::Apache { endpoint, accesses } => {
                let now = Instant::now();
                let body = endpoint.get(timeout, max_body).await?;
                let status =
                    apache::parse(&String::from_utf8_lossy(&body)).map_err(SourceError::Parse)?;
                let reset = restart_reset(status.uptime_seconds, accesses.since(now));
                sample.set_delta(own_scrape(accesses.update(
                    status.total_accesses,
                    now,
                    reset,
                )));
                sample.apache = Some(ApacheGauges {
                    busy_workers: status.busy_workers,
                    idle_workers: status.idle_workers,
                    scoreboard: status.scoreboard,
                });
            }
            Reader::PhpFpm {
                endpoint,
                accepted,
                max_children,
                slow,
            } => {
                let now = Instant::now();
                let body = endpoint.get(timeout, max_body).await?;
                let status = php_fpm::parse(&body).map_err(SourceError::Parse)?;
                let reset = restart_reset(Some(status.start_since), accepted.since(now));
                sample.set_delta(own_scrape(accepted.update(
                    status.accepted_conn,
                    now,
                    reset,
                )));
                let count = |d: Option<Delta>| d.map_or(0, |d| d.count);
                sample.php_fpm = Some(PhpFpmGauges {
                    listen_queue: status.listen_queue,
                    max_listen_queue: status.max_listen_queue,
                    listen_queue_len: status.listen_queue_len,
                    idle_processes: status.idle_processes,
                    active_processes: status.active_processes,
                    total_processes: status.total_processes,
                    max_active_processes: status.max_active_processes,
                    max_children_reached: count(max_children.update(
                        status.max_children_reached,
                        now,
                        reset,
                    )),
                    slow_requests: count(slow.update(status.slow_requests, now, reset)),
                });
            }
            Reader::Prometheus {
                endpoint,
                metric,
                matchers,
                counter,
            } => {
                let now = Instant::now();
                let body = endpoint.get(timeout, max_body).await?;
                let total = prometheus::sum(&String::from_utf8_lossy(&body), metric, matchers)
                    .map_err(SourceError::Parse)?
                    .ok_or_else(|| {
                        SourceError::Parse(format!("no series of `{metric}` matches"))
                    })?;
                // Prometheus counters count from zero after a restart (its rate() rule).
                sample.set_delta(counter.update(total.round() as u64, now, Reset::FromZero));
            }
            Reader::AccessLog {
                path,
                tailer,
                format,
                previous,
            } => {
                let now = Instant::now();
                let mut tally = Tally::default();
                let poll = tailer
                    .poll(now, &mut |line: &[u8]| {
                        tally.add(format, std::str::from_utf8(line).unwrap_or(""));
                    })
                    .map_err(|source| SourceError::Log {
                        path: path.clone(),
                        source,
                    })?;
                if !poll.open {
                    return Err(SourceError::NoLog(path.clone()));
                }
                sample.statuses = Some(StatusClasses {
                    informational: tally.classes[0],
                    success: tally.classes[1],
                    redirection: tally.classes[2],
                    client_error: tally.classes[3],
                    server_error: tally.classes[4],
                });
                sample.latency = tally.quantiles();
                sample.requests = tally.lines;
                if let Some(at) = previous.replace(now) {
                    sample.set_delta(Some(Delta {
                        count: tally.lines,
                        interval: now.duration_since(at),
                    }));
                }
            }
        }
        Ok(())
    }
}

/// The agent's own scrape is one of the requests a status page counts between two
/// readings (nginx counts the request being answered, Apache and php-fpm the previous
/// one): the server's own traffic is the rest.
fn own_scrape(delta: Option<Delta>) -> Option<Delta> {
    delta.map(|d| Delta {
        count: d.count.saturating_sub(1),
        ..d
    })
}

/// A counter that went backwards counts from zero if the server says it restarted
/// since the previous reading; otherwise the decrease is not a restart.
fn restart_reset(uptime_seconds: Option<u64>, since_previous: Option<Duration>) -> Reset {
    match (uptime_seconds, since_previous) {
        (Some(up), Some(since)) if Duration::from_secs(up) <= since + Duration::from_secs(1) => {
            Reset::FromZero
        }
        (None, _) => Reset::FromZero,
        _ => Reset::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Result<Vec<SourceConfig>, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            sources: Vec<SourceConfig>,
        }
        let w: Wrapper = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        validate_all(&w.sources, Duration::from_secs(5))?;
        Ok(w.sources)
    }

    #[test]
    fn a_full_set_of_sources_parses() {
        let sources = config(
            r#"
[[sources]]
name = "nginx"
kind = "nginx"
url = "http://127.0.0.1/nginx_status"

[[sources]]
name = "apache"
kind = "apache"
url = "http://127.0.0.1:8080/server-status?auto"
timeout = "500ms"

[[sources]]
name = "fpm"
kind = "php_fpm"
url = "http://127.0.0.1/fpm-status?json"

[[sources]]
name = "shop-log"
kind = "access_log"
path = "/var/log/nginx/access.log"
format = '$remote_addr [$time_local] "$request" $status $request_time'

[[sources]]
name = "app"
kind = "prometheus"
url = "http://127.0.0.1:9100/metrics"
metric = "http_requests_total"
matchers = { job = "shop" }
max_body_bytes = 4194304
"#,
        )
        .unwrap();
        assert_eq!(sources.len(), 5);
        assert_eq!(sources[1].timeout, Duration::from_millis(500));
        assert_eq!(sources[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            sources[4].matchers.get("job").map(String::as_str),
            Some("shop")
        );
        assert!(Sources::new(&sources).is_ok());
    }

    #[test]
    fn wrong_or_missing_fields_are_named() {
        let err = |t: &str| config(t).unwrap_err();
        assert!(err("[[sources]]\nname = \"a\"\nkind = \"nginx\"\n").contains("needs `url`"));
        assert!(err("[[sources]]\nname = \"a\"\nkind = \"access_log\"\n").contains("needs `path`"));
        assert!(
            err(
                "[[sources]]\nname = \"a\"\nkind = \"nginx\"\nurl = \"http://x/\"\npath = \"/a\"\n"
            )
            .contains("`path` applies")
        );
        assert!(
            err("[[sources]]\nname = \"a\"\nkind = \"prometheus\"\nurl = \"http://x/\"\n")
                .contains("needs `metric`")
        );
        assert!(
            err("[[sources]]\nname = \"A b\"\nkind = \"nginx\"\nurl = \"http://x/\"\n")
                .contains("a-z")
        );
        assert!(
            err("[[sources]]\nname = \"a\"\nkind = \"nginx\"\nurl = \"https://x/\"\n")
                .contains("http://")
        );
        assert!(err("[[sources]]\nname = \"a\"\nkind = \"nginx\"\nurl = \"http://x/\"\ntimeout = \"10s\"\n").contains("shorter than the interval"));
        assert!(
            err("[[sources]]\nname = \"a\"\nkind = \"squid\"\nurl = \"http://x/\"\n")
                .contains("unknown variant")
        );
        assert!(err("[[sources]]\nname = \"a\"\nkind = \"access_log\"\npath = \"/a\"\nformat = \"$remote_addr\"\n").contains("no status field"));
        let twice = "[[sources]]\nname = \"a\"\nkind = \"nginx\"\nurl = \"http://x/\"\n";
        assert!(err(&format!("{twice}{twice}")).contains("two sources are named `a`"));
    }

    #[test]
    fn a_restart_is_recognised_by_the_server_uptime() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(restart_reset(Some(3), five), Reset::FromZero);
        assert_eq!(restart_reset(Some(3600), five), Reset::Unknown);
        assert_eq!(restart_reset(None, five), Reset::FromZero);
        assert_eq!(restart_reset(Some(3), None), Reset::Unknown);
    }

    #[test]
    fn the_own_scrape_is_taken_off_never_below_zero() {
        let d = |count| {
            Some(Delta {
                count,
                interval: Duration::from_secs(1),
            })
        };
        assert_eq!(own_scrape(d(101)).unwrap().count, 100);
        assert_eq!(own_scrape(d(0)).unwrap().count, 0);
        assert_eq!(own_scrape(None), None);
    }

    #[tokio::test]
    async fn a_down_source_is_reported_and_counted_while_others_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        std::fs::write(&log, "").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let configs = config(&format!(
            "[[sources]]\nname = \"down\"\nkind = \"nginx\"\nurl = \"http://127.0.0.1:{port}/\"\n\n[[sources]]\nname = \"log\"\nkind = \"access_log\"\npath = \"{}\"\nformat = \"$status $request_time\"\n",
            log.display()
        ))
        .unwrap();
        let mut sources = Sources::new(&configs).unwrap();
        let first = sources.sample().await;
        assert!(!first[0].up && first[0].error.is_some());
        assert_eq!(first[0].down_total, 1);
        assert!(first[1].up);
        assert_eq!(first[1].requests_per_second, None, "first reading: no rate");
        std::fs::write(&log, "200 0.010\n503 0.500\n404 0.020\n").unwrap();
        let second = sources.sample().await;
        assert_eq!(second[0].down_total, 2);
        let s = &second[1];
        assert_eq!(s.requests, 3);
        assert!(s.requests_per_second.unwrap() > 0.0);
        let classes = s.statuses.unwrap();
        assert_eq!(
            (classes.success, classes.client_error, classes.server_error),
            (1, 1, 1)
        );
        assert!(s.latency.unwrap().p99_seconds >= 0.5);
    }
}
