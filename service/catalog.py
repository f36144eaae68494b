"""The catalog: which collections exist, their configs, their desired indexes and states, and each
collection's committed write sequence. It is the only owner of these facts; the shards and the
coordinator ask it.

Durable in SQLite's `collections` table (service/store.py). Changes are written there first and
only then made in memory, so a failed write leaves both as they were.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import Conflict, InvalidInput, NotFound
from core.metrics import INDEXABLE, TEMPERED
from core.validate import check_temperature
from indexes.knn import IndexSpec
from service import filters
from service.store import Store, StoredCollection, Transaction

IndexStatus = Literal["building", "ready", "failed"]

DEFAULT_METRICS = ("euc", "cos", "tri")
DEFAULT_TEMPERATURES = (10.0,)
#: most shards one collection may have (issue 13)
MAX_SHARDS = 256
#: internal ids reserved durably at once for sharded writes
RESERVE_BLOCK = 65536


def check_name(name: str) -> None:
    """InvalidInput("name") unless `name` is a valid collection name."""
    ok = 1 <= len(name) <= 128 and name[0].isalnum() and all(c.isalnum() or c in "._-" for c in name) \
        and name.isascii()
    if not ok:
        raise InvalidInput("name", "1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit; "
                                   f"got {name!r}")


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
    #: None: one shard in the server's process (the default); n: n Ray actors (issue 13), fixed at create
    shards: int | None = None

    @classmethod
    def create(cls, dim: Any, metrics: Sequence[str] | None = None, temperatures: Sequence[Any] | None = None,
               kind: str = "flat", params: dict[str, Any] | None = None,
               payload_index: Sequence[str] | None = None, shards: Any = None) -> CollectionConfig:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
            raise InvalidInput("dim", f"must be a whole number in [1, 65536], got {dim!r}")
        chosen = DEFAULT_METRICS if metrics is None else tuple(metrics)
        for i, m in enumerate(chosen):
            if m not in INDEXABLE:
                raise InvalidInput(f"metrics.{i}", f"unknown metric {m!r}; indexable: {', '.join(INDEXABLE)}")
        if not chosen:
            raise InvalidInput("metrics", "give at least one metric to index")
        ms = tuple(m for m in INDEXABLE if m in chosen)
        ts: tuple[float, ...] = ()
        if any(m in TEMPERED for m in ms):
            raw = DEFAULT_TEMPERATURES if temperatures is None else tuple(temperatures)
            if not raw:
                raise InvalidInput("temperatures", "tri and ced need at least one temperature")
            ts = tuple(sorted({check_temperature(t, f"temperatures.{i}") for i, t in enumerate(raw)}))
        # IndexSpec fills and checks the parameters of the kind (InvalidInput "params.M" etc.)
        probe = IndexSpec(ms[0], ts[0] if ms[0] in TEMPERED else None, kind, dict(params or {}))  # type: ignore[arg-type]
        keys = tuple(sorted({filters.check_key(k, f"payload_index.{i}") for i, k in enumerate(payload_index or ())}))
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)
                                   or not 1 <= shards <= MAX_SHARDS):
            raise InvalidInput("shards", f"must be a whole number in [1, {MAX_SHARDS}], got {shards!r}")
        return cls(dim, ms, ts, probe.kind, dict(probe.params), keys, shards)

    def specs(self) -> list[IndexSpec]:
        out = []
        for m in self.metrics:
            for t in (self.temperatures if m in TEMPERED else (None,)):
                out.append(IndexSpec(m, t, self.kind, self.params))  # type: ignore[arg-type]
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dim": self.dim, "metrics": list(self.metrics), "temperatures": list(self.temperatures),
                               "index": {"kind": self.kind, "params": dict(self.params)},
                               "payload_index": list(self.payload_index)}
        if self.shards is not None:
            out["shards"] = self.shards
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollectionConfig:
        return cls.create(d["dim"], d["metrics"], d["temperatures"] or None, d["index"]["kind"],
                          d["index"]["params"], d.get("payload_index"), d.get("shards"))

    def differences(self, other: CollectionConfig) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {theirs.get(k)} (existing: {mine.get(k)})" for k in {**mine, **theirs}
                if mine.get(k) != theirs.get(k)]


@dataclass(frozen=True)
class IndexState:
    """One desired index of a collection and how far it is: building, ready or failed (with why)."""

    spec: IndexSpec
    status: IndexStatus
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "status": self.status, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexState:
        return cls(IndexSpec.from_dict(d["spec"]), d["status"], d.get("error"))


@dataclass(frozen=True)
class Entry:
    """A collection as the catalog knows it (a value: the catalog replaces it on each change)."""

    cid: int
    name: str
    config: CollectionConfig
    indexes: tuple[IndexState, ...]
    #: the committed write sequence: the operation id of the last write that COMMITted
    last_seq: int

    def index(self, key: str) -> IndexState | None:
        return next((s for s in self.indexes if s.spec.key == key), None)

    def specs(self, status: IndexStatus) -> list[IndexSpec]:
        return [s.spec for s in self.indexes if s.status == status]

    def index_list(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.indexes]

    @classmethod
    def from_stored(cls, sc: StoredCollection) -> Entry:
        return cls(sc.cid, sc.name, CollectionConfig.from_dict(sc.config),
                   tuple(IndexState.from_dict(d) for d in sc.indexes), sc.last_seq)


# --- the catalog -----------------------------------------------------------------------------------


class Catalog:
    """Collections by name, each an `Entry`; changes go to SQLite first, then to memory."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._entries: dict[str, Entry] = {}
        self._lock = threading.RLock()
        self._next = self._limit = 0  # the reserved block of internal ids (sharded writes)

    def load(self) -> list[Entry]:
        """Read every collection from SQLite (at start); the entries in creation order."""
        entries = [Entry.from_stored(sc) for sc in self._store.collections()]
        with self._lock:
            self._entries = {e.name: e for e in entries}
        return entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def find(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def get(self, name: str) -> Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"collection {name!r} not found")
        return entry

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    @property
    def lock(self) -> threading.RLock:
        """Held while a collection is created, replaced or dropped (before a shard's own locks)."""
        return self._lock

    def create(self, tx: Transaction, name: str, config: CollectionConfig, indexes: Sequence[IndexState],
               last_seq: int = 0) -> Entry:
        """Record a new collection in `tx`; `publish` it once `tx` has committed."""
        cid = tx.create_collection(name, config.to_dict(), [s.to_dict() for s in indexes])
        if last_seq:
            tx.set_last_seq(cid, last_seq)
        return Entry(cid, name, config, tuple(indexes), last_seq)

    def publish(self, entry: Entry) -> None:
        """Make a committed entry (new, or replacing one of the same name) the catalog's."""
        with self._lock:
            self._entries[entry.name] = entry

    def remove(self, name: str) -> None:
        """Forget `name` in memory (its rows went in the transaction that dropped its shard)."""
        with self._lock:
            self._entries.pop(name, None)

    def committed(self, name: str, seq: int) -> None:
        """A write with operation id `seq` has committed to `name`."""
        with self._lock:
            e = self._entries.get(name)
            if e is not None and seq > e.last_seq:
                self._entries[name] = dataclasses.replace(e, last_seq=seq)

    def set_config(self, name: str, config: CollectionConfig) -> None:
        """The collection's config changed in a transaction that has committed (payload keys)."""
        with self._lock:
            e = self.get(name)
            self._entries[name] = dataclasses.replace(e, config=config)

    def set_index(self, name: str, state: IndexState, *, expect: IndexState | None = None) -> bool:
        """Record `state` for its key (adding it when new), durably; with `expect`, only if the key's
        current state equals it (False otherwise: dropped or replaced meanwhile)."""
        with self._lock:
            e = self._entries.get(name)
            if e is None:
                return False
            current = e.index(state.spec.key)
            if expect is not None and current != expect:
                return False
            if expect is None and current is not None:
                raise Conflict(f"index {state.spec.key} exists")
            indexes = tuple(state if s.spec.key == state.spec.key else s for s in e.indexes) \
                if current is not None else (*e.indexes, state)
            self._save(e, indexes)
            return True

    def drop_index(self, name: str, key: str) -> IndexState:
        """Remove the index `key` from the desired list, durably; NotFound listing the keys."""
        with self._lock:
            e = self.get(name)
            current = e.index(key)
            if current is None:
                raise NotFound(f"no index {key!r} in collection {name!r}; indexes: "
                               f"{sorted(s.spec.key for s in e.indexes)}")
            self._save(e, tuple(s for s in e.indexes if s.spec.key != key))
            return current

    def _save(self, e: Entry, indexes: tuple[IndexState, ...]) -> None:
        with self._store.transaction() as tx:
            tx.set_indexes(e.cid, [s.to_dict() for s in indexes])
        self._entries[e.name] = dataclasses.replace(e, indexes=indexes)

    # --- writes that span a sharded collection's shards (issue 13) ------------------------------

    def open_commits(self) -> None:
        """Create the table of sharded writes' commit records (with Ray only: without it the
        catalog's SQLite stays as it was)."""
        with self._store.transaction() as tx:
            tx.connection.execute(_COMMITS)
            tx.connection.execute(_PLACEMENT)

    def reserve(self, n: int) -> int:
        """max(n, 1) fresh internal ids, the candidates of one sharded write; the first is the
        write's token. Taken from a block allocated durably (RESERVE_BLOCK at a time, one fsync per
        block, not per write): never reused, so a stale prepared part cannot pass for a new one; a
        restart leaves the rest of the block unused (gaps keep the order)."""
        n = max(n, 1)
        with self._lock:
            if self._next + n > self._limit:
                size = max(n, RESERVE_BLOCK)
                with self._store.transaction() as tx:
                    self._next = tx.allocate(size)
                self._limit = self._next + size
            start, self._next = self._next, self._next + n
            return start

    def commit(self, name: str, token: int) -> int:
        """THE commit point of a sharded write: its token recorded with the collection's next
        operation id, in one transaction. The operation id."""
        with self._lock:
            e = self.get(name)
            with self._store.transaction() as tx:
                seq = tx.next_seq(e.cid)
                tx.connection.execute("INSERT INTO shard_commits (cid, token, seq) VALUES (?, ?, ?)", (e.cid, token, seq))
            self._entries[name] = dataclasses.replace(e, last_seq=seq)
            return seq

    def set_placement(self, cid: int, nodes: Sequence[str]) -> None:
        """The node (its address) that holds each shard's files, recorded at create."""
        with self._store.transaction() as tx:
            tx.connection.executemany("INSERT OR REPLACE INTO shard_nodes (cid, shard, node) VALUES (?, ?, ?)",
                                 [(cid, j, node) for j, node in enumerate(nodes)])

    def placement(self, cid: int) -> list[str]:
        with self._store.transaction() as tx:
            rows = tx.connection.execute("SELECT node FROM shard_nodes WHERE cid = ? ORDER BY shard", (cid,)).fetchall()
        return [r[0] for r in rows]

    def forget_sharded(self, cid: int) -> None:
        """A sharded collection was dropped: its placement and commit records go too."""
        with self._store.transaction() as tx:
            tx.connection.execute("DELETE FROM shard_nodes WHERE cid = ?", (cid,))
            tx.connection.execute("DELETE FROM shard_commits WHERE cid = ?", (cid,))

    def is_committed(self, cid: int, token: int) -> bool:
        with self._store.transaction() as tx:
            row = tx.connection.execute("SELECT 1 FROM shard_commits WHERE cid = ? AND token = ?", (cid, token)).fetchone()
        return row is not None

    def forget_commits(self, cid: int, below: int | None = None) -> None:
        """Drop commit records every shard has published (all of them, or those with token < `below`)."""
        with self._store.transaction() as tx:
            tx.connection.execute("DELETE FROM shard_commits WHERE cid = ? AND token < ?", (cid, below if below is not None
                                                                                       else 2**62))


_PLACEMENT = """CREATE TABLE IF NOT EXISTS shard_nodes (
    cid INTEGER NOT NULL, shard INTEGER NOT NULL, node TEXT NOT NULL, PRIMARY KEY (cid, shard)) WITHOUT ROWID"""
_COMMITS = """CREATE TABLE IF NOT EXISTS shard_commits (
    cid INTEGER NOT NULL, token INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (cid, token)) WITHOUT ROWID"""

