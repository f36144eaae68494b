"""Old against new: run one benchmark script in two checkouts, alternating, and compare its tables.

Each round runs the script once in checkout A, then once in B (the order flips every round, so a
drift in the shared machine's load hits both alike). Every markdown table the script prints is
parsed; a cell is keyed by (table, row label, column), where the row label is the row's non-numeric
cells. The median over the rounds of each numeric cell is printed for A and B with B / A.

    python benchmarks/ab.py --a /tmp/old --b . --rounds 3 --columns 'rows/s|queries/s' \\
        -- benchmarks/service_bench.py --n 20000 --seconds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

_NUMBER = re.compile(r"^-?[\d,]*\.?\d+$")


def tables(text: str, keys: re.Pattern[str] | None = None) -> dict[tuple[str, str, str], float]:
    """Numeric cells of every markdown table in `text`, keyed by (table, row label, column); the row
    label is the cells of the columns whose header matches `keys`, or else the non-numeric cells."""
    out: dict[tuple[str, str, str], float] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        label = " / ".join(c for h, c in zip(header, cells)
                           if (keys.search(h) if keys is not None else not _NUMBER.match(c)))
        for col, cell in zip(header, cells):
            if _NUMBER.match(cell):
                out[(header[0], label, col)] = float(cell.replace(",", ""))
    return out


def run(checkout: Path, script: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, *script], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=3600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{script[0]} failed in {checkout}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", type=Path, required=True, help="the baseline checkout (old)")
    ap.add_argument("--b", type=Path, required=True, help="the checkout measured against it (new)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--columns", default=".", help="regex: only columns whose header matches")
    ap.add_argument("--keys", help="regex: the columns that name a row (default: its non-numeric cells)")
    ap.add_argument("script", nargs=argparse.REMAINDER, help="-- the benchmark script and its arguments")
    args = ap.parse_args()
    script = [s for s in args.script if s != "--"]
    keys = re.compile(args.keys) if args.keys else None
    runs: dict[str, list[dict[tuple[str, str, str], float]]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
            runs[side].append(tables(run(getattr(args, side).resolve(), script), keys))
    wanted = re.compile(args.columns)
    keys = [k for k in runs["a"][0] if wanted.search(k[2]) and all(k in t for t in runs["a"] + runs["b"])]
    print(f"# {' '.join(script)}: A = {args.a}, B = {args.b}, median of {args.rounds} alternating rounds\n")
    print("| table | row | column | A | B | B / A |")
    print("|---|---|---|---:|---:|---:|")
    for k in keys:
        a = statistics.median(t[k] for t in runs["a"])
        b = statistics.median(t[k] for t in runs["b"])
        ratio = f"{b / a:.3f}" if a else "-"
        print(f"| {k[0]} | {k[1]} | {k[2]} | {a:,.2f} | {b:,.2f} | {ratio} |")


if __name__ == "__main__":
    main()
