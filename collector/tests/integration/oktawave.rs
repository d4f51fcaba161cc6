//! The Oktawave actuator against a fake Oktawave written here from Oktawave's published
//! API, over a real HTTP socket. Every shape the fake accepts or returns comes from a
//! public file (the rule for every fake: it follows the peer's published SDK, never what
//! our client happens to send):
//!
//! - `oktawave-code/odk` `oci_api.go`, `InstancesChangeType_1`: `POST
//!   /instances/{id}/change_type_ticket` takes the type as the query parameter `typeId`
//!   and sends no body (Content-Type "Not defined" in `docs/OCIApi.md`). The fake answers
//!   400 without `typeId`, so a JSON body alone is refused.
//! - odk `docs/OCIApi.md`, `InstancesGetInstancesTypes`, and `api_collection_instance_type.go`
//!   with `api_collection_metadata.go`: lists take `pageSize` and `pageNumber` and answer
//!   `{"Items": [...], "Meta": {"Total": N}}`. The fake serves at most [`PAGE_CAP`] items a
//!   page, fewer than it has types, so the ladder's types sit on pages 2 and 3.
//! - odk `tickets_api.go`, `TicketsGet`: `GET /tickets` filters by `statusId`,
//!   `creationDateFrom` and `creationDateTo` only, and is paged the same way; there is no
//!   filter by object, so the fake ignores any other parameter as a server would.
//!   `TicketsGet_1`: `GET /tickets/{id}`.
//! - odk `ticket.go`, `instance.go`, `instance_type.go`, `dictionary_item.go`: the field
//!   names (`EndDate`, `Status.Id`, `ObjectId`, `CreationDate`; `CpuNumber`, `RamMb`,
//!   `IsLocked`; `Id`, `Name`, `Cpu`, `Ram`).
//! - `oktawave-code/terraform-provider-oktawave` `oktawave/config.go`: ticket statuses
//!   134 new, 135 running, 136 succeeded, 137 error; `oktawave/utils.go` `waitForTicket`:
//!   a ticket runs while `EndDate` is unset.
//!
//! The token endpoint (`/core/connect/token`, OAuth2 password grant with HTTP Basic client
//! credentials and scope `oktawave.api`) is the identity server's; odk's `configuration.go`
//! leaves tokens to the caller (`ContextOAuth2`, `ContextAccessToken`).

#![allow(missing_docs, clippy::unwrap_used)]

use crate::support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rally_collector::actuator::{Actuator, AttemptResult, ResizeRequest, Verdict};
use rally_collector::config::Config;
use rally_policy::decision::{Direction, SizedRung, Trigger};
use serde_json::{Value, json};
use support::WAIT;

const CLIENT: &str = "rally-test-client";
const SECRET: &str = "s3cret";
const USER: &str = "ops@shop.example";
const PASSWORD: &str = "p@ss word";
const MIB: u64 = 1 << 20;
/// The most items the fake puts on one page, whatever `pageSize` asks.
const PAGE_CAP: usize = 3;
/// The fake's instance types (id, name, vCPUs, RAM MB), in list order: with
/// [`PAGE_CAP`] = 3, `v1.standard-2.4` is on page 1, 1048 on page 2, 8 × 16 GB on page 3.
const TYPES: [(u32, &str, u32, u64); 8] = [
    (1046, "v1.standard-1.2", 1, 2048),
    (1047, "v1.standard-2.4", 2, 4096),
    (1050, "v1.highcpu-2.2", 2, 2048),
    (1051, "v1.highcpu-4.4", 4, 4096),
    (1048, "v1.standard-4.8", 4, 8192),
    (1052, "v1.highmem-2.8", 2, 8192),
    (1049, "v1.standard-8.16", 8, 16384),
    (1053, "v1.highcpu-8.8", 8, 8192),
];

/// How a ticket created by the fake ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Script {
    /// Succeeds at this poll (1-based); earlier polls say new, then running.
    SucceedAt(u32),
    /// Ends in error at this poll.
    FailAt(u32),
    /// Runs until `release` is called, then succeeds at the next poll.
    Hold,
}

#[derive(Debug, Clone)]
struct FakeInstance {
    cpu: u32,
    ram_mb: u64,
    locked: bool,
}

#[derive(Debug, Clone)]
struct FakeTicket {
    instance: u64,
    type_id: u32,
    created: chrono::DateTime<chrono::Utc>,
    polls: u32,
    ended: Option<u32>,
}

/// One `change_type_ticket` request as it arrived.
#[derive(Debug, Clone)]
struct Change {
    instance: u64,
    /// The `typeId` query parameter.
    type_id: Option<String>,
    /// The request body (the SDK sends none).
    body: Vec<u8>,
    at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Default)]
struct FakeState {
    next_token: u32,
    valid_tokens: HashSet<String>,
    /// Every token request: (authorization header, form fields).
    token_requests: Vec<(String, HashMap<String, String>)>,
    /// API calls answered 401.
    unauthorized: u32,
    /// The next API call with this token is refused as expired.
    expire_next_use: bool,
    instances: HashMap<u64, FakeInstance>,
    tickets: HashMap<u64, FakeTicket>,
    /// Every change_type_ticket request, refused ones included.
    changes: Vec<Change>,
    /// `pageNumber` of every type-list request, in order.
    type_pages: Vec<u64>,
    /// The query of every ticket-list request.
    ticket_lists: Vec<HashMap<String, String>>,
    /// Ticket ids polled, in order.
    polls: Vec<u64>,
    /// The next N ticket polls answer 503.
    failing_polls: u32,
    /// The type list claims this `Meta.Total` instead of the real count.
    claimed_total: Option<u64>,
    /// change_type_ticket creates the ticket but never answers (the answer is lost).
    lose_change_answer: bool,
    script: Option<Script>,
    released: bool,
}

impl FakeState {
    /// A ticket created now on `instance`, still running, as if someone else started it.
    fn add_running_ticket(&mut self, instance: u64) -> u64 {
        let id = 9000 + self.tickets.len() as u64 + 1;
        self.tickets.insert(
            id,
            FakeTicket {
                instance,
                type_id: 1047,
                created: chrono::Utc::now(),
                polls: 0,
                ended: None,
            },
        );
        id
    }
}

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeState>>);

fn type_json(&(id, name, cpu, ram): &(u32, &str, u32, u64)) -> Value {
    json!({"Id": id, "Name": name, "Cpu": cpu, "Ram": ram, "AvailableForFreemium": false,
           "Category": {"Id": 1, "Label": "Standard"}})
}

fn type_size(id: u32) -> (u32, u64) {
    TYPES
        .iter()
        .find(|t| t.0 == id)
        .map(|t| (t.2, t.3))
        .unwrap()
}

/// `pageSize` and `pageNumber` as the SDK sends them (both optional): the page's items
/// and the `Meta.Total` of the whole list; a refused parameter is the error (the caller
/// answers 400 with it).
fn page<T: Clone>(all: &[T], query: &HashMap<String, String>) -> Result<(Vec<T>, u64), String> {
    let number = |key: &str, default: usize| match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| format!("bad {key}")),
    };
    let size = number("pageSize", PAGE_CAP)?.clamp(1, PAGE_CAP);
    let page = number("pageNumber", 1)?.max(1);
    let items = all
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .cloned()
        .collect();
    Ok((items, all.len() as u64))
}

/// `application/x-www-form-urlencoded` decoding, enough for the token request.
fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// A ticket as odk's `ticket.go` names its fields; dates as Oktawave (Warsaw) writes them.
fn ticket_json(id: u64, t: &FakeTicket) -> Value {
    let warsaw = chrono::FixedOffset::east_opt(3600).unwrap();
    let (status, label, end) = match t.ended {
        Some(136) => (136, "Succeeded", json!("2026-01-15T10:04:31.52+01:00")),
        Some(s) => (s, "Error", json!("2026-01-15T10:04:31.52+01:00")),
        None if t.polls <= 1 => (134, "New", Value::Null),
        None => (135, "Running", Value::Null),
    };
    json!({
        "Id": id,
        "CreationDate": t.created.with_timezone(&warsaw).to_rfc3339(),
        "CreationUser": {"Id": 42, "FullName": "ops"},
        "EndDate": end,
        "Status": {"Id": status, "Label": label},
        "OperationType": {"Id": 1220, "Label": "Change instance class"},
        "ObjectId": t.instance,
        "ObjectType": {"Id": 1, "Label": "Instance"},
        "ObjectName": format!("instance-{}", t.instance),
        "Progress": if t.ended.is_some() { 100 } else { 10 * t.polls.min(9) }
    })
}

impl Fake {
    fn new(instances: &[(u64, u32, u64)]) -> Self {
        let state = FakeState {
            instances: instances
                .iter()
                .map(|&(id, cpu, ram_mb)| {
                    (
                        id,
                        FakeInstance {
                            cpu,
                            ram_mb,
                            locked: false,
                        },
                    )
                })
                .collect(),
            script: Some(Script::SucceedAt(3)),
            ..FakeState::default()
        };
        Self(Arc::new(Mutex::new(state)))
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// Whether the request carries a valid token (an expired or unknown one counts a 401).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        self.with(|s| {
            if s.expire_next_use && s.valid_tokens.contains(&token) {
                s.expire_next_use = false;
                s.valid_tokens.remove(&token);
            }
            let ok = s.valid_tokens.contains(&token);
            if !ok {
                s.unauthorized += 1;
            }
            ok
        })
    }

    async fn serve(self) -> SocketAddr {
        let app = Router::new()
            .route("/id/core/connect/token", post(token))
            .route("/api/instances/types", get(list_types))
            .route("/api/instances/{id}", get(instance))
            .route("/api/instances/{id}/change_type_ticket", post(change_type))
            .route("/api/tickets", get(list_tickets))
            .route("/api/tickets/{id}", get(ticket))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", "Bearer error=\"invalid_token\"")],
        "",
    )
        .into_response()
}

async fn token(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let fields = form(&body);
    let expected = reqwest::Client::new()
        .get("http://x")
        .basic_auth(CLIENT, Some(SECRET))
        .build()
        .unwrap()
        .headers()["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    fake.with(|s| {
        s.token_requests.push((auth.clone(), fields.clone()));
        let ok = auth == expected
            && fields.get("grant_type").map(String::as_str) == Some("password")
            && fields.get("username").map(String::as_str) == Some(USER)
            && fields.get("password").map(String::as_str) == Some(PASSWORD)
            && fields.get("scope").map(String::as_str) == Some("oktawave.api");
        if !ok {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant"})),
            )
                .into_response();
        }
        s.next_token += 1;
        let token = format!("token-{}", s.next_token);
        s.valid_tokens.insert(token.clone());
        axum::Json(json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}))
            .into_response()
    })
}

/// `InstancesGetInstancesTypes`: one page of the types.
async fn list_types(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !fake.authorized(&headers) {
        return unauthorized();
    }
    let all: Vec<Value> = TYPES.iter().map(type_json).collect();
    let (items, total) = match page(&all, &query) {
        Ok(p) => p,
        Err(refused) => return (StatusCode::BAD_REQUEST, refused).into_response(),
    };
    fake.with(|s| {
        let number = query.get("pageNumber").and_then(|n| n.parse().ok());
        s.type_pages.push(number.unwrap_or(1));
        let total = s.claimed_total.unwrap_or(total);
        axum::Json(json!({"Items": items, "Meta": {"Total": total}})).into_response()
    })
}

/// `InstancesGet_0`.
async fn instance(
    State(fake): State<Fake>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    if !fake.authorized(&headers) {
        return unauthorized();
    }
    fake.with(|s| match s.instances.get(&id) {
        Some(i) => axum::Json(json!({
            "Id": id, "Name": format!("instance-{id}"), "CpuNumber": i.cpu, "RamMb": i.ram_mb,
            "IsLocked": i.locked, "Status": {"Id": 86, "Label": "Powered on"},
            "Type": {"Id": 1047, "Label": "v1.standard-2.4"}
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// `InstancesChangeType_1`: `typeId` in the query, no body.
async fn change_type(
    State(fake): State<Fake>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if !fake.authorized(&headers) {
        return unauthorized();
    }
    let (answer, lose) = fake.with(|s| {
        s.changes.push(Change {
            instance: id,
            type_id: query.get("typeId").cloned(),
            body: body.to_vec(),
            at: chrono::Utc::now(),
        });
        let Some(type_id) = query.get("typeId").and_then(|t| t.parse::<u32>().ok()) else {
            let refused = (StatusCode::BAD_REQUEST, "The typeId field is required.");
            return (refused.into_response(), false);
        };
        let Some(inst) = s.instances.get_mut(&id) else {
            return (StatusCode::NOT_FOUND.into_response(), false);
        };
        if inst.locked {
            return (
                (StatusCode::CONFLICT, "instance locked").into_response(),
                false,
            );
        }
        inst.locked = true;
        let ticket_id = 9000 + s.tickets.len() as u64 + 1;
        let t = FakeTicket {
            instance: id,
            type_id,
            created: chrono::Utc::now(),
            polls: 0,
            ended: None,
        };
        let answer = ticket_json(ticket_id, &t);
        s.tickets.insert(ticket_id, t);
        (axum::Json(answer).into_response(), s.lose_change_answer)
    });
    if lose {
        // The ticket exists; its answer never leaves (the caller dies waiting).
        std::future::pending::<()>().await;
    }
    answer
}

/// `TicketsGet`: filtered by status and creation date only, paged, newest first.
async fn list_tickets(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !fake.authorized(&headers) {
        return unauthorized();
    }
    let date = |key: &str| match query.get(key) {
        None => Ok(None),
        Some(v) => chrono::DateTime::parse_from_rfc3339(v)
            .map(|d| Some(d.with_timezone(&chrono::Utc)))
            .map_err(|_| format!("bad {key}")),
    };
    let (from, to) = match (date("creationDateFrom"), date("creationDateTo")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(refused), _) | (_, Err(refused)) => {
            return (StatusCode::BAD_REQUEST, refused).into_response();
        }
    };
    let status: Option<u32> = query.get("statusId").and_then(|v| v.parse().ok());
    fake.with(|s| {
        s.ticket_lists.push(query.clone());
        let mut all: Vec<(u64, FakeTicket)> = s
            .tickets
            .iter()
            .filter(|(_, t)| from.is_none_or(|f| t.created >= f))
            .filter(|(_, t)| to.is_none_or(|d| t.created <= d))
            .map(|(id, t)| (*id, t.clone()))
            .collect();
        all.sort_by_key(|(id, t)| std::cmp::Reverse((t.created, *id)));
        let all: Vec<Value> = all
            .iter()
            .map(|(id, t)| ticket_json(*id, t))
            .filter(|t| status.is_none_or(|st| t["Status"]["Id"] == st))
            .collect();
        match page(&all, &query) {
            Ok((items, total)) => {
                axum::Json(json!({"Items": items, "Meta": {"Total": total}})).into_response()
            }
            Err(refused) => (StatusCode::BAD_REQUEST, refused).into_response(),
        }
    })
}

/// `TicketsGet_1`: a poll moves the ticket along its script.
async fn ticket(
    State(fake): State<Fake>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    if !fake.authorized(&headers) {
        return unauthorized();
    }
    fake.with(|s| {
        s.polls.push(id);
        if s.failing_polls > 0 {
            s.failing_polls -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
        }
        let (script, released) = (s.script, s.released);
        let Some(t) = s.tickets.get_mut(&id) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        t.polls += 1;
        if t.ended.is_none() {
            t.ended = match script {
                Some(Script::SucceedAt(n)) if t.polls >= n => Some(136),
                Some(Script::FailAt(n)) if t.polls >= n => Some(137),
                Some(Script::Hold) if released => Some(136),
                _ => None,
            };
            if let Some(end) = t.ended {
                let (instance, type_id) = (t.instance, t.type_id);
                let inst = s.instances.get_mut(&instance).unwrap();
                inst.locked = false;
                if end == 136 {
                    (inst.cpu, inst.ram_mb) = type_size(type_id);
                }
            }
        }
        let t = &s.tickets[&id];
        axum::Json(ticket_json(id, t)).into_response()
    })
}

/// Secret files and the `[actuator]` TOML pointing at the fake.
fn actuator_toml(dir: &Path, fake: SocketAddr) -> String {
    std::fs::write(dir.join("client_secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    format!(
        r#"
[actuator]
kind = "oktawave"
id_url = "http://{fake}/id"
api_url = "http://{fake}/api"
client_id = "{CLIENT}"
client_secret_file = "{secret}"
username = "{USER}"
password_file = "{password}"
poll_interval = "50ms"
timeout = "5s"
max_transient_errors = 3
[actuator.instances]
web-1 = 501
web-2 = 502
"#,
        secret = dir.join("client_secret").display(),
        password = dir.join("password").display(),
    )
}

const GROUP: &str = r#"
[[groups]]
name = "web"
vms = ["web-1", "web-2"]
dry_run = false
ladder = [
  { name = "M", oktawave_type = "v1.standard-2.4" },
  { name = "L", oktawave_type = 1048 },
  { name = "XL", vcpus = 8, memory_bytes = 17179869184 },
]
"#;

fn load(dir: &Path, fake: SocketAddr, group: &str) -> Config {
    let source = format!(
        "[state]\ndir = \"{}\"\n{group}{}",
        dir.join("state").display(),
        actuator_toml(dir, fake)
    );
    Config::from_toml(&source, Path::new("collector.toml")).unwrap()
}

fn request(id: &str, vm: &str, deadline: Duration) -> ResizeRequest {
    let now = chrono::Utc::now();
    ResizeRequest {
        id: id.into(),
        vm: vm.into(),
        group: "web".into(),
        direction: Direction::Up,
        from: SizedRung {
            rung: "M".into(),
            vcpus: 2,
            memory_bytes: 4096 * MIB,
        },
        to: SizedRung {
            rung: "L".into(),
            vcpus: 4,
            memory_bytes: 8192 * MIB,
        },
        trigger: Trigger::Manual,
        reason: "test".into(),
        evidence: Vec::new(),
        dry_run: false,
        created_at: now,
        verify_deadline: now + chrono::Duration::from_std(deadline).unwrap(),
        fencing_token: 0,
    }
}

async fn started(fake: &Fake, dir: &Path) -> (Config, Arc<dyn Actuator>) {
    let addr = fake.clone().serve().await;
    let mut config = load(dir, addr, GROUP);
    let actuator = rally_collector::start_actuator(&mut config).await.unwrap();
    (config, actuator)
}

/// What one send came to: the verdict and the attempts it recorded.
#[derive(Debug)]
struct Outcome {
    verdict: Verdict,
    attempts: Vec<rally_collector::actuator::Attempt>,
}

async fn send(actuator: &Arc<dyn Actuator>, r: &ResizeRequest) -> Outcome {
    let mut log = rally_collector::actuator::AttemptLog::default();
    let verdict = tokio::time::timeout(WAIT, actuator.send(r, &mut log))
        .await
        .expect("the actuator answers in time");
    Outcome {
        verdict,
        attempts: log.made().to_vec(),
    }
}

/// The bodies of an outcome's attempts that got an answer.
fn answers(outcome: &Outcome) -> Vec<String> {
    outcome
        .attempts
        .iter()
        .filter_map(|a| match &a.result {
            AttemptResult::Status { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn ladder_types_resolve_at_start_and_a_resize_follows_its_ticket_to_success() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    let (config, actuator) = started(&fake, dir.path()).await;
    // Rungs named by type name, by id, and by size all got Oktawave's sizes.
    let ladder = &config.groups[0].ladder;
    assert_eq!((ladder[0].vcpus, ladder[0].memory_bytes), (2, 4096 * MIB));
    assert_eq!((ladder[1].vcpus, ladder[1].memory_bytes), (4, 8192 * MIB));
    assert_eq!(actuator.kind(), "oktawave");

    let outcome = send(&actuator, &request("d-1", "web-1", WAIT)).await;
    assert_eq!(outcome.verdict, Verdict::Accepted, "{outcome:?}");
    fake.with(|s| {
        // InstancesChangeType_1: the type in the query, no body.
        assert_eq!(s.changes.len(), 1);
        assert_eq!(s.changes[0].instance, 501);
        assert_eq!(s.changes[0].type_id.as_deref(), Some("1048"));
        assert!(s.changes[0].body.is_empty(), "no body is sent");
        // New, running, succeeded: three polls of the one ticket.
        assert_eq!(s.polls, [9001, 9001, 9001]);
        assert_eq!(s.instances[&501].cpu, 4);
        // One token for the whole run (cached).
        assert_eq!(s.token_requests.len(), 1);
    });
}

#[tokio::test]
async fn a_rung_whose_type_is_on_a_later_page_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    let (config, _) = started(&fake, dir.path()).await;
    let ladder = &config.groups[0].ladder;
    // 1048 is on page 2 and the only 8 × 16 GB type on page 3 (3 types a page).
    assert_eq!((ladder[1].vcpus, ladder[1].memory_bytes), (4, 8192 * MIB));
    assert_eq!((ladder[2].vcpus, ladder[2].memory_bytes), (8, 16384 * MIB));
    assert_eq!(
        fake.with(|s| s.type_pages.clone()),
        [1, 2, 3],
        "pages are read until Meta.Total types are in"
    );
}

#[tokio::test]
async fn an_absurd_meta_total_refuses_start() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    fake.with(|s| s.claimed_total = Some(10_000_000));
    let addr = fake.clone().serve().await;
    let mut config = load(dir.path(), addr, GROUP);
    let err = rally_collector::start_actuator(&mut config)
        .await
        .err()
        .expect("start refused")
        .to_string();
    assert!(
        err.contains("listing instance types") && err.contains("Meta.Total"),
        "{err}"
    );
    assert_eq!(fake.with(|s| s.type_pages.len()), 1, "no paging through it");
}

#[tokio::test]
async fn the_fake_refuses_a_type_change_sent_as_a_json_body() {
    // What Rally sent before it followed InstancesChangeType_1: the fake must refuse it,
    // or it could not catch that mistake.
    let fake = Fake::new(&[(501, 2, 4096)]);
    let addr = fake.clone().serve().await;
    fake.with(|s| s.valid_tokens.insert("t".into()));
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{addr}/api/instances/501/change_type_ticket"
        ))
        .bearer_auth("t")
        .json(&json!({"TypeId": 1048}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(fake.with(|s| s.tickets.is_empty() && !s.instances[&501].locked));
}

#[tokio::test]
async fn an_expired_token_is_renewed_after_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    let (_, actuator) = started(&fake, dir.path()).await;
    fake.with(|s| s.expire_next_use = true);
    let outcome = send(&actuator, &request("d-2", "web-1", WAIT)).await;
    assert_eq!(outcome.verdict, Verdict::Accepted, "{outcome:?}");
    fake.with(|s| {
        assert_eq!(s.unauthorized, 1, "one call was refused");
        assert_eq!(s.token_requests.len(), 2, "then a fresh token was fetched");
        assert_eq!(s.changes.len(), 1);
    });
}

#[tokio::test]
async fn a_ticket_ending_in_error_fails_the_resize() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    let (_, actuator) = started(&fake, dir.path()).await;
    fake.with(|s| s.script = Some(Script::FailAt(2)));
    let outcome = send(&actuator, &request("d-3", "web-1", WAIT)).await;
    match &outcome.verdict {
        Verdict::Rejected { reason } => {
            assert!(reason.contains("ended in error (status 137)"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        fake.with(|s| s.instances[&501].cpu),
        2,
        "the instance kept its type"
    );
}

#[tokio::test]
async fn a_locked_instance_gets_no_second_operation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096), (502, 2, 4096)]);
    let (_, actuator) = started(&fake, dir.path()).await;
    // Locked by an operation started before the decision; another instance has a
    // running ticket created since (the ticket list cannot be filtered by object).
    fake.with(|s| {
        s.instances.get_mut(&501).unwrap().locked = true;
        let old = s.add_running_ticket(501);
        s.tickets.get_mut(&old).unwrap().created -= chrono::Duration::minutes(10);
    });
    let r = request("d-4", "web-1", WAIT);
    fake.with(|s| s.add_running_ticket(502));
    let outcome = send(&actuator, &r).await;
    match &outcome.verdict {
        Verdict::Rejected { reason } => assert!(reason.contains("is locked"), "{reason}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    fake.with(|s| {
        assert!(s.changes.is_empty(), "nothing was sent");
        assert!(s.polls.is_empty(), "no other ticket is followed");
        assert!(
            s.ticket_lists[0].contains_key("creationDateFrom"),
            "{:?}",
            s.ticket_lists
        );
    });
}

/// The collector dies after Oktawave created the ticket but before the answer arrived:
/// no ticket id was stored. The restarted collector finds the instance locked, finds the
/// running ticket on it created since the decision, and follows it to success: one change
/// request in all, and the resize is accepted (not a failure for the circuit breaker).
#[tokio::test]
async fn after_a_lost_answer_a_restart_follows_the_running_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096), (502, 2, 4096)]);
    fake.with(|s| {
        s.script = Some(Script::Hold);
        s.lose_change_answer = true;
    });
    let addr = fake.clone().serve().await;
    let r = request("d-9", "web-1", WAIT);

    let mut config = load(dir.path(), addr, GROUP);
    let first = rally_collector::start_actuator(&mut config).await.unwrap();
    let task = tokio::spawn({
        let r = r.clone();
        async move { send(&first, &r).await }
    });
    let t0 = Instant::now();
    while fake.with(|s| s.tickets.len()) < 1 {
        assert!(t0.elapsed() < WAIT, "the change reaches Oktawave");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;

    // Meanwhile someone starts an operation on web-2: not ours to follow.
    fake.with(|s| {
        s.add_running_ticket(502);
        s.lose_change_answer = false;
        s.released = true;
    });
    let mut config = load(dir.path(), addr, GROUP);
    let second = rally_collector::start_actuator(&mut config).await.unwrap();
    let outcome = send(&second, &r).await;
    assert_eq!(outcome.verdict, Verdict::Accepted, "{outcome:?}");
    assert!(
        answers(&outcome)
            .iter()
            .any(|a| a.contains("locked by running ticket 9001")),
        "{outcome:?}"
    );
    fake.with(|s| {
        assert_eq!(s.changes.len(), 1, "no second change_type_ticket");
        assert!(s.polls.iter().all(|&t| t == 9001), "{:?}", s.polls);
        assert_eq!(
            (s.instances[&501].cpu, s.instances[&501].ram_mb),
            (4, 8192),
            "resized once, to L"
        );
    });

    // The followed ticket was recorded: sent again, the decision resumes it.
    let again = send(&second, &r).await;
    assert_eq!(again.verdict, Verdict::Accepted, "{again:?}");
    assert_eq!(fake.with(|s| s.changes.len()), 1);
}

#[tokio::test]
async fn transient_poll_errors_are_tolerated_and_too_many_give_up() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096), (502, 2, 4096)]);
    let (_, actuator) = started(&fake, dir.path()).await;
    fake.with(|s| s.failing_polls = 2);
    let outcome = send(&actuator, &request("d-5", "web-1", WAIT)).await;
    assert_eq!(outcome.verdict, Verdict::Accepted, "{outcome:?}");
    // max_transient_errors = 3: the fourth failure in a row gives up.
    fake.with(|s| s.failing_polls = 10);
    let outcome = send(&actuator, &request("d-6", "web-2", WAIT)).await;
    assert!(
        matches!(outcome.verdict, Verdict::GaveUp { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.attempts.len(),
        1 + 4,
        "the change, then four failed polls"
    );
}

#[tokio::test]
async fn a_ticket_still_running_at_the_verification_deadline_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    let (_, actuator) = started(&fake, dir.path()).await;
    fake.with(|s| s.script = Some(Script::Hold));
    let outcome = send(
        &actuator,
        &request("d-7", "web-1", Duration::from_millis(400)),
    )
    .await;
    match &outcome.verdict {
        Verdict::GaveUp { reason } => assert!(reason.contains("verification deadline"), "{reason}"),
        other => panic!("expected to give up, got {other:?}"),
    }
}

#[tokio::test]
async fn a_restarted_collector_resumes_the_same_ticket_and_sends_no_second_change() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    fake.with(|s| s.script = Some(Script::Hold));
    let addr = fake.clone().serve().await;
    let r = request("d-8", "web-1", WAIT);

    // First collector: the change is requested, the ticket runs; the process dies.
    let mut config = load(dir.path(), addr, GROUP);
    let first = rally_collector::start_actuator(&mut config).await.unwrap();
    let task = tokio::spawn({
        let r = r.clone();
        async move { send(&first, &r).await }
    });
    let t0 = Instant::now();
    while fake.with(|s| s.polls.len()) < 2 {
        assert!(t0.elapsed() < WAIT, "the ticket is polled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;

    // Second collector, same state directory: the engine sends the unanswered decision
    // again with the same id; the actuator finds its ticket and only polls it.
    let mut config = load(dir.path(), addr, GROUP);
    let second = rally_collector::start_actuator(&mut config).await.unwrap();
    fake.with(|s| s.released = true);
    let outcome = send(&second, &r).await;
    assert_eq!(outcome.verdict, Verdict::Accepted, "{outcome:?}");
    fake.with(|s| {
        assert_eq!(s.changes.len(), 1, "no second change_type_ticket");
        assert!(s.polls.iter().all(|&t| t == 9001), "{:?}", s.polls);
    });
}

#[tokio::test]
async fn an_unknown_type_in_a_ladder_refuses_start() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096)]);
    let addr = fake.clone().serve().await;
    let group = GROUP.replace("oktawave_type = 1048", "oktawave_type = \"v9.huge\"");
    let mut config = load(dir.path(), addr, &group);
    let err = rally_collector::start_actuator(&mut config)
        .await
        .err()
        .expect("start refused")
        .to_string();
    assert!(
        err.contains("rung `L`") && err.contains("no instance type \"v9.huge\""),
        "{err}"
    );
    // A size no type has is refused too.
    let group = GROUP.replace(
        "vcpus = 8, memory_bytes = 17179869184",
        "vcpus = 8, memory_bytes = 17179869185",
    );
    let mut config = load(dir.path(), addr, &group);
    let err = rally_collector::start_actuator(&mut config)
        .await
        .err()
        .expect("start refused")
        .to_string();
    assert!(
        err.contains("rung `XL`: no Oktawave instance type has"),
        "{err}"
    );
    // And a member without an instance id.
    let group = GROUP.replace("[\"web-1\", \"web-2\"]", "[\"web-1\", \"web-9\"]");
    let mut config = load(dir.path(), addr, &group);
    let err = rally_collector::start_actuator(&mut config)
        .await
        .err()
        .expect("start refused")
        .to_string();
    assert!(
        err.contains("VM `web-9` has no Oktawave instance id"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_oktawave_keys() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let source = format!(
        "[state]\ndir = \"{}\"\n{GROUP}{}",
        dir.path().display(),
        actuator_toml(dir.path(), addr)
    );
    std::fs::remove_file(dir.path().join("password")).unwrap();
    let err = Config::from_toml(&source, Path::new("collector.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("actuator.password_file"), "{err}");
    // A rung naming a type without the Oktawave actuator.
    let err = Config::from_toml(
        &format!("{GROUP}[actuator]\nkind = \"log\"\n"),
        Path::new("collector.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("oktawave_type") && err.contains("groups[0].ladder"),
        "{err}"
    );
}

/// End to end through a real collector: a manual resize decided over the API reaches the
/// fake's change_type_ticket; the ticket succeeds; a fake agent reports the new size; the
/// resize is verified. Prints the two figures the issue asks for.
#[tokio::test]
async fn end_to_end_figures_decision_to_ticket_and_report_to_verified() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(&[(501, 2, 4096), (502, 2, 4096)]);
    let addr = fake.clone().serve().await;
    let extra = format!(
        "{GROUP}\n[engine]\ntick = \"100ms\"\n{}",
        actuator_toml(dir.path(), addr)
    );
    let collector = support::start(&extra).await;

    // The agent of web-1 reports M's size (MemTotal a little under the rung) every 50 ms.
    let size = |vcpus: u32, mib: u64| rally_proto::v1::VmSize {
        vcpus,
        memory_bytes: (mib - 150) * MIB,
        ..Default::default()
    };
    let mut hello = support::hello("web-1", 1);
    hello.size = Some(size(2, 4096));
    let (agent, _) = support::Agent::connect(collector.grpc, None, hello).await;
    let reported = Arc::new(Mutex::new(size(2, 4096)));
    let new_size_sent_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let reporter = {
        let (reported, sent_at) = (Arc::clone(&reported), Arc::clone(&new_size_sent_at));
        tokio::spawn(async move {
            for seq in 1.. {
                let mut r = support::report(seq, 0.3);
                let s = *reported.lock().unwrap();
                r.size = Some(s);
                r.memory.as_mut().unwrap().total_bytes = s.memory_bytes;
                r.memory.as_mut().unwrap().available_bytes = s.memory_bytes / 2;
                agent.report(r).await;
                if s.vcpus == 4 {
                    sent_at.lock().unwrap().get_or_insert_with(Instant::now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    // Wait until the fleet knows web-1's size, then ask for L.
    let decision = loop {
        let resp = http
            .post(collector.url("/api/v1/vms/web-1/resize"))
            .json(&json!({"rung": "L"}))
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            break resp.json::<Value>().await.unwrap();
        }
        assert!(
            t0.elapsed() < WAIT,
            "resize accepted: {}",
            resp.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = decision["id"].as_str().unwrap().to_owned();
    let created_at: chrono::DateTime<chrono::Utc> =
        decision["created_at"].as_str().unwrap().parse().unwrap();

    // The ticket request reaches the fake.
    let change_at = loop {
        if let Some(at) = fake.with(|s| s.changes.first().map(|c| c.at)) {
            break at;
        }
        assert!(t0.elapsed() < WAIT, "change_type_ticket sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The ticket ends; the guest (with the udev rule) onlines what was hot-added.
    while fake.with(|s| s.instances[&501].cpu) != 4 {
        assert!(t0.elapsed() < WAIT, "ticket succeeded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *reported.lock().unwrap() = size(4, 8192);
    let verified_seen = loop {
        let decisions: Value = http
            .get(collector.url("/api/v1/decisions?vm=web-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = decisions.as_array().cloned().unwrap_or_else(|| {
            decisions["decisions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        });
        let row = rows
            .iter()
            .find(|d| d["decision"]["id"] == id.as_str() || d["id"] == id.as_str());
        if row.is_some_and(|d| d["status"] == "verified") {
            break Instant::now();
        }
        assert!(t0.elapsed() < WAIT, "verified: {decisions}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    reporter.abort();
    let decision_to_ticket = (change_at - created_at).to_std().unwrap_or_default();
    let sent_at = new_size_sent_at.lock().unwrap().expect("new size reported");
    let report_to_verified = verified_seen.duration_since(sent_at);
    println!(
        "FIGURES oktawave end to end (engine tick 100 ms, poll_interval 50 ms, reports every 50 ms, \
         API polled every 5 ms): decision -> change_type_ticket request {:.1} ms; \
         agent reports new size -> resize verified {:.1} ms",
        decision_to_ticket.as_secs_f64() * 1e3,
        report_to_verified.as_secs_f64() * 1e3
    );
    assert_eq!(fake.with(|s| s.changes.len()), 1);
    collector.stop().await.unwrap();
}

/// With `[ha]` the ticket store is etcd's: the leader dies while Oktawave works on its
/// change; the next leader, sending the unanswered decision again (same id), finds the
/// ticket the old one recorded under its term and follows it: one change in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_follows_the_ticket_the_old_one_started() {
    use rally_collector::StateSource;
    use rally_etcd::Term;

    let dir = tempfile::tempdir().unwrap();
    let (_server, etcd) = support::etcd::EtcdServer::start(dir.path()).await;
    let fake = Fake::new(&[(501, 2, 4096), (502, 2, 4096)]);
    fake.with(|s| s.script = Some(Script::Hold));
    let addr = fake.clone().serve().await;
    let r = request("d-ha", "web-1", WAIT);
    let source = |term: Term| StateSource::Etcd {
        etcd: Box::new(etcd.clone()),
        prefix: "/okt".into(),
        term: tokio::sync::watch::channel(Some(term)).1,
    };

    let lease_a = etcd.grant(10).await.unwrap();
    let term_a = Term::of(
        &etcd
            .campaign("/okt/leader", lease_a, Vec::new())
            .await
            .unwrap(),
    );
    let mut config = load(dir.path(), addr, GROUP);
    let first = rally_collector::start_actuator_on(&mut config, &source(term_a))
        .await
        .unwrap();
    let task = tokio::spawn({
        let r = r.clone();
        async move { send(&first, &r).await }
    });
    let t0 = Instant::now();
    while etcd.get("/okt/state/tickets/d-ha").await.unwrap().is_none() {
        assert!(t0.elapsed() < WAIT, "the leader records the ticket in etcd");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The leader dies; its lease ends; another collector is elected.
    task.abort();
    let _ = task.await;
    etcd.revoke(lease_a).await.unwrap();
    let lease_b = etcd.grant(10).await.unwrap();
    let term_b = Term::of(
        &etcd
            .campaign("/okt/leader", lease_b, Vec::new())
            .await
            .unwrap(),
    );

    fake.with(|s| s.released = true);
    let mut config = load(dir.path(), addr, GROUP);
    let second = rally_collector::start_actuator_on(&mut config, &source(term_b))
        .await
        .unwrap();
    let outcome = send(&second, &r).await;
    assert_eq!(outcome.verdict, Verdict::Accepted, "{outcome:?}");
    fake.with(|s| {
        assert_eq!(s.changes.len(), 1, "no second change_type_ticket");
        assert!(s.polls.iter().all(|&t| t == 9001), "{:?}", s.polls);
        assert_eq!(
            (s.instances[&501].cpu, s.instances[&501].ram_mb),
            (4, 8192),
            "resized once, to L"
        );
    });
}
