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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tidemark_model::{Labels, Matcher, Sample};
use tidemark_storage::{Querier, SelectHints, Series, SeriesSet};

use crate::block::{Block, BlockError, BlockMeta, BlockWriter, Result};
use crate::chunk::{self, ChunkEncoder};
use crate::index::{ChunkMeta, SeriesEntry};
use crate::postings::postings_for_matchers;

/// Resolution of raw blocks.
pub const RES_RAW: i64 = 0;
/// 5 minutes.
pub const RES_5M: i64 = 300_000;
/// 1 hour.
pub const RES_1H: i64 = 3_600_000;
/// Version byte of the aggregate chunks written (also their chunk record's encoding byte): 4,
/// whose window timestamps are a chunk of the block shared by the series that have the same
/// ones. Version 3 (timestamps in each chunk) is still read.
pub const AGGR_CHUNK_VERSION: u8 = 4;
/// The previous version, still read.
const AGGR_CHUNK_V3: u8 = 3;
/// Flag: the values are decimals stored as integer residuals (see `docs/format/block.md`).
const FLAG_DECIMAL: u8 = 1;
/// Flag (plain form): every window's max equals its last value; the max part is absent.
const FLAG_MAX_IS_LAST: u8 = 2;
/// Flag (plain form): every window's counter value equals its last value (no reset); the
/// counter part is absent.
const FLAG_COUNTER_IS_LAST: u8 = 4;

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

// ---------------------------------------------------------------------------------------------
// Exact decimal sums

/// Largest decimal exponent of the exact sums.
const MAX_DEC_EXP: u32 = 15;
/// Exact sums stay below this (15 significant digits round-trip through f64 uniquely, so a
/// 1 h sum recovers the 5 m sums' decimals exactly).
const MAX_DEC_SUM: i128 = 1_000_000_000_000_000;
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// `v` as `m / 10^e` (the smallest such `e ≤ 15`, `|m| < 2^53`) when `m / 10^e` rounds to
/// exactly `v`: the decimal that exposition text wrote.
fn to_decimal(v: f64) -> Option<(u32, i64)> {
    if !v.is_finite() {
        return None;
    }
    (0..=MAX_DEC_EXP).find_map(|e| {
        let p = POW10[e as usize];
        let x = v * p;
        if x.abs() >= 9_007_199_254_740_992.0 {
            return None;
        }
        let m = x.round() as i64;
        ((m as f64 / p).to_bits() == v.to_bits()).then_some((e, m))
    })
}

/// A sum kept both as a running f64 sum and, while every term is a decimal, exactly (scaled
/// integer). [`DecSum::value`] is the exact sum correctly rounded to f64 when it exists and is
/// below 10^15 units, else the f64 sum; either way a deterministic function of the terms.
#[derive(Debug, Clone, Copy)]
struct DecSum {
    float: f64,
    exact: Option<(u32, i128)>,
}

impl DecSum {
    const ZERO: DecSum = DecSum {
        float: 0.0,
        exact: Some((0, 0)),
    };

    fn add(&mut self, v: f64) {
        self.float += v;
        self.exact = match (self.exact, to_decimal(v)) {
            (Some((e1, a)), Some((e2, m))) => {
                let e = e1.max(e2);
                let scale = |x: i128, from: u32| x.checked_mul(10i128.pow(e - from));
                scale(a, e1)
                    .zip(scale(i128::from(m), e2))
                    .and_then(|(a, m)| a.checked_add(m))
                    .map(|s| (e, s))
            }
            _ => None,
        };
    }

    fn plus(mut self, v: f64) -> f64 {
        self.add(v);
        self.value()
    }

    fn value(&self) -> f64 {
        match self.exact {
            // Both exact in f64 (below 2^53 and 10^15), so the division rounds once.
            Some((e, s)) if s.abs() < MAX_DEC_SUM => s as f64 / POW10[e as usize],
            _ => self.float,
        }
    }
}

/// Compensated counter per window of `input` (sorted, no NaN); `raw_last` overrides the raw
/// value of the last input sample (input that is itself a compensated stream). The running
/// total of the values before drops is a [`DecSum`], so decimal counters stay exact.
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
    let mut resets = DecSum::ZERO;
    let mut any_reset = false;
    let mut prev = first.v;
    for (i, s) in input.iter().enumerate() {
        if s.v < prev {
            resets.add(prev);
            any_reset = true;
        }
        prev = s.v;
        let last_in_window = input.get(i + 1).is_none_or(|n| win(n.t) != win(s.t));
        if last_in_window {
            let v = if any_reset { resets.plus(s.v) } else { s.v };
            out.push(Sample::new(s.t, v));
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
        let (mut n, mut sum, mut min, mut max) =
            (0.0, DecSum::ZERO, f64::INFINITY, f64::NEG_INFINITY);
        let mut last = input[i];
        while let Some(s) = input.get(i).filter(|s| s.t.div_euclid(res) == w) {
            n += 1.0;
            sum.add(s.v);
            min = min.min(s.v);
            max = max.max(s.v);
            last = *s;
            i += 1;
        }
        let t = last.t;
        out.count.push(Sample::new(t, n));
        out.sum.push(Sample::new(t, sum.value()));
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
        let (mut c, mut sum, mut min, mut max) =
            (0.0, DecSum::ZERO, f64::INFINITY, f64::NEG_INFINITY);
        let mut t = input.count[i].t;
        let mut last = input.last[i].v;
        while i < n && input.count[i].t.div_euclid(res) == w {
            c += input.count[i].v;
            sum.add(input.sum[i].v);
            min = min.min(input.min[i].v);
            max = max.max(input.max[i].v);
            last = input.last[i].v;
            t = input.count[i].t;
            i += 1;
        }
        out.count.push(Sample::new(t, c));
        out.sum.push(Sample::new(t, sum.value()));
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

/// The parts of an aggregate chunk after the header, in order.
struct ChunkWriter<'a> {
    out: Vec<u8>,
    /// The count chunk's timestamps and its header/timestamp prefix length.
    ts: &'a [Sample],
    prefix: usize,
    count: Vec<u8>,
}

impl ChunkWriter<'_> {
    fn part(&mut self, bytes: &[u8]) {
        put_uvarint(&mut self.out, bytes.len() as u64);
        self.out.extend_from_slice(bytes);
    }

    /// A value stream: one value per window, at the count's timestamps; stored without the
    /// header and timestamp stream it shares with the count chunk.
    fn values(&mut self, values: impl Iterator<Item = f64>) -> Result<()> {
        let bytes = self.value_bytes(values)?;
        self.part(&bytes);
        Ok(())
    }

    fn value_bytes(&self, values: impl Iterator<Item = f64>) -> Result<Vec<u8>> {
        let samples: Vec<Sample> = self
            .ts
            .iter()
            .zip(values)
            .map(|(t, v)| Sample::new(t.t, v))
            .collect();
        let full = encode_stream(&samples)?;
        if full.len() < self.prefix || full[..self.prefix] != self.count[..self.prefix] {
            return Err(BlockError::Invalid(
                "encoding an aggregate: value stream does not share the count's timestamps".into(),
            ));
        }
        Ok(full[self.prefix..].to_vec())
    }
}

/// `v` in units of `10^-e`, when it is a decimal with at most `e` decimals.
fn units(v: f64, e: u32) -> Option<i128> {
    let (de, m) = to_decimal(v)?;
    (de <= e).then(|| i128::from(m) * 10i128.pow(e - de))
}

/// Integers that travel exactly as f64 values.
fn as_exact_f64(x: i128) -> Option<f64> {
    (x.abs() < 1 << 53).then_some(x as f64)
}

/// Where the shared timestamp chunks of a block go when encoding: stores a timestamp chunk (or
/// finds the same bytes stored before) and returns its ref.
pub type PutTimestamps<'a> = dyn FnMut(&[u8]) -> Result<u64> + 'a;
/// Where they come from when decoding: the bytes of the timestamp chunk with this ref.
pub type GetTimestamps<'a, 'd> = dyn Fn(u64) -> std::result::Result<&'d [u8], String> + 'a;

/// Shared timestamp chunks kept in memory (tests, tools): refs are positions.
#[derive(Debug, Default, Clone)]
pub struct TimestampChunks {
    chunks: Vec<Vec<u8>>,
    refs: HashMap<Vec<u8>, u64>,
}

impl TimestampChunks {
    /// Stores `chunk` once; returns its ref.
    pub fn put(&mut self, chunk: &[u8]) -> u64 {
        if let Some(&r) = self.refs.get(chunk) {
            return r;
        }
        let r = self.chunks.len() as u64;
        self.chunks.push(chunk.to_vec());
        self.refs.insert(chunk.to_vec(), r);
        r
    }

    /// The chunk stored under `r`.
    pub fn get(&self, r: u64) -> std::result::Result<&[u8], String> {
        usize::try_from(r)
            .ok()
            .and_then(|i| self.chunks.get(i))
            .map(Vec::as_slice)
            .ok_or_else(|| format!("no timestamp chunk {r}"))
    }
}

/// Encodes `a` as one aggregate chunk: `(min_time, max_time, bytes)`; its window timestamps go
/// to `put_ts` as a chunk of their own, which the bytes name by its ref. Layout in
/// `docs/format/block.md` ("Downsampled blocks"). Decimal data is stored as integer residuals
/// (flag [`FLAG_DECIMAL`]); the result is decoded and compared bit for bit before it is
/// returned, and anything that does not round-trip is stored plainly.
pub fn encode_aggr_chunk(
    a: &AggrSeries,
    put_ts: &mut PutTimestamps<'_>,
) -> Result<(i64, i64, Vec<u8>)> {
    let (Some(first), Some(last)) = (a.counter.first(), a.count.last()) else {
        return Err(BlockError::Invalid("empty aggregate series".into()));
    };
    let n = a.count.len();
    let lead = a.counter.len().wrapping_sub(n);
    let aligned = |s: &[Sample]| s.len() == n && s.iter().zip(&a.count).all(|(x, c)| x.t == c.t);
    if lead > 1
        || !aligned(&a.sum)
        || !aligned(&a.min)
        || !aligned(&a.max)
        || !aligned(&a.last)
        || !aligned(&a.counter[lead..])
    {
        return Err(BlockError::Invalid(
            "encoding an aggregate: streams are not aligned on the count's windows".into(),
        ));
    }
    let range = (first.t.min(a.count[0].t), last.t);
    // The shared chunk holds the counts too: the series of one target have the same ones.
    let ts_chunk = encode_stream(&a.count)?;
    let ts_ref = put_ts(&ts_chunk)?;
    let get = |r: u64| {
        (r == ts_ref)
            .then_some(ts_chunk.as_slice())
            .ok_or_else(|| format!("no timestamp chunk {r}"))
    };
    if let Some(bytes) = encode_decimal(a, lead, ts_ref)?
        && decode_aggr_chunk(&bytes, &get).is_ok_and(|d| same_aggr(&d, a))
    {
        return Ok((range.0, range.1, bytes));
    }
    let bytes = encode_plain(a, lead, ts_ref)?;
    match decode_aggr_chunk(&bytes, &get) {
        Ok(d) if same_aggr(&d, a) => Ok((range.0, range.1, bytes)),
        Ok(_) => Err(BlockError::Invalid(
            "encoding an aggregate: the chunk does not decode to its input".into(),
        )),
        Err(e) => Err(BlockError::Invalid(format!("encoding an aggregate: {e}"))),
    }
}

fn same_aggr(x: &AggrSeries, y: &AggrSeries) -> bool {
    let same = |p: &[Sample], q: &[Sample]| {
        p.len() == q.len()
            && p.iter()
                .zip(q)
                .all(|(a, b)| a.t == b.t && a.v.to_bits() == b.v.to_bits())
    };
    Aggregate::ALL.iter().all(|&g| same(x.get(g), y.get(g)))
        && x.raw_last.map(f64::to_bits) == y.raw_last.map(f64::to_bits)
}

/// Starts a chunk: version, flags, `header` (decimal form: exponent and stream modes), the ref
/// of the timestamp chunk, the count values, the leading counter sample (`lead`, already
/// encoded).
fn chunk_writer<'a>(
    a: &'a AggrSeries,
    ts_ref: u64,
    lead: &[u8],
    flags: u8,
    header: &[u8],
) -> Result<ChunkWriter<'a>> {
    let count = encode_stream(&a.count)?;
    let prefix = ts_prefix_len(&count)
        .ok_or_else(|| BlockError::Invalid("encoding an aggregate: bad count chunk".into()))?;
    let mut w = ChunkWriter {
        out: Vec::with_capacity(count.len() * 4 + 32),
        ts: &a.count,
        prefix,
        count,
    };
    w.out.push(AGGR_CHUNK_VERSION);
    w.out.push(flags);
    w.out.extend_from_slice(header);
    put_uvarint(&mut w.out, ts_ref);
    // The counts are in the shared timestamp chunk: an empty count part says so.
    w.part(&[]);
    w.part(lead);
    Ok(w)
}

fn encode_plain(a: &AggrSeries, lead: usize, ts_ref: u64) -> Result<Vec<u8>> {
    let bits_eq =
        |p: &[Sample], q: &[Sample]| p.iter().zip(q).all(|(x, y)| x.v.to_bits() == y.v.to_bits());
    let counter = &a.counter[lead..];
    let mut flags = 0;
    if bits_eq(&a.max, &a.last) {
        flags |= FLAG_MAX_IS_LAST;
    }
    if bits_eq(counter, &a.last) {
        flags |= FLAG_COUNTER_IS_LAST;
    }
    let lead_bytes = if lead == 1 {
        encode_stream(&a.counter[..1])?
    } else {
        Vec::new()
    };
    let mut w = chunk_writer(a, ts_ref, &lead_bytes, flags, &[])?;
    w.values(a.last.iter().map(|s| s.v))?;
    w.values(a.min.iter().map(|s| s.v))?;
    if flags & FLAG_MAX_IS_LAST == 0 {
        w.values(a.max.iter().map(|s| s.v))?;
    }
    w.values(a.sum.iter().map(|s| s.v))?;
    if flags & FLAG_COUNTER_IS_LAST == 0 {
        w.values(counter.iter().map(|s| s.v))?;
    }
    Ok(w.out)
}

/// The decimal form, or `None` when some value is not a decimal in range.
fn encode_decimal(a: &AggrSeries, lead: usize, ts_ref: u64) -> Result<Option<Vec<u8>>> {
    let counter = &a.counter[lead..];
    let all = || {
        [&a.last, &a.min, &a.max, &a.sum]
            .into_iter()
            .flat_map(|s| s.iter())
            .chain(&a.counter)
    };
    let mut e = 0;
    for s in all() {
        match to_decimal(s.v) {
            Some((de, _)) => e = e.max(de),
            None => return Ok(None),
        }
    }
    let conv = |s: &[Sample]| -> Option<Vec<i128>> { s.iter().map(|x| units(x.v, e)).collect() };
    let (Some(l), Some(mn), Some(mx), Some(sm), Some(c)) = (
        conv(&a.last),
        conv(&a.min),
        conv(&a.max),
        conv(&a.sum),
        conv(counter),
    ) else {
        return Ok(None);
    };
    let n: Vec<i128> = a.count.iter().map(|s| s.v as i128).collect();
    // The counter's growth beyond last (the values before drops) per window, as quotient and
    // remainder of the window's min.
    let (mut d, mut q) = (Vec::with_capacity(n.len()), Vec::with_capacity(n.len()));
    let mut prev_r = 0i128;
    for k in 0..n.len() {
        let dq = (|| {
            let r = c[k].checked_sub(l[k])?;
            let p = r.checked_sub(prev_r)?;
            let dk = if mn[k] > 0 { p.div_euclid(mn[k]) } else { 0 };
            Some((r, dk, p.checked_sub(dk.checked_mul(mn[k])?)?))
        })();
        let Some((r, dk, qk)) = dq else {
            return Ok(None);
        };
        d.push(dk);
        q.push(qk);
        prev_r = r;
    }
    // Predictors (see decode_aggr_chunk): last and min after the previous last, max above
    // last, sum above count·min.
    let prev_l: Vec<i128> = std::iter::once(0)
        .chain(l.iter().copied())
        .take(n.len())
        .collect();
    // Twice the sum, predicted by count·(min + max) (a straight line through the window).
    let sum_p: Option<Vec<i128>> = (0..n.len())
        .map(|k| n[k].checked_mul(mn[k].checked_add(mx[k])?))
        .collect();
    let sum2: Option<Vec<i128>> = sm.iter().map(|x| x.checked_mul(2)).collect();
    let (Some(sum_p), Some(sum2)) = (sum_p, sum2) else {
        return Ok(None);
    };
    let zero = vec![0i128; n.len()];
    let streams: [(&[i128], &[i128]); 6] = [
        (&l, &prev_l),
        (&mn, &prev_l),
        (&mx, &l),
        (&sum2, &sum_p),
        (&d, &zero),
        (&q, &zero),
    ];
    // The leading counter sample: its distance before the first window's timestamp and its
    // units (zigzag), as uvarints.
    let mut lead_bytes = Vec::new();
    if let Some(s) = a.counter[..lead].first() {
        let (Some(dt), Some(u)) = (
            u64::try_from(a.count[0].t.wrapping_sub(s.t)).ok(),
            units(s.v, e).and_then(as_exact_f64),
        ) else {
            return Ok(None);
        };
        let u = u as i64;
        put_uvarint(&mut lead_bytes, dt);
        put_uvarint(&mut lead_bytes, ((u << 1) ^ (u >> 63)) as u64);
    }
    let mut w = chunk_writer(a, ts_ref, &lead_bytes, FLAG_DECIMAL, &[e as u8, 0, 0])?;
    let modes_at = 3;
    let mut modes = 0u16;
    for (i, (t, p)) in streams.into_iter().enumerate() {
        let mut best: Option<(u16, Vec<u8>)> = None;
        for mode in 0..3u16 {
            let Some(ys) = mode_values(t, p, mode) else {
                continue;
            };
            let bytes = w.value_bytes(ys.into_iter())?;
            if best.as_ref().is_none_or(|(_, b)| bytes.len() < b.len()) {
                best = Some((mode, bytes));
            }
        }
        let Some((mode, bytes)) = best else {
            return Ok(None);
        };
        modes |= mode << (2 * i);
        w.part(&bytes);
    }
    w.out[modes_at..modes_at + 2].copy_from_slice(&modes.to_le_bytes());
    Ok(Some(w.out))
}

/// What a decimal stream stores for targets `t` and predictions `p`: mode 0 the targets,
/// 1 the residuals `t - p`, 2 the running sum of the residuals (the chunk codec codes the
/// differences of what it stores, so mode 2 codes each residual itself). `None` when a value
/// is not exact in f64.
fn mode_values(t: &[i128], p: &[i128], mode: u16) -> Option<Vec<f64>> {
    let mut acc = 0i128;
    t.iter()
        .zip(p)
        .map(|(&t, &p)| {
            let y = match mode {
                0 => t,
                1 => t.checked_sub(p)?,
                _ => {
                    acc = acc.checked_add(t.checked_sub(p)?)?;
                    acc
                }
            };
            as_exact_f64(y)
        })
        .collect()
}

/// Decodes an aggregate chunk written by [`encode_aggr_chunk`] (version 4, its timestamp chunk
/// from `ts`) or version 3. Errors say what was expected.
pub fn decode_aggr_chunk<'d>(
    data: &[u8],
    ts: &GetTimestamps<'_, 'd>,
) -> std::result::Result<AggrSeries, String> {
    decode_aggr_chunk_only(data, ts, &Aggregate::ALL)
}

/// Bit of each aggregate in a set of aggregates.
fn aggr_bit(a: Aggregate) -> u8 {
    match a {
        Aggregate::Count => 1,
        Aggregate::Sum => 2,
        Aggregate::Min => 4,
        Aggregate::Max => 8,
        Aggregate::Counter => 16,
        Aggregate::Last => 32,
    }
}

/// Decodes the aggregates `want` of an aggregate chunk (the others are left empty; `raw_last`
/// is set when the counter is wanted). Only the value streams those aggregates depend on are
/// decoded: `last` alone needs the timestamps and one stream; the counter of the decimal form
/// needs `last`, `min` and its two own streams. Errors say what was expected.
pub fn decode_aggr_chunk_only<'d>(
    data: &[u8],
    ts: &GetTimestamps<'_, 'd>,
    want: &[Aggregate],
) -> std::result::Result<AggrSeries, String> {
    let want = want.iter().fold(0u8, |m, &a| m | aggr_bit(a));
    let wants = |a: Aggregate| want & aggr_bit(a) != 0;
    let version = *data.first().ok_or("aggregate chunk is empty")?;
    if version != AGGR_CHUNK_VERSION && version != AGGR_CHUNK_V3 {
        return Err(format!(
            "aggregate chunk version: expected {AGGR_CHUNK_V3} or {AGGR_CHUNK_VERSION}, found {version}"
        ));
    }
    let flags = *data
        .get(1)
        .ok_or("aggregate chunk: expected a flags byte")?;
    if flags & !(FLAG_DECIMAL | FLAG_MAX_IS_LAST | FLAG_COUNTER_IS_LAST) != 0
        || (flags & FLAG_DECIMAL != 0 && flags != FLAG_DECIMAL)
    {
        return Err(format!("aggregate chunk: unknown flags {flags:#04x}"));
    }
    let mut pos = 2;
    let exponent = if flags & FLAG_DECIMAL != 0 {
        let (Some(&e), Some(m)) = (data.get(2), data.get(3..5)) else {
            return Err("aggregate chunk: expected the exponent and stream modes".into());
        };
        let e = u32::from(e);
        if e > MAX_DEC_EXP {
            return Err(format!("aggregate chunk: exponent {e} above {MAX_DEC_EXP}"));
        }
        pos += 3;
        Some((e, u16::from_le_bytes([m[0], m[1]])))
    } else {
        None
    };
    let ts_ref = if version == AGGR_CHUNK_V3 {
        None
    } else {
        Some(
            get_uvarint(data, &mut pos)
                .ok_or_else(|| format!("aggregate chunk: bad timestamp chunk ref at byte {pos}"))?,
        )
    };
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
    let mut count = Vec::new();
    let count_part = part("count")?;
    match ts_ref {
        // Version 3: a whole chunk of the counts at the window timestamps.
        None => chunk::decode_all(count_part, &mut count)
            .map_err(|e| format!("aggregate chunk: count: {e}"))?,
        Some(r) => {
            chunk::decode_all(ts(r)?, &mut count)
                .map_err(|e| format!("aggregate chunk: timestamp chunk {r:#x}: {e}"))?;
            // Empty: the counts are the shared chunk's values (written since 2026-12-07 06:00);
            // else the shared chunk's values are 0 and the counts are here.
            if !count_part.is_empty() {
                chunk::decode_value_stream(count_part, &mut count)
                    .map_err(|e| format!("aggregate chunk: count: {e}"))?;
            }
        }
    }
    let lead_part = part("counter lead")?;
    let lead = match (lead_part.is_empty(), exponent, count.first()) {
        (true, _, _) => Vec::new(),
        (false, None, _) => {
            let mut out = Vec::new();
            chunk::decode_all(lead_part, &mut out)
                .map_err(|e| format!("aggregate chunk: counter lead: {e}"))?;
            out
        }
        (false, Some((e, _)), Some(c0)) => {
            let mut p = 0;
            let (Some(dt), Some(z), true) = (
                get_uvarint(lead_part, &mut p),
                get_uvarint(lead_part, &mut p),
                p == lead_part.len(),
            ) else {
                return Err("aggregate chunk: bad counter lead".into());
            };
            let u = ((z >> 1) as i64) ^ -((z & 1) as i64);
            let t = i64::try_from(dt)
                .ok()
                .and_then(|dt| c0.t.checked_sub(dt))
                .ok_or("aggregate chunk: counter lead out of range")?;
            vec![Sample::new(t, u as f64 / POW10[e as usize])]
        }
        (false, Some(_), None) => {
            return Err("aggregate chunk: counter lead without windows".into());
        }
    };
    // One value stream (the next part): decoded into a copy of the count's samples (same
    // timestamps) when `needed`, else only skipped.
    let mut values = |what: &str, needed: bool| -> std::result::Result<Vec<Sample>, String> {
        let bytes = part(what)?;
        if !needed {
            return Ok(Vec::new());
        }
        let mut out = count.clone();
        chunk::decode_value_stream(bytes, &mut out)
            .map_err(|e| format!("aggregate chunk: {what}: {e}"))?;
        Ok(out)
    };
    let mut out = AggrSeries::default();
    if let Some((e, modes)) = exponent {
        let mode = |i: u16| (modes >> (2 * i)) & 3;
        if (0..6).any(|i| mode(i) == 3) || modes >> 12 != 0 {
            return Err(format!("aggregate chunk: bad stream modes {modes:#06x}"));
        }
        // Streams each aggregate depends on (see the predictions in encode_decimal).
        let (c, mn, mx, sm) = (
            wants(Aggregate::Counter),
            wants(Aggregate::Min),
            wants(Aggregate::Max),
            wants(Aggregate::Sum),
        );
        let need = [
            c || mn || mx || sm || wants(Aggregate::Last),
            c || mn || sm,
            mx || sm,
            sm,
            c,
            c,
        ];
        let names = [
            "last",
            "min",
            "max",
            "sum",
            "counter quotient",
            "counter remainder",
        ];
        let mut ys: [Vec<Sample>; 6] = Default::default();
        for (i, y) in ys.iter_mut().enumerate() {
            *y = values(names[i], need[i])?;
        }
        let p10 = POW10[e as usize];
        let f = |x: i128| x as f64 / p10;
        let y = |i: usize, k: usize| ys[i][k].v as i128;
        let target = |i: usize, k: usize, p: i128| -> i128 {
            match mode(i as u16) {
                0 => y(i, k),
                1 => p.saturating_add(y(i, k)),
                _ => p.saturating_add(y(i, k).saturating_sub(if k > 0 { y(i, k - 1) } else { 0 })),
            }
        };
        let n = count.len();
        let with_cap = |on: bool| Vec::with_capacity(if on { n } else { 0 });
        let (mut lv, mut mnv, mut mxv, mut smv, mut cv) = (
            with_cap(wants(Aggregate::Last)),
            with_cap(mn),
            with_cap(mx),
            with_cap(sm),
            with_cap(c),
        );
        let (mut prev_last, mut r) = (0i128, 0i128);
        for (k, cs) in count.iter().enumerate() {
            if !need[0] {
                break;
            }
            let t = cs.t;
            let l = target(0, k, prev_last);
            let mnk = if need[1] { target(1, k, prev_last) } else { 0 };
            let mxk = if need[2] { target(2, k, l) } else { 0 };
            if sm {
                let cnt = cs.v as i128;
                let s2 = target(3, k, cnt.saturating_mul(mnk.saturating_add(mxk)));
                smv.push(Sample::new(t, f(s2 / 2)));
            }
            if c {
                let d = target(4, k, 0);
                let q = target(5, k, 0);
                r = r.saturating_add(d.saturating_mul(mnk)).saturating_add(q);
                cv.push(Sample::new(t, f(l.saturating_add(r))));
            }
            if wants(Aggregate::Last) {
                lv.push(Sample::new(t, f(l)));
            }
            if mn {
                mnv.push(Sample::new(t, f(mnk)));
            }
            if mx {
                mxv.push(Sample::new(t, f(mxk)));
            }
            prev_last = l;
            if c && k + 1 == n && f(l).to_bits() != f(l.saturating_add(r)).to_bits() {
                out.raw_last = Some(f(l));
            }
        }
        (out.last, out.min, out.max, out.sum) = (lv, mnv, mxv, smv);
        if c {
            out.counter = lead;
            out.counter.extend(cv);
        }
    } else {
        let max_is_last = flags & FLAG_MAX_IS_LAST != 0;
        let counter_is_last = flags & FLAG_COUNTER_IS_LAST != 0;
        let c = wants(Aggregate::Counter);
        let last = values(
            "last",
            wants(Aggregate::Last) || c || (max_is_last && wants(Aggregate::Max)),
        )?;
        out.min = values("min", wants(Aggregate::Min))?;
        if wants(Aggregate::Max) {
            out.max = if max_is_last {
                last.clone()
            } else {
                values("max", true)?
            };
        } else if !max_is_last {
            values("max", false)?;
        }
        out.sum = values("sum", wants(Aggregate::Sum))?;
        if c {
            out.counter = lead;
            if counter_is_last {
                out.counter.extend_from_slice(&last);
            } else {
                out.counter.extend(values("counter", true)?);
            }
            out.raw_last = match (last.last(), out.counter.last()) {
                (Some(l), Some(cl)) if l.v.to_bits() != cl.v.to_bits() => Some(l.v),
                _ => None,
            };
        }
        if wants(Aggregate::Last) {
            out.last = last;
        }
    }
    if wants(Aggregate::Count) {
        out.count = count;
    }
    Ok(out)
}

/// The shared timestamp chunks of block `b`, by ref.
fn block_timestamps<'b>(
    b: &'b Block,
) -> impl Fn(u64) -> std::result::Result<&'b [u8], String> + 'b {
    move |r| {
        let c = ChunkMeta {
            min_time: 0,
            max_time: 0,
            chunk_ref: r,
        };
        b.chunk_data(&c).map_err(|e| e.to_string())
    }
}

/// Stores the shared timestamp chunk `chunk` in the block `w` writes, once per distinct
/// content (`refs`: the ones stored so far).
fn put_timestamps(
    w: &mut BlockWriter,
    refs: &mut HashMap<Vec<u8>, u64>,
    chunk: &[u8],
) -> Result<u64> {
    if let Some(&r) = refs.get(chunk) {
        return Ok(r);
    }
    let r = w.add_shared_chunk(chunk)?;
    refs.insert(chunk.to_vec(), r);
    Ok(r)
}

/// An aggregate chunk ready for a block: `(min_time, max_time, bytes)`.
pub type EncodedAggrChunk = (i64, i64, Vec<u8>);

/// Chunk `c` of series `labels` of downsampled block `src`, for the block `w` writes (see
/// [`relink_aggr_chunk`]): `((min_time, max_time, bytes), windows)`.
pub(crate) fn copy_aggr_chunk(
    src: &Block,
    labels: &Labels,
    c: &ChunkMeta,
    w: &mut BlockWriter,
    refs: &mut HashMap<Vec<u8>, u64>,
) -> Result<(EncodedAggrChunk, u64)> {
    let data = src.chunk_data(c)?;
    let windows = decode_aggr_chunk_only(data, &block_timestamps(src), &[Aggregate::Count])
        .map_err(|what| BlockError::Meta {
            path: src.dir().join(crate::block::CHUNKS_DIR),
            what: format!("series {labels}: chunk {:#x}: {what}", c.chunk_ref),
        })?
        .count
        .len() as u64;
    let data = relink_aggr_chunk(data, src, w, refs)?;
    Ok(((c.min_time, c.max_time, data), windows))
}

/// An aggregate chunk of block `src` made ready for the block `w` writes (merges, rewrites):
/// a version 4 chunk gets its timestamp chunk copied over (once per distinct content) and the
/// new ref; a version 3 chunk is copied as it is.
pub(crate) fn relink_aggr_chunk(
    data: &[u8],
    src: &Block,
    w: &mut BlockWriter,
    refs: &mut HashMap<Vec<u8>, u64>,
) -> Result<Vec<u8>> {
    let bad = |what: String| BlockError::Meta {
        path: src.dir().join(crate::block::CHUNKS_DIR),
        what,
    };
    let (Some(&version), Some(&flags)) = (data.first(), data.get(1)) else {
        return Err(bad("aggregate chunk: expected version and flags".into()));
    };
    if version == AGGR_CHUNK_V3 {
        return Ok(data.to_vec());
    }
    if version != AGGR_CHUNK_VERSION {
        return Err(bad(format!(
            "aggregate chunk version: expected {AGGR_CHUNK_V3} or {AGGR_CHUNK_VERSION}, found {version}"
        )));
    }
    let at = if flags & FLAG_DECIMAL != 0 { 5 } else { 2 };
    let mut pos = at;
    let r = get_uvarint(data, &mut pos).ok_or_else(|| {
        bad(format!(
            "aggregate chunk: bad timestamp chunk ref at byte {at}"
        ))
    })?;
    let ts = block_timestamps(src)(r).map_err(bad)?;
    let nr = put_timestamps(w, refs, ts)?;
    Ok(with_ts_ref(data, at, pos, nr))
}

/// `data` (a version 4 chunk whose timestamp chunk ref takes bytes `at..end`) naming `r`
/// instead.
fn with_ts_ref(data: &[u8], at: usize, end: usize, r: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 4);
    out.extend_from_slice(&data[..at]);
    put_uvarint(&mut out, r);
    out.extend_from_slice(&data[end..]);
    out
}

/// Reads the aggregates `want` (see [`decode_aggr_chunk_only`]) of series `entry` of
/// downsampled block `b`: one [`AggrSeries`] per chunk, in time order. A merged block holds
/// one chunk per block merged into it, each with its own counter start: join them with
/// [`stitch`].
pub fn read_aggr_chunks(
    b: &Block,
    entry: &SeriesEntry,
    want: &[Aggregate],
) -> Result<Vec<AggrSeries>> {
    let ts = block_timestamps(b);
    entry
        .chunks
        .iter()
        .map(|c| {
            let data = b.chunk_data(c)?;
            decode_aggr_chunk_only(data, &ts, want).map_err(|what| BlockError::Meta {
                path: b.dir().join(crate::block::CHUNKS_DIR),
                what: format!("series {}: chunk {:#x}: {what}", entry.labels, c.chunk_ref),
            })
        })
        .collect()
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
    let mut ts_refs = HashMap::new();
    for id in 0..src.index().num_series() {
        let entry = src.index().series(id)?;
        let aggrs = if from_raw {
            samples.clear();
            src.read_series_samples(&entry, &mut samples)?;
            if samples.windows(2).any(|p| p[1].t <= p[0].t) {
                samples.sort_by_key(|s| s.t);
                samples.dedup_by_key(|s| s.t);
            }
            vec![aggregate_raw(&samples, resolution)]
        } else {
            // A merged block's chunks joined: one coarser chunk for the whole block.
            let parts = read_aggr_chunks(src, &entry, &Aggregate::ALL)?;
            vec![aggregate_aggr(&concat_parts(parts), resolution)]
        };
        let mut chunks = Vec::with_capacity(aggrs.len());
        let mut windows = 0u64;
        for a in aggrs.iter().filter(|a| !a.count.is_empty()) {
            windows += a.count.len() as u64;
            chunks.push(encode_aggr_chunk(a, &mut |c| {
                put_timestamps(&mut w, &mut ts_refs, c)
            })?);
        }
        if !chunks.is_empty() {
            w.add_series_opaque(&entry.labels, &chunks, windows)?;
        }
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

// ---------------------------------------------------------------------------------------------
// Merging downsampled blocks

const HOUR: i64 = 3_600_000;

/// Width of the aligned windows inside which downsampled blocks of `resolution` are merged
/// into one block ([`plan_merge`]): 162 h (nine 18 h blocks) for 5 m, 486 h (27) for 1 h.
pub fn merge_range(resolution: i64) -> Option<i64> {
    match resolution {
        RES_5M => Some(162 * HOUR),
        RES_1H => Some(486 * HOUR),
        _ => None,
    }
}

/// Groups of downsampled blocks to merge, each as ids in time order. Per resolution, the
/// blocks that lie inside one aligned window of [`merge_range`] are merged when there are at
/// least two and together they span the whole window or lie entirely before the newest block
/// of that resolution (the rule of `compact::plan` for raw blocks).
pub fn plan_merge(metas: &[BlockMeta]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for res in [RES_5M, RES_1H] {
        let Some(r) = merge_range(res) else { continue };
        let mut ms: Vec<&BlockMeta> = metas.iter().filter(|m| m.resolution == res).collect();
        ms.sort_by(|a, b| (a.min_time, &a.id).cmp(&(b.min_time, &b.id)));
        let Some(newest_min) = ms.iter().map(|m| m.min_time).max() else {
            continue;
        };
        let mut windows: BTreeMap<i64, Vec<&BlockMeta>> = BTreeMap::new();
        for m in ms {
            let w = m.min_time.div_euclid(r);
            if m.max_time <= (w + 1).saturating_mul(r) {
                windows.entry(w).or_default().push(m);
            }
        }
        for group in windows.values().filter(|g| g.len() > 1) {
            let mint = group.iter().map(|m| m.min_time).min().unwrap_or(0);
            let maxt = group.iter().map(|m| m.max_time).max().unwrap_or(0);
            if maxt - mint == r || maxt <= newest_min {
                out.push(group.iter().map(|m| m.id.clone()).collect());
            }
        }
    }
    out
}

/// Merges downsampled blocks of one resolution into one new block (temp dir, fsync, rename;
/// the sources are left alone: delete them once it is durable). Per series (in label order,
/// a k-way merge over the blocks' indexes: memory is one series at a time plus one cursor per
/// block), the aggregate chunks of every block are decoded and joined into **one** chunk
/// ([`join_parts`]: the counter continues across them, in exact decimal units), which reads as
/// aggregating the raw samples of the whole range at once. Where blocks overlap in time (a
/// block downsampled again after its raw block took a backfill, merged with an older block
/// that holds the previous version), the windows of a block that lie in the range of a newer
/// block (a larger id) of the group are dropped ([`windows_outside`]). The new block's range
/// is the union, `sources` the union, `parents` the merged ids, `level` the highest.
pub fn merge_blocks(data_dir: &Path, blocks: &[Block]) -> Result<BlockMeta> {
    let Some(first) = blocks.first() else {
        return Err(BlockError::Invalid("merging no downsampled blocks".into()));
    };
    let res = first.meta().resolution;
    if res == RES_RAW || blocks.iter().any(|b| b.meta().resolution != res) {
        return Err(BlockError::Invalid(format!(
            "merging downsampled blocks: expected blocks of one downsampled resolution, found {:?}",
            blocks
                .iter()
                .map(|b| b.meta().resolution)
                .collect::<Vec<_>>()
        )));
    }
    let mint = blocks.iter().map(|b| b.meta().min_time).min().unwrap_or(0);
    let maxt = blocks.iter().map(|b| b.meta().max_time).max().unwrap_or(0);
    let mut sources: Vec<String> = blocks
        .iter()
        .flat_map(|b| b.meta().sources.iter().cloned())
        .collect();
    sources.sort();
    sources.dedup();
    let level = blocks.iter().map(|b| b.meta().level).max().unwrap_or(1);
    let mut w = BlockWriter::new(data_dir, mint, maxt)?;
    w.set_compaction(
        level,
        sources,
        blocks.iter().map(|b| b.id().to_string()).collect(),
    );
    w.set_resolution(res);
    // For each block, the ranges of the newer blocks of the group that overlap it.
    let newer: Vec<Vec<(i64, i64)>> = blocks
        .iter()
        .map(|b| {
            blocks
                .iter()
                .filter(|o| o.id() > b.id())
                .map(|o| (o.meta().min_time, o.meta().max_time))
                .filter(|&(lo, hi)| lo < b.meta().max_time && b.meta().min_time < hi)
                .collect()
        })
        .collect();
    let mut ts_refs = HashMap::new();
    // k-way merge by labels: each block's series ids are in label order.
    let mut cursors: Vec<(u64, Option<SeriesEntry>)> = Vec::with_capacity(blocks.len());
    for b in blocks {
        let e = if b.index().num_series() > 0 {
            Some(b.index().series(0)?)
        } else {
            None
        };
        cursors.push((0, e));
    }
    while let Some(labels) = cursors
        .iter()
        .filter_map(|(_, e)| e.as_ref().map(|e| &e.labels))
        .min()
        .cloned()
    {
        let mut parts: Vec<AggrSeries> = Vec::new();
        // The chunks kept whole (block, chunk), their bytes, and whether copying them is an
        // option (no chunk lost only part of its windows to a newer block).
        let (mut keep, mut kept_bytes, mut copyable) = (Vec::new(), 0usize, true);
        for (i, (id, cur)) in cursors.iter_mut().enumerate() {
            let Some(e) = cur.as_ref().filter(|e| e.labels == labels) else {
                continue;
            };
            let b = &blocks[i];
            for c in &e.chunks {
                let data = b.chunk_data(c)?;
                let a = decode_aggr_chunk(data, &block_timestamps(b)).map_err(|what| {
                    BlockError::Meta {
                        path: b.dir().join(crate::block::CHUNKS_DIR),
                        what: format!("series {}: chunk {:#x}: {what}", e.labels, c.chunk_ref),
                    }
                })?;
                let replaced = |t: i64| newer[i].iter().any(|&(lo, hi)| lo <= t && t < hi);
                let gone = a.count.iter().filter(|w| replaced(w.t)).count();
                if gone == 0 {
                    keep.push((i, *c));
                    kept_bytes += data.len();
                } else if gone < a.count.len() {
                    copyable = false;
                }
                parts.extend(windows_outside(a, replaced));
            }
            *id += 1;
            *cur = if *id < b.index().num_series() {
                Some(b.index().series(*id)?)
            } else {
                None
            };
        }
        parts.sort_by_key(|p| p.count.first().map_or(i64::MIN, |s| s.t));
        let joined = join_parts(parts);
        if joined.count.is_empty() {
            continue;
        }
        let windows = joined.count.len() as u64;
        // One chunk for the whole range saves a chunk header, lead and record per block, but
        // its exponent and stream modes must suit the whole range: the chunks are copied as
        // they are when they are smaller (measured on node_exporter-like data, docs/benchmarks.md).
        // Encoded once, with ref 0 for its timestamp chunk (one byte), which is stored and
        // named only if the joined chunk wins.
        let mut ts_chunk = Vec::new();
        let one = encode_aggr_chunk(&joined, &mut |c| {
            ts_chunk = c.to_vec();
            Ok(0)
        })?;
        if copyable && kept_bytes <= one.2.len() {
            let mut chunks = Vec::with_capacity(keep.len());
            for (i, c) in &keep {
                let b = &blocks[*i];
                let data = relink_aggr_chunk(b.chunk_data(c)?, b, &mut w, &mut ts_refs)?;
                chunks.push((c.min_time, c.max_time, data));
            }
            chunks.sort_by_key(|c| (c.0, c.1));
            w.add_series_opaque(&labels, &chunks, windows)?;
        } else {
            let r = put_timestamps(&mut w, &mut ts_refs, &ts_chunk)?;
            let at = if one.2.get(1).is_some_and(|f| f & FLAG_DECIMAL != 0) {
                5
            } else {
                2
            };
            let bytes = with_ts_ref(&one.2, at, at + 1, r);
            w.add_series_opaque(&labels, &[(one.0, one.1, bytes)], windows)?;
        }
    }
    let meta = w.finish()?;
    tracing::info!(block = %meta.id, resolution = res, merged = blocks.len(),
        series = meta.stats.num_series, bytes = meta.stats.num_bytes, "merged downsampled blocks");
    Ok(meta)
}

/// Plans and writes every due downsampled block of `data_dir` (blocks opened from disk, as
/// [`crate::compact::run`] does), deleting the downsampled blocks each new one makes obsolete
/// once it is durable, and merges the downsampled blocks that are due ([`plan_merge`]).
/// `newest` is the newest time of the data (the head's, if any). Returns the metas of the
/// downsampled blocks written (not those of merged blocks). Safe to re-run after a crash at any point: a block is complete or
/// absent, a finished one is never written twice, and an obsolete one left behind is deleted
/// by [`crate::block::open_blocks`].
pub fn run(data_dir: &Path, newest: i64, opts: &DownsampleOptions) -> Result<Vec<BlockMeta>> {
    let mut written = Vec::new();
    // A pass merges what is due, then downsamples what is due: raw → 5 m, merge 5 m, 5 m → 1 h,
    // merge 1 h take four.
    for _pass in 0..5 {
        let (blocks, _problems) = crate::block::open_blocks(data_dir)?;
        let merges = plan_merge(&blocks.iter().map(|b| b.meta().clone()).collect::<Vec<_>>());
        for group in &merges {
            let members: Vec<Block> = blocks
                .iter()
                .filter(|b| group.iter().any(|id| id == b.id()))
                .cloned()
                .collect();
            merge_blocks(data_dir, &members)?;
            for id in group {
                crate::block::delete_block(data_dir, id)?;
            }
        }
        let blocks = if merges.is_empty() {
            blocks
        } else {
            crate::block::open_blocks(data_dir)?.0
        };
        let mut metas: Vec<BlockMeta> = blocks.iter().map(|b| b.meta().clone()).collect();
        let plans = plan(&metas, newest, opts);
        if plans.is_empty() && merges.is_empty() {
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

/// Joins the chunks of one series (time order, as [`read_aggr_chunks`] gives them) into one
/// [`AggrSeries`]: windows concatenated, the counter of each later chunk shifted to continue the
/// running total as [`stitch`] does — in exact decimal units when every value involved is a
/// decimal (see [`DecSum`]), so the result is what aggregating their raw samples at once gives.
pub fn concat_parts(parts: Vec<AggrSeries>) -> AggrSeries {
    let mut out = AggrSeries::default();
    for p in parts {
        let (Some(total), Some(raw), Some(first)) = (
            out.counter.last().map(|s| s.v),
            out.last_raw(),
            p.counter.first().map(|s| s.v),
        ) else {
            if out.count.is_empty() {
                out = p;
            }
            continue;
        };
        let mut base = DecSum::ZERO;
        base.add(total);
        if first >= raw {
            // No reset at the boundary: the part continues from the previous raw last value.
            base.add(-raw);
        }
        let raw_last = p.last_raw();
        out.count.extend(p.count);
        out.sum.extend(p.sum);
        out.min.extend(p.min);
        out.max.extend(p.max);
        out.last.extend(p.last);
        out.counter
            .extend(p.counter.iter().map(|s| Sample::new(s.t, base.plus(s.v))));
        out.raw_last = match (raw_last, out.counter.last()) {
            (Some(r), Some(c)) if r.to_bits() != c.v.to_bits() => Some(r),
            _ => None,
        };
    }
    out
}

/// Joins parts (time order, not overlapping) into one [`AggrSeries`] that one aggregate chunk
/// holds: [`concat_parts`], then without the leading counter samples of the later parts (the
/// running total at their window ends already counts from them), which is what aggregating
/// their raw samples at once gives when the parts meet at window boundaries.
fn join_parts(parts: Vec<AggrSeries>) -> AggrSeries {
    let mut out = concat_parts(parts);
    let AggrSeries { count, counter, .. } = &mut out;
    let (mut j, mut i) = (0, 0);
    counter.retain(|s| {
        let keep = if count.get(j).is_some_and(|c| c.t == s.t) {
            j += 1;
            true
        } else {
            i == 0
        };
        i += 1;
        keep
    });
    out
}

/// The runs of windows of `a` whose timestamps are not `replaced`, each as a part of its own
/// (see [`merge_blocks`]). A run that starts after a dropped window has no leading counter
/// sample, and its counter is shifted down by the resets counted before it (`counter − last`
/// at its first window) so that, like any part, it starts at a raw value.
fn windows_outside(a: AggrSeries, replaced: impl Fn(i64) -> bool) -> Vec<AggrSeries> {
    let n = a.count.len();
    let lead = a.counter.len().wrapping_sub(n);
    let aligned = [&a.sum, &a.min, &a.max, &a.last]
        .iter()
        .all(|s| s.len() == n)
        && lead <= 1;
    if !aligned || !a.count.iter().any(|c| replaced(c.t)) {
        return vec![a];
    }
    let mut out = Vec::new();
    let mut k = 0;
    while k < n {
        if replaced(a.count[k].t) {
            k += 1;
            continue;
        }
        let start = k;
        while k < n && !replaced(a.count[k].t) {
            k += 1;
        }
        let mut p = AggrSeries {
            count: a.count[start..k].to_vec(),
            sum: a.sum[start..k].to_vec(),
            min: a.min[start..k].to_vec(),
            max: a.max[start..k].to_vec(),
            last: a.last[start..k].to_vec(),
            ..AggrSeries::default()
        };
        p.counter = if start == 0 {
            a.counter[..lead + k].to_vec()
        } else {
            let mut shift = DecSum::ZERO;
            shift.add(a.last[start].v);
            shift.add(-a.counter[lead + start].v);
            a.counter[lead + start..lead + k]
                .iter()
                .map(|s| Sample::new(s.t, shift.plus(s.v)))
                .collect()
        };
        p.raw_last = match (p.last.last(), p.counter.last()) {
            (Some(l), Some(c)) if l.v.to_bits() != c.v.to_bits() => Some(l.v),
            _ => None,
        };
        out.push(p);
    }
    out
}

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

    /// The labels of the series matching `matchers` in any block.
    fn collect(
        &self,
        matchers: &[Matcher],
    ) -> tidemark_storage::Result<std::collections::BTreeSet<Labels>> {
        let mut out = std::collections::BTreeSet::new();
        for b in &self.blocks {
            for id in postings_for_matchers(b.index(), matchers)?.into_vec() {
                out.insert(b.index().series(id)?.labels);
            }
        }
        Ok(out)
    }
}

impl Querier for DownsampledQuerier {
    fn select(
        &self,
        _sorted: bool,
        hints: Option<&SelectHints>,
        matchers: &[Matcher],
    ) -> SeriesSet {
        // Index lookups only: each series decodes its chunks when iterated, so callers can
        // read series in parallel.
        let mut by_series: BTreeMap<Labels, Vec<(Block, SeriesEntry)>> = BTreeMap::new();
        for b in &self.blocks {
            let ids = match postings_for_matchers(b.index(), matchers) {
                Ok(p) => p.into_vec(),
                Err(e) => return Box::new(std::iter::once(Err(e))),
            };
            for id in ids {
                match b.index().series(id) {
                    Ok(entry) => by_series
                        .entry(entry.labels.clone())
                        .or_default()
                        .push((b.clone(), entry)),
                    Err(e) => return Box::new(std::iter::once(Err(e.into()))),
                }
            }
        }
        let limit = hints.map_or(0, |h| h.limit);
        let mut out: Vec<Arc<dyn Series>> = Vec::new();
        for (labels, parts) in by_series {
            if limit > 0 && out.len() >= limit {
                break;
            }
            out.push(Arc::new(LazyAggrSeries {
                labels,
                parts,
                aggr: self.aggr,
                mint: self.mint,
                maxt: self.maxt,
            }));
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
        for labels in self.collect(matchers)? {
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
        for labels in self.collect(matchers)? {
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

/// One series of a [`DownsampledQuerier`]: its parts in each block, decoded and stitched when
/// iterated (may turn out empty inside the querier's range).
#[derive(Debug)]
struct LazyAggrSeries {
    labels: Labels,
    /// Oldest block first.
    parts: Vec<(Block, SeriesEntry)>,
    aggr: Aggregate,
    mint: i64,
    maxt: i64,
}

impl LazyAggrSeries {
    fn samples(&self) -> Result<Vec<Sample>> {
        let mut decoded = Vec::with_capacity(self.parts.len());
        for (b, entry) in &self.parts {
            decoded.extend(read_aggr_chunks(b, entry, &[self.aggr])?);
        }
        let refs: Vec<&AggrSeries> = decoded.iter().collect();
        let mut samples = stitch(&refs, self.aggr);
        samples.retain(|s| s.t >= self.mint && s.t <= self.maxt);
        Ok(samples)
    }
}

impl Series for LazyAggrSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }

    fn iter(&self) -> Box<dyn tidemark_storage::SampleIter + '_> {
        match self.samples() {
            Ok(samples) => Box::new(OwnedSampleIter {
                samples,
                pos: 0,
                err: None,
            }),
            Err(e) => Box::new(OwnedSampleIter {
                samples: Vec::new(),
                pos: 0,
                err: Some(e.into()),
            }),
        }
    }
}

/// Iterator over owned samples (a decoded aggregate), carrying a decoding error if any.
#[derive(Debug)]
struct OwnedSampleIter {
    samples: Vec<Sample>,
    /// Index of the current sample + 1 (0 = before the first).
    pos: usize,
    err: Option<tidemark_storage::Error>,
}

impl tidemark_storage::SampleIter for OwnedSampleIter {
    fn next(&mut self) -> bool {
        if self.pos < self.samples.len() {
            self.pos += 1;
            true
        } else {
            self.pos = self.samples.len() + 1;
            false
        }
    }

    fn seek(&mut self, t: i64) -> bool {
        if self.is_valid() && self.at().t >= t {
            return true;
        }
        let from = self.pos.saturating_sub(1).min(self.samples.len());
        let i = from + self.samples[from..].partition_point(|s| s.t < t);
        self.pos = i + 1;
        i < self.samples.len()
    }

    fn at(&self) -> Sample {
        self.samples
            .get(self.pos.wrapping_sub(1))
            .copied()
            .unwrap_or(Sample::new(i64::MIN, f64::NAN))
    }

    fn is_valid(&self) -> bool {
        self.pos >= 1 && self.pos <= self.samples.len()
    }

    fn err(&mut self) -> Option<tidemark_storage::Error> {
        self.err.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    /// Encodes `a` with its timestamp chunk in `ts`.
    fn enc(a: &AggrSeries, ts: &mut TimestampChunks) -> (i64, i64, Vec<u8>) {
        encode_aggr_chunk(a, &mut |c| Ok(ts.put(c))).unwrap()
    }

    fn dec(bytes: &[u8], ts: &TimestampChunks) -> std::result::Result<AggrSeries, String> {
        decode_aggr_chunk(bytes, &|r| ts.get(r))
    }

    #[test]
    fn counter_with_resets_and_marker() {
        let mut ts = TimestampChunks::default();
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
        let (mint, maxt, bytes) = enc(&a, &mut ts);
        assert_eq!((mint, maxt), (0, 11));
        assert_eq!(dec(&bytes, &ts).unwrap(), a);
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
    fn decimal_form_round_trips() {
        let mut ts = TimestampChunks::default();
        let raw: Vec<Sample> = (0..50).map(|i| s(i * 3, (i * i) as f64)).collect();
        let a = aggregate_raw(&raw, 10);
        assert_eq!(a.counter.len(), a.max.len() + 1, "leading sample");
        let (_, _, bytes) = enc(&a, &mut ts);
        assert_eq!(bytes[1], FLAG_DECIMAL);
        assert_eq!(dec(&bytes, &ts).unwrap(), a);
        let single = aggregate_raw(&[s(5, 1.0), s(15, 2.0)], 10);
        let (_, _, bytes) = enc(&single, &mut ts);
        assert_eq!(dec(&bytes, &ts).unwrap(), single);
    }

    #[test]
    fn decimal_sums_are_exact() {
        // 0.1 + 0.2 in f64 is 0.30000000000000004; the decimal sum is 0.3.
        let a = aggregate_raw(&[s(1, 0.1), s(2, 0.2), s(3, 0.25)], 10);
        assert_eq!(a.sum[0].v.to_bits(), 0.55f64.to_bits());
        // A reset: counter = 0.05 + 0.25 + 0.2 (value before the drop) exactly.
        let a = aggregate_raw(&[s(1, 0.1), s(2, 0.25), s(3, 0.05)], 10);
        assert_eq!(a.counter.last().unwrap().v.to_bits(), 0.3f64.to_bits());
        // 1 h from 5 m sums stays exact.
        let raw: Vec<Sample> = (0..40).map(|i| s(i, 0.1)).collect();
        let h = aggregate_aggr(&aggregate_raw(&raw, 10), 100);
        assert_eq!(h.sum[0].v.to_bits(), 4.0f64.to_bits());
        // Not decimal: the f64 sum.
        let third = 1.0 / 3.0;
        let a = aggregate_raw(&[s(1, third), s(2, third)], 10);
        assert_eq!(a.sum[0].v.to_bits(), (third + third).to_bits());
    }

    #[test]
    fn plain_form_for_other_floats() {
        let mut ts = TimestampChunks::default();
        let raw: Vec<Sample> = (0..60)
            .map(|i| s(i * 2, (i as f64 * 0.7).sin() * std::f64::consts::PI))
            .collect();
        let a = aggregate_raw(&raw, 10);
        let (_, _, bytes) = enc(&a, &mut ts);
        assert_eq!(bytes[1] & FLAG_DECIMAL, 0);
        assert_eq!(dec(&bytes, &ts).unwrap(), a);
        // A monotone float series: max and counter equal last and are not stored.
        let raw: Vec<Sample> = (0..60).map(|i| s(i * 2, (i as f64).sqrt())).collect();
        let a = aggregate_raw(&raw, 10);
        let (_, _, bytes) = enc(&a, &mut ts);
        assert_eq!(bytes[1], FLAG_MAX_IS_LAST | FLAG_COUNTER_IS_LAST);
        assert_eq!(dec(&bytes, &ts).unwrap(), a);
    }

    #[test]
    fn decode_rejects_garbage() {
        let mut ts = TimestampChunks::default();
        assert!(dec(&[], &ts).is_err());
        assert!(dec(&[9, 0], &ts).is_err());
        assert!(dec(&[1, 0], &ts).is_err(), "version 1 is not read");
        assert!(dec(&[2, 0], &ts).is_err(), "version 2 is not read");
        assert!(dec(&[3, 1, 0], &ts).is_err());
        assert!(dec(&[3, 1, 16, 0, 0], &ts).is_err(), "exponent");
        assert!(dec(&[3, 0, 200], &ts).is_err());
        assert!(dec(&[3, 64], &ts).is_err(), "flags");
        // Every truncation of a valid chunk is an error, never a panic.
        let raw: Vec<Sample> = (0..50).map(|i| s(i * 3, (i % 7) as f64)).collect();
        let (_, _, bytes) = enc(&aggregate_raw(&raw, 10), &mut ts);
        for n in 0..bytes.len() {
            assert!(dec(&bytes[..n], &ts).is_err(), "truncated at {n}");
        }
    }

    /// Version 3 (the count chunk with its own timestamps, no timestamp chunk) is still read.
    #[test]
    fn version_3_and_older_version_4_are_read() {
        let mut ts = TimestampChunks::default();
        for raw in [
            (0..50)
                .map(|i| s(i * 3, (i * i) as f64))
                .collect::<Vec<_>>(),
            (0..60).map(|i| s(i * 2, (i as f64 * 0.7).sin())).collect(),
        ] {
            let a = aggregate_raw(&raw, 10);
            let (_, _, v4) = enc(&a, &mut ts);
            // The shared chunk holds the timestamps and the counts; the count part is empty.
            let at = if v4[1] & FLAG_DECIMAL != 0 { 5 } else { 2 };
            let mut pos = at;
            let r = get_uvarint(&v4, &mut pos).unwrap();
            assert_eq!(get_uvarint(&v4, &mut pos), Some(0), "empty count part");
            let count = ts.get(r).unwrap().to_vec();
            let prefix = ts_prefix_len(&count).unwrap();
            // v4 as written before the counts moved: a shared chunk of zeros, the counts' value
            // stream as the count part.
            let zeros: Vec<Sample> = a.count.iter().map(|c| Sample::new(c.t, 0.0)).collect();
            let r0 = ts.put(&encode_stream(&zeros).unwrap());
            let mut old = v4[..at].to_vec();
            put_uvarint(&mut old, r0);
            put_uvarint(&mut old, (count.len() - prefix) as u64);
            old.extend_from_slice(&count[prefix..]);
            old.extend_from_slice(&v4[pos..]);
            assert_eq!(decode_aggr_chunk(&old, &|r| ts.get(r)).unwrap(), a);
            // v3 = v4 without the ref, with the whole count chunk as the count part.
            let mut v3 = vec![AGGR_CHUNK_V3];
            v3.extend_from_slice(&v4[1..at]);
            put_uvarint(&mut v3, count.len() as u64);
            v3.extend_from_slice(&count);
            v3.extend_from_slice(&v4[pos..]);
            let none = |r: u64| -> std::result::Result<&[u8], String> { Err(format!("no {r}")) };
            assert_eq!(decode_aggr_chunk(&v3, &none).unwrap(), a);
            // Only some aggregates: the same values, the others empty.
            let only = decode_aggr_chunk_only(&v3, &none, &[Aggregate::Counter]).unwrap();
            assert_eq!(
                (only.counter, only.raw_last),
                (a.counter.clone(), a.raw_last)
            );
            assert!(only.sum.is_empty() && only.count.is_empty());
        }
    }

    /// Decoding a subset gives the same samples as decoding everything.
    #[test]
    fn decoding_one_aggregate_matches_all() {
        let mut ts = TimestampChunks::default();
        let raw: Vec<Sample> = (0..300)
            .map(|i| s(i * 7, f64::from((i * 37 % 101) as u32) * 0.5))
            .collect();
        let a = aggregate_raw(&raw, 60);
        let (_, _, bytes) = enc(&a, &mut ts);
        for g in Aggregate::ALL {
            let one = decode_aggr_chunk_only(&bytes, &|r| ts.get(r), &[g]).unwrap();
            assert_eq!(one.get(g), a.get(g), "{}", g.name());
            if g == Aggregate::Counter {
                assert_eq!(one.raw_last, a.raw_last);
            }
        }
    }
}
