//! Arbitrary bytes as a block index: opening and reading it (every series, label, postings list,
//! symbol, and the full cross-check) never panics and never allocates without bound. Half of the
//! inputs get their checksums recomputed first, so that mutations reach the section decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_tsdb::index::{exercise_reader, reseal};

fuzz_target!(|data: &[u8]| {
    let _ = exercise_reader(data);
    if data.first().is_some_and(|b| b & 1 == 1) {
        let mut sealed = data.to_vec();
        reseal(&mut sealed);
        let _ = exercise_reader(&sealed);
    }
});
