"""8 writers and 8 readers against one collection of a real server for a bounded time (issue 7).

Writers upsert fresh ids in batches and delete whole earlier batches of their own; readers search
and fetch whole batches. Checked: no request fails; a fetched batch is all there or all absent (no
half-applied write is ever visible); no search returns an id whose upsert had not been sent before
the search answered, nor one whose delete was acknowledged before the search was sent; the final
contents equal the acknowledged writes exactly and search agrees with brute force over them.
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import numpy as np

from tests.e2e.conftest import start_server, stop_server
from tests.reliability._oracle import assert_holds_exactly, assert_search_agrees, stored_points

NAME = "busy"
DIM = 16
BATCH = 5
WRITERS = READERS = 8
SECONDS = float(os.environ.get("LOGITSEARCH_CONCURRENCY_SECONDS", "8"))


class Log:
    """Times (time.monotonic, one clock for every thread) of each id's upsert sent/acked and delete acked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.upsert_sent: dict[int, float] = {}
        self.vectors: dict[int, np.ndarray] = {}
        self.deleted_acked: dict[int, float] = {}
        self.batches: list[list[int]] = []  # batches whose upsert was sent
        self.errors: list[str] = []
        self.searches: list[tuple[float, float, list[int]]] = []
        self.torn: list[str] = []
        self.fetches = 0


def _writer(base: str, w: int, log: Log, stop: threading.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mine: list[list[int]] = []
    next_id = (w + 1) * 10_000_000
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            if len(mine) > 3 and rng.random() < 0.3:
                ids = mine.pop(int(rng.integers(len(mine))))
                r = client.post(f"/v1/collections/{NAME}/points/delete", json={"ids": ids})
                if r.status_code != 200:
                    log.errors.append(f"delete {r.status_code} {r.text[:200]}")
                    return
                with log.lock:
                    now = time.monotonic()
                    for i in ids:
                        log.deleted_acked[i] = now
                continue
            ids = list(range(next_id, next_id + BATCH))
            next_id += BATCH
            X = rng.normal(0, 3, (BATCH, DIM)).astype(np.float32)
            with log.lock:
                now = time.monotonic()
                for i in ids:
                    log.upsert_sent[i] = now
                log.batches.append(ids)
            r = client.put(f"/v1/collections/{NAME}/points", json={"ids": ids, "vectors": X.tolist()})
            if r.status_code != 200:
                log.errors.append(f"upsert {r.status_code} {r.text[:200]}")
                return
            with log.lock:
                log.vectors.update(zip(ids, X))
            mine.append(ids)


def _reader(base: str, log: Log, stop: threading.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            if rng.random() < 0.5:
                q = rng.normal(0, 3, DIM)
                t0 = time.monotonic()
                r = client.post(f"/v1/collections/{NAME}/search",
                                json={"vector": q.tolist(), "k": 20, "metric": "euc", "with_payload": False})
                t1 = time.monotonic()
                if r.status_code != 200:
                    log.errors.append(f"search {r.status_code} {r.text[:200]}")
                    return
                log.searches.append((t0, t1, [h["id"] for h in r.json()["hits"]]))
            else:
                with log.lock:
                    if not log.batches:
                        continue
                    ids = log.batches[int(rng.integers(max(0, len(log.batches) - 50), len(log.batches)))]
                r = client.post(f"/v1/collections/{NAME}/points/get", json={"ids": ids, "with_vector": False})
                if r.status_code != 200:
                    log.errors.append(f"get {r.status_code} {r.text[:200]}")
                    return
                found = len(r.json()["points"])
                log.fetches += 1
                if found not in (0, len(ids)):
                    log.torn.append(f"batch {ids}: {found} of {len(ids)} visible")


def _enough(log: Log) -> bool:
    return len(log.searches) > 20 and log.fetches > 20 and len(log.vectors) > 100


def test_eight_writers_and_eight_readers_see_only_whole_acknowledged_writes(tmp_path, rng):
    base, proc = start_server(tmp_path / "data")
    try:
        assert httpx.put(f"{base}/v1/collections/{NAME}", json={"dim": DIM, "metrics": ["euc"]},
                         timeout=120).status_code == 201  # 120: on 3 shards, a create starts 3 processes
        log = Log()
        stop = threading.Event()
        seeds = rng.integers(2**32, size=WRITERS + READERS)
        threads = [threading.Thread(target=_writer, args=(base, w, log, stop, seeds[w])) for w in range(WRITERS)]
        threads += [threading.Thread(target=_reader, args=(base, log, stop, seeds[WRITERS + r])) for r in range(READERS)]
        for t in threads:
            t.start()
        # SECONDS of load, longer (at most a minute) until the clients have done enough to check: on
        # a loaded machine 8 s once gave 100 vectors where the check below wants more
        started = time.monotonic()
        while time.monotonic() < started + SECONDS or (
                not _enough(log) and time.monotonic() < started + SECONDS + 60 and not log.errors):
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert log.errors == []
        assert log.torn == [], log.torn[:5]
        assert _enough(log), \
            (len(log.searches), log.fetches, len(log.vectors))

        bad = []
        for t0, t1, ids in log.searches:
            for i in ids:
                if i not in log.upsert_sent or log.upsert_sent[i] > t1:
                    bad.append(f"id {i} found before its upsert was sent")
                elif i in log.deleted_acked and log.deleted_acked[i] < t0:
                    bad.append(f"id {i} found after its delete was acknowledged")
        assert bad == [], bad[:5]

        model = {i: x for i, x in log.vectors.items() if i not in log.deleted_acked}
        with httpx.Client(base_url=base, timeout=60) as client:
            stored = stored_points(client, NAME)
            assert_holds_exactly(stored, model)
            assert client.get(f"/v1/collections/{NAME}").json()["count"] == len(model)
            for _ in range(3):
                assert_search_agrees(client, NAME, stored, rng.normal(0, 3, DIM), "euc", 20)
    finally:
        stop_server(proc)
