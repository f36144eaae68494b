"""Sharded collections without Ray (issue 13): `shards: n > 1` is refused naming the setting, one
shard is today's collection. Runs whether or not ray is installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.errors import InvalidInput
from service.ray_shards import BUCKETS, bucket_of, route, shard_of
from service.settings import load_settings
from tests.service.conftest import problem


def test_more_than_one_shard_without_ray_is_refused_naming_the_setting_issue_13(client):
    r = client.put("/v1/collections/c", json={"dim": 4, "shards": 3})
    body = problem(r, 422, "shards")
    assert "LOGITSEARCH_RAY_ADDRESS" in body["detail"]
    assert client.get("/v1/collections/c").status_code == 404


def test_one_shard_without_ray_is_the_same_collection_as_none_issue_13(client):
    a = client.put("/v1/collections/c", json={"dim": 4, "shards": 1})
    assert a.status_code == 201 and a.json()["shards"] == 1
    again = client.put("/v1/collections/c", json={"dim": 4})
    assert again.status_code == 200 and again.json() == a.json()


def test_shards_must_be_a_whole_number_in_range_issue_13(client):
    for bad in (0, 257, 1.5, "2"):
        problem(client.put("/v1/collections/c", json={"dim": 4, "shards": bad}), 422, "shards")


def test_ids_route_by_type_tagged_hash_issue_13():
    assert bucket_of(5) != bucket_of("5")  # two different ids
    assert all(0 <= bucket_of(e) < BUCKETS for e in (0, -1, 2**62, "", "é", "x" * 500))
    assert shard_of(12345, 7) == bucket_of(12345) % 7
    ids = list(range(300)) + [str(i) for i in range(300)]
    parts = route(ids, 3)
    assert sorted(r for p in parts for r in p) == list(range(600))
    assert all(parts) and all(shard_of(ids[r], 3) == j for j, p in enumerate(parts) for r in p)
    # stable across processes and releases (blake2b of b"i:7", b"s:7": no per-process salt as hash() has)
    assert (bucket_of(7), bucket_of("7"), bucket_of("photo~c1")) == (1526, 1601, 2348)


def test_a_default_of_more_than_one_shard_without_ray_is_refused_at_start_naming_the_setting_issue_13(tmp_path):
    with pytest.raises(InvalidInput) as err:
        load_settings({"data_dir": str(tmp_path)}, environ={"LOGITSEARCH_DEFAULT_SHARDS": "3"})
    assert err.value.field == "default_shards" and "LOGITSEARCH_RAY_ADDRESS" in err.value.reason
    assert load_settings(environ={"LOGITSEARCH_DEFAULT_SHARDS": "3", "LOGITSEARCH_RAY_ADDRESS": "local"}
                         ).default_shards == 3
    # the CLI says it in one line and exits 2, before any server starts
    run = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path / "d")],
                         env={**os.environ, "LOGITSEARCH_DEFAULT_SHARDS": "3",
                              "LOGITSEARCH_RAY_ADDRESS": ""},
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "default_shards" in run.stderr and "Traceback" not in run.stderr, run.stderr
