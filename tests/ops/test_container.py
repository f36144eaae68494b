"""The container's exact CMD and HEALTHCHECK, run outside Docker with the image's environment."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.deploy import (
    ENV_EXAMPLE,
    SERVICE,
    compose,
    container_env,
    duration_seconds,
    env_file_vars,
    free_port,
    image,
    serving,
)


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    options, argv = image().healthcheck
    timeout = float(options["timeout"].rstrip("s"))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout + 5, check=False)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """`logitsearch serve` as the container runs it, with the API key docker compose passes from .env."""
    tmp = tmp_path_factory.mktemp("container")
    env = container_env(tmp / "data", free_port(), tmp, extra=env_file_vars(ENV_EXAMPLE))
    with serving(image().cmd, env, tmp / "server.log") as server:
        yield server


def test_healthcheck_fails_while_nothing_listens(tmp_path):
    env = container_env(tmp_path / "data", free_port(), tmp_path)
    proc = _healthcheck(env)
    assert proc.returncode != 0 and "Connection refused" in proc.stderr


def test_cmd_starts_the_service_and_the_healthcheck_passes_with_an_api_key_set(container):
    proc = _healthcheck(container.env)
    assert proc.returncode == 0, proc.stderr
    assert container.env["LOGITSEARCH_API_KEY"]  # /healthz must stay open to Docker's probe


def test_requests_are_logged_as_one_json_line_each_without_bodies_or_keys(container):
    key = container.env["LOGITSEARCH_API_KEY"]
    marker = "/healthz"
    for _ in range(3):
        httpx.get(f"{container.url}{marker}", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in container.logs().splitlines() if line.startswith("{")]
        access = [r for r in lines if r.get("logger") == "logitsearch.access" and r.get("route") == marker]
        if len(access) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(access) >= 3
    assert all({"method", "route", "status", "duration_ms"} <= set(r) for r in access)
    assert all(r["status"] == 200 and r["duration_ms"] >= 0 for r in access)
    assert key not in container.logs()


def test_metrics_expose_request_counts_and_latency_per_route(container):
    for _ in range(4):
        httpx.get(f"{container.url}/healthz", timeout=5).raise_for_status()
    httpx.get(f"{container.url}/no/such/path/12345", timeout=5)
    text = httpx.get(f"{container.url}/metrics", timeout=5).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    healthz = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert samples[("logitsearch_http_requests_total", healthz)] >= 4
    assert samples[("logitsearch_http_request_duration_seconds_count", healthz[:2])] >= 4
    assert not any("12345" in str(labels) for _, labels in samples)  # raw paths never become labels
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"logitsearch_search_duration_seconds", "logitsearch_ingested_rows", "logitsearch_collection_points",
            "logitsearch_index_vectors", "logitsearch_search_answers"} <= names


def _samples(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _load(url: str, name: str, X: np.ndarray, headers: dict[str, str] | None = None) -> int:
    """Create `name` (euc and tri at t = 10, flat) and upsert X; the write's operation id."""
    r = httpx.put(f"{url}/v1/collections/{name}", headers=headers, timeout=30,
                  json={"dim": X.shape[1], "metrics": ["euc", "tri"], "temperatures": [10]})
    assert r.status_code in (200, 201), r.text
    r = httpx.put(f"{url}/v1/collections/{name}/points", params={"wait": "true"}, headers=headers, timeout=60,
                  json={"ids": list(range(len(X))), "vectors": X.tolist()})
    assert r.status_code == 200, r.text
    return int(r.json()["operation_id"])


def test_metrics_expose_search_latency_ingest_rows_and_index_sizes(container, rng):
    headers = {"Authorization": f"Bearer {container.env['LOGITSEARCH_API_KEY']}"}
    X = rng.normal(size=(40, 16))
    _load(container.url, "metrics-c", X, headers)
    for metric, temperature in (("tri", 10), ("tri", 10), ("euc", None)):
        r = httpx.post(f"{container.url}/v1/collections/metrics-c/search", headers=headers, timeout=60,
                       json={"vector": X[0].tolist(), "k": 3, "metric": metric, "temperature": temperature})
        assert r.status_code == 200, r.text
    samples = _samples(container.url)
    assert samples[("logitsearch_search_duration_seconds_count", (("kind", "flat"), ("metric", "tri")))] == 2
    assert samples[("logitsearch_search_duration_seconds_count", (("kind", "flat"), ("metric", "euc")))] == 1
    assert sum(v for (n, labels), v in samples.items()
               if n == "logitsearch_search_answers_total" and ("metric", "tri") in labels) == 2
    assert samples[("logitsearch_ingested_rows_total", ())] >= 40
    assert samples[("logitsearch_collection_points", (("collection", "metrics-c"),))] == 40
    sizes = {dict(labels)["index"]: v for (n, labels), v in samples.items()
             if n == "logitsearch_index_vectors" and ("collection", "metrics-c") in labels}
    assert sizes and all(v == 40 for v in sizes.values()) and any(k.startswith("tri") for k in sizes)


def _snapshots(data: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(data.glob("indexes/*/manifest.json"))]


def test_sigterm_drains_snapshots_the_indexes_and_exits_zero_within_the_grace_period(tmp_path, rng):
    data = tmp_path / "data"
    env = container_env(data, free_port(), tmp_path)
    grace = duration_seconds(compose()["services"][SERVICE]["stop_grace_period"])
    with serving(image().cmd, env, tmp_path / "server.log") as server:
        last = _load(server.url, "snap", rng.normal(size=(30, 8)))
        assert all(m["last_seq"] < last for m in _snapshots(data))  # the shutdown must write it
        server.proc.send_signal(getattr(signal, image().final("STOPSIGNAL")[-1]))
        started = time.monotonic()
        rc = server.proc.wait(timeout=grace)
        took = time.monotonic() - started
        logs = server.logs()
    assert rc == 0, logs[-2000:]
    assert took < grace
    assert [(m["last_seq"], m["count"]) for m in _snapshots(data)] == [(last, 30)]
