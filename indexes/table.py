"""The shared per-collection table: int64 ids -> float32 rows of raw logits, plus derived columns.

Rows are dense: row positions 0..n-1 are live, removal moves the last rows into the holes, so a
flat scan never meets a dead row. Derived columns (the flat indexes' embeddings) live in the same
table and move with their rows. Capacity grows geometrically, so appends are amortised O(d).
The table itself is not thread-safe: `IndexSet` serialises writers and holds readers off while a
write is applied.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
#: positions() of more ids than this binary-searches a sorted copy of the ids instead of the dict
_SORTED_FROM = 4096


class Table:
    """Live ids and their float32 rows (and derived float32 columns), positions 0..n-1."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._n = 0
        self._ids: Ids = np.empty(0, dtype=np.int64)
        self._rows: F32 = np.empty((0, dim), dtype=np.float32)
        self._cols: dict[str, F32] = {}
        self._pos: dict[int, int] = {}
        self._sorted: tuple[Ids, Ids] | None = None  # (ids sorted, their positions); None after a write

    @classmethod
    def adopt(cls, ids: Ids, rows: F32) -> Table:
        """A table over `ids` (unique, int64 (n,)) and `rows` (float32 (n, dim), C-contiguous), taking
        the arrays as they are, without a copy: a snapshot's load holds one copy of the rows, not two."""
        t = cls(rows.shape[1])
        t._n, t._ids, t._rows = ids.size, ids, rows
        t._pos = dict(zip(ids.tolist(), range(ids.size)))
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
        t._pos = dict(self._pos)
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
        """Row position of each id, -1 where the id is absent."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        if flat.size > _SORTED_FROM and self._n:
            return self._positions_sorted(flat).reshape(np.shape(ids))
        # map over Python ints: ~3x a generator converting numpy scalars one by one
        out = np.fromiter(map(self._pos.get, flat.tolist(), itertools.repeat(-1)), dtype=np.int64, count=flat.size)
        return out.reshape(np.shape(ids))

    def _positions_sorted(self, flat: Ids) -> Ids:
        """positions() for many ids (a filter's thousands): binary search in the sorted ids, built
        once after each write; readers may race to build it, and build the same arrays."""
        table = self._sorted
        if table is None:
            order = np.argsort(self.ids, kind="stable")
            table = self._sorted = (self.ids[order], order.astype(np.int64))
        keys, pos = table
        at = np.minimum(np.searchsorted(keys, flat), max(keys.size - 1, 0))
        return np.where(keys[at] == flat, pos[at], -1)

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
        old = pos >= 0
        new = ~old
        n_new = int(new.sum())
        self._reserve(self._n + n_new)
        pos[new] = np.arange(self._n, self._n + n_new)
        self._ids[pos] = ids
        self._rows[pos] = X
        for name, col in self._cols.items():
            col[pos] = cols[name]
        for i, p in zip(ids[new].tolist(), pos[new].tolist()):
            self._pos[i] = p
        self._n += n_new
        self._sorted = None

    def remove(self, ids: Ids) -> None:
        """Remove the given (existing, unique) ids; the last rows fill the holes."""
        pos = self.positions(ids)
        pos = np.unique(pos[pos >= 0])
        n_left = self._n - pos.size
        holes = pos[pos < n_left]
        tail = np.ones(self._n - n_left, dtype=bool)
        tail[pos[pos >= n_left] - n_left] = False
        movers = np.flatnonzero(tail) + n_left
        for i in self._ids[pos].tolist():
            del self._pos[i]
        self._ids[holes] = self._ids[movers]
        self._rows[holes] = self._rows[movers]
        for col in self._cols.values():
            col[holes] = col[movers]
        for i, p in zip(self._ids[holes].tolist(), holes.tolist()):
            self._pos[i] = p
        self._n = n_left
        self._sorted = None

    def compact(self) -> None:
        """Give back spare capacity (after a large removal)."""
        if self._rows.shape[0] > 2 * self._n + 16:
            n = self._n
            self._ids = self._ids[:n].copy()
            self._rows = self._rows[:n].copy()
            self._cols = {k: v[:n].copy() for k, v in self._cols.items()}
