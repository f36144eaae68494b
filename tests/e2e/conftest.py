"""A real uvicorn server on 127.0.0.1 for end-to-end tests.

    base, proc = start_server(tmp_path / "data")      # waits for GET /readyz == 200
    ...
    stop_server(proc)                                 # SIGTERM: graceful, snapshots indexes
    proc.kill(); proc.wait()                          # SIGKILL: nothing runs on the way out

The `servers` fixture starts servers the same way and stops every one still running at teardown;
`shared_server` is one server for the whole session (use collection names of your own).

The kernel warm-up (issue 16) is off in these servers unless asked for (`warmup=True`, or
LOGITSEARCH_WARMUP_SECONDS in `env`), as in every in-process client: it holds /readyz ~4 s at each
start on 2 cores, and these tests are about processes, restarts and kills, not about it. It has its
own tests (tests/e2e/test_warmup_e2e.py on real processes, tests/service/test_warmup.py), and
`shared_server` runs it, so one real server of the session serves its requests after a warm-up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_server(data_dir: Path, env: dict[str, str] | None = None, *, timeout: float = 60.0,
                 log: Path | None = None, warmup: bool = False) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m uvicorn --factory service.app:create_app` on 127.0.0.1 and a free port, with
    LOGITSEARCH_DATA_DIR=data_dir (other LOGITSEARCH_* variables of the test process are dropped,
    LOGITSEARCH_WARMUP_SECONDS=0 is set unless `warmup`, then `env` is added). Returns (base url, process) once /readyz answers 200. Output goes to `log`
    (default: data_dir/../server-<port>.log)."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOGITSEARCH_")}
    clean.update({"LOGITSEARCH_DATA_DIR": str(data_dir), "LOGITSEARCH_LOG_LEVEL": "warning",
                  **({} if warmup else {"LOGITSEARCH_WARMUP_SECONDS": "0"}), **(env or {})})
    log = log or data_dir.parent / f"server-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
                                 "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                                 "--log-level", "warning"],
                                cwd=REPO, env=clean, stdout=out, stderr=subprocess.STDOUT)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while not _ready(base):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise AssertionError(f"server did not become ready; log tail:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return base, proc


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM and wait (uvicorn drains, the lifespan snapshots); SIGKILL if it hangs. The exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


@pytest.fixture
def servers() -> Iterator[Callable[..., tuple[str, subprocess.Popen[bytes]]]]:
    """`servers(data_dir, env=None)` starts a server; all of them are stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(data_dir: Path, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[bytes]]:
        base, proc = start_server(data_dir, env)
        started.append(proc)
        return base, proc

    try:
        yield start
    finally:
        for proc in started:
            stop_server(proc)


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base url of one server shared by the session's tests."""
    base, proc = start_server(tmp_path_factory.mktemp("shared") / "data", warmup=True)
    try:
        yield base
    finally:
        stop_server(proc)
