//! `cargo +nightly fuzz run rule_file` from crates/rules: rule files and rule unit-test values
//! from arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidemark_rules::fuzzing::rule_file(data);
    tidemark_rules::fuzzing::test_values(data);
});
