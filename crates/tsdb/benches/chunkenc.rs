//! Chunk codec benchmarks on the node_exporter-like dataset (fixed seed), chunks of 120 samples
//! as the head cuts them. Prints bytes/sample per series kind before timing.
//!
//! `cargo bench -p tidemark-tsdb --bench chunkenc`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on failure by design

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidemark_model::Sample;
use tidemark_storage::SampleIter;
use tidemark_tsdb::chunk::{ChunkEncoder, ChunkIter, decode_all};
use tidemark_tsdb::testdata;

const CHUNK: usize = 120;

fn chunks() -> (Vec<Vec<Sample>>, Vec<&'static str>) {
    let mut out = Vec::new();
    let mut kinds = Vec::new();
    for s in testdata::bench_dataset() {
        for c in s.samples.chunks(CHUNK) {
            out.push(c.to_vec());
            kinds.push(s.kind);
        }
    }
    (out, kinds)
}

fn encode(c: &[Sample]) -> Vec<u8> {
    let mut enc = ChunkEncoder::new();
    for s in c {
        enc.append(s.t, s.v).unwrap();
    }
    enc.bytes()
}

fn report(raw: &[Vec<Sample>], kinds: &[&str], enc: &[Vec<u8>]) {
    let mut rows: Vec<(&str, usize, usize)> = Vec::new();
    for ((c, k), e) in raw.iter().zip(kinds).zip(enc) {
        match rows.iter_mut().find(|r| r.0 == *k) {
            Some(r) => {
                r.1 += c.len();
                r.2 += e.len();
            }
            None => rows.push((k, c.len(), e.len())),
        }
    }
    let total: (usize, usize) = rows.iter().fold((0, 0), |a, r| (a.0 + r.1, a.1 + r.2));
    rows.push(("all", total.0, total.1));
    eprintln!(
        "chunk codec on the testdata dataset ({} chunks of up to {CHUNK} samples):",
        raw.len()
    );
    for (k, n, b) in rows {
        eprintln!(
            "  {k:>10}: {n:>8} samples {b:>9} bytes {:.3} bytes/sample",
            b as f64 / n as f64
        );
    }
}

fn bench(c: &mut Criterion) {
    let (raw, kinds) = chunks();
    let enc: Vec<Vec<u8>> = raw.iter().map(|c| encode(c)).collect();
    report(&raw, &kinds, &enc);
    let samples: usize = raw.iter().map(Vec::len).sum();

    let mut g = c.benchmark_group("chunkenc");
    g.throughput(Throughput::Elements(samples as u64));
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for c in &raw {
                let mut enc = ChunkEncoder::new();
                for s in c {
                    enc.append(s.t, s.v).unwrap();
                }
                bytes += enc.size_bytes();
            }
            black_box(bytes)
        })
    });
    let mut out = Vec::with_capacity(CHUNK * 40);
    g.bench_function("decode_all", |b| {
        b.iter(|| {
            let mut n = 0;
            for e in &enc {
                out.clear();
                decode_all(e, &mut out).unwrap();
                n += out.len();
            }
            black_box(n)
        })
    });
    g.bench_function("iter", |b| {
        b.iter(|| {
            let mut acc = 0i64;
            for e in &enc {
                let mut it = ChunkIter::new(e).unwrap();
                while it.next() {
                    let s = it.at();
                    acc = acc.wrapping_add(s.t ^ s.v.to_bits() as i64);
                }
            }
            black_box(acc)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
