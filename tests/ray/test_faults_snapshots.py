"""A shard actor's process SIGKILLed inside a snapshot (issue 13, "Faults"): inside its own index
snapshot (the per-shard IVF .faiss and table files), inside a collection archive being taken, and
inside one being restored. Each kill is shown to have landed inside the operation: the operation's
scratch directory is still on disk after the kill (a finished one removes it).

After recovery no acknowledged write is lost and no refused batch is there in part; while the shard
is down requests answer 503 naming it (never 500, never a partial answer); an archive operation
either completes or answers 503 naming the shard, and a failed restore leaves no collection behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.ray.conftest import full_ray_suite

pytestmark = full_ray_suite

from tests.ray.conftest import ray_client

C = "/v1/collections"
N, DIM = 45_000, 96
TAR = {"content-type": "application/x-tar"}


@pytest.fixture(scope="module")
def big(ray_local, tmp_path_factory):
    """A 3-shard collection of 45,000 x 96 rows with an IVF index (nprobe = nlist: every list is
    searched, so the answers are exact), ingested in bulk."""
    gen = np.random.default_rng(41)
    X = gen.normal(size=(N, DIM)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, X)
    with ray_client(tmp_path_factory.mktemp("data")) as client:
        r = client.put(f"{C}/big", json={"dim": DIM, "metrics": ["euc"],
                                         "index": {"kind": "ivf", "params": {"nlist": 16, "nprobe": 16}},
                                         "shards": 3})
        assert r.status_code == 201, r.text
        r = client.post(f"{C}/big/points/bulk", params={"start": 0}, content=buf.getvalue(),
                        headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        yield client, X


def _shard(client: Any, name: str, j: int) -> tuple[Any, Path]:
    """(handle, directory) of shard j of collection `name`."""
    coord = client.app.state.backend
    return coord._members[name].shards[j], coord._ray.directory(coord.catalog.get(name).cid, j)


def _pid(shard: Any) -> int:
    pid, _ = shard.ping()
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ShardActor")  # the actor's own process
    return int(pid)


def _kill_when(shard: Any, found: Any, seconds: float = 60, alive: threading.Thread | None = None) -> Path | None:
    """SIGKILL the shard's process as soon as `found()` names a path (polled every ~0.5 ms, while
    `alive` runs); the path if it is still there after the kill (the kill landed inside), None if
    `found` never named one."""
    pid = _pid(shard)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (alive is None or alive.is_alive()):
        path = found()
        if path is not None:
            os.kill(pid, signal.SIGKILL)
            return path if path.exists() else None
        time.sleep(0.0005)
    return None


def _back(shard: Any, old_pid: int | None = None, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(Exception):  # still restarting
            pid, _ = shard.ping(timeout=2)
            if pid != old_pid:
                return
        assert time.monotonic() < deadline, "the shard did not come back"
        time.sleep(0.1)


def _down_503(client: Any, name: str, label: str) -> None:
    """Right after the kill, searches answer 503 with Retry-After naming the shard (never a 500,
    never the other shards' answers alone)."""
    deadline = time.monotonic() + 10
    while True:
        r = client.post(f"{C}/{name}/search", json={"vector": [0.0] * DIM, "k": 3})
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            assert r.headers["retry-after"] and label in r.json()["detail"], r.text
            return
        assert len(r.json()["hits"]) == 3
        assert time.monotonic() < deadline, "no search noticed the dead shard"


def _first(paths: Any) -> Path | None:
    return next(iter(paths), None)


def _exact(client: Any, name: str, q: np.ndarray, k: int = 10) -> list[tuple[Any, float]]:
    r = client.post(f"{C}/{name}/search", json={"vector": q.astype(float).tolist(), "k": k, "exact": True})
    assert r.status_code == 200, r.text
    return [(h["id"], h["distance"]) for h in r.json()["hits"]]


def test_a_shard_killed_inside_its_index_snapshot_recovers_and_loses_no_write_issue_13(big):
    client, X = big
    shard, directory = _shard(client, "big", 0)
    shard.snapshot()  # a complete snapshot first: the killed one must not damage it
    assert (directory / "indexes" / "euc-ivf.faiss").is_file()

    acked: list[tuple[list[str], np.ndarray]] = []
    refused: list[tuple[list[str], np.ndarray, int, str | None, str]] = []
    stop = threading.Event()

    def stream() -> None:
        gen = np.random.default_rng(7)
        b = 0
        while not stop.is_set():
            ids = [f"s{b}-{i}" for i in range(12)]  # every batch spans the 3 shards
            V = gen.normal(size=(12, DIM)).astype(np.float32)
            r = client.put(f"{C}/big/points", json={"ids": ids, "vectors": V.astype(float).tolist()})
            if r.status_code == 200:
                acked.append((ids, V))
            else:
                refused.append((ids, V, r.status_code, r.headers.get("retry-after"), r.json().get("detail", "")))
            b += 1

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while len(acked) < 3:
            assert time.monotonic() < deadline and writer.is_alive(), refused
            time.sleep(0.01)
        landed = None
        for _ in range(6):  # a save this size takes tens of ms: retried if the poll missed it
            pid = _pid(shard)
            snap = threading.Thread(target=lambda: _ignore(shard.snapshot))
            snap.start()
            landed = _kill_when(shard, lambda: _first(p for p in directory.glob(".indexes.tmp-*")
                                                       if any(p.iterdir())), seconds=60, alive=snap)
            snap.join(timeout=120)
            if landed is not None:
                break
            _back(shard)
        assert landed is not None, "no kill landed inside the index snapshot"
        _down_503(client, "big", "big/shard-0")
        _back(shard, pid)
        grown = len(acked)
        deadline = time.monotonic() + 60
        while len(acked) < grown + 3:  # writes flow again
            assert time.monotonic() < deadline and writer.is_alive(), refused[-3:]
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join(timeout=120)
    assert not landed.exists() or not any(landed.glob("manifest.json"))  # never completed
    assert (directory / "indexes" / "euc-ivf.faiss").is_file()  # the earlier snapshot, intact
    for ids, V, status, retry, detail in refused:
        assert status == 503 and retry and "big/shard-0" in detail, (status, detail)
    present = {p["id"] for p in _get(client, [e for ids, *_ in acked + refused for e in ids])}
    assert all(e in present for ids, _ in acked for e in ids)  # no acknowledged write lost
    whole = [(ids, V) for ids, V, *_ in refused if set(ids) <= present]
    assert all(not (set(ids) & present) for ids, V, *_ in refused if not set(ids) <= present)  # none in part
    assert client.get(f"{C}/big").json()["count"] == N + 12 * (len(acked) + len(whole))
    # the recovered shard answers as float64 brute force over every point the writers left
    rows = np.concatenate([X] + [V for _, V in acked + whole])
    names: list[Any] = list(range(N)) + [e for ids, _ in acked + whole for e in ids]
    for q in (X[17], rows[-5] + 0.01, np.zeros(DIM, np.float32)):
        d = ((rows.astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1)
        order = np.argsort(d, kind="stable")[:10]
        got = _exact(client, "big", q)
        assert [g[0] for g in got] == [names[i] for i in order]
        np.testing.assert_allclose([g[1] for g in got], d[order], rtol=1e-5, atol=1e-4)


def _ignore(fn: Any) -> None:
    with contextlib.suppress(Exception):  # the call dies with its process
        fn()


def _get(client: Any, ids: list[Any]) -> list[dict[str, Any]]:
    r = client.post(f"{C}/big/points/get", json={"ids": ids, "with_vector": False, "with_payload": False})
    assert r.status_code == 200, r.text
    return r.json()["points"]  # type: ignore[no-any-return]


def test_a_shard_killed_during_an_archive_create_and_restore_fails_cleanly_or_completes_issue_13(big):
    client, X = big
    snapshots = Path(client.app.state.backend.data_dir) / "snapshots"
    shard, directory = _shard(client, "big", 1)

    # --- taking the archive ------------------------------------------------------------------
    answer: list[Any] = []
    taking = threading.Thread(target=lambda: answer.append(client.post(f"{C}/big/snapshots")))
    pid = _pid(shard)
    taking.start()
    landed = _kill_when(shard, lambda: _first(directory.glob("archive-*")))
    _down_503(client, "big", "big/shard-1")
    taking.join(timeout=180)
    assert landed is not None, "the kill did not land inside the archive"
    r = answer[0]
    assert r.status_code in (201, 503), r.text
    if r.status_code == 503:
        assert r.headers["retry-after"] and "big/shard-1" in r.json()["detail"], r.text
        assert not list(snapshots.glob("big/*.tar"))
    assert not any((snapshots / ".work").iterdir())  # no half archive left behind
    _back(shard, pid)
    r = client.post(f"{C}/big/snapshots")  # the shard is back: the archive is taken
    assert r.status_code == 201, r.text
    kept = r.json()
    assert not list(directory.glob("archive-*"))  # the shards' scratch is gone
    data = client.get(f"{C}/big/snapshots/{kept['name']}").content

    # --- restoring it ------------------------------------------------------------------------
    coord = client.app.state.backend

    def staging() -> Path | None:
        entry, member = coord.catalog.find("back"), coord._members.get("back")
        if entry is None or member is None or not member.shards:
            return None
        return _first(coord._ray.directory(entry.cid, 1).glob("restore-*"))

    answer.clear()
    restoring = threading.Thread(target=lambda: answer.append(
        client.put(f"{C}/back/snapshots/upload", content=data, headers=TAR)))
    restoring.start()
    deadline = time.monotonic() + 120
    while coord._members.get("back") is None or not coord._members["back"].shards:
        assert time.monotonic() < deadline and restoring.is_alive(), answer
        time.sleep(0.001)
    victim = coord._members["back"].shards[1]
    cid = coord.catalog.get("back").cid
    landed = _kill_when(victim, staging, seconds=120)
    restoring.join(timeout=300)
    assert landed is not None, "the kill did not land inside the restore"
    r = answer[0]
    assert r.status_code in (201, 503), r.text
    if r.status_code == 503:
        assert r.headers["retry-after"] and "back/shard-1" in r.json()["detail"], r.text
        assert client.get(f"{C}/back").status_code == 404  # no half-restored collection
        assert "back" not in client.get(f"{C}").text
        shards_dir = Path(coord.data_dir) / "shards"
        assert not list(shards_dir.glob(f"c{cid}-s*"))  # nor its shards' files
        r = client.put(f"{C}/back/snapshots/upload", content=data, headers=TAR)
        assert r.status_code == 201, r.text
    assert r.json()["count"] == kept["count"] == client.get(f"{C}/big").json()["count"]
    for q in (X[3], X[40_000] + 0.01):
        assert _exact(client, "back", q) == _exact(client, "big", q)


def test_a_server_killed_during_a_sharded_restore_leaves_no_collection_at_its_next_start_issue_13(
        big, ray_local, tmp_path):
    """The HTTP server (the coordinator) SIGKILLed while a restore's parts are being prepared on
    its shards: its next start finds the restore unfinished (never committed) and drops the
    collection, its actors and their files; the same archive then restores whole."""
    import httpx

    from tests.e2e.conftest import start_server, stop_server

    client, _ = big
    r = client.post(f"{C}/big/snapshots")
    assert r.status_code == 201, r.text
    kept = r.json()
    data = client.get(f"{C}/big/snapshots/{kept['name']}").content
    env = {"LOGITSEARCH_RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "LOGITSEARCH_RAY_SHARD_CPUS": "0.1", "LOGITSEARCH_WARMUP_SECONDS": "0"}
    root = Path(tmp_path) / "data"
    base, proc = start_server(root, env, timeout=120)
    try:
        answer: list[Any] = []

        def upload() -> None:
            try:
                answer.append(httpx.put(f"{base}{C}/back/snapshots/upload", content=data, headers=TAR, timeout=300))
            except httpx.HTTPError as exc:
                answer.append(exc)

        restoring = threading.Thread(target=upload)
        restoring.start()
        deadline = time.monotonic() + 120
        while not list(root.glob("shards/*/restore-*")):  # a part is being staged: before the commit
            assert time.monotonic() < deadline and restoring.is_alive(), answer
            time.sleep(0.001)
        proc.kill()
        proc.wait(timeout=30)
        restoring.join(timeout=60)
        assert isinstance(answer[0], httpx.HTTPError)  # the request died with its server
        assert list(root.glob("shards/*"))  # the shards' files outlived it
    finally:
        stop_server(proc)
    base, proc = start_server(root, env, timeout=120)
    try:
        assert httpx.get(f"{base}{C}/back", timeout=60).status_code == 404
        assert "back" not in httpx.get(f"{base}{C}", timeout=60).text
        assert not list(root.glob("shards/*"))  # its shards' files went with it
        r = httpx.put(f"{base}{C}/back/snapshots/upload", content=data, headers=TAR, timeout=300)
        assert r.status_code == 201, r.text
        assert r.json()["count"] == kept["count"]
    finally:
        stop_server(proc)
