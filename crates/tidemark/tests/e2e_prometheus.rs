//! Debian's `prometheus` scrapes Debian's `prometheus-node-exporter` and remote-writes to a real
//! `tidemark server`; the same instant and range queries against both return the same series and
//! values. Skipped (with a note) where those packages are not installed; scripts/test installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use server::{Server, free_port, result, urlencode};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> serde_json::Value {
    let s = Server {
        child: Command::new("true").spawn().unwrap(),
        port,
    };
    let (st, body) = s.request("GET", path, None).unwrap();
    std::mem::forget(s);
    assert_eq!(st, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `metric labels` -> value for an instant vector, `labels` -> values for a matrix.
fn by_labels(v: &serde_json::Value) -> BTreeMap<String, Vec<f64>> {
    let mut out = BTreeMap::new();
    for r in result(v) {
        let key = r["metric"].to_string();
        let vals: Vec<f64> = if let Some(vs) = r["values"].as_array() {
            vs.iter()
                .map(|p| p[1].as_str().unwrap().parse().unwrap())
                .collect()
        } else {
            vec![r["value"][1].as_str().unwrap().parse().unwrap()]
        };
        out.insert(key, vals);
    }
    out
}

#[test]
fn prometheus_remote_write_and_queries_agree() {
    for bin in ["/usr/bin/prometheus", "/usr/bin/prometheus-node-exporter"] {
        if !Path::new(bin).exists() {
            println!("SKIPPED: {bin} not installed (scripts/test installs it)");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let ne_port = free_port();
    let _ne = Proc(
        Command::new("/usr/bin/prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let tm = Server::start(
        &dir.path().join("tidemark"),
        &["--config.file", "/dev/null"],
    );
    let prom_port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\nremote_write:\n  - url: http://127.0.0.1:{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
            tm.port
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Let several scrapes flow through remote write.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let v = tm.query("count(count_over_time(up{job=\"node\"}[1m]))");
        let n = result(&v)
            .first()
            .map(|r| r["value"][1].as_str().unwrap().to_string());
        let c = tm.query("count_over_time(up{job=\"node\"}[1m])");
        let samples: f64 = result(&c)
            .first()
            .map(|r| r["value"][1].as_str().unwrap().parse().unwrap())
            .unwrap_or(0.0);
        if n.as_deref() == Some("1") && samples >= 8.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "remote write did not deliver 8 scrapes within 60s"
        );
    }
    // Evaluate at a time both have fully received (remote write lags by ~1s).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let t = now - 5.0;
    let instant = [
        "up{job=\"node\"}",
        "node_cpu_seconds_total",
        "rate(node_cpu_seconds_total[10s])",
        "sum by (mode) (node_cpu_seconds_total)",
        "scrape_samples_scraped",
        "node_memory_MemTotal_bytes",
    ];
    for q in instant {
        let path = format!("/api/v1/query?query={}&time={t:.3}", urlencode(q));
        let a = by_labels(&http_get(tm.port, &path));
        let b = by_labels(&http_get(prom_port, &path));
        assert!(!b.is_empty(), "{q}: Prometheus returned nothing");
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{q}: series differ"
        );
        for (k, va) in &a {
            let vb = &b[k];
            for (x, y) in va.iter().zip(vb) {
                assert!(
                    (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                    "{q} {k}: {x} vs {y}"
                );
            }
        }
    }
    let range = ["node_load1", "rate(node_network_receive_bytes_total[10s])"];
    for q in range {
        let path = format!(
            "/api/v1/query_range?query={}&start={:.3}&end={t:.3}&step=2",
            urlencode(q),
            t - 10.0
        );
        let a = by_labels(&http_get(tm.port, &path));
        let b = by_labels(&http_get(prom_port, &path));
        assert!(!b.is_empty(), "{q}: Prometheus returned nothing");
        assert_eq!(a, b, "{q}: range results differ");
    }
}
