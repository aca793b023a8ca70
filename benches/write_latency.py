#!/usr/bin/env python3
"""Remote-write latency under a fixed offered load: p50/p90/p99/max per request.

Issue #6 asks for p50/p99 write latency of a 3-node cluster. ../shared/bench measures
throughput and CPU but not per-request latency, so this tool sends the same kind of data
(its workload generator: node/app/kube-like series, 2000-sample requests, 4 senders) at a
paced rate to each system in turn and records the wall time of every request.

    /tmp/bench-venv/bin/python benches/write_latency.py \
        --binary target/release/tidemark --rate 100000 --seconds 20

Systems: a 3-node `tidemark dev-cluster` (3 shards), a single-node `tidemark server`, and
Prometheus 3 (../shared/bench/get-prometheus3.sh) when present. All on loopback; each
system is started, loaded, and stopped before the next one starts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "..", "shared", "bench")
sys.path.insert(0, BENCH)
import rawhttp  # noqa: E402
import workload as wl  # noqa: E402

RW_HEADERS = ("Content-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n"
              "User-Agent: tidemark-write-latency/1.0\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n")
PROM = "/opt/prom3/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = rawhttp.Conn("127.0.0.1", port, timeout=2)
            st, _, _ = c.request("GET", "/-/ready")
            c.close()
            if st == 200:
                return
        except (OSError, ConnectionError, rawhttp.HTTPError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"port {port} not ready after {timeout} s")


def start(kind: str, binary: str, data: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "cluster":
        cport = free_port()
        cmd = [binary, "dev-cluster", "--nodes", "3", "--cluster.shards", "3", "--dir", data,
               "--http-port", str(port), "--cluster-port", str(cport), "--",
               "--storage.retention.time", "3650d", "--log.level", "warn"]
    elif kind == "single":
        cmd = [binary, "server", "--storage.path", data, f"--web.listen-address=127.0.0.1:{port}",
               "--storage.retention.time", "3650d", "--log.level", "warn"]
    else:
        cfg = os.path.join(data, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1h\n")
        cmd = [PROM, f"--config.file={cfg}", f"--storage.tsdb.path={data}/prom",
               f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver",
               "--storage.tsdb.retention.time=3650d", "--log.level=warn"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    wait_ready(port)
    if kind == "cluster":
        time.sleep(3)  # leaders elected on every shard
    return p, port


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def run_load(port: int, shard_reqs, rate: float, seconds: float) -> dict:
    """Sends each shard's requests in order from its own thread, paced so the total offered
    load is `rate` samples/s; stops after `seconds`. Returns latencies and counts."""
    lat: list[float] = []
    failed = [0]
    lock = threading.Lock()
    n = len(shard_reqs)
    t0 = time.perf_counter()
    deadline = t0 + seconds

    def worker(reqs):
        conn = rawhttp.Conn("127.0.0.1", port, timeout=60)
        sent = 0
        mine = []
        bad = 0
        for req in reqs:
            due = t0 + sent / (rate / n)
            now = time.perf_counter()
            if now > deadline:
                break
            if due > now:
                time.sleep(due - now)
            sent += req.samples
            a = time.perf_counter()
            try:
                code, _, _ = conn.request("POST", "/api/v1/write", req.body, RW_HEADERS)
            except (OSError, ConnectionError, rawhttp.HTTPError):
                code = -1
                conn.close()
            b = time.perf_counter()
            if 200 <= code < 300:
                mine.append(b - a)
            else:
                bad += 1
        conn.close()
        with lock:
            lat.extend(mine)
            failed[0] += bad

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in shard_reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"requests": len(lat), "failed": failed[0], "wall": wall,
            "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": lat[-1] * 1000 if lat else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/tidemark")
    ap.add_argument("--rate", type=float, default=100_000, help="offered samples/s (total)")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--targets", type=int, default=40, help="x500 series (bench.py quick: 40)")
    ap.add_argument("--systems", default="cluster,single,prometheus")
    a = ap.parse_args()
    cat = wl.build_catalog(a.targets, 500)
    rounds = max(2, int(a.rate * a.seconds / cat.n) + 2)
    start_ms = int(time.time() * 1000) - rounds * 15000
    reqs = wl.generate_requests(cat, rounds, start_ms, shards=4, batch_samples=2000)
    print(f"{cat.n} series, {rounds} rounds, offered {a.rate:,.0f} samples/s for {a.seconds:g} s,"
          f" 4 senders, 2000-sample requests")
    print("| system | requests | failed | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for kind in a.systems.split(","):
        if kind == "prometheus" and not os.path.exists(PROM):
            continue
        data = tempfile.mkdtemp(prefix=f"wlat-{kind}-")
        p, port = start(kind, a.binary, data)
        try:
            r = run_load(port, reqs, a.rate, a.seconds)
        finally:
            stop(p)
            shutil.rmtree(data, ignore_errors=True)
        name = {"cluster": "tidemark 3-node cluster (RF 3, 3 shards)", "single": "tidemark single node",
                "prometheus": "Prometheus 3"}[kind]
        print(f"| {name} | {r['requests']} | {r['failed']} | {r['p50']:.2f} | {r['p90']:.2f} "
              f"| {r['p99']:.2f} | {r['max']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
