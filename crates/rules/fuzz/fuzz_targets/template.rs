//! `cargo +nightly fuzz run template` from crates/rules: the Go-template subset (parse and run)
//! on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidemark_rules::fuzzing::template(data);
});
