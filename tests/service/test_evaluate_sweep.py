"""Issue 14 through the app (TestClient): the searchable recommendation with its index status and
build request, temperatures "auto", the label check from payloads, the three PNGs (decoded, panels
counted from their pixels), the HTML report, and every indexed temperature in GET .../collections.
Oracles: core's roughness formula (eq. 17) by hand, the brute-force label count of
tests/core/test_labels, and the axes frames in the pictures."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from matplotlib.image import imread

from core.roughness import temperature_for_roughness
from tests.core.test_evaluation import mr
from tests.core.test_labels import SEARCHABLE, brute, clustered
from tests.service.conftest import make_client, problem

D, N = 20, 260
C = "/v1/collections"


def axes_frames(png: bytes) -> int:
    """Panels in a matplotlib PNG, counted from their black frames: every axes has a left and a
    right spine, a vertical dark segment taller than 15 % of the image; panels = segments / 2."""
    im = imread(io.BytesIO(png))[..., :3]
    dark = (im < 0.2).all(axis=2)
    h = dark.shape[0]

    def segments(column: np.ndarray) -> list[tuple[int, int]]:
        edges = np.diff(np.concatenate([[0], column.astype(int), [0]]))
        return [(a, b) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)) if b - a > 0.15 * h]

    count, previous = 0, []
    for x in range(dark.shape[1]):
        found = segments(dark[:, x])
        # a spine 2 pixels wide is one segment: count a segment unless the column before had it
        count += sum(1 for seg in found if not any(abs(seg[0] - p[0]) < 3 for p in previous))
        previous = found
    return count // 2


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    X, y = clustered(np.random.default_rng(14), N, D, 5)
    return X.astype(np.float32), y, [f"p{i}" for i in range(N)]


@pytest.fixture(scope="module")
def client(tmp_path_factory, data):
    X, y, ids = data
    payloads = [{"cls": int(c)} if i % 10 else {"other": 1} for i, c in enumerate(y)]  # every 10th: no label
    with make_client(tmp_path_factory.mktemp("sweep") / "data") as c:
        assert c.put(f"{C}/s", json={"dim": D, "temperatures": [10]}).status_code == 201
        r = c.put(f"{C}/s/points", json={"ids": ids, "vectors": X.tolist(), "payloads": payloads})
        assert r.status_code == 200, r.text
        yield c


def test_auto_temperatures_span_mean_roughness_a_tenth_to_a_millionth(client, data):
    X = data[0].astype(np.float64)
    body = client.post(f"{C}/s/evaluate", json={"id": "p3", "temperatures": "auto"}).json()
    auto = body["auto"]
    ts = [r["temperature"] for r in body["results"]]
    assert ts == auto["temperatures"] and len(ts) == 8 and auto["rows"] == N
    mean_mr = lambda t: float(np.mean([mr(x, t) for x in X]))
    assert mean_mr(ts[0]) == pytest.approx(0.1, rel=0.03) and mean_mr(ts[-1]) == pytest.approx(1e-6, rel=0.03)
    assert auto["low"]["temperature"] == pytest.approx(temperature_for_roughness(X, 1e-6).t, rel=1e-5)
    sweep = body["sweep"]
    rho = {r["temperature"]: r["rho"] for r in body["results"]}
    assert sweep["tri_reaches"] == min((t for t in ts if rho[t]["tri"]["value"] >= 0.99), default=None)
    assert sweep["euc_reaches"] == min((t for t in ts if rho[t]["euc"]["value"] >= 0.99), default=None)


def test_the_recommendation_is_searchable_says_if_indexed_and_how_to_build(client):
    body = client.post(f"{C}/s/evaluate", json={"id": "p7", "temperatures": [3, 10]}).json()
    for r in body["results"]:
        rec = r["recommendation"]
        assert rec["best"] in ("euc", "cos", "tri") and rec["evaluation_only"] in ("jsd", "hellinger")
        assert rec["rho"] == r["rho"][rec["best"]]["value"]
    at = {r["temperature"]: r["recommendation"] for r in body["results"]}
    if at[10.0]["best"] == "tri":
        assert at[10.0]["indexed"] is True and at[10.0]["build"] is None
    tri3 = client.post(f"{C}/s/evaluate", json={"id": "p7", "temperature": 3, "metrics": ["tri"]}).json()
    rec = tri3["results"][0]["recommendation"]
    assert rec["best"] == "tri" and rec["indexed"] is False
    assert rec["build"] == {"method": "POST", "path": f"{C}/s/indexes",
                            "body": {"metric": "tri", "kind": "flat", "temperature": 3.0}}
    # the request it gives works, and the collection then lists both temperatures (issue 14)
    r = client.post(rec["build"]["path"], json=rec["build"]["body"])
    assert r.status_code == 202, r.text
    for _ in range(200):
        if all(i["status"] == "ready" for i in client.get(f"{C}/s/indexes").json()["indexes"]):
            break
    assert client.get(f"{C}/s").json()["temperatures"] == [3.0, 10.0]
    assert client.get(C).json()["collections"][0]["temperatures"] == [3.0, 10.0]
    again = client.post(f"{C}/s/evaluate", json={"id": "p7", "temperature": 3, "metrics": ["tri"]}).json()
    assert again["results"][0]["recommendation"]["indexed"] is True


def test_label_check_from_payloads_equals_the_brute_force_count(client, data):
    X, y, ids = data
    body = client.post(f"{C}/s/evaluate", json={"queries": {"sample": 10, "seed": 3}, "temperatures": [1, 10],
                                                "labels": "cls", "k": 6}).json()
    codes = np.where(np.arange(N) % 10 == 0, -1, y)  # rows whose payload lacks the field have no label
    assert body["labels"] == {"field": "cls", "k": 6, "labelled": int((codes >= 0).sum()), "distinct": 5}
    rows = [ids.index(q) for q in body["query"]["ids"]]
    for s in body["summary"]:
        per = [brute(X[q].astype(np.float64), np.delete(X, q, axis=0).astype(np.float64),
                     list(np.delete(codes, q)), int(codes[q]), s["temperature"], 6) for q in rows if codes[q] >= 0]
        for m in SEARCHABLE:
            assert s["labels"][m]["agreement"] == pytest.approx(np.mean([p[m][0] for p in per]), abs=1e-12)
            assert s["labels"][m]["map"] == pytest.approx(np.mean([p[m][1] for p in per]), abs=1e-12)
            assert s["labels"][m]["n_queries"] == len(per)
    one = client.post(f"{C}/s/evaluate", json={"id": "p11", "temperature": 2, "labels": "cls"}).json()
    want = brute(X[11].astype(np.float64), np.delete(X, 11, axis=0).astype(np.float64), list(np.delete(codes, 11)),
                 int(codes[11]), 2.0, 10)
    assert one["results"][0]["labels"]["tri"]["agreement"] == pytest.approx(want["tri"][0])


@pytest.mark.parametrize(("body", "field"), [
    ({"id": "p1", "temperature": 1, "labels": "nothing-here"}, "labels"),
    ({"vector": [0.0] * D, "temperature": 1, "labels": "cls"}, "labels"),
    ({"mode": "many_to_many", "temperature": 1, "labels": "cls"}, "labels"),
    ({"id": "p1", "temperatures": "hot"}, "temperatures"),
    ({"id": "p1", "temperature": 1, "labels": "cls", "k": 0}, "k"),
])
def test_bad_sweep_or_label_input_is_a_problem_naming_the_field(client, body, field):
    problem(client.post(f"{C}/s/evaluate", json=body), 422, field)


def test_sweep_png_has_one_panel_or_two_with_labels(client):
    plain = client.post(f"{C}/s/evaluate/sweep.png", json={"id": "p2", "temperatures": [1, 3, 10, 30]})
    assert plain.status_code == 200 and plain.headers["content-type"] == "image/png"
    assert imread(io.BytesIO(plain.content)).shape[:2] == (500, 900)
    assert plain.headers["x-panels"] == "1" and axes_frames(plain.content) == 1
    labelled = client.post(f"{C}/s/evaluate/sweep.png", json={"queries": {"sample": 4}, "temperatures": "auto",
                                                              "labels": "cls", "width": 1000, "height": 450})
    assert labelled.status_code == 200, labelled.text
    assert imread(io.BytesIO(labelled.content)).shape[:2] == (450, 1000)
    assert labelled.headers["x-panels"] == "2" and axes_frames(labelled.content) == 2


def test_shepard_grid_has_one_panel_per_temperature_with_rho_each(client):
    r = client.post(f"{C}/s/evaluate/shepard.png", json={"id": "p5", "temperatures": [1, 3, 10, 30, 100],
                                                        "metric": "tri", "max_points": 100})
    assert r.status_code == 200, r.text
    assert r.headers["x-panels"] == "5" and axes_frames(r.content) == 5
    assert r.headers["x-temperatures"] == "1,3,10,30,100"
    rhos = [float(v) for v in r.headers["x-spearman-rho"].split(",")]
    single = [float(client.post(f"{C}/s/evaluate/shepard.png", json={"id": "p5", "temperature": t, "metric": "tri"})
                    .headers["x-spearman-rho"]) for t in (1, 100)]
    assert [rhos[0], rhos[-1]] == single
    auto = client.post(f"{C}/s/evaluate/shepard.png", json={"id": "p5", "temperatures": "auto", "metric": "euc"})
    assert auto.headers["x-panels"] == "8" and axes_frames(auto.content) == 8


def test_roughness_png_is_the_curve_with_the_target_marked(client, data):
    r = client.get(f"{C}/s/roughness.png", params={"width": 640, "height": 400})
    assert r.status_code == 200 and imread(io.BytesIO(r.content)).shape[:2] == (400, 640)
    assert axes_frames(r.content) == 1 and r.headers["x-points"] == "32"
    want = temperature_for_roughness(data[0], 1e-6).t
    assert float(r.headers["x-temperature-at-target"]) == pytest.approx(want, rel=1e-5)


def test_report_is_one_self_contained_page(client):
    r = client.get(f"{C}/s/report", params={"labels": "cls", "queries": 5})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing to fetch: every asset inline
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    for b64 in images:
        png = base64.b64decode(b64)
        assert imread(io.BytesIO(png)).ndim == 3
    assert 'id="recommendation"' in page and "recommended: search with" in page
    assert "Semantic check" in page and "agreement@10" in page
    problem(client.get(f"{C}/s/report", params={"labels": "nothing-here"}), 422, "labels")
    assert client.get(f"{C}/nope/report").status_code == 404


def test_the_routes_need_only_the_read_key(tmp_path, data):
    X, _, ids = data
    with make_client(tmp_path / "d", api_key="w" * 32, read_api_key="r" * 32) as c:
        w = {"Authorization": "Bearer " + "w" * 32}
        c.put(f"{C}/a", json={"dim": D}, headers=w)
        c.put(f"{C}/a/points", json={"ids": ids[:30], "vectors": X[:30].tolist()}, headers=w)
        read = {"Authorization": "Bearer " + "r" * 32}
        assert c.get(f"{C}/a/roughness.png", headers=read).status_code == 200
        assert c.get(f"{C}/a/report", headers=read, params={"queries": 3, "temperatures": "1,10"}).status_code == 200
        assert c.post(f"{C}/a/evaluate/sweep.png", headers=read,
                      json={"id": ids[0], "temperatures": [1, 10]}).status_code == 200
        assert c.get(f"{C}/a/report").status_code == 401


def test_a_stored_query_outside_the_sample_keeps_its_own_label(client, data):
    X, y, _ = data
    codes = np.where(np.arange(N) % 10 == 0, -1, y)
    for seed in range(20):  # a seed whose uniform sample of 100 leaves p11 out
        body = client.post(f"{C}/s/evaluate", json={"id": "p11", "temperature": 2, "labels": "cls", "sample": 100,
                                                    "seed": seed}).json()
        if body["results"][0]["n"] == 100:
            break
    else:
        pytest.fail("every sample held p11")
    # the sample as the backend draws it: sorted internal ids, which follow insertion order here
    rows = np.sort(np.random.default_rng(seed).choice(N, size=100, replace=False))
    assert 11 not in rows
    rho = client.post(f"{C}/s/evaluate", json={"vector": X[11].tolist(), "temperature": 2, "sample": 100,
                                               "seed": seed}).json()["results"][0]["rho"]["tri"]["value"]
    assert body["results"][0]["rho"]["tri"]["value"] == rho  # the same compared rows
    want = brute(X[11].astype(np.float64), X[rows].astype(np.float64), list(codes[rows]), int(codes[11]), 2.0, 10)
    got = body["results"][0]["labels"]
    for m in SEARCHABLE:
        assert (got[m]["agreement"], got[m]["map"]) == pytest.approx(want[m], abs=1e-12)
