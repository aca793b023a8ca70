//! Hostile and broken input: every case must end in a bounded, clear error (or a result), never a
//! panic, a hang past the timeout or unbounded memory.

use std::time::Duration;

use proptest::prelude::*;
use tidemark_model::Labels;
use tidemark_promql::{Engine, EngineOptions, ErrorKind, QueryParams, Value};
use tidemark_storage::memory::MemStorage;

/// 20 series `m{job, instance}` and a classic histogram, 1h at 15s.
fn dataset() -> MemStorage {
    let s = MemStorage::new();
    for j in 0..4 {
        for i in 0..5 {
            let l = Labels::from_pairs([
                ("__name__", "m"),
                ("job", &format!("j{j}")),
                ("instance", &format!("i{i}")),
            ]);
            for k in 0..240i64 {
                s.insert(l.clone(), k * 15_000, (k * (i + 1) + j) as f64);
            }
        }
    }
    for le in ["0.1", "1", "10", "+Inf"] {
        let l = Labels::from_pairs([("__name__", "b_bucket"), ("le", le)]);
        for k in 0..240i64 {
            s.insert(l.clone(), k * 15_000, (k * le.len() as i64) as f64);
        }
    }
    s
}

fn engine() -> Engine {
    Engine::new(EngineOptions {
        timeout: Duration::from_secs(5),
        ..EngineOptions::default()
    })
}

fn instant(e: &Engine, s: &MemStorage, q: &str) -> Result<Value, tidemark_promql::QueryError> {
    e.instant_query(s, q, 1_800_000, &QueryParams::default())
        .map(|r| r.value)
}

#[test]
fn deep_nesting_is_a_bad_data_error() {
    let s = dataset();
    let e = engine();
    let parens = format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000));
    let err = instant(&e, &s, &parens).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData, "{err}");
    assert!(err.message.contains("too deep"), "{err}");
    let chain = format!("1{}", "+1".repeat(30_000));
    let err = instant(&e, &s, &chain).unwrap_err();
    assert!(err.message.contains("too deep"), "{err}");
    let unary = format!("{}m", "-".repeat(30_000));
    assert!(instant(&e, &s, &unary).is_err());
    // Moderate nesting still works.
    let ok = format!("{}m{}", "abs(".repeat(50), ")".repeat(50));
    assert!(matches!(instant(&e, &s, &ok).unwrap(), Value::Vector(v) if v.len() == 20));
}

#[test]
fn tiny_subquery_step_hits_the_sample_limit() {
    let s = dataset();
    let err = instant(&engine(), &s, "sum_over_time(vector(1)[1d:1ms])").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Execution);
    assert_eq!(
        err.message,
        "query processing would load too many samples into memory in query execution"
    );
}

#[test]
fn huge_ranges_and_offsets_are_fine() {
    let s = dataset();
    let e = engine();
    let v = instant(&e, &s, "count(rate(m[100y]))").unwrap();
    assert!(
        matches!(v, Value::Vector(ref x) if x.len() == 1 && x[0].v == 20.0),
        "{v:?}"
    );
    let v = instant(&e, &s, "m offset 1000y").unwrap();
    assert_eq!(v, Value::Vector(vec![]));
    let v = instant(&e, &s, "m @ 100000000000").unwrap();
    assert_eq!(v, Value::Vector(vec![]));
    assert!(instant(&e, &s, "m[99999999999999999y]").is_err());
}

#[test]
fn exploding_regex_is_a_clear_error() {
    let s = dataset();
    let err = instant(
        &engine(),
        &s,
        r#"{__name__=~"((((a{100}){100}){100}){100})"}"#,
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData, "{err}");
    assert!(err.message.contains("regex"), "{err}");
}

#[test]
fn label_set_collisions_are_errors() {
    let s = dataset();
    let e = engine();
    let err = instant(&e, &s, r#"label_replace(m, "instance", "x", "", "")"#).unwrap_err();
    assert_eq!(
        err.message,
        "vector cannot contain metrics with the same labelset"
    );
    let err = instant(&e, &s, "m + on(job) m").unwrap_err();
    assert!(
        err.message.contains("many-to-many matching not allowed"),
        "{err}"
    );
    let err = instant(
        &e,
        &s,
        "sum by (__name__) (rate(m[5m])) or sum by (__name__) (rate({job=\"j1\"}[5m]))",
    );
    assert!(err.is_ok() || err.unwrap_err().kind == ErrorKind::Execution);
}

#[test]
fn limits_use_prometheus_wording() {
    let s = dataset();
    let small = Engine::new(EngineOptions {
        max_samples: 100,
        ..EngineOptions::default()
    });
    let err = instant(&small, &s, "sum(m)")
        .err()
        .or_else(|| instant(&small, &s, "rate(m[1h])").err())
        .unwrap();
    assert_eq!(
        err.message,
        "query processing would load too many samples into memory in query execution"
    );
    let err = engine()
        .range_query(&s, "m", 0, 86_400_000, 1, &QueryParams::default())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData);
    assert_eq!(
        err.message,
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    );
    let err = engine()
        .range_query(&s, "m", 0, 1000, 0, &QueryParams::default())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData);
}

#[test]
fn timeout_is_reported() {
    let s = dataset();
    let p = QueryParams {
        timeout: Some(Duration::ZERO),
        ..QueryParams::default()
    };
    let err = engine()
        .range_query(&s, "sum(rate(m[5m]))", 0, 3_600_000, 15_000, &p)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.starts_with("query timed out in "), "{err}");
}

#[test]
fn range_query_rejects_range_vectors() {
    let s = dataset();
    let err = engine()
        .range_query(&s, "m[5m]", 0, 60_000, 15_000, &QueryParams::default())
        .unwrap_err();
    assert_eq!(
        err.message,
        "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"
    );
}

const SEEDS: &[&str] = &[
    "sum by (job) (rate(m[5m]))",
    "histogram_quantile(0.9, sum by (le) (rate(b_bucket[5m])))",
    "topk(3, m) + on(job, instance) group_left m",
    "max_over_time(m[10m:30s] offset 1m) @ start()",
    r#"label_replace(m, "x", "$1", "job", "j(.*)") / ignoring(x) m"#,
    "count_values(\"v\", m) or absent(nope)",
    "quantile_over_time(0.5, m[5m]) > bool 3",
    "sort_desc(avg without (instance) (m)) unless m{job=\"j1\"}",
];

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("m".to_string()),
        Just("m{job=\"j1\"}".to_string()),
        Just("b_bucket".to_string()),
        Just("nope".to_string()),
        (-3i32..5).prop_map(|i| i.to_string()),
        Just("time()".to_string()),
    ]
}

fn expr() -> impl Strategy<Value = String> {
    atom().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                inner.clone(),
                prop::sample::select(vec![
                    "+", "-", "*", "/", "%", "^", ">", "<=", "and", "or", "unless", "== bool"
                ])
            )
                .prop_map(|(a, b, op)| format!("({a}) {op} ({b})")),
            (
                inner.clone(),
                prop::sample::select(vec!["sum", "avg", "min", "max", "count", "stddev", "group"])
            )
                .prop_map(|(a, f)| format!("{f} by (job) ({a})")),
            (
                inner.clone(),
                prop::sample::select(vec!["abs", "ceil", "sort", "timestamp", "scalar", "absent"])
            )
                .prop_map(|(a, f)| format!("{f}({a})")),
            (
                inner.clone(),
                prop::sample::select(vec![
                    "rate",
                    "delta",
                    "max_over_time",
                    "changes",
                    "last_over_time"
                ])
            )
                .prop_map(|(a, f)| format!("{f}(({a})[5m:1m])")),
            (inner.clone(), 0u32..4).prop_map(|(a, k)| format!("topk({k}, {a})")),
            (inner, 0u32..10).prop_map(|(a, o)| format!("{a} offset {o}m")),
        ]
    })
}

fn mutate(seed: &str, ops: &[(u8, usize, u8)]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for &(kind, pos, byte) in ops {
        let p = if b.is_empty() { 0 } else { pos % b.len() };
        match kind % 3 {
            0 if !b.is_empty() => {
                b.remove(p);
            }
            1 => b.insert(p, byte),
            _ if !b.is_empty() => b[p] = byte,
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn check_no_panic(e: &Engine, s: &MemStorage, q: &str) {
    let r = instant(e, s, q);
    if let Err(err) = &r {
        assert!(!err.message.is_empty(), "empty error message for {q:?}");
    }
    let r = e.range_query(s, q, 0, 600_000, 60_000, &QueryParams::default());
    if let Err(err) = &r {
        assert!(!err.message.is_empty(), "empty error message for {q:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn generated_queries_never_panic(q in expr()) {
        let s = dataset();
        let e = Engine::new(EngineOptions { timeout: Duration::from_secs(2), max_samples: 1_000_000, ..EngineOptions::default() });
        check_no_panic(&e, &s, &q);
    }

    #[test]
    fn mutated_queries_never_panic(seed in 0..SEEDS.len(), ops in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6)) {
        let s = dataset();
        let e = Engine::new(EngineOptions { timeout: Duration::from_secs(2), max_samples: 1_000_000, ..EngineOptions::default() });
        check_no_panic(&e, &s, &mutate(SEEDS[seed], &ops));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let s = MemStorage::new();
        check_no_panic(&engine(), &s, &String::from_utf8_lossy(&bytes));
    }

    /// `sum`, `count`, `max` and `min` by job against a model computed from the raw data.
    #[test]
    fn aggregations_match_a_model(values in prop::collection::vec(-1e6f64..1e6, 1..12)) {
        let s = MemStorage::new();
        for (i, v) in values.iter().enumerate() {
            let l = Labels::from_pairs([("__name__", "x"), ("job", if i % 2 == 0 { "even" } else { "odd" }), ("i", &i.to_string())]);
            s.insert(l, 0, *v);
        }
        let e = engine();
        for (f, model) in [
            ("sum", (|v: &[f64]| v.iter().sum::<f64>()) as fn(&[f64]) -> f64),
            ("count", |v: &[f64]| v.len() as f64),
            ("max", |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max)),
            ("min", |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min)),
        ] {
            let got = e.instant_query(&s, &format!("{f} by (job) (x)"), 0, &QueryParams::default()).unwrap().value;
            let Value::Vector(got) = got else { panic!("not a vector") };
            for job in ["even", "odd"] {
                let vals: Vec<f64> = values.iter().enumerate().filter(|(i, _)| (i % 2 == 0) == (job == "even")).map(|(_, v)| *v).collect();
                let g = got.iter().find(|x| x.labels.get("job") == Some(job));
                if vals.is_empty() {
                    prop_assert!(g.is_none());
                } else {
                    let g = g.unwrap().v;
                    let m = model(&vals);
                    prop_assert!((g - m).abs() <= 1e-9 * m.abs().max(1.0), "{} {}: {} vs {}", f, job, g, m);
                }
            }
        }
    }
}
