"""A sharded search judges exactness globally, and may answer from the live shards only (issue 13).

Each shard answers its own top k from one certificate attempt, with the bound of what it left out;
the coordinator merges and judges every bound against the merged k-th distance, and asks a second
round (8 k', then a scan) only of the shards whose bound fails. The answers must be those of one
shard and of float64 brute force (tri and ced at t = 100 and 1000 too, where float32 loses
neighbours). A search with `allow_partial` while a shard's process is SIGKILLed (and kept down)
answers from the live shards, flagged, and equals brute force over their points.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexes.knn import IndexSet, IndexSpec
from service.coordinator import Coordinator
from service.ray_shards import shard_of
from tests.indexes.brute import brute
from tests.ray.conftest import ids_by_shard, ray_client

C = "/v1/collections"
METRICS = ["euc", "cos", "tri", "ced"]
TEMPS = [1.0, 100.0, 1000.0]
#: shells around the uniform query: A nearest (on shard 0), B (shard 1) beyond twice A's squared
#: Hellinger distance, C (shard 2) k points beyond twice A's and a far shell beyond twice theirs
SHELL_D = 32
SHELLS = {"A": (250, 2.0), "B": (250, 3.2), "C near": (5, 3.4), "C far": (255, 5.6)}


def _create(client: Any, name: str, dim: int, shards: int | None, metrics: list[str], temps: list[float]) -> None:
    body: dict[str, Any] = {"dim": dim, "metrics": metrics, "temperatures": temps}
    if shards is not None:
        body["shards"] = shards
    r = client.put(f"{C}/{name}", json=body)
    assert r.status_code == 201, r.text


def _upsert(client: Any, name: str, ids: list[Any], X: np.ndarray) -> None:
    for s in range(0, len(ids), 500):
        r = client.put(f"{C}/{name}/points", json={"ids": ids[s:s + 500], "vectors": X[s:s + 500].astype(float).tolist()})
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text


def _shells() -> tuple[list[list[Any]], np.ndarray, list[str]]:
    """Rows s (e_i - e_j) around the uniform query 0, each (i, j) once: every row of a shell is at
    the same distance from 0 in every metric, at every temperature. (ids per shard, rows, shell)."""
    pairs = [(i, j) for i in range(SHELL_D) for j in range(SHELL_D) if i != j]
    rows, shell = [], []
    for name, (n, s) in SHELLS.items():
        for _ in range(n):
            i, j = pairs.pop()
            x = np.zeros(SHELL_D)
            x[i], x[j] = s, -s
            rows.append(x)
            shell.append(name)
    owned = ids_by_shard([250, 250, 260], 3)
    return owned, np.array(rows, dtype=np.float32), shell


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    with ray_client(tmp_path_factory.mktemp("data")) as client:
        rng = np.random.default_rng(130)
        # uneven: shard 0 above k' (its certificate is tried), shard 1 fewer than k, shard 2 none
        owned = ids_by_shard([600, 3, 0], 3)
        ids = [e for part in owned for e in part]
        ids = [ids[i] for i in rng.permutation(len(ids))]
        X = (rng.normal(size=(len(ids), 16)) * 4).astype(np.float32)
        for name, shards in (("u1", None), ("u3", 3)):
            _create(client, name, 16, shards, METRICS, TEMPS)
            _upsert(client, name, ids, X)
        sh_owned, S, shell = _shells()
        sh_ids = [e for part in sh_owned for e in part]
        for name, shards in (("g1", None), ("g3", 3)):
            _create(client, name, SHELL_D, shards, ["euc", "tri"], [100.0, 1000.0])
            _upsert(client, name, sh_ids, S)
            r = client.post(f"{C}/{name}/indexes", json={"metric": "euc", "kind": "hnsw", "params": {"M": 8}})
            assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while any(i["status"] != "ready" for n in ("g1", "g3") for i in client.get(f"{C}/{n}/indexes").json()["indexes"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield client, (ids, X), (sh_ids, S, shell)


def _assert_brute(hits: list[dict[str, Any]], metric: str, q: np.ndarray, ids: list[Any], X: np.ndarray, k: int,
                  t: float | None, exclude: Any = None) -> None:
    """The hits are float64 brute force's top k (ties may swap ids): the same sorted distances, and
    each id at its own true distance."""
    d = brute(metric, q, X.astype(np.float64), t)
    if exclude is not None:
        d[ids.index(exclude)] = np.inf
    want = np.sort(d)[:min(k, int(np.isfinite(d).sum()))]
    got = np.array([h["distance"] for h in hits])
    assert got.shape == want.shape, (len(hits), want.size)
    scale = float(np.abs(want).max(initial=0.0))
    atol = 1e-15 + 1e-12 * scale  # a self-match's 1 - cos is a few ulps of 1 either way
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=atol)
    at = {e: r for r, e in enumerate(ids)}
    np.testing.assert_allclose(d[[at[h["id"]] for h in hits]], got, rtol=1e-9, atol=atol)
    assert len({str(h["id"]) + type(h["id"]).__name__ for h in hits}) == len(hits)


def _searches(client: Any, name: str, searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = client.post(f"{C}/{name}/search/batch", json={"searches": searches})
    assert r.status_code == 200, r.text
    return r.json()["results"]  # type: ignore[no-any-return]


def test_uneven_shards_answer_as_one_shard_and_as_brute_force_at_every_temperature_issue_13(served, rng):
    client, (ids, X), _ = served
    coord: Coordinator = client.app.state.backend
    sizes = [s.points() for s in coord._members["u3"].shards]
    assert sizes[0] > 200 and 0 < sizes[1] < 5 and sizes[2] == 0
    queries = [X[7] + rng.normal(size=16).astype(np.float32), rng.normal(size=16) * 4, X[100] * 1.5]
    by_id = [e for e in ids if shard_of(e, 3) == 1][:1] + [ids[3]]
    for metric in METRICS:
        for t in (TEMPS if metric in ("tri", "ced") else [None]):
            at = {"metric": metric, **({"temperature": t} if t else {})}
            for k in (1, 5, 20):
                searches = [{"vector": np.asarray(q, dtype=np.float64).tolist(), "k": k, **at} for q in queries]
                searches += [{"id": e, "k": k, **at} for e in by_id]
                one, three = _searches(client, "u1", searches), _searches(client, "u3", searches)
                for s, a, b in zip(searches, one, three):
                    assert [h["id"] for h in a["hits"]] == [h["id"] for h in b["hits"]], (metric, t, k)
                    np.testing.assert_allclose([h["distance"] for h in b["hits"]],
                                               [h["distance"] for h in a["hits"]], rtol=1e-12, atol=0)
                    q = X[ids.index(s["id"])] if "id" in s else np.asarray(s["vector"])
                    _assert_brute(b["hits"], metric, np.asarray(q, dtype=np.float64), ids, X, k, t, s.get("id"))
                    # a shard of 3 points, and an empty one, answer by scanning them
                    assert b["how"] == "scanned" and b["kind"] == "flat", b["how"]


def _local(rows: np.ndarray, metric: str, t: float, q: np.ndarray, k: int, stage: str) -> Any:
    """One shard's rows on their own: what its own certificate says."""
    iset = IndexSet(rows.shape[1], [IndexSpec(metric, t)])  # type: ignore[arg-type]
    iset.upsert(np.arange(rows.shape[0]), rows, 1)
    return iset.search(IndexSpec(metric, t).key, q[None, :], k, stage=stage)[0]  # type: ignore[arg-type]


def _second_rounds(coord: Coordinator, name: str) -> list[int]:
    return [s.searches().get("second", 0) for s in coord._members[name].shards]


@pytest.mark.parametrize("t", [100.0, 1000.0])
def test_only_the_shard_whose_bound_fails_the_merged_kth_gets_a_second_round_issue_13(served, t):
    """Shard 0 holds shell A (the nearest, more than k' rows at one distance): its bound cannot beat
    the merged k-th, which is its own. Shard 1 holds shell B: its own certificate fails too, but its
    bound beats the merged k-th (A's), so it is spared. Shard 2's own certificate passes."""
    client, _, (ids, S, shell) = served
    coord: Coordinator = client.app.state.backend
    k = 5
    q = np.zeros(SHELL_D)
    owner = np.array([shard_of(e, 3) for e in ids])
    groups = {name: np.array(shell) == name for name in SHELLS}
    assert all(owner[groups["A"]] == 0) and all(owner[groups["B"]] == 1) and all(owner[groups["C far"]] == 2)
    # what each shard's own certificate says, from its rows alone
    assert _local(S[owner == 0], "tri", t, q, k, "first").how == "unproven"
    assert _local(S[owner == 1], "tri", t, q, k, "first").how == "unproven"
    assert _local(S[owner == 1], "tri", t, q, k, "all").how == "scanned"  # alone, shard 1 would scan
    assert _local(S[owner == 2], "tri", t, q, k, "first").how == "certified"

    before = _second_rounds(coord, "g3")
    body = {"vector": q.tolist(), "k": k, "metric": "tri", "temperature": t}
    three = client.post(f"{C}/g3/search", json=body).json()
    assert np.subtract(_second_rounds(coord, "g3"), before).tolist() == [1, 0, 0]
    one = client.post(f"{C}/g1/search", json=body).json()
    assert [h["id"] for h in three["hits"]] == [h["id"] for h in one["hits"]]
    np.testing.assert_allclose([h["distance"] for h in three["hits"]], [h["distance"] for h in one["hits"]],
                               rtol=1e-12, atol=0)
    _assert_brute(three["hits"], "tri", q, ids, S, k, t)
    assert {shell[ids.index(h["id"])] for h in three["hits"]} == {"A"}
    assert three["how"] == "scanned"  # shard 0 answered its second round by a scan (250 rows < 8 k')


def test_how_is_the_weakest_of_the_shards_issue_13(served, rng):
    """certified when every shard's bound beats the merged k-th, scanned when one shard scanned,
    approximate when the shards searched hnsw."""
    client, _, (ids, S, _) = served
    coord: Coordinator = client.app.state.backend
    before = _second_rounds(coord, "g3")
    near = [S[i] + rng.normal(size=SHELL_D).astype(np.float32) * 0.3 for i in (3, 300, 700)]
    searches = [{"vector": np.asarray(v, dtype=np.float64).tolist(), "k": 5, "metric": "euc"} for v in near]
    searches.append({"vector": np.zeros(SHELL_D).tolist(), "k": 5, "metric": "euc", "kind": "hnsw"})
    searches.append({"vector": np.zeros(SHELL_D).tolist(), "k": 5, "metric": "euc", "kind": "hnsw", "exact": True})
    three, one = _searches(client, "g3", searches), _searches(client, "g1", searches)
    assert [r["how"] for r in three] == ["certified"] * 3 + ["approximate", "scanned"]
    assert _second_rounds(coord, "g3") == before
    for s, a, b in zip(searches, one, three):
        if b["how"] != "approximate":
            _assert_brute(b["hits"], "euc", np.asarray(s["vector"]), ids, S, 5, None)
            assert [h["id"] for h in a["hits"]] == [h["id"] for h in b["hits"]]


def _state(ray: Any, handle: Any) -> dict[str, Any]:
    return ray._private.state.actors(actor_id=handle._actor_id.hex())  # type: ignore[no-any-return]


def _title(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class _KeptDown:
    """A shard actor's process SIGKILLed and kept down: Ray's restart of it is held (the restarted
    process, named by Ray's actor table while it is RESTARTING and titled `ray::ShardActor...`,
    gets SIGSTOP; one already ALIVE when seen is SIGKILLed again). Calls to it wait meanwhile.
    `release` lets it go on (SIGCONT)."""

    def __init__(self, ray: Any, handle: Any, pid: int) -> None:
        self.ray, self.handle = ray, handle
        self.killed, self.stopped = {pid}, set()
        self._stop = threading.Event()
        os.kill(pid, signal.SIGKILL)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            st = _state(self.ray, self.handle)
            pid = st.get("Pid") or 0
            if pid and pid not in self.killed | self.stopped and _title(pid).startswith(b"ray::ShardActor"):
                try:
                    if st["State"] == "ALIVE":
                        os.kill(pid, signal.SIGKILL)
                        self.killed.add(pid)
                    else:
                        os.kill(pid, signal.SIGSTOP)
                        self.stopped.add(pid)
                except ProcessLookupError:  # gone meanwhile: Ray starts another
                    pass
            time.sleep(0.005)

    def held(self) -> tuple[int, int] | None:
        """(restarts, pid) while the restarted process is stopped, else None: in its constructor
        (RESTARTING), or just after it, before Ray recorded it ALIVE (it answers no call either)."""
        st = _state(self.ray, self.handle)
        return (st["NumRestarts"], st["Pid"]) if st["State"] != "DEAD" and st["Pid"] in self.stopped else None

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for pid in self.stopped:
            os.kill(pid, signal.SIGCONT)


def test_allow_partial_answers_from_the_live_shards_while_one_is_killed_issue_13(ray_local, tmp_path, rng,
                                                                                monkeypatch):
    """The shard's process is SIGKILLed and kept down (_KeptDown). Without allow_partial a search is
    a 503 naming the shard; with it, a 200 flagged partial whose hits are brute force over the live
    shards' points (the fast lane and the FastAPI route alike); once it is back, the full answer."""
    from service import ray_shards

    owned = ids_by_shard([30, 30, 30], 3)
    ids = [e for part in owned for e in part]
    X = rng.normal(size=(len(ids), 8)).astype(np.float32) * 3
    with ray_client(Path(tmp_path)) as client:
        for name, shards in (("p3", 3), ("p1", None)):
            _create(client, name, 8, shards, ["euc", "tri"], [10.0])
            _upsert(client, name, ids, X)
        coord: Coordinator = client.app.state.backend
        victim = coord._members["p3"].shards[1]
        pid, label = victim.ping()
        assert label == "p3/shard-1" and _title(pid).startswith(b"ray::ShardActor")
        q = rng.normal(size=8) * 3
        body = {"vector": q.tolist(), "k": 10, "metric": "tri", "temperature": 10.0}
        live = [r for r, e in enumerate(ids) if shard_of(e, 3) != 1]
        before = client.post(f"{C}/p3/search", json=body)  # also warms the shards' kernels up
        assert before.status_code == 200 and "partial" not in before.json(), before.text
        _assert_brute(before.json()["hits"], "tri", q, ids, X, 10, 10.0)
        # short waits for a shard that does not answer (the defaults: 120 s and 5 s)
        monkeypatch.setattr(ray_shards, "CALL_TIMEOUT", 4.0)
        monkeypatch.setattr(ray_shards, "PARTIAL_WAIT", 2.0)
        down = _KeptDown(ray_local, victim.handle, pid)
        try:
            deadline = time.monotonic() + 60
            while (held := down.held()) is None:
                st = _state(ray_local, victim.handle)
                assert time.monotonic() < deadline, (st["State"], st["Pid"], _title(st["Pid"]), down.killed, down.stopped)
                time.sleep(0.02)
            r = client.post(f"{C}/p3/search", json=body)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert "p3/shard-1" in r.json()["detail"]
            part = client.post(f"{C}/p3/search", json={**body, "allow_partial": True})
            assert part.status_code == 200, part.text
            got = part.json()
            assert got["partial"] is True and got["missing_shards"] == ["p3/shard-1"]
            _assert_brute(got["hits"], "tri", q, [ids[r] for r in live], X[live], 10, 10.0)
            # the FastAPI route (the fast lane passes a chunked body on) answers the same
            slow = client.post(f"{C}/p3/search", content=iter([json.dumps({**body, "allow_partial": True}).encode()]),
                               headers={"content-type": "application/json"})
            assert slow.status_code == 200 and _untimed(slow.json()) == _untimed(got)
            batch = client.post(f"{C}/p3/search/batch", json={"searches": [body, {**body, "k": 3}], "allow_partial": True})
            assert batch.status_code == 200, batch.text
            b = batch.json()
            assert b["partial"] is True and b["missing_shards"] == ["p3/shard-1"]
            assert [r["missing_shards"] for r in b["results"]] == [["p3/shard-1"]] * 2
            assert b["results"][0]["hits"] == got["hits"] and b["results"][1]["hits"] == got["hits"][:3]
            bad = client.post(f"{C}/p3/search/batch", json={"searches": [{**body, "allow_partial": True}]})
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "searches.0.allow_partial"
            # an unsharded collection is never partial
            whole = client.post(f"{C}/p1/search", json={**body, "allow_partial": True}).json()
            assert "partial" not in whole and len(whole["hits"]) == 10
            assert down.held() == held  # the same restart held all along: the shard was down throughout
        finally:
            down.release()
        monkeypatch.undo()
        deadline = time.monotonic() + 60
        while True:
            try:
                new_pid, _ = victim.ping(timeout=2)
                break
            except Exception:  # noqa: BLE001 -- still restarting
                assert time.monotonic() < deadline, "the shard did not come back"
                time.sleep(0.1)
        assert new_pid not in down.killed
        for flag in (True, False):
            r = client.post(f"{C}/p3/search", json={**body, "allow_partial": flag})
            assert r.status_code == 200 and "partial" not in r.json() and "missing_shards" not in r.json(), r.text
            assert r.json()["hits"] == whole["hits"] == before.json()["hits"]


def _untimed(body: Any) -> Any:
    return {k: v for k, v in body.items() if k != "took_ms"}
