"""Request bodies -> checked ids, float32 rows and payloads, before anything is written.

`batch` checks a JSON upsert (row-wise or column-wise, `vectors` or `vectors_b64`); `NpyStream` reads
a `.npy` matrix from any byte source chunk by chunk: the header is parsed with numpy.lib.format (never
unpickled), then rows are read, checked and converted ~8 MiB at a time, so a 100k x 1000 upload never
sits in memory whole. Every problem is an InvalidInput naming the field (and row) at fault.
"""

from __future__ import annotations

import binascii
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput, LimitExceeded
from service.schemas import MAX_ID, MAX_ID_CHARS, UpsertIn

F32 = npt.NDArray[np.float32]
Ext = int | str

#: bytes of one payload serialised as JSON
MAX_PAYLOAD_BYTES = 64 * 1024
#: bytes of rows read, checked and written per step of a .npy upload
NPY_CHUNK_BYTES = 8 * 1024 * 1024
#: a .npy header longer than this is refused before it is parsed (numpy's own default guard is 10,000)
NPY_MAX_HEADER = 10_000


@dataclass(frozen=True)
class Batch:
    ids: list[Ext]
    X: F32
    payloads: list[str | None] | None


def check_batch_size(n: int, field: str, max_batch: int) -> None:
    if n == 0:
        raise InvalidInput(field, "must not be empty")
    if n > max_batch:
        raise LimitExceeded(field, f"at most {max_batch} per request (LOGITSEARCH_MAX_BATCH), got {n}")


def check_unique(ids: Sequence[Ext], field: Callable[[int], str]) -> None:
    """InvalidInput at the first repeated id: duplicates in one request are refused (not last-wins)."""
    first: dict[Ext, int] = {}
    for j, e in enumerate(ids):
        if e in first:
            raise InvalidInput(field(j), f"duplicate id {e!r} (also at {first[e]}); ids in one request must be unique")
        first[e] = j


def rows_f32(X: npt.NDArray[Any], field: Callable[[int], str]) -> F32:
    """float32 copy of checked rows: every value finite, and within float32's range."""
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        raise InvalidInput(field(int(np.argmin(finite))), "contains NaN or infinity; logits must be finite")
    with np.errstate(over="ignore"):
        X32 = np.ascontiguousarray(X, dtype=np.float32)
    if X.dtype != np.float32:
        ok = np.isfinite(X32).all(axis=1)
        if not ok.all():
            raise InvalidInput(field(int(np.argmin(ok))), "values exceed the float32 range (about 3.4e38)")
    return X32


def _decode_b64(text: str, n: int, dim: int) -> npt.NDArray[np.float32]:
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)  # b64decode(validate=True) runs a regex first
    except (binascii.Error, ValueError):
        raise InvalidInput("vectors_b64", "not valid base64") from None
    if len(raw) != n * dim * 4:
        raise InvalidInput("vectors_b64", f"expected {n} x {dim} float32 = {n * dim * 4} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype="<f4").reshape(n, dim)


def decode_vector_b64(text: str, dim: int, field: str) -> npt.NDArray[np.float32]:
    """One query vector sent as base64 of little-endian float32."""
    try:
        return _decode_b64(text, 1, dim)[0]
    except InvalidInput as exc:
        raise InvalidInput(field, exc.reason) from None


def _payload_json(p: dict[str, Any] | None, field: str) -> str | None:
    if p is None:
        return None
    try:
        text = json.dumps(p, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError:
        raise InvalidInput(field, "must be JSON without NaN or infinity") from None
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(field, f"at most {MAX_PAYLOAD_BYTES} bytes of JSON, got {len(text.encode())}")
    return text


def batch(body: UpsertIn, dim: int, max_batch: int) -> Batch:
    """The checked contents of an upsert body for a collection of dimension `dim`."""
    columns = (body.ids, body.vectors, body.vectors_b64, body.payloads)
    if body.points is not None:
        if any(c is not None for c in columns):
            raise InvalidInput("points", "give points (row-wise) or ids with vectors (column-wise), not both")
        check_batch_size(len(body.points), "points", max_batch)
        ids = [p.id for p in body.points]
        rows: Any = [p.vector for p in body.points]
        raw_payloads = [p.payload for p in body.points]
        id_field, row_field, payload_field = "points.{}.id", "points.{}.vector", "points.{}.payload"
    else:
        if body.ids is None:
            raise InvalidInput("ids", "give points (row-wise) or ids with vectors or vectors_b64 (column-wise)")
        ids = body.ids
        check_batch_size(len(ids), "ids", max_batch)
        if (body.vectors is None) == (body.vectors_b64 is None):
            raise InvalidInput("vectors", "give exactly one of vectors and vectors_b64")
        if body.vectors is not None and len(body.vectors) != len(ids):
            raise InvalidInput("vectors", f"{len(body.vectors)} rows for {len(ids)} ids")
        if body.payloads is not None and len(body.payloads) != len(ids):
            raise InvalidInput("payloads", f"{len(body.payloads)} payloads for {len(ids)} ids")
        rows = body.vectors if body.vectors is not None else _decode_b64(body.vectors_b64 or "", len(ids), dim)
        raw_payloads = body.payloads  # type: ignore[assignment]
        id_field, row_field, payload_field = "ids.{}", "vectors.{}", "payloads.{}"
    check_unique(ids, id_field.format)
    if isinstance(rows, list):
        for j, r in enumerate(rows):
            if len(r) != dim:
                raise InvalidInput(row_field.format(j), f"expected dimension {dim}, got {len(r)}")
        rows = np.array(rows, dtype=np.float64)
    X = rows_f32(rows, row_field.format)
    payloads = None
    if raw_payloads is not None and any(p is not None for p in raw_payloads):
        payloads = [_payload_json(p, payload_field.format(j)) for j, p in enumerate(raw_payloads)]
    return Batch(list(ids), X, payloads)


# --- .npy ------------------------------------------------------------------------------------------


class _Exact:
    """`read(n)`: exactly n bytes (fewer only at the end) from a source of chunks (b'' or None: the end)."""

    def __init__(self, source: Callable[[], bytes | None]) -> None:
        self._source, self._buf, self._eof = source, bytearray(), False

    def read(self, n: int) -> bytearray:
        while len(self._buf) < n and not self._eof:
            chunk = self._source()
            if not chunk:
                self._eof = True
            else:
                self._buf += chunk
        out = self._buf[:n]
        del self._buf[:n]
        return out


class NpyStream:
    """A .npy matrix of float32 or float64 rows (n, dim), read from `source` in chunks.

    The header is checked at construction: magic, version 1 or 2, a C-ordered 2-D float32/float64
    array (either byte order) with `dim` columns and at least one row; object arrays and anything else
    are refused without being unpickled. `chunks()` then yields float32 row blocks, each checked for
    NaN/inf (the error names the row), and fails if the body is shorter or longer than promised.
    """

    def __init__(self, source: Callable[[], bytes | None], dim: int, field: str) -> None:
        self.field = field
        self._in = _Exact(source)
        try:
            version = np.lib.format.read_magic(io.BytesIO(bytes(self._in.read(8))))
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
            size = bytes(self._in.read(2 if version == (1, 0) else 4))
            length = int.from_bytes(size, "little")
            if length > NPY_MAX_HEADER:
                raise ValueError(f"a header of {length} bytes is longer than {NPY_MAX_HEADER}")
            header = io.BytesIO(size + bytes(self._in.read(length)))
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(header, max_header_size=NPY_MAX_HEADER)
        except Exception as exc:  # noqa: BLE001 -- numpy's header parser raises a zoo of types on garbage
            raise InvalidInput(field, f"not a valid .npy file: {str(exc)[:200]}") from None
        if dtype.hasobject:
            raise InvalidInput(field, "object arrays are refused (they would need unpickling); save float32 or float64")
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise InvalidInput(field, f"dtype must be float32 or float64, got {dtype}")
        if fortran:
            raise InvalidInput(field, "the array is Fortran-ordered; save np.ascontiguousarray(X)")
        if len(shape) != 2:
            raise InvalidInput(field, f"must be a 2-D array (rows, dim), got shape {shape}")
        if shape[1] != dim:
            raise InvalidInput(field, f"expected dimension {dim}, got {shape[1]}")
        if shape[0] == 0:
            raise InvalidInput(field, "the matrix has no rows")
        self.rows, self.dim, self.dtype = int(shape[0]), int(shape[1]), dtype

    def chunks(self, chunk_bytes: int = NPY_CHUNK_BYTES) -> Iterator[F32]:
        step = max(1, chunk_bytes // (self.dim * self.dtype.itemsize))
        done = 0
        while done < self.rows:
            m = min(step, self.rows - done)
            raw = self._in.read(m * self.dim * self.dtype.itemsize)
            got = len(raw) // (self.dim * self.dtype.itemsize)
            if got < m:
                raise InvalidInput(self.field, f"truncated: the header promises {self.rows} rows, "
                                               f"the body ends after {done + got}")
            block = np.frombuffer(raw, dtype=self.dtype).reshape(m, self.dim)
            try:
                X = rows_f32(block, str)
            except InvalidInput as exc:  # its field is the row within the block
                raise InvalidInput(self.field, f"row {done + int(exc.field)}: {exc.reason}") from None
            yield X
            done += m
        if self._in.read(1):
            raise InvalidInput(self.field, f"trailing bytes after the {self.rows} rows the header declares")


def parse_payloads(text: str, rows: int, field: str = "payloads") -> list[str | None]:
    """Payloads from JSON Lines, line i for row i: a JSON object, or an empty line / `null` for none.
    Returns each as compact JSON text (what the store keeps), checked like an upsert's payloads."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != rows:
        raise InvalidInput(field, f"{len(lines)} lines for {rows} rows (one JSON object or null per row)")
    out: list[str | None] = []
    for j, line in enumerate(lines):
        line = line.strip()
        if line in ("", "null"):
            out.append(None)
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(field, f"line {j + 1}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise InvalidInput(field, f"line {j + 1}: a payload must be a JSON object, got {type(value).__name__}")
        try:
            out.append(_payload_json(value, field))
        except InvalidInput as exc:
            raise InvalidInput(field, f"line {j + 1}: {exc.reason}") from None
    return out


def parse_ids(text: str, id_type: str, field: str = "ids") -> list[Ext]:
    """Ids from a text file, one per line (a final newline is fine): strings, or integers with int."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[Ext] = []
    for j, line in enumerate(lines):
        line = line.removesuffix("\r")
        if id_type == "int":
            try:
                v = int(line)
            except ValueError:
                raise InvalidInput(field, f"line {j + 1}: {line[:40]!r} is not an integer") from None
            if not 0 <= v <= MAX_ID:
                raise InvalidInput(field, f"line {j + 1}: {v} is outside [0, 2^63 - 1]")
            out.append(v)
        else:
            if not 1 <= len(line) <= MAX_ID_CHARS:
                raise InvalidInput(field, f"line {j + 1}: an id must have 1-{MAX_ID_CHARS} characters, got {len(line)}")
            out.append(line)
    return out
