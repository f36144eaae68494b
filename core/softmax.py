"""Softmax with temperature over rows (paper eq. 1), and its logarithm."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp

from core.validate import as_rows, check_temperature, chunk_rows

Floats = npt.NDArray[np.float64]


def log_softmax(X: Any, t: float = 1.0) -> Floats:
    """log softmax(x / t) of each row, float64, shape as given ((d,) or (n, d)).

    Computed as z - logsumexp(z) with z = (x - max x) / t: the row maximum is subtracted before
    dividing, so z carries the logit differences to full precision even when x/t itself is ~1e6
    (logits of 1e4 at t = 0.01), and it is finite there: the smallest entries are large negative
    numbers, never log 0. Take CED's logarithms from here, never from log(softmax(...)).
    """
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    out = np.empty(A.shape, dtype=np.float64)
    step = chunk_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        Z = out[s : s + step]
        _shifted(A[s : s + step], t, Z)
        Z -= logsumexp(Z, axis=1, keepdims=True)
    return out[0] if np.ndim(X) == 1 else out


def _shifted(B: npt.NDArray[Any], t: float, Z: Floats) -> Floats:
    """Z = (B - rowmax B) / t in float64; returns the row maxima (float64, (rows, 1))."""
    m: Floats = B.max(axis=1, keepdims=True).astype(np.float64)
    np.subtract(B, m, out=Z, dtype=np.float64)
    Z /= t
    return m


def softmax(X: Any, t: float = 1.0) -> Floats:
    """softmax(x / t) of each row (eq. 1), float64, rows sum to 1; tiny entries may underflow to 0."""
    out = log_softmax(X, t)
    np.exp(out, out=out)
    return out


def logsumexp_rows(X: Any, t: float = 1.0) -> Floats:
    """LSE(x / t) of each row, float64 (n,): the normaliser that turns CED into an inner product."""
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    out = np.empty(A.shape[0], dtype=np.float64)
    step = chunk_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        B = A[s : s + step]
        Z = np.empty(B.shape, dtype=np.float64)
        m = _shifted(B, t, Z)
        out[s : s + step] = m[:, 0] / t + logsumexp(Z, axis=1)
    return out
