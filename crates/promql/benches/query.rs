//! Range queries (2h at step 15s) over 10k series of 2h at 15s (4.8M samples), the four queries
//! of issue 3. Run: `cargo bench -p tidemark-promql --bench query`.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
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

/// CPU time of the whole process (all pool threads), in nanoseconds: steadier than wall time
/// on a machine shared with other builds.
struct CpuTime;

fn cpu_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        for v in values {
            *v /= 1e6;
        }
        "ms CPU"
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        _t: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        for v in values {
            *v /= 1e6;
        }
        "ms CPU"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        cpu_now_ns()
    }
    fn end(&self, i: u64) -> u64 {
        cpu_now_ns().saturating_sub(i)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

const QUERIES: [(&str, &str); 4] = [
    ("sum_by_job_rate", "sum by (job) (rate(m[5m]))"),
    (
        "histogram_quantile",
        "histogram_quantile(0.99, sum by (le) (rate(b_bucket[5m])))",
    ),
    ("topk_rate", "topk(10, rate(m[5m]))"),
    ("regex_1000_series", r#"m{instance=~"i1..."}"#),
];

fn run<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let s = dataset();
    let e = Engine::new(EngineOptions::default());
    let p = QueryParams::default();
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    for (name, q) in QUERIES {
        g.bench_function(name, |b| {
            b.iter(|| black_box(e.range_query(&s, q, 0, END, STEP, &p).map(|r| r.value)))
        });
    }
    g.finish();
}

fn wall(c: &mut Criterion) {
    run(c, "range_2h_step15s");
}

fn cpu(c: &mut Criterion<CpuTime>) {
    run(c, "range_2h_step15s_cpu");
}

criterion_group!(wall_benches, wall);
criterion_group! {
    name = cpu_benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = cpu
}
criterion_main!(wall_benches, cpu_benches);
