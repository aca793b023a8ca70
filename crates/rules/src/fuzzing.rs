//! Entry points shared by the cargo-fuzz targets (crates/rules/fuzz) and the ordinary
//! random-bytes tests: each takes arbitrary bytes and must never panic.

use crate::template::{self, TVal, TemplateData};

/// Parses and validates a rule file.
pub fn rule_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = crate::file::parse(text, "fuzz") {
        let _ = crate::file::validate(&f);
    }
}

/// Parses and executes a template with fixed data and a query function that echoes.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let q = |e: &str| -> template::QueryResult {
        Ok(vec![(vec![("q".to_string(), e.to_string())], 1.0)])
    };
    let d = TemplateData {
        labels: TVal::from_labels([("instance", "a:1"), ("job", "j")]),
        external_labels: TVal::from_labels([("cluster", "c")]),
        external_url: "http://x".to_string(),
        value: 1.5,
        query: Some(&q),
    };
    let _ = template::expand(&text, &d);
}

/// Expands a promtool input-series value string and parses it as a series selector.
pub fn test_values(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::unittest::expand_values(&text);
    let _ = crate::unittest::parse_series(&text);
}
