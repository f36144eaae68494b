"""Snapshot benchmark (issue 15): taking and restoring a collection, beside the baselines they replace.

In process (service.coordinator.Coordinator over a temporary data directory, the default durability: SQLite
WAL, synchronous=FULL), for a flat collection (euc, cos, tri at t = 10) and an HNSW one (euc, tri;
M = 16, ef_construction = 64), N rows of d = 256 Gaussian logits:

- snapshot: `Snapshots.create` (pinned SQLite read, index save, tar with checksums), beside copying
  the finished archive with fsync (the disk's floor for writing those bytes); `held` is how long the
  collection's writes waited (the index save under the lock);
- writes during a snapshot: a writer thread upserts 10 rows per request without pause; the slowest
  write while a snapshot runs, beside the slowest in the same span of time without one;
- restore: `Snapshots.restore` of the archive into a fresh data directory (checks, one transaction,
  the index snapshot reused), beside building the same collection by a bulk ingest of its rows.

    python benchmarks/snapshot_bench.py            # N = 20,000 and 100,000
    python benchmarks/snapshot_bench.py --quick    # N = 3,000 (smoke run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.catalog import CollectionConfig
from service.coordinator import Coordinator
from service.settings import load_settings
from service.snapshots import Snapshots

D = 256
KINDS = {"flat": (["euc", "cos", "tri"], {}), "hnsw": (["euc", "tri"], {"M": 16, "ef_construction": 64})}


def _backend(path: Path) -> Coordinator:
    b = Coordinator(load_settings({"data_dir": str(path)}, environ={}))
    b.open(background=False)
    return b


def _ingest(b: Coordinator, kind: str, X: np.ndarray) -> float:
    metrics, params = KINDS[kind]
    b.create_collection("c", CollectionConfig.create(D, metrics, [10.0], kind, params))
    started = time.perf_counter()
    b.bulk_upsert("c", (X[s:s + 8192] for s in range(0, len(X), 8192)), range(len(X)))
    return time.perf_counter() - started


def _held(b: Coordinator) -> list[float]:
    """Wrap b.writes_held so each hold's duration is recorded."""
    spans: list[float] = []
    inner = b.writes_held

    @contextmanager
    def timed(name: str) -> Any:
        with inner(name) as held:
            started = time.perf_counter()
            yield held
        spans.append(time.perf_counter() - started)

    b.writes_held = timed  # type: ignore[method-assign]
    return spans


def _slowest_write(b: Coordinator, n0: int, seconds: float, during: Any) -> float:
    """The slowest of a writer's back-to-back 10-row upserts over `seconds`, with `during()` run
    meanwhile (None: nothing)."""
    stop, worst = threading.Event(), [0.0]
    rng = np.random.default_rng(1)

    def writer() -> None:
        i = n0
        while not stop.is_set():
            rows = rng.normal(size=(10, D)).astype(np.float32)
            started = time.perf_counter()
            b.upsert("c", list(range(i, i + 10)), rows)
            worst[0] = max(worst[0], time.perf_counter() - started)
            i += 10

    t = threading.Thread(target=writer)
    t.start()
    started = time.perf_counter()
    if during is not None:
        during()
    time.sleep(max(0.0, seconds - (time.perf_counter() - started)))
    stop.set()
    t.join()
    return worst[0]


def _copy(src: Path, dst: Path) -> float:
    started = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - started


def run(n: int, kind: str, root: Path) -> dict[str, float]:
    X = np.random.default_rng(0).normal(0, 3, (n, D)).astype(np.float32)
    a = _backend(root / "a")
    try:
        ingest_s = _ingest(a, kind, X)
        snaps = Snapshots(a)
        spans = _held(a)
        started = time.perf_counter()
        info = snaps.create("c")
        snapshot_s = time.perf_counter() - started
        archive = snaps.path("c", info.name)
        copy_s = _copy(archive, root / "copy.tar")
        calm = _slowest_write(a, n, max(1.0, snapshot_s * 1.5), None)
        busy = _slowest_write(a, n + 10**7, max(1.0, snapshot_s * 1.5), lambda: snaps.create("c"))
    finally:
        a.close()
    b = _backend(root / "b")
    try:
        with open(archive, "rb") as f:
            started = time.perf_counter()
            Snapshots(b).restore("c", lambda: f.read(1 << 20))
            restore_s = time.perf_counter() - started
        assert b.count("c") == n
    finally:
        b.close()
    return {"snapshot": snapshot_s, "copy": copy_s, "held": spans[0], "bytes": archive.stat().st_size,
            "calm": calm, "busy": busy, "restore": restore_s, "ingest": ingest_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [3_000] if args.quick else [20_000, 100_000]
    rows = []
    for n in sizes:
        for kind in KINDS:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append((n, kind, run(n, kind, Path(tmp))))
    print(f"d = {D}, in process; seconds (ratio to the baseline beside it)\n")
    print("| N | kind | archive MB | snapshot s | copy+fsync s | snapshot / copy | writes held s "
          "| slowest write, no snapshot s | slowest write during snapshot s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, kind, r in rows:
        print(f"| {n:,} | {kind} | {r['bytes'] / 1e6:.1f} | {r['snapshot']:.3f} | {r['copy']:.3f} | "
              f"{r['snapshot'] / r['copy']:.1f}x | {r['held']:.3f} | {r['calm']:.3f} | {r['busy']:.3f} |")
    print("\n| N | kind | restore s | bulk ingest s | restore / ingest |")
    print("|---|---|---|---|---|")
    for n, kind, r in rows:
        print(f"| {n:,} | {kind} | {r['restore']:.3f} | {r['ingest']:.3f} | {r['restore'] / r['ingest']:.2f}x |")


if __name__ == "__main__":
    main()
