"""Filtered exact search against unfiltered search and numpy brute force over the same subset, in one
run (issue 15).

Data: N = 100,000 rows of d = 1000 realistic logits made as benchmarks/index_bench.py makes them
(mixes of two real ImageNet crops of one photograph plus noise; LOGITSEARCH_SHARED_DATA or
../shared/data), ingested through the in-process Coordinator (SQLite, payload index and all) with the
payload {"bucket": b}, b a uniform random integer in [0, 100). The filters
{"must": [{"key": "bucket", "range": {"lt": p}}]} match p % of the rows, scattered over the table.

For each metric (flat TRI at t = 10, flat EUC) and each filter, single queries one at a time:
- `unfiltered`: Coordinator.search without a filter;
- `filtered`: Coordinator.search with the filter, everything included: the ids' table positions, FAISS over
  the matching rows and the certificate (or the scan), and hydration; the same filter is repeated, so
  its matching points come from the backend's selection cache after the first query;
- `cold`: the same with the selection cache emptied before each query, so each one also looks the
  filter up in the SQLite payload index (`resolve ms`: that lookup alone);
- `numpy`: plain numpy float64 brute force over precomputed rows of the same subset (TRI over
  precomputed probabilities, as index_bench.py's baseline), per query.
`same as numpy` is the share of queries whose ids equal numpy's top 10 (exactness, not recall).

`--quick` runs N = 5,000 with few queries (a smoke run, numbers not meaningful).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_bench import DATA, Numpy, dataset

from indexes.knn import FILTER_SCAN_ROWS
from service import filters
from service.catalog import CollectionConfig
from service.coordinator import Coordinator, Query
from service.settings import load_settings

PERCENTS = (1, 10, 50)
K = 10


def _ingest(b: Coordinator, X: np.ndarray, buckets: np.ndarray) -> float:
    b.create_collection("bench", CollectionConfig.create(X.shape[1], ["euc", "tri"], [10.0], payload_index=["bucket"]))
    payloads = [json.dumps({"bucket": int(v)}) for v in buckets]
    step = 10_000
    t0 = time.perf_counter()
    b.bulk_upsert("bench", (X[s:s + step] for s in range(0, len(X), step)), range(len(X)), payloads=payloads)
    return time.perf_counter() - t0


def _qps(fn: Any, Q: np.ndarray) -> tuple[float, list[Any]]:
    fn(Q[0])  # warm
    t0 = time.perf_counter()
    out = [fn(q) for q in Q]
    return len(Q) / (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 5,000, few queries: a smoke run")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=30)
    args = ap.parse_args()
    n, nq = (5_000, 5) if args.quick else (args.n, args.queries)
    if not (DATA / "imagenet_effnet_dev.npy").exists():
        raise SystemExit(f"needs the real ImageNet logits in {DATA} (set LOGITSEARCH_SHARED_DATA)")
    rng = np.random.default_rng(15)
    X, Q = dataset(1000, n, nq, rng)
    buckets = rng.integers(0, 100, n)
    with tempfile.TemporaryDirectory() as tmp:
        b = Coordinator(load_settings({"data_dir": tmp, "max_k": 10_000}, environ={}))
        b.open(background=False)
        ingest_s = _ingest(b, X, buckets)
        print(f"N = {n:,} x d = 1000, {nq} single queries per cell, k = {K}; bulk ingest with payload index "
              f"{ingest_s:.1f} s; exact scan of the matching rows below {FILTER_SCAN_ROWS} rows; "
              f"{os.cpu_count()} cores\n")
        print("| metric | filter matches | rows | how | unfiltered QPS | filtered QPS | filtered / unfiltered "
              "| cold QPS | resolve ms | numpy QPS (subset) | filtered / numpy | cold / numpy | same as numpy |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        coll = b._collections["bench"]
        for metric, t in (("tri", 10.0), ("euc", None)):
            def search(q: np.ndarray, flt: filters.Filter | None = None, metric: str = metric,
                       t: float | None = t) -> Any:
                return b.search("bench", [Query(k=K, metric=metric, vector=q, temperature=t, filter=flt)])[0]

            un_qps, _ = _qps(search, Q)
            for p in PERCENTS:
                flt = filters.parse({"must": [{"key": "bucket", "range": {"lt": p}}]})
                r0 = time.perf_counter()
                for _ in range(5):
                    matched = b.store.matching(coll.cid, flt)
                resolve_ms = (time.perf_counter() - r0) / 5 * 1e3
                keep = np.flatnonzero(buckets < p)
                if not np.array_equal(matched, np.sort(np.array([coll.iid_of[int(i)] for i in keep]))):
                    raise SystemExit("the payload index did not match the buckets")
                f_qps, res = _qps(functools.partial(search, flt=flt), Q)

                def cold(q: np.ndarray, flt: filters.Filter = flt) -> Any:
                    b._selections.clear()
                    return search(q, flt)

                c_qps, _ = _qps(cold, Q)
                base = Numpy(metric, X[keep], t)
                np_qps, want = _qps(lambda q, base=base, keep=keep: keep[base.search(q, K)], Q)
                same = np.mean([r.ids == w.tolist() for r, w in zip(res[1:], want[1:])])
                hows = sorted({r.how for r in res})
                print(f"| {metric}{'' if t is None else f' t={t:g}'} | {p} % | {len(keep):,} | {', '.join(hows)} "
                      f"| {un_qps:.1f} | {f_qps:.1f} | {f_qps / un_qps:.2f}x | {c_qps:.1f} | {resolve_ms:.1f} "
                      f"| {np_qps:.1f} | {f_qps / np_qps:.1f}x | {c_qps / np_qps:.1f}x | {same:.2f} |")
        b.close()


if __name__ == "__main__":
    main()
