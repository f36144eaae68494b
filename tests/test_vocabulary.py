"""One vocabulary of searchable metrics (issue 12): every layer derives it from core.metrics."""

from __future__ import annotations

from typing import get_args

from core import evaluation
from core.metrics import INDEXABLE, METRICS, TEMPERED
from indexes import embed, exact, knn
from service import schemas


def test_every_layer_names_the_same_searchable_metrics_in_the_same_order():
    assert INDEXABLE == ("euc", "cos", "tri", "ced") and set(INDEXABLE) <= set(METRICS)
    assert TEMPERED == {m for m in INDEXABLE if METRICS[m].space == "probs"} == {"tri", "ced"}
    assert evaluation.SEARCHABLE == INDEXABLE
    assert get_args(schemas.Metric) == INDEXABLE == get_args(knn.IndexMetric)
    assert set(embed.SPACE) == set(INDEXABLE)
    assert set(exact._CODE) == set(INDEXABLE)  # the kernels' integer codes: one per metric
    assert len(set(exact._CODE.values())) == len(INDEXABLE)


def test_the_openapi_enum_of_metric_is_the_vocabulary(tmp_path):
    from service.app import create_app
    from service.settings import load_settings

    spec = create_app(load_settings({"data_dir": str(tmp_path)}, environ={})).openapi()
    enums = [s.get("enum") for s in spec["components"]["schemas"].values() if s.get("enum") and "euc" in s["enum"]]
    enums += [p.get("enum") for s in spec["components"]["schemas"].values()
              for p in s.get("properties", {}).values() if p.get("enum") and "euc" in p["enum"]]
    assert enums and all(e == list(INDEXABLE) for e in enums)
