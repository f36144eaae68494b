"""The `logitsearch` command line against a real server: ingest with a progress bar, collections, search."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from service.cli import main
from service.client import Client
from tests.e2e.conftest import REPO, free_port

EXAMPLE = REPO / "examples" / "imagenet_effnet_200.npy"
EXAMPLE_IDS = REPO / "examples" / "imagenet_effnet_200.txt"


@pytest.mark.parametrize("command", ["serve", "ingest", "search", "collections", "evaluate", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: logitsearch {command}")
    if command != "serve":
        assert "--url" in out and "--api-key" in out


def test_the_installed_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=60, check=True).stdout
    assert all(c in out for c in ("serve", "ingest", "search", "collections"))


def test_ingest_then_collections_then_search(shared_server, capsys):
    ids = EXAMPLE_IDS.read_text().split()
    url = ["--url", shared_server]
    assert main(["ingest", "cli-img", str(EXAMPLE), "--ids", str(EXAMPLE_IDS), "--create",
                 "--metrics", "euc,tri", "--temperatures", "1,10", *url]) == 0
    captured = capsys.readouterr()
    assert f"ingested {len(ids)} points into 'cli-img'" in captured.out
    assert "ingest cli-img" in captured.err  # the progress bar
    # again: idempotent create, points replaced, same count
    assert main(["ingest", "cli-img", str(EXAMPLE), "--ids", str(EXAMPLE_IDS), "--create", "--metrics", "euc,tri",
                 "--temperatures", "1,10", "--quiet", *url]) == 0
    capsys.readouterr()
    assert main(["collections", *url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "dim", "points", "metrics", "temperatures", "kind", "indexes", "ready",
                                "status"]
    row = next(line.split() for line in table if line.startswith("cli-img "))
    assert row[:6] == ["cli-img", "1000", str(len(ids)), "euc,tri", "1,10", "flat"] and row[-1] == "ready"

    assert main(["search", "cli-img", "--id", ids[0], "-k", "3", "--metric", "tri", "-t", "10", "--json", *url]) == 0
    got = json.loads(capsys.readouterr().out)  # the server's JSON, as it came (issue 14)
    with Client(shared_server) as c:
        want = c.search("cli-img", id=ids[0], k=3, metric="tri", temperature=10)
    assert got.pop("took_ms") >= 0 and want.raw is not None and want.raw.pop("took_ms") >= 0
    assert got == want.raw and got["index"] == "tri-t10-flat" and set(got) >= {"formula", "units", "how"}
    assert [h["id"] for h in got["hits"]] == want.ids and ids[0] not in want.ids

    assert main(["search", "cli-img", "--id", ids[0], "-k", "3", "--metric", "tri", "-t", "10", *url]) == 0
    out = capsys.readouterr().out
    assert "TRI(q,p)" in out and "tri-t10-flat" in out and want.ids[0] in out


def test_search_by_vector_file_and_int_ids(shared_server, tmp_path, capsys):
    X = np.load(EXAMPLE)[:50]
    path = tmp_path / "x.npy"
    np.save(path, X)
    url = ["--url", shared_server]
    assert main(["ingest", "cli-int", str(path), "--create", "--metrics", "euc", "--start", "7", "--quiet", *url]) == 0
    capsys.readouterr()
    np.save(tmp_path / "q.npy", X[[3, 9]])
    assert main(["search", "cli-int", "--vector-file", str(tmp_path / "q.npy"), "--row", "1", "-k", "1", "--json",
                 *url]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["id"] for h in hits] == [16] and [h["distance"] for h in hits] == [0.0]
    assert main(["search", "cli-int", "--id", "16", "-k", "1", "--json", *url]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]] != [16]


def test_client_commands_fail_cleanly(shared_server, tmp_path, capsys):
    assert main(["collections", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert main(["search", "no-such-collection", "--id", "x", "--url", shared_server]) == 1
    assert "404" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    assert main(["ingest", "cli-bad", str(bad), "--url", shared_server]) == 2
    assert "not a .npy file" in capsys.readouterr().err
