"""The server process's start and stop (issue 11): one server per data directory, numba's threading
layer fixed before the first request, and requests cut off at shutdown answered 503.

- `hold_data_dir(path)` takes an exclusive `fcntl.flock` on <data dir>/logitsearch.lock and writes
  the holder's pid into it. The kernel drops the lock when the process ends, however it ends, so a
  `kill -9` leaves nothing stale; a second server on the same directory is refused at once with a
  `DataDirInUse` naming the directory and the pid (two servers would diverge: writes through one
  are invisible to the other's in-memory indexes).
- `CutOffAtShutdown`: when the drain (LOGITSEARCH_DRAIN_SECONDS) runs out, uvicorn cancels the
  requests still running. The request then gets a 503 problem with Retry-After instead of a 500,
  and the log one warning line instead of a CancelledError traceback.
- `exit_promptly()`: after uvicorn has run the lifespan shutdown (indexes snapshotted, SQLite
  closed), a cut-off request's worker thread may still be computing; the interpreter would wait for
  it at exit (past Docker's 10 s, so a SIGKILL and exit 137). It ends the process with status 0.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import StorageError
from core.parallel import threading_layer
from service.limits import problem_response
from service.store import check_data_dir

log = logging.getLogger("logitsearch.lifecycle")

LOCK_FILE = "logitsearch.lock"
#: seconds a client is told to wait before retrying a request cut off by a restart
RETRY_AFTER = 5


class DataDirInUse(StorageError):
    """Another process holds the data directory's lock."""


_held: dict[Path, tuple[IO[str], int]] = {}
_held_lock = threading.Lock()


def hold_data_dir(data_dir: Path) -> Path:
    """Take (or, if this process holds it already, count once more) the exclusive lock of `data_dir`.
    DataDirInUse if another process holds it; StorageError if the directory is unusable.
    Returns the key for `release_data_dir`."""
    check_data_dir(data_dir)
    key = data_dir.resolve()
    with _held_lock:
        if key in _held:
            f, n = _held[key]
            _held[key] = (f, n + 1)
            return key
        path = key / LOCK_FILE
        try:
            f = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held open for the process's life
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise DataDirInUse(f"the data directory {key} is in use by another logitsearch server (pid {holder}); "
                               "one server per data directory: stop that one, or give this one another "
                               "--data-dir / LOGITSEARCH_DATA_DIR") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held[key] = (f, 1)
        return key


def release_data_dir(key: Path) -> None:
    """Undo one `hold_data_dir`; the last one drops the lock."""
    with _held_lock:
        if key not in _held:
            return
        f, n = _held.pop(key)
        if n > 1:
            _held[key] = (f, n - 1)
            return
        f.close()  # closing the only descriptor drops the flock; the file (and its stale pid) stays


def start_process() -> str:
    """Process-wide setup before the first request: numba's threading layer (core.parallel). Returns it."""
    layer = threading_layer()
    log.info("numba threading layer", extra={"fields": {"layer": layer}})
    return layer


def refuse(exc: Exception) -> None:
    """Print why the server cannot start and exit with status 2 (no traceback)."""
    print(f"logitsearch: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class CutOffAtShutdown:
    """Pure ASGI middleware: a request cancelled by the server's shutdown answers 503 (Retry-After)
    if its response has not started; once started, the connection just closes. Either way the
    cancellation ends here, so uvicorn logs no traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def noting(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, noting)
        except asyncio.CancelledError:
            log.warning("request cut off at shutdown", extra={"fields": {
                "method": scope.get("method"), "path": scope.get("path"), "response_started": started}})
            if not started:
                reason = ("the server is shutting down and stopped waiting for this request (the drain, "
                          "LOGITSEARCH_DRAIN_SECONDS, ran out); retry once it is back (a write may or may not "
                          "have been applied: upserts and deletes by id are safe to repeat)")
                await problem_response(503, reason, headers={"Retry-After": str(RETRY_AFTER)})(scope, receive, send)


def exit_promptly() -> None:
    """Called once uvicorn.run has returned (lifespan shutdown done): if request threads are still
    running (cut off at the drain's end), end the process now with status 0 instead of waiting."""
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not busy:
        return
    log.warning("exiting with request threads still running", extra={"fields": {"threads": len(busy)}})
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
