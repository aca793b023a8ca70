//! Decoding arbitrary bytes as a chunk never panics, and the bulk decoder and the iterator agree.
//! Run: `cargo +nightly fuzz run chunk_decode` in crates/tsdb/fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_storage::SampleIter;
use tidemark_tsdb::chunk::{ChunkIter, decode_all};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let bulk = decode_all(data, &mut out);
    if let Ok(mut it) = ChunkIter::new(data) {
        let mut n = 0;
        while it.next() {
            if bulk.is_ok() {
                assert!(it.at().bit_eq(&out[n]));
            }
            n += 1;
        }
        assert_eq!(bulk.is_ok(), it.error().is_none());
        if bulk.is_ok() {
            assert_eq!(n, out.len());
        }
    } else {
        assert!(bulk.is_err());
    }
});
