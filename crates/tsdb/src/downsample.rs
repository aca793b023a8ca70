//! Downsampling: blocks of 5 m and 1 h resolution holding, per series and window, the
//! aggregates count, sum, min, max, last (the raw value of the window's last sample) and a
//! counter value that accounts for resets (as Thanos).
//!
//! - [`aggregate_raw`] turns the raw samples of one series into an [`AggrSeries`];
//!   [`aggregate_aggr`] turns a 5 m [`AggrSeries`] into a 1 h one. Windows are aligned to the
//!   epoch (`⌊t / resolution⌋`); each aggregate sample carries the timestamp of the last raw
//!   sample of its window.
//! - [`downsample_block`] writes the downsampled version of one block, one series at a time
//!   from the source block's index (memory: one series, independent of the block's size), as a
//!   new block (temp dir, fsync, rename: complete or absent). Its `meta.json` has the target
//!   `resolution`, the source's `sources` and `level`, and `parents = [source id]`.
//! - [`plan`] picks the blocks due for downsampling; a block is due unless a block of the
//!   target resolution already holds all its sources (so re-running after a crash never
//!   duplicates data).
//! - [`DownsampledQuerier`] reads one aggregate of one resolution, stitching the counter across
//!   blocks.
//!
//! Byte layout of the aggregate chunks: `docs/format/block.md`; semantics: `docs/downsampling.md`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tidemark_model::{Labels, Matcher, Sample};
use tidemark_storage::{ListSeries, Querier, SelectHints, Series, SeriesSet};

use crate::block::{Block, BlockError, BlockMeta, BlockWriter, Result};
use crate::chunk::{self, ChunkEncoder};
use crate::index::SeriesEntry;
use crate::postings::postings_for_matchers;

/// Resolution of raw blocks.
pub const RES_RAW: i64 = 0;
/// 5 minutes.
pub const RES_5M: i64 = 300_000;
/// 1 hour.
pub const RES_1H: i64 = 3_600_000;
/// Version byte of an aggregate chunk.
pub const AGGR_CHUNK_VERSION: u8 = 2;
/// Flag: the raw value of the last sample follows the flags (8 bytes, f64 little endian).
const FLAG_RAW_LAST: u8 = 1;
/// Flag: sum, min and max are stored as whole chunks (their timestamp streams differ from the
/// count's; never expected, kept as a safe fallback).
const FLAG_FULL_STREAMS: u8 = 2;
/// Flag: the counter's window values are the max values (a counter without resets in the
/// block); only its leading raw-first sample, if any, is stored in the counter part.
const FLAG_COUNTER_IS_MAX: u8 = 4;
/// Flag: every window's last value is its max (data that never drops inside a window); the
/// last part is empty and the reader copies the max values.
const FLAG_LAST_IS_MAX: u8 = 8;

/// One of the aggregates a downsampled block stores per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aggregate {
    /// Number of raw samples in the window.
    Count,
    /// Sum of their values.
    Sum,
    Min,
    Max,
    /// Running total with counter resets compensated (use for rate / increase).
    Counter,
    /// The raw value of the window's last sample (use for plain selectors).
    Last,
}

impl Aggregate {
    pub const ALL: [Aggregate; 6] = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Counter,
        Aggregate::Last,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Counter => "counter",
            Aggregate::Last => "last",
        }
    }

    pub fn from_name(name: &str) -> Option<Aggregate> {
        Aggregate::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The aggregates of one series in one block (or chunk). `count`, `sum`, `min`, `max` and
/// `last` have one sample per window, at the timestamp of the window's last raw sample. `counter` has the
/// same samples, preceded by the raw first sample when the first window holds more than one
/// raw sample; its values are the raw values plus every value seen before a reset (a drop), so
/// the stream never drops inside the block. `raw_last` is the raw value of the last sample when
/// it differs from the last `counter` value (there was a reset): the reader needs it to tell
/// whether the next block starts with a reset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggrSeries {
    pub count: Vec<Sample>,
    pub sum: Vec<Sample>,
    pub min: Vec<Sample>,
    pub max: Vec<Sample>,
    pub last: Vec<Sample>,
    pub counter: Vec<Sample>,
    pub raw_last: Option<f64>,
}

impl AggrSeries {
    /// The samples of one aggregate.
    pub fn get(&self, a: Aggregate) -> &[Sample] {
        match a {
            Aggregate::Count => &self.count,
            Aggregate::Sum => &self.sum,
            Aggregate::Min => &self.min,
            Aggregate::Max => &self.max,
            Aggregate::Counter => &self.counter,
            Aggregate::Last => &self.last,
        }
    }

    /// The raw value of the last sample.
    pub fn last_raw(&self) -> Option<f64> {
        self.raw_last.or(self.counter.last().map(|s| s.v))
    }
}

/// Compensated counter per window of `input` (sorted, no NaN); `raw_last` overrides the raw
/// value of the last input sample (input that is itself a compensated stream).
fn counter_windows(
    input: &[Sample],
    raw_last: Option<f64>,
    res: i64,
) -> (Vec<Sample>, Option<f64>) {
    let mut out = Vec::new();
    let Some(first) = input.first() else {
        return (out, None);
    };
    let win = |t: i64| t.div_euclid(res);
    if input.get(1).is_some_and(|s| win(s.t) == win(first.t)) {
        out.push(*first);
    }
    let mut resets = 0.0;
    let mut prev = first.v;
    for (i, s) in input.iter().enumerate() {
        if s.v < prev {
            resets += prev;
        }
        prev = s.v;
        let last_in_window = input.get(i + 1).is_none_or(|n| win(n.t) != win(s.t));
        if last_in_window {
            out.push(Sample::new(s.t, s.v + resets));
        }
    }
    let raw_last = raw_last.unwrap_or(prev);
    let marker = match out.last() {
        Some(l) if l.v.to_bits() != raw_last.to_bits() => Some(raw_last),
        _ => None,
    };
    (out, marker)
}

/// Aggregates raw samples (sorted by time) into windows of `res` ms. NaN values (staleness
/// markers) are skipped.
pub fn aggregate_raw(samples: &[Sample], res: i64) -> AggrSeries {
    let input: Vec<Sample> = samples.iter().copied().filter(|s| !s.v.is_nan()).collect();
    let mut out = AggrSeries::default();
    let mut i = 0;
    while i < input.len() {
        let w = input[i].t.div_euclid(res);
        let (mut n, mut sum, mut min, mut max) = (0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        let mut last = input[i];
        while let Some(s) = input.get(i).filter(|s| s.t.div_euclid(res) == w) {
            n += 1.0;
            sum += s.v;
            min = min.min(s.v);
            max = max.max(s.v);
            last = *s;
            i += 1;
        }
        let t = last.t;
        out.count.push(Sample::new(t, n));
        out.sum.push(Sample::new(t, sum));
        out.min.push(Sample::new(t, min));
        out.max.push(Sample::new(t, max));
        out.last.push(last);
    }
    let (counter, raw_last) = counter_windows(&input, None, res);
    out.counter = counter;
    out.raw_last = raw_last;
    out
}

/// Aggregates a finer [`AggrSeries`] (e.g. 5 m) into windows of `res` ms (e.g. 1 h): counts
/// and sums add up, min and max of the mins and maxes, the last of the last window, the
/// counter continues.
pub fn aggregate_aggr(input: &AggrSeries, res: i64) -> AggrSeries {
    let mut out = AggrSeries::default();
    let n = input
        .count
        .len()
        .min(input.sum.len())
        .min(input.min.len())
        .min(input.max.len())
        .min(input.last.len());
    let mut i = 0;
    while i < n {
        let w = input.count[i].t.div_euclid(res);
        let (mut c, mut sum, mut min, mut max) = (0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        let mut t = input.count[i].t;
        let mut last = input.last[i].v;
        while i < n && input.count[i].t.div_euclid(res) == w {
            c += input.count[i].v;
            sum += input.sum[i].v;
            min = min.min(input.min[i].v);
            max = max.max(input.max[i].v);
            last = input.last[i].v;
            t = input.count[i].t;
            i += 1;
        }
        out.count.push(Sample::new(t, c));
        out.sum.push(Sample::new(t, sum));
        out.min.push(Sample::new(t, min));
        out.max.push(Sample::new(t, max));
        out.last.push(Sample::new(t, last));
    }
    let (counter, raw_last) = counter_windows(&input.counter, input.last_raw(), res);
    out.counter = counter;
    out.raw_last = raw_last;
    out
}

// ---------------------------------------------------------------------------------------------
// Aggregate chunks

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_uvarint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Length of the header and timestamp stream of an encoded XOR chunk (what chunks with the
/// same timestamps share).
fn ts_prefix_len(chunk: &[u8]) -> Option<usize> {
    let mut pos = 1;
    let n = get_uvarint(chunk, &mut pos)?;
    if n == 0 {
        return Some(pos);
    }
    let ts_len = usize::try_from(get_uvarint(chunk, &mut pos)?).ok()?;
    let end = pos.checked_add(ts_len)?;
    (end <= chunk.len()).then_some(end)
}

fn encode_stream(samples: &[Sample]) -> Result<Vec<u8>> {
    let mut enc = ChunkEncoder::new();
    for s in samples {
        enc.append(s.t, s.v)
            .map_err(|e| BlockError::Invalid(format!("encoding an aggregate: {e}")))?;
    }
    Ok(enc.bytes())
}

/// Encodes `a` as one aggregate chunk: `(min_time, max_time, bytes)`. Layout in
/// `docs/format/block.md` ("Downsampled blocks").
pub fn encode_aggr_chunk(a: &AggrSeries) -> Result<(i64, i64, Vec<u8>)> {
    let (Some(first), Some(last)) = (a.counter.first(), a.count.last()) else {
        return Err(BlockError::Invalid("empty aggregate series".into()));
    };
    let count = encode_stream(&a.count)?;
    let last_is_max = a.last.len() == a.max.len()
        && a.last
            .iter()
            .zip(&a.max)
            .all(|(l, m)| l.t == m.t && l.v.to_bits() == m.v.to_bits());
    let others = [
        encode_stream(&a.sum)?,
        encode_stream(&a.min)?,
        encode_stream(&a.max)?,
        if last_is_max {
            Vec::new()
        } else {
            encode_stream(&a.last)?
        },
    ];
    // A counter without resets: every window's counter value is its max.
    let lead = a.counter.len().saturating_sub(a.max.len());
    let counter_is_max = a.raw_last.is_none()
        && lead <= 1
        && a.counter[lead..].len() == a.max.len()
        && a.counter[lead..]
            .iter()
            .zip(&a.max)
            .all(|(c, m)| c.t == m.t && c.v.to_bits() == m.v.to_bits());
    let counter = if counter_is_max {
        encode_stream(&a.counter[..lead])?
    } else {
        encode_stream(&a.counter)?
    };
    let prefix = ts_prefix_len(&count)
        .ok_or_else(|| BlockError::Invalid("encoding an aggregate: bad count chunk".into()))?;
    let shared = others
        .iter()
        .all(|o| o.is_empty() || (o.len() >= prefix && o[..prefix] == count[..prefix]));
    let mut flags = 0;
    if a.raw_last.is_some() {
        flags |= FLAG_RAW_LAST;
    }
    if !shared {
        flags |= FLAG_FULL_STREAMS;
    }
    if counter_is_max {
        flags |= FLAG_COUNTER_IS_MAX;
    }
    if last_is_max {
        flags |= FLAG_LAST_IS_MAX;
    }
    let mut out = Vec::with_capacity(count.len() * 4 + counter.len() + 16);
    out.push(AGGR_CHUNK_VERSION);
    out.push(flags);
    if let Some(v) = a.raw_last {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_uvarint(&mut out, count.len() as u64);
    out.extend_from_slice(&count);
    for o in &others {
        let part = if shared && !o.is_empty() {
            &o[prefix..]
        } else {
            &o[..]
        };
        put_uvarint(&mut out, part.len() as u64);
        out.extend_from_slice(part);
    }
    put_uvarint(&mut out, counter.len() as u64);
    out.extend_from_slice(&counter);
    Ok((first.t.min(a.count[0].t), last.t, out))
}

/// Decodes an aggregate chunk written by [`encode_aggr_chunk`]. Errors say what was expected.
pub fn decode_aggr_chunk(data: &[u8]) -> std::result::Result<AggrSeries, String> {
    let version = *data.first().ok_or("aggregate chunk is empty")?;
    if version != AGGR_CHUNK_VERSION {
        return Err(format!(
            "aggregate chunk version: expected {AGGR_CHUNK_VERSION}, found {version}"
        ));
    }
    let flags = *data
        .get(1)
        .ok_or("aggregate chunk: expected a flags byte")?;
    let mut pos = 2;
    let mut out = AggrSeries::default();
    if flags & FLAG_RAW_LAST != 0 {
        let b: [u8; 8] = data
            .get(pos..pos + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or("aggregate chunk: expected 8 bytes of raw last value")?;
        out.raw_last = Some(f64::from_le_bytes(b));
        pos += 8;
    }
    let mut part = |what: &str| -> std::result::Result<&[u8], String> {
        let at = pos;
        let len = get_uvarint(data, &mut pos)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| format!("aggregate chunk: bad length of {what} at byte {at}"))?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                format!(
                    "aggregate chunk: {what} of {len} bytes at byte {pos}, only {} remain",
                    data.len() - pos
                )
            })?;
        let s = &data[pos..end];
        pos = end;
        Ok(s)
    };
    let count = part("count")?;
    let sum = part("sum")?;
    let min = part("min")?;
    let max = part("max")?;
    let last = part("last")?;
    let counter = part("counter")?;
    let prefix = ts_prefix_len(count).ok_or("aggregate chunk: bad count chunk header")?;
    let dec = |bytes: &[u8], what: &str, out: &mut Vec<Sample>| {
        chunk::decode_all(bytes, out).map_err(|e| format!("aggregate chunk: {what}: {e}"))
    };
    dec(count, "count", &mut out.count)?;
    for (bytes, what, dst) in [
        (sum, "sum", &mut out.sum),
        (min, "min", &mut out.min),
        (max, "max", &mut out.max),
        (last, "last", &mut out.last),
    ] {
        if bytes.is_empty() && flags & FLAG_LAST_IS_MAX != 0 && what == "last" {
            continue;
        }
        if flags & FLAG_FULL_STREAMS != 0 {
            dec(bytes, what, dst)?;
        } else {
            let mut full = Vec::with_capacity(prefix + bytes.len());
            full.extend_from_slice(&count[..prefix]);
            full.extend_from_slice(bytes);
            dec(&full, what, dst)?;
        }
    }
    dec(counter, "counter", &mut out.counter)?;
    if flags & FLAG_LAST_IS_MAX != 0 {
        out.last = out.max.clone();
    }
    if flags & FLAG_COUNTER_IS_MAX != 0 {
        out.counter.extend_from_slice(&out.max);
    }
    Ok(out)
}

/// Reads the aggregates of series `entry` of downsampled block `b` (all its chunks, in order).
pub fn read_aggr_series(b: &Block, entry: &SeriesEntry) -> Result<AggrSeries> {
    let mut out = AggrSeries::default();
    for c in &entry.chunks {
        let data = b.chunk_data(c)?;
        let a = decode_aggr_chunk(data).map_err(|what| BlockError::Meta {
            path: b.dir().join(crate::block::CHUNKS_DIR),
            what: format!("series {}: chunk {:#x}: {what}", entry.labels, c.chunk_ref),
        })?;
        if out.count.is_empty() {
            out = a;
        } else {
            // Several chunks per series are not written today; concatenate if found.
            out.count.extend(a.count);
            out.sum.extend(a.sum);
            out.min.extend(a.min);
            out.max.extend(a.max);
            out.last.extend(a.last);
            out.counter.extend(a.counter);
            out.raw_last = a.raw_last;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes the `resolution` version of block `src` into `data_dir` (raw → 5 m, or 5 m → 1 h),
/// one series at a time. Returns the new block's meta. The source is left alone.
pub fn downsample_block(data_dir: &Path, src: &Block, resolution: i64) -> Result<BlockMeta> {
    let m = src.meta();
    let from_raw = match (m.resolution, resolution) {
        (RES_RAW, r) if r > 0 => true,
        (from, to) if from > 0 && to > from && to % from == 0 => false,
        (from, to) => {
            return Err(BlockError::Invalid(format!(
                "block {}: cannot downsample resolution {from} to {to}",
                m.id
            )));
        }
    };
    let mut w = BlockWriter::new(data_dir, m.min_time, m.max_time)?;
    w.set_compaction(m.level, m.sources.clone(), vec![m.id.clone()]);
    w.set_resolution(resolution);
    let mut samples: Vec<Sample> = Vec::new();
    for id in 0..src.index().num_series() {
        let entry = src.index().series(id)?;
        let aggr = if from_raw {
            samples.clear();
            src.read_series_samples(&entry, &mut samples)?;
            if samples.windows(2).any(|p| p[1].t <= p[0].t) {
                samples.sort_by_key(|s| s.t);
                samples.dedup_by_key(|s| s.t);
            }
            aggregate_raw(&samples, resolution)
        } else {
            aggregate_aggr(&read_aggr_series(src, &entry)?, resolution)
        };
        if aggr.count.is_empty() {
            continue;
        }
        let windows = aggr.count.len() as u64;
        let c = encode_aggr_chunk(&aggr)?;
        w.add_series_opaque(&entry.labels, &[c], windows)?;
    }
    let meta = w.finish()?;
    tracing::info!(block = %meta.id, source = %m.id, resolution, series = meta.stats.num_series,
        windows = meta.stats.num_samples, bytes = meta.stats.num_bytes, "downsampled block");
    Ok(meta)
}

/// When blocks become due for downsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownsampleOptions {
    /// Raw blocks whose `max_time` is at most `newest - this` get a 5 m version (default 40h).
    pub to_5m_after_ms: i64,
    /// 5 m blocks whose `max_time` is at most `newest - this` get a 1 h version (default 10d).
    pub to_1h_after_ms: i64,
}

impl Default for DownsampleOptions {
    fn default() -> Self {
        DownsampleOptions {
            to_5m_after_ms: 40 * 3_600_000,
            to_1h_after_ms: 10 * 24 * 3_600_000,
        }
    }
}

/// The next coarser resolution, if any.
pub fn next_resolution(res: i64) -> Option<i64> {
    match res {
        RES_RAW => Some(RES_5M),
        RES_5M => Some(RES_1H),
        _ => None,
    }
}

/// True when some block of `resolution` holds every source of `m`.
pub fn covered(m: &BlockMeta, resolution: i64, metas: &[BlockMeta]) -> bool {
    metas
        .iter()
        .any(|o| o.resolution == resolution && m.sources.iter().all(|s| o.sources.contains(s)))
}

/// Blocks due for downsampling, as `(block id, target resolution)`, oldest first: raw blocks
/// older than `to_5m_after_ms` and 5 m blocks older than `to_1h_after_ms` (by `max_time`
/// against `newest`), unless a block of the target resolution already holds all their sources.
pub fn plan(metas: &[BlockMeta], newest: i64, opts: &DownsampleOptions) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut ms: Vec<&BlockMeta> = metas.iter().collect();
    ms.sort_by(|a, b| (a.min_time, &a.id).cmp(&(b.min_time, &b.id)));
    for m in ms {
        let (after, to) = match m.resolution {
            RES_RAW => (opts.to_5m_after_ms, RES_5M),
            RES_5M => (opts.to_1h_after_ms, RES_1H),
            _ => continue,
        };
        if m.max_time <= newest.saturating_sub(after) && !covered(m, to, metas) {
            out.push((m.id.clone(), to));
        }
    }
    out
}

/// Ids of the blocks of the same resolution as `new` that `new` makes obsolete (all their
/// sources are in `new`): delete them once `new` is durable.
pub fn obsoleted_by(new: &BlockMeta, metas: &[BlockMeta]) -> Vec<String> {
    let srcs: HashSet<&String> = new.sources.iter().collect();
    metas
        .iter()
        .filter(|m| {
            m.id != new.id
                && m.resolution == new.resolution
                && m.sources.iter().all(|s| srcs.contains(s))
        })
        .map(|m| m.id.clone())
        .collect()
}

/// Plans and writes every due downsampled block of `data_dir` (blocks opened from disk, as
/// [`crate::compact::run`] does), deleting the downsampled blocks each new one makes obsolete
/// once it is durable. `newest` is the newest time of the data (the head's, if any). Returns
/// the metas written. Safe to re-run after a crash at any point: a block is complete or
/// absent, a finished one is never written twice, and an obsolete one left behind is deleted
/// by [`crate::block::open_blocks`].
pub fn run(data_dir: &Path, newest: i64, opts: &DownsampleOptions) -> Result<Vec<BlockMeta>> {
    let mut written = Vec::new();
    for _pass in 0..3 {
        let (blocks, _problems) = crate::block::open_blocks(data_dir)?;
        let mut metas: Vec<BlockMeta> = blocks.iter().map(|b| b.meta().clone()).collect();
        let plans = plan(&metas, newest, opts);
        if plans.is_empty() {
            break;
        }
        for (id, res) in plans {
            let Some(src) = blocks.iter().find(|b| b.id() == id) else {
                continue;
            };
            let meta = downsample_block(data_dir, src, res)?;
            for o in obsoleted_by(&meta, &metas) {
                crate::block::delete_block(data_dir, &o)?;
                metas.retain(|m| m.id != o);
            }
            metas.push(meta.clone());
            written.push(meta);
        }
    }
    Ok(written)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Joins the parts (blocks, oldest first) of one series' aggregate into one stream. Counter:
/// each part starts at its raw first value; the next part continues from the previous one's
/// running total, adding the part's first value in full when it is below the previous raw
/// last value (a reset at the boundary) and the difference otherwise, so `increase` over the
/// stream is the raw increase.
pub fn stitch(parts: &[&AggrSeries], a: Aggregate) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    let mut prev: Option<(f64, f64)> = None; // (running total, raw last)
    for p in parts {
        let s = p.get(a);
        let Some(first) = s.first() else { continue };
        let base = if a == Aggregate::Counter {
            match prev {
                None => 0.0,
                Some((total, raw)) => {
                    let step = if first.v >= raw {
                        first.v - raw
                    } else {
                        first.v
                    };
                    total + step - first.v
                }
            }
        } else {
            0.0
        };
        for x in s {
            if out.last().is_none_or(|l| l.t < x.t) {
                out.push(Sample::new(x.t, x.v + base));
            }
        }
        if let (Some(l), Some(raw)) = (s.last(), p.last_raw()) {
            prev = Some((l.v + base, raw));
        }
    }
    out
}

/// A [`Querier`] over the downsampled blocks of one resolution that returns one aggregate per
/// series, under the series' own labels. `select` reads every matching series of every block
/// overlapping the range (memory: the result), stitches the blocks (see [`stitch`]) and then
/// keeps the samples inside `[mint, maxt]`.
#[derive(Debug, Clone)]
pub struct DownsampledQuerier {
    blocks: Vec<Block>,
    mint: i64,
    maxt: i64,
    aggr: Aggregate,
}

impl DownsampledQuerier {
    /// Over `blocks` (all of one resolution, any order), for `[mint, maxt]` (inclusive).
    pub fn new(mut blocks: Vec<Block>, mint: i64, maxt: i64, aggr: Aggregate) -> Self {
        blocks.retain(|b| b.meta().overlaps(mint, maxt));
        blocks.sort_by(|a, b| (a.meta().min_time, a.id()).cmp(&(b.meta().min_time, b.id())));
        DownsampledQuerier {
            blocks,
            mint,
            maxt,
            aggr,
        }
    }

    fn collect(
        &self,
        matchers: &[Matcher],
    ) -> tidemark_storage::Result<BTreeMap<Labels, Vec<AggrSeries>>> {
        let mut by_series: BTreeMap<Labels, Vec<AggrSeries>> = BTreeMap::new();
        for b in &self.blocks {
            for id in postings_for_matchers(b.index(), matchers)?.into_vec() {
                let entry = b.index().series(id)?;
                let a = read_aggr_series(b, &entry)?;
                by_series.entry(entry.labels).or_default().push(a);
            }
        }
        Ok(by_series)
    }
}

impl Querier for DownsampledQuerier {
    fn select(
        &self,
        _sorted: bool,
        hints: Option<&SelectHints>,
        matchers: &[Matcher],
    ) -> SeriesSet {
        let by_series = match self.collect(matchers) {
            Ok(m) => m,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let limit = hints.map_or(0, |h| h.limit);
        let mut out: Vec<Arc<dyn Series>> = Vec::new();
        for (labels, parts) in by_series {
            if limit > 0 && out.len() >= limit {
                break;
            }
            let refs: Vec<&AggrSeries> = parts.iter().collect();
            let mut samples = stitch(&refs, self.aggr);
            samples.retain(|s| s.t >= self.mint && s.t <= self.maxt);
            if !samples.is_empty() {
                out.push(Arc::new(ListSeries::new(labels, samples)));
            }
        }
        Box::new(out.into_iter().map(Ok))
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        let mut set = std::collections::BTreeSet::new();
        for (labels, _) in self.collect(matchers)? {
            if let Some(v) = labels.get(name) {
                set.insert(v.to_string());
            }
        }
        let mut v: Vec<String> = set.into_iter().collect();
        if limit > 0 {
            v.truncate(limit);
        }
        Ok(v)
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        let mut set = std::collections::BTreeSet::new();
        for (labels, _) in self.collect(matchers)? {
            for l in labels.iter() {
                set.insert(l.name.to_string());
            }
        }
        let mut v: Vec<String> = set.into_iter().collect();
        if limit > 0 {
            v.truncate(limit);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    #[test]
    fn counter_with_resets_and_marker() {
        // Window 0: 10, 20, 5 (reset) → 25 + leading 10; window 1: 7, 1 (reset) → 20+7+1 = 28.
        let raw = [s(0, 10.0), s(1, 20.0), s(2, 5.0), s(10, 7.0), s(11, 1.0)];
        let a = aggregate_raw(&raw, 10);
        assert_eq!(a.counter, vec![s(0, 10.0), s(2, 25.0), s(11, 28.0)]);
        assert_eq!(a.raw_last, Some(1.0));
        assert_eq!(a.count, vec![s(2, 3.0), s(11, 2.0)]);
        assert_eq!(a.min, vec![s(2, 5.0), s(11, 1.0)]);
        assert_eq!(a.max, vec![s(2, 20.0), s(11, 7.0)]);
        assert_eq!(a.sum, vec![s(2, 35.0), s(11, 8.0)]);
        assert_eq!(a.last, vec![s(2, 5.0), s(11, 1.0)]);
        let (mint, maxt, bytes) = encode_aggr_chunk(&a).unwrap();
        assert_eq!((mint, maxt), (0, 11));
        assert_eq!(decode_aggr_chunk(&bytes).unwrap(), a);
        // Next block: starts at 3 (above raw last 1: no reset): +2.
        let b = aggregate_raw(&[s(20, 3.0)], 10);
        assert_eq!(b.raw_last, None);
        let st = stitch(&[&a, &b], Aggregate::Counter);
        assert_eq!(st.last(), Some(&s(20, 30.0)));
        // 1 h from these windows: one window of both.
        let c = aggregate_aggr(&a, 100);
        assert_eq!(c.count, vec![s(11, 5.0)]);
        assert_eq!(c.last, vec![s(11, 1.0)]);
        assert_eq!(c.counter, vec![s(0, 10.0), s(11, 28.0)]);
        assert_eq!(c.raw_last, Some(1.0));
    }

    #[test]
    fn counter_without_resets_is_stored_as_max() {
        let raw: Vec<Sample> = (0..50).map(|i| s(i * 3, (i * i) as f64)).collect();
        let a = aggregate_raw(&raw, 10);
        assert_eq!(a.counter.len(), a.max.len() + 1, "leading sample");
        let (_, _, bytes) = encode_aggr_chunk(&a).unwrap();
        assert_eq!(bytes[1] & FLAG_COUNTER_IS_MAX, FLAG_COUNTER_IS_MAX);
        assert_eq!(decode_aggr_chunk(&bytes).unwrap(), a);
        let single = aggregate_raw(&[s(5, 1.0), s(15, 2.0)], 10);
        let (_, _, bytes) = encode_aggr_chunk(&single).unwrap();
        assert_eq!(decode_aggr_chunk(&bytes).unwrap(), single);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode_aggr_chunk(&[]).is_err());
        assert!(decode_aggr_chunk(&[9, 0]).is_err());
        assert!(decode_aggr_chunk(&[1, 0]).is_err(), "version 1 is not read");
        assert!(decode_aggr_chunk(&[2, 1, 0]).is_err());
        assert!(decode_aggr_chunk(&[2, 0, 200]).is_err());
    }
}
