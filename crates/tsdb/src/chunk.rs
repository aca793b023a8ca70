//! The chunk codec: Tidemark's own bit-level encoding of up to a few thousand float samples of one
//! series, in the Gorilla family. The byte layout is documented in `docs/format/chunks.md`.
//!
//! A chunk holds two independent bit streams, so that the decoder's two dependency chains
//! (timestamps and values) overlap in the CPU:
//!
//! - **timestamps**: the first timestamp, then the interval `d` (rounded to whole seconds when the
//!   first delta is within 1.6% of them); every later timestamp is coded as its offset from a
//!   grid point `g + d` (the grid does not follow scrape jitter, so a 2 ms jitter costs ~2 bits),
//!   Rice-coded with an adaptive parameter and an Elias-gamma tail for late samples; a missed
//!   scrape is an anchor escape that re-anchors the grid.
//! - **values**: while every value is an exact decimal `m / 10^e` (what exposition text holds: `12.5`,
//!   `1048576`), the integer deltas `m_i - m_{i-1}` (divided by their common power of two, for
//!   byte counts) are Rice-coded with an adaptive parameter; a
//!   value that needs more decimals switches `e`, a lone NaN/±Inf/-0.0 is stored raw, and any other
//!   value switches the rest of the chunk to Gorilla XOR coding. Every f64 bit pattern round-trips.
//!
//! [`decode_all`] is the bulk path (what queries use): it decodes every timestamp of a chunk, then
//! every value, each pass with its stream's state in registers; timestamps of scrape jitter go
//! several at a time through table steps (`TS_STEP`). [`ChunkIter`] runs the same passes over
//! batches of 64 samples.

mod bits;

use bits::{BitReader, BitWriter, FastBits};
use tidemark_model::Sample;
use tidemark_storage::SampleIter;

/// The encoding byte of Tidemark's float chunk format, version 1 (first byte of every chunk and the
/// encoding stored beside it in chunk segment files).
pub const ENCODING_XOR: u8 = 1;

/// Upper bound of samples in one chunk accepted by the decoder (and the encoder).
pub const MAX_SAMPLES: usize = 1 << 20;

/// Unary prefixes of this many zero bits (or more) mark an escape.
const RICE_LIMIT: u32 = 16;
/// Cap of one observation in the adaptive Rice state.
const RICE_CAP: u64 = 1 << 56;
/// Mode code: values are XOR coded (sticky for the rest of the chunk).
const MODE_FLOAT: u32 = 31;
/// Mode code (first in the value stream only): every sample has the value that follows.
const MODE_CONST: u32 = 30;
/// Largest decimal exponent (10^22 is the largest power of ten exact in f64).
const MAX_EXP: u32 = 22;
/// Value escape sub-codes.
const ESC_BIG_DELTA: u64 = 0;
const ESC_EXCEPTION: u64 = 1;
const ESC_SWITCH: u64 = 2;
const ESC_RESHIFT: u64 = 3;
/// Smallest non-zero decimal delta shift.
const MIN_SHIFT: u32 = 4;
/// Initial state of the timestamp Rice parameter (k = 0: unary, right for scrape jitter).
const TS_RICE_INIT: u64 = 4;
/// Residuals of at most this magnitude are Rice coded; larger ones are escapes.
const TS_SMALL: i64 = 1 << 40;
/// Timestamp Rice codes have quotients below this; a prefix of this many zero bits starts a tail
/// code (Elias gamma) or an anchor escape.
const TS_Q: u32 = 4;
/// Zero bits after the [`TS_Q`] prefix that mark an anchor escape (gamma codes have fewer).
const TS_ANCHOR: u32 = 23;

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Errors of encoding and decoding chunks. Decoding errors say what was expected and what was
/// found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("out of order sample: timestamp {t} is not after the previous {prev}")]
    OutOfOrder { prev: i64, t: i64 },
    #[error("chunk is full: it already holds {max} samples")]
    Full { max: usize },
    #[error("chunk is empty: expected at least 2 header bytes, found {found}")]
    Empty { found: usize },
    #[error("unknown chunk encoding: expected {expected}, found {found}")]
    UnknownEncoding { expected: u8, found: u8 },
    #[error("bad chunk header at byte {offset}: expected {expected}, found {found}")]
    Header {
        offset: usize,
        expected: &'static str,
        found: String,
    },
    #[error("chunk claims {samples} samples but its {stream} stream holds only {bits} bits")]
    TooManySamples {
        samples: u64,
        stream: &'static str,
        bits: usize,
    },
    #[error(
        "chunk truncated in its {stream} stream by sample {index}: needed {needed} bits, found {available}"
    )]
    Truncated {
        stream: &'static str,
        index: usize,
        needed: usize,
        available: usize,
    },
    #[error("invalid {what} at sample {index}: expected {expected}, found {found}")]
    Invalid {
        what: &'static str,
        index: usize,
        expected: &'static str,
        found: u64,
    },
    #[error("timestamps not increasing at sample {index}: {t} after {prev}")]
    NotIncreasing { index: usize, prev: i64, t: i64 },
}

impl From<ChunkError> for tidemark_storage::Error {
    fn from(e: ChunkError) -> Self {
        tidemark_storage::Error::Corruption(e.to_string())
    }
}

#[inline(always)]
fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

#[inline(always)]
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// The decimal delta shift implied by `x`: its trailing zero bits (at most 62) when there are at
/// least [`MIN_SHIFT`] of them, else 0 (and 0 for `x = 0`). Byte counts (multiples of 512, 1024,
/// 4096) then cost only their multiple, while a counter whose first delta happens to be even does
/// not pay a reshift escape.
#[inline(always)]
fn shift_of(x: i64) -> u32 {
    let h = x.trailing_zeros().min(62);
    if x != 0 && h >= MIN_SHIFT { h } else { 0 }
}

/// The Rice state set by a delta written whole (the first one, or a reshift).
#[inline(always)]
fn rice_after_whole(delta: i64, shift: u32) -> Rice {
    Rice::new(zigzag(delta >> shift).min(RICE_CAP) * 4)
}

/// Maps a small timestamp residual to a code number, favouring late samples: 0, 1, 2 -> 0, 1, 2;
/// -1 -> 3; 3, 4, 5 -> 4, 5, 6; -2 -> 7; ... (every fourth code is an early sample).
#[inline(always)]
fn ts_map(r: i64) -> u64 {
    if r >= 0 {
        r as u64 + r as u64 / 3
    } else {
        (!r as u64) * 4 + 3
    }
}

/// [`ts_unmap`] of the small code numbers (almost every timestamp's).
const TS_UNMAP_SMALL: [i64; 64] = {
    let mut t = [0i64; 64];
    let mut z = 0;
    while z < 64 {
        t[z] = if z & 3 == 3 {
            !((z >> 2) as i64)
        } else {
            (z - (z >> 2)) as i64
        };
        z += 1;
    }
    t
};

/// The inverse of [`ts_map`]; a table look-up for the small code numbers (a branch on the low
/// bits costs more in the decoders' hot loops).
#[inline(always)]
fn ts_unmap(z: u64) -> i64 {
    match TS_UNMAP_SMALL.get(z as usize) {
        Some(&r) => r,
        None if z & 3 == 3 => !((z >> 2) as i64),
        None => (z - (z >> 2)) as i64,
    }
}

/// Rice states below this have a row in [`TS_STEP`].
const TS_STEP_STATES: usize = 16;
/// Codes decoded by one [`TS_STEP`] look-up at most (and timestamps it writes). An 8-bit window
/// holds up to 8; stopping at 6 writes two timestamps fewer per step for the rare window of 7 or 8
/// on-time samples (64.5 instructions/sample against 66.0 with 8 and 64.4 with 5).
const TS_STEP_MAX: usize = 6;

/// What one table step of the timestamp decoder does with the next 8 bits `w` of the stream
/// when `k = 0` and the Rice state is `s`: `TS_STEP[s * 256 + w]` packs the number `c` of
/// `k = 0` Rice codes (`q < 4` zeros and a one) decoded (bits 0-3), the bits they take (4-7),
/// the state `s` after them (8-11) and `k` after them (bit 12; so bits 8-12 are `s + 16 k`, and
/// the next row to read when they are below 16). Decoding stops before a code that
/// does not fit in the 8 bits, has `q >= 4` (a tail code or an anchor) or would be read with
/// `k != 0`, so `c = 0` sends the decoder to its per-code path. The state stays below 16:
/// `s - (s >> 2) + q <= 15` for `s <= 15`, `q <= 3`.
static TS_STEP: [u16; TS_STEP_STATES * 256] = {
    let mut t = [0u16; TS_STEP_STATES * 256];
    let mut s0 = 0;
    while s0 < TS_STEP_STATES {
        let mut w = 0;
        while w < 256 {
            let (mut s, mut k, mut pos, mut c) = (s0 as u64, 0u32, 0u32, 0u32);
            while (c as usize) < TS_STEP_MAX && k == 0 {
                let q = ((((w as u32) << pos) & 0xff) | 1).leading_zeros() - 24;
                if q >= TS_Q || pos + q + 1 > 8 {
                    break;
                }
                pos += q + 1;
                k = Rice::k_of(s);
                s = s - (s >> 2) + q as u64;
                c += 1;
            }
            t[s0 * 256 + w] = (c | (pos << 4) | ((s as u32) << 8) | (k << 12)) as u16;
            w += 1;
        }
        s0 += 1;
    }
    t
};

/// For the next 8 bits `w` of the timestamp stream read as `k = 0` Rice codes (as far as they go):
/// `TS_OFFSETS[w][j]` is `t_j - (g + (j + 1) * d)`, where `t_j` is the timestamp of the `j`-th code
/// and `g` the grid before the first; `TS_GRID[w][j]` is how far the grid moved, beyond
/// `(j + 1) * d`, after `j + 1` codes. Entries past the last code of `w` repeat its values.
static TS_OFFSETS: [[i8; TS_STEP_MAX]; 256] = ts_offset_tables().0;
static TS_GRID: [[i8; TS_STEP_MAX]; 256] = ts_offset_tables().1;

const fn ts_offset_tables() -> ([[i8; TS_STEP_MAX]; 256], [[i8; TS_STEP_MAX]; 256]) {
    let mut offs = [[0i8; TS_STEP_MAX]; 256];
    let mut grid = [[0i8; TS_STEP_MAX]; 256];
    let mut w = 0;
    while w < 256 {
        let (mut pos, mut g, mut last_off) = (0u32, 0i64, 0i64);
        let mut j = 0;
        while j < TS_STEP_MAX {
            let q = ((((w as u32) << pos) & 0xff) | 1).leading_zeros() - 24;
            if q < TS_Q && pos + q < 8 {
                pos += q + 1;
                let r = TS_UNMAP_SMALL[q as usize];
                last_off = g + r;
                g += if r < 0 { r } else { 0 };
            }
            offs[w][j] = last_off as i8;
            grid[w][j] = g as i8;
            j += 1;
        }
        w += 1;
    }
    (offs, grid)
}

/// Adaptive Rice parameter. The parameter used for a sample comes from the state two samples
/// back, which keeps the state update off the decoder's critical path.
#[derive(Debug, Clone, Copy)]
struct Rice {
    k: u32,
    /// About 4x the running mean of the coded numbers.
    s: u64,
}

impl Rice {
    #[inline(always)]
    fn new(s: u64) -> Self {
        Rice {
            k: Self::k_of(s),
            s,
        }
    }

    #[inline(always)]
    const fn k_of(s: u64) -> u32 {
        ((s >> 2) | 1).ilog2()
    }

    #[inline(always)]
    fn update(&mut self, zz: u64) {
        self.k = Self::k_of(self.s);
        self.s = self.s - (self.s >> 2) + zz.min(RICE_CAP);
    }

    /// The update after a timestamp code: a tail code counts as `TS_Q << k`, so that one missed
    /// scrape does not inflate `k` for the samples after it (a run of tail codes still raises `k`
    /// by two per few samples).
    #[inline(always)]
    fn update_ts(&mut self, zz: u64) {
        self.update(zz.min(u64::from(TS_Q) << self.k));
    }
}

/// Writes `zz` Rice-coded with parameter `k`; false (and nothing written) when it needs an escape.
#[inline(always)]
fn write_rice(w: &mut BitWriter, zz: u64, k: u32) -> bool {
    let q = zz >> k;
    if q >= u64::from(RICE_LIMIT) {
        return false;
    }
    let n = q as u32 + 1 + k;
    if n <= 56 {
        // q zeros, a one, the k low bits: one field.
        w.write((1u64 << k) | (zz & ((1u64 << k) - 1)), n);
    } else {
        w.write(1, q as u32 + 1);
        w.write_long(zz & ((1u64 << k) - 1), k);
    }
    true
}

/// Writes a timestamp code number `zz`: Rice(k) when its quotient is below [`TS_Q`], else
/// [`TS_Q`] zero bits and the Elias gamma code of `zz - (TS_Q << k) + 1` when that is below
/// 2^[`TS_ANCHOR`]. False (nothing written) when it needs an anchor escape.
#[inline(always)]
fn write_ts_code(w: &mut BitWriter, zz: u64, k: u32) -> bool {
    let q = zz >> k;
    if q < u64::from(TS_Q) {
        let n = q as u32 + 1 + k;
        if n <= 56 {
            w.write((1u64 << k) | (zz & ((1u64 << k) - 1)), n);
        } else {
            w.write(1, q as u32 + 1);
            w.write_long(zz & ((1u64 << k) - 1), k);
        }
        return true;
    }
    let g = (zz - (u64::from(TS_Q) << k)).wrapping_add(1);
    if g == 0 || g >= 1 << TS_ANCHOR {
        return false;
    }
    let len = 64 - g.leading_zeros();
    // TS_Q zeros, len - 1 zeros, then g in len bits: at most 4 + 45 bits.
    w.write(g, TS_Q + 2 * len - 1);
    true
}

/// Reads a timestamp code written by [`write_ts_code`]; `None` when the anchor escape prefix was
/// read (and consumed).
#[inline(always)]
fn read_ts_code(r: &mut BitReader<'_>, k: u32) -> Option<u64> {
    let w = r.peek();
    let q = (w | 1).leading_zeros();
    if q < TS_Q {
        let used = q + 1;
        let low = if used + k <= 57 {
            r.skip(used + k);
            ((w << used) >> 1) >> (63 - k)
        } else {
            r.skip(used);
            r.read_long(k)
        };
        return Some((u64::from(q) << k) | low);
    }
    r.skip(TS_Q);
    let c = (r.peek() | 1).leading_zeros();
    if c >= TS_ANCHOR {
        r.skip(TS_ANCHOR);
        return None;
    }
    let g = r.read(2 * c + 1);
    Some((u64::from(TS_Q) << k).wrapping_add(g).wrapping_sub(1))
}

/// Reads a Rice code with parameter `k <= 56`; `None` when the escape prefix was read (and consumed).
#[inline(always)]
fn read_rice(r: &mut BitReader<'_>, k: u32) -> Option<u64> {
    let w = r.peek();
    // The low bit is never part of a prefix shorter than RICE_LIMIT; setting it lets the compiler
    // use a plain bit scan.
    let q = (w | 1).leading_zeros();
    if q >= RICE_LIMIT {
        r.skip(RICE_LIMIT);
        return None;
    }
    let used = q + 1;
    let low = if used + k <= 57 {
        r.skip(used + k);
        ((w << used) >> 1) >> (63 - k)
    } else {
        r.skip(used);
        r.read_long(k)
    };
    Some((u64::from(q) << k) | low)
}

/// `v` as `m / 10^e` exactly (bit for bit), if possible with `|m| < 2^53`.
#[inline(always)]
fn decimal_at(v: f64, e: u32) -> Option<i64> {
    let p = POW10[e as usize];
    let s = v * p;
    // Also rejects NaN (the comparison is false).
    if s.abs().partial_cmp(&9_007_199_254_740_992.0) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    let m = (s + 0.5f64.copysign(s)) as i64;
    if ((m as f64) / p).to_bits() == v.to_bits() {
        Some(m)
    } else {
        None
    }
}

/// The smallest exponent `>= from` that represents `v` exactly.
fn find_decimal(v: f64, from: u32) -> Option<(u32, i64)> {
    if !v.is_finite() {
        return None;
    }
    (from..=MAX_EXP).find_map(|e| decimal_at(v, e).map(|m| (e, m)))
}

#[inline(always)]
fn is_special(v: f64) -> bool {
    !v.is_finite() || v.to_bits() == (-0.0f64).to_bits()
}

/// Appends samples to one chunk. Cheap to keep open: it holds only the two encoded streams and a
/// few words of state, and can be read ([`ChunkEncoder::iter`]) or copied out
/// ([`ChunkEncoder::bytes`]) at any time.
#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    ts: BitWriter,
    vs: BitWriter,
    n: u32,
    t_first: i64,
    t_last: i64,
    grid: i64,
    delta: i64,
    ts_rice: Rice,
    /// Decimal exponent, or [`MODE_FLOAT`].
    mode: u32,
    m: i64,
    vbits: u64,
    lead: u32,
    trail: u32,
    v_rice: Rice,
    /// Decimal deltas are multiples of `2^shift`, coded divided by it.
    shift: u32,
    last_exception: bool,
    /// Bits of the value stream taken by the first sample.
    v_first_bits: u32,
    /// Every value so far has the bits of the first.
    all_same: bool,
    /// Bits of the first value.
    first: u64,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        ChunkEncoder {
            ts: BitWriter::default(),
            vs: BitWriter::default(),
            n: 0,
            t_first: 0,
            t_last: 0,
            grid: 0,
            delta: 0,
            ts_rice: Rice::new(TS_RICE_INIT),
            mode: 0,
            m: 0,
            vbits: 0,
            lead: 64,
            trail: 0,
            v_rice: Rice::new(0),
            shift: 0,
            last_exception: false,
            v_first_bits: 0,
            all_same: true,
            first: 0,
        }
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a sample. `t` must be greater than the previous timestamp.
    #[inline]
    pub fn append(&mut self, t: i64, v: f64) -> Result<(), ChunkError> {
        if self.n > 0 && t <= self.t_last {
            return Err(ChunkError::OutOfOrder {
                prev: self.t_last,
                t,
            });
        }
        if self.n as usize >= MAX_SAMPLES {
            return Err(ChunkError::Full { max: MAX_SAMPLES });
        }
        self.append_t(t);
        if self.n == 0 {
            self.first_v(v);
            self.t_first = t;
        } else {
            self.all_same &= v.to_bits() == self.first_bits();
            self.append_v(v);
        }
        self.t_last = t;
        self.n += 1;
        Ok(())
    }

    /// Bits of the first value (only meaningful while `all_same`).
    #[inline(always)]
    fn first_bits(&self) -> u64 {
        self.first
    }

    #[inline(always)]
    fn append_t(&mut self, t: i64) {
        match self.n {
            0 => {
                self.ts.write_varbits(zigzag(t));
                self.grid = t;
                return;
            }
            1 => {
                let raw = t.wrapping_sub(self.t_last) as u64;
                let d = if (1000..=1 << 40).contains(&raw) {
                    let r = (raw + 500) / 1000 * 1000;
                    if raw.abs_diff(r) <= raw / 64 { r } else { raw }
                } else {
                    raw
                };
                // Whole seconds (the usual scrape interval) cost 10 bits fewer.
                if d != 0 && d % 1000 == 0 {
                    self.ts.write(1, 1);
                    self.ts.write_varbits(d / 1000);
                } else {
                    self.ts.write(0, 1);
                    self.ts.write_varbits(d);
                }
                self.delta = d as i64;
            }
            _ => {}
        }
        let pred = self.grid.wrapping_add(self.delta);
        let r = t.wrapping_sub(pred);
        // A sample late by more than half an interval (a missed scrape) re-anchors the grid:
        // coded against the old grid, every later sample would be late too.
        if (-TS_SMALL..=TS_SMALL).contains(&r) && r <= (self.delta / 2).max(8) {
            let zz = ts_map(r);
            if write_ts_code(&mut self.ts, zz, self.ts_rice.k) {
                self.ts_rice.update_ts(zz);
                self.grid = pred.wrapping_add(r.min(0));
                return;
            }
        }
        self.ts.write(0, TS_Q + TS_ANCHOR);
        self.ts.write_varbits(zigzag(r));
        self.grid = t;
    }

    #[cold]
    fn first_v(&mut self, v: f64) {
        let bits = v.to_bits();
        self.first = bits;
        if let Some((e, m)) = find_decimal(v, 0) {
            self.vs.write(u64::from(e), 5);
            self.vs.write_varbits(zigzag(m));
            self.mode = e;
            self.m = m;
        } else {
            self.vs.write(u64::from(MODE_FLOAT), 5);
            self.vs.write_long(bits, 64);
            self.mode = MODE_FLOAT;
            self.vbits = bits;
        }
        self.v_first_bits = self.vs.bit_len() as u32;
    }

    #[inline(always)]
    fn append_v(&mut self, v: f64) {
        if self.mode == MODE_FLOAT {
            self.append_xor(v.to_bits());
            return;
        }
        if let Some(m) = decimal_at(v, self.mode) {
            let delta = m.wrapping_sub(self.m);
            if self.n == 1 {
                // The first delta is written whole and sets the shift and the Rice parameter.
                self.vs.write(1, 1);
                self.vs.write_varbits(zigzag(delta));
                self.shift = shift_of(self.m | delta);
                self.v_rice = rice_after_whole(delta, self.shift);
            } else if delta & ((1i64 << self.shift) - 1) == 0 {
                let zz = zigzag(delta >> self.shift);
                if !write_rice(&mut self.vs, zz, self.v_rice.k) {
                    self.vs.write(0, RICE_LIMIT);
                    self.vs.write(ESC_BIG_DELTA, 2);
                    self.vs.write_varbits(zz);
                }
                self.v_rice.update(zz);
            } else {
                self.reshift(delta);
            }
            self.m = m;
            self.last_exception = false;
            return;
        }
        self.append_v_slow(v);
    }

    /// A delta that is not a multiple of `2^shift`: written whole, it sets a smaller shift.
    #[cold]
    fn reshift(&mut self, delta: i64) {
        self.vs.write(0, RICE_LIMIT);
        self.vs.write(ESC_RESHIFT, 2);
        self.vs.write_varbits(zigzag(delta));
        self.shift = shift_of(delta);
        self.v_rice = rice_after_whole(delta, self.shift);
    }

    #[cold]
    fn append_v_slow(&mut self, v: f64) {
        let bits = v.to_bits();
        if self.n == 1 {
            self.vs.write(0, 1);
        } else {
            self.vs.write(0, RICE_LIMIT);
        }
        if let Some((e, m)) = find_decimal(v, self.mode + 1) {
            self.vs.write(ESC_SWITCH, 2);
            self.vs.write(u64::from(e), 5);
            self.vs.write_varbits(zigzag(m));
            self.mode = e;
            self.m = m;
            self.shift = 0;
            self.last_exception = false;
        } else if is_special(v) && !self.last_exception {
            self.vs.write(ESC_EXCEPTION, 2);
            self.vs.write_long(bits, 64);
            self.last_exception = true;
        } else {
            self.vs.write(ESC_SWITCH, 2);
            self.vs.write(u64::from(MODE_FLOAT), 5);
            self.vs.write_long(bits, 64);
            self.mode = MODE_FLOAT;
            self.vbits = bits;
        }
    }

    #[inline(always)]
    fn append_xor(&mut self, bits: u64) {
        let x = bits ^ self.vbits;
        self.vbits = bits;
        if x == 0 {
            self.vs.write(0, 1);
            return;
        }
        let lead = x.leading_zeros();
        let trail = x.trailing_zeros();
        if lead >= self.lead && trail >= self.trail {
            let sig = 64 - self.lead - self.trail;
            self.vs.write(0b10, 2);
            self.vs.write_long(x >> self.trail, sig);
        } else {
            let sig = 64 - lead - trail;
            self.vs.write(0b11, 2);
            self.vs.write(u64::from(lead), 6);
            self.vs.write(u64::from(sig - 1), 6);
            self.vs.write_long(x >> trail, sig);
            self.lead = lead;
            self.trail = trail;
        }
    }

    pub fn num_samples(&self) -> usize {
        self.n as usize
    }

    pub fn min_time(&self) -> Option<i64> {
        (self.n > 0).then_some(self.t_first)
    }

    pub fn max_time(&self) -> Option<i64> {
        (self.n > 0).then_some(self.t_last)
    }

    /// True when the value stream is written in its constant form (all values bit-identical).
    fn constant(&self) -> bool {
        self.n >= 2 && self.all_same
    }

    fn value_bytes(&self) -> usize {
        if self.constant() {
            (5 + self.v_first_bits as usize).div_ceil(8)
        } else {
            self.vs.byte_len()
        }
    }

    /// Size of [`ChunkEncoder::bytes`] right now.
    pub fn size_bytes(&self) -> usize {
        let ts = self.ts.byte_len();
        let mut size = 1 + uvarint_len(u64::from(self.n));
        if self.n > 0 {
            size += uvarint_len(ts as u64) + ts + self.value_bytes();
        }
        size
    }

    /// Hints the CPU to load the cache lines the next sample is written to (callers that are
    /// about to append to many encoders in turn).
    #[inline(always)]
    pub fn prefetch(&self) {
        self.ts.prefetch();
        self.vs.prefetch();
    }

    /// Heap memory held by the encoder (both streams' capacity).
    pub fn heap_bytes(&self) -> usize {
        self.ts.capacity() + self.vs.capacity()
    }

    /// The encoded chunk of all samples so far; the encoder stays usable.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_bytes());
        out.push(ENCODING_XOR);
        put_uvarint(&mut out, u64::from(self.n));
        if self.n > 0 {
            put_uvarint(&mut out, self.ts.byte_len() as u64);
            out.extend_from_slice(self.ts.bytes());
            if self.constant() {
                let mut w = BitWriter::default();
                w.write(u64::from(MODE_CONST), 5);
                let mut r = BitReader::new(self.vs.bytes());
                let mut left = self.v_first_bits;
                while left > 0 {
                    let n = left.min(32);
                    w.write(r.read(n), n);
                    left -= n;
                }
                out.extend_from_slice(w.bytes());
            } else {
                out.extend_from_slice(self.vs.bytes());
            }
        }
        out
    }

    /// Iterates the samples appended so far, without copying.
    pub fn iter(&self) -> ChunkIter<'_> {
        let ts = BitReader::with_padding(self.ts.padded(), self.ts.byte_len());
        let vs = BitReader::with_padding(self.vs.padded(), self.vs.byte_len());
        ChunkIter::with_decoder(Decoder::new(ts, vs, self.n as usize))
    }
}

fn uvarint_len(mut x: u64) -> usize {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

fn put_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Reads a uvarint at `*pos`; `what` names the field in the error.
#[inline]
fn get_uvarint(data: &[u8], pos: &mut usize, what: &'static str) -> Result<u64, ChunkError> {
    match data.get(*pos) {
        Some(&b) if b < 0x80 => {
            *pos += 1;
            Ok(u64::from(b))
        }
        _ => get_uvarint_long(data, pos, what),
    }
}

/// [`get_uvarint`] of more than one byte (or of none).
#[inline(never)]
fn get_uvarint_long(data: &[u8], pos: &mut usize, what: &'static str) -> Result<u64, ChunkError> {
    let start = *pos;
    let mut x = 0u64;
    for i in 0..10 {
        let Some(&b) = data.get(*pos) else {
            return Err(ChunkError::Header {
                offset: *pos,
                expected: what,
                found: format!("end of data after {} bytes", data.len()),
            });
        };
        *pos += 1;
        if i == 9 && b > 1 {
            break;
        }
        x |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(x);
        }
    }
    Err(ChunkError::Header {
        offset: start,
        expected: what,
        found: "a varint longer than 64 bits".into(),
    })
}

/// Timestamp decoding state.
#[derive(Debug, Clone)]
struct TsDecoder<'a> {
    r: BitReader<'a>,
    grid: i64,
    delta: i64,
    rice: Rice,
}

impl TsDecoder<'_> {
    /// Reads the first timestamp and, when `interval` (the chunk has a second sample), the
    /// interval `d`, through a register buffer (a few bit-field reads, not one bounds-checked
    /// 64-bit load each).
    #[inline(always)]
    fn header(&mut self, interval: bool) -> i64 {
        let data = self.r.data();
        let mut f = FastBits::new(data, self.r.pos());
        self.grid = unzigzag(f.take_varbits(data));
        if interval {
            let secs = f.take(data, 1) == 1;
            let d = f.take_varbits(data);
            self.delta = if secs { d.wrapping_mul(1000) } else { d } as i64;
        }
        self.r.set_pos(f.pos());
        self.grid
    }

    #[inline(always)]
    fn next(&mut self) -> i64 {
        let pred = self.grid.wrapping_add(self.delta);
        match read_ts_code(&mut self.r, self.rice.k) {
            Some(zz) => {
                self.rice.update_ts(zz);
                let res = ts_unmap(zz);
                self.grid = pred.wrapping_add(res.min(0));
                pred.wrapping_add(res)
            }
            None => self.escape(pred),
        }
    }

    #[cold]
    fn escape(&mut self, pred: i64) -> i64 {
        let t = pred.wrapping_add(unzigzag(self.r.read_varbits()));
        self.grid = t;
        t
    }
}

/// Value decoding state.
#[derive(Debug, Clone)]
struct ValDecoder<'a> {
    r: BitReader<'a>,
    /// Decimal exponent, [`MODE_FLOAT`] or [`MODE_CONST`].
    mode: u32,
    /// 10^mode in decimal mode.
    p: f64,
    m: i64,
    /// Decimal deltas are coded divided by `2^shift`.
    shift: u32,
    vbits: u64,
    lead: u32,
    trail: u32,
    rice: Rice,
    /// Set when the stream holds an invalid code (decoding then yields garbage until the end).
    error: Option<(&'static str, &'static str, u64)>,
}

impl ValDecoder<'_> {
    #[cold]
    fn first(&mut self) -> f64 {
        let mode = self.r.read(5) as u32;
        if mode == MODE_CONST {
            let inner = self.r.read(5) as u32;
            let v = if inner == MODE_CONST {
                self.invalid_mode(inner)
            } else {
                self.set_mode(inner)
            };
            self.mode = MODE_CONST;
            self.vbits = v.to_bits();
            return v;
        }
        self.set_mode(mode)
    }

    /// [`ValDecoder::first`] through a register buffer, for valid mode codes; `None` (and
    /// nothing consumed or changed) for an invalid one.
    #[inline(always)]
    fn first_fast(&mut self) -> Option<f64> {
        let data = self.r.data();
        let mut f = FastBits::new(data, self.r.pos());
        let mut mode = f.take(data, 5) as u32;
        let constant = mode == MODE_CONST;
        if constant {
            mode = f.take(data, 5) as u32;
        }
        let v = if mode == MODE_FLOAT {
            self.vbits = f.take_long(data, 64);
            f64::from_bits(self.vbits)
        } else {
            let &p = POW10.get(mode as usize)?;
            self.p = p;
            self.shift = 0;
            self.m = unzigzag(f.take_varbits(data));
            self.m as f64 / p
        };
        if constant {
            self.mode = MODE_CONST;
            self.vbits = v.to_bits();
        } else {
            self.mode = mode;
        }
        self.r.set_pos(f.pos());
        Some(v)
    }

    /// [`ValDecoder::second`] through a register buffer when it is a decimal first delta.
    #[inline(always)]
    fn second_fast(&mut self) -> f64 {
        if self.mode == MODE_FLOAT || self.mode == MODE_CONST {
            return self.second();
        }
        let data = self.r.data();
        let mut f = FastBits::new(data, self.r.pos());
        if f.take(data, 1) == 0 {
            return self.second();
        }
        let delta = unzigzag(f.take_varbits(data));
        self.r.set_pos(f.pos());
        self.shift = shift_of(self.m | delta);
        self.rice = rice_after_whole(delta, self.shift);
        self.m = self.m.wrapping_add(delta);
        self.m as f64 / self.p
    }

    fn invalid_mode(&mut self, mode: u32) -> f64 {
        self.error.get_or_insert((
            "value mode",
            "a decimal exponent 0..=22, 30 (constant, first only) or 31 (float)",
            u64::from(mode),
        ));
        self.mode = MODE_FLOAT;
        f64::NAN
    }

    /// Reads the payload of a mode code (the first sample or a switch).
    fn set_mode(&mut self, mode: u32) -> f64 {
        if mode == MODE_FLOAT {
            self.mode = MODE_FLOAT;
            self.vbits = self.r.read_long(64);
            return f64::from_bits(self.vbits);
        }
        let Some(&p) = POW10.get(mode as usize) else {
            return self.invalid_mode(mode);
        };
        self.mode = mode;
        self.p = p;
        self.shift = 0;
        self.m = unzigzag(self.r.read_varbits());
        self.m as f64 / p
    }

    /// The second value: in decimal mode a flag bit, then the whole first delta (which sets the
    /// Rice parameter) or an escape code.
    #[cold]
    fn second(&mut self) -> f64 {
        if self.mode == MODE_FLOAT || self.mode == MODE_CONST {
            return self.next();
        }
        if self.r.read(1) == 0 {
            return self.escape();
        }
        let delta = unzigzag(self.r.read_varbits());
        self.shift = shift_of(self.m | delta);
        self.rice = rice_after_whole(delta, self.shift);
        self.m = self.m.wrapping_add(delta);
        self.m as f64 / self.p
    }

    #[inline(always)]
    fn next(&mut self) -> f64 {
        match self.mode {
            MODE_FLOAT => self.next_xor(),
            MODE_CONST => f64::from_bits(self.vbits),
            _ => self.next_decimal::<false>(),
        }
    }

    /// The next value in decimal mode (`INT`: the exponent is 0, no division needed).
    #[inline(always)]
    fn next_decimal<const INT: bool>(&mut self) -> f64 {
        match read_rice(&mut self.r, self.rice.k) {
            Some(zz) => {
                self.rice.update(zz);
                self.m = self.m.wrapping_add(unzigzag(zz) << self.shift);
                if INT {
                    self.m as f64
                } else {
                    self.m as f64 / self.p
                }
            }
            None => self.escape(),
        }
    }

    #[cold]
    fn escape(&mut self) -> f64 {
        match self.r.read(2) {
            ESC_BIG_DELTA => {
                let zz = self.r.read_varbits();
                self.rice.update(zz);
                self.m = self.m.wrapping_add(unzigzag(zz) << self.shift);
                self.m as f64 / self.p
            }
            ESC_RESHIFT => {
                let delta = unzigzag(self.r.read_varbits());
                self.shift = shift_of(delta);
                self.rice = rice_after_whole(delta, self.shift);
                self.m = self.m.wrapping_add(delta);
                self.m as f64 / self.p
            }
            ESC_EXCEPTION => f64::from_bits(self.r.read_long(64)),
            ESC_SWITCH => {
                let mode = self.r.read(5) as u32;
                if mode == MODE_CONST {
                    self.invalid_mode(mode)
                } else {
                    self.set_mode(mode)
                }
            }
            other => {
                // Unreachable for a 2-bit code; kept so that a future code cannot go unchecked.
                self.error.get_or_insert((
                    "value escape code",
                    "0 (big delta), 1 (exception), 2 (switch) or 3 (reshift)",
                    other,
                ));
                self.mode = MODE_FLOAT;
                f64::NAN
            }
        }
    }

    #[inline(always)]
    fn next_xor(&mut self) -> f64 {
        let w = self.r.peek();
        if w >> 63 == 0 {
            self.r.skip(1);
        } else if w >> 62 == 0b10 {
            self.r.skip(2);
            let sig = 64u32.saturating_sub(self.lead + self.trail);
            let x = self.r.read_long(sig);
            self.vbits ^= x << self.trail.min(63);
        } else {
            self.r.skip(2);
            let lead = self.r.read(6) as u32;
            let sig = self.r.read(6) as u32 + 1;
            let trail = 64u32.saturating_sub(lead + sig);
            let x = self.r.read_long(sig);
            self.vbits ^= x << trail.min(63);
            self.lead = lead;
            self.trail = trail;
        }
        f64::from_bits(self.vbits)
    }
}

/// Decoding state over the two streams of one chunk.
#[derive(Debug, Clone)]
struct Decoder<'a> {
    ts: TsDecoder<'a>,
    vs: ValDecoder<'a>,
    /// Index of the next sample to decode.
    i: usize,
    n: usize,
}

impl<'a> Decoder<'a> {
    fn new(ts: BitReader<'a>, vs: BitReader<'a>, n: usize) -> Self {
        Decoder {
            ts: TsDecoder {
                r: ts,
                grid: 0,
                delta: 0,
                rice: Rice::new(TS_RICE_INIT),
            },
            vs: ValDecoder {
                r: vs,
                mode: 0,
                p: 1.0,
                m: 0,
                shift: 0,
                vbits: 0,
                lead: 64,
                trail: 0,
                rice: Rice::new(0),
                error: None,
            },
            i: 0,
            n,
        }
    }

    /// Parses the header of a full chunk.
    fn parse(data: &'a [u8]) -> Result<Self, ChunkError> {
        Self::parse_streams(data).map(|(d, _, _)| d)
    }

    /// Parses the header of a full chunk (inlined: the decoder is built in its caller's frame, not
    /// copied out); also returns the bytes of both streams (the
    /// timestamp stream, then the value stream) and the bit position where the value stream
    /// starts in them.
    #[inline(always)]
    fn parse_streams(data: &'a [u8]) -> Result<(Self, &'a [u8], usize), ChunkError> {
        if data.len() < 2 {
            return Err(ChunkError::Empty { found: data.len() });
        }
        if data[0] != ENCODING_XOR {
            return Err(ChunkError::UnknownEncoding {
                expected: ENCODING_XOR,
                found: data[0],
            });
        }
        let mut pos = 1;
        let n = get_uvarint(data, &mut pos, "sample count")?;
        if n == 0 {
            let d = Decoder::new(BitReader::new(&[]), BitReader::new(&[]), 0);
            return Ok((d, &[], 0));
        }
        if n > MAX_SAMPLES as u64 {
            return Err(ChunkError::Header {
                offset: 1,
                expected: "a sample count of at most 1048576",
                found: n.to_string(),
            });
        }
        let ts_len = get_uvarint(data, &mut pos, "timestamp stream length")?;
        let rest = data.len() - pos;
        if ts_len > rest as u64 {
            return Err(ChunkError::Header {
                offset: pos,
                expected: "a timestamp stream length within the chunk",
                found: format!("{ts_len} bytes but only {rest} remain"),
            });
        }
        let streams = &data[pos..];
        let ts_len = ts_len as usize;
        // Every sample after the first takes at least one bit of the timestamp stream.
        if n - 1 > ts_len as u64 * 8 {
            return Err(ChunkError::TooManySamples {
                samples: n,
                stream: "timestamp",
                bits: ts_len * 8,
            });
        }
        let ts = BitReader::with_padding(streams, ts_len);
        let vs = BitReader::new(&streams[ts_len..]);
        Ok((Decoder::new(ts, vs, n as usize), streams, ts_len * 8))
    }

    /// Error for streams read past their end or invalid codes.
    fn check(&self) -> Result<(), ChunkError> {
        if let Some((what, expected, found)) = self.vs.error {
            return Err(ChunkError::Invalid {
                what,
                index: self.i.saturating_sub(1),
                expected,
                found,
            });
        }
        for (stream, r) in [("timestamp", &self.ts.r), ("value", &self.vs.r)] {
            if r.overrun() {
                return Err(ChunkError::Truncated {
                    stream,
                    index: self.i.saturating_sub(1),
                    needed: r.pos(),
                    available: r.bit_len(),
                });
            }
        }
        Ok(())
    }
}

/// Decodes every sample of `data` (a whole chunk) and appends them to `out`. On error `out` is
/// left as it was.
///
/// Two passes over the chunk: every timestamp first (`ts_pass`), then every value
/// (`value_pass`). Each pass keeps only its own stream's state in registers, which the x86-64
/// register file holds without spilling; interleaving the streams in one loop needed ~19 live
/// integer registers and spilled the decimal accumulator onto its own dependency chain.
pub fn decode_all(data: &[u8], out: &mut Vec<Sample>) -> Result<(), ChunkError> {
    let (mut d, streams, vbase) = Decoder::parse_streams(data)?;
    let n = d.n;
    let start = out.len();
    // Slack after the last sample: the timestamp table steps write `TS_STEP_MAX` slots at a time.
    out.resize(start + n + TS_STEP_MAX - 1, Sample { t: 0, v: 0.0 });
    let dst = out.get_mut(start..).unwrap_or(&mut []);
    let mut increasing = true;
    if let Some((first, rest)) = dst.split_first_mut()
        && n > 0
    {
        let t = d.ts.header(n > 1);
        let v = match d.vs.first_fast() {
            Some(v) => v,
            None => d.vs.first(),
        };
        *first = Sample { t, v };
        if n > 1 {
            increasing = ts_pass(&mut d.ts, streams, rest, n - 1) && rest[0].t > first.t;
            let rest = rest.get_mut(..n - 1).unwrap_or(&mut []);
            if d.vs.mode == MODE_CONST {
                rest.iter_mut().for_each(|s| s.v = v);
            } else if let Some((second, rest)) = rest.split_first_mut() {
                second.v = d.vs.second_fast();
                value_pass(&mut d.vs, streams, vbase, rest);
            }
        }
    }
    out.truncate(start + n);
    d.i = n;
    if let Err(e) = d.check() {
        out.truncate(start);
        return Err(e);
    }
    if !increasing {
        let got = out.get(start..).unwrap_or(&[]);
        let bad = got.windows(2).position(|w| w[1].t <= w[0].t).unwrap_or(0);
        let (prev, t) = (got[bad].t, got[bad + 1].t);
        out.truncate(start);
        return Err(ChunkError::NotIncreasing {
            index: bad + 1,
            prev,
            t,
        });
    }
    Ok(())
}

/// Decodes only the value stream of a chunk of `dst.len()` samples, given without the chunk's
/// header and timestamp stream (`values` = the bytes after them), into `dst[i].v`; the
/// timestamps in `dst` are left as they are. Downsampled blocks store value streams this way
/// beside one shared timestamp stream (docs/format/block.md).
pub fn decode_value_stream(values: &[u8], dst: &mut [Sample]) -> Result<(), ChunkError> {
    let n = dst.len();
    if n > MAX_SAMPLES {
        return Err(ChunkError::Header {
            offset: 0,
            expected: "a sample count of at most 1048576",
            found: n.to_string(),
        });
    }
    let mut d = Decoder::new(BitReader::new(&[]), BitReader::new(values), n);
    if let Some((first, rest)) = dst.split_first_mut() {
        let v = match d.vs.first_fast() {
            Some(v) => v,
            None => d.vs.first(),
        };
        first.v = v;
        if d.vs.mode == MODE_CONST {
            rest.iter_mut().for_each(|s| s.v = v);
        } else if let Some((second, rest)) = rest.split_first_mut() {
            second.v = d.vs.second_fast();
            value_pass(&mut d.vs, values, 0, rest);
        }
    }
    d.i = n;
    d.check()
}

/// Whether the timestamps of `run` increase, given `zor`, an upper bound of the bitwise or of
/// their code numbers (`u64::MAX` when one was an anchor escape), and `delta` the interval.
///
/// Timestamps need no comparison one by one when every code number is small: a residual `r`
/// has `|r| <= z` (its code number), so two consecutive timestamps differ by
/// `delta - max(r_prev, 0) + r >= delta - 2 * zor`, which is positive when `delta > 2 * zor`. Each
/// step is also at most `delta + zor`, so when `t_first + len * (delta + zor)` does not overflow,
/// no timestamp wrapped around. Otherwise the run is compared sample by sample.
fn run_increasing(run: &[Sample], zor: u64, delta: i64) -> bool {
    let Some(first) = run.first() else {
        return true;
    };
    let bound = i64::try_from(zor)
        .ok()
        .filter(|&z| z < 1 << 40 && delta > 2 * z)
        .and_then(|z| delta.checked_add(z))
        .and_then(|step| step.checked_mul(run.len() as i64))
        .and_then(|span| first.t.checked_add(span));
    bound.is_some() || run.windows(2).all(|w| w[1].t > w[0].t)
}

/// The next timestamp from the general path (escapes, long codes), with the register state
/// written back and reloaded around it. Takes and returns the state by value: a reference to the
/// hot loop's locals would keep them in memory.
#[cold]
#[inline(never)]
fn ts_slow(
    d: &mut TsDecoder<'_>,
    data: &[u8],
    tb: FastBits,
    grid: i64,
    rice: Rice,
) -> (i64, FastBits, i64, Rice) {
    d.r.set_pos(tb.pos());
    (d.grid, d.rice) = (grid, rice);
    let t = d.next();
    (t, FastBits::new(data, d.r.pos()), d.grid, d.rice)
}

/// Decodes the timestamps of samples 1..=`n` of a chunk (after its interval) into `dst[..].t`.
/// `dst` has `TS_STEP_MAX - 1` slots of slack after the `n` (their timestamps are garbage).
/// Returns whether the timestamps increase.
#[inline(never)]
fn ts_pass(d: &mut TsDecoder<'_>, data: &[u8], dst: &mut [Sample], n: usize) -> bool {
    let mut tb = FastBits::new(data, d.r.pos());
    let (mut grid, delta, mut rice) = (d.grid, d.delta, d.rice);
    // Neither the table steps nor the k = 0 path record their code numbers: they are at most 3.
    let mut zor = u64::from(TS_Q - 1);
    let mut i = 0;
    while i < n {
        if rice.k == 0 && rice.s < TS_STEP_STATES as u64 {
            // Table steps (up to `TS_STEP_MAX` codes per look-up) while k = 0; the loop makes no calls and
            // keeps only what it needs live, so that its state stays in registers.
            let mut st = rice.s as usize;
            loop {
                tb.refill(data);
                let w = (tb.buf >> 56) as usize;
                let Some(&e) = TS_STEP.get(st << 8 | w) else {
                    break;
                };
                let c = usize::from(e & 15);
                let Some(out) = dst
                    .get_mut(i..)
                    .and_then(|r| r.first_chunk_mut::<TS_STEP_MAX>())
                    // 1 <= c <= n - i, in one comparison.
                    .filter(|_| c.wrapping_sub(1) < n - i)
                else {
                    break;
                };
                // Every slot of `out` is written; those past the `c` decoded are overwritten
                // by the next steps (or are slack).
                let mut base = grid;
                for (o, &off) in out.iter_mut().zip(&TS_OFFSETS[w]) {
                    base = base.wrapping_add(delta);
                    o.t = base.wrapping_add(i64::from(off));
                }
                tb.consume(u32::from(e >> 4) & 15);
                // s after the codes, and 16 when k became 1.
                st = usize::from(e >> 8);
                let moved = TS_GRID[w].get(c - 1).copied().unwrap_or(0);
                grid = grid
                    .wrapping_add(delta.wrapping_mul(c as i64))
                    .wrapping_add(i64::from(moved));
                i += c;
                if i >= n {
                    break;
                }
            }
            rice = Rice {
                k: (st >> 4) as u32,
                s: (st & 15) as u64,
            };
            if i >= n {
                break;
            }
        }
        let t = match ts_fast(&mut tb, data, &mut grid, delta, &mut rice, &mut zor) {
            Some(t) => t,
            None => {
                let t;
                (t, tb, grid, rice) = ts_slow(d, data, tb, grid, rice);
                zor = u64::MAX;
                t
            }
        };
        if let Some(slot) = dst.get_mut(i) {
            slot.t = t;
        }
        i += 1;
    }
    d.r.set_pos(tb.pos());
    (d.grid, d.rice) = (grid, rice);
    run_increasing(dst.get(..n).unwrap_or(&[]), zor, delta)
}

/// The next timestamp from a register bit buffer; `None` (nothing consumed) for the codes the
/// general path handles: escapes and codes longer than the buffer holds. Code numbers of the
/// `k = 0` path (at most `TS_Q - 1`) are not or-ed into `zor`.
#[inline(always)]
fn ts_fast(
    tb: &mut FastBits,
    data: &[u8],
    grid: &mut i64,
    delta: i64,
    rice: &mut Rice,
    zor: &mut u64,
) -> Option<i64> {
    tb.refill(data);
    let w = tb.buf;
    let q = (w | 1).leading_zeros();
    let k = rice.k;
    if k == 0 && q < TS_Q {
        // The usual case (scrape jitter of a few ms): the code is q zeros and a one, z = q.
        tb.consume(q + 1);
        rice.update(u64::from(q));
        let r = TS_UNMAP_SMALL[(q & 3) as usize];
        let pred = grid.wrapping_add(delta);
        *grid = pred.wrapping_add(r.min(0));
        return Some(pred.wrapping_add(r));
    }
    if q < TS_Q {
        let len = q + 1 + k;
        if len > tb.nb {
            return None;
        }
        tb.consume(len);
        let zz = (u64::from(q) << k) | (((w << (q + 1)) >> 1) >> (63 - k));
        // A Rice code is below `TS_Q << k`: `update_ts` would not clamp it.
        rice.update(zz);
        *zor |= zz;
        let r = ts_unmap(zz);
        let pred = grid.wrapping_add(delta);
        *grid = pred.wrapping_add(r.min(0));
        return Some(pred.wrapping_add(r));
    }
    // Tail code: TS_Q zeros, then Elias gamma (at most 4 + 2 * 13 + 1 bits from the buffer).
    let c = ((w << TS_Q) | 1).leading_zeros();
    let len = TS_Q + 2 * c + 1;
    if c >= TS_ANCHOR || len > tb.nb {
        return None;
    }
    tb.consume(len);
    let g = (w << (TS_Q + c)) >> (63 - c);
    let zz = (u64::from(TS_Q) << k).wrapping_add(g).wrapping_sub(1);
    rice.update_ts(zz);
    *zor |= zz;
    let r = ts_unmap(zz);
    let pred = grid.wrapping_add(delta);
    *grid = pred.wrapping_add(r.min(0));
    Some(pred.wrapping_add(r))
}

/// Decodes the values of samples 2.. of a chunk into `dst[..].v`, one run per value mode.
fn value_pass(d: &mut ValDecoder<'_>, data: &[u8], vbase: usize, dst: &mut [Sample]) {
    let mut i = 0;
    while let Some(rest) = dst.get_mut(i..).filter(|r| !r.is_empty()) {
        i += match d.mode {
            MODE_CONST => {
                let v = f64::from_bits(d.vbits);
                rest.iter_mut().for_each(|s| s.v = v);
                rest.len()
            }
            MODE_FLOAT => float_values(d, rest),
            0 => decimal_values::<true>(d, data, vbase, rest),
            _ => decimal_values::<false>(d, data, vbase, rest),
        };
    }
}

/// Values in float (XOR) mode, which lasts to the end of the chunk.
#[inline(never)]
fn float_values(d: &mut ValDecoder<'_>, dst: &mut [Sample]) -> usize {
    for slot in dst.iter_mut() {
        slot.v = d.next_xor();
    }
    dst.len()
}

/// Decodes up to `dst.len()` values in decimal mode (`INT`: exponent 0) with the stream state in
/// local variables (so in registers); the bit buffer reads `data` (the chunk's two streams; the
/// value stream starts at bit `vbase`). The rare long codes and escapes go through the general
/// path. Stops early after a sample whose escape switched the mode; returns the values decoded.
#[inline(never)]
fn decimal_values<const INT: bool>(
    d: &mut ValDecoder<'_>,
    data: &[u8],
    vbase: usize,
    dst: &mut [Sample],
) -> usize {
    let mode = d.mode;
    let mut vb = FastBits::new(data, vbase + d.r.pos());
    let (mut m, p, mut rice, mut shift) = (d.m, d.p, d.rice, d.shift);
    let mut i = 0;
    loop {
        // The hot loop makes no calls, so that its state stays in registers.
        while let Some(slot) = dst.get_mut(i) {
            vb.refill(data);
            let w = vb.buf;
            let q = (w | 1).leading_zeros();
            let k = rice.k;
            let len = q + 1 + k;
            if q >= RICE_LIMIT || len > vb.nb {
                break;
            }
            vb.consume(len);
            let zz = (u64::from(q) << k) | (((w << (q + 1)) >> 1) >> (63 - k));
            rice.update(zz);
            m = m.wrapping_add(unzigzag(zz) << shift);
            slot.v = if INT { m as f64 } else { m as f64 / p };
            i += 1;
        }
        let Some(slot) = dst.get_mut(i) else {
            break;
        };
        d.r.set_pos(vb.pos() - vbase);
        (d.m, d.rice, d.shift) = (m, rice, shift);
        slot.v = d.next_decimal::<INT>();
        i += 1;
        if d.mode != mode {
            return i;
        }
        (m, rice, shift) = (d.m, d.rice, d.shift);
        vb = FastBits::new(data, vbase + d.r.pos());
    }
    d.r.set_pos(vb.pos() - vbase);
    (d.m, d.rice, d.shift) = (m, rice, shift);
    i
}

/// Samples decoded per batch by [`ChunkIter`].
const ITER_BATCH: usize = 64;

/// Iterates the samples of one chunk. It decodes 64 samples at a time with the passes
/// of [`decode_all`] (timestamps, then values) into a buffer it holds, so that iterating costs
/// about what bulk decoding does; [`SampleIter::next`] then only moves along the buffer. A
/// decoding error (corrupt or truncated data, timestamps not increasing) ends iteration before
/// the batch it was found in.
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    d: Decoder<'a>,
    /// The current batch, with the slack the timestamp table steps write into.
    buf: [Sample; ITER_BATCH + TS_STEP_MAX - 1],
    /// Samples of the batch in `buf`.
    len: usize,
    /// Samples of the batch returned so far (the current one is `buf[pos - 1]`).
    pos: usize,
    valid: bool,
    err: Option<ChunkError>,
}

impl<'a> ChunkIter<'a> {
    /// An iterator over a whole chunk; fails when the header is invalid.
    pub fn new(data: &'a [u8]) -> Result<Self, ChunkError> {
        Ok(Self::with_decoder(Decoder::parse(data)?))
    }

    fn with_decoder(d: Decoder<'a>) -> Self {
        ChunkIter {
            d,
            buf: [Sample { t: 0, v: 0.0 }; ITER_BATCH + TS_STEP_MAX - 1],
            len: 0,
            pos: 0,
            valid: false,
            err: None,
        }
    }

    /// Number of samples in the chunk.
    pub fn num_samples(&self) -> usize {
        self.d.n
    }

    /// The decoding error that ended iteration, if any.
    pub fn error(&self) -> Option<&ChunkError> {
        self.err.as_ref()
    }

    #[cold]
    fn fail(&mut self, e: ChunkError) -> bool {
        self.err = Some(e);
        self.valid = false;
        self.d.i = self.d.n;
        self.len = 0;
        self.pos = 0;
        false
    }

    /// Decodes the next batch into `buf` and moves to its first sample.
    #[inline(never)]
    fn next_batch(&mut self) -> bool {
        let d = &mut self.d;
        let (start, n) = (d.i, d.n);
        if start >= n {
            self.valid = false;
            return false;
        }
        // The last timestamp of the previous batch.
        let prev = self.buf.get(self.len.wrapping_sub(1)).map(|s| s.t);
        let k = (n - start).min(ITER_BATCH);
        let buf = &mut self.buf;
        let mut increasing = true;
        // Timestamps.
        let mut tsi = 0;
        if start == 0 {
            buf[0].t = d.ts.header(n > 1);
            tsi = 1;
        }
        if k > tsi {
            let data = d.ts.r.data();
            let out = buf.get_mut(tsi..k + TS_STEP_MAX - 1).unwrap_or(&mut []);
            increasing = ts_pass(&mut d.ts, data, out, k - tsi);
        }
        // Values.
        let mut vi = 0;
        if start == 0 {
            buf[0].v = match d.vs.first_fast() {
                Some(v) => v,
                None => d.vs.first(),
            };
            vi = 1;
            if k > 1 {
                buf[1].v = d.vs.second_fast();
                vi = 2;
            }
        }
        let data = d.vs.r.data();
        value_pass(&mut d.vs, data, 0, buf.get_mut(vi..k).unwrap_or(&mut []));
        d.i = start + k;
        if let Err(e) = d.check() {
            return self.fail(e);
        }
        let got = self.buf.get(..k).unwrap_or(&[]);
        let first_ok = match (prev, got.first()) {
            (Some(p), Some(s)) if start > 0 => s.t > p,
            _ => true,
        };
        increasing &= first_ok && (start > 0 || k < 2 || got[1].t > got[0].t);
        if !increasing {
            let e = match prev.filter(|_| !first_ok) {
                Some(p) => ChunkError::NotIncreasing {
                    index: start,
                    prev: p,
                    t: got[0].t,
                },
                None => {
                    let bad = got.windows(2).position(|w| w[1].t <= w[0].t).unwrap_or(0);
                    ChunkError::NotIncreasing {
                        index: start + bad + 1,
                        prev: got[bad].t,
                        t: got[bad + 1].t,
                    }
                }
            };
            return self.fail(e);
        }
        self.len = k;
        self.pos = 1;
        self.valid = true;
        true
    }
}

impl SampleIter for ChunkIter<'_> {
    #[inline]
    fn next(&mut self) -> bool {
        if self.pos < self.len {
            self.pos += 1;
            return true;
        }
        self.next_batch()
    }

    /// Only meaningful after `next` returned true (then `1 <= pos <= ITER_BATCH`): the mask
    /// keeps the index in the buffer without a bounds check.
    #[inline]
    fn at(&self) -> Sample {
        const _: () = assert!(ITER_BATCH.is_power_of_two());
        self.buf[self.pos.wrapping_sub(1) & (ITER_BATCH - 1)]
    }

    #[inline]
    fn is_valid(&self) -> bool {
        self.valid
    }

    fn err(&mut self) -> Option<tidemark_storage::Error> {
        self.err.clone().map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(samples: &[(i64, f64)]) {
        let mut enc = ChunkEncoder::new();
        for &(t, v) in samples {
            enc.append(t, v).unwrap();
        }
        let data = enc.bytes();
        assert_eq!(data.len(), enc.size_bytes());
        let mut out = Vec::new();
        decode_all(&data, &mut out).unwrap();
        assert_eq!(out.len(), samples.len());
        for (s, &(t, v)) in out.iter().zip(samples) {
            assert_eq!((s.t, s.v.to_bits()), (t, v.to_bits()), "sample at {t}");
        }
        for mut it in [enc.iter(), ChunkIter::new(&data).unwrap()] {
            assert_eq!(it.num_samples(), samples.len());
            for &(t, v) in samples {
                assert!(it.next());
                assert!(it.is_valid());
                assert_eq!((it.at().t, it.at().v.to_bits()), (t, v.to_bits()));
            }
            assert!(!it.next());
            assert!(!it.is_valid());
            assert!(it.error().is_none());
        }
    }

    #[test]
    fn empty_and_single() {
        round_trip(&[]);
        round_trip(&[(0, 0.0)]);
        round_trip(&[(-5, -0.0)]);
        round_trip(&[(i64::MIN, f64::NAN)]);
    }

    #[test]
    fn specials_and_modes() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        round_trip(&[
            (1000, 1.0),
            (2000, 1.5),
            (3000, 1.25),
            (4000, stale),
            (5000, 2.0),
            (6000, f64::INFINITY),
            (7000, f64::NEG_INFINITY),
            (8000, -0.0),
            (9000, 0.1 + 0.2),
            (10000, 3.0),
            (i64::MAX, f64::from_bits(1)),
        ]);
        round_trip(&[(i64::MIN, 1e300), (0, -1e-300), (i64::MAX, 5.0)]);
    }

    #[test]
    fn scrape_like_is_small() {
        let mut enc = ChunkEncoder::new();
        let mut v = 1000.0;
        for i in 0..120i64 {
            let jitter = (i * 7919) % 3;
            v += ((i * 31) % 50) as f64;
            enc.append(1_700_000_000_000 + i * 15_000 + jitter, v)
                .unwrap();
        }
        let size = enc.size_bytes();
        assert!(size < 120 * 2, "size {size}");
        round_trip(&[(1, 2.0), (3, 4.0)]);
    }

    /// What the head pays per open chunk: a small struct plus two stream buffers.
    #[test]
    fn encoder_memory_stays_small() {
        let mut enc = ChunkEncoder::new();
        let mut v = 1e9;
        for i in 0..120i64 {
            v += ((i * 7919) % 100_000) as f64;
            enc.append(1_700_000_000_000 + i * 15_000 + i % 3, v)
                .unwrap();
        }
        let inline = std::mem::size_of::<ChunkEncoder>();
        assert!(inline <= 192, "ChunkEncoder is {inline} bytes");
        assert!(
            enc.heap_bytes() <= 2 * enc.size_bytes() + 64,
            "heap {} for {} encoded",
            enc.heap_bytes(),
            enc.size_bytes()
        );
    }

    fn hex(data: &[u8]) -> String {
        data.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The examples of docs/format/chunks.md, byte for byte.
    #[test]
    fn documented_examples() {
        let mut enc = ChunkEncoder::new();
        for (t, v) in [
            (1_700_000_000_000, 1.5),
            (1_700_000_015_001, 1.75),
            (1_700_000_030_000, 2.0),
            (1_700_000_045_002, 2.0),
        ] {
            enc.append(t, v).unwrap();
        }
        assert_eq!(
            hex(&enc.bytes()),
            "01 04 09 a7 17 9f ca d0 00 87 ec 80 08 9e 42 22 bc 00 00 0b 94"
        );
        let mut enc = ChunkEncoder::new();
        for t in [0, 15_000, 30_000] {
            enc.append(t, 0.0).unwrap();
        }
        assert_eq!(hex(&enc.bytes()), "01 03 03 01 0f f0 f0 00 00");
    }

    #[test]
    fn byte_counts_use_a_shift() {
        // A memory gauge in 4 KiB steps: the deltas cost their multiple of 4096 only, and a
        // delta off the 4 KiB grid (a reshift) still round-trips.
        let mut samples = Vec::new();
        let mut m = 8_000_000_000i64 / 4096 * 4096;
        for i in 0..120i64 {
            m += ((i * 7919) % 41 - 20) * 4096;
            samples.push((i * 15_000, m as f64));
        }
        let mut enc = ChunkEncoder::new();
        for &(t, v) in &samples {
            enc.append(t, v).unwrap();
        }
        let shifted = enc.size_bytes();
        assert!(shifted < 120 * 15 / 8, "size {shifted}");
        samples[60].1 += 1.0;
        samples.push((120 * 15_000, 3.0));
        round_trip(&samples);
    }

    #[test]
    fn ts_map_inverts() {
        for r in -1000i64..1000 {
            assert_eq!(ts_unmap(ts_map(r)), r, "residual {r}");
        }
        for r in [TS_SMALL, -TS_SMALL] {
            assert_eq!(ts_unmap(ts_map(r)), r);
        }
    }

    /// A chunk of constant values whose timestamp stream is `t0`, the interval `d` (in ms) and
    /// `codes` (each a Rice code of `k = 0`: `q` zeros and a one).
    fn crafted(t0: i64, d: u64, codes: &[u32]) -> Vec<u8> {
        let mut ts = BitWriter::default();
        ts.write_varbits(zigzag(t0));
        ts.write(0, 1);
        ts.write_varbits(d);
        for &q in codes {
            ts.write(1, q + 1);
        }
        let mut vs = BitWriter::default();
        vs.write(u64::from(MODE_CONST), 5);
        vs.write(0, 5);
        vs.write_varbits(0);
        let mut out = vec![ENCODING_XOR];
        put_uvarint(&mut out, codes.len() as u64 + 1);
        put_uvarint(&mut out, ts.byte_len() as u64);
        out.extend_from_slice(ts.bytes());
        out.extend_from_slice(vs.bytes());
        out
    }

    /// `decode_all` skips comparing timestamps one by one only when they provably increase:
    /// a wrap-around past `i64::MAX` and residuals larger than the interval are still caught.
    #[test]
    fn crafted_non_increasing_timestamps_rejected() {
        let mut out = Vec::new();
        let ok = crafted(1000, 15_000, &[0; 20]);
        decode_all(&ok, &mut out).unwrap();
        assert_eq!(out.len(), 21);
        for data in [
            crafted(i64::MAX - 100, 40, &[0; 10]),
            crafted(1000, 1, &[0, 0, 3, 0, 0, 0]),
        ] {
            out.clear();
            assert!(
                matches!(
                    decode_all(&data, &mut out),
                    Err(ChunkError::NotIncreasing { .. })
                ),
                "{:?}",
                decode_all(&data, &mut out)
            );
            assert!(out.is_empty());
            let mut it = ChunkIter::new(&data).unwrap();
            while it.next() {}
            assert!(matches!(it.error(), Some(ChunkError::NotIncreasing { .. })));
        }
    }

    /// The table step of the timestamp decoder against the per-code definition (docs/format/
    /// chunks.md): for every Rice state below 16 and every 8-bit window, the codes it takes, the
    /// bits, the state after them and every timestamp and grid move.
    #[test]
    fn ts_step_tables_match_per_code_decoding() {
        let (grid0, delta) = (1_700_000_000_000i64, 15_000i64);
        for s0 in 0..TS_STEP_STATES as u64 {
            for w in 0..256usize {
                let mut rice = Rice { k: 0, s: s0 };
                let (mut pos, mut grid, mut ts) = (0u32, grid0, Vec::new());
                while ts.len() < TS_STEP_MAX && rice.k == 0 {
                    let q = ((((w as u64) << 56) << pos) | 1).leading_zeros();
                    if q >= TS_Q || pos + q + 1 > 8 {
                        break;
                    }
                    pos += q + 1;
                    let zz = u64::from(q);
                    rice.update_ts(zz);
                    let r = ts_unmap(zz);
                    let pred = grid + delta;
                    ts.push(pred + r);
                    grid = pred + r.min(0);
                }
                let e = TS_STEP[(s0 as usize) << 8 | w];
                let c = ts.len();
                assert_eq!(usize::from(e & 15), c, "codes, s {s0} w {w:08b}");
                assert_eq!(u32::from(e >> 4) & 15, pos, "bits, s {s0} w {w:08b}");
                assert_eq!(u64::from(e >> 8) & 15, rice.s, "state, s {s0} w {w:08b}");
                assert_eq!(u32::from(e >> 12), rice.k, "k, s {s0} w {w:08b}");
                for (j, &t) in ts.iter().enumerate() {
                    let t_table = grid0 + (j as i64 + 1) * delta + i64::from(TS_OFFSETS[w][j]);
                    assert_eq!(t_table, t, "timestamp {j}, w {w:08b}");
                }
                if c > 0 {
                    let moved = i64::from(TS_GRID[w][c - 1]);
                    assert_eq!(grid0 + c as i64 * delta + moved, grid, "grid, w {w:08b}");
                }
            }
        }
    }

    /// Every chunk length from 1 to 300 samples, with scrape jitter, late samples, a missed
    /// scrape and every value mode: the streams end at every bit position relative to the
    /// decoders' 32-bit refills and table steps of up to 6 samples. Each round-trips, and each chunk cut
    /// short by 1 to 4 bytes is an error, never a panic.
    #[test]
    fn every_length_round_trips_and_truncation_fails() {
        for n in 1..=300usize {
            for kind in 0..4 {
                let samples: Vec<(i64, f64)> = (0..n as i64)
                    .map(|i| {
                        let late = match (i * 7919 + kind) % 29 {
                            0 => 17,
                            1 => 7_000,
                            x => x % 3,
                        };
                        let v = match kind {
                            0 => 42.0,
                            1 => (i * i % 1000) as f64,
                            2 => (i * 37 % 101) as f64 / 100.0,
                            _ => f64::from_bits(0x4000_0000_0000_0000 ^ (i as u64 * 0x9e37_79b9)),
                        };
                        // Every 50th scrape is missed.
                        (1_700_000_000_000 + (i + i / 50) * 15_000 + late, v)
                    })
                    .collect();
                round_trip(&samples);
                let mut enc = ChunkEncoder::new();
                for &(t, v) in &samples {
                    enc.append(t, v).unwrap();
                }
                let data = enc.bytes();
                for cut in 1..=4.min(data.len() - 2) {
                    let mut out = vec![Sample::new(1, 1.0)];
                    let short = &data[..data.len() - cut];
                    if decode_all(short, &mut out).is_ok() {
                        // Only the zero padding of the last byte may go: the samples must be
                        // the same.
                        assert_eq!(out.len(), n + 1, "n {n} kind {kind} cut {cut}");
                        for (s, &(t, v)) in out[1..].iter().zip(&samples) {
                            assert_eq!((s.t, s.v.to_bits()), (t, v.to_bits()));
                        }
                    } else {
                        assert_eq!(out, vec![Sample::new(1, 1.0)], "out left as it was");
                    }
                }
            }
        }
    }

    /// A chunk of the largest sample count the decoder accepts round-trips through both
    /// decoders, and one more sample is refused by the encoder.
    #[test]
    fn max_length_chunk() {
        let mut enc = ChunkEncoder::new();
        let mut model = Vec::with_capacity(MAX_SAMPLES);
        for i in 0..MAX_SAMPLES as i64 {
            let t = i * 15_000 + (i * 7919) % 3;
            let v = (i / 7) as f64;
            enc.append(t, v).unwrap();
            model.push((t, v));
        }
        assert_eq!(
            enc.append(i64::MAX, 0.0),
            Err(ChunkError::Full { max: MAX_SAMPLES })
        );
        let data = enc.bytes();
        let mut out = Vec::new();
        decode_all(&data, &mut out).unwrap();
        assert_eq!(out.len(), MAX_SAMPLES);
        assert!(
            out.iter()
                .zip(&model)
                .all(|(s, &(t, v))| s.t == t && s.v == v)
        );
        let mut it = ChunkIter::new(&data).unwrap();
        let mut n = 0;
        while it.next() {
            assert_eq!(it.at().t, model[n].0);
            n += 1;
        }
        assert_eq!(n, MAX_SAMPLES);
    }

    /// `ChunkIter` decodes in batches of 64: a timestamp that does not increase is found on
    /// either side of a batch boundary, by both decoders, at the same index; the iterator
    /// returns every sample of the batches before it.
    #[test]
    fn non_increasing_at_a_batch_boundary() {
        for bad in [ITER_BATCH - 1, ITER_BATCH, ITER_BATCH + 1, 2 * ITER_BATCH] {
            // Code 3 with k = 0 is the residual -1: with an interval of 1 ms that sample
            // repeats the previous timestamp. Sample `bad` is code `bad - 1`.
            let mut codes = vec![0u32; 3 * ITER_BATCH];
            codes[bad - 1] = 3;
            let data = crafted(1000, 1, &codes);
            let err = decode_all(&data, &mut Vec::new()).unwrap_err();
            assert!(
                matches!(err, ChunkError::NotIncreasing { index, .. } if index == bad),
                "{bad}: {err:?}"
            );
            let mut it = ChunkIter::new(&data).unwrap();
            let mut n = 0;
            while it.next() {
                assert_eq!(it.at().t, 1000 + n as i64);
                n += 1;
            }
            assert_eq!(
                n,
                bad / ITER_BATCH * ITER_BATCH,
                "samples before the batch of {bad}"
            );
            assert_eq!(it.error(), Some(&err));
        }
    }

    #[test]
    fn out_of_order_rejected() {
        let mut enc = ChunkEncoder::new();
        enc.append(10, 1.0).unwrap();
        assert_eq!(
            enc.append(10, 2.0),
            Err(ChunkError::OutOfOrder { prev: 10, t: 10 })
        );
        assert_eq!(
            enc.append(9, 2.0),
            Err(ChunkError::OutOfOrder { prev: 10, t: 9 })
        );
        assert_eq!(enc.num_samples(), 1);
    }
}
