"""The wire format: pydantic request and response models, nothing else.

Point ids are a string of 1-256 characters or a non-negative 64-bit integer and come back exactly as
given: a JSON integer stays an integer and a string stays a string ("5" and 5 are different ids).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from core.evaluation import (
    AUTO_ROUGHNESS,
    CHEAPER,
    EVAL_METRICS,
    MAX_QUERIES,
    TIE_RHO,
    TIE_STANDARD_ERRORS,
    TRI_EXACT_RHO,
)
from core.labels import MAX_LABEL_K
from core.metrics import INDEXABLE
from service.shepard import MAX_PIXELS, MIN_PIXELS

MAX_ID = 2**63 - 1
MAX_ID_CHARS = 256
ID_RULE = f"a string of 1-{MAX_ID_CHARS} characters or a whole number in [0, 2^63 - 1]"

Metric = Literal[INDEXABLE]  # type: ignore[valid-type]  # the one vocabulary, core.metrics
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
    allow_partial: bool = Field(False, description="sharded collections: while a shard is down, answer from "
                                "the live shards (flagged `partial`, naming `missing_shards`) instead of 503; "
                                "a search by id still needs its point's shard. Ignored by unsharded "
                                "collections. In a batch, give it on the batch")


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
    partial: bool | None = Field(None, description="present (true) only when allow_partial answered without "
                                 "some shards: the hits are the nearest among the live shards' points")
    missing_shards: list[str] | None = Field(None, description="with partial: the shards that did not answer "
                                             "(`collection/shard-j`, as /readyz names them)")


class SearchBatchIn(_In):
    searches: list[SearchIn] = Field(min_length=1)
    allow_partial: bool = Field(False, description="as for one search, for the whole batch (the shards answer "
                                "a batch together)")


class SearchBatchOut(BaseModel):
    results: list[SearchOut]
    took_ms: float = Field(description="time for the whole batch in the service, milliseconds")
    partial: bool | None = Field(None, description="present (true) only when allow_partial answered without "
                                 "some shards; each result says so too")
    missing_shards: list[str] | None = Field(None, description="with partial: the shards that did not answer")


class HealthOut(BaseModel):
    status: str


class WarmupOut(BaseModel):
    """The kernel warm-up at start (service/warmup.py): /readyz is 200 once it has ended."""

    state: Literal["running", "done", "failed", "timed_out", "off"]
    steps_done: int
    steps: int
    failed: list[str] = Field(description="steps that raised (logged; the service serves, only slower at first)")
    seconds: float


class ReadyOut(BaseModel):
    status: Literal["ready", "loading"]
    collections: dict[str, str] = Field(description="name -> loading, ready, rebuilding or failed")
    warmup: WarmupOut | None = Field(None, description="absent when the app runs without its lifespan")
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


# --- evaluation (service/routes/evaluate.py) -------------------------------------------------------

#: the default compared set: the whole collection up to this many points, a uniform sample above
DEFAULT_SAMPLE = 100_000
#: many_to_many scores every pair, so its default sample is small (124,750 pairs)
DEFAULT_PAIRS_SAMPLE = 500
#: rows the roughness guide bisects over by default (each step is a pass over them)
DEFAULT_ROUGHNESS_SAMPLE = 2_000
MAX_SHEPARD_POINTS = 10_000

REFERENCE = ("CED(q : p) = -sum_i q_i log p_i over softmax(x/t) (eq. 2), the query q as the first "
             "argument; rho is Spearman's (eq. 8) between it and each metric over the compared rows")
PAIR_ORDER = ("many_to_many scores every pair i < j of the sample (scipy pdist order) as F(row i : row j): "
              "the earlier row is the query of the asymmetric CED and KLD")

# --- wire format ----------------------------------------------------------------------------------


class QueriesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample: int = Field(description=f"how many random stored points to use as queries (1..{MAX_QUERIES})")
    seed: int = Field(0, ge=0, description="seed of the draw of the queries")


AUTO_TEXT = (f'"auto": ~8 log-spaced temperatures over the range where the mean measure of roughness (eq. 17) '
             f"falls from {AUTO_ROUGHNESS[0]:g} to {AUTO_ROUGHNESS[1]:g} (section 10.2)")


class EvaluateIn(BaseModel):
    """One query (`id` or `vector`), or `queries` for many random stored ones, or neither with
    mode many_to_many; `temperature` or `temperatures`."""

    model_config = ConfigDict(extra="forbid")
    id: PointId | None = Field(None, description="a stored point as the query (left out of the compared set)")
    vector: list[float] | None = Field(None, description="query logits, the collection's dimension")
    temperature: float | None = Field(None, description="one softmax temperature")
    temperatures: list[float] | str | None = Field(None, description=f"a sweep, e.g. [1, 10, 100], or {AUTO_TEXT}")
    labels: str | None = Field(None, description="a payload field holding each point's label (e.g. the class): "
                               "scores each searchable metric's exact k nearest neighbours against it "
                               "(label agreement@k, mean average precision)")
    k: int = Field(10, ge=1, le=MAX_LABEL_K, description="neighbours of the label check")
    metrics: list[str] | None = Field(None, description=f"compared with CED; default {', '.join(EVAL_METRICS)}")
    sample: int | None = Field(None, description="points to compare against, drawn uniformly (default: the whole "
                               f"collection up to {DEFAULT_SAMPLE:,}; {DEFAULT_PAIRS_SAMPLE} for many_to_many)")
    seed: int = Field(0, ge=0, description="seed of the uniform sample")
    mode: Literal["one_to_many", "many_to_many"] = "one_to_many"
    ranks: Literal["average", "paper"] = Field(
        "average", description="average: ties share their average rank (= scipy); paper: the tie-breaking of "
        "the paper's MATLAB spearman_rho.m (inflates rho when there are ties)")
    queries: QueriesIn | None = Field(None, description="evaluate this many random stored queries, summarised")
    filter: FilterIn | None = Field(None, description="evaluate on the points it matches only (e.g. one class): "
                                    "the sample and the queries are drawn from them")


class ShepardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: PointId | None = None
    vector: list[float] | None = None
    temperature: float | None = Field(None, description="one temperature: one diagram")
    temperatures: list[float] | str | None = Field(None, description="several: a grid, one panel per "
                                                   f"temperature; or {AUTO_TEXT}")
    metric: str = Field(description=f"one of {', '.join(EVAL_METRICS)}")
    sample: int | None = None
    seed: int = Field(0, ge=0)
    ranks: Literal["average", "paper"] = "average"
    max_points: int = Field(MAX_SHEPARD_POINTS, ge=2, le=MAX_SHEPARD_POINTS, description="points drawn")
    width: int = Field(800, ge=MIN_PIXELS, le=MAX_PIXELS, description="pixels")
    height: int = Field(600, ge=MIN_PIXELS, le=MAX_PIXELS, description="pixels")
    filter: FilterIn | None = Field(None, description="compare with the points it matches only")


class RhoOut(BaseModel):
    value: float | None = Field(description="Spearman's rho against CED; null when undefined")
    reason: str | None = None


class RoughnessAtOut(BaseModel):
    temperature: float
    mean_roughness: float


class RoughnessTargetOut(BaseModel):
    target: float
    temperature: float = Field(description="t with mean MR = target (to 1e-6 relative in t)")
    mean_roughness: float
    reachable: bool = Field(description="false: the target lies outside what t in [0.01, 1e4] reaches; "
                            "the nearest end is given")


class BuildOut(BaseModel):
    method: str
    path: str
    body: dict[str, Any] = Field(description="POST this to build the index (in the background)")


class RecommendationOut(BaseModel):
    best: str | None = Field(description="the searchable metric (euc, cos, tri) to search with: of those tied with "
                             f"the highest rho (within {TIE_RHO:g} for one query; for many, within "
                             f"{TIE_STANDARD_ERRORS:g} standard errors of the paired per-query difference), the "
                             f"cheapest: {CHEAPER}")
    rho: float | None = Field(None, description="best's rho (mean rho for many queries)")
    tied: list[str] = Field(default_factory=list, description="searchable metrics tied with the highest, "
                            "cheapest first")
    tie_margin: float = Field(TIE_RHO, description="the rho difference counted as a tie")
    evaluation_only: str | None = Field(None, description="the best metric that cannot be searched (jsd, hellinger; "
                                        "kld only in many_to_many: for a fixed query it is CED minus a constant)")
    evaluation_only_rho: float | None = None
    indexed: bool | None = Field(None, description="whether the collection has a ready index for best at this t")
    build: BuildOut | None = Field(None, description="when not indexed: the request that builds it")
    tri_exact: bool | None = Field(description=f"rho(CED, TRI) >= threshold ({TRI_EXACT_RHO}): TRI is an exact "
                                   "stand-in for CED at this t")
    euc_beats_cos: bool | None
    threshold: float
    advice: str


class LabelOut(BaseModel):
    k: int
    agreement: float | None = Field(description="mean fraction of each labelled query's k nearest neighbours "
                                    "(exact, the query left out) that share its label")
    map: float | None = Field(description="mean average precision over the queries with a same-label point")
    n_queries: int = Field(description="queries with a label")
    n_map: int = Field(description="queries with at least one same-label point to find")


class LabelsInfoOut(BaseModel):
    field: str = Field(description="the payload field read as the label")
    k: int
    labelled: int = Field(description="points of the sample with a label")
    distinct: int = Field(description="distinct labels among them")


class AutoOut(BaseModel):
    temperatures: list[float]
    high: RoughnessTargetOut = Field(description=f"where the mean MR is ~{AUTO_ROUGHNESS[0]:g} (the sweep's start)")
    low: RoughnessTargetOut = Field(description=f"where the mean MR is ~{AUTO_ROUGHNESS[1]:g} (its end)")
    rows: int = Field(description="rows the roughness was measured on")


class SweepOut(BaseModel):
    tri_reaches: float | None = Field(description=f"smallest t with rho(CED, TRI) >= {TRI_EXACT_RHO}; null: none")
    euc_reaches: float | None = Field(description=f"smallest t with rho(CED, EUC) >= {TRI_EXACT_RHO}; null: none")
    temperature: float | None = Field(description="recommended: the smallest t whose recommended metric reaches it")
    metric: str | None
    threshold: float
    indexed: bool | None = None
    build: BuildOut | None = None
    advice: str


class TemperatureOut(BaseModel):
    temperature: float
    n: int = Field(description="values correlated: rows compared (one_to_many) or pairs (many_to_many)")
    rho: dict[str, RhoOut]
    ranked: list[str] = Field(description="metrics, best-correlated first")
    recommendation: RecommendationOut
    query_roughness: float | None = Field(description="MR of the query at t (eq. 17)")
    mean_roughness: float = Field(description="mean MR of the compared rows at t")
    seconds: float
    labels: dict[str, LabelOut] | None = Field(None, description="with `labels`: per searchable metric")


class SummaryOut(BaseModel):
    mean: float | None
    median: float | None
    min: float | None
    max: float | None
    std: float | None
    n_defined: int
    reason: str | None = None


class QueriesTemperatureOut(BaseModel):
    temperature: float
    n_queries: int
    n: int = Field(description="rows each query is compared with")
    rho: dict[str, SummaryOut]
    ranked: list[str] = Field(description="metrics by mean rho, best first")
    recommendation: RecommendationOut = Field(description="judged on the mean rhos")
    query_roughness: float = Field(description="mean MR of the queries at t")
    mean_roughness: float
    seconds: float
    labels: dict[str, LabelOut] | None = Field(None, description="with `labels`: per searchable metric")


class SampleOut(BaseModel):
    size: int = Field(description="points drawn from the collection")
    of: int = Field(description="points in the collection (with a filter: the points it matched)")
    sampled: bool = Field(description="false: the whole collection; true: a uniform sample")
    seed: int | None


class EvaluateOut(BaseModel):
    collection: str
    mode: str
    ranks: str
    metrics: list[str]
    reference: str
    query: dict[str, Any] = Field(description="{id} or {vector: dim} or {ids: [...]} (queries) or {} ")
    sample: SampleOut
    results: list[TemperatureOut] | None = None
    summary: list[QueriesTemperatureOut] | None = Field(None, description="with `queries`: per temperature")
    auto: AutoOut | None = Field(None, description='with temperatures "auto": how the sweep was found')
    sweep: SweepOut | None = Field(None, description="with several temperatures: the verdict over them")
    labels: LabelsInfoOut | None = None
    seconds: float


class RoughnessOut(BaseModel):
    collection: str
    sample: SampleOut
    target: RoughnessTargetOut | None
    temperatures: list[RoughnessAtOut]
    seconds: float


class SweepPlotIn(EvaluateIn):
    width: int = Field(900, ge=MIN_PIXELS, le=MAX_PIXELS, description="pixels")
    height: int = Field(500, ge=MIN_PIXELS, le=MAX_PIXELS, description="pixels")
