"""Giving freed heap memory back to the OS (issue 16).

glibc keeps memory a program frees for reuse: after a load or a bulk write, whose temporaries (a
chunk's rows and float64 embedding, SQLite's batches, the request body's pieces) came and went, the
server held up to twice the rows' size as RSS it no longer used. `release_memory` asks glibc to
return it (malloc_trim(0), every arena); elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable


def _libc_trim() -> Callable[[], None]:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        return lambda: None

    def release() -> None:
        trim(0)

    return release


release_memory = _libc_trim()


class _Trimmer:
    """`freed(n)`: about n bytes of request temporaries (a JSON body's Python floats) are being
    freed; a daemon thread gives the heap back as soon as THRESHOLD bytes have been noted, then
    rests EVERY seconds (at most one trim per EVERY), so a stream of large JSON upserts does not
    leave their peak as RSS. Between trims the thread sleeps until it is needed."""

    EVERY = 1.0
    THRESHOLD = 32 * 1024 * 1024

    def __init__(self) -> None:
        self._pending = 0
        self._due = threading.Condition()
        self._thread: threading.Thread | None = None

    def freed(self, nbytes: int) -> None:
        with self._due:
            self._pending += nbytes
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
                self._thread.start()
            if self._pending >= self.THRESHOLD:
                self._due.notify()

    def _run(self) -> None:
        while True:
            with self._due:
                while self._pending < self.THRESHOLD:
                    self._due.wait()
                self._pending = 0
            release_memory()
            time.sleep(self.EVERY)


trimmer = _Trimmer()
