"""tests/e2e/test_service.py's restarts and kill -9, re-run against real servers whose collections
have 3 shards (issue 13: the e2e suite with shards in {1, 3}; its own module is the 1-shard run).
Each server joins the module's Ray, and LOGITSEARCH_DEFAULT_SHARDS=3 shards every collection it
creates; a restarted server finds the detached shard actors by name."""

from __future__ import annotations

import pytest

from tests.ray.conftest import full_ray_suite

pytestmark = full_ray_suite

from tests.e2e import conftest as e2e
from tests.e2e import test_service
from tests.e2e.test_service import (  # noqa: F401  (collected here, with this module's servers)
    test_acknowledged_upserts_survive_kill_9_mid_stream,
    test_real_data_gives_identical_answers_after_a_restart_and_after_kill_9,
)
from tests.ray.conftest import SHARD_CPUS, SUITE_SHARDS


@pytest.fixture(autouse=True)
def _sharded_servers(ray_local, monkeypatch):
    env = {"LOGITSEARCH_RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "LOGITSEARCH_RAY_SHARD_CPUS": str(SHARD_CPUS), "LOGITSEARCH_DEFAULT_SHARDS": str(SUITE_SHARDS)}

    def start(data_dir, extra=None, **kw):
        return e2e.start_server(data_dir, {**env, **(extra or {})}, **{"timeout": 120, **kw})

    monkeypatch.setattr(test_service, "start_server", start)
