"""A collection on 3 Ray shards answers as the same collection on one (issue 13).

Three shards of uneven size: one holds most points, one fewer than k, one none. The same writes
(upserts, updates, deletes by id and by filter) go to an unsharded collection beside it; every
metric and kind (exact on hnsw/ivf), vector and id queries (the id left out everywhere), filters,
scroll pages and evaluation (both rank modes) must agree: the same ids, the same distances.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.evaluation import evaluate
from service.catalog import CollectionConfig
from service.coordinator import Coordinator
from service.ray_shards import RemoteShard, shard_of
from service.settings import load_settings
from tests.conftest import SHARED_DATA, _load_shared
from tests.ray.conftest import SHARD_CPUS, ids_by_shard, ray_client

C = "/v1/collections"
DIM = 6
TEMPS = [1.0, 10.0]
METRICS = ["euc", "cos", "tri", "ced"]
SIZES = [37, 3, 0]  # shard 0 most points, shard 1 fewer than k = 5, shard 2 none


def _create(client: Any, name: str, dim: int, shards: int | None) -> None:
    body: dict[str, Any] = {"dim": dim, "metrics": METRICS, "temperatures": TEMPS, "payload_index": ["c"]}
    if shards is not None:
        body["shards"] = shards
    r = client.put(f"{C}/{name}", json=body)
    assert r.status_code == 201, r.text


def _upsert(client: Any, name: str, ids: list[Any], X: np.ndarray, payloads: list[Any] | None = None) -> None:
    body: dict[str, Any] = {"ids": ids, "vectors": X.astype(np.float64).tolist()}
    if payloads is not None:
        body["payloads"] = payloads
    r = client.put(f"{C}/{name}/points", json=body)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text


def _add_indexes(client: Any, names: list[str], kinds: dict[str, dict[str, int]]) -> None:
    for name in names:
        for kind, params in kinds.items():
            for m in METRICS:
                for t in (TEMPS if m in ("tri", "ced") else [None]):
                    body = {"metric": m, "kind": kind, "params": params, **({"temperature": t} if t else {})}
                    r = client.post(f"{C}/{name}/indexes", json=body)
                    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    for name in names:
        while any(i["status"] != "ready" for i in client.get(f"{C}/{name}/indexes").json()["indexes"]):
            assert time.monotonic() < deadline, client.get(f"{C}/{name}/indexes").text
            time.sleep(0.1)


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    with ray_client(tmp_path_factory.mktemp("data")) as client:
        rng = np.random.default_rng(13)
        # few distinct rows, small integers: many exact ties in every metric
        base = rng.integers(-3, 4, size=(9, DIM)).astype(np.float32)
        owned = ids_by_shard(SIZES, 3)
        ids = [e for part in owned for e in part]
        order = rng.permutation(len(ids))
        ids = [ids[i] for i in order]
        X = base[rng.integers(0, len(base), size=len(ids))]
        payloads = [{"c": int(i % 3)} for i in range(len(ids))]
        for name, shards in (("one", None), ("three", 3)):
            _create(client, name, DIM, shards)
            _upsert(client, name, ids[:25], X[:25], payloads[:25])
            _upsert(client, name, ids[25:], X[25:], payloads[25:])
            _upsert(client, name, ids[3:9], X[:6] + 1, payloads[3:9])  # updates keep their internal ids
            assert client.post(f"{C}/{name}/points/delete", json={"ids": [ids[0], "nope"]}).status_code == 200
            r = client.post(f"{C}/{name}/points/delete",
                            json={"filter": {"must": [{"key": "c", "match": {"value": 2}}], "must_not": []}})
            assert r.status_code == 200, r.text
            _upsert(client, name, [ids[0]], X[:1] * 2, [{"c": 2}])  # back, as the newest point
        real = None
        if (SHARED_DATA / "imagenet_effnet_dev.npy").exists():  # optional: its tests skip when absent
            Xr, names = _load_shared("imagenet_effnet_dev")
            real = (np.asarray(Xr[:900], dtype=np.float32), names[:900])
        if real is not None:
            for name, shards in (("real1", None), ("real3", 3)):
                body = {"dim": real[0].shape[1], "metrics": METRICS, "temperatures": TEMPS}
                if shards:
                    body["shards"] = shards
                assert client.put(f"{C}/{name}", json=body).status_code == 201
                for s in range(0, len(real[1]), 300):
                    _upsert(client, name, real[1][s:s + 300], real[0][s:s + 300])
        kinds = {"hnsw": {"M": 8}, "ivf": {"nlist": 4, "nprobe": 2}}
        _add_indexes(client, ["one", "three"] + (["real1", "real3"] if real else []), kinds)
        yield client, ids, X, real


def _specs(client: Any, name: str) -> list[dict[str, Any]]:
    return [i for i in client.get(f"{C}/{name}/indexes").json()["indexes"] if i["status"] == "ready"]


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert [h["id"] for h in a["hits"]] == [h["id"] for h in b["hits"]]
    np.testing.assert_allclose([h["distance"] for h in a["hits"]], [h["distance"] for h in b["hits"]],
                               rtol=1e-12, atol=1e-12)
    assert [h.get("payload") for h in a["hits"]] == [h.get("payload") for h in b["hits"]]


def test_the_three_shards_are_uneven_one_empty_one_below_k_issue_13(served):
    client = served[0]
    coord: Coordinator = client.app.state.backend
    sizes = [s.points() for s in coord._members["three"].shards]
    assert sizes[2] == 0 and 0 < sizes[1] < 5 and sum(sizes) == coord.count("one")
    assert client.get(f"{C}/three").json()["count"] == client.get(f"{C}/one").json()["count"]
    assert client.get(f"{C}/three").json()["shards"] == 3
    ready = client.get("/readyz").json()
    assert ready["shards"] == {f"three/shard-{j}": "ready" for j in range(3)} | (
        {f"real3/shard-{j}": "ready" for j in range(3)} if served[3] else {})


def _pair(served: Any, data: str) -> tuple[str, str, list[Any], np.ndarray]:
    """(unsharded name, sharded name, stored ids, their rows) of the synthetic or the real pair."""
    client, _, X, real = served
    if data == "real":
        if real is None:
            pytest.skip("../shared/data is absent")
        return "real1", "real3", real[1], real[0]
    present = [p["id"] for p in client.post(f"{C}/one/points/scroll", json={"limit": 100}).json()["points"]]
    return "one", "three", present, X


@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_every_metric_and_kind_answers_as_one_shard_issue_13(served, data, rng):
    client = served[0]
    one, three, present, X = _pair(served, data)
    if data == "real":
        by_id = [present[5], present[400], present[899]]
        ks = [1, 10, 200]
    else:
        by_shard = [[e for e in present if shard_of(e, 3) == j] for j in range(3)]
        by_id = [by_shard[0][0], by_shard[1][0], by_shard[0][-1]]
        ks = [1, 5, 60]
    specs = _specs(client, one)
    assert {(s["metric"], s["kind"]) for s in specs} == {(m, k) for m in METRICS for k in ("flat", "hnsw", "ivf")}
    vectors = [X[2], X[7], X[7] + 0.5, rng.normal(size=X.shape[1]) * 3]
    for s in specs:
        at = {"metric": s["metric"], "kind": s["kind"], **({"temperature": s["temperature"]} if s["temperature"] else {})}
        for k in ks:
            for exact in ([False, True] if s["kind"] == "flat" else [True]):
                searches = [{"vector": np.asarray(v, dtype=np.float64).tolist(), "k": k, "exact": exact, **at}
                            for v in vectors]
                searches += [{"id": e, "k": k, "exact": exact, **at} for e in by_id]
                if data == "synthetic":
                    searches.append({"vector": X[3].astype(float).tolist(), "k": k, "exact": exact, **at,
                                     "filter": {"must": [{"key": "c", "match": {"value": 1}}]}})
                a = client.post(f"{C}/{one}/search/batch", json={"searches": searches})
                b = client.post(f"{C}/{three}/search/batch", json={"searches": searches})
                assert a.status_code == b.status_code == 200, (a.text, b.text)
                for q, ra, rb in zip(searches, a.json()["results"], b.json()["results"]):
                    _same(ra, rb)
                    if "id" in q:
                        assert q["id"] not in [h["id"] for h in rb["hits"]]


def test_scroll_pages_are_those_of_one_shard_in_insertion_order_issue_13(served):
    client = served[0]

    def pages(name: str) -> list[list[Any]]:
        out, offset = [], None
        while True:
            r = client.post(f"{C}/{name}/points/scroll", json={"limit": 7, "offset": offset}).json()
            out.append([p["id"] for p in r["points"]])
            if r["next_offset"] is None:
                return out
            offset = r["next_offset"]

    assert pages("three") == pages("one")
    flt = {"must": [{"key": "c", "match": {"value": 1}}]}
    a = client.post(f"{C}/one/points/scroll", json={"limit": 100, "filter": flt}).json()["points"]
    b = client.post(f"{C}/three/points/scroll", json={"limit": 100, "filter": flt}).json()["points"]
    assert a == b


def _close(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if key not in ("seconds", "collection"):
                _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12, (path, a, b)
    else:
        assert a == b, (path, a, b)


def _same_answer(client: Any, one: str, three: str, method: str, path: str, same_bytes: bool = True,
                 **kw: Any) -> Any:
    """The unsharded and the sharded collection's answers to one request: the same status and JSON
    (floats to 1e-12), or for a picture the same headers and (unless it shows the collection's
    name) the same bytes."""
    a = client.request(method, f"{C}/{one}{path}", **kw)
    b = client.request(method, f"{C}/{three}{path}", **kw)
    assert a.status_code == b.status_code, (path, kw, a.text, b.text)
    if a.headers["content-type"].startswith("image/"):
        assert a.content == b.content or not same_bytes, (path, kw)
        assert {k: v for k, v in a.headers.items() if k.startswith("x-")} == \
            {k: v for k, v in b.headers.items() if k.startswith("x-")}, (path, kw)
        return a
    # a recommendation's build request names its own collection
    _close(a.json(), json.loads(b.text.replace(f"/collections/{three}/", f"/collections/{one}/")), f"{path} {kw}")
    return a


@pytest.mark.parametrize("ranks", ["average", "paper"])
@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_evaluation_ranks_globally_rho_as_one_shard_issue_13(served, ranks, data):
    """Every evaluation mode on 3 shards (each shard computing its rows' values, the coordinator
    ranking them all) gives the whole answer of one shard: one query by id or vector, many queries,
    many_to_many, "auto" temperatures, labels, a filter, the Shepard data, the roughness guide."""
    client = served[0]
    one, three, present, X = _pair(served, data)
    query, sample = (present[17], 300) if data == "real" else (present[11], 20)
    base = {"sample": sample, "seed": 5, "ranks": ranks}
    a = _same_answer(client, one, three, "POST", "/evaluate", json={"id": query, "temperatures": TEMPS, **base})
    assert a.status_code == 200 and a.json()["sample"]["size"] == sample and a.json()["sample"]["sampled"]
    bodies: list[dict[str, Any]] = [
        {"vector": X[3].astype(np.float64).tolist(), "temperature": 10.0, "ranks": ranks},  # every point
        {"queries": {"sample": 4, "seed": 3}, "temperatures": TEMPS, **base},
        {"mode": "many_to_many", "temperature": 10.0, "sample": 12, "seed": 2, "ranks": ranks},
        {"id": query, "temperatures": "auto", **base},
    ]
    if data == "synthetic":  # its points carry the payload label `c`
        flt = {"must": [{"key": "c", "match": {"value": 1}}]}
        bodies += [{"id": query, "labels": "c", "k": 3, "temperatures": TEMPS, **base},
                   {"queries": {"sample": 3, "seed": 1}, "labels": "c", "k": 2, "temperature": 1.0, **base},
                   {"vector": X[5].astype(np.float64).tolist(), "temperature": 1.0, "filter": flt, "ranks": ranks}]
    for body in bodies:
        assert _same_answer(client, one, three, "POST", "/evaluate", json=body).status_code == 200, body
    shepard = {"id": query, "metric": "tri", "temperature": 10.0, **base}
    assert _same_answer(client, one, three, "POST", "/evaluate/shepard.png", json=shepard).status_code == 200
    if ranks == "average":  # the roughness reads take no rank mode
        for params in ({"target": 1e-3, "temperatures": "1,10", "sample": sample, "seed": 3}, {"sample": sample}):
            assert _same_answer(client, one, three, "GET", "/roughness", params=params).status_code == 200
        assert _same_answer(client, one, three, "GET", "/roughness.png", same_bytes=False,
                            params={"sample": sample}).status_code == 200


def test_an_evaluation_leaves_the_rows_on_their_shards_issue_13(served, monkeypatch, rng):
    """Each shard computes its own rows' values: during a one_to_many evaluation (one query, the
    Shepard data, the roughness guide) no shard is asked for rows, every shard holding
    sampled rows computes value columns, and the shards send back far fewer bytes than the rows;
    with many queries only the query rows travel. The rhos are core's over the same rows."""
    client = served[0]
    n, d = 150, 512
    _create(client, "wide", d, 3)
    X = (rng.normal(size=(n, d)) * 3).astype(np.float32)
    _upsert(client, "wide", list(range(n)), X)
    asked: list[tuple[str, Any]] = []
    returned = [0]
    submit, result = RemoteShard.submit, RemoteShard.result

    def counting_submit(self: RemoteShard, method: str, *args: Any, **kwargs: Any) -> Any:
        asked.append((args[0], args[1:]) if method == "call" else (method, args))
        return submit(self, method, *args, **kwargs)

    def counting_result(self: RemoteShard, ref: Any, timeout: float = 120.0) -> Any:
        out = result(self, ref, timeout)
        returned[0] += len(pickle.dumps(out))
        return out

    monkeypatch.setattr(RemoteShard, "submit", counting_submit)
    monkeypatch.setattr(RemoteShard, "result", counting_result)
    holding = sum(1 for s in client.app.state.backend._members["wide"].shards if s.points())
    assert holding >= 2
    requests = [("POST", "/evaluate", {"json": {"id": 7, "temperatures": TEMPS}}),
                ("POST", "/evaluate/shepard.png", {"json": {"id": 7, "metric": "cos", "temperature": 10.0}}),
                ("GET", "/roughness", {"params": {"temperatures": "1,10"}})]
    for method, path, kw in requests:
        asked.clear()
        returned[0] = 0
        r = client.request(method, f"{C}/wide{path}", **kw)
        assert r.status_code == 200, r.text
        names = [a for a, _ in asked]
        assert "rows" not in names, (path, names)
        assert names.count("sample_columns") + names.count("sample_roughness") >= holding, (path, names)
        assert returned[0] < n * d * 4 / 8, (path, returned[0])
        if path == "/evaluate":
            want = evaluate(X, TEMPS, query=X[7], exclude=7)  # the same rows, in one array
            for got, w in zip(r.json()["results"], want.results):
                for m, rho in w.rho.items():
                    assert abs(got["rho"][m]["value"] - rho.value) <= 1e-12, (m, got["rho"][m], rho)
    asked.clear()
    body = {"queries": {"sample": 3, "seed": 1}, "temperature": 1.0}
    assert client.post(f"{C}/wide/evaluate", json=body).status_code == 200
    assert sum(len(args[0]) for a, args in asked if a == "rows") == 3  # the query vectors only


def test_points_by_id_come_from_their_owning_shards_issue_13(served):
    client, ids, _, _ = served
    want = ids[:12] + ["nope", 10**9]
    a = client.post(f"{C}/one/points/get", json={"ids": want}).json()
    b = client.post(f"{C}/three/points/get", json={"ids": want}).json()
    assert a == b and b["missing"][-2:] == ["nope", 10**9]


def test_a_write_left_prepared_resolves_from_the_catalog_at_the_next_start_issue_13(ray_local, tmp_path, rng):
    """A coordinator killed between prepare and commit leaves parts nobody may see; killed between
    commit and publish, parts everyone must see. The next start resolves both from the catalog."""
    settings = load_settings({"data_dir": str(tmp_path), "ray_address": "local", "ray_shard_cpus": SHARD_CPUS},
                             environ={})
    coord = Coordinator(settings)
    coord.open(background=False)
    coord.create_collection("p", CollectionConfig.create(4, ["euc"], shards=2))
    member = coord._members["p"]
    a, b = ids_by_shard([2, 2], 2)
    X = rng.normal(size=(2, 4)).astype(np.float32)
    lost = coord.catalog.reserve(2)  # prepared on both shards, never committed
    kept = coord.catalog.reserve(2)  # prepared on both shards and committed, never published
    for token, (ea, eb) in ((lost, (a[0], b[0])), (kept, (a[1], b[1]))):
        for j, (shard, e) in enumerate(((member.shards[0], ea), (member.shards[1], eb))):
            shard.result(shard.submit("prepare", token, 0, "upsert", ([e], X[:1], None, np.array([token + j]))))
    coord.catalog.commit("p", kept)
    assert coord.get_points("p", a + b, with_vector=False, with_payload=False) == [None] * 4
    coord.close()  # as if killed: nothing resolved (close only snapshots and stops the actors)

    again = Coordinator(settings)
    again.open(background=False)
    try:
        got = again.get_points("p", a + b, with_vector=False, with_payload=False)
        assert [p is not None for p in got] == [False, True, False, True]
        assert again.count("p") == 2 and again.get_collection("p").last_operation_id == 1
        hits = again.search("p", [again_query(X[0])])[0]
        assert sorted(hits.ids, key=str) == sorted([a[1], b[1]], key=str)
        assert all(s.result(s.submit("prepared_tokens")) == [] for s in again._members["p"].shards)
    finally:
        again.close()


def again_query(x: np.ndarray) -> Any:
    from service.coordinator import Query

    return Query(k=5, metric="euc", vector=x.astype(np.float64))


def test_a_restart_recovers_each_shard_from_its_own_files_issue_13(ray_local, tmp_path, rng):
    X = rng.normal(size=(60, 5)).astype(np.float32)
    ids = [f"r{i}" for i in range(60)]
    with ray_client(Path(tmp_path)) as client:
        assert client.put(f"{C}/r", json={"dim": 5, "metrics": ["euc", "tri"], "shards": 3}).status_code == 201
        _upsert(client, "r", ids, X)
        before = client.post(f"{C}/r/search", json={"vector": X[4].tolist(), "k": 9, "metric": "tri"}).json()
        files = sorted(p.name for p in (tmp_path / "shards").iterdir())
        assert files == ["c1-s0", "c1-s1", "c1-s2"]
    with ray_client(Path(tmp_path)) as client:
        after = client.post(f"{C}/r/search", json={"vector": X[4].tolist(), "k": 9, "metric": "tri"}).json()
        assert [h["id"] for h in after["hits"]] == [h["id"] for h in before["hits"]]
        assert client.get(f"{C}/r").json()["count"] == 60
        assert client.delete(f"{C}/r").status_code == 200
        assert not (tmp_path / "shards" / "c1-s0").exists()


def _npy(X: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, X)
    return buf.getvalue()


def test_a_bulk_ingest_streams_to_the_shards_under_one_commit_issue_13(served, rng):
    """Two 8 MiB chunks, each prepared on its shards as it arrives; a bulk that fails in its
    second chunk leaves nothing of its first on any shard."""
    client = served[0]
    X = rng.normal(size=(40_000, 64)).astype(np.float32)
    raw = {"content-type": "application/octet-stream"}
    for name, shards in (("bulk1", None), ("bulk3", 3)):
        body: dict[str, Any] = {"dim": 64, "metrics": ["euc"], **({"shards": shards} if shards else {})}
        assert client.put(f"{C}/{name}", json=body).status_code == 201
        r = client.post(f"{C}/{name}/points/bulk", params={"start": 7}, content=_npy(X), headers=raw)
        assert r.status_code == 200 and r.json()["count"] == 40_000 and r.json()["status"] == "completed", r.text
        names = "\n".join(f"n{i}" for i in range(35_000)).encode()  # fewer ids than rows: fails in chunk 2
        files = {"file": ("x.npy", _npy(X), "application/octet-stream"), "ids": ("ids.txt", names, "text/plain")}
        assert client.post(f"{C}/{name}/points/bulk", files=files).status_code == 422
        info = client.get(f"{C}/{name}").json()
        assert info["count"] == 40_000 and info["last_operation_id"] == 1
    coord: Coordinator = client.app.state.backend
    assert all(s.result(s.submit("prepared_tokens")) == [] for s in coord._members["bulk3"].shards)
    assert min(s.points() for s in coord._members["bulk3"].shards) > 12_000
    searches = [{"vector": X[i].astype(float).tolist(), "k": 10} for i in (0, 32_767, 32_768, 39_999)]
    a = client.post(f"{C}/bulk1/search/batch", json={"searches": searches}).json()["results"]
    b = client.post(f"{C}/bulk3/search/batch", json={"searches": searches}).json()["results"]
    for ra, rb in zip(a, b):
        _same(ra, rb)
    assert [r["hits"][0]["id"] for r in b] == [7, 32_774, 32_775, 40_006]


def test_more_shards_than_the_cluster_has_cpus_for_is_refused_naming_the_setting_issue_13(served):
    client = served[0]
    r = client.put(f"{C}/huge", json={"dim": 4, "shards": 200})  # 200 x 0.1 CPU on a 2-CPU Ray
    assert r.status_code == 422 and "LOGITSEARCH_RAY_SHARD_CPUS" in r.json()["detail"], r.text
    assert r.json()["errors"][0]["field"] == "shards"
    assert client.get(f"{C}/huge").status_code == 404
