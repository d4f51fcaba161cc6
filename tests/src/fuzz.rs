//! One function per fuzz target: what `fuzz/fuzz_targets/*.rs` feed with libFuzzer's
//! inputs on nightly and what `tests/fuzz_corpus.rs` replays from `fuzz/corpus/` on
//! stable, so both exercise the same code.
//!
//! Each function takes raw bytes, hands them to the parser as the daemon would, and
//! returns the parser's typed error when the input is refused. A panic is the bug; so is
//! a broken invariant of an accepted input, which these functions assert.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use rally_agent::source::{access_log, apache, nginx, php_fpm, prometheus};
use rally_collector::ingest::validate;
use rally_proto::v1;

/// What every fuzz target's function is.
pub type Target = fn(&[u8]) -> Result<(), Rejected>;

/// The fuzz targets, each with its corpus directory `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("agent_config", agent_config),
    ("collector_config", collector_config),
    ("report", report),
    ("access_log", access_log),
    ("status_pages", status_pages),
];

/// Why an input was refused: the typed error of the parser that refused it.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// Text input (a configuration, a log format) that is not UTF-8.
    #[error("not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// `agent.toml` or `collector.toml` refused, with its file, line and key.
    #[error(transparent)]
    Config(#[from] rally_daemon::config_file::ConfigError),
    /// Bytes that are no `rally.v1.AgentMessage`.
    #[error("not an AgentMessage: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An `AgentMessage` without a `Hello` or a `Report`.
    #[error("an AgentMessage with nothing in it")]
    Empty,
    /// A `Hello` or `Report` the collector's validation refused.
    #[error(transparent)]
    Invalid(#[from] validate::Invalid),
    /// A log format that does not compile.
    #[error("log format: {0}")]
    LogFormat(String),
    /// A status page input whose first line names no parser.
    #[error("unknown status page kind `{0}` (nginx, apache, php-fpm, prometheus METRIC [k=v]...)")]
    UnknownKind(String),
    /// A status page its parser refused.
    #[error("{kind} page: {message}")]
    Page {
        /// Which parser.
        kind: &'static str,
        /// Its error.
        message: String,
    },
}

/// `agent.toml` text through the agent's parser and checks. An error must locate itself
/// inside the text.
pub fn agent_config(data: &[u8]) -> Result<(), Rejected> {
    let text = std::str::from_utf8(data)?;
    rally_agent::config::parse_config(text, Path::new("agent.toml"))
        .map(drop)
        .map_err(|e| located(text, e))
}

/// `collector.toml` text through the collector's parser and checks. An error must
/// locate itself inside the text.
pub fn collector_config(data: &[u8]) -> Result<(), Rejected> {
    let text = std::str::from_utf8(data)?;
    rally_collector::config::Config::from_toml(text, Path::new("collector.toml"))
        .map(drop)
        .map_err(|e| located(text, e))
}

/// Checks that a configuration error's line is one of the text's (or just past its end,
/// where a TOML parser reports an unterminated value).
fn located(text: &str, e: rally_daemon::config_file::ConfigError) -> Rejected {
    if let rally_daemon::config_file::ConfigError::Invalid {
        line: Some(line), ..
    } = &e
    {
        let lines = text.lines().count() + 1;
        assert!(
            (1..=lines).contains(line),
            "error at line {line} of a {lines}-line text: {e}"
        );
    }
    assert!(!e.to_string().is_empty(), "an error with no message");
    Rejected::Config(e)
}

/// A gRPC `AgentMessage` as the collector's ingest decodes it, then its `Hello` or
/// `Report` through the collector's validation.
pub fn report(data: &[u8]) -> Result<(), Rejected> {
    match v1::AgentMessage::decode(data)?.kind {
        Some(v1::agent_message::Kind::Hello(hello)) => validate::hello(hello).map(drop)?,
        Some(v1::agent_message::Kind::Report(report)) => validate::report(report).map(drop)?,
        None => return Err(Rejected::Empty),
    }
    Ok(())
}

/// An access log: the first line is the log format (`combined`, nginx `$variables` or
/// Apache `%` directives), every further line a logged request, tallied as the agent's
/// access-log source does.
pub fn access_log(data: &[u8]) -> Result<(), Rejected> {
    let (format, log) = split_first_line(data);
    let format = access_log::LogFormat::compile(std::str::from_utf8(format)?)
        .map_err(Rejected::LogFormat)?;
    let mut tally = access_log::Tally::default();
    let mut lines = 0;
    for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        // As the tailer hands lines over: without the CR, invalid UTF-8 unparsed.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        tally.add(&format, std::str::from_utf8(line).unwrap_or(""));
        lines += 1;
    }
    assert_eq!(tally.lines, lines, "every line is counted once");
    let classified: u64 = tally.classes.iter().sum();
    assert!(classified + tally.unparsed <= tally.lines);
    if let Some(q) = tally.quantiles() {
        assert!(q.count <= tally.lines - tally.unparsed);
        assert!(
            0.0 < q.p50_seconds && q.p50_seconds <= q.p95_seconds && q.p95_seconds <= q.p99_seconds,
            "quantiles out of order: {q:?}"
        );
    }
    Ok(())
}

/// A web server's status page: the first line names the parser (`nginx`, `apache`,
/// `php-fpm`, or `prometheus METRIC [label=value]...`), the rest is the page's body.
pub fn status_pages(data: &[u8]) -> Result<(), Rejected> {
    let (kind, body) = split_first_line(data);
    let kind = String::from_utf8_lossy(kind);
    let mut words = kind.split_whitespace();
    let page = |kind: &'static str| move |message: String| Rejected::Page { kind, message };
    // The agent reads every page as lossy UTF-8 but php-fpm's, which is JSON bytes.
    let text = String::from_utf8_lossy(body);
    match words.next() {
        Some("nginx") => nginx::parse(&text).map(drop).map_err(page("nginx")),
        Some("apache") => apache::parse(&text).map(drop).map_err(page("apache")),
        Some("php-fpm") => php_fpm::parse(body).map(drop).map_err(page("php-fpm")),
        Some("prometheus") => {
            let metric = words.next().unwrap_or_default();
            // The agent's config refuses any other metric name.
            if !prometheus::is_metric_name(metric) {
                return Err(Rejected::UnknownKind(kind.into_owned()));
            }
            let matchers: BTreeMap<String, String> = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let sum = prometheus::sum(&text, metric, &matchers).map_err(page("prometheus"))?;
            assert!(
                sum.is_none_or(|s| s >= 0.0 && !s.is_nan()),
                "a negative or NaN sum: {sum:?}"
            );
            Ok(())
        }
        _ => Err(Rejected::UnknownKind(kind.into_owned())),
    }
}

/// The first line of `data` (without its newline) and the rest.
fn split_first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
