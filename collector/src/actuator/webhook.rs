//! The webhook actuator: POSTs the request as JSON, signed with HMAC-SHA256, retrying
//! 5xx, time-outs and connection errors with exponential backoff and jitter; a 4xx is
//! final.
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: <id>` (the same on every
//! retry), `X-Rally-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>`,
//! `X-Rally-Attempt: <n>`, `X-Rally-Fencing-Token: <token>` (the body's
//! `fencing_token`: the leader's term with `[ha]`, 0 without).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{
    Actuator, ActuatorError, AttemptLog, AttemptResult, BoxFuture, ResizeRequest, Verdict, backoff,
    excerpt,
};

/// Bytes of a response body kept in the attempt record.
const BODY_EXCERPT: usize = 512;

/// `[actuator]` with `kind = "webhook"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (http or https).
    pub url: String,
    /// File holding the HMAC secret (surrounding whitespace is ignored; one line).
    pub secret_file: PathBuf,
    /// Time-out of one attempt, connection to response ("10s").
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts in all, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles each time, ±20 % jitter.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}

/// Signs `body` with `secret`: the value of `X-Rally-Signature`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook actuator.
#[derive(Debug)]
pub struct Webhook {
    config: WebhookConfig,
    url: reqwest::Url,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl Webhook {
    /// Reads the secret and builds the client.
    pub fn new(config: WebhookConfig) -> Result<Self, ActuatorError> {
        let secret = rally_daemon::secret::read("actuator.secret_file", &config.secret_file)?
            .expose()
            .as_bytes()
            .to_vec();
        let url_err = |reason: String| ActuatorError::Url {
            url: config.url.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&config.url).map_err(|e| url_err(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(url_err("only http and https are supported".into()));
        }
        if config.max_attempts == 0 {
            return Err(ActuatorError::Invalid {
                key: "max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        let client = reqwest::Client::builder()
            // A redirect would turn the POST into a GET; a moved endpoint is a config error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rally-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ActuatorError::Client(e.to_string()))?;
        Ok(Self {
            config,
            url,
            secret,
            client,
        })
    }

    async fn attempt(
        &self,
        request: &ResizeRequest,
        body: &[u8],
        sig: &str,
        number: u32,
    ) -> AttemptResult {
        let sent = self
            .client
            .post(self.url.clone())
            .timeout(self.config.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &request.id)
            .header("X-Rally-Signature", sig)
            .header("X-Rally-Attempt", number.to_string())
            .header("X-Rally-Fencing-Token", request.fencing_token.to_string())
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                let mut kept = Vec::new();
                // Keep the start of the body; stop reading once we have enough.
                while kept.len() < BODY_EXCERPT {
                    match resp.chunk().await {
                        Ok(Some(c)) => kept.extend_from_slice(&c),
                        Ok(None) | Err(_) => break,
                    }
                }
                AttemptResult::Status {
                    code,
                    body: excerpt(&kept, BODY_EXCERPT),
                }
            }
            Err(e) if e.is_timeout() => AttemptResult::Timeout,
            Err(e) => AttemptResult::Transport {
                error: error_chain(&e),
            },
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

impl Actuator for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(
        &'a self,
        request: &'a ResizeRequest,
        attempts: &'a mut AttemptLog,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let body = match serde_json::to_vec(request) {
                Ok(b) => b,
                Err(e) => {
                    let reason = format!("serializing the request: {e}");
                    return Verdict::Rejected { reason };
                }
            };
            let sig = signature(&self.secret, &body);
            // `max_attempts` bounds this send; the numbers go on from those an earlier
            // run of the collector made for the same request.
            for tried in 1..=self.config.max_attempts {
                let number = attempts.next_number();
                let started_at = chrono::Utc::now();
                let t0 = Instant::now();
                let result = self.attempt(request, &body, &sig, number).await;
                tracing::info!(id = %request.id, vm = %request.vm, attempt = number, ?result, "webhook attempt");
                attempts
                    .record(started_at, t0.elapsed(), result.clone())
                    .await;
                let failure = match result {
                    AttemptResult::Status { code, .. } if (200..300).contains(&code) => {
                        return Verdict::Accepted;
                    }
                    AttemptResult::Status { code, body } if code < 500 => {
                        let reason = format!("webhook answered {code}: {body}");
                        return Verdict::Rejected { reason };
                    }
                    AttemptResult::Status { code, .. } => format!("webhook answered {code}"),
                    AttemptResult::Timeout => format!(
                        "no answer within {}",
                        humantime::format_duration(self.config.timeout)
                    ),
                    AttemptResult::Transport { error } => error,
                    other => format!("{other:?}"),
                };
                if tried == self.config.max_attempts {
                    let reason = format!("{failure} (after {tried} attempts)");
                    return Verdict::GaveUp { reason };
                }
                tokio::time::sleep(backoff(
                    self.config.backoff_initial,
                    self.config.backoff_max,
                    tried,
                ))
                .await;
            }
            Verdict::GaveUp {
                reason: "no attempt was made".to_owned(),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};

    use super::*;
    use crate::actuator::tests::{request, send};

    const SECRET: &str = "s3cret-for-tests";

    /// What the test server saw: (Idempotency-Key, X-Rally-Attempt, body).
    type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

    /// A real HTTP server on a loopback port that checks the signature and answers
    /// `script[n]` to the n-th request (the last entry repeats). A status of 0 means
    /// "sleep 2 s, then 200" (a slow receiver).
    async fn server(script: Vec<u16>) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let state = (seen.clone(), Arc::new(script));
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State((seen, script)): State<(Seen, Arc<Vec<u16>>)>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let header = |k: &str| {
                            headers
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        if header("x-rally-signature") != signature(SECRET.as_bytes(), &body) {
                            return StatusCode::UNAUTHORIZED;
                        }
                        // The header repeats the body's token, for receivers that
                        // fence before they parse.
                        let token = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["fencing_token"].as_u64());
                        if token.map(|t| t.to_string()) != Some(header("x-rally-fencing-token")) {
                            return StatusCode::BAD_REQUEST;
                        }
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((
                                header("idempotency-key"),
                                header("x-rally-attempt"),
                                body.to_vec(),
                            ));
                            seen.len() - 1
                        };
                        let code = script[n.min(script.len() - 1)];
                        if code == 0 {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            return StatusCode::OK;
                        }
                        StatusCode::from_u16(code).unwrap()
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), seen)
    }

    fn webhook(url: &str, dir: &tempfile::TempDir, timeout: Duration) -> Webhook {
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        Webhook::new(WebhookConfig {
            url: url.into(),
            secret_file,
            timeout,
            max_attempts: 5,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
        })
        .unwrap()
    }

    fn statuses(o: &crate::actuator::tests::Sent) -> Vec<String> {
        o.attempts
            .iter()
            .map(|a| match &a.result {
                AttemptResult::Status { code, .. } => code.to_string(),
                AttemptResult::Timeout => "timeout".into(),
                AttemptResult::Transport { .. } => "transport".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn two_500s_then_200_is_three_attempts_with_one_id_and_one_body() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = server(vec![500, 500, 200]).await;
        let req = request();
        let outcome = send(&webhook(&url, &dir, Duration::from_secs(5)), &req).await;
        assert_eq!(outcome.verdict, Verdict::Accepted);
        assert_eq!(statuses(&outcome), ["500", "500", "200"]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|(key, _, _)| *key == req.id),
            "one Idempotency-Key"
        );
        assert!(
            seen.iter().all(|(_, _, body)| *body == seen[0].2),
            "the same body bytes every time"
        );
        assert_eq!(
            seen.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        let body: ResizeRequest = serde_json::from_slice(&seen[0].2).unwrap();
        assert_eq!(body, req);
    }

    #[tokio::test]
    async fn a_4xx_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = server(vec![400]).await;
        let outcome = send(&webhook(&url, &dir, Duration::from_secs(5)), &request()).await;
        assert!(
            matches!(outcome.verdict, Verdict::Rejected { ref reason } if reason.contains("400"))
        );
        assert_eq!(statuses(&outcome), ["400"]);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_by_the_receiver_and_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = server(vec![200]).await;
        let mut hook = webhook(&url, &dir, Duration::from_secs(5));
        hook.secret = b"not-the-secret".to_vec();
        let outcome = send(&hook, &request()).await;
        assert_eq!(statuses(&outcome), ["401"]);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_slow_receiver_times_out_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = server(vec![0, 200]).await;
        let outcome = send(&webhook(&url, &dir, Duration::from_millis(300)), &request()).await;
        assert_eq!(outcome.verdict, Verdict::Accepted);
        assert_eq!(statuses(&outcome), ["timeout", "200"]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn persistent_5xx_gives_up_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = server(vec![503]).await;
        let outcome = send(&webhook(&url, &dir, Duration::from_secs(5)), &request()).await;
        assert!(
            matches!(outcome.verdict, Verdict::GaveUp { ref reason } if reason.contains("503") && reason.contains("5 attempts"))
        );
        assert_eq!(outcome.attempts.len(), 5);
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_given_up() {
        let dir = tempfile::tempdir().unwrap();
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let outcome = send(
            &webhook(
                &format!("http://127.0.0.1:{port}/hook"),
                &dir,
                Duration::from_secs(1),
            ),
            &request(),
        )
        .await;
        assert!(matches!(outcome.verdict, Verdict::GaveUp { .. }));
        assert_eq!(statuses(&outcome), ["transport"; 5]);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let cfg = |url: &str, secret_file: PathBuf| WebhookConfig {
            url: url.into(),
            secret_file,
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        };
        let Err(ActuatorError::SecretFile(e)) = Webhook::new(cfg("http://x/", empty.clone()))
        else {
            panic!("an empty secret file must be refused")
        };
        assert_eq!(e.key, "actuator.secret_file");
        assert!(e.to_string().contains("empty"), "{e}");
        let good = dir.path().join("good");
        std::fs::write(&good, "k").unwrap();
        assert!(matches!(
            Webhook::new(cfg("ftp://x/", good.clone())),
            Err(ActuatorError::Url { .. })
        ));
        assert!(matches!(
            Webhook::new(cfg("not a url", good.clone())),
            Err(ActuatorError::Url { .. })
        ));
        let mut no_attempts = cfg("https://hooks.example/rally", good.clone());
        no_attempts.max_attempts = 0;
        let err = Webhook::new(no_attempts).unwrap_err();
        assert!(
            matches!(
                err,
                ActuatorError::Invalid {
                    key: "max_attempts",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains("url"), "{err}");
        assert!(Webhook::new(cfg("https://hooks.example/rally", good)).is_ok());
    }
}
