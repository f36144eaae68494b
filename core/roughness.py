"""Index of coincidence and measure of roughness (paper eqs. 16-17), and the temperature that
reaches a target roughness (section 10.2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput
from core.softmax import softmax
from core.validate import T_MAX, T_MIN, as_rows, check_temperature, chunk_rows

Floats = npt.NDArray[np.float64]


def index_of_coincidence(P: Any) -> Floats:
    """IC(p) = sum_i p_i^2 (eq. 16) of each probability row; float64 (n,), in [1/d, 1]."""
    A = as_rows(P, "P")
    return np.asarray(np.einsum("ij,ij->i", A, A, dtype=np.float64), dtype=np.float64)


def roughness(P: Any) -> Floats:
    """MR(p) = sum_i (p_i - 1/d)^2 (eq. 17) of each probability row; float64 (n,), in [0, 1 - 1/d].

    Summed directly rather than as IC - 1/d, which cancels at high temperature where MR << 1/d.
    """
    A = as_rows(P, "P")
    u = 1.0 / A.shape[1]
    out = np.empty(A.shape[0])
    step = chunk_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        D = np.asarray(A[s : s + step], dtype=np.float64) - u
        out[s : s + step] = np.einsum("ij,ij->i", D, D)
    return out


def mean_roughness(X: Any, t: float) -> float:
    """Mean MR of softmax(x/t) over the rows of logits X (chunked)."""
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    step = chunk_rows(A.shape[1])
    total = 0.0
    for s in range(0, A.shape[0], step):
        total += float(roughness(softmax(A[s : s + step], t)).sum())
    return total / int(A.shape[0])


@dataclass(frozen=True)
class RoughnessTemperature:
    """The result of `temperature_for_roughness`: `t`, the mean MR reached there, and whether the
    target lies inside what temperatures in [T_MIN, T_MAX] can reach (else t is clamped)."""

    t: float
    roughness: float
    target: float
    reachable: bool
    iterations: int


#: bisection stops when hi/lo <= 1 + RTOL_T (relative tolerance on t)
RTOL_T = 1e-6


def temperature_for_roughness(X: Any, target: float, lo: float = T_MIN, hi: float = T_MAX) -> RoughnessTemperature:
    """The temperature t at which the mean MR of softmax(x/t) over the rows of X equals `target`.

    Mean MR falls monotonically as t rises, so this bisects in log t within [lo, hi] until
    hi/lo <= 1 + 1e-6 (`RTOL_T`): the answer is within 1e-6 relative of the true t. A target
    above MR(lo) or below MR(hi) cannot be reached; the nearest end is returned with
    reachable=False. Target must be in (0, 1). X: rows of logits, or an object whose
    `mean_roughness(t)` gives the mean MR of its rows (`core.evaluation.Rows`: a sample spread over
    shards, each shard summing its own rows).
    """
    try:
        target_f = float(target)
    except (TypeError, ValueError):
        raise InvalidInput("target", f"must be a number, got {target!r}") from None
    if not (math.isfinite(target_f) and 0.0 < target_f < 1.0):
        raise InvalidInput("target", f"must be a roughness in (0, 1), got {target!r}")
    mean_at: Callable[[float], float]
    if hasattr(X, "mean_roughness"):
        mean_at = X.mean_roughness
    else:
        A = as_rows(X, "X")
        mean_at = lambda t: mean_roughness(A, t)  # noqa: E731
    lo, hi = check_temperature(lo, "lo"), check_temperature(hi, "hi")
    mr_lo, mr_hi = mean_at(lo), mean_at(hi)
    if target_f >= mr_lo:
        return RoughnessTemperature(lo, mr_lo, target_f, target_f == mr_lo, 0)
    if target_f <= mr_hi:
        return RoughnessTemperature(hi, mr_hi, target_f, target_f == mr_hi, 0)
    a, b = math.log(lo), math.log(hi)
    it = 0
    while b - a > math.log1p(RTOL_T):
        mid = 0.5 * (a + b)
        if mean_at(math.exp(mid)) > target_f:
            a = mid
        else:
            b = mid
        it += 1
    t = math.exp(0.5 * (a + b))
    return RoughnessTemperature(t, mean_at(t), target_f, True, it)
