"""Collection snapshots in process (issue 15): the archive, restore with shifted ids, and every refusal.

Refusals are checked for their reason and for writing nothing: the collection stays absent (or
unchanged), and the database holds what it held. The round trip across real server processes is in
tests/e2e/test_snapshots_e2e.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sqlite3
import tarfile
import time

import numpy as np
import pytest

from service.snapshots import BLOCK, FORMAT, MANIFEST, POINTS, VERSION, _canonical
from tests.service.conftest import make_client, problem

C = "/v1/collections"
TAR = {"content-type": "application/x-tar"}


def _fill(client, name, rng, n=600, dim=12, kind="flat", params=None, metrics=("euc", "cos", "tri", "ced")):
    r = client.put(f"{C}/{name}", json={"dim": dim, "metrics": list(metrics), "temperatures": [1, 10],
                                        "index": {"kind": kind, "params": params or {}}})
    assert r.status_code == 201, r.text
    X = rng.normal(size=(n, dim)).astype(np.float32) * 3
    ids = [i if i % 3 else f"p{i}" for i in range(n)]  # int and str ids mixed
    payloads = [{"i": i, "tag": {"even": i % 2 == 0}} if i % 5 else None for i in range(n)]
    r = client.put(f"{C}/{name}/points", json={"ids": ids, "vectors_b64": base64.b64encode(X.tobytes()).decode(),
                                               "payloads": payloads})
    assert r.status_code == 200, r.text
    gone = ids[::7]
    assert client.post(f"{C}/{name}/points/delete", json={"ids": gone}).status_code == 200
    return X, ids


def _answers(client, name, X, ids, kinds):
    """Every search this collection can answer for a few queries, and evaluations, minus timings."""
    out = []
    specs = [(m, t) for m in ("euc", "cos") for t in (None,)] + [(m, t) for m in ("tri", "ced") for t in (1, 10)]
    for kind in kinds:
        for metric, t in specs:
            for q in (X[1] + 0.01, X[50]):
                body = {"vector": q.tolist(), "k": 15, "metric": metric, "kind": kind, "with_vector": True}
                if t is not None:
                    body["temperature"] = t
                out.append(client.post(f"{C}/{name}/search", json=body).json())
            body = {"id": ids[4], "k": 9, "metric": metric, "kind": kind, **({"temperature": t} if t else {})}
            out.append(client.post(f"{C}/{name}/search", json=body).json())
    out.append(client.post(f"{C}/{name}/evaluate", json={"id": ids[2], "temperatures": [1, 10]}).json())
    out.append(client.post(f"{C}/{name}/points/scroll", json={"limit": 1000, "with_vector": True}).json())
    return strip(out)


#: keys that differ between two collections answering alike: timings, the collection's name, and
#: the scroll cursor (an internal id, shifted on restore)
VARYING = {"took_ms", "seconds", "collection", "next_offset"}


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def _snapshot(client, name):
    r = client.post(f"{C}/{name}/snapshots")
    assert r.status_code == 201, r.text
    info = r.json()
    data = client.get(f"{C}/{name}/snapshots/{info['name']}")
    assert data.status_code == 200 and data.headers["content-type"] == "application/x-tar"
    return info, data.content


def _described(client, name):
    d = client.get(f"{C}/{name}").json()
    d.pop("name")
    return d


@pytest.mark.parametrize("kind,params", [("hnsw", {"M": 8, "ef_construction": 40}), ("ivf", {"nlist": 8, "nprobe": 2})])
def test_a_restored_collection_with_shifted_ids_answers_exactly_as_the_original(tmp_path, rng, kind, params):
    with make_client(tmp_path / "data") as client:
        X, ids = _fill(client, "orig", rng, kind=kind, params=params, metrics=("euc", "tri", "ced"))
        info, data = _snapshot(client, "orig")
        assert info["indexes_included"] and info["count"] == len(ids) - len(ids[::7])
        r = client.put(f"{C}/copy/snapshots/upload", content=data, headers=TAR)
        assert r.status_code == 201, r.text
        # the same database: the copy's internal ids are all new (shifted past the original's)
        want, got = (_answers(client, n, X, ids, [kind]) for n in ("orig", "copy"))
        assert got == want
        assert any(a.get("how") == "approximate" for a in got)
        assert _described(client, "copy") == _described(client, "orig")
    with make_client(tmp_path / "data") as client:  # and after a restart, from its own index snapshot
        assert _answers(client, "copy", X, ids, [kind]) == want


def test_the_archive_is_a_tar_with_a_checksummed_manifest_first(tmp_path, rng):
    with make_client(tmp_path / "data") as client:
        _fill(client, "v", rng, n=200)
        info, data = _snapshot(client, "v")
        listed = client.get(f"{C}/v/snapshots").json()["snapshots"]
        assert [s["name"] for s in listed] == [info["name"]] and listed[0]["bytes"] == len(data)
    infos, raw = _members(data)
    names = [i.name for i in infos]
    assert names[0] == MANIFEST and POINTS in names and "indexes/manifest.json" in names
    m = json.loads(raw[MANIFEST])
    assert m["format"] == FORMAT and m["version"] == VERSION and m["archive_bytes"] == len(data)
    assert m["manifest_sha256"] == hashlib.sha256(_canonical(m)).hexdigest()
    assert m["last_seq"] == info["last_operation_id"] == 2 and m["count"] == info["count"]
    assert m["config"]["dim"] == 12 and [d["status"] for d in m["indexes"]] == ["ready"] * 6
    for name in names[1:]:
        assert hashlib.sha256(raw[name]).hexdigest() == m["files"][name]["sha256"], name
    assert set(m["files"]) == set(names[1:])


def test_snapshots_are_listed_downloaded_and_deleted(tmp_path, rng):
    with make_client(tmp_path / "data") as client:
        _fill(client, "v", rng, n=50)
        a, _ = _snapshot(client, "v")
        client.put(f"{C}/v/points", json={"points": [{"id": "new", "vector": [0.0] * 12}]})
        b, _ = _snapshot(client, "v")
        assert b["last_operation_id"] == a["last_operation_id"] + 1 and b["count"] == a["count"] + 1
        assert [s["name"] for s in client.get(f"{C}/v/snapshots").json()["snapshots"]] == [a["name"], b["name"]]
        assert client.delete(f"{C}/v/snapshots/{a['name']}").json() == {"deleted": a["name"]}
        problem(client.get(f"{C}/v/snapshots/{a['name']}"), 404)
        problem(client.get(f"{C}/v/snapshots/..%2F..%2Flogitsearch.sqlite3"), 404)
        problem(client.post(f"{C}/missing/snapshots"), 404)
        problem(client.get(f"{C}/missing/snapshots"), 404)
        client.delete(f"{C}/v")  # a collection's snapshots outlive it
        assert [s["name"] for s in client.get(f"{C}/v/snapshots").json()["snapshots"]] == [b["name"]]


# --- refusals --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(bytes of a good archive, its tar members as (name, header offset, data offset, size))."""
    rng = np.random.default_rng(7)
    with make_client(tmp_path_factory.mktemp("good")) as client:
        _fill(client, "v", rng, n=300, kind="hnsw", params={"M": 8, "ef_construction": 40}, metrics=("euc",))
        _, data = _snapshot(client, "v")
    members = [(m.name, m.offset, m.offset_data, m.size) for m in _members(data)[0]]
    return data, members


@pytest.fixture
def target(tmp_path):
    """A server holding one collection "kept" (to see that refusals leave it alone)."""
    with make_client(tmp_path / "target") as client:
        client.put(f"{C}/kept", json={"dim": 12, "metrics": ["euc"]})
        client.put(f"{C}/kept/points", json={"points": [{"id": 1, "vector": [1.0] * 12, "payload": {"a": 1}}]})
        yield client


def _refused(client, data, reason, name="fresh"):
    before = [_described(client, c["name"]) for c in client.get(C).json()["collections"]]
    db = client.app.state.backend.store.path
    rows = sqlite3.connect(db).execute("SELECT count(*), (SELECT value FROM meta) FROM points").fetchone()
    body = problem(client.put(f"{C}/{name}/snapshots/upload", content=data, headers=TAR), 422, "snapshot")
    assert reason in body["detail"] and "nothing was written" in body["detail"], body["detail"]
    assert [_described(client, c["name"]) for c in client.get(C).json()["collections"]] == before
    assert sqlite3.connect(db).execute("SELECT count(*), (SELECT value FROM meta) FROM points").fetchone() == rows
    problem(client.get(f"{C}/{name}"), 404)
    return body


def _retar(data, edit):
    """The archive with its manifest (and members) edited by `edit(manifest, files)`, then resealed:
    checksums and the archive size recomputed, so only the edit differs."""
    files = _members(data)[1]
    m = json.loads(files.pop(MANIFEST))
    edit(m, files)
    for name, raw in files.items():
        m["files"][name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    for _ in range(4):
        m["manifest_sha256"] = hashlib.sha256(_canonical(m)).hexdigest()
        text = json.dumps(m).encode()
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as t:
            for name, raw in [(MANIFEST, text), *files.items()]:
                t.addfile(_info(name, len(raw)), io.BytesIO(raw))
        if len(out.getvalue()) == m["archive_bytes"]:
            break
        m["archive_bytes"] = len(out.getvalue())
    return out.getvalue()


def _members(data):
    """(TarInfo of each member in order, name -> contents) of an archive."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
        return infos, {i.name: tar.extractfile(i).read() for i in infos}


def _info(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def test_the_good_archive_restores(target, archive):
    data, _ = archive
    r = target.put(f"{C}/fresh/snapshots/upload", content=data, headers=TAR)
    assert r.status_code == 201 and r.json()["count"] == 300 - 43


@pytest.mark.parametrize("cut", [100, BLOCK, 5000, "half", -BLOCK * 21, -1])
def test_a_truncated_archive_is_refused(target, archive, cut):
    data, _ = archive
    end = len(data) // 2 if cut == "half" else cut
    body = _refused(target, data[:end], "")
    assert "truncated" in body["detail"] or "too short" in body["detail"] or "damaged" in body["detail"]


def test_bytes_appended_to_an_archive_are_refused(target, archive):
    _refused(target, archive[0] + b"\0" * BLOCK, "more than its manifest says")


def test_a_flipped_byte_anywhere_is_refused(target, archive):
    """Headers (their checksums), the manifest (its own checksum), member data (sha256), the zero
    padding between members and at the end: one flipped bit in any of them is refused."""
    data, members = archive
    places = {"end of archive": len(data) - 3}
    for name, header, start, size in members:
        places[f"{name} header name"] = header + 2
        places[f"{name} header size field"] = header + 130
        places[f"{name} data"] = start + size // 2
        if size % BLOCK:
            places[f"{name} padding"] = start + size + 1
    for where, pos in places.items():
        bad = bytearray(data)
        bad[pos] ^= 0x04
        body = problem(target.put(f"{C}/fresh/snapshots/upload", content=bytes(bad), headers=TAR), 422, "snapshot")
        assert "nothing was written" in body["detail"], where
    problem(target.get(f"{C}/fresh"), 404)
    assert len(places) > 20


def test_a_tar_without_manifest_is_refused(target, archive):
    infos, raw = _members(archive[0])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for m in infos[1:]:
            t.addfile(m, io.BytesIO(raw[m.name]))
    _refused(target, out.getvalue(), "the first member is 'points.sqlite3', not manifest.json")


def test_a_foreign_archive_is_refused(target, archive, rng):
    _refused(target, rng.bytes(30_000), "not a tar archive")
    _refused(target, b"", "too short")
    foreign = _retar(archive[0], lambda m, f: m.update(format="qdrant-snapshot"))
    _refused(target, foreign, "not a logitsearch collection snapshot (format 'qdrant-snapshot'")


def test_an_archive_of_a_future_format_version_is_refused(target, archive):
    body = _refused(target, _retar(archive[0], lambda m, f: m.update(version=VERSION + 1)),
                    f"format version {VERSION + 1} is newer than this logitsearch reads ({VERSION})")
    assert body["errors"][0]["field"] == "snapshot"


def test_a_resealed_archive_with_bad_contents_is_refused(target, archive, tmp_path):
    """Checksums only catch damage: an archive resealed after an edit is still checked row by row."""
    def nan_vector(m, files):
        path = tmp_path / "p.sqlite3"
        path.write_bytes(files[POINTS])
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE points SET vector = ? WHERE iid = (SELECT min(iid) FROM points)",
                         (np.full(12, np.nan, "<f4").tobytes(),))
        files[POINTS] = path.read_bytes()

    _refused(target, _retar(archive[0], nan_vector), "the vector holds NaN or infinity")
    _refused(target, _retar(archive[0], lambda m, f: m.update(count=m["count"] + 1)), "its manifest says")
    _refused(target, _retar(archive[0], lambda m, f: m["config"].update(dim=0)), "config")
    _refused(target, _retar(archive[0], lambda m, f: m["indexes"].append(m["indexes"][0])), "appears twice")
    _refused(target, _retar(archive[0], lambda m, f: m["indexes"][0].update(error=[1])), "indexes.0 is invalid")
    rows = "indexes/rows.npy"
    _refused(target, _retar(archive[0], lambda m, f: f.update({rows: f[rows][:-4] + b"\0\0\0\0"})),
             "index snapshot")


def test_restore_into_a_collection_with_points_is_refused_and_leaves_it_alone(target, archive):
    target.put(f"{C}/v", json={"dim": 12, "metrics": ["euc"], "temperatures": [1, 10],
                              "index": {"kind": "hnsw", "params": {"M": 8, "ef_construction": 40}}})
    target.put(f"{C}/v/points", json={"points": [{"id": "x", "vector": [2.0] * 12}]})
    before = _described(target, "v")
    body = problem(target.put(f"{C}/v/snapshots/upload", content=archive[0], headers=TAR), 409)
    assert "holds 1 points" in body["detail"]
    assert _described(target, "v") == before
    assert target.post(f"{C}/v/points/get", json={"ids": ["x"]}).json()["missing"] == []


def test_restore_into_an_empty_collection_needs_the_same_config(target, archive):
    target.put(f"{C}/other", json={"dim": 12, "metrics": ["euc"]})
    body = problem(target.put(f"{C}/other/snapshots/upload", content=archive[0], headers=TAR), 409)
    assert "different configuration" in body["detail"]
    target.put(f"{C}/v", json={"dim": 12, "metrics": ["euc"], "temperatures": [1, 10],
                              "index": {"kind": "hnsw", "params": {"M": 8, "ef_construction": 40}}})
    target.put(f"{C}/v/points", json={"points": [{"id": "x", "vector": [2.0] * 12}]})
    target.post(f"{C}/v/points/delete", json={"ids": ["x"]})
    r = target.put(f"{C}/v/snapshots/upload", content=archive[0], headers=TAR)
    assert r.status_code == 201 and r.json()["count"] == 257, r.text
    assert target.post(f"{C}/v/points/get", json={"ids": ["x", 1]}).json()["missing"] == ["x"]


def test_an_upload_of_another_content_type_is_refused(target, archive):
    problem(target.put(f"{C}/fresh/snapshots/upload", content=archive[0],
                       headers={"content-type": "application/json"}), 415)
    problem(target.put(f"{C}/bad name/snapshots/upload", content=archive[0], headers=TAR), 422, "name")


def test_the_read_key_can_list_and_download_but_not_take_or_restore(tmp_path, archive):
    keys = {"api_key": "w" * 24, "read_api_key": "r" * 24}
    with make_client(tmp_path / "data", **keys) as client:
        write, read = ({"Authorization": f"Bearer {k}"} for k in keys.values())
        client.put(f"{C}/v", json={"dim": 12, "metrics": ["euc"]}, headers=write)
        problem(client.post(f"{C}/v/snapshots", headers=read), 403)
        problem(client.put(f"{C}/new/snapshots/upload", content=archive[0], headers={**TAR, **read}), 403)
        problem(client.get(f"{C}/new", headers=read), 404)
        assert client.get(f"{C}/v/snapshots", headers=read).json() == {"snapshots": []}
        name = client.post(f"{C}/v/snapshots", headers=write).json()["name"]
        assert client.get(f"{C}/v/snapshots/{name}", headers=read).status_code == 200
        problem(client.delete(f"{C}/v/snapshots/{name}", headers=read), 403)
        problem(client.post(f"{C}/v/snapshots"), 401)


def test_openapi_documents_the_snapshot_routes(tmp_path):
    with make_client(tmp_path / "data") as client:
        paths = client.get("/openapi.json").json()["paths"]
    base = "/v1/collections/{name}/snapshots"
    assert set(paths[base]) == {"get", "post"} and set(paths[f"{base}/{{snapshot}}"]) == {"get", "delete"}
    upload = paths[f"{base}/upload"]["put"]
    assert set(upload["requestBody"]["content"]) == {"application/x-tar", "application/octet-stream"}
    assert {"201", "409", "413", "415", "422"} <= set(upload["responses"])
    assert "application/x-tar" in paths[f"{base}/{{snapshot}}"]["get"]["responses"]["200"]["content"]


def test_a_snapshot_while_an_index_builds_leaves_the_indexes_out_and_the_restore_builds_them(
        tmp_path, rng, monkeypatch):
    from service.shard import CollectionShard

    with make_client(tmp_path / "a") as client:
        X, ids = _fill(client, "v", rng, n=300)
        with monkeypatch.context() as m:
            m.setattr(CollectionShard, "build", lambda self, spec: None)  # the build never ends
            assert client.post(f"{C}/v/indexes", json={"metric": "tri", "temperature": 100}).status_code == 202
            info, data = _snapshot(client, "v")
        assert not info["indexes_included"] and "tri-t100-flat was still building" in info["rebuild_reason"]
        want = _answers(client, "v", X, ids, ["flat"])
    with make_client(tmp_path / "b") as client:
        r = client.put(f"{C}/v/snapshots/upload", content=data, headers=TAR)
        assert r.status_code == 201, r.text
        assert _answers(client, "v", X, ids, ["flat"]) == want
        for _ in range(200):
            states = {i["id"]: i["status"] for i in client.get(f"{C}/v/indexes").json()["indexes"]}
            if states["tri-t100-flat"] == "ready":
                break
            time.sleep(0.05)
        assert set(states.values()) == {"ready"}
        hits = client.post(f"{C}/v/search", json={"id": ids[1], "k": 3, "metric": "tri", "temperature": 100})
        assert hits.status_code == 200 and len(hits.json()["hits"]) == 3


def test_an_upload_over_the_body_limit_is_refused_and_nothing_is_written(client_with, archive):
    client = client_with(max_body_bytes=len(archive[0]) - 1)
    body = problem(client.put(f"{C}/fresh/snapshots/upload", content=archive[0], headers=TAR), 413, "body")
    assert "LOGITSEARCH_MAX_BODY_BYTES" in body["detail"]

    def chunked():  # no Content-Length: cut while streaming
        yield archive[0][: len(archive[0]) // 2]
        yield archive[0][len(archive[0]) // 2:]

    problem(client.put(f"{C}/fresh/snapshots/upload", content=chunked(), headers=TAR), 413, "body")
    problem(client.get(f"{C}/fresh"), 404)
    work = client.app.state.snapshots.root / ".work"
    assert not work.exists() or list(work.iterdir()) == []


def test_a_restored_collection_answers_filters_from_its_own_payload_index(tmp_path, rng):
    # the archive carries the declared keys; the restore must index the restored payloads too
    with make_client(tmp_path / "data") as client:
        X, _ids = _fill(client, "orig", rng, metrics=("euc", "tri"))
        r = client.put(f"{C}/orig/payload_index", json={"fields": ["i", "tag.even"]})
        assert r.status_code == 200, r.text
        _, data = _snapshot(client, "orig")
        assert client.put(f"{C}/copy/snapshots/upload", content=data, headers=TAR).status_code == 201
        flt = {"must": [{"key": "tag.even", "match": {"value": True}}, {"key": "i", "range": {"lt": 300}}]}
        out = {}
        for name in ("orig", "copy"):
            scroll = client.post(f"{C}/{name}/points/scroll", json={"limit": 1000, "filter": flt}).json()
            search = client.post(f"{C}/{name}/search", json={"vector": X[3].tolist(), "k": 7, "metric": "tri",
                                                              "temperature": 10, "filter": flt}).json()
            out[name] = strip([scroll, search])
        assert out["copy"] == out["orig"]
        assert len(out["orig"][0]["points"]) > 50
