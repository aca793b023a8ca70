//! Random and mutated bytes into the exposition parsers (the CI-run stand-in for the cargo-fuzz
//! target in `fuzz/`): no input may panic, and every body either parses or yields one error.

use rand::{Rng, SeedableRng, rngs::StdRng};
use tidemark_scrape::parse::{Format, parse_format};

const SEEDS: &[&str] = &[
    "# HELP a_total Some \\\\help\\n\n# TYPE a_total counter\na_total{x=\"1\",y=\"\\\"q\\\"\"} 1 1000\nb NaN\n",
    "# TYPE foo histogram\nfoo_bucket{le=\"0.5\"} 3 1520879607.789 # {trace_id=\"a\"} 0.4 1520879607\nfoo_count 3\n# EOF\n",
    "{\"my.metric\",\"l.x\"=\"v\"} +Inf -5\n",
    "# UNIT foo seconds\nfoo_seconds 1.5e-3\n# EOF",
];

fn check(body: &[u8]) {
    for f in [Format::PrometheusText, Format::OpenMetrics] {
        let mut errors = 0;
        let mut after_error = 0;
        for e in parse_format(body, f, 0) {
            if errors > 0 {
                after_error += 1;
            }
            if e.is_err() {
                errors += 1;
            }
        }
        assert!(
            errors <= 1 && after_error == 0,
            "{body:?}: errors={errors}, entries after error={after_error}"
        );
    }
}

#[test]
fn seeds_parse() {
    for (i, s) in SEEDS.iter().enumerate() {
        let f = if i % 2 == 1 || s.contains("# EOF") {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        };
        let r: Result<Vec<_>, _> = parse_format(s.as_bytes(), f, 0).collect();
        assert!(r.is_ok(), "seed {i}: {r:?}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..30000 {
        let n = rng.random_range(0..200);
        let alphabet = b"abc_:{}=\",# \n\t\\.0123456789eE+-NaInfHELPTYPEUNITOF\xff\xc3";
        let body: Vec<u8> = (0..n)
            .map(|_| {
                if rng.random_bool(0.9) {
                    alphabet[rng.random_range(0..alphabet.len())]
                } else {
                    rng.random()
                }
            })
            .collect();
        check(&body);
    }
}

#[test]
fn mutated_seeds_never_panic() {
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..100000 {
        let mut body = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes().to_vec();
        for _ in 0..rng.random_range(1..5) {
            let len = body.len();
            match rng.random_range(0..4) {
                0 if len > 0 => {
                    let i = rng.random_range(0..len);
                    body[i] = rng.random();
                }
                1 if len > 0 => {
                    let i = rng.random_range(0..len);
                    body.remove(i);
                }
                2 => {
                    let i = rng.random_range(0..=len);
                    body.insert(i, b"\"{}=,# \n\\"[rng.random_range(0..9)]);
                }
                _ if len > 0 => {
                    let i = rng.random_range(0..len);
                    body.truncate(i);
                }
                _ => {}
            }
        }
        check(&body);
    }
}

const CONFIG_SEED: &str = "global:\n  scrape_interval: 15s\n  external_labels: {a: b}\nscrape_configs:\n  - job_name: n\n    scrape_timeout: 5s\n    static_configs:\n      - targets: ['h:1']\n    relabel_configs:\n      - source_labels: [a]\n        regex: '(.*)'\n        target_label: b\n        action: hashmod\n        modulus: 3\n    body_size_limit: 1MB\n";

#[test]
fn mutated_config_and_file_sd_never_panic() {
    let mut rng = StdRng::seed_from_u64(13);
    for i in 0..3000 {
        let seed: &[u8] = if i % 2 == 0 {
            CONFIG_SEED.as_bytes()
        } else {
            br#"[{"targets": ["h:1"], "labels": {"a": "b"}}]"#
        };
        let mut body = seed.to_vec();
        for _ in 0..rng.random_range(1..4) {
            let len = body.len();
            if len == 0 {
                break;
            }
            let i = rng.random_range(0..len);
            match rng.random_range(0..3) {
                0 => body[i] = b"{}[]:,-\"' \n0sabc*"[rng.random_range(0..17)],
                1 => {
                    body.remove(i);
                }
                _ => body.truncate(i.max(1)),
            }
        }
        if let Ok(text) = std::str::from_utf8(&body) {
            let _ = tidemark_scrape::parse_config(text);
        }
        let _ = tidemark_scrape::discovery::parse_file_sd("x.json", &body);
        let _ = tidemark_scrape::discovery::parse_file_sd("x.yml", &body);
    }
}
