//! Actuators send a decided resize somewhere that can carry it out: a cloud's API
//! (Oktawave), a signed webhook, a local command, or the log only (what dry-run uses).
//!
//! - `oktawave`: changes the Oktawave instance type and follows the ticket to its end.
//! - `webhook`: POSTs the request as JSON ([`ResizeRequest`]), HMAC-signed, with retries
//!   and backoff.
//! - `command`: runs a program with the request on stdin and in `RALLY_*` variables.
//! - `log`: records the request and accepts it.
//!
//! Actuators run on the engine's dispatcher tasks, never on the ingest path. Each reports
//! every attempt through an [`AttemptLog`] as soon as it is over (the engine stores it
//! at once) and returns the [`Verdict`].

pub mod command;
pub mod log;
pub mod oktawave;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::request::{Attempt, AttemptLog, AttemptResult, ResizeRequest, Verdict};

pub use command::{CommandActuator, CommandConfig};
pub use log::LogActuator;
pub use oktawave::{Oktawave, OktawaveConfig};
pub use webhook::{Webhook, WebhookConfig};

/// A boxed future, so actuators can be chosen at run time (`Box<dyn Actuator>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that carries out resize requests.
pub trait Actuator: Send + Sync {
    /// `webhook`, `command` or `log`.
    fn kind(&self) -> &'static str;
    /// Delivers `request`, retrying as the actuator's config says, and records each
    /// attempt in `attempts` as soon as it is over; never panics and always returns a
    /// verdict (errors are verdicts).
    fn send<'a>(
        &'a self,
        request: &'a ResizeRequest,
        attempts: &'a mut AttemptLog,
    ) -> BoxFuture<'a, Verdict>;
}

/// Why an actuator could not be built from its config. Each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    /// A secret file named by an actuator key cannot be used (the error names key and file).
    #[error(transparent)]
    SecretFile(#[from] rally_daemon::secret::SecretError),
    /// A URL does not parse or is not http(s).
    #[error("url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Another key of `[actuator]` is out of range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key below `actuator.` (`max_attempts`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built (TLS roots).
    #[error("building the HTTP client: {0}")]
    Client(String),
    /// The Oktawave actuator cannot start (config, API, or ladder resolution).
    #[error("oktawave: {0}")]
    Oktawave(String),
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
    /// API and the state store: it is built by the collector's start-up wiring.
    pub fn build(&self) -> Result<Box<dyn Actuator>, ActuatorError> {
        Ok(match self {
            ActuatorConfig::Webhook(c) => Box::new(Webhook::new(c.clone())?),
            ActuatorConfig::Command(c) => Box::new(CommandActuator::new(c.clone())?),
            ActuatorConfig::Oktawave(_) => {
                return Err(ActuatorError::Oktawave(
                    "built at start with the API and the state store".into(),
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
    use rally_policy::Timestamp;
    use rally_policy::decision::{Baseline, Decision, Direction, Evidence, SizedRung, Trigger};

    /// What one send came to: the verdict and the attempts it recorded.
    #[derive(Debug)]
    pub(crate) struct Sent {
        pub(crate) verdict: Verdict,
        pub(crate) attempts: Vec<Attempt>,
    }

    /// Sends `request` through `actuator` with a log that numbers from 1.
    pub(crate) async fn send(actuator: &dyn Actuator, request: &ResizeRequest) -> Sent {
        let mut log = AttemptLog::default();
        let verdict = actuator.send(request, &mut log).await;
        Sent {
            verdict,
            attempts: log.made().to_vec(),
        }
    }

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
                forecast: None,
            }],
            dry_run: false,
            created_at: t,
            verify_deadline: t + chrono::Duration::minutes(5),
            baseline: Baseline {
                vcpus: 2,
                memory_total_bytes: (4 << 30) - (150 << 20),
            },
        };
        ResizeRequest::new(&d, 7, t)
    }

    #[test]
    fn the_request_body_has_the_documented_fields() {
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
        assert!(matches!(w.build(), Err(ActuatorError::SecretFile(_))));
        assert!(toml::from_str::<ActuatorConfig>("kind = \"log\"\nextra = 1").is_err());
    }
}
