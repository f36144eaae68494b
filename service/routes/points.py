"""Points: upsert (JSON), bulk .npy ingest, get, delete and scroll under /v1/collections/{name}/points."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import anyio.from_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from core.errors import InvalidInput, NotFound
from service import filters
from service.shard import Point, WriteResult
from service.ingest import NpyStream, batch, check_batch_size, parse_ids, parse_payloads
from service.memory import release_memory, trimmer
from service.observability import count_ingested
from service.problems import ProblemRoute
from service.routes.collections import backend_of
from service.schemas import (
    MAX_ID,
    DeleteIn,
    IdsIn,
    PointOut,
    PointsOut,
    ScrollIn,
    ScrollOut,
    UpsertIn,
    WriteOut,
)

router = APIRouter(prefix="/v1/collections/{name}/points", tags=["points"], route_class=ProblemRoute)

Wait = Annotated[bool, Query(description="true: answer once the write is searchable; false: once it is "
                                         "committed (202), searchable shortly after")]
RAW_TYPES = ("application/octet-stream", "application/x-npy")
_BULK_BODY = {
    "required": True,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": "a .npy file (float32/float64, C order, (n, dim)); "
                                                               "ids are start, start+1, ... (?start=)"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary", "description": "the .npy matrix"},
                "ids": {"type": "string", "format": "binary", "description": "text file, one id per line"},
                "id_type": {"type": "string", "enum": ["str", "int"], "default": "str"},
                "start": {"type": "integer", "minimum": 0, "description": "ids start, start+1, ... instead"},
                "payloads": {"type": "string", "format": "binary",
                             "description": "JSON Lines, line i for row i: an object, or an empty line or null"},
            }}},
    },
}


def write_out(result: WriteResult, response: Response) -> WriteOut:
    response.status_code = 202 if result.status == "acknowledged" else 200
    return WriteOut(operation_id=result.operation_id, status=result.status, count=result.count)


def point_json(p: Point, with_vector: bool, with_payload: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": p.id}
    if with_vector:
        out["vector"] = p.vector.tolist() if p.vector is not None else None
    if with_payload:
        out["payload"] = p.payload
    return out


@router.put("", response_model=WriteOut, summary="Upsert points (row-wise or column-wise)",
            responses={202: {"model": WriteOut, "description": "committed, not yet searchable (wait=false)"}})
def upsert(name: str, body: UpsertIn, request: Request, response: Response, wait: Wait = True) -> WriteOut:
    """`{points: [{id, vector, payload?}]}` or `{ids, vectors | vectors_b64, payloads?}`. Ids in one
    request must be unique (422 names the repeat); an existing id is replaced, payload included."""
    backend = backend_of(request)
    checked = batch(body, backend.dim(name), request.app.state.settings.max_batch)
    result = backend.upsert(name, checked.ids, checked.X, checked.payloads, wait=wait)
    trimmer.freed(8 * checked.X.nbytes)  # the body's Python floats: ~32 bytes per float32 value
    count_ingested(request, result.count)
    return write_out(result, response)


class BodySource:
    """The request body as a blocking source of chunks, for a sync route running in a worker thread."""

    def __init__(self, request: Request) -> None:
        self._chunks = request.stream().__aiter__()

    async def _next(self) -> bytes | None:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None

    def __call__(self) -> bytes | None:
        return anyio.from_thread.run(self._next)


def _range(start: int | None, n: int, field: str) -> Iterable[int]:
    if start is None:
        raise InvalidInput(field, "give start (ids start, start+1, ...), or send multipart/form-data "
                                  "with an ids file")
    if start + n - 1 > MAX_ID:
        raise InvalidInput(field, f"ids {start}..{start + n - 1} pass 2^63 - 1")
    return range(start, start + n)


def _form_text(value: Any, field: str) -> str:
    if isinstance(value, UploadFile):
        data: bytes = value.file.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(field, f"the {field} file must be UTF-8 text") from None
    return str(value)


@router.post("/bulk", response_model=WriteOut, summary="Bulk ingest a .npy matrix (streamed)",
             openapi_extra={"requestBody": _BULK_BODY},
             responses={202: {"model": WriteOut, "description": "committed, not yet searchable (wait=false)"},
                        415: {"description": "neither application/octet-stream nor multipart/form-data"}})
def bulk(name: str, request: Request, response: Response, wait: Wait = True,
         start: Annotated[int | None, Query(ge=0, le=MAX_ID, description="first id of a raw body")] = None,
         ) -> WriteOut:
    """A raw `.npy` body (`Content-Type: application/octet-stream`, ids `start`, `start+1`, …) is
    streamed: read, checked and inserted ~8 MiB at a time inside ONE transaction, so 100k x 1000 goes
    in one request without a copy in memory. Multipart (`file`, and `ids` one per line or `start`,
    optionally `payloads` as JSON Lines) is spooled to a temporary file by the form parser, then read
    the same way. Ids must be unique;
    nothing is written unless every row is good."""
    backend = backend_of(request)
    dim = backend.dim(name)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in RAW_TYPES:
        npy = NpyStream(BodySource(request), dim, "body")
        result = backend.bulk_upsert(name, npy.chunks(), _range(start, npy.rows, "start"), wait=wait)
    elif content_type == "multipart/form-data":
        form = anyio.from_thread.run(functools.partial(request.form, max_files=3, max_fields=8))
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidInput("file", "required: the .npy matrix as a file part")
            npy = NpyStream(functools.partial(upload.file.read, 1 << 20), dim, "file")
            id_type = str(form.get("id_type") or "str")
            if id_type not in ("str", "int"):
                raise InvalidInput("id_type", f"must be str or int, got {id_type!r}")
            ids: Iterable[Any]
            if form.get("ids") is not None:
                ids = parse_ids(_form_text(form.get("ids"), "ids"), id_type)
                if len(ids) != npy.rows:
                    raise InvalidInput("ids", f"{len(ids)} ids for {npy.rows} rows")
            else:
                raw_start = form.get("start")
                try:
                    first = None if raw_start is None else int(str(raw_start))
                except ValueError:
                    raise InvalidInput("start", f"must be an integer, got {str(raw_start)[:40]!r}") from None
                ids = _range(first, npy.rows, "start")
            payloads = None
            if form.get("payloads") is not None:
                payloads = parse_payloads(_form_text(form.get("payloads"), "payloads"), npy.rows)
            result = backend.bulk_upsert(name, npy.chunks(), ids, wait=wait, payloads=payloads)
        finally:
            anyio.from_thread.run(form.close)
    else:
        raise HTTPException(415, "send the .npy as application/octet-stream (ids from ?start=) or as "
                                 "multipart/form-data with a file part (and ids or start)")
    release_memory()  # the body's pieces and chunks are freed by now
    count_ingested(request, result.count)
    return write_out(result, response)


def _path_id(raw: str, id_type: str) -> int | str:
    if id_type == "str":
        return raw
    canonical = raw.isdigit() and raw.isascii() and (raw == "0" or not raw.startswith("0"))
    if canonical and int(raw) <= MAX_ID:
        return int(raw)
    if id_type == "int":
        raise InvalidInput("id", f"not an integer id in [0, 2^63 - 1]: {raw[:40]!r}")
    return raw


@router.get("/{id}", response_model=PointOut, summary="One point: vector and payload")
def get_point(name: str, id: str, request: Request,
              id_type: Annotated[Literal["auto", "str", "int"], Query(
                  description="auto: digits without leading zeros are an integer id, anything else a string")] = "auto",
              with_vector: bool = True, with_payload: bool = True) -> JSONResponse:
    pid = _path_id(id, id_type)
    [point] = backend_of(request).get_points(name, [pid], with_vector=with_vector, with_payload=with_payload)
    if point is None:
        raise NotFound(f"point {pid!r} not found in collection {name!r}")
    return JSONResponse(point_json(point, with_vector, with_payload))


@router.post("/get", response_model=PointsOut, summary="Several points by id")
def get_points(name: str, body: IdsIn, request: Request) -> JSONResponse:
    check_batch_size(len(body.ids), "ids", request.app.state.settings.max_batch)
    found = backend_of(request).get_points(name, body.ids, with_vector=body.with_vector,
                                           with_payload=body.with_payload)
    return JSONResponse({"points": [point_json(p, body.with_vector, body.with_payload) for p in found if p],
                         "missing": [i for i, p in zip(body.ids, found) if p is None]})


@router.post("/delete", response_model=WriteOut, summary="Delete points by id or by filter",
             responses={202: {"model": WriteOut, "description": "committed, not yet applied (wait=false)"}})
def delete_points(name: str, body: DeleteIn, request: Request, response: Response, wait: Wait = True) -> WriteOut:
    """`ids` (unknown ones are ignored) or `filter` (every point it matches, in one transaction);
    `count` says how many points were deleted."""
    ids = body.ids
    if (ids is None) == (body.filter is None):
        raise InvalidInput("ids", "give ids or filter (one of them)")
    if ids is None:
        flt = filters.parse(body.filter, "filter")
        return write_out(backend_of(request).delete_by_filter(name, flt, wait=wait), response)
    check_batch_size(len(ids), "ids", request.app.state.settings.max_batch)
    return write_out(backend_of(request).delete_points(name, ids, wait=wait), response)


@router.post("/scroll", response_model=ScrollOut, summary="Page through all points")
def scroll(name: str, body: ScrollIn, request: Request) -> JSONResponse:
    """Points in insertion order, only those `filter` matches when given; pass `next_offset` back as
    `offset` for the next page."""
    flt = None if body.filter is None else filters.parse(body.filter, "filter")
    points, nxt = backend_of(request).scroll(name, body.offset, body.limit, with_vector=body.with_vector,
                                             with_payload=body.with_payload, filter=flt)
    return JSONResponse({"points": [point_json(p, body.with_vector, body.with_payload) for p in points],
                         "next_offset": nxt})

