//! The Prometheus API v1 endpoints over an in-process server and `MemStorage`: JSON shapes
//! (compared whole), status codes, error texts, the Grafana datasource's request sequence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::{Method, StatusCode};
use serde_json::json;
use support::*;
use tidemark_api::{ApiOptions, TsdbAdmin, TsdbStatus};
use tidemark_model::{Labels, Matcher};

const T0: i64 = 1_700_000_000_000;

fn load(s: &tidemark_storage::memory::MemStorage) {
    for (job, inst, v) in [
        ("node", "a:9100", 1.0),
        ("node", "b:9100", 0.0),
        ("api", "c:80", 1.0),
    ] {
        let l = Labels::from_pairs([("__name__", "up"), ("job", job), ("instance", inst)]);
        for i in 0..10 {
            s.insert(l.clone(), T0 + i * 15_000, v);
        }
    }
    let l = Labels::from_pairs([
        ("__name__", "http_requests_total"),
        ("job", "api"),
        ("my.dotted", "x"),
    ]);
    for i in 0..10 {
        s.insert(l.clone(), T0 + i * 15_000, (i * 10) as f64);
    }
}

#[tokio::test]
async fn series_labels_and_values() {
    let srv = start(ApiOptions::default()).await;
    load(&srv.storage);
    let r = get(&srv.url(&format!(
        "/api/v1/series?match[]={}",
        enc(r#"up{job="node"}"#)
    )))
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(
        r.json(),
        json!({"status":"success","data":[
            {"__name__":"up","instance":"a:9100","job":"node"},
            {"__name__":"up","instance":"b:9100","job":"node"}]})
    );
    // POST form, two match[] (union, sorted), start/end in RFC 3339 and float seconds.
    let r = post_form(
        &srv.url("/api/v1/series"),
        &format!(
            "match[]={}&match[]={}&start=2023-11-14T22:13:20Z&end={}",
            enc(r#"up{job="api"}"#),
            enc("http_requests_total"),
            (T0 + 200_000) / 1000
        ),
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":[
            {"__name__":"http_requests_total","job":"api","my.dotted":"x"},
            {"__name__":"up","instance":"c:80","job":"api"}]})
    );
    // A time range without data.
    let r = get(&srv.url(&format!(
        "/api/v1/series?match[]=up&start=0&end={}",
        T0 / 1000 - 100
    )))
    .await;
    assert_eq!(r.json(), json!({"status":"success","data":[]}));

    let r = get(&srv.url("/api/v1/labels")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":["__name__","instance","job","my.dotted"]})
    );
    let r = get(&srv.url(&format!(
        "/api/v1/labels?match[]={}",
        enc("http_requests_total")
    )))
    .await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":["__name__","job","my.dotted"]})
    );
    let r = get(&srv.url("/api/v1/labels?limit=2")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":["__name__","instance"],"warnings":["results truncated due to limit"]})
    );

    let r = get(&srv.url("/api/v1/label/job/values")).await;
    assert_eq!(r.json(), json!({"status":"success","data":["api","node"]}));
    let r = get(&srv.url(&format!(
        "/api/v1/label/instance/values?match[]={}",
        enc(r#"up{job="node"}"#)
    )))
    .await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":["a:9100","b:9100"]})
    );
    // U__ escaped label name (my.dotted).
    let r = get(&srv.url("/api/v1/label/U__my_2e_dotted/values")).await;
    assert_eq!(r.json(), json!({"status":"success","data":["x"]}));
    let r = get(&srv.url("/api/v1/label/__name__/values?limit=1")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":["http_requests_total"],"warnings":["results truncated due to limit"]})
    );
    srv.stop().await;
}

#[tokio::test]
async fn parameter_errors_are_bad_data() {
    let srv = start(ApiOptions::default()).await;
    load(&srv.storage);
    let cases: Vec<(String, &str)> = vec![
        ("/api/v1/series".into(), "no match[] parameter provided"),
        (format!("/api/v1/series?match[]={}", enc("{")), ""),
        (
            format!("/api/v1/series?match[]={}", enc(r#"{job=~".*"}"#)),
            "at least one non-empty matcher",
        ),
        (
            "/api/v1/series?match[]=up&start=yesterday".to_string(),
            r#"invalid parameter "start": cannot parse "yesterday" to a valid timestamp"#,
        ),
        (
            format!("/api/v1/labels?match[]={}", enc("rate(up[5m])")),
            "",
        ),
        (
            "/api/v1/label/job/values?limit=-1".into(),
            r#"invalid parameter "limit": limit must be non-negative"#,
        ),
        (
            "/api/v1/query_range?query=up".into(),
            r#"invalid parameter "start": cannot parse "" to a valid timestamp"#,
        ),
        (
            "/api/v1/query_range?query=up&start=10&end=5&step=1".into(),
            r#"invalid parameter "end": end timestamp must not be before start time"#,
        ),
        (
            "/api/v1/query_range?query=up&start=1&end=5".into(),
            r#"invalid parameter "step": cannot parse "" to a valid duration"#,
        ),
        (
            "/api/v1/query_range?query=up&start=1&end=5&step=0".into(),
            r#"invalid parameter "step": zero or negative query resolution step widths are not accepted. Try a positive integer"#,
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=100000&step=1".into(),
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ),
        (
            "/api/v1/query?query=up&time=abc".into(),
            r#"invalid parameter "time": cannot parse "abc" to a valid timestamp"#,
        ),
        (
            "/api/v1/query?query=up&timeout=forever".into(),
            r#"invalid parameter "timeout": cannot parse "forever" to a valid duration"#,
        ),
        (
            "/api/v1/query_range?query=up&start=1&end=5&step=1&max_source_resolution=soon".into(),
            r#"invalid parameter "max_source_resolution": invalid max_source_resolution "soon": expected auto, raw or a duration such as 5m or 1h"#,
        ),
        (format!("/api/v1/format_query?query={}", enc("sum(")), ""),
        (
            "/api/v1/rules?type=foo".into(),
            r#"invalid parameter "type": not supported value "foo""#,
        ),
    ];
    for (path, want) in cases {
        let r = get(&srv.url(&path)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        let j = r.json();
        assert_eq!(j["status"], "error", "{path}");
        assert_eq!(j["errorType"], "bad_data", "{path}");
        let msg = j["error"].as_str().unwrap();
        assert!(!msg.is_empty());
        assert!(msg.contains(want), "{path}: {msg:?} lacks {want:?}");
        assert_eq!(
            j.as_object().unwrap().len(),
            3,
            "{path}: only status, errorType, error: {j}"
        );
    }
    // The server keeps serving, data intact.
    let r = get(&srv.url("/api/v1/label/job/values")).await;
    assert_eq!(r.json(), json!({"status":"success","data":["api","node"]}));
    // Valid max_source_resolution values are accepted (raw-only storage: no annotation).
    for v in ["auto", "raw", "0s", "5m", "1h"] {
        let path = format!("/api/v1/query?query=up&max_source_resolution={v}");
        let r = get(&srv.url(&path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert!(r.json().get("infos").is_none(), "{path}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn status_and_provider_endpoints() {
    let mut flags = std::collections::BTreeMap::new();
    flags.insert("web.listen-address".to_string(), ":9201".to_string());
    let srv = start_full(
        ApiOptions::default(),
        move |a| {
            a.with_config_text(|| "global:\n  scrape_interval: 15s\n".to_string())
                .with_flags(flags)
        },
        None,
        Default::default(),
    )
    .await;
    load(&srv.storage);
    let r = get(&srv.url("/api/v1/status/buildinfo")).await;
    let j = r.json();
    let keys: Vec<&String> = j["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec![
            "branch",
            "buildDate",
            "buildUser",
            "goVersion",
            "revision",
            "version"
        ],
        "no features key"
    );
    assert_eq!(j["data"]["version"], "2.53.0");

    let r = get(&srv.url("/api/v1/status/config")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{"yaml":"global:\n  scrape_interval: 15s\n"}})
    );
    let r = get(&srv.url("/api/v1/status/flags")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{"web.listen-address":":9201"}})
    );
    let j = get(&srv.url("/api/v1/status/runtimeinfo")).await.json();
    for k in [
        "startTime",
        "CWD",
        "reloadConfigSuccess",
        "lastConfigTime",
        "corruptionCount",
        "goroutineCount",
        "GOMAXPROCS",
        "storageRetention",
    ] {
        assert!(j["data"].get(k).is_some(), "runtimeinfo lacks {k}: {j}");
    }
    let r = get(&srv.url("/api/v1/status/tsdb?limit=2")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{
            "headStats":{"numSeries":4,"numLabelPairs":8,"chunkCount":0,"minTime":T0,"maxTime":T0+135_000},
            "seriesCountByMetricName":[{"name":"up","value":3},{"name":"http_requests_total","value":1}],
            "labelValueCountByLabelName":[{"name":"instance","value":3},{"name":"__name__","value":2}],
            "memoryInBytesByLabelName":[{"name":"__name__","value":21},{"name":"instance","value":16}],
            "seriesCountByLabelValuePair":[{"name":"__name__=up","value":3},{"name":"job=api","value":2}]}})
    );
    let r = get(&srv.url("/api/v1/targets")).await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{"activeTargets":[],"droppedTargets":[],"droppedTargetCounts":{}}})
    );
    assert_eq!(
        get(&srv.url("/api/v1/targets/metadata")).await.json(),
        json!({"status":"success","data":[]})
    );
    assert_eq!(
        get(&srv.url("/api/v1/rules")).await.json(),
        json!({"status":"success","data":{"groups":[]}})
    );
    assert_eq!(
        get(&srv.url("/api/v1/alerts")).await.json(),
        json!({"status":"success","data":{"alerts":[]}})
    );
    assert_eq!(
        get(&srv.url("/api/v1/metadata")).await.json(),
        json!({"status":"success","data":{}})
    );
    assert_eq!(
        get(&srv.url("/api/v1/alertmanagers")).await.json(),
        json!({"status":"success","data":{"activeAlertmanagers":[],"droppedAlertmanagers":[]}})
    );
    let r = get(&srv.url(&format!(
        "/api/v1/format_query?query={}",
        enc("sum(rate(x[5m]))by(job)")
    )))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "success");
    srv.stop().await;
}

#[tokio::test]
async fn grafana_datasource_requests() {
    let srv = start(ApiOptions::default()).await;
    load(&srv.storage);
    // Health check: exact bytes.
    let r = get(&srv.url("/api/v1/query?query=1%2B1&time=4")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.text(),
        r#"{"status":"success","data":{"resultType":"scalar","result":[4,"2"]}}"#
    );
    let r = post_form(&srv.url("/api/v1/query"), "query=1%2B1&time=4").await;
    assert_eq!(
        r.text(),
        r#"{"status":"success","data":{"resultType":"scalar","result":[4,"2"]}}"#
    );
    assert_eq!(
        get(&srv.url("/api/v1/status/buildinfo")).await.status,
        StatusCode::OK
    );
    // Labels and label values by GET and POST with match[] and start/end as Grafana sends them.
    let (s, e) = (T0 / 1000 - 3600, T0 / 1000 + 3600);
    let r = post_form(&srv.url("/api/v1/labels"), &format!("start={s}&end={e}")).await;
    assert_eq!(
        r.json()["data"],
        json!(["__name__", "instance", "job", "my.dotted"])
    );
    let r = get(&srv.url(&format!(
        "/api/v1/label/job/values?match[]={}&start={s}&end={e}",
        enc("up")
    )))
    .await;
    assert_eq!(r.json()["data"], json!(["api", "node"]));
    // Grafana POSTs some requests first and retries with GET on 405.
    let r = post_form(
        &srv.url("/api/v1/label/job/values"),
        &format!("match[]={}", enc("up")),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = post_form(&srv.url("/api/v1/metadata"), "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    for p in [
        "/api/v1/status/buildinfo",
        "/api/v1/rules",
        "/api/v1/alerts",
    ] {
        assert_eq!(
            post_form(&srv.url(p), "").await.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{p}"
        );
    }
    let r = post_form(
        &srv.url("/api/v1/series"),
        &format!("match[]={}&start={s}&end={e}", enc("up")),
    )
    .await;
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 3);
    let r = get(&srv.url("/api/v1/metadata?limit=1000")).await;
    assert_eq!(r.json(), json!({"status":"success","data":{}}));
    // Exemplars probe: query=test, start/end in milliseconds.
    let r = get(&srv.url(&format!(
        "/api/v1/query_exemplars?query=test&start={}&end={}",
        T0,
        T0 + 3_600_000
    )))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"status":"success","data":[]}));
    assert_eq!(get(&srv.url("/api/v1/rules")).await.status, StatusCode::OK);
    assert_eq!(get(&srv.url("/api/v1/alerts")).await.status, StatusCode::OK);
    {
        let q = format!(
            "query={}&start={}&end={}&step=15",
            enc("up"),
            T0 / 1000,
            T0 / 1000 + 60
        );
        for r in [
            get(&srv.url(&format!("/api/v1/query_range?{q}"))).await,
            post_form(&srv.url("/api/v1/query_range"), &q).await,
        ] {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let j = r.json();
            assert_eq!(j["data"]["resultType"], "matrix");
            assert_eq!(j["data"]["result"].as_array().unwrap().len(), 3);
            assert_eq!(j["data"]["result"][0]["values"][0], json!([T0 / 1000, "1"]));
        }
        let r = get(&srv.url(&format!("/api/v1/query?query=up&time={}", T0 / 1000 + 30))).await;
        assert_eq!(r.json()["data"]["resultType"], "vector");
        assert_eq!(
            r.json()["data"]["result"][0]["value"],
            json!([T0 / 1000 + 30, "1"])
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn health_ready_request_id_and_own_metrics() {
    let srv = start(ApiOptions::default()).await;
    let r = get(&srv.url("/-/healthy")).await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r
        .headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(!id.is_empty());
    let r = request(
        Method::GET,
        &srv.url("/-/ready"),
        &[("x-request-id", "grafana-123")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("x-request-id").unwrap(), "grafana-123");
    let r = request(Method::HEAD, &srv.url("/-/healthy"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let _ = get(&srv.url("/api/v1/series")).await;
    let r = get(&srv.url("/metrics")).await;
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let t = r.text();
    assert!(
        t.contains("tidemark_http_requests_total{code=\"400\",handler=\"/api/v1/series\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("tidemark_http_requests_total{code=\"200\",handler=\"/-/healthy\"}"),
        "{t}"
    );
    assert!(
        t.contains("# TYPE tidemark_http_request_duration_seconds histogram"),
        "{t}"
    );
    assert!(t.contains("process_resident_memory_bytes"), "{t}");
    srv.stop().await;
}

#[tokio::test]
async fn readiness_flag() {
    let mut flag = None;
    let srv = start_full(
        ApiOptions::default(),
        |a| {
            flag = Some(a.ready_flag());
            a
        },
        None,
        Default::default(),
    )
    .await;
    flag.as_ref().unwrap().store(false, Ordering::Relaxed);
    assert_eq!(
        get(&srv.url("/-/ready")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&srv.url("/-/healthy")).await.status, StatusCode::OK);
    flag.unwrap().store(true, Ordering::Relaxed);
    assert_eq!(get(&srv.url("/-/ready")).await.status, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn federate_latest_samples() {
    let srv = start(ApiOptions::default()).await;
    let now = tidemark_model::time::now_millis();
    let l = Labels::from_pairs([("__name__", "up"), ("job", "node")]);
    srv.storage.insert(l.clone(), now - 30_000, 0.0);
    srv.storage.insert(l, now - 15_000, 1.0);
    let stale = Labels::from_pairs([("__name__", "up"), ("job", "gone")]);
    srv.storage
        .insert(stale, now - 10_000, tidemark_model::stale_nan());
    let old = Labels::from_pairs([("__name__", "up"), ("job", "old")]);
    srv.storage.insert(old, now - 3_600_000, 1.0);
    let r = get(&srv.url(&format!("/federate?match[]={}", enc("up")))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.text(),
        format!("# TYPE up untyped\nup{{job=\"node\"}} 1 {}\n", now - 15_000)
    );
    srv.stop().await;
}

struct FakeAdmin {
    deleted: parking_lot::Mutex<Vec<String>>,
}

impl TsdbAdmin for FakeAdmin {
    fn status(&self, _limit: usize) -> Result<TsdbStatus, tidemark_storage::Error> {
        Ok(TsdbStatus::default())
    }
    fn delete_series(
        &self,
        m: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
    ) -> Result<(), tidemark_storage::Error> {
        self.deleted.lock().push(format!("{:?} {mint} {maxt}", m));
        Ok(())
    }
    fn clean_tombstones(&self) -> Result<(), tidemark_storage::Error> {
        Ok(())
    }
    fn snapshot(&self, skip_head: bool) -> Result<String, tidemark_storage::Error> {
        Ok(format!("20231114T221320Z-{skip_head}"))
    }
}

#[tokio::test]
async fn admin_and_lifecycle() {
    // Disabled by default.
    let srv = start(ApiOptions::default()).await;
    let r = post_form(&srv.url("/api/v1/admin/tsdb/snapshot"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        json!({"status":"error","errorType":"unavailable","error":"admin APIs disabled"})
    );
    let r = post_form(&srv.url("/-/reload"), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.text(), "Lifecycle API is not enabled.\n");
    srv.stop().await;

    struct Reload(std::sync::atomic::AtomicUsize);
    impl tidemark_api::Reloader for Reload {
        fn reload(&self) -> Result<(), String> {
            if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
                Ok(())
            } else {
                Err("bad config at line 3".into())
            }
        }
    }
    let admin = Arc::new(FakeAdmin {
        deleted: Default::default(),
    });
    let a2 = admin.clone();
    let opts = ApiOptions {
        enable_admin_api: true,
        enable_lifecycle: true,
        ..Default::default()
    };
    let srv = start_full(
        opts,
        move |a| {
            a.with_admin(a2)
                .with_reload(Arc::new(Reload(Default::default())))
        },
        None,
        Default::default(),
    )
    .await;
    let r = post_form(&srv.url("/api/v1/admin/tsdb/snapshot?skip_head=true"), "").await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{"name":"20231114T221320Z-true"}})
    );
    let r = post_form(
        &srv.url("/api/v1/admin/tsdb/delete_series"),
        &format!("match[]={}&start=1&end=2", enc("up")),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        admin.deleted.lock().as_slice(),
        [r#"[[__name__="up"]] 1000 2000"#]
    );
    let r = post_form(&srv.url("/api/v1/admin/tsdb/delete_series"), "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = request(
        Method::PUT,
        &srv.url("/api/v1/admin/tsdb/clean_tombstones"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = get(&srv.url("/api/v1/status/tsdb")).await;
    assert_eq!(
        r.json()["data"]["headStats"]["numSeries"],
        0,
        "admin provider answers status"
    );
    assert_eq!(
        post_form(&srv.url("/-/reload"), "").await.status,
        StatusCode::OK
    );
    let r = post_form(&srv.url("/-/reload"), "").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.text().contains("bad config at line 3"));
    assert_eq!(
        get(&srv.url("/api/v1/status/runtimeinfo")).await.json()["data"]["reloadConfigSuccess"],
        false
    );
    assert_eq!(
        get(&srv.url("/-/reload")).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    srv.stop().await;
}

#[tokio::test]
async fn query_results_and_errors() {
    let srv = start(ApiOptions::default()).await;
    load(&srv.storage);
    let t = T0 / 1000 + 30;
    // Vector, exact bytes: labels sorted, timestamp as number, value as string.
    let r = get(&srv.url(&format!(
        "/api/v1/query?query={}&time={t}",
        enc(r#"up{job="api"}"#)
    )))
    .await;
    assert_eq!(
        r.text(),
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"__name__":"up","instance":"c:80","job":"api"}},"value":[{t},"1"]}}]}}}}"#
        )
    );
    // Fractional time, string result, special values.
    let r = get(&srv.url(&format!(
        "/api/v1/query?query={}&time=1.5",
        enc("\"hello\"")
    )))
    .await;
    assert_eq!(
        r.text(),
        r#"{"status":"success","data":{"resultType":"string","result":[1.500,"hello"]}}"#
    );
    let r = get(&srv.url(&format!("/api/v1/query?query={}&time=4", enc("1/0")))).await;
    assert_eq!(r.json()["data"]["result"], json!([4, "+Inf"]));
    let r = get(&srv.url(&format!("/api/v1/query?query={}&time=4", enc("1e21")))).await;
    assert_eq!(r.json()["data"]["result"], json!([4, "1e+21"]));
    let r = get(&srv.url(&format!("/api/v1/query?query={}&time=4", enc("0.1")))).await;
    assert_eq!(r.json()["data"]["result"], json!([4, "0.1"]));
    // Range query over RFC 3339 times.
    let r = get(&srv.url(&format!(
        "/api/v1/query_range?query={}&start=2023-11-14T22:13:20Z&end=2023-11-14T22:14:20Z&step=30s",
        enc("sum(up)")
    )))
    .await;
    assert_eq!(
        r.json(),
        json!({"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[T0/1000,"2"],[T0/1000+30,"2"],[T0/1000+60,"2"]]}]}})
    );
    // stats=all adds the stats object.
    let r = get(&srv.url("/api/v1/query?query=up&time=1700000030&stats=all")).await;
    assert!(
        r.json()["data"]["stats"]["timings"].is_object(),
        "{}",
        r.text()
    );
    // Errors: parse error 400 bad_data; many-to-many matching 422 execution.
    let r = get(&srv.url(&format!("/api/v1/query?query={}", enc("sum(")))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["errorType"], "bad_data");
    let r = get(&srv.url(&format!(
        "/api/v1/query?query={}&time={t}",
        enc("up + on(job) up")
    )))
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert_eq!(r.json()["errorType"], "execution");
    let m = get(&srv.url("/metrics")).await.text();
    assert!(
        m.contains("tidemark_queries_total{outcome=\"execution\",type=\"instant\"} 1"),
        "{m}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn gzip_for_clients_that_accept_it() {
    use std::io::Read;
    let srv = start(ApiOptions::default()).await;
    let now = tidemark_model::time::now_millis();
    for i in 0..200 {
        srv.storage.insert(
            Labels::from_pairs([("__name__", "g".to_string()), ("i", i.to_string())]),
            now,
            i as f64,
        );
    }
    let url = srv.url("/api/v1/series?match[]=g");
    let plain = get(&url).await;
    assert!(plain.headers.get("content-encoding").is_none());
    let r = request(
        Method::GET,
        &url,
        &[("accept-encoding", "gzip, deflate, br")],
        "",
    )
    .await;
    assert_eq!(r.headers.get("content-encoding").unwrap(), "gzip");
    assert!(
        r.body.len() < plain.body.len() / 3,
        "{} vs {}",
        r.body.len(),
        plain.body.len()
    );
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, plain.body.to_vec());
    // Small answers and q=0 are left alone.
    let r = request(
        Method::GET,
        &srv.url("/api/v1/status/buildinfo"),
        &[("accept-encoding", "gzip")],
        "",
    )
    .await;
    assert!(r.headers.get("content-encoding").is_none());
    let r = request(Method::GET, &url, &[("accept-encoding", "gzip;q=0")], "").await;
    assert!(r.headers.get("content-encoding").is_none());
    srv.stop().await;
}
