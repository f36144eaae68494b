"""The table's id -> position map through writes, against a dict, and what it costs (issue 16)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from indexes import table as table_mod
from indexes.table import Table

I64 = np.iinfo(np.int64)


def _rows(tags: np.ndarray) -> np.ndarray:
    """Rows (m, 2) whose first value is a write's tag (float32 is exact below 2**24)."""
    return np.stack([tags, -tags], axis=1).astype(np.float32)


class _Model:
    """The oracle: a plain dict id -> the tag of the last row written for it."""

    def __init__(self) -> None:
        self.tag: dict[int, int] = {}
        self.next = 1

    def tags(self, m: int) -> np.ndarray:
        out = np.arange(self.next, self.next + m)
        self.next += m
        return out


def _check(t: Table, model: _Model, gone: np.ndarray, rng: np.random.Generator) -> None:
    """positions() of present and absent ids, in small and large batches, agrees with the dict."""
    assert t.n == len(model.tag)
    where = dict(zip(t.ids.tolist(), range(t.n)))
    assert len(where) == t.n and where.keys() == model.tag.keys()
    present = t.ids.copy()
    if t.n:
        np.testing.assert_array_equal(t.positions(present), np.arange(t.n))
        np.testing.assert_array_equal(t.rows[t.positions(present), 0],
                                      np.array([model.tag[i] for i in present.tolist()], np.float32))
    absent = np.concatenate([gone[rng.integers(0, gone.size, 50)] if gone.size else [],
                             rng.integers(I64.min, I64.max, 50, dtype=np.int64),
                             [I64.min, I64.max, 0, -1]]).astype(np.int64)
    absent = absent[~np.isin(absent, present)]
    assert (t.positions(absent) == -1).all()
    mixed = np.concatenate([absent, present])
    for size in (1, 3, 10, 20, 300, 6000):
        probe = mixed[rng.integers(0, mixed.size, size)]
        want = np.array([where.get(i, -1) for i in probe.tolist()], dtype=np.int64)
        np.testing.assert_array_equal(t.positions(probe), want)
    if t.n:
        i = int(present[rng.integers(t.n)])  # a scalar and a 2-d batch keep their shapes
        assert t.positions(i) == where[i] and t.positions(np.int64(i)).shape == ()
        np.testing.assert_array_equal(t.positions(np.array([[i, I64.min]])), [[where[i], where.get(I64.min, -1)]])


def test_positions_follow_a_dict_through_random_writes_merges_and_snapshots(rng, monkeypatch):
    merges = []
    merge = table_mod.PositionMap.merge
    monkeypatch.setattr(table_mod.PositionMap, "merge", lambda self, *a: (merges.append(1), merge(self, *a))[1])
    # ids anywhere in int64, the extremes included, plus a dense run that the writes revisit
    pool = np.unique(np.concatenate([rng.integers(I64.min, I64.max, 60_000, dtype=np.int64),
                                     np.arange(-3000, 3000), [I64.min, I64.max, I64.min + 1, I64.max - 1]]))
    pool = pool[rng.permutation(pool.size)]
    t, model = Table(2), _Model()
    snaps: list[tuple[Table, dict[int, int]]] = []
    max_n = 0
    for _ in range(160):
        present = t.ids.copy()
        gone = pool[~np.isin(pool, present)]
        op = rng.choice(["upsert", "upsert", "upsert1", "remove", "remove1", "compact", "adopt", "snapshot"],
                        p=[0.3, 0.05, 0.25, 0.15, 0.1, 0.05, 0.03, 0.07])
        if op in ("upsert", "upsert1"):
            runs = rng.integers(1, 400) if op == "upsert1" else 1  # many single-row writes: no merge each
            for _ in range(runs):
                m = 1 if op == "upsert1" else int(rng.integers(1, 5001))
                n_old = min(int(rng.integers(0, m + 1)), t.n)
                fresh = gone[rng.choice(gone.size, m - n_old, replace=False)]
                old = t.ids[rng.choice(t.n, n_old, replace=False)]
                ids = rng.permutation(np.concatenate([old, fresh]).astype(np.int64))
                tags = model.tags(ids.size)
                t.upsert(ids, _rows(tags), {})
                model.tag.update(zip(ids.tolist(), tags.tolist()))
                if op == "upsert1":
                    gone = gone[gone != ids[0]]
        elif op in ("remove", "remove1"):
            runs = rng.integers(1, 200) if op == "remove1" else 1
            for _ in range(runs):
                if not t.n:
                    break
                m = 1 if op == "remove1" else int(rng.integers(1, t.n + 1))
                ids = t.ids[rng.choice(t.n, m, replace=False)].copy()
                extra = gone[:3] if op == "remove" else gone[:0]  # absent ids are ignored
                t.remove(np.concatenate([ids, extra]))
                for i in ids.tolist():
                    del model.tag[i]
        elif op == "compact":
            t.compact()
        elif op == "adopt":
            t = Table.adopt(t.ids.copy(), t.rows.copy())
        else:
            snaps.append((t.snapshot(), dict(model.tag)))
        max_n = max(max_n, t.n)
        _check(t, model, gone, rng)
    assert max_n >= 10_000 and len(merges) >= 10, (max_n, len(merges))
    for snap, tags in snaps:  # the writes after each snapshot did not reach it
        m = _Model()
        m.tag = tags
        _check(snap, m, pool[~np.isin(pool, snap.ids)], rng)


def test_a_snapshot_and_its_table_write_apart(rng):
    ids = rng.permutation(np.arange(-5000, 5000, dtype=np.int64))
    t = Table.adopt(ids.copy(), _rows(np.arange(ids.size)))  # adopt takes the array: remove moves it
    t.remove(ids[:10])  # tombstones and recent ids in the map when the copy is taken
    t.upsert(np.array([10**12, 10**13]), _rows(np.array([7, 8])), {})
    s = t.snapshot()
    t.remove(ids[10:4000])
    t.upsert(ids[:10], _rows(np.arange(10)), {})
    s.remove(ids[6000:])
    s.upsert(np.array([10**14]), _rows(np.array([9])), {})
    for tab in (t, s):
        np.testing.assert_array_equal(tab.positions(tab.ids), np.arange(tab.n))
    assert (t.positions(ids[10:4000]) == -1).all() and (s.positions(ids[10:4000]) >= 0).all()
    assert (s.positions(ids[:10]) == -1).all() and (t.positions(ids[:10]) >= 0).all()
    assert t.positions(10**14) == -1 and s.positions(10**14) == s.n - 1


def test_the_id_map_of_an_adopted_table_costs_at_most_24_bytes_a_row(rng):
    n = 200_000
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    rows = np.zeros((n, 1), np.float32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t = Table.adopt(ids, rows)  # takes the arrays as they are: what it allocates is the map
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert t.positions(ids[123]) == 123
    assert held <= 24 * n, f"{held / n:.1f} B per row"


def test_a_bulk_upsert_puts_no_python_object_per_row_into_the_map(rng):
    n = 200_000
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    X = np.zeros((n, 1), np.float32)
    t = Table(1)
    t.reserve(n)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t.upsert(ids, X, {})
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert t.positions(ids[77]) == 77
    # ~117 B/row of int64 and bool temporaries; a dict entry per row on the way adds ~100 more
    assert peak <= 150 * n, f"{peak / n:.1f} B per row at the peak"


def test_single_row_writes_merge_once_per_sixteenth_of_the_table(rng, monkeypatch):
    merges = []
    merge = table_mod.PositionMap.merge
    monkeypatch.setattr(table_mod.PositionMap, "merge", lambda self, *a: (merges.append(1), merge(self, *a))[1])
    n = 100_000
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    t = Table.adopt(ids.copy(), _rows(np.arange(n)))
    for i in range(20_000):  # new ids and removals one at a time: O(n) per write would be ~10^9 steps
        if i % 4 == 3:
            t.remove(ids[i : i + 1])
        else:
            t.upsert(np.array([-1 - i]), _rows(np.array([i])), {})
    assert 1 <= len(merges) <= 20_000 // (n // 16) + 1
    assert t.n == n + 15_000 - 5_000
    np.testing.assert_array_equal(t.positions(t.ids), np.arange(t.n))


@pytest.mark.parametrize("n", [0, 1, 5])
def test_positions_of_a_small_or_empty_table(n):
    t = Table(2)
    if n:
        t.upsert(np.arange(n, dtype=np.int64) * 7, _rows(np.arange(n)), {})
    probe = np.array([0, 7, 28, I64.max, I64.min, -7], dtype=np.int64)
    want = [p if (p := i // 7) < n and i % 7 == 0 and i >= 0 else -1 for i in probe.tolist()]
    np.testing.assert_array_equal(t.positions(probe), want)
    np.testing.assert_array_equal(t.positions(np.empty(0, np.int64)), np.empty(0, np.int64))


def test_the_extreme_ids_come_and_go():
    ends = np.array([I64.max, I64.min, I64.max - 1, 0], dtype=np.int64)
    for start in (ends[1:], ends):  # int64 max absent from, then in, the adopted ids
        t = Table.adopt(start.copy(), _rows(np.arange(start.size)))
        for step in range(3):
            t.upsert(ends, _rows(np.arange(4) + step), {})
            for merged in (False, True):  # compact() merges the map
                np.testing.assert_array_equal(t.positions(ends), t.positions(ends.tolist()))
                assert (t.ids[t.positions(ends)] == ends).all() and t.n == 4
                if not merged:
                    t.compact()
            t.remove(ends[[0, 2]])
            assert t.positions(I64.max) == -1 and t.positions(np.full(100, I64.max)).max() == -1
            assert (t.ids[t.positions(ends[[1, 3]])] == ends[[1, 3]]).all()
            t.compact()
