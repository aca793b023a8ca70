#!/usr/bin/env python3
"""Query latency of running servers on ../shared/bench's query set, interleaved, medians in ms.

A quick loop for work on the cluster read path (issue #6): the servers stay up between
measurements (restart one on the same data after a rebuild) instead of a full bench.py run.
The data is bench.py's quick query dataset (2,000 series x 6 h at 15 s, 2.88 M samples).

    # load the same data into each server once (the first call fixes the dataset's end time)
    /tmp/bench-venv/bin/python benches/query_latency.py load --port 9190
    /tmp/bench-venv/bin/python benches/query_latency.py load --port 9090
    # then time every query on each (15 repetitions after one warm-up); the ratio is the
    # first server's median over the second's, with their geometric mean at the end
    /tmp/bench-venv/bin/python benches/query_latency.py run --reps 15 --port 9190 --port 9090
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import types
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "..", "shared", "bench")
sys.path.insert(0, BENCH)

import bench  # noqa: E402
import rawhttp  # noqa: E402
import workload as wl  # noqa: E402

END_FILE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "tidemark-query-latency-end")


def dataset(a, end=None):
    cat = wl.build_catalog(a.query_targets, 500, seed=a.seed + 1)
    rounds = a.query_hours * 240
    step = 15000
    end = end or (int(time.time()) // 60) * 60000 - 60000
    return cat, rounds, step, end - (rounds - 1) * step, end


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["load", "run"])
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    a.query_targets, a.query_hours, a.seed, a.query_step = 4, 6, 42, 60
    end = int(open(END_FILE).read()) if os.path.exists(END_FILE) else None
    cat, rounds, step, start, end = dataset(a, end)
    if a.what == "load":
        with open(END_FILE, "w") as f:
            f.write(str(end))
        reqs = wl.generate_requests(cat, rounds, start, step, shards=4, batch_samples=20000, k=20)
        for p in a.port:
            st = bench.push(p, "/api/v1/write", reqs)
            print(f"port {p}: accepted {st.accepted} failed {st.failed} in {st.wall:.1f}s")
        return
    b = bench.Bench.__new__(bench.Bench)
    b.a = a
    conns = [rawhttp.Conn("127.0.0.1", p, timeout=60) for p in a.port]
    medians = [[] for _ in a.port]
    for name, _kind, _q, path, params in b._query_calls(start, end):
        full = path + "?" + urllib.parse.urlencode(params or [], doseq=True)
        lats = [[] for _ in a.port]
        for k in range(a.reps + 1):
            order = list(enumerate(conns))
            if k % 2:
                order.reverse()
            for i, c in order:
                t0 = time.perf_counter()
                st, _, body = c.request("GET", full)
                dt = time.perf_counter() - t0
                if st != 200:
                    print(f"{name}: HTTP {st} from port {a.port[i]}: {body[:200]!r}")
                if k:
                    lats[i].append(dt * 1e3)
        meds = [statistics.median(x) for x in lats]
        for i, m in enumerate(meds):
            medians[i].append(m)
        ratio = f"   ratio {meds[0] / meds[1]:.2f}" if len(meds) > 1 else ""
        print(f"{name:24s} " + "  ".join(f"{m:8.3f}" for m in meds) + ratio)
    if len(a.port) > 1:
        gm = math.exp(statistics.mean(math.log(x / y) for x, y in zip(medians[0], medians[1])))
        print(f"geometric mean of the ratios: {gm:.3f}")


if __name__ == "__main__":
    main()
