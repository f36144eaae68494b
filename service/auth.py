"""API keys and roles: who may read and who may write (issue 7).

Keys come from the settings (`LOGITSEARCH_API_KEY` read-write, `LOGITSEARCH_READ_API_KEY`
read-only) and travel as `Authorization: Bearer <key>` or, as Qdrant accepts, `api-key: <key>`.
Every route has one entry in `ROLES`, keyed by method and route *template*; a route missing from
the table needs the read-write key (fail closed), and a test checks the table against the app's
routes so a new route cannot slip through unclassified.

With no key configured nothing is checked, but the service is then meant for loopback only:
`check_binding` refuses a non-loopback host at start unless `allow_unauthenticated` is set, and the
middleware refuses requests that arrive on a non-loopback interface (an app started by plain
`uvicorn --host 0.0.0.0` bypasses the CLI check, not this one).

Keys are compared with `hmac.compare_digest` against both configured keys every time, and never
logged: no log line, problem body or exception message here contains a presented key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import InvalidInput
from service.limits import problem_response
from service.settings import Settings

Role = Literal["open", "read", "write"]

_C = "/v1/collections/{name}"
#: (method, route template) -> the role a request needs; HEAD is looked up as GET
ROLES: dict[tuple[str, str], Role] = {
    ("GET", "/healthz"): "open",
    ("GET", "/readyz"): "open",
    ("GET", "/metrics"): "open",
    ("GET", "/openapi.json"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/docs/oauth2-redirect"): "open",
    ("GET", "/redoc"): "open",
    ("GET", "/docs-assets"): "open",  # the docs' scripts and styles (a mount: every path below it)
    ("GET", "/v1/collections"): "read",
    ("GET", _C): "read",
    ("GET", f"{_C}/indexes"): "read",
    ("GET", f"{_C}/points/{{id}}"): "read",
    ("GET", f"{_C}/roughness"): "read",
    ("POST", f"{_C}/points/get"): "read",
    ("POST", f"{_C}/points/scroll"): "read",
    ("POST", f"{_C}/search"): "read",
    ("POST", f"{_C}/search/batch"): "read",
    ("POST", f"{_C}/evaluate"): "read",
    ("POST", f"{_C}/evaluate/shepard.png"): "read",
    ("POST", f"{_C}/evaluate/sweep.png"): "read",
    ("GET", f"{_C}/roughness.png"): "read",
    ("GET", f"{_C}/report"): "read",
    ("PUT", _C): "write",
    ("DELETE", _C): "write",
    ("POST", f"{_C}/indexes"): "write",
    ("DELETE", f"{_C}/indexes/{{index_id}}"): "write",
    ("PUT", f"{_C}/payload_index"): "write",
    ("DELETE", f"{_C}/payload_index/{{key}}"): "write",
    ("PUT", f"{_C}/points"): "write",
    ("POST", f"{_C}/points/bulk"): "write",
    ("POST", f"{_C}/points/delete"): "write",
    ("GET", f"{_C}/snapshots"): "read",
    ("GET", f"{_C}/snapshots/{{snapshot}}"): "read",  # a read key can scroll every vector anyway
    ("POST", f"{_C}/snapshots"): "write",
    ("PUT", f"{_C}/snapshots/upload"): "write",
    ("DELETE", f"{_C}/snapshots/{{snapshot}}"): "write",
}

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_HOW_TO_SEND = "send 'Authorization: Bearer <key>' or 'api-key: <key>'"
log = logging.getLogger("logitsearch.auth")


@functools.lru_cache(maxsize=256)  # asked per request for the server's own address: a handful of values
def _ip_loopback(text: str) -> bool | None:
    """Whether the IP address `text` is loopback (IPv4-mapped IPv6 too); None if it is not an IP."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual names of localhost; False for 0.0.0.0, :: and others."""
    return host.lower() in _LOOPBACK_NAMES or bool(_ip_loopback(host))


def check_binding(settings: Settings) -> str:
    """The line to print at start about who may connect; InvalidInput when the binding is unsafe.

    No key and a non-loopback host would let anyone on the network change data, so that needs the
    explicit `allow_unauthenticated` override (LOGITSEARCH_ALLOW_UNAUTHENTICATED=1).
    """
    if settings.api_key is not None and settings.read_api_key is not None \
            and hmac.compare_digest(settings.api_key.encode(), settings.read_api_key.encode()):
        raise InvalidInput("read_api_key", "must differ from api_key (one key cannot be both roles)")
    if settings.api_key or settings.read_api_key:
        roles = " and ".join(r for r, k in (("read-write", settings.api_key),
                                           ("read-only", settings.read_api_key)) if k)
        return f"API keys configured ({roles}); every request except health, metrics and docs needs one"
    if is_loopback(settings.host):
        return (f"no API key configured: serving {settings.host} only, without authentication "
                "(set LOGITSEARCH_API_KEY to serve other hosts)")
    if settings.allow_unauthenticated:
        return (f"WARNING: no API key configured and serving {settings.host}: anyone who can reach this "
                "port may read and change all data (LOGITSEARCH_ALLOW_UNAUTHENTICATED is set)")
    raise InvalidInput("host", f"refusing to serve {settings.host} without an API key: set LOGITSEARCH_API_KEY "
                               "(and optionally LOGITSEARCH_READ_API_KEY), bind 127.0.0.1, or set "
                               "LOGITSEARCH_ALLOW_UNAUTHENTICATED=1 / --allow-unauthenticated to accept the risk")


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class _Keys:
    """SHA-256 digests of the configured keys (None: that role has no key)."""

    write: bytes | None
    read: bytes | None

    @classmethod
    def of(cls, settings: Settings) -> _Keys:
        return cls(write=_digest(settings.api_key.encode()) if settings.api_key else None,
                   read=_digest(settings.read_api_key.encode()) if settings.read_api_key else None)

    @property
    def enabled(self) -> bool:
        return self.write is not None or self.read is not None

    def role_of(self, presented: bytes | None) -> Role | None:
        """"write", "read" or None. Both keys are compared every time with `hmac.compare_digest`, on
        digests, so neither the time taken nor an early length mismatch says anything about a key."""
        if presented is None:
            return None
        digest = _digest(presented)
        is_write = hmac.compare_digest(digest, self.write or bytes(32))
        is_read = hmac.compare_digest(digest, self.read or bytes(32))
        if is_write and self.write is not None:
            return "write"
        if is_read and self.read is not None:
            return "read"
        return None


def _presented_key(headers: Headers) -> bytes | None:
    """The key from `Authorization: Bearer <key>`, else from `api-key`; None when neither is present."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip().encode("utf-8", "surrogateescape")
    api_key = headers.get("api-key", "").strip()
    return api_key.encode("utf-8", "surrogateescape") if api_key else None


def required_role(app: ASGIApp, scope: Scope) -> tuple[Role, str | None]:
    """The role `scope` needs and the route template it matched (None: no route matches fully).

    Matching runs over the app's routes in the router's own order, so the template is the one that
    will handle the request. A path that matches no route (404/405 follows) needs any valid key.
    """
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            template = getattr(route, "path", None)
            role = ROLES.get((method, template)) if isinstance(template, str) else None
            if role is None:
                log.warning("route %s %s has no entry in service.auth.ROLES: needs the read-write key",
                            method, template)
                return "write", template
            return role, template
    return "read", None


def _arrived_off_loopback(scope: Scope) -> bool:
    """True when the connection's local address is a non-loopback IP (in-process transports name
    the server, e.g. 'testserver', and unix sockets give a path: neither counts)."""
    server = scope.get("server")
    host = server[0] if server else None
    return isinstance(host, str) and _ip_loopback(host) is False


class _AuthMiddleware:
    """Pure ASGI middleware: answers 401/403 problems before the app (or the body) is touched."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, keys: _Keys, allow_unauthenticated: bool) -> None:
        self.app, self.fastapi_app, self.keys = app, fastapi_app, keys
        self.allow_unauthenticated = allow_unauthenticated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and (self.keys.enabled or not self.allow_unauthenticated):
            await send({"type": "websocket.close", "code": 1008})  # no websocket route is classified
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.keys.enabled:
            if not self.allow_unauthenticated and _arrived_off_loopback(scope):
                response = problem_response(403, "no API key configured: this server answers on loopback "
                                                 "only (set LOGITSEARCH_API_KEY)")
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        role, template = required_role(self.fastapi_app, scope)
        if role == "open":
            await self.app(scope, receive, send)
            return
        presented = _presented_key(Headers(scope=scope))
        granted = self.keys.role_of(presented)
        if granted is None:
            if presented is None:
                detail, challenge = f"missing API key: {_HOW_TO_SEND}", 'Bearer realm="logitsearch"'
            else:
                detail, challenge = "invalid API key", 'Bearer realm="logitsearch", error="invalid_token"'
            response = problem_response(401, detail, headers={"WWW-Authenticate": challenge})
            await response(scope, receive, send)
            return
        if role == "write" and granted != "write":
            what = f"{scope['method']} {template or scope['path']}"
            response = problem_response(403, f"the read-only API key cannot {what}: it needs the read-write key")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Check API keys on every request (see the module docstring); a no-op check when none is set."""
    app.add_middleware(_AuthMiddleware, fastapi_app=app, keys=_Keys.of(settings),
                       allow_unauthenticated=settings.allow_unauthenticated)
