//! Block benchmarks on the node_exporter-like dataset (fixed seed): 2 targets (~1560 series) x
//! 12 h at 15 s. Prints bytes/sample on disk (index + chunks + meta.json) for the 2 h blocks
//! the head cuts (120-sample chunks) and after compaction with several chunk sizes, then times
//! writing a 2 h block, compacting three 2 h blocks into 6 h, and reading a whole block.
//!
//! `cargo bench -p tidemark-tsdb --bench block`
//!
//! With `TIDEMARK_OPENMETRICS_OUT=<file>` it also writes the dataset as OpenMetrics text, for
//! `promtool tsdb create-blocks-from openmetrics <file> <dir>` (the Prometheus comparison in
//! docs/benchmarks.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on failure by design

use std::hint::black_box;
use std::io::Write;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidemark_tsdb::block::{Block, BlockMeta, BlockWriter, open_blocks};
use tidemark_tsdb::compact::{self, CompactOptions};
use tidemark_tsdb::testdata::{self, TestSeries};

const H: i64 = 3600 * 1000;
const START: i64 = 1_700_000_000_000 / (2 * H) * (2 * H);

fn dataset() -> Vec<TestSeries> {
    let mut d = testdata::node_exporter(2, 2880, 0x71de_6d61_726b_u64, START);
    d.sort_by(|a, b| a.labels.cmp(&b.labels));
    d
}

/// Writes the dataset as 2 h blocks (chunks of 120 samples, as cut from the head).
fn write_level1(dir: &Path, data: &[TestSeries]) -> Vec<BlockMeta> {
    let end = data
        .iter()
        .filter_map(|s| s.samples.last())
        .map(|s| s.t)
        .max()
        .unwrap_or(START);
    let mut metas = Vec::new();
    let mut mint = START;
    while mint <= end {
        let maxt = mint + 2 * H;
        let mut w = BlockWriter::new(dir, mint, maxt).unwrap();
        for s in data {
            let lo = s.samples.partition_point(|x| x.t < mint);
            let hi = s.samples.partition_point(|x| x.t < maxt);
            w.add_samples(&s.labels, &s.samples[lo..hi]).unwrap();
        }
        metas.push(w.finish().unwrap());
        mint = maxt;
    }
    metas
}

/// Bytes of chunk data (without the segment records' framing) in the blocks of `dir`.
fn chunk_data_bytes(dir: &Path) -> u64 {
    let (blocks, _) = open_blocks(dir).unwrap();
    let mut total = 0u64;
    for b in &blocks {
        let r = tidemark_tsdb::chunks::SegmentReader::open(b.dir().join("chunks")).unwrap();
        for seq in r.segments() {
            for c in r.iter_segment(seq).unwrap() {
                total += c.unwrap().len as u64;
            }
        }
    }
    total
}

fn disk_per_sample(dir: &Path) -> (f64, u64, usize) {
    let (blocks, _) = open_blocks(dir).unwrap();
    let bytes: u64 = blocks.iter().map(Block::size_bytes).sum();
    let samples: u64 = blocks.iter().map(|b| b.meta().stats.num_samples).sum();
    (bytes as f64 / samples as f64, samples, blocks.len())
}

fn sizes(data: &[TestSeries]) {
    let dir = tempfile::tempdir().unwrap();
    write_level1(dir.path(), data);
    let (bps, samples, n) = disk_per_sample(dir.path());
    let (blocks, _) = open_blocks(dir.path()).unwrap();
    let index: u64 = blocks.iter().map(|b| b.index().size_bytes()).sum();
    println!(
        "level-1 (2h, 120-sample chunks): {n} blocks, {samples} samples, {bps:.3} bytes/sample on disk \
         (chunk data {:.3}, index {:.3})",
        chunk_data_bytes(dir.path()) as f64 / samples as f64,
        index as f64 / samples as f64
    );
    drop(blocks);
    for spc in [120usize, 480, 1024, 4096] {
        let dir = tempfile::tempdir().unwrap();
        write_level1(dir.path(), data);
        let opts = CompactOptions {
            samples_per_chunk: spc,
            ..CompactOptions::default()
        };
        compact::run(dir.path(), &opts).unwrap();
        let (bps, samples, n) = disk_per_sample(dir.path());
        println!(
            "compacted (ranges 2h/6h/18h, {spc}-sample chunks): {n} blocks, {bps:.3} bytes/sample on disk \
             (chunk data {:.3})",
            chunk_data_bytes(dir.path()) as f64 / samples as f64
        );
    }
}

fn write_openmetrics(data: &[TestSeries], path: &str) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    // OpenMetrics wants a family's samples together; timestamps in seconds.
    for s in data {
        let name = s.labels.metric_name().unwrap_or("unknown");
        let labels: Vec<String> = s
            .labels
            .iter()
            .filter(|l| l.name != "__name__")
            .map(|l| format!("{}=\"{}\"", l.name, l.value))
            .collect();
        for x in &s.samples {
            let v = match x.v {
                v if v.is_nan() => "NaN".to_string(),
                v if v == f64::INFINITY => "+Inf".to_string(),
                v if v == f64::NEG_INFINITY => "-Inf".to_string(),
                v => format!("{v:?}"),
            };
            writeln!(
                out,
                "{name}{{{}}} {v} {}.{:03}",
                labels.join(","),
                x.t / 1000,
                x.t % 1000
            )
            .unwrap();
        }
    }
    writeln!(out, "# EOF").unwrap();
}

fn bench(c: &mut Criterion) {
    let data = dataset();
    if let Ok(path) = std::env::var("TIDEMARK_OPENMETRICS_OUT") {
        write_openmetrics(&data, &path);
    }
    sizes(&data);

    let two_h: Vec<TestSeries> = data
        .iter()
        .map(|s| TestSeries {
            labels: s.labels.clone(),
            kind: s.kind,
            samples: s
                .samples
                .iter()
                .copied()
                .filter(|x| x.t < START + 2 * H)
                .collect(),
        })
        .collect();
    let n2: u64 = two_h.iter().map(|s| s.samples.len() as u64).sum();
    let mut g = c.benchmark_group("block");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n2));
    g.bench_function("write_2h_block", |b| {
        let dir = tempfile::tempdir().unwrap();
        b.iter(|| {
            let mut w = BlockWriter::new(dir.path(), START, START + 2 * H).unwrap();
            for s in &two_h {
                w.add_samples(&s.labels, &s.samples).unwrap();
            }
            let m = w.finish().unwrap();
            tidemark_tsdb::block::delete_block(dir.path(), &m.id).unwrap();
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let six_h: Vec<TestSeries> = data
        .iter()
        .map(|s| TestSeries {
            labels: s.labels.clone(),
            kind: s.kind,
            samples: s
                .samples
                .iter()
                .copied()
                .filter(|x| x.t < START + 6 * H)
                .collect(),
        })
        .collect();
    write_level1(dir.path(), &six_h);
    let (blocks, _) = open_blocks(dir.path()).unwrap();
    let n6: u64 = blocks.iter().map(|b| b.meta().stats.num_samples).sum();
    g.throughput(Throughput::Elements(n6));
    g.bench_function("compact_3x2h_to_6h", |b| {
        let out = tempfile::tempdir().unwrap();
        let refs: Vec<&Block> = blocks.iter().collect();
        b.iter(|| {
            let m =
                compact::write_compacted(out.path(), &refs, compact::COMPACTED_SAMPLES_PER_CHUNK)
                    .unwrap();
            tidemark_tsdb::block::delete_block(out.path(), &m.id).unwrap();
        })
    });

    let block = blocks[0].clone();
    g.throughput(Throughput::Elements(block.meta().stats.num_samples));
    g.bench_function("read_2h_block_all_series", |b| {
        b.iter(|| {
            let q = block.querier(i64::MIN, i64::MAX);
            let mut n = 0u64;
            let mut sum = 0.0;
            for s in q.select(true, None, &[]) {
                let s = s.unwrap();
                let mut it = s.iter();
                while it.next() {
                    n += 1;
                    sum += it.at().v;
                }
            }
            black_box((n, sum))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
