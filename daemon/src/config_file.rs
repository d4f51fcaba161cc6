//! TOML configuration files whose every error names the file, the line and the key.
//!
//! Both daemons parse with [`parse`]: serde's errors are located through toml's spans,
//! and the daemon's own checks (ranges, cross-key rules) return the key path they
//! reject (`ingest.stale_after`, `groups[1].vms[0]`, `sources[2].url`), which is found
//! in the document the same way.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A key path and what is wrong with its value, as a daemon's own check reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct Invalid {
    /// The key path (`ingest.stale_after`, `groups[1].rules[0].threshold`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// The value of `key` is wrong: `message` says why.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", format_invalid(path, *line, *column, key.as_deref(), message))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the offending key, when known.
        line: Option<usize>,
        /// 1-based column of the offending key, when known.
        column: Option<usize>,
        /// The offending key as a path (`ingest.stale_after`, `groups[1].vms[0]`).
        key: Option<String>,
        /// What is wrong with it.
        message: String,
    },
}

fn format_invalid(
    path: &Path,
    line: Option<usize>,
    column: Option<usize>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut out = path.display().to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
        if let Some(column) = column {
            out.push_str(&format!(":{column}"));
        }
    }
    out.push_str(": ");
    if let Some(key) = key {
        out.push_str(&format!("key `{key}`: "));
    }
    out.push_str(message);
    out
}

/// Reads the file at `path`, parses it into `T`, then runs the daemon's `check`.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    check: impl FnOnce(&T) -> Result<(), Invalid>,
) -> Result<T, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&source, path, check)
}

/// Parses `source` into `T` and runs `check`, naming `path` in errors.
pub fn parse<T: DeserializeOwned>(
    source: &str,
    path: &Path,
    check: impl FnOnce(&T) -> Result<(), Invalid>,
) -> Result<T, ConfigError> {
    let value: T = toml::from_str(source).map_err(|err| {
        let span = err.span();
        let key = span.as_ref().and_then(|s| key_at(source, s.start));
        // toml's Display repeats the source snippet; the plain message is enough once
        // file, line and key are named.
        located(path, source, span, key, err.message().trim().to_string())
    })?;
    check(&value).map_err(|invalid| {
        let span = span_of(source, &invalid.key);
        located(path, source, span, Some(invalid.key), invalid.message)
    })?;
    Ok(value)
}

/// An [`ConfigError::Invalid`] for `key` in `source`, located if the key is written.
pub fn invalid_at(path: &Path, source: &str, invalid: Invalid) -> ConfigError {
    let span = span_of(source, &invalid.key);
    located(path, source, span, Some(invalid.key), invalid.message)
}

fn located(
    path: &Path,
    source: &str,
    span: Option<Range<usize>>,
    key: Option<String>,
    message: String,
) -> ConfigError {
    let (line, column) = match span {
        Some(span) => {
            let (line, column) = line_column(source, span.start);
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// One key (or array element) of the document with where it is written.
struct KeySpan {
    path: String,
    /// The key itself (for array elements: the element).
    key: Range<usize>,
    /// The value.
    value: Range<usize>,
}

/// Every key path in the document with its spans, found with toml's spanned parser.
fn key_spans(source: &str) -> Vec<KeySpan> {
    use toml::de::{DeTable, DeValue};

    fn walk_value(
        value: &toml::Spanned<DeValue<'_>>,
        path: &str,
        key: Range<usize>,
        out: &mut Vec<KeySpan>,
    ) {
        out.push(KeySpan {
            path: path.to_string(),
            key,
            value: value.span(),
        });
        match value.get_ref() {
            DeValue::Table(table) => walk_table(table, path, out),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk_value(item, &format!("{path}[{i}]"), item.span(), out);
                }
            }
            _ => {}
        }
    }

    fn walk_table(table: &DeTable<'_>, prefix: &str, out: &mut Vec<KeySpan>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            walk_value(value, &path, key.span(), out);
        }
    }

    let mut out = Vec::new();
    if let Ok(root) = DeTable::parse(source) {
        walk_table(root.get_ref(), "", &mut out);
    }
    out
}

/// The innermost key whose key or scalar value covers byte `offset`.
fn key_at(source: &str, offset: usize) -> Option<String> {
    key_spans(source)
        .into_iter()
        .filter(|k| k.key.contains(&offset) || k.value.contains(&offset))
        .min_by_key(|k| {
            let key_len = if k.key.contains(&offset) {
                k.key.len()
            } else {
                usize::MAX
            };
            let value_len = if k.value.contains(&offset) {
                k.value.len()
            } else {
                usize::MAX
            };
            key_len.min(value_len)
        })
        .map(|k| k.path)
}

/// Where `key` (a path such as `groups[1].vms[0]`) is written; for a key left at its
/// default, where the nearest enclosing table or element is (`sources[0]` for
/// `sources[0].timeout`), which is where it would be written.
fn span_of(source: &str, key: &str) -> Option<Range<usize>> {
    let spans = key_spans(source);
    let mut path = key;
    loop {
        if let Some(k) = spans.iter().find(|k| k.path == path) {
            return Some(k.key.clone());
        }
        path = parent(path)?;
    }
}

/// `sources[0]` for `sources[0].timeout`, `sources` for `sources[0]`; `None` at the top.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    path.get(..cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        #[allow(dead_code)] // only parsed
        interval: u32,
        #[serde(default)]
        sources: Vec<Source>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Source {
        url: String,
    }

    fn no_check(_: &Doc) -> Result<(), Invalid> {
        Ok(())
    }

    const PATH: &str = "/etc/rally/agent.toml";

    #[test]
    fn a_serde_error_names_line_and_key_in_an_array_of_tables() {
        let source = "interval = 1\n[[sources]]\nurl = \"a\"\n[[sources]]\nurl = 7\n";
        let err = parse::<Doc>(source, Path::new(PATH), no_check).unwrap_err();
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*line, Some(5));
        assert_eq!(key.as_deref(), Some("sources[1].url"));
        assert!(
            err.to_string().starts_with("/etc/rally/agent.toml:5:"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let source = "interval = 1\nintervall = 2\n";
        let err = parse::<Doc>(source, Path::new(PATH), no_check).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(":2:"), "{msg}");
        assert!(msg.contains("intervall"), "{msg}");
    }

    #[test]
    fn a_check_error_is_located_at_its_key() {
        let source = "interval = 1\n[[sources]]\nurl = \"a\"\n[[sources]]\nurl = \"\"\n";
        let err = parse::<Doc>(source, Path::new(PATH), |d| {
            match d.sources.iter().position(|s| s.url.is_empty()) {
                Some(i) => Err(Invalid::new(
                    format!("sources[{i}].url"),
                    "must not be empty",
                )),
                None => Ok(()),
            }
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/rally/agent.toml:5:1: key `sources[1].url`: must not be empty"
        );
    }

    #[test]
    fn a_check_error_on_an_unwritten_key_is_located_at_its_table() {
        let source = "interval = 1\n\n[[sources]]\nurl = \"a\"\n";
        let err = parse::<Doc>(source, Path::new(PATH), |_| {
            Err(Invalid::new("sources[0].timeout", "too long"))
        })
        .unwrap_err();
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("{err}")
        };
        assert!(matches!(line, Some(3) | Some(4)), "{err}");
        assert_eq!(key.as_deref(), Some("sources[0].timeout"));
        assert_eq!(parent("a.b[2].c"), Some("a.b[2]"));
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a"), None);
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let err = load::<Doc>(Path::new("/nonexistent/agent.toml"), no_check).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
    }
}
