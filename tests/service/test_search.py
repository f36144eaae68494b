"""Search over HTTP equals the IndexSet's answer and a float64 brute force (eqs. 2, 5, 6 and cosine)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from core.metrics import METRICS
from indexes.knn import IndexSet, IndexSpec
from tests.service.conftest import problem

C = "/v1/collections"


def brute(metric: str, t: float | None, q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Distances of every row of X (the stored float32 values, in float64) from q, written out here."""
    X, q = X.astype(np.float64), np.asarray(q, dtype=np.float64)
    if metric == "euc":  # eq. 6, squared L2
        return ((X - q) ** 2).sum(axis=1)
    if metric == "cos":
        return 1 - X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))
    p_q = softmax(q / t)
    if metric == "tri":  # eq. 5
        P = softmax(X / t, axis=1)
        return 0.5 * ((p_q - P) ** 2 / (p_q + P)).sum(axis=1)
    return -(p_q * log_softmax(X / t, axis=1)).sum(axis=1)  # eq. 2, CED(q : p) in nats


def assert_knn(hits, d_all, ids, k, exclude=None):
    """Hits are the k smallest brute-force distances (ids may swap only within ties)."""
    d_all = d_all.copy()
    if exclude is not None:
        d_all[exclude] = np.inf
    want = np.sort(d_all)[:k]
    got_d = np.array([h["distance"] for h in hits])
    np.testing.assert_allclose(got_d, want, rtol=1e-9, atol=1e-12)
    row = {v: i for i, v in enumerate(ids)}
    np.testing.assert_allclose([d_all[row[h["id"]]] for h in hits], got_d, rtol=1e-9, atol=1e-12)


def _load(client, name, X, ids, metrics, temperatures):
    client.put(f"{C}/{name}", json={"dim": X.shape[1], "metrics": metrics, "temperatures": temperatures})
    r = client.put(f"{C}/{name}/points", json={
        "ids": ids, "vectors_b64": base64.b64encode(np.ascontiguousarray(X, dtype="<f4").tobytes()).decode()})
    assert r.status_code == 200, r.text


CASES = [("imagenet", 600, ["euc", "cos", "tri", "ced"], [1.0, 10.0]),
         ("minilm", 600, ["euc", "cos", "tri", "ced"], [0.05])]


@pytest.mark.parametrize("data, n, metrics, temps", CASES, ids=[c[0] for c in CASES])
def test_search_equals_brute_force_and_the_indexset_on_real_data(client, request, data, n, metrics, temps, rng):
    X_all, names = request.getfixturevalue(data)
    X, ids = np.asarray(X_all[:n], dtype=np.float32), names[:n]
    _load(client, "real", X, ids, metrics, temps)
    specs = [IndexSpec(m, t if m in ("tri", "ced") else None) for m in metrics
             for t in (temps if m in ("tri", "ced") else [None])]
    local = IndexSet(X.shape[1], specs)
    local.upsert(np.arange(n), X, 1)
    queries = np.asarray(X_all[n:n + 3], dtype=np.float64)
    for spec in specs:
        t = spec.temperature
        for q in queries:
            r = client.post(f"{C}/real/search", json={"vector": q.tolist(), "k": 10, "metric": spec.metric,
                                                      "temperature": t})
            body = r.json()
            assert body["formula"] == METRICS[spec.metric].formula and body["index"] == spec.key
            assert body["how"] in ("certified", "scanned") and body["took_ms"] >= 0
            assert_knn(body["hits"], brute(spec.metric, t, q, X), ids, 10)
            [mine] = local.search(spec.metric, q, 10, temperature=t)
            assert [h["id"] for h in body["hits"]] == [ids[i] for i in mine.ids.tolist()]
            assert [h["distance"] for h in body["hits"]] == mine.distances.tolist()
        # by stored id: the point itself is left out
        j = int(rng.integers(n))
        body = client.post(f"{C}/real/search", json={"id": ids[j], "k": 5, "metric": spec.metric,
                                                     "temperature": t}).json()
        assert ids[j] not in [h["id"] for h in body["hits"]]
        assert_knn(body["hits"], brute(spec.metric, t, X[j], X), ids, 5, exclude=j)


def test_batch_search_answers_like_single_searches(client, rng):
    X = rng.normal(size=(200, 12)).astype(np.float32)
    _load(client, "s", X, list(range(200)), ["euc", "tri"], [2.0])
    searches = [{"vector": X[0].tolist(), "k": 3, "metric": "euc"},
                {"id": 5, "k": 4, "metric": "tri"},
                {"vector": X[1].tolist(), "k": 3, "metric": "euc", "with_vector": True},
                {"id": 7, "k": 2, "metric": "euc", "with_payload": False}]
    batch = client.post(f"{C}/s/search/batch", json={"searches": searches}).json()
    assert len(batch["results"]) == 4 and batch["took_ms"] >= 0
    for s, got in zip(searches, batch["results"]):
        single = client.post(f"{C}/s/search", json=s).json()
        assert got["hits"] == single["hits"] and got["metric"] == single["metric"]
    np.testing.assert_array_equal(np.array(batch["results"][2]["hits"][0]["vector"], dtype=np.float32),
                                  X[int(batch["results"][2]["hits"][0]["id"])])
    assert "payload" not in batch["results"][3]["hits"][0]


def test_hnsw_exact_flag_gives_the_brute_force_answer(client, rng):
    X = rng.normal(size=(400, 8)).astype(np.float32)
    client.put(f"{C}/h", json={"dim": 8, "metrics": ["cos"], "index": {"kind": "hnsw", "params": {"M": 4}}})
    client.put(f"{C}/h/points", json={"ids": list(range(400)), "vectors": X.tolist()})
    q = rng.normal(size=8)
    approx = client.post(f"{C}/h/search", json={"vector": q.tolist(), "k": 10}).json()
    exact = client.post(f"{C}/h/search", json={"vector": q.tolist(), "k": 10, "exact": True}).json()
    assert approx["how"] == "approximate" and approx["kind"] == "hnsw" and exact["how"] == "scanned"
    assert_knn(exact["hits"], brute("cos", None, q, X), list(range(400)), 10)


def test_k_larger_than_the_collection_returns_everything_and_an_empty_collection_nothing(client):
    client.put(f"{C}/s", json={"dim": 2, "metrics": ["euc"]})
    assert client.post(f"{C}/s/search", json={"vector": [0, 0], "k": 5}).json()["hits"] == []
    client.put(f"{C}/s/points", json={"ids": ["a", "b"], "vectors": [[0, 0], [3, 4]]})
    hits = client.post(f"{C}/s/search", json={"vector": [0, 0], "k": 5}).json()["hits"]
    assert [(h["id"], h["distance"]) for h in hits] == [("a", 0.0), ("b", 25.0)]


def test_vector_b64_query(client, rng):
    X = rng.normal(size=(50, 6)).astype(np.float32)
    _load(client, "s", X, list(range(50)), ["euc"], [10])
    q = X[9]
    body = {"vector_b64": base64.b64encode(q.astype("<f4").tobytes()).decode(), "k": 1}
    assert client.post(f"{C}/s/search", json=body).json()["hits"][0] == {"id": 9, "distance": 0.0, "payload": None}


@pytest.mark.parametrize("body, status, field", [
    ({"vector": [0, 0, 0], "k": 0}, 422, "k"),
    ({"vector": [0, 0, 0], "k": -3}, 422, "k"),
    ({"vector": [0, 0, 0], "k": 11}, 413, "k"),
    ({"vector": [0, 0, 0], "metric": "kld"}, 422, "metric"),
    ({"vector": [0, 0, 0], "metric": "ced", "temperature": 1}, 422, "metric"),
    ({"vector": [0, 0, 0], "metric": "tri", "temperature": 3}, 422, "temperature"),
    ({"vector": [0, 0, 0], "metric": "tri"}, 422, "temperature"),
    ({"vector": [0, 0, 0], "metric": "tri", "temperature": -1}, 422, "temperature"),
    ({"vector": [0, 0, 0], "metric": "euc", "temperature": 1}, 422, "temperature"),
    ({"vector": [0, 0, 0], "kind": "hnsw"}, 422, "kind"),
    ({"vector": [0, 0]}, 422, "vector"),
    ({"k": 3}, 422, "vector"),
    ({"vector": [0, 0, 0], "id": 1}, 422, "vector"),
    ({"vector_b64": "AAAA"}, 422, "vector_b64"),
    ({"vector": [0, None, 0]}, 422, "vector.1"),
])
def test_bad_searches_are_4xx_naming_the_field(client_with, body, status, field):
    c = client_with(max_k=10)
    c.put(f"{C}/s", json={"dim": 3, "metrics": ["euc", "tri"], "temperatures": [1, 10]})
    c.put(f"{C}/s/points", json={"ids": [1], "vectors": [[1, 2, 3]]})
    r = problem(c.post(f"{C}/s/search", json=body), status, field)
    if field == "temperature" and "temperature" in body and body["temperature"] == 3:
        assert "[1.0, 10.0]" in r["detail"]


def test_search_errors_for_ids_and_collections(client):
    client.put(f"{C}/s", json={"dim": 2, "metrics": ["euc"]})
    problem(client.post(f"{C}/s/search", json={"id": "ghost"}), 404)
    problem(client.post(f"{C}/ghost/search", json={"vector": [0, 0]}), 404)
    problem(client.post(f"{C}/s/search", content=b'{"vector": [NaN, 0]}',
                        headers={"content-type": "application/json"}), 422, "vector")
    r = problem(client.post(f"{C}/s/search/batch", json={"searches": [{"vector": [0, 0]}, {"vector": [0]}]}),
                422, "searches.1.vector")
    assert r["status"] == 422
    problem(client.post(f"{C}/s/search/batch", json={"searches": []}), 422, "searches")
