"""Domain error -> RFC 9457 problem+json, in one place; routes never build error bodies.

Every error answer has `type`, `title`, `status`, `detail`, and for bad input `errors: [{field, reason}]`
with dotted field paths ("points.3.vector"). pydantic's RequestValidationError gets the same 422
shape. Any other exception is a bug: a 500 with a generic body and one log line, never `repr(exc)`.
"""

from __future__ import annotations

import email.message
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from core.errors import Conflict, InvalidInput, LimitExceeded, LogitsearchError, NotFound, StorageError
from service.limits import PROBLEM_JSON, BodyRejected, problem_response

log = logging.getLogger("logitsearch.problems")

STATUS: dict[type[LogitsearchError], int] = {LimitExceeded: 413, InvalidInput: 422, NotFound: 404, Conflict: 409,
                                             StorageError: 503, LogitsearchError: 500}
_LOCATIONS = {"body", "query", "path", "header", "cookie"}
INTERNAL = "internal error: the server log has the details"


def status_of(exc: LogitsearchError) -> int:
    return next(STATUS[c] for c in type(exc).__mro__ if c in STATUS)  # LogitsearchError is always there


def internal_problem(request: Request, exc: BaseException) -> JSONResponse:
    route = getattr(request.scope.get("route"), "path", request.url.path)
    log.error("unhandled %s in %s %s", type(exc).__name__, request.method, route, exc_info=exc)
    return problem_response(500, INTERNAL)


def domain_problem(request: Request, exc: LogitsearchError) -> JSONResponse:
    status = status_of(exc)
    if status == 500:
        return internal_problem(request, exc)
    errors = [{"field": exc.field, "reason": exc.reason}] if isinstance(exc, InvalidInput) else None
    headers = {"Retry-After": "1"} if status == 503 else None
    return problem_response(status, str(exc), errors=errors, headers=headers)


def field_path(loc: tuple[Any, ...]) -> str:
    """("body", "points", 3, "vector") -> "points.3.vector"."""
    parts = list(loc[1:] if loc and loc[0] in _LOCATIONS else loc)
    return ".".join(str(p) for p in parts) or (str(loc[0]) if loc else "body")


def _reason(err: dict[str, Any]) -> str:
    kind, msg = err.get("type", ""), str(err.get("msg", "invalid"))
    if kind == "json_invalid":
        return f"malformed JSON at character {err['loc'][-1]}: {err.get('ctx', {}).get('error', msg)}"
    if kind == "missing" and tuple(err.get("loc", ())) == ("body",):
        return "a JSON body is required"
    return msg.removeprefix("Value error, ")


def validation_problem(exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": "body" if e.get("type") == "json_invalid" else field_path(tuple(e.get("loc", ()))),
               "reason": _reason(e)} for e in exc.errors()]
    shown = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return problem_response(422, f"{len(errors)} invalid field{'s' if len(errors) != 1 else ''}: {shown}{more}",
                            errors=errors)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(LogitsearchError)
    async def _domain(request: Request, exc: LogitsearchError) -> JSONResponse:
        return domain_problem(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Only reached from middleware: ProblemRoute answers bugs inside routes itself.
        return internal_problem(request, exc)


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    sub = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


#: JSON bodies (of routes whose body is not one model) from this size on are parsed by pydantic-core;
#: from the second size on, in a worker thread
FAST_JSON_BYTES, THREAD_JSON_BYTES = 1024, 1024 * 1024


async def _parse_json_fast(request: Request, model: type[BaseModel] | None) -> None:
    """Parse a JSON body with pydantic-core and hand the result to FastAPI through Starlette's cache
    of `request.json()`: when the route's body is one pydantic model, parsed and validated in one
    pass (`model_validate_json`; FastAPI then passes the instance through), else parsed only
    (`from_json`, ~5x the stdlib parser FastAPI uses). A large body is parsed off the event loop.
    Anything refused here is left to FastAPI's own parse and validation, so every error answer
    (422 with the field path or the position, lone surrogates...) stays FastAPI's."""
    body = await request.body()
    if model is None and len(body) < FAST_JSON_BYTES:
        return
    parse: Callable[[bytes], Any] = pydantic_core.from_json if model is None else model.model_validate_json
    try:
        if len(body) < THREAD_JSON_BYTES:
            request._json = parse(body)
        else:
            request._json = await anyio.to_thread.run_sync(parse, body)
    except ValueError:  # pydantic's ValidationError is a ValueError
        return


class ProblemRoute(APIRoute):
    """An APIRoute that answers 415 for a JSON body route sent another content type, and turns a bug
    (an exception that is not ours, not validation, not HTTP) into a 500 problem with one log line
    (Starlette's last-resort handler would log it twice and re-raise it into the server)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        wants_json = self.body_field is not None
        # one model as the whole body (not embedded, no other body parameters): validated in one pass
        model = self.body_field.field_info.annotation if wants_json else None  # type: ignore[union-attr]
        single = len(self.dependant.body_params) == 1 and not getattr(self, "_embed_body_fields", True)
        model = model if single and isinstance(model, type) and issubclass(model, BaseModel) else None

        async def route(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            sent = content_type is not None or request.headers.get("content-length", "0") != "0"
            if wants_json and sent and not is_json(content_type):
                return problem_response(415, "send the body as application/json (Content-Type: application/json)",
                                        errors=[{"field": "content-type", "reason": "must be application/json"}])
            try:
                if wants_json and sent:
                    await _parse_json_fast(request, model)
                return await handler(request)
            except (LogitsearchError, RequestValidationError, StarletteHTTPException, BodyRejected):
                raise  # the handlers above answer these (and service.limits has answered for a cut body)
            except ClientDisconnect:
                return problem_response(400, "the client disconnected before the body was complete")
            except Exception as exc:  # noqa: BLE001 -- a bug: logged once, answered with a generic 500
                return internal_problem(request, exc)

        return route


class FieldError(BaseModel):
    field: str = Field(description='dotted path of the offending field ("points.3.vector", "k", "body")')
    reason: str = Field(description="what is wrong with it")


class Problem(BaseModel):
    """An RFC 9457 problem: every error answer of the API has this body (application/problem+json)."""

    type: str = Field("about:blank", description="a URI naming the kind of problem")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(description="the HTTP status code, repeated")
    detail: str = Field(description="what went wrong, for a person")
    errors: list[FieldError] | None = Field(None, description="for invalid input: each bad field and why")


_WHY = {
    400: "The client disconnected before the body was complete.",
    401: "An API key is configured and the request has none, or a wrong one.",
    403: "The key may only read, or no key is configured on a non-loopback server.",
    404: "No such collection (or point, or index).",
    408: "The body stalled: no bytes for the idle timeout.",
    409: "Conflicts with the current state: a different configuration exists, or the index is still building.",
    413: "The body, a batch, k or a sample is over its limit (the limit is named in `detail`).",
    415: "The body's Content-Type is not one this operation takes.",
    422: "Invalid input: `errors` names each field and the reason.",
    503: "Storage is unavailable or the collection is still loading; retry (Retry-After).",
}
_CONFLICTS = {("put", "/v1/collections/{name}"), ("post", "/v1/collections/{name}/indexes"),
              ("post", "/v1/collections/{name}/search"), ("post", "/v1/collections/{name}/search/batch"),
              ("put", "/v1/collections/{name}/snapshots/upload")}


def _statuses(method: str, path: str, operation: dict[str, Any], open_routes: set[tuple[str, str]]) -> list[int]:
    """The error statuses an operation can answer, from its shape."""
    statuses = [503]
    if (method.upper(), path) not in open_routes:
        statuses += [401, 403]
    if "requestBody" in operation:
        statuses += [400, 408, 415]
    if operation.get("parameters") or "requestBody" in operation:
        statuses += [413, 422]  # invalid input, or over a limit (k, a batch, a sample, the body)
    if "{name}" in path and (method, path) != ("put", "/v1/collections/{name}"):
        statuses.append(404)
    if (method, path) in _CONFLICTS:
        statuses.append(409)
    return sorted(set(statuses))


def document_problems(app: FastAPI, open_routes: set[tuple[str, str]]) -> None:
    """Make the OpenAPI document say what the API answers on error: every error status an operation
    can give, each as application/problem+json with the `Problem` schema. FastAPI's own 422 entry
    (application/json, HTTPValidationError) is replaced (its description too), since our handler answers a problem."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem.pop("$defs", {}))
        schemas["Problem"] = problem
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for path, item in document.get("paths", {}).items():
            for method, operation in item.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                for status in _statuses(method, path, operation, open_routes):
                    ours = responses.get(str(status), {}).get("description") if status != 422 else None
                    responses[str(status)] = {
                        "description": ours or _WHY[status],
                        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
