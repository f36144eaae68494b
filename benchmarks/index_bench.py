"""k-NN indexes against plain-numpy brute force, measured in the same run (issue 3).

Data (say how): d = 1000 rows are new "crops" made from the real ImageNet dev logits: each row
mixes two real crops of the same photograph, x = l x_a + (1 - l) x_b with l ~ U(0, 1), plus
N(0, 0.1^2) noise per logit; d = 384 rows mix a real MiniLM row with one of its 10 nearest
(cosine) neighbours the same way, plus N(0, 0.01^2) noise. Queries are real dev rows (+ the same
noise). Without ../shared/data the script stops: the point is realistic logits.

Tables:
1. per N x d x metric x kind: build time, QPS for a batch of queries and for single queries,
   recall@10 against the exact answer, how the flat answers were obtained; beside plain-numpy brute
   force (per query, float64: EUC/TRI elementwise, COS/CED as a matrix-vector product over
   precomputed unit rows / log-probabilities; TRI over precomputed probabilities).
2. flat TRI at N = 100k, d = 1000, batch of 100, t in {1, 10, 100}: throughput over plain numpy
   (target >= 10x), share certified.
3. HNSW over flat throughput at N = 100k (target >= 5x at recall >= 0.95).
4. high t, k' = k: recall@10 of the centred sqrt-softmax embedding against the plain one, through
   FAISS's BLAS path and its direct path.
5. FAISS OpenMP threads for single queries.

`--quick` runs N = 2,000 with fewer queries (a smoke run, numbers not meaningful).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexes import embed, exact, knn
from indexes.knn import IndexSet, IndexSpec

DATA = Path(os.environ.get("LOGITSEARCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TEMPS = {1000: (1.0, 10.0, 100.0), 384: (0.01, 0.1, 1.0)}  # MiniLM's useful t is ~100x smaller
MID_T = {1000: 10.0, 384: 0.1}


def dataset(d: int, n: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n, d) float32, queries (m, d) float64) as the module docstring says."""
    if d == 1000:
        real = np.load(DATA / "imagenet_effnet_dev.npy")
        keys = [line.split("~")[0] for line in (DATA / "imagenet_effnet_dev.txt").read_text().split()]
        photo = np.unique(keys, return_inverse=True)[1]
        members = [np.flatnonzero(photo == p) for p in range(photo.max() + 1)]
        a = rng.integers(0, len(real), n)
        b = np.array([rng.choice(members[photo[i]]) for i in a])
        sigma = 0.1
    else:
        real = np.load(DATA / "minilm_debian_dev.npy")
        unit = real / np.linalg.norm(real, axis=1, keepdims=True)
        _, nn = faiss.knn(unit, unit, 11, faiss.METRIC_INNER_PRODUCT)
        a = rng.integers(0, len(real), n)
        b = nn[a, rng.integers(1, 11, n)]
        sigma = 0.01
    lam = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    X = lam * real[a] + (1 - lam) * real[b] + rng.normal(0, sigma, (n, d)).astype(np.float32)
    Q = real[rng.choice(len(real), m, replace=False)].astype(np.float64) + rng.normal(0, sigma, (m, d))
    return X.astype(np.float32), Q


# --- plain numpy brute force -------------------------------------------------------------------


def _softmax(Z: np.ndarray, t: float, log: bool = False) -> np.ndarray:
    Z = Z.astype(np.float64) / t
    Z -= Z.max(axis=-1, keepdims=True)
    Z -= np.log(np.exp(Z).sum(axis=-1, keepdims=True))
    return Z if log else np.exp(Z)


class Numpy:
    """Plain numpy brute force over precomputed rows (the paper's Table 3 setting), per query."""

    BLOCK = 10_000

    def __init__(self, metric: str, X: np.ndarray, t: float | None) -> None:
        self.metric, self.t = metric, t
        if metric == "euc":
            self.R = X
        elif metric == "cos":
            self.R = X / np.linalg.norm(X, axis=1, keepdims=True)
        else:
            self.R = np.concatenate([_softmax(X[s : s + self.BLOCK], t, log=metric == "ced")
                                     for s in range(0, len(X), self.BLOCK)])

    def search(self, xq: np.ndarray, k: int) -> np.ndarray:
        if self.metric == "euc":
            dist = ((self.R - xq) ** 2).sum(axis=1)
        elif self.metric == "cos":
            dist = 1.0 - self.R @ (xq / np.linalg.norm(xq))
        elif self.metric == "ced":
            dist = -(self.R @ _softmax(xq, self.t))
        else:
            q = _softmax(xq, self.t)
            dist = np.concatenate([0.5 * ((q - P) ** 2 / (q + P)).sum(axis=1)
                                   for P in (self.R[s : s + self.BLOCK] for s in range(0, len(self.R), self.BLOCK))])
        top = np.argpartition(dist, k)[:k]
        return top[np.argsort(dist[top])]


# --- measurements ------------------------------------------------------------------------------


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def each(fn: Callable[..., Any], queries: np.ndarray, *args: Any, **kwargs: Any) -> list[Any]:
    """fn(q, *args, **kwargs) once per query (single-query throughput)."""
    return [fn(q, *args, **kwargs) for q in queries]


def recall(got: list, want: list) -> float:
    return float(np.mean([len(set(np.asarray(g).tolist()) & set(np.asarray(w).tolist())) / max(len(w), 1)
                          for g, w in zip(got, want)]))


def main_table(sizes: list[int], dims: list[int], nq: int, nsingle: int, nnumpy: int, rng: np.random.Generator,
               tri_rows: list[str], hnsw_rows: list[str], centred: list[str]) -> list[str]:
    head = ("| N | d | metric | kind | build s | batch QPS | single QPS | recall@10 | how (flat) "
            "| numpy QPS | batch x numpy |")
    out = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in dims:
        for n in sizes:
            X, Q = dataset(d, n, nq, rng)
            ids = np.arange(n, dtype=np.int64)
            for metric, t in (("euc", None), ("cos", None), ("tri", MID_T[d]), ("ced", MID_T[d])):
                base = Numpy(metric, X, t)
                sec, _ = timed(each, base.search, Q[:nnumpy], 10)
                np_qps = nnumpy / sec
                iset = IndexSet(d)
                iset.upsert(ids, X, seq=1)
                flat_qps = None
                truth = None
                for kind in ("flat", "hnsw", "ivf"):
                    spec = IndexSpec(metric, t, kind)
                    build, _ = timed(iset.add_index, spec)
                    iset.search(metric, Q[:2], 10, temperature=t, kind=kind)  # warm (numba, caches)
                    bsec, hits = timed(iset.search, metric, Q, 10, temperature=t, kind=kind)
                    ssec, _ = timed(each, partial(iset.search, metric), Q[:nsingle], 10, temperature=t,
                                   kind=kind)
                    got = [h.ids for h in hits]
                    if kind == "flat":
                        truth, flat_qps = got, nq / bsec
                        hows = {h.how for h in hits}
                        how = ", ".join(f"{w} {sum(h.how == w for h in hits) / nq:.0%}" for w in sorted(hows))
                    else:
                        how = ""
                    rec = recall(got, truth)
                    bq = nq / bsec
                    out.append(f"| {n:,} | {d} | {metric}{'' if t is None else f' t={t:g}'} | {kind} | "
                               f"{build:.1f} | {bq:,.0f} | {nsingle / ssec:,.0f} | {rec:.3f} | {how} | "
                               f"{np_qps:,.1f} | {bq / np_qps:,.0f}x |")
                    if kind == "hnsw" and flat_qps:
                        hnsw_rows.append(f"| {n:,} | {d} | {metric} | {rec:.3f} | {bq:,.0f} | {flat_qps:,.0f} | "
                                         f"{bq / flat_qps:.1f}x |")
                    iset.drop_index(spec.key)
                print(out[-1], flush=True)
            if d == 1000 and n == max(sizes):
                tri_rows.extend(tri_target(X, Q, nnumpy))
            if n == max(sizes):
                # MiniLM's logits are ~100x smaller: the same flattening happens at ~100x lower t
                centred.extend(centred_vs_plain(X, Q, (100.0, 1000.0, 10_000.0) if d == 1000 else (1.0, 10.0, 100.0))[
                    0 if not centred else 2 :])
    return out


def tri_target(X: np.ndarray, Q: np.ndarray, nnumpy: int) -> list[str]:
    n = len(X)
    out = [f"Flat TRI, N = {n:,}, d = 1000, batch of {len(Q)} (target: >= 10x plain numpy, exact)", "",
           "| t | flat QPS | numpy QPS | x numpy | certified | scanned | exact vs numpy |",
           "|---|---|---|---|---|---|---|"]
    iset = IndexSet(1000)
    iset.upsert(np.arange(n), X, seq=1)
    for t in TEMPS[1000]:
        iset.add_index(IndexSpec("tri", t))
        iset.search("tri", Q[:2], 10, temperature=t)
        sec, hits = timed(iset.search, "tri", Q, 10, temperature=t)
        base = Numpy("tri", X, t)
        nsec, want = timed(each, base.search, Q[:nnumpy], 10)
        agree = recall([h.ids for h in hits[:nnumpy]], want)
        cert = sum(h.how == "certified" for h in hits) / len(Q)
        qps, nqps = len(Q) / sec, nnumpy / nsec
        out.append(f"| {t:g} | {qps:,.1f} | {nqps:,.2f} | {qps / nqps:,.0f}x | {cert:.0%} | {1 - cert:.0%} | "
                   f"{agree:.3f} |")
        print(out[-1], flush=True)
        iset.drop_index(IndexSpec("tri", t).key)
    return out


def centred_vs_plain(X: np.ndarray, Q: np.ndarray, temps: tuple[float, ...]) -> list[str]:
    """recall@10 of L2 over float32 sqrt-softmax, centred or not, with k' = k (no re-rank).

    Two FAISS code paths: BLAS (|x|^2 + |y|^2 - 2 x.y, which indexes/ uses for batches of >= 4
    queries and FAISS <= 1.14 used by default) and FAISS 1.15's direct SIMD sum of squared
    differences (its default below 128,000 queries).
    """
    n, d = X.shape
    out = ["| d | t | embedding | recall@10, BLAS path | recall@10, direct path |", "|---|---|---|---|---|"]
    saved = faiss.cvar.distance_compute_blas_threshold
    for t in temps:
        want, _ = exact.scan("tri", t, _softmax(Q, t), X, np.arange(n), 10)
        for name, shift in (("plain sqrt(p)", 0.0), ("centred sqrt(p) - 1/sqrt(d)", 1 / np.sqrt(d))):
            E = np.empty((n, d), dtype=np.float32)
            for s in range(0, n, 10_000):
                E[s : s + 10_000] = np.sqrt(_softmax(X[s : s + 10_000], t)) - shift
            qe = (np.sqrt(_softmax(Q, t)) - shift).astype(np.float32)
            cells = []
            for threshold in (20, 1 << 30):
                faiss.cvar.distance_compute_blas_threshold = threshold
                _, got = faiss.knn(qe, E, 10)
                cells.append(f"{recall(list(got), want):.3f}")
            out.append(f"| {d} | {t:g} | {name} | {cells[0]} | {cells[1]} |")
            print(out[-1], flush=True)
    faiss.cvar.distance_compute_blas_threshold = saved
    return out


def threads_table(rng: np.random.Generator, n: int) -> list[str]:
    X, Q = dataset(1000, n, 20, rng)
    out = [f"| FAISS threads | single-query flat EUC ms (N = {n:,}, d = 1000) | batch of 20 ms |",
           "|---|---|---|"]
    for th in (1, 2):
        faiss.omp_set_num_threads(th)
        faiss.knn(Q[:1].astype(np.float32), X, 200)
        Q32 = Q.astype(np.float32)
        s1, _ = timed(each, lambda q: faiss.knn(q[None], X, 200), Q32[:10])
        s2, _ = timed(faiss.knn, Q32, X, 200)
        out.append(f"| {th} | {s1 / 10 * 1e3:.1f} | {s2 * 1e3:.0f} |")
    faiss.omp_set_num_threads(knn._OMP_THREADS)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 2,000, few queries: a smoke run")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--dims", type=int, nargs="*", default=[384, 1000])
    args = ap.parse_args()
    if not (DATA / "imagenet_effnet_dev.npy").exists():
        raise SystemExit(f"needs the real dev data under {DATA}")
    rng = np.random.default_rng(7)
    sizes = [2_000] if args.quick else args.sizes
    nq, nsingle, nnumpy = (20, 5, 2) if args.quick else (100, 30, 5)
    print(f"faiss {faiss.__version__}, OpenMP threads {knn._OMP_THREADS}, cores {os.cpu_count()}")
    tri_rows: list[str] = []
    hnsw_rows = ["| N | d | metric | HNSW recall@10 | HNSW batch QPS | flat batch QPS | HNSW x flat |",
                 "|---|---|---|---|---|---|---|"]
    centred: list[str] = []
    table = main_table(sizes, args.dims, nq, nsingle, nnumpy, rng, tri_rows, hnsw_rows, centred)
    print("\n## Indexes against plain numpy (k = 10)\n")
    print("\n".join(table))
    print("\n## Flat TRI target\n")
    print("\n".join(tri_rows))
    print(f"\n## Centred against plain sqrt-softmax, k' = k = 10, N = {max(sizes):,} (target: centred >= 0.99)\n")
    print("\n".join(centred))
    print("\n## HNSW against flat\n")
    print("\n".join(hnsw_rows))
    print("\n## FAISS threads\n")
    print("\n".join(threads_table(rng, max(sizes))))
    _ = embed  # the embeddings measured above are indexes.embed's (imported for the reader)


if __name__ == "__main__":
    main()
