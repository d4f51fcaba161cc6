//! Oktawave's REST API as the actuator calls it: an OAuth2 password-grant token (cached,
//! renewed on a 401), the calls Rally makes, and paged lists read to their end.
//!
//! Each call follows the published Go SDK (`oktawave-code/odk`): `oci_api.go`
//! (`InstancesGetInstancesTypes`, `InstancesGet_0`, `InstancesChangeType_1`) and
//! `tickets_api.go` (`TicketsGet`, `TicketsGet_1`).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::model::{Instance, InstanceType, Page, Ticket};
use crate::actuator::webhook::error_chain;
use crate::actuator::{AttemptResult, excerpt};
use rally_daemon::secret::Secret;

/// A token is renewed this long before Oktawave says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// Bytes of a response body kept in an error or attempt record.
pub(super) const BODY_EXCERPT: usize = 512;
/// Largest response body read (a page of the type list is the largest answer).
const MAX_BODY: usize = 4 << 20;
/// Items asked for per page. The server may answer fewer; pages are followed until
/// `Meta.Total` items are read either way.
pub const PAGE_SIZE: u32 = 1000;
/// A list claiming more items than this is refused rather than paged through.
pub const MAX_LIST_ITEMS: u64 = 20_000;

/// Why one API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// Connecting or talking failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The API answered with a non-2xx status.
    #[error("HTTP {code}: {body}")]
    Status {
        /// HTTP status.
        code: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer is not the JSON expected.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// No token could be had.
    #[error("token: {0}")]
    Token(String),
}

impl CallError {
    /// The attempt record of a call that failed this way.
    pub(super) fn attempt_result(&self) -> AttemptResult {
        match self {
            CallError::Timeout => AttemptResult::Timeout,
            CallError::Status { code, body } => AttemptResult::Status {
                code: *code,
                body: body.clone(),
            },
            other => AttemptResult::Transport {
                error: other.to_string(),
            },
        }
    }

    /// Worth trying again (time-outs, connection errors, 5xx, 429).
    pub(super) fn transient(&self) -> bool {
        match self {
            CallError::Timeout | CallError::Transport(_) | CallError::Token(_) => true,
            CallError::Status { code, .. } => *code >= 500 || *code == 429,
            CallError::Decode(_) => false,
        }
    }
}

/// Where and as whom the client calls.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The identity server (`{id_url}/core/connect/token`).
    pub id_url: String,
    /// The API base path (`https://api.oktawave.com/services`).
    pub api_url: String,
    /// The API client's id.
    pub client_id: String,
    /// The API client's secret.
    pub client_secret: Secret,
    /// The account's user name.
    pub username: String,
    /// The account's password.
    pub password: Secret,
    /// Time-out of one call.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    renew_at: Instant,
}

/// An authenticated Oktawave API client.
pub struct Client {
    endpoint: Endpoint,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api_url", &self.endpoint.api_url)
            .field("id_url", &self.endpoint.id_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `endpoint` (no network yet).
    pub fn new(endpoint: Endpoint) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rally-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            endpoint,
            http,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The API base path in use.
    pub fn api_url(&self) -> &str {
        &self.endpoint.api_url
    }

    async fn bearer(&self, renew: bool) -> Result<String, CallError> {
        let mut cached = self.token.lock().await;
        if !renew
            && let Some(t) = cached.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let e = &self.endpoint;
        let url = format!("{}/core/connect/token", e.id_url.trim_end_matches('/'));
        let form = [
            ("grant_type", "password"),
            ("username", e.username.as_str()),
            ("password", e.password.expose()),
            ("scope", "oktawave.api"),
        ];
        let resp = self
            .http
            .post(url)
            .timeout(e.timeout)
            .basic_auth(&e.client_id, Some(e.client_secret.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| CallError::Token(error_chain(&e)))?;
        let code = resp.status().as_u16();
        let body = read_body(resp)
            .await
            .map_err(|e| CallError::Token(e.to_string()))?;
        if !(200..300).contains(&code) {
            return Err(CallError::Token(format!(
                "HTTP {code}: {}",
                excerpt(&body, BODY_EXCERPT)
            )));
        }
        let token: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| CallError::Token(e.to_string()))?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(0));
        *cached = Some(Token {
            value: token.access_token.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
        });
        Ok(token.access_token)
    }

    /// One call with a bearer token and no body (no Rally call sends one); a 401 renews
    /// the token and tries once more.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<u8>, CallError> {
        let url = format!("{}{path}", self.endpoint.api_url.trim_end_matches('/'));
        let mut renew = false;
        loop {
            let token = self.bearer(renew).await?;
            let resp = self
                .http
                .request(method.clone(), &url)
                .query(query)
                .timeout(self.endpoint.timeout)
                .header(reqwest::header::ACCEPT, "application/json")
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        CallError::Timeout
                    } else {
                        CallError::Transport(error_chain(&e))
                    }
                })?;
            let code = resp.status().as_u16();
            let bytes = read_body(resp).await?;
            if code == 401 && !renew {
                info!(%url, "Oktawave answered 401: renewing the token");
                renew = true;
                continue;
            }
            if !(200..300).contains(&code) {
                return Err(CallError::Status {
                    code,
                    body: excerpt(&bytes, BODY_EXCERPT),
                });
            }
            return Ok(bytes);
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, CallError> {
        let bytes = self.call(method, path, query).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// Every item of a paged list: asks `pageNumber` 1, 2, ... (with `pageSize`) until
    /// `Meta.Total` items are read. Stops early on an empty page, and refuses a total
    /// above [`MAX_LIST_ITEMS`].
    async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, String)],
    ) -> Result<Vec<T>, CallError> {
        let mut items = Vec::new();
        for number in 1u64.. {
            let mut query = filters.to_vec();
            query.push(("pageSize", PAGE_SIZE.to_string()));
            query.push(("pageNumber", number.to_string()));
            let page: Page<T> = self.json(reqwest::Method::GET, path, &query).await?;
            // Without Meta the answer is one page holding everything.
            let total = page.meta.map_or(page.items.len() as u64, |m| m.total);
            if total > MAX_LIST_ITEMS {
                return Err(CallError::Decode(format!(
                    "{path} claims {total} items (Meta.Total); more than {MAX_LIST_ITEMS} is refused"
                )));
            }
            if page.items.is_empty() {
                if (items.len() as u64) < total {
                    warn!(
                        path,
                        page = number,
                        read = items.len(),
                        total,
                        "Oktawave returned an empty page before Meta.Total items were read; stopping"
                    );
                }
                break;
            }
            items.extend(page.items);
            if items.len() as u64 >= total {
                break;
            }
        }
        Ok(items)
    }

    /// `GET /instances/types`, every page (`InstancesGetInstancesTypes`).
    pub async fn instance_types(&self) -> Result<Vec<InstanceType>, CallError> {
        self.list("/instances/types", &[]).await
    }

    /// `GET /instances/{id}` (`InstancesGet_0`).
    pub async fn instance(&self, id: u64) -> Result<Instance, CallError> {
        self.json(reqwest::Method::GET, &format!("/instances/{id}"), &[])
            .await
    }

    /// `GET /tickets/{id}` (`TicketsGet_1`).
    pub async fn ticket(&self, id: u64) -> Result<Ticket, CallError> {
        self.json(reqwest::Method::GET, &format!("/tickets/{id}"), &[])
            .await
    }

    /// `GET /tickets?creationDateFrom=...`, every page (`TicketsGet`). The API filters
    /// tickets by status and creation date only, not by object: callers pick their
    /// instance's by `ObjectId`.
    pub async fn tickets_since(
        &self,
        from: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Ticket>, CallError> {
        let from = from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.list("/tickets", &[("creationDateFrom", from)]).await
    }

    /// `POST /instances/{id}/change_type_ticket?typeId=N`, without a body
    /// (`InstancesChangeType_1`).
    pub async fn change_type(&self, instance: u64, type_id: u32) -> Result<Ticket, CallError> {
        self.json(
            reqwest::Method::POST,
            &format!("/instances/{instance}/change_type_ticket"),
            &[("typeId", type_id.to_string())],
        )
        .await
    }
}

/// Reads a response body, at most [`MAX_BODY`] bytes.
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, CallError> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    return Err(CallError::Decode(format!(
                        "answer larger than {MAX_BODY} bytes"
                    )));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(CallError::Timeout),
            Err(e) => return Err(CallError::Transport(error_chain(&e))),
        }
    }
}
