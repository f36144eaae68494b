"""A shard's op records stay bounded and keep its writes idempotent (issue 13).

Each shard remembers the writes it has published (`ops`, by token) so that a retried publish cannot
apply one twice, and holds prepared parts until their publish. The coordinator passes a watermark
with every publish (every earlier write is settled on every shard) and with every resolve; the
shard prunes both tables below it and treats a late op below it as settled. Above the watermark the
ops row still answers a retry; below it, nothing is applied; and a shard SIGKILLed between a
commit and its publish still resolves from the catalog."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np

from core.errors import StorageError
from service.catalog import CollectionConfig
from service.coordinator import Coordinator
from service.settings import load_settings
from tests.ray.conftest import SHARD_CPUS, ids_by_shard

DIM = 4


def _vector(coord: Coordinator, ext: Any) -> np.ndarray:
    (p,) = coord.get_points("w", [ext], with_vector=True, with_payload=False)
    assert p is not None
    return np.asarray(p.vector)


def _prepare(shard: Any, token: int, ext: Any, x: np.ndarray) -> None:
    shard.result(shard.submit("prepare", token, 0, "upsert", ([ext], x[None, :], None, np.array([token]))))


def test_op_records_stay_bounded_and_a_retried_op_applies_once_issue_13(ray_local, tmp_path, rng):
    settings = load_settings({"data_dir": str(tmp_path), "ray_address": "local", "ray_shard_cpus": SHARD_CPUS},
                             environ={})
    coord = Coordinator(settings)
    coord.open(background=False)
    try:
        coord.create_collection("w", CollectionConfig.create(DIM, ["euc"], shards=2))
        member = coord._members["w"]
        shard = member.shards[0]
        mine, _ = ids_by_shard([3, 0], 2)
        for i in range(20):  # batches spread over both shards
            coord.upsert("w", [f"p{i}-{j}" for j in range(6)], rng.normal(size=(6, DIM)).astype(np.float32))
        for s in member.shards:
            ops, prepared, below = s.result(s.submit("op_tables"))
            assert ops <= 1 and prepared == 0 and below > 0, (s.label, ops, prepared, below)

        # a publish retried above the watermark: its ops row answers, the write is not applied again
        e = mine[0]
        v1, v2, v3, v4 = rng.normal(size=(4, DIM)).astype(np.float32)
        t1 = coord.catalog.reserve(1)
        _prepare(shard, t1, e, v1)
        coord.catalog.commit("w", t1)
        first = shard.result(shard.submit("publish", t1, False))
        t2 = coord.catalog.reserve(1)  # a later write straight to the shard: no watermark passes t1
        _prepare(shard, t2, e, v2)
        coord.catalog.commit("w", t2)
        shard.result(shard.submit("publish", t2, False))
        assert shard.result(shard.submit("op_tables"))[2] <= t1
        assert shard.result(shard.submit("publish", t1, False)) == first == (1, "acknowledged")
        np.testing.assert_array_equal(_vector(coord, e), v2)  # not put back to v1

        # below the watermark (an ordinary write carried it): a retry applies nothing, a late prepare is dropped
        coord.upsert("w", [mine[1]], rng.normal(size=(1, DIM)).astype(np.float32))
        ops, prepared, below = shard.result(shard.submit("op_tables"))
        assert below > t2 and ops == 1 and prepared == 0
        assert shard.result(shard.submit("publish", t1, False))[0] == 0
        _prepare(shard, t1, e, v1)
        assert shard.result(shard.submit("prepared_tokens")) == []
        np.testing.assert_array_equal(_vector(coord, e), v2)

        # SIGKILLed between a commit and its publish, beside a prepared write never committed
        t3 = coord.catalog.reserve(1)
        _prepare(shard, t3, e, v3)
        coord.catalog.commit("w", t3)
        t4 = coord.catalog.reserve(1)
        _prepare(shard, t4, mine[2], v4)
        pid, _ = shard.ping()
        os.kill(pid, signal.SIGKILL)
        member.suspect = True  # as a coordinator that lost the publish's answer marks it
        deadline = time.monotonic() + 60
        while True:
            try:
                got = _vector(coord, e)  # the lookup heals the collection first
                break
            except StorageError:
                assert time.monotonic() < deadline, "the shard did not come back"
                time.sleep(0.2)
        assert shard.ping()[0] != pid
        np.testing.assert_array_equal(got, v3)
        assert coord.get_points("w", [mine[2]], with_vector=False, with_payload=False) == [None]
        ops, prepared, below = shard.result(shard.submit("op_tables"))
        assert prepared == 0 and below > t4 and ops <= 1
        assert shard.result(shard.submit("publish", t3, False))[0] == 0  # resolved once, not again
        np.testing.assert_array_equal(_vector(coord, e), v3)
        assert coord.count("w") == 20 * 6 + 2
    finally:
        coord.close()
