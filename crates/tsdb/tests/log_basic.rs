//! Log basics: append, read, reopen, replay, segment rolling, metadata, torn tails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::fs;
use std::path::{Path, PathBuf};

use tidemark_tsdb::log::{Log, LogError, LogOptions, SyncPolicy};

fn opts(segment_size: u64) -> LogOptions {
    LogOptions {
        segment_size,
        sync: SyncPolicy::Never,
    }
}

fn payload(i: u64) -> Vec<u8> {
    // Varying sizes, including empty records.
    let len = (i * 7 % 50) as usize;
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
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

fn all_records(log: &Log) -> Vec<(u64, Vec<u8>)> {
    log.replay().unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn append_read_reopen_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (mut log, report) = Log::open(&dir, LogOptions::default()).unwrap();
    assert!(report.is_clean());
    assert_eq!(log.first_index(), None);
    assert_eq!(log.last_index(), None);
    assert_eq!(log.append(b"a").unwrap(), 0);
    assert_eq!(log.append_batch(&[b"b", b"", b"ccc"]).unwrap(), 1..=3);
    assert_eq!(log.read(0).unwrap(), b"a");
    assert_eq!(log.read(2).unwrap(), b"");
    assert_eq!(log.read(3).unwrap(), b"ccc");
    assert!(matches!(log.read(4), Err(LogError::OutOfRange { .. })));
    assert_eq!((log.first_index(), log.last_index()), (Some(0), Some(3)));
    drop(log);

    let (log, report) = Log::open(&dir, LogOptions::default()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.last_index, Some(3));
    let recs = all_records(&log);
    assert_eq!(
        recs,
        vec![
            (0, b"a".to_vec()),
            (1, b"b".to_vec()),
            (2, vec![]),
            (3, b"ccc".to_vec())
        ]
    );
    let from2: Vec<_> = log.reader_from(2).unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(from2, vec![2, 3]);
    assert_eq!(log.reader_from(4).unwrap().count(), 0);
}

#[test]
fn segments_roll_and_random_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = Log::open(dir, opts(1024)).unwrap();
    for i in 0..500u64 {
        if i % 10 == 0 {
            let batch: Vec<Vec<u8>> = (i..i + 10).map(payload).collect();
            let refs: Vec<&[u8]> = batch.iter().map(|v| v.as_slice()).collect();
            assert_eq!(log.append_batch(&refs).unwrap(), i..=i + 9);
        }
    }
    let segs = segment_files(dir);
    assert!(
        segs.len() > 10,
        "expected many segments, got {}",
        segs.len()
    );
    for s in &segs {
        // A batch may overshoot only when it alone is larger than a segment.
        assert!(fs::metadata(s).unwrap().len() <= 1024 + 600);
    }
    for i in (0..500).rev() {
        assert_eq!(log.read(i).unwrap(), payload(i), "record {i}");
    }
    drop(log);
    let (log, report) = Log::open(dir, opts(1024)).unwrap();
    assert!(report.is_clean(), "{report}");
    let recs = all_records(&log);
    assert_eq!(recs.len(), 500);
    for (i, (idx, p)) in recs.iter().enumerate() {
        assert_eq!(*idx, i as u64);
        assert_eq!(*p, payload(i as u64));
    }
    let tail: Vec<u64> = log
        .reader_from(123)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(tail, (123..500).collect::<Vec<_>>());
    assert_eq!(log.read_range(10, 20).unwrap().len(), 10);
}

#[test]
fn big_record_gets_its_own_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts(256)).unwrap();
    log.append(b"small").unwrap();
    let big = vec![7u8; 10_000];
    assert_eq!(log.append(&big).unwrap(), 1);
    log.append(b"after").unwrap();
    assert_eq!(log.read(1).unwrap(), big);
    assert_eq!(segment_files(tmp.path()).len(), 3);
}

#[test]
fn meta_round_trip_and_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(tmp.path(), LogOptions::default()).unwrap();
    assert_eq!(log.load_meta().unwrap(), None);
    log.save_meta(b"vote=3").unwrap();
    log.save_meta(b"vote=4,committed=10").unwrap();
    assert_eq!(log.load_meta().unwrap().unwrap(), b"vote=4,committed=10");
    drop(log);
    let (log, _) = Log::open(tmp.path(), LogOptions::default()).unwrap();
    assert_eq!(log.load_meta().unwrap().unwrap(), b"vote=4,committed=10");
    let meta = tmp.path().join("meta");
    let mut b = fs::read(&meta).unwrap();
    let n = b.len();
    b[n - 1] ^= 0x40;
    fs::write(&meta, &b).unwrap();
    match log.load_meta() {
        Err(LogError::Corruption { segment, .. }) => assert_eq!(segment, meta),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn second_open_is_refused_while_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let (_log, _) = Log::open(tmp.path(), LogOptions::default()).unwrap();
    assert!(matches!(
        Log::open(tmp.path(), LogOptions::default()),
        Err(LogError::Locked { .. })
    ));
}

/// Cutting the file at every byte offset inside the last record (and inside the previous
/// record's end) yields a clean log of the earlier records and a torn-tail report.
#[test]
fn torn_tail_at_every_offset_of_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (mut log, _) = Log::open(&src, opts(1 << 20)).unwrap();
    for i in 0..20 {
        log.append(&payload(i + 3)).unwrap();
    }
    let last = payload(99);
    assert!(last.len() > 10);
    log.append(&last).unwrap();
    drop(log);
    let seg = segment_files(&src).pop().unwrap();
    let full = fs::read(&seg).unwrap();
    let last_start = full.len() - (9 + last.len());
    for cut in last_start..full.len() {
        let dir = tmp.path().join(format!("cut{cut}"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(seg.file_name().unwrap()), &full[..cut]).unwrap();
        let (mut log, report) = Log::open(&dir, opts(1 << 20)).unwrap();
        if cut == last_start {
            assert!(report.is_clean(), "cut {cut}: {report}");
        } else {
            let torn = report
                .torn_tail
                .as_ref()
                .unwrap_or_else(|| panic!("cut {cut}: {report}"));
            assert_eq!(torn.offset, last_start as u64, "cut {cut}");
            assert_eq!(torn.bytes, (cut - last_start) as u64);
            assert!(report.corruptions.is_empty(), "cut {cut}: {report}");
        }
        assert_eq!(log.last_index(), Some(19));
        let recs = all_records(&log);
        assert_eq!(recs.len(), 20);
        for (i, (idx, p)) in recs.iter().enumerate() {
            assert_eq!((*idx, p.clone()), (i as u64, payload(i as u64 + 3)));
        }
        // The log continues at the right index and survives another reopen.
        assert_eq!(log.append(b"again").unwrap(), 20);
        drop(log);
        let (log, report) = Log::open(&dir, opts(1 << 20)).unwrap();
        assert!(report.is_clean(), "cut {cut} second open: {report}");
        assert_eq!(log.read(20).unwrap(), b"again");
        drop(log);
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A bad CRC on the very last record, or zeros written after the last record (a file extended
/// but never filled), is a torn tail too.
#[test]
fn torn_tail_bad_crc_and_zero_fill() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts(1 << 20)).unwrap();
    log.append_batch(&[b"one", b"two", b"three"]).unwrap();
    drop(log);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let good = fs::read(&seg).unwrap();

    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 2] ^= 0x01;
    fs::write(&seg, &bad).unwrap();
    let (log, report) = Log::open(tmp.path(), opts(1 << 20)).unwrap();
    let torn = report.torn_tail.clone().unwrap();
    assert_eq!(torn.bytes, 9 + 5);
    assert!(torn.reason.contains("crc32"), "{}", torn.reason);
    assert_eq!(log.last_index(), Some(1));
    drop(log);

    let mut zeros = good[..good.len() - 14].to_vec();
    zeros.extend_from_slice(&[0u8; 4096]);
    fs::write(&seg, &zeros).unwrap();
    let (log, report) = Log::open(tmp.path(), opts(1 << 20)).unwrap();
    assert_eq!(report.torn_tail.unwrap().bytes, 4096);
    assert!(report.corruptions.is_empty());
    assert_eq!(log.last_index(), Some(1));
}

/// A last segment whose header was only partly written (crash while rolling) is removed.
#[test]
fn torn_segment_header_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts(64)).unwrap();
    for i in 0..6 {
        log.append(&[i; 40]).unwrap();
    }
    drop(log);
    let segs = segment_files(tmp.path());
    let last = segs.last().unwrap();
    let bytes = fs::read(last).unwrap();
    fs::write(last, &bytes[..17]).unwrap();
    let (mut log, report) = Log::open(tmp.path(), opts(64)).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.bytes), (0, 17));
    assert_eq!(log.last_index(), Some(4));
    assert_eq!(log.append(b"x").unwrap(), 5);
    assert_eq!(log.read(5).unwrap(), b"x");
}

#[test]
fn sync_policies_work() {
    for sync in [
        SyncPolicy::Always,
        SyncPolicy::Never,
        SyncPolicy::Interval(std::time::Duration::from_millis(1)),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(
            tmp.path(),
            LogOptions {
                segment_size: 1 << 20,
                sync,
            },
        )
        .unwrap();
        for i in 0..50u64 {
            log.append(&i.to_le_bytes()).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let (log, report) = Log::open(tmp.path(), LogOptions::default()).unwrap();
        assert!(report.is_clean());
        assert_eq!(log.last_index(), Some(49));
    }
}

#[test]
fn empty_batch_and_thread_safety() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Log>();
    send_sync::<tidemark_tsdb::log::LogReader>();
    send_sync::<tidemark_tsdb::log::Replay>();
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogOptions::default()).unwrap();
    let r = log.append_batch(&[]).unwrap();
    assert!(r.is_empty());
    assert_eq!(log.next_index(), 0);
    assert_eq!(log.append(b"x").unwrap(), 0);
    assert!(log.append_batch(&[]).unwrap().is_empty());
    assert!(matches!(
        log.append(&vec![0u8; (1 << 30) + 1]),
        Err(LogError::RecordTooLarge { .. })
    ));
}

/// A reader keeps working on its snapshot while the log is purged under it.
#[test]
fn reader_survives_purge() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts(128)).unwrap();
    for i in 0..100u64 {
        log.append(&payload(i)).unwrap();
    }
    let reader = log.reader_from(0).unwrap();
    log.purge_upto(90).unwrap();
    let got: Vec<u64> = reader.map(|r| r.unwrap().0).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert!(matches!(log.reader_from(0), Err(LogError::Purged { .. })));
}

/// Group commit: appends under a mutex, fsync outside it through a `LogSyncer`.
#[test]
fn syncer_group_commit() {
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(tmp.path(), opts(4096)).unwrap();
    let syncer = log.syncer();
    assert_eq!(syncer.durable_next(), 0);
    let log = Arc::new(Mutex::new(log));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = Arc::clone(&log);
            let syncer = syncer.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let p = (t * 1000 + i).to_le_bytes();
                    let last = *log.lock().unwrap().append_batch(&[&p, &p]).unwrap().end();
                    syncer.sync_upto(last).unwrap();
                    assert!(syncer.durable_next() > last);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut log = Arc::into_inner(log).unwrap().into_inner().unwrap();
    assert_eq!(log.next_index(), 400);
    assert_eq!(syncer.durable_next(), 400);
    // At most one fsync per sync_upto call, plus those of segment rolls.
    assert!(syncer.fsync_count() <= 200 + 20, "{}", syncer.fsync_count());
    // Nothing left to sync: no fsync happens.
    let n = syncer.fsync_count();
    log.sync().unwrap();
    syncer.sync_upto(399).unwrap();
    assert_eq!(syncer.fsync_count(), n);
    // Truncation lowers the durable point; new appends are not durable until synced.
    log.truncate_after(99).unwrap();
    assert_eq!(syncer.durable_next(), 100);
    log.append(b"x").unwrap();
    assert_eq!(syncer.durable_next(), 100);
    syncer.sync_upto(100).unwrap();
    assert_eq!(syncer.durable_next(), 101);
}

/// Lazy durability (background appenders: scrapes, rules): `sync_if_older` fsyncs only when the
/// last fsync is old enough, and then covers everything written so far.
#[test]
fn syncer_sync_if_older_is_lazy() {
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts(1 << 20)).unwrap();
    let syncer = log.syncer();
    let last = *log.append_batch(&[b"a", b"b"]).unwrap().end();
    syncer.sync_upto(last).unwrap();
    let n = syncer.fsync_count();
    // Within the interval: written, not synced, no fsync.
    for _ in 0..10 {
        log.append(b"c").unwrap();
        syncer.sync_if_older(Duration::from_secs(3600)).unwrap();
    }
    assert_eq!(syncer.fsync_count(), n);
    assert_eq!(syncer.durable_next(), last + 1);
    // Past the interval: one fsync makes every record durable.
    syncer.sync_if_older(Duration::ZERO).unwrap();
    assert_eq!(syncer.fsync_count(), n + 1);
    assert_eq!(syncer.durable_next(), log.next_index());
    // Nothing unsynced: no fsync even past the interval.
    syncer.sync_if_older(Duration::ZERO).unwrap();
    assert_eq!(syncer.fsync_count(), n + 1);
}
