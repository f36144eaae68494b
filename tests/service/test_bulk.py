"""Bulk .npy ingest: raw and multipart bodies, every malformed file refused, nothing half-written."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

import service.shard
import service.ingest
from tests.service.conftest import problem

C = "/v1/collections"
B = f"{C}/b/points/bulk"
RAW = {"content-type": "application/octet-stream"}


def npy(X) -> bytes:
    buf = io.BytesIO()
    np.save(buf, X, allow_pickle=True)
    return buf.getvalue()


@pytest.fixture
def coll(client):
    client.put(f"{C}/b", json={"dim": 5, "metrics": ["euc", "cos"]})
    return client


def _state(client):
    info = client.get(f"{C}/b").json()
    return info["count"], info["last_operation_id"]


def _stored(client, ids):
    got = client.post(f"{C}/b/points/get", json={"ids": list(ids), "with_payload": False}).json()
    assert got["missing"] == []
    return np.array([p["vector"] for p in got["points"]], dtype=np.float32)


@pytest.mark.parametrize("dtype", ["<f4", "<f8", ">f4", ">f8"])
def test_a_raw_npy_body_is_ingested_with_ids_from_start(coll, rng, dtype):
    X = rng.normal(size=(37, 5)).astype(dtype)
    r = coll.post(B, params={"start": 100}, content=npy(X), headers=RAW)
    assert r.status_code == 200 and r.json() == {"operation_id": 1, "status": "completed", "count": 37}
    np.testing.assert_array_equal(_stored(coll, range(100, 137)), X.astype(np.float32))
    hits = coll.post(f"{C}/b/search", json={"vector": X[3].astype(float).tolist(), "k": 1, "metric": "euc"}).json()
    assert hits["hits"][0]["id"] == 103


def test_multipart_with_an_ids_file(coll, rng):
    X = rng.normal(size=(12, 5)).astype(np.float32)
    names = [f"photo-{i}.jpg" for i in range(12)]
    files = {"file": ("x.npy", npy(X), "application/octet-stream"),
             "ids": ("ids.txt", ("\r\n".join(names) + "\r\n").encode(), "text/plain")}
    r = coll.post(B, files=files)
    assert r.status_code == 200 and r.json()["count"] == 12
    np.testing.assert_array_equal(_stored(coll, names), X)
    files["ids"] = ("ids.txt", "\n".join(str(i) for i in range(12)).encode(), "text/plain")
    assert coll.post(B, files=files, data={"id_type": "int"}).status_code == 200
    np.testing.assert_array_equal(_stored(coll, range(12)), X)
    assert coll.post(B, files={"file": ("x.npy", npy(X))}, data={"start": "50"}).json()["count"] == 12
    np.testing.assert_array_equal(_stored(coll, range(50, 62)), X)
    assert _state(coll) == (36, 3)


def test_a_bulk_upload_replaces_existing_points(coll, rng):
    X = rng.normal(size=(4, 5)).astype(np.float32)
    coll.post(B, params={"start": 0}, content=npy(X), headers=RAW)
    coll.post(B, params={"start": 2}, content=npy(X[::-1].copy()), headers=RAW)
    np.testing.assert_array_equal(_stored(coll, range(6)), np.vstack([X[:2], X[::-1]]))


@pytest.mark.parametrize("keep", [0, 1 << 20], ids=["indexed from SQLite", "indexed from memory"])
def test_rows_spanning_many_chunks_are_all_written_in_one_operation(coll, rng, monkeypatch, keep):
    monkeypatch.setattr(service.ingest, "NPY_CHUNK_BYTES", 5 * 4 * 7)  # 7 rows per chunk
    monkeypatch.setattr(service.shard, "BULK_KEEP_BYTES", keep)
    X = rng.normal(size=(100, 5)).astype(np.float32)
    assert coll.post(B, params={"start": 0}, content=npy(X), headers=RAW).json()["operation_id"] == 1
    np.testing.assert_array_equal(_stored(coll, range(100)), X)
    hits = coll.post(f"{C}/b/search", json={"vector": X[77].astype(float).tolist(), "k": 1, "metric": "euc"}).json()
    assert hits["hits"][0] == {"id": 77, "distance": 0.0, "payload": None}


def _corrupt(header_fix):
    raw = bytearray(npy(np.zeros((3, 5), np.float32)))
    header_fix(raw)
    return bytes(raw)


BAD_FILES = [
    ("object array (pickle)", npy(np.array([[{"a": 1}] * 5] * 2, dtype=object)), "object"),
    ("int64", npy(np.zeros((2, 5), np.int64)), "float32 or float64"),
    ("float16", npy(np.zeros((2, 5), np.float16)), "float32 or float64"),
    ("complex", npy(np.zeros((2, 5), np.complex64)), "float32 or float64"),
    ("wrong dim", npy(np.zeros((2, 4), np.float32)), "dimension 5"),
    ("1-D", npy(np.zeros(5, np.float32)), "2-D"),
    ("3-D", npy(np.zeros((2, 5, 1), np.float32)), "2-D"),
    ("no rows", npy(np.zeros((0, 5), np.float32)), "no rows"),
    ("fortran", npy(np.asfortranarray(np.zeros((3, 5), np.float32))), "Fortran"),
    ("not npy", b"PK\x03\x04 this is a zip", "not a valid .npy"),
    ("raw pickle", pickle.dumps(np.zeros((2, 5))), "not a valid .npy"),
    ("empty", b"", "not a valid .npy"),
    ("bad header", _corrupt(lambda b: b.__setitem__(slice(10, 20), b"[[[[[[[[[[")), "not a valid .npy"),
    ("huge header length", _corrupt(lambda b: b.__setitem__(slice(8, 10), b"\xff\xff")), "not a valid .npy"),
    ("version 9", _corrupt(lambda b: b.__setitem__(6, 9)), "not a valid .npy"),
    ("truncated", npy(np.zeros((3, 5), np.float32))[:-7], "truncated"),
    ("trailing bytes", npy(np.zeros((3, 5), np.float32)) + b"\0" * 4, "trailing"),
]


@pytest.mark.parametrize("what, body, needle", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_npy_is_422_and_writes_nothing(coll, what, body, needle):
    coll.post(B, params={"start": 1000}, content=npy(np.ones((2, 5), np.float32)), headers=RAW)
    before = _state(coll)
    r = problem(coll.post(B, params={"start": 0}, content=body, headers=RAW), 422, "body")
    assert needle in r["detail"], r["detail"]
    assert _state(coll) == before
    r = problem(coll.post(B, files={"file": ("x.npy", body)}, data={"start": "0"}), 422, "file")
    assert needle in r["detail"] and _state(coll) == before


def test_a_nan_in_a_late_chunk_rolls_back_the_chunks_already_inserted(coll, rng, monkeypatch):
    monkeypatch.setattr(service.ingest, "NPY_CHUNK_BYTES", 5 * 4 * 10)
    X = rng.normal(size=(95, 5)).astype(np.float32)
    X[83, 2] = np.nan
    r = problem(coll.post(B, params={"start": 0}, content=npy(X), headers=RAW), 422, "body")
    assert "row 83" in r["detail"]
    assert _state(coll) == (0, 0)
    assert coll.post(f"{C}/b/points/get", json={"ids": [0, 50]}).json()["missing"] == [0, 50]
    # and the collection keeps working
    X[83, 2] = 0
    assert coll.post(B, params={"start": 0}, content=npy(X), headers=RAW).json()["count"] == 95


@pytest.mark.parametrize("ids_text, id_type, field, needle", [
    ("a\nb\na\n", "str", "ids", "duplicate"),
    ("a\nb\n", "str", "ids", "2 ids for 3 rows"),
    ("a\nb\nc\nd\n", "str", "ids", "4 ids for 3 rows"),
    ("a\n\nc\n", "str", "ids", "line 2"),
    ("1\nx\n3\n", "int", "ids", "line 2"),
    ("1\n-2\n3\n", "int", "ids", "line 2"),
    ("a\nb\nc\n", "float", "id_type", "str or int"),
])
def test_bad_ids_files_are_422(coll, ids_text, id_type, field, needle):
    files = {"file": ("x.npy", npy(np.zeros((3, 5), np.float32))), "ids": ("ids.txt", ids_text.encode())}
    body = problem(coll.post(B, files=files, data={"id_type": id_type}), 422, field)
    assert needle in body["detail"] and _state(coll) == (0, 0)


def test_bulk_request_errors(coll):
    X = npy(np.zeros((3, 5), np.float32))
    problem(coll.post(B, content=X, headers=RAW), 422, "start")
    problem(coll.post(B, params={"start": 2**63 - 2}, content=X, headers=RAW), 422, "start")
    problem(coll.post(B, params={"start": -1}, content=X, headers=RAW), 422, "start")
    problem(coll.post(B, content=X, headers={"content-type": "text/plain"}), 415)
    problem(coll.post(B, files={"ids": ("ids.txt", b"1\n")}), 422, "file")
    problem(coll.post(f"{C}/ghost/points/bulk", params={"start": 0}, content=X, headers=RAW), 404)
    assert _state(coll) == (0, 0)


def test_a_body_over_max_body_bytes_is_413_before_anything_is_written(client_with):
    c = client_with(max_body_bytes=1000)
    c.put(f"{C}/b", json={"dim": 5, "metrics": ["euc"]})
    X = npy(np.zeros((100, 5), np.float32))

    def pieces():
        for s in range(0, len(X), 256):
            yield X[s:s + 256]

    problem(c.post(B, params={"start": 0}, content=pieces(), headers=RAW), 413)
    problem(c.post(B, params={"start": 0}, content=X, headers=RAW), 413)
    assert c.get(f"{C}/b").json()["count"] == 0


def test_multipart_payloads_as_json_lines_are_stored_row_by_row(coll, rng):
    X = rng.normal(size=(4, 5)).astype(np.float32)
    lines = '{"label": 3, "file": "a.jpg"}\n\nnull\n{"split": "val", "nested": {"x": [1, 2]}}\n'
    r = coll.post(B, files={"file": ("x.npy", npy(X)), "payloads": ("p.jsonl", lines.encode())}, data={"start": "10"})
    assert r.status_code == 200 and r.json()["count"] == 4
    got = coll.post(f"{C}/b/points/get", json={"ids": [10, 11, 12, 13]}).json()["points"]
    assert [p["payload"] for p in got] == [{"label": 3, "file": "a.jpg"}, None, None,
                                           {"split": "val", "nested": {"x": [1, 2]}}]
    hit = coll.post(f"{C}/b/search", json={"vector": X[0].astype(float).tolist(), "k": 1, "metric": "euc"}).json()
    assert hit["hits"][0]["payload"] == {"label": 3, "file": "a.jpg"}
    # with an ids file too, and payloads as a plain form field
    files = {"file": ("x.npy", npy(X[:2])), "ids": ("ids.txt", b"u\nv\n")}
    assert coll.post(B, files=files, data={"payloads": '{"k": 1}\n{"k": 2}'}).status_code == 200
    assert [p["payload"] for p in coll.post(f"{C}/b/points/get", json={"ids": ["u", "v"]}).json()["points"]] == [
        {"k": 1}, {"k": 2}]


@pytest.mark.parametrize("lines,needle", [
    ('{"a": 1}\n{"a": 2}\n', "2 lines for 3 rows"),
    ('{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a": 4}\n', "4 lines for 3 rows"),
    ('{"a": 1}\n[1, 2]\n{"a": 3}\n', "line 2: a payload must be a JSON object"),
    ('{"a": 1}\n{"a": 2}\n{oops\n', "line 3: not JSON"),
    ('{"a": NaN}\n\n\n', "line 1: must be JSON without NaN"),
    ('{"big": "' + "x" * 70_000 + '"}\n\n\n', "line 1: at most 65536 bytes"),
])
def test_bad_payload_lines_are_422_naming_the_line_and_write_nothing(coll, lines, needle):
    files = {"file": ("x.npy", npy(np.zeros((3, 5), np.float32))), "payloads": ("p.jsonl", lines.encode())}
    body = problem(coll.post(B, files=files, data={"start": "0"}), 422, "payloads")
    assert needle in body["detail"] and _state(coll) == (0, 0)


def test_the_client_and_cli_send_payloads(coll, rng, tmp_path, monkeypatch, capsys):
    from service import cli
    from service.client import Client

    X = rng.normal(size=(3, 5)).astype(np.float32)
    client = Client("http://testserver", transport=coll._transport)
    assert client.upload_npy("b", X, start=0, payloads=[{"n": 0}, None, {"n": 2}])["count"] == 3
    assert [p["payload"] for p in coll.post(f"{C}/b/points/get", json={"ids": [0, 1, 2]}).json()["points"]] == [
        {"n": 0}, None, {"n": 2}]
    with pytest.raises(ValueError, match="2 payloads for 3 rows"):
        client.upload_npy("b", X, start=0, payloads=[{"n": 0}, None])
    # the CLI reads a JSON Lines file (its client is pointed at the same app)
    np.save(tmp_path / "m.npy", X)
    (tmp_path / "p.jsonl").write_text('{"cli": 1}\nnull\n{"cli": 3}\n')
    monkeypatch.setattr(cli, "_client", lambda args: Client("http://testserver", transport=coll._transport))
    assert cli.main(["ingest", "b", str(tmp_path / "m.npy"), "--start", "20", "--payloads",
                     str(tmp_path / "p.jsonl"), "--quiet"]) == 0
    got = coll.post(f"{C}/b/points/get", json={"ids": [20, 21, 22]}).json()["points"]
    assert [p["payload"] for p in got] == [{"cli": 1}, None, {"cli": 3}]
    (tmp_path / "bad.jsonl").write_text('{"cli": 1}\n')
    assert cli.main(["ingest", "b", str(tmp_path / "m.npy"), "--payloads", str(tmp_path / "bad.jsonl")]) == 2
    assert "1 lines for 3 rows" in capsys.readouterr().err
