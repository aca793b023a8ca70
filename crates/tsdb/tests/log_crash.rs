//! Crash safety of truncate, purge and checkpoint: a failure point stops the operation at a
//! step (the files stay exactly as a process crash there would leave them), then the log is
//! reopened and must be in a valid state: the old one, the new one, or (truncation) a prefix
//! in between. Also: leftovers a crash leaves in the directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::fs;
use std::path::Path;

use tidemark_tsdb::log::{Log, LogError, LogOptions, SyncPolicy, failpoint};

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 400,
        sync: SyncPolicy::Always,
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 17) as usize)).into_bytes()
}

fn build(dir: &Path, n: u64) -> Log {
    let (mut log, _) = Log::open(dir, opts()).unwrap();
    for i in 0..n {
        log.append(&payload(i)).unwrap();
    }
    log
}

fn reopen(dir: &Path) -> Log {
    let (log, report) = Log::open(dir, opts()).unwrap();
    assert!(report.is_clean(), "{report}");
    log
}

fn records(log: &Log) -> Vec<(u64, Vec<u8>)> {
    log.replay().unwrap().map(|r| r.unwrap()).collect()
}

fn assert_is_prefix(log: &Log, min_len: u64, max_len: u64) {
    let recs = records(log);
    assert!(
        (min_len..=max_len).contains(&(recs.len() as u64)),
        "{} records, expected {min_len}..={max_len}",
        recs.len()
    );
    for (i, (idx, p)) in recs.iter().enumerate() {
        assert_eq!((*idx, p), (i as u64, &payload(i as u64)));
    }
}

#[test]
fn crash_during_truncate_leaves_a_prefix() {
    for point in ["truncate.after_unlink", "truncate.before_cut"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = build(tmp.path(), 200);
        failpoint::arm(Some(point));
        let err = log.truncate_after(30).unwrap_err();
        assert!(matches!(err, LogError::InjectedFailure(p) if p == point));
        drop(log);
        let mut log = reopen(tmp.path());
        // Records 0..=30 are never lost; later ones may or may not be there yet.
        assert_is_prefix(&log, 31, 200);
        // Finishing the truncation (Raft redoes it) gives the requested state.
        log.truncate_after(30).unwrap();
        assert_eq!(log.last_index(), Some(30));
        assert_eq!(log.append(b"new").unwrap(), 31);
        drop(log);
        let log = reopen(tmp.path());
        assert_eq!(log.read(31).unwrap(), b"new");
        assert_eq!(log.read(30).unwrap(), payload(30));
    }
}

#[test]
fn crash_during_purge_is_completed_on_open() {
    for point in ["purge.after_marker", "purge.after_unlink"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = build(tmp.path(), 200);
        let segments_before = fs::read_dir(tmp.path()).unwrap().count();
        failpoint::arm(Some(point));
        assert!(matches!(
            log.purge_upto(120),
            Err(LogError::InjectedFailure(_))
        ));
        drop(log);
        let (log, report) = Log::open(tmp.path(), opts()).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(log.first_index(), Some(121));
        assert_eq!(log.last_index(), Some(199));
        assert!(matches!(log.read(120), Err(LogError::Purged { .. })));
        assert!(matches!(log.read(3), Err(LogError::Purged { .. })));
        for i in 121..200 {
            assert_eq!(log.read(i).unwrap(), payload(i));
        }
        let recs = records(&log);
        assert_eq!(recs.first().map(|r| r.0), Some(121));
        assert_eq!(recs.len(), 79);
        assert!(fs::read_dir(tmp.path()).unwrap().count() < segments_before);
    }
}

#[test]
fn crash_during_purge_beyond_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = build(tmp.path(), 50);
    failpoint::arm(Some("purge.after_marker"));
    assert!(log.purge_upto(500).is_err());
    drop(log);
    let mut log = reopen(tmp.path());
    assert_eq!((log.first_index(), log.next_index()), (None, 501));
    assert_eq!(log.append(b"after snapshot").unwrap(), 501);
}

#[test]
fn crash_before_checkpoint_rename_keeps_the_old_state() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = build(tmp.path(), 100);
    failpoint::arm(Some("checkpoint.before_rename"));
    let mut recs = vec![b"ck".to_vec()].into_iter();
    assert!(log.write_checkpoint(60, &mut recs).is_err());
    drop(log);
    let (log, report) = Log::open(tmp.path(), opts()).unwrap();
    assert!(report.is_clean());
    assert!(
        report
            .cleaned
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".tmp")),
        "{:?}",
        report.cleaned
    );
    assert_eq!(log.checkpoint_upto(), None);
    assert_is_prefix(&log, 100, 100);
}

#[test]
fn crash_after_checkpoint_rename_completes_the_purge() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = build(tmp.path(), 100);
    log.write_checkpoint(20, &mut vec![b"old".to_vec()].into_iter())
        .unwrap();
    failpoint::arm(Some("checkpoint.after_rename"));
    let mut recs = vec![b"a".to_vec(), b"b".to_vec()].into_iter();
    assert!(log.write_checkpoint(60, &mut recs).is_err());
    drop(log);
    let (log, report) = Log::open(tmp.path(), opts()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.checkpoint, Some(60));
    // The superseded checkpoint was removed.
    assert!(!tmp.path().join(format!("checkpoint.{:020}", 20)).exists());
    assert_eq!(log.first_index(), Some(61));
    let got = records(&log);
    assert_eq!(got[0], (60, b"a".to_vec()));
    assert_eq!(got[1], (60, b"b".to_vec()));
    assert_eq!(got[2], (61, payload(61)));
    assert_eq!(got.len(), 2 + 39);
}

/// Leftovers a crash can leave: half-written temp files of the atomic small files, a
/// half-written checkpoint directory. None of them is mistaken for data.
#[test]
fn crash_leftovers_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = build(dir, 10);
    log.save_meta(b"vote 1").unwrap();
    drop(log);
    fs::write(dir.join("meta.tmp"), b"TIDEMETA\x05\x00\x00\x00garbage").unwrap();
    fs::write(dir.join("purged.tmp"), b"half").unwrap();
    let ck = dir.join(format!("checkpoint.{:020}.tmp", 5));
    fs::create_dir(&ck).unwrap();
    fs::write(ck.join(format!("{:020}", 0)), b"TIDEMLOG partial").unwrap();
    let (log, report) = Log::open(dir, opts()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.cleaned.len(), 3, "{:?}", report.cleaned);
    assert_eq!(log.load_meta().unwrap().unwrap(), b"vote 1");
    assert_eq!(log.checkpoint_upto(), None);
    assert_eq!(log.purged_upto(), None);
    assert_is_prefix(&log, 10, 10);
}

/// The state a crash between "rename checkpoint" and "remove the old checkpoint" leaves (two
/// complete checkpoint directories): the newest wins, the older is removed.
#[test]
fn two_checkpoints_newest_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = build(dir, 30);
    log.write_checkpoint(10, &mut vec![b"c10".to_vec()].into_iter())
        .unwrap();
    drop(log);
    let c10 = dir.join(format!("checkpoint.{:020}", 10));
    let c5 = dir.join(format!("checkpoint.{:020}", 5));
    fs::create_dir(&c5).unwrap();
    for e in fs::read_dir(&c10).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), c5.join(e.file_name())).unwrap();
    }
    let (log, report) = Log::open(dir, opts()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(log.checkpoint_upto(), Some(10));
    assert!(!c5.exists());
    let got = records(&log);
    assert_eq!(got[0], (10, b"c10".to_vec()));
    assert_eq!(got[1].0, 11);
}

mod injected {
    //! Random operation sequences where truncate/purge/checkpoint are interrupted at a random
    //! failure point, compared with a reference log that runs the same operations uninterrupted.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct State {
        first: Option<u64>,
        next: u64,
        purged: Option<u64>,
        checkpoint: Option<u64>,
        records: Vec<(u64, Vec<u8>)>,
    }

    fn state(log: &Log) -> State {
        State {
            first: log.first_index(),
            next: log.next_index(),
            purged: log.purged_upto(),
            checkpoint: log.checkpoint_upto(),
            records: records(log),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Truncate(u64, bool),
        Purge(u64, bool),
        Checkpoint(u64, bool, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..30).prop_map(Op::Append),
            2 => (0u64..40, any::<bool>()).prop_map(|(b, f)| Op::Truncate(b, f)),
            2 => (0u64..40, any::<bool>()).prop_map(|(b, f)| Op::Purge(b, f)),
            1 => (0u64..40, any::<bool>(), any::<bool>()).prop_map(|(b, f, g)| Op::Checkpoint(b, f, g)),
        ]
    }

    fn small() -> LogOptions {
        LogOptions {
            segment_size: 500,
            sync: SyncPolicy::Never,
        }
    }

    /// An operation with absolute indexes, resolved against the reference log.
    #[derive(Debug, Clone)]
    enum Abs {
        Append(u64, u8),
        TruncateFrom(u64),
        Purge(u64),
        Checkpoint(u64, Vec<u8>),
        Nothing,
    }

    fn resolve(log: &Log, op: &Op, ckpt_seq: &mut u64) -> Abs {
        let base = log.first_index().unwrap_or(log.next_index());
        match *op {
            Op::Append(n) => Abs::Append(log.next_index(), n),
            Op::Truncate(back, _) => {
                let cut = log.next_index().saturating_sub(back);
                if log.purged_upto().is_some_and(|p| cut <= p) {
                    Abs::Nothing
                } else {
                    Abs::TruncateFrom(cut)
                }
            }
            Op::Purge(fwd, _) => Abs::Purge(base + fwd),
            Op::Checkpoint(fwd, _, _) => {
                let upto = base + fwd;
                if log.checkpoint_upto().is_some_and(|c| c >= upto) {
                    Abs::Nothing
                } else {
                    *ckpt_seq += 1;
                    Abs::Checkpoint(upto, format!("ck{ckpt_seq}").into_bytes())
                }
            }
        }
    }

    fn apply(log: &mut Log, op: &Abs) -> Result<(), LogError> {
        match op {
            Abs::Append(first, n) => {
                assert_eq!(log.next_index(), *first);
                for i in *first..*first + u64::from(*n) {
                    log.append(&payload(i))?;
                }
                Ok(())
            }
            Abs::TruncateFrom(cut) => log.truncate_from(*cut),
            Abs::Purge(upto) => log.purge_upto(*upto),
            Abs::Checkpoint(upto, rec) => {
                log.write_checkpoint(*upto, &mut std::iter::once(rec.clone()))
            }
            Abs::Nothing => Ok(()),
        }
    }

    fn failpoint_of(op: &Op) -> Option<&'static str> {
        match *op {
            Op::Append(_) => None,
            Op::Truncate(_, f) => Some(if f {
                "truncate.after_unlink"
            } else {
                "truncate.before_cut"
            }),
            Op::Purge(_, f) => Some(if f {
                "purge.after_marker"
            } else {
                "purge.after_unlink"
            }),
            Op::Checkpoint(_, f, g) => Some(match (f, g) {
                (true, _) => "checkpoint.before_rename",
                (false, true) => "checkpoint.after_rename",
                (false, false) => "purge.after_marker",
            }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn interrupted_operations_recover(ops in proptest::collection::vec(op(), 1..25)) {
            let tmp = tempfile::tempdir().unwrap();
            let (mut reference, _) = Log::open(&tmp.path().join("ref"), small()).unwrap();
            let dir = tmp.path().join("test");
            let (mut log, _) = Log::open(&dir, small()).unwrap();
            let mut seq = 0u64;
            for op in &ops {
                let before = state(&reference);
                let abs = resolve(&reference, op, &mut seq);
                apply(&mut reference, &abs).unwrap();
                let after = state(&reference);
                failpoint::arm(failpoint_of(op));
                let r = apply(&mut log, &abs);
                failpoint::arm(None);
                if let Err(LogError::InjectedFailure(p)) = r {
                    drop(log);
                    let (l, report) = Log::open(&dir, small()).unwrap();
                    prop_assert!(report.is_clean(), "{}", report);
                    log = l;
                    let now = state(&log);
                    match op {
                        Op::Truncate(..) => {
                            prop_assert!(now.records.len() >= after.records.len());
                            prop_assert!(now.records.len() <= before.records.len());
                            prop_assert_eq!(&now.records[..], &before.records[..now.records.len()]);
                        }
                        Op::Checkpoint(..) if p == "checkpoint.before_rename" => {
                            prop_assert_eq!(&now, &before);
                        }
                        _ => prop_assert_eq!(&now, &after, "after crash at {}", p),
                    }
                    if now != after {
                        apply(&mut log, &abs).unwrap();
                    }
                } else {
                    r.unwrap();
                }
                prop_assert_eq!(state(&log), after);
            }
        }
    }
}
