//! The resize API: `GET /api/v1/groups`, `GET /api/v1/decisions`, and the mutating
//! `POST /api/v1/groups/{group}/pause`, `.../resume` and `POST /api/v1/vms/{vm}/resize`.
//!
//! Mutating requests need `Authorization: Bearer <token>` when `[api] token_file` is
//! set; without it they are accepted from loopback peers only (see
//! [`ApiConfig`](crate::config::ApiConfig) for why). Errors are JSON:
//! `{"error": "...", "code": "..."}` with a 4xx status that says what to fix.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::HttpState;
use crate::engine::{DecisionRecord, GroupStatus, OrderError};
use crate::store::DecisionFilter;
use rally_policy::{Decision, ManualError, Timestamp};

/// A JSON error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    /// What went wrong, for humans.
    pub error: String,
    /// A stable code for scripts (`unknown_group`, `roll_in_progress`, ...).
    pub code: &'static str,
    /// With `not_leader`: the leading collector's URL, where to send the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(skip)]
    status: StatusCode,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            code,
            leader: None,
            status,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            OrderError::UnknownGroup(_) => (S::NOT_FOUND, "unknown_group"),
            OrderError::UnknownVm(_) => (S::NOT_FOUND, "unknown_vm"),
            OrderError::NotResized(_) => (S::CONFLICT, "not_resized"),
            OrderError::Manual(m) => match m {
                ManualError::UnknownVm(_) => (S::NOT_FOUND, "unknown_vm"),
                ManualError::UnknownRung(_) => (S::BAD_REQUEST, "unknown_rung"),
                ManualError::OutOfBounds(_) => (S::BAD_REQUEST, "out_of_bounds"),
                ManualError::NotFresh(_) => (S::CONFLICT, "not_fresh"),
                ManualError::OffLadder(_) => (S::CONFLICT, "off_ladder"),
                ManualError::AlreadyThere { .. } => (S::CONFLICT, "already_there"),
                ManualError::RollInProgress(_) => (S::CONFLICT, "roll_in_progress"),
            },
            OrderError::Store(_) => (S::INTERNAL_SERVER_ERROR, "store"),
            OrderError::Stopped => (S::SERVICE_UNAVAILABLE, "stopped"),
            OrderError::NotLeader { .. } => (S::SERVICE_UNAVAILABLE, "not_leader"),
        };
        let mut answer = ApiError::new(status, code, e.to_string());
        if let OrderError::NotLeader { leader } = e {
            answer.leader = leader;
        }
        answer
    }
}

/// Guards the mutating routes: a bearer token when one is configured, else loopback only.
pub async fn require_operator(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match check_operator(&state, request.headers(), peer) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_operator(
    state: &HttpState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    check_token(state, given, peer)
}

/// Accepts `given`, the token a request carries, when it is the configured token, or a
/// loopback peer when none is configured.
fn check_token(
    state: &HttpState,
    given: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let token = state.api_token.borrow().clone();
    match &token {
        Some(token) => match given {
            Some(given) if same(given.trim().as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "the bearer token does not match [api] token_file",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "this endpoint needs `Authorization: Bearer <token>` ([api] token_file)",
            )),
        },
        None if peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "loopback_only",
            "without [api] token_file, pause/resume/resize are accepted from loopback only",
        )),
    }
}

/// `GET /api/v1/groups`.
#[derive(Debug, Serialize)]
pub struct GroupList {
    /// Every configured group, with its members' rungs and rule readings.
    pub groups: Vec<super::api::GroupJson>,
}

/// `GET /api/v1/groups`: every group's state, built on a read thread (each member's
/// rules are read from its windows).
pub async fn groups(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    super::json_read(state, &headers, "/api/v1/groups", |state| GroupList {
        groups: super::api::groups_now(state, state.clock.now()),
    })
    .await
}

/// `POST /api/v1/groups/{group}/pause`.
pub async fn pause(
    State(state): State<HttpState>,
    Path(group): Path<String>,
) -> Result<Json<GroupStatus>, ApiError> {
    Ok(Json(state.engine.pause(&group).await?))
}

/// `POST /api/v1/groups/{group}/resume`.
pub async fn resume(
    State(state): State<HttpState>,
    Path(group): Path<String>,
) -> Result<Json<GroupStatus>, ApiError> {
    Ok(Json(state.engine.resume(&group).await?))
}

/// `POST /groups/{group}/pause` from the status page's form: the API token, when one
/// is set, comes as the form field `token`. Answers 303 to `/`.
pub async fn page_pause(
    State(state): State<HttpState>,
    Path(group): Path<String>,
    request: Request,
) -> Response {
    page_order(state, group, request, true).await
}

/// `POST /groups/{group}/resume` from the status page's form (see [`page_pause`]).
pub async fn page_resume(
    State(state): State<HttpState>,
    Path(group): Path<String>,
    request: Request,
) -> Response {
    page_order(state, group, request, false).await
}

/// The longest form body read: a token field and little else.
const FORM_LIMIT: usize = 4096;

async fn page_order(state: HttpState, group: String, request: Request, pause: bool) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let Ok(body) = axum::body::to_bytes(request.into_body(), FORM_LIMIT).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_body",
            format!("the form body is larger than {FORM_LIMIT} bytes"),
        )
        .into_response();
    };
    let token = form_field(&body, "token");
    if let Err(e) = check_token(&state, token.as_deref().filter(|t| !t.is_empty()), peer) {
        return e.into_response();
    }
    let done = if pause {
        state.engine.pause(&group).await
    } else {
        state.engine.resume(&group).await
    };
    match done {
        Ok(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The value of `name` in an `application/x-www-form-urlencoded` body, decoded.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    body.split(|b| *b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (url_decode(key) == name).then(|| url_decode(value))
    })
}

/// Form decoding: `+` is a space, `%XX` a byte; a malformed escape is kept as it is.
fn url_decode(text: &[u8]) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match text[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < text.len() => match (hex(text[i + 1]), hex(text[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of `POST /api/v1/vms/{vm}/resize`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    /// The rung to resize to.
    pub rung: String,
}

/// `POST /api/v1/vms/{vm}/resize`: 202 with the decision (persisted, queued for the actuator).
pub async fn resize(
    State(state): State<HttpState>,
    Path(vm): Path<String>,
    body: Result<Json<ResizeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Decision>), ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!(
                "expected a JSON body {{\"rung\": \"NAME\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let decision = state.engine.resize(&vm, &body.rung).await?;
    Ok((StatusCode::ACCEPTED, Json(decision)))
}

/// Query of `GET /api/v1/decisions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Only this group.
    pub group: Option<String>,
    /// Only this VM.
    pub vm: Option<String>,
    /// Only decided at or after this (RFC 3339).
    pub since: Option<String>,
    /// Only decided before this (RFC 3339).
    pub until: Option<String>,
    /// At most this many, newest first (default 100, at most 10 000).
    pub limit: Option<u32>,
}

/// `GET /api/v1/decisions`.
#[derive(Debug, Serialize)]
pub struct DecisionList {
    /// Newest first.
    pub decisions: Vec<DecisionRow>,
}

/// One row of `GET /api/v1/decisions`: the record and what became of its request.
#[derive(Debug, Serialize)]
pub struct DecisionRow {
    /// The decision, status, verdict, attempts and verification.
    #[serde(flatten)]
    pub record: DecisionRecord,
    /// `dry_run`, `pending`, `accepted`, `rejected` or `gave_up`; a dry run's `verdict`
    /// is the log actuator's and says nothing about the cloud.
    pub outcome: String,
    /// Whether the request went to the actuator (false for a dry run).
    pub sent: bool,
    /// The group's `timezone`, `null` if the group is no longer configured.
    pub timezone: Option<Tz>,
}

impl DecisionRow {
    /// `record`, with the time zone of its group among `groups`.
    pub fn new(record: DecisionRecord, groups: &[GroupStatus]) -> Self {
        let timezone = groups
            .iter()
            .find(|g| g.group == record.stored.decision.group)
            .map(|g| g.timezone);
        Self {
            outcome: record.outcome().to_owned(),
            sent: record.sent(),
            timezone,
            record,
        }
    }
}

fn rfc3339(key: &str, value: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(&v)
                .map(|t| t.to_utc())
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_time",
                        format!("{key}={v:?} is not an RFC 3339 time: {e}"),
                    )
                })
        })
        .transpose()
}

/// `GET /api/v1/decisions?group=&vm=&since=&until=&limit=`: decisions with evidence,
/// attempts, verdict, outcome and verification.
pub async fn decisions(
    State(state): State<HttpState>,
    query: Result<Query<DecisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DecisionList>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let filter = DecisionFilter {
        group: q.group,
        vm: q.vm,
        since: rfc3339("since", q.since)?,
        until: rfc3339("until", q.until)?,
        limit: q.limit,
    };
    let decisions =
        state.engine.decisions(filter).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
        })?;
    let groups = state.engine.stats().groups();
    Ok(Json(DecisionList {
        decisions: decisions
            .into_iter()
            .map(|r| DecisionRow::new(r, &groups))
            .collect(),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::http::page::tests::{dry_run_record, warming_group};

    /// An [`HttpState`] whose API token is `token` (its engine never runs).
    fn state(dir: &std::path::Path, token: Option<&str>) -> HttpState {
        use crate::clock::SystemClock;
        use crate::fleet::{Fleet, FleetSettings};
        use std::sync::Arc;
        let config = crate::config::Config::default();
        let fleet = Arc::new(Fleet::new(FleetSettings::from_config(&config)));
        let (_engine, handle) = crate::engine::Engine::new(
            &config,
            Arc::clone(&fleet),
            Arc::new(SystemClock),
            crate::store::Store::open(dir).unwrap(),
            Arc::new(crate::actuator::LogActuator),
            crate::ha::Leadership::Single,
        );
        HttpState {
            fleet,
            stats: Arc::default(),
            clock: Arc::new(SystemClock),
            ready: Arc::default(),
            engine: handle,
            api_token: tokio::sync::watch::channel(token.map(Arc::from)).1,
            leadership: crate::ha::Leadership::Single,
            reads: crate::http::reads::Reads::start(1).unwrap(),
            snapshots: Arc::default(),
        }
    }

    #[tokio::test]
    async fn the_page_form_needs_the_same_token_as_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let loopback: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let with = state(dir.path(), Some("s3cret"));
        assert!(check_token(&with, Some("s3cret"), Some(remote)).is_ok());
        assert_eq!(
            check_token(&with, Some("wrong"), Some(loopback))
                .unwrap_err()
                .code,
            "bad_token"
        );
        // With a token set, loopback alone is not enough.
        assert_eq!(
            check_token(&with, None, Some(loopback)).unwrap_err().code,
            "no_token"
        );
        let without = state(dir.path(), None);
        assert!(check_token(&without, None, Some(loopback)).is_ok());
        assert_eq!(
            check_token(&without, None, Some(remote)).unwrap_err().code,
            "loopback_only"
        );
    }

    #[test]
    fn a_form_field_is_found_and_decoded() {
        let body = b"other=1&token=a%2Bb+c%3D%3D&x";
        assert_eq!(form_field(body, "token").as_deref(), Some("a+b c=="));
        assert_eq!(form_field(body, "x").as_deref(), Some(""));
        assert_eq!(form_field(body, "missing"), None);
        assert_eq!(form_field(b"token=50%", "token").as_deref(), Some("50%"));
    }

    #[test]
    fn a_dry_run_row_says_not_sent_and_keeps_its_fields() {
        let row = DecisionRow::new(dry_run_record(), &[warming_group()]);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["outcome"], "dry_run");
        assert_eq!(json["sent"], false);
        assert_eq!(json["timezone"], "Europe/Warsaw");
        // What scripts read already stays as it was: times in RFC 3339 UTC.
        assert_eq!(json["status"], "dry_run");
        assert_eq!(json["verdict"], "accepted");
        assert_eq!(json["decision"]["created_at"], "2026-12-04T18:02:00Z");
        // A group no longer configured: no zone.
        let orphan = serde_json::to_value(DecisionRow::new(dry_run_record(), &[])).unwrap();
        assert_eq!(orphan["timezone"], serde_json::Value::Null);
    }

    #[test]
    fn a_group_names_its_zone_and_a_warm_up_its_end() {
        let json = serde_json::to_value(GroupList {
            groups: vec![warming_group().into()],
        })
        .unwrap();
        let g = &json["groups"][0];
        assert_eq!(g["timezone"], "Europe/Warsaw");
        let skip = &g["skips"][0];
        assert_eq!(skip["kind"], "missing_metric");
        assert_eq!(skip["detail"]["kind"], "missing_metric");
        assert_eq!(skip["detail"]["warming_up_until"], "2026-12-04T18:04:00Z");
        assert!(
            skip["reason"]
                .as_str()
                .unwrap()
                .starts_with("warming up until 2026-12-04T18:04:00+00:00"),
            "{skip}"
        );
    }
}
