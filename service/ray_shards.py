"""Sharded collections on Ray (issue 13): each shard of a collection is a named, detached Ray actor.

A `ShardActor` wraps one `CollectionShard` (service/shard.py) with a SQLite of its own and its index
snapshots, in `<data dir>/shards/c<cid>-s<j>/` on the node it is pinned to. It is made from
immutable arguments only (names, the directory, the config it is created with) and recovers from its
own files whenever Ray (re)starts it (`max_restarts=-1`): the config, the shard's copy of its desired
indexes and its points are in its SQLite. `RemoteShard` is the coordinator's handle on it, with the
`CollectionShard` interface, so service/coordinator.py calls `shard.search(groups)` alike for both.

Writes go in two phases so that a request spanning shards is all-or-nothing. Each touched shard
`prepare`s its part durably (the `prepared` table, keyed by the write's token); the coordinator
records the commit in its catalog (service/catalog.py `Catalog.commit`, the one commit point); then
each shard `publish`es: its part goes through the shard's ordinary write, in ONE SQLite transaction
with the deletion of the prepared part and the token's row in `ops`. A publish is idempotent by
token (Ray or the coordinator may send it twice), and `resolve` publishes or drops what a crash left
prepared, as the catalog says. Each publish and resolve carries the coordinator's watermark (every
write with a smaller token is settled on every shard): below it the shard prunes `ops` and stale
prepared parts and treats a late op as settled, so both tables stay a few rows long. Nothing here
is an RPC layer of our own: Ray carries the calls.

Each row is written twice on its shard: into `prepared` (one pickled blob per part, fsynced) and,
at publish, into the points table through the shard's ordinary write (id map, payload index,
operation id, index apply). Measured on this machine for 20,000 x 256 float32 rows (20 MB) on one
shard: prepare 0.3-0.46 s, publish 1.3-1.7 s, so the first write is about a fifth of the shard's
cost. Writing the rows once would need the points table to hold unpublished rows that every reader
of it (scroll, get, count, replay, snapshots) leaves out until the publish: a change to the store
and the shard, not made here.

Routing: `shard_of(id, n)` hashes the type-tagged id (5 and "5" differ) into BUCKETS fixed buckets,
bucket -> shard by `bucket % n`. Internal ids are candidates the coordinator reserves in its catalog
for every row of a request, so they stay globally unique and in request order across shards.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import pickle
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, LogitsearchError, StorageError
from indexes.knn import IndexSet, IndexSpec
from service import filters
from service.catalog import CollectionConfig, IndexState, IndexStatus
from service.shard import CollectionShard, Point, ShardStatus, public_reason
from service.store import Ext, Store, Transaction

log = logging.getLogger("logitsearch.ray")

#: fixed hash buckets; bucket -> shard is `bucket % shards`
BUCKETS = 4096
#: the Ray namespace of every shard actor
NAMESPACE = "logitsearch"
#: object store of a `local` Ray started by the server
LOCAL_OBJECT_STORE = 512 * 1024**2
#: threads per shard actor for concurrent calls (searches, a waiting write, status)
ACTOR_CONCURRENCY = 16
#: seconds a call waits for a shard before answering 503 (calls to an actor Ray is restarting wait
#: for the restart; read at each call)
CALL_TIMEOUT = 120.0
#: seconds a search with allow_partial waits for its shards before it answers without those still
#: silent (a restarting one, or one slower than this), flagged
PARTIAL_WAIT = 5.0
#: seconds a status call waits (readiness, GET of a collection)
STATUS_TIMEOUT = 5.0
#: a shard whose files could not be opened tries again at the first call this long after
REOPEN_SECONDS = 2.0
#: seconds a committed write keeps retrying its publish on a restarting shard before answering 503
PUBLISH_WAIT = 20.0


class ShardUnavailable(StorageError):
    """A shard's actor is down or restarting (503, Retry-After): its name says which."""

    def __init__(self, label: str, why: str) -> None:
        super().__init__(f"shard {label} is unavailable ({why}); Ray is restarting it, retry shortly")
        self.label, self.why = label, why

    def __reduce__(self) -> tuple[type[ShardUnavailable], tuple[str, str]]:
        return type(self), (self.label, self.why)


def bucket_of(ext: Ext) -> int:
    """The id's bucket: blake2b of the type-tagged id ("i:5" and "s:5" differ), mod BUCKETS."""
    tag = (b"i:" + str(int(ext)).encode()) if isinstance(ext, int) else b"s:" + ext.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(tag, digest_size=8).digest(), "little") % BUCKETS


def shard_of(ext: Ext, shards: int) -> int:
    return bucket_of(ext) % shards


def route(ids: Sequence[Ext], shards: int) -> list[list[int]]:
    """For each shard, the positions in `ids` it owns, in order."""
    out: list[list[int]] = [[] for _ in range(shards)]
    for r, e in enumerate(ids):
        out[shard_of(e, shards)].append(r)
    return out


def actor_name(data_dir: Path, cid: int, shard: int) -> str:
    """Unique per data directory: two servers on one Ray cluster do not share actors."""
    key = hashlib.blake2b(str(Path(data_dir).resolve()).encode(), digest_size=5).hexdigest()
    return f"c{cid}-s{shard}-{key}"



# --- the actor's side ------------------------------------------------------------------------------


class ShardStore(Store):
    """A shard's own SQLite, plus `prepared(token, part, kind, body)`, `ops(token, count)` and the
    `settled` watermark: every write with a token below it is published here or was aborted.

    Both tables stay small: a publish that carries the coordinator's watermark deletes, in its own
    transaction, the ops rows and any stale prepared part below it, and raises the watermark. An op
    below the watermark is settled: a late prepare of it is ignored and a late publish applies
    nothing, so pruning `ops` keeps a retried op from applying twice.
    """

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        # thread -> (token, watermark) its next transaction publishes
        self._publishing: dict[int, tuple[int, int | None]] = {}

    def open(self) -> None:
        super().open()
        with super().transaction() as tx:
            c = tx.connection
            c.execute("CREATE TABLE IF NOT EXISTS prepared (token INTEGER NOT NULL, part INTEGER NOT NULL, "
                      "kind TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (token, part)) WITHOUT ROWID")
            c.execute("CREATE TABLE IF NOT EXISTS ops (token INTEGER PRIMARY KEY, count INTEGER NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS settled (id INTEGER PRIMARY KEY CHECK (id = 0), "
                      "below INTEGER NOT NULL)")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        publishing = self._publishing.pop(threading.get_ident(), None)
        with super().transaction() as tx:
            if publishing is not None:  # the write that publishes `token`: the part leaves `prepared` with it
                token, below = publishing
                c = tx.connection
                c.execute("INSERT INTO ops (token, count) VALUES (?, -1)", (token,))
                c.execute("DELETE FROM prepared WHERE token = ?", (token,))
                if below is not None:
                    _settle(c, below)
            yield tx

    def publishing(self, token: int, below: int | None = None) -> None:
        """The calling thread's next transaction publishes `token` (and settles what is below `below`)."""
        self._publishing[threading.get_ident()] = (token, below)

    def settled_below(self) -> int:
        """The watermark: every token below it is settled on this shard (0: none yet)."""
        rows = self._read("SELECT below FROM settled WHERE id = 0", ())
        return int(rows[0][0]) if rows else 0

    def table_sizes(self) -> tuple[int, int]:
        """(rows of ops, rows of prepared): what the watermark keeps bounded."""
        ops = self._read("SELECT COUNT(*) FROM ops", ())[0][0]
        return int(ops), int(self._read("SELECT COUNT(*) FROM prepared", ())[0][0])

    def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"storage failed ({exc})") from exc
        finally:
            conn.close()

    def put_prepared(self, token: int, part: int, kind: str, body: bytes) -> None:
        with super().transaction() as tx:
            tx.connection.execute("INSERT OR REPLACE INTO prepared (token, part, kind, body) VALUES (?, ?, ?, ?)",
                             (token, part, kind, body))

    def drop_prepared(self, token: int) -> None:
        with super().transaction() as tx:
            tx.connection.execute("DELETE FROM prepared WHERE token = ?", (token,))

    def prepared_parts(self, token: int) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in self._read("SELECT part, kind FROM prepared WHERE token = ? ORDER BY part",
                                                 (token,))]

    def prepared_body(self, token: int, part: int) -> Any:
        rows = self._read("SELECT body FROM prepared WHERE token = ? AND part = ?", (token, part))
        return pickle.loads(rows[0][0])  # our own durable file, written by put_prepared

    def prepared_tokens(self) -> list[int]:
        return [r[0] for r in self._read("SELECT DISTINCT token FROM prepared ORDER BY token", ())]

    def published(self, token: int) -> int | None:
        rows = self._read("SELECT count FROM ops WHERE token = ?", (token,))
        return None if not rows else int(rows[0][0])

    def set_count(self, token: int, count: int) -> None:
        with super().transaction() as tx:
            tx.connection.execute("UPDATE ops SET count = ? WHERE token = ?", (count, token))


def _settle(c: sqlite3.Connection, below: int) -> None:
    """Prune the ops and prepared parts below watermark `below` and raise the watermark to it."""
    c.execute("DELETE FROM ops WHERE token < ?", (below,))
    c.execute("DELETE FROM prepared WHERE token < ?", (below,))
    c.execute("INSERT INTO settled (id, below) VALUES (0, ?) ON CONFLICT (id) DO UPDATE SET "
              "below = max(below, excluded.below)", (below,))


def _limit_threads(threads: int) -> None:
    """numba's and FAISS's OpenMP threads = the actor's CPUs (its env set them before the imports)."""
    import faiss
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    faiss.omp_set_num_threads(threads)


#: CollectionShard methods the coordinator may call on an actor through `call`
_SHARD_METHODS = frozenset({
    "status", "points", "settle", "snapshot", "configure", "index_payloads", "unindex_payloads", "matching",
    "select", "query_vector", "search", "searches", "describe", "get_points", "payload_values", "indexed_ids", "rows"})


class ShardActor:
    """One shard of one collection in its own process (Ray titles it `ray::ShardActor`)."""

    def __init__(self, name: str, shard: int, directory: str, config: dict[str, Any], snapshot_every: int,
                 threads: int) -> None:
        from service.lifecycle import start_process

        _limit_threads(threads)
        start_process()
        self.label = f"{name}/shard-{shard}"
        # a constructor that raises leaves a Ray actor dead for good (Ray restarts a process that
        # died, not a constructor that failed): a shard whose files cannot be opened answers 503 with
        # the reason instead, and opens them again at a call REOPEN_SECONDS later (its files mended)
        self._args = (name, directory, config, snapshot_every)
        self._error: str | None = None
        self._next_try = 0.0
        self._opening = threading.Lock()
        self._open_or_record()

    def _open_or_record(self) -> None:
        try:
            self._open(*self._args)
            self._error = None
        except Exception as exc:  # whatever stops the open, the shard says so and retries
            store = getattr(self, "_store", None)
            if store is not None:
                store.close()
            self._error, self._next_try = public_reason(exc), time.monotonic() + REOPEN_SECONDS
            log.error("shard could not open its files", exc_info=exc, extra={"fields": {"shard": self.label}})

    def _ensure_open(self) -> None:
        if self._error is None:
            return
        with self._opening:
            if self._error is not None and time.monotonic() >= self._next_try:
                self._open_or_record()
        if self._error is not None:
            raise ShardUnavailable(self.label, f"its files could not be opened: {self._error}")

    def _open(self, name: str, directory: str, config: dict[str, Any], snapshot_every: int) -> None:
        self._dir = Path(directory)
        self._store = ShardStore(self._dir)
        self._store.open()
        for scratch in [*self._dir.glob("archive-*"), *self._dir.glob("restore-*")]:  # a killed run's
            shutil.rmtree(scratch, ignore_errors=True)
        self._snapshot_every = snapshot_every
        self._archives: dict[int, tuple[ExitStack, Any, Any]] = {}  # token -> held part (archive_hold)
        fresh = not self._store.collections()
        if fresh:
            cfg = CollectionConfig.from_dict(config)
            with self._store.transaction() as tx:
                tx.create_collection(name, cfg.to_dict(), [IndexState(s, "ready").to_dict() for s in cfg.specs()])
        sc = self._store.collections()[0]
        self._cid = sc.cid
        self._states = {d.spec.key: d for d in (IndexState.from_dict(x) for x in sc.indexes)}
        self._built: dict[str, threading.Event] = {}
        self._states_lock = threading.RLock()  # builds end on their own threads
        self._write = threading.Lock()
        self.shard = CollectionShard(sc.cid, name, CollectionConfig.from_dict(sc.config), self._store,
                                     self._dir / "indexes", snapshot_every=snapshot_every, on_index=self._on_index)
        if fresh:
            self.shard.start_empty([s.spec for s in self._states.values()])
        else:
            ready = [s.spec for s in self._states.values() if s.status == "ready"]
            building = [s.spec for s in self._states.values() if s.status == "building"]
            self.shard.load(ready, building, sc.last_seq)

    # --- identity and generic calls ----------------------------------------------------------------

    def threads(self) -> tuple[int, int]:
        """(numba threads, FAISS OpenMP threads) a call on this actor runs its kernels with. Both are
        per-thread settings, and calls run on Ray's pool threads, so only the actor's environment
        (its runtime_env) sets them for every thread; `_limit_threads` in __init__ alone would not."""
        import faiss
        import numba

        return int(numba.get_num_threads()), int(faiss.omp_get_max_threads())

    def ping(self) -> tuple[int, str]:
        return os.getpid(), self.label

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in _SHARD_METHODS:
            raise StorageError(f"shard method {method!r} is not callable remotely")
        return getattr(self.shard, method)(*args, **kwargs)

    # --- two-phase writes ------------------------------------------------------------------------

    def prepare(self, token: int, part: int, kind: str, body: tuple[Any, ...]) -> None:
        """Make part `part` of write `token` durable here, unpublished (idempotent)."""
        if kind in ("upsert", "bulk"):
            self.shard.ready()  # 503 now rather than at publish
        # below the watermark the write is settled (published or aborted): a late retry is ignored
        if self._store.published(token) is None and token >= self._store.settled_below():
            self._store.put_prepared(token, part, kind, pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL))

    def abort(self, token: int) -> None:
        self._store.drop_prepared(token)

    def prepared_tokens(self) -> list[int]:
        return self._store.prepared_tokens()

    def op_tables(self) -> tuple[int, int, int]:
        """(rows of ops, rows of prepared, the watermark): for /metrics and the tests."""
        return (*self._store.table_sizes(), self._store.settled_below())

    def publish(self, token: int, wait: bool, settled_below: int | None = None) -> tuple[int, str]:
        """Apply prepared write `token` (its first publish only); (count, status) where status is
        completed / rebuilding once applied with `wait`, else acknowledged. `settled_below`: the
        coordinator's watermark (every write with a smaller token is settled on every shard),
        recorded and pruned below in the publishing transaction. A token below the watermark is
        settled already: nothing is applied (count 0)."""
        with self._write:
            count = self._store.published(token)
            if count is None and token < self._store.settled_below():
                count = 0  # published long ago (its ops row pruned) or aborted: never applied twice
            elif count is None:
                count = self._publish(token, settled_below)
        if not wait:
            return count, "acknowledged"
        self.shard.settle()
        return count, "completed" if self.shard.status().state == "ready" else "rebuilding"

    def _publish(self, token: int, settled_below: int | None) -> int:
        parts = self._store.prepared_parts(token)
        if not parts:
            raise StorageError(f"shard {self.label}: write {token} is neither prepared nor published")
        kind = parts[0][1]
        self._store.publishing(token, settled_below)
        try:
            if kind == "upsert":
                ids, X, payloads, cand = self._store.prepared_body(token, parts[0][0])
                n = self.shard.upsert(ids, X, payloads, candidates=cand).count
            elif kind == "bulk":
                handle = self.shard.bulk_begin()
                n = 0
                try:
                    for part, _ in parts:
                        ids, X, payloads, cand = self._store.prepared_body(token, part)
                        self.shard.bulk_chunk(handle, ids, X, payloads, cand)
                        n += len(ids)
                except BaseException as exc:
                    self.shard.bulk_abort(handle, exc)
                    raise
                self.shard.bulk_commit(handle)
            elif kind == "delete":
                (ids,) = self._store.prepared_body(token, parts[0][0])
                n = self.shard.delete(ids).count
            elif kind == "delete_matching":
                (flt,) = self._store.prepared_body(token, parts[0][0])
                n = self.shard.delete_matching(flt).count
            elif kind == "restore":
                n = self._restore(token, parts)
            else:
                raise StorageError(f"unknown prepared write kind {kind!r}")
        finally:
            self._store._publishing.pop(threading.get_ident(), None)
        self._store.set_count(token, n)
        return n

    def _restore(self, token: int, parts: list[tuple[int, str]]) -> int:
        """Publish a restore (service/snapshots.py) into this fresh, empty shard: its rows in ONE
        SQLite transaction (the parts leave `prepared` with it), then the shard reloaded as at a
        start, from the index snapshot staged beside (`stage`) or rebuilt from SQLite."""
        meta = self._store.prepared_body(token, parts[-1][0])[1]
        config = CollectionConfig.from_dict(self._store.collections()[0].config)
        n = 0
        with self._store.transaction() as tx:  # the first since `publishing(token)`
            for part, _ in parts:
                rows = self._store.prepared_body(token, part)[0]
                tx.restore_points(self._cid, rows)
                n += len(rows)
            tx.set_last_seq(self._cid, int(meta["last_seq"]))
            if config.payload_index:
                tx.index_payloads(self._cid, config.payload_index)
            with self._states_lock:  # the archive's desired indexes, this shard's copy of them
                self._states = {d.spec.key: d for d in (IndexState.from_dict(x) for x in meta["states"])}
                tx.set_indexes(self._cid, [st.to_dict() for st in self._states.values()])
        self.shard.drop()  # the empty shard: its applier and its (empty) index directory
        staged, iset = self._dir / f"restore-{token}" / "indexes", None
        if meta["staged"] and staged.is_dir():
            try:
                iset = IndexSet.load(staged, id_offset=int(meta["id_offset"]))
                iset.save(self._dir / "indexes")
            except Exception as exc:  # the rows are committed; the indexes are rebuilt from them
                log.warning("staged index snapshot unusable, rebuilding", exc_info=exc,
                            extra={"fields": {"shard": self.label}})
                iset = None
                shutil.rmtree(self._dir / "indexes", ignore_errors=True)
        shutil.rmtree(staged.parent, ignore_errors=True)
        self.shard = CollectionShard(self._cid, self.shard.name, config, self._store, self._dir / "indexes",
                                     snapshot_every=self._snapshot_every, on_index=self._on_index)
        with self._states_lock:
            ready = [s.spec for s in self._states.values() if s.status == "ready"]
            building = [s.spec for s in self._states.values() if s.status == "building"]
        self.shard.load(ready, building, int(meta["last_seq"]), iset)
        return n

    def stage(self, token: int, name: str, offset: int, data: bytes) -> None:
        """Write `data` at `offset` of file `name` of restore `token`'s staged index snapshot."""
        if not re.fullmatch(r"indexes/[A-Za-z0-9][A-Za-z0-9._-]{0,90}", name):
            raise InvalidInput("name", f"not a staged file name: {name[:80]!r}")
        path = self._dir / f"restore-{token}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.write(data)
            os.fsync(f.fileno())

    # --- this shard's part of a collection archive (service/snapshots.py) -----------------------

    def archive_hold(self, token: int) -> dict[str, Any]:
        """Hold this shard's part of archive `token` at its committed state (the coordinator holds
        the collection's writes meanwhile): its rows in a pinned SQLite read, its indexes copied in
        memory. Its count, write sequence and, when the indexes are left out, why."""
        with self._states_lock:
            building = sorted(k for k, s in self._states.items() if s.status == "building")
        stack = ExitStack()
        with self._write:
            last_seq = self._store.last_seq(self._cid)
            with self.shard.held(last_seq, building) as held:
                pinned = stack.enter_context(self._store.pinned(self._cid))
                captured = held.iset.capture() if held.iset is not None else None
        self._archives[token] = (stack, pinned, captured)
        return {"count": held.count, "last_seq": last_seq, "reason": held.rebuild_reason}

    def archive_write(self, token: int) -> dict[str, Any]:
        """Write held part `token` out beside the shard's files: points.sqlite3 and indexes/ (the
        archive's layout); its count, smallest and largest internal id, and files with their sizes."""
        from indexes import persist
        from service.snapshots import INDEXES, POINTS, write_points

        held = self._archives.get(token)
        if held is None:
            raise ShardUnavailable(self.label, "it restarted while the snapshot was taken")
        stack, pinned, captured = held
        work = self._dir / f"archive-{token}"
        try:
            work.mkdir()
            if captured is not None:
                persist.write(captured, work / INDEXES)
            count, lo, hi = write_points(work / POINTS, pinned.rows())
        finally:
            self._archives[token] = (stack, None, None)
            stack.close()
        files = [POINTS] + ([f"{INDEXES}/{p.name}" for p in sorted((work / INDEXES).iterdir())]
                            if captured is not None else [])
        return {"count": count, "iids": [lo, hi], "files": {f: (work / f).stat().st_size for f in files}}

    def archive_read(self, token: int, name: str, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` of file `name` of written part `token`."""
        if token not in self._archives or ".." in name:
            raise ShardUnavailable(self.label, "it restarted while the snapshot was taken")
        with open(self._dir / f"archive-{token}" / name, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def archive_end(self, token: int) -> None:
        held = self._archives.pop(token, None)
        if held is not None:
            held[0].close()
        shutil.rmtree(self._dir / f"archive-{token}", ignore_errors=True)

    def resolve(self, committed: Sequence[int], settled_below: int | None = None) -> None:
        """After a crash: publish the prepared writes in `committed` (in token order), drop the
        others; then, with `settled_below` (a token reserved after every write resolved here),
        prune and raise the watermark to it."""
        keep = set(committed)
        for token in self._store.prepared_tokens():
            if token in keep:
                self.publish(token, wait=False)
            else:
                self._store.drop_prepared(token)
        if settled_below is not None:
            with self._write, self._store.transaction() as tx:
                _settle(tx.connection, settled_below)

    # --- indexes (the shard keeps its own copy of its desired indexes, to recover alone) ---------

    def _save_states(self) -> None:
        """Called with `_states_lock` held."""
        with self._store.transaction() as tx:
            tx.set_indexes(self._cid, [s.to_dict() for s in self._states.values()])

    def _on_index(self, key: str, spec: IndexSpec, status: IndexStatus, error: str | None) -> None:
        with self._states_lock:
            if key in self._states:
                self._states[key] = IndexState(spec, status, error)
                self._save_states()
            elif status == "ready":  # dropped while it was building
                self.shard.drop_index(key)
            self._built.setdefault(key, threading.Event()).set()

    def build(self, spec: IndexSpec) -> None:
        with self._states_lock:
            current = self._states.get(spec.key)
            if current is not None and current.spec == spec and current.status != "failed":
                return  # building or built already (a retried call)
            self._states[spec.key] = IndexState(spec, "building")
            self._save_states()
            self._built[spec.key] = threading.Event()
        self.shard.build(spec)

    def wait_build(self, key: str, timeout: float) -> tuple[str, str | None] | None:
        """(status, error) of index `key` once its build has ended, None if still building."""
        with self._states_lock:
            state = self._states.get(key)
            event = self._built.setdefault(key, threading.Event())
        if state is None:
            return "failed", "the index was dropped"
        if state.status == "building":
            event.wait(timeout)
            state = self._states.get(key)
            if state is None or state.status == "building":
                return None
        return state.status, state.error

    def drop_index(self, key: str) -> None:
        with self._states_lock:
            if self._states.pop(key, None) is not None:
                self._save_states()
        self.shard.drop_index(key)

    # --- an evaluation's values, computed on the shard's own rows (service/sharded_sample.py) -----

    def sample_columns(self, iids: Any, xq: Any, t: float) -> Any:
        from service.sharded_sample import shard_columns

        return shard_columns(self.shard, iids, xq, t)

    def sample_roughness(self, iids: Any, t: float) -> tuple[float, int]:
        from service.sharded_sample import shard_roughness

        return shard_roughness(self.shard, iids, t)

    # --- reads that need internal ids --------------------------------------------------------------

    def scroll(self, offset: int, limit: int, with_vector: bool, with_payload: bool,
               flt: filters.Filter | None) -> tuple[list[Point], list[int]]:
        """Up to limit + 1 points from internal id `offset` on, with their internal ids (the
        coordinator merges the shards' pages by internal id)."""
        if flt is not None:
            iids = self.shard.matching(flt)
            page = iids[iids >= offset][:limit + 1].tolist()
            found = self._store.points(self._cid, page, vector=with_vector, payload=with_payload)
            rows = [found[i] for i in page if i in found]
        else:
            rows = self._store.scroll(self._cid, offset, limit + 1, vector=with_vector, payload=with_payload)
        return [Point(r.ext, r.vector, r.payload) for r in rows], [r.iid for r in rows]

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self.shard.close()
        self._store.close()

    def drop(self) -> None:
        self.shard.drop()
        self._store.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _opened(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: ShardActor, *args: Any, **kwargs: Any) -> Any:
        self._ensure_open()
        return method(self, *args, **kwargs)

    return call


# every call but the two that need no files waits for the shard's files to be open (503 until then)
for _name, _method in list(vars(ShardActor).items()):
    if callable(_method) and not _name.startswith("_") and _name not in ("threads", "ping"):
        setattr(ShardActor, _name, _opened(_method))


# --- the coordinator's side ------------------------------------------------------------------------


def _translate(exc: BaseException, label: str) -> BaseException:
    """A Ray error as ours: the shard's own domain error as it was raised, a dead, restarting or
    silent actor as ShardUnavailable (503); anything else stays a bug (500)."""
    from ray import exceptions as rx

    if isinstance(exc, rx.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, LogitsearchError):
            return cause
        if isinstance(cause, rx.UnserializableException):  # the shard raised what cannot travel: a bug
            return exc
        if isinstance(cause, rx.RayError) and not isinstance(cause, rx.RayTaskError):
            return ShardUnavailable(label, type(cause).__name__)
        return exc
    if isinstance(exc, rx.GetTimeoutError):
        return ShardUnavailable(label, "no answer in time")
    if isinstance(exc, rx.RayError):
        return ShardUnavailable(label, type(exc).__name__)
    return exc


class RemoteShard:
    """The coordinator's handle on one shard actor, with CollectionShard's interface."""

    def __init__(self, handle: Any, label: str, index: int) -> None:
        self.handle, self.label, self.index = handle, label, index

    # --- calls -----------------------------------------------------------------------------------

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Start a call; its ObjectRef (`result` waits for it)."""
        try:
            return getattr(self.handle, method).remote(*args, **kwargs)
        except Exception as exc:
            raise _translate(exc, self.label) from exc

    def result(self, ref: Any, timeout: float | None = None) -> Any:
        """The call's result, waiting at most `timeout` seconds (CALL_TIMEOUT when None)."""
        import ray

        try:
            return ray.get(ref, timeout=CALL_TIMEOUT if timeout is None else timeout)
        except Exception as exc:
            raise _translate(exc, self.label) from exc

    def _call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self.result(self.submit(method, *args, **kwargs), timeout)

    def _shard(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("call", method, *args, **kwargs)

    # --- the CollectionShard interface -------------------------------------------------------------

    def wait_loaded(self, timeout: float) -> bool:
        return True  # an actor answers once its constructor (the load) has run; calls time out as 503

    def ready(self) -> None:
        """Nothing to ask: each call checks the shard's state itself (a 503 when not ready)."""

    def status(self) -> ShardStatus:
        status: ShardStatus = self._call("call", "status", timeout=STATUS_TIMEOUT)
        return status

    def points(self) -> int:
        n: int = self._shard("points")
        return n

    def ping(self, timeout: float = STATUS_TIMEOUT) -> tuple[int, str]:
        out: tuple[int, str] = self._call("ping", timeout=timeout)
        return out

    def __getattr__(self, method: str) -> Any:
        if method in _SHARD_METHODS:
            return lambda *args, **kwargs: self._shard(method, *args, **kwargs)
        raise AttributeError(method)

    def build(self, spec: IndexSpec) -> None:
        self._call("build", spec)

    def drop_index(self, key: str) -> None:
        self._call("drop_index", key)

    def close(self) -> None:
        try:
            self._call("close", timeout=60)
        except LogitsearchError as exc:  # a down shard snapshots at its next start instead
            log.warning("shard did not close cleanly", extra={"fields": {"shard": self.label, "reason": str(exc)}})
        self.kill()

    def drop(self) -> None:
        try:
            self._call("drop", timeout=60)
        finally:
            self.kill()

    def kill(self) -> None:
        import ray

        try:
            ray.kill(self.handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 -- gone already
            log.debug("shard actor already gone", extra={"fields": {"shard": self.label, "reason": str(exc)}})


def gather(calls: Sequence[tuple[RemoteShard, Any]], timeout: float | None = None) -> list[Any]:
    """The results of calls started on several shards, in order; the first failure raises (a
    ShardUnavailable names its shard), never a partial list."""
    return [shard.result(ref, timeout) for shard, ref in calls]


class RayShards:
    """The Ray connection of one coordinator and the shard actors of its collections."""

    def __init__(self, address: str, data_dir: Path, snapshot_every: int, shard_cpus: float) -> None:
        # resolved here: an actor runs in a directory of its own, so a relative path would land there
        self.address, self.data_dir = address, Path(data_dir).resolve()
        self.snapshot_every, self.shard_cpus = snapshot_every, shard_cpus
        self._cls: Any = None

    def connect(self) -> None:
        import ray

        if not ray.is_initialized():
            if self.address == "local":
                # without it Ray 2.60 also binds some of its ports on the host's other addresses
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, namespace=NAMESPACE,
                         object_store_memory=LOCAL_OBJECT_STORE, log_to_driver=False)
            else:
                ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False)
        self._cls = ray.remote(ShardActor)

    def nodes(self) -> list[str]:
        """The addresses of the cluster's alive nodes, sorted (a shard's placement is one of them)."""
        import ray

        return sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})

    def check_room(self, shards: int) -> None:
        """InvalidInput("shards") when the cluster has not the CPUs for `shards` more actors (they
        would wait for a CPU forever)."""
        import ray

        free = float(ray.available_resources().get("CPU", 0.0))
        if shards * self.shard_cpus > free + 1e-9:
            raise InvalidInput("shards", f"{shards} shards x {self.shard_cpus:g} CPU (LOGITSEARCH_RAY_SHARD_CPUS) "
                                         f"need {shards * self.shard_cpus:g} CPUs; the Ray cluster has {free:g} "
                                         "free: lower the setting, use fewer shards or add nodes")

    def here(self) -> str:
        import ray

        node = ray.get_runtime_context().get_node_id()
        return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node)

    def directory(self, cid: int, shard: int) -> Path:
        return self.data_dir / "shards" / f"c{cid}-s{shard}"

    def shards(self, name: str, cid: int, config: CollectionConfig, placement: Sequence[str]) -> list[RemoteShard]:
        """The actors of a collection: found by name when alive, else (re)created from their files."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        n = config.shards or 1
        threads = max(1, math.ceil(self.shard_cpus))
        env = {"OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                              *filter(None, [os.environ.get("PYTHONPATH")])])}
        ids = {n_["NodeManagerAddress"]: n_["NodeID"] for n_ in ray.nodes() if n_.get("Alive")}
        out = []
        for j in range(n):
            label = f"{name}/shard-{j}"
            node = ids.get(placement[j]) if j < len(placement) else None
            if node is None:
                raise ShardUnavailable(label, f"its node {placement[j] if j < len(placement) else '?'} is not "
                                              "in the Ray cluster")
            handle = self._cls.options(
                name=actor_name(self.data_dir, cid, j), namespace=NAMESPACE, lifetime="detached",
                get_if_exists=True, max_restarts=-1, max_task_retries=0, num_cpus=self.shard_cpus,
                max_concurrency=ACTOR_CONCURRENCY, runtime_env={"env_vars": env},
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            ).remote(name, j, str(self.directory(cid, j)), config.to_dict(), self.snapshot_every, threads)
            out.append(RemoteShard(handle, label, j))
        return out

