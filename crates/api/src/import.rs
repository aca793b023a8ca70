//! `POST /api/v1/import`: backfill from the Prometheus text format or OpenMetrics (chosen by
//! `Content-Type`; text by default). Samples may be of any age (the storage decides what it keeps;
//! the API adds no lower bound), samples without a timestamp get the `timestamp` parameter (or
//! now). `# TYPE`/`# HELP`/`# UNIT` land in the metadata store. Answers 204 like remote write; a
//! parse error is a 400 that names the line; refused samples are reported as in remote write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tidemark_model::{Labels, Metadata};

use crate::body::read_body;
use crate::params::Params;
use crate::providers::{ExpositionParser, ImportEntry};
use crate::remote_write::{
    Batch, LabelLimits, Proto, SeriesIn, apply, outcome_response, validate_labels,
};
use crate::state::AppState;

/// The default [`ExpositionParser`]: tidemark-scrape's text/OpenMetrics parser.
#[derive(Debug, Default)]
pub(crate) struct ScrapeParser;

impl ExpositionParser for ScrapeParser {
    fn parse(&self, body: &[u8], content_type: &str) -> Result<Vec<ImportEntry>, String> {
        use tidemark_scrape::parse::Entry;
        let mut out = Vec::new();
        let mut meta: BTreeMap<String, Metadata> = BTreeMap::new();
        for e in tidemark_scrape::parse::parse(body, content_type, 0) {
            match e.map_err(|e| e.to_string())? {
                Entry::Sample {
                    labels,
                    t,
                    timestamped,
                    v,
                    exemplar,
                } => {
                    out.push(ImportEntry::Sample {
                        labels,
                        t: timestamped.then_some(t),
                        v,
                        exemplar,
                    });
                }
                Entry::Help { metric, help } => meta.entry(metric).or_default().help = help,
                Entry::Type { metric, kind } => meta.entry(metric).or_default().kind = kind,
                Entry::Unit { metric, unit } => meta.entry(metric).or_default().unit = unit,
            }
        }
        out.extend(
            meta.into_iter()
                .map(|(metric, metadata)| ImportEntry::Metadata { metric, metadata }),
        );
        Ok(out)
    }
}

/// Groups parsed entries into a batch, validating labels with the remote write limits.
pub(crate) fn to_batch(entries: Vec<ImportEntry>, default_t: i64, lim: LabelLimits) -> Batch {
    let mut b = Batch::default();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for e in entries {
        match e {
            ImportEntry::Metadata { metric, metadata } => b.metadata.push((metric, metadata)),
            ImportEntry::Sample {
                labels,
                t,
                v,
                exemplar,
            } => {
                let i = *index.entry(labels.clone()).or_insert_with(|| {
                    let checked = validate_labels(
                        labels
                            .iter()
                            .map(|l| (l.name, l.value))
                            .collect::<Vec<_>>()
                            .into_iter(),
                        lim,
                    );
                    b.series.push(SeriesIn::new(checked));
                    b.series.len() - 1
                });
                let t = t.unwrap_or(default_t);
                b.series[i].samples.push((t, v));
                if let Some(mut e) = exemplar {
                    e.ts = e.ts.or(Some(t));
                    b.series[i].exemplars.push(e);
                }
            }
        }
    }
    for s in &mut b.series {
        s.samples.sort_by_key(|(t, _)| *t);
    }
    b
}

pub(crate) async fn import(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(parser) = state.parser.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "import is not available: no exposition parser configured\n",
        )
            .into_response();
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_string();
    let params = Params::from_parts(uri.query(), None);
    let default_t = match params.time_or("timestamp", tidemark_model::time::now_millis()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
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
        let entries = match parser.parse(&raw, &ct) {
            Ok(e) => e,
            Err(msg) => return Ok(Err(msg)),
        };
        let now = tidemark_model::time::now_millis();
        let batch = to_batch(entries, default_t, LabelLimits::of(&st));
        let max_t = now.saturating_add(st.opts.max_sample_ahead.as_millis() as i64);
        let out = apply(&st, batch, None, Some(max_t));
        st.metrics
            .import_samples
            .fetch_add(out.samples_written, Ordering::Relaxed);
        Ok(Ok(out))
    })
    .await;
    match res {
        Ok(Ok(out)) => outcome_response(&state, &out, Proto::V1),
        Ok(Err(msg)) => (StatusCode::BAD_REQUEST, format!("parse error: {msg}\n")).into_response(),
        Err(e) => e.into_response(),
    }
}
