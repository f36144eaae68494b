"""Service benchmark (issue 4): ingest rate and search QPS over HTTP, beside the same searches in-process.

Data: N rows of d = 384 made by resampling the real MiniLM dev rows (../shared/data) with Gaussian
noise (sigma = 0.25 x the per-dimension std), queries likewise from other draws. Everything runs on
127.0.0.1: one `uvicorn --factory service.app:create_app` process over a temporary data directory,
with the default durability (SQLite WAL, synchronous=FULL: every acknowledged write is fsynced).

1. ingest: JSON upsert in batches of 1,000 (`vectors` as JSON lists, and `vectors_b64`), and one
   bulk `.npy` upload of all N rows (raw body, streamed), each answered once searchable (wait=true);
2. an HNSW cos index is built in the background (POST …/indexes) and its build time measured;
3. the server is stopped (it snapshots), the snapshot is loaded in-process as the baseline IndexSet,
   and the server restarted;
4. search: recall@10 of HNSW against the exact flat index, then QPS for single and batch (100
   queries per call) searches with 1 and 8 concurrent clients, over HTTP and in-process, for a fixed
   time each, in alternating slices (--rounds) so that the shared machine's drifting load hits both
   sides alike; the median slice of each side is reported. HTTP clients are threads with keep-alive `http.client` connections and pre-encoded
   bodies, so the numbers measure the server, not JSON encoding in the client. Client and server
   share the machine's cores.

    python benchmarks/service_bench.py            # N = 100,000 (a few minutes)
    python benchmarks/service_bench.py --quick    # N = 5,000, short cells (smoke run)
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from indexes.knn import IndexSet
from service.client import Client
from tests.e2e.conftest import start_server, stop_server

DATA = Path(os.environ.get("LOGITSEARCH_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGETS = {"json": 3_700, "npy": 25_000, "single-1": 490, "single-8": 670}
BATCH = 100


def make_data(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    base = np.load(DATA / "minilm_debian_dev.npy").astype(np.float32)
    rng = np.random.default_rng(seed)
    sigma = 0.25 * base.std(axis=0)

    def draw(k: int) -> np.ndarray:
        return (base[rng.integers(len(base), size=k)] + rng.normal(size=(k, base.shape[1])) * sigma).astype(
            np.float32)

    return draw(n), draw(m)


@dataclass
class Cell:
    requests: int
    queries: int
    seconds: float
    latencies: list[float]

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.latencies)) * 1e3 if self.latencies else float("nan")


def run_threads(clients: int, seconds: float, work: Callable[[int, int], int]) -> Cell:
    """`clients` threads call work(thread, i) (returns queries answered) until `seconds` pass."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    counts = [0] * clients
    start = time.perf_counter()
    stop = start + seconds

    def loop(c: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            counts[c] += work(c, i)
            lat[c].append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return Cell(sum(len(x) for x in lat), sum(counts), elapsed, [v for x in lat for v in x])


class Http:
    """One keep-alive connection per client thread; bodies are pre-encoded JSON."""

    def __init__(self, base: str, clients: int) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conns = [http.client.HTTPConnection(host, int(port), timeout=120) for _ in range(clients)]

    def post(self, c: int, method: str, path: str, body: bytes) -> bytes:
        conn = self.conns[c]
        try:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            r = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed a connection left idle past its keep-alive timeout: reconnect once
            conn.close()
            conn.request(method, path, body, {"Content-Type": "application/json"})
            r = conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return data

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def ingest(base: str, X: np.ndarray, json_rows: int) -> list[tuple[str, int, float]]:
    rows = []
    with Client(base) as c:
        c.create_collection("bench", X.shape[1], metrics=["cos"])
        c.create_collection("ingest-json", X.shape[1], metrics=["cos"])
        c.create_collection("ingest-b64", X.shape[1], metrics=["cos"])
        started = time.perf_counter()
        result = c.upload_npy("bench", X, start=0)
        rows.append((f"bulk .npy, one request of {len(X):,} rows", result["count"], time.perf_counter() - started))
    h = Http(base, 1)
    try:
        for name, encode in (("ingest-json", lambda s: {"vectors": X[s:s + 1000].tolist()}),
                             ("ingest-b64", lambda s: {"vectors_b64": base64.b64encode(
                                 np.ascontiguousarray(X[s:s + 1000], dtype="<f4").tobytes()).decode()})):
            bodies = [json.dumps({"ids": list(range(s, min(s + 1000, json_rows))), **encode(s)}).encode()
                      for s in range(0, json_rows, 1000)]
            started = time.perf_counter()
            for body in bodies:
                h.post(0, "PUT", f"/v1/collections/{name}/points?wait=true", body)
            label = "JSON upsert, `vectors` lists" if name == "ingest-json" else "JSON upsert, `vectors_b64`"
            rows.append((f"{label}, 1,000 per request", json_rows, time.perf_counter() - started))
    finally:
        h.close()
    return rows


def build_hnsw(base: str, timeout: float) -> float:
    with Client(base) as c:
        started = time.perf_counter()
        c.add_index("bench", "cos", kind="hnsw")
        while True:
            state = {i["id"]: i for i in c.indexes("bench")}["cos-hnsw"]
            if state["status"] != "building":
                break
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"HNSW build still at {state['progress']:.0%} after {timeout:.0f} s")
            time.sleep(0.2)
        if state["status"] != "ready":
            raise RuntimeError(f"HNSW build failed: {state['error']}")
        return time.perf_counter() - started


def recall(base: str, Q: np.ndarray, k: int = 10) -> float:
    with Client(base) as c:
        approx = c.search_batch("bench", Q, k=k, kind="hnsw", with_payload=False)
        exact = c.search_batch("bench", Q, k=k, kind="flat", with_payload=False)
    return float(np.mean([len(set(a.ids) & set(e.ids)) / k for a, e in zip(approx, exact)]))


def search_cells(base: str, local: IndexSet, Q: np.ndarray, seconds: float,
                 rounds: int) -> list[tuple[str, int, Cell, Cell]]:
    single = [json.dumps({"vector": q.astype(float).tolist(), "k": 10, "metric": "cos", "kind": "hnsw",
                          "with_payload": False}).encode() for q in Q]
    batches = [np.roll(Q, -s, axis=0)[:BATCH] for s in range(0, len(Q), BATCH)]
    batch_bodies = [json.dumps({"searches": [{"vector": q.astype(float).tolist(), "k": 10, "metric": "cos",
                                              "kind": "hnsw", "with_payload": False} for q in B]}).encode()
                    for B in batches]
    b64_bodies = [json.dumps({"searches": [{"vector_b64": base64.b64encode(q.astype("<f4").tobytes()).decode(),
                                            "k": 10, "metric": "cos", "kind": "hnsw", "with_payload": False}
                                           for q in B]}).encode() for B in batches]
    Q64 = Q.astype(np.float64)
    return [cell for clients in (1, 8)
            for cell in _cells(base, local, clients, seconds, rounds, single, batch_bodies, b64_bodies, Q64, batches)]


def _alternate(rounds: int, seconds: float, clients: int, http_work: Callable[[int, int], int],
               local_work: Callable[[int, int], int]) -> tuple[Cell, Cell]:
    """HTTP and in-process in alternating slices (seconds / rounds each), so drift in the machine's
    load hits both sides alike; the slice with the median QPS of each side is reported."""
    over_http, local = [], []
    for _ in range(rounds):
        over_http.append(run_threads(clients, seconds / rounds, http_work))
        local.append(run_threads(clients, seconds / rounds, local_work))

    def median(cells: list[Cell]) -> Cell:
        return sorted(cells, key=lambda c: c.qps)[len(cells) // 2]

    return median(over_http), median(local)


def _cells(base: str, local: IndexSet, clients: int, seconds: float, rounds: int, single: list[bytes],
           batch_bodies: list[bytes], b64_bodies: list[bytes], Q64: np.ndarray,
           batches: list[np.ndarray]) -> list[tuple[str, int, Cell, Cell]]:
    h = Http(base, clients)
    search, batch = "/v1/collections/bench/search", "/v1/collections/bench/search/batch"

    def pick(items: list, c: int, i: int):  # type: ignore[no-untyped-def]
        return items[(i * clients + c) % len(items)]

    def in_process_batch(c: int, i: int) -> int:
        return len(local.search("cos", pick(batches, c, i).astype(np.float64), 10, kind="hnsw"))

    try:
        for _ in range(20):  # warm up the connection and the index
            h.post(0, "POST", search, single[0])
        out = [("single", clients, *_alternate(
            rounds, seconds, clients, lambda c, i: len(h.post(c, "POST", search, pick(single, c, i))) and 1,
            lambda c, i: len(local.search("cos", pick(Q64, c, i), 10, kind="hnsw"))))]
        for label, bodies in (("JSON numbers", batch_bodies), ("vector_b64", b64_bodies)):
            out.append((f"batch of {BATCH}, {label}", clients, *_alternate(
                rounds, seconds, clients,
                lambda c, i, bodies=bodies: len(h.post(c, "POST", batch, pick(bodies, c, i))) and BATCH,
                in_process_batch)))
        return out
    finally:
        h.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 5,000 and 2 s cells (smoke run)")
    parser.add_argument("--n", type=int, help="rows (default 100,000; 5,000 with --quick)")
    parser.add_argument("--seconds", type=float, help="seconds per search cell and side (default 8; 2 with --quick)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating HTTP / in-process slices per cell; medians reported (default 4)")
    args = parser.parse_args(argv)
    n = args.n or (5_000 if args.quick else 100_000)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    json_rows = min(n, 5_000 if args.quick else 20_000)
    X, Q = make_data(n, 1000, seed=4)
    print(f"# service benchmark: N = {n:,}, d = {X.shape[1]}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start\n")
    with tempfile.TemporaryDirectory(prefix="logitsearch-bench-") as tmp:
        data = Path(tmp) / "data"
        base, proc = start_server(data)
        try:
            ingested = ingest(base, X, json_rows)
            build_s = build_hnsw(base, timeout=1800)
        finally:
            stop_server(proc, timeout=600)  # SIGTERM: the lifespan snapshots the indexes
        snapshot = next(p for p in sorted((data / "indexes").iterdir())
                        if json.loads((p / "manifest.json").read_text())["count"] == n)
        local = IndexSet.load(snapshot)
        base, proc = start_server(data)
        try:
            r10 = recall(base, Q[:200])
            cells = search_cells(base, local, Q, seconds, max(1, args.rounds))
        finally:
            stop_server(proc, timeout=600)

    print("| ingest (durability on: WAL, synchronous=FULL) | rows | seconds | rows/s | target |")
    print("|---|---:|---:|---:|---:|")
    for label, rows, secs in ingested:
        target = TARGETS["npy"] if label.startswith("bulk") else TARGETS["json"]
        print(f"| {label} | {rows:,} | {secs:.2f} | {rows / secs:,.0f} | >= {target:,} |")
    print(f"\nHNSW (cos, M=32, ef_construction=200, ef_search=128) built in the background in {build_s:.1f} s; "
          f"recall@10 against the exact flat index over 200 queries: {r10:.4f} (target >= 0.987)\n")
    print(f"Search cells alternate HTTP and in-process in {max(1, args.rounds)} slices of {seconds / max(1, args.rounds):g} s "
          "each; the median slice of each side is shown.\n")
    print("| search (cos, HNSW, k=10) | clients | HTTP queries/s | HTTP p50 ms | in-process queries/s "
          "| in-process p50 ms | in-process / HTTP | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for mode, clients, over_http, local_cell in cells:
        target = (f">= {TARGETS[f'single-{clients}']} QPS" if mode == "single"
                  else "in-process / HTTP <= 1.3")
        print(f"| {mode} | {clients} | {over_http.qps:,.0f} | {over_http.p50_ms:.2f} | {local_cell.qps:,.0f} | "
              f"{local_cell.p50_ms:.2f} | {local_cell.qps / over_http.qps:.2f} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
