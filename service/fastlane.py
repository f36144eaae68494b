"""The search fast lane: POST /v1/collections/{name}/search and …/search/batch without FastAPI's
per-request machinery.

A single search spends most of its server time in the HTTP stack, not in FAISS: FastAPI's exception
and exit-stack middleware, matching the path against every route, dependency solving, and anyio's
thread-pool hop cost ~0.3 ms of GIL time per request, which caps single-vector QPS on a small
machine. This pure-ASGI layer sits inside auth, limits and observability (so those apply as to any
request) and answers a search itself when the request is an ordinary one: POST, a JSON content type,
a declared Content-Length, and a body that validates as the route's model. It calls the very
functions the FastAPI routes call (service.routes.search.answer_search / answer_batch), maps domain
errors with the same function as the app's handlers, and tags the scope with the FastAPI route so
metrics and logs name the same template.

Where the call runs (issue 16): on the event loop itself when it is small and waits for nothing
(indexes.inline: INLINE_WORK), else on a worker thread; a thread hand-off costs 0.3-0.9 ms on a small
VM, about one HNSW query. Single searches that arrive together are answered by one call (_Together).

Everything else (another content type, a chunked body, invalid JSON or a validation error) is passed
on unchanged to FastAPI with the body replayed, so every error answer stays the documented one. The
routes in service.routes.search remain the definition of the API (OpenAPI, models, behaviour); the
tests compare both paths answer for answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import LogitsearchError
from indexes.inline import WouldBlock, inline
from service.limits import problem_response
from service.observability import count_lane
from service.problems import domain_problem, internal_problem, is_json
from service.routes.search import FastJSON, answer_batch, answer_search, answer_together
from service.schemas import SearchBatchIn, SearchIn

logger = logging.getLogger(__name__)
_PREFIX = "/v1/collections/"
#: work (multiply-adds) a search may do on the event loop instead of a worker thread: a few ms here,
#: against the 0.3-0.5 ms of each thread hand-off (indexes.inline). One HNSW query at M = 16,
#: ef_search = 100, d = 384 is ~1.2e6, a flat euc query over 40k x 384 rows ~1.5e7.
INLINE_WORK = 2.0**24
#: path tail -> (body model, answer function, route template)
_LANES: dict[str, tuple[type[BaseModel], Any, str]] = {
    "search": (SearchIn, answer_search, "/v1/collections/{name}/search"),
    "search/batch": (SearchBatchIn, answer_batch, "/v1/collections/{name}/search/batch"),
}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class SearchFastLane:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app, self.fastapi_app = app, fastapi_app
        self._routes: dict[str, APIRoute] = {}
        self._together = _Together(fastapi_app)

    async def _alone(self, answer: Any, name: str, parsed: BaseModel) -> Any:
        """`answer` on the event loop when it is small and waits for nothing, else on a worker."""
        try:
            with inline(INLINE_WORK):
                content = answer(self.fastapi_app, name, parsed)
        except WouldBlock:
            content = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(answer, self.fastapi_app, name, parsed))
            count_lane(self.fastapi_app, "worker", 1)
        else:
            count_lane(self.fastapi_app, "inline", 1)
        return content

    def _route(self, template: str) -> APIRoute | None:
        route = self._routes.get(template)
        if route is None:
            found = [r for r in self.fastapi_app.router.routes
                     if isinstance(r, APIRoute) and r.path == template and "POST" in r.methods]
            if not found:
                return None
            route = self._routes[template] = found[0]
        return route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self._lane(scope)
        if lane is None:
            await self.app(scope, receive, send)
            return
        name, (model, answer, template) = lane
        body, complete = await self._read(receive)
        if not complete:  # a disconnect, or more than declared: FastAPI's own handling
            await self.app(scope, _replay(body, complete, receive), send)
            return
        try:
            parsed = model.model_validate_json(body)
        except ValueError:  # invalid JSON or input: FastAPI answers it (the documented 422)
            await self.app(scope, _replay(body, complete, receive), send)
            return
        route = self._route(template)
        if route is not None:
            scope["route"] = route  # for the access log and metrics, as FastAPI's router would
        response: Response
        try:
            if isinstance(parsed, SearchIn):
                content = await self._together.answer(name, parsed)
            else:
                content = await self._alone(answer, name, parsed)
        except LogitsearchError as exc:
            response = domain_problem(Request(scope), exc)
        except StarletteHTTPException as exc:
            response = problem_response(exc.status_code, str(exc.detail), headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 -- a bug: logged once, a generic 500, as ProblemRoute does
            response = internal_problem(Request(scope), exc)
        else:
            response = FastJSON(content)
        await response(scope, receive, send)

    @staticmethod
    def _lane(scope: Scope) -> tuple[str, tuple[type[BaseModel], Any, str]] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            return None
        name, _, tail = path[len(_PREFIX):].partition("/")
        lane = _LANES.get(tail)
        if lane is None or not name or scope.get("root_path"):
            return None
        if not is_json(_header(scope, b"content-type")) or _header(scope, b"transfer-encoding") is not None:
            return None
        declared = _header(scope, b"content-length")
        if declared is None or not declared.isdigit():
            return None
        return name, lane

    @staticmethod
    async def _read(receive: Receive) -> tuple[bytes, bool]:
        """The whole body and whether it arrived complete (False: a disconnect came first)."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks), True


class _Together:
    """Single searches that arrive together are answered together.

    Requests whose bytes came in the same turn of the event loop (several connections at once) are
    parsed in the next turn. Each one queues its search here and the first one schedules a flush, so
    a flush sees them all. Per collection (and allow_partial), the flush answers them with one
    backend call (service.routes.search.answer_together): one plan, one FAISS call whose queries
    OpenMP spreads over the cores, and one payload read. The call runs on the event loop when it is
    small and waits for nothing (indexes.inline), else on a worker thread: one hop for all of them.
    If the shared call fails, each search is answered alone, so each gets its own answer or error."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._queued: dict[tuple[str, bool], list[tuple[SearchIn, asyncio.Future[Any]]]] = {}

    def answer(self, name: str, body: SearchIn) -> asyncio.Future[Any]:
        """The answer to one search."""
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)
        done: asyncio.Future[Any] = loop.create_future()
        self._queued.setdefault((name, body.allow_partial), []).append((body, done))
        return done

    def _flush(self) -> None:
        queued, self._queued = self._queued, {}
        alone = _LANES["search"][1]  # answer_search (the lane's table, as for every request)
        for (name, _), items in queued.items():
            bodies, futures = [b for b, _ in items], [f for _, f in items]
            try:
                with inline(INLINE_WORK):
                    outcomes = _answer_each(self._app, name, bodies, alone)
            except WouldBlock:
                work = asyncio.get_running_loop().run_in_executor(None, _answer_each, self._app, name, bodies, alone)
                work.add_done_callback(functools.partial(self._delivered, futures, len(bodies)))
            else:
                count_lane(self._app, "inline", len(bodies))
                _deliver(futures, outcomes)

    def _delivered(self, futures: list[asyncio.Future[Any]], n: int, work: asyncio.Future[list[Any]]) -> None:
        count_lane(self._app, "worker", n)
        if work.cancelled():  # the loop is shutting down: so are the requests
            for future in futures:
                future.cancel()
            return
        error = work.exception()
        _deliver(futures, [error] * len(futures) if error is not None else work.result())


def _answer_each(app: FastAPI, name: str, bodies: list[SearchIn], alone: Any) -> list[Any]:
    """Each body's answer (JSON-ready data) or the exception that answers it."""
    if len(bodies) > 1:
        try:
            return answer_together(app, name, bodies)
        except WouldBlock:
            raise
        except Exception:  # one bad search fails the shared call: each is answered alone, below
            logger.debug("searches answered together failed; answering each alone", exc_info=True)
    outcomes: list[Any] = []
    for body in bodies:
        try:
            outcomes.append(alone(app, name, body))
        except WouldBlock:
            raise
        except Exception as exc:  # noqa: BLE001 -- delivered to that request, which maps it as before
            outcomes.append(exc)
    return outcomes


def _deliver(futures: list[asyncio.Future[Any]], outcomes: list[Any]) -> None:
    for future, outcome in zip(futures, outcomes):
        if future.done():  # its request was cancelled (the client went away)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A receive that hands out `body` once (as one message), then defers to `receive`."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            if complete:
                return {"type": "http.request", "body": body, "more_body": False}
            if body:
                return {"type": "http.request", "body": body, "more_body": True}
        return await receive()

    return replayed
