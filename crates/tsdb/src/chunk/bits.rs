//! MSB-first bit streams: the writer keeps every bit in its byte vector (no pending register), so
//! an open chunk can be read while it is being written; the reader loads 64 bits at a time.

/// Zero bytes kept after the last written bit so that [`BitWriter::write`] can always
/// read-modify-write a whole `u64`.
const SLACK: usize = 8;

/// Appends bit fields, most significant bit first.
#[derive(Debug, Default, Clone)]
pub(crate) struct BitWriter {
    buf: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    /// Writes the low `n` bits of `v` (`n <= 56`; higher bits of `v` must be zero).
    #[inline(always)]
    pub(crate) fn write(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 56);
        debug_assert!(v >> n == 0);
        if n == 0 {
            return;
        }
        let byte = self.bits >> 3;
        if self.buf.len() < byte + SLACK {
            // Doubling from 32 bytes: few reallocations for a 120-sample chunk.
            let want = (byte + SLACK).max(self.buf.len() * 2).max(32);
            self.buf.resize(want, 0);
        }
        let shift = (self.bits & 7) as u32;
        if let Some(dst) = self.buf.get_mut(byte..byte + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(dst);
            // 1 <= n and n + shift <= 63, so the shift is in range.
            let word = u64::from_be_bytes(w) | (v << (64 - n - shift));
            dst.copy_from_slice(&word.to_be_bytes());
        }
        self.bits += n as usize;
    }

    /// Writes the low `n` bits of `v` for any `n <= 64`.
    #[inline]
    pub(crate) fn write_long(&mut self, v: u64, n: u32) {
        if n > 56 {
            self.write(v >> 32, n - 32);
            self.write(v & 0xffff_ffff, 32);
        } else {
            self.write(v, n);
        }
    }

    /// Writes `x` as a 6-bit length (bits - 1) followed by that many bits.
    #[inline]
    pub(crate) fn write_varbits(&mut self, x: u64) {
        let n = 64 - (x | 1).leading_zeros();
        self.write(u64::from(n - 1), 6);
        self.write_long(x, n);
    }

    /// Number of bits written.
    #[inline]
    pub(crate) fn bit_len(&self) -> usize {
        self.bits
    }

    /// Number of bytes needed to hold the bits written.
    #[inline]
    pub(crate) fn byte_len(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// The written bits, the last byte zero-padded.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        self.buf.get(..self.byte_len()).unwrap_or(&[])
    }

    /// The written bits followed by at least 8 zero bytes (for [`BitReader::with_padding`]).
    #[inline]
    pub(crate) fn padded(&self) -> &[u8] {
        &self.buf
    }

    /// Heap bytes held.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Hints the CPU to load the cache line the next write goes to.
    #[inline(always)]
    pub(crate) fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.buf.as_ptr().wrapping_add(self.bits >> 3).cast::<i8>();
            // SAFETY: prefetching is only a hint and never faults, whatever the address.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
            }
        }
    }
}

/// Reads bit fields written by [`BitWriter`]. Reading past the end yields zero bits (or bytes
/// of whatever follows the stream in `data`); callers check [`BitReader::overrun`] before
/// trusting what they decoded.
#[derive(Debug, Clone)]
pub(crate) struct BitReader<'a> {
    /// The stream, possibly followed by unrelated bytes (read only as padding).
    data: &'a [u8],
    /// Length of the stream itself, in bits.
    limit: usize,
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader of all of `data`.
    #[inline]
    pub(crate) fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            limit: data.len() * 8,
            pos: 0,
        }
    }

    /// A reader of the first `len` bytes of `data`; the rest of `data` is only read as padding,
    /// which lets 64-bit loads near the end of the stream stay on the fast path.
    #[inline]
    pub(crate) fn with_padding(data: &'a [u8], len: usize) -> Self {
        BitReader {
            data,
            limit: len.min(data.len()) * 8,
            pos: 0,
        }
    }

    /// The next 64 bits (at least 57 of them from the stream, the rest zero) without consuming.
    #[inline(always)]
    pub(crate) fn peek(&self) -> u64 {
        peek_at(self.data, self.pos)
    }

    /// The bytes read (the stream and whatever padding follows it).
    #[inline(always)]
    pub(crate) fn data(&self) -> &'a [u8] {
        self.data
    }

    #[inline(always)]
    pub(crate) fn set_pos(&mut self, pos: usize) {
        self.pos = pos;
    }

    #[inline(always)]
    pub(crate) fn skip(&mut self, n: u32) {
        self.pos += n as usize;
    }

    /// Reads `n <= 56` bits.
    #[inline(always)]
    pub(crate) fn read(&mut self, n: u32) -> u64 {
        let w = self.peek();
        self.pos += n as usize;
        // Shifting by 1 then 63 - n handles n = 0 without an out-of-range shift.
        (w >> 1) >> (63 - n)
    }

    /// Reads `n <= 64` bits.
    #[inline]
    pub(crate) fn read_long(&mut self, n: u32) -> u64 {
        if n > 56 {
            let hi = self.read(n - 32);
            (hi << 32) | self.read(32)
        } else {
            self.read(n)
        }
    }

    /// Reads a value written by [`BitWriter::write_varbits`].
    #[inline]
    pub(crate) fn read_varbits(&mut self) -> u64 {
        let n = self.read(6) as u32 + 1;
        self.read_long(n)
    }

    #[inline(always)]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Total bits in the stream.
    #[inline]
    pub(crate) fn bit_len(&self) -> usize {
        self.limit
    }

    /// True when more bits were consumed than the stream holds.
    #[inline]
    pub(crate) fn overrun(&self) -> bool {
        self.pos > self.limit
    }
}

/// A bit buffer for hot loops: the next `nb` (>= 32 after [`FastBits::refill`]) bits of the stream
/// sit MSB-first in a register, topped up 32 bits at a time. Consuming a field is then a shift, so
/// the decoder's dependency chain does not go through a load. The bytes are passed to
/// [`FastBits::refill`] rather than held, so that two buffers over one chunk share one slice
/// (fewer registers in the decoder's loop).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastBits {
    pub(crate) buf: u64,
    pub(crate) nb: u32,
    byte: usize,
}

impl FastBits {
    /// A buffer positioned at bit `pos` of `data`.
    #[inline(always)]
    pub(crate) fn new(data: &[u8], pos: usize) -> Self {
        let mut f = FastBits {
            buf: 0,
            nb: 0,
            byte: pos >> 3,
        };
        f.refill(data);
        let skip = (pos & 7) as u32;
        f.buf <<= skip;
        f.nb -= skip;
        f
    }

    #[inline(always)]
    pub(crate) fn refill(&mut self, data: &[u8]) {
        if self.nb < 32 {
            let w = match data.get(self.byte..).and_then(|s| s.first_chunk::<4>()) {
                Some(b) => u32::from_be_bytes(*b),
                None => load_u32_tail(data, self.byte),
            };
            // Bits below `nb` are zero, and 1 <= 32 - nb <= 32.
            self.buf |= u64::from(w) << (32 - self.nb);
            self.byte += 4;
            self.nb += 32;
        }
    }

    /// Reads `n <= 32` bits (zeros past the end of `data`).
    #[inline(always)]
    pub(crate) fn take(&mut self, data: &[u8], n: u32) -> u64 {
        debug_assert!(n <= 32);
        self.refill(data);
        // Shifting by 1 then 63 - n handles n = 0 without an out-of-range shift.
        let v = (self.buf >> 1) >> (63 - n);
        self.consume(n);
        v
    }

    /// Reads `n <= 64` bits.
    #[inline(always)]
    pub(crate) fn take_long(&mut self, data: &[u8], n: u32) -> u64 {
        if n > 32 {
            let hi = self.take(data, n - 32);
            (hi << 32) | self.take(data, 32)
        } else {
            self.take(data, n)
        }
    }

    /// Reads a value written by [`BitWriter::write_varbits`].
    #[inline(always)]
    pub(crate) fn take_varbits(&mut self, data: &[u8]) -> u64 {
        let n = self.take(data, 6) as u32 + 1;
        self.take_long(data, n)
    }

    /// Consumes `n <= nb` bits.
    #[inline(always)]
    pub(crate) fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.nb -= n;
    }

    /// Bit position in the stream.
    #[inline(always)]
    pub(crate) fn pos(&self) -> usize {
        self.byte * 8 - self.nb as usize
    }
}

#[inline(never)]
fn load_u32_tail(data: &[u8], byte: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(rest) = data.get(byte..) {
        let n = rest.len().min(4);
        b[..n].copy_from_slice(&rest[..n]);
    }
    u32::from_be_bytes(b)
}

/// The 64 bits of `data` starting at bit `pos` (zeros past the end).
#[inline(always)]
pub(crate) fn peek_at(data: &[u8], pos: usize) -> u64 {
    let byte = pos >> 3;
    let w = match data.get(byte..).and_then(|s| s.first_chunk::<8>()) {
        Some(b) => u64::from_be_bytes(*b),
        None => peek_tail(data, byte),
    };
    w << (pos & 7)
}

/// The last 8 bytes of `data` shifted to start at `byte` (zeros after the end).
#[inline(never)]
fn peek_tail(data: &[u8], byte: usize) -> u64 {
    let len = data.len();
    match data
        .get(len.wrapping_sub(8)..)
        .and_then(|s| s.first_chunk::<8>())
    {
        Some(b) if byte < len => u64::from_be_bytes(*b) << (8 * (byte + 8 - len)),
        _ => {
            let mut b = [0u8; 8];
            if let Some(rest) = data.get(byte..) {
                let n = rest.len().min(8);
                b[..n].copy_from_slice(&rest[..n]);
            }
            u64::from_be_bytes(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_fields() {
        let fields: Vec<(u64, u32)> = (0..500u64)
            .map(|i| {
                let n = (i * 7 % 65) as u32;
                let v = if n == 0 {
                    0
                } else {
                    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> (64 - n)
                };
                (v, n)
            })
            .collect();
        let mut w = BitWriter::default();
        for &(v, n) in &fields {
            w.write_long(v, n);
            w.write_varbits(v);
        }
        let mut r = BitReader::new(w.bytes());
        for &(v, n) in &fields {
            assert_eq!(r.read_long(n), v, "field of {n} bits");
            assert_eq!(r.read_varbits(), v);
        }
        assert_eq!(r.pos(), w.bit_len());
        assert!(!r.overrun());
        // The register buffer reads the same fields, over the exact bytes (its refills near the
        // end load fewer than 4 bytes) and from every starting bit.
        let data = w.bytes();
        let mut f = FastBits::new(data, 0);
        for &(v, n) in &fields {
            assert_eq!(f.take_long(data, n), v, "field of {n} bits");
            assert_eq!(f.take_varbits(data), v);
        }
        assert_eq!(f.pos(), w.bit_len());
        assert_eq!(f.take(data, 32), 0, "zeros past the end");
        for start in 0..64 {
            let mut f = FastBits::new(data, start);
            let mut r = BitReader::new(data);
            r.set_pos(start);
            for n in (0..=32).cycle().take(40) {
                assert_eq!(f.take(data, n), r.read(n), "start {start}");
            }
            assert_eq!(f.pos(), r.pos());
        }
    }
}
