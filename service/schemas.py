"""The wire format: pydantic request and response models, nothing else.

Point ids are a string of 1-256 characters or a non-negative 64-bit integer and come back exactly as
given: a JSON integer stays an integer and a string stays a string ("5" and 5 are different ids).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

MAX_ID = 2**63 - 1
MAX_ID_CHARS = 256
ID_RULE = f"a string of 1-{MAX_ID_CHARS} characters or a whole number in [0, 2^63 - 1]"

Metric = Literal["euc", "cos", "tri", "ced"]
Kind = Literal["flat", "hnsw", "ivf"]


def _point_id(value: Any) -> int | str:
    if isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    raise PydanticCustomError("point_id", f"must be {ID_RULE}, got {{got}}", {"got": repr(value)[:80]})


PointId = Annotated[
    int | str,
    PlainValidator(_point_id),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_ID},
                              {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}],
                    "description": ID_RULE}),
]
Payload = dict[str, Any]

FILTER_DOC = (
    "Qdrant's filter: {must: [...], should: [...], must_not: [...]} (all must hold, at least one should, "
    "none of must_not), each entry a condition or a nested filter. Conditions: {key, match: {value}} "
    "(string, integer or boolean), {key, match: {any: [...]}}, {key, range: {gt, gte, lt, lte}}, "
    "{has_id: [ids]}, {is_empty: {key}} (missing, null or []). Keys are dotted payload paths ('a.b', "
    "'a[].b' steps into an array) and must be declared in the collection's payload_index. "
    "Parsed and checked by service/filters.py: a bad filter is a 422 naming the path, e.g. "
    "filter.must.0.range.gt.")
FILTER_EXAMPLE = {"must": [{"key": "label", "match": {"value": "cat"}}],
                  "must_not": [{"key": "photo", "match": {"any": ["a.jpg", "b.jpg"]}}]}
#: a filter on the wire: JSON checked by service.filters.parse (exact paths in its errors)
FilterIn = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "description": FILTER_DOC, "examples": [FILTER_EXAMPLE],
    "properties": {c: {"type": "array", "items": {"type": "object"}} for c in ("must", "should", "must_not")},
    "additionalProperties": False})]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- collections and indexes -----------------------------------------------------------------------


class IndexConfig(_In):
    kind: Kind = Field("flat", description="flat (exact), hnsw or ivf (approximate, re-ranked exactly)")
    params: dict[str, int] = Field(default_factory=dict,
                                   description="hnsw: M, ef_construction, ef_search; ivf: nlist, nprobe")


class CollectionIn(_In):
    dim: int = Field(ge=1, le=65536, description="length of every vector (logits per row)")
    metrics: list[Metric] = Field(["euc", "cos", "tri"], min_length=1, max_length=4, description="metrics to index")
    temperatures: list[float] = Field([10.0], min_length=1, max_length=64,
                                      description="softmax temperatures for tri and ced, each in [0.01, 1e4]")
    index: IndexConfig = Field(default_factory=IndexConfig)
    payload_index: list[str] = Field(default_factory=list, max_length=256,
                                     description="payload keys to index for filters, e.g. [\"photo\", \"label\"] "
                                     "(more later with PUT .../payload_index)")
    shards: int | None = Field(None, ge=1, le=256, description="Ray actors holding the collection, fixed at create "
                               "(default: 1, in the server's process; more need LOGITSEARCH_RAY_ADDRESS)")


class PayloadIndexIn(_In):
    fields: list[str] = Field(min_length=1, max_length=256, description="payload keys (dotted paths) to index")


class PayloadIndexOut(BaseModel):
    payload_index: list[str] = Field(description="the collection's indexed payload keys")


class IndexIn(_In):
    metric: Metric
    temperature: float | None = Field(None, description="required for tri and ced, absent for euc and cos")
    kind: Kind = "flat"
    params: dict[str, int] = Field(default_factory=dict)


class IndexOut(BaseModel):
    id: str = Field(description="the index id used in URLs, e.g. tri-t10-flat")
    metric: Metric
    temperature: float | None
    kind: Kind
    params: dict[str, int]
    status: Literal["building", "ready", "failed"]
    progress: float = Field(description="build progress, 0 to 1")
    vectors: int = Field(description="vectors the index holds")
    error: str | None = None


class IndexesOut(BaseModel):
    indexes: list[IndexOut]


class CollectionOut(BaseModel):
    name: str
    dim: int
    metrics: list[Metric]
    temperatures: list[float] = Field(description="every temperature a tri or ced index is ready or building at")
    index: IndexConfig
    count: int = Field(description="points stored")
    last_operation_id: int = Field(description="sequence number of the last acknowledged write")
    status: Literal["loading", "ready", "rebuilding", "failed"]
    indexes: list[IndexOut]
    payload_index: list[str] = Field(default_factory=list, description="payload keys indexed for filters")
    shards: int = Field(1, description="shards (Ray actors when the collection was created with `shards`)")


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


class DeletedOut(BaseModel):
    deleted: str


# --- points ----------------------------------------------------------------------------------------


class PointIn(_In):
    id: PointId
    vector: list[float]
    payload: Payload | None = None


class UpsertIn(_In):
    """Row-wise `points`, or column-wise `ids` with `vectors` or `vectors_b64`."""

    points: list[PointIn] | None = Field(None, description="row-wise: [{id, vector, payload?}]")
    ids: list[PointId] | None = Field(None, description="column-wise ids")
    vectors: list[list[float]] | None = Field(None, description="column-wise rows, one per id")
    vectors_b64: str | None = Field(None, description="column-wise rows as base64 of little-endian float32, "
                                    "row after row (len(ids) x dim x 4 bytes)")
    payloads: list[Payload | None] | None = Field(None, description="column-wise payloads, one per id")


class WriteOut(BaseModel):
    operation_id: int = Field(description="the collection's write sequence number of this write")
    status: Literal["completed", "acknowledged", "rebuilding"] = Field(
        description="completed: committed and searchable; acknowledged: committed (wait=false), searchable "
                    "shortly; rebuilding: committed, the indexes are being rebuilt from storage")
    count: int = Field(description="points written (upsert) or deleted")


class PointOut(BaseModel):
    id: PointId
    vector: list[float] | None = None
    payload: Payload | None = None


class IdsIn(_In):
    ids: list[PointId] = Field(min_length=1)
    with_vector: bool = True
    with_payload: bool = True


class PointsOut(BaseModel):
    points: list[PointOut] = Field(description="the points found, in the order asked")
    missing: list[PointId] = Field(description="ids with no point")


class DeleteIn(_In):
    ids: list[PointId] | None = Field(None, min_length=1, description="the points to delete; or filter")
    filter: FilterIn | None = Field(None, description="delete every point it matches (instead of ids)")


class ScrollIn(_In):
    offset: int | None = Field(None, ge=0, le=MAX_ID, description="cursor from the previous page's next_offset; null: start")
    limit: int = Field(100, ge=1, le=10_000)
    with_vector: bool = False
    with_payload: bool = True
    filter: FilterIn | None = Field(None, description="only the points it matches")


class ScrollOut(BaseModel):
    points: list[PointOut]
    next_offset: int | None = Field(description="cursor of the next page; null when this was the last")


# --- search ----------------------------------------------------------------------------------------


class SearchIn(_In):
    vector: list[float] | None = Field(None, description="the query logits (dim numbers)")
    vector_b64: str | None = Field(None, description="the query as base64 of little-endian float32")
    id: PointId | None = Field(None, description="search by a stored point, which is left out of its answer")
    k: int = Field(10, ge=1, description="neighbours wanted (at most LOGITSEARCH_MAX_K)")
    metric: Metric | None = Field(None, description="default: the collection's first indexed metric")
    temperature: float | None = Field(None, description="for tri and ced: an indexed temperature "
                                      "(may be left out when only one is indexed)")
    kind: Kind | None = Field(None, description="index kind to use; default flat, else hnsw, else ivf")
    exact: bool = Field(False, description="force an exact answer on hnsw/ivf indexes")
    with_payload: bool = True
    with_vector: bool = False
    filter: FilterIn | None = Field(None, description="search only the points it matches; exact on flat "
                                    "indexes, approximate on hnsw/ivf, an exact scan when it matches at most "
                                    "2048 points")


class HitOut(BaseModel):
    id: PointId
    distance: float = Field(description="in the metric's own units; smaller is nearer")
    payload: Payload | None = None
    vector: list[float] | None = None


class FilteredOut(BaseModel):
    matched: int = Field(description="searchable points the filter matched (the rows searched)")
    scan_threshold: int = Field(description="a filter matching at most this many points is answered by an exact "
                                "float64 scan of them, whatever the index")


class SearchOut(BaseModel):
    metric: Metric
    temperature: float | None
    formula: str
    units: str
    index: str = Field(description="id of the index that answered")
    kind: Kind
    how: Literal["certified", "scanned", "approximate"] = Field(
        description="certified: exact, proved from candidates; scanned: exact pass over all rows; "
                    "approximate: hnsw/ivf candidates re-ranked exactly")
    k: int
    took_ms: float = Field(description="time in the index, milliseconds")
    hits: list[HitOut]
    filtered: FilteredOut | None = Field(None, description="present when the search had a filter")


class SearchBatchIn(_In):
    searches: list[SearchIn] = Field(min_length=1)


class SearchBatchOut(BaseModel):
    results: list[SearchOut]
    took_ms: float = Field(description="time for the whole batch in the service, milliseconds")


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: Literal["ready", "loading"]
    collections: dict[str, str] = Field(description="name -> loading, ready, rebuilding, failed or unavailable")
    shards: dict[str, str] = Field(default_factory=dict, description="collection/shard-j -> the state of each "
                                   "Ray shard (unavailable while its actor restarts)")


# --- snapshots (service/snapshots.py) --------------------------------------------------------------


class SnapshotOut(BaseModel):
    name: str = Field(description="the archive's file name: GET …/snapshots/{name} downloads it")
    collection: str = Field(description="the collection it was taken of")
    bytes: int = Field(description="size of the tar archive")
    created: str = Field(description="when it was taken (UTC, ISO 8601)")
    last_operation_id: int = Field(description="the write sequence it holds: every write up to this one, none after")
    count: int = Field(description="points in it")
    indexes_included: bool = Field(description="false: the indexes are rebuilt from the points on restore")
    rebuild_reason: str | None = Field(None, description="why the indexes were left out")


class SnapshotsOut(BaseModel):
    snapshots: list[SnapshotOut]
