//! Criterion benchmarks of the HTTP API's hot paths (fixed seeds, fixed data):
//! * `remote_write_decode`: snappy + protobuf decode + label validation of a 1.0 request of
//!   1,000 series × 10 samples (what Prometheus sends per batch at default max_samples_per_send
//!   is 2,000; 10,000 here to amortise per-request cost).
//! * `remote_write_http`: the same request POSTed over loopback HTTP into `MemStorage`
//!   (end to end: hyper, body limit, decode, validation, append, commit).
//! * `query_json`: encoding a range query result of 1,000 series × 240 points to JSON.
//!
//! Run: `cargo bench -p tidemark-api --bench api`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tidemark_api::proto::prometheus as pb;
use tidemark_api::{Api, ApiOptions};
use tidemark_model::{Labels, Sample};
use tidemark_promql::{Engine, MatrixSeries, Value};
use tidemark_storage::memory::MemStorage;

const SERIES: usize = 1000;
const PER_SERIES: usize = 10;

fn write_request(t0: i64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut ts = Vec::with_capacity(SERIES);
    for i in 0..SERIES {
        let labels = vec![
            pb::Label {
                name: "__name__".into(),
                value: format!("node_metric_{}", i % 50),
            },
            pb::Label {
                name: "instance".into(),
                value: format!("host-{}:9100", i / 50),
            },
            pb::Label {
                name: "job".into(),
                value: "node".into(),
            },
            pb::Label {
                name: "mode".into(),
                value: ["idle", "user", "system", "iowait"][i % 4].into(),
            },
        ];
        let samples = (0..PER_SERIES)
            .map(|j| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pb::Sample {
                    value: (x % 100_000) as f64 / 100.0,
                    timestamp: t0 + j as i64 * 15_000,
                }
            })
            .collect();
        ts.push(pb::TimeSeries {
            labels,
            samples,
            ..Default::default()
        });
    }
    let raw = pb::WriteRequest {
        timeseries: ts,
        metadata: vec![],
    }
    .encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).unwrap()
}

fn bench_decode(c: &mut Criterion) {
    let body = write_request(1_700_000_000_000);
    let mut g = c.benchmark_group("remote_write_decode");
    g.throughput(Throughput::Elements((SERIES * PER_SERIES) as u64));
    g.bench_function("1000x10", |b| {
        b.iter(|| tidemark_api::bench::decode_remote_write_v1(&body))
    });
    g.finish();
}

fn bench_http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let storage = MemStorage::new();
    let api = Api::new(
        Arc::new(storage.clone()),
        Arc::new(storage.clone()),
        Engine::new(Default::default()),
        ApiOptions::default(),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(tidemark_api::serve(
        listener,
        api.router(),
        None,
        std::future::pending(),
    ));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!("http://{addr}/api/v1/write");
    // Each iteration writes new timestamps (appends at the head of every series).
    let mut t0 = tidemark_model::time::now_millis() - 3_000_000_000;
    let mut g = c.benchmark_group("remote_write_http");
    g.throughput(Throughput::Elements((SERIES * PER_SERIES) as u64));
    g.sample_size(20);
    g.bench_function("1000x10_memstorage", |b| {
        b.iter_batched(
            || {
                t0 += (PER_SERIES as i64) * 15_000;
                Bytes::from(write_request(t0))
            },
            |body| {
                rt.block_on(async {
                    let req = hyper::Request::post(&url)
                        .header("content-type", "application/x-protobuf")
                        .header("content-encoding", "snappy")
                        .body(Full::new(body))
                        .unwrap();
                    let r = client.request(req).await.unwrap();
                    assert_eq!(r.status(), 204);
                })
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
    storage.clear();
}

fn bench_json(c: &mut Criterion) {
    let series: Vec<MatrixSeries> = (0..1000)
        .map(|i| MatrixSeries {
            labels: Labels::from_pairs([
                ("__name__", "http_requests_total".to_string()),
                ("instance", format!("host-{i}:9100")),
                ("job", "api".to_string()),
            ]),
            samples: (0..240)
                .map(|j| Sample::new(1_700_000_000_000 + j * 15_000, (i * j) as f64 * 0.37))
                .collect(),
        })
        .collect();
    let v = Value::Matrix(series);
    let bytes = tidemark_api::bench::encode_query_data(&v).len();
    let mut g = c.benchmark_group("query_json");
    g.throughput(Throughput::Elements(240_000));
    g.bench_function(format!("1000x240 ({} KiB)", bytes / 1024), |b| {
        b.iter(|| tidemark_api::bench::encode_query_data(&v).len())
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_http, bench_json);
criterion_main!(benches);
