"""Spearman's rank correlation (paper eq. 8) with average ranks, a shared-reference form, and the
tie-breaking of the paper's own MATLAB code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput

Floats = npt.NDArray[np.float64]
RankMode = Literal["average", "paper"]


@dataclass(frozen=True)
class Rho:
    """A Spearman rho; NaN with a `reason` when it is undefined (e.g. a constant input)."""

    value: float
    reason: str | None = None


def _as_1d(x: Any, field: str) -> Floats:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field, f"must be a sequence of numbers ({exc})") from None
    if a.ndim != 1:
        raise InvalidInput(field, f"must be one-dimensional, got shape {a.shape}")
    if a.size < 2:
        raise InvalidInput(field, f"needs at least 2 values, got {a.size}")
    if not np.isfinite(a).all():
        raise InvalidInput(field, "contains NaN or infinity")
    return a


def average_ranks(x: Any) -> Floats:
    """Ranks 1..n, ties sharing their average rank (scipy's `rankdata(method='average')`)."""
    from scipy.stats import rankdata  # scipy.stats takes ~0.8 s to import: not on the server's start path

    return np.asarray(rankdata(_as_1d(x, "x"), method="average"), dtype=np.float64)


def _pearson_of_ranks(ra: Floats, rb: Floats) -> Rho:
    a = ra - ra.mean()
    b = rb - rb.mean()
    na, nb = float(np.sqrt(a @ a)), float(np.sqrt(b @ b))
    if na == 0.0 or nb == 0.0:
        return Rho(float("nan"), "constant input: every value is tied, so rank correlation is undefined")
    r = float(a @ b) / (na * nb)
    return Rho(max(-1.0, min(1.0, r)))


def spearman(a: Any, b: Any) -> Rho:
    """Spearman's rho of two samples with average ranks for ties (equals scipy.stats.spearmanr).

    With ties, eq. 8's shortcut 1 - 6 sum d^2 / (T^3 - T) is not the correlation of the ranks, so
    we use the Pearson correlation of average ranks, as scipy does. Constant input: NaN + reason.
    """
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.size != y.size:
        raise InvalidInput("b", f"must have the same length as a ({x.size}), got {y.size}")
    return _pearson_of_ranks(average_ranks(x), average_ranks(y))


def paper_ranks(ref: Any, other: Any) -> tuple[Floats, Floats]:
    """Ranks as the paper's MATLAB `spearman_rho.m` assigns them: ties never share a rank.

    Sorting the rows [ref, other] lexicographically gives ref its ranks with ties in `ref` broken by
    `other` (and vice versa for `other`), so tied values are ordered the way that agrees with the
    other variable. This inflates rho when there are ties; offered only to reproduce published
    figures.
    """
    x, y = _as_1d(ref, "ref"), _as_1d(other, "other")
    rx = np.empty(x.size)
    rx[np.lexsort((y, x))] = np.arange(1, x.size + 1)
    ry = np.empty(y.size)
    ry[np.lexsort((x, y))] = np.arange(1, y.size + 1)
    return rx, ry


def spearman_paper(ref: Any, other: Any) -> Rho:
    """Spearman's rho with the paper's tie-breaking (see `paper_ranks`), by eq. 8."""
    rx, ry = paper_ranks(ref, other)
    n = rx.size
    d = rx - ry
    return Rho(float(1.0 - 6.0 * (d @ d) / (n**3 - n)))


class SharedRanks:
    """Rank a reference (CED) once, then correlate many metrics against it.

    `SharedRanks(ced_values).rho(tri_values)` equals `spearman(ced_values, tri_values)`, but the
    reference is sorted once however many metrics follow.
    """

    def __init__(self, ref: Any, mode: RankMode = "average") -> None:
        if mode not in ("average", "paper"):
            raise InvalidInput("ranks", f"unknown rank mode {mode!r}; known: average, paper")
        self.mode = mode
        self.ref = _as_1d(ref, "reference")
        if mode == "average":
            r = average_ranks(self.ref)
            self._centred = r - r.mean()
            self._norm = float(np.sqrt(self._centred @ self._centred))

    def rho(self, other: Any) -> Rho:
        y = _as_1d(other, "other")
        if y.size != self.ref.size:
            raise InvalidInput("other", f"must have length {self.ref.size}, got {y.size}")
        if self.mode == "paper":
            return spearman_paper(self.ref, y)
        ry = average_ranks(y)
        b = ry - ry.mean()
        nb = float(np.sqrt(b @ b))
        if self._norm == 0.0 or nb == 0.0:
            return Rho(float("nan"), "constant input: every value is tied, so rank correlation is undefined")
        return Rho(max(-1.0, min(1.0, float(self._centred @ b) / (self._norm * nb))))
