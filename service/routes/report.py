"""GET /v1/collections/{name}/report (issue 14): the evaluation as one self-contained HTML page.

The page is `service.report.report_html` over what the evaluation routes compute: an evaluation of
random stored queries (by default 20) over the automatic temperature sweep, with the label check
when `labels` names a payload field; the sweep picture; the roughness curve; and the Shepard grid
of the recommended metric for the first query.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from core.evaluation import AUTO_ROUGHNESS, MAX_QUERIES, shepard_data
from core.labels import MAX_LABEL_K
from service.problems import ProblemRoute
from service.routes.evaluate import (
    evaluation_data,
    float_list,
    roughness_curve,
    run_evaluation,
)
from service.schemas import DEFAULT_ROUGHNESS_SAMPLE, DEFAULT_SAMPLE, EvaluateIn, QueriesIn

router = APIRouter(prefix="/v1/collections/{name}", tags=["evaluate"], route_class=ProblemRoute)

#: queries of a report by default (each is one pass over the sample per temperature)
DEFAULT_REPORT_QUERIES = 20
#: points drawn in each Shepard panel of the report
REPORT_SHEPARD_POINTS = 3_000


@router.get("/report", response_class=HTMLResponse, summary="The evaluation as one HTML page",
            responses={200: {"content": {"text/html": {}}, "description": "a self-contained page"}})
def report_of_collection(
    name: str, request: Request,
    labels: Annotated[str | None, Query(description="payload field with each point's label: adds the "
                                        "semantic check")] = None,
    queries: Annotated[int | None, Query(ge=1, le=MAX_QUERIES, description="random stored queries (default "
                                         f"{DEFAULT_REPORT_QUERIES}, or all points when fewer)")] = None,
    temperatures: Annotated[str | None, Query(description='"auto" (default) or comma-separated, e.g. 1,10,100')] = None,
    k: Annotated[int, Query(ge=1, le=MAX_LABEL_K, description="neighbours of the label check")] = 10,
    sample: Annotated[int | None, Query(description="points compared (default: the whole collection up to "
                                        f"{DEFAULT_SAMPLE:,})")] = None,
    seed: Annotated[int, Query(ge=0, description="seed of the queries and the sample")] = 0,
) -> HTMLResponse:
    """One page, figures inline, no script or external asset: the recommendation in words, rho
    against temperature, the tables (rho, and label agreement when `labels` is given), the
    roughness curve and the Shepard grid of the recommended metric."""
    from service.plots import roughness_png, shepard_grid_png, sweep_png
    from service.report import report_html

    started = time.perf_counter()
    ts: Any = "auto" if temperatures is None or temperatures.strip() == "auto" \
        else float_list(temperatures, "temperatures")
    count = int(request.app.state.backend.count(name))
    n_queries = queries or max(1, min(DEFAULT_REPORT_QUERIES, (sample or count) - 1))
    body = EvaluateIn(queries=QueriesIn(sample=n_queries, seed=seed), temperatures=ts, labels=labels, k=k,
                      sample=sample, seed=seed)
    evaluation = run_evaluation(name, body, request).model_dump()
    sweep, _ = sweep_png(evaluation)
    _, R, _ = evaluation_data(request, name, None, seed, DEFAULT_ROUGHNESS_SAMPLE)
    curve, _high, low = roughness_curve(R)
    per_t = sorted(evaluation["summary"], key=lambda r: r["temperature"])
    rough = roughness_png(curve, target=AUTO_ROUGHNESS[1], reached=low.t if low.reachable else None,
                          sweep=[r["temperature"] for r in per_t], collection=name)
    metric = (evaluation["sweep"] or {}).get("metric") or per_t[-1]["recommendation"]["best"] or "tri"
    query = evaluation["query"]["ids"][0]
    ids, X, _ = evaluation_data(request, name, sample, seed, DEFAULT_SAMPLE)
    row = next(i for i, v in enumerate(ids) if v == query and type(v) is type(query))
    panels = [shepard_data(X, r["temperature"], metric, exclude=row, max_points=REPORT_SHEPARD_POINTS, seed=seed)
              for r in per_t]
    grid = shepard_grid_png(panels)
    generated = (f"Made {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} in "
                 f"{time.perf_counter() - started:.1f} s.")
    page = report_html(evaluation, sweep_png=sweep, roughness_png=rough, shepard_png=grid, shepard_metric=metric,
                       shepard_query=query, generated=generated)
    return HTMLResponse(page)
