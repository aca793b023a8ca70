//! Crash safety with a real process: this test binary re-executes itself as a child (selected by
//! an environment variable) that appends and commits batches and prints each committed batch id;
//! the parent SIGKILLs it at random points, several rounds, with block cutting, checkpoints and
//! compaction running in the child's background thread. After every kill the database reopens and
//! every sample of every batch whose commit returned is readable, exactly once, with its value.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tidemark_model::{Labels, Matcher};
use tidemark_storage::{Appendable, Queryable};
use tidemark_tsdb::{Db, DbOptions};

const CHILD_DIR: &str = "TIDEMARK_CRASH_CHILD_DIR";
const CHILD_START: &str = "TIDEMARK_CRASH_CHILD_START";
const SERIES: usize = 40;
/// Batch `id` writes every series at `t = id * STEP`.
const STEP: i64 = 10;

fn opts() -> DbOptions {
    DbOptions {
        // Small blocks so that cutting, checkpoints and compaction happen while being killed.
        block_range_ms: 2_000,
        ooo_window_ms: 0,
        maintenance_interval: Duration::from_millis(30),
        retention_time_ms: 0,
        ..DbOptions::default()
    }
}

fn series(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "crash".to_string()), ("s", format!("{i:03}"))])
}

fn value(id: i64, i: usize) -> f64 {
    (id * 1000 + i as i64) as f64 + 0.25
}

/// Child mode: append batches forever, printing each committed id.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let start: i64 = std::env::var(CHILD_START).unwrap().parse().unwrap();
    let db = Db::open(std::path::Path::new(&dir), opts()).unwrap();
    let mut out = std::io::stdout().lock();
    for id in start.. {
        let mut app = db.appender();
        for i in 0..SERIES {
            app.append(None, &series(i), id * STEP, value(id, i))
                .unwrap();
        }
        app.commit().unwrap();
        writeln!(out, "COMMITTED {id}").unwrap();
        out.flush().unwrap();
    }
}

fn read_all(db: &Db) -> BTreeMap<Labels, Vec<(i64, u64)>> {
    let q = db.querier(i64::MIN, i64::MAX).unwrap();
    q.select(true, None, &[Matcher::equal("__name__", "crash")])
        .map(|s| {
            let s = s.unwrap();
            let mut it = s.iter();
            let mut v = vec![];
            while it.next() {
                v.push((it.at().t, it.at().v.to_bits()));
            }
            assert!(it.err().is_none());
            (s.labels().clone(), v)
        })
        .collect()
}

fn newest_log_segment(wal: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(wal)
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
    segs.sort();
    segs.pop().expect("no log segment")
}

#[test]
fn sigkill_loses_no_committed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE);
    let mut acked: Vec<i64> = Vec::new();
    let mut next_start = 0i64;
    let mut reports = Vec::new();
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_START, next_start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("COMMITTED ") {
                    let _ = tx.send(id.trim().parse::<i64>().unwrap());
                }
            }
        });
        // Let it commit a while (at least one batch), then kill it at a random point.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child committed nothing");
        acked.push(first);
        let deadline = Instant::now() + Duration::from_millis(rng.random_range(100..700));
        while Instant::now() < deadline {
            if let Ok(id) = rx.recv_timeout(Duration::from_millis(5)) {
                acked.push(id);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        let last = *acked.last().unwrap();
        eprintln!(
            "round {round}: {} batches acknowledged so far, last {last}",
            acked.len()
        );

        // Odd rounds: also leave a torn record at the end of the newest log segment, as a crash in
        // the middle of a write would (SIGKILL alone rarely tears a single write).
        let torn = round % 2 == 1;
        if torn {
            let seg = newest_log_segment(&dir.path().join("wal"));
            let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
            f.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe]).unwrap();
        }
        let db = Db::open(
            dir.path(),
            DbOptions {
                background_maintenance: false,
                ..opts()
            },
        )
        .unwrap();
        let report = db.open_report().to_string();
        if torn {
            let t = db
                .open_report()
                .log
                .torn_tail
                .as_ref()
                .unwrap_or_else(|| panic!("torn tail not reported: {report}"));
            assert_eq!(t.bytes, 7, "{report}");
        }
        assert!(report.contains("log"), "the report names the log: {report}");
        if let Some(t) = &db.open_report().log.torn_tail {
            assert!(report.contains("torn tail"), "{report}");
            assert!(
                report.contains(&t.segment.display().to_string()),
                "{report}"
            );
        }
        reports.push(report);
        let got = read_all(&db);
        for i in 0..SERIES {
            let samples = got
                .get(&series(i))
                .unwrap_or_else(|| panic!("series {i} missing after round {round}"));
            let map: BTreeMap<i64, u64> = samples.iter().copied().collect();
            assert_eq!(
                map.len(),
                samples.len(),
                "duplicate timestamps in series {i}"
            );
            for &id in &acked {
                assert_eq!(
                    map.get(&(id * STEP)),
                    Some(&value(id, i).to_bits()),
                    "round {round}: batch {id} (acknowledged) lost or wrong in series {i}"
                );
            }
            // Nothing that was never written.
            assert!(
                samples
                    .iter()
                    .all(|(t, v)| *v == value(t / STEP, i).to_bits())
            );
        }
        db.close().unwrap();
        drop(db);
        next_start = last + 1;
    }
    eprintln!("open reports: {reports:#?}");
}
