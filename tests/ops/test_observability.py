"""service/observability.py: metrics per route template, search and ingest hooks, JSON access logs."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.observability import (
    UNMATCHED,
    JsonFormatter,
    count_ingested,
    install_observability,
    observe_search,
)
from service.settings import Settings


def _app(**state) -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/v1/collections/{name}")

    @router.get("")
    def get_collection(name: str) -> dict[str, str]:
        return {"name": name}

    @router.post("/search")
    def search(name: str, request: Request) -> dict[str, int]:
        observe_search(request, "tri", "flat", 0.003, "certified")
        return {"k": 1}

    @router.put("/points")
    async def upsert(name: str, request: Request) -> dict[str, int]:
        body = await request.body()
        count_ingested(request, len(body))
        return {"bytes": len(body)}

    app.include_router(router)
    for key, value in state.items():
        setattr(app.state, key, value)
    install_observability(app, Settings(log_level="debug"))
    return app


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_records():
    handler = _Records()
    logger = logging.getLogger("logitsearch.access")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def test_requests_are_counted_under_their_route_template_not_their_path():
    with TestClient(_app()) as client:
        for name in ("alpha", "beta", "gamma"):
            assert client.get(f"/v1/collections/{name}").status_code == 200
        client.get("/v1/nothing/here")
        samples = _samples(client)
    key = ("method", "GET"), ("route", "/v1/collections/{name}"), ("status", "200")
    assert samples[("logitsearch_http_requests_total", key)] == 3
    assert samples[("logitsearch_http_request_duration_seconds_count", key[:2])] == 3
    assert samples[("logitsearch_http_requests_total", (("method", "GET"), ("route", UNMATCHED),
                                                        ("status", "404")))] == 1
    assert not any(v in str(labels) for _, labels in samples for v in ("alpha", "beta", "/v1/nothing"))


def test_search_and_ingest_hooks_feed_their_series():
    with TestClient(_app()) as client:
        for _ in range(2):
            client.post("/v1/collections/c/search")
        client.put("/v1/collections/c/points", content=b"x" * 7)
        samples = _samples(client)
    flat_tri = ("kind", "flat"), ("metric", "tri")
    assert samples[("logitsearch_search_duration_seconds_count", flat_tri)] == 2
    assert samples[("logitsearch_search_duration_seconds_sum", flat_tri)] == pytest.approx(0.006)
    assert samples[("logitsearch_search_answers_total", (("how", "certified"), ("metric", "tri")))] == 2
    assert samples[("logitsearch_ingested_rows_total", ())] == 7


def test_each_app_has_its_own_registry():
    first, second = _app(), _app()
    with TestClient(first) as a, TestClient(second) as b:
        a.post("/v1/collections/c/search")
        assert ("logitsearch_search_duration_seconds_count", (("kind", "flat"), ("metric", "tri"))) in _samples(a)
        assert ("logitsearch_search_duration_seconds_count",
                (("kind", "flat"), ("metric", "tri"))) not in _samples(b)


def test_hooks_are_harmless_on_an_app_without_observability():
    app = FastAPI()
    observe_search(app, "euc", "flat", 0.1)
    count_ingested(app, 3)
    assert not hasattr(app.state, "metrics")


def test_access_log_has_route_status_and_duration_but_no_body(access_records):
    secret = "0.123456789,0.987654321"
    with TestClient(_app()) as client:
        client.put("/v1/collections/c/points?token=abc", content=secret.encode())
    (record,) = [r for r in access_records if r.fields["route"] == "/v1/collections/{name}/points"]
    line = JsonFormatter().format(record)
    assert "\n" not in line and secret not in line and "abc" not in line
    parsed = json.loads(line)
    assert parsed["method"] == "PUT" and parsed["status"] == 200 and parsed["duration_ms"] >= 0
    assert parsed["logger"] == "logitsearch.access" and parsed["level"] == "info"


def test_a_failing_route_is_counted_and_logged_as_500(access_records):
    app = _app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
        samples = _samples(client)
    assert samples[("logitsearch_http_requests_total", (("method", "GET"), ("route", "/boom"),
                                                        ("status", "500")))] == 1
    assert [r.fields["status"] for r in access_records if r.fields["route"] == "/boom"] == [500]


def test_json_formatter_keeps_a_traceback_on_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("logitsearch.x", logging.ERROR, __file__, 1, "failed %s", ("op",),
                                   exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "failed op" and "ValueError: bad\nthing" in parsed["exc"]


@pytest.fixture
def restore_log_levels():
    loggers = [logging.getLogger(n) for n in ("logitsearch", "uvicorn")]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


def test_log_level_comes_from_the_settings(restore_log_levels):
    _app()  # debug
    assert logging.getLogger("logitsearch").getEffectiveLevel() == logging.DEBUG
    install_observability(FastAPI(), Settings(log_level="warning"))
    assert logging.getLogger("logitsearch").getEffectiveLevel() == logging.WARNING
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrJsonHandler"]
    assert len(handlers) == 1  # installing twice does not duplicate log lines


class _Backend:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def sizes(self):
        if self.fail:
            raise OSError("disk gone")
        yield "img", 12, [("euc-flat", 12), ("tri-t10-flat", 11)]
        yield "txt", 0, []


def test_index_sizes_are_read_from_the_backend_at_scrape_time():
    with TestClient(_app(backend=_Backend())) as client:
        samples = _samples(client)
    assert samples[("logitsearch_collection_points", (("collection", "img"),))] == 12
    assert samples[("logitsearch_collection_points", (("collection", "txt"),))] == 0
    assert samples[("logitsearch_index_vectors", (("collection", "img"), ("index", "tri-t10-flat")))] == 11
    assert len([k for k in samples if k[0] == "logitsearch_index_vectors"]) == 2


def test_metrics_stay_up_when_the_backend_cannot_report_sizes():
    with TestClient(_app(backend=_Backend(fail=True))) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and "logitsearch_http_requests_total" in response.text
    assert "logitsearch_collection_points{" not in response.text


def test_a_batch_is_one_latency_observation_per_index_call_and_one_answer_per_query(tmp_path):
    from service.app import create_app
    from service.settings import load_settings

    app = create_app(load_settings({"data_dir": str(tmp_path)}, environ={}))
    with TestClient(app) as client:
        client.put("/v1/collections/b", json={"dim": 3, "metrics": ["euc", "cos"]})
        client.put("/v1/collections/b/points", params={"wait": "true"},
                   json={"ids": [1, 2, 3], "vectors": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
        searches = [{"vector": [1, 2, 3], "metric": "euc"}] * 3 + [{"vector": [1, 2, 3], "metric": "cos"}]
        r = client.post("/v1/collections/b/search/batch", json={"searches": searches})
        assert r.status_code == 200, r.text
        samples = _samples(client)
    for metric, calls, answers in (("euc", 1, 3), ("cos", 1, 1)):
        assert samples[("logitsearch_search_duration_seconds_count", (("kind", "flat"), ("metric", metric)))] == calls
        assert sum(v for (n, labels), v in samples.items()
                   if n == "logitsearch_search_answers_total" and ("metric", metric) in labels) == answers
