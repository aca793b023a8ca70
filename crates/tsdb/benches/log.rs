//! Log benchmarks: append throughput (small records, batched) and sequential replay.
//!
//! `cargo bench -p tidemark-tsdb --bench log`. Fixed seed; data under the system temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: failing loudly is right

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_tsdb::log::{Log, LogOptions, SyncPolicy};

/// Records shaped like the engine's sample records: a few series refs + timestamps + values,
/// mostly incompressible bytes.
fn records(n: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..size).map(|_| rng.random()).collect())
        .collect()
}

fn never() -> LogOptions {
    LogOptions {
        sync: SyncPolicy::Never,
        ..LogOptions::default()
    }
}

fn bench_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);
    // 1000 records of 128 bytes per batch: ~ one remote_write request of 2000 samples split
    // into per-series records, or 16 samples per record.
    let recs = records(1000, 128, 1);
    let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
    let bytes: u64 = recs.iter().map(|r| r.len() as u64).sum();
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("batch_1000x128B_sync_never", |b| {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(tmp.path(), never()).unwrap();
        b.iter(|| black_box(log.append_batch(&refs).unwrap()));
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_128B_sync_never", |b| {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(tmp.path(), never()).unwrap();
        b.iter(|| black_box(log.append(refs[0]).unwrap()));
    });
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.bench_function("batch_1000x128B_sync_always", |b| {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(tmp.path(), LogOptions::default()).unwrap();
        b.iter(|| black_box(log.append_batch(&refs).unwrap()));
    });
    g.finish();
}

/// 4 threads x 10 commits of 100 records: fsync per commit under the log's lock (the default
/// policy) versus group commit (append under the lock, `LogSyncer::sync_upto` outside it).
fn bench_concurrent_commits(c: &mut Criterion) {
    use std::sync::{Arc, Mutex};
    let mut g = c.benchmark_group("log_commit_4_threads");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(10);
    g.throughput(Throughput::Elements(40));
    let recs = Arc::new(records(100, 128, 3));
    for group in [false, true] {
        let name = if group {
            "group_commit_syncer"
        } else {
            "sync_always_under_lock"
        };
        g.bench_function(name, |b| {
            let tmp = tempfile::tempdir().unwrap();
            let opts = if group {
                never()
            } else {
                LogOptions::default()
            };
            let (log, _) = Log::open(tmp.path(), opts).unwrap();
            let syncer = log.syncer();
            let log = Arc::new(Mutex::new(log));
            b.iter(|| {
                let threads: Vec<_> = (0..4)
                    .map(|_| {
                        let (log, syncer, recs) =
                            (Arc::clone(&log), syncer.clone(), Arc::clone(&recs));
                        std::thread::spawn(move || {
                            let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
                            for _ in 0..10 {
                                let last = *log.lock().unwrap().append_batch(&refs).unwrap().end();
                                if group {
                                    syncer.sync_upto(last).unwrap();
                                }
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
            });
        });
    }
    g.finish();
}

fn build(dir: &Path, total_bytes: usize, size: usize) -> u64 {
    let (mut log, _) = Log::open(dir, never()).unwrap();
    let recs = records(1000, size, 2);
    let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
    let mut written = 0u64;
    while (written as usize) < total_bytes {
        log.append_batch(&refs).unwrap();
        written += (size * 1000) as u64;
    }
    log.sync().unwrap();
    written
}

fn bench_replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_replay");
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(10);
    for size in [100usize, 1000] {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = build(tmp.path(), 256 << 20, size);
        let (log, _) = Log::open(tmp.path(), never()).unwrap();
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(format!("next_record_256MiB_{size}B"), |b| {
            b.iter(|| {
                let mut r = log.replay().unwrap();
                let mut n = 0u64;
                while let Some(rec) = r.next_record() {
                    n += rec.unwrap().1.len() as u64;
                }
                assert_eq!(n, bytes);
            })
        });
        g.bench_function(format!("iterator_256MiB_{size}B"), |b| {
            b.iter(|| {
                let n: u64 = log
                    .replay()
                    .unwrap()
                    .map(|r| r.unwrap().1.len() as u64)
                    .sum();
                assert_eq!(n, bytes);
            })
        });
        drop(log);
        g.bench_function(format!("open_scan_256MiB_{size}B"), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let (log, report) = Log::open(tmp.path(), never()).unwrap();
                    assert!(report.is_clean());
                    black_box(log.last_index())
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_append,
    bench_concurrent_commits,
    bench_replay
);
criterion_main!(benches);
