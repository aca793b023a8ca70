//! Range queries (2h at step 15s) over 10k series of 2h at 15s (4.8M samples), the four queries
//! of issue 3. Run: `cargo bench -p tidemark-promql --bench query`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tidemark_model::Labels;
use tidemark_promql::{Engine, EngineOptions, QueryParams};
use tidemark_storage::memory::MemStorage;

const STEP: i64 = 15_000;
const END: i64 = 2 * 3600 * 1000;

/// `m{job, instance}`: 10 jobs x 1000 instances; `b_bucket{instance, le}`: 100 instances x 10
/// buckets. Counters with a fixed-seed pseudo-random increase.
fn dataset() -> MemStorage {
    let s = MemStorage::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 100) as f64
    };
    for i in 0..10_000 {
        let l = Labels::from_pairs([
            ("__name__", "m".to_string()),
            ("job", format!("job{}", i % 10)),
            ("instance", format!("i{i:04}")),
        ]);
        let mut v = 0.0;
        for k in 0..=(END / STEP) {
            v += rnd();
            s.insert(l.clone(), k * STEP, v);
        }
    }
    let les = [
        "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "10", "50", "+Inf",
    ];
    for i in 0..100 {
        let mut v = vec![0.0; les.len()];
        let ls: Vec<Labels> = les
            .iter()
            .map(|le| {
                Labels::from_pairs([
                    ("__name__", "b_bucket".to_string()),
                    ("instance", format!("i{i:03}")),
                    ("le", le.to_string()),
                ])
            })
            .collect();
        for k in 0..=(END / STEP) {
            let mut acc = 0.0;
            for (b, l) in ls.iter().enumerate() {
                acc += rnd();
                v[b] += acc;
                s.insert(l.clone(), k * STEP, v[b]);
            }
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let s = dataset();
    let e = Engine::new(EngineOptions::default());
    let p = QueryParams::default();
    let mut g = c.benchmark_group("range_2h_step15s");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    for (name, q) in [
        ("sum_by_job_rate", "sum by (job) (rate(m[5m]))"),
        (
            "histogram_quantile",
            "histogram_quantile(0.99, sum by (le) (rate(b_bucket[5m])))",
        ),
        ("topk_rate", "topk(10, rate(m[5m]))"),
        ("regex_1000_series", r#"m{instance=~"i1..."}"#),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(e.range_query(&s, q, 0, END, STEP, &p).map(|r| r.value)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
