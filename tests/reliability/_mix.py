"""The mixed load of issue 11, shared by tests/reliability/test_mixed_load.py and benchmarks/soak.py.

Two collections of N rows (bulk-loaded .npy): `flat` (flat euc and tri indexes) and `graph` (HNSW
euc and tri). Readers draw each request from KINDS: exact search on HNSW (a full parallel scan),
TRI on the flat index (certified), TRI on HNSW with exact (scanned), HNSW search, a batch of 8
searches, an evaluation over 5,000 rows. Writers upsert batches of fresh ids and delete earlier
batches of their own, in both collections; `model` holds exactly the acknowledged writes.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter, defaultdict

import httpx
import numpy as np

from tests.reliability._oracle import assert_holds_exactly, assert_search_agrees, stored_points

N, DIM, T = 10_000, 48, 1.0
HNSW = {"kind": "hnsw", "params": {"M": 16, "ef_construction": 40, "ef_search": 64}}
KINDS = ("exact", "tri", "tri-scan", "hnsw", "batch", "evaluate")
WRITES = ("upsert", "delete")
Model = dict[str, dict[int, np.ndarray]]


class Tally:
    """Per request kind: latencies of the successes, failures (non-200 or dropped), and `how`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: defaultdict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.how: Counter[str] = Counter()
        self.failures: list[str] = []  # the first 50 messages

    def note(self, kind: str, r: httpx.Response | Exception, seconds: float) -> bool:
        with self.lock:
            if isinstance(r, httpx.Response) and r.status_code == 200:
                self.seconds[kind].append(seconds)
                return True
            self.errors[kind] += 1
            if len(self.failures) < 50:
                what = f"dropped: {r!r}" if isinstance(r, Exception) else f"{r.status_code} {r.text[:200]}"
                self.failures.append(f"{kind}: {what}")
            return False

    def count(self, kind: str) -> int:
        return len(self.seconds[kind]) + self.errors[kind]


def _send(client: httpx.Client, tally: Tally, kind: str, method: str, path: str, body: dict) -> dict | None:
    started = time.perf_counter()
    try:
        r: httpx.Response | Exception = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        r = exc
    if tally.note(kind, r, time.perf_counter() - started):
        assert isinstance(r, httpx.Response)
        return r.json()
    return None


def load(client: httpx.Client, rng: np.random.Generator) -> Model:
    """Create both collections and bulk-load N random rows into each; the model of what they hold."""
    model: Model = {}
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
    return model


def reader(base: str, tally: Tally, stop: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    search = "/v1/collections/{}/search"
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < stop:
            q = rng.normal(0, 3, DIM).tolist()
            kind = KINDS[int(rng.integers(len(KINDS)))]
            plain = {"vector": q, "k": 10, "with_payload": False}
            if kind == "exact":
                out = _send(client, tally, kind, "POST", search.format("graph"),
                            {**plain, "metric": "euc", "exact": True})
            elif kind == "tri":
                out = _send(client, tally, kind, "POST", search.format("flat"),
                            {**plain, "metric": "tri", "temperature": T})
            elif kind == "tri-scan":
                out = _send(client, tally, kind, "POST", search.format("graph"),
                            {**plain, "metric": "tri", "temperature": T, "exact": True})
            elif kind == "hnsw":
                out = _send(client, tally, kind, "POST", search.format("graph"), {**plain, "metric": "euc"})
            elif kind == "batch":
                searches = [{"vector": rng.normal(0, 3, DIM).tolist(), "k": 5, "with_payload": False,
                             "metric": m, **({"temperature": T} if m == "tri" else {})}
                            for m in ("euc", "tri") * 4]
                out = _send(client, tally, kind, "POST", "/v1/collections/flat/search/batch", {"searches": searches})
                out = out["results"][0] if out else None
            else:
                _send(client, tally, kind, "POST", "/v1/collections/flat/evaluate",
                      {"vector": q, "temperature": T, "sample": 5000, "metrics": ["tri", "euc"]})
                continue
            if out is not None:
                with tally.lock:
                    tally.how[f"{kind}:{out['how']}"] += 1


def writer(base: str, w: int, tally: Tally, stop: float, seed: int, model: Model) -> None:
    rng = np.random.default_rng(seed)
    next_id = (w + 1) * 100_000_000
    mine: dict[str, list[list[int]]] = {"flat": [], "graph": []}
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < stop:
            name = ("flat", "graph")[int(rng.integers(2))]
            if len(mine[name]) > 2 and rng.random() < 0.3:
                ids = mine[name].pop(int(rng.integers(len(mine[name]))))
                if _send(client, tally, "delete", "POST", f"/v1/collections/{name}/points/delete",
                         {"ids": ids}) is not None:
                    for i in ids:
                        del model[name][i]
                continue
            ids = list(range(next_id, next_id + 20))
            next_id += 20
            X = rng.normal(0, 3, (20, DIM)).astype(np.float32)
            if _send(client, tally, "upsert", "PUT", f"/v1/collections/{name}/points",
                     {"ids": ids, "vectors": X.tolist()}) is not None:
                model[name].update(zip(ids, X))
                mine[name].append(ids)


def run(base: str, model: Model, seconds: float, readers: int, writers: int, seed: int) -> Tally:
    """`readers` + `writers` client threads for `seconds`; raises if a client hangs."""
    tally = Tally()
    stop = time.monotonic() + seconds
    seeds = np.random.default_rng(seed).integers(2**32, size=readers + writers)
    threads = [threading.Thread(target=reader, args=(base, tally, stop, seeds[i])) for i in range(readers)]
    threads += [threading.Thread(target=writer, args=(base, w, tally, stop, seeds[readers + w], model))
                for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    if any(t.is_alive() for t in threads):
        raise AssertionError("a client hung")
    return tally


def check_final_state(client: httpx.Client, model: Model, rng: np.random.Generator, queries: int = 2) -> None:
    """Both collections hold exactly the acknowledged writes; searches equal float64 brute force."""
    for name, kind in (("flat", None), ("graph", "hnsw")):
        stored = stored_points(client, name)
        assert_holds_exactly(stored, model[name])  # type: ignore[arg-type]
        for _ in range(queries):
            q = rng.normal(0, 3, DIM)
            assert_search_agrees(client, name, stored, q, "euc", 10, kind=kind)
            assert_search_agrees(client, name, stored, q, "tri", 10, t=T, kind=kind)
