"""Collection snapshots to take away: a consistent point-in-time archive of one collection, and its restore.

The archive is an uncompressed tar (GNU format, 512-byte blocks; `tar tvf` lists it) with
  manifest.json    first: format, version, the collection's name, config and index list, the write
                   sequence it holds (`last_seq`), the point count, the archive's exact size, size and
                   sha256 of every other member, and `manifest_sha256` over its own canonical JSON
  points.sqlite3   the collection's rows as a small SQLite file: points(iid, ext, seq, vector, payload)
  indexes/…        the in-memory indexes at the same write sequence (indexes/persist.py's layout, with
                   its own manifest), or absent with `index_snapshot.reason` (restore rebuilds them)
kept as `<data dir>/snapshots/<collection>/<snapshot>.tar`.

Consistency while writes continue: under the collection's write lock, once every committed write
has been applied to its indexes (`Coordinator.writes_held`), a read transaction opens on SQLite (WAL
snapshot isolation pins it at that sequence) and the indexes are copied in memory (their arrays,
FAISS indexes serialised); then the lock is released, and the copy is written out and the rows are
copied from the pinned read while new writes commit. Writes to the collection wait only for that
in-memory copy (benchmarks/snapshot_bench.py); other collections never wait. The copy costs memory
about the size of the collection's indexes for the length of the snapshot.

Restore checks everything before writing anything: the tar structure (every byte outside member
data must be a header with a valid checksum or zero padding), the manifest (format, version, its
own checksum, the archive size, so a truncated or extended file is named as such), every member's
size and sha256, then the contents (config, each row's id, vector and payload, the index snapshot
against the rows). Only then does one SQLite transaction create the collection. Internal ids keep
their order (shifted past the target database's ids when needed), so ties break alike and HNSW/IVF
graphs are reused as they are: the restored collection answers exactly as the original did.
Checksums catch damage, not malice: an archive crafted with matching checksums is checked for
shape and values, but its FAISS graph is trusted as the server trusts its own index snapshots.

A sharded collection (issue 13; format version 2) is archived as its parts: `shards/<j>/points.sqlite3`
and `shards/<j>/indexes/…`, each shard's rows and indexes at its own write sequence, listed in the
manifest's `shards` (count, last_seq, iids, index_snapshot). Under the collection's write lock every
committed write is published on every shard, then each actor pins its rows and copies its indexes
(`ShardActor.archive_hold`); after the lock each writes its part beside its files and the
coordinator copies it over Ray (`Coordinator.archive_parts`). A restore checks every part as above,
and that each row is in the part its id routes to, that no id or internal id is in two parts. Into
the archive's own shard count each part goes back to its shard with its index snapshot; into
another count (an unsharded archive into 3 shards, 3 into 1) every row goes to the shard its id
routes to (`shard_of`) and the indexes are rebuilt. Onto Ray the restore is a sharded write
(prepare each part, commit in the catalog, publish: `Coordinator.restore_sharded`), all or nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import heapq
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core.errors import InvalidInput, NotFound, StorageError
from indexes import persist
from indexes.knn import IndexSet, IndexSpec
from service.catalog import MAX_SHARDS, CollectionConfig, check_name
from service.coordinator import CollectionInfo, Coordinator, HeldCollection
from service.ray_shards import shard_of
from service.schemas import MAX_ID, MAX_ID_CHARS
from service.store import Transaction

log = logging.getLogger("logitsearch.snapshots")

FORMAT = "logitsearch-collection-snapshot"
#: the format written, and the newest this reads: 1 held one collection's points and indexes; 2 adds
#: a sharded collection's parts under shards/<j>/ (an unsharded one is laid out as in 1)
VERSION = 2
MANIFEST = "manifest.json"
POINTS = "points.sqlite3"
INDEXES = "indexes"
SHARDS = "shards"
#: rows per prepared part when a restore goes to Ray shards
RESTORE_CHUNK = 8192
#: `PRAGMA application_id` of points.sqlite3 ("LGSN")
APPLICATION_ID = 0x4C47534E
BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads the archive to whole records of 20 blocks
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
COPY_CHUNK = 1 << 20
_MEMBER = re.compile(r"(shards/(0|[1-9][0-9]{0,2})/)?(points\.sqlite3|indexes/[A-Za-z0-9][A-Za-z0-9._-]{0,90})")
_SNAPSHOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.tar")
_POINTS_SQL = ("CREATE TABLE points (iid INTEGER PRIMARY KEY, ext NOT NULL, seq INTEGER NOT NULL, "
               "vector BLOB NOT NULL, payload TEXT)")


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    collection: str
    bytes: int
    created: str
    last_seq: int
    count: int
    indexes_included: bool
    rebuild_reason: str | None


def _refused(reason: str) -> InvalidInput:
    return InvalidInput("snapshot", f"{reason}; nothing was written")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _archive_bytes(sizes: list[int]) -> int:
    """The size of a GNU tar written by tarfile holding members of these sizes (one header each)."""
    total = sum(BLOCK + -(-s // BLOCK) * BLOCK for s in sizes) + 2 * BLOCK
    return -(-total // RECORD) * RECORD


class Snapshots:
    """The snapshots of one data directory (`<data dir>/snapshots`)."""

    def __init__(self, backend: Coordinator) -> None:
        self.backend = backend
        self.root = Path(backend.data_dir) / "snapshots"
        # scratch left by a crash; nothing can be using it before the app serves
        shutil.rmtree(self.root / ".work", ignore_errors=True)

    # --- places ----------------------------------------------------------------------------------

    def _work(self) -> Path:
        """A fresh scratch directory beside the snapshots (same filesystem: renames are atomic)."""
        path = self.root / ".work" / uuid.uuid4().hex
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise StorageError(f"cannot write under {self.root}: {exc.strerror or exc}") from exc
        return path

    def _dir(self, collection: str) -> Path:
        try:
            check_name(collection)
        except InvalidInput:
            raise NotFound(f"collection {collection!r} not found") from None
        return self.root / collection

    def path(self, collection: str, snapshot: str) -> Path:
        """The archive file of `snapshot`; NotFound naming what exists."""
        directory = self._dir(collection)
        path = directory / snapshot
        if not _SNAPSHOT.fullmatch(snapshot) or not path.is_file():
            known = [p.name for p in sorted(directory.glob("*.tar"))] if directory.is_dir() else []
            raise NotFound(f"no snapshot {snapshot!r} of collection {collection!r}; snapshots: {known}")
        return path

    # --- listing ---------------------------------------------------------------------------------

    def list(self, collection: str) -> list[SnapshotInfo]:
        """The snapshots kept for `collection`, oldest first (also after the collection was deleted)."""
        directory = self._dir(collection)
        if not directory.is_dir():
            self.backend.dim(collection)  # NotFound for an unknown collection
            return []
        out = []
        for path in sorted(directory.glob("*.tar"), key=lambda p: (p.stat().st_mtime, p.name)):
            try:
                out.append(self._info(path))
            except (InvalidInput, OSError):
                log.warning("unreadable snapshot skipped", extra={"fields": {"path": str(path)}})
        return out

    def _info(self, path: Path) -> SnapshotInfo:
        with open(path, "rb") as f:
            m = _read_manifest(f, path.stat().st_size)
        return _snapshot_info(path, m)

    def delete(self, collection: str, snapshot: str) -> None:
        path = self.path(collection, snapshot)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"no snapshot {snapshot!r} of collection {collection!r}") from None

    # --- taking one ------------------------------------------------------------------------------

    def create(self, collection: str) -> SnapshotInfo:
        """Write a consistent archive of `collection` (module docstring) and keep it."""
        work = self._work()
        try:
            with contextlib.ExitStack() as stack:
                with self.backend.writes_held(collection) as held:
                    if held.parts is None:
                        pinned = stack.enter_context(self.backend.store.pinned(held.cid))
                        if pinned.last_seq != held.last_seq:  # cannot happen: the lock holds every write
                            raise StorageError(f"collection {collection!r} moved while its snapshot began; retry")
                        captured = held.iset.capture() if held.iset is not None else None
                # writes go on from here; the pinned reads and the copies keep the state of `held`
                if held.parts is not None:
                    return self._pack_sharded(work, held)
                if captured is not None:
                    persist.write(captured, work / INDEXES)
                    del captured
                count, lo, hi = write_points(work / POINTS, pinned.rows())
            if count != held.count:
                raise StorageError(f"collection {collection!r}: {count} rows copied, {held.count} expected")
            members = [POINTS] + ([f"{INDEXES}/{p.name}" for p in sorted((work / INDEXES).iterdir())]
                                  if held.iset is not None else [])
            return self._pack(work, held, count, (lo, hi), held.iset is not None, members)
        except OSError as exc:  # a full or read-only disk: nothing is kept
            raise StorageError(f"cannot write the snapshot under {self.root}: {exc.strerror or exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _pack_sharded(self, work: Path, held: HeldCollection) -> SnapshotInfo:
        """A sharded collection's archive (format 2): each shard's part, written by its actor and
        copied here, under shards/<j>/ with the layout of a whole collection's."""
        written = self.backend.archive_parts(held, work / SHARDS)
        members: list[str] = []
        parts: list[dict[str, Any]] = []
        for j, (part, h) in enumerate(zip(written, held.parts or [])):
            names = sorted(part["files"], key=lambda f: (f != POINTS, f))
            members += [f"{SHARDS}/{j}/{f}" for f in names]
            parts.append({"count": part["count"], "last_seq": h["last_seq"], "iids": part["iids"],
                          "index_snapshot": {"included": any(f.startswith(f"{INDEXES}/") for f in names),
                                             "reason": h["reason"]}})
        count = sum(p["count"] for p in parts)
        if count != held.count:
            raise StorageError(f"collection {held.name!r}: {count} rows copied, {held.count} expected")
        los = [p["iids"][0] for p in parts if p["iids"][0] is not None]
        his = [p["iids"][1] for p in parts if p["iids"][1] is not None]
        span = (min(los), max(his)) if los else (None, None)
        included = all(p["index_snapshot"]["included"] for p in parts)
        return self._pack(work, held, count, span, included, members, {"shards": parts})

    def _pack(self, work: Path, held: HeldCollection, count: int, iids: tuple[int | None, int | None],
              indexes: bool, members: list[str], sharded: dict[str, Any] | None = None) -> SnapshotInfo:
        files: dict[str, dict[str, Any]] = {}
        for name in members:
            if not _MEMBER.fullmatch(name):
                raise StorageError(f"cannot archive {name!r}: not a member name the format allows")
            path = work / name
            files[name] = {"bytes": path.stat().st_size, "sha256": _sha256_file(path)}
        created = datetime.datetime.now(datetime.UTC)
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "created": created.isoformat(timespec="microseconds"),
            "collection": held.name, "config": held.config.to_dict(), "indexes": held.indexes,
            "last_seq": held.last_seq, "count": count, "iids": None if iids[0] is None else list(iids),
            "index_snapshot": {"included": indexes, "reason": held.rebuild_reason},
            "files": files, "archive_bytes": 0, **(sharded or {})}
        text = b""
        for _ in range(8):  # the size is written inside the manifest: iterate to the fixed point
            manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
            text = json.dumps(manifest, indent=1, sort_keys=True).encode()
            size = _archive_bytes([len(text)] + [int(f["bytes"]) for f in files.values()])
            if size == manifest["archive_bytes"]:
                break
            manifest["archive_bytes"] = size
        (work / MANIFEST).write_bytes(text)
        directory = self.root / held.name
        directory.mkdir(parents=True, exist_ok=True)
        stamp = created.strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{held.name}-s{held.last_seq}-{stamp}.tar"
        tmp = work / "archive.tar"
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for member in [MANIFEST, *members]:
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = (work / member).stat().st_size, int(created.timestamp()), 0o644
                with open(work / member, "rb") as f:
                    tar.addfile(info, f)
        if tmp.stat().st_size != manifest["archive_bytes"]:
            raise StorageError(f"snapshot archive came out at {tmp.stat().st_size} bytes, "
                               f"{manifest['archive_bytes']} planned")
        persist.fsync_dir(tmp)  # (a file: the same open-fsync-close)
        os.replace(tmp, directory / name)
        persist.fsync_dir(directory)
        log.info("snapshot written", extra={"fields": {"collection": held.name, "snapshot": name,
                                                       "points": count, "last_seq": held.last_seq}})
        return _snapshot_info(directory / name, manifest)

    # --- restoring -------------------------------------------------------------------------------

    def restore(self, collection: str, read: Callable[[], bytes | None], shards: int | None = None) -> CollectionInfo:
        """Restore the archive read from `read` (chunks, b''/None at the end) into `collection`, a
        new or empty one, with `shards` shards (None: the archive's own count; rows re-routed by
        their ids when it differs); InvalidInput naming the reason, and nothing written, if it is
        not sound."""
        check_name(collection)
        if shards is not None:
            if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
                raise InvalidInput("shards", f"must be a whole number in [1, {MAX_SHARDS}], got {shards!r}")
            self._check_ray(shards)  # before the upload is read
        work = self._work()
        try:
            upload = work / "upload.tar"
            try:
                with open(upload, "wb") as f:
                    while chunk := read():
                        f.write(chunk)
            except OSError as exc:
                raise StorageError(f"cannot keep the upload under {self.root} while it is checked: "
                                   f"{exc.strerror or exc}; nothing was written") from exc
            checked = _verify(upload, work / "x")
            upload.unlink()
            n = shards if shards is not None else checked.config.shards
            if n is not None:
                self._check_ray(n)
                if not self.backend.settings.ray_address:
                    n = None  # one shard without Ray: an ordinary collection, as at create
            config = dataclasses.replace(checked.config, shards=n)
            if n is None:
                info = self._restore_here(collection, checked, config)
            else:
                info = self._restore_sharded(collection, checked, config, n)
            log.info("snapshot restored", extra={"fields": {"collection": collection, "points": info.count,
                                                            "shards": n or 1}})
            return info
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _check_ray(self, shards: int) -> None:
        if shards > 1 and not self.backend.settings.ray_address:
            raise InvalidInput("shards", f"{shards} shards need Ray: set LOGITSEARCH_RAY_ADDRESS (`local`, or a "
                                         "Ray cluster's address), or restore with ?shards=1")

    def _restore_here(self, collection: str, checked: _Checked, config: CollectionConfig) -> CollectionInfo:
        """Into an ordinary collection of this server, in ONE transaction (the rows of every part,
        in internal-id order); the archive's index snapshot is reused when it has one whole."""

        def fill(tx: Transaction, cid: int) -> int:
            lo, hi = checked.iids
            start = tx.allocate(0)  # the next free internal id of this database
            offset = max(0, start - lo) if lo is not None else 0
            if hi is not None:
                tx.allocate(max(0, hi + offset + 1 - start))
            tx.restore_points(cid, ((iid + offset, ext, seq, vector, payload)
                                    for iid, ext, seq, vector, payload in _merged(checked)))
            if config.payload_index:  # the declared keys, indexed in the same transaction
                tx.index_payloads(cid, config.payload_index)
            return offset

        place = None
        whole = checked.parts[0] if checked.sharded is None else None
        if whole is not None and whole.indexes is not None and whole.iset is not None:
            loaded, where = whole.iset, whole.indexes

            def place(directory: Path, offset: int) -> IndexSet:
                iset = loaded if offset == 0 else persist.load(IndexSet, where, id_offset=offset)
                iset.save(directory)
                return iset

        return self.backend.restore_collection(collection, config, checked.manifest["indexes"],
                                               checked.manifest["last_seq"], fill, place)

    def _restore_sharded(self, collection: str, checked: _Checked, config: CollectionConfig,
                         n: int) -> CollectionInfo:
        """Into a new collection of `n` Ray shards: with the archive's own count each part goes to
        its shard with its index snapshot; otherwise every row goes to the shard its id routes to
        and each shard rebuilds its indexes from its rows."""
        last_seq = int(checked.manifest["last_seq"])

        def send(offset: int, rows: Callable[[int, list[Any], dict[str, Any]], None],
                 stage: Callable[[int, str, Path], None]) -> None:
            if checked.sharded == n:
                for j, part in enumerate(checked.parts):
                    meta = {"last_seq": part.last_seq, "staged": part.iset is not None}
                    if part.iset is not None and part.indexes is not None and part.count:
                        for f in sorted(part.indexes.iterdir()):
                            stage(j, f"{INDEXES}/{f.name}", f)
                    sent = False
                    for batch in _read_points(part.points, RESTORE_CHUNK):
                        rows(j, [(iid + offset, *rest) for iid, *rest in batch], meta)
                        sent = True
                    if not sent:  # an empty shard still takes the archive's index list
                        rows(j, [], meta)
                return
            meta = {"last_seq": last_seq, "staged": False}
            buffers: list[list[Any]] = [[] for _ in range(n)]
            sent_to = [False] * n
            for iid, ext, seq, vector, payload in _merged(checked):
                j = shard_of(ext, n)
                buffers[j].append((iid + offset, ext, seq, vector, payload))
                if len(buffers[j]) >= RESTORE_CHUNK:
                    rows(j, buffers[j], meta)
                    buffers[j], sent_to[j] = [], True
            for j, batch in enumerate(buffers):
                if batch or not sent_to[j]:
                    rows(j, batch, meta)

        return self.backend.restore_sharded(collection, config, checked.manifest["indexes"], last_seq,
                                            checked.iids, send)


def _merged(checked: _Checked) -> Iterator[tuple[int, Any, int, bytes, str | None]]:
    """The rows of every part of an archive, in internal-id (insertion) order."""
    streams = [(row for batch in _read_points(part.points) for row in batch) for part in checked.parts]
    return heapq.merge(*streams, key=lambda row: row[0])  # type: ignore[no-any-return]


# --- writing the points file -----------------------------------------------------------------------


def write_points(path: Path, batches: Iterator[list[tuple[Any, ...]]]) -> tuple[int, int | None, int | None]:
    """points.sqlite3 from the pinned rows; (count, smallest iid, largest iid)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("BEGIN")
        conn.execute(_POINTS_SQL)
        count, lo, hi = 0, None, None
        for batch in batches:
            conn.executemany("INSERT INTO points (iid, ext, seq, vector, payload) VALUES (?, ?, ?, ?, ?)", batch)
            count += len(batch)
            lo = batch[0][0] if lo is None else lo
            hi = batch[-1][0]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot write the snapshot's points: {exc}") from exc
    finally:
        conn.close()
    return count, lo, hi


# --- reading and checking an archive ---------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """One collection's rows and indexes in an archive: the whole of an unsharded one, one shard's."""

    points: Path
    indexes: Path | None
    iset: IndexSet | None  # loaded from `indexes` (ids as archived)
    last_seq: int
    count: int


@dataclass(frozen=True)
class _Checked:
    manifest: dict[str, Any]
    config: CollectionConfig
    parts: list[_Part]
    #: the smallest and largest internal id over every part
    iids: tuple[int | None, int | None]
    #: the archive's shard count (format 2), None for an unsharded collection's
    sharded: int | None


def _snapshot_info(path: Path, m: dict[str, Any]) -> SnapshotInfo:
    snap = m.get("index_snapshot") or {}
    return SnapshotInfo(path.name, str(m.get("collection")), path.stat().st_size, str(m.get("created")),
                        int(m["last_seq"]), int(m["count"]), bool(snap.get("included")), snap.get("reason"))


def _read_manifest(f: BinaryIO, size: int) -> dict[str, Any]:
    """The manifest of the archive open as `f` (`size` bytes), checked: format, version, its own
    checksum, the archive's size."""
    head = f.read(BLOCK)
    if len(head) < BLOCK:
        raise _refused(f"not a logitsearch snapshot: {size} bytes is too short for a tar archive")
    try:
        info = tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as exc:
        raise _refused(f"not a tar archive (first header: {exc})") from None
    if info.name != MANIFEST or not info.isreg():
        raise _refused(f"not a logitsearch snapshot: the first member is {info.name!r}, not {MANIFEST}")
    if info.size > MAX_MANIFEST_BYTES:
        raise _refused(f"{MANIFEST} has {info.size} bytes, more than {MAX_MANIFEST_BYTES}")
    raw = f.read(info.size)
    if len(raw) < info.size:
        raise _refused(f"truncated: the archive ends inside {MANIFEST}")
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refused(f"{MANIFEST} is damaged (not JSON: {exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise _refused(f"not a logitsearch collection snapshot (format {found!r}, expected {FORMAT!r})")
    version = m.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _refused(f"{MANIFEST}: format version {version!r} is not a whole number")
    if version > VERSION:
        raise _refused(f"snapshot format version {version} is newer than this logitsearch reads ({VERSION}); "
                       "restore it with a newer logitsearch")
    if version < 1:
        raise _refused(f"snapshot format version {version} is unknown (this logitsearch reads 1..{VERSION})")
    try:
        ok = m.get("manifest_sha256") == hashlib.sha256(_canonical(m)).hexdigest()
    except ValueError:
        ok = False
    if not ok:
        raise _refused(f"{MANIFEST} is damaged (its checksum does not match its contents)")
    try:
        expected = int(m["archive_bytes"])
        int(m["last_seq"]), int(m["count"])
        if not isinstance(m["files"], dict) or not isinstance(m["indexes"], list):
            raise TypeError("files, indexes")
    except (KeyError, TypeError, ValueError) as exc:
        raise _refused(f"{MANIFEST} lacks a field ({exc})") from None
    if size < expected:
        raise _refused(f"truncated: the archive has {size} bytes, its manifest says {expected}")
    if size > expected:
        raise _refused(f"the archive has {size} bytes, {size - expected} more than its manifest says "
                       f"({expected}): something was appended")
    return m


def _zeros(f: BinaryIO, n: int, where: str) -> None:
    while n > 0:
        chunk = f.read(min(n, COPY_CHUNK))
        if len(chunk) == 0:
            raise _refused(f"truncated: the archive ends in {where}")
        if chunk.count(0) != len(chunk):
            raise _refused(f"the archive is damaged ({where} is not zero padding)")
        n -= len(chunk)


def _verify(upload: Path, out: Path) -> _Checked:
    """Check the archive `upload` through and through, extracting its members under `out`."""
    size = upload.stat().st_size
    out.mkdir()
    with open(upload, "rb") as f:
        m = _read_manifest(f, size)
        _zeros(f, -(-f.tell() // BLOCK) * BLOCK - f.tell(), f"the padding after {MANIFEST}")
        files: dict[str, Any] = m["files"]
        for name, entry in files.items():
            if not isinstance(name, str) or not _MEMBER.fullmatch(name) or not isinstance(entry, dict):
                raise _refused(f"{MANIFEST} lists a member the format does not allow: {str(name)[:80]!r}")
        seen: set[str] = set()
        (out / INDEXES).mkdir()
        while True:
            head = f.read(BLOCK)
            if len(head) < BLOCK:
                raise _refused("truncated: the archive ends without its end-of-archive marker")
            if head.count(0) == BLOCK:  # the end: the rest must be zeros too
                _zeros(f, size - f.tell(), "the end of the archive")
                break
            try:
                info = tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError as exc:
                raise _refused(f"the archive is damaged (a tar header after {sorted(seen)[-1:] or [MANIFEST]}: "
                               f"{exc})") from None
            name = info.name
            if name not in files:
                raise _refused(f"the archive holds {name[:80]!r}, which its manifest does not list")
            if name in seen:
                raise _refused(f"the archive holds {name!r} twice")
            if not info.isreg():
                raise _refused(f"{name!r} is not a regular file")
            seen.add(name)
            want = files[name]
            if info.size != want.get("bytes"):
                raise _refused(f"{name} has {info.size} bytes, its manifest says {want.get('bytes')}")
            h = hashlib.sha256()
            left = info.size
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            with open(out / name, "wb") as dst:
                while left:
                    chunk = f.read(min(left, COPY_CHUNK))
                    if not chunk:
                        raise _refused(f"truncated: the archive ends inside {name}")
                    h.update(chunk)
                    dst.write(chunk)
                    left -= len(chunk)
            if h.hexdigest() != want.get("sha256"):
                raise _refused(f"{name} is damaged (its sha256 differs from the manifest's)")
            _zeros(f, -(-info.size // BLOCK) * BLOCK - info.size, f"the padding after {name}")
    missing = sorted(set(files) - seen)
    if missing:
        raise _refused(f"the archive lacks {', '.join(missing)}, which its manifest lists")
    return _check_contents(m, out)


def _check_contents(m: dict[str, Any], out: Path) -> _Checked:
    try:
        config = CollectionConfig.from_dict(m["config"])
    except InvalidInput as exc:
        raise _refused(f"the collection config in {MANIFEST} is invalid ({exc})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise _refused(f"the collection config in {MANIFEST} is incomplete ({exc})") from None
    last_seq, count = int(m["last_seq"]), int(m["count"])
    keys: set[str] = set()
    for i, d in enumerate(m["indexes"]):
        try:
            key = IndexSpec.from_dict(d["spec"]).key
            if d["status"] not in ("ready", "building", "failed"):
                raise ValueError(f"status {d['status']!r}")
            if not isinstance(d.get("error"), str | None):
                raise TypeError("error must be text or null")
            if key in keys:
                raise ValueError(f"{key} appears twice")
            keys.add(key)
        except (InvalidInput, KeyError, TypeError, ValueError) as exc:
            raise _refused(f"{MANIFEST}: indexes.{i} is invalid ({exc})") from None
    files: dict[str, Any] = m["files"]
    sharded = m.get("shards")
    if sharded is None:
        if config.shards is not None and config.shards > 1:
            raise _refused(f"{MANIFEST}: a config of {config.shards} shards without their parts")
        entries: list[tuple[str, dict[str, Any]]] = [("", {"last_seq": last_seq, "count": count,
                                                          "index_snapshot": m.get("index_snapshot")})]
    else:
        if int(m["version"]) < 2 or not isinstance(sharded, list) or config.shards != len(sharded) \
                or not all(isinstance(e, dict) for e in sharded):
            raise _refused(f"{MANIFEST}: its shards do not match its config ({config.shards} shards)")
        entries = [(f"{SHARDS}/{j}/", e) for j, e in enumerate(sharded)]
    exts: set[Any] = set()
    held: list[np.ndarray] = []
    parts: list[_Part] = []
    for j, (prefix, e) in enumerate(entries):
        try:
            part_seq, part_count = int(e["last_seq"]), int(e["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _refused(f"{MANIFEST}: shards.{j} lacks a field ({exc})") from None
        if not 0 <= part_seq <= last_seq:
            raise _refused(f"{MANIFEST}: shards.{j} has write sequence {part_seq}, not in [0, {last_seq}]")
        name = f"{prefix}{POINTS}"
        if name not in files:
            raise _refused(f"the archive has no {name}")
        owner = (j, len(entries)) if sharded is not None else None
        n, vectors = _check_points(out / name, config.dim, part_seq, name=name, exts=exts, owner=owner, iids=held)
        if n != part_count:
            raise _refused(f"{name} holds {n} points, its manifest says {part_count}")
        indexes = iset = None
        if (e.get("index_snapshot") or {}).get("included"):
            indexes = out / f"{prefix}{INDEXES}"
            iset = _check_indexes(indexes, m["indexes"], part_seq, config, n, vectors, f"{prefix}{INDEXES}")
        parts.append(_Part(out / name, indexes, iset, part_seq, n))
    every = np.concatenate(held) if held else np.empty(0, np.int64)
    if every.size != count:
        raise _refused(f"the archive holds {every.size} points, its manifest says {count}")
    if np.unique(every).size != every.size:
        raise _refused("an internal id appears in two shards")
    span = (int(every.min()), int(every.max())) if every.size else (None, None)
    return _Checked(m, config, parts, span, None if sharded is None else len(entries))


def _open_points(path: Path, name: str = POINTS) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA query_only = ON")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    except sqlite3.Error as exc:
        raise _refused(f"{name} is not a readable SQLite database ({exc})") from None
    if app_id != APPLICATION_ID or schema != [("table", "points", _POINTS_SQL)]:
        conn.close()
        raise _refused(f"{name} is not a logitsearch snapshot's points table")
    return conn


def _read_points(path: Path, chunk: int = 8192, *, name: str = POINTS
                 ) -> Iterator[list[tuple[int, Any, int, bytes, str | None]]]:
    conn = _open_points(path, name)
    try:
        cur = conn.execute("SELECT iid, ext, seq, vector, payload FROM points ORDER BY iid")
        while batch := cur.fetchmany(chunk):
            yield batch
    except sqlite3.Error as exc:
        raise _refused(f"{name} cannot be read ({exc})") from None
    finally:
        conn.close()


def _check_points(path: Path, dim: int, last_seq: int, *, name: str = POINTS, exts: set[Any] | None = None,
                  owner: tuple[int, int] | None = None, iids: list[np.ndarray] | None = None) -> tuple[int, bytes]:
    """Every row of a points.sqlite3 (`name` in the archive) checked as an upsert would be; (count,
    the vectors in iid order as float32 bytes). `exts`: the ids seen in other parts (an id is in
    one part only); `owner` (j, n): each id must route to shard j of n; the iids go to `iids`."""
    n = 0
    exts = set() if exts is None else exts
    blobs: list[bytes] = []
    for batch in _read_points(path, name=name):
        for j, (iid, ext, seq, vector, payload) in enumerate(batch):
            where = f"{name} row {n + j} (iid {iid})"
            if not isinstance(iid, int) or not 0 <= iid <= MAX_ID // 2:
                raise _refused(f"{where}: internal id out of range")
            if isinstance(ext, int):
                if not 0 <= ext <= MAX_ID:
                    raise _refused(f"{where}: id {ext} is outside [0, 2^63 - 1]")
            elif not isinstance(ext, str) or not 1 <= len(ext) <= MAX_ID_CHARS:
                raise _refused(f"{where}: the id must be an integer or a string of 1-{MAX_ID_CHARS} characters")
            if ext in exts:
                raise _refused(f"{where}: id {ext!r} appears twice")
            exts.add(ext)
            if owner is not None and shard_of(ext, owner[1]) != owner[0]:
                raise _refused(f"{where}: id {ext!r} belongs to shard {shard_of(ext, owner[1])}, not {owner[0]}")
            if not isinstance(seq, int) or not 0 <= seq <= last_seq:
                raise _refused(f"{where}: write sequence {seq!r} is not in [0, {last_seq}]")
            if not isinstance(vector, bytes) or len(vector) != 4 * dim:
                raise _refused(f"{where}: the vector is not {dim} float32 values")
            if payload is not None:
                try:
                    value = json.loads(payload) if isinstance(payload, str) else None
                except ValueError:
                    value = None
                if not isinstance(value, dict):
                    raise _refused(f"{where}: the payload is not a JSON object")
        chunk = b"".join(r[3] for r in batch)
        finite = np.isfinite(np.frombuffer(chunk, dtype="<f4").reshape(len(batch), dim)).all(axis=1)
        if not finite.all():
            j = int(np.argmin(finite))
            raise _refused(f"{name} row {n + j} (iid {batch[j][0]}): the vector holds NaN or infinity")
        blobs.append(chunk)
        if iids is not None:
            iids.append(np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch)))
        n += len(batch)
    return n, b"".join(blobs)


def _check_indexes(path: Path, indexes: list[dict[str, Any]], last_seq: int, config: CollectionConfig, n: int,
                   vectors: bytes, name: str = INDEXES) -> IndexSet:
    """The index snapshot `name`, loaded (persist checks its own manifest, sizes and checksums),
    holding exactly the points' vectors (`vectors`: n rows in iid order), at write sequence
    `last_seq`, with the ready indexes."""
    try:
        iset = persist.load(IndexSet, path)
    except StorageError as exc:
        raise _refused(f"the index snapshot {name} is damaged ({str(exc).replace(str(path), name)})") from None
    ready = {IndexSpec.from_dict(d["spec"]).key for d in indexes if d["status"] == "ready"}
    have = {s.key for s in iset.specs()}
    if iset.dim != config.dim or iset.last_seq != last_seq or not ready <= have:
        raise _refused(f"the index snapshot {name} does not match the manifest (dimension, sequence or indexes)")
    ids, rows = iset.matrix()
    if ids.size != n:
        raise _refused(f"the index snapshot {name} holds {ids.size} points, its points {n}")
    order = np.argsort(ids)
    if not np.array_equal(np.frombuffer(vectors, dtype="<f4").reshape(rows.shape), rows[order]):
        raise _refused(f"the index snapshot {name}'s vectors differ from its points")
    return iset


