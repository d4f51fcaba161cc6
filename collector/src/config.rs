//! `collector.toml`: listeners, ingest limits, state directory, agent authentication
//! and groups. Every section is optional; the defaults are SPEC.md's.
//!
//! Errors name the file, the line and the key (`groups[1].vms[0]`), whether they come
//! from the TOML parser, from serde (an unknown key, a bad duration) or from the
//! checks in [`Config::from_toml`] (a VM in two groups, an unreadable token file).

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::actuator::ActuatorConfig;
use crate::fleet::{UNGROUPED, validate_id};
use rally_policy::boost::BoostConfig;
use rally_policy::group::{self as policy_defaults, ScaleDown, ScaleUp};
use rally_policy::ladder::{LadderError, Rung};
use rally_policy::rule::Rule;
use rally_policy::target::Target;
use rally_policy::{GroupPolicy, PolicyError};

/// Where the collector reads its configuration unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/rally/collector.toml";

/// A token file larger than this is certainly not a token.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

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
    /// `[[groups]]`: redundancy groups of VMs, each with its resize policy.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// Global dry-run: decisions are made and recorded, nothing is sent to the actuator.
    /// A group's own `dry_run` overrides it. Built-in default `true` (SPEC: shipped mode
    /// is dry-run), so nothing is actuated unless the operator says so.
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
            groups: Vec::new(),
            dry_run: default_dry_run(),
            actuator: None,
            api: ApiConfig::default(),
            engine: EngineConfig::default(),
        }
    }
}

/// `[api]`: who may call the mutating endpoints (`pause`, `resume`, `resize`).
///
/// With `token_file`, every mutating request needs `Authorization: Bearer <token>`.
/// Without it, mutating requests are accepted only from loopback peers: the HTTP listener
/// defaults to `0.0.0.0` for Prometheus, and an unauthenticated resize from the network
/// would let anyone who can scrape also spend money. Read-only endpoints stay open, like
/// `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// A file holding the API bearer token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[engine]`: how often groups are evaluated and how much may queue for the actuator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// How often every group is evaluated (the agents' report interval, 5 s, is the
    /// natural choice: a faster tick sees no new data).
    #[serde(default = "default_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// Requests waiting for the actuator at most; more wait in the engine (they are
    /// already persisted) and are handed over on later ticks.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Requests the actuator works on at once (a slow receiver delays only its own).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_tick() -> Duration {
    Duration::from_secs(5)
}

fn default_queue() -> usize {
    64
}

fn default_concurrency() -> usize {
    8
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            tick: default_tick(),
            queue: default_queue(),
            concurrency: default_concurrency(),
        }
    }
}

/// `[listen]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// The gRPC address agents stream to (`rally.v1.Ingest`).
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
    /// The HTTP address of `/metrics`, `/healthz`, `/readyz`, `/api/v1` and the status page.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
}

fn default_grpc() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9470))
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9471))
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
        }
    }
}

/// What to do with a VM that no `[[groups]]` entry names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownVms {
    /// Accept it into the group `ungrouped` (shown and exported, never resized).
    #[default]
    Ungrouped,
    /// Refuse its stream with `PermissionDenied`.
    Reject,
}

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// A VM without a report for this long is stale: `rally_vm_up` 0, no decisions.
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
    /// A VM silent for this long is dropped from memory (VMs named in `[[groups]]` stay
    /// listed, without data).
    #[serde(default = "default_forget_after", with = "humantime_serde")]
    pub forget_after: Duration,
    /// `ungrouped` (accept VMs no group names) or `reject`.
    #[serde(default)]
    pub unknown_vms: UnknownVms,
    /// The largest agent message accepted, in bytes; larger ones are rejected (`oversized`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// At most this many agent streams at once; more are refused with `ResourceExhausted`.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// At most this many VMs are kept in memory; a new VM beyond it is refused.
    #[serde(default = "default_max_vms")]
    pub max_vms: usize,
    /// A stream whose first message (`Hello`) has not arrived after this long is dropped.
    #[serde(default = "default_hello_timeout", with = "humantime_serde")]
    pub hello_timeout: Duration,
}

fn default_stale_after() -> Duration {
    Duration::from_secs(20)
}

fn default_forget_after() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_message_bytes() -> usize {
    256 * 1024
}

fn default_max_streams() -> usize {
    10_000
}

fn default_max_vms() -> usize {
    10_000
}

fn default_hello_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            stale_after: default_stale_after(),
            forget_after: default_forget_after(),
            unknown_vms: UnknownVms::default(),
            max_message_bytes: default_max_message_bytes(),
            max_streams: default_max_streams(),
            max_vms: default_max_vms(),
            hello_timeout: default_hello_timeout(),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The directory of the collector's persistent state; created if missing.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/rally")
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

/// How agents authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Any agent may report for any VM (a trusted network only).
    #[default]
    None,
    /// Every stream carries `authorization: Bearer <token>`; the token names its VM.
    Token,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `token`.
    #[serde(default)]
    pub mode: AuthMode,
    /// `[[auth.tokens]]`: one per VM when `mode = "token"`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// `[[auth.tokens]]`: the token that lets an agent report for one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The VM this token speaks for.
    pub vm: String,
    /// A file holding the token (surrounding whitespace ignored), so that the secret
    /// stays out of the config file.
    pub file: PathBuf,
}

/// `[[groups]]`: a redundancy group of VMs and its resize policy.
///
/// The policy keys are [`GroupPolicy`]'s, listed here because serde cannot flatten a
/// struct into one with `deny_unknown_fields`; [`GroupConfig::policy`] copies them out.
/// A group without a `ladder` is monitored only: it is never resized.
///
/// ```toml
/// [[groups]]
/// name = "web"
/// vms = ["web-1", "web-2"]
/// ladder = [
///   { name = "M", vcpus = 2, memory_bytes = 4294967296 },
///   { name = "L", vcpus = 4, memory_bytes = 8589934592 },
/// ]
/// min_rung = "M"
/// max_rung = "L"
/// [[groups.rules]]
/// metric = "cpu_utilization"
/// window = "1m"
/// threshold = 0.80
/// clear = 0.55
/// for = "3m"
/// [groups.scale_down]
/// window = "02:00-05:00"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name, used in metrics and decisions (`web`).
    pub name: String,
    /// The VM ids in this group (each in at most one group).
    #[serde(default)]
    pub vms: Vec<String>,
    /// The sizes the group's VMs may take, smallest first; empty = never resized.
    #[serde(default)]
    pub ladder: Vec<Rung>,
    /// Lowest rung the group may be resized to (default: the smallest).
    #[serde(default)]
    pub min_rung: Option<String>,
    /// Highest rung the group may be resized to (default: the largest).
    #[serde(default)]
    pub max_rung: Option<String>,
    /// IANA time zone of the scale-down window, boosts and daily caps (`Europe/Warsaw`).
    #[serde(default = "policy_defaults::default_timezone")]
    pub timezone: Tz,
    /// This group's dry-run; unset follows the global `dry_run`.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Whether a group of one may shrink (shrinking restarts the VM).
    #[serde(default)]
    pub allow_restart: bool,
    /// `[[groups.rules]]`: threshold rules; any that holds for its `for` grows a VM one rung.
    #[serde(default = "policy_defaults::default_rules")]
    pub rules: Vec<Rule>,
    /// `[[groups.targets]]`: target tracking; the largest rung asked for wins.
    #[serde(default = "policy_defaults::default_targets")]
    pub targets: Vec<Target>,
    /// `[groups.scale_up]`: cooldown, daily cap, verification time-out of growing.
    #[serde(default)]
    pub scale_up: ScaleUp,
    /// `[groups.scale_down]`: window, lookback, margins, cap, cooldown of shrinking.
    #[serde(default)]
    pub scale_down: ScaleDown,
    /// `[[groups.boosts]]`: scheduled floors.
    #[serde(default)]
    pub boosts: Vec<BoostConfig>,
    /// After a verified resize, samples younger than this are left out of every window.
    #[serde(default = "policy_defaults::default_warm_up", with = "humantime_serde")]
    pub warm_up: Duration,
    /// Consecutive failed or unverified resizes that pause the group (circuit breaker).
    #[serde(default = "policy_defaults::default_circuit_breaker")]
    pub circuit_breaker: u32,
}

impl GroupConfig {
    /// A monitored-only group (no ladder) with the shipped policy defaults.
    pub fn monitored(name: &str, vms: Vec<String>) -> Self {
        Self::from_policy(name, vms, GroupPolicy::with_ladder(Vec::new()))
    }

    /// A group with `policy`'s keys.
    pub fn from_policy(name: &str, vms: Vec<String>, policy: GroupPolicy) -> Self {
        Self {
            name: name.to_owned(),
            vms,
            ladder: policy.ladder,
            min_rung: policy.min_rung,
            max_rung: policy.max_rung,
            timezone: policy.timezone,
            dry_run: policy.dry_run,
            allow_restart: policy.allow_restart,
            rules: policy.rules,
            targets: policy.targets,
            scale_up: policy.scale_up,
            scale_down: policy.scale_down,
            boosts: policy.boosts,
            warm_up: policy.warm_up,
            circuit_breaker: policy.circuit_breaker,
        }
    }

    /// The policy keys, for [`GroupPolicy::compile`].
    pub fn policy(&self) -> GroupPolicy {
        GroupPolicy {
            ladder: self.ladder.clone(),
            min_rung: self.min_rung.clone(),
            max_rung: self.max_rung.clone(),
            timezone: self.timezone,
            dry_run: self.dry_run,
            allow_restart: self.allow_restart,
            rules: self.rules.clone(),
            targets: self.targets.clone(),
            scale_up: self.scale_up.clone(),
            scale_down: self.scale_down.clone(),
            boosts: self.boosts.clone(),
            warm_up: self.warm_up,
            circuit_breaker: self.circuit_breaker,
        }
    }

    /// Whether the group is resized at all (it has a ladder).
    pub fn resizes(&self) -> bool {
        !self.ladder.is_empty()
    }

    /// The dry-run flag in force: the group's, else the global one.
    pub fn effective_dry_run(&self, global: bool) -> bool {
        self.dry_run.unwrap_or(global)
    }
}

/// The config key (below `groups[i].`) a policy error is about.
fn policy_error_key(group: &GroupConfig, err: &PolicyError) -> String {
    match err {
        PolicyError::Ladder(LadderError::UnknownRung(name)) => {
            if group.min_rung.as_deref() == Some(name.as_str()) {
                "min_rung".into()
            } else {
                "max_rung".into()
            }
        }
        PolicyError::Ladder(LadderError::MinAboveMax { .. }) => "min_rung".into(),
        PolicyError::Ladder(_) => "ladder".into(),
        PolicyError::Rule { index, .. } => format!("rules[{index}]"),
        PolicyError::Target { index, .. } => format!("targets[{index}]"),
        PolicyError::Boost { index, .. } => format!("boosts[{index}]"),
        PolicyError::Value { key, .. } => (*key).to_owned(),
        PolicyError::OutOfRange { key, .. } => key.clone(),
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}", path.display())]
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

impl Config {
    /// Reads, parses and checks the file at `path` (token files included).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&source, path)
    }

    /// Parses and checks `source`, naming `path` in errors.
    pub fn from_toml(source: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(source).map_err(|err| {
            let span = err.span();
            let key = span.as_ref().and_then(|s| key_at(source, s.start));
            // toml's Display repeats the source snippet; the plain message is enough
            // once file, line and key are named.
            invalid(path, source, span, key, err.message().trim().to_string())
        })?;
        config.check().map_err(|(key, message)| {
            let span = span_of(source, &key);
            invalid(path, source, span, Some(key), message)
        })?;
        Ok(config)
    }

    /// The group a VM belongs to by configuration, if any.
    pub fn group_of(&self, vm: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.vms.iter().any(|v| v == vm))
    }

    /// Checks what serde cannot: returns the offending key path and a message.
    fn check(&self) -> Result<(), (String, String)> {
        let err = |key: &str, message: String| Err((key.to_string(), message));
        // Port 0 ("any free port", for tests) cannot collide.
        if self.listen.grpc == self.listen.http && self.listen.grpc.port() != 0 {
            return err(
                "listen.http",
                format!("same address as listen.grpc ({})", self.listen.grpc),
            );
        }
        let ingest = &self.ingest;
        if ingest.stale_after.is_zero() {
            return err("ingest.stale_after", "must be more than 0s".into());
        }
        if ingest.forget_after < ingest.stale_after {
            return err(
                "ingest.forget_after",
                "must be at least ingest.stale_after".into(),
            );
        }
        if !(1024..=64 * 1024 * 1024).contains(&ingest.max_message_bytes) {
            return err(
                "ingest.max_message_bytes",
                format!(
                    "{} is out of range 1024..=67108864",
                    ingest.max_message_bytes
                ),
            );
        }
        if ingest.max_streams == 0 {
            return err("ingest.max_streams", "must be at least 1".into());
        }
        if ingest.max_vms == 0 {
            return err("ingest.max_vms", "must be at least 1".into());
        }
        if ingest.hello_timeout.is_zero() {
            return err("ingest.hello_timeout", "must be more than 0s".into());
        }
        if self.state.dir.as_os_str().is_empty() {
            return err("state.dir", "must not be empty".into());
        }

        let mut seen_groups = std::collections::HashSet::new();
        let mut seen_vms = std::collections::HashMap::new();
        for (i, group) in self.groups.iter().enumerate() {
            if let Err(why) = validate_id(&group.name) {
                return err(&format!("groups[{i}].name"), why);
            }
            if group.name == UNGROUPED {
                return err(
                    &format!("groups[{i}].name"),
                    format!("`{UNGROUPED}` is reserved for VMs that no group names"),
                );
            }
            if !seen_groups.insert(group.name.as_str()) {
                return err(
                    &format!("groups[{i}].name"),
                    format!("group `{}` is defined twice", group.name),
                );
            }
            for (j, vm) in group.vms.iter().enumerate() {
                let key = format!("groups[{i}].vms[{j}]");
                if let Err(why) = validate_id(vm) {
                    return err(&key, why);
                }
                if let Some(other) = seen_vms.insert(vm.as_str(), group.name.as_str()) {
                    return err(&key, format!("VM `{vm}` is already in group `{other}`"));
                }
            }
            if group.resizes() {
                let mut policy = group.policy();
                if group.ladder.iter().any(|r| r.oktawave_type.is_some()) {
                    if !matches!(self.actuator, Some(ActuatorConfig::Oktawave(_))) {
                        return err(
                            &format!("groups[{i}].ladder"),
                            "a rung names an oktawave_type but [actuator] is not kind = \"oktawave\""
                                .into(),
                        );
                    }
                    // Sizes of Oktawave types are read from the API at start (and the
                    // ladder is checked again then); until then, stand-in sizes that grow
                    // let names, min/max and boosts be checked here.
                    let mut prev = (0u32, 0u64);
                    for rung in &mut policy.ladder {
                        if rung.oktawave_type.is_some() && rung.vcpus == 0 && rung.memory_bytes == 0
                        {
                            (rung.vcpus, rung.memory_bytes) = (prev.0 + 1, prev.1 + (1 << 30));
                        }
                        prev = (rung.vcpus, rung.memory_bytes);
                    }
                }
                if let Err(e) = policy.compile() {
                    let key = policy_error_key(group, &e);
                    return err(&format!("groups[{i}].{key}"), e.to_string());
                }
                if !group.effective_dry_run(self.dry_run) && self.actuator.is_none() {
                    let key = if group.dry_run.is_some() {
                        format!("groups[{i}].dry_run")
                    } else {
                        "dry_run".to_owned()
                    };
                    return err(
                        &key,
                        format!(
                            "group `{}` is not dry-run but no [actuator] is configured",
                            group.name
                        ),
                    );
                }
            }
        }
        if let Some(actuator) = &self.actuator
            && let Err(e) = actuator.check()
        {
            use crate::actuator::ActuatorError as E;
            let key = match (&e, actuator) {
                (E::Secret { path, .. } | E::EmptySecret(path), ActuatorConfig::Oktawave(c)) => {
                    if *path == c.password_file {
                        "actuator.password_file"
                    } else {
                        "actuator.client_secret_file"
                    }
                }
                (E::Secret { .. } | E::EmptySecret(_), _) => "actuator.secret_file",
                (E::Url { url, .. }, ActuatorConfig::Oktawave(c)) => {
                    if *url == c.id_url {
                        "actuator.id_url"
                    } else {
                        "actuator.api_url"
                    }
                }
                (E::Url { .. }, _) => "actuator.url",
                _ => "actuator",
            };
            return err(key, e.to_string());
        }
        if let Some(file) = &self.api.token_file
            && let Err(why) = read_token(file)
        {
            return err("api.token_file", why);
        }
        if self.engine.tick.is_zero() {
            return err("engine.tick", "must be more than 0s".into());
        }
        if self.engine.queue == 0 {
            return err("engine.queue", "must be at least 1".into());
        }
        if self.engine.concurrency == 0 {
            return err("engine.concurrency", "must be at least 1".into());
        }

        match self.auth.mode {
            AuthMode::None if !self.auth.tokens.is_empty() => {
                return err(
                    "auth.mode",
                    "[[auth.tokens]] are given but mode is \"none\": set mode = \"token\" or remove them"
                        .into(),
                );
            }
            AuthMode::Token if self.auth.tokens.is_empty() => {
                return err(
                    "auth.mode",
                    "mode is \"token\" but no [[auth.tokens]] are given".into(),
                );
            }
            _ => {}
        }
        let mut token_vms = std::collections::HashSet::new();
        let mut secrets = std::collections::HashMap::new();
        for (i, token) in self.auth.tokens.iter().enumerate() {
            if let Err(why) = validate_id(&token.vm) {
                return err(&format!("auth.tokens[{i}].vm"), why);
            }
            if !token_vms.insert(token.vm.as_str()) {
                return err(
                    &format!("auth.tokens[{i}].vm"),
                    format!("VM `{}` has two tokens", token.vm),
                );
            }
            let secret = match read_token(&token.file) {
                Ok(secret) => secret,
                Err(why) => return err(&format!("auth.tokens[{i}].file"), why),
            };
            if let Some(other) = secrets.insert(secret, token.vm.as_str()) {
                return err(
                    &format!("auth.tokens[{i}].file"),
                    format!("holds the same token as VM `{other}`'s"),
                );
            }
        }
        Ok(())
    }
}

/// Reads a token file: trimmed, non-empty, small.
pub(crate) fn read_token(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "{}: {} bytes is too large for a token (at most {MAX_TOKEN_FILE_BYTES})",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{}: a token must be one word without spaces or control characters",
            path.display()
        ));
    }
    Ok(token.to_string())
}

fn invalid(
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

/// Where `key` (a path such as `groups[1].vms[0]`) is written, if it is.
fn span_of(source: &str, key: &str) -> Option<Range<usize>> {
    key_spans(source)
        .into_iter()
        .find(|k| k.path == key)
        .map(|k| k.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> Result<Config, ConfigError> {
        Config::from_toml(source, Path::new("/etc/rally/collector.toml"))
    }

    fn invalid_parts(err: ConfigError) -> (Option<usize>, Option<String>, String) {
        match err {
            ConfigError::Invalid {
                line, key, message, ..
            } => (line, key, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_spec_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.grpc, "0.0.0.0:9470".parse().unwrap());
        assert_eq!(config.listen.http, "0.0.0.0:9471".parse().unwrap());
        assert_eq!(config.ingest.stale_after, Duration::from_secs(20));
        assert_eq!(config.ingest.forget_after, Duration::from_secs(86_400));
        assert_eq!(config.ingest.unknown_vms, UnknownVms::Ungrouped);
        assert_eq!(config.ingest.max_message_bytes, 262_144);
        assert_eq!(config.ingest.max_streams, 10_000);
        assert_eq!(config.ingest.hello_timeout, Duration::from_secs(10));
        assert_eq!(config.state.dir, PathBuf::from("/var/lib/rally"));
        assert_eq!(config.auth.mode, AuthMode::None);
        assert!(config.groups.is_empty());
        assert_eq!(config, Config::default());
    }

    #[test]
    fn full_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("web-1");
        std::fs::write(&token, "s3cret-web-1\n").unwrap();
        let source = format!(
            r#"
[listen]
grpc = "127.0.0.1:19470"
http = "127.0.0.1:19471"

[ingest]
stale_after = "30s"
forget_after = "12h"
unknown_vms = "reject"
max_message_bytes = 65536
max_streams = 50

[state]
dir = "/tmp/rally"

[auth]
mode = "token"
[[auth.tokens]]
vm = "web-1"
file = "{}"

[[groups]]
name = "web"
vms = ["web-1", "web-2"]

[[groups]]
name = "db"
vms = ["db-1"]
"#,
            token.display()
        );
        let config = parse(&source).unwrap();
        assert_eq!(config.listen.grpc, "127.0.0.1:19470".parse().unwrap());
        assert_eq!(config.ingest.stale_after, Duration::from_secs(30));
        assert_eq!(config.ingest.forget_after, Duration::from_secs(12 * 3600));
        assert_eq!(config.ingest.unknown_vms, UnknownVms::Reject);
        assert_eq!(config.ingest.max_message_bytes, 65_536);
        assert_eq!(config.ingest.max_streams, 50);
        assert_eq!(config.state.dir, PathBuf::from("/tmp/rally"));
        assert_eq!(config.auth.mode, AuthMode::Token);
        assert_eq!(config.auth.tokens[0].vm, "web-1");
        assert_eq!(config.groups.len(), 2);
        assert_eq!(config.group_of("web-2").unwrap().name, "web");
        assert_eq!(config.group_of("db-1").unwrap().name, "db");
        assert!(config.group_of("cache-1").is_none());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[listen]\ngrpc = \"0.0.0.0:9470\"\n\n[ingest]\nstale_afterr = \"5s\"\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/rally/collector.toml:5:"),
            "file and line missing: {text}"
        );
        assert!(text.contains("stale_afterr"), "key missing: {text}");
        let (line, key, message) = invalid_parts(err);
        assert_eq!(line, Some(5));
        assert_eq!(key.as_deref(), Some("ingest.stale_afterr"));
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn unknown_section_names_its_key() {
        let (line, key, _) = invalid_parts(parse("\n[metrics]\nport = 1\n").unwrap_err());
        assert_eq!(line, Some(2));
        assert_eq!(key.as_deref(), Some("metrics"));
    }

    #[test]
    fn bad_duration_names_its_key() {
        let (line, key, _) = invalid_parts(
            parse("[ingest]\nforget_after = \"1d\"\nstale_after = \"soon\"\n").unwrap_err(),
        );
        assert_eq!(line, Some(3));
        assert_eq!(key.as_deref(), Some("ingest.stale_after"));
    }

    #[test]
    fn bad_enum_value_names_its_key() {
        let (line, key, _) =
            invalid_parts(parse("[ingest]\nunknown_vms = \"drop\"\n").unwrap_err());
        assert_eq!(line, Some(2));
        assert_eq!(key.as_deref(), Some("ingest.unknown_vms"));
    }

    #[test]
    fn syntax_error_names_line() {
        let (line, _, _) = invalid_parts(parse("[listen]\ngrpc = \n").unwrap_err());
        assert_eq!(line, Some(2));
    }

    #[test]
    fn vm_in_two_groups_is_refused_at_its_line() {
        let source = "[[groups]]\nname = \"web\"\nvms = [\"a\", \"b\"]\n\n[[groups]]\nname = \"app\"\nvms = [\"c\",\n  \"a\"]\n";
        let err = parse(source).unwrap_err();
        let text = err.to_string();
        let (line, key, message) = invalid_parts(err);
        assert_eq!(key.as_deref(), Some("groups[1].vms[1]"), "{text}");
        assert_eq!(line, Some(8), "{text}");
        assert!(message.contains("already in group `web`"), "{message}");
    }

    #[test]
    fn reserved_and_invalid_group_names_are_refused() {
        let (_, key, _) =
            invalid_parts(parse("[[groups]]\nname = \"ungrouped\"\nvms = []\n").unwrap_err());
        assert_eq!(key.as_deref(), Some("groups[0].name"));
        let (_, key, _) =
            invalid_parts(parse("[[groups]]\nname = \"we b\"\nvms = []\n").unwrap_err());
        assert_eq!(key.as_deref(), Some("groups[0].name"));
    }

    #[test]
    fn token_mode_needs_readable_token_files() {
        let (_, key, _) = invalid_parts(parse("[auth]\nmode = \"token\"\n").unwrap_err());
        assert_eq!(key.as_deref(), Some("auth.mode"));

        let source = "[auth]\nmode = \"token\"\n[[auth.tokens]]\nvm = \"web-1\"\nfile = \"/nonexistent/rally-token\"\n";
        let err = parse(source).unwrap_err();
        let text = err.to_string();
        let (line, key, message) = invalid_parts(err);
        assert_eq!(key.as_deref(), Some("auth.tokens[0].file"), "{text}");
        assert_eq!(line, Some(5), "{text}");
        assert!(message.contains("/nonexistent/rally-token"), "{message}");
    }

    #[test]
    fn shared_or_empty_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let empty = dir.path().join("empty");
        std::fs::write(&a, "same").unwrap();
        std::fs::write(&b, "same\n").unwrap();
        std::fs::write(&empty, " \n").unwrap();
        let source = format!(
            "[auth]\nmode = \"token\"\n[[auth.tokens]]\nvm = \"a\"\nfile = \"{}\"\n[[auth.tokens]]\nvm = \"b\"\nfile = \"{}\"\n",
            a.display(),
            b.display()
        );
        let (_, key, message) = invalid_parts(parse(&source).unwrap_err());
        assert_eq!(key.as_deref(), Some("auth.tokens[1].file"));
        assert!(message.contains("same token"), "{message}");

        let source = format!(
            "[auth]\nmode = \"token\"\n[[auth.tokens]]\nvm = \"a\"\nfile = \"{}\"\n",
            empty.display()
        );
        let (_, _, message) = invalid_parts(parse(&source).unwrap_err());
        assert!(message.contains("empty"), "{message}");
    }

    #[test]
    fn limits_are_checked() {
        let (_, key, _) = invalid_parts(parse("[ingest]\nmax_streams = 0\n").unwrap_err());
        assert_eq!(key.as_deref(), Some("ingest.max_streams"));
        let (_, key, _) = invalid_parts(
            parse("[ingest]\nstale_after = \"1h\"\nforget_after = \"1m\"\n").unwrap_err(),
        );
        assert_eq!(key.as_deref(), Some("ingest.forget_after"));
        let (_, key, _) = invalid_parts(
            parse("[listen]\ngrpc = \"0.0.0.0:1\"\nhttp = \"0.0.0.0:1\"\n").unwrap_err(),
        );
        assert_eq!(key.as_deref(), Some("listen.http"));
    }

    const LADDER: &str = "ladder = [\n  { name = \"S\", vcpus = 1, memory_bytes = 2147483648 },\n  { name = \"M\", vcpus = 2, memory_bytes = 4294967296 },\n]\n";

    #[test]
    fn groups_carry_their_policy_and_dry_run_is_the_default() {
        let config = parse(&format!(
            "[[groups]]\nname = \"web\"\nvms = [\"web-1\"]\n{LADDER}max_rung = \"M\"\n[[groups.rules]]\nmetric = \"cpu_utilization\"\nthreshold = 0.9\nfor = \"30s\"\n[groups.scale_down]\nlookback = \"1h\"\n"
        ))
        .unwrap();
        assert!(config.dry_run, "the built-in default must be dry-run");
        assert!(config.actuator.is_none());
        let web = &config.groups[0];
        assert!(web.resizes());
        assert!(web.effective_dry_run(config.dry_run));
        let policy = web.policy();
        assert_eq!(policy.rules[0].hold_for, Duration::from_secs(30));
        assert_eq!(policy.scale_down.lookback, Duration::from_secs(3600));
        assert_eq!(policy.targets, rally_policy::group::default_targets());
        policy.compile().unwrap();
        assert_eq!(config.engine.tick, Duration::from_secs(5));
        // A group without a ladder is monitored only.
        assert!(!parse("[[groups]]\nname = \"db\"\n").unwrap().groups[0].resizes());
    }

    #[test]
    fn policy_errors_name_the_group_key_and_line() {
        let cases = [
            (format!("{LADDER}min_rung = \"XL\"\n"), "groups[0].min_rung", 7),
            (format!("{LADDER}min_rung = \"M\"\nmax_rung = \"S\"\n"), "groups[0].min_rung", 7),
            (
                "ladder = [\n  { name = \"M\", vcpus = 2, memory_bytes = 4294967296 },\n  { name = \"S\", vcpus = 1, memory_bytes = 2147483648 },\n]\n".to_string(),
                "groups[0].ladder",
                3,
            ),
            (
                format!("{LADDER}[[groups.rules]]\nmetric = \"cpu_utilization\"\nthreshold = 0.5\nclear = 0.9\n"),
                "groups[0].rules[0]",
                7,
            ),
            (
                format!("{LADDER}[groups.scale_down]\ncpu_ceiling = 2.0\n"),
                "groups[0].scale_down.cpu_ceiling",
                8,
            ),
        ];
        for (policy, want_key, want_line) in cases {
            let source = format!("[[groups]]\nname = \"web\"\n{policy}");
            let err = parse(&source).unwrap_err();
            let text = err.to_string();
            let (line, key, _) = invalid_parts(err);
            assert_eq!(key.as_deref(), Some(want_key), "{text}\n{source}");
            assert_eq!(line, Some(want_line), "{text}\n{source}");
        }
        let (line, key, _) = invalid_parts(
            parse(&format!(
                "[[groups]]\nname = \"web\"\n{LADDER}surprise = 1\n"
            ))
            .unwrap_err(),
        );
        assert_eq!(
            (line, key.as_deref()),
            (Some(7), Some("groups[0].surprise"))
        );
    }

    #[test]
    fn live_groups_need_an_actuator() {
        let (_, key, message) = invalid_parts(
            parse(&format!(
                "dry_run = false\n[[groups]]\nname = \"web\"\n{LADDER}"
            ))
            .unwrap_err(),
        );
        assert_eq!(key.as_deref(), Some("dry_run"));
        assert!(message.contains("[actuator]"), "{message}");
        let (line, key, _) = invalid_parts(
            parse(&format!(
                "[[groups]]\nname = \"web\"\n{LADDER}dry_run = false\n"
            ))
            .unwrap_err(),
        );
        assert_eq!((line, key.as_deref()), (Some(7), Some("groups[0].dry_run")));
        let ok = parse(&format!(
            "dry_run = false\n[actuator]\nkind = \"log\"\n[[groups]]\nname = \"web\"\n{LADDER}"
        ))
        .unwrap();
        assert!(!ok.groups[0].effective_dry_run(ok.dry_run));
        let (_, key, _) = invalid_parts(
            parse("[actuator]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret_file = \"/nonexistent/secret\"\n").unwrap_err(),
        );
        assert_eq!(key.as_deref(), Some("actuator.secret_file"));
        let (_, key, _) =
            invalid_parts(parse("[api]\ntoken_file = \"/nonexistent/token\"\n").unwrap_err());
        assert_eq!(key.as_deref(), Some("api.token_file"));
    }

    /// The packaged `/etc/rally/collector.toml`.
    const SHIPPED: &str = include_str!("../../packaging/collector/collector.toml");

    /// Commented-out example lines made live: one leading `#` removed from each line.
    fn uncomment(block: &str) -> String {
        block
            .lines()
            .map(|l| l.strip_prefix('#').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn shipped_file_parses_and_is_the_built_in_defaults() {
        let config = parse(SHIPPED).unwrap();
        assert_eq!(config, Config::default());
        assert!(config.dry_run, "the shipped mode is dry-run");
    }

    #[test]
    fn shipped_examples_are_valid_when_uncommented() {
        let groups = SHIPPED
            .find("#[[groups]]")
            .map(|i| uncomment(&SHIPPED[i..]))
            .unwrap();
        let config = parse(&groups).unwrap();
        let names: Vec<_> = config.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert!(!config.groups[0].resizes());
        let web = config.groups[1].policy();
        let compiled = web.compile().unwrap();
        // Every key but the ladder and its bounds is written with its default.
        let defaults = GroupPolicy::with_ladder(web.ladder.clone());
        assert_eq!(web.rules, defaults.rules);
        assert_eq!(web.scale_up, defaults.scale_up);
        assert_eq!(web.scale_down, defaults.scale_down);
        assert_eq!(
            (
                web.timezone,
                web.warm_up,
                web.circuit_breaker,
                web.allow_restart
            ),
            (
                defaults.timezone,
                defaults.warm_up,
                defaults.circuit_breaker,
                defaults.allow_restart
            )
        );
        assert_eq!(web.targets.len(), 1);
        assert_eq!(web.targets[0].metric, defaults.targets[0].metric);
        assert_eq!(
            web.targets[0].target_value(),
            defaults.targets[0].target_value()
        );
        assert_eq!(web.boosts.len(), 1);
        drop(compiled);

        let api = SHIPPED.find("#[api]").map(|i| &SHIPPED[i..]).unwrap();
        let api = uncomment(&api[..api.find("\n\n").unwrap()]);
        let token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token.path(), "api-token\n").unwrap();
        let api = api.replace("/etc/rally/api.token", &token.path().display().to_string());
        assert_eq!(
            parse(&api).unwrap().api.token_file.as_deref(),
            Some(token.path())
        );

        // Each [actuator] example is an actuator of its kind.
        let blocks: Vec<&str> = SHIPPED.split("#[actuator]\n").skip(1).collect();
        assert_eq!(blocks.len(), 3, "webhook, command and log examples");
        for (block, kind) in blocks.iter().zip(["webhook", "command", "log"]) {
            let body: String = block
                .lines()
                .take_while(|l| l.starts_with('#') && *l != "#")
                .map(|l| format!("{}\n", &l[1..]))
                .collect();
            let actuator: ActuatorConfig =
                toml::from_str(&body).unwrap_or_else(|e| panic!("{kind} example:\n{body}\n{e}"));
            let shown = format!("{actuator:?}").to_lowercase();
            assert!(shown.starts_with(kind), "{kind}: {shown}");
        }
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = Config::load(Path::new("/nonexistent/collector.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/collector.toml"),
            "{err}"
        );
    }
}
