"""The evaluation endpoint (issue 5): which metric keeps the network's cross-entropy order, on the
collection's own logits; roughness guidance for picking t; Shepard diagrams as PNG.

The maths is `core.evaluation`; this module turns requests into calls to it over a sample of the
collection from the backend's `evaluate_data`, and its dataclasses into the wire format below.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidInput, LimitExceeded
from core.evaluation import (
    EVAL_METRICS,
    MANY_TO_MANY_MAX_ROWS,
    MAX_QUERIES,
    TRI_EXACT_RHO,
    Recommendation,
    RhoSummary,
    check_temperatures,
    evaluate,
    evaluate_queries,
    roughness_guide,
    shepard_data,
)
from core.ranks import Rho
from service import filters
from service.problems import ProblemRoute
from service.schemas import FilterIn, PointId
from service.shepard import MAX_PIXELS, MIN_PIXELS, shepard_png

router = APIRouter(prefix="/v1/collections/{name}", tags=["evaluate"], route_class=ProblemRoute)

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
    seed: int = Field(0, description="seed of the draw of the queries")


class EvaluateIn(BaseModel):
    """One query (`id` or `vector`), or `queries` for many random stored ones, or neither with
    mode many_to_many; `temperature` or `temperatures`."""

    model_config = ConfigDict(extra="forbid")
    id: PointId | None = Field(None, description="a stored point as the query (left out of the compared set)")
    vector: list[float] | None = Field(None, description="query logits, the collection's dimension")
    temperature: float | None = Field(None, description="one softmax temperature")
    temperatures: list[float] | None = Field(None, description="a sweep, e.g. [1, 10, 100]")
    metrics: list[str] | None = Field(None, description=f"compared with CED; default {', '.join(EVAL_METRICS)}")
    sample: int | None = Field(None, description="points to compare against, drawn uniformly (default: the whole "
                               f"collection up to {DEFAULT_SAMPLE:,}; {DEFAULT_PAIRS_SAMPLE} for many_to_many)")
    seed: int = Field(0, description="seed of the uniform sample")
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
    temperature: float
    metric: str = Field(description=f"one of {', '.join(EVAL_METRICS)}")
    sample: int | None = None
    seed: int = 0
    ranks: Literal["average", "paper"] = "average"
    max_points: int = Field(MAX_SHEPARD_POINTS, ge=2, le=MAX_SHEPARD_POINTS, description="points drawn")
    width: int = Field(800, ge=MIN_PIXELS, le=MAX_PIXELS, description="pixels")
    height: int = Field(600, ge=MIN_PIXELS, le=MAX_PIXELS, description="pixels")
    filter: FilterIn | None = Field(None, description="compare with the points it matches only")


class RhoOut(BaseModel):
    value: float | None = Field(description="Spearman's rho against CED; null when undefined")
    reason: str | None = None


class RecommendationOut(BaseModel):
    best: str | None = Field(description="the best-correlated metric (kld left out in one_to_many: it is CED "
                             "minus a constant for a fixed query, eq. 9)")
    tri_exact: bool | None = Field(description=f"rho(CED, TRI) >= threshold ({TRI_EXACT_RHO}): TRI is an exact "
                                   "stand-in for CED at this t")
    euc_beats_cos: bool | None
    threshold: float
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
    seconds: float


class RoughnessAtOut(BaseModel):
    temperature: float
    mean_roughness: float


class RoughnessTargetOut(BaseModel):
    target: float
    temperature: float = Field(description="t with mean MR = target (to 1e-6 relative in t)")
    mean_roughness: float
    reachable: bool = Field(description="false: the target lies outside what t in [0.01, 1e4] reaches; "
                            "the nearest end is given")


class RoughnessOut(BaseModel):
    collection: str
    sample: SampleOut
    target: RoughnessTargetOut | None
    temperatures: list[RoughnessAtOut]
    seconds: float


# --- helpers --------------------------------------------------------------------------------------


def _backend(request: Request) -> Any:
    return request.app.state.backend


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def _rho(r: Rho) -> RhoOut:
    return RhoOut(value=_finite(r.value), reason=r.reason)


def _recommendation(r: Recommendation) -> RecommendationOut:
    return RecommendationOut(best=r.best, tri_exact=r.tri_exact, euc_beats_cos=r.euc_beats_cos,
                             threshold=r.threshold, advice=r.advice)


def _summary(s: RhoSummary) -> SummaryOut:
    return SummaryOut(mean=_finite(s.mean), median=_finite(s.median), min=_finite(s.min), max=_finite(s.max),
                      std=_finite(s.std), n_defined=s.n_defined, reason=s.reason)


def _temperatures(body: EvaluateIn) -> tuple[float, ...]:
    if body.temperature is not None and body.temperatures is not None:
        raise InvalidInput("temperatures", "give temperature or temperatures, not both")
    if body.temperatures is not None:
        return check_temperatures(body.temperatures, "temperatures")
    if body.temperature is not None:
        return check_temperatures(body.temperature, "temperature")
    raise InvalidInput("temperature", "give a temperature (or temperatures, a sweep)")


def _sample_size(requested: int | None, count: int, default: int, limit: int, name: str) -> int:
    if count == 0:
        raise InvalidInput("name", f"collection {name!r} is empty: nothing to evaluate")
    if requested is None:
        return min(count, default, limit)
    if isinstance(requested, bool) or requested < 1:
        raise InvalidInput("sample", f"must be a whole number >= 1, got {requested!r}")
    if requested > limit:
        raise LimitExceeded("sample", f"at most {limit:,} points per evaluation (LOGITSEARCH_MAX_EVAL_SAMPLE), "
                            f"got {requested:,}")
    if requested > count:
        raise InvalidInput("sample", f"{requested:,} is larger than the collection ({count:,} points)")
    return requested


def _data(request: Request, name: str, requested: int | None, seed: int, default: int,
          flt: dict[str, Any] | None = None) -> tuple[list[Any], np.ndarray, SampleOut]:
    backend = _backend(request)
    selection = None if flt is None else backend.select(name, filters.parse(flt, "filter"))
    count = int(backend.count(name, selection))
    if flt is not None and count == 0:
        raise InvalidInput("filter", f"matches no point of collection {name!r}: nothing to evaluate")
    size = _sample_size(requested, count, default, request.app.state.settings.max_eval_sample, name)
    ids, X = backend.evaluate_data(name, size, seed, selection)
    return list(ids), X, SampleOut(size=len(ids), of=count, sampled=len(ids) < count,
                                   seed=seed if len(ids) < count else None)


def _query(request: Request, name: str, pid: Any, vector: list[float] | None, ids: list[Any]
           ) -> tuple[Any, int | None, dict[str, Any]]:
    """(query vector or None, row of the sample to leave out, the query's description)."""
    if pid is not None and vector is not None:
        raise InvalidInput("id", "give id or vector, not both")
    if vector is not None:
        return vector, None, {"vector": len(vector)}
    if pid is None:
        raise InvalidInput("id", "give the query: a stored id or a vector (or `queries` for many)")
    x = _backend(request).vector(name, pid)  # NotFound -> 404, as in search (issue 11)
    exclude = next((i for i, v in enumerate(ids) if v == pid and type(v) is type(pid)), None)
    return x, exclude, {"id": pid}


# --- routes ---------------------------------------------------------------------------------------


@router.post("/evaluate", response_model=EvaluateOut, summary="Which metric keeps CED's order on this data")
def evaluate_collection(name: str, body: EvaluateIn, request: Request) -> EvaluateOut:
    """Spearman's rho between CED(q : p) over softmax(x/t) and each metric (the paper's method,
    sections 3 and 9), per temperature, with a recommendation."""
    started = time.perf_counter()
    ts = _temperatures(body)
    if body.queries is not None:
        if body.id is not None or body.vector is not None:
            raise InvalidInput("queries", "give queries or one query (id / vector), not both")
        if body.mode != "one_to_many":
            raise InvalidInput("mode", "queries evaluates one_to_many, each query against the sample")
        ids, X, sample = _data(request, name, body.sample, body.seed, DEFAULT_SAMPLE, body.filter)
        qe = evaluate_queries(X, ts, n_queries=body.queries.sample, seed=body.queries.seed,
                              metrics=body.metrics, ranks=body.ranks)
        summary = [QueriesTemperatureOut(
            temperature=r.t, n_queries=r.n_queries, n=r.n, rho={m: _summary(s) for m, s in r.rho.items()},
            ranked=list(r.ranked), recommendation=_recommendation(r.recommendation),
            query_roughness=r.query_roughness, mean_roughness=r.mean_roughness, seconds=r.seconds)
            for r in qe.results]
        return EvaluateOut(collection=name, mode="one_to_many", ranks=qe.ranks, metrics=list(qe.metrics),
                           reference=REFERENCE, query={"ids": [ids[i] for i in qe.query_rows]}, sample=sample,
                           summary=summary, seconds=time.perf_counter() - started)
    if body.mode == "many_to_many":
        if body.id is not None or body.vector is not None:
            raise InvalidInput("mode", "many_to_many compares all pairs within the sample and takes no query")
        ids, X, sample = _data(request, name, body.sample, body.seed,
                               min(DEFAULT_PAIRS_SAMPLE, MANY_TO_MANY_MAX_ROWS), body.filter)
        ev = evaluate(X, ts, metrics=body.metrics, mode="many_to_many", ranks=body.ranks)
        query: dict[str, Any] = {}
        reference = f"{REFERENCE}. {PAIR_ORDER}"
    else:
        ids, X, sample = _data(request, name, body.sample, body.seed, DEFAULT_SAMPLE, body.filter)
        xq, exclude, query = _query(request, name, body.id, body.vector, ids)
        ev = evaluate(X, ts, query=xq, exclude=exclude, metrics=body.metrics, ranks=body.ranks)
        reference = REFERENCE
    results = [TemperatureOut(
        temperature=r.t, n=r.n, rho={m: _rho(v) for m, v in r.rho.items()}, ranked=list(r.ranked),
        recommendation=_recommendation(r.recommendation), query_roughness=r.query_roughness,
        mean_roughness=r.mean_roughness, seconds=r.seconds) for r in ev.results]
    return EvaluateOut(collection=name, mode=ev.mode, ranks=ev.ranks, metrics=list(ev.metrics),
                       reference=reference, query=query, sample=sample, results=results,
                       seconds=time.perf_counter() - started)


def _float_list(raw: str | None, field: str) -> list[float] | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        return [float(v) for v in raw.split(",")]
    except ValueError:
        raise InvalidInput(field, f"must be comma-separated numbers, e.g. 1,10,100; got {raw!r}") from None


@router.get("/roughness", response_model=RoughnessOut, summary="Temperatures for a target roughness")
def roughness_of_collection(
    name: str, request: Request,
    target: Annotated[float | None, Query(description="mean MR to reach (default 1e-6 when no "
                                          "temperatures are given, as section 10.2 suggests)")] = None,
    temperatures: Annotated[str | None, Query(description="comma-separated, e.g. 1,10,100")] = None,
    sample: Annotated[int | None, Query(description="rows used (default: up to "
                                        f"{DEFAULT_ROUGHNESS_SAMPLE:,}, uniformly sampled)")] = None,
    seed: int = 0,
) -> RoughnessOut:
    """The temperature at which the collection's mean measure of roughness (eq. 17) reaches
    `target`, and the mean MR at each of `temperatures`: guidance for picking t."""
    started = time.perf_counter()
    ts = _float_list(temperatures, "temperatures")
    if ts is not None:
        ts = list(check_temperatures(ts, "temperatures"))
    if target is None and ts is None:
        target = 1e-6
    _, X, sample_out = _data(request, name, sample, seed, DEFAULT_ROUGHNESS_SAMPLE)
    guide = roughness_guide(X, target=target, temperatures=ts)
    found = guide.target
    return RoughnessOut(
        collection=name, sample=sample_out,
        target=None if found is None else RoughnessTargetOut(target=found.target, temperature=found.t,
                                                             mean_roughness=found.roughness,
                                                             reachable=found.reachable),
        temperatures=[RoughnessAtOut(temperature=t, mean_roughness=v) for t, v in guide.at],
        seconds=time.perf_counter() - started)


@router.post("/evaluate/shepard.png", response_class=Response, summary="Shepard diagram (PNG)",
             responses={200: {"content": {"image/png": {}}, "description": "the diagram"}})
def shepard_of_collection(name: str, body: ShepardIn, request: Request) -> Response:
    """CED on x, the metric on y, for one query at one t, with the isotonic regression line and
    rho (over all compared points) in the title; at most `max_points` points drawn."""
    (t,) = check_temperatures(body.temperature, "temperature")
    ids, X, _ = _data(request, name, body.sample, body.seed, DEFAULT_SAMPLE, body.filter)
    xq, exclude, _ = _query(request, name, body.id, body.vector, ids)
    data = shepard_data(X, t, body.metric, query=xq, exclude=exclude, max_points=body.max_points,
                        seed=body.seed, ranks=body.ranks)
    png = shepard_png(data, width=body.width, height=body.height)
    rho = "nan" if math.isnan(data.rho.value) else f"{data.rho.value:.6f}"
    return Response(content=png, media_type="image/png",
                    headers={"X-Spearman-Rho": rho, "X-Points": f"{data.ced.size}/{data.n}"})
