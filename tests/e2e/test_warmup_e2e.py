"""/readyz waits for the warm-up on a real uvicorn process (issue 16): 503 while it runs, 200 after.

The warm-up is held by a test hook: the server runs under a wrapper that puts a first step in front of
service.warmup's steps, which waits until a gate file exists. The test asserts the ordering, not a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import REPO, free_port, stop_server

_GATED = r"""
import pathlib, sys, time
import service.warmup as w
gate, fail = pathlib.Path(sys.argv[1]), sys.argv[2] == "fail"
real = w.steps
def wait():
    while not gate.exists():
        time.sleep(0.02)
def boom():
    raise RuntimeError("a step that fails")
w.steps = lambda: [("gate", wait), *([("boom", boom)] if fail else []), *real()]
import uvicorn.main
sys.argv = ["uvicorn", "--factory", "service.app:create_app", "--host", "127.0.0.1", "--port", sys.argv[3],
            "--no-access-log", "--log-level", "warning"]
uvicorn.main.main()
"""


def _gated_server(tmp: Path, env: dict[str, str], fail: bool = False) -> tuple[str, subprocess.Popen[bytes], Path]:
    port, gate, data = free_port(), tmp / "gate", tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOGITSEARCH_")}
    clean.update({"LOGITSEARCH_DATA_DIR": str(data), "LOGITSEARCH_LOG_LEVEL": "info", **env})
    with (tmp / "server.log").open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", _GATED, str(gate), "fail" if fail else "ok", str(port)],
                                cwd=REPO, env=clean, stdout=out, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc, gate


def _readyz(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> httpx.Response:
    """The first answer of /readyz (the server may still be binding its port)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"{base}/readyz", timeout=5)
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)


def _until(base: str, proc: subprocess.Popen[bytes], status: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (r := _readyz(base, proc)).status_code != status:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)
    return dict(r.json())


def test_issue_16_readyz_is_503_while_the_warmup_runs_and_200_after_it(tmp_path):
    base, proc, gate = _gated_server(tmp_path, {})
    try:
        first = _readyz(base, proc)
        assert first.status_code == 503
        body = first.json()
        assert body["status"] == "loading" and body["warmup"]["state"] == "running"
        # the server answers meanwhile, and nothing but the warm-up holds readiness back
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert httpx.put(f"{base}/v1/collections/c", json={"dim": 4, "metrics": ["euc"]}, timeout=30).is_success
        held = httpx.get(f"{base}/readyz", timeout=5)
        assert held.status_code == 503 and held.json()["collections"] == {"c": "ready"}
        assert held.json()["warmup"]["steps_done"] == 0
        gate.touch()
        done = _until(base, proc, 200)
        assert done["status"] == "ready" and done["collections"] == {"c": "ready"}
        assert done["warmup"]["state"] == "done" and done["warmup"]["steps_done"] == done["warmup"]["steps"]
    finally:
        gate.touch()
        stop_server(proc)


@pytest.mark.parametrize("case", ["timed_out", "failed"])
def test_issue_16_a_warmup_that_times_out_or_fails_still_ends_in_200_and_says_so(tmp_path, case):
    env = {"LOGITSEARCH_WARMUP_SECONDS": "4"} if case == "timed_out" else {}
    base, proc, gate = _gated_server(tmp_path, env, fail=case == "failed")
    try:
        assert _readyz(base, proc).status_code == 503
        if case == "failed":
            gate.touch()
        body = _until(base, proc, 200)
        assert body["status"] == "ready" and body["warmup"]["state"] == case
        if case == "failed":
            assert body["warmup"]["failed"] == ["boom"]
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert ("warm-up timed out" if case == "timed_out" else "warm-up step failed") in log
    finally:
        gate.touch()
        stop_server(proc)


def test_issue_16_with_the_warmup_off_readyz_does_not_wait_for_it(tmp_path):
    base, proc, gate = _gated_server(tmp_path, {"LOGITSEARCH_WARMUP_SECONDS": "0"})
    try:
        body = _until(base, proc, 200, timeout=120)
        assert body["warmup"]["state"] == "off" and not gate.exists()
    finally:
        stop_server(proc)
