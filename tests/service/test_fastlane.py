"""The search fast lane (service.fastlane) answers exactly as FastAPI's routes do.

Two apps over identically seeded data directories, one with the lane and one without, get the same
requests: valid searches of every metric, by vector, by vector_b64 and by id, batches, and each kind
of bad input. Status, content type and body must agree (bar the measured times). Further tests show
that the lane is really taken, and that auth, body limits and the metrics' route labels still apply.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import fastlane
from service.app import create_app
from service.settings import load_settings
from tests.service.conftest import problem

C = "/v1/collections"
DIM = 6


def _seed(client: TestClient) -> None:
    rng = np.random.default_rng(5)
    r = client.put(f"{C}/fl", json={"dim": DIM, "metrics": ["euc", "cos", "tri", "ced"], "temperatures": [1.0, 10.0],
                                    "payload_index": ["label"]})
    assert r.status_code in (200, 201), r.text
    X = rng.normal(size=(40, DIM)) * 3
    ids: list[Any] = [f"img-{i}.jpg" for i in range(20)] + list(range(100, 120))
    payloads = [{"label": i % 3} for i in range(40)]
    for s in range(0, 40, 5):  # max_batch is 5 here
        r = client.put(f"{C}/fl/points", params={"wait": "true"},
                       json={"ids": ids[s:s + 5], "vectors": X[s:s + 5].tolist(), "payloads": payloads[s:s + 5]})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[tuple[TestClient, TestClient]]:
    def make(fast: bool) -> TestClient:
        data = tmp_path_factory.mktemp("fast" if fast else "slow")
        return TestClient(create_app(load_settings({"data_dir": str(data), "max_k": 30, "max_batch": 5},
                                                   environ={}), fast_lane=fast))

    with make(True) as fast, make(False) as slow:
        _seed(fast)
        _seed(slow)
        yield fast, slow


def _strip(body: Any) -> Any:
    """The body without measured times."""
    if isinstance(body, dict):
        return {k: _strip(v) for k, v in body.items() if k != "took_ms"}
    if isinstance(body, list):
        return [_strip(v) for v in body]
    return body


def _b64(v: list[float]) -> str:
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()


Q = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25]
SEARCHES: list[tuple[str, Any]] = [
    ("euc", {"vector": Q, "k": 5, "metric": "euc"}),
    ("cos payload+vector", {"vector": Q, "k": 3, "metric": "cos", "with_vector": True}),
    ("tri t=10", {"vector": Q, "k": 7, "metric": "tri", "temperature": 10}),
    ("ced t=1 exact", {"vector": Q, "k": 4, "metric": "ced", "temperature": 1.0, "exact": True}),
    ("by string id", {"id": "img-3.jpg", "k": 5, "metric": "tri", "temperature": 1}),
    ("by int id", {"id": 105, "k": 5, "metric": "euc", "with_payload": False}),
    ("b64", {"vector_b64": _b64(Q), "k": 6, "metric": "cos"}),
    ("k over count", {"vector": Q, "k": 30, "metric": "euc"}),
    # bad input: each answered by the lane's domain errors or by FastAPI's validation
    ("wrong dimension", {"vector": Q[:3], "k": 5}),
    ("two query forms", {"vector": Q, "id": 105}),
    ("no query", {"k": 5}),
    ("unknown id", {"id": "nope", "k": 5}),
    ("unindexed temperature", {"vector": Q, "metric": "tri", "temperature": 3}),
    ("unknown metric", {"vector": Q, "metric": "jsd"}),
    ("k too large", {"vector": Q, "k": 31}),
    ("k zero", {"vector": Q, "k": 0}),
    ("NaN in vector", {"vector": [float("nan")] * DIM}),
    ("string in vector", {"vector": ["a"] * DIM}),
    ("extra field", {"vector": Q, "colour": "red"}),
    ("bad b64", {"vector_b64": "***"}),
    # filtered searches (issue 15): the same answers whichever path serves them
    ("filtered euc", {"vector": Q, "k": 5, "metric": "euc", "filter": {"must": [{"key": "label", "match": {"value": 1}}]}}),
    ("filtered tri must_not", {"vector": Q, "k": 30, "metric": "tri", "temperature": 10,
                               "filter": {"must_not": [{"key": "label", "match": {"any": [0, 2]}}]}}),
    ("filtered by id", {"id": "img-3.jpg", "k": 5, "metric": "ced", "temperature": 1,
                        "filter": {"should": [{"has_id": ["img-4.jpg", 101]}, {"key": "label", "range": {"gte": 2}}]}}),
    ("filter matching nothing", {"vector": Q, "filter": {"must": [{"is_empty": {"key": "label"}}]}}),
    ("filter on an unindexed key", {"vector": Q, "filter": {"must": [{"key": "colour", "match": {"value": "red"}}]}}),
    ("filter with a bad range", {"vector": Q, "filter": {"must": [{"key": "label", "range": {"gt": "1"}}]}}),
    ("filter not an object", {"vector": Q, "filter": 3}),
]


@pytest.mark.parametrize("label,body", SEARCHES, ids=[s[0] for s in SEARCHES])
def test_single_search_answers_agree(pair, label, body):
    fast, slow = pair
    content = json.dumps(body, allow_nan=True).encode()  # NaN as the literal, as a careless client sends it
    a, b = (c.post(f"{C}/fl/search", content=content, headers={"content-type": "application/json"})
            for c in (fast, slow))
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"]), (a.text, b.text)
    assert _strip(a.json()) == _strip(b.json())


BATCHES: list[tuple[str, Any]] = [
    ("mixed", {"searches": [s for _, s in SEARCHES[:5]]}),
    ("one bad among good", {"searches": [SEARCHES[0][1], SEARCHES[8][1]]}),
    ("over max_batch", {"searches": [SEARCHES[0][1]] * 6}),
    ("empty", {"searches": []}),
    ("not a list", {"searches": 3}),
    ("filtered", {"searches": [s for label, s in SEARCHES if label.startswith("filtered")]}),
    ("a bad filter among good", {"searches": [SEARCHES[0][1], dict(SEARCHES[0][1], filter={"must": [{"has_id": [-1]}]})]}),
]


@pytest.mark.parametrize("label,body", BATCHES, ids=[b[0] for b in BATCHES])
def test_batch_answers_agree(pair, label, body):
    fast, slow = pair
    a, b = (c.post(f"{C}/fl/search/batch", json=body) for c in (fast, slow))
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"]), (a.text, b.text)
    assert _strip(a.json()) == _strip(b.json())


@pytest.mark.parametrize("path,headers,content", [
    (f"{C}/missing/search", {"content-type": "application/json"}, json.dumps({"vector": Q}).encode()),
    (f"{C}/bad name!/search", {"content-type": "application/json"}, json.dumps({"vector": Q}).encode()),
    (f"{C}/fl/search", {"content-type": "text/plain"}, json.dumps({"vector": Q}).encode()),
    (f"{C}/fl/search", {"content-type": "application/json"}, b"{not json"),
    (f"{C}/fl/search", {"content-type": "application/json"}, b""),
    (f"{C}/fl/search", {"content-type": "application/problem+json"}, json.dumps({"vector": Q}).encode()),
], ids=["unknown collection", "bad name", "text/plain", "malformed JSON", "empty body", "+json type"])
def test_edge_requests_agree(pair, path, headers, content):
    fast, slow = pair
    a, b = (c.post(path, content=content, headers=headers) for c in (fast, slow))
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"]), (a.text, b.text)
    assert _strip(a.json()) == _strip(b.json())


def test_a_chunked_body_goes_through_fastapi_with_the_same_answer(pair):
    fast, slow = pair
    body = json.dumps({"vector": Q, "k": 4, "metric": "euc"}).encode()
    a, b = (c.post(f"{C}/fl/search", content=iter([body[:10], body[10:]]),
                   headers={"content-type": "application/json"}) for c in (fast, slow))
    assert a.status_code == b.status_code == 200
    assert _strip(a.json()) == _strip(b.json())


def test_the_lane_answers_ordinary_searches_and_passes_the_rest_on(pair, monkeypatch):
    fast, _ = pair
    taken: list[str] = []
    for tail, (model, answer, template) in list(fastlane._LANES.items()):
        def spy(app, name, body, answer=answer, tail=tail):  # type: ignore[no-untyped-def]
            taken.append(tail)
            return answer(app, name, body)

        monkeypatch.setitem(fastlane._LANES, tail, (model, spy, template))
    assert fast.post(f"{C}/fl/search", json={"vector": Q}).status_code == 200
    assert fast.post(f"{C}/fl/search/batch", json={"searches": [{"vector": Q}]}).status_code == 200
    problem(fast.post(f"{C}/fl/search", json={"vector": Q[:2]}), 422, "vector")  # a domain error: still the lane
    assert taken == ["search", "search/batch", "search"]
    problem(fast.post(f"{C}/fl/search", json={"vector": "x"}), 422, "vector")  # invalid: FastAPI's
    assert fast.get(f"{C}/fl").status_code == 200
    assert taken == ["search", "search/batch", "search"]


def test_metrics_name_the_route_template_and_count_the_search(pair):
    fast, _ = pair
    fast.post(f"{C}/fl/search", json={"vector": Q})
    text = fast.get("/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith("logitsearch_http_requests_total{")
                and 'route="/v1/collections/{name}/search"' in ln and 'status="200"' in ln)
    assert float(line.rsplit(" ", 1)[1]) >= 1
    answers = [ln for ln in text.splitlines() if ln.startswith("logitsearch_search_answers_total{")
               and 'metric="euc"' in ln]
    assert answers and sum(float(ln.rsplit(" ", 1)[1]) for ln in answers) >= 1


def test_auth_and_body_limits_apply_before_the_lane(tmp_path: Path):
    env = {"LOGITSEARCH_API_KEY": "write-key-0123456789abcdef", "LOGITSEARCH_READ_API_KEY": "read-key-0123456789abcdef"}
    app = create_app(load_settings({"data_dir": str(tmp_path), "max_json_bytes": 4096}, environ=env))
    with TestClient(app) as client:
        client.put(f"{C}/fl", json={"dim": DIM}, headers={"api-key": env["LOGITSEARCH_API_KEY"]})
        problem(client.post(f"{C}/fl/search", json={"vector": Q}), 401)
        ok = client.post(f"{C}/fl/search", json={"vector": Q}, headers={"api-key": env["LOGITSEARCH_READ_API_KEY"]})
        assert ok.status_code == 200 and ok.json()["hits"] == []
        big = {"searches": [{"vector": Q}] * 200}
        problem(client.post(f"{C}/fl/search/batch", json=big, headers={"api-key": env["LOGITSEARCH_READ_API_KEY"]}),
                413, "body")
