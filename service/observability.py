"""Observability: Prometheus metrics at /metrics and one structured JSON log line per request.

`install_observability(app, settings)` is called once by `create_app`. Each app gets its own
`CollectorRegistry` (tests build many apps in one process). Routes report through two hooks:

- `observe_search(request, metric, kind, seconds, how)` after a search (`how` is the answer's
  certified / scanned / approximate), and
- `count_ingested(request, n)` after `n` points were written.

Index sizes are read at scrape time from `app.state.backend.sizes()`, which yields
`(collection, points, [(index id, vectors), ...])`, so writes need no hook for them. Logs never carry vectors, bodies, query strings or keys: the access line names the
route *template* (`/v1/collections/{name}/search`), never the raw path.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import Settings

METRICS_PATH = "/metrics"
#: route label for requests that matched no route (raw paths would make the label set unbounded)
UNMATCHED = "<unmatched>"
# Searches run from ~0.1 ms (flat, small) to seconds (exact TRI scan of 1M rows).
_SEARCH_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

access_log = logging.getLogger("logitsearch.access")


@dataclass(frozen=True)
class Metrics:
    """The series one app exports; `registry` is what /metrics renders."""

    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    search_seconds: Histogram
    search_answers: Counter
    ingested_rows: Counter
    search_lanes: Counter
    #: labelled children by (series, labels): prometheus's labels() costs ~10 us a call, per search
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict, compare=False, repr=False)

    def child(self, series: Counter | Histogram, *labels: str) -> Any:
        """series.labels(*labels), cached (a race computes it twice; prometheus returns the same child)."""
        key = (id(series), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = series.labels(*labels)
        return found

    @classmethod
    def create(cls, app: FastAPI) -> Metrics:
        registry = CollectorRegistry(auto_describe=True)
        metrics = cls(
            registry=registry,
            requests=Counter("logitsearch_http_requests", "HTTP requests answered, by route template",
                             ["method", "route", "status"], registry=registry),
            request_seconds=Histogram("logitsearch_http_request_duration_seconds",
                                      "HTTP request latency, by route template", ["method", "route"],
                                      registry=registry),
            search_seconds=Histogram("logitsearch_search_duration_seconds",
                                     "k-NN search latency inside the service, by metric and index kind: one "
                                     "observation per index call (a batch's queries sharing an index are one)",
                                     ["metric", "kind"], buckets=_SEARCH_BUCKETS, registry=registry),
            search_answers=Counter("logitsearch_search_answers",
                                   "search answers by metric and how they were obtained",
                                   ["metric", "how"], registry=registry),
            ingested_rows=Counter("logitsearch_ingested_rows", "points written by upsert and bulk ingest",
                                  registry=registry),
            search_lanes=Counter("logitsearch_search_lane_requests",
                                 "search requests of the fast lane by where they ran (inline: on the event "
                                 "loop; worker: a worker thread) and whether they shared one index call with "
                                 "other requests that arrived together", ["lane", "together"], registry=registry),
        )
        registry.register(_IndexSizes(app))
        return metrics


class _IndexSizes(Collector):
    """Gauges read from `app.state.backend` at scrape time: points per collection, vectors per index.

    Any backend failure yields no sample rather than a failed scrape: /metrics must stay up when a
    collection is damaged, which is exactly when an operator looks at it.
    """

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        points = GaugeMetricFamily("logitsearch_collection_points", "points stored per collection",
                                   labels=["collection"])
        vectors = GaugeMetricFamily("logitsearch_index_vectors", "vectors held per index",
                                    labels=["collection", "index"])
        for collection, count, indexes in _collection_sizes(getattr(self._app.state, "backend", None)):
            points.add_metric([collection], count)
            for index, n in indexes:
                vectors.add_metric([collection, index], n)
        yield points
        yield vectors


def _collection_sizes(backend: Any) -> Iterable[tuple[str, int, list[tuple[str, int]]]]:
    if backend is None:
        return []
    try:
        return list(backend.sizes())
    except Exception:  # a scrape never fails because of one collection; the error is logged
        logging.getLogger("logitsearch.observability").warning("index sizes unavailable", exc_info=True)
        return []


def _metrics(where: Request | FastAPI) -> Metrics | None:
    app = where.app if isinstance(where, Request) else where
    metrics = getattr(app.state, "metrics", None)
    return metrics if isinstance(metrics, Metrics) else None


def observe_search(where: Request | FastAPI, metric: str, kind: str, seconds: float,
                   how: str | Mapping[str, int] | None = None) -> None:
    """Record one index call: `metric` (euc, cos, tri, ced…), index `kind` (flat, hnsw, ivf), its
    latency in seconds and, when known, how the answers were obtained (certified, scanned,
    approximate): one answer, or {how: number of answers} for a batch's queries in one call."""
    metrics = _metrics(where)
    if metrics is None:
        return
    metrics.child(metrics.search_seconds, metric, kind).observe(seconds)
    counts = {how: 1} if isinstance(how, str) else (how or {})
    for h, n in counts.items():
        metrics.child(metrics.search_answers, metric, h).inc(n)


def count_lane(where: Request | FastAPI, lane: str, requests: int) -> None:
    """Count `requests` search requests answered by one call in `lane` ("inline" or "worker")."""
    metrics = _metrics(where)
    if metrics is not None:
        metrics.child(metrics.search_lanes, lane, "yes" if requests > 1 else "no").inc(requests)


def count_ingested(where: Request | FastAPI, n: int) -> None:
    """Count `n` points written (upsert or bulk ingest), once the write is committed."""
    metrics = _metrics(where)
    if metrics is not None and n > 0:
        metrics.ingested_rows.inc(n)


class _RequestObserver:
    """Pure ASGI middleware (streams request bodies untouched, unlike BaseHTTPMiddleware): times each
    HTTP request, counts it under its route template and writes one JSON access line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless the app sends a response start: an exception escaped
        start = time.perf_counter()

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            seconds = time.perf_counter() - start
            route = _route_template(scope)
            method = scope["method"]
            self.metrics.child(self.metrics.requests, method, route, str(status)).inc()
            self.metrics.child(self.metrics.request_seconds, method, route).observe(seconds)
            access_log.info("request", extra={"fields": {
                "method": method, "route": route, "status": status, "duration_ms": round(seconds * 1e3, 3)}})


def _route_template(scope: Scope) -> str:
    """The path template of the route that handled `scope`, or UNMATCHED.

    FastAPI's router leaves the matched APIRoute in the scope it shares with the middleware; plain
    Starlette routes (such as /metrics) do not, so those are matched again here.
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's `fields` and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _StderrJsonHandler(logging.Handler):
    """JSON lines to whatever `sys.stderr` is at emit time (so redirection and pytest capture work)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 -- logging's own contract: a failed emit must not raise
            self.handleError(record)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for every logger that reaches the root (ours and uvicorn's when it is run
    with `log_config=None`); `level` applies to the `logitsearch` and `uvicorn` loggers. Idempotent."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StderrJsonHandler)]
    root.addHandler(_StderrJsonHandler())
    for name in ("logitsearch", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Add /metrics, the per-request metrics and access log, and JSON logging at `settings.log_level`."""
    configure_logging(settings.log_level)
    # `*_created` timestamps double the exposition for no use in Prometheus (process-wide switch).
    disable_created_metrics()
    metrics = Metrics.create(app)
    app.state.metrics = metrics
    app.add_middleware(_RequestObserver, metrics=metrics)

    def render_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_route(METRICS_PATH, render_metrics, methods=["GET"], include_in_schema=False)
