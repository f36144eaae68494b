"""Soak: the mixed load of issue 11 for a long time, against one real server; errors and leaks show.

Starts its own `uvicorn` server on 127.0.0.1 with a temporary data directory, bulk-loads two
collections of 10,000 rows (tests/reliability/_mix.py: a flat one and an HNSW one), then runs
`--clients` client threads (of which `--writers` upsert and delete, the others search, batch-search
and evaluate) for `--seconds`. Then it checks the final state against float64 brute force.

    python benchmarks/soak.py                          # 16 clients, 60 s
    python benchmarks/soak.py --seconds 5 --clients 4  # smoke run

Prints one markdown table: per request kind, the requests completed, errors (non-200 or a dropped
connection), p50/p99 latency, and p99 relative to the p50 of the same kind (the baseline measured
in this run); then the server's resident memory after loading, at each quarter and at the end, with
the ratio to the first (steady growth over the quarters is a leak). Exit status 1 on any error, a
dead server or a wrong final answer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.conftest import start_server, stop_server
from tests.reliability import _mix


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _table(tally: _mix.Tally, seconds: float) -> str:
    rows = ["| kind | requests | errors | req/s | p50 ms | p99 ms | p99 / p50 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for kind in (*_mix.KINDS, *_mix.WRITES):
        s = np.array(tally.seconds[kind]) * 1e3
        p50, p99 = (np.percentile(s, 50), np.percentile(s, 99)) if s.size else (np.nan, np.nan)
        rows.append(f"| {kind} | {tally.count(kind)} | {tally.errors[kind]} | {tally.count(kind) / seconds:.1f} "
                    f"| {p50:.1f} | {p99:.1f} | {p99 / p50:.1f} |")
    total = sum(tally.count(k) for k in (*_mix.KINDS, *_mix.WRITES))
    rows.append(f"| **all** | {total} | {sum(tally.errors.values())} | {total / seconds:.1f} | | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--writers", type=int, default=2, help="of the clients, how many write")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="logitsearch-soak-") as tmp:
        base, proc = start_server(Path(tmp) / "data", log=Path(tmp) / "server.log")
        try:
            with httpx.Client(base_url=base, timeout=300) as client:
                model = _mix.load(client, rng)
            memory = [("after load", rss_mb(proc.pid))]
            done = threading.Event()

            def sample() -> None:  # RSS at each quarter of the run
                for q in (1, 2, 3):
                    if done.wait(args.seconds / 4):
                        return
                    memory.append((f"{q}/4", rss_mb(proc.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            tally = _mix.run(base, model, args.seconds, args.clients - args.writers, args.writers, args.seed)
            took = time.monotonic() - started
            done.set()
            alive = proc.poll() is None
            if alive:
                memory.append(("end", rss_mb(proc.pid)))
                with httpx.Client(base_url=base, timeout=300) as client:
                    _mix.check_final_state(client, model, rng, queries=3)
        finally:
            stop_server(proc)
            log_tail = (Path(tmp) / "server.log").read_text()[-2000:]
    print(f"{args.clients} clients ({args.writers} writing) for {took:.0f} s, {_mix.N:,} rows x {_mix.DIM} "
          f"per collection at start; server alive at the end: {alive}\n")
    print(_table(tally, took))
    first = memory[0][1]
    print("\n| server RSS | MiB | / after load |\n|---|---:|---:|")
    for when, mb in memory:
        print(f"| {when} | {mb:.0f} | {mb / first:.2f} |")
    print(f"\nanswers by how: {dict(sorted(tally.how.items()))}")
    if tally.failures or not alive:
        print("\nfailures:", *tally.failures[:10], "server log tail:", log_tail, sep="\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
