"""The backend's durability and concurrency: snapshot + replay, rebuild from SQLite, failed applies,
index states across restarts, and a search never seeing half of a bulk ingest."""

from __future__ import annotations

import json

import sqlite3
import threading
import time

import numpy as np
import pytest

import service.shard
from indexes.knn import IndexSet
from service.catalog import CollectionConfig
from service.coordinator import Coordinator, Query
from service.shard import CollectionShard
from service.settings import load_settings
from service.store import FILENAME


def _backend(path, **overrides):
    b = Coordinator(load_settings({"data_dir": str(path), **overrides}, environ={}))
    b.open(background=False)
    return b


def _answers(b, name, Q, metric="euc", t=None, k=5):
    res = b.search(name, [Query(k=k, metric=metric, vector=q, temperature=t) for q in Q])
    return [([h.id for h in r.hits], [h.distance for h in r.hits]) for r in res]


def _fill(b, rng, n=120, d=6):
    b.create_collection("c", CollectionConfig.create(d, ["euc", "tri"], [2.0]))
    X = rng.normal(size=(n, d)).astype(np.float32)
    ids = [f"p{i}" if i % 2 else i for i in range(n)]
    b.upsert("c", ids[: n // 2], X[: n // 2])
    return X, ids


def _expected(X, ids, Q, keep, k=5):
    """euc top-k over the kept rows, brute force in float64."""
    rows = [i for i in range(len(ids)) if keep[i]]
    out = []
    for q in Q:
        d = ((X[rows].astype(np.float64) - q) ** 2).sum(axis=1)
        order = np.argsort(d, kind="stable")[:k]
        out.append([ids[rows[j]] for j in order])
    return out


def test_restart_loads_the_snapshot_and_replays_later_writes_and_deletes(tmp_path, rng, monkeypatch):
    b = _backend(tmp_path)
    X, ids = _fill(b, rng)
    b.snapshot_all()
    b.upsert("c", ids[60:], X[60:])
    b.delete_points("c", ids[:10])
    Q = rng.normal(size=(4, 6))
    before = _answers(b, "c", Q) + _answers(b, "c", Q, "tri", 2.0)
    # no close(): as after kill -9, the snapshot is older than SQLite
    monkeypatch.setattr(CollectionShard, "_build_from_store", lambda *a: pytest.fail("should replay, not rebuild"))
    b2 = _backend(tmp_path)
    assert _answers(b2, "c", Q) + _answers(b2, "c", Q, "tri", 2.0) == before
    keep = [i >= 10 for i in range(120)]
    assert [a[0] for a in _answers(b2, "c", Q)] == _expected(X, ids, Q, keep)
    assert b2.get_collection("c").count == 110 and b2.get_collection("c").last_operation_id == 3


def test_a_damaged_or_foreign_snapshot_is_rebuilt_from_sqlite(tmp_path, rng):
    b = _backend(tmp_path)
    X, ids = _fill(b, rng)
    b.upsert("c", ids[60:], X[60:])
    b.close()
    snap = tmp_path / "indexes" / "c1"
    victim = snap / "ids.npy"
    assert victim.exists()
    victim.write_bytes(victim.read_bytes()[:-8] + b"\x00" * 8)
    Q = rng.normal(size=(3, 6))
    b2 = _backend(tmp_path)
    assert [a[0] for a in _answers(b2, "c", Q)] == _expected(X, ids, Q, [True] * 120)
    b2.close()
    # a snapshot ahead of SQLite (as if SQLite had lost its last write) is not trusted either
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("DELETE FROM points WHERE seq = 2")
        db.execute("UPDATE collections SET last_seq = 1")
    b3 = _backend(tmp_path)
    assert b3.get_collection("c").status == "ready" and b3.get_collection("c").count == 60
    assert [a[0] for a in _answers(b3, "c", Q)] == _expected(X, ids, Q, [i < 60 for i in range(120)])


def test_close_snapshots_and_a_snapshot_prunes_recorded_deletes(tmp_path, rng):
    b = _backend(tmp_path)
    _, ids = _fill(b, rng)
    b.delete_points("c", ids[:5])
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT count(*) FROM deleted").fetchone()[0] == 5
    b.close()
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT count(*) FROM deleted").fetchone()[0] == 0
    assert json.loads((tmp_path / "indexes" / "c1" / "manifest.json").read_text())["last_seq"] == 2


def test_a_failed_index_apply_rebuilds_from_sqlite_and_loses_nothing(tmp_path, rng, monkeypatch):
    b = _backend(tmp_path)
    X, ids = _fill(b, rng)
    real, calls = IndexSet.upsert, []

    def flaky(self, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("simulated")
        return real(self, *a, **kw)

    monkeypatch.setattr(IndexSet, "upsert", flaky)
    result = b.upsert("c", ids[60:], X[60:])
    assert result.status == "rebuilding" and result.count == 60
    deadline = time.monotonic() + 10
    while b.get_collection("c").status != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    Q = rng.normal(size=(3, 6))
    assert [a[0] for a in _answers(b, "c", Q)] == _expected(X, ids, Q, [True] * 120)


def test_indexes_built_later_survive_a_restart_and_unfinished_builds_resume(tmp_path, rng, monkeypatch):
    from indexes.knn import IndexSpec

    b = _backend(tmp_path)
    _fill(b, rng)
    b.add_index("c", IndexSpec("ced", 0.5))
    deadline = time.monotonic() + 10
    while {i.key: i.status for i in b.list_indexes("c")}["ced-t0.5-flat"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    Q = rng.normal(size=(2, 6))
    want = _answers(b, "c", Q, "ced", 0.5)
    b.close()
    b2 = _backend(tmp_path)
    assert _answers(b2, "c", Q, "ced", 0.5) == want
    # a build interrupted by a crash is recorded as building and runs again on start
    release = threading.Event()
    real = IndexSet.add_index

    def stuck(self, spec, progress=None):
        if spec.metric == "cos":
            release.wait(10)
            raise MemoryError("the process died here")
        return real(self, spec, progress)

    monkeypatch.setattr(IndexSet, "add_index", stuck)
    b2.add_index("c", IndexSpec("cos"))
    monkeypatch.setattr(IndexSet, "add_index", real)
    b3 = _backend(tmp_path)  # opened while b2's build hangs: as if b2 had been killed
    release.set()
    deadline = time.monotonic() + 10
    while {i.key: i.status for i in b3.list_indexes("c")}.get("cos-flat") != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert b3.search("c", [Query(k=3, metric="cos", vector=Q[0])])[0].index == "cos-flat"


@pytest.mark.parametrize("keep", [0, 1 << 20], ids=["read back from SQLite", "applied from memory"])
def test_a_search_sees_all_of_a_bulk_ingest_or_none_of_it(tmp_path, rng, monkeypatch, keep):
    monkeypatch.setattr(service.shard, "APPLY_CHUNK", 10)
    monkeypatch.setattr(service.shard, "BULK_KEEP_BYTES", keep)
    real = IndexSet.upsert

    def slow(self, *a, **kw):
        time.sleep(0.01)
        return real(self, *a, **kw)

    monkeypatch.setattr(IndexSet, "upsert", slow)
    b = _backend(tmp_path)
    b.create_collection("c", CollectionConfig.create(4, ["euc"]))
    b.upsert("c", list(range(50)), rng.normal(size=(50, 4)).astype(np.float32))
    far = np.full((80, 4), 100.0, dtype=np.float32) + rng.normal(0, 0.01, (80, 4)).astype(np.float32)
    seen, stop = set(), threading.Event()

    def searcher():
        while not stop.is_set():
            hits = b.search("c", [Query(k=200, metric="euc", vector=np.full(4, 100.0))])[0].hits
            seen.add(sum(1 for h in hits if isinstance(h.id, int) and h.id >= 1000))

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    b.bulk_upsert("c", [far[:40], far[40:]], range(1000, 1080))
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert seen <= {0, 80} and 80 in seen


def test_a_snapshot_that_fails_its_replay_is_rebuilt_from_sqlite(tmp_path, rng, monkeypatch):
    b = _backend(tmp_path)
    X, ids = _fill(b, rng)
    b.snapshot_all()
    b.upsert("c", ids[60:], X[60:])
    real, calls = IndexSet.upsert, []

    def flaky(self, *a, **kw):
        calls.append(1)
        if len(calls) == 1:  # the first replayed chunk
            raise MemoryError("simulated")
        return real(self, *a, **kw)

    monkeypatch.setattr(IndexSet, "upsert", flaky)
    b2 = _backend(tmp_path)
    assert b2.get_collection("c").status == "ready" and len(calls) >= 2
    Q = rng.normal(size=(3, 6))
    assert [a[0] for a in _answers(b2, "c", Q)] == _expected(X, ids, Q, [True] * 120)


def test_wal_checkpoints_run_off_the_commit_and_keep_every_write(tmp_path, rng):
    from service import store as store_module

    b = _backend(tmp_path / "data")
    try:
        db = tmp_path / "data" / FILENAME
        assert b.store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # never inside COMMIT
        b.create_collection("w", CollectionConfig.create(256, ["euc"]))
        X = rng.normal(size=(6000, 256)).astype(np.float32)  # ~6 MB of vectors: past CHECKPOINT_BYTES
        assert X.nbytes > store_module.CHECKPOINT_BYTES
        size_before = db.stat().st_size
        b.bulk_upsert("w", iter([X]), range(len(X)), wait=True)
        deadline = time.monotonic() + 30
        while b.store._checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.store._checkpointer.checkpoints >= 1
        assert db.stat().st_size - size_before >= X.nbytes  # the rows reached the database file
        # every row is in the database, and the WAL can be emptied into it
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM points").fetchone()[0] == len(X)
        finally:
            conn.close()
    finally:
        b.close()
    assert not b.store._checkpointer  # stopped with the store


def test_a_small_write_does_not_wake_the_checkpointer(tmp_path, rng):
    b = _backend(tmp_path / "data")
    try:
        _fill(b, rng)
        time.sleep(0.2)
        assert b.store._checkpointer.checkpoints == 0
    finally:
        b.close()
