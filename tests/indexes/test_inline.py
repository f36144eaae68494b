"""indexes.inline: what an inline search refuses to wait for or to compute (WouldBlock), and that
nothing changes outside inline()."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from indexes import exact
from indexes.inline import WouldBlock, check_work, inline, must_not_wait
from indexes.knn import IndexSet, IndexSpec, RWLock


def test_outside_inline_nothing_is_refused():
    assert not must_not_wait()
    check_work(1e30, "anything")
    with inline(10.0):
        assert must_not_wait()
    assert not must_not_wait()


def test_a_read_under_a_write_raises_inline_and_waits_outside():
    lock = RWLock()
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with lock.write():
            held.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    assert held.wait(30)
    with inline(1e9), pytest.raises(WouldBlock, match="write"):
        with lock.read():
            pass
    got: list[bool] = []
    reader = threading.Thread(target=lambda: [got.append(True) for _ in [lock.read().__enter__()]])
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and not got  # outside inline(): it waits
    release.set()
    t.join(30)
    reader.join(30)
    assert got == [True]


def test_a_search_over_the_budget_raises_before_it_computes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 8)).astype(np.float32)
    s = IndexSet(8, [IndexSpec("euc")])
    s.upsert(np.arange(2000), X, 1)
    q = X[:3].astype(np.float64)
    with inline(3 * 2000 * 8):  # exactly a flat scan of 3 queries: allowed
        ok = s.search("euc", q, 5)
    with inline(3 * 2000 * 8 - 1), pytest.raises(WouldBlock, match="budget"):
        s.search("euc", q, 5)
    assert [h.ids.tolist() for h in s.search("euc", q, 5)] == [h.ids.tolist() for h in ok]


def test_a_serialised_parallel_layer_is_not_waited_for_inline(monkeypatch):
    monkeypatch.setattr(exact, "threading_layer", lambda: "workqueue")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4)).astype(np.float32)
    Q = rng.normal(size=(8, 4))
    rows = np.tile(np.arange(10), (8, 1))
    with inline(1e12), pytest.raises(WouldBlock, match="one at a time"):
        exact.pair_distances("euc", None, Q, X, rows)
    D = exact.pair_distances("euc", None, Q, X, rows)  # outside inline(): computed
    want = ((Q[:, None, :] - X[rows].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_allclose(D, want, rtol=1e-12)
