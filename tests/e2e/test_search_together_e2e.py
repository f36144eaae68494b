"""Single searches that arrive together are answered together (service.fastlane._Together), on a
real server with many clients at once: each answer is the one it gets alone, and a bad search among
them gets its own 4xx while the others are answered.
"""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest

C = "/v1/collections"
N, DIM, K = 10_000, 24, 7


def _together(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("logitsearch_search_lane_requests_total{") and 'together="yes"' in ln)


async def _concurrently(base: str, name: str, bodies: list[dict], clients: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        return await asyncio.gather(*(http.post(f"{C}/{name}/search", json=b) for b in bodies))


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(24).normal(size=(N, DIM)).astype(np.float32)


def _load(base: str, name: str, config: dict, X: np.ndarray) -> None:
    r = httpx.put(f"{base}{C}/{name}", json={"dim": DIM, **config}, timeout=60)
    assert r.status_code == 201, r.text
    buf = io.BytesIO()
    np.save(buf, X)
    r = httpx.post(f"{base}{C}/{name}/points/bulk", params={"start": 0, "wait": "true"}, content=buf.getvalue(),
                   headers={"Content-Type": "application/x-npy"}, timeout=120)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_searches_answered_together_are_the_answers_alone(shared_server, rows, index):
    base, name = shared_server, f"together-{index}"
    config = {"metrics": ["euc"]} if index == "flat" else \
        {"metrics": ["euc"], "index": {"kind": "hnsw", "params": {"M": 16, "ef_construction": 64, "ef_search": 64}}}
    _load(base, name, config, rows)
    Q = np.random.default_rng(7).normal(size=(64, DIM)).astype(np.float32)
    bodies = [{"vector": q.tolist(), "k": K, "metric": "euc"} for q in Q]
    with httpx.Client(base_url=base, timeout=60) as http:  # one at a time: each answered alone
        alone = [http.post(f"{C}/{name}/search", json=b).json()["hits"] for b in bodies]
    if index == "flat":  # exact: the float64 brute force
        D = ((rows.astype(np.float64)[None] - Q.astype(np.float64)[:, None]) ** 2).sum(axis=2)
        for hits, d in zip(alone, D):
            want = np.lexsort((np.arange(N), d))[:K]
            assert [h["id"] for h in hits] == want.tolist()
            np.testing.assert_allclose([h["distance"] for h in hits], d[want], rtol=1e-12)
    bad = {"vector": Q[0, :-1].tolist(), "k": K, "metric": "euc"}
    before = _together(base)
    for _ in range(20):  # until some arrived together (on a loaded machine, almost always the first round)
        answers = asyncio.run(_concurrently(base, name, [*bodies[:32], bad, *bodies[32:]], clients=16))
        bad_answer = answers.pop(32)
        assert bad_answer.status_code == 422, bad_answer.text
        assert any(e["field"] == "vector" for e in bad_answer.json()["errors"])
        for r, want in zip(answers, alone):
            assert r.status_code == 200, r.text
            assert r.json()["hits"] == want
        if _together(base) > before:
            break
    assert _together(base) > before, "no searches were ever answered together"
