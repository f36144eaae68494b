"""The shard seam (issue 12): the merge of shards' answers, the one id map, the catalog as the owner
of its facts, one meaning of count, and a shard interface of plain data."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from core.errors import InvalidInput, NotFound, StorageError
from indexes.knn import IndexSet, IndexSpec
from service.catalog import Catalog, CollectionConfig, IndexState
from service.coordinator import Coordinator, Query, merge_hits
from service.idmap import IdMap
from service.settings import load_settings
from service.shard import CollectionShard
from service.store import Store
from tests.service.conftest import make_client

C = "/v1/collections"


def _coordinator(path, **overrides):
    b = Coordinator(load_settings({"data_dir": str(path), **overrides}, environ={}))
    b.open(background=False)
    return b


# --- merge ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "t"), [("euc", None), ("cos", None), ("tri", 100.0), ("ced", 10.0)])
def test_merging_three_uneven_shards_answers_as_the_whole_collection_does_with_ties(rng, metric, t):
    d, n, k = 12, 600, 10
    # integer-valued rows repeated: many exact ties, which must break by the smaller internal id
    base = rng.integers(-3, 4, size=(n // 3, d)).astype(np.float32)
    X = np.concatenate([base, base, base])
    ids = rng.permutation(n).astype(np.int64) + 100
    whole = IndexSet(d, [IndexSpec(metric, t)])
    whole.upsert(ids, X, 1)
    # uneven parts: one empty, one with fewer than k rows, one with the rest
    parts = []
    for a, b in ((0, 0), (0, 4), (4, n)):
        part = IndexSet(d, [IndexSpec(metric, t)])
        if b > a:
            part.upsert(ids[a:b], X[a:b], 1)
        parts.append(part)
    Q = np.concatenate([X[:3], rng.normal(size=(3, d))]).astype(np.float64)
    spec = IndexSpec(metric, t)
    want = whole.search(spec, Q, k, exact=True)
    got = [p.search(spec, Q, k, exact=True) for p in parts]
    for qi in range(len(Q)):
        merged = merge_hits([g[qi] for g in got], k)
        np.testing.assert_array_equal(merged.ids, want[qi].ids)
        np.testing.assert_allclose(merged.distances, want[qi].distances, rtol=0, atol=1e-12)
        assert merged.ids.size == k
    # the whole collection's answer itself against float64 brute force with the id tie-break (euc)
    if metric == "euc":
        D = ((X.astype(np.float64)[None, :, :] - Q[:, None, :]) ** 2).sum(axis=2)
        for qi in range(len(Q)):
            order = np.lexsort((ids, D[qi]))[:k]
            np.testing.assert_array_equal(want[qi].ids, ids[order])


def test_a_merge_is_as_weak_as_its_weakest_part_and_sums_the_matched_rows():
    from indexes.knn import Hits

    a = Hits(np.array([1, 2]), np.array([0.1, 0.3]), "certified", 5)
    b = Hits(np.array([3]), np.array([0.2]), "approximate", 2)
    c = Hits(np.empty(0, np.int64), np.empty(0), "scanned", 0)
    m = merge_hits([a, b, c], 2)
    assert m.ids.tolist() == [1, 3] and m.distances.tolist() == [0.1, 0.2]
    assert m.how == "approximate" and m.matched == 7
    assert merge_hits([a, c], 5).how == "scanned"


# --- the id map --------------------------------------------------------------------------------------


def test_the_id_map_forgets_an_id_at_commit_and_its_internal_id_at_apply():
    ids = IdMap([(10, 5), (11, "5")])  # 5 and "5" are different ids
    assert ids.iid(5) == 10 and ids.iid("5") == 11 and len(ids) == 2
    iids, fresh = ids.resolve([5, "x", "5"])
    assert iids[[0, 2]].tolist() == [10, 11] and fresh == [1]
    ids.forget([5])
    assert ids.iid(5) is None and ids.ext(10) == 5 and len(ids) == 1  # a running search still names it
    ids.release([10])
    assert ids.ext(10) is None
    ids.bind([(5, 12)])  # written again: a fresh internal id
    ids.forget_iids([11, 99])
    assert ids.iid("5") is None and ids.iid(5) == 12


# --- the catalog ---------------------------------------------------------------------------------------


def test_the_catalog_changes_memory_only_after_sqlite_and_a_stale_build_is_not_recorded(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.open()
    try:
        cat = Catalog(store)
        config = CollectionConfig.create(4, ["euc"])
        with store.transaction() as tx:
            entry = cat.create(tx, "c", config, [IndexState(s, "ready") for s in config.specs()])
        cat.publish(entry)
        spec = IndexSpec("cos", None)
        building = IndexState(spec, "building")
        cat.set_index("c", building)

        def broken():
            raise StorageError("disk full")

        monkeypatch.setattr(store, "transaction", broken)
        with pytest.raises(StorageError):
            cat.set_index("c", IndexState(spec, "ready"), expect=building)
        assert cat.get("c").index(spec.key) == building  # unchanged in memory
        monkeypatch.undo()
        cat.drop_index("c", spec.key)
        assert cat.set_index("c", IndexState(spec, "ready"), expect=building) is False  # dropped meanwhile
        assert cat.get("c").index(spec.key) is None
        with pytest.raises(NotFound, match="indexes: \\['euc-flat'\\]"):
            cat.drop_index("c", spec.key)
        assert [e.name for e in Catalog(store).load()] == ["c"]
        assert Catalog(store).load()[0].indexes == cat.get("c").indexes
    finally:
        store.close()


# --- one meaning of count --------------------------------------------------------------------------------


def test_count_is_committed_points_and_an_evaluation_samples_every_committed_point(tmp_path, rng):
    with make_client(tmp_path) as client:
        client.put(f"{C}/c", json={"dim": 5, "metrics": ["euc", "tri"]})
        for i in range(6):  # acknowledged, maybe not yet applied
            rows = rng.normal(size=(50, 5)).tolist()
            r = client.put(f"{C}/c/points?wait=false", json={"ids": list(range(50 * i, 50 * i + 50)), "vectors": rows})
            assert r.status_code in (200, 202), r.text
        count = client.get(f"{C}/c").json()["count"]
        r = client.post(f"{C}/c/evaluate", json={"vector": [0.0] * 5, "sample": 300, "temperatures": [10]})
        assert r.status_code == 200, r.text
        assert count == 300 and r.json()["sample"]["of"] == 300 and r.json()["sample"]["size"] == 300


# --- the shard's interface is plain data -------------------------------------------------------------------


def test_every_shard_answer_pickles_and_a_bulk_write_goes_through_handles(tmp_path, rng):
    b = _coordinator(tmp_path)
    try:
        b.create_collection("c", CollectionConfig.create(4, ["euc", "tri"], [10.0]))
        shard: CollectionShard = b._members["c"].shard
        X = rng.normal(size=(30, 4)).astype(np.float32)
        handle = shard.bulk_begin()
        shard.bulk_chunk(handle, list(range(20)), X[:20], None)
        shard.bulk_chunk(handle, ["a", "b"], X[20:22], ['{"x": 1}', None])
        w = shard.bulk_commit(handle, keep=True)
        assert shard.applied(w.operation_id) == "completed" and w.count == 22
        with pytest.raises(InvalidInput, match="duplicate id 3"):
            h2 = shard.bulk_begin()
            shard.bulk_chunk(h2, [100, 3, 3], X[:3], None)
        assert shard.points() == 22  # the failed bulk wrote nothing, and the shard takes writes again
        w2 = shard.upsert([7], X[22:23], None, keep=True)
        assert shard.applied(w2.operation_id) == "completed" and w2.operation_id == w.operation_id + 1
        spec = IndexSpec("tri", 10.0)
        from service.shard import SearchGroup

        answers = shard.search([SearchGroup(spec, X[:2].astype(np.float64), 3, False, [None, None], None)])
        for value in (shard.status(), w, answers, shard.describe([int(answers[0][0].ids[0])], vector=True, payload=True),
                      shard.get_points([7, "a", "zz"], with_vector=True, with_payload=True),
                      shard.scroll(0, 5, with_vector=True, with_payload=True, flt=None),
                      shard.query_vector("a"), shard.indexed_ids(), shard.payload_values(["a"], "x")):
            assert pickle.loads(pickle.dumps(value)) is not None
        assert shard.payload_values(["a", "b", 1], "x") == [1, None, None]
        assert b.search("c", [Query(k=3, metric="tri", vector=X[0])])[0].ids[0] == 0
    finally:
        b.close()


def test_a_bulk_write_finds_duplicates_across_its_range_and_list_chunks(tmp_path, rng):
    """Ranges of ids (`?start=`) are checked as ranges (no set of a Python int per row, issue 16),
    against each other and against the ids of list chunks, in both orders; strings never clash."""
    b = _coordinator(tmp_path)
    try:
        b.create_collection("c", CollectionConfig.create(4, ["euc"], []))
        shard: CollectionShard = b._members["c"].shard
        X = rng.normal(size=(40, 4)).astype(np.float32)
        for first, second, dup, row in [(range(10), range(5, 15), 5, 10), (range(10, 20), range(12), 10, 20),
                                        ([3, "x", 50], range(40, 52), 50, 13), (range(10), ["y", 9], 9, 11)]:
            h = shard.bulk_begin()
            shard.bulk_chunk(h, first, X[:len(first)], None)
            with pytest.raises(InvalidInput, match=f"duplicate id {dup} \\(row {row}\\)"):
                shard.bulk_chunk(h, second, X[:len(second)], None)
        assert shard.points() == 0  # each failed bulk wrote nothing
        h = shard.bulk_begin()
        for part in (range(10), ["0", "a", 10], range(11, 20)):
            shard.bulk_chunk(h, part, X[:len(part)], None)
        w = shard.bulk_commit(h, keep=True)
        assert shard.applied(w.operation_id) == "completed" and shard.points() == 22
        found = shard.get_points([0, "0", 19, 20], with_vector=False, with_payload=False)
        assert [p is not None for p in found] == [True, True, True, False]
    finally:
        b.close()
