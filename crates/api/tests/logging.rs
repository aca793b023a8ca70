//! Every log line about a request carries its request id, including lines written on the
//! blocking threads that run storage and PromQL work, and there is one access log line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use hyper::{Method, StatusCode};
use prost::Message;
use support::*;
use tidemark_api::ApiOptions;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn request_id_on_every_line() {
    let cap = Capture::default();
    let c2 = cap.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(move || c2.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let srv = start(ApiOptions::default()).await;
    // A remote write with an unsorted series: the warning is logged on a blocking thread.
    let req = pb::WriteRequest {
        timeseries: vec![pb_series(
            &[("b", "1"), ("a", "1")],
            &[(tidemark_model::time::now_millis(), 1.0)],
        )],
        ..Default::default()
    };
    let r = request(
        Method::POST,
        &srv.url("/api/v1/write"),
        &[
            ("content-type", "application/x-protobuf"),
            ("x-request-id", "req-42"),
        ],
        snappy(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers.get("x-request-id").unwrap(), "req-42");
    srv.stop().await;

    let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    let about: Vec<&str> = text.lines().filter(|l| l.contains("req-42")).collect();
    assert!(
        about
            .iter()
            .any(|l| l.contains("remote write partially rejected")),
        "warning from the blocking thread: {text}"
    );
    assert!(
        about
            .iter()
            .any(|l| l.contains("request served") && l.contains("\"status\":400")),
        "access log line: {text}"
    );
    for l in text
        .lines()
        .filter(|l| l.contains("remote write") || l.contains("request served"))
    {
        assert!(
            l.contains("\"request_id\":\"req-42\""),
            "line without request id: {l}"
        );
    }
}
