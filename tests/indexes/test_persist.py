"""Snapshots: save/load round trips, atomic replacement, damaged or foreign directories (issue 3)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from core.errors import StorageError
from indexes import persist
from indexes.knn import IndexSet, IndexSpec
from tests.indexes.brute import assert_knn

SPECS = [IndexSpec("euc"), IndexSpec("cos", kind="ivf", params={"nlist": 2, "nprobe": 1}),
         IndexSpec("tri", 10.0), IndexSpec("ced", 0.5, "hnsw"), IndexSpec("tri", 100.0, "hnsw")]
QUERIES = [("euc", None, "flat"), ("cos", None, "ivf"), ("tri", 10.0, "flat"), ("ced", 0.5, "hnsw"),
           ("tri", 100.0, "hnsw")]


def _filled(rng, n=200, d=9):
    iset = IndexSet(d, SPECS)
    iset.upsert(np.arange(n) * 5, rng.normal(0, 3, (n, d)), seq=4)
    iset.remove(np.arange(0, 50) * 5, seq=5)  # leaves tombstones in the hnsw indexes
    return iset


def _answers(iset, Q):
    return [(h.ids.tolist(), h.distances.tolist(), h.how)
            for metric, t, kind in QUERIES for h in iset.search(IndexSpec(metric, t, kind), Q, 7)]


def test_save_then_load_gives_identical_answers(rng, tmp_path):
    iset = _filled(rng)
    Q = rng.normal(0, 3, (5, 9))
    iset.save(tmp_path / "snap")
    back = IndexSet.load(tmp_path / "snap")
    assert (back.dim, back.count, back.last_seq) == (9, 150, 5)
    assert back.specs() == iset.specs()
    assert _answers(back, Q) == _answers(iset, Q)
    np.testing.assert_array_equal(back.vectors(iset.all_ids()), iset.vectors(iset.all_ids()))
    back.upsert([1], Q[:1], seq=6)  # a loaded set keeps working
    assert back.search(IndexSpec("tri", 10.0), Q[0], 1)[0].ids[0] == 1


def test_saving_again_replaces_the_snapshot_and_leaves_no_debris(rng, tmp_path):
    iset = _filled(rng)
    iset.save(tmp_path / "snap")
    iset.upsert([3], rng.normal(size=(1, 9)), seq=9)
    iset.save(tmp_path / "snap")
    assert IndexSet.load(tmp_path / "snap").last_seq == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]


def test_a_crash_while_writing_keeps_the_last_good_copy(rng, tmp_path, monkeypatch):
    iset = _filled(rng)
    iset.save(tmp_path / "snap")
    iset.upsert([3], rng.normal(size=(1, 9)), seq=9)

    def crash(self, name, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persist._Writer, "blob", crash)
    with pytest.raises(StorageError, match="No space left"):
        iset.save(tmp_path / "snap")
    assert IndexSet.load(tmp_path / "snap").last_seq == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]


def test_a_crash_between_the_two_renames_loads_the_newest_complete_copy(rng, tmp_path):
    iset = _filled(rng)
    iset.save(tmp_path / "snap")
    os.rename(tmp_path / "snap", tmp_path / ".snap.old-1")  # as if killed right after this rename
    iset.upsert([3], rng.normal(size=(1, 9)), seq=9)
    iset.save(tmp_path / "new")
    os.rename(tmp_path / "new", tmp_path / ".snap.tmp-2")
    assert IndexSet.load(tmp_path / "snap").last_seq == 9
    iset.save(tmp_path / "snap")  # the next save tidies up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]


@pytest.mark.parametrize("victim", ["rows.npy", "ids.npy", "ced-t0.5-hnsw.faiss", "tri-t100-hnsw.alive.npy"])
def test_a_damaged_file_is_a_storage_error(rng, tmp_path, victim):
    _filled(rng).save(tmp_path / "snap")
    path = tmp_path / "snap" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="damaged"):
        IndexSet.load(tmp_path / "snap")


def test_a_truncated_or_missing_file_is_a_storage_error(rng, tmp_path):
    _filled(rng).save(tmp_path / "snap")
    (tmp_path / "snap" / "rows.npy").write_bytes(b"")
    with pytest.raises(StorageError):
        IndexSet.load(tmp_path / "snap")
    (tmp_path / "snap" / "rows.npy").unlink()
    with pytest.raises(StorageError, match="missing"):
        IndexSet.load(tmp_path / "snap")


@pytest.mark.parametrize("edit", [
    lambda m: "{not json",
    lambda m: json.dumps({**m, "format": "something-else"}),
    lambda m: json.dumps({**m, "version": 99}),
    lambda m: json.dumps({**m, "count": m["count"] + 1}),
    lambda m: json.dumps({**m, "dim": 10}),
    lambda m: json.dumps({**m, "specs": [{"metric": "tri"}]}),
    lambda m: json.dumps({k: v for k, v in m.items() if k != "files"}),
])
def test_a_damaged_or_foreign_manifest_is_a_storage_error(rng, tmp_path, edit):
    _filled(rng).save(tmp_path / "snap")
    manifest = tmp_path / "snap" / "manifest.json"
    manifest.write_text(edit(json.loads(manifest.read_text())))
    with pytest.raises(StorageError):
        IndexSet.load(tmp_path / "snap")


def test_missing_or_foreign_directories_are_storage_errors(tmp_path):
    with pytest.raises(StorageError):
        IndexSet.load(tmp_path / "nothing-here")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"name": "a qdrant collection"}))
    with pytest.raises(StorageError, match="no logitsearch"):
        IndexSet.load(tmp_path / "other")


def test_an_empty_set_round_trips(tmp_path):
    IndexSet(4, [IndexSpec("tri", 1.0), IndexSpec("euc", kind="hnsw")]).save(tmp_path / "e")
    back = IndexSet.load(tmp_path / "e")
    assert back.count == 0 and len(back.specs()) == 2
    assert len(back.search(IndexSpec("euc", kind="hnsw"), np.ones(4), 3)[0].ids) == 0


def test_loading_with_an_id_offset_answers_alike_with_every_id_shifted(rng, tmp_path):
    """Issue 15: a collection restored into another database gets its ids shifted, order kept."""
    iset = _filled(rng)
    Q = rng.normal(0, 3, (5, 9))
    iset.save(tmp_path / "snap")
    back = persist.load(IndexSet, tmp_path / "snap", id_offset=10_000)
    shifted = [([i - 10_000 for i in ids], d, how) for ids, d, how in _answers(back, Q)]
    assert shifted == _answers(iset, Q)
    np.testing.assert_array_equal(back.all_ids(), iset.all_ids() + 10_000)
    assert back.remove([10_000 + 5 * 60, 5 * 60], seq=6) == 1  # ivf and hnsw find the shifted id
    assert all(5 * 60 + 10_000 not in h.ids for m, t, kind in QUERIES
               for h in back.search(IndexSpec(m, t, kind), Q, 150))


def test_a_loaded_set_keeps_the_certificate_statistics_it_was_saved_with(rng, tmp_path):
    """Issue 15: the statistics only widen with writes; recomputing them from the rows left after a
    delete narrowed the bound, so a loaded set could certify where the saved one scanned."""
    iset = IndexSet(9, [IndexSpec("tri", 10.0), IndexSpec("cos")])
    X = rng.normal(0, 3, (100, 9))
    X[0] *= 40  # the extreme row sets pmin / pmax and the norms
    iset.upsert(np.arange(100), X, seq=1)
    iset.remove([0], seq=2)
    iset.save(tmp_path / "snap")
    back = IndexSet.load(tmp_path / "snap")
    for key in ("tri-t10-flat", "cos-flat"):
        assert back._indexes[key].stats == iset._indexes[key].stats
    fresh = IndexSet(9, [IndexSpec("tri", 10.0)])
    fresh.upsert(np.arange(1, 100), X[1:], seq=2)
    assert fresh._indexes["tri-t10-flat"].stats != iset._indexes["tri-t10-flat"].stats  # the case is real


# --- issue 12: persistence through IndexSet.state() / IndexSet.restore() ----------------------------

SNAPSHOT_V1 = Path(__file__).parent / "snapshot_v1"


def _plain(x) -> bool:
    """Only numpy arrays, dicts, lists and scalars: what pickle and a process boundary carry."""
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return all(_plain(v) for v in x)
    return x is None or isinstance(x, (np.ndarray, str, int, float, bool))


def test_a_state_is_plain_data_that_restores_to_the_same_answers_after_pickling(rng):
    iset = _filled(rng)
    Q = rng.normal(0, 3, (5, 9))
    state = iset.state()
    assert _plain(state)
    assert set(state) == {"dim", "last_seq", "ids", "rows", "specs", "indexes"}
    back = IndexSet.restore(pickle.loads(pickle.dumps(state)))
    assert (back.dim, back.count, back.last_seq, back.specs()) == (9, 150, 5, iset.specs())
    assert _answers(back, Q) == _answers(iset, Q)
    iset.upsert([1], Q[:1], seq=6)  # the state is a copy: later writes do not reach it
    assert state["ids"].size == 150 and state["last_seq"] == 5


def test_each_index_state_restores_on_its_own(rng):
    iset = _filled(rng)
    for spec in iset.specs():
        ix = iset._indexes[spec.key]
        st = ix.state()
        assert _plain(st)
        again = type(ix).restore(spec, 9, st)
        assert again.stats == ix.stats and again.holds(iset.all_ids())


def test_a_snapshot_written_before_issue_12_still_loads_and_answers_exactly():
    """tests/indexes/snapshot_v1 was written by the code of commit 1a71666 (before the state hooks):
    60 rows X (seed 12) at ids 0, 3, ..., ids 0..27 removed, seq 8."""
    X = np.random.default_rng(12).normal(0, 3, (60, 5))
    back = IndexSet.load(SNAPSHOT_V1)
    ids = np.arange(10, 60) * 3
    assert (back.dim, back.count, back.last_seq) == (5, 50, 8)
    assert [s.key for s in back.specs()] == ["euc-flat", "tri-t10-flat", "ced-t0.5-hnsw", "cos-ivf"]
    np.testing.assert_array_equal(back.vectors(ids), X[10:].astype(np.float32))
    rows = X[10:].astype(np.float32).astype(np.float64)
    for spec in back.specs():
        for q, h in zip(X[:4], back.search(spec, X[:4], 6)):
            assert_knn(h, spec.metric, q, ids, rows, 6, spec.temperature, rtol=1e-9)


def test_the_on_disk_format_is_unchanged(tmp_path):
    back = IndexSet.load(SNAPSHOT_V1)
    back.save(tmp_path / "again")
    old, new = (json.loads((p / "manifest.json").read_text()) for p in (SNAPSHOT_V1, tmp_path / "again"))
    assert set(new) == set(old) and set(new["files"]) == set(old["files"])
    assert {k: v for k, v in new.items() if k != "files"} == {k: v for k, v in old.items() if k != "files"}


def test_a_snapshot_without_certificate_statistics_recomputes_them(rng, tmp_path):
    iset = _filled(rng)
    iset.save(tmp_path / "snap")
    manifest = tmp_path / "snap" / "manifest.json"
    m = json.loads(manifest.read_text())
    for entry in m["indexes"].values():
        del entry["stats"]  # as snapshots written before the statistics were kept
    manifest.write_text(json.dumps(m))
    back = IndexSet.load(tmp_path / "snap")
    assert back._indexes["tri-t10-flat"].stats.norm > 0
    Q = rng.normal(0, 3, (5, 9))
    ids, X = back.matrix()
    for q, h in zip(Q, back.search(IndexSpec("tri", 10.0), Q, 7)):
        assert_knn(h, "tri", q, ids, X.astype(np.float64), 7, 10.0, rtol=1e-9)


@pytest.mark.parametrize("damage", [
    lambda s: s.update(ids=np.zeros(s["ids"].size, dtype=np.int64)),
    lambda s: s.update(ids=s["ids"].astype(np.float64)),
    lambda s: s.update(rows=s["rows"][:, :3]),
    lambda s: s.update(specs=[{"metric": "tri"}]),
    lambda s: s.update(specs=[*s["specs"], s["specs"][0]]),
    lambda s: s["indexes"]["ced-t0.5-hnsw"].pop("faiss"),
    lambda s: s["indexes"]["ced-t0.5-hnsw"].update(labels=s["indexes"]["ced-t0.5-hnsw"]["labels"][:-1]),
    lambda s: s["indexes"]["ced-t0.5-hnsw"].update(faiss=np.zeros(10, dtype=np.uint8)),
    lambda s: s["indexes"]["tri-t10-flat"].update(stats=["a", "b", "c"]),
    lambda s: s["indexes"]["cos-ivf"].update(faiss=s["indexes"]["ced-t0.5-hnsw"]["faiss"]),
    lambda s: s.update(ids=s["ids"][:-1], rows=s["rows"][:-1]),  # the indexes hold one id more
])
def test_a_damaged_state_is_a_storage_error(rng, damage):
    state = _filled(rng).state()
    damage(state)
    with pytest.raises(StorageError):
        IndexSet.restore(state)


def test_persist_reads_and_writes_states_without_importing_the_indexes():
    """Issue 12: no indexes/knn.py <-> indexes/persist.py cycle, no reach into the set's privates."""
    import ast

    source = Path(persist.__file__).read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("indexes") for m in imported), imported
    assert "_table" not in source and "_indexes" not in source
    assert persist._fsync_dir is persist.fsync_dir


# --- lean snapshots (issue 16): no rows, HNSW graphs without their vectors ---------------------------


def _rows_of(iset):
    ids, rows = iset.matrix()
    by_id = dict(zip(ids.tolist(), rows))

    def source(want, last_seq):
        assert last_seq == iset.last_seq
        return np.array([by_id[i] for i in want.tolist()], dtype=np.float32).reshape(len(want), iset.dim)

    return source


def test_a_lean_snapshot_holds_no_rows_and_loads_from_a_row_source_to_the_same_answers(rng, tmp_path):
    iset = _filled(rng)
    Q = rng.normal(0, 3, (5, 9))
    iset.save(tmp_path / "snap", lean=True)
    names = {p.name for p in (tmp_path / "snap").iterdir()}
    assert "rows.npy" not in names and "ids.npy" in names
    hnsw = [s.key for s in SPECS if s.kind == "hnsw"]
    assert {f"{k}.graph" for k in hnsw} | {f"{k}.tombs.npy" for k in hnsw} <= names
    assert not {f"{k}.faiss" for k in hnsw} & names
    tombs = np.load(tmp_path / "snap" / f"{hnsw[0]}.tombs.npy")
    assert tombs.shape[0] == 50  # the removed rows' labels: only the dead vectors are saved
    with pytest.raises(StorageError, match="lean snapshot"):
        IndexSet.load(tmp_path / "snap")
    back = IndexSet.load(tmp_path / "snap", rows=_rows_of(iset))
    assert (back.dim, back.count, back.last_seq) == (9, 150, 5)
    assert _answers(back, Q) == _answers(iset, Q)
    back.upsert([1], Q[:1], seq=6)
    assert back.search(IndexSpec("tri", 100.0, "hnsw"), Q[0], 1)[0].ids[0] == 1
    # the refilled graphs hold the same vectors as the saved ones, dead labels included
    for key in hnsw:
        a, b = iset._indexes[key].index, back._indexes[key].index
        np.testing.assert_array_equal(b.storage.reconstruct_n(0, a.ntotal), a.storage.reconstruct_n(0, a.ntotal))


def test_a_row_source_of_the_wrong_shape_is_a_storage_error(rng, tmp_path):
    iset = _filled(rng)
    iset.save(tmp_path / "snap", lean=True)
    with pytest.raises(StorageError, match="float32"):
        IndexSet.load(tmp_path / "snap", rows=lambda ids, seq: np.zeros((len(ids), 8), dtype=np.float32))
