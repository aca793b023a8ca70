//! Per-request plumbing: a request id (`X-Request-Id`, taken from the request or made up) on a
//! tracing span that covers every log line about the request, the access log line, and the
//! request count/duration metrics by handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::state::AppState;

pub(crate) const REQUEST_ID: &str = "x-request-id";

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A process-unique id: start time of the process (seconds) and a counter, in hex.
fn new_request_id() -> String {
    static EPOCH: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    format!(
        "{:08x}-{:08x}",
        *EPOCH & 0xffff_ffff,
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let handler = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let code = resp.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    state.metrics.observe_request(&handler, code, took);
    span.in_scope(|| {
        tracing::info!(target: "tidemark_api::access", status = code, duration_ms = took.as_secs_f64() * 1000.0, handler = %handler, "request served");
    });
    resp
}
