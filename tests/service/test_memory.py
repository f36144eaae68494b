"""Freed heap given back to the OS (issue 16, service/memory.py)."""

from __future__ import annotations

import time

from service import memory


def test_release_memory_runs_on_this_machine():
    memory.release_memory()  # glibc's malloc_trim here; a no-op where there is none


def test_the_trimmer_trims_once_enough_has_been_freed_and_not_before(monkeypatch):
    calls: list[float] = []
    monkeypatch.setattr(memory, "release_memory", lambda: calls.append(time.monotonic()))
    t = memory._Trimmer()
    t.EVERY = 0.05
    t.freed(t.THRESHOLD // 4)
    time.sleep(0.3)
    assert calls == []  # a small JSON upsert: no trim
    t.freed(t.THRESHOLD)
    deadline = time.monotonic() + 5
    while not calls:
        assert time.monotonic() < deadline, "no trim after THRESHOLD bytes were freed"
        time.sleep(0.02)
    time.sleep(0.3)
    assert len(calls) == 1  # the count starts again after a trim


def test_the_trimmer_trims_at_once_then_at_most_every_EVERY_seconds(monkeypatch):
    calls: list[float] = []
    monkeypatch.setattr(memory, "release_memory", lambda: calls.append(time.monotonic()))
    t = memory._Trimmer()
    t.EVERY = 1.5
    t.freed(t.THRESHOLD)  # the first large upsert: trimmed now, not after a wait of EVERY
    deadline = time.monotonic() + 1.0
    while not calls:
        assert time.monotonic() < deadline, "the trim waited"
        time.sleep(0.01)
    t.freed(t.THRESHOLD)  # the next one, within EVERY: after the rest
    time.sleep(0.5)
    assert len(calls) == 1
    deadline = time.monotonic() + 5
    while len(calls) < 2:
        assert time.monotonic() < deadline, "no second trim"
        time.sleep(0.02)
    assert calls[1] - calls[0] >= t.EVERY
