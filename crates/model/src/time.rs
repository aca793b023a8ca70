//! Time helpers: milliseconds since the epoch and Prometheus duration strings.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Error parsing a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid duration string: {0:?}")]
pub struct DurationError(pub String);

/// Parses a Prometheus duration (`1y2w3d4h5m6s7ms`, units in descending order, each at most
/// once) into milliseconds. `0` alone is accepted.
pub fn parse_duration_millis(s: &str) -> Result<i64, DurationError> {
    let err = || DurationError(s.to_string());
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(err());
    }
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3600 * 1000),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("m", 60 * 1000),
        ("s", 1000),
        ("ms", 1),
    ];
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_unit = 0usize;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err());
        }
        let n: i64 = s[start..i].parse().map_err(|_| err())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let idx = UNITS.iter().position(|(u, _)| *u == unit).ok_or_else(err)?;
        if idx < last_unit {
            return Err(err());
        }
        last_unit = idx + 1;
        total = n
            .checked_mul(UNITS[idx].1)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(err)?;
    }
    Ok(total)
}

/// Formats milliseconds as a Prometheus duration string (`1h30m`, `0s`).
pub fn format_duration_millis(mut ms: i64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
        ms = -ms;
    }
    for (u, n) in [
        ("y", 365 * 24 * 3600 * 1000i64),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("m", 60 * 1000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= n {
            out.push_str(&(ms / n).to_string());
            out.push_str(u);
            ms %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_millis("5m"), Ok(300_000));
        assert_eq!(parse_duration_millis("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_millis("15d"), Ok(15 * 86_400_000));
        assert_eq!(parse_duration_millis("100ms"), Ok(100));
        assert_eq!(parse_duration_millis("0"), Ok(0));
        assert!(parse_duration_millis("5").is_err());
        assert!(parse_duration_millis("m").is_err());
        assert!(parse_duration_millis("1m1h").is_err());
        assert!(parse_duration_millis("99999999999999999y").is_err());
        assert_eq!(format_duration_millis(5_400_000), "1h30m");
        assert_eq!(format_duration_millis(0), "0s");
    }
}
