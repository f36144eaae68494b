"""Faults with a real server process (issue 7): SIGKILL during a write stream, an index build and a
snapshot; a damaged snapshot. After every restart each acknowledged write is there with its exact
vector, nothing else is, and search answers equal float64 brute force over what the server holds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tests.e2e.conftest import start_server, stop_server
from tests.reliability._oracle import assert_holds_exactly, assert_search_agrees, stored_points

DIM = 8
T = 1.0
NAME = "crash"


class WriteStream(threading.Thread):
    """Upserts (ids 0..299, so many overwrite) and deletes until the connection fails or `stop`.

    `model` holds exactly the acknowledged state; `pending` is the one write in flight when the
    server died (committed or not: both are acceptable, and resolved after the restart)."""

    def __init__(self, base: str, model: dict, rng: np.random.Generator) -> None:
        super().__init__(daemon=True)
        self.base, self.model, self.rng = base, model, rng
        self.pending: tuple[str, dict] | None = None
        self.acked = 0
        self.unexpected: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                if self.model and self.rng.random() < 0.25:
                    ids = [int(i) for i in self.rng.choice(list(self.model), size=min(3, len(self.model)),
                                                            replace=False)]
                    op = ("delete", {i: None for i in ids})
                    request = ("POST", f"/v1/collections/{NAME}/points/delete", {"ids": ids})
                else:
                    ids = [int(i) for i in self.rng.choice(300, size=int(self.rng.integers(1, 20)), replace=False)]
                    X = self.rng.normal(0, 3, (len(ids), DIM)).astype(np.float32)
                    op = ("upsert", dict(zip(ids, X)))
                    request = ("PUT", f"/v1/collections/{NAME}/points", {"ids": ids, "vectors": X.tolist()})
                self.pending = op
                try:
                    r = client.request(request[0], request[1], json=request[2])
                except httpx.TransportError:
                    return  # the server died under this write: it stays pending
                if r.status_code != 200:
                    self.unexpected.append(f"{r.status_code} {r.text[:300]}")
                    return
                for i, x in op[1].items():
                    if x is None:
                        self.model.pop(i, None)
                    else:
                        self.model[i] = x
                self.pending = None
                self.acked += 1


def _resolve_pending(pending: tuple[str, dict] | None, model: dict, stored: dict) -> None:
    """The write in flight at the kill: every id it touched is either as before or as written, and all
    of them agree on which (one transaction per request)."""
    if pending is None:
        return
    kind, change = pending
    def as_before(i: int) -> bool:
        return (i in stored and np.array_equal(stored[i], model[i])) if i in model else i not in stored

    before = [as_before(i) for i in change]
    after = [(i not in stored) if x is None else (i in stored and np.array_equal(stored[i], x))
             for i, x in change.items()]
    assert all(before) or all(after), f"half-applied {kind}: before={before} after={after}"
    if all(after) and not all(before):
        for i, x in change.items():
            if x is None:
                model.pop(i, None)
            else:
                model[i] = x


def _check(base: str, model: dict, rng: np.random.Generator) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        stored = stored_points(client, NAME)
        assert_holds_exactly(stored, model)
        info = client.get(f"/v1/collections/{NAME}").json()
        assert info["count"] == len(model)
        if model:
            for _ in range(3):
                q = rng.normal(0, 3, DIM)
                assert_search_agrees(client, NAME, stored, q, "euc", 10)
                assert_search_agrees(client, NAME, stored, q, "tri", 10, T)


def test_acknowledged_writes_survive_repeated_sigkill(tmp_path, rng):
    data = tmp_path / "data"
    env = {"LOGITSEARCH_SNAPSHOT_EVERY": "150"}  # snapshots run often, so some kills land in one
    base, proc = start_server(data, env)
    try:
        r = httpx.put(f"{base}/v1/collections/{NAME}", json={"dim": DIM, "metrics": ["euc", "tri"], "temperatures": [T]})
        assert r.status_code == 201, r.text
        model: dict = {}
        acked = []
        for _ in range(3):
            writer = WriteStream(base, model, rng)
            writer.start()
            time.sleep(float(rng.uniform(0.4, 1.5)))
            proc.kill()
            proc.wait()
            writer.join(timeout=30)
            assert not writer.unexpected, writer.unexpected
            acked.append(writer.acked)
            base, proc = start_server(data, env)
            with httpx.Client(base_url=base, timeout=30) as client:
                _resolve_pending(writer.pending, model, stored_points(client, NAME))
            _check(base, model, rng)
        assert min(acked) > 0, f"a round acknowledged no write before its kill: {acked}"
    finally:
        stop_server(proc)


def _bulk(base: str, X: np.ndarray, start: int) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, X)
    r = httpx.post(f"{base}/v1/collections/{NAME}/points/bulk", params={"start": start}, content=buf.getvalue(),
                   headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert r.status_code == 200, r.text


def _indexes(base: str) -> dict[str, dict]:
    r = httpx.get(f"{base}/v1/collections/{NAME}/indexes", timeout=30)
    assert r.status_code == 200, r.text
    return {ix["id"]: ix for ix in r.json()["indexes"]}


def _wait_ready(base: str, key: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ix = _indexes(base).get(key)
        assert ix is not None and ix["status"] != "failed", ix
        if ix["status"] == "ready":
            return ix
        assert time.monotonic() < deadline, f"index {key} not ready after {timeout} s: {ix}"
        time.sleep(0.1)


def _snapshot_in_progress(data: Path) -> bool:
    root = data / "indexes"
    try:
        return any(".tmp-" in p.name for p in root.iterdir())
    except FileNotFoundError:
        return False


def test_kill_during_index_build_during_snapshot_and_a_damaged_snapshot_recover(tmp_path, rng):
    data = tmp_path / "data"
    n, d = 6_000, 32
    X = rng.normal(0, 3, (n, d)).astype(np.float32)
    env = {"LOGITSEARCH_SNAPSHOT_EVERY": "1000"}
    base, proc = start_server(data, env)
    try:
        r = httpx.put(f"{base}/v1/collections/{NAME}", json={"dim": d, "metrics": ["euc"]})
        assert r.status_code == 201, r.text
        _bulk(base, X, 0)
        model = {i: X[i] for i in range(n)}

        # 1. SIGKILL while an HNSW index builds in the background
        r = httpx.post(f"{base}/v1/collections/{NAME}/indexes",
                       json={"metric": "tri", "temperature": T, "kind": "hnsw", "params": {"M": 16}}, timeout=30)
        assert r.status_code == 202, r.text
        key = r.json()["id"]
        seen_building = _indexes(base)[key]["status"] == "building"
        proc.kill()
        proc.wait()
        assert seen_building
        base, proc = start_server(data, env)
        assert _wait_ready(base, key)["vectors"] == n  # the unfinished build ran again after the restart

        # 2. SIGKILL while a snapshot is being written (the build's completion forces one; more writes
        # schedule others): the kill lands inside one when the poll sees its temporary directory.
        for attempt in range(3):
            start = n + 2000 * attempt
            Y = rng.normal(0, 3, (2000, d)).astype(np.float32)
            _bulk(base, Y, start)  # more than SNAPSHOT_EVERY points: schedules a snapshot
            model.update({start + i: Y[i] for i in range(len(Y))})
            deadline = time.monotonic() + 5
            while not _snapshot_in_progress(data) and time.monotonic() < deadline:
                time.sleep(0.0005)
            caught = _snapshot_in_progress(data)
            if caught:
                break
        proc.kill()
        proc.wait()
        assert caught, "no snapshot was seen in progress to kill"
        # the killed snapshot's temporary directory is still there for the restart to clear away
        assert _snapshot_in_progress(data)
        base, proc = start_server(data, env)
        _wait_ready(base, key)

        with httpx.Client(base_url=base, timeout=60) as client:
            stored = stored_points(client, NAME)
            assert_holds_exactly(stored, model)
            for _ in range(2):
                q = rng.normal(0, 3, d)
                assert_search_agrees(client, NAME, stored, q, "euc", 10)
                assert_search_agrees(client, NAME, stored, q, "tri", 10, T, kind="hnsw")
        stop_server(proc)
        assert not _snapshot_in_progress(data), "the killed snapshot's leftovers outlived a clean save"

        # 3. a damaged snapshot (a crash or a bad disk): the server rebuilds from SQLite
        snapshots = [p for p in (data / "indexes").iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert snapshots, "a clean stop leaves a snapshot"
        for f in snapshots[0].iterdir():
            if f.suffix == ".npy":
                f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
        base, proc = start_server(data, env)
        _wait_ready(base, key)
        port = base.rsplit(":", 1)[1]
        assert "rebuilding from SQLite" in (tmp_path / f"server-{port}.log").read_text()
        with httpx.Client(base_url=base, timeout=60) as client:
            stored = stored_points(client, NAME)
            assert_holds_exactly(stored, model)
            q = rng.normal(0, 3, d)
            assert_search_agrees(client, NAME, stored, q, "euc", 10)
            assert_search_agrees(client, NAME, stored, q, "tri", 10, T, kind="hnsw")
    finally:
        stop_server(proc)


def _largest_file(root: Path) -> int:
    return max((p.stat().st_size for p in root.rglob("*") if p.is_file()), default=0)


def test_a_full_disk_refuses_the_write_clearly_and_loses_nothing(tmp_path, rng):
    """A real write failure without root: RLIMIT_FSIZE on the running server makes every write past
    the limit fail with EFBIG (Python ignores SIGXFSZ), which SQLite reports as it would a full disk."""
    import resource
    import sqlite3

    data = tmp_path / "data"
    d = 64
    base, proc = start_server(data)
    try:
        client = httpx.Client(base_url=base, timeout=60)
        assert client.put(f"/v1/collections/{NAME}", json={"dim": d, "metrics": ["euc"]}).status_code == 201
        model: dict = {}
        # the soft limit only, so that it can be lifted again without privileges
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (_largest_file(data) + (1 << 19), resource.RLIM_INFINITY))
        failed = None
        for batch in range(40):
            ids = list(range(batch * 500, batch * 500 + 500))
            X = rng.normal(0, 3, (500, d)).astype(np.float32)
            r = client.put(f"/v1/collections/{NAME}/points", json={"ids": ids, "vectors": X.tolist()})
            if r.status_code != 200:
                failed = (ids, r)
                break
            model.update(zip(ids, X))
        assert failed is not None, "the write limit never bit"
        ids, r = failed
        problem = r.json()
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
        assert "nothing was written" in problem["detail"] and "disk" in problem["detail"], problem
        got = client.post(f"/v1/collections/{NAME}/points/get", json={"ids": ids[:50], "with_vector": False})
        assert got.status_code == 200 and got.json()["points"] == [], "a refused write left points behind"
        assert_holds_exactly(stored_points(client, NAME), model)
        assert_search_agrees(client, NAME, model, rng.normal(0, 3, d), "euc", 10)

        # the disk has room again: the same server takes the write
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        X = rng.normal(0, 3, (len(ids), d)).astype(np.float32)
        r = client.put(f"/v1/collections/{NAME}/points", json={"ids": ids, "vectors": X.tolist()})
        assert r.status_code == 200, r.text
        model.update(zip(ids, X))
        stored = stored_points(client, NAME)  # read from SQLite, the durable state
        assert_holds_exactly(stored, model)
        assert_search_agrees(client, NAME, stored, rng.normal(0, 3, d), "euc", 10)
        client.close()
        db = sqlite3.connect(f"file:{data / 'logitsearch.sqlite3'}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            db.close()
    finally:
        stop_server(proc)


def test_a_data_dir_that_cannot_be_a_directory_stops_the_start_with_a_clear_error(tmp_path):
    import pytest
    from fastapi.testclient import TestClient

    from core.errors import StorageError
    from service.app import create_app
    from service.settings import load_settings

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for data_dir in (blocker, blocker / "below"):
        with pytest.raises(StorageError) as err, TestClient(create_app(load_settings({"data_dir": str(data_dir)},
                                                                                       environ={}))):
            pass
        assert str(data_dir) in str(err.value)
    assert blocker.read_text() == "not a directory"
