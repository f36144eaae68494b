"""The evaluation routes through the real app (TestClient): /evaluate, /roughness, /evaluate/shepard.png
(issue 5). Oracles: scipy.stats.spearmanr over float64 formulas written in tests/core."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from matplotlib.image import imread
from scipy.stats import spearmanr

from tests.core.test_evaluation import formulas, mr
from tests.service.conftest import make_client, problem

D = 24
N = 240
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fill(client: TestClient, name: str, X: np.ndarray, ids: list) -> None:
    r = client.put(f"/v1/collections/{name}", json={"dim": X.shape[1]})
    assert r.status_code in (200, 201), r.text
    r = client.put(f"/v1/collections/{name}/points", params={"wait": "true"},
                   json={"ids": ids, "vectors": X.tolist()})
    assert r.status_code in (200, 201, 202), r.text


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(55)
    X = (rng.normal(0, 3, size=(N, D)) + rng.normal(0, 2, size=(N, 1))).astype(np.float32)
    ids = [f"row-{i}" for i in range(N - 40)] + list(range(1000, 1040))  # string and integer ids
    return X, ids


@pytest.fixture(scope="module")
def client(tmp_path_factory, data):
    X, ids = data
    with make_client(tmp_path_factory.mktemp("evaluate") / "data") as c:
        _fill(c, "logits", X, ids)
        c.put("/v1/collections/empty", json={"dim": D})
        yield c


def test_evaluate_by_stored_id_equals_spearmanr_of_the_formulas(client, data):
    X, _ = data
    r = client.post("/v1/collections/logits/evaluate", json={"id": "row-5", "temperatures": [1, 10]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sample"] == {"size": N, "of": N, "sampled": False, "seed": None}
    assert body["query"] == {"id": "row-5"} and body["mode"] == "one_to_many" and body["ranks"] == "average"
    rest = np.delete(X, 5, axis=0)  # the stored query is left out of its compared set
    for res in body["results"]:
        t = res["temperature"]
        want = formulas(X[5], rest, t)
        assert res["n"] == N - 1
        for m in ("euc", "cos", "tri", "jsd", "hellinger"):
            assert res["rho"][m]["value"] == pytest.approx(spearmanr(want["ced"], want[m]).statistic, abs=1e-9)
        assert res["rho"]["kld"]["value"] == 1.0
        assert res["query_roughness"] == pytest.approx(mr(X[5], t), rel=1e-6)
        assert res["mean_roughness"] == pytest.approx(np.mean([mr(x, t) for x in rest]), rel=1e-6)
        values = [res["rho"][m]["value"] for m in res["ranked"]]
        assert values == sorted(values, reverse=True)
        rec = res["recommendation"]
        assert rec["tri_exact"] == (res["rho"]["tri"]["value"] >= rec["threshold"])
        assert rec["euc_beats_cos"] == (res["rho"]["euc"]["value"] > res["rho"]["cos"]["value"])


def test_evaluate_by_vector_and_integer_id(client, data):
    X, ids = data
    by_vec = client.post("/v1/collections/logits/evaluate",
                         json={"vector": X[210].tolist(), "temperature": 3, "metrics": ["tri", "euc"]}).json()
    res = by_vec["results"][0]
    assert res["n"] == N and set(res["rho"]) == {"tri", "euc"} and by_vec["query"] == {"vector": D}
    by_id = client.post("/v1/collections/logits/evaluate", json={"id": ids[210], "temperature": 3}).json()
    assert ids[210] == 1010 and by_id["results"][0]["n"] == N - 1
    want = formulas(X[210], np.delete(X, 210, axis=0), 3.0)
    assert by_id["results"][0]["rho"]["tri"]["value"] == pytest.approx(
        spearmanr(want["ced"], want["tri"]).statistic, abs=1e-9)


def test_a_sample_is_uniform_seeded_and_said(client):
    body = {"id": "row-0", "temperature": 10, "sample": 100, "seed": 7}
    a = client.post("/v1/collections/logits/evaluate", json=body).json()
    b = client.post("/v1/collections/logits/evaluate", json=body).json()
    assert a["sample"] == {"size": 100, "of": N, "sampled": True, "seed": 7}
    assert a["results"][0]["rho"] == b["results"][0]["rho"]
    assert a["results"][0]["n"] in (99, 100)  # 99 when the query itself was drawn


def test_max_eval_sample_caps_the_default_and_refuses_more(tmp_path, data):
    X, ids = data
    with make_client(tmp_path / "data", max_eval_sample=100) as c:
        _fill(c, "capped", X, ids)
        body = c.post("/v1/collections/capped/evaluate", json={"id": "row-1", "temperature": 1}).json()
        assert body["sample"]["size"] == 100 and body["sample"]["sampled"] is True
        r = c.post("/v1/collections/capped/evaluate", json={"id": "row-1", "temperature": 1, "sample": 150})
        assert "100" in problem(r, 413, "sample")["detail"]


def test_many_to_many_and_many_queries(client, data):
    X, ids = data
    pairs = client.post("/v1/collections/logits/evaluate",
                        json={"mode": "many_to_many", "temperature": 2, "sample": 40, "seed": 1}).json()
    res = pairs["results"][0]
    assert res["n"] == 40 * 39 // 2 and res["query_roughness"] is None and "earlier row" in pairs["reference"]
    summary = client.post("/v1/collections/logits/evaluate",
                          json={"queries": {"sample": 4, "seed": 2}, "temperatures": [1, 30]}).json()
    assert len(summary["query"]["ids"]) == 4 and set(summary["query"]["ids"]) <= set(ids)
    assert summary["results"] is None
    for s in summary["summary"]:
        rows = [ids.index(q) for q in summary["query"]["ids"]]
        fs = [formulas(X[i], np.delete(X, i, axis=0), s["temperature"]) for i in rows]
        tri = [spearmanr(f["ced"], f["tri"]).statistic for f in fs]
        assert s["rho"]["tri"]["mean"] == pytest.approx(np.mean(tri), abs=1e-9)
        assert s["rho"]["tri"]["min"] == pytest.approx(min(tri), abs=1e-9)
        assert s["rho"]["kld"]["std"] == 0.0 and s["n_queries"] == 4


def test_roughness_guide(client, data):
    X, _ = data
    r = client.get("/v1/collections/logits/roughness", params={"target": 1e-4, "temperatures": "1,10"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sample"]["size"] == N and body["target"]["reachable"] is True
    assert np.mean([mr(x, body["target"]["temperature"]) for x in X]) == pytest.approx(1e-4, rel=1e-4)
    assert [a["temperature"] for a in body["temperatures"]] == [1.0, 10.0]
    assert body["temperatures"][1]["mean_roughness"] == pytest.approx(np.mean([mr(x, 10.0) for x in X]), rel=1e-6)
    default = client.get("/v1/collections/logits/roughness").json()
    assert default["target"]["target"] == 1e-6 and default["temperatures"] == []


def test_shepard_png_is_a_png_of_the_requested_size(client, data):
    X, _ = data
    r = client.post("/v1/collections/logits/evaluate/shepard.png",
                    json={"id": "row-3", "temperature": 10, "metric": "euc", "width": 640, "height": 480,
                          "max_points": 50})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:8] == PNG_SIGNATURE
    assert imread(io.BytesIO(r.content)).shape[:2] == (480, 640)
    want = formulas(X[3], np.delete(X, 3, axis=0), 10.0)
    assert float(r.headers["x-spearman-rho"]) == pytest.approx(spearmanr(want["ced"], want["euc"]).statistic,
                                                              abs=1e-6)
    assert r.headers["x-points"] == f"50/{N - 1}"


@pytest.mark.parametrize(("body", "field"), [
    ({"id": "row-1", "temperature": 0}, "temperature"),
    ({"id": "row-1", "temperature": -2}, "temperature"),
    ({"id": "row-1", "temperatures": [1, 1e9]}, "temperatures"),
    ({"vector": [1.0] * (D + 1), "temperature": 1}, "vector"),
    ({"id": "row-1", "temperature": 1, "sample": N + 1}, "sample"),
    ({"id": "row-1", "temperature": 1, "metrics": ["tri", "l1"]}, "metrics"),
    ({"id": "row-1", "temperature": 1, "metrics": ["ced"]}, "metrics"),
    ({"id": "row-1"}, "temperature"),
    ({"id": "row-1", "temperature": 1, "mode": "all"}, "mode"),
    ({"id": "row-1", "temperature": 1, "mode": "many_to_many"}, "mode"),
    ({"temperature": 1}, "id"),
])
def test_bad_evaluate_input_is_a_problem_naming_the_field(client, body, field):
    problem(client.post("/v1/collections/logits/evaluate", json=body), 422, field)


def test_non_finite_temperature_and_empty_or_unknown_collection(client):
    raw = '{"id": "row-1", "temperature": NaN}'
    r = client.post("/v1/collections/logits/evaluate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "temperature" in json.dumps(r.json())
    problem(client.post("/v1/collections/empty/evaluate", json={"vector": [0.0] * D, "temperature": 1}), 422, "name")
    assert client.post("/v1/collections/nope/evaluate", json={"id": 1, "temperature": 1}).status_code == 404


@pytest.mark.parametrize("path, body", [("evaluate", {"temperature": 1}), ("search", {"metric": "euc", "k": 3}),
                                        ("evaluate/shepard.png", {"temperature": 1, "metric": "tri"})])
def test_an_unknown_id_is_404_in_evaluate_as_in_search(client, path, body):
    """Issue 11: evaluate answered 422 where search answered 404 for the same unknown id."""
    body = problem(client.post(f"/v1/collections/logits/{path}", json={"id": "nobody", **body}), 404)
    assert "'nobody'" in body["detail"] and "logits" in body["detail"]
    problem(client.get("/v1/collections/logits/roughness", params={"temperatures": "1,x"}), 422, "temperatures")
    problem(client.post("/v1/collections/logits/evaluate/shepard.png",
                         json={"id": "row-1", "temperature": 1, "metric": "ced"}), 422, "metric")


def test_scipy_stats_and_matplotlib_load_on_first_use_not_at_server_start():
    # together ~1.5 s of the server's start (and of every CLI call that imports the app)
    code = ("import sys, service.app; "
            "print(sorted(m for m in ('matplotlib', 'scipy.stats', 'scipy.optimize') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == "[]"
