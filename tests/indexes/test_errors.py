"""Bad input raises core's errors naming the field; specs validate and round-trip (issue 3)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import Conflict, InvalidInput, LogitsearchError, NotFound
from indexes import knn
from indexes.knn import IndexSet, IndexSpec


@pytest.fixture
def iset(rng):
    s = IndexSet(4, [IndexSpec("euc"), IndexSpec("tri", 10.0), IndexSpec("tri", 100.0, "hnsw")])
    s.upsert(np.arange(20), rng.normal(size=(20, 4)), seq=1)
    return s


@pytest.mark.parametrize("spec,field", [
    ({"metric": "jsd"}, "metric"),
    ({"metric": "tri"}, "temperature"),
    ({"metric": "ced", "temperature": 0.0}, "temperature"),
    ({"metric": "ced", "temperature": float("nan")}, "temperature"),
    ({"metric": "euc", "temperature": 1.0}, "temperature"),
    ({"metric": "euc", "kind": "lsh"}, "kind"),
    ({"metric": "euc", "kind": "hnsw", "params": {"M": 1}}, "params.M"),
    ({"metric": "euc", "kind": "hnsw", "params": {"ef_search": 2.5}}, "params.ef_search"),
    ({"metric": "euc", "kind": "hnsw", "params": {"nlist": 4}}, "params.nlist"),
    ({"metric": "euc", "kind": "ivf", "params": {"nlist": 4, "nprobe": 8}}, "params.nprobe"),
    ({"metric": "euc", "kind": "flat", "params": {"M": 4}}, "params.M"),
    ({"metric": "euc", "params": [1]}, "params"),
])
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(InvalidInput) as err:
        IndexSpec(**spec)
    assert err.value.field == field


def test_specs_fill_defaults_have_stable_keys_and_round_trip_through_dicts():
    s = IndexSpec("ced", 0.5, "hnsw", {"M": 16})
    assert dict(s.params) == {"M": 16, "ef_construction": 200, "ef_search": 128}
    assert (s.key, IndexSpec("tri", 10).key, IndexSpec("euc").key) == ("ced-t0.5-hnsw", "tri-t10-flat", "euc-flat")
    assert IndexSpec.from_dict(s.to_dict()) == s and hash(IndexSpec.from_dict(s.to_dict())) == hash(s)
    with pytest.raises(InvalidInput, match="unknown field"):
        IndexSpec.from_dict({**s.to_dict(), "colour": "red"})
    with pytest.raises(InvalidInput):
        IndexSpec.from_dict(["tri"])


@pytest.mark.parametrize("call,field", [
    (lambda s: s.search(IndexSpec("euc"), np.ones(5), 3), "query"),
    (lambda s: s.search(IndexSpec("euc"), [[1, 2, np.inf, 4]], 3), "query"),
    (lambda s: s.search(IndexSpec("euc"), np.ones(4), 0), "k"),
    (lambda s: s.find("jsd"), "metric"),
    (lambda s: s.find("cos"), "metric"),
    (lambda s: s.find("tri"), "temperature"),
    (lambda s: s.find("tri", 3.0), "temperature"),
    (lambda s: s.find("tri", -1.0), "temperature"),
    (lambda s: s.find("euc", 3.0), "temperature"),
    (lambda s: s.find("euc", kind="ivf"), "kind"),
    (lambda s: s.find("euc", kind="annoy"), "kind"),
    (lambda s: s.search(IndexSpec("euc"), np.ones((2, 4)), 3, exclude=[1]), "exclude"),
    (lambda s: s.upsert([1, 2], np.ones((3, 4)), seq=2), "vectors"),
    (lambda s: s.upsert([1], np.ones((1, 3)), seq=2), "vectors"),
    (lambda s: s.upsert([-1], np.ones((1, 4)), seq=2), "ids"),
    (lambda s: s.upsert([1.5], np.ones((1, 4)), seq=2), "ids"),
    (lambda s: s.upsert([1], np.ones((1, 4)), seq="2"), "seq"),
    (lambda s: s.remove([[1]], seq=2), "ids"),
])
def test_bad_calls_raise_invalid_input_naming_the_field(iset, call, field):
    with pytest.raises(InvalidInput) as err:
        call(iset)
    assert err.value.field == field
    assert iset.count == 20 and iset.last_seq == 1


def test_unindexed_temperature_lists_the_indexed_ones(iset):
    with pytest.raises(InvalidInput, match=r"no tri index at t=3; indexed temperatures: \[10.0, 100.0\]"):
        iset.find("tri", 3)


def test_lookups_of_missing_things_are_not_found_and_duplicates_conflict(iset):
    with pytest.raises(NotFound, match="99"):
        iset.vectors([1, 99])
    with pytest.raises(NotFound, match="tri-t10-flat"):
        iset.drop_index("nope")
    with pytest.raises(Conflict):
        iset.add_index(IndexSpec("tri", 10.0))
    with pytest.raises(InvalidInput):
        IndexSet(0)


def test_faiss_failures_become_our_error_with_the_cause_kept():
    def boom():
        raise RuntimeError("Error in faiss::Index::search: out of memory\nstack...")

    with pytest.raises(LogitsearchError, match="out of memory") as err:
        knn._faiss_call("search", boom)
    assert isinstance(err.value.__cause__, RuntimeError)


def test_searching_an_index_the_set_lacks_is_not_found_naming_it_and_the_keys_present(iset):
    """Issue 12: the caller picks the index; a spec or key the set does not hold is NotFound."""
    for spec in (IndexSpec("ced", 1.0), "ced-t1-flat", IndexSpec("tri", 10.0, "hnsw")):
        with pytest.raises(NotFound) as err:
            iset.search(spec, np.ones(4), 3)
        key = spec if isinstance(spec, str) else spec.key
        assert key in str(err.value) and "['euc-flat', 'tri-t10-flat', 'tri-t100-hnsw']" in str(err.value)
    with pytest.raises(InvalidInput) as bad:
        iset.search(IndexSpec("tri", 10.0), np.ones(4), 3, temperature=10.0)
    assert bad.value.field == "temperature"
    assert iset.find("tri", 100.0) == IndexSpec("tri", 100.0, "hnsw") and iset.find("euc") == IndexSpec("euc")
    a = iset.search(iset.find("tri", 10.0), np.ones(4), 3)[0]
    b = iset.search("tri", np.ones(4), 3, temperature=10.0)[0]  # the compatibility form
    c = iset.search("tri-t10-flat", np.ones(4), 3)[0]
    assert a.ids.tolist() == b.ids.tolist() == c.ids.tolist()
