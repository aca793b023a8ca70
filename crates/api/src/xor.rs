//! Prometheus' XOR chunk format (`chunkenc.XORChunk`), the wire format of streamed remote read
//! responses. This is *not* Tidemark's storage format (tidemark-tsdb owns its own codec): remote
//! read clients decode Prometheus' bytes, so we write exactly those.
//!
//! Layout: a 2-byte big-endian sample count, then a bit stream (most significant bit first):
//! * sample 0: timestamp as a signed varint (zig-zag), value as 64 raw bits;
//! * sample 1: timestamp delta as an unsigned varint, value XOR-encoded;
//! * sample n >= 2: delta-of-delta of the timestamp in one of the classes `0`, `10`+14 bits,
//!   `110`+17 bits, `1110`+20 bits, `1111`+64 bits, value XOR-encoded.
//!
//! XOR value encoding: `0` when equal to the previous value; else `1`, then `0` + the meaningful
//! bits when they fit in the previous leading/trailing-zero window, or `1` + 5 bits of leading
//! zeros (capped at 31) + 6 bits of significant bit count (64 written as 0) + the bits.

/// A bit stream writer, most significant bit first.
#[derive(Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits still free in the last byte (0 = start a new byte).
    free: u8,
}

impl BitWriter {
    fn bit(&mut self, b: bool) {
        if self.free == 0 {
            self.bytes.push(0);
            self.free = 8;
        }
        if b && let Some(last) = self.bytes.last_mut() {
            *last |= 1 << (self.free - 1);
        }
        self.free -= 1;
    }

    fn bits(&mut self, v: u64, n: u8) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }

    fn byte(&mut self, b: u8) {
        self.bits(u64::from(b), 8);
    }

    fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    fn varint(&mut self, v: i64) {
        self.uvarint(((v << 1) ^ (v >> 63)) as u64);
    }
}

/// Encodes samples into a Prometheus XOR chunk.
#[derive(Debug)]
pub struct XorEncoder {
    w: BitWriter,
    num: u16,
    t: i64,
    t_delta: u64,
    v: f64,
    leading: u8,
    trailing: u8,
}

impl Default for XorEncoder {
    fn default() -> Self {
        XorEncoder::new()
    }
}

fn bit_range(x: i64, nbits: u8) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= 1i64 << (nbits - 1)
}

impl XorEncoder {
    pub fn new() -> XorEncoder {
        let mut w = BitWriter::default();
        w.byte(0);
        w.byte(0);
        XorEncoder {
            w,
            num: 0,
            t: 0,
            t_delta: 0,
            v: 0.0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// Number of samples appended.
    pub fn len(&self) -> usize {
        self.num as usize
    }

    pub fn is_empty(&self) -> bool {
        self.num == 0
    }

    /// Appends a sample (timestamps must increase; at most 65535 samples per chunk).
    pub fn append(&mut self, t: i64, v: f64) {
        match self.num {
            0 => {
                self.w.varint(t);
                self.w.bits(v.to_bits(), 64);
            }
            1 => {
                let d = t.wrapping_sub(self.t) as u64;
                self.w.uvarint(d);
                self.t_delta = d;
                self.write_value(v);
            }
            _ => {
                let d = t.wrapping_sub(self.t) as u64;
                let dod = d.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    self.w.bit(false);
                } else if bit_range(dod, 14) {
                    self.w.bits(0b10, 2);
                    self.w.bits(dod as u64, 14);
                } else if bit_range(dod, 17) {
                    self.w.bits(0b110, 3);
                    self.w.bits(dod as u64, 17);
                } else if bit_range(dod, 20) {
                    self.w.bits(0b1110, 4);
                    self.w.bits(dod as u64, 20);
                } else {
                    self.w.bits(0b1111, 4);
                    self.w.bits(dod as u64, 64);
                }
                self.t_delta = d;
                self.write_value(v);
            }
        }
        self.t = t;
        self.v = v;
        self.num = self.num.wrapping_add(1);
        let n = self.num.to_be_bytes();
        self.w.bytes[0] = n[0];
        self.w.bytes[1] = n[1];
    }

    fn write_value(&mut self, v: f64) {
        let delta = v.to_bits() ^ self.v.to_bits();
        if delta == 0 {
            self.w.bit(false);
            return;
        }
        self.w.bit(true);
        let mut leading = delta.leading_zeros() as u8;
        let trailing = delta.trailing_zeros() as u8;
        if leading >= 32 {
            leading = 31;
        }
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            self.w.bit(false);
            self.w
                .bits(delta >> self.trailing, 64 - self.leading - self.trailing);
            return;
        }
        self.leading = leading;
        self.trailing = trailing;
        self.w.bit(true);
        self.w.bits(u64::from(leading), 5);
        let sig = 64 - leading - trailing;
        self.w.bits(u64::from(sig), 6);
        self.w.bits(delta >> trailing, sig);
    }

    /// The chunk bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.w.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.w.bytes
    }
}

/// Error decoding an XOR chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("XOR chunk truncated or corrupt at bit {0}")]
pub struct XorDecodeError(pub usize);

struct BitReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Result<bool, XorDecodeError> {
        let byte = self.b.get(self.pos / 8).ok_or(XorDecodeError(self.pos))?;
        let v = (byte >> (7 - (self.pos % 8))) & 1 == 1;
        self.pos += 1;
        Ok(v)
    }
    fn bits(&mut self, n: u8) -> Result<u64, XorDecodeError> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Ok(v)
    }
    fn uvarint(&mut self) -> Result<u64, XorDecodeError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.bits(8)?;
            if shift == 63 && b > 1 {
                return Err(XorDecodeError(self.pos));
            }
            v |= (b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(XorDecodeError(self.pos))
    }
}

fn sign_extend(v: u64, n: u8) -> i64 {
    let shift = 64 - u32::from(n);
    ((v << shift) as i64) >> shift
}

/// Decodes a Prometheus XOR chunk (used by tests and by clients of streamed remote read).
pub fn decode(chunk: &[u8]) -> Result<Vec<(i64, f64)>, XorDecodeError> {
    if chunk.len() < 2 {
        return Err(XorDecodeError(0));
    }
    let n = u16::from_be_bytes([chunk[0], chunk[1]]) as usize;
    let mut r = BitReader { b: chunk, pos: 16 };
    let mut out = Vec::with_capacity(n);
    let (mut t, mut v, mut delta) = (0i64, 0f64, 0i64);
    let (mut leading, mut trailing) = (0u8, 0u8);
    for i in 0..n {
        match i {
            0 => {
                let u = r.uvarint()?;
                t = ((u >> 1) as i64) ^ -((u & 1) as i64);
                v = f64::from_bits(r.bits(64)?);
            }
            _ => {
                if i == 1 {
                    delta = r.uvarint()? as i64;
                } else {
                    let mut class = 0;
                    while class < 4 && r.bit()? {
                        class += 1;
                    }
                    let dod = match class {
                        0 => 0,
                        1 => sign_extend(r.bits(14)?, 14),
                        2 => sign_extend(r.bits(17)?, 17),
                        3 => sign_extend(r.bits(20)?, 20),
                        _ => r.bits(64)? as i64,
                    };
                    delta = delta.wrapping_add(dod);
                }
                t = t.wrapping_add(delta);
                if r.bit()? {
                    if r.bit()? {
                        leading = r.bits(5)? as u8;
                        let mut sig = r.bits(6)? as u8;
                        if sig == 0 {
                            sig = 64;
                        }
                        trailing = 64u8
                            .checked_sub(leading + sig)
                            .ok_or(XorDecodeError(r.pos))?;
                    }
                    let sig = 64 - leading - trailing;
                    let bits = r.bits(sig)?;
                    v = f64::from_bits(v.to_bits() ^ (bits << trailing));
                }
            }
        }
        out.push((t, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(samples: &[(i64, f64)]) {
        let mut e = XorEncoder::new();
        for &(t, v) in samples {
            e.append(t, v);
        }
        let got = decode(e.bytes()).unwrap();
        assert_eq!(got.len(), samples.len());
        for (a, b) in got.iter().zip(samples) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits());
        }
    }

    #[test]
    fn known_bytes_of_a_small_chunk() {
        // Two samples: header 0x0002, varint(zigzag(1000)) = 0xd0 0x0f, the 64 bits of 1.0,
        // uvarint(15000) = 0x98 0x75, then value 1.0 again: a single 0 bit.
        let mut e = XorEncoder::new();
        e.append(1000, 1.0);
        e.append(16000, 1.0);
        assert_eq!(
            e.bytes(),
            &[
                0, 2, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x98, 0x75, 0x00
            ]
        );
    }

    #[test]
    fn special_values_and_regular_series() {
        roundtrip(&[
            (0, f64::NAN),
            (1, tidemark_model::stale_nan()),
            (2, f64::INFINITY),
            (3, -0.0),
            (4, 1e300),
        ]);
        let s: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i % 7) as f64 * 0.25))
            .collect();
        roundtrip(&s);
        roundtrip(&[(-5, 1.0), (i64::MAX / 4, 2.0), (i64::MAX / 2, 3.0)]);
    }

    proptest! {
        #[test]
        fn roundtrip_matches_input(deltas in proptest::collection::vec(1i64..2_000_000, 0..200),
                                    vals in proptest::collection::vec(any::<u64>(), 200),
                                    start in -1_000_000_000i64..1_000_000_000_000) {
            let mut t = start;
            let mut s = Vec::new();
            for (i, d) in deltas.iter().enumerate() {
                t += d;
                // Mix repeated values, small changes and arbitrary bit patterns.
                let v = match vals[i] % 3 { 0 => 1.0, 1 => (vals[i] % 1000) as f64, _ => f64::from_bits(vals[i]) };
                s.push((t, v));
            }
            roundtrip(&s);
        }
    }
}
