//! The scrape manager against real HTTP servers on loopback: healthy and broken targets,
//! staleness, reloads and file_sd. Storage is `MemStorage`.
#![allow(clippy::unwrap_used)]

#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::time::Duration;

use tidemark_model::{Labels, MatchType, Matcher, is_stale_nan};
use tidemark_scrape::{Health, ScrapeManager, ScrapeOptions, TargetsSnapshot, parse_config};
use tidemark_storage::memory::MemStorage;
use tidemark_storage::{Queryable, Series};

fn opts() -> ScrapeOptions {
    ScrapeOptions {
        spread_offsets: false,
        file_sd_poll_interval: Duration::from_millis(100),
        ..Default::default()
    }
}

/// Samples of every series matching `name` and `instance`.
fn samples(s: &MemStorage, name: &str, instance: &str) -> Vec<(Labels, Vec<(i64, f64)>)> {
    let q = s.querier(i64::MIN, i64::MAX).unwrap();
    let ms = [
        Matcher::new(MatchType::Equal, "__name__", name).unwrap(),
        Matcher::new(MatchType::Equal, "instance", instance).unwrap(),
    ];
    q.select(true, None, &ms)
        .map(|r| {
            let s: Arc<dyn Series> = r.unwrap();
            let mut it = s.iter();
            let mut v = Vec::new();
            while it.next() {
                let x = it.at();
                v.push((x.t, x.v));
            }
            (s.labels().clone(), v)
        })
        .collect()
}

fn last_value(s: &MemStorage, name: &str, instance: &str) -> Option<f64> {
    samples(s, name, instance)
        .first()
        .and_then(|(_, v)| v.last().map(|x| x.1))
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn target<'a>(snap: &'a TargetsSnapshot, instance: &str) -> &'a tidemark_scrape::ActiveTargetInfo {
    snap.active_targets
        .iter()
        .find(|t| t.labels.get("instance") == Some(instance))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_and_broken_targets() {
    let srv = server::start().await;
    let addr = srv.addr;
    let closed = server::closed_port();
    let paths = [
        "ok", "om", "gzip", "500", "garbage", "big", "many", "dup", "slow", "headers", "redirect",
    ];
    let mut groups = String::new();
    for p in paths {
        groups.push_str(&format!(
            "      - targets: ['{addr}']\n        labels: {{__metrics_path__: /{p}, instance: '{p}'}}\n"
        ));
    }
    groups.push_str(&format!(
        "      - targets: ['127.0.0.1:{closed}']\n        labels: {{instance: closed}}\n"
    ));
    groups.push_str(&format!(
        "      - targets: ['{addr}']\n        labels: {{drop: 'yes'}}\n"
    ));
    let yaml = format!(
        "scrape_configs:\n  - job_name: t\n    scrape_interval: 1s\n    scrape_timeout: 500ms\n    sample_limit: 10\n    body_size_limit: 2KB\n    relabel_configs:\n      - source_labels: [drop]\n        regex: 'yes'\n        action: drop\n    static_configs:\n{groups}  - job_name: auth\n    scrape_interval: 1s\n    metrics_path: /auth\n    basic_auth: {{username: user, password: pass}}\n    static_configs:\n      - targets: ['{addr}']\n"
    );
    let cfg = parse_config(&yaml).unwrap();
    let store = MemStorage::new();
    let m = ScrapeManager::new(Arc::new(store.clone()), opts());
    m.apply_config(&cfg).unwrap();
    wait_for("every target scraped once", || {
        let s = m.targets();
        s.active_targets.len() == paths.len() + 2
            && s.active_targets.iter().all(|t| t.health != Health::Unknown)
    })
    .await;
    let snap = m.targets();
    for up in ["ok", "om", "gzip", "headers", "redirect"] {
        let t = target(&snap, up);
        assert_eq!((t.health, t.last_error.as_str()), (Health::Up, ""), "{up}");
        assert_eq!(last_value(&store, "up", up), Some(1.0), "{up}");
    }
    let want_errors = [
        (
            "500",
            "server returned HTTP status 500 Internal Server Error",
        ),
        ("garbage", "line 1"),
        ("big", "body size limit exceeded"),
        ("many", "sample limit exceeded"),
        ("dup", "duplicate sample for timestamp"),
        ("slow", "context deadline exceeded"),
        ("closed", "onnection refused"),
    ];
    for (inst, want) in want_errors {
        let t = target(&snap, inst);
        assert_eq!(t.health, Health::Down, "{inst}");
        assert!(t.last_error.contains(want), "{inst}: {:?}", t.last_error);
        assert_eq!(last_value(&store, "up", inst), Some(0.0), "{inst}");
        assert!(
            samples(&store, "scrape_duration_seconds", inst).len() == 1,
            "{inst}"
        );
    }
    // Healthy targets' data and synthetic series.
    assert_eq!(last_value(&store, "test_gauge", "ok"), Some(1.5));
    assert_eq!(
        last_value(&store, "scrape_samples_scraped", "ok"),
        Some(2.0)
    );
    assert_eq!(
        last_value(&store, "scrape_samples_post_metric_relabeling", "ok"),
        Some(2.0)
    );
    assert_eq!(last_value(&store, "scrape_series_added", "ok"), Some(2.0));
    assert_eq!(last_value(&store, "test_gauge", "redirect"), Some(1.5));
    assert_eq!(last_value(&store, "zipped_metric", "gzip"), Some(42.0));
    assert_eq!(last_value(&store, "om_requests_total", "om"), Some(5.0));
    assert_eq!(
        last_value(&store, "accept_ok", "headers"),
        Some(1.0),
        "Prometheus' Accept header sent"
    );
    assert_eq!(last_value(&store, "timeout_header", "headers"), Some(1.0));
    assert!(
        samples(&store, "many_1", "many").is_empty(),
        "limit-exceeding scrape rolled back"
    );
    let (labels, _) = &samples(&store, "test_gauge", "ok")[0];
    assert_eq!(
        labels,
        &Labels::from_pairs([("__name__", "test_gauge"), ("instance", "ok"), ("job", "t")])
    );
    // Auth job.
    let auth = snap
        .active_targets
        .iter()
        .find(|t| t.scrape_pool == "auth")
        .unwrap();
    assert_eq!(auth.health, Health::Up, "{}", auth.last_error);
    // Dropped target and the JSON shape of /api/v1/targets.
    assert_eq!(snap.dropped_target_counts.get("t"), Some(&1));
    assert_eq!(
        snap.dropped_targets[0].discovered_labels.get("drop"),
        Some("yes")
    );
    let json = serde_json::to_value(&snap).unwrap();
    let t0 = &json["activeTargets"][0];
    for key in [
        "discoveredLabels",
        "labels",
        "scrapePool",
        "scrapeUrl",
        "globalUrl",
        "lastError",
        "lastScrape",
        "lastScrapeDuration",
        "health",
        "scrapeInterval",
        "scrapeTimeout",
    ] {
        assert!(t0.get(key).is_some(), "missing {key} in {t0}");
    }
    assert_eq!(t0["scrapeInterval"], "1s");
    assert!(json["droppedTargets"][0]["discoveredLabels"].is_object());
    assert_eq!(json["droppedTargetCounts"]["t"], 1);
    let f = snap.clone().filtered(Some("dropped"), None);
    assert!(f.active_targets.is_empty() && f.dropped_targets.len() == 1);
    let f = snap.clone().filtered(Some("active"), Some("auth"));
    assert!(
        f.dropped_targets.is_empty()
            && f.active_targets.len() == 1
            && f.dropped_target_counts.keys().all(|k| k == "auth")
    );
    let ok = target(&snap, "ok");
    assert_eq!(ok.scrape_url, format!("http://{addr}/ok"));
    assert!(
        ok.last_scrape.ends_with('Z') && ok.last_scrape.starts_with("20"),
        "{}",
        ok.last_scrape
    );
    // Metadata.
    let md = m.metadata();
    let om = md.iter().find(|x| x.metric == "om_requests").unwrap();
    assert_eq!(
        (om.kind.as_str(), om.unit.as_str()),
        ("counter", "requests")
    );
    assert_eq!(om.target.get("instance"), Some("om"));
    let by = m.metadata_by_metric();
    assert_eq!(by["test_counter_total"][0].help, "A counter.");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_and_reloads() {
    let srv = server::start().await;
    let addr = srv.addr;
    let job = |extra: &str, with_f: bool| {
        let f = if with_f {
            format!(
                "      - targets: ['{addr}']\n        labels: {{__metrics_path__: /flappy, instance: f}}\n"
            )
        } else {
            String::new()
        };
        format!(
            "scrape_configs:\n  - job_name: a\n    scrape_interval: 200ms\n{extra}    static_configs:\n{f}      - targets: ['{addr}']\n        labels: {{__metrics_path__: /ok, instance: o}}\n"
        )
    };
    let store = MemStorage::new();
    let m = ScrapeManager::new(Arc::new(store.clone()), opts());
    m.apply_config(&parse_config(&job("", true)).unwrap())
        .unwrap();
    wait_for("3 scrapes of f", || {
        samples(&store, "up", "f")
            .first()
            .is_some_and(|(_, v)| v.len() >= 3)
    })
    .await;
    // A series that vanished from the target's output gets one staleness marker.
    let (_, v) = &samples(&store, "test_vanishing", "f")[0];
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0].1, 1.0);
    assert!(is_stale_nan(v[1].1));

    // Reload removing target f: f's series go stale; o keeps running untouched.
    let before = m.targets();
    let o_scrape = target(&before, "o").last_scrape.clone();
    m.apply_config(&parse_config(&job("", false)).unwrap())
        .unwrap();
    wait_for("f's up stale", || {
        samples(&store, "up", "f")[0]
            .1
            .last()
            .is_some_and(|x| is_stale_nan(x.1))
    })
    .await;
    assert!(is_stale_nan(
        samples(&store, "stay", "f")[0].1.last().unwrap().1
    ));
    assert_eq!(m.targets().active_targets.len(), 1);
    wait_for("o scraped again", || {
        target(&m.targets(), "o").last_scrape != o_scrape
    })
    .await;

    // Reload changing the scrape part: the loop restarts with its cache, so no stale markers.
    m.apply_config(&parse_config(&job("    honor_labels: true\n", false)).unwrap())
        .unwrap();
    let n = samples(&store, "up", "o")[0].1.len();
    wait_for("o scraped after restart", || {
        samples(&store, "up", "o")[0].1.len() >= n + 2
    })
    .await;
    assert!(
        samples(&store, "up", "o")[0]
            .1
            .iter()
            .all(|x| !is_stale_nan(x.1)),
        "no stale markers for o"
    );
    assert!(
        samples(&store, "test_gauge", "o")[0]
            .1
            .iter()
            .all(|x| !is_stale_nan(x.1))
    );

    // Removing the job: everything of o goes stale.
    m.apply_config(&parse_config("scrape_configs: []\n").unwrap())
        .unwrap();
    wait_for("o stale", || {
        samples(&store, "test_gauge", "o")[0]
            .1
            .last()
            .is_some_and(|x| is_stale_nan(x.1))
    })
    .await;
    assert!(m.targets().active_targets.is_empty());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sd_picks_up_changes() {
    let srv = server::start().await;
    let addr = srv.addr;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.json");
    std::fs::write(&file, format!(r#"[{{"targets": ["{addr}"], "labels": {{"instance": "one", "__metrics_path__": "/ok"}}}}]"#)).unwrap();
    let yaml = format!(
        "scrape_configs:\n  - job_name: f\n    scrape_interval: 200ms\n    file_sd_configs:\n      - files: ['{}/*.json']\n",
        dir.path().display()
    );
    let store = MemStorage::new();
    let m = ScrapeManager::new(Arc::new(store.clone()), opts());
    m.apply_config(&parse_config(&yaml).unwrap()).unwrap();
    wait_for("one up", || last_value(&store, "up", "one") == Some(1.0)).await;
    let t = m.targets();
    assert_eq!(
        t.active_targets[0].discovered_labels.get("__meta_filepath"),
        Some(&*file.display().to_string())
    );
    std::fs::write(&file, format!(r#"[{{"targets": ["{addr}"], "labels": {{"instance": "two", "__metrics_path__": "/ok"}}}}]"#)).unwrap();
    wait_for("two up", || last_value(&store, "up", "two") == Some(1.0)).await;
    wait_for("one stale", || {
        last_value(&store, "up", "one").is_some_and(is_stale_nan)
    })
    .await;
    assert_eq!(m.targets().active_targets.len(), 1);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_limit_fails_every_target() {
    let srv = server::start().await;
    let addr = srv.addr;
    let yaml = format!(
        "scrape_configs:\n  - job_name: l\n    scrape_interval: 1s\n    target_limit: 1\n    metrics_path: /ok\n    static_configs:\n      - targets: ['{addr}', 'localhost:{}']\n",
        addr.port()
    );
    let store = MemStorage::new();
    let m = ScrapeManager::new(Arc::new(store.clone()), opts());
    m.apply_config(&parse_config(&yaml).unwrap()).unwrap();
    wait_for("scraped", || {
        m.targets()
            .active_targets
            .iter()
            .all(|t| t.health != Health::Unknown)
    })
    .await;
    for t in m.targets().active_targets {
        assert_eq!(t.health, Health::Down);
        assert_eq!(
            t.last_error,
            "target_limit exceeded (number of targets: 2, limit: 1)"
        );
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owns_target_filter_and_resync() {
    let srv = server::start().await;
    let addr = srv.addr;
    let owned = Arc::new(parking_lot::Mutex::new(None::<u64>));
    let o = owned.clone();
    let filter: tidemark_scrape::TargetFilter =
        Arc::new(move |_job: &str, h: u64| o.lock().is_none_or(|x| x == h));
    let yaml = format!(
        "scrape_configs:\n  - job_name: s\n    scrape_interval: 200ms\n    metrics_path: /ok\n    static_configs:\n      - targets: ['{addr}']\n        labels: {{instance: a}}\n      - targets: ['{addr}']\n        labels: {{instance: b}}\n"
    );
    let store = MemStorage::new();
    let m = ScrapeManager::new(
        Arc::new(store.clone()),
        ScrapeOptions {
            owns_target: Some(filter),
            ..opts()
        },
    );
    m.apply_config(&parse_config(&yaml).unwrap()).unwrap();
    wait_for("both up", || {
        last_value(&store, "up", "a") == Some(1.0) && last_value(&store, "up", "b") == Some(1.0)
    })
    .await;
    // This node now owns only target a: b stops with staleness markers.
    let a_hash = {
        let cfg = parse_config(&yaml).unwrap();
        let sc = &cfg.scrape_configs[0];
        let g = &tidemark_scrape::discovery::static_groups(&sc.static_configs)[0];
        match tidemark_scrape::target::populate(sc, &g.targets[0], &g.labels).unwrap() {
            tidemark_scrape::target::Populated::Active(t) => t.hash(),
            tidemark_scrape::target::Populated::Dropped(_) => panic!(),
        }
    };
    *owned.lock() = Some(a_hash);
    m.resync();
    wait_for("b stale", || {
        last_value(&store, "up", "b").is_some_and(is_stale_nan)
    })
    .await;
    let t = m.targets();
    assert_eq!(t.active_targets.len(), 1);
    assert_eq!(t.active_targets[0].labels.get("instance"), Some("a"));
    m.stop().await;
}
