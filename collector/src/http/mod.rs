//! The HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/api/v1/vms`, and the
//! status page at `/`. Every handler reads a snapshot of the fleet; none writes.

pub mod api;
pub mod page;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::clock::Clock;
use crate::fleet::Fleet;
use crate::ingest::IngestStats;
use crate::metrics;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// The ingest counters.
    pub stats: Arc<IngestStats>,
    /// The clock freshness is judged by.
    pub clock: Arc<dyn Clock>,
    /// True once both listeners are bound and the state directory is usable; false
    /// again while shutting down.
    pub ready: Arc<AtomicBool>,
}

/// The router of the HTTP listener.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/vms", get(vms))
        .route("/api/v1/vms/{vm}", get(vm))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = metrics::render(&state.fleet, &state.stats, state.clock.now());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn vms(State(state): State<HttpState>) -> axum::Json<api::VmList> {
    let vms = state.fleet.snapshot(state.clock.now());
    axum::Json(api::VmList {
        vms: vms.iter().map(api::VmJson::from).collect(),
    })
}

async fn vm(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match state.fleet.summary(&id, state.clock.now()) {
        Some(vm) => axum::Json(api::VmJson::from(&vm)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no VM {id:?}\n")).into_response(),
    }
}

async fn status_page(State(state): State<HttpState>) -> Html<String> {
    let vms = state.fleet.snapshot(state.clock.now());
    Html(page::render(&vms, state.fleet.stale_after()))
}
