"""Index builds do not block writes (issue 12): `add_index` builds from a copy of the rows, replays the
writes made meanwhile, and installs the index; the result equals float64 brute force over the final rows."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.errors import Conflict, NotFound
from indexes.knn import FlatIndex, IndexSet, IndexSpec
from tests.indexes.brute import assert_knn

#: seconds a write may take while a build is paused before the test calls it blocked
WAIT = 20.0


class Paused:
    """A progress callback that holds the build at its first call until `go` is set."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def __call__(self, p: float) -> None:
        self.reached.set()
        assert self.go.wait(60), "the test never released the build"


def _start(iset: IndexSet, spec: IndexSpec, progress: Paused) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            iset.add_index(spec, progress=progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert progress.reached.wait(WAIT), "the build never reported progress"
    return thread, errors


def _completes(fn) -> None:
    """fn() finishes within WAIT seconds in another thread (it would hang if the build held the set)."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(WAIT), "a write waited for the index build"
    if errors:
        raise errors[0]


def _final_rows(iset: IndexSet) -> tuple[np.ndarray, np.ndarray]:
    ids, rows = iset.matrix()
    return ids, rows.astype(np.float64)


def _writes_during_a_paused_build(rng, iset: IndexSet, spec: IndexSpec, n: int, d: int) -> None:
    """Pause the build of `spec`, then upsert new rows, replace and remove old ones, search: all finish."""
    paused = Paused()
    thread, errors = _start(iset, spec, paused)
    _completes(lambda: iset.upsert(np.arange(n, n + 50), rng.normal(0, 3, (50, d)), seq=2))      # new rows
    _completes(lambda: iset.upsert(np.arange(0, 40), rng.normal(0, 3, (40, d)) * 2, seq=3))      # replaced
    _completes(lambda: iset.remove(np.arange(40, 90), seq=4))                                    # removed
    _completes(lambda: iset.upsert(np.arange(45, 50), rng.normal(0, 3, (5, d)), seq=5))          # removed, back
    _completes(lambda: iset.remove(np.arange(n + 40, n + 50), seq=6))                            # new, removed
    _completes(lambda: iset.search(IndexSpec("euc"), rng.normal(size=(2, d)), 3))
    assert spec not in iset.specs()  # not installed until it has caught up
    paused.go.set()
    thread.join(WAIT)
    assert not thread.is_alive() and not errors, errors
    assert spec in iset.specs() and iset.last_seq == 6


@pytest.mark.parametrize("spec", [IndexSpec("tri", 2.0), IndexSpec("cos"), IndexSpec("ced", 1.0),
                                  IndexSpec("tri", 2.0, "hnsw", {"ef_search": 10_000}),
                                  IndexSpec("ced", 1.0, "hnsw", {"ef_search": 10_000})])
def test_writes_complete_while_a_build_is_paused_and_the_index_then_equals_brute_force(rng, spec):
    n, d = 400, 8
    iset = IndexSet(d, [IndexSpec("euc")])
    iset.upsert(np.arange(n), rng.normal(0, 3, (n, d)), seq=1)
    _writes_during_a_paused_build(rng, iset, spec, n, d)
    ids, X = _final_rows(iset)
    assert ids.size == n + 40 - 50 + 5 and not np.isin(np.r_[40:45, 50:90, n + 40 : n + 50], ids).any()
    if spec.kind == "flat" and spec.metric != "euc":
        # the built column follows the table's rows, replayed ones included
        want = FlatIndex(spec, d).embed(iset._table.rows)[0]
        np.testing.assert_array_equal(iset._table.column(spec.key), want)
    Q = np.vstack([X[:5], rng.normal(0, 3, (5, d))])
    for q, h in zip(Q, iset.search(spec, Q, 10)):
        assert h.how in (("approximate",) if spec.kind == "hnsw" else ("certified", "scanned"))
        assert_knn(h, spec.metric, q, ids, X, 10, spec.temperature, rtol=1e-9)
    iset.upsert([10**6], Q[5:6], seq=7)  # the installed index takes later writes
    ids, X = _final_rows(iset)
    for q, h in zip(Q, iset.search(spec, Q, 10)):
        assert_knn(h, spec.metric, q, ids, X, 10, spec.temperature, rtol=1e-9)


def test_an_ivf_build_catches_up_and_trains_once_enough_rows_arrived(rng, monkeypatch):
    from indexes import knn

    monkeypatch.setattr(knn, "IVF_POINTS_PER_LIST", 10)
    n, d = 400, 6
    spec = IndexSpec("euc", kind="ivf", params={"nlist": 4, "nprobe": 4})
    iset = IndexSet(d, [IndexSpec("euc")])
    iset.upsert(np.arange(n), rng.normal(0, 3, (n, d)), seq=1)
    _writes_during_a_paused_build(rng, iset, spec, n, d)
    ids, X = _final_rows(iset)
    for q, h in zip(X[:5], iset.search(spec, X[:5], 10)):
        assert h.how == "approximate"  # nprobe == nlist: every list visited, so exact
        assert_knn(h, "euc", q, ids, X, 10, rtol=1e-9)


@pytest.mark.parametrize("spec", [IndexSpec("tri", 10.0),
                                  IndexSpec("tri", 10.0, "hnsw", {"M": 16, "ef_construction": 64,
                                                                  "ef_search": 10_000})])
def test_a_build_over_ten_thousand_rows_takes_writes_meanwhile_and_equals_brute_force(rng, spec):
    n, d = 12_000, 16
    iset = IndexSet(d, [IndexSpec("euc")])
    iset.upsert(np.arange(n), rng.normal(0, 3, (n, d)), seq=1)
    paused = Paused()
    thread, errors = _start(iset, spec, paused)
    for b in range(10):  # 10 batches: new rows, replacements, removals across the whole table
        _completes(lambda b=b: iset.upsert(np.arange(n + 100 * b, n + 100 * (b + 1)),
                                           rng.normal(0, 3, (100, d)), seq=2 + 2 * b))
        _completes(lambda b=b: iset.upsert(rng.choice(n, 100, replace=False), rng.normal(0, 3, (100, d)),
                                           seq=2 + 2 * b))
        _completes(lambda b=b: iset.remove(rng.choice(n + 1000, 100, replace=False), seq=3 + 2 * b))
    paused.go.set()
    thread.join(120)
    assert not thread.is_alive() and not errors, errors
    ids, X = _final_rows(iset)
    Q = np.vstack([X[rng.choice(ids.size, 10, replace=False)], rng.normal(0, 3, (10, d))])
    for q, h in zip(Q, iset.search(spec, Q, 10)):
        assert_knn(h, "tri", q, ids, X, 10, 10.0, rtol=1e-9)


def test_dropping_an_index_while_it_builds_stops_it_and_a_second_add_of_the_key_conflicts(rng):
    n, d = 300, 6
    spec = IndexSpec("tri", 3.0, "hnsw")
    iset = IndexSet(d, [IndexSpec("euc")])
    iset.upsert(np.arange(n), rng.normal(0, 3, (n, d)), seq=1)
    first = Paused()
    thread, errors = _start(iset, spec, first)
    with pytest.raises(Conflict, match="being built"):
        iset.add_index(spec)
    iset.drop_index(spec.key)  # stops the first build
    with pytest.raises(NotFound, match="tri-t3-hnsw"):
        iset.drop_index(spec.key)
    iset.upsert(np.arange(n, n + 20), rng.normal(0, 3, (20, d)), seq=2)
    iset.add_index(IndexSpec("tri", 3.0, "hnsw", {"ef_search": 10_000}))  # a new build of the key, done
    second = iset._indexes[spec.key]
    first.go.set()
    thread.join(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], Conflict) and "dropped" in str(errors[0])
    assert iset._indexes[spec.key] is second  # the stopped build installed nothing
    ids, X = _final_rows(iset)
    for q, h in zip(X[:5], iset.search(spec, X[:5], 8)):
        assert_knn(h, "tri", q, ids, X, 8, 3.0, rtol=1e-9)


def test_a_failed_build_leaves_the_key_free(rng):
    iset = IndexSet(4, [IndexSpec("euc")])
    iset.upsert(np.arange(10), rng.normal(size=(10, 4)), seq=1)

    def boom(p: float) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        iset.add_index(IndexSpec("cos"), progress=boom)
    assert IndexSpec("cos") not in iset.specs()
    iset.add_index(IndexSpec("cos"))
    assert IndexSpec("cos") in iset.specs()


def test_a_build_with_no_write_meanwhile_copies_no_rows_and_cos_stores_one_number_per_row(rng, monkeypatch):
    """Issue 16: add_index reads the live table (a write during the build first copies it, as the
    tests above check), and flat cos searches the rows themselves through their stored 1/|x|."""
    import tracemalloc

    from indexes.table import Table

    n, d = 20_000, 64
    iset = IndexSet(d, [IndexSpec("euc")])
    iset.upsert(np.arange(n), rng.normal(0, 3, (n, d)), seq=1)
    monkeypatch.setattr(Table, "snapshot", lambda self: pytest.fail("the build copied the rows"))
    iset.add_index(IndexSpec("euc", kind="hnsw", params={"M": 8, "ef_construction": 20}))
    tracemalloc.start()
    iset.add_index(IndexSpec("cos"))
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert kept < 0.1 * n * d * 4, kept / (n * d * 4)  # n float32, not a unit-vector copy of the rows
    X = iset.matrix()[1].astype(np.float64)
    Q = np.vstack([X[:2], rng.normal(0, 3, (3, d)), np.zeros((1, d))])
    for q, h in zip(Q, iset.search(IndexSpec("cos"), Q, 10)):
        assert h.how in ("certified", "scanned")
        assert_knn(h, "cos", q, np.arange(n), X, 10, None, rtol=1e-9)
