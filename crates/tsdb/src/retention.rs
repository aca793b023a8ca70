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
//! Only blocks are ever deleted, never the head. Deletion renames the block to
//! `<id>.tmp-for-deletion` first, so a crash never leaves a half-deleted block behind.

use std::path::Path;

use crate::block::{BlockMeta, Result, delete_block, dir_size};

/// Ids of the blocks to delete (pure: sizes given per block, same order as `blocks`).
pub fn select(
    blocks: &[BlockMeta],
    sizes: &[u64],
    retention_time_ms: i64,
    retention_size_bytes: u64,
    head_max_time: i64,
) -> Vec<String> {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&blocks[a], &blocks[b]);
        (a.min_time, a.max_time, &a.id).cmp(&(b.min_time, b.max_time, &b.id))
    });
    let mut delete = vec![false; blocks.len()];
    if retention_time_ms > 0 {
        let newest = blocks
            .iter()
            .map(|b| b.max_time.saturating_sub(1))
            .max()
            .unwrap_or(i64::MIN)
            .max(head_max_time);
        if newest != i64::MIN {
            let cutoff = newest.saturating_sub(retention_time_ms);
            for (i, b) in blocks.iter().enumerate() {
                if b.max_time <= cutoff {
                    delete[i] = true;
                }
            }
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
    let mut sizes = Vec::with_capacity(blocks.len());
    for b in blocks {
        let dir = data_dir.join(&b.id);
        sizes.push(if dir.exists() { dir_size(&dir)? } else { 0 });
    }
    let ids = select(
        blocks,
        &sizes,
        retention_time_ms,
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
