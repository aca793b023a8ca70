//! Shared helpers of the integration tests: an in-process server on 127.0.0.1:0 over
//! `MemStorage`, and a tiny HTTP client. Included with `#[path = "support/server.rs"] mod support;`.
#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tidemark_api::{Api, ApiOptions, ServeOptions, WebConfig};
use tidemark_model::Labels;
use tidemark_promql::{Engine, EngineOptions};
use tidemark_storage::memory::MemStorage;
use tidemark_storage::{Appendable, Queryable};

#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub storage: MemStorage,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

/// Starts a server over a fresh `MemStorage`.
pub async fn start(opts: ApiOptions) -> Server {
    start_full(opts, |a| a, None, ServeOptions::default()).await
}

/// Starts a server, letting the caller add providers, a web config and serve options.
pub async fn start_full(
    opts: ApiOptions,
    customize: impl FnOnce(Api) -> Api,
    web: Option<WebConfig>,
    serve_opts: ServeOptions,
) -> Server {
    let storage = MemStorage::new();
    let q: Arc<dyn Queryable> = Arc::new(storage.clone());
    let a: Arc<dyn Appendable> = Arc::new(storage.clone());
    let api = customize(Api::new(q, a, Engine::new(EngineOptions::default()), opts));
    let router = api.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tidemark_api::serve_with(listener, router, web, serve_opts, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        storage,
        shutdown: Some(tx),
        task: Some(task),
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Resp {
    request(Method::GET, url, &[], Bytes::new()).await
}

pub async fn post_form(url: &str, form: &str) -> Resp {
    request(
        Method::POST,
        url,
        &[("content-type", "application/x-www-form-urlencoded")],
        form.to_string(),
    )
    .await
}

/// URL-encodes a query string value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub use tidemark_api::proto::prometheus as pb;
pub use tidemark_api::proto::write_v2 as v2;

pub fn pb_series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> pb::TimeSeries {
    pb::TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| pb::Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(t, v)| pb::Sample {
                value: v,
                timestamp: t,
            })
            .collect(),
        ..Default::default()
    }
}

pub fn snappy(b: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(b).unwrap()
}

/// POSTs a remote write 1.0 request.
pub async fn write_v1(server: &Server, req: &pb::WriteRequest) -> Resp {
    request(
        Method::POST,
        &server.url("/api/v1/write"),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
        ],
        snappy(&req.encode_to_vec()),
    )
    .await
}

pub async fn write_raw(server: &Server, body: Vec<u8>) -> Resp {
    request(
        Method::POST,
        &server.url("/api/v1/write"),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
        ],
        body,
    )
    .await
}

/// Samples stored for exactly these labels.
pub fn stored(s: &MemStorage, labels: &[(&str, &str)]) -> Vec<(i64, f64)> {
    let want = Labels::from_pairs(labels.iter().copied());
    let q = s.querier(i64::MIN / 2, i64::MAX / 2).unwrap();
    let ms: Vec<_> = want
        .iter()
        .map(|l| tidemark_model::Matcher::equal(l.name, l.value))
        .collect();
    let mut out = Vec::new();
    for series in q.select(true, None, &ms) {
        let series = series.unwrap();
        if *series.labels() != want {
            continue;
        }
        let mut it = series.iter();
        while it.next() {
            let p = it.at();
            out.push((p.t, p.v));
        }
    }
    out
}
