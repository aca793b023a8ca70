//! Interop with Debian's real `prometheus` and `promtool`: Prometheus scrapes itself every
//! second and remote_writes to the in-process server; then the same instant and range queries
//! against both agree (same series, values within float tolerance), and `promtool query
//! instant|range|series|labels` prints the same against both. Skipped (with a SKIPPED line) when
//! the binaries are missing; CI installs them. Bounded to well under 60 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;
use support::*;
use tidemark_api::ApiOptions;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `data.result` keyed by the metric's labels, for comparison independent of order.
fn by_metric(j: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in j["data"]["result"].as_array().unwrap_or(&Vec::new()) {
        out.insert(
            r["metric"].to_string(),
            r.get("value")
                .or(r.get("values"))
                .cloned()
                .unwrap_or(Value::Null),
        );
    }
    out
}

fn close(a: &Value, b: &Value) -> bool {
    let f = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    match (a, b) {
        (Value::Array(x), Value::Array(y)) if x.len() == 2 && y.len() == 2 && x[0].is_number() => {
            x[0] == y[0]
                && match (f(&x[1]), f(&y[1])) {
                    (Some(p), Some(q)) => {
                        (p.is_nan() && q.is_nan())
                            || p == q
                            || (p - q).abs() <= 1e-9 * p.abs().max(1.0)
                    }
                    _ => x[1] == y[1],
                }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| close(p, q))
        }
        _ => a == b,
    }
}

/// The structure of a JSON value: object keys and value kinds (arrays by their first element).
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => Value::String("string".into()),
        Value::Number(_) => Value::String("number".into()),
        Value::Bool(_) => Value::String("bool".into()),
        Value::Null => Value::Null,
    }
}

/// Every request Grafana's Prometheus datasource makes, against both servers: same status
/// codes; same JSON (or, where the data legitimately differs, the same JSON shape).
async fn grafana_replay(prom: &str, ours: &str, t: i64) {
    enum Cmp {
        Equal,
        Shape,
        Status,
    }
    let (s, e) = (t - 10, t);
    let range = format!("query={}&start={s}&end={e}&step=2", enc("up"));
    let requests: Vec<(&str, String, String, Cmp)> = vec![
        (
            "GET",
            "/api/v1/query?query=1%2B1&time=4".into(),
            String::new(),
            Cmp::Equal,
        ),
        (
            "GET",
            "/api/v1/status/buildinfo".into(),
            String::new(),
            Cmp::Shape,
        ),
        (
            "POST",
            "/api/v1/labels".into(),
            format!("start={s}&end={e}"),
            Cmp::Equal,
        ),
        (
            "GET",
            format!("/api/v1/labels?start={s}&end={e}"),
            String::new(),
            Cmp::Equal,
        ),
        (
            "GET",
            format!(
                "/api/v1/label/job/values?match[]={}&start={s}&end={e}",
                enc("up")
            ),
            String::new(),
            Cmp::Equal,
        ),
        (
            "GET",
            format!("/api/v1/label/__name__/values?start={s}&end={e}"),
            String::new(),
            Cmp::Equal,
        ),
        (
            "POST",
            "/api/v1/label/job/values".into(),
            format!("match[]={}", enc("up")),
            Cmp::Status,
        ),
        (
            "POST",
            "/api/v1/series".into(),
            format!("match[]={}&start={s}&end={e}", enc("up")),
            Cmp::Equal,
        ),
        (
            "GET",
            format!(
                "/api/v1/series?match[]={}&start={s}&end={e}",
                enc("scrape_duration_seconds")
            ),
            String::new(),
            Cmp::Equal,
        ),
        (
            "GET",
            "/api/v1/metadata?metric=up".into(),
            String::new(),
            Cmp::Shape,
        ),
        ("GET", "/api/v1/metadata".into(), String::new(), Cmp::Shape),
        (
            "POST",
            "/api/v1/metadata".into(),
            String::new(),
            Cmp::Status,
        ),
        (
            "GET",
            format!("/api/v1/query?query=up&time={t}"),
            String::new(),
            Cmp::Equal,
        ),
        (
            "POST",
            "/api/v1/query".into(),
            format!("query=up&time={t}"),
            Cmp::Equal,
        ),
        (
            "GET",
            format!("/api/v1/query_range?{range}"),
            String::new(),
            Cmp::Equal,
        ),
        (
            "POST",
            "/api/v1/query_range".into(),
            range.clone(),
            Cmp::Equal,
        ),
        (
            "GET",
            format!(
                "/api/v1/query_exemplars?query=test&start={}&end={}",
                s * 1000,
                e * 1000
            ),
            String::new(),
            Cmp::Status,
        ),
        ("GET", "/api/v1/rules".into(), String::new(), Cmp::Equal),
        ("GET", "/api/v1/alerts".into(), String::new(), Cmp::Equal),
        (
            "GET",
            "/api/v1/query?query=sum(".into(),
            String::new(),
            Cmp::Shape,
        ),
        (
            "GET",
            "/api/v1/query_range?query=up&start=2&end=1&step=1".into(),
            String::new(),
            Cmp::Equal,
        ),
    ];
    for (method, path, form, cmp) in requests {
        let send = |base: &str| {
            let url = format!("{base}{path}");
            let form = form.clone();
            async move {
                if method == "POST" {
                    post_form(&url, &form).await
                } else {
                    get(&url).await
                }
            }
        };
        let (a, b) = (send(prom).await, send(ours).await);
        assert_eq!(
            a.status,
            b.status,
            "{method} {path}: status (prometheus: {})",
            a.text()
        );
        if a.status == StatusCode::METHOD_NOT_ALLOWED {
            continue;
        }
        let (mut ja, jb) = (a.json(), b.json());
        // Prometheus' remote read client (configured above for the probe) cannot list labels
        // and says so in a warning; that is this test's setup, not a difference of answers.
        if ja["warnings"] == serde_json::json!(["not implemented"]) {
            ja.as_object_mut().unwrap().remove("warnings");
        }
        assert_eq!(ja["status"], jb["status"], "{method} {path}");
        match cmp {
            Cmp::Equal => assert_eq!(ja, jb, "{method} {path}"),
            Cmp::Shape => assert_eq!(shape(&ja), shape(&jb), "{method} {path}: {ja} vs {jb}"),
            Cmp::Status => {}
        }
    }
}

fn promtool(args: &[String]) -> String {
    let out = Command::new(PROMTOOL).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_write_then_same_answers() {
    if !Path::new(PROMETHEUS).exists() || !Path::new(PROMTOOL).exists() {
        println!(
            "SKIPPED: {PROMETHEUS} or {PROMTOOL} not installed (CI installs Debian's prometheus)"
        );
        return;
    }
    let started = Instant::now();
    let srv = start(ApiOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let ours = format!("http://{}", srv.addr);
    let cfg = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{port}"]
remote_write:
  - url: {ours}/api/v1/write
    queue_config:
      batch_send_deadline: 500ms
      min_backoff: 100ms
      max_backoff: 1s
    metadata_config:
      send_interval: 1s
remote_read:
  - url: {ours}/api/v1/read
    read_recent: true
    required_matchers:
      __name__: remote_read_probe
"#
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    // Data only Tidemark has: Prometheus must fetch it through remote read (a real client).
    let probe_t = tidemark_model::time::now_millis() - 30_000;
    let probe: Vec<(i64, f64)> = (0..30)
        .map(|i| (probe_t + i * 1000, i as f64 * 0.5))
        .collect();
    let r = write_v1(
        &srv,
        &pb::WriteRequest {
            timeseries: vec![pb_series(
                &[("__name__", "remote_read_probe"), ("src", "tidemark")],
                &probe,
            )],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let child = Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);

    // Wait until both have several seconds of `up` (remote write lags a little).
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut first_ts = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "no data arrived through remote write in time"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = get(&format!("{ours}/api/v1/query?query=up")).await;
        if r.status == StatusCode::OK && !r.json()["data"]["result"].as_array().unwrap().is_empty()
        {
            let t = first_ts.get_or_insert_with(tidemark_model::time::now_millis);
            if tidemark_model::time::now_millis() - *t > 16_000 {
                break;
            }
        }
    }
    // Compare at a time both surely have (remote write is at most ~2 s behind).
    let t = (tidemark_model::time::now_millis() - 4_000) / 1000;
    let queries = [
        "up",
        "scrape_samples_scraped",
        "prometheus_build_info",
        "sum by (job) (up)",
        "count(prometheus_http_requests_total)",
        "max_over_time(scrape_duration_seconds[5s])",
    ];
    for q in queries {
        let path = format!("/api/v1/query?query={}&time={t}", enc(q));
        let a = get(&format!("{prom}{path}")).await.json();
        let b = get(&format!("{ours}{path}")).await.json();
        assert_eq!(a["status"], "success", "{q}: {a}");
        assert_eq!(b["status"], "success", "{q}: {b}");
        assert_eq!(a["data"]["resultType"], b["data"]["resultType"], "{q}");
        let (ma, mb) = (by_metric(&a), by_metric(&b));
        assert!(!ma.is_empty(), "{q}: Prometheus has data");
        assert_eq!(
            ma.keys().collect::<Vec<_>>(),
            mb.keys().collect::<Vec<_>>(),
            "{q}: same series"
        );
        for (k, va) in &ma {
            assert!(
                close(va, &mb[k]),
                "{q} {k}: prometheus {va} vs tidemark {}",
                mb[k]
            );
        }
    }
    for q in [
        "up",
        "scrape_series_added",
        "rate(prometheus_tsdb_head_samples_appended_total[3s])",
    ] {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={t}&step=1",
            enc(q),
            t - 6
        );
        let a = get(&format!("{prom}{path}")).await.json();
        let b = get(&format!("{ours}{path}")).await.json();
        let (ma, mb) = (by_metric(&a), by_metric(&b));
        assert!(!ma.is_empty(), "{q}: Prometheus has data: {a}");
        assert_eq!(
            ma.keys().collect::<Vec<_>>(),
            mb.keys().collect::<Vec<_>>(),
            "{q}: same series"
        );
        for (k, va) in &ma {
            assert!(
                close(va, &mb[k]),
                "{q} {k}: prometheus {va} vs tidemark {}",
                mb[k]
            );
        }
    }
    // Metadata arrived with remote write.
    let m = get(&format!(
        "{ours}/api/v1/metadata?metric=prometheus_http_requests_total"
    ))
    .await
    .json();
    assert_eq!(
        m["data"]["prometheus_http_requests_total"][0]["type"], "counter",
        "{m}"
    );

    // promtool against both.
    let ts = t.to_string();
    let (ps, pe) = ((t - 5).to_string(), t.to_string());
    for args in [
        vec!["query", "instant", "--time", ts.as_str(), "SERVER", "up"],
        vec![
            "query",
            "instant",
            "--time",
            ts.as_str(),
            "SERVER",
            "sum(scrape_samples_scraped)",
        ],
        vec![
            "query",
            "range",
            "--start",
            ps.as_str(),
            "--end",
            pe.as_str(),
            "--step",
            "1s",
            "SERVER",
            "up",
        ],
        vec![
            "query",
            "series",
            "--match",
            "up",
            "--start",
            ps.as_str(),
            "--end",
            pe.as_str(),
            "SERVER",
        ],
        vec![
            "query",
            "labels",
            "--start",
            ps.as_str(),
            "--end",
            pe.as_str(),
            "SERVER",
            "job",
        ],
    ] {
        let with = |server: &str| -> Vec<String> {
            args.iter()
                .map(|a| {
                    if *a == "SERVER" {
                        server.to_string()
                    } else {
                        a.to_string()
                    }
                })
                .collect()
        };
        let a = promtool(&with(&prom));
        let b = promtool(&with(&ours));
        assert!(
            !a.trim().is_empty(),
            "promtool {args:?} printed nothing against Prometheus"
        );
        assert_eq!(a, b, "promtool {args:?}");
    }
    grafana_replay(&prom, &ours, t).await;
    // Last: this creates new series in Prometheus (remote read metrics) that its head-based
    // label queries would list before remote write ships them.
    // Prometheus reads Tidemark-only data through remote read (sampled responses).
    let path = format!(
        "/api/v1/query_range?query=remote_read_probe&start={}&end={}&step=1",
        probe_t / 1000,
        probe_t / 1000 + 29
    );
    let a = get(&format!("{prom}{path}")).await.json();
    let b = get(&format!("{ours}{path}")).await.json();
    assert_eq!(
        a["data"]["result"].as_array().map(Vec::len),
        Some(1),
        "remote read through Prometheus: {a}"
    );
    assert_eq!(a["data"], b["data"], "remote read");
    srv.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "test took {:?}",
        started.elapsed()
    );
}
