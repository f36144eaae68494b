"""A typed Python client for the logitsearch REST API, on httpx, taking and returning numpy arrays.

    from service.client import Client
    with Client("http://127.0.0.1:6340") as c:
        c.create_collection("imagenet", dim=1000, metrics=["euc", "tri"], temperatures=[10])
        c.upsert("imagenet", ids, X)                        # chunked, as base64 float32
        hits = c.search("imagenet", X[0], k=10, metric="tri", temperature=10)
        hits.ids, hits.distances                            # list of ids, float64 array

`AsyncClient` has the same methods, each returning an awaitable. Errors come back as `ApiError`
carrying the RFC 9457 problem (`status`, `detail`, `errors`).

Extending: each method builds `_Call`s (method, path, body, and a `parse` of the response) and
hands them to `self._send(call)` or, for several requests, `self._send_all(calls, combine)`; the sync
and async classes only differ in how they run a call, so a new endpoint is one method on `_Api`.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, Self, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from core.errors import LogitsearchError

DEFAULT_URL = "http://127.0.0.1:6340"
#: bytes of float32 rows per upsert request (base64 makes the JSON ~4/3 of this)
UPSERT_CHUNK_BYTES = 8 * 1024 * 1024
#: bytes per piece of a streamed .npy upload
UPLOAD_PIECE_BYTES = 1024 * 1024

T = TypeVar("T")
Id = int | str


class ApiError(LogitsearchError):
    """The server answered with an error: `status`, and the problem's `detail` and `errors`."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.detail = str(problem.get("detail", ""))
        self.errors: list[dict[str, str]] = list(problem.get("errors") or [])
        super().__init__(f"{status} {problem.get('title', '')}: {self.detail}".strip())


@dataclass(frozen=True)
class SearchHits:
    """One query's answer: ids (as stored: int or str), distances (float64, metric units, nearest
    first), and payloads / vectors when asked for."""

    ids: list[Id]
    distances: npt.NDArray[np.float64]
    metric: str
    temperature: float | None
    index: str
    how: str
    took_ms: float
    formula: str
    units: str
    payloads: list[dict[str, Any] | None] | None = None
    vectors: npt.NDArray[np.float32] | None = None
    raw: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # the server's JSON


@dataclass(frozen=True)
class Points:
    """Points as stored: ids, float32 vectors (n, dim) when asked for, payloads, and ids not found."""

    ids: list[Id]
    vectors: npt.NDArray[np.float32] | None
    payloads: list[dict[str, Any] | None] | None
    missing: list[Id] = field(default_factory=list)
    next_offset: int | None = None


@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: dict[str, Any] | None = None
    content: Any = None
    files: Any = None
    data: Any = None
    headers: dict[str, str] | None = None
    #: stream the response body into this file instead of reading it whole
    download: Path | None = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("json", "params", "content", "files", "data", "headers"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _checked(r: httpx.Response) -> httpx.Response:
    if r.is_success:
        return r
    try:
        problem = r.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": r.reason_phrase, "detail": r.text[:500]}
    raise ApiError(r.status_code, problem)


@contextmanager
def _whole_or_nothing(path: Path) -> Iterator[BinaryIO]:
    """A file to write a download into: renamed to `path` when the block succeeds, removed if not."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json(r: httpx.Response) -> Any:
    return r.json()


def _b64(X: npt.NDArray[Any]) -> str:
    return base64.b64encode(np.ascontiguousarray(X, dtype="<f4").tobytes()).decode("ascii")


def _hits(d: dict[str, Any]) -> SearchHits:
    hits = d["hits"]
    vectors = np.array([h["vector"] for h in hits], dtype=np.float32) if hits and "vector" in hits[0] else None
    return SearchHits(ids=[h["id"] for h in hits], distances=np.array([h["distance"] for h in hits], dtype=np.float64),
                      metric=d["metric"], temperature=d["temperature"], index=d["index"], how=d["how"],
                      took_ms=d["took_ms"], formula=d["formula"], units=d["units"],
                      payloads=[h.get("payload") for h in hits] if not hits or "payload" in hits[0] else None,
                      vectors=vectors, raw=d)


def _points(d: dict[str, Any]) -> Points:
    pts = d["points"]
    with_vector = bool(pts) and "vector" in pts[0]
    return Points(ids=[p["id"] for p in pts],
                  vectors=np.array([p["vector"] for p in pts], dtype=np.float32) if with_vector else None,
                  payloads=[p.get("payload") for p in pts] if pts and "payload" in pts[0] else None,
                  missing=list(d.get("missing", [])), next_offset=d.get("next_offset"))


def _combine_writes(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several write answers as one: the last operation id, the total count, the weakest status."""
    order = ["completed", "acknowledged", "rebuilding"]
    return {"operation_id": results[-1]["operation_id"] if results else None,
            "status": max((r["status"] for r in results), key=order.index, default="completed"),
            "count": sum(r["count"] for r in results), "requests": len(results)}


def _npy_header(shape: tuple[int, int], dtype: np.dtype[Any]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _file_pieces(path: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """The bytes of a file in pieces, read as they are sent; `progress(bytes)` after each."""
    with open(path, "rb") as f:
        while piece := f.read(UPLOAD_PIECE_BYTES):
            if progress:
                progress(len(piece))
            yield piece


def _npy_pieces(source: str | Path | npt.NDArray[Any], progress: Callable[[int], None] | None
                ) -> tuple[int, Iterator[bytes]]:
    """(rows, the .npy bytes in pieces) of a file (streamed as is) or an array (header + row blocks)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        rows = int(np.load(path, mmap_mode="r").shape[0])

        return rows, _file_pieces(path, progress)
    X = np.asarray(source)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array (rows, dim), got shape {X.shape}")

    def from_array() -> Iterator[bytes]:
        yield _npy_header((int(X.shape[0]), int(X.shape[1])), X.dtype)
        step = max(1, UPLOAD_PIECE_BYTES // max(1, X.shape[1] * X.dtype.itemsize))
        for s in range(0, X.shape[0], step):
            piece = np.ascontiguousarray(X[s:s + step]).tobytes()
            if progress:
                progress(len(piece))
            yield piece
    return int(X.shape[0]), from_array()



def _writer(path: str | Path | None) -> Callable[[httpx.Response], bytes]:
    """A parse that returns the body's bytes and writes them to `path` when given."""
    def parse(r: httpx.Response) -> bytes:
        if path is not None:
            Path(path).write_bytes(r.content)
        return r.content
    return parse


class _Api:
    """The endpoints; subclasses define `_send` and `_send_all`."""

    def _send(self, call: _Call[Any]) -> Any:
        raise TypeError("use Client or AsyncClient")

    def _send_all(self, calls: Iterable[_Call[Any]], combine: Callable[[list[Any]], Any]) -> Any:
        raise TypeError("use Client or AsyncClient")

    # --- health and collections ------------------------------------------------------------------

    def health(self) -> Any:
        return self._send(_Call("GET", "/healthz", _json))

    def ready(self) -> Any:
        """True when every collection is loaded (GET /readyz answers 200)."""
        return self._send(_Call("GET", "/readyz", lambda r: r.status_code == 200))

    def collections(self) -> Any:
        """Every collection as a dict (name, dim, metrics, temperatures, count, indexes, ...)."""
        return self._send(_Call("GET", "/v1/collections", lambda r: r.json()["collections"]))

    def collection(self, name: str) -> Any:
        return self._send(_Call("GET", f"/v1/collections/{name}", _json))

    def create_collection(self, name: str, dim: int, *, metrics: Sequence[str] | None = None,
                          temperatures: Sequence[float] | None = None, kind: str = "flat",
                          params: dict[str, int] | None = None, payload_index: Sequence[str] = ()) -> Any:
        """Create (or confirm) a collection; ApiError 409 if it exists with another configuration.
        `payload_index`: payload keys filters may use."""
        body: dict[str, Any] = {"dim": int(dim), "index": {"kind": kind, "params": dict(params or {})},
                                "payload_index": list(payload_index)}
        if metrics is not None:
            body["metrics"] = list(metrics)
        if temperatures is not None:
            body["temperatures"] = [float(t) for t in temperatures]
        return self._send(_Call("PUT", f"/v1/collections/{name}", _json, json=body))

    def payload_index(self, name: str, fields: Sequence[str]) -> Any:
        """Index payload keys for filters (back-filled); the collection's indexed keys."""
        return self._send(_Call("PUT", f"/v1/collections/{name}/payload_index", _json, json={"fields": list(fields)}))

    def delete_collection(self, name: str) -> Any:
        return self._send(_Call("DELETE", f"/v1/collections/{name}", _json))

    def indexes(self, name: str) -> Any:
        return self._send(_Call("GET", f"/v1/collections/{name}/indexes", lambda r: r.json()["indexes"]))

    def add_index(self, name: str, metric: str, temperature: float | None = None, *, kind: str = "flat",
                  params: dict[str, int] | None = None) -> Any:
        """Start building an index in the background; poll `indexes(name)` for its progress."""
        body = {"metric": metric, "temperature": temperature, "kind": kind, "params": dict(params or {})}
        return self._send(_Call("POST", f"/v1/collections/{name}/indexes", _json, json=body))

    def drop_index(self, name: str, index_id: str) -> Any:
        return self._send(_Call("DELETE", f"/v1/collections/{name}/indexes/{index_id}", _json))

    # --- points ----------------------------------------------------------------------------------

    def upsert(self, name: str, ids: Sequence[Id], X: npt.ArrayLike,
               payloads: Sequence[dict[str, Any] | None] | None = None, *, wait: bool = True,
               chunk_rows: int | None = None, progress: Callable[[int], None] | None = None) -> Any:
        """Insert or replace points, in requests of `chunk_rows` rows (default ~8 MiB of float32) sent
        as base64 float32; each request is atomic on its own. Returns {operation_id, status, count,
        requests}; `progress(rows)` is called after each request."""
        A = np.asarray(X)
        if A.ndim != 2 or A.shape[0] != len(ids):
            raise ValueError(f"X must be (len(ids), dim) = ({len(ids)}, dim), got {A.shape}")
        if payloads is not None and len(payloads) != len(ids):
            raise ValueError(f"{len(payloads)} payloads for {len(ids)} ids")
        step = chunk_rows or max(1, min(10_000, UPSERT_CHUNK_BYTES // (4 * max(1, A.shape[1]))))

        def calls() -> Iterator[_Call[Any]]:
            for s in range(0, len(ids), step):
                body: dict[str, Any] = {"ids": list(ids[s:s + step]), "vectors_b64": _b64(A[s:s + step])}
                if payloads is not None:
                    body["payloads"] = list(payloads[s:s + step])
                n = len(body["ids"])

                def parse(r: httpx.Response, n: int = n) -> Any:
                    if progress:
                        progress(n)
                    return r.json()
                yield _Call("PUT", f"/v1/collections/{name}/points", parse, json=body,
                            params={"wait": "true" if wait else "false"})
        return self._send_all(calls(), _combine_writes)

    def upload_npy(self, name: str, source: str | Path | npt.NDArray[Any], *, ids: Sequence[Id] | None = None,
                   start: int | None = None, wait: bool = True, progress: Callable[[int], None] | None = None,
                   payloads: Sequence[dict[str, Any] | None] | None = None) -> Any:
        """Bulk ingest a .npy file or an array in ONE streamed request (one transaction): ids are
        `start`, `start+1`, ... (raw body) or `ids` (multipart with an ids file; all int or all str);
        `payloads` (one dict or None per row) go as a JSON Lines part. `progress(bytes)` is called as
        the body is sent."""
        rows, pieces = _npy_pieces(source, progress)
        path = f"/v1/collections/{name}/points/bulk"
        params = {"wait": "true" if wait else "false"}
        files: dict[str, Any] = {}
        if payloads is not None:
            if len(payloads) != rows:
                raise ValueError(f"{len(payloads)} payloads for {rows} rows")
            lines = "".join(("null" if p is None else json.dumps(p, separators=(",", ":"))) + "\n" for p in payloads)
            files["payloads"] = ("payloads.jsonl", lines.encode(), "application/jsonl")
        if ids is None:
            first = str(0 if start is None else int(start))
            if not files:
                params["start"] = first
                return self._send(_Call("POST", path, _json, params=params, content=pieces,
                                        headers={"content-type": "application/octet-stream"}))
            return self._send(_Call("POST", path, _json, params=params, data={"start": first},
                                    files={**files, "file": ("matrix.npy", _Readable(pieces),
                                                             "application/octet-stream")}))
        if len(ids) != rows:
            raise ValueError(f"{len(ids)} ids for {rows} rows")
        kinds = {type(i) for i in ids}
        if kinds - {int, str} or len(kinds) > 1:
            raise ValueError("ids for a bulk upload must be all int or all str")
        text = "\n".join(str(i) for i in ids) + "\n"
        if kinds == {str} and any("\n" in i or "\r" in i for i in ids):  # type: ignore[operator]
            raise ValueError("ids for a bulk upload cannot contain line breaks")
        return self._send(_Call("POST", path, _json, params=params,
                                files={"ids": ("ids.txt", text.encode(), "text/plain"), **files,
                                       "file": ("matrix.npy", _Readable(pieces), "application/octet-stream")},
                                data={"id_type": "int" if kinds == {int} else "str"}))

    def get(self, name: str, ids: Sequence[Id], *, with_vector: bool = True, with_payload: bool = True) -> Any:
        """The stored points among `ids` (in order; unknown ones listed in `missing`)."""
        body = {"ids": list(ids), "with_vector": with_vector, "with_payload": with_payload}
        return self._send(_Call("POST", f"/v1/collections/{name}/points/get", lambda r: _points(r.json()),
                                json=body))

    def delete(self, name: str, ids: Sequence[Id] | None = None, *, filter: dict[str, Any] | None = None,
               wait: bool = True) -> Any:
        """Delete `ids`, or every point `filter` (Qdrant's {must, should, must_not}) matches."""
        body = {"filter": filter} if ids is None else {"ids": list(ids)}
        return self._send(_Call("POST", f"/v1/collections/{name}/points/delete", _json, json=body,
                                params={"wait": "true" if wait else "false"}))

    def scroll(self, name: str, offset: int | None = None, limit: int = 100, *, with_vector: bool = False,
               with_payload: bool = True, filter: dict[str, Any] | None = None) -> Any:
        """One page of points in insertion order (those `filter` matches); pass `.next_offset` back for
        the next (None: done)."""
        body = {"offset": offset, "limit": limit, "with_vector": with_vector, "with_payload": with_payload,
                "filter": filter}
        return self._send(_Call("POST", f"/v1/collections/{name}/points/scroll", lambda r: _points(r.json()),
                                json=body))

    # --- search ----------------------------------------------------------------------------------

    @staticmethod
    def _search_body(vector: npt.ArrayLike | None, id: Id | None, k: int, metric: str | None,
                     temperature: float | None, kind: str | None, exact: bool, with_payload: bool,
                     with_vector: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"k": int(k), "exact": exact, "with_payload": with_payload,
                                "with_vector": with_vector}
        if vector is not None:
            v = np.asarray(vector)
            if v.dtype == np.float32:  # exact as base64 float32, and ~5x cheaper for the server to read
                body["vector_b64"] = _b64(v.ravel())
            else:  # JSON numbers keep a float64 query exact (base64 float32 would round it)
                body["vector"] = np.asarray(v, dtype=np.float64).ravel().tolist()
        if id is not None:
            body["id"] = id
        for key, value in (("metric", metric), ("temperature", temperature), ("kind", kind)):
            if value is not None:
                body[key] = value
        return body

    def search(self, name: str, vector: npt.ArrayLike | None = None, *, id: Id | None = None, k: int = 10,
               metric: str | None = None, temperature: float | None = None, kind: str | None = None,
               exact: bool = False, with_payload: bool = True, with_vector: bool = False,
               filter: dict[str, Any] | None = None) -> Any:
        """The k nearest points of `vector` (or of the stored point `id`, left out of the answer), among
        those `filter` matches when given."""
        body = self._search_body(vector, id, k, metric, temperature, kind, exact, with_payload, with_vector)
        if filter is not None:
            body["filter"] = filter
        return self._send(_Call("POST", f"/v1/collections/{name}/search", lambda r: _hits(r.json()), json=body))

    def search_batch(self, name: str, Q: npt.ArrayLike | None = None, *, ids: Sequence[Id] | None = None,
                     k: int = 10, metric: str | None = None, temperature: float | None = None,
                     kind: str | None = None, exact: bool = False, with_payload: bool = True,
                     with_vector: bool = False) -> Any:
        """One SearchHits per row of `Q` (m, dim) and per stored id in `ids`, in one request."""
        searches = []
        if Q is not None:
            A = np.atleast_2d(np.asarray(Q))
            searches += [self._search_body(q, None, k, metric, temperature, kind, exact, with_payload, with_vector)
                         for q in A]
        for i in ids or ():
            searches.append(self._search_body(None, i, k, metric, temperature, kind, exact, with_payload,
                                              with_vector))
        return self._send(_Call("POST", f"/v1/collections/{name}/search/batch",
                                lambda r: [_hits(d) for d in r.json()["results"]], json={"searches": searches}))

    # --- evaluation (service/routes/evaluate.py) ---------------------------------------------------

    @staticmethod
    def _evaluate_body(vector: npt.ArrayLike | None, id: Id | None, temperatures: float | Sequence[float] | str,
                       metrics: Sequence[str] | None, sample: int | None, seed: int, mode: str, ranks: str,
                       queries: int | None, queries_seed: int, labels: str | None, k: int | None,
                       filter: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": mode, "ranks": ranks, "seed": int(seed),
                                "temperatures": "auto" if isinstance(temperatures, str) and temperatures == "auto"
                                else [float(t) for t in np.atleast_1d(temperatures)]}
        if vector is not None:
            body["vector"] = np.asarray(vector, dtype=np.float64).ravel().tolist()
        for key, value in (("id", id), ("metrics", None if metrics is None else list(metrics)),
                           ("sample", sample), ("labels", labels), ("k", k), ("filter", filter)):
            if value is not None:
                body[key] = value
        if queries is not None:
            body["queries"] = {"sample": int(queries), "seed": int(queries_seed)}
        return body

    def evaluate(self, name: str, vector: npt.ArrayLike | None = None, *, id: Id | None = None,
                 temperatures: float | Sequence[float] | str = 10.0, metrics: Sequence[str] | None = None,
                 sample: int | None = None, seed: int = 0, mode: str = "one_to_many", ranks: str = "average",
                 queries: int | None = None, queries_seed: int = 0, labels: str | None = None,
                 k: int | None = None, filter: dict[str, Any] | None = None) -> Any:
        """Spearman's rho of CED against each metric, per temperature (or `temperatures="auto"`), for
        the query `vector` or stored `id`, or for `queries` random stored queries (summarised), or all
        pairs (mode many_to_many); `labels` names a payload field for the label check (k neighbours).
        Returns the response as a dict: `results` (or `summary`), `sample`, the recommendation..."""
        body = self._evaluate_body(vector, id, temperatures, metrics, sample, seed, mode, ranks, queries,
                                   queries_seed, labels, k, filter)
        return self._send(_Call("POST", f"/v1/collections/{name}/evaluate", _json, json=body))

    def sweep_png(self, name: str, vector: npt.ArrayLike | None = None, *, id: Id | None = None,
                  temperatures: float | Sequence[float] | str = "auto", metrics: Sequence[str] | None = None,
                  sample: int | None = None, seed: int = 0, ranks: str = "average", queries: int | None = None,
                  queries_seed: int = 0, labels: str | None = None, k: int | None = None,
                  path: str | Path | None = None, filter: dict[str, Any] | None = None) -> Any:
        """rho against temperature as PNG bytes (with the label panel when `labels` is given); also
        written to `path` if given. Takes what `evaluate` takes."""
        body = self._evaluate_body(vector, id, temperatures, metrics, sample, seed, "one_to_many", ranks, queries,
                                   queries_seed, labels, k, filter)
        return self._send(_Call("POST", f"/v1/collections/{name}/evaluate/sweep.png", _writer(path), json=body))

    def roughness_png(self, name: str, *, sample: int | None = None, seed: int = 0,
                      path: str | Path | None = None) -> Any:
        """Mean roughness against temperature (log-log) as PNG bytes; also written to `path` if given."""
        params: dict[str, Any] = {"seed": int(seed)}
        if sample is not None:
            params["sample"] = int(sample)
        return self._send(_Call("GET", f"/v1/collections/{name}/roughness.png", _writer(path), params=params))

    def report(self, name: str, *, labels: str | None = None, queries: int | None = None,
               temperatures: Sequence[float] | str = "auto", k: int | None = None, sample: int | None = None,
               seed: int = 0, path: str | Path | None = None) -> Any:
        """The self-contained HTML report as text; also written to `path` if given."""
        params: dict[str, Any] = {"seed": int(seed), "temperatures": temperatures if isinstance(temperatures, str)
                                  else ",".join(repr(float(t)) for t in temperatures)}
        for key, value in (("labels", labels), ("queries", queries), ("k", k), ("sample", sample)):
            if value is not None:
                params[key] = value

        def parse(r: httpx.Response) -> str:
            if path is not None:
                Path(path).write_text(r.text, encoding="utf-8")
            return r.text
        return self._send(_Call("GET", f"/v1/collections/{name}/report", parse, params=params))

    def roughness(self, name: str, target: float | None = None, temperatures: Sequence[float] | None = None,
                  *, sample: int | None = None, seed: int = 0) -> Any:
        """The temperature reaching a target mean roughness (default 1e-6) and MR at `temperatures`."""
        params: dict[str, Any] = {"seed": int(seed)}
        if target is not None:
            params["target"] = float(target)
        if temperatures is not None:
            params["temperatures"] = ",".join(repr(float(t)) for t in temperatures)
        if sample is not None:
            params["sample"] = int(sample)
        return self._send(_Call("GET", f"/v1/collections/{name}/roughness", _json, params=params))

    def shepard(self, name: str, vector: npt.ArrayLike | None = None, *, id: Id | None = None,
                temperature: float = 10.0, metric: str = "tri", sample: int | None = None, seed: int = 0,
                ranks: str = "average", max_points: int = 10_000, width: int | None = None,
                height: int | None = None, path: str | Path | None = None,
                temperatures: Sequence[float] | str | None = None, filter: dict[str, Any] | None = None) -> Any:
        """The Shepard diagram (CED vs `metric`) as PNG bytes; also written to `path` if given. With
        `temperatures` (several, or "auto"): a grid, one panel per temperature."""
        body: dict[str, Any] = {"metric": metric, "seed": int(seed), "ranks": ranks, "max_points": int(max_points)}
        if temperatures is None:
            body["temperature"] = float(temperature)
        else:
            body["temperatures"] = temperatures if isinstance(temperatures, str) else [float(t) for t in temperatures]
        for key, value in (("width", width), ("height", height)):
            if value is not None:
                body[key] = int(value)
        if vector is not None:
            body["vector"] = np.asarray(vector, dtype=np.float64).ravel().tolist()
        if id is not None:
            body["id"] = id
        if sample is not None:
            body["sample"] = int(sample)
        if filter is not None:
            body["filter"] = filter
        return self._send(_Call("POST", f"/v1/collections/{name}/evaluate/shepard.png", _writer(path), json=body))


    # --- snapshots (service/snapshots.py) ----------------------------------------------------------

    def create_snapshot(self, name: str) -> Any:
        """Take a consistent snapshot on the server; its description (name, bytes, last_operation_id...)."""
        return self._send(_Call("POST", f"/v1/collections/{name}/snapshots", _json))

    def snapshots(self, name: str) -> Any:
        return self._send(_Call("GET", f"/v1/collections/{name}/snapshots", lambda r: r.json()["snapshots"]))

    def download_snapshot(self, name: str, snapshot: str, path: str | Path) -> Any:
        """Stream the archive `snapshot` into the file `path` (written whole or not at all); the path."""
        out = Path(path)
        return self._send(_Call("GET", f"/v1/collections/{name}/snapshots/{snapshot}", lambda r: out,
                                download=out))

    def delete_snapshot(self, name: str, snapshot: str) -> Any:
        return self._send(_Call("DELETE", f"/v1/collections/{name}/snapshots/{snapshot}", _json))

    def restore_snapshot(self, name: str, path: str | Path, *, progress: Callable[[int], None] | None = None,
                         shards: int | None = None) -> Any:
        """Upload the archive at `path` (streamed) into the new or empty collection `name`, with
        `shards` shards (None: the archive's own count; more than 1 needs a server on Ray); its
        description."""
        source = Path(path)
        source.stat()  # a missing file fails here, before a request is made
        return self._send(_Call("PUT", f"/v1/collections/{name}/snapshots/upload", _json,
                                params=None if shards is None else {"shards": int(shards)},
                                content=_file_pieces(source, progress),
                                headers={"content-type": "application/x-tar"}))


class _Readable:
    """A file-like over an iterator of byte pieces, so httpx streams a multipart file part."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces, self._buf = pieces, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buf += piece
        out, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return out


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("LOGITSEARCH_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _url(url: str | None) -> str:
    return (url or os.environ.get("LOGITSEARCH_URL") or DEFAULT_URL).rstrip("/")


class Client(_Api):
    """Synchronous client. `url` defaults to LOGITSEARCH_URL or http://127.0.0.1:6340 and `api_key`
    to LOGITSEARCH_API_KEY (sent as `Authorization: Bearer`)."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = 300.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = _url(url)
        self._http = httpx.Client(base_url=self.url, headers=_headers(api_key), timeout=timeout, transport=transport)

    def _send(self, call: _Call[T]) -> T:
        if call.download is not None:
            with self._http.stream(call.method, call.path, **call.kwargs()) as r:
                if not r.is_success:
                    r.read()
                with _whole_or_nothing(call.download) as f:
                    f.writelines(_checked(r).iter_bytes())
            return call.parse(r)
        return call.parse(_checked(self._http.request(call.method, call.path, **call.kwargs())))

    def _send_all(self, calls: Iterable[_Call[Any]], combine: Callable[[list[Any]], T]) -> T:
        return combine([self._send(c) for c in calls])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Api):
    """The same methods as `Client`, each returning an awaitable."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = 300.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = _url(url)
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(api_key), timeout=timeout,
                                       transport=transport)

    async def _send(self, call: _Call[T]) -> T:  # type: ignore[override]
        kwargs = call.kwargs()
        content = kwargs.get("content")
        if content is not None and not isinstance(content, (bytes, str)):
            kwargs["content"] = _async_pieces(content)
        if call.download is not None:
            async with self._http.stream(call.method, call.path, **kwargs) as r:
                if not r.is_success:
                    await r.aread()
                with _whole_or_nothing(call.download) as f:
                    async for chunk in _checked(r).aiter_bytes():
                        f.write(chunk)
            return call.parse(r)
        return call.parse(_checked(await self._http.request(call.method, call.path, **kwargs)))

    async def _send_all(self, calls: Iterable[_Call[Any]], combine: Callable[[list[Any]], T]) -> T:  # type: ignore[override]
        return combine([await self._send(c) for c in calls])

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _async_pieces(pieces: Iterable[bytes]) -> Any:
    for piece in pieces:
        yield piece
