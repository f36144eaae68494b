"""Flat indexes are exact: equal to float64 brute force for euc, cos, tri and ced (issue 3)."""

from __future__ import annotations

import numpy as np
import pytest

from indexes.knn import IndexSet, IndexSpec
from tests.indexes.brute import assert_knn

TEMPS = (0.5, 1.0, 10.0, 100.0, 1000.0)


def _specs(temps):
    return [IndexSpec("euc"), IndexSpec("cos")] + [IndexSpec(m, t) for m in ("tri", "ced") for t in temps]


def _check_all(iset, ids, X, Q, k, temps, hows=None):
    for metric, t in [("euc", None), ("cos", None)] + [(m, t) for m in ("tri", "ced") for t in temps]:
        hits = iset.search(IndexSpec(metric, t), Q, k)
        assert len(hits) == len(Q)
        for q, h in zip(Q, hits):
            assert h.how in ("certified", "scanned")
            assert_knn(h, metric, q, ids, X, k, t)
            if hows is not None:
                hows.setdefault((metric, t), []).append(h.how)


def _with_ties(rng, n=300, d=24):
    """Rows with exact duplicates, constant shifts (equal softmax) and scalings (equal cosine)."""
    base = rng.integers(-3, 4, size=(n // 3, d)).astype(np.float32)
    X = np.concatenate([base, base + 2.0, base * 2.0])
    X[::7] = X[1]  # many copies of one row
    return X[rng.permutation(len(X))]


def test_flat_equals_brute_force_on_synthetic_data_with_ties(rng):
    X = _with_ties(rng)
    ids = rng.choice(10**12, size=len(X), replace=False).astype(np.int64)
    iset = IndexSet(X.shape[1], _specs(TEMPS))
    iset.upsert(ids, X, seq=1)
    Q = np.concatenate([X[:4].astype(np.float64), rng.normal(0, 2, (4, X.shape[1]))])
    _check_all(iset, ids, X, Q, 10, TEMPS)


def test_flat_equals_brute_force_on_imagenet_logits(imagenet, rng):
    X = np.asarray(imagenet[0][:1500])
    Q = np.asarray(imagenet[0][1500:1506], dtype=np.float64)
    ids = np.arange(len(X), dtype=np.int64) * 3 + 7
    iset = IndexSet(X.shape[1], _specs(TEMPS))
    iset.upsert(ids, X, seq=1)
    hows: dict = {}
    _check_all(iset, ids, X, Q, 10, TEMPS, hows)
    # the bound is tight at high t (c -> 1): there the certificate must carry most answers
    assert hows[("tri", 1000.0)].count("certified") >= 4
    assert hows[("euc", None)].count("certified") >= 4


@pytest.mark.parametrize("metric,t", [("euc", None), ("cos", None), ("tri", 1.0), ("tri", 1000.0), ("ced", 0.5)])
def test_flat_batches_take_faiss_blas_path_and_stay_exact(imagenet, metric, t):
    # 24 queries (BLAS from 4 on, indexes.knn._search_setup): FAISS's |x|^2 + |y|^2 - 2 x.y form,
    # whose float32 cancellation the certificate's margin must cover
    X = np.asarray(imagenet[0][:1200])
    Q = np.asarray(imagenet[0][1200:1224], dtype=np.float64)
    iset = IndexSet(1000, [IndexSpec(metric, t)])
    iset.upsert(np.arange(1200), X, seq=1)
    hits = iset.search(IndexSpec(metric, t), Q, 10)
    for q, h in zip(Q, hits):
        assert_knn(h, metric, q, np.arange(1200), X, 10, t)
    assert sum(h.how == "certified" for h in hits) >= 8


def test_flat_equals_brute_force_on_minilm_embeddings(minilm):
    X = np.asarray(minilm[0][:1500])
    Q = np.asarray(minilm[0][1500:1505], dtype=np.float64)
    ids = np.arange(len(X), dtype=np.int64)
    temps = (0.01, 0.1, 1.0, 100.0)
    iset = IndexSet(X.shape[1], _specs(temps))
    iset.upsert(ids, X, seq=1)
    _check_all(iset, ids, X, Q, 10, temps)


def test_identical_rows_cannot_be_certified_and_are_scanned(rng):
    X = np.repeat(rng.normal(0, 1, (1, 8)).astype(np.float32), 200, axis=0)
    iset = IndexSet(8, [IndexSpec("tri", 10.0)])
    iset.upsert(np.arange(200), X, seq=1)
    (h,) = iset.search(IndexSpec("tri", 10.0), X[0], 5)
    assert h.how == "scanned"
    assert h.ids.tolist() == [0, 1, 2, 3, 4]  # ties go to the smaller id
    np.testing.assert_allclose(h.distances, 0.0, atol=1e-20)  # rounding of two softmax routes


def test_search_by_stored_id_excludes_it(imagenet):
    X = np.asarray(imagenet[0][:800])
    ids = np.arange(800, dtype=np.int64)
    iset = IndexSet(1000, [IndexSpec("tri", 10.0), IndexSpec("euc")])
    iset.upsert(ids, X, seq=1)
    for metric, t in (("tri", 10.0), ("euc", None)):
        hits = iset.search(IndexSpec(metric, t), X[[3, 5]], 10, exclude=[3, None])
        assert 3 not in hits[0].ids and hits[1].ids[0] == 5
        assert_knn(hits[0], metric, X[3], ids, X, 10, t, exclude=3)
        assert_knn(hits[1], metric, X[5], ids, X, 10, t)


def test_k_larger_than_count_returns_every_row(rng):
    X = rng.normal(0, 1, (7, 5))
    iset = IndexSet(5, [IndexSpec("ced", 1.0)])
    iset.upsert(np.arange(7), X, seq=1)
    (h,) = iset.search(IndexSpec("ced", 1.0), X[0], 50)
    assert sorted(h.ids.tolist()) == list(range(7))
    assert_knn(h, "ced", X[0], np.arange(7), X.astype(np.float32), 50, 1.0)


def test_empty_index_answers_with_no_hits(rng):
    iset = IndexSet(4, [IndexSpec("euc"), IndexSpec("tri", 1.0, "hnsw")])
    hits = iset.search(IndexSpec("euc"), rng.normal(size=(3, 4)), 5)
    assert [len(h.ids) for h in hits] == [0, 0, 0] and iset.count == 0
    assert len(iset.search(IndexSpec("tri", 1.0, "hnsw"), np.ones(4), 5)[0].ids) == 0


@pytest.mark.parametrize("d", [1, 3, 17, 33])
def test_flat_handles_any_width_and_float32_or_noncontiguous_queries(rng, d):
    X = rng.normal(0, 3, (120, d)).astype(np.float32)
    iset = IndexSet(d, [IndexSpec("tri", 1.0), IndexSpec("cos"), IndexSpec("ced", 0.5)])
    iset.upsert(np.arange(120), X, seq=1)
    Q = np.asfortranarray(rng.normal(0, 3, (4, 2 * d))[:, ::2].astype(np.float32))
    for metric, t in (("tri", 1.0), ("cos", None), ("ced", 0.5)):
        for q, h in zip(Q, iset.search(IndexSpec(metric, t), Q, 6)):
            assert_knn(h, metric, q, np.arange(120), X, 6, t)


def test_few_queries_take_faiss_direct_path_and_batches_blas(rng):
    # FAISS 1.15 uses BLAS when queries x width >= the threshold; the direct form is ~4x faster for
    # one query, BLAS ~3x faster from 16 on (indexes/knn.py); both are exact after the re-rank.
    import faiss

    X = rng.normal(size=(300, 24)).astype(np.float32)
    iset = IndexSet(24, [IndexSpec("euc")])
    iset.upsert(np.arange(300), X, seq=1)
    for m in (1, 3, 4, 30):
        Q = rng.normal(size=(m, 24))
        hits = iset.search(IndexSpec("euc"), Q, 5)
        threshold = faiss.cvar.distance_compute_blas_threshold
        assert (m * 24 >= threshold) == (m >= 4)
        for q, h in zip(Q, hits):
            assert_knn(h, "euc", q, np.arange(300), X, 5, None)
