//! Property test: series written in the text format (with escaping) and in OpenMetrics parse
//! back to the same labels, values and timestamps (the model is the list that was written).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tidemark_model::Labels;
use tidemark_scrape::parse::{Entry, Format, parse_format};

/// Metric name, labels, value, timestamp.
type Written = (String, Vec<(String, String)>, f64, Option<i64>);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render(series: &[Written], om: bool) -> String {
    let mut s = String::new();
    for (name, labels, v, t) in series {
        s.push_str(name);
        if !labels.is_empty() {
            s.push('{');
            let parts: Vec<String> = labels
                .iter()
                .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                .collect();
            s.push_str(&parts.join(","));
            s.push('}');
        }
        s.push_str(&format!(" {v:?}"));
        if let Some(t) = t {
            if om {
                s.push_str(&format!(
                    " {}.{:03}",
                    t.div_euclid(1000),
                    t.rem_euclid(1000)
                ));
            } else {
                s.push_str(&format!(" {t}"));
            }
        }
        s.push('\n');
    }
    if om {
        s.push_str("# EOF\n");
    }
    s
}

fn series_strategy() -> impl Strategy<Value = Vec<Written>> {
    let label = ("[a-z_][a-z0-9_]{0,6}", "[a-zA-Z0-9 \"\\\\\n{}=,é#]{1,8}");
    let one = (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,10}",
        proptest::collection::btree_map(label.0, label.1, 0..4),
        prop_oneof![
            any::<f64>().prop_filter("finite", |v| v.is_finite()),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY)
        ],
        proptest::option::of(0i64..4_000_000_000_000),
    )
        .prop_map(|(n, l, v, t)| {
            (
                n,
                l.into_iter().filter(|(k, _)| k != "__name__").collect(),
                v,
                t,
            )
        });
    proptest::collection::vec(one, 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn text_and_openmetrics_round_trip(series in series_strategy()) {
        for om in [false, true] {
            let body = render(&series, om);
            let f = if om { Format::OpenMetrics } else { Format::PrometheusText };
            let got: Vec<Entry> = parse_format(body.as_bytes(), f, -1).collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?;
            prop_assert_eq!(got.len(), series.len());
            for (e, (name, labels, v, t)) in got.iter().zip(&series) {
                let Entry::Sample { labels: l, t: gt, v: gv, timestamped, .. } = e else {
                    return Err(TestCaseError::fail("not a sample"));
                };
                let mut want: Vec<(&str, &str)> = labels.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                want.push(("__name__", name));
                prop_assert_eq!(l, &Labels::from_pairs(want));
                prop_assert_eq!(gv.to_bits(), v.to_bits());
                prop_assert_eq!(*timestamped, t.is_some());
                prop_assert_eq!(*gt, t.unwrap_or(-1));
            }
        }
    }
}
