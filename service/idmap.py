"""External ids <-> internal ids of one shard: the one map every write path and every read uses.

An external id is what the user gave (an int or a str: 5 and "5" are different ids); an internal id
(iid) is the int64 the indexes and SQLite use, allocated once per point and kept when the point is
replaced. Two directions with different lives: a delete removes ext -> iid when it COMMITs (a new
write of that id gets a fresh iid, and lookups say "not found"), and iid -> ext when the delete has
been applied to the indexes (a search that ran against the old index can still name its hits).

Integer ids (0 .. 2^63 - 1, what `points/bulk?start=` gives) live in two `PositionMap`s, ~32 B per
point for both directions; a pair of dicts costs ~170 B per point (two entries and two int objects),
a tenth of a 384-dim float32 row (issue 16). Other ids (strings) live in a pair of dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from indexes.table import PositionMap
from service.store import Ext

Ids = npt.NDArray[np.int64]

_I64_MAX = 2**63 - 1


def _numeric(e: object) -> bool:
    return type(e) is int and 0 <= e <= _I64_MAX  # type: ignore[operator]


def _split(exts: Sequence[Ext]) -> tuple[Ids, Ids, list[int]]:
    """Positions of the integer ids in `exts`, those ids (int64), and the positions of the others."""
    if isinstance(exts, range) and exts.start >= 0 and (not exts or exts[-1] <= _I64_MAX):
        return np.arange(len(exts), dtype=np.int64), np.arange(exts.start, exts.stop, exts.step, dtype=np.int64), []
    num: list[int] = []
    rest: list[int] = []
    for r, e in enumerate(exts):
        (num if _numeric(e) else rest).append(r)
    if not rest:
        return np.arange(len(exts), dtype=np.int64), np.array(exts, dtype=np.int64).reshape(-1), []
    return np.array(num, dtype=np.int64), np.array([exts[r] for r in num], dtype=np.int64), rest


class IdMap:
    """Both directions of one shard's id map. Writers are serialised by the shard's owner; readers
    may run at any time (a PositionMap's reader sees one consistent base; single dict operations are
    atomic under the GIL)."""

    def __init__(self, pairs: Iterable[tuple[int, Ext]] = ()) -> None:
        self._num_iid = PositionMap()  # integer ext -> iid
        self._num_ext = PositionMap()  # iid -> integer ext
        self._iid: dict[Ext, int] = {}  # other ext -> iid
        self._ext: dict[int, Ext] = {}  # iid -> other ext
        self._count = 0  # committed points
        pairs = list(pairs)
        if pairs:
            self.bind((e, i) for i, e in pairs)

    @classmethod
    def of(cls, iids: Ids, exts: Ids, others: Iterable[tuple[int, Ext]] = ()) -> IdMap:
        """The map of integer ids `exts` at `iids` (int64 (n,) each, unique) and the (iid, ext) pairs
        `others`: a load's arrays go in as they are, without a Python object per point."""
        m = cls(others)
        if exts.size:
            order = np.argsort(exts)
            m._num_iid = PositionMap(exts[order], iids[order])
            order = np.argsort(iids)
            m._num_ext = PositionMap(iids[order], exts[order])
            m._count += int(exts.size)
        return m

    def __len__(self) -> int:
        """Committed points."""
        return self._count

    def iid(self, ext: Ext) -> int | None:
        if _numeric(ext):
            i = int(self._num_iid.get(np.array([ext], dtype=np.int64))[0])
            return i if i >= 0 else None
        return self._iid.get(ext)

    def ext(self, iid: int) -> Ext | None:
        return self.exts([iid])[0]

    def exts(self, iids: Iterable[int]) -> list[Ext | None]:
        """The external id of each iid, None where it was deleted and applied."""
        flat = np.fromiter(iids, dtype=np.int64)
        out: list[Ext | None] = self._num_ext.get(flat).tolist()
        for j, e in enumerate(out):
            if e < 0:  # type: ignore[operator]
                out[j] = self._ext.get(int(flat[j])) if self._ext else None
        return out

    def iids(self, exts: Sequence[Ext]) -> list[int | None]:
        found = self._lookup(exts if isinstance(exts, (list, tuple, range)) else list(exts))
        return [i if i >= 0 else None for i in found.tolist()]

    def resolve(self, exts: Sequence[Ext]) -> tuple[Ids, list[int]]:
        """Internal ids for `exts` (existing ones kept) and the positions that need a fresh one."""
        iids = self._lookup(exts)
        return iids, np.flatnonzero(iids < 0).tolist()

    def _lookup(self, exts: Sequence[Ext]) -> Ids:
        """The iid of each of `exts`, -1 where it has none."""
        iids = np.full(len(exts), -1, dtype=np.int64)
        where, values, rest = _split(exts)
        if where.size:
            iids[where] = self._num_iid.get(values)
        for r in rest:
            iids[r] = self._iid.get(exts[r], -1)
        return iids

    def bind(self, pairs: Iterable[tuple[Ext, int]]) -> None:
        """New points have committed: (ext, iid) pairs, each ext and each iid once."""
        pairs = list(pairs)
        self.bind_rows([e for e, _ in pairs], np.array([i for _, i in pairs], dtype=np.int64))

    def bind_rows(self, exts: Sequence[Ext], iids: Ids, rows: Sequence[int] | None = None) -> None:
        """New points have committed: `exts[r]` at `iids[r]` for each r of `rows` (all when None),
        each ext and each iid once. A bulk write's range of ids never becomes Python objects."""
        where, values, rest = _split(exts)
        if rows is not None:
            keep = np.zeros(len(exts), dtype=bool)
            keep[np.asarray(rows, dtype=np.int64)] = True
            values, where = values[keep[where]], where[keep[where]]
            rest = [r for r in rest if keep[r]]
        if where.size:
            num_iids = iids[where]
            self._count += int(np.count_nonzero(self._num_iid.get(values) < 0))
            n = self._count
            # iid -> ext first: a reader that finds the iid can name it
            self._num_ext.set(num_iids, values, n)
            self._num_iid.set(values, num_iids, n)
        for r in rest:
            e, i = exts[r], int(iids[r])
            self._ext[i] = e
            self._count += e not in self._iid
            self._iid[e] = i

    def forget(self, exts: Iterable[Ext]) -> None:
        """Deletes of these points have committed."""
        exts = list(dict.fromkeys(exts))
        where, values, rest = _split(exts)
        if where.size:
            present = values[self._num_iid.get(values) >= 0]
            self._count -= present.size
            self._num_iid.set(present, np.full(present.size, -1, np.int64), self._count)
        for r in rest:
            if self._iid.pop(exts[r], None) is not None:
                self._count -= 1

    def forget_iids(self, iids: Iterable[int]) -> None:
        """Deletes of these internal ids have committed (a delete by filter knows iids)."""
        flat = np.unique(np.fromiter(iids, dtype=np.int64))
        values = self._num_ext.get(flat)
        num = values >= 0
        if num.any():
            held = values[num]
            mine = held[self._num_iid.get(held) == flat[num]]
            self._count -= mine.size
            self._num_iid.set(mine, np.full(mine.size, -1, np.int64), self._count)
        for i in flat[~num].tolist():
            e = self._ext.get(i)
            if e is not None and self._iid.get(e) == i:
                del self._iid[e]
                self._count -= 1

    def release(self, iids: Iterable[int]) -> None:
        """Deletes of these internal ids have been applied to the indexes."""
        flat = np.unique(np.fromiter(iids, dtype=np.int64))
        present = flat[self._num_ext.get(flat) >= 0]
        if present.size:
            self._num_ext.set(present, np.full(present.size, -1, np.int64), self._count)
        for i in flat.tolist():
            self._ext.pop(i, None)
