//! Many appender and querier threads at once, with blocks being cut and compacted underneath.
//! Every writer commits batches that write one sample to each of its series at the same
//! timestamp; queriers check that (1) every batch committed before the query started is visible
//! and (2) no batch is seen partially (all series of a writer have the same timestamps).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tidemark_model::{Labels, Matcher};
use tidemark_storage::{Appendable, Queryable};
use tidemark_tsdb::log::SyncPolicy;
use tidemark_tsdb::{Db, DbOptions};

const WRITERS: usize = 4;
const READERS: usize = 3;
const SERIES_PER_WRITER: usize = 25;

fn labels(w: usize, i: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", "conc".to_string()),
        ("w", w.to_string()),
        ("i", i.to_string()),
    ])
}

#[test]
fn appenders_and_queriers_stay_consistent() {
    run(SyncPolicy::Never, 2000);
}

/// The same with fsync before every acknowledgement (group commit: committers share fsyncs).
#[test]
fn appenders_and_queriers_stay_consistent_with_group_commit() {
    run(SyncPolicy::Always, 1200);
}

fn run(sync: SyncPolicy, millis: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        DbOptions {
            block_range_ms: 400,
            ooo_window_ms: 0,
            retention_time_ms: 0,
            log_sync: sync,
            maintenance_interval: Duration::from_millis(20),
            ..DbOptions::default()
        },
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // Last batch number each writer has seen committed (-1: none).
    let committed: Arc<Vec<AtomicI64>> =
        Arc::new((0..WRITERS).map(|_| AtomicI64::new(-1)).collect());
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let (db, stop, committed) = (db.clone(), stop.clone(), committed.clone());
        handles.push(std::thread::spawn(move || {
            // Timestamps follow the wall clock (strictly increasing per writer), so that writers
            // stay close together and blocks cut behind them.
            let mut t: i64 = -1;
            let mut batches = 0u64;
            let mut refs = vec![None; SERIES_PER_WRITER];
            'outer: while !stop.load(Ordering::Relaxed) {
                t = (t + 1).max(t0.elapsed().as_millis() as i64);
                let mut app = db.appender();
                for (i, r) in refs.iter_mut().enumerate() {
                    match app.append(*r, &labels(w, i), t, (t * 7 + i as i64) as f64) {
                        Ok(x) => *r = Some(x),
                        // This writer was descheduled long enough for a block to be cut past it.
                        Err(tidemark_storage::Error::OutOfBounds) => {
                            app.rollback().unwrap();
                            continue 'outer;
                        }
                        Err(e) => panic!("append: {e}"),
                    }
                }
                match app.commit() {
                    Ok(()) => {}
                    // A block was cut past this batch between append and commit: the batch is
                    // rejected as a whole (never acknowledged), so it is not expected anywhere.
                    Err(tidemark_storage::Error::OutOfBounds) => continue 'outer,
                    Err(e) => panic!("commit: {e}"),
                }
                committed[w].store(t, Ordering::Release);
                batches += 1;
            }
            batches
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (db, stop, committed) = (db.clone(), stop.clone(), committed.clone());
        readers.push(std::thread::spawn(move || {
            let mut queries = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let before: Vec<i64> = committed
                    .iter()
                    .map(|c| c.load(Ordering::Acquire))
                    .collect();
                let q = db.querier(i64::MIN, i64::MAX).unwrap();
                let mut per_writer: BTreeMap<String, Vec<Vec<i64>>> = BTreeMap::new();
                for s in q.select(true, None, &[Matcher::equal("__name__", "conc")]) {
                    let s = s.unwrap();
                    let w = s.labels().get("w").unwrap().to_string();
                    let i: i64 = s.labels().get("i").unwrap().parse().unwrap();
                    let mut it = s.iter();
                    let mut ts = Vec::new();
                    while it.next() {
                        let x = it.at();
                        assert_eq!(x.v, (x.t * 7 + i) as f64, "wrong value");
                        ts.push(x.t);
                    }
                    assert!(it.err().is_none());
                    per_writer.entry(w).or_default().push(ts);
                }
                for (w, &b) in before.iter().enumerate() {
                    if b < 0 {
                        continue;
                    }
                    let lists = per_writer
                        .get(&w.to_string())
                        .expect("writer's series missing");
                    assert_eq!(lists.len(), SERIES_PER_WRITER, "writer {w}: missing series");
                    let first = &lists[0];
                    assert!(
                        lists.iter().all(|l| l == first),
                        "writer {w}: a batch is visible partially"
                    );
                    assert!(
                        *first.last().unwrap() >= b,
                        "writer {w}: committed batch {b} not visible"
                    );
                }
                queries += 1;
            }
            queries
        }));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(millis));
    stop.store(true, Ordering::Relaxed);
    let batches: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let queries: Vec<u64> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!(
        "{:?}: batches per writer {batches:?}, queries per reader {queries:?}, {} blocks",
        start.elapsed(),
        db.blocks().len()
    );
    assert!(queries.iter().all(|&q| q > 0));
    assert!(!db.blocks().is_empty(), "blocks were cut while writing");
    db.close().unwrap();
}
