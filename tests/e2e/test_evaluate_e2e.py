"""The evaluation endpoint end to end (issue 5): a real uvicorn server on 127.0.0.1, raw httpx, the
Python client (sync and async), and the `logitsearch evaluate` command, including the PNG."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from matplotlib.image import imread
from scipy.stats import spearmanr

from service.client import ApiError, AsyncClient, Client
from tests.core.test_evaluation import formulas
from tests.e2e.conftest import REPO, start_server, stop_server

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N, D = 300, 48


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, proc = start_server(tmp_path_factory.mktemp("evaluate-e2e") / "data")
    try:
        yield base
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def synthetic(server):
    rng = np.random.default_rng(8)
    X = (rng.normal(0, 3, size=(N, D)) + rng.normal(0, 2, size=(N, 1))).astype(np.float32)
    ids = [f"p{i}" for i in range(N)]
    with Client(server) as c:
        c.create_collection("syn", D)
        c.upsert("syn", ids, X)
    return X, ids


def test_evaluate_and_the_png_over_http(server, synthetic):
    X, _ = synthetic
    with httpx.Client(base_url=server, timeout=120) as http:
        r = http.post("/v1/collections/syn/evaluate", json={"id": "p7", "temperatures": [1, 10]})
        assert r.status_code == 200, r.text
        for res in r.json()["results"]:
            want = formulas(X[7], np.delete(X, 7, axis=0), res["temperature"])
            for m in ("euc", "cos", "tri", "jsd", "hellinger"):
                expected = spearmanr(want["ced"], want[m]).statistic
                assert res["rho"][m]["value"] == pytest.approx(expected, abs=1e-9)
            assert res["rho"]["kld"]["value"] == 1.0 and res["n"] == N - 1
        png = http.post("/v1/collections/syn/evaluate/shepard.png",
                        json={"id": "p7", "temperature": 10, "metric": "tri", "width": 500, "height": 400})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content[:8] == PNG_SIGNATURE
        assert imread(io.BytesIO(png.content)).shape[:2] == (400, 500)
        bad = http.post("/v1/collections/syn/evaluate", json={"id": "p7", "temperature": -1})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "temperature"


def test_the_python_client_sync_and_async(server, synthetic, tmp_path):
    X, _ = synthetic
    with Client(server) as c:
        by_vector = c.evaluate("syn", X[3], temperatures=[2.0], metrics=["tri", "euc"])
        assert by_vector["query"] == {"vector": D} and by_vector["results"][0]["n"] == N
        summary = c.evaluate("syn", queries=3, queries_seed=1, temperatures=10.0)
        assert len(summary["query"]["ids"]) == 3 and summary["summary"][0]["n_queries"] == 3
        guide = c.roughness("syn", target=1e-4, temperatures=[1.0])
        assert guide["target"]["reachable"] and guide["temperatures"][0]["temperature"] == 1.0
        out = tmp_path / "shepard.png"
        png = c.shepard("syn", id="p3", temperature=1.0, metric="cos", path=out)
        assert out.read_bytes() == png and png[:8] == PNG_SIGNATURE
        with pytest.raises(ApiError) as err:
            c.evaluate("syn", id="nobody", temperatures=1.0)
        assert err.value.status == 404 and "nobody" in str(err.value)
        by_id = c.evaluate("syn", id="p3", temperatures=[2.0], metrics=["tri", "euc"])

    async def go() -> dict:
        async with AsyncClient(server) as ac:
            return await ac.evaluate("syn", id="p3", temperatures=[2.0], metrics=["tri", "euc"])

    assert asyncio.run(go())["results"][0]["rho"] == by_id["results"][0]["rho"]


def test_the_cli_prints_the_table_and_writes_the_plots(server, synthetic, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "evaluate", "syn", "--url", server, *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    run = cli("--id", "p11", "-t", "1", "10", "--plot", str(tmp_path / "figs"), "--metric", "euc")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "t=1", "t=10"]
    for m in ("euc", "cos", "tri", "jsd", "hellinger", "kld"):
        row = next(line for line in lines if line.split()[:1] == [m])
        assert all(-1.0 <= float(v) <= 1.0 for v in row.split()[1:])
    assert any(line.startswith("at t=10,") for line in lines)
    for name, size in (("sweep", (500, 900)), ("roughness", (500, 800)), ("shepard", (340, 1200))):
        png = Path(tmp_path / "figs" / f"{name}.png").read_bytes()  # --plot DIR (issue 14)
        assert png[:8] == PNG_SIGNATURE and imread(io.BytesIO(png)).shape[:2] == size, name
    assert "wrote " + str(tmp_path / "figs" / "shepard.png") + ": Shepard diagrams of CED vs euc" in run.stdout
    bad = cli("--id", "nobody", "-t", "1")
    assert bad.returncode == 1 and "point 'nobody' not found" in bad.stderr


def test_imagenet_over_http_tri_stands_in_for_ced_at_t_10(server, imagenet):
    X = np.ascontiguousarray(imagenet[0][:2000])
    with Client(server) as c:
        c.create_collection("imagenet", X.shape[1])
        c.upload_npy("imagenet", X, ids=list(imagenet[1][:2000]))
        res = c.evaluate("imagenet", queries=3, queries_seed=4, temperatures=[1.0, 10.0], metrics=["tri", "euc", "cos"])
    at = {s["temperature"]: s for s in res["summary"]}
    assert at[10.0]["rho"]["tri"]["min"] >= 0.99 and at[10.0]["recommendation"]["tri_exact"] is True
    assert at[1.0]["rho"]["tri"]["max"] < at[10.0]["rho"]["tri"]["min"]
    assert at[10.0]["recommendation"]["euc_beats_cos"] is True
