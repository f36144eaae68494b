"""k-NN over one collection: a shared float32 table and one index per (metric, temperature, kind).

- flat (the default): exact. FAISS proposes k' > k candidates over the metric's embedding
  (embed.py), they are re-ranked by the exact float64 distance, and the certificate (exact.py)
  proves that no other row can enter the top k; where it cannot, one fused float64 pass over all
  rows answers instead. `Hits.how` is "certified" or "scanned".
- hnsw / ivf: approximate candidates from `faiss.index_factory`, re-ranked exactly (so distances
  are exact values, the set may miss neighbours): "approximate". HNSW cannot remove: removed or
  replaced vectors become tombstones that an IDSelectorBitmap hides from searches, and the graph is
  rebuilt from the table once they exceed `TOMBSTONE_FRACTION`. IVF trains once
  `IVF_POINTS_PER_LIST` * nlist points exist and answers by exact scan until then.

Parts of a merge (issue 13): a collection split into shards asks each shard `search(..., stage="first")`:
one certificate attempt at k' and no fallback, so a query whose certificate fails locally comes back
"unproven" with its top k among the candidates and `Hits.bound`. The caller merges the parts and judges
each bound against the merged k-th distance (`certifies`); only the parts it does not prove are asked
again with `stage="second"` and `within` (8 k', then the scan), proven against min(own k-th, within).

Filtered search (issue 15): `search(..., allowed=ids)` answers over the rows of those ids only.
At most FILTER_SCAN_ROWS matching rows are scanned exactly (float64), whatever the index. Above it, flat
indexes take FAISS candidates from the matching rows alone (gathered a block at a time), or, when they
are at least FILTER_GATHER_BELOW of the table, from all rows with k' scaled up, keeping the matching
ones; either way the certificate holds over the subset unchanged (every matching row outside the
candidates has a proxy >= D_k', and the bound's norms and probability range over all rows cover the
subset's), else the matching rows are scanned; HNSW and IVF pass FAISS an id selector (IDSelectorBitmap over HNSW's
labels, IDSelectorBatch over IVF's ids) and answer "approximate".

Thread safety: searches run concurrently under a readers-writer lock; writes are serialised by a
mutex, prepared (validated, embedded) while searches continue, and applied under the write lock,
so a search sees a batch entirely or not at all. An index is built (`add_index`) from a copy of the
rows taken under the write mutex, with no lock held, while writes go on; the ids they touch are
recorded, replayed into the new index under the write mutex, and the index installed under the
write lock (issue 12).

Persistence (issue 12): `IndexSet.state()` / `IndexSet.restore(state)` and, per index,
`MetricIndex.state()` / `restore(spec, dim, state)` are plain data (numpy arrays, dicts, the bytes of
`faiss.serialize_index`); indexes/persist.py writes and reads them with its manifest.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from core.errors import Conflict, InvalidInput, LogitsearchError, NotFound, StorageError
from core.metrics import INDEXABLE, TEMPERED
from core.validate import as_rows, check_k, check_temperature
from indexes import embed, exact, persist
from indexes.inline import WouldBlock, check_work, must_not_wait
from indexes.table import Table

IndexMetric = Literal[INDEXABLE]  # type: ignore[valid-type]  # core.metrics owns the vocabulary
Kind = Literal["flat", "hnsw", "ivf"]
How = Literal["certified", "scanned", "approximate", "unproven"]
Stage = Literal["all", "first", "second"]
Ids = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")
#: defaults reach recall@10 >= 0.95 for every metric on the dev data (tests/indexes)
DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 200, "ef_search": 128},
    "ivf": {"nlist": 256, "nprobe": 16},
}
PARAM_RANGE: dict[str, tuple[int, int]] = {
    "M": (4, 256), "ef_construction": (8, 10_000), "ef_search": (1, 10_000),
    "nlist": (1, 1 << 20), "nprobe": (1, 1 << 20),
}
#: IVF trains once this many points per list exist (FAISS warns below 39)
IVF_POINTS_PER_LIST = 39
#: HNSW is rebuilt without its tombstones once they are this share of its vectors
TOMBSTONE_FRACTION = 0.25
#: a filtered search whose filter matches at most this many rows scans them exactly, whatever the index:
#: cheap (2048 rows of d = 1000 are ~8 MB), exact, and where an HNSW graph cut by a selective filter
#: loses its neighbours
FILTER_SCAN_ROWS = 2048
#: a flat filtered search over at least this share of the rows takes FAISS's candidates from all rows
#: (k' scaled by 1 / share) and keeps the matching ones, instead of gathering the matching rows: one
#: pass over the table costs less than copying a third of it and passing over the copy
FILTER_GATHER_BELOW = 0.3
_FAISS_METRIC = {embed.L2: faiss.METRIC_L2, embed.IP: faiss.METRIC_INNER_PRODUCT}


def _t_text(t: float) -> str:
    return repr(float(t)).removesuffix(".0")


@dataclass(frozen=True)
class IndexSpec:
    """What to index: a metric, its temperature (tri/ced only), the kind and its parameters.

    Parameters not given are filled from DEFAULT_PARAMS; bad values raise InvalidInput naming
    the field (e.g. "params.M").
    """

    metric: IndexMetric
    temperature: float | None = None
    kind: Kind = "flat"
    params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in INDEXABLE:
            raise InvalidInput("metric", f"unknown index metric {self.metric!r}; known: {', '.join(INDEXABLE)}")
        if self.kind not in KINDS:
            raise InvalidInput("kind", f"unknown index kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.metric in TEMPERED:
            if self.temperature is None:
                raise InvalidInput("temperature", f"required for {self.metric}")
            object.__setattr__(self, "temperature", check_temperature(self.temperature))
        elif self.temperature is not None:
            raise InvalidInput("temperature", f"{self.metric} is computed over raw logits: leave it out")
        if not isinstance(self.params, Mapping):
            raise InvalidInput("params", f"must be an object of integers, got {type(self.params).__name__}")
        known = DEFAULT_PARAMS[self.kind]
        params = dict(known)
        for name, value in self.params.items():
            if name not in known:
                names = ", ".join(known) or "none"
                raise InvalidInput(f"params.{name}", f"unknown parameter for {self.kind}; known: {names}")
            lo, hi = PARAM_RANGE[name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise InvalidInput(f"params.{name}", f"must be a whole number in [{lo}, {hi}], got {value!r}")
            params[name] = int(value)
        if self.kind == "ivf" and params["nprobe"] > params["nlist"]:
            raise InvalidInput("params.nprobe", f"must be <= nlist ({params['nlist']}), got {params['nprobe']}")
        object.__setattr__(self, "params", MappingProxyType(params))

    def __hash__(self) -> int:
        return hash((self.key, tuple(sorted(self.params.items()))))

    @property
    def key(self) -> str:
        """Stable, URL-safe id: "euc-flat", "tri-t10-flat", "ced-t0.5-hnsw"."""
        t = "" if self.temperature is None else f"-t{_t_text(self.temperature)}"
        return f"{self.metric}{t}-{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "temperature": self.temperature, "kind": self.kind,
                "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Any) -> IndexSpec:
        if not isinstance(d, Mapping):
            raise InvalidInput("spec", f"must be an object, got {type(d).__name__}")
        extra = set(d) - {"metric", "temperature", "kind", "params"}
        if extra:
            raise InvalidInput(f"spec.{min(extra)}", "unknown field; known: metric, temperature, kind, params")
        if "metric" not in d:
            raise InvalidInput("metric", "required")
        return cls(d["metric"], d.get("temperature"), d.get("kind", "flat"), d.get("params") or {})


@dataclass(frozen=True)
class Hits:
    """One query's answer, nearest first, trimmed (no -1 ids, no inf padding).

    distances are in the metric's own units, smaller is nearer, always exact float64 values:
    squared L2 (euc), 1 - cos (cos), TRI eq. 5 (tri), CED in nats (ced). how: "certified" (flat,
    exactness proved from the candidates), "scanned" (exact pass over all rows), "approximate";
    "unproven" only from `IndexSet.search(..., stage="first")`: the top k of the candidates, for the
    caller to judge by `bound`.
    """

    ids: Ids
    distances: F64
    how: How
    #: with a filter: how many stored rows it matched (the rows searched)
    matched: int | None = None
    #: exact answers only: a proven lower bound on the exact distance of every row searched and not
    #: among the candidates (exact.lower_bound; inf after a scan, when no row was left out); None for
    #: approximate answers. A merge judges it against its own k-th distance (`certifies`).
    bound: float | None = None


def certifies(bound: Any, kth: Any) -> npt.NDArray[np.bool_]:
    """Whether `bound` (Hits.bound: no row left out of a top k is nearer) proves that top k exact
    within a merged answer whose k-th distance is `kth` (inf when it has fewer than k).

    Strict: a row left out at exactly `kth` could tie with the k-th and win by its smaller id. A
    bound of inf (nothing was left out) proves any top k; None (approximate) proves none.
    """
    if bound is None:
        return np.zeros(np.shape(kth), dtype=bool)
    b = np.asarray(bound, dtype=np.float64)
    return np.asarray(np.isposinf(b) | (b > np.asarray(kth, dtype=np.float64)))


class RWLock:
    """Many readers or one writer; a waiting writer holds off new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Inside indexes.inline.inline(), WouldBlock instead of waiting for a writer."""
        with self._cond:
            while self._writer or self._waiting:
                if must_not_wait():
                    raise WouldBlock("a write is being applied")
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class FaissError(LogitsearchError):
    """FAISS refused an operation (out of memory, a broken index): a server-side failure."""


#: FAISS 1.15 computes flat L2 / inner products by BLAS (|x|^2 + |y|^2 - 2 x.y) when queries x width
#: >= distance_compute_blas_threshold (default 128,000), else row by row. The centred embeddings keep
#: the BLAS form accurate (at t = 1000 the plain sqrt-softmax loses almost every neighbour with it,
#: the centred one none) and the certificate's margin bounds the float32 error of either form, so
#: the choice is speed only: BLAS from this many queries on, set per search from the index's width
#: (`_search_setup`). Measured with one thread, BLAS / row by row: 1 query 4x slower (6.7 vs 1.7 ms
#: at N = 20k, d = 384; 66.6 vs 20.6 ms at N = 100k, d = 1000), 4 queries even, 16 queries 2.8-3.7x
#: faster. A process-wide FAISS setting; indexes/ owns FAISS here (a race between searches of
#: different widths can only pick the slower form for one call).
_BLAS_FROM_QUERIES = 4

#: OpenMP threads FAISS may use (its default: all cores)
_OMP_THREADS = faiss.omp_get_max_threads()
#: below this many queries FAISS runs one thread: one query against 100k x 1000 took 49 ms with one
#: OpenMP thread and 240 ms with two on the shared 2-core test machine (benchmarks/index_bench.py)
_SMALL_BATCH = 20


#: the OpenMP thread count this thread last gave FAISS
_omp_setting = threading.local()


def _faiss_call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if what != "search":
        faiss.omp_set_num_threads(_OMP_THREADS)
        _omp_setting.n = _OMP_THREADS
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        raise FaissError(f"FAISS failed to {what}: {str(exc).splitlines()[0][:200]}") from exc


def _search_setup(m: int, width: int, *, per_query: bool = False) -> None:
    """FAISS's thread count and BLAS switch for a search of m queries of this width. `per_query`:
    the index gives each query to one thread (HNSW), so two queries already use two threads."""
    # OpenMP's thread count is per calling thread, so concurrent searches do not disturb each other;
    # remembered per thread, since the SWIG call itself showed in single-query profiles
    n = 1 if m < (2 if per_query else _SMALL_BATCH) else _OMP_THREADS
    if getattr(_omp_setting, "n", None) != n:
        faiss.omp_set_num_threads(n)
        _omp_setting.n = n
    threshold = _BLAS_FROM_QUERIES * width
    if faiss.cvar.distance_compute_blas_threshold != threshold:
        faiss.cvar.distance_compute_blas_threshold = threshold


class MetricIndex(ABC):
    """One index of an IndexSet: the spec, its embedding statistics, and (hnsw/ivf) a FAISS index."""

    def __init__(self, spec: IndexSpec, dim: int) -> None:
        self.spec = spec
        self.dim = dim
        self.width = embed.width(spec.metric, dim)
        self.space = embed.SPACE[spec.metric]
        self.stats = embed.Stats()

    @property
    def column(self) -> str | None:
        """The table column holding this index's embedding (flat only; euc uses the rows)."""
        return None

    @abstractmethod
    def build(self, table: Rows, progress: Callable[[float], None] | None) -> F32 | None:
        """Embed every row of the table; returns the column for flat indexes."""

    def embed(self, X: F32) -> tuple[F32 | None, embed.Stats]:
        """(what this index stores for raw rows X, their certificate statistics): the metric's
        embedding (embed.rows); a flat index stores less (FlatIndex)."""
        return embed.rows(self.spec.metric, self.spec.temperature, X)

    def upsert(self, ids: Ids, E: F32 | None, stats: embed.Stats) -> None:
        self.stats = self.stats.merge(stats)

    def remove(self, ids: Ids) -> None:
        return None

    def stale(self, n: int) -> bool:
        """True when the index should be rebuilt from the table (tombstones, or IVF ready to train)."""
        return False

    def ready(self) -> bool:
        """False while the index cannot answer (IVF before training): searches scan instead."""
        return True

    def work(self, m: int, n: int, k: int) -> float:
        """Estimated multiply-adds of its candidates for m queries among n rows (indexes.inline):
        a flat index compares every row."""
        return float(m) * n * self.width

    @abstractmethod
    def candidates(self, V: F32, kp: int, table: Table, rows: Ids | None = None) -> tuple[F64, Ids]:
        """FAISS's kp best (values, ids or table positions) per embedded query, -1 padded; with `rows`
        (table positions), among those rows only."""

    def state(self, *, lean: bool = False) -> dict[str, Any]:
        """This index as plain data (copies) for `restore`: "stats", the certificate's statistics
        [norm, pmin, pmax]; hnsw and ivf add "faiss" (faiss.serialize_index's uint8 array) and
        "radius" (the CED lift's), hnsw "labels" (int64 id of each HNSW label) and "alive" (bool).
        A flat index is a pure function of the table's rows, so its state is the statistics alone.
        `lean` (a shard's own snapshot, issue 16): hnsw keeps its graph without the vectors ("graph")
        plus the vectors of its dead labels ("tombs"); the live ones are embedded again from the table
        at restore, so the snapshot holds no second copy of them."""
        st = self.stats
        return {"stats": [st.norm, st.pmin, st.pmax]}

    @classmethod
    def restore(cls, spec: IndexSpec, dim: int, state: Mapping[str, Any], *, id_offset: int = 0) -> MetricIndex:
        """The index `state()` described, every id shifted by `id_offset`; StorageError naming the key
        when the state is damaged. A state without "stats" (snapshots written before they were kept)
        leaves them to the build. A flat index gets its table column from `IndexSet.restore`."""
        ix = cls(spec, dim)
        raw = state.get("stats")
        if raw is not None:
            try:
                norm, pmin, pmax = (float(v) for v in raw)
            except (TypeError, ValueError) as exc:
                raise StorageError(f"the state of {spec.key} is damaged (stats: {exc})") from None
            ix.stats = embed.Stats(norm, pmin, pmax)
        ix._restore(state, id_offset)
        return ix

    def _restore(self, state: Mapping[str, Any], id_offset: int) -> None:
        return None

    def holds(self, ids: Ids) -> bool:
        """True when the index holds exactly the table ids `ids` (a restored index must)."""
        return True


class Rows:
    """What a build reads (`IndexSet.add_index`): the set's live table, read a block at a time, until
    the first write during the build; that write first copies the table here (`detach`), so a build
    costs no second copy of the rows unless writes go on meanwhile (issue 16). Blocks are copied under
    a lock, so a write never changes a row a build is embedding."""

    def __init__(self, table: Table) -> None:
        self._table = table
        self._own = False
        self._lock = threading.Lock()
        self.dim = table.dim
        self.n = table.n

    @property
    def table(self) -> Table:
        """The rows the build saw: the live table if nothing was written meanwhile, else the copy."""
        return self._table

    def detach(self) -> None:
        """Called by a writer (holding the set's write mutex) before it changes the live table."""
        with self._lock:
            if not self._own:
                self._table, self._own = self._table.snapshot(), True

    def block(self, s: int, e: int) -> tuple[Ids, F32]:
        with self._lock:
            return self._table.ids[s:e].copy(), self._table.rows[s:e].copy()

    def take(self, pos: Ids) -> F32:
        with self._lock:
            return self._table.rows[pos]


def _embed_table(ix: MetricIndex, table: Rows, progress: Callable[[float], None] | None,
                 sink: Callable[[Ids, int, F32 | None], None]) -> embed.Stats:
    """Embed the rows a block at a time (`ix.embed`), handing each block's ids, start and embedding
    to `sink`; returns their statistics."""
    n = table.n
    step = max(1, (1 << 22) // max(table.dim, 1))
    stats = embed.Stats()
    for s in range(0, n, step):
        ids, X = table.block(s, s + step)
        E, st = ix.embed(X)
        sink(ids, s, E)
        stats = stats.merge(st)
        if progress is not None:
            progress(min(1.0, (s + ids.size) / n))
    if progress is not None:
        progress(1.0)
    return stats


def _scaled_ip_knn(V: F32, X: F32, scale: F32, kp: int, rows: Ids | None = None) -> tuple[F32, Ids]:
    """The kp largest (V[r] . X[i]) * scale[i] per query r over the rows of X (or `rows`, positions in
    X): (values, positions), best first, padded with (-inf, -1). Flat cosine over the raw table with
    scale = 1/|x|, so no unit-vector copy of the table exists (issue 16). float32 BLAS, a block of rows
    at a time (no copy of the table's rows; `rows` gathers GATHER_BYTES at a time): the products' error
    is the classic gamma_w bound of any float32 dot product, so the certificate holds unchanged."""
    m, n = V.shape[0], X.shape[0] if rows is None else rows.size
    step = max(kp, min(exact.GATHER_BYTES // (4 * max(X.shape[1], 1)), exact.SCAN_BYTES // (4 * max(m, 1))))
    best_v = np.full((m, 0), -np.inf, dtype=np.float32)
    best_p = np.empty((m, 0), dtype=np.int64)
    VT = np.ascontiguousarray(V.T)
    for s in range(0, n, step):
        pos = np.arange(s, min(n, s + step)) if rows is None else rows[s : s + step]
        B = X[s : s + step] if rows is None else X[pos]
        S = (B @ VT).T * scale[pos].reshape(1, -1)  # (m, block)
        vals, at = np.hstack([best_v, S]), np.hstack([best_p, np.broadcast_to(pos, S.shape)])
        if vals.shape[1] > kp:
            part = np.argpartition(-vals, kp - 1, axis=1)[:, :kp]
            vals, at = np.take_along_axis(vals, part, axis=1), np.take_along_axis(at, part, axis=1)
        best_v, best_p = vals, at
    order = np.argsort(-best_v, axis=1, kind="stable")
    best_v, best_p = np.take_along_axis(best_v, order, axis=1), np.take_along_axis(best_p, order, axis=1)
    if best_v.shape[1] < kp:
        pad = kp - best_v.shape[1]
        best_v = np.hstack([best_v, np.full((m, pad), -np.inf, dtype=np.float32)])
        best_p = np.hstack([best_p, np.full((m, pad), -1, dtype=np.int64)])
    return best_v.astype(np.float32, copy=False), best_p


class FlatIndex(MetricIndex):
    """Exact: FAISS scans the metric's embedding in the table (a column that moves with its rows). euc
    scans the rows themselves and cos the rows scaled by a column of 1/|x| (`_scaled_ip_knn`): only
    tri and ced, whose embeddings truly differ from the rows, add a copy of the table (issue 16)."""

    @property
    def column(self) -> str | None:
        return None if self.spec.metric == "euc" else self.spec.key

    def embed(self, X: F32) -> tuple[F32 | None, embed.Stats]:
        if self.spec.metric == "euc":
            sq = np.einsum("ij,ij->i", X, X, dtype=np.float64) if X.shape[0] else np.zeros(1)
            return None, embed.Stats(norm=float(np.sqrt(sq.max())))
        if self.spec.metric == "cos":
            sq = np.einsum("ij,ij->i", X, X, dtype=np.float64)
            inv = np.divide(1.0, np.sqrt(sq), out=np.zeros_like(sq), where=sq > 0)
            return inv.astype(np.float32).reshape(-1, 1), embed.Stats(norm=1.0)
        return super().embed(X)

    def build(self, table: Rows, progress: Callable[[float], None] | None) -> F32 | None:
        width = 1 if self.spec.metric == "cos" else self.width
        out = np.empty((table.n, width), dtype=np.float32) if self.column else None

        def sink(ids: Ids, s: int, E: F32 | None) -> None:
            if out is not None and E is not None:
                out[s : s + E.shape[0]] = E

        self.stats = _embed_table(self, table, progress, sink)
        return out

    def vectors(self, table: Table) -> F32:
        return table.rows if self.column is None or self.spec.metric == "cos" else table.column(self.column)

    def candidates(self, V: F32, kp: int, table: Table, rows: Ids | None = None) -> tuple[F64, Ids]:
        _search_setup(*V.shape)
        vectors, metric = self.vectors(table), _FAISS_METRIC[self.space]
        if self.spec.metric == "cos":
            assert self.column is not None
            D32, pos = _scaled_ip_knn(V, vectors, table.column(self.column).ravel(), kp, rows)
            return D32.astype(np.float64), pos
        if rows is None:
            D, pos = _faiss_call("search", faiss.knn, V, vectors, kp, metric)
            return D.astype(np.float64), pos
        # the matching rows a block at a time: each block's kp best, then the kp best of those; a row
        # left out has a value no better than its block's kp-th, so no better than the overall kp-th
        step = max(kp, exact.GATHER_BYTES // (4 * vectors.shape[1]))
        Ds, Ps = [], []
        for s in range(0, rows.size, step):
            block = rows[s : s + step]
            D, local = _faiss_call("search", faiss.knn, V, np.ascontiguousarray(vectors[block]),
                                   min(kp, block.size), metric)
            Ds.append(D.astype(np.float64))
            Ps.append(np.where(local >= 0, block[np.maximum(local, 0)], -1))
        D, pos = np.hstack(Ds), np.hstack(Ps)
        if len(Ds) > 1:
            order = np.argsort(D if metric == faiss.METRIC_L2 else -D, axis=1, kind="stable")[:, :kp]
            D, pos = np.take_along_axis(D, order, axis=1), np.take_along_axis(pos, order, axis=1)
        return D, pos


class _FaissIndex(MetricIndex):
    """An approximate FAISS index. CED's maximum-inner-product search becomes an L2 search by one
    more coordinate: rows [y, sqrt(R^2 - |y|^2)], queries [u, 0], so |u - y'|^2 = |u|^2 + R^2 - 2 u.y
    orders rows exactly as -u.y does (Bachrach et al. 2014); HNSW and IVF find L2 neighbours far
    better than inner-product ones (recall@10 0.44-0.59 -> >= 0.95 on the MiniLM dev data). R is
    1.25 x the largest row norm at build time; a row beyond it makes the index stale (rebuilt)."""

    HEADROOM = 1.25
    #: the FAISS index (set by the subclass)
    index: Any

    def __init__(self, spec: IndexSpec, dim: int) -> None:
        super().__init__(spec, dim)
        self.mips = spec.metric == "ced" and spec.kind == "hnsw"
        if self.mips:
            self.space = embed.L2
        self.fwidth = self.width + int(self.mips)
        self.radius = 0.0
        self.overflow = False

    def _plan(self, table: Rows) -> None:
        if self.mips:
            self.radius = self.HEADROOM * _embed_table(self, table, None, lambda ids, s, E: None).norm

    def _fit(self, E: F32) -> F32:
        return embed.lift(E, self.radius) if self.mips else E

    def _query(self, V: F32) -> F32:
        return embed.lift(V, None) if self.mips else V

    def upsert(self, ids: Ids, E: F32 | None, stats: embed.Stats) -> None:
        super().upsert(ids, E, stats)
        if self.mips and stats.norm > self.radius:
            self.overflow = True

    def state(self, *, lean: bool = False) -> dict[str, Any]:
        return {**super().state(), "radius": self.radius, **self._index_state(lean)}

    def _index_state(self, lean: bool) -> dict[str, Any]:
        """The FAISS index's part of `state`: the whole index, serialised."""
        return {"faiss": faiss.serialize_index(self.index)}

    def _restored_index(self, state: Mapping[str, Any], field: str = "faiss", flags: int = 0) -> Any:
        key = self.spec.key
        try:
            self.radius = float(state["radius"])
            data = state[field]
            blob = (np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview))
                    else np.ascontiguousarray(data, dtype=np.uint8))
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"the state of {key} is damaged (no {exc})" if isinstance(exc, KeyError)
                               else f"the state of {key} is damaged ({exc})") from None
        try:
            if flags:
                reader = faiss.VectorIOReader()
                faiss.copy_array_to_vector(blob, reader.data)
                index = faiss.read_index(reader, flags)
            else:
                index = faiss.deserialize_index(blob)
        except RuntimeError:
            raise StorageError(f"cannot read the FAISS index of {key}") from None
        if index.d != self.fwidth:
            raise StorageError(f"the FAISS index of {key} has dimension {index.d}, expected {self.fwidth}")
        return index


class HnswIndex(_FaissIndex):
    """FAISS HNSW{M}; labels are HNSW's own sequence numbers, mapped to ids, with tombstones."""

    def __init__(self, spec: IndexSpec, dim: int) -> None:
        super().__init__(spec, dim)
        p = spec.params
        self.index = _faiss_call("create an index", faiss.index_factory, self.fwidth, f"HNSW{p['M']}",
                                 _FAISS_METRIC[self.space])
        self.index.hnsw.efConstruction = p["ef_construction"]
        self.index.hnsw.efSearch = p["ef_search"]
        self.label_ids = np.empty(0, dtype=np.int64)
        self.alive = np.empty(0, dtype=bool)
        self.label_of: dict[int, int] = {}
        self.dead = 0
        self._selector: Any = None
        #: a lean restore's dead-label vectors until `refill` gives the graph its storage
        self._tombs: Any = None

    def build(self, table: Rows, progress: Callable[[float], None] | None) -> F32 | None:
        self._plan(table)
        self.stats = _embed_table(self, table, progress, lambda ids, s, E: self._add(ids, _some(E)))
        return None

    def _add(self, ids: Ids, E: F32) -> None:
        start = self.index.ntotal
        _faiss_call("add vectors", self.index.add, self._fit(E))
        labels = np.arange(start, start + len(ids))
        self.label_ids = np.concatenate([self.label_ids[:start], ids])
        self.alive = np.concatenate([self.alive[:start], np.ones(len(ids), dtype=bool)])
        self.label_of.update(zip(ids.tolist(), labels.tolist()))
        self._selector = None

    def upsert(self, ids: Ids, E: F32 | None, stats: embed.Stats) -> None:
        super().upsert(ids, E, stats)
        self.remove(ids)
        self._add(ids, _some(E))

    def remove(self, ids: Ids) -> None:
        gone = [self.label_of.pop(i) for i in ids.tolist() if i in self.label_of]
        if gone:
            self.alive[gone] = False
            self.dead += len(gone)
            self._selector = None

    def stale(self, n: int) -> bool:
        return self.overflow or self.dead > max(16, TOMBSTONE_FRACTION * self.index.ntotal)

    def work(self, m: int, n: int, k: int) -> float:
        # a search visits ~ef nodes and compares each node's ~2M neighbours on the bottom layer
        p = self.spec.params
        return float(m) * max(p["ef_search"], 2 * k) * 2 * p["M"] * self.fwidth

    def state(self, *, lean: bool = False) -> dict[str, Any]:
        n = self.index.ntotal
        return {**super().state(lean=lean), "labels": self.label_ids[:n].copy(), "alive": self.alive[:n].copy()}

    def _index_state(self, lean: bool) -> dict[str, Any]:
        if not lean:
            return super()._index_state(lean)
        n = self.index.ntotal
        writer = faiss.VectorIOWriter()
        _faiss_call("save the graph", faiss.write_index, self.index, writer, faiss.IO_FLAG_SKIP_STORAGE)
        dead = np.flatnonzero(~self.alive[:n])
        tombs = (self.index.storage.reconstruct_batch(dead) if dead.size
                 else np.empty((0, self.fwidth), dtype=np.float32))
        return {"graph": faiss.vector_to_array(writer.data), "tombs": np.asarray(tombs, dtype=np.float32)}

    def refill(self, table: Table) -> None:
        """Give a graph restored without its vectors ("graph") its storage: each live label's row of
        `table` embedded again, each dead label's saved vector ("tombs", in label order). A no-op for
        an index that has its vectors."""
        tombs, self._tombs = self._tombs, None
        if tombs is None:
            return
        n, dead = self.index.ntotal, np.flatnonzero(~self.alive)
        if not (isinstance(tombs, np.ndarray) and tombs.dtype == np.float32 and tombs.shape == (dead.size, self.fwidth)):
            got = f"{tombs.dtype} {tombs.shape}" if isinstance(tombs, np.ndarray) else type(tombs).__name__
            raise StorageError(f"the state of {self.spec.key} is damaged (tombs: {got}, expected float32 "
                               f"({dead.size}, {self.fwidth}))")
        pos = table.positions(self.label_ids)
        if np.any(pos[self.alive] < 0):
            raise StorageError(f"{self.spec.key} holds ids the table does not")
        storage = faiss.IndexFlat(self.fwidth, _FAISS_METRIC[self.space])
        step = max(1, (1 << 22) // max(self.dim, 1))
        for s in range(0, n, step):  # label order, a block at a time: no second full copy
            alive = self.alive[s : s + step]
            V = np.empty((alive.size, self.fwidth), dtype=np.float32)
            if alive.any():
                E, _ = self.embed(table.rows[pos[s : s + step][alive]])
                V[alive] = self._fit(_some(E))
            if not alive.all():
                V[~alive] = tombs[np.searchsorted(dead, s + np.flatnonzero(~alive))]
            storage.add(V)
        self.index.storage = storage
        self.index.own_fields = True
        storage.this.disown()  # the HNSW index deletes its storage

    def _restore(self, state: Mapping[str, Any], id_offset: int) -> None:
        lean = "graph" in state
        index = self._restored_index(state, "graph", faiss.IO_FLAG_SKIP_STORAGE) if lean else self._restored_index(state)
        n = index.ntotal
        labels = self._restored_array(state, "labels", np.int64, n)
        alive = self._restored_array(state, "alive", np.bool_, n)
        self.index = index
        self.index.hnsw.efSearch = self.spec.params["ef_search"]
        self.label_ids = labels + id_offset
        self.alive = alive.copy()
        live = np.flatnonzero(self.alive)
        self.label_of = dict(zip(self.label_ids[live].tolist(), live.tolist()))
        self.dead = n - live.size
        if lean:
            self._tombs = state.get("tombs")
            if self._tombs is None:
                raise StorageError(f"the state of {self.spec.key} is damaged (a graph without its tombs)")

    def _restored_array(self, state: Mapping[str, Any], name: str, dtype: Any, n: int) -> npt.NDArray[Any]:
        a = state.get(name)
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != (n,):
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise StorageError(f"the state of {self.spec.key} is damaged ({name}: {got}, expected "
                               f"{np.dtype(dtype)} ({n},))")
        return a

    def holds(self, ids: Ids) -> bool:
        live = self.label_ids[self.alive]
        return live.size == ids.size and bool(np.array_equal(np.sort(live), np.sort(ids)))

    def candidates(self, V: F32, kp: int, table: Table, rows: Ids | None = None) -> tuple[F64, Ids]:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.spec.params["ef_search"], kp)
        if rows is not None:
            # the allowed labels as a bitmap (labels are dense 0..ntotal; live ones only, so it also
            # hides the tombstones); `bits` must outlive the search
            labels = np.fromiter(map(self.label_of.get, table.ids[rows].tolist(), itertools.repeat(-1)),
                                 dtype=np.int64, count=rows.size)
            mask = np.zeros(self.index.ntotal, dtype=bool)
            mask[labels[labels >= 0]] = True
            bits = np.packbits(mask, bitorder="little")
            allowed = (faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits)  # kept alive to the end
            params.sel = allowed[0]
        elif self.dead:
            selector = self._selector
            if selector is None:
                bits = np.packbits(self.alive, bitorder="little")
                selector = self._selector = (faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits)
            params.sel = selector[0]
        _search_setup(*V.shape, per_query=True)
        D, labels = _faiss_call("search", self.index.search, self._query(V), kp, params=params)
        ids = np.where(labels >= 0, self.label_ids[np.maximum(labels, 0)], -1)
        return D.astype(np.float64), ids


class IvfIndex(_FaissIndex):
    """FAISS IVF{nlist},Flat over the ids themselves; trained once enough points exist."""

    def __init__(self, spec: IndexSpec, dim: int) -> None:
        super().__init__(spec, dim)
        self.index = _faiss_call("create an index", faiss.index_factory, self.fwidth,
                                 f"IVF{spec.params['nlist']},Flat", _FAISS_METRIC[self.space])
        self.index.nprobe = spec.params["nprobe"]

    def build(self, table: Rows, progress: Callable[[float], None] | None) -> F32 | None:
        nlist = self.spec.params["nlist"]
        if table.n < IVF_POINTS_PER_LIST * nlist:
            return None
        self._plan(table)
        # k-means on at most 256 points per list (FAISS samples the same way)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(table.n, size=min(table.n, 256 * nlist), replace=False))
        T, _ = embed.rows(self.spec.metric, self.spec.temperature, table.take(sample))
        _faiss_call("train", self.index.train, self._fit(T))
        self.stats = _embed_table(self, table, progress,
                                  lambda ids, s, E: _faiss_call("add vectors", self.index.add_with_ids,
                                                                self._fit(_some(E)), ids))
        return None

    def ready(self) -> bool:
        return bool(self.index.is_trained)

    def work(self, m: int, n: int, k: int) -> float:
        # the query against every centroid, then the rows of its nprobe lists
        p = self.spec.params
        return float(m) * (p["nlist"] + n * min(1.0, p["nprobe"] / p["nlist"])) * self.fwidth

    def _restore(self, state: Mapping[str, Any], id_offset: int) -> None:
        self.index = self._restored_index(state)
        self.index.nprobe = self.spec.params["nprobe"]
        if id_offset:
            _shift_ivf_ids(self.index, id_offset)

    def holds(self, ids: Ids) -> bool:
        return not self.ready() or int(self.index.ntotal) == ids.size

    def stale(self, n: int) -> bool:
        return self.overflow or (not self.ready() and n >= IVF_POINTS_PER_LIST * self.spec.params["nlist"])

    def upsert(self, ids: Ids, E: F32 | None, stats: embed.Stats) -> None:
        if self.ready():
            super().upsert(ids, E, stats)
            self.remove(ids)
            _faiss_call("add vectors", self.index.add_with_ids, self._fit(_some(E)), ids)

    def remove(self, ids: Ids) -> None:
        if self.ready():
            _faiss_call("remove vectors", self.index.remove_ids, np.ascontiguousarray(ids, dtype=np.int64))

    def candidates(self, V: F32, kp: int, table: Table, rows: Ids | None = None) -> tuple[F64, Ids]:
        _search_setup(*V.shape)
        if rows is None:
            D, ids = _faiss_call("search", self.index.search, self._query(V), kp)
            return D.astype(np.float64), ids
        allowed = np.ascontiguousarray(table.ids[rows], dtype=np.int64)
        params = faiss.SearchParametersIVF()
        params.nprobe = self.spec.params["nprobe"]  # parameters replace the index's own nprobe
        params.sel = selector = faiss.IDSelectorBatch(allowed.size, faiss.swig_ptr(allowed))
        D, ids = _faiss_call("search", self.index.search, self._query(V), kp, params=params)
        del selector
        return D.astype(np.float64), ids


def _shift_ivf_ids(index: Any, offset: int) -> None:
    """Add `offset` to every id stored in an IVF index's inverted lists, in place (order kept)."""
    inv = faiss.extract_index_ivf(index).invlists
    if inv is None:
        raise StorageError("an IVF index without inverted lists")
    for lst in range(inv.nlist):
        n = inv.list_size(lst)
        if n:
            ids = faiss.rev_swig_ptr(inv.get_ids(lst), n).copy() + offset
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size).copy()
            inv.update_entries(lst, 0, n, faiss.swig_ptr(ids), faiss.swig_ptr(codes))


def _some(E: F32 | None) -> F32:
    """The embedding an approximate index always has (only flat euc embeds to None)."""
    assert E is not None
    return E


_KIND_CLASS: dict[str, type[MetricIndex]] = {"flat": FlatIndex, "hnsw": HnswIndex, "ivf": IvfIndex}


def _as_ids(ids: Any, field: str = "ids") -> Ids:
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise InvalidInput(field, f"must be a 1-D list of integers, got shape {a.shape}")
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InvalidInput(field, f"must be integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        raise InvalidInput(field, "must fit in a signed 64-bit integer")
    a = a.astype(np.int64)
    if a.min() < 0:
        raise InvalidInput(field, f"must be >= 0, got {int(a.min())}")
    return a


#: an approximate index asked for at least this share of the rows scans them instead: the graph
#: walk would visit most rows anyway, and may not reach them all
APPROXIMATE_MAX_SHARE = 0.5


def _wants_most(metric: str, k: int, n: int) -> bool:
    return (2 if metric == "tri" else 1) * k >= APPROXIMATE_MAX_SHARE * n


def _kprime(k: int) -> int:
    """FAISS candidates a flat search re-ranks for k answers. FAISS's cost hardly depends on k'
    (one pass over the vectors either way), while at t = 1 on 100k ImageNet rows k' = 40 certified
    51 % of the answers and k' = 200 all of them; the float64 re-rank (one exp per element, ~0.2 s
    for 100 queries x 320 rows at d = 1000) is what a larger k' costs (benchmarks/index_bench.py)."""
    return max(20 * k, 200)


@dataclass
class _Build:
    """An index being built by `IndexSet.add_index`: the rows it reads and the ids written since it
    began (every write first detaches the rows, so `touched` holds every id whose row differs from
    what the build read)."""

    rows: Rows
    touched: list[Ids] = field(default_factory=list)

    def before_write(self) -> None:
        self.rows.detach()


class IndexSet:
    """All indexes of one collection over one shared in-memory table of float32 vectors (id -> row)."""

    def __init__(self, dim: int, specs: Sequence[IndexSpec] = ()) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidInput("dim", f"must be a whole number >= 1, got {dim!r}")
        self.dim = int(dim)
        self.last_seq = 0
        self._table = Table(self.dim)
        self._indexes: dict[str, MetricIndex] = {}
        self._rw = RWLock()
        self._writing = threading.RLock()
        #: key -> the build of an index under way in add_index
        self._building: dict[str, _Build] = {}
        for spec in specs:
            self.add_index(spec)

    # --- reading -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Live vectors."""
        return self._table.n

    def specs(self) -> list[IndexSpec]:
        with self._rw.read():
            return [ix.spec for ix in self._indexes.values()]

    def contains(self, ids: Any) -> npt.NDArray[np.bool_]:
        a = _as_ids(ids)
        with self._rw.read():
            return np.asarray(self._table.positions(a) >= 0)

    def vectors(self, ids: Any) -> F32:
        """The stored float32 rows of `ids`, in order; NotFound naming the first missing id."""
        a = _as_ids(ids)
        with self._rw.read():
            pos = self._table.positions(a)
            if np.any(pos < 0):
                raise NotFound(f"point {int(a[np.argmin(pos >= 0)])} not found")
            return self._table.rows[pos].copy()

    def all_ids(self) -> Ids:
        with self._rw.read():
            return self._table.ids.copy()

    def matrix(self) -> tuple[Ids, F32]:
        """(ids, rows): copies of the live ids and their float32 rows, in table order."""
        with self._rw.read():
            return self._table.ids.copy(), self._table.rows.copy()

    # --- writing -------------------------------------------------------------------------------

    def reserve(self, n: int) -> None:
        """Room for `n` more rows: a write of known size (a bulk ingest, a load) then grows the table
        and its columns once instead of geometrically, each growth holding the old and new arrays."""
        with self._writing:
            for build in self._building.values():
                build.before_write()
            with self._rw.write():
                self._table.reserve(self._table.n + max(0, int(n)))

    def upsert(self, ids: Any, X: Any, seq: int) -> None:
        """Insert or replace rows; duplicates within the call: the last wins. All or nothing."""
        with self._writing:
            a = _as_ids(ids)
            A = as_rows(X, "vectors", self.dim)
            if A.shape[0] != a.size:
                raise InvalidInput("vectors", f"{A.shape[0]} rows for {a.size} ids")
            with np.errstate(over="ignore"):
                X32 = np.array(A, dtype=np.float32)
            if A.dtype != np.float32 and not np.isfinite(X32).all():
                raise InvalidInput("vectors", "values exceed the float32 range (about 3.4e38)")
            seq = self._check_seq(seq)
            last = a.size - 1 - np.unique(a[::-1], return_index=True)[1]
            if last.size != a.size:
                a, X32 = a[last], X32[last]
            prepared = {key: ix.embed(X32) for key, ix in self._indexes.items()}
            for build in self._building.values():
                build.before_write()
            with self._rw.write():
                cols = {ix.column: prepared[key][0] for key, ix in self._indexes.items() if ix.column}
                self._table.upsert(a, X32, cols)
                for key, ix in self._indexes.items():
                    ix.upsert(a, *prepared[key])
                self.last_seq = seq
                for build in self._building.values():
                    build.touched.append(a)
            self._maintain()

    def remove(self, ids: Any, seq: int) -> int:
        """Remove ids (unknown ones are ignored); returns how many existed."""
        with self._writing:
            a = np.unique(_as_ids(ids))
            seq = self._check_seq(seq)
            for build in self._building.values():
                build.before_write()
            with self._rw.write():
                present = a[self._table.positions(a) >= 0]
                self._table.remove(present)
                for ix in self._indexes.values():
                    ix.remove(present)
                self.last_seq = seq
                for build in self._building.values():
                    build.touched.append(present)
            self._maintain()
            return int(present.size)

    @staticmethod
    def _check_seq(seq: Any) -> int:
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)):
            raise InvalidInput("seq", f"must be an integer, got {seq!r}")
        return int(seq)

    def _maintain(self) -> None:
        """Rebuild stale indexes (HNSW tombstones, IVF ready to train) without blocking searches."""
        for key, ix in list(self._indexes.items()):
            if ix.stale(self._table.n):
                with self._rw.read():
                    fresh = _KIND_CLASS[ix.spec.kind](ix.spec, self.dim)
                    fresh.build(Rows(self._table), None)  # no write while the read lock is held
                with self._rw.write():
                    self._indexes[key] = fresh
        if self._table.n == 0:
            with self._rw.write():
                self._table.compact()

    def add_index(self, spec: IndexSpec, progress: Callable[[float], None] | None = None) -> None:
        """Build an index over the rows (progress 0..1, called with no lock held) and install it.

        Writes and searches go on during the build: it reads the live rows a block at a time, and the
        first write meanwhile copies them for it (`Rows`); the ids written meanwhile are recorded, replayed into the new index under the
        write mutex (searches continue) and the index is installed under the write lock, so it then
        answers over exactly the rows the set holds. Conflict if the key exists or is being built,
        or if `drop_index` stopped this build (then nothing is installed).
        """
        if not isinstance(spec, IndexSpec):
            spec = IndexSpec.from_dict(spec)
        key = spec.key
        ix = _KIND_CLASS[spec.kind](spec, self.dim)
        with self._writing:
            if key in self._indexes:
                raise Conflict(f"index {key} exists already")
            if key in self._building:
                raise Conflict(f"index {key} is being built already")
            rows = Rows(self._table)
            build = self._building[key] = _Build(rows)
        try:
            col = ix.build(rows, progress)
        except BaseException:
            with self._writing:
                if self._building.get(key) is build:
                    del self._building[key]
            raise
        with self._writing:
            if self._building.get(key) is not build:
                raise Conflict(f"index {key} was dropped while it was built")
            del self._building[key]
            col = self._catch_up(ix, rows.table, col, build.touched)
            with self._rw.write():
                if ix.column is not None and col is not None:
                    self._table.add_column(ix.column, col)
                self._indexes[key] = ix
            self._maintain()

    def _catch_up(self, ix: MetricIndex, built: Table, col: F32 | None, touched: list[Ids]) -> F32 | None:
        """Bring `ix`, built over the rows `built`, up to the table (the caller holds the write
        mutex): the ids written since are embedded again or removed, and a flat index's column is
        put in the table's row order. Every table row not written since is in `built`, unchanged."""
        if not touched:
            return col  # no write since the copy: the same rows in the same order
        t = self._table
        ids = np.unique(np.concatenate(touched))
        pos = t.positions(ids)
        live, at = ids[pos >= 0], pos[pos >= 0]
        ix.remove(ids[pos < 0])
        E: F32 | None = None
        if live.size:
            E, stats = ix.embed(t.rows[at])
            ix.upsert(live, E, stats)
        if col is None:
            return None
        out = np.empty((t.n, col.shape[1]), dtype=np.float32)
        old = np.ones(t.n, dtype=bool)
        old[at] = False
        out[old] = col[built.positions(t.ids[old])]
        if E is not None:
            out[at] = E
        return out

    def drop_index(self, key: str) -> None:
        """Drop the index `key`, or stop its build (that `add_index` raises Conflict); NotFound naming
        the indexes otherwise."""
        with self._writing:
            if key not in self._indexes:
                if self._building.pop(key, None) is not None:
                    return
                raise NotFound(f"no index {key!r}; indexes: {sorted(self._indexes)}")
            with self._rw.write():
                ix = self._indexes.pop(key)
                if ix.column is not None:
                    self._table.drop_column(ix.column)

    # --- searching -----------------------------------------------------------------------------

    def find(self, metric: str, temperature: Any = None, kind: str | None = None) -> IndexSpec:
        """The spec of the index answering `metric` (at `temperature`, of `kind`; with no kind the
        first of KINDS present); InvalidInput naming the field when there is none.

        The compatibility path for callers that name a metric rather than an index (service/backend.py
        today, the benchmarks): the service picks the IndexSpec itself and passes it to `search`.
        """
        with self._rw.read():
            return self._pick(metric, temperature, kind).spec

    def _pick(self, metric: str, temperature: Any, kind: str | None) -> MetricIndex:
        if metric not in INDEXABLE:
            raise InvalidInput("metric", f"unknown metric {metric!r}; indexable: {', '.join(INDEXABLE)}")
        same = [ix for ix in self._indexes.values() if ix.spec.metric == metric]
        if not same:
            have = sorted({ix.spec.metric for ix in self._indexes.values()})
            raise InvalidInput("metric", f"no {metric} index; indexed metrics: {have}")
        if metric in TEMPERED:
            temps = sorted({ix.spec.temperature for ix in same if ix.spec.temperature is not None})
            if temperature is None:
                raise InvalidInput("temperature", f"required for {metric}; indexed temperatures: {temps}")
            t = check_temperature(temperature)
            same = [ix for ix in same if ix.spec.temperature is not None
                    and math.isclose(ix.spec.temperature, t, rel_tol=1e-9)]
            if not same:
                raise InvalidInput("temperature", f"no {metric} index at t={t:g}; indexed temperatures: {temps}")
        elif temperature is not None:
            raise InvalidInput("temperature", f"{metric} is computed over raw logits: leave it out")
        if kind is None:
            return min(same, key=lambda ix: KINDS.index(ix.spec.kind))
        if kind not in KINDS:
            raise InvalidInput("kind", f"unknown index kind {kind!r}; known: {', '.join(KINDS)}")
        for ix in same:
            if ix.spec.kind == kind:
                return ix
        kinds = sorted(ix.spec.kind for ix in same)
        raise InvalidInput("kind", f"no {kind} index for {metric}; indexed kinds: {kinds}")

    def _index(self, spec: IndexSpec | str, temperature: Any, kind: str | None) -> MetricIndex:
        if isinstance(spec, str) and "-" not in spec:
            return self._pick(spec, temperature, kind)  # a metric name (every key has a "-"): see `find`
        if temperature is not None or kind is not None:
            raise InvalidInput("temperature" if temperature is not None else "kind",
                               "given by the index spec: leave it out")
        if isinstance(spec, IndexSpec):
            key = spec.key
        elif isinstance(spec, str):
            key = spec
        else:
            raise InvalidInput("spec", f"must be an IndexSpec or an index key, got {type(spec).__name__}")
        ix = self._indexes.get(key)
        if ix is None:
            raise NotFound(f"no index {key!r}; indexes: {sorted(self._indexes)}")
        return ix

    def search(self, spec: IndexSpec | str, Q: Any, k: int, *, exact: bool = False,
               exclude: Sequence[int | None] | None = None, allowed: Any = None,
               temperature: float | None = None, kind: Kind | None = None, stage: Stage = "all",
               within: Sequence[float] | None = None) -> list[Hits]:
        """The k nearest stored rows of each query (rows of Q) by the index `spec` (an IndexSpec or its
        key), as one Hits per query; NotFound naming the key and the keys present when there is none.

        k > count gives count hits; exclude[i] is an id left out of query i's answer; with `allowed`
        (ids; unknown ones are ignored) only those rows are searched and `Hits.matched` says how many
        there were. Compatibility: a metric name as `spec`, with `temperature` and `kind`, is resolved
        as `find` resolves it.

        A flat index certifies from k' candidates, then 8 k', then scans (`stage="all"`). When this
        set is one part of a merge (issue 13, module docstring): `stage="first"` makes the k' attempt
        only, and answers a query it cannot certify "unproven" (its top k of the candidates, with
        `Hits.bound`); `stage="second"` makes the 8 k' attempt and then scans, and `within[i]` (an
        upper bound on query i's merged k-th distance) lets it certify against min(own k-th,
        within[i]). Other kinds answer as always, whatever the stage.
        """
        k = check_k(k)
        if stage not in ("all", "first", "second"):
            raise InvalidInput("stage", f"unknown stage {stage!r}; known: all, first, second")
        with self._rw.read():
            ix = self._index(spec, temperature, kind)
            A = as_rows(Q, "query", self.dim)
            QQ = np.asarray(A, dtype=np.float64)
            m = QQ.shape[0]
            excl = self._exclude(exclude, m)
            cap = self._within(within, m)
            n = self._table.n
            rows = None
            if allowed is not None:
                pos = self._table.positions(_as_ids(allowed, "allowed"))
                rows = np.unique(pos[pos >= 0])
                n = rows.size
            if n == 0:
                return [Hits(np.empty(0, np.int64), np.empty(0), "scanned", None if rows is None else 0, math.inf)
                        for _ in range(m)]
            if must_not_wait():
                check_work(self._work(ix, m, n, k, exact), f"a search of {ix.spec.key}")
            qs = embed.queries(ix.spec.metric, ix.spec.temperature, QQ)
            if rows is not None:
                return [dataclasses.replace(h, matched=n)
                        for h in self._filtered(ix, qs, k, excl, rows, exact, stage, cap)]
            if isinstance(ix, FlatIndex):
                return self._flat(ix, qs, k, excl, None, stage, cap)
            if exact or not ix.ready() or _wants_most(ix.spec.metric, k, n):
                return self._scan(ix, qs, k, excl, np.arange(m))
            return self._complete(ix, qs, k, excl, self._approximate(ix, qs, k, excl))

    def _work(self, ix: MetricIndex, m: int, n: int, k: int, exact: bool) -> float:
        """Estimated multiply-adds of a search (indexes.inline): the index's candidates, or the
        scan a flat index may end in (float64, with a softmax per row for the tempered metrics)."""
        scan = float(m) * n * self.dim * (4 if ix.spec.metric in TEMPERED else 1)
        if isinstance(ix, FlatIndex) or exact or not ix.ready() or _wants_most(ix.spec.metric, k, n):
            return max(scan, ix.work(m, n, k))
        return ix.work(m, n, k)

    @staticmethod
    def _within(within: Sequence[float] | None, m: int) -> F64:
        if within is None:
            return np.full(m, np.inf)
        cap = np.asarray(within, dtype=np.float64)
        if cap.shape != (m,) or np.isnan(cap).any():
            raise InvalidInput("within", f"needs one number per query ({m}), got {cap.shape}")
        return cap

    @staticmethod
    def _exclude(exclude: Sequence[int | None] | None, m: int) -> Ids | None:
        if exclude is None:
            return None
        if len(exclude) != m:
            raise InvalidInput("exclude", f"needs one entry per query ({m}), got {len(exclude)}")
        out = np.full(m, -1, dtype=np.int64)
        for i, e in enumerate(exclude):
            if e is not None:
                out[i] = _as_ids(e, f"exclude[{i}]")[0]
        return out

    def _filtered(self, ix: MetricIndex, qs: embed.Queries, k: int, excl: Ids | None, rows: Ids,
                  exact: bool, stage: Stage = "all", cap: F64 | None = None) -> list[Hits]:
        """Over the table rows `rows` (sorted, non-empty) only."""
        everyone = np.arange(qs.exact.shape[0])
        if rows.size <= FILTER_SCAN_ROWS:
            return self._scan(ix, qs, k, excl, everyone, rows)
        if isinstance(ix, FlatIndex):
            return self._flat(ix, qs, k, excl, rows, stage, cap)
        if exact or not ix.ready():
            return self._scan(ix, qs, k, excl, everyone, rows)
        return self._approximate(ix, qs, k, excl, rows)

    def _scan(self, ix: MetricIndex, qs: embed.Queries, k: int, excl: Ids | None,
              which: Ids, rows: Ids | None = None) -> list[Hits]:
        t = self._table
        ids = t.ids if rows is None else t.ids[rows]
        found, dist = exact.scan(ix.spec.metric, ix.spec.temperature, qs.exact[which], t.rows, ids, k,
                                 None if excl is None else excl[which], rows)
        return [Hits(i, d, "scanned", bound=math.inf) for i, d in zip(found, dist)]

    def _rerank(self, ix: MetricIndex, qs: embed.Queries, pos: Ids, excl: Ids | None,
                k: int) -> tuple[list[Ids], list[F64], F64]:
        t = self._table
        ids = np.where(pos >= 0, t.ids[np.maximum(pos, 0)], -1)
        D = exact.pair_distances(ix.spec.metric, ix.spec.temperature, qs.exact, t.rows, pos)
        if excl is not None:
            D[ids == excl[:, None]] = np.inf
        top_ids, top_d = exact.topk(D, ids, k)
        tau = np.array([d[-1] if len(d) else np.inf for d in top_d])
        return top_ids, top_d, tau

    def _flat(self, ix: FlatIndex, qs: embed.Queries, k: int, excl: Ids | None,
              rows: Ids | None = None, stage: Stage = "all", cap: F64 | None = None) -> list[Hits]:
        """Certify from FAISS candidates (k' from `_kprime`, then 8 k' for the rest), else scan;
        over the table rows `rows` only when given; `stage` and `cap` (per query, `within`) as
        `search` says."""
        n, m = self._table.n if rows is None else rows.size, qs.exact.shape[0]
        hits: list[Hits | None] = [None] * m
        todo = np.arange(m)
        kp = _kprime(k + (excl is not None))
        attempts = {"all": (kp, 8 * kp), "first": (kp,), "second": (8 * kp,)}[stage]
        cap = np.full(m, np.inf) if cap is None else cap
        inside = None
        if rows is not None and rows.size >= FILTER_GATHER_BELOW * self._table.n:
            inside = np.zeros(self._table.n, dtype=bool)
            inside[rows] = True
        for kp in attempts:
            if kp >= n or not todo.size:
                break
            done = self._certify(ix, qs, k, excl, todo, kp, rows, inside, cap[todo], stage == "first")
            for r, h in zip(todo, done):
                hits[r] = h
            todo = todo[[h is None for h in done]]
        if todo.size:
            for r, h in zip(todo, self._scan(ix, qs, k, excl, todo, rows)):
                hits[r] = h
        return [h for h in hits if h is not None]

    def _certify(self, ix: FlatIndex, qs: embed.Queries, k: int, excl: Ids | None, which: Ids,
                 kp: int, rows: Ids | None = None, inside: npt.NDArray[np.bool_] | None = None,
                 cap: F64 | None = None, keep: bool = False) -> list[Hits | None]:
        """The queries `which` certified from kp candidates against min(own k-th, cap); the others
        None, or with `keep` "unproven" with their bound."""
        sub = embed.Queries(qs.vectors[which], qs.exact[which], qs.norm[which], qs.pmin[which], qs.pmax[which])
        if inside is not None and rows is not None:
            # candidates from every row, the matching ones kept: a matching row outside them still has
            # a value no better than the k'-th over all rows, so the same bound holds for it
            n = self._table.n
            D, pos = ix.candidates(sub.vectors, min(n, -(-kp * n // rows.size)), self._table)
            pos = np.where((pos >= 0) & inside[np.maximum(pos, 0)], pos, -1)
        else:
            D, pos = ix.candidates(sub.vectors, kp, self._table, rows)
        top_ids, top_d, tau = self._rerank(ix, sub, pos, None if excl is None else excl[which], k)
        c = None
        if ix.spec.metric == "tri":
            c = exact.contraction(np.minimum(sub.pmin, ix.stats.pmin), np.maximum(sub.pmax, ix.stats.pmax))
        bound = exact.lower_bound(ix.spec.metric, ix.width, D[:, -1], sub.norm, ix.stats.norm, c)
        bound = np.where(np.isfinite(bound), bound, -np.inf)  # a padded k'-th value proves nothing
        # fewer than k found: an unseen row would belong, unless the merge's k-th is nearer (cap)
        kth = np.where([len(d) == k for d in top_d], tau, np.inf)
        ok = certifies(bound, np.minimum(kth, np.inf if cap is None else cap))
        return [Hits(top_ids[r], top_d[r], "certified", bound=float(bound[r])) if ok[r]
                else Hits(top_ids[r], top_d[r], "unproven", bound=float(bound[r])) if keep else None
                for r in range(len(which))]

    def _complete(self, ix: MetricIndex, qs: embed.Queries, k: int, excl: Ids | None,
                  hits: list[Hits]) -> list[Hits]:
        """A graph walk can reach fewer than k live points (issue 11: 4,990 of 4,998 for k >= n):
        such queries are answered by the exact scan instead, so k > count always gives count hits."""
        n = self._table.n
        short = np.array([len(h.ids) < min(k, n - int(excl is not None and excl[r] >= 0))
                          for r, h in enumerate(hits)])
        if short.any():
            which = np.flatnonzero(short)
            for r, h in zip(which, self._scan(ix, qs, k, excl, which)):
                hits[r] = h
        return hits

    def _approximate(self, ix: MetricIndex, qs: embed.Queries, k: int, excl: Ids | None,
                     rows: Ids | None = None) -> list[Hits]:
        # Hellinger only brackets TRI, so re-rank twice as many; for the others the proxy is the order
        n = self._table.n if rows is None else rows.size
        kp = min(n, (2 if ix.spec.metric == "tri" else 1) * k + (excl is not None))
        _, ids = ix.candidates(qs.vectors, kp, self._table, rows)
        pos = self._table.positions(ids)
        top_ids, top_d, _ = self._rerank(ix, qs, pos, excl, k)
        return [Hits(i, d, "approximate") for i, d in zip(top_ids, top_d)]

    # --- persistence ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The set as plain data (copies taken under the set's locks; nothing shared with the set):
        "dim", "last_seq", "ids" (int64 (n,)), "rows" (float32 (n, dim)), "specs" (each index's
        IndexSpec.to_dict(), in order) and "indexes" (key -> MetricIndex.state()). An index still
        being built is not in it."""
        with self._writing, self._rw.read():
            return self._state(copy=True)

    def _state(self, *, copy: bool, lean: bool = False) -> dict[str, Any]:
        t = self._table
        ids, rows = (t.ids.copy(), t.rows.copy()) if copy else (t.ids, t.rows)
        out = {"dim": self.dim, "last_seq": self.last_seq, "ids": ids, "rows": rows,
               "specs": [ix.spec.to_dict() for ix in self._indexes.values()],
               "indexes": {key: ix.state(lean=lean) for key, ix in self._indexes.items()}}
        if lean:
            del out["rows"]
        return out

    @classmethod
    def restore(cls, state: Mapping[str, Any], *, id_offset: int = 0, adopt: bool = False) -> IndexSet:
        """The set `state()` described, every id (the table's, HNSW's labels, IVF's lists) shifted by
        `id_offset`: a collection restored into another database gets fresh internal ids in the same
        order (service/snapshots.py). Flat indexes are recomputed from the rows, keeping the saved
        certificate statistics (they only widen with writes, so the restored set certifies exactly
        what the saved one did). With `adopt` (persist.load: arrays of its own) the table takes the
        state's rows without a copy. StorageError when the state is damaged or inconsistent."""
        try:
            dim, last_seq = int(state["dim"]), int(state["last_seq"])
            specs = [IndexSpec.from_dict(s) for s in state["specs"]]
            ids, rows, kept = state["ids"], state["rows"], state.get("indexes") or {}
            if not isinstance(kept, Mapping):
                raise TypeError("indexes must be a mapping")
            iset = cls(dim)
        except (KeyError, TypeError, ValueError, InvalidInput) as exc:
            raise StorageError(f"the state is damaged ({exc})") from None
        if not (isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.ndim == 1
                and isinstance(rows, np.ndarray) and rows.dtype == np.float32 and rows.shape == (ids.size, dim)):
            raise StorageError("the state is damaged (ids must be int64 (n,) and rows float32 (n, dim))")
        if ids.size and (ids.min() < 0 or np.unique(ids).size != ids.size):
            raise StorageError("the state holds negative or repeated ids")
        iset.last_seq = last_seq
        if adopt and rows.flags.c_contiguous and rows.flags.writeable:
            iset._table = Table.adopt(ids + id_offset, rows)  # no second copy of the rows
        else:
            iset._table.upsert(ids + id_offset, rows, {})
        for spec in specs:
            if spec.key in iset._indexes:
                raise StorageError(f"the state holds index {spec.key} twice")
            st = kept.get(spec.key, {})
            if not isinstance(st, Mapping):
                raise StorageError(f"the state of {spec.key} is damaged (not a mapping)")
            ix = _KIND_CLASS[spec.kind].restore(spec, dim, st, id_offset=id_offset)
            if isinstance(ix, FlatIndex):
                saved = ix.stats
                col = ix.build(Rows(iset._table), None)
                if st.get("stats") is not None:
                    ix.stats = saved
                if ix.column is not None and col is not None:
                    iset._table.add_column(ix.column, col)
            if not ix.holds(iset._table.ids):
                raise StorageError(f"{spec.key} does not hold the table's {iset.count} ids")
            if isinstance(ix, HnswIndex):
                ix.refill(iset._table)
            iset._indexes[spec.key] = ix
        return iset

    def save(self, directory: Path, *, lean: bool = False) -> None:
        """Write a snapshot atomically (persist.py): beside, fsync, rename. `lean` (a shard's own
        snapshot, issue 16): without the rows, which its database holds (`load` reads them back from
        there), and HNSW graphs without their live vectors (`MetricIndex.state`)."""
        with self._writing, self._rw.read():
            persist.write(self._state(copy=False, lean=lean), Path(directory))

    def capture(self) -> dict[str, Any]:
        """`state()`, for `persist.write` to write later without the set's locks: a long write then
        holds up no write to the set (service/snapshots.py)."""
        return self.state()

    @classmethod
    def load(cls, directory: Path, *, id_offset: int = 0, rows: persist.RowSource | None = None) -> IndexSet:
        """Read a snapshot (ids shifted by `id_offset`, as `restore`); StorageError for a damaged,
        foreign or missing directory. A lean snapshot (`save(lean=True)`) takes its rows from `rows`."""
        return persist.load(cls, Path(directory), id_offset=id_offset, rows=rows)
