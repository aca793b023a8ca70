//! Exposition parser throughput (bytes of exposition text per second, one core).
//! Run: `cargo bench -p tidemark-scrape --bench parse`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tidemark_model::{Labels, Metadata};
use tidemark_scrape::bench_support::ScrapeBench;
use tidemark_scrape::parse::{EntryKind, Format, Parser};
use tidemark_storage::{Appender, SeriesRef};

/// An appender that only counts: isolates the scraper's own cost from the storage's.
struct NullAppender(u64);

impl Appender for NullAppender {
    fn append(
        &mut self,
        r: Option<SeriesRef>,
        _l: &Labels,
        _t: i64,
        _v: f64,
    ) -> tidemark_storage::Result<SeriesRef> {
        self.0 += 1;
        Ok(r.unwrap_or(SeriesRef(self.0)))
    }
    fn update_metadata(
        &mut self,
        _s: SeriesRef,
        _l: &Labels,
        _m: &Metadata,
    ) -> tidemark_storage::Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> tidemark_storage::Result<()> {
        Ok(())
    }
    fn rollback(&mut self) -> tidemark_storage::Result<()> {
        Ok(())
    }
}

/// A node_exporter-like body: families with HELP/TYPE, 1-4 labels, mixed values.
fn body(om: bool) -> String {
    let mut rng = StdRng::seed_from_u64(42);
    let mut s = String::new();
    for f in 0..400 {
        let name = format!("node_subsystem_{f}_metric_total");
        s.push_str(&format!(
            "# HELP {name} Help text for family number {f}.\n# TYPE {name} counter\n"
        ));
        for i in 0..25 {
            let v: f64 = rng.random::<f64>() * 1e6;
            match i % 4 {
                0 => s.push_str(&format!("{name}{{cpu=\"{i}\",mode=\"idle\"}} {v}\n")),
                1 => s.push_str(&format!(
                    "{name}{{device=\"sda{i}\",fstype=\"ext4\",mountpoint=\"/var/lib/x\"}} {:.0}\n",
                    v
                )),
                2 => s.push_str(&format!("{name}{{cpu=\"{i}\"}} {v:e}\n")),
                _ => s.push_str(&format!(
                    "{name}{{collector=\"c{i}\",a=\"b\",c=\"d\",e=\"f\"}} {}\n",
                    v as u64
                )),
            }
        }
    }
    if om {
        s.push_str("# EOF\n");
    }
    s
}

fn run(b: &[u8], f: Format) -> usize {
    let mut p = Parser::new(b, f).unwrap();
    let mut n = 0usize;
    while let Some(e) = p.next_entry() {
        if e.unwrap() == EntryKind::Sample {
            n += p.series().len();
            black_box(p.value());
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, f) in [
        ("prometheus_text", Format::PrometheusText),
        ("openmetrics", Format::OpenMetrics),
    ] {
        let b = body(f == Format::OpenMetrics);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(name, |bench| bench.iter(|| run(black_box(b.as_bytes()), f)));
    }
    // Cache-miss path: every sample also builds its Labels.
    let b = body(false);
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("prometheus_text_with_labels", |bench| {
        bench.iter(|| {
            let mut p = Parser::new(black_box(b.as_bytes()), Format::PrometheusText).unwrap();
            let mut n = 0;
            while let Some(e) = p.next_entry() {
                if e.unwrap() == EntryKind::Sample {
                    n += p.labels().unwrap().len();
                }
            }
            n
        })
    });
    // The scrape append step in steady state (cache warm): parse, cache lookup, append,
    // staleness bookkeeping. Throughput in samples (10,000 per body).
    let b = body(false);
    let target = Labels::from_pairs([("job", "node"), ("instance", "host:9100")]);
    let mut sb = ScrapeBench::new();
    let mut app = NullAppender(0);
    let n = sb.append(&mut app, b.as_bytes(), 0, &target).unwrap();
    g.throughput(Throughput::Elements(n));
    let mut ts = 0;
    g.bench_function("scrape_append_steady_state", |bench| {
        bench.iter(|| {
            ts += 15_000;
            sb.append(&mut app, black_box(b.as_bytes()), ts, &target)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
