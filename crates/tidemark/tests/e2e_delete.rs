//! End-to-end: the admin API's `delete_series` and `clean_tombstones` on a real `tidemark
//! server --web.enable-admin-api`, with data both in a block and in the head, across restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod server;

use std::path::Path;

use server::{Server, result, urlencode};

const ADMIN: &[&str] = &["--config.file", "/dev/null", "--web.enable-admin-api"];

fn secs(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

fn import(s: &Server, name_k: &[&str], base: i64) {
    let mut text = String::new();
    for k in name_k {
        for i in 0..100 {
            text.push_str(&format!("e2e_del{{k=\"{k}\"}} {i} {}\n", base + i * 1000));
        }
    }
    let (st, body) = s.request("POST", "/api/v1/import", Some(&text)).unwrap();
    assert!(st == 200 || st == 204, "import: {st} {body}");
}

/// `count_over_time(e2e_del[10m])` at `at_ms`, by `k`.
fn counts(s: &Server, at_ms: i64) -> Vec<(String, String)> {
    let path = format!(
        "/api/v1/query?query={}&time={}",
        urlencode("count_over_time(e2e_del[10m])"),
        secs(at_ms)
    );
    let (st, body) = s.request("GET", &path, None).unwrap();
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, String)> = result(&v)
        .iter()
        .map(|r| {
            (
                r["metric"]["k"].as_str().unwrap().to_string(),
                r["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn get_json(s: &Server, path: &str) -> serde_json::Value {
    let (st, body) = s.request("GET", path, None).unwrap();
    assert_eq!(st, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn blocks_with_tombstones(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("meta.json").is_file() && e.path().join("tombstones").is_file())
        .count()
}

#[test]
fn delete_series_and_clean_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Old samples, cut into a block by a snapshot (which flushes the head); recent samples
    // in the head.
    let old = now - 6 * 3_600_000;
    let new = now - 200_000;
    let s = Server::start(dir.path(), ADMIN);
    import(&s, &["a", "b"], old);
    let (st, body) = s
        .request("POST", "/api/v1/admin/tsdb/snapshot", None)
        .unwrap();
    assert_eq!(st, 200, "{body}");
    import(&s, &["a", "b"], new);
    let at_old = old + 99_000;
    let at_new = new + 99_000;
    let full = pairs(&[("a", "100"), ("b", "100")]);
    assert_eq!(counts(&s, at_old), full);
    assert_eq!(counts(&s, at_new), full);

    // Bad requests: 400 with Prometheus' error shape.
    for q in [
        String::new(),
        format!("match[]={}", urlencode("{")),
        "match[]=e2e_del&start=yesterday".to_string(),
    ] {
        let (st, body) = s
            .request(
                "POST",
                &format!("/api/v1/admin/tsdb/delete_series?{q}"),
                None,
            )
            .unwrap();
        assert_eq!(st, 400, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errorType"], "bad_data", "{body}");
    }

    // Delete k="a" from the second half of the old samples to the first half of the new ones.
    let path = format!(
        "/api/v1/admin/tsdb/delete_series?match[]={}&start={}&end={}",
        urlencode("e2e_del{k=\"a\"}"),
        secs(old + 50_000),
        secs(new + 49_000)
    );
    let (st, body) = s.request("POST", &path, None).unwrap();
    assert_eq!(st, 204, "{body}");
    let after = pairs(&[("a", "50"), ("b", "100")]);
    assert_eq!(counts(&s, at_old), after);
    assert_eq!(counts(&s, at_new), after);
    // Series and label values inside the deleted range no longer know k="a".
    let range = format!("start={}&end={}", secs(new + 10_000), secs(new + 40_000));
    let v = get_json(&s, &format!("/api/v1/series?match[]=e2e_del&{range}"));
    assert_eq!(
        v["data"],
        serde_json::json!([{"__name__": "e2e_del", "k": "b"}])
    );
    let v = get_json(&s, &format!("/api/v1/label/k/values?{range}"));
    assert_eq!(v["data"], serde_json::json!(["b"]));
    assert_eq!(blocks_with_tombstones(dir.path()), 1);
    let (status, _) = s.stop();
    assert!(status.success());

    // Durable: a restart replays the head's tombstones and reads the block's file.
    let s = Server::start(dir.path(), ADMIN);
    assert_eq!(counts(&s, at_old), after);
    assert_eq!(counts(&s, at_new), after);
    let (st, body) = s
        .request("PUT", "/api/v1/admin/tsdb/clean_tombstones", None)
        .unwrap();
    assert_eq!(st, 204, "{body}");
    assert_eq!(blocks_with_tombstones(dir.path()), 0);
    assert_eq!(counts(&s, at_old), after);
    assert_eq!(counts(&s, at_new), after);
    // PUT works too; no start/end means the whole time range.
    let path = format!(
        "/api/v1/admin/tsdb/delete_series?match[]={}",
        urlencode("e2e_del{k=\"b\"}")
    );
    let (st, body) = s.request("PUT", &path, None).unwrap();
    assert_eq!(st, 204, "{body}");
    let only_a = pairs(&[("a", "50")]);
    assert_eq!(counts(&s, at_old), only_a);
    assert_eq!(counts(&s, at_new), only_a);
    let (status, _) = s.stop();
    assert!(status.success());

    // Without --web.enable-admin-api: Prometheus' error; the deletions still hold.
    let s = Server::start(dir.path(), &["--config.file", "/dev/null"]);
    assert_eq!(counts(&s, at_old), only_a);
    assert_eq!(counts(&s, at_new), only_a);
    let (st, body) = s.request("POST", &path, None).unwrap();
    assert_eq!(st, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status":"error","errorType":"unavailable","error":"admin APIs disabled"})
    );
    let (status, _) = s.stop();
    assert!(status.success());
}
