//! A tiny HTTP server on 127.0.0.1:0 for scrape tests: each path has a canned behaviour.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = {
        let mut h = hits.lock();
        let c = h.entry(req.uri().path().to_string()).or_default();
        *c += 1;
        *c - 1
    };
    let text = |body: String| {
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let resp = match req.uri().path() {
        "/ok" => text(format!(
            "# HELP test_counter_total A counter.\n# TYPE test_counter_total counter\ntest_counter_total{{path=\"/a\"}} {n}\ntest_gauge 1.5\n"
        )),
        "/flappy" => {
            // test_vanishing appears only on the first scrape.
            if n == 0 { text("stay 1\ntest_vanishing 1\n".into()) } else { text("stay 1\n".into()) }
        }
        "/om" => Response::builder()
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Full::new(Bytes::from(
                "# TYPE om_requests counter\n# UNIT om_requests requests\nom_requests_total 5 # {trace_id=\"abc\"} 1.0\n# EOF\n",
            )))
            .unwrap(),
        "/gzip" => {
            let accepts = req.headers().get("accept-encoding").and_then(|v| v.to_str().ok()).unwrap_or("");
            assert!(accepts.contains("gzip"), "gzip asked for");
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .header("content-encoding", "gzip")
                .body(Full::new(Bytes::from(gzip(b"zipped_metric 42\n"))))
                .unwrap()
        }
        "/500" => Response::builder().status(500).body(Full::new(Bytes::from("boom"))).unwrap(),
        "/garbage" => text("this is {{{ not metrics\n".into()),
        "/big" => text(format!("big_metric{{pad=\"{}\"}} 1\n", "x".repeat(10_000))),
        "/many" => text((0..50).map(|i| format!("many_{i} {i}\n")).collect()),
        "/dup" => text("dup_metric 1\ndup_metric 2\n".into()),
        "/slow" => {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            text("slow 1\n".into())
        }
        "/auth" => {
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            if auth == "Basic dXNlcjpwYXNz" {
                text("authed 1\n".into())
            } else {
                Response::builder().status(401).body(Full::new(Bytes::new())).unwrap()
            }
        }
        "/headers" => {
            let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let t = req.headers().get("x-prometheus-scrape-timeout-seconds").is_some();
            text(format!("accept_ok {}\ntimeout_header {}\n", u8::from(accept == tidemark_scrape::ACCEPT_HEADER), u8::from(t)))
        }
        "/redirect" => Response::builder().status(302).header("location", "/ok").body(Full::new(Bytes::new())).unwrap(),
        _ => Response::builder().status(404).body(Full::new(Bytes::new())).unwrap(),
    };
    Ok(resp)
}

pub(crate) async fn start() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(HashMap::new()));
    let h = hits;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, h.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestServer { addr, task }
}

/// A loopback port with nothing listening.
pub(crate) fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
