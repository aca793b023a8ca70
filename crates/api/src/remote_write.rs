//! `POST /api/v1/write`: Prometheus remote write 1.0 (`prometheus.WriteRequest`) and 2.0
//! (`io.prometheus.write.v2.Request`), snappy block-compressed protobuf.
//!
//! Status codes (remote write spec; details and reasons in docs/api.md):
//! * 204: everything written.
//! * 400: a permanent problem, with the reason as the body: bad snappy, bad protobuf (which also
//!   covers invalid UTF-8 in strings), invalid labels (empty, duplicate or unsorted names, too
//!   many labels, too long), samples the storage refuses (out of order, out of bounds, duplicate
//!   timestamp with another value), timestamps too far in the future, native histograms. Valid
//!   series and samples of the same request are still written (a superset of what Prometheus,
//!   which rolls the whole request back, would keep); the sender drops the request either way.
//! * 413: body over the size limit; 415: unknown content type or encoding.
//! * 503 (+ `Retry-After`): the storage is temporarily unable to write (no quorum, overloaded);
//!   nothing of the request was written, the sender retries.
//! * 500: any other storage failure (the sender retries).

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use tidemark_model::{Exemplar, Labels, Metadata, MetricType};
use tidemark_storage::SeriesRef;

use crate::body::read_body;
use crate::proto::{prometheus as pb, write_v2 as v2};
use crate::series_cache::{self, SeriesCache};
use crate::state::{Api, AppState};

/// Which wire message a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    V1,
    V2,
}

/// Picks the message from `Content-Type` (no type or no `proto=` means 1.0, as Prometheus does).
pub(crate) fn proto_of(content_type: Option<&str>) -> Result<Proto, String> {
    let Some(ct) = content_type.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(Proto::V1);
    };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or_default();
    if !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(format!(
            "unsupported content type {ct:?}, expected application/x-protobuf"
        ));
    }
    for p in parts {
        if let Some(v) = p.strip_prefix("proto=") {
            return match v.trim_matches('"') {
                "prometheus.WriteRequest" => Ok(Proto::V1),
                "io.prometheus.write.v2.Request" => Ok(Proto::V2),
                other => Err(format!("unsupported proto {other:?} in content type")),
            };
        }
    }
    Ok(Proto::V1)
}

/// A permanent problem with the request as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("snappy decode error: {0}")]
    Snappy(String),
    #[error("decompressed body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("protobuf decode error: {0}")]
    Protobuf(String),
}

/// Snappy block decompression with a bound on the announced size (checked before allocating).
pub(crate) fn decompress(raw: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let size = snap::raw::decompress_len(raw).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if size > limit {
        return Err(DecodeError::TooLarge { size, limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(raw)
        .map_err(|e| DecodeError::Snappy(e.to_string()))
}

/// One series to write, decoded from either protocol.
#[derive(Debug)]
pub(crate) struct SeriesIn {
    /// Validated labels, or why they are invalid.
    pub(crate) labels: Result<Labels, String>,
    pub(crate) samples: Vec<(i64, f64)>,
    pub(crate) exemplars: Vec<Exemplar>,
    pub(crate) metadata: Option<Metadata>,
    pub(crate) histograms: usize,
    /// The storage's reference for the series, as a hint (from the series cache).
    pub(crate) sref: Option<SeriesRef>,
    /// Where the raw label bytes are in the decoded body (cached labels only).
    pub(crate) slot: Option<CacheSlot>,
}

/// A series whose validated labels are in the [`SeriesCache`].
#[derive(Debug, Clone)]
pub(crate) struct CacheSlot {
    key: u64,
    raw: std::ops::Range<usize>,
}

impl SeriesIn {
    pub(crate) fn new(labels: Result<Labels, String>) -> SeriesIn {
        SeriesIn {
            labels,
            samples: Vec::new(),
            exemplars: Vec::new(),
            metadata: None,
            histograms: 0,
            sref: None,
            slot: None,
        }
    }
}

/// A decoded request.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) series: Vec<SeriesIn>,
    /// 1.0 carries metadata per metric family, beside the series.
    pub(crate) metadata: Vec<(String, Metadata)>,
}

/// Label limits applied to ingested series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LabelLimits {
    pub(crate) max_labels: usize,
    pub(crate) max_name: usize,
    pub(crate) max_value: usize,
}

impl LabelLimits {
    pub(crate) fn of(api: &Api) -> LabelLimits {
        LabelLimits {
            max_labels: api.opts.max_labels_per_series,
            max_name: api.opts.max_label_name_bytes,
            max_value: api.opts.max_label_value_bytes,
        }
    }
}

/// Validates labels given as (name, value) in wire order: names non-empty, strictly ascending
/// (so unique), within the limits. Empty values are dropped (Prometheus treats them as absent).
pub(crate) fn validate_labels<'a>(
    pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    lim: LabelLimits,
) -> Result<Labels, String> {
    if pairs.len() > lim.max_labels {
        return Err(format!(
            "series has {} labels, more than the limit of {} (raise it with --web.max-labels-per-series)",
            pairs.len(),
            lim.max_labels
        ));
    }
    let mut prev: Option<&str> = None;
    for (n, v) in pairs.clone() {
        if n.is_empty() {
            return Err("invalid labels: empty label name".to_string());
        }
        if n.len() > lim.max_name {
            return Err(format!(
                "label name of {} bytes exceeds the limit of {} bytes",
                n.len(),
                lim.max_name
            ));
        }
        if v.len() > lim.max_value {
            return Err(format!(
                "value of label {n:?} is {} bytes, more than the limit of {} (raise it with --web.max-label-value-bytes)",
                v.len(),
                lim.max_value
            ));
        }
        if let Some(p) = prev {
            if p == n {
                return Err(format!("invalid labels: duplicate label name {n:?}"));
            }
            if p > n {
                return Err(format!(
                    "invalid labels: labels not sorted, {n:?} after {p:?}"
                ));
            }
        }
        prev = Some(n);
    }
    let l = Labels::from_sorted(pairs.filter(|(_, v)| !v.is_empty()));
    if l.is_empty() {
        return Err("invalid labels: empty label set".to_string());
    }
    Ok(l)
}

fn metric_type_v1(t: i32) -> MetricType {
    use pb::metric_metadata::MetricType as T;
    match T::try_from(t).unwrap_or(T::Unknown) {
        T::Counter => MetricType::Counter,
        T::Gauge => MetricType::Gauge,
        T::Histogram => MetricType::Histogram,
        T::Gaugehistogram => MetricType::GaugeHistogram,
        T::Summary => MetricType::Summary,
        T::Info => MetricType::Info,
        T::Stateset => MetricType::StateSet,
        T::Unknown => MetricType::Unknown,
    }
}

fn metric_type_v2(t: i32) -> MetricType {
    use v2::metadata::MetricType as T;
    match T::try_from(t).unwrap_or(T::Unspecified) {
        T::Counter => MetricType::Counter,
        T::Gauge => MetricType::Gauge,
        T::Histogram => MetricType::Histogram,
        T::Gaugehistogram => MetricType::GaugeHistogram,
        T::Summary => MetricType::Summary,
        T::Info => MetricType::Info,
        T::Stateset => MetricType::StateSet,
        T::Unspecified => MetricType::Unknown,
    }
}

fn exemplar_labels(pairs: &[pb::Label]) -> Labels {
    Labels::from_pairs(pairs.iter().map(|l| (l.name.as_str(), l.value.as_str())))
}

/// Decodes a (decompressed) 1.0 `WriteRequest` with prost (the reference for [`decode_v1`]).
#[cfg(test)]
pub(crate) fn decode_v1_prost(bytes: &[u8], lim: LabelLimits) -> Result<Batch, DecodeError> {
    let req = pb::WriteRequest::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let mut b = Batch::default();
    for ts in req.timeseries {
        let labels = validate_labels(
            ts.labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str())),
            lim,
        );
        b.series.push(SeriesIn {
            labels,
            samples: ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            exemplars: ts
                .exemplars
                .iter()
                .map(|e| Exemplar {
                    labels: exemplar_labels(&e.labels),
                    value: e.value,
                    ts: Some(e.timestamp),
                })
                .collect(),
            metadata: None,
            histograms: ts.histograms.len(),
            sref: None,
            slot: None,
        });
    }
    for m in req.metadata {
        b.metadata.push((
            m.metric_family_name,
            Metadata {
                kind: metric_type_v1(m.r#type),
                help: m.help,
                unit: m.unit,
            },
        ));
    }
    Ok(b)
}

/// A protobuf reader over a borrowed buffer (the hot part of the 1.0 decode: label strings are
/// borrowed from the request instead of allocated one by one).
struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

fn pb_err(msg: String) -> DecodeError {
    DecodeError::Protobuf(msg)
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8]) -> Rd<'a> {
        Rd { b, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.b.get(self.pos) else {
                return Err(pb_err(format!("truncated varint at byte {start}")));
            };
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(pb_err(format!(
            "varint longer than 10 bytes at byte {start}"
        )))
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u64, u8), DecodeError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.varint()?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(pb_err(format!(
                "length {n} at byte {at} runs past the end of the message ({} bytes)",
                self.b.len()
            )));
        };
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let s = self
            .b
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| pb_err(format!("truncated fixed64 at byte {}", self.pos)))?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    fn skip(&mut self, wt: u8) -> Result<(), DecodeError> {
        match wt {
            0 => self.varint().map(|_| ()),
            1 => self.fixed64().map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => {
                if self.pos + 4 > self.b.len() {
                    return Err(pb_err(format!("truncated fixed32 at byte {}", self.pos)));
                }
                self.pos += 4;
                Ok(())
            }
            w => Err(pb_err(format!(
                "invalid wire type {w} at byte {}",
                self.pos
            ))),
        }
    }

    fn expect(&self, field: u64, wt: u8, want: u8) -> Result<(), DecodeError> {
        if wt == want {
            Ok(())
        } else {
            Err(pb_err(format!(
                "invalid wire type {wt} for field {field} (expected {want}) before byte {}",
                self.pos
            )))
        }
    }
}

fn utf8<'a>(b: &'a [u8], what: &str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b)
        .map_err(|_| pb_err(format!("invalid string value: {what} is not UTF-8 encoded")))
}

/// `prometheus.Label` -> (name, value), borrowed.
fn read_label(b: &[u8]) -> Result<(&str, &str), DecodeError> {
    let mut r = Rd::new(b);
    let (mut name, mut value) = ("", "");
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, 2)?;
                name = utf8(r.bytes()?, "label name")?;
            }
            (2, wt) => {
                r.expect(2, wt, 2)?;
                value = utf8(r.bytes()?, "label value")?;
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok((name, value))
}

/// `prometheus.Sample` -> (timestamp, value).
fn read_sample(b: &[u8]) -> Result<(i64, f64), DecodeError> {
    let mut r = Rd::new(b);
    let (mut t, mut v) = (0i64, 0f64);
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, 1)?;
                v = f64::from_bits(r.fixed64()?);
            }
            (2, wt) => {
                r.expect(2, wt, 0)?;
                t = r.varint()? as i64;
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok((t, v))
}

/// Validated labels of a `TimeSeries` from its label fields (the slow path of [`read_series`]).
fn series_labels(b: &[u8], lim: LabelLimits) -> Result<Result<Labels, String>, DecodeError> {
    let mut r = Rd::new(b);
    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(16);
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, 2)?;
                labels.push(read_label(r.bytes()?)?);
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(validate_labels(labels.iter().copied(), lim))
}

/// One `TimeSeries` at `base` in the body. With a cache, the label fields (when they are
/// contiguous, as every sender writes them) are looked up by their raw bytes first.
fn read_series(
    b: &[u8],
    base: usize,
    lim: LabelLimits,
    cache: Option<&SeriesCache>,
) -> Result<SeriesIn, DecodeError> {
    let mut r = Rd::new(b);
    let mut span: Option<(usize, usize)> = None;
    let mut contiguous = true;
    let mut s = SeriesIn::new(Ok(Labels::empty()));
    while !r.done() {
        let at = r.pos;
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, 2)?;
                r.bytes()?;
                match &mut span {
                    None => span = Some((at, r.pos)),
                    Some((_, end)) => {
                        contiguous &= *end == at;
                        *end = r.pos;
                    }
                }
            }
            (2, wt) => {
                r.expect(2, wt, 2)?;
                s.samples.push(read_sample(r.bytes()?)?);
            }
            (3, wt) => {
                r.expect(3, wt, 2)?;
                let e = pb::Exemplar::decode(r.bytes()?).map_err(|e| pb_err(e.to_string()))?;
                s.exemplars.push(Exemplar {
                    labels: exemplar_labels(&e.labels),
                    value: e.value,
                    ts: Some(e.timestamp),
                });
            }
            (4, wt) => {
                r.expect(4, wt, 2)?;
                pb::Histogram::decode(r.bytes()?).map_err(|e| pb_err(e.to_string()))?;
                s.histograms += 1;
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    if let (Some(cache), Some((start, end)), true) = (cache, span, contiguous) {
        let raw = &b[start..end];
        let key = series_cache::key_of(raw);
        let slot = CacheSlot {
            key,
            raw: base + start..base + end,
        };
        if let Some((labels, sref)) = cache.get(key, raw) {
            s.labels = Ok(labels);
            s.sref = sref;
            s.slot = Some(slot);
            return Ok(s);
        }
        s.labels = series_labels(b, lim)?;
        if let Ok(l) = &s.labels {
            cache.put(key, raw, l, None);
            s.slot = Some(slot);
        }
        return Ok(s);
    }
    s.labels = series_labels(b, lim)?;
    Ok(s)
}

/// Decodes a (decompressed) 1.0 `WriteRequest`. Hand-written for the hot path (label strings
/// borrowed from the buffer, one allocation per series for its `Labels`); it agrees with prost's
/// decoding on every valid message (differential property test) and is fuzzed.
pub(crate) fn decode_v1(bytes: &[u8], lim: LabelLimits) -> Result<Batch, DecodeError> {
    decode_v1_cached(bytes, lim, None)
}

/// [`decode_v1`] with the series cache: series whose raw label bytes are cached get their
/// labels (and reference hint) from it; the others are validated and added to it.
pub(crate) fn decode_v1_cached(
    bytes: &[u8],
    lim: LabelLimits,
    cache: Option<&SeriesCache>,
) -> Result<Batch, DecodeError> {
    let mut r = Rd::new(bytes);
    let mut b = Batch::default();
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, 2)?;
                let sb = r.bytes()?;
                let base = r.pos - sb.len();
                b.series.push(read_series(sb, base, lim, cache)?);
            }
            (3, wt) => {
                r.expect(3, wt, 2)?;
                let m =
                    pb::MetricMetadata::decode(r.bytes()?).map_err(|e| pb_err(e.to_string()))?;
                b.metadata.push((
                    m.metric_family_name,
                    Metadata {
                        kind: metric_type_v1(m.r#type),
                        help: m.help,
                        unit: m.unit,
                    },
                ));
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(b)
}

fn symbol(symbols: &[String], r: u32) -> Result<&str, String> {
    symbols.get(r as usize).map(String::as_str).ok_or_else(|| {
        format!(
            "symbol reference {r} out of range of the symbols table ({} entries)",
            symbols.len()
        )
    })
}

fn ref_pairs<'a>(symbols: &'a [String], refs: &[u32]) -> Result<Vec<(&'a str, &'a str)>, String> {
    if !refs.len().is_multiple_of(2) {
        return Err(format!("odd number of label references ({})", refs.len()));
    }
    refs.chunks_exact(2)
        .map(|c| Ok((symbol(symbols, c[0])?, symbol(symbols, c[1])?)))
        .collect()
}

/// Decodes a (decompressed) 2.0 `Request`.
pub(crate) fn decode_v2(bytes: &[u8], lim: LabelLimits) -> Result<Batch, DecodeError> {
    let req = v2::Request::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let syms = &req.symbols;
    let mut b = Batch::default();
    for ts in &req.timeseries {
        let labels =
            ref_pairs(syms, &ts.labels_refs).and_then(|p| validate_labels(p.into_iter(), lim));
        let mut exemplars = Vec::new();
        for e in &ts.exemplars {
            if let Ok(p) = ref_pairs(syms, &e.labels_refs) {
                exemplars.push(Exemplar {
                    labels: Labels::from_pairs(p),
                    value: e.value,
                    ts: Some(e.timestamp),
                });
            }
        }
        let metadata = ts.metadata.as_ref().and_then(|m| {
            let kind = metric_type_v2(m.r#type);
            let help = symbol(syms, m.help_ref).ok()?.to_string();
            let unit = symbol(syms, m.unit_ref).ok()?.to_string();
            (kind != MetricType::Unknown || !help.is_empty() || !unit.is_empty())
                .then_some(Metadata { kind, help, unit })
        });
        b.series.push(SeriesIn {
            labels,
            samples: ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            exemplars,
            metadata,
            histograms: ts.histograms.len(),
            sref: None,
            slot: None,
        });
    }
    Ok(b)
}

/// What happened to a batch.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) samples_written: u64,
    pub(crate) exemplars_written: u64,
    pub(crate) rejected: u64,
    /// The first few reasons, for the 400 body.
    pub(crate) errors: Vec<String>,
    /// A storage failure that failed the whole batch (nothing written).
    pub(crate) fatal: Option<tidemark_storage::Error>,
}

impl Outcome {
    fn reject(&mut self, api: &Api, reason: &'static str, n: u64, msg: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.rejected += n;
        api.metrics.rejected(reason, n);
        if self.errors.len() < 5 {
            self.errors.push(msg());
        }
    }
}

fn reason_of(e: &tidemark_storage::Error) -> &'static str {
    use tidemark_storage::Error as E;
    match e {
        E::OutOfOrder => "out_of_order",
        E::OutOfBounds => "out_of_bounds",
        E::DuplicateSampleForTimestamp => "duplicate_timestamp",
        E::TooOld => "too_old",
        E::InvalidLabels(_) => "invalid_labels",
        _ => "other",
    }
}

/// Appends a decoded batch: invalid series and refused samples are skipped and reported, the rest
/// is committed. `min_t`/`max_t` bound accepted timestamps (None: no bound).
pub(crate) fn apply(api: &Api, batch: Batch, min_t: Option<i64>, max_t: Option<i64>) -> Outcome {
    apply_cached(api, batch, min_t, max_t, &[])
}

/// [`apply`] for a batch decoded with the series cache from `body` (references the storage
/// returns are remembered in the cache as hints for the next request).
pub(crate) fn apply_cached(
    api: &Api,
    batch: Batch,
    min_t: Option<i64>,
    max_t: Option<i64>,
    body: &[u8],
) -> Outcome {
    let mut out = Outcome::default();
    let mut app = api.appendable.appender();
    for (name, m) in &batch.metadata {
        if !name.is_empty() && api.metadata.set(name, m.clone()) {
            api.metrics.metadata_written.fetch_add(1, Ordering::Relaxed);
            // Per-family metadata (remote write 1.0), for storages that keep metadata.
            let family = Labels::from_pairs([("__name__", name.as_str())]);
            let _ = app.update_metadata(SeriesRef(0), &family, m);
        }
    }
    for s in batch.series {
        let labels = match s.labels {
            Ok(l) => l,
            Err(msg) => {
                let n = (s.samples.len() + s.histograms) as u64;
                out.reject(api, "invalid_labels", n.max(1), || msg);
                continue;
            }
        };
        if s.histograms > 0 {
            out.reject(api, "native_histogram", s.histograms as u64, || {
                format!("native histograms are not supported yet (series {labels})")
            });
        }
        let hint = s.sref;
        let mut sref: Option<SeriesRef> = hint;
        for (t, v) in s.samples {
            if max_t.is_some_and(|m| t > m) {
                out.reject(api, "too_far_in_future", 1, || {
                    format!("sample timestamp {t} is too far in the future (series {labels})")
                });
                continue;
            }
            if min_t.is_some_and(|m| t < m) {
                out.reject(api, "too_old", 1, || {
                    format!("sample timestamp {t} is too old (series {labels})")
                });
                continue;
            }
            match app.append(sref, &labels, t, v) {
                Ok(r) => {
                    sref = Some(r);
                    out.samples_written += 1;
                }
                Err(e)
                    if e.is_sample_error()
                        || matches!(e, tidemark_storage::Error::InvalidLabels(_)) =>
                {
                    out.reject(api, reason_of(&e), 1, || {
                        format!("{e} for series {labels} at timestamp {t}")
                    });
                }
                Err(e) => {
                    let _ = app.rollback();
                    out.samples_written = 0;
                    out.exemplars_written = 0;
                    out.fatal = Some(e);
                    return out;
                }
            }
        }
        if let (Some(slot), Some(r)) = (&s.slot, sref)
            && hint != Some(r)
            && let Some(raw) = body.get(slot.raw.clone())
        {
            api.series_cache.set_ref(slot.key, raw, r);
        }
        if let Some(m) = &s.metadata
            && let Some(name) = labels.metric_name()
            && api.metadata.set(name, m.clone())
        {
            api.metrics.metadata_written.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = sref {
                let _ = app.update_metadata(r, &labels, m);
            }
        }
        for e in s.exemplars {
            if let Some(r) = sref {
                let _ = app.append_exemplar(r, &labels, &e);
            }
            if api.exemplars.add(&labels, e) {
                out.exemplars_written += 1;
            }
        }
    }
    if let Err(e) = app.commit() {
        out.samples_written = 0;
        out.fatal = Some(e);
        return out;
    }
    api.metrics
        .samples_written
        .fetch_add(out.samples_written, Ordering::Relaxed);
    api.metrics
        .exemplars_written
        .fetch_add(out.exemplars_written, Ordering::Relaxed);
    out
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (status, m).into_response()
}

/// Turns an outcome into the spec's response.
pub(crate) fn outcome_response(api: &Api, out: &Outcome, proto: Proto) -> Response {
    let mut resp = if let Some(e) = &out.fatal {
        if e.is_retryable() {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            if let Ok(v) = HeaderValue::from_str(&api.opts.retry_after.as_secs().max(1).to_string())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        } else if matches!(e, tidemark_storage::Error::Limit(_)) {
            text(StatusCode::BAD_REQUEST, e.to_string())
        } else {
            tracing::error!(error = %e, "remote write failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    } else if out.rejected > 0 {
        tracing::warn!(rejected = out.rejected, written = out.samples_written, first = %out.errors.join("; "), "remote write partially rejected");
        text(
            StatusCode::BAD_REQUEST,
            format!(
                "{} samples rejected, {} written; first errors: {}",
                out.rejected,
                out.samples_written,
                out.errors.join("; ")
            ),
        )
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    if proto == Proto::V2 {
        let h = resp.headers_mut();
        h.insert(
            "x-prometheus-remote-write-samples-written",
            HeaderValue::from(out.samples_written),
        );
        h.insert(
            "x-prometheus-remote-write-histograms-written",
            HeaderValue::from(0u64),
        );
        h.insert(
            "x-prometheus-remote-write-exemplars-written",
            HeaderValue::from(out.exemplars_written),
        );
    }
    resp
}

/// The handler.
pub(crate) async fn write(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !state.opts.enable_remote_write_receiver {
        return text(
            StatusCode::NOT_FOUND,
            "remote write receiver needs to be enabled with --web.enable-remote-write-receiver",
        );
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let proto = match proto_of(ct) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg),
    };
    if let Some(enc) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        && !enc.eq_ignore_ascii_case("snappy")
    {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content encoding {enc:?}, only snappy is supported"),
        );
    }
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
    let st = state.clone();
    let res = crate::handlers::blocking(move || {
        let lim = LabelLimits::of(&st);
        let decoded = decompress(&raw, st.opts.max_decompressed_bytes).and_then(|b| match proto {
            Proto::V1 => decode_v1_cached(&b, lim, Some(&st.series_cache)).map(|d| (d, b)),
            Proto::V2 => decode_v2(&b, lim).map(|d| (d, Vec::new())),
        });
        let (batch, body) = match decoded {
            Ok(b) => b,
            Err(e) => {
                st.metrics.rejected("bad_request", 1);
                return Ok(Err(e));
            }
        };
        let now = tidemark_model::time::now_millis();
        let max_t = now.saturating_add(st.opts.max_sample_ahead.as_millis() as i64);
        let min_t = st
            .opts
            .max_sample_age
            .map(|a| now.saturating_sub(a.as_millis() as i64));
        Ok(Ok(apply_cached(&st, batch, min_t, Some(max_t), &body)))
    })
    .await;
    match res {
        Ok(Ok(out)) => outcome_response(&state, &out, proto),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "remote write request rejected");
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> LabelLimits {
        LabelLimits {
            max_labels: 4,
            max_name: 8,
            max_value: 8,
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(proto_of(None), Ok(Proto::V1));
        assert_eq!(proto_of(Some("application/x-protobuf")), Ok(Proto::V1));
        assert_eq!(
            proto_of(Some("application/x-protobuf;proto=prometheus.WriteRequest")),
            Ok(Proto::V1)
        );
        assert_eq!(
            proto_of(Some(
                "application/x-protobuf; proto=io.prometheus.write.v2.Request"
            )),
            Ok(Proto::V2)
        );
        assert!(proto_of(Some("application/x-protobuf;proto=foo.Bar")).is_err());
        assert!(proto_of(Some("application/json")).is_err());
    }

    #[test]
    fn label_validation() {
        let v = |p: &[(&'static str, &'static str)]| validate_labels(p.iter().copied(), lim());
        assert!(v(&[("__name__", "a"), ("b", "c")]).is_ok());
        assert!(
            v(&[("b", "c"), ("a", "c")])
                .unwrap_err()
                .contains("not sorted")
        );
        assert!(
            v(&[("a", "c"), ("a", "d")])
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(v(&[("", "c")]).unwrap_err().contains("empty label name"));
        assert!(v(&[("a", "")]).unwrap_err().contains("empty label set"));
        assert!(
            v(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")])
                .unwrap_err()
                .contains("limit")
        );
        assert!(v(&[("a", "123456789")]).unwrap_err().contains("limit"));
        assert_eq!(
            v(&[("a", "1"), ("b", "")]).unwrap(),
            Labels::from_pairs([("a", "1")])
        );
    }

    fn api(storage: &tidemark_storage::memory::MemStorage) -> Api {
        Api::new(
            std::sync::Arc::new(storage.clone()),
            std::sync::Arc::new(storage.clone()),
            tidemark_promql::Engine::new(Default::default()),
            crate::ApiOptions::default(),
        )
    }

    /// The model's idea of valid labels: non-empty names, strictly ascending, some non-empty
    /// value, at most 4 labels.
    fn model_valid(pairs: &[(String, String)]) -> bool {
        pairs.len() <= 4
            && pairs.iter().all(|(n, _)| !n.is_empty())
            && pairs.windows(2).all(|w| w[0].0 < w[1].0)
            && pairs.iter().any(|(_, v)| !v.is_empty())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

        /// `apply` writes exactly the samples of valid series with timestamps not past `max_t`
        /// (later samples of a timestamp replace earlier ones, as MemStorage commits them), and
        /// counts every other sample as rejected.
        #[test]
        fn apply_matches_model(
            batch in proptest::collection::vec((
                proptest::collection::vec(("[a-c]{0,2}", "[xy]{0,1}"), 0..6),
                proptest::collection::vec((0i64..30, 0u8..4), 0..6),
            ), 0..6),
        ) {
            use std::collections::BTreeMap;
            let storage = tidemark_storage::memory::MemStorage::new();
            let a = api(&storage);
            let lim = LabelLimits { max_labels: 4, max_name: 8, max_value: 8 };
            let max_t = 25;
            let mut model: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
            let mut want_written = 0u64;
            let mut want_rejected = 0u64;
            let mut b = Batch::default();
            for (pairs, samples) in &batch {
                let labels = validate_labels(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())), lim);
                proptest::prop_assert_eq!(labels.is_ok(), model_valid(pairs), "{:?}", pairs);
                let mut s = SeriesIn::new(labels.clone());
                s.samples = samples.iter().map(|&(t, v)| (t, f64::from(v))).collect();
                match &labels {
                    Ok(l) => {
                        for &(t, v) in &s.samples {
                            if t > max_t {
                                want_rejected += 1;
                            } else {
                                want_written += 1;
                                model.entry(l.clone()).or_default().insert(t, v);
                            }
                        }
                    }
                    Err(_) => want_rejected += (s.samples.len() as u64).max(1),
                }
                b.series.push(s);
            }
            let out = apply(&a, b, None, Some(max_t));
            proptest::prop_assert!(out.fatal.is_none());
            proptest::prop_assert_eq!(out.samples_written, want_written);
            proptest::prop_assert_eq!(out.rejected, want_rejected);
            let q = tidemark_storage::Queryable::querier(&storage, i64::MIN / 2, i64::MAX / 2).unwrap();
            let mut got: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
            for series in q.select(true, None, &[]) {
                let series = series.unwrap();
                let mut it = series.iter();
                while it.next() {
                    let p = it.at();
                    got.entry(series.labels().clone()).or_default().insert(p.t, p.v);
                }
            }
            proptest::prop_assert_eq!(got, model);
        }
    }

    fn summary(b: &Batch) -> Vec<String> {
        let mut out: Vec<String> = b
            .series
            .iter()
            .map(|s| {
                let samples: Vec<(i64, u64)> =
                    s.samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
                format!(
                    "{:?} {:?} {:?} {}",
                    s.labels, samples, s.exemplars, s.histograms
                )
            })
            .collect();
        out.extend(b.metadata.iter().map(|m| format!("{m:?}")));
        out
    }

    static CACHE: std::sync::LazyLock<SeriesCache> =
        std::sync::LazyLock::new(|| SeriesCache::new(40));

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

        /// The hand-written 1.0 decoder agrees with prost on every message prost encodes.
        #[test]
        fn fast_v1_decode_matches_prost(
            series in proptest::collection::vec((
                proptest::collection::vec(("[a-c_]{0,3}|é|\\PC{0,4}", "[xy]{0,2}|\\PC{0,3}"), 0..5),
                proptest::collection::vec((proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>()), 0..5),
                0usize..2,
                0usize..2,
            ), 0..5),
            meta in proptest::collection::vec(("[a-z]{0,5}", 0i32..9, "\\PC{0,5}"), 0..3),
        ) {
            let req = pb::WriteRequest {
                timeseries: series.iter().map(|(labels, samples, ex, hist)| pb::TimeSeries {
                    labels: labels.iter().map(|(n, v)| pb::Label { name: n.clone(), value: v.clone() }).collect(),
                    samples: samples.iter().map(|&(t, v)| pb::Sample { value: f64::from_bits(v), timestamp: t }).collect(),
                    exemplars: (0..*ex).map(|i| pb::Exemplar { labels: vec![pb::Label { name: "id".into(), value: i.to_string() }], value: 1.0, timestamp: i as i64 }).collect(),
                    histograms: (0..*hist).map(|_| pb::Histogram { sum: 1.0, ..Default::default() }).collect(),
                }).collect(),
                metadata: meta.iter().map(|(n, t, h)| pb::MetricMetadata { r#type: *t, metric_family_name: n.clone(), help: h.clone(), unit: String::new() }).collect(),
            };
            let bytes = req.encode_to_vec();
            let fast = decode_v1(&bytes, lim()).unwrap();
            let slow = decode_v1_prost(&bytes, lim()).unwrap();
            proptest::prop_assert_eq!(summary(&fast), summary(&slow));
            // Through the series cache (shared by every case, small, so it also rotates
            // generations): the first decode fills it, the second is served from it.
            for _ in 0..2 {
                let cached = decode_v1_cached(&bytes, lim(), Some(&CACHE)).unwrap();
                proptest::prop_assert_eq!(summary(&cached), summary(&slow));
            }
            // Every truncation fails or decodes without panicking in both.
            for cut in [bytes.len() / 2, bytes.len().saturating_sub(1)] {
                let _ = decode_v1(&bytes[..cut], lim());
            }
        }
    }

    #[test]
    fn fast_v1_decode_errors() {
        assert!(
            decode_v1(&[0x0a, 0x05, 0x0a], lim())
                .unwrap_err()
                .to_string()
                .contains("runs past the end")
        );
        assert!(
            decode_v1(&[0x0b], lim())
                .unwrap_err()
                .to_string()
                .contains("invalid wire type")
        );
        assert!(decode_v1(&[0x08; 11], lim()).is_err());
        let e = decode_v1(&[0x0a, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe], lim()).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }

    #[test]
    fn decompress_bounds() {
        let data = vec![7u8; 10_000];
        let c = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(decompress(&c, 10_000).unwrap(), data);
        assert!(matches!(
            decompress(&c, 9_999),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress(b"\xff\xff\xff\xff\x0f garbage", 1 << 20),
            Err(DecodeError::Snappy(_)) | Err(DecodeError::TooLarge { .. })
        ));
    }
}
