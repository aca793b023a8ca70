//! Checkpoints: written atomically, replayed before the log's records after `upto`, replacing
//! the previous checkpoint; damage in a checkpoint is reported like damage in the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::fs;

use tidemark_tsdb::log::{Log, LogError, LogOptions, SyncPolicy};

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 512,
        sync: SyncPolicy::Never,
    }
}

fn records(log: &Log) -> Vec<(u64, Vec<u8>)> {
    log.replay().unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn checkpoint_then_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = Log::open(dir, opts()).unwrap();
    for i in 0..100u64 {
        log.append(format!("r{i}").as_bytes()).unwrap();
    }
    // Many checkpoint records: the checkpoint spans several segments.
    let ck: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("series-{i}").into_bytes())
        .collect();
    log.write_checkpoint(59, &mut ck.clone().into_iter())
        .unwrap();
    assert_eq!(log.checkpoint_upto(), Some(59));
    assert_eq!(log.first_index(), Some(60));
    assert!(matches!(log.read(59), Err(LogError::Purged { .. })));
    let ck_dir = dir.join(format!("checkpoint.{:020}", 59));
    assert!(fs::read_dir(&ck_dir).unwrap().count() > 1);

    let check = |log: &Log| {
        let mut replay = log.replay().unwrap();
        assert_eq!(replay.checkpoint_upto(), Some(59));
        let mut n = 0;
        while let Some(r) = replay.next_record() {
            let (idx, p) = r.unwrap();
            if n < 200 {
                assert_eq!((idx, p), (59, ck[n].as_slice()));
            } else {
                let i = 60 + (n - 200) as u64;
                assert_eq!((idx, p), (i, format!("r{i}").as_bytes()));
            }
            n += 1;
        }
        assert_eq!(n, 240);
    };
    check(&log);
    log.append(b"r100").unwrap();
    drop(log);
    let (log, report) = Log::open(dir, opts()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.checkpoint, Some(59));
    assert_eq!(records(&log).len(), 241);
}

#[test]
fn newer_checkpoint_replaces_older() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = Log::open(dir, opts()).unwrap();
    for i in 0..50u64 {
        log.append(&i.to_le_bytes()).unwrap();
    }
    log.write_checkpoint(10, &mut vec![b"one".to_vec()].into_iter())
        .unwrap();
    assert!(matches!(
        log.write_checkpoint(10, &mut std::iter::empty()),
        Err(LogError::StaleCheckpoint { .. })
    ));
    log.write_checkpoint(40, &mut vec![b"two".to_vec()].into_iter())
        .unwrap();
    assert!(!dir.join(format!("checkpoint.{:020}", 10)).exists());
    let got = records(&log);
    assert_eq!(got[0], (40, b"two".to_vec()));
    assert_eq!(got[1], (41, 41u64.to_le_bytes().to_vec()));
    assert_eq!(got.len(), 1 + 9);
    // An empty checkpoint beyond the end of the log.
    log.write_checkpoint(80, &mut std::iter::empty()).unwrap();
    assert_eq!(log.next_index(), 81);
    assert!(records(&log).is_empty());
    drop(log);
    let (mut log, _) = Log::open(dir, opts()).unwrap();
    assert_eq!(log.append(b"z").unwrap(), 81);
    assert_eq!(records(&log), vec![(81, b"z".to_vec())]);
}

#[test]
fn damaged_checkpoint_is_reported_and_its_prefix_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = Log::open(dir, opts()).unwrap();
    for i in 0..20u64 {
        log.append(&i.to_le_bytes()).unwrap();
    }
    let ck: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 30]).collect();
    log.write_checkpoint(9, &mut ck.clone().into_iter())
        .unwrap();
    drop(log);
    let seg = dir
        .join(format!("checkpoint.{:020}", 9))
        .join(format!("{:020}", 0));
    let mut b = fs::read(&seg).unwrap();
    // Record 4 of the checkpoint: header 32 + 4 * (9 + 30), inside its payload.
    let off = 32 + 4 * 39;
    b[off + 12] ^= 0x80;
    fs::write(&seg, &b).unwrap();
    let (log, report) = Log::open(dir, opts()).unwrap();
    let c = &report.corruptions[0];
    assert_eq!(
        (&c.segment, c.offset, c.first_lost_index),
        (&seg, off as u64, 4)
    );
    let got = records(&log);
    assert_eq!(got.len(), 4 + 10);
    assert_eq!(got[3], (9, ck[3].clone()));
    assert_eq!(got[4].0, 10);
}
