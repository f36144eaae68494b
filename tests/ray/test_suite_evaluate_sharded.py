"""tests/service/test_evaluate.py's evaluations, re-run on 3-shard collections (issue 13: the service
suites with shards in {1, 3}; its own module is the 1-shard run). The module's collections are
created without `shards`, so LOGITSEARCH_DEFAULT_SHARDS=3 gives each three Ray actors; the oracles
(scipy's spearmanr over the paper's formulas) are unchanged."""

from __future__ import annotations

import pytest

from tests.ray.conftest import full_ray_suite

pytestmark = full_ray_suite

from tests.ray.conftest import SUITE_SHARDS, ray_client
from tests.service.test_evaluate import (  # noqa: F401  (collected here, with this module's `client`)
    _fill,
    data,
    test_a_sample_is_uniform_seeded_and_said,
    test_an_unknown_id_is_404_in_evaluate_as_in_search,
    test_bad_evaluate_input_is_a_problem_naming_the_field,
    test_evaluate_by_stored_id_equals_spearmanr_of_the_formulas,
    test_evaluate_by_vector_and_integer_id,
    test_many_to_many_and_many_queries,
    test_non_finite_temperature_and_empty_or_unknown_collection,
    test_roughness_guide,
    test_shepard_png_is_a_png_of_the_requested_size,
)


@pytest.fixture(scope="module")
def client(ray_local, tmp_path_factory, data):  # noqa: F811
    X, ids = data
    with ray_client(tmp_path_factory.mktemp("evaluate") / "data", default_shards=SUITE_SHARDS) as c:
        _fill(c, "logits", X, ids)
        c.put("/v1/collections/empty", json={"dim": X.shape[1]})
        assert c.get("/v1/collections/logits").json()["shards"] == SUITE_SHARDS
        yield c
