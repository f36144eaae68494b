"""The warm-up at start (issue 16): every step runs, failures and time-outs are never fatal, and once it is
done no request compiles a numba kernel."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service import warmup
from service.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_issue_16_warmup_runs_every_step_and_says_done():
    w = warmup.Warmup(limit=float("inf"))
    w.run()
    status = w.status()
    assert status["state"] == "done" and status["failed"] == []
    assert status["steps_done"] == status["steps"] == len(warmup.steps()) >= 10
    assert w.finished()


def test_issue_16_a_failing_step_is_logged_and_the_others_still_run(monkeypatch, caplog):
    ran = []

    def boom() -> None:
        raise RuntimeError("no kernel for you")

    monkeypatch.setattr(warmup, "steps", lambda: [("boom", boom), ("after", lambda: ran.append(1))])
    w = warmup.Warmup(limit=60)
    with caplog.at_level(logging.WARNING, logger="logitsearch.warmup"):
        w.run()
    assert w.status()["state"] == "failed" and w.status()["failed"] == ["boom"] and ran == [1]
    assert w.finished() and w.status()["steps_done"] == 2
    assert any(r.getMessage() == "warm-up step failed" for r in caplog.records)


def test_issue_16_past_its_limit_the_warmup_stops_holding_readiness_and_runs_no_further_step(monkeypatch, caplog):
    gate, ran = threading.Event(), []
    monkeypatch.setattr(warmup, "steps", lambda: [("slow", gate.wait), ("next", lambda: ran.append(1))])
    w = warmup.Warmup(limit=0.3)
    worker = threading.Thread(target=w.run)
    with caplog.at_level(logging.WARNING, logger="logitsearch.warmup"):
        worker.start()
        assert not w.finished() and w.status()["state"] == "running"
        time.sleep(0.5)
        assert w.finished() and w.status()["state"] == "timed_out"
        gate.set()
        worker.join(timeout=10)
    assert ran == [] and w.status()["state"] == "timed_out"
    assert sum(r.getMessage().startswith("warm-up timed out") for r in caplog.records) == 1


def test_issue_16_zero_seconds_turns_the_warmup_off():
    w = warmup.start(0)
    assert w.finished() and w.status()["state"] == "off"
    assert load_settings({}, environ={"LOGITSEARCH_WARMUP_SECONDS": "0"}).warmup_seconds == 0
    assert load_settings({}, environ={}).warmup_seconds > 0


_NO_NEW_SIGNATURES = r"""
import json, sys, time, base64
import numpy as np
from numba.core.dispatcher import Dispatcher
from fastapi.testclient import TestClient
import core.kernels, indexes.exact
from service.app import create_app
from service.settings import load_settings
sys.path.insert(0, sys.argv[2])
from benchmarks.first_query import NAME, kinds

def signatures():
    return {f"{m.__name__}.{k}": [str(s) for s in v.signatures] for m in (core.kernels, indexes.exact)
            for k, v in vars(m).items() if isinstance(v, Dispatcher)}

app = create_app(load_settings({"data_dir": sys.argv[1]}, environ={}))
with TestClient(app) as c:
    deadline = time.monotonic() + 600
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = signatures()
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((6000, 64)) * 3).astype("<f4")
    c.put(f"/v1/collections/{NAME}", json={"dim": 64, "metrics": ["euc", "cos", "tri", "ced"],
          "payload_index": ["label"]}).raise_for_status()
    c.put(f"/v1/collections/{NAME}/points", json={"ids": list(range(6000)),
          "vectors_b64": base64.b64encode(X.tobytes()).decode(),
          "payloads": [{"label": i % 100} for i in range(6000)]}).raise_for_status()
    c.post(f"/v1/collections/{NAME}/indexes", json={"metric": "euc", "kind": "hnsw"}).raise_for_status()
    while any(ix["status"] != "ready" for ix in c.get(f"/v1/collections/{NAME}/indexes").json()["indexes"]):
        time.sleep(0.05)
    todo = kinds(X[1].tolist(), X[100:132].tolist())
    for kind, method, path, body in todo:
        r = c.request(method, path, json=body)
        assert r.status_code == 200, (kind, r.text[:300])
    after = signatures()
print(json.dumps({"before": before, "after": after, "kinds": len(todo)}))
"""


@pytest.mark.timeout(900)
def test_issue_16_after_the_warmup_no_request_of_any_kind_compiles_a_kernel(tmp_path):
    # a process of its own: this one may have compiled kernels already (the on-disk cache keeps it quick)
    proc = subprocess.run([sys.executable, "-c", _NO_NEW_SIGNATURES, str(tmp_path / "data"), str(REPO)],
                          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kinds"] >= 20
    new = {k: sorted(set(v) - set(out["before"].get(k, []))) for k, v in out["after"].items()}
    assert {k: v for k, v in new.items() if v} == {}
    # and the warm-up compiled the scan and re-rank kernels on both sides of their thresholds
    for name in ("_scan", "_scan_serial", "_pairs", "_pairs_serial", "all_logit_rows"):
        assert any(k.endswith("." + name) and v for k, v in out["before"].items()), name
