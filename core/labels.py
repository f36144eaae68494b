"""Do a metric's nearest neighbours share the query's label? (issue 14; the paper's third item of
further work, section 11: which metric gives semantically better neighbours.)

Ground truth is a label per row (the class, the source image, the document), coded as a whole
number >= 0, or -1 for a row without one (never counted as a match). For one query and one
metric's distances to the compared rows (the query itself not among them):

- agreement@k: the fraction of the k nearest rows that share the query's label;
- average precision: over the whole ranking, the mean of precision@i at each rank i holding a
  same-label row (AP = 1/R sum_{i: rel_i} (sum_{j<=i} rel_j) / i, R the same-label rows).

The ranking is exact: rows sorted by distance, ties by row position (a stable sort), NaN last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput, LimitExceeded

Floats = npt.NDArray[np.float64]
Codes = npt.NDArray[np.int64]

#: the largest k of a label check (a k-NN list longer than this says little more)
MAX_LABEL_K = 1_000


@dataclass(frozen=True)
class LabelScore:
    """One metric's label check over the queries that have a label (`n_queries` of them):
    mean agreement@k, and mean average precision over the `n_map` queries that have at least one
    same-label row to find (NaN, with no query to average, when there are none)."""

    k: int
    agreement: float
    map: float
    n_queries: int
    n_map: int


def check_k(k: Any, field: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_LABEL_K:
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and int(k) > MAX_LABEL_K:
            raise LimitExceeded(field, f"at most {MAX_LABEL_K}, got {k}")
        raise InvalidInput(field, f"must be a whole number in [1, {MAX_LABEL_K}], got {k!r}")
    return int(k)


def check_codes(labels: Any, n: int, field: str = "labels") -> Codes:
    """Label codes of n rows: whole numbers >= -1 (-1: no label)."""
    codes = np.asarray(labels)
    if codes.shape != (n,) or not np.issubdtype(codes.dtype, np.integer):
        raise InvalidInput(field, f"must be {n} whole-number label codes, got shape {codes.shape} {codes.dtype}")
    if codes.size and int(codes.min()) < -1:
        raise InvalidInput(field, "label codes are >= 0, or -1 for a row without a label")
    return codes.astype(np.int64, copy=False)


def ranking(d: Floats) -> npt.NDArray[np.intp]:
    """Row positions nearest first: by distance, ties by position (stable), NaN last."""
    return np.argsort(d, kind="stable")


def label_hits(d: Floats, codes: Codes, label: int, k: int) -> tuple[float, float]:
    """(agreement@k, average precision) of one query with label `label` >= 0, whose distances to
    the compared rows are `d` (n,) and their labels `codes` (n,). k larger than n counts n rows.
    AP is NaN when no compared row has the label."""
    rel = codes[ranking(d)] == label
    kk = min(k, rel.size)
    agreement = float(rel[:kk].sum()) / kk if kk else math.nan
    found = int(rel.sum())
    if found == 0:
        return agreement, math.nan
    ranks = np.flatnonzero(rel) + 1.0
    return agreement, float((np.arange(1, found + 1) / ranks).mean())


class LabelTally:
    """Accumulates `label_hits` of many queries for one metric; `score()` gives the means."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.agreements: list[float] = []
        self.aps: list[float] = []

    def add(self, d: Floats, codes: Codes, label: int) -> None:
        if label < 0:
            return  # a query without a label says nothing here
        a, ap = label_hits(d, codes, label, self.k)
        if not math.isnan(a):
            self.agreements.append(a)
        if not math.isnan(ap):
            self.aps.append(ap)

    def score(self) -> LabelScore:
        return LabelScore(self.k, _mean(self.agreements), _mean(self.aps), len(self.agreements), len(self.aps))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan
