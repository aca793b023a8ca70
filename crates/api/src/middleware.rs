//! Per-request plumbing: a request id (`X-Request-Id`, taken from the request or made up) on a
//! tracing span that covers every log line about the request, the access log line, the
//! request count/duration metrics by handler, and gzip compression of JSON/text answers for
//! clients that accept it (as Prometheus' API does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
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
    let gzip = accepts_gzip(req.headers());
    let mut resp = next.run(req).instrument(span.clone()).await;
    if gzip {
        resp = compress(resp).instrument(span.clone()).await;
    }
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

fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|e| {
                let mut parts = e.trim().split(';');
                parts
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case("gzip"))
                    && !parts.any(|q| q.trim().replace(' ', "") == "q=0")
            })
        })
}

/// Answers at least this large are compressed.
const MIN_COMPRESS: usize = 1024;
/// Bodies larger than this are compressed on a blocking thread.
const BLOCKING_COMPRESS: usize = 64 << 10;
/// Larger bodies are sent as they are (they are already bounded by the query limits).
const MAX_COMPRESS: usize = 256 << 20;

/// Gzips JSON and text answers (not streams, not already encoded bodies).
async fn compress(resp: Response) -> Response {
    let compressible = resp.headers().get(header::CONTENT_ENCODING).is_none()
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("text/plain"));
    if !compressible {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_COMPRESS).await else {
        tracing::warn!("response body could not be buffered for compression");
        return Response::from_parts(parts, Body::empty());
    };
    if bytes.len() < MIN_COMPRESS {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let gz = |b: &[u8]| -> Option<Vec<u8>> {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(
            Vec::with_capacity(b.len() / 4),
            flate2::Compression::fast(),
        );
        e.write_all(b).ok()?;
        e.finish().ok()
    };
    let out = if bytes.len() >= BLOCKING_COMPRESS {
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || gz(&b))
            .await
            .ok()
            .flatten()
    } else {
        gz(&bytes)
    };
    match out {
        Some(c) => {
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts.headers.remove(header::CONTENT_LENGTH);
            parts
                .headers
                .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            Response::from_parts(parts, Body::from(c))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}
