"""The exact kernels: the vectorised exp, the scan at extreme logits, and tie-breaking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexes import exact
from indexes.knn import IndexSet, IndexSpec
from tests.indexes.brute import assert_knn, brute


def test_vectorised_exp_matches_numpy_to_a_few_ulp(rng):
    z = np.concatenate([rng.uniform(-708, 0, 20_000), rng.uniform(-1, 1, 5_000), rng.uniform(0, 709, 1_000),
                        [0.0, -708.0, 709.0, -1e-300, np.log(0.5)]])
    got = z.copy()
    exact.exp_inplace(got, np.empty_like(got))
    np.testing.assert_allclose(got, np.exp(z), rtol=5e-16, atol=0)


def test_vectorised_exp_floors_at_exp_minus_708():
    got = np.array([-800.0, -1e6])
    exact.exp_inplace(got, np.empty(2))
    np.testing.assert_allclose(got, np.exp(-708.0), rtol=1e-15)


@pytest.mark.parametrize("metric", ["tri", "ced"])
def test_scan_is_exact_for_extreme_logits_at_the_lowest_temperature(rng, metric):
    # t = 0.01 with logits up to +-1e4: softmax exponents reach -2e6, far below exp's floor
    X = rng.uniform(-1e4, 1e4, (300, 20)).astype(np.float32)
    X[:50] = np.round(X[:50] / 5000) * 5000  # many exact ties in the winning coordinate
    iset = IndexSet(20, [IndexSpec(metric, 0.01)])
    iset.upsert(np.arange(300), X, seq=1)
    Q = np.concatenate([X[:3].astype(np.float64), rng.uniform(-1e4, 1e4, (3, 20))])
    for q, h in zip(Q, iset.search(IndexSpec(metric, 0.01), Q, 8, exact=True)):
        assert_knn(h, metric, q, np.arange(300), X, 8, 0.01)


def test_scan_breaks_ties_by_the_smaller_id_across_row_blocks(rng, monkeypatch):
    monkeypatch.setattr(exact, "SCAN_BYTES", 8 * 1024)  # many small blocks to merge
    X = np.repeat(rng.normal(size=(3, 5)), 700, axis=0).astype(np.float32)
    ids = rng.permutation(10**6)[: len(X)].astype(np.int64)
    got_ids, got_d = exact.scan("euc", None, X[:1].astype(np.float64), X, ids, 10)
    same = ids[(X == X[0]).all(axis=1)]
    assert got_ids[0].tolist() == sorted(same.tolist())[:10]
    np.testing.assert_array_equal(got_d[0], 0.0)


def test_pair_distances_equal_the_formulas_and_mark_missing_rows_infinite(rng):
    X = rng.normal(0, 2, (40, 7)).astype(np.float32)
    Q = rng.normal(0, 2, (3, 7))
    rows = np.array([[0, 5, -1], [39, 1, 2], [-1, -1, 3]])
    for metric, t in (("euc", None), ("cos", None), ("tri", 0.7), ("ced", 0.7)):
        prepared = Q if t is None else np.exp(Q / t) / np.exp(Q / t).sum(axis=1, keepdims=True)
        got = exact.pair_distances(metric, t, prepared, X, rows)
        for r in range(3):
            want = brute(metric, Q[r], X, t)
            for c, i in enumerate(rows[r]):
                assert (got[r, c] == np.inf) if i < 0 else np.isclose(got[r, c], want[i], rtol=1e-12, atol=1e-15)


_SERIAL_PROBE = """
import sys
import numpy as np
import numba.np.ufunc.parallel as pool
from indexes import exact
X = np.random.default_rng(0).random((50, 16)).astype(np.float32)
Q = np.random.default_rng(1).random((1, 16))
rows = np.arange(10)[None, :]
if sys.argv[1] == "both":  # fill the on-disk cache with both kernels
    exact.pair_distances("cos", None, np.repeat(Q, 8, 0), X, np.repeat(rows, 8, 0))
exact.pair_distances("cos", None, Q, X, rows)
print(pool._is_initialized)
"""


def test_a_few_queries_never_start_the_thread_pool_even_from_numbas_cache(tmp_path):
    # The serial kernel once shared the parallel one's cache entry: loaded from cache, a single
    # query launched the OpenMP pool, whose spinning threads took a core from the event loop.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    repo = Path(__file__).resolve().parents[2]

    def probe(which: str) -> str:
        return subprocess.run([sys.executable, "-c", _SERIAL_PROBE, which], cwd=repo, env=env, check=True,
                              capture_output=True, text=True, timeout=300).stdout.strip()

    assert probe("both") == "True"  # the parallel kernel does start it (the probe can tell)
    assert probe("one") == "False"  # a fresh process, every kernel from the cache: serial stays serial
