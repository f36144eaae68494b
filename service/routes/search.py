"""k-NN search: POST /v1/collections/{name}/search and …/search/batch.

Plain `def` routes: FastAPI runs them in its thread pool and FAISS releases the GIL, so searches run
concurrently without blocking the event loop. Responses are built as plain JSON (the models below
document them) because this is the hot path. These routes define the API; ordinary requests are
answered by service.fastlane, which calls answer_search / answer_batch below without FastAPI's
per-request machinery (tests/service/test_fastlane.py holds the two to the same answers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pydantic_core
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from core.errors import InvalidInput
from core.metrics import METRICS
from indexes.knn import FILTER_SCAN_ROWS
from service import filters
from service.coordinator import Coordinator, Query, SearchResult
from service.ingest import check_batch_size, decode_vector_b64
from service.observability import observe_search
from service.problems import ProblemRoute
from service.schemas import SearchBatchIn, SearchBatchOut, SearchIn, SearchOut


class FastJSON(JSONResponse):
    """JSON rendered by pydantic-core (~4x the stdlib's json.dumps on a batch of hits). Distances are
    finite floats, written in the shortest form that reads back to the same float64."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


router = APIRouter(prefix="/v1/collections/{name}", tags=["search"], route_class=ProblemRoute)


def _query(body: SearchIn, dim: int, prefix: str) -> Query:
    given = [f for f, v in (("vector", body.vector), ("vector_b64", body.vector_b64), ("id", body.id))
             if v is not None]
    if len(given) != 1:
        raise InvalidInput(f"{prefix}vector", "give exactly one of vector, vector_b64 and id"
                           + (f"; got {', '.join(given)}" if given else ""))
    vector: Any = body.vector
    if body.vector_b64 is not None:
        vector = decode_vector_b64(body.vector_b64, dim, f"{prefix}vector_b64")
    if isinstance(vector, list) and len(vector) != dim:
        raise InvalidInput(f"{prefix}vector", f"expected dimension {dim}, got {len(vector)}")
    flt = None if body.filter is None else filters.parse(body.filter, f"{prefix}filter")
    return Query(k=body.k, metric=body.metric, vector=vector, id=body.id, temperature=body.temperature,
                 kind=body.kind, exact=body.exact, with_payload=body.with_payload, with_vector=body.with_vector,
                 filter=flt)


def _result_json(r: SearchResult, q: Query) -> dict[str, Any]:
    m = METRICS[r.metric]
    hits = [{"id": e, "distance": d} for e, d in zip(r.ids, r.distances)]
    if r.payloads is not None:
        for hit, p in zip(hits, r.payloads):
            hit["payload"] = p
    if r.vectors is not None:
        for hit, v in zip(hits, r.vectors):
            hit["vector"] = v.tolist() if v is not None else None
    out = {"metric": r.metric, "temperature": r.temperature, "formula": m.formula, "units": m.units,
           "index": r.index, "kind": r.kind, "how": r.how, "k": r.k, "took_ms": round(r.seconds * 1e3, 4),
           "hits": hits}
    if q.filter is not None:
        out["filtered"] = {"matched": r.matched, "scan_threshold": FILTER_SCAN_ROWS}
    if r.missing:
        out["partial"], out["missing_shards"] = True, list(r.missing)
    return out


def _observe(app: Any, results: list[SearchResult]) -> None:
    """One latency observation per index call (the queries of a batch that went to FAISS together
    share one `seconds`), and every query's answer counted by how it was obtained."""
    calls: dict[tuple[str, str, str, float], dict[str, int]] = {}
    for r in results:
        hows = calls.setdefault((r.metric, r.kind, r.index, r.seconds), {})
        hows[r.how] = hows.get(r.how, 0) + 1
    for (metric, kind, _, seconds), hows in calls.items():
        observe_search(app, metric, kind, seconds, hows)


def answer_search(app: FastAPI, name: str, body: SearchIn) -> dict[str, Any]:
    """The answer to one search, as JSON-ready data (also called by service.fastlane)."""
    backend: Coordinator = app.state.backend
    q = _query(body, backend.dim(name), "")
    results = backend.search(name, [q], allow_partial=body.allow_partial)
    _observe(app, results)
    return _result_json(results[0], q)


def answer_together(app: FastAPI, name: str, bodies: Sequence[SearchIn]) -> list[dict[str, Any]]:
    """The answers to single searches that arrived together (service.fastlane), from one call to
    the backend: each is the answer answer_search gives it (`took_ms` is the shared call's). Any
    error is the whole call's: the caller then answers each alone, for its own error."""
    backend: Coordinator = app.state.backend
    dim = backend.dim(name)
    queries = [_query(b, dim, "") for b in bodies]
    results = backend.search(name, queries, allow_partial=bodies[0].allow_partial)
    _observe(app, results)
    return [_result_json(r, q) for r, q in zip(results, queries)]


def answer_batch(app: FastAPI, name: str, body: SearchBatchIn) -> dict[str, Any]:
    """The answer to a batch of searches, as JSON-ready data (also called by service.fastlane)."""
    started = time.perf_counter()
    check_batch_size(len(body.searches), "searches", app.state.settings.max_batch)
    backend: Coordinator = app.state.backend
    dim = backend.dim(name)
    for i, s in enumerate(body.searches):
        if s.allow_partial:  # one fan-out answers the whole batch: partial or not, all of it is
            raise InvalidInput(f"searches.{i}.allow_partial", "give allow_partial on the batch, not on one search")
    queries = [_query(s, dim, f"searches.{i}.") for i, s in enumerate(body.searches)]
    results = backend.search(name, queries, allow_partial=body.allow_partial)
    _observe(app, results)
    out: dict[str, Any] = {"results": [_result_json(r, q) for r, q in zip(results, queries)],
                           "took_ms": round((time.perf_counter() - started) * 1e3, 4)}
    missing = results[0].missing if results else ()
    if missing:
        out["partial"], out["missing_shards"] = True, list(missing)
    return out


@router.post("/search", response_model=SearchOut, summary="k nearest neighbours of a vector or a stored point")
def search(name: str, body: SearchIn, request: Request) -> FastJSON:
    """By `vector` (or `vector_b64`) or by stored `id` (left out of its own answer). `metric` and
    `temperature` pick the index (a tri/ced temperature must be an indexed one); `exact` forces an
    exact answer on hnsw/ivf. Distances are in the metric's own units, smaller is nearer: squared L2
    (euc), 1 - cos (cos), TRI eq. 5 (tri), CED in nats (ced)."""
    return FastJSON(answer_search(request.app, name, body))


@router.post("/search/batch", response_model=SearchBatchOut, summary="Many searches in one call")
def search_batch(name: str, body: SearchBatchIn, request: Request) -> FastJSON:
    """Searches that share index, k and exactness are answered by one FAISS call."""
    return FastJSON(answer_batch(request.app, name, body))
