"""Filtered search (issue 15): `IndexSet.search(..., allowed=ids)` over flat indexes equals float64
brute force over the allowed rows (certified and scanned, t up to 1000, above and below
FILTER_SCAN_ROWS); HNSW and IVF answer with allowed ids only; k beyond the allowed rows gives all of
them; removed and unknown ids never come back."""

from __future__ import annotations

import numpy as np
import pytest

from indexes.knn import FILTER_GATHER_BELOW, FILTER_SCAN_ROWS, IndexSet, IndexSpec
from tests.indexes.brute import assert_knn

N, D = 12_000, 40
TEMPS = (1.0, 100.0, 1000.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(15)
    # logits with a class structure (as classifier outputs), so neighbours are meaningful at every t
    centres = rng.normal(0, 4, size=(30, D))
    X = (centres[rng.integers(0, 30, N)] + rng.normal(0, 1, size=(N, D))).astype(np.float32)
    ids = rng.choice(10**9, size=N, replace=False).astype(np.int64)
    specs = [IndexSpec("euc"), IndexSpec("cos")] + [IndexSpec(m, t) for m in ("tri", "ced") for t in TEMPS]
    flat = IndexSet(D, specs)
    flat.upsert(ids, X, seq=1)
    approx = IndexSet(D, [IndexSpec("tri", 100.0, "hnsw", {"M": 16, "ef_construction": 64, "ef_search": 64}),
                          IndexSpec("euc", None, "ivf", {"nlist": 32, "nprobe": 8})])
    approx.upsert(ids, X, seq=1)
    Q = np.concatenate([X[:3].astype(np.float64) + rng.normal(0, 0.3, (3, D)), centres[:2]])
    return ids, X, Q, flat, approx, rng


def _subset(ids, rng, n):
    return np.sort(rng.choice(ids, size=n, replace=False))


# scanned; candidates from the gathered matching rows; candidates from all rows, the matching ones kept
SIZES = [300, FILTER_SCAN_ROWS + 1, int(FILTER_GATHER_BELOW * N) + 2000]


@pytest.mark.parametrize("size", SIZES)
def test_filtered_flat_search_is_brute_force_over_the_allowed_rows(data, size):
    ids, X, Q, flat, _, rng = data
    allowed = _subset(ids, rng, size)
    keep = np.isin(ids, allowed)
    hows = set()
    for metric, t in [("euc", None), ("cos", None)] + [(m, t) for m in ("tri", "ced") for t in TEMPS]:
        hits = flat.search(IndexSpec(metric, t), Q, 10, allowed=allowed)
        for q, h in zip(Q, hits):
            assert h.matched == size and np.isin(h.ids, allowed).all()
            assert_knn(h, metric, q, ids[keep], X[keep], 10, t, rtol=1e-9)
            hows.add((metric, h.how))
    if size <= FILTER_SCAN_ROWS:
        assert {how for _, how in hows} == {"scanned"}
    else:  # above the threshold the certificate answers over the subset (tri included)
        assert ("tri", "certified") in hows and ("euc", "certified") in hows


def test_tri_falls_back_to_a_scan_of_the_allowed_rows_when_the_certificate_fails(data, monkeypatch):
    ids, X, Q, flat, _, rng = data
    allowed = _subset(ids, rng, 5000)
    keep = np.isin(ids, allowed)
    # a certificate that never holds: every answer must come from the scan of the allowed rows
    monkeypatch.setattr("indexes.exact.lower_bound", lambda *a, **k: np.full(len(a[2]), -np.inf))
    for t in TEMPS:
        for q, h in zip(Q, flat.search(IndexSpec("tri", t), Q, 8, allowed=allowed)):
            assert h.how == "scanned"
            assert_knn(h, "tri", q, ids[keep], X[keep], 8, t, rtol=1e-9)


def test_k_beyond_the_allowed_rows_returns_all_of_them_and_unknown_ids_are_ignored(data):
    ids, X, Q, flat, approx, _ = data
    allowed = np.concatenate([ids[:5], [10**12 + 1]])  # one id nobody stored
    for iset, metric, t, kind in ((flat, "tri", 100.0, "flat"), (approx, "tri", 100.0, "hnsw"),
                                  (approx, "euc", None, "ivf")):
        hits = iset.search(IndexSpec(metric, t, kind), Q[:2], 50, allowed=allowed)
        for q, h in zip(Q, hits):
            assert h.matched == 5 and sorted(h.ids.tolist()) == sorted(ids[:5].tolist())
            assert_knn(h, metric, q, ids[:5], X[:5], 50, t, rtol=1e-9)
    empty = flat.search(IndexSpec("euc"), Q[:1], 5, allowed=np.array([10**12 + 1]))[0]
    assert empty.ids.size == 0 and empty.matched == 0


def test_the_query_point_is_left_out_of_a_filtered_answer(data):
    ids, X, _, flat, _, _ = data
    allowed = ids[:4000]
    h = flat.search(IndexSpec("euc"), X[:1], 5, allowed=allowed, exclude=[int(ids[0])])[0]
    assert int(ids[0]) not in h.ids.tolist()
    assert_knn(h, "euc", X[0], ids[:4000], X[:4000], 5, exclude=int(ids[0]), rtol=1e-9)


#: the kind of the approximate index of each metric in `data`'s approx set
APPROX_KIND = {"tri": "hnsw", "euc": "ivf"}


@pytest.mark.parametrize(("metric", "t"), [("tri", 100.0), ("euc", None)])
def test_hnsw_and_ivf_answer_with_allowed_ids_only_and_say_approximate(data, metric, t):
    ids, X, Q, _, approx, rng = data
    for size in (FILTER_SCAN_ROWS + 500, 6000):
        allowed = _subset(ids, rng, size)
        hits = approx.search(IndexSpec(metric, t, APPROX_KIND[metric]), Q, 10, allowed=allowed)
        assert all(h.how == "approximate" and h.matched == size for h in hits)
        assert all(np.isin(h.ids, allowed).all() and len(h.ids) == 10 for h in hits)
        keep = np.isin(ids, allowed)
        exact = approx.search(IndexSpec(metric, t, APPROX_KIND[metric]), Q, 10, allowed=allowed, exact=True)
        for q, h in zip(Q, exact):
            assert h.how == "scanned"
            assert_knn(h, metric, q, ids[keep], X[keep], 10, t, rtol=1e-9)
    few = _subset(ids, rng, 100)  # below the threshold: an exact scan, whatever the index
    keep = np.isin(ids, few)
    for q, h in zip(Q, approx.search(IndexSpec(metric, t, APPROX_KIND[metric]), Q, 10, allowed=few)):
        assert h.how == "scanned"
        assert_knn(h, metric, q, ids[keep], X[keep], 10, t, rtol=1e-9)


def test_removed_rows_never_come_back_from_a_filtered_hnsw_search(rng):
    X = rng.normal(size=(4000, 16)).astype(np.float32)
    ids = np.arange(4000, dtype=np.int64)
    iset = IndexSet(16, [IndexSpec("euc", None, "hnsw", {"M": 8, "ef_construction": 32, "ef_search": 32})])
    iset.upsert(ids, X, seq=1)
    iset.remove(ids[:200], seq=2)  # tombstones, below the rebuild fraction
    allowed = ids[: 3000]
    for h in iset.search(IndexSpec("euc", kind="hnsw"), X[:20], 10, allowed=allowed):
        assert np.isin(h.ids, ids[200:3000]).all() and h.matched == 2800


def test_candidates_from_many_gathered_blocks_still_certify_exact_answers(data, monkeypatch):
    ids, X, Q, flat, _, rng = data
    monkeypatch.setattr("indexes.exact.GATHER_BYTES", 4 * (D + 1) * 700)  # blocks of ~700 rows
    allowed = _subset(ids, rng, int(FILTER_GATHER_BELOW * N) - 100)
    keep = np.isin(ids, allowed)
    for metric, t in (("euc", None), ("cos", None), ("tri", 100.0), ("ced", 1.0)):
        hows = []
        for q, h in zip(Q, flat.search(IndexSpec(metric, t), Q, 10, allowed=allowed)):
            assert_knn(h, metric, q, ids[keep], X[keep], 10, t, rtol=1e-9)
            hows.append(h.how)
        assert "certified" in hows, (metric, hows)  # the merged candidates are the subset's best


def test_many_ids_find_their_rows_through_writes_as_one_id_at_a_time_does(rng):
    from indexes.table import Table

    t = Table(2)
    ids = rng.choice(10**9, size=20_000, replace=False).astype(np.int64)
    def check() -> None:
        probe = np.concatenate([ids[rng.integers(0, ids.size, 6000)], [10**12, -5]])
        where = dict(zip(t.ids.tolist(), range(t.n)))
        want = np.array([where.get(int(i), -1) for i in probe])
        np.testing.assert_array_equal(t.positions(probe), want)
        assert (t.ids[want[want >= 0]] == probe[want >= 0]).all()

    for step in range(4):  # appends, overwrites, removes: each must drop the sorted copy
        t.upsert(ids[step * 4000 : step * 4000 + 8000], rng.normal(size=(8000, 2)).astype(np.float32), {})
        check()
        t.remove(ids[step * 3000 : step * 3000 + 1500])
        check()
