//! Chunk codec benchmarks on the node_exporter-like dataset (fixed seed), chunks of 120 samples
//! as the head cuts them. Prints bytes/sample per series kind before timing.
//!
//! `cargo bench -p tidemark-tsdb --bench chunkenc`
//!
//! Before criterion runs, it also prints the best thread-CPU time per sample over repeated runs of
//! each operation: on a machine shared with other jobs that figure is steadier than wall time.
//! `CHUNKENC_ONLY_CPU=1` prints just that (and the sizes); `CHUNKENC_ONESHOT=decode_all|iter|encode`
//! runs one pass over the dataset and exits (for instruction counts under `valgrind --tool=cachegrind`);
//! `CHUNKENC_ONLY_SIZE=1` prints the sizes only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on failure by design

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
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

/// Size in bytes of the same chunk in Prometheus' XOR encoding (header, delta-of-delta
/// timestamps with its 14/17/20-bit buckets, XOR values), computed bit for bit without encoding.
fn prometheus_xor_bytes(c: &[Sample]) -> usize {
    let mut bits = 16; // 2-byte sample count
    let (mut pl, mut pt) = (u32::MAX, 0u32);
    let mut prev_delta = 0i64;
    for (i, s) in c.iter().enumerate() {
        if i == 0 {
            bits += 8 * varint_len(s.t) + 64;
            continue;
        }
        let delta = s.t - c[i - 1].t;
        if i == 1 {
            bits += 8 * varint_len(delta);
        } else {
            let dod = delta - prev_delta;
            bits += match dod {
                0 => 1,
                -8191..=8192 => 2 + 14,
                -65535..=65536 => 3 + 17,
                -524287..=524288 => 4 + 20,
                _ => 4 + 64,
            };
        }
        prev_delta = delta;
        let x = s.v.to_bits() ^ c[i - 1].v.to_bits();
        if x == 0 {
            bits += 1;
            continue;
        }
        let l = x.leading_zeros().min(31);
        let t = x.trailing_zeros();
        if pl != u32::MAX && l >= pl && t >= pt {
            bits += 2 + (64 - pl - pt) as usize;
        } else {
            bits += 2 + 5 + 6 + (64 - l - t) as usize;
            pl = l;
            pt = t;
        }
    }
    bits.div_ceil(8)
}

fn varint_len(x: i64) -> usize {
    let mut z = ((x << 1) ^ (x >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

/// The `ts_len` field of a chunk header (docs/format/chunks.md).
fn timestamp_stream_len(chunk: &[u8]) -> usize {
    let mut fields = [0usize; 2];
    let mut pos = 1;
    for f in &mut fields {
        let mut shift = 0;
        while let Some(&b) = chunk.get(pos) {
            pos += 1;
            *f |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
    }
    fields[1]
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
    let ts_bytes: usize = enc.iter().map(|e| timestamp_stream_len(e)).sum();
    eprintln!(
        "  timestamp streams: {:.3} bits/sample (value streams and headers: the rest)",
        ts_bytes as f64 * 8.0 / total.0 as f64
    );
    let prom: usize = raw.iter().map(|c| prometheus_xor_bytes(c)).sum();
    let aligned: usize = raw
        .iter()
        .map(|c| {
            let a: Vec<Sample> = c
                .iter()
                .map(|s| Sample::new(s.t - s.t.rem_euclid(15_000), s.v))
                .collect();
            prometheus_xor_bytes(&a)
        })
        .sum();
    eprintln!(
        "  Prometheus XOR chunks on the same data: {:.3} bytes/sample ({:.3} with timestamps aligned to the 15 s grid)",
        prom as f64 / total.0 as f64,
        aligned as f64 / total.0 as f64
    );
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Best thread-CPU ns per sample of `f` over runs for about `budget_ms` of CPU time.
fn best_cpu(samples: usize, budget_ms: u64, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = u64::MAX;
    let begin = thread_cpu_ns();
    while thread_cpu_ns() - begin < budget_ms * 1_000_000 {
        let t0 = thread_cpu_ns();
        black_box(f());
        best = best.min(thread_cpu_ns() - t0);
    }
    best as f64 / samples as f64
}

fn op_encode(raw: &[Vec<Sample>]) -> usize {
    let mut bytes = 0;
    for c in raw {
        let mut enc = ChunkEncoder::new();
        for s in c {
            enc.append(s.t, s.v).unwrap();
        }
        bytes += enc.size_bytes();
    }
    bytes
}

fn op_decode_all(enc: &[Vec<u8>], out: &mut Vec<Sample>) -> usize {
    let mut n = 0;
    for e in enc {
        out.clear();
        decode_all(e, out).unwrap();
        n += out.len();
    }
    n
}

fn op_iter(enc: &[Vec<u8>]) -> usize {
    let mut acc = 0i64;
    for e in enc {
        let mut it = ChunkIter::new(e).unwrap();
        while it.next() {
            let s = it.at();
            acc = acc.wrapping_add(s.t ^ s.v.to_bits() as i64);
        }
    }
    acc as usize
}

fn bench(c: &mut Criterion) {
    let (raw, kinds) = chunks();
    let enc: Vec<Vec<u8>> = raw.iter().map(|c| encode(c)).collect();
    let samples: usize = raw.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(CHUNK * 40);
    if let Ok(op) = std::env::var("CHUNKENC_ONESHOT") {
        let r = match op.as_str() {
            "encode" => op_encode(&raw),
            "decode_all" => op_decode_all(&enc, &mut out),
            "none" => 0,
            _ => op_iter(&enc),
        };
        eprintln!("{op}: one pass over {samples} samples ({r})");
        return;
    }
    report(&raw, &kinds, &enc);
    if std::env::var_os("CHUNKENC_ONLY_SIZE").is_some() {
        return;
    }
    eprintln!(
        "best thread-CPU time: encode {:.2} ns/sample, decode_all {:.2} ns/sample, iter {:.2} ns/sample",
        best_cpu(samples, 2000, || op_encode(&raw)),
        best_cpu(samples, 2000, || op_decode_all(&enc, &mut out)),
        best_cpu(samples, 2000, || op_iter(&enc)),
    );
    if std::env::var_os("CHUNKENC_ONLY_CPU").is_some() {
        return;
    }

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

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
