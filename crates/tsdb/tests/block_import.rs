//! Backfill import (any order, any age, spilling to disk past a memory budget) against a model,
//! and `analyze` over the imported blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidemark_model::Labels;
use tidemark_tsdb::analyze::analyze;
use tidemark_tsdb::block::open_blocks;
use tidemark_tsdb::import::{import_samples, import_with_budget};

type Flat = BTreeMap<Labels, Vec<(i64, u64)>>;

fn read_all(dir: &Path) -> Flat {
    let (blocks, problems) = open_blocks(dir).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let mut out = Flat::new();
    for b in &blocks {
        for s in b.querier(i64::MIN, i64::MAX).select(true, None, &[]) {
            let s = s.unwrap();
            let mut it = s.iter();
            let v = out.entry(s.labels().clone()).or_default();
            while it.next() {
                v.push((it.at().t, it.at().v.to_bits()));
            }
            assert!(it.err().is_none());
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

fn labels(i: u8) -> Labels {
    Labels::from_pairs([("__name__", format!("m{}", i % 2)), ("k", format!("{i}"))])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn import_matches_model(input in proptest::collection::vec((0u8..5, -3000i64..3000, -50i32..50), 0..300),
                            range in prop_oneof![Just(1000i64), Just(700), Just(7_200_000)], budget in 1usize..100) {
        let dir = tempfile::tempdir().unwrap();
        // Model: the last value given for a (series, t) wins.
        let mut model: BTreeMap<Labels, BTreeMap<i64, u64>> = BTreeMap::new();
        for &(s, t, v) in &input {
            model.entry(labels(s)).or_default().insert(t, f64::from(v).to_bits());
        }
        let metas = import_with_budget(dir.path(), input.iter().map(|&(s, t, v)| (labels(s), t, f64::from(v))), range, budget).unwrap();
        for m in &metas {
            prop_assert_eq!(m.max_time - m.min_time, range);
            prop_assert_eq!(m.min_time.rem_euclid(range), 0);
        }
        prop_assert!(metas.windows(2).all(|w| w[0].max_time <= w[1].min_time));
        let want: Flat = model.into_iter().map(|(l, m)| (l, m.into_iter().collect())).collect();
        prop_assert_eq!(read_all(dir.path()), want);
        let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        prop_assert!(names.iter().all(|n| !n.contains(".tmp")), "spill dir left behind: {names:?}");
    }
}

#[test]
fn import_shuffled_large_and_analyze() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut input = Vec::new();
    // 3 metrics: `http_requests_total` has 30 series, `up` 5, `temp` 1; 15 s interval over 5 h.
    let mut series = Vec::new();
    for i in 0..30 {
        series.push(Labels::from_pairs([
            ("__name__", "http_requests_total".to_string()),
            ("code", ["200", "404", "500"][i % 3].to_string()),
            ("instance", format!("web-{i}")),
        ]));
    }
    for i in 0..5 {
        series.push(Labels::from_pairs([
            ("__name__", "up".to_string()),
            ("instance", format!("web-{i}")),
        ]));
    }
    series.push(Labels::from_pairs([("__name__", "temp")]));
    let start = 1_700_000_000_000i64;
    for l in &series {
        for k in 0..1200 {
            input.push((
                l.clone(),
                start + k * 15_000 + rng.random_range(0..5),
                k as f64,
            ));
        }
    }
    input.shuffle(&mut rng);
    let n = input.len() as u64;
    let metas = import_samples(dir.path(), input.into_iter(), 2 * 3600 * 1000).unwrap();
    assert_eq!(
        metas.len(),
        3,
        "5 h of data from an unaligned start span three 2 h windows"
    );
    assert_eq!(metas.iter().map(|m| m.stats.num_samples).sum::<u64>(), n);

    let report = analyze(dir.path(), 2).unwrap();
    assert_eq!(report.blocks.len(), 3);
    assert_eq!(report.series, 36);
    assert_eq!(report.samples, n);
    assert!(report.bytes > 0 && report.bytes_per_sample() > 0.0);
    assert_eq!(
        report.top_metrics,
        vec![
            ("http_requests_total".to_string(), 30),
            ("up".to_string(), 5)
        ]
    );
    assert_eq!(
        report.top_label_cardinality[0],
        ("instance".to_string(), 30)
    );
    assert_eq!(
        report.top_label_names_by_series[0],
        ("__name__".to_string(), 36)
    );
    assert_eq!(
        report.top_label_pairs[0],
        ("__name__=\"http_requests_total\"".to_string(), 30)
    );
    let text = report.to_string();
    for want in [
        "Blocks: 3",
        "Total series: 36",
        "Highest cardinality metric names",
        "30 http_requests_total",
        "2023-11-14T",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn analyze_reports_unreadable_blocks_without_touching_them() {
    let dir = tempfile::tempdir().unwrap();
    let metas = import_samples(
        dir.path(),
        (0..10).map(|i| (labels(1), i * 1000, 1.0)),
        5000,
    )
    .unwrap();
    assert_eq!(metas.len(), 2);
    std::fs::write(dir.path().join(&metas[0].id).join("index"), b"garbage").unwrap();
    let report = analyze(dir.path(), 10).unwrap();
    assert_eq!(report.blocks.len(), 1);
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0].contains("index"),
        "{:?}",
        report.problems
    );
    assert!(
        dir.path().join(&metas[0].id).exists(),
        "analyze is read-only"
    );
}
