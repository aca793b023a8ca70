//! The PromQL planner over downsampled data: a 30-day range query at a 1 h step, read from
//! downsampled data (`max_source_resolution=auto`) and from raw data (`raw`). Run by hand (not
//! part of `cargo test`):
//!
//! ```text
//! CARGO_TARGET_DIR=target cargo bench -p tidemark-tsdb --bench planner -- [targets] [days] [runs]
//! ```
//!
//! Defaults: 1 node_exporter-like target (`testdata::node_exporter`, ~780 series) × 30 days at
//! 15 s, seeded. The data is written as raw 18 h blocks with the compacted chunk size (what
//! compaction writes; the import path without HTTP), downsampled as the Db's maintenance does
//! with the default ages (5 m for blocks older than 40 h, 1 h for older than 10 d), and every raw
//! block is kept, so both modes read the whole 30 days. Each query runs `runs` times per mode
//! (alternating); the table shows the median wall time and the process CPU time of the runs
//! (user + system, all threads), and the samples the engine read.
//!
//! A fourth argument `batch` runs each query once per target (the selector restricted to that
//! target's `instance`) and adds up the times and samples: the forced-raw side of the issue's
//! scale (13 targets ≈ 10k series, 1.7 G samples) does not fit in memory in one query (range
//! inputs are materialised, ~16 B a sample), and both sides do per-series work, so the sum of the
//! batches is the cost of the whole query without its memory. `sum by` results are per batch
//! (not combined): only the times are of interest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: panics on failure by design

use std::time::Instant;

use tidemark_promql::{Engine, EngineOptions, MaxSourceResolution, QueryParams};
use tidemark_tsdb::block::BlockWriter;
use tidemark_tsdb::compact::COMPACTED_SAMPLES_PER_CHUNK;
use tidemark_tsdb::downsample::{self, DownsampleOptions};
use tidemark_tsdb::testdata::node_exporter;
use tidemark_tsdb::{Db, DbOptions};

/// One mode's runs: (mode, wall times, CPU times, samples read, resolutions used).
type Runs = (&'static str, Vec<f64>, Vec<f64>, u64, String);

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let targets: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(1);
    let days: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let batch = args.get(3).is_some_and(|a| a == "batch");
    let window: i64 = 18 * 3_600_000;
    let per_window = (window / 15_000) as usize;
    let windows = (days * 24 + 17) / 18;
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut samples = 0u64;
    let mut series = 0u64;
    for w in 0..windows {
        let start = w * window;
        let mut bw = BlockWriter::new(dir.path(), start, start + window).unwrap();
        bw.set_samples_per_chunk(COMPACTED_SAMPLES_PER_CHUNK);
        // Same seed per target in every window: the series continue (counters keep rising
        // from a fresh start each window, i.e. one reset per 18 h).
        let mut data = Vec::new();
        for target in 0..targets {
            let mut d = node_exporter(1, per_window, 0x5eed ^ target as u64, start);
            for s in &mut d {
                s.labels = s
                    .labels
                    .to_builder()
                    .set("instance", &format!("host-{target}:9100"))
                    .build();
                s.samples.retain(|x| x.t < start + window);
            }
            data.extend(d);
        }
        data.sort_by(|a, b| a.labels.cmp(&b.labels));
        for s in &data {
            bw.add_samples(&s.labels, &s.samples).unwrap();
        }
        let meta = bw.finish().unwrap();
        samples += meta.stats.num_samples;
        series = series.max(meta.stats.num_series);
    }
    let t_write = t0.elapsed().as_secs_f64();
    let newest = windows * window - 1;
    let t1 = Instant::now();
    downsample::run(dir.path(), newest, &DownsampleOptions::default()).unwrap();
    let t_ds = t1.elapsed().as_secs_f64();
    let db = Db::open(
        dir.path(),
        DbOptions {
            background_maintenance: false,
            downsampling: false,
            retention_time_ms: 0,
            retention_5m_ms: 0,
            retention_1h_ms: 0,
            ..DbOptions::default()
        },
    )
    .unwrap();
    let blocks = db.blocks();
    let count = |r: i64| blocks.iter().filter(|m| m.resolution == r).count();
    println!(
        "{series} series x {days} d at 15 s = {samples} samples; wrote {} raw blocks in {t_write:.1} s, \
         downsampled ({} 5m, {} 1h blocks) in {t_ds:.1} s",
        count(0),
        count(downsample::RES_5M),
        count(downsample::RES_1H),
    );
    let engine = Engine::new(EngineOptions {
        max_samples: usize::MAX,
        timeout: std::time::Duration::from_secs(3600),
        ..EngineOptions::default()
    });
    let (start, end, step) = (newest - days * 86_400_000 + 1, newest, 3_600_000);
    // Per batch, `@` becomes `{instance="…"}` and `#` becomes `,instance="…"` (else nothing).
    let queries = [
        "sum by (mode) (rate(node_cpu_seconds_total@[1h]))",
        "rate(node_cpu_seconds_total@[1h])",
        "{__name__=~\".+\"#}",
        "max_over_time(node_filesystem_avail_bytes@[1h])",
    ];
    let batches: Vec<String> = if batch {
        (0..targets)
            .map(|t| format!("instance=\"host-{t}:9100\""))
            .collect()
    } else {
        vec![String::new()]
    };
    println!("| query | mode | wall (median) | CPU | samples read | info |");
    println!("|---|---|---|---|---|---|");
    for q in queries {
        let mut results: Vec<Runs> = ["auto", "raw"]
            .into_iter()
            .map(|m| (m, Vec::new(), Vec::new(), 0, String::new()))
            .collect();
        for _ in 0..runs {
            for (k, msr) in [MaxSourceResolution::Auto, MaxSourceResolution::Raw]
                .into_iter()
                .enumerate()
            {
                let p = QueryParams {
                    max_source_resolution: Some(msr),
                    stats: true,
                    ..QueryParams::default()
                };
                let (mut wall, mut cpu, mut read) = (0.0, 0.0, 0);
                let mut infos = Vec::new();
                for extra in &batches {
                    let (named, more) = if extra.is_empty() {
                        (String::new(), String::new())
                    } else {
                        (format!("{{{extra}}}"), format!(",{extra}"))
                    };
                    let query = q.replace('@', &named).replace('#', &more);
                    let (c0, w0) = (cpu_seconds(), Instant::now());
                    let r = engine
                        .range_query(&db, &query, start, end, step, &p)
                        .unwrap();
                    wall += w0.elapsed().as_secs_f64();
                    cpu += cpu_seconds() - c0;
                    read += r
                        .stats
                        .as_ref()
                        .map_or(0, |s| s.samples.total_queryable_samples);
                    infos = r.infos;
                }
                let e = &mut results[k];
                e.1.push(wall);
                e.2.push(cpu);
                e.3 = read;
                e.4 = infos
                    .iter()
                    .find(|i| i.contains("downsampled"))
                    .and_then(|i| i.split(": ").nth(2))
                    .map(|s| s.split(" (").next().unwrap_or("").to_string())
                    .unwrap_or_else(|| "raw".into());
            }
        }
        let q = q.replace(['@', '#'], "");
        for (mode, mut wall, mut cpu, read, info) in results {
            wall.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            println!(
                "| `{q}` | {mode} | {:.3} s | {:.3} s | {read} | {info} |",
                wall[wall.len() / 2],
                cpu[cpu.len() / 2]
            );
        }
    }
}
