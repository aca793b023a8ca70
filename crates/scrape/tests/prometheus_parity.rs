//! Parity with Debian's `prometheus`: the same scrape config (with target and metric
//! relabeling) run by Prometheus and by Tidemark against the same node_exporter yields the same
//! series set, synthetic series included. Skipped (with a message) when either binary is
//! missing; CI installs both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tidemark_model::{MatchType, Matcher};
use tidemark_scrape::{ScrapeManager, ScrapeOptions, parse_config};
use tidemark_storage::Queryable;
use tidemark_storage::memory::MemStorage;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const NODE: &str = "/usr/bin/prometheus-node-exporter";

type SeriesSet = BTreeSet<Vec<(String, String)>>;

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

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} never opened");
}

async fn get(port: u16, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

async fn prometheus_series(port: u16) -> SeriesSet {
    let body = get(port, "/api/v1/series?match%5B%5D=%7Bjob%3D%22node%22%7D").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]
        .as_array()
        .expect("series data")
        .iter()
        .map(|s| {
            let mut l: Vec<(String, String)> = s
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            l.sort();
            l
        })
        .collect()
}

fn our_series(s: &MemStorage) -> SeriesSet {
    let q = s.querier(i64::MIN, i64::MAX).unwrap();
    q.select(
        true,
        None,
        &[Matcher::new(MatchType::Equal, "job", "node").unwrap()],
    )
    .map(|r| {
        r.unwrap()
            .labels()
            .iter()
            .map(|l| (l.name.to_string(), l.value.to_string()))
            .collect()
    })
    .collect()
}

fn scrape_config(node_port: u16) -> String {
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['127.0.0.1:{node_port}']
        labels: {{env: parity}}
    relabel_configs:
      - source_labels: [__address__]
        regex: '.*:(.*)'
        target_label: port
      - source_labels: [env]
        target_label: env_upper
        action: uppercase
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: 'go_.*|node_scrape_collector_duration_seconds'
        action: drop
      - source_labels: [__name__, mode]
        regex: 'node_cpu_seconds_total;(user|system)'
        target_label: cpu_mode_class
        replacement: busy
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_series_as_prometheus() {
    for bin in [PROMETHEUS, NODE] {
        if !std::path::Path::new(bin).exists() {
            println!("SKIPPED: {bin} is not installed");
            return;
        }
    }
    let node_port = free_port();
    let _node = Kill(
        Command::new(NODE)
            .arg(format!("--web.listen-address=127.0.0.1:{node_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(node_port);
    let yaml = scrape_config(node_port);
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("prometheus.yml");
    std::fs::write(&cfg_path, &yaml).unwrap();
    let prom_port = free_port();
    let _prom = Kill(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = MemStorage::new();
    let m = ScrapeManager::new(
        Arc::new(store.clone()),
        ScrapeOptions {
            spread_offsets: false,
            ..Default::default()
        },
    );
    m.apply_config(&parse_config(&yaml).unwrap()).unwrap();
    wait_port(prom_port);
    // Both have scraped a few times once Prometheus reports scrape_series_added for the target.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let theirs = prometheus_series(prom_port).await;
        if theirs
            .iter()
            .any(|l| l.contains(&("__name__".into(), "scrape_series_added".into())))
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let theirs = prometheus_series(prom_port).await;
    let ours = our_series(&store);
    m.stop().await;
    assert!(
        theirs.len() > 100,
        "Prometheus has only {} series",
        theirs.len()
    );
    let only_theirs: Vec<_> = theirs.difference(&ours).take(10).collect();
    let only_ours: Vec<_> = ours.difference(&theirs).take(10).collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "series sets differ ({} vs {}):\nonly Prometheus: {only_theirs:#?}\nonly Tidemark: {only_ours:#?}",
        theirs.len(),
        ours.len()
    );
    assert!(
        ours.iter()
            .any(|l| l.contains(&("cpu_mode_class".into(), "busy".into())))
    );
    assert!(
        ours.iter()
            .any(|l| l.contains(&("env_upper".into(), "PARITY".into())))
    );
}
