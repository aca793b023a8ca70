//! Damage to the engine's files: a flipped byte in the middle of a log segment, a truncated log
//! segment, a damaged head-chunk file. The damage is detected and named (file and offset), the
//! engine still opens, and the data before the damage serves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};

use tidemark_model::{Labels, Matcher};
use tidemark_storage::{Appendable, Queryable};
use tidemark_tsdb::{Db, DbOptions};

fn opts() -> DbOptions {
    DbOptions {
        background_maintenance: false,
        log_segment_size: 16 * 1024,
        ..DbOptions::default()
    }
}

fn series(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "c".to_string()), ("i", i.to_string())])
}

/// Commits `batches` batches; batch `b` writes 20 series at `t = b`.
fn fill(dir: &Path, batches: i64) {
    let db = Db::open(dir, opts()).unwrap();
    for b in 0..batches {
        let mut app = db.appender();
        for i in 0..20 {
            app.append(None, &series(i), b, (b * 100 + i as i64) as f64 + 0.5)
                .unwrap();
        }
        app.commit().unwrap();
    }
    db.close().unwrap();
}

/// Batches fully visible: the largest `n` such that batches `0..n` are all there.
fn visible_prefix(db: &Db) -> i64 {
    let q = db.querier(i64::MIN, i64::MAX).unwrap();
    let mut min_len = i64::MAX;
    let mut n = 0;
    for s in q.select(true, None, &[Matcher::equal("__name__", "c")]) {
        let s = s.unwrap();
        let i: i64 = s.labels().get("i").unwrap().parse().unwrap();
        let mut it = s.iter();
        let mut k = 0;
        while it.next() {
            assert_eq!(it.at().t, k, "samples must be a prefix of the batches");
            assert_eq!(it.at().v, (k * 100 + i) as f64 + 0.5);
            k += 1;
        }
        min_len = min_len.min(k);
        n += 1;
    }
    if n < 20 { 0 } else { min_len }
}

fn segments(wal: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn flipped_byte_in_a_middle_log_segment() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 600);
    let segs = segments(&dir.path().join("wal"));
    assert!(segs.len() >= 3, "want several segments, got {}", segs.len());
    let victim = &segs[segs.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(victim, &bytes).unwrap();

    let db = Db::open(dir.path(), opts()).unwrap();
    let rep = db.open_report();
    assert!(!rep.is_clean());
    let c = rep
        .log
        .corruptions
        .first()
        .unwrap_or_else(|| panic!("corruption not reported: {rep}"));
    assert_eq!(&c.segment, victim, "{rep}");
    assert!(c.offset as usize <= at, "{rep}");
    let text = rep.to_string();
    assert!(
        text.contains("CORRUPTION") && text.contains(&victim.display().to_string()),
        "{text}"
    );
    // Everything before the damaged segment serves; the batches after it are gone (reported).
    let n = visible_prefix(&db);
    assert!(n > 0 && n < 600, "visible batches {n}");
    // The engine takes new writes after the repair.
    let mut app = db.appender();
    for i in 0..20 {
        app.append(None, &series(i), n, (n * 100 + i as i64) as f64 + 0.5)
            .unwrap();
    }
    app.commit().unwrap();
    db.close().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(
        db.open_report().log.corruptions.is_empty(),
        "{}",
        db.open_report()
    );
    assert_eq!(visible_prefix(&db), n + 1);
}

#[test]
fn truncated_last_log_segment() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 300);
    let segs = segments(&dir.path().join("wal"));
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let db = Db::open(dir.path(), opts()).unwrap();
    let rep = db.open_report();
    let t = rep
        .log
        .torn_tail
        .as_ref()
        .unwrap_or_else(|| panic!("torn tail not reported: {rep}"));
    assert_eq!(&t.segment, last);
    assert_eq!(visible_prefix(&db), 299, "only the torn last batch is lost");
}

#[test]
fn damaged_head_chunk_file_does_not_matter_after_restart() {
    // Head-chunk files are rebuilt from the log on open: damage there is harmless.
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 400); // 400 samples per series: 3 full chunks each in the head-chunk files
    for e in std::fs::read_dir(dir.path().join("chunks_head")).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        for x in b.iter_mut().skip(8).step_by(97) {
            *x ^= 0xff;
        }
        std::fs::write(&p, b).unwrap();
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(visible_prefix(&db), 400);
}
