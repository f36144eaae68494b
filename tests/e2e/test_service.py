"""End to end: a real uvicorn server over a tmp data dir, the real dev data, restarts and kill -9."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.client import ApiError, AsyncClient, Client
from tests.e2e.conftest import start_server, stop_server

SEARCHES = [("euc", None), ("cos", None), ("tri", 1.0), ("tri", 10.0), ("ced", 1.0)]


def _answers(client, name, ids, Q):
    out = []
    for metric, t in SEARCHES:
        for q in Q:
            h = client.search(name, q, k=10, metric=metric, temperature=t)
            out.append((h.ids, h.distances.tolist(), h.how))
        for i in ids:
            h = client.search(name, id=i, k=10, metric=metric, temperature=t, with_payload=True)
            out.append((h.ids, h.distances.tolist(), h.payloads))
    return out


def test_real_data_gives_identical_answers_after_a_restart_and_after_kill_9(tmp_path, imagenet, minilm):
    X_img, names = imagenet
    X_img, img_ids = np.asarray(X_img[:1500]), names[:1500]
    X_txt, pkgs = minilm
    X_txt, txt_ids = np.asarray(X_txt[:800]), pkgs[:800]
    data = tmp_path / "data"
    base, proc = start_server(data)
    try:
        with Client(base) as c:
            c.create_collection("img", 1000, metrics=["euc", "cos", "tri", "ced"], temperatures=[1, 10])
            c.create_collection("txt", 384, metrics=["euc", "cos"])
            assert c.upload_npy("img", X_img[:1000], ids=img_ids[:1000])["count"] == 1000
            w = c.upsert("img", img_ids[1000:], X_img[1000:], payloads=[{"row": i} for i in range(1000, 1500)],
                         chunk_rows=128)
            assert (w["count"], w["requests"], w["status"]) == (500, 4, "completed")
            c.upsert("txt", txt_ids, X_txt)
            c.delete("img", img_ids[:20])
            Q = np.asarray(imagenet[0][1500:1503], dtype=np.float64)
            before = _answers(c, "img", img_ids[1000:1003] + img_ids[20:22], Q)
            txt_before = [c.search("txt", id=i, k=5, metric="cos").ids for i in txt_ids[:5]]
            assert before[0][2] in ("certified", "scanned")
        assert stop_server(proc) in (0, -15)  # SIGTERM: uvicorn drains, the lifespan snapshots, then re-raises it
        # the index snapshots: the server's own, or each shard's when the collections are sharded
        assert (data / "indexes").is_dir() or len(list(data.glob("shards/*/indexes"))) >= 3
        for how in ("restart", "kill -9"):
            base, proc = start_server(data)
            with Client(base) as c:
                assert _answers(c, "img", img_ids[1000:1003] + img_ids[20:22], Q) == before, how
                assert [c.search("txt", id=i, k=5, metric="cos").ids for i in txt_ids[:5]] == txt_before
                info = {x["name"]: x for x in c.collections()}
                assert info["img"]["count"] == 1480 and info["txt"]["count"] == 800 + (how == "kill -9")
                if how == "restart":
                    c.upsert("txt", ["extra"], X_txt[:1] + 1)  # written after the snapshot: replayed
                    txt_before = [c.search("txt", id=i, k=5, metric="cos").ids for i in txt_ids[:5]]
            if how == "restart":
                proc.kill()
                proc.wait(10)
    finally:
        stop_server(proc)


def test_acknowledged_upserts_survive_kill_9_mid_stream(tmp_path, rng):
    data = tmp_path / "data"
    base, proc = start_server(data)
    d = 16
    acked: dict[int, np.ndarray] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(first: int, gen: np.random.Generator) -> None:
        with Client(base, timeout=10) as c:
            i = first
            while not stop.is_set():
                X = gen.normal(size=(8, d)).astype(np.float32)
                ids = list(range(i, i + 8))
                try:
                    c.upsert("crash", ids, X, wait=False)
                except Exception as exc:  # noqa: BLE001 -- the kill cuts requests in flight, never acknowledged
                    errors.append(exc)
                    return
                acked.update(zip(ids, X))
                i += 8

    try:
        with Client(base) as c:
            c.create_collection("crash", d, metrics=["euc"])
        threads = [threading.Thread(target=writer, args=(k * 10_000_000, g)) for k, g in enumerate(rng.spawn(3))]
        for t in threads:
            t.start()
        time.sleep(0.5 + rng.random())
        proc.kill()
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(20)
        assert len(acked) >= 24, "no write was acknowledged before the kill"
        base, proc = start_server(data)
        with Client(base) as c:
            ids = sorted(acked)
            got = c.get("crash", ids, with_payload=False)
            assert got.missing == []
            np.testing.assert_array_equal(got.vectors, np.stack([acked[i] for i in ids]))
            for i in ids[:: max(1, len(ids) // 40)]:
                h = c.search("crash", acked[i], k=1)
                assert h.ids == [i] and h.distances[0] == 0.0
            assert c.collection("crash")["count"] >= len(acked)
    finally:
        stop.set()
        stop_server(proc)


def test_async_client_and_client_errors(shared_server, rng):
    base = shared_server
    X = rng.normal(size=(30, 5)).astype(np.float32)

    async def scenario() -> None:
        async with AsyncClient(base) as c:
            await c.create_collection("async", 5, metrics=["euc", "tri"], temperatures=[3])
            await c.upsert("async", [f"x{i}" for i in range(30)], X, chunk_rows=7)
            assert (await c.upload_npy("async", X[:10], start=100))["count"] == 10
            hits = await c.search("async", X[4], k=2, metric="euc")
            assert hits.ids[0] in ("x4", 104) and hits.distances[0] == 0.0
            batch = await c.search_batch("async", X[:3], ids=["x9"], k=3, metric="tri")
            assert len(batch) == 4 and "x9" not in batch[3].ids
            page = await c.scroll("async", limit=25)
            rest = await c.scroll("async", offset=page.next_offset, limit=25)
            assert len(page.ids) + len(rest.ids) == 40 and rest.next_offset is None
            with pytest.raises(ApiError) as err:
                await c.search("async", X[0], metric="tri", temperature=5)
            assert err.value.status == 422 and err.value.errors[0]["field"] == "temperature"

    asyncio.run(scenario())
    with Client(base) as c:
        pts = c.get("async", ["x1", "nope"])
        assert pts.ids == ["x1"] and pts.missing == ["nope"]
        np.testing.assert_array_equal(pts.vectors[0], X[1])
        assert c.delete("async", ["x1"])["count"] == 1
        with pytest.raises(ApiError) as err:
            c.create_collection("async", 6)
        assert err.value.status == 409
        assert c.ready() is True
