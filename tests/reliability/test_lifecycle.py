"""One server per data directory, and a stop inside Docker's window (issue 11), on real processes.

A second server on a data directory that one holds is refused at once (exit 2, a message naming
the directory and the holder's pid, no traceback), whether started as `logitsearch serve` or as
`uvicorn --factory service.app:create_app`; after a kill -9 of the holder a new server starts and
serves the same data. At SIGTERM a request still running when the drain (LOGITSEARCH_DRAIN_SECONDS)
runs out is answered 503 problem+json with Retry-After, the log has no traceback, the indexes are
snapshotted, and the process exits 0 soon after the drain, not when the request's computation would
have finished.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.settings import Settings
from tests.e2e.conftest import REPO, free_port, start_server, stop_server

LOGITSEARCH = str(Path(sys.executable).with_name("logitsearch"))


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGITSEARCH_")}
    return {**env, "LOGITSEARCH_DATA_DIR": str(data), **extra}


def _argv(how: str, port: int) -> list[str]:
    if how == "serve":
        return [LOGITSEARCH, "serve", "--port", str(port)]
    return [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host", "127.0.0.1",
            "--port", str(port)]


@pytest.mark.parametrize("how", ["serve", "uvicorn"])
def test_a_second_server_on_a_held_data_dir_is_refused_and_a_kill_9_leaves_no_stale_lock(tmp_path, how):
    data = tmp_path / "data"
    base, first = start_server(data)
    try:
        assert httpx.put(f"{base}/v1/collections/kept", json={"dim": 4, "metrics": ["euc"]}).status_code == 201
        started = time.monotonic()
        second = subprocess.run(_argv(how, free_port()), cwd=REPO, env=_env(data), capture_output=True, text=True,
                                timeout=60, check=False)
        assert second.returncode == 2, (second.returncode, second.stderr[-2000:])
        assert time.monotonic() - started < 30  # refused at start, not after loading anything
        assert str(data.resolve()) in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr + second.stdout
        assert httpx.get(f"{base}/v1/collections/kept").status_code == 200  # the first one is untouched
    finally:
        first.kill()
        first.wait(timeout=10)
    base, again = start_server(data)  # the kernel dropped the lock with the killed process
    try:
        assert httpx.get(f"{base}/v1/collections/kept").status_code == 200
    finally:
        stop_server(again)


def test_a_request_cut_off_at_shutdown_gets_a_503_and_the_server_exits_0_soon_after_the_drain(tmp_path):
    assert Settings().drain_seconds < 10  # docker stop sends SIGKILL after 10 s: leave time for the snapshot
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        # the warm-up off, as in tests/e2e's servers: it is not what this test is about (~4 s a start)
        proc = subprocess.Popen(_argv("serve", port), cwd=REPO,
                                env=_env(data, LOGITSEARCH_DRAIN_SECONDS="1", LOGITSEARCH_WARMUP_SECONDS="0"),
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        X = np.random.default_rng(11).normal(0, 3, (20_000, 256)).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, X)
        assert httpx.put(f"{base}/v1/collections/big", json={"dim": 256, "metrics": ["euc"]}).status_code == 201
        r = httpx.post(f"{base}/v1/collections/big/points/bulk", params={"start": 0}, content=buf.getvalue(),
                       headers={"content-type": "application/octet-stream"}, timeout=120)
        assert r.status_code == 200, r.text
        # many queries at many temperatures over 20k rows: several seconds of work, far over the 1 s drain
        body = {"queries": {"sample": 6}, "temperatures": [1, 2, 3, 5, 10, 20, 50, 100]}
        answer: dict[str, httpx.Response | Exception] = {}

        def slow() -> None:
            try:
                answer["r"] = httpx.post(f"{base}/v1/collections/big/evaluate", json=body, timeout=120)
            except httpx.HTTPError as exc:
                answer["r"] = exc

        client = threading.Thread(target=slow)
        client.start()
        time.sleep(1.0)
        assert "r" not in answer, "the evaluation finished before the stop: make it bigger"
        snapshots = data / "indexes"
        assert not snapshots.is_dir() or not any(snapshots.iterdir())  # so the one found below is the stop's
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - stopped
        client.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    r = answer["r"]
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", (r.status_code, r.text)
    assert int(r.headers["retry-after"]) > 0 and "LOGITSEARCH_DRAIN_SECONDS" in r.json()["detail"]
    assert code == 0 and took < 8, (code, took)
    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text[-3000:]
    assert "request cut off at shutdown" in text
    assert any(snapshots.iterdir()), "the indexes were not snapshotted at the stop"
