//! A real process appends batches (SyncPolicy::Always) and reports every acknowledged index;
//! the test SIGKILLs it at random moments, several rounds on one directory. After each kill the
//! log opens, holds every acknowledged record, and holds exactly a prefix of what was written.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_tsdb::log::{Log, LogOptions, SyncPolicy};

const CHILD_ENV: &str = "TIDEMARK_LOG_KILL_CHILD_DIR";

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    let mut v = i.to_le_bytes().to_vec();
    v.extend((0..len).map(|k| (i as u8).wrapping_add(k as u8)));
    v
}

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 64 << 10,
        sync: SyncPolicy::Always,
    }
}

/// The child: appends batches forever, printing the last index of each acknowledged batch.
#[test]
#[ignore = "run as a child process by kill_during_appends"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mut log, report) = Log::open(Path::new(&dir), opts()).unwrap();
    eprintln!("child opened: {report}");
    let mut out = std::io::stdout().lock();
    loop {
        let first = log.next_index();
        let batch: Vec<Vec<u8>> = (first..first + 1 + first % 7).map(payload).collect();
        let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
        let range = log.append_batch(&refs).unwrap();
        writeln!(out, "acked {}", range.end()).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_during_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut acked: Option<u64> = None;
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["child_writer", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("acked ") {
                    last = Some(n.parse::<u64>().unwrap());
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(100..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if let Some(a) = reader.join().unwrap() {
            acked = Some(acked.map_or(a, |x: u64| x.max(a)));
        }
        let (log, report) = Log::open(&dir, opts()).unwrap();
        assert!(report.corruptions.is_empty(), "round {round}: {report}");
        eprintln!("round {round}: acknowledged {acked:?}; {report}");
        let last = log.last_index();
        if let Some(a) = acked {
            assert!(
                last.is_some_and(|l| l >= a),
                "round {round}: acknowledged {a}, log ends at {last:?}"
            );
        }
        let mut n = 0u64;
        let mut replay = log.replay().unwrap();
        while let Some(r) = replay.next_record() {
            let (idx, p) = r.unwrap();
            assert_eq!(idx, n);
            assert_eq!(p, payload(n).as_slice(), "round {round}: record {n}");
            n += 1;
        }
        assert_eq!(Some(n), last.map(|l| l + 1));
    }
    assert!(
        acked.is_some_and(|a| a > 0),
        "the child never acknowledged a write"
    );
}
