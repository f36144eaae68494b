"""Payload filters (issue 15): the points a filter selects, from the SQLite payload index, equal a
plain-Python evaluation of the same filter over every payload (written here, after Qdrant's
query_checker.rs: check_filter, get_value, ValueChecker::check, check_is_empty); scroll, search,
delete and evaluation with a filter; the 422 answers; the payload index through replace, delete,
bulk ingest, a later declaration and a reopen of the data directory."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax
from scipy.stats import spearmanr

from service import filters
from service.catalog import CollectionConfig
from service.coordinator import Coordinator, Query
from service.settings import load_settings
from tests.service.conftest import make_client, problem

KEYS = ("a", "b", "a.c", "a[].c", "l", "l[]", "n.x")
C = "/v1/collections"


# --- the oracle: Qdrant's semantics, evaluated directly over the payloads -----------------------


def get_value(payload: Any, key: str) -> list[Any]:
    values = [payload]
    for seg in key.split("."):
        each = seg.endswith("[]")
        name = seg[:-2] if each else seg
        out = []
        for v in values:
            if not isinstance(v, dict) or name not in v:
                continue
            if not each:
                out.append(v[name])
            elif isinstance(v[name], list):
                out.extend(v[name])
        values = out
    return values


def _same(stored: Any, wanted: Any) -> bool:
    # JSON types are strict: true is not 1, 1.0 is not the integer 1, "1" is not 1
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return isinstance(wanted, bool) and isinstance(stored, bool) and stored == wanted
    if isinstance(wanted, int):
        return isinstance(stored, int) and stored == wanted
    return isinstance(stored, str) and stored == wanted


def _in_range(stored: Any, r: dict[str, Any]) -> bool:
    if isinstance(stored, bool) or not isinstance(stored, (int, float)):
        return False
    return all(r.get(op) is None or cmp(stored, r[op]) for op, cmp in (
        ("gt", lambda a, b: a > b), ("gte", lambda a, b: a >= b), ("lt", lambda a, b: a < b),
        ("lte", lambda a, b: a <= b)))


def _check(value: Any, one: Any) -> bool:
    """ValueChecker::check: an array matches when one of its elements does (one level)."""
    return any(one(e) for e in value) if isinstance(value, list) else one(value)


def holds(cond: dict[str, Any], pid: Any, payload: Any) -> bool:
    if not cond or any(c in cond for c in ("must", "should", "must_not")):  # {} is an empty filter
        return matches(cond, pid, payload)
    if "has_id" in cond:
        return any(type(pid) is type(i) and pid == i for i in cond["has_id"])
    if "is_empty" in cond:
        return all(v is None or v == [] for v in get_value(payload, cond["is_empty"]["key"]))
    values = get_value(payload, cond["key"])
    if "range" in cond:
        return any(_check(v, lambda e: _in_range(e, cond["range"])) for v in values)
    m = cond["match"]
    wanted = [m["value"]] if "value" in m else m["any"]
    return any(_check(v, lambda e: any(_same(e, w) for w in wanted)) for v in values)


def matches(f: dict[str, Any], pid: Any, payload: Any) -> bool:
    def clause(name: str) -> list[Any] | None:
        c = f.get(name)
        return None if c is None else c if isinstance(c, list) else [c]

    must, should, must_not = clause("must"), clause("should"), clause("must_not")
    return ((must is None or all(holds(c, pid, payload) for c in must))
            and (should is None or any(holds(c, pid, payload) for c in should))
            and (must_not is None or not any(holds(c, pid, payload) for c in must_not)))


EDGES: list[tuple[dict[str, Any], list[int]]] = [
    # (filter, rows of EDGE_PAYLOADS it matches)
    ({"must": [{"key": "v", "match": {"value": 1}}]}, [0, 5]),
    ({"must": [{"key": "v", "match": {"value": True}}]}, [1]),
    ({"must": [{"key": "v", "match": {"value": "1"}}]}, [3]),
    ({"must": [{"key": "v", "match": {"any": [1, 2]}}]}, [0, 5]),
    ({"must": [{"key": "v", "range": {"gte": 1, "lte": 1}}]}, [0, 2, 5]),
    ({"must": [{"key": "v", "range": {}}]}, [0, 2, 5]),
    ({"must": [{"is_empty": {"key": "v"}}]}, [4, 6, 7, 10, 11]),
    ({"must": [{"is_empty": {"key": "v[]"}}]}, [0, 1, 2, 3, 4, 6, 7, 8, 10, 11]),
    ({"must": [{"key": "v[]", "match": {"value": 1}}]}, [5, 9]),
    ({"must": [{"key": "o.w", "match": {"value": "x"}}]}, [10]),
    ({"must": [{"key": "o[].w", "match": {"value": "x"}}]}, [11]),
    ({"must": [{"key": "o.w", "match": {"value": "x"}}], "should": []}, []),
    ({"must_not": [{"is_empty": {"key": "o"}}]}, [10, 11]),
    ({"should": [{"has_id": [2, "r3"]}, {}]}, list(range(12))),
    ({"must": {"key": "v", "match": {"value": 1}}}, [0, 5]),
]
# 1, true, 1.0, "1", [], [1, [2]], null, missing, [null], [[1]], {o: {w}}, {o: [{w}]}
EDGE_PAYLOADS: list[Any] = [{"v": 1}, {"v": True}, {"v": 1.0}, {"v": "1"}, {"v": []}, {"v": [1, [2]]},
                            {"v": None}, {}, {"v": [None]}, {"v": [[1]]}, {"o": {"w": "x"}}, {"o": [{"w": "x"}]}]


@pytest.mark.parametrize(("flt", "rows"), EDGES, ids=[json.dumps(f) for f, _ in EDGES])
def test_edge_cases_match_as_qdrant_matches_them(backend, flt, rows):
    name = f"e{next(_made)}"
    backend.create_collection(name, CollectionConfig.create(2, ["euc"], payload_index=("v", "v[]", "o", "o.w", "o[].w")))
    ids: list[Any] = [f"r{i}" if i == 3 else i for i in range(len(EDGE_PAYLOADS))]
    backend.upsert(name, ids, np.zeros((len(ids), 2), np.float32), [json.dumps(p) for p in EDGE_PAYLOADS])
    got, _ = backend.scroll(name, None, 100, filter=filters.parse(flt))
    assert [p.id for p in got] == [ids[r] for r in rows]
    assert [i for i, (pid, p) in enumerate(zip(ids, EDGE_PAYLOADS)) if matches(flt, pid, p)] == rows
    backend.delete_collection(name)


def test_the_oracle_agrees_with_qdrants_documented_examples():
    # filtering.md and query_checker.rs's test_condition_checker
    p = {"parts": [], "packaging": None, "not_null": [None],
         "rating": [3, 7, 9, 9], "country": {"cities": [{"population": 3.7}, {"population": 9.3}]}}
    assert holds({"is_empty": {"key": "parts"}}, 1, p) and holds({"is_empty": {"key": "missing"}}, 1, p)
    assert holds({"is_empty": {"key": "packaging"}}, 1, p) and not holds({"is_empty": {"key": "not_null"}}, 1, p)
    assert holds({"key": "rating", "match": {"value": 7}}, 1, p)
    assert holds({"key": "country.cities[].population", "range": {"gte": 9.0}}, 1, p)
    assert not holds({"key": "country.cities.population", "range": {"gte": 9.0}}, 1, p)
    assert not matches({"should": []}, 1, p) and matches({}, 1, p)


# --- generated payloads and filters ---------------------------------------------------------------

# few distinct values, so that payloads and filters meet: 1 beside 1.0, true and "1"
_scalars = st.one_of(st.integers(-1, 2), st.sampled_from([0.5, 1.0, 2.0]), st.booleans(),
                     st.sampled_from(["x", "y", "1"]), st.none())
_leafy = st.one_of(_scalars, st.lists(st.one_of(_scalars, st.lists(_scalars, max_size=2)), max_size=3))
_inner = st.dictionaries(st.sampled_from(["c", "x"]), _leafy, max_size=2)
_payload = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "a": st.one_of(_inner, st.lists(_inner, max_size=3), _leafy),
    "b": _leafy, "l": _leafy, "n": st.one_of(_inner, _leafy)}))
_match_value = st.one_of(st.integers(-1, 2), st.booleans(), st.sampled_from(["x", "y", "1"]))
_leaf = st.one_of(
    st.builds(lambda k, v: {"key": k, "match": {"value": v}}, st.sampled_from(KEYS), _match_value),
    st.builds(lambda k, v: {"key": k, "match": {"any": v}}, st.sampled_from(KEYS),
              st.one_of(st.lists(st.integers(-3, 3), max_size=3), st.lists(st.sampled_from(["x", "y", "z"]), max_size=3))),
    st.builds(lambda k, r: {"key": k, "range": r}, st.sampled_from(KEYS),
              st.fixed_dictionaries({}, optional={op: st.sampled_from([-2, 0, 0.5, 1, 2.5])
                                                  for op in ("gt", "gte", "lt", "lte")})),
    st.builds(lambda ids: {"has_id": ids}, st.lists(st.one_of(st.integers(0, 30), st.sampled_from(["p1", "p2"])),
                                                    max_size=4)),
    st.builds(lambda k: {"is_empty": {"key": k}}, st.sampled_from(KEYS)),
)
_filters = st.recursive(
    st.fixed_dictionaries({}, optional={c: st.lists(_leaf, max_size=3) for c in ("must", "should", "must_not")}),
    lambda inner: st.fixed_dictionaries({}, optional={c: st.lists(st.one_of(_leaf, inner), max_size=3)
                                                      for c in ("must", "should", "must_not")}),
    max_leaves=6)


def _backend(path: Path) -> Coordinator:
    b = Coordinator(load_settings({"data_dir": str(path)}, environ={}))
    b.open(background=False)
    return b


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = _backend(tmp_path_factory.mktemp("filters"))
    yield b
    b.close()


_made = iter(range(10**6))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payloads=st.lists(_payload, min_size=1, max_size=40), fs=st.lists(_filters, min_size=1, max_size=8))
def test_a_filter_selects_exactly_what_a_plain_python_evaluation_selects(backend, payloads, fs):
    name = f"h{next(_made)}"
    backend.create_collection(name, CollectionConfig.create(2, ["euc"], payload_index=KEYS))
    ids: list[Any] = [i if i % 3 else f"p{i}" for i in range(len(payloads))]
    X = np.zeros((len(ids), 2), np.float32)
    backend.upsert(name, ids, X, [None if p is None else json.dumps(p) for p in payloads])
    for f in fs:
        got, _ = backend.scroll(name, None, 1000, filter=filters.parse(f))
        want = [pid for pid, p in zip(ids, payloads) if matches(f, pid, p)]
        assert [p.id for p in got] == want, f
    backend.delete_collection(name)


# --- through the API ------------------------------------------------------------------------------

D = 8
LABELS = ["cat", "dog", "fox", "owl"]


def _points(rng: np.random.Generator, n: int) -> tuple[list[Any], np.ndarray, list[dict[str, Any]]]:
    ids: list[Any] = [f"img-{i}" if i % 2 else i for i in range(n)]
    X = rng.normal(size=(n, D)) * 3
    payloads = [{"label": LABELS[i % 4], "photo": f"ph{i % 7}", "score": float(i % 10) / 10,
                 "tags": ["a", "b"][: i % 3]} for i in range(n)]
    return ids, X, payloads


@pytest.fixture
def filled(client, rng):
    ids, X, payloads = _points(rng, 300)
    r = client.put(f"{C}/f", json={"dim": D, "metrics": ["euc", "cos", "tri", "ced"], "temperatures": [10],
                                   "payload_index": ["label", "score", "tags"]})
    assert r.status_code == 201, r.text
    r = client.put(f"{C}/f/points", json={"ids": ids, "vectors": X.tolist(), "payloads": payloads})
    assert r.status_code == 200, r.text
    return ids, X, payloads


def _brute(metric: str, q: np.ndarray, X: np.ndarray, t: float = 10.0) -> np.ndarray:
    X = X.astype(np.float32).astype(np.float64)
    if metric == "euc":
        return ((X - q) ** 2).sum(axis=1)
    if metric == "cos":
        return 1 - X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))
    lq, lp = log_softmax(q / t), log_softmax(X / t, axis=1)
    if metric == "ced":
        return -(np.exp(lq) * lp).sum(axis=1)
    pq, pp = np.exp(lq), np.exp(lp)
    return 0.5 * ((pq - pp) ** 2 / (pq + pp)).sum(axis=1)


@pytest.mark.parametrize("metric", ["euc", "cos", "tri", "ced"])
def test_filtered_search_is_brute_force_over_the_matching_points(client, filled, metric):
    ids, X, payloads = filled
    f = {"must": [{"key": "label", "match": {"any": ["cat", "owl"]}}], "must_not": [{"key": "score", "range": {"gte": 0.8}}]}
    keep = [i for i, (pid, p) in enumerate(zip(ids, payloads)) if matches(f, pid, p)]
    q = X[3] + 0.1
    body = {"vector": q.tolist(), "k": 7, "metric": metric, "filter": f}
    if metric in ("tri", "ced"):
        body["temperature"] = 10
    r = client.post(f"{C}/f/search", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    d = _brute(metric, q, X[keep])
    order = np.argsort(d, kind="stable")[:7]
    assert [h["id"] for h in out["hits"]] == [ids[keep[j]] for j in order]
    np.testing.assert_allclose([h["distance"] for h in out["hits"]], d[order], rtol=1e-9, atol=1e-12)
    assert out["filtered"] == {"matched": len(keep), "scan_threshold": 2048} and out["how"] == "scanned"
    assert all(matches(f, h["id"], h["payload"]) for h in out["hits"])


def test_k_beyond_the_matching_points_returns_all_of_them_and_a_query_id_is_left_out(client, filled):
    ids, X, payloads = filled
    f = {"must": [{"key": "label", "match": {"value": "dog"}}, {"key": "score", "range": {"lt": 0.2}}]}
    keep = [pid for pid, p in zip(ids, payloads) if matches(f, pid, p)]
    r = client.post(f"{C}/f/search", json={"id": keep[0], "k": 100, "metric": "euc", "filter": f})
    assert r.status_code == 200, r.text
    assert sorted(map(str, (h["id"] for h in r.json()["hits"]))) == sorted(map(str, keep[1:]))
    r = client.post(f"{C}/f/search", json={"vector": X[0].tolist(), "k": 5, "metric": "euc",
                                           "filter": {"must": [{"key": "label", "match": {"value": "emu"}}]}})
    assert r.json()["hits"] == [] and r.json()["filtered"]["matched"] == 0


def test_a_batch_applies_each_searchs_own_filter(client, filled):
    X = filled[1]
    fs = [{"must": [{"key": "label", "match": {"value": lab}}]} for lab in LABELS] + [None]
    searches = [{"vector": X[i].tolist(), "k": 5, "metric": "cos", **({"filter": f} if f else {})}
                for i, f in enumerate(fs)]
    r = client.post(f"{C}/f/search/batch", json={"searches": searches})
    assert r.status_code == 200, r.text
    for f, res in zip(fs, r.json()["results"]):
        alone = client.post(f"{C}/f/search", json=searches[fs.index(f)]).json()
        assert [h["id"] for h in res["hits"]] == [h["id"] for h in alone["hits"]]
        if f is not None:
            assert {h["payload"]["label"] for h in res["hits"]} == {f["must"][0]["match"]["value"]}
        else:
            assert "filtered" not in res


def test_scroll_pages_through_the_matching_points_only(client, filled):
    ids, _, payloads = filled
    f = {"should": [{"key": "tags", "match": {"value": "b"}}, {"has_id": [0, "img-1"]}]}
    want = [pid for pid, p in zip(ids, payloads) if matches(f, pid, p)]
    got, offset = [], None
    while True:
        page = client.post(f"{C}/f/points/scroll", json={"filter": f, "limit": 17, "offset": offset}).json()
        got += [p["id"] for p in page["points"]]
        offset = page["next_offset"]
        if offset is None:
            break
    assert got == want


def test_delete_by_filter_removes_exactly_the_matching_points(client, filled):
    ids, X, payloads = filled
    f = {"must": [{"key": "label", "match": {"value": "fox"}}], "must_not": [{"is_empty": {"key": "tags"}}]}
    gone = {pid for pid, p in zip(ids, payloads) if matches(f, pid, p)}
    r = client.post(f"{C}/f/points/delete", json={"filter": f})
    assert r.status_code == 200 and r.json()["count"] == len(gone) > 0, r.text
    left = client.post(f"{C}/f/points/scroll", json={"limit": 1000}).json()["points"]
    assert [p["id"] for p in left] == [pid for pid in ids if pid not in gone]
    hits = client.post(f"{C}/f/search", json={"vector": X[0].tolist(), "k": 300, "metric": "euc"}).json()["hits"]
    assert not gone & {h["id"] for h in hits} and len(hits) == len(ids) - len(gone)
    assert client.post(f"{C}/f/points/delete", json={"filter": f}).json()["count"] == 0


def test_evaluation_on_a_subset_equals_spearman_over_that_subset(client, filled):
    ids, X, payloads = filled
    f = {"must": [{"key": "label", "match": {"value": "cat"}}]}
    keep = [i for i, (pid, p) in enumerate(zip(ids, payloads)) if matches(f, pid, p)]
    r = client.post(f"{C}/f/evaluate", json={"vector": X[1].tolist(), "temperatures": [1, 10], "filter": f})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sample"] == {"size": len(keep), "of": len(keep), "sampled": False, "seed": None}
    for res in body["results"]:
        ced = _brute("ced", X[1], X[keep], res["temperature"])
        for m in ("euc", "cos", "tri"):
            want = spearmanr(ced, _brute(m, X[1], X[keep], res["temperature"])).statistic
            assert res["rho"][m]["value"] == pytest.approx(want, abs=1e-9)
    # a stored query inside the subset is left out of it, and sampling draws from the subset
    r = client.post(f"{C}/f/evaluate", json={"id": ids[keep[0]], "temperature": 10, "filter": f, "sample": 20})
    assert r.status_code == 200, r.text
    assert r.json()["sample"]["of"] == len(keep) and r.json()["results"][0]["n"] in (19, 20)
    r = client.post(f"{C}/f/evaluate", json={"vector": X[1].tolist(), "temperature": 10,
                                             "filter": {"must": [{"key": "label", "match": {"value": "emu"}}]}})
    problem(r, 422, "filter")


def test_a_key_declared_later_is_back_filled_and_kept_with_later_writes(client, filled):
    ids, X, payloads = filled
    f = {"must": [{"key": "photo", "match": {"value": "ph3"}}]}
    body = problem(client.post(f"{C}/f/points/scroll", json={"filter": f}), 422, "filter.must.0.key")
    assert "PUT /v1/collections/f/payload_index" in body["detail"]
    r = client.put(f"{C}/f/payload_index", json={"fields": ["photo"]})
    assert r.status_code == 200 and r.json() == {"payload_index": ["label", "photo", "score", "tags"]}
    assert client.get(f"{C}/f").json()["payload_index"] == ["label", "photo", "score", "tags"]
    client.put(f"{C}/f/points", json={"points": [{"id": ids[3], "vector": X[3].tolist(), "payload": {"photo": "ph4"}},
                                                 {"id": "new", "vector": X[3].tolist(), "payload": {"photo": "ph3"}}]})
    got = [p["id"] for p in client.post(f"{C}/f/points/scroll", json={"filter": f, "limit": 1000}).json()["points"]]
    assert got == [pid for pid, p in zip(ids, payloads) if p["photo"] == "ph3" and pid != ids[3]] + ["new"]
    # the same create again (without the later key) is the same collection; with another key it is not
    same = {"dim": D, "metrics": ["euc", "cos", "tri", "ced"], "temperatures": [10], "payload_index": ["label"]}
    assert client.put(f"{C}/f", json=same).status_code == 200
    problem(client.put(f"{C}/f", json={**same, "payload_index": ["other"]}), 409)
    assert client.delete(f"{C}/f/payload_index/photo").json() == {"payload_index": ["label", "score", "tags"]}
    problem(client.post(f"{C}/f/points/scroll", json={"filter": f}), 422, "filter.must.0.key")
    problem(client.delete(f"{C}/f/payload_index/photo"), 404)


BAD = [
    ({"must": [{"key": "label", "mtch": {"value": 1}}]}, "filter.must.0.mtch", "unknown operator"),
    ({"must": [{"key": "score", "range": {"gt": "high"}}]}, "filter.must.0.range.gt", "must be a number"),
    ({"must": [{"key": "score", "range": {"above": 1}}]}, "filter.must.0.range.above", "unknown range operator"),
    ({"must": [{"key": "score", "match": {"value": 0.5}}]}, "filter.must.0.match.value", "range"),
    ({"must": [{"key": "label", "match": {"any": ["a", 1]}}]}, "filter.must.0.match.any", "all strings"),
    ({"should": [{"must_not": [{"key": "nope", "match": {"value": "x"}}]}]}, "filter.should.0.must_not.0.key",
     "not indexed"),
    ({"must": [{"is_empty": {"key": "tags", "x": 1}}]}, "filter.must.0.is_empty.x", "unknown field"),
    ({"must": [{"key": "a..b", "match": {"value": "x"}}]}, "filter.must.0.key", "not a payload path"),
    ({"must": [{"has_id": [-1]}]}, "filter.must.0.has_id.0", "point id"),
    ({"must": [{"key": "label"}]}, "filter.must.0", "exactly one of match and range"),
    ({"musts": []}, "filter.musts", "unknown filter clause"),
    ({"must": ["label"]}, "filter.must.0", "JSON object"),
    ([], "filter", "JSON object"),
    ({"must": [{"key": "label", "match": {"value": "\ud800"}}]}, "filter.must.0.match.value", "lone surrogate"),
    ({"must": [{"key": "label\ud800", "match": {"value": "x"}}]}, "filter.must.0.key", "lone surrogate"),
]


def _post(client, path: str, body: Any, method: str = "POST"):
    # json.dumps escapes lone surrogates (\\ud800) as JSON allows; httpx's json= cannot encode them
    return client.request(method, path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("flt", "field", "reason"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_a_bad_filter_is_a_422_naming_its_path_and_reason(client, filled, flt, field, reason):
    X = filled[1]
    for path, body in ((f"{C}/f/search", {"vector": X[0].tolist(), "filter": flt}),
                       (f"{C}/f/points/scroll", {"filter": flt}),
                       (f"{C}/f/points/delete", {"filter": flt}),
                       (f"{C}/f/evaluate", {"vector": X[0].tolist(), "temperature": 10, "filter": flt})):
        if not isinstance(flt, dict):  # not an object at all: pydantic's own 422, same field
            problem(_post(client, path, body), 422, "filter")
            continue
        out = problem(_post(client, path, body), 422, field)
        assert any(reason in e["reason"] for e in out["errors"]), out
    if isinstance(flt, dict):  # in a batch the path starts at the search
        r = _post(client, f"{C}/f/search/batch", {"searches": [{"vector": X[0].tolist()},
                                                               {"vector": X[0].tolist(), "filter": flt}]})
        problem(r, 422, f"searches.1.{field}")
    assert client.get(f"{C}/f").json()["count"] == 300  # nothing deleted


def test_delete_needs_ids_or_a_filter_but_not_both(client, filled):
    problem(client.post(f"{C}/f/points/delete", json={}), 422, "ids")
    problem(client.post(f"{C}/f/points/delete", json={"ids": [0], "filter": {}}), 422, "ids")


def test_create_refuses_a_bad_payload_key(client):
    problem(client.put(f"{C}/bad", json={"dim": 2, "payload_index": ["ok", "a b"]}), 422, "payload_index.1")
    assert client.put(f"{C}/ok", json={"dim": 2}).status_code == 201
    problem(client.put(f"{C}/ok/payload_index", json={"fields": ["x[]y"]}), 422, "fields.0")


# --- the payload index stays consistent with the points -------------------------------------------


def _index_rows(b: Coordinator, name: str) -> set[tuple[Any, ...]]:
    cid = b.catalog.get(name).cid
    conn = b.store._reader()
    return set(conn.execute("SELECT key, kind, value, iid FROM payload_values WHERE cid = ?", (cid,)).fetchall())


def _expected_rows(b: Coordinator, name: str, keys: tuple[str, ...]) -> set[tuple[Any, ...]]:
    ids = b._members[name].shard._ids
    points, _ = b.scroll(name, None, 10**6)
    return {(k, kind, v, ids.iid(p.id)) for p in points for k, kind, v in filters.index_rows(p.payload, keys)}


def test_the_index_follows_replace_delete_bulk_ingest_and_a_reopen(tmp_path, rng):
    keys = ("label", "score", "tags")
    b = _backend(tmp_path / "d")
    b.create_collection("c", CollectionConfig.create(D, ["euc"], payload_index=keys))
    ids, X, payloads = _points(rng, 120)
    b.upsert("c", ids, X.astype(np.float32), [json.dumps(p) for p in payloads])
    # replace: new payloads (and none) for some ids; delete others, by id and by filter
    b.upsert("c", ids[:30], X[:30].astype(np.float32), [json.dumps({"label": "emu"}) if i % 2 else None
                                                         for i in range(30)])
    b.delete_points("c", ids[30:40])
    b.delete_by_filter("c", filters.parse({"must": [{"key": "label", "match": {"value": "dog"}}]}))
    # bulk ingest with payloads (one transaction), replacing some and adding others
    more = [f"bulk-{i}" for i in range(50)] + ids[60:70]
    bulk_payloads = [json.dumps({"label": "owl", "tags": [i]}) if i % 3 else None for i in range(60)]
    b.bulk_upsert("c", iter([rng.normal(size=(60, D)).astype(np.float32)]), more, payloads=bulk_payloads)
    assert _index_rows(b, "c") == _expected_rows(b, "c", keys) != set()
    before = _index_rows(b, "c")
    b.close()
    b = _backend(tmp_path / "d")
    assert b.get_collection("c").config.payload_index == keys
    assert _index_rows(b, "c") == before == _expected_rows(b, "c", keys)
    f = {"must": [{"key": "label", "match": {"value": "owl"}}]}
    got = b.search("c", [Query(k=500, metric="euc", vector=np.zeros(D), filter=filters.parse(f))])[0]
    points, _ = b.scroll("c", None, 10**6)
    assert sorted(map(str, got.ids)) == sorted(str(p.id) for p in points if matches(f, p.id, p.payload))
    b.delete_collection("c")
    conn = b.store._reader()
    assert conn.execute("SELECT count(*) FROM payload_values").fetchone()[0] == 0
    b.close()


def test_a_bulk_ingest_over_http_indexes_its_json_lines_payloads(tmp_path, rng):
    with make_client(tmp_path / "d") as client:
        client.put(f"{C}/b", json={"dim": 4, "payload_index": ["label"]})
        X = rng.normal(size=(40, 4)).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, X)
        lines = "\n".join(json.dumps({"label": LABELS[i % 4]}) if i % 5 else "" for i in range(40))
        r = client.post(f"{C}/b/points/bulk", files={"file": ("x.npy", buf.getvalue()), "payloads": ("p.jsonl", lines)},
                        data={"start": "0"})
        assert r.status_code == 200, r.text
        f = {"must": [{"key": "label", "match": {"value": "dog"}}]}
        got = client.post(f"{C}/b/points/scroll", json={"filter": f, "limit": 100}).json()["points"]
        assert [p["id"] for p in got] == [i for i in range(40) if i % 5 and i % 4 == 1]
        r = client.post(f"{C}/b/points/scroll", json={"filter": {"must": [{"is_empty": {"key": "label"}}]}})
        assert [p["id"] for p in r.json()["points"]] == list(range(0, 40, 5))



def test_odd_but_valid_values_are_answered_not_refused(client, filled):
    ids = filled[0]
    huge = {"must": [{"key": "score", "range": {"lt": 10**30}}]}  # beyond int64: compared as a float
    got = client.post(f"{C}/f/points/scroll", json={"filter": huge, "limit": 1000}).json()["points"]
    assert len(got) == len(ids)


def test_a_repeated_filter_sees_every_later_write(client, filled):
    ids, X, _ = filled
    f = {"must": [{"key": "label", "match": {"value": "emu"}}]}
    body = {"vector": X[0].tolist(), "k": 500, "metric": "euc", "filter": f}

    def found() -> list[Any]:
        return sorted(map(str, (h["id"] for h in client.post(f"{C}/f/search", json=body).json()["hits"])))

    assert found() == []
    client.put(f"{C}/f/points", json={"points": [{"id": ids[5], "vector": X[5].tolist(), "payload": {"label": "emu"}}]})
    assert found() == [str(ids[5])]
    client.post(f"{C}/f/points/bulk", params={"start": 5000}, content=_npy(X[:2]),
                headers={"content-type": "application/octet-stream"})  # a write without payloads changes nothing
    assert found() == [str(ids[5])]
    client.put(f"{C}/f/points", json={"points": [{"id": ids[5], "vector": X[5].tolist(), "payload": {"label": "cat"}},
                                                 {"id": "e2", "vector": X[6].tolist(), "payload": {"label": "emu"}}]})
    assert found() == ["e2"]
    client.post(f"{C}/f/points/delete", json={"ids": ["e2"]})
    assert found() == []


def _npy(X: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, X.astype(np.float32))
    return buf.getvalue()


def test_the_python_client_sends_filters(client, rng):
    from service.client import Client

    ids, X, payloads = _points(rng, 40)
    c = Client("http://testserver", transport=client._transport)
    c.create_collection("cl", D, metrics=["euc", "tri"], payload_index=["label"])
    c.upsert("cl", ids, X.astype(np.float32), payloads)
    assert c.payload_index("cl", ["score"]) == {"payload_index": ["label", "score"]}
    f = {"must": [{"key": "label", "match": {"value": "dog"}}], "must_not": [{"key": "score", "range": {"gt": 0.5}}]}
    want = [pid for pid, p in zip(ids, payloads) if matches(f, pid, p)]
    assert c.scroll("cl", filter=f).ids == want
    hits = c.search("cl", X[0], k=100, metric="euc", filter=f)
    assert sorted(map(str, hits.ids)) == sorted(map(str, want))
    assert c.evaluate("cl", X[0], temperatures=10, filter=f)["sample"]["of"] == len(want)
    assert c.delete("cl", filter=f)["count"] == len(want)
    assert c.scroll("cl", filter=f).ids == []


def test_the_cli_searches_and_evaluates_with_a_filter(client, filled, monkeypatch, capsys):
    from service import cli
    from service.client import Client

    ids, _, payloads = filled
    monkeypatch.setattr(cli, "_client", lambda args: Client("http://testserver", transport=client._transport))
    f = {"must": [{"key": "label", "match": {"value": "owl"}}]}
    want = [pid for pid, p in zip(ids, payloads) if matches(f, pid, p)]
    assert cli.main(["search", "f", "--id", "img-3", "-k", "500", "--metric", "euc", "--json",
                     "--filter", json.dumps(f)]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]  # the server's answer as it came (issue 14)
    assert sorted(str(h["id"]) for h in hits) == sorted(str(i) for i in want if i != "img-3")
    assert cli.main(["evaluate", "f", "--id", "img-3", "-t", "10", "--json", "--filter", json.dumps(f)]) == 0
    assert json.loads(capsys.readouterr().out)["sample"]["of"] == len(want)
    with pytest.raises(SystemExit):  # argparse's usage error, no traceback
        cli.main(["search", "f", "--id", "img-3", "--filter", "{not json"])
    assert "not JSON" in capsys.readouterr().err


def test_a_data_directory_of_schema_1_opens_and_its_collections_can_declare_keys(tmp_path, rng):
    import sqlite3

    from service.store import FILENAME

    b = _backend(tmp_path / "d")
    b.create_collection("old", CollectionConfig.create(D, ["euc"]))
    ids, X, payloads = _points(rng, 20)
    b.upsert("old", ids, X.astype(np.float32), [json.dumps(p) for p in payloads])
    b.close()
    conn = sqlite3.connect(tmp_path / "d" / FILENAME)  # as the previous release left it
    conn.execute("DROP TABLE payload_values")
    conn.execute("UPDATE collections SET config = json_remove(config, '$.payload_index')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    b = _backend(tmp_path / "d")
    assert b.get_collection("old").config.payload_index == ()
    b.declare_payload_index("old", ["label"])
    f = {"must": [{"key": "label", "match": {"value": "fox"}}]}
    got, _ = b.scroll("old", None, 100, filter=filters.parse(f))
    assert [p.id for p in got] == [pid for pid, p in zip(ids, payloads) if matches(f, pid, p)] != []
    b.close()
