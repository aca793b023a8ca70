//! Arbitrary bytes as a log record payload: decoding never panics, and whatever decodes
//! re-encodes to a payload that decodes to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_tsdb::record::{Record, decode, encode_samples, encode_series, encode_tombstones};

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = decode(data) {
        let mut again = Vec::new();
        match &rec {
            Record::Series(s) => encode_series(s, &mut again),
            Record::Samples(s) => encode_samples(s, &mut again),
            Record::Tombstones(s) => encode_tombstones(s, &mut again),
        }
        assert_eq!(decode(&again).ok(), Some(rec));
    }
});
