//! End to end with Debian's prometheus-alertmanager on loopback: an alert rule over appended
//! data fires after `for`, Alertmanager's `/api/v2/alerts` lists it with the right labels and
//! annotations (and the external labels), and it disappears (resolved) when the condition clears.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_model::Labels;
use tidemark_promql::{Engine, EngineOptions};
use tidemark_rules::{GroupOptions, RuleManager};
use tidemark_storage::memory::MemStorage;

const AM: &str = "/usr/bin/prometheus-alertmanager";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET; returns the body.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    status.contains(" 200 ").then(|| body.to_string())
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn am_alerts(addr: &str) -> Vec<serde_json::Value> {
    get(addr, "/api/v2/alerts")
        .and_then(|b| serde_json::from_str::<Vec<serde_json::Value>>(&b).ok())
        .unwrap_or_default()
}

#[test]
fn alert_fires_reaches_alertmanager_and_resolves() {
    if !Path::new(AM).exists() {
        println!("SKIPPED: {AM} not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("am.yml"),
        "route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let child = Command::new(AM)
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("amdata").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    wait_for("alertmanager to start", Duration::from_secs(15), || {
        get(&addr, "/-/ready").is_some()
    });

    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n- name: e2e\n  interval: 1s\n  rules:\n  - alert: QueueTooLong\n    expr: queue_length > 10\n    for: 2s\n    labels:\n      severity: page\n    annotations:\n      summary: 'queue {{ $labels.queue }} at {{ $value }}'\n",
    )
    .unwrap();
    let cfg = tidemark_scrape::parse_config(&format!(
        "global:\n  external_labels: {{cluster: test}}\nrule_files: ['{}']\nalerting:\n  alertmanagers:\n  - static_configs: [{{targets: ['{addr}']}}]\n    timeout: 2s\n",
        dir.path().join("rules.yml").display()
    ))
    .unwrap();

    let st = Arc::new(MemStorage::new());
    let series = Labels::from_pairs([("__name__", "queue_length"), ("queue", "q1")]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let high = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // A writer appending the gauge every 200ms.
    let writer = {
        let (st, stop, high, series) = (st.clone(), stop.clone(), high.clone(), series.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = if high.load(std::sync::atomic::Ordering::Relaxed) {
                    42.0
                } else {
                    1.0
                };
                st.insert(series.clone(), tidemark_model::time::now_millis(), v);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mgr = rt.block_on(async {
        let m = RuleManager::new(
            Arc::new(Engine::new(EngineOptions::default())),
            st.clone(),
            st.clone(),
            GroupOptions::default(),
        );
        m.apply_config(&cfg, "http://tidemark.test:9190").unwrap();
        m
    });
    let started = Instant::now();

    // Pending first, then firing after `for`, then in Alertmanager.
    wait_for("alert pending", Duration::from_secs(10), || {
        mgr.alerts_json()["alerts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let first = mgr.alerts_json();
    assert_eq!(first["alerts"][0]["state"], "pending", "{first}");
    wait_for("alert in alertmanager", Duration::from_secs(20), || {
        !am_alerts(&addr).is_empty()
    });
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "fired before `for`"
    );
    let a = &am_alerts(&addr)[0];
    assert_eq!(a["labels"]["alertname"], "QueueTooLong");
    assert_eq!(a["labels"]["queue"], "q1");
    assert_eq!(a["labels"]["severity"], "page");
    assert_eq!(a["labels"]["cluster"], "test");
    assert_eq!(a["annotations"]["summary"], "queue q1 at 42");
    assert!(
        a["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with("http://tidemark.test:9190/graph?g0.expr=queue_length")
    );
    assert_eq!(a["status"]["state"], "active");
    let rules = mgr.rules_json(&Default::default()).unwrap();
    assert_eq!(rules["groups"][0]["rules"][0]["state"], "firing");
    assert_eq!(rules["groups"][0]["rules"][0]["health"], "ok");

    // The condition clears: the resolved alert (endsAt now) leaves Alertmanager's active list.
    high.store(false, std::sync::atomic::Ordering::Relaxed);
    wait_for(
        "alert resolved in alertmanager",
        Duration::from_secs(20),
        || am_alerts(&addr).is_empty(),
    );
    assert!(mgr.alerts_json()["alerts"].as_array().unwrap().is_empty());
    assert_eq!(mgr.notifier().dropped(), 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    mgr.stop();
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// The notifier over HTTPS: Debian's alertmanager serves TLS (its `--web.config.file`), the
/// Alertmanager config trusts that certificate through `tls_config.ca_file`, and a firing alert
/// arrives. A second Alertmanager config without the CA fails verification (counted as errors).
#[test]
fn alerts_reach_an_https_alertmanager() {
    if !Path::new(AM).exists() {
        println!("SKIPPED: {AM} not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.path().join("am.crt");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("am.key"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            ca.display(),
            dir.path().join("am.key").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("am.yml"),
        "route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(AM)
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("amdata").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg(format!(
            "--web.config.file={}",
            dir.path().join("web.yml").display()
        ))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    // Plain HTTP is refused by a TLS listener; wait until the port accepts connections.
    wait_for("alertmanager to listen", Duration::from_secs(15), || {
        TcpStream::connect(&addr).is_ok()
    });

    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n- name: tls\n  interval: 1s\n  rules:\n  - alert: Always\n    expr: vector(1)\n",
    )
    .unwrap();
    let cfg = tidemark_scrape::parse_config(&format!(
        "rule_files: ['{}']\nalerting:\n  alertmanagers:\n  - scheme: https\n    tls_config: {{ca_file: '{}', server_name: localhost}}\n    static_configs: [{{targets: ['{addr}']}}]\n    timeout: 2s\n",
        dir.path().join("rules.yml").display(),
        ca.display()
    ))
    .unwrap();
    let st = Arc::new(MemStorage::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mgr = rt.block_on(async {
        let m = RuleManager::new(
            Arc::new(Engine::new(EngineOptions::default())),
            st.clone(),
            st.clone(),
            GroupOptions::default(),
        );
        m.apply_config(&cfg, "http://tidemark.test:9190").unwrap();
        m
    });
    let metric = |name: &str| -> f64 {
        let mut m = String::new();
        mgr.render_metrics(&mut m);
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    wait_for("an alert sent over TLS", Duration::from_secs(20), || {
        metric("tidemark_notifications_sent_total") >= 1.0
    });
    assert_eq!(metric("tidemark_notifications_errors_total"), 0.0);
    // Alertmanager has it (read back over TLS with curl when available).
    let curl = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("https://localhost:{port}/api/v2/alerts"))
        .output();
    if let Ok(out) = curl
        && out.status.success()
    {
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v.iter().any(|a| a["labels"]["alertname"] == "Always"),
            "{v:?}"
        );
    }
    mgr.stop();

    // Without the CA the certificate is not trusted: sending fails and is counted.
    let cfg = tidemark_scrape::parse_config(&format!(
        "rule_files: ['{}']\nalerting:\n  alertmanagers:\n  - scheme: https\n    static_configs: [{{targets: ['{addr}']}}]\n    timeout: 2s\n",
        dir.path().join("rules.yml").display()
    ))
    .unwrap();
    let mgr2 = rt.block_on(async {
        let m = RuleManager::new(
            Arc::new(Engine::new(EngineOptions::default())),
            st.clone(),
            st.clone(),
            GroupOptions::default(),
        );
        m.apply_config(&cfg, "http://tidemark.test:9190").unwrap();
        m
    });
    wait_for("a failed TLS send", Duration::from_secs(20), || {
        let mut m = String::new();
        mgr2.render_metrics(&mut m);
        m.lines()
            .find(|l| l.starts_with("tidemark_notifications_errors_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            >= 1.0
    });
    mgr2.stop();
    rt.shutdown_timeout(Duration::from_secs(2));
}
