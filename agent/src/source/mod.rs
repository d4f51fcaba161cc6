//! Web-server request sources: one module per kind, each with the parser of what the
//! server publishes and the `Reader` that turns its readings into a [`SourceSample`];
//! this module declares the `[[sources]]` configuration, the sample, and [`Sources`],
//! which reads them all at every sample.
//!
//! - [`nginx`]: `stub_status`; [`apache`]: `mod_status ?auto`; [`php_fpm`]: the pool's
//!   `?json` status; [`prometheus`]: one counter of a text endpoint, summed over the
//!   series its matchers select — all read over [`http`] (bounded in time and size).
//! - [`access_log`]: the log format, the per-interval tally and its reader; [`tail`]:
//!   following the file across rotation.
//! - [`rate`]: rates from counters, with resets.
//!
//! Every source is read concurrently, each within its own timeout, and a source that
//! fails is reported down (and counted) while the others go on. Rates cover the time
//! between a source's two last good readings, so a slow or failed reading never
//! stretches or squeezes another source's rate.
//!
//! Two sources may see the same requests (nginx's `stub_status` and the same nginx's
//! access log): the second says `counted_by = "nginx"`, which travels with its readings
//! so that the collector, which sums a VM's sources, counts those requests once.

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
use std::time::Duration;

use rally_daemon::config_file::Invalid;
use serde::{Deserialize, Serialize};

use access_log::{LogFormat, Quantiles};
use http::{Endpoint, StatusPage};
use rate::Delta;

pub use apache::ApacheGauges;
pub use nginx::NginxGauges;
pub use php_fpm::PhpFpmGauges;

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
    /// Another source that already counts this one's requests (the same traffic, or a
    /// part of it): this source keeps its own series but is left out of the VM's
    /// request rate, so one server is not counted twice. That source must count for
    /// itself (no `counted_by` of its own).
    pub counted_by: Option<String>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

impl SourceConfig {
    /// Checks what the types cannot: the fields each kind needs, and only those. `key`
    /// is this table's key path (`sources[2]`), which errors extend (`sources[2].url`).
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        let at = |field: &str| format!("{key}.{field}");
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid_name {
            return Err(Invalid::new(
                at("name"),
                format!(
                    "source name `{}` must be 1..=64 characters of a-z 0-9 _ -",
                    self.name
                ),
            ));
        }
        let kind = self.kind;
        let only = |set: bool, field: &str, kinds: &str| {
            if set {
                Err(Invalid::new(
                    at(field),
                    format!("`{field}` applies to {kinds} sources only"),
                ))
            } else {
                Ok(())
            }
        };
        if kind.is_http() {
            let url = self
                .url
                .as_deref()
                .ok_or_else(|| Invalid::new(key, format!("a {kind} source needs `url`")))?;
            Endpoint::parse(url).map_err(|m| Invalid::new(at("url"), m))?;
            if self.timeout.is_zero() {
                return Err(Invalid::new(at("timeout"), "must be more than 0"));
            }
            if self.max_body_bytes == 0 {
                return Err(Invalid::new(at("max_body_bytes"), "must be at least 1"));
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
                return Err(Invalid::new(key, "an access_log source needs `path`"));
            }
            self.log_format()
                .map_err(|m| Invalid::new(at("format"), m))?;
        } else {
            only(self.path.is_some(), "path", "access_log")?;
            only(self.format.is_some(), "format", "access_log")?;
            only(self.from_start, "from_start", "access_log")?;
        }
        if kind == Kind::Prometheus {
            let metric = self
                .metric
                .as_deref()
                .ok_or_else(|| Invalid::new(key, "a prometheus source needs `metric`"))?;
            if !prometheus::is_metric_name(metric) {
                return Err(Invalid::new(
                    at("metric"),
                    format!("`{metric}` is not a Prometheus metric name"),
                ));
            }
        } else {
            only(self.metric.is_some(), "metric", "prometheus")?;
            only(!self.matchers.is_empty(), "matchers", "prometheus")?;
        }
        Ok(())
    }

    /// The access log's format, `combined` when not set.
    fn log_format(&self) -> Result<LogFormat, String> {
        LogFormat::compile(self.format.as_deref().unwrap_or("combined"))
    }

    /// The status page of an HTTP kind.
    fn status_page(&self) -> Result<StatusPage, String> {
        let endpoint = Endpoint::parse(self.url.as_deref().unwrap_or_default())?;
        Ok(StatusPage::new(endpoint, self.timeout, self.max_body_bytes))
    }
}

/// Checks the `sources` list: each valid, names unique, timeouts shorter than
/// `interval`, each `counted_by` naming another source that counts for itself; errors
/// name the key path (`sources[2].timeout`).
pub fn validate_all(sources: &[SourceConfig], interval: Duration) -> Result<(), Invalid> {
    if sources.len() > MAX_SOURCES {
        return Err(Invalid::new(
            "sources",
            format!("{} sources, at most {MAX_SOURCES}", sources.len()),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, source) in sources.iter().enumerate() {
        let key = format!("sources[{i}]");
        source.validate(&key)?;
        if !names.insert(source.name.as_str()) {
            return Err(Invalid::new(
                format!("{key}.name"),
                format!("two sources are named `{}`", source.name),
            ));
        }
        if source.kind.is_http() && source.timeout >= interval {
            return Err(Invalid::new(
                format!("{key}.timeout"),
                "must be shorter than the interval",
            ));
        }
    }
    check_counted_by_all(sources)
}

/// Checks every `counted_by` of the list; errors name `sources[i].counted_by`.
fn check_counted_by_all(sources: &[SourceConfig]) -> Result<(), Invalid> {
    for (i, source) in sources.iter().enumerate() {
        if let Some(counter) = &source.counted_by {
            check_counted_by(&source.name, counter, sources)
                .map_err(|m| Invalid::new(format!("sources[{i}].counted_by"), m))?;
        }
    }
    Ok(())
}

/// Checks that `counter`, named by source `name`'s `counted_by`, is another source that
/// counts for itself: one level only, so there is no chain to follow and no cycle.
fn check_counted_by(name: &str, counter: &str, sources: &[SourceConfig]) -> Result<(), String> {
    if counter == name {
        return Err(format!(
            "`{name}` cannot be counted by itself; leave `counted_by` out to count it"
        ));
    }
    let Some(target) = sources.iter().find(|s| s.name == counter) else {
        let known: Vec<_> = sources
            .iter()
            .filter(|s| s.name != name)
            .map(|s| format!("`{}`", s.name))
            .collect();
        return Err(if known.is_empty() {
            format!("no source is named `{counter}` (there is no other source)")
        } else {
            format!(
                "no source is named `{counter}` (the others are {})",
                known.join(", ")
            )
        });
    };
    if let Some(further) = &target.counted_by {
        return Err(format!(
            "`{counter}` is itself counted by `{further}`: name the source that counts \
             the requests (`counted_by = \"{further}\"`)"
        ));
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

/// One source's reading: the agent's domain type, converted at the transport edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceSample {
    /// The configured name.
    pub name: String,
    /// What it reads.
    pub kind: Kind,
    /// The source that already counts this one's requests (`counted_by`), if any.
    pub counted_by: Option<String>,
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
    fn new(name: &str, kind: Kind, counted_by: Option<&str>) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            counted_by: counted_by.map(str::to_owned),
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

/// How a source is read: its kind's reader, with that kind's previous readings.
enum Reader {
    Nginx(nginx::Reader),
    Apache(apache::Reader),
    PhpFpm(php_fpm::Reader),
    Prometheus(prometheus::Reader),
    AccessLog(access_log::Reader),
}

impl Reader {
    /// The reader of a validated source; `key` is its key path for errors.
    fn new(c: &SourceConfig, key: &str) -> Result<Self, Invalid> {
        let page = || {
            c.status_page()
                .map_err(|m| Invalid::new(format!("{key}.url"), m))
        };
        Ok(match c.kind {
            Kind::Nginx => Reader::Nginx(nginx::Reader::new(page()?)),
            Kind::Apache => Reader::Apache(apache::Reader::new(page()?)),
            Kind::PhpFpm => Reader::PhpFpm(php_fpm::Reader::new(page()?)),
            Kind::Prometheus => Reader::Prometheus(prometheus::Reader::new(
                page()?,
                c.metric.clone().unwrap_or_default(),
                c.matchers.clone(),
            )),
            Kind::AccessLog => Reader::AccessLog(access_log::Reader::new(
                c.path.clone().unwrap_or_default(),
                c.log_format()
                    .map_err(|m| Invalid::new(format!("{key}.format"), m))?,
                c.from_start,
            )),
        })
    }

    async fn read(&mut self, sample: &mut SourceSample) -> Result<(), SourceError> {
        match self {
            Reader::Nginx(r) => r.read(sample).await,
            Reader::Apache(r) => r.read(sample).await,
            Reader::PhpFpm(r) => r.read(sample).await,
            Reader::Prometheus(r) => r.read(sample).await,
            Reader::AccessLog(r) => r.read(sample).await,
        }
    }
}

struct Source {
    name: String,
    kind: Kind,
    counted_by: Option<String>,
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
    /// The sources of a configuration; errors name the key path (`sources[2].url`).
    pub fn new(configs: &[SourceConfig]) -> Result<Self, Invalid> {
        let sources = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let key = format!("sources[{i}]");
                c.validate(&key)?;
                Ok(Source {
                    name: c.name.clone(),
                    kind: c.kind,
                    counted_by: c.counted_by.clone(),
                    reader: Reader::new(c, &key)?,
                    down_total: 0,
                    failing: false,
                })
            })
            .collect::<Result<_, Invalid>>()?;
        check_counted_by_all(configs)?;
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
        let mut sample = SourceSample::new(&self.name, self.kind, self.counted_by.as_deref());
        let result = self.reader.read(&mut sample).await;
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
                sample = SourceSample::new(&self.name, self.kind, self.counted_by.as_deref());
                sample.up = false;
                sample.error = Some(e.to_string());
            }
        }
        sample.down_total = self.down_total;
        sample
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
        validate_all(&w.sources, Duration::from_secs(5)).map_err(|e| e.to_string())?;
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
        assert!(err(&format!("{twice}{twice}")).starts_with("key `sources[1].name`"));
        assert!(
            err("[[sources]]\nname = \"a\"\nkind = \"nginx\"\nurl = \"https://x/\"\n")
                .starts_with("key `sources[0].url`")
        );
    }

    const NGINX_AND_ITS_LOG: &str = "[[sources]]\nname = \"nginx\"\nkind = \"nginx\"\nurl = \"http://x/\"\n\n[[sources]]\nname = \"log\"\nkind = \"access_log\"\npath = \"/a\"\n";

    #[test]
    fn counted_by_names_another_source_that_counts_for_itself() {
        let ok = config(&format!("{NGINX_AND_ITS_LOG}counted_by = \"nginx\"\n")).unwrap();
        assert_eq!(ok[1].counted_by.as_deref(), Some("nginx"));
        assert_eq!(ok[0].counted_by, None, "unset: the source counts");
        // The source named may come after the one naming it.
        let fpm_first = "[[sources]]\nname = \"fpm\"\nkind = \"php_fpm\"\nurl = \"http://x/fpm?json\"\ncounted_by = \"nginx\"\n\n[[sources]]\nname = \"nginx\"\nkind = \"nginx\"\nurl = \"http://x/\"\n";
        assert!(config(fpm_first).is_ok());

        let err = |t: String| config(&t).unwrap_err();
        let unknown = err(format!("{NGINX_AND_ITS_LOG}counted_by = \"ngnix\"\n"));
        assert!(
            unknown.starts_with(
                "key `sources[1].counted_by`: no source is named `ngnix` (the others are `nginx`)"
            ),
            "{unknown}"
        );
        let itself = err(format!("{NGINX_AND_ITS_LOG}counted_by = \"log\"\n"));
        assert!(
            itself.starts_with("key `sources[1].counted_by`") && itself.contains("by itself"),
            "{itself}"
        );
        // A cycle (each names the other) is a chain, refused at its first link.
        let cycle = err(NGINX_AND_ITS_LOG.replace(
            "url = \"http://x/\"\n",
            "url = \"http://x/\"\ncounted_by = \"log\"\n",
        ) + "counted_by = \"nginx\"\n");
        assert!(
            cycle.starts_with("key `sources[0].counted_by`: `log` is itself counted by `nginx`"),
            "{cycle}"
        );
        let chain = err(format!(
            "{NGINX_AND_ITS_LOG}counted_by = \"nginx\"\n\n[[sources]]\nname = \"copy\"\nkind = \"access_log\"\npath = \"/b\"\ncounted_by = \"log\"\n"
        ));
        assert!(
            chain.starts_with("key `sources[2].counted_by`: `log` is itself counted by `nginx`: name the source that counts the requests (`counted_by = \"nginx\"`)"),
            "{chain}"
        );
        // The sources the agent builds check the same (they are built without the
        // interval, from tests and `sample`).
        #[derive(Deserialize)]
        struct Wrapper {
            sources: Vec<SourceConfig>,
        }
        let w: Wrapper =
            toml::from_str(&format!("{NGINX_AND_ITS_LOG}counted_by = \"apache\"\n")).unwrap();
        let e = Sources::new(&w.sources).unwrap_err().to_string();
        assert!(e.contains("sources[1].counted_by"), "{e}");
    }

    #[tokio::test]
    async fn a_source_reading_carries_its_counted_by() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        std::fs::write(&log, "").unwrap();
        let configs = config(&format!(
            "[[sources]]\nname = \"a\"\nkind = \"access_log\"\npath = \"{0}\"\n\n[[sources]]\nname = \"b\"\nkind = \"access_log\"\npath = \"{0}\"\ncounted_by = \"a\"\n",
            log.display()
        ))
        .unwrap();
        let mut sources = Sources::new(&configs).unwrap();
        let readings = sources.sample().await;
        assert_eq!(readings[0].counted_by, None);
        assert_eq!(readings[1].counted_by.as_deref(), Some("a"));
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
