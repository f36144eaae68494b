"""Property-based API fuzzing with schemathesis against our own OpenAPI (issue 7).

Every operation of the app's OpenAPI document gets generated requests, both valid and invalid by
the schema ("all" mode: positive and negative), sent in-process to an app holding one small
collection. Checks on every response: not a 5xx, and status, content type and body conform to what
the operation documents.

CI runs a bounded, derandomized number of cases per operation (see EXAMPLES; well under a minute
in all). The longer run, with fresh random seeds:

    LOGITSEARCH_FUZZ_EXAMPLES=300 LOGITSEARCH_FUZZ_RANDOM=1 LOGITSEARCH_FUZZ_COVERAGE=1 \
        python -m pytest tests/reliability/test_fuzz.py
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis import checks
from schemathesis.config import SchemathesisConfig

from service.app import create_app
from service.settings import load_settings

COLLECTION = "fuzz"
DIM = 3
EXAMPLES = int(os.environ.get("LOGITSEARCH_FUZZ_EXAMPLES", "8"))
DETERMINISTIC = os.environ.get("LOGITSEARCH_FUZZ_RANDOM", "") != "1"
#: schemathesis's coverage phase (boundary values and every kind of invalid input per field): thorough, slow
COVERAGE = os.environ.get("LOGITSEARCH_FUZZ_COVERAGE", "") == "1"
CHECKS = [checks.not_a_server_error, checks.response_schema_conformance, checks.content_type_conformance,
          checks.status_code_conformance]


def _settings(data_dir: Path | str) -> Any:
    return load_settings({"data_dir": str(data_dir), "max_k": 50, "max_batch": 64}, environ={})


# The document only; this app is never started (no lifespan, nothing on disk).
_DOCUMENT = create_app(_settings("unused-fuzz-data-dir")).openapi()
schema = schemathesis.openapi.from_dict(_DOCUMENT, config=SchemathesisConfig.from_dict({
    "generation": {"mode": "all", "max-examples": EXAMPLES, "deterministic": DETERMINISTIC, "database": "none"},
    "phases": {"examples": {"enabled": True}, "fuzzing": {"enabled": True},
               "coverage": {"enabled": COVERAGE}, "stateful": {"enabled": False}},
}))


def _seed(client: TestClient) -> None:
    """The collection most generated requests are pointed at, with a few points to find."""
    r = client.put(f"/v1/collections/{COLLECTION}", json={"dim": DIM, "metrics": ["euc", "cos", "tri", "ced"],
                                                          "temperatures": [1.0, 10.0]})
    assert r.status_code in (200, 201), r.text
    r = client.put(f"/v1/collections/{COLLECTION}/points", params={"wait": "true"},
                   json={"ids": [0, 1, 2, "a", "b"],
                         "vectors": [[0, 1, 2], [1, 0, 0], [2, 2, 2], [0.5, -1, 3], [9, 8, 7]],
                         "payloads": [{"label": "x"}, None, {"n": 1}, None, {"label": "y"}]})
    assert r.status_code == 200, r.text


class _Started:
    """The app as schemathesis calls it: its lifespan is run once by the fixture's TestClient, so
    the lifespan scopes schemathesis sends are acknowledged here and never reach the app."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[_Started, TestClient]]:
    app = create_app(_settings(tmp_path_factory.mktemp("fuzz")))
    with TestClient(app) as client:
        _seed(client)
        yield _Started(app), client


@schema.parametrize()
def test_no_server_error_and_responses_match_the_schema(case, served):
    app, client = served
    # Three requests in four go to the seeded collection, so bodies reach the handlers instead of
    # stopping at "no such collection"; the rest keep the generated name.
    if "name" in (case.path_parameters or {}) and zlib.crc32(repr((case.body, case.query)).encode()) % 4:
        case.path_parameters["name"] = COLLECTION
    response = case.call(app=app)
    if case.method.upper() == "DELETE" and case.path == "/v1/collections/{name}" and response.status_code == 200:
        _seed(client)
    case.validate_response(response, checks=CHECKS)
