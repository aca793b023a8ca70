//! Compaction: merging blocks into larger ones.
//!
//! [`plan`] picks what to merge: first every group of blocks whose time ranges overlap (e.g.
//! after a backfill), then, level by level, the blocks that fill one aligned window of the next
//! range (`2h → 6h → 18h → …`, ranges growing by 3×, capped at 10% of the retention and at 31
//! days). [`compact`] merges blocks into one new block: series are merged by labels, samples by
//! timestamp (equal timestamps kept once), and re-encoded into larger chunks than the head's
//! 120 samples, which makes compacted blocks smaller.
//!
//! Crash safety: the new block is written completely (temp dir, fsync, rename) before any
//! source is deleted, and deletion renames first. If a crash leaves sources behind, the new
//! block's `sources` cover them and [`crate::block::open_blocks`] deletes them on the next open;
//! a crash before the rename leaves only a temp dir, which `open_blocks` removes.

use std::cmp::Ordering;
use std::path::Path;

use tidemark_model::{Labels, Sample};

use crate::block::{Block, BlockMeta, BlockWriter, Result, delete_block, open_blocks};
use crate::index::SeriesEntry;

/// One day in milliseconds.
const DAY_MS: i64 = 24 * 3600 * 1000;
/// The largest block compaction produces.
pub const MAX_BLOCK_RANGE_MS: i64 = 31 * DAY_MS;
/// Samples per chunk in compacted blocks.
pub const COMPACTED_SAMPLES_PER_CHUNK: usize = 1024;

/// What drives planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOptions {
    /// Range of the blocks cut from the head (default 2h).
    pub block_range_ms: i64,
    /// Retention by time (default 15d); the largest block covers at most 10% of it. 0 = no
    /// retention by time (largest block 31d).
    pub retention_ms: i64,
    /// Samples per chunk in the blocks compaction writes (default 1024).
    pub samples_per_chunk: usize,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            block_range_ms: 2 * 3600 * 1000,
            retention_ms: 15 * DAY_MS,
            samples_per_chunk: COMPACTED_SAMPLES_PER_CHUNK,
        }
    }
}

/// The block ranges compaction builds, smallest first: `block_range × 3^i`, each at most
/// `min(retention / 10, 31d)` (the first is always kept).
pub fn ranges(opts: &CompactOptions) -> Vec<i64> {
    let base = opts.block_range_ms.max(1);
    let cap = if opts.retention_ms > 0 {
        (opts.retention_ms / 10).min(MAX_BLOCK_RANGE_MS)
    } else {
        MAX_BLOCK_RANGE_MS
    };
    let mut out = vec![base];
    let mut r = base;
    while let Some(next) = r.checked_mul(3) {
        if next > cap {
            break;
        }
        out.push(next);
        r = next;
    }
    out
}

/// Groups of block ids to compact, each group into one new block. Groups are disjoint, so they
/// can run one after the other without re-planning; re-plan afterwards, since the new blocks may
/// be compactable again. Only raw blocks are compacted: downsampled blocks (resolution > 0)
/// are left as written.
pub fn plan(metas: &[BlockMeta], opts: &CompactOptions) -> Vec<Vec<String>> {
    let mut resolutions: Vec<i64> = metas.iter().map(|m| m.resolution).collect();
    resolutions.sort_unstable();
    resolutions.dedup();
    // Downsampled blocks hold aggregate chunks that a sample merge cannot combine: they are
    // merged by downsample::plan_merge / merge_blocks instead (chunks copied per series).
    resolutions.retain(|&r| r == 0);
    let mut out = Vec::new();
    for r in resolutions {
        let same: Vec<&BlockMeta> = metas.iter().filter(|m| m.resolution == r).collect();
        out.extend(plan_one_resolution(same, opts));
    }
    out
}

fn plan_one_resolution(mut ms: Vec<&BlockMeta>, opts: &CompactOptions) -> Vec<Vec<String>> {
    ms.sort_by(|a, b| (a.min_time, a.max_time, &a.id).cmp(&(b.min_time, b.max_time, &b.id)));

    // 1. Overlapping blocks are merged first (never dropped).
    let mut overlapping = Vec::new();
    let mut group: Vec<&BlockMeta> = Vec::new();
    let mut end = i64::MIN;
    for m in &ms {
        if !group.is_empty() && m.min_time < end {
            group.push(m);
            end = end.max(m.max_time);
            continue;
        }
        if group.len() > 1 {
            overlapping.push(group.iter().map(|m| m.id.clone()).collect());
        }
        group = vec![m];
        end = m.max_time;
    }
    if group.len() > 1 {
        overlapping.push(group.iter().map(|m| m.id.clone()).collect());
    }
    if !overlapping.is_empty() {
        return overlapping;
    }

    // 2. Leveled: for the smallest range that has work, every aligned window holding more than
    // one block that is complete (spans the window) or lies wholly before the newest block.
    let Some(newest_min) = ms.iter().map(|m| m.min_time).max() else {
        return Vec::new();
    };
    for &r in ranges(opts).iter().skip(1) {
        let mut out: Vec<Vec<String>> = Vec::new();
        let mut window: Option<i64> = None;
        let mut group: Vec<&BlockMeta> = Vec::new();
        let flush = |group: &mut Vec<&BlockMeta>, out: &mut Vec<Vec<String>>| {
            if group.len() > 1 {
                let mint = group.iter().map(|m| m.min_time).min().unwrap_or(0);
                let maxt = group.iter().map(|m| m.max_time).max().unwrap_or(0);
                if maxt - mint == r || maxt <= newest_min {
                    out.push(group.iter().map(|m| m.id.clone()).collect());
                }
            }
            group.clear();
        };
        for m in &ms {
            let w = m.min_time.div_euclid(r);
            let fits = m.max_time - m.min_time < r && m.max_time <= (w + 1).saturating_mul(r);
            if !fits {
                flush(&mut group, &mut out);
                window = None;
                continue;
            }
            if window != Some(w) {
                flush(&mut group, &mut out);
                window = Some(w);
            }
            group.push(m);
        }
        flush(&mut group, &mut out);
        if !out.is_empty() {
            return out;
        }
    }
    Vec::new()
}

/// Merges `blocks` into one new block in `data_dir`, then deletes the sources (after the new
/// block is durable). Returns the new block's meta; the caller swaps its open blocks (queries
/// still running on the old ones keep working: their files stay mapped).
pub fn compact(data_dir: &Path, blocks: &[&Block]) -> Result<BlockMeta> {
    let meta = write_compacted(data_dir, blocks, COMPACTED_SAMPLES_PER_CHUNK)?;
    for b in blocks {
        delete_block(data_dir, b.id())?;
    }
    Ok(meta)
}

/// The merge step of [`compact`] without deleting the sources (a crash right after it is what
/// `open_blocks` repairs).
pub fn write_compacted(
    data_dir: &Path,
    blocks: &[&Block],
    samples_per_chunk: usize,
) -> Result<BlockMeta> {
    let mut ordered: Vec<&Block> = blocks.to_vec();
    ordered.sort_by(|a, b| (a.meta().min_time, a.id()).cmp(&(b.meta().min_time, b.id())));
    let mint = ordered.iter().map(|b| b.meta().min_time).min().unwrap_or(0);
    let maxt = ordered.iter().map(|b| b.meta().max_time).max().unwrap_or(1);
    let level = ordered.iter().map(|b| b.meta().level).max().unwrap_or(0) + 1;
    let mut sources: Vec<String> = ordered
        .iter()
        .flat_map(|b| b.meta().sources.iter().cloned())
        .collect();
    sources.sort();
    sources.dedup();
    let parents = ordered.iter().map(|b| b.id().to_string()).collect();

    let mut w = BlockWriter::new(data_dir, mint, maxt.max(mint + 1))?;
    w.set_compaction(level, sources, parents);
    w.set_samples_per_chunk(samples_per_chunk);
    if let Some(res) = ordered.first().map(|b| b.meta().resolution) {
        w.set_resolution(res);
    }

    // K-way merge of the blocks' series (each index is in label order).
    let mut cursors: Vec<(u64, Option<Labels>)> = Vec::with_capacity(ordered.len());
    for b in &ordered {
        let first = if b.index().num_series() > 0 {
            Some(b.index().series_labels(0)?)
        } else {
            None
        };
        cursors.push((0, first));
    }
    let mut samples: Vec<Sample> = Vec::new();
    let mut part: Vec<Sample> = Vec::new();
    while let Some(min) = cursors
        .iter()
        .filter_map(|(_, l)| l.as_ref())
        .min()
        .cloned()
    {
        samples.clear();
        let mut parts = 0;
        for (i, b) in ordered.iter().enumerate() {
            let (id, labels) = &mut cursors[i];
            if labels.as_ref() != Some(&min) {
                continue;
            }
            let entry: SeriesEntry = b.index().series(*id)?;
            part.clear();
            b.read_live_series_samples(*id, &entry, &mut part)?;
            if parts == 0 {
                samples.extend_from_slice(&part);
            } else {
                merge_into(&mut samples, &part);
            }
            parts += 1;
            *id += 1;
            *labels = if *id < b.index().num_series() {
                Some(b.index().series_labels(*id)?)
            } else {
                None
            };
        }
        if parts == 1 && samples.windows(2).any(|w| w[1].t <= w[0].t) {
            // Chunks of one series overlapping each other inside a block: sort them out too.
            samples.sort_by_key(|s| s.t);
            samples.dedup_by_key(|s| s.t);
        }
        w.add_samples(&min, &samples)?;
    }
    let meta = w.finish()?;
    tracing::info!(block = %meta.id, level = meta.level, sources = ordered.len(), series = meta.stats.num_series,
        samples = meta.stats.num_samples, "compacted blocks");
    Ok(meta)
}

/// Merges sorted `add` into sorted `acc` by timestamp; on equal timestamps the sample already
/// in `acc` (from the earlier block) stays.
fn merge_into(acc: &mut Vec<Sample>, add: &[Sample]) {
    if add.is_empty() {
        return;
    }
    if acc.last().is_none_or(|l| l.t < add[0].t) {
        acc.extend_from_slice(add);
        return;
    }
    let old = std::mem::take(acc);
    acc.reserve(old.len() + add.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < add.len() {
        match old[i].t.cmp(&add[j].t) {
            Ordering::Less => {
                acc.push(old[i]);
                i += 1;
            }
            Ordering::Greater => {
                acc.push(add[j]);
                j += 1;
            }
            Ordering::Equal => {
                acc.push(old[i]);
                i += 1;
                j += 1;
            }
        }
    }
    acc.extend_from_slice(&old[i..]);
    acc.extend_from_slice(&add[j..]);
}

/// Plans and runs compactions in `data_dir` until nothing is left to do. Returns the metas of
/// the blocks written (the last ones are the survivors).
pub fn run(data_dir: &Path, opts: &CompactOptions) -> Result<Vec<BlockMeta>> {
    let mut written = Vec::new();
    loop {
        let (blocks, _problems) = open_blocks(data_dir)?;
        let metas: Vec<BlockMeta> = blocks.iter().map(|b| b.meta().clone()).collect();
        let plans = plan(&metas, opts);
        if plans.is_empty() {
            return Ok(written);
        }
        for p in plans {
            let group: Vec<&Block> = blocks
                .iter()
                .filter(|b| p.iter().any(|id| id == b.id()))
                .collect();
            let meta = write_compacted(data_dir, &group, opts.samples_per_chunk)?;
            for b in &group {
                delete_block(data_dir, b.id())?;
            }
            written.push(meta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockStats;

    const H: i64 = 3600 * 1000;

    fn meta(id: &str, min: i64, max: i64) -> BlockMeta {
        BlockMeta {
            id: id.into(),
            min_time: min,
            max_time: max,
            stats: BlockStats::default(),
            level: 1,
            sources: vec![id.into()],
            parents: vec![],
            resolution: 0,
            version: 1,
        }
    }

    #[test]
    fn ranges_follow_retention() {
        let o = CompactOptions::default();
        assert_eq!(ranges(&o), vec![2 * H, 6 * H, 18 * H]);
        let o = CompactOptions {
            retention_ms: 365 * DAY_MS,
            ..o
        };
        assert_eq!(
            ranges(&o),
            vec![2 * H, 6 * H, 18 * H, 54 * H, 162 * H, 486 * H]
        );
        assert!(ranges(&o).iter().all(|&r| r <= MAX_BLOCK_RANGE_MS));
        let o = CompactOptions {
            retention_ms: H,
            ..o
        };
        assert_eq!(ranges(&o), vec![2 * H]);
    }

    #[test]
    fn plans_complete_windows_then_overlaps() {
        let o = CompactOptions::default();
        // Three 2h blocks fill the first 6h window; the fourth is alone in the next one.
        let ms = vec![
            meta("a", 0, 2 * H),
            meta("b", 2 * H, 4 * H),
            meta("c", 4 * H, 6 * H),
            meta("d", 6 * H, 8 * H),
        ];
        assert_eq!(plan(&ms, &o), vec![vec!["a", "b", "c"]]);
        // An incomplete window that is also the newest is left alone.
        let ms = vec![meta("a", 0, 2 * H), meta("b", 2 * H, 4 * H)];
        assert!(plan(&ms, &o).is_empty());
        // ... but compacted once newer data exists.
        let ms = vec![
            meta("a", 0, 2 * H),
            meta("b", 2 * H, 4 * H),
            meta("d", 6 * H, 8 * H),
        ];
        assert_eq!(plan(&ms, &o), vec![vec!["a", "b"]]);
        // Overlaps win, and are grouped transitively.
        let ms = vec![
            meta("a", 0, 2 * H),
            meta("x", H, 3 * H),
            meta("b", 2 * H, 4 * H),
            meta("c", 8 * H, 10 * H),
        ];
        assert_eq!(plan(&ms, &o), vec![vec!["a", "x", "b"]]);
        // Negative times align too.
        let ms = vec![
            meta("a", -6 * H, -4 * H),
            meta("b", -4 * H, -2 * H),
            meta("c", -2 * H, 0),
        ];
        assert_eq!(plan(&ms, &o), vec![vec!["a", "b", "c"]]);
        // Resolutions are planned apart: overlapping raw and downsampled blocks are not merged.
        let mut down = meta("y", 0, 2 * H);
        down.resolution = 300_000;
        let ms = vec![
            meta("a", 0, 2 * H),
            down,
            meta("b", 2 * H, 4 * H),
            meta("d", 6 * H, 8 * H),
        ];
        assert_eq!(plan(&ms, &o), vec![vec!["a", "b"]]);
        // Next level: three 6h blocks make 18h.
        let ms = vec![
            meta("a", 0, 6 * H),
            meta("b", 6 * H, 12 * H),
            meta("c", 12 * H, 18 * H),
        ];
        assert_eq!(plan(&ms, &o), vec![vec!["a", "b", "c"]]);
        // The largest range is never compacted further.
        let ms = vec![
            meta("a", 0, 18 * H),
            meta("b", 18 * H, 36 * H),
            meta("c", 36 * H, 54 * H),
        ];
        assert!(plan(&ms, &o).is_empty());
    }

    #[test]
    fn merge_keeps_first_on_equal_timestamps() {
        let mut a = vec![Sample::new(1, 1.0), Sample::new(3, 3.0)];
        merge_into(
            &mut a,
            &[
                Sample::new(2, 2.0),
                Sample::new(3, 9.0),
                Sample::new(4, 4.0),
            ],
        );
        let got: Vec<_> = a.iter().map(|s| (s.t, s.v)).collect();
        assert_eq!(got, vec![(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]);
    }
}
