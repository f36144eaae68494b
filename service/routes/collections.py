"""Collections and their indexes: PUT/GET/DELETE /v1/collections/{name}, …/indexes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from core.errors import InvalidInput
from indexes.knn import IndexSpec
from service.catalog import CollectionConfig
from service.coordinator import CollectionInfo, Coordinator, IndexInfo
from service.problems import ProblemRoute
from service.schemas import (
    CollectionIn,
    CollectionOut,
    CollectionsOut,
    DeletedOut,
    IndexConfig,
    IndexesOut,
    IndexIn,
    IndexOut,
    PayloadIndexIn,
    PayloadIndexOut,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"], route_class=ProblemRoute)


def backend_of(request: Request) -> Coordinator:
    backend: Coordinator = request.app.state.backend
    return backend


def index_out(info: IndexInfo) -> IndexOut:
    s = info.spec
    return IndexOut(id=info.key, metric=s.metric, temperature=s.temperature, kind=s.kind, params=dict(s.params),
                    status=info.status, progress=round(info.progress, 4), vectors=info.vectors, error=info.error)


def indexed_temperatures(info: CollectionInfo) -> list[float]:
    """Every temperature a tri or ced index is ready or building at (issue 14: one added later with
    POST .../indexes is listed too, not only those the collection was created with)."""
    return sorted({i.spec.temperature for i in info.indexes if i.spec.temperature is not None and i.status != "failed"})


def collection_out(info: CollectionInfo) -> CollectionOut:
    c = info.config
    return CollectionOut(name=info.name, dim=c.dim, metrics=list(c.metrics), temperatures=indexed_temperatures(info),
                         index=IndexConfig(kind=c.kind, params=dict(c.params)), count=info.count,  # type: ignore[arg-type]
                         last_operation_id=info.last_operation_id, status=info.status,
                         indexes=[index_out(i) for i in info.indexes], payload_index=list(c.payload_index),
                         shards=c.shards or 1)


def _in_index(exc: InvalidInput) -> InvalidInput:
    """IndexSpec names its fields `kind` and `params.M`; on the wire they sit under `index`."""
    if exc.field == "kind" or exc.field.startswith("params"):
        return InvalidInput(f"index.{exc.field}", exc.reason)
    return exc


@router.put("/{name}", response_model=CollectionOut, summary="Create a collection (idempotent)",
            responses={201: {"model": CollectionOut, "description": "created"},
                       409: {"description": "exists with a different configuration"}})
def put_collection(name: str, body: CollectionIn, request: Request, response: Response) -> CollectionOut:
    """Create `name` with the metrics to index (default euc, cos, tri), the temperatures for tri/ced
    (default [10]) and the index kind (default flat). The same config again answers 200 with the
    collection; a different one is 409."""
    try:
        config = CollectionConfig.create(body.dim, body.metrics, body.temperatures, body.index.kind,
                                         body.index.params, body.payload_index, body.shards)
    except InvalidInput as exc:
        raise _in_index(exc) from None
    info, created = backend_of(request).create_collection(name, config)
    response.status_code = 201 if created else 200
    return collection_out(info)


@router.get("", response_model=CollectionsOut, summary="List collections")
def list_collections(request: Request) -> CollectionsOut:
    return CollectionsOut(collections=[collection_out(i) for i in backend_of(request).list_collections()])


@router.get("/{name}", response_model=CollectionOut, summary="One collection: count, indexes, last operation")
def get_collection(name: str, request: Request) -> CollectionOut:
    return collection_out(backend_of(request).get_collection(name))


@router.delete("/{name}", response_model=DeletedOut, summary="Delete a collection and all its points")
def delete_collection(name: str, request: Request) -> DeletedOut:
    backend_of(request).delete_collection(name)
    return DeletedOut(deleted=name)


@router.get("/{name}/indexes", response_model=IndexesOut, summary="Indexes with status and build progress")
def list_indexes(name: str, request: Request) -> IndexesOut:
    return IndexesOut(indexes=[index_out(i) for i in backend_of(request).list_indexes(name)])


@router.post("/{name}/indexes", response_model=IndexOut, status_code=202,
             summary="Build another index in the background (e.g. TRI at a new temperature)",
             responses={200: {"model": IndexOut, "description": "exists already with these parameters"}})
def add_index(name: str, body: IndexIn, request: Request, response: Response) -> IndexOut:
    """Starts the build and answers 202 at once; GET …/indexes shows the progress. Searches can use
    the index once its status is ready."""
    spec = IndexSpec(body.metric, body.temperature, body.kind, body.params)
    info, created = backend_of(request).add_index(name, spec)
    response.status_code = 202 if created else 200
    return index_out(info)


@router.delete("/{name}/indexes/{index_id}", response_model=DeletedOut, summary="Drop an index")
def drop_index(name: str, index_id: str, request: Request) -> DeletedOut:
    backend_of(request).drop_index(name, index_id)
    return DeletedOut(deleted=index_id)


@router.put("/{name}/payload_index", response_model=PayloadIndexOut, summary="Index payload keys for filters")
def declare_payload_index(name: str, body: PayloadIndexIn, request: Request) -> PayloadIndexOut:
    """Declare payload keys (dotted paths) that filters may use; the index is back-filled from the
    stored payloads in one transaction, and kept with every later write. Keys indexed already are
    left as they are (idempotent)."""
    return PayloadIndexOut(payload_index=list(backend_of(request).declare_payload_index(name, body.fields)))


@router.delete("/{name}/payload_index/{key}", response_model=PayloadIndexOut, summary="Stop indexing a payload key")
def drop_payload_index(name: str, key: str, request: Request) -> PayloadIndexOut:
    return PayloadIndexOut(payload_index=list(backend_of(request).drop_payload_index(name, key)))
