"""Atomic save and load of an IndexSet directory, with a manifest that proves what is inside.

What is written is an `IndexSet.state()` (plain data: arrays, dicts, serialised FAISS indexes) and
what is read is handed to `IndexSet.restore`: this module knows files, not indexes (issue 12).

Layout: `manifest.json` (format, version, dim, count, last_seq, specs, per-index state (the CED
lift's radius, the certificate's statistics), and the
size and sha256 of every other file), `ids.npy` and `rows.npy` (the table), and per hnsw/ivf index
`<key>.faiss` (faiss.serialize_index) plus, for hnsw, `<key>.labels.npy` and `<key>.alive.npy`.
Flat indexes are a pure function of the table and are recomputed on load (cheaper than reading
a second copy of the rows from disk).

A lean snapshot (version 2, a shard's own, issue 16) has no `rows.npy`: the rows are in the shard's
database, and `read` asks a `RowSource` for the rows of `ids.npy`. Its HNSW indexes are
`<key>.graph` (the graph alone, faiss.IO_FLAG_SKIP_STORAGE) and `<key>.tombs.npy` (the vectors of the
dead labels only); the live vectors are embedded again from the rows. So the rows exist once on disk.
Collection archives (service/snapshots.py) keep the full layout: an archive carries its own rows.

Save writes a sibling `.<name>.tmp-<hex>`, fsyncs every file and the directory, writes the
manifest last, then swaps: the old copy is renamed to `.<name>.old-<hex>`, the new one into
place, the parent fsynced, the old copy deleted. A crash leaves either the old or the new
directory in place, or (between the two renames) neither but a complete old and new sibling, which
`load` then picks up (the one with the higher last_seq). Load checks every size and checksum
before using a byte, so a damaged or foreign directory raises StorageError, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from core.errors import StorageError

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

FORMAT = "logitsearch-indexset"
VERSION = 2
#: versions this build reads (1: every snapshot before issue 16, rows included)
READS = (1, 2)
MANIFEST = "manifest.json"


def fsync_dir(path: Path) -> None:
    """fsync a directory (or a file: the same open-fsync-close), so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: the old name, until service/snapshots.py calls fsync_dir
_fsync_dir = fsync_dir


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class _Writer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, dict[str, Any]] = {}

    def _done(self, name: str, f: Any) -> None:
        f.flush()
        os.fsync(f.fileno())
        path = self.root / name
        self.files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}

    def array(self, name: str, a: np.ndarray) -> None:
        with open(self.root / name, "wb") as f:
            np.save(f, np.ascontiguousarray(a), allow_pickle=False)
            self._done(name, f)

    def blob(self, name: str, data: np.ndarray) -> None:
        with open(self.root / name, "wb") as f:
            data.tofile(f)
            self._done(name, f)


def _siblings(directory: Path, tag: str) -> list[Path]:
    return sorted(directory.parent.glob(f".{directory.name}.{tag}-*"))


class Restores(Protocol[T_co]):
    """What `load` builds from a state: IndexSet (its classmethod `restore`)."""

    def restore(self, state: dict[str, Any], *, id_offset: int = 0, adopt: bool = False) -> T_co: ...


class RowSource(Protocol):
    """Where a lean snapshot's rows come from: `(ids, last_seq) -> float32 (n, dim)`, the row of
    each id in order (StorageError when the source cannot give them)."""

    def __call__(self, ids: np.ndarray, last_seq: int) -> np.ndarray: ...


#: per-index files: state field -> file name suffix
_INDEX_FILES = {"faiss": ".faiss", "graph": ".graph", "labels": ".labels.npy", "alive": ".alive.npy",
                "tombs": ".tombs.npy"}
_BLOBS = ("faiss", "graph")


def write(state: dict[str, Any], directory: Path) -> None:
    """Write an IndexSet's `state()` to `directory` atomically (module docstring)."""
    files: list[tuple[str, np.ndarray]] = [("ids.npy", state["ids"])]
    if "rows" in state:
        files.append(("rows.npy", state["rows"]))
    kept: dict[str, Any] = {}
    for key, st in state["indexes"].items():
        files += [(f"{key}{suffix}", st[name]) for name, suffix in _INDEX_FILES.items() if name in st]
        kept[key] = {"radius": st.get("radius", 0.0), "stats": st["stats"]}
    fields = {"format": FORMAT, "version": VERSION if "rows" not in state else 1, "dim": state["dim"], "count": int(state["ids"].shape[0]),
              "last_seq": state["last_seq"], "specs": state["specs"], "indexes": kept}
    directory = directory.absolute()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _recover(directory)
        tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            w = _Writer(tmp)
            for name, data in files:
                (w.array if name.endswith(".npy") else w.blob)(name, data)
            manifest = {**fields, "files": w.files}
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
            if directory.exists():
                os.rename(directory, old)
            os.rename(tmp, directory)
            fsync_dir(directory.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise StorageError(f"cannot save index snapshot to {directory}: {exc.strerror or exc}") from exc


def _recover(directory: Path) -> None:
    """Finish or undo a save that crashed, then clear its leftovers."""
    if not directory.exists():
        best = _best_fallback(directory)
        if best is not None:
            os.rename(best, directory)
            fsync_dir(directory.parent)
    for p in _siblings(directory, "tmp") + _siblings(directory, "old"):
        shutil.rmtree(p, ignore_errors=True)


def _best_fallback(directory: Path) -> Path | None:
    found: list[tuple[int, Path]] = []
    for p in _siblings(directory, "old") + _siblings(directory, "tmp"):
        try:
            found.append((int(_manifest(p)["last_seq"]), p))
        except (StorageError, KeyError, TypeError, ValueError):
            continue
    return max(found)[1] if found else None


def _manifest(path: Path) -> dict[str, Any]:
    try:
        text = (path / MANIFEST).read_text()
    except FileNotFoundError:
        raise StorageError(f"{path} is not an index snapshot (no {MANIFEST})") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path / MANIFEST}: {exc.strerror or exc}") from exc
    try:
        m = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{path / MANIFEST} is damaged: {exc}") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise StorageError(f"{path} holds no logitsearch index snapshot")
    if m.get("version") not in READS:
        raise StorageError(f"{path}: snapshot format version {m.get('version')!r}, this build reads {READS}")
    return m


def _verified(path: Path, m: dict[str, Any], name: str) -> Path:
    entry = m["files"].get(name)
    file = path / name
    if not isinstance(entry, dict) or not file.is_file():
        raise StorageError(f"{path}: file {name} is missing")
    if file.stat().st_size != entry.get("bytes") or _sha256(file) != entry.get("sha256"):
        raise StorageError(f"{path}: file {name} is damaged (size or checksum differs from the manifest)")
    return file


def _array(path: Path, m: dict[str, Any], name: str, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    try:
        a: np.ndarray = np.load(_verified(path, m, name), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise StorageError(f"{path}: cannot read {name}: {exc}") from exc
    if a.dtype != dtype or (a.shape != shape if shape is not None else a.ndim != 1):
        want = shape if shape is not None else "(n,)"
        raise StorageError(f"{path}: {name} has {a.dtype} {a.shape}, expected {np.dtype(dtype)} {want}")
    return a


def read(directory: Path, rows: RowSource | None = None) -> tuple[Path, dict[str, Any]]:
    """(the directory read, the IndexSet state it holds) from a snapshot written by `write`: every
    size and checksum checked against the manifest; StorageError if missing, damaged or foreign.
    Falls back to a complete copy a crashed save left beside it (module docstring). A lean snapshot's
    rows come from `rows` (StorageError without one)."""
    directory = directory.absolute()
    path = directory
    if not (directory / MANIFEST).exists():
        path = _best_fallback(directory) or directory
    m = _manifest(path)
    try:
        dim, count, last_seq = int(m["dim"]), int(m["count"]), int(m["last_seq"])
        specs = list(m["specs"])
        if not isinstance(m["files"], dict):
            raise TypeError("files")
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{path}: manifest is damaged ({exc})") from exc
    raw = m.get("indexes")
    entries: dict[str, Any] = raw if isinstance(raw, dict) else {}  # absent from the earliest snapshots
    indexes: dict[str, dict[str, Any]] = {}
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise StorageError(f"{path}: manifest is damaged (state of {key})")
        indexes[key] = {name: entry[name] for name in ("radius", "stats") if name in entry}
    for name in m["files"]:
        for field, suffix in _INDEX_FILES.items():
            if name.endswith(suffix) and len(name) > len(suffix):
                key = name.removesuffix(suffix)
                st = indexes.setdefault(key, {})
                if field in _BLOBS:
                    st[field] = np.fromfile(_verified(path, m, name), dtype=np.uint8)
                elif field == "tombs":
                    st[field] = _matrix(path, m, name)
                else:
                    st[field] = _array(path, m, name, np.int64 if field == "labels" else np.bool_)
                break
    ids = _array(path, m, "ids.npy", np.int64, (count,))
    if "rows.npy" in m["files"]:
        table = _array(path, m, "rows.npy", np.float32, (count, dim))
    elif rows is None:
        raise StorageError(f"{path}: a lean snapshot (its rows are in the database) read without them")
    else:
        table = rows(ids, last_seq)
        if not (isinstance(table, np.ndarray) and table.dtype == np.float32 and table.shape == (count, dim)):
            raise StorageError(f"{path}: the rows given for the snapshot are not float32 ({count}, {dim})")
    return path, {"dim": dim, "last_seq": last_seq, "ids": ids, "rows": table, "specs": specs, "indexes": indexes}


def _matrix(path: Path, m: dict[str, Any], name: str) -> np.ndarray:
    try:
        a: np.ndarray = np.load(_verified(path, m, name), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise StorageError(f"{path}: cannot read {name}: {exc}") from exc
    if a.dtype != np.float32 or a.ndim != 2:
        raise StorageError(f"{path}: {name} has {a.dtype} {a.shape}, expected float32 (n, width)")
    return a


def load(cls: Restores[T], directory: Path, *, id_offset: int = 0, rows: RowSource | None = None) -> T:
    """`cls.restore` of the state `read` finds in `directory` (IndexSet.load); StorageError, naming
    the directory, if it is missing, damaged, foreign or inconsistent.

    `id_offset` is added to every id (the table's, HNSW's labels, IVF's lists): a collection
    restored into another database gets fresh internal ids in the same order (service/snapshots.py).
    """
    path, state = read(directory, rows)
    try:
        return cls.restore(state, id_offset=id_offset, adopt=True)
    except StorageError as exc:
        raise StorageError(f"{path}: {exc}") from exc
