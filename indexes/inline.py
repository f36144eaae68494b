"""Searches that may run on the caller's thread only if they never wait and are small (issue 16).

The server's event loop can answer a cheap search itself instead of handing it to a worker thread.
On this 2-core VM each hand-off (a queue put, a futex wake-up, the loop's self-pipe) costs 0.3-0.5 ms,
about as much as the HNSW search it carries. But the loop must never block, so work on the loop
has two conditions, checked by the code that would wait or compute:

- no waiting: a lock that is not free (a write being applied, a writer queued) raises WouldBlock
  instead of waiting;
- no long computation: before an index is searched, its estimated work (multiply-adds, `check_work`)
  over `budget` raises WouldBlock.

A search is read-only, so the caller answers WouldBlock by running the same call again on a worker
thread, where nothing of this applies. Outside `inline()` (every other caller) these checks do
nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

#: the work budget (multiply-adds) of the inline call in progress on this context; None: not inline
_BUDGET: contextvars.ContextVar[float | None] = contextvars.ContextVar("inline_budget", default=None)


class WouldBlock(Exception):
    """An inline call would wait or take too long: run it on a worker thread instead. Never leaves
    the inline caller (it is not a LogitsearchError, so it has no HTTP answer of its own)."""


@contextmanager
def inline(budget: float) -> Iterator[None]:
    """Run the block as an inline call: waits and work over `budget` multiply-adds raise WouldBlock."""
    token = _BUDGET.set(float(budget))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def must_not_wait() -> bool:
    """True inside `inline()`: a lock that is not free must raise WouldBlock, not wait."""
    return _BUDGET.get() is not None


def check_work(work: float, what: str) -> None:
    """Inside `inline()`, WouldBlock when `work` (estimated multiply-adds) exceeds the budget."""
    budget = _BUDGET.get()
    if budget is not None and work > budget:
        raise WouldBlock(f"{what}: ~{work:.3g} multiply-adds, over the inline budget of {budget:.3g}")


def refuse(what: str) -> None:
    """Inside `inline()`, WouldBlock: `what` always waits (a remote call, a query of SQLite's
    payload index)."""
    if _BUDGET.get() is not None:
        raise WouldBlock(what)
