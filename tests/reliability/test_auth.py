"""Auth (issue 7): every route of the real app x {no key, wrong key, read key, write key}.

The route list is read from `app.routes`, so a route added without an entry in `service.auth.ROLES`
fails `test_every_route_of_the_app_is_classified` instead of slipping through.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from service import auth
from service.app import DOCS_ASSETS, create_app
from service.settings import load_settings

WRITE_KEY = "write-key-9f1c2e7d0a5b4c3e8f6a"
READ_KEY = "read-key-4b8d2f6a1c9e7b3d5f0a"
#: values for path parameters; the requests only need to reach the route, not succeed
PARAMS = {"name": "auth-matrix", "id": "7", "point_id": "7", "index_id": "euc-flat",
          "snapshot": "none.tar"}


def _app(tmp_path, **overrides):
    env = {"LOGITSEARCH_API_KEY": WRITE_KEY, "LOGITSEARCH_READ_API_KEY": READ_KEY}
    return create_app(load_settings({"data_dir": str(tmp_path), **overrides}, environ=env))


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for route in app.routes:
        if isinstance(route, (APIRoute, Route)):
            out |= {(m, route.path) for m in (route.methods or ()) if m != "HEAD"}
        elif isinstance(route, Mount):  # static files (the docs' assets): GET on every path below it
            out.add(("GET", route.path))
    return out


def _url(template: str) -> str:
    if template == DOCS_ASSETS:  # a mount: ask for a file below it
        return f"{DOCS_ASSETS}/swagger-ui.css"
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PARAMS.get(m.group(1), "x"), template)


@pytest.fixture(scope="module")
def app_and_routes(tmp_path_factory):
    app = _app(tmp_path_factory.mktemp("auth"))
    return app, sorted(_routes(app))


def test_every_route_of_the_app_is_classified(app_and_routes):
    _, routes = app_and_routes
    assert set(routes) - set(auth.ROLES) == set(), "routes missing from service.auth.ROLES"
    assert set(auth.ROLES) - set(routes) == set(), "stale entries in service.auth.ROLES"


def test_the_table_never_lets_a_read_key_mutate():
    for (method, path), role in auth.ROLES.items():
        if method in ("PUT", "DELETE", "PATCH"):
            assert role == "write", (method, path)
        if method == "GET":
            assert role in ("open", "read"), (method, path)


def _check(client, method, template, role):
    url = _url(template)
    bad = []

    def send(headers):
        return client.request(method, url, headers=headers)

    none, wrong = send({}), send({"Authorization": "Bearer not-a-key"})
    as_read_bearer, as_read_header = send({"Authorization": f"Bearer {READ_KEY}"}), send({"api-key": READ_KEY})
    as_write = send({"Authorization": f"Bearer {WRITE_KEY}"})
    if role == "open":
        for r in (none, wrong, as_read_bearer, as_write):
            if r.status_code in (401, 403):
                bad.append(("open route refused", r.status_code))
        return bad
    for r, what in ((none, "missing"), (wrong, "invalid")):
        if r.status_code != 401 or r.headers.get("content-type") != "application/problem+json" \
                or not r.headers.get("www-authenticate", "").startswith("Bearer") or what not in r.json()["detail"]:
            bad.append((f"{what} key", r.status_code, r.headers.get("www-authenticate")))
    for r, what in ((as_read_bearer, "read key (Bearer)"), (as_read_header, "read key (api-key)")):
        if role == "write" and (r.status_code != 403 or r.json()["status"] != 403):
            bad.append((what, r.status_code))
        if role == "read" and r.status_code in (401, 403):
            bad.append((what, r.status_code))
    if as_write.status_code in (401, 403):
        bad.append(("write key", as_write.status_code))
    return bad


def test_auth_matrix_over_every_route(app_and_routes):
    app, routes = app_and_routes
    failures = {}
    with TestClient(app) as client:
        # one collection exists so that GETs reach real handlers too
        client.put(_url("/v1/collections/{name}"), json={"dim": 4}, headers={"api-key": WRITE_KEY})
        for method, template in routes:
            bad = _check(client, method, template, auth.ROLES.get((method, template), "write"))
            if bad:
                failures[f"{method} {template}"] = bad
    assert failures == {}


def test_an_unknown_path_needs_a_key_but_a_key_gets_the_404(app_and_routes):
    app, _ = app_and_routes
    with TestClient(app) as client:
        assert client.get("/v1/nowhere").status_code == 401
        assert client.get("/v1/nowhere", headers={"api-key": READ_KEY}).status_code == 404


def test_keys_are_compared_in_constant_time_against_both_keys(monkeypatch, app_and_routes):
    app, _ = app_and_routes
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with TestClient(app) as client:
        client.get("/v1/collections", headers={"api-key": READ_KEY})
    assert calls == [(bytes, bytes), (bytes, bytes)]


def test_keys_never_reach_the_logs(tmp_path, capfd, caplog):
    caplog.set_level("DEBUG")
    app = _app(tmp_path, log_level="debug")
    with TestClient(app) as client:
        for key in (WRITE_KEY, READ_KEY, "guessed-key-1234567890"):
            client.put("/v1/collections/logcheck", json={"dim": 3}, headers={"Authorization": f"Bearer {key}"})
            client.get("/v1/collections", headers={"api-key": key})
    out, err = capfd.readouterr()
    text = out + err + caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for key in (WRITE_KEY, READ_KEY, "guessed-key-1234567890"):
        assert key not in text


def test_without_keys_a_request_from_off_loopback_is_refused(tmp_path):
    app = create_app(load_settings({"data_dir": str(tmp_path)}, environ={}))
    with TestClient(app, base_url="http://10.20.30.40:6340") as client:
        r = client.get("/v1/collections")
    assert r.status_code == 403 and "loopback" in r.json()["detail"]
    with TestClient(app) as client:  # in-process transport, no socket address: allowed
        assert client.get("/healthz").status_code == 200


def test_without_keys_and_with_the_override_every_interface_is_served(tmp_path):
    app = create_app(load_settings({"data_dir": str(tmp_path), "allow_unauthenticated": True}, environ={}))
    with TestClient(app, base_url="http://10.20.30.40:6340") as client:
        assert client.get("/healthz").status_code == 200
