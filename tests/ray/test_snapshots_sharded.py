"""Snapshots of sharded collections (issues 13 and 15): an archive holds each shard's part, taken
with the collection's writes held, and restores with its own shard count or another one (rows
re-routed by their ids), on Ray or, as one shard, without it.

The source has 3 uneven shards (one holds most points, one fewer than k, one none), updates,
deletes, payloads with a payload index and an HNSW index added after create. Every restore must
answer searches (several metrics, by vector and by id), filters, scroll pages and evaluation as the
source does: the same ids, distances, payloads and vectors, in the same insertion order.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import cli
from service.app import create_app
from service.client import Client
from service.settings import load_settings
from tests.ray.conftest import ids_by_shard, ray_client
from tests.service.conftest import problem

C = "/v1/collections"
DIM = 6
TAR = {"content-type": "application/x-tar"}
SIZES = [41, 3, 0]  # k = 5: shard 1 holds fewer than k, shard 2 none
TEMPS = [1.0, 10.0]
#: keys that differ between collections answering alike: timings, the name, the cursor (an internal
#: id, shifted on restore), the shard count
VARYING = {"took_ms", "seconds", "collection", "next_offset", "shards", "name"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _fill(client: Any, name: str, shards: int | None, ids: list[Any], X: np.ndarray) -> None:
    body: dict[str, Any] = {"dim": DIM, "metrics": ["euc", "cos", "tri", "ced"], "temperatures": TEMPS,
                            "payload_index": ["c"]}
    if shards is not None:
        body["shards"] = shards
    assert client.put(f"{C}/{name}", json=body).status_code == 201
    payloads = [{"c": i % 3, "i": i} if i % 4 else None for i in range(len(ids))]
    for lo, hi in ((0, 20), (20, len(ids))):
        r = client.put(f"{C}/{name}/points", json={"ids": ids[lo:hi], "vectors": X[lo:hi].tolist(),
                                                   "payloads": payloads[lo:hi]})
        assert r.status_code == 200, r.text
    r = client.put(f"{C}/{name}/points", json={"ids": ids[3:8], "vectors": (X[3:8] + 1).tolist()})  # updates
    assert r.status_code == 200
    assert client.post(f"{C}/{name}/points/delete", json={"ids": ids[10:13]}).status_code == 200
    r = client.post(f"{C}/{name}/indexes", json={"metric": "euc", "kind": "hnsw", "params": {"M": 8}})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while any(i["status"] != "ready" for i in client.get(f"{C}/{name}/indexes").json()["indexes"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _answers(client: Any, name: str, X: np.ndarray, ids: list[Any], hnsw: bool) -> list[Any]:
    """Searches in several metrics (vector and id queries, a filter), evaluation and every scroll page."""
    out = []
    specs = [("euc", None), ("cos", None), ("tri", 1.0), ("tri", 10.0), ("ced", 10.0)]
    for metric, t in specs:
        extra = {"temperature": t} if t is not None else {}
        for q in (X[1] + 0.25, X[30]):
            out.append(client.post(f"{C}/{name}/search", json={"vector": q.tolist(), "k": 5, "metric": metric,
                                                                "with_vector": True, **extra}).json())
        out.append(client.post(f"{C}/{name}/search", json={"id": ids[4], "k": 7, "metric": metric, **extra}).json())
    out.append(client.post(f"{C}/{name}/search", json={"vector": X[2].tolist(), "k": 6, "metric": "euc",
                                                        "filter": {"must": [{"key": "c", "match": {"value": 1}}]}}
                           ).json())
    out.append(client.post(f"{C}/{name}/search", json={"vector": X[2].tolist(), "k": 6, "metric": "euc",
                                                        "kind": "hnsw", "exact": not hnsw}).json())
    out.append(client.post(f"{C}/{name}/evaluate", json={"id": ids[2], "temperatures": TEMPS}).json())
    offset = None
    while True:
        page = client.post(f"{C}/{name}/points/scroll", json={"limit": 9, "offset": offset,
                                                              "with_vector": True}).json()
        out.append(page)
        if page["next_offset"] is None:
            break
        offset = page["next_offset"]
    return _strip(out)


def _archive(client: Any, name: str) -> bytes:
    r = client.post(f"{C}/{name}/snapshots")
    assert r.status_code == 201, r.text
    data = client.get(f"{C}/{name}/snapshots/{r.json()['name']}")
    assert data.status_code == 200
    return data.content


def _restore(client: Any, name: str, data: bytes, shards: int | None = None) -> Any:
    return client.put(f"{C}/{name}/snapshots/upload", content=data, headers=TAR,
                      params={} if shards is None else {"shards": shards})


@pytest.fixture(scope="module")
def source(ray_local, tmp_path_factory):
    gen = np.random.default_rng(31)
    owned = ids_by_shard(SIZES, 3)
    ids = [e for part in owned for e in part]
    ids = [ids[i] for i in gen.permutation(len(ids))]
    X = gen.integers(-3, 4, size=(len(ids), DIM)).astype(np.float64)  # small integers: ties
    with ray_client(tmp_path_factory.mktemp("data")) as client:
        _fill(client, "src", 3, ids, X)
        _fill(client, "flat", None, ids, X)
        yield client, ids, X


def test_a_sharded_archive_restores_as_three_and_as_one_answering_as_the_source_issue_13(source, tmp_path,
                                                                                        monkeypatch, capsys):
    client, ids, X = source
    want = _answers(client, "src", X, ids, hnsw=True)
    data = _archive(client, "src")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        m = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert names[0] == "manifest.json" and m["config"]["shards"] == 3 and len(m["shards"]) == 3
    assert [p["count"] for p in m["shards"]] == [len(p) for p in _owned_now(ids)]
    assert {f"shards/{j}/points.sqlite3" for j in range(3)} <= set(names)
    assert all(p["index_snapshot"]["included"] for p in m["shards"])

    r = _restore(client, "as3", data)  # the archive's own count: each part with its index snapshot
    assert r.status_code == 201, r.text
    assert r.json()["shards"] == 3 and r.json()["count"] == len(ids) - 3
    assert _answers(client, "as3", X, ids, hnsw=True) == want
    got = client.get(f"{C}/as3/indexes").json()["indexes"]
    assert sorted(i["id"] for i in got) == sorted(i["id"] for i in client.get(f"{C}/src/indexes").json()["indexes"])
    assert client.get(f"{C}/as3").json()["last_operation_id"] == client.get(f"{C}/src").json()["last_operation_id"]

    # re-routed into one Ray shard, indexes rebuilt; by the command line (`restore --shards 1`)
    archive = tmp_path / "src.tar"
    archive.write_bytes(data)
    monkeypatch.setattr("service.client.Client", lambda url, api_key=None: _through(client, url))
    assert cli.main(["restore", "as1", str(archive), "--shards", "1", "--url", "http://testserver"]) == 0
    assert f"restored {len(ids) - 3} points into 'as1'" in capsys.readouterr().out
    assert client.get(f"{C}/as1").json()["shards"] == 1
    flat_want = _answers(client, "src", X, ids, hnsw=False)
    assert _answers(client, "as1", X, ids, hnsw=False) == flat_want

    # the restored collections take writes like any other, and keep the insertion order after them
    for name in ("src", "as3", "as1"):
        r = client.put(f"{C}/{name}/points", json={"ids": ["new", ids[0]], "vectors": [[0.5] * DIM, [1.5] * DIM]})
        assert r.status_code == 200, r.text
    after = _answers(client, "src", X, ids, hnsw=False)
    assert _answers(client, "as3", X, ids, hnsw=False) == after == _answers(client, "as1", X, ids, hnsw=False)

    # without Ray: ?shards=1 restores an ordinary collection; more shards, or the archive's 3, are refused
    with TestClient(create_app(load_settings({"data_dir": str(tmp_path / "plain"), "warmup_seconds": 0},
                                             environ={}))) as plain:
        for shards in (None, 3):
            body = problem(_restore(plain, "x", data, shards), 422, "shards")
            assert "LOGITSEARCH_RAY_ADDRESS" in body["detail"]
            assert plain.get(f"{C}/x").status_code == 404
        r = _restore(plain, "here", data, shards=1)
        assert r.status_code == 201, r.text
        assert _answers(plain, "here", X, ids, hnsw=False) == flat_want


def _through(test_client: Any, url: str) -> Client:
    """A Client whose requests go to `test_client` (the app in process), which it leaves open."""

    class Kept:
        def __getattr__(self, name: str) -> Any:
            return getattr(test_client, name)

        def close(self) -> None:
            pass

    out = Client(url)
    out._http.close()
    out._http = Kept()  # type: ignore[assignment]
    return out


def _owned_now(ids: list[Any]) -> list[list[Any]]:
    """The source's ids per shard after its deletes (ids[10:13])."""
    from service.ray_shards import shard_of

    gone = set(map(str, ids[10:13]))
    out: list[list[Any]] = [[] for _ in range(3)]
    for e in ids:
        if str(e) not in gone:
            out[shard_of(e, 3)].append(e)
    return out


def test_an_unsharded_archive_restores_into_three_shards_issue_13(source):
    client, ids, X = source
    data = _archive(client, "flat")
    r = _restore(client, "flat3", data, shards=3)
    assert r.status_code == 201, r.text
    assert r.json()["shards"] == 3 and r.json()["count"] == len(ids) - 3
    assert _answers(client, "flat3", X, ids, hnsw=False) == _answers(client, "flat", X, ids, hnsw=False)
    owned = _owned_now(ids)
    members = client.app.state.backend._members["flat3"].shards
    assert [s.points() for s in members] == [len(p) for p in owned]  # each point on the shard its id routes to


def test_restore_refuses_an_existing_name_and_a_bad_shard_count_issue_13(source):
    client = source[0]
    data = _archive(client, "src")
    for target in ("src", "flat"):  # sharded and unsharded, both holding points
        before = client.get(f"{C}/{target}").json()
        problem(_restore(client, target, data), 409)
        problem(_restore(client, target, data, shards=1), 409)
        assert client.get(f"{C}/{target}").json() == before
    for bad in (0, 257, "two", 1.5):
        problem(_restore(client, "nope", data, shards=bad), 422, "shards")  # type: ignore[arg-type]
    assert client.get(f"{C}/nope").status_code == 404
    # a part whose rows are not the shard's own (the parts swapped) is refused, and nothing is written
    swapped = _swap_parts(data, 0, 1)
    body = problem(_restore(client, "nope", swapped), 422, "snapshot")
    assert "belongs to shard" in body["detail"]
    assert client.get(f"{C}/nope").status_code == 404


def _swap_parts(data: bytes, a: int, b: int) -> bytes:
    """The archive with shards a and b's members renamed into each other, manifest resealed."""
    import hashlib

    from service.snapshots import _archive_bytes, _canonical

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar.getmembers()}  # type: ignore[union-attr]
    m = json.loads(members.pop("manifest.json"))

    def rename(n: str) -> str:
        for x, y in ((a, b), (b, a)):
            if n.startswith(f"shards/{x}/"):
                return f"shards/{y}/" + n[len(f"shards/{x}/"):]
        return n

    members = {rename(n): v for n, v in members.items()}
    m["files"] = {rename(n): v for n, v in m["files"].items()}
    m["shards"][a], m["shards"][b] = m["shards"][b], m["shards"][a]
    for _ in range(8):
        m["manifest_sha256"] = hashlib.sha256(_canonical(m)).hexdigest()
        text = json.dumps(m).encode()
        size = _archive_bytes([len(text)] + [len(v) for v in members.values()])
        if size == m["archive_bytes"]:
            break
        m["archive_bytes"] = size
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for n, v in [("manifest.json", text), *members.items()]:
            info = tarfile.TarInfo(n)
            info.size = len(v)
            tar.addfile(info, io.BytesIO(v))
    return out.getvalue()
