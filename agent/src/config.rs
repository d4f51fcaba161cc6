//! `agent.toml`: what the agent samples, where it reports, and how much it keeps.
//!
//! Every key has a default, so an empty file is a valid configuration. Unknown keys are
//! errors (a typo must not silently fall back to a default), and every error names the
//! file, the line, the column and the key path (`sources[2].url`): parsing and
//! locating are [`rally_daemon::config_file`]'s, the checks are [`Config::validate`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rally_daemon::config_file;
use serde::{Deserialize, Serialize};

use crate::source::SourceConfig;

/// Where the packaged agent looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rally/agent.toml";

/// The collector address used when none is configured (the collector's gRPC port is
/// 9470).
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
    /// gRPC addresses of the collectors (`https://host:port` for TLS, `http://host:port`
    /// in clear); the agent reports to every one of them, each with its own buffer.
    pub collectors: Vec<String>,
    /// Time between two samples (`"5s"`); a collector may change it at run time.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How many un-acknowledged reports are kept per collector; when full, the oldest
    /// is dropped (720 = one hour at 5 s).
    pub buffer_reports: usize,
    /// A file holding a bearer token sent to the collectors (`authorization` header).
    pub token_file: Option<PathBuf>,
    /// `[tls]`: what the agent trusts and presents on `https://` collectors.
    pub tls: TlsConfig,
    /// Free-form labels sent in the stream's `Hello` (e.g. `role = "web"`).
    pub labels: BTreeMap<String, String>,
    /// Where `proc/` and `sys/` are read from: `/` on the VM itself, or the host's
    /// root mounted elsewhere (e.g. `/host` in a container).
    pub root: PathBuf,
    /// Web-server request sources (`[[sources]]`), read at every sample.
    pub sources: Vec<SourceConfig>,
    /// Filesystem types not measured (an entry ending in `*` is a prefix); the default
    /// skips pseudo, in-memory and network filesystems.
    pub filesystem_exclude_types: Vec<String>,
    /// The Unix socket `rally-agent status` asks; `""`: none.
    pub status_socket: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vm_id: None,
            collectors: vec![DEFAULT_COLLECTOR.to_owned()],
            interval: Duration::from_secs(5),
            buffer_reports: 720,
            token_file: None,
            tls: TlsConfig::default(),
            labels: BTreeMap::new(),
            root: PathBuf::from("/"),
            sources: Vec::new(),
            filesystem_exclude_types: crate::sample::filesystem::DEFAULT_EXCLUDED_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            status_socket: PathBuf::from(crate::status::DEFAULT_SOCKET),
        }
    }
}

/// `[tls]`: the files of the agent's TLS to `https://` collectors, read again at each
/// connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The CA(s) that sign the collectors' certificates (PEM); unset: the system's
    /// trusted roots (`/etc/ssl/certs`).
    pub ca_file: Option<PathBuf>,
    /// This agent's client certificate (PEM), for collectors that ask for one; its URI
    /// SAN `rally://vm/<id>` names the VM (`rally-collector pki client` makes it).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

// What a configuration error is: shared with the collector, so both daemons word it
// alike.
pub use rally_daemon::config_file::{ConfigError, Invalid};

/// Reads and validates the configuration file at `path`.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    config_file::load(path, Config::validate)
}

/// Parses and validates configuration text; `path` is only used in error messages.
pub fn parse_config(text: &str, path: &Path) -> Result<Config, ConfigError> {
    config_file::parse(text, path, Config::validate)
}

impl Config {
    /// `[tls]`: the certificate and its key come together, and only where a collector
    /// would see them.
    fn validate_tls(&self) -> Result<(), Invalid> {
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return Err(Invalid::new(
                    "tls.key_file",
                    "tls.cert_file needs its key_file",
                ));
            }
            (None, Some(_)) => {
                return Err(Invalid::new(
                    "tls.cert_file",
                    "tls.key_file needs its cert_file",
                ));
            }
            _ => {}
        }
        let any_tls = self.collectors.iter().any(|a| a.starts_with("https://"));
        if !any_tls && *tls != TlsConfig::default() {
            let key = if tls.cert_file.is_some() {
                "tls.cert_file"
            } else {
                "tls.ca_file"
            };
            return Err(Invalid::new(
                key,
                "no collector address is https://, so [tls] would not be used: write the collectors as https://host:port",
            ));
        }
        Ok(())
    }

    /// Checks the values that TOML types alone cannot (ranges, addresses), naming the
    /// key path of the first wrong one.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.collectors.is_empty() {
            return Err(Invalid::new(
                "collectors",
                "at least one collector address is needed",
            ));
        }
        for (i, address) in self.collectors.iter().enumerate() {
            let key = format!("collectors[{i}]");
            if let Err(e) = tonic::transport::Endpoint::from_shared(address.clone()) {
                return Err(Invalid::new(
                    key,
                    format!("`{address}` is not a valid URI: {e}"),
                ));
            }
            if !(address.starts_with("http://") || address.starts_with("https://")) {
                return Err(Invalid::new(
                    key,
                    format!(
                        "`{address}` must start with https:// or http:// (e.g. https://collector:9470)"
                    ),
                ));
            }
        }
        self.validate_tls()?;
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(Invalid::new(
                "interval",
                format!(
                    "{} is outside {}..={}",
                    humantime_serde::re::humantime::format_duration(self.interval),
                    humantime_serde::re::humantime::format_duration(MIN_INTERVAL),
                    humantime_serde::re::humantime::format_duration(MAX_INTERVAL)
                ),
            ));
        }
        if self.buffer_reports == 0 {
            return Err(Invalid::new("buffer_reports", "must be at least 1"));
        }
        crate::source::validate_all(&self.sources, self.interval)?;
        if let Some(vm_id) = &self.vm_id
            && vm_id.trim().is_empty()
        {
            return Err(Invalid::new(
                "vm_id",
                "must not be empty (leave it out to use the hostname)",
            ));
        }
        Ok(())
    }
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
        let ConfigError::Invalid {
            line, key, message, ..
        } = &err
        else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(*line, Some(3));
        assert_eq!(key.as_deref(), Some("colectors"));
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
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(*line, Some(2));
        assert_eq!(key.as_deref(), Some("interval"));
    }

    #[test]
    fn out_of_range_value_names_its_key_and_line() {
        let err = parse("\nbuffer_reports = 0\n").unwrap_err();
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(*line, Some(2));
        assert_eq!(key.as_deref(), Some("buffer_reports"));

        let err = parse("interval = \"10ms\"\n").unwrap_err();
        assert!(err.to_string().contains("key `interval`"), "{err}");
        let err = parse("collectors = []\n").unwrap_err();
        assert!(err.to_string().contains("key `collectors`"), "{err}");
        let err = parse("collectors = [\"10.0.0.1:9470\"]\n").unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
    }

    #[test]
    fn tls_keys_need_each_other_and_an_https_collector() {
        let ok = parse(
            "collectors = [\"https://c:9470\"]\n[tls]\nca_file = \"/ca.pem\"\ncert_file = \"/a.pem\"\nkey_file = \"/a.key\"\n",
        )
        .unwrap();
        assert_eq!(ok.tls.cert_file, Some(PathBuf::from("/a.pem")));
        let err = parse("collectors = [\"https://c:9470\"]\n[tls]\ncert_file = \"/a.pem\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("key `tls.key_file`"), "{err}");
        let err =
            parse("collectors = [\"http://c:9470\"]\n[tls]\nca_file = \"/ca.pem\"\n").unwrap_err();
        assert!(
            err.to_string().contains("no collector address is https://"),
            "{err}"
        );
    }

    #[test]
    fn a_source_error_names_its_index_and_key() {
        let nginx = "[[sources]]\nname = \"a\"\nkind = \"nginx\"\nurl = \"http://x/\"\n";
        let bad = "[[sources]]\nname = \"c\"\nkind = \"nginx\"\nurl = \"https://x/\"\n";
        let text = format!("{nginx}{}{bad}", nginx.replace("\"a\"", "\"b\""));
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/rally/agent.toml:12:1: key `sources[2].url`: "),
            "{err}"
        );
        // A serde error inside a source is located the same way.
        let text = format!("{nginx}[[sources]]\nname = \"b\"\nkind = \"squid\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("/etc/rally/agent.toml:7:"), "{err}");
        assert!(err.contains("key `sources[1].kind`"), "{err}");
    }

    #[test]
    fn a_counted_by_naming_no_source_points_to_its_line() {
        let text = "[[sources]]\nname = \"nginx\"\nkind = \"nginx\"\nurl = \"http://x/\"\n\n[[sources]]\nname = \"log\"\nkind = \"access_log\"\npath = \"/a\"\ncounted_by = \"ngnix\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/rally/agent.toml:10:1: key `sources[1].counted_by`: no source is named `ngnix`"),
            "{err}"
        );
    }

    #[test]
    fn a_check_on_an_unwritten_key_points_to_its_table() {
        // `timeout` is left at its default (1 s), not shorter than this interval.
        let text = "interval = \"500ms\"\n\n[[sources]]\nname = \"a\"\nkind = \"nginx\"\nurl = \"http://x/\"\n";
        let err = parse(text).unwrap_err();
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(key.as_deref(), Some("sources[0].timeout"));
        assert!(line.is_some(), "{err}");
    }

    #[test]
    fn nested_key_is_qualified_by_its_table() {
        let err = parse("[labels]\nrole = 3\n").unwrap_err();
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(*line, Some(2));
        assert_eq!(key.as_deref(), Some("labels.role"));
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
        // nginx's own log and php-fpm behind it are counted once, by nginx.
        let counted_by: Vec<_> = config
            .sources
            .iter()
            .map(|s| s.counted_by.as_deref())
            .collect();
        assert_eq!(counted_by, [None, None, Some("nginx"), Some("nginx"), None]);
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = load_config(Path::new("/nonexistent/rally/agent.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/rally/agent.toml: "),
            "{err}"
        );
    }
}
