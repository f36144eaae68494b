"""tests/service/test_points.py's upserts, reads, deletes and scrolls, re-run on 3-shard collections (issue 13: the service suites with shards in {1, 3};
its own module is the 1-shard run). Collections are created without `shards`, so
LOGITSEARCH_DEFAULT_SHARDS=3 gives each three Ray actors; the oracles are unchanged."""

from __future__ import annotations

import pytest

from tests.ray.conftest import full_ray_suite

pytestmark = full_ray_suite

from tests.service.test_points import (  # noqa: F401  (collected here, with this module's `client`)
    coll,
    test_an_upsert_replaces_vector_and_payload,
    test_delete_points_counts_only_existing_ones_and_removes_them_from_search,
    test_get_one_point_and_unknown_ids,
    test_int_and_string_ids_are_different_points_and_come_back_as_given,
    test_row_wise_and_column_wise_upserts_store_the_same_thing,
    test_scroll_visits_every_point_once_in_insertion_order,
    test_wait_false_answers_202_once_committed_and_becomes_searchable,
)


@pytest.fixture
def client(sharded_client):
    return sharded_client
