//! Backfill: samples of any age, in any order, into new blocks aligned to the block range (what
//! `promtool tsdb create-blocks-from openmetrics` does). Parsing the text belongs to the scrape
//! crate; the binary feeds the parsed samples here.
//!
//! Memory stays bounded: samples are buffered per block window and, past a budget, spilled to
//! temporary files (one per window, in `<dir>/<id>.tmp-for-import/`); each window is then read
//! back, sorted and written as one block. Only the label sets of all series stay in memory.
//! A sample given twice for the same series and timestamp is kept once; when the values differ,
//! the one given last wins. Blocks that overlap existing blocks are merged by compaction later.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tidemark_model::{Labels, Sample};

use crate::block::{BlockError, BlockMeta, BlockWriter, Result, io_err, new_block_id};

/// Suffix of the spill directory of an import in progress (removed by `open_blocks` after a
/// crash).
pub const TMP_IMPORT_SUFFIX: &str = ".tmp-for-import";
/// Samples buffered in memory before spilling to disk (20 bytes each).
const SPILL_AT: usize = 4 << 20;
const RECORD_LEN: usize = 20;

/// Removes the spill directory however the import ends.
struct SpillDir(PathBuf);

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes `samples` into new blocks in `dir`, one per `block_range_ms`-aligned window that has
/// data. Returns the new blocks' metas in time order.
pub fn import_samples(
    dir: &Path,
    samples: impl Iterator<Item = (Labels, i64, f64)>,
    block_range_ms: i64,
) -> Result<Vec<BlockMeta>> {
    import_with_budget(dir, samples, block_range_ms, SPILL_AT)
}

/// [`import_samples`] with the in-memory budget (in samples) given, for tests.
#[doc(hidden)]
pub fn import_with_budget(
    dir: &Path,
    samples: impl Iterator<Item = (Labels, i64, f64)>,
    block_range_ms: i64,
    spill_at: usize,
) -> Result<Vec<BlockMeta>> {
    if block_range_ms <= 0 {
        return Err(BlockError::Invalid(format!(
            "block range must be positive, got {block_range_ms} ms"
        )));
    }
    fs::create_dir_all(dir).map_err(io_err(dir, "create dir"))?;
    let spill = SpillDir(dir.join(format!("{}{TMP_IMPORT_SUFFIX}", new_block_id())));
    let mut ids: HashMap<Labels, u32> = HashMap::new();
    let mut series: Vec<Labels> = Vec::new();
    let mut windows: BTreeMap<i64, Vec<(u32, i64, f64)>> = BTreeMap::new();
    let mut spilled: BTreeMap<i64, PathBuf> = BTreeMap::new();
    let mut buffered = 0usize;
    let mut total = 0u64;
    for (labels, t, v) in samples {
        if labels.is_empty() {
            return Err(BlockError::Invalid(format!(
                "sample at {t} has an empty label set"
            )));
        }
        let id = match ids.get(&labels) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(series.len()).map_err(|_| {
                    BlockError::Invalid("more than 2^32 series in one import".into())
                })?;
                ids.insert(labels.clone(), id);
                series.push(labels);
                id
            }
        };
        windows
            .entry(t.div_euclid(block_range_ms))
            .or_default()
            .push((id, t, v));
        buffered += 1;
        total += 1;
        if buffered >= spill_at {
            spill_windows(&spill.0, &mut windows, &mut spilled)?;
            buffered = 0;
        }
    }
    drop(ids);
    // Rank of each series in label order, so that each window is written sorted.
    let mut order: Vec<u32> = (0..series.len() as u32).collect();
    order.sort_by(|&a, &b| series[a as usize].cmp(&series[b as usize]));
    let mut rank = vec![0u32; series.len()];
    for (r, &id) in order.iter().enumerate() {
        rank[id as usize] = r as u32;
    }

    let mut keys: Vec<i64> = windows.keys().chain(spilled.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut metas = Vec::with_capacity(keys.len());
    for w in keys {
        let mut recs = match spilled.get(&w) {
            Some(path) => read_spill(path)?,
            None => Vec::new(),
        };
        recs.extend(windows.remove(&w).unwrap_or_default());
        let (Some(mint), Some(maxt)) = (
            w.checked_mul(block_range_ms),
            (w + 1).checked_mul(block_range_ms),
        ) else {
            return Err(BlockError::Invalid(format!(
                "timestamps in window {w} of {block_range_ms} ms are too close to the i64 limits"
            )));
        };
        // Stable: for the same series and timestamp the sample given last comes last.
        recs.sort_by_key(|&(id, t, _)| (rank[id as usize], t));
        let mut writer = BlockWriter::new(dir, mint, maxt)?;
        let mut cur: Vec<Sample> = Vec::new();
        let mut i = 0;
        while i < recs.len() {
            let id = recs[i].0;
            cur.clear();
            while i < recs.len() && recs[i].0 == id {
                let (_, t, v) = recs[i];
                match cur.last_mut() {
                    Some(last) if last.t == t => last.v = v,
                    _ => cur.push(Sample::new(t, v)),
                }
                i += 1;
            }
            writer.add_samples(&series[id as usize], &cur)?;
        }
        let meta = writer.finish()?;
        tracing::info!(block = %meta.id, min_time = mint, max_time = maxt, series = meta.stats.num_series,
            samples = meta.stats.num_samples, "imported block");
        metas.push(meta);
    }
    tracing::info!(samples = total, blocks = metas.len(), "import done");
    Ok(metas)
}

fn spill_windows(
    spill_dir: &Path,
    windows: &mut BTreeMap<i64, Vec<(u32, i64, f64)>>,
    spilled: &mut BTreeMap<i64, PathBuf>,
) -> Result<()> {
    fs::create_dir_all(spill_dir).map_err(io_err(spill_dir, "create dir"))?;
    for (w, recs) in std::mem::take(windows) {
        let path = spill_dir.join(format!("{w}"));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let mut out = BufWriter::with_capacity(1 << 16, f);
        for (id, t, v) in recs {
            let mut rec = [0u8; RECORD_LEN];
            rec[..4].copy_from_slice(&id.to_le_bytes());
            rec[4..12].copy_from_slice(&t.to_le_bytes());
            rec[12..].copy_from_slice(&v.to_bits().to_le_bytes());
            out.write_all(&rec).map_err(io_err(&path, "write"))?;
        }
        out.flush().map_err(io_err(&path, "write"))?;
        spilled.insert(w, path);
    }
    Ok(())
}

fn read_spill(path: &Path) -> Result<Vec<(u32, i64, f64)>> {
    let f = File::open(path).map_err(io_err(path, "open"))?;
    let len = f.metadata().map_err(io_err(path, "stat"))?.len() as usize;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let mut out = Vec::with_capacity(len / RECORD_LEN);
    let mut rec = [0u8; RECORD_LEN];
    for _ in 0..len / RECORD_LEN {
        r.read_exact(&mut rec).map_err(io_err(path, "read"))?;
        let id = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&rec[4..12]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&rec[12..]);
        out.push((
            id,
            i64::from_le_bytes(t),
            f64::from_bits(u64::from_le_bytes(v)),
        ));
    }
    Ok(out)
}
