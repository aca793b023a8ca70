//! Request parameters: the URL query and, for form-encoded POSTs, the body (Prometheus reads
//! both through Go's `r.FormValue`), with repeated keys (`match[]`); time and duration parsing
//! with Prometheus' rules and error texts.

use crate::error::{ApiError, ApiResult};

/// The smallest and largest timestamps Prometheus' API accepts (Go's `MinTime`/`MaxTime`), ms.
pub(crate) const MIN_TIME_MS: i64 = (i64::MIN / 1000 + 62_135_596_801) * 1000;
pub(crate) const MAX_TIME_MS: i64 = (i64::MAX / 1000 - 62_135_596_801) * 1000 + 999;
const MIN_TIME_FORMATTED: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_FORMATTED: &str = "292277025-08-18T07:12:54.999999999Z";

/// Parameters of one request, in order (URL query first, then form body).
#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub(crate) fn from_parts(query: Option<&str>, form_body: Option<&[u8]>) -> Params {
        let mut pairs = Vec::new();
        if let Some(q) = query {
            pairs.extend(
                form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())),
            );
        }
        if let Some(b) = form_body {
            // Go's ParseForm puts body values before URL values for FormValue; Prometheus only
            // ever reads the first value of a single-valued key, so body values come first.
            let mut body: Vec<(String, String)> = form_urlencoded::parse(b)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            body.append(&mut pairs);
            pairs = body;
        }
        Params { pairs }
    }

    /// First non-empty value of `name` (Go's `FormValue` returns the first value).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Non-empty value of `name`, treating "" like absent (as Prometheus does for times).
    pub(crate) fn get_nonempty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub(crate) fn get_all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A time parameter, or `default` when absent/empty.
    pub(crate) fn time_or(&self, name: &str, default: i64) -> ApiResult<i64> {
        match self.get_nonempty(name) {
            None => Ok(default),
            Some(s) => parse_time(s).map_err(|e| ApiError::invalid_param(name, e)),
        }
    }

    /// A duration parameter in milliseconds (float seconds or Prometheus duration).
    pub(crate) fn duration(&self, name: &str) -> ApiResult<Option<i64>> {
        match self.get_nonempty(name) {
            None => Ok(None),
            Some(s) => parse_duration(s)
                .map(Some)
                .map_err(|e| ApiError::invalid_param(name, e)),
        }
    }

    /// A non-negative integer `limit`-style parameter; 0 when absent.
    pub(crate) fn limit(&self, name: &str) -> ApiResult<usize> {
        match self.get_nonempty(name) {
            None => Ok(0),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(n as usize),
                Ok(_) => Err(ApiError::invalid_param(name, "limit must be non-negative")),
                Err(_) => Err(ApiError::invalid_param(
                    name,
                    format!("cannot parse {s:?} to a valid limit"),
                )),
            },
        }
    }
}

/// Prometheus' `parseTime`: float seconds (rounded to the millisecond) or RFC 3339.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>()
        && !s.eq_ignore_ascii_case("nan")
        && !s.to_ascii_lowercase().contains("inf")
    {
        let ms = (f * 1000.0).round();
        if !ms.is_finite() || ms < MIN_TIME_MS as f64 || ms > MAX_TIME_MS as f64 {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        return Ok(ms as i64);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    match s {
        MIN_TIME_FORMATTED => Ok(MIN_TIME_MS),
        MAX_TIME_FORMATTED => Ok(MAX_TIME_MS),
        _ => Err(format!("cannot parse {s:?} to a valid timestamp")),
    }
}

/// Prometheus' `parseDuration`: float seconds or a duration string (`5m`, `1h30m`), in ms.
pub(crate) fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        let ms = (f * 1000.0).round();
        if ms.abs() >= (i64::MAX / 2) as f64 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms as i64);
    }
    tidemark_model::time::parse_duration_millis(s)
        .map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("4"), Ok(4000));
        assert_eq!(parse_time("1.5"), Ok(1500));
        assert_eq!(parse_time("1435781451.781"), Ok(1_435_781_451_781));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(
            parse_time("2015-07-01T22:10:51+02:00"),
            Ok(1_435_781_451_000)
        );
        assert_eq!(parse_time(MIN_TIME_FORMATTED), Ok(MIN_TIME_MS));
        assert_eq!(parse_time(MAX_TIME_FORMATTED), Ok(MAX_TIME_MS));
        assert!(parse_time("abc").is_err());
        assert!(parse_time("NaN").is_err());
        assert!(parse_time("1e300").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15"), Ok(15_000));
        assert_eq!(parse_duration("0.5"), Ok(500));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn params_query_and_form() {
        let p = Params::from_parts(
            Some("match[]=a&match[]=b&time=4"),
            Some(b"query=1%2B1&time=5"),
        );
        assert_eq!(p.get("query"), Some("1+1"));
        assert_eq!(p.get("time"), Some("5"));
        assert_eq!(p.get_all("match[]"), vec!["a", "b"]);
        assert_eq!(p.time_or("t", 7), Ok(7));
    }
}
