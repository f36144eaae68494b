"""Each shard actor's kernels use its own CPUs' worth of threads (issue 13: numba and OpenMP threads =
the actor's num_cpus, set for the actor, not inherited from the coordinator)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.ray.conftest import ray_client


@pytest.mark.parametrize("cpus", [0.1, 1.5])
def test_a_shard_actor_runs_ceil_of_its_cpus_threads_not_the_servers_issue_13(ray_local, tmp_path, cpus):
    with ray_client(tmp_path / "data", ray_shard_cpus=cpus) as client:
        assert client.put("/v1/collections/c", json={"dim": 3, "shards": 1}).status_code == 201
        member = client.app.state.backend._members["c"]
        got = ray_local.get(member.shards[0].handle.threads.remote(), timeout=60)
    want = max(1, math.ceil(cpus))
    assert got == (want, want)


def test_a_relative_data_dir_puts_each_shards_files_under_it_not_under_the_actors_cwd_issue_13(
        ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ray_client(Path("rel-data")) as client:
        assert client.put("/v1/collections/c", json={"dim": 3, "shards": 2}).status_code == 201
        r = client.put("/v1/collections/c/points", json={"ids": [1, 2, 3], "vectors": [[1, 2, 3]] * 3})
        assert r.status_code == 200, r.text
        dirs = sorted(p.name for p in (tmp_path / "rel-data" / "shards").iterdir())
    assert [d.split("-")[1] for d in dirs] == ["s0", "s1"], dirs
    assert all((tmp_path / "rel-data" / "shards" / d / "logitsearch.sqlite3").exists() for d in dirs)
