//! End-to-end tests of the `tidemark` binary: real processes on 127.0.0.1 ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod server;

use std::process::Command;
use std::time::{Duration, Instant};

use server::{BIN, Server, result};

/// Out of the box, `tidemark server` scrapes itself (job "tidemark") and answers Grafana's
/// health check.
#[test]
fn server_without_config_scrapes_itself() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let (st, body) = s
        .request("GET", "/api/v1/query?query=1%2B1&time=4", None)
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["data"],
        serde_json::json!({"resultType":"scalar","result":[4,"2"]})
    );
    // The first scrape happens within one interval (15s) thanks to the per-target offset.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = s.query("up{job=\"tidemark\"}");
        if let Some(r) = result(&v).first() {
            assert_eq!(r["value"][1], "1");
            break;
        }
        assert!(Instant::now() < deadline, "no self-scrape after 40s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (st, body) = s.request("GET", "/api/v1/targets", None).unwrap();
    assert_eq!(st, 200);
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["data"]["activeTargets"][0]["labels"]["job"], "tidemark");
    assert_eq!(t["data"]["activeTargets"][0]["health"], "up");
    let v = s.query("tidemark_tsdb_head_series");
    assert!(
        !result(&v).is_empty(),
        "own engine metrics are scraped: {v}"
    );
    let (status, stderr) = s.stop();
    assert!(status.success(), "exit status {status}; stderr: {stderr}");
    // Structured JSON logs.
    let first = stderr.lines().next().unwrap();
    let j: serde_json::Value = serde_json::from_str(first).unwrap();
    assert!(
        j["level"].is_string() && j["message"].is_string(),
        "{first}"
    );
}

/// Samples written through the API survive a SIGTERM and a restart (log replay).
#[test]
fn imported_samples_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--config.file", "/dev/null"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&format!(
            "e2e_metric{{k=\"v\"}} {i} {}\n",
            now - 100_000 + i * 1000
        ));
    }
    let (st, body) = s.request("POST", "/api/v1/import", Some(&text)).unwrap();
    assert!(st == 200 || st == 204, "import: {st} {body}");
    let q = "count_over_time(e2e_metric[5m])";
    assert_eq!(result(&s.query(q))[0]["value"][1], "100");
    let (status, _) = s.stop();
    assert!(status.success());
    let s = Server::start(dir.path(), &["--config.file", "/dev/null"]);
    assert_eq!(
        result(&s.query(q))[0]["value"][1],
        "100",
        "all samples after restart"
    );
    assert_eq!(result(&s.query("e2e_metric"))[0]["value"][1], "99");
}

#[test]
fn check_config_names_unknown_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    // `tidemark check config` on `yaml`: it must fail; returns what it printed.
    let check_fails = |name: &str, yaml: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        let out = Command::new(BIN)
            .args(["check", "config"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} passed the check");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = check_fails(
        "bad.yml",
        "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: a\n    scrape_intervall: 5s\n",
    );
    assert!(
        text.contains("scrape_intervall") && (text.contains("line 5") || text.contains(":5:")),
        "{text}"
    );
    // The downsampling and retention keys are checked too.
    let text = check_fails(
        "bad2.yml",
        "tidemark:\n  storage:\n    downsampling:\n      enabled: true\n      resolution_5m_aftr: 2d\n",
    );
    assert!(
        text.contains("resolution_5m_aftr") && text.contains("line 5"),
        "{text}"
    );
    let text = check_fails(
        "bad3.yml",
        "tidemark:\n  storage:\n    retention:\n      rules:\n        - match: '{__name__=~\"debug_.*\"}'\n          time: 2x\n",
    );
    assert!(
        text.contains("tidemark.storage.retention.rules[0].time"),
        "{text}"
    );
    let good = dir.path().join("good.yml");
    std::fs::write(&good, "scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: ['localhost:1']\ntidemark:\n  storage:\n    retention:\n      time: 30d\n      resolution_5m: 60d\n      resolution_1h: 2y\n      rules:\n        - match: '{__name__=~\"debug_.*\"}'\n          time: 2d\n          resolution_1h: 7d\n    downsampling:\n      enabled: true\n      resolution_5m_after: 2d\n      resolution_1h_after: 12d\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A bad `--query.max-source-resolution` stops the server at start, naming the flag.
#[test]
fn bad_max_source_resolution_flag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "server",
            "--web.listen-address",
            "127.0.0.1:0",
            "--storage.tsdb.path",
        ])
        .arg(dir.path().join("data"))
        .args(["--query.max-source-resolution", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--query.max-source-resolution") && text.contains("\"soon\""),
        "{text}"
    );
}

#[test]
fn bad_write_batch_window_flag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "server",
            "--web.listen-address",
            "127.0.0.1:0",
            "--cluster.node-id",
            "1",
            "--cluster.listen-address",
            "127.0.0.1:0",
            "--storage.tsdb.path",
        ])
        .arg(dir.path().join("data"))
        .args(["--cluster.write-batch-window", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--cluster.write-batch-window") && text.contains("soon"),
        "{text}"
    );
}

#[test]
fn promqltest_prints_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.test");
    std::fs::write(&f, "load 1m\n  m{a=\"1\"} 1 2 3\n\neval instant at 2m m\n  m{a=\"1\"} 3\n\neval instant at 2m m\n  m{a=\"1\"} 4\n").unwrap();
    let out = Command::new(BIN)
        .arg("promqltest")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.trim_end().ends_with("1 passed, 1 failed, 0 skipped"),
        "{text}"
    );
    assert!(!out.status.success(), "a failed case fails the command");
}

/// `tsdb import` backfills old samples into blocks, `tsdb analyze` reports them, and a server on
/// that directory answers queries over them.
#[test]
fn tsdb_import_analyze_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("backfill.om");
    // 30 days ago, 3 series x 240 samples at 1m, OpenMetrics with timestamps in seconds.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = now_s - 30 * 86_400;
    let mut text = String::from("# TYPE old_metric gauge\n");
    for i in 0..240 {
        for s in 0..3 {
            text.push_str(&format!(
                "old_metric{{series=\"{s}\"}} {} {}\n",
                i * (s + 1),
                start + i * 60
            ));
        }
    }
    text.push_str("# EOF\n");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .args(["tsdb", "import"])
        .arg(&file)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 720 samples"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(BIN)
        .args(["tsdb", "analyze"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("old_metric"), "{report}");
    let s = Server::start(
        &data,
        &[
            "--config.file",
            "/dev/null",
            "--storage.retention.time",
            "90d",
        ],
    );
    let t = start + 239 * 60;
    let v = s.query(&format!("sum(count_over_time(old_metric[5h] @ {t}))"));
    assert_eq!(result(&v)[0]["value"][1], "720", "{v}");
    // status/tsdb keeps Prometheus' keys and adds the blocks per resolution under `tidemark`.
    let (st, body) = s.request("GET", "/api/v1/status/tsdb", None).unwrap();
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let data = &v["data"];
    assert!(
        data["headStats"].is_object() && data["seriesCountByMetricName"].is_array(),
        "{v}"
    );
    let res = data["tidemark"]["blocksByResolution"].as_array().unwrap();
    assert_eq!(res.len(), 1, "{v}");
    assert_eq!(res[0]["resolution"], "raw");
    assert_eq!(res[0]["resolutionMs"], 0);
    assert_eq!(res[0]["numSeries"], 3, "{v}");
    assert_eq!(res[0]["numSamples"], 720, "{v}");
    assert!(res[0]["numBlocks"].as_u64().unwrap() >= 1);
    assert!(res[0]["numBytes"].as_u64().unwrap() > 0);
    assert!(res[0]["minTime"].as_i64().unwrap() <= start * 1000);
}

#[test]
fn api_limit_flags_apply() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--config.file",
            "/dev/null",
            "--web.max-request-body-bytes=1KB",
        ],
    );
    let small = "m_small 1\n";
    let (st, body) = s.request("POST", "/api/v1/import", Some(small)).unwrap();
    assert!(st == 200 || st == 204, "small import: {st} {body}");
    let big = "m_big{pad=\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"} 1\n".repeat(40);
    assert!(big.len() > 1024);
    let (st, body) = s.request("POST", "/api/v1/import", Some(&big)).unwrap();
    assert_eq!(st, 413, "a body over --web.max-request-body-bytes: {body}");
    // A bad value is a clear start-up error.
    let out = std::process::Command::new(server::BIN)
        .args(["server", "--web.read-timeout=soon", "--storage.path"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--web.read-timeout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
