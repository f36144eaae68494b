"""Giving freed heap memory back to the OS (issue 16).

glibc keeps memory a program frees for reuse: after a load or a bulk write, whose temporaries (a
chunk's rows and float64 embedding, SQLite's batches, the request body's pieces) came and went, the
server held up to twice the rows' size as RSS it no longer used. `release_memory` asks glibc to
return it (malloc_trim(0), every arena); elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
