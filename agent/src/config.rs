//! `agent.toml`: what the agent samples, where it reports, and how much it keeps.
//!
//! Every key has a default, so an empty file is a valid configuration. Unknown keys are
//! errors (a typo must not silently fall back to a default), and every error names the
//! file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::source::SourceConfig;

/// Where the packaged agent looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rally/agent.toml";

/// The collector address used when none is configured (SPEC: gRPC on port 9470).
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:9470";

/// The shortest sampling interval accepted, from the file or from a collector's
/// `Settings`: below it, sampling would cost more than the budget allows.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The longest sampling interval accepted: beyond it the collector marks the VM stale.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// The agent's configuration (`/etc/rally/agent.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The VM's id in the fleet; `None` uses the hostname.
    pub vm_id: Option<String>,
    /// gRPC addresses of the collectors (`http://host:port`); the agent reports to
    /// every one of them, each with its own buffer.
    pub collectors: Vec<String>,
    /// Time between two samples (`"5s"`); a collector may change it at run time.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How many un-acknowledged reports are kept per collector; when full, the oldest
    /// is dropped (720 = one hour at 5 s).
    pub buffer_reports: usize,
    /// A file holding a bearer token sent to the collectors (`authorization` header).
    pub token_file: Option<PathBuf>,
    /// Free-form labels sent in the stream's `Hello` (e.g. `role = "web"`).
    pub labels: BTreeMap<String, String>,
    /// Where `proc/` and `sys/` are read from: `/` on the VM itself, or the host's
    /// root mounted elsewhere (e.g. `/host` in a container).
    pub root: PathBuf,
    /// Web-server request sources (`[[sources]]`), read at every sample.
    pub sources: Vec<SourceConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vm_id: None,
            collectors: vec![DEFAULT_COLLECTOR.to_owned()],
            interval: Duration::from_secs(5),
            buffer_reports: 720,
            token_file: None,
            labels: BTreeMap::new(),
            root: PathBuf::from("/"),
            sources: Vec::new(),
        }
    }
}

/// A configuration that cannot be used, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration, or a value is out of range.
    #[error("{location}: {message}")]
    Invalid {
        /// File, line, column and key of the error.
        location: Location,
        /// What is wrong.
        message: String,
    },
}

/// Where in a configuration file an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or `<config>` for a configuration built in code).
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The key (dotted for nested tables), when known.
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        Ok(())
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_config(&text, path)
}

/// Parses and validates configuration text; `path` is only used in error messages.
pub fn parse_config(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, column, key) = match e.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                (
                    Some(line),
                    Some(column),
                    key_at(text, span.start, e.message()),
                )
            }
            None => (None, None, None),
        };
        ConfigError::Invalid {
            location: Location {
                path: path.to_owned(),
                line,
                column,
                key,
            },
            message: e.message().trim().to_owned(),
        }
    })?;
    config.validate().map_err(|invalid| ConfigError::Invalid {
        location: Location {
            path: path.to_owned(),
            line: line_of_key(text, invalid.key),
            column: None,
            key: Some(invalid.key.to_owned()),
        },
        message: invalid.message,
    })?;
    Ok(config)
}

/// A value that parses but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct InvalidValue {
    /// The offending key.
    pub key: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

impl Config {
    /// Checks the values that TOML types alone cannot (ranges, addresses).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let invalid = |key, message: String| Err(InvalidValue { key, message });
        if self.collectors.is_empty() {
            return invalid(
                "collectors",
                "at least one collector address is needed".into(),
            );
        }
        for address in &self.collectors {
            if let Err(e) = tonic::transport::Endpoint::from_shared(address.clone()) {
                return invalid("collectors", format!("`{address}` is not a valid URI: {e}"));
            }
            if !(address.starts_with("http://") || address.starts_with("https://")) {
                return invalid(
                    "collectors",
                    format!("`{address}` must start with http:// (e.g. http://collector:9470)"),
                );
            }
        }
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return invalid(
                "interval",
                format!(
                    "{} is outside {}..={}",
                    humantime_serde::re::humantime::format_duration(self.interval),
                    humantime_serde::re::humantime::format_duration(MIN_INTERVAL),
                    humantime_serde::re::humantime::format_duration(MAX_INTERVAL)
                ),
            );
        }
        if self.buffer_reports == 0 {
            return invalid("buffer_reports", "must be at least 1".into());
        }
        if let Err(message) = crate::source::validate_all(&self.sources, self.interval) {
            return invalid("sources", message);
        }
        if let Some(vm_id) = &self.vm_id
            && vm_id.trim().is_empty()
        {
            return invalid(
                "vm_id",
                "must not be empty (leave it out to use the hostname)".into(),
            );
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key an error points at: the name in an "unknown field" message, else the key
/// on the error's line (`key = ...`), qualified by the table it is in.
fn key_at(text: &str, offset: usize, message: &str) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let key = match message.strip_prefix("unknown field `") {
        Some(rest) => rest.split('`').next().map(str::to_owned),
        None => line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty() && !k.starts_with('[')),
    }?;
    let table = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        (l.starts_with('[') && l.ends_with(']'))
            .then(|| l.trim_matches(['[', ']']).trim().to_owned())
    });
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key,
    })
}

/// The 1-based line where a top-level `key = ...` is set, if it is.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_config(text, Path::new("/etc/rally/agent.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.collectors, vec!["http://127.0.0.1:9470".to_owned()]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.buffer_reports, 720);
        assert_eq!(c.vm_id, None);
        assert_eq!(c.root, PathBuf::from("/"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn good_file_parses_every_key() {
        let c = parse(
            r#"
vm_id = "web-1"
collectors = ["http://10.0.0.1:9470", "http://10.0.0.2:9470"]
interval = "10s"
buffer_reports = 100
token_file = "/etc/rally/agent.token"
root = "/host"

[labels]
role = "web"
zone = "waw-1"
"#,
        )
        .unwrap();
        assert_eq!(c.vm_id.as_deref(), Some("web-1"));
        assert_eq!(c.collectors.len(), 2);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.buffer_reports, 100);
        assert_eq!(c.token_file, Some(PathBuf::from("/etc/rally/agent.token")));
        assert_eq!(c.root, PathBuf::from("/host"));
        assert_eq!(c.labels.get("role").map(String::as_str), Some("web"));
        assert_eq!(c.labels.len(), 2);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("interval = \"5s\"\n\ncolectors = [\"http://x:1\"]\n").unwrap_err();
        let ConfigError::Invalid { location, message } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(location.line, Some(3));
        assert_eq!(location.key.as_deref(), Some("colectors"));
        assert!(message.contains("unknown field"), "{message}");
        let shown = err.to_string();
        assert!(
            shown.starts_with("/etc/rally/agent.toml:3:1: key `colectors`"),
            "{shown}"
        );
    }

    #[test]
    fn bad_value_names_its_key_and_line() {
        let err = parse("vm_id = \"a\"\ninterval = \"five seconds\"\n").unwrap_err();
        let ConfigError::Invalid { location, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(location.line, Some(2));
        assert_eq!(location.key.as_deref(), Some("interval"));
    }

    #[test]
    fn out_of_range_value_names_its_key_and_line() {
        let err = parse("\nbuffer_reports = 0\n").unwrap_err();
        let ConfigError::Invalid { location, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(location.line, Some(2));
        assert_eq!(location.key.as_deref(), Some("buffer_reports"));

        let err = parse("interval = \"10ms\"\n").unwrap_err();
        assert!(err.to_string().contains("key `interval`"), "{err}");
        let err = parse("collectors = []\n").unwrap_err();
        assert!(err.to_string().contains("key `collectors`"), "{err}");
        let err = parse("collectors = [\"10.0.0.1:9470\"]\n").unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn nested_key_is_qualified_by_its_table() {
        let err = parse("[labels]\nrole = 3\n").unwrap_err();
        let ConfigError::Invalid { location, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(location.line, Some(2));
        assert_eq!(location.key.as_deref(), Some("labels.role"));
    }

    #[test]
    fn shipped_file_parses_and_is_the_built_in_defaults() {
        let shipped = include_str!("../../packaging/agent/agent.toml");
        assert_eq!(parse(shipped).unwrap(), Config::default());
    }

    #[test]
    fn shipped_source_examples_are_valid_when_uncommented() {
        let shipped = include_str!("../../packaging/agent/agent.toml");
        let at = shipped
            .find("#[[sources]]")
            .expect("the shipped file shows sources");
        let examples: String = shipped[at..]
            .lines()
            .map(|l| l.strip_prefix('#').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&format!("{}{examples}", &shipped[..at])).unwrap();
        let kinds: Vec<_> = config.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(kinds, ["nginx", "apache", "fpm", "shop-log", "app"]);
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = load_config(Path::new("/nonexistent/rally/agent.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/rally/agent.toml: "),
            "{err}"
        );
    }
}
