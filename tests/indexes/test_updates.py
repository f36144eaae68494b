"""Upsert, remove, lookups and concurrency of an IndexSet (issue 3)."""

from __future__ import annotations

import threading

import numpy as np

from indexes.knn import IndexSet, IndexSpec
from tests.indexes.brute import assert_knn

SPECS = [IndexSpec("euc"), IndexSpec("cos"), IndexSpec("tri", 2.0), IndexSpec("ced", 2.0),
         IndexSpec("tri", 2.0, "hnsw")]


def _check(iset, ids, X, Q, k=5):
    for metric, t in (("euc", None), ("cos", None), ("tri", 2.0), ("ced", 2.0)):
        for q, h in zip(Q, iset.search(IndexSpec(metric, t), Q, k)):
            assert_knn(h, metric, q, ids, X, k, t)


def test_upsert_replaces_and_remove_forgets_like_a_dict(rng):
    model: dict[int, np.ndarray] = {}
    iset = IndexSet(6, SPECS)
    for seq in range(1, 30):
        if rng.random() < 0.6 or not model:
            ids = rng.integers(0, 80, size=rng.integers(1, 20))
            X = rng.normal(0, 2, (len(ids), 6)).astype(np.float32)
            iset.upsert(ids, X, seq=seq)
            for i, x in zip(ids.tolist(), X):
                model[i] = x  # duplicates within a call: the last wins
        else:
            ids = rng.integers(0, 100, size=rng.integers(1, 15))
            existed = len(set(ids.tolist()) & set(model))
            assert iset.remove(ids, seq=seq) == existed
            for i in ids.tolist():
                model.pop(i, None)
        assert iset.last_seq == seq and iset.count == len(model)
    ids = np.array(sorted(model), dtype=np.int64)
    X = np.stack([model[i] for i in ids.tolist()])
    np.testing.assert_array_equal(iset.vectors(ids), X)
    assert sorted(iset.all_ids().tolist()) == ids.tolist()
    got_ids, got_X = iset.matrix()
    np.testing.assert_array_equal(got_X[np.argsort(got_ids)], X)
    np.testing.assert_array_equal(iset.contains([ids[0], 10**9]), [True, False])
    _check(iset, ids, X, rng.normal(0, 2, (4, 6)))
    for h in iset.search(IndexSpec("tri", 2.0, "hnsw"), X[:3], 3):
        assert set(h.ids.tolist()) <= set(ids.tolist())


def test_a_failed_upsert_changes_nothing(rng):
    iset = IndexSet(3, SPECS)
    iset.upsert([1, 2], rng.normal(size=(2, 3)), seq=1)
    before = iset.matrix()
    bad = rng.normal(size=(3, 3))
    bad[2, 1] = np.nan
    for args in ((np.array([1, 5, 6]), bad), (np.array([1, 5]), rng.normal(size=(3, 3))),
                 (np.array([1, 5, 6]), np.full((3, 3), 1e39))):
        try:
            iset.upsert(*args, seq=2)
        except ValueError:
            pass
        else:
            raise AssertionError("upsert accepted bad input")
    after = iset.matrix()
    assert iset.last_seq == 1 and iset.count == 2
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_add_index_over_existing_rows_then_drop_it(rng):
    X = rng.normal(0, 1, (150, 10)).astype(np.float32)
    iset = IndexSet(10)
    iset.upsert(np.arange(150), X, seq=1)
    seen: list[float] = []
    iset.add_index(IndexSpec("tri", 3.0), progress=seen.append)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    for q, h in zip(X[:3], iset.search(IndexSpec("tri", 3.0), X[:3], 4)):
        assert_knn(h, "tri", q, np.arange(150), X, 4, 3.0)
    iset.drop_index("tri-t3-flat")
    assert iset.specs() == []
    iset.upsert([7], X[:1], seq=2)  # the dropped column is gone from the table too


def test_searches_during_upserts_never_see_half_a_batch(rng):
    # each batch rewrites every id with one generation's vectors g * 1 + tiny noise; a search
    # for all rows must find one generation only
    n, d = 4000, 32
    noise = rng.normal(0, 1e-3, (n, d)).astype(np.float32)
    iset = IndexSet(d, [IndexSpec("euc"), IndexSpec("tri", 1.0)])
    iset.upsert(np.arange(n), noise, seq=0)
    stop, errors = threading.Event(), []

    def reader() -> None:
        try:
            while not stop.is_set():
                (h,) = iset.search(IndexSpec("euc"), np.zeros(d), n)
                gens = np.unique(np.round(np.sqrt(h.distances / d)))
                assert len(h.ids) == n and len(gens) == 1, gens
        except Exception as exc:  # noqa: BLE001 - any failure in the thread is surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    for g in range(1, 60):
        iset.upsert(np.arange(n), noise + g, seq=g)
    stop.set()
    for th in threads:
        th.join()
    assert errors == []
    assert iset.last_seq == 59
