"""Issue 14: the command line without tracebacks. Each mistake a user makes with files, rows and
flags, run as a subprocess against a real server, ends in ONE line on stderr naming the file or
flag and the fix, with exit status 2; lists take `1,10` and `1 10` alike; `search --json` prints
the server's JSON; `collections` shows every indexed temperature; `report` writes the page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client import Client
from tests.e2e.conftest import REPO

EXAMPLE = REPO / "examples" / "imagenet_effnet_200.npy"
EXAMPLE_IDS = REPO / "examples" / "imagenet_effnet_200.txt"
EXAMPLE_PAYLOADS = REPO / "examples" / "imagenet_effnet_200.payloads.jsonl"


def cli(url: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args, "--url", url], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli-files")
    X = np.load(EXAMPLE)
    np.save(d / "three.npy", X[:3])
    np.save(d / "ints.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    np.save(d / "d999.npy", X[0, :999])
    (d / "text.npy").write_text("0.1 0.2 0.3\n")
    return d


@pytest.fixture(scope="module")
def collection(shared_server) -> str:
    with Client(shared_server) as c:
        c.create_collection("cli-msg", 1000, metrics=["euc", "tri"], temperatures=[10])
        ids = EXAMPLE_IDS.read_text().split()
        payloads = [json.loads(line) for line in EXAMPLE_PAYLOADS.read_text().splitlines()]
        c.upload_npy("cli-msg", EXAMPLE, ids=ids, payloads=payloads)
    return "cli-msg"


MISTAKES = [
    # (argv with {d} for the files' directory, what the one line must say)
    (["search", "cli-msg", "--vector-file", "{d}/missing.npy"],
     ["--vector-file", "missing.npy", "no such file"]),
    (["ingest", "cli-msg", str(EXAMPLE), "--ids", "{d}/missing.txt"],
     ["--ids", "missing.txt", "no such file", "one id per line"]),
    (["search", "cli-msg", "--vector-file", "{d}/three.npy", "--row", "9"],
     ["--row 9", "three.npy has 3 rows", "--row 0 to 2"]),
    (["search", "cli-msg", "--vector-file", "{d}/text.npy"],
     ["--vector-file", "text.npy", "not a .npy file", "numpy.save"]),
    (["ingest", "cli-new-int", "{d}/ints.npy", "--create"],
     ["ints.npy", "int64", "float32 or float64", "astype(np.float32)"]),
    (["search", "cli-msg", "--vector-file", "{d}/d999.npy"],
     ["--vector-file", "d999.npy", "999 numbers", "dim 1000"]),
    (["ingest", "cli-msg", "{d}/ints.npy"],
     ["ints.npy", "int64", "astype(np.float32)"]),
    (["ingest", "cli-nowhere", "{d}/three.npy"],
     ["'cli-nowhere' does not exist", "--create"]),
    (["evaluate", "cli-msg", "--id", "x", "-t", "1,hot"],
     ["-t", "'hot'", "-t 1 10 100", "-t 1,10,100", "-t auto"]),
    (["evaluate", "cli-msg", "--id", "x", "--plot", "{d}/fig.png"],
     ["--plot", "fig.png", "give a directory"]),
]


@pytest.mark.parametrize(("argv", "says"), MISTAKES, ids=[" ".join(a[:2] + a[2:3]) + f"-{i}"
                                                         for i, (a, _) in enumerate(MISTAKES)])
def test_each_mistake_is_one_line_naming_the_file_or_flag_and_the_fix(shared_server, collection, files, argv, says):
    run = cli(shared_server, *[a.format(d=files) for a in argv])
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("logitsearch: "), run.stderr
    for text in says:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in run.stderr + run.stdout


def test_the_int64_file_is_refused_before_the_collection_is_created(shared_server, files):
    assert cli(shared_server, "ingest", "cli-int64", str(files / "ints.npy"), "--create").returncode == 2
    assert httpx.get(f"{shared_server}/v1/collections/cli-int64").status_code == 404


def test_lists_take_commas_or_spaces_alike(shared_server, collection, tmp_path):
    a = cli(shared_server, "ingest", "cli-list-a", str(EXAMPLE), "--create", "--metrics", "euc,tri",
            "--temperatures", "1,10", "--quiet")
    b = cli(shared_server, "ingest", "cli-list-b", str(EXAMPLE), "--create", "--metrics", "euc", "tri",
            "--temperatures", "1", "10", "--quiet")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    with Client(shared_server) as c:
        ca, cb = c.collection("cli-list-a"), c.collection("cli-list-b")
    assert (ca["metrics"], ca["temperatures"]) == (cb["metrics"], cb["temperatures"]) == (["euc", "tri"], [1.0, 10.0])
    spaced = cli(shared_server, "evaluate", collection, "--id", "7", "-t", "1", "10", "--metrics", "tri", "euc",
                 "--json")
    commas = cli(shared_server, "evaluate", collection, "--id", "7", "-t", "1,10", "--metrics", "tri,euc", "--json")
    assert spaced.returncode == commas.returncode == 1  # no point 7: the server says so (exit 1), in one place
    ident = EXAMPLE_IDS.read_text().split()[7]
    spaced = cli(shared_server, "evaluate", collection, "--id", ident, "-t", "1", "10", "--metrics", "tri", "euc",
                 "--json")
    commas = cli(shared_server, "evaluate", collection, "--id", ident, "-t", "1,10", "--metrics", "tri,euc", "--json")
    x, y = json.loads(spaced.stdout), json.loads(commas.stdout)
    assert x["metrics"] == y["metrics"] == ["tri", "euc"]
    assert [r["temperature"] for r in x["results"]] == [r["temperature"] for r in y["results"]] == [1.0, 10.0]
    assert [r["rho"] for r in x["results"]] == [r["rho"] for r in y["results"]]


def test_search_json_is_the_servers_answer(shared_server, collection):
    ident = EXAMPLE_IDS.read_text().split()[3]
    run = cli(shared_server, "search", collection, "--id", ident, "--metric", "tri", "-t", "10", "-k", "4", "--json")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    want = httpx.post(f"{shared_server}/v1/collections/{collection}/search",
                      json={"id": ident, "metric": "tri", "temperature": 10, "k": 4}).json()
    got.pop("took_ms"), want.pop("took_ms")
    assert got == want and got["hits"][0]["payload"]["photo"]


def test_collections_shows_every_indexed_temperature(shared_server, collection):
    r = httpx.post(f"{shared_server}/v1/collections/{collection}/indexes", json={"metric": "tri", "temperature": 1})
    assert r.status_code in (200, 202), r.text
    with Client(shared_server) as c:
        for _ in range(300):
            if all(i["status"] == "ready" for i in c.indexes(collection)):
                break
        assert c.collection(collection)["temperatures"] == [1.0, 10.0]
    table = cli(shared_server, "collections").stdout.splitlines()
    row = next(line.split() for line in table if line.startswith(f"{collection} "))
    assert row[4] == "1,10"


def test_evaluate_auto_with_labels_and_the_report_command(shared_server, collection, tmp_path):
    run = cli(shared_server, "evaluate", collection, "--queries", "5", "-t", "auto", "--labels", "photo",
              "--plot", str(tmp_path / "plots"))
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "recommended: search with" in out and "tri reaches rho >= 0.99 from t = " in out
    assert any(line.startswith("agree@10 tri") for line in out.splitlines())
    header = next(line for line in out.splitlines() if line.startswith("metric")).split()
    assert len(header) == 1 + 8 and all(h.startswith("t=") for h in header[1:])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["roughness.png", "shepard.png", "sweep.png"]
    page = tmp_path / "r.html"
    rep = cli(shared_server, "report", collection, "-o", str(page), "--labels", "photo", "--queries", "4")
    assert rep.returncode == 0, rep.stderr
    assert f"wrote {page}" in rep.stdout and 'id="recommendation"' in page.read_text()
