"""External ids <-> internal ids of one shard: the one map every write path and every read uses.

An external id is what the user gave (an int or a str: 5 and "5" are different ids); an internal id
(iid) is the int64 the indexes and SQLite use, allocated once per point and kept when the point is
replaced. Two directions with different lives: a delete removes ext -> iid when it COMMITs (a new
write of that id gets a fresh iid, and lookups say "not found"), and iid -> ext when the delete has
been applied to the indexes (a search that ran against the old index can still name its hits).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from service.store import Ext

Ids = npt.NDArray[np.int64]


class IdMap:
    """Both directions of one shard's id map. Writers are serialised by the shard's owner; readers
    may run at any time (single dict operations are atomic under the GIL)."""

    def __init__(self, pairs: Iterable[tuple[int, Ext]] = ()) -> None:
        self._iid: dict[Ext, int] = {}
        self._ext: dict[int, Ext] = {}
        for iid, ext in pairs:
            self._iid[ext] = iid
            self._ext[iid] = ext

    def __len__(self) -> int:
        """Committed points."""
        return len(self._iid)

    def iid(self, ext: Ext) -> int | None:
        return self._iid.get(ext)

    def ext(self, iid: int) -> Ext | None:
        return self._ext.get(iid)

    def exts(self, iids: Iterable[int]) -> list[Ext | None]:
        """The external id of each iid, None where it was deleted and applied."""
        return list(map(self._ext.get, iids))

    def iids(self, exts: Iterable[Ext]) -> list[int | None]:
        return list(map(self._iid.get, exts))

    def resolve(self, exts: Sequence[Ext]) -> tuple[Ids, list[int]]:
        """Internal ids for `exts` (existing ones kept) and the positions that need a fresh one."""
        iids = np.empty(len(exts), dtype=np.int64)
        fresh = []
        for r, e in enumerate(exts):
            i = self._iid.get(e)
            if i is None:
                fresh.append(r)
            else:
                iids[r] = i
        return iids, fresh

    def bind(self, pairs: Iterable[tuple[Ext, int]]) -> None:
        """New points have committed."""
        for e, i in pairs:
            self._iid[e] = i
            self._ext[i] = e

    def forget(self, exts: Iterable[Ext]) -> None:
        """Deletes of these points have committed."""
        for e in exts:
            self._iid.pop(e, None)

    def forget_iids(self, iids: Iterable[int]) -> None:
        """Deletes of these internal ids have committed (a delete by filter knows iids)."""
        for i in iids:
            e = self._ext.get(i)
            if e is not None and self._iid.get(e) == i:
                del self._iid[e]

    def release(self, iids: Iterable[int]) -> None:
        """Deletes of these internal ids have been applied to the indexes."""
        for i in iids:
            self._ext.pop(i, None)
