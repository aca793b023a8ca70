//! CPU time (not wall time: the shared machine is loaded) of the parser and the scrape append
//! step over a fixed number of iterations.
//! Run: `cargo run --release -p tidemark-scrape --example scrape_cpu`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tidemark_model::Labels;
use tidemark_scrape::bench_support::ScrapeBench;
use tidemark_scrape::parse::{EntryKind, Format, Parser};
use tidemark_storage::{Appender, SeriesRef};

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
    fn commit(&mut self) -> tidemark_storage::Result<()> {
        Ok(())
    }
    fn rollback(&mut self) -> tidemark_storage::Result<()> {
        Ok(())
    }
}

/// Same body as benches/parse.rs: 400 families x 25 series, node_exporter-like.
fn body() -> String {
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
    s
}

/// User + system CPU seconds of this thread (from /proc; 10 ms resolution).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let b = body();
    let samples = 10_000.0;
    let iters = 1000;
    let mb = b.len() as f64 * iters as f64 / 1e6;

    let t = cpu_seconds();
    for _ in 0..iters {
        let mut p = Parser::new(black_box(b.as_bytes()), Format::PrometheusText).unwrap();
        while let Some(e) = p.next_entry() {
            if e.unwrap() == EntryKind::Sample {
                black_box((p.series(), p.value()));
            }
        }
    }
    let parse = cpu_seconds() - t;
    println!(
        "parse (streaming, text):      {:7.1} MB/s per core, {:6.1} ns/sample",
        mb / parse,
        parse * 1e9 / (samples * iters as f64)
    );

    let t = cpu_seconds();
    for _ in 0..iters / 4 {
        let mut p = Parser::new(black_box(b.as_bytes()), Format::PrometheusText).unwrap();
        while let Some(e) = p.next_entry() {
            if e.unwrap() == EntryKind::Sample {
                black_box(p.labels().unwrap());
            }
        }
    }
    let labels = cpu_seconds() - t;
    println!(
        "parse + build every Labels:   {:7.1} MB/s per core",
        mb / 4.0 / labels
    );

    let target = Labels::from_pairs([("job", "node"), ("instance", "host:9100")]);
    let mut sb = ScrapeBench::new();
    let mut app = NullAppender(0);
    sb.append(&mut app, b.as_bytes(), 0, &target).unwrap();
    let t = cpu_seconds();
    for i in 0..iters {
        sb.append(
            &mut app,
            black_box(b.as_bytes()),
            (i as i64 + 1) * 15_000,
            &target,
        )
        .unwrap();
    }
    let append = cpu_seconds() - t;
    println!(
        "scrape append, warm cache:    {:7.1} ns/sample = {:.3} CPU-s per million samples (storage excluded)",
        append * 1e9 / (samples * iters as f64),
        append * 1e6 / (samples * iters as f64)
    );
}
