"""Disk and memory per collection layout, and the 1,000,000 x 1000 scale check (issue 16).

For each layout a fresh server (127.0.0.1, temporary data directory) is started, one collection is
created and loaded through `points/bulk` (raw .npy bodies, streamed), and the script reports:

- RSS of the empty server, peak RSS while loading (sampled every 50 ms), RSS after loading, and
  RSS after a restart (the state loaded back from disk), each minus the empty server's;
- bytes on disk after a graceful stop;
- each as a multiple of the raw float32 rows (n x d x 4 bytes): the baseline of this run.

    python benchmarks/footprint.py               # N = 100,000, d = 384: flat euc, euc+cos, default, HNSW
    python benchmarks/footprint.py --quick       # N = 10,000
    python benchmarks/footprint.py --scale       # also 1,000,000 x 1000 default (about 10 GB of RAM and disk)

The scale check also reports the ingest time and the QPS of exact euc and tri (t = 10) single-vector
searches from one Python client, measured over `--seconds`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_bench import Logitsearch, disk_bytes, tree_rss

LAYOUTS: dict[str, dict] = {
    "flat euc": {"metrics": ["euc"]},
    "flat euc+cos": {"metrics": ["euc", "cos"]},
    "default (euc, cos, tri t=10)": {},
    "hnsw euc (M=16)": {"metrics": ["euc"], "index": {"kind": "hnsw",
                                                      "params": {"M": 16, "ef_construction": 100, "ef_search": 100}}},
}
CHUNK_BYTES = 1 << 30  # one bulk request per GiB of rows (the body limit is 2 GiB)


class Peak:
    """Peak RSS of a process tree, sampled in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self) -> Peak:  # noqa: PYI034
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _npy(X: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(X))
    return buf.getvalue()


def load(server: Logitsearch, X: np.ndarray) -> float:
    """Bulk-ingest X in GiB chunks; seconds until the last chunk is searchable."""
    rows = max(1, CHUNK_BYTES // (X.shape[1] * 4))
    t0 = time.perf_counter()
    with httpx.Client(timeout=3600) as client:
        for s in range(0, len(X), rows):
            body = memoryview(_npy(X[s:s + rows]))
            # in 1 MiB pieces: given one 1 GiB bytes object, httpcore re-slices (copies) what is left
            # after every send, and the client, not the server, set the ingest time
            pieces = (body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20))
            r = client.post(f"{server.base}/v1/collections/peer/points/bulk?start={s}&wait=true",
                            content=pieces, headers={"Content-Type": "application/octet-stream"})
            r.raise_for_status()
    return time.perf_counter() - t0


def qps(server: Logitsearch, X: np.ndarray, body: dict, seconds: float) -> float:
    rng = np.random.default_rng(1)
    done, stop = 0, time.monotonic() + seconds
    with httpx.Client(base_url=server.base, timeout=120) as client:
        while time.monotonic() < stop:
            q = X[rng.integers(len(X))]
            r = client.post("/v1/collections/peer/search", json={"vector": q.tolist(), "k": 10, **body})
            r.raise_for_status()
            done += 1
    return done / seconds


def measure(name: str, layout: dict, X: np.ndarray, tmp: Path, *, searches: float = 0.0) -> dict[str, float]:
    raw = X.nbytes
    server = Logitsearch(tmp / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", ""))
    out: dict[str, float] = {}
    server.start()
    try:
        empty = server.rss()
        r = httpx.put(f"{server.base}/v1/collections/peer", json={"dim": X.shape[1], **layout}, timeout=60)
        r.raise_for_status()
        assert server.proc is not None
        with Peak(server.proc.pid) as peak:
            out["ingest (s)"] = load(server, X)
        out["ingest (vectors/s)"] = len(X) / out["ingest (s)"]
        out["RSS empty (MB)"] = empty / 1e6
        out["RSS peak during ingest - empty / raw"] = (peak.peak - empty) / raw
        out["RSS after ingest - empty / raw"] = (server.rss() - empty) / raw
        if searches:
            out["exact euc QPS (1 client)"] = qps(server, X, {"metric": "euc", "exact": True}, searches)
            out["tri t=10 QPS (1 client)"] = qps(server, X, {"metric": "tri", "temperature": 10}, searches)
    finally:
        server.stop()
    out["disk / raw"] = disk_bytes(server.data) / raw
    server.start()
    try:
        with contextlib.suppress(Exception):
            out["RSS after restart - empty / raw"] = (server.rss() - empty) / raw
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scale", action="store_true", help="also the 1,000,000 x 1000 default collection")
    ap.add_argument("--seconds", type=float, default=10.0, help="search time per metric in the scale check")
    ap.add_argument("--only", default="", help="measure only the layouts whose name contains this text")
    ap.add_argument("--no-layouts", action="store_true", help="only the scale check (with --scale)")
    args = ap.parse_args()
    if args.quick:
        args.n = 10_000
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d), dtype=np.float32) * 3
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="footprint-") as t:
        for name, layout in LAYOUTS.items():
            if args.no_layouts or args.only not in name:
                continue
            results[f"{name}, N={args.n:,} d={args.d}"] = measure(name, layout, X, Path(t))
        if args.scale:
            del X
            big = np.random.default_rng(2).standard_normal((1_000_000, 1000), dtype=np.float32) * 3
            results["default, N=1,000,000 d=1000"] = measure("scale", {}, big, Path(t), searches=args.seconds)
    cols = sorted({c for r in results.values() for c in r}, key=lambda c: list(next(iter(results.values()))).index(c)
                  if c in next(iter(results.values())) else 99)
    print("\n## Footprint per collection layout (multiples of the raw float32 rows)\n")
    print("| layout | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3g}" if c in r else "—" for c in cols) + " |")


if __name__ == "__main__":
    main()
