"""A shard actor's process killed (SIGKILL) while writes stream in (issue 13): requests that need it
answer 503 with Retry-After naming it, never a partial answer; Ray restarts it from its own files;
no acknowledged write is lost, and every refused batch (it spans the shards) is there whole or not
at all."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.ray.conftest import held_down, ray_client

C = "/v1/collections"
DIM = 8


def _present(client: Any, ids: list[Any]) -> int:
    r = client.post(f"{C}/f/points/get", json={"ids": ids, "with_vector": False, "with_payload": False})
    assert r.status_code == 200, r.text
    return len(r.json()["points"])


def test_a_killed_shard_answers_503_and_loses_no_acknowledged_write_issue_13(ray_local, tmp_path):
    with ray_client(Path(tmp_path)) as client:
        assert client.put(f"{C}/f", json={"dim": DIM, "metrics": ["euc"], "shards": 3}).status_code == 201
        coord = client.app.state.backend
        victim = coord._members["f"].shards[1]
        pid, label = victim.ping()
        assert label == "f/shard-1"
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ShardActor")  # Ray's title

        acked: list[list[str]] = []
        refused: list[tuple[list[str], int, str | None, str]] = []
        stop = threading.Event()

        def stream() -> None:
            gen = np.random.default_rng(7)
            b = 0
            while not stop.is_set():
                ids = [f"b{b}-{i}" for i in range(12)]  # 12 ids: every batch spans the 3 shards
                X = gen.normal(size=(12, DIM))
                r = client.put(f"{C}/f/points", json={"ids": ids, "vectors": X.tolist()})
                if r.status_code == 200:
                    acked.append(ids)
                else:
                    refused.append((ids, r.status_code, r.headers.get("retry-after"), r.json().get("detail", "")))
                b += 1

        writer = threading.Thread(target=stream)
        writer.start()
        try:
            deadline = time.monotonic() + 30
            while len(acked) < 5:
                assert time.monotonic() < deadline and writer.is_alive(), refused
                time.sleep(0.01)
            with held_down(victim, pid):
                down_search = down_ready = None
                deadline = time.monotonic() + 60
                while down_search is None or down_ready is None or not refused:
                    assert time.monotonic() < deadline, (down_search, down_ready, refused[-3:])
                    if down_search is None:
                        r = client.post(f"{C}/f/search", json={"vector": [0.0] * DIM, "k": 3})
                        if r.status_code != 200:
                            down_search = r
                    if down_ready is None:
                        r = client.get("/readyz")
                        if r.json()["shards"].get("f/shard-1") == "unavailable":
                            down_ready = r
                    time.sleep(0.05)
            assert down_search.status_code == 503 and down_search.headers["retry-after"]
            assert "f/shard-1" in down_search.json()["detail"]
            assert down_ready.status_code == 503
            # back: a new process, found by name, recovered from its own files
            deadline = time.monotonic() + 60
            while True:
                try:
                    new_pid, _ = victim.ping(timeout=2)
                    break
                except Exception:  # noqa: BLE001 -- still restarting
                    assert time.monotonic() < deadline, "the shard did not come back"
                    time.sleep(0.1)
            assert new_pid != pid
            grown = len(acked)
            deadline = time.monotonic() + 30
            while len(acked) < grown + 5:  # writes flow again
                assert time.monotonic() < deadline and writer.is_alive(), refused[-3:]
                time.sleep(0.01)
        finally:
            stop.set()
            writer.join(timeout=60)
        assert refused, "no write met the dead shard"
        for ids, status, retry, detail in refused:
            assert status == 503 and retry, (status, detail)
            assert "f/shard-1" in detail, detail
            assert _present(client, ids) in (0, len(ids))  # all or nothing, never half a batch
        everything = [e for ids in acked for e in ids]
        assert _present(client, everything) == len(everything)
        wholes = sum(_present(client, ids) == len(ids) for ids, *_ in refused)
        assert client.get(f"{C}/f").json()["count"] == len(everything) + 12 * wholes
        r = client.post(f"{C}/f/search", json={"id": acked[-1][0], "k": 5})
        assert r.status_code == 200 and len(r.json()["hits"]) == 5
        assert client.get("/readyz").status_code == 200


def test_eight_writers_and_eight_readers_on_three_shards_issue_13(ray_local, tmp_path):
    """Writers own disjoint ids (upserts, updates, deletes); readers search by vector and by id and
    scroll meanwhile. No request fails, and the end state is the writers' own model of it."""
    with ray_client(Path(tmp_path)) as client:
        assert client.put(f"{C}/cc", json={"dim": DIM, "metrics": ["euc", "tri"], "shards": 3}).status_code == 201
        errors: list[str] = []
        models: list[dict[str, list[float]]] = [{} for _ in range(8)]
        stop = threading.Event()

        def writer(w: int) -> None:
            gen = np.random.default_rng(100 + w)
            model = models[w]
            b = 0
            while not stop.is_set() and b < 6:
                ids = [f"w{w}-{(b * 7 + i) % 60}" for i in range(6)]  # revisits ids: updates
                X = gen.normal(size=(6, DIM))
                r = client.put(f"{C}/cc/points", json={"ids": ids, "vectors": X.tolist()})
                if r.status_code != 200:
                    errors.append(f"upsert {r.status_code} {r.text[:200]}")
                    return
                model.update({e: x.tolist() for e, x in zip(ids, X)})
                if b % 4 == 3:
                    gone = ids[:2]
                    r = client.post(f"{C}/cc/points/delete", json={"ids": gone})
                    if r.status_code != 200:
                        errors.append(f"delete {r.status_code} {r.text[:200]}")
                        return
                    for e in gone:
                        model.pop(e, None)
                b += 1

        def reader(rd: int) -> None:
            gen = np.random.default_rng(200 + rd)
            while not stop.is_set():
                r = client.post(f"{C}/cc/search", json={"vector": gen.normal(size=DIM).tolist(), "k": 7,
                                                        "metric": "tri", "temperature": 10.0})
                if r.status_code != 200:
                    errors.append(f"search {r.status_code} {r.text[:200]}")
                    return
                hits = r.json()["hits"]
                if hits:
                    r = client.post(f"{C}/cc/search", json={"id": hits[0]["id"], "k": 3})
                    if r.status_code not in (200, 404):  # 404: deleted meanwhile
                        errors.append(f"id search {r.status_code} {r.text[:200]}")
                        return
                r = client.post(f"{C}/cc/points/scroll", json={"limit": 50})
                if r.status_code != 200:
                    errors.append(f"scroll {r.status_code} {r.text[:200]}")
                    return

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        readers = [threading.Thread(target=reader, args=(r,)) for r in range(8)]
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join(timeout=300)
        stop.set()
        for t in readers:
            t.join(timeout=60)
        assert not errors, errors[:5]
        want = {e: x for m in models for e, x in m.items()}
        assert client.get(f"{C}/cc").json()["count"] == len(want)
        got = client.post(f"{C}/cc/points/get", json={"ids": list(want), "with_payload": False}).json()
        assert got["missing"] == []
        for p in got["points"]:
            np.testing.assert_allclose(p["vector"], np.float32(want[p["id"]]), rtol=0, atol=0)
        every, offset = [], None
        while True:
            page = client.post(f"{C}/cc/points/scroll", json={"limit": 37, "offset": offset}).json()
            every += [p["id"] for p in page["points"]]
            if page["next_offset"] is None:
                break
            offset = page["next_offset"]
        assert sorted(every) == sorted(want) and len(every) == len(set(every))


def _kill(client: Any, name: str, j: int) -> int:
    """SIGKILL the process of shard j of `name` (found by its Ray title); its pid."""
    pid, _ = client.app.state.backend._members[name].shards[j].ping()
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ShardActor")
    os.kill(pid, signal.SIGKILL)
    return pid


def _until_ready(client: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)


def test_a_shard_killed_during_an_index_build_resumes_it_from_its_own_files_issue_13(ray_local, tmp_path):
    gen = np.random.default_rng(11)
    X = gen.normal(size=(3000, 16)).astype(np.float32)
    with ray_client(Path(tmp_path)) as client:
        assert client.put(f"{C}/ib", json={"dim": 16, "metrics": ["euc"], "shards": 3}).status_code == 201
        body = {"ids": list(range(3000)), "vectors": X.astype(float).tolist()}
        assert client.put(f"{C}/ib/points", json=body).status_code == 200
        r = client.post(f"{C}/ib/indexes", json={"metric": "euc", "kind": "hnsw", "params": {"M": 16}})
        assert r.status_code == 202, r.text
        _kill(client, "ib", 0)
        deadline = time.monotonic() + 90
        while True:
            r = client.get(f"{C}/ib/indexes")
            assert r.status_code in (200, 503) and time.monotonic() < deadline, r.text  # 503: shard 0 restarting
            states = {i["id"]: i["status"] for i in r.json()["indexes"]} if r.status_code == 200 else {}
            if states and all(s == "ready" for s in states.values()):
                break
            assert "failed" not in states.values(), states
            time.sleep(0.2)
        _until_ready(client)
        assert client.get(f"{C}/ib").json()["count"] == 3000
        q = {"vector": X[5].astype(float).tolist(), "k": 10, "metric": "euc"}
        flat = client.post(f"{C}/ib/search", json={**q, "kind": "flat"}).json()["hits"]
        hnsw = client.post(f"{C}/ib/search", json={**q, "kind": "hnsw", "exact": True}).json()["hits"]
        assert [h["id"] for h in hnsw] == [h["id"] for h in flat] and flat[0]["id"] == 5


def test_a_shard_killed_during_a_bulk_ingest_leaves_all_of_it_or_none_issue_13(ray_local, tmp_path):
    import io

    gen = np.random.default_rng(12)
    X = gen.normal(size=(40_000, 64)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, X)
    with ray_client(Path(tmp_path)) as client:
        assert client.put(f"{C}/bk", json={"dim": 64, "metrics": ["euc"], "shards": 3}).status_code == 201
        answer: list[Any] = []
        ingest = threading.Thread(target=lambda: answer.append(client.post(
            f"{C}/bk/points/bulk", params={"start": 0}, content=buf.getvalue(),
            headers={"content-type": "application/octet-stream"})))
        ingest.start()
        time.sleep(0.3)
        _kill(client, "bk", 1)
        ingest.join(timeout=120)
        r = answer[0]
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            assert "bk/shard-1" in r.json()["detail"] and r.headers["retry-after"]
        _until_ready(client)
        deadline = time.monotonic() + 30
        while True:  # the next request resolves what the failed write left prepared
            got = client.get(f"{C}/bk")
            if got.status_code == 200:
                break
            assert time.monotonic() < deadline, got.text
            time.sleep(0.2)
        count = got.json()["count"]
        assert count == (40_000 if r.status_code == 200 else count) and count in (0, 40_000)
        if count:
            hit = client.post(f"{C}/bk/search", json={"vector": X[39_999].astype(float).tolist(), "k": 1}).json()
            assert hit["hits"][0]["id"] == 39_999


def test_a_server_killed_mid_write_leaves_no_half_batch_and_loses_nothing_acknowledged_issue_13(
        ray_local, tmp_path):
    """The HTTP server (the coordinator) SIGKILLed while batches spanning 3 shards stream in; the
    detached shard actors live on; the next server finds them by name and resolves from its catalog
    what the killed one left prepared."""
    import httpx

    from tests.e2e.conftest import start_server, stop_server

    env = {"LOGITSEARCH_RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "LOGITSEARCH_RAY_SHARD_CPUS": "0.1"}
    data = Path(tmp_path) / "data"
    base, proc = start_server(data, env, timeout=120)
    acked: list[list[str]] = []
    sent: list[list[str]] = []
    try:
        assert httpx.put(f"{base}{C}/k", json={"dim": DIM, "metrics": ["euc"], "shards": 3},
                         timeout=60).status_code == 201
        stop = threading.Event()

        def stream() -> None:
            gen = np.random.default_rng(9)
            with httpx.Client(base_url=base, timeout=30) as h:
                b = 0
                while not stop.is_set():
                    ids = [f"k{b}-{i}" for i in range(12)]
                    sent.append(ids)
                    try:
                        r = h.put(f"{C}/k/points", json={"ids": ids, "vectors": gen.normal(size=(12, DIM)).tolist()})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        acked.append(ids)
                    b += 1

        writer = threading.Thread(target=stream)
        writer.start()
        deadline = time.monotonic() + 60
        while len(acked) < 8:
            assert time.monotonic() < deadline and writer.is_alive()
            time.sleep(0.01)
        proc.kill()
        proc.wait(timeout=30)
        stop.set()
        writer.join(timeout=60)
    finally:
        stop_server(proc)
    base, proc = start_server(data, env, timeout=120)
    try:
        with httpx.Client(base_url=base, timeout=60) as h:
            def present(ids: list[str]) -> int:
                r = h.post(f"{C}/k/points/get", json={"ids": ids, "with_vector": False, "with_payload": False})
                assert r.status_code == 200, r.text
                return len(r.json()["points"])

            everything = [e for ids in acked for e in ids]
            assert present(everything) == len(everything)
            assert all(present(ids) in (0, len(ids)) for ids in sent)  # the batch in flight: whole or absent
            whole = sum(present(ids) == len(ids) for ids in sent)
            assert h.get(f"{C}/k").json()["count"] == 12 * whole
            assert h.get("/readyz").json()["shards"] == {f"k/shard-{j}": "ready" for j in range(3)}
    finally:
        stop_server(proc)


def test_a_shard_whose_files_cannot_be_opened_answers_503_with_the_reason_and_recovers_when_mended(
        ray_local, tmp_path):
    """A constructor that raised left the actor dead for good (Ray restarts a dead process, not a
    failed constructor): every request touching the shard then said "restarting" until the server was
    restarted. Now the shard answers 503 with the reason, and opens its files again once they are
    mended, with nothing lost."""
    from service.store import FILENAME

    with ray_client(Path(tmp_path)) as client:
        assert client.put(f"{C}/g", json={"dim": DIM, "metrics": ["euc"], "shards": 3}).status_code == 201
        ids = [f"p{i}" for i in range(60)]
        X = np.random.default_rng(3).normal(size=(60, DIM))
        assert client.put(f"{C}/g/points", json={"ids": ids, "vectors": X.tolist()}).status_code == 200
        coord = client.app.state.backend
        victim = coord._members["g"].shards[1]
        pid, _ = victim.ping()
        files = coord._ray.directory(coord.catalog.get("g").cid, 1)
        aside = Path(tmp_path) / "aside"
        aside.mkdir()
        os.kill(pid, signal.SIGSTOP)  # no write lands while its database is swapped for garbage
        for f in files.glob(f"{FILENAME}*"):
            f.rename(aside / f.name)
        (files / FILENAME).write_bytes(b"not a database " * 1000)
        os.kill(pid, signal.SIGKILL)
        deadline, r = time.monotonic() + 60, None
        while r is None or "could not be opened" not in r.json().get("detail", ""):
            assert time.monotonic() < deadline, r.json() if r is not None else None
            r = client.post(f"{C}/g/search", json={"vector": [0.0] * DIM, "k": 3})
            assert r.status_code in (503,), r.text
            time.sleep(0.1)
        assert "g/shard-1" in r.json()["detail"] and r.headers["retry-after"]
        assert client.get("/readyz").status_code == 503
        assert victim.ping()[0] != pid  # the actor is alive, in a new process: it answers ping
        (files / FILENAME).unlink()
        for f in aside.iterdir():
            f.rename(files / f.name)
        deadline = time.monotonic() + 60
        while (r := client.post(f"{C}/g/search", json={"vector": [0.0] * DIM, "k": 3})).status_code != 200:
            assert time.monotonic() < deadline and r.status_code == 503, r.text
            time.sleep(0.2)
        assert _present_in(client, "g", ids) == 60
        assert client.get("/readyz").status_code == 200


def _present_in(client: Any, name: str, ids: list[Any]) -> int:
    r = client.post(f"{C}/{name}/points/get", json={"ids": ids, "with_vector": False, "with_payload": False})
    assert r.status_code == 200, r.text
    return len(r.json()["points"])
