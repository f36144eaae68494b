"""Filters against a real server (issue 15): after upserts that replace payloads, deletes by id and by
filter and a bulk ingest with JSON Lines payloads, every filter selects what a plain-Python
evaluation over all stored payloads selects (scroll and search, 12k points, so the filtered flat path
runs above FILTER_SCAN_ROWS); the same after a graceful restart and after kill -9."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import numpy as np

from tests.e2e.conftest import stop_server
from tests.service.test_filters import matches

C = "/v1/collections/photos"
D = 16
N = 12_000
FILTERS: list[dict[str, Any]] = [
    {"must": [{"key": "label", "match": {"value": "cat"}}]},
    {"must": [{"key": "label", "match": {"any": ["dog", "owl"]}}], "must_not": [{"key": "score", "range": {"gte": 0.5}}]},
    {"should": [{"key": "tags", "match": {"value": "b"}}, {"is_empty": {"key": "label"}}]},
    {"must_not": [{"key": "label", "match": {"value": "cat"}}]},
    {"must": [{"key": "photo.key", "match": {"value": "ph-3"}}]},
]


def _all_points(base: str) -> list[dict[str, Any]]:
    out, offset = [], None
    while True:
        page = httpx.post(f"{base}{C}/points/scroll", json={"limit": 10_000, "offset": offset}, timeout=60).json()
        out += page["points"]
        offset = page["next_offset"]
        if offset is None:
            return out


def _check(base: str) -> None:
    points = _all_points(base)
    for f in FILTERS:
        want = [p["id"] for p in points if matches(f, p["id"], p["payload"])]
        got = httpx.post(f"{base}{C}/points/scroll", json={"filter": f, "limit": 10_000}, timeout=60).json()
        assert [p["id"] for p in got["points"]] == want, f
        r = httpx.post(f"{base}{C}/search", json={"vector": [0.0] * D, "k": 50, "metric": "tri",
                                                  "temperature": 10, "filter": f}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["filtered"]["matched"] == len(want)
        assert {h["id"] for h in body["hits"]} <= set(want) and len(body["hits"]) == min(50, len(want))


def test_the_payload_index_holds_through_writes_and_restarts(tmp_path, servers, rng):
    data = tmp_path / "data"
    base, proc = servers(data)
    r = httpx.put(f"{base}{C}", json={"dim": D, "metrics": ["euc", "tri"], "temperatures": [10],
                                      "payload_index": ["label", "score", "tags", "photo.key"]})
    assert r.status_code == 201, r.text
    labels = ["cat", "dog", "fox", "owl"]
    X = rng.normal(size=(N, D)).astype(np.float32)

    def payload(i: int) -> dict[str, Any] | None:
        return None if i % 11 == 0 else {"label": labels[i % 4], "score": (i % 10) / 10, "tags": ["a", "b"][: i % 3],
                                         "photo": {"key": f"ph-{i % 9}"}}

    buf = io.BytesIO()
    np.save(buf, X)
    lines = "\n".join("" if payload(i) is None else json.dumps(payload(i)) for i in range(N))
    r = httpx.post(f"{base}{C}/points/bulk", files={"file": ("x.npy", buf.getvalue()), "payloads": ("p.jsonl", lines)},
                   data={"start": "0"}, timeout=120)
    assert r.status_code == 200, r.text
    # replace payloads of some points (one to none), delete some by id and some by filter
    r = httpx.put(f"{base}{C}/points", json={"ids": list(range(100)), "vectors": X[:100].tolist(),
                                             "payloads": [{"label": "emu"} if i % 2 else None for i in range(100)]})
    assert r.status_code == 200, r.text
    assert httpx.post(f"{base}{C}/points/delete", json={"ids": list(range(100, 150))}).json()["count"] == 50
    r = httpx.post(f"{base}{C}/points/delete", json={"filter": {"must": [{"key": "label", "match": {"value": "fox"}},
                                                                         {"key": "score", "range": {"lt": 0.3}}]}})
    assert r.status_code == 200 and r.json()["count"] > 0, r.text
    _check(base)
    before = _all_points(base)
    stop_server(proc)
    base, proc = servers(data)
    _check(base)
    assert _all_points(base) == before
    # a write acknowledged just before kill -9 is in the index after the restart
    r = httpx.put(f"{base}{C}/points", json={"ids": ["late"], "vectors": [X[0].tolist()],
                                             "payloads": [{"label": "cat", "photo": {"key": "ph-3"}}]})
    assert r.status_code == 200, r.text
    proc.kill()
    proc.wait(timeout=10)
    base, proc = servers(data)
    _check(base)
    got = httpx.post(f"{base}{C}/points/scroll", json={"filter": FILTERS[4], "limit": 10_000}).json()["points"]
    assert got[-1]["id"] == "late"
