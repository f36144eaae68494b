"""An evaluation's sample of a sharded collection, computed where its rows are (issue 13).

The coordinator draws the sample from the shards' merged, sorted internal ids (the same positions,
so the same points, as an unsharded collection with the same seed: `draw`) and gives core.evaluation
a `ShardedRows`, the `core.evaluation.Rows` of a sample spread over shards. core ranks, recommends and
labels exactly as for one array; only its four reads of the rows go to the shards:

- `columns(xq, t)`: the query's logits go to every shard; each computes its own sampled rows' value
  columns with `core.evaluation.columns` (CED, the other metrics, MR: 8 float64 a row, 64 bytes
  against 4 d for the row) and the coordinator places them in sample order. The ranking is over all
  of them at once, never an average of per-shard rhos. Every one_to_many form (one query, `queries`,
  labels, both rank modes, the Shepard data) reads its rows this way.
- `mean_roughness(t)`: each shard's (sum, count) of MR over its sampled rows (`core.roughness`),
  summed: the roughness guide, `temperatures: "auto"` and the roughness curve bisect over these.
- `rows(positions)`: the rows themselves travel only where they are queries: the <= 100 queries of
  `evaluate_queries` (the query vectors), and many_to_many, where every row is the query of the
  rows after it. Its sample is capped at `MANY_TO_MANY_MAX_ROWS` = 1,000 rows (4 MB at d = 1000),
  and its n (n - 1) / 2 pairs' columns would be 64 (n - 1) / 2 bytes a row against 4 d for the
  row: more than the rows once n > d / 8, so the rows go to the coordinator instead.
- `take(positions)`: a subset, still on the shards (the roughness rows of "auto").

The shards read their rows from their indexes at each call. A point deleted while an evaluation
runs makes the next read a 503 (retry); the draw itself redraws, as one machine does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import NotFound, StorageError
from core.evaluation import Rows, columns
from core.roughness import mean_roughness
from service.shard import CollectionShard
from service.store import Ext

Floats = npt.NDArray[np.float64]
Ids = npt.NDArray[np.int64]

#: the draw is retried this many times when a delete lands between its two reads
DRAWS = 3


# --- the shard's side (ShardActor.sample_columns / sample_roughness call these) --------------------


def shard_columns(shard: CollectionShard, iids: Ids, xq: Floats, t: float) -> Floats:
    """(len(iids), 8) value columns of query logits xq against this shard's rows `iids` at t."""
    _, X = shard.rows(iids)
    return columns(xq, X, t)


def shard_roughness(shard: CollectionShard, iids: Ids, t: float) -> tuple[float, int]:
    """(sum, count) of MR(softmax(x/t)) over this shard's rows `iids` (eq. 17)."""
    _, X = shard.rows(iids)
    return mean_roughness(X, t) * len(iids), len(iids)


# --- the coordinator's side ------------------------------------------------------------------------


def draw(shards: Sequence[Any], d: int, sample: int, seed: int,
         selection: Ids | None) -> tuple[list[Ext], ShardedRows]:
    """`sample` points drawn uniformly without replacement (seeded; all when sample >= count) from
    the merged internal ids of `shards` (RemoteShard), restricted to `selection`: their external ids
    and their rows, left on the shards."""
    from service.ray_shards import gather

    for _ in range(DRAWS):
        held = gather([(s, s.submit("call", "indexed_ids")) for s in shards])
        iids = np.concatenate(held)
        owners = np.concatenate([np.full(len(h), j, dtype=np.int64) for j, h in enumerate(held)])
        order = np.argsort(iids, kind="stable")
        iids, owners = iids[order], owners[order]
        if selection is not None:
            keep = np.isin(iids, selection)
            iids, owners = iids[keep], owners[keep]
        if sample < iids.size:  # positions in the merged list: an unsharded collection's draw
            pick = np.sort(np.random.default_rng(seed).choice(iids.size, size=sample, replace=False))
            iids, owners = iids[pick], owners[pick]
        rows = ShardedRows(shards, iids, owners, d)
        exts: list[Ext | None] = [None] * iids.size
        for w, part in rows.each("call", "describe", lambda w: iids[w].tolist(), vector=False, payload=False):
            for r, e in zip(w.tolist(), part.exts):
                exts[r] = e
        if None not in exts:
            return exts, rows  # type: ignore[return-value]
    raise StorageError("the collection changed under the sample three times; retry")


class ShardedRows(Rows):
    """The rows of a sample spread over shards: row r is internal id `iids[r]` on shard `owners[r]`."""

    def __init__(self, shards: Sequence[Any], iids: Ids, owners: npt.NDArray[np.int64], d: int) -> None:
        self._shards, self._iids, self._owners = list(shards), iids, owners
        self.n, self.d = int(iids.size), int(d)
        self._where = [np.flatnonzero(owners == j) for j in range(len(self._shards))]
        self._refs: list[Any] | None = None

    def each(self, method: str, *args: Any, **kwargs: Any) -> list[tuple[npt.NDArray[np.intp], Any]]:
        """(positions, answer) of `method` on every shard that holds rows of the sample, called at
        once; an argument that is a function of the positions is called with them."""
        from service.ray_shards import gather

        calls, where = [], []
        for j, w in enumerate(self._where):
            if w.size:
                a = [x(w) if callable(x) else x for x in args]
                calls.append((self._shards[j], self._shards[j].submit(method, *a, **kwargs)))
                where.append(w)
        try:
            return list(zip(where, gather(calls)))
        except NotFound as exc:  # a sampled point deleted while the evaluation runs
            raise StorageError(f"a point of the sample was deleted during the evaluation ({exc}); retry") from exc

    def _part(self, w: npt.NDArray[np.intp]) -> Any:
        """Shard rows' internal ids, put in Ray's object store once for every call of the evaluation."""
        import ray

        if self._refs is None:
            self._refs = [ray.put(self._iids[v]) if v.size else None for v in self._where]
        j = int(self._owners[w[0]])
        return self._refs[j]

    def columns(self, xq: Floats, t: float) -> Floats:
        out = np.empty((self.n, 8), dtype=np.float64)
        for w, part in self.each("sample_columns", self._part, np.asarray(xq, dtype=np.float64), float(t)):
            out[w] = part
        return out

    def mean_roughness(self, t: float) -> float:
        parts = self.each("sample_roughness", self._part, float(t))
        return float(sum(s for _, (s, _) in parts)) / max(1, sum(c for _, (_, c) in parts))

    def rows(self, positions: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
        sub = self.take(np.asarray(positions, dtype=np.intp))
        X: npt.NDArray[np.float32] | None = None
        for w, (_, part) in sub.each("call", "rows", lambda w: sub._iids[w]):
            if X is None:
                X = np.empty((sub.n, part.shape[1]), dtype=part.dtype)
            X[w] = part
        return X if X is not None else np.empty((0, self.d), dtype=np.float32)

    def take(self, positions: npt.NDArray[np.intp]) -> ShardedRows:
        return ShardedRows(self._shards, self._iids[positions], self._owners[positions], self.d)
