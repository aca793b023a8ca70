//! CPU per Raft entry on a one-member group: `cargo run --release -p tidemark-cluster
//! --example entry_cost -- [entries] [series per entry] [series in all]` writes that many
//! entries (each a batch of that many one-sample series, taken in turn from all the series)
//! one after the other and prints the process CPU time per entry and per sample
//! (docs/benchmarks.md "Scrape write batching").
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failures abort it

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use tidemark_cluster::batch::BatchBuilder;
use tidemark_model::Labels;

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 12 and 13 here.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let entries = args.first().copied().unwrap_or(2000);
    let series = args.get(1).copied().unwrap_or(1);
    let total = args.get(2).copied().unwrap_or(series).max(series);
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let node = common::one_member_node(&rt, dir.path(), |_| {});
    let labels: Vec<Labels> = (0..total)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", "entry_cost_series".to_string()),
                ("instance", "127.0.0.1:9100".to_string()),
                ("job", "bench".to_string()),
                ("i", i.to_string()),
            ])
        })
        .collect();
    let rounds = total / series;
    let batch = |k: u64| {
        let mut b = BatchBuilder::new();
        let first = (k % rounds * series) as usize;
        for l in &labels[first..first + series as usize] {
            b.add(l, &[(k as i64 * 1000, k as f64)]);
        }
        b.finish()
    };
    // Warm up: the series exist before the measured entries.
    for k in 0..rounds {
        rt.block_on(node.write(vec![(0, batch(k))])).unwrap();
    }
    let (c0, t0) = (cpu_seconds(), Instant::now());
    for k in rounds..rounds + entries {
        rt.block_on(node.write(vec![(0, batch(k))])).unwrap();
    }
    let (cpu, wall) = (cpu_seconds() - c0, t0.elapsed().as_secs_f64());
    println!(
        "{entries} entries of {series} series ({total} in all): {:.1} µs CPU and {:.1} µs wall per entry, {:.2} µs CPU per sample",
        cpu * 1e6 / entries as f64,
        wall * 1e6 / entries as f64,
        cpu * 1e6 / (entries * series) as f64
    );
    rt.block_on(node.shutdown());
}
