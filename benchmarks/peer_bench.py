"""logitsearch beside Chroma's own server, on the same rows, in one run (issue 16).

Each server is started on 127.0.0.1 with a fresh data directory, one at a time, loaded with the same
rows through its JSON API (each at its own largest batch), then measured with the same drivers:

- disk: bytes under the data directory after a graceful stop (the state a restart reads);
- RSS: resident memory of the server's process tree, empty and after ingest;
- ingest: vectors/s until the rows are searchable through the HNSW index (logitsearch `wait=true`;
  Chroma until `indexing_status` reports nothing unindexed, and separately until acknowledged);
- QPS and p50/p99 of single-vector k=10 searches from a Python client (asyncio + httpx, one
  connection per client) at 1 and 8 clients, and from `wrk` (measures the server, not a Python
  client; `apt-get install wrk`; its rows are skipped without it) at 1 and 8 connections, with the
  two servers' wrk runs alternating `--runs` times;
- recall@10 against float64 brute force (squared L2) for 200 held-out queries.

Both use HNSW with M = 16 (Chroma's max_neighbors), ef_construction = 100, ef_search = 100 and squared
L2 distances. Chroma is `pip install '.[bench]'` (chromadb); without it the Chroma column is empty.

    python benchmarks/peer_bench.py                # N = 100,000, d = 384
    python benchmarks/peer_bench.py --quick        # N = 5,000 smoke run

The ratio column is logitsearch / Chroma for "more is better" rows and Chroma / logitsearch for
"less is better" rows, so > 1 always means logitsearch is ahead. This 2-core machine is shared: the
clients compete with the server for CPU, so absolute numbers are floors and only same-run ratios mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HNSW = {"M": 16, "ef_construction": 100, "ef_search": 100}
K = 10
CHROMA_DB = "/api/v2/tenants/default_tenant/databases/default_database"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def brute_l2(X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    X64, Q64 = X.astype(np.float64), Q.astype(np.float64)
    D = (Q64 ** 2).sum(1)[:, None] - 2 * Q64 @ X64.T + (X64 ** 2).sum(1)[None, :]
    return np.argsort(D, axis=1, kind="stable")[:, :k]


@dataclass
class Measured:
    rows: dict[str, float] = field(default_factory=dict)
    wrk: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # cell -> [(rps, p50, p99)]


class Server:
    """One peer: start it, create the collection, ingest, answer a search body, stop it."""
    name = ""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def health(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.data.parent / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv(), cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + self.health(), timeout=2).status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.data.parent / (self.name + '.log')}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss(self) -> int:
        assert self.proc is not None
        return tree_rss(self.proc.pid)

    def create(self, d: int) -> None: ...
    def max_batch(self, row_bytes: int) -> int: ...
    def ingest_batch(self, client: httpx.Client, ids: range, rows: list[str]) -> None: ...
    def wait_indexed(self, client: httpx.Client) -> None: ...
    def search(self, q: list[float]) -> tuple[str, bytes]: ...
    def hit_ids(self, body: dict) -> list[int]: ...


class Logitsearch(Server):
    name = "logitsearch"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warning", "--no-access-log"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGITSEARCH_")}
        return {**env, "LOGITSEARCH_DATA_DIR": str(self.data), "LOGITSEARCH_LOG_LEVEL": "warning"}

    def health(self) -> str:
        return "/readyz"

    def create(self, d: int) -> None:
        r = httpx.put(f"{self.base}/v1/collections/peer", timeout=60,
                      json={"dim": d, "metrics": ["euc"], "index": {"kind": "hnsw", "params": HNSW}})
        r.raise_for_status()

    def max_batch(self, row_bytes: int) -> int:
        return max(1, min(100_000, int(64 * 2**20 * 0.9) // row_bytes))

    def ingest_batch(self, client: httpx.Client, ids: range, rows: list[str]) -> None:
        body = '{"ids": [' + ",".join(map(str, ids)) + '], "vectors": [' + ",".join(rows) + "]}"
        r = client.put(f"{self.base}/v1/collections/peer/points?wait=true", content=body,
                       headers={"Content-Type": "application/json"}, timeout=600)
        r.raise_for_status()

    def wait_indexed(self, client: httpx.Client) -> None:
        return None  # wait=true answers once searchable

    def search(self, q: list[float]) -> tuple[str, bytes]:
        return "/v1/collections/peer/search", json.dumps({"vector": q, "k": K, "metric": "euc"}).encode()

    def hit_ids(self, body: dict) -> list[int]:
        return [int(h["id"]) for h in body["hits"]]


class Chroma(Server):
    name = "chroma"

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.cid = ""

    @staticmethod
    def executable() -> str | None:
        here = Path(sys.executable).parent / "chroma"
        return str(here) if here.exists() else shutil.which("chroma")

    def argv(self) -> list[str]:
        exe = self.executable()
        assert exe is not None
        return [exe, "run", "--host", "127.0.0.1", "--port", str(self.port), "--path", str(self.data)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "ANONYMIZED_TELEMETRY": "False"}

    def health(self) -> str:
        return "/api/v2/heartbeat"

    def create(self, d: int) -> None:
        r = httpx.post(f"{self.base}{CHROMA_DB}/collections", timeout=60, json={
            "name": "peer", "configuration": {"hnsw": {
                "space": "l2", "max_neighbors": HNSW["M"], "ef_construction": HNSW["ef_construction"],
                "ef_search": HNSW["ef_search"]}}})
        r.raise_for_status()
        self.cid = r.json()["id"]

    def max_batch(self, row_bytes: int) -> int:
        return int(httpx.get(f"{self.base}/api/v2/pre-flight-checks", timeout=10).json()["max_batch_size"])

    def ingest_batch(self, client: httpx.Client, ids: range, rows: list[str]) -> None:
        body = '{"ids": [' + ",".join(f'"{i}"' for i in ids) + '], "embeddings": [' + ",".join(rows) + "]}"
        r = client.post(f"{self.base}{CHROMA_DB}/collections/{self.cid}/add", content=body,
                        headers={"Content-Type": "application/json"}, timeout=600)
        r.raise_for_status()

    def wait_indexed(self, client: httpx.Client) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            r = client.get(f"{self.base}{CHROMA_DB}/collections/{self.cid}/indexing_status", timeout=30)
            if r.status_code != 200 or r.json().get("num_unindexed_ops", 0) == 0:
                return
            time.sleep(0.2)

    def search(self, q: list[float]) -> tuple[str, bytes]:
        return (f"{CHROMA_DB}/collections/{self.cid}/query",
                json.dumps({"query_embeddings": [q], "n_results": K, "include": ["distances"]}).encode())

    def hit_ids(self, body: dict) -> list[int]:
        return [int(i) for i in body["ids"][0]]


async def _drive(base: str, reqs: list[tuple[str, bytes]], clients: int, seconds: float) -> tuple[list[float], int]:
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def one(c: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            i = c
            while time.monotonic() < stop:
                path, body = reqs[i % len(reqs)]
                t0 = time.perf_counter()
                try:
                    r = await http.post(path, content=body, headers={"Content-Type": "application/json"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                lat.append(time.perf_counter() - t0) if ok else None
                errors += not ok
                i += clients

    await asyncio.gather(*(one(c) for c in range(clients)))
    return lat, errors


def wrk_run(base: str, reqs: list[tuple[str, bytes]], conns: int, seconds: float, tmp: Path) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from one wrk run cycling through `reqs`."""
    script = tmp / "bodies.lua"
    bodies = ",\n".join("[==[" + b.decode() + "]==]" for _, b in reqs)
    script.write_text(f'local path = "{reqs[0][0]}"\nlocal bodies = {{{bodies}}}\nlocal i = 0\n'
                      'request = function()\n  i = i % #bodies + 1\n'
                      '  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])\nend\n')
    argv = ["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{max(1, round(seconds))}s", "--latency",
            "-s", str(script), base]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=seconds + 60)
    out = proc.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if "Non-2xx" in out or found is None:
        raise RuntimeError(f"wrk against {base} failed:\n{out}\n{proc.stderr}")
    rps = float(found.group(1))

    def pct(p: str) -> float:
        v, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return rps, pct("50"), pct("99")


def measure(server: Server, X: np.ndarray, Q: np.ndarray, truth: np.ndarray, args: argparse.Namespace,
            tmp: Path) -> tuple[Measured, list[tuple[str, bytes]]]:
    m = Measured()
    server.start()
    m.rows["RSS empty (MB)"] = server.rss() / 1e6
    server.create(X.shape[1])
    rows = [json.dumps([round(float(v), 7) for v in r]) for r in X]
    batch = server.max_batch(max(len(r) for r in rows[:100]) + 16)
    with httpx.Client() as client:
        t0 = time.perf_counter()
        for s in range(0, len(rows), batch):
            server.ingest_batch(client, range(s, min(s + batch, len(rows))), rows[s:s + batch])
        acked = time.perf_counter() - t0
        server.wait_indexed(client)
        indexed = time.perf_counter() - t0
    m.rows["ingest batch (rows)"] = batch
    m.rows["ingest, acknowledged (vectors/s)"] = len(rows) / acked
    m.rows["ingest, searchable (vectors/s)"] = len(rows) / indexed
    reqs = [server.search([float(v) for v in q]) for q in Q]
    with httpx.Client(base_url=server.base, timeout=30) as client:
        got = [server.hit_ids(client.post(p, content=b, headers={"Content-Type": "application/json"}).json())
               for p, b in reqs]
    m.rows["recall@10"] = float(np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth.tolist())]))
    for clients in (1, 8):
        lat, errors = asyncio.run(_drive(server.base, reqs, clients, args.seconds))
        m.rows[f"python client, {clients} clients (QPS)"] = len(lat) / args.seconds
        m.rows[f"python client, {clients} clients p50 (ms)"] = float(np.percentile(lat, 50)) * 1e3
        m.rows[f"python client, {clients} clients p99 (ms)"] = float(np.percentile(lat, 99)) * 1e3
        m.rows[f"python client, {clients} clients errors"] = errors
    m.rows["RSS after ingest (MB)"] = server.rss() / 1e6
    return m, reqs


MORE_IS_BETTER = ("vectors/s", "QPS", "recall", "req/s")


def _ratio(row: str, ours: float, theirs: float) -> str:
    if not theirs or not ours or "errors" in row or "batch" in row:
        return ""
    r = ours / theirs if any(s in row for s in MORE_IS_BETTER) else theirs / ours
    return f"{r:.2f}x"


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0, help="per client / wrk cell")
    ap.add_argument("--runs", type=int, default=3, help="alternating wrk runs per server")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.queries, args.seconds, args.runs = 5_000, 50, 2.0, 1
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d), dtype=np.float32)
    Q = (X[rng.choice(args.n, args.queries, replace=False)]
         + 0.5 * rng.standard_normal((args.queries, args.d), dtype=np.float32))
    truth = brute_l2(X, Q, K)
    have_chroma, have_wrk = Chroma.executable() is not None, shutil.which("wrk") is not None
    if not have_chroma:
        print("chroma not installed (pip install '.[bench]'): its column is empty", file=sys.stderr)
    if not have_wrk:
        print("wrk not installed (apt-get install wrk): its rows are skipped", file=sys.stderr)
    results: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as t:
        tmp = Path(t)
        servers: list[Server] = [Logitsearch(tmp / "logitsearch")] + ([Chroma(tmp / "chroma")] if have_chroma else [])
        reqs: dict[str, list[tuple[str, bytes]]] = {}
        for s in servers:  # one at a time: load, measure, stop, measure the disk
            try:
                results[s.name], reqs[s.name] = measure(s, X, Q, truth, args, tmp)
            finally:
                s.stop()
            results[s.name].rows["on disk (MB)"] = disk_bytes(s.data) / 1e6
            results[s.name].rows["on disk / raw"] = disk_bytes(s.data) / X.nbytes
        if have_wrk:
            for s in servers:
                s.start()  # after a restart: the first search is cold, then warm up before wrk
                path, body = reqs[s.name][0]
                with httpx.Client(base_url=s.base, timeout=120) as client:
                    t0 = time.perf_counter()
                    client.post(path, content=body, headers={"Content-Type": "application/json"})
                    results[s.name].rows["first search after restart (ms)"] = (time.perf_counter() - t0) * 1e3
                    for p_, b_ in reqs[s.name]:
                        client.post(p_, content=b_, headers={"Content-Type": "application/json"})
            try:
                for _ in range(args.runs):
                    for conns in (1, 8):
                        for s in servers:  # alternate servers within each cell
                            results[s.name].wrk.setdefault(f"wrk, {conns} conn", []).append(
                                wrk_run(s.base, reqs[s.name], conns, args.seconds, tmp))
            finally:
                for s in servers:
                    s.stop()
    ours, theirs = results["logitsearch"], results.get("chroma", Measured())
    for m in results.values():
        m.rows["RSS after ingest - empty (MB)"] = m.rows["RSS after ingest (MB)"] - m.rows["RSS empty (MB)"]
        m.rows["RSS after ingest - empty / raw"] = m.rows["RSS after ingest - empty (MB)"] * 1e6 / X.nbytes
        for cell, runs in m.wrk.items():
            m.rows[f"{cell} (req/s, median of runs)"] = float(np.median([r[0] for r in runs]))
            m.rows[f"{cell} p50 (ms)"] = float(np.median([r[1] for r in runs]))
            m.rows[f"{cell} p99 (ms)"] = float(np.median([r[2] for r in runs]))
            m.rows[f"{cell} runs (req/s)"] = " / ".join(f"{r[0]:.0f}" for r in runs)  # type: ignore[assignment]
    print(f"\n## logitsearch beside Chroma: N = {args.n:,}, d = {args.d}, HNSW M=16 efC=100 efS=100, k = {K}\n")
    print(f"raw rows: {X.nbytes / 1e6:.1f} MB float32; {args.seconds:g} s per cell; wrk runs: {args.runs}\n")
    print("| measure | Chroma | logitsearch | ratio (>1: logitsearch ahead) |\n|---|---|---|---|")
    for row in ours.rows:
        a, b = theirs.rows.get(row), ours.rows[row]
        if isinstance(b, str):
            print(f"| {row} | {a or '—'} | {b} | |")
        else:
            print(f"| {row} | {_fmt(a)} | {_fmt(b)} | {_ratio(row, b, a) if a is not None else ''} |")


if __name__ == "__main__":
    main()
