//! Tidemark's own metrics for `/metrics`, in the Prometheus text format.
//!
//! A small registry of atomics and mutex-guarded maps rather than a metrics crate: the set is
//! small and fixed, label sets are few (handler × code), rendering is a few dozen lines, and it
//! keeps the dependency tree (and the build time on our 2-core machines) small. Other crates add
//! their own text through [`crate::MetricsSource`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::json::push_float;

/// Upper bounds of the request duration histogram, seconds (Prometheus' own buckets).
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The API's metrics. One per [`crate::Api`].
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    pub(crate) samples_written: AtomicU64,
    pub(crate) exemplars_written: AtomicU64,
    pub(crate) metadata_written: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) import_samples: AtomicU64,
    queries: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub(crate) remote_read_queries: AtomicU64,
    pub(crate) connections_open: AtomicU64,
}

impl Metrics {
    pub(crate) fn observe_request(&self, handler: &str, code: u16, took: Duration) {
        *self
            .requests
            .lock()
            .entry((handler.to_string(), code))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut d = self.durations.lock();
        let h = d.entry(handler.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts samples rejected by remote write / import, by reason.
    pub(crate) fn rejected(&self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.rejected.lock().entry(reason).or_default() += n;
        }
    }

    /// Counts a query by kind (`instant`/`range`) and outcome (`success` or an errorType).
    pub(crate) fn query(&self, kind: &'static str, outcome: &'static str) {
        *self.queries.lock().entry((kind, outcome)).or_default() += 1;
    }

    /// Renders every metric in the text format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP tidemark_http_requests_total Requests answered by the HTTP API, by handler and status code.\n");
        out.push_str("# TYPE tidemark_http_requests_total counter\n");
        for ((h, c), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "tidemark_http_requests_total{{code=\"{c}\",handler=\"{h}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP tidemark_http_request_duration_seconds Time to answer HTTP API requests.\n",
        );
        out.push_str("# TYPE tidemark_http_request_duration_seconds histogram\n");
        for (h, hist) in self.durations.lock().iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = write!(
                    out,
                    "tidemark_http_request_duration_seconds_bucket{{handler=\"{h}\",le=\""
                );
                push_float(out, *b);
                let _ = writeln!(out, "\"}} {}", hist.counts[i]);
            }
            let _ = writeln!(
                out,
                "tidemark_http_request_duration_seconds_bucket{{handler=\"{h}\",le=\"+Inf\"}} {}",
                hist.count
            );
            let _ = write!(
                out,
                "tidemark_http_request_duration_seconds_sum{{handler=\"{h}\"}} "
            );
            push_float(out, hist.sum);
            out.push('\n');
            let _ = writeln!(
                out,
                "tidemark_http_request_duration_seconds_count{{handler=\"{h}\"}} {}",
                hist.count
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            out,
            "tidemark_remote_write_samples_total",
            "Samples written through remote write.",
            self.samples_written.load(Ordering::Relaxed),
        );
        counter(
            out,
            "tidemark_remote_write_exemplars_total",
            "Exemplars received through remote write.",
            self.exemplars_written.load(Ordering::Relaxed),
        );
        counter(
            out,
            "tidemark_remote_write_metadata_total",
            "Metadata entries received through remote write.",
            self.metadata_written.load(Ordering::Relaxed),
        );
        counter(
            out,
            "tidemark_import_samples_total",
            "Samples written through /api/v1/import.",
            self.import_samples.load(Ordering::Relaxed),
        );
        counter(
            out,
            "tidemark_remote_read_queries_total",
            "Remote read queries answered.",
            self.remote_read_queries.load(Ordering::Relaxed),
        );
        out.push_str("# HELP tidemark_ingest_rejected_samples_total Samples rejected by remote write or import, by reason.\n");
        out.push_str("# TYPE tidemark_ingest_rejected_samples_total counter\n");
        for (r, n) in self.rejected.lock().iter() {
            let _ = writeln!(
                out,
                "tidemark_ingest_rejected_samples_total{{reason=\"{r}\"}} {n}"
            );
        }
        out.push_str("# HELP tidemark_queries_total PromQL queries run through the HTTP API, by kind and outcome.\n");
        out.push_str("# TYPE tidemark_queries_total counter\n");
        for ((k, o), n) in self.queries.lock().iter() {
            let _ = writeln!(
                out,
                "tidemark_queries_total{{outcome=\"{o}\",type=\"{k}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tidemark_http_connections_open Open HTTP connections.\n# TYPE tidemark_http_connections_open gauge\ntidemark_http_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        render_process(out);
    }
}

/// `process_*` metrics from /proc (Linux), as every Prometheus client library exposes them.
fn render_process(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Linux reports 100 clock ticks per second (USER_HZ) and we build for 4 KiB pages; this
    // avoids a libc dependency for sysconf.
    let ticks = 100.0;
    let page = 4096.0;
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // rest[0] is field 3 (state): utime is field 14 -> index 11, stime 15 -> 12,
    // starttime 22 -> 19, vsize 23 -> 20, rss 24 -> 21.
    let cpu = (num(11) + num(12)) / ticks;
    let rss = num(21) * page;
    let vsize = num(20);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    let start = boot + num(19) / ticks;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let mut g = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} ");
        push_float(out, v);
        out.push('\n');
    };
    g(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        cpu,
    );
    g(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss,
    );
    g(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        vsize,
    );
    g(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        start,
    );
    g(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        fds as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::default();
        m.observe_request("/api/v1/query", 200, Duration::from_millis(20));
        m.observe_request("/api/v1/query", 400, Duration::from_millis(1));
        m.rejected("out_of_order", 3);
        let mut s = String::new();
        m.render(&mut s);
        assert!(
            s.contains("tidemark_http_requests_total{code=\"200\",handler=\"/api/v1/query\"} 1"),
            "{s}"
        );
        assert!(s.contains("tidemark_http_request_duration_seconds_bucket{handler=\"/api/v1/query\",le=\"0.025\"} 2"), "{s}");
        assert!(
            s.contains("tidemark_http_request_duration_seconds_count{handler=\"/api/v1/query\"} 2"),
            "{s}"
        );
        assert!(
            s.contains("tidemark_ingest_rejected_samples_total{reason=\"out_of_order\"} 3"),
            "{s}"
        );
        assert!(s.contains("process_resident_memory_bytes "), "{s}");
    }
}
