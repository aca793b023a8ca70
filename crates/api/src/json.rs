//! JSON output in Prometheus' exact shapes. Query results are written by hand (not through
//! serde) because Prometheus' encoding has its own rules: timestamps are numbers with at most
//! three decimals written as `4` or `1.500`, values are strings formatted like Go's
//! `strconv.AppendFloat(v, 'f' or 'e', -1, 64)`, and strings escape `<`, `>`, `&` like Go's
//! standard library.

use std::fmt::Write as _;

use tidemark_model::{Exemplar, Labels};
use tidemark_promql::{QueryStats, Value};

/// Formats a sample value as Prometheus does (`jsonutil.MarshalValue`): shortest round-trip
/// digits in plain notation, switching to exponent notation (`1e+21`, `1e-07`) when
/// `|v| < 1e-6` or `|v| >= 1e21`; `NaN`, `+Inf`, `-Inf`.
pub fn format_float(v: f64) -> String {
    let mut s = String::new();
    push_float(&mut s, v);
    s
}

pub(crate) fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust writes `1e21` / `1.5e-7`; Go writes `1e+21` / `1.5e-07`.
        let e = format!("{v:e}");
        let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
        out.push_str(mant);
        out.push('e');
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        out.push(sign);
        if digits.len() < 2 {
            out.push('0');
        }
        out.push_str(digits);
        return;
    }
    if v == 0.0 {
        // Go prints negative zero as "-0".
        out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    if v.fract() == 0.0 && abs < 1e15 {
        // Integral values (counters, gauges of counts) are most values: skip float formatting.
        push_int(out, v as i64);
        return;
    }
    let _ = write!(out, "{v}");
}

/// Writes a decimal integer without going through `fmt`.
fn push_int(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_uint(out, v.unsigned_abs());
}

fn push_uint(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(b as char);
    }
}

/// Writes a millisecond timestamp as Prometheus' `MarshalTimestamp`: seconds, and when not
/// whole a dot and exactly three digits.
pub(crate) fn push_ts(out: &mut String, t: i64) {
    let neg = t < 0;
    let a = t.unsigned_abs();
    if neg {
        out.push('-');
    }
    push_uint(out, a / 1000);
    let frac = (a % 1000) as u32;
    if frac != 0 {
        out.push('.');
        out.push((b'0' + (frac / 100) as u8) as char);
        out.push((b'0' + (frac / 10 % 10) as u8) as char);
        out.push((b'0' + (frac % 10) as u8) as char);
    }
}

/// Writes `s` as a JSON string, escaping like Go's `encoding/json` (HTML-safe). Runs of bytes
/// that need no escaping (almost every label) are copied at once.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let width = match c {
            b'"' | b'\\' | b'<' | b'>' | b'&' => 1,
            0..=0x1f => 1,
            // U+2028 and U+2029 (E2 80 A8/A9): valid JSON but not valid JavaScript.
            0xe2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xa8 | 0xa9)) => 3,
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0xe2 => out.push_str(if b[i + 2] == 0xa8 {
                "\\u2028"
            } else {
                "\\u2029"
            }),
            c => {
                let _ = write!(out, "\\u{:04x}", c);
            }
        }
        i += width;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

pub(crate) fn push_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, x) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, x.name);
        out.push(':');
        push_str(out, x.value);
    }
    out.push('}');
}

/// `[ts,"v"]`
pub(crate) fn push_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    push_ts(out, t);
    out.push_str(",\"");
    push_float(out, v);
    out.push_str("\"]");
}

fn push_str_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, s);
    }
    out.push(']');
}

/// `{"status":"success","data":<data>[,"warnings":[...]][,"infos":[...]]}` around
/// already-encoded `data`.
pub(crate) fn success_body(data: &str, warnings: &[String], infos: &[String]) -> String {
    let mut out = String::with_capacity(data.len() + 40);
    out.push_str("{\"status\":\"success\",\"data\":");
    out.push_str(data);
    if !warnings.is_empty() {
        out.push_str(",\"warnings\":");
        push_str_array(&mut out, warnings);
    }
    if !infos.is_empty() {
        out.push_str(",\"infos\":");
        push_str_array(&mut out, infos);
    }
    out.push('}');
    out
}

/// `{"status":"error","errorType":"...","error":"..."}`
pub(crate) fn error_body(error_type: &str, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 48);
    out.push_str("{\"status\":\"error\",\"errorType\":");
    push_str(&mut out, error_type);
    out.push_str(",\"error\":");
    push_str(&mut out, message);
    out.push('}');
    out
}

/// `{"resultType":...,"result":...[,"stats":{...}]}` of a query.
pub(crate) fn query_data(value: &Value, stats: Option<&QueryStats>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"resultType\":\"");
    out.push_str(value.type_name());
    out.push_str("\",\"result\":");
    match value {
        Value::Scalar { t, v } => push_point(&mut out, *t, *v),
        Value::String { t, v } => {
            out.push('[');
            push_ts(&mut out, *t);
            out.push(',');
            push_str(&mut out, v);
            out.push(']');
        }
        Value::Vector(samples) => {
            out.push('[');
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                push_labels(&mut out, &s.labels);
                out.push_str(",\"value\":");
                push_point(&mut out, s.t, s.v);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push('[');
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                push_labels(&mut out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, p) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    push_point(&mut out, p.t, p.v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    if let Some(st) = stats {
        out.push_str(",\"stats\":");
        out.push_str(&serde_json::to_string(st).unwrap_or_else(|_| "{}".to_string()));
    }
    out.push('}');
    out
}

/// One exemplar: `{"labels":{...},"value":"1","timestamp":1.5}`.
pub(crate) fn push_exemplar(out: &mut String, e: &Exemplar) {
    out.push_str("{\"labels\":");
    push_labels(out, &e.labels);
    out.push_str(",\"value\":\"");
    push_float(out, e.value);
    out.push_str("\",\"timestamp\":");
    push_ts(out, e.ts.unwrap_or(0));
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_go() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1"),
            (2.0, "2"),
            (0.1, "0.1"),
            (-0.5, "-0.5"),
            (1e6, "1000000"),
            (1234567.891, "1234567.891"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (1e-6, "0.000001"),
            (1e-7, "1e-07"),
            (-2.5e-10, "-2.5e-10"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (tidemark_model::stale_nan(), "NaN"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-42.0, "-42"),
            (123_456_789_012_345.0, "123456789012345"),
            (1e15, "1000000000000000"),
            (-9.007199254740993e15, "-9007199254740992"),
        ];
        for (v, want) in cases {
            assert_eq!(format_float(*v), *want, "value {v:e}");
        }
    }

    #[test]
    fn integer_fast_path_matches_general_formatting() {
        for v in [
            0.5f64,
            1.0,
            7.0,
            99999.0,
            1e14 + 1.0,
            999_999_999_999_999.0,
            -3.0,
            12345.5,
        ] {
            let mut a = String::new();
            push_float(&mut a, v);
            let general = if v.fract() == 0.0 {
                format!("{}", v as i64)
            } else {
                format!("{v}")
            };
            assert_eq!(a, general);
        }
    }

    #[test]
    fn timestamps_like_prometheus() {
        let mut s = String::new();
        for t in [4000i64, 1500, 1, 1_700_000_000_123, -1500, 0, 10] {
            push_ts(&mut s, t);
            s.push(' ');
        }
        assert_eq!(s, "4 1.500 0.001 1700000000.123 -1.500 0 0.010 ");
    }

    #[test]
    fn strings_escape_like_go() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\n<&>\u{1}é\u{2028}x\u{2029}\t\r€");
        assert_eq!(
            s,
            r#""a\"b\\c\n\u003c\u0026\u003e\u0001é\u2028x\u2029\t\r€""#
        );
        let mut s = String::new();
        push_str(&mut s, "plain");
        assert_eq!(s, "\"plain\"");
    }

    /// The obvious char-by-char escaper, as a model for the fast one.
    fn model_escape(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest::proptest! {
        #[test]
        fn fast_escape_matches_model(s in "(\\PC|[\"\\\\<>&\n\t\u{1}\u{2028}\u{2029}€])*") {
            let mut out = String::new();
            push_str(&mut out, &s);
            proptest::prop_assert_eq!(out, model_escape(&s));
        }
    }

    #[test]
    fn envelope_shapes() {
        assert_eq!(
            success_body("[]", &[], &[]),
            r#"{"status":"success","data":[]}"#
        );
        assert_eq!(
            success_body("1", &["w".into()], &["i".into()]),
            r#"{"status":"success","data":1,"warnings":["w"],"infos":["i"]}"#
        );
        assert_eq!(
            error_body("bad_data", "x"),
            r#"{"status":"error","errorType":"bad_data","error":"x"}"#
        );
        assert_eq!(
            query_data(&Value::Scalar { t: 4000, v: 2.0 }, None),
            r#"{"resultType":"scalar","result":[4,"2"]}"#
        );
    }
}
