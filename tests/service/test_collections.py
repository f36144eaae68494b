"""Collections and indexes over HTTP: create (idempotent, 409), list, get, delete, index builds."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from indexes.knn import IndexSet
from tests.service.conftest import problem

C = "/v1/collections"


def _wait_ready(client, name, index_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idx = {i["id"]: i for i in client.get(f"{C}/{name}/indexes").json()["indexes"]}
        if idx[index_id]["status"] != "building":
            return idx[index_id]
        time.sleep(0.02)
    raise AssertionError(f"{index_id} still building")


def test_create_fills_the_documented_defaults_and_answers_201_then_200(client):
    r = client.put(f"{C}/logits", json={"dim": 8})
    assert r.status_code == 201
    body = r.json()
    assert (body["dim"], body["metrics"], body["temperatures"]) == (8, ["euc", "cos", "tri"], [10.0])
    assert body["index"] == {"kind": "flat", "params": {}} and body["count"] == 0 and body["status"] == "ready"
    assert [i["id"] for i in body["indexes"]] == ["euc-flat", "cos-flat", "tri-t10-flat"]
    again = client.put(f"{C}/logits", json={"dim": 8, "metrics": ["tri", "euc", "cos"], "temperatures": [10]})
    assert again.status_code == 200 and again.json()["indexes"] == body["indexes"]


@pytest.mark.parametrize("change", [{"dim": 9}, {"metrics": ["euc"]}, {"temperatures": [1, 10]},
                                    {"index": {"kind": "hnsw"}}])
def test_a_different_config_for_an_existing_name_is_409_naming_the_difference(client, change):
    client.put(f"{C}/logits", json={"dim": 8})
    body = problem(client.put(f"{C}/logits", json={"dim": 8, **change}), 409)
    assert next(iter(change)) in body["detail"]


def test_hnsw_params_are_filled_and_kept(client):
    r = client.put(f"{C}/h", json={"dim": 4, "metrics": ["euc"], "index": {"kind": "hnsw", "params": {"M": 8}}})
    assert r.status_code == 201
    assert r.json()["index"]["params"] == {"M": 8, "ef_construction": 200, "ef_search": 128}
    assert r.json()["temperatures"] == []  # no tri/ced: temperatures do not apply


@pytest.mark.parametrize("body, field", [
    ({"dim": 0}, "dim"),
    ({"dim": "eight"}, "dim"),
    ({}, "dim"),
    ({"dim": 4, "metrics": ["kld"]}, "metrics.0"),
    ({"dim": 4, "metrics": []}, "metrics"),
    ({"dim": 4, "temperatures": [0]}, "temperatures.0"),
    ({"dim": 4, "temperatures": [10, 1e9]}, "temperatures.1"),
    ({"dim": 4, "index": {"kind": "annoy"}}, "index.kind"),
    ({"dim": 4, "index": {"kind": "hnsw", "params": {"M": 1}}}, "index.params.M"),
    ({"dim": 4, "index": {"kind": "flat", "params": {"M": 8}}}, "index.params.M"),
    ({"dim": 4, "colour": "blue"}, "colour"),
])
def test_bad_collection_configs_are_422_naming_the_field(client, body, field):
    problem(client.put(f"{C}/bad", json=body), 422, field)
    assert client.get(f"{C}/bad").status_code == 404


@pytest.mark.parametrize("name", ["-lead", "has space", "slash%2Fin", "x" * 129, "ünï"])
def test_bad_collection_names_are_refused(client, name):
    r = client.put(f"{C}/{name}", json={"dim": 4})
    assert r.status_code in (404, 422), r.text
    if r.status_code == 422:
        problem(r, 422, "name")


def test_list_get_and_delete(client):
    for name in ("b", "a"):
        client.put(f"{C}/{name}", json={"dim": 3, "metrics": ["euc"]})
    assert [c["name"] for c in client.get(C).json()["collections"]] == ["a", "b"]
    assert client.get(f"{C}/a").json()["dim"] == 3
    assert client.delete(f"{C}/a").json() == {"deleted": "a"}
    problem(client.get(f"{C}/a"), 404)
    problem(client.delete(f"{C}/a"), 404)
    assert [c["name"] for c in client.get(C).json()["collections"]] == ["b"]


def test_a_deleted_name_can_be_created_again_empty_with_another_dim(client):
    client.put(f"{C}/re", json={"dim": 2, "metrics": ["euc"]})
    client.put(f"{C}/re/points", json={"ids": [1], "vectors": [[1, 2]]})
    client.delete(f"{C}/re")
    assert client.put(f"{C}/re", json={"dim": 3, "metrics": ["euc"]}).status_code == 201
    r = client.post(f"{C}/re/search", json={"vector": [0, 0, 0], "k": 5})
    assert r.json()["hits"] == []


def test_an_index_built_later_answers_like_a_fresh_indexset(client, rng):
    X = rng.normal(size=(300, 16)).astype(np.float32)
    client.put(f"{C}/x", json={"dim": 16, "metrics": ["euc"]})
    client.put(f"{C}/x/points", json={"ids": list(range(300)), "vectors": X.tolist()})
    r = client.post(f"{C}/x/indexes", json={"metric": "tri", "temperature": 3})
    assert r.status_code == 202 and r.json()["id"] == "tri-t3-flat"
    info = _wait_ready(client, "x", "tri-t3-flat")
    assert info["status"] == "ready" and info["progress"] == 1.0 and info["vectors"] == 300
    got = client.post(f"{C}/x/search", json={"vector": X[7].tolist(), "k": 5, "metric": "tri", "temperature": 3})
    want = IndexSet(16, [])
    want.add_index({"metric": "tri", "temperature": 3})
    want.upsert(np.arange(300), X, 1)
    [hits] = want.search("tri", X[7].astype(np.float64), 5, temperature=3)
    assert [h["id"] for h in got.json()["hits"]] == hits.ids.tolist()
    # the same spec again is 200, other parameters for the same id 409
    assert client.post(f"{C}/x/indexes", json={"metric": "tri", "temperature": 3}).status_code == 200


def test_index_errors(client):
    client.put(f"{C}/x", json={"dim": 4, "metrics": ["euc"], "index": {"kind": "hnsw"}})
    problem(client.post(f"{C}/x/indexes", json={"metric": "euc", "kind": "hnsw", "params": {"M": 8}}), 409)
    problem(client.post(f"{C}/x/indexes", json={"metric": "tri"}), 422, "temperature")
    problem(client.post(f"{C}/x/indexes", json={"metric": "cos", "temperature": 2}), 422, "temperature")
    problem(client.post(f"{C}/x/indexes", json={"metric": "hellinger"}), 422, "metric")
    problem(client.delete(f"{C}/x/indexes/tri-t9-flat"), 404)
    problem(client.post(f"{C}/nope/indexes", json={"metric": "euc"}), 404)


def test_dropping_an_index_makes_its_temperature_unsearchable_with_a_listing(client):
    client.put(f"{C}/x", json={"dim": 4, "metrics": ["tri"], "temperatures": [1, 10]})
    client.put(f"{C}/x/points", json={"ids": [1, 2], "vectors": [[1, 2, 3, 4], [4, 3, 2, 1]]})
    assert client.delete(f"{C}/x/indexes/tri-t1-flat").json() == {"deleted": "tri-t1-flat"}
    body = problem(client.post(f"{C}/x/search", json={"vector": [1, 1, 1, 1], "metric": "tri", "temperature": 1}),
                   422, "temperature")
    assert "[10.0]" in body["detail"]
    assert [i["id"] for i in client.get(f"{C}/x/indexes").json()["indexes"]] == ["tri-t10-flat"]
    # with one temperature left it may be left out
    assert client.post(f"{C}/x/search", json={"vector": [1, 1, 1, 1], "metric": "tri"}).json()["temperature"] == 10


def test_a_building_index_shows_progress_and_searches_on_it_are_409(client, monkeypatch, rng):
    client.put(f"{C}/x", json={"dim": 8, "metrics": ["euc"]})
    client.put(f"{C}/x/points", json={"ids": list(range(50)), "vectors": rng.normal(size=(50, 8)).tolist()})
    release, started = threading.Event(), threading.Event()
    real = IndexSet.add_index

    def slow(self, spec, progress=None):
        if progress:
            progress(0.25)
        started.set()
        release.wait(10)
        return real(self, spec, progress)

    monkeypatch.setattr(IndexSet, "add_index", slow)
    assert client.post(f"{C}/x/indexes", json={"metric": "ced", "temperature": 2}).status_code == 202
    assert started.wait(10)
    idx = {i["id"]: i for i in client.get(f"{C}/x/indexes").json()["indexes"]}
    assert idx["ced-t2-flat"]["status"] == "building" and idx["ced-t2-flat"]["progress"] == 0.25
    body = problem(client.post(f"{C}/x/search", json={"vector": [0] * 8, "metric": "ced", "temperature": 2}), 409)
    assert "building" in body["detail"]
    release.set()
    assert _wait_ready(client, "x", "ced-t2-flat")["status"] == "ready"
    assert client.post(f"{C}/x/search", json={"vector": [0] * 8, "metric": "ced", "temperature": 2}).status_code == 200


def test_a_failed_build_is_reported_and_can_be_deleted(client, monkeypatch):
    client.put(f"{C}/x", json={"dim": 4, "metrics": ["euc"]})

    def broken(self, spec, progress=None):
        raise MemoryError("no room")

    monkeypatch.setattr(IndexSet, "add_index", broken)
    client.post(f"{C}/x/indexes", json={"metric": "cos"})
    info = _wait_ready(client, "x", "cos-flat")
    assert info["status"] == "failed" and "MemoryError" in info["error"] and "no room" not in info["error"]
    assert client.delete(f"{C}/x/indexes/cos-flat").status_code == 200
