//! End-to-end tests of the `tidemark` binary: real processes on 127.0.0.1 ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tidemark");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new(BIN)
            .arg("server")
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .arg("--storage.tsdb.path")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let s = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = s.request("GET", "/-/ready", None) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server did not become ready");
    }

    /// A minimal HTTP/1.1 request; returns status and body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        let body = body.unwrap_or("");
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = Vec::new();
        c.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let rest = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((status, rest))
    }

    fn query(&self, q: &str) -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let (st, body) = self.request("GET", &path, None).unwrap();
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// SIGTERM and wait; returns the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (st, err);
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn result(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["data"]["result"].as_array().unwrap()
}

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
    let p = dir.path().join("bad.yml");
    std::fs::write(&p, "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: a\n    scrape_intervall: 5s\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("scrape_intervall") && (text.contains("line 5") || text.contains(":5:")),
        "{text}"
    );
    let good = dir.path().join("good.yml");
    std::fs::write(&good, "scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: ['localhost:1']\ntidemark:\n  storage:\n    retention:\n      time: 30d\n").unwrap();
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
}
