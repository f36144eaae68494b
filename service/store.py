"""SQLite, the source of truth: collections, points with their write sequence, and deletes.

One file, `<data dir>/logitsearch.sqlite3`, in WAL mode with `synchronous=FULL`: COMMIT returns only
after the WAL is fsynced, so a write acknowledged with 2xx survives kill -9 of the process (WAL with
NORMAL would already give that) and a power loss (only FULL does). One writer connection behind a
lock runs one transaction per request (`Store.transaction`); readers use one connection per thread and
see the last committed state (WAL snapshot isolation), never half of a request.

Tables:
- `collections(cid, name, config, indexes, last_seq)`: config and the index list as JSON; `last_seq`
  is the collection's write sequence, one step per write request (its operation id).
- `points(iid, cid, ext, seq, vector, payload)`: `iid` is the internal int64 id the indexes use,
  unique over the whole database and never reused; `ext` is the id as the client gave it. The column
  has no declared type, so SQLite keeps an integer an integer and a string a string ('5' and 5 are two
  ids). `vector` is little-endian float32, `payload` a JSON object or NULL, `seq` the write that set it.
- `deleted(cid, iid, seq)`: deletes, so an index snapshot older than a delete can be brought up to
  date; pruned up to the snapshot's sequence once a snapshot is saved.
- `payload_values(cid, key, kind, value, iid)`: the payload index (issue 15), one row per scalar value of
  each declared payload key of each point (kinds and semantics in service/filters.py); `value` has no
  declared type, so integers, floats and strings keep their own. Written in the same transaction as
  the point (upsert, bulk ingest, delete), back-filled when a key is declared later.
- `meta(key, value)`: `next_iid`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from core.errors import StorageError
from service import filters

log = logging.getLogger("logitsearch.store")

FILENAME = "logitsearch.sqlite3"
SCHEMA_VERSION = 2  # 2: payload_values (an older logitsearch would write points without their index rows)
#: rows per SELECT batch when streaming vectors out (replay, rebuild)
READ_CHUNK = 8192

Ext = int | str
Ids = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
P = ParamSpec("P")
R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    cid INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    indexes TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS points (
    iid INTEGER PRIMARY KEY,
    cid INTEGER NOT NULL,
    ext NOT NULL,
    seq INTEGER NOT NULL,
    vector BLOB NOT NULL,
    payload TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS points_ext ON points (cid, ext);
CREATE INDEX IF NOT EXISTS points_seq ON points (cid, seq);
CREATE INDEX IF NOT EXISTS points_cid ON points (cid);
CREATE TABLE IF NOT EXISTS deleted (
    cid INTEGER NOT NULL,
    iid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (cid, iid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payload_values (
    cid INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value NOT NULL,
    iid INTEGER NOT NULL,
    PRIMARY KEY (cid, key, kind, value, iid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payload_values_iid ON payload_values (iid);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_iid', 0);
"""


def _reason(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return f"the data directory is read-only ({text}); nothing was written"
    if "disk is full" in text or "disk I/O" in text:
        return f"the disk refused the write ({text}); nothing was written"
    return f"storage failed ({text})"


def _guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """sqlite3 errors leave the store as StorageError with a clear reason (the transaction is rolled back)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StorageError(_reason(exc)) from exc

    return wrapper


#: page size of a new database (bytes)
PAGE_SIZE = 16384
#: page cache per connection (KiB): one per reader thread, and a load reads every row through one, so
#: a large cache is held as RSS (64 MiB each before issue 16); the OS page cache serves re-reads, and
#: 2 MiB (128 pages) holds every interior page of a 100M-row table's B-trees
CACHE_KIB = 2048
#: the WAL size from which a commit wakes the checkpointer
CHECKPOINT_BYTES = 4 * 1024 * 1024


def check_data_dir(path: Path) -> None:
    """Create the data directory if needed and make sure it is writable: SQLite in WAL mode creates
    -wal and -shm files beside the database even to read, so a read-only directory would otherwise
    fail later as "unable to open database file"."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the data directory {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StorageError(f"the data directory {path} is read-only (or not writable by this user); logitsearch "
                           "writes its database there: point --data-dir / LOGITSEARCH_DATA_DIR at a writable one")


@dataclass(frozen=True)
class StoredCollection:
    cid: int
    name: str
    config: dict[str, Any]
    indexes: list[dict[str, Any]]
    last_seq: int


@dataclass(frozen=True)
class StoredPoint:
    iid: int
    ext: Ext
    vector: F32 | None
    payload: dict[str, Any] | None


def _vector(blob: bytes) -> F32:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)


def _point(row: Sequence[Any], vector: bool, payload: bool) -> StoredPoint:
    return StoredPoint(row[0], row[1], _vector(row[2]) if vector else None,
                       json.loads(row[3]) if payload and row[3] is not None else None)


def _iids(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Ids:
    # one text row parsed by numpy: a third of the time of building a Python row per id (50k ids)
    text = conn.execute(f"SELECT group_concat(iid) FROM ({sql})", args).fetchone()[0]
    return np.empty(0, np.int64) if text is None else np.fromstring(text, dtype=np.int64, sep=",")


def _matching(conn: sqlite3.Connection, cid: int, f: filters.Filter) -> Ids:
    def leaf(c: filters.Leaf) -> Ids:
        sql, args = filters.leaf_sql(c)
        return np.unique(_iids(conn, sql, [cid, *args]))

    return filters.resolve(f, leaf, lambda: np.sort(_iids(conn, "SELECT iid FROM points WHERE cid = ?", [cid])))


class Transaction:
    """The writes of one request; `Store.transaction` commits them together or not at all."""

    def __init__(self, conn: sqlite3.Connection, payloads: dict[int, bool] | None = None) -> None:
        self._c = conn
        self._payloads = {} if payloads is None else payloads  # the store's Store.may_hold_payloads

    @property
    def connection(self) -> sqlite3.Connection:
        """The transaction's connection, for tables a module keeps beside the store's own (the
        commit records and placement of sharded writes, issue 13): what it writes commits or rolls
        back with the rest of the transaction."""
        return self._c

    def create_collection(self, name: str, config: dict[str, Any], indexes: list[dict[str, Any]]) -> int:
        cur = self._c.execute("INSERT INTO collections (name, config, indexes) VALUES (?, ?, ?)",
                              (name, json.dumps(config), json.dumps(indexes)))
        return int(cur.lastrowid or 0)

    def set_indexes(self, cid: int, indexes: list[dict[str, Any]]) -> None:
        self._c.execute("UPDATE collections SET indexes = ? WHERE cid = ?", (json.dumps(indexes), cid))

    def set_config(self, cid: int, config: dict[str, Any]) -> None:
        self._c.execute("UPDATE collections SET config = ? WHERE cid = ?", (json.dumps(config), cid))

    def drop_collection(self, cid: int) -> None:
        for table in ("points", "deleted", "payload_values", "collections"):
            self._c.execute(f"DELETE FROM {table} WHERE cid = ?", (cid,))

    def next_seq(self, cid: int) -> int:
        """The collection's next write sequence number (the operation id of this request)."""
        row = self._c.execute("UPDATE collections SET last_seq = last_seq + 1 WHERE cid = ? RETURNING last_seq",
                              (cid,)).fetchone()
        return int(row[0])

    def allocate(self, n: int) -> int:
        """The first of `n` fresh internal ids."""
        row = self._c.execute("UPDATE meta SET value = value + ? WHERE key = 'next_iid' RETURNING value",
                              (n,)).fetchone()
        return int(row[0]) - n

    def put_points(self, cid: int, seq: int, iids: Sequence[int], exts: Sequence[Ext], X: F32,
                   payloads: Sequence[str | None] | None, indexed: tuple[str, ...] = ()) -> None:
        """Insert or replace rows (a replaced point keeps its iid); X is float32 (n, d) C-ordered;
        the payload index rows of the `indexed` keys are replaced with them."""
        X = np.ascontiguousarray(X, dtype="<f4")
        pay = payloads if payloads is not None else [None] * len(iids)
        if any(p is not None for p in pay):
            self._payloads[cid] = True  # before the write: a reader never learns False after it
        self._c.executemany(
            "INSERT INTO points (iid, cid, ext, seq, vector, payload) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (iid) DO UPDATE SET seq = excluded.seq, vector = excluded.vector, "
            "payload = excluded.payload",
            ((int(i), cid, e, seq, memoryview(X[r]), pay[r]) for r, (i, e) in enumerate(zip(iids, exts))))
        if indexed:
            self._c.executemany("DELETE FROM payload_values WHERE iid = ?", ((int(i),) for i in iids))
            self._index(cid, ((int(i), p) for i, p in zip(iids, pay) if p is not None), indexed)

    def _index(self, cid: int, payloads: Iterable[tuple[int, str]], keys: tuple[str, ...]) -> None:
        self._c.executemany(
            "INSERT OR IGNORE INTO payload_values (cid, key, kind, value, iid) VALUES (?, ?, ?, ?, ?)",
            ((cid, key, kind, value, iid) for iid, text in payloads
             for key, kind, value in filters.index_rows(json.loads(text), keys)))

    def index_payloads(self, cid: int, keys: tuple[str, ...]) -> None:
        """Back-fill the payload index for newly declared `keys` from every stored payload."""
        self._c.execute(f"DELETE FROM payload_values WHERE cid = ? AND key IN ({','.join('?' * len(keys))})",
                        (cid, *keys))
        rows = self._c.execute("SELECT iid, payload FROM points WHERE cid = ? AND payload IS NOT NULL", (cid,))
        self._index(cid, rows.fetchall(), keys)

    def unindex_payloads(self, cid: int, key: str) -> None:
        self._c.execute("DELETE FROM payload_values WHERE cid = ? AND key = ?", (cid, key))

    def matching(self, cid: int, f: filters.Filter) -> Ids:
        """The iids of the points `f` matches, as this transaction sees them (sorted)."""
        return _matching(self._c, cid, f)

    def delete_points(self, cid: int, seq: int, iids: Sequence[int]) -> None:
        self._c.executemany("DELETE FROM points WHERE iid = ?", ((int(i),) for i in iids))
        self._c.executemany("DELETE FROM payload_values WHERE iid = ?", ((int(i),) for i in iids))
        self._c.executemany("INSERT OR REPLACE INTO deleted (cid, iid, seq) VALUES (?, ?, ?)",
                            ((cid, int(i), seq) for i in iids))

    def prune_deleted(self, cid: int, upto: int) -> None:
        self._c.execute("DELETE FROM deleted WHERE cid = ? AND seq <= ?", (cid, upto))

    def restore_points(self, cid: int, rows: Iterable[tuple[int, Ext, int, bytes, str | None]]) -> None:
        """Insert rows as a collection snapshot holds them: (iid, ext, seq, float32 LE bytes, payload)."""
        self._payloads[cid] = True
        self._c.executemany("INSERT INTO points (iid, cid, ext, seq, vector, payload) VALUES (?, ?, ?, ?, ?, ?)",
                            ((i, cid, e, s, v, p) for i, e, s, v, p in rows))

    def set_last_seq(self, cid: int, seq: int) -> None:
        self._c.execute("UPDATE collections SET last_seq = ? WHERE cid = ?", (seq, cid))


class PinnedRead:
    """One collection as of the moment a read transaction opened (see `Store.pinned`)."""

    def __init__(self, conn: sqlite3.Connection, cid: int, last_seq: int | None) -> None:
        self._c, self.cid, self.last_seq = conn, cid, last_seq

    def rows(self, chunk: int = READ_CHUNK) -> Iterator[list[tuple[int, Ext, int, bytes, str | None]]]:
        """(iid, ext, seq, vector bytes, payload JSON) of every point, in iid order, in batches."""
        try:
            cur = self._c.execute("SELECT iid, ext, seq, vector, payload FROM points WHERE cid = ? ORDER BY iid",
                                  (self.cid,))
            while batch := cur.fetchmany(chunk):
                yield batch
        except sqlite3.Error as exc:
            raise StorageError(_reason(exc)) from exc


class Store:
    """The SQLite database of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILENAME
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        #: cid -> whether its points may hold a payload (False: none does; True once one is written)
        self._payloads: dict[int, bool] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        check_data_dir(self.path.parent)
        self._writer = self._connect()
        self._migrate(self._writer)
        # Checkpoints (copying the WAL into the database file, then an fsync of it) run on a
        # thread of their own, not inside the COMMIT of whichever write crossed SQLite's threshold:
        # a 150 MB bulk ingest otherwise wrote its data twice before answering. Durability is the
        # WAL's, fsynced at every COMMIT (synchronous=FULL) either way.
        self._writer.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = _Checkpointer(self)
        self._checkpointer.start()

    @_guarded
    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(f"{self.path} has schema version {version}; this logitsearch reads "
                               f"up to {SCHEMA_VERSION}")
        # a new database only (SQLite ignores it once the file has pages): a row of d = 384 float32
        # (1.5 kB) fills 4 kB pages two at a time, 1.33 x its bytes on disk; 16 kB pages hold ten
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"{self.path}: could not switch to WAL mode (got {mode})")
        conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {_reason(exc)}") from exc
        return conn

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            if self._writer is not None:
                try:
                    self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass  # a busy or read-only database keeps its WAL; it is replayed on the next open
                self._writer.close()
                self._writer = None

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # --- writing ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); any exception rolls it back."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageError("the store is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield Transaction(conn, self._payloads)
                conn.execute("COMMIT")
                if self._checkpointer is not None:
                    self._checkpointer.nudge()
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite already rolled back (e.g. after SQLITE_FULL)
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(_reason(exc)) from exc
                raise

    # --- reading ---------------------------------------------------------------------------------

    @_guarded
    def collections(self) -> list[StoredCollection]:
        rows = self._reader().execute(
            "SELECT cid, name, config, indexes, last_seq FROM collections ORDER BY cid").fetchall()
        return [StoredCollection(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows]

    @_guarded
    def last_seq(self, cid: int) -> int:
        row = self._reader().execute("SELECT last_seq FROM collections WHERE cid = ?", (cid,)).fetchone()
        return int(row[0]) if row else 0

    @_guarded
    def ext_id_arrays(self, cid: int) -> tuple[Ids, Ids, list[tuple[int, Ext]]]:
        """The collection's integer ids as arrays (iids, exts: int64 (n,) each), streamed without a
        Python tuple per point kept, and (iid, ext) of the other points (IdMap.of's arguments)."""
        db = self._reader()
        pairs = np.fromiter(db.execute("SELECT iid, ext FROM points WHERE cid = ? AND typeof(ext) = 'integer'",
                                       (cid,)), dtype=[("iid", np.int64), ("ext", np.int64)])
        others = db.execute("SELECT iid, ext FROM points WHERE cid = ? AND typeof(ext) != 'integer'",
                            (cid,)).fetchall()
        return pairs["iid"].copy(), pairs["ext"].copy(), others

    @_guarded
    def count(self, cid: int) -> int:
        return int(self._reader().execute("SELECT count(*) FROM points WHERE cid = ?", (cid,)).fetchone()[0])

    def rows(self, cid: int, *, after: int | None = None, upto: int | None = None, seq: int | None = None,
             chunk: int = READ_CHUNK) -> Iterator[tuple[Ids, F32]]:
        """(iids, float32 rows) of the points written after seq `after` and up to `upto`, or by write
        `seq` exactly, or all; in chunks of `chunk` rows, one consistent read."""
        where, args = ["cid = ?"], [cid]
        for clause, value in (("seq > ?", after), ("seq <= ?", upto), ("seq = ?", seq)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT iid, vector FROM points WHERE {' AND '.join(where)} ORDER BY iid"
        try:
            cur = self._reader().execute(sql, args)
            while batch := cur.fetchmany(chunk):
                iids = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
                X = np.frombuffer(b"".join(r[1] for r in batch), dtype="<f4").reshape(len(batch), -1)
                yield iids, X.astype(np.float32, copy=False)
        except sqlite3.Error as exc:
            raise StorageError(_reason(exc)) from exc

    @_guarded
    def deleted_after(self, cid: int, after: int) -> Ids:
        rows = self._reader().execute("SELECT iid FROM deleted WHERE cid = ? AND seq > ?", (cid, after)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def may_hold_payloads(self, cid: int) -> bool:
        """False when no point of the collection has a payload (a search then need not read its
        winners' rows). Learnt once from SQLite; a write of a payload marks it True before it runs,
        and the lookup only fills in a missing answer, so a racing reader never undoes that mark."""
        known = self._payloads.get(cid)
        if known is None:
            try:
                row = self._reader().execute(
                    "SELECT EXISTS (SELECT 1 FROM points WHERE cid = ? AND payload IS NOT NULL)", (cid,)).fetchone()
            except sqlite3.Error as exc:
                raise StorageError(_reason(exc)) from exc
            known = self._payloads.setdefault(cid, bool(row[0]))
        return known

    @_guarded
    def points(self, cid: int, iids: Sequence[int], *, vector: bool, payload: bool) -> dict[int, StoredPoint]:
        """The stored points among `iids` (missing ones are left out), by iid."""
        out: dict[int, StoredPoint] = {}
        conn = self._reader()
        cols = f"iid, ext, {'vector' if vector else 'NULL'}, {'payload' if payload else 'NULL'}"
        step = 900  # below SQLite's host-parameter limit (999 on old builds)
        for start in range(0, len(iids), step):
            part = [int(i) for i in iids[start:start + step]]
            marks = ",".join("?" * len(part))
            for row in conn.execute(f"SELECT {cols} FROM points WHERE cid = ? AND iid IN ({marks})", [cid, *part]):
                out[row[0]] = _point(row, vector, payload)
        return out

    @contextmanager
    def pinned(self, cid: int) -> Iterator[PinnedRead]:
        """A read transaction on a connection of its own, pinned where it opens (WAL snapshot
        isolation): writes committed later stay invisible to it while it reads, and do not wait."""
        try:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            conn.execute("BEGIN")
            row = conn.execute("SELECT last_seq FROM collections WHERE cid = ?", (cid,)).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(_reason(exc)) from exc
        try:
            yield PinnedRead(conn, cid, None if row is None else int(row[0]))
        finally:
            conn.close()  # ends the read transaction

    @_guarded
    def matching(self, cid: int, f: filters.Filter) -> Ids:
        """The iids of the points `f` matches (sorted), all leaves read in one snapshot."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return _matching(conn, cid, f)
        finally:
            conn.execute("COMMIT")

    @_guarded
    def scroll(self, cid: int, start: int, limit: int, *, vector: bool, payload: bool) -> list[StoredPoint]:
        """Up to `limit` points with iid >= `start`, in iid (insertion) order."""
        cols = f"iid, ext, {'vector' if vector else 'NULL'}, {'payload' if payload else 'NULL'}"
        rows = self._reader().execute(
            f"SELECT {cols} FROM points WHERE cid = ? AND iid >= ? ORDER BY iid LIMIT ?", (cid, start, limit))
        return [_point(r, vector, payload) for r in rows]


class _Checkpointer:
    """A daemon thread that checkpoints the WAL once it has grown past CHECKPOINT_BYTES (SQLite's
    own default threshold is 1,000 pages, ~4 MB), with a connection of its own. PASSIVE: it never
    waits for readers or the writer, so it copies what it can and the next nudge does the rest."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._wal = Path(f"{store.path}-wal")
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        try:
            grown = self._wal.stat().st_size >= CHECKPOINT_BYTES
        except OSError:
            grown = False
        if grown:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                conn = conn or self._store._connect()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self.checkpoints += 1
            except (sqlite3.Error, StorageError) as exc:  # retried at the next nudge; close() truncates
                log.warning("WAL checkpoint failed: %s", exc)
        if conn is not None:
            conn.close()
