//! `GET /federate?match[]=...`: the latest sample (within the lookback delta) of every matching
//! series in the Prometheus text format, for a Prometheus that federates from Tidemark.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tidemark_model::{Labels, is_stale_nan};

use crate::error::ApiResult;
use crate::handlers::blocking;
use crate::params::Params;
use crate::selectors::parse_matches;
use crate::state::AppState;

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` with the text format's `+Inf`/`-Inf`/`NaN`.
pub(crate) fn format_text_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".to_string()
        } else {
            "-Inf".to_string()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".to_string()
        } else {
            "0".to_string()
        };
    }
    let e = format!("{v:e}");
    let exp: i32 = e
        .split_once('e')
        .and_then(|(_, x)| x.parse().ok())
        .unwrap_or(0);
    if !(-4..6).contains(&exp) {
        // Shortest 'g' switches to exponent form from 1e+06 on.
        let (mant, _) = e.split_once('e').unwrap_or((&e, ""));
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    format!("{v}")
}

fn push_label_value(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes one family per metric name, series sorted, `name{labels} value timestamp_ms`.
pub(crate) fn render(samples: &BTreeMap<Labels, (i64, f64)>) -> String {
    type Family<'a> = Vec<(&'a Labels, (i64, f64))>;
    let mut by_name: BTreeMap<&str, Family<'_>> = BTreeMap::new();
    for (l, s) in samples {
        if let Some(n) = l.metric_name() {
            by_name.entry(n).or_default().push((l, *s));
        }
    }
    let mut out = String::new();
    for (name, series) in by_name {
        let _ = writeln!(out, "# TYPE {name} untyped");
        for (l, (t, v)) in series {
            out.push_str(name);
            let mut first = true;
            for x in l.iter().filter(|x| x.name != tidemark_model::METRIC_NAME) {
                out.push(if first { '{' } else { ',' });
                first = false;
                out.push_str(x.name);
                out.push('=');
                push_label_value(&mut out, x.value);
            }
            if !first {
                out.push('}');
            }
            let _ = writeln!(out, " {} {t}", format_text_float(v));
        }
    }
    out
}

pub(crate) async fn federate(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let sets = parse_matches(&p.get_all("match[]"))?;
    let now = tidemark_model::time::now_millis();
    let lookback = state.engine.options().lookback_delta_ms;
    let st = state.clone();
    let latest = blocking(move || {
        let q = st.queryable.querier(now - lookback, now)?;
        let mut latest: BTreeMap<Labels, (i64, f64)> = BTreeMap::new();
        for set in &sets {
            for s in q.select(true, None, set) {
                let s = s?;
                if latest.contains_key(s.labels()) {
                    continue;
                }
                let mut it = s.iter();
                let mut last = None;
                while it.next() {
                    let p = it.at();
                    if p.t <= now {
                        last = Some((p.t, p.v));
                    }
                }
                if let Some((t, v)) = last
                    && !is_stale_nan(v)
                {
                    latest.insert(s.labels().clone(), (t, v));
                }
            }
        }
        Ok(latest)
    })
    .await?;
    let mut r = render(&latest).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_floats_like_go_g() {
        for (v, want) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e300, "1e+300"),
            (-2.5e-7, "-2.5e-07"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(format_text_float(v), want, "{v}");
        }
    }

    #[test]
    fn renders_families() {
        let mut m = BTreeMap::new();
        m.insert(
            Labels::from_pairs([("__name__", "up"), ("job", "a\"b")]),
            (1000, 1.0),
        );
        m.insert(Labels::from_pairs([("__name__", "x")]), (2000, 0.5));
        assert_eq!(
            render(&m),
            "# TYPE up untyped\nup{job=\"a\\\"b\"} 1 1000\n# TYPE x untyped\nx 0.5 2000\n"
        );
    }
}
