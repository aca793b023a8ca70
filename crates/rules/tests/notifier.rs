//! The notifier against a fake Alertmanager: path prefix, basic auth, JSON shape, batches of at
//! most 64, and errors counted when the receiver fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tidemark_rules::notifier::{AmAlert, Notifier, targets_from_config};

#[derive(Debug, Clone)]
struct Req {
    path: String,
    auth: Option<String>,
    body: serde_json::Value,
}

async fn fake_am(status: u16) -> (String, Arc<Mutex<Vec<Req>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().push(Req {
                            path,
                            auth,
                            body: serde_json::from_slice(&body).unwrap(),
                        });
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn alert(i: usize) -> AmAlert {
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_string(), "A".to_string());
    labels.insert("i".to_string(), i.to_string());
    AmAlert {
        labels,
        annotations: BTreeMap::new(),
        starts_at: "2026-01-01T00:00:00.000Z".into(),
        ends_at: "2026-01-01T00:04:00.000Z".into(),
        generator_url: "http://x/graph".into(),
    }
}

async fn wait_until(f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_auth_and_prefix() {
    let (addr, seen) = fake_am(200).await;
    let cfg: tidemark_scrape::config::AlertingConfig = serde_yaml_ng::from_str(&format!(
        "alertmanagers:\n- static_configs: [{{targets: ['{addr}']}}]\n  path_prefix: /am/\n  basic_auth: {{username: user, password: pass}}\n"
    ))
    .unwrap();
    let n = Notifier::start(targets_from_config(&cfg).unwrap());
    n.send((0..150).map(alert).collect());
    wait_until(|| {
        seen.lock()
            .iter()
            .map(|r| r.body.as_array().unwrap().len())
            .sum::<usize>()
            == 150
    })
    .await;
    let reqs = seen.lock().clone();
    assert!(reqs.len() >= 3, "150 alerts need at least 3 requests");
    for r in &reqs {
        assert_eq!(r.path, "/am/api/v2/alerts");
        assert_eq!(r.auth.as_deref(), Some("Basic dXNlcjpwYXNz"));
        let arr = r.body.as_array().unwrap();
        assert!(arr.len() <= 64);
        assert_eq!(arr[0]["labels"]["alertname"], "A");
        assert!(arr[0]["startsAt"].is_string() && arr[0]["endsAt"].is_string());
        assert_eq!(arr[0]["generatorURL"], "http://x/graph");
    }
    let mut m = String::new();
    n.render_metrics(&mut m);
    assert!(m.contains("tidemark_notifications_sent_total 150"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted() {
    let (addr, seen) = fake_am(500).await;
    let cfg: tidemark_scrape::config::AlertingConfig = serde_yaml_ng::from_str(&format!(
        "alertmanagers:\n- static_configs: [{{targets: ['{addr}']}}]\n"
    ))
    .unwrap();
    let n = Notifier::start(targets_from_config(&cfg).unwrap());
    n.send(vec![alert(1)]);
    wait_until(|| !seen.lock().is_empty()).await;
    let n2 = n.clone();
    wait_until(move || {
        let mut m = String::new();
        n2.render_metrics(&mut m);
        m.contains("tidemark_notifications_errors_total 1")
    })
    .await;
}
