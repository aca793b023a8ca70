//! A deterministic, node_exporter-like dataset for benchmarks and tests (not part of the API).
//!
//! Each *target* is one host scraped every 15 s. Its ~520 series share the scrape timestamps, which
//! carry the millisecond jitter of real scrapes (most 0–2 ms late, a few up to 50 ms, one scrape
//! in a thousand missed). Values are produced the way exposition text produces them: decimal
//! numbers parsed into f64 (CPU seconds with 2 decimals, byte counts in multiples of 1024/4096,
//! collector durations with 9 decimals), plus the full-precision floats real exporters also emit
//! (histogram `_sum`, `node_time_seconds`, GC quantiles). The mix, per target:
//!
//! | family | series | behaviour |
//! | --- | --- | --- |
//! | node_cpu_seconds_total | 64 | counters, 2 decimals; idle/user/system move every scrape, steal/nice/irq stay 0 |
//! | node_memory_*_bytes | 40 | 15 constant, 25 random walks in 4 KiB steps |
//! | node_network_*_total | 48 | 3 devices; bytes/packets move, errs/drop/fifo/... mostly stay 0 |
//! | node_disk_* | 51 | 3 devices; ops and bytes counters, io_time with 3 decimals, discards 0 |
//! | node_filesystem_* | 35 | 5 mounts; sizes constant, avail/free slow 4 KiB walks, files_free small steps |
//! | node_vmstat/netstat/sockstat | 60 | integer counters of varied rates, small gauges |
//! | node_load1/5/15 | 3 | 2-decimal gauges |
//! | node_scrape_collector_* | 80 | duration gauges with 9 decimals (40), success = 1 (40) |
//! | go_* / process_* | 30 | GC quantiles (full precision), goroutines, memstats, cpu seconds |
//! | http_request_duration_seconds | 56 | classic histogram: 4 handlers x (12 `_bucket` + `_sum` + `_count`) |
//! | constants | 5 | `*_info`, boot time, `node_time_seconds` (full precision) |

use tidemark_model::{Labels, Sample};

/// SplitMix64: tiny, fast, and stable forever (unlike a library RNG whose algorithm may change).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// Roughly normal (Irwin–Hall of 4 uniforms), mean 0, standard deviation 1.
    pub fn normal(&mut self) -> f64 {
        (self.f64() + self.f64() + self.f64() + self.f64() - 2.0) * 1.732_050_8
    }
    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }
}

/// One generated series.
#[derive(Debug, Clone)]
pub struct TestSeries {
    pub labels: Labels,
    /// "counter", "gauge" or "histogram".
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

/// How one series' value evolves, in integer units of `10^-e` where decimal.
#[derive(Debug, Clone)]
enum Process {
    Const(f64),
    /// Counter in units of 10^-e: each scrape adds round(max(0, mean + sd*normal)) with
    /// probability `p`.
    Counter {
        m: i64,
        e: i32,
        mean: f64,
        sd: f64,
        p: f64,
    },
    /// Random walk in steps of `unit` (in 10^-e units) within [lo, hi].
    Walk {
        m: i64,
        e: i32,
        unit: i64,
        sd: f64,
        p: f64,
        lo: i64,
        hi: i64,
    },
    /// A new value around `mean` (x(1 ± spread)) with `digits` decimals each time it changes.
    Jumpy {
        mean: f64,
        spread: f64,
        digits: i32,
        p: f64,
        cur: f64,
    },
    /// Full-precision float: `base + rate * elapsed seconds` (like `node_time_seconds`).
    Clock {
        base: f64,
        rate: f64,
    },
}

impl Process {
    fn value(&mut self, rng: &mut Rng, elapsed_s: f64) -> f64 {
        match self {
            Process::Const(v) => *v,
            Process::Counter { m, e, mean, sd, p } => {
                if rng.chance(*p) {
                    *m += (*mean + *sd * rng.normal()).max(0.0).round() as i64;
                }
                *m as f64 / 10f64.powi(*e)
            }
            Process::Walk {
                m,
                e,
                unit,
                sd,
                p,
                lo,
                hi,
            } => {
                if rng.chance(*p) {
                    *m = (*m + (*sd * rng.normal()).round() as i64 * *unit).clamp(*lo, *hi);
                }
                *m as f64 / 10f64.powi(*e)
            }
            Process::Jumpy {
                mean,
                spread,
                digits,
                p,
                cur,
            } => {
                if rng.chance(*p) || *cur == 0.0 {
                    let x = *mean * (1.0 + *spread * (2.0 * rng.f64() - 1.0));
                    let s = 10f64.powi(*digits);
                    *cur = (x * s).round() / s;
                }
                *cur
            }
            Process::Clock { base, rate } => *base + *rate * elapsed_s + rng.f64() * 1e-3,
        }
    }
}

struct Spec {
    labels: Labels,
    kind: &'static str,
    process: Process,
}

fn labels(target: usize, name: &str, extra: &[(&str, &str)]) -> Labels {
    let inst = format!("host-{target:03}:9100");
    let mut pairs: Vec<(&str, &str)> =
        vec![("__name__", name), ("instance", &inst), ("job", "node")];
    pairs.extend_from_slice(extra);
    Labels::from_pairs(pairs)
}

fn counter(m: i64, e: i32, mean: f64, sd: f64, p: f64) -> Process {
    Process::Counter { m, e, mean, sd, p }
}

fn walk(m: i64, unit: i64, sd: f64, p: f64) -> Process {
    Process::Walk {
        m,
        e: 0,
        unit,
        sd,
        p,
        lo: 0,
        hi: m * 2,
    }
}

/// The series of one target (without the histogram, which is generated jointly).
fn target_specs(target: usize, rng: &mut Rng) -> Vec<Spec> {
    let mut s = Vec::new();
    let mut add = |name: &str, extra: &[(&str, &str)], kind: &'static str, process: Process| {
        s.push(Spec {
            labels: labels(target, name, extra),
            kind,
            process,
        });
    };
    let big = |rng: &mut Rng, n: i64| n + rng.below(n as u64) as i64;

    for cpu in 0..8 {
        let c = cpu.to_string();
        for (mode, mean, sd, p) in [
            ("idle", 1200.0, 60.0, 1.0),
            ("user", 150.0, 50.0, 1.0),
            ("system", 50.0, 15.0, 1.0),
            ("iowait", 5.0, 4.0, 0.8),
            ("irq", 0.0, 0.0, 0.0),
            ("softirq", 2.0, 2.0, 0.6),
            ("steal", 0.0, 0.0, 0.0),
            ("nice", 0.3, 0.5, 0.05),
        ] {
            let m = big(rng, 10_000_000) * (mean as i64 + 1) / 100;
            add(
                "node_cpu_seconds_total",
                &[("cpu", &c), ("mode", mode)],
                "counter",
                counter(m, 2, mean, sd, p),
            );
        }
    }
    for i in 0..50 {
        let name = format!("node_memory_M{i:02}_bytes");
        let p = if i < 30 {
            Process::Const((big(rng, 1 << 20) * 4096) as f64)
        } else {
            walk(big(rng, 1 << 18) * 4096, 4096, 60.0, 0.7)
        };
        add(&name, &[], "gauge", p);
    }
    for dev in ["eth0", "lo", "docker0"] {
        let scale = match dev {
            "eth0" => 1.0,
            "lo" => 0.2,
            _ => 0.01,
        };
        for dir in ["receive", "transmit"] {
            add(
                &format!("node_network_{dir}_bytes_total"),
                &[("device", dev)],
                "counter",
                counter(big(rng, 1 << 36), 0, 4e5 * scale, 3e5 * scale, 1.0),
            );
            add(
                &format!("node_network_{dir}_packets_total"),
                &[("device", dev)],
                "counter",
                counter(big(rng, 1 << 26), 0, 600.0 * scale, 300.0 * scale, 1.0),
            );
            for (k, p) in [
                ("errs", 0.002),
                ("drop", 0.01),
                ("fifo", 0.0),
                ("frame", 0.0),
                ("compressed", 0.0),
                ("multicast", 0.05),
            ] {
                add(
                    &format!("node_network_{dir}_{k}_total"),
                    &[("device", dev)],
                    "counter",
                    counter(rng.below(50) as i64, 0, 2.0, 1.0, p),
                );
            }
        }
    }
    for dev in ["sda", "sdb", "nvme0n1"] {
        for (k, e, mean, sd, p) in [
            ("reads_completed_total", 0, 20.0, 15.0, 0.9),
            ("writes_completed_total", 0, 80.0, 40.0, 1.0),
            ("read_bytes_total", 0, 4e5, 4e5, 0.9),
            ("written_bytes_total", 0, 1.2e6, 8e5, 1.0),
            ("reads_merged_total", 0, 2.0, 2.0, 0.3),
            ("writes_merged_total", 0, 30.0, 20.0, 0.9),
            ("read_time_seconds_total", 3, 40.0, 30.0, 0.9),
            ("write_time_seconds_total", 3, 200.0, 120.0, 1.0),
            ("io_time_seconds_total", 3, 120.0, 60.0, 1.0),
            ("io_time_weighted_seconds_total", 3, 260.0, 150.0, 1.0),
            ("discards_completed_total", 0, 0.0, 0.0, 0.0),
            ("discards_merged_total", 0, 0.0, 0.0, 0.0),
            ("discarded_sectors_total", 0, 0.0, 0.0, 0.0),
            ("discard_time_seconds_total", 3, 0.0, 0.0, 0.0),
            ("flush_requests_total", 0, 3.0, 2.0, 0.5),
            ("flush_requests_time_seconds_total", 3, 5.0, 5.0, 0.5),
        ] {
            add(
                &format!("node_disk_{k}"),
                &[("device", dev)],
                "counter",
                counter(big(rng, 1 << 30), e, mean, sd, p),
            );
        }
        add(
            "node_disk_io_now",
            &[("device", dev)],
            "gauge",
            Process::Walk {
                m: 0,
                e: 0,
                unit: 1,
                sd: 1.0,
                p: 0.3,
                lo: 0,
                hi: 8,
            },
        );
    }
    for mp in ["/", "/boot", "/home", "/var", "/run"] {
        let size = big(rng, 1 << 24) * 4096;
        add(
            "node_filesystem_size_bytes",
            &[("mountpoint", mp)],
            "gauge",
            Process::Const(size as f64),
        );
        add(
            "node_filesystem_avail_bytes",
            &[("mountpoint", mp)],
            "gauge",
            walk(size / 2, 4096, 200.0, 0.3),
        );
        add(
            "node_filesystem_free_bytes",
            &[("mountpoint", mp)],
            "gauge",
            walk(size / 2 + 4096 * 1000, 4096, 200.0, 0.3),
        );
        add(
            "node_filesystem_files",
            &[("mountpoint", mp)],
            "gauge",
            Process::Const((size / 16384) as f64),
        );
        add(
            "node_filesystem_files_free",
            &[("mountpoint", mp)],
            "gauge",
            walk(size / 32768, 1, 20.0, 0.4),
        );
        add(
            "node_filesystem_readonly",
            &[("mountpoint", mp)],
            "gauge",
            Process::Const(0.0),
        );
        add(
            "node_filesystem_device_error",
            &[("mountpoint", mp)],
            "gauge",
            Process::Const(0.0),
        );
    }
    for i in 0..60 {
        let name = format!("node_vmstat_s{i:02}");
        let p = match i % 4 {
            0 => counter(big(rng, 1 << 28), 0, rng.exp(5000.0), 1000.0, 1.0),
            1 => counter(big(rng, 1 << 20), 0, rng.exp(20.0), 10.0, 0.5),
            2 => counter(rng.below(1000) as i64, 0, 1.0, 1.0, 0.02),
            _ => Process::Walk {
                m: 100 + rng.below(500) as i64,
                e: 0,
                unit: 1,
                sd: 5.0,
                p: 0.6,
                lo: 0,
                hi: 2000,
            },
        };
        add(&name, &[], if i % 4 == 3 { "gauge" } else { "counter" }, p);
    }
    for (k, w) in [("1", 3.0), ("5", 1.0), ("15", 0.4)] {
        add(
            &format!("node_load{k}"),
            &[],
            "gauge",
            Process::Walk {
                m: 150,
                e: 2,
                unit: 1,
                sd: w,
                p: 1.0,
                lo: 0,
                hi: 1600,
            },
        );
    }
    for i in 0..40 {
        let c = format!("c{i:02}");
        let mean = 1e-4 * (1 + rng.below(200)) as f64;
        add(
            "node_scrape_collector_duration_seconds",
            &[("collector", &c)],
            "gauge",
            Process::Jumpy {
                mean,
                spread: 0.5,
                digits: 9,
                p: 1.0,
                cur: 0.0,
            },
        );
        add(
            "node_scrape_collector_success",
            &[("collector", &c)],
            "gauge",
            Process::Const(1.0),
        );
    }
    for q in ["0", "0.25", "0.5", "0.75", "1"] {
        add(
            "go_gc_duration_seconds",
            &[("quantile", q)],
            "gauge",
            Process::Jumpy {
                mean: 5e-5,
                spread: 0.8,
                digits: 15,
                p: 0.1,
                cur: 0.0,
            },
        );
    }
    add(
        "go_goroutines",
        &[],
        "gauge",
        Process::Walk {
            m: 12,
            e: 0,
            unit: 1,
            sd: 1.0,
            p: 0.2,
            lo: 8,
            hi: 20,
        },
    );
    add("go_threads", &[], "gauge", Process::Const(9.0));
    for i in 0..14 {
        let p = if i % 2 == 0 {
            walk(big(rng, 1 << 22) * 8, 8, 2000.0, 1.0)
        } else {
            counter(big(rng, 1 << 34), 0, 3e6, 1e6, 1.0)
        };
        add(
            &format!("go_memstats_m{i:02}"),
            &[],
            if i % 2 == 0 { "gauge" } else { "counter" },
            p,
        );
    }
    add(
        "process_cpu_seconds_total",
        &[],
        "counter",
        counter(big(rng, 100_000), 2, 2.0, 2.0, 0.8),
    );
    add(
        "process_resident_memory_bytes",
        &[],
        "gauge",
        walk(big(rng, 1 << 12) * 4096, 4096, 3.0, 0.5),
    );
    add(
        "process_virtual_memory_bytes",
        &[],
        "gauge",
        walk(big(rng, 1 << 16) * 4096, 4096, 1.0, 0.05),
    );
    add(
        "process_open_fds",
        &[],
        "gauge",
        Process::Walk {
            m: 9,
            e: 0,
            unit: 1,
            sd: 1.0,
            p: 0.1,
            lo: 7,
            hi: 12,
        },
    );
    add("process_max_fds", &[], "gauge", Process::Const(1_048_576.0));
    add(
        "process_start_time_seconds",
        &[],
        "gauge",
        Process::Const(1_699_990_000.71),
    );
    for i in 0..6 {
        add(
            &format!("promhttp_s{i}"),
            &[],
            "counter",
            counter(rng.below(10_000) as i64, 0, 1.0, 0.0, 1.0),
        );
    }
    // The many quasi-constant series real node_exporters expose.
    for cpu in 0..8 {
        let c = cpu.to_string();
        for mode in ["user", "nice"] {
            add(
                "node_cpu_guest_seconds_total",
                &[("cpu", &c), ("mode", mode)],
                "counter",
                Process::Const(0.0),
            );
        }
        add(
            "node_softnet_processed_total",
            &[("cpu", &c)],
            "counter",
            counter(big(rng, 1 << 24), 0, 300.0, 150.0, 1.0),
        );
        add(
            "node_softnet_dropped_total",
            &[("cpu", &c)],
            "counter",
            Process::Const(0.0),
        );
        add(
            "node_softnet_times_squeezed_total",
            &[("cpu", &c)],
            "counter",
            counter(rng.below(100) as i64, 0, 1.0, 0.5, 0.01),
        );
    }
    for dev in [
        "veth1a2b",
        "veth3c4d",
        "veth5e6f",
        "br-0a1b",
        "docker_gwbridge",
    ] {
        for dir in ["receive", "transmit"] {
            for k in [
                "bytes",
                "packets",
                "errs",
                "drop",
                "fifo",
                "frame",
                "compressed",
                "multicast",
            ] {
                let p = match k {
                    "bytes" => counter(big(rng, 1 << 20), 0, 300.0, 400.0, 0.1),
                    "packets" => counter(big(rng, 1 << 12), 0, 3.0, 3.0, 0.1),
                    _ => Process::Const(0.0),
                };
                add(
                    &format!("node_network_{dir}_{k}_total"),
                    &[("device", dev)],
                    "counter",
                    p,
                );
            }
        }
    }
    for dev in [
        "eth0",
        "lo",
        "docker0",
        "veth1a2b",
        "veth3c4d",
        "veth5e6f",
        "br-0a1b",
        "docker_gwbridge",
    ] {
        for k in [
            "up",
            "mtu_bytes",
            "speed_bytes",
            "carrier",
            "flags",
            "iface_id",
            "iface_link",
            "dormant",
            "address_assign_type",
            "transmit_queue_length",
        ] {
            add(
                &format!("node_network_{k}"),
                &[("device", dev)],
                "gauge",
                Process::Const(rng.below(10_000) as f64),
            );
        }
    }
    for mp in ["/dev/shm", "/run/lock", "/run/user/1000", "/sys/fs/cgroup"] {
        for k in [
            "size_bytes",
            "avail_bytes",
            "free_bytes",
            "files",
            "files_free",
            "readonly",
            "device_error",
        ] {
            add(
                &format!("node_filesystem_{k}"),
                &[("mountpoint", mp)],
                "gauge",
                Process::Const((rng.below(1 << 20) * 4096) as f64),
            );
        }
    }
    for i in 0..36 {
        let p = if i % 3 == 0 {
            counter(big(rng, 1 << 24), 0, rng.exp(200.0), 50.0, 0.9)
        } else {
            counter(rng.below(10_000) as i64, 0, 1.0, 1.0, 0.01)
        };
        add(&format!("node_netstat_s{i:02}"), &[], "counter", p);
    }
    for i in 0..15 {
        add(
            &format!("node_sockstat_g{i:02}"),
            &[],
            "gauge",
            Process::Walk {
                m: 5 + rng.below(300) as i64,
                e: 0,
                unit: 1,
                sd: 2.0,
                p: 0.15,
                lo: 0,
                hi: 1000,
            },
        );
    }
    for i in 0..17 {
        let p = if i < 3 {
            Process::Walk {
                m: rng.below(100_000) as i64,
                e: 6,
                unit: 1,
                sd: 300.0,
                p: 0.5,
                lo: 0,
                hi: 1_000_000,
            }
        } else {
            Process::Const(rng.below(1000) as f64)
        };
        add(&format!("node_timex_g{i:02}"), &[], "gauge", p);
    }
    add(
        "node_uname_info",
        &[("release", "6.1.0")],
        "gauge",
        Process::Const(1.0),
    );
    add(
        "node_os_info",
        &[("id", "debian")],
        "gauge",
        Process::Const(1.0),
    );
    add(
        "node_exporter_build_info",
        &[("version", "1.5.0")],
        "gauge",
        Process::Const(1.0),
    );
    add(
        "node_boot_time_seconds",
        &[],
        "gauge",
        Process::Const(1_699_000_000.0),
    );
    add(
        "node_time_seconds",
        &[],
        "gauge",
        Process::Clock {
            base: 1_700_000_000.123_456_7,
            rate: 1.0,
        },
    );
    s
}

/// Bucket bounds of the histogram, seconds.
const LE: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];

/// Generates `targets` hosts with `samples` scrapes each, from `seed`, starting at `start_ms`.
pub fn node_exporter(targets: usize, samples: usize, seed: u64, start_ms: i64) -> Vec<TestSeries> {
    let mut out = Vec::new();
    for target in 0..targets {
        let mut rng = Rng::new(seed ^ (target as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        // Scrape timestamps shared by every series of the target.
        let phase = rng.below(15_000) as i64;
        let mut ts = Vec::with_capacity(samples);
        let mut slot = 0i64;
        while ts.len() < samples {
            if rng.chance(0.001) {
                slot += 1; // missed scrape
            }
            let r = rng.f64();
            let jitter = if r < 0.55 {
                0
            } else if r < 0.85 {
                1
            } else if r < 0.96 {
                2
            } else if r < 0.99 {
                3 + rng.below(8) as i64
            } else {
                10 + rng.below(40) as i64
            };
            ts.push(start_ms + phase + slot * 15_000 + jitter);
            slot += 1;
        }
        let mut specs = target_specs(target, &mut rng);
        let mut series: Vec<TestSeries> = specs
            .iter()
            .map(|s| TestSeries {
                labels: s.labels.clone(),
                kind: s.kind,
                samples: Vec::with_capacity(samples),
            })
            .collect();
        for &t in &ts {
            let elapsed = (t - start_ms) as f64 / 1000.0;
            for (spec, ser) in specs.iter_mut().zip(series.iter_mut()) {
                ser.samples
                    .push(Sample::new(t, spec.process.value(&mut rng, elapsed)));
            }
        }
        // The histogram: 4 handlers with different request rates and latencies.
        for (h, (handler, rate, median)) in [
            ("/api/v1/query", 8.0, 0.04),
            ("/api/v1/write", 60.0, 0.008),
            ("/metrics", 1.0, 0.003),
            ("/-/healthy", 0.1, 0.0005),
        ]
        .into_iter()
        .enumerate()
        {
            let mut buckets = [0u64; 12];
            let mut sum = 0.0f64;
            let bounds = [
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                10.0,
                f64::INFINITY,
            ];
            let mut rows: Vec<Vec<Sample>> = (0..14).map(|_| Vec::with_capacity(samples)).collect();
            for &t in &ts {
                let n = (rate * (1.0 + 0.5 * rng.normal())).max(0.0).round() as u64
                    + u64::from(h == 0 && rng.chance(0.5));
                for _ in 0..n {
                    let lat = median * (rng.normal() * 0.8).exp();
                    sum += lat;
                    for (b, &bound) in buckets.iter_mut().zip(&bounds) {
                        if lat <= bound {
                            *b += 1;
                        }
                    }
                }
                for (row, &c) in rows.iter_mut().zip(&buckets) {
                    row.push(Sample::new(t, c as f64));
                }
                rows[12].push(Sample::new(t, sum));
                rows[13].push(Sample::new(t, buckets[11] as f64));
            }
            let base = [("handler", handler)];
            for (i, row) in rows.into_iter().enumerate() {
                let (name, le) = match i {
                    0..12 => ("http_request_duration_seconds_bucket", Some(LE[i])),
                    12 => ("http_request_duration_seconds_sum", None),
                    _ => ("http_request_duration_seconds_count", None),
                };
                let mut extra: Vec<(&str, &str)> = base.to_vec();
                if let Some(le) = le {
                    extra.push(("le", le));
                }
                series.push(TestSeries {
                    labels: labels(target, name, &extra),
                    kind: "histogram",
                    samples: row,
                });
            }
        }
        out.extend(series);
    }
    out
}

/// The benchmark dataset: 4 targets (~2100 series) x 720 scrapes (3 hours at 15 s).
pub fn bench_dataset() -> Vec<TestSeries> {
    node_exporter(4, 720, 0x71de_6d61_726b_u64, 1_700_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let a = node_exporter(2, 50, 7, 1_700_000_000_000);
        let b = node_exporter(2, 50, 7, 1_700_000_000_000);
        assert_eq!(a.len(), b.len());
        assert!(a.len() > 900, "{} series", a.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.labels, y.labels);
            assert!(x.samples.iter().zip(&y.samples).all(|(p, q)| p.bit_eq(q)));
            assert_eq!(x.samples.len(), 50);
            assert!(x.samples.windows(2).all(|w| w[0].t < w[1].t));
            if x.kind == "counter" {
                assert!(
                    x.samples.windows(2).all(|w| w[0].v <= w[1].v),
                    "{:?}",
                    x.labels
                );
            }
        }
    }
}
