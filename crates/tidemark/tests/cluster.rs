//! Three real `tidemark server` processes on loopback forming one cluster: acknowledged writes
//! survive SIGKILL of a shard leader, reads agree through every node, a restarted node catches
//! up (also from a snapshot), and scrape targets are spread over the live nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use server::{BIN, free_port_pairs, free_ports, urlencode};

struct ClusterNode {
    id: u64,
    http: u16,
    cport: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl ClusterNode {
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join(format!("node{}.log", self.id))).unwrap();
        let child = Command::new(BIN)
            .arg("server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        http(self.http, method, path, ctype, body)
    }

    fn query(&self, q: &str, time_s: f64) -> serde_json::Value {
        let path = format!("/api/v1/query?query={}&time={time_s}", urlencode(q));
        let (st, body) = self.http("GET", &path, "text/plain", b"").unwrap();
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["cluster", "status", "--json", "--address"])
            .arg(format!("127.0.0.1:{}", self.cport))
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body)?;
    let mut out = Vec::new();
    c.read_to_end(&mut out)?;
    let pos = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let headtxt = String::from_utf8_lossy(&out[..pos]).to_string();
    let status = headtxt
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rest = out[(pos + 4).min(out.len())..].to_vec();
    if headtxt
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest = server::dechunk(&String::from_utf8_lossy(&rest)).into_bytes();
    }
    Ok((status, rest))
}

fn put_varint(b: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        b.push((x as u8) | 0x80);
        x >>= 7;
    }
    b.push(x as u8);
}

fn put_bytes(b: &mut Vec<u8>, field: u64, v: &[u8]) {
    put_varint(b, (field << 3) | 2);
    put_varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

/// A remote_write 1.0 request (snappy-compressed protobuf), written by hand from the spec.
/// Label pairs and samples of one series.
type WriteSeries<'a> = (Vec<(&'a str, String)>, Vec<(i64, f64)>);

fn remote_write_body(series: &[WriteSeries<'_>]) -> Vec<u8> {
    let mut req = Vec::new();
    for (labels, samples) in series {
        let mut ts = Vec::new();
        for (n, v) in labels {
            let mut l = Vec::new();
            put_bytes(&mut l, 1, n.as_bytes());
            put_bytes(&mut l, 2, v.as_bytes());
            put_bytes(&mut ts, 1, &l);
        }
        for (t, v) in samples {
            let mut s = Vec::new();
            s.push(9); // field 1, fixed64
            s.extend_from_slice(&v.to_bits().to_le_bytes());
            put_varint(&mut s, 2 << 3);
            put_varint(&mut s, *t as u64);
            put_bytes(&mut ts, 2, &s);
        }
        put_bytes(&mut req, 1, &ts);
    }
    snap::raw::Encoder::new().compress_vec(&req).unwrap()
}

struct Cluster {
    nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// On a failing test, the tail of every node's log goes to stderr (the data directory is
    /// deleted afterwards), so a failure in CI can be diagnosed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for n in &self.nodes {
            let path = n.dir.join(format!("node{}.log", n.id));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- node {} log (last 40 of {} lines) -----",
                n.id,
                lines.len()
            );
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

fn start_cluster(n: u64, shards: u32, extra: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_port_pairs(n as usize);
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("{}=127.0.0.1:{c}", i + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, (h, c)) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let data = dir.path().join(format!("n{id}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut args = vec![
            format!("--web.listen-address=127.0.0.1:{h}"),
            format!("--storage.path={}", data.display()),
            format!("--cluster.node-id={id}"),
            format!("--cluster.listen-address=127.0.0.1:{c}"),
            format!("--cluster.peers={}", peers.join(",")),
            format!("--cluster.shards={shards}"),
            "--log.level=info".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut node = ClusterNode {
            id,
            http: *h,
            cport: *c,
            dir: dir.path().to_path_buf(),
            args,
            child: None,
        };
        node.start();
        nodes.push(node);
    }
    let c = Cluster { nodes, _dir: dir };
    c.wait_leaders(shards, Duration::from_secs(60));
    c
}

impl Cluster {
    /// Waits until some live node reports a leader for every shard; returns shard -> leader.
    fn wait_leaders(&self, shards: u32, timeout: Duration) -> BTreeMap<u64, u64> {
        let deadline = Instant::now() + timeout;
        loop {
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Some(st) = n.status() {
                    let m: BTreeMap<u64, u64> = st["shards"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| (s["shard"].as_u64().unwrap(), s["leader"].as_u64().unwrap()))
                        .collect();
                    let live: BTreeSet<u64> = self
                        .nodes
                        .iter()
                        .filter(|n| n.child.is_some())
                        .map(|n| n.id)
                        .collect();
                    if m.len() == shards as usize && m.values().all(|l| live.contains(l)) {
                        return m;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader for every shard in time; logs in {}",
                self.nodes[0].dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const SERIES: usize = 16;

/// Writes request `i` (one sample at `base + i*10` ms for each of SERIES series) round-robin
/// to the nodes not marked dead; returns acknowledged request numbers and ack times.
struct Writer {
    stop: Arc<AtomicBool>,
    dead: Arc<Mutex<BTreeSet<usize>>>,
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    failed: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

fn start_writer(ports: Vec<u16>, base: i64, first: u64) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let dead = Arc::new(Mutex::new(BTreeSet::new()));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let (s, d, a, f) = (stop.clone(), dead.clone(), acked.clone(), failed.clone());
    let handle = std::thread::spawn(move || {
        let mut i = first;
        let mut rr = 0usize;
        while !s.load(Ordering::SeqCst) {
            let t = base + (i - first) as i64 * 10;
            let series: Vec<WriteSeries<'_>> = (0..SERIES)
                .map(|k| {
                    (
                        vec![
                            ("__name__", "tm_cluster_test".to_string()),
                            ("series", format!("s{k:02}")),
                        ],
                        vec![(t, i as f64)],
                    )
                })
                .collect();
            let body = remote_write_body(&series);
            // Try nodes until one acknowledges or all refused; then move on to the next request
            // (a request that was not acknowledged may or may not be stored).
            let dead_now = d.lock().unwrap().clone();
            let alive: Vec<u16> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| !dead_now.contains(j))
                .map(|(_, p)| *p)
                .collect();
            rr += 1;
            let port = alive[rr % alive.len()];
            match http(
                port,
                "POST",
                "/api/v1/write",
                "application/x-protobuf",
                &body,
            ) {
                Ok((204, _)) | Ok((200, _)) => a.lock().unwrap().push((i, Instant::now())),
                _ => {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    Writer {
        stop,
        dead,
        acked,
        failed,
        handle: Some(handle),
    }
}

impl Writer {
    /// Lets the writer run until `n` writes are acknowledged (at most 60 s: a loaded machine
    /// acknowledges few per second), stops it and returns the acknowledged writes.
    fn finish_after_acks(self, n: usize) -> Vec<(u64, Instant)> {
        let started = Instant::now();
        while self.acked.lock().unwrap().len() < n && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let (acked, _) = self.finish();
        assert!(acked.len() >= n, "only {} writes acknowledged", acked.len());
        acked
    }

    fn finish(mut self) -> (Vec<(u64, Instant)>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let a = self.acked.lock().unwrap().clone();
        (a, self.failed.load(Ordering::SeqCst))
    }
}

/// Every series' samples in the window, through `node`: series -> set of values.
fn stored(node: &ClusterNode, at_s: f64) -> BTreeMap<String, BTreeSet<u64>> {
    stored_in(&node.query("tm_cluster_test[30m]", at_s))
}

/// Series -> set of values of a `tm_cluster_test[30m]` query answer.
fn stored_in(v: &serde_json::Value) -> BTreeMap<String, BTreeSet<u64>> {
    assert_eq!(v["status"], "success", "{v}");
    let mut out = BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let name = s["metric"]["series"].as_str().unwrap().to_string();
        let vals: BTreeSet<u64> = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap() as u64)
            .collect();
        out.insert(name, vals);
    }
    out
}

fn assert_all_acked_present(node: &ClusterNode, acked: &[(u64, Instant)], at_s: f64) {
    let got = stored(node, at_s);
    assert_eq!(
        got.len(),
        SERIES,
        "node {} sees {} series",
        node.id,
        got.len()
    );
    for (name, vals) in &got {
        let missing: Vec<u64> = acked
            .iter()
            .map(|a| a.0)
            .filter(|i| !vals.contains(i))
            .collect();
        assert!(
            missing.is_empty(),
            "node {}: series {name} lacks {} acknowledged samples, e.g. {:?}",
            node.id,
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

/// The longest time between two consecutive acknowledgements after `from`.
fn longest_gap(acked: &[(u64, Instant)], from: Instant) -> Duration {
    let times: Vec<Instant> = acked.iter().map(|a| a.1).filter(|t| *t >= from).collect();
    let mut gap = times
        .first()
        .map_or(Duration::ZERO, |t| t.duration_since(from));
    for w in times.windows(2) {
        gap = gap.max(w[1].duration_since(w[0]));
    }
    gap
}

#[test]
fn leader_sigkill_loses_no_acknowledged_write_and_restart_catches_up() {
    let shards = 4;
    let mut c = start_cluster(3, shards, &[]);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.http).collect();
    let base = now_ms() - 120_000;
    let w = start_writer(ports, base, 0);
    std::thread::sleep(Duration::from_secs(3));

    // SIGKILL the leader of shard 0.
    let leaders = c.wait_leaders(shards, Duration::from_secs(10));
    let victim = leaders[&0] as usize - 1;
    w.dead.lock().unwrap().insert(victim);
    let killed_at = Instant::now();
    c.nodes[victim].kill9();
    std::thread::sleep(Duration::from_secs(8));
    let (acked, failed) = w.finish();
    let gap = longest_gap(&acked, killed_at);
    eprintln!(
        "acknowledged {} requests ({} not acknowledged); longest gap between acks after the kill: {:?}",
        acked.len(),
        failed,
        gap
    );
    assert!(
        acked
            .iter()
            .any(|a| a.1 > killed_at + Duration::from_secs(5)),
        "writes did not resume after the kill"
    );
    assert!(
        gap < Duration::from_secs(10),
        "unavailability window {gap:?}"
    );

    let at = (now_ms() as f64) / 1000.0;
    // Every acknowledged sample through every surviving node; identical answers.
    let mut answers = Vec::new();
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        assert_all_acked_present(n, &acked, at);
        answers.push(stored(n, at));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "nodes disagree");

    // The killed node restarts, catches up and answers the same.
    c.nodes[victim].start();
    w_ready(&c.nodes[victim]);
    c.wait_leaders(shards, Duration::from_secs(30));
    assert_all_acked_present(&c.nodes[victim], &acked, at);
    assert_eq!(stored(&c.nodes[victim], at), answers[0]);
    wait_replicas_converged(&c, shards);
}

/// Shard -> leader as every running node reports it, once they all agree (at most 10 s).
fn agreed_leaders(c: &Cluster, shards: u32) -> BTreeMap<u64, u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let views: Vec<BTreeMap<u64, u64>> = c
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter_map(|n| n.status())
            .map(|st| {
                st["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| (s["shard"].as_u64().unwrap(), s["leader"].as_u64().unwrap()))
                    .collect()
            })
            .collect();
        if let Some(v) = views.first()
            && v.len() == shards as usize
            && !v.values().any(|l| *l == 0)
            && views.iter().all(|x| x == v)
        {
            return v.clone();
        }
        assert!(
            Instant::now() < deadline,
            "nodes disagree on the leaders: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A new cluster starts with every shard led by its preferred leader (shard s on node s + 1):
/// only the preferred leader initializes a shard's group at once, so no election race puts
/// every shard on one node, and leader balance has nothing to hand over under the first
/// writes (each such handover cost the nodes tens of MB of RSS in the bench).
#[test]
fn a_new_cluster_starts_with_every_shard_on_its_preferred_leader() {
    let shards = 3;
    let c = start_cluster(3, shards, &[]);
    let preferred: BTreeMap<u64, u64> = (0..u64::from(shards)).map(|s| (s, s + 1)).collect();
    assert_eq!(agreed_leaders(&c, shards), preferred);
    // Longer than leader balance waits before a handover (a shard led for 5 s).
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(agreed_leaders(&c, shards), preferred, "leaders moved");
    for n in &c.nodes {
        let log = std::fs::read_to_string(n.dir.join(format!("node{}.log", n.id))).unwrap();
        assert!(
            !log.contains("leader balance: handing the leadership over"),
            "node {} handed a shard over",
            n.id
        );
    }
}

/// Leader balance: three nodes, three shards, each node leads one. SIGKILL of node 1 moves its
/// shard to a survivor (which then leads two); once node 1 is back and caught up, leader
/// balance hands a shard to it, so that every node leads exactly one again, under continuous
/// writes, with no failed write, and the leadership then stays put (no flapping).
#[test]
fn leaders_are_spread_again_after_a_node_restarts() {
    let shards = 3;
    let mut c = start_cluster(3, shards, &[]);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.http).collect();
    let w = start_writer(ports, now_ms() - 120_000, 0);
    std::thread::sleep(Duration::from_secs(2));
    let victim = 0usize;
    w.dead.lock().unwrap().insert(victim);
    c.nodes[victim].kill9();
    let during = c.wait_leaders(shards, Duration::from_secs(30));
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for l in during.values() {
        *per_node.entry(*l).or_default() += 1;
    }
    assert!(
        per_node.values().any(|n| *n >= 2),
        "a survivor should lead two shards: {during:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    c.nodes[victim].start();
    w_ready(&c.nodes[victim]);
    let failed_before = w.failed.load(Ordering::SeqCst);
    w.dead.lock().unwrap().remove(&victim);
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(40);
    let balanced = loop {
        let leaders = agreed_leaders(&c, shards);
        let led: BTreeSet<u64> = leaders.values().copied().collect();
        if led.len() == 3 {
            break leaders;
        }
        assert!(
            Instant::now() < deadline,
            "leaders not spread 40 s after the restart: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let handovers: usize = c
        .nodes
        .iter()
        .map(|n| {
            std::fs::read_to_string(n.dir.join(format!("node{}.log", n.id)))
                .unwrap_or_default()
                .matches("leadership handed over")
                .count()
        })
        .sum();
    eprintln!(
        "every node leads one shard {:?} after the restart ({handovers} handovers): {balanced:?}",
        restarted.elapsed()
    );
    // No flapping: the leadership stays where balance put it.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(agreed_leaders(&c, shards), balanced, "leaders moved again");
    let (acked, failed) = w.finish();
    assert_eq!(
        failed - failed_before,
        0,
        "writes failed while the leadership moved"
    );
    assert!(
        acked
            .iter()
            .any(|a| a.1 > restarted + Duration::from_secs(2))
    );
    assert_converged_with_every_ack(&c, shards, &acked);
}

fn w_ready(n: &ClusterNode) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok((200, _)) = n.http("GET", "/-/ready", "text/plain", b"") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("node {} not ready", n.id);
}

/// Every node's replica of every shard applied up to the same index.
fn wait_replicas_converged(c: &Cluster, shards: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut applied: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
        for n in c.nodes.iter().filter(|n| n.child.is_some()) {
            if let Some(st) = n.status() {
                for s in st["shards"].as_array().unwrap() {
                    applied
                        .entry(s["shard"].as_u64().unwrap())
                        .or_default()
                        .insert(s["last_applied"].as_i64().unwrap());
                }
            }
        }
        if applied.len() == shards as usize && applied.values().all(|v| v.len() == 1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {applied:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Asserts that every replica of every shard holds the same data (checksum and sample count),
/// once the replicas report the same applied index. A difference is checked again after a
/// pause (to tell a slow apply from real divergence) and reported with every node's status.
fn assert_replicas_identical(c: &Cluster, shards: u32) -> Vec<BTreeMap<u64, (String, u64)>> {
    let differ = |sums: &[BTreeMap<u64, (String, u64)>]| {
        (0..u64::from(shards))
            .any(|s| sums.iter().map(|m| &m[&s]).collect::<BTreeSet<_>>().len() != 1)
    };
    let sums: Vec<_> = c.nodes.iter().map(checksums).collect();
    if !differ(&sums) {
        return sums;
    }
    std::thread::sleep(Duration::from_secs(3));
    wait_replicas_converged(c, shards);
    let again: Vec<_> = c.nodes.iter().map(checksums).collect();
    let status: Vec<String> = c
        .nodes
        .iter()
        .map(|n| {
            let out = Command::new(BIN)
                .args(["cluster", "status", "--json", "--checksums", "--address"])
                .arg(format!("127.0.0.1:{}", n.cport))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    assert!(
        !differ(&again),
        "replicas differ: {sums:?}\n3 s later: {again:?}\nstatus: {status:#?}"
    );
    eprintln!("replicas differed at first, then converged: {sums:?}");
    again
}

/// The replicas converge to identical data and every acknowledged write is readable through
/// every running node.
fn assert_converged_with_every_ack(c: &Cluster, shards: u32, acked: &[(u64, Instant)]) {
    wait_replicas_converged(c, shards);
    assert_replicas_identical(c, shards);
    let at = (now_ms() as f64) / 1000.0;
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        assert_all_acked_present(n, acked, at);
    }
}

fn checksums(n: &ClusterNode) -> BTreeMap<u64, (String, u64)> {
    let out = Command::new(BIN)
        .args(["cluster", "status", "--json", "--checksums", "--address"])
        .arg(format!("127.0.0.1:{}", n.cport))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["shard"].as_u64().unwrap(),
                (
                    s["checksum"].as_str().unwrap().to_string(),
                    s["samples"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn follower_down_past_log_truncation_catches_up_from_a_snapshot() {
    let shards = 2;
    let mut c = start_cluster(
        3,
        shards,
        &[
            "--cluster.snapshot-after-entries=40",
            "--cluster.keep-entries-after-snapshot=5",
        ],
    );
    let base = now_ms() - 120_000;
    // Node 3 is a follower of both shards (their preferred leaders are nodes 1 and 2); take it
    // down, write enough for both shards to snapshot and purge their logs several times.
    c.nodes[2].kill9();
    let w = start_writer(vec![c.nodes[0].http, c.nodes[1].http], base, 0);
    // At least 6 s, and until enough writes went through for several snapshots (a loaded
    // machine acknowledges fewer per second).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6)
        || (w.acked.lock().unwrap().len() <= 150 && started.elapsed() < Duration::from_secs(40))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (acked, _) = w.finish();
    assert!(
        acked.len() > 150,
        "only {} writes acknowledged",
        acked.len()
    );
    c.nodes[2].start();
    w_ready(&c.nodes[2]);
    wait_replicas_converged(&c, shards);
    let log = std::fs::read_to_string(c.nodes[2].dir.join("node3.log")).unwrap();
    assert!(
        log.contains("snapshot installed"),
        "node 3 did not catch up from a snapshot ({} writes acknowledged)",
        acked.len()
    );
    // Every replica of every shard holds the same data.
    let sums = assert_replicas_identical(&c, shards);
    for s in 0..u64::from(shards) {
        assert!(sums[0][&s].1 > 0, "shard {s} is empty");
    }
    let total: u64 = sums[0].values().map(|x| x.1).sum();
    assert!(total >= (acked.len() * SERIES) as u64);
    let at = (now_ms() as f64) / 1000.0;
    assert_all_acked_present(&c.nodes[2], &acked, at);
}

/// Serves `fake_metric 1` on `n` loopback ports until the process ends.
fn fake_targets(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    for _ in 0..n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ports.push(l.local_addr().unwrap().port());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = "# TYPE fake_metric gauge\nfake_metric 1\n";
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
    ports
}

fn active_targets(n: &ClusterNode) -> BTreeSet<String> {
    let (st, body) = n
        .http("GET", "/api/v1/targets?state=active", "text/plain", b"")
        .unwrap();
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["labels"]["instance"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn scrape_targets_are_spread_and_taken_over() {
    let targets = fake_targets(20);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    let list: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: fake\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let cfg_arg = format!("--config.file={}", cfg.display());
    let mut c = start_cluster(3, 2, &[&cfg_arg]);
    let all: BTreeSet<String> = targets.iter().map(|p| format!("127.0.0.1:{p}")).collect();

    // Steady state: each target on exactly one node.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let per: Vec<BTreeSet<String>> = c.nodes.iter().map(active_targets).collect();
        let n: usize = per.iter().map(|s| s.len()).sum();
        let union: BTreeSet<String> = per.iter().flatten().cloned().collect();
        if n == 20 && union == all {
            assert!(
                per.iter().all(|s| !s.is_empty()),
                "targets not spread: {per:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets not owned exactly once: {per:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Kill node 1: nodes 2 and 3 take its targets over, still each exactly once.
    let killed = Instant::now();
    c.nodes[0].kill9();
    let deadline = killed + Duration::from_secs(20);
    loop {
        let per: Vec<BTreeSet<String>> = c.nodes[1..].iter().map(active_targets).collect();
        let n: usize = per.iter().map(|s| s.len()).sum();
        let union: BTreeSet<String> = per.iter().flatten().cloned().collect();
        if n == 20 && union == all {
            eprintln!("targets taken over {:?} after the kill", killed.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "targets not taken over: {per:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Every target's `up` is written again (through the surviving nodes).
    std::thread::sleep(Duration::from_secs(5));
    let at = (now_ms() as f64) / 1000.0;
    let v = c.nodes[1].query("count(count_over_time(up{job=\"fake\"}[3s]))", at);
    assert_eq!(v["data"]["result"][0]["value"][1], "20", "{v}");
}

/// A TCP proxy that can cut its link: while blocked it closes every connection and refuses new
/// ones (a network partition between two nodes, one direction of dialing).
struct Proxy {
    port: u16,
    blocked: Arc<AtomicBool>,
}

fn proxy(upstream: u16) -> Proxy {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let blocked = Arc::new(AtomicBool::new(false));
    let flag = blocked.clone();
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    {
        let (blocked, conns) = (blocked.clone(), conns.clone());
        std::thread::spawn(move || {
            loop {
                if blocked.load(Ordering::SeqCst) {
                    for c in conns.lock().unwrap().drain(..) {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(client) = s else { continue };
            if blocked.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = up.set_nodelay(true);
            {
                let mut g = conns.lock().unwrap();
                g.push(client.try_clone().unwrap());
                g.push(up.try_clone().unwrap());
            }
            for (mut a, mut b) in [
                (client.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    Proxy {
        port,
        blocked: flag,
    }
}

#[test]
fn partitioned_node_acknowledges_nothing_and_converges_after_healing() {
    let shards = 3;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_port_pairs(3);
    // Every link that involves node 3 goes through a proxy that can cut it.
    let to3 = proxy(ports[2].1);
    let from3_to1 = proxy(ports[0].1);
    let from3_to2 = proxy(ports[1].1);
    let peers_12 = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0].1, ports[1].1, to3.port
    );
    let peers_3 = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        from3_to1.port, from3_to2.port, ports[2].1
    );
    let mut nodes = Vec::new();
    for (i, (h, cp)) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let data = dir.path().join(format!("n{id}"));
        std::fs::create_dir_all(&data).unwrap();
        let peers = if id == 3 { &peers_3 } else { &peers_12 };
        let mut node = ClusterNode {
            id,
            http: *h,
            cport: *cp,
            dir: dir.path().to_path_buf(),
            args: vec![
                format!("--web.listen-address=127.0.0.1:{h}"),
                format!("--storage.path={}", data.display()),
                format!("--cluster.node-id={id}"),
                format!("--cluster.listen-address=127.0.0.1:{cp}"),
                format!("--cluster.peers={peers}"),
                format!("--cluster.shards={shards}"),
            ],
            child: None,
        };
        node.start();
        nodes.push(node);
    }
    let c = Cluster { nodes, _dir: dir };
    c.wait_leaders(shards, Duration::from_secs(60));
    let base = now_ms() - 120_000;
    let w = start_writer(c.nodes.iter().map(|n| n.http).collect(), base, 0);
    std::thread::sleep(Duration::from_secs(2));
    let (mut acked, _) = w.finish();

    // Partition node 3 from the others.
    for p in [&to3, &from3_to1, &from3_to2] {
        p.blocked.store(true, Ordering::SeqCst);
    }
    std::thread::sleep(Duration::from_secs(3));
    // The isolated node acknowledges nothing...
    let body = remote_write_body(&[(
        vec![("__name__", "tm_isolated".to_string())],
        vec![(now_ms(), 1.0)],
    )]);
    let (st, _) = http(
        c.nodes[2].http,
        "POST",
        "/api/v1/write",
        "application/x-protobuf",
        &body,
    )
    .unwrap();
    assert_eq!(st, 503, "the isolated node answered {st} to a write");
    // ...while the majority keeps accepting writes.
    let w = start_writer(
        vec![c.nodes[0].http, c.nodes[1].http],
        now_ms() - 60_000,
        100_000,
    );
    std::thread::sleep(Duration::from_secs(4));
    let (acked2, failed2) = w.finish();
    eprintln!(
        "majority side: {} writes acknowledged, {failed2} not",
        acked2.len()
    );
    assert!(
        acked2.len() > 10,
        "the majority accepted only {} writes",
        acked2.len()
    );
    acked.extend(acked2);

    // Heal: everything converges, node 3 included.
    for p in [&to3, &from3_to1, &from3_to2] {
        p.blocked.store(false, Ordering::SeqCst);
    }
    assert_converged_with_every_ack(&c, shards, &acked);
}

#[test]
fn rolling_restart_under_load_loses_no_acknowledged_write() {
    let shards = 3;
    let mut c = start_cluster(3, shards, &[]);
    let base = now_ms() - 120_000;
    let w = start_writer(c.nodes.iter().map(|n| n.http).collect(), base, 0);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..c.nodes.len() {
        // Graceful stop (SIGTERM), as a rolling upgrade does, then start again.
        w.dead.lock().unwrap().insert(i);
        if let Some(mut child) = c.nodes[i].child.take() {
            server::send_signal(child.id(), 15);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "node {} did not stop", i + 1);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        c.nodes[i].start();
        w_ready(&c.nodes[i]);
        c.wait_leaders(shards, Duration::from_secs(30));
        w.dead.lock().unwrap().remove(&i);
        std::thread::sleep(Duration::from_secs(2));
    }
    let (acked, failed) = w.finish();
    eprintln!(
        "rolling restart: {} writes acknowledged, {failed} not",
        acked.len()
    );
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    wait_replicas_converged(&c, shards);
    let at = (now_ms() as f64) / 1000.0;
    let mut answers = Vec::new();
    for n in &c.nodes {
        assert_all_acked_present(n, &acked, at);
        answers.push(stored(n, at));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "nodes disagree");
}

fn alert_states(n: &ClusterNode, name: &str) -> Vec<String> {
    match n.http("GET", "/api/v1/alerts", "text/plain", b"") {
        Ok((200, body)) => server::alert_states_in(&body, name),
        _ => Vec::new(),
    }
}

#[test]
fn rule_groups_spread_and_a_firing_alert_stays_firing_after_failover() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server::always_firing_config(dir.path(), "g1", 3);
    let cfg_arg = format!("--config.file={}", cfg.display());
    let mut c = start_cluster(3, 2, &[&cfg_arg]);

    // Exactly one node evaluates the group; wait until its alert fires.
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner = loop {
        let states: Vec<Vec<String>> = c
            .nodes
            .iter()
            .map(|n| alert_states(n, "AlwaysFiring"))
            .collect();
        let with: Vec<usize> = (0..3).filter(|i| !states[*i].is_empty()).collect();
        assert!(
            with.len() <= 1,
            "the group is evaluated on several nodes: {states:?}"
        );
        if let [i] = with[..]
            && states[i] == ["firing"]
        {
            break i;
        }
        assert!(Instant::now() < deadline, "alert never fired: {states:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let the firing state reach ALERTS_FOR_STATE for a few evaluations, then kill the owner.
    std::thread::sleep(Duration::from_secs(2));
    c.nodes[owner].kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    loop {
        let states: Vec<(u64, Vec<String>)> = c
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| (n.id, alert_states(n, "AlwaysFiring")))
            .collect();
        for (id, s) in &states {
            assert!(
                !s.iter().any(|x| x == "pending"),
                "node {id} took the group over with the alert pending (it was firing): {states:?}"
            );
        }
        if states.iter().any(|(_, s)| s == &["firing"]) {
            eprintln!(
                "alert firing on the new owner {:?} after the kill",
                killed.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no survivor took the group over: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `tidemark cluster <args>` and asserts it succeeds.
fn cluster_cmd(args: &[String]) {
    let out = Command::new(BIN)
        .arg("cluster")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tidemark cluster {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Voters of each shard led by `n`, from its status.
fn led_voters(n: &ClusterNode) -> BTreeMap<u64, BTreeSet<u64>> {
    let st = n.status().unwrap();
    st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["leader"].as_u64() == Some(n.id))
        .map(|s| {
            (
                s["shard"].as_u64().unwrap(),
                s["voters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn add_node_and_remove_node_move_replicas_under_load() {
    let shards = 3;
    let mut c = start_cluster(3, shards, &["--cluster.snapshot-after-entries=100"]);
    let base = now_ms() - 120_000;
    let w = start_writer(c.nodes.iter().map(|n| n.http).collect(), base, 0);
    std::thread::sleep(Duration::from_secs(2));

    // A fourth node joins: started with --cluster.join, then added through node 1.
    let (h4, c4) = match free_ports(2)[..] {
        [h, c] => (h, c),
        _ => unreachable!("free_ports(2) returns two ports"),
    };
    let data = c.nodes[0].dir.join("n4");
    std::fs::create_dir_all(&data).unwrap();
    let peers: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{}=127.0.0.1:{}", n.id, n.cport))
        .chain([format!("4=127.0.0.1:{c4}")])
        .collect();
    let mut n4 = ClusterNode {
        id: 4,
        http: h4,
        cport: c4,
        dir: c.nodes[0].dir.clone(),
        args: vec![
            format!("--web.listen-address=127.0.0.1:{h4}"),
            format!("--storage.path={}", data.display()),
            "--cluster.node-id=4".to_string(),
            format!("--cluster.listen-address=127.0.0.1:{c4}"),
            format!("--cluster.peers={}", peers.join(",")),
            format!("--cluster.shards={shards}"),
            "--cluster.join".to_string(),
            "--log.level=info".to_string(),
        ],
        child: None,
    };
    n4.start();
    c.nodes.push(n4);
    // A malformed address is refused at once, naming the problem.
    let out = Command::new(BIN)
        .args(["cluster", "add-node", "--address"])
        .arg(format!("127.0.0.1:{}", c.nodes[0].cport))
        .args(["--node-id=4", "--node-address=not-an-address", "--wait=0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    cluster_cmd(&[
        "add-node".into(),
        "--address".into(),
        format!("127.0.0.1:{}", c.nodes[0].cport),
        "--node-id=4".into(),
        format!("--node-address=127.0.0.1:{c4}"),
        "--wait=120".into(),
    ]);
    eprintln!("add-node: replicas moved in {:?}", t.elapsed());
    // The map over nodes 1-4 (shard s on ids[(s+k) % 4], k < 3).
    let want: BTreeMap<u64, BTreeSet<u64>> = [
        (0, BTreeSet::from([1, 2, 3])),
        (1, BTreeSet::from([2, 3, 4])),
        (2, BTreeSet::from([1, 3, 4])),
    ]
    .into();
    let mut got = BTreeMap::new();
    for n in &c.nodes {
        got.extend(led_voters(n));
    }
    assert_eq!(got, want, "voters after add-node");
    std::thread::sleep(Duration::from_secs(2));

    // Node 1 leaves: writes stop going to it, its replicas move to nodes 2-4.
    w.dead.lock().unwrap().insert(0);
    let t = Instant::now();
    cluster_cmd(&[
        "remove-node".into(),
        "--address".into(),
        format!("127.0.0.1:{}", c.nodes[1].cport),
        "--node-id=1".into(),
        "--wait=120".into(),
    ]);
    eprintln!("remove-node: replicas moved in {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let (acked, failed) = w.finish();
    // No downtime: every write was acknowledged (a leader that left was replaced within the
    // write timeout, which the node absorbs by retrying).
    assert_eq!(failed, 0, "{failed} writes failed while replicas moved");
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    // Node 1 dropped its replicas once the others committed the change; then it is stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.nodes[0].status().unwrap();
        if st["shards"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 still hosts replicas after remove-node: {st}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut n1 = c.nodes.remove(0);
    n1.kill9();
    let st = c.nodes[0].status().unwrap();
    let members: Vec<u64> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(members, [2, 3, 4]);
    assert_converged_with_every_ack(&c, shards, &acked);
}

#[test]
fn admin_delete_and_tsdb_status_cover_every_shard_and_replica() {
    let shards = 3;
    let c = start_cluster(3, shards, &["--web.enable-admin-api"]);
    let base = now_ms() - 120_000;
    let w = start_writer(c.nodes.iter().map(|n| n.http).collect(), base, 0);
    // Enough writes that half of them is a real prefix (a loaded machine acknowledges few
    // per second).
    let acked = w.finish_after_acks(20);
    let at = (now_ms() as f64) / 1000.0;
    assert_eq!(stored(&c.nodes[0], at).len(), SERIES);

    // /api/v1/status/tsdb through any node counts the series of every shard.
    let (st, body) = c.nodes[1]
        .http("GET", "/api/v1/status/tsdb?limit=100", "text/plain", b"")
        .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let per_metric = v["data"]["seriesCountByMetricName"].as_array().unwrap();
    let n = per_metric
        .iter()
        .find(|x| x["name"] == "tm_cluster_test")
        .map(|x| x["value"].as_u64().unwrap());
    assert_eq!(n, Some(SERIES as u64), "{v}");

    // Through node 2: delete the first half of two series, and a third series entirely.
    let half = acked[acked.len() / 2].0;
    let end_s = (base as f64 + half as f64 * 10.0) / 1000.0;
    for (sel, range) in [
        (
            "tm_cluster_test{series=~\"s0[01]\"}",
            format!("&end={end_s}"),
        ),
        ("tm_cluster_test{series=\"s02\"}", String::new()),
    ] {
        let path = format!(
            "/api/v1/admin/tsdb/delete_series?match[]={}{range}",
            urlencode(sel)
        );
        let (st, body) = c.nodes[1].http("POST", &path, "text/plain", b"").unwrap();
        assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    }
    // Every node sees the same result at once (reads see the applied delete).
    for n in &c.nodes {
        let got = stored(n, at);
        assert!(!got.contains_key("s02"), "node {}: s02 still there", n.id);
        for s in ["s00", "s01"] {
            let vals = &got[s];
            assert!(
                vals.iter().all(|i| *i > half),
                "node {}: {s} keeps samples up to {half}: {:?}",
                n.id,
                vals.iter().next()
            );
            assert!(!vals.is_empty(), "node {}: {s} lost everything", n.id);
        }
        assert_eq!(got["s03"].len(), stored(&c.nodes[0], at)["s03"].len());
    }
    // clean_tombstones runs on every replica too; the replicas stay identical.
    let (st, _) = c.nodes[2]
        .http(
            "PUT",
            "/api/v1/admin/tsdb/clean_tombstones",
            "text/plain",
            b"",
        )
        .unwrap();
    assert_eq!(st, 204);
    wait_replicas_converged(&c, shards);
    assert_replicas_identical(&c, shards);
}

/// A remote_write 1.0 request: one counter series with a sample and an exemplar, and the
/// family's metadata (written by hand from the spec).
fn remote_write_with_extras(t: i64) -> Vec<u8> {
    let mut ts = Vec::new();
    for (n, v) in [
        ("__name__", "tm_requests_total"),
        ("instance", "h:1"),
        ("job", "api"),
    ] {
        let mut l = Vec::new();
        put_bytes(&mut l, 1, n.as_bytes());
        put_bytes(&mut l, 2, v.as_bytes());
        put_bytes(&mut ts, 1, &l);
    }
    let mut sample = vec![9]; // field 1, fixed64
    sample.extend_from_slice(&5.0f64.to_bits().to_le_bytes());
    put_varint(&mut sample, 2 << 3);
    put_varint(&mut sample, t as u64);
    put_bytes(&mut ts, 2, &sample);
    let mut ex = Vec::new();
    let mut l = Vec::new();
    put_bytes(&mut l, 1, b"trace_id");
    put_bytes(&mut l, 2, b"abc123");
    put_bytes(&mut ex, 1, &l);
    ex.push(2 << 3 | 1); // field 2, fixed64
    ex.extend_from_slice(&0.25f64.to_bits().to_le_bytes());
    put_varint(&mut ex, 3 << 3);
    put_varint(&mut ex, t as u64);
    put_bytes(&mut ts, 3, &ex);
    let mut req = Vec::new();
    put_bytes(&mut req, 1, &ts);
    let mut md = Vec::new();
    put_varint(&mut md, 1 << 3);
    put_varint(&mut md, 1); // COUNTER
    put_bytes(&mut md, 2, b"tm_requests_total");
    put_bytes(&mut md, 4, b"Requests served.");
    put_bytes(&mut md, 5, b"requests");
    put_bytes(&mut req, 3, &md);
    snap::raw::Encoder::new().compress_vec(&req).unwrap()
}

fn get_json(n: &ClusterNode, path: &str) -> serde_json::Value {
    let (st, body) = n.http("GET", path, "text/plain", b"").unwrap();
    assert_eq!(st, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Metadata and exemplars travel with the writes: remote-written into node 1 (and scraped by
/// whichever node owns the target), they are returned through every node by
/// `/api/v1/metadata`, `/api/v1/query_exemplars` and `/api/v1/targets/metadata`.
#[test]
fn metadata_and_exemplars_written_to_one_node_are_read_through_every_node() {
    let target = fake_targets(1)[0];
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: fake\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let cfg_arg = format!("--config.file={}", cfg.display());
    let c = start_cluster(3, 3, &[&cfg_arg]);
    let t = now_ms();
    let (st, body) = c.nodes[0]
        .http(
            "POST",
            "/api/v1/write",
            "application/x-protobuf",
            &remote_write_with_extras(t),
        )
        .unwrap();
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    let instance = format!("127.0.0.1:{target}");
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &c.nodes {
        loop {
            let md = get_json(n, "/api/v1/metadata");
            let ex = get_json(
                n,
                &format!(
                    "/api/v1/query_exemplars?query=tm_requests_total&start={}&end={}",
                    t / 1000 - 60,
                    t / 1000 + 60
                ),
            );
            let tmd = get_json(n, "/api/v1/targets/metadata?metric=fake_metric");
            let ok = md["data"]["tm_requests_total"][0]
                == serde_json::json!({"type": "counter", "help": "Requests served.", "unit": "requests"})
                && md["data"]["fake_metric"][0]["type"] == "gauge"
                && ex["data"][0]["seriesLabels"]["job"] == "api"
                && ex["data"][0]["exemplars"][0]["labels"]["trace_id"] == "abc123"
                && ex["data"][0]["exemplars"][0]["value"] == "0.25"
                && tmd["data"].as_array().is_some_and(|a| {
                    a.len() == 1
                        && a[0]["target"]["instance"] == instance.as_str()
                        && a[0]["type"] == "gauge"
                });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: metadata {md}\nexemplars {ex}\ntarget metadata {tmd}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Links (or copies) every file under `src` into `dst`.
fn link_tree(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (s, d) = (e.path(), dst.join(e.file_name()));
        if s.is_dir() {
            link_tree(&s, &d);
        } else if std::fs::hard_link(&s, &d).is_err() {
            std::fs::copy(&s, &d).unwrap();
        }
    }
}

/// The admin snapshot of a cluster node holds every shard it hosts, one data directory each;
/// merged into one directory they are the data of a single node that answers every
/// acknowledged sample.
#[test]
fn admin_snapshot_holds_every_shard_and_restores_on_a_single_node() {
    let shards = 3;
    let c = start_cluster(3, shards, &["--web.enable-admin-api"]);
    let w = start_writer(
        c.nodes.iter().map(|n| n.http).collect(),
        now_ms() - 120_000,
        0,
    );
    let acked = w.finish_after_acks(20);
    let (st, body) = c.nodes[1]
        .http("POST", "/api/v1/admin/tsdb/snapshot", "text/plain", b"")
        .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let name = v["data"]["name"].as_str().unwrap();
    let snap = c.nodes[1].dir.join("n2").join("snapshots").join(name);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["shards"].as_array().unwrap().len(),
        shards as usize
    );
    let merged = tempfile::tempdir().unwrap();
    for s in 0..shards {
        let d = snap.join(format!("shard-{s}"));
        assert!(d.is_dir(), "no directory for shard {s}");
        link_tree(&d, merged.path());
    }
    let single = server::Server::start(merged.path(), &[]);
    let got = stored_in(&single.query("tm_cluster_test[30m]"));
    assert_eq!(got.len(), SERIES, "series in the restored data: {got:?}");
    for (name, vals) in &got {
        let missing = acked.iter().filter(|a| !vals.contains(&a.0)).count();
        assert_eq!(missing, 0, "{name} lacks {missing} acknowledged samples");
    }
}

/// `tidemark_cluster_stale_reads_total` of a node (its /metrics).
fn stale_reads(n: &ClusterNode) -> u64 {
    let (st, body) = n.http("GET", "/metrics", "text/plain", b"").unwrap();
    assert_eq!(st, 200);
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix("tidemark_cluster_stale_reads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("node {}: no stale-read counter in /metrics", n.id))
}

/// With `--cluster.read-staleness`, a follower answers from its own replica (no read index),
/// with every acknowledged write once the replicas converged; it stops doing so once its
/// leader has not reached it within the allowed staleness (here: the other nodes are dead).
#[test]
fn followers_read_in_place_within_the_allowed_staleness() {
    let shards = 3;
    let mut c = start_cluster(3, shards, &["--cluster.read-staleness=2s"]);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.http).collect();
    let base = now_ms() - 120_000;
    let acked = start_writer(ports, base, 0).finish_after_acks(30);
    wait_replicas_converged(&c, shards);
    let at = (now_ms() as f64) / 1000.0;
    let leaders = agreed_leaders(&c, shards);
    let mut answers = Vec::new();
    for n in &c.nodes {
        let before = stale_reads(n);
        assert_all_acked_present(n, &acked, at);
        answers.push(stored(n, at));
        let followed = leaders.values().filter(|&&l| l != n.id).count() as u64;
        // One query = one select (plus none for the led shards).
        assert!(
            stale_reads(n) >= before + followed,
            "node {} follows {followed} shards but read {} of them in place",
            n.id,
            stale_reads(n) - before
        );
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "nodes disagree");

    // Nodes 2 and 3 die: node 1 hears from no leader, so after 2 s it no longer reads in place.
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    std::thread::sleep(Duration::from_secs(4));
    let before = stale_reads(&c.nodes[0]);
    let path = format!(
        "/api/v1/query?query={}&time={at}",
        urlencode("tm_cluster_test[30m]")
    );
    let (st, body) = c.nodes[0].http("GET", &path, "text/plain", b"").unwrap();
    assert_ne!(
        st,
        200,
        "node 1 answered without a leader: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        stale_reads(&c.nodes[0]),
        before,
        "a read in place past the staleness bound"
    );
}
