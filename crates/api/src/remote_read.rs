//! `POST /api/v1/read`: Prometheus remote read. Two response types, chosen by the request's
//! `accepted_response_types` (the first one we support, in the client's order; none = SAMPLES):
//! * `SAMPLES`: one snappy-compressed `ReadResponse` with raw samples, bounded by
//!   `remote_read_sample_limit` (over it: 400, as Prometheus).
//! * `STREAMED_XOR_CHUNKS`: a stream of frames `uvarint(len) | CRC32C(data) big-endian | data`,
//!   each data a `ChunkedReadResponse` of at most `remote_read_max_bytes_in_frame` bytes, with
//!   samples re-encoded as Prometheus XOR chunks of at most 120 samples (see [`crate::xor`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::Frame;
use prost::Message;
use tidemark_model::{Labels, MatchType, Matcher};
use tidemark_storage::SelectHints;

use crate::body::read_body;
use crate::proto::prometheus as pb;
use crate::remote_write::decompress;
use crate::state::{Api, AppState};
use crate::xor::XorEncoder;

/// Samples per XOR chunk, as Prometheus' head cuts them.
const SAMPLES_PER_CHUNK: usize = 120;

fn text(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, format!("{msg}\n")).into_response()
}

fn matchers(q: &pb::Query) -> Result<Vec<Matcher>, String> {
    q.matchers
        .iter()
        .map(|m| {
            use pb::label_matcher::Type as T;
            let kind = match T::try_from(m.r#type)
                .map_err(|_| format!("unknown matcher type {}", m.r#type))?
            {
                T::Eq => MatchType::Equal,
                T::Neq => MatchType::NotEqual,
                T::Re => MatchType::Regex,
                T::Nre => MatchType::NotRegex,
            };
            Matcher::new(kind, m.name.clone(), m.value.clone()).map_err(|e| e.to_string())
        })
        .collect()
}

fn hints(q: &pb::Query) -> SelectHints {
    let h = q.hints.clone().unwrap_or_default();
    SelectHints {
        start: if h.start_ms != 0 {
            h.start_ms
        } else {
            q.start_timestamp_ms
        },
        end: if h.end_ms != 0 {
            h.end_ms
        } else {
            q.end_timestamp_ms
        },
        step: h.step_ms,
        func: (!h.func.is_empty()).then_some(h.func),
        range: h.range_ms,
        grouping: h.grouping,
        by: h.by,
        limit: 0,
    }
}

fn pb_labels(l: &Labels) -> Vec<pb::Label> {
    l.iter()
        .map(|x| pb::Label {
            name: x.name.to_string(),
            value: x.value.to_string(),
        })
        .collect()
}

/// Why a read failed: 400 for the client's mistakes, 500/503 for storage.
#[derive(Debug)]
pub(crate) enum ReadError {
    Bad(String),
    Storage(tidemark_storage::Error),
}

impl ReadError {
    fn response(self) -> Response {
        match self {
            ReadError::Bad(m) => text(StatusCode::BAD_REQUEST, m),
            ReadError::Storage(e) if e.is_retryable() => text(StatusCode::SERVICE_UNAVAILABLE, e),
            ReadError::Storage(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

/// Answers a request with samples.
pub(crate) fn read_samples(
    api: &Api,
    req: &pb::ReadRequest,
) -> Result<pb::ReadResponse, ReadError> {
    let mut resp = pb::ReadResponse::default();
    let mut total = 0usize;
    for q in &req.queries {
        let ms = matchers(q).map_err(ReadError::Bad)?;
        let querier = api
            .queryable
            .querier(q.start_timestamp_ms, q.end_timestamp_ms)
            .map_err(ReadError::Storage)?;
        let h = hints(q);
        let mut result = pb::QueryResult::default();
        for s in querier.select(true, Some(&h), &ms) {
            let s = s.map_err(ReadError::Storage)?;
            let mut samples = Vec::new();
            let mut it = s.iter();
            while it.next() {
                let p = it.at();
                samples.push(pb::Sample {
                    value: p.v,
                    timestamp: p.t,
                });
            }
            if let Some(e) = it.err() {
                return Err(ReadError::Storage(e));
            }
            total += samples.len();
            if total > api.opts.remote_read_sample_limit {
                return Err(ReadError::Bad(format!(
                    "exceeded sample limit ({}) (raise it with --storage.remote.read-sample-limit)",
                    api.opts.remote_read_sample_limit
                )));
            }
            result.timeseries.push(pb::TimeSeries {
                labels: pb_labels(s.labels()),
                samples,
                ..Default::default()
            });
        }
        resp.results.push(result);
    }
    Ok(resp)
}

/// CRC-32C (Castagnoli), as Prometheus' chunked remote read frames carry it.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::LazyLock<[u32; 256]> = std::sync::LazyLock::new(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82f6_3b78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// One frame: `uvarint(len) | crc32c big-endian | data`.
pub(crate) fn frame(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 14);
    let mut n = data.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(&crc32c(data).to_be_bytes());
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// Produces the frames of a streamed response, handing each to `emit` (false: client gone).
pub(crate) fn stream_chunks(
    api: &Api,
    req: &pb::ReadRequest,
    emit: &mut dyn FnMut(Bytes) -> bool,
) -> Result<(), ReadError> {
    let max_frame = api.opts.remote_read_max_bytes_in_frame.max(1024);
    for (qi, q) in req.queries.iter().enumerate() {
        let ms = matchers(q).map_err(ReadError::Bad)?;
        let querier = api
            .queryable
            .querier(q.start_timestamp_ms, q.end_timestamp_ms)
            .map_err(ReadError::Storage)?;
        let h = hints(q);
        let mut msg = pb::ChunkedReadResponse {
            chunked_series: Vec::new(),
            query_index: qi as i64,
        };
        let mut size = 0usize;
        for s in querier.select(true, Some(&h), &ms) {
            let s = s.map_err(ReadError::Storage)?;
            let labels = pb_labels(s.labels());
            let labels_size: usize = labels
                .iter()
                .map(|l| l.name.len() + l.value.len() + 4)
                .sum();
            let mut cur = pb::ChunkedSeries {
                labels: labels.clone(),
                chunks: Vec::new(),
            };
            let mut it = s.iter();
            let mut enc = XorEncoder::new();
            let (mut cmin, mut cmax) = (0i64, 0i64);
            let flush_chunk = |enc: &mut XorEncoder,
                               cmin: i64,
                               cmax: i64,
                               cur: &mut pb::ChunkedSeries,
                               size: &mut usize| {
                let data = std::mem::take(enc).into_bytes();
                *size += data.len() + 24;
                cur.chunks.push(pb::Chunk {
                    min_time_ms: cmin,
                    max_time_ms: cmax,
                    r#type: pb::chunk::Encoding::Xor as i32,
                    data,
                });
            };
            while it.next() {
                let p = it.at();
                if enc.is_empty() {
                    cmin = p.t;
                }
                cmax = p.t;
                enc.append(p.t, p.v);
                if enc.len() >= SAMPLES_PER_CHUNK {
                    flush_chunk(&mut enc, cmin, cmax, &mut cur, &mut size);
                    if size + labels_size >= max_frame {
                        msg.chunked_series.push(std::mem::replace(
                            &mut cur,
                            pb::ChunkedSeries {
                                labels: labels.clone(),
                                chunks: Vec::new(),
                            },
                        ));
                        if !emit(frame(&msg.encode_to_vec())) {
                            return Ok(());
                        }
                        msg.chunked_series.clear();
                        size = 0;
                    }
                }
            }
            if let Some(e) = it.err() {
                return Err(ReadError::Storage(e));
            }
            if !enc.is_empty() {
                flush_chunk(&mut enc, cmin, cmax, &mut cur, &mut size);
            }
            if !cur.chunks.is_empty() {
                size += labels_size;
                msg.chunked_series.push(cur);
            }
            if size >= max_frame {
                if !emit(frame(&msg.encode_to_vec())) {
                    return Ok(());
                }
                msg.chunked_series.clear();
                size = 0;
            }
        }
        if !msg.chunked_series.is_empty() && !emit(frame(&msg.encode_to_vec())) {
            return Ok(());
        }
    }
    Ok(())
}

/// A response body fed by a channel (frames produced on a blocking thread).
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The handler.
pub(crate) async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let raw = match read_body(
        &headers,
        body,
        state.opts.max_request_body_bytes,
        state.opts.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req = match decompress(&raw, state.opts.max_decompressed_bytes)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            pb::ReadRequest::decode(&b[..]).map_err(|e| format!("protobuf decode error: {e}"))
        }) {
        Ok(r) => r,
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    let Ok(permit) = state.remote_read_slots.clone().acquire_owned().await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    state
        .metrics
        .remote_read_queries
        .fetch_add(req.queries.len() as u64, Ordering::Relaxed);
    let streamed = req.accepted_response_types.iter().find_map(|t| {
        match pb::read_request::ResponseType::try_from(*t) {
            Ok(pb::read_request::ResponseType::Samples) => Some(false),
            Ok(pb::read_request::ResponseType::StreamedXorChunks) => Some(true),
            Err(_) => None,
        }
    });
    let span = tracing::Span::current();
    if streamed == Some(true) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let st: Arc<Api> = state.clone();
        // Validate matchers before answering 200: afterwards errors can only end the stream.
        for q in &req.queries {
            if let Err(m) = matchers(q) {
                return text(StatusCode::BAD_REQUEST, m);
            }
        }
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(|| {
                let mut emit = |b: Bytes| tx.blocking_send(b).is_ok();
                if let Err(e) = stream_chunks(&st, &req, &mut emit) {
                    tracing::warn!(error = ?e, "streamed remote read ended early");
                }
            });
        });
        let mut r = Response::new(Body::new(ChannelBody { rx }));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(
                "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse",
            ),
        );
        return r;
    }
    let st = state.clone();
    let res = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        span.in_scope(|| read_samples(&st, &req))
    })
    .await;
    match res {
        Ok(Ok(resp)) => {
            let bytes = resp.encode_to_vec();
            match snap::raw::Encoder::new().compress_vec(&bytes) {
                Ok(c) => {
                    let mut r = c.into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-protobuf"),
                    );
                    r.headers_mut()
                        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        Ok(Err(e)) => e.response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }
}
