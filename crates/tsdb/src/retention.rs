//! Retention: deleting whole blocks that are too old or that make the data too big.
//!
//! - By time: a block goes once *every* sample in it is older than the newest data minus the
//!   retention, i.e. `block.max_time (exclusive) <= newest - retention_time`, where `newest` is
//!   the larger of the head's max time and the newest block's last millisecond. Every sample with
//!   `t >= newest - retention_time` is always kept (as Prometheus does, a block that still holds
//!   one such sample is kept whole).
//! - By size: while the blocks together are larger than `retention_size_bytes`, the oldest block
//!   (smallest min time) is deleted. 0 turns it off.
//!
//! - Per resolution ([`select_by_resolution`]): raw, 5 m and 1 h blocks each have their own
//!   retention by time; with downsampling on, a block is kept past its retention until its
//!   coarser version exists (docs/downsampling.md).
//!
//! - Per metric ([`RetentionRule`], [`apply_rules`]): series matching a rule's label matchers
//!   keep each resolution's data for at most the rule's time. Block-granular, like the
//!   retention by time: once a block is entirely older than a rule's window
//!   (`max_time <= newest - rule retention`), it is rewritten without the matching series
//!   (a new block with `parents = [old]`, so a crash in between leaves exactly one of the two);
//!   a block that still holds one sample inside the window keeps them. docs/downsampling.md.
//!
//! Only blocks are ever deleted, never the head. Deletion renames the block to
//! `<id>.tmp-for-deletion` first, so a crash never leaves a half-deleted block behind.

use std::path::Path;

use tidemark_model::{Matcher, Sample};

use crate::block::{Block, BlockError, BlockMeta, BlockWriter, Result, delete_block, dir_size};
use crate::postings::postings_for_matchers;

/// Retention by time per resolution (0 = keep forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolutionRetention {
    /// Raw blocks (default 15d).
    pub raw_ms: i64,
    /// 5 m blocks (default 90d).
    pub res_5m_ms: i64,
    /// 1 h blocks (default 365d).
    pub res_1h_ms: i64,
    /// When true, a raw (5 m) block past its retention is kept until a 5 m (1 h) block holds
    /// its sources, unless that coarser block would itself be past its retention.
    pub downsampling: bool,
}

impl ResolutionRetention {
    /// The same retention for every resolution, no waiting for downsampled versions (what
    /// [`select`] applies).
    pub fn uniform(ms: i64) -> Self {
        ResolutionRetention {
            raw_ms: ms,
            res_5m_ms: ms,
            res_1h_ms: ms,
            downsampling: false,
        }
    }

    /// Retention of blocks of `resolution` (other resolutions use the 1 h one).
    pub fn of(&self, resolution: i64) -> i64 {
        match resolution {
            0 => self.raw_ms,
            crate::downsample::RES_5M => self.res_5m_ms,
            _ => self.res_1h_ms,
        }
    }
}

/// Ids of the blocks to delete (pure: sizes given per block, same order as `blocks`).
pub fn select(
    blocks: &[BlockMeta],
    sizes: &[u64],
    retention_time_ms: i64,
    retention_size_bytes: u64,
    head_max_time: i64,
) -> Vec<String> {
    select_by_resolution(
        blocks,
        sizes,
        &ResolutionRetention::uniform(retention_time_ms),
        retention_size_bytes,
        head_max_time,
    )
}

/// Like [`select`], with a retention by time per resolution: a block of resolution `r` goes
/// when `max_time <= newest - retention(r)` and (with `downsampling`) its next coarser version
/// exists or would itself be past its retention.
pub fn select_by_resolution(
    blocks: &[BlockMeta],
    sizes: &[u64],
    retention: &ResolutionRetention,
    retention_size_bytes: u64,
    head_max_time: i64,
) -> Vec<String> {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&blocks[a], &blocks[b]);
        (a.min_time, a.max_time, &a.id).cmp(&(b.min_time, b.max_time, &b.id))
    });
    let mut delete = vec![false; blocks.len()];
    let newest = blocks
        .iter()
        .map(|b| b.max_time.saturating_sub(1))
        .max()
        .unwrap_or(i64::MIN)
        .max(head_max_time);
    let expired = |resolution: i64, max_time: i64| {
        let ms = retention.of(resolution);
        ms > 0 && newest != i64::MIN && max_time <= newest.saturating_sub(ms)
    };
    for (i, b) in blocks.iter().enumerate() {
        if !expired(b.resolution, b.max_time) {
            continue;
        }
        let keep_for_downsampling = retention.downsampling
            && crate::downsample::next_resolution(b.resolution).is_some_and(|next| {
                !expired(next, b.max_time) && !crate::downsample::covered(b, next, blocks)
            });
        if !keep_for_downsampling {
            delete[i] = true;
        }
    }
    if retention_size_bytes > 0 {
        let mut total: u64 = (0..blocks.len())
            .filter(|&i| !delete[i])
            .map(|i| sizes.get(i).copied().unwrap_or(0))
            .sum();
        for &i in &order {
            if total <= retention_size_bytes {
                break;
            }
            if !delete[i] {
                delete[i] = true;
                total = total.saturating_sub(sizes.get(i).copied().unwrap_or(0));
            }
        }
    }
    order
        .into_iter()
        .filter(|&i| delete[i])
        .map(|i| blocks[i].id.clone())
        .collect()
}

/// Applies retention to the blocks of `data_dir` described by `blocks`: deletes what
/// [`select`] picks (sizes measured on disk) and returns the deleted ids, oldest first.
pub fn apply(
    data_dir: &Path,
    blocks: &[BlockMeta],
    retention_time_ms: i64,
    retention_size_bytes: u64,
    head_max_time: i64,
) -> Result<Vec<String>> {
    apply_by_resolution(
        data_dir,
        blocks,
        &ResolutionRetention::uniform(retention_time_ms),
        retention_size_bytes,
        head_max_time,
    )
}

/// [`apply`] with a retention by time per resolution ([`select_by_resolution`]).
pub fn apply_by_resolution(
    data_dir: &Path,
    blocks: &[BlockMeta],
    retention: &ResolutionRetention,
    retention_size_bytes: u64,
    head_max_time: i64,
) -> Result<Vec<String>> {
    let mut sizes = Vec::with_capacity(blocks.len());
    for b in blocks {
        let dir = data_dir.join(&b.id);
        sizes.push(if dir.exists() { dir_size(&dir)? } else { 0 });
    }
    let ids = select_by_resolution(
        blocks,
        &sizes,
        retention,
        retention_size_bytes,
        head_max_time,
    );
    for id in &ids {
        if data_dir.join(id).exists() {
            delete_block(data_dir, id)?;
        }
        tracing::info!(block = %id, "deleted block beyond retention");
    }
    Ok(ids)
}

/// A per-metric retention rule: series matching every one of `matchers` keep data of a
/// resolution for at most that resolution's time (`None` or 0: only the resolution's global
/// retention applies, as 0 means "no limit" everywhere else). A rule can only shorten
/// retention.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionRule {
    pub matchers: Vec<Matcher>,
    pub raw_ms: Option<i64>,
    pub res_5m_ms: Option<i64>,
    pub res_1h_ms: Option<i64>,
}

impl RetentionRule {
    /// The rule's retention for blocks of `resolution` (other resolutions use the 1 h one).
    pub fn of(&self, resolution: i64) -> Option<i64> {
        match resolution {
            0 => self.raw_ms,
            crate::downsample::RES_5M => self.res_5m_ms,
            _ => self.res_1h_ms,
        }
    }
}

/// Indices of the rules whose window block `m` lies entirely outside of, given the newest
/// time of the data: `m.max_time <= newest - retention` (the block's samples are all older).
pub fn rules_due(m: &BlockMeta, rules: &[RetentionRule], newest: i64) -> Vec<usize> {
    rules
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.of(m.resolution).is_some_and(|ms| {
                newest != i64::MIN && ms > 0 && m.max_time <= newest.saturating_sub(ms)
            })
        })
        .map(|(i, _)| i)
        .collect()
}

/// What [`apply_rules`] did to one block.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRewrite {
    /// The block rewritten (delete it once the new one is in place).
    pub old: String,
    /// The new block, or `None` when no series was left (no block written).
    pub new: Option<BlockMeta>,
    /// Series dropped.
    pub series_dropped: u64,
}

/// Rewrites each of `blocks` that holds series of a rule due for it ([`rules_due`]) without
/// those series (raw blocks: without the samples their tombstones delete too; downsampled
/// blocks: aggregate chunks copied as they are). The new block keeps range, level, sources and
/// resolution, with `parents = [old id]`. The old blocks are left for the caller to swap
/// out and delete; after a crash in between, `open_blocks` deletes them (a parent of a block
/// of its resolution). A block without matching series is not touched, so re-running is cheap.
pub fn apply_rules(
    data_dir: &Path,
    blocks: &[Block],
    rules: &[RetentionRule],
    newest: i64,
) -> Result<Vec<RuleRewrite>> {
    let mut out = Vec::new();
    for b in blocks {
        let due = rules_due(b.meta(), rules, newest);
        if due.is_empty() {
            continue;
        }
        let mut drop: Vec<u64> = Vec::new();
        for &i in &due {
            let p = postings_for_matchers(b.index(), &rules[i].matchers).map_err(|e| {
                BlockError::Invalid(format!("block {}: retention rule matchers: {e}", b.id()))
            })?;
            drop.extend(p.iter());
        }
        drop.sort_unstable();
        drop.dedup();
        if drop.is_empty() {
            continue;
        }
        let new = rewrite_without_series(data_dir, b, &drop)?;
        tracing::info!(block = %b.id(), new_block = ?new.as_ref().map(|m| m.id.clone()),
            series = drop.len(), "retention rules dropped series");
        out.push(RuleRewrite {
            old: b.id().to_string(),
            new,
            series_dropped: drop.len() as u64,
        });
    }
    Ok(out)
}

/// Writes a copy of `block` without the series `drop` (sorted ids). `None` when nothing is
/// left.
fn rewrite_without_series(
    data_dir: &Path,
    block: &Block,
    drop: &[u64],
) -> Result<Option<BlockMeta>> {
    let m = block.meta();
    let mut w = BlockWriter::new(data_dir, m.min_time, m.max_time)?;
    w.set_compaction(m.level, m.sources.clone(), vec![m.id.clone()]);
    w.set_resolution(m.resolution);
    w.set_samples_per_chunk(if m.level <= 1 {
        crate::block::HEAD_BLOCK_SAMPLES_PER_CHUNK
    } else {
        crate::compact::COMPACTED_SAMPLES_PER_CHUNK
    });
    let mut samples: Vec<Sample> = Vec::new();
    let mut ts_refs = std::collections::HashMap::new();
    for id in 0..block.index().num_series() {
        if drop.binary_search(&id).is_ok() {
            continue;
        }
        let e = block.index().series(id)?;
        if m.resolution == 0 {
            samples.clear();
            block.read_live_series_samples(id, &e, &mut samples)?;
            w.add_samples(&e.labels, &samples)?;
        } else {
            let mut chunks = Vec::with_capacity(e.chunks.len());
            let mut windows = 0;
            for c in &e.chunks {
                let (chunk, n) =
                    crate::downsample::copy_aggr_chunk(block, &e.labels, c, &mut w, &mut ts_refs)?;
                windows += n;
                chunks.push(chunk);
            }
            w.add_series_opaque(&e.labels, &chunks, windows)?;
        }
    }
    if w.num_series() == 0 {
        return Ok(None);
    }
    Ok(Some(w.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockStats;

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
    fn by_time() {
        let bs = vec![meta("a", 0, 100), meta("b", 100, 200), meta("c", 200, 300)];
        // newest = head max 350; cutoff 150: a (max 100) goes, b (samples up to 199) stays.
        assert_eq!(select(&bs, &[0; 3], 200, 0, 350), vec!["a"]);
        // Exactly at the border: a's last possible sample 99 is older than cutoff 100.
        assert_eq!(select(&bs, &[0; 3], 250, 0, 350), vec!["a"]);
        assert!(select(&bs, &[0; 3], 251, 0, 350).is_empty());
        // Empty head: the newest block decides.
        assert_eq!(
            select(&bs, &[0; 3], 100, 0, i64::MIN),
            vec!["a"],
            "b may hold 199 = 299 - 100"
        );
        assert_eq!(select(&bs, &[0; 3], 99, 0, i64::MIN), vec!["a", "b"]);
        assert!(select(&bs, &[0; 3], 0, 0, 1000).is_empty(), "0 disables");
    }

    #[test]
    fn by_size_oldest_first() {
        let bs = vec![meta("c", 200, 300), meta("a", 0, 100), meta("b", 100, 200)];
        assert_eq!(select(&bs, &[10, 10, 10], 0, 25, 0), vec!["a"]);
        assert_eq!(select(&bs, &[10, 10, 10], 0, 10, 0), vec!["a", "b"]);
        assert_eq!(select(&bs, &[10, 10, 10], 0, 9, 0), vec!["a", "b", "c"]);
        assert!(select(&bs, &[10, 10, 10], 0, 30, 0).is_empty());
        // Time first, then size counts what is left.
        assert_eq!(select(&bs, &[10, 10, 10], 150, 15, 300), vec!["a", "b"]);
    }
}
