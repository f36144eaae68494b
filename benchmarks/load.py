"""Load test: p50/p99 latency and errors at rising concurrency, for search and upsert (issue 7).

Loopback only and bounded: it starts its own server on 127.0.0.1 with a temporary data directory
(or uses `--url`, which must be a loopback address), loads N points, then for each concurrency
level runs that many clients for a fixed time per operation and prints one markdown table.
Each client is an asyncio task with its own connection; all clients share one process, which on a
2-core machine also competes with the server for CPU, so the absolute numbers are a floor.

    python benchmarks/load.py            # N = 20,000, d = 384, 4 s per cell
    python benchmarks/load.py --quick    # N = 2,000, 1 s per cell (smoke run)

Columns: requests completed, errors (non-2xx or transport failure), throughput, p50/p99 latency,
and p50 relative to the 1-client p50 of the same operation measured in this run (the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from service.auth import is_loopback

COLLECTION = "load"
LEVELS = (1, 2, 4, 8, 16)


@dataclass
class Cell:
    op: str
    clients: int
    latencies: list[float]
    errors: int
    seconds: float

    @property
    def done(self) -> int:
        return len(self.latencies)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(data_dir: str) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGITSEARCH_")}
    env.update(LOGITSEARCH_DATA_DIR=data_dir, LOGITSEARCH_LOG_LEVEL="warning")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             "--no-access-log"], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _load(base: str, X: np.ndarray) -> None:
    """Create the collection and bulk-load X (one .npy body, ids 0..n-1)."""
    buf = io.BytesIO()
    np.save(buf, X)
    with httpx.Client(base_url=base, timeout=300) as client:
        r = client.put(f"/v1/collections/{COLLECTION}", json={"dim": X.shape[1], "metrics": ["euc", "cos"]})
        r.raise_for_status()
        r = client.post(f"/v1/collections/{COLLECTION}/points/bulk", params={"start": 0}, content=buf.getvalue(),
                        headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()


async def _run_cell(base: str, op: str, clients: int, seconds: float, X: np.ndarray, k: int,
                    upsert_batch: int) -> Cell:
    latencies: list[float] = []
    errors = 0
    rng = np.random.default_rng(clients)
    n, d = X.shape
    next_id = [n + 10_000_000 * clients]

    def body() -> tuple[str, str, dict]:
        if op == "search":
            q = X[rng.integers(n)] + rng.normal(0, 0.01, d)
            return "POST", f"/v1/collections/{COLLECTION}/search", {"vector": q.tolist(), "k": k, "metric": "euc"}
        ids = list(range(next_id[0], next_id[0] + upsert_batch))
        next_id[0] += upsert_batch
        rows = X[rng.integers(n, size=upsert_batch)] + rng.normal(0, 0.01, (upsert_batch, d))
        return "PUT", f"/v1/collections/{COLLECTION}/points", {"ids": ids, "vectors": rows.tolist()}

    async def client_loop(stop: float) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            while time.perf_counter() < stop:
                method, path, payload = body()
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, json=payload)
                    ok = r.is_success
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(start + seconds) for _ in range(clients)))
    return Cell(op, clients, latencies, errors, time.perf_counter() - start)


def _table(cells: list[Cell]) -> str:
    base = {c.op: c.pct(50) for c in cells if c.clients == 1}
    lines = ["| op | clients | requests | errors | req/s | p50 ms | p99 ms | p50 / 1-client p50 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c.op} | {c.clients} | {c.done} | {c.errors} | {c.done / c.seconds:,.0f} | "
                     f"{c.pct(50):.2f} | {c.pct(99):.2f} | {c.pct(50) / base[c.op]:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and short smoke run")
    parser.add_argument("--url", help="an already running server on a loopback address (default: start one)")
    parser.add_argument("-n", type=int, help="points loaded before measuring")
    parser.add_argument("-d", type=int, default=384, help="dimension")
    parser.add_argument("--seconds", type=float, help="measuring time per cell")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--upsert-batch", type=int, default=10, help="points per upsert request")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrency levels")
    args = parser.parse_args(argv)
    n = args.n or (2_000 if args.quick else 20_000)
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    if args.url and not is_loopback(urlparse(args.url).hostname or ""):
        parser.error("--url must be a loopback address: this script only loads the local machine")
    X = np.random.default_rng(7).normal(0, 3, (n, args.d)).astype(np.float32)

    with contextlib.ExitStack() as stack:
        base = args.url or stack.enter_context(_server(stack.enter_context(tempfile.TemporaryDirectory())))
        t0 = time.perf_counter()
        _load(base, X)
        load_s = time.perf_counter() - t0
        for op in ("search", "upsert"):  # warm-up: first-call compilation and caches stay out of the table
            asyncio.run(_run_cell(base, op, 2, min(seconds, 1.0), X, args.k, args.upsert_batch))
        cells = [asyncio.run(_run_cell(base, op, c, seconds, X, args.k, args.upsert_batch))
                 for op in ("search", "upsert") for c in args.levels]
    print(f"## load: N = {n:,}, d = {args.d}, k = {args.k}, upsert batch = {args.upsert_batch}, "
          f"{seconds:g} s per cell, loopback, JSON bodies; flat euc index; bulk preload {n / load_s:,.0f} points/s; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(_table(cells))
    return 0 if all(c.errors == 0 for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
