//! Ingest over HTTP: remote write 1.0 and 2.0 (codes, headers, metadata, exemplars), every
//! bad input of the issue (each a clear 4xx, the server keeps serving, earlier data intact),
//! retryable storage errors, remote read (sampled and streamed XOR chunks), and import.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use prost::Message;
use serde_json::json;
use support::*;
use tidemark_api::{ApiOptions, ServeOptions};
use tidemark_model::{Exemplar, Labels, Metadata};
use tidemark_storage::memory::MemStorage;
use tidemark_storage::{Appendable, Appender, SeriesRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now() -> i64 {
    tidemark_model::time::now_millis()
}

/// Writes a known series and returns its labels and samples (the "earlier data").
async fn seed(srv: &Server) -> (Vec<(&'static str, &'static str)>, Vec<(i64, f64)>) {
    let labels = vec![("__name__", "seed_metric"), ("job", "seed")];
    let t = now() - 60_000;
    let samples = vec![(t, 1.0), (t + 15_000, 2.0), (t + 30_000, 3.0)];
    let r = write_v1(
        srv,
        &pb::WriteRequest {
            timeseries: vec![pb_series(&labels, &samples)],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    (labels, samples)
}

#[tokio::test]
async fn remote_write_v1_with_metadata_and_exemplars() {
    let srv = start(ApiOptions::default()).await;
    let t = now() - 10_000;
    let mut ts = pb_series(
        &[
            ("__name__", "http_requests_total"),
            ("code", "200"),
            ("job", "api"),
        ],
        &[(t, 5.0), (t + 1000, 6.0)],
    );
    ts.exemplars.push(pb::Exemplar {
        labels: vec![pb::Label {
            name: "trace_id".into(),
            value: "abc123".into(),
        }],
        value: 6.0,
        timestamp: t + 1000,
    });
    let req = pb::WriteRequest {
        timeseries: vec![ts],
        metadata: vec![pb::MetricMetadata {
            r#type: pb::metric_metadata::MetricType::Counter as i32,
            metric_family_name: "http_requests_total".into(),
            help: "Requests.".into(),
            unit: String::new(),
        }],
    };
    let r = write_v1(&srv, &req).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(
        r.headers
            .get("x-prometheus-remote-write-samples-written")
            .is_none(),
        "1.0 answers without 2.0 headers"
    );
    assert_eq!(
        stored(
            &srv.storage,
            &[
                ("__name__", "http_requests_total"),
                ("code", "200"),
                ("job", "api")
            ]
        ),
        vec![(t, 5.0), (t + 1000, 6.0)]
    );
    let r = get(&srv.url("/api/v1/metadata")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{"http_requests_total":[{"type":"counter","help":"Requests.","unit":""}]}})
    );
    let r = get(&srv.url(&format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        enc("sum(rate(http_requests_total[5m]))"),
        (t - 1000) / 1000,
        (t + 5000) / 1000
    )))
    .await;
    let ts = format!("{}.{:03}", (t + 1000) / 1000, (t + 1000) % 1000);
    let want = format!(
        r#"{{"status":"success","data":[{{"seriesLabels":{{"__name__":"http_requests_total","code":"200","job":"api"}},"exemplars":[{{"labels":{{"trace_id":"abc123"}},"value":"6","timestamp":{}}}]}}]}}"#,
        ts.trim_end_matches(".000")
    );
    assert_eq!(r.text(), want);
    srv.stop().await;
}

#[tokio::test]
async fn remote_write_v2_symbols_headers_metadata() {
    let srv = start(ApiOptions::default()).await;
    let t = now() - 5_000;
    let symbols: Vec<String> = [
        "",
        "__name__",
        "queue_depth",
        "job",
        "worker",
        "Items waiting.",
        "trace_id",
        "t1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let req = v2::Request {
        symbols,
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![
                v2::Sample {
                    value: 3.0,
                    timestamp: t,
                },
                v2::Sample {
                    value: 4.0,
                    timestamp: t + 1000,
                },
            ],
            exemplars: vec![v2::Exemplar {
                labels_refs: vec![6, 7],
                value: 4.0,
                timestamp: t + 1000,
            }],
            metadata: Some(v2::Metadata {
                r#type: v2::metadata::MetricType::Gauge as i32,
                help_ref: 5,
                unit_ref: 0,
            }),
            ..Default::default()
        }],
    };
    let r = request(
        Method::POST,
        &srv.url("/api/v1/write"),
        &[
            (
                "content-type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("content-encoding", "snappy"),
            ("x-prometheus-remote-write-version", "2.0.0"),
        ],
        snappy(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        r.headers
            .get("x-prometheus-remote-write-samples-written")
            .unwrap(),
        "2"
    );
    assert_eq!(
        r.headers
            .get("x-prometheus-remote-write-exemplars-written")
            .unwrap(),
        "1"
    );
    assert_eq!(
        r.headers
            .get("x-prometheus-remote-write-histograms-written")
            .unwrap(),
        "0"
    );
    assert_eq!(
        stored(
            &srv.storage,
            &[("__name__", "queue_depth"), ("job", "worker")]
        ),
        vec![(t, 3.0), (t + 1000, 4.0)]
    );
    let r = get(&srv.url("/api/v1/metadata?metric=queue_depth")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{"queue_depth":[{"type":"gauge","help":"Items waiting.","unit":""}]}})
    );
    // A reference outside the symbols table: 400 with the reason, headers still present.
    let bad = v2::Request {
        symbols: vec!["".into(), "__name__".into()],
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 9],
            samples: vec![v2::Sample {
                value: 1.0,
                timestamp: t,
            }],
            ..Default::default()
        }],
    };
    let r = request(
        Method::POST,
        &srv.url("/api/v1/write"),
        &[
            (
                "content-type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("content-encoding", "snappy"),
        ],
        snappy(&bad.encode_to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("out of range of the symbols table"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.headers
            .get("x-prometheus-remote-write-samples-written")
            .unwrap(),
        "0"
    );
    srv.stop().await;
}

/// Hand-encoded protobuf: WriteRequest{timeseries: [{labels: [{name: "a", value: <bytes>}], samples: [{1.0, ts}]}]}.
fn raw_write_request(value: &[u8], ts: i64) -> Vec<u8> {
    let mut label = vec![0x0a, 0x01, b'a', 0x12, value.len() as u8];
    label.extend_from_slice(value);
    let sample = pb::Sample {
        value: 1.0,
        timestamp: ts,
    }
    .encode_to_vec();
    let mut series = vec![0x0a, label.len() as u8];
    series.extend_from_slice(&label);
    series.push(0x12);
    series.push(sample.len() as u8);
    series.extend_from_slice(&sample);
    let mut req = vec![0x0a, series.len() as u8];
    req.extend_from_slice(&series);
    req
}

#[tokio::test]
async fn remote_write_bad_inputs_are_clear_4xx() {
    let opts = ApiOptions {
        max_sample_age: Some(Duration::from_secs(365 * 86400)),
        ..Default::default()
    };
    let srv = start(opts).await;
    let (seed_labels, seed_samples) = seed(&srv).await;
    let t = now();
    let ok_series = pb_series(&[("__name__", "good"), ("job", "x")], &[(t, 1.0)]);
    let req = |series: Vec<pb::TimeSeries>| pb::WriteRequest {
        timeseries: series,
        ..Default::default()
    };
    let many: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("l{i:05}"), "v".to_string()))
        .collect();
    let many_ref: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed snappy",
            b"\xff\xff\xff\xff\x7fnot snappy at all".to_vec(),
            "snappy",
        ),
        (
            "garbage protobuf",
            snappy(&[0xff; 64]),
            "protobuf decode error",
        ),
        (
            "truncated protobuf",
            {
                let b = req(vec![ok_series.clone()]).encode_to_vec();
                snappy(&b[..b.len() - 3])
            },
            "protobuf decode error",
        ),
        (
            "invalid UTF-8",
            snappy(&raw_write_request(&[0xff, 0xfe], t)),
            "UTF-8",
        ),
        (
            "empty label name",
            snappy(
                &req(vec![pb_series(
                    &[("", "x"), ("__name__", "m")],
                    &[(t, 1.0)],
                )])
                .encode_to_vec(),
            ),
            "empty label name",
        ),
        (
            "duplicate label names",
            snappy(
                &req(vec![pb_series(
                    &[("__name__", "m"), ("a", "1"), ("a", "2")],
                    &[(t, 1.0)],
                )])
                .encode_to_vec(),
            ),
            "duplicate label name",
        ),
        (
            "unsorted labels",
            snappy(
                &req(vec![pb_series(
                    &[("job", "x"), ("__name__", "m")],
                    &[(t, 1.0)],
                )])
                .encode_to_vec(),
            ),
            "not sorted",
        ),
        (
            "10k labels",
            snappy(&req(vec![pb_series(&many_ref, &[(t, 1.0)])]).encode_to_vec()),
            "more than the limit of 256",
        ),
        (
            "far-future timestamp",
            snappy(
                &req(vec![pb_series(
                    &[("__name__", "m")],
                    &[(t + 86_400_000 * 365, 1.0)],
                )])
                .encode_to_vec(),
            ),
            "too far in the future",
        ),
        (
            "far-past timestamp",
            snappy(&req(vec![pb_series(&[("__name__", "m")], &[(1000, 1.0)])]).encode_to_vec()),
            "too old",
        ),
        (
            "duplicate sample, other value",
            snappy(
                &req(vec![pb_series(&seed_labels, &[(seed_samples[0].0, 99.0)])]).encode_to_vec(),
            ),
            "duplicate sample for timestamp",
        ),
    ];
    for (name, body, want) in cases {
        let r = write_raw(&srv, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.text());
        assert!(
            r.text().contains(want),
            "{name}: {:?} lacks {want:?}",
            r.text()
        );
        assert_eq!(
            get(&srv.url("/-/healthy")).await.status,
            StatusCode::OK,
            "{name}: server keeps serving"
        );
        assert_eq!(
            stored(&srv.storage, &seed_labels),
            seed_samples,
            "{name}: earlier data intact"
        );
    }
    // Unsupported content type / encoding: 415.
    let body = snappy(&req(vec![ok_series.clone()]).encode_to_vec());
    let r = request(
        Method::POST,
        &srv.url("/api/v1/write"),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = request(
        Method::POST,
        &srv.url("/api/v1/write"),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.text().contains("snappy"));
    // A batch mixing a bad series and a good one: 400, the good one is written.
    let mixed = req(vec![
        pb_series(&[("b", "1"), ("a", "1")], &[(t, 1.0)]),
        ok_series.clone(),
    ]);
    let r = write_v1(&srv, &mixed).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("1 samples rejected, 1 written"),
        "{}",
        r.text()
    );
    assert_eq!(
        stored(&srv.storage, &[("__name__", "good"), ("job", "x")]),
        vec![(t, 1.0)]
    );
    // NaN, ±Inf and the staleness marker are valid Prometheus values: accepted bit-exactly.
    let special = [
        (t + 1, f64::NAN),
        (t + 2, f64::INFINITY),
        (t + 3, f64::NEG_INFINITY),
        (t + 4, tidemark_model::stale_nan()),
    ];
    let r = write_v1(
        &srv,
        &req(vec![pb_series(&[("__name__", "special")], &special)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let got = stored(&srv.storage, &[("__name__", "special")]);
    assert_eq!(got.len(), 4);
    for (a, b) in got.iter().zip(special.iter()) {
        assert_eq!(a.1.to_bits(), b.1.to_bits());
    }
    assert_eq!(stored(&srv.storage, &seed_labels), seed_samples);
    let m = get(&srv.url("/metrics")).await.text();
    assert!(
        m.contains("tidemark_ingest_rejected_samples_total{reason=\"invalid_labels\"}"),
        "{m}"
    );
    srv.stop().await;
}

async fn raw_http(addr: std::net::SocketAddr, head: &str, body: &[u8], wait: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    if !body.is_empty() {
        let _ = s.write_all(body).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_and_slow_bodies() {
    let opts = ApiOptions {
        max_request_body_bytes: 1 << 20,
        body_read_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let serve = ServeOptions {
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let srv = start_full(opts, |a| a, None, serve).await;
    let (seed_labels, seed_samples) = seed(&srv).await;
    // A 100 MB body announced by Content-Length: refused before it is read.
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        100 << 20
    );
    let resp = raw_http(srv.addr, &head, &[], Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(
        resp.contains("exceeds the limit of 1048576 bytes"),
        "{resp}"
    );
    // A chunked body growing past the limit.
    let mut chunked = Vec::new();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend(std::iter::repeat_n(b'x', 64 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let resp = raw_http(srv.addr, head, &chunked, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // Slow body: announces 100 bytes, sends 10, stalls: 408 after the body read timeout.
    let head = "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
    let resp = raw_http(srv.addr, head, b"0123456789", Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    // Slow-loris headers: never finished; the server closes the connection after the header
    // read timeout while serving others.
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    assert_eq!(
        get(&srv.url("/-/healthy")).await.status,
        StatusCode::OK,
        "others are served meanwhile"
    );
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "server closed the slow connection");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        stored(&srv.storage, &seed_labels),
        seed_samples,
        "earlier data intact"
    );
    srv.stop().await;
}

/// A storage that is temporarily unavailable (no quorum) for writes.
#[derive(Debug)]
struct Unavailable;
struct FailingAppender;
impl Appendable for Unavailable {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(FailingAppender)
    }
}
impl Appender for FailingAppender {
    fn append(
        &mut self,
        _: Option<SeriesRef>,
        _: &Labels,
        _: i64,
        _: f64,
    ) -> tidemark_storage::Result<SeriesRef> {
        Err(tidemark_storage::Error::Unavailable(
            "no quorum for shard 3".into(),
        ))
    }
    fn commit(&mut self) -> tidemark_storage::Result<()> {
        Ok(())
    }
    fn rollback(&mut self) -> tidemark_storage::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn retryable_storage_errors_are_503_with_retry_after() {
    let storage = MemStorage::new();
    let api = tidemark_api::Api::new(
        Arc::new(storage.clone()),
        Arc::new(Unavailable),
        tidemark_promql::Engine::new(Default::default()),
        ApiOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tidemark_api::serve(listener, api.router(), None, async {
        let _ = rx.await;
    }));
    let req = pb::WriteRequest {
        timeseries: vec![pb_series(&[("__name__", "m")], &[(now(), 1.0)])],
        ..Default::default()
    };
    let r = request(
        Method::POST,
        &format!("http://{addr}/api/v1/write"),
        &[("content-type", "application/x-protobuf")],
        snappy(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers.get("retry-after").unwrap(), "5");
    assert!(r.text().contains("no quorum for shard 3"));
    let _ = tx.send(());
    let _ = task.await;
}

fn read_request(streamed: bool, start: i64, end: i64, name: &str) -> Vec<u8> {
    let req = pb::ReadRequest {
        queries: vec![pb::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: vec![pb::LabelMatcher {
                r#type: pb::label_matcher::Type::Eq as i32,
                name: "__name__".into(),
                value: name.into(),
            }],
            hints: None,
        }],
        accepted_response_types: if streamed {
            vec![pb::read_request::ResponseType::StreamedXorChunks as i32]
        } else {
            vec![]
        },
    };
    snappy(&req.encode_to_vec())
}

#[tokio::test]
async fn remote_read_sampled_and_streamed() {
    let srv = start(ApiOptions::default()).await;
    let t0 = now() - 3_600_000;
    let samples: Vec<(i64, f64)> = (0..300)
        .map(|i| (t0 + i * 10_000, (i % 17) as f64 * 1.5))
        .collect();
    for job in ["a", "b"] {
        let r = write_v1(
            &srv,
            &pb::WriteRequest {
                timeseries: vec![pb_series(&[("__name__", "rr"), ("job", job)], &samples)],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    let (qs, qe) = (t0 + 100_000, t0 + 2_000_000);
    let want: Vec<(i64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= qs && *t <= qe)
        .collect();

    let r = request(
        Method::POST,
        &srv.url("/api/v1/read"),
        &[("content-type", "application/x-protobuf")],
        read_request(false, qs, qe, "rr"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers.get("content-encoding").unwrap(), "snappy");
    let resp =
        pb::ReadResponse::decode(&snap::raw::Decoder::new().decompress_vec(&r.body).unwrap()[..])
            .unwrap();
    assert_eq!(resp.results.len(), 1);
    let series = &resp.results[0].timeseries;
    assert_eq!(series.len(), 2);
    assert_eq!(series[1].labels[1].value, "b");
    let got: Vec<(i64, f64)> = series[0]
        .samples
        .iter()
        .map(|s| (s.timestamp, s.value))
        .collect();
    assert_eq!(got, want);

    let r = request(
        Method::POST,
        &srv.url("/api/v1/read"),
        &[("content-type", "application/x-protobuf")],
        read_request(true, qs, qe, "rr"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
    );
    // Parse frames: uvarint length, big-endian CRC32C, message.
    let mut b = &r.body[..];
    let mut per_series: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    while !b.is_empty() {
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let x = b[0];
            b = &b[1..];
            len |= ((x & 0x7f) as usize) << shift;
            shift += 7;
            if x < 0x80 {
                break;
            }
        }
        let crc = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let data = &b[4..4 + len];
        assert_eq!(crc, crc32c_ref(data), "frame checksum");
        let msg = pb::ChunkedReadResponse::decode(data).unwrap();
        assert_eq!(msg.query_index, 0);
        for cs in msg.chunked_series {
            let key = cs
                .labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect::<Vec<_>>()
                .join(",");
            for c in cs.chunks {
                assert_eq!(c.r#type, pb::chunk::Encoding::Xor as i32);
                let s = tidemark_api::xor::decode(&c.data).unwrap();
                assert!(s.len() <= 120);
                assert_eq!((s[0].0, s[s.len() - 1].0), (c.min_time_ms, c.max_time_ms));
                per_series.entry(key.clone()).or_default().extend(s);
            }
        }
        b = &b[4 + len..];
    }
    assert_eq!(per_series.len(), 2);
    for v in per_series.values() {
        assert_eq!(v, &want);
    }
    // Bad request bodies.
    let r = request(
        Method::POST,
        &srv.url("/api/v1/read"),
        &[],
        b"garbage".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    srv.stop().await;
}

/// Bitwise CRC-32C, independent of the server's table implementation.
fn crc32c_ref(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn import_text_and_openmetrics_of_any_age() {
    let srv = start(ApiOptions::default()).await;
    // Year 2001 timestamps: backfill is not "out of bounds".
    let body = "# HELP backfill_total Old data.\n# TYPE backfill_total counter\nbackfill_total{job=\"old\"} 1 1000000000000\nbackfill_total{job=\"old\"} 2 1000000015000\n";
    let r = request(
        Method::POST,
        &srv.url("/api/v1/import"),
        &[("content-type", "text/plain; version=0.0.4")],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        stored(
            &srv.storage,
            &[("__name__", "backfill_total"), ("job", "old")]
        ),
        vec![(1_000_000_000_000, 1.0), (1_000_000_015_000, 2.0)]
    );
    let r = get(&srv.url("/api/v1/metadata?metric=backfill_total")).await;
    assert_eq!(
        r.json()["data"]["backfill_total"][0],
        json!({"type":"counter","help":"Old data.","unit":""})
    );
    // OpenMetrics, timestamps in seconds; missing timestamp -> the `timestamp` parameter.
    let om = "# TYPE om gauge\nom{a=\"1\"} 5 1000000030.5\nom{a=\"2\"} 7\n# EOF\n";
    let r = request(
        Method::POST,
        &srv.url("/api/v1/import?timestamp=1000000040"),
        &[(
            "content-type",
            "application/openmetrics-text; version=1.0.0",
        )],
        om,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        stored(&srv.storage, &[("__name__", "om"), ("a", "1")]),
        vec![(1_000_000_030_500, 5.0)]
    );
    assert_eq!(
        stored(&srv.storage, &[("__name__", "om"), ("a", "2")]),
        vec![(1_000_000_040_000, 7.0)]
    );
    // Broken text: 400 naming the line, nothing else lost.
    let r = request(
        Method::POST,
        &srv.url("/api/v1/import"),
        &[],
        "ok 1 1000\nbroken{ 1\n",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("line 2"), "{}", r.text());
    assert_eq!(
        stored(
            &srv.storage,
            &[("__name__", "backfill_total"), ("job", "old")]
        )
        .len(),
        2
    );
    let r = request(
        Method::POST,
        &srv.url("/api/v1/import"),
        &[],
        vec![0xffu8, 0xfe, b' ', b'1'],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    srv.stop().await;
}

#[tokio::test]
async fn exemplar_store_serves_what_was_written() {
    // Sanity of the in-memory stores behind remote write through the public API only.
    let srv = start(ApiOptions {
        max_exemplars: 2,
        ..Default::default()
    })
    .await;
    let t = now();
    for i in 0..3 {
        let mut ts = pb_series(&[("__name__", "lat")], &[(t + i, 1.0)]);
        ts.exemplars.push(pb::Exemplar {
            labels: vec![pb::Label {
                name: "id".into(),
                value: i.to_string(),
            }],
            value: 1.0,
            timestamp: t + i,
        });
        assert_eq!(
            write_v1(
                &srv,
                &pb::WriteRequest {
                    timeseries: vec![ts],
                    ..Default::default()
                }
            )
            .await
            .status,
            StatusCode::NO_CONTENT
        );
    }
    let r = get(&srv.url(&format!(
        "/api/v1/query_exemplars?query=lat&start={}&end={}",
        t / 1000 - 1,
        t / 1000 + 1
    )))
    .await;
    let ex = r.json()["data"][0]["exemplars"].clone();
    assert_eq!(
        ex.as_array().unwrap().len(),
        2,
        "bounded to the 2 newest: {ex}"
    );
    assert_eq!(ex[0]["labels"]["id"], "1");
    let _ = (
        Exemplar {
            labels: Labels::empty(),
            value: 0.0,
            ts: None,
        },
        Metadata::default(),
    );
    srv.stop().await;
}
