"""tests/service/test_bulk.py's bulk .npy ingest, re-run on 3-shard collections (issue 13: the service suites with shards in {1, 3};
its own module is the 1-shard run). Collections are created without `shards`, so
LOGITSEARCH_DEFAULT_SHARDS=3 gives each three Ray actors; the oracles are unchanged."""

from __future__ import annotations

import pytest

from tests.ray.conftest import full_ray_suite

pytestmark = full_ray_suite

from tests.service.test_bulk import (  # noqa: F401  (collected here, with this module's `client`)
    coll,
    test_a_bulk_upload_replaces_existing_points,
    test_a_nan_in_a_late_chunk_rolls_back_the_chunks_already_inserted,
    test_multipart_payloads_as_json_lines_are_stored_row_by_row,
    test_multipart_with_an_ids_file,
)


@pytest.fixture
def client(sharded_client):
    return sharded_client
