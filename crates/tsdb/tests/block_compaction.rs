//! Compaction and retention against a model, and crash safety of compaction.
//!
//! - `compaction_and_retention_match_model`: random level-1 blocks plus overlapping backfill
//!   blocks are compacted until the planner has nothing left; every sample survives exactly once
//!   and no blocks overlap. Retention by time then deletes exactly the blocks whose every sample
//!   is older than the cutoff and keeps every sample at or after it; retention by size deletes
//!   oldest first until the rest fits.
//! - Crashes: a leftover temp dir, sources left behind after the new block was written, a
//!   half-done deletion, and a real child process SIGKILLed at random points of a compaction
//!   run: reopening is clean, with no duplicates and no loss.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use tidemark_model::{Labels, Sample};
use tidemark_tsdb::block::{BlockMeta, BlockWriter, open_blocks};
use tidemark_tsdb::{compact, retention};

/// Block range used by these tests (ms): small, so that many windows fit in a short test.
const R: i64 = 100;

type Model = BTreeMap<Labels, BTreeMap<i64, u64>>;

fn opts() -> compact::CompactOptions {
    // Ranges 100, 300, 900.
    compact::CompactOptions {
        block_range_ms: R,
        retention_ms: 10_000,
        samples_per_chunk: 16,
    }
}

fn series(i: usize) -> Labels {
    Labels::from_pairs([("__name__", format!("m{}", i % 3)), ("i", i.to_string())])
}

/// The value of a series at `t`: a function of both, so that overlapping blocks agree.
fn value(l: &Labels, t: i64) -> f64 {
    ((l.stable_hash() ^ t as u64) % 1_000_003) as f64 / 8.0
}

/// Writes one block of `[mint, maxt)` with the samples of `points` in that range.
fn write_block(
    dir: &Path,
    mint: i64,
    maxt: i64,
    points: &BTreeMap<Labels, Vec<i64>>,
) -> Option<BlockMeta> {
    let mut w = BlockWriter::new(dir, mint, maxt).unwrap();
    for (l, ts) in points {
        let samples: Vec<Sample> = ts
            .iter()
            .copied()
            .filter(|&t| t >= mint && t < maxt)
            .map(|t| Sample::new(t, value(l, t)))
            .collect();
        w.add_samples(l, &samples).unwrap();
    }
    if w.num_series() == 0 {
        return None;
    }
    Some(w.finish().unwrap())
}

/// Level-1 blocks aligned to `R` holding the model's samples.
fn write_aligned(dir: &Path, model: &Model) {
    let mut by_window: BTreeMap<i64, BTreeMap<Labels, Vec<i64>>> = BTreeMap::new();
    for (l, ts) in model {
        for &t in ts.keys() {
            by_window
                .entry(t.div_euclid(R))
                .or_default()
                .entry(l.clone())
                .or_default()
                .push(t);
        }
    }
    for (w, points) in by_window {
        write_block(dir, w * R, (w + 1) * R, &points);
    }
}

/// Every sample of every block in `dir`, not deduplicated; panics on open problems.
fn read_all(dir: &Path) -> BTreeMap<Labels, Vec<(i64, u64)>> {
    let (blocks, problems) = open_blocks(dir).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let mut out: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
    for b in &blocks {
        let q = b.querier(i64::MIN, i64::MAX);
        for s in q.select(true, None, &[]) {
            let s = s.unwrap();
            let mut it = s.iter();
            let v = out.entry(s.labels().clone()).or_default();
            while it.next() {
                let x = it.at();
                assert!(
                    x.t >= b.meta().min_time && x.t < b.meta().max_time,
                    "sample outside its block"
                );
                v.push((x.t, x.v.to_bits()));
            }
            assert!(it.err().is_none());
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

fn model_flat(model: &Model) -> BTreeMap<Labels, Vec<(i64, u64)>> {
    model
        .iter()
        .filter(|(_, ts)| !ts.is_empty())
        .map(|(l, ts)| (l.clone(), ts.iter().map(|(&t, &v)| (t, v)).collect()))
        .collect()
}

fn metas(dir: &Path) -> Vec<BlockMeta> {
    open_blocks(dir)
        .unwrap()
        .0
        .iter()
        .map(|b| b.meta().clone())
        .collect()
}

fn assert_no_overlaps(ms: &[BlockMeta]) {
    for w in ms.windows(2) {
        assert!(w[0].max_time <= w[1].min_time, "blocks overlap: {w:?}");
    }
}

fn arb_model() -> impl Strategy<Value = (Model, Vec<(i64, i64)>)> {
    let ts = proptest::collection::btree_set(0i64..2000, 0..40);
    let series_ts = proptest::collection::vec(ts, 1..6);
    let backfill = proptest::collection::vec((0i64..2000, 1i64..700), 0..3);
    (series_ts, backfill).prop_map(|(sts, bf)| {
        let mut model = Model::new();
        for (i, ts) in sts.into_iter().enumerate() {
            let l = series(i);
            let m = ts
                .into_iter()
                .map(|t| (t, value(&l, t).to_bits()))
                .collect();
            model.insert(l, m);
        }
        (model, bf)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn compaction_and_retention_match_model((mut model, backfill) in arb_model(), extra in 0i64..500,
                                            keep in 1i64..2500, size_frac in 0u64..100) {
        let dir = tempfile::tempdir().unwrap();
        write_aligned(dir.path(), &model);
        // Backfill blocks overlapping the aligned ones: copies of the model's samples in their
        // range plus new ones every 7 ms.
        for (start, len) in backfill {
            let mut points: BTreeMap<Labels, Vec<i64>> = BTreeMap::new();
            for (l, ts) in model.iter_mut() {
                let mut v: Vec<i64> = ts.range(start..start + len).map(|(&t, _)| t).collect();
                for t in (start..start + len).step_by(7) {
                    ts.insert(t, value(l, t).to_bits());
                    v.push(t);
                }
                v.sort_unstable();
                v.dedup();
                points.insert(l.clone(), v);
            }
            write_block(dir.path(), start, start + len, &points);
        }
        let want = model_flat(&model);

        compact::run(dir.path(), &opts()).unwrap();
        let ms = metas(dir.path());
        assert_no_overlaps(&ms);
        prop_assert!(compact::plan(&ms, &opts()).is_empty());
        let total: u64 = ms.iter().map(|m| m.stats.num_samples).sum();
        prop_assert_eq!(total, want.values().map(|v| v.len() as u64).sum::<u64>());
        prop_assert_eq!(&read_all(dir.path()), &want);

        // Retention by time.
        let head_max = model.values().flat_map(|t| t.keys().copied()).max().unwrap_or(0) + extra;
        let newest = ms.iter().map(|m| m.max_time - 1).max().unwrap_or(i64::MIN).max(head_max);
        let cutoff = newest - keep;
        let deleted = retention::apply(dir.path(), &ms, keep, 0, head_max).unwrap();
        let want_deleted: Vec<String> = ms.iter().filter(|m| m.max_time <= cutoff).map(|m| m.id.clone()).collect();
        prop_assert_eq!(&deleted, &want_deleted);
        let left = metas(dir.path());
        prop_assert!(left.iter().all(|m| m.max_time > cutoff));
        let got = read_all(dir.path());
        for (l, samples) in &want {
            let kept_ranges: Vec<(i64, i64)> = left.iter().map(|m| (m.min_time, m.max_time)).collect();
            let expect: Vec<(i64, u64)> = samples
                .iter()
                .copied()
                .filter(|&(t, _)| kept_ranges.iter().any(|&(a, b)| t >= a && t < b))
                .collect();
            prop_assert!(expect.iter().filter(|s| s.0 >= cutoff).count() == samples.iter().filter(|s| s.0 >= cutoff).count(),
                "a sample inside retention was in a deleted block");
            prop_assert_eq!(got.get(l).cloned().unwrap_or_default(), expect);
        }

        // Retention by size: oldest first until the rest fits.
        let sizes: Vec<u64> = left.iter().map(|m| tidemark_tsdb::block::Block::open(&dir.path().join(&m.id)).unwrap().size_bytes()).collect();
        let all: u64 = sizes.iter().sum();
        let limit = (all * size_frac / 100).max(1);
        let deleted = retention::apply(dir.path(), &left, 0, limit, head_max).unwrap();
        let rest = metas(dir.path());
        let rest_size: u64 = rest.iter().map(|m| tidemark_tsdb::block::Block::open(&dir.path().join(&m.id)).unwrap().size_bytes()).sum();
        prop_assert!(rest_size <= limit);
        prop_assert_eq!(rest.len() + deleted.len(), left.len());
        if let Some(first_kept) = rest.first() {
            for id in &deleted {
                let m = left.iter().find(|m| &m.id == id).unwrap();
                prop_assert!(m.min_time <= first_kept.min_time, "deleted a newer block first");
            }
            // Minimal: keeping the newest deleted block as well would exceed the limit.
            if let Some(last) = deleted.last() {
                let i = left.iter().position(|m| &m.id == last).unwrap();
                prop_assert!(rest_size + sizes[i] > limit);
            }
        }
    }
}

fn sample_model(n_series: usize, windows: i64, per_window: i64) -> Model {
    let mut model = Model::new();
    for i in 0..n_series {
        let l = series(i);
        let mut m = BTreeMap::new();
        for w in 0..windows {
            for k in 0..per_window {
                let t = w * R + k * (R / per_window) + (i as i64 % 3);
                m.insert(t, value(&l, t).to_bits());
            }
        }
        model.insert(l, m);
    }
    model
}

#[test]
fn leftover_temp_dir_and_half_deletion_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample_model(4, 3, 5);
    write_aligned(dir.path(), &model);
    // A writer that "crashed": its temp dir stays behind.
    let mut w = BlockWriter::new(dir.path(), 0, 300).unwrap();
    w.add_samples(&series(0), &[Sample::new(1, 1.0)]).unwrap();
    std::mem::forget(w);
    // A deletion that crashed after the rename.
    std::fs::create_dir_all(
        dir.path()
            .join("01ARZ3NDEKTSV4RRFFQ69G5FAV.tmp-for-deletion/chunks"),
    )
    .unwrap();
    let (blocks, problems) = open_blocks(dir.path()).unwrap();
    assert_eq!(blocks.len(), 3);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains(".tmp-for-creation")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains(".tmp-for-deletion")),
        "{problems:?}"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    assert_eq!(read_all(dir.path()), model_flat(&model));
}

#[test]
fn sources_left_after_compaction_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample_model(5, 3, 4);
    write_aligned(dir.path(), &model);
    let (blocks, _) = open_blocks(dir.path()).unwrap();
    assert_eq!(blocks.len(), 3);
    let refs: Vec<_> = blocks.iter().collect();
    // Crash right after the new block was renamed into place: sources still there.
    let meta = compact::write_compacted(dir.path(), &refs, 8).unwrap();
    assert_eq!(meta.level, 2);
    assert_eq!(meta.sources.len(), 3);
    drop(blocks);
    let (blocks, problems) = open_blocks(dir.path()).unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].id(), meta.id);
    assert_eq!(
        read_all(dir.path()),
        model_flat(&model),
        "no duplicates, no loss"
    );
}

const CHILD_ENV: &str = "TIDEMARK_BLOCK_CRASH_CHILD";

/// Child mode of `compaction_survives_sigkill`: compacts the directory named by the env var.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    compact::run(Path::new(&dir), &opts()).unwrap();
}

#[test]
fn compaction_survives_sigkill() {
    let model = sample_model(40, 27, 10);
    let want = model_flat(&model);
    // Spread kill points over a compaction run; measure one uninterrupted run first.
    let dir = tempfile::tempdir().unwrap();
    write_aligned(dir.path(), &model);
    let t0 = std::time::Instant::now();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let full = t0.elapsed();
    assert_eq!(read_all(dir.path()), want);
    assert_eq!(
        metas(dir.path()).len(),
        3,
        "27 blocks → 9 → 3 (900 ms is the largest range)"
    );

    let rounds = 6u32;
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        write_aligned(dir.path(), &model);
        let mut killed_state = Vec::new();
        // Several kills per round, each resuming from what the previous one left.
        for k in 0..3u32 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let frac = f64::from(round * 3 + k + 1) / f64::from(rounds * 3 + 1);
            std::thread::sleep(full.mul_f64(frac * 0.8));
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
            let (blocks, problems) = open_blocks(dir.path()).unwrap();
            killed_state.push((blocks.len(), problems));
            drop(blocks);
            assert_eq!(
                read_all(dir.path()),
                want,
                "round {round} kill {k}: data differs after reopen"
            );
            assert_no_overlaps(&metas(dir.path()));
        }
        eprintln!(
            "full run {full:?}; round {round}: blocks/problems after each kill: {killed_state:?}"
        );
        // Finishing the interrupted work converges to the same result.
        compact::run(dir.path(), &opts()).unwrap();
        assert_eq!(read_all(dir.path()), want);
        assert_eq!(metas(dir.path()).len(), 3, "states seen: {killed_state:?}");
    }
}

#[test]
fn queries_survive_deletion_of_their_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample_model(6, 3, 8);
    write_aligned(dir.path(), &model);
    let (blocks, _) = open_blocks(dir.path()).unwrap();
    // A query is running on the first block (series set obtained, iteration not started).
    let q = blocks[0].querier(i64::MIN, i64::MAX);
    let set: Vec<_> = q.select(true, None, &[]).map(|s| s.unwrap()).collect();
    // Compaction replaces the three blocks and deletes them.
    let refs: Vec<_> = blocks.iter().collect();
    compact::compact(dir.path(), &refs).unwrap();
    assert!(!dir.path().join(blocks[0].id()).exists());
    // The running query still reads everything it selected, and new queriers still work.
    let mut n = 0;
    for s in &set {
        let mut it = s.iter();
        while it.next() {
            n += 1;
        }
        assert!(it.err().is_none());
    }
    assert_eq!(n, 6 * 8);
    let late = blocks[0].querier(i64::MIN, i64::MAX);
    assert_eq!(late.label_values("i", &[], 0).unwrap().len(), 6);
    assert_eq!(late.label_values("i", &[], 2).unwrap().len(), 2, "limit");
    drop(blocks);
    assert_eq!(read_all(dir.path()), model_flat(&model));
}
