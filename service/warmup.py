"""Warm-up at start (issue 16): every numba kernel a request uses is compiled, or loaded from numba's
on-disk cache, before /readyz answers 200.

numba compiles a kernel for each argument type the first time it is called: ~5 s for the first
search after a fresh install, 0.5-4 s for the first call of each other path. `start` runs each path
once, in a background thread, on tiny synthetic data and through the public functions the routes
call (indexes.knn.IndexSet, core.evaluation, service.plots), so it follows the code rather than a
list of kernel names. It is bounded: past `settings.warmup_seconds` readiness stops waiting (the
body says "timed_out" and one log line says so); a step that fails is logged and never fatal.

`python -m service.warmup` runs the same steps in the foreground: the Dockerfile's build step that
compiles numba's cache into the image (NUMBA_CACHE_DIR).

Sizes: a scan of m queries over n rows of width d runs on the calling thread below
indexes.exact.SERIAL_SCAN_TERMS (m n d) and in numba's thread pool above it, and a re-rank of fewer
than 4 queries on the calling thread: those are separately compiled kernels, so the synthetic
table is just large enough for both sides of each threshold.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from core.evaluation import evaluate, evaluate_queries, roughness_guide, shepard_data
from core.metrics import INDEXABLE
from core.parallel import threading_layer
from indexes.knn import FILTER_SCAN_ROWS, IndexSet, IndexSpec

log = logging.getLogger("logitsearch.warmup")

State = Literal["off", "running", "done", "failed", "timed_out"]
#: rows and width of the synthetic table: m = 16 queries over all rows reach the parallel scan
_N, _D, _T = 1024, 128, 10.0
_MANY = 16
#: rows and width of the HNSW table (its build is the only cost here that grows with the size)
_N_HNSW, _D_HNSW = 256, 16


def _table(n: int, d: int, seed: int) -> npt.NDArray[np.float32]:
    # logits with a peak per row, like a classifier's: softmax at t = 10 is neither flat nor one-hot
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * 3.0
    X[np.arange(n), rng.integers(0, d, n)] += 20.0
    return X.astype(np.float32)


def _search_steps() -> list[tuple[str, Callable[[], Any]]]:
    X = _table(_N, _D, 0)
    ids = np.arange(_N, dtype=np.int64)
    specs = [IndexSpec("euc"), IndexSpec("cos"), IndexSpec("tri", _T), IndexSpec("ced", _T)]
    iset = IndexSet(_D, specs)
    iset.upsert(ids, X, 1)
    Xh = _table(_N_HNSW, _D_HNSW, 1)
    hnsw = IndexSet(_D_HNSW, [IndexSpec("euc", kind="hnsw"), IndexSpec("tri", _T, "hnsw")])
    hnsw.upsert(np.arange(_N_HNSW, dtype=np.int64), Xh, 1)
    Q = X[:_MANY].astype(np.float64) + 0.5
    few = ids[::8][: FILTER_SCAN_ROWS // 4]     # <= FILTER_SCAN_ROWS: the exact scan of those rows
    half = ids[: _N // 2 + 1]
    steps: list[tuple[str, Callable[[], Any]]] = []
    for metric in INDEXABLE:
        t = _T if metric in ("tri", "ced") else None

        def one(metric: str = metric, t: float | None = t) -> None:
            # one query, then several: the re-rank's serial and parallel kernels (certified or scanned)
            iset.search(metric, Q[:1], 10, temperature=t)
            iset.search(metric, Q, 10, temperature=t, exclude=list(ids[:_MANY]))
            # most rows wanted: the full exact scan, on the calling thread and in the pool
            iset.search(metric, Q[:1], _N // 2, temperature=t)
            iset.search(metric, Q, _N // 2, temperature=t)
            # a filter: few rows (exact scan of those rows), half the rows (the index, then re-rank)
            iset.search(metric, Q[:1], 10, temperature=t, allowed=few)
            iset.search(metric, Q[:1], 10, temperature=t, allowed=half)
        steps.append((f"search {metric}", one))

    def approximate() -> None:
        q = Xh[:_MANY].astype(np.float64)
        for metric, t in (("euc", None), ("tri", _T)):
            hnsw.search(metric, q[:1], 10, temperature=t, kind="hnsw")
            hnsw.search(metric, q, 10, temperature=t, kind="hnsw")
            hnsw.search(metric, q[:1], 10, temperature=t, kind="hnsw", exact=True)
            hnsw.search(metric, q[:1], 10, temperature=t, kind="hnsw", allowed=np.arange(_N_HNSW // 2 + 1))
    steps.append(("search hnsw", approximate))
    return steps


def _evaluation_steps() -> list[tuple[str, Callable[[], Any]]]:
    # the routes pass the collection's float32 rows and a float64 query
    X = _table(300, _D, 2)
    labels = np.arange(X.shape[0]) % 7
    q = X[0].astype(np.float64) + 0.25
    steps: list[tuple[str, Callable[[], Any]]] = []
    for ranks in ("average", "paper"):
        steps.append((f"evaluate ranks={ranks}", lambda ranks=ranks: (
            evaluate(X, [1.0, _T], exclude=0, ranks=ranks, labels=labels, k=5),
            evaluate(X, [_T], query=q, ranks=ranks),
            evaluate(X[:40], [_T], mode="many_to_many", ranks=ranks),
            evaluate_queries(X, [_T], n_queries=3, ranks=ranks, labels=labels, k=5))))
    steps.append(("roughness", lambda: roughness_guide(X, temperatures=[1.0, _T])))

    def plots() -> None:
        from service.plots import roughness_png, shepard_grid_png  # matplotlib: the first figure costs ~1 s

        shepard_grid_png([shepard_data(X, _T, "tri", exclude=0, max_points=200)])
        roughness_png([(1.0, 0.1), (_T, 0.01)])
    steps.append(("plots", plots))
    return steps


def steps() -> list[tuple[str, Callable[[], Any]]]:
    """(name, call) of each warm-up step; building them (the synthetic indexes) is the first step."""
    return [("build", lambda: None), *_search_steps(), *_evaluation_steps()]


@dataclass
class Warmup:
    """The warm-up's state, as /readyz reports it; `start` runs it."""

    limit: float
    state: State = "running"
    done_steps: int = 0
    total_steps: int = 0
    failed: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def finished(self) -> bool:
        """True once /readyz need not wait: done, failed, timed out, or off."""
        with self._lock:
            if self.state == "running" and time.monotonic() - self.started > self.limit:
                self.state = "timed_out"
                log.warning("warm-up timed out: /readyz answers 200, the first requests may compile kernels",
                            extra={"fields": {"limit_seconds": self.limit, "steps_done": self.done_steps,
                                              "steps": self.total_steps}})
            return self.state != "running"

    def status(self) -> dict[str, Any]:
        """{state, steps_done, steps, failed, seconds} for the /readyz body."""
        self.finished()
        with self._lock:
            return {"state": self.state, "steps_done": self.done_steps, "steps": self.total_steps,
                    "failed": list(self.failed),
                    "seconds": round(time.monotonic() - self.started if self.seconds is None else self.seconds, 3)}

    def run(self) -> None:
        """Every step, in order, on this thread; stops between steps once the limit has passed."""
        try:
            todo = steps()
        except Exception as exc:  # noqa: BLE001  never fatal: the service serves, only slower at first
            self._fail("build", exc)
            todo = []
        with self._lock:
            self.total_steps = len(todo)
        for name, call in todo:
            if self.finished():  # timed out: leave the machine to the requests
                return
            began = time.monotonic()
            try:
                call()
            except Exception as exc:  # noqa: BLE001  as above: one log line, then the next step
                self._fail(name, exc)
            log.debug("warm-up step", extra={"fields": {"step": name, "seconds": round(time.monotonic() - began, 3)}})
            with self._lock:
                self.done_steps += 1
        with self._lock:
            self.seconds = time.monotonic() - self.started
            if self.state == "running":
                self.state = "failed" if self.failed else "done"
            state = self.state
        log.info("warm-up finished", extra={"fields": {"state": state, "seconds": round(self.seconds, 2),
                                                       "failed": self.failed}})

    def _fail(self, name: str, exc: Exception) -> None:
        log.warning("warm-up step failed", extra={"fields": {"step": name, "error": type(exc).__name__,
                                                             "detail": str(exc)[:200]}})
        with self._lock:
            self.failed.append(name)


_process: Warmup | None = None
_process_lock = threading.Lock()


def start(limit_seconds: float) -> Warmup:
    """The process's warm-up, running in a daemon thread; state "off" when limit_seconds is 0.

    Compiled kernels belong to the process, so it runs once per process: a second app in the same
    process (tests, a restart of the lifespan) gets the first one's, finished or not. Call after
    the threading layer is chosen (service.lifecycle.start_process).
    """
    global _process
    if limit_seconds <= 0:
        return Warmup(limit=0.0, state="off", seconds=0.0)
    with _process_lock:
        if _process is None:
            _process = Warmup(limit=float(limit_seconds))
            threading.Thread(target=_process.run, name="logitsearch-warmup", daemon=True).start()
        return _process


def main() -> int:
    """Run the warm-up in the foreground (the Docker build step); exit 1 if a step failed."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    threading_layer()
    w = Warmup(limit=float("inf"))
    w.run()
    print(f"warm-up: {w.state} in {w.seconds:.1f} s, {w.done_steps} steps" +
          (f", failed: {', '.join(w.failed)}" if w.failed else ""))
    return 0 if w.state == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
