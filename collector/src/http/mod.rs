//! The HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/api/v1/vms`, the resize API
//! (`/api/v1/groups`, `/api/v1/decisions`, pause, resume, resize) and the status page at
//! `/`. Read handlers take a snapshot of the fleet or the engine's status; the mutating
//! ones are commands to the engine task, guarded by [`control::require_operator`].

pub mod api;
pub mod control;
pub mod page;
pub mod reads;
pub mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::extract::connect_info::Connected;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::clock::Clock;
use crate::engine::EngineHandle;
use crate::fleet::{Fleet, VmSummary};
use crate::ha::Leadership;
use crate::ingest::IngestStats;
use crate::listener::{Listener, ListenerStats};
use crate::metrics;
use crate::tls::Acceptor;

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
    /// The resize engine: status, commands, decisions.
    pub engine: EngineHandle,
    /// The bearer token the mutating endpoints require (`[api] token_file`); without
    /// one they are accepted from loopback only. A reload replaces it.
    pub api_token: tokio::sync::watch::Receiver<Option<Arc<str>>>,
    /// Who leads (always this collector without `[ha]`).
    pub leadership: Leadership,
    /// The threads fleet-wide reads run on, away from the async workers.
    pub reads: reads::Reads,
    /// The fleet snapshot being copied, which reads that start meanwhile share.
    pub snapshots: Arc<snapshot::Snapshots>,
}

impl HttpState {
    /// What the collector's own metric families read (see [`metrics::Collector`]).
    fn metrics_collector(&self) -> metrics::Collector<'_> {
        metrics::Collector {
            fleet: &self.fleet,
            stats: &self.stats,
            engine: self.engine.stats(),
            leadership: &self.leadership,
        }
    }
}

/// The router of the HTTP listener.
pub fn router(state: HttpState) -> Router {
    let operator = Router::new()
        .route("/api/v1/groups/{group}/pause", post(control::pause))
        .route("/api/v1/groups/{group}/resume", post(control::resume))
        .route("/api/v1/vms/{vm}/resize", post(control::resize))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            control::require_operator,
        ));
    Router::new()
        .merge(operator)
        .route("/api/v1/groups", get(control::groups))
        .route("/api/v1/decisions", get(control::decisions))
        .route("/", get(page::handler))
        .route("/groups/{group}/pause", post(control::page_pause))
        .route("/groups/{group}/resume", post(control::page_resume))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/leader", get(leader))
        .route("/api/v1/vms", get(api::vms))
        .route("/api/v1/vms/{vm}", get(api::vm))
        .with_state(state)
}

/// The peer of one accepted connection, for axum's `ConnectInfo<SocketAddr>`.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl Connected<Peer> for SocketAddr {
    fn connect_info(peer: Peer) -> SocketAddr {
        peer.0
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests
/// finish. A connection must send its request headers within `header_timeout`, and a
/// keep-alive connection its next request's; otherwise hyper closes it.
pub async fn serve(
    mut listener: Listener,
    app: Router,
    tls: Option<Acceptor>,
    header_timeout: Duration,
    stats: Arc<ListenerStats>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let app = app.clone();
                let stats = Arc::clone(&stats);
                let stop = stop_rx.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let Some(peer) = conn.peer() else { return };
                    // The handshake runs on the connection's own task, within its deadline.
                    match tls {
                        None => serve_connection(peer, conn, app, header_timeout, stats, stop).await,
                        Some(tls) => {
                            if let Some(conn) = tls.handshake(conn, peer).await {
                                serve_connection(peer, conn, app, header_timeout, stats, stop).await;
                            }
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// Serves one HTTP/1.1 connection from `peer` (TLS, when configured, wraps `conn` before this).
async fn serve_connection<IO>(
    peer: SocketAddr,
    conn: IO,
    app: Router,
    header_timeout: Duration,
    stats: Arc<ListenerStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;

    let service = app
        .into_make_service_with_connect_info::<SocketAddr>()
        .oneshot(Peer(peer))
        .await;
    let Ok(service) = service;
    let service = hyper_util::service::TowerToHyperService::new(service.map_request(
        |request: axum::http::Request<hyper::body::Incoming>| request.map(axum::body::Body::new),
    ));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        if error.is_timeout() {
            stats.http.handshake_timed_out();
        }
        tracing::debug!(peer = %peer, %error, "HTTP connection ended with an error");
    }
}

/// `GET /metrics`, rendered on a read thread (see [`reads`]). A scraper that
/// accepts gzip (Prometheus does) gets the same text compressed (64 MB became 12 MB
/// at 20 000 VMs, BENCHMARKS.md).
async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let gzip = accepts_gzip(&headers);
    let rendered = over_snapshot(
        state,
        "/metrics",
        |state, vm_count, now| {
            // The collector's own families take the locks of what they read: written
            // here, before the VMs' families are rendered without any.
            let mut text = Vec::new();
            metrics::render_collector_to(&mut text, &state.metrics_collector(), vm_count, now)
                .map(|()| text)
        },
        move |vms, collector_text| {
            let collector_text = collector_text?;
            // Compressed as it is rendered, if at all: the text is never held whole.
            let mut body = Body::new(gzip);
            metrics::render_vms_to(body.sink(), vms)?;
            body.sink().write_all(&collector_text)?;
            metrics::render_process_to(body.sink())?;
            body.finish()
        },
    )
    .await;
    encoded_response("/metrics", metrics::CONTENT_TYPE, gzip, rendered)
}

/// How many VMs a snapshot copies between two yields to the worker's other tasks
/// (about a millisecond's worth).
const SNAPSHOT_SLICE: usize = 256;

/// Builds an answer over every VM's summary at the clock's now, in (group, id) order,
/// in three steps, none on the async workers' time for long:
///
/// 1. the summaries are copied on the async side, a slice at a time (see
///    [`crate::fleet::Snapshot`] for why not on a read thread), and ordered on a
///    `SCHED_IDLE` thread; a read that starts while another's copy is under way
///    waits for that copy and reads it too ([`snapshot::Snapshots`]);
/// 2. `gather` reads what else the answer needs, taking the locks that takes, on a
///    read thread ([`reads::Reads::run`]), given the VM count and the snapshot's time;
/// 3. `render` renders the summaries with what `gather` returned, on a `SCHED_IDLE`
///    thread ([`reads::Reads::render`]): it must take none of the collector's locks.
///    The summaries are then freed on a read thread ([`reads::Reads::drop_later`]).
///
/// How long each step took, and whether the snapshot was another read's, is logged at
/// `debug`, with `what` (the path).
async fn over_snapshot<G: Send + 'static, T: Send + 'static>(
    state: HttpState,
    what: &'static str,
    gather: impl FnOnce(&HttpState, usize, SystemTime) -> G + Send + 'static,
    render: impl FnOnce(&[VmSummary], G) -> T + Send + 'static,
) -> Result<T, reads::ReadError> {
    let began = Instant::now();
    let reads = state.reads.clone();
    let (taken, copied) = state
        .snapshots
        .take(|| async {
            let now = state.clock.now();
            let mut snapshot = state.fleet.snapshot_in_slices(now);
            while snapshot.take(SNAPSHOT_SLICE) {
                tokio::task::yield_now().await;
            }
            let summaries = reads.render(move || snapshot.finish()).await?;
            Ok::<_, reads::ReadError>(snapshot::Taken { summaries, now })
        })
        .await?;
    let copied_at = Instant::now();
    let (vm_count, now) = (taken.summaries.len(), taken.now);
    let gathered = reads.run(move || gather(&state, vm_count, now)).await?;
    let gathered_at = Instant::now();
    let disposal = reads.clone();
    let rendered = reads
        .render(move || {
            let rendered = render(&taken.summaries, gathered);
            // The summaries hold reports the workers allocated: freed elsewhere, by
            // whichever read lets go of them last.
            disposal.drop_later(taken);
            rendered
        })
        .await?;
    tracing::debug!(
        what,
        vms = vm_count,
        shared = !copied,
        snapshot = ?(copied_at - began),
        gather = ?(gathered_at - copied_at),
        render = ?gathered_at.elapsed(),
        "fleet-wide read"
    );
    Ok(rendered)
}

/// A response body being written: plain, or gzip-compressed as it goes.
enum Body {
    Plain(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl Body {
    fn new(gzip: bool) -> Self {
        if gzip {
            Body::Gzip(gzip_writer())
        } else {
            Body::Plain(Vec::new())
        }
    }

    fn sink(&mut self) -> &mut dyn std::io::Write {
        match self {
            Body::Plain(bytes) => bytes,
            Body::Gzip(encoder) => encoder,
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Body::Plain(bytes) => Ok(bytes),
            Body::Gzip(encoder) => encoder.finish(),
        }
    }
}

/// `value` as JSON, gzip-compressed as it is written when the client accepts it.
fn json_body<T: serde::Serialize>(value: &T, gzip: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Body::new(gzip);
    {
        // serde_json writes token by token: gathered first, or gzip takes 15 times
        // longer.
        let mut sink = std::io::BufWriter::with_capacity(64 * 1024, body.sink());
        serde_json::to_writer(&mut sink, value).map_err(std::io::Error::other)?;
        std::io::Write::flush(&mut sink)?;
    }
    body.finish()
}

/// Builds `read`'s value on a read thread and answers it as JSON, gzip-compressed when
/// the client accepts it.
async fn json_read<T: serde::Serialize>(
    state: HttpState,
    headers: &HeaderMap,
    what: &str,
    read: impl FnOnce(&HttpState) -> T + Send + 'static,
) -> Response {
    let gzip = accepts_gzip(headers);
    let reads = state.reads.clone();
    let body = reads.run(move || json_body(&read(&state), gzip)).await;
    encoded_response(what, JSON, gzip, body)
}

/// The `Content-Type` of the API's answers.
const JSON: &str = "application/json";

/// The response for a body a read thread built (gzip-compressed if `gzip`): a 503 when the read
/// queue is full, a 500 when the read failed.
fn encoded_response(
    what: &str,
    content_type: &'static str,
    gzip: bool,
    body: Result<std::io::Result<Vec<u8>>, reads::ReadError>,
) -> Response {
    let body = match body {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return failed(&format!("encoding {what} failed: {e}")),
        Err(e) => return read_failed(what, &e, content_type == JSON),
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// The answer to a read that produced nothing: a 503 asking to retry when the read
/// queue is full, a 500 when the read failed; for the API, as its JSON errors are.
fn read_failed(what: &str, e: &reads::ReadError, json: bool) -> Response {
    let (status, code) = match e {
        reads::ReadError::Busy => {
            tracing::warn!("{what}: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "busy")
        }
        reads::ReadError::Panicked => {
            tracing::error!("{what}: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    let mut response = if json {
        let body = serde_json::json!({ "error": format!("{what}: {e}"), "code": code });
        (status, axum::Json(body)).into_response()
    } else {
        (status, format!("{what}: {e}\n")).into_response()
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A 500 that says `why`, logged too.
fn failed(why: &str) -> Response {
    tracing::error!("{why}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")).into_response()
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a quality above 0.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// The gzip encoder responses are compressed with, at the fastest level: metrics text and JSON compress well even so
/// (over 20:1), and compressing stays cheap next to rendering.
pub fn gzip_writer() -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 once the listeners are up (a follower is ready too: it ingests and serves);
/// with `[ha]` the body also says who leads and how this collector's lease stands.
async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    let ready = state.ready.load(Ordering::Acquire);
    let (status, mut body) = if ready {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
    };
    if let Some(ha) = state.leadership.ha() {
        let s = ha.status();
        let leader = s.leader.as_ref().map_or_else(
            || "none".to_owned(),
            |l| format!("{} {} (fencing token {})", l.name, l.url, l.token),
        );
        body.push_str(&format!(
            "role: {}\nleader: {leader}\nlease: {}\n",
            s.role.as_str(),
            if s.lease_healthy {
                "healthy"
            } else {
                "not renewed"
            }
        ));
    }
    (status, body)
}

/// `GET /api/v1/leader`: this collector's part in the election (`{"ha": false}` without
/// `[ha]`: it alone decides).
async fn leader(State(state): State<HttpState>) -> Response {
    match state.leadership.ha() {
        Some(ha) => axum::Json(ha.status()).into_response(),
        None => axum::Json(serde_json::json!({ "ha": false, "role": "leader" })).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::Config;
    use crate::fleet::FleetSettings;

    /// A state over an empty default fleet, with a live engine handle.
    fn state(dir: &std::path::Path) -> HttpState {
        let config = Config::default();
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
            stats: Arc::new(IngestStats::default()),
            clock: Arc::new(SystemClock),
            ready: Arc::new(AtomicBool::new(false)),
            engine: handle,
            api_token: tokio::sync::watch::channel(None).1,
            leadership: Leadership::Single,
            reads: reads::Reads::start(1).unwrap(),
            snapshots: Arc::default(),
        }
    }

    #[test]
    fn gzip_is_used_when_accepted_with_a_quality_above_zero() {
        let accepts = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            accepts_gzip(&headers)
        };
        // What Prometheus sends.
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["deflate, GZIP;q=0.5"]));
        assert!(accepts(&["identity", "gzip"]));
        assert!(accepts(&["*"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["x-gzip2, br"]));
    }

    /// A scrape without its `process_*` samples, which change between two renders
    /// (the rest cannot).
    fn steady(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with("process_"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[tokio::test]
    async fn metrics_are_the_same_text_gzip_compressed_when_accepted() {
        use std::io::Read as _;

        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let plain = metrics(State(state.clone()), HeaderMap::new()).await;
        assert_eq!(plain.headers().get(header::CONTENT_ENCODING), None);
        let plain = axum::body::to_bytes(plain.into_body(), usize::MAX)
            .await
            .unwrap();
        let plain = String::from_utf8(plain.to_vec()).unwrap();
        assert!(plain.contains("# TYPE rally_collector_reports_total counter"));

        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let zipped = metrics(State(state), headers).await;
        assert_eq!(
            zipped.headers().get(header::CONTENT_ENCODING).unwrap(),
            "gzip"
        );
        assert_eq!(
            zipped.headers().get(header::CONTENT_TYPE).unwrap(),
            metrics::CONTENT_TYPE
        );
        let zipped = axum::body::to_bytes(zipped.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(zipped.len() < plain.len() / 3, "{} bytes", zipped.len());
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_string(&mut unzipped)
            .unwrap();
        assert_eq!(steady(&unzipped), steady(&plain));
    }

    #[tokio::test]
    async fn a_scrape_rendered_in_two_halves_is_the_whole_exposition() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (fleet, stats) = crate::metrics::tests::busy_fleet(now);
        let mut state = state(dir.path());
        state.fleet = Arc::new(fleet);
        state.stats = Arc::new(stats);
        state.clock = Arc::new(crate::clock::ManualClock::new(now));
        let scraped = metrics(State(state.clone()), HeaderMap::new()).await;
        let scraped = axum::body::to_bytes(scraped.into_body(), usize::MAX)
            .await
            .unwrap();
        let scraped = String::from_utf8(scraped.to_vec()).unwrap();
        let whole = metrics::render(&state.metrics_collector(), now);
        assert!(scraped.contains("rally_vm_up{vm=\"web-1\",group=\"web\"} 1"));
        assert!(scraped.contains("# TYPE rally_collector_reports_total counter"));
        assert_eq!(steady(&scraped), steady(&whole));
    }

    #[tokio::test]
    async fn the_api_answers_gzip_when_accepted_and_the_same_json_when_not() {
        use std::io::Read as _;

        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let plain = api::vms(State(state.clone()), HeaderMap::new()).await;
        assert_eq!(plain.status(), StatusCode::OK);
        assert_eq!(plain.headers().get(header::CONTENT_ENCODING), None);
        assert_eq!(plain.headers().get(header::CONTENT_TYPE).unwrap(), JSON);
        let plain = axum::body::to_bytes(plain.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&plain[..], br#"{"vms":[]}"#);

        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let zipped = api::vms(State(state), headers).await;
        assert_eq!(
            zipped.headers().get(header::CONTENT_ENCODING).unwrap(),
            "gzip"
        );
        let zipped = axum::body::to_bytes(zipped.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain);
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_flag() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (status, _) = readyz(State(state.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Release);
        let (status, _) = readyz(State(state.clone())).await;
        assert_eq!(status, StatusCode::OK);
    }
}
