//! Random and mutated bytes fed to the chunk decoder: it must return a typed error or samples,
//! never panic, loop forever or allocate without bound. (The same entry point is the cargo-fuzz
//! target `chunk_decode` in crates/tsdb/fuzz.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_storage::SampleIter;
use tidemark_tsdb::chunk::{ChunkEncoder, ChunkError, ChunkIter, ENCODING_XOR, decode_all};

/// Decodes `data` both ways; they must agree.
fn decode_both(data: &[u8]) -> Result<usize, ChunkError> {
    let mut out = Vec::new();
    let bulk = decode_all(data, &mut out);
    // Allocation is bounded by the input: at most 8 samples per byte plus one.
    assert!(
        out.capacity() <= (data.len() * 8 + 1).max(16),
        "capacity {} for {} bytes",
        out.capacity(),
        data.len()
    );
    match ChunkIter::new(data) {
        Err(e) => {
            assert!(
                bulk.is_err(),
                "iterator rejected the header but decode_all did not"
            );
            Err(e)
        }
        Ok(mut it) => {
            let mut n = 0;
            while it.next() {
                if bulk.is_ok() {
                    assert!(
                        it.at().bit_eq(&out[n]),
                        "iterator and decode_all disagree at {n}"
                    );
                }
                n += 1;
                assert!(n <= it.num_samples());
            }
            match (&bulk, it.error()) {
                (Ok(()), None) => assert_eq!(n, out.len()),
                (Err(_), Some(_)) => {}
                (b, i) => panic!("decode_all {b:?} but iterator error {i:?}"),
            }
            bulk.map(|()| out.len())
        }
    }
}

fn valid_chunks(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    for kind in 0..6 {
        let mut enc = ChunkEncoder::new();
        let mut t = rng.random_range(-1_000_000_000_000i64..2_000_000_000_000);
        let mut v = 100.0f64;
        for i in 0..rng.random_range(1..300) {
            t += match i % 17 {
                0 => rng.random_range(1..10_000_000),
                _ => 15_000 + rng.random_range(-3..4),
            };
            v = match kind {
                0 => v + f64::from(rng.random_range(0..1000u32)),
                1 => f64::from_bits(rng.random()),
                2 => f64::from(rng.random_range(0..100u32)) / 100.0,
                3 => [0.0, f64::NAN, f64::from_bits(0x7ff0_0000_0000_0002), 1.0][i % 4],
                4 => v,
                _ => rng.random_range(-1e9..1e9),
            };
            enc.append(t, v).unwrap();
        }
        chunks.push(enc.bytes());
    }
    chunks
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x71de);
    for _ in 0..20_000 {
        let len = rng.random_range(0..200);
        let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.7) && !data.is_empty() {
            data[0] = ENCODING_XOR; // get past the encoding byte most of the time
        }
        let _ = decode_both(&data);
    }
}

#[test]
fn mutated_chunks_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    let chunks = valid_chunks(&mut rng);
    for c in &chunks {
        assert!(decode_both(c).is_ok());
    }
    let mut errors = 0;
    for round in 0..20_000 {
        let mut data = chunks[round % chunks.len()].clone();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..data.len());
                    data[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => data.truncate(rng.random_range(0..data.len())),
            2 => {
                let i = rng.random_range(0..data.len());
                data[i] = rng.random();
            }
            _ => {
                let i = rng.random_range(0..data.len());
                let extra: Vec<u8> = (0..rng.random_range(1..20)).map(|_| rng.random()).collect();
                data.splice(i..i, extra);
            }
        }
        if decode_both(&data).is_err() {
            errors += 1;
        }
    }
    assert!(
        errors > 1000,
        "mutations should mostly be detected as errors, got {errors}"
    );
}

#[test]
fn header_errors_name_what_was_expected() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "expected at least 2 header bytes, found 0"),
        (vec![9, 1], "expected 1, found 9"),
        (vec![ENCODING_XOR, 0xff], "sample count"),
        (
            vec![ENCODING_XOR, 0xff, 0xff, 0xff, 0x7f],
            "at most 1048576",
        ),
        (
            vec![ENCODING_XOR, 5, 200, 1],
            "timestamp stream length within the chunk",
        ),
        (vec![ENCODING_XOR, 100, 1, 0, 0], "claims 100 samples"),
    ];
    for (data, want) in cases {
        let err = decode_all(&data, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(want), "{data:?}: {err}");
    }
    // A valid chunk cut short names the stream and the bits.
    let mut enc = ChunkEncoder::new();
    for i in 0..50 {
        enc.append(i * 1000, i as f64 * 1.5).unwrap();
    }
    let mut data = enc.bytes();
    data.truncate(data.len() - 3);
    let err = decode_all(&data, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            ChunkError::Truncated {
                stream: "value",
                ..
            }
        ),
        "{err}"
    );
}
