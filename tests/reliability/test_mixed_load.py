"""Many clients, every kind of request, one real server, >= 10k rows per collection (issue 11).

10 clients for a bounded time against a `uvicorn` subprocess: exact searches on an HNSW index (the
request that aborted the server), TRI on a flat index (certified) and TRI forced to a scan, HNSW
searches, batch searches, evaluations, and writers upserting and deleting in both collections.
The sizes put numba and FAISS on their parallel paths (a scan of 10k x 48 float64 is over
core/divergences._PARALLEL_MIN). The server runs as on a host without the system's GNU OpenMP
(`libgomp.so.1`, absent on python:slim and so in our image): numba's omp layer cannot load there,
which is where numba used to fall back to its workqueue layer and abort the whole process.

Checked: no 5xx and no other failure, no dropped connection, the process alive at the end, both
collections hold exactly the acknowledged writes, and searches over the final state equal float64
brute force (tests/reliability/_oracle.py).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import Counter

import httpx
import numpy as np

from tests.e2e.conftest import start_server, stop_server
from tests.reliability._oracle import assert_holds_exactly, assert_search_agrees, stored_points

N, DIM, T = 10_000, 48, 1.0
SECONDS = float(os.environ.get("LOGITSEARCH_MIXED_LOAD_SECONDS", "6"))
READERS, WRITERS = 8, 2
HNSW = {"kind": "hnsw", "params": {"M": 16, "ef_construction": 40, "ef_search": 64}}
#: as numba sees a host without libgomp.so.1: importing its omp layer fails
NO_LIBGOMP = "import sys\nsys.modules['numba.np.ufunc.omppool'] = None\n"


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.how: Counter[str] = Counter()
        self.failures: list[str] = []

    def note(self, kind: str, r: httpx.Response | Exception) -> bool:
        with self.lock:
            self.counts[kind] += 1
            if isinstance(r, Exception):
                self.failures.append(f"{kind}: dropped: {r!r}")
            elif r.status_code != 200:
                self.failures.append(f"{kind}: {r.status_code} {r.text[:200]}")
            else:
                return True
            return False


def _post(client: httpx.Client, tally: Tally, kind: str, path: str, body: dict) -> dict | None:
    try:
        r: httpx.Response | Exception = client.post(path, json=body)
    except httpx.HTTPError as exc:
        r = exc
    if tally.note(kind, r):
        assert isinstance(r, httpx.Response)
        return r.json()
    return None


def _reader(base: str, tally: Tally, stop: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < stop:
            q = rng.normal(0, 3, DIM).tolist()
            kind = ["exact", "tri", "tri-scan", "hnsw", "batch", "evaluate"][int(rng.integers(6))]
            if kind == "exact":
                out = _post(client, tally, kind, "/v1/collections/graph/search",
                            {"vector": q, "k": 10, "metric": "euc", "exact": True, "with_payload": False})
            elif kind == "tri":
                out = _post(client, tally, kind, "/v1/collections/flat/search",
                            {"vector": q, "k": 10, "metric": "tri", "temperature": T, "with_payload": False})
            elif kind == "tri-scan":
                out = _post(client, tally, kind, "/v1/collections/graph/search",
                            {"vector": q, "k": 10, "metric": "tri", "temperature": T, "exact": True,
                             "with_payload": False})
            elif kind == "hnsw":
                out = _post(client, tally, kind, "/v1/collections/graph/search",
                            {"vector": q, "k": 10, "metric": "euc", "with_payload": False})
            elif kind == "batch":
                searches = [{"vector": rng.normal(0, 3, DIM).tolist(), "k": 5, "with_payload": False,
                             "metric": m, **({"temperature": T} if m == "tri" else {})}
                            for m in ("euc", "tri") * 4]
                out = _post(client, tally, kind, "/v1/collections/flat/search/batch", {"searches": searches})
                out = out["results"][0] if out else None
            else:
                _post(client, tally, kind, "/v1/collections/flat/evaluate",
                      {"vector": q, "temperature": T, "sample": 5000, "metrics": ["tri", "euc"]})
                continue
            if out is not None:
                with tally.lock:
                    tally.how[f"{kind}:{out['how']}"] += 1


def _writer(base: str, w: int, tally: Tally, stop: float, seed: int, model: dict[str, dict]) -> None:
    rng = np.random.default_rng(seed)
    next_id, mine = (w + 1) * 1_000_000, {"flat": [], "graph": []}
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < stop:
            name = ("flat", "graph")[int(rng.integers(2))]
            if len(mine[name]) > 2 and rng.random() < 0.3:
                ids = mine[name].pop(int(rng.integers(len(mine[name]))))
                if _post(client, tally, "delete", f"/v1/collections/{name}/points/delete", {"ids": ids}) is not None:
                    for i in ids:
                        del model[name][i]
                continue
            ids = list(range(next_id, next_id + 20))
            next_id += 20
            X = rng.normal(0, 3, (20, DIM)).astype(np.float32)
            try:
                r: httpx.Response | Exception = client.put(f"/v1/collections/{name}/points",
                                                           json={"ids": ids, "vectors": X.tolist()})
            except httpx.HTTPError as exc:
                r = exc
            if tally.note("upsert", r):
                model[name].update(zip(ids, X))
                mine[name].append(ids)


def test_ten_clients_mixing_every_request_kind_never_break_the_server(tmp_path, rng):
    shim = tmp_path / "no-libgomp"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_LIBGOMP)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    base, proc = start_server(tmp_path / "data", env={"PYTHONPATH": path})
    try:
        model: dict[str, dict] = {}
        with httpx.Client(base_url=base, timeout=120) as client:
            for name, index in (("flat", {"kind": "flat"}), ("graph", HNSW)):
                r = client.put(f"/v1/collections/{name}", json={"dim": DIM, "metrics": ["euc", "tri"],
                                                                "temperatures": [T], "index": index})
                assert r.status_code == 201, r.text
                X = rng.normal(0, 3, (N, DIM)).astype(np.float32)
                npy = io.BytesIO()
                np.save(npy, X)
                r = client.post(f"/v1/collections/{name}/points/bulk", params={"start": 0}, content=npy.getvalue(),
                                headers={"content-type": "application/octet-stream"})
                assert r.status_code == 200, r.text
                model[name] = dict(zip(range(N), X))

        tally = Tally()
        stop = time.monotonic() + SECONDS
        seeds = rng.integers(2**32, size=READERS + WRITERS)
        threads = [threading.Thread(target=_reader, args=(base, tally, stop, seeds[i])) for i in range(READERS)]
        threads += [threading.Thread(target=_writer, args=(base, w, tally, stop, seeds[READERS + w], model))
                    for w in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert proc.poll() is None, "the server process died under load"
        assert tally.failures == [], (len(tally.failures), tally.failures[:5])
        assert all(tally.counts[k] >= 3 for k in ("exact", "tri", "tri-scan", "hnsw", "batch", "evaluate",
                                                  "upsert")), tally.counts
        assert tally.how["tri:certified"] and tally.how["tri-scan:scanned"] and tally.how["exact:scanned"] \
            and tally.how["hnsw:approximate"], tally.how

        with httpx.Client(base_url=base, timeout=120) as client:
            for name, kind in (("flat", None), ("graph", "hnsw")):
                stored = stored_points(client, name)
                assert_holds_exactly(stored, model[name])
                for _ in range(2):
                    q = rng.normal(0, 3, DIM)
                    assert_search_agrees(client, name, stored, q, "euc", 10, kind=kind)
                    assert_search_agrees(client, name, stored, q, "tri", 10, t=T, kind=kind)
        assert proc.poll() is None
    finally:
        stop_server(proc)
