"""Points over HTTP: upsert forms, ids kept exactly as given, validation and limits, get, delete, scroll."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from tests.service.conftest import problem

C = "/v1/collections"
P = f"{C}/p/points"


@pytest.fixture
def coll(client):
    client.put(f"{C}/p", json={"dim": 3, "metrics": ["euc", "tri"], "temperatures": [1]})
    return client


def _count(client):
    info = client.get(f"{C}/p").json()
    return info["count"], info["last_operation_id"]


def test_row_wise_and_column_wise_upserts_store_the_same_thing(coll):
    rows = [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]]
    r = coll.put(P, json={"points": [{"id": "a", "vector": rows[0], "payload": {"label": "cat"}},
                                     {"id": 7, "vector": rows[1]}]})
    assert r.status_code == 200 and r.json() == {"operation_id": 1, "status": "completed", "count": 2}
    r = coll.put(P, json={"ids": ["b", 8], "vectors": rows, "payloads": [{"label": "cat"}, None]})
    assert r.json()["operation_id"] == 2
    got = coll.post(f"{P}/get", json={"ids": ["a", "b", 7, 8]}).json()
    assert [p["id"] for p in got["points"]] == ["a", "b", 7, 8] and got["missing"] == []
    assert [p["vector"] for p in got["points"]] == [rows[0], rows[0], rows[1], rows[1]]
    assert [p["payload"] for p in got["points"]] == [{"label": "cat"}, {"label": "cat"}, None, None]


def test_vectors_b64_is_little_endian_float32_rows(coll):
    X = np.array([[1.5, -2.25, 3.0], [0.1, 0.2, 0.3]], dtype="<f4")
    body = {"ids": [1, 2], "vectors_b64": base64.b64encode(X.tobytes()).decode()}
    assert coll.put(P, json=body).status_code == 200
    got = coll.post(f"{P}/get", json={"ids": [1, 2]}).json()["points"]
    np.testing.assert_array_equal(np.array([p["vector"] for p in got], dtype=np.float32), X)


def test_int_and_string_ids_are_different_points_and_come_back_as_given(coll):
    coll.put(P, json={"ids": [5, "5", "05", 2**63 - 1], "vectors": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]})
    assert _count(coll)[0] == 4
    assert coll.get(f"{P}/5").json()["vector"] == [1, 0, 0]
    assert coll.get(f"{P}/5", params={"id_type": "str"}).json() == {"id": "5", "vector": [0, 1, 0], "payload": None}
    assert coll.get(f"{P}/05").json()["id"] == "05"
    assert coll.get(f"{P}/{2**63 - 1}").json()["id"] == 2**63 - 1
    hits = coll.post(f"{C}/p/search", json={"vector": [0, 1, 0], "k": 4, "metric": "euc"}).json()["hits"]
    assert hits[0]["id"] == "5" and {type(h["id"]) for h in hits} == {int, str}
    assert {h["id"] for h in hits} == {5, "5", "05", 2**63 - 1}


def test_an_upsert_replaces_vector_and_payload(coll):
    coll.put(P, json={"points": [{"id": "x", "vector": [1, 1, 1], "payload": {"v": 1}}]})
    coll.put(P, json={"points": [{"id": "x", "vector": [2, 2, 2]}]})
    assert coll.get(f"{P}/x").json() == {"id": "x", "vector": [2, 2, 2], "payload": None}
    assert _count(coll) == (1, 2)
    hits = coll.post(f"{C}/p/search", json={"vector": [2, 2, 2], "k": 5, "metric": "euc"}).json()["hits"]
    assert [(h["id"], h["distance"]) for h in hits] == [("x", 0.0)]


BAD_UPSERTS = [
    ({"points": []}, 422, "points"),
    ({"ids": [], "vectors": []}, 422, "ids"),
    ({"ids": [1, 2, 1], "vectors": [[0, 0, 0]] * 3}, 422, "ids.2"),
    ({"points": [{"id": "a", "vector": [0, 0, 0]}, {"id": "a", "vector": [1, 1, 1]}]}, 422, "points.1.id"),
    ({"ids": [1, 2], "vectors": [[0, 0, 0], [0, 0]]}, 422, "vectors.1"),
    ({"points": [{"id": 1, "vector": [0, 0, 0]}] * 1 + [{"id": 2, "vector": [0, 0, 0, 0]}]}, 422, "points.1.vector"),
    ({"ids": [1], "vectors": [[0, 0, 0]], "vectors_b64": "AAAA"}, 422, "vectors"),
    ({"ids": [1], "vectors_b64": "AAAA"}, 422, "vectors_b64"),
    ({"ids": [1], "vectors_b64": "not base64!"}, 422, "vectors_b64"),
    ({"ids": [1, 2], "vectors": [[0, 0, 0]]}, 422, "vectors"),
    ({"ids": [1], "vectors": [[0, 0, 0]], "payloads": [None, None]}, 422, "payloads"),
    ({"ids": ["x" * 257], "vectors": [[0, 0, 0]]}, 422, "ids.0"),
    ({"ids": [""], "vectors": [[0, 0, 0]]}, 422, "ids.0"),
    ({"ids": [-1], "vectors": [[0, 0, 0]]}, 422, "ids.0"),
    ({"ids": [2**63], "vectors": [[0, 0, 0]]}, 422, "ids.0"),
    ({"ids": [True], "vectors": [[0, 0, 0]]}, 422, "ids.0"),
    ({"ids": [1.0], "vectors": [[0, 0, 0]]}, 422, "ids.0"),
    ({"points": [{"id": 1, "vector": [0, "a", 0]}]}, 422, "points.0.vector.1"),
    ({"ids": [1], "vectors": [[1e39, 0, 0]]}, 422, "vectors.0"),
    ({"points": [{"id": 1, "vector": [0, 0, 0], "payload": [1, 2]}]}, 422, "points.0.payload"),
    ({"points": [{"id": 1, "vector": [0, 0, 0], "payload": {"big": "x" * 70_000}}]}, 422, "points.0.payload"),
    ({"points": [{"id": 1, "vector": [0, 0, 0]}], "ids": [1]}, 422, "points"),
    ({"vectors": [[0, 0, 0]]}, 422, "ids"),
    ({"ids": [1], "vectors": [[0, 0, 0]], "extra": 1}, 422, "extra"),
]


@pytest.mark.parametrize("body, status, field", BAD_UPSERTS)
def test_bad_upserts_are_4xx_naming_the_field_and_change_nothing(coll, body, status, field):
    coll.put(P, json={"ids": ["keep"], "vectors": [[9, 9, 9]]})
    before = _count(coll)
    problem(coll.put(P, json=body), status, field)
    assert _count(coll) == before
    assert coll.post(f"{P}/get", json={"ids": [1, 2, "a"]}).json()["missing"] == [1, 2, "a"]


@pytest.mark.parametrize("token, row", [("NaN", 1), ("Infinity", 0), ("-Infinity", 1)])
def test_non_finite_numbers_are_refused_naming_the_row(coll, token, row):
    rows = ["[0, 0, 0]", "[0, 0, 0]"]
    rows[row] = f"[0, {token}, 0]"
    body = '{"ids": [1, 2], "vectors": [' + ", ".join(rows) + "]}"
    problem(coll.put(P, content=body, headers={"content-type": "application/json"}), 422, f"vectors.{row}")
    assert _count(coll) == (0, 0)


def test_malformed_json_and_wrong_content_type(coll):
    problem(coll.put(P, content=b'{"ids": [1', headers={"content-type": "application/json"}), 422, "body")
    problem(coll.put(P, content=b'{"ids": [1], "vectors": [[0,0,0]]}', headers={"content-type": "text/plain"}),
            415, "content-type")
    problem(coll.put(P, content=b"", headers={"content-type": "application/json"}), 422, "body")


def test_batch_and_json_body_limits_name_the_limit(client_with):
    c = client_with(max_batch=3, max_json_bytes=2000)
    c.put(f"{C}/p", json={"dim": 3, "metrics": ["euc"]})
    body = problem(c.put(P, json={"ids": [1, 2, 3, 4], "vectors": [[0, 0, 0]] * 4}), 413, "ids")
    assert "3" in body["detail"] and "LOGITSEARCH_MAX_BATCH" in body["detail"]
    problem(c.post(f"{P}/get", json={"ids": [1, 2, 3, 4]}), 413, "ids")
    problem(c.post(f"{P}/delete", json={"ids": [1, 2, 3, 4]}), 413, "ids")
    big = {"points": [{"id": 1, "vector": [0, 0, 0], "payload": {"note": "y" * 3000}}]}
    body = problem(c.put(P, json=big), 413)
    assert "2000" in body["detail"] and "LOGITSEARCH_MAX_JSON_BYTES" in body["detail"]
    assert c.get(f"{C}/p").json()["count"] == 0


def test_chunked_json_body_over_the_limit_is_413(client_with):
    c = client_with(max_json_bytes=500)
    c.put(f"{C}/p", json={"dim": 3, "metrics": ["euc"]})
    payload = ('{"ids": [1], "vectors": [[0, 0, 0]], "payloads": [{"n": "' + "z" * 1000 + '"}]}').encode()

    def pieces():
        yield payload[:300]
        yield payload[300:]

    problem(c.put(P, content=pieces(), headers={"content-type": "application/json"}), 413)
    assert c.get(f"{C}/p").json()["count"] == 0


def test_get_one_point_and_unknown_ids(coll):
    coll.put(P, json={"points": [{"id": "img-1.jpg", "vector": [1, 2, 3], "payload": {"label": 3}}]})
    assert coll.get(f"{P}/img-1.jpg").json() == {"id": "img-1.jpg", "vector": [1, 2, 3], "payload": {"label": 3}}
    assert coll.get(f"{P}/img-1.jpg", params={"with_vector": "false"}).json() == {"id": "img-1.jpg",
                                                                                  "payload": {"label": 3}}
    problem(coll.get(f"{P}/nope"), 404)
    problem(coll.get(f"{P}/abc", params={"id_type": "int"}), 422, "id")
    problem(coll.get(f"{C}/nope/points/1"), 404)
    got = coll.post(f"{P}/get", json={"ids": ["nope", "img-1.jpg"], "with_vector": False}).json()
    assert got == {"points": [{"id": "img-1.jpg", "payload": {"label": 3}}], "missing": ["nope"]}


def test_delete_points_counts_only_existing_ones_and_removes_them_from_search(coll):
    coll.put(P, json={"ids": [1, 2, 3], "vectors": [[0, 0, 0], [1, 1, 1], [2, 2, 2]]})
    r = coll.post(f"{P}/delete", json={"ids": [2, 99, "2"]})
    assert r.json() == {"operation_id": 2, "status": "completed", "count": 1}
    hits = coll.post(f"{C}/p/search", json={"vector": [1, 1, 1], "k": 10, "metric": "euc"}).json()["hits"]
    assert [h["id"] for h in hits] == [1, 3] or [h["id"] for h in hits] == [3, 1]
    assert coll.post(f"{P}/get", json={"ids": [2]}).json()["missing"] == [2]
    assert _count(coll) == (2, 2)
    # deleted then written again: a new point
    coll.put(P, json={"ids": [2], "vectors": [[5, 5, 5]]})
    assert coll.get(f"{P}/2").json()["vector"] == [5, 5, 5]


def test_scroll_visits_every_point_once_in_insertion_order(coll, rng):
    ids = [f"s{i}" for i in range(23)] + list(range(17))
    coll.put(P, json={"ids": ids, "vectors": rng.normal(size=(40, 3)).tolist()})
    coll.post(f"{P}/delete", json={"ids": ["s3", 4]})
    seen, offset, pages = [], None, 0
    while True:
        page = coll.post(f"{P}/scroll", json={"offset": offset, "limit": 7}).json()
        seen += [p["id"] for p in page["points"]]
        pages += 1
        offset = page["next_offset"]
        if offset is None:
            break
    assert seen == [i for i in ids if i not in ("s3", 4)] and pages == 6
    problem(coll.post(f"{P}/scroll", json={"limit": 0}), 422, "limit")
    # a cursor past int64 is bad input, not a 500 from SQLite (found by the schemathesis fuzz)
    problem(coll.post(f"{P}/scroll", json={"offset": 2**63, "limit": 2}), 422, "offset")
    assert coll.post(f"{P}/scroll", json={"offset": 2**63 - 1, "limit": 2}).json() == {"points": [],
                                                                                       "next_offset": None}
    first = coll.post(f"{P}/scroll", json={"limit": 2, "with_vector": True, "with_payload": False}).json()
    assert set(first["points"][0]) == {"id", "vector"}


def test_wait_false_answers_202_once_committed_and_becomes_searchable(coll):
    r = coll.put(P, params={"wait": "false"}, json={"ids": ["later"], "vectors": [[3, 3, 3]]})
    assert r.status_code == 202 and r.json()["status"] == "acknowledged"
    assert coll.get(f"{P}/later").status_code == 200  # committed: readable at once
    deadline = time.monotonic() + 10
    while True:
        hits = coll.post(f"{C}/p/search", json={"vector": [3, 3, 3], "k": 1, "metric": "euc"}).json()["hits"]
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert hits[0]["id"] == "later"


def test_writes_to_an_unknown_collection_are_404(client):
    problem(client.put(f"{C}/ghost/points", json={"ids": [1], "vectors": [[0]]}), 404)
    problem(client.post(f"{C}/ghost/points/delete", json={"ids": [1]}), 404)
    problem(client.post(f"{C}/ghost/points/scroll", json={}), 404)
