//! The PromQL planner over a Db holding raw and downsampled blocks (docs/downsampling.md,
//! "Query planning").
//!
//! - `resolution_choice_table`: which resolutions a selector reads (named by the info
//!   annotation) for steps, ranges, functions and `max_source_resolution`.
//! - `planned_functions_match_raw` (proptest): random counters (with resets) and gauges; every
//!   planned function over downsampled data stays within the documented bounds computed from
//!   the raw samples (window sets for count/sum/min/max/avg/last, a raw sample for plain
//!   selectors, the raw `rate`/`increase` within two windows' increase).
//! - `range_before_raw_retention_returns_coarse_data`: raw blocks deleted by retention; a
//!   query reaching back gets 5m/1h data (auto) instead of an empty panel, and nothing with
//!   `max_source_resolution=raw`.
//! - `info_annotation_text`: the exact annotation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidemark_model::{Labels, Sample};
use tidemark_promql::{Engine, EngineOptions, MaxSourceResolution, QueryParams, Value};
use tidemark_tsdb::block::{BlockWriter, delete_block, open_blocks};
use tidemark_tsdb::downsample::{self, DownsampleOptions, RES_1H, RES_5M};
use tidemark_tsdb::{Db, DbOptions};

const MIN: i64 = 60_000;
const H: i64 = 3_600_000;
const DAY: i64 = 24 * H;

type RawData = BTreeMap<Labels, Vec<Sample>>;

fn labels(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "m_total".to_string()), ("i", i.to_string())])
}

/// A Db over `data` written as raw day blocks; raw blocks ending at least `to_5m_after` (1h:
/// `to_1h_after`) before the newest sample are downsampled, then raw blocks ending before
/// `drop_raw_before` are deleted (raw retention).
struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    newest: i64,
}

fn fixture(
    data: &RawData,
    to_5m_after: i64,
    to_1h_after: i64,
    drop_raw_before: Option<i64>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mint = data.values().filter_map(|s| s.first()).map(|s| s.t).min();
    let maxt = data.values().filter_map(|s| s.last()).map(|s| s.t).max();
    let (mint, newest) = (mint.unwrap(), maxt.unwrap());
    let mut start = mint.div_euclid(DAY) * DAY;
    while start <= newest {
        let end = start + DAY;
        let mut w = BlockWriter::new(dir.path(), start, end).unwrap();
        for (l, ss) in data {
            let part: Vec<Sample> = ss
                .iter()
                .copied()
                .filter(|s| s.t >= start && s.t < end)
                .collect();
            w.add_samples(l, &part).unwrap();
        }
        if w.num_series() > 0 {
            w.finish().unwrap();
        }
        start = end;
    }
    let opts = DownsampleOptions {
        to_5m_after_ms: to_5m_after,
        to_1h_after_ms: to_1h_after,
    };
    downsample::run(dir.path(), newest, &opts).unwrap();
    if let Some(cut) = drop_raw_before {
        let (blocks, _) = open_blocks(dir.path()).unwrap();
        for b in blocks {
            if b.meta().resolution == 0 && b.meta().max_time <= cut {
                delete_block(dir.path(), b.id()).unwrap();
            }
        }
    }
    let db = Db::open(
        dir.path(),
        DbOptions {
            background_maintenance: false,
            downsampling: false,
            retention_time_ms: 0,
            retention_5m_ms: 0,
            retention_1h_ms: 0,
            ..DbOptions::default()
        },
    )
    .unwrap();
    Fixture {
        _dir: dir,
        db,
        newest,
    }
}

/// A range query: series by labels, and the info annotations.
fn range(
    db: &Db,
    expr: &str,
    start: i64,
    end: i64,
    step: i64,
    msr: Option<MaxSourceResolution>,
) -> (BTreeMap<Labels, Vec<Sample>>, Vec<String>) {
    let engine = Engine::new(EngineOptions::default());
    let p = QueryParams {
        max_source_resolution: msr,
        ..QueryParams::default()
    };
    let r = engine
        .range_query(db, expr, start, end, step, &p)
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
    let Value::Matrix(m) = r.value else {
        panic!("{expr}: not a matrix")
    };
    (
        m.into_iter().map(|s| (s.labels, s.samples)).collect(),
        r.infos,
    )
}

/// Counters stepping every `gap` ms by a series-specific amount, resetting now and then.
fn steady_counters(n: usize, days: i64, gap: i64) -> RawData {
    let mut data = RawData::new();
    for i in 0..n {
        let mut v = 0.0;
        let mut out = Vec::new();
        for k in 0..days * DAY / gap {
            v = if k % 5000 == 4999 {
                0.0
            } else {
                v + (i + 1) as f64
            };
            out.push(Sample::new(k * gap, v));
        }
        data.insert(labels(i), out);
    }
    data
}

/// The resolution list of the planner's info annotation ("" when none).
fn used(infos: &[String]) -> String {
    infos
        .iter()
        .find_map(|i| {
            let rest = i.split_once(": ")?.1;
            let rest = rest.split_once(": ")?.1;
            Some(rest.split_once(" (")?.0.to_string())
        })
        .unwrap_or_default()
}

#[test]
fn resolution_choice_table() {
    // 12 days: 1h blocks up to day ~8, 5m up to day ~10, raw everywhere.
    let data = steady_counters(3, 12, MIN);
    let f = fixture(&data, 2 * DAY, 4 * DAY, None);
    let (start, end) = (DAY, f.newest);
    use MaxSourceResolution::*;
    let cases: &[(&str, i64, Option<MaxSourceResolution>, &str)] = &[
        ("rate(m_total[1d])", 6 * H, None, "1h, 5m, raw"),
        ("rate(m_total[1d])", H, None, "5m, raw"),
        ("increase(m_total[1d])", 6 * H, Some(Auto), "1h, 5m, raw"),
        ("rate(m_total[10m])", 6 * H, None, ""),
        ("rate(m_total[1d])", 6 * H, Some(Max(RES_5M)), "5m, raw"),
        ("rate(m_total[1d])", 6 * H, Some(Raw), ""),
        ("m_total", 30 * MIN, None, "5m, raw"),
        ("m_total", 2 * MIN, None, ""),
        ("sum(m_total)", 6 * H, None, "1h, 5m, raw"),
        ("avg_over_time(m_total[1d])", 6 * H, None, "1h, 5m, raw"),
        ("max_over_time(m_total[2h])", 6 * H, None, "5m, raw"),
        ("deriv(m_total[1d])", 6 * H, None, ""),
        ("irate(m_total[1d])", 6 * H, None, ""),
        ("resets(m_total[1d])", 6 * H, None, ""),
        ("quantile_over_time(0.5, m_total[1d])", 6 * H, None, ""),
        ("timestamp(m_total)", 6 * H, None, ""),
    ];
    for (expr, step, msr, want) in cases {
        let (res, infos) = range(&f.db, expr, start, end, *step, *msr);
        assert!(!res.is_empty(), "{expr}: no data");
        assert_eq!(used(&infos), *want, "{expr} step {step} {msr:?}: {infos:?}");
    }
    // Instant queries read raw data (the step rule: a step of 0).
    let engine = Engine::new(EngineOptions::default());
    let r = engine
        .instant_query(&f.db, "rate(m_total[1d])", 5 * DAY, &QueryParams::default())
        .unwrap();
    assert!(r.infos.iter().all(|i| !i.contains("downsampled")));
}

#[test]
fn info_annotation_text() {
    let data = steady_counters(1, 6, MIN);
    let f = fixture(&data, 2 * DAY, 4 * DAY, None);
    let (_, infos) = range(
        &f.db,
        "rate(m_total{i=\"0\"}[1d])",
        DAY,
        f.newest,
        6 * H,
        None,
    );
    assert_eq!(
        infos,
        vec![
            "PromQL info: read downsampled data for m_total{i=\"0\"}: 1h, 5m, raw (aggregate counter); max_source_resolution=raw reads raw data only".to_string()
        ]
    );
}

#[test]
fn range_before_raw_retention_returns_coarse_data() {
    let data = steady_counters(2, 10, MIN);
    // Raw data only for the newest ~3 days; 5m from day 0 to ~8, 1h to ~6.
    let f = fixture(&data, 2 * DAY, 4 * DAY, Some(7 * DAY));
    let raw_from = 7 * DAY;
    let (start, end) = (DAY, f.newest);
    for expr in [
        "m_total",
        "rate(m_total[1h])",
        "count_over_time(m_total[1h])",
    ] {
        let (auto, infos) = range(&f.db, expr, start, end, 10 * MIN, None);
        let (raw, raw_infos) = range(
            &f.db,
            expr,
            start,
            end,
            10 * MIN,
            Some(MaxSourceResolution::Raw),
        );
        assert!(raw_infos.is_empty(), "{expr}: {raw_infos:?}");
        assert!(!infos.is_empty(), "{expr}: no annotation");
        assert_eq!(auto.len(), 2, "{expr}");
        for (l, s) in &auto {
            // Every step from the start has a value: no empty panel before raw data.
            assert!(
                s.first().unwrap().t <= start + 2 * H,
                "{expr} {l}: {:?}",
                s.first()
            );
            let before_raw = s.iter().filter(|p| p.t < raw_from).count();
            assert!(
                before_raw as i64 >= (raw_from - start) / (10 * MIN) - 24,
                "{expr} {l}"
            );
            let r = &raw[l];
            assert!(
                r.iter().all(|p| p.t >= raw_from),
                "{expr}: raw only has raw data"
            );
            // Where raw data exists, the answers agree at steps far from the boundary.
            for p in s.iter().filter(|p| p.t > raw_from + 2 * H) {
                let q = r.iter().find(|q| q.t == p.t).unwrap();
                assert!(
                    (p.v - q.v).abs() <= 1e-9 * q.v.abs().max(1.0),
                    "{expr} at {}",
                    p.t
                );
            }
        }
    }
    // An instant query before raw data: the 5m `last` value (auto), nothing (raw).
    let engine = Engine::new(EngineOptions::default());
    let at = 3 * DAY + 7 * MIN;
    let r = engine
        .instant_query(&f.db, "m_total{i=\"1\"}", at, &QueryParams::default())
        .unwrap();
    let Value::Vector(v) = r.value else { panic!() };
    assert_eq!(v.len(), 1, "{:?}", r.infos);
    let raw_series = &data[&labels(1)];
    // The newest raw sample of an earlier window end: 3 d + 4 min (the 5m window before `at`).
    let want = raw_series
        .iter()
        .rfind(|s| s.t < 3 * DAY + 5 * MIN)
        .unwrap();
    assert_eq!(v[0].v, want.v);
    let forced = QueryParams {
        max_source_resolution: Some(MaxSourceResolution::Raw),
        ..QueryParams::default()
    };
    let r = engine
        .instant_query(&f.db, "m_total{i=\"1\"}", at, &forced)
        .unwrap();
    assert_eq!(r.value, Value::Vector(vec![]));
    // count_over_time(m[1h]) of a 1-minute series is 60 wherever the windows are whole.
    let (auto, _) = range(&f.db, "count_over_time(m_total[1h])", start, end, H, None);
    for s in auto.values() {
        let exact = s.iter().filter(|p| p.v == 60.0).count();
        assert!(exact * 10 >= s.len() * 9, "{exact} of {}", s.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: planned answers against bounds computed from the raw samples.

type GenSeries = (bool, u32, Vec<(i64, u32, bool)>);

fn arb_series() -> impl Strategy<Value = GenSeries> {
    // (is counter, scale, [(gap ms, value or increment, reset?)]).
    (
        any::<bool>(),
        1u32..1000,
        prop::collection::vec(
            (15_000i64..120_000, 0u32..100, prop::bool::weighted(0.002)),
            3000..6000,
        ),
    )
}

fn build(series: &[GenSeries]) -> RawData {
    let mut data = RawData::new();
    for (i, (counter, scale, steps)) in series.iter().enumerate() {
        let mut t = 0;
        let mut v = 0.0;
        let mut out = Vec::new();
        for &(gap, x, reset) in steps {
            t += gap;
            v = if !*counter {
                f64::from(x * scale)
            } else if reset {
                f64::from(x)
            } else {
                v + f64::from(x * scale)
            };
            out.push(Sample::new(t, v));
        }
        data.insert(labels(i), out);
    }
    data
}

fn in_range(raw: &[Sample], lo: i64, hi: i64) -> impl Iterator<Item = f64> + '_ {
    raw.iter()
        .filter(move |s| s.t > lo && s.t <= hi)
        .map(|s| s.v)
}

/// Compensated running total at every raw sample.
fn compensated(raw: &[Sample]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(raw.len());
    let mut off = 0.0;
    for (k, s) in raw.iter().enumerate() {
        if k > 0 && s.v < raw[k - 1].v {
            off += raw[k - 1].v;
        }
        out.push(Sample::new(s.t, s.v + off));
    }
    out
}

/// Largest increase of `c` over any span of `len` ms inside `(lo, hi]`.
fn max_increase(c: &[Sample], len: i64, lo: i64, hi: i64) -> f64 {
    let inside: Vec<&Sample> = c.iter().filter(|s| s.t > lo && s.t <= hi).collect();
    let mut best = 0.0f64;
    let mut j = 0;
    for i in 0..inside.len() {
        while inside[i].t - inside[j].t > len {
            j += 1;
        }
        best = best.max(inside[i].v - inside[j].v);
    }
    best
}

fn check(
    f: &Fixture,
    data: &RawData,
    func: &str,
    range_ms: i64,
    step: i64,
    r: i64,
) -> Result<(), TestCaseError> {
    let rs = format!("{}m", range_ms / MIN);
    let expr = match func {
        "plain" => "m_total".to_string(),
        f => format!("{f}(m_total[{rs}])"),
    };
    let (start, end) = (DAY, f.newest);
    let (got, infos) = range(&f.db, &expr, start, end, step, None);
    prop_assert!(!infos.is_empty(), "{}: not planned", expr);
    let (raw_answer, _) = range(
        &f.db,
        &expr,
        start,
        end,
        step,
        Some(MaxSourceResolution::Raw),
    );
    let max_gap = 120_000;
    for (l, series) in &got {
        let raw = &data[&labels(l.get("i").unwrap().parse().unwrap())];
        let counter = compensated(raw);
        for p in series {
            let t = p.t;
            let (lo, hi) = (t - range_ms, t);
            // Samples certainly counted, and samples possibly counted (window sets).
            let inner: Vec<f64> = in_range(raw, lo + r, hi - r).collect();
            let outer: Vec<f64> = in_range(raw, lo - r, hi).collect();
            let sum = |v: &[f64]| v.iter().sum::<f64>();
            let minf = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let maxf = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let ok = match func {
                "count_over_time" => inner.len() as f64 <= p.v && p.v <= outer.len() as f64,
                "sum_over_time" => sum(&inner) <= p.v && p.v <= sum(&outer),
                "min_over_time" => minf(&outer) <= p.v && p.v <= minf(&inner),
                "max_over_time" => maxf(&inner) <= p.v && p.v <= maxf(&outer),
                "avg_over_time" => minf(&outer) - 1e-9 <= p.v && p.v <= maxf(&outer) + 1e-9,
                "last_over_time" => in_range(raw, lo, hi).any(|v| v == p.v),
                "plain" => in_range(raw, t - 5 * MIN - r - max_gap, t).any(|v| v == p.v),
                "increase" | "rate" => {
                    let Some(want) = raw_answer.get(l).and_then(|s| s.iter().find(|q| q.t == t))
                    else {
                        // Raw has no answer here (fewer than two samples): nor a bound.
                        continue;
                    };
                    // Two windows' worth (plus a sample gap) of increase at the range's ends,
                    // scaled by the extrapolation (at most the range over the part sampled).
                    let edge = max_increase(&counter, r + max_gap, lo - r - max_gap, hi);
                    let mut tol =
                        2.0 * edge * range_ms as f64 / (range_ms - 2 * (r + max_gap)) as f64;
                    if func == "rate" {
                        tol /= range_ms as f64 / 1000.0;
                    }
                    (p.v - want.v).abs() <= tol + 1e-9 * want.v.abs()
                }
                other => panic!("no bound for {other}"),
            };
            prop_assert!(ok, "{} {} at {}: {} (resolution {})", expr, l, t, p.v, r);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn planned_functions_match_raw(
        series in prop::collection::vec(arb_series(), 1..4),
        pick in 0usize..4,
    ) {
        let data = build(&series);
        // 5m blocks for all but the newest day, 1h for all but the newest two.
        let f = fixture(&data, DAY, 2 * DAY, None);
        // (step, range, the coarsest resolution the rule allows)
        let (step, range_ms, r) = [
            (H, 2 * H, RES_5M),
            (6 * H, 12 * H, RES_1H),
            (30 * MIN, 6 * H, RES_5M),
            (5 * H, 5 * H, RES_1H),
        ][pick];
        for func in [
            "rate", "increase", "count_over_time", "sum_over_time", "min_over_time",
            "max_over_time", "avg_over_time", "last_over_time", "plain",
        ] {
            check(&f, &data, func, range_ms, step, r)?;
        }
    }
}
