"""The coordinator: what the routes call. It plans (the one index picker), routes each request to
the collection's shard, merges the shards' answers and hydrates only the winners.

Parts (README "Architecture"): the catalog (service/catalog.py) owns the collections, their
configs, desired indexes and committed write sequence; each collection shard (service/shard.py)
owns its points, indexes, applier, snapshots and id map; this module owns neither, and asks them.
A collection has one in-process shard (the default), or `shards: n` Ray actors (issue 13,
service/ray_shards.py): writes are routed by a hash of each id and go in two phases (prepare on
every touched shard, commit in the catalog, publish), reads fan out to every shard in parallel and
merge, and any shard that does not answer makes the request a 503 naming it, never a silently
partial answer (a search with `allow_partial` answers from the live shards, and says which are missing).

A sharded search judges exactness globally (issue 13): each shard answers its own top k from one
certificate attempt (`stage="first"`), with the bound of what it left out (`Hits.bound`); the
coordinator merges them and judges every bound against the merged k-th distance
(`indexes.knn.certifies`), and asks again (`stage="second"`: a larger k', then a scan) only the shards
whose bound fails. A shard whose own certificate failed is spared when the merged k-th is nearer.

Writes to a collection are serialised here, by its write lock, held across the shard's commit and
the catalog's record of it: the catalog's sequence and the shard's state move together.
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
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from core.errors import Conflict, InvalidInput, LimitExceeded, NotFound, StorageError
from core.metrics import INDEXABLE, TEMPERED
from core.validate import check_temperature
from indexes.exact import topk
from indexes.inline import WouldBlock, must_not_wait, refuse
from indexes.knn import KINDS, Hits, IndexSet, IndexSpec, RWLock, certifies
from service import filters
from service.catalog import Catalog, CollectionConfig, Entry, IndexState, IndexStatus, check_name
from service.settings import Settings
from service.shard import (
    CollectionShard,
    Described,
    Point,
    SearchGroup,
    State,
    WriteResult,
)
from service.store import Ext, Store, Transaction

if TYPE_CHECKING:
    from core.evaluation import Rows
    from service.ray_shards import RayShards

log = logging.getLogger("logitsearch.coordinator")

F32 = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]

#: seconds a request waits for a collection that is still loading before answering 503
LOAD_WAIT = 10.0

__all__ = ["CollectionConfig", "CollectionInfo", "Coordinator", "HeldCollection", "Hit", "IndexInfo", "Point",
           "Query", "SearchResult", "Selection", "WriteResult", "merge_hits"]


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
    #: committed points: every write acknowledged so far (GET, /metrics and evaluation alike)
    count: int
    last_operation_id: int
    status: State
    indexes: list[IndexInfo]


@dataclass(frozen=True)
class HeldCollection:
    """A collection while its writes are held (`Coordinator.writes_held`)."""

    cid: int
    name: str
    config: CollectionConfig
    indexes: list[dict[str, Any]]
    last_seq: int
    count: int
    iset: IndexSet | None
    rebuild_reason: str | None
    #: a sharded collection: each shard's held part (count, last_seq, reason), fetched with
    #: `Coordinator.archive_parts` once the writes go on again
    parts: list[dict[str, Any]] | None = None
    token: int = 0


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
    """The points a filter matched in one collection (`Coordinator.select`), for an evaluation."""

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
    #: a partial answer (`allow_partial`): the shards that did not answer; their points are not in it
    missing: tuple[str, ...] = ()

    @property
    def hits(self) -> list[Hit]:
        n = len(self.ids)
        return [Hit(*h) for h in zip(self.ids, self.distances, self.payloads or [None] * n,
                                     self.vectors or [None] * n)]


#: how a merged answer was found: the weakest of its parts' ("unproven" only before they are judged)
_HOW_ORDER = ("certified", "scanned", "approximate", "unproven")


def merge_hits(parts: Sequence[Hits], k: int) -> Hits:
    """The k nearest of several shards' answers to one query (each its own top-k, trimmed).

    Ties at equal distance go to the smaller internal id, as within one index (indexes.exact.topk),
    so a split collection answers as the whole one does. `how` is the weakest of the parts'
    (approximate > scanned > certified); `matched` sums. The parts are judged first
    (`Coordinator._sharded_search`): a certificate holds for the merge when its bound beats the
    merged k-th distance (`kth`), which is at most any part's own."""
    if len(parts) == 1:
        return parts[0]
    width = max(1, max(p.ids.size for p in parts))
    D = np.full((1, width * len(parts)), np.inf)
    Iv = np.full((1, width * len(parts)), -1, dtype=np.int64)
    for j, p in enumerate(parts):
        D[0, j * width:j * width + p.ids.size] = p.distances
        Iv[0, j * width:j * width + p.ids.size] = p.ids
    ids, dists = topk(D, Iv, k)
    how = max((p.how for p in parts), key=_HOW_ORDER.index)
    matched = None if all(p.matched is None for p in parts) else sum(p.matched or 0 for p in parts)
    return Hits(ids[0], dists[0], how, matched)  # type: ignore[arg-type]


def kth(hits: Hits, k: int) -> float:
    """The k-th distance of a merged answer; inf when it has fewer than k hits (then any row left
    out of a part could belong)."""
    return float(hits.distances[k - 1]) if hits.distances.size >= k else math.inf


@dataclass(eq=False)
class _Member:
    """A collection's shards and the lock that serialises its writes."""

    shards: list[Any]  # CollectionShard, or RemoteShard (the same interface) when `remote`
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the shards are Ray actors (issue 13)
    remote: bool = False
    #: a sharded write failed midway: the next request first resolves what it left prepared
    suspect: bool = False
    #: why the collection cannot be served at all (sharded, but this server has no Ray)
    down: str | None = None
    #: sharded writes since commit records were last pruned
    writes: int = 0
    #: while `suspect`: the shards a partial heal could not reach (a partial search leaves them out)
    unresolved: frozenset[int] = frozenset()
    #: a write's publish on its shards holds this exclusively, a read's fan-out shares it: no read
    #: sees a write published on one shard and not yet on another (as one machine never shows half
    #: a write). Not reentrant: a read takes it once, after `_ready` has healed.
    visible: RWLock = field(default_factory=RWLock)
    #: being restored from a snapshot (service/snapshots.py): requests wait for the end (503)
    restoring: bool = False

    @property
    def shard(self) -> CollectionShard:
        """The in-process shard of an unsharded collection."""
        return self.shards[0]  # type: ignore[no-any-return]

    def owner(self, ext: Ext) -> Any:
        """The shard that holds `ext`."""
        if not self.remote:
            return self.shards[0]
        from service.ray_shards import shard_of

        return self.shards[shard_of(ext, len(self.shards))]


# --- the coordinator -------------------------------------------------------------------------------


class Coordinator:
    """Collections of one data directory: the catalog, and the shards of each collection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.store = Store(self.data_dir)
        self.catalog = Catalog(self.store)
        self._members: dict[str, _Member] = {}
        self._snapshots = ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        # as many searches at once as cores: more only oversubscribes the cores (each search already
        # runs FAISS/numba threads) and thrashes the GIL; the others wait here
        self._search_slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
        self._loader: threading.Thread | None = None
        self._closed = False
        self._ray: RayShards | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def open(self, *, background: bool = True) -> None:
        """Open SQLite and load every collection (in a background thread unless told otherwise)."""
        self.store.open()
        entries = self.catalog.load()
        if self.settings.ray_address:
            from service.ray_shards import RayShards

            self._ray = RayShards(self.settings.ray_address, self.data_dir, self.settings.snapshot_every,
                                  self.settings.ray_shard_cpus)
            self._ray.connect()
            self.catalog.open_commits()
        for e in entries:
            self._members[e.name] = self._open_member(e)
        if self._ray is not None:
            self._undo_restores()
            entries = [e for e in entries if e.name in self._members]
        self._remove_orphan_snapshots({e.cid for e in entries})
        if background:
            self._loader = threading.Thread(target=self._load_all, args=(entries,), name="loader", daemon=True)
            self._loader.start()
        else:
            self._load_all(entries)

    def _open_member(self, e: Entry) -> _Member:
        if e.config.shards is None:
            return _Member([self._new_shard(e)])
        if self._ray is None:
            return _Member([], remote=True, down=f"collection {e.name!r} has {e.config.shards} shards on Ray: "
                                                  "set LOGITSEARCH_RAY_ADDRESS to serve it")
        placement = self.catalog.placement(e.cid) or [self._ray.here()] * e.config.shards
        try:
            shards = self._ray.shards(e.name, e.cid, e.config, placement)
        except StorageError as exc:
            return _Member([], remote=True, down=str(exc))
        # the last run may have stopped between a prepare and a publish: resolved before any request
        return _Member(shards, remote=True, suspect=True)

    def close(self) -> None:
        """Finish queued index writes, snapshot what changed since the last snapshot, close SQLite."""
        self._closed = True
        if self._loader is not None:
            self._loader.join()
        for member in list(self._members.values()):
            for shard in member.shards:
                shard.close()
        self._snapshots.shutdown(wait=True)
        self.store.close()

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, collection -> state); a sharded collection is `unavailable` while a shard is down."""
        ready, states, _ = self.readiness_of_shards()
        return ready, states

    def readiness_of_shards(self) -> tuple[bool, dict[str, str], dict[str, str]]:
        """`readiness` and `shard_states`, asked once."""
        shards = self.shard_states()
        states: dict[str, str] = {}
        for name, m in list(self._members.items()):
            if not m.remote:
                states[name] = m.shard.status().state
            else:
                mine = [shards.get(f"{name}/shard-{j}", "unavailable") for j in range(max(1, len(m.shards)))]
                states[name] = next((st for st in mine if st != "ready"), "ready")
        return all(s not in ("loading", "unavailable") for s in states.values()), states, shards

    def shard_states(self) -> dict[str, str]:
        """`collection/shard-j` -> state of each Ray shard (`unavailable` while its actor is down)."""
        out: dict[str, str] = {}
        for name, m in list(self._members.items()):
            if not m.remote:
                continue
            refs = [(s, s.submit("call", "status")) for s in m.shards]
            for s, ref in refs:
                try:
                    out[s.label] = s.result(ref, 5.0).state
                except StorageError:
                    out[s.label] = "unavailable"
        return out

    def snapshot_all(self) -> None:
        """Snapshot every ready collection now (tests, and before a planned restart)."""
        for member in list(self._members.values()):
            for shard in member.shards:
                shard.snapshot()

    def _shard_dir(self, cid: int) -> Path:
        return self.data_dir / "indexes" / f"c{cid}"

    def _new_shard(self, entry: Entry) -> CollectionShard:
        name = entry.name

        def on_index(key: str, spec: IndexSpec, status: IndexStatus, error: str | None) -> None:
            self._index_built(name, [shard], key, spec, status, error)

        shard = CollectionShard(entry.cid, name, entry.config, self.store, self._shard_dir(entry.cid),
                                snapshot_every=self.settings.snapshot_every, on_index=on_index,
                                snapshots=self._snapshots)
        return shard

    def _remove_orphan_snapshots(self, cids: set[int]) -> None:
        root = self.data_dir / "indexes"
        if root.is_dir():
            for path in root.iterdir():
                if path.name.startswith("c") and path.name[1:].isdigit() and int(path.name[1:]) not in cids:
                    shutil.rmtree(path, ignore_errors=True)
        shards = self.data_dir / "shards"  # c<cid>-s<j>: a sharded collection's files on this node
        if shards.is_dir() and self._ray is not None:
            for path in shards.iterdir():
                head = path.name.split("-")[0]
                if head.startswith("c") and head[1:].isdigit() and int(head[1:]) not in cids:
                    shutil.rmtree(path, ignore_errors=True)

    def _load_all(self, entries: list[Entry], preloaded: dict[int, IndexSet] | None = None) -> None:
        for e in entries:
            member = self._members.get(e.name)
            if member is None or self._closed:
                continue
            if member.remote:  # each actor loads itself; resolve what the last run left prepared
                if member.down is None:
                    try:
                        self._heal(e.name, member)
                    except StorageError as exc:
                        log.warning("a shard is not back yet; its writes resolve at the next request",
                                    extra={"fields": {"collection": e.name, "reason": str(exc)}})
                    for spec in e.specs("building"):
                        self._build_sharded(e.name, member, spec)
                continue
            for shard in member.shards:
                shard.load(e.specs("ready"), e.specs("building"), e.last_seq, (preloaded or {}).get(e.cid))

    # --- lookup ----------------------------------------------------------------------------------

    def _member(self, name: str, *, partial: bool = False) -> tuple[Entry, _Member]:
        """With `partial`, a heal that cannot reach a shard resolves the others and leaves the
        unreached ones in `member.unresolved` (a partial search leaves them out)."""
        member = self._members.get(name)
        entry = self.catalog.find(name)
        if member is None or entry is None:
            raise NotFound(f"collection {name!r} not found")
        if member.down is not None:
            raise StorageError(member.down)
        if member.restoring:
            raise StorageError(f"collection {name!r} is being restored from a snapshot; retry shortly")
        if member.suspect:
            self._heal(name, member, partial=partial)
        if not all(s.wait_loaded(LOAD_WAIT) for s in member.shards):
            raise StorageError(f"collection {name!r} is still loading; retry shortly")
        return entry, member

    def _ready(self, name: str, *, partial: bool = False) -> tuple[Entry, _Member]:
        entry, member = self._member(name, partial=partial)
        for shard in member.shards:
            shard.ready()
        return entry, member

    # --- collections -----------------------------------------------------------------------------

    def create_collection(self, name: str, config: CollectionConfig) -> tuple[CollectionInfo, bool]:
        """Create `name`; (info, False) when it exists with the same config, Conflict for another one."""
        check_name(name)
        if config.shards is None and self.settings.default_shards > 1:
            config = dataclasses.replace(config, shards=self.settings.default_shards)
        if config.shards is not None and self._ray is None:
            if config.shards > 1:
                raise InvalidInput("shards", f"{config.shards} shards need Ray: set LOGITSEARCH_RAY_ADDRESS "
                                             "(`local`, or a Ray cluster's address)")
            config = dataclasses.replace(config, shards=None)  # one shard without Ray: today's collection
        with self.catalog.lock:
            existing = self.catalog.find(name)
            if existing is not None:
                if set(config.payload_index) <= set(existing.config.payload_index):
                    # payload keys may have been declared since: asking for fewer is the same collection
                    config = dataclasses.replace(config, payload_index=existing.config.payload_index)
                if existing.config != config:
                    raise Conflict(f"collection {name!r} exists with a different configuration: "
                                   + "; ".join(existing.config.differences(config)))
                return self._info(name), False
            specs = config.specs()
            if config.shards is not None and self._ray is not None:
                self._ray.check_room(config.shards)
            with self.store.transaction() as tx:
                entry = self.catalog.create(tx, name, config, [IndexState(s, "ready") for s in specs])
            if config.shards is None:
                shard = self._new_shard(entry)
                shard.start_empty(specs)
                self._members[name] = _Member([shard])
            else:
                self._members[name] = self._create_sharded(entry)
            self.catalog.publish(entry)
            return self._info(name), True

    def _create_sharded(self, entry: Entry) -> _Member:
        """The actors of a new sharded collection, each on a node (round robin over the cluster's),
        recorded in the catalog; answers once every actor has started."""
        from service.ray_shards import gather

        if self._ray is None or entry.config.shards is None:
            raise StorageError("a sharded collection needs Ray")
        nodes = self._ray.nodes()
        placement = [nodes[j % len(nodes)] for j in range(entry.config.shards)]
        self.catalog.set_placement(entry.cid, placement)
        shards = self._ray.shards(entry.name, entry.cid, entry.config, placement)
        try:
            gather([(s, s.submit("ping")) for s in shards])
        except BaseException:
            with self.store.transaction() as tx:
                tx.drop_collection(entry.cid)
            for s in shards:
                s.kill()
            raise
        return _Member(shards, remote=True)

    def list_collections(self) -> list[CollectionInfo]:
        out = []
        for name in self.catalog.names():
            try:
                out.append(self._info(name))
            except NotFound:  # dropped meanwhile
                continue
        return out

    def get_collection(self, name: str) -> CollectionInfo:
        self._member(name)
        return self._info(name)

    def delete_collection(self, name: str) -> None:
        entry, member = self._member(name)
        with member.lock, self.catalog.lock:
            with self.store.transaction() as tx:
                tx.drop_collection(entry.cid)
            self._members.pop(name, None)
            self.catalog.remove(name)
            if member.remote and self._ray is not None:
                self.catalog.forget_sharded(entry.cid)
        for shard in member.shards:
            shard.drop()

    def _info(self, name: str) -> CollectionInfo:
        entry, member = self.catalog.get(name), self._members.get(name)
        if member is None:
            raise NotFound(f"collection {name!r} not found")
        if member.down is not None:
            raise StorageError(member.down)
        if member.remote:
            from service.ray_shards import STATUS_TIMEOUT, gather

            statuses = gather([(s, s.submit("call", "status")) for s in member.shards], STATUS_TIMEOUT)
        else:
            statuses = [s.status() for s in member.shards]
        vectors: dict[str, int] = {}
        progress: dict[str, float] = {}
        for st in statuses:
            for key, n in st.vectors.items():
                vectors[key] = vectors.get(key, 0) + n
            for key, p in st.progress.items():
                progress[key] = min(progress.get(key, 1.0), p)
        indexes = [IndexInfo(s.spec.key, s.spec, s.status,
                             1.0 if s.status == "ready" else progress.get(s.spec.key, 0.0),
                             vectors.get(s.spec.key, 0), s.error) for s in entry.indexes]
        state = next((st.state for st in statuses if st.state != "ready"), "ready")
        return CollectionInfo(name, entry.config, sum(st.points for st in statuses), entry.last_seq, state, indexes)

    def dim(self, name: str) -> int:
        return self._member(name)[0].config.dim

    def count(self, name: str, selection: Selection | None = None) -> int:
        """Committed points (every acknowledged write; an evaluation samples from these), or the
        selection's."""
        _, member = self._ready(name)
        return sum(s.points() for s in member.shards) if selection is None else selection.count

    def sizes(self) -> Iterable[tuple[str, int, list[tuple[str, int]]]]:
        """(collection, points, [(index, vectors)]) for /metrics."""
        for name in list(self._members):
            try:
                info = self._info(name)
            except (NotFound, StorageError):  # dropped meanwhile, or a shard is down
                continue
            yield info.name, info.count, [(i.key, i.vectors) for i in info.indexes if i.status == "ready"]

    # --- indexes ---------------------------------------------------------------------------------

    def list_indexes(self, name: str) -> list[IndexInfo]:
        self._member(name)
        return self._info(name).indexes

    def add_index(self, name: str, spec: IndexSpec) -> tuple[IndexInfo, bool]:
        """Start building `spec` in the background; (info, False) when it exists with the same params."""
        entry, member = self._ready(name)
        with member.lock:
            existing = self.catalog.get(name).index(spec.key)
            if existing is not None:
                if existing.spec != spec or dict(existing.spec.params) != dict(spec.params):
                    raise Conflict(f"index {spec.key} exists with parameters {dict(existing.spec.params)}; "
                                   f"delete it first to build it with {dict(spec.params)}")
                return self._index_info(name, spec.key), False
            self.catalog.set_index(name, IndexState(spec, "building"))
            if member.remote:
                self._build_sharded(name, member, spec)
            else:
                for shard in member.shards:
                    shard.build(spec)
        return self._index_info(name, spec.key), True

    def _build_sharded(self, name: str, member: _Member, spec: IndexSpec) -> None:
        """Every shard builds `spec` (resumed from its own files if Ray restarts it); the index is
        ready once all are, failed if one fails."""
        def run() -> None:
            ended: dict[int, tuple[str, str | None]] = {}
            told: set[int] = set()
            while len(ended) < len(member.shards):
                if self._closed or self._members.get(name) is not member:
                    return
                for s in member.shards:
                    if s.index in ended:
                        continue
                    try:
                        if s.index not in told:
                            s.build(spec)  # idempotent: a shard building or built already is left alone
                            told.add(s.index)
                        got = s.result(s.submit("wait_build", spec.key, 2.0), 30.0)
                    except StorageError:
                        time.sleep(0.5)  # restarting: it resumes the build from its own index list
                        continue
                    if got is not None:
                        ended[s.index] = got
            failed = [(j, e) for j, (st, e) in sorted(ended.items()) if st != "ready"]
            status: IndexStatus = "failed" if failed else "ready"
            error = f"shard {failed[0][0]}: {failed[0][1]}" if failed else None
            self._index_built(name, member.shards, spec.key, spec, status, error)

        threading.Thread(target=run, name=f"build-{name}-{spec.key}", daemon=True).start()

    def _index_info(self, name: str, key: str) -> IndexInfo:
        return next(i for i in self._info(name).indexes if i.key == key)

    def _index_built(self, name: str, shards: Sequence[Any], key: str, spec: IndexSpec,
                     status: IndexStatus, error: str | None) -> None:
        """A shard's build ended: record it, unless the index was dropped or replaced meanwhile."""
        try:
            recorded = self.catalog.set_index(name, IndexState(spec, status, error),
                                              expect=IndexState(spec, "building"))
        except StorageError:
            log.warning("could not record the end of a build", extra={"fields": {"index": key, "status": status}})
            recorded = False
        if not recorded and status == "ready":
            entry = self.catalog.find(name)
            current = entry.index(key) if entry is not None else None
            if current is None or current.spec != spec or current.status != "ready":
                for shard in shards:
                    shard.drop_index(key)

    def drop_index(self, name: str, key: str) -> None:
        _, member = self._ready(name)
        with member.lock:
            self.catalog.drop_index(name, key)
            for shard in member.shards:
                shard.drop_index(key)

    # --- writing ---------------------------------------------------------------------------------

    def upsert(self, name: str, ids: Sequence[Ext], X: F32, payloads: Sequence[str | None] | None = None,
               *, wait: bool = True) -> WriteResult:
        """Insert or replace points; `X` float32 (n, dim), already checked; ids unique; payloads as JSON."""
        entry, member = self._ready(name)
        if member.remote:
            if X.shape != (len(ids), entry.config.dim):  # checked before anything is prepared
                raise InvalidInput("vectors", f"expected shape ({len(ids)}, {entry.config.dim}), got {X.shape}")
            return self._sharded(name, member, len(ids), wait, lambda j, rows, cand: (
                "upsert", ([ids[r] for r in rows], X[rows], None if payloads is None else [payloads[r] for r in rows],
                           cand[rows])), ids)
        with member.lock:
            result = member.shard.upsert(ids, X, payloads, keep=wait)
            self.catalog.committed(name, result.operation_id)
        return self._finish(member.shard, result, wait)

    def bulk_upsert(self, name: str, chunks: Iterable[F32], ids: Iterable[Ext], *, wait: bool = True,
                    payloads: Sequence[str | None] | None = None) -> WriteResult:
        """Insert or replace many points in ONE transaction, chunk by chunk (`chunks`: float32 rows,
        already checked; `ids`: one per row, e.g. a range; `payloads`: one JSON text or None per row,
        checked). Nothing is written unless all of it is."""
        _, member = self._ready(name)
        if member.remote:
            return self._sharded_bulk(name, member, chunks, ids, wait, payloads)
        shard = member.shard
        with member.lock:
            handle = shard.bulk_begin()
            try:
                for X, exts, pay, _ in _bulk_rows(chunks, ids, payloads):
                    shard.bulk_chunk(handle, exts, X, pay)
            except BaseException as exc:
                shard.bulk_abort(handle, exc)
                raise
            result = shard.bulk_commit(handle, keep=wait)
            self.catalog.committed(name, result.operation_id)
        return self._finish(shard, result, wait)

    def delete_points(self, name: str, ids: Sequence[Ext], *, wait: bool = True) -> WriteResult:
        """Delete points; unknown ids are ignored (count says how many existed)."""
        _, member = self._ready(name)
        if member.remote:
            return self._sharded(name, member, 0, wait, lambda j, rows, cand: (
                "delete", ([ids[r] for r in rows],)), ids)
        with member.lock:
            result = member.shard.delete(ids, keep=wait)
            self.catalog.committed(name, result.operation_id)
        return self._finish(member.shard, result, wait)

    def delete_by_filter(self, name: str, flt: filters.Filter, *, wait: bool = True) -> WriteResult:
        """Delete every point `flt` matches when the transaction runs (count: how many)."""
        entry, member = self._ready(name)
        filters.check_declared(flt, entry.config.payload_index, name)
        if member.remote:
            return self._sharded(name, member, 0, wait, lambda j, rows, cand: ("delete_matching", (flt,)), None)
        with member.lock:
            result = member.shard.delete_matching(flt, keep=wait)
            self.catalog.committed(name, result.operation_id)
        return self._finish(member.shard, result, wait)

    # --- writes to a sharded collection: prepare, commit, publish (issue 13) --------------------

    def _sharded(self, name: str, member: _Member, rows: int, wait: bool,
                 part: Callable[[int, list[int], Ids], tuple[str, tuple[Any, ...]]],
                 ids: Sequence[Ext] | None) -> WriteResult:
        """One write over the shards: `part(j, positions, candidates)` is shard j's (kind, body) for
        the positions of `ids` it owns (every shard when `ids` is None)."""
        from service.ray_shards import route

        n = len(member.shards)
        owned = route(ids, n) if ids is not None else [[] for _ in range(n)]
        touched = [j for j in range(n) if ids is None or owned[j]]
        with member.lock:
            self._heal_locked(name, member)  # a write that failed since our lookup goes first
            token = self.catalog.reserve(rows)
            cand = np.arange(token, token + max(rows, 1), dtype=np.int64)
            try:
                self._prepare(member, token, [(j, 0, *part(j, owned[j], cand)) for j in touched])
            except BaseException:
                self._abort(member, token, touched)
                raise
            seq, count = self._commit(name, member, token, touched)
        return self._settled(member, seq, token, touched, count, wait)

    def _sharded_bulk(self, name: str, member: _Member, chunks: Iterable[F32], ids: Iterable[Ext], wait: bool,
                      payloads: Sequence[str | None] | None) -> WriteResult:
        """A bulk ingest over the shards: each chunk's rows prepared on their shards as they arrive,
        all of it committed (or none) at the end."""
        from service.ray_shards import route

        n_shards = len(member.shards)
        seen: set[Ext] = set()
        parts = [0] * n_shards
        with member.lock:
            self._heal_locked(name, member)
            token: int | None = None
            try:
                for X, exts, pay, n in _bulk_rows(chunks, ids, payloads):
                    for j, e in enumerate(exts):  # the shards only see their own rows
                        if e in seen:
                            raise InvalidInput("ids", f"duplicate id {e!r} (row {n + j}); ids must be unique")
                        seen.add(e)
                    start = self.catalog.reserve(len(X))
                    token = start if token is None else token
                    cand = np.arange(start, start + len(X), dtype=np.int64)
                    work = []
                    for j, rows in enumerate(route(exts, n_shards)):
                        if rows:
                            work.append((j, parts[j], "bulk", ([exts[r] for r in rows], X[rows],
                                                               None if pay is None else [pay[r] for r in rows],
                                                               cand[rows])))
                            parts[j] += 1
                    self._prepare(member, token, work)
                if token is None:
                    raise InvalidInput("body", "the matrix has no rows")
            except BaseException:
                if token is not None:
                    self._abort(member, token, [j for j in range(n_shards) if parts[j]])
                raise
            touched = [j for j in range(n_shards) if parts[j]]
            seq, count = self._commit(name, member, token, touched)
        return self._settled(member, seq, token, touched, count, wait)

    @staticmethod
    def _prepare(member: _Member, token: int, work: Sequence[tuple[int, int, str, tuple[Any, ...]]]) -> None:
        from service.ray_shards import gather

        try:
            gather([(member.shards[j], member.shards[j].submit("prepare", token, part, kind, body))
                    for j, part, kind, body in work])
        except StorageError:
            member.suspect = True  # a shard may hold the part while another failed: resolved next
            raise

    @staticmethod
    def _abort(member: _Member, token: int, touched: Sequence[int]) -> None:
        """Drop write `token`'s prepared parts (a shard that is down drops its part when it is
        resolved: the catalog never committed it)."""
        for j in touched:
            shard = member.shards[j]
            try:
                shard.result(shard.submit("abort", token), 10.0)
            except Exception:  # noqa: BLE001 -- whatever it was, the part is resolved next
                member.suspect = True

    def _commit(self, name: str, member: _Member, token: int, touched: Sequence[int]) -> tuple[int, int]:
        """Record the commit (THE commit point), then publish on every touched shard, retrying while
        Ray restarts one. (operation id, points written)."""
        from service.ray_shards import PUBLISH_WAIT, ShardUnavailable

        try:
            seq = self.catalog.commit(name, token)
        except BaseException:
            self._abort(member, token, touched)
            raise
        deadline = time.monotonic() + PUBLISH_WAIT
        left, count = list(touched), 0
        while left:
            # every write before this one is settled on every shard (a write that failed left the
            # collection suspect, healed before this one): the shards prune their op records below it
            failed: list[int] = []
            with member.visible.write():  # released between retries: a read then needs the down shard (503)
                calls = [(j, member.shards[j], member.shards[j].submit("publish", token, False, token))
                         for j in left]
                for j, shard, ref in calls:
                    try:
                        count += shard.result(ref)[0]
                    except ShardUnavailable:
                        failed.append(j)
                    except BaseException:
                        member.suspect = True  # committed: published when the shard is resolved
                        raise
            if failed and time.monotonic() > deadline:
                member.suspect = True
                raise ShardUnavailable(member.shards[failed[0]].label, "the write is committed and is published "
                                       "when the shard is back")
            left = failed
            if left:
                time.sleep(0.25)
        member.writes += 1
        if member.writes % 256 == 0:  # every write before this one is published on every shard
            entry = self.catalog.get(name)
            self.catalog.forget_commits(entry.cid, below=token)
        return seq, count

    @staticmethod
    def _settled(member: _Member, seq: int, token: int, touched: Sequence[int], count: int,
                 wait: bool) -> WriteResult:
        """The write's result; with `wait`, once each touched shard has applied it (outside the lock)."""
        if not wait:
            return WriteResult(seq, "acknowledged", count)
        from service.ray_shards import gather

        outs = gather([(member.shards[j], member.shards[j].submit("publish", token, True)) for j in touched])
        status = "rebuilding" if any(st == "rebuilding" for _, st in outs) else "completed"
        return WriteResult(seq, status, count)  # type: ignore[arg-type]

    def _heal(self, name: str, member: _Member, *, partial: bool = False) -> None:
        """Publish the prepared writes the catalog committed and drop the others, on every shard
        (after a crash or a failed write); 503 while a shard is still down. With `partial`, the
        shards that answer are resolved and the others are left in `member.unresolved`."""
        with member.lock:
            self._heal_locked(name, member, partial=partial)

    def _heal_locked(self, name: str, member: _Member, *, partial: bool = False) -> None:
        """`_heal` with the collection's write lock held (no write is between prepare and publish,
        so a shard may be resolved without the others)."""
        from service.ray_shards import gather

        if not member.suspect:
            return
        entry = self.catalog.get(name)
        below = self.catalog.reserve(1)  # after every write so far: each shard settled below it once resolved
        if not partial:
            held = gather([(s, s.submit("prepared_tokens")) for s in member.shards])
            with member.visible.write():
                gather([(s, s.submit("resolve", [t for t in tokens if self.catalog.is_committed(entry.cid, t)],
                                     below)) for s, tokens in zip(member.shards, held)])
        else:
            ask = _Fanout(member, partial=True)
            held = ask({j: [("prepared_tokens", ())] for j in ask.live})
            with member.visible.write():
                done = ask({j: [("resolve", ([t for t in tokens if self.catalog.is_committed(entry.cid, t)],
                                             below))] for j, (tokens,) in held.items()})
            member.unresolved = frozenset(range(len(member.shards))) - set(done)
            if member.unresolved:
                return
        self.catalog.forget_commits(entry.cid)
        member.unresolved = frozenset()
        member.suspect = False

    @staticmethod
    def _finish(shard: CollectionShard, result: WriteResult, wait: bool) -> WriteResult:
        """Wait for the write's apply when asked (outside the write lock: the next write may commit)."""
        if not wait:
            return result
        return dataclasses.replace(result, status=shard.applied(result.operation_id))

    # --- payload index ---------------------------------------------------------------------------

    def declare_payload_index(self, name: str, keys: Sequence[str]) -> tuple[str, ...]:
        """Index payload `keys` for filters (back-filled from the stored payloads in the same
        transaction that records them); keys indexed already are left as they are. The indexed keys."""
        _, member = self._ready(name)
        wanted = [filters.check_key(k, f"fields.{i}") for i, k in enumerate(keys)]
        with member.lock:
            config = self.catalog.get(name).config
            new = tuple(sorted(set(wanted) - set(config.payload_index)))
            if new:
                config = dataclasses.replace(config, payload_index=tuple(sorted({*config.payload_index, *new})))
                for shard in member.shards:
                    shard.index_payloads(config, new)
                self.catalog.set_config(name, config)
            return config.payload_index

    def drop_payload_index(self, name: str, key: str) -> tuple[str, ...]:
        """Stop indexing payload `key` (NotFound when it is not indexed). The indexed keys."""
        _, member = self._ready(name)
        with member.lock:
            config = self.catalog.get(name).config
            if key not in config.payload_index:
                raise NotFound(f"payload key {key!r} is not indexed in collection {name!r}; "
                               f"indexed: {list(config.payload_index)}")
            config = dataclasses.replace(config, payload_index=tuple(k for k in config.payload_index if k != key))
            for shard in member.shards:
                shard.unindex_payloads(config, key)
            self.catalog.set_config(name, config)
            return config.payload_index

    def select(self, name: str, flt: filters.Filter) -> Selection:
        """The searchable points `flt` matches now (for `count` and `evaluate_data`)."""
        _, member = self._ready(name)
        return Selection(np.sort(np.concatenate(self._each(member, "select", flt))))

    def _each(self, member: _Member, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """`method(*args)` of every shard of the collection (Ray shards in parallel), in shard order."""
        if not member.remote:
            return [getattr(s, method)(*args, **kwargs) for s in member.shards]
        from service.ray_shards import gather

        return gather([(s, s.submit("call", method, *args, **kwargs)) for s in member.shards])

    # --- collection snapshots to take away (service/snapshots.py owns the archive) ----------------

    @contextmanager
    def writes_held(self, name: str) -> Iterator[HeldCollection]:
        """The collection at a consistent point: inside the block no write to it starts, and every
        committed write has been applied to its indexes. `iset` is None (with the reason) when the
        indexes are not those of the committed state (rebuilding, or an index still building). A
        sharded collection's shards each hold their part (`parts`), every committed write published
        first; fetch them with `archive_parts` after the block, which also releases them."""
        _, member = self._member(name)
        if member.remote:
            from service.ray_shards import gather

            token = uuid.uuid4().int >> 66
            with member.lock:
                self._heal_locked(name, member)  # a committed write not yet published everywhere
                entry = self.catalog.get(name)
                try:
                    parts = gather([(s, s.submit("archive_hold", token)) for s in member.shards])
                except BaseException:
                    self._release_parts(member, token)
                    raise
                reason = next((p["reason"] for p in parts if p["reason"] is not None), None)
                try:
                    yield HeldCollection(entry.cid, name, entry.config, entry.index_list(), entry.last_seq,
                                         sum(p["count"] for p in parts), None, reason, parts, token)
                except BaseException:
                    self._release_parts(member, token)
                    raise
            return
        with member.lock:
            entry = self.catalog.get(name)
            building = sorted(s.spec.key for s in entry.indexes if s.status == "building")
            with member.shard.held(entry.last_seq, building) as held:
                yield HeldCollection(entry.cid, name, entry.config, entry.index_list(), entry.last_seq,
                                     held.count, held.iset, held.rebuild_reason)

    def archive_parts(self, held: HeldCollection, out: Path, chunk: int = 8 << 20) -> list[dict[str, Any]]:
        """Each held shard's part written out (by its actor, beside its files) and copied to
        `out/<j>/` (points.sqlite3, indexes/...), the shards' scratch removed after; per shard its
        count, `iids` [lo, hi] and `files` {name: bytes}. A shard down meanwhile: ShardUnavailable."""
        from service.ray_shards import gather

        member = self._members.get(held.name)
        if member is None or not member.remote:
            raise NotFound(f"collection {held.name!r} not found")
        try:
            written = gather([(s, s.submit("archive_write", held.token)) for s in member.shards])
            for j, (s, part) in enumerate(zip(member.shards, written)):
                for fname, size in part["files"].items():
                    path = out / str(j) / fname
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as f:
                        f.writelines(s.result(s.submit("archive_read", held.token, fname, offset, chunk))
                                     for offset in range(0, size, chunk))
                    if path.stat().st_size != size:
                        raise StorageError(f"shard {s.label}: {fname} came over at {path.stat().st_size} "
                                           f"bytes, {size} written")
            return written  # type: ignore[no-any-return]
        finally:
            self._release_parts(member, held.token)

    @staticmethod
    def _release_parts(member: _Member, token: int) -> None:
        for s in member.shards:
            try:
                s.result(s.submit("archive_end", token), 10.0)
            except StorageError:  # a restarted shard holds nothing; its scratch goes at its start
                pass

    def restore_collection(self, name: str, config: CollectionConfig, indexes: list[dict[str, Any]],
                           last_seq: int, fill: Callable[[Transaction, int], int],
                           place: Callable[[Path, int], IndexSet] | None) -> CollectionInfo:
        """Create `name` (or replace it when it exists empty with the same config) from a snapshot in
        ONE transaction: `fill(tx, cid)` writes the points and returns the offset added to their
        internal ids; then `place(directory, offset)` writes the index snapshot and returns its set
        (None, or a failure: the indexes are rebuilt from SQLite), and the collection loads as at a
        start."""
        check_name(name)
        if config.shards is not None:  # the caller's mistake: restore_sharded is for these
            raise StorageError(f"collection {name!r}: a sharded restore goes through restore_sharded")
        old = self._members.get(name)
        if old is not None and old.remote:
            raise Conflict(f"collection {name!r} is sharded: restore into a new collection")
        if old is not None and not all(s.wait_loaded(LOAD_WAIT) for s in old.shards):
            raise StorageError(f"collection {name!r} is still loading; retry shortly")
        # the collection's lock before the catalog's, as delete_collection takes them
        with old.lock if old is not None else nullcontext(), self.catalog.lock:
            if self._members.get(name) is not old:
                raise Conflict(f"collection {name!r} was created or deleted meanwhile; retry")
            previous = self.catalog.find(name)
            if old is not None and previous is not None:
                points = sum(s.points() for s in old.shards)
                if points:
                    raise Conflict(f"collection {name!r} holds {points} points: restore into a new "
                                   "or empty collection (delete it first, or give another name)")
                if previous.config != config:
                    raise Conflict(f"collection {name!r} exists (empty) with a different configuration: "
                                   + "; ".join(previous.config.differences(config)))
            states = [IndexState.from_dict(d) for d in indexes]
            with self.store.transaction() as tx:
                if previous is not None:
                    tx.drop_collection(previous.cid)
                entry = self.catalog.create(tx, name, config, states)
                offset = fill(tx, entry.cid)
                tx.set_last_seq(entry.cid, last_seq)
            entry = dataclasses.replace(entry, last_seq=last_seq)
            if old is not None:
                for shard in old.shards:
                    shard.drop()
            self._members[name] = _Member([self._new_shard(entry)])  # requests wait for the load
            self.catalog.publish(entry)
        preloaded: dict[int, IndexSet] = {}
        try:
            if place is not None:
                preloaded[entry.cid] = place(self._shard_dir(entry.cid), offset)
        except Exception as exc:  # the points are committed; the indexes are rebuilt from them
            log.warning("restored index snapshot unusable, rebuilding from SQLite", exc_info=exc,
                        extra={"fields": {"collection": name}})
            shutil.rmtree(self._shard_dir(entry.cid), ignore_errors=True)
        self._load_all([entry], preloaded)
        return self._info(name)

    def restore_sharded(self, name: str, config: CollectionConfig, indexes: list[dict[str, Any]], last_seq: int,
                        iids: tuple[int | None, int | None],
                        send: Callable[[int, Callable[[int, list[Any], dict[str, Any]], None],
                                        Callable[[int, str, Path], None]], None]) -> CollectionInfo:
        """Create the new sharded collection `name` (config.shards actors) from a snapshot, all or
        nothing, as a sharded write: `send(offset, rows, stage)` calls `rows(j, batch, meta)` with
        shard j's rows (iid, ext, seq, vector, payload; iids already shifted by `offset`, the shift
        that makes the archive's ids `iids` = (lo, hi) fresh here) and `stage(j, name, path)` with
        the files of its index snapshot; every part is prepared durably on its shard, the catalog
        records the commit, the shards publish (each loads as at a start). A failure before the
        commit drops the collection whole; a shard that dies after it publishes when it is back."""
        from service.ray_shards import gather

        check_name(name)
        n = config.shards
        if n is None:
            raise StorageError(f"collection {name!r}: restore_sharded needs a sharded config")
        if self._ray is None:
            raise InvalidInput("shards", f"{n} shards need Ray: set LOGITSEARCH_RAY_ADDRESS (`local`, or a Ray "
                                         "cluster's address), or restore with ?shards=1")
        lo, hi = iids
        start = self.catalog.reserve(0 if lo is None or hi is None else hi - lo + 1)
        offset, token = (0 if lo is None else start - lo), start
        with self.catalog.lock:
            if self.catalog.find(name) is not None or name in self._members:
                raise Conflict(f"collection {name!r} exists: restore a snapshot into a new collection "
                               "(delete it first, or give another name)")
            self._ray.check_room(n)
            with self.store.transaction() as tx:  # the commit below brings last_seq to the archive's
                entry = self.catalog.create(tx, name, config, [IndexState.from_dict(d) for d in indexes],
                                            last_seq - 1)
                # a server killed before the commit: its next start drops the collection (_undo_restores)
                tx.connection.execute(_RESTORES)
                tx.connection.execute("INSERT INTO shard_restores (cid, token) VALUES (?, ?)", (entry.cid, token))
            member = self._create_sharded(entry)
            member.restoring = True
            self._members[name] = member
            self.catalog.publish(entry)
        parts = [0] * n
        try:
            def rows(j: int, batch: list[Any], meta: dict[str, Any]) -> None:
                self._prepare(member, token, [(j, parts[j], "restore",
                                               (batch, {**meta, "id_offset": offset, "states": indexes}))])
                parts[j] += 1

            def stage(j: int, fname: str, path: Path, chunk: int = 8 << 20) -> None:
                shard = member.shards[j]
                with open(path, "rb") as f:
                    at = 0
                    while True:
                        data = f.read(chunk)
                        shard.result(shard.submit("stage", token, fname, at, data))
                        at += len(data)
                        if len(data) < chunk:
                            break

            send(offset, rows, stage)
        except BaseException:
            self._abort(member, token, [j for j in range(n) if parts[j]])
            self._drop_restored(entry, member)
            raise
        touched = [j for j in range(n) if parts[j]]
        try:
            if touched:
                self._commit(name, member, token, touched)
            else:  # an empty archive: nothing to publish, the sequence set directly
                with self.store.transaction() as tx:
                    tx.set_last_seq(entry.cid, last_seq)
                self.catalog.committed(name, last_seq)
        except BaseException as exc:
            from service.ray_shards import ShardUnavailable

            if isinstance(exc, ShardUnavailable) and self.catalog.is_committed(entry.cid, token):
                self._restored(entry)
                member.restoring = False  # committed: the shard publishes its part when it is back
            else:
                self._drop_restored(entry, member)
            raise
        self._restored(entry)
        member.restoring = False
        gather([(member.shards[j], member.shards[j].submit("publish", token, True)) for j in touched])
        for spec in entry.specs("building"):  # each shard resumed it at its load; ready once all are
            self._build_sharded(name, member, spec)
        return self._info(name)

    def _restored(self, entry: Entry) -> None:
        with self.store.transaction() as tx:
            tx.connection.execute("DELETE FROM shard_restores WHERE cid = ?", (entry.cid,))

    def _undo_restores(self) -> None:
        """At start: a sharded restore the last run left before its commit goes whole; one it had
        committed stays (its shards publish their parts when the collection is healed)."""
        with self.store.transaction() as tx:
            tx.connection.execute(_RESTORES)
            left = tx.connection.execute("SELECT cid, token FROM shard_restores").fetchall()
        for cid, token in left:
            entry = next((e for e in self.catalog.entries() if e.cid == cid), None)
            member = self._members.get(entry.name) if entry is not None else None
            if entry is None or member is None or self.catalog.is_committed(cid, token):
                if entry is not None:
                    self._restored(entry)
                continue
            log.warning("dropping a collection whose restore did not finish", extra={"fields": {
                "collection": entry.name}})
            self._drop_restored(entry, member)

    def _drop_restored(self, entry: Entry, member: _Member) -> None:
        """A sharded restore that failed before its commit: the collection goes whole."""
        with member.lock, self.catalog.lock:
            with self.store.transaction() as tx:
                tx.drop_collection(entry.cid)
                tx.connection.execute("DELETE FROM shard_restores WHERE cid = ?", (entry.cid,))
            if self._members.get(entry.name) is member:
                self._members.pop(entry.name, None)
                self.catalog.remove(entry.name)
            self.catalog.forget_sharded(entry.cid)
        for j, shard in enumerate(member.shards):
            try:
                shard.drop()
            except StorageError:  # down: killed here, and its files go with it
                shard.kill()
                if self._ray is not None:
                    shutil.rmtree(self._ray.directory(entry.cid, j), ignore_errors=True)

    # --- reading ---------------------------------------------------------------------------------

    def get_points(self, name: str, ids: Sequence[Ext], *, with_vector: bool = True,
                   with_payload: bool = True) -> list[Point | None]:
        """The stored points for `ids` in order, None where an id is unknown (read from SQLite: a
        committed write is visible here even before its index apply)."""
        _, member = self._member(name)
        if not member.remote:
            return member.shard.get_points(ids, with_vector=with_vector, with_payload=with_payload)
        with member.visible.read():
            return self._by_owner(member, ids, "get_points", with_vector=with_vector, with_payload=with_payload)

    @staticmethod
    def _by_owner(member: _Member, ids: Sequence[Ext], method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """`method(ids_j, *args)` on each shard j for the ids it owns, answers back in the order of `ids`."""
        from service.ray_shards import gather, route

        owned = route(ids, len(member.shards))
        calls = [(member.shards[j], member.shards[j].submit("call", method, [ids[r] for r in rows], *args, **kwargs))
                 for j, rows in enumerate(owned) if rows]
        out: list[Any] = [None] * len(ids)
        for rows, got in zip([r for r in owned if r], gather(calls)):
            for r, v in zip(rows, got):
                out[r] = v
        return out

    def scroll(self, name: str, offset: int | None, limit: int, *, with_vector: bool = False,
               with_payload: bool = True, filter: filters.Filter | None = None) -> tuple[list[Point], int | None]:
        """Up to `limit` points from cursor `offset` (None: the start) and the next cursor (None: done);
        with `filter`, the points it matches."""
        _, member = self._member(name)
        if not member.remote:
            return member.shard.scroll(offset or 0, limit, with_vector=with_vector, with_payload=with_payload,
                                       flt=filter)
        from service.ray_shards import gather

        with member.visible.read():
            pages = gather([(s, s.submit("scroll", offset or 0, limit, with_vector, with_payload, filter))
                            for s in member.shards])
        merged = sorted(((iid, p) for points, iids in pages for p, iid in zip(points, iids)), key=lambda t: t[0])
        nxt = merged[limit][0] if len(merged) > limit else None
        return [p for _, p in merged[:limit]], nxt

    def vector(self, name: str, ext: Ext) -> F32:
        """The indexed float32 vector of one point; NotFound if absent."""
        _, member = self._ready(name)
        vector: F32 = member.owner(ext).query_vector(ext)[1]
        return vector

    def payload_values(self, name: str, ids: Sequence[Ext], key: str) -> list[Any]:
        """The value of payload field `key` of each point of `ids`, None where the point, its payload or
        the field is missing (read from SQLite): the labels of an evaluation (issue 14)."""
        _, member = self._member(name)
        if not member.remote:
            return member.shard.payload_values(ids, key)
        return self._by_owner(member, ids, "payload_values", key)

    def evaluate_data(self, name: str, sample: int, seed: int,
                      selection: Selection | None = None) -> tuple[list[Ext], F32 | Rows]:
        """`sample` points drawn uniformly without replacement (seeded; all of them if sample >= count),
        in insertion order: their ids and float32 rows; drawn from `selection` when given. Every write
        committed before the call is in the population. A sharded collection's rows stay on its
        shards: they come as `core.evaluation.Rows` whose reads the shards answer
        (service/sharded_sample.py), drawn as here from the merged ids (the same seed, the same points)."""
        entry, member = self._ready(name)
        if member.remote:
            from service.sharded_sample import draw

            return draw(member.shards, entry.config.dim, sample, seed,
                        None if selection is None else selection.iids)
        shard = member.shard
        for attempt in range(3):
            ids = shard.indexed_ids()
            if selection is not None:
                ids = np.intersect1d(ids, selection.iids)
            if sample < ids.size:
                ids = np.sort(np.random.default_rng(seed).choice(ids, size=sample, replace=False))
            try:
                exts, X = shard.rows(ids)
            except NotFound:  # a delete landed between the two reads: draw again
                if attempt == 2:
                    raise
                continue
            if None not in exts:
                return exts, X  # type: ignore[return-value]
        raise StorageError(f"collection {name!r} changed under the sample three times; retry")

    # --- search ----------------------------------------------------------------------------------

    def search(self, name: str, queries: Sequence[Query], *, allow_partial: bool = False) -> list[SearchResult]:
        """Answer each query; queries with the same index, k, exactness and filter go to the shards
        together, each shard answers its own top-k, and the coordinator merges them.

        A shard that does not answer makes the request a 503 naming it; with `allow_partial` the
        answer is the merge of the shards that did (each result's `missing` names the others; 503 only
        when none did, or when an id query's own shard is down). An unsharded collection ignores it."""
        entry, member = self._ready(name, partial=allow_partial)
        if not queries:
            return []
        shards = member.shards
        picked: dict[tuple[Any, Any, Any], IndexSpec] = {}  # a batch mostly asks one index
        plans = [self._plan(entry, member, q, f"searches.{i}." if len(queries) > 1 else "", picked)
                 for i, q in enumerate(queries)]
        keys: dict[tuple[str, int, bool, filters.Filter | None], list[int]] = {}
        for i, (q, (spec, _, _)) in enumerate(zip(queries, plans)):
            keys.setdefault((spec.key, q.k, q.exact, q.filter), []).append(i)
        members = list(keys.values())
        flts = {q.filter for q in queries if q.filter is not None}
        def groups(allowed: dict[filters.Filter, Ids]) -> list[SearchGroup]:
            return [SearchGroup(plans[ms[0]][0], np.stack([plans[i][1] for i in ms]), k, exact,
                                [plans[i][2] for i in ms], None if flt is None else allowed[flt])
                    for (_, k, exact, flt), ms in zip(keys, members)]

        if member.remote:
            refuse("a sharded collection's search waits for its shards")
        if flts:
            refuse("a filter may wait for SQLite's payload index")
        with self._search_slot():
            started = time.perf_counter()
            if member.remote:
                ask = _Fanout(member, allow_partial)
                fl = list(flts)
                for j in member.unresolved if member.suspect else ():
                    ask.lost(j, StorageError(f"shard {shards[j].label} has writes to resolve"))
                with member.visible.read():
                    sets = ask({j: [("call", ("matching", f)) for f in fl] for j in ask.live})
                    first = {j: [dataclasses.replace(g, stage="first") for g in groups(dict(zip(fl, got)))]
                             for j, got in sets.items()}
                    answers, described = self._sharded_search(member, queries, members, first, ask)
                seconds = time.perf_counter() - started
                return self._results(member, queries, plans, answers, seconds, described, ask.missing())
            # each distinct filter resolved once, from the payload index
            per_shard = [shard.search(groups({f: shard.matching(f) for f in flts})) for shard in shards]
            seconds = time.perf_counter() - started
        answers_: list[Hits | None] = [None] * len(queries)
        for g, ms in enumerate(members):
            for j, i in enumerate(ms):
                answers_[i] = merge_hits([part[g][j] for part in per_shard], queries[ms[0]].k)
        return self._results(member, queries, plans, answers_, seconds)

    @contextmanager
    def _search_slot(self) -> Iterator[None]:
        """One of the search slots (an inline search does not wait for one: WouldBlock)."""
        if not self._search_slots.acquire(blocking=not must_not_wait()):
            raise WouldBlock("every search slot is taken")
        try:
            yield
        finally:
            self._search_slots.release()

    def _sharded_search(self, member: _Member, queries: Sequence[Query], members: list[list[int]],
                        first: dict[int, list[SearchGroup]], ask: _Fanout
                        ) -> tuple[list[Hits | None], Described]:
        """The merged answers of a sharded search, judged globally, and their winners described.

        Round one: every shard its own top k from one certificate attempt (`first`, one group list per
        live shard). Then, until every part is proven: merge, judge each part's bound against the
        merged k-th distance, and ask a second round (`stage="second"`, `within` the merged k-th) of
        the shards whose bound fails, for those queries only. A shard lost meanwhile (allow_partial)
        can only raise a merged k-th, so every part is judged again."""
        got = ask({j: [("call", ("search", gs))] for j, gs in first.items()})
        parts: dict[int, list[list[Hits]]] = {j: r[0] for j, r in got.items()}
        while True:
            if not ask.live:
                raise ask.nobody()
            live = [j for j in ask.live if j in parts]
            merged: list[Hits | None] = [None] * len(queries)
            again: dict[int, dict[int, list[int]]] = {}  # shard -> group -> positions in the group
            taus: dict[tuple[int, int], float] = {}
            for g, ms in enumerate(members):
                k = queries[ms[0]].k
                for r, i in enumerate(ms):
                    mine = [parts[j][g][r] for j in live]
                    m = merge_hits(mine, k)
                    tau = taus[g, r] = kth(m, k)
                    hows = []
                    for j, h in zip(live, mine):
                        if h.bound is not None and not certifies(h.bound, tau):
                            again.setdefault(j, {}).setdefault(g, []).append(r)
                        hows.append("certified" if h.how == "unproven" else h.how)
                    # read only once `again` is empty: every unproven part was proven by the merge
                    merged[i] = dataclasses.replace(m, how=max(hows, key=_HOW_ORDER.index))
            if again:
                work = {}
                for j, by_group in again.items():
                    work[j] = [("call", ("search", [
                        dataclasses.replace(first[j][g], Q=first[j][g].Q[rs], exclude=[first[j][g].exclude[r] for r in rs],
                                            stage="second", within=np.array([taus[g, r] for r in rs]))
                        for g, rs in by_group.items()]))]
                for j, (answer,) in ask(work).items():
                    for (g, rs), hits in zip(again[j].items(), answer):
                        for r, h in zip(rs, hits):
                            parts[j][g][r] = h
                continue
            owners = {int(i): j for j in live for per_group in parts[j] for hs in per_group for i in hs.ids.tolist()}
            winners = sorted({int(i) for h in merged if h is not None for i in h.ids.tolist()})
            described = self._describe(member, winners, owners, ask, vector=any(q.with_vector for q in queries),
                                       payload=any(q.with_payload for q in queries))
            if described is not None:
                return merged, described
            # a winner's shard was lost (allow_partial): merged again without it

    def _plan(self, entry: Entry, member: _Member, q: Query, prefix: str,
              picked: dict[tuple[Any, Any, Any], IndexSpec]) -> tuple[IndexSpec, npt.NDArray[np.float64], int | None]:
        """(the index to ask, the query vector, the internal id to leave out)."""
        if isinstance(q.k, bool) or not isinstance(q.k, int) or q.k < 1:
            raise InvalidInput(f"{prefix}k", f"must be a whole number >= 1, got {q.k!r}")
        if q.k > self.settings.max_k:
            raise LimitExceeded(f"{prefix}k", f"at most {self.settings.max_k} (LOGITSEARCH_MAX_K), got {q.k}")
        key = (q.metric, q.temperature, q.kind)
        spec = picked.get(key)
        if spec is None:
            spec = picked[key] = pick_index(entry, q.metric, q.temperature, q.kind, prefix)
        exclude = None
        if (q.vector is None) == (q.id is None):
            raise InvalidInput(f"{prefix}vector", "give exactly one of vector and id")
        if q.id is not None:  # its owner's vector, left out on every shard
            iid, x = member.owner(q.id).query_vector(q.id)
            vector, exclude = x.astype(np.float64), iid
        else:
            vector = np.asarray(q.vector, dtype=np.float64)
            if vector.shape != (entry.config.dim,):
                raise InvalidInput(f"{prefix}vector", f"expected dimension {entry.config.dim}, got {vector.shape[-1]}")
            if not np.isfinite(vector).all():
                raise InvalidInput(f"{prefix}vector", "contains NaN or infinity; logits must be finite")
        return spec, vector, exclude

    def _results(self, member: _Member, queries: Sequence[Query], plans: list[tuple[IndexSpec, Any, int | None]],
                 answers: list[Hits | None], seconds: float, described: Described | None = None,
                 missing: tuple[str, ...] = ()) -> list[SearchResult]:
        """Hydrate the winners only: their external ids, and payloads/vectors where asked for (a
        sharded search has `described` them already, in the order of their sorted internal ids)."""
        if any(a is None for a in answers):  # cannot happen: every query is in one group
            raise StorageError("search lost a query")
        hits = [a for a in answers if a is not None]
        winners = sorted({int(i) for h in hits for i in h.ids.tolist()})
        if described is None:
            described = member.shard.describe(winners, vector=any(q.with_vector for q in queries),
                                              payload=any(q.with_payload for q in queries))
        at = {iid: r for r, iid in enumerate(winners)}
        out = []
        for q, (spec, _, _), h in zip(queries, plans, hits):
            rows = [at[i] for i in h.ids.tolist()]
            exts = [described.exts[r] for r in rows]
            dists = h.distances.tolist()
            if None in exts:  # deleted while this search ran
                keep = [e is not None for e in exts]
                rows, exts, dists = ([v for v, ok in zip(col, keep) if ok] for col in (rows, exts, dists))
            payloads = [described.payloads[r] for r in rows] if q.with_payload and described.payloads is not None \
                else None
            vectors = [described.vectors[r] for r in rows] if q.with_vector and described.vectors is not None \
                else None
            out.append(SearchResult(spec.metric, spec.temperature, spec.key, spec.kind, h.how, q.k, exts, dists,
                                    seconds, payloads, vectors, h.matched, missing))
        return out


    @staticmethod
    def _describe(member: _Member, winners: list[int], owners: dict[int, int], ask: _Fanout, *, vector: bool,
                  payload: bool) -> Described | None:
        """The winners' external ids (and payloads/vectors when asked), each from its owning shard
        (`owners`: internal id -> shard); None when `ask` lost one of those shards (allow_partial)."""
        mine: dict[int, list[int]] = {}
        for r, iid in enumerate(winners):
            mine.setdefault(owners[iid], []).append(r)
        told = ask({j: [("call", ("describe", [winners[r] for r in rows]), {"vector": vector, "payload": payload})]
                    for j, rows in mine.items()})
        if len(told) < len(mine):
            return None
        exts: list[Ext | None] = [None] * len(winners)
        pays: list[dict[str, Any] | None] | None = [None] * len(winners) if payload else None
        vecs: list[F32 | None] | None = [None] * len(winners) if vector else None
        for j, rows in mine.items():
            part: Described = told[j][0]
            for t, r in enumerate(rows):
                exts[r] = part.exts[t]
                if pays is not None and part.payloads is not None:
                    pays[r] = part.payloads[t]
                if vecs is not None and part.vectors is not None:
                    vecs[r] = part.vectors[t]
        return Described(exts, pays, vecs)


class _Fanout:
    """Calls to the shards of one sharded request, and the shards it has lost.

    Called with `work`, it starts every call of it (shard index -> [(actor method, args[, kwargs])]), then
    collects their results (shard index -> results in order). A shard that fails with a StorageError
    (down, restarting, not ready: a 503) raises it, unless the request allows a partial answer: then
    it is left out of this and every later answer, and named by `missing()`; so is a shard that has
    not answered a partial request's calls within ray_shards.PARTIAL_WAIT seconds."""

    def __init__(self, member: _Member, partial: bool) -> None:
        self.shards, self.partial = member.shards, partial
        self.live = list(range(len(member.shards)))
        self._lost: dict[int, StorageError] = {}

    def lost(self, j: int, exc: StorageError) -> None:
        if not self.partial:
            raise exc
        if j in self.live:
            self.live.remove(j)
            self._lost[j] = exc

    def __call__(self, work: dict[int, list[tuple[Any, ...]]]) -> dict[int, list[Any]]:
        started: dict[int, list[Any]] = {}
        for j, calls in work.items():
            if j not in self.live:
                continue
            try:
                started[j] = [self.shards[j].submit(c[0], *c[1], **(c[2] if len(c) > 2 else {})) for c in calls]
            except StorageError as exc:
                self.lost(j, exc)
        out: dict[int, list[Any]] = {}
        deadline = None
        if self.partial:  # the shards still silent then are left out (a restarting actor holds calls)
            from service import ray_shards

            deadline = time.monotonic() + ray_shards.PARTIAL_WAIT
        for j, refs in started.items():
            try:
                out[j] = [self.shards[j].result(ref, None if deadline is None
                                                else max(0.0, deadline - time.monotonic())) for ref in refs]
            except StorageError as exc:
                self.lost(j, exc)
        return out

    def missing(self) -> tuple[str, ...]:
        """The labels of the shards lost, in shard order."""
        return tuple(self.shards[j].label for j in sorted(self._lost))

    def nobody(self) -> StorageError:
        """The error of a request that lost every shard: the first shard's."""
        return self._lost[min(self._lost)]
#: sharded restores under way (Coordinator.restore_sharded): the collection and the token of its commit
_RESTORES = """CREATE TABLE IF NOT EXISTS shard_restores (cid INTEGER PRIMARY KEY, token INTEGER NOT NULL)"""


def _bulk_rows(chunks: Iterable[F32], ids: Iterable[Ext], payloads: Sequence[str | None] | None
               ) -> Iterator[tuple[F32, Sequence[Ext], list[str | None] | None, int]]:
    """Each chunk of a bulk write with its ids, its payloads and the rows before it, checked as they
    come; after the last chunk, that ids and payloads were not longer than the rows. A range of ids
    (`?start=`) goes on as ranges: no Python int per row."""
    whole = ids if isinstance(ids, range) else None
    id_iter = iter(ids)
    n = 0
    for X in chunks:
        exts: Sequence[Ext]
        if whole is not None:
            exts = whole[n:n + len(X)]
            id_iter = iter(whole[n + len(exts):])
        else:
            exts = list(itertools.islice(id_iter, len(X)))
        if len(exts) != len(X):
            raise InvalidInput("ids", f"{n + len(exts)} ids for at least {n + len(X)} rows")
        if payloads is not None and n + len(X) > len(payloads):
            raise InvalidInput("payloads", f"{len(payloads)} payloads for at least {n + len(X)} rows")
        yield X, exts, None if payloads is None else list(payloads[n:n + len(X)]), n
        n += len(X)
    if next(id_iter, None) is not None:
        raise InvalidInput("ids", f"more ids than the {n} rows of the matrix")
    if payloads is not None and n and len(payloads) != n:
        raise InvalidInput("payloads", f"{len(payloads)} payloads for {n} rows")


def pick_index(entry: Entry, metric: str | None, temperature: float | None, kind: str | None,
               prefix: str = "") -> IndexSpec:
    """The one index picker: the ready index of `entry` for (metric, temperature, kind), the
    defaults filled (the first ready metric; the only temperature; the cheapest kind, flat first),
    with errors that list what is indexed, and Conflict when the wanted index is still building."""
    ready = entry.specs("ready")
    metric = metric if metric is not None else (ready[0].metric if ready else entry.config.metrics[0])
    if metric not in INDEXABLE:
        raise InvalidInput(f"{prefix}metric", f"unknown metric {metric!r}; indexable: {', '.join(INDEXABLE)}")
    building = entry.specs("building")
    same = [s for s in ready if s.metric == metric]
    if not same:
        _if_building(building, metric, temperature, kind)
        raise InvalidInput(f"{prefix}metric", f"no {metric} index; indexed metrics: {sorted({s.metric for s in ready})}")
    t: float | None
    if metric in TEMPERED:
        temps = sorted({s.temperature for s in same if s.temperature is not None})
        t = temperature
        if t is None:
            if len(temps) != 1:
                raise InvalidInput(f"{prefix}temperature", f"required for {metric}; indexed temperatures: {temps}")
            t = temps[0]
        t = check_temperature(t, f"{prefix}temperature")
        same = [s for s in same if s.temperature is not None and math.isclose(s.temperature, t, rel_tol=1e-9)]
        wanted = f"{metric} index at t={t:g}"
        if not same:
            _if_building(building, metric, t, kind)
            raise InvalidInput(f"{prefix}temperature", f"no {wanted}; indexed temperatures for {metric}: {temps}")
    else:
        if temperature is not None:
            raise InvalidInput(f"{prefix}temperature", f"{metric} is computed over raw logits: leave it out")
        t, wanted = None, f"{metric} index"
    if kind is None:
        return min(same, key=lambda s: KINDS.index(s.kind))
    for s in same:
        if s.kind == kind:
            return s
    _if_building(building, metric, t, kind)
    raise InvalidInput(f"{prefix}kind", f"no {kind} {wanted}; indexed kinds: {sorted(s.kind for s in same)}")


def _if_building(building: list[IndexSpec], metric: str, t: float | None, kind: str | None) -> None:
    for s in building:
        if s.metric == metric and (kind is None or s.kind == kind) and (
                t is None or (s.temperature is not None and math.isclose(s.temperature, t, rel_tol=1e-9))):
            raise Conflict(f"index {s.key} is still building; GET .../indexes shows its progress")


