"""HNSW and IVF: recall against the exact answer, tombstones, compaction, training (issue 3)."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import knn
from indexes.knn import IndexSet, IndexSpec
from tests.indexes.brute import assert_knn, recall

CASES = [("euc", None), ("cos", None), ("tri", 1.0), ("tri", 10.0), ("ced", 1.0), ("ced", 10.0)]


@pytest.mark.parametrize("metric,t", CASES)
def test_hnsw_defaults_reach_recall_095_on_imagenet_logits(imagenet, metric, t):
    X, Q = np.asarray(imagenet[0][:2000]), np.asarray(imagenet[0][-30:], dtype=np.float64)
    iset = IndexSet(1000, [IndexSpec(metric, t), IndexSpec(metric, t, "hnsw")])
    iset.upsert(np.arange(len(X)), X, seq=1)
    want = iset.search(IndexSpec(metric, t, "flat"), Q, 10)
    got = iset.search(IndexSpec(metric, t, "hnsw"), Q, 10)
    assert {h.how for h in got} == {"approximate"}
    assert recall(got, want) >= 0.95
    for h, w in zip(got, want):  # distances of approximate hits are still exact values
        _, gi, wi = np.intersect1d(h.ids, w.ids, return_indices=True)
        np.testing.assert_allclose(h.distances[gi], w.distances[wi], rtol=1e-12)


@pytest.mark.parametrize("metric,t", [("euc", None), ("cos", None), ("tri", 0.1), ("ced", 0.1)])
def test_hnsw_defaults_reach_recall_095_on_minilm_embeddings(minilm, metric, t):
    X, Q = np.asarray(minilm[0][:2000]), np.asarray(minilm[0][-30:], dtype=np.float64)
    iset = IndexSet(384, [IndexSpec(metric, t), IndexSpec(metric, t, "hnsw")])
    iset.upsert(np.arange(len(X)), X, seq=1)
    want = iset.search(IndexSpec(metric, t, "flat"), Q, 10)
    assert recall(iset.search(IndexSpec(metric, t, "hnsw"), Q, 10), want) >= 0.95


def test_exact_flag_scans_even_on_an_approximate_index(rng):
    X = rng.normal(0, 2, (300, 12)).astype(np.float32)
    iset = IndexSet(12, [IndexSpec("ced", 2.0, "hnsw", {"M": 4, "ef_search": 1, "ef_construction": 8})])
    iset.upsert(np.arange(300), X, seq=1)
    for q, h in zip(X[:5], iset.search(IndexSpec("ced", 2.0, "hnsw"), X[:5], 10, exact=True)):
        assert h.how == "scanned"
        assert_knn(h, "ced", q, np.arange(300), X, 10, 2.0)


def test_hnsw_never_returns_removed_or_replaced_vectors_and_compacts(rng, monkeypatch):
    X = rng.normal(0, 1, (400, 8)).astype(np.float32)
    iset = IndexSet(8, [IndexSpec("euc", kind="hnsw")])
    iset.upsert(np.arange(400), X, seq=1)
    assert iset.remove(np.arange(0, 60), seq=2) == 60
    ix = iset._indexes["euc-hnsw"]
    assert ix.dead == 60 and ix.index.ntotal == 400  # tombstones, not yet compacted
    far = X[60:80] + 50.0
    iset.upsert(np.arange(60, 80), far, seq=3)  # replaced: old vectors become tombstones
    for h in iset.search(IndexSpec("euc", kind="hnsw"), X[:80], 10):
        assert not set(h.ids.tolist()) & set(range(60))
        assert not set(h.ids.tolist()) & set(range(60, 80))  # the old positions are gone
    # past TOMBSTONE_FRACTION the graph is rebuilt from the table, without the dead
    iset.remove(np.arange(80, 200), seq=4)
    ix = iset._indexes["euc-hnsw"]
    assert ix.dead == 0 and ix.index.ntotal == iset.count == 220
    live = set(range(60, 80)) | set(range(200, 400))
    for q, h in zip(X[200:205], iset.search(IndexSpec("euc", kind="hnsw"), X[200:205], 5)):
        assert set(h.ids.tolist()) <= live
        assert h.ids[0] == np.flatnonzero((X == q).all(axis=1))[0]


def test_ivf_scans_until_trained_then_answers_approximately(rng, monkeypatch):
    monkeypatch.setattr(knn, "IVF_POINTS_PER_LIST", 10)
    X = rng.normal(0, 1, (200, 6)).astype(np.float32)
    iset = IndexSet(6, [IndexSpec("tri", 1.0, "ivf", {"nlist": 8, "nprobe": 8})])
    iset.upsert(np.arange(50), X[:50], seq=1)
    (h,) = iset.search(IndexSpec("tri", 1.0, "ivf"), X[0], 5)
    assert h.how == "scanned" and not iset._indexes["tri-t1-ivf"].ready()
    iset.upsert(np.arange(50, 200), X[50:], seq=2)  # 200 >= 10 * 8: trained now
    assert iset._indexes["tri-t1-ivf"].ready()
    hits = iset.search(IndexSpec("tri", 1.0, "ivf"), X[:20], 5)
    assert {h.how for h in hits} == {"approximate"}
    for q, h in zip(X[:20], hits):  # nprobe == nlist: every list is visited, so the answer is exact
        assert_knn(h, "tri", q, np.arange(200), X, 5, 1.0)
    iset.remove(np.arange(0, 100), seq=3)
    for h in iset.search(IndexSpec("tri", 1.0, "ivf"), X[:20], 5):
        assert h.ids.min() >= 100
    assert iset._indexes["tri-t1-ivf"].index.ntotal == 100


def test_hnsw_ced_is_rebuilt_when_a_longer_row_arrives(rng):
    X = rng.normal(0, 1, (100, 5)).astype(np.float32)
    iset = IndexSet(5, [IndexSpec("ced", 1.0, "hnsw")])
    iset.upsert(np.arange(100), X, seq=1)
    r0 = iset._indexes["ced-t1-hnsw"].radius
    iset.upsert([100], X[:1] * 40, seq=2)
    assert iset._indexes["ced-t1-hnsw"].radius > r0
    (h,) = iset.search(IndexSpec("ced", 1.0, "hnsw"), X[0] * 40, 1)
    assert h.ids[0] == 100


@pytest.mark.parametrize("k", [4998, 5000, 2600, 1200])
def test_hnsw_returns_every_point_it_is_asked_for_up_to_the_whole_collection(rng, k):
    """Issue 11: k >= n over HNSW gave 4,990 hits of 4,998. k >= n/2 scans; a shorter walk is redone."""
    n = 4998
    X = rng.normal(0, 1, (n, 16)).astype(np.float32)
    iset = IndexSet(16, [IndexSpec("euc", kind="hnsw", params={"M": 4, "ef_construction": 8, "ef_search": 4})])
    iset.upsert(np.arange(n), X, seq=1)
    Q = X[:3].astype(np.float64) + 0.01
    for q, h in zip(Q, iset.search(IndexSpec("euc", kind="hnsw"), Q, k)):
        assert len(h.ids) == len(set(h.ids.tolist())) == min(k, n)
        if 2 * k >= n:  # scanned: exactly brute force
            assert h.how == "scanned"
            assert_knn(h, "euc", q, np.arange(n), X, k)


def test_hnsw_whose_walk_stops_short_answers_from_the_scan(rng, monkeypatch):
    X = rng.normal(0, 1, (1000, 8)).astype(np.float32)
    iset = IndexSet(8, [IndexSpec("euc", kind="hnsw")])
    iset.upsert(np.arange(1000), X, seq=1)
    ix = iset._indexes["euc-hnsw"]
    real = ix.candidates
    monkeypatch.setattr(ix, "candidates",
                        lambda V, kp, table, rows=None: tuple(a[:, : kp // 2] for a in real(V, kp, table, rows)))
    (h,) = iset.search(IndexSpec("euc", kind="hnsw"), X[:1], 100)
    assert h.how == "scanned" and len(h.ids) == 100
    assert_knn(h, "euc", X[0].astype(np.float64), np.arange(1000), X, 100)
