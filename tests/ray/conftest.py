"""A real local Ray for the tests of sharded collections (issue 13): one per test session (started by
the first module that needs it: ~5 s each time saved), on 127.0.0.1, two CPUs, a bounded object
store, no dashboard, shut down at the end; every shard actor a module leaves is killed after it.
Skipped when ray is not installed."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.ray_shards import NAMESPACE, shard_of
from service.settings import load_settings
from tests.service.conftest import client  # noqa: F401  (the fixture, for test_without_ray.py)

#: each shard actor asks Ray for this many CPUs (the module's Ray has two; a test makes a few actors)
SHARD_CPUS = 0.1


@pytest.fixture(scope="session")
def _ray_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    # without it Ray 2.60 binds some ports on the host's other addresses too
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2,
             object_store_memory=200 * 1024**2, log_to_driver=False, namespace="logitsearch-tests")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session: Any) -> Iterator[Any]:
    """The session's Ray; the shard actors still alive after the module (a server killed with -9
    leaves its detached actors, as it should) are killed, so no module inherits another's."""
    ray = _ray_session
    yield ray
    for named in ray.util.list_named_actors(all_namespaces=True):
        if named["namespace"] == NAMESPACE:
            try:
                ray.kill(ray.get_actor(named["name"], namespace=NAMESPACE), no_restart=True)
            except ValueError:  # gone meanwhile
                pass


def ray_client(data_dir: Path, **overrides: Any) -> TestClient:
    """A TestClient (a context manager: it runs the lifespan) whose server uses the module's Ray; the
    kernel warm-up is off, as for every in-process client (it is tested on its own)."""
    settings = {"data_dir": str(data_dir), "ray_address": "local", "ray_shard_cpus": SHARD_CPUS,
                "warmup_seconds": 0, **overrides}
    return TestClient(create_app(load_settings(settings, environ={})))


def ids_by_shard(sizes: list[int], shards: int, kinds: str = "is") -> list[list[Any]]:
    """For each shard j, `sizes[j]` ids it owns, ints and strings mixed (kinds "i", "s" or "is")."""
    out: list[list[Any]] = [[] for _ in range(shards)]
    n = 0
    while any(len(o) < s for o, s in zip(out, sizes)):
        kind = kinds[n % len(kinds)]
        e: Any = n if kind == "i" else f"p{n}"
        j = shard_of(e, shards)
        if len(out[j]) < sizes[j]:
            out[j].append(e)
        n += 1
    return out


#: the shard count the service suites are re-run with (issue 13: "shards in {1, 3}"; 1 is their own run)
SUITE_SHARDS = 3


@pytest.fixture
def sharded_client(ray_local: Any, tmp_path: Path) -> Iterator[TestClient]:
    """The service suites' `client`, but every collection it creates without `shards` has
    SUITE_SHARDS Ray actors (LOGITSEARCH_DEFAULT_SHARDS); its actors are killed at teardown."""
    with ray_client(tmp_path / "data", default_shards=SUITE_SHARDS) as c:
        yield c


@contextmanager
def held_down(shard: Any, pid: int) -> Iterator[None]:
    """SIGKILL shard actor process `pid`, and again each time Ray restarts the actor, until the block
    ends: the shard stays down for as long as a test needs, however slow the machine (a single kill
    is undone by Ray in ~2.5 s, and a loaded machine may not reach the shard in that time)."""
    stop = threading.Event()
    os.kill(pid, signal.SIGKILL)

    def hold() -> None:
        while not stop.is_set():
            try:
                again, _ = shard.ping(timeout=1)
            except Exception:  # noqa: BLE001, S112 -- down, as wanted
                continue
            if not stop.is_set():
                try:
                    os.kill(again, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    keeper = threading.Thread(target=hold, name="held-down", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join(timeout=30)


#: the longer sharded runs (the service and e2e suites re-run on 3 shards, kills inside snapshots):
#: ~4 minutes on 2 cores, more than CI's budget; `LOGITSEARCH_FULL_RAY_TESTS=1 python -m pytest` runs them
full_ray_suite = pytest.mark.skipif(os.environ.get("LOGITSEARCH_FULL_RAY_TESTS") != "1",
                                    reason="set LOGITSEARCH_FULL_RAY_TESTS=1 (about 4 more minutes on 2 cores)")
