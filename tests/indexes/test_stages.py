"""A flat search as one part of a merge (issue 13): `stage="first"` makes one certificate attempt and
reports its bound, `stage="second"` certifies against the merge's k-th distance (`within`).

Rows s (e_i - e_j) around the uniform query are a shell: all at one distance, so no k' candidates
out of more than k' shell rows can certify a top k on their own. Oracles: float64 brute force.
"""

from __future__ import annotations

import math

import numpy as np

from indexes.knn import IndexSet, IndexSpec, certifies
from tests.indexes.brute import brute

D = 48


def _shell(n: int, s: float) -> np.ndarray:
    pairs = [(i, j) for i in range(D) for j in range(D) if i != j][:n]
    X = np.zeros((n, D), dtype=np.float32)
    for r, (i, j) in enumerate(pairs):
        X[r, i], X[r, j] = s, -s
    return X


def test_certifies_is_strict_and_inf_proves_everything_none_nothing_issue_13():
    assert certifies(2.0, 1.0) and not certifies(1.0, 1.0) and not certifies(0.5, 1.0)
    assert certifies(math.inf, math.inf) and not certifies(5.0, math.inf)
    assert not certifies(None, 0.0)
    np.testing.assert_array_equal(certifies(np.array([1.0, 2.0, math.inf]), np.array([1.0, 1.0, 9.0])),
                                  [False, True, True])


def test_the_first_stage_reports_its_bound_and_the_second_certifies_against_the_merge_issue_13():
    spec = IndexSpec("tri", 100.0)
    X = _shell(2000, 3.0)  # more rows than 8 k': the second attempt does not scan
    iset = IndexSet(D, [spec])
    iset.upsert(np.arange(len(X)), X, 1)
    q = np.zeros((1, D))
    k = 5
    d = brute("tri", q[0], X.astype(np.float64), 100.0)
    first = iset.search(spec.key, q, k, stage="first")[0]
    assert first.how == "unproven" and 0 < first.bound <= first.distances[-1]
    np.testing.assert_allclose(first.distances, np.sort(d)[:k], rtol=1e-9)  # the shell: any k of it
    alone = iset.search(spec.key, q, k)[0]
    assert alone.how == "scanned" and alone.bound == math.inf
    # a merge whose k-th is nearer than this shell's bound (another part's points) proves it
    within = [first.bound / 2]
    second = iset.search(spec.key, q, k, stage="second", within=within)[0]
    assert second.how == "certified" and certifies(second.bound, within[0])
    np.testing.assert_allclose(second.distances, np.sort(d)[:k], rtol=1e-9)
    # ... and one beyond it does not: the second stage scans
    assert iset.search(spec.key, q, k, stage="second", within=[first.distances[-1]])[0].how == "scanned"


def test_a_certified_first_stage_is_the_whole_answer_with_its_bound_issue_13(rng):
    spec = IndexSpec("tri", 10.0)
    X = (rng.normal(size=(3000, 16)) * 3).astype(np.float32)
    iset = IndexSet(16, [spec])
    iset.upsert(np.arange(3000), X, 1)
    Q = X[:4].astype(np.float64) + rng.normal(size=(4, 16)) * 0.1
    for a, b, q in zip(iset.search(spec.key, Q, 7, stage="first"), iset.search(spec.key, Q, 7), Q):
        assert a.how == b.how == "certified" and a.bound > a.distances[-1]
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.distances, np.sort(brute("tri", q, X.astype(np.float64), 10.0))[:7], rtol=1e-9)
