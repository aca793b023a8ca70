//! Through the real binary: alert `for` state survives a restart (a firing alert is firing again
//! at once, never pending), and configuration reloads by SIGHUP and `POST /-/reload` add and
//! remove scrape targets while unchanged targets keep being scraped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod server;

use std::time::{Duration, Instant};

use server::{Server, send_signal};

fn alert_states(s: &Server, name: &str) -> Vec<String> {
    match s.request("GET", "/api/v1/alerts", None) {
        Ok((200, body)) => server::alert_states_in(body.as_bytes(), name),
        _ => Vec::new(),
    }
}

#[test]
fn firing_alert_is_firing_again_right_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server::always_firing_config(dir.path(), "g", 5);
    let data = dir.path().join("data");
    let cfg_arg = cfg.display().to_string();
    let s = Server::start(&data, &["--config.file", &cfg_arg]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alert_states(&s, "AlwaysFiring") != ["firing"] {
        assert!(Instant::now() < deadline, "the alert never fired");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (st, _) = s.stop();
    assert!(st.success());

    let s = Server::start(&data, &["--config.file", &cfg_arg]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states = alert_states(&s, "AlwaysFiring");
        assert!(
            !states.iter().any(|x| x == "pending"),
            "after the restart the alert went back to pending"
        );
        if states == ["firing"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alert is not firing after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn active_jobs(s: &Server) -> Vec<(String, String)> {
    let (st, body) = s
        .request("GET", "/api/v1/targets?state=active", None)
        .unwrap();
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, String)> = v["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["labels"]["job"].as_str().unwrap().to_string(),
                t["health"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn count_up(s: &Server, job: &str) -> f64 {
    let v = s.query(&format!("count_over_time(up{{job=\"{job}\"}}[10m])"));
    v["data"]["result"]
        .as_array()
        .unwrap()
        .first()
        .map_or(0.0, |r| r["value"][1].as_str().unwrap().parse().unwrap())
}

#[test]
fn reload_by_sighup_and_http_adds_and_removes_targets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    let job = |name: &str, port: u16| {
        format!(
            "  - job_name: {name}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
    };
    // The server scrapes itself; its port is known only once it runs, so start with a config
    // naming a placeholder job, then rewrite it.
    std::fs::write(&cfg, "scrape_configs: []\n").unwrap();
    let cfg_arg = cfg.display().to_string();
    let s = Server::start(&dir.path().join("data"), &["--config.file", &cfg_arg]);
    assert!(active_jobs(&s).is_empty());

    // POST /-/reload picks up a new job.
    std::fs::write(&cfg, format!("scrape_configs:\n{}", job("a", s.port))).unwrap();
    let (st, body) = s.request("POST", "/-/reload", Some("")).unwrap();
    assert_eq!(st, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while active_jobs(&s) != [("a".to_string(), "up".to_string())] {
        assert!(
            Instant::now() < deadline,
            "job a not scraped: {:?}",
            active_jobs(&s)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGHUP adds job b; job a is unchanged and keeps being scraped throughout.
    std::thread::sleep(Duration::from_secs(2));
    let before = count_up(&s, "a");
    std::fs::write(
        &cfg,
        format!("scrape_configs:\n{}{}", job("a", s.port), job("b", s.port)),
    )
    .unwrap();
    send_signal(s.child.id(), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while active_jobs(&s)
        != [
            ("a".to_string(), "up".to_string()),
            ("b".to_string(), "up".to_string()),
        ]
    {
        assert!(
            Instant::now() < deadline,
            "job b not added: {:?}",
            active_jobs(&s)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        count_up(&s, "a") > before,
        "job a stopped being scraped across the reload"
    );

    // A broken file is refused and the running configuration stays.
    std::fs::write(&cfg, "scrape_configs:\n  - job_name: [\n").unwrap();
    let (st, _) = s.request("POST", "/-/reload", Some("")).unwrap();
    assert_eq!(st, 500);
    assert_eq!(active_jobs(&s).len(), 2);

    // Removing job a by SIGHUP stops it.
    std::fs::write(&cfg, format!("scrape_configs:\n{}", job("b", s.port))).unwrap();
    send_signal(s.child.id(), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while active_jobs(&s) != [("b".to_string(), "up".to_string())] {
        assert!(
            Instant::now() < deadline,
            "job a not removed: {:?}",
            active_jobs(&s)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
