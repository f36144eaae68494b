"""Many clients, every kind of request, one real server, >= 10k rows per collection (issue 11).

10 clients (8 readers, 2 writers; the mix is tests/reliability/_mix.py, shared with
benchmarks/soak.py) for a bounded time against a `uvicorn` subprocess: exact searches on an HNSW
index (the request that aborted the server), TRI on a flat index (certified) and TRI forced to a
scan, HNSW searches, batch searches, evaluations, and writers upserting and deleting in both
collections. The sizes put numba and FAISS on their parallel paths (a scan of 10k x 48 float64 is
over core/divergences._PARALLEL_MIN). The server runs as on a host without the system's GNU OpenMP
(`libgomp.so.1`, absent on python:slim and so in our image): numba's omp layer cannot load there,
which is where numba fell back to its workqueue layer and aborted the whole process.

Checked: no 5xx and no other failure, no dropped connection, the process alive at the end, both
collections hold exactly the acknowledged writes, and searches over the final state equal float64
brute force (tests/reliability/_oracle.py).
"""

from __future__ import annotations

import os

import httpx

from tests.e2e.conftest import start_server, stop_server
from tests.reliability import _mix

SECONDS = float(os.environ.get("LOGITSEARCH_MIXED_LOAD_SECONDS", "6"))
#: as numba sees a host without libgomp.so.1: importing its omp layer fails
NO_LIBGOMP = "import sys\nsys.modules['numba.np.ufunc.omppool'] = None\n"


def test_ten_clients_mixing_every_request_kind_never_break_the_server(tmp_path, rng):
    shim = tmp_path / "no-libgomp"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_LIBGOMP)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    base, proc = start_server(tmp_path / "data", env={"PYTHONPATH": path})
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            model = _mix.load(client, rng)
        tally = _mix.run(base, model, SECONDS, readers=8, writers=2, seed=int(rng.integers(2**32)))
        assert proc.poll() is None, "the server process died under load"
        assert tally.failures == [], (sum(tally.errors.values()), tally.failures[:5])
        assert all(tally.count(k) >= 3 for k in (*_mix.KINDS, "upsert")), {k: tally.count(k) for k in _mix.KINDS}
        assert tally.how["tri:certified"] and tally.how["tri-scan:scanned"] and tally.how["exact:scanned"] \
            and tally.how["hnsw:approximate"], tally.how
        with httpx.Client(base_url=base, timeout=120) as client:
            _mix.check_final_state(client, model, rng)
        assert proc.poll() is None
    finally:
        stop_server(proc)
