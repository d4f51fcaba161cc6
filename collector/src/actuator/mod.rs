//! Actuators send a decided resize somewhere that can carry it out: a cloud's API
//! (Oktawave), a signed webhook, a local command, or the log only (what dry-run uses).
//!
//! - `oktawave`: changes the Oktawave instance type and follows the ticket to its end.
//! - `webhook`: POSTs the SPEC's JSON body, HMAC-signed, with retries and backoff.
//! - `command`: runs a program with the request on stdin and in `RALLY_*` variables.
//! - `log`: records the request and accepts it.
//!
//! Actuators run on the engine's task, never on the ingest path. Each returns an
//! [`Outcome`] listing every attempt, which the caller records in the store.

pub mod command;
pub mod log;
pub mod oktawave;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use rally_policy::Timestamp;
use rally_policy::decision::{Decision, Direction, Evidence, SizedRung, Trigger};

pub use command::{Command, CommandConfig};
pub use log::LogActuator;
pub use oktawave::{Oktawave, OktawaveConfig};
pub use webhook::{Webhook, WebhookConfig};

/// The request every actuator sends: the webhook's JSON body, the command's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResizeRequest {
    /// Unique id, also the `Idempotency-Key` header; the same on every retry and after a
    /// collector restart.
    pub id: String,
    /// The VM to resize.
    pub vm: String,
    /// Its group.
    pub group: String,
    /// `up` or `down`.
    pub direction: Direction,
    /// The size it is on.
    pub from: SizedRung,
    /// The size requested.
    pub to: SizedRung,
    /// What caused it (`rule`, `target`, `boost`, `scale_down`, `manual`, ...).
    pub trigger: Trigger,
    /// A sentence for humans.
    pub reason: String,
    /// The metric values, windows and rules behind it.
    pub evidence: Vec<Evidence>,
    /// When true the receiver must not act (only the log actuator sees these normally).
    pub dry_run: bool,
    /// When the decision was made (RFC 3339).
    pub created_at: Timestamp,
    /// When the resize fails if the agent has not reported the new size (RFC 3339);
    /// actuators that follow a cloud operation stop waiting for it then.
    pub verify_deadline: Timestamp,
    /// The leader's fencing token (0 without high availability); receivers may reject
    /// a token lower than one they have seen.
    pub fencing_token: u64,
}

impl ResizeRequest {
    /// The request for `decision`, carrying `fencing_token`.
    pub fn new(decision: &Decision, fencing_token: u64) -> Self {
        Self {
            id: decision.id.clone(),
            vm: decision.vm.clone(),
            group: decision.group.clone(),
            direction: decision.direction,
            from: decision.from.clone(),
            to: decision.to.clone(),
            trigger: decision.trigger,
            reason: decision.reason.clone(),
            evidence: decision.evidence.clone(),
            dry_run: decision.dry_run,
            created_at: decision.created_at,
            verify_deadline: decision.verify_deadline,
            fencing_token,
        }
    }
}

/// What one attempt to deliver a request came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptResult {
    /// The receiver answered with this HTTP status.
    Status {
        /// HTTP status code.
        code: u16,
        /// The start of the response body (bounded).
        body: String,
    },
    /// No answer within the per-attempt time-out.
    Timeout,
    /// Connecting or talking to the receiver failed.
    Transport {
        /// The error.
        error: String,
    },
    /// The command exited.
    Exited {
        /// Exit code (`None` if killed by a signal).
        code: Option<i32>,
        /// The start of its stdout (bounded).
        stdout: String,
        /// The start of its stderr (bounded).
        stderr: String,
    },
    /// The command could not be started.
    SpawnFailed {
        /// The error.
        error: String,
    },
    /// Recorded only (log actuator).
    Logged,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it started.
    pub started_at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// What it came to.
    pub result: AttemptResult,
}

/// The final word on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Accepted (2xx, exit 0, or logged); verification follows.
    Accepted,
    /// Refused for good (4xx, non-zero exit): retrying would not help.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Every attempt failed (5xx, time-outs, connection errors) up to the limit.
    GaveUp {
        /// The last failure.
        reason: String,
    },
}

impl Verdict {
    /// `accepted`, `rejected` or `gave_up` (the `outcome` label of
    /// `rally_resize_requests_total`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected { .. } => "rejected",
            Verdict::GaveUp { .. } => "gave_up",
        }
    }
}

/// The verdict and every attempt behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The final word.
    pub verdict: Verdict,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
}

/// A boxed future, so actuators can be chosen at run time (`Box<dyn Actuator>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that carries out resize requests.
pub trait Actuator: Send + Sync {
    /// `webhook`, `command` or `log`.
    fn kind(&self) -> &'static str;
    /// Delivers `request`, retrying as the actuator's config says; never panics and always
    /// returns an outcome (errors are outcomes).
    fn send<'a>(&'a self, request: &'a ResizeRequest) -> BoxFuture<'a, Outcome>;
}

/// Why an actuator could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    /// The webhook secret file could not be read.
    #[error("reading webhook secret_file {path}: {source}")]
    Secret {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The secret file is empty.
    #[error("webhook secret_file {0} is empty")]
    EmptySecret(std::path::PathBuf),
    /// The URL does not parse or is not http(s).
    #[error("webhook url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built (TLS roots).
    #[error("building the HTTP client: {0}")]
    Client(String),
    /// The command config is unusable.
    #[error("command: {0}")]
    Command(String),
    /// The Oktawave actuator cannot start (config, API, or ladder resolution).
    #[error("oktawave: {0}")]
    Oktawave(String),
    /// A secret file named by an actuator key cannot be used (the error names the key).
    #[error(transparent)]
    SecretFile(#[from] rally_daemon::secret::SecretError),
}

/// `[actuator]` in `collector.toml`: which actuator sends resize requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActuatorConfig {
    /// A signed webhook.
    Webhook(WebhookConfig),
    /// A local program.
    Command(CommandConfig),
    /// Oktawave's API (instance type change tickets).
    Oktawave(OktawaveConfig),
    /// Record only.
    Log {},
}

impl ActuatorConfig {
    /// Builds an actuator that needs nothing but its config (reads the webhook secret
    /// now, so a bad path fails at start-up, not at the first resize). Oktawave needs the
    /// API and the state store: it is built by [`start`].
    pub fn build(&self) -> Result<Box<dyn Actuator>, ActuatorError> {
        Ok(match self {
            ActuatorConfig::Webhook(c) => Box::new(Webhook::new(c.clone())?),
            ActuatorConfig::Command(c) => Box::new(Command::new(c.clone())?),
            ActuatorConfig::Oktawave(_) => {
                return Err(ActuatorError::Oktawave(
                    "built at start with the API and the state store (actuator::start)".into(),
                ));
            }
            ActuatorConfig::Log {} => Box::new(LogActuator),
        })
    }

    /// Checks what can be checked without the network: secret files, URLs, bounds.
    pub fn check(&self) -> Result<(), ActuatorError> {
        match self {
            ActuatorConfig::Oktawave(c) => Oktawave::new(c.clone()).map(drop),
            other => other.build().map(drop),
        }
    }
}

/// Builds the configured actuator for a starting collector (the log actuator without
/// one). For Oktawave this asks the API for its instance types and resolves every
/// group's ladder in `config` to them (refusing to start on an unknown type), and opens
/// the ticket store in the state directory.
pub async fn start(config: &mut crate::config::Config) -> Result<Arc<dyn Actuator>, ActuatorError> {
    Ok(match &config.actuator {
        None => Arc::new(LogActuator),
        Some(ActuatorConfig::Oktawave(c)) => {
            let store = crate::store::Store::open(&config.state.dir)
                .map_err(|e| ActuatorError::Oktawave(format!("ticket store: {e}")))?;
            let mut oktawave = Oktawave::new(c.clone())?.with_store(store);
            let mut ladders: Vec<oktawave::GroupLadder<'_>> = config
                .groups
                .iter_mut()
                .filter(|g| g.resizes())
                .map(|g| oktawave::GroupLadder {
                    group: &g.name,
                    vms: &g.vms,
                    ladder: &mut g.ladder,
                })
                .collect();
            oktawave.resolve(&mut ladders).await?;
            // The policies are compiled again with Oktawave's sizes.
            for g in config.groups.iter().filter(|g| g.resizes()) {
                g.policy().compile().map_err(|e| {
                    ActuatorError::Oktawave(format!(
                        "group `{}`: with Oktawave's sizes the policy is invalid: {e}",
                        g.name
                    ))
                })?;
            }
            Arc::new(oktawave)
        }
        Some(other) => Arc::from(other.build()?),
    })
}

/// Exponential backoff with ±20 % jitter: `initial × 2^(attempt−1)`, capped at `max`.
/// `attempt` is the number of the attempt that just failed (1-based).
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    base.mul_f64(rand::random_range(0.8..=1.2))
}

/// The first `limit` bytes of `bytes` as text (lossy), so records stay bounded.
pub(crate) fn excerpt(bytes: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
pub(crate) mod tests {
    use super::*;
    use rally_policy::decision::Baseline;

    /// A request as the engine would build it.
    pub(crate) fn request() -> ResizeRequest {
        let t: Timestamp = "2026-01-15T10:04:00Z".parse().unwrap();
        let d = Decision {
            id: "0b6c2c7a-8a51-8f3e-9d2c-3f1a5e7b9c01".into(),
            group: "web".into(),
            vm: "web-1".into(),
            direction: Direction::Up,
            from: SizedRung {
                rung: "M".into(),
                vcpus: 2,
                memory_bytes: 4 << 30,
            },
            to: SizedRung {
                rung: "L".into(),
                vcpus: 4,
                memory_bytes: 8 << 30,
            },
            trigger: Trigger::Rule,
            reason: "rule held: cpu_utilization 1m >= 0.8 for 3m, clears < 0.55".into(),
            evidence: vec![Evidence {
                metric: rally_policy::Metric::CpuUtilization,
                window: "1m".into(),
                value: 0.92,
                threshold: 0.8,
                comparison: ">=".into(),
                rule: "cpu_utilization 1m >= 0.8 for 3m, clears < 0.55".into(),
                held_for_seconds: Some(180),
            }],
            dry_run: false,
            created_at: t,
            verify_deadline: t + chrono::Duration::minutes(5),
            baseline: Baseline {
                vcpus: 2,
                memory_total_bytes: (4 << 30) - (150 << 20),
            },
        };
        ResizeRequest::new(&d, 7)
    }

    #[test]
    fn the_request_body_has_the_spec_fields() {
        let v: serde_json::Value = serde_json::to_value(request()).unwrap();
        for key in [
            "id",
            "vm",
            "group",
            "direction",
            "from",
            "to",
            "reason",
            "evidence",
            "dry_run",
            "created_at",
            "fencing_token",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["direction"], "up");
        assert_eq!(v["from"]["vcpus"], 2);
        assert_eq!(v["to"]["memory_bytes"], 8u64 << 30);
        assert_eq!(v["created_at"], "2026-01-15T10:04:00Z");
        assert_eq!(v["fencing_token"], 7);
        assert_eq!(v["evidence"][0]["metric"], "cpu_utilization");
        let back: ResizeRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, request());
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let d1 = backoff(i, m, 1);
            assert!(
                d1 >= Duration::from_millis(80) && d1 <= Duration::from_millis(120),
                "{d1:?}"
            );
            let d3 = backoff(i, m, 3);
            assert!(
                d3 >= Duration::from_millis(320) && d3 <= Duration::from_millis(480),
                "{d3:?}"
            );
            let d9 = backoff(i, m, 9);
            assert!(
                d9 >= Duration::from_millis(800) && d9 <= Duration::from_millis(1200),
                "{d9:?}"
            );
        }
    }

    #[test]
    fn actuator_config_is_tagged_by_kind() {
        let c: ActuatorConfig = toml::from_str("kind = \"log\"").unwrap();
        assert_eq!(c, ActuatorConfig::Log {});
        let w: ActuatorConfig = toml::from_str(
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret_file = \"/nonexistent\"",
        )
        .unwrap();
        assert!(matches!(w, ActuatorConfig::Webhook(_)));
        assert!(matches!(w.build(), Err(ActuatorError::Secret { .. })));
        assert!(toml::from_str::<ActuatorConfig>("kind = \"log\"\nextra = 1").is_err());
    }
}
