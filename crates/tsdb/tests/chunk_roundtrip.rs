//! Property tests of the chunk codec against a `Vec<(i64, f64)>` model, comparing f64 bits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use proptest::prelude::*;
use tidemark_model::Sample;
use tidemark_storage::{SampleIter, VecSampleIter};
use tidemark_tsdb::chunk::{ChunkEncoder, ChunkIter, decode_all};

/// Timestamp gaps: scrape-like, tiny, and huge (up to the whole i64 range).
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 14_990u64..15_010,
        2 => 1u64..5,
        1 => 1u64..u64::MAX / 64,
        1 => Just(15_000u64),
        1 => 29_990u64..30_010,
        1 => 15_000u64..15_100,
    ]
}

/// Values: decimals of various scales, arbitrary bit patterns, and the special values.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => (-1_000_000i64..1_000_000, 0u32..6).prop_map(|(m, e)| m as f64 / 10f64.powi(e as i32)),
        2 => any::<u64>().prop_map(f64::from_bits),
        1 => Just(f64::from_bits(0x7ff0_0000_0000_0002)),
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-0.0), Just(0.0)],
        1 => any::<f64>(),
        2 => Just(42.0),
        2 => (-1_000_000i64..1_000_000, 0u32..13).prop_map(|(m, h)| (m << h) as f64),
    ]
}

/// Strictly increasing timestamps from a start anywhere, stopping before overflow.
fn samples(max: usize) -> impl Strategy<Value = Vec<(i64, f64)>> {
    (
        any::<i64>(),
        prop::collection::vec((gap(), value()), 0..max),
    )
        .prop_map(|(start, rest)| {
            let mut t = start;
            let mut out = Vec::with_capacity(rest.len());
            for (i, (g, v)) in rest.into_iter().enumerate() {
                if i > 0 {
                    match t.checked_add_unsigned(g) {
                        Some(n) => t = n,
                        None => break,
                    }
                }
                out.push((t, v));
            }
            out
        })
}

/// A counter/gauge-like series: runs of one value kind, as real series have.
fn runs() -> impl Strategy<Value = Vec<(i64, f64)>> {
    (
        0i64..2_000_000_000_000,
        prop::collection::vec((value(), 1usize..60, 0i64..1000), 1..8),
    )
        .prop_map(|(start, segs)| {
            let mut out = Vec::new();
            let mut t = start;
            for (v, len, step) in segs {
                for j in 0..len {
                    out.push((t, v + (j as i64 * step) as f64));
                    t += 15_000 + (j as i64 % 3);
                }
            }
            out
        })
}

fn encode(model: &[(i64, f64)]) -> ChunkEncoder {
    let mut enc = ChunkEncoder::new();
    for &(t, v) in model {
        enc.append(t, v).unwrap();
    }
    enc
}

fn check(model: &[(i64, f64)]) {
    let enc = encode(model);
    assert_eq!(enc.num_samples(), model.len());
    assert_eq!(enc.min_time(), model.first().map(|s| s.0));
    assert_eq!(enc.max_time(), model.last().map(|s| s.0));
    let data = enc.bytes();
    assert_eq!(data.len(), enc.size_bytes());

    let mut out = vec![Sample::new(7, 7.0)];
    decode_all(&data, &mut out).unwrap();
    assert_eq!(out.len(), model.len() + 1, "decode_all appends");
    for (i, (s, &(t, v))) in out[1..].iter().zip(model).enumerate() {
        assert_eq!(
            (s.t, s.v.to_bits()),
            (t, v.to_bits()),
            "decode_all sample {i}"
        );
    }

    for mut it in [ChunkIter::new(&data).unwrap(), enc.iter()] {
        assert_eq!(it.num_samples(), model.len());
        for (i, &(t, v)) in model.iter().enumerate() {
            assert!(it.next(), "iterator ended early at {i}");
            assert_eq!(
                (it.at().t, it.at().v.to_bits()),
                (t, v.to_bits()),
                "iterator sample {i}"
            );
        }
        assert!(!it.next());
        assert!(!it.is_valid());
        assert!(it.err().is_none());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip_random(model in samples(300)) {
        check(&model);
    }

    #[test]
    fn round_trip_runs(model in runs()) {
        check(&model);
    }

    #[test]
    fn appending_keeps_every_prefix_readable(model in samples(60)) {
        let mut enc = ChunkEncoder::new();
        for (i, &(t, v)) in model.iter().enumerate() {
            enc.append(t, v).unwrap();
            let mut out = Vec::new();
            decode_all(&enc.bytes(), &mut out).unwrap();
            prop_assert_eq!(out.len(), i + 1);
            prop_assert_eq!(out[i].t, t);
            prop_assert_eq!(out[i].v.to_bits(), v.to_bits());
        }
    }

    /// Seeks (never backwards) and nexts in any order agree with the slice iterator.
    #[test]
    fn seek_matches_model(model in runs(), ops in prop::collection::vec((any::<bool>(), 0i64..3_000_000), 1..40)) {
        let data = encode(&model).bytes();
        let base = model.first().map_or(0, |s| s.0);
        let samples: Vec<Sample> = model.iter().map(|&(t, v)| Sample::new(t, v)).collect();
        let mut want = VecSampleIter::new(&samples);
        let mut got = ChunkIter::new(&data).unwrap();
        for (is_seek, off) in ops {
            let (a, b) = if is_seek {
                (want.seek(base + off), got.seek(base + off))
            } else {
                (want.next(), got.next())
            };
            prop_assert_eq!(a, b);
            prop_assert_eq!(want.is_valid(), got.is_valid());
            if a {
                prop_assert!(want.at().bit_eq(&got.at()));
            }
        }
    }

    #[test]
    fn out_of_order_is_rejected_and_harmless(model in samples(50), back in 0u64..100) {
        prop_assume!(!model.is_empty());
        let mut enc = encode(&model);
        let last = model.last().unwrap().0;
        let t = last.saturating_sub_unsigned(back);
        prop_assert!(enc.append(t, 1.0).is_err());
        let mut out = Vec::new();
        decode_all(&enc.bytes(), &mut out).unwrap();
        prop_assert_eq!(out.len(), model.len());
    }
}

#[test]
fn every_special_bit_pattern() {
    let specials = [
        0x7ff0_0000_0000_0002u64, // staleness marker
        0x7ff8_0000_0000_0000,    // quiet NaN
        0xfff8_0000_0000_0001,    // negative NaN with payload
        0x7ff0_0000_0000_0001,    // signalling NaN
        0x7ff0_0000_0000_0000,    // +Inf
        0xfff0_0000_0000_0000,    // -Inf
        0x8000_0000_0000_0000,    // -0.0
        0x0000_0000_0000_0001,    // smallest subnormal
        0x7fef_ffff_ffff_ffff,    // f64::MAX
    ];
    // Each special after decimal runs, alone, repeated, and interleaved.
    let mut model = Vec::new();
    let mut t = -1_000_000_000i64;
    for (i, &b) in specials.iter().enumerate() {
        for v in [
            1.5,
            f64::from_bits(b),
            f64::from_bits(b),
            2.25,
            f64::from_bits(b),
            i as f64,
        ] {
            model.push((t, v));
            t += 14_999 + i as i64;
        }
    }
    check(&model);
    for &b in &specials {
        check(&[(0, f64::from_bits(b))]);
        check(&[(i64::MIN, f64::from_bits(b)), (i64::MAX, f64::from_bits(b))]);
    }
}

#[test]
fn long_chunks_round_trip() {
    let model: Vec<(i64, f64)> = (0..5000i64)
        .map(|i| (i * 15_000 + i % 5, (i * i % 977) as f64 * 0.25))
        .collect();
    check(&model);
}
