"""The narrow interface the routes call: collections, points, search, evaluation data.

Everything behind it is one process today: SQLite (`store.py`) is the source of truth and each
collection's `IndexSet` is derived state, snapshotted under `<data dir>/indexes/c<cid>` and brought up
to date at start by replaying the writes after the snapshot's sequence (or rebuilt from SQLite when
the snapshot is missing or damaged). A later issue puts shards on Ray actors behind these same methods;
they take and return external ids, numpy arrays and small dataclasses only.

Writes: one SQLite transaction per request, under the collection's lock; only after COMMIT do the
in-memory id maps change and the write go to the collection's applier thread, which applies writes to
the IndexSet one at a time in sequence order. If an apply fails after commit the collection is rebuilt
from SQLite (searches answer 503 meanwhile) rather than serve an index that lacks an acknowledged write.
Searches run concurrently; a bulk ingest is applied in chunks under the collection's gate so a search
sees all of it or none of it (a JSON upsert is one IndexSet call, atomic by itself).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from core.errors import Conflict, InvalidInput, LimitExceeded, LogitsearchError, NotFound, StorageError
from core.metrics import METRICS
from core.validate import check_temperature
from indexes.knn import (
    Hits,
    IndexSet,
    IndexSpec,
    RWLock,  # the indexes' writer-preferring readers-writer lock, reused
)
from service import filters
from service.settings import Settings
from service.store import Ext, Store, StoredCollection, Transaction

log = logging.getLogger("logitsearch.backend")

F32 = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]
IndexStatus = Literal["building", "ready", "failed"]
State = Literal["loading", "ready", "rebuilding", "failed"]
WriteStatus = Literal["completed", "acknowledged", "rebuilding"]

INDEX_METRICS = ("euc", "cos", "tri", "ced")
KINDS = ("flat", "hnsw", "ivf")
DEFAULT_METRICS = ("euc", "cos", "tri")
DEFAULT_TEMPERATURES = (10.0,)
#: seconds a request waits for a collection that is still loading before answering 503
LOAD_WAIT = 10.0
#: rows per IndexSet call when a bulk ingest or a rebuild is applied
APPLY_CHUNK = 16384
#: a bulk ingest up to this many bytes of rows is applied from memory; a larger one is read back from SQLite
BULK_KEEP_BYTES = 256 * 1024 * 1024
#: filters whose matching points are kept per process, each valid until its collection's next write
SELECTION_CACHE = 64


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionConfig:
    """What PUT /v1/collections/{name} asked for, normalised (sorted, defaults filled): two configs
    are the same collection exactly when they compare equal."""

    dim: int
    metrics: tuple[str, ...]
    temperatures: tuple[float, ...]
    kind: str
    params: dict[str, int]
    #: payload keys indexed for filters (service/filters.py), sorted
    payload_index: tuple[str, ...] = ()

    @classmethod
    def create(cls, dim: Any, metrics: Sequence[str] | None = None, temperatures: Sequence[Any] | None = None,
               kind: str = "flat", params: dict[str, Any] | None = None,
               payload_index: Sequence[str] | None = None) -> CollectionConfig:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
            raise InvalidInput("dim", f"must be a whole number in [1, 65536], got {dim!r}")
        chosen = DEFAULT_METRICS if metrics is None else tuple(metrics)
        for i, m in enumerate(chosen):
            if m not in INDEX_METRICS:
                raise InvalidInput(f"metrics.{i}", f"unknown metric {m!r}; indexable: {', '.join(INDEX_METRICS)}")
        if not chosen:
            raise InvalidInput("metrics", "give at least one metric to index")
        ms = tuple(m for m in INDEX_METRICS if m in chosen)
        ts: tuple[float, ...] = ()
        if any(m in ("tri", "ced") for m in ms):
            raw = DEFAULT_TEMPERATURES if temperatures is None else tuple(temperatures)
            if not raw:
                raise InvalidInput("temperatures", "tri and ced need at least one temperature")
            ts = tuple(sorted({check_temperature(t, f"temperatures.{i}") for i, t in enumerate(raw)}))
        # IndexSpec fills and checks the parameters of the kind (InvalidInput "params.M" etc.)
        probe = IndexSpec(ms[0], ts[0] if ms[0] in ("tri", "ced") else None, kind, dict(params or {}))  # type: ignore[arg-type]
        keys = tuple(sorted({filters.check_key(k, f"payload_index.{i}") for i, k in enumerate(payload_index or ())}))
        return cls(dim, ms, ts, probe.kind, dict(probe.params), keys)

    def specs(self) -> list[IndexSpec]:
        out = []
        for m in self.metrics:
            for t in (self.temperatures if m in ("tri", "ced") else (None,)):
                out.append(IndexSpec(m, t, self.kind, self.params))  # type: ignore[arg-type]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "metrics": list(self.metrics), "temperatures": list(self.temperatures),
                "index": {"kind": self.kind, "params": dict(self.params)}, "payload_index": list(self.payload_index)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollectionConfig:
        return cls.create(d["dim"], d["metrics"], d["temperatures"] or None, d["index"]["kind"],
                          d["index"]["params"], d.get("payload_index"))

    def differences(self, other: CollectionConfig) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {theirs[k]} (existing: {mine[k]})" for k in mine if mine[k] != theirs[k]]


@dataclass
class IndexState:
    spec: IndexSpec
    status: IndexStatus
    progress: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "status": self.status, "error": self.error}


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexInfo:
    key: str
    spec: IndexSpec
    status: IndexStatus
    progress: float
    vectors: int
    error: str | None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    config: CollectionConfig
    count: int
    last_operation_id: int
    status: State
    indexes: list[IndexInfo]


@dataclass(frozen=True)
class HeldCollection:
    """A collection while its writes are held (`Backend.writes_held`)."""

    cid: int
    name: str
    config: CollectionConfig
    indexes: list[dict[str, Any]]
    last_seq: int
    count: int
    iset: IndexSet | None
    rebuild_reason: str | None


@dataclass(frozen=True)
class WriteResult:
    operation_id: int
    status: WriteStatus
    count: int


@dataclass(frozen=True)
class Point:
    id: Ext
    vector: F32 | None
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class Query:
    """One search: by `vector` or by stored `id` (left out of its own answer)."""

    k: int
    metric: str | None = None
    vector: npt.NDArray[np.floating[Any]] | None = None
    id: Ext | None = None
    temperature: float | None = None
    kind: str | None = None
    exact: bool = False
    with_payload: bool = True
    with_vector: bool = False
    filter: filters.Filter | None = None


@dataclass(frozen=True)
class Selection:
    """The points a filter matched in one collection (`Backend.select`), for an evaluation."""

    iids: Ids

    @property
    def count(self) -> int:
        return int(self.iids.size)


class Hit(NamedTuple):
    """One neighbour, as `SearchResult.hits` gives it (results keep their hits as columns)."""

    id: Ext
    distance: float
    payload: dict[str, Any] | None = None
    vector: F32 | None = None


@dataclass(frozen=True)
class SearchResult:
    """One query's answer. Hits are kept as columns (ids, distances, and payloads/vectors when asked
    for): a batch of 100 queries has 1,000 hits, and building an object per hit was a measurable
    part of a batch request; `hits` gives them as Hit tuples."""

    metric: str
    temperature: float | None
    index: str
    kind: str
    how: str
    k: int
    ids: list[Ext]
    distances: list[float]
    seconds: float
    payloads: list[dict[str, Any] | None] | None = None
    vectors: list[F32 | None] | None = None
    #: with a filter: the searchable points it matched
    matched: int | None = None

    @property
    def hits(self) -> list[Hit]:
        n = len(self.ids)
        return [Hit(*h) for h in zip(self.ids, self.distances, self.payloads or [None] * n,
                                     self.vectors or [None] * n)]


# --- the collection at run time --------------------------------------------------------------------


@dataclass(eq=False)
class _Collection:
    cid: int
    name: str
    config: CollectionConfig
    indexes: dict[str, IndexState]
    last_seq: int
    iset: IndexSet | None = None
    state: State = "loading"
    error: str | None = None
    iid_of: dict[Ext, int] = field(default_factory=dict)
    ext_of: dict[int, Ext] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # searches share it; a bulk apply takes it alone, so a search sees all of a bulk ingest or none
    gate: RWLock = field(default_factory=RWLock)
    loaded: threading.Event = field(default_factory=threading.Event)
    dropped: bool = False
    since_snapshot: int = 0
    snapshot_seq: int = -1
    snapshot_pending: bool = False
    _applier: ThreadPoolExecutor | None = None

    @property
    def applier(self) -> ThreadPoolExecutor:
        if self._applier is None:
            self._applier = ThreadPoolExecutor(1, thread_name_prefix=f"apply-{self.cid}")
        return self._applier

    def ready_specs(self) -> list[IndexSpec]:
        return [s.spec for s in self.indexes.values() if s.status == "ready"]


def _index_list(coll: _Collection) -> list[dict[str, Any]]:
    return [s.to_dict() for s in coll.indexes.values()]


# --- the backend -----------------------------------------------------------------------------------


class Backend:
    """Collections of one data directory: SQLite plus an IndexSet per collection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.store = Store(self.data_dir)
        self._collections: dict[str, _Collection] = {}
        self._registry = threading.Lock()
        self._snapshots = ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        # as many searches at once as cores: more only oversubscribes the cores (each search already
        # runs FAISS/numba threads) and thrashes the GIL; the others wait here
        self._search_slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
        self._loader: threading.Thread | None = None
        self._closed = False
        # (cid, filter) -> (the collection's write sequence then, the matching iids): a repeated filter
        # (one class, one photo) skips the payload index until the next write to the collection
        self._selections: dict[tuple[int, filters.Filter], tuple[int, Ids]] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    def open(self, *, background: bool = True) -> None:
        """Open SQLite and load every collection (in a background thread unless told otherwise)."""
        self.store.open()
        stored = self.store.collections()
        for sc in stored:
            config = CollectionConfig.from_dict(sc.config)
            states = {}
            for d in sc.indexes:
                spec = IndexSpec.from_dict(d["spec"])
                states[spec.key] = IndexState(spec, d["status"], 1.0 if d["status"] == "ready" else 0.0, d.get("error"))
            self._collections[sc.name] = _Collection(sc.cid, sc.name, config, states, sc.last_seq)
        self._remove_orphan_snapshots({sc.cid for sc in stored})
        if background:
            self._loader = threading.Thread(target=self._load_all, args=(stored,), name="loader", daemon=True)
            self._loader.start()
        else:
            self._load_all(stored)

    def close(self) -> None:
        """Finish queued index writes, snapshot what changed since the last snapshot, close SQLite."""
        self._closed = True
        if self._loader is not None:
            self._loader.join()
        for coll in list(self._collections.values()):
            if coll._applier is not None:
                coll._applier.shutdown(wait=True)
        self._snapshots.shutdown(wait=True)
        for coll in list(self._collections.values()):
            building = any(s.status == "building" for s in coll.indexes.values())
            if coll.state == "ready" and coll.iset is not None and not building \
                    and coll.iset.last_seq != coll.snapshot_seq:
                self._snapshot(coll)
        self.store.close()

    def readiness(self) -> tuple[bool, dict[str, str]]:
        states = {c.name: c.state for c in self._collections.values()}
        return all(s != "loading" for s in states.values()), states

    def _snapshot_dir(self, cid: int) -> Path:
        return self.data_dir / "indexes" / f"c{cid}"

    def _remove_orphan_snapshots(self, cids: set[int]) -> None:
        root = self.data_dir / "indexes"
        if not root.is_dir():
            return
        for path in root.iterdir():
            if path.name.startswith("c") and path.name[1:].isdigit() and int(path.name[1:]) not in cids:
                shutil.rmtree(path, ignore_errors=True)

    # --- loading and rebuilding ------------------------------------------------------------------

    def _load_all(self, stored: list[StoredCollection], preloaded: dict[int, IndexSet] | None = None) -> None:
        for sc in stored:
            coll = self._collections.get(sc.name)
            if coll is None or self._closed:
                continue
            started = time.perf_counter()
            try:
                with coll.lock:
                    self._load(coll, (preloaded or {}).get(coll.cid))
                log.info("collection loaded", extra={"fields": {
                    "collection": coll.name, "points": coll.iset.count if coll.iset else 0,
                    "seconds": round(time.perf_counter() - started, 3)}})
            except Exception as exc:  # one damaged collection must not keep the others from loading
                coll.state, coll.error = "failed", _public_reason(exc)
                log.error("collection failed to load", exc_info=exc, extra={"fields": {"collection": coll.name}})
            finally:
                coll.loaded.set()

    def _load(self, coll: _Collection, iset: IndexSet | None = None) -> None:
        for iid, ext in self.store.ext_ids(coll.cid):
            coll.iid_of[ext] = iid
            coll.ext_of[iid] = ext
        iset = iset if iset is not None else self._open_snapshot(coll)
        if iset is not None:
            try:
                self._replay(coll, iset)
            except StorageError:
                raise  # SQLite itself failed: a rebuild would read the same
            except Exception as exc:  # a snapshot that cannot take the replay is rebuilt
                log.warning("replay onto the snapshot failed, rebuilding from SQLite", exc_info=exc,
                            extra={"fields": {"collection": coll.name}})
                iset = None
        if iset is None:
            iset = self._build_from_store(coll, coll.last_seq)
        coll.iset, coll.state = iset, "ready"
        for state in coll.indexes.values():
            if state.status == "building":  # a build the last run did not finish
                self._start_build(coll, state)

    def _replay(self, coll: _Collection, iset: IndexSet) -> None:
        """Bring a snapshot up to SQLite: the deletes and writes after its sequence, then its indexes."""
        since = coll.snapshot_seq = iset.last_seq
        iset.remove(self.store.deleted_after(coll.cid, since), coll.last_seq)
        for iids, X in self.store.rows(coll.cid, after=since, chunk=APPLY_CHUNK):
            iset.upsert(iids, X, coll.last_seq)
        iset.remove(np.empty(0, np.int64), coll.last_seq)  # last_seq even when nothing was replayed
        self._reconcile(coll, iset)

    def _open_snapshot(self, coll: _Collection) -> IndexSet | None:
        path = self._snapshot_dir(coll.cid)
        if not path.exists():
            return None
        try:
            iset = IndexSet.load(path)
        except StorageError as exc:
            log.warning("index snapshot unusable, rebuilding from SQLite",
                        extra={"fields": {"collection": coll.name, "reason": str(exc)}})
            return None
        if iset.dim != coll.config.dim or iset.last_seq > coll.last_seq:
            log.warning("index snapshot does not match SQLite, rebuilding", extra={"fields": {
                "collection": coll.name, "snapshot_seq": iset.last_seq, "sqlite_seq": coll.last_seq}})
            return None
        return iset

    def _reconcile(self, coll: _Collection, iset: IndexSet) -> None:
        """Make the loaded snapshot hold exactly the collection's ready indexes."""
        want = {s.key: s for s in coll.ready_specs()}
        for spec in iset.specs():
            if want.get(spec.key) != spec:
                iset.drop_index(spec.key)
        have = {s.key for s in iset.specs()}
        for key, spec in want.items():
            if key not in have:
                iset.add_index(spec)

    def _build_from_store(self, coll: _Collection, upto: int) -> IndexSet:
        """A fresh IndexSet from the points in SQLite up to write `upto`, with the ready indexes."""
        iset = IndexSet(coll.config.dim)
        for iids, X in self.store.rows(coll.cid, upto=upto, chunk=APPLY_CHUNK):
            iset.upsert(iids, X, upto)
        iset.remove(np.empty(0, np.int64), upto)
        for spec in coll.ready_specs():
            iset.add_index(spec)
        return iset

    def _rebuild(self, coll: _Collection) -> None:
        """Runs on the applier after a failed apply: every write queued before it is in SQLite."""
        try:
            iset = self._build_from_store(coll, self.store.last_seq(coll.cid))
            coll.iset, coll.state, coll.error = iset, "ready", None
            log.info("collection rebuilt from SQLite", extra={"fields": {"collection": coll.name}})
        except Exception as exc:
            coll.state, coll.error = "failed", _public_reason(exc)
            log.error("collection rebuild failed", exc_info=exc, extra={"fields": {"collection": coll.name}})

    # --- lookup ----------------------------------------------------------------------------------

    def _get(self, name: str) -> _Collection:
        coll = self._collections.get(name)
        if coll is None:
            raise NotFound(f"collection {name!r} not found")
        if not coll.loaded.wait(LOAD_WAIT):
            raise StorageError(f"collection {name!r} is still loading; retry shortly")
        return coll

    def _ready(self, name: str) -> tuple[_Collection, IndexSet]:
        coll = self._get(name)
        iset = coll.iset
        if coll.state != "ready" or iset is None:
            why = coll.error or "its indexes are being rebuilt from SQLite"
            raise StorageError(f"collection {name!r} is {coll.state}: {why}")
        return coll, iset

    # --- collections -----------------------------------------------------------------------------

    def create_collection(self, name: str, config: CollectionConfig) -> tuple[CollectionInfo, bool]:
        """Create `name`; (info, False) when it exists with the same config, Conflict for another one."""
        _check_name(name)
        with self._registry:
            existing = self._collections.get(name)
            if existing is not None:
                if set(config.payload_index) <= set(existing.config.payload_index):
                    # payload keys may have been declared since: asking for fewer is the same collection
                    config = dataclasses.replace(config, payload_index=existing.config.payload_index)
                if existing.config != config:
                    raise Conflict(f"collection {name!r} exists with a different configuration: "
                                   + "; ".join(existing.config.differences(config)))
                return self._info(existing), False
            specs = config.specs()
            iset = IndexSet(config.dim, specs)
            states = {s.key: IndexState(s, "ready", 1.0) for s in specs}
            with self.store.transaction() as tx:
                cid = tx.create_collection(name, config.to_dict(), [s.to_dict() for s in states.values()])
            coll = _Collection(cid, name, config, states, 0, iset=iset, state="ready")
            coll.loaded.set()
            shutil.rmtree(self._snapshot_dir(cid), ignore_errors=True)
            self._collections[name] = coll
            return self._info(coll), True

    def list_collections(self) -> list[CollectionInfo]:
        return [self._info(c) for c in sorted(self._collections.values(), key=lambda c: c.name)]

    def get_collection(self, name: str) -> CollectionInfo:
        return self._info(self._get(name))

    def delete_collection(self, name: str) -> None:
        coll = self._get(name)
        with coll.lock, self._registry:
            with self.store.transaction() as tx:
                tx.drop_collection(coll.cid)
            coll.dropped = True
            self._collections.pop(name, None)
        if coll._applier is not None:
            coll._applier.shutdown(wait=False)
        shutil.rmtree(self._snapshot_dir(coll.cid), ignore_errors=True)

    def _info(self, coll: _Collection) -> CollectionInfo:
        iset = coll.iset
        live = {s.key for s in iset.specs()} if iset is not None else set()
        indexes = [IndexInfo(k, s.spec, s.status, s.progress,
                             iset.count if iset is not None and k in live else 0, s.error)
                   for k, s in coll.indexes.items()]
        return CollectionInfo(coll.name, coll.config, len(coll.iid_of), coll.last_seq, coll.state, indexes)

    def dim(self, name: str) -> int:
        return self._get(name).config.dim

    def count(self, name: str, selection: Selection | None = None) -> int:
        """Points searchable now (the evaluation samples from these), or the selection's."""
        return self._ready(name)[1].count if selection is None else selection.count

    def sizes(self) -> Iterable[tuple[str, int, list[tuple[str, int]]]]:
        """(collection, points, [(index, vectors)]) for /metrics."""
        for coll in list(self._collections.values()):
            info = self._info(coll)
            yield info.name, info.count, [(i.key, i.vectors) for i in info.indexes if i.status == "ready"]

    # --- indexes ---------------------------------------------------------------------------------

    def list_indexes(self, name: str) -> list[IndexInfo]:
        return self._info(self._get(name)).indexes

    def add_index(self, name: str, spec: IndexSpec) -> tuple[IndexInfo, bool]:
        """Start building `spec` in the background; (info, False) when it exists with the same params."""
        coll, _ = self._ready(name)
        with coll.lock:
            existing = coll.indexes.get(spec.key)
            if existing is not None:
                if existing.spec != spec or dict(existing.spec.params) != dict(spec.params):
                    raise Conflict(f"index {spec.key} exists with parameters {dict(existing.spec.params)}; "
                                   f"delete it first to build it with {dict(spec.params)}")
                return self._index_info(coll, spec.key), False
            state = IndexState(spec, "building", 0.0)
            coll.indexes[spec.key] = state
            try:
                self._save_indexes(coll)
            except BaseException:
                del coll.indexes[spec.key]
                raise
        self._start_build(coll, state)
        return self._index_info(coll, spec.key), True

    def _index_info(self, coll: _Collection, key: str) -> IndexInfo:
        return next(i for i in self._info(coll).indexes if i.key == key)

    def _save_indexes(self, coll: _Collection) -> None:
        with self.store.transaction() as tx:
            tx.set_indexes(coll.cid, _index_list(coll))

    def _start_build(self, coll: _Collection, state: IndexState) -> None:
        threading.Thread(target=self._build, args=(coll, state), name=f"build-{state.spec.key}",
                         daemon=True).start()

    def _build(self, coll: _Collection, state: IndexState) -> None:
        iset = coll.iset
        key = state.spec.key
        try:
            if iset is None:
                raise StorageError("collection has no index set")

            def progress(p: float) -> None:
                state.progress = min(max(float(p), 0.0), 0.999)

            iset.add_index(state.spec, progress=progress)
            with coll.lock:
                if coll.dropped or coll.indexes.get(key) is not state or coll.iset is not iset:
                    if key in {s.key for s in iset.specs()} and coll.indexes.get(key) is not state:
                        iset.drop_index(key)
                    return
                state.status, state.progress = "ready", 1.0
                self._save_indexes(coll)
            self._schedule_snapshot(coll, force=True)
        except Exception as exc:
            state.status, state.error = "failed", _public_reason(exc)
            log.error("index build failed", exc_info=exc, extra={"fields": {"collection": coll.name, "index": key}})
            with coll.lock:
                if not coll.dropped and coll.indexes.get(key) is state:
                    try:
                        self._save_indexes(coll)
                    except StorageError:
                        log.warning("could not record the failed build", extra={"fields": {"index": key}})

    def drop_index(self, name: str, key: str) -> None:
        coll, iset = self._ready(name)
        with coll.lock:
            state = coll.indexes.get(key)
            if state is None:
                raise NotFound(f"no index {key!r} in collection {name!r}; indexes: {sorted(coll.indexes)}")
            del coll.indexes[key]
            try:
                self._save_indexes(coll)
            except BaseException:
                coll.indexes[key] = state
                raise
            if key in {s.key for s in iset.specs()}:
                iset.drop_index(key)

    # --- writing ---------------------------------------------------------------------------------

    def upsert(self, name: str, ids: Sequence[Ext], X: F32, payloads: Sequence[str | None] | None = None,
               *, wait: bool = True) -> WriteResult:
        """Insert or replace points; `X` float32 (n, dim), already checked; ids unique; payloads as JSON."""
        coll, _ = self._ready(name)
        if X.shape != (len(ids), coll.config.dim):
            raise InvalidInput("vectors", f"expected shape ({len(ids)}, {coll.config.dim}), got {X.shape}")
        with coll.lock:
            self._check_alive(coll)
            iids, fresh = self._resolve(coll, ids)
            with self.store.transaction() as tx:
                if fresh:
                    start = tx.allocate(len(fresh))
                    for j, r in enumerate(fresh):
                        iids[r] = start + j
                seq = tx.next_seq(coll.cid)
                tx.put_points(coll.cid, seq, iids.tolist(), ids, X, payloads, coll.config.payload_index)
            self._committed(coll, seq, ids, iids, fresh)
            future = coll.applier.submit(self._apply, coll, seq, iids, X, None)
        return self._result(seq, future, len(ids), wait)

    def bulk_upsert(self, name: str, chunks: Iterable[F32], ids: Iterable[Ext], *, wait: bool = True,
                    payloads: Sequence[str | None] | None = None) -> WriteResult:
        """Insert or replace many points in ONE transaction, chunk by chunk (`chunks`: float32 rows,
        already checked; `ids`: one per row, e.g. a range; `payloads`: one JSON text or None per row,
        checked). Nothing is written unless all of it is."""
        coll, _ = self._ready(name)
        id_iter = iter(ids)
        with coll.lock:
            self._check_alive(coll)
            seen: set[Ext] = set()
            all_fresh: list[tuple[Ext, int]] = []
            kept: list[tuple[Ids, F32]] | None = []
            n = 0
            with self.store.transaction() as tx:
                seq = tx.next_seq(coll.cid)
                for X in chunks:
                    exts = list(itertools.islice(id_iter, len(X)))
                    if len(exts) != len(X):
                        raise InvalidInput("ids", f"{n + len(exts)} ids for at least {n + len(X)} rows")
                    for j, e in enumerate(exts):
                        if e in seen:
                            raise InvalidInput("ids", f"duplicate id {e!r} (row {n + j}); ids must be unique")
                        seen.add(e)
                    iids, fresh = self._resolve(coll, exts)
                    if fresh:
                        start = tx.allocate(len(fresh))
                        for j, r in enumerate(fresh):
                            iids[r] = start + j
                            all_fresh.append((exts[r], start + j))
                    if payloads is not None and n + len(X) > len(payloads):
                        raise InvalidInput("payloads", f"{len(payloads)} payloads for at least {n + len(X)} rows")
                    tx.put_points(coll.cid, seq, iids.tolist(), exts, X,
                                  None if payloads is None else payloads[n:n + len(X)], coll.config.payload_index)
                    n += len(X)
                    if kept is not None:
                        kept = kept + [(iids, X)] if n * X.shape[1] * 4 <= BULK_KEEP_BYTES else None
                if next(id_iter, None) is not None:
                    raise InvalidInput("ids", f"more ids than the {n} rows of the matrix")
                if n == 0:
                    raise InvalidInput("body", "the matrix has no rows")
                if payloads is not None and len(payloads) != n:
                    raise InvalidInput("payloads", f"{len(payloads)} payloads for {n} rows")
            coll.last_seq = seq
            for e, i in all_fresh:
                coll.iid_of[e] = i
                coll.ext_of[i] = e
            future = coll.applier.submit(self._apply_bulk, coll, seq, n, kept)
        return self._result(seq, future, n, wait)

    def delete_points(self, name: str, ids: Sequence[Ext], *, wait: bool = True) -> WriteResult:
        """Delete points; unknown ids are ignored (count says how many existed)."""
        coll, _ = self._ready(name)
        with coll.lock:
            self._check_alive(coll)
            iids = np.array([coll.iid_of[e] for e in ids if e in coll.iid_of], dtype=np.int64)
            with self.store.transaction() as tx:
                seq = tx.next_seq(coll.cid)
                tx.delete_points(coll.cid, seq, iids.tolist())
            coll.last_seq = seq
            for e in ids:
                coll.iid_of.pop(e, None)
            future = coll.applier.submit(self._apply, coll, seq, None, None, iids)
        return self._result(seq, future, int(iids.size), wait)

    def delete_by_filter(self, name: str, flt: filters.Filter, *, wait: bool = True) -> WriteResult:
        """Delete every point `flt` matches when the transaction runs (count: how many)."""
        coll, _ = self._ready(name)
        filters.check_declared(flt, coll.config.payload_index, coll.name)
        with coll.lock:
            self._check_alive(coll)
            with self.store.transaction() as tx:
                iids = tx.matching(coll.cid, flt)
                seq = tx.next_seq(coll.cid)
                tx.delete_points(coll.cid, seq, iids.tolist())
            coll.last_seq = seq
            for i in iids.tolist():
                e = coll.ext_of.get(i)
                if e is not None:
                    coll.iid_of.pop(e, None)
            future = coll.applier.submit(self._apply, coll, seq, None, None, iids)
        return self._result(seq, future, int(iids.size), wait)

    # --- payload index ---------------------------------------------------------------------------

    def declare_payload_index(self, name: str, keys: Sequence[str]) -> tuple[str, ...]:
        """Index payload `keys` for filters (back-filled from the stored payloads in the same
        transaction that records them); keys indexed already are left as they are. The indexed keys."""
        coll, _ = self._ready(name)
        wanted = [filters.check_key(k, f"fields.{i}") for i, k in enumerate(keys)]
        with coll.lock:
            self._check_alive(coll)
            new = tuple(sorted(set(wanted) - set(coll.config.payload_index)))
            if new:
                config = dataclasses.replace(coll.config, payload_index=tuple(sorted({*coll.config.payload_index, *new})))
                with self.store.transaction() as tx:
                    tx.set_config(coll.cid, config.to_dict())
                    tx.index_payloads(coll.cid, new)
                coll.config = config
            return coll.config.payload_index

    def drop_payload_index(self, name: str, key: str) -> tuple[str, ...]:
        """Stop indexing payload `key` (NotFound when it is not indexed). The indexed keys."""
        coll, _ = self._ready(name)
        with coll.lock:
            self._check_alive(coll)
            if key not in coll.config.payload_index:
                raise NotFound(f"payload key {key!r} is not indexed in collection {name!r}; "
                               f"indexed: {list(coll.config.payload_index)}")
            config = dataclasses.replace(coll.config, payload_index=tuple(k for k in coll.config.payload_index
                                                                          if k != key))
            with self.store.transaction() as tx:
                tx.set_config(coll.cid, config.to_dict())
                tx.unindex_payloads(coll.cid, key)
            coll.config = config
            return config.payload_index

    def _matching(self, coll: _Collection, flt: filters.Filter) -> Ids:
        filters.check_declared(flt, coll.config.payload_index, coll.name)
        key, seq = (coll.cid, flt), coll.last_seq  # read before SQLite: a later write only makes it older
        hit = self._selections.get(key)
        if hit is not None and hit[0] == seq:
            return hit[1]
        iids = self.store.matching(coll.cid, flt)
        iids.flags.writeable = False
        with self._registry:
            if len(self._selections) >= SELECTION_CACHE:
                self._selections.pop(next(iter(self._selections)), None)
            self._selections[key] = (seq, iids)
        return iids

    def select(self, name: str, flt: filters.Filter) -> Selection:
        """The searchable points `flt` matches now (for `count` and `evaluate_data`)."""
        coll, iset = self._ready(name)
        return Selection(np.intersect1d(self._matching(coll, flt), iset.all_ids()))

    @staticmethod
    def _check_alive(coll: _Collection) -> None:
        if coll.dropped:
            raise NotFound(f"collection {coll.name!r} not found")

    @staticmethod
    def _resolve(coll: _Collection, ids: Sequence[Ext]) -> tuple[Ids, list[int]]:
        """Internal ids for `ids` (existing ones kept) and the positions that need a fresh one."""
        iids = np.empty(len(ids), dtype=np.int64)
        fresh = []
        for r, e in enumerate(ids):
            i = coll.iid_of.get(e)
            if i is None:
                fresh.append(r)
            else:
                iids[r] = i
        return iids, fresh

    @staticmethod
    def _committed(coll: _Collection, seq: int, ids: Sequence[Ext], iids: Ids, fresh: list[int]) -> None:
        coll.last_seq = seq
        for r in fresh:
            coll.iid_of[ids[r]] = int(iids[r])
            coll.ext_of[int(iids[r])] = ids[r]

    @staticmethod
    def _result(seq: int, future: Future[WriteStatus], n: int, wait: bool) -> WriteResult:
        return WriteResult(seq, future.result() if wait else "acknowledged", n)

    def _apply(self, coll: _Collection, seq: int, iids: Ids | None, X: F32 | None,
               removed: Ids | None) -> WriteStatus:
        """Runs on the collection's applier: one committed write into the IndexSet."""
        if coll.state != "ready" or coll.iset is None:
            return "rebuilding"  # the rebuild reads SQLite after this write was committed
        try:
            if removed is not None:
                coll.iset.remove(removed, seq)
                for i in removed.tolist():
                    coll.ext_of.pop(i, None)
            else:
                coll.iset.upsert(iids, X, seq)
        except Exception as exc:  # noqa: BLE001 -- whatever failed after COMMIT, the cure is a rebuild
            return self._apply_failed(coll, exc)
        self._written(coll, len(iids) if iids is not None else 0 if removed is None else len(removed))
        return "completed"

    def _apply_bulk(self, coll: _Collection, seq: int, n: int, kept: list[tuple[Ids, F32]] | None) -> WriteStatus:
        """A bulk write, chunk by chunk from memory (`kept`) or read back from SQLite (None), visible
        to searches all at once."""
        if coll.state != "ready" or coll.iset is None:
            return "rebuilding"
        try:
            with coll.gate.write():
                chunks = kept if kept is not None else self.store.rows(coll.cid, seq=seq, chunk=APPLY_CHUNK)
                for iids, X in chunks:
                    coll.iset.upsert(iids, X, seq)
        except Exception as exc:  # noqa: BLE001 -- whatever failed after COMMIT, the cure is a rebuild
            return self._apply_failed(coll, exc)
        self._written(coll, n)
        return "completed"

    def _apply_failed(self, coll: _Collection, exc: Exception) -> WriteStatus:
        log.error("index apply failed after commit; rebuilding the collection from SQLite", exc_info=exc,
                  extra={"fields": {"collection": coll.name}})
        coll.state, coll.error = "rebuilding", "an index write failed; rebuilding from SQLite"
        coll.applier.submit(self._rebuild, coll)
        return "rebuilding"

    # --- snapshots -------------------------------------------------------------------------------

    def _written(self, coll: _Collection, n: int) -> None:
        coll.since_snapshot += n
        if coll.since_snapshot >= self.settings.snapshot_every:
            self._schedule_snapshot(coll)

    def _schedule_snapshot(self, coll: _Collection, *, force: bool = False) -> None:
        if coll.snapshot_pending or self._closed or not (force or coll.since_snapshot):
            return
        coll.snapshot_pending = True
        try:
            self._snapshots.submit(self._snapshot, coll)
        except RuntimeError:  # shutting down: close() snapshots
            coll.snapshot_pending = False

    def _snapshot(self, coll: _Collection) -> None:
        iset = coll.iset
        try:
            if iset is None or coll.dropped or coll.state != "ready":
                return
            seq = iset.last_seq  # save() may include later writes; pruning up to this one is safe
            coll.since_snapshot = 0
            iset.save(self._snapshot_dir(coll.cid))
            coll.snapshot_seq = seq
            with coll.lock:
                if not coll.dropped:
                    with self.store.transaction() as tx:
                        tx.prune_deleted(coll.cid, seq)
        except Exception as exc:  # the snapshot is an optimisation; SQLite still has every write
            log.warning("index snapshot failed", exc_info=exc, extra={"fields": {"collection": coll.name}})
        finally:
            coll.snapshot_pending = False

    def snapshot_all(self) -> None:
        """Snapshot every ready collection now (tests, and before a planned restart)."""
        for coll in list(self._collections.values()):
            self._snapshot(coll)

    # --- collection snapshots to take away (service/snapshots.py owns the archive) ----------------

    @contextmanager
    def writes_held(self, name: str) -> Iterator[HeldCollection]:
        """The collection at a consistent point: inside the block no write to it starts, and every
        committed write has been applied to its indexes. `iset` is None (with the reason) when the
        indexes are not those of the committed state (rebuilding, or an index still building)."""
        coll = self._get(name)
        with coll.lock:
            self._check_alive(coll)
            coll.applier.submit(lambda: None).result()  # the applier runs writes in order: all applied
            iset, reason = coll.iset, None
            building = sorted(k for k, st in coll.indexes.items() if st.status == "building")
            if coll.state != "ready" or iset is None or iset.last_seq != coll.last_seq:
                iset, reason = None, f"the collection was {coll.state} when the snapshot was taken"
            elif building:
                iset, reason = None, f"index {', '.join(building)} was still building"
            yield HeldCollection(coll.cid, coll.name, coll.config, _index_list(coll), coll.last_seq,
                                 len(coll.iid_of), iset, reason)

    def restore_collection(self, name: str, config: CollectionConfig, indexes: list[dict[str, Any]],
                           last_seq: int, fill: Callable[[Transaction, int], int],
                           place: Callable[[Path, int], IndexSet] | None) -> CollectionInfo:
        """Create `name` (or replace it when it exists empty with the same config) from a snapshot in
        ONE transaction: `fill(tx, cid)` writes the points and returns the offset added to their
        internal ids; then `place(directory, offset)` writes the index snapshot and returns its set
        (None, or a failure: the indexes are rebuilt from SQLite), and the collection loads as at a
        start."""
        _check_name(name)
        old = self._collections.get(name)
        if old is not None and not old.loaded.wait(LOAD_WAIT):
            raise StorageError(f"collection {name!r} is still loading; retry shortly")
        # the collection's lock before the registry's, as delete_collection takes them
        with old.lock if old is not None else nullcontext(), self._registry:
            if self._collections.get(name) is not old:
                raise Conflict(f"collection {name!r} was created or deleted meanwhile; retry")
            if old is not None:
                if old.iid_of:
                    raise Conflict(f"collection {name!r} holds {len(old.iid_of)} points: restore into a new "
                                   "or empty collection (delete it first, or give another name)")
                if old.config != config:
                    raise Conflict(f"collection {name!r} exists (empty) with a different configuration: "
                                   + "; ".join(old.config.differences(config)))
            states = {}
            for d in indexes:
                spec = IndexSpec.from_dict(d["spec"])
                states[spec.key] = IndexState(spec, d["status"], 1.0 if d["status"] == "ready" else 0.0,
                                              d.get("error"))
            with self.store.transaction() as tx:
                if old is not None:
                    tx.drop_collection(old.cid)
                cid = tx.create_collection(name, config.to_dict(), indexes)
                offset = fill(tx, cid)
                tx.set_last_seq(cid, last_seq)
            if old is not None:
                old.dropped = True
                if old._applier is not None:
                    old._applier.shutdown(wait=False)
                shutil.rmtree(self._snapshot_dir(old.cid), ignore_errors=True)
            coll = _Collection(cid, name, config, states, last_seq)
            self._collections[name] = coll  # requests wait for `loaded` (LOAD_WAIT), as at a start
        preloaded: dict[int, IndexSet] = {}
        try:
            if place is not None:
                preloaded[cid] = place(self._snapshot_dir(cid), offset)
        except Exception as exc:  # the points are committed; the indexes are rebuilt from them
            log.warning("restored index snapshot unusable, rebuilding from SQLite", exc_info=exc,
                        extra={"fields": {"collection": name}})
            shutil.rmtree(self._snapshot_dir(cid), ignore_errors=True)
        self._load_all([StoredCollection(cid, name, config.to_dict(), indexes, last_seq)], preloaded)
        return self._info(coll)

    # --- reading ---------------------------------------------------------------------------------

    def get_points(self, name: str, ids: Sequence[Ext], *, with_vector: bool = True,
                   with_payload: bool = True) -> list[Point | None]:
        """The stored points for `ids` in order, None where an id is unknown (read from SQLite: a
        committed write is visible here even before its index apply)."""
        coll = self._get(name)
        iids = [coll.iid_of.get(e) for e in ids]
        found = self.store.points(coll.cid, [i for i in iids if i is not None], vector=with_vector,
                                  payload=with_payload)
        out: list[Point | None] = []
        for e, i in zip(ids, iids):
            sp = found.get(i) if i is not None else None
            out.append(None if sp is None else Point(e, sp.vector, sp.payload))
        return out

    def scroll(self, name: str, offset: int | None, limit: int, *, with_vector: bool = False,
               with_payload: bool = True, filter: filters.Filter | None = None) -> tuple[list[Point], int | None]:
        """Up to `limit` points from cursor `offset` (None: the start) and the next cursor (None: done);
        with `filter`, the points it matches."""
        coll = self._get(name)
        if filter is not None:
            iids = self._matching(coll, filter)
            page = iids[iids >= (offset or 0)][:limit + 1].tolist()
            found = self.store.points(coll.cid, page, vector=with_vector, payload=with_payload)
            rows = [found[i] for i in page if i in found]
        else:
            rows = self.store.scroll(coll.cid, offset or 0, limit + 1, vector=with_vector, payload=with_payload)
        nxt = rows[limit].iid if len(rows) > limit else None
        return [Point(r.ext, r.vector, r.payload) for r in rows[:limit]], nxt

    def vector(self, name: str, ext: Ext) -> F32:
        """The indexed float32 vector of one point; NotFound if absent."""
        coll, iset = self._ready(name)
        iid = coll.iid_of.get(ext)
        if iid is None:
            raise NotFound(f"point {ext!r} not found in collection {name!r}")
        return iset.vectors(np.array([iid]))[0]

    def payload_values(self, name: str, ids: Sequence[Ext], key: str) -> list[Any]:
        """The value of payload field `key` of each point of `ids`, None where the point, its payload or
        the field is missing (read from SQLite): the labels of an evaluation (issue 14)."""
        coll = self._get(name)
        iids = [coll.iid_of.get(e) for e in ids]
        found = self.store.points(coll.cid, [i for i in iids if i is not None], vector=False, payload=True)
        rows = [found.get(i) if i is not None else None for i in iids]
        return [r.payload.get(key) if r is not None and isinstance(r.payload, dict) else None for r in rows]

    def evaluate_data(self, name: str, sample: int, seed: int,
                      selection: Selection | None = None) -> tuple[list[Ext], F32]:
        """`sample` points drawn uniformly without replacement (seeded; all of them if sample >= count),
        in insertion order: their ids and float32 rows; drawn from `selection` when given."""
        coll, iset = self._ready(name)
        for attempt in range(3):
            with coll.gate.read():
                ids = np.sort(iset.all_ids())
                if selection is not None:
                    ids = np.intersect1d(ids, selection.iids)
                if sample < ids.size:
                    ids = np.sort(np.random.default_rng(seed).choice(ids, size=sample, replace=False))
                try:
                    X = iset.vectors(ids)
                except NotFound:  # a delete landed between the two reads: draw again
                    if attempt == 2:
                        raise
                    continue
            exts = [coll.ext_of.get(i) for i in ids.tolist()]
            if None not in exts:
                return exts, X  # type: ignore[return-value]
        raise StorageError(f"collection {name!r} changed under the sample three times; retry")

    # --- search ----------------------------------------------------------------------------------

    def search(self, name: str, queries: Sequence[Query]) -> list[SearchResult]:
        """Answer each query; queries with the same index, k and exactness go to FAISS together."""
        coll, iset = self._ready(name)
        if not queries:
            return []
        picked: dict[tuple[Any, Any, Any], IndexSpec] = {}  # a batch mostly asks one index
        plans = [self._plan(coll, iset, q, f"searches.{i}." if len(queries) > 1 else "", picked)
                 for i, q in enumerate(queries)]
        groups: dict[tuple[str, int, bool, filters.Filter | None], list[int]] = {}
        for i, (q, (spec, _, _)) in enumerate(zip(queries, plans)):
            groups.setdefault((spec.key, q.k, q.exact, q.filter), []).append(i)
        # each distinct filter resolved once, from the payload index, before taking a search slot
        allowed = {f: self._matching(coll, f) for f in {q.filter for q in queries} if f is not None}
        answers: list[tuple[Hits, float] | None] = [None] * len(queries)
        with self._search_slots, coll.gate.read():
            for (_, k, exact, flt), members in groups.items():
                spec = plans[members[0]][0]
                Q = np.stack([plans[i][1] for i in members])
                started = time.perf_counter()
                hits = iset.search(spec.metric, Q, k, temperature=spec.temperature, kind=spec.kind,
                                   exact=exact, exclude=[plans[i][2] for i in members],
                                   allowed=None if flt is None else allowed[flt])
                seconds = time.perf_counter() - started
                for i, h in zip(members, hits):
                    answers[i] = (h, seconds)
        return self._results(coll, queries, plans, answers)

    def _plan(self, coll: _Collection, iset: IndexSet, q: Query, prefix: str,
              picked: dict[tuple[Any, Any, Any], IndexSpec]) -> tuple[IndexSpec, npt.NDArray[np.float64], int | None]:
        """(the index to ask, the query vector, the internal id to leave out)."""
        if isinstance(q.k, bool) or not isinstance(q.k, int) or q.k < 1:
            raise InvalidInput(f"{prefix}k", f"must be a whole number >= 1, got {q.k!r}")
        if q.k > self.settings.max_k:
            raise LimitExceeded(f"{prefix}k", f"at most {self.settings.max_k} (LOGITSEARCH_MAX_K), got {q.k}")
        key = (q.metric, q.temperature, q.kind)
        spec = picked.get(key)
        if spec is None:
            spec = picked[key] = self._pick(coll, q, prefix)
        exclude = None
        if (q.vector is None) == (q.id is None):
            raise InvalidInput(f"{prefix}vector", "give exactly one of vector and id")
        if q.id is not None:
            iid = coll.iid_of.get(q.id)
            if iid is None or not bool(iset.contains(np.array([iid]))[0]):
                raise NotFound(f"point {q.id!r} not found in collection {coll.name!r}")
            vector = iset.vectors(np.array([iid]))[0].astype(np.float64)
            exclude = iid
        else:
            vector = np.asarray(q.vector, dtype=np.float64)
            if vector.shape != (coll.config.dim,):
                raise InvalidInput(f"{prefix}vector", f"expected dimension {coll.config.dim}, got {vector.shape[-1]}")
            if not np.isfinite(vector).all():
                raise InvalidInput(f"{prefix}vector", "contains NaN or infinity; logits must be finite")
        return spec, vector, exclude

    def _pick(self, coll: _Collection, q: Query, prefix: str) -> IndexSpec:
        """The index for (metric, temperature, kind), with errors that list what is indexed."""
        ready = coll.ready_specs()
        metric = q.metric if q.metric is not None else (ready[0].metric if ready else coll.config.metrics[0])
        if metric not in INDEX_METRICS:
            raise InvalidInput(f"{prefix}metric", f"unknown metric {metric!r}; indexable: {', '.join(INDEX_METRICS)}")
        building = [s.spec for s in coll.indexes.values() if s.status == "building"]
        same = [s for s in ready if s.metric == metric]
        if not same:
            self._if_building(building, metric, q.temperature, q.kind)
            raise InvalidInput(f"{prefix}metric", f"no {metric} index; indexed metrics: {sorted({s.metric for s in ready})}")
        if metric in ("tri", "ced"):
            temps = sorted({s.temperature for s in same if s.temperature is not None})
            t = q.temperature
            if t is None:
                if len(temps) != 1:
                    raise InvalidInput(f"{prefix}temperature", f"required for {metric}; indexed temperatures: {temps}")
                t = temps[0]
            t = check_temperature(t, f"{prefix}temperature")
            same = [s for s in same if s.temperature is not None and math.isclose(s.temperature, t, rel_tol=1e-9)]
            wanted = f"{metric} index at t={t:g}"
            if not same:
                self._if_building(building, metric, t, q.kind)
                raise InvalidInput(f"{prefix}temperature", f"no {wanted}; indexed temperatures for {metric}: {temps}")
        else:
            if q.temperature is not None:
                raise InvalidInput(f"{prefix}temperature", f"{metric} is computed over raw logits: leave it out")
            t, wanted = None, f"{metric} index"
        if q.kind is None:
            return min(same, key=lambda s: KINDS.index(s.kind))
        for s in same:
            if s.kind == q.kind:
                return s
        self._if_building(building, metric, t, q.kind)
        raise InvalidInput(f"{prefix}kind", f"no {q.kind} {wanted}; indexed kinds: {sorted(s.kind for s in same)}")

    @staticmethod
    def _if_building(building: list[IndexSpec], metric: str, t: float | None, kind: str | None) -> None:
        for s in building:
            if s.metric == metric and (kind is None or s.kind == kind) and (
                    t is None or (s.temperature is not None and math.isclose(s.temperature, t, rel_tol=1e-9))):
                raise Conflict(f"index {s.key} is still building; GET .../indexes shows its progress")

    def _results(self, coll: _Collection, queries: Sequence[Query],
                 plans: list[tuple[IndexSpec, Any, int | None]],
                 answers: list[tuple[Hits, float] | None]) -> list[SearchResult]:
        extra = [i for i, (q, a) in enumerate(zip(queries, answers)) if a and (q.with_payload or q.with_vector)]
        wanted = {int(i) for r in extra for i in answers[r][0].ids.tolist()} if extra else set()  # type: ignore[index]
        stored = self.store.points(coll.cid, sorted(wanted), vector=any(queries[r].with_vector for r in extra),
                                   payload=any(queries[r].with_payload for r in extra)) if wanted else {}
        out = []
        ext_of = coll.ext_of
        for q, (spec, _, _), answer in zip(queries, plans, answers):
            if answer is None:  # cannot happen: every query is in one group
                raise StorageError("search lost a query")
            hits, seconds = answer
            iids, dists = hits.ids.tolist(), hits.distances.tolist()
            exts = list(map(ext_of.get, iids))
            if None in exts:  # deleted while this search ran
                keep = [e is not None for e in exts]
                iids, exts, dists = ([v for v, ok in zip(col, keep) if ok] for col in (iids, exts, dists))
            payloads = vectors = None
            if q.with_payload or q.with_vector:
                rows = [stored.get(iid) for iid in iids]
                if q.with_payload:
                    payloads = [r.payload if r is not None else None for r in rows]
                if q.with_vector:
                    vectors = [r.vector if r is not None else None for r in rows]
            out.append(SearchResult(spec.metric, spec.temperature, spec.key, spec.kind, hits.how, q.k, exts, dists,
                                    seconds, payloads, vectors, hits.matched))
        return out


def _check_name(name: str) -> None:
    ok = 1 <= len(name) <= 128 and name[0].isalnum() and all(c.isalnum() or c in "._-" for c in name) \
        and name.isascii()
    if not ok:
        raise InvalidInput("name", "1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit; "
                                   f"got {name!r}")


def _public_reason(exc: BaseException) -> str:
    """What may be shown to clients about an internal failure (our own messages only)."""
    return str(exc) if isinstance(exc, LogitsearchError) else f"internal error ({type(exc).__name__})"


def known_formula(metric: str) -> tuple[str, str]:
    """(formula, units) of an indexable metric, from core.metrics."""
    m = METRICS[metric]
    return m.formula, m.units
