"""numba's threading layer is chosen on purpose and parallel kernels survive many threads (issue 11).

Each case runs in a fresh interpreter: the layer is fixed at a process's first parallel launch.
`_HIDE` makes numba's omp and/or tbb layers fail to import, as they do on a host without the
system's libgomp.so.1 (python:slim) or without TBB; numba then falls back to workqueue, which
aborts the process when two threads enter parallel kernels at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.e2e.conftest import REPO

_HIDE = "import sys\nfor name in {hide!r}:\n    sys.modules['numba.np.ufunc.' + name] = None  # import -> ImportError\n"

# 8 threads, each running core's fused kernels over 2^18 elements (above _PARALLEL_MIN: the parallel
# path) and the exact scan of indexes, at the same time; then the layer in use and the answers' check
_HAMMER = """
import threading
import numpy as np
from core.divergences import tri_logits
from core.parallel import threading_layer
from indexes import exact
from scipy.special import softmax
rng = np.random.default_rng(11)
X = rng.normal(0, 3, (2048, 128)); q = X[0]
P, p = softmax(X, axis=1), softmax(q)
want = 0.5 * ((P - p) ** 2 / (P + p)).sum(axis=1)
bad = []
def hammer():
    for _ in range(15):
        if not np.allclose(tri_logits(q, X, 1.0), want, rtol=1e-9, atol=1e-12):
            bad.append("tri")
        ids, _ = exact.scan("euc", None, X[:1], X.astype(np.float32), np.arange(len(X)), 5)
        if ids[0][0] != 0:
            bad.append("scan")
threads = [threading.Thread(target=hammer) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(threading_layer(), len(bad))
"""


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("hide, want", [((), {"tbb"}), (("omppool",), {"tbb"}), (("tbbpool",), {"omp"}),
                                        (("tbbpool", "omppool"), {"workqueue"})],
                         ids=["default", "no-libgomp", "no-tbb", "neither"])
def test_eight_threads_in_parallel_kernels_keep_the_process_alive(hide, want):
    r = _run(_HIDE.format(hide=hide) + textwrap.dedent(_HAMMER))
    assert r.returncode == 0, r.stderr[-2000:]
    layer, bad = r.stdout.split()
    assert layer in want and bad == "0", r.stdout


def test_a_layer_named_in_the_environment_is_honoured():
    r = _run("from core.parallel import threading_layer; print(threading_layer())",
             env={"NUMBA_THREADING_LAYER": "omp"})
    assert r.returncode == 0 and r.stdout.split() == ["omp"], r.stderr[-2000:]


def test_numba_would_have_taken_workqueue_where_omp_does_not_load():
    """The cause (issue 11): numba's own default, with no libgomp.so.1 and no TBB it can find."""
    code = _HIDE.format(hide=("omppool",)) + "import numba\nnumba.get_num_threads()\nprint(numba.threading_layer())"
    r = _run(code)
    assert r.returncode == 0 and r.stdout.split() == ["workqueue"], r.stderr[-2000:]
