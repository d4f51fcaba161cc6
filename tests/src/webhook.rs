//! A real HTTP server on loopback that receives Rally's resize webhooks: it checks each
//! request's HMAC-SHA256 signature, records what arrived and when, and answers with
//! scripted statuses (then 200). Like the actuators the docs describe, it refuses with
//! 409 a request whose `X-Rally-Fencing-Token` is lower than the highest it has seen:
//! a collector whose leadership has ended cannot resize behind its successor's back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `X-Rally-Attempt` header.
    pub attempt: Option<String>,
    /// The `X-Rally-Fencing-Token` header, parsed (a header that is not a number is
    /// refused with 400).
    pub fencing_token: Option<u64>,
    /// Whether `X-Rally-Signature` is the HMAC-SHA256 of the body with the secret.
    pub signature_ok: bool,
    /// The body, parsed.
    pub body: serde_json::Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Clone)]
struct Shared {
    secret: Vec<u8>,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    /// The highest fencing token of a signed request so far.
    highest_token: Arc<Mutex<Option<u64>>>,
}

/// The receiver; stops when dropped.
pub struct Webhook {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Starts a receiver for `secret` that answers `script` in order, then 200.
    pub async fn start(secret: &str, script: &[u16]) -> Webhook {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), secret, script).await
    }

    /// As [`Webhook::start`], listening on `addr` (an address of a test network's
    /// bridge on this machine, say; port 0 picks one).
    pub async fn start_on(addr: SocketAddr, secret: &str, script: &[u16]) -> Webhook {
        let shared = Shared {
            secret: secret.as_bytes().to_vec(),
            received: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            highest_token: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the webhook receiver on {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("webhook receiver");
        });
        Webhook { addr, shared, task }
    }

    /// The URL the collector posts to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&s.secret).expect("any key length");
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let signature_ok = header("x-rally-signature").is_some_and(|sig| sig == expected);
    let token_header = header("x-rally-fencing-token");
    let fencing_token = token_header.as_deref().and_then(|t| t.parse::<u64>().ok());
    let status = if !signature_ok {
        401
    } else if token_header.is_some() && fencing_token.is_none() {
        400
    } else if is_fenced(&s.highest_token, fencing_token) {
        409
    } else {
        s.script.lock().expect("lock").pop_front().unwrap_or(200)
    };
    s.received.lock().expect("lock").push(Received {
        at,
        idempotency_key: header("idempotency-key"),
        attempt: header("x-rally-attempt"),
        fencing_token,
        signature_ok,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Whether `token` is lower than the highest seen; otherwise it becomes the highest.
fn is_fenced(highest: &Mutex<Option<u64>>, token: Option<u64>) -> bool {
    let Some(token) = token else {
        return false;
    };
    let mut highest = highest.lock().expect("lock");
    if highest.is_some_and(|h| token < h) {
        return true;
    }
    *highest = Some(token);
    false
}
