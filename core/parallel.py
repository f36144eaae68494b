"""numba's threading layer, chosen once on purpose, and the gate every parallel kernel goes through.

numba picks its threading layer at the first parallel launch, and by default takes the first that
loads of tbb, omp, workqueue. The tbb layer needs Intel TBB (libtbb.so.12); the omp layer needs the
system's GNU OpenMP (libgomp.so.1: FAISS's wheel brings its own copy under another name, which numba
cannot use). Where neither loads (a python:slim image, a minimal host, a pip install of tbb whose
library numba does not find), numba silently takes workqueue, which aborts the whole process as
soon as two threads enter parallel kernels at once, which a server does all the time (issue 11).

So `threading_layer()` picks before the first launch: tbb (a dependency: thread-safe and fork-safe,
and one worker pool shared by every calling thread, so concurrent requests do not multiply the
threads), else omp (thread-safe; each calling thread gets its own team; not fork-safe), and only if
neither loads, or the user asked for it with NUMBA_THREADING_LAYER=workqueue, workqueue, behind a
lock: then parallel kernels run one at a time. Every parallel kernel call enters `region()`, which
makes that choice on first use, so no code path can launch a kernel before it.
"""

from __future__ import annotations

import ctypes
import os
import site
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from numba.core import config as _config
from numba.np.ufunc import parallel as _parallel

# numba ships no type information for these
_numba_config: Any = _config
_numba_parallel: Any = _parallel

#: layers that may be entered by several threads at once
THREADSAFE = ("tbb", "omp")

_choice_lock = threading.Lock()
_layer: str | None = None
#: held around each parallel kernel when the layer is not thread-safe (workqueue)
_one_at_a_time = threading.Lock()


def _preload_tbb() -> None:
    """Load the TBB that `pip install tbb` puts in <prefix>/lib (~/.local/lib with --user) by path:
    numba asks the dynamic loader for libtbb.so.12 by name, and a venv's lib directory is not on its
    search path. A library already loaded answers a later dlopen of its soname, so numba finds it."""
    for prefix in dict.fromkeys((sys.prefix, sys.exec_prefix, site.getuserbase(), sys.base_prefix)):
        path = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


def _launched() -> bool:
    return bool(getattr(_numba_parallel, "_is_initialized", False))


def threading_layer() -> str:
    """The threading layer numba uses in this process ("tbb", "omp" or "workqueue"), chosen and its
    worker pool started on the first call; every later call returns the same name.

    NUMBA_THREADING_LAYER, when set, is honoured (numba reads it at import). Otherwise the choice is
    numba's "threadsafe" (tbb, then omp), and workqueue only when neither loads."""
    global _layer
    if _layer is not None:
        return _layer
    with _choice_lock:
        if _layer is not None:
            return _layer
        if not _launched():
            _preload_tbb()
            if str(_numba_config.THREADING_LAYER).lower() == "default":
                _numba_config.THREADING_LAYER = "threadsafe"
            try:
                _numba_parallel.get_num_threads()  # launches the pool with the layer configured above
            except ValueError:  # neither tbb nor omp loads here: workqueue, one kernel at a time
                _numba_config.THREADING_LAYER = "workqueue"
                _numba_parallel.get_num_threads()
        _layer = str(_numba_parallel.threading_layer())
        return _layer


def region() -> AbstractContextManager[None]:
    """`with region(): kernel(...)` around every call of a parallel=True kernel: the layer is chosen
    first, and where it is not thread-safe the kernels run one at a time."""
    if (_layer or threading_layer()) in THREADSAFE:
        return nullcontext()
    return _serialised()


@contextmanager
def _serialised() -> Iterator[None]:
    with _one_at_a_time:
        yield
