//! Db end to end in one process: append, query, restart (log replay), cut blocks, checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use tidemark_model::{Labels, Matcher, Sample};
use tidemark_storage::{Appendable, Queryable};
use tidemark_tsdb::{Db, DbOptions};

fn opts() -> DbOptions {
    DbOptions {
        background_maintenance: false,
        block_range_ms: 1000,
        ooo_window_ms: 100,
        ..DbOptions::default()
    }
}

fn series(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())])
}

fn read(db: &Db, mint: i64, maxt: i64) -> Vec<(Labels, Vec<Sample>)> {
    let q = db.querier(mint, maxt).unwrap();
    q.select(true, None, &[Matcher::equal("__name__", "m")])
        .map(|s| {
            let s = s.unwrap();
            let mut it = s.iter();
            let mut v = vec![];
            while it.next() {
                v.push(it.at());
            }
            (s.labels().clone(), v)
        })
        .collect()
}

fn append(db: &Db, n_series: usize, ts: std::ops::Range<i64>) {
    let mut app = db.appender();
    for t in ts {
        for i in 0..n_series {
            app.append(None, &series(i), t * 10, (t * 100 + i as i64) as f64)
                .unwrap();
        }
    }
    app.commit().unwrap();
}

fn expected(n_series: usize, ts: std::ops::Range<i64>) -> Vec<(Labels, Vec<Sample>)> {
    let mut v: Vec<(Labels, Vec<Sample>)> = (0..n_series)
        .map(|i| {
            (
                series(i),
                ts.clone()
                    .map(|t| Sample::new(t * 10, (t * 100 + i as i64) as f64))
                    .collect(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn append_restart_cut_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    append(&db, 5, 0..200);
    assert_eq!(read(&db, i64::MIN, i64::MAX), expected(5, 0..200));
    db.close().unwrap();
    db.close().unwrap();
    let mut a = db.appender();
    a.append(None, &series(0), 5000, 1.0).unwrap();
    assert!(
        matches!(a.commit(), Err(tidemark_storage::Error::Unavailable(_))),
        "commit after close must fail"
    );
    drop(db);

    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(db.open_report().is_clean(), "{}", db.open_report());
    assert_eq!(read(&db, i64::MIN, i64::MAX), expected(5, 0..200));
    // 2000 ms of data with 1000 ms blocks: one block is due (head spans > 1.5 ranges).
    db.compact_now().unwrap();
    assert_eq!(db.blocks().len(), 1, "{:?}", db.blocks());
    assert_eq!(read(&db, i64::MIN, i64::MAX), expected(5, 0..200));
    assert_eq!(read(&db, 500, 1500), expected(5, 50..151));
    append(&db, 5, 200..300);
    db.flush_head().unwrap();
    assert_eq!(db.stats().head_series, 0);
    assert_eq!(read(&db, i64::MIN, i64::MAX), expected(5, 0..300));
    db.close().unwrap();
    drop(db);

    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(db.open_report().is_clean(), "{}", db.open_report());
    assert_eq!(read(&db, i64::MIN, i64::MAX), expected(5, 0..300));
    let st = db.stats();
    assert_eq!(st.min_time, Some(0));
    // Block bounds: the last block ends at 3000 (exclusive).
    assert_eq!(st.max_time, Some(2999));
    // Samples before the blocks' end are out of bounds now.
    let mut app = db.appender();
    assert!(matches!(
        app.append(None, &series(0), 10, 1.0),
        Err(tidemark_storage::Error::OutOfBounds)
    ));
}
