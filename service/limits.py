"""Request body limits: a bounded, timed body for every request (issue 7).

`install_limits(app, settings)` adds a pure ASGI middleware (it never buffers the body) that

- answers 413 at once, before the app runs or a byte of the body is read, when `Content-Length`
  is above `settings.max_body_bytes`;
- counts the bytes of a body sent without a length (chunked) as the app reads them and answers 413
  the moment the count passes the limit; the app's read fails and whatever it answers instead is
  dropped, so a streaming route (bulk ingest) stops mid-body and writes nothing;
- answers 408 when the client sends no body bytes for `idle_timeout` seconds while the app waits
  for them, so a stalled upload cannot hold a request (and the thread a streaming route may hold)
  forever.

What uvicorn itself gives (h11 or httptools): it stops reading the socket once ~64 KiB of
body are buffered and unread (flow control), so a large body never piles up in memory unless the app
reads it; `timeout_keep_alive` (default 5 s) closes a connection idle *between* requests, including
one whose unread body we abandoned with an early 413; `limit_concurrency` (off by default) caps open
connections and tasks with 503; `h11_max_incomplete_event_size` (16 KiB) bounds the request head.
It has no timeout for a client that is slow to send its headers or body: the idle timeout here
covers the body; a slow request head costs one idle socket and no worker.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import Settings

#: seconds without a body byte, while the app waits for one, before the request is answered 408
BODY_IDLE_TIMEOUT = 30.0
PROBLEM_JSON = "application/problem+json"


def problem_response(status: int, detail: str, *, headers: Mapping[str, str] | None = None,
                     errors: list[dict[str, str]] | None = None) -> JSONResponse:
    """An RFC 9457 problem for middleware that answers before the app's exception handlers run."""
    body: dict[str, Any] = {"type": "about:blank", "title": http.HTTPStatus(status).phrase,
                            "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _too_large(limit: int) -> JSONResponse:
    reason = f"request body exceeds the limit of {limit} bytes (LOGITSEARCH_MAX_BODY_BYTES)"
    return problem_response(413, reason, errors=[{"field": "body", "reason": reason}])


class BodyRejected(Exception):
    """Raised into the app's read of the body after the middleware has answered for it."""


def _declared_length(scope: Scope) -> int | None:
    raw = Headers(scope=scope).get("content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None  # the HTTP server rejects a malformed length before the app sees it


class _BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, idle_timeout: float) -> None:
        self.app, self.max_body_bytes, self.idle_timeout = app, max_body_bytes, idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _too_large(self.max_body_bytes)(scope, receive, send)
            return
        await _LimitedRequest(self, scope, receive, send).run()


class _LimitedRequest:
    """One request: counts body bytes as the app reads them and owns the early answer."""

    def __init__(self, limits: _BodyLimitMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.limits, self.scope, self._receive, self._send = limits, scope, receive, send
        self.received = 0
        self.body_done = False
        self.started = False    # the app has begun its response
        self.answered = False   # we answered for the app (413/408); its own response is dropped

    async def run(self) -> None:
        try:
            await self.limits.app(self.scope, self.receive, self.send)
        except Exception:
            # The app failed because its body read was cut short (possibly wrapped, e.g. in an
            # ExceptionGroup): the client already has our answer.
            if not self.answered:
                raise

    async def receive(self) -> Message:
        if self.body_done:  # e.g. a streaming response listening for the disconnect: no timeout
            return await self._receive()
        try:
            async with asyncio.timeout(self.limits.idle_timeout):  # ~10x cheaper than anyio.fail_after
                message = await self._receive()
        except TimeoutError:
            await self._answer(problem_response(
                408, f"no request body bytes for {self.limits.idle_timeout:g} s; send the body without stalling"))
            raise BodyRejected("body read timed out") from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body_bytes:
                await self._answer(_too_large(self.limits.max_body_bytes))
                raise BodyRejected("body too large")
            self.body_done = not message.get("more_body", False)
        else:
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def _answer(self, response: JSONResponse) -> None:
        if self.started:  # too late for a status line: the app's read fails and the connection drops
            return
        await response(self.scope, self._receive, self._send)
        self.answered = True


def install_limits(app: FastAPI, settings: Settings, *, idle_timeout: float = BODY_IDLE_TIMEOUT) -> None:
    """Bound every request body by `settings.max_body_bytes` and stalls by `idle_timeout` seconds."""
    app.add_middleware(_BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, idle_timeout=idle_timeout)
