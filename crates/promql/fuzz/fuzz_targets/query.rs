//! Parses and evaluates arbitrary query strings (instant and range) on a small dataset.
//! Run: `cargo +nightly fuzz run query` from crates/promql.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tidemark_model::Labels;
use tidemark_promql::{Engine, EngineOptions, QueryParams};
use tidemark_storage::memory::MemStorage;

fn dataset() -> &'static MemStorage {
    static S: OnceLock<MemStorage> = OnceLock::new();
    S.get_or_init(|| {
        let s = MemStorage::new();
        for j in 0..3 {
            for i in 0..3 {
                let l = Labels::from_pairs([("__name__", "m"), ("job", &format!("j{j}")), ("instance", &format!("i{i}"))]);
                for k in 0..60i64 {
                    s.insert(l.clone(), k * 15_000, (k * (i + 1) + j) as f64);
                }
            }
        }
        for le in ["0.1", "1", "+Inf"] {
            let l = Labels::from_pairs([("__name__", "b_bucket"), ("le", le)]);
            for k in 0..60i64 {
                s.insert(l.clone(), k * 15_000, k as f64);
            }
        }
        s
    })
}

fuzz_target!(|data: &[u8]| {
    let q = String::from_utf8_lossy(data);
    let e = Engine::new(EngineOptions {
        timeout: Duration::from_secs(1),
        max_samples: 1_000_000,
        ..EngineOptions::default()
    });
    let p = QueryParams::default();
    let _ = e.instant_query(dataset(), &q, 600_000, &p);
    let _ = e.range_query(dataset(), &q, 0, 900_000, 60_000, &p);
    let _ = tidemark_promql::format_query(&q);
    let _ = tidemark_promql::parse_series_selector(&q);
});
