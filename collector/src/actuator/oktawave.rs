//! The Oktawave actuator: resizes an Oktawave instance (an "OCI") by changing its
//! instance *type* through Oktawave's public REST API (v1), then follows the operation's
//! ticket until it ends.
//!
//! ```text
//!  POST {id_url}/core/connect/token            OAuth2 password grant (cached; 401 → refresh)
//!  GET  {api_url}/instances/types              at start: rung types → Id, Cpu, Ram (MB)
//!  GET  {api_url}/instances/{id}               IsLocked → not sent; already the size → done
//!  POST {api_url}/instances/{id}/change_type_ticket   {"TypeId": N} → ticket (persisted)
//!  GET  {api_url}/tickets/{ticket}             every poll_interval until EndDate is set:
//!                                              136 succeeded, 137 error (134 new, 135 running)
//! ```
//!
//! A succeeded ticket only means Oktawave changed the type: the engine still waits for the
//! agent to report the new size before it calls the resize verified. The ticket id is
//! recorded in the store before polling starts, so a collector restarted mid-operation
//! resumes polling the same ticket (the engine sends the unanswered decision again with
//! the same id) and never starts a second change. The change request itself is never
//! retried: a lost answer may hide a ticket already running, and a second one would
//! resize twice; polling tolerates up to `max_transient_errors` failures in a row.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::webhook::error_chain;
use super::{
    Actuator, ActuatorError, Attempt, AttemptResult, BoxFuture, Outcome, ResizeRequest, Verdict,
    excerpt,
};
use crate::store::Store;
use rally_policy::GroupPolicy;
use rally_policy::ladder::TypeRef;

/// Oktawave's public identity server.
pub const DEFAULT_ID_URL: &str = "https://id.oktawave.com";
/// Oktawave's public API (v1).
pub const DEFAULT_API_URL: &str = "https://api.oktawave.com/beta";
/// Ticket status: created, not started.
pub const TICKET_NEW: u32 = 134;
/// Ticket status: running.
pub const TICKET_RUNNING: u32 = 135;
/// Ticket status: succeeded.
pub const TICKET_SUCCEEDED: u32 = 136;
/// Ticket status: ended in error.
pub const TICKET_ERROR: u32 = 137;
/// A token is renewed this long before Oktawave says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// Bytes of a response body kept in an attempt record.
const BODY_EXCERPT: usize = 512;
/// Largest response body read (the type list is the largest answer).
const MAX_BODY: usize = 4 << 20;
/// Bounds on what the config accepts for polling.
const MIN_POLL: Duration = Duration::from_millis(10);

/// `[actuator]` with `kind = "oktawave"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OktawaveConfig {
    /// The identity server (token endpoint at `{id_url}/core/connect/token`).
    #[serde(default = "default_id_url")]
    pub id_url: String,
    /// The API base URL (data centres may have their own).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The API client's id (created at id.oktawave.com, scope `oktawave.api`).
    pub client_id: String,
    /// File holding the API client's secret.
    pub client_secret_file: PathBuf,
    /// The Oktawave account's user name (e-mail).
    pub username: String,
    /// File holding the account's password.
    pub password_file: PathBuf,
    /// Each Rally VM's Oktawave instance id (`web-1 = 123456`).
    #[serde(default)]
    pub instances: BTreeMap<String, u64>,
    /// How often a running ticket is polled ("10s").
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time-out of one API call ("30s").
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed polls in a row tolerated before giving up on a ticket.
    #[serde(default = "default_max_transient_errors")]
    pub max_transient_errors: u32,
}

fn default_id_url() -> String {
    DEFAULT_ID_URL.into()
}
fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_transient_errors() -> u32 {
    5
}

/// One Oktawave instance type (`GET /instances/types`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceType {
    /// Type id (what `change_type_ticket` takes).
    pub id: u32,
    /// Type name.
    #[serde(default)]
    pub name: String,
    /// vCPUs.
    #[serde(default)]
    pub cpu: u32,
    /// RAM in MB (MiB).
    #[serde(default)]
    pub ram: u64,
}

/// The type list: odk's collections wrap items as `{"Items": [...], "Meta": {...}}`;
/// a bare array is accepted too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TypeList {
    Wrapped {
        #[serde(rename = "Items")]
        items: Vec<InstanceType>,
    },
    Bare(Vec<InstanceType>),
}

/// An instance as `GET /instances/{id}` describes it (the fields Rally reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    /// Instance id.
    pub id: u64,
    /// vCPUs.
    #[serde(default)]
    pub cpu_number: u32,
    /// RAM in MB.
    #[serde(default)]
    pub ram_mb: u64,
    /// An operation is running on it: no other may start.
    #[serde(default)]
    pub is_locked: bool,
}

/// A dictionary item (`{"Id": 136, "Label": "Succeeded"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DictionaryItem {
    /// Item id.
    pub id: u32,
    /// Label.
    #[serde(default)]
    pub label: String,
}

/// A ticket: one asynchronous operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ticket {
    /// Ticket id.
    pub id: u64,
    /// When created.
    #[serde(default)]
    pub creation_date: Option<String>,
    /// When it ended; absent, null or the zero date while it runs.
    #[serde(default)]
    pub end_date: Option<String>,
    /// Its status.
    #[serde(default)]
    pub status: Option<DictionaryItem>,
    /// Percent done.
    #[serde(default)]
    pub progress: Option<u32>,
}

impl Ticket {
    /// Whether the operation ended (`EndDate` set; Go clients print an unset date as
    /// year 1).
    pub fn ended(&self) -> bool {
        self.end_date
            .as_deref()
            .is_some_and(|d| !d.is_empty() && !d.starts_with("0001-"))
    }

    /// The status id (0 if absent).
    pub fn status_id(&self) -> u32 {
        self.status.as_ref().map_or(0, |s| s.id)
    }
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
    fn attempt_result(&self) -> AttemptResult {
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
    fn transient(&self) -> bool {
        match self {
            CallError::Timeout | CallError::Transport(_) | CallError::Token(_) => true,
            CallError::Status { code, .. } => *code >= 500 || *code == 429,
            CallError::Decode(_) => false,
        }
    }
}

/// The Oktawave actuator. Built by [`Oktawave::new`], then [`Oktawave::resolve`]d against
/// the API and given the ticket store with [`Oktawave::with_store`] (the collector does
/// both in `actuator::start`).
pub struct Oktawave {
    config: OktawaveConfig,
    client_secret: String,
    password: String,
    client: reqwest::Client,
    token: tokio::sync::Mutex<Option<Token>>,
    /// (group, rung name) → type id.
    rung_types: HashMap<(String, String), u32>,
    tickets: Option<Arc<Mutex<Store>>>,
}

impl std::fmt::Debug for Oktawave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oktawave")
            .field("api_url", &self.config.api_url)
            .field("id_url", &self.config.id_url)
            .field("instances", &self.config.instances.len())
            .field("rung_types", &self.rung_types.len())
            .finish_non_exhaustive()
    }
}

fn read_secret(path: &Path) -> Result<String, ActuatorError> {
    let raw = std::fs::read(path).map_err(|source| ActuatorError::Secret {
        path: path.to_path_buf(),
        source,
    })?;
    let secret = String::from_utf8_lossy(raw.trim_ascii()).into_owned();
    if secret.is_empty() {
        return Err(ActuatorError::EmptySecret(path.to_path_buf()));
    }
    Ok(secret)
}

fn check_url(url: &str) -> Result<(), ActuatorError> {
    let err = |reason: String| ActuatorError::Url {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| err(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("only http and https are supported".into()));
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Resolves `wanted` among `types`: by id, by name, or by an id written as a string.
fn find_type<'a>(types: &'a [InstanceType], wanted: &TypeRef) -> Option<&'a InstanceType> {
    match wanted {
        TypeRef::Id(id) => types.iter().find(|t| t.id == *id),
        TypeRef::Name(name) => types.iter().find(|t| t.name == *name).or_else(|| {
            name.parse::<u32>()
                .ok()
                .and_then(|id| types.iter().find(|t| t.id == id))
        }),
    }
}

impl Oktawave {
    /// Reads the secret files and checks the URLs and bounds (no network).
    pub fn new(config: OktawaveConfig) -> Result<Self, ActuatorError> {
        let client_secret = read_secret(&config.client_secret_file)?;
        let password = read_secret(&config.password_file)?;
        check_url(&config.id_url)?;
        check_url(&config.api_url)?;
        if config.poll_interval < MIN_POLL {
            return Err(ActuatorError::Oktawave(format!(
                "poll_interval must be at least {MIN_POLL:?}"
            )));
        }
        if config.timeout.is_zero() {
            return Err(ActuatorError::Oktawave(
                "timeout must be more than 0s".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rally-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ActuatorError::Client(e.to_string()))?;
        Ok(Self {
            config,
            client_secret,
            password,
            client,
            token: tokio::sync::Mutex::new(None),
            rung_types: HashMap::new(),
            tickets: None,
        })
    }

    /// Records tickets in `store` (a connection of its own to the collector's database).
    pub fn with_store(mut self, store: Store) -> Self {
        self.tickets = Some(Arc::new(Mutex::new(store)));
        self
    }

    /// Fetches the instance types and resolves every resizing group's ladder: a rung
    /// naming `oktawave_type` takes that type's vCPUs and RAM; a rung giving a size must
    /// match exactly one type. Also checks every member has an instance id. The groups'
    /// policies are compiled again with the real sizes.
    pub async fn resolve(&mut self, groups: &mut [GroupPolicy]) -> Result<(), ActuatorError> {
        let types = self
            .instance_types()
            .await
            .map_err(|e| ActuatorError::Oktawave(format!("listing instance types: {e}")))?;
        self.resolve_with(&types, groups)
    }

    /// [`resolve`](Self::resolve) against a type list already fetched.
    pub fn resolve_with(
        &mut self,
        types: &[InstanceType],
        groups: &mut [GroupPolicy],
    ) -> Result<(), ActuatorError> {
        let err = |m: String| Err(ActuatorError::Oktawave(m));
        for g in groups.iter_mut().filter(|g| g.resizes()) {
            for vm in &g.vms {
                if !self.config.instances.contains_key(vm) {
                    return err(format!(
                        "group `{}`: VM `{vm}` has no Oktawave instance id in [actuator.instances]",
                        g.name
                    ));
                }
            }
            for rung in &mut g.ladder {
                let t = match &rung.oktawave_type {
                    Some(wanted) => {
                        let Some(t) = find_type(types, wanted) else {
                            return err(format!(
                                "group `{}` rung `{}`: Oktawave has no instance type {wanted} \
                                 ({} types listed)",
                                g.name,
                                rung.name,
                                types.len()
                            ));
                        };
                        let memory = t.ram.saturating_mul(1 << 20);
                        let given = (rung.vcpus, rung.memory_bytes);
                        if given != (0, 0) && given != (t.cpu, memory) {
                            return err(format!(
                                "group `{}` rung `{}`: gives {} vCPUs and {} bytes but type {wanted} \
                                 has {} vCPUs and {} MB",
                                g.name, rung.name, rung.vcpus, rung.memory_bytes, t.cpu, t.ram
                            ));
                        }
                        (rung.vcpus, rung.memory_bytes) = (t.cpu, memory);
                        t
                    }
                    None => {
                        let same: Vec<&InstanceType> = types
                            .iter()
                            .filter(|t| {
                                t.cpu == rung.vcpus
                                    && t.ram.saturating_mul(1 << 20) == rung.memory_bytes
                            })
                            .collect();
                        match same.as_slice() {
                            [t] => *t,
                            [] => {
                                return err(format!(
                                    "group `{}` rung `{}`: no Oktawave instance type has {} vCPUs \
                                     and {} bytes; name one with oktawave_type",
                                    g.name, rung.name, rung.vcpus, rung.memory_bytes
                                ));
                            }
                            _ => {
                                return err(format!(
                                    "group `{}` rung `{}`: several Oktawave types have this size; \
                                     name one with oktawave_type",
                                    g.name, rung.name
                                ));
                            }
                        }
                    }
                };
                info!(group = %g.name, rung = %rung.name, type_id = t.id, type_name = %t.name, vcpus = t.cpu, ram_mb = t.ram, "ladder rung resolved to an Oktawave instance type");
                self.rung_types
                    .insert((g.name.clone(), rung.name.clone()), t.id);
            }
            if let Err(e) = g.compile() {
                return err(format!(
                    "group `{}`: with Oktawave's sizes the ladder is invalid: {e}",
                    g.name
                ));
            }
        }
        Ok(())
    }

    async fn bearer(&self, renew: bool) -> Result<String, CallError> {
        let mut cached = self.token.lock().await;
        if !renew
            && let Some(t) = cached.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let url = format!(
            "{}/core/connect/token",
            self.config.id_url.trim_end_matches('/')
        );
        let form = [
            ("grant_type", "password"),
            ("username", self.config.username.as_str()),
            ("password", self.password.as_str()),
            ("scope", "oktawave.api"),
        ];
        let resp = self
            .client
            .post(url)
            .timeout(self.config.timeout)
            .basic_auth(&self.config.client_id, Some(&self.client_secret))
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
        let renew_at = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        *cached = Some(Token {
            value: token.access_token.clone(),
            renew_at,
        });
        Ok(token.access_token)
    }

    /// One API call with a bearer token; a 401 renews the token and tries once more.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, CallError> {
        let url = format!("{}{path}", self.config.api_url.trim_end_matches('/'));
        let mut renew = false;
        loop {
            let token = self.bearer(renew).await?;
            let mut req = self
                .client
                .request(method.clone(), &url)
                .timeout(self.config.timeout)
                .bearer_auth(token);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(|e| {
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

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let bytes = self.call(reqwest::Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// `GET /instances/types`.
    pub async fn instance_types(&self) -> Result<Vec<InstanceType>, CallError> {
        Ok(match self.get::<TypeList>("/instances/types").await? {
            TypeList::Wrapped { items } | TypeList::Bare(items) => items,
        })
    }

    /// `GET /instances/{id}`.
    pub async fn instance(&self, id: u64) -> Result<Instance, CallError> {
        self.get(&format!("/instances/{id}")).await
    }

    /// `GET /tickets/{id}`.
    pub async fn ticket(&self, id: u64) -> Result<Ticket, CallError> {
        self.get(&format!("/tickets/{id}")).await
    }

    /// `POST /instances/{id}/change_type_ticket`.
    pub async fn change_type(&self, instance: u64, type_id: u32) -> Result<Ticket, CallError> {
        let body = serde_json::json!({ "TypeId": type_id });
        let bytes = self
            .call(
                reqwest::Method::POST,
                &format!("/instances/{instance}/change_type_ticket"),
                Some(&body),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
    }

    async fn with_tickets<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = Arc::clone(self.tickets.as_ref()?);
        let result = tokio::task::spawn_blocking(move || {
            f(&mut store.lock().unwrap_or_else(PoisonError::into_inner))
        })
        .await;
        match result {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                warn!(error = %e, "Oktawave ticket store failed");
                None
            }
            Err(e) => {
                warn!(error = %e, "Oktawave ticket store task failed");
                None
            }
        }
    }

    /// Carries out `request`; every API call that matters is an attempt.
    async fn drive(&self, request: &ResizeRequest, attempts: &mut Vec<Attempt>) -> Verdict {
        let rejected = |reason: String| Verdict::Rejected { reason };
        let Some(&instance) = self.config.instances.get(&request.vm) else {
            return rejected(format!(
                "VM {} has no Oktawave instance id in [actuator.instances]",
                request.vm
            ));
        };
        let Some(&type_id) = self
            .rung_types
            .get(&(request.group.clone(), request.to.rung.clone()))
        else {
            return rejected(format!(
                "rung {} of group {} is not resolved to an Oktawave instance type",
                request.to.rung, request.group
            ));
        };
        let id = request.id.clone();
        let stored = self.with_tickets(move |s| s.ticket(&id)).await.flatten();
        let ticket = match stored.and_then(|(_, t, _)| t.parse::<u64>().ok()) {
            Some(ticket) => {
                info!(id = %request.id, vm = %request.vm, instance, ticket, "resuming the poll of an Oktawave ticket started before a restart (no second change is sent)");
                ticket
            }
            None => match self
                .start_change(request, instance, type_id, attempts)
                .await
            {
                Ok(Some(ticket)) => ticket,
                Ok(None) => return Verdict::Accepted,
                Err(verdict) => return verdict,
            },
        };
        self.follow(request, ticket, attempts).await
    }

    /// Reads the instance back and, unless it is locked or already that size, asks for
    /// the type change. `Ok(None)`: nothing to change.
    async fn start_change(
        &self,
        request: &ResizeRequest,
        instance: u64,
        type_id: u32,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Option<u64>, Verdict> {
        let (started, t0) = (chrono::Utc::now(), Instant::now());
        let read = self.instance(instance).await;
        let mut record = |result: AttemptResult, started, t0: Instant| {
            attempts.push(Attempt {
                number: attempts.len() as u32 + 1,
                started_at: started,
                duration_ms: millis(t0.elapsed()),
                result,
            });
        };
        match read {
            Err(e) => {
                record(e.attempt_result(), started, t0);
                return Err(Verdict::GaveUp {
                    reason: format!("reading Oktawave instance {instance}: {e}"),
                });
            }
            Ok(i) if i.is_locked => {
                record(
                    AttemptResult::Status {
                        code: 200,
                        body: format!("instance {instance} IsLocked"),
                    },
                    started,
                    t0,
                );
                warn!(id = %request.id, vm = %request.vm, instance, "Oktawave instance is locked: an operation is running on it; not sending another");
                return Err(Verdict::Rejected {
                    reason: format!(
                        "Oktawave instance {instance} is locked (an operation is already running on it); \
                         no change was sent"
                    ),
                });
            }
            Ok(i)
                if i.cpu_number == request.to.vcpus
                    && i.ram_mb.saturating_mul(1 << 20) == request.to.memory_bytes =>
            {
                record(
                    AttemptResult::Status {
                        code: 200,
                        body: format!(
                            "instance {instance} already has {} vCPUs and {} MB",
                            i.cpu_number, i.ram_mb
                        ),
                    },
                    started,
                    t0,
                );
                info!(id = %request.id, vm = %request.vm, instance, "Oktawave instance already has the requested size; no change sent");
                return Ok(None);
            }
            Ok(_) => {}
        }
        let (started, t0) = (chrono::Utc::now(), Instant::now());
        match self.change_type(instance, type_id).await {
            Ok(ticket) => {
                record(
                    AttemptResult::Status {
                        code: 200,
                        body: format!("ticket {} status {}", ticket.id, ticket.status_id()),
                    },
                    started,
                    t0,
                );
                info!(id = %request.id, vm = %request.vm, instance, type_id, ticket = ticket.id, "Oktawave type change requested");
                let (id, ticket_id) = (request.id.clone(), ticket.id);
                let now = chrono::Utc::now();
                if self
                    .with_tickets(move |s| {
                        s.record_ticket(&id, &instance.to_string(), &ticket_id.to_string(), now)
                    })
                    .await
                    .is_none()
                    && self.tickets.is_some()
                {
                    warn!(id = %request.id, ticket = ticket.id, "the ticket id was not persisted: a restart now would not find it");
                }
                Ok(Some(ticket.id))
            }
            Err(e) => {
                record(e.attempt_result(), started, t0);
                let reason = format!("change_type_ticket for instance {instance}: {e}");
                Err(match e {
                    CallError::Status { code, .. } if (400..500).contains(&code) && code != 429 => {
                        Verdict::Rejected { reason }
                    }
                    _ => Verdict::GaveUp { reason },
                })
            }
        }
    }

    /// Polls `ticket` until it ends, the verification deadline passes, or too many polls
    /// in a row fail.
    async fn follow(
        &self,
        request: &ResizeRequest,
        ticket: u64,
        attempts: &mut Vec<Attempt>,
    ) -> Verdict {
        let mut failures = 0u32;
        loop {
            let (started, t0) = (chrono::Utc::now(), Instant::now());
            if started >= request.verify_deadline {
                return Verdict::GaveUp {
                    reason: format!(
                        "Oktawave ticket {ticket} had not ended at the verification deadline"
                    ),
                };
            }
            match self.ticket(ticket).await {
                Ok(t) if t.ended() => {
                    let status = t.status_id();
                    attempts.push(Attempt {
                        number: attempts.len() as u32 + 1,
                        started_at: started,
                        duration_ms: millis(t0.elapsed()),
                        result: AttemptResult::Status {
                            code: 200,
                            body: format!(
                                "ticket {ticket} ended with status {status} at {}",
                                t.end_date.as_deref().unwrap_or("")
                            ),
                        },
                    });
                    let id = request.id.clone();
                    let now = chrono::Utc::now();
                    self.with_tickets(move |s| s.finish_ticket(&id, now)).await;
                    info!(id = %request.id, vm = %request.vm, ticket, status, "Oktawave ticket ended");
                    return match status {
                        TICKET_SUCCEEDED => Verdict::Accepted,
                        TICKET_ERROR => Verdict::Rejected {
                            reason: format!("Oktawave ticket {ticket} ended in error (status 137)"),
                        },
                        other => Verdict::Rejected {
                            reason: format!("Oktawave ticket {ticket} ended with status {other}"),
                        },
                    };
                }
                Ok(t) => {
                    failures = 0;
                    tracing::debug!(ticket, status = t.status_id(), progress = ?t.progress, "Oktawave ticket running");
                }
                Err(e) => {
                    failures += 1;
                    attempts.push(Attempt {
                        number: attempts.len() as u32 + 1,
                        started_at: started,
                        duration_ms: millis(t0.elapsed()),
                        result: e.attempt_result(),
                    });
                    warn!(ticket, failures, error = %e, "polling an Oktawave ticket failed");
                    if !e.transient() || failures > self.config.max_transient_errors {
                        return Verdict::GaveUp {
                            reason: format!(
                                "polling Oktawave ticket {ticket}: {e} ({failures} failures in a row)"
                            ),
                        };
                    }
                }
            }
            let left = (request.verify_deadline - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            tokio::time::sleep(self.config.poll_interval.min(left)).await;
        }
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

impl Actuator for Oktawave {
    fn kind(&self) -> &'static str {
        "oktawave"
    }

    fn send<'a>(&'a self, request: &'a ResizeRequest) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let mut attempts = Vec::new();
            let verdict = self.drive(request, &mut attempts).await;
            Outcome { verdict, attempts }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_end_when_end_date_is_set() {
        let t = |end: Option<&str>| Ticket {
            id: 1,
            creation_date: None,
            end_date: end.map(str::to_owned),
            status: None,
            progress: None,
        };
        assert!(!t(None).ended());
        assert!(!t(Some("0001-01-01T00:00:00Z")).ended());
        assert!(t(Some("2026-01-15T10:04:31.52+01:00")).ended());
    }

    #[test]
    fn the_type_list_is_read_wrapped_or_bare() {
        let wrapped = r#"{"Items":[{"Id":1047,"Name":"v1.standard-2.4","Cpu":2,"Ram":4096,
            "AvailableForFreemium":false,"Category":{"Id":1,"Label":"x"}}],"Meta":{"Count":1}}"#;
        let TypeList::Wrapped { items } = serde_json::from_str(wrapped).unwrap() else {
            panic!("not read as wrapped");
        };
        assert_eq!(items[0].id, 1047);
        assert_eq!((items[0].cpu, items[0].ram), (2, 4096));
        let bare: TypeList =
            serde_json::from_str(r#"[{"Id":7,"Name":"a","Cpu":1,"Ram":1024}]"#).unwrap();
        assert!(matches!(bare, TypeList::Bare(v) if v[0].id == 7));
    }

    #[test]
    fn types_are_found_by_id_name_or_id_string() {
        let types = vec![InstanceType {
            id: 1047,
            name: "v1.standard-2.4".into(),
            cpu: 2,
            ram: 4096,
        }];
        assert!(find_type(&types, &TypeRef::Id(1047)).is_some());
        assert!(find_type(&types, &TypeRef::Name("v1.standard-2.4".into())).is_some());
        assert!(find_type(&types, &TypeRef::Name("1047".into())).is_some());
        assert!(find_type(&types, &TypeRef::Name("v1.standard-4.8".into())).is_none());
    }
}
