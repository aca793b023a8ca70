//! Property test: promtool's expanding notation against a simple model.

use proptest::prelude::*;
use tidemark_rules::unittest::expand_values;

#[derive(Debug, Clone)]
enum Tok {
    Blank(usize),
    Series(i32, i32, u8),
    Value(i32),
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![
        (0usize..4).prop_map(Tok::Blank),
        (-50i32..50, -5i32..5, 0u8..6).prop_map(|(a, b, n)| Tok::Series(a, b, n)),
        (-100i32..100).prop_map(Tok::Value),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn matches_model(toks in proptest::collection::vec(tok(), 0..12)) {
        let mut text = Vec::new();
        let mut model: Vec<Option<f64>> = Vec::new();
        for t in &toks {
            match t {
                Tok::Blank(0) => { text.push("_".to_string()); model.push(None); }
                Tok::Blank(n) => { text.push(format!("_x{n}")); model.extend(std::iter::repeat_n(None, *n)); }
                Tok::Series(a, b, n) => {
                    let op = if *b < 0 { format!("{a}-{}", -b) } else { format!("{a}+{b}") };
                    text.push(format!("{op}x{n}"));
                    for i in 0..=i32::from(*n) { model.push(Some(f64::from(a + i * b))); }
                }
                Tok::Value(v) => { text.push(v.to_string()); model.push(Some(f64::from(*v))); }
            }
        }
        let got = expand_values(&text.join(" "));
        prop_assert_eq!(got, Ok(model), "{}", text.join(" "));
    }
}
