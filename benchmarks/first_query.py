"""First request of each kind after a start, against a warm request of the same kind (issue 16, goal 3).

    python benchmarks/first_query.py [--n 20000] [--dim 256] [--repeat 3]

One data directory (a default collection euc, cos, tri and ced at t = 10, a payload index on `label`,
and an HNSW index on euc) is ingested once; then the server is started on copies of it, a real
uvicorn process each time, in four scenarios:

- before, fresh install: warm-up off (LOGITSEARCH_WARMUP_SECONDS=0), an empty NUMBA_CACHE_DIR
- before, restart:       warm-up off, the cache the previous scenario left
- fresh install:         warm-up on, an empty NUMBA_CACHE_DIR
- restart:               warm-up on, the cache the previous scenario left

Each waits for /readyz 200 (the time from process start is the first row), then times the first
request of each kind and the median of `--repeat` warm requests of the same kind, in that run.
Prints one markdown table. Goal: every first request <= 100 ms once /readyz is 200.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import free_port, stop_server

NAME = "bench"
FEW = {"must": [{"key": "label", "match": {"value": 3}}]}      # ~1/100 of the rows: the exact filter scan
MANY = {"must": [{"key": "label", "range": {"lt": 50}}]}       # ~1/2: the filtered index search


def _start(data: Path, cache: Path, warmup: bool, log: Path) -> tuple[str, subprocess.Popen[bytes], float]:
    """A server on `data` with NUMBA_CACHE_DIR=cache; (base, process, seconds from start to /readyz 200)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGITSEARCH_", "NUMBA_CACHE_DIR"))}
    env.update(LOGITSEARCH_DATA_DIR=str(data), LOGITSEARCH_LOG_LEVEL="warning", NUMBA_CACHE_DIR=str(cache),
               PYTHONPATH=str(REPO), **({} if warmup else {"LOGITSEARCH_WARMUP_SECONDS": "0"}))
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
                                 "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                                 "--log-level", "warning"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return base, proc, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > 600:
            stop_server(proc)
            raise SystemExit(f"server did not become ready; see {log}")
        time.sleep(0.02)


def _ingest(base: str, X: np.ndarray[Any, Any]) -> None:
    c = httpx.Client(base_url=base, timeout=600)
    c.put(f"/v1/collections/{NAME}", json={"dim": X.shape[1], "metrics": ["euc", "cos", "tri", "ced"],
                                           "temperatures": [10.0], "payload_index": ["label"]}).raise_for_status()
    step = 5000
    for s in range(0, X.shape[0], step):
        B = np.ascontiguousarray(X[s : s + step], dtype="<f4")
        ids = list(range(s, s + B.shape[0]))
        c.put(f"/v1/collections/{NAME}/points", json={
            "ids": ids, "vectors_b64": base64.b64encode(B.tobytes()).decode(),
            "payloads": [{"label": i % 100} for i in ids]}).raise_for_status()
    c.post(f"/v1/collections/{NAME}/indexes", json={"metric": "euc", "kind": "hnsw"}).raise_for_status()
    while any(ix["status"] != "ready" for ix in c.get(f"/v1/collections/{NAME}/indexes").json()["indexes"]):
        time.sleep(0.2)


def kinds(q: list[float], Q: list[list[float]]) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(kind, method, path, body) of each request timed."""
    s, e = f"/v1/collections/{NAME}/search", f"/v1/collections/{NAME}/evaluate"
    one = {"vector": q, "k": 10, "with_payload": False}
    out: list[tuple[str, str, str, dict[str, Any] | None]] = []
    for m in ("euc", "cos", "tri", "ced"):
        out.append((f"search {m} flat", "POST", s, {**one, "metric": m}))
    out += [
        ("search tri, most rows (scanned)", "POST", s, {**one, "metric": "tri", "k": 5000}),
        ("search euc hnsw", "POST", s, {**one, "metric": "euc", "kind": "hnsw"}),
        ("search euc hnsw exact", "POST", s, {**one, "metric": "euc", "kind": "hnsw", "exact": True}),
        ("search by id (cos)", "POST", s, {"id": 7, "k": 10, "metric": "cos", "with_payload": False}),
        ("search tri, filter (few rows)", "POST", s, {**one, "metric": "tri", "filter": FEW}),
        ("search euc, filter (half)", "POST", s, {**one, "metric": "euc", "filter": MANY}),
        ("search tri, filter (half)", "POST", s, {**one, "metric": "tri", "filter": MANY}),
        ("batch 2 x tri", "POST", s + "/batch", {"searches": [{**one, "vector": v, "metric": "tri"} for v in Q[:2]]}),
        ("batch 16 x euc", "POST", s + "/batch", {"searches": [{**one, "vector": v, "metric": "euc"} for v in Q]}),
        ("batch 16 x ced", "POST", s + "/batch", {"searches": [{**one, "vector": v, "metric": "ced"} for v in Q]}),
        ("evaluate one_to_many", "POST", e, {"id": 7, "temperatures": [1.0, 10.0], "sample": 2000}),
        ("evaluate ranks=paper", "POST", e, {"id": 7, "ranks": "paper", "temperatures": [10.0], "sample": 2000}),
        ("evaluate many_to_many", "POST", e, {"mode": "many_to_many", "temperatures": [10.0], "sample": 200}),
        ("evaluate queries + labels", "POST", e, {"queries": {"sample": 5}, "labels": "label", "temperatures": [10.0], "sample": 2000}),
        ("evaluate filter", "POST", e, {"id": 7, "filter": MANY, "temperatures": [10.0], "sample": 2000}),
        ("roughness", "GET", f"/v1/collections/{NAME}/roughness?sample=2000", None),
        ("shepard.png", "POST", e + "/shepard.png", {"id": 7, "metric": "tri", "temperature": 10.0, "sample": 2000, "max_points": 2000}),
        ("sweep.png", "POST", e + "/sweep.png", {"id": 7, "sample": 2000, "temperatures": [1.0, 10.0]}),
        ("roughness.png", "GET", f"/v1/collections/{NAME}/roughness.png?sample=2000", None),
    ]
    return out


def _timed(c: httpx.Client, method: str, path: str, body: dict[str, Any] | None) -> float:
    t0 = time.perf_counter()
    r = c.request(method, path, json=body)
    ms = (time.perf_counter() - t0) * 1e3
    if r.status_code != 200:
        raise SystemExit(f"{method} {path}: {r.status_code} {r.text[:300]}")
    return ms


def scenario(data: Path, cache: Path, warmup: bool, work: Path, todo: list[Any], repeat: int) -> dict[str, Any]:
    run = Path(tempfile.mkdtemp(dir=work))
    shutil.copytree(data, run / "data")
    base, proc, ready = _start(run / "data", cache, warmup, work / "server.log")
    try:
        c = httpx.Client(base_url=base, timeout=600)
        first = {k: _timed(c, m, p, b) for k, m, p, b in todo}
        warm = {k: statistics.median(_timed(c, m, p, b) for _ in range(repeat)) for k, m, p, b in todo}
        status = c.get("/readyz").json()
    finally:
        stop_server(proc)
    return {"ready": ready, "first": first, "warm": warm, "readyz": status}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((args.n, args.dim)) * 3).astype(np.float32)
    todo = kinds(X[1].tolist(), X[100:116].tolist())
    work = Path(tempfile.mkdtemp(prefix="first-query-"))
    try:
        base, proc, _ = _start(work / "data", work / "setup-cache", True, work / "server.log")
        try:
            _ingest(base, X)
        finally:
            stop_server(proc)
        runs = {}
        for label, warmup, cache in (("before, fresh", False, "cache-off"), ("before, restart", False, "cache-off"),
                                     ("fresh install", True, "cache-on"), ("restart", True, "cache-on")):
            runs[label] = scenario(work / "data", work / cache, warmup, work, todo, args.repeat)
            print(f"{label}: ready in {runs[label]['ready']:.1f} s; /readyz {runs[label]['readyz']}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    labels = list(runs)
    print(f"N = {args.n}, d = {args.dim}; first request / warm median of {args.repeat} (ms), same run\n")
    print("| kind | " + " | ".join(f"{lab}: first | warm | ratio" for lab in labels) + " |")
    print("|---|" + "---:|---:|---:|" * len(labels))
    print("| process start to /readyz 200 (s) | " + " | ".join(f"{runs[lab]['ready']:.1f} | | " for lab in labels) + " |")
    for k, *_ in todo:
        cells = []
        for lab in labels:
            f, w = runs[lab]["first"][k], runs[lab]["warm"][k]
            cells.append(f"{f:.0f} | {w:.0f} | {f / w:.1f}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    worst = {lab: max(runs[lab]["first"].values()) for lab in labels}
    print("\nslowest first request: " + ", ".join(f"{lab} {ms:.0f} ms" for lab, ms in worst.items()))


if __name__ == "__main__":
    main()
