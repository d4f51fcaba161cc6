//! `collector.toml`: listeners, ingest limits, state directory, agent authentication,
//! groups with their resize policy, the actuator, the API and the engine. Every section
//! is optional and has the defaults written in the shipped file.
//!
//! Errors name the file, the line and the key (`groups[1].vms[0]`), whether they come
//! from the TOML parser, from serde (an unknown key, a bad duration) or from the
//! checks in [`Config::from_toml`] (a VM in two groups, an unreadable token file);
//! [`rally_daemon::config_file`] locates them, as it does for the agent.
//!
//! - `sections`: `[listen]`, `[ingest]`, `[state]`, `[auth]`, `[tls]`, `[api]`, `[engine]`,
//!   `[ha]`.
//! - `check`: what serde cannot check (ranges, cross-key rules, readable secrets).
//! - `[[groups]]` are [`GroupPolicy`]s, `[actuator]` is an [`ActuatorConfig`].

mod check;
mod sections;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::actuator::ActuatorConfig;
use rally_daemon::config_file;
use rally_policy::GroupPolicy;

pub use rally_daemon::config_file::ConfigError;
pub use sections::{
    ApiConfig, AuthConfig, AuthMode, EngineConfig, HaConfig, HaTlsError, IngestConfig,
    ListenConfig, StateConfig, TlsConfig, TokenConfig, UnknownVms,
};

/// Where the collector reads its configuration unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/rally/collector.toml";

/// The whole `collector.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listen]`: the gRPC and HTTP addresses.
    #[serde(default)]
    pub listen: ListenConfig,
    /// `[ingest]`: how agents' streams are accepted, checked and bounded.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// `[state]`: where persistent state lives.
    #[serde(default)]
    pub state: StateConfig,
    /// `[auth]`: how agents prove which VM they speak for.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[tls]`: the listeners' certificate; unset, they speak plaintext.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `[[groups]]`: redundancy groups of VMs, each with its resize policy.
    #[serde(default)]
    pub groups: Vec<GroupPolicy>,
    /// Global dry-run: decisions are made and recorded, nothing is sent to the actuator.
    /// A group's own `dry_run` overrides it. The built-in default is `true`, the mode the
    /// package ships in, so nothing is actuated unless the operator says so.
    #[serde(default = "default_dry_run")]
    pub dry_run: bool,
    /// `[actuator]`: where resize requests go (`webhook`, `command` or `log`). Without it
    /// only dry-run groups may exist (the log actuator records them).
    #[serde(default)]
    pub actuator: Option<ActuatorConfig>,
    /// `[api]`: protection of the mutating HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[engine]`: the resize engine's tick and bounds.
    #[serde(default)]
    pub engine: EngineConfig,
    /// `[ha]`: leader election and decision state in etcd; unset, one collector with
    /// its state in SQLite.
    #[serde(default)]
    pub ha: Option<HaConfig>,
}

fn default_dry_run() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ListenConfig::default(),
            ingest: IngestConfig::default(),
            state: StateConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            groups: Vec::new(),
            dry_run: default_dry_run(),
            actuator: None,
            api: ApiConfig::default(),
            engine: EngineConfig::default(),
            ha: None,
        }
    }
}

impl Config {
    /// Reads, parses and checks the file at `path` (token files included).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config_file::load(path, Config::check)
    }

    /// Parses and checks `source`, naming `path` in errors.
    pub fn from_toml(source: &str, path: &Path) -> Result<Self, ConfigError> {
        config_file::parse(source, path, Config::check)
    }

    /// The group a VM belongs to by configuration, if any.
    pub fn group_of(&self, vm: &str) -> Option<&GroupPolicy> {
        self.groups.iter().find(|g| g.vms.iter().any(|v| v == vm))
    }
}
