//! Head at scale, run by hand (not part of `cargo test`):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target cargo bench -p tidemark-tsdb --bench head_scale -- [series] [samples_per_series] [replay_workers]
//! ```
//!
//! Defaults: 1,000,000 series, 120 samples each. Measures on one thread:
//! 1. append throughput into the head with series references (as a scraper's cache does), in
//!    commits of 1000 samples, with the log (SyncPolicy::Never: fsync excluded) — the engine's
//!    real write path;
//! 2. resident memory per active series: VmRSS from /proc/self/status after the appends, minus
//!    VmRSS before the label sets were built, divided by the number of series;
//! 3. replay time: reopening the database, i.e. reading the log and rebuilding the head.
//!
//! Also reports CPU time (getrusage) next to wall time, since the machine is shared.
//!
//! `HEAD_SCALE_DIR=path`: use (and keep) that data directory; when it already holds a database,
//! only the replay is measured (for profiling replay alone).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: panics on failure by design

use std::time::{Duration, Instant};

use tidemark_model::Labels;
use tidemark_storage::{Appendable, SeriesRef};
use tidemark_tsdb::log::SyncPolicy;
use tidemark_tsdb::{Db, DbOptions};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// node_exporter-like label sets: 200 metric names, 1000 series per instance.
fn labels(i: usize) -> Labels {
    let metric = format!("node_metric_{:03}_total", i % 200);
    let instance = format!(
        "10.{}.{}.{}:9100",
        (i / 1000) / 65536 % 256,
        (i / 1000) / 256 % 256,
        (i / 1000) % 256
    );
    let dev = format!("dev{}", (i / 200) % 5);
    Labels::from_pairs([
        ("__name__", metric.as_str()),
        ("device", dev.as_str()),
        ("instance", instance.as_str()),
        ("job", "node"),
    ])
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n_series: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let n_samples: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(120);
    let replay_workers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let kept = std::env::var_os("HEAD_SCALE_DIR").map(std::path::PathBuf::from);
    let dir = kept.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let opts = DbOptions {
        background_maintenance: false,
        log_sync: SyncPolicy::Never,
        // One block range holds the whole run, so nothing is cut while measuring.
        block_range_ms: 1 << 40,
        replay_workers,
        ..DbOptions::default()
    };
    // The baseline is taken before the label sets exist: their buffers are the series' labels
    // (shared with the head, as a scraper's cache shares them), so they count. The bench's own
    // vectors (16 + 16 bytes per series) are included too, a slight overcount.
    if kept.is_some() && dir.join("wal").exists() {
        replay(&dir, opts, n_series, n_samples);
        return;
    }
    let rss0 = rss_bytes();
    let labels: Vec<Labels> = (0..n_series).map(labels).collect();
    let db = Db::open(&dir, opts.clone()).expect("open");
    let mut refs: Vec<Option<SeriesRef>> = vec![None; n_series];
    let batch = 1000;
    let t0: i64 = 1_700_000_000_000;

    // Round 0 creates the series (slow path); the rest append by reference.
    let (w0, c0) = (Instant::now(), cpu_time());
    let mut app = db.appender();
    for (i, l) in labels.iter().enumerate() {
        refs[i] = Some(app.append(None, l, t0, i as f64).expect("append"));
        if i % batch == batch - 1 {
            app.commit().expect("commit");
        }
    }
    app.commit().expect("commit");
    let (wc, cc) = (w0.elapsed(), cpu_time() - c0);
    println!(
        "create {n_series} series: wall {:.2?} ({:.0} series/s), cpu {:.2?}",
        wc,
        n_series as f64 / wc.as_secs_f64(),
        cc
    );

    let (w1, c1) = (Instant::now(), cpu_time());
    let mut app = db.appender();
    let mut k = 0usize;
    for round in 1..n_samples {
        let t = t0 + round as i64 * 15_000 + (round as i64 * 7) % 13;
        for (i, r) in refs.iter().enumerate() {
            app.append(*r, &labels[i], t, (round * 3 + i % 17) as f64)
                .expect("append");
            k += 1;
            if k.is_multiple_of(batch) {
                app.commit().expect("commit");
            }
        }
    }
    app.commit().expect("commit");
    let (wa, ca) = (w1.elapsed(), cpu_time() - c1);
    let appended = n_series * (n_samples - 1);
    println!(
        "append {appended} samples ({} per series) with the log: wall {:.2?} = {:.2} M samples/s, cpu {:.2?} = {:.2} M samples/cpu-s",
        n_samples - 1,
        wa,
        appended as f64 / wa.as_secs_f64() / 1e6,
        ca,
        appended as f64 / ca.as_secs_f64() / 1e6
    );
    let rss1 = rss_bytes();
    let st = db.stats();
    println!(
        "memory: RSS {:.1} MiB before, {:.1} MiB after; {:.0} bytes per series ({} series, {} full chunks in head-chunk files); index ~{:.0} bytes/series",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        (rss1.saturating_sub(rss0)) as f64 / n_series as f64,
        st.head_series,
        st.head_chunks_written,
        db.head().index_heap_bytes() as f64 / n_series as f64,
    );
    println!(
        "log: {:.1} MiB ({:.2} bytes/sample)",
        st.log_bytes as f64 / 1048576.0,
        st.log_bytes as f64 / (n_series * n_samples) as f64
    );
    db.close().expect("close");
    drop(db);
    replay(&dir, opts, n_series, n_samples);
}

/// Reopens the database (replay of the log) and prints the time it took.
fn replay(dir: &std::path::Path, opts: DbOptions, n_series: usize, n_samples: usize) {
    let (w2, c2) = (Instant::now(), cpu_time());
    let db = Db::open(dir, opts).expect("reopen");
    let (wr, cr) = (w2.elapsed(), cpu_time() - c2);
    println!(
        "replay {} series x {} samples: wall {:.2?}, cpu {:.2?} ({})",
        n_series,
        n_samples,
        wr,
        cr,
        db.open_report().replay
    );
    assert_eq!(db.stats().head_series, n_series);
}
