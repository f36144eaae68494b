"""Searches on the event loop (service.fastlane, indexes.inline): taken when small and free, never
at the cost of blocking the loop.

A search the fast lane answers inline runs on the event loop itself. These tests hold what it might
wait for (the index's write lock, the shard's write mutex, every search slot) from another thread
and check that the loop stays free: /healthz answers while the search waits, and the search answers
correctly once it may (from a worker thread). They also check the work budget, and that a
collection without payloads is searched without reading its rows from SQLite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import fastlane
from service.store import Store
from tests.service.conftest import make_client

C = "/v1/collections"
N, DIM = 10_000, 16


def _lanes(client: TestClient) -> dict[tuple[str, str], float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("logitsearch_search_lane_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            lane = labels.split('lane="')[1].split('"')[0]
            together = labels.split('together="')[1].split('"')[0]
            out[lane, together] = float(value)
    return out


def _brute(X: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    d = ((X.astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1)
    return [int(i) for i in np.lexsort((np.arange(len(X)), d))[:k]]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Iterator[tuple[TestClient, np.ndarray]]:
    rng = np.random.default_rng(16)
    X = rng.normal(size=(N, DIM)).astype(np.float32)
    with make_client(tmp_path_factory.mktemp("inline")) as client:
        r = client.put(f"{C}/il", json={"dim": DIM, "metrics": ["euc"]})
        assert r.status_code == 201, r.text
        for s in range(0, N, 2000):
            r = client.put(f"{C}/il/points", params={"wait": "true"},
                           json={"ids": list(range(s, s + 2000)), "vectors": X[s:s + 2000].tolist()})
            assert r.status_code == 200, r.text
        yield client, X


def _search(client: TestClient, q: np.ndarray) -> list[int]:
    r = client.post(f"{C}/il/search", json={"vector": q.tolist(), "k": 5, "metric": "euc"})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def _shard(client: TestClient):  # type: ignore[no-untyped-def]
    _, member = client.app.state.backend._ready("il")  # type: ignore[attr-defined]
    return member.shard


def test_a_small_search_runs_on_the_loop_and_is_exact(seeded):
    client, X = seeded
    before = _lanes(client)
    q = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    assert _search(client, q) == _brute(X, q, 5)
    after = _lanes(client)
    assert after.get(("inline", "no"), 0) == before.get(("inline", "no"), 0) + 1
    assert after.get(("worker", "no"), 0) == before.get(("worker", "no"), 0)


def _while_held(client: TestClient, hold, q: np.ndarray) -> list[int]:  # type: ignore[no-untyped-def]
    """Search while `hold` (a context manager factory) is held by another thread: the loop must
    answer /healthz meanwhile; returns the search's hits once the hold is let go."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with hold():
            held.set()
            release.wait(60)

    with ThreadPoolExecutor(2) as pool:
        holding = pool.submit(holder)
        assert held.wait(30)
        searching = pool.submit(_search, client, q)
        try:
            for _ in range(3):  # the loop is free: other requests are answered while the search waits
                assert client.get("/healthz").status_code == 200
            assert not searching.done()
        finally:
            release.set()
        holding.result(timeout=60)
        return searching.result(timeout=60)


def test_a_search_blocked_by_a_write_waits_on_a_worker_not_on_the_loop(seeded):
    client, X = seeded
    q = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
    before = _lanes(client)
    iset = _shard(client).ready()
    assert _while_held(client, iset._rw.write, q) == _brute(X, q, 5)
    assert _lanes(client).get(("worker", "no"), 0) == before.get(("worker", "no"), 0) + 1


def test_a_search_waits_for_no_search_slot_on_the_loop(seeded):
    client, X = seeded
    q = np.random.default_rng(3).normal(size=DIM).astype(np.float32)
    slots = client.app.state.backend._search_slots  # type: ignore[attr-defined]

    class AllSlots:
        def __enter__(self) -> None:
            self.taken = 0
            while slots.acquire(blocking=False):
                self.taken += 1

        def __exit__(self, *exc: object) -> None:
            for _ in range(self.taken):
                slots.release()

    assert _while_held(client, AllSlots, q) == _brute(X, q, 5)


def test_a_search_does_not_wait_for_a_writers_commit(seeded):
    # a writer holds the shard's mutex through its SQLite COMMIT (an fsync); a search used to take
    # it to count itself, and so waited for every concurrent write
    client, X = seeded
    q = np.random.default_rng(4).normal(size=DIM).astype(np.float32)
    shard = _shard(client)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with shard._lock:
            held.set()
            release.wait(60)

    with ThreadPoolExecutor(2) as pool:
        holding = pool.submit(writer)
        assert held.wait(30)
        try:
            hits = pool.submit(_search, client, q).result(timeout=30)
        finally:
            release.set()
        holding.result(timeout=60)
    assert hits == _brute(X, q, 5)


def test_a_search_over_the_work_budget_runs_on_a_worker(seeded, monkeypatch):
    client, X = seeded
    q = np.random.default_rng(5).normal(size=DIM).astype(np.float32)
    inline_hits = _search(client, q)
    monkeypatch.setattr(fastlane, "INLINE_WORK", float(N * DIM - 1))  # a flat scan of the table is N x DIM
    before = _lanes(client)
    assert _search(client, q) == inline_hits == _brute(X, q, 5)
    assert _lanes(client).get(("worker", "no"), 0) == before.get(("worker", "no"), 0) + 1


def test_payloads_are_read_only_for_collections_that_have_them(tmp_path: Path, monkeypatch):
    reads = []
    points = Store.points

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(args)
        return points(self, *args, **kwargs)

    monkeypatch.setattr(Store, "points", counted)
    X = np.random.default_rng(6).normal(size=(50, 4)).astype(np.float32).tolist()
    with make_client(tmp_path / "data") as client:
        assert client.put(f"{C}/p", json={"dim": 4}).status_code == 201
        assert client.put(f"{C}/p/points", params={"wait": "true"},
                          json={"ids": list(range(50)), "vectors": X}).status_code == 200
        r = client.post(f"{C}/p/search", json={"vector": X[7], "k": 3})
        top = r.json()["hits"][0]
        assert r.status_code == 200 and top["id"] == 7 and top["payload"] is None
        assert reads == []  # no payload anywhere: the winners' rows were not read
        assert client.put(f"{C}/p/points", params={"wait": "true"},
                          json={"ids": [7], "vectors": [X[7]], "payloads": [{"label": "cat"}]}).status_code == 200
        r = client.post(f"{C}/p/search", json={"vector": X[7], "k": 3})
        assert r.json()["hits"][0]["payload"] == {"label": "cat"} and reads
    with make_client(tmp_path / "data") as client:  # a restart learns it from SQLite
        r = client.post(f"{C}/p/search", json={"vector": X[7], "k": 3})
        assert r.status_code == 200 and r.json()["hits"][0]["payload"] == {"label": "cat"}


def test_searches_waiting_for_a_cancelled_worker_call_are_cancelled_not_left_hanging(seeded):
    client, _ = seeded

    async def run() -> list[bool]:
        loop = asyncio.get_running_loop()
        together = fastlane._Together(client.app)
        waiting = [loop.create_future() for _ in range(3)]
        work = loop.create_future()
        work.cancel()
        together._delivered(waiting, len(waiting), work)
        return [f.cancelled() for f in waiting]

    assert asyncio.run(run()) == [True, True, True]
