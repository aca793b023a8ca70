//! `cargo +nightly fuzz run wire` from crates/api: remote read requests, Prometheus XOR chunks
//! and web config files, on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tidemark_api::fuzzing::read_request(data);
    let _ = tidemark_api::fuzzing::xor_chunk(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = tidemark_api::fuzzing::web_config(s);
    }
});
