//! Corruption in the middle of the log: reported with segment and byte offset, everything before
//! it stays readable, everything after it is moved aside, and the log keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::fs;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_tsdb::log::{Log, LogError, LogOptions, SyncPolicy, inspect_segment};

fn opts(segment_size: u64) -> LogOptions {
    LogOptions {
        segment_size,
        sync: SyncPolicy::Never,
    }
}

fn payload(i: u64) -> Vec<u8> {
    let len = 20 + (i * 13 % 40) as usize;
    (0..len).map(|k| (i as u8) ^ (k as u8)).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    v.sort();
    v
}

/// Writes `n` records into `dir` with small segments; returns the segment files.
fn build(dir: &Path, n: u64, segment_size: u64) -> Vec<PathBuf> {
    let (mut log, _) = Log::open(dir, opts(segment_size)).unwrap();
    for i in 0..n {
        log.append(&payload(i)).unwrap();
    }
    drop(log);
    segment_files(dir)
}

fn check_prefix(log: &Log, n: u64) {
    let recs: Vec<(u64, Vec<u8>)> = log.replay().unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(
        recs.len() as u64,
        n,
        "expected exactly the {n} records before the damage"
    );
    for (i, (idx, p)) in recs.iter().enumerate() {
        assert_eq!(*idx, i as u64);
        assert_eq!(*p, payload(i as u64));
    }
}

/// Flips one bit in the payload of a record in the middle of a middle segment.
#[test]
fn bit_flip_in_middle_segment_is_reported_with_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = build(dir, 200, 1024);
    assert!(segs.len() >= 5);
    let victim = &segs[2];
    let bytes = fs::read(victim).unwrap();
    let insp = inspect_segment(&bytes);
    let (idx, range) = insp.records[3].clone();
    let record_offset = range.start as u64 - 9;
    let mut damaged = bytes.clone();
    damaged[range.start + 5] ^= 0x10;
    fs::write(victim, &damaged).unwrap();

    let (mut log, report) = Log::open(dir, opts(1024)).unwrap();
    assert!(report.torn_tail.is_none(), "{report}");
    assert_eq!(report.corruptions.len(), 1, "{report}");
    let c = &report.corruptions[0];
    assert_eq!(&c.segment, victim);
    assert_eq!(c.offset, record_offset);
    assert_eq!(c.first_lost_index, idx);
    assert!(c.reason.contains("crc32"), "{}", c.reason);
    // The damaged tail and the 2+ later segments were moved aside, not deleted.
    assert!(c.moved_to.len() >= 3, "{:?}", c.moved_to);
    for p in &c.moved_to {
        assert!(
            p.exists() && p.starts_with(dir.join("corrupted")),
            "{}",
            p.display()
        );
    }
    let text = report.to_string();
    assert!(
        text.contains("CORRUPTION") && text.contains(&record_offset.to_string()),
        "{text}"
    );
    check_prefix(&log, idx);
    assert!(matches!(log.read(idx), Err(LogError::OutOfRange { .. })));
    // The log continues after the damage.
    assert_eq!(log.append(b"next").unwrap(), idx);
    drop(log);
    let (log, report) = Log::open(dir, opts(1024)).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(log.read(idx).unwrap(), b"next");
}

/// A flip in a length field (the record then seems to run past the end) followed by valid
/// records is corruption, not a torn tail.
#[test]
fn length_flip_in_last_segment_is_corruption_not_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = build(dir, 30, 1 << 20);
    assert_eq!(segs.len(), 1);
    let bytes = fs::read(&segs[0]).unwrap();
    let insp = inspect_segment(&bytes);
    let (idx, range) = insp.records[10].clone();
    let mut damaged = bytes.clone();
    damaged[range.start - 9 + 2] ^= 0x04; // length += 256 Ki
    fs::write(&segs[0], &damaged).unwrap();
    let (log, report) = Log::open(dir, opts(1 << 20)).unwrap();
    assert!(report.torn_tail.is_none(), "{report}");
    assert_eq!(report.corruptions[0].offset, range.start as u64 - 9);
    assert_eq!(report.corruptions[0].first_lost_index, idx);
    check_prefix(&log, idx);
}

/// A damaged header of a middle segment: that segment and all later ones are moved aside.
#[test]
fn bad_segment_header_in_the_middle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = build(dir, 100, 512);
    let victim = &segs[3];
    let mut bytes = fs::read(victim).unwrap();
    bytes[2] ^= 0xff;
    fs::write(victim, &bytes).unwrap();
    let first_of_victim = inspect_segment(&fs::read(&segs[2]).unwrap())
        .records
        .last()
        .unwrap()
        .0
        + 1;
    let (log, report) = Log::open(dir, opts(512)).unwrap();
    let c = &report.corruptions[0];
    assert_eq!((&c.segment, c.offset), (victim, 0));
    assert!(c.reason.contains("magic"), "{}", c.reason);
    assert_eq!(c.first_lost_index, first_of_victim);
    assert!(!victim.exists());
    check_prefix(&log, first_of_victim);
}

/// A missing middle segment (gap in the indexes) is detected and named.
#[test]
fn missing_segment_is_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = build(dir, 100, 512);
    fs::remove_file(&segs[2]).unwrap();
    let first_missing = inspect_segment(&fs::read(&segs[1]).unwrap())
        .records
        .last()
        .unwrap()
        .0
        + 1;
    let (log, report) = Log::open(dir, opts(512)).unwrap();
    let c = &report.corruptions[0];
    assert_eq!(&c.segment, &segs[3]);
    assert!(c.reason.contains("expected"), "{}", c.reason);
    check_prefix(&log, first_missing);
}

/// Random single-byte damage anywhere in any segment: open always succeeds, the surviving
/// records are exactly a prefix of what was written, and the damage is reported whenever
/// records were lost.
#[test]
fn random_damage_always_opens_with_a_prefix() {
    let mut rng = StdRng::seed_from_u64(0x1006_c0de);
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let segs = build(&pristine, 120, 700);
    let images: Vec<Vec<u8>> = segs.iter().map(|p| fs::read(p).unwrap()).collect();
    for round in 0..150 {
        let dir = tmp.path().join(format!("r{round}"));
        fs::create_dir(&dir).unwrap();
        for (p, img) in segs.iter().zip(&images) {
            fs::write(dir.join(p.file_name().unwrap()), img).unwrap();
        }
        let s = rng.random_range(0..segs.len());
        let target = dir.join(segs[s].file_name().unwrap());
        let mut img = images[s].clone();
        match rng.random_range(0..3) {
            0 => {
                let at = rng.random_range(0..img.len());
                img[at] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let at = rng.random_range(0..img.len());
                img.truncate(at);
            }
            _ => {
                let at = rng.random_range(0..img.len());
                let n = rng.random_range(1..40).min(img.len() - at);
                for b in &mut img[at..at + n] {
                    *b = rng.random();
                }
            }
        }
        fs::write(&target, &img).unwrap();
        let (log, report) = Log::open(&dir, opts(700)).unwrap();
        let recs: Vec<(u64, Vec<u8>)> = log.replay().unwrap().map(|r| r.unwrap()).collect();
        for (i, (idx, p)) in recs.iter().enumerate() {
            assert_eq!((*idx, p), (i as u64, &payload(i as u64)), "round {round}");
        }
        if recs.len() < 120 {
            assert!(!report.is_clean(), "round {round}: lost records silently");
        }
        // A second open finds nothing more to repair.
        drop(log);
        let (_, again) = Log::open(&dir, opts(700)).unwrap();
        assert!(again.is_clean(), "round {round}: {again}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A missing first segment (records the log should start with are gone): reported, the rest
/// is kept and readable.
#[test]
fn missing_first_segment_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = build(dir, 100, 512);
    let next_first = inspect_segment(&fs::read(&segs[1]).unwrap())
        .first_index
        .unwrap();
    fs::remove_file(&segs[0]).unwrap();
    let (log, report) = Log::open(dir, opts(512)).unwrap();
    let c = &report.corruptions[0];
    assert_eq!((&c.segment, c.first_lost_index), (&segs[1], 0));
    assert!(c.reason.contains("missing"), "{}", c.reason);
    assert_eq!(log.first_index(), Some(next_first));
    assert_eq!(log.read(99).unwrap(), payload(99));
}
