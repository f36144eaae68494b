"""tests/service/test_filters.py's filtered searches, scrolls, deletes and evaluation, re-run on 3-shard collections (issue 13: the service suites with shards in {1, 3};
its own module is the 1-shard run). Collections are created without `shards`, so
LOGITSEARCH_DEFAULT_SHARDS=3 gives each three Ray actors; the oracles are unchanged."""

from __future__ import annotations

import pytest

from tests.ray.conftest import full_ray_suite

pytestmark = full_ray_suite

from tests.service.test_filters import (  # noqa: F401  (collected here, with this module's `client`)
    filled,
    test_a_batch_applies_each_searchs_own_filter,
    test_a_key_declared_later_is_back_filled_and_kept_with_later_writes,
    test_delete_by_filter_removes_exactly_the_matching_points,
    test_evaluation_on_a_subset_equals_spearman_over_that_subset,
    test_filtered_search_is_brute_force_over_the_matching_points,
    test_scroll_pages_through_the_matching_points_only,
)


@pytest.fixture
def client(sharded_client):
    return sharded_client
