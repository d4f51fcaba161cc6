//! A real HTTP server on loopback that receives Rally's resize webhooks: it checks each
//! request's HMAC-SHA256 signature, records what arrived and when, and answers with
//! scripted statuses (then 200).

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
        let shared = Shared {
            secret: secret.as_bytes().to_vec(),
            received: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
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
    let status = if signature_ok {
        s.script.lock().expect("lock").pop_front().unwrap_or(200)
    } else {
        401
    };
    s.received.lock().expect("lock").push(Received {
        at,
        idempotency_key: header("idempotency-key"),
        attempt: header("x-rally-attempt"),
        signature_ok,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
