//! The sections of `collector.toml` other than `[[groups]]` and `[actuator]`, whose
//! types belong to the policy and to the actuator kinds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[api]`: who may call the mutating endpoints (`pause`, `resume`, `resize`).
///
/// With `token_file`, every mutating request needs `Authorization: Bearer <token>`.
/// Without it, mutating requests are accepted only from loopback peers: an HTTP listener
/// opened to the network for Prometheus must not let anyone who can scrape also spend
/// money. Read-only endpoints stay open, like
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
    /// Connections open at once on each port; one more is accepted and closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A new connection must send its first request headers (HTTP) or the HTTP/2
    /// preface (gRPC) within this long, and an HTTP keep-alive connection its next
    /// request's headers; otherwise it is closed.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A gRPC connection without an agent stream for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

// Loopback by default: a fresh install accepts no report and shows no fleet to the
// network until the admin opens the listeners, with authentication (docs/security.md).
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9470))
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9471))
}

fn default_max_connections() -> usize {
    16_384
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
            max_connections: default_max_connections(),
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
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
    /// At most this many streams at once for one VM (an agent run needs one; a few
    /// cover a reconnect while the old connection is not yet known dead).
    #[serde(default = "default_max_streams_per_vm")]
    pub max_streams_per_vm: usize,
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

fn default_max_streams_per_vm() -> usize {
    4
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
            max_streams_per_vm: default_max_streams_per_vm(),
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
    /// Every stream comes over TLS with a client certificate (`tls.client_ca_file`)
    /// whose URI SAN `rally://vm/<id>` names its VM.
    Certificate,
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
    /// Accept tokens sent in clear from a non-loopback peer (gRPC without `[tls]`).
    /// Off: such streams are refused, since anyone on the path could copy the token.
    #[serde(default)]
    pub allow_plaintext_tokens: bool,
}

/// `[tls]`: the certificate of the gRPC listener (and of the HTTP one with `http`).
/// Without the section, both listeners speak plaintext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain, PEM (leaf first).
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Agents must present a certificate signed by one of these CAs (PEM); needed by
    /// `auth.mode = "certificate"`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Serve `/metrics`, the API and the status page over HTTPS too, with the same
    /// certificate (no client certificate is asked for there).
    #[serde(default)]
    pub http: bool,
}

impl TlsConfig {
    /// The files, for [`crate::tls::ServerTls::load`].
    pub fn files(&self) -> crate::tls::TlsFiles<'_> {
        crate::tls::TlsFiles {
            cert: &self.cert_file,
            key: &self.key_file,
            client_ca: self.client_ca_file.as_deref(),
            http: self.http,
        }
    }
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

/// `[ha]`: several collectors, one leader, elected through etcd. With this section the
/// collector campaigns in etcd's election service; only the leader evaluates policy and
/// actuates, every collector ingests and serves `/metrics` and the API, and the decision
/// state lives in etcd instead of `[state] dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// The etcd members' client URLs (`http://host:2379`); every call goes to one that
    /// answers.
    pub etcd: Vec<String>,
    /// This collector's name in the election; unset, the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// This collector's HTTP URL, which followers give API callers as the leader's;
    /// unset, `http://<listen.http>` (set it when that address is `0.0.0.0`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The lease's time to live: a leader that cannot renew it for this long stops
    /// actuating, and another collector takes over after it.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Every call to etcd gives up after this long (the campaign itself waits).
    #[serde(default = "default_etcd_timeout", with = "humantime_serde")]
    pub etcd_timeout: Duration,
    /// The prefix of Rally's keys in etcd: the election is `<prefix>/leader`, the
    /// decision state `<prefix>/state/`. Collectors of one fleet share it.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The CA that signed the members' certificates (PEM): needed by `https://`
    /// endpoints, refused with `http://` ones.
    #[serde(default)]
    pub etcd_ca_file: Option<PathBuf>,
    /// This collector's client certificate for etcd (PEM), for members started with
    /// `--client-cert-auth`; with `etcd_key_file`.
    #[serde(default)]
    pub etcd_cert_file: Option<PathBuf>,
    /// The private key of `etcd_cert_file` (PEM).
    #[serde(default)]
    pub etcd_key_file: Option<PathBuf>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_etcd_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_prefix() -> String {
    "/rally".to_owned()
}

/// Why `[ha]`'s TLS files cannot be used: the key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct HaTlsError {
    /// The key (`ha.etcd_ca_file`, ...).
    pub key: &'static str,
    /// What is wrong, with the path.
    pub problem: String,
}

impl HaConfig {
    /// The TLS material for etcd, read now (`None` for `http://` members).
    pub fn tls(&self) -> Result<Option<rally_etcd::Tls>, HaTlsError> {
        let Some(ca_file) = &self.etcd_ca_file else {
            return Ok(None);
        };
        let ca = std::fs::read(ca_file).map_err(|e| HaTlsError {
            key: "ha.etcd_ca_file",
            problem: format!("{}: {e}", ca_file.display()),
        })?;
        let identity = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(cert_file), Some(key_file)) => {
                let cert = std::fs::read(cert_file).map_err(|e| HaTlsError {
                    key: "ha.etcd_cert_file",
                    problem: format!("{}: {e}", cert_file.display()),
                })?;
                let key = std::fs::read(key_file).map_err(|e| HaTlsError {
                    key: "ha.etcd_key_file",
                    problem: format!("{}: {e}", key_file.display()),
                })?;
                Some((cert, key))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(HaTlsError {
                    key: "ha.etcd_key_file",
                    problem: "ha.etcd_cert_file needs its key".into(),
                });
            }
            (None, Some(_)) => {
                return Err(HaTlsError {
                    key: "ha.etcd_cert_file",
                    problem: "ha.etcd_key_file needs its certificate".into(),
                });
            }
        };
        Ok(Some(rally_etcd::Tls { ca, identity }))
    }

    /// The name this collector campaigns under.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        })
    }

    /// The URL followers point API callers to when this collector leads.
    pub fn advertise(&self, listen: &ListenConfig, tls: bool) -> String {
        self.advertise.clone().unwrap_or_else(|| {
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{}", listen.http)
        })
    }
}
