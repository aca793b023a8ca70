//! Any strictly increasing samples (built from the fuzzer's bytes) round-trip bit for bit.
//! Run: `cargo +nightly fuzz run chunk_roundtrip` in crates/tsdb/fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_tsdb::chunk::{ChunkEncoder, decode_all};

fuzz_target!(|data: &[u8]| {
    let mut enc = ChunkEncoder::new();
    let mut want = Vec::new();
    let mut t = 0i64;
    for rec in data.chunks_exact(10) {
        let gap = u16::from_le_bytes([rec[0], rec[1]]) as i64 + 1;
        let mut b = [0u8; 8];
        b.copy_from_slice(&rec[2..10]);
        let v = f64::from_bits(u64::from_le_bytes(b));
        t = match t.checked_add(gap * if rec[0] & 1 == 1 { 1 } else { 1_000_000_007 }) {
            Some(t) => t,
            None => break,
        };
        enc.append(t, v).unwrap();
        want.push((t, v.to_bits()));
    }
    let mut out = Vec::new();
    decode_all(&enc.bytes(), &mut out).unwrap();
    let got: Vec<(i64, u64)> = out.iter().map(|s| (s.t, s.v.to_bits())).collect();
    assert_eq!(got, want);
});
