//! `cargo +nightly fuzz run parse` from crates/scrape: both exposition formats on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_scrape::parse::{Format, parse_format};

fuzz_target!(|data: &[u8]| {
    for f in [Format::PrometheusText, Format::OpenMetrics] {
        for e in parse_format(data, f, 0) {
            if e.is_err() {
                break;
            }
        }
    }
});
