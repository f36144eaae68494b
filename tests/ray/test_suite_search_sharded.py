"""tests/service/test_search.py's searches, re-run on 3-shard collections (issue 13: the service suite
with shards in {1, 3}; its own module is the 1-shard run). Each collection is created without
`shards`, so LOGITSEARCH_DEFAULT_SHARDS=3 gives it three Ray actors; the oracles are unchanged."""

from __future__ import annotations

import pytest

from tests.ray.conftest import full_ray_suite

pytestmark = full_ray_suite

from tests.service.test_search import (  # noqa: F401  (collected here with this module's `client`)
    test_batch_search_answers_like_single_searches,
    test_hnsw_exact_flag_gives_the_brute_force_answer,
    test_k_larger_than_the_collection_returns_everything_and_an_empty_collection_nothing,
    test_search_equals_brute_force_and_the_indexset_on_real_data,
    test_search_errors_for_ids_and_collections,
    test_vector_b64_query,
)


@pytest.fixture
def client(sharded_client):
    return sharded_client


def test_the_suite_runs_on_three_actors_issue_13(client):
    r = client.put("/v1/collections/c", json={"dim": 2})
    assert r.status_code == 201 and r.json()["shards"] == 3, r.text
    assert client.get("/readyz").json()["shards"].keys() == {"c/shard-0", "c/shard-1", "c/shard-2"}
