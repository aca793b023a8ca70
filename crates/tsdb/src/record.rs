//! Payloads of the engine's log records (the [`crate::log`] frames them and checks their CRC).
//!
//! Layouts (all integers little-endian; `uvarint`/`varint` are LEB128, `varint` zig-zagged):
//!
//! ```text
//! series record:  0x01 { uvarint(ref) uvarint(len) labels-canonical-encoding }*
//! samples record: 0x02 varint(base_ref) varint(base_t) { sample }*
//!   sample:       varint(ref - base_ref) varint(t - base_t) value
//!   value:        uvarint((zigzag(v as i64) << 1) | 1)   when v is an integer, |v| < 2^53, not -0.0
//!                 0x00 + 8 bytes of f64 bits              otherwise (staleness NaN included)
//! tombstones:     0x03 { uvarint(ref) varint(mint) varint(maxt) }*   deleted [mint, maxt], inclusive
//! ```
//!
//! A series' labels are written once (a series record, before its first samples); sample records
//! refer to it by `ref`. Counters and integer gauges cost 3-5 bytes a sample, other floats about
//! 11. See docs/format/log.md for the log framing around these payloads.

use tidemark_model::Labels;

/// Record type byte of a series record.
pub const RECORD_SERIES: u8 = 1;
/// Record type byte of a samples record.
pub const RECORD_SAMPLES: u8 = 2;
/// Record type byte of a tombstones record (`delete_series` on the head).
pub const RECORD_TOMBSTONES: u8 = 3;

/// Samples of a series known by reference deleted in `[mint, maxt]` (both inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefTombstone {
    pub series_ref: u64,
    pub mint: i64,
    pub maxt: i64,
}

/// A series reference and its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RefSeries {
    pub series_ref: u64,
    pub labels: Labels,
}

/// A sample of a series known by reference.
#[derive(Debug, Clone, Copy)]
pub struct RefSample {
    pub series_ref: u64,
    pub t: i64,
    pub v: f64,
}

impl PartialEq for RefSample {
    fn eq(&self, o: &Self) -> bool {
        self.series_ref == o.series_ref && self.t == o.t && self.v.to_bits() == o.v.to_bits()
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Series(Vec<RefSeries>),
    Samples(Vec<RefSample>),
    Tombstones(Vec<RefTombstone>),
}

/// A record payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("unknown record type {0:#04x}")]
    UnknownType(u8),
    #[error("record truncated at byte {offset}: expected {expected}")]
    Truncated {
        offset: usize,
        expected: &'static str,
    },
    #[error("varint overflows 64 bits at byte {0}")]
    VarintOverflow(usize),
    #[error("invalid value tag {tag} at byte {offset}: expected 0 (float) or an odd integer tag")]
    BadValueTag { offset: usize, tag: u64 },
    #[error("invalid labels at byte {offset}: {reason}")]
    Labels { offset: usize, reason: String },
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn uvarint(&mut self, what: &'static str) -> Result<u64, RecordError> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        let start = self.pos;
        loop {
            let b = *self.buf.get(self.pos).ok_or(RecordError::Truncated {
                offset: self.pos,
                expected: what,
            })?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(RecordError::VarintOverflow(start));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(RecordError::VarintOverflow(start));
            }
        }
    }

    fn varint(&mut self, what: &'static str) -> Result<i64, RecordError> {
        self.uvarint(what).map(unzigzag)
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&[u8], RecordError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(RecordError::Truncated {
            offset: self.pos,
            expected: what,
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Appends a series record for `series` to `out`.
pub fn encode_series(series: &[RefSeries], out: &mut Vec<u8>) {
    out.push(RECORD_SERIES);
    for s in series {
        put_uvarint(out, s.series_ref);
        let enc = s.labels.encoded();
        put_uvarint(out, enc.len() as u64);
        out.extend_from_slice(enc);
    }
}

/// Appends a series record for one series, borrowing its labels.
pub fn encode_one_series(series_ref: u64, labels: &Labels, out: &mut Vec<u8>) {
    put_uvarint(out, series_ref);
    let enc = labels.encoded();
    put_uvarint(out, enc.len() as u64);
    out.extend_from_slice(enc);
}

/// Largest integer magnitude stored as a varint: beyond it an f64 is not exactly an integer step.
const MAX_INT_VALUE: f64 = 9_007_199_254_740_992.0; // 2^53

#[inline]
fn as_small_int(v: f64) -> Option<i64> {
    if v.is_finite()
        && v.abs() < MAX_INT_VALUE
        && v.fract() == 0.0
        && !(v == 0.0 && v.is_sign_negative())
    {
        Some(v as i64)
    } else {
        None
    }
}

/// Appends a samples record to `out`. `samples` may be in any order.
pub fn encode_samples(samples: &[RefSample], out: &mut Vec<u8>) {
    out.push(RECORD_SAMPLES);
    let Some(first) = samples.first() else {
        return;
    };
    put_varint(out, first.series_ref as i64);
    put_varint(out, first.t);
    for s in samples {
        put_varint(
            out,
            (s.series_ref as i64).wrapping_sub(first.series_ref as i64),
        );
        put_varint(out, s.t.wrapping_sub(first.t));
        match as_small_int(s.v) {
            // |i| < 2^53, so the zig-zagged value shifted by one still fits.
            Some(i) => put_uvarint(out, (zigzag(i) << 1) | 1),
            None => {
                out.push(0);
                out.extend_from_slice(&s.v.to_bits().to_le_bytes());
            }
        }
    }
}

/// Appends a tombstones record to `out`.
pub fn encode_tombstones(stones: &[RefTombstone], out: &mut Vec<u8>) {
    out.push(RECORD_TOMBSTONES);
    for s in stones {
        put_uvarint(out, s.series_ref);
        put_varint(out, s.mint);
        put_varint(out, s.maxt);
    }
}

/// Decodes one record payload. Never panics on arbitrary bytes.
pub fn decode(buf: &[u8]) -> Result<Record, RecordError> {
    let (&ty, _) = buf.split_first().ok_or(RecordError::Empty)?;
    let mut r = Reader { buf, pos: 1 };
    match ty {
        RECORD_SERIES => {
            let mut out = Vec::new();
            while !r.done() {
                let series_ref = r.uvarint("series ref")?;
                let n = r.uvarint("labels length")?;
                let at = r.pos;
                let n = usize::try_from(n).map_err(|_| RecordError::Truncated {
                    offset: at,
                    expected: "labels",
                })?;
                let enc = r.bytes(n, "labels")?;
                let labels = Labels::from_encoded(enc).map_err(|e| RecordError::Labels {
                    offset: at,
                    reason: e.to_string(),
                })?;
                out.push(RefSeries { series_ref, labels });
            }
            Ok(Record::Series(out))
        }
        RECORD_SAMPLES => {
            let mut out = Vec::new();
            if r.done() {
                return Ok(Record::Samples(out));
            }
            let base_ref = r.varint("base ref")?;
            let base_t = r.varint("base timestamp")?;
            while !r.done() {
                let dref = r.varint("ref delta")?;
                let t = base_t.wrapping_add(r.varint("timestamp delta")?);
                let tag = r.uvarint("value")?;
                let v = if tag & 1 == 1 {
                    unzigzag(tag >> 1) as f64
                } else if tag != 0 {
                    return Err(RecordError::BadValueTag {
                        offset: r.pos - 1,
                        tag,
                    });
                } else {
                    let b = r.bytes(8, "8 value bytes")?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_bits(u64::from_le_bytes(a))
                };
                out.push(RefSample {
                    series_ref: base_ref.wrapping_add(dref) as u64,
                    t,
                    v,
                });
            }
            Ok(Record::Samples(out))
        }
        RECORD_TOMBSTONES => {
            let mut out = Vec::new();
            while !r.done() {
                let series_ref = r.uvarint("series ref")?;
                let mint = r.varint("mint")?;
                let maxt = r.varint("maxt")?;
                out.push(RefTombstone {
                    series_ref,
                    mint,
                    maxt,
                });
            }
            Ok(Record::Tombstones(out))
        }
        other => Err(RecordError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn series_round_trip() {
        let s = vec![
            RefSeries {
                series_ref: 1,
                labels: Labels::from_pairs([("__name__", "up"), ("job", "a")]),
            },
            RefSeries {
                series_ref: u64::MAX,
                labels: Labels::empty(),
            },
        ];
        let mut buf = Vec::new();
        encode_series(&s, &mut buf);
        assert_eq!(decode(&buf).unwrap(), Record::Series(s));
    }

    #[test]
    fn sample_sizes_are_small() {
        let samples: Vec<RefSample> = (0..1000)
            .map(|i| RefSample {
                series_ref: 1000 + i,
                t: 1_700_000_000_000 + (i as i64 % 7),
                v: (i * 3) as f64,
            })
            .collect();
        let mut buf = Vec::new();
        encode_samples(&samples, &mut buf);
        assert!(
            buf.len() < 5 * samples.len(),
            "{} bytes for {} samples",
            buf.len(),
            samples.len()
        );
        assert_eq!(decode(&buf).unwrap(), Record::Samples(samples));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut good = Vec::new();
        encode_samples(
            &[
                RefSample {
                    series_ref: 3,
                    t: -5,
                    v: 0.5,
                },
                RefSample {
                    series_ref: 9,
                    t: 8,
                    v: 2.0,
                },
            ],
            &mut good,
        );
        encode_series(
            &[RefSeries {
                series_ref: 3,
                labels: Labels::from_pairs([("a", "b")]),
            }],
            &mut good,
        );
        for _ in 0..20_000 {
            let n = rng.random_range(0..40);
            let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && !b.is_empty() {
                b[0] = rng.random_range(1..4);
            }
            let mut m = good.clone();
            let i = rng.random_range(0..m.len());
            m[i] ^= 1 << rng.random_range(0..8);
            m.truncate(rng.random_range(0..=m.len()));
            // The same property as the cargo-fuzz target `record_decode`: no panic, and what
            // decodes re-encodes to the same record.
            for input in [&b, &m] {
                if let Ok(rec) = decode(input) {
                    let mut again = Vec::new();
                    match &rec {
                        Record::Series(s) => encode_series(s, &mut again),
                        Record::Samples(s) => encode_samples(s, &mut again),
                        Record::Tombstones(s) => encode_tombstones(s, &mut again),
                    }
                    assert_eq!(decode(&again).ok(), Some(rec));
                }
            }
        }
    }

    #[test]
    fn tombstones_round_trip() {
        let t = vec![
            RefTombstone {
                series_ref: 7,
                mint: i64::MIN,
                maxt: i64::MAX,
            },
            RefTombstone {
                series_ref: 1,
                mint: -5,
                maxt: 1_700_000_000_000,
            },
        ];
        let mut buf = Vec::new();
        encode_tombstones(&t, &mut buf);
        assert_eq!(decode(&buf).unwrap(), Record::Tombstones(t));
        assert!(decode(&buf[..buf.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn samples_round_trip(raw in proptest::collection::vec((any::<u64>(), any::<i64>(), prop_oneof![any::<u64>().prop_map(f64::from_bits), (-1000i64..1000).prop_map(|i| i as f64), Just(-0.0), Just(f64::from_bits(tidemark_model::STALE_NAN_BITS))]), 0..50)) {
            let samples: Vec<RefSample> = raw.into_iter().map(|(r, t, v)| RefSample { series_ref: r, t, v }).collect();
            let mut buf = Vec::new();
            encode_samples(&samples, &mut buf);
            prop_assert_eq!(decode(&buf).unwrap(), Record::Samples(samples));
        }
    }
}
