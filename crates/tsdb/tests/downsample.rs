//! Downsampling against a model computed from the raw samples, crash safety, retention per
//! resolution, and the Db integration.
//!
//! - `aggregates_match_raw_per_window` (proptest): random counters (with resets) and gauges
//!   over several raw 2 h blocks are downsampled to 5 m and then 1 h; every window's count,
//!   sum, min, max and last equal the values computed from the raw samples, the stitched counter
//!   equals the raw running total with resets compensated at every sample it has, and the
//!   increase over any range matches raw within the documented tolerance (the raw increase
//!   inside the first and the last window of the range).
//! - `aggregate_chunks_round_trip` (proptest): aggregate chunks of any values (decimals, byte
//!   counts, arbitrary floats, huge values, -0.0) decode bit for bit to what was encoded.
//! - `merged_blocks_match_raw` (proptest): the same checks over weeks of 18 h raw blocks, whose
//!   5 m and 1 h blocks are merged (162 h and 486 h windows, incomplete ones too).
//! - `backfill_into_a_merged_window_replaces_its_part`: a raw block downsampled again after a
//!   backfill replaces its range in the merged 5 m block; every aggregate matches the raw data.
//! - `aggregate_chunk_garbage_never_panics` (proptest): garbage and damaged chunks are errors,
//!   never panics; decoding one aggregate gives what a full decode gives.
//! - `leftover_and_obsolete_blocks_after_a_crash`: a temp dir left by a crash, a re-run, and a
//!   superseded downsampled block left behind leave exactly one downsampled block per source.
//! - `downsampling_survives_sigkill`: a child process downsampling a directory is SIGKILLed at
//!   spread-out points; after each kill, reopening shows no partial or duplicate data.
//! - `merging_survives_sigkill`: the same while the child merges 5 m blocks into a 162 h one.
//! - `retention_per_resolution_matches_model` (proptest): blocks of each resolution; retention
//!   deletes exactly the blocks outside their resolution's window, keeping raw/5 m blocks whose
//!   coarser version does not exist yet.
//!   `analyze` then reports one block per resolution.
//! - `retention_rules_match_model` (proptest): per-metric retention rules drop exactly the
//!   series of the blocks entirely outside each matching rule's window per resolution, and a
//!   reopen after the rewrite (a crash before the old blocks are deleted) keeps one copy.
//! - `db_applies_retention_rules`: the Db's maintenance drops a rule's series from the raw
//!   blocks entirely older than its window and nothing else.
//! - `db_downsamples_and_keeps_raw_queries_raw`: the Db writes 5 m and 1 h blocks during
//!   maintenance, raw queries are unchanged, `querier_resolution` reads the aggregates, and a
//!   reopen plus another maintenance run changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use tidemark_model::{Labels, Matcher, Sample};
use tidemark_storage::{Appendable, Queryable};
use tidemark_tsdb::block::{Block, BlockMeta, BlockStats, BlockWriter, open_blocks};
use tidemark_tsdb::downsample::{
    self, Aggregate, DownsampleOptions, DownsampledQuerier, RES_1H, RES_5M,
};
use tidemark_tsdb::retention::{
    ResolutionRetention, RetentionRule, apply_rules, select_by_resolution,
};
use tidemark_tsdb::{Db, DbOptions};

const H: i64 = 3_600_000;
const DAY: i64 = 24 * H;
/// "Now" for the tests that downsample every block.
const NEWEST: i64 = i64::MAX / 2;

fn labels(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())])
}

/// Raw series: labels and samples (integer values, so that sums are exact in f64).
type RawData = BTreeMap<Labels, Vec<Sample>>;

/// Writes `data` as raw blocks of `range` ms aligned to the epoch.
fn write_raw_blocks(dir: &Path, data: &RawData, range: i64) -> Vec<BlockMeta> {
    let (Some(mint), Some(maxt)) = (
        data.values().filter_map(|s| s.first()).map(|s| s.t).min(),
        data.values().filter_map(|s| s.last()).map(|s| s.t).max(),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut start = mint.div_euclid(range) * range;
    while start <= maxt {
        let end = start + range;
        let mut w = BlockWriter::new(dir, start, end).unwrap();
        for (l, ss) in data {
            let part: Vec<Sample> = ss
                .iter()
                .copied()
                .filter(|s| s.t >= start && s.t < end)
                .collect();
            w.add_samples(l, &part).unwrap();
        }
        if w.num_series() > 0 {
            out.push(w.finish().unwrap());
        }
        start = end;
    }
    out
}

fn blocks_of(dir: &Path, res: i64) -> Vec<Block> {
    let (blocks, _) = open_blocks(dir).unwrap();
    blocks
        .into_iter()
        .filter(|b| b.meta().resolution == res)
        .collect()
}

fn read(dir: &Path, res: i64, aggr: Aggregate) -> BTreeMap<Labels, Vec<Sample>> {
    let q = DownsampledQuerier::new(blocks_of(dir, res), i64::MIN, i64::MAX, aggr);
    read_querier(&q, &[Matcher::equal("__name__", "m")])
}

fn read_querier(q: &dyn tidemark_storage::Querier, m: &[Matcher]) -> BTreeMap<Labels, Vec<Sample>> {
    let mut out = BTreeMap::new();
    for s in q.select(true, None, m) {
        let s = s.unwrap();
        let mut it = s.iter();
        let mut v = Vec::new();
        while it.next() {
            v.push(it.at());
        }
        assert!(it.err().is_none());
        out.insert(s.labels().clone(), v);
    }
    out
}

/// Model of one window: (timestamp of the last sample, count, sum, min, max, last).
type ModelWindow = (i64, f64, f64, f64, f64, f64);

fn model_windows(raw: &[Sample], res: i64) -> Vec<ModelWindow> {
    let mut out: Vec<ModelWindow> = Vec::new();
    let mut cur: Option<i64> = None;
    for s in raw {
        let w = s.t.div_euclid(res);
        if cur == Some(w) {
            let last = out.last_mut().unwrap();
            last.0 = s.t;
            last.1 += 1.0;
            last.2 += s.v;
            last.3 = last.3.min(s.v);
            last.4 = last.4.max(s.v);
            last.5 = s.v;
        } else {
            out.push((s.t, 1.0, s.v, s.v, s.v, s.v));
            cur = Some(w);
        }
    }
    out
}

/// The raw running total with resets compensated, at every raw timestamp (starts at the first
/// value; a drop adds the new value in full, as PromQL's increase does).
fn model_counter(raw: &[Sample]) -> BTreeMap<i64, f64> {
    let mut out = BTreeMap::new();
    let mut total = 0.0;
    let mut prev: Option<f64> = None;
    for s in raw {
        total += match prev {
            None => s.v,
            Some(p) if s.v >= p => s.v - p,
            Some(_) => s.v,
        };
        prev = Some(s.v);
        out.insert(s.t, total);
    }
    out
}

/// A generated series: (is counter, [(gap ms, value or increment, reset?)]).
type GenSeries = (bool, Vec<(i64, u32, bool)>);

fn arb_series() -> impl Strategy<Value = GenSeries> {
    // (is counter, [(gap ms, value or increment, reset?)]).
    (
        any::<bool>(),
        prop::collection::vec(
            (1i64..240_000, 0u32..1000, prop::bool::weighted(0.03)),
            1..700,
        ),
    )
}

fn build(series: &[GenSeries], start: i64) -> RawData {
    let mut data = RawData::new();
    for (i, (counter, steps)) in series.iter().enumerate() {
        let mut t = start;
        let mut v = 0.0;
        let mut out = Vec::new();
        for &(gap, x, reset) in steps {
            t += gap;
            if *counter {
                v = if reset {
                    f64::from(x % 50)
                } else {
                    v + f64::from(x)
                };
            } else {
                v = f64::from(x);
            }
            out.push(Sample::new(t, v));
        }
        data.insert(labels(i), out);
    }
    data
}

fn check_resolution(dir: &Path, data: &RawData, res: i64) -> Result<(), TestCaseError> {
    let count = read(dir, res, Aggregate::Count);
    let sum = read(dir, res, Aggregate::Sum);
    let min = read(dir, res, Aggregate::Min);
    let max = read(dir, res, Aggregate::Max);
    let counter = read(dir, res, Aggregate::Counter);
    let last = read(dir, res, Aggregate::Last);
    prop_assert_eq!(count.len(), data.len());
    for (l, raw) in data {
        let want = model_windows(raw, res);
        let pick = |m: &BTreeMap<Labels, Vec<Sample>>| -> Vec<(i64, f64)> {
            m[l].iter().map(|s| (s.t, s.v)).collect()
        };
        prop_assert_eq!(
            pick(&count),
            want.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
            "count {} res {}",
            l,
            res
        );
        prop_assert_eq!(
            pick(&sum),
            want.iter().map(|w| (w.0, w.2)).collect::<Vec<_>>(),
            "sum"
        );
        prop_assert_eq!(
            pick(&min),
            want.iter().map(|w| (w.0, w.3)).collect::<Vec<_>>(),
            "min"
        );
        prop_assert_eq!(
            pick(&max),
            want.iter().map(|w| (w.0, w.4)).collect::<Vec<_>>(),
            "max"
        );
        prop_assert_eq!(
            pick(&last),
            want.iter().map(|w| (w.0, w.5)).collect::<Vec<_>>(),
            "last"
        );
        // Counter: at every sample it has, the raw running total; it starts at the first raw
        // sample and ends at the last.
        let c = &counter[l];
        let model = model_counter(raw);
        for s in c {
            prop_assert_eq!(
                model.get(&s.t).copied(),
                Some(s.v),
                "counter {} at {} res {}",
                l,
                s.t,
                res
            );
        }
        prop_assert_eq!(c.first().map(|s| s.t), raw.first().map(|s| s.t));
        prop_assert_eq!(c.last().map(|s| s.t), raw.last().map(|s| s.t));
        // Every window's last raw sample is in the counter stream.
        for w in &want {
            prop_assert!(
                c.iter().any(|s| s.t == w.0),
                "window ending {} missing",
                w.0
            );
        }
    }
    Ok(())
}

/// Increase over `[a, b]` from the first to the last sample inside it (no extrapolation).
fn increase(samples: &[(i64, f64)], a: i64, b: i64) -> Option<f64> {
    let inside: Vec<&(i64, f64)> = samples.iter().filter(|s| s.0 >= a && s.0 <= b).collect();
    Some(inside.last()?.1 - inside.first()?.1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn aggregates_match_raw_per_window(
        series in prop::collection::vec(arb_series(), 1..4),
        start in -3 * H..3 * H,
        ranges in prop::collection::vec((0i64..30 * H, 0i64..30 * H), 8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let data = build(&series, start);
        write_raw_blocks(dir.path(), &data, 2 * H);
        let opts = DownsampleOptions { to_5m_after_ms: 0, to_1h_after_ms: 0 };
        let written = downsample::run(dir.path(), i64::MAX / 2, &opts).unwrap();
        let raw_blocks = blocks_of(dir.path(), 0);
        prop_assert_eq!(written.iter().filter(|m| m.resolution == RES_5M).count(), raw_blocks.len());
        // Every raw block has a 5 m and a 1 h version (merged blocks hold several).
        let metas: Vec<BlockMeta> = std::fs::read_dir(dir.path()).unwrap()
            .filter_map(|e| Block::open(&e.unwrap().path()).ok())
            .map(|b| b.meta().clone())
            .collect();
        for b in &raw_blocks {
            prop_assert!(downsample::covered(b.meta(), RES_5M, &metas));
            prop_assert!(downsample::covered(b.meta(), RES_1H, &metas));
        }
        check_resolution(dir.path(), &data, RES_5M)?;
        check_resolution(dir.path(), &data, RES_1H)?;
        // Re-running writes nothing.
        prop_assert!(downsample::run(dir.path(), i64::MAX / 2, &opts).unwrap().is_empty());

        // Increase over random ranges: 0 <= raw - downsampled <= the raw increase inside the
        // window of the first raw sample in the range plus the one from the last sample before
        // the window of the last raw sample in the range to that sample.
        for res in [RES_5M, RES_1H] {
            let ds = read(dir.path(), res, Aggregate::Counter);
            for (l, raw) in &data {
                let model = model_counter(raw);
                let raw_c: Vec<(i64, f64)> = model.iter().map(|(&t, &v)| (t, v)).collect();
                let ds_c: Vec<(i64, f64)> = ds[l].iter().map(|s| (s.t, s.v)).collect();
                for &(x, y) in &ranges {
                    let (a, b) = (start + x.min(y), start + x.max(y));
                    let (Some(inc_raw), Some(inc_ds)) = (increase(&raw_c, a, b), increase(&ds_c, a, b)) else {
                        continue;
                    };
                    let first = raw_c.iter().find(|s| s.0 >= a).unwrap();
                    let last = raw_c.iter().rev().find(|s| s.0 <= b).unwrap();
                    let wf = first.0.div_euclid(res);
                    let end_first_window = raw_c.iter().rev().find(|s| s.0.div_euclid(res) == wf).unwrap();
                    let wl = last.0.div_euclid(res);
                    let before_last_window = raw_c.iter().rev().find(|s| s.0.div_euclid(res) < wl).map_or(raw_c[0].1, |s| s.1);
                    let tol = (end_first_window.1 - first.1) + (last.1 - before_last_window);
                    let err = inc_raw - inc_ds;
                    prop_assert!(err >= 0.0 && err <= tol,
                        "{l} res {res} [{a}, {b}]: raw {inc_raw} downsampled {inc_ds} tolerance {tol}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// Downsampled blocks merged into 162 h (5 m) and 486 h (1 h) blocks read exactly as the
    /// raw data gives: the same checks as `aggregates_match_raw_per_window`, over weeks of data
    /// in 18 h raw blocks, with some blocks missing (gaps) so that merges of incomplete
    /// windows happen too.
    #[test]
    fn merged_blocks_match_raw(
        series in prop::collection::vec(arb_series(), 1..3),
        stretch in 20i64..60,
        start in -30 * DAY..30 * DAY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let series: Vec<GenSeries> = series
            .into_iter()
            .map(|(c, steps)| (c, steps.into_iter().map(|(g, x, r)| (g * stretch, x, r)).collect()))
            .collect();
        let data = build(&series, start);
        write_raw_blocks(dir.path(), &data, 18 * H);
        let opts = DownsampleOptions { to_5m_after_ms: 0, to_1h_after_ms: 0 };
        downsample::run(dir.path(), NEWEST, &opts).unwrap();
        check_resolution(dir.path(), &data, RES_5M)?;
        check_resolution(dir.path(), &data, RES_1H)?;
        prop_assert!(downsample::run(dir.path(), NEWEST, &opts).unwrap().is_empty());
        prop_assert!(downsample::plan_merge(&open_blocks(dir.path()).unwrap().0.iter().map(|b| b.meta().clone()).collect::<Vec<_>>()).is_empty());
    }
}

fn arb_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0i64..1000).prop_map(|x| x as f64),
        (-100_000i64..100_000, 0u32..4).prop_map(|(m, e)| m as f64 / 10f64.powi(e as i32)),
        (0u64..1 << 40).prop_map(|x| (x * 4096) as f64),
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(1e300),
        Just(-0.0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every aggregate chunk decodes to exactly what was encoded (bit for bit), whatever the
    /// values: decimals, byte counts, arbitrary floats, huge values, -0.0, resets.
    #[test]
    fn aggregate_chunks_round_trip(
        steps in prop::collection::vec((1i64..200_000, arb_value(), prop::bool::weighted(0.8)), 1..400),
    ) {
        let mut t = 0;
        let mut v = 0.0;
        let mut raw = Vec::new();
        for (gap, x, keep) in steps {
            t += gap;
            // Mostly a running counter of the generated values, else the value itself.
            v = if keep && (v + x).is_finite() { v + x.abs() } else { x };
            raw.push(Sample::new(t, v));
        }
        let m5 = downsample::aggregate_raw(&raw, RES_5M);
        let h1 = downsample::aggregate_aggr(&m5, RES_1H);
        for a in [&m5, &h1] {
            let mut ts = downsample::TimestampChunks::default();
            let (_, _, bytes) = downsample::encode_aggr_chunk(a, &mut |c| Ok(ts.put(c))).unwrap();
            let d = downsample::decode_aggr_chunk(&bytes, &|r| ts.get(r)).unwrap();
            for g in Aggregate::ALL {
                let bits = |s: &[Sample]| s.iter().map(|x| (x.t, x.v.to_bits())).collect::<Vec<_>>();
                prop_assert_eq!(bits(d.get(g)), bits(a.get(g)), "{:?}", g);
            }
            prop_assert_eq!(d.raw_last.map(f64::to_bits), a.raw_last.map(f64::to_bits));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Arbitrary bytes after a valid version byte (and a valid chunk with bytes flipped) decode
    /// to an error or a series, never a panic; decoding one aggregate gives what decoding all
    /// gives for it.
    #[test]
    fn aggregate_chunk_garbage_never_panics(
        version in 3u8..5,
        body in prop::collection::vec(any::<u8>(), 0..200),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut ts = downsample::TimestampChunks::default();
        let raw: Vec<Sample> = (0..80).map(|i| Sample::new(i * 4000, f64::from((i * 7 % 13) as u32))).collect();
        let a = downsample::aggregate_raw(&raw, 60_000);
        let (_, _, mut valid) = downsample::encode_aggr_chunk(&a, &mut |c| Ok(ts.put(c))).unwrap();
        for (i, b) in &flips {
            let n = valid.len();
            valid[i.index(n)] ^= b;
        }
        let mut garbage = vec![version];
        garbage.extend_from_slice(&body);
        for data in [valid, garbage] {
            let get = |r: u64| ts.get(r);
            let all = downsample::decode_aggr_chunk(&data, &get);
            for g in Aggregate::ALL {
                let one = downsample::decode_aggr_chunk_only(&data, &get, &[g]);
                if let (Ok(all), Ok(one)) = (&all, &one) {
                    let bits = |s: &[Sample]| s.iter().map(|x| (x.t, x.v.to_bits())).collect::<Vec<_>>();
                    prop_assert_eq!(bits(all.get(g)), bits(one.get(g)));
                }
            }
        }
    }
}

/// A raw block that takes a backfill after its 5 m version was merged is downsampled again,
/// and the next merge keeps the new version of its range (the merged block's chunks there are
/// dropped): every aggregate then matches the raw data with the backfill.
#[test]
fn backfill_into_a_merged_window_replaces_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = sample_data(2, 8, 60_000);
    write_raw_blocks(dir.path(), &data, 18 * H);
    let opts = DownsampleOptions {
        to_5m_after_ms: 0,
        to_1h_after_ms: 0,
    };
    downsample::run(dir.path(), NEWEST, &opts).unwrap();
    let merged = |dir: &Path| {
        blocks_of(dir, RES_5M)
            .iter()
            .any(|b| b.meta().min_time == 0 && b.meta().max_time == 162 * H)
    };
    assert!(merged(dir.path()), "the first 162 h are one 5 m block");
    // Backfill 30 s after every sample of [36 h, 54 h) (the third raw block).
    let mut extra = RawData::new();
    for (l, ss) in &data {
        let add: Vec<Sample> = ss
            .iter()
            .filter(|s| s.t >= 36 * H && s.t < 54 * H)
            .map(|s| Sample::new(s.t + 30_000, s.v))
            .collect();
        extra.insert(l.clone(), add);
    }
    write_raw_blocks(dir.path(), &extra, 18 * H);
    tidemark_tsdb::compact::run(
        dir.path(),
        &tidemark_tsdb::compact::CompactOptions::default(),
    )
    .unwrap();
    downsample::run(dir.path(), NEWEST, &opts).unwrap();
    for (l, add) in extra {
        let ss = data.get_mut(&l).unwrap();
        ss.extend(add);
        ss.sort_by_key(|s| s.t);
    }
    assert!(merged(dir.path()));
    check_resolution(dir.path(), &data, RES_5M).unwrap();
    check_resolution(dir.path(), &data, RES_1H).unwrap();
}

fn sample_data(n_series: usize, days: i64, step: i64) -> RawData {
    let mut data = RawData::new();
    for i in 0..n_series {
        let mut v = 0.0;
        let ss = (0..days * DAY / step)
            .map(|k| {
                v = if k % 997 == 500 {
                    3.0
                } else {
                    v + (k % 7) as f64
                };
                Sample::new(k * step + i as i64, v)
            })
            .collect();
        data.insert(labels(i), ss);
    }
    data
}

/// Downsampled blocks as (resolution, sources) pairs, sorted: what must be unique.
fn downsampled_sources(dir: &Path) -> Vec<(i64, Vec<String>)> {
    let (blocks, _) = open_blocks(dir).unwrap();
    let mut v: Vec<(i64, Vec<String>)> = blocks
        .iter()
        .filter(|b| b.meta().resolution > 0)
        .map(|b| (b.meta().resolution, b.meta().sources.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn leftover_and_obsolete_blocks_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(3, 1, 60_000);
    let raw = write_raw_blocks(dir.path(), &data, 6 * H);
    assert_eq!(raw.len(), 4);
    let opts = DownsampleOptions {
        to_5m_after_ms: 0,
        to_1h_after_ms: 0,
    };
    // A crash in the middle of writing a downsampled block leaves its temp dir.
    let src = Block::open(&dir.path().join(&raw[0].id)).unwrap();
    let tmp = dir
        .path()
        .join(format!("{}.tmp-for-creation", "01ARZ3NDEKTSV4RRFFQ69G5FAV"));
    std::fs::create_dir_all(tmp.join("chunks")).unwrap();
    std::fs::write(tmp.join("index"), b"partial").unwrap();
    let (_, problems) = open_blocks(dir.path()).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(!tmp.exists());
    // One source downsampled, then the whole run (as after a restart): one 5 m and one 1 h
    // block per raw block, no duplicates.
    downsample::downsample_block(dir.path(), &src, RES_5M).unwrap();
    let written = downsample::run(dir.path(), NEWEST, &opts).unwrap();
    assert_eq!(
        written.len(),
        3 + 4,
        "3 missing 5 m blocks and 4 1 h blocks"
    );
    let ds = downsampled_sources(dir.path());
    assert_eq!(ds.len(), 8);
    let mut dedup = ds.clone();
    dedup.dedup();
    assert_eq!(dedup, ds);
    // (Sum: the counter stream also holds the raw first sample of each source block.)
    let want_1h = read(dir.path(), RES_1H, Aggregate::Sum);

    // The raw blocks are compacted into one (as after a backfill) and downsampled again; a
    // crash before the superseded 5 m / 1 h blocks were deleted leaves them behind: reopening
    // deletes them because the new blocks hold all their sources.
    let blocks: Vec<Block> = blocks_of(dir.path(), 0);
    let refs: Vec<&Block> = blocks.iter().collect();
    let merged = tidemark_tsdb::compact::compact(dir.path(), &refs).unwrap();
    let mb = Block::open(&dir.path().join(&merged.id)).unwrap();
    let m5 = downsample::downsample_block(dir.path(), &mb, RES_5M).unwrap();
    let b5 = Block::open(&dir.path().join(&m5.id)).unwrap();
    downsample::downsample_block(dir.path(), &b5, RES_1H).unwrap();
    let (_, problems) = open_blocks(dir.path()).unwrap();
    assert_eq!(problems.len(), 8, "{problems:?}");
    assert_eq!(downsampled_sources(dir.path()).len(), 2);
    assert!(
        downsample::run(dir.path(), NEWEST, &opts)
            .unwrap()
            .is_empty()
    );
    assert_eq!(read(dir.path(), RES_1H, Aggregate::Sum), want_1h);

    // `tidemark tsdb analyze` shows the blocks per resolution.
    let report = tidemark_tsdb::analyze::analyze(dir.path(), 5).unwrap();
    let per_res: Vec<(i64, u64, u64, u64, i64, i64)> = report
        .resolutions
        .iter()
        .map(|r| {
            (
                r.resolution,
                r.blocks,
                r.series,
                r.samples,
                r.min_time,
                r.max_time,
            )
        })
        .collect();
    let day_windows = |res: i64| 3 * (DAY / res) as u64;
    assert_eq!(
        per_res,
        vec![
            (0, 1, 3, 3 * 24 * 60, 0, DAY),
            (RES_5M, 1, 3, day_windows(RES_5M), 0, DAY),
            (RES_1H, 1, 3, day_windows(RES_1H), 0, DAY)
        ]
    );
    // The same figures from open blocks (what /api/v1/status/tsdb reports).
    let (blocks, _) = open_blocks(dir.path()).unwrap();
    let summary = tidemark_tsdb::analyze::summarize_resolutions(&blocks).unwrap();
    assert_eq!(summary, report.resolutions);
    let text = report.to_string();
    assert!(
        text.contains("Blocks per resolution") && text.contains("Series") && text.contains("  5m "),
        "{text}"
    );
}

/// Child mode of `downsampling_survives_sigkill`: downsamples the directory named by the env
/// var (does nothing when run as a normal test).
#[test]
fn crash_child_downsample() {
    let Ok(dir) = std::env::var("TIDEMARK_DOWNSAMPLE_CRASH_DIR") else {
        return;
    };
    let opts = DownsampleOptions {
        to_5m_after_ms: 0,
        to_1h_after_ms: 0,
    };
    downsample::run(Path::new(&dir), NEWEST, &opts).unwrap();
}

#[test]
fn downsampling_survives_sigkill() {
    let data = sample_data(200, 2, 15_000);
    let base = tempfile::tempdir().unwrap();
    let pristine = base.path().join("pristine");
    write_raw_blocks(&pristine, &data, 12 * H);
    // The expected result: an uninterrupted run.
    let full = base.path().join("full");
    copy_dir(&pristine, &full);
    let t0 = std::time::Instant::now();
    run_child(&full, None);
    let full_time = t0.elapsed();
    let want = (
        read(&full, RES_5M, Aggregate::Counter),
        read(&full, RES_1H, Aggregate::Sum),
    );
    assert_eq!(downsampled_sources(&full).len(), 8);
    let mut states = Vec::new();
    for round in 0..4u32 {
        let dir = base.path().join(format!("r{round}"));
        copy_dir(&pristine, &dir);
        // Kill points spread over the uninterrupted run's duration, several per round.
        for k in 0..3u32 {
            let at = full_time.mul_f64(f64::from(round * 3 + k + 1) / 13.0);
            run_child(&dir, Some(at));
            let (blocks, problems) = open_blocks(&dir).unwrap();
            states.push((blocks.len(), problems.len()));
            let ds = downsampled_sources(&dir);
            let mut dedup = ds.clone();
            dedup.dedup();
            assert_eq!(
                dedup, ds,
                "round {round} kill {k}: duplicate downsampled blocks"
            );
        }
        run_child(&dir, None);
        assert_eq!(downsampled_sources(&dir).len(), 8);
        let got = (
            read(&dir, RES_5M, Aggregate::Counter),
            read(&dir, RES_1H, Aggregate::Sum),
        );
        assert!(
            got == want,
            "round {round}: data differs; states {states:?}"
        );
    }
}

/// Each raw block appears in at most one downsampled block per resolution (after a crash,
/// `open_blocks` has deleted whatever a finished merge or rewrite made obsolete).
fn assert_sources_unique(dir: &Path, what: &str) {
    let (blocks, _) = open_blocks(dir).unwrap();
    for res in [RES_5M, RES_1H] {
        let mut all: Vec<&String> = blocks
            .iter()
            .filter(|b| b.meta().resolution == res)
            .flat_map(|b| b.meta().sources.iter())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            n,
            "{what}: a raw block in two blocks of resolution {res}"
        );
    }
}

/// As `downsampling_survives_sigkill`, killing the child while it *merges*: the directory
/// starts with a 5 m block for each of 8 days of 18 h raw blocks, so the run begins by merging
/// the first 162 h into one block, then downsamples it to 1 h. After each kill no raw block is
/// in two blocks of one resolution, and a final run gives what an uninterrupted one gives.
#[test]
fn merging_survives_sigkill() {
    let data = sample_data(20, 8, 60_000);
    let base = tempfile::tempdir().unwrap();
    let pristine = base.path().join("pristine");
    for m in write_raw_blocks(&pristine, &data, 18 * H) {
        let b = Block::open(&pristine.join(&m.id)).unwrap();
        downsample::downsample_block(&pristine, &b, RES_5M).unwrap();
    }
    let metas = |dir: &Path| -> Vec<BlockMeta> {
        open_blocks(dir)
            .unwrap()
            .0
            .iter()
            .map(|b| b.meta().clone())
            .collect()
    };
    assert_eq!(downsample::plan_merge(&metas(&pristine)).len(), 1);
    let full = base.path().join("full");
    copy_dir(&pristine, &full);
    let t0 = std::time::Instant::now();
    run_child(&full, None);
    let full_time = t0.elapsed();
    let merged = |dir: &Path| {
        blocks_of(dir, RES_5M)
            .iter()
            .any(|b| b.meta().min_time == 0 && b.meta().max_time == 162 * H)
    };
    assert!(merged(&full));
    let want = (
        read(&full, RES_5M, Aggregate::Counter),
        read(&full, RES_5M, Aggregate::Sum),
        read(&full, RES_1H, Aggregate::Counter),
    );
    check_resolution(&full, &data, RES_5M).unwrap();
    let mut states = Vec::new();
    for round in 0..3u32 {
        let dir = base.path().join(format!("r{round}"));
        copy_dir(&pristine, &dir);
        for k in 0..4u32 {
            let at = full_time.mul_f64(f64::from(round * 4 + k + 1) / 13.0);
            run_child(&dir, Some(at));
            let (blocks, problems) = open_blocks(&dir).unwrap();
            states.push((blocks.len(), problems.len()));
            assert_sources_unique(&dir, &format!("round {round} kill {k}"));
        }
        run_child(&dir, None);
        assert!(merged(&dir));
        assert!(downsample::plan_merge(&metas(&dir)).is_empty());
        let got = (
            read(&dir, RES_5M, Aggregate::Counter),
            read(&dir, RES_5M, Aggregate::Sum),
            read(&dir, RES_1H, Aggregate::Counter),
        );
        assert!(
            got == want,
            "round {round}: data differs; states {states:?}"
        );
    }
}

fn run_child(dir: &Path, kill_after: Option<std::time::Duration>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_downsample",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TIDEMARK_DOWNSAMPLE_CRASH_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    match kill_after {
        Some(d) => {
            std::thread::sleep(d);
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
        }
        None => assert!(child.wait().unwrap().success()),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn meta(id: String, res: i64, min: i64, max: i64, sources: Vec<String>) -> BlockMeta {
    BlockMeta {
        id,
        min_time: min,
        max_time: max,
        stats: BlockStats::default(),
        level: 1,
        sources,
        parents: vec![],
        resolution: res,
        version: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Blocks of 1 day over `n` days; each day has a raw block and, at random, its 5 m and 1 h
    /// versions (or only some of them, as if retention or downsampling ran before).
    #[test]
    fn retention_per_resolution_matches_model(
        days in prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 1..60),
        raw_days in 1i64..20, d5m_days in 1i64..40, d1h_days in 1i64..80,
        downsampling in any::<bool>(), head_extra in 0i64..3 * DAY,
    ) {
        let mut metas = Vec::new();
        for (d, &(raw, m5, h1)) in days.iter().enumerate() {
            let src = format!("src{d}");
            let (min, max) = (d as i64 * DAY, (d as i64 + 1) * DAY);
            for (present, res) in [(raw, 0), (m5, RES_5M), (h1, RES_1H)] {
                if present {
                    metas.push(meta(format!("{res}-{d}"), res, min, max, vec![src.clone()]));
                }
            }
        }
        let r = ResolutionRetention { raw_ms: raw_days * DAY, res_5m_ms: d5m_days * DAY, res_1h_ms: d1h_days * DAY, downsampling };
        let newest_block = metas.iter().map(|m| m.max_time - 1).max();
        let head_max = newest_block.map_or(i64::MIN, |n| n + head_extra);
        let got = select_by_resolution(&metas, &vec![0; metas.len()], &r, 0, head_max);
        // Model: per day and resolution, the retention window in whole days.
        let newest = newest_block.map_or(i64::MIN, |n| n.max(head_max));
        let outside = |res: i64, max: i64| {
            let keep = match res { 0 => r.raw_ms, RES_5M => r.res_5m_ms, _ => r.res_1h_ms };
            max <= newest - keep
        };
        let mut want = Vec::new();
        for m in &metas {
            if !outside(m.resolution, m.max_time) {
                continue;
            }
            let next = match m.resolution { 0 => Some(RES_5M), RES_5M => Some(RES_1H), _ => None };
            let wait = downsampling && next.is_some_and(|n| {
                !outside(n, m.max_time) && !metas.iter().any(|o| o.resolution == n && o.sources == m.sources)
            });
            if !wait {
                want.push(m.id.clone());
            }
        }
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        prop_assert_eq!(got_sorted, want);
        // Every kept block of a resolution holds data inside that resolution's window, or
        // waits for its coarser version.
        for m in metas.iter().filter(|m| !got.contains(&m.id)) {
            prop_assert!(!outside(m.resolution, m.max_time) || downsampling);
        }
    }
}

#[test]
fn db_downsamples_and_keeps_raw_queries_raw() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        background_maintenance: false,
        downsample_5m_after_ms: 40 * H,
        // Below the default 10 d so that 13 days of data reach 1 h: the 5 m blocks of the first
        // 162 h are merged into one, due for 1 h once that one is 5 d old.
        downsample_1h_after_ms: 5 * DAY,
        retention_time_ms: 15 * DAY,
        log_sync: tidemark_tsdb::log::SyncPolicy::Never,
        ..DbOptions::default()
    };
    let step = 60_000;
    let days = 13;
    let series = 4;
    let mut model: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        let mut app = db.appender();
        for k in 0..days * DAY / step {
            for i in 0..series {
                let l = labels(i);
                let t = k * step;
                let v = (k % 1000) as f64;
                app.append(None, &l, t, v).unwrap();
                model.entry(l).or_default().push(Sample::new(t, v));
            }
            if k % 120 == 119 {
                app.commit().unwrap();
                app = db.appender();
            }
            if k % 1200 == 0 {
                db.compact_now().unwrap();
            }
        }
        app.commit().unwrap();
        db.compact_now().unwrap();
        let metas = db.blocks();
        let count = |r: i64| metas.iter().filter(|m| m.resolution == r).count();
        assert!(count(RES_5M) > 0 && count(RES_1H) > 0, "{metas:?}");
        let newest = metas.iter().map(|m| m.max_time).max().unwrap();
        for m in &metas {
            match m.resolution {
                0 if m.max_time <= newest - 41 * H => {
                    assert!(
                        downsample::covered(m, RES_5M, &metas),
                        "raw {} not downsampled",
                        m.id
                    )
                }
                RES_5M if m.max_time <= newest - 5 * DAY - 2 * H => {
                    assert!(
                        downsample::covered(m, RES_1H, &metas),
                        "5m {} not downsampled",
                        m.id
                    )
                }
                _ => {}
            }
        }
        // Raw queries read raw data only.
        let q = db.querier(i64::MIN, i64::MAX).unwrap();
        let got = read_querier(q.as_ref(), &[Matcher::equal("__name__", "m")]);
        assert_eq!(got.len(), series);
        for (l, want) in &model {
            let g = &got[l];
            assert_eq!(g.len(), want.len(), "{l}");
            assert!(g.iter().zip(want).all(|(a, b)| a.t == b.t && a.v == b.v));
        }
        // Downsampled data through the Db.
        let q = db
            .querier_resolution(0, 2 * DAY - 1, RES_1H, Aggregate::Count)
            .unwrap();
        let got = read_querier(&q, &[Matcher::equal("i", "1")]);
        assert_eq!(got.len(), 1);
        let c = got.values().next().unwrap();
        assert_eq!(c.len(), 2 * 24, "one window per hour");
        assert!(c.iter().all(|s| s.v == 60.0));
        assert!(db.querier_resolution(0, 1, 0, Aggregate::Sum).is_err());
        db.close().unwrap();
    }
    let before = {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        db.blocks()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    db.compact_now().unwrap();
    assert_eq!(
        db.blocks(),
        before,
        "a second maintenance run writes nothing"
    );
}

/// A generated rule: (matcher choice, raw, 5 m, 1 h retention in hours).
type GenRule = (u8, Option<i64>, Option<i64>, Option<i64>);

fn rule_matcher(choice: u8) -> Matcher {
    use tidemark_model::MatchType;
    match choice % 4 {
        0 => Matcher::new(MatchType::Regex, "__name__", "debug_.*").unwrap(),
        1 => Matcher::equal("__name__", "m"),
        2 => Matcher::equal("i", "1"),
        _ => Matcher::new(MatchType::NotRegex, "i", "0|2").unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Per-metric retention rules against a model: after `apply_rules` (and the reopen that a
    /// crash before deleting the old blocks would see), a series is in a block of resolution
    /// `r` exactly when no rule matching it has a retention for `r` that the block lies
    /// entirely outside of (`max_time <= newest - retention`). Everything else is untouched.
    #[test]
    fn retention_rules_match_model(
        names in prop::collection::vec(0u8..3, 1..5),
        rules in prop::collection::vec(
            (0u8..4, prop::option::of(0i64..80), prop::option::of(0i64..80), prop::option::of(0i64..80)),
            1..4,
        ),
        extra in 0i64..40,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut data = RawData::new();
        for (i, n) in names.iter().enumerate() {
            let name = ["m", "debug_a", "debug_b"][*n as usize];
            let l = Labels::from_pairs([("__name__", name.to_string()), ("i", i.to_string())]);
            let ss = (0..3 * DAY / (10 * 60_000)).map(|k| Sample::new(k * 10 * 60_000 + i as i64, (k % 13) as f64)).collect();
            data.insert(l, ss);
        }
        write_raw_blocks(dir.path(), &data, 12 * H);
        let opts = DownsampleOptions { to_5m_after_ms: 0, to_1h_after_ms: 0 };
        downsample::run(dir.path(), NEWEST, &opts).unwrap();
        let before = open_blocks(dir.path()).unwrap().0;
        let newest = 3 * DAY + extra * H;
        let rules: Vec<RetentionRule> = rules
            .iter()
            .map(|&(m, raw, r5, r1): &GenRule| RetentionRule {
                matchers: vec![rule_matcher(m)],
                raw_ms: raw.map(|h| h * H),
                res_5m_ms: r5.map(|h| h * H),
                res_1h_ms: r1.map(|h| h * H),
            })
            .collect();
        // The model: (resolution, sources) -> labels expected.
        let mut want: BTreeMap<(i64, Vec<String>), Vec<Labels>> = BTreeMap::new();
        for b in &before {
            let m = b.meta();
            let keep: Vec<Labels> = data
                .keys()
                .filter(|l| {
                    !rules.iter().any(|r| {
                        r.matchers.iter().all(|mm| mm.matches(l.get(&mm.name).unwrap_or("")))
                            && r.of(m.resolution).is_some_and(|ms| ms > 0 && m.max_time <= newest - ms)
                    })
                })
                .cloned()
                .collect();
            if !keep.is_empty() {
                want.insert((m.resolution, m.sources.clone()), keep);
            }
        }
        let rewrites = apply_rules(dir.path(), &before, &rules, newest).unwrap();
        drop(before);
        // No deletion of the old blocks: reopening must do it (a crash after the rewrite).
        let (after, _) = open_blocks(dir.path()).unwrap();
        let mut got: BTreeMap<(i64, Vec<String>), Vec<Labels>> = BTreeMap::new();
        for b in &after {
            // Blocks left with no series are not rewritten but deleted by the caller (Db).
            if rewrites.iter().any(|r| r.new.is_none() && r.old == b.id()) {
                continue;
            }
            let labels: Vec<Labels> = (0..b.index().num_series())
                .map(|id| b.index().series(id).unwrap().labels)
                .collect();
            let key = (b.meta().resolution, b.meta().sources.clone());
            prop_assert!(got.insert(key, labels).is_none(), "two blocks of one resolution and sources");
        }
        prop_assert_eq!(&got, &want);
        for r in rewrites.iter().filter(|r| r.new.is_none()) {
            tidemark_tsdb::block::delete_block(dir.path(), &r.old).unwrap();
        }
        // Data of the series kept is unchanged (aggregates read the same).
        for res in [RES_5M, RES_1H] {
            let q = DownsampledQuerier::new(blocks_of(dir.path(), res), i64::MIN, i64::MAX, Aggregate::Count);
            let n: usize = read_querier(&q, &[Matcher::new(tidemark_model::MatchType::Regex, "__name__", ".+").unwrap()])
                .values().map(Vec::len).sum();
            let model: usize = want
                .iter()
                .filter(|((r, _), _)| *r == res)
                .map(|(_, ls)| ls.len() * (12 * H / res.max(10 * 60_000)) as usize)
                .sum();
            prop_assert_eq!(n, model);
        }
        // Re-running changes nothing.
        let again = apply_rules(dir.path(), &open_blocks(dir.path()).unwrap().0, &rules, newest).unwrap();
        prop_assert!(again.is_empty(), "{:?}", again);
    }
}

#[test]
fn db_applies_retention_rules() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        background_maintenance: false,
        downsampling: false,
        log_sync: tidemark_tsdb::log::SyncPolicy::Never,
        retention_rules: vec![RetentionRule {
            matchers: vec![
                Matcher::new(tidemark_model::MatchType::Regex, "__name__", "debug_.*").unwrap(),
            ],
            raw_ms: Some(DAY),
            res_5m_ms: None,
            res_1h_ms: None,
        }],
        ..DbOptions::default()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let step = 5 * 60_000;
    let names = ["m", "debug_x"];
    for k in 0..4 * DAY / step {
        let mut app = db.appender();
        for n in names {
            let l = Labels::from_pairs([("__name__", n.to_string())]);
            app.append(None, &l, k * step, k as f64).unwrap();
        }
        app.commit().unwrap();
        if k % 100 == 0 {
            db.compact_now().unwrap();
        }
    }
    db.compact_now().unwrap();
    let newest = 4 * DAY - step;
    let q = db.querier(i64::MIN, i64::MAX).unwrap();
    let all = Matcher::new(tidemark_model::MatchType::Regex, "__name__", ".+").unwrap();
    let got = read_querier(q.as_ref(), &[all]);
    let m = &got[&Labels::from_pairs([("__name__", "m".to_string())])];
    assert_eq!(m.len() as i64, 4 * DAY / step, "other series untouched");
    let d = &got[&Labels::from_pairs([("__name__", "debug_x".to_string())])];
    // debug_x keeps exactly the samples of the blocks (and head) not entirely older than 1d.
    let metas = db.blocks();
    let kept_from = metas
        .iter()
        .filter(|b| b.max_time > newest - DAY)
        .map(|b| b.min_time)
        .min()
        .unwrap();
    assert!(
        kept_from <= newest - DAY,
        "the block holding the cutoff is kept"
    );
    assert!(kept_from > 0, "older blocks lost debug_x: {metas:?}");
    let want: Vec<i64> = (0..4 * DAY / step)
        .map(|k| k * step)
        .filter(|&t| t >= kept_from)
        .collect();
    assert_eq!(d.iter().map(|s| s.t).collect::<Vec<_>>(), want);
    // A second run changes nothing.
    let before = db.blocks();
    db.compact_now().unwrap();
    assert_eq!(db.blocks(), before);
    db.close().unwrap();
}
