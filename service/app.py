"""create_app(settings): the FastAPI application, its routers, problem handlers and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import StorageError
from service.auth import ROLES, install_auth
from service.coordinator import Coordinator
from service.fastlane import SearchFastLane
from service.lifecycle import CutOffAtShutdown, hold_data_dir, refuse, release_data_dir, start_process
from service.limits import install_limits, problem_response
from service.observability import install_observability
from service.problems import document_problems, install_problem_handlers
from service.routes import collections, evaluate, health, points, report, search, snapshots
from service.settings import Settings, load_settings
from service.snapshots import Snapshots
from service.warmup import start as start_warmup

#: where the documentation pages' scripts and styles are served (open, like /docs)
DOCS_ASSETS = "/docs-assets"
#: bodies of these types are streamed by their route; every other body is read whole
STREAMED_TYPES = ("application/octet-stream", "application/x-npy", "multipart/form-data", "application/x-tar")


class _WholeBodyLimit:
    """Bodies that are read whole (JSON) get the tighter `max_json_bytes` bound: parsed, they take
    several times their size in Python objects. Streamed .npy uploads are bounded by max_body_bytes
    only (service.limits). A declared length over the limit is answered at once; a chunked body is
    cut at the limit while FastAPI reads it (HTTPException out of `receive` reaches our handler)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def _reason(self) -> str:
        return (f"a JSON body may have at most {self.limit} bytes (LOGITSEARCH_MAX_JSON_BYTES); send more points "
                "in several requests, or a .npy file to …/points/bulk")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("content-type", "").split(";")[0].strip().lower() in STREAMED_TYPES:
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            reason = self._reason()
            await problem_response(413, reason, errors=[{"field": "body", "reason": reason}])(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._reason())
            return message

        await self.app(scope, counted, send)


def create_app(settings: Settings | None = None, *, fast_lane: bool = True) -> FastAPI:
    """The app for `settings` (default: from the environment, as `uvicorn --factory` calls it).
    `fast_lane=False` leaves searches to FastAPI's routing alone (tests compare the two)."""
    if settings is None:  # as `uvicorn --factory` calls it: refuse a data dir another server holds, now
        settings = load_settings()
        try:
            hold_data_dir(Path(settings.data_dir))  # held until the process ends
        except StorageError as exc:
            refuse(exc)
    backend = Coordinator(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        held = hold_data_dir(Path(settings.data_dir))  # one server per data directory (issue 11)
        try:
            await anyio.to_thread.run_sync(start_process)
            app.state.warmup = start_warmup(settings.warmup_seconds)  # kernels compiled before /readyz 200
            # Opening SQLite is quick; the collections load in a background thread (/readyz says when).
            await anyio.to_thread.run_sync(backend.open)
            try:
                yield
            finally:
                await anyio.to_thread.run_sync(backend.close)
        finally:
            release_data_dir(held)

    # FastAPI's native OpenTelemetry is off: service.observability exports Prometheus metrics and JSON
    # logs, and the per-request check whether OTel is configured cost ~3% of a search's server time.
    # /docs and /redoc with Swagger UI's and ReDoc's files from the fastapi-offline package (mounted
    # at DOCS_ASSETS), not a CDN: the docs work on an offline machine (issue 15).
    app = FastAPIOffline(title="logitsearch", version="0.1.0", lifespan=lifespan, static_url=DOCS_ASSETS,
                  telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
                  description="Similarity search over logit embeddings: k-NN by TRI, CED, EUC and COS, "
                              "with evidence for which metric keeps the network's cross-entropy order.")
    app.state.settings = settings
    app.state.backend = backend
    app.state.snapshots = Snapshots(backend)
    install_problem_handlers(app)
    for module in (health, collections, points, search, evaluate, report, snapshots):
        # Flat on the app, not app.include_router: this FastAPI nests included routers in one
        # _IncludedRouter, and auth and observability look each route up by its own path template.
        app.router.routes.extend(module.router.routes)
    # add_middleware puts each one outside the previous: observability sees every answer, auth
    # answers before any body is read, then the body limits, then the search fast lane.
    document_problems(app, {key for key, role in ROLES.items() if role == "open"})
    if fast_lane:
        app.add_middleware(SearchFastLane, fastapi_app=app)
    app.add_middleware(_WholeBodyLimit, limit=settings.max_json_bytes)
    install_limits(app, settings)
    install_auth(app, settings)
    app.add_middleware(CutOffAtShutdown)  # inside observability: it logs the 503, not a 500
    install_observability(app, settings)
    return app
