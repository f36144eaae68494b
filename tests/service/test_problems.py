"""Errors as RFC 9457 problems: unknown routes, methods, validation paths, and a bug as a generic 500."""

from __future__ import annotations

import logging

import pytest

from service.coordinator import Coordinator
from tests.service.conftest import problem

C = "/v1/collections"


def test_unknown_route_and_method_are_problems(client):
    problem(client.get("/v1/nowhere"), 404)
    r = client.patch(f"{C}/x")
    problem(r, 405)
    assert "PUT" in r.headers["allow"]


def test_validation_errors_list_every_field_with_a_dotted_path(client):
    client.put(f"{C}/v", json={"dim": 2, "metrics": ["euc"]})
    body = {"points": [{"id": 1, "vector": [0, 0]}, {"id": 2, "vector": [0, 0]}, {"id": 3, "vector": [0, 0]},
                       {"id": {"nested": 1}, "vector": [0, "x"]}]}
    r = problem(client.put(f"{C}/v/points", json=body), 422)
    fields = sorted(e["field"] for e in r["errors"])
    assert fields == ["points.3.id", "points.3.vector.1"]
    assert r["detail"].startswith("2 invalid fields")
    problem(client.put(f"{C}/v/points", params={"wait": "maybe"}, json={"ids": [1], "vectors": [[0, 0]]}),
            422, "wait")


def test_a_bug_is_a_generic_500_with_one_log_line_and_no_exception_text(client, monkeypatch, caplog):
    client.put(f"{C}/v", json={"dim": 2, "metrics": ["euc"]})

    def broken(self, name, queries, **options):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(Coordinator, "search", broken)
    with caplog.at_level(logging.ERROR, logger="logitsearch.problems"):
        r = problem(client.post(f"{C}/v/search", json={"vector": [0, 0]}), 500)
    assert "secret" not in r["detail"] and "RuntimeError" not in r["detail"] and "errors" not in r
    lines = [rec for rec in caplog.records if rec.name == "logitsearch.problems"]
    assert len(lines) == 1 and "RuntimeError" in lines[0].getMessage()
    assert "/v1/collections/{name}/search" in lines[0].getMessage()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.json()["status"] in ("ok", "ready")


def test_openapi_documents_every_v1_route_with_its_body(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/v1/collections/{name}", "/v1/collections/{name}/points", "/v1/collections/{name}/points/bulk",
              "/v1/collections/{name}/search", "/v1/collections/{name}/search/batch",
              "/v1/collections/{name}/indexes/{index_id}", "/v1/collections/{name}/points/scroll"):
        assert p in paths, p
    bulk = paths["/v1/collections/{name}/points/bulk"]["post"]["requestBody"]["content"]
    assert {"application/octet-stream", "multipart/form-data"} <= set(bulk)
    ids = spec["components"]["schemas"]["UpsertIn"]["properties"]["ids"]
    assert "anyOf" in str(ids) and "maxLength" in str(ids)


def _problem_schema(spec: dict) -> dict:
    """The document's Problem schema, standalone (its $refs resolved against the document)."""
    return {**spec["components"]["schemas"]["Problem"], "components": spec["components"]}


def test_openapi_documents_error_answers_as_problems(client):
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
            for code, r in errors.items():
                assert list(r["content"]) == ["application/problem+json"], (method, path, code)
                assert r["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
            if path.startswith("/v1/"):
                assert {"401", "403", "503"} <= set(errors), (method, path)
            if op.get("parameters") or "requestBody" in op:
                assert "422" in errors, (method, path)
            if "{name}" in path and not (method == "put" and path == "/v1/collections/{name}"):
                assert "404" in errors, (method, path)
            if "requestBody" in op:
                assert {"413", "415"} <= set(errors), (method, path)
    assert "409" in spec["paths"]["/v1/collections/{name}"]["put"]["responses"]
    assert "401" not in spec["paths"]["/healthz"]["get"]["responses"]


def test_real_error_answers_validate_against_the_documented_problem_schema(client):
    jsonschema = pytest.importorskip("jsonschema")
    schema = _problem_schema(client.get("/openapi.json").json())
    client.put(f"{C}/v", json={"dim": 2, "metrics": ["euc"]})
    answers = [client.get(f"{C}/missing"),                                          # 404
               client.put(f"{C}/v", json={"dim": 3, "metrics": ["euc"]}),          # 409
               client.post(f"{C}/v/search", content=b"x", headers={"content-type": "text/plain"}),  # 415
               client.post(f"{C}/v/search", json={"vector": [0, "x"]})]            # 422
    assert [r.status_code for r in answers] == [404, 409, 415, 422]
    for r in answers:
        assert r.headers["content-type"] == "application/problem+json"
        jsonschema.validate(r.json(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"title": "x", "status": 400}, schema)  # the schema does constrain: detail missing
