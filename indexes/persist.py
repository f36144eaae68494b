"""Atomic save and load of an IndexSet directory, with a manifest that proves what is inside.

Layout: `manifest.json` (format, version, dim, count, last_seq, specs, per-index state (the CED
lift's radius, the certificate's statistics), and the
size and sha256 of every other file), `ids.npy` and `rows.npy` (the table), and per hnsw/ivf index
`<key>.faiss` (faiss.serialize_index) plus, for hnsw, `<key>.labels.npy` and `<key>.alive.npy`.
Flat indexes are a pure function of the table and are recomputed on load (cheaper than reading
a second copy of the rows from disk).

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from core.errors import InvalidInput, StorageError
from indexes.embed import Stats

if TYPE_CHECKING:
    from indexes.knn import IndexSet

FORMAT = "logitsearch-indexset"
VERSION = 1
MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


@dataclass(frozen=True)
class Captured:
    """What `save` writes: the files as arrays (`.npy`) or raw bytes (`.faiss`), and the manifest's
    other fields. From `capture(iset, copy=True)` it is a copy, written later without the set's locks."""

    files: list[tuple[str, np.ndarray]]
    fields: dict[str, Any]


def capture(iset: IndexSet, *, copy: bool = False) -> Captured:
    """The state `save` writes. Caller holds the set's locks; with `copy` the arrays are copies (and
    FAISS indexes serialised), so the result stays valid after they are released."""
    from indexes.knn import HnswIndex, IvfIndex

    def kept(a: np.ndarray) -> np.ndarray:
        return a.copy() if copy else a

    table = iset._table
    files = [("ids.npy", kept(table.ids)), ("rows.npy", kept(table.rows))]
    state: dict[str, Any] = {}
    for key, ix in iset._indexes.items():
        if isinstance(ix, (HnswIndex, IvfIndex)):
            files.append((f"{key}.faiss", faiss.serialize_index(ix.index)))
        if isinstance(ix, HnswIndex):
            n = ix.index.ntotal
            files += [(f"{key}.labels.npy", kept(ix.label_ids[:n])), (f"{key}.alive.npy", kept(ix.alive[:n]))]
        st = ix.stats
        state[key] = {"radius": getattr(ix, "radius", 0.0), "stats": [st.norm, st.pmin, st.pmax]}
    fields = {"format": FORMAT, "version": VERSION, "dim": iset.dim, "count": table.n, "last_seq": iset.last_seq,
              "specs": [ix.spec.to_dict() for ix in iset._indexes.values()], "indexes": state}
    return Captured(files, fields)


def save(iset: IndexSet, directory: Path) -> None:
    """Write `iset` to `directory` atomically (module docstring). Caller holds the set's locks."""
    write(capture(iset), directory)


def write(captured: Captured, directory: Path) -> None:
    """Write a captured set to `directory` atomically (module docstring)."""
    directory = directory.absolute()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _recover(directory)
        tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            w = _Writer(tmp)
            for name, data in captured.files:
                (w.array if name.endswith(".npy") else w.blob)(name, data)
            manifest = {**captured.fields, "files": w.files}
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
            if directory.exists():
                os.rename(directory, old)
            os.rename(tmp, directory)
            _fsync_dir(directory.parent)
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
            _fsync_dir(directory.parent)
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
    if m.get("version") != VERSION:
        raise StorageError(f"{path}: snapshot format version {m.get('version')!r}, this build reads {VERSION}")
    return m


def _verified(path: Path, m: dict[str, Any], name: str) -> Path:
    entry = m["files"].get(name)
    file = path / name
    if not isinstance(entry, dict) or not file.is_file():
        raise StorageError(f"{path}: file {name} is missing")
    if file.stat().st_size != entry.get("bytes") or _sha256(file) != entry.get("sha256"):
        raise StorageError(f"{path}: file {name} is damaged (size or checksum differs from the manifest)")
    return file


def _array(path: Path, m: dict[str, Any], name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a: np.ndarray = np.load(_verified(path, m, name), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise StorageError(f"{path}: cannot read {name}: {exc}") from exc
    if a.dtype != dtype or a.shape != shape:
        raise StorageError(f"{path}: {name} has {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")
    return a


def _stats(m: dict[str, Any], key: str) -> Stats | None:
    """The certificate statistics the set had when saved (they only widen with writes, so the loaded
    set certifies exactly what the saved one did); None for snapshots written before they were kept."""
    entry = m["indexes"].get(key) if isinstance(m.get("indexes"), dict) else None
    raw = entry.get("stats") if isinstance(entry, dict) else None
    if raw is None:
        return None
    try:
        norm, pmin, pmax = (float(v) for v in raw)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"manifest is damaged (stats of {key})") from exc
    return Stats(norm, pmin, pmax)


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


def load(cls: type[IndexSet], directory: Path, *, id_offset: int = 0) -> IndexSet:
    """Read a snapshot written by `save`; StorageError if it is missing, damaged or foreign.

    `id_offset` is added to every id (the table's, HNSW's labels, IVF's lists): a collection
    restored into another database gets fresh internal ids in the same order (service/snapshots.py).
    """
    from indexes.knn import _KIND_CLASS, HnswIndex, IndexSpec, IvfIndex

    directory = directory.absolute()
    path = directory
    if not (directory / MANIFEST).exists():
        path = _best_fallback(directory) or directory
    m = _manifest(path)
    try:
        dim, count, last_seq = int(m["dim"]), int(m["count"]), int(m["last_seq"])
        specs = [IndexSpec.from_dict(s) for s in m["specs"]]
        if not isinstance(m["files"], dict):
            raise TypeError("files")
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise StorageError(f"{path}: manifest is damaged ({exc})") from exc
    ids = _array(path, m, "ids.npy", np.int64, (count,))
    rows = _array(path, m, "rows.npy", np.float32, (count, dim))
    if count and (ids.min() < 0 or np.unique(ids).size != count):
        raise StorageError(f"{path}: ids.npy holds negative or repeated ids")
    ids = ids + id_offset
    iset = cls(dim)
    iset.last_seq = last_seq
    iset._table.upsert(ids, rows, {})
    for spec in specs:
        stats = _stats(m, spec.key)
        if spec.kind == "flat":
            iset.add_index(spec)
            if stats is not None:
                iset._indexes[spec.key].stats = stats
            continue
        ix = _KIND_CLASS[spec.kind](spec, dim)
        if not isinstance(ix, (HnswIndex, IvfIndex)):
            continue
        try:
            ix.radius = float(m["indexes"][spec.key]["radius"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"{path}: manifest is damaged (state of {spec.key})") from exc
        blob = np.fromfile(_verified(path, m, f"{spec.key}.faiss"), dtype=np.uint8)
        try:
            index = faiss.deserialize_index(blob)
        except RuntimeError as exc:
            raise StorageError(f"{path}: cannot read {spec.key}.faiss") from exc
        if index.d != ix.fwidth:
            raise StorageError(f"{path}: {spec.key}.faiss has dimension {index.d}, expected {ix.fwidth}")
        if isinstance(ix, HnswIndex):
            n = index.ntotal
            ix.index = index
            ix.index.hnsw.efSearch = spec.params["ef_search"]
            ix.label_ids = _array(path, m, f"{spec.key}.labels.npy", np.int64, (n,)) + id_offset
            ix.alive = _array(path, m, f"{spec.key}.alive.npy", np.bool_, (n,))
            live = np.flatnonzero(ix.alive)
            ix.label_of = dict(zip(ix.label_ids[live].tolist(), live.tolist()))
            ix.dead = n - live.size
            if live.size != count or not np.array_equal(np.sort(ix.label_ids[live]), np.sort(ids)):
                raise StorageError(f"{path}: {spec.key} does not hold the table's ids")
        elif isinstance(ix, IvfIndex):
            ix.index = index
            ix.index.nprobe = spec.params["nprobe"]
            if ix.index.is_trained and ix.index.ntotal != count:
                raise StorageError(f"{path}: {spec.key} holds {ix.index.ntotal} vectors, the table {count}")
            if id_offset:
                _shift_ivf_ids(ix.index, id_offset)
        if stats is not None:
            ix.stats = stats
        iset._indexes[spec.key] = ix
    return iset
