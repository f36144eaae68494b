"""benchmarks/core_costs.py still runs and prints its table (a tiny smoke run, not a measurement)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "core_costs.py"


def test_core_costs_prints_every_row_beside_the_floor_and_the_paper(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("core_costs", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "core_costs", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    bench.main(["--rows", "300", "--rounds", "1"])
    text = capsys.readouterr().out
    for needle in ("floor: one pass", "CED matvec", "tri(q, P32)", "tri_logits", "paper CED", "paper TRI",
                   "d=365", "d=384", "d=1000", "within 2x"):
        assert needle in text, needle
    rows = [line for line in text.splitlines() if line.startswith("| ") and "e-0" in line]
    assert len(rows) >= 15
