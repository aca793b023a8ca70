//! The public API other crates use: result shapes, stats, limit, error kinds.

use tidemark_model::{Labels, Sample};
use tidemark_promql::{
    Engine, EngineOptions, ErrorKind, MatrixSeries, QueryParams, Value, VectorSample,
};
use tidemark_storage::memory::MemStorage;

fn data() -> MemStorage {
    let s = MemStorage::new();
    for i in 0..3 {
        let l = Labels::from_pairs([("__name__", "up"), ("instance", &format!("i{i}"))]);
        for k in 0..10i64 {
            s.insert(l.clone(), k * 60_000, (i * 10 + k) as f64);
        }
    }
    s
}

#[test]
fn result_shapes() {
    let s = data();
    let e = Engine::new(EngineOptions::default());
    let p = QueryParams::default();
    assert_eq!(
        e.instant_query(&s, "1 + 2", 5_000, &p).unwrap().value,
        Value::Scalar { t: 5_000, v: 3.0 }
    );
    assert_eq!(
        e.instant_query(&s, "\"x\"", 5_000, &p).unwrap().value,
        Value::String {
            t: 5_000,
            v: "x".into()
        }
    );
    let v = e
        .instant_query(&s, "up{instance=\"i1\"}", 120_000, &p)
        .unwrap()
        .value;
    assert_eq!(
        v,
        Value::Vector(vec![VectorSample {
            labels: Labels::from_pairs([("__name__", "up"), ("instance", "i1")]),
            t: 120_000,
            v: 12.0
        }])
    );
    let v = e
        .instant_query(&s, "up{instance=\"i2\"}[2m]", 120_000, &p)
        .unwrap()
        .value;
    assert_eq!(
        v,
        Value::Matrix(vec![MatrixSeries {
            labels: Labels::from_pairs([("__name__", "up"), ("instance", "i2")]),
            samples: vec![Sample::new(60_000, 21.0), Sample::new(120_000, 22.0)],
        }])
    );
    let v = e
        .range_query(&s, "sum(up)", 0, 120_000, 60_000, &p)
        .unwrap()
        .value;
    assert_eq!(
        v,
        Value::Matrix(vec![MatrixSeries {
            labels: Labels::empty(),
            samples: vec![
                Sample::new(0, 30.0),
                Sample::new(60_000, 33.0),
                Sample::new(120_000, 36.0)
            ],
        }])
    );
    // A scalar range query is a matrix with one label-less series.
    let Value::Matrix(m) = e
        .range_query(&s, "time()", 0, 60_000, 60_000, &p)
        .unwrap()
        .value
    else {
        panic!()
    };
    assert_eq!(
        m[0].samples,
        vec![Sample::new(0, 0.0), Sample::new(60_000, 60.0)]
    );
}

#[test]
fn stats_and_limit() {
    let s = data();
    let e = Engine::new(EngineOptions::default());
    let p = QueryParams {
        stats: true,
        limit: Some(2),
        ..QueryParams::default()
    };
    let r = e.instant_query(&s, "up", 300_000, &p).unwrap();
    let Value::Vector(v) = &r.value else { panic!() };
    assert_eq!(v.len(), 2);
    assert_eq!(
        r.warnings,
        vec!["results truncated due to limit".to_string()]
    );
    let st = r.stats.unwrap();
    assert_eq!(st.samples.series_fetched, 3);
    assert!(st.samples.total_queryable_samples >= 3 && st.samples.total_queryable_samples <= 30);
    assert!(st.samples.peak_samples >= 3);
    let json = serde_json::to_value(&st).unwrap();
    for k in [
        "evalTotalTime",
        "resultSortTime",
        "queryPreparationTime",
        "innerEvalTime",
        "execQueueTime",
        "execTotalTime",
    ] {
        assert!(json["timings"][k].is_f64(), "{k} missing in {json}");
    }
    assert!(json["samples"]["totalQueryableSamples"].is_u64());
    assert!(json["samples"]["peakSamples"].is_u64());
    assert!(
        e.instant_query(&s, "up", 0, &QueryParams::default())
            .unwrap()
            .stats
            .is_none()
    );
}

#[test]
fn lookback_override_and_error_kinds() {
    let s = data();
    let e = Engine::new(EngineOptions::default());
    // The last sample is at 9m: 5m lookback reaches it from 13m, 1m lookback does not.
    let short = QueryParams {
        lookback_delta_ms: Some(60_000),
        ..QueryParams::default()
    };
    assert_eq!(
        e.instant_query(&s, "up", 13 * 60_000, &short)
            .unwrap()
            .value,
        Value::Vector(vec![])
    );
    let Value::Vector(v) = e
        .instant_query(&s, "up", 13 * 60_000, &QueryParams::default())
        .unwrap()
        .value
    else {
        panic!()
    };
    assert_eq!(v.len(), 3);
    let err = e
        .instant_query(&s, "sum(", 0, &QueryParams::default())
        .unwrap_err();
    assert_eq!(
        (err.kind, err.kind.as_str()),
        (ErrorKind::BadData, "bad_data")
    );
    assert!(err.to_string().starts_with("parse error"), "{err}");
    let err = e
        .instant_query(&s, "up + on() up", 0, &QueryParams::default())
        .unwrap_err();
    assert_eq!(err.kind.as_str(), "execution");
}
