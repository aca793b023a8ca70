//! Criterion benchmarks: template expansion and one group evaluation (1000 input series, a
//! recording rule and an alerting rule) over the in-memory storage. Fixed data, no randomness.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tidemark_model::Labels;
use tidemark_promql::{Engine, EngineOptions};
use tidemark_rules::template::{self, TVal, TemplateData};
use tidemark_rules::{EvalContext, Group, GroupOptions, file};
use tidemark_storage::memory::MemStorage;

fn bench_template(c: &mut Criterion) {
    let src = "{{ $labels.instance }} of {{ $labels.job }} is down ({{ $value | humanize }}, {{ printf \"%.2f\" $value }})";
    let t = template::Template::parse(src).unwrap_or_else(|e| panic!("{e}"));
    let d = TemplateData {
        labels: TVal::from_labels([("instance", "host-17:9100"), ("job", "node")]),
        external_labels: TVal::from_labels([("cluster", "eu1")]),
        external_url: "http://tidemark:9190".into(),
        value: 1234567.0,
        query: None,
    };
    c.bench_function("template_parse", |b| {
        b.iter(|| template::Template::parse(black_box(src)))
    });
    c.bench_function("template_execute", |b| b.iter(|| t.execute(black_box(&d))));
}

fn bench_group(c: &mut Criterion) {
    let st = MemStorage::new();
    for i in 0..1000 {
        let inst = format!("host-{i}");
        let job = format!("job-{}", i % 10);
        let l = Labels::from_pairs([("__name__", "load"), ("instance", &inst), ("job", &job)]);
        for t in 0..10 {
            st.insert(l.clone(), t * 15_000, ((i * 7 + t) % 100) as f64 / 100.0);
        }
    }
    let f = file::parse(
        "groups:\n- name: g\n  rules:\n  - record: job:load:avg\n    expr: avg by (job) (load)\n  - alert: HighLoad\n    expr: load > 0.9\n    for: 1m\n    labels: {severity: warn}\n    annotations: {summary: '{{ $labels.instance }} load {{ $value | humanizePercentage }}'}\n",
        "bench.yml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions::default();
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    let mut g = Group::new("bench.yml", &f.groups[0], 15_000, 0);
    g.mark_restored();
    let mut ts = 135_000;
    c.bench_function("group_eval_1000_series", |b| {
        b.iter(|| {
            g.eval(&ctx, ts);
            ts += 1;
        })
    });
}

criterion_group!(benches, bench_template, bench_group);
criterion_main!(benches);
