"""The shared per-collection table: int64 ids -> float32 rows of raw logits, plus derived columns.

Rows are dense: row positions 0..n-1 are live, removal moves the last rows into the holes, so a
flat scan never meets a dead row. Derived columns (the flat indexes' embeddings) live in the same
table and move with their rows. Capacity grows geometrically, so appends are amortised O(d).
The table itself is not thread-safe: `IndexSet` serialises writers and holds readers off while a
write is applied. Readers change nothing (no lazily built cache), so any number may run at once.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
#: the id map merges its recent ids into its sorted base once they (with the ids removed since) are
#: more than max(_MERGE_MIN, n // _MERGE_EVERY): a merge is O(n), so a single-row write costs O(1)
#: amortised, and the dict of recent ids stays under ~6 B per row
_MERGE_MIN = 1024
_MERGE_EVERY = 16
#: positions() of at most this many ids checks each in a Python loop, of more with numpy masks
_FEW = 64
_I64_MAX = np.iinfo(np.int64).max


class PositionMap:
    """id -> row position in ~16 B per id: a sorted base of two int64 arrays plus a small dict (issue 16).

    A dict of one entry per row costs ~100 B per row (the entry and two int objects), a fifteenth of
    a 384-dim float32 row. The base is `keys` (ids, ascending) and `at` (each key's position, -1 once
    removed). Its last key is always int64 max (its position, or -1 while that id is absent), so a
    binary search never runs off the end: an id lands on its own key, or on a larger one when the
    base lacks it. Ids added since the last merge, all absent from the base, are in `recent`; a
    removed id keeps its key at position -1 (a tombstone) until the next merge, and comes back in
    place when written again. So a live id is either live in the base or in `recent`, never both,
    and only an id whose key the base lacks needs a look in `recent`.

    Writers change positions in place; a merge builds new arrays and swaps the (keys, at, recent)
    triple in one assignment, so a reader sees one base with its own recent ids or the other, and a
    reader needs no lock (the shard's id map reads while a writer writes: one writer at a time).
    """

    def __init__(self, keys: Ids | None = None, at: Ids | None = None) -> None:
        """The map of `keys` (unique, ascending) at positions `at` (int64 (n,) each)."""
        if keys is None or at is None:
            keys = at = np.empty(0, np.int64)
        if not keys.size or keys[-1] != _I64_MAX:
            keys, at = np.append(keys, _I64_MAX), np.append(at, -1)
        self._state: tuple[Ids, Ids, dict[int, int]] = (keys, at, {})
        self._dead = int(at[-1] < 0)  # the -1 entries of `at`

    @classmethod
    def of(cls, ids: Ids) -> PositionMap:
        """The map of unique `ids` (int64 (n,)) at positions 0..n-1."""
        order = np.argsort(ids)
        return cls(ids[order], order.astype(np.int64, copy=False))

    def copy(self) -> PositionMap:
        m = PositionMap.__new__(PositionMap)
        keys, at, recent = self._state
        m._state = (keys, at.copy(), dict(recent))  # keys are never written in place: the copy shares them
        m._dead = self._dead
        return m

    def get(self, flat: Ids) -> Ids:
        """The position of each id of `flat` (int64 (m,)), -1 where absent; a new array."""
        keys, at, recent = self._state
        i = keys.searchsorted(flat)
        out = at[i]
        if flat.size <= _FEW:
            # a search's 10-20 ids: comparing Python ints costs less than numpy's masks on so few
            for j, x, k in zip(itertools.count(), flat.tolist(), keys[i].tolist()):
                if k != x:
                    out[j] = recent.get(x, -1)
            return out
        miss = np.flatnonzero(keys[i] != flat)
        if recent:
            out[miss] = np.fromiter(map(recent.get, flat[miss].tolist(), itertools.repeat(-1)),
                                    dtype=np.int64, count=miss.size)
        else:
            out[miss] = -1
        return out

    def set(self, ids: Ids, pos: Ids, n: int) -> None:
        """Map each of the unique `ids` to its `pos`, or forget it where `pos` is -1 (int64 (m,) each);
        `n` is the live count after the write. An id keeps its slot in the base if it has one."""
        keys, at, recent = self._state
        i = keys.searchsorted(ids)
        if ids.size <= _FEW:
            # a single-row write: Python ints cost less than a dozen numpy calls on one element
            dead = self._dead
            for s, x, k, p in zip(i.tolist(), ids.tolist(), keys[i].tolist(), pos.tolist()):
                if k == x:
                    dead += (p < 0) - (int(at[s]) < 0)
                    at[s] = p
                elif p >= 0:
                    recent[x] = p
                else:
                    del recent[x]
            self._dead = dead
        else:
            hit = keys[i] == ids
            slots, now = i[hit], pos[hit]
            self._dead += int(np.count_nonzero(now < 0)) - int(np.count_nonzero(at[slots] < 0))
            at[slots] = now
            rest, p = ids[~hit], pos[~hit]
            for x in rest[p < 0].tolist():
                del recent[x]
            added = p >= 0
            if len(recent) + self._dead + int(added.sum()) > self._limit(n):
                # a bulk write goes to the base straight away: ~100 B of Python objects per id in the
                # dict, freed by the merge, would stay in the heap's arenas (RSS) after a large load
                self.merge(rest[added], p[added])
                return
            recent.update(zip(rest[added].tolist(), p[added].tolist()))
        if len(recent) + self._dead > self._limit(n):
            self.merge()

    @staticmethod
    def _limit(n: int) -> int:
        return max(_MERGE_MIN, n // _MERGE_EVERY)

    def merge(self, more: Ids | None = None, more_at: Ids | None = None) -> None:
        """Fold `recent` and the ids `more` at `more_at` (none in the base; where one is in `recent`
        too, its position in `more_at` wins) into the base and drop its tombstones: O(n + r log r)
        for r ids added."""
        keys, at, recent = self._state
        if more is None or more_at is None:
            more = more_at = np.empty(0, np.int64)
        if not recent and not more.size and self._dead == int(at[-1] < 0):
            return
        live = at[:-1] >= 0
        r = len(recent)
        rk = np.concatenate([np.fromiter(recent.keys(), dtype=np.int64, count=r), more])
        rp = np.concatenate([np.fromiter(recent.values(), dtype=np.int64, count=r), more_at])
        order = np.argsort(rk, kind="stable")
        rk, rp = rk[order], rp[order]
        last = np.ones(rk.size, dtype=bool)  # an id of `more` that is in `recent` moved since
        last[:-1] = rk[1:] != rk[:-1]
        rk, rp = rk[last], rp[last]
        r = rk.size
        bk = keys[:-1][live]
        # each added id's place in the merged keys: its rank among the base's keys plus its own
        dst = bk.searchsorted(rk) + np.arange(r)
        total = bk.size + r
        new_keys = np.empty(total + 1, dtype=np.int64)
        new_at = np.empty(total + 1, dtype=np.int64)
        old = np.ones(total, dtype=bool)
        old[dst] = False
        new_keys[dst], new_at[dst] = rk, rp
        new_keys[:total][old], new_at[:total][old] = bk, at[:-1][live]
        new_keys[total], new_at[total] = _I64_MAX, at[-1]
        self._state, self._dead = (new_keys, new_at, {}), int(at[-1] < 0)


class Table:
    """Live ids and their float32 rows (and derived float32 columns), positions 0..n-1."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._n = 0
        self._ids: Ids = np.empty(0, dtype=np.int64)
        self._rows: F32 = np.empty((0, dim), dtype=np.float32)
        self._cols: dict[str, F32] = {}
        self._map = PositionMap()

    @classmethod
    def adopt(cls, ids: Ids, rows: F32) -> Table:
        """A table over `ids` (unique, int64 (n,)) and `rows` (float32 (n, dim), C-contiguous), taking
        the arrays as they are, without a copy: a snapshot's load holds one copy of the rows, not two."""
        t = cls(rows.shape[1])
        t._n, t._ids, t._rows = ids.size, ids, rows
        t._map = PositionMap.of(ids)
        return t

    def reserve(self, n: int) -> None:
        """Room for `n` rows in all, so a load of known size grows the arrays once, not geometrically
        (each growth briefly holds the old and the new array)."""
        self._reserve(n, exact=True)

    def snapshot(self) -> Table:
        """A copy of the live ids and rows (no derived columns): what an index build reads while
        writes go on (IndexSet.add_index)."""
        t = Table(self.dim)
        t._n = self._n
        t._ids = self.ids.copy()
        t._rows = self.rows.copy()
        t._map = self._map.copy()
        return t

    @property
    def n(self) -> int:
        return self._n

    @property
    def ids(self) -> Ids:
        """Live ids by position (a view: valid until the next write)."""
        return self._ids[: self._n]

    @property
    def rows(self) -> F32:
        """Live float32 rows by position (a view: valid until the next write)."""
        return self._rows[: self._n]

    def column(self, name: str) -> F32:
        return self._cols[name][: self._n]

    def positions(self, ids: Any) -> Ids:
        """Row position of each id, -1 where the id is absent (int64, the shape of `ids`).

        A binary search per id plus a dict look-up for each id the sorted base lacks: the 10 ids of a
        search on 100k rows take ~3.7 us here, against ~3.2 us for a dict of one entry per row."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        return self._map.get(flat).reshape(np.shape(ids))

    def add_column(self, name: str, values: F32) -> None:
        """Install a derived column computed for the current rows (same order)."""
        col = np.empty((self._rows.shape[0], values.shape[1]), dtype=np.float32)
        col[: self._n] = values
        self._cols[name] = col

    def drop_column(self, name: str) -> None:
        self._cols.pop(name, None)

    def _reserve(self, n: int, *, exact: bool = False) -> None:
        cap = self._rows.shape[0]
        if n <= cap:
            return
        new_cap = n if exact else max(n, int(cap * 1.5) + 16)

        def grow(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            b = np.empty((new_cap, *a.shape[1:]), dtype=a.dtype)
            b[: self._n] = a[: self._n]
            return b

        self._ids = grow(self._ids)
        self._rows = grow(self._rows)
        self._cols = {k: grow(v) for k, v in self._cols.items()}

    def upsert(self, ids: Ids, X: F32, cols: dict[str, F32]) -> None:
        """Write rows for unique `ids`: existing ids are overwritten in place, new ones appended.

        `cols` holds the derived rows for every column, in the order of `ids`.
        """
        pos = self.positions(ids)
        new = pos < 0
        n_new = int(new.sum())
        self._reserve(self._n + n_new)
        pos[new] = np.arange(self._n, self._n + n_new)
        self._ids[pos] = ids
        self._rows[pos] = X
        for name, col in self._cols.items():
            col[pos] = cols[name]
        self._n += n_new
        if n_new:
            self._map.set(np.asarray(ids, dtype=np.int64)[new], pos[new], self._n)

    def remove(self, ids: Ids) -> None:
        """Remove the given (existing, unique) ids; the last rows fill the holes."""
        pos = self.positions(ids)
        pos = np.unique(pos[pos >= 0])
        n_left = self._n - pos.size
        holes = pos[pos < n_left]
        tail = np.ones(self._n - n_left, dtype=bool)
        tail[pos[pos >= n_left] - n_left] = False
        movers = np.flatnonzero(tail) + n_left
        gone = self._ids[pos]
        self._ids[holes] = self._ids[movers]
        self._rows[holes] = self._rows[movers]
        for col in self._cols.values():
            col[holes] = col[movers]
        self._map.set(np.concatenate([gone, self._ids[holes]]),
                      np.concatenate([np.full(gone.size, -1, np.int64), holes]), n_left)
        self._n = n_left

    def compact(self) -> None:
        """Give back spare capacity (after a large removal), the id map's tombstones included."""
        self._map.merge()
        if self._rows.shape[0] > 2 * self._n + 16:
            n = self._n
            self._ids = self._ids[:n].copy()
            self._rows = self._rows[:n].copy()
            self._cols = {k: v[:n].copy() for k, v in self._cols.items()}
