"""Snapshots across real server processes (issue 15).

- A collection snapshotted on one server (`logitsearch snapshot NAME -o FILE`) and restored on another
  with its own data directory and other collections (`logitsearch restore NAME FILE`, so its internal
  ids are shifted) answers every search, batch search, evaluation and read exactly as the original
  did, flat (10k rows: the chunked and parallel paths) and HNSW (the same graph), and still does after
  that server restarts.
- A snapshot taken while a writer thread streams upserts and deletes holds exactly the writes up to
  its sequence: the restored collection equals a plain-Python replay of the acknowledged writes with
  operation id <= last_operation_id, every write acknowledged before the snapshot was asked for is in
  it, and none sent after it answered.
- The CLI refuses a damaged archive or a missing file in one line, without a traceback.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from service.client import Client
from tests.e2e.conftest import REPO, start_server, stop_server
from tests.service.test_snapshots import strip

C = "/v1/collections"
DIM = 24


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args, "--url", url], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def _wait_ready(http: httpx.Client, name: str) -> None:
    deadline = time.monotonic() + 60
    while any(i["status"] != "ready" for i in http.get(f"{C}/{name}/indexes").json()["indexes"]):
        assert time.monotonic() < deadline, "index build did not finish"
        time.sleep(0.05)


def _load(base: str, rng: np.random.Generator) -> np.ndarray:
    """`flat`: 10k str-id rows (bulk), 300 int-id rows with payloads, replacements, deletes, an index
    added later; `graph`: HNSW over 3,000 rows with tombstones."""
    X = (rng.normal(size=(10_000, DIM)) * 4).astype(np.float32)
    with Client(base) as c:
        c.create_collection("flat", DIM, metrics=["euc", "cos", "tri", "ced"], temperatures=[1, 10])
        c.upload_npy("flat", X, ids=[f"row-{i}" for i in range(len(X))])
        c.upsert("flat", list(range(300)), X[:300] + 0.5, payloads=[{"n": i, "label": f"c{i % 7}"} for i in range(300)])
        c.upsert("flat", [f"row-{i}" for i in range(20)], X[20:40], payloads=[{"replaced": True}] * 20)
        c.delete("flat", [f"row-{i}" for i in range(40, 90)] + list(range(250, 260)))
        c.add_index("flat", "tri", 100)
        c.create_collection("graph", DIM, metrics=["euc", "tri"], temperatures=[10], kind="hnsw",
                            params={"M": 16, "ef_construction": 40})
        c.upsert("graph", list(range(3000)), X[:3000], payloads=[{"g": i} for i in range(3000)])
        c.delete("graph", list(range(0, 3000, 9)))
    with httpx.Client(base_url=base) as http:
        _wait_ready(http, "flat")
    return X


def _answers(base: str, X: np.ndarray, names: tuple[str, ...] = ("flat", "graph")) -> dict[str, object]:
    """What the collections answer: searches per index, by vector and by id, exact on HNSW,
    batches, reads, the description, and (with flat) evaluations and roughness."""
    out: dict[str, object] = {}
    queries = [X[5] + 0.3, X[777], X[9999] * 2]
    by_ids = {"flat": [7, "row-3", "row-500"], "graph": [10, 2999]}
    with httpx.Client(base_url=base, timeout=120) as http:
        for name in names:
            by_id = by_ids[name]
            for ix in http.get(f"{C}/{name}/indexes").json()["indexes"]:
                spec = {"metric": ix["metric"], "kind": ix["kind"], **({"temperature": ix["temperature"]}
                                                                       if ix["temperature"] else {})}
                for j, q in enumerate(queries):
                    for exact in (False, True) if ix["kind"] == "hnsw" else (False,):
                        body = {**spec, "vector": q.tolist(), "k": 25, "exact": exact, "with_vector": True}
                        out[f"{name} {ix['id']} q{j} exact={exact}"] = http.post(f"{C}/{name}/search", json=body).json()
                for pid in by_id:
                    out[f"{name} {ix['id']} id {pid!r}"] = http.post(f"{C}/{name}/search",
                                                                     json={**spec, "id": pid, "k": 10}).json()
                batch = {"searches": [{**spec, "vector": q.tolist(), "k": 5} for q in queries]}
                out[f"{name} {ix['id']} batch"] = http.post(f"{C}/{name}/search/batch", json=batch).json()
            out[f"{name} described"] = http.get(f"{C}/{name}").json()
            pages, offset = [], None
            while True:
                page = http.post(f"{C}/{name}/points/scroll",
                                 json={"offset": offset, "limit": 4000, "with_vector": True}).json()
                pages.append(page["points"])
                offset = page["next_offset"]
                if offset is None:
                    break
            out[f"{name} scroll"] = pages
            out[f"{name} get"] = http.post(f"{C}/{name}/points/get", json={"ids": by_id + ["nope", 45]}).json()
        if "flat" not in names:
            return strip(out)
        for t in (1, 10):
            out[f"evaluate id t={t}"] = http.post(f"{C}/flat/evaluate", json={"id": 7, "temperature": t}).json()
        out["evaluate queries"] = http.post(f"{C}/flat/evaluate", json={"queries": {"sample": 4, "seed": 3},
                                                                        "temperatures": [1, 10],
                                                                        "sample": 2000}).json()
        out["evaluate pairs"] = http.post(f"{C}/flat/evaluate", json={"mode": "many_to_many", "sample": 300,
                                                                      "seed": 1, "temperature": 10}).json()
        out["evaluate vector"] = http.post(f"{C}/graph/evaluate", json={"vector": queries[0].tolist(),
                                                                        "temperatures": [10]}).json()
        out["roughness"] = http.get(f"{C}/flat/roughness", params={"temperatures": "1,10"}).json()
    return strip(out)


def test_a_collection_restored_on_another_server_answers_exactly_as_the_original(tmp_path, rng):
    base_a, proc_a = start_server(tmp_path / "a")
    try:
        X = _load(base_a, rng)
        want = _answers(base_a, X)
        files = {}
        for name in ("flat", "graph"):
            files[name] = tmp_path / f"{name}.tar"
            done = _cli("snapshot", name, "-o", str(files[name]), url=base_a)
            assert done.returncode == 0 and f"wrote {files[name]}" in done.stdout, done.stdout + done.stderr
            assert "indexes included" in done.stdout
    finally:
        stop_server(proc_a)
    base_b, proc_b = start_server(tmp_path / "b")
    try:
        with Client(base_b) as c:  # another database: the restored internal ids must move past these
            c.create_collection("other", 3, metrics=["euc"])
            c.upsert("other", list(range(500)), rng.normal(size=(500, 3)))
        for name in ("flat", "graph"):
            done = _cli("restore", name, str(files[name]), url=base_b)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"restored {want[f'{name} described']['count']:,} points into '{name}'" in done.stdout
        got = _answers(base_b, X)
        assert got.keys() == want.keys()
        assert [k for k in want if got[k] != want[k]] == []
        assert got["graph euc-hnsw q0 exact=False"]["how"] == "approximate"
    finally:
        stop_server(proc_b)
    base_b, proc_b = start_server(tmp_path / "b")  # restarted: the graph comes from its own snapshot
    try:
        again = _answers(base_b, X, ("graph",))
        assert again and [k for k in again if again[k] != want[k]] == []
    finally:
        stop_server(proc_b)


def _replay(writes: list[tuple[int, str, list[int], int]], upto: int) -> dict[int, int]:
    """id -> the batch number of its last upsert, over the acknowledged writes with op id <= upto."""
    state: dict[int, int] = {}
    for op, kind, ids, b in sorted(writes):
        if op > upto:
            break
        for i in ids:
            if kind == "upsert":
                state[i] = b
            else:
                state.pop(i, None)
    return state


def test_a_snapshot_taken_during_a_write_stream_holds_exactly_a_prefix_of_the_writes(tmp_path):
    base, proc = start_server(tmp_path / "data")
    writes: list[tuple[int, str, list[int], int]] = []
    stop = threading.Event()
    failures: list[str] = []

    def writer() -> None:
        rng = np.random.default_rng(11)
        with httpx.Client(base_url=base, timeout=60) as http:
            b = 0
            while not stop.is_set():
                fresh = list(range(b * 20, b * 20 + 20))
                again = [int(i) for i in rng.integers(0, max(1, b * 20), size=3)] if b else []
                ids = fresh + [i for i in dict.fromkeys(again) if i not in fresh]
                vectors = [[float(b), float(i), 1.0, -1.0] for i in ids]
                r = http.put(f"{C}/s/points", params={"wait": "true" if b % 2 else "false"},
                             json={"ids": ids, "vectors": vectors, "payloads": [{"b": b}] * len(ids)})
                if r.status_code not in (200, 202):
                    failures.append(r.text)
                    return
                writes.append((r.json()["operation_id"], "upsert", ids, b))
                if b % 4 == 3:
                    gone = [int(rng.integers(0, b * 20))]
                    r = http.post(f"{C}/s/points/delete", json={"ids": gone})
                    writes.append((r.json()["operation_id"], "delete", gone, b))
                b += 1

    try:
        with Client(base) as c:
            c.create_collection("s", 4, metrics=["euc", "cos"])
            thread = threading.Thread(target=writer)
            thread.start()
            taken = []
            try:
                for _ in range(3):
                    time.sleep(0.4)
                    acked_before = max((w[0] for w in writes), default=0)
                    info = c.create_snapshot("s")
                    sent_after = len(writes)
                    taken.append((info, acked_before, sent_after))
            finally:
                stop.set()
                thread.join(timeout=60)
            assert failures == [] and len(writes) > 30
            ops = sorted(w[0] for w in writes)
            assert ops == list(range(1, len(ops) + 1))  # every write acknowledged, one sequence
            for j, (info, acked_before, sent_after) in enumerate(taken):
                seq = info["last_operation_id"]
                assert acked_before <= seq, "a write acknowledged before the snapshot is missing from it"
                assert all(w[0] > seq for w in writes[sent_after + 1:]), "a write sent after the snapshot is in it"
                want = _replay(writes, seq)
                assert info["count"] == len(want)
                c.download_snapshot("s", info["name"], tmp_path / f"s{j}.tar")
                c.restore_snapshot(f"s{j}", tmp_path / f"s{j}.tar")
                got, offset = {}, None
                while True:
                    page = c.scroll(f"s{j}", offset, 1000, with_vector=True)
                    for pid, vec, payload in zip(page.ids, page.vectors, page.payloads):
                        got[pid] = payload["b"]
                        assert vec.tolist() == [payload["b"], pid, 1.0, -1.0]
                    offset = page.next_offset
                    if offset is None:
                        break
                assert got == want, f"snapshot {j} at operation {seq} is not the replay of writes 1..{seq}"
                assert c.collection(f"s{j}")["last_operation_id"] == seq
            assert taken[0][0]["last_operation_id"] < taken[-1][0]["last_operation_id"]
    finally:
        stop.set()
        stop_server(proc)


@pytest.fixture(scope="module")
def one_server(tmp_path_factory):
    base, proc = start_server(tmp_path_factory.mktemp("cli") / "data")
    with Client(base) as c:
        c.create_collection("v", 3, metrics=["euc"])
        c.upsert("v", [1, 2, 3], np.eye(3))
    try:
        yield base
    finally:
        stop_server(proc)


def test_the_cli_refuses_a_damaged_archive_in_one_line(one_server, tmp_path):
    path = tmp_path / "v.tar"
    assert _cli("snapshot", "v", "-o", str(path), url=one_server).returncode == 0
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 1
    path.write_bytes(bytes(data))
    done = _cli("restore", "w", str(path), url=one_server)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("logitsearch: 422 Unprocessable Entity: snapshot: ") and "nothing was written" in done.stderr
    assert httpx.get(f"{one_server}{C}/w").status_code == 404


@pytest.mark.parametrize("args,code,says", [
    (["restore", "w", "/nonexistent/v.tar"], 2, "cannot read /nonexistent/v.tar"),
    (["snapshot", "missing", "-o", "x.tar"], 1, "404 Not Found: collection 'missing' not found"),
    (["snapshot", "v", "-o", "/nonexistent/dir/v.tar"], 2, "cannot write /nonexistent/dir/v.tar"),
])
def test_the_snapshot_commands_fail_in_one_line(one_server, args, code, says):
    done = _cli(*args, url=one_server)
    assert done.returncode == code and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
