//! The CI-run stand-in for the cargo-fuzz targets in `fuzz/` (which need nightly): random and
//! mutated bytes through every decoder of untrusted input. Nothing may panic; valid inputs
//! mutated by one byte must still be handled. Fixed seeds, bounded case counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use prost::Message;
use tidemark_api::fuzzing;
use tidemark_api::proto::{prometheus as pb, write_v2 as v2};

fn valid_v1() -> Vec<u8> {
    let ts = pb::TimeSeries {
        labels: vec![
            pb::Label {
                name: "__name__".into(),
                value: "m".into(),
            },
            pb::Label {
                name: "job".into(),
                value: "j".into(),
            },
        ],
        samples: vec![
            pb::Sample {
                value: 1.5,
                timestamp: 1000,
            },
            pb::Sample {
                value: f64::NAN,
                timestamp: 2000,
            },
        ],
        exemplars: vec![pb::Exemplar {
            labels: vec![pb::Label {
                name: "t".into(),
                value: "x".into(),
            }],
            value: 1.0,
            timestamp: 1,
        }],
        histograms: vec![],
    };
    pb::WriteRequest {
        timeseries: vec![ts.clone(), ts],
        metadata: vec![],
    }
    .encode_to_vec()
}

fn valid_v2() -> Vec<u8> {
    v2::Request {
        symbols: vec!["".into(), "__name__".into(), "m".into()],
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2],
            samples: vec![v2::Sample {
                value: 1.0,
                timestamp: 5,
            }],
            metadata: Some(v2::Metadata {
                r#type: 2,
                help_ref: 0,
                unit_ref: 0,
            }),
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn valid_chunk() -> Vec<u8> {
    let mut e = tidemark_api::xor::XorEncoder::new();
    for i in 0..50 {
        e.append(1000 + i * 15_000 + (i % 3), (i as f64).sqrt());
    }
    e.into_bytes()
}

#[test]
fn valid_inputs_decode() {
    assert_eq!(
        fuzzing::remote_write_decompressed(&valid_v1()),
        2,
        "1.0 body decodes as 1.0 (2.0 decode of it yields no series)"
    );
    let c = snap::raw::Encoder::new().compress_vec(&valid_v1()).unwrap();
    assert!(fuzzing::remote_write(&c) >= 2);
    assert!(fuzzing::remote_write_decompressed(&valid_v2()) >= 1);
    assert_eq!(fuzzing::xor_chunk(&valid_chunk()), 50);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = fuzzing::remote_write(&data);
        let _ = fuzzing::remote_write_decompressed(&data);
        let _ = fuzzing::read_request(&data);
        let _ = fuzzing::xor_chunk(&data);
        let _ = fuzzing::web_config(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn mutated_valid_inputs_never_panic(which in 0usize..3, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let base = match which { 0 => valid_v1(), 1 => valid_v2(), _ => valid_chunk() };
        let mut m = base.clone();
        let i = pos.index(m.len());
        m[i] = byte;
        let truncated = &base[..cut.index(base.len() + 1)];
        for d in [&m[..], truncated] {
            let _ = fuzzing::remote_write_decompressed(d);
            let _ = fuzzing::xor_chunk(d);
            let c = snap::raw::Encoder::new().compress_vec(d).unwrap();
            let _ = fuzzing::remote_write(&c);
            let _ = fuzzing::read_request(&c);
        }
    }
}
