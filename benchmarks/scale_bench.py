"""Sharded collections on Ray (issue 13): ingest rate, QPS and p50/p99 for 1, 2 and 4 shards beside
the unsharded server, in one run on this machine.

Two servers on 127.0.0.1 over temporary data directories: one without Ray (collection `u`, today's
single process), one with LOGITSEARCH_RAY_ADDRESS=local (it starts a local Ray: 127.0.0.1, no
dashboard, bounded object store) holding collections `s1`, `s2`, `s4` with 1, 2 and 4 shard actors.
Data: N rows of d = 384 resampled from the real MiniLM dev rows with noise (as service_bench.py).

1. ingest: JSON upserts of 1,000 rows (`vectors_b64`, wait=true), then one bulk `.npy` of N rows;
2. search, flat euc, k = 10: single queries with 1 and 4 concurrent clients, and batches of 100
   queries with 1 client, each cell for a fixed time, the collections in alternating order per round
   (--rounds), the median round reported.

The per-query overhead of the fan-out is the p50 of a single query on `sN` minus the p50 on `u`.
This machine has 2 cores shared by the client, the server and every shard actor, so parallel
shards cannot show a speed-up here; the numbers measure the overhead. Each shard actor asks Ray
for LOGITSEARCH_RAY_SHARD_CPUS = 0.25 CPU (1 thread) so that 7 actors fit on 2 CPUs.

    python benchmarks/scale_bench.py            # N = 20,000
    python benchmarks/scale_bench.py --quick    # N = 4,000, short cells
    python benchmarks/scale_bench.py --shard-figures   # one shard's memory and query time at d = 1000,
                                                       # the inputs of docs/scaling.md's projection
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from service_bench import Cell, Http, make_data, run_threads

from tests.e2e.conftest import start_server, stop_server

BATCH = 100
JSON_ROWS = 1000


def _put(http: Http, name: str, body: dict) -> bytes:  # type: ignore[type-arg]
    return http.post(0, "PUT", f"/v1/collections/{name}", json.dumps(body).encode())


def ingest(http: Http, name: str, X: np.ndarray) -> tuple[float, float]:
    """(JSON rows/s, bulk .npy rows/s) into a fresh collection."""
    half = len(X) // 2
    t0 = time.perf_counter()
    for s in range(0, half, JSON_ROWS):
        part = X[s:min(s + JSON_ROWS, half)]
        body = {"ids": list(range(s, s + len(part))), "vectors_b64": base64.b64encode(part.tobytes()).decode()}
        http.post(0, "PUT", f"/v1/collections/{name}/points", json.dumps(body).encode())
    json_rate = half / (time.perf_counter() - t0)
    buf = io.BytesIO()
    np.save(buf, X[half:])
    host, port = http.conns[0].host, http.conns[0].port
    import http.client as hc

    conn = hc.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", f"/v1/collections/{name}/points/bulk?start={half}", buf.getvalue(),
                 {"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"bulk into {name}: {r.status} {data[:300]!r}")
    conn.close()
    return json_rate, (len(X) - half) / (time.perf_counter() - t0)


def p99_ms(cell: Cell) -> float:
    return float(np.percentile(cell.latencies, 99)) * 1e3 if cell.latencies else float("nan")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def shard_figures(n: int) -> None:
    """One shard's IndexSet at d = 1000 with one thread (a shard actor with 1 CPU): resident bytes
    per row and single-query milliseconds for flat and IVF, euc and tri (t = 10)."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from indexes.knn import IndexSet, IndexSpec

    rng = np.random.default_rng(3)
    path = Path(os.environ.get("LOGITSEARCH_SHARED_DATA", REPO.parent / "shared" / "data")) / "imagenet_effnet_dev.npy"
    base = np.load(path) if path.exists() else rng.normal(0, 1.5, (5000, 1000)).astype(np.float32)
    X = (base[rng.integers(0, len(base), n)] + rng.normal(0, 0.5, (n, 1000))).astype(np.float32)
    Q = (base[rng.integers(0, len(base), 30)] + rng.normal(0, 0.5, (30, 1000))).astype(np.float64)
    print(f"one shard, n = {n:,} rows, d = 1000, 1 thread; resident bytes per row and per-query ms (median of 30)\n")
    print("| index | bytes/row (RSS) | single query ms, k = 10 |")
    print("|---|---|---|")
    for metric, t in (("euc", None), ("tri", 10.0)):
        for kind, params in (("flat", {}), ("ivf", {"nlist": 256, "nprobe": 16})):
            before = _rss()
            iset = IndexSet(1000, [IndexSpec(metric, t, kind, params)])  # type: ignore[arg-type]
            for s in range(0, n, 16384):
                iset.upsert(np.arange(s, min(s + 16384, n), dtype=np.int64), X[s:s + 16384], 1)
            iset.search(metric, Q[:1], 10, temperature=t, kind=kind)  # type: ignore[arg-type]
            grown = _rss() - before
            times = []
            for q in Q:
                t0 = time.perf_counter()
                iset.search(metric, q[None], 10, temperature=t, kind=kind)  # type: ignore[arg-type]
                times.append(time.perf_counter() - t0)
            print(f"| {metric}{'' if t is None else f' t={t:g}'} {kind} | {grown / n:,.0f} "
                  f"| {np.median(times) * 1e3:.2f} |")
            del iset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=4.0, help="per cell and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shard-figures", action="store_true", help="only one shard's memory and query time")
    a = ap.parse_args(argv)
    if a.shard_figures:
        shard_figures(20_000 if a.quick else 50_000)
        return 0
    if a.quick:
        a.n, a.seconds, a.rounds = 4_000, 1.5, 1
    X, Q = make_data(a.n, 500, seed=13)
    single = [json.dumps({"vector": q.astype(float).tolist(), "k": 10, "metric": "euc"}).encode() for q in Q]
    batches = [json.dumps({"searches": [{"vector": Q[(i + j) % len(Q)].astype(float).tolist(), "k": 10,
                                         "metric": "euc"} for j in range(BATCH)]}).encode() for i in range(0, 500, 50)]
    cols = {"u": None, "s1": 1, "s2": 2, "s4": 4}
    with tempfile.TemporaryDirectory() as tmp:
        plain_base, plain = start_server(Path(tmp) / "plain")
        ray_base, rayed = start_server(Path(tmp) / "ray", {"LOGITSEARCH_RAY_ADDRESS": "local",
                                                           "LOGITSEARCH_RAY_SHARD_CPUS": "0.25"}, timeout=120)
        try:
            bases = {c: plain_base if n is None else ray_base for c, n in cols.items()}
            https = {c: Http(bases[c], 4) for c in cols}
            rates = {}
            for c, n in cols.items():
                body = {"dim": X.shape[1], "metrics": ["euc"], **({"shards": n} if n else {})}
                _put(https[c], c, body)
                rates[c] = ingest(https[c], c, X)
            cells: dict[tuple[str, str], list[Cell]] = {}
            for r in range(a.rounds):
                order = list(cols) if r % 2 == 0 else list(cols)[::-1]
                for c in order:
                    h, path = https[c], f"/v1/collections/{c}/search"
                    for label, clients, bodies, p, per in (("single-1", 1, single, path, 1),
                                                           ("single-4", 4, single, path, 1),
                                                           ("batch100-1", 1, batches, path + "/batch", BATCH)):
                        def work(t: int, i: int, h: Http = h, bodies: list[bytes] = bodies, p: str = p,
                                 per: int = per) -> int:
                            h.post(t, "POST", p, bodies[(t * 131 + i) % len(bodies)])
                            return per

                        cells.setdefault((c, label), []).append(run_threads(clients, a.seconds, work))
        finally:
            stop_server(rayed)
            stop_server(plain)

    def med(c: str, label: str) -> Cell:
        runs = sorted(cells[(c, label)], key=lambda x: x.qps)
        return runs[len(runs) // 2]

    print(f"N = {a.n:,} rows, d = {X.shape[1]}, flat euc, k = 10; {a.rounds} round(s) of {a.seconds:g} s per cell; "
          "2 cores shared by client, server and shard actors\n")
    print("| collection | shards | JSON ingest rows/s | .npy ingest rows/s | single QPS (1 client) | p50 ms | p99 ms "
          "| single QPS (4 clients) | p50 ms | p99 ms | batch-100 QPS | fan-out overhead p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    base_p50 = med("u", "single-1").p50_ms
    for c, n in cols.items():
        s1, s4, b = med(c, "single-1"), med(c, "single-4"), med(c, "batch100-1")
        over = "-" if n is None else f"{s1.p50_ms - base_p50:+.2f}"
        print(f"| {c} | {'unsharded (no Ray)' if n is None else n} | {rates[c][0]:,.0f} | {rates[c][1]:,.0f} "
              f"| {s1.qps:,.0f} | {s1.p50_ms:.2f} | {p99_ms(s1):.2f} | {s4.qps:,.0f} | {s4.p50_ms:.2f} "
              f"| {p99_ms(s4):.2f} | {b.qps:,.0f} | {over} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
