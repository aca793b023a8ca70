//! Storage of the 5 m and 1 h resolutions relative to raw, run by hand (not part of
//! `cargo test`):
//!
//! ```text
//! CARGO_TARGET_DIR=target cargo bench -p tidemark-tsdb --bench downsample -- [targets] [days] [restart]
//! ```
//!
//! Defaults: 13 node_exporter-like targets (~10k series) × 30 days at 15 s. For each target
//! and each 18 h window (the size of compacted raw blocks with the default retention) it
//! generates the samples (`testdata::node_exporter`, seeded) and writes a raw block with the
//! compacted chunk size (1024 samples); then it runs `downsample::run` over the target's 30 days
//! as maintenance would once every block is old enough (every raw block downsampled to 5 m, the
//! 5 m blocks merged into 162 h blocks and downsampled to 1 h, the 1 h blocks merged into 486 h
//! blocks; the newest window of each resolution, incomplete, stays unmerged), adds up the bytes
//! on disk of each resolution, and deletes the blocks (so the disk holds one target at a time).
//! Each target's 30 days are generated as one continuous scrape history (counters keep
//! counting across blocks; ~2 GB of samples in memory per target) and cut into the 18 h
//! blocks. A third argument `restart` generates each 18 h window afresh instead (counters and
//! gauges restart at every block boundary: what this bench did before 2026-12-07).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: panics on failure by design

use std::time::Instant;

use tidemark_tsdb::block::{BlockWriter, delete_block, open_blocks};
use tidemark_tsdb::compact::COMPACTED_SAMPLES_PER_CHUNK;
use tidemark_tsdb::downsample::{self, DownsampleOptions, RES_1H, RES_5M};
use tidemark_tsdb::testdata::{TestSeries, node_exporter};

/// The series of `target` from `n` scrapes starting at `start` (seed from the target and
/// `w`), cut at `end`, in label order.
fn target_data(target: usize, w: i64, n: usize, start: i64, end: i64) -> Vec<TestSeries> {
    let mut data = node_exporter(1, n, 0x5eed ^ target as u64 ^ ((w as u64) << 20), start);
    for s in &mut data {
        // One target per call: give each its own instance label.
        s.labels = s
            .labels
            .to_builder()
            .set("instance", &format!("host-{target}:9100"))
            .build();
        s.samples.retain(|x| x.t < end);
    }
    data.sort_by(|a, b| a.labels.cmp(&b.labels));
    data
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let targets: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(13);
    let days: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let restart = args.get(2).is_some_and(|a| a == "restart");
    let window: i64 = 18 * 3_600_000;
    let per_window = (window / 15_000) as usize;
    let windows = days * 24 / 18;
    let dir = tempfile::tempdir().unwrap();
    let (mut raw, mut m5, mut h1) = (0u64, 0u64, 0u64);
    let (mut samples, mut series) = (0u64, 0u64);
    let (mut n5, mut n1) = (0u64, 0u64);
    let (mut t_write, mut t_ds) = (0.0f64, 0.0f64);
    for target in 0..targets {
        // Continuous mode: the target's whole range generated at once (one 30-day scrape
        // history, ~2 GB of samples per target), then cut into the 18 h blocks.
        let mut whole: Vec<TestSeries> = if restart {
            Vec::new()
        } else {
            target_data(
                target,
                0,
                per_window * windows as usize,
                0,
                windows * window,
            )
        };
        for w in 0..windows {
            let start = w * window;
            let data = if restart {
                target_data(target, w, per_window, start, start + window)
            } else {
                whole
                    .iter()
                    .map(|s| {
                        let from = s.samples.partition_point(|x| x.t < start);
                        let to = s.samples.partition_point(|x| x.t < start + window);
                        TestSeries {
                            labels: s.labels.clone(),
                            kind: s.kind,
                            samples: s.samples[from..to].to_vec(),
                        }
                    })
                    .collect()
            };
            let t0 = Instant::now();
            let mut bw = BlockWriter::new(dir.path(), start, start + window).unwrap();
            bw.set_samples_per_chunk(COMPACTED_SAMPLES_PER_CHUNK);
            for s in &data {
                bw.add_samples(&s.labels, &s.samples).unwrap();
            }
            let meta = bw.finish().unwrap();
            t_write += t0.elapsed().as_secs_f64();
            if w == 0 {
                series += meta.stats.num_series;
            }
            samples += meta.stats.num_samples;
        }
        whole.clear();
        let t1 = Instant::now();
        let opts = DownsampleOptions {
            to_5m_after_ms: 0,
            to_1h_after_ms: 0,
        };
        downsample::run(dir.path(), windows * window, &opts).unwrap();
        t_ds += t1.elapsed().as_secs_f64();
        let (blocks, _) = open_blocks(dir.path()).unwrap();
        for b in &blocks {
            match b.meta().resolution {
                0 => raw += b.size_bytes(),
                RES_5M => (m5 += b.size_bytes(), n5 += 1).1,
                RES_1H => (h1 += b.size_bytes(), n1 += 1).1,
                r => panic!("resolution {r}"),
            }
        }
        for b in &blocks {
            delete_block(dir.path(), b.id()).unwrap();
        }
    }
    let pct = |x: u64| 100.0 * x as f64 / raw as f64;
    println!("series {series}, days {days}, raw samples {samples}");
    println!(
        "raw  {raw:>14} bytes  {:.3} bytes/sample",
        raw as f64 / samples as f64
    );
    println!("5m   {m5:>14} bytes  {:.1}% of raw ({n5} blocks)", pct(m5));
    println!("1h   {h1:>14} bytes  {:.1}% of raw ({n1} blocks)", pct(h1));
    println!("5m+1h {:.1}% on top of raw", pct(m5 + h1));
    println!(
        "write raw {t_write:.1}s, downsample {t_ds:.1}s ({:.1} M raw samples/s)",
        samples as f64 / t_ds / 1e6
    );
}
