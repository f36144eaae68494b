"""The shard's id map against a pair of dicts (the map it replaced), and read while it is written."""

from __future__ import annotations

import sys
import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.idmap import IdMap

EXTS = st.one_of(st.integers(0, 40), st.sampled_from([2**63 - 1, 2**63 - 2]),
                 st.text("ab5", min_size=1, max_size=2))
ROUNDS = 150
OPS = st.lists(st.tuples(st.sampled_from(["bind", "forget", "forget_iids", "release", "bulk"]),
                         st.lists(EXTS, min_size=1, max_size=8, unique=True)), max_size=40)


class Model:
    """The two dicts of the map before issue 16's rewrite: the oracle."""

    def __init__(self) -> None:
        self.iid: dict = {}
        self.ext: dict = {}

    def bind(self, pairs: list) -> None:
        for e, i in pairs:
            self.iid[e] = i
            self.ext[i] = e

    def forget_iids(self, iids: list) -> None:
        for i in iids:
            e = self.ext.get(i)
            if e is not None and self.iid.get(e) == i:
                del self.iid[e]


def check(m: IdMap, model: Model, probe_exts: list, probe_iids: list) -> None:
    assert len(m) == len(model.iid)
    assert m.iids(probe_exts) == [model.iid.get(e) for e in probe_exts]
    assert m.exts(probe_iids) == [model.ext.get(i) for i in probe_iids]
    for e in probe_exts:
        assert m.iid(e) == model.iid.get(e)
    iids, fresh = m.resolve(probe_exts)
    assert fresh == [r for r, e in enumerate(probe_exts) if e not in model.iid]
    assert [int(iids[r]) for r in range(len(probe_exts)) if r not in fresh] == \
        [model.iid[e] for e in probe_exts if e in model.iid]


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_the_map_answers_as_the_two_dicts_do(ops: list) -> None:
    m, model, next_iid = IdMap(), Model(), 0
    seen_exts: list = []
    for op, exts in ops:
        seen_exts += [e for e in exts if e not in seen_exts]
        if op in ("bind", "bulk"):
            # a write: existing exts keep their iid, the fresh ones get new iids (what the shard does)
            iids, fresh = m.resolve(exts)
            for r in fresh:
                iids[r] = next_iid
                next_iid += 1
            if op == "bind":
                m.bind([(exts[r], int(iids[r])) for r in fresh])
            else:
                m.bind_rows(exts, iids, fresh)
            model.bind([(exts[r], int(iids[r])) for r in fresh])
        elif op == "forget":
            m.forget(exts)
            for e in exts:
                model.iid.pop(e, None)
        else:
            iids = [model.iid[e] for e in exts if e in model.iid] + [next_iid + 5]
            if op == "forget_iids":
                m.forget_iids(iids)
                model.forget_iids(iids)
            else:  # release: only of iids whose delete committed, as the applier does
                gone = [i for i in model.ext if i not in model.iid.values()]
                m.release(gone)
                for i in gone:
                    del model.ext[i]
        check(m, model, seen_exts + ["zz", 10**6], list(range(next_iid + 2)))
    # a load from the store's arrays gives the same map
    num = [(i, e) for e, i in model.iid.items() if isinstance(e, int)]
    loaded = IdMap.of(np.array([i for i, _ in num], np.int64), np.array([e for _, e in num], np.int64),
                      [(i, e) for e, i in model.iid.items() if not isinstance(e, int)])
    live = Model()
    live.bind([(e, i) for e, i in model.iid.items()])
    check(loaded, live, seen_exts, list(range(next_iid + 2)))


def test_a_range_binds_without_a_python_object_per_id() -> None:
    m = IdMap()
    iids = np.arange(1000, 21_000, dtype=np.int64)
    m.bind_rows(range(5, 20_005), iids, None)
    assert len(m) == 20_000
    assert m.iids([5, 20_004, 20_005, "5"]) == [1000, 20_999, None, None]
    assert m.exts([1000, 20_999, 999]) == [5, 20_004, None]


def test_readers_always_find_the_points_that_stay_while_a_writer_binds_and_deletes() -> None:
    """Lock-free readers (searches naming their hits, lookups by id) against one writer whose binds
    and deletes of other ids cross the sorted base's merges many times, at 20k points."""
    n = 20_000
    m = IdMap()
    m.bind_rows(range(n), np.arange(n, dtype=np.int64), None)
    stable = np.arange(0, n, 2)  # never touched by the writer
    stop, errors = threading.Event(), []
    published: list[tuple[int, int]] = []  # (ext, iid) of single writes bound so far: in the recent ids

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            probe = rng.choice(stable, 10).tolist()
            if m.iids(probe) != probe or m.exts(probe) != probe:
                errors.append(probe)
                return
            last = published[-8:]
            if last and (m.iids([e for e, _ in last]) != [i for _, i in last]
                         or m.exts([i for _, i in last]) != [e for e, _ in last]):
                errors.append(last)
                return

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: inside a lookup, while a merge swaps the base
    for t in threads:
        t.start()
    try:
        nxt = n
        for round_ in range(ROUNDS):
            odd = list(range(1 + 2 * (round_ % 50), n, 100))  # 200 odd ids: delete, then write again
            gone = [i for i in m.iids(odd) if i is not None]
            m.forget(odd)
            m.release(gone)
            fresh = np.arange(nxt, nxt + len(odd), dtype=np.int64)
            m.bind_rows(odd, fresh, None)
            nxt += len(odd)
            for one in range(n + round_ * 40, n + round_ * 40 + 40):  # single writes: the dict side
                m.bind([(one, nxt)])
                published.append((one, nxt))
                nxt += 1
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(m) == n + ROUNDS * 40
