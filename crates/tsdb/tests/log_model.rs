//! `append`, `truncate_after`, `truncate_from`, `purge_upto`, `write_checkpoint` and reopen
//! against a simple model: a `Vec<Vec<u8>>` of live records plus the purge point.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use proptest::prelude::*;
use tidemark_tsdb::log::{Log, LogError, LogOptions, SyncPolicy};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    /// Truncate after `last - back` (saturating).
    TruncateAfter(u64),
    /// Purge up to `first + fwd` (may go beyond the end).
    Purge(u64),
    Checkpoint(u64, Vec<Vec<u8>>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let rec = proptest::collection::vec(any::<u8>(), 0..60);
    prop_oneof![
        5 => proptest::collection::vec(rec.clone(), 1..8).prop_map(Op::Append),
        2 => (0u64..12).prop_map(Op::TruncateAfter),
        2 => (0u64..14).prop_map(Op::Purge),
        1 => (0u64..10, proptest::collection::vec(rec, 0..4))
            .prop_map(|(f, r)| Op::Checkpoint(f, r)),
        2 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// Index of `records[0]`.
    base: u64,
    records: Vec<Vec<u8>>,
    purged: Option<u64>,
    checkpoint: Option<(u64, Vec<Vec<u8>>)>,
}

impl Model {
    fn next(&self) -> u64 {
        self.base + self.records.len() as u64
    }
    fn purge(&mut self, upto: u64) {
        if self.purged.is_some_and(|p| p >= upto) {
            return;
        }
        self.purged = Some(upto);
        if upto >= self.next() {
            self.records.clear();
            self.base = upto + 1;
        } else if upto >= self.base {
            self.records.drain(..(upto + 1 - self.base) as usize);
            self.base = upto + 1;
        }
    }
}

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 300,
        sync: SyncPolicy::Never,
    }
}

fn check(log: &Log, m: &Model) {
    assert_eq!(log.next_index(), m.next());
    let expect_first = (!m.records.is_empty()).then_some(m.base);
    assert_eq!(log.first_index(), expect_first);
    assert_eq!(log.last_index(), expect_first.map(|_| m.next() - 1));
    for (k, r) in m.records.iter().enumerate() {
        assert_eq!(&log.read(m.base + k as u64).unwrap(), r);
    }
    if let Some(p) = m.purged {
        assert!(matches!(log.read(p), Err(LogError::Purged { .. })));
    }
    assert!(log.read(m.next()).is_err());
    let mut expect: Vec<(u64, Vec<u8>)> = Vec::new();
    if let Some((upto, recs)) = &m.checkpoint {
        expect.extend(recs.iter().map(|r| (*upto, r.clone())));
    }
    expect.extend(
        m.records
            .iter()
            .enumerate()
            .map(|(k, r)| (m.base + k as u64, r.clone())),
    );
    let got: Vec<(u64, Vec<u8>)> = log.replay().unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(got, expect);
    if let Some(first) = expect_first {
        let mid = first + (m.records.len() as u64) / 2;
        let n = log.reader_from(mid).unwrap().count() as u64;
        assert_eq!(n, m.next() - mid);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(tmp.path(), opts()).unwrap();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Append(recs) => {
                    let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
                    let range = log.append_batch(&refs).unwrap();
                    prop_assert_eq!(*range.start(), m.next());
                    m.records.extend(recs);
                }
                Op::TruncateAfter(back) => {
                    let i = m.next().saturating_sub(1).saturating_sub(back);
                    let r = log.truncate_after(i);
                    if i + 1 >= m.next() {
                        r.unwrap();
                    } else if m.purged.is_some_and(|p| i < p) {
                        prop_assert!(matches!(r, Err(LogError::BelowPurgePoint { .. })), "{:?}", r);
                    } else {
                        r.unwrap();
                        m.records.truncate((i + 1 - m.base) as usize);
                    }
                }
                Op::Purge(fwd) => {
                    let upto = m.base + fwd;
                    log.purge_upto(upto).unwrap();
                    m.purge(upto);
                }
                Op::Checkpoint(fwd, recs) => {
                    let upto = m.base + fwd;
                    let r = log.write_checkpoint(upto, &mut recs.clone().into_iter());
                    if m.checkpoint.as_ref().is_some_and(|(u, _)| *u >= upto) {
                        prop_assert!(matches!(r, Err(LogError::StaleCheckpoint { .. })), "{:?}", r);
                    } else {
                        r.unwrap();
                        m.checkpoint = Some((upto, recs));
                        m.purge(upto);
                    }
                }
                Op::Reopen => {
                    drop(log);
                    let (l, report) = Log::open(tmp.path(), opts()).unwrap();
                    prop_assert!(report.is_clean(), "{}", report);
                    log = l;
                }
            }
            check(&log, &m);
        }
    }
}

#[test]
fn truncate_from_zero_empties_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts()).unwrap();
    for i in 0..50u64 {
        log.append(&i.to_le_bytes()).unwrap();
    }
    log.truncate_from(0).unwrap();
    assert_eq!((log.first_index(), log.next_index()), (None, 0));
    assert_eq!(log.append(b"x").unwrap(), 0);
    drop(log);
    let (log, _) = Log::open(tmp.path(), opts()).unwrap();
    assert_eq!(log.read(0).unwrap(), b"x");
    assert_eq!(log.last_index(), Some(0));
}

#[test]
fn purge_beyond_end_moves_next_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts()).unwrap();
    log.append(b"a").unwrap();
    log.purge_upto(1000).unwrap();
    assert_eq!((log.first_index(), log.next_index()), (None, 1001));
    assert!(matches!(
        log.read(0),
        Err(LogError::Purged {
            purged_upto: 1000,
            ..
        })
    ));
    assert!(matches!(
        log.truncate_after(10),
        Err(LogError::BelowPurgePoint { .. })
    ));
    drop(log);
    let (mut log, _) = Log::open(tmp.path(), opts()).unwrap();
    assert_eq!(log.next_index(), 1001);
    assert_eq!(log.append(b"b").unwrap(), 1001);
    assert!(matches!(log.reader_from(5), Err(LogError::Purged { .. })));
}

#[test]
fn purge_tag_is_saved_with_the_purge_point() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), opts()).unwrap();
    for i in 0..40u64 {
        log.append(&i.to_le_bytes()).unwrap();
    }
    assert_eq!(log.purge_tag(), b"");
    log.purge_upto_tagged(20, b"term=3,index=20").unwrap();
    assert_eq!(log.purge_tag(), b"term=3,index=20");
    // Not above the purge point: nothing changes.
    log.purge_upto_tagged(10, b"other").unwrap();
    assert_eq!(log.purge_tag(), b"term=3,index=20");
    drop(log);
    let (mut log, _) = Log::open(tmp.path(), opts()).unwrap();
    assert_eq!(
        (log.purged_upto(), log.purge_tag()),
        (Some(20), &b"term=3,index=20"[..])
    );
    log.purge_upto(30).unwrap();
    assert_eq!(log.purge_tag(), b"");
}
