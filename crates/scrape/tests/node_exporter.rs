//! Debian's `prometheus-node-exporter` as a real target: `up` is 1 and node_cpu_seconds_total
//! appears; after the exporter stops, `up` is 0 and its series carry staleness markers.
//! Skipped (with a message) when the binary is not installed; CI installs it.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tidemark_model::{MatchType, Matcher, is_stale_nan};
use tidemark_scrape::{Health, ScrapeManager, ScrapeOptions, parse_config};
use tidemark_storage::Queryable;
use tidemark_storage::memory::MemStorage;

const BIN: &str = "/usr/bin/prometheus-node-exporter";

/// Last sample of every series named `name`.
fn last(s: &MemStorage, name: &str) -> Vec<f64> {
    let q = s.querier(i64::MIN, i64::MAX).unwrap();
    q.select(
        true,
        None,
        &[Matcher::new(MatchType::Equal, "__name__", name).unwrap()],
    )
    .map(|r| {
        let s = r.unwrap();
        let mut it = s.iter();
        let mut v = f64::NAN;
        while it.next() {
            v = it.at().v;
        }
        v
    })
    .collect()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_exporter_up_then_stale() {
    if !std::path::Path::new(BIN).exists() {
        println!("SKIPPED: {BIN} is not installed");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = parse_config(&format!(
        "scrape_configs:\n  - job_name: node\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    ))
    .unwrap();
    let store = MemStorage::new();
    let opts = ScrapeOptions {
        spread_offsets: false,
        ..Default::default()
    };
    let m = ScrapeManager::new(Arc::new(store.clone()), opts);
    m.apply_config(&cfg).unwrap();
    wait_for("node up", || last(&store, "up") == vec![1.0]).await;
    let cpu = last(&store, "node_cpu_seconds_total");
    assert!(
        !cpu.is_empty() && cpu.iter().all(|v| v.is_finite()),
        "{cpu:?}"
    );
    let t = &m.targets().active_targets[0];
    assert_eq!((t.health, t.labels.get("job")), (Health::Up, Some("node")));
    assert!(
        m.metadata()
            .iter()
            .any(|x| x.metric == "node_cpu_seconds_total" && x.kind.as_str() == "counter")
    );

    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("node down", || last(&store, "up") == vec![0.0]).await;
    let cpu = last(&store, "node_cpu_seconds_total");
    assert!(
        cpu.iter().all(|v| is_stale_nan(*v)),
        "node_cpu_seconds_total went stale"
    );
    let t = &m.targets().active_targets[0];
    assert_eq!(t.health, Health::Down);
    assert!(t.last_error.contains("refused"), "{}", t.last_error);
    m.stop().await;
}
