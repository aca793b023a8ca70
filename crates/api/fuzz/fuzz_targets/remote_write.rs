//! `cargo +nightly fuzz run remote_write` from crates/api: remote write bodies (snappy, then
//! protobuf as 1.0 and 2.0) and raw protobuf, on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tidemark_api::fuzzing::remote_write(data);
    let _ = tidemark_api::fuzzing::remote_write_decompressed(data);
});
