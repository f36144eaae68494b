"""What the server should hold and answer: a model of acknowledged writes, and float64 brute force."""

from __future__ import annotations

import httpx
import numpy as np
from scipy.special import softmax


def stored_points(client: httpx.Client, name: str) -> dict[int | str, np.ndarray]:
    """Every point of `name` as the server returns it (scroll with vectors), vectors as float32."""
    out: dict[int | str, np.ndarray] = {}
    offset = None
    while True:
        r = client.post(f"/v1/collections/{name}/points/scroll",
                        json={"offset": offset, "limit": 1000, "with_vector": True, "with_payload": False})
        assert r.status_code == 200, r.text
        page = r.json()
        for p in page["points"]:
            assert p["id"] not in out, f"id {p['id']!r} returned twice by scroll"
            out[p["id"]] = np.asarray(p["vector"], dtype=np.float32)
        offset = page["next_offset"]
        if offset is None:
            return out


def assert_holds_exactly(stored: dict[int | str, np.ndarray], model: dict[int | str, np.ndarray]) -> None:
    missing = sorted(set(model) - set(stored), key=str)
    extra = sorted(set(stored) - set(model), key=str)
    assert not missing and not extra, f"missing acknowledged ids {missing[:10]}, unexpected ids {extra[:10]}"
    changed = [i for i in model if not np.array_equal(model[i], stored[i])]
    assert not changed, f"vectors differ from the acknowledged ones for ids {changed[:10]}"


def brute_force(metric: str, q: np.ndarray, X: np.ndarray, t: float | None = None) -> np.ndarray:
    """float64 distances of every row of X from q: euc squared L2 (eq. 6), tri eq. 5 over softmax at t."""
    q64, X64 = q.astype(np.float64), X.astype(np.float64)
    if metric == "euc":
        return ((X64 - q64) ** 2).sum(axis=1)
    if metric == "tri":
        p, P = softmax(q64 / t), softmax(X64 / t, axis=1)
        s = P + p
        return 0.5 * np.divide((P - p) ** 2, s, out=np.zeros_like(s), where=s > 0).sum(axis=1)
    raise ValueError(metric)


def assert_search_agrees(client: httpx.Client, name: str, stored: dict[int | str, np.ndarray], q: np.ndarray,
                         metric: str, k: int, t: float | None = None, kind: str | None = None) -> list:
    """The server's k nearest equal brute force over `stored`: same distances (ties may swap ids), and
    every returned id is stored with the distance reported. Returns the hit ids."""
    body = {"vector": q.astype(np.float64).tolist(), "k": k, "metric": metric, "with_payload": False}
    if t is not None:
        body["temperature"] = t
    if kind is not None:
        body.update(kind=kind, exact=True)
    r = client.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    ids = list(stored)
    d = brute_force(metric, q, np.stack([stored[i] for i in ids]), t)
    want = np.sort(d)[:k]
    got = np.array([h["distance"] for h in hits])
    assert len(hits) == min(k, len(ids)), (len(hits), k, len(ids))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    where = {i: j for j, i in enumerate(ids)}
    for h in hits:
        assert h["id"] in where, f"search returned {h['id']!r}, which is not stored"
        np.testing.assert_allclose(h["distance"], d[where[h["id"]]], rtol=1e-6, atol=1e-9)
    return [h["id"] for h in hits]
