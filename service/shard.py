"""One collection shard: its points in SQLite, its IndexSet, its applier, its snapshots, its id map.

The unit that can live in another process (issue 12; Ray actors in issue 13). Its public methods
take and return plain data: numpy arrays, dicts, lists and small frozen dataclasses. Nothing lazy
crosses (a bulk ingest arrives chunk by chunk through `bulk_begin`/`bulk_chunk`/`bulk_commit`), and
no lock or thread does. The catalog (service/catalog.py) owns the collection's config, desired
indexes and committed write sequence; the shard is told them at `load` and `configure`, and reports
its builds' outcomes to the `on_index` listener it was made with.

A write answers "acknowledged" once committed; with keep=True, `applied(seq)` then waits for its
apply and says how it went. Writes to one shard are serialised by its caller (the coordinator's per-collection write lock).
One SQLite transaction per request; only after COMMIT do the id map and the applier see it.
The applier (one thread) applies writes to the IndexSet in sequence order. If an apply fails after
commit the shard rebuilds from SQLite (searches answer 503 meanwhile) rather than serve an index that
lacks an acknowledged write. Searches run concurrently; a bulk ingest is applied in chunks under the
shard's gate so a search sees all of it or none of it (a JSON upsert is one IndexSet call, atomic by
itself). Index snapshots go to the shard's own directory; at start the shard loads the snapshot and
replays the writes after it from SQLite, or rebuilds from SQLite when the snapshot is unusable.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput, LogitsearchError, NotFound, StorageError
from indexes.knn import Hits, IndexSet, IndexSpec, RWLock, Stage
from indexes.table import PositionMap
from service import filters
from service.catalog import CollectionConfig, IndexStatus
from service.idmap import IdMap
from service.memory import release_memory
from service.store import Ext, Store, StoredPoint, Transaction

log = logging.getLogger("logitsearch.shard")

F32 = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]
State = Literal["loading", "ready", "rebuilding", "failed"]
WriteStatus = Literal["completed", "acknowledged", "rebuilding"]

#: rows per IndexSet call when a bulk ingest is applied
APPLY_CHUNK = 16384
#: bytes of rows per SQLite read when a load or a rebuild reads the stored vectors. Each read's
#: rows arrive as one bytes object per row plus their join; at 16,384 rows x 384 (25 MB a read) the
#: server kept a 48 MB heap region with ~33 MB resident after 3 of 5 restarts, 0.2 x the rows' size
#: beyond the table (issue 16, benchmarks/footprint.py); at 8 MiB a read it keeps none.
LOAD_READ_BYTES = 8 * 2**20
#: a bulk ingest up to this many bytes of rows is applied from memory; a larger one is read back from SQLite
BULK_KEEP_BYTES = 256 * 1024 * 1024
#: filters whose matching points a shard keeps, each valid until the shard's next write
SELECTION_CACHE = 64

#: (index key, spec, status, error): a build finished (ready or failed)
IndexListener = Callable[[str, IndexSpec, IndexStatus, "str | None"], None]


def public_reason(exc: BaseException) -> str:
    """What may be shown to clients about an internal failure (our own messages only)."""
    return str(exc) if isinstance(exc, LogitsearchError) else f"internal error ({type(exc).__name__})"


# --- plain-data results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    id: Ext
    vector: F32 | None
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class WriteResult:
    operation_id: int
    status: WriteStatus
    count: int


@dataclass(frozen=True)
class ShardStatus:
    """What the shard can say of itself: its state, committed and indexed points, and per built or
    building index its vectors and build progress (0..1)."""

    state: State
    error: str | None
    points: int
    applied_seq: int
    vectors: dict[str, int]
    progress: dict[str, float]


@dataclass(frozen=True)
class SearchGroup:
    """Queries that ask one index with the same k, exactness and filter (a batch asks few).

    `stage` and `within` are IndexSet.search's: a sharded collection asks "first", judges the
    certificates against the merged k-th distances, and asks "second" only where they fail."""

    spec: IndexSpec
    Q: npt.NDArray[np.float64]
    k: int
    exact: bool
    exclude: list[int | None]
    allowed: Ids | None
    stage: Stage = "all"
    within: npt.NDArray[np.float64] | None = None


@dataclass(frozen=True)
class Described:
    """The external ids of some internal ids (None: deleted since) and, when asked, their stored
    payloads and vectors, from SQLite."""

    exts: list[Ext | None]
    payloads: list[dict[str, Any] | None] | None
    vectors: list[F32 | None] | None


@dataclass(frozen=True)
class Held:
    """The shard while its writes are held (`CollectionShard.held`): the committed state, applied.
    `iset` is None (with the reason) when the indexes are not those of the committed state."""

    cid: int
    count: int
    iset: IndexSet | None
    rebuild_reason: str | None


@dataclass
class _Bulk:
    stack: ExitStack
    tx: Transaction
    seq: int
    seen: set[Ext]
    ranges: list[range]  # chunks whose ids were a range: seen too
    fresh: list[tuple[Sequence[Ext], Ids, list[int]]]  # per chunk: its ids, iids and new rows
    kept: list[tuple[Ids, F32]] | None
    rows: int = 0


def _assign(tx: Transaction, iids: Ids, fresh: Sequence[int], candidates: Sequence[int] | None) -> None:
    """Internal ids for the rows `fresh` new to the shard: their `candidates` (one per row of the
    request), or consecutive ones from this shard's store."""
    if not fresh:
        return
    if candidates is not None:
        for r in fresh:
            iids[r] = int(candidates[r])
        return
    start = tx.allocate(len(fresh))
    for j, r in enumerate(fresh):
        iids[r] = start + j


def _check_unique(bulk: _Bulk, ids: Sequence[Ext]) -> None:
    """InvalidInput unless `ids` are new to the bulk write; then they are seen. Ranges of ids
    (`?start=`) are kept as ranges, not as a set of one Python int per row."""
    n, ranges = bulk.rows, bulk.ranges

    def duplicate(e: Ext, row: int) -> InvalidInput:
        return InvalidInput("ids", f"duplicate id {e!r} (row {n + row}); ids must be unique")

    if isinstance(ids, range) and ids.step == 1:
        firsts = [max(ids.start, r.start) for r in ranges if r and ids.start < r.stop and r.start < ids.stop]
        firsts += [e for e in bulk.seen if type(e) is int and e in ids]
        if ids and firsts:
            first = min(firsts)
            raise duplicate(first, first - ids.start)
        ranges.append(ids)
        return
    for j, e in enumerate(ids):
        # a str is never in a range (and `in` would scan the range for one)
        if e in bulk.seen or (type(e) is int and any(e in r for r in ranges)):
            raise duplicate(e, j)
        bulk.seen.add(e)


# --- the shard -------------------------------------------------------------------------------------


class CollectionShard:
    """One collection's points and indexes (one shard of it, when there are several)."""

    def __init__(self, cid: int, name: str, config: CollectionConfig, store: Store, directory: Path, *,
                 snapshot_every: int, on_index: IndexListener,
                 snapshots: ThreadPoolExecutor | None = None) -> None:
        self.cid, self.name = cid, name
        self._config = config
        self._store = store
        self._dir = Path(directory)
        self._snapshot_every = snapshot_every
        self._on_index = on_index
        self._snapshots = snapshots if snapshots is not None else ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        self._iset: IndexSet | None = None
        self._state: State = "loading"
        self._error: str | None = None
        self._ids = IdMap()
        self._lock = threading.RLock()
        self._counting = threading.Lock()  # only for _searched
        # searches share it; a bulk apply takes it alone, so a search sees all of a bulk ingest or none
        self._gate = RWLock()
        self._loaded = threading.Event()
        self._dropped = False
        self._closed = False
        self._since_snapshot = 0
        self._snapshot_seq = -1
        self._snapshot_pending = False
        self._applier: ThreadPoolExecutor | None = None
        self._builds: dict[str, float] = {}  # key -> progress of a build in flight
        self._bulks: dict[int, _Bulk] = {}
        self._outcomes: dict[int, Future[WriteStatus]] = {}  # seq -> its apply, for `applied`
        self._bulk_ids = itertools.count(1)
        # filter -> (the shard's write sequence then, the matching iids): a repeated filter (one
        # class, one photo) skips the payload index until the next write
        self._selections: dict[filters.Filter, tuple[int, Ids]] = {}
        # bumped at each commit: the selection cache's validity
        self._version = 0
        # stage -> queries searched at that stage (`searches`)
        self._searched: dict[str, int] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def _apply(self) -> ThreadPoolExecutor:
        if self._applier is None:
            self._applier = ThreadPoolExecutor(1, thread_name_prefix=f"apply-{self.cid}")
        return self._applier

    def load(self, ready: Sequence[IndexSpec], building: Sequence[IndexSpec], last_seq: int,
             preloaded: IndexSet | None = None) -> None:
        """Recover from this shard's own files: the index snapshot (or `preloaded`, a restore's)
        plus the writes after it from SQLite, or a rebuild from SQLite; then restart the builds the
        last run did not finish. Never raises: a failure leaves the shard `failed`, with the reason."""
        started = time.perf_counter()
        try:
            with self._lock:
                self._ids = IdMap.of(*self._store.ext_id_arrays(self.cid))
                iset = preloaded if preloaded is not None else self._open_snapshot(last_seq)
                if iset is not None:
                    try:
                        self._replay(iset, last_seq, ready)
                    except StorageError:
                        raise  # SQLite itself failed: a rebuild would read the same
                    except Exception as exc:  # a snapshot that cannot take the replay is rebuilt
                        log.warning("replay onto the snapshot failed, rebuilding from SQLite", exc_info=exc,
                                    extra={"fields": {"collection": self.name}})
                        iset = None
                if iset is None:
                    iset = self._build_from_store(last_seq, ready)
                self._iset, self._state = iset, "ready"
            for spec in building:  # builds the last run did not finish
                self.build(spec)
            release_memory()
            log.info("collection loaded", extra={"fields": {
                "collection": self.name, "points": iset.count,
                "seconds": round(time.perf_counter() - started, 3)}})
        except Exception as exc:  # one damaged collection must not keep the others from loading
            self._state, self._error = "failed", public_reason(exc)
            log.error("collection failed to load", exc_info=exc, extra={"fields": {"collection": self.name}})
        finally:
            self._loaded.set()

    def start_empty(self, specs: Sequence[IndexSpec]) -> None:
        """A new collection: no points, the indexes of its config, ready at once."""
        self._iset, self._state = IndexSet(self._config.dim, list(specs)), "ready"
        shutil.rmtree(self._dir, ignore_errors=True)
        self._loaded.set()

    def wait_loaded(self, timeout: float) -> bool:
        return self._loaded.wait(timeout)

    def close(self) -> None:
        """Finish queued index writes, then snapshot what changed since the last snapshot."""
        self._closed = True
        if self._applier is not None:
            self._applier.shutdown(wait=True)
        iset = self._iset
        if self._state == "ready" and iset is not None and not self._builds and iset.last_seq != self._snapshot_seq:
            self._snapshot()

    def drop(self) -> None:
        """The collection is gone (its rows went in the transaction that dropped it)."""
        self._dropped = True
        if self._applier is not None:
            self._applier.shutdown(wait=False)
        shutil.rmtree(self._dir, ignore_errors=True)

    def configure(self, config: CollectionConfig) -> None:
        """The catalog's config changed (payload keys)."""
        self._config = config

    def status(self) -> ShardStatus:
        iset = self._iset
        vectors = {s.key: iset.count for s in iset.specs()} if iset is not None else {}
        return ShardStatus(self._state, self._error, len(self._ids), iset.last_seq if iset is not None else -1,
                           vectors, dict(self._builds))

    def ready(self) -> IndexSet:
        """The IndexSet, or StorageError (503) while loading, rebuilding or failed."""
        iset = self._iset
        if self._state != "ready" or iset is None:
            why = self._error or "its indexes are being rebuilt from SQLite"
            raise StorageError(f"collection {self.name!r} is {self._state}: {why}")
        return iset

    # --- loading and rebuilding ------------------------------------------------------------------

    def _open_snapshot(self, last_seq: int) -> IndexSet | None:
        if not self._dir.exists():
            return None
        try:
            iset = IndexSet.load(self._dir, rows=self._stored_rows)
        except StorageError as exc:
            log.warning("index snapshot unusable, rebuilding from SQLite",
                        extra={"fields": {"collection": self.name, "reason": str(exc)}})
            return None
        if iset.dim != self._config.dim or iset.last_seq > last_seq:
            log.warning("index snapshot does not match SQLite, rebuilding", extra={"fields": {
                "collection": self.name, "snapshot_seq": iset.last_seq, "sqlite_seq": last_seq}})
            return None
        return iset

    def _load_chunk(self) -> int:
        """Rows per SQLite read of a load or a rebuild: LOAD_READ_BYTES of float32 rows."""
        return max(64, LOAD_READ_BYTES // (4 * self._config.dim))

    def _stored_rows(self, ids: Ids, seq: int) -> F32:
        """The rows of a lean snapshot's `ids` (taken at write `seq`), from SQLite: its one copy of
        each vector (issue 16). A row written after `seq` comes as it is now (the replay writes it
        again); one deleted after `seq` as zeros (the replay removes it). StorageError (the snapshot
        is then rebuilt from SQLite) when an id is neither stored nor deleted after `seq`."""
        n = ids.size
        out = np.zeros((n, self._config.dim), dtype=np.float32)
        seen = np.zeros(n, dtype=bool)
        where = PositionMap.of(ids)  # each id's place in `ids`
        for iids, X in self._store.rows(self.cid, chunk=self._load_chunk()):
            pos = where.get(iids)
            hit = pos >= 0
            out[pos[hit]], seen[pos[hit]] = X[hit], True
        missing = ids[~seen]
        if missing.size and not np.isin(missing, self._store.deleted_after(self.cid, seq)).all():
            raise StorageError(f"the index snapshot holds {missing.size} points the database has not")
        return out

    def _replay(self, iset: IndexSet, last_seq: int, ready: Sequence[IndexSpec]) -> None:
        """Bring a snapshot up to SQLite: the deletes and writes after its sequence, then its indexes."""
        since = self._snapshot_seq = iset.last_seq
        iset.remove(self._store.deleted_after(self.cid, since), last_seq)
        for iids, X in self._store.rows(self.cid, after=since, chunk=self._load_chunk()):
            iset.upsert(iids, X, last_seq)
        iset.remove(np.empty(0, np.int64), last_seq)  # last_seq even when nothing was replayed
        want = {s.key: s for s in ready}  # the snapshot holds exactly the ready indexes
        for spec in iset.specs():
            if want.get(spec.key) != spec:
                iset.drop_index(spec.key)
        have = {s.key for s in iset.specs()}
        for key, spec in want.items():
            if key not in have:
                iset.add_index(spec)

    def _build_from_store(self, upto: int, ready: Sequence[IndexSpec]) -> IndexSet:
        """A fresh IndexSet from the points in SQLite up to write `upto`, with the `ready` indexes."""
        iset = IndexSet(self._config.dim)
        iset.reserve(self._store.count(self.cid))
        for iids, X in self._store.rows(self.cid, upto=upto, chunk=self._load_chunk()):
            iset.upsert(iids, X, upto)
        iset.remove(np.empty(0, np.int64), upto)
        for spec in ready:
            iset.add_index(spec)
        return iset

    def _rebuild(self, ready: list[IndexSpec]) -> None:
        """Runs on the applier after a failed apply: every write queued before it is in SQLite."""
        try:
            self._iset = self._build_from_store(self._store.last_seq(self.cid), ready)
            self._state, self._error = "ready", None
            log.info("collection rebuilt from SQLite", extra={"fields": {"collection": self.name}})
        except Exception as exc:
            self._state, self._error = "failed", public_reason(exc)
            log.error("collection rebuild failed", exc_info=exc, extra={"fields": {"collection": self.name}})

    # --- writing ---------------------------------------------------------------------------------

    def upsert(self, ids: Sequence[Ext], X: F32, payloads: Sequence[str | None] | None = None,
               *, keep: bool = False, candidates: Sequence[int] | None = None) -> WriteResult:
        """Insert or replace points; `X` float32 (n, dim), already checked; ids unique; payloads as JSON.
        `candidates`: an internal id per row, taken by the rows new to this shard (issue 13: the
        coordinator of a sharded collection allocates them over all its shards); None: allocated here."""
        self.ready()
        if X.shape != (len(ids), self._config.dim):
            raise InvalidInput("vectors", f"expected shape ({len(ids)}, {self._config.dim}), got {X.shape}")
        with self._lock:
            self._check_alive()
            iids, fresh = self._ids.resolve(ids)
            with self._store.transaction() as tx:
                _assign(tx, iids, fresh, candidates)
                seq = tx.next_seq(self.cid)
                tx.put_points(self.cid, seq, iids.tolist(), ids, X, payloads, self._config.payload_index)
            self._version += 1
            self._ids.bind_rows(ids, iids, fresh)
            future = self._apply.submit(self._apply_one, seq, iids, X, None)
        return self._result(seq, future, len(ids), keep)

    def bulk_begin(self) -> int:
        """Open a bulk write (one transaction for all of its chunks); its handle. Chunks, commit and
        abort come from the same thread, and no other write to the shard runs meanwhile."""
        self.ready()
        self._check_alive()
        stack = ExitStack()
        try:
            tx = stack.enter_context(self._store.transaction())
            bulk = _Bulk(stack, tx, tx.next_seq(self.cid), set(), [], [], [])
        except BaseException:
            stack.close()
            raise
        handle = next(self._bulk_ids)
        self._bulks[handle] = bulk
        return handle

    def bulk_chunk(self, handle: int, ids: Sequence[Ext], X: F32, payloads: Sequence[str | None] | None,
                   candidates: Sequence[int] | None = None) -> None:
        """Add rows to an open bulk write (ids unique across the whole write); an error aborts it.
        `candidates`: internal ids for the new rows, as for `upsert`."""
        bulk = self._bulk(handle)
        try:
            _check_unique(bulk, ids)
            iids, fresh = self._ids.resolve(ids)
            _assign(bulk.tx, iids, fresh, candidates)
            bulk.fresh.append((ids, iids, fresh))
            bulk.tx.put_points(self.cid, bulk.seq, iids.tolist(), ids, X, payloads, self._config.payload_index)
            bulk.rows += len(X)
            if bulk.kept is not None:
                bulk.kept = bulk.kept + [(iids, X)] if bulk.rows * X.shape[1] * 4 <= BULK_KEEP_BYTES else None
        except BaseException as exc:
            self.bulk_abort(handle, exc)
            raise

    def bulk_commit(self, handle: int, *, keep: bool = False) -> WriteResult:
        """COMMIT an open bulk write, then apply it (visible to searches all at once)."""
        bulk = self._bulk(handle)
        if bulk.rows == 0:
            self.bulk_abort(handle)
            raise InvalidInput("body", "the matrix has no rows")
        del self._bulks[handle]
        bulk.stack.close()  # COMMIT (StorageError when it fails: nothing was written)
        with self._lock:
            self._version += 1
            for exts, iids, fresh in bulk.fresh:
                self._ids.bind_rows(exts, iids, fresh)
            future = self._apply.submit(self._apply_bulk, bulk.seq, bulk.rows, bulk.kept)
            bulk.kept = None
            # after the apply's chunks are freed (its work item holds them while it runs)
            self._apply.submit(release_memory)
        return self._result(bulk.seq, future, bulk.rows, keep)

    def bulk_abort(self, handle: int, exc: BaseException | None = None) -> None:
        """Roll back an open bulk write (nothing of it is written)."""
        bulk = self._bulks.pop(handle, None)
        if bulk is not None:
            err = exc if exc is not None else InvalidInput("bulk", "aborted")
            bulk.stack.__exit__(type(err), err, err.__traceback__)

    def _bulk(self, handle: int) -> _Bulk:
        bulk = self._bulks.get(handle)
        if bulk is None:
            raise InvalidInput("bulk", f"no open bulk write {handle}")
        return bulk

    def delete(self, ids: Sequence[Ext], *, keep: bool = False) -> WriteResult:
        """Delete points; unknown ids are ignored (count says how many existed)."""
        self.ready()
        with self._lock:
            self._check_alive()
            iids = np.array([i for i in self._ids.iids(ids) if i is not None], dtype=np.int64)
            with self._store.transaction() as tx:
                seq = tx.next_seq(self.cid)
                tx.delete_points(self.cid, seq, iids.tolist())
            self._version += 1
            self._ids.forget(ids)
            future = self._apply.submit(self._apply_one, seq, None, None, iids)
        return self._result(seq, future, int(iids.size), keep)

    def delete_matching(self, flt: filters.Filter, *, keep: bool = False) -> WriteResult:
        """Delete every point `flt` matches when the transaction runs (count: how many)."""
        self.ready()
        with self._lock:
            self._check_alive()
            with self._store.transaction() as tx:
                iids = tx.matching(self.cid, flt)
                seq = tx.next_seq(self.cid)
                tx.delete_points(self.cid, seq, iids.tolist())
            self._version += 1
            self._ids.forget_iids(iids.tolist())
            future = self._apply.submit(self._apply_one, seq, None, None, iids)
        return self._result(seq, future, int(iids.size), keep)

    def index_payloads(self, config: CollectionConfig, new: tuple[str, ...]) -> None:
        """Record `config` and back-fill the payload index for keys `new`, in one transaction."""
        self._reconfigure(config, lambda tx: tx.index_payloads(self.cid, new))

    def unindex_payloads(self, config: CollectionConfig, key: str) -> None:
        """Record `config` and drop the payload index rows of `key`, in one transaction."""
        self._reconfigure(config, lambda tx: tx.unindex_payloads(self.cid, key))

    def _reconfigure(self, config: CollectionConfig, change: Callable[[Transaction], None]) -> None:
        with self._lock:
            self._check_alive()
            with self._store.transaction() as tx:
                tx.set_config(self.cid, config.to_dict())
                change(tx)
            self._config = config

    def _check_alive(self) -> None:
        if self._dropped:
            raise NotFound(f"collection {self.name!r} not found")

    def _apply_one(self, seq: int, iids: Ids | None, X: F32 | None, removed: Ids | None) -> WriteStatus:
        """Runs on the applier: one committed write into the IndexSet."""
        iset = self._iset
        if self._state != "ready" or iset is None:
            return "rebuilding"  # the rebuild reads SQLite after this write was committed
        try:
            if removed is not None:
                iset.remove(removed, seq)
                self._ids.release(removed.tolist())
            else:
                iset.upsert(iids, X, seq)
        except Exception as exc:  # noqa: BLE001 -- whatever failed after COMMIT, the cure is a rebuild
            return self._apply_failed(iset, exc)
        self._written(len(iids) if iids is not None else 0 if removed is None else len(removed))
        return "completed"

    def _apply_bulk(self, seq: int, n: int, kept: list[tuple[Ids, F32]] | None) -> WriteStatus:
        """A bulk write, chunk by chunk from memory (`kept`) or read back from SQLite (None), visible
        to searches all at once."""
        iset = self._iset
        if self._state != "ready" or iset is None:
            return "rebuilding"
        try:
            with self._gate.write():
                chunks = kept if kept is not None else self._store.rows(self.cid, seq=seq, chunk=APPLY_CHUNK)
                iset.reserve(n)
                # every chunk but under the sequence before this write: a snapshot taken between two
                # chunks must not claim the whole write (its replay then brings all of it back)
                before = iset.last_seq
                for iids, X in chunks:
                    iset.upsert(iids, X, before)
                iset.remove(np.empty(0, np.int64), seq)
        except Exception as exc:  # noqa: BLE001 -- whatever failed after COMMIT, the cure is a rebuild
            return self._apply_failed(iset, exc)
        self._written(n)
        return "completed"

    def _apply_failed(self, iset: IndexSet, exc: Exception) -> WriteStatus:
        log.error("index apply failed after commit; rebuilding the collection from SQLite", exc_info=exc,
                  extra={"fields": {"collection": self.name}})
        self._state, self._error = "rebuilding", "an index write failed; rebuilding from SQLite"
        self._apply.submit(self._rebuild, iset.specs())
        return "rebuilding"

    def _result(self, seq: int, future: Future[WriteStatus], n: int, keep: bool) -> WriteResult:
        if keep:
            self._outcomes[seq] = future
        return WriteResult(seq, "acknowledged", n)

    def applied(self, seq: int) -> WriteStatus:
        """Wait for the apply of write `seq` (made with keep=True) and say how it ended."""
        future = self._outcomes.pop(seq, None)
        if future is None:
            raise InvalidInput("operation_id", f"write {seq} was not kept for waiting")
        return future.result()

    def settle(self) -> None:
        """Return once every write committed so far has been applied to the indexes."""
        self._apply.submit(lambda: None).result()

    # --- indexes ---------------------------------------------------------------------------------

    def build(self, spec: IndexSpec) -> None:
        """Start building `spec` in the background; `on_index` hears how it ended."""
        self._builds[spec.key] = 0.0
        threading.Thread(target=self._build, args=(spec,), name=f"build-{spec.key}", daemon=True).start()

    def _build(self, spec: IndexSpec) -> None:
        key = spec.key
        iset = self._iset
        try:
            if iset is None:
                raise StorageError("collection has no index set")

            def progress(p: float) -> None:
                if key in self._builds:
                    self._builds[key] = min(max(float(p), 0.0), 0.999)

            iset.add_index(spec, progress=progress)
            self._builds.pop(key, None)
            if self._dropped or self._iset is not iset:
                return
            self._on_index(key, spec, "ready", None)
            self._schedule_snapshot(force=True)
        except Exception as exc:
            self._builds.pop(key, None)
            log.error("index build failed", exc_info=exc, extra={"fields": {"collection": self.name, "index": key}})
            if not self._dropped:
                self._on_index(key, spec, "failed", public_reason(exc))

    def drop_index(self, key: str) -> None:
        """Stop serving the index `key` (the catalog has dropped it, or a finished build is unwanted)."""
        iset = self._iset
        if iset is not None and key in {s.key for s in iset.specs()}:
            iset.drop_index(key)

    # --- snapshots -------------------------------------------------------------------------------

    def _written(self, n: int) -> None:
        self._since_snapshot += n
        if self._since_snapshot >= self._snapshot_every:
            self._schedule_snapshot()

    def _schedule_snapshot(self, *, force: bool = False) -> None:
        if self._snapshot_pending or self._closed or not (force or self._since_snapshot):
            return
        self._snapshot_pending = True
        try:
            self._snapshots.submit(self._snapshot)
        except RuntimeError:  # shutting down: close() snapshots
            self._snapshot_pending = False

    def _snapshot(self) -> None:
        iset = self._iset
        try:
            if iset is None or self._dropped or self._state != "ready":
                return
            seq = iset.last_seq  # save() may include later writes; pruning up to this one is safe
            self._since_snapshot = 0
            iset.save(self._dir, lean=True)
            self._snapshot_seq = seq
            with self._lock:
                if not self._dropped:
                    with self._store.transaction() as tx:
                        tx.prune_deleted(self.cid, seq)
        except Exception as exc:  # the snapshot is an optimisation; SQLite still has every write
            log.warning("index snapshot failed", exc_info=exc, extra={"fields": {"collection": self.name}})
        finally:
            self._snapshot_pending = False

    def snapshot(self) -> None:
        """Snapshot the indexes now (tests, and before a planned restart)."""
        self._snapshot()

    @contextmanager
    def held(self, last_seq: int, building: Sequence[str]) -> Iterator[Held]:
        """The shard at a consistent point, for a collection snapshot: called with the caller's
        writes held, so every committed write (up to `last_seq`) is applied to its indexes once
        the applier is idle (`building`: the keys the catalog still has building). In-process only:
        the block gets the live IndexSet."""
        with self._lock:
            self._check_alive()
            self.settle()  # the applier runs writes in order: all applied
            iset, reason = self._iset, None
            if self._state != "ready" or iset is None or iset.last_seq != last_seq:
                iset, reason = None, f"the collection was {self._state} when the snapshot was taken"
            elif building:
                iset, reason = None, f"index {', '.join(building)} was still building"
            yield Held(self.cid, len(self._ids), iset, reason)

    # --- reading ---------------------------------------------------------------------------------

    def matching(self, flt: filters.Filter) -> Ids:
        """The iids of the committed points `flt` matches (sorted, read-only)."""
        filters.check_declared(flt, self._config.payload_index, self.name)
        seq = self._version  # read before SQLite: a later write only makes it older
        hit = self._selections.get(flt)
        if hit is not None and hit[0] == seq:
            return hit[1]
        iids = self._store.matching(self.cid, flt)
        iids.flags.writeable = False
        with self._lock:
            if len(self._selections) >= SELECTION_CACHE:
                self._selections.pop(next(iter(self._selections)), None)
            self._selections[flt] = (seq, iids)
        return iids

    def select(self, flt: filters.Filter) -> Ids:
        """The indexed points `flt` matches now (after every committed write is applied)."""
        iset = self.ready()
        self.settle()
        return np.intersect1d(self.matching(flt), iset.all_ids())

    def query_vector(self, ext: Ext) -> tuple[int, F32]:
        """(iid, indexed float32 vector) of a stored point; NotFound if absent."""
        iset = self.ready()
        iid = self._ids.iid(ext)
        if iid is None or not bool(iset.contains(np.array([iid]))[0]):
            raise NotFound(f"point {ext!r} not found in collection {self.name!r}")
        return iid, iset.vectors(np.array([iid]))[0]

    def search(self, groups: Sequence[SearchGroup]) -> list[list[Hits]]:
        """Each group's Hits (one per query, this shard's exact or approximate top-k), all against
        one state of the shard: a bulk ingest is in all of them or in none."""
        iset = self.ready()
        with self._gate.read():
            out = [iset.search(g.spec, g.Q, g.k, exact=g.exact, exclude=g.exclude, allowed=g.allowed,
                               stage=g.stage, within=None if g.within is None else g.within.tolist())
                   for g in groups]
        with self._counting:  # not self._lock: a writer holds that through its COMMIT
            for g in groups:
                self._searched[g.stage] = self._searched.get(g.stage, 0) + len(g.Q)
        return out

    def searches(self) -> dict[str, int]:
        """Queries this shard has searched since it started, by stage ("all"; "first" and "second"
        as one part of a merge): how often the coordinator needed a second round here."""
        with self._counting:
            return dict(self._searched)

    def describe(self, iids: Sequence[int], *, vector: bool, payload: bool) -> Described:
        """External ids of `iids` and, when asked, their stored payloads and vectors."""
        exts = self._ids.exts(iids)
        if payload and not vector and not self._store.may_hold_payloads(self.cid):
            return Described(exts, [None] * len(exts), None)
        if not (vector or payload):
            return Described(exts, None, None)
        stored = self._store.points(self.cid, sorted(set(iids)), vector=vector, payload=payload)
        rows = [stored.get(i) for i in iids]
        return Described(exts, [r.payload if r else None for r in rows] if payload else None,
                         [r.vector if r else None for r in rows] if vector else None)

    def get_points(self, ids: Sequence[Ext], *, with_vector: bool, with_payload: bool) -> list[Point | None]:
        """The stored points for `ids` in order, None where an id is unknown (from SQLite: a committed
        write is visible here even before its index apply)."""
        iids = self._ids.iids(ids)
        found = self._store.points(self.cid, [i for i in iids if i is not None], vector=with_vector,
                                   payload=with_payload)
        out: list[Point | None] = []
        for e, i in zip(ids, iids):
            sp = found.get(i) if i is not None else None
            out.append(None if sp is None else Point(e, sp.vector, sp.payload))
        return out

    def scroll(self, offset: int, limit: int, *, with_vector: bool, with_payload: bool,
               flt: filters.Filter | None) -> tuple[list[Point], int | None]:
        """Up to `limit` points from internal id `offset` on, and the next cursor (None: done)."""
        rows: list[StoredPoint]
        if flt is not None:
            iids = self.matching(flt)
            page = iids[iids >= offset][:limit + 1].tolist()
            found = self._store.points(self.cid, page, vector=with_vector, payload=with_payload)
            rows = [found[i] for i in page if i in found]
        else:
            rows = self._store.scroll(self.cid, offset, limit + 1, vector=with_vector, payload=with_payload)
        nxt = rows[limit].iid if len(rows) > limit else None
        return [Point(r.ext, r.vector, r.payload) for r in rows[:limit]], nxt

    def payload_values(self, ids: Sequence[Ext], key: str) -> list[Any]:
        """The value of payload field `key` of each point of `ids`, None where the point, its payload
        or the field is missing (from SQLite)."""
        iids = self._ids.iids(ids)
        found = self._store.points(self.cid, [i for i in iids if i is not None], vector=False, payload=True)
        rows = [found.get(i) if i is not None else None for i in iids]
        return [r.payload.get(key) if r is not None and isinstance(r.payload, dict) else None for r in rows]

    def indexed_ids(self) -> Ids:
        """The internal ids of every indexed point, sorted (insertion order), after every committed
        write is applied: what an evaluation samples from."""
        iset = self.ready()
        self.settle()
        with self._gate.read():
            return np.sort(iset.all_ids())

    def rows(self, iids: Ids) -> tuple[list[Ext | None], F32]:
        """External ids and indexed float32 rows of `iids` (NotFound: one was deleted meanwhile)."""
        iset = self.ready()
        with self._gate.read():
            X = iset.vectors(iids)
        return self._ids.exts(iids.tolist()), X

    def points(self) -> int:
        """Committed points (what GET .../collections/{name} reports as `count`)."""
        return len(self._ids)



