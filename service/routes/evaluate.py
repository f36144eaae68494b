"""The evaluation endpoint (issue 5): which metric keeps the network's cross-entropy order, on the
collection's own logits; roughness guidance for picking t; Shepard diagrams as PNG. Issue 14: the
recommendation names a searchable metric (and whether it is indexed, or the request that builds it),
`temperatures: "auto"` sweeps the range the roughness machinery finds, `labels` adds the semantic
check, and the sweep, roughness curve and a Shepard grid come as PNG (`service.plots`).

The maths is `core.evaluation`; this module turns requests into calls to it over a sample of the
collection from the backend's `evaluate_data`, and its dataclasses into the wire format below.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from core.errors import InvalidInput, LimitExceeded
from core.evaluation import (
    AUTO_ROUGHNESS,
    MANY_TO_MANY_MAX_ROWS,
    AutoSweep,
    Recommendation,
    RhoSummary,
    SweepVerdict,
    auto_temperatures,
    check_temperatures,
    evaluate,
    evaluate_queries,
    roughness_guide,
    shepard_data,
    sweep_verdict,
)
from core.labels import LabelScore
from core.ranks import Rho
from core.roughness import RoughnessTemperature, temperature_for_roughness
from core.validate import T_MAX, T_MIN
from service import filters
from service.problems import ProblemRoute
from service.schemas import (
    DEFAULT_PAIRS_SAMPLE,
    DEFAULT_ROUGHNESS_SAMPLE,
    DEFAULT_SAMPLE,
    PAIR_ORDER,
    REFERENCE,
    AutoOut,
    BuildOut,
    EvaluateIn,
    EvaluateOut,
    LabelOut,
    LabelsInfoOut,
    QueriesTemperatureOut,
    RecommendationOut,
    RhoOut,
    RoughnessAtOut,
    RoughnessOut,
    RoughnessTargetOut,
    SampleOut,
    ShepardIn,
    SummaryOut,
    SweepOut,
    SweepPlotIn,
    TemperatureOut,
)
from service.shepard import MAX_PIXELS, MIN_PIXELS, shepard_png

router = APIRouter(prefix="/v1/collections/{name}", tags=["evaluate"], route_class=ProblemRoute)

# --- helpers --------------------------------------------------------------------------------------


def _backend(request: Request) -> Any:
    return request.app.state.backend


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def _rho(r: Rho) -> RhoOut:
    return RhoOut(value=_finite(r.value), reason=r.reason)


def _build(name: str, indexes: list[Any], kind: str, metric: str | None, t: float) -> tuple[bool | None, BuildOut | None]:
    """(is `metric` at t indexed and ready, the request that builds it when not)."""
    if metric is None:
        return None, None
    free = metric in ("euc", "cos")  # over raw logits: one index serves every t
    for info in indexes:
        s = info.spec
        if s.metric == metric and info.status == "ready" and (
                free or (s.temperature is not None and math.isclose(s.temperature, t, rel_tol=1e-9))):
            return True, None
    body: dict[str, Any] = {"metric": metric, "kind": kind}
    if not free:
        body["temperature"] = t
    return False, BuildOut(method="POST", path=f"/v1/collections/{name}/indexes", body=body)


def _recommendation(r: Recommendation, where: tuple[str, list[Any], str] | None = None,
                    t: float = 0.0) -> RecommendationOut:
    indexed, build = _build(*where, r.best, t) if where is not None else (None, None)
    return RecommendationOut(best=r.best, rho=r.rho, tied=list(r.tied), tie_margin=r.tie_margin,
                             evaluation_only=r.evaluation_only, evaluation_only_rho=r.evaluation_only_rho,
                             indexed=indexed, build=build, tri_exact=r.tri_exact, euc_beats_cos=r.euc_beats_cos,
                             threshold=r.threshold, advice=r.advice)


def _label_out(scores: dict[str, LabelScore] | None) -> dict[str, LabelOut] | None:
    if scores is None:
        return None
    return {m: LabelOut(k=s.k, agreement=_finite(s.agreement), map=_finite(s.map), n_queries=s.n_queries,
                        n_map=s.n_map) for m, s in scores.items()}


def _target_out(found: RoughnessTemperature) -> RoughnessTargetOut:
    return RoughnessTargetOut(target=found.target, temperature=found.t, mean_roughness=found.roughness,
                              reachable=found.reachable)


def _sweep_out(v: SweepVerdict, where: tuple[str, list[Any], str]) -> SweepOut:
    indexed, build = _build(*where, v.metric, v.temperature or 0.0)
    return SweepOut(tri_reaches=v.tri_reaches, euc_reaches=v.euc_reaches, temperature=v.temperature,
                    metric=v.metric, threshold=v.threshold, indexed=indexed, build=build, advice=v.advice)


def _summary(s: RhoSummary) -> SummaryOut:
    return SummaryOut(mean=_finite(s.mean), median=_finite(s.median), min=_finite(s.min), max=_finite(s.max),
                      std=_finite(s.std), n_defined=s.n_defined, reason=s.reason)


def _temperatures(body: EvaluateIn | ShepardIn, X: np.ndarray | None = None,
                  seed: int = 0) -> tuple[tuple[float, ...], AutoSweep | None]:
    """The temperatures asked for; "auto" needs the sample X (the roughness is measured on up to
    `DEFAULT_ROUGHNESS_SAMPLE` of its rows, drawn with `seed`)."""
    if body.temperature is not None and body.temperatures is not None:
        raise InvalidInput("temperatures", "give temperature or temperatures, not both")
    if isinstance(body.temperatures, str) and body.temperatures != "auto":
        raise InvalidInput("temperatures", f'must be a list of numbers or "auto", got {body.temperatures[:40]!r}')
    if body.temperatures == "auto":
        if X is None:
            return (), None
        rows = X if len(X) <= DEFAULT_ROUGHNESS_SAMPLE else X[np.sort(
            np.random.default_rng(seed).choice(len(X), DEFAULT_ROUGHNESS_SAMPLE, replace=False))]
        auto = auto_temperatures(rows)
        return auto.temperatures, auto
    if body.temperatures is not None:
        return check_temperatures(body.temperatures, "temperatures"), None
    if body.temperature is not None:
        return check_temperatures(body.temperature, "temperature"), None
    raise InvalidInput("temperature", "give a temperature (or temperatures, a sweep, or \"auto\")")


def _auto_out(auto: AutoSweep | None) -> AutoOut | None:
    if auto is None:
        return None
    return AutoOut(temperatures=list(auto.temperatures), high=_target_out(auto.high), low=_target_out(auto.low),
                   rows=auto.n)


def _codes(values: list[Any]) -> tuple[np.ndarray, int]:
    """Label codes (-1 for no label) of payload values compared as JSON, and how many distinct."""
    seen: dict[str, int] = {}
    codes = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if v is not None:
            codes[i] = seen.setdefault(json.dumps(v, sort_keys=True), len(seen))
    return codes, len(seen)


def _labels(request: Request, name: str, field: str, ids: list[Any], k: int, extra: list[Any]
            ) -> tuple[np.ndarray, LabelsInfoOut]:
    """Label codes of the sample's points `ids`, then of the `extra` ids (a stored query outside the
    sample), from one code book; and what was read from the sample."""
    if not field or len(field) > 256:
        raise InvalidInput("labels", f"must name a payload field (1-256 characters), got {field!r}")
    codes, distinct = _codes(_backend(request).payload_values(name, [*ids, *extra], field))
    labelled = int((codes[:len(ids)] >= 0).sum())
    if labelled == 0:
        raise InvalidInput("labels", f"no point of the sample has a payload field {field!r}; ingest payloads "
                           f'such as {{"{field}": ...}} (e.g. `logitsearch ingest --payloads`)')
    return codes, LabelsInfoOut(field=field, k=k, labelled=labelled, distinct=distinct)


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


def evaluation_data(request: Request, name: str, requested: int | None, seed: int, default: int,
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


def _where(request: Request, name: str) -> tuple[str, list[Any], str]:
    info = _backend(request).get_collection(name)
    return name, list(info.indexes), info.config.kind


def run_evaluation(name: str, body: EvaluateIn, request: Request) -> EvaluateOut:
    """The evaluation `body` asks for (the route, the sweep plot and the report share it)."""
    started = time.perf_counter()
    _temperatures(body)  # the temperatures' errors before any data is read
    if body.queries is not None and (body.id is not None or body.vector is not None):
        raise InvalidInput("queries", "give queries or one query (id / vector), not both")
    if body.queries is not None and body.mode != "one_to_many":
        raise InvalidInput("mode", "queries evaluates one_to_many, each query against the sample")
    if body.mode == "many_to_many" and (body.id is not None or body.vector is not None):
        raise InvalidInput("mode", "many_to_many compares all pairs within the sample and takes no query")
    if body.labels is not None and body.mode == "many_to_many":
        raise InvalidInput("labels", "the label check scores the neighbours of queries: use one_to_many")
    if body.labels is not None and body.vector is not None:
        raise InvalidInput("labels", "a query vector has no label: give a stored id or queries")
    many = body.mode == "many_to_many"
    ids, X, sample = evaluation_data(request, name, body.sample, body.seed,
                           min(DEFAULT_PAIRS_SAMPLE, MANY_TO_MANY_MAX_ROWS) if many else DEFAULT_SAMPLE, body.filter)
    ts, auto = _temperatures(body, X, body.seed)
    where = _where(request, name)
    codes = labels = None
    query_code: int | None = None
    if body.labels is not None:
        # a stored query outside a sampled set is labelled too: its code is the last one
        outside = body.id is not None and not any(v == body.id and type(v) is type(body.id) for v in ids)
        codes, labels = _labels(request, name, body.labels, ids, body.k, [body.id] if outside else [])
        query_code = int(codes[-1]) if outside else None
        codes = codes[:len(ids)]
    out = {"collection": name, "sample": sample, "auto": _auto_out(auto), "labels": labels}
    if body.queries is not None:
        qe = evaluate_queries(X, ts, n_queries=body.queries.sample, seed=body.queries.seed,
                              metrics=body.metrics, ranks=body.ranks, labels=codes, k=body.k)
        summary = [QueriesTemperatureOut(
            temperature=r.t, n_queries=r.n_queries, n=r.n, rho={m: _summary(s) for m, s in r.rho.items()},
            ranked=list(r.ranked), recommendation=_recommendation(r.recommendation, where, r.t),
            query_roughness=r.query_roughness, mean_roughness=r.mean_roughness, seconds=r.seconds,
            labels=_label_out(r.labels)) for r in qe.results]
        return EvaluateOut(**out, mode="one_to_many", ranks=qe.ranks, metrics=list(qe.metrics),
                           reference=REFERENCE, query={"ids": [ids[i] for i in qe.query_rows]}, summary=summary,
                           sweep=_sweep_out(sweep_verdict(qe.results), where) if len(ts) > 1 else None,
                           seconds=time.perf_counter() - started)
    if many:
        ev = evaluate(X, ts, metrics=body.metrics, mode="many_to_many", ranks=body.ranks)
        query: dict[str, Any] = {}
        reference = f"{REFERENCE}. {PAIR_ORDER}"
    else:
        xq, exclude, query = _query(request, name, body.id, body.vector, ids)
        ev = evaluate(X, ts, query=xq, exclude=exclude, metrics=body.metrics, ranks=body.ranks, labels=codes,
                      query_label=query_code if codes is not None and exclude is None else None, k=body.k)
        reference = REFERENCE
    results = [TemperatureOut(
        temperature=r.t, n=r.n, rho={m: _rho(v) for m, v in r.rho.items()}, ranked=list(r.ranked),
        recommendation=_recommendation(r.recommendation, where, r.t), query_roughness=r.query_roughness,
        mean_roughness=r.mean_roughness, seconds=r.seconds, labels=_label_out(r.labels)) for r in ev.results]
    return EvaluateOut(**out, mode=ev.mode, ranks=ev.ranks, metrics=list(ev.metrics),
                       reference=reference, query=query, results=results,
                       sweep=_sweep_out(sweep_verdict(ev.results), where) if len(ts) > 1 else None,
                       seconds=time.perf_counter() - started)


@router.post("/evaluate", response_model=EvaluateOut, summary="Which metric keeps CED's order on this data")
def evaluate_collection(name: str, body: EvaluateIn, request: Request) -> EvaluateOut:
    """Spearman's rho between CED(q : p) over softmax(x/t) and each metric (the paper's method,
    sections 3 and 9), per temperature, with a recommendation among the searchable metrics; with
    `labels`, each searchable metric's label agreement@k and mean average precision."""
    return run_evaluation(name, body, request)


def float_list(raw: str | None, field: str) -> list[float] | None:
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
    seed: Annotated[int, Query(ge=0)] = 0,
) -> RoughnessOut:
    """The temperature at which the collection's mean measure of roughness (eq. 17) reaches
    `target`, and the mean MR at each of `temperatures`: guidance for picking t."""
    started = time.perf_counter()
    ts = float_list(temperatures, "temperatures")
    if ts is not None:
        ts = list(check_temperatures(ts, "temperatures"))
    if target is None and ts is None:
        target = 1e-6
    _, X, sample_out = evaluation_data(request, name, sample, seed, DEFAULT_ROUGHNESS_SAMPLE)
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
    """CED on x, the metric on y, for one query at one t, with the isotonic regression line (under
    the points) and rho (over all compared points) in the title; at most `max_points` points drawn.
    With `temperatures` (a list or "auto"): a grid, one panel per temperature, rho in each title."""
    _temperatures(body)
    ids, X, _ = evaluation_data(request, name, body.sample, body.seed, DEFAULT_SAMPLE, body.filter)
    ts, _auto = _temperatures(body, X, body.seed)
    xq, exclude, _ = _query(request, name, body.id, body.vector, ids)
    panels = [shepard_data(X, t, body.metric, query=xq, exclude=exclude, max_points=body.max_points,
                           seed=body.seed, ranks=body.ranks) for t in ts]
    rhos = ",".join("nan" if math.isnan(d.rho.value) else f"{d.rho.value:.6f}" for d in panels)
    points = f"{panels[0].ced.size}/{panels[0].n}"
    if body.temperatures is None:
        png = shepard_png(panels[0], width=body.width, height=body.height)
    else:
        from service.plots import shepard_grid_png

        given = body.model_fields_set
        png = shepard_grid_png(panels, width=body.width if "width" in given else 1200,
                               height=body.height if "height" in given else None)
    return Response(content=png, media_type="image/png",
                    headers={"X-Spearman-Rho": rhos, "X-Points": points, "X-Panels": str(len(panels)),
                             "X-Temperatures": ",".join(f"{t:g}" for t in ts)})


@router.post("/evaluate/sweep.png", response_class=Response, summary="rho against temperature (PNG)",
             responses={200: {"content": {"image/png": {}}, "description": "the sweep"}})
def sweep_of_collection(name: str, body: SweepPlotIn, request: Request) -> Response:
    """The evaluation of the body (as POST .../evaluate takes it) as a picture: rho against
    temperature for each metric, the 0.99 line marked; with `labels`, a second panel with each
    searchable metric's label agreement@k and mean average precision."""
    from service.plots import sweep_png

    result = run_evaluation(name, EvaluateIn(**body.model_dump(exclude={"width", "height"})), request)
    png, panels = sweep_png(result.model_dump(), width=body.width, height=body.height)
    return Response(content=png, media_type="image/png", headers={"X-Panels": str(panels)})


#: points of the roughness curve (GET .../roughness.png), log-spaced
CURVE_POINTS = 32


def roughness_curve(X: np.ndarray) -> tuple[list[tuple[float, float]], RoughnessTemperature, RoughnessTemperature]:
    """(t, mean MR) at `CURVE_POINTS` temperatures from a fifth of where the mean MR is 1e-1 to five
    times where it is 1e-6 (within core's range), and those two temperatures."""
    high, low = (temperature_for_roughness(X, target) for target in AUTO_ROUGHNESS)
    lo, hi = max(T_MIN, high.t / 5), min(T_MAX, max(low.t * 5, high.t * 10))
    guide = roughness_guide(X, temperatures=[float(t) for t in np.geomspace(lo, hi, CURVE_POINTS)])
    return list(guide.at), high, low


@router.get("/roughness.png", response_class=Response, summary="Mean roughness against temperature (PNG)",
            responses={200: {"content": {"image/png": {}}, "description": "the curve"}})
def roughness_png_of_collection(
    name: str, request: Request,
    sample: Annotated[int | None, Query(description="rows used (default: up to "
                                        f"{DEFAULT_ROUGHNESS_SAMPLE:,}, uniformly sampled)")] = None,
    seed: Annotated[int, Query(ge=0)] = 0,
    width: Annotated[int, Query(ge=MIN_PIXELS, le=MAX_PIXELS)] = 800,
    height: Annotated[int, Query(ge=MIN_PIXELS, le=MAX_PIXELS)] = 500,
) -> Response:
    """The collection's mean measure of roughness (eq. 17) against temperature, log-log, as the
    paper's Fig. 6, with the 1e-6 target of section 10.2 and the span of the auto sweep marked."""
    from service.plots import roughness_png

    _, X, _ = evaluation_data(request, name, sample, seed, DEFAULT_ROUGHNESS_SAMPLE)
    curve, high, low = roughness_curve(X)
    png = roughness_png(curve, target=AUTO_ROUGHNESS[1], reached=low.t if low.reachable else None,
                        sweep=(high.t, low.t), collection=name, width=width, height=height)
    return Response(content=png, media_type="image/png",
                    headers={"X-Temperature-At-Target": f"{low.t:.6g}", "X-Points": str(len(curve))})
