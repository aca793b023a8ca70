//! The CI stand-in for the `log_read` cargo-fuzz target (cargo-fuzz needs nightly): random and
//! mutated segment bytes through `inspect_segment` and through `Log::open` + replay. Neither may
//! panic, and open must replay exactly a prefix of what the decoder accepts. Also random bytes as
//! the metadata file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::fs;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_tsdb::log::{Log, LogError, LogOptions, SyncPolicy, inspect_segment};

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 1 << 20,
        sync: SyncPolicy::Never,
    }
}

/// The body of the fuzz target.
fn check_bytes(scratch: &Path, data: &[u8]) {
    let insp = inspect_segment(data);
    for (_, r) in &insp.records {
        assert!(r.end <= data.len());
    }
    assert!(insp.valid_len <= data.len());
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).unwrap();
    let first = insp.first_index.unwrap_or(0).min(i64::MAX as u64);
    fs::write(scratch.join(format!("{first:020}")), data).unwrap();
    let (log, report) = Log::open(scratch, opts()).unwrap();
    let got: Vec<(u64, Vec<u8>)> = log.replay().unwrap().map(|r| r.unwrap()).collect();
    assert!(got.len() <= insp.records.len(), "{report}");
    for ((idx, payload), (want_idx, range)) in got.iter().zip(&insp.records) {
        assert_eq!(idx, want_idx);
        assert_eq!(payload.as_slice(), &data[range.clone()]);
    }
    if insp.error.is_none() && insp.first_index.is_some() && !insp.checkpoint {
        assert_eq!(
            got.len(),
            insp.records.len(),
            "clean segment must replay fully"
        );
        assert!(report.is_clean(), "{report}");
    }
}

fn valid_segment(dir: &Path, rng: &mut StdRng) -> Vec<u8> {
    let (mut log, _) = Log::open(dir, opts()).unwrap();
    for _ in 0..rng.random_range(0..20) {
        let len = rng.random_range(0..50);
        let p: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        log.append(&p).unwrap();
    }
    drop(log);
    fs::read(dir.join(format!("{:020}", 0))).unwrap()
}

#[test]
fn random_and_mutated_segments_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    for round in 0..300 {
        let data: Vec<u8> = if round % 3 == 0 {
            let len = rng.random_range(0..200);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let src = tmp.path().join(format!("src{round}"));
            let mut seg = valid_segment(&src, &mut rng);
            fs::remove_dir_all(&src).unwrap();
            for _ in 0..rng.random_range(0..4) {
                if seg.is_empty() {
                    break;
                }
                let at = rng.random_range(0..seg.len());
                match rng.random_range(0..4) {
                    0 => seg[at] ^= 1 << rng.random_range(0..8),
                    1 => seg.truncate(at),
                    2 => seg[at] = rng.random(),
                    _ => seg.insert(at, rng.random()),
                }
            }
            seg
        };
        check_bytes(&scratch, &data);
    }
}

#[test]
fn random_meta_files_are_errors_not_panics() {
    let mut rng = StdRng::seed_from_u64(7);
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(tmp.path(), opts()).unwrap();
    log.save_meta(b"good").unwrap();
    let good = fs::read(tmp.path().join("meta")).unwrap();
    for _ in 0..200 {
        let mut data = if rng.random_bool(0.5) {
            good.clone()
        } else {
            (0..rng.random_range(0..40)).map(|_| rng.random()).collect()
        };
        if !data.is_empty() {
            let at = rng.random_range(0..data.len());
            data[at] ^= 1 << rng.random_range(0..8);
        }
        fs::write(tmp.path().join("meta"), &data).unwrap();
        match log.load_meta() {
            Ok(Some(m)) => assert_eq!(data, good, "accepted damaged meta {m:?}"),
            Ok(None) => panic!("meta exists"),
            Err(LogError::Corruption { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
}
