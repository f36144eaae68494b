"""What a search with each searchable metric costs per query (issue 14): the evidence behind the order
the evaluation's recommendation breaks ties with (core.evaluation.SEARCHABLE), measured, not assumed.

Data: the real ImageNet dev logits (9,900 x 1000), tiled with N(0, 0.1^2) noise to N rows when N is
larger; without ../shared/data, synthetic classifier-like logits (say which in the output). One flat
index per metric (tri and ced at t = 10) in one IndexSet; queries are stored rows (+ the same noise).
Table: per metric, median seconds per single-query search (k = 10) and per batch of 100 queries, and
the ratio to euc measured in the same run; `how` counts how flat answered the 100 queries
(certified: proved exact from FAISS candidates; scanned: an exact float64 pass).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from indexes.knn import IndexSet, IndexSpec

DATA = Path(os.environ.get("LOGITSEARCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
METRICS = ("euc", "cos", "tri", "ced")


def rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    path = DATA / "imagenet_effnet_dev.npy"
    if path.exists():
        real = np.load(path).astype(np.float32)
        X = real[rng.integers(0, len(real), n)] + rng.normal(0, 0.1, (n, real.shape[1])).astype(np.float32)
        return X, f"imagenet_effnet_dev resampled to {n:,} + N(0, 0.1^2)"
    X = rng.normal(0, 1.5, (n, 1000)).astype(np.float32)
    X[np.arange(n), rng.integers(0, 1000, n)] += rng.uniform(5, 15, n).astype(np.float32)
    return X, f"synthetic classifier-like logits, {n:,} x 1000"


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--quick", action="store_true", help="5,000 rows, few repeats: a smoke run")
    args = ap.parse_args()
    n, repeats = (5_000, 3) if args.quick else (args.rows, 15)
    rng = np.random.default_rng(0)
    X, what = rows(n, rng)
    specs = [IndexSpec(m, 10.0 if m in ("tri", "ced") else None, "flat", {}) for m in METRICS]  # type: ignore[arg-type]
    iset = IndexSet(X.shape[1], specs)
    iset.upsert(np.arange(n, dtype=np.int64), X, 1)
    Q = X[rng.integers(0, n, 100)] + rng.normal(0, 0.1, (100, X.shape[1])).astype(np.float32)
    single, batch, how = {}, {}, {}
    for m in METRICS:
        t = 10.0 if m in ("tri", "ced") else None
        iset.search(m, Q[:4], 10, temperature=t)  # warm up (numba compiles, FAISS allocates)
        single[m] = timed(lambda m=m, t=t: iset.search(m, Q[:1], 10, temperature=t), repeats)
        batch[m] = timed(lambda m=m, t=t: iset.search(m, Q, 10, temperature=t), max(3, repeats // 3))
        hows = [h.how for h in iset.search(m, Q, 10, temperature=t)]
        how[m] = ", ".join(f"{hows.count(w)} {w}" for w in sorted(set(hows)))
    print(f"Data: {what}; flat indexes, k = 10, tri and ced at t = 10; median of {repeats} runs.\n")
    print("| metric | how | single query (ms) | × euc | batch of 100 (ms) | × euc |")
    print("|---|---|---:|---:|---:|---:|")
    for m in METRICS:
        print(f"| {m} | {how[m]} | {1e3 * single[m]:.2f} | {single[m] / single['euc']:.2f} | "
              f"{1e3 * batch[m]:.1f} | {batch[m] / batch['euc']:.2f} |")


if __name__ == "__main__":
    main()
