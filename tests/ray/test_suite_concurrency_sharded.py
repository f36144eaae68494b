"""tests/reliability/test_concurrency.py's 8 writers and 8 readers, re-run against a real server whose
collection has 3 shards (issue 13: "the 8-writer / 8-reader concurrency test on 3 shards"; its own
module is the 1-shard run). The server joins the module's Ray, and LOGITSEARCH_DEFAULT_SHARDS=3
shards the collection it creates; every batch of 5 ids spans the shards."""

from __future__ import annotations

import pytest

from tests.e2e import conftest as e2e
from tests.ray.conftest import SHARD_CPUS, SUITE_SHARDS
from tests.reliability import test_concurrency
from tests.reliability.test_concurrency import (  # noqa: F401  (collected here, with this module's server)
    test_eight_writers_and_eight_readers_see_only_whole_acknowledged_writes,
)


@pytest.fixture(autouse=True)
def _sharded_server(ray_local, monkeypatch):
    env = {"LOGITSEARCH_RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "LOGITSEARCH_RAY_SHARD_CPUS": str(SHARD_CPUS), "LOGITSEARCH_DEFAULT_SHARDS": str(SUITE_SHARDS)}

    def start(data_dir, extra=None, **kw):
        return e2e.start_server(data_dir, {**env, **(extra or {})}, **{"timeout": 120, **kw})

    monkeypatch.setattr(test_concurrency, "start_server", start)
