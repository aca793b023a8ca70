//! `cargo +nightly fuzz run config` from crates/scrape: the config loader and file_sd parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tidemark_scrape::parse_config(text);
    }
    let _ = tidemark_scrape::discovery::parse_file_sd("t.json", data);
    let _ = tidemark_scrape::discovery::parse_file_sd("t.yml", data);
});
